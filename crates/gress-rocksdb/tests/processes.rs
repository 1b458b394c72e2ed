//! Tests that need a second process: a writer killed with SIGKILL after
//! acknowledged writes, a restore killed half-way, the lock held by another
//! process, and a directory the process may not enter.
//!
//! The second process is this test binary again, running the ignored test
//! `child` with its role in `GRESS_CHILD_ROLE`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::{Error, KeyRange, MemoryStateBackend, Result, StateBackend, WriteBatch};

const ROLE: &str = "GRESS_CHILD_ROLE";
const PATH: &str = "GRESS_CHILD_PATH";

fn config(path: &Path) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path);
    c.write_buffer_size = 4 << 20;
    c.block_cache_size = 8 << 20;
    c
}

fn spawn_child(exe: &Path, role: &str, path: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args([
        "--ignored",
        "--exact",
        "child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .env(PATH, path)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

/// Reads the child's stdout lines until one satisfies `stop`; returns the
/// lines read.
fn read_until(child: &mut Child, mut stop: impl FnMut(&str) -> bool) -> Vec<String> {
    let out = child.stdout.as_mut().expect("piped stdout");
    let mut lines = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line.expect("child stdout");
        // libtest prints "test child ... " with no newline before the
        // child's first line.
        let line = line
            .rsplit("test child ... ")
            .next()
            .unwrap_or_default()
            .to_string();
        let done = stop(&line);
        lines.push(line);
        if done {
            break;
        }
    }
    lines
}

/// Not a test: the body of the child processes the other tests start.
#[test]
#[ignore = "run by the other tests of this file as a child process"]
fn child() -> Result<()> {
    let (Ok(role), Some(path)) = (std::env::var(ROLE), std::env::var_os(PATH)) else {
        return Ok(());
    };
    let path = PathBuf::from(path);
    match role.as_str() {
        "writer" => {
            let backend = RocksDbStateBackend::open(config(&path))?;
            for i in 0u64.. {
                let mut batch = WriteBatch::new();
                batch
                    .put(format!("a-{i:08}"), i.to_be_bytes())
                    .put(format!("b-{i:08}"), i.to_be_bytes());
                backend.write_batch(&batch)?;
                backend.put(b"last", &i.to_be_bytes())?;
                println!("ack {i}");
            }
        }
        "restorer" => {
            let backend = RocksDbStateBackend::open(config(&path))?;
            let snapshot = std::fs::read(path.with_extension("snap")).expect("snapshot file");
            println!("restoring");
            loop {
                backend.restore(&snapshot)?;
            }
        }
        "holder" => {
            let _backend = RocksDbStateBackend::open(config(&path))?;
            println!("open");
            std::thread::sleep(Duration::from_secs(600));
        }
        "checkpointer" => {
            use gress_checkpoint::{CheckpointConfig, CheckpointManager, LocalStorage, Metadata};
            use std::sync::Arc;
            use std::sync::atomic::{AtomicU64, Ordering};
            let backend = Arc::new(RocksDbStateBackend::open(config(&path.join("db")))?);
            let storage =
                Arc::new(LocalStorage::new(path.join("cp")).map_err(gress_state::Error::from)?);
            let m = CheckpointManager::open(
                storage,
                CheckpointConfig::default()
                    .with_interval(Duration::from_millis(10))
                    .with_retain(2),
            )
            .map_err(gress_state::Error::from)?;
            m.register("state", backend.clone())
                .map_err(gress_state::Error::from)?;
            if m.latest().is_some() {
                m.restore_latest().map_err(gress_state::Error::from)?;
            }
            let round = Arc::new(AtomicU64::new(round_of_state(&*backend)));
            let r2 = round.clone();
            m.start_periodic(move || {
                Metadata::from([("round".into(), r2.load(Ordering::SeqCst).to_string())])
            })
            .map_err(gress_state::Error::from)?;
            println!("started");
            loop {
                let r = round.load(Ordering::SeqCst) + 1;
                backend.write_batch(&round_batch(r))?;
                round.store(r, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        "opener" => match RocksDbStateBackend::open(config(&path)) {
            Ok(_) => println!("result ok"),
            Err(Error::Io { source, .. }) => println!("result io {:?}", source.kind()),
            Err(Error::Locked { .. }) => println!("result locked"),
            Err(e) => println!("result other {e}"),
        },
        other => panic!("unknown child role {other}"),
    }
    Ok(())
}

/// Every write acknowledged before a SIGKILL is there after reopening (WAL
/// on, no fsync: a process crash loses nothing acknowledged), and no batch
/// is half applied.
#[test]
fn acknowledged_writes_survive_sigkill() -> Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let exe = std::env::current_exe().expect("test binary");
    for (round, kill_after) in [200u64, 3_000, 12_000].into_iter().enumerate() {
        let mut child = spawn_child(&exe, "writer", &path)
            .spawn()
            .expect("spawn writer");
        let lines = read_until(&mut child, |l| l == format!("ack {kill_after}"));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let acked: u64 = lines
            .iter()
            .filter_map(|l| l.strip_prefix("ack ")?.parse().ok())
            .max()
            .expect("some acks");

        let backend = RocksDbStateBackend::open(config(&path))?;
        let last = backend.get(b"last")?.expect("last write");
        let last = u64::from_be_bytes(last.try_into().expect("8 bytes"));
        assert!(
            last >= acked,
            "round {round}: acked {acked}, recovered only {last}"
        );
        let a = backend.scan_prefix(b"a-")?.count();
        let b = backend.scan_prefix(b"b-")?.count();
        assert_eq!(a, b, "round {round}: a batch was half applied");
        // Each round appends after the previous one's writes.
        assert!(backend.get(format!("a-{acked:08}").as_bytes())?.is_some());
        drop(backend);
    }
    Ok(())
}

/// A restore killed at any moment leaves either the old state or the
/// snapshot's, never a mix or an empty database.
#[test]
fn restore_killed_half_way_leaves_old_or_new_state() -> Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let exe = std::env::current_exe().expect("test binary");
    let source = MemoryStateBackend::default();
    for i in 0..60_000u32 {
        source.put(format!("new-{i:06}").as_bytes(), &[3u8; 100])?;
    }
    std::fs::write(path.with_extension("snap"), source.snapshot()?).expect("write snapshot");
    {
        let backend = RocksDbStateBackend::open(config(&path))?;
        for i in 0..1_000u32 {
            backend.put(format!("old-{i:06}").as_bytes(), b"old")?;
        }
    }
    let mut saw_new = false;
    for delay_ms in [5u64, 40, 120, 300, 700] {
        let mut child = spawn_child(&exe, "restorer", &path)
            .spawn()
            .expect("spawn restorer");
        read_until(&mut child, |l| l == "restoring");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let backend = RocksDbStateBackend::open(config(&path))?;
        let old = backend.scan_prefix(b"old-")?.count();
        let new = backend.scan_prefix(b"new-")?.count();
        assert!(
            (old, new) == (1_000, 0) || (old, new) == (0, 60_000),
            "after a kill at {delay_ms} ms: {old} old and {new} new entries"
        );
        saw_new |= new > 0;
        assert_eq!(backend.scan(KeyRange::all())?.count(), old + new);
    }
    eprintln!("a killed restore had completed in some round: {saw_new}");
    Ok(())
}

/// A database open in another process is `Locked`, and opens once that
/// process is gone; in the same process, a second open is `Locked` too.
#[test]
fn locked_by_another_process() -> Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let exe = std::env::current_exe().expect("test binary");
    let mut holder = spawn_child(&exe, "holder", &path)
        .spawn()
        .expect("spawn holder");
    read_until(&mut holder, |l| l == "open");
    let err = RocksDbStateBackend::open(config(&path)).expect_err("opened a locked database");
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    holder.kill().expect("SIGKILL");
    holder.wait().expect("reap");

    let first = RocksDbStateBackend::open(config(&path))?;
    let err = RocksDbStateBackend::open(config(&path)).expect_err("opened twice");
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    first.close()?;
    RocksDbStateBackend::open(config(&path))?;
    Ok(())
}

/// A directory the process may not enter is an I/O error of kind
/// `PermissionDenied`, not a panic. As root (who may enter anything), the
/// child runs as user `nobody`.
#[test]
fn directory_without_permission() -> Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    open(dir.path(), 0o755);
    let forbidden = dir.path().join("forbidden");
    std::fs::create_dir(&forbidden).expect("mkdir");
    open(&forbidden, 0o000);
    // A copy of this binary that `nobody` may run.
    let exe = dir.path().join("child-exe");
    std::fs::copy(std::env::current_exe().expect("test binary"), &exe).expect("copy exe");
    open(&exe, 0o755);
    let mut cmd = spawn_child(&exe, "opener", &forbidden.join("db"));
    // SAFETY-free: uid/gid are plain std APIs; they only apply when root.
    if unsafe_free_is_root() {
        cmd.uid(65534).gid(65534);
    }
    let mut child = cmd.spawn().expect("spawn opener");
    let lines = read_until(&mut child, |l| l.starts_with("result "));
    child.wait().expect("reap");
    open(&forbidden, 0o755);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("result io PermissionDenied")
    );
    Ok(())
}

