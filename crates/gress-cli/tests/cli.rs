//! The `gress` binary run as a user runs it, on checkpoints, snapshots and
//! RocksDB directories made by the library: locally, on `moto_server`, and
//! damaged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use assert_cmd::Command;
use gress_checkpoint::storage::s3::testing::MotoServer;
use gress_checkpoint::{CheckpointConfig, CheckpointManager, LocalStorage, S3Storage, Storage};
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::{MemoryConfig, MemoryStateBackend, StateBackend};
use serde_json::Value;

type R<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const KEYS: u64 = 500;

fn gress() -> Command {
    assert_cmd::cargo::cargo_bin_cmd!("gress")
}

fn key(i: u64) -> Vec<u8> {
    format!("user:{i:05}").into_bytes()
}

fn value(i: u64, round: u64) -> Vec<u8> {
    format!("v{round}-{i}").into_bytes()
}

/// Three checkpoints of a memory backend named `state` in `storage`, the
/// keys rewritten before each; returns the final contents.
fn make_checkpoints(storage: Arc<dyn Storage>) -> R<BTreeMap<Vec<u8>, Vec<u8>>> {
    let backend = Arc::new(MemoryStateBackend::new(MemoryConfig::default())?);
    let manager = CheckpointManager::open(storage, CheckpointConfig::default().with_retain(10))?;
    manager.register("state", backend.clone())?;
    let mut expected = BTreeMap::new();
    for round in 1..=3 {
        for i in 0..KEYS {
            if i % 3 == round % 3 {
                continue;
            }
            backend.put(&key(i), &value(i, round))?;
            expected.insert(key(i), value(i, round));
        }
        // One key with a TTL, one binary key.
        backend.put_with_ttl(b"session", b"s", std::time::Duration::from_secs(3600))?;
        backend.put(&[0, 255, b'\\', b'\n'], b"\x01\x02")?;
        let meta = BTreeMap::from([("offset/events/0".to_string(), (round * 100).to_string())]);
        manager.trigger_checkpoint(meta)?;
    }
    expected.insert(b"session".to_vec(), b"s".to_vec());
    expected.insert(vec![0, 255, b'\\', b'\n'], b"\x01\x02".to_vec());
    drop(manager);
    Ok(expected)
}

fn json_of(out: &[u8]) -> R<Value> {
    Ok(serde_json::from_slice(out)?)
}

fn run_json(args: &[&str]) -> R<Value> {
    let out = gress().args(args).arg("--json").output()?;
    assert!(
        out.status.success(),
        "gress {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    json_of(&out.stdout)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Every file under `dir`, with its bytes.
fn tree(dir: &Path) -> R<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p)?);
            }
        }
    }
    Ok(out)
}

