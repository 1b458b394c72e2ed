//! Exactly-once: a job's committed output and state after crashes and
//! restarts equal those of a run without failures.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gress_stream::{
    CollectSink, EpochPolicy, FileSink, GeneratorSource, JobConfig, latest_commit, run,
};
use parking_lot::Mutex;

type R = Result<(), Box<dyn std::error::Error>>;

const KEYS: u64 = 50;

/// Record `i` of partition `p`: a key.
fn event(p: usize, i: u64) -> u64 {
    (p as u64 * 7919 + i * 104_729) % KEYS
}

/// The running counts a correct run emits, as a multiset.
fn expected(partitions: usize, per_partition: u64) -> BTreeMap<(u64, u64), usize> {
    let mut counts = BTreeMap::new();
    let mut seen: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    // Each key's records arrive in an order that depends on partitions,
    // but the multiset of (key, running count) does not.
    for p in 0..partitions {
        for i in 0..per_partition {
            let k = event(p, i);
            let c = counts.entry(k).or_insert(0u64);
            *c += 1;
            *seen.entry((k, *c)).or_default() += 1;
        }
    }
    seen
}

fn multiset(records: &[(u64, u64)]) -> BTreeMap<(u64, u64), usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(*r).or_default() += 1;
    }
    m
}

/// A keyed count with checkpoints every epoch, on 1 and 2 workers,
/// commits exactly the running counts of a sequential reference.
#[test]
fn a_checkpointed_keyed_count_matches_the_reference() -> R {
    for workers in [1, 2] {
        let dir = tempfile::tempdir()?;
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let config = JobConfig::new("count")
            .with_workers(workers)
            .with_checkpoint_dir(dir.path())
            .with_epochs(EpochPolicy::Records(100));
        let report = run(config, move |job| {
            job.source("events", GeneratorSource::new(3, Some(1000), event))?
                .key_by(|k| *k)
                .count("count")
                .sink("out", CollectSink::new(sink.clone()))
        })?;
        assert_eq!(
            multiset(&out.lock()),
            expected(3, 1000),
            "{workers} workers"
        );
        assert!(report.last_committed.is_some());
        let storage = gress_checkpoint::LocalStorage::new(dir.path())?;
        let commit = latest_commit(&storage)?.ok_or("no commit record")?;
        assert_eq!(commit.workers, workers);
        assert_eq!(Some(commit.epoch), report.last_committed);
    }
    Ok(())
}

const ROLE: &str = "GRESS_STREAM_CHILD";
const DIR: &str = "GRESS_STREAM_DIR";
const PARTITIONS: usize = 4;
const PER_PARTITION: u64 = 300_000;

fn child_job(dir: &Path, workers: usize) -> gress_stream::Result<gress_stream::JobReport> {
    let out = dir.join("out");
    let config = JobConfig::new("killed")
        .with_workers(workers)
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_epochs(EpochPolicy::Records(5_000));
    run(config, move |job| {
        // Slowed down, so that kills land at every stage of a long run.
        let mut n = 0u64;
        job.source(
            "events",
            GeneratorSource::new(PARTITIONS, Some(PER_PARTITION), event),
        )?
        .inspect(move |_| {
            n += 1;
            if n.is_multiple_of(400) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .key_by(|k| *k)
        .count("count")
        .sink("out", FileSink::new(out.clone()))
    })
}

/// Not a test: the job `killed_at_random_moments` runs in a child process.
#[test]
#[ignore = "run by killed_at_random_moments as a child process"]
fn child() -> R {
    let (Ok(workers), Some(dir)) = (std::env::var(ROLE), std::env::var_os(DIR)) else {
        return Ok(());
    };
    println!("child started");
    let report = child_job(Path::new(&dir), workers.parse()?)?;
    println!("child done {:?}", report.last_committed);
    Ok(())
}

fn committed_output(dir: &Path) -> Result<Vec<(u64, u64)>, Box<dyn std::error::Error>> {
    Ok(FileSink::read_committed(&dir.join("out"))?)
}

/// A job process killed with SIGKILL at random moments, 20 times, and
/// restarted each time, ends with committed output equal to an
/// uninterrupted run's: nothing lost, nothing twice.
#[test]
fn killed_at_random_moments() -> R {
    for workers in [1, 2] {
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe()?;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ workers as u64;
        let mut kills = 0;
        let mut finished = false;
        while !finished {
            let mut child = Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ROLE, workers.to_string())
                .env(DIR, dir.path())
                .stdout(Stdio::piped())
                .spawn()?;
            let out = child.stdout.take().ok_or("no stdout")?;
            let mut lines = BufReader::new(out).lines();
            let started = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("child started")));
            assert!(started.is_some(), "the child never started");
            if kills < 20 {
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
            finished = true;
        }
        let got = committed_output(dir.path())?;
        assert_eq!(
            multiset(&got),
            expected(PARTITIONS, PER_PARTITION),
            "{workers} workers, {kills} kills"
        );
        println!(
            "{workers} workers: {kills} kills, {} committed records",
            got.len()
        );
    }
    Ok(())
}
