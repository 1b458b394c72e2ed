//! `CheckpointManager`: takes, commits, retains and restores checkpoints.
//!
//! - `open`: reads the location, takes it (fencing), sweeps leftovers.
//! - `commit`: cuts (`begin_checkpoint`) and uploads and publishes
//!   (`PendingCheckpoint::commit`).
//! - `retention`: reference counts of stored files, what may be deleted,
//!   and the deleting.
//! - `restore`: all-or-nothing restores with a recorded intent.
//! - `savepoint`: portable full copies outside retention.
//! - `periodic`: checkpoints on a timer.

mod commit;
mod open;
pub use open::SweepPlan;
pub use savepoint::write_savepoint;
mod periodic;
mod restore;
mod retention;
mod savepoint;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gress_state::checkpoint::Checkpointable;
use parking_lot::{Mutex, RwLock};

pub use commit::PendingCheckpoint;
use periodic::Periodic;
use retention::Refs;

use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::info::{CheckpointInfo, CheckpointReport, CheckpointStats, OpenReport};
use crate::manifest::{Manifest, Metadata, check_name};
use crate::storage::Storage;

/// How the manager checkpoints.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckpointConfig {
    /// Time between periodic checkpoints. Default 30 s.
    pub interval: Duration,
    /// Committed checkpoints kept under [`Retention::Newest`]; older ones
    /// and the files only they need are deleted. At least 1. Default 3.
    pub retain: usize,
    /// Which committed checkpoints are kept. Default [`Retention::Newest`].
    pub retention: Retention,
    /// Write only what changed where a backend can. Default true.
    pub incremental: bool,
    /// A backend whose delta chain has this many deltas gets a full capture
    /// next. Default 10.
    pub max_deltas: u32,
    /// ... or whose deltas add up to more than this fraction of its last
    /// full capture. Default 0.5.
    pub max_delta_ratio: f64,
    /// Files uploaded or downloaded at once. Default 4.
    pub parallelism: usize,
    /// Checkpoints cut but not yet committed or dropped, at most; a cut
    /// beyond this fails at once with [`Error::Busy`]. Default 2.
    pub max_in_flight: usize,
    /// A checkpoint not published this long after its cut fails (its
    /// remaining uploads stop). Default 10 min.
    pub checkpoint_timeout: Duration,
    /// How long the location stays held after its manager was last heard
    /// from; `None` keeps no lease (a new manager then always takes over).
    /// Default 20 s.
    pub lease: Option<Duration>,
    /// Open even if another manager holds the location, fencing it: it can
    /// no longer publish or delete. Default false.
    pub take_over: bool,
    /// Let a restore drop the state of backends that a checkpoint holds but
    /// that are no longer registered (Flink's `allowNonRestoredState`).
    /// Default false: such a restore is refused.
    pub allow_non_restored_state: bool,
    /// The value of the `manager` label on this manager's metrics
    /// ([`crate::telemetry`]), to tell several managers of a process
    /// apart. Not empty. Default `"default"`.
    pub metrics_label: String,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: Duration::from_secs(30),
            retain: 3,
            retention: Retention::Newest,
            incremental: true,
            max_deltas: 10,
            max_delta_ratio: 0.5,
            parallelism: 4,
            max_in_flight: 2,
            checkpoint_timeout: Duration::from_secs(600),
            lease: Some(Duration::from_secs(20)),
            take_over: false,
            allow_non_restored_state: false,
            metrics_label: "default".into(),
        }
    }
}

impl CheckpointConfig {
    /// Sets the periodic interval.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets how many checkpoints are kept.
    pub fn with_retain(mut self, retain: usize) -> Self {
        self.retain = retain;
        self
    }

    /// Sets which committed checkpoints are kept.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the lease (`None`: none, a new manager always takes over).
    pub fn with_lease(mut self, lease: Option<Duration>) -> Self {
        self.lease = lease;
        self
    }

    /// Takes the location over from a manager that may still run.
    pub fn with_take_over(mut self, take_over: bool) -> Self {
        self.take_over = take_over;
        self
    }

    /// Sets how many checkpoints may be in flight.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Sets the deadline of one checkpoint.
    pub fn with_checkpoint_timeout(mut self, timeout: Duration) -> Self {
        self.checkpoint_timeout = timeout;
        self
    }

    /// Lets restores drop state of backends no longer registered.
    pub fn with_allow_non_restored_state(mut self, allow: bool) -> Self {
        self.allow_non_restored_state = allow;
        self
    }

    /// Sets the `manager` label of this manager's metrics.
    pub fn with_metrics_label(mut self, label: impl Into<String>) -> Self {
        self.metrics_label = label.into();
        self
    }

