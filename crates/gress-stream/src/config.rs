//! How and where a job runs: `JobConfig`, its epochs, checkpoint storage
//! and backends, and the checks that refuse a configuration that cannot run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gress_checkpoint::CheckpointConfig;
use gress_state::checkpoint::Checkpointable;
use gress_state::{Clock, MemoryConfig, MemoryStateBackend, SystemClock};

use crate::error::{Error, Result};
use crate::keys::DEFAULT_KEY_GROUPS;
pub use crate::location::{CheckpointStorage, OpenStorage};
use crate::telemetry::MetricsPublisher;

/// Makes each worker's state backend: called once per worker with its
/// index. A job runs on either backend by changing only this.
#[derive(Clone)]
pub struct BackendFactory(Factory);

type MakeBackend = dyn Fn(usize) -> gress_state::Result<Arc<dyn Checkpointable>> + Send + Sync;
type MakeBudgeted =
    dyn Fn(usize, Option<usize>) -> gress_state::Result<Arc<dyn Checkpointable>> + Send + Sync;

#[derive(Clone)]
enum Factory {
    /// A memory backend on the job's clock.
    Memory,
    Custom(Arc<MakeBackend>),
    /// Told the bytes of the worker's memory budget left to the backend.
    Budgeted(Arc<MakeBudgeted>),
}

impl std::fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendFactory")
    }
}

/// A worker's backend as a [`BackendFactory`] closure may return it: an
/// `Arc` of any [`Checkpointable`] backend (`Arc<RocksDbStateBackend>`,
/// `Arc<MemoryStateBackend>`) or an `Arc<dyn Checkpointable>`.
pub trait IntoBackend {
    /// The backend, shared.
    fn into_backend(self) -> Arc<dyn Checkpointable>;
}

impl<B: Checkpointable + 'static> IntoBackend for Arc<B> {
    fn into_backend(self) -> Arc<dyn Checkpointable> {
        self
    }
}

impl IntoBackend for Arc<dyn Checkpointable> {
    fn into_backend(self) -> Arc<dyn Checkpointable> {
        self
    }
}

impl BackendFactory {
    /// Uses `make(worker_index)`, which returns an `Arc` of the worker's
    /// backend:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use gress_state::{MemoryConfig, MemoryStateBackend};
    /// use gress_stream::BackendFactory;
    ///
    /// let factory = BackendFactory::new(|_worker| {
    ///     let backend = Arc::new(MemoryStateBackend::new(MemoryConfig::default())?);
    ///     Ok(backend)
    /// });
    /// ```
    pub fn new<B: IntoBackend>(
        make: impl Fn(usize) -> gress_state::Result<B> + Send + Sync + 'static,
    ) -> Self {
        BackendFactory(Factory::Custom(Arc::new(move |worker| {
            make(worker).map(IntoBackend::into_backend)
        })))
    }

    /// Uses `make(worker_index, backend_bytes)`, where `backend_bytes` is
    /// the part of the worker's memory budget
    /// ([`JobConfig::with_memory`]) left to the backend once the state
    /// cache has its share (`None` without a budget). A RocksDB backend
    /// sizes its block cache and memtables from it, e.g. with
    /// `RocksDbConfig::with_memory_budget`.
    pub fn with_memory_budget<B: IntoBackend>(
        make: impl Fn(usize, Option<usize>) -> gress_state::Result<B> + Send + Sync + 'static,
    ) -> Self {
        BackendFactory(Factory::Budgeted(Arc::new(move |worker, bytes| {
            make(worker, bytes).map(IntoBackend::into_backend)
        })))
    }

    /// A memory backend per worker, on the job's clock.
    pub fn memory() -> Self {
        BackendFactory(Factory::Memory)
    }

    pub(crate) fn make(
        &self,
        worker: usize,
        clock: &Arc<dyn Clock>,
        backend_bytes: Option<usize>,
    ) -> gress_state::Result<Arc<dyn Checkpointable>> {
        match &self.0 {
            Factory::Memory => Ok(Arc::new(MemoryStateBackend::new(
                MemoryConfig::default().with_clock(Arc::clone(clock)),
            )?)),
            Factory::Custom(make) => make(worker),
            Factory::Budgeted(make) => make(worker, backend_bytes),
        }
    }
}

