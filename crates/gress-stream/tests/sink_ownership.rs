//! A file sink's directory belongs to one job and one history of it: a
//! run of another job, or of the job after its checkpoints were lost,
//! refuses to start and leaves the committed output as it was.

use std::path::Path;

use gress_stream::{EpochPolicy, Error, FileSink, GeneratorSource, JobConfig, run};

type R = Result<(), Box<dyn std::error::Error>>;

fn count(job: &str, checkpoints: Option<&Path>, out: &Path) -> gress_stream::Result<()> {
    let mut config = JobConfig::new(job)
        .with_workers(2)
        .with_epochs(EpochPolicy::Records(50));
    if let Some(cp) = checkpoints {
        config = config.with_checkpoint_dir(cp);
    }
    let out = out.to_path_buf();
    run(config, move |job| {
        job.source(
            "n",
            GeneratorSource::new(2, Some(200), |p, i| (p as u64 + i) % 13),
        )?
        .key_by(|n: &u64| *n)
        .count("count")
        .sink("out", FileSink::new(out.clone()))
    })?;
    Ok(())
}

fn committed(out: &Path) -> Result<Vec<(u64, u64)>, gress_stream::Error> {
    FileSink::read_committed(out)
}

fn refused(result: gress_stream::Result<()>, says: &str) -> R {
    match result {
        Err(Error::Sink { reason, .. }) if reason.contains(says) => Ok(()),
        other => Err(format!("expected a refusal saying {says:?}, got {other:?}").into()),
    }
}

#[test]
fn a_sink_refuses_output_of_another_job_or_of_a_lost_history() -> R {
    let dir = tempfile::tempdir()?;
    let (cp, out) = (dir.path().join("cp"), dir.path().join("out"));
    count("a", Some(&cp), &out)?;
    let first = committed(&out)?;
    assert_eq!(first.len(), 400);
    assert_eq!(std::fs::read_to_string(out.join("JOB"))?.trim(), "a");

    // The same job again: it is finished, and its output stays.
    count("a", Some(&cp), &out)?;
    assert_eq!(committed(&out)?, first);

    // Another job, with its own checkpoints, into the same directory.
    let other = dir.path().join("cp-b");
    refused(count("b", Some(&other), &out), "holds output of job `a`")?;
    assert_eq!(committed(&out)?, first);

    // The job's checkpoints are gone: its output has no history left.
    std::fs::remove_dir_all(&cp)?;
    refused(count("a", Some(&cp), &out), "history that no longer exists")?;
    assert_eq!(committed(&out)?, first);
    // So is a job that keeps no checkpoints.
    refused(count("a", None, &out), "history that no longer exists")?;
    assert_eq!(committed(&out)?, first);
    assert!(!out.join("rolled-back").exists(), "nothing was withdrawn");

    // Moved away, the directory is free again.
    std::fs::rename(&out, dir.path().join("old-out"))?;
    count("a", Some(&cp), &out)?;
    assert_eq!(committed(&out)?.len(), 400);
    Ok(())
}
