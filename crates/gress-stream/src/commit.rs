//! Exactly-once commits from timely's progress tracking, with no barriers.
//!
//! Every worker holds, in an *ack* operator, a capability at each epoch
//! until its own checkpoint of that epoch is durable; then it sends an ack
//! to worker 0. The *committer* there sees its input frontier pass an epoch
//! only when every worker's ack for it was sent: if all succeeded, it
//! publishes a commit record (create-only) and tells every worker, whose
//! *listener* lets the sinks make that epoch's output visible and the
//! sources go on. Recovery starts from the newest commit record.

use std::collections::BTreeMap;
use std::sync::Arc;

use gress_checkpoint::Storage;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::scheduling::SyncActivator;

use crate::error::{Error, Result};
use crate::worker::{Shared, Uploaded};

/// A source's mark at the end of an epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Token {
    /// The source has read everything it ever will.
    pub(crate) finished: bool,
}

/// A worker's checkpoint of an epoch is durable (or failed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Ack {
    pub(crate) worker: u32,
    pub(crate) checkpoint: Option<u64>,
    pub(crate) ok: bool,
    pub(crate) finished: bool,
}

/// The committer has dealt with an epoch, addressed to worker `to`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Settled {
    pub(crate) to: u32,
    pub(crate) committed: bool,
    pub(crate) final_epoch: bool,
}

/// A committed epoch of a job: every worker's checkpoint of it is durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// The epoch.
    pub epoch: u64,
    /// The job's id.
    pub job: String,
    /// The number of workers that took part.
    pub workers: usize,
    /// The job's number of key groups.
    pub key_groups: u16,
    /// Each worker's checkpoint id of this epoch, by worker index.
    pub checkpoints: Vec<u64>,
    /// When it was committed, ms since the UNIX epoch.
    pub created_at_ms: u64,
}

/// Directory of commit records in the job's checkpoint storage.
pub const COMMITS: &str = "commits/";

/// How many commit records are kept.
const KEEP_COMMITS: usize = 10;

fn commit_path(epoch: u64) -> String {
    format!("{COMMITS}{epoch:020}.commit")
}

/// The newest commit record that parses, if any. A record that does not
/// parse (torn by a storage that is not atomic) is skipped with a warning.
/// Reads records newest first and stops at the first that parses.
pub fn latest_commit(storage: &dyn Storage) -> Result<Option<CommitRecord>> {
    read_commits(storage, Some(1)).map(|mut records| records.pop())
}

/// Every commit record that parses, newest first (a record deleted between
/// the listing and its reading is left out).
pub fn commits(storage: &dyn Storage) -> Result<Vec<CommitRecord>> {
    read_commits(storage, None)
}

/// Up to `most` commit records that parse, newest first.
fn read_commits(storage: &dyn Storage, most: Option<usize>) -> Result<Vec<CommitRecord>> {
    let mut out = Vec::new();
    let mut epochs: Vec<u64> = storage
        .list(COMMITS)?
        .iter()
        .filter_map(|o| {
            o.path
                .strip_prefix(COMMITS)?
                .strip_suffix(".commit")?
                .parse()
                .ok()
        })
        .collect();
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    for epoch in epochs {
        if most.is_some_and(|m| out.len() >= m) {
            break;
        }
        let path = commit_path(epoch);
        let bytes = match storage.read_all(&path, 1 << 20) {
            Ok(bytes) => bytes,
            // Deleted since the listing: an old record pruned by a running
            // job.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        match serde_json::from_slice::<CommitRecord>(&bytes) {
            Ok(record) if record.epoch == epoch => out.push(record),
            Ok(_) | Err(_) => {
                tracing::warn!(path, "skipping an unreadable commit record");
            }
        }
    }
    Ok(out)
}

