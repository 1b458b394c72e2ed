//! One function per clause of the `StateBackend` contract. Each opens fresh
//! backends through the factory and returns an error or panics (through
//! `assert!`) when the backend breaks the clause.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gress_state::snapshot::{SnapshotEntry, SnapshotKind, SnapshotReader, SnapshotWriter};
use gress_state::{Error, KeyRange, KeyValue, Result, StateBackend, WriteBatch};

use crate::{BackendFactory, Fixture, SuiteConfig};

fn open(
    factory: &dyn BackendFactory,
    default_ttl: Option<Duration>,
) -> Result<(Fixture, SuiteConfig)> {
    let cfg = SuiteConfig::new(default_ttl);
    let fixture = factory.open(&cfg)?;
    Ok((fixture, cfg))
}

/// Every live entry, in key order.
pub fn dump(backend: &dyn StateBackend) -> Result<Vec<KeyValue>> {
    backend.scan(KeyRange::all())?.collect()
}

/// Sets a flag when dropped, so helper threads stop even when the test
/// thread panics on a failed assertion.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn fill(backend: &dyn StateBackend, n: usize) -> Result<()> {
    for i in 0..n {
        backend.put(
            format!("key-{i:05}").as_bytes(),
            format!("value-{i}").as_bytes(),
        )?;
    }
    Ok(())
}

/// Put, get, delete: the seed's basic operations.
pub fn basic_operations(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"user:123", br#"{"name": "Alice", "balance": 1000}"#)?;
    assert_eq!(
        b.get(b"user:123")?.as_deref(),
        Some(&br#"{"name": "Alice", "balance": 1000}"#[..])
    );
    b.delete(b"user:123")?;
    assert_eq!(b.get(b"user:123")?, None);
    Ok(())
}

/// A second put of a key replaces the first value.
pub fn overwrite_replaces_value(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"k", b"first")?;
    b.put(b"k", b"second, longer value")?;
    assert_eq!(b.get(b"k")?.as_deref(), Some(&b"second, longer value"[..]));
    b.put(b"k", b"")?;
    assert_eq!(b.get(b"k")?.as_deref(), Some(&b""[..]));
    assert_eq!(dump(b)?.len(), 1);
    Ok(())
}

/// A missing key reads as `None`; deleting it succeeds.
pub fn missing_keys(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    assert_eq!(b.get(b"never-written")?, None);
    b.delete(b"never-written")?;
    b.put(b"k", b"v")?;
    b.delete(b"k")?;
    b.delete(b"k")?;
    assert_eq!(b.get(b"k")?, None);
    Ok(())
}

/// The empty key and the empty value are ordinary data, distinct from absence.
pub fn empty_key_and_empty_value(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"", b"empty key")?;
    b.put(b"empty value", b"")?;
    assert_eq!(b.get(b"")?.as_deref(), Some(&b"empty key"[..]));
    assert_eq!(b.get(b"empty value")?.as_deref(), Some(&b""[..]));
    let restored = open(factory, None)?.0;
    restored.backend.restore(&b.snapshot()?)?;
    assert_eq!(
        restored.backend.get(b"")?.as_deref(),
        Some(&b"empty key"[..])
    );
    assert_eq!(
        restored.backend.get(b"empty value")?.as_deref(),
        Some(&b""[..])
    );
    Ok(())
}

/// Keys and values with 0x00 and 0xFF bytes, including values that look like
/// a TTL header, round-trip untouched.
pub fn binary_keys(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, Some(Duration::from_secs(3600)))?;
    let b = &*f.backend;
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (vec![0x00], vec![0xFF; 8]),
        (vec![0xFF], vec![0x00; 8]),
        (vec![0x00, 0x00], vec![0x01, 0, 0, 0, 0, 0, 0, 0, 0, 7]),
        (vec![0xFF, 0x00, 0xFF], vec![0x00]),
        (vec![b'a', 0x00, b'b'], (0..=255).collect()),
    ];
    for (k, v) in &cases {
        b.put(k, v)?;
    }
    for (k, v) in &cases {
        assert_eq!(b.get(k)?.as_ref(), Some(v), "key {k:02x?}");
    }
    let mut sorted = cases.clone();
    sorted.sort();
    assert_eq!(dump(b)?, sorted);
    Ok(())
}