#[test]
fn checkpoints_are_listed_inspected_verified_and_restored_into_rocksdb_and_snapshots() -> R {
    let tmp = tempfile::tempdir()?;
    let loc = tmp.path().join("checkpoints");
    let expected = make_checkpoints(Arc::new(LocalStorage::new(&loc)?))?;
    let untouched = tree(&loc)?;

    let list = run_json(&["checkpoint", "list", s(&loc)])?;
    let cps = list["checkpoints"].as_array().ok_or("no checkpoints")?;
    assert_eq!(cps.len(), 3, "{list}");
    assert_eq!(cps[2]["metadata"]["offset/events/0"], "300");
    assert_eq!(cps[0]["backends"][0]["name"], "state");
    let human = gress().args(["checkpoint", "list", s(&loc)]).output()?;
    assert!(String::from_utf8(human.stdout)?.contains("offset/events/0=300"));

    let id = cps[1]["id"].as_u64().ok_or("id")?;
    let manifest = run_json(&["checkpoint", "inspect", s(&loc), &id.to_string()])?;
    assert_eq!(manifest["id"], id);
    assert!(
        !manifest["backends"][0]["files"]
            .as_array()
            .ok_or("files")?
            .is_empty()
    );
    gress()
        .args(["checkpoint", "inspect", s(&loc), "999"])
        .assert()
        .code(4);

    let verified = run_json(&["checkpoint", "verify", s(&loc), "--all"])?;
    assert_eq!(verified["ok"], true);
    assert_eq!(
        verified["checkpoints"].as_array().ok_or("checked")?.len(),
        3
    );

    // Restore the newest into a snapshot file and into RocksDB.
    let snap = tmp.path().join("state.snap");
    run_json(&["checkpoint", "restore", s(&loc), "--to-snapshot", s(&snap)])?;
    let info = run_json(&["snapshot", "inspect", s(&snap)])?;
    assert_eq!(info["entries"], expected.len() as u64, "{info}");
    assert_eq!(info["ttl"]["expiring"], 1);
    assert_eq!(info["kind"], "full");
    let dump = gress()
        .args(["snapshot", "dump", s(&snap), "--encoding", "base64"])
        .output()?;
    assert!(dump.status.success());
    let mut dumped = BTreeMap::new();
    for line in String::from_utf8(dump.stdout)?.lines() {
        use base64::Engine;
        let v: Value = serde_json::from_str(line)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        dumped.insert(
            b64.decode(v["key"].as_str().ok_or("key")?)?,
            b64.decode(v["value"].as_str().ok_or("value")?)?,
        );
    }
    assert_eq!(dumped, expected, "a dump holds exactly the state");
    let head = gress()
        .args(["snapshot", "dump", s(&snap), "--limit", "5"])
        .output()?;
    assert_eq!(String::from_utf8(head.stdout)?.lines().count(), 5);

    let db = tmp.path().join("db");
    let restored = run_json(&["checkpoint", "restore", s(&loc), "--to-rocksdb", s(&db)])?;
    // The entries restored, counted (not RocksDB's estimate).
    assert_eq!(restored["entries"], expected.len() as u64, "{restored}");
    assert_eq!(
        tree(&loc)?,
        untouched,
        "list, inspect, verify and restore leave every byte of the location as it was"
    );
    let got = run_json(&["db", "get", s(&db), "user:00001"])?;
    assert_eq!(
        got["value"].as_str().map(str::as_bytes),
        expected.get(&key(1)).map(Vec::as_slice)
    );
    let binary = run_json(&["db", "get", s(&db), "\\x00\\xff\\\\\\x0a"])?;
    assert_eq!(binary["value"], "\\x01\\x02");
    gress()
        .args(["db", "get", s(&db), "user:99999"])
        .assert()
        .code(4);
    let scan = gress()
        .args([
            "db",
            "scan",
            s(&db),
            "--prefix",
            "user:",
            "--limit",
            "1000",
            "--json",
        ])
        .output()?;
    let scanned = String::from_utf8(scan.stdout)?.lines().count();
    assert_eq!(scanned as u64, KEYS, "every user key once");
    let stats = run_json(&["db", "stats", s(&db)])?;
    assert!(
        stats["properties"]["rocksdb.estimate-num-keys"]
            .as_u64()
            .is_some(),
        "{stats}"
    );

    // Conversions both ways keep every entry.
    let back = tmp.path().join("back.snap");
    run_json(&["snapshot", "convert", s(&db), s(&back)])?;
    assert_eq!(
        run_json(&["snapshot", "inspect", s(&back)])?["entries"],
        expected.len() as u64
    );
    let db2 = tmp.path().join("db2");
    run_json(&["snapshot", "convert", s(&back), s(&db2)])?;
    let again = run_json(&["db", "get", s(&db2), "session"])?;
    assert_eq!(again["value"], "s");
    assert!(again["expires_at_ms"].as_u64().is_some());
    // Never over existing state.
    gress()
        .args(["snapshot", "convert", s(&back), s(&db2)])
        .assert()
        .code(1);

    // A directory a process holds is refused, and left alone.
    let before = tree(&db)?;
    let held = RocksDbStateBackend::open(RocksDbConfig::new(&db))?;
    for args in [
        vec!["db", "stats"],
        vec!["db", "compact"],
        vec!["db", "scan"],
    ] {
        let out = gress().args(&args).arg(s(&db)).output()?;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr)?;
        assert!(err.contains("in use by a running process"), "{err}");
    }
    held.close()?;
    drop(held);
    let compacted = run_json(&["db", "compact", s(&db)])?;
    assert!(compacted["sst_bytes_after"].as_u64().is_some());
    assert!(!before.is_empty());

    // Bad input: a clear error, exit code 1.
    for args in [
        vec!["checkpoint", "list", "/no/such/dir"],
        vec!["snapshot", "inspect", "/no/such/file"],
        vec!["db", "stats", s(tmp.path())],
    ] {
        let out = gress().args(&args).output()?;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    // A location that holds no checkpoints: not found (4), in one line.
    let empty = tempfile::tempdir()?;
    let out = gress()
        .args(["checkpoint", "list", s(empty.path())])
        .output()?;
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no checkpoints here"), "{err}");
    Ok(())
}

