//! Recovery: the checks that refuse a run that cannot continue a job, and
//! the rounds in which the workers of a run settle on one committed epoch
//! that every one of them restored.
//!
//! 1. Before any worker starts, the job's commit records are read and the
//!    run refused if they are of another job or another number of key
//!    groups, or if the epoch asked for is not retained: nothing is
//!    written, no location taken.
//! 2. Every worker takes its checkpoint location (fencing); nothing is
//!    deleted yet. Round: all took theirs.
//! 3. Worker 0 reads the commit records again, now that no other run can
//!    write them. Round: every worker gets its reading.
//! 4. For each candidate, newest valid first: every worker restores its
//!    part (its own checkpoint, or its key groups from the old workers'
//!    after a rescale), verifying every byte it reads. Round: if all
//!    restored, that is the epoch; a damaged or missing file anywhere
//!    makes all try the next older one; any other failure (storage
//!    unreachable, disk full) stops the run rather than roll state back.
//! 5. Each worker tells its checkpoint manager which checkpoints the kept
//!    commit records need; the rest go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use gress_checkpoint::{CheckpointManager, Metadata};
use gress_state::checkpoint::Checkpointable;
use serde::{Deserialize, Serialize};

use crate::agree::exchange_all;
use crate::config::{CheckpointStorage, JobConfig};
use crate::error::{Error, Result};
use crate::history::{CommitRecord, History};
use crate::rescale::rescale;
use crate::worker::error_chain;

/// What a run recovered, and how it goes on.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The commit restored.
    pub(crate) commit: Option<CommitRecord>,
    /// Its checkpoint's metadata (offsets, watermarks) for this worker.
    pub(crate) metadata: Metadata,
    /// The commit records as the run found them.
    pub(crate) history: History,
    /// The newest committed epoch that counts.
    pub(crate) committed: Option<u64>,
    /// The run's first epoch: after every epoch a record names.
    pub(crate) first_epoch: u64,
    /// The epochs this run rolls back when it commits.
    pub(crate) rolls_back: Option<(u64, u64)>,
    /// Epochs earlier runs rolled back.
    pub(crate) rolled_back: Vec<(u64, u64)>,
    /// Kept commit records: epoch, and this worker's checkpoint of it.
    pub(crate) kept: BTreeMap<u64, Option<u64>>,
    /// The epoch of the savepoint the job started from, if it did.
    pub(crate) from_savepoint: Option<u64>,
}

/// Refuses a run that cannot continue the job these records belong to;
/// reads and writes nothing.
pub(crate) fn check(history: &History, config: &JobConfig, workers: usize) -> Result<()> {
    if let Some(epoch) = config.from_epoch {
        history.candidates(Some(epoch))?;
    }
    let Some(c) = history.newest_valid() else {
        return Ok(());
    };
    let refuse = |reason: String| Error::Recovery {
        epoch: c.epoch,
        reason: reason.into(),
    };
    if c.job != config.job_id {
        return Err(refuse(format!(
            "the checkpoints belong to job `{}`, not `{}`",
            c.job, config.job_id
        )));
    }
    if c.key_groups != config.key_groups {
        return Err(refuse(format!(
            "the job has {} key groups; this run asks for {} (fixed when a job is created)",
            c.key_groups, config.key_groups
        )));
    }
    if workers > usize::from(c.key_groups) {
        return Err(refuse(format!(
            "{workers} workers but only {} key groups: at most one worker per key group",
            c.key_groups
        )));
    }
    for r in history.valid() {
        if r.checkpoints.len() != r.workers {
            return Err(Error::Recovery {
                epoch: r.epoch,
                reason: format!(
                    "the commit record names {} checkpoints for {} workers",
                    r.checkpoints.len(),
                    r.workers
                )
                .into(),
            });
        }
    }
    Ok(())
}

/// A worker's answer in a round.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Vote {
    Ready,
    /// Something it needs is damaged or missing: try an older commit.
    Damaged(String),
    /// It cannot go on, for a reason that is not damage.
    Failed(String),
}

/// The outcome of a round for this worker: go on, or the error it returns.
fn tally(votes: &[Vote], own: Option<Error>) -> Result<bool> {
    if let Some(e) = own {
        return Err(e);
    }
    if let Some((w, why)) = votes.iter().enumerate().find_map(|(w, v)| match v {
        Vote::Failed(why) => Some((w, why)),
        _ => None,
    }) {
        return Err(Error::Worker(format!(
            "stopped because another worker failed (worker {w}: {why})"
        )));
    }
    Ok(votes.iter().all(|v| matches!(v, Vote::Ready)))
}