/// A 16 MiB value is stored, read and snapshotted whole.
pub fn large_value(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    let value: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    b.put(b"big", &value)?;
    assert!(b.get(b"big")? == Some(value.clone()));
    let snap = b.snapshot()?;
    let (g, _) = open(factory, None)?;
    g.backend.restore(&snap)?;
    assert!(g.backend.get(b"big")? == Some(value));
    Ok(())
}

/// A key over the limit is a typed error, not a panic, and writes nothing.
pub fn oversized_key_is_rejected(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    let key = vec![b'k'; gress_state::ttl::MAX_KEY_LEN + 1];
    let err = b.put(&key, b"v").expect_err("oversized key accepted");
    assert!(matches!(err, Error::TooLarge { what: "key", .. }), "{err}");
    assert!(dump(b)?.is_empty());
    Ok(())
}

/// A batch applies its operations in order.
pub fn batch_applies_every_op_in_order(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"old", b"1")?;
    let mut batch = WriteBatch::new();
    batch
        .put("a", "1")
        .put("b", "2")
        .delete("old")
        .put("c", "x")
        .delete("c")
        .put("a", "3");
    b.write_batch(&batch)?;
    assert_eq!(
        dump(b)?,
        vec![
            (b"a".to_vec(), b"3".to_vec()),
            (b"b".to_vec(), b"2".to_vec())
        ]
    );
    b.write_batch(&WriteBatch::new())?;
    Ok(())
}

/// A batch with one invalid operation applies nothing.
pub fn batch_is_all_or_nothing(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"keep", b"1")?;
    let mut batch = WriteBatch::new();
    batch
        .put("a", "1")
        .delete("keep")
        .put_with_ttl("bad", "v", Duration::ZERO)
        .put("z", "2");
    let err = b.write_batch(&batch).expect_err("zero TTL accepted");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let mut big = WriteBatch::new();
    big.put("a", "1")
        .put(vec![0u8; gress_state::ttl::MAX_KEY_LEN + 1], "v");
    assert!(matches!(b.write_batch(&big), Err(Error::TooLarge { .. })));
    assert_eq!(dump(b)?, vec![(b"keep".to_vec(), b"1".to_vec())]);
    Ok(())
}

/// `multi_get` answers each key in the order asked.
pub fn multi_get_returns_in_order(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"a", b"1")?;
    b.put(b"c", b"3")?;
    let got = b.multi_get(&[b"c", b"b", b"a", b"c"])?;
    assert_eq!(
        got,
        vec![
            Some(b"3".to_vec()),
            None,
            Some(b"1".to_vec()),
            Some(b"3".to_vec())
        ]
    );
    assert!(b.multi_get(&[])?.is_empty());
    Ok(())
}

/// Scans return live entries of the range in ascending byte order.
pub fn scan_in_key_order(factory: &dyn BackendFactory) -> Result<()> {
    let (f, cfg) = open(factory, None)?;
    let b = &*f.backend;
    let keys: [&[u8]; 9] = [
        b"user:2",
        b"user:10",
        b"user:1",
        b"session:9",
        b"user",
        b"user;",
        b"\xff",
        b"\x00",
        b"user:\xff",
    ];
    for k in keys {
        b.put(k, k)?;
    }
    b.put_with_ttl(b"user:expiring", b"x", Duration::from_millis(5))?;
    cfg.clock.advance(Duration::from_millis(5));
    let names = |it: gress_state::ScanIter<'_>| -> Result<Vec<Vec<u8>>> {
        it.map(|kv| {
            kv.map(|(k, v)| {
                assert_eq!(k, v);
                k
            })
        })
        .collect()
    };
    assert_eq!(
        names(b.scan_prefix(b"user:")?)?,
        vec![
            b"user:1".to_vec(),
            b"user:10".to_vec(),
            b"user:2".to_vec(),
            b"user:\xff".to_vec()
        ]
    );
    let mut all: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    all.sort();
    assert_eq!(names(b.scan(KeyRange::all())?)?, all);
    assert_eq!(
        names(b.scan(KeyRange::between("session", "user:1"))?)?,
        vec![b"session:9".to_vec(), b"user".to_vec()]
    );
    assert_eq!(names(b.scan_prefix(b"\xff")?)?, vec![b"\xff".to_vec()]);
    assert!(names(b.scan_prefix(b"nothing")?)?.is_empty());
    Ok(())
}

