//! The Nexmark benchmark: each chosen query on gress-stream with each
//! backend, 2 workers, an epoch (and checkpoint) every second, its output
//! counted by a sink that keeps nothing; beside plain timely versions of
//! q5 (hot items) and q8 (new users) as the floor.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

use gress_nexmark::queries::stateless::SideInput;
use gress_nexmark::{CountSink, Event, NexmarkSettings, NexmarkSource, Query};
use gress_rocksdb::RocksDbStateBackend;
use gress_state::checkpoint::Checkpointable;
use gress_state::{MemoryConfig, MemoryStateBackend};
use gress_stream::{BackendFactory, EpochPolicy, JobConfig, Poll, Source};

use crate::stream::{
    ROCKSDB_TUNING, load_average, opt, peak_rss, percentile, process_cpu, reset_peak_rss,
    rocksdb_config, sorted,
};

#[derive(clap::Args, Debug, Clone)]
pub struct NexmarkArgs {
    /// Queries to run (`q0` to `q22`); all by default.
    #[arg(long, value_delimiter = ',')]
    queries: Vec<String>,
    /// Events per run (people, auctions and bids), over all workers.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// State backends to measure.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["memory".to_string(), "rocksdb".to_string()])]
    backends: Vec<String>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Epoch length in ms: every epoch is checkpointed.
    #[arg(long, default_value_t = 1000)]
    epoch_ms: u64,
    /// Each worker's memory budget, MiB (`JobConfig::with_memory`); none
    /// by default.
    #[arg(long)]
    memory_mb: Option<usize>,
    /// Leave out the plain timely q5 and q8.
    #[arg(long)]
    no_baseline: bool,
    /// Run every row in this process instead of a child process of its
    /// own (peak RSS then includes what earlier rows left behind).
    #[arg(long)]
    in_process: bool,
    /// (For the child processes.) Run exactly the rows asked for, here.
    #[arg(long, hide = true)]
    single: bool,
    /// (For the child processes.) Run only the plain timely rows.
    #[arg(long, hide = true)]
    baseline_only: bool,
    /// Where RocksDB, the checkpoints and q10's files go (a temporary
    /// directory inside).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
}

/// One measured row.
#[derive(Debug, Serialize, serde::Deserialize, Clone)]
struct Row {
    query: String,
    /// `stateless`, `windowed` or `updating`.
    kind: String,
    /// `memory`, `rocksdb` or `timely` (the floor).
    subject: String,
    events: u64,
    events_per_sec: f64,
    total_s: f64,
    /// CPU time of the run over all its threads, per event.
    cpu_ns_per_event: Option<f64>,
    peak_rss_mib: Option<f64>,
    /// Records the query committed.
    output_records: u64,
    /// The state the workers' caches held at their largest, together.
    state_mib: Option<f64>,
    /// RocksDB's files at the end, all workers.
    db_mib: Option<f64>,
    checkpoints: Option<u64>,
    /// From the cut to the commit, per worker and checkpoint.
    checkpoint_ms_p50: Option<f64>,
    checkpoint_ms_max: Option<f64>,
    /// Bytes a worker wrote per checkpoint (mean).
    checkpoint_mib_mean: Option<f64>,
    /// The target for this kind of query and backend.
    target_events_per_sec: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: crate::Machine,
    events: u64,
    workers: usize,
    generator: &'static str,
    epoch_ms: u64,
    rocksdb: &'static str,
    load_before: Option<f64>,
    load_after: Option<f64>,
    rows: Vec<Row>,
}

const GENERATOR: &str = "nexmark 0.2, Flink suite settings: 10M events/s of event time, \
     1:3:46 people:auctions:bids, 100 auctions in flight, 1000 active people";

