//! The demo's second part: a keyed stream job with event-time windows on
//! RocksDB that crashes once, recovers from its newest committed epoch,
//! and ends with the committed output of a run that never crashed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_stream::{
    AggregateFunction, BackendFactory, EpochPolicy, Error, FileSink, GeneratorSource, JobConfig,
    JobReport, KeyedProcessFunction, ProcessingContext, WindowAssigner, run,
};

/// Partitions of the click stream.
const PARTITIONS: usize = 4;
const USERS: u64 = 1_000;
/// Event time of the first click, ms.
const START_MS: u64 = 1_767_225_600_000;
/// Event time between two clicks of a partition, ms.
const STEP_MS: u64 = 2;
/// Each window's length.
const WINDOW: Duration = Duration::from_secs(1);
const WORKERS: usize = 2;
/// Records of each partition in one epoch (each epoch is a checkpoint).
const EPOCH_RECORDS: u64 = 2_500;

/// Click `i` of partition `p`: (user, event time in ms, cents spent).
fn click(p: usize, i: u64) -> (u64, u64, u64) {
    let n = i * PARTITIONS as u64 + p as u64;
    let user = n.wrapping_mul(2_654_435_761) % USERS;
    // Up to 20 ms out of order.
    let time = START_MS + i * STEP_MS + (n * 7) % 20;
    (user, time, 1 + n % 97)
}

/// Passes clicks on, and fails the job once `fail_at` clicks have passed.
struct CrashOnce {
    seen: Arc<AtomicU64>,
    fail_at: Option<u64>,
}

impl KeyedProcessFunction<u64, (u64, u64, u64)> for CrashOnce {
    type Out = (u64, u64, u64);
    type Side = ();
    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, Self::Out, ()>,
        click: (u64, u64, u64),
    ) -> gress_stream::Result<()> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if self.fail_at == Some(n) {
            return Err(Error::Operator {
                operator: "crash-once".into(),
                reason: format!("the demo's crash after {n} clicks"),
            });
        }
        ctx.output(click);
        Ok(())
    }
}

/// Cents spent in a window.
struct Spend;

impl AggregateFunction for Spend {
    type In = (u64, u64, u64);
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), click: (u64, u64, u64)) {
        acc.0 += 1;
        acc.1 += click.2;
    }
    fn result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

/// One run of the job in `dir` (checkpoints, RocksDB state, output).
fn job(dir: &Path, per_partition: u64, fail_at: Option<u64>) -> gress_stream::Result<JobReport> {
    let state = dir.join("state");
    let config = JobConfig::new("demo-spend")
        .with_workers(WORKERS)
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_epochs(EpochPolicy::Records(EPOCH_RECORDS))
        .with_backend(BackendFactory::new(move |worker| {
            let db = RocksDbConfig::new(state.join(format!("worker-{worker}")));
            Ok(Arc::new(RocksDbStateBackend::open(db)?))
        }));
    let out = dir.join("output");
    let seen = Arc::new(AtomicU64::new(0));
    run(config, move |job| {
        job.source_with_event_time(
            "clicks",
            GeneratorSource::new(PARTITIONS, Some(per_partition), click),
            |c: &(u64, u64, u64)| c.1,
            Duration::from_millis(20),
        )?
        .key_by(|c| c.0)
        .process(
            "crash-once",
            CrashOnce {
                seen: Arc::clone(&seen),
                fail_at,
            },
        )
        .key_by(|c| c.0)
        .window(WindowAssigner::tumbling(WINDOW))
        .aggregate("spend", Spend)
        .map(|w| (w.key, w.start, w.end, w.result.0, w.result.1))
        .sink("spend", FileSink::new(out.clone()))
    })
}

type Row = (u64, u64, u64, u64, u64);

fn committed(dir: &Path) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = FileSink::read_committed(&dir.join("output"))?;
    rows.sort_unstable();
    Ok(rows)
}

/// Runs the job twice in `root`: once clean, once with a crash and a
/// recovery, and checks that both committed the same windows.
/// The job's metrics go to the process's recorder, and its status to the
/// same endpoint: `urls` (metrics, status) serve them when the demo serves
/// its metrics.
pub(crate) fn run_demo(root: &Path, clicks: u64, urls: Option<&(String, String)>) -> Result<()> {
    let per_partition = clicks.div_ceil(PARTITIONS as u64).max(1);
    let total = per_partition * PARTITIONS as u64;
    println!(
        "\nstream job: {total} clicks of {USERS} users in {PARTITIONS} partitions, spend per user \
         in 1 s event-time windows, {WORKERS} workers on RocksDB, a checkpoint every epoch"
    );
    let clean: PathBuf = root.join("clean");
    let t = Instant::now();
    let report = job(&clean, per_partition, None)?;
    let expected = committed(&clean)?;
    println!(
        "  clean run: {} windows committed over {} epochs in {:.1?}",
        expected.len(),
        report.last_committed.map_or(0, |e| e + 1),
        t.elapsed()
    );

    let crashing = root.join("crash");
    let crash_at = total * 3 / 5;
    match job(&crashing, per_partition, Some(crash_at)) {
        Err(e) => {
            let last = gress_stream::latest_commit(&gress_checkpoint_storage(&crashing)?)?;
            println!(
                "  second run: crashed after {crash_at} clicks ({e}); epoch {} was committed",
                last.map_or("none".to_string(), |c| c.epoch.to_string())
            );
        }
        Ok(_) => bail!("the second run did not crash"),
    }
    let t = Instant::now();
    let report = job(&crashing, per_partition, None)?;
    let recovered = report
        .recovered_from
        .context("the second run did not recover")?;
    let got = committed(&crashing)?;
    println!(
        "  recovered from epoch {recovered}: restored RocksDB state, replayed the source from \
         its offsets, finished in {:.1?}",
        t.elapsed()
    );
    if got != expected {
        bail!(
            "the committed output after the crash ({} windows) differs from the clean run's ({})",
            got.len(),
            expected.len()
        );
    }
    println!(
        "  committed output after the crash equals the clean run's: {} windows, {} clicks, {} cents",
        got.len(),
        got.iter().map(|r| r.3).sum::<u64>(),
        got.iter().map(|r| r.4).sum::<u64>()
    );
    println!(
        "  look at it: gress checkpoint list {}",
        crashing.join("checkpoints").display()
    );
    if let Some((metrics, status)) = urls {
        println!("  the job's metrics (gress_stream_*): {metrics}");
        println!("  its status (JSON; or `gress job status {status}`): {status}");
    }
    Ok(())
}

fn gress_checkpoint_storage(dir: &Path) -> Result<gress_checkpoint::LocalStorage> {
    Ok(gress_checkpoint::LocalStorage::new(
        dir.join("checkpoints"),
    )?)
}