/// With a default TTL, a plain put expires after it; `put_with_ttl`
/// overrides it; without one, entries never expire.
pub fn ttl_default_and_override(factory: &dyn BackendFactory) -> Result<()> {
    let (f, cfg) = open(factory, Some(Duration::from_secs(60)))?;
    let b = &*f.backend;
    b.put(b"default", b"v")?;
    b.put_with_ttl(b"short", b"v", Duration::from_secs(1))?;
    b.put_with_ttl(b"long", b"v", Duration::from_secs(120))?;
    cfg.clock.advance(Duration::from_secs(1));
    assert_eq!(b.get(b"short")?, None);
    assert!(b.get(b"default")?.is_some());
    cfg.clock.advance(Duration::from_secs(59));
    assert_eq!(b.get(b"default")?, None);
    assert!(b.get(b"long")?.is_some());
    cfg.clock.advance(Duration::from_secs(60));
    assert_eq!(b.get(b"long")?, None);

    let (g, cfg) = open(factory, None)?;
    g.backend.put(b"forever", b"v")?;
    g.backend
        .put_with_ttl(b"short", b"v", Duration::from_millis(1))?;
    cfg.clock.advance(Duration::from_secs(100 * 365 * 86_400));
    assert!(g.backend.get(b"forever")?.is_some());
    assert_eq!(g.backend.get(b"short")?, None);
    Ok(())
}

/// `get_with_expiry` returns a live value with the absolute expiry it was
/// given (none without a TTL), and nothing once it expired;
/// `default_ttl` reports the configured default.
pub fn get_with_expiry_tells_the_expiry(factory: &dyn BackendFactory) -> Result<()> {
    let (f, cfg) = open(factory, Some(Duration::from_secs(60)))?;
    let b = &*f.backend;
    assert_eq!(b.default_ttl(), Some(Duration::from_secs(60)));
    let now = gress_state::Clock::now_ms(&*cfg.clock);
    b.put(b"default", b"d")?;
    b.put_with_ttl(b"short", b"s", Duration::from_millis(1500))?;
    assert_eq!(
        b.get_with_expiry(b"default")?,
        Some((b"d".to_vec(), Some(now + 60_000)))
    );
    assert_eq!(
        b.get_with_expiry(b"short")?,
        Some((b"s".to_vec(), Some(now + 1500)))
    );
    assert_eq!(b.get_with_expiry(b"missing")?, None);
    cfg.clock.advance(Duration::from_millis(1500));
    assert_eq!(b.get_with_expiry(b"short")?, None);

    let (g, _) = open(factory, None)?;
    assert_eq!(g.backend.default_ttl(), None);
    g.backend.put(b"forever", b"f")?;
    assert_eq!(
        g.backend.get_with_expiry(b"forever")?,
        Some((b"f".to_vec(), None))
    );
    Ok(())
}

/// An entry is live up to the millisecond before its expiry and dead from
/// that millisecond on; sub-millisecond TTLs round up.
pub fn ttl_has_millisecond_precision(factory: &dyn BackendFactory) -> Result<()> {
    let (f, cfg) = open(factory, None)?;
    let b = &*f.backend;
    b.put_with_ttl(b"k", b"v", Duration::from_millis(100))?;
    b.put_with_ttl(b"sub", b"v", Duration::from_micros(1500))?;
    cfg.clock.advance(Duration::from_millis(1));
    assert!(b.get(b"sub")?.is_some(), "1.5 ms TTL expired after 1 ms");
    cfg.clock.advance(Duration::from_millis(1));
    assert_eq!(b.get(b"sub")?, None, "1.5 ms TTL alive after 2 ms");
    cfg.clock.advance(Duration::from_millis(97));
    assert!(b.get(b"k")?.is_some(), "100 ms TTL expired after 99 ms");
    cfg.clock.advance(Duration::from_millis(1));
    assert_eq!(b.get(b"k")?, None, "100 ms TTL alive after 100 ms");
    Ok(())
}

