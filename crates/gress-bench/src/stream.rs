//! The stream benchmark: a keyed running count of generated events on
//! gress-stream (each backend, checkpoints on and off) beside a plain
//! timely job counting in a `HashMap`, in the same run.
//!
//! Every event is one state read and one write: a `ValueState<u64>` count
//! per key, updated in place, and one output record per event to a sink
//! that only counts. Events carry the time they were generated (µs, read
//! from the clock once per 256 events); the sink records, for each event,
//! when the commit of its epoch made it visible, so the latency column is
//! source-to-commit per event.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

use gress_rocksdb::{Compression, RocksDbConfig, RocksDbStateBackend};
use gress_state::checkpoint::Checkpointable;
use gress_state::{MemoryConfig, MemoryStateBackend};
use gress_stream::{
    BackendFactory, CacheStats, EpochPolicy, GeneratorSource, JobConfig, ValueStateDescriptor,
};

mod events;
mod table;

use events::{KeyPicker, LatencySink, RunningCount, SinkOutcome, Stamper};
pub(crate) use table::opt;
use table::write_table;

#[derive(clap::Args, Debug, Clone)]
pub struct StreamArgs {
    /// Events per run, over all workers (at the offered rates: as many as
    /// `--offered-secs` of them take).
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Distinct keys: a row (and its baseline) per value.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100_000u64])]
    keys: Vec<u64>,
    /// How events pick their key.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 2])]
    workers: Vec<usize>,
    /// State backends to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Backend::Memory, Backend::Rocksdb])]
    backends: Vec<Backend>,
    /// Checkpoint settings to measure: `true` checkpoints every epoch.
    #[arg(long, value_delimiter = ',', default_values_t = vec![true, false])]
    checkpoints: Vec<bool>,
    /// Epoch length in ms (`EpochPolicy::Interval`); every epoch is cut
    /// and, with checkpoints on, checkpointed.
    #[arg(long, default_value_t = 1000)]
    epoch_ms: u64,
    /// Cut epochs by count instead: this many events of each partition
    /// (one partition per worker) per epoch (`EpochPolicy::Records`).
    #[arg(long)]
    epoch_records: Option<u64>,
    /// Runs per case; a row is the run with the median events/s.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Offered loads, in percent of a row's peak events/s, at which the
    /// source-to-commit latency is measured (checkpointed rows only; 0
    /// for none).
    #[arg(long, value_delimiter = ',', default_values_t = vec![50u32, 80])]
    offered: Vec<u32>,
    /// How long each run at an offered load lasts, in seconds.
    #[arg(long, default_value_t = 25)]
    offered_secs: u64,
    /// Leave out the plain timely baseline (e.g. when profiling).
    #[arg(long)]
    no_baseline: bool,
    /// Each worker's state cache, MiB (the default: the engine's).
    #[arg(long)]
    cache_mb: Option<usize>,
    /// Each worker's memory budget, MiB, split between the state cache
    /// and RocksDB (`JobConfig::with_memory`); none by default.
    #[arg(long)]
    memory_mb: Option<usize>,
    /// Where RocksDB and the checkpoints go (a temporary directory inside).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
}

/// How events pick their key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Zipf with s = 1.0: the key of rank k is picked in proportion to
    /// 1/k (the hot keys spread over the key groups).
    Zipf,
}

impl StreamArgs {
    fn epoch_policy(&self) -> EpochPolicy {
        match self.epoch_records {
            Some(n) => EpochPolicy::Records(n.max(1)),
            None => EpochPolicy::Interval(Duration::from_millis(self.epoch_ms)),
        }
    }