#[test]
fn damage_is_found_named_and_exits_with_code_3() -> R {
    let tmp = tempfile::tempdir()?;
    let loc = tmp.path().join("checkpoints");
    make_checkpoints(Arc::new(LocalStorage::new(&loc)?))?;
    let newest = run_json(&["checkpoint", "inspect", s(&loc)])?;
    let file = newest["backends"][0]["files"][0]["path"]
        .as_str()
        .ok_or("path")?
        .to_string();
    let path = loc.join(&file);
    let mut bytes = std::fs::read(&path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes)?;

    let out = gress().args(["checkpoint", "verify", s(&loc)]).output()?;
    assert_eq!(out.status.code(), Some(3));
    let report = String::from_utf8(out.stdout)?;
    assert!(
        report.contains("DAMAGED") && report.contains(&file),
        "{report}"
    );
    // The cause is said once, not repeated by each layer.
    assert_eq!(report.matches("is damaged").count(), 1, "{report}");
    let out = gress()
        .args(["checkpoint", "verify", s(&loc), "--json"])
        .output()?;
    assert_eq!(out.status.code(), Some(3));
    let doc = json_of(&out.stdout)?;
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["checkpoints"][0]["problems"][0]["path"], file.as_str());
    // Restoring it fails before writing anything.
    let snap = tmp.path().join("x.snap");
    let out = gress()
        .args(["checkpoint", "restore", s(&loc), "--to-snapshot", s(&snap)])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(!snap.exists());

    // A torn manifest is listed as damaged, the others still listed.
    let manifests: Vec<PathBuf> = std::fs::read_dir(loc.join("manifests"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let oldest = manifests.iter().min().ok_or("a manifest")?;
    let len = std::fs::metadata(oldest)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(oldest)?
        .set_len(len / 2)?;
    let list = run_json(&["checkpoint", "list", s(&loc)])?;
    assert_eq!(list["damaged"].as_array().ok_or("damaged")?.len(), 1);
    assert_eq!(list["checkpoints"].as_array().ok_or("cps")?.len(), 2);
    let torn = list["damaged"][0]["id"].as_u64().ok_or("id")?.to_string();
    // Verifying reports it; asking for it says it is damaged.
    let out = gress()
        .args(["checkpoint", "verify", s(&loc), "--all"])
        .output()?;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8(out.stdout)?.contains("DAMAGED manifest"));
    for cmd in ["inspect", "verify"] {
        let out = gress().args(["checkpoint", cmd, s(&loc), &torn]).output()?;
        assert_eq!(out.status.code(), Some(3), "{cmd}");
        assert!(
            String::from_utf8(out.stderr)?.contains("is damaged"),
            "{cmd}"
        );
    }

    // A damaged snapshot file.
    let good = tmp.path().join("good.snap");
    let backend = MemoryStateBackend::new(MemoryConfig::default())?;
    for i in 0..2000 {
        backend.put(&key(i), &value(i, 0))?;
    }
    std::fs::write(&good, backend.snapshot()?)?;
    let mut bytes = std::fs::read(&good)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    let bad = tmp.path().join("bad.snap");
    std::fs::write(&bad, &bytes)?;
    gress()
        .args(["snapshot", "inspect", s(&bad)])
        .assert()
        .code(3);
    gress().args(["snapshot", "dump", s(&bad)]).assert().code(3);
    gress()
        .args([
            "snapshot",
            "convert",
            s(&bad),
            s(&tmp.path().join("bad-db")),
        ])
        .assert()
        .code(1);
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&bad, &bytes)?;
    gress()
        .args(["snapshot", "inspect", s(&bad)])
        .assert()
        .code(3);
    std::fs::write(&bad, b"not a snapshot")?;
    gress()
        .args(["snapshot", "inspect", s(&bad)])
        .assert()
        .code(1);
    Ok(())
}

