//! Operating a job through its handle: stop at an epoch boundary and
//! resume with nothing lost or repeated, drain, recover in-process under a
//! restart policy, say that a finished job is finished, and serve the
//! status as JSON.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gress_stream::telemetry::prometheus_endpoint;
use gress_stream::{
    EpochPolicy, Error, FileSink, GeneratorSource, JobConfig, JobHandle, JobState, RestartPolicy,
    run, start,
};

type R = Result<(), Box<dyn std::error::Error>>;

const PARTITIONS: usize = 4;
const KEYS: u64 = 97;

fn event(p: usize, i: u64) -> u64 {
    (p as u64 * 7919 + i * 104_729) % KEYS
}

/// The running counts of `per_partition` records per partition, as a
/// multiset.
fn reference(per_partition: u64) -> BTreeMap<(u64, u64), usize> {
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        for i in 0..per_partition {
            let c = counts.entry(event(p, i)).or_default();
            *c += 1;
            *out.entry((event(p, i), *c)).or_default() += 1;
        }
    }
    out
}

fn committed(out: &Path) -> Result<BTreeMap<(u64, u64), usize>, Error> {
    let mut m = BTreeMap::new();
    for r in FileSink::read_committed::<(u64, u64)>(out)? {
        *m.entry(r).or_default() += 1;
    }
    Ok(m)
}

/// A keyed running count into a file sink; the operator fails when the
/// run's record count reaches `fail_at` (shared across restarts, so it
/// fails once).
fn config(dir: &Path) -> JobConfig {
    JobConfig::new("lifecycle")
        .with_workers(2)
        .with_checkpoint_dir(dir.join("cp"))
        .with_epochs(EpochPolicy::Records(500))
        .with_metrics_interval(Duration::from_millis(10))
}

