//! The benchmarks behind `gress bench`: ops/s and latency percentiles of
//! each backend, beside a plain baseline measured in the same run.
//!
//! ```text
//! gress bench memory
//! gress bench memory --sizes 10000 --threads 1 --json > out.json
//! gress bench stream --workers 1,2 --backends memory,rocksdb --plot stream.svg
//! ```
//!
//! Each case alternates its subjects (backend and baseline) over several
//! rounds so that a slow spell of a shared machine hits both alike; ops/s is
//! the median round. Every round also has a pass with each call timed, for
//! the latency histogram (those figures include the cost of reading the
//! clock, reported as `timer_ns`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Subcommand;
use hdrhistogram::Histogram;
use serde::Serialize;

use gress_state::{MemoryConfig, MemoryStateBackend, StateBackend};

mod nexmark;
mod rescale;
mod rocks;
mod savepoint;
mod stream;
mod workload;
pub use nexmark::NexmarkArgs;
pub use rescale::RescaleArgs;
pub use rocks::RocksArgs;
pub use savepoint::SavepointArgs;
pub use stream::StreamArgs;
use workload::{Keys, VALUE_LEN};

/// Which benchmark to run, with its settings.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// MemoryStateBackend against std::collections::HashMap.
    Memory(CommonArgs),
    /// RocksDbStateBackend (TTL off and on) against a raw rocksdb::DB with
    /// the same options, WAL on and off.
    Rocksdb(rocks::RocksArgs),
    /// A keyed running count on gress-stream (memory and RocksDB state,
    /// checkpoints on and off) against the same count in plain timely.
    Stream(stream::StreamArgs),
    /// The Nexmark queries q0-q22 on gress-stream (memory and RocksDB
    /// state, checkpoints every second), beside plain timely versions of
    /// q5 and q8.
    Nexmark(nexmark::NexmarkArgs),
    /// Keyed state checkpointed by N workers and restored onto M by
    /// key-group ranges, against one full checkpoint and its restore.
    Rescale(rescale::RescaleArgs),
    /// A keyed job stopped with a savepoint on one backend and number of
    /// workers, and a job on another started from it.
    Savepoint(savepoint::SavepointArgs),
}

/// Settings of the memory benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// State sizes (number of keys) to measure.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10_000u64, 1_000_000])]
    sizes: Vec<u64>,
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 2])]
    threads: Vec<usize>,
    /// Operations per thread in each measured pass.
    #[arg(long, default_value_t = 2_000_000)]
    ops: u64,
    /// Measurement rounds per case; subjects alternate round by round.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Latency sampling of the backend's own metrics (1 in N calls).
    #[arg(long, default_value_t = gress_state::metrics::DEFAULT_SAMPLE_EVERY)]
    sample_every: u32,
}

/// What a benchmark produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The results as a table for a terminal.
    pub table: String,
    /// The whole report (machine, settings, every row).
    pub json: serde_json::Value,
    /// One entry per measured row, for plotting.
    pub plot: Vec<PlotRow>,
    /// What `PlotRow::throughput` counts per second (`ops` or `events`).
    pub throughput_unit: &'static str,
}

