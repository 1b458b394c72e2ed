//! The RocksDB backend under the checkpoint manager: incremental
//! checkpoints that store only new SST files, restores that swap in a
//! database assembled from a checkpoint, savepoints across backend types,
//! and a writer killed at random moments.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gress_checkpoint::{
    Catalog, CheckpointConfig, CheckpointManager, LocalStorage, Metadata, Storage,
};
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::{KeyRange, MemoryStateBackend, StateBackend, WriteBatch};

type R = Result<(), Box<dyn std::error::Error>>;

fn config(path: &Path) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path);
    c.write_buffer_size = 16 << 20;
    c.block_cache_size = 32 << 20;
    c
}

fn dump(b: &dyn StateBackend) -> Vec<(Vec<u8>, Vec<u8>)> {
    b.scan(KeyRange::all())
        .expect("scan")
        .collect::<gress_state::Result<_>>()
        .expect("item")
}

fn digest(b: &dyn StateBackend) -> (usize, u64) {
    let mut n = 0;
    let mut h = 0u64;
    for kv in b.scan(KeyRange::all()).expect("scan") {
        let (k, v) = kv.expect("item");
        n += 1;
        h = h.wrapping_add(u64::from(crc32c::crc32c(
            &[k.as_slice(), v.as_slice()].concat(),
        )));
    }
    (n, h)
}

fn storage(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(LocalStorage::new(dir).expect("storage"))
}

fn meta(round: u64) -> Metadata {
    Metadata::from([("round".to_string(), round.to_string())])
}

fn load(b: &RocksDbStateBackend, n: u64) -> R {
    let mut batch = WriteBatch::new();
    for i in 0..n {
        batch.put(i.to_be_bytes(), [(i % 251) as u8; 100]);
        if batch.len() == 10_000 {
            b.write_batch(&batch)?;
            batch.clear();
        }
    }
    b.write_batch(&batch)?;
    Ok(())
}

/// After 1% of a 1M-key RocksDB state changes, an incremental checkpoint
/// uploads only the new SST files (about 1% of the first checkpoint's
/// bytes), and each retained checkpoint restores exactly its state.
#[test]
fn incremental_checkpoints_upload_only_new_sst_files() -> R {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir()?;
    let backend = Arc::new(RocksDbStateBackend::open(config(&dir.path().join("db")))?);
    let m = CheckpointManager::open(storage(&dir.path().join("cp")), CheckpointConfig::default())?;
    m.register("state", backend.clone())?;
    load(&backend, N)?;
    backend.compact()?;
    let first = m.trigger_checkpoint(meta(0))?;
    let mut expected = vec![(first.info.id, digest(&*backend))];
    let mut ratios = Vec::new();
    for round in 1..=2u64 {
        let mut batch = WriteBatch::new();
        for j in 0..N / 100 {
            let k = (j * 97 + round * 13) % N;
            if j % 10 == 0 {
                batch.delete(k.to_be_bytes());
            } else {
                batch.put(k.to_be_bytes(), [round as u8; 100]);
            }
        }
        backend.write_batch(&batch)?;
        let r = m.trigger_checkpoint(meta(round))?;
        assert!(r.files_reused > 0, "round {round}: no SST file was shared");
        ratios.push(r.bytes_written as f64 / first.bytes_written as f64);
        expected.push((r.info.id, digest(&*backend)));
    }
    println!(
        "RocksDB: first checkpoint {} bytes; 1% changes uploaded {:.4} and {:.4} of that",
        first.bytes_written, ratios[0], ratios[1]
    );
    for r in &ratios {
        assert!(*r < 0.05, "incremental checkpoint wrote {r} of a full one");
    }
    // Beside the running manager, read-only.
    let catalog = Catalog::open(m.storage().clone())?;
    for (id, want) in expected {
        let fresh_dir = tempfile::tempdir()?;
        let fresh = RocksDbStateBackend::open(config(fresh_dir.path()))?;
        fresh.put(b"not in any checkpoint", b"x")?;
        catalog.restore_into(id, &[("state", &fresh)], false)?;
        assert_eq!(digest(&fresh), want, "checkpoint {id}");
    }
    Ok(())
}

