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
    BackendFactory, EpochPolicy, GeneratorSource, JobConfig, KeyedProcessFunction,
    ProcessingContext, Sink, ValueStateDescriptor,
};

use crate::timed::{CutLog, TimedBackend};
use crate::workload::{mix, scale};

#[derive(clap::Args, Debug, Clone)]
pub struct StreamArgs {
    /// Events per run, over all workers.
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
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
    /// Leave out the plain timely baseline (e.g. when profiling).
    #[arg(long)]
    no_baseline: bool,
    /// Where RocksDB and the checkpoints go (a temporary directory inside).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
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
fn process_cpu() -> Option<Duration> {
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
    /// Epochs cut, per worker.
    epochs: u64,
    /// Epochs committed with a checkpoint.
    checkpoints: u64,
    /// Each worker's stall per cut (flush plus capture).
    cuts: Vec<Duration>,
    /// The parts of the cuts: each `write_batch` of the cache flush, and
    /// each capture.
    flushes: Vec<Duration>,
    captures: Vec<Duration>,
    /// From each capture to its checkpoint's commit.
    checkpoint_durations: Vec<Duration>,
    /// Source-to-commit latency per event, µs.
    latency: Option<Histogram<u64>>,
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
    events_per_sec: f64,
    /// Wall time of the median run: start to the last commit.
    total_s: f64,
    /// CPU time of the median run over all its threads, per event: what
    /// the machine's load from other processes does not change.
    cpu_ns_per_event: Option<f64>,
    /// Events/s of every round.
    rounds_events_per_sec: Vec<f64>,
    /// Epochs cut per worker.
    epochs: Option<u64>,
    /// Epochs committed with a checkpoint.
    checkpoints_committed: Option<u64>,
    /// A worker's stall per cut: the cache flush's `write_batch` plus the
    /// backend capture (encoding of the flushed batch not included).
    cut_ms_p50: Option<f64>,
    cut_ms_max: Option<f64>,
    /// The cache flush's `write_batch` calls (epochs that wrote state).
    flush_ms_p50: Option<f64>,
    flush_ms_max: Option<f64>,
    /// The backend captures (every checkpointed epoch).
    capture_ms_p50: Option<f64>,
    capture_ms_max: Option<f64>,
    /// From the capture to the checkpoint's commit (files written,
    /// manifest published).
    checkpoint_ms_p50: Option<f64>,
    checkpoint_ms_max: Option<f64>,
    /// From an event's generation to the commit that made its output
    /// visible.
    latency_ms_p50: Option<f64>,
    latency_ms_p99: Option<f64>,
    latency_ms_max: Option<f64>,
    /// This row's time per event divided by the baseline's.
    ratio_to_baseline: Option<f64>,
}

#[derive(Debug, Serialize)]
struct StreamReport {
    machine: crate::Machine,
    events: u64,
    keys: u64,
    epoch_policy: String,
    rocksdb: &'static str,
    /// The machine's 1-minute load average before and after: other
    /// processes competing for the cores slow every wall-clock figure.
    load_before: Option<f64>,
    load_after: Option<f64>,
    rows: Vec<StreamRow>,
}

/// RocksDB as the benchmark opens it.
const ROCKSDB_TUNING: &str = "WAL off (checkpoints give durability), statistics off, LZ4, \
     otherwise RocksDbConfig::new defaults (64 MiB memtables x3, 128 MiB block cache)";

fn rocksdb_config(path: PathBuf) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path).with_wal(false);
    c.enable_statistics = false;
    c.compression = Compression::Lz4;
    c
}

/// Events are generated in batches of this many by the baseline's input.
const BATCH: u64 = 4096;

/// The key of event `i` of partition `p`: uniform over `0..keys`.
fn key_of(p: usize, i: u64, keys: u64) -> u64 {
    scale(mix(((p as u64) << 48) ^ i), keys)
}

/// Microseconds since `base`, read from the clock once every 256 calls.
struct Stamper {
    base: Instant,
    calls: Cell<u32>,
    now_us: Cell<u64>,
}

