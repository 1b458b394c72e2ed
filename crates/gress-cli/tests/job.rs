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

/// `gress job savepoint` writes a savepoint of a stopped RocksDB job from
/// its checkpoints (backend and cache parts), a job on the memory backend
/// with another number of workers goes on from it, and together the two
/// commit one run's output; `list` finds it, `start-from` verifies it and
/// runs a program with `--from-savepoint`, and refuses a damaged one.
#[test]
fn job_savepoint_writes_lists_and_starts_from() -> R {
    use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
    use gress_stream::{BackendFactory, EpochPolicy, FileSink, run};

    const PER_PARTITION: u64 = 4_000;
    let word = |p: usize, i: u64| format!("word-{}", (p as u64 * 3 + i * 7) % 53);
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    let mut expected = Vec::new();
    for p in 0..2 {
        for i in 0..PER_PARTITION {
            let c = counts.entry(word(p, i)).or_default();
            *c += 1;
            expected.push((word(p, i), *c));
        }
    }
    expected.sort_unstable();
    let dir = tempfile::tempdir()?;
    let (cp1, out1, state) = (
        dir.path().join("cp1"),
        dir.path().join("out1"),
        dir.path().join("state"),
    );
    let build = |out: std::path::PathBuf, slow: Arc<AtomicBool>| {
        move |job: &mut gress_stream::JobBuilder<'_>| {
            let slow = Arc::clone(&slow);
            job.source("words", GeneratorSource::new(2, Some(PER_PARTITION), word))?
                .map(move |w| {
                    if slow.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    w
                })
                .key_by(|w: &String| w.clone())
                .count("count")
                .sink("out", FileSink::new(out.clone()))
        }
    };
    let handle = start(
        JobConfig::new("words")
            .with_workers(2)
            .with_checkpoint_dir(&cp1)
            .with_epochs(EpochPolicy::Records(100))
            .with_metrics_interval(Duration::from_millis(10))
            .with_backend(BackendFactory::new(move |w| {
                let db = RocksDbConfig::new(state.join(format!("w{w}")));
                Ok(Arc::new(RocksDbStateBackend::open(db)?))
            })),
        build(out1.clone(), Arc::new(AtomicBool::new(true))),
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while handle.status().committed_epoch < Some(2) {
        assert!(Instant::now() < deadline && !handle.is_finished());
        std::thread::sleep(Duration::from_millis(2));
    }
    let stopped = handle.stop()?;

    let sp = dir.path().join("savepoints").join("sp");
    let sp_text = sp.to_str().ok_or("path")?;
    let cp1_text = cp1.to_str().ok_or("path")?;
    let written = gress()
        .args(["job", "savepoint", cp1_text, sp_text])
        .output()?;
    assert_eq!(written.status.code(), Some(0), "{written:?}");
    let text = String::from_utf8(written.stdout)?;
    let epoch = stopped.last_committed.ok_or("nothing committed")?;
    assert!(
        text.contains(&format!(
            "savepoint of job `words` at committed epoch {epoch}"
        )),
        "{text}"
    );
    // Never over another savepoint.
    gress()
        .args(["job", "savepoint", cp1_text, sp_text])
        .assert()
        .code(1);

    // On from it: memory, 3 workers.
    let out2 = dir.path().join("out2");
    let report = run(
        JobConfig::new("words-2")
            .with_workers(3)
            .with_checkpoint_dir(dir.path().join("cp2"))
            .from_savepoint(sp.clone()),
        build(out2.clone(), Arc::new(AtomicBool::new(false))),
    )?;
    assert_eq!(report.from_savepoint, Some(epoch));
    let mut all: Vec<(String, u64)> = FileSink::read_committed(&out1)?;
    let second: Vec<(String, u64)> = FileSink::read_committed(&out2)?;
    assert!(!all.is_empty() && !second.is_empty());
    all.extend(second);
    all.sort_unstable();
    assert_eq!(all, expected, "the two jobs' running counts are one run's");

    // Listed.
    let listed = gress()
        .args([
            "job",
            "list",
            dir.path().join("savepoints").to_str().ok_or("path")?,
        ])
        .output()?;
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    let text = String::from_utf8(listed.stdout)?;
    assert!(
        text.contains(sp_text) && text.contains(&format!("epoch {epoch}")),
        "{text}"
    );
    gress().args(["job", "list", cp1_text]).assert().code(4);

    // start-from runs the program with --from-savepoint, and passes its
    // exit code on.
    let args_file = dir.path().join("args");
    let script = format!("printf '%s\\n' \"$@\" > '{}'; exit 7", args_file.display());
    let started = gress()
        .args([
            "job",
            "start-from",
            sp_text,
            "--",
            "sh",
            "-c",
            &script,
            "sh",
            "--workers",
            "4",
        ])
        .output()?;
    assert_eq!(started.status.code(), Some(7), "{started:?}");
    let args = std::fs::read_to_string(&args_file)?;
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["--workers", "4", "--from-savepoint", sp_text]
    );

    // A damaged file: exit code 3, and the program is not run.
    let victim = walk(&sp)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .ok_or("no snapshot file")?;
    flip_middle_byte(&victim)?;
    std::fs::remove_file(&args_file)?;
    let refused = gress()
        .args([
            "job",
            "start-from",
            sp_text,
            "--",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .output()?;
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(
        !args_file.exists(),
        "the program ran from a damaged savepoint"
    );

    // A damaged checkpoint of worker 1: exit code 3, and worker 0's part is
    // deleted again, so the location is left empty (a retry may use it).
    let commit = gress_stream::latest_commit(&gress_checkpoint::LocalStorage::new(&cp1)?)?
        .ok_or("no commit")?;
    let worker1 = cp1.join("workers/00001");
    let catalog =
        gress_checkpoint::Catalog::open(Arc::new(gress_checkpoint::LocalStorage::new(&worker1)?))?;
    let manifest = catalog
        .manifest(commit.checkpoints[1])
        .ok_or("no manifest")?;
    let file = manifest
        .backends
        .iter()
        .flat_map(|b| b.files.iter())
        .max_by_key(|f| f.size)
        .ok_or("no checkpoint file")?;
    let victim = worker1.join(&file.path);
    flip_middle_byte(&victim)?;
    let sp3 = dir.path().join("savepoints").join("sp3");
    let damaged = gress()
        .args(["job", "savepoint", cp1_text, sp3.to_str().ok_or("path")?])
        .output()?;
    assert_eq!(damaged.status.code(), Some(3), "{damaged:?}");
    assert!(
        walk(&sp3).is_empty(),
        "a failed savepoint left {:?}",
        walk(&sp3)
    );
    Ok(())
}

/// Flips the bits of the byte in the middle of the file at `path`.
fn flip_middle_byte(path: &std::path::Path) -> std::io::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(path, &bytes)
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `gress job stop URL --savepoint DEST` stops a job that allows remote
/// control and waits for its savepoint; a job that does not allow it, and
/// a savepoint location that is not empty, are refused and the job runs on.
#[test]
fn job_stop_with_a_savepoint_through_the_endpoint() -> R {
    let dir = tempfile::tempdir()?;
    let job = |id: &str, remote: bool, cp: &std::path::Path| {
        start(
            JobConfig::new(id)
                .with_workers(2)
                .with_checkpoint_dir(cp)
                .with_metrics_interval(Duration::from_millis(10))
                .with_prometheus(SocketAddr::from(([127, 0, 0, 1], 0)))
                .with_remote_control(remote),
            move |job| {
                job.source("numbers", GeneratorSource::new(2, None, |_, i| i % 10))?
                    .map(|n| {
                        std::thread::sleep(Duration::from_micros(20));
                        n
                    })
                    .key_by(|n| *n)
                    .count("count")
                    .sink("out", CollectSink::new(Collected::new()))
            },
        )
    };
    let url = |_: &gress_stream::JobHandle| -> Result<String, Box<dyn std::error::Error>> {
        let addr = gress_stream::telemetry::prometheus_endpoint()
            .ok_or("no endpoint")?
            .addr();
        Ok(format!("http://{addr}"))
    };
    let wait_committed = |handle: &gress_stream::JobHandle| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while handle.status().committed_epoch.is_none() {
            assert!(Instant::now() < deadline && !handle.is_finished());
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    // Remote control off: refused, the job runs on.
    let closed = job("closed", false, &dir.path().join("cp-closed"))?;
    let closed_url = url(&closed)?;
    let refused = gress().args(["job", "stop", &closed_url]).output()?;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8(refused.stderr)?.contains("remote control is off"),
        "it says why"
    );
    assert!(!closed.is_finished());
    closed.stop()?;

    let open = job("open", true, &dir.path().join("cp-open"))?;
    let open_url = url(&open)?;
    wait_committed(&open);
    // A location that holds something: refused, the job runs on.
    let taken = dir.path().join("taken");
    std::fs::create_dir_all(&taken)?;
    std::fs::write(taken.join("something"), b"x")?;
    let refused = gress()
        .args([
            "job",
            "stop",
            &open_url,
            "--savepoint",
            taken.to_str().ok_or("path")?,
        ])
        .output()?;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8(refused.stderr)?.contains("not empty"));
    assert!(!open.is_finished());
    assert_eq!(open.status().state, gress_stream::JobState::Running);

    let sp = dir.path().join("sp");
    let stopped = gress()
        .args([
            "job",
            "stop",
            &open_url,
            "--savepoint",
            sp.to_str().ok_or("path")?,
            "--json",
        ])
        .output()?;
    assert_eq!(stopped.status.code(), Some(0), "{stopped:?}");
    let doc: serde_json::Value = serde_json::from_slice(&stopped.stdout)?;
    assert_eq!(doc["state"], "stopped", "{doc}");
    let report = open.wait()?;
    let info = report.savepoint.ok_or("the report names no savepoint")?;
    assert_eq!(doc["savepoint"]["epoch"], info.epoch, "{doc}");
    assert_eq!(report.last_committed, Some(info.epoch));
    let read = gress_stream::savepoint::read(&sp.clone().into())?;
    assert_eq!(read, info);
    Ok(())
}