/// Opens worker `index`'s checkpoint location, registers its backend and
/// its cache's checkpoints,
/// restores the newest commit every worker can restore, and tells the
/// manager what to keep. Every worker calls this, in every process.
pub(crate) fn recover(
    worker: &mut timely::worker::Worker,
    abort: &AtomicBool,
    config: &JobConfig,
    storage: &CheckpointStorage,
    backend: &Arc<dyn Checkpointable>,
    hot: &Arc<crate::state::HotImage>,
) -> Result<(Arc<CheckpointManager>, Recovered)> {
    let index = worker.index();
    let peers = worker.peers();

    // 2. Every worker's location, taken.
    let opened: Result<CheckpointManager> = storage
        .open(&format!("workers/{index:05}"))
        .and_then(|s| {
            Ok(CheckpointManager::open(
                s,
                config.worker_checkpoints(index),
            )?)
        })
        .and_then(|m| {
            m.register("state", Arc::clone(backend))?;
            m.register("cache", Arc::clone(hot) as Arc<dyn Checkpointable>)?;
            Ok(m)
        });
    let vote = match &opened {
        Ok(_) => Vote::Ready,
        Err(e) => Vote::Failed(error_chain(e)),
    };
    let votes = exchange_all(worker, vote, abort)?;
    // The worker that could not open reports why; the others that it did.
    let manager = Arc::new(opened?);
    tally(&votes, None)?;

    // 3. The records as worker 0 reads them.
    type Reading = (Vec<CommitRecord>, Vec<u64>);
    let reading: Option<std::result::Result<Reading, String>> = (index == 0).then(|| {
        storage
            .open("")
            .and_then(|root| {
                crate::history::sweep_temporaries(&*root);
                History::read(&*root)
            })
            .map(|h| (h.records().to_vec(), h.unreadable().to_vec()))
            .map_err(|e| error_chain(&e))
    });
    let mut answers = exchange_all(worker, reading, abort)?;
    let history = match answers.swap_remove(0) {
        Some(Ok((records, unreadable))) => History::from_records(records, unreadable),
        Some(Err(why)) => {
            return Err(Error::Worker(format!(
                "could not read the job's commit records: {why}"
            )));
        }
        None => return Err(Error::Worker("worker 0 sent no commit records".into())),
    };
    check(&history, config, peers)?;

    // 4. Newest valid first, until every worker restored the same one.
    let candidates = history.candidates(config.from_epoch)?;
    if let Some(location) = &config.savepoint
        && history.newest_valid().is_none()
    {
        // A new job: its state is the savepoint's.
        let attempt = crate::savepoint::read(location).and_then(|info| {
            check_savepoint(&info, config, peers)?;
            let metadata = crate::savepoint::restore(location, &info, &manager, index, peers)?;
            Ok((info, metadata))
        });
        let (own, restored) = match attempt {
            Ok(done) => (Vote::Ready, Ok(done)),
            Err(e) => (Vote::Failed(error_chain(&e)), Err(e)),
        };
        let votes = exchange_all(worker, own, abort)?;
        let (info, metadata) = restored?;
        tally(&votes, None)?;
        if index == 0 {
            tracing::info!(
                job = %config.job_id,
                savepoint = %location.describe(),
                of_job = %info.job,
                epoch = info.epoch,
                workers = info.workers,
                "started from a savepoint"
            );
        }
        manager.set_required(std::iter::empty())?;
        let first_epoch = history.max_epoch().map_or(0, |e| e + 1).max(info.epoch + 1);
        return Ok((
            manager,
            Recovered {
                metadata,
                history,
                first_epoch,
                from_savepoint: Some(info.epoch),
                ..Recovered::default()
            },
        ));
    }
    let mut chosen = None;
    let mut metadata = Metadata::new();
    let mut why_not = Vec::new();
    for c in &candidates {
        let (vote, own) = match restore(storage, c, &manager, index, peers, config) {
            Ok(m) => {
                metadata = m;
                (Vote::Ready, None)
            }
            Err(Attempt::Damaged(why)) => (Vote::Damaged(why), None),
            Err(Attempt::Failed(e)) => (Vote::Failed(error_chain(&e)), Some(e)),
        };
        let votes = exchange_all(worker, vote, abort)?;
        if tally(&votes, own)? {
            chosen = Some(c.clone());
            break;
        }
        for (w, v) in votes.iter().enumerate() {
            if let Vote::Damaged(why) = v {
                if index == 0 {
                    tracing::warn!(
                        epoch = c.epoch,
                        worker = w,
                        why,
                        "cannot recover from this committed epoch"
                    );
                }
                why_not.push(format!("epoch {}: worker {w}: {why}", c.epoch));
            }
        }
        if config.from_epoch.is_some() {
            return Err(Error::Recovery {
                epoch: c.epoch,
                reason: why_not.join("; ").into(),
            });
        }
    }
    match (&chosen, candidates.first()) {
        (None, Some(newest)) => {
            return Err(Error::Recovery {
                epoch: newest.epoch,
                reason: format!(
                    "no committed epoch has every worker's checkpoint intact ({})",
                    why_not.join("; ")
                )
                .into(),
            });
        }
        (None, None) => clear(&**backend)?,
        (Some(c), Some(newest)) => {
            if index == 0 {
                if c.epoch == newest.epoch {
                    tracing::info!(epoch = c.epoch, "recovered from the newest committed epoch");
                } else {
                    tracing::warn!(
                        epoch = c.epoch,
                        newest = newest.epoch,
                        "recovered from an older committed epoch; the newer ones are rolled back once this run commits"
                    );
                }
            }
        }
        (Some(_), None) => {}
    }

    // 5. What is kept, and how the run numbers its epochs.
    let committed = history.newest_valid().map(|r| r.epoch);
    let first_epoch = history.max_epoch().map_or(0, |e| e + 1);
    let rolls_back = match (&chosen, committed) {
        (Some(c), Some(newest)) if c.epoch < newest => Some((c.epoch + 1, first_epoch - 1)),
        _ => None,
    };
    // Every record that counts (the epochs this run rolls back count until
    // it commits); the committer prunes at each commit and says which went.
    let kept: BTreeMap<u64, Option<u64>> = history
        .valid()
        .map(|r| (r.epoch, r.checkpoint_of(index)))
        .collect();
    manager.set_required(kept.values().flatten().copied())?;
    let rolled_back = history.valid().filter_map(|r| r.rolls_back).collect();
    Ok((
        manager,
        Recovered {
            commit: chosen,
            metadata,
            history,
            committed,
            first_epoch,
            rolls_back,
            rolled_back,
            kept,
            from_savepoint: None,
        },
    ))
}

