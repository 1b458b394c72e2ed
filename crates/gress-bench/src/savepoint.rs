//! The savepoint benchmark: a stream job whose keyed state holds `keys`
//! values of `value_bytes` bytes is stopped with a savepoint on one backend
//! and number of workers, and a job on another backend and number of
//! workers starts from it. Measured: the time from the stop request to the
//! written savepoint (the last epoch's commit, the cache written back, every
//! worker's snapshot), its size, and the time from the new job's start to
//! its first committed epoch (reading and restoring every worker's key
//! groups, then one epoch).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gress_rocksdb::RocksDbStateBackend;
use gress_state::checkpoint::Checkpointable;
use gress_state::{MemoryConfig, MemoryStateBackend};
use gress_stream::{
    BackendFactory, CollectSink, Collected, EpochPolicy, GeneratorSource, JobConfig, JobHandle,
    KeyedProcessFunction, ProcessingContext, ValueStateDescriptor, start,
};
use serde::Serialize;

use crate::stream::Backend;

#[derive(clap::Args, Debug, Clone)]
pub struct SavepointArgs {
    /// Keys in the job's state.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000_000u64])]
    keys: Vec<u64>,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Workers of the job that writes the savepoint.
    #[arg(long, default_value_t = 2)]
    from: usize,
    /// Workers of the job that starts from it.
    #[arg(long, default_value_t = 3)]
    to: usize,
    /// Backend moves to measure, `from:to` (memory or rocksdb).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["memory:rocksdb".to_string(), "rocksdb:memory".to_string()])]
    moves: Vec<String>,
    /// Where the state, checkpoints and savepoints go (a temporary
    /// directory inside).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct SavepointRow {
    keys: u64,
    value_bytes: usize,
    from_backend: Backend,
    from_workers: usize,
    to_backend: Backend,
    to_workers: usize,
    /// Files of the savepoint, bytes.
    savepoint_bytes: u64,
    /// From the stop request to the written savepoint.
    stop_and_savepoint_s: f64,
    /// From the new job's start to its first committed epoch.
    start_to_first_commit_s: f64,
}

fn parse_backend(text: &str) -> Result<Backend> {
    match text {
        "memory" => Ok(Backend::Memory),
        "rocksdb" => Ok(Backend::Rocksdb),
        other => bail!("`{other}`: a backend is memory or rocksdb"),
    }
}

fn name(b: Backend) -> &'static str {
    match b {
        Backend::Memory => "memory",
        Backend::Rocksdb => "rocksdb",
    }
}

/// Sets each key's value; outputs nothing.
struct Put {
    value: ValueStateDescriptor<Vec<u8>>,
    bytes: usize,
}

impl KeyedProcessFunction<u64, u64> for Put {
    type Out = ();
    type Side = ();
    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, ()>,
        i: u64,
    ) -> gress_stream::Result<()> {
        let mut v = vec![0x5a; self.bytes];
        v[..8.min(self.bytes)].copy_from_slice(&i.to_le_bytes()[..8.min(self.bytes)]);
        ctx.value(&self.value)?.set(v)?;
        Ok(())
    }
}

const PARTITIONS: usize = 4;

fn job(
    root: &Path,
    id: &str,
    backend: Backend,
    workers: usize,
    keys: u64,
    value_bytes: usize,
) -> Result<(
    JobConfig,
    impl Fn(&mut gress_stream::JobBuilder<'_>) -> gress_stream::Result<()> + Send + Sync + 'static,
)> {
    let state = root.join(format!("{id}-state"));
    let factory = BackendFactory::new(move |w| {
        let backend: Arc<dyn Checkpointable> = match backend {
            Backend::Memory => Arc::new(MemoryStateBackend::new(MemoryConfig::default())?),
            Backend::Rocksdb => Arc::new(RocksDbStateBackend::open(
                crate::stream::rocksdb_config(state.join(format!("worker-{w}"))),
            )?),
        };
        Ok(backend)
    });
    let config = JobConfig::new(id)
        .with_workers(workers)
        .with_backend(factory)
        .with_checkpoint_dir(root.join(format!("{id}-checkpoints")))
        .with_epochs(EpochPolicy::Records(50_000))
        .with_metrics_interval(Duration::from_millis(10));
    let build = move |job: &mut gress_stream::JobBuilder<'_>| {
        job.source(
            "keys",
            GeneratorSource::new(PARTITIONS, None, move |p, i| {
                (i * PARTITIONS as u64 + p as u64) % keys
            }),
        )?
        .key_by(|k: &u64| *k)
        .process(
            "put",
            Put {
                value: ValueStateDescriptor::new("value"),
                bytes: value_bytes,
            },
        )
        .sink("none", CollectSink::new(Collected::<()>::new()))
    };
    Ok((config, build))
}