    /// How the checkpoint column names the epochs.
    fn epoch_label(&self) -> String {
        match self.epoch_records {
            Some(n) if n.is_multiple_of(1000) => format!("{}k", n / 1000),
            Some(n) => format!("{n}"),
            None if self.epoch_ms.is_multiple_of(1000) => format!("{}s", self.epoch_ms / 1000),
            None => format!("{}ms", self.epoch_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    Memory,
    Rocksdb,
}

/// What is measured in one row.
#[derive(Debug, Clone, Copy)]
enum Subject {
    /// Plain timely: exchange by key, a `HashMap<u64, u64>` per worker.
    Timely,
    Gress {
        backend: Backend,
        checkpoints: bool,
    },
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Timely => "timely-hashmap",
            Subject::Gress {
                backend: Backend::Memory,
                ..
            } => "gress-memory",
            Subject::Gress {
                backend: Backend::Rocksdb,
                ..
            } => "gress-rocksdb",
        }
    }

    fn checkpoints(self, epoch: &str) -> String {
        match self {
            Subject::Timely => "-".into(),
            Subject::Gress {
                checkpoints: true, ..
            } => epoch.to_string(),
            Subject::Gress {
                checkpoints: false, ..
            } => "off".into(),
        }
    }
}

/// CPU time of this process so far (all threads, user and system), from
/// `/proc/self/stat`; `None` where that is unavailable.
pub(crate) fn process_cpu() -> Option<Duration> {
    // Linux reports these in USER_HZ, which is 100 on every architecture
    // it supports.
    const TICKS_PER_SEC: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SEC,
    ))
}

/// One run of one subject.
#[derive(Debug)]
struct Run {
    elapsed: Duration,
    /// CPU time of the process during the run (every thread).
    cpu: Option<Duration>,
    /// The most memory the process held during the run (resident).
    peak_rss: Option<u64>,
    /// Epochs cut, per worker.
    epochs: u64,
    /// Epochs committed with a checkpoint.
    checkpoints: u64,
    /// The caches' counters, all workers.
    cache: Option<CacheStats>,
    /// Each worker's stall per cut (what was left to flush, and the
    /// capture).
    stalls: Vec<Duration>,
    /// The parts of the stalls: writing back what was dirty, and the
    /// backend's capture.
    flushes: Vec<Duration>,
    captures: Vec<Duration>,
    /// Per worker and checkpoint: from the cut to the commit, and the bytes
    /// written.
    checkpoint_durations: Vec<Duration>,
    checkpoint_bytes: Vec<u64>,
    /// Source-to-commit latency per event, µs.
    latency: Option<Histogram<u64>>,
}

/// Latency of a row's subject at a fixed offered load.
#[derive(Debug, Serialize, Clone)]
struct Offered {
    /// Percent of the row's peak.
    percent: u32,
    /// Events per second offered, over all workers.
    events_per_sec: f64,
    /// Events per second committed (below the offered rate when the
    /// subject could not keep up).
    achieved_per_sec: f64,
    latency_ms_p50: Option<f64>,
    latency_ms_p99: Option<f64>,
    latency_ms_max: Option<f64>,
    /// The worker stalls per cut at this load.
    stall_ms_p99: Option<f64>,
    /// Epoch length, for reading the latency in epochs.
    epoch_ms: u64,
}

/// One measured row.
#[derive(Debug, Serialize, Clone)]
struct StreamRow {
    subject: String,
    /// Checkpoint interval, `off`, or `-` for the baseline.
    checkpoints: String,
    workers: usize,
    events: u64,
    keys: u64,
    distribution: Distribution,
    events_per_sec: f64,
    /// Wall time of the median run: start to the last commit.
    total_s: f64,
    /// CPU time of the median run over all its threads, per event: what
    /// the machine's load from other processes does not change.
    cpu_ns_per_event: Option<f64>,
    /// Peak resident memory of the process during the run, MiB.
    peak_rss_mib: Option<f64>,
    /// Events/s of every round.
    rounds_events_per_sec: Vec<f64>,
    /// Epochs cut per worker.
    epochs: Option<u64>,
    /// Epochs committed with a checkpoint.
    checkpoints_committed: Option<u64>,
    /// State reads answered by the cache, of all reads.
    cache_hit_rate: Option<f64>,
    /// Entries the caches wrote to the backend, per event.
    written_per_event: Option<f64>,
    /// A worker's stall per cut: the dirty entries left to write and the
    /// backend's capture.
    stall_ms_p50: Option<f64>,
    stall_ms_p99: Option<f64>,
    stall_ms_max: Option<f64>,
    /// The stall's parts: writing back what was dirty, and the capture.
    flush_ms_p99: Option<f64>,
    capture_ms_p99: Option<f64>,
    /// From the cut to the checkpoint's commit (files written, manifest
    /// published), per worker.
    checkpoint_ms_p50: Option<f64>,
    checkpoint_ms_max: Option<f64>,
    /// Bytes a worker wrote per checkpoint (mean).
    checkpoint_mib_mean: Option<f64>,
    /// At saturation: from an event's generation to the commit that made
    /// its output visible (mostly queueing; see `offered`).
    latency_ms_p50: Option<f64>,
    latency_ms_p99: Option<f64>,
    latency_ms_max: Option<f64>,
    /// Latency at fixed offered loads.
    offered: Vec<Offered>,
    /// This row's time per event divided by the baseline's.
    ratio_to_baseline: Option<f64>,
}