/// One measured row, reduced to what a plot shows.
#[derive(Debug, Clone, Serialize)]
pub struct PlotRow {
    /// Subject, operation and case.
    pub label: String,
    /// Operations (or events) per second.
    pub throughput: f64,
    /// Latency percentiles in nanoseconds, by name (`p50`, `p99`, ...).
    pub latency_ns: Vec<(&'static str, f64)>,
}

type StatusFn = Box<dyn Fn(&str) + Send + Sync>;
static STATUS: std::sync::OnceLock<StatusFn> = std::sync::OnceLock::new();

/// Where progress messages go (a progress bar); standard error by
/// default. Set once per process.
pub fn set_status(f: impl Fn(&str) + Send + Sync + 'static) {
    let _ = STATUS.set(Box::new(f));
}

/// Reports what the benchmark is doing now.
pub(crate) fn status(msg: &str) {
    match STATUS.get() {
        Some(f) => f(msg),
        None => eprintln!("{msg}"),
    }
}

/// Runs one benchmark.
pub fn run(cmd: &BenchCmd) -> Result<Outcome> {
    let rows = match cmd {
        BenchCmd::Memory(args) => bench_memory(args)?,
        BenchCmd::Rocksdb(args) => rocks::bench_rocksdb(args)?,
        BenchCmd::Stream(args) => return stream::run(args),
        BenchCmd::Rescale(args) => return rescale::run(args),
        BenchCmd::Savepoint(args) => return savepoint::run(args),
        BenchCmd::Nexmark(args) => return nexmark::run(args),
    };
    let timer_ns = timer_overhead();
    let mut table = format!("timer overhead in latency columns: {timer_ns:.1} ns per call\n");
    write_table(&mut table, &rows);
    let plot = rows
        .iter()
        .map(|r| PlotRow {
            label: [
                r.subject.clone(),
                r.op.clone(),
                r.case.clone(),
                format!("{} keys", r.n_keys),
                format!("{} thr", r.threads),
            ]
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
            throughput: r.ops_per_sec,
            latency_ns: vec![
                ("p50", r.p50_ns as f64),
                ("p99", r.p99_ns as f64),
                ("p99.9", r.p999_ns as f64),
            ],
        })
        .collect();
    let report = Report {
        machine: machine(),
        timer_ns,
        key_len: workload::KEY_LEN,
        value_len: VALUE_LEN,
        rows,
    };
    Ok(Outcome {
        table,
        json: serde_json::to_value(&report)?,
        plot,
        throughput_unit: "ops",
    })
}

/// One measured row.
#[derive(Debug, Serialize, Clone)]
pub(crate) struct Row {
    subject: String,
    op: String,
    n_keys: u64,
    threads: usize,
    ops_per_sec: f64,
    ns_per_op: f64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
    /// ns/op of this row divided by the baseline's, when there is one.
    ratio_to_baseline: Option<f64>,
    /// For a TTL-enabled subject: ns/op divided by the same backend's
    /// with TTL disabled.
    ratio_to_no_ttl: Option<f64>,
    /// Free-form case detail (WAL on/off, cache size).
    case: String,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    timer_ns: f64,
    key_len: usize,
    value_len: usize,
    rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    os: &'static str,
    arch: &'static str,
}

/// How one subject's operation is run: shared across threads, or on the
/// calling thread only (for baselines that are not `Sync`).
pub(crate) enum Runner<'a> {
    Shared(&'a (dyn Fn(u64) + Sync)),
    Local(&'a dyn Fn(u64)),
}

/// Runs `ops` calls on each of `threads` threads (one thread: the caller's);
/// returns the wall time and, if `timed`, a histogram of per-call latency.
fn pass(runner: &Runner<'_>, threads: usize, ops: u64, timed: bool) -> (Duration, Histogram<u64>) {
    fn run(op: &dyn Fn(u64), seed: u64, ops: u64, timed: bool) -> Histogram<u64> {
        let mut h = new_hist();
        // Each thread walks its own xorshift sequence.
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
        for _ in 0..ops {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if timed {
                let t0 = Instant::now();
                op(x);
                h.saturating_record(t0.elapsed().as_nanos() as u64);
            } else {
                op(x);
            }
        }
        h
    }
    let start = Instant::now();
    let hist = match runner {
        Runner::Local(op) => {
            assert_eq!(threads, 1, "a local runner has one thread");
            run(*op, 1, ops, timed)
        }
        Runner::Shared(op) if threads == 1 => run(*op, 1, ops, timed),
        Runner::Shared(op) => {
            let hists: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| s.spawn(move || run(*op, t as u64 + 1, ops, timed)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("bench thread"))
                    .collect()
            });
            let mut all = new_hist();
            for h in &hists {
                all.add(h).expect("same bounds");
            }
            all
        }
    };
    (start.elapsed(), hist)
}

