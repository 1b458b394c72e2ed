//! Bad input stops a job with a clear, typed error; it never hangs, and
//! never loses or duplicates committed output.

use std::sync::Arc;

use gress_checkpoint::storage::fault::{FaultRates, FaultyStorage};
use gress_checkpoint::{LocalStorage, Storage};
use gress_stream::{
    CheckpointStorage, CollectSink, EpochPolicy, Error, FileSink, FileSource, GeneratorSource,
    JobConfig, KeyedProcessFunction, ProcessingContext, Result, commits, run,
};
use parking_lot::Mutex;

mod common;
use common::bounded;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

/// A line that does not parse stops the job with a source error naming
/// the file and the byte position.
#[test]
fn a_record_that_fails_to_decode_stops_the_job() -> R {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "1\n2\nnot json\n4\n")?;
    let result = bounded(move || {
        run(JobConfig::new("decode").with_workers(2), move |job| {
            job.source(
                "numbers",
                FileSource::<u64>::json_lines(vec![input.clone()]),
            )?
            .key_by(|n| *n)
            .count("count")
            .sink("out", CollectSink::new(Arc::new(Mutex::new(Vec::new()))))
        })
    });
    match result {
        Err(Error::Source { reason, .. }) => assert!(reason.contains("byte 4"), "{reason}"),
        other => panic!("expected a source error, got {other:?}"),
    }
    Ok(())
}

struct Panics;

impl KeyedProcessFunction<u64, u64> for Panics {
    type Out = u64;
    type Side = ();
    fn on_record(&mut self, _ctx: &mut ProcessingContext<'_, u64, u64>, value: u64) -> Result<()> {
        assert!(value != 777, "user code panicked on {value}");
        Ok(())
    }
}

struct Fails;

impl KeyedProcessFunction<u64, u64> for Fails {
    type Out = u64;
    type Side = ();
    fn on_record(&mut self, _ctx: &mut ProcessingContext<'_, u64, u64>, value: u64) -> Result<()> {
        if value == 777 {
            return Err(Error::Operator {
                operator: "fails".into(),
                reason: "bad record 777".into(),
            });
        }
        Ok(())
    }
}

/// A panic in a user operator on one worker stops every worker and the
/// job reports it; an operator's error is reported as such.
#[test]
fn a_failing_user_operator_stops_every_worker() -> R {
    let result = bounded(|| {
        run(JobConfig::new("panics").with_workers(2), |job| {
            job.source("n", GeneratorSource::new(2, None, |_, i| i % 1000))?
                .key_by(|n| *n)
                .process("panics", Panics)
                .sink("out", CollectSink::new(Arc::new(Mutex::new(Vec::new()))))
        })
    });
    match result {
        Err(Error::Worker(why)) => assert!(why.contains("panicked"), "{why}"),
        other => panic!("expected a worker failure, got {other:?}"),
    }
    let result = bounded(|| {
        run(JobConfig::new("fails").with_workers(2), |job| {
            job.source("n", GeneratorSource::new(2, None, |_, i| i % 1000))?
                .key_by(|n| *n)
                .process("fails", Fails)
                .sink("out", CollectSink::new(Arc::new(Mutex::new(Vec::new()))))
        })
    });
    match result {
        Err(Error::Operator { reason, .. }) => assert!(reason.contains("777"), "{reason}"),
        other => panic!("expected an operator error, got {other:?}"),
    }
    Ok(())
}

/// Checkpoint storage that is not there, or that fails every write once
/// the job runs, stops the job with an error instead of hanging at the
/// backpressure bound.
#[test]
fn unreachable_checkpoint_storage_stops_the_job() -> R {
    let dir = tempfile::tempdir()?;
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x")?;
    let result = bounded(move || {
        run(
            JobConfig::new("nowhere").with_checkpoint_dir(not_a_dir.join("cp")),
            |job| {
                job.source("n", GeneratorSource::new(1, Some(10), |_, i| i))?
                    .sink("out", CollectSink::new(Arc::new(Mutex::new(Vec::new()))))
            },
        )
    });
    assert!(matches!(result, Err(Error::Checkpoint(_))), "{result:?}");

    let root = dir.path().join("failing");
    let storages: Arc<Mutex<Vec<Arc<FaultyStorage<LocalStorage>>>>> = Arc::default();
    let opened = storages.clone();
    let failing = CheckpointStorage::Custom(Arc::new(move |sub: &str| {
        let s = Arc::new(FaultyStorage::new(LocalStorage::new(root.join(sub))?));
        opened.lock().push(s.clone());
        Ok(s as Arc<dyn Storage>)
    }));
    let all = storages.clone();
    let result = bounded(move || {
        run(
            JobConfig::new("failing")
                .with_checkpoints(failing)
                .with_epochs(EpochPolicy::Records(10)),
            move |job| {
                // Every storage write fails from now on.
                for s in all.lock().iter() {
                    s.randomize(Some((
                        1,
                        FaultRates {
                            fail: 1_000_000,
                            ..FaultRates::default()
                        },
                    )));
                }
                job.source("n", GeneratorSource::new(1, None, |_, i| i))?
                    .key_by(|n| n % 10)
                    .count("count")
                    .sink("out", CollectSink::new(Arc::new(Mutex::new(Vec::new()))))
            },
        )
    });
    match result {
        Err(Error::Worker(why)) => assert!(why.contains("could not be committed"), "{why}"),
        other => panic!("expected the job to stop, got {other:?}"),
    }
    Ok(())
}

/// A damaged checkpoint of the newest committed epoch makes recovery fall
/// back to the previous committed epoch, and with deterministic epochs the
/// replay leaves the committed output as it was.
#[test]
fn a_damaged_checkpoint_falls_back_to_the_previous_commit() -> R {
    let dir = tempfile::tempdir()?;
    let (cp, out) = (dir.path().join("cp"), dir.path().join("out"));
    let job = |cp: std::path::PathBuf, out: std::path::PathBuf| {
        run(
            JobConfig::new("fallback")
                .with_workers(2)
                .with_checkpoint_dir(cp)
                .with_epochs(EpochPolicy::Records(100)),
            move |job| {
                job.source(
                    "n",
                    GeneratorSource::new(2, Some(1000), |p, i| (p as u64 + i) % 13),
                )?
                .key_by(|n| *n)
                .count("count")
                .sink("out", FileSink::new(out.clone()))
            },
        )
    };
    let first = job(cp.clone(), out.clone())?;
    let before = common::committed_records::<(u64, u64)>(&out)?;
    let newest = commits(&LocalStorage::new(&cp)?)?;
    let newest = newest.first().ok_or("no commit")?;
    assert_eq!(Some(newest.epoch), first.last_committed);
    // Damage worker 1's checkpoint of the newest epoch.
    let manifest = cp.join(format!(
        "workers/00001/manifests/{:020}.manifest",
        newest.checkpoints[1]
    ));
    let mut bytes = std::fs::read(&manifest)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&manifest, bytes)?;
    let second = job(cp, out.clone())?;
    assert!(
        second.recovered_from.is_some_and(|e| e < newest.epoch),
        "recovered from {:?}",
        second.recovered_from
    );
    assert_eq!(
        common::committed_records::<(u64, u64)>(&out)?,
        before,
        "the replay changed the committed output"
    );
    Ok(())
}