#[derive(Debug, Serialize)]
struct StreamReport {
    machine: crate::Machine,
    events: u64,
    keys: Vec<u64>,
    distribution: Distribution,
    epoch_policy: String,
    rocksdb: &'static str,
    /// The machine's 1-minute load average before and after: other
    /// processes competing for the cores slow every wall-clock figure.
    load_before: Option<f64>,
    load_after: Option<f64>,
    rows: Vec<StreamRow>,
}

/// RocksDB as the benchmark opens it.
pub(crate) const ROCKSDB_TUNING: &str = "WAL off (checkpoints give durability), statistics off, LZ4, \
     otherwise RocksDbConfig::new defaults (64 MiB memtables x3, 128 MiB block cache), or \
     with --memory-mb RocksDbConfig::with_memory_budget of the budget's backend share";

pub(crate) fn rocksdb_config(path: PathBuf) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path).with_wal(false);
    c.enable_statistics = false;
    c.compression = Compression::Lz4;
    c
}

/// Events are generated in batches of this many by the baseline's input.
const BATCH: u64 = 4096;

/// How fast a run offers events: as fast as the job takes them, or at a
/// fixed rate (events per second over all workers).
#[derive(Debug, Clone, Copy)]
enum Load {
    Saturate,
    Rate(f64),
}

fn run_gress(
    args: &StreamArgs,
    keys: KeyPicker,
    workers: usize,
    backend: Backend,
    checkpoints: bool,
    load: Load,
) -> Result<Run> {
    std::fs::create_dir_all(&args.dir)?;
    let tmp = tempfile::tempdir_in(&args.dir)?;
    let factory = {
        let root = tmp.path().join("state");
        BackendFactory::with_memory_budget(move |w, bytes| {
            let backend: Arc<dyn Checkpointable> = match backend {
                Backend::Memory => Arc::new(MemoryStateBackend::new(MemoryConfig::default())?),
                Backend::Rocksdb => {
                    let mut config = rocksdb_config(root.join(format!("worker-{w}")));
                    if let Some(bytes) = bytes {
                        config = config.with_memory_budget(bytes);
                    }
                    Arc::new(RocksDbStateBackend::open(config)?)
                }
            };
            Ok(backend)
        })
    };
    let mut config = JobConfig::new("stream-bench")
        .with_workers(workers)
        .with_backend(factory)
        .with_epochs(args.epoch_policy());
    if let Some(mb) = args.cache_mb {
        config = config.with_cache_bytes(mb << 20);
    }
    if let Some(mb) = args.memory_mb {
        config = config.with_memory(mb << 20);
    }
    if checkpoints {
        config = config.with_checkpoint_dir(tmp.path().join("checkpoints"));
    }
    let events = match load {
        Load::Saturate => args.events,
        Load::Rate(rate) => (rate * args.offered_secs as f64) as u64,
    };
    let per_partition = (events / workers as u64).max(1);
    let outcome = Arc::new(Mutex::new(SinkOutcome {
        records: 0,
        latency_us: Histogram::new(3)?,
    }));
    let sink_outcome = Arc::clone(&outcome);
    let started = Instant::now();
    let report = gress_stream::run(config, move |job| {
        let stamp = Stamper::new(started);
        let mut source = GeneratorSource::new(workers, Some(per_partition), move |p, i| {
            (keys.key_of(p, i), stamp.now_us())
        });
        if let Load::Rate(rate) = load {
            source = source.with_rate(rate / workers as f64)?;
        }
        job.source("events", source)?
            .key_by(|e: &(u64, u64)| e.0)
            .process(
                "count",
                RunningCount {
                    count: ValueStateDescriptor::new("count"),
                },
            )
            .sink(
                "out",
                LatencySink {
                    base: started,
                    pending: Vec::new(),
                    outcome: Arc::clone(&sink_outcome),
                },
            )
    })?;
    let elapsed = started.elapsed();
    let events = per_partition * workers as u64;
    let outcome = Arc::try_unwrap(outcome)
        .map_err(|_| anyhow!("a sink outlived its job"))?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    if report.records_in != events || outcome.records != events {
        bail!(
            "{events} events generated, {} counted, {} committed to the sink",
            report.records_in,
            outcome.records
        );
    }
    Ok(Run {
        elapsed,
        cpu: None,
        peak_rss: None,
        epochs: report.epochs_cut / workers as u64,
        checkpoints: if checkpoints {
            report.last_committed.map_or(0, |e| e + 1)
        } else {
            0
        },
        cache: Some(report.cache),
        stalls: report.checkpoints.iter().map(|c| c.stall).collect(),
        flushes: report.checkpoints.iter().map(|c| c.flush).collect(),
        captures: report
            .checkpoints
            .iter()
            .map(|c| c.stall.saturating_sub(c.flush))
            .collect(),
        checkpoint_durations: report.checkpoints.iter().map(|c| c.duration).collect(),
        checkpoint_bytes: report.checkpoints.iter().map(|c| c.bytes_written).collect(),
        latency: Some(outcome.latency_us),
    })
}

