//! FileSink: no file for an epoch without output, compaction of epochs
//! that can no longer be rolled back, and commits that count once their
//! record is durable whatever the cleanup after it does.

use std::collections::BTreeMap;

use std::sync::Arc;

use gress_checkpoint::storage::fault::{FaultKind, FaultyStorage};
use gress_checkpoint::{LocalStorage, Storage};
use gress_stream::{
    CheckpointStorage, EpochPolicy, FileSink, GeneratorSource, JobConfig, JobReport, Result,
    commits, run,
};

mod common;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

fn count_job(
    config: JobConfig,
    sink: impl Fn() -> FileSink + Send + Sync + 'static,
    keys: u64,
) -> Result<JobReport> {
    run(config, move |job| {
        job.source(
            "n",
            GeneratorSource::new(2, Some(500), move |p, i| (p as u64 + i) % keys),
        )?
        .key_by(|n| *n)
        .count("count")
        .filter(move |(_, n)| keys > 1 || n % 100 == 0)
        .sink("out", sink())
    })
}

/// Story: every epoch wrote a file per worker and sink, empty or not, with
/// two fsyncs each. An epoch without output on a worker now writes
/// nothing: with output only every 100th record, most epochs leave no
/// file.
#[test]
fn epochs_without_output_write_no_file() -> R {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    count_job(
        JobConfig::new("sparse")
            .with_workers(2)
            .with_checkpoint_dir(dir.path().join("cp"))
            .with_epochs(EpochPolicy::Records(10)),
        {
            let d = out.clone();
            move || FileSink::new(&d)
        },
        1,
    )?;
    let files = FileSink::committed_files(&out)?;
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?
            .values()
            .sum::<usize>(),
        10
    );
    assert!(files.len() <= 10, "{} files for 10 records", files.len());
    for f in &files {
        assert!(std::fs::metadata(f)?.len() > 0, "{} is empty", f.display());
    }
    Ok(())
}

/// Story: `committed/` grew by a file per epoch and worker forever. With
/// compaction, a worker merges its files of epochs that can no longer be
/// rolled back into segments: far fewer files, the same records in order.
#[test]
fn compaction_bounds_the_committed_files() -> R {
    let dir = tempfile::tempdir()?;
    let (plain, compacted) = (dir.path().join("plain"), dir.path().join("compacted"));
    let config = |cp: &str| {
        JobConfig::new("compaction")
            .with_workers(2)
            .with_checkpoint_dir(dir.path().join(cp))
            .with_epochs(EpochPolicy::Records(10))
    };
    count_job(
        config("cp1"),
        {
            let d = plain.clone();
            move || FileSink::new(&d)
        },
        7,
    )?;
    count_job(
        config("cp2"),
        {
            let d = compacted.clone();
            move || FileSink::new(&d).with_compaction(8)
        },
        7,
    )?;
    let (before, after) = (
        FileSink::committed_files(&plain)?.len(),
        FileSink::committed_files(&compacted)?.len(),
    );
    assert!(
        after * 4 < before,
        "{after} files after compaction, {before} without"
    );
    assert_eq!(
        common::committed_records::<(u64, u64)>(&compacted)?,
        common::committed_records::<(u64, u64)>(&plain)?
    );
    // Per key, the running counts still come in order.
    let records = FileSink::read_committed::<(u64, u64)>(&compacted)?;
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (k, n) in records {
        let prev = last.insert(k, n).unwrap_or(0);
        assert!(n > prev, "key {k}: {n} after {prev}");
    }
    Ok(())
}

/// A compaction cut short after its segment is in place leaves both the
/// segment and the files it merged; readers count each record once and
/// the next compaction removes the leftovers.
#[test]
fn a_compaction_cut_short_is_read_once_and_finished_later() -> R {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let config = || {
        JobConfig::new("half-compacted")
            .with_checkpoint_dir(dir.path().join("cp"))
            .with_epochs(EpochPolicy::Records(10))
    };
    count_job(
        config(),
        {
            let d = out.clone();
            move || FileSink::new(&d).with_compaction(4)
        },
        5,
    )?;
    let expected = common::committed_records::<(u64, u64)>(&out)?;
    // Put back copies of what a segment holds, as a crash before the
    // deletions would have left them.
    let committed = out.join("committed");
    let segment = FileSink::committed_files(&out)?
        .into_iter()
        .find(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().matches('-').count() == 2)
        })
        .ok_or("no segment")?;
    let name = segment
        .file_name()
        .ok_or("no name")?
        .to_string_lossy()
        .into_owned();
    let first: u64 = name.split('-').next().ok_or("bad name")?.parse()?;
    let leftover = committed.join(format!("{first:020}-00000.jsonl"));
    std::fs::write(&leftover, b"[999,999]\n")?;
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?,
        expected,
        "a file a segment covers was read"
    );
    // The next run (the job is complete: it only commits) tidies up.
    count_job(
        config(),
        {
            let d = out.clone();
            move || FileSink::new(&d).with_compaction(4)
        },
        5,
    )?;
    assert!(!leftover.exists(), "the leftover is still there");
    assert_eq!(common::committed_records::<(u64, u64)>(&out)?, expected);
    Ok(())
}

/// Story: a commit record was published and then old ones trimmed in the
/// same call, and a failure of the trimming reported the epoch as not
/// committed. Deleting old records now fails alone: every epoch still
/// commits and the job completes.
#[test]
fn a_failed_trim_does_not_uncommit_an_epoch() -> R {
    let dir = tempfile::tempdir()?;
    let (root, out) = (dir.path().join("cp"), dir.path().join("out"));
    let root2 = root.clone();
    let storage = CheckpointStorage::Custom(Arc::new(move |sub: &str| {
        let local = LocalStorage::new(root2.join(sub))?;
        let faulty = Arc::new(FaultyStorage::new(local));
        faulty.set_rule(Some(Arc::new(|op: &str, path: &str| {
            (op == "delete" && path.starts_with("commits/")).then_some(FaultKind::Fail)
        })));
        Ok(faulty as Arc<dyn Storage>)
    }));
    let report = count_job(
        JobConfig::new("trim")
            .with_checkpoints(storage)
            .with_epochs(EpochPolicy::Records(20))
            .with_retained_commits(2),
        {
            let d = out.clone();
            move || FileSink::new(&d)
        },
        7,
    )?;
    let records = commits(&LocalStorage::new(&root)?)?;
    assert_eq!(records.first().map(|c| c.epoch), report.last_committed);
    assert!(
        records.len() > 2,
        "old records were deleted although deletes fail"
    );
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?
            .values()
            .sum::<usize>(),
        1_000
    );
    Ok(())
}