/// Refuses a savepoint this job cannot start from: another number of key
/// groups, or fewer key groups than workers.
pub(crate) fn check_savepoint(
    info: &crate::savepoint::SavepointInfo,
    config: &JobConfig,
    workers: usize,
) -> Result<()> {
    if info.key_groups != config.key_groups {
        return Err(Error::invalid(
            "savepoint",
            format!(
                "the savepoint (job `{}`, epoch {}) has {} key groups; this job has {} \
                 (a job started from it must keep its number of key groups)",
                info.job, info.epoch, info.key_groups, config.key_groups
            ),
        ));
    }
    if workers > usize::from(info.key_groups) {
        return Err(Error::invalid(
            "savepoint",
            format!(
                "{workers} workers but only {} key groups: at most one worker per key group",
                info.key_groups
            ),
        ));
    }
    Ok(())
}

/// Why a restore did not happen.
enum Attempt {
    /// Something it needs is damaged or missing.
    Damaged(String),
    /// Anything else.
    Failed(Error),
}

impl From<gress_checkpoint::Error> for Attempt {
    fn from(e: gress_checkpoint::Error) -> Self {
        if e.is_damage()
            || e.is_not_found()
            || matches!(e, gress_checkpoint::Error::NoSuchCheckpoint { .. })
        {
            Attempt::Damaged(error_chain(&e))
        } else {
            Attempt::Failed(e.into())
        }
    }
}

/// Restores worker `index`'s part of commit `c`; returns the metadata it
/// starts from.
fn restore(
    storage: &CheckpointStorage,
    c: &CommitRecord,
    manager: &CheckpointManager,
    index: usize,
    peers: usize,
    config: &JobConfig,
) -> std::result::Result<Metadata, Attempt> {
    if c.workers != peers {
        let metadata = rescale(storage, c, manager, index, peers, config.key_groups)?;
        return Ok(metadata);
    }
    let id = c.checkpoints[index];
    let info = manager.restore(id)?;
    let epoch = info
        .metadata
        .get("epoch")
        .and_then(|e| e.parse::<u64>().ok());
    if epoch != Some(c.epoch) {
        return Err(Attempt::Damaged(format!(
            "checkpoint {id} is of epoch {epoch:?}, the commit record says {}",
            c.epoch
        )));
    }
    Ok(info.metadata)
}

impl From<crate::rescale::RescaleError> for Attempt {
    fn from(e: crate::rescale::RescaleError) -> Self {
        match e {
            crate::rescale::RescaleError::Damaged(why) => Attempt::Damaged(why),
            crate::rescale::RescaleError::Checkpoint(e) => e.into(),
            crate::rescale::RescaleError::Other(e) => Attempt::Failed(e),
        }
    }
}

/// Empties a backend: a job that starts without a committed epoch starts
/// from nothing, whatever a previous run left in a persistent backend.
/// One that is empty already is left alone (a fresh start restores
/// nothing, and counts no restore).
pub(crate) fn clear(backend: &dyn Checkpointable) -> Result<()> {
    let m = backend.metrics();
    let empty = if m.n_keys_is_estimate {
        backend.scan_prefix(b"")?.next().is_none()
    } else {
        m.n_keys == 0
    };
    if empty {
        return Ok(());
    }
    let mut empty = Vec::new();
    gress_state::snapshot::SnapshotWriter::new(&mut empty, gress_state::SnapshotKind::Full, 0)?
        .finish()?;
    backend.restore(&empty)?;
    Ok(())
}