/// The share of [`JobConfig::memory`] the state cache gets; records in
/// flight get [`RECORDS_SHARE`], memory no part of the job counts (the
/// allocator's free lists, I/O and compaction buffers, threads) is left
/// [`UNCOUNTED_SHARE`], and the backend gets the rest.
pub const CACHE_SHARE: f64 = 0.6;

/// The share of [`JobConfig::memory`] left for memory nothing counts.
pub const UNCOUNTED_SHARE: f64 = 0.1;

/// The smallest [`JobConfig::memory`]: 16 MiB per worker.
pub const MIN_MEMORY: usize = 16 << 20;

/// The share of [`JobConfig::memory`] the records in flight get, through
/// the default [`JobConfig::max_epoch_records`].
pub const RECORDS_SHARE: f64 = 0.1;

/// The cache's budget without a memory budget, in front of a backend that
/// keeps its state on disk.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// How a source divides its input into epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochPolicy {
    /// `n` records of every partition per epoch: the same epochs in every
    /// run, so a replay after recovery repeats exactly (watermarks and late
    /// records included).
    Records(u64),
    /// Whatever arrives in this much time: lower latency for slow
    /// sources; epochs (and so watermark steps) may differ after a replay.
    Interval(Duration),
}

/// Worker threads per process, and processes, at most.
const MAX_WORKERS: usize = 1 << 16;
/// Epochs sources may read ahead, at most (the checkpoint manager keeps
/// one more in flight).
const MAX_EPOCHS_IN_FLIGHT: u64 = 63;
/// The longest duration a setting takes.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// How and where a job runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobConfig {
    /// The job's name; recorded in every checkpoint and commit.
    pub job_id: String,
    /// Worker threads per process.
    pub workers: usize,
    /// This process's index among `hosts` (several processes only).
    pub process: usize,
    /// `host:port` of every process, in process order; empty for one
    /// process.
    pub hosts: Vec<String>,
    /// Where checkpoints go; `None` runs without checkpoints (no recovery,
    /// output visible at once).
    pub checkpoints: Option<CheckpointStorage>,
    /// How epochs are cut; every epoch is a checkpoint.
    pub epoch: EpochPolicy,
    /// Epochs read ahead of the newest settled one, at most: the
    /// backpressure.
    pub max_epochs_in_flight: u64,
    /// Key groups, fixed when the job is created.
    pub key_groups: u16,
    /// Each worker's state backend.
    pub backend: BackendFactory,
    /// Bytes of state each worker keeps in its cache. `None` (the
    /// default): no bound in front of a backend that keeps its state in
    /// memory (the cache then is the state), else the cache's share of
    /// [`memory`](JobConfig::memory), else 64 MiB.
    pub cache_bytes: Option<usize>,
    /// Bytes of memory each worker's state may use, split between the
    /// cache ([`CACHE_SHARE`] of it) and the backend (the rest: for
    /// RocksDB its block cache with the memtables charged to it). `None`
    /// (the default): no job-wide budget.
    pub memory: Option<usize>,
    /// The clock of processing time and state TTL. The backends enforce
    /// state TTL with their own clock, so give them the same one.
    pub clock: Arc<dyn Clock>,
    /// Settings of each worker's checkpoint manager (lease, timeouts).
    pub checkpoint: CheckpointConfig,
    /// Epochs in a row that fail to commit before the job stops with an
    /// error (the checkpoint storage is likely unreachable).
    pub max_failed_epochs: u64,
    /// Serve this process's metrics for Prometheus at this address while
    /// the job runs ([`crate::telemetry`]); the endpoint then serves until
    /// the process exits. In a job of several processes, process `p`
    /// serves at the port plus `p` (port 0: a free port each). `None` (the
    /// default): no endpoint; the metrics still go to whatever `metrics`
    /// recorder the application installed.
    pub prometheus: Option<SocketAddr>,
    /// How often each worker copies its counts, and its backend's metrics,
    /// into the metrics facade. At least 1 ms; default 1 s.
    pub metrics_interval: Duration,
    /// Committed epochs kept restorable (their commit records and every
    /// checkpoint they name): recovery falls back at most this far past
    /// damaged checkpoints, and [`JobConfig::from_epoch`] picks among them.
    /// 1 to 1,000; default 3.
    pub retained_commits: usize,
    /// Recover from this committed epoch rather than the newest (it must
    /// be one of the retained ones). The newer ones count until this run
    /// commits an epoch, then are rolled back: their commit records and
    /// checkpoints go, and sinks withdraw their output. `None` (the
    /// default): the newest epoch whose checkpoints are all intact.
    pub from_epoch: Option<u64>,
    /// Start a new job from this savepoint ([`JobConfig::from_savepoint`]):
    /// used while the job has no committed epoch of its own; once it has,
    /// it recovers from its checkpoints as any job does. `None` (the
    /// default): a job without committed epochs starts empty.
    pub savepoint: Option<CheckpointStorage>,
    /// Starting from a savepoint, drop the state of keyed operators and
    /// states the job no longer has, rather than refuse to start. Default
    /// `false`.
    pub allow_non_restored_state: bool,
    /// Whether the metrics endpoint takes `POST /job/stop` (with
    /// `{"savepoint": "<location>"}`, a stop with a savepoint) and
    /// `POST /job/drain` for this job ([`JobConfig::with_remote_control`]).
    /// Anyone who can reach the port can then stop the job. Default
    /// `false`.
    pub remote_control: bool,
    /// A source partition that has had nothing to read for this long is
    /// *idle*: it no longer holds an epoch open (under
    /// [`EpochPolicy::Records`]) nor the watermark back, until it has
    /// records again (Flink's `withIdleness`). Epochs then depend on
    /// timing, so a replay may cut them differently. `None` (the default):
    /// partitions are never idle.
    pub idle_timeout: Option<Duration>,
    /// Under [`EpochPolicy::Records`], an epoch with records closes after
    /// this long even if some partition has not reached its count (a slow
    /// partition then delays commits by at most this much). Epochs then
    /// depend on timing. `None` (the default): only the counts close an
    /// epoch.
    pub max_epoch_duration: Option<Duration>,
    /// Records a source's partitions on one worker read in one
    /// [`EpochPolicy::Interval`] epoch at most: the epoch closes early
    /// when they have, so the records in flight stay within
    /// `max_epochs_in_flight` times this per source and worker whatever
    /// the sources' speed. `None` (the default): with a memory budget,
    /// [`RECORDS_SHARE`] of it at 32 bytes a record; without, no bound.
    pub max_epoch_records: Option<u64>,
    /// In a job of several processes, how long a process waits for the
    /// others to connect before it gives up with an error naming the ones
    /// it could not reach. Default 60 s.
    pub connect_timeout: Duration,
    /// Where each worker keeps the files of its cache's checkpoints until
    /// they are stored and no longer needed (a new directory inside, removed
    /// when the run ends). `None` (the default): the system's temporary
    /// directory.
    pub local_dir: Option<PathBuf>,
    /// What [`crate::start`] does when the job fails: by default nothing
    /// (it fails). [`crate::run`] never restarts.
    pub restart: crate::control::RestartPolicy,
    /// Shared with the job's handle: stop requests and live status.
    pub(crate) control: Arc<crate::control::Control>,
}

