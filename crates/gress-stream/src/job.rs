//! Configuring and running a job.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gress_checkpoint::{
    Catalog, CheckpointConfig, CheckpointManager, LocalStorage, Metadata, RangePart, Storage,
};
use gress_state::checkpoint::Checkpointable;
use gress_state::{Clock, MemoryConfig, MemoryStateBackend, SystemClock};
use parking_lot::Mutex;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, StreamVec};

use crate::commit::{CommitRecord, Token, acks, commits, committer, listen, restorable};
use crate::data::Item;
use crate::error::{Error, Result};
use crate::keys::{DEFAULT_KEY_GROUPS, groups_key_range, groups_of};
use crate::source::{PartitionReader, Poll, Source};
use crate::state::StateStore;
use crate::stream::DataStream;
use crate::telemetry::MetricsPublisher;
use crate::worker::{Shared, WorkerState, upload_thread};

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Opens the storage under a sub-path (`""` for the root).
pub type OpenStorage = dyn Fn(&str) -> gress_checkpoint::Result<Arc<dyn Storage>> + Send + Sync;

/// Where a job keeps its checkpoints: every worker's under
/// `workers/<index>/`, the job's commit records under `commits/`.
#[derive(Clone)]
#[non_exhaustive]
pub enum CheckpointStorage {
    /// A local directory (or one every process of the job can reach).
    Local(PathBuf),
    /// S3-compatible object storage.
    S3(gress_checkpoint::S3Config),
    /// Any storage: opens the storage under a sub-path.
    Custom(Arc<OpenStorage>),
}

impl std::fmt::Debug for CheckpointStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointStorage::Local(p) => f.debug_tuple("Local").field(p).finish(),
            CheckpointStorage::S3(c) => f.debug_tuple("S3").field(c).finish(),
            CheckpointStorage::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl CheckpointStorage {
    /// The storage under `sub` (`""` for the root).
    pub fn open(&self, sub: &str) -> Result<Arc<dyn Storage>> {
        Ok(match self {
            CheckpointStorage::Local(root) => {
                let dir = if sub.is_empty() {
                    root.clone()
                } else {
                    root.join(sub)
                };
                Arc::new(LocalStorage::new(dir)?)
            }
            CheckpointStorage::S3(config) => {
                let mut config = config.clone();
                if !sub.is_empty() {
                    let prefix = config.prefix.trim_end_matches('/');
                    config.prefix = if prefix.is_empty() {
                        sub.to_string()
                    } else {
                        format!("{prefix}/{sub}")
                    };
                }
                Arc::new(gress_checkpoint::S3Storage::new(config)?)
            }
            CheckpointStorage::Custom(open) => open(sub)?,
        })
    }
}

/// Makes each worker's state backend: called once per worker with its
/// index. A job runs on either backend by changing only this.
#[derive(Clone)]
pub struct BackendFactory(Factory);

type MakeBackend = dyn Fn(usize) -> gress_state::Result<Arc<dyn Checkpointable>> + Send + Sync;

#[derive(Clone)]
enum Factory {
    /// A memory backend on the job's clock.
    Memory,
    Custom(Arc<MakeBackend>),
}

impl std::fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendFactory")
    }
}

impl BackendFactory {
    /// Uses `make(worker_index)`.
    pub fn new(
        make: impl Fn(usize) -> gress_state::Result<Arc<dyn Checkpointable>> + Send + Sync + 'static,
    ) -> Self {
        BackendFactory(Factory::Custom(Arc::new(make)))
    }

    /// A memory backend per worker, on the job's clock.
    pub fn memory() -> Self {
        BackendFactory(Factory::Memory)
    }

