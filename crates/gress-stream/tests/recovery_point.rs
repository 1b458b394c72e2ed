//! The job's recovery point is never lost: retention follows the job's
//! commits, a refused restart changes nothing, recovery falls back past
//! damaged bytes (and a rescale after it neither duplicates nor loses
//! output), and an operator can pick an older retained commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gress_checkpoint::storage::fault::{FaultKind, FaultyStorage};
use gress_checkpoint::{LocalStorage, Storage};
use gress_stream::{
    CheckpointStorage, EpochPolicy, Error, FileSink, GeneratorSource, JobConfig, JobReport, Result,
    commits, run,
};

mod common;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

const PARTITIONS: usize = 2;
const PER_PARTITION: u64 = 1_000;
const EPOCH: u64 = 50;

fn config(cp: CheckpointStorage, workers: usize) -> JobConfig {
    JobConfig::new("recovery-point")
        .with_workers(workers)
        .with_checkpoints(cp)
        .with_epochs(EpochPolicy::Records(EPOCH))
        .with_max_epochs_in_flight(1)
}

/// A keyed running count into a `FileSink`; with `stop_after`, every
/// partition fails once it has read that many records (after the first
/// commit), so a run ends part-way like a crash.
fn job(config: JobConfig, out: PathBuf, stop_after: Option<u64>) -> Result<JobReport> {
    run(config, move |job| {
        let source = GeneratorSource::new(PARTITIONS, Some(PER_PARTITION), |p, i| {
            (p as u64 * 7 + i) % 31
        });
        let s = job.source("n", source)?;
        let s = match stop_after {
            Some(n) => {
                let seen = Arc::new(AtomicU64::new(0));
                s.map(move |x| {
                    let read = seen.fetch_add(1, Ordering::Relaxed);
                    assert!(read < n, "stopping the run on purpose");
                    x
                })
            }
            None => s,
        };
        s.key_by(|n| *n)
            .count("count")
            .sink("out", FileSink::new(out.clone()))
    })
}

/// The output of one run without failures.
fn clean_output() -> std::result::Result<BTreeMap<(u64, u64), usize>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    job(
        config(CheckpointStorage::Local(dir.path().join("cp")), 2),
        out.clone(),
        None,
    )?;
    common::committed_records::<(u64, u64)>(&out)
}

/// Story: each worker kept its newest `max_epochs_in_flight + 3`
/// checkpoints whatever the job had committed, so epochs whose commit
/// record could not be written (while every worker's checkpoint of them
/// succeeded) pushed the committed epoch's checkpoints out, and no restart
/// could recover. Now a worker keeps every checkpoint a kept commit record
/// names: after many epochs in a row fail to commit, the job recovers from
/// its last commit and its output is a clean run's.
#[test]
fn failed_commits_never_push_out_the_recovery_point() -> R {
    let dir = tempfile::tempdir()?;
    let (root, out) = (dir.path().join("cp"), dir.path().join("out"));
    // Once three commits are in, every commit record fails to publish.
    let published = Arc::new(AtomicU64::new(0));
    let count = published.clone();
    let root2 = root.clone();
    let storage = CheckpointStorage::Custom(Arc::new(move |sub: &str| {
        let local = LocalStorage::new(root2.join(sub))?;
        if !sub.is_empty() {
            return Ok(Arc::new(local) as Arc<dyn Storage>);
        }
        let faulty = Arc::new(FaultyStorage::new(local));
        let count = count.clone();
        faulty.set_rule(Some(Arc::new(move |op: &str, path: &str| {
            let record = op == "put_new" && path.starts_with("commits/");
            (record && count.fetch_add(1, Ordering::Relaxed) >= 3).then_some(FaultKind::Fail)
        })));
        Ok(faulty as Arc<dyn Storage>)
    }));
    // More epochs fail to commit than the old retention kept (4 here).
    let mut cfg = config(storage, 2);
    cfg.max_failed_epochs = 8;
    match job(cfg, out.clone(), None) {
        Err(Error::Worker(why)) => assert!(why.contains("could not be committed"), "{why}"),
        other => panic!("expected the job to stop on failed commits, got {other:?}"),
    }
    let committed = commits(&LocalStorage::new(&root)?)?;
    let newest = committed.first().ok_or("nothing was committed")?.epoch;
    assert_eq!(committed.len(), 3, "{committed:?}");

    let report = job(config(CheckpointStorage::Local(root), 2), out.clone(), None)?;
    assert_eq!(report.recovered_from, Some(newest));
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?,
        clean_output()?
    );
    Ok(())
}