/// The same count in plain timely: events from an input handle, exchanged
/// by key, counted in a `HashMap<u64, u64>` per worker, one output record
/// per event to an operator that counts them. No state layer, no epochs,
/// no checkpoints.
fn run_timely(args: &StreamArgs, keys: KeyPicker, workers: usize) -> Result<Run> {
    let per_partition = args.events / workers as u64;
    let config = if workers > 1 {
        timely::Config::process(workers)
    } else {
        timely::Config::thread()
    };
    let started = Instant::now();
    let guards = timely::execute(config, move |worker| {
        let index = worker.index();
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<(u64, u64)>>>::new();
        let out = Rc::new(Cell::new(0u64));
        let out_count = Rc::clone(&out);
        worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_stream(scope)
                .unary::<CapacityContainerBuilder<Vec<(u64, u64)>>, _, _, _>(
                    Exchange::new(|e: &(u64, u64)| e.0),
                    "Count",
                    |_cap, _info| {
                        let mut counts: HashMap<u64, u64> = HashMap::new();
                        move |input, output| {
                            input.for_each_stamp(|cap, data| {
                                let mut session = output.session(&cap);
                                for batch in data {
                                    for (key, _born) in batch.drain(..) {
                                        let c = counts.entry(key).or_insert(0);
                                        *c += 1;
                                        session.give((key, *c));
                                    }
                                }
                            });
                        }
                    },
                )
                .sink(Pipeline, "Out", move |(input, _frontier)| {
                    input.for_each(|_cap, data| {
                        out_count.set(out_count.get() + data.len() as u64);
                        data.clear();
                    });
                });
        });
        let stamp = Stamper::new(started);
        let mut batch = Vec::with_capacity(BATCH as usize);
        let mut i = 0;
        while i < per_partition {
            let end = (i + BATCH).min(per_partition);
            batch.extend((i..end).map(|j| (keys.key_of(index, j), stamp.now_us())));
            input.send_batch(&mut batch);
            batch.clear();
            i = end;
            worker.step();
        }
        drop(input);
        while worker.step_or_park(None) {}
        out.get()
    })
    .map_err(|e| anyhow!("timely: {e}"))?;
    let mut counted = 0;
    for outcome in guards.join() {
        counted += outcome.map_err(|e| anyhow!("a timely worker failed: {e}"))?;
    }
    let elapsed = started.elapsed();
    let events = per_partition * workers as u64;
    if counted != events {
        bail!("{events} events generated, {counted} counted");
    }
    Ok(Run {
        elapsed,
        cpu: None,
        peak_rss: None,
        epochs: 0,
        checkpoints: 0,
        cache: None,
        stalls: Vec::new(),
        flushes: Vec::new(),
        captures: Vec::new(),
        checkpoint_durations: Vec::new(),
        checkpoint_bytes: Vec::new(),
        latency: None,
    })
}