#[test]
fn gc_dry_run_changes_nothing_and_gc_keeps_what_it_says() -> R {
    let tmp = tempfile::tempdir()?;
    let loc = tmp.path().join("checkpoints");
    let expected = make_checkpoints(Arc::new(LocalStorage::new(&loc)?))?;
    // Leftovers of a checkpoint that never committed.
    std::fs::create_dir_all(loc.join("checkpoints/00000000000000000099-00000000000000000001"))?;
    let before = tree(&loc)?;
    let plan = run_json(&["checkpoint", "gc", s(&loc), "--retain", "1", "--dry-run"])?;
    assert_eq!(tree(&loc)?, before, "a dry run changes nothing");
    let place = &plan["places"][0];
    assert_eq!(
        place["checkpoints_to_delete"]
            .as_array()
            .ok_or("ids")?
            .len(),
        2
    );
    assert_eq!(place["kept"].as_array().ok_or("kept")?.len(), 1);

    let done = run_json(&["checkpoint", "gc", s(&loc), "--retain", "1"])?;
    assert!(done["places"][0]["removed"].as_u64().ok_or("removed")? >= 2);
    // The dry run said exactly what would go.
    let after = tree(&loc)?;
    let gone: Vec<String> = before
        .keys()
        .filter(|p| !after.contains_key(*p))
        .map(|p| p.strip_prefix(&loc).map(|r| r.display().to_string()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        // The manager's fencing token is renewed by any opening.
        .filter(|p| !p.starts_with("fence/"))
        .collect();
    let mut said: Vec<String> = place["files_to_delete"]
        .as_array()
        .ok_or("files")?
        .iter()
        .filter_map(|f| f.as_str().map(String::from))
        .chain(
            place["checkpoints_to_delete"]
                .as_array()
                .ok_or("ids")?
                .iter()
                .filter_map(|id| id.as_u64())
                .map(gress_checkpoint::manifest::manifest_path),
        )
        .collect();
    said.sort();
    let mut gone = gone;
    gone.sort();
    assert_eq!(gone, said, "deleted what the dry run listed, nothing else");
    let list = run_json(&["checkpoint", "list", s(&loc)])?;
    assert_eq!(list["checkpoints"].as_array().ok_or("cps")?.len(), 1);
    assert_eq!(list["checkpoints"][0]["id"], place["kept"][0]);
    run_json(&["checkpoint", "verify", s(&loc), "--all"])?;
    let snap = tmp.path().join("after-gc.snap");
    run_json(&["checkpoint", "restore", s(&loc), "--to-snapshot", s(&snap)])?;
    assert_eq!(
        run_json(&["snapshot", "inspect", s(&snap)])?["entries"],
        expected.len() as u64
    );
    let again = run_json(&["checkpoint", "gc", s(&loc), "--retain", "1", "--dry-run"])?;
    assert_eq!(again["places"][0]["files_to_delete"], serde_json::json!([]));
    gress()
        .args(["checkpoint", "gc", s(&loc), "--retain", "0"])
        .assert()
        .code(2);
    Ok(())
}

#[test]
fn read_only_commands_run_beside_a_checkpointing_job_and_change_nothing() -> R {
    use gress_stream::{EpochPolicy, GeneratorSource, JobConfig, run};

    let tmp = tempfile::tempdir()?;
    let loc = tmp.path().join("job");
    let collected = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let into = Arc::clone(&collected);
    let job_loc = loc.clone();
    let job = std::thread::spawn(move || {
        let config = JobConfig::new("beside")
            .with_workers(2)
            .with_checkpoint_dir(job_loc)
            .with_epochs(EpochPolicy::Records(2_000));
        run(config, move |job| {
            job.source(
                "numbers",
                GeneratorSource::new(4, Some(300_000), |p, i| (p as u64 * 7 + i) % 1000),
            )?
            .key_by(|v: &u64| *v)
            .count("count")
            .sink("out", gress_stream::CollectSink::new(Arc::clone(&into)))
        })
    });
    // Wait for the first commit.
    let commits = loc.join("commits");
    while std::fs::read_dir(&commits).map_or(true, |mut d| d.next().is_none()) {
        assert!(!job.is_finished(), "the job ended before committing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut rounds = 0;
    while !job.is_finished() {
        let list = run_json(&["checkpoint", "list", s(&loc)])?;
        assert_eq!(list["kind"], "job");
        for w in ["0", "1"] {
            run_json(&["checkpoint", "inspect", s(&loc), "--worker", w])?;
        }
        let verified = gress()
            .args(["checkpoint", "verify", s(&loc), "--json"])
            .output()?;
        assert_eq!(
            verified.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&verified.stdout)
        );
        // Sweeping is refused while the job holds the location.
        if !job.is_finished() {
            let gc = gress()
                .args(["checkpoint", "gc", s(&loc), "--retain", "1"])
                .output()?;
            // So is its dry run: it answers what the real run would do.
            let dry = gress()
                .args(["checkpoint", "gc", s(&loc), "--retain", "1", "--dry-run"])
                .output()?;
            if !job.is_finished() {
                assert_eq!(gc.status.code(), Some(1));
                assert_eq!(dry.status.code(), Some(1));
                let said = String::from_utf8_lossy(&dry.stderr);
                assert!(said.contains("in use"), "{said}");
            }
        }
        rounds += 1;
    }
    let report = job.join().map_err(|_| "job panicked")??;
    assert!(rounds >= 1);
    // The job saw nothing of it: its result is that of any run.
    let counts: BTreeMap<u64, u64> = std::mem::take(&mut *collected.lock()).into_iter().fold(
        BTreeMap::new(),
        |mut m, (k, n)| {
            let e = m.entry(k).or_insert(0);
            *e = (*e).max(n);
            m
        },
    );
    assert_eq!(counts.len(), 1000);
    assert_eq!(counts.values().sum::<u64>(), 1_200_000);
    assert!(report.last_committed.is_some());
    run_json(&["checkpoint", "verify", s(&loc), "--all"])?;
    // The ended input's watermark reads as such, not as u64::MAX.
    let shown = gress()
        .args(["checkpoint", "inspect", s(&loc), "--worker", "0"])
        .output()?;
    let shown = String::from_utf8(shown.stdout)?;
    assert!(shown.contains("watermark/count = end of input"), "{shown}");
    assert!(!shown.contains(&u64::MAX.to_string()), "{shown}");

    // Damage in a worker's committed checkpoint is found and named.
    let manifest = run_json(&["checkpoint", "inspect", s(&loc), "--worker", "1"])?;
    let file = manifest["backends"][0]["files"][0]["path"]
        .as_str()
        .ok_or("path")?
        .to_string();
    let path = loc.join("workers/00001").join(&file);
    let len = std::fs::metadata(&path)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(len - 1)?;
    let out = gress().args(["checkpoint", "verify", s(&loc)]).output()?;
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("worker 1") && text.contains(&file), "{text}");
    Ok(())
}

#[test]
fn checkpoints_on_s3_are_listed_verified_and_damage_is_found() -> R {
    let server = MotoServer::start()?;
    let config = server.bucket("ops")?.with_prefix("jobs/orders");
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(config)?);
    let expected = make_checkpoints(Arc::clone(&storage))?;
    // `gress` with the server's endpoint and keys in its environment.
    let gress_s3 = || {
        let mut c = gress();
        c.env("AWS_ENDPOINT_URL", server.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true");
        c
    };
    let url = "s3://ops/jobs/orders";
    let list = json_of(
        &gress_s3()
            .args(["checkpoint", "list", url, "--json"])
            .output()?
            .stdout,
    )?;
    assert_eq!(
        list["checkpoints"].as_array().ok_or("cps")?.len(),
        3,
        "{list}"
    );

    gress_s3()
        .args(["checkpoint", "verify", url, "--all"])
        .assert()
        .code(0);

    let tmp = tempfile::tempdir()?;
    let snap = tmp.path().join("s3.snap");
    gress_s3()
        .args(["checkpoint", "restore", url, "--to-snapshot", s(&snap)])
        .assert()
        .code(0);
    let info = run_json(&["snapshot", "inspect", s(&snap)])?;
    assert_eq!(info["entries"], expected.len() as u64);

    // Damage one object of the newest checkpoint.
    let newest = list["checkpoints"][2]["id"].as_u64().ok_or("id")?;
    let manifest = json_of(
        &gress_s3()
            .args(["checkpoint", "inspect", url, &newest.to_string(), "--json"])
            .output()?
            .stdout,
    )?;
    let path = manifest["backends"][0]["files"][0]["path"]
        .as_str()
        .ok_or("path")?
        .to_string();
    let mut bytes = storage.read_all(&path, 1 << 30)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    storage.delete(&path)?;
    storage.put_new(&path, &bytes)?;
    let out = gress_s3().args(["checkpoint", "verify", url]).output()?;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8(out.stdout)?.contains(&path));

    // Sweeping on S3: the dry run deletes nothing, the sweep keeps one.
    let objects = storage.list("")?.len();
    let plan = json_of(
        &gress_s3()
            .args([
                "checkpoint",
                "gc",
                url,
                "--retain",
                "1",
                "--dry-run",
                "--json",
            ])
            .output()?
            .stdout,
    )?;
    assert_eq!(plan["places"][0]["kept"], serde_json::json!([newest]));
    assert_eq!(storage.list("")?.len(), objects);
    // The only checkpoint gc would keep is damaged: it refuses.
    let refused = gress_s3()
        .args(["checkpoint", "gc", url, "--retain", "1", "--verify"])
        .output()?;
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8(refused.stderr)?.contains("is intact"));
    assert_eq!(storage.list("")?.len(), objects);
    // Its dry run is refused alike.
    let dry = gress_s3()
        .args([
            "checkpoint",
            "gc",
            url,
            "--retain",
            "1",
            "--verify",
            "--dry-run",
        ])
        .output()?;
    assert_eq!(dry.status.code(), Some(3));
    assert!(String::from_utf8(dry.stderr)?.contains("is intact"));
    // Keeping an intact one too, it sweeps.
    gress_s3()
        .args(["checkpoint", "gc", url, "--retain", "2", "--verify"])
        .assert()
        .code(0);
    let after = json_of(
        &gress_s3()
            .args(["checkpoint", "list", url, "--json"])
            .output()?
            .stdout,
    )?;
    assert_eq!(after["checkpoints"].as_array().ok_or("cps")?.len(), 2);

    // A bucket that is not there: a clear failure.
    gress_s3()
        .args(["checkpoint", "list", "s3://no-such-bucket/x"])
        .assert()
        .code(1);
    Ok(())
}

