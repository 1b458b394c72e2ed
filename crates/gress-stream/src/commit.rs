//! Exactly-once commits from timely's progress tracking, with no barriers.
//!
//! Every worker holds, in an *ack* operator, a capability at each epoch
//! until its own checkpoint of that epoch is durable; then it sends an ack
//! to worker 0. The *committer* there sees its input frontier pass an epoch
//! only when every worker's ack for it was sent: if all succeeded, its
//! commit thread publishes a commit record (create-only) and prunes the
//! history, and the committer tells every worker, whose *listener* lets
//! the sinks make that epoch's output visible, the sources go on, and the
//! checkpoint manager drop what no kept record needs. Recovery starts from
//! the newest commit record that counts ([`crate::history`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc;

use gress_checkpoint::{CheckpointManager, Storage};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::scheduling::SyncActivator;

use crate::error::{Error, Result};
use crate::history::{CommitRecord, History, delete_records, publish};
use crate::worker::{CheckpointFailure, Shared, Uploaded};

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
    /// The checkpoint's id, or why there is none.
    pub(crate) checkpoint: std::result::Result<u64, CheckpointFailure>,
    pub(crate) finished: bool,
}

/// The committer has dealt with an epoch, addressed to worker `to`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Settled {
    pub(crate) to: u32,
    pub(crate) committed: bool,
    pub(crate) final_epoch: bool,
    /// Epochs whose commit records were deleted with this commit: their
    /// checkpoints are no longer needed.
    pub(crate) pruned: Vec<u64>,
}

/// What the committer of a job needs besides its input.
pub(crate) struct CommitterSetup {
    /// The job's checkpoint storage (root); `None` without checkpoints.
    pub(crate) storage: Option<Arc<dyn Storage>>,
    /// The job's commit records as the run found them.
    pub(crate) history: History,
    /// Valid commit records kept.
    pub(crate) keep: usize,
    /// Epochs this run rolls back, named in every record it publishes.
    pub(crate) rolls_back: Option<(u64, u64)>,
    /// Worker 0's checkpoint manager: a record is published only while it
    /// still holds its location.
    pub(crate) fence: Option<Arc<CheckpointManager>>,
    /// Epochs in a row that may fail to commit before the job stops.
    pub(crate) max_failed: u64,
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
            let mut results: BTreeMap<u64, std::result::Result<u64, CheckpointFailure>> =
                BTreeMap::new();
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
                        arrived.push((epoch, result.clone(), report));
                        results.insert(epoch, result);
                    }
                }
                for (epoch, result, report) in arrived {
                    if let Err(failure) = &result
                        && failure.fenced
                    {
                        // Another run holds this job's checkpoints: this
                        // one can never commit again.
                        s.fail(Error::Worker(format!(
                            "another run of this job took over its checkpoints: {}",
                            failure.reason
                        )));
                    }
                    s.checkpointed(epoch, result.as_ref().ok().copied(), report.as_ref());
                }
                drop(s);
                while let Some((&epoch, _)) = pending.first_key_value() {
                    if frontier.less_equal(&epoch) {
                        break;
                    }
                    let checkpoint = if checkpointing {
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
                        checkpoint,
                        finished: tokens > 0 && finished == tokens,
                    });
                }
            }
        },
    )
}

/// An epoch handed to the commit thread.
struct ToPublish {
    epoch: u64,
    /// The record, if every worker's checkpoint of the epoch is durable.
    record: Option<CommitRecord>,
}

/// What the commit thread did with an epoch.
struct Published {
    epoch: u64,
    /// `Ok(pruned)`: committed, and these records deleted.
    outcome: std::result::Result<Vec<u64>, String>,
}

/// Publishes commit records in epoch order on a thread of its own, so the
/// dataflow thread never waits for the storage.
struct CommitThread {
    jobs: mpsc::Sender<ToPublish>,
    results: mpsc::Receiver<Published>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CommitThread {
    fn start(
        storage: Arc<dyn Storage>,
        mut history: History,
        keep: usize,
        fence: Option<Arc<CheckpointManager>>,
        wake: SyncActivator,
    ) -> Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<ToPublish>();
        let (done, results) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gress-commit".into())
            .spawn(move || {
                // Records whose deletion failed, tried again at the next
                // commit.
                let mut leftover: Vec<u64> = Vec::new();
                for job in job_rx {
                    let outcome = match job.record {
                        None => Err("a worker's checkpoint failed".to_string()),
                        Some(record) => {
                            let fenced = fence.as_ref().and_then(|m| m.check_fence().err());
                            match fenced {
                                Some(e) => Err(format!("not publishing: {e}")),
                                None => match publish(&*storage, &record) {
                                    Err(e) => Err(e.to_string()),
                                    Ok(()) => {
                                        tracing::debug!(epoch = record.epoch, "epoch committed");
                                        history.push(record);
                                        let pruned = history.prune(keep);
                                        let mut doomed = pruned.clone();
                                        doomed.append(&mut leftover);
                                        delete_records(&*storage, doomed.clone());
                                        leftover = doomed
                                            .into_iter()
                                            .filter(|&e| {
                                                storage
                                                    .size(&crate::history::commit_path(e))
                                                    .map_or(true, |s| s.is_some())
                                            })
                                            .collect();
                                        Ok(pruned)
                                    }
                                },
                            }
                        }
                    };
                    if done
                        .send(Published {
                            epoch: job.epoch,
                            outcome,
                        })
                        .is_err()
                    {
                        return;
                    }
                    let _ = wake.activate();
                }
            })
            .map_err(|e| Error::Worker(format!("could not start the commit thread: {e}")))?;
        Ok(CommitThread {
            jobs,
            results,
            thread: Some(thread),
        })
    }
}