/// Forgets the process's peak resident memory so far (Linux: the next
/// reading of `VmHWM` starts from the current RSS).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory since the last reset, bytes.
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn run_subject(
    args: &StreamArgs,
    keys: KeyPicker,
    subject: Subject,
    workers: usize,
    load: Load,
) -> Result<Run> {
    reset_peak_rss();
    let cpu_before = process_cpu();
    let mut run = match subject {
        Subject::Timely => run_timely(args, keys, workers),
        Subject::Gress {
            backend,
            checkpoints,
        } => run_gress(args, keys, workers, backend, checkpoints, load),
    }?;
    run.cpu = cpu_before
        .zip(process_cpu())
        .map(|(before, after)| after.saturating_sub(before));
    run.peak_rss = peak_rss();
    Ok(run)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(ms(sorted[i]))
}

pub(crate) fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn latency_ms(run: &Run, q: f64) -> Option<f64> {
    run.latency
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.value_at_quantile(q) as f64 / 1e3)
}

fn row_of(
    args: &StreamArgs,
    keys: u64,
    subject: Subject,
    workers: usize,
    runs: Vec<Run>,
) -> StreamRow {
    let events = args.events / workers as u64 * workers as u64;
    let eps = |r: &Run| events as f64 / r.elapsed.as_secs_f64();
    let rounds_events_per_sec: Vec<f64> = runs.iter().map(eps).collect();
    let mut runs = runs;
    runs.sort_by(|a, b| eps(a).total_cmp(&eps(b)));
    let median = runs.swap_remove(runs.len() / 2);
    let gress = matches!(subject, Subject::Gress { .. });
    let stalls = sorted(&median.stalls);
    let durations = sorted(&median.checkpoint_durations);
    let cache = median.cache;
    StreamRow {
        subject: subject.name().into(),
        checkpoints: subject.checkpoints(&args.epoch_label()),
        workers,
        events,
        keys,
        distribution: args.distribution,
        events_per_sec: eps(&median),
        total_s: median.elapsed.as_secs_f64(),
        cpu_ns_per_event: median.cpu.map(|c| c.as_secs_f64() * 1e9 / events as f64),
        peak_rss_mib: median.peak_rss.map(|b| b as f64 / f64::from(1 << 20)),
        rounds_events_per_sec,
        epochs: gress.then_some(median.epochs),
        checkpoints_committed: gress.then_some(median.checkpoints),
        cache_hit_rate: cache
            .filter(|c| c.hits + c.misses > 0)
            .map(|c| c.hits as f64 / (c.hits + c.misses) as f64),
        written_per_event: cache.map(|c| c.written as f64 / events as f64),
        stall_ms_p50: percentile(&stalls, 0.5),
        stall_ms_p99: percentile(&stalls, 0.99),
        stall_ms_max: percentile(&stalls, 1.0),
        flush_ms_p99: percentile(&sorted(&median.flushes), 0.99),
        capture_ms_p99: percentile(&sorted(&median.captures), 0.99),
        checkpoint_ms_p50: percentile(&durations, 0.5),
        checkpoint_ms_max: percentile(&durations, 1.0),
        checkpoint_mib_mean: (!median.checkpoint_bytes.is_empty()).then(|| {
            median.checkpoint_bytes.iter().sum::<u64>() as f64
                / median.checkpoint_bytes.len() as f64
                / f64::from(1 << 20)
        }),
        latency_ms_p50: latency_ms(&median, 0.5),
        latency_ms_p99: latency_ms(&median, 0.99),
        latency_ms_max: latency_ms(&median, 1.0),
        offered: Vec::new(),
        ratio_to_baseline: None,
    }
}

/// Runs the benchmark.
pub(crate) fn run(args: &StreamArgs) -> Result<crate::Outcome> {
    let report = bench_stream(args)?;
    let mut table = String::new();
    write_table(&mut table, &report);
    let plot = report
        .rows
        .iter()
        .map(|r| crate::PlotRow {
            label: format!(
                "{} ckpt {} {} wrk {} keys",
                r.subject, r.checkpoints, r.workers, r.keys
            ),
            throughput: r.events_per_sec,
            latency_ns: r
                .offered
                .iter()
                .flat_map(|o| {
                    [(
                        if o.percent >= 80 {
                            "p99@80%"
                        } else {
                            "p99@50%"
                        },
                        o.latency_ms_p99,
                    )]
                })
                .chain([("p99 saturated", r.latency_ms_p99)])
                .filter_map(|(n, ms)| Some((n, ms? * 1e6)))
                .collect(),
        })
        .collect();
    Ok(crate::Outcome {
        table,
        json: serde_json::to_value(&report)?,
        plot,
        throughput_unit: "events",
    })
}