    fn make(
        &self,
        worker: usize,
        clock: &Arc<dyn Clock>,
    ) -> gress_state::Result<Arc<dyn Checkpointable>> {
        match &self.0 {
            Factory::Memory => Ok(Arc::new(MemoryStateBackend::new(
                MemoryConfig::default().with_clock(Arc::clone(clock)),
            )?)),
            Factory::Custom(make) => make(worker),
        }
    }
}

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
    /// Bytes of decoded state each worker keeps in its cache.
    pub cache_bytes: usize,
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
            cache_bytes: 64 << 20,
            clock: Arc::new(SystemClock),
            checkpoint: CheckpointConfig::default(),
            max_failed_epochs: 10,
            prometheus: None,
            metrics_interval: MetricsPublisher::DEFAULT_INTERVAL,
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

    /// Where this process serves metrics: [`JobConfig::prometheus`] with
    /// the port moved up by the process index.
    fn prometheus_addr(&self) -> Result<Option<SocketAddr>> {
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

    /// Takes over checkpoint locations held by a process that may still run.
    pub fn with_take_over(mut self, take_over: bool) -> Self {
        self.checkpoint.take_over = take_over;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::invalid("workers", "at least one"));
        }
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
        let total = self.workers * self.hosts.len().max(1);
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

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobReport {
    /// The newest epoch committed when the run ended.
    pub last_committed: Option<u64>,
    /// The committed epoch the run recovered from.
    pub recovered_from: Option<u64>,
    /// Records applied by keyed operators, over this process's workers.
    pub records_in: u64,
    /// Records written to sinks, over this process's workers.
    pub records_out: u64,
    /// Epochs whose state was cut, per worker summed.
    pub epochs_cut: u64,
    /// Time from start to end.
    pub elapsed: Duration,
    /// What each worker's checkpoint of each epoch cost, this process's
    /// workers.
    pub checkpoints: Vec<crate::worker::EpochCheckpoint>,
}

/// Builds one worker's dataflow: sources, then operators on the streams
/// they return.
pub struct JobBuilder<'s> {
    scope: Scope<'s, u64>,
    shared: Shared,
    config: Arc<JobConfig>,
    first_epoch: u64,
    tokens: Vec<StreamVec<'s, u64, Token>>,
    names: Vec<String>,
}

impl std::fmt::Debug for JobBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBuilder")
            .field("worker", &self.worker_index())
            .finish_non_exhaustive()
    }
}

impl<'s> JobBuilder<'s> {
    /// This worker's index among all workers of the job.
    pub fn worker_index(&self) -> usize {
        self.shared.borrow().index
    }

    /// The number of workers of the job.
    pub fn workers(&self) -> usize {
        self.shared.borrow().peers
    }

    /// The committed epoch this run recovered from.
    pub fn recovered_from(&self) -> Option<u64> {
        self.first_epoch.checked_sub(1)
    }

    /// Reads `source`; records have no event time (watermarks stay at 0
    /// until the source ends).
    pub fn source<S: Source>(
        &mut self,
        name: &str,
        source: S,
    ) -> Result<DataStream<'s, S::Record>> {
        self.source_inner(name, source, None)
    }

    /// Reads `source`, with event time `time(record)` (ms) and watermarks
    /// `max_out_of_orderness` behind the latest event time of each
    /// partition.
    pub fn source_with_event_time<S: Source>(
        &mut self,
        name: &str,
        source: S,
        time: impl Fn(&S::Record) -> u64 + 'static,
        max_out_of_orderness: Duration,
    ) -> Result<DataStream<'s, S::Record>> {
        self.source_inner(
            name,
            source,
            Some((Box::new(time), max_out_of_orderness.as_millis() as u64)),
        )
    }

    fn source_inner<S: Source>(
        &mut self,
        name: &str,
        mut source: S,
        time: Option<EventTime<S::Record>>,
    ) -> Result<DataStream<'s, S::Record>> {
        if self.names.iter().any(|n| n == name) {
            return Err(Error::invalid(
                "source",
                format!("two sources named `{name}`"),
            ));
        }
        self.names.push(name.to_string());
        let (index, peers) = {
            let s = self.shared.borrow();
            (s.index, s.peers)
        };
        let mut readers = Vec::new();
        for p in (0..source.partitions()).filter(|p| p % peers == index) {
            let (offset, max_time) = {
                let s = self.shared.borrow();
                (
                    s.restored_number(&format!("offset/{name}/{p}"))?
                        .unwrap_or(0),
                    s.restored_number(&format!("maxtime/{name}/{p}"))?
                        .unwrap_or(0),
                )
            };
            readers.push(PartitionState {
                partition: p,
                reader: source.open(p, offset)?,
                ended: false,
                max_time,
                read_in_epoch: 0,
            });
        }
        self.shared.borrow_mut().register_source();
        let (data, tokens) = source_operator(
            self.scope,
            name,
            readers,
            time,
            Rc::clone(&self.shared),
            &self.config,
            self.first_epoch,
        );
        self.tokens.push(tokens);
        Ok(DataStream {
            inner: data,
            shared: Rc::clone(&self.shared),
        })
    }
}