/// Story: a restart with another number of key groups was refused, but
/// only after each worker's checkpoint manager had opened its location,
/// swept checkpoints beyond a retention computed from the new settings
/// and rewritten the fence and lease files. Now the checks come first and
/// read only: a refused restart leaves every byte of the location as it
/// was, and the job then recovers.
#[test]
fn a_refused_restart_changes_nothing() -> R {
    let dir = tempfile::tempdir()?;
    let (root, out) = (dir.path().join("cp"), dir.path().join("out"));
    let storage = CheckpointStorage::Local(root.clone());
    let stopped = job(
        config(storage.clone(), 2).with_max_epochs_in_flight(8),
        out.clone(),
        Some(700),
    );
    assert!(stopped.is_err(), "the first run was to stop part-way");
    let before = common::tree(&root)?;
    let refused = job(
        config(storage.clone(), 2).with_key_groups(64),
        out.clone(),
        None,
    );
    match refused {
        Err(Error::Recovery { reason, .. }) => assert!(reason.contains("key groups"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let other_job = run(
        JobConfig::new("another-job")
            .with_checkpoints(storage.clone())
            .with_max_epochs_in_flight(1),
        |job| {
            job.source("n", GeneratorSource::new(1, Some(10), |_, i| i))?
                .sink(
                    "out",
                    gress_stream::CollectSink::new(gress_stream::Collected::new()),
                )
        },
    );
    assert!(
        matches!(&other_job, Err(Error::Recovery { reason, .. }) if reason.contains("another-job")),
        "{other_job:?}"
    );
    assert_eq!(
        common::tree(&root)?,
        before,
        "a refused restart changed the location"
    );
    job(config(storage, 2), out.clone(), None)?;
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?,
        clean_output()?
    );
    Ok(())
}

/// Flips one byte in the middle of `path`.
fn damage(path: &Path) -> std::io::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(path, bytes)
}

/// The data files (not manifests) of worker `w`'s checkpoint `id`.
fn data_files(
    root: &Path,
    w: usize,
    id: u64,
) -> std::result::Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let storage = LocalStorage::new(root.join(format!("workers/{w:05}")))?;
    let catalog = gress_checkpoint::Catalog::open(Arc::new(storage))?;
    let manifest = catalog.manifest(id).ok_or("no such checkpoint")?;
    Ok(manifest
        .paths()
        .map(|f| root.join(format!("workers/{w:05}")).join(&f.path))
        .collect())
}