/// The 1-minute load average.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn bench_stream(args: &StreamArgs) -> Result<StreamReport> {
    let load_before = load_average();
    if args.rounds == 0 || args.events == 0 || args.keys.contains(&0) || args.keys.is_empty() {
        bail!("--rounds, --events and --keys must be at least 1");
    }
    if args.offered.iter().any(|&p| p > 100) {
        bail!("--offered: percentages of the peak, at most 100");
    }
    let mut rows = Vec::new();
    for &n_keys in &args.keys {
        let keys = KeyPicker::new(n_keys, args.distribution);
        for &workers in &args.workers {
            if workers == 0 {
                bail!("--workers: at least one");
            }
            let mut subjects = Vec::new();
            if !args.no_baseline {
                subjects.push(Subject::Timely);
            }
            for &backend in &args.backends {
                for &checkpoints in &args.checkpoints {
                    subjects.push(Subject::Gress {
                        backend,
                        checkpoints,
                    });
                }
            }
            let mut runs: Vec<Vec<Run>> = subjects.iter().map(|_| Vec::new()).collect();
            for round in 0..args.rounds {
                // Rotate who goes first, so a slow spell hits every subject alike.
                for k in 0..subjects.len() {
                    let i = (round + k) % subjects.len();
                    let subject = subjects[i];
                    let run = run_subject(args, keys, subject, workers, Load::Saturate)?;
                    crate::status(&format!(
                        "stream: {} keys {n_keys} checkpoints {} workers {workers} round {}: \
                         {:.2}M events/s in {:.2}s",
                        subject.name(),
                        subject.checkpoints(&args.epoch_label()),
                        round + 1,
                        args.events as f64 / run.elapsed.as_secs_f64() / 1e6,
                        run.elapsed.as_secs_f64(),
                    ));
                    runs[i].push(run);
                }
            }
            let mut case: Vec<StreamRow> = subjects
                .iter()
                .zip(runs)
                .map(|(&s, r)| row_of(args, n_keys, s, workers, r))
                .collect();
            if !args.no_baseline {
                let base = case[0].events_per_sec;
                for r in case.iter_mut().skip(1) {
                    r.ratio_to_baseline = Some(base / r.events_per_sec);
                }
            }
            for (row, &subject) in case.iter_mut().zip(&subjects) {
                let Subject::Gress {
                    checkpoints: true, ..
                } = subject
                else {
                    continue;
                };
                for &percent in args.offered.iter().filter(|&&p| p > 0) {
                    let rate = row.events_per_sec * f64::from(percent) / 100.0;
                    let run = run_subject(args, keys, subject, workers, Load::Rate(rate))?;
                    let committed = run.latency.as_ref().map_or(0, |h| h.len());
                    let stalls = sorted(&run.stalls);
                    let offered = Offered {
                        percent,
                        events_per_sec: rate,
                        achieved_per_sec: committed as f64 / run.elapsed.as_secs_f64(),
                        latency_ms_p50: latency_ms(&run, 0.5),
                        latency_ms_p99: latency_ms(&run, 0.99),
                        latency_ms_max: latency_ms(&run, 1.0),
                        stall_ms_p99: percentile(&stalls, 0.99),
                        epoch_ms: args.epoch_ms,
                    };
                    crate::status(&format!(
                        "stream: {} keys {n_keys} workers {workers} at {percent}% ({:.2}M events/s): \
                         latency p50 {} p99 {} ms",
                        subject.name(),
                        rate / 1e6,
                        opt(offered.latency_ms_p50, 0),
                        opt(offered.latency_ms_p99, 0),
                    ));
                    row.offered.push(offered);
                }
            }
            rows.extend(case);
        }
    }
    Ok(StreamReport {
        machine: crate::machine(),
        events: args.events,
        keys: args.keys.clone(),
        distribution: args.distribution,
        epoch_policy: format!("{:?}", args.epoch_policy()),
        rocksdb: ROCKSDB_TUNING,
        load_before,
        load_after: load_average(),
        rows,
    })
}