impl Stamper {
    fn new(base: Instant) -> Self {
        Stamper {
            base,
            calls: Cell::new(0),
            now_us: Cell::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        let n = self.calls.get();
        if n.is_multiple_of(256) {
            self.now_us.set(self.base.elapsed().as_micros() as u64);
        }
        self.calls.set(n.wrapping_add(1));
        self.now_us.get()
    }
}

/// The running count: one read and one write of a `ValueState<u64>` per
/// event; emits (key, count, generated µs).
struct RunningCount {
    count: ValueStateDescriptor<u64>,
}

impl KeyedProcessFunction<u64, (u64, u64)> for RunningCount {
    type Out = (u64, u64, u64);
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, Self::Out, ()>,
        (key, born_us): (u64, u64),
    ) -> gress_stream::Result<()> {
        let mut n = 0;
        ctx.value(&self.count)?.update(|c| {
            n = c.unwrap_or(0) + 1;
            Some(n)
        })?;
        ctx.output((key, n, born_us));
        Ok(())
    }
}

/// What the sinks of a run saw, over all workers.
#[derive(Debug)]
struct SinkOutcome {
    records: u64,
    latency_us: Histogram<u64>,
}

/// Counts records and, when an epoch commits, records each of its
/// events' latency from generation to now.
struct LatencySink {
    base: Instant,
    /// Per written epoch: runs of (generated µs, events).
    pending: Vec<(u64, Vec<(u64, u64)>)>,
    outcome: Arc<Mutex<SinkOutcome>>,
}

impl Sink<(u64, u64, u64)> for LatencySink {
    fn open(&mut self, _worker: usize, _committed: Option<u64>) -> gress_stream::Result<()> {
        Ok(())
    }

    fn write_epoch(
        &mut self,
        epoch: u64,
        records: Vec<(u64, u64, u64)>,
    ) -> gress_stream::Result<()> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &(_, _, born) in &records {
            match runs.last_mut() {
                Some((b, n)) if *b == born => *n += 1,
                _ => runs.push((born, 1)),
            }
        }
        self.pending.push((epoch, runs));
        Ok(())
    }

    fn commit(&mut self, epoch: u64) -> gress_stream::Result<()> {
        let now = self.base.elapsed().as_micros() as u64;
        let mut out = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        self.pending.retain(|(e, runs)| {
            if *e > epoch {
                return true;
            }
            for &(born, n) in runs {
                out.records += n;
                out.latency_us
                    .record_n(now.saturating_sub(born).max(1), n)
                    .expect("an auto-resizing histogram takes any value");
            }
            false
        });
        Ok(())
    }
}