/// A zero TTL is an invalid argument, not a silent delete.
pub fn ttl_zero_is_rejected(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"k", b"old")?;
    let err = b
        .put_with_ttl(b"k", b"new", Duration::ZERO)
        .expect_err("zero TTL accepted");
    let Error::InvalidArgument { name: "ttl", .. } = err else {
        panic!("zero TTL gave {err}");
    };
    assert_eq!(b.get(b"k")?.as_deref(), Some(&b"old"[..]));
    Ok(())
}

/// An expired entry is never returned by get, multi_get or scan, and never
/// counted as a hit.
pub fn expired_entries_are_invisible(factory: &dyn BackendFactory) -> Result<()> {
    let (f, cfg) = open(factory, None)?;
    let b = &*f.backend;
    b.put_with_ttl(b"k", b"v", Duration::from_millis(10))?;
    b.put(b"live", b"v")?;
    cfg.clock.advance(Duration::from_millis(10));
    let before = b.metrics();
    assert_eq!(b.get(b"k")?, None);
    assert_eq!(
        b.multi_get(&[b"k", b"live"])?,
        vec![None, Some(b"v".to_vec())]
    );
    assert_eq!(dump(b)?, vec![(b"live".to_vec(), b"v".to_vec())]);
    let after = b.metrics();
    assert_eq!(after.hits - before.hits, 1, "only `live` is a hit");
    assert_eq!(after.misses - before.misses, 2);
    Ok(())
}

/// Snapshots leave out entries that are expired when the snapshot is taken.
pub fn expired_entries_are_not_snapshotted(factory: &dyn BackendFactory) -> Result<()> {
    let (f, cfg) = open(factory, None)?;
    let b = &*f.backend;
    b.put_with_ttl(b"dead", b"v", Duration::from_millis(10))?;
    b.put_with_ttl(b"alive", b"v", Duration::from_millis(20))?;
    cfg.clock.advance(Duration::from_millis(10));
    let snap = b.snapshot()?;
    let mut reader = SnapshotReader::new(&snap[..])?;
    let mut keys = Vec::new();
    while let Some(e) = reader.next_entry()? {
        keys.push(e.key().to_vec());
    }
    assert_eq!(keys, vec![b"alive".to_vec()]);
    Ok(())
}

/// Expiry is stored as an absolute time: a restored entry expires at the
/// same instant as the original, and one already expired is not restored.
pub fn ttl_survives_snapshot_as_absolute_time(factory: &dyn BackendFactory) -> Result<()> {
    let (f, cfg) = open(factory, None)?;
    let b = &*f.backend;
    b.put_with_ttl(b"k", b"v", Duration::from_millis(1000))?;
    let snap = b.snapshot()?;

    let (g, cfg2) = open(factory, None)?;
    cfg2.clock.set(cfg.clock_now() + 400);
    let summary = g.backend.restore(&snap)?;
    assert_eq!(summary.n_entries_restored, 1);
    cfg2.clock.advance(Duration::from_millis(599));
    assert!(g.backend.get(b"k")?.is_some());
    cfg2.clock.advance(Duration::from_millis(1));
    assert_eq!(g.backend.get(b"k")?, None);

    let (h, cfg3) = open(factory, None)?;
    cfg3.clock.set(cfg.clock_now() + 1000);
    let summary = h.backend.restore(&snap)?;
    assert_eq!(summary.n_entries_expired, 1);
    assert!(dump(&*h.backend)?.is_empty());
    Ok(())
}

impl SuiteConfig {
    fn clock_now(&self) -> u64 {
        use gress_state::Clock;
        self.clock.now_ms()
    }
}