fn build(
    out: &Path,
    per_partition: u64,
    seen: Arc<AtomicU64>,
    fail_at: Option<u64>,
) -> impl Fn(&mut gress_stream::JobBuilder<'_>) -> gress_stream::Result<()> + Send + Sync + 'static
{
    let out = out.to_path_buf();
    move |job| {
        let seen = Arc::clone(&seen);
        job.source(
            "events",
            GeneratorSource::new(PARTITIONS, Some(per_partition), event),
        )?
        .map(move |k| {
            // Slow enough that a test can stop it part-way.
            if seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(500) {
                std::thread::sleep(Duration::from_millis(1));
            }
            k
        })
        .key_by(|k: &u64| *k)
        .process("count", Count { fail_at })
        .sink("out", FileSink::new(out.clone()))
    }
}

/// Counts per key; fails the job once when the epoch-0-based record
/// number reaches `fail_at`.
struct Count {
    fail_at: Option<u64>,
}

static FAILED: AtomicU64 = AtomicU64::new(0);

impl gress_stream::KeyedProcessFunction<u64, u64> for Count {
    type Out = (u64, u64);
    type Side = ();
    fn on_record(
        &mut self,
        ctx: &mut gress_stream::ProcessingContext<'_, u64, (u64, u64), ()>,
        key: u64,
    ) -> gress_stream::Result<()> {
        let state = gress_stream::ValueStateDescriptor::<u64>::new("n");
        let mut n = 0;
        ctx.value(&state)?.update(|c| {
            n = c.unwrap_or(0) + 1;
            Some(n)
        })?;
        if let Some(at) = self.fail_at {
            // Fails at most `FAILED`'s budget times over the process.
            if n == at && FAILED.load(Ordering::Relaxed) > 0 {
                FAILED.fetch_sub(1, Ordering::Relaxed);
                return Err(Error::Operator {
                    operator: "count".into(),
                    reason: "injected failure".into(),
                });
            }
        }
        ctx.output((key, n));
        Ok(())
    }
}

fn wait_for(handle: &JobHandle, what: &str, ok: impl Fn(&gress_stream::JobStatus) -> bool) -> R {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = handle.status();
        if ok(&status) {
            return Ok(());
        }
        if handle.is_finished() || Instant::now() > deadline {
            return Err(format!("never {what}: {status:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A job stopped part-way commits what it read, ends with its sources'
/// offsets committed, and a later run resumes from them: the output is
/// the reference, each running count once.
#[test]
fn a_stopped_job_resumes_where_it_stopped() -> R {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let per_partition = 200_000;
    let seen = Arc::new(AtomicU64::new(0));
    let handle = start(
        config(dir.path()),
        build(&out, per_partition, Arc::clone(&seen), None),
    )?;
    wait_for(&handle, "committed two epochs", |s| {
        s.committed_epoch.is_some_and(|e| e >= 2)
    })?;
    let report = handle.stop()?;
    let stopped_at = report.last_committed.ok_or("nothing committed")?;
    let partial = committed(&out)?;
    let partial_records: usize = partial.values().sum();
    assert!(
        (partial_records as u64) < PARTITIONS as u64 * per_partition,
        "stopped before the end: {partial_records} records"
    );
    assert_eq!(partial_records as u64, report.records_out);
    // Nothing it read was left uncommitted.
    assert_eq!(report.records_in, seen.load(Ordering::Relaxed));

    let rest = run(config(dir.path()), build(&out, per_partition, seen, None))?;
    assert_eq!(rest.recovered_from, Some(stopped_at));
    assert!(!rest.already_finished);
    assert_eq!(committed(&out)?, reference(per_partition));
    Ok(())
}

/// A job stopped with a savepoint in S3 (a real S3 API, `moto_server`, on
/// loopback) and a job with another number of workers started from it,
/// checkpointing in S3 too, commit the reference together; a second
/// savepoint to the same prefix is refused and the job runs on.
#[test]
fn a_savepoint_in_s3_moves_a_job_to_another_worker_count() -> R {
    use gress_checkpoint::storage::s3::testing::MotoServer;

    let server = MotoServer::start()?;
    let savepoint = server
        .bucket("savepoints")?
        .with_prefix("jobs/lifecycle/sp-1");
    let dir = tempfile::tempdir()?;
    let (out_a, out_b) = (dir.path().join("out-a"), dir.path().join("out-b"));
    let per_partition = 100_000;
    let mut first = start(
        config(&dir.path().join("a")),
        build(&out_a, per_partition, Arc::default(), None),
    )?;
    wait_for(&first, "committed two epochs", |s| {
        s.committed_epoch.is_some_and(|e| e >= 2)
    })?;
    let report = first.stop_with_savepoint(savepoint.clone())?;
    let info = report.savepoint.ok_or("no savepoint")?;
    assert_eq!(
        gress_stream::savepoint::read(&savepoint.clone().into())?,
        info
    );

    let checkpoints = server
        .bucket("checkpoints")?
        .with_prefix("jobs/lifecycle-b");
    let mut second = start(
        config(&dir.path().join("b"))
            .with_workers(3)
            .with_epochs(EpochPolicy::Records(20_000))
            .with_checkpoints(checkpoints.into())
            .from_savepoint(savepoint.clone()),
        build(&out_b, per_partition, Arc::default(), None),
    )?;
    // Never over the savepoint already there.
    let refused = second.stop_with_savepoint(savepoint.clone());
    assert!(
        matches!(
            &refused,
            Err(Error::InvalidJob {
                what: "savepoint",
                ..
            })
        ),
        "{refused:?}"
    );
    let rest = second.wait()?;
    assert_eq!(rest.from_savepoint, Some(info.epoch));
    let mut all = committed(&out_a)?;
    for (k, n) in committed(&out_b)? {
        *all.entry(k).or_default() += n;
    }
    assert_eq!(all, reference(per_partition));
    Ok(())
}

/// `drain` runs bounded sources to their end; run again, the finished job
/// says so and commits nothing new.
#[test]
fn a_drained_job_ends_its_input_and_a_finished_job_says_so() -> R {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let seen = Arc::new(AtomicU64::new(0));
    let handle = start(
        config(dir.path()),
        build(&out, 5_000, Arc::clone(&seen), None),
    )?;
    let report = handle.drain()?;
    assert_eq!(committed(&out)?, reference(5_000));
    assert!(!report.already_finished);

    let again = run(config(dir.path()), build(&out, 5_000, seen, None))?;
    assert!(again.already_finished, "{again:?}");
    assert_eq!(again.records_in, 0);
    assert_eq!(committed(&out)?, reference(5_000));
    let handle = start(config(dir.path()), build(&out, 5_000, Arc::default(), None))?;
    let report = handle.wait()?;
    assert!(report.already_finished);
    Ok(())
}

/// An injected failure is recovered in-process from the newest committed
/// epoch; the status counts the restart; the output is exactly the
/// reference. The status endpoint serves it as JSON while the job runs and
/// after it failed for good.
#[test]
fn a_restart_policy_recovers_a_failure_and_status_is_served() -> R {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let per_partition = 20_000;
    FAILED.store(1, Ordering::Relaxed);
    let handle = start(
        config(dir.path())
            .with_restart(RestartPolicy::FixedDelay {
                attempts: 2,
                delay: Duration::from_millis(20),
            })
            .with_prometheus(SocketAddr::from(([127, 0, 0, 1], 0))),
        build(&out, per_partition, Arc::default(), Some(600)),
    )?;
    let addr = loop {
        if let Some(e) = prometheus_endpoint() {
            break e.addr();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Scraped while it runs.
    let during: serde_json::Value =
        serde_json::from_str(&gress_testkit::prometheus::get(addr, "/status")?)?;
    assert_eq!(during["job_id"], "lifecycle");
    assert_eq!(during["workers"], 2);
    assert!(
        ["running", "recovering", "finished"].contains(&during["state"].as_str().unwrap_or("")),
        "{during}"
    );
    let report = handle.wait()?;
    assert!(report.recovered_from.is_some(), "{report:?}");
    assert_eq!(FAILED.load(Ordering::Relaxed), 0, "the failure happened");
    assert_eq!(committed(&out)?, reference(per_partition));
    let after: serde_json::Value =
        serde_json::from_str(&gress_testkit::prometheus::get(addr, "/status")?)?;
    assert_eq!(after["state"], "finished", "{after}");
    assert_eq!(after["restarts"], 1, "{after}");
    let workers = after["worker_status"].as_array().ok_or("workers")?;
    assert_eq!(workers.len(), 2, "{after}");
    assert!(
        workers[0]["positions"]
            .as_object()
            .is_some_and(|p| p.keys().any(|k| k.starts_with("offset/events/"))),
        "{after}"
    );

    // A failure the policy does not cover ends the job: its status says
    // failed, with the error.
    let dir = tempfile::tempdir()?;
    FAILED.store(10, Ordering::Relaxed);
    let handle = start(
        config(dir.path()).with_restart(RestartPolicy::FixedDelay {
            attempts: 1,
            delay: Duration::from_millis(1),
        }),
        build(
            &dir.path().join("out"),
            per_partition,
            Arc::default(),
            Some(600),
        ),
    )?;
    let status = loop {
        let status = handle.status();
        if matches!(status.state, JobState::Failed(_)) {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.restarts, 1);
    let served: serde_json::Value =
        serde_json::from_str(&gress_testkit::prometheus::get(addr, "/status")?)?;
    assert_eq!(served["state"], "failed", "{served}");
    assert!(
        served["error"]
            .as_str()
            .is_some_and(|e| e.contains("injected failure")),
        "{served}"
    );
    match handle.wait() {
        Err(e @ Error::Operator { .. }) => {
            // The function's own error, said once.
            assert_eq!(e.to_string(), "operator `count` failed: injected failure");
        }
        other => return Err(format!("expected the failure, got {other:?}").into()),
    }
    Ok(())
}
