//! The TTL compaction filter against readers and clock steps: it never
//! drops an entry that an open scan or snapshot must still return, and it
//! keeps entries that expired less than `ttl_compaction_grace` ago.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::{KeyRange, ManualClock, MemoryStateBackend, Result, StateBackend};

const T: u64 = 1_700_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn open(path: &Path, clock: &Arc<ManualClock>) -> Result<RocksDbStateBackend> {
    let mut c = RocksDbConfig::new(path).with_clock(clock.clone());
    c.write_buffer_size = 1 << 20;
    c.block_cache_size = 1 << 20;
    RocksDbStateBackend::open(c)
}

/// A live key and one that expires at T + 5 ms, both flushed to an SST
/// file that a compaction rewrites.
fn fill(backend: &RocksDbStateBackend) -> Result<()> {
    backend.put(b"forever", b"1")?;
    backend.put_with_ttl(b"soon", b"2", Duration::from_millis(5))?;
    backend.flush()
}

fn dropped(backend: &RocksDbStateBackend) -> u64 {
    backend.metrics().engine["ttl_dropped_by_compaction"]
}

/// A scan opened at T returns an entry that was live at T although the
/// clock moves an hour on and a full compaction runs while it is open, and
/// that compaction keeps the entry (RocksDB applies compaction filters
/// regardless of snapshots; only the files the iterator pinned would still
/// show a dropped entry, and an iterator that refreshes them would not).
/// A scan opened afterwards hides the entry, and once the first scan is
/// gone a compaction drops it.
#[test]
fn open_scan_keeps_entries_live_at_its_start() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| gress_state::Error::io("temp dir", e))?;
    let clock = ManualClock::shared(T);
    let backend = open(&dir.path().join("db"), &clock)?;
    fill(&backend)?;

    let scan = backend.scan(KeyRange::all())?;
    clock.advance(HOUR);
    backend.compact()?;
    let seen: Vec<_> = scan.collect::<Result<_>>()?;
    assert_eq!(
        seen,
        [
            (b"forever".to_vec(), b"1".to_vec()),
            (b"soon".to_vec(), b"2".to_vec())
        ]
    );
    assert_eq!(dropped(&backend), 0, "dropped under an open scan");
    assert_eq!(backend.scan(KeyRange::all())?.count(), 1);

    backend.compact()?;
    assert_eq!(dropped(&backend), 1, "not dropped once the scan was gone");
    Ok(())
}

/// A `Write` that runs `on_first_write` the first time the snapshot writer
/// hands it bytes, i.e. while `snapshot_to` is reading.
struct Interleave<F: FnMut()> {
    on_first_write: Option<F>,
    out: Vec<u8>,
}

impl<F: FnMut()> Write for Interleave<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(mut f) = self.on_first_write.take() {
            f();
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A snapshot taken at T holds an entry that was live at T although the
/// clock moves an hour on and a full compaction runs while the snapshot is
/// being written, and that compaction keeps the entry.
#[test]
fn snapshot_in_progress_keeps_entries_live_at_its_start() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| gress_state::Error::io("temp dir", e))?;
    let clock = ManualClock::shared(T);
    let backend = open(&dir.path().join("db"), &clock)?;
    fill(&backend)?;

    let mut compacted = None;
    let mut out = Interleave {
        on_first_write: Some(|| {
            clock.advance(HOUR);
            compacted = Some(backend.compact().map(|()| dropped(&backend)));
        }),
        out: Vec::new(),
    };
    backend.snapshot_to(&mut out)?;
    let bytes = out.out;
    assert_eq!(compacted.transpose()?, Some(0), "dropped under a snapshot");

    // Restored at T, the snapshot holds both entries.
    let restored = MemoryStateBackend::new(
        gress_state::MemoryConfig::default().with_clock(ManualClock::shared(T)),
    )?;
    restored.restore(&bytes)?;
    assert_eq!(restored.get(b"soon")?.as_deref(), Some(&b"2"[..]));
    assert_eq!(restored.get(b"forever")?.as_deref(), Some(&b"1"[..]));
    Ok(())
}

/// A forward step of the clock used to make the compaction filter drop
/// entries for good that were live again once the clock was set back.
/// With `ttl_compaction_grace`, compaction drops only entries that expired
/// more than the grace ago: an entry expired by less survives a compaction
/// and is readable again when the clock returns, one expired by more is
/// dropped.
#[test]
fn compaction_keeps_entries_expired_less_than_the_grace() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| gress_state::Error::io("temp dir", e))?;
    let clock = ManualClock::shared(T);
    let mut config = RocksDbConfig::new(dir.path().join("db")).with_clock(clock.clone());
    config.write_buffer_size = 1 << 20;
    config.block_cache_size = 1 << 20;
    config.ttl_compaction_grace = Duration::from_secs(300);
    let backend = RocksDbStateBackend::open(config)?;
    backend.put_with_ttl(b"expires-in-1m", b"a", Duration::from_secs(60))?;
    backend.put_with_ttl(b"expires-in-10m", b"b", Duration::from_secs(600))?;
    backend.put(b"forever", b"c")?;
    backend.flush()?;

    // A step of 12 minutes: one entry expired 11 minutes ago (more than
    // the grace), the other 2 minutes ago (less).
    clock.advance(Duration::from_secs(720));
    assert_eq!(backend.get(b"expires-in-10m")?, None);
    backend.compact()?;
    assert_eq!(dropped(&backend), 1);

    // The clock is set back to one minute before the second expiry.
    clock.set(T + 540_000);
    assert_eq!(backend.get(b"expires-in-10m")?.as_deref(), Some(&b"b"[..]));
    assert_eq!(backend.get(b"expires-in-1m")?, None);
    assert_eq!(backend.get(b"forever")?.as_deref(), Some(&b"c"[..]));
    Ok(())
}