fn run_gress(
    args: &StreamArgs,
    workers: usize,
    backend: Backend,
    checkpoints: bool,
) -> Result<Run> {
    std::fs::create_dir_all(&args.dir)?;
    let tmp = tempfile::tempdir_in(&args.dir)?;
    let logs: Vec<Arc<Mutex<CutLog>>> = (0..workers).map(|_| Arc::default()).collect();
    let factory = {
        let logs = logs.clone();
        let root = tmp.path().join("state");
        BackendFactory::new(move |w| {
            let inner: Arc<dyn Checkpointable> = match backend {
                Backend::Memory => Arc::new(MemoryStateBackend::new(MemoryConfig::default())?),
                Backend::Rocksdb => Arc::new(RocksDbStateBackend::open(rocksdb_config(
                    root.join(format!("worker-{w}")),
                ))?),
            };
            let log = logs.get(w).cloned().unwrap_or_default();
            Ok(Arc::new(TimedBackend::new(inner, log)) as Arc<dyn Checkpointable>)
        })
    };
    let mut config = JobConfig::new("stream-bench")
        .with_workers(workers)
        .with_backend(factory)
        .with_epochs(args.epoch_policy());
    if checkpoints {
        config = config.with_checkpoint_dir(tmp.path().join("checkpoints"));
    }
    let per_partition = args.events / workers as u64;
    let keys = args.keys;
    let outcome = Arc::new(Mutex::new(SinkOutcome {
        records: 0,
        latency_us: Histogram::new(3)?,
    }));
    let sink_outcome = Arc::clone(&outcome);
    let started = Instant::now();
    let report = gress_stream::run(config, move |job| {
        let stamp = Stamper::new(started);
        let source = GeneratorSource::new(workers, Some(per_partition), move |p, i| {
            (key_of(p, i, keys), stamp.now_us())
        });
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
    let mut cuts = Vec::new();
    let mut flushes = Vec::new();
    let mut captures = Vec::new();
    let mut checkpoint_durations = Vec::new();
    for log in &logs {
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        cuts.extend(log.cut_pauses());
        flushes.extend(log.flushes.iter().map(|f| f.1));
        captures.extend(log.captures.iter().map(|c| c.1));
        checkpoint_durations.extend(log.committed.iter().copied());
    }
    Ok(Run {
        elapsed,
        cpu: None,
        epochs: report.epochs_cut / workers as u64,
        checkpoints: if checkpoints {
            report.last_committed.map_or(0, |e| e + 1)
        } else {
            0
        },
        cuts,
        flushes,
        captures,
        checkpoint_durations,
        latency: Some(outcome.latency_us),
    })
}

/// The same count in plain timely: events from an input handle, exchanged
/// by key, counted in a `HashMap<u64, u64>` per worker, one output record
/// per event to an operator that counts them. No state layer, no epochs,
/// no checkpoints.
fn run_timely(args: &StreamArgs, workers: usize) -> Result<Run> {
    let per_partition = args.events / workers as u64;
    let keys = args.keys;
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
            batch.extend((i..end).map(|j| (key_of(index, j, keys), stamp.now_us())));
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
        epochs: 0,
        checkpoints: 0,
        cuts: Vec::new(),
        flushes: Vec::new(),
        captures: Vec::new(),
        checkpoint_durations: Vec::new(),
        latency: None,
    })
}

fn run_subject(args: &StreamArgs, subject: Subject, workers: usize) -> Result<Run> {
    let cpu_before = process_cpu();
    let mut run = match subject {
        Subject::Timely => run_timely(args, workers),
        Subject::Gress {
            backend,
            checkpoints,
        } => run_gress(args, workers, backend, checkpoints),
    }?;
    run.cpu = cpu_before
        .zip(process_cpu())
        .map(|(before, after)| after.saturating_sub(before));
    Ok(run)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(ms(sorted[i]))
}

