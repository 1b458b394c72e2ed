//! What the operators of one worker share: the keyed state, the epoch
//! bookkeeping that decides when the worker's state is cut, and what the
//! worker has learned of committed epochs.
//!
//! A worker's state is a valid cut for epoch `e` once every stateful
//! operator has applied all of `e` and none has applied any of `e + 1`, and
//! the sources have recorded their offsets at the end of `e`. Operators
//! apply epochs in order and ask [`WorkerState::may_apply`] before each;
//! when the last of them reports an epoch done, the cut is taken at once:
//! the state cache is flushed and the checkpoint manager cuts the backend,
//! and the upload goes to a thread of its own.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use gress_checkpoint::{CheckpointManager, Metadata, PendingCheckpoint};
use serde::{Deserialize, Serialize};
use timely::scheduling::{Activator, SyncActivator};

use crate::error::{Error, Result};
use crate::state::StateStore;
use crate::telemetry::{Counts, WorkerMetrics};

/// What the worker tells sinks and sources of the last commit when the job
/// ends.
pub(crate) trait OnCommit {
    fn commit_to(&mut self, committed: Option<u64>) -> Result<()>;
}

/// Why a worker has no checkpoint of an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CheckpointFailure {
    /// The error, as text.
    pub(crate) reason: String,
    /// Another manager took over the worker's checkpoint location.
    pub(crate) fenced: bool,
}

impl CheckpointFailure {
    pub(crate) fn new(e: &gress_checkpoint::Error) -> Self {
        CheckpointFailure {
            reason: error_chain(e),
            fenced: matches!(e, gress_checkpoint::Error::Fenced { .. }),
        }
    }
}

/// `e`, then each of its causes not already in its text.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The result of one worker's checkpoint of an epoch.
#[derive(Debug, Clone)]
pub(crate) struct Uploaded {
    pub(crate) epoch: u64,
    /// The checkpoint id, or why there is none.
    pub(crate) result: std::result::Result<u64, CheckpointFailure>,
    /// What it cost, when it committed.
    pub(crate) report: Option<gress_checkpoint::CheckpointReport>,
}

/// Work for a worker's upload thread, done in order.
pub(crate) enum UploadJob {
    /// Write and commit the checkpoint of an epoch.
    Commit(u64, Box<PendingCheckpoint>),
    /// Keep only these committed checkpoints (and newer ones).
    Require(Vec<u64>),
}

/// What one worker's checkpoint of one epoch cost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EpochCheckpoint {
    /// The worker.
    pub worker: usize,
    /// The epoch.
    pub epoch: u64,
    /// Writing the cache's dirty entries to the backend.
    pub flush: std::time::Duration,
    /// How long the worker stopped processing for the cut: the flush of
    /// what was still dirty plus the backend's capture.
    pub stall: std::time::Duration,
    /// The backend's cut (writers held).
    pub pause: std::time::Duration,
    /// From the cut to the published manifest.
    pub duration: std::time::Duration,
    /// Bytes written to checkpoint storage.
    pub bytes_written: u64,
    /// Files written, and files reused from earlier checkpoints.
    pub files: (usize, usize),
}

/// Checkpointing of one worker.
pub(crate) struct Checkpoints {
    pub(crate) manager: Arc<CheckpointManager>,
    pub(crate) uploads: mpsc::Sender<UploadJob>,
    pub(crate) results: mpsc::Receiver<Uploaded>,
    /// For cuts that fail before any upload.
    pub(crate) failures: mpsc::Sender<Uploaded>,
    /// Wakes the acks operator when a result arrives.
    pub(crate) wake: Arc<parking_lot::Mutex<Option<SyncActivator>>>,
    /// The upload thread, joined on drop.
    pub(crate) upload: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpoints {
    /// Waits for the upload in progress, if any: once a job has returned,
    /// nothing of it holds its backends (a run started again in the same
    /// process opens them again).
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.uploads, closed));
        if let Some(thread) = self.upload.take()
            && thread.join().is_err()
        {
            tracing::error!("the upload thread panicked");
        }
    }
}