/// Story: the check that picked the epoch to recover from looked at file
/// sizes only, so one flipped byte inside the newest checkpoint stopped
/// every restart ("stored file ... is damaged"). Now every worker verifies
/// what it restores and all fall back together to the newest commit that
/// every one of them restored; and the replay's output replaces the
/// rolled-back epochs' output, even on another number of workers, so the
/// committed output is a clean run's, no record twice.
#[test]
fn damaged_bytes_fall_back_and_a_rescale_after_it_is_exact() -> R {
    let dir = tempfile::tempdir()?;
    let (root, out) = (dir.path().join("cp"), dir.path().join("out"));
    let storage = CheckpointStorage::Local(root.clone());
    let stopped = job(config(storage.clone(), 2), out.clone(), Some(900));
    assert!(stopped.is_err(), "the first run was to stop part-way");
    let records = commits(&LocalStorage::new(&root)?)?;
    let newest = records.first().ok_or("nothing committed")?.clone();
    assert!(records.len() >= 2, "need an older commit to fall back to");
    // One byte of worker 1's newest checkpoint's data.
    let files = data_files(&root, 1, newest.checkpoints[1])?;
    damage(files.first().ok_or("no data file")?)?;

    let report = job(config(storage.clone(), 3), out.clone(), None)?;
    assert!(
        report.recovered_from.is_some_and(|e| e < newest.epoch),
        "recovered from {:?}",
        report.recovered_from
    );
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?,
        clean_output()?
    );
    let after = commits(&LocalStorage::new(&root)?)?;
    assert!(
        after.iter().all(|c| c.epoch != newest.epoch),
        "the damaged commit still counts: {:?}",
        after.iter().map(|c| c.epoch).collect::<Vec<_>>()
    );
    // Running the finished job again changes nothing.
    job(config(storage, 2), out.clone(), None)?;
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?,
        clean_output()?
    );
    Ok(())
}

/// `from_epoch` recovers from an older retained commit; until that run
/// commits, the newer commits still count, after it they are rolled back
/// and their output withdrawn. An epoch that is not retained is refused.
#[test]
fn from_epoch_picks_an_older_retained_commit() -> R {
    let dir = tempfile::tempdir()?;
    let (root, out) = (dir.path().join("cp"), dir.path().join("out"));
    let storage = CheckpointStorage::Local(root.clone());
    let stopped = job(
        config(storage.clone(), 2).with_retained_commits(4),
        out.clone(),
        Some(800),
    );
    assert!(stopped.is_err());
    let records = commits(&LocalStorage::new(&root)?)?;
    assert!(records.len() >= 3, "{records:?}");
    let older = records[2].epoch;

    match job(
        config(storage.clone(), 2).from_epoch(1_000_000),
        out.clone(),
        None,
    ) {
        Err(Error::Recovery { reason, .. }) => assert!(reason.contains("retained"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let report = job(
        config(storage.clone(), 2)
            .from_epoch(older)
            .with_retained_commits(4),
        out.clone(),
        None,
    )?;
    assert_eq!(report.recovered_from, Some(older));
    let now = commits(&LocalStorage::new(&root)?)?;
    assert!(
        now.iter()
            .all(|c| c.epoch <= older || c.epoch > records[0].epoch),
        "rolled-back commits still count: {:?}",
        now.iter().map(|c| c.epoch).collect::<Vec<_>>()
    );
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?,
        clean_output()?
    );
    Ok(())
}

/// Story: to choose the commit to recover from, every worker checked every
/// worker's checkpoint files: workers² storage calls. Each worker now
/// restores, and verifies, only its own part: on four workers, each
/// worker's location is opened once by a restart, not once per worker.
#[test]
fn a_restart_reads_each_workers_location_once() -> R {
    let dir = tempfile::tempdir()?;
    let (root, out) = (dir.path().join("cp"), dir.path().join("out"));
    let opened: Arc<parking_lot::Mutex<BTreeMap<String, usize>>> = Arc::default();
    let count = opened.clone();
    let root2 = root.clone();
    let storage = CheckpointStorage::Custom(Arc::new(move |sub: &str| {
        *count.lock().entry(sub.to_string()).or_default() += 1;
        Ok(Arc::new(LocalStorage::new(root2.join(sub))?) as Arc<dyn Storage>)
    }));
    let stopped = job(config(storage.clone(), 4), out.clone(), Some(400));
    assert!(stopped.is_err(), "the first run was to stop part-way");
    opened.lock().clear();
    job(config(storage, 4), out.clone(), None)?;
    let opened = opened.lock().clone();
    for w in 0..4 {
        assert_eq!(
            opened.get(&format!("workers/{w:05}")).copied(),
            Some(1),
            "{opened:?}"
        );
    }
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?,
        clean_output()?
    );
    Ok(())
}
