//! RocksDB-specific behaviour: the seed's cases, TTL compaction, checkpoints,
//! prefix bloom filters, memory budget and restore across reopen.

use std::path::Path;
use std::time::Duration;

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::{Error, KeyRange, ManualClock, MemoryStateBackend, Result, StateBackend};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn small(path: &Path) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path);
    c.write_buffer_size = 4 << 20;
    c.block_cache_size = 8 << 20;
    c
}

/// Seed: put, get, delete.
#[test]
fn seed_basic_operations() -> Result<()> {
    let dir = tmp();
    let backend = RocksDbStateBackend::open(small(&dir.path().join("db")))?;
    backend.put(b"key1", b"value1")?;
    assert_eq!(backend.get(b"key1")?.as_deref(), Some(&b"value1"[..]));
    backend.delete(b"key1")?;
    assert_eq!(backend.get(b"key1")?, None);
    Ok(())
}

/// Seed: 100 keys snapshotted and restored into a fresh backend at a new path.
#[test]
fn seed_snapshot_restores_into_a_new_path() -> Result<()> {
    let dir = tmp();
    let a = RocksDbStateBackend::open(small(&dir.path().join("a")))?;
    for i in 0..100 {
        a.put(
            format!("key-{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
        )?;
    }
    let snapshot = a.snapshot()?;
    let b = RocksDbStateBackend::open(small(&dir.path().join("b")))?;
    b.restore(&snapshot)?;
    for i in 0..100 {
        assert_eq!(
            b.get(format!("key-{i}").as_bytes())?,
            Some(format!("value-{i}").into_bytes())
        );
    }
    assert_eq!(b.scan(KeyRange::all())?.count(), 100);
    Ok(())
}

/// Seed: TTL of 100 ms on the real clock: readable at once, gone after 150 ms.
#[test]
fn seed_ttl_on_the_real_clock() -> Result<()> {
    let dir = tmp();
    let backend = RocksDbStateBackend::open(
        small(&dir.path().join("db")).with_ttl(Duration::from_millis(100)),
    )?;
    backend.put(b"ttl-key", b"v")?;
    assert_eq!(backend.get(b"ttl-key")?.as_deref(), Some(&b"v"[..]));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(backend.get(b"ttl-key")?, None);
    Ok(())
}

/// Seed: a checkpoint directory is created, and a backend opens from it
/// with the state as it was, while the source goes on changing.
#[test]
fn seed_checkpoint_is_created_and_openable() -> Result<()> {
    let dir = tmp();
    let backend = RocksDbStateBackend::open(small(&dir.path().join("db")))?;
    for i in 0..500 {
        backend.put(format!("key-{i}").as_bytes(), b"before")?;
    }
    backend.flush()?;
    backend.put(b"key-0", b"in memtable only")?;
    let cp = dir.path().join("checkpoints/cp-1");
    std::fs::create_dir_all(cp.parent().expect("parent")).expect("mkdir");
    backend.create_checkpoint(&cp)?;
    assert!(cp.join("CURRENT").is_file());
    backend.put(b"key-1", b"after the checkpoint")?;

    let err = backend
        .create_checkpoint(&cp)
        .expect_err("existing dir accepted");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    let restored = RocksDbStateBackend::open_checkpoint(&cp, small(&dir.path().join("restored")))?;
    assert_eq!(
        restored.get(b"key-0")?.as_deref(),
        Some(&b"in memtable only"[..])
    );
    assert_eq!(restored.get(b"key-1")?.as_deref(), Some(&b"before"[..]));
    assert_eq!(restored.scan(KeyRange::all())?.count(), 500);
    restored.put(b"key-2", b"changed in the copy")?;
    drop(restored);
    // The checkpoint itself is untouched and opens again.
    let again = RocksDbStateBackend::open_checkpoint(&cp, small(&dir.path().join("again")))?;
    assert_eq!(again.get(b"key-2")?.as_deref(), Some(&b"before"[..]));
    Ok(())
}

/// Seed: after 10 puts, 5 gets and 1 delete the metrics read 10, 5, 1; and
/// RocksDB's statistics come along.
#[test]
fn seed_metrics() -> Result<()> {
    let dir = tmp();
    let backend = RocksDbStateBackend::open(small(&dir.path().join("db")))?;
    for i in 0..10 {
        backend.put(format!("key-{i}").as_bytes(), b"value")?;
    }
    for i in 0..5 {
        backend.get(format!("key-{i}").as_bytes())?;
    }
    backend.delete(b"key-0")?;
    let m = backend.metrics();
    assert_eq!((m.puts, m.gets, m.deletes), (10, 5, 1));
    for name in [
        "block_cache_hit",
        "bytes_written",
        "stall_micros",
        "memtable_hit",
    ] {
        assert!(m.engine.contains_key(name), "missing engine metric {name}");
    }
    assert!(m.engine["bytes_written"] > 0);
    assert!(m.engine["memtable_hit"] >= 5);
    Ok(())
}

/// Seed: 1000 puts, flush, compact; key-100 still reads value-100.
#[test]
fn seed_flush_and_compact_keep_data() -> Result<()> {
    let dir = tmp();
    let backend = RocksDbStateBackend::open(small(&dir.path().join("db")))?;
    for i in 0..1000 {
        backend.put(
            format!("key-{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
        )?;
    }
    backend.flush()?;
    backend.compact()?;
    assert_eq!(backend.get(b"key-100")?.as_deref(), Some(&b"value-100"[..]));
    Ok(())
}

/// Properties: known names answer, unknown names are `None`.
#[test]
fn properties_known_and_unknown() -> Result<()> {
    let dir = tmp();
    let backend = RocksDbStateBackend::open(small(&dir.path().join("db")))?;
    backend.put(b"k", b"v")?;
    for name in [
        "rocksdb.estimate-num-keys",
        "rocksdb.cur-size-all-mem-tables",
        "rocksdb.block-cache-usage",
        "rocksdb.estimate-table-readers-mem",
    ] {
        assert!(backend.property(name)?.is_some(), "{name}");
    }
    assert_eq!(backend.property("rocksdb.no-such-property")?, None);
    backend.close()?;
    assert!(matches!(
        backend.property("rocksdb.estimate-num-keys"),
        Err(Error::Closed)
    ));
    Ok(())
}

/// 10K entries with a short TTL are dropped by the compaction filter once
/// expired for longer than the grace: the key estimate and the SST bytes
/// fall.
#[test]
fn compaction_drops_expired_entries() -> Result<()> {
    let dir = tmp();
    let clock = ManualClock::shared(1_000_000);
    let config = small(&dir.path().join("db")).with_clock(clock.clone());
    let grace = config.ttl_compaction_grace;
    let backend = RocksDbStateBackend::open(config)?;
    let value = [7u8; 100];
    for i in 0..10_000u32 {
        backend.put_with_ttl(&i.to_be_bytes(), &value, Duration::from_secs(10))?;
    }
    for i in 0..100u32 {
        backend.put(format!("live-{i}").as_bytes(), &value)?;
    }
    backend.flush()?;
    backend.compact()?;
    let keys_before = backend.estimate_num_keys()?;
    let bytes_before = backend.sst_bytes()?;
    assert!(keys_before >= 10_000, "estimate {keys_before}");

    clock.advance(Duration::from_secs(10) + grace);
    backend.compact()?;
    let keys_after = backend.estimate_num_keys()?;
    let bytes_after = backend.sst_bytes()?;
    assert!(keys_after <= 200, "estimate after compaction {keys_after}");
    assert!(
        bytes_after * 10 < bytes_before,
        "SST bytes {bytes_before} -> {bytes_after}"
    );
    assert_eq!(
        backend.metrics().engine["ttl_dropped_by_compaction"],
        10_000
    );
    assert_eq!(backend.scan(KeyRange::all())?.count(), 100);
    Ok(())
}

/// A prefix scan uses the prefix bloom filter when a prefix length is set
/// before open (the Go code set it after, so it never applied).
#[test]
fn prefix_bloom_filter_takes_effect() -> Result<()> {
    let dir = tmp();
    let checked_with = |prefix_len: Option<usize>, name: &str| -> Result<(u64, usize)> {
        let mut config = small(&dir.path().join(name));
        config.prefix_len = prefix_len;
        let backend = RocksDbStateBackend::open(config)?;
        // Every file holds even-numbered prefixes only, so the odd ones
        // fall inside each file's key range and only a filter rules them out.
        for round in 0..10 {
            for op in (0..20).step_by(2) {
                for k in 0..50 {
                    backend.put(format!("op:{op:04}/key-{round}-{k}").as_bytes(), b"v")?;
                }
            }
            backend.flush()?;
        }
        let found = backend.scan_prefix(b"op:0004/")?.count();
        for absent in (1..20).step_by(2) {
            assert_eq!(
                backend
                    .scan_prefix(format!("op:{absent:04}/").as_bytes())?
                    .count(),
                0
            );
        }
        Ok((backend.metrics().engine["seek_filtered"], found))
    };
    let (with_filter, found) = checked_with(Some(8), "with")?;
    assert_eq!(found, 500);
    // 10 absent prefixes, each skipping at least one file by its filter.
    assert!(
        with_filter >= 10,
        "prefix bloom skipped only {with_filter} files"
    );
    let (without, found) = checked_with(None, "without")?;
    assert_eq!(found, 500);
    assert_eq!(without, 0);
    Ok(())
}

/// With `bound_memory`, memtables are charged to the block cache.
#[test]
fn bounded_memory_charges_memtables_to_the_cache() -> Result<()> {
    let dir = tmp();
    let mut config = small(&dir.path().join("db"));
    config.bound_memory = true;
    config.block_cache_size = 16 << 20;
    let backend = RocksDbStateBackend::open(config)?;
    for i in 0..20_000u32 {
        backend.put(&i.to_be_bytes(), &[1u8; 100])?;
    }
    let usage = backend
        .property_int("rocksdb.block-cache-usage")?
        .unwrap_or(0);
    assert!(usage > 0, "memtable memory not charged to the cache");
    assert_eq!(
        backend.get(&7u32.to_be_bytes())?.as_deref(),
        Some(&[1u8; 100][..])
    );
    Ok(())
}

/// A restore is durable: after reopening, the state is the snapshot's,
/// not what was there before.
#[test]
fn restore_survives_reopen() -> Result<()> {
    let dir = tmp();
    let path = dir.path().join("db");
    let source = MemoryStateBackend::default();
    for i in 0..1000 {
        source.put(format!("snap-{i}").as_bytes(), b"from the snapshot")?;
    }
    let snapshot = source.snapshot()?;
    {
        let backend = RocksDbStateBackend::open(small(&path))?;
        for i in 0..1000 {
            backend.put(format!("old-{i}").as_bytes(), b"replaced")?;
        }
        backend.restore(&snapshot)?;
        backend.put(b"after", b"restore")?;
    }
    let backend = RocksDbStateBackend::open(small(&path))?;
    let all: Vec<_> = backend.scan(KeyRange::all())?.collect::<Result<_>>()?;
    assert_eq!(all.len(), 1001);
    assert!(all.iter().all(|(k, _)| !k.starts_with(b"old-")));
    assert_eq!(backend.get(b"after")?.as_deref(), Some(&b"restore"[..]));
    Ok(())
}

/// Snapshots are portable: memory to RocksDB and back, TTL included.
#[test]
fn snapshots_move_between_backends() -> Result<()> {
    let dir = tmp();
    let clock = ManualClock::shared(5_000);
    let memory =
        MemoryStateBackend::new(gress_state::MemoryConfig::default().with_clock(clock.clone()))?;
    for i in 0..200 {
        memory.put(format!("k{i:03}").as_bytes(), format!("v{i}").as_bytes())?;
    }
    memory.put_with_ttl(b"ttl", b"x", Duration::from_millis(100))?;
    let rocks = RocksDbStateBackend::open(small(&dir.path().join("db")).with_clock(clock.clone()))?;
    rocks.restore(&memory.snapshot()?)?;
    let back =
        MemoryStateBackend::new(gress_state::MemoryConfig::default().with_clock(clock.clone()))?;
    back.restore(&rocks.snapshot()?)?;
    let dump = |b: &dyn StateBackend| -> Result<Vec<_>> { b.scan(KeyRange::all())?.collect() };
    assert_eq!(dump(&rocks)?, dump(&memory)?);
    assert_eq!(dump(&back)?, dump(&memory)?);
    clock.advance(Duration::from_millis(100));
    assert_eq!(rocks.get(b"ttl")?, None);
    assert_eq!(back.get(b"ttl")?, None);
    Ok(())
}

/// A scan iterator keeps working after the backend is closed, and the
/// database is released when the iterator goes.
#[test]
fn open_scan_outlives_close() -> Result<()> {
    let dir = tmp();
    let path = dir.path().join("db");
    let backend = RocksDbStateBackend::open(small(&path))?;
    for i in 0..10u8 {
        backend.put(&[i], b"v")?;
    }
    let mut scan = backend.scan(KeyRange::all())?;
    backend.close()?;
    assert!(scan.next().is_some());
    assert!(matches!(
        RocksDbStateBackend::open(small(&path)),
        Err(Error::Locked { .. })
    ));
    drop(scan);
    let reopened = RocksDbStateBackend::open(small(&path))?;
    assert_eq!(reopened.scan(KeyRange::all())?.count(), 10);
    Ok(())
}
