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