/// A snapshot restored into a fresh backend gives back every entry, with
/// its TTL.
pub fn snapshot_round_trip(factory: &dyn BackendFactory) -> Result<()> {
    let (f, cfg) = open(factory, None)?;
    let b = &*f.backend;
    fill(b, 1000)?;
    b.put_with_ttl(b"ttl", b"v", Duration::from_secs(5))?;
    let snap = b.snapshot()?;
    let mut streamed = Vec::new();
    let summary = b.snapshot_to(&mut streamed)?;
    assert_eq!(summary.n_entries, 1001);
    assert_eq!(summary.n_bytes, streamed.len() as u64);

    let (g, cfg2) = open(factory, None)?;
    cfg2.clock.set(cfg.clock_now());
    let restored = g.backend.restore_from(&mut &streamed[..])?;
    assert_eq!(restored.n_entries_restored, 1001);
    assert_eq!(dump(&*g.backend)?, dump(b)?);
    cfg2.clock.advance(Duration::from_secs(5));
    assert_eq!(g.backend.get(b"ttl")?, None);

    let (h, _) = open(factory, None)?;
    h.backend.restore(&snap)?;
    assert_eq!(dump(&*h.backend)?.len(), 1001);
    Ok(())
}

/// Restore replaces: keys absent from the snapshot are gone afterwards.
pub fn restore_replaces_state(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"a", b"1")?;
    b.put(b"b", b"2")?;
    let snap = b.snapshot()?;
    b.put(b"a", b"changed")?;
    b.delete(b"b")?;
    b.put(b"c", b"added")?;
    b.restore(&snap)?;
    assert_eq!(
        dump(b)?,
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec())
        ]
    );
    let mut empty = Vec::new();
    open(factory, None)?.0.backend.snapshot_to(&mut empty)?;
    b.restore(&empty)?;
    assert!(dump(b)?.is_empty());
    b.put(b"after", b"restore")?;
    assert_eq!(b.get(b"after")?.as_deref(), Some(&b"restore"[..]));
    Ok(())
}

/// Corrupt, truncated and foreign snapshots give typed errors and leave the
/// state exactly as it was.
pub fn bad_snapshots_leave_state_unchanged(factory: &dyn BackendFactory) -> Result<()> {
    let (src, _) = open(factory, None)?;
    fill(&*src.backend, 300)?;
    let good = src.backend.snapshot()?;

    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"existing", b"state")?;
    b.put(b"key-00001", b"not from the snapshot")?;
    let before = dump(b)?;

    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty input".into(), Vec::new()),
        ("JSON".into(), br#"{"key-1": "value-1"}"#.to_vec()),
        (
            "random bytes".into(),
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761u32) >> 13) as u8)
                .collect(),
        ),
        ("trailing bytes".into(), [&good[..], b"x"].concat()),
    ];
    for cut in [
        1,
        8,
        27,
        28,
        29,
        good.len() / 2,
        good.len() - 21,
        good.len() - 1,
    ] {
        cases.push((format!("truncated to {cut} bytes"), good[..cut].to_vec()));
    }
    for at in [9, 30, good.len() / 3, good.len() / 2, good.len() - 10] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        cases.push((format!("byte {at} flipped"), bad));
    }
    let mut future = good.clone();
    future[8] = 2;
    cases.push(("version 2".into(), future));

    for (what, bytes) in &cases {
        let err = b
            .restore(bytes)
            .expect_err(&format!("{what}: bad snapshot accepted"));
        assert!(err.is_bad_input(), "{what}: untyped error {err:?}");
        assert_eq!(
            dump(b)?,
            before,
            "{what}: state changed by a failed restore"
        );
    }
    b.restore(&good)?;
    assert_eq!(dump(b)?.len(), 300);
    Ok(())
}

/// A delta snapshot cannot be restored as if it were the whole state.
pub fn delta_snapshot_is_not_a_full_restore(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"k", b"v")?;
    let mut delta = Vec::new();
    let mut w = SnapshotWriter::new(&mut delta, SnapshotKind::Delta, 0)?;
    w.put(b"x", b"y", None)?;
    w.tombstone(b"k")?;
    w.finish()?;
    let err = b.restore(&delta).expect_err("delta accepted as full");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(dump(b)?, vec![(b"k".to_vec(), b"v".to_vec())]);
    Ok(())
}

