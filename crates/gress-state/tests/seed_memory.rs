//! The seed's memory-backend cases, plus background TTL cleanup.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gress_state::{ManualClock, MemoryConfig, MemoryStateBackend, Result, StateBackend};

/// Seed: put, get and delete of one key.
#[test]
fn basic_operations() -> Result<()> {
    let backend = MemoryStateBackend::default();
    backend.put(b"key1", b"value1")?;
    assert_eq!(backend.get(b"key1")?.as_deref(), Some(&b"value1"[..]));
    backend.delete(b"key1")?;
    assert_eq!(backend.get(b"key1")?, None);
    Ok(())
}

/// Seed: 100 keys, snapshot, clear, restore; all 100 readable and len 100.
#[test]
fn snapshot_clear_restore_keeps_100_keys() -> Result<()> {
    let backend = MemoryStateBackend::default();
    for i in 0..100 {
        backend.put(
            format!("key-{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
        )?;
    }
    let snapshot = backend.snapshot()?;
    backend.clear()?;
    assert_eq!(backend.len()?, 0);
    backend.restore(&snapshot)?;
    for i in 0..100 {
        assert_eq!(
            backend.get(format!("key-{i}").as_bytes())?,
            Some(format!("value-{i}").into_bytes())
        );
    }
    assert_eq!(backend.len()?, 100);
    Ok(())
}

/// Seed: a 100 ms TTL on the real clock is readable at once and gone after
/// a 150 ms sleep.
#[test]
fn ttl_on_the_real_clock() -> Result<()> {
    let backend =
        MemoryStateBackend::new(MemoryConfig::default().with_ttl(Duration::from_millis(100)))?;
    backend.put(b"ttl-key", b"v")?;
    assert_eq!(backend.get(b"ttl-key")?.as_deref(), Some(&b"v"[..]));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(backend.get(b"ttl-key")?, None);
    Ok(())
}

/// Seed: 10 puts, 5 gets of existing keys, 1 delete.
#[test]
fn metrics_after_the_seed_sequence() -> Result<()> {
    let backend = MemoryStateBackend::default();
    for i in 0..10 {
        backend.put(format!("key-{i}").as_bytes(), b"value")?;
    }
    for i in 0..5 {
        backend.get(format!("key-{i}").as_bytes())?;
    }
    backend.delete(b"key-0")?;
    let m = backend.metrics();
    assert_eq!((m.gets, m.puts, m.deletes), (5, 10, 1));
    Ok(())
}

/// Latency percentiles are filled from the histogram for every op kind used.
#[test]
fn metrics_report_latency_percentiles() -> Result<()> {
    let backend = MemoryStateBackend::new(MemoryConfig::default().with_latency_sampling(1))?;
    for i in 0..1000u32 {
        backend.put(&i.to_be_bytes(), b"v")?;
        backend.get(&i.to_be_bytes())?;
    }
    let m = backend.metrics();
    for op in [gress_state::Op::Get, gress_state::Op::Put] {
        let l = m.latency_of(op);
        assert_eq!(l.samples, 1000, "{op:?}");
        assert!(l.p50 > Duration::ZERO && l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
    }
    Ok(())
}

fn manual_backend(clock: &Arc<ManualClock>, interval: Duration) -> Result<MemoryStateBackend> {
    let mut config = MemoryConfig::default()
        .with_clock(clock.clone())
        .with_cleanup_interval(interval)
        .with_shards(4);
    config.cleanup_batch = 16;
    MemoryStateBackend::new(config)
}

/// The background thread removes expired entries without any read touching
/// them, walking shards much larger than one cleanup step.
#[test]
fn background_cleanup_removes_expired_entries() -> Result<()> {
    let clock = ManualClock::shared(1_000);
    let backend = manual_backend(&clock, Duration::from_millis(5))?;
    for i in 0..2000u32 {
        backend.put_with_ttl(&i.to_be_bytes(), b"v", Duration::from_millis(10))?;
    }
    backend.put(b"forever", b"v")?;
    clock.advance(Duration::from_millis(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while backend.len()? > 1 {
        assert!(
            Instant::now() < deadline,
            "cleanup thread removed nothing in 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(backend.get(b"forever")?.as_deref(), Some(&b"v"[..]));
    assert_eq!(backend.metrics().expired, 2000);
    Ok(())
}

/// A cleanup pass removes exactly the expired entries, in bounded steps.
#[test]
fn purge_removes_only_expired_entries() -> Result<()> {
    let clock = ManualClock::shared(1_000);
    let backend = manual_backend(&clock, Duration::ZERO)?;
    for i in 0..1000u32 {
        let ttl = Duration::from_millis(if i % 2 == 0 { 5 } else { 50 });
        backend.put_with_ttl(&i.to_be_bytes(), b"v", ttl)?;
    }
    clock.advance(Duration::from_millis(5));
    assert_eq!(backend.purge_expired()?, 500);
    assert_eq!(backend.len()?, 500);
    assert_eq!(backend.purge_expired()?, 0);
    clock.advance(Duration::from_millis(45));
    assert_eq!(backend.purge_expired()?, 500);
    assert!(backend.is_empty()?);
    Ok(())
}

/// Closing stops the cleanup thread and frees the state; it is idempotent
/// and so is dropping afterwards.
#[test]
fn close_stops_cleanup_and_drop_after_close_is_fine() -> Result<()> {
    let clock = ManualClock::shared(1_000);
    let backend = manual_backend(&clock, Duration::from_millis(1))?;
    backend.put_with_ttl(b"k", b"v", Duration::from_millis(1))?;
    backend.close()?;
    assert!(matches!(backend.len(), Err(gress_state::Error::Closed)));
    assert!(matches!(
        backend.purge_expired(),
        Err(gress_state::Error::Closed)
    ));
    drop(backend);
    Ok(())
}

/// Invalid configurations are typed errors naming the field.
#[test]
fn invalid_config_names_the_field() {
    let cases = [
        (MemoryConfig::default().with_shards(3), "n_shards"),
        (MemoryConfig::default().with_shards(0), "n_shards"),
        (
            MemoryConfig::default().with_ttl(Duration::ZERO),
            "default_ttl",
        ),
    ];
    for (config, field) in cases {
        match MemoryStateBackend::new(config) {
            Err(gress_state::Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
    }
}