    /// Sets the files uploaded or downloaded at once.
    pub fn with_parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism;
        self
    }

    /// Checks every value; [`CheckpointManager::open`] does too.
    pub fn validate(&self) -> Result<()> {
        if self.retain == 0 {
            return Err(Error::invalid(
                "retain",
                "must keep at least one checkpoint",
            ));
        }
        if self.interval.is_zero() {
            return Err(Error::invalid("interval", "must be positive"));
        }
        if !(self.max_delta_ratio.is_finite() && self.max_delta_ratio >= 0.0) {
            return Err(Error::invalid(
                "max_delta_ratio",
                "must be a non-negative number",
            ));
        }
        if self.parallelism == 0 || self.parallelism > 256 {
            return Err(Error::invalid("parallelism", "must be between 1 and 256"));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 64 {
            return Err(Error::invalid("max_in_flight", "must be between 1 and 64"));
        }
        if self.checkpoint_timeout.is_zero() {
            return Err(Error::invalid("checkpoint_timeout", "must be positive"));
        }
        if self.lease.is_some_and(|l| l < Duration::from_millis(30)) {
            return Err(Error::invalid("lease", "must be at least 30 ms"));
        }
        if self.metrics_label.is_empty() {
            return Err(Error::invalid("metrics_label", "must not be empty"));
        }
        Ok(())
    }
}

/// Which committed checkpoints a manager keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Retention {
    /// The newest [`CheckpointConfig::retain`]: as a checkpoint commits,
    /// the oldest beyond that number go.
    #[default]
    Newest,
    /// What an outside protocol still needs, as a stream job's commit
    /// records: the checkpoints named by
    /// [`CheckpointManager::set_required`], and those this manager
    /// committed after the newest of them (the outside protocol may commit
    /// them next). Until the first `set_required`, no checkpoint is
    /// deleted, at `open` or later; unreferenced files and temporary files
    /// are.
    Required,
}

struct Registered {
    name: String,
    backend: Arc<dyn Checkpointable>,
}

/// What is committed and what is going on; locked only briefly.
#[derive(Default)]
struct State {
    next_id: u64,
    /// Committed checkpoints still kept, by id.
    retained: BTreeMap<u64, Arc<Manifest>>,
    /// Every stored file that kept checkpoints, checkpoints in flight and
    /// uncertain publications reference, with how many reference it.
    refs: Refs,
    /// The largest id of a manifest set aside as damaged: files owned by
    /// checkpoints up to it are never deleted.
    max_damaged: Option<u64>,
    in_flight: usize,
    restoring: bool,
    /// A restore that switched some backends and not others.
    restore_incomplete: Option<String>,
    /// Under [`Retention::Required`]: the checkpoints still needed, once
    /// told.
    required: Option<BTreeSet<u64>>,
    /// The first id this manager gave a checkpoint: older ones were left
    /// by earlier managers.
    first_own_id: u64,
}

struct Shared {
    storage: Arc<dyn Storage>,
    config: RwLock<CheckpointConfig>,
    backends: RwLock<Vec<Arc<Registered>>>,
    /// Identifies this manager to the backends it claims.
    owner: u64,
    fence: Arc<Fence>,
    /// Held while cuts are taken and during a restore: the two never mix.
    cut: Mutex<()>,
    state: Mutex<State>,
    stats: Mutex<CheckpointStats>,
    /// Set when the manager is dropped: work in flight stops.
    closing: AtomicBool,
    report: Mutex<OpenReport>,
}

impl Shared {
    fn record_failure(&self, e: &Error) {
        crate::telemetry::failed(&self.config.read().metrics_label);
        let mut stats = self.stats.lock();
        stats.failed += 1;
        stats.last_error = Some(error_chain(e));
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn backends(&self) -> Vec<Arc<Registered>> {
        self.backends.read().clone()
    }
}

/// Takes periodic or on-demand checkpoints of registered backends, commits
/// each with a checksummed manifest, keeps the last few, and restores them.
///
/// A checkpoint exists only once its manifest is published (create-only);
/// a failed or interrupted checkpoint never hides an earlier one, and every
/// checkpoint reported `Ok` restores. One manager writes to a location at
/// a time: opening takes it (see [`CheckpointConfig::lease`]) and a manager
/// that was taken over stops with [`Error::Fenced`]. Use [`Catalog`] to
/// read a location without taking it.
///
/// Each backend's capture is its own consistent cut; for one cut across
/// several backends, call [`CheckpointManager::begin_checkpoint`] from the
/// thread that writes them, between two records (as a barrier-aligned
/// engine does).
///
/// [`Catalog`]: crate::Catalog
pub struct CheckpointManager {
    shared: Arc<Shared>,
    periodic: Mutex<Option<Periodic>>,
}

impl fmt::Debug for CheckpointManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointManager")
            .field("storage", &self.shared.storage)
            .field("epoch", &self.shared.fence.epoch())
            .field("backends", &self.backend_names())
            .finish_non_exhaustive()
    }
}