/// A worker's cut of an epoch, waiting for its backend's capture: the
/// cache has written the epoch's state to the backend, which now starts
/// what it needs for a quick capture (RocksDB flushes its memtables) while
/// the worker goes on with the next epoch in its cache.
struct Cut {
    epoch: u64,
    metadata: Metadata,
    manager: Arc<CheckpointManager>,
    uploads: mpsc::Sender<UploadJob>,
    failures: mpsc::Sender<Uploaded>,
    wake: Arc<parking_lot::Mutex<Option<SyncActivator>>>,
    /// How long writing the cache's dirty entries took.
    flushed: Duration,
    flushes: Rc<RefCell<BTreeMap<u64, (Duration, Duration)>>>,
}

impl crate::state::DeferredCapture for Cut {
    fn capture(self: Box<Self>) -> Result<()> {
        let started = Instant::now();
        let Cut {
            epoch,
            metadata,
            manager,
            uploads,
            failures,
            wake,
            flushed,
            flushes,
        } = *self;
        let begun = manager.begin_checkpoint(metadata);
        flushes
            .borrow_mut()
            .insert(epoch, (flushed, flushed + started.elapsed()));
        match begun {
            Ok(pending) => {
                if uploads
                    .send(UploadJob::Commit(epoch, Box::new(pending)))
                    .is_err()
                {
                    return Err(Error::Worker("the upload thread stopped".into()));
                }
            }
            Err(e) => {
                tracing::warn!(epoch, error = %e, "could not cut a checkpoint; the epoch will not commit");
                let _ = failures.send(Uploaded {
                    epoch,
                    result: Err(CheckpointFailure::new(&e)),
                    report: None,
                });
                // The acks wait for this result.
                if let Some(a) = &*wake.lock() {
                    let _ = a.activate();
                }
            }
        }
        Ok(())
    }
}

/// Checkpoint metadata naming a state id: `state/<id, 8 hex digits>` =
/// `operator/state`.
pub const STATE_PREFIX: &str = "state/";
/// Checkpoint metadata naming a keyed operator's id (its timers' keys
/// carry it): `operator/<id, 8 hex digits>` = its name.
pub const OPERATOR_PREFIX: &str = "operator/";

