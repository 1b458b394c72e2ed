//! Restoring a worker from a commit made with another number of workers.

use std::collections::BTreeMap;

use gress_checkpoint::{Catalog, CheckpointManager, Metadata, RangePart};

use crate::config::CheckpointStorage;
use crate::error::Error;
use crate::history::CommitRecord;
use crate::keys::{groups_key_range, groups_of};

/// Why a rescale did not restore.
pub(crate) enum RescaleError {
    /// A checkpoint it needs is missing, damaged or not what the commit
    /// record says.
    Damaged(String),
    /// The checkpoint layer failed (classified by the caller).
    Checkpoint(gress_checkpoint::Error),
    /// Anything else.
    Other(Error),
}

impl From<gress_checkpoint::Error> for RescaleError {
    fn from(e: gress_checkpoint::Error) -> Self {
        RescaleError::Checkpoint(e)
    }
}

/// Merges an old worker's checkpoint metadata into what a new worker starts
/// from: every source partition's offset and event-time high mark and the
/// names of operators and states (each old worker holds its own), and per
/// operator the smallest watermark (kept apart in `watermarks` until all
/// are merged). `Err` says which value is not a number.
pub(crate) fn merge_metadata(
    into: &mut Metadata,
    watermarks: &mut BTreeMap<String, u64>,
    old: &Metadata,
) -> std::result::Result<(), String> {
    for (k, v) in old {
        if k.starts_with("offset/")
            || k.starts_with("maxtime/")
            || k.starts_with(crate::worker::STATE_PREFIX)
            || k.starts_with(crate::worker::OPERATOR_PREFIX)
        {
            into.insert(k.clone(), v.clone());
        } else if k.starts_with("watermark/") {
            let wm = v
                .parse::<u64>()
                .map_err(|_| format!("`{k}` = `{v}` is not a number"))?;
            let slot = watermarks.entry(k.clone()).or_insert(wm);
            *slot = (*slot).min(wm);
        }
    }
    Ok(())
}

/// Restores worker `index` of `peers` from a commit made with a different
/// number of workers: the key groups it owns now, from the checkpoints of
/// the old workers that owned them (key-group ranges are contiguous key
/// ranges), every source partition's offset, and each operator's smallest
/// watermark. Returns the metadata the worker starts from. Only the old
/// checkpoints whose key groups it takes are read, and every byte read is
/// verified.
pub(crate) fn rescale(
    storage: &CheckpointStorage,
    c: &CommitRecord,
    manager: &CheckpointManager,
    index: usize,
    peers: usize,
    key_groups: u16,
) -> Result<Metadata, RescaleError> {
    let mine = groups_of(index, peers, key_groups);
    let mut sources = Vec::with_capacity(c.workers);
    let mut metadata = Metadata::new();
    let mut watermarks: BTreeMap<String, u64> = BTreeMap::new();
    for (old, &id) in c.checkpoints.iter().enumerate() {
        let location = storage
            .open(&format!("workers/{old:05}"))
            .map_err(RescaleError::Other)?;
        let catalog = Catalog::open(location)?;
        let manifest = catalog.manifest(id).ok_or_else(|| {
            RescaleError::Damaged(format!(
                "worker {old}'s checkpoint {id} is missing or damaged"
            ))
        })?;
        let epoch = manifest
            .metadata
            .get("epoch")
            .and_then(|e| e.parse::<u64>().ok());
        if epoch != Some(c.epoch) {
            return Err(RescaleError::Damaged(format!(
                "worker {old}'s checkpoint {id} is of epoch {epoch:?}, the commit record says {}",
                c.epoch
            )));
        }
        merge_metadata(&mut metadata, &mut watermarks, &manifest.metadata).map_err(|why| {
            RescaleError::Damaged(format!("worker {old}'s checkpoint {id}: {why}"))
        })?;
        let theirs = groups_of(old, c.workers, key_groups);
        let (from, to) = (mine.start.max(theirs.start), mine.end.min(theirs.end));
        sources.push((catalog, id, (from < to).then_some((from, to))));
    }
    metadata.extend(watermarks.into_iter().map(|(k, v)| (k, v.to_string())));
    let parts: Vec<RangePart<'_>> = sources
        .iter()
        .filter_map(|(catalog, id, groups)| {
            groups.map(|(from, to)| RangePart {
                catalog,
                id: *id,
                ranges: vec![groups_key_range(from..to)],
            })
        })
        .collect();
    manager.restore_ranges(&parts)?;
    Ok(metadata)
}