fn unsafe_free_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// One round of writes as an atomic batch that records its round number.
fn round_batch(round: u64) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for i in 0..100u64 {
        let k = (round * 7919 + i * 104_729) % 2000;
        batch.put(format!("key-{k:04}"), format!("r{round}-i{i}"));
    }
    for i in 0..10u64 {
        batch.delete(format!("key-{:04}", (round * 31 + i * 53) % 2000));
    }
    batch.put("round", round.to_string());
    batch
}

fn round_of_state(b: &dyn StateBackend) -> u64 {
    b.get(b"round")
        .expect("get")
        .map_or(0, |v| String::from_utf8_lossy(&v).parse().expect("round"))
}

/// A RocksDB writer that checkpoints every 10 ms is killed with SIGKILL at
/// random moments, 15 times; each time, the newest checkpoint restores into
/// a fresh database, and its state is exactly one whole round.
#[test]
fn checkpointing_writer_killed_at_random_moments() -> Result<()> {
    use gress_checkpoint::manifest;
    use gress_checkpoint::{CheckpointConfig, CheckpointManager, LocalStorage, Storage};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut last = 0;
    for kill in 0..15 {
        let mut child = spawn_child(&exe, "checkpointer", dir.path())
            .spawn()
            .expect("spawn");
        read_until(&mut child, |l| l == "started");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 200));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::new(dir.path().join("cp")).expect("storage"));
        let newest = storage
            .list(manifest::MANIFESTS)
            .expect("list")
            .iter()
            .filter_map(|o| manifest::id_of_manifest_path(&o.path))
            .max();
        let Some(newest) = newest else {
            continue;
        };
        let fresh_dir = tempfile::tempdir().expect("temp dir");
        let fresh = Arc::new(RocksDbStateBackend::open(config(fresh_dir.path()))?);
        let m = CheckpointManager::open(storage, CheckpointConfig::default().with_retain(2))
            .map_err(gress_state::Error::from)?;
        m.register("state", fresh.clone())
            .map_err(gress_state::Error::from)?;
        let info = m.restore_latest().map_err(gress_state::Error::from)?;
        assert_eq!(
            info.id, newest,
            "kill {kill}: the newest checkpoint did not restore"
        );
        let round = round_of_state(&*fresh);
        let expected = MemoryStateBackend::default();
        for r in 1..=round {
            expected.write_batch(&round_batch(r))?;
        }
        let dump = |b: &dyn StateBackend| -> Result<Vec<_>> { b.scan(KeyRange::all())?.collect() };
        assert_eq!(
            dump(&*fresh)?,
            dump(&expected)?,
            "kill {kill}: not a whole round"
        );
        assert!(
            round >= last,
            "kill {kill}: went back from {last} to {round}"
        );
        last = round;
    }
    assert!(last > 0, "no checkpoint was ever committed");
    println!("15 kills; recovered up to round {last}");
    Ok(())
}