/// Measures every subject in alternating rounds, so a slow spell of the
/// machine hits them alike; throughput is the median over rounds.
pub(crate) fn compare(
    subjects: &[(&str, Runner<'_>)],
    op: &str,
    n_keys: u64,
    threads: usize,
    args: &CommonArgs,
) -> Vec<Row> {
    compare_with(subjects, op, n_keys, threads, args.ops, args.rounds)
}

/// `compare` with explicit operation and round counts.
pub(crate) fn compare_with(
    subjects: &[(&str, Runner<'_>)],
    op: &str,
    n_keys: u64,
    threads: usize,
    ops: u64,
    rounds: u64,
) -> Vec<Row> {
    let per_round = (ops / rounds).max(1);
    for (_, runner) in subjects {
        pass(runner, threads, per_round / 2, false);
    }
    let mut tputs = vec![Vec::new(); subjects.len()];
    let mut hists: Vec<Histogram<u64>> = subjects.iter().map(|_| new_hist()).collect();
    for round in 0..rounds as usize {
        // Rotate who goes first, so no subject always runs on a cache
        // another one warmed (or cooled).
        for k in 0..subjects.len() {
            let i = (round + k) % subjects.len();
            let runner = &subjects[i].1;
            let (elapsed, _) = pass(runner, threads, per_round, false);
            tputs[i].push((threads as u64 * per_round) as f64 / elapsed.as_secs_f64());
            let (_, h) = pass(runner, threads, per_round / 4, true);
            hists[i].add(&h).expect("same bounds");
        }
    }
    let mut rows: Vec<Row> = subjects
        .iter()
        .zip(tputs.iter_mut().zip(&hists))
        .map(|((name, _), (t, h))| {
            t.sort_by(f64::total_cmp);
            row(name, op, n_keys, threads, t[t.len() / 2], h)
        })
        .collect();
    let base = rows[0].ns_per_op;
    for r in rows.iter_mut().skip(1) {
        r.ratio_to_baseline = Some(r.ns_per_op / base);
    }
    rows
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

pub(crate) fn row(
    subject: &str,
    op: &str,
    n_keys: u64,
    threads: usize,
    tput: f64,
    h: &Histogram<u64>,
) -> Row {
    Row {
        subject: subject.to_string(),
        op: op.to_string(),
        n_keys,
        threads,
        ops_per_sec: tput,
        ns_per_op: 1e9 / tput * threads as f64,
        p50_ns: h.value_at_quantile(0.5),
        p99_ns: h.value_at_quantile(0.99),
        p999_ns: h.value_at_quantile(0.999),
        max_ns: h.max(),
        ratio_to_baseline: None,
        ratio_to_no_ttl: None,
        case: String::new(),
    }
}

/// The cost of the timing itself, so latency rows can be read net of it.
fn timer_overhead() -> f64 {
    let n = 1_000_000;
    let start = Instant::now();
    for _ in 0..n {
        black_box(Instant::now().elapsed());
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn bench_memory(args: &CommonArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let value = [0xABu8; VALUE_LEN];
    for &n in &args.sizes {
        let keys = Keys::new(n);
        status(&format!("memory: loading {n} keys"));
        let config = MemoryConfig::default().with_latency_sampling(args.sample_every);
        let backend = MemoryStateBackend::new(config)?;
        let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for i in 0..n {
            let k = Keys::nth(i);
            backend.put(&k, &value)?;
            map.insert(k.to_vec(), value.to_vec());
        }
        let b = &backend;
        for &threads in &args.threads {
            status(&format!("memory: {n} keys, {threads} thread(s)"));
            let m = &map;
            let base_hit = |x| {
                black_box(m.get(&keys.hit(x)[..]).cloned());
            };
            let mem_hit = |x| {
                black_box(b.get(&keys.hit(x)).expect("get"));
            };
            rows.extend(compare(
                &[
                    ("HashMap", Runner::Shared(&base_hit)),
                    ("memory", Runner::Shared(&mem_hit)),
                ],
                "get_hit",
                n,
                threads,
                args,
            ));
            let base_miss = |x| {
                black_box(m.get(&keys.miss(x)[..]).cloned());
            };
            let mem_miss = |x| {
                black_box(b.get(&keys.miss(x)).expect("get"));
            };
            rows.extend(compare(
                &[
                    ("HashMap", Runner::Shared(&base_miss)),
                    ("memory", Runner::Shared(&mem_miss)),
                ],
                "get_miss",
                n,
                threads,
                args,
            ));
            let mem_put = |x| b.put(&keys.hit(x), &value).expect("put");
            if threads == 1 {
                // A plain map takes no concurrent writers: one thread only.
                let cell = RefCell::new(std::mem::take(&mut map));
                let base_put = |x| {
                    cell.borrow_mut()
                        .insert(keys.hit(x).to_vec(), value.to_vec());
                };
                rows.extend(compare(
                    &[
                        ("HashMap", Runner::Local(&base_put)),
                        ("memory", Runner::Shared(&mem_put)),
                    ],
                    "put",
                    n,
                    threads,
                    args,
                ));
                map = cell.into_inner();
            } else {
                rows.extend(compare(
                    &[("memory", Runner::Shared(&mem_put))],
                    "put",
                    n,
                    threads,
                    args,
                ));
            }
        }
    }
    Ok(rows)
}

fn write_table(out: &mut String, rows: &[Row]) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "{:<14} {:<14} {:<16} {:>9} {:>3} {:>12} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "subject",
        "op",
        "case",
        "keys",
        "thr",
        "ops/s",
        "ns/op",
        "p50",
        "p99",
        "p999",
        "ratio",
        "vs-ttl"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<14} {:<14} {:<16} {:>9} {:>3} {:>12.0} {:>9.1} {:>8} {:>8} {:>8} {:>7} {:>7}",
            r.subject,
            r.op,
            r.case,
            r.n_keys,
            r.threads,
            r.ops_per_sec,
            r.ns_per_op,
            fmt_ns(r.p50_ns),
            fmt_ns(r.p99_ns),
            fmt_ns(r.p999_ns),
            r.ratio_to_baseline
                .map_or(String::new(), |x| format!("{x:.2}x")),
            r.ratio_to_no_ttl
                .map_or(String::new(), |x| format!("{x:.2}x")),
        );
    }
}

fn fmt_ns(ns: u64) -> String {
    let d = Duration::from_nanos(ns);
    if ns < 10_000 {
        format!("{ns}ns")
    } else if ns < 10_000_000 {
        format!("{:.1}us", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    }
}

pub(crate) fn machine() -> Machine {
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os: std::env::consts::OS,
        arch: std::env::consts::ARCH,
    }
}