#[test]
fn bench_prints_json_and_draws_a_plot() -> R {
    let tmp = tempfile::tempdir()?;
    let svg = tmp.path().join("memory.svg");
    let saved = tmp.path().join("memory.json");
    let doc = run_json(&[
        "bench",
        "memory",
        "--sizes",
        "1000",
        "--threads",
        "1",
        "--ops",
        "20000",
        "--rounds",
        "1",
        "--plot",
        s(&svg),
        "--save",
        s(&saved),
    ])?;
    let rows = doc["rows"].as_array().ok_or("rows")?;
    assert!(
        rows.iter()
            .any(|r| r["subject"] == "memory" && r["op"] == "get_hit")
    );
    assert!(
        rows.iter()
            .all(|r| r["ops_per_sec"].as_f64().is_some_and(|v| v > 0.0))
    );
    let plot = std::fs::read_to_string(&svg)?;
    assert!(plot.starts_with("<svg") && plot.contains("throughput") && plot.contains("p99"));
    assert_eq!(json_of(&std::fs::read(&saved)?)?, doc);
    Ok(())
}

#[test]
fn help_shows_examples_and_exit_codes() -> R {
    let out = gress().arg("--help").output()?;
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.contains("Exit codes") && text.contains("Examples"),
        "{text}"
    );
    for cmd in [
        vec!["checkpoint", "verify"],
        vec!["snapshot", "dump"],
        vec!["db", "scan"],
        vec!["bench"],
    ] {
        let out = gress().args(&cmd).arg("--help").output()?;
        assert!(
            String::from_utf8(out.stdout)?.contains("Examples"),
            "{cmd:?}"
        );
    }
    gress().arg("no-such-command").assert().code(2);
    Ok(())
}

