//! What fault runs found: a job whose checkpoints another run takes over
//! stops at once, two instances started together never hang, what killed
//! processes leave is swept, a full disk is named as such, and a process
//! that cannot reach its peers gives up.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use gress_checkpoint::storage::fault::{FaultKind, FaultyStorage};
use gress_checkpoint::{CheckpointConfig, CheckpointManager, LocalStorage, Retention, Storage};
use gress_stream::{
    CheckpointStorage, EpochPolicy, Error, FileSink, GeneratorSource, JobConfig, JobReport, Result,
    latest_commit, run,
};

mod common;
use common::bounded;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

fn count_job(config: JobConfig, out: PathBuf, per_partition: Option<u64>) -> Result<JobReport> {
    run(config, move |job| {
        job.source(
            "n",
            GeneratorSource::new(2, per_partition, |p, i| (p as u64 * 3 + i) % 17),
        )?
        .key_by(|n| *n)
        .count("count")
        .sink("out", FileSink::new(out.clone()))
    })
}

/// Story: when another run took over a job's checkpoint location, the
/// running one's next cut failed with `Fenced`, but the failure was queued
/// without waking the operator that collects acknowledgements: the job
/// parked forever at 0% CPU. Now a fenced checkpoint stops the job with an
/// error saying so.
#[test]
fn a_job_whose_location_is_taken_over_stops() -> R {
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("cp");
    let (tx, rx) = mpsc::channel();
    let job_cp = cp.clone();
    let out = dir.path().join("out");
    std::thread::spawn(move || {
        let result = count_job(
            JobConfig::new("taken-over")
                .with_checkpoint_dir(job_cp)
                .with_epochs(EpochPolicy::Interval(Duration::from_millis(20))),
            out,
            None,
        );
        let _ = tx.send(result);
    });
    let storage = LocalStorage::new(&cp)?;
    while latest_commit(&storage)?.is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let taker = CheckpointManager::open(
        Arc::new(LocalStorage::new(cp.join("workers/00000"))?),
        CheckpointConfig::default()
            .with_take_over(true)
            .with_retention(Retention::Required),
    )?;
    let result = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "the job kept running (or hung) after being taken over")?;
    match result {
        Err(Error::Worker(why)) => assert!(why.contains("took over"), "{why}"),
        other => panic!("expected the job to stop, got {other:?}"),
    }
    drop(taker);
    Ok(())
}

/// Story: of two instances started at the same instant, the second could
/// take over within a millisecond because the first had not yet written
/// its lease, and the first then hung. Now a holder counts as alive from
/// the moment it takes the location: one instance runs (or both are
/// refused), none hangs, and the output is a clean run's.
#[test]
fn two_instances_started_together_never_hang() -> R {
    let dir = tempfile::tempdir()?;
    let clean = dir.path().join("clean");
    count_job(
        JobConfig::new("twins").with_checkpoint_dir(dir.path().join("clean-cp")),
        clean.clone(),
        Some(3_000),
    )?;
    let expected = common::committed_records::<(u64, u64)>(&clean)?;
    for trial in 0..6 {
        let cp = dir.path().join(format!("cp{trial}"));
        let out = dir.path().join(format!("out{trial}"));
        let barrier = Arc::new(Barrier::new(2));
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let (cp, out, barrier) = (cp.clone(), out.clone(), barrier.clone());
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    barrier.wait();
                    let _ = tx.send(count_job(
                        JobConfig::new("twins").with_checkpoint_dir(cp),
                        out,
                        Some(3_000),
                    ));
                });
                rx
            })
            .collect();
        let mut ok = 0;
        for rx in runs {
            match rx.recv_timeout(Duration::from_secs(90)) {
                Err(_) => panic!("trial {trial}: an instance hung"),
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("held by another manager")
                            || text.contains("at the same time")
                            || text.contains("stopped because another worker failed"),
                        "trial {trial}: {text}"
                    );
                }
            }
        }
        assert!(ok <= 1, "trial {trial}: both instances ran");
        // Whatever happened, a later run completes the job exactly.
        bounded({
            let (cp, out) = (cp.clone(), out.clone());
            move || {
                count_job(
                    JobConfig::new("twins").with_checkpoint_dir(cp),
                    out,
                    Some(3_000),
                )
            }
        })?;
        assert_eq!(
            common::committed_records::<(u64, u64)>(&out)?,
            expected,
            "trial {trial}"
        );
    }
    Ok(())
}