fn target(kind: &str, subject: &str) -> Option<f64> {
    match (kind, subject) {
        ("stateless", "memory" | "rocksdb") => Some(5e6),
        ("windowed", "memory") => Some(2e6),
        ("windowed", "rocksdb") => Some(1e6),
        ("updating", "memory") => Some(1e6),
        ("updating", "rocksdb") => Some(0.5e6),
        _ => None,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// A row's measurements of CPU and memory around `f`.
fn measured<T>(
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Duration, Option<Duration>, Option<u64>)> {
    reset_peak_rss();
    let cpu_before = process_cpu();
    let started = Instant::now();
    let out = f()?;
    let elapsed = started.elapsed();
    let cpu = cpu_before
        .zip(process_cpu())
        .map(|(b, a)| a.saturating_sub(b));
    Ok((out, elapsed, cpu, peak_rss()))
}

fn run_gress(args: &NexmarkArgs, query: Query, backend: &str) -> Result<Row> {
    std::fs::create_dir_all(&args.dir)?;
    let tmp = tempfile::tempdir_in(&args.dir)?;
    let side_path = tmp.path().join("side_input.csv");
    SideInput::write(&side_path, 10_000)?;
    let side = SideInput::load(&side_path)?;
    let state = tmp.path().join("state");
    let rocks = backend == "rocksdb";
    let factory = {
        let root = state.clone();
        BackendFactory::with_memory_budget(move |w, bytes| {
            let backend: Arc<dyn Checkpointable> = if rocks {
                let mut config = rocksdb_config(root.join(format!("worker-{w}")));
                if let Some(bytes) = bytes {
                    config = config.with_memory_budget(bytes);
                }
                Arc::new(RocksDbStateBackend::open(config)?)
            } else {
                Arc::new(MemoryStateBackend::new(MemoryConfig::default())?)
            };
            Ok(backend)
        })
    };
    let mut config = JobConfig::new(format!("nexmark-{}", query.name()))
        .with_workers(args.workers)
        .with_backend(factory)
        .with_epochs(EpochPolicy::Interval(Duration::from_millis(args.epoch_ms)))
        .with_checkpoint_dir(tmp.path().join("checkpoints"));
    if let Some(mb) = args.memory_mb {
        config = config.with_memory(mb << 20);
    }
    let settings = NexmarkSettings::new(args.events, args.workers);
    let count = CountSink::new();
    let sink = count.clone();
    let out = tmp.path().join("q10");
    crate::status(&format!("nexmark {} on {backend}", query.name()));
    let (report, elapsed, cpu, rss) = measured(|| {
        Ok(gress_stream::run(config, move |job| {
            let events = gress_nexmark::events(job, "events", &settings)?;
            query.build_counted(events, &sink, &side, &out)
        })?)
    })?;
    let events = args.events;
    let durations: Vec<Duration> = report.checkpoints.iter().map(|c| c.duration).collect();
    let bytes: Vec<u64> = report.checkpoints.iter().map(|c| c.bytes_written).collect();
    Ok(Row {
        query: query.name().to_string(),
        kind: query.kind().to_string(),
        subject: backend.to_string(),
        events,
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        total_s: elapsed.as_secs_f64(),
        cpu_ns_per_event: cpu.map(|c| c.as_nanos() as f64 / events as f64),
        peak_rss_mib: rss.map(mib),
        output_records: count.count(),
        state_mib: Some(mib(report.cache.peak_bytes)),
        db_mib: rocks.then(|| mib(dir_size(&state))),
        checkpoints: Some(report.last_committed.map_or(0, |e| e + 1)),
        checkpoint_ms_p50: percentile(&sorted(&durations), 0.5),
        checkpoint_ms_max: percentile(&sorted(&durations), 1.0),
        checkpoint_mib_mean: (!bytes.is_empty())
            .then(|| mib(bytes.iter().sum::<u64>()) / bytes.len() as f64),
        target_events_per_sec: target(query.kind(), backend),
    })
}

/// Reads partition `index` of the events, in batches, into `each`.
fn generate(
    settings: &NexmarkSettings,
    index: usize,
    mut each: impl FnMut(Vec<Event>),
) -> Result<()> {
    let mut source = NexmarkSource::new(settings.clone());
    let mut reader = source.open(index, 0)?;
    loop {
        let mut batch = Vec::with_capacity(1024);
        let poll = reader.poll(1024, &mut batch)?;
        each(batch);
        if poll == Poll::End {
            return Ok(());
        }
    }
}

/// The rows every timely worker emitted, together.
fn rows_of(
    guards: timely::communication::WorkerGuards<std::result::Result<u64, String>>,
) -> Result<u64> {
    let mut rows = 0;
    for outcome in guards.join() {
        rows += outcome
            .map_err(|e| anyhow!("a timely worker failed: {e}"))?
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(rows)
}

/// q5 in plain timely: bids exchanged by auction, counted per sliding
/// window in a `HashMap`; at the end of the input each worker sends its
/// windows' local maxima, exchanged by window, and the auctions with the
/// most bids are emitted.
fn timely_q5(settings: &NexmarkSettings, workers: usize) -> Result<u64> {
    let settings = settings.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<(u64, u64)>>>::new();
        let out = Rc::new(Cell::new(0u64));
        let out_count = Rc::clone(&out);
        worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_stream(scope)
                .unary_frontier::<CapacityContainerBuilder<Vec<(u64, u64, Vec<u64>)>>, _, _, _>(
                    Exchange::new(|b: &(u64, u64)| b.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                    "Count",
                    |cap, _info| {
                        let mut cap = Some(cap);
                        let mut counts: HashMap<(u64, u64), u64> = HashMap::new();
                        move |(input, frontier), output| {
                            input.for_each(|_, data| {
                                for (auction, t) in data.drain(..) {
                                    let mut start = t - t % 2_000;
                                    loop {
                                        *counts.entry((start, auction)).or_insert(0) += 1;
                                        if start < 2_000 || start - 2_000 + 10_000 <= t {
                                            break;
                                        }
                                        start -= 2_000;
                                    }
                                }
                            });
                            if frontier.is_empty()
                                && let Some(cap) = cap.take()
                            {
                                let mut best: HashMap<u64, (u64, Vec<u64>)> = HashMap::new();
                                for ((start, auction), n) in counts.drain() {
                                    let b = best.entry(start).or_insert((0, Vec::new()));
                                    if n > b.0 {
                                        *b = (n, vec![auction]);
                                    } else if n == b.0 {
                                        b.1.push(auction);
                                    }
                                }
                                let mut session = output.session(&cap);
                                for (start, (n, auctions)) in best {
                                    session.give((start, n, auctions));
                                }
                            }
                        }
                    },
                )
                .unary_frontier::<CapacityContainerBuilder<Vec<(u64, u64)>>, _, _, _>(
                    Exchange::new(|w: &(u64, u64, Vec<u64>)| {
                        w.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    }),
                    "Hot",
                    |cap, _info| {
                        let mut cap = Some(cap);
                        let mut best: HashMap<u64, (u64, Vec<u64>)> = HashMap::new();
                        move |(input, frontier), output| {
                            input.for_each(|_, data| {
                                for (start, n, mut auctions) in data.drain(..) {
                                    let b = best.entry(start).or_insert((0, Vec::new()));
                                    if n > b.0 {
                                        *b = (n, auctions);
                                    } else if n == b.0 {
                                        b.1.append(&mut auctions);
                                    }
                                }
                            });
                            if frontier.is_empty()
                                && let Some(cap) = cap.take()
                            {
                                let mut session = output.session(&cap);
                                for (_, (n, auctions)) in best.drain() {
                                    for a in auctions {
                                        session.give((a, n));
                                    }
                                }
                            }
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
        let mut bids = Vec::with_capacity(1024);
        let generated = generate(&settings, index, |events| {
            bids.extend(events.into_iter().filter_map(|e| {
                let b = e.bid()?;
                Some((b.auction, b.date_time))
            }));
            input.send_batch(&mut bids);
            bids.clear();
            worker.step();
        });
        drop(input);
        while worker.step_or_park(None) {}
        generated.map(|()| out.get()).map_err(|e| e.to_string())
    })
    .map_err(|e| anyhow!("timely: {e}"))?;
    rows_of(guards)
}

/// q8 in plain timely: people and sellers exchanged by id, their tumbling
/// 10 s windows kept in a `HashMap`, a row emitted the first time a
/// window holds both.
fn timely_q8(settings: &NexmarkSettings, workers: usize) -> Result<u64> {
    let settings = settings.clone();
    type In = (u64, u64, Option<String>);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<In>>>::new();
        let out = Rc::new(Cell::new(0u64));
        let out_count = Rc::clone(&out);
        worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_stream(scope)
                .unary::<CapacityContainerBuilder<Vec<(u64, String, u64)>>, _, _, _>(
                    Exchange::new(|r: &In| r.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                    "Join",
                    |_cap, _info| {
                        let mut seen: HashMap<(u64, u64), (Option<String>, bool, bool)> =
                            HashMap::new();
                        move |input, output| {
                            input.for_each_stamp(|cap, data| {
                                let mut session = output.session(&cap);
                                for batch in data {
                                    for (id, t, name) in batch.drain(..) {
                                        let start = t - t % 10_000;
                                        let s =
                                            seen.entry((id, start)).or_insert((None, false, false));
                                        match name {
                                            Some(n) => s.0 = Some(n),
                                            None => s.1 = true,
                                        }
                                        if let (Some(n), true, false) = (&s.0, s.1, s.2) {
                                            session.give((id, n.clone(), start));
                                            s.2 = true;
                                        }
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
        let mut rows = Vec::with_capacity(1024);
        let generated = generate(&settings, index, |events| {
            rows.extend(events.into_iter().filter_map(|e| match e {
                Event::Person(p) => Some((p.id, p.date_time, Some(p.name))),
                Event::Auction(a) => Some((a.seller, a.date_time, None)),
                Event::Bid(_) => None,
            }));
            input.send_batch(&mut rows);
            rows.clear();
            worker.step();
        });
        drop(input);
        while worker.step_or_park(None) {}
        generated.map(|()| out.get()).map_err(|e| e.to_string())
    })
    .map_err(|e| anyhow!("timely: {e}"))?;
    rows_of(guards)
}

fn run_timely(args: &NexmarkArgs, query: Query) -> Result<Row> {
    let settings = NexmarkSettings::new(args.events, args.workers);
    crate::status(&format!("nexmark {} on plain timely", query.name()));
    let (rows, elapsed, cpu, rss) = measured(|| match query.name() {
        "q5" => timely_q5(&settings, args.workers),
        _ => timely_q8(&settings, args.workers),
    })?;
    let events = args.events;
    Ok(Row {
        query: query.name().to_string(),
        kind: query.kind().to_string(),
        subject: "timely".to_string(),
        events,
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        total_s: elapsed.as_secs_f64(),
        cpu_ns_per_event: cpu.map(|c| c.as_nanos() as f64 / events as f64),
        peak_rss_mib: rss.map(mib),
        output_records: rows,
        state_mib: None,
        db_mib: None,
        checkpoints: None,
        checkpoint_ms_p50: None,
        checkpoint_ms_max: None,
        checkpoint_mib_mean: None,
        target_events_per_sec: None,
    })
}

/// One row: of `backend`, or of plain timely; in a child process of its
/// own unless asked otherwise, so that its peak RSS is its own.
fn row(args: &NexmarkArgs, query: Query, backend: Option<&String>) -> Result<Row> {
    if args.single || args.in_process {
        return match backend {
            Some(b) => run_gress(args, query, b),
            None => run_timely(args, query),
        };
    }
    // The `gress` binary this benchmark runs in.
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    let report = tempfile::NamedTempFile::new_in(&args.dir)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "nexmark", "--single", "--queries", query.name()])
        .args(["--events", &args.events.to_string()])
        .args(["--workers", &args.workers.to_string()])
        .args(["--epoch-ms", &args.epoch_ms.to_string()])
        .arg("--dir")
        .arg(&args.dir)
        .arg("--save")
        .arg(report.path());
    match backend {
        Some(b) => cmd.args(["--backends", b, "--no-baseline"]),
        None => cmd.arg("--baseline-only"),
    };
    if let Some(mb) = args.memory_mb {
        cmd.args(["--memory-mb", &mb.to_string()]);
    }
    crate::status(&format!(
        "nexmark {} on {}",
        query.name(),
        backend.map_or("plain timely", |b| b.as_str())
    ));
    let out = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()?;
    if !out.status.success() {
        bail!(
            "nexmark {} ({}) failed: {}",
            query.name(),
            backend.map_or("timely", |b| b.as_str()),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(report.path())?)?;
    let row = json.get("rows").and_then(|r| r.get(0)).ok_or_else(|| {
        anyhow!(
            "nexmark {}: the child process reported no row",
            query.name()
        )
    })?;
    Ok(serde_json::from_value(row.clone())?)
}

fn write_table(out: &mut String, report: &Report) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "nexmark: {} events, {} workers, epochs and checkpoints every {} ms; {}",
        report.events, report.workers, report.epoch_ms, report.generator
    );
    let _ = writeln!(out, "rocksdb: {}", report.rocksdb);
    let _ = writeln!(
        out,
        "load average before/after: {}/{} on {} cpus",
        opt(report.load_before, 2),
        opt(report.load_after, 2),
        report.machine.cpus
    );
    let _ = writeln!(
        out,
        "{:<5} {:<9} {:<7} {:>11} {:>9} {:>7} {:>8} {:>9} {:>8} {:>8} {:>5} {:>13} {:>8} {:>10}",
        "query",
        "kind",
        "subject",
        "events/s",
        "cpu/ev",
        "rss MiB",
        "state MiB",
        "out rows",
        "db MiB",
        "time s",
        "ckpts",
        "ckpt p50/max",
        "ckpt MiB",
        "target"
    );
    for r in &report.rows {
        let target = match r.target_events_per_sec {
            Some(t) if r.events_per_sec >= t => format!("{:.1}M met", t / 1e6),
            Some(t) => format!("{:.1}M missed", t / 1e6),
            None => "-".into(),
        };
        let ckpt = match (r.checkpoint_ms_p50, r.checkpoint_ms_max) {
            (None, None) => "-".to_string(),
            (a, b) => format!("{}/{} ms", opt(a, 0), opt(b, 0)),
        };
        let _ = writeln!(
            out,
            "{:<5} {:<9} {:<7} {:>11.0} {:>9} {:>7} {:>8} {:>9} {:>8} {:>8.2} {:>5} {:>13} {:>8} {:>10}",
            r.query,
            r.kind,
            r.subject,
            r.events_per_sec,
            opt(r.cpu_ns_per_event, 0) + " ns",
            opt(r.peak_rss_mib, 0),
            opt(r.state_mib, 1),
            r.output_records,
            opt(r.db_mib, 1),
            r.total_s,
            r.checkpoints.map_or("-".into(), |c| c.to_string()),
            ckpt,
            opt(r.checkpoint_mib_mean, 2),
            target
        );
    }
}

pub(crate) fn run(args: &NexmarkArgs) -> Result<crate::Outcome> {
    if args.events == 0 || args.workers == 0 || args.epoch_ms == 0 {
        bail!("--events, --workers and --epoch-ms must be at least 1");
    }
    let queries = if args.queries.is_empty() {
        Query::all()
    } else {
        args.queries
            .iter()
            .map(|q| Query::parse(q))
            .collect::<gress_stream::Result<Vec<_>>>()?
    };
    for b in &args.backends {
        if b != "memory" && b != "rocksdb" {
            bail!("--backends: {b:?} is not memory or rocksdb");
        }
    }
    let load_before = load_average();
    let mut rows = Vec::new();
    for &q in &queries {
        if !args.baseline_only {
            for b in &args.backends {
                rows.push(row(args, q, Some(b))?);
            }
        }
        if !args.no_baseline && matches!(q.name(), "q5" | "q8") {
            rows.push(row(args, q, None)?);
        }
    }
    let report = Report {
        machine: crate::machine(),
        events: args.events,
        workers: args.workers,
        generator: GENERATOR,
        epoch_ms: args.epoch_ms,
        rocksdb: ROCKSDB_TUNING,
        load_before,
        load_after: load_average(),
        rows,
    };
    let mut table = String::new();
    write_table(&mut table, &report);
    let plot = report
        .rows
        .iter()
        .map(|r| crate::PlotRow {
            label: format!("{} {}", r.query, r.subject),
            throughput: r.events_per_sec,
            latency_ns: Vec::new(),
        })
        .collect();
    Ok(crate::Outcome {
        table,
        json: serde_json::to_value(&report)?,
        plot,
        throughput_unit: "events",
    })
}
