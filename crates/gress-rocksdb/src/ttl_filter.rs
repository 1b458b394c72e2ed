//! The compaction filter that drops expired entries, and the read times it
//! must respect.
//!
//! RocksDB applies compaction filters regardless of open snapshots. A scan
//! or snapshot hides entries expired at its own start time, so an entry
//! live at that time must stay in the database while the reader is open.
//! Each compaction therefore drops only entries that expired before both
//! the clock's time and the start of the oldest open reader, less a grace
//! period that also absorbs forward steps of the clock.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gress_state::Clock;
use gress_state::ttl::{StoredValue, is_expired};
use parking_lot::Mutex;
use rocksdb::CompactionDecision;
use rocksdb::compaction_filter::CompactionFilter;
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};

/// What the backend and its compaction filters share.
#[derive(Debug, Default)]
pub(crate) struct TtlState {
    /// Entries dropped by compaction so far, for metrics.
    pub(crate) dropped: AtomicU64,
    /// Start times of the open scans and snapshots, with their counts.
    open_reads: Mutex<BTreeMap<u64, usize>>,
}

impl TtlState {
    /// Reads `clock` and keeps compaction from dropping entries live at
    /// that time until the returned guard is dropped. Takes a lock: for
    /// scans and snapshots, not for point reads.
    pub(crate) fn start_read(self: &Arc<Self>, clock: &dyn Clock) -> OpenRead {
        let mut reads = self.open_reads.lock();
        // Read under the lock, so a compaction that starts after this
        // returns either sees the registration or read the clock earlier.
        let now_ms = clock.now_ms();
        *reads.entry(now_ms).or_insert(0) += 1;
        OpenRead {
            state: Arc::clone(self),
            now_ms,
        }
    }

    /// Entries whose expiry is at or before this may be dropped now.
    fn cutoff(&self, clock: &dyn Clock, grace_ms: u64) -> u64 {
        let reads = self.open_reads.lock();
        let now = clock.now_ms();
        let oldest = reads.keys().next().map_or(now, |&t| t.min(now));
        oldest.saturating_sub(grace_ms)
    }
}

/// An open scan or snapshot, registered with its start time.
#[derive(Debug)]
pub(crate) struct OpenRead {
    state: Arc<TtlState>,
    /// The reader's time: it hides entries expired at this time.
    pub(crate) now_ms: u64,
}

impl Drop for OpenRead {
    fn drop(&mut self) {
        if let Entry::Occupied(mut e) = self.state.open_reads.lock().entry(self.now_ms) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Creates one [`TtlFilter`] per compaction, with its cutoff fixed at the
/// start.
pub(crate) struct TtlFilterFactory {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) state: Arc<TtlState>,
    /// Milliseconds an entry stays after its expiry before compaction may
    /// drop it (`RocksDbConfig::ttl_compaction_grace`).
    pub(crate) grace_ms: u64,
}

impl CompactionFilterFactory for TtlFilterFactory {
    type Filter = TtlFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> TtlFilter {
        TtlFilter {
            cutoff_ms: self.state.cutoff(&*self.clock, self.grace_ms),
            state: Arc::clone(&self.state),
        }
    }

    fn name(&self) -> &CStr {
        c"gress-ttl-filter-factory"
    }
}

/// Removes entries whose stored header says they expired at or before the
/// compaction's cutoff.
///
/// RocksDB turns a removal into a deletion at the entry's own sequence
/// number, so a newer write of the same key is never affected.
pub(crate) struct TtlFilter {
    cutoff_ms: u64,
    state: Arc<TtlState>,
}

impl CompactionFilter for TtlFilter {
    fn filter(&mut self, _level: u32, _key: &[u8], value: &[u8]) -> CompactionDecision {
        match StoredValue::expiry_of(value) {
            Ok(Some(at)) if is_expired(at, self.cutoff_ms) => {
                self.state.dropped.fetch_add(1, Ordering::Relaxed);
                CompactionDecision::Remove
            }
            // Live, never expiring, expired too recently, or unreadable:
            // keep; reads report unreadable values as corruption.
            _ => CompactionDecision::Keep,
        }
    }

    fn name(&self) -> &CStr {
        c"gress-ttl-filter"
    }
}