/// Story: a process killed while writing a commit record or a fencing
/// record left its temporary file there for good. Temporary files of
/// writers that no longer run are swept when the job starts.
#[test]
fn temporary_files_of_killed_writers_are_swept() -> R {
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("cp");
    let out = dir.path().join("out");
    count_job(
        JobConfig::new("sweep").with_checkpoint_dir(&cp),
        out.clone(),
        Some(100),
    )?;
    // A pid that cannot be running.
    let dead = u32::MAX - 7;
    let stale = [
        cp.join(format!("commits/00000000000000000099.commit.tmp-{dead}-0")),
        cp.join(format!(
            "workers/00000/fence/00000000000000000099.tmp-{dead}-1"
        )),
    ];
    for f in &stale {
        std::fs::write(f, b"half")?;
    }
    count_job(
        JobConfig::new("sweep").with_checkpoint_dir(&cp),
        out,
        Some(100),
    )?;
    for f in &stale {
        assert!(!f.exists(), "{} was left", f.display());
    }
    Ok(())
}

/// Story: a full checkpoint disk stopped the job with "is the checkpoint
/// storage reachable?", which sent operators the wrong way. The error now
/// carries the last failure, here the full disk.
#[test]
fn a_full_checkpoint_disk_is_named() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("cp");
    let storage = CheckpointStorage::Custom(Arc::new(move |sub: &str| {
        let faulty = Arc::new(FaultyStorage::new(LocalStorage::new(root.join(sub))?));
        if sub.starts_with("workers/") {
            faulty.set_rule(Some(Arc::new(|op: &str, path: &str| {
                (op == "put" && !path.starts_with("fence/")).then_some(FaultKind::NoSpace)
            })));
        }
        Ok(faulty as Arc<dyn Storage>)
    }));
    let mut config = JobConfig::new("full-disk")
        .with_checkpoints(storage)
        .with_epochs(EpochPolicy::Records(20));
    config.max_failed_epochs = 3;
    let out = dir.path().join("out");
    match bounded(move || count_job(config, out, None)) {
        Err(Error::Worker(why)) => {
            assert!(why.contains("no space left"), "{why}");
            assert!(!why.contains("reachable"), "{why}");
        }
        other => panic!("expected the job to stop, got {other:?}"),
    }
    Ok(())
}

/// Story: a process whose hostfile named an address nothing listened at
/// retried connecting forever. It now gives up after the connect timeout
/// with an error naming the process it could not reach.
#[test]
fn an_unreachable_peer_is_an_error_not_a_hang() -> R {
    let free = |_| -> std::io::Result<String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok(l.local_addr()?.to_string())
    };
    // Process 0's address has no listener: this run is process 1.
    let hosts = vec![free(0)?, free(1)?];
    let config = JobConfig::new("lonely")
        .with_cluster(1, hosts.clone())
        .with_connect_timeout(Duration::from_millis(500));
    match bounded(move || count_job(config, PathBuf::from("/nonexistent"), Some(10))) {
        Err(Error::Worker(why)) => {
            assert!(why.contains("process 0"), "{why}");
            assert!(why.contains(&hosts[0]), "{why}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    Ok(())
}

/// Story: `--fresh` of the example deleted the checkpoints of a job that
/// was running. `CheckpointStorage::held_by` tells, reading only, that a
/// run holds the job, and the example refuses then.
#[test]
fn a_running_job_is_seen_holding_its_checkpoints() -> R {
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("cp");
    let storage = CheckpointStorage::Local(cp.clone());
    assert_eq!(storage.held_by()?, None);
    let (tx, rx) = mpsc::channel();
    let (job_cp, out) = (cp.clone(), dir.path().join("out"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_job = stop.clone();
    std::thread::spawn(move || {
        let result = run(
            JobConfig::new("held").with_checkpoint_dir(job_cp),
            move |job| {
                let stop = stop_job.clone();
                job.source("n", GeneratorSource::new(1, None, |_, i| i))?
                    .map(move |i| {
                        assert!(!stop.load(std::sync::atomic::Ordering::Relaxed), "stopping");
                        i
                    })
                    .sink("out", FileSink::new(out.clone()))
            },
        );
        let _ = tx.send(result);
    });
    while latest_commit(&LocalStorage::new(&cp)?)?.is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let holder = storage.held_by()?;
    assert!(
        holder
            .as_deref()
            .is_some_and(|h| h.contains(&std::process::id().to_string())),
        "{holder:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stopped = rx.recv_timeout(Duration::from_secs(60))?;
    assert!(stopped.is_err());
    assert_eq!(
        storage.held_by()?,
        None,
        "a stopped job still holds its checkpoints"
    );
    Ok(())
}
