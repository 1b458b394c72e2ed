//! Exactly-once on RocksDB state: a gress-stream job whose workers keep
//! their state in RocksDB databases that outlive the process, as on a real
//! machine, is killed with SIGKILL again and again and still commits
//! exactly the output and final counts of an uninterrupted run.
//!
//! The job runs in a child process: this test binary again, running the
//! ignored test `child` with its settings in the environment.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::Checkpointable;
use gress_stream::{BackendFactory, EpochPolicy, FileSink, GeneratorSource, JobConfig, run};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const KEYS: u64 = 50;
const PARTITIONS: usize = 4;
const PER_PARTITION: u64 = 300_000;
const KILLS: usize = 20;
const WORKERS: &str = "GRESS_STREAM_WORKERS";
const DIR: &str = "GRESS_STREAM_DIR";

/// Record `i` of partition `p`: a key.
fn event(p: usize, i: u64) -> u64 {
    (p as u64 * 7919 + i * 104_729) % KEYS
}

/// Each key's total over the whole stream.
fn totals() -> BTreeMap<u64, u64> {
    let mut totals = BTreeMap::new();
    for p in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            *totals.entry(event(p, i)).or_default() += 1;
        }
    }
    totals
}

/// Each worker's RocksDB database, under `dir/state/`.
fn rocksdb(dir: &Path) -> BackendFactory {
    let dir = dir.join("state");
    BackendFactory::new(move |worker| {
        let mut config = RocksDbConfig::new(dir.join(format!("worker-{worker}")));
        config.write_buffer_size = 4 << 20;
        config.block_cache_size = 8 << 20;
        Ok(Arc::new(RocksDbStateBackend::open(config)?) as Arc<dyn Checkpointable>)
    })
}

fn child_job(dir: &Path, workers: usize) -> gress_stream::Result<gress_stream::JobReport> {
    let out = dir.join("out");
    let config = JobConfig::new("killed")
        .with_workers(workers)
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_epochs(EpochPolicy::Records(5_000))
        .with_backend(rocksdb(dir));
    run(config, move |job| {
        // Slowed down to at least 12 s of running time on any machine, more
        // than the kill delays add up to, so that every kill lands before
        // the end and at a different stage of the run.
        let every = 100 / workers as u64;
        let mut n = 0u64;
        job.source(
            "events",
            GeneratorSource::new(PARTITIONS, Some(PER_PARTITION), event),
        )?
        .inspect(move |_| {
            n += 1;
            if n.is_multiple_of(every) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .key_by(|k| *k)
        .count("count")
        .sink("out", FileSink::new(out.clone()))
    })
}

/// Not a test: the job of the kill tests, in a child process.
#[test]
#[ignore = "run by the kill tests as a child process"]
fn child() -> R {
    let (Ok(workers), Some(dir)) = (std::env::var(WORKERS), std::env::var_os(DIR)) else {
        return Ok(());
    };
    println!("child started");
    let report = child_job(Path::new(&dir), workers.parse()?)?;
    println!("child done {:?}", report.last_committed);
    Ok(())
}

fn committed_output(dir: &Path) -> R<Vec<(u64, u64)>> {
    Ok(FileSink::read_committed(&dir.join("out"))?)
}

/// Runs the job in a child process on `workers` workers, kills it with
/// SIGKILL `KILLS` times at random moments, restarts it each time, and
/// checks the committed output once it has finished.
fn killed_at_random_moments(workers: usize) -> R {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ workers as u64;
    let started = Instant::now();
    let mut kills = 0;
    loop {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKERS, workers.to_string())
            .env(DIR, dir.path())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(out).lines();
        let started = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("child started")));
        assert!(started.is_some(), "the child never started");
        if kills < KILLS {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(20 + seed % 400));
            if child.try_wait()?.is_none() {
                child.kill()?;
                child.wait()?;
                kills += 1;
                continue;
            }
        }
        let status = child.wait()?;
        assert!(status.success(), "the child failed: {status}");
        break;
    }

    // Nothing lost, nothing twice: each key's running counts 1..=total.
    let got = committed_output(dir.path())?;
    let mut counts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (key, count) in &got {
        counts.entry(*key).or_default().push(*count);
    }
    let totals = totals();
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        totals.keys().collect::<Vec<_>>()
    );
    for (key, mut seen) in counts {
        seen.sort_unstable();
        let total = totals[&key];
        assert!(
            seen.iter().copied().eq(1..=total),
            "key {key}: {} running counts up to {:?}, expected 1..={total} once each ({workers} workers, {kills} kills)",
            seen.len(),
            seen.last()
        );
    }
    // The final state: the last count of every key is its total.
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (key, count) in &got {
        last.insert(*key, *count);
    }
    assert_eq!(
        last, totals,
        "the last committed count of each key ({workers} workers)"
    );
    assert_eq!(
        kills, KILLS,
        "the job finished before it was killed {KILLS} times"
    );
    println!(
        "{workers} workers: {kills} kills, {} committed records, {:.1?}",
        got.len(),
        started.elapsed()
    );
    Ok(())
}

/// 20 SIGKILLs of a one-worker job on RocksDB state leave committed output
/// and final counts equal to an uninterrupted run's.
#[test]
fn killed_at_random_moments_on_one_worker() -> R {
    killed_at_random_moments(1)
}

/// 20 SIGKILLs of a two-worker job on RocksDB state leave committed output
/// and final counts equal to an uninterrupted run's.
#[test]
fn killed_at_random_moments_on_two_workers() -> R {
    killed_at_random_moments(2)
}