/// Shared by the operators of one worker (one thread).
pub(crate) struct WorkerState {
    /// The job's control: stop requests in, status out.
    pub(crate) control: Arc<crate::control::Control>,
    /// The newest cut epoch's source offsets and watermarks.
    last_marks: Option<(u64, Metadata)>,
    pub(crate) index: usize,
    pub(crate) peers: usize,
    pub(crate) key_groups: u16,
    pub(crate) job_id: String,
    pub(crate) store: StateStore,
    pub(crate) checkpoints: Option<Checkpoints>,
    /// Stateful operators registered while the dataflow was built.
    stateful: usize,
    /// Names of sources and keyed operators, with what each is.
    names: Vec<(&'static str, String)>,
    /// Timers read back at the start, by operator, until each takes its own.
    restored_timers: Option<
        std::collections::HashMap<u32, Vec<(crate::keys::TimeDomain, crate::timers::TimerEntry)>>,
    >,
    /// Sources registered.
    sources: usize,
    /// Sinks registered.
    sink_count: usize,
    /// Per epoch: stateful operators, sources and sinks done with it.
    done: BTreeMap<u64, (usize, usize, usize)>,
    /// Per epoch: what sources (offsets, event-time high marks) and
    /// operators (watermarks) recorded at its end, for its checkpoint.
    marks: BTreeMap<u64, Metadata>,
    /// Marks that last until changed: per key, the value as of each epoch.
    lasting: BTreeMap<String, BTreeMap<u64, u64>>,
    /// The metadata of the checkpoint this worker recovered from.
    pub(crate) restored: Metadata,
    /// The next epoch whose cut is due; epochs below it are cut.
    pub(crate) next_cut: u64,
    /// Operators waiting for a cut.
    waiting: Vec<Activator>,
    /// The newest epoch the job committed, as this worker learned it.
    pub(crate) committed: Option<u64>,
    /// The highest epoch the committer has dealt with (committed or not),
    /// plus one: the epochs below it are out of flight.
    pub(crate) settled: u64,
    /// Set when the final epoch was committed: sources stop.
    pub(crate) finished: bool,
    /// Woken when `committed`, `settled` or `finished` change.
    pub(crate) listeners: Vec<Activator>,
    /// The first error of any operator of this worker.
    pub(crate) error: Option<Error>,
    /// Sinks and sources told of the last commit when the job ends.
    pub(crate) on_commit: Vec<Rc<RefCell<dyn OnCommit>>>,
    /// Records read by this worker's sources.
    pub(crate) records_read: u64,
    pub(crate) records_in: u64,
    pub(crate) records_out: u64,
    pub(crate) epochs_cut: u64,
    /// The first epoch of this run.
    pub(crate) first_epoch: u64,
    /// The newest epoch this worker's sources have opened.
    opened: u64,
    /// When each epoch not yet settled was cut.
    cut_at: BTreeMap<u64, Instant>,
    /// This worker's metrics in the `metrics` facade.
    pub(crate) metrics: WorkerMetrics,
    /// Flush time and whole stall of each epoch cut, until its checkpoint
    /// is reported (shared with the cuts waiting for their capture).
    pub(crate) flushes: Rc<RefCell<BTreeMap<u64, (Duration, Duration)>>>,
    /// Finished checkpoints of this worker.
    pub(crate) checkpoint_costs: Vec<EpochCheckpoint>,
    /// This worker's checkpoint of each epoch not yet settled.
    checkpoint_ids: BTreeMap<u64, u64>,
    /// The epochs whose commit records are kept, with this worker's
    /// checkpoint of each (none if it did not take part): retention keeps
    /// those.
    kept: BTreeMap<u64, Option<u64>>,
    /// The epochs this run rolls back once it commits (from the commit
    /// record it recovered from to the newest there was).
    pub(crate) pending_rollback: Option<(u64, u64)>,
    /// Epochs earlier runs rolled back (sinks withdraw their output).
    pub(crate) rolled_back: Vec<(u64, u64)>,
    /// The committed epoch this run recovered from.
    pub(crate) recovered_from: Option<u64>,
    last_report: std::time::Instant,
    reported: (u64, u64),
}

pub(crate) type Shared = Rc<RefCell<WorkerState>>;

impl WorkerState {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        peers: usize,
        key_groups: u16,
        job_id: String,
        store: StateStore,
        checkpoints: Option<Checkpoints>,
        first_epoch: u64,
        committed: Option<u64>,
        metrics_interval: Duration,
    ) -> Self {
        let metrics = WorkerMetrics::new(&job_id, index, metrics_interval);
        WorkerState {
            index,
            peers,
            key_groups,
            job_id,
            store,
            checkpoints,
            stateful: 0,
            names: Vec::new(),
            restored_timers: None,
            sources: 0,
            sink_count: 0,
            done: BTreeMap::new(),
            marks: BTreeMap::new(),
            lasting: BTreeMap::new(),
            restored: Metadata::new(),
            next_cut: first_epoch,
            waiting: Vec::new(),
            committed,
            settled: first_epoch,
            finished: false,
            listeners: Vec::new(),
            error: None,
            on_commit: Vec::new(),
            records_read: 0,
            records_in: 0,
            records_out: 0,
            epochs_cut: 0,
            first_epoch,
            opened: first_epoch,
            cut_at: BTreeMap::new(),
            metrics,
            flushes: Rc::default(),
            checkpoint_costs: Vec::new(),
            checkpoint_ids: BTreeMap::new(),
            kept: BTreeMap::new(),
            pending_rollback: None,
            rolled_back: Vec::new(),
            recovered_from: None,
            last_report: std::time::Instant::now(),
            reported: (0, 0),
            control: Arc::default(),
            last_marks: None,
        }
    }

    pub(crate) fn register_stateful(&mut self) {
        self.stateful += 1;
    }

