//! `gress job status` against a job running in this process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gress_stream::{CollectSink, Collected, GeneratorSource, JobConfig, start};

type R = Result<(), Box<dyn std::error::Error>>;

fn gress() -> assert_cmd::Command {
    assert_cmd::cargo::cargo_bin_cmd!("gress")
}

#[test]
fn job_status_reads_a_running_job_and_its_end() -> R {
    let dir = tempfile::tempdir()?;
    let hold = Arc::new(AtomicBool::new(true));
    let held = Arc::clone(&hold);
    let out = Collected::new();
    let sink = out.clone();
    let handle = start(
        JobConfig::new("status-job")
            .with_workers(2)
            .with_checkpoint_dir(dir.path())
            .with_metrics_interval(Duration::from_millis(10))
            .with_prometheus(SocketAddr::from(([127, 0, 0, 1], 0))),
        move |job| {
            let held = Arc::clone(&held);
            job.source("numbers", GeneratorSource::new(2, None, |_, i| i % 10))?
                .map(move |n| {
                    // Slow while held, so the job is surely running.
                    if held.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    n
                })
                .key_by(|n| *n)
                .count("count")
                .sink("out", CollectSink::new(&sink))
        },
    )?;
    let addr = gress_stream::telemetry::prometheus_endpoint()
        .ok_or("no endpoint")?
        .addr();
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let doc = loop {
        let got = gress().args(["job", "status", &url, "--json"]).output()?;
        assert_eq!(got.status.code(), Some(0), "{got:?}");
        let doc: serde_json::Value = serde_json::from_slice(&got.stdout)?;
        if doc["committed_epoch"].as_u64().is_some() {
            break doc;
        }
        assert!(Instant::now() < deadline, "never committed: {doc}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(doc["job_id"], "status-job");
    assert_eq!(doc["state"], "running");
    let human = gress()
        .args(["job", "status", &format!("{url}/metrics")])
        .output()?;
    let text = String::from_utf8(human.stdout)?;
    assert!(text.starts_with("job status-job: running"), "{text}");
    assert!(text.contains("worker 1:"), "{text}");
    assert!(text.contains("offset/numbers/"), "{text}");

    hold.store(false, Ordering::Relaxed);
    let report = handle.stop()?;
    assert_eq!(report.records_out as usize, out.len());
    let after = gress().args(["job", "status", &url, "--json"]).output()?;
    let doc: serde_json::Value = serde_json::from_slice(&after.stdout)?;
    assert_eq!(doc["state"], "stopped", "{doc}");

    // Nothing listens there: exit code 1, one line.
    let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let gone = gress()
        .args(["job", "status", &format!("http://{free}")])
        .output()?;
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8(gone.stderr)?.contains("connecting to"));
    Ok(())
}

/// `gress job state` reads a stream job's keyed state at a committed
/// epoch, on either backend: the states by name with their entry counts,
/// then one key's value, decoded.
#[test]
fn job_state_decodes_a_jobs_keyed_state() -> R {
    use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
    use gress_stream::{BackendFactory, run};

    let word = |p: usize, i: u64| format!("word-{}", (p as u64 + i) % 7);
    let mut expected: std::collections::BTreeMap<String, u64> = Default::default();
    for p in 0..2 {
        for i in 0..500 {
            *expected.entry(word(p, i)).or_default() += 1;
        }
    }
    for rocks in [false, true] {
        let dir = tempfile::tempdir()?;
        let loc = dir.path().join("cp");
        let state = dir.path().join("state");
        let mut config = JobConfig::new("words")
            .with_workers(2)
            .with_checkpoint_dir(&loc)
            .with_epochs(gress_stream::EpochPolicy::Records(100));
        if rocks {
            config = config.with_backend(BackendFactory::new(move |w| {
                let db = RocksDbConfig::new(state.join(format!("w{w}")));
                Ok(Arc::new(RocksDbStateBackend::open(db)?))
            }));
        }
        run(config, move |job| {
            job.source("words", GeneratorSource::new(2, Some(500), word))?
                .key_by(|w: &String| w.clone())
                .count("count")
                .sink("out", CollectSink::new(Collected::new()))
        })?;
        let loc = loc.to_str().ok_or("path")?;
        let listed = gress().args(["job", "state", loc, "--json"]).output()?;
        assert_eq!(listed.status.code(), Some(0), "{listed:?}");
        let doc: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
        let states = doc["states"].as_array().ok_or("states")?;
        let count = states
            .iter()
            .find(|s| s["name"] == "count/count")
            .ok_or_else(|| format!("no count/count in {doc}"))?;
        assert_eq!(count["entries"], expected.len() as u64, "{doc}");

        let one = gress()
            .args([
                "job",
                "state",
                loc,
                "--operator",
                "count",
                "--state",
                "count",
            ])
            .args(["--key", "word-3", "--json"])
            .output()?;
        assert_eq!(one.status.code(), Some(0), "{one:?}");
        let line: serde_json::Value = serde_json::from_slice(&one.stdout)?;
        assert_eq!(line["state"], "count/count");
        assert_eq!(line["key"], "\"word-3\"");
        assert_eq!(
            line["value"],
            format!("varint {}", expected["word-3"]),
            "rocks {rocks}"
        );

        // A key that is not there: exit code 4.
        gress()
            .args(["job", "state", loc, "--key", "word-99"])
            .assert()
            .code(4);
    }
    Ok(())
}
