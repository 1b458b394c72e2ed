//! Savepoints of a stream job: a self-contained, backend-portable copy of
//! every worker's keyed state at a committed epoch, with the sources'
//! offsets, the operators' watermarks and the names of the job's operators
//! and states.
//!
//! ```text
//! <location>/SAVEPOINT                                   what it holds (JSON), written last
//! <location>/workers/<w:05>/savepoints/savepoint/MANIFEST  worker w's part: metadata, files
//! <location>/workers/<w:05>/savepoints/savepoint/*.snap    its state, one v1 snapshot per backend
//! ```
//!
//! Each part is a checkpoint-manager savepoint (docs/format.md): a full
//! snapshot in the format every backend restores, so a job started from it
//! may run on the memory backend or RocksDB whatever wrote it, and with
//! another number of workers: each new worker takes the key groups it owns
//! from every part. A savepoint is complete once `SAVEPOINT` exists.

use std::collections::BTreeMap;

use gress_checkpoint::{Catalog, CheckpointManager, Metadata, SavepointPart};
use gress_state::checkpoint::Checkpointable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{groups_key_range, groups_of};
use crate::location::CheckpointStorage;
use crate::worker::{OPERATOR_PREFIX, STATE_PREFIX, WorkerState};

/// The file that makes a savepoint complete, and says what it holds.
pub const SAVEPOINT_FILE: &str = "SAVEPOINT";

/// The name of each worker's part (a checkpoint-manager savepoint).
pub const PART_NAME: &str = "savepoint";

/// The version of [`SAVEPOINT_FILE`]'s layout.
const FORMAT_VERSION: u32 = 1;

/// What a stream job's savepoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SavepointInfo {
    /// The version of the layout.
    pub format: u32,
    /// The job it was taken of.
    pub job: String,
    /// The committed epoch it holds.
    pub epoch: u64,
    /// The number of workers that wrote it: one part each.
    pub workers: usize,
    /// The job's key groups; a job started from it must have as many.
    pub key_groups: u16,
    /// When it was completed, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The keyed operators and states it holds state of, by full name
    /// (`operator` and `operator/state`).
    pub names: Vec<String>,
}