    /// The timers operator `op` had in this worker's key groups when the
    /// run started (every operator's are read at the first call).
    pub(crate) fn take_timers(
        &mut self,
        op: u32,
    ) -> Result<Vec<(crate::keys::TimeDomain, crate::timers::TimerEntry)>> {
        if self.restored_timers.is_none() {
            let groups = crate::keys::groups_of(self.index, self.peers, self.key_groups);
            let backend = Arc::clone(self.store.backend());
            // The backend's, and those only the cache holds.
            let mut all = crate::timers::load_all(&*backend, groups)?;
            crate::timers::add_keys(&mut all, self.store.cached_timers());
            self.restored_timers = Some(all);
        }
        Ok(self
            .restored_timers
            .as_mut()
            .and_then(|all| all.remove(&op))
            .unwrap_or_default())
    }

    /// Claims `name` for a source or keyed operator: names key their
    /// offsets, state, timers and watermarks in checkpoints, so two parts
    /// of a job never share one.
    pub(crate) fn register_name(&mut self, what: &'static str, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid(what, "a name must not be empty"));
        }
        if let Some((other, _)) = self.names.iter().find(|(_, n)| n == name) {
            return Err(Error::invalid(
                what,
                format!(
                    "`{name}` names a {other} already; give each source and keyed operator its own name"
                ),
            ));
        }
        self.names.push((what, name.to_string()));
        Ok(())
    }

    pub(crate) fn register_source(&mut self) {
        self.sources += 1;
    }

    pub(crate) fn register_sink(&mut self) {
        self.sink_count += 1;
    }

    /// A sink has sealed `epoch` (its output is durable, or delivered):
    /// the epoch may be cut, and so committed, only once every sink has.
    pub(crate) fn sink_done(&mut self, epoch: u64) {
        self.done.entry(epoch).or_default().2 += 1;
        self.try_cut();
    }

    /// Records the first error; the job stops.
    pub(crate) fn fail(&mut self, e: Error) {
        tracing::error!(worker = self.index, error = %e, "job failed");
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Whether an operator may apply `epoch` now: every earlier epoch is
    /// cut (with checkpointing off, always).
    pub(crate) fn may_apply(&mut self, epoch: u64, waiter: &Activator) -> bool {
        // Once the final epoch is committed, the epochs some sources opened
        // after it (empty: every partition had ended) are never cut; they
        // are drained so that the dataflow can complete.
        if self.checkpoints.is_none() || epoch <= self.next_cut || self.finished {
            return true;
        }
        self.waiting.push(waiter.clone());
        false
    }

    /// Records `key = value` in the checkpoint of `epoch` (before the
    /// operator or source says it is done with it).
    pub(crate) fn record(&mut self, epoch: u64, key: String, value: String) {
        self.marks.entry(epoch).or_default().insert(key, value);
    }

    /// Records `key = value` as of `epoch`: the checkpoint of every epoch
    /// from `epoch` on carries it until a later epoch records another
    /// value. For operators that see only some epochs.
    pub(crate) fn record_from(&mut self, epoch: u64, key: &str, value: u64) {
        let by_epoch = self.lasting.entry(key.to_string()).or_default();
        by_epoch.insert(epoch.max(self.next_cut), value);
    }

    /// A number recorded in the checkpoint this worker recovered from.
    pub(crate) fn restored_number(&self, key: &str) -> Result<Option<u64>> {
        match self.restored.get(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| Error::Recovery {
                epoch: self.next_cut.saturating_sub(1),
                reason: format!("`{key}` = `{v}` in the checkpoint is not a number").into(),
            }),
        }
    }

    /// A stateful operator has applied all of `epoch`.
    pub(crate) fn operator_done(&mut self, epoch: u64) {
        self.done.entry(epoch).or_default().0 += 1;
        self.try_cut();
    }

    /// A source has read all of `epoch`; `offsets` are where its
    /// partitions stand now.
    pub(crate) fn source_done(&mut self, epoch: u64, offsets: Metadata) {
        self.done.entry(epoch).or_default().1 += 1;
        self.opened = self.opened.max(epoch + 1);
        self.marks.entry(epoch).or_default().extend(offsets);
        self.try_cut();
    }

    fn try_cut(&mut self) {
        while let Some(&(ops, sources, sinks)) = self.done.get(&self.next_cut) {
            if ops < self.stateful || sources < self.sources || sinks < self.sink_count {
                return;
            }
            let epoch = self.next_cut;
            self.done.remove(&epoch);
            let mut marks = self.marks.remove(&epoch).unwrap_or_default();
            for (key, by_epoch) in &mut self.lasting {
                // The value as of this epoch; older ones are no longer needed.
                let later = by_epoch.split_off(&(epoch + 1));
                if let Some((&e, &v)) = by_epoch.last_key_value() {
                    marks.insert(key.clone(), v.to_string());
                    by_epoch.clear();
                    by_epoch.insert(e, v);
                }
                by_epoch.extend(later);
            }
            let started = Instant::now();
            self.last_marks = Some((epoch, marks.clone()));
            if let Err(e) = self.cut(epoch, marks) {
                self.fail(e);
                return;
            }
            self.metrics
                .cut_duration
                .record(started.elapsed().as_secs_f64());
            self.cut_at.insert(epoch, started);
            self.next_cut = epoch + 1;
            for waiter in self.waiting.drain(..) {
                waiter.activate();
            }
        }
    }

    /// Flushes the state and cuts it for `epoch`: the backend's capture is
    /// taken as soon as the backend is ready for it (the worker goes on
    /// meanwhile, writing nothing to the backend), and the upload runs on
    /// the worker's upload thread.
    fn cut(&mut self, epoch: u64, marks: Metadata) -> Result<()> {
        let started = std::time::Instant::now();
        self.store.cut()?;
        self.epochs_cut += 1;
        let flushed = started.elapsed();
        let Some(cp) = &self.checkpoints else {
            return Ok(());
        };
        let metadata = self.checkpoint_metadata(epoch, marks);
        if let Err(e) = self.store.backend().prepare_capture() {
            // The capture does the work itself then, while the worker waits.
            tracing::warn!(epoch, error = %e, "could not prepare the backend's capture");
        }
        let cut = Cut {
            epoch,
            metadata,
            manager: Arc::clone(&cp.manager),
            uploads: cp.uploads.clone(),
            failures: cp.failures.clone(),
            wake: Arc::clone(&cp.wake),
            flushed,
            flushes: Rc::clone(&self.flushes),
        };
        self.store.defer_capture(Box::new(cut))
    }

    /// A checkpoint's metadata for `epoch`: the cut's marks (offsets,
    /// watermarks), the worker's place in the job, and the names behind
    /// the ids in state keys.
    fn checkpoint_metadata(&self, epoch: u64, marks: Metadata) -> Metadata {
        let mut metadata = marks;
        metadata.insert("epoch".into(), epoch.to_string());
        metadata.insert("worker".into(), self.index.to_string());
        metadata.insert("workers".into(), self.peers.to_string());
        metadata.insert("key_groups".into(), self.key_groups.to_string());
        metadata.insert("job".into(), self.job_id.clone());
        // The names behind the ids in state keys: each keyed operator
        // (timers carry its id) and each state (`operator/state`), with
        // those an earlier run recorded and this one has not used yet.
        for (what, name) in &self.names {
            if *what == "keyed operator" {
                let id = crate::keys::name_id(name);
                metadata.insert(format!("{OPERATOR_PREFIX}{id:08x}"), name.clone());
            }
        }
        for (id, name) in self.store.state_names() {
            metadata.insert(format!("{STATE_PREFIX}{id:08x}"), name.to_string());
        }
        for (k, v) in &self.restored {
            if k.starts_with(STATE_PREFIX) || k.starts_with(OPERATOR_PREFIX) {
                metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        metadata
    }

    /// The committed epoch a savepoint of this worker holds now (the run
    /// is over: the state is that epoch's), and its metadata.
    pub(crate) fn savepoint_metadata(&self) -> Result<(u64, Metadata)> {
        let epoch = self.committed.ok_or_else(|| {
            Error::invalid(
                "savepoint",
                "the job has no committed epoch to take a savepoint of",
            )
        })?;
        let marks = match &self.last_marks {
            Some((e, marks)) if *e == epoch => marks.clone(),
            _ if self.recovered_from == Some(epoch) => self
                .restored
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("offset/")
                        || k.starts_with("maxtime/")
                        || k.starts_with("watermark/")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            _ => {
                return Err(Error::Worker(format!(
                    "worker {}: the offsets and watermarks of committed epoch {epoch} are not known",
                    self.index
                )));
            }
        };
        Ok((epoch, self.checkpoint_metadata(epoch, marks)))
    }

    /// The names of sources and keyed operators, with what each is.
    pub(crate) fn names(&self) -> &[(&'static str, String)] {
        &self.names
    }

    /// Records this worker's checkpoint of `epoch`, if it has one, and
    /// what it cost.
    pub(crate) fn checkpointed(
        &mut self,
        epoch: u64,
        id: Option<u64>,
        report: Option<&gress_checkpoint::CheckpointReport>,
    ) {
        if let Some(id) = id {
            self.checkpoint_ids.insert(epoch, id);
        }
        let (flush, stall) = self.flushes.borrow_mut().remove(&epoch).unwrap_or_default();
        if let Some(r) = report {
            self.checkpoint_costs.push(EpochCheckpoint {
                worker: self.index,
                epoch,
                flush,
                stall,
                pause: r.max_pause,
                duration: r.duration,
                bytes_written: r.bytes_written,
                files: (r.files_written, r.files_reused),
            });
        }
    }

    /// Copies this worker's counts into the metrics facade, if the
    /// interval has passed since the last time or `now` is set.
    pub(crate) fn refresh_metrics(&mut self, now: bool) {
        if !now && !self.metrics.due() {
            return;
        }
        let epoch_lag = if self.finished {
            0
        } else {
            let first_uncommitted = self.committed.map_or(self.first_epoch, |c| c + 1);
            (self.opened + 1).saturating_sub(first_uncommitted)
        };
        let (cache_entries, cache_bytes) = self.store.cached();
        self.control.report(crate::control::WorkerStatus {
            worker: self.index,
            committed_epoch: self.committed,
            epochs_in_flight: epoch_lag,
            records_read: self.records_read,
            records_in: self.records_in,
            records_out: self.records_out,
            cut_epoch: self.last_marks.as_ref().map(|(e, _)| *e),
            positions: self
                .last_marks
                .as_ref()
                .map(|(_, m)| {
                    m.iter()
                        .map(|(k, v)| {
                            let shown = if v == "18446744073709551615" {
                                "end of input".to_string()
                            } else {
                                v.clone()
                            };
                            (k.clone(), shown)
                        })
                        .collect()
                })
                .unwrap_or_default(),
            last_checkpoint: self.checkpoint_costs.last().map(|c| {
                crate::control::CheckpointStatus {
                    epoch: c.epoch,
                    duration_ms: u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX),
                    bytes_written: c.bytes_written,
                }
            }),
        });
        self.metrics.refresh(Counts {
            cache: self.store.stats(),
            cache_entries,
            cache_bytes,
            records_read: self.records_read,
            records_in: self.records_in,
            records_out: self.records_out,
            epochs_cut: self.epochs_cut,
            committed: self.committed,
            epoch_lag,
        });
    }

    /// The commit records kept when the run starts, and what this worker's
    /// checkpoint manager must keep for them.
    pub(crate) fn keep_commits(&mut self, kept: BTreeMap<u64, Option<u64>>) {
        self.kept = kept;
    }

    /// The oldest epoch whose commit record is kept: no rollback goes
    /// back past it.
    pub(crate) fn oldest_kept(&self) -> Option<u64> {
        self.kept.keys().next().copied()
    }

    /// This worker's checkpoints that kept commit records name.
    pub(crate) fn required_checkpoints(&self) -> Vec<u64> {
        self.kept.values().flatten().copied().collect()
    }

    /// Learned from the committer: `epoch` was dealt with, committed or
    /// not; `final_epoch` says the job is complete; the records of
    /// `pruned` were deleted.
    pub(crate) fn settle(
        &mut self,
        epoch: u64,
        committed: bool,
        final_epoch: bool,
        pruned: &[u64],
    ) {
        let id = self.checkpoint_ids.get(&epoch).copied();
        self.checkpoint_ids = self.checkpoint_ids.split_off(&(epoch + 1));
        if committed {
            self.kept.insert(epoch, id);
            for e in pruned {
                self.kept.remove(e);
            }
            if let Some(cp) = &self.checkpoints {
                let _ = cp
                    .uploads
                    .send(UploadJob::Require(self.required_checkpoints()));
            }
        }
        if committed {
            self.committed = Some(self.committed.map_or(epoch, |c| c.max(epoch)));
            self.metrics.epochs_committed.increment(1);
            if let Some(cut) = self.cut_at.get(&epoch) {
                self.metrics
                    .commit_latency
                    .record(cut.elapsed().as_secs_f64());
            }
        } else {
            self.metrics.epochs_failed.increment(1);
        }
        self.cut_at = self.cut_at.split_off(&(epoch + 1));
        self.settled = self.settled.max(epoch + 1);
        if committed && final_epoch {
            self.finished = true;
            for waiter in self.waiting.drain(..) {
                waiter.activate();
            }
        }
        if committed && self.last_report.elapsed() >= std::time::Duration::from_secs(5) {
            let secs = self.last_report.elapsed().as_secs_f64();
            tracing::info!(
                worker = self.index,
                epoch,
                records_in_per_s = ((self.records_in - self.reported.0) as f64 / secs) as u64,
                records_out_per_s = ((self.records_out - self.reported.1) as f64 / secs) as u64,
                cache_entries = self.store.cached().0,
                "progress"
            );
            self.reported = (self.records_in, self.records_out);
            self.last_report = std::time::Instant::now();
        }
        for l in &self.listeners {
            l.activate();
        }
    }
}

/// Starts the thread that commits a worker's checkpoints one after another
/// and reports each result, and applies retention as commits are learned.
pub(crate) fn upload_thread(
    worker: usize,
    activator: Arc<parking_lot::Mutex<Option<SyncActivator>>>,
    manager: Arc<CheckpointManager>,
) -> Checkpoints {
    let (tx, rx) = mpsc::channel::<UploadJob>();
    let (done_tx, done_rx) = mpsc::channel();
    let failures = done_tx.clone();
    let thread_manager = Arc::clone(&manager);
    let wake = Arc::clone(&activator);
    let spawned = std::thread::Builder::new()
        .name(format!("gress-upload-{worker}"))
        .spawn(move || {
            for job in rx {
                let (epoch, pending) = match job {
                    UploadJob::Commit(epoch, pending) => (epoch, pending),
                    UploadJob::Require(ids) => {
                        if let Err(e) = thread_manager.set_required(ids) {
                            tracing::warn!(worker, error = %e, "could not apply checkpoint retention");
                        }
                        continue;
                    }
                };
                let (result, report) = match pending.commit() {
                    Ok(r) => (Ok(r.info.id), Some(r)),
                    Err(e) => {
                        tracing::warn!(worker, epoch, error = %e, "checkpoint upload failed");
                        (Err(CheckpointFailure::new(&e)), None)
                    }
                };
                if done_tx
                    .send(Uploaded {
                        epoch,
                        result,
                        report,
                    })
                    .is_err()
                {
                    return;
                }
                if let Some(a) = &*activator.lock() {
                    let _ = a.activate();
                }
            }
        });
    let thread = match spawned {
        Ok(thread) => Some(thread),
        Err(e) => {
            tracing::error!(error = %e, "could not start the upload thread");
            None
        }
    };
    Checkpoints {
        manager,
        uploads: tx,
        results: done_rx,
        failures,
        wake,
        upload: thread,
    }
}
