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
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use gress_checkpoint::{Catalog, CheckpointManager, Metadata, SavepointPart};
use gress_state::checkpoint::Checkpointable;
use serde::{Deserialize, Serialize};

use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::keys::{groups_key_range, groups_of};
use crate::location::CheckpointStorage;
use crate::worker::{OPERATOR_PREFIX, STATE_PREFIX, Shared, WorkerState};

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
        reason: format!("{}: {}", location.describe(), reason.into()).into(),
    }
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
                location.describe(),
                o.path
            ),
        ));
    }
    Ok(())
}

/// Once a run is over: writes the savepoint asked for, if every process
/// of the job was asked for it (each is asked on its own, so they agree
/// first, and none waits for a part another will never write).
pub(crate) fn at_run_end(
    worker: &mut timely::worker::Worker,
    abort: &AtomicBool,
    config: &JobConfig,
    shared: &Shared,
    backend: &Arc<dyn Checkpointable>,
    hot_image: Option<&Arc<crate::state::HotImage>>,
) -> Result<Option<SavepointInfo>> {
    let index = worker.index();
    let asked = config.control.savepoint();
    let everyone = if config.hosts.is_empty() {
        asked.is_some()
    } else {
        let votes = crate::agree::exchange_all(worker, asked.is_some(), abort)?;
        if votes.iter().any(|&v| v) && !votes.iter().all(|&v| v) {
            let missing: Vec<usize> = votes
                .iter()
                .enumerate()
                .filter(|(_, v)| !**v)
                .map(|(w, _)| w)
                .collect();
            if asked.is_some() {
                return Err(Error::Worker(format!(
                    "the savepoint was not written: it was not asked of the processes of \
                     workers {missing:?} (ask every process of the job); the job stopped at \
                     its committed epoch"
                )));
            }
            tracing::warn!(
                worker = index,
                "another process of the job was asked for a savepoint, this one was not"
            );
        }
        votes.iter().all(|&v| v)
    };
    match asked.filter(|_| everyone) {
        Some(location) => write(worker, abort, config, shared, backend, hot_image, &location),
        None => Ok(None),
    }
}

/// Writes this worker's part of the savepoint asked for, once the run is
/// over (its last epoch committed, so the state is that epoch's); worker 0
/// completes it once every worker's part is written.
fn write(
    worker: &mut timely::worker::Worker,
    abort: &AtomicBool,
    config: &JobConfig,
    shared: &Shared,
    backend: &Arc<dyn Checkpointable>,
    hot: Option<&Arc<crate::state::HotImage>>,
    location: &CheckpointStorage,
) -> Result<Option<SavepointInfo>> {
    let index = worker.index();
    let written = (|| {
        let started = Instant::now();
        let mut s = shared.borrow_mut();
        let (epoch, metadata) = s.savepoint_metadata()?;
        s.store.write_back_all()?;
        drop(s);
        let written_back = started.elapsed();
        let mut backends: Vec<(&str, &dyn Checkpointable)> = vec![("state", &**backend)];
        if let Some(hot) = hot {
            backends.push(("cache", &**hot));
        }
        write_part(location, index, &backends, metadata.clone())?;
        tracing::debug!(
            worker = index,
            epoch,
            write_back_ms = written_back.as_millis() as u64,
            snapshot_ms = (started.elapsed() - written_back).as_millis() as u64,
            "savepoint part written"
        );
        Ok::<_, Error>((epoch, metadata))
    })();
    let vote = match &written {
        Ok((epoch, metadata)) => Ok((*epoch, metadata.clone())),
        Err(e) => Err(crate::worker::error_chain(e)),
    };
    let votes = crate::agree::exchange_all(worker, vote, abort)?;
    written?;
    let mut parts = Vec::with_capacity(votes.len());
    let mut epochs = std::collections::BTreeSet::new();
    for (w, vote) in votes.into_iter().enumerate() {
        match vote {
            Ok((epoch, metadata)) => {
                epochs.insert(epoch);
                parts.push(metadata);
            }
            Err(why) => {
                if index == 0 {
                    discard(location);
                }
                return Err(Error::Worker(format!(
                    "the savepoint was not written: worker {w} failed ({why}); the job stopped \
                     at its committed epoch and resumes from its checkpoints"
                )));
            }
        }
    }
    let (Some(&epoch), 1) = (epochs.first(), epochs.len()) else {
        if index == 0 {
            discard(location);
        }
        return Err(Error::Worker(format!(
            "the savepoint was not written: the workers stopped at different committed epochs ({epochs:?})"
        )));
    };
    if index != 0 {
        return Ok(None);
    }
    let info = SavepointInfo::new(
        &config.job_id,
        epoch,
        worker.peers(),
        config.key_groups,
        &parts,
    );
    finish(location, &info)?;
    tracing::info!(
        job = %config.job_id,
        epoch,
        savepoint = %location.describe(),
        "savepoint written"
    );
    Ok(Some(info))
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

/// Completes the savepoint once every part of `info.epoch` is written:
/// writes [`SAVEPOINT_FILE`] (create-only).
pub fn finish(location: &CheckpointStorage, info: &SavepointInfo) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(info)
        .map_err(|e| Error::Worker(format!("could not encode SAVEPOINT: {e}")))?;
    location.open("")?.put_new(SAVEPOINT_FILE, &bytes)?;
    Ok(())
}

/// Worker `worker`'s part: its location's catalog and its manifest.
fn part(
    location: &CheckpointStorage,
    worker: usize,
) -> Result<(Catalog, gress_checkpoint::Manifest)> {
    let catalog = Catalog::open(location.open(&format!("workers/{worker:05}"))?)?;
    let manifest = catalog
        .savepoint(PART_NAME)
        .map_err(|e| damaged(location, format!("worker {worker}'s part: {e}")))?;
    Ok((catalog, manifest))
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
        let (catalog, manifest) = part(location, w)?;
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
        let (catalog, manifest) = part(location, old)?;
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
        crate::rescale::merge_metadata(&mut metadata, &mut watermarks, &manifest.metadata)
            .map_err(|why| damaged(location, format!("worker {old}'s part: {why}")))?;
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