/// After close, every operation fails with `Closed`; close is idempotent.
pub fn closed_backend_gives_closed(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    b.put(b"k", b"v")?;
    let snap = b.snapshot()?;
    b.close()?;
    b.close()?;
    assert!(b.is_closed());
    let mut batch = WriteBatch::new();
    batch.put("k", "v");
    let results: Vec<(&str, Result<()>)> = vec![
        ("get", b.get(b"k").map(drop)),
        ("multi_get", b.multi_get(&[b"k"]).map(drop)),
        ("put", b.put(b"k", b"v")),
        (
            "put_with_ttl",
            b.put_with_ttl(b"k", b"v", Duration::from_secs(1)),
        ),
        ("delete", b.delete(b"k")),
        ("write_batch", b.write_batch(&batch)),
        ("scan", b.scan(KeyRange::all()).map(drop)),
        ("snapshot", b.snapshot().map(drop)),
        ("restore", b.restore(&snap).map(drop)),
        ("flush", b.flush()),
    ];
    for (op, r) in results {
        assert!(
            r.as_ref().is_err_and(Error::is_closed),
            "{op} after close gave {r:?}"
        );
    }
    let _ = b.metrics();
    Ok(())
}

/// The seed's metrics case: 10 puts, 5 gets of existing keys and 1 delete
/// read back as puts 10, gets 5, deletes 1.
pub fn metrics_count_operations(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b = &*f.backend;
    for i in 0..10 {
        b.put(format!("key-{i}").as_bytes(), b"value")?;
    }
    for i in 0..5 {
        assert!(b.get(format!("key-{i}").as_bytes())?.is_some());
    }
    b.delete(b"key-0")?;
    let m = b.metrics();
    assert_eq!((m.gets, m.hits, m.misses), (5, 5, 0));
    assert_eq!(m.puts, 10);
    assert_eq!(m.deletes, 1);
    if m.n_keys_is_estimate {
        // An estimate may still count the deleted key.
        assert!((9..=10).contains(&m.n_keys), "estimated {} keys", m.n_keys);
    } else {
        assert_eq!(m.n_keys, 9);
    }
    Ok(())
}

/// Writers on several threads and readers on others: every read sees a
/// value some writer wrote for that key, never older than one it saw
/// before, and the final state holds every last write.
pub fn concurrent_readers_and_writers(factory: &dyn BackendFactory) -> Result<()> {
    const WRITERS: u64 = 4;
    const KEYS: u64 = 64;
    const ROUNDS: u64 = 200;
    let (f, _) = open(factory, None)?;
    let b: Arc<dyn StateBackend> = Arc::clone(&f.backend);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<()> {
        let stop_readers = SetOnDrop(&done);
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let b = &b;
            writers.push(s.spawn(move || -> Result<()> {
                for round in 0..ROUNDS {
                    for k in 0..KEYS {
                        let key = format!("w{w}-k{k}");
                        b.put(key.as_bytes(), &round.to_be_bytes())?;
                    }
                }
                Ok(())
            }));
        }
        let mut readers = Vec::new();
        for r in 0..2u64 {
            let (b, done) = (&b, &done);
            readers.push(s.spawn(move || -> Result<u64> {
                let mut seen = vec![0u64; (WRITERS * KEYS) as usize];
                let mut n = 0;
                while !done.load(Ordering::Acquire) {
                    for w in 0..WRITERS {
                        for k in (r..KEYS).step_by(2) {
                            let key = format!("w{w}-k{k}");
                            if let Some(v) = b.get(key.as_bytes())? {
                                let round = u64::from_be_bytes(
                                    v.as_slice().try_into().expect("8-byte value"),
                                );
                                let slot = &mut seen[(w * KEYS + k) as usize];
                                assert!(round >= *slot, "{key}: read {round} after {slot}");
                                assert!(round < ROUNDS);
                                *slot = round;
                                n += 1;
                            }
                        }
                    }
                }
                Ok(n)
            }));
        }
        let written: Result<Vec<()>> = writers
            .into_iter()
            .map(|w| w.join().expect("writer thread"))
            .collect();
        drop(stop_readers);
        written?;
        for r in readers {
            r.join().expect("reader thread")?;
        }
        Ok(())
    })?;
    let all = dump(&*b)?;
    assert_eq!(all.len() as u64, WRITERS * KEYS);
    assert!(all.iter().all(|(_, v)| v == &(ROUNDS - 1).to_be_bytes()));
    Ok(())
}

