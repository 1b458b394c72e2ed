//! The compaction filter that drops expired entries.

use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gress_state::Clock;
use gress_state::ttl::{StoredValue, is_expired};
use rocksdb::CompactionDecision;
use rocksdb::compaction_filter::CompactionFilter;
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};

/// Creates one [`TtlFilter`] per compaction, with the clock read once.
pub(crate) struct TtlFilterFactory {
    pub(crate) clock: Arc<dyn Clock>,
    /// Entries dropped so far, for metrics.
    pub(crate) dropped: Arc<AtomicU64>,
}

impl CompactionFilterFactory for TtlFilterFactory {
    type Filter = TtlFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> TtlFilter {
        TtlFilter {
            now_ms: self.clock.now_ms(),
            dropped: Arc::clone(&self.dropped),
        }
    }

    fn name(&self) -> &CStr {
        c"gress-ttl-filter-factory"
    }
}

/// Removes entries whose stored header says they expired.
///
/// RocksDB turns a removal into a deletion at the entry's own sequence
/// number, so a newer write of the same key is never affected; and it does
/// not apply the filter to versions an open snapshot still sees.
pub(crate) struct TtlFilter {
    now_ms: u64,
    dropped: Arc<AtomicU64>,
}

impl CompactionFilter for TtlFilter {
    fn filter(&mut self, _level: u32, _key: &[u8], value: &[u8]) -> CompactionDecision {
        match StoredValue::expiry_of(value) {
            Ok(Some(at)) if is_expired(at, self.now_ms) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                CompactionDecision::Remove
            }
            // Live, never expiring, or unreadable: keep; reads report
            // unreadable values as corruption.
            _ => CompactionDecision::Keep,
        }
    }

    fn name(&self) -> &CStr {
        c"gress-ttl-filter"
    }
}