impl Drop for CommitThread {
    /// Waits for the publication in progress: once a run has returned, it
    /// writes nothing more.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the commit thread panicked");
        }
    }
}

/// The committer (all acks go to worker 0): has a commit record published
/// for each epoch every worker checkpointed, in epoch order, and tells
/// every worker.
pub(crate) fn committer<'s>(
    acks: StreamVec<'s, u64, Ack>,
    shared: Shared,
    setup: CommitterSetup,
) -> StreamVec<'s, u64, Settled> {
    let scope = acks.scope();
    acks.unary_frontier::<CapacityContainerBuilder<Vec<Settled>>, _, _, _>(
        Exchange::new(|_: &Ack| 0),
        "Committer",
        move |initial, info| {
            drop(initial);
            let (peers, key_groups, job) = {
                let s = shared.borrow();
                (s.peers, s.key_groups, s.job_id.clone())
            };
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            let CommitterSetup {
                storage,
                history,
                keep,
                rolls_back,
                fence,
                max_failed,
            } = setup;
            let mut start = Some((history, fence, wake));
            let mut thread: Option<CommitThread> = None;
            let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Ack>)> = BTreeMap::new();
            // Handed to the commit thread, in epoch order: capability and
            // whether it is the final epoch.
            let mut sent: VecDeque<(u64, Capability<u64>, bool)> = VecDeque::new();
            let mut failed_in_a_row = 0u64;
            let mut last_failure = String::new();
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
                let mut settled: Vec<(Capability<u64>, bool, bool, Vec<u64>)> = Vec::new();
                while let Some((&epoch, _)) = pending.first_key_value() {
                    if frontier.less_equal(&epoch) {
                        break;
                    }
                    let Some((cap, mut acks)) = pending.remove(&epoch) else {
                        break;
                    };
                    acks.sort_by_key(|a| a.worker);
                    let all = acks.len() == peers && acks.iter().all(|a| a.checkpoint.is_ok());
                    let final_epoch = all && acks.iter().all(|a| a.finished);
                    if let Some(failure) = acks.iter().find_map(|a| a.checkpoint.as_ref().err()) {
                        last_failure = failure.reason.clone();
                    }
                    let Some(storage) = &storage else {
                        // No checkpoints: every complete epoch commits.
                        settled.push((cap, all, final_epoch, Vec::new()));
                        continue;
                    };
                    if thread.is_none()
                        && let Some((history, fence, wake)) = start.take()
                    {
                        match CommitThread::start(Arc::clone(storage), history, keep, fence, wake) {
                            Ok(t) => thread = Some(t),
                            Err(e) => {
                                shared.borrow_mut().fail(e);
                                return;
                            }
                        }
                    }
                    let Some(t) = &thread else { return };
                    let record = all.then(|| CommitRecord {
                        epoch,
                        job: job.clone(),
                        workers: peers,
                        key_groups,
                        checkpoints: acks.iter().filter_map(|a| a.checkpoint.clone().ok()).collect(),
                        created_at_ms: crate::time::now_ms(),
                        rolls_back,
                        checksum: None,
                    });
                    if t.jobs.send(ToPublish { epoch, record }).is_err() {
                        shared
                            .borrow_mut()
                            .fail(Error::Worker("the commit thread stopped".into()));
                        return;
                    }
                    sent.push_back((epoch, cap, final_epoch));
                }
                if let Some(t) = &thread {
                    while let Ok(Published { epoch, outcome }) = t.results.try_recv() {
                        let Some((sent_epoch, cap, final_epoch)) = sent.pop_front() else {
                            break;
                        };
                        debug_assert_eq!(sent_epoch, epoch);
                        match outcome {
                            Ok(pruned) => settled.push((cap, true, final_epoch, pruned)),
                            Err(why) => {
                                if why != "a worker's checkpoint failed" {
                                    tracing::warn!(epoch, error = %why, "could not publish a commit record");
                                    last_failure = why;
                                } else if last_failure.is_empty() {
                                    // The worker logged why, at warn.
                                    last_failure = format!(
                                        "{why} (its reason is logged at warn: \"checkpoint upload failed\")"
                                    );
                                }
                                settled.push((cap, false, final_epoch, Vec::new()));
                            }
                        }
                    }
                }
                for (cap, committed, final_epoch, pruned) in settled {
                    let epoch = *cap.time();
                    if committed {
                        failed_in_a_row = 0;
                    } else {
                        failed_in_a_row += 1;
                        tracing::warn!(epoch, failed_in_a_row, reason = %last_failure, "epoch not committed");
                        if failed_in_a_row >= max_failed {
                            shared.borrow_mut().fail(Error::Worker(format!(
                                "{failed_in_a_row} epochs in a row could not be committed; \
                                 the last failure: {last_failure}"
                            )));
                        }
                    }
                    let mut session = output.session(&cap);
                    for to in 0..peers as u32 {
                        session.give(Settled {
                            to,
                            committed,
                            final_epoch: committed && final_epoch,
                            pruned: pruned.clone(),
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
                            .settle(epoch, s.committed, s.final_epoch, &s.pruned);
                    }
                }
            });
        },
    );
}