fn row_of(args: &StreamArgs, subject: Subject, workers: usize, runs: Vec<Run>) -> StreamRow {
    let events = args.events / workers as u64 * workers as u64;
    let eps = |r: &Run| events as f64 / r.elapsed.as_secs_f64();
    let rounds_events_per_sec: Vec<f64> = runs.iter().map(eps).collect();
    let mut runs = runs;
    runs.sort_by(|a, b| eps(a).total_cmp(&eps(b)));
    let median = runs.swap_remove(runs.len() / 2);
    let gress = matches!(subject, Subject::Gress { .. });
    let sorted = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let cuts = sorted(&median.cuts);
    let flushes = sorted(&median.flushes);
    let captures = sorted(&median.captures);
    let durations = sorted(&median.checkpoint_durations);
    let lat = |q: f64| {
        median
            .latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(q) as f64 / 1e3)
    };
    StreamRow {
        subject: subject.name().into(),
        checkpoints: subject.checkpoints(&args.epoch_label()),
        workers,
        events,
        keys: args.keys,
        events_per_sec: eps(&median),
        total_s: median.elapsed.as_secs_f64(),
        cpu_ns_per_event: median.cpu.map(|c| c.as_secs_f64() * 1e9 / events as f64),
        rounds_events_per_sec,
        epochs: gress.then_some(median.epochs),
        checkpoints_committed: gress.then_some(median.checkpoints),
        cut_ms_p50: percentile(&cuts, 0.5),
        cut_ms_max: percentile(&cuts, 1.0),
        flush_ms_p50: percentile(&flushes, 0.5),
        flush_ms_max: percentile(&flushes, 1.0),
        capture_ms_p50: percentile(&captures, 0.5),
        capture_ms_max: percentile(&captures, 1.0),
        checkpoint_ms_p50: percentile(&durations, 0.5),
        checkpoint_ms_max: percentile(&durations, 1.0),
        latency_ms_p50: lat(0.5),
        latency_ms_p99: lat(0.99),
        latency_ms_max: lat(1.0),
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
            label: format!("{} ckpt {} {} wrk", r.subject, r.checkpoints, r.workers),
            throughput: r.events_per_sec,
            latency_ns: [
                ("p50", r.latency_ms_p50),
                ("p99", r.latency_ms_p99),
                ("max", r.latency_ms_max),
            ]
            .into_iter()
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
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn bench_stream(args: &StreamArgs) -> Result<StreamReport> {
    let load_before = load_average();
    if args.rounds == 0 || args.events == 0 || args.keys == 0 {
        bail!("--rounds, --events and --keys must be at least 1");
    }
    let mut rows = Vec::new();
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
                let run = run_subject(args, subject, workers)?;
                crate::status(&format!(
                    "stream: {} checkpoints {} workers {workers} round {}: {:.2}M events/s in {:.2}s",
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
            .map(|(&s, r)| row_of(args, s, workers, r))
            .collect();
        if !args.no_baseline {
            let base = case[0].events_per_sec;
            for r in case.iter_mut().skip(1) {
                r.ratio_to_baseline = Some(base / r.events_per_sec);
            }
        }
        rows.extend(case);
    }
    Ok(StreamReport {
        machine: crate::machine(),
        events: args.events,
        keys: args.keys,
        epoch_policy: format!("{:?}", args.epoch_policy()),
        rocksdb: ROCKSDB_TUNING,
        load_before,
        load_after: load_average(),
        rows,
    })
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn write_table(out: &mut String, report: &StreamReport) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "keyed count: {} events over {} keys; epochs: {}; rocksdb: {}",
        report.events, report.keys, report.epoch_policy, report.rocksdb
    );
    let _ = writeln!(
        out,
        "load average before/after: {}/{} on {} cpus",
        opt(report.load_before, 2),
        opt(report.load_after, 2),
        report.machine.cpus
    );
    let _ = writeln!(
        out,
        "{:<15} {:>6} {:>3} {:>12} {:>7} {:>7} {:>6} {:>5} {:>15} {:>15} {:>15} {:>7}",
        "subject",
        "ckpt",
        "wrk",
        "events/s",
        "time",
        "cpu/ev",
        "epochs",
        "ckpts",
        "cut p50/max ms",
        "ckpt p50/max ms",
        "lat p50/p99 ms",
        "ratio"
    );
    for r in &report.rows {
        let pair = |a: Option<f64>, b: Option<f64>, d: usize| match (a, b) {
            (None, None) => "-".to_string(),
            _ => format!("{}/{}", opt(a, d), opt(b, d)),
        };
        let _ = writeln!(
            out,
            "{:<15} {:>6} {:>3} {:>12.0} {:>6.2}s {:>7} {:>6} {:>5} {:>15} {:>15} {:>15} {:>7}",
            r.subject,
            r.checkpoints,
            r.workers,
            r.events_per_sec,
            r.total_s,
            r.cpu_ns_per_event
                .map_or("-".into(), |ns| format!("{ns:.0}ns")),
            r.epochs.map_or("-".into(), |e| e.to_string()),
            r.checkpoints_committed
                .map_or("-".into(), |e| e.to_string()),
            pair(r.cut_ms_p50, r.cut_ms_max, 1),
            pair(r.checkpoint_ms_p50, r.checkpoint_ms_max, 1),
            pair(r.latency_ms_p50, r.latency_ms_p99, 0),
            r.ratio_to_baseline
                .map_or(String::new(), |x| format!("{x:.2}x")),
        );
    }
}