/// Waits until the job has read `records` records and committed an epoch
/// after that.
fn wait_for(handle: &JobHandle, records: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut read_at = None;
    loop {
        let status = handle.status();
        let read: u64 = status.worker_status.iter().map(|w| w.records_read).sum();
        if read_at.is_none() && read >= records {
            read_at = status.committed_epoch.map(|e| e + 1).or(Some(0));
        }
        if let (Some(at), Some(c)) = (read_at, status.committed_epoch)
            && c >= at
        {
            return Ok(());
        }
        if handle.is_finished() || Instant::now() > deadline {
            bail!("the job did not get to {records} records: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            n += if p.is_dir() {
                dir_bytes(&p)
            } else {
                std::fs::metadata(&p).map_or(0, |m| m.len())
            };
        }
    }
    n
}

fn bench_one(
    args: &SavepointArgs,
    keys: u64,
    (from, to): (Backend, Backend),
    root: &Path,
) -> Result<SavepointRow> {
    crate::status(&format!(
        "savepoint {keys} keys: {} x{} -> {} x{}: loading",
        name(from),
        args.from,
        name(to),
        args.to
    ));
    let (config, build) = job(root, "before", from, args.from, keys, args.value_bytes)?;
    let mut before = start(config, build)?;
    // Every key written (the generator goes round them in order).
    wait_for(&before, keys)?;
    crate::status("stopping with a savepoint");
    let savepoint = root.join("savepoint");
    let asked = Instant::now();
    let report = before.stop_with_savepoint(savepoint.clone())?;
    let stop_and_savepoint = asked.elapsed();
    report
        .savepoint
        .context("the stopped job wrote no savepoint")?;
    let savepoint_bytes = dir_bytes(&savepoint);

    crate::status("starting from it");
    let (config, build) = job(root, "after", to, args.to, keys, args.value_bytes)?;
    let started = Instant::now();
    let after = start(config.from_savepoint(savepoint), build)?;
    let deadline = started + Duration::from_secs(3600);
    while after.status().committed_epoch.is_none() {
        if after.is_finished() || Instant::now() > deadline {
            bail!(
                "the job from the savepoint never committed: {:?}",
                after.status()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let first_commit = started.elapsed();
    let report = after.stop()?;
    if report.from_savepoint.is_none() {
        bail!("the second job did not start from the savepoint");
    }
    Ok(SavepointRow {
        keys,
        value_bytes: args.value_bytes,
        from_backend: from,
        from_workers: args.from,
        to_backend: to,
        to_workers: args.to,
        savepoint_bytes,
        stop_and_savepoint_s: stop_and_savepoint.as_secs_f64(),
        start_to_first_commit_s: first_commit.as_secs_f64(),
    })
}

pub(crate) fn run(args: &SavepointArgs) -> Result<crate::Outcome> {
    use std::fmt::Write;
    if args.from == 0 || args.to == 0 {
        bail!("--from and --to must be at least 1");
    }
    let moves = args
        .moves
        .iter()
        .map(|m| {
            let (a, b) = m
                .split_once(':')
                .with_context(|| format!("`{m}`: a move is from:to, e.g. memory:rocksdb"))?;
            Ok((parse_backend(a)?, parse_backend(b)?))
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut rows = Vec::new();
    for &keys in &args.keys {
        if keys == 0 {
            bail!("--keys must be at least 1");
        }
        for &m in &moves {
            let tmp = tempfile::tempdir_in(&args.dir)?;
            rows.push(bench_one(args, keys, m, tmp.path())?);
        }
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "savepoint of a keyed job, {} B values: stop with a savepoint, then a job from it",
        args.value_bytes
    );
    let _ = writeln!(
        table,
        "{:>12} {:>12} {:>12} {:>14} {:>18} {:>16}",
        "keys", "from", "to", "savepoint MiB", "stop+savepoint s", "to 1st commit s"
    );
    for r in &rows {
        let _ = writeln!(
            table,
            "{:>12} {:>12} {:>12} {:>14.1} {:>18.2} {:>16.2}",
            r.keys,
            format!("{} x{}", name(r.from_backend), r.from_workers),
            format!("{} x{}", name(r.to_backend), r.to_workers),
            r.savepoint_bytes as f64 / f64::from(1u32 << 20),
            r.stop_and_savepoint_s,
            r.start_to_first_commit_s
        );
    }
    let plot = rows
        .iter()
        .flat_map(|r| {
            let label = format!(
                "{} keys {} x{} -> {} x{}",
                r.keys,
                name(r.from_backend),
                r.from_workers,
                name(r.to_backend),
                r.to_workers
            );
            [
                ("stop and savepoint", r.stop_and_savepoint_s),
                ("start to first commit", r.start_to_first_commit_s),
            ]
            .map(|(what, s)| crate::PlotRow {
                label: format!("{label} {what}"),
                throughput: r.savepoint_bytes as f64 / s.max(1e-9),
                latency_ns: vec![("time", s * 1e9)],
            })
        })
        .collect();
    Ok(crate::Outcome {
        table,
        json: serde_json::to_value(&rows)?,
        plot,
        throughput_unit: "bytes",
    })
}