/// A record's event time, and how far watermarks stay behind.
type EventTime<T> = (Box<dyn Fn(&T) -> u64>, u64);

struct PartitionState<T> {
    partition: usize,
    reader: Box<dyn PartitionReader<T>>,
    ended: bool,
    max_time: u64,
    read_in_epoch: u64,
}

/// A worker's partitions of one source, and where each stood at the end
/// of every closed epoch not yet known to be committed.
struct SourceParts<T> {
    parts: Vec<PartitionState<T>>,
    /// Per closed epoch, oldest first: each partition's offset.
    closed: VecDeque<(u64, Vec<u64>)>,
}

impl<T: 'static> SourceParts<T> {
    /// Tells each reader where the newest committed epoch left it.
    fn report(&mut self, committed: Option<u64>) {
        let Some(c) = committed else { return };
        let mut newest = None;
        while self.closed.front().is_some_and(|(e, _)| *e <= c) {
            newest = self.closed.pop_front().map(|(_, offsets)| offsets);
        }
        for (part, offset) in self.parts.iter_mut().zip(newest.unwrap_or_default()) {
            part.reader.committed(offset);
        }
    }
}

impl<T: 'static> crate::stream::OnCommit for SourceParts<T> {
    fn commit_to(&mut self, committed: Option<u64>) -> Result<()> {
        self.report(committed);
        Ok(())
    }
}

/// Records read per activation at most, so other operators get their turn.
const BATCH: usize = 4096;