impl SavepointInfo {
    /// What a savepoint of `job` at `epoch` written by `workers` workers
    /// holds, from the metadata of its parts (the names of operators and
    /// states).
    pub fn new(job: &str, epoch: u64, workers: usize, key_groups: u16, parts: &[Metadata]) -> Self {
        let mut names: Vec<String> = parts
            .iter()
            .flat_map(|m| m.iter())
            .filter(|(k, _)| k.starts_with(STATE_PREFIX) || k.starts_with(OPERATOR_PREFIX))
            .map(|(_, v)| v.clone())
            .collect();
        names.sort();
        names.dedup();
        SavepointInfo {
            format: FORMAT_VERSION,
            job: job.to_string(),
            epoch,
            workers,
            key_groups,
            created_at_ms: now_ms(),
            names,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn damaged(location: &CheckpointStorage, reason: impl Into<String>) -> Error {
    Error::InvalidJob {
        what: "savepoint",
        reason: format!("{}: {}", describe(location), reason.into()).into(),
    }
}

/// A location as people write it.
pub fn describe(location: &CheckpointStorage) -> String {
    location.describe()
}

/// Reads what the savepoint at `location` holds. A location without
/// [`SAVEPOINT_FILE`] holds no complete savepoint.
pub fn read(location: &CheckpointStorage) -> Result<SavepointInfo> {
    let root = location.open("")?;
    let bytes = match root.read_all(SAVEPOINT_FILE, 1 << 20) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return Err(damaged(
                location,
                "no savepoint here (no SAVEPOINT file: missing, or never completed)",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let info: SavepointInfo = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(location, format!("SAVEPOINT is damaged: {e}")))?;
    if info.format != FORMAT_VERSION {
        return Err(damaged(
            location,
            format!(
                "SAVEPOINT is of layout {}, this version reads {FORMAT_VERSION}",
                info.format
            ),
        ));
    }
    if info.workers == 0 || info.key_groups == 0 || info.workers > usize::from(info.key_groups) {
        return Err(damaged(
            location,
            format!(
                "SAVEPOINT names {} workers and {} key groups",
                info.workers, info.key_groups
            ),
        ));
    }
    Ok(info)
}

/// Refuses a location that holds anything already: a savepoint is written
/// to a new place, never over another.
pub fn check_unused(location: &CheckpointStorage) -> Result<()> {
    let root = location.open("")?;
    let found = root.list("")?;
    if let Some(o) = found.first() {
        return Err(Error::invalid(
            "savepoint",
            format!(
                "{} is not empty (it holds `{}`): write a savepoint to a new location",
                describe(location),
                o.path
            ),
        ));
    }
    Ok(())
}

/// Deletes everything under `location`: what a savepoint that failed
/// part-way wrote there (only ever called on a location that was empty
/// before the savepoint began). Failures are logged; what remains is
/// refused by [`read`] as incomplete.
pub fn discard(location: &CheckpointStorage) {
    let result = location.open("").and_then(|root| {
        for object in root.list("")? {
            root.delete(&object.path)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        tracing::warn!(
            savepoint = %location.describe(),
            error = %e,
            "could not delete what a failed savepoint wrote"
        );
    }
}

/// Writes worker `worker`'s part: a portable snapshot of each backend
/// (name, backend), with `metadata`.
pub fn write_part(
    location: &CheckpointStorage,
    worker: usize,
    backends: &[(&str, &dyn Checkpointable)],
    metadata: Metadata,
) -> Result<()> {
    let storage = location.open(&format!("workers/{worker:05}"))?;
    gress_checkpoint::write_savepoint(&*storage, PART_NAME, backends, metadata)?;
    Ok(())
}

/// Completes the savepoint once every part is written: checks each part's
/// manifest, then writes [`SAVEPOINT_FILE`].
pub fn finish(location: &CheckpointStorage, info: &SavepointInfo) -> Result<()> {
    for w in 0..info.workers {
        let metadata = part_metadata(location, w)?;
        if metadata.get("epoch").map(String::as_str) != Some(info.epoch.to_string().as_str()) {
            return Err(damaged(
                location,
                format!("worker {w}'s part is not of epoch {}", info.epoch),
            ));
        }
    }
    let bytes = serde_json::to_vec_pretty(info)
        .map_err(|e| Error::Worker(format!("could not encode SAVEPOINT: {e}")))?;
    location.open("")?.put_new(SAVEPOINT_FILE, &bytes)?;
    Ok(())
}

fn part_catalog(location: &CheckpointStorage, worker: usize) -> Result<Catalog> {
    Ok(Catalog::open(
        location.open(&format!("workers/{worker:05}"))?,
    )?)
}

fn part_metadata(location: &CheckpointStorage, worker: usize) -> Result<Metadata> {
    let manifest = part_catalog(location, worker)?
        .savepoint(PART_NAME)
        .map_err(|e| damaged(location, format!("worker {worker}'s part: {e}")))?;
    Ok(manifest.metadata)
}

/// One file of a savepoint, as [`verify`] found it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PartCheck {
    /// The worker whose part it is.
    pub worker: usize,
    /// The file's path in the location.
    pub path: String,
    /// Its size, as the part's manifest says.
    pub size: u64,
    /// What is wrong with it, if anything.
    pub problem: Option<String>,
}

/// Reads every file of the savepoint in full and checks its size and
/// checksum. `Err` if the savepoint is incomplete or a part's manifest is
/// unreadable; damaged files are in the report.
pub fn verify(location: &CheckpointStorage) -> Result<(SavepointInfo, Vec<PartCheck>)> {
    let info = read(location)?;
    let mut out = Vec::new();
    for w in 0..info.workers {
        let catalog = part_catalog(location, w)?;
        let manifest = catalog
            .savepoint(PART_NAME)
            .map_err(|e| damaged(location, format!("worker {w}'s part: {e}")))?;
        for backend in &manifest.backends {
            for file in &backend.files {
                out.push(PartCheck {
                    worker: w,
                    path: format!("workers/{w:05}/{}", file.path),
                    size: file.size,
                    problem: catalog.verify_file(file)?,
                });
            }
        }
    }
    Ok((info, out))
}

/// Restores worker `index` of `peers` from the savepoint: the key groups it
/// owns from every part that holds any, every source partition's offset,
/// each operator's smallest watermark, and the names of operators and
/// states. Returns the metadata the worker starts from.
pub(crate) fn restore(
    location: &CheckpointStorage,
    info: &SavepointInfo,
    manager: &CheckpointManager,
    index: usize,
    peers: usize,
) -> Result<Metadata> {
    let mine = groups_of(index, peers, info.key_groups);
    let mut metadata = Metadata::new();
    let mut watermarks: BTreeMap<String, u64> = BTreeMap::new();
    let mut catalogs = Vec::with_capacity(info.workers);
    for old in 0..info.workers {
        let catalog = part_catalog(location, old)?;
        let manifest = catalog
            .savepoint(PART_NAME)
            .map_err(|e| damaged(location, format!("worker {old}'s part: {e}")))?;
        let epoch = manifest.metadata.get("epoch").and_then(|e| e.parse().ok());
        if epoch != Some(info.epoch) {
            return Err(damaged(
                location,
                format!(
                    "worker {old}'s part is of epoch {epoch:?}, SAVEPOINT says {}",
                    info.epoch
                ),
            ));
        }
        for (k, v) in &manifest.metadata {
            if k.starts_with("offset/")
                || k.starts_with("maxtime/")
                || k.starts_with(STATE_PREFIX)
                || k.starts_with(OPERATOR_PREFIX)
            {
                metadata.insert(k.clone(), v.clone());
            } else if k.starts_with("watermark/") {
                let wm = v.parse::<u64>().map_err(|_| {
                    damaged(
                        location,
                        format!("worker {old}'s part: `{k}` = `{v}` is not a number"),
                    )
                })?;
                let slot = watermarks.entry(k.clone()).or_insert(wm);
                *slot = (*slot).min(wm);
            }
        }
        let theirs = groups_of(old, info.workers, info.key_groups);
        let (from, to) = (mine.start.max(theirs.start), mine.end.min(theirs.end));
        catalogs.push((catalog, (from < to).then_some((from, to))));
    }
    metadata.extend(watermarks.into_iter().map(|(k, v)| (k, v.to_string())));
    let parts: Vec<SavepointPart<'_>> = catalogs
        .iter()
        .filter_map(|(catalog, groups)| {
            groups.map(|(from, to)| SavepointPart {
                catalog,
                name: PART_NAME,
                ranges: vec![groups_key_range(from..to)],
            })
        })
        .collect();
    manager.restore_savepoint_ranges(&parts)?;
    Ok(metadata)
}

/// The savepoint locations at `dir` and directly under it, each with what
/// it holds or why it cannot be read, for `gress job list`.
pub fn list_local(
    dir: &std::path::Path,
) -> Result<Vec<(std::path::PathBuf, Result<SavepointInfo>)>> {
    let mut out = Vec::new();
    let mut candidates = vec![dir.to_path_buf()];
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::invalid("savepoint", format!("cannot read {}: {e}", dir.display())))?;
    let mut children: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    children.sort();
    candidates.extend(children);
    for path in candidates {
        let looks_like_one = path.join(SAVEPOINT_FILE).exists()
            || path
                .join(format!("workers/00000/savepoints/{PART_NAME}"))
                .is_dir();
        if !looks_like_one {
            continue;
        }
        let info = read(&CheckpointStorage::Local(path.clone()));
        out.push((path, info));
    }
    Ok(out)
}

/// After a start from a savepoint (called once the dataflow is built):
/// the keyed operators the savepoint holds state of (their timers and
/// states) that this job does not have. Refused unless `allow`;
/// allowed, their state is deleted from this worker's key groups and
/// their names forgotten. A state an operator no longer declares is
/// kept, as it is across runs of a job.
pub(crate) fn drop_unknown_state(state: &mut WorkerState, allow: bool) -> Result<()> {
    let names: Vec<(&'static str, String)> = state.names().to_vec();
    let keyed: std::collections::HashSet<&str> = names
        .iter()
        .filter(|(what, _)| *what == "keyed operator")
        .map(|(_, name)| name.as_str())
        .collect();
    let owned = |full: &str| {
        names.iter().any(|(_, op)| {
            full.len() > op.len()
                && full.starts_with(op.as_str())
                && full.as_bytes()[op.len()] == b'/'
        })
    };
    let mut unknown = Vec::new();
    for (k, name) in &state.restored {
        let (id, operator, known) = if let Some(id) = k.strip_prefix(OPERATOR_PREFIX) {
            (id, true, keyed.contains(name.as_str()))
        } else if let Some(id) = k.strip_prefix(STATE_PREFIX) {
            (id, false, owned(name))
        } else {
            continue;
        };
        let Ok(id) = u32::from_str_radix(id, 16) else {
            continue;
        };
        if !known {
            unknown.push((k.clone(), name.clone(), id, operator));
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = unknown.iter().map(|(_, n, _, _)| n.as_str()).collect();
    if !allow {
        return Err(Error::invalid(
            "savepoint",
            format!(
                "it holds state of `{}`, which this job does not have; start with \
                 allow_non_restored_state to drop that state",
                names.join("`, `")
            ),
        ));
    }
    if state.index == 0 {
        tracing::warn!(dropped = ?names, "dropping the savepoint's state of operators and states this job does not have");
    }
    let backend = std::sync::Arc::clone(state.store.backend());
    for kg in crate::keys::groups_of(state.index, state.peers, state.key_groups) {
        for (_, _, id, operator) in &unknown {
            let mut prefix = kg.to_be_bytes().to_vec();
            if *operator {
                prefix.extend_from_slice(&crate::keys::TIMER_STATE_ID.to_be_bytes());
            }
            prefix.extend_from_slice(&id.to_be_bytes());
            let keys: Vec<Vec<u8>> = backend
                .scan_prefix(&prefix)?
                .map(|entry| entry.map(|(k, _)| k))
                .collect::<gress_state::Result<_>>()?;
            if keys.is_empty() {
                continue;
            }
            let mut batch = gress_state::WriteBatch::new();
            for k in &keys {
                batch.delete(k);
            }
            backend.write_batch(&batch)?;
        }
    }
    for (k, _, _, _) in &unknown {
        state.restored.remove(k);
    }
    Ok(())
}