/// Shared SST files used to be reused on the strength of in-memory
/// reference counts alone: one deleted behind the manager's back was named
/// by the next manifest, which then could not restore. Now a reused file
/// is checked first and stored again if it is gone.
#[test]
fn a_vanished_shared_file_is_stored_again() -> R {
    let dir = tempfile::tempdir()?;
    let backend = Arc::new(RocksDbStateBackend::open(config(&dir.path().join("db")))?);
    let cp = storage(&dir.path().join("cp"));
    let m = CheckpointManager::open(cp.clone(), CheckpointConfig::default())?;
    m.register("state", backend.clone())?;
    load(&backend, 10_000)?;
    let first = m.trigger_checkpoint(meta(1))?;
    let catalog = Catalog::open(cp.clone())?;
    let sst = catalog
        .manifest(first.info.id)
        .and_then(|man| {
            man.paths()
                .find(|f| f.path.ends_with(".sst"))
                .map(|f| f.path.clone())
        })
        .ok_or("no SST in the first checkpoint")?;
    cp.delete(&sst)?;
    backend.put(b"after", b"the loss")?;
    let second = m.trigger_checkpoint(meta(2))?;
    let want = digest(&*backend);
    let fresh_dir = tempfile::tempdir()?;
    let fresh = RocksDbStateBackend::open(config(fresh_dir.path()))?;
    Catalog::open(cp)?.restore_into(second.info.id, &[("state", &fresh)], false)?;
    assert_eq!(digest(&fresh), want);
    Ok(())
}

/// A restore from a checkpoint replaces the live database and survives a
/// reopen; the replaced database's directory is removed.
#[test]
fn restored_database_is_live_after_reopen() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    let cp = storage(&dir.path().join("cp"));
    {
        let backend = Arc::new(RocksDbStateBackend::open(config(&path))?);
        let m = CheckpointManager::open(cp.clone(), CheckpointConfig::default())?;
        m.register("state", backend.clone())?;
        backend.put(b"k", b"checkpointed")?;
        m.trigger_checkpoint(meta(1))?;
        backend.put(b"k", b"after")?;
        backend.put(b"extra", b"after")?;
        m.restore_latest()?;
        assert_eq!(
            dump(&*backend),
            vec![(b"k".to_vec(), b"checkpointed".to_vec())]
        );
        backend.put(b"after-restore", b"1")?;
    }
    let dbs: Vec<_> = std::fs::read_dir(&path)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("db-"))
        .collect();
    assert_eq!(dbs.len(), 1, "old database left behind: {dbs:?}");
    let backend = RocksDbStateBackend::open(config(&path))?;
    assert_eq!(
        dump(&backend),
        vec![
            (b"after-restore".to_vec(), b"1".to_vec()),
            (b"k".to_vec(), b"checkpointed".to_vec())
        ]
    );
    Ok(())
}

/// A savepoint is portable: RocksDB to memory and back.
#[test]
fn savepoint_moves_between_backend_types() -> R {
    let dir = tempfile::tempdir()?;
    let cp = storage(&dir.path().join("cp"));
    let rocks = Arc::new(RocksDbStateBackend::open(config(&dir.path().join("db")))?);
    for i in 0..1000u32 {
        rocks.put(&i.to_be_bytes(), format!("v{i}").as_bytes())?;
    }
    let m = CheckpointManager::open(cp.clone(), CheckpointConfig::default())?;
    m.register("state", rocks.clone())?;
    m.trigger_savepoint("from-rocksdb", meta(1))?;

    drop(m);
    let memory = Arc::new(MemoryStateBackend::default());
    let m2 = CheckpointManager::open(cp.clone(), CheckpointConfig::default())?;
    m2.register("state", memory.clone())?;
    m2.restore_savepoint("from-rocksdb")?;
    assert_eq!(dump(&*memory), dump(&*rocks));
    memory.put(b"added in memory", b"x")?;
    m2.trigger_savepoint("from-memory", meta(2))?;

    drop(m2);
    let rocks2 = Arc::new(RocksDbStateBackend::open(config(&dir.path().join("db2")))?);
    let m3 = CheckpointManager::open(cp, CheckpointConfig::default())?;
    m3.register("state", rocks2.clone())?;
    m3.restore_savepoint("from-memory")?;
    assert_eq!(dump(&*rocks2), dump(&*memory));
    Ok(())
}