impl JobConfig {
    /// One worker, memory state, no checkpoints, epochs of 1,000 records
    /// per partition.
    pub fn new(job_id: impl Into<String>) -> Self {
        JobConfig {
            job_id: job_id.into(),
            workers: 1,
            process: 0,
            hosts: Vec::new(),
            checkpoints: None,
            epoch: EpochPolicy::Records(1000),
            max_epochs_in_flight: 4,
            key_groups: DEFAULT_KEY_GROUPS,
            backend: BackendFactory::memory(),
            cache_bytes: None,
            memory: None,
            clock: Arc::new(SystemClock),
            checkpoint: CheckpointConfig::default(),
            max_failed_epochs: 10,
            prometheus: None,
            metrics_interval: MetricsPublisher::DEFAULT_INTERVAL,
            retained_commits: 3,
            from_epoch: None,
            savepoint: None,
            allow_non_restored_state: false,
            remote_control: false,
            idle_timeout: None,
            max_epoch_duration: None,
            max_epoch_records: None,
            connect_timeout: Duration::from_secs(60),
            local_dir: None,
            restart: crate::control::RestartPolicy::Never,
            control: Arc::default(),
        }
    }

    /// Sets the worker threads of this process.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Checkpoints into a local directory.
    pub fn with_checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoints = Some(CheckpointStorage::Local(dir.into()));
        self
    }

    /// Checkpoints into `storage`.
    pub fn with_checkpoints(mut self, storage: CheckpointStorage) -> Self {
        self.checkpoints = Some(storage);
        self
    }

    /// Uses `backend` for every worker's state.
    pub fn with_backend(mut self, backend: BackendFactory) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the epoch policy.
    pub fn with_epochs(mut self, epoch: EpochPolicy) -> Self {
        self.epoch = epoch;
        self
    }

    /// Runs as process `process` of the processes at `hosts`.
    pub fn with_cluster(mut self, process: usize, hosts: Vec<String>) -> Self {
        self.process = process;
        self.hosts = hosts;
        self
    }

    /// Sets the clock (processing time, state TTL).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the number of key groups.
    pub fn with_key_groups(mut self, key_groups: u16) -> Self {
        self.key_groups = key_groups;
        self
    }

    /// Serves the process's metrics for Prometheus at `addr` while the job
    /// runs: `http://<addr>/metrics`. See [`JobConfig::prometheus`].
    ///
    /// ```no_run
    /// # use gress_stream::JobConfig;
    /// let config = JobConfig::new("orders").with_prometheus("127.0.0.1:9464".parse()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_prometheus(mut self, addr: SocketAddr) -> Self {
        self.prometheus = Some(addr);
        self
    }

    /// Sets how often workers refresh their metrics.
    pub fn with_metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = interval;
        self
    }

    /// The configuration of worker `index`'s checkpoint manager: retention
    /// follows the job's commit records; one more checkpoint in flight
    /// than epochs.
    pub(crate) fn worker_checkpoints(&self, index: usize) -> CheckpointConfig {
        self.checkpoint
            .clone()
            .with_retention(gress_checkpoint::Retention::Required)
            .with_max_in_flight(self.max_epochs_in_flight as usize + 1)
            .with_metrics_label(format!("{}/{index}", self.job_id))
    }

    /// Workers of the job over all its processes.
    pub(crate) fn total_workers(&self) -> usize {
        self.workers.saturating_mul(self.hosts.len().max(1))
    }

    /// Where this process serves metrics: [`JobConfig::prometheus`] with
    /// the port moved up by the process index.
    pub(crate) fn prometheus_addr(&self) -> Result<Option<SocketAddr>> {
        let Some(mut addr) = self.prometheus else {
            return Ok(None);
        };
        if addr.port() != 0 {
            let port = u16::try_from(self.process)
                .ok()
                .and_then(|p| addr.port().checked_add(p))
                .ok_or_else(|| {
                    Error::invalid(
                        "prometheus",
                        format!(
                            "port {} plus process index {} is beyond 65535",
                            addr.port(),
                            self.process
                        ),
                    )
                })?;
            addr.set_port(port);
        }
        Ok(Some(addr))
    }

    /// Keeps `n` committed epochs restorable ([`JobConfig::retained_commits`]).
    pub fn with_retained_commits(mut self, n: usize) -> Self {
        self.retained_commits = n;
        self
    }

    /// Recovers from committed epoch `epoch` ([`JobConfig::from_epoch`]).
    pub fn from_epoch(mut self, epoch: u64) -> Self {
        self.from_epoch = Some(epoch);
        self
    }

    /// Starts the job from the savepoint at `location`
    /// ([`JobHandle::stop_with_savepoint`] writes one; `gress job savepoint`
    /// makes one from a committed epoch's checkpoints). The job may have
    /// another id, another number of workers and another backend than the
    /// one it was taken of, and may add keyed operators and states; one
    /// that no longer has an operator or state the savepoint holds is
    /// refused unless [`allow_non_restored_state`](Self::allow_non_restored_state).
    /// Its key groups must be the savepoint's. Only a job with no committed
    /// epoch starts from it: once it has committed, it recovers from its own
    /// checkpoints.
    ///
    /// [`JobHandle::stop_with_savepoint`]: crate::JobHandle::stop_with_savepoint
    pub fn from_savepoint(mut self, location: impl Into<CheckpointStorage>) -> Self {
        self.savepoint = Some(location.into());
        self
    }

    /// Lets the metrics endpoint stop or drain the job
    /// ([`JobConfig::remote_control`]): `gress job stop http://host:port
    /// [--savepoint DEST] [--drain]`.
    pub fn with_remote_control(mut self, allow: bool) -> Self {
        self.remote_control = allow;
        self
    }

    /// Starting from a savepoint, drops the state of keyed operators and
    /// states this job no longer has instead of refusing to start.
    pub fn allow_non_restored_state(mut self, allow: bool) -> Self {
        self.allow_non_restored_state = allow;
        self
    }

    /// Sets how many epochs sources may read ahead of the newest settled
    /// one ([`JobConfig::max_epochs_in_flight`]).
    pub fn with_max_epochs_in_flight(mut self, n: u64) -> Self {
        self.max_epochs_in_flight = n;
        self
    }

    /// Sets the bytes of state each worker caches
    /// ([`JobConfig::cache_bytes`]).
    pub fn with_cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = Some(bytes);
        self
    }

    /// Bounds the memory each worker's state uses at `bytes`
    /// ([`JobConfig::memory`]): the cache gets [`CACHE_SHARE`] of it and
    /// the backend the rest, through a factory made with
    /// [`BackendFactory::with_memory_budget`]. In front of the memory
    /// backend, which keeps all state in memory, the budget bounds
    /// nothing.
    pub fn with_memory(mut self, bytes: usize) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// Closes an [`EpochPolicy::Interval`] epoch once a source's partitions
    /// on a worker have read `n` records in it
    /// ([`JobConfig::max_epoch_records`]).
    pub fn with_max_epoch_records(mut self, n: u64) -> Self {
        self.max_epoch_records = Some(n);
        self
    }

    /// The records a source's partitions on one worker read in one
    /// `Interval` epoch at most, if bounded.
    pub(crate) fn epoch_records_bound(&self) -> Option<u64> {
        self.max_epoch_records.or_else(|| {
            self.memory.map(|m| {
                let records = (m as f64 * RECORDS_SHARE) as u64 / 32;
                (records / self.max_epochs_in_flight.max(1)).max(1024)
            })
        })
    }

    /// The cache's budget and the bytes left to the backend, for a
    /// backend that does or does not keep its state in memory.
    pub(crate) fn memory_split(&self, backend_in_memory: bool) -> (usize, Option<usize>) {
        let cache = match (self.cache_bytes, self.memory) {
            (Some(bytes), _) => bytes,
            (None, _) if backend_in_memory => usize::MAX,
            (None, Some(memory)) => (memory as f64 * CACHE_SHARE) as usize,
            (None, None) => DEFAULT_CACHE_BYTES,
        };
        let backend = self.memory.map(|m| {
            let others = (m as f64 * (RECORDS_SHARE + UNCOUNTED_SHARE)) as usize;
            m.saturating_sub(cache.min(m)).saturating_sub(others)
        });
        (cache, backend)
    }

    /// Makes partitions with nothing to read for `timeout` idle
    /// ([`JobConfig::idle_timeout`]).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Closes an epoch with records after at most `d`
    /// ([`JobConfig::max_epoch_duration`]).
    pub fn with_max_epoch_duration(mut self, d: Duration) -> Self {
        self.max_epoch_duration = Some(d);
        self
    }

    /// Sets how long processes of a cluster wait for each other to connect.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Keeps the cache's checkpoint files under `dir`
    /// ([`JobConfig::local_dir`]).
    pub fn with_local_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.local_dir = Some(dir.into());
        self
    }

    /// Recovers the job in this process when it fails, as `policy` allows
    /// (for jobs run with [`crate::start`]).
    pub fn with_restart(mut self, policy: crate::control::RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Takes over checkpoint locations held by a process that may still run.
    pub fn with_take_over(mut self, take_over: bool) -> Self {
        self.checkpoint.take_over = take_over;
        self
    }

    /// Checks every value; [`crate::run`] does this before anything else.
    pub fn validate(&self) -> Result<()> {
        if self.job_id.is_empty() {
            return Err(Error::invalid("job_id", "must not be empty"));
        }
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(Error::invalid(
                "workers",
                format!("{} threads per process: 1 to {MAX_WORKERS}", self.workers),
            ));
        }
        if self.hosts.len() > MAX_WORKERS {
            return Err(Error::invalid(
                "hosts",
                format!("{} processes: at most {MAX_WORKERS}", self.hosts.len()),
            ));
        }
        match self.epoch {
            EpochPolicy::Interval(d) if d < Duration::from_millis(1) => {
                return Err(Error::invalid("epoch", "an interval of at least 1 ms"));
            }
            EpochPolicy::Interval(d) if d > MAX_DURATION => {
                return Err(Error::invalid("epoch", "an interval of at most a day"));
            }
            _ => {}
        }
        if self.max_epochs_in_flight > MAX_EPOCHS_IN_FLIGHT {
            return Err(Error::invalid(
                "max_epochs_in_flight",
                format!("at most {MAX_EPOCHS_IN_FLIGHT}"),
            ));
        }
        if self.max_epoch_records == Some(0) {
            return Err(Error::invalid("max_epoch_records", "at least one record"));
        }
        if let Some(memory) = self.memory
            && memory < MIN_MEMORY
        {
            return Err(Error::invalid(
                "memory",
                format!("{memory} bytes per worker: at least {MIN_MEMORY}"),
            ));
        }
        if self.retained_commits == 0 || self.retained_commits > 1000 {
            return Err(Error::invalid("retained_commits", "1 to 1,000"));
        }
        if self.max_failed_epochs == 0 {
            return Err(Error::invalid("max_failed_epochs", "at least one"));
        }
        for (field, value) in [
            ("idle_timeout", self.idle_timeout),
            ("max_epoch_duration", self.max_epoch_duration),
            ("connect_timeout", Some(self.connect_timeout)),
        ] {
            if let Some(d) = value
                && (d < Duration::from_millis(1) || d > MAX_DURATION)
            {
                return Err(Error::invalid(field, "1 ms to a day"));
            }
        }
        if self.metrics_interval > MAX_DURATION {
            return Err(Error::invalid("metrics_interval", "at most a day"));
        }
        self.checkpoint.validate()?;
        if self.key_groups == 0 {
            return Err(Error::invalid("key_groups", "at least one"));
        }
        if !self.hosts.is_empty() && self.process >= self.hosts.len() {
            return Err(Error::invalid(
                "process",
                format!("{} of {} hosts", self.process, self.hosts.len()),
            ));
        }
        if matches!(self.epoch, EpochPolicy::Records(0)) {
            return Err(Error::invalid("epoch", "at least one record per epoch"));
        }
        if self.max_epochs_in_flight == 0 {
            return Err(Error::invalid("max_epochs_in_flight", "at least one"));
        }
        if self.metrics_interval < Duration::from_millis(1) {
            return Err(Error::invalid("metrics_interval", "at least 1 ms"));
        }
        self.prometheus_addr()?;
        let total = self.total_workers();
        if total > usize::from(self.key_groups) {
            return Err(Error::invalid(
                "key_groups",
                format!(
                    "{} key groups for {total} workers: each worker needs one",
                    self.key_groups
                ),
            ));
        }
        Ok(())
    }
}