/// Whether every worker's checkpoint named by `record` is there: its
/// manifest readable and every file present with its size. Every worker
/// asks the same question of the same storage, so all choose the same
/// epoch to recover from.
pub(crate) fn restorable(
    record: &CommitRecord,
    worker_storage: &dyn Fn(usize) -> Result<Arc<dyn Storage>>,
) -> Result<std::result::Result<(), String>> {
    for (w, &id) in record.checkpoints.iter().enumerate() {
        let storage = worker_storage(w)?;
        let catalog = gress_checkpoint::Catalog::open(Arc::clone(&storage))?;
        let Some(manifest) = catalog.manifest(id) else {
            return Ok(Err(format!(
                "worker {w}'s checkpoint {id} is missing or damaged"
            )));
        };
        for f in manifest.paths() {
            if storage.size(&f.path)? != Some(f.size) {
                return Ok(Err(format!(
                    "worker {w}'s checkpoint {id} lacks {} or it has the wrong size",
                    f.path
                )));
            }
        }
    }
    Ok(Ok(()))
}

/// Publishes a commit record (create-only; a record already there with
/// the same content counts) and trims old ones.
fn publish(storage: &dyn Storage, record: &CommitRecord) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::invalid("commit record", e.to_string()))?;
    let path = commit_path(record.epoch);
    if let Err(e) = storage.put_new(&path, &bytes) {
        match storage.read_all(&path, 1 << 20) {
            Ok(found) if found == bytes => {}
            _ => return Err(e.into()),
        }
    }
    let mut old: Vec<String> = storage
        .list(COMMITS)?
        .into_iter()
        .map(|o| o.path)
        .filter(|p| p.ends_with(".commit"))
        .collect();
    old.sort();
    let n = old.len().saturating_sub(KEEP_COMMITS);
    for path in &old[..n] {
        if let Err(e) = storage.delete(path) {
            tracing::debug!(path, error = %e, "could not delete an old commit record");
        }
    }
    Ok(())
}

/// The ack operator of a worker: holds each epoch until the worker's
/// checkpoint of it is durable. `slot` receives its activator for the
/// upload thread.
pub(crate) fn acks<'s>(
    tokens: StreamVec<'s, u64, Token>,
    shared: Shared,
    slot: Arc<Mutex<Option<SyncActivator>>>,
) -> StreamVec<'s, u64, Ack> {
    let scope = tokens.scope();
    tokens.unary_frontier::<CapacityContainerBuilder<Vec<Ack>>, _, _, _>(
        Pipeline,
        "Acks",
        move |initial, info| {
            drop(initial);
            *slot.lock() = Some(scope.worker().sync_activator_for(info.address.to_vec()));
            let index = shared.borrow().index as u32;
            // Per epoch: capability, tokens seen, tokens that said finished.
            let mut pending: BTreeMap<u64, (Capability<u64>, usize, usize)> = BTreeMap::new();
            let mut results: BTreeMap<u64, std::result::Result<u64, String>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let entry = match pending.entry(epoch) {
                        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::btree_map::Entry::Vacant(v) => {
                            let Some(cap) = cap.retain_least(output.output_index()) else {
                                return;
                            };
                            v.insert((cap, 0, 0))
                        }
                    };
                    for batch in data {
                        for token in batch.drain(..) {
                            entry.1 += 1;
                            entry.2 += usize::from(token.finished);
                        }
                    }
                });
                let mut s = shared.borrow_mut();
                let checkpointing = s.checkpoints.is_some();
                let mut arrived = Vec::new();
                if let Some(cp) = &s.checkpoints {
                    while let Ok(Uploaded {
                        epoch,
                        result,
                        report,
                    }) = cp.results.try_recv()
                    {
                        results.insert(epoch, result);
                        arrived.push((epoch, report));
                    }
                }
                for (epoch, report) in arrived {
                    s.checkpointed(epoch, report.as_ref());
                }
                drop(s);
                while let Some((&epoch, _)) = pending.first_key_value() {
                    if frontier.less_equal(&epoch) {
                        break;
                    }
                    let result = if checkpointing {
                        match results.remove(&epoch) {
                            Some(r) => r,
                            None => break,
                        }
                    } else {
                        Ok(0)
                    };
                    let Some((cap, tokens, finished)) = pending.remove(&epoch) else {
                        break;
                    };
                    output.session(&cap).give(Ack {
                        worker: index,
                        checkpoint: result.as_ref().ok().copied().filter(|_| checkpointing),
                        ok: result.is_ok(),
                        finished: tokens > 0 && finished == tokens,
                    });
                }
            }
        },
    )
}