/// The source operator: records and watermarks out of one output, and one
/// token per epoch (for the acks) out of the other.
fn source_operator<'s, T: crate::Data>(
    scope: Scope<'s, u64>,
    name: &str,
    parts: Vec<PartitionState<T>>,
    time: Option<EventTime<T>>,
    shared: Shared,
    config: &JobConfig,
    first_epoch: u64,
) -> (StreamVec<'s, u64, Item<T>>, StreamVec<'s, u64, Token>) {
    let mut builder = OperatorBuilder::new(format!("Source({name})"), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    let (data_out, data) = builder.new_output::<Vec<Item<T>>>();
    let (token_out, tokens) = builder.new_output::<Vec<Token>>();
    let mut data_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Item<T>>>>::from(data_out);
    let mut token_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Token>>>::from(token_out);
    let policy = config.epoch;
    let in_flight = config.max_epochs_in_flight;
    let name = name.to_string();
    let state = Rc::new(RefCell::new(SourceParts {
        parts,
        closed: VecDeque::new(),
    }));
    {
        let mut s = shared.borrow_mut();
        s.listeners.push(activator.clone());
        s.on_commit
            .push(Rc::clone(&state) as Rc<RefCell<dyn crate::stream::OnCommit>>);
    }
    builder.build(move |mut caps: Vec<Capability<u64>>| {
        let mut token_cap = caps.pop();
        let mut data_cap = caps.pop();
        for cap in data_cap.iter_mut().chain(token_cap.iter_mut()) {
            cap.downgrade(&first_epoch);
        }
        let mut epoch_started = Instant::now();
        let mut buf: Vec<T> = Vec::new();
        activator.activate();
        move |_frontiers| {
            let (Some(dcap), Some(tcap)) = (&mut data_cap, &mut token_cap) else {
                return;
            };
            let epoch = *dcap.time();
            let (error, finished, settled, index, peers, committed) = {
                let s = shared.borrow();
                let c = s.committed;
                (
                    s.error.is_some(),
                    s.finished,
                    s.settled,
                    s.index,
                    s.peers,
                    c,
                )
            };
            let mut guard = state.borrow_mut();
            guard.report(committed);
            let SourceParts { parts, closed } = &mut *guard;
            let all_ended = parts.iter().all(|p| p.ended);
            if error || (finished && all_ended) {
                data_cap = None;
                token_cap = None;
                return;
            }
            if epoch >= settled + in_flight {
                // Backpressure: the listener wakes this source.
                return;
            }
            let mut out = data_out.activate();
            let mut session = out.session(&*dcap);
            let mut idle = true;
            let mut failed = None;
            let mut read = 0;
            for part in parts.iter_mut().filter(|p| !p.ended) {
                let want = match policy {
                    EpochPolicy::Records(n) => {
                        n.saturating_sub(part.read_in_epoch).min(BATCH as u64)
                    }
                    EpochPolicy::Interval(_) => BATCH as u64,
                };
                if want == 0 {
                    continue;
                }
                buf.clear();
                match part.reader.poll(want as usize, &mut buf) {
                    Ok(Poll::End) => part.ended = true,
                    Ok(Poll::Ready) => idle = false,
                    Ok(Poll::Idle) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                part.read_in_epoch += buf.len() as u64;
                read += buf.len() as u64;
                for record in buf.drain(..) {
                    let t = match &time {
                        Some((f, _)) => {
                            let t = f(&record);
                            part.max_time = part.max_time.max(t);
                            t
                        }
                        None => 0,
                    };
                    session.give(Item::Rec {
                        time: t,
                        kg: 0,
                        data: record,
                    });
                }
            }
            drop(session);
            if read > 0 {
                shared.borrow_mut().records_read += read;
            }
            if let Some(e) = failed {
                shared.borrow_mut().fail(Error::Source {
                    source_name: name.clone(),
                    reason: e.to_string(),
                });
                drop(out);
                data_cap = None;
                token_cap = None;
                return;
            }
            let epoch_over = match policy {
                EpochPolicy::Records(n) => parts.iter().all(|p| p.ended || p.read_in_epoch >= n),
                EpochPolicy::Interval(d) => epoch_started.elapsed() >= d,
            } || parts.iter().all(|p| p.ended);
            if !epoch_over {
                drop(out);
                if idle {
                    activator.activate_after(Duration::from_millis(5));
                } else {
                    activator.activate();
                }
                return;
            }
            // Close the epoch: watermarks to every worker, offsets, token.
            let wm = parts
                .iter()
                .map(|p| match (&time, p.ended) {
                    (_, true) => u64::MAX,
                    (Some((_, bound)), false) => p.max_time.saturating_sub(*bound),
                    (None, false) => 0,
                })
                .min()
                .unwrap_or(u64::MAX);
            {
                let mut session = out.session(&*dcap);
                for to in 0..peers as u32 {
                    session.give(Item::Wm {
                        to,
                        from: index as u32,
                        wm,
                    });
                }
            }
            drop(out);
            // Where each partition stands, and its event-time high mark, so
            // that a replay after recovery emits the same watermarks.
            let offsets: Metadata = parts
                .iter()
                .flat_map(|p| {
                    [
                        (
                            format!("offset/{name}/{}", p.partition),
                            p.reader.offset().to_string(),
                        ),
                        (
                            format!("maxtime/{name}/{}", p.partition),
                            p.max_time.to_string(),
                        ),
                    ]
                })
                .collect();
            closed.push_back((epoch, parts.iter().map(|p| p.reader.offset()).collect()));
            shared.borrow_mut().source_done(epoch, offsets);
            token_out.activate().session(&*tcap).give(Token {
                finished: parts.iter().all(|p| p.ended),
            });
            for p in parts.iter_mut() {
                p.read_in_epoch = 0;
            }
            dcap.downgrade(&(epoch + 1));
            tcap.downgrade(&(epoch + 1));
            epoch_started = Instant::now();
            activator.activate();
        }
    });
    (data, tokens)
}

impl<'s> JobBuilder<'s> {
    /// Wires the acks, the committer and the listener after the user's
    /// dataflow.
    fn finish(
        self,
        storage: Option<Arc<dyn Storage>>,
        slot: Arc<Mutex<Option<timely::scheduling::SyncActivator>>>,
    ) -> Result<()> {
        if self.tokens.is_empty() {
            return Err(Error::invalid("job", "no source"));
        }
        let tokens = self.scope.concatenate(self.tokens);
        let acks = acks(tokens, Rc::clone(&self.shared), slot);
        let settled = committer(
            acks,
            Rc::clone(&self.shared),
            storage,
            self.config.max_failed_epochs.max(1),
        );
        listen(settled, self.shared);
        Ok(())
    }
}

/// Runs a job: `build` is called on every worker to build the same
/// dataflow. With checkpoints configured, the job first recovers from the
/// newest committed epoch (state, source offsets, sink output), then
/// commits an epoch at a time; finite sources end the job once their last
/// epoch is committed.
pub fn run<F>(config: JobConfig, build: F) -> Result<JobReport>
where
    F: Fn(&mut JobBuilder<'_>) -> Result<()> + Send + Sync + 'static,
{
    config.validate()?;
    if let Some(addr) = config.prometheus_addr()? {
        let endpoint = crate::telemetry::serve_prometheus(addr)?;
        tracing::info!(job = %config.job_id, url = %endpoint.url(), "serving metrics");
    }
    crate::telemetry::describe();
    gress_checkpoint::telemetry::describe();
    let publisher = Arc::new(MetricsPublisher::new(config.metrics_interval)?);
    let communication = if !config.hosts.is_empty() {
        timely::CommunicationConfig::Cluster {
            threads: config.workers,
            process: config.process,
            addresses: config.hosts.clone(),
            report: false,
            zerocopy: false,
        }
    } else if config.workers > 1 {
        timely::CommunicationConfig::Process(config.workers)
    } else {
        timely::CommunicationConfig::Thread
    };
    let timely_config = timely::Config {
        communication,
        worker: timely::WorkerConfig::default(),
    };
    let started = Instant::now();
    let abort = Arc::new(AtomicBool::new(false));
    let config = Arc::new(config);
    let build = Arc::new(build);
    let worker_abort = Arc::clone(&abort);
    let worker_publisher = Arc::clone(&publisher);
    let guards = timely::execute(timely_config, move |worker| {
        // A panic in a user operator unwinds this thread: tell the others.
        let _on_panic = AbortOnPanic(&worker_abort);
        let dataflow = worker.next_dataflow_index();
        let result = run_worker(worker, &config, &*build, &worker_abort, &worker_publisher);
        if result.is_err() {
            worker_abort.store(true, Ordering::Release);
            // Timely steps a worker until its dataflows finish; a failed
            // job's never would.
            worker.drop_dataflow(dataflow);
        }
        result
    })
    .map_err(Error::Worker)?;
    let mut report = JobReport::default();
    // The cause, rather than the workers that stopped because of it.
    let mut cause = None;
    let mut stopped = None;
    for outcome in guards.join() {
        match outcome {
            Ok(Ok(w)) => {
                report.records_in += w.records_in;
                report.records_out += w.records_out;
                report.epochs_cut += w.epochs_cut;
                report.last_committed = report.last_committed.max(w.last_committed);
                report.recovered_from = w.recovered_from;
                report.checkpoints.extend(w.checkpoints);
            }
            Ok(Err(e)) if e.to_string().contains(STOPPED) => {
                stopped.get_or_insert(e);
            }
            Ok(Err(e)) => {
                cause.get_or_insert(e);
            }
            Err(panic) => {
                cause.get_or_insert(Error::Worker(format!("a worker panicked: {panic}")));
            }
        }
    }
    if let Some(e) = cause.or(stopped) {
        return Err(e);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

const STOPPED: &str = "stopped because another worker failed";

/// Sets the abort flag if the worker's thread unwinds.
struct AbortOnPanic<'a>(&'a AtomicBool);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// One worker's part of a run.
struct WorkerReport {
    checkpoints: Vec<crate::worker::EpochCheckpoint>,
    records_in: u64,
    records_out: u64,
    epochs_cut: u64,
    last_committed: Option<u64>,
    recovered_from: Option<u64>,
}

fn run_worker<F>(
    worker: &mut timely::worker::Worker,
    config: &Arc<JobConfig>,
    build: &F,
    abort: &AtomicBool,
    publisher: &MetricsPublisher,
) -> Result<WorkerReport>
where
    F: Fn(&mut JobBuilder<'_>) -> Result<()>,
{
    let index = worker.index();
    let peers = worker.peers();
    let root = config
        .checkpoints
        .as_ref()
        .map(|c| c.open(""))
        .transpose()?;
    // The worker's checkpoint location first: a second run of a running
    // job stops here, on the lease of the first, before it reads commit
    // records and checkpoints that the first is writing and deleting.
    let manager = match &config.checkpoints {
        Some(storage) => Some(CheckpointManager::open(
            storage.open(&format!("workers/{index:05}"))?,
            config
                .checkpoint
                .clone()
                .with_retain(config.max_epochs_in_flight as usize + 3)
                .with_max_in_flight(config.max_epochs_in_flight as usize + 1)
                .with_metrics_label(format!("{}/{index}", config.job_id)),
        )?),
        None => None,
    };
    let commit = match (&root, &config.checkpoints) {
        (Some(root), Some(storage)) => choose_commit(&**root, storage)?,
        _ => None,
    };
    if let Some(c) = &commit {
        check_commit(c, config, peers)?;
    }
    let backend = config.backend.make(index, &config.clock)?;
    let backend_label = format!("{}/{index}", config.job_id);
    publisher.register(backend_label.clone(), &backend)?;
    // The metadata of the checkpoint recovered from (offsets, watermarks).
    let mut restored = Metadata::new();
    let slot: Arc<Mutex<Option<timely::scheduling::SyncActivator>>> = Arc::new(Mutex::new(None));
    let checkpoints = match (&config.checkpoints, manager) {
        (None, _) | (_, None) => {
            clear(&*backend)?;
            None
        }
        (Some(storage), Some(manager)) => {
            manager.register("state", Arc::clone(&backend))?;
            match &commit {
                Some(c) if c.workers != peers => {
                    restored = rescale(storage, c, &manager, index, peers, config.key_groups)?;
                    tracing::info!(
                        worker = index,
                        epoch = c.epoch,
                        from = c.workers,
                        to = peers,
                        "rescaled"
                    );
                }
                Some(c) => {
                    let id = c.checkpoints[index];
                    let info = manager.restore(id).map_err(|e| Error::Recovery {
                        epoch: c.epoch,
                        reason: format!("worker {index}'s checkpoint {id}: {e}").into(),
                    })?;
                    let epoch = info
                        .metadata
                        .get("epoch")
                        .and_then(|e| e.parse::<u64>().ok());
                    if epoch != Some(c.epoch) {
                        return Err(Error::Recovery {
                            epoch: c.epoch,
                            reason: format!(
                                "worker {index}'s checkpoint {id} is of epoch {epoch:?}"
                            )
                            .into(),
                        });
                    }
                    restored = info.metadata;
                    tracing::info!(worker = index, epoch = c.epoch, "recovered");
                }
                None => clear(&*backend)?,
            }
            Some(upload_thread(index, Arc::clone(&slot), manager))
        }
    };
    let first_epoch = commit.as_ref().map_or(0, |c| c.epoch + 1);
    let store = StateStore::new(
        Arc::clone(&backend),
        config.cache_bytes,
        Arc::clone(&config.clock),
    );
    let shared: Shared = Rc::new(RefCell::new(WorkerState::new(
        index,
        peers,
        config.key_groups,
        config.job_id.clone(),
        store,
        checkpoints,
        first_epoch,
        commit.as_ref().map(|c| c.epoch),
        config.metrics_interval,
    )));
    shared.borrow_mut().restored = restored;
    let built = worker.dataflow::<u64, _, _>(|scope| {
        let mut builder = JobBuilder {
            scope,
            shared: Rc::clone(&shared),
            config: Arc::clone(config),
            first_epoch,
            tokens: Vec::new(),
            names: Vec::new(),
        };
        build(&mut builder)?;
        builder.finish(root.clone(), slot)
    });
    if let Err(e) = built {
        abort.store(true, Ordering::Release);
        return Err(e);
    }
    loop {
        if let Some(e) = shared.borrow_mut().error.take() {
            abort.store(true, Ordering::Release);
            return Err(e);
        }
        if abort.load(Ordering::Acquire) {
            return Err(Error::Worker(
                "stopped because another worker failed".into(),
            ));
        }
        if !worker.step_or_park(Some(Duration::from_millis(50))) {
            break;
        }
        shared.borrow_mut().refresh_metrics(false);
    }
    shared.borrow_mut().refresh_metrics(true);
    if !backend.is_closed() {
        gress_state::telemetry::publish(&backend_label, &backend.metrics());
    }
    let s = shared.borrow();
    let committed = s.committed;
    for each in &s.on_commit {
        each.borrow_mut().commit_to(committed)?;
    }
    Ok(WorkerReport {
        checkpoints: s.checkpoint_costs.clone(),
        records_in: s.records_in,
        records_out: s.records_out,
        epochs_cut: s.epochs_cut,
        last_committed: committed,
        recovered_from: first_epoch.checked_sub(1),
    })
}

/// Empties a backend: a job that starts without a committed epoch starts
/// from nothing, whatever a previous run left in a persistent backend.
fn clear(backend: &dyn Checkpointable) -> Result<()> {
    let mut empty = Vec::new();
    gress_state::snapshot::SnapshotWriter::new(&mut empty, gress_state::SnapshotKind::Full, 0)?
        .finish()?;
    backend.restore(&empty)?;
    Ok(())
}

/// The newest committed epoch whose checkpoints are all there; older ones
/// are tried past a missing or damaged one (saying why).
fn choose_commit(root: &dyn Storage, storage: &CheckpointStorage) -> Result<Option<CommitRecord>> {
    let records = commits(root)?;
    let newest = records.first().map(|r| r.epoch);
    for record in records {
        let worker_storage = |w: usize| storage.open(&format!("workers/{w:05}"));
        match restorable(&record, &worker_storage)? {
            Ok(()) => {
                if Some(record.epoch) != newest {
                    tracing::warn!(
                        epoch = record.epoch,
                        newest,
                        "recovering from an older committed epoch"
                    );
                }
                return Ok(Some(record));
            }
            Err(why) => tracing::warn!(epoch = record.epoch, why, "cannot recover from this epoch"),
        }
    }
    match newest {
        None => Ok(None),
        Some(epoch) => Err(Error::Recovery {
            epoch,
            reason: "no committed epoch has every worker's checkpoint intact".into(),
        }),
    }
}

fn check_commit(c: &CommitRecord, config: &JobConfig, peers: usize) -> Result<()> {
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
    if c.checkpoints.len() != c.workers {
        return Err(refuse(format!(
            "the commit record names {} checkpoints for {} workers",
            c.checkpoints.len(),
            c.workers
        )));
    }
    if peers > usize::from(c.key_groups) {
        return Err(refuse(format!(
            "{peers} workers but only {} key groups: at most one worker per key group",
            c.key_groups
        )));
    }
    Ok(())
}

/// Restores worker `index` of `peers` from a commit made with a different
/// number of workers: the key groups it owns now, from the checkpoints of
/// the old workers that owned them (key-group ranges are contiguous key
/// ranges), every source partition's offset, and each operator's smallest
/// watermark. Returns the metadata the worker starts from.
fn rescale(
    storage: &CheckpointStorage,
    c: &CommitRecord,
    manager: &CheckpointManager,
    index: usize,
    peers: usize,
    key_groups: u16,
) -> Result<Metadata> {
    let refuse = |reason: String| Error::Recovery {
        epoch: c.epoch,
        reason: reason.into(),
    };
    let mine = groups_of(index, peers, key_groups);
    let mut sources = Vec::with_capacity(c.workers);
    let mut metadata = Metadata::new();
    let mut watermarks: std::collections::BTreeMap<String, u64> = Default::default();
    for (old, &id) in c.checkpoints.iter().enumerate() {
        let catalog = Catalog::open(storage.open(&format!("workers/{old:05}"))?)
            .map_err(|e| refuse(format!("worker {old}'s checkpoints: {e}")))?;
        let manifest = catalog
            .manifest(id)
            .ok_or_else(|| refuse(format!("worker {old}'s checkpoint {id} is missing")))?;
        let epoch = manifest
            .metadata
            .get("epoch")
            .and_then(|e| e.parse::<u64>().ok());
        if epoch != Some(c.epoch) {
            return Err(refuse(format!(
                "worker {old}'s checkpoint {id} is of epoch {epoch:?}"
            )));
        }
        for (k, v) in &manifest.metadata {
            if k.starts_with("offset/") || k.starts_with("maxtime/") {
                metadata.insert(k.clone(), v.clone());
            } else if k.starts_with("watermark/") {
                let wm = v
                    .parse::<u64>()
                    .map_err(|_| refuse(format!("`{k}` = `{v}` is not a number")))?;
                let slot = watermarks.entry(k.clone()).or_insert(wm);
                *slot = (*slot).min(wm);
            }
        }
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
    manager
        .restore_ranges(&parts)
        .map_err(|e| refuse(format!("worker {index}'s key groups {mine:?}: {e}")))?;
    Ok(metadata)
}