impl CheckpointManager {
    /// Registers a backend under a stable `name` (1 to 64 characters of
    /// `[A-Za-z0-9_-]`), the key of its part in every checkpoint. A backend
    /// belongs to one manager: registering it in a second, or twice, is
    /// refused.
    pub fn register(&self, name: &str, backend: Arc<dyn Checkpointable>) -> Result<()> {
        check_name(name)?;
        let mut backends = self.shared.backends.write();
        if backends.iter().any(|b| b.name == name) {
            return Err(Error::invalid(
                "name",
                format!("a backend named `{name}` is registered"),
            ));
        }
        if backends
            .iter()
            .any(|b| std::ptr::addr_eq(Arc::as_ptr(&b.backend), Arc::as_ptr(&backend)))
        {
            return Err(Error::invalid(
                "backend",
                format!("this backend is registered under another name than `{name}`"),
            ));
        }
        backend.claim_checkpoints(self.shared.owner)?;
        crate::telemetry::describe();
        crate::telemetry::start(&self.shared.config.read().metrics_label);
        backends.push(Arc::new(Registered {
            name: name.to_string(),
            backend,
        }));
        Ok(())
    }

    /// The registered names, in registration order.
    pub fn backend_names(&self) -> Vec<String> {
        self.shared
            .backends
            .read()
            .iter()
            .map(|b| b.name.clone())
            .collect()
    }

    /// Turns incremental checkpoints on or off.
    pub fn enable_incremental_checkpoints(&self, on: bool) {
        self.shared.config.write().incremental = on;
    }

    /// Committed checkpoints, oldest first.
    pub fn list(&self) -> Vec<CheckpointInfo> {
        self.shared
            .state
            .lock()
            .retained
            .values()
            .map(|m| CheckpointInfo::from(&**m))
            .collect()
    }

    /// The newest committed checkpoint.
    pub fn latest(&self) -> Option<CheckpointInfo> {
        self.shared
            .state
            .lock()
            .retained
            .values()
            .next_back()
            .map(|m| CheckpointInfo::from(&**m))
    }

    /// Counters of checkpoints taken and failed.
    pub fn stats(&self) -> CheckpointStats {
        self.shared.stats.lock().clone()
    }

    /// What opening the location found and did.
    pub fn open_report(&self) -> OpenReport {
        self.shared.report.lock().clone()
    }

    /// The restore that did not complete, if any: until a restore
    /// succeeds, no checkpoint is taken.
    pub fn restore_incomplete(&self) -> Option<String> {
        self.shared.state.lock().restore_incomplete.clone()
    }

    /// Under [`Retention::Required`], tells the manager which committed
    /// checkpoints are still needed; every other checkpoint older than the
    /// newest of them, or left by an earlier manager, is deleted now with
    /// the files only it needs. Ids that are not committed checkpoints are
    /// ignored. Call it once what is needed is known (a job: after it chose
    /// the commit it recovers from), and again as that changes.
    pub fn set_required(&self, ids: impl IntoIterator<Item = u64>) -> Result<()> {
        if self.shared.config.read().retention != Retention::Required {
            return Err(Error::invalid(
                "retention",
                "set_required needs Retention::Required",
            ));
        }
        self.shared.state.lock().required = Some(ids.into_iter().collect());
        self.shared.apply_retention();
        Ok(())
    }

    /// Fails with [`Error::Fenced`] if another manager took the location
    /// over (reads the storage's fencing records).
    pub fn check_fence(&self) -> Result<()> {
        self.shared.fence.check()
    }

    /// The storage the manager writes to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    /// Takes a checkpoint now and commits it with `metadata`; returns what
    /// it did. On error nothing is committed and earlier checkpoints are
    /// intact.
    pub fn trigger_checkpoint(&self, metadata: Metadata) -> Result<CheckpointReport> {
        self.begin_checkpoint(metadata)?.commit()
    }
}

impl Drop for CheckpointManager {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.stop_periodic();
        self.shared.fence.release();
        for reg in self.shared.backends.read().iter() {
            reg.backend.release_checkpoints(self.shared.owner);
        }
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