/// The committer (all acks go to worker 0): publishes a commit record for
/// each epoch every worker checkpointed, and tells every worker.
pub(crate) fn committer<'s>(
    acks: StreamVec<'s, u64, Ack>,
    shared: Shared,
    storage: Option<Arc<dyn Storage>>,
    max_failed: u64,
) -> StreamVec<'s, u64, Settled> {
    acks.unary_frontier::<CapacityContainerBuilder<Vec<Settled>>, _, _, _>(
        Exchange::new(|_: &Ack| 0),
        "Committer",
        move |initial, _info| {
            drop(initial);
            let (peers, key_groups, job) = {
                let s = shared.borrow();
                (s.peers, s.key_groups, s.job_id.clone())
            };
            let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Ack>)> = BTreeMap::new();
            let mut failed_in_a_row = 0u64;
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let entry = match pending.entry(epoch) {
                        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::btree_map::Entry::Vacant(v) => {
                            let Some(cap) = cap.retain_least(output.output_index()) else {
                                return;
                            };
                            v.insert((cap, Vec::new()))
                        }
                    };
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                while let Some((&epoch, _)) = pending.first_key_value() {
                    if frontier.less_equal(&epoch) {
                        break;
                    }
                    let Some((cap, mut acks)) = pending.remove(&epoch) else {
                        break;
                    };
                    acks.sort_by_key(|a| a.worker);
                    let all = acks.len() == peers && acks.iter().all(|a| a.ok);
                    let final_epoch = all && acks.iter().all(|a| a.finished);
                    let committed = all
                        && match &storage {
                            None => true,
                            Some(storage) => {
                                let record = CommitRecord {
                                    epoch,
                                    job: job.clone(),
                                    workers: peers,
                                    key_groups,
                                    checkpoints: acks
                                        .iter()
                                        .map(|a| a.checkpoint.unwrap_or(0))
                                        .collect(),
                                    created_at_ms: crate::job::now_ms(),
                                };
                                match publish(&**storage, &record) {
                                    Ok(()) => {
                                        tracing::info!(epoch, "epoch committed");
                                        true
                                    }
                                    Err(e) => {
                                        tracing::warn!(epoch, error = %e, "could not publish a commit record");
                                        false
                                    }
                                }
                            }
                        };
                    if committed {
                        failed_in_a_row = 0;
                    } else {
                        failed_in_a_row += 1;
                        tracing::warn!(epoch, acks = acks.len(), failed_in_a_row, "epoch not committed: a checkpoint failed");
                        if failed_in_a_row >= max_failed {
                            shared.borrow_mut().fail(Error::Worker(format!(
                                "{failed_in_a_row} epochs in a row could not be committed; \
                                 is the checkpoint storage reachable?"
                            )));
                        }
                    }
                    let mut session = output.session(&cap);
                    for to in 0..peers as u32 {
                        session.give(Settled {
                            to,
                            committed,
                            final_epoch,
                        });
                    }
                }
            }
        },
    )
}

/// Each worker's listener: records what the committer settled and wakes
/// the sources and sinks.
pub(crate) fn listen(settled: StreamVec<'_, u64, Settled>, shared: Shared) {
    settled.sink(
        Exchange::new(|s: &Settled| u64::from(s.to)),
        "Listener",
        move |(input, _frontier)| {
            input.for_each_stamp(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                for batch in data {
                    for s in batch.drain(..) {
                        shared
                            .borrow_mut()
                            .settle(epoch, s.committed, s.final_epoch);
                    }
                }
            });
        },
    );
}