#[test]
fn rocksdb_checkpoints_restore_into_a_snapshot_and_a_new_directory() -> R {
    let tmp = tempfile::tempdir()?;
    let loc = tmp.path().join("checkpoints");
    let backend = Arc::new(RocksDbStateBackend::open(RocksDbConfig::new(
        tmp.path().join("live"),
    ))?);
    let manager = CheckpointManager::open(
        Arc::new(LocalStorage::new(&loc)?),
        CheckpointConfig::default(),
    )?;
    manager.register("rocks", backend.clone())?;
    for i in 0..KEYS {
        backend.put(&key(i), &value(i, 1))?;
    }
    manager.trigger_checkpoint(BTreeMap::new())?;
    for i in 0..KEYS / 2 {
        backend.delete(&key(i))?;
    }
    manager.trigger_checkpoint(BTreeMap::new())?;
    drop(manager);

    let list = run_json(&["checkpoint", "list", s(&loc)])?;
    assert_eq!(
        list["checkpoints"][0]["backends"][0]["format"],
        "rocksdb-v1"
    );
    let snap = tmp.path().join("rocks.snap");
    run_json(&["checkpoint", "restore", s(&loc), "--to-snapshot", s(&snap)])?;
    assert_eq!(
        run_json(&["snapshot", "inspect", s(&snap)])?["entries"],
        KEYS - KEYS / 2
    );
    // The older checkpoint, into a new directory, while the live one is
    // still open in this process.
    let first = list["checkpoints"][0]["id"]
        .as_u64()
        .ok_or("id")?
        .to_string();
    let dir = tmp.path().join("restored");
    // An empty directory made beforehand is fine; a non-empty one is not.
    std::fs::create_dir(&dir)?;
    run_json(&[
        "checkpoint",
        "restore",
        s(&loc),
        &first,
        "--to-rocksdb",
        s(&dir),
    ])?;
    gress()
        .args(["checkpoint", "restore", s(&loc), "--to-rocksdb", s(&dir)])
        .assert()
        .code(1);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".gress-restoring")
        })
        .collect();
    assert!(leftovers.is_empty(), "the scratch directory is gone");
    let counted = run_json(&["db", "stats", s(&dir), "--count"])?;
    assert_eq!(counted["entries"], KEYS);
    let got = run_json(&["db", "get", s(&dir), "user:00000"])?;
    assert_eq!(got["value"], "v1-0");
    Ok(())
}