/// Writers keep going while a checkpoint of 1M keys is taken and uploaded;
/// reports how long the native checkpoint took and the slowest put.
#[test]
fn writers_run_during_a_rocksdb_checkpoint() -> R {
    let dir = tempfile::tempdir()?;
    let backend = Arc::new(RocksDbStateBackend::open(config(&dir.path().join("db")))?);
    let m = CheckpointManager::open(storage(&dir.path().join("cp")), CheckpointConfig::default())?;
    m.register("state", backend.clone())?;
    load(&backend, 1_000_000)?;
    let done = AtomicBool::new(false);
    let puts = AtomicU64::new(0);
    let slowest = AtomicU64::new(0);
    let (report, during) = std::thread::scope(|s| -> Result<_, Box<dyn std::error::Error>> {
        let writer = s.spawn(|| {
            let mut i = 0u64;
            while !done.load(Ordering::Acquire) {
                let t = Instant::now();
                backend
                    .put(format!("side-{}", i % 10_000).as_bytes(), b"x")
                    .expect("put");
                slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                puts.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        let before = puts.load(Ordering::Relaxed);
        let report = m.trigger_checkpoint(meta(1));
        let during = puts.load(Ordering::Relaxed) - before;
        done.store(true, Ordering::Release);
        writer.join().expect("writer");
        Ok((report?, during))
    })?;
    println!(
        "RocksDB 1M keys: native checkpoint {:?}, whole checkpoint {:?}, {} puts meanwhile, slowest put {} us",
        report.max_pause,
        report.duration,
        during,
        slowest.load(Ordering::Relaxed)
    );
    assert!(
        during > 1_000,
        "the writer was blocked during the checkpoint ({during} puts)"
    );
    Ok(())
}

/// Incremental RocksDB checkpoints on a real S3 API (moto_server): the
/// second checkpoint shares the first's SST files, and both restore.
#[test]
fn incremental_rocksdb_checkpoints_on_s3() -> R {
    use gress_checkpoint::S3Storage;
    use gress_checkpoint::storage::s3::testing::MotoServer;
    let server = MotoServer::start()?;
    let s3: Arc<dyn Storage> = Arc::new(S3Storage::new(server.bucket("rocksdb")?)?);
    let dir = tempfile::tempdir()?;
    let backend = Arc::new(RocksDbStateBackend::open(config(&dir.path().join("db")))?);
    let m = CheckpointManager::open(s3.clone(), CheckpointConfig::default())?;
    m.register("state", backend.clone())?;
    load(&backend, 100_000)?;
    let first = m.trigger_checkpoint(meta(1))?;
    let want_first = digest(&*backend);
    backend.put(b"changed", b"after the first checkpoint")?;
    let second = m.trigger_checkpoint(meta(2))?;
    assert!(second.files_reused > 0, "no SST shared on S3");
    assert!(second.bytes_written * 10 < first.bytes_written);
    let want_second = digest(&*backend);
    let catalog = Catalog::open(s3.clone())?;
    for (id, want) in [(first.info.id, want_first), (second.info.id, want_second)] {
        let fresh_dir = tempfile::tempdir()?;
        let fresh = RocksDbStateBackend::open(config(fresh_dir.path()))?;
        catalog.restore_into(id, &[("state", &fresh)], false)?;
        assert_eq!(digest(&fresh), want, "checkpoint {id}");
    }
    Ok(())
}

/// A RocksDB backend is captured only by the one manager that claimed it:
/// a capture by an owner that has not claimed it is refused, a second
/// owner's claim and captures are refused while the first holds it, and a
/// release (by the holder only) hands it over. Two managers registering
/// one backend meet the same rule.
#[test]
fn only_the_claiming_owner_captures() -> R {
    use gress_state::checkpoint::{CaptureMode, Checkpointable};
    use gress_state::{Error, Result};
    fn refused<T>(r: Result<T>) -> bool {
        matches!(r, Err(Error::InvalidArgument { .. }))
    }
    let dir = tempfile::tempdir()?;
    let backend = Arc::new(RocksDbStateBackend::open(config(&dir.path().join("db")))?);
    backend.put(b"k", b"v")?;

    assert!(refused(backend.capture(1, CaptureMode::Full, 1)));
    backend.claim_checkpoints(1)?;
    backend.claim_checkpoints(1)?;
    assert!(refused(backend.claim_checkpoints(2)));
    assert!(refused(backend.capture(2, CaptureMode::Full, 2)));
    let capture = backend.capture(1, CaptureMode::Incremental, 3)?;
    assert_eq!(capture.base(), None);
    assert!(capture.files().iter().any(|f| f.name == "CURRENT"));
    drop(capture);

    backend.release_checkpoints(2);
    assert!(backend.capture(1, CaptureMode::Full, 4).is_ok());
    backend.release_checkpoints(1);
    assert!(refused(backend.capture(1, CaptureMode::Full, 5)));
    backend.claim_checkpoints(2)?;
    assert!(backend.capture(2, CaptureMode::Full, 6).is_ok());
    assert!(refused(backend.capture(1, CaptureMode::Full, 7)));
    backend.release_checkpoints(2);

    let first =
        CheckpointManager::open(storage(&dir.path().join("a")), CheckpointConfig::default())?;
    let second =
        CheckpointManager::open(storage(&dir.path().join("b")), CheckpointConfig::default())?;
    first.register("state", backend.clone())?;
    assert!(second.register("state", backend.clone()).is_err());
    first.trigger_checkpoint(meta(1))?;
    Ok(())
}