/// Snapshots taken while a writer updates two keys in batches always hold
/// equal values for both: a point-in-time view, never half a batch.
pub fn snapshot_is_consistent_under_writes(factory: &dyn BackendFactory) -> Result<()> {
    let (f, _) = open(factory, None)?;
    let b: Arc<dyn StateBackend> = Arc::clone(&f.backend);
    fill(&*b, 2000)?;
    let done = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    std::thread::scope(|s| -> Result<()> {
        let stop_writer = SetOnDrop(&done);
        let writer = s.spawn(|| -> Result<()> {
            let mut i: u64 = 0;
            while !done.load(Ordering::Acquire) {
                i += 1;
                let mut batch = WriteBatch::new();
                batch
                    .put("pair-a", i.to_be_bytes())
                    .put("pair-z", i.to_be_bytes());
                b.write_batch(&batch)?;
                b.put(b"counter", &i.to_be_bytes())?;
                written.store(i, Ordering::Release);
            }
            Ok(())
        });
        let mut last_counter = 0;
        for _ in 0..20 {
            let floor = written.load(Ordering::Acquire);
            let snap = b.snapshot()?;
            let mut reader = SnapshotReader::new(&snap[..])?;
            let (mut a, mut z, mut counter, mut n) = (None, None, 0, 0);
            while let Some(e) = reader.next_entry()? {
                n += 1;
                if let SnapshotEntry::Put { key, value, .. } = e {
                    let v = || u64::from_be_bytes(value.try_into().expect("8 bytes"));
                    match key {
                        b"pair-a" => a = Some(v()),
                        b"pair-z" => z = Some(v()),
                        b"counter" => counter = v(),
                        _ => {}
                    }
                }
            }
            assert_eq!(a, z, "snapshot holds half a batch");
            assert!(
                counter >= floor,
                "snapshot misses a write that returned before it"
            );
            assert!(counter >= last_counter);
            assert!(n >= 2000);
            last_counter = counter;
        }
        drop(stop_writer);
        writer.join().expect("writer thread")
    })
}

/// The Go original removed an entry it had seen expired without checking
/// that it was still the same entry, so a value written in between was
/// lost. Here reader threads spin on keys that keep expiring while the test
/// thread overwrites each expired key with a fresh value; a fresh value must
/// survive every time.
pub fn lazy_expiry_never_removes_a_fresh_write(factory: &dyn BackendFactory) -> Result<()> {
    const KEYS: u32 = 4;
    let (f, cfg) = open(factory, None)?;
    let b: Arc<dyn StateBackend> = Arc::clone(&f.backend);
    let done = AtomicBool::new(false);
    let laps = AtomicU64::new(0);
    std::thread::scope(|s| -> Result<()> {
        let stop_readers = SetOnDrop(&done);
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while !done.load(Ordering::Acquire) {
                        for k in 0..KEYS {
                            b.get(format!("race-{k}").as_bytes())?;
                        }
                        laps.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(())
                })
            })
            .collect();
        for round in 0..2000u32 {
            let key = format!("race-{}", round % KEYS);
            let fresh = round.to_be_bytes();
            b.put_with_ttl(key.as_bytes(), b"old", Duration::from_millis(1))?;
            cfg.clock.advance(Duration::from_millis(1));
            b.put(key.as_bytes(), &fresh)?;
            // Let the readers finish whatever they started before the put.
            let lap = laps.load(Ordering::Acquire);
            while laps.load(Ordering::Acquire) < lap + 2 {
                std::hint::spin_loop();
            }
            assert_eq!(
                b.get(key.as_bytes())?.as_deref(),
                Some(&fresh[..]),
                "round {round}: a fresh write was removed as expired"
            );
            b.delete(key.as_bytes())?;
        }
        drop(stop_readers);
        for r in readers {
            r.join().expect("reader thread")?;
        }
        Ok(())
    })
}
