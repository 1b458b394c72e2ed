//! The `StateBackend` contract every backend implements.

use std::fmt;
use std::io::{Read, Write};
use std::ops::Bound;
use std::time::Duration;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::snapshot::{RestoreSummary, SnapshotSummary};

/// An owned key and value, as yielded by scans.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The iterator a scan returns: entries in ascending key order.
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<KeyValue>> + Send + 'a>;

/// Keyed byte state for stream operators.
///
/// Keys and values are arbitrary bytes (the empty key and empty value
/// included). Types live in layers above; a backend sees only bytes.
///
/// # Contract
///
/// Every backend in this workspace passes the conformance suite in
/// `gress-testkit`, which checks each point below.
///
/// - **Visibility.** A write is visible to every read, on any thread, that
///   starts after the write returned. A read concurrent with a write sees the
///   old or the new value, never a mix.
/// - **Missing keys.** `get` of a missing key is `Ok(None)`; `delete` of a
///   missing key is `Ok(())`.
/// - **TTL.** With a default TTL configured, `put` gives the entry that TTL;
///   `put_with_ttl` overrides it; otherwise an entry never expires. Expiry
///   has millisecond resolution and is an absolute time of the backend's
///   clock. From the first millisecond `now >= expires_at`, the entry is never
///   returned by any read, never counted as a hit and never written to a
///   snapshot. Removing it never removes a value written after it.
/// - **Batches.** [`StateBackend::write_batch`] applies every operation or
///   none, and no reader or snapshot sees part of a batch.
/// - **Scans** return live entries in ascending byte order of their keys, from
///   a consistent point-in-time view taken when the scan starts.
/// - **Snapshots** ([`StateBackend::snapshot_to`]) are a consistent
///   point-in-time view: every write that returned before the call started
///   is in it, and of the writes racing with it each is either wholly in or
///   wholly out. Writers are not blocked while the snapshot is written.
/// - **Restore** ([`StateBackend::restore_from`]) *replaces* the state: after
///   it returns `Ok`, the backend holds exactly the snapshot's live entries.
///   It is atomic: on any error (corrupt, truncated or foreign input, I/O
///   failure) the state is exactly what it was before the call. Writes that
///   race with a restore may be overwritten by it.
/// - **Close** is idempotent. Every call that starts after `close` returned
///   fails with [`Error::Closed`](crate::Error::Closed), never panics. Calls
///   already in flight when `close` is called either complete or fail with
///   `Closed`. Dropping the last handle closes the backend.
///
/// The trait is object safe: share a backend as `Arc<dyn StateBackend>`.
pub trait StateBackend: Send + Sync + fmt::Debug {
    /// A short name for logs and metrics, e.g. "memory" or "rocksdb".
    fn name(&self) -> &'static str;

    /// The live value of `key`, or `None` if absent or expired.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The live value of `key` and when it expires (ms since the UNIX
    /// epoch on the backend's clock; `None`: never), or `None` if absent or
    /// expired. A layer above that caches values keeps their expiry so.
    fn get_with_expiry(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Option<u64>)>>;

    /// The live values of `keys`, in the same order.
    fn multi_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>>;

    /// The live values of `keys` with when each expires, in the same
    /// order, as [`StateBackend::get_with_expiry`] gives them one at a
    /// time. Backends that read several keys faster together (RocksDB's
    /// batched `MultiGet`) override it.
    #[allow(clippy::type_complexity)]
    fn multi_get_with_expiry(&self, keys: &[&[u8]]) -> Result<Vec<Option<(Vec<u8>, Option<u64>)>>> {
        keys.iter().map(|k| self.get_with_expiry(k)).collect()
    }

    /// The TTL that [`StateBackend::put`] gives a value, if any (the
    /// backend's configured default).
    fn default_ttl(&self) -> Option<Duration> {
        None
    }

    /// Whether a scan costs in proportion to the entries in its range (an
    /// ordered store, the default) rather than to every entry (a hash
    /// table): a layer above then picks many narrow scans or one wide one.
    fn ordered(&self) -> bool {
        true
    }

    /// Sets `key` to `value`, with the configured default TTL if any.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Sets `key` to `value`, expiring `ttl` after now (rounded up to the
    /// millisecond). A zero TTL is an [`Error::InvalidArgument`](crate::Error::InvalidArgument).
    fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()>;

    /// Removes `key`. Removing a missing key succeeds.
    fn delete(&self, key: &[u8]) -> Result<()>;

    /// Applies every operation of `batch` atomically, in order.
    fn write_batch(&self, batch: &WriteBatch) -> Result<()>;

    /// Live entries whose keys fall in `range`, in ascending key order.
    fn scan(&self, range: KeyRange) -> Result<ScanIter<'_>>;

    /// Writes a full snapshot in format v1 to `out`.
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<SnapshotSummary>;

    /// Replaces the whole state with the full snapshot read from `input`.
    fn restore_from(&self, input: &mut dyn Read) -> Result<RestoreSummary>;

    /// Makes every acknowledged write durable on the backend's medium.
    /// A no-op for backends that keep nothing outside memory.
    fn flush(&self) -> Result<()>;

    /// Counters, latency percentiles and the key count. Works after close,
    /// reporting the figures as they stood.
    fn metrics(&self) -> Metrics;

    /// Releases the backend's resources; see the contract above.
    fn close(&self) -> Result<()>;

    /// True once `close` has been called.
    fn is_closed(&self) -> bool;

    /// A full snapshot in memory; a thin wrapper over [`Self::snapshot_to`].
    fn snapshot(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.snapshot_to(&mut out)?;
        Ok(out)
    }

    /// Restores from an in-memory snapshot; a thin wrapper over
    /// [`Self::restore_from`].
    fn restore(&self, snapshot: &[u8]) -> Result<RestoreSummary> {
        let mut input = snapshot;
        self.restore_from(&mut input)
    }

    /// Live entries whose keys start with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ScanIter<'_>> {
        self.scan(KeyRange::prefix(prefix))
    }
}

/// One operation of a [`WriteBatch`], borrowed from it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BatchOp<'a> {
    /// Set a value; `ttl` of `None` means the backend's default.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// An explicit TTL, as for `put_with_ttl`.
        ttl: Option<Duration>,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: &'a [u8],
    },
}

impl<'a> BatchOp<'a> {
    /// The key the operation writes.
    pub fn key(&self) -> &'a [u8] {
        match *self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

impl fmt::Debug for BatchOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchOp::Put { key, value, ttl } => f
                .debug_struct("Put")
                .field("key", &crate::util::Hex(key))
                .field("value_len", &value.len())
                .field("ttl", ttl)
                .finish(),
            BatchOp::Delete { key } => f
                .debug_struct("Delete")
                .field("key", &crate::util::Hex(key))
                .finish(),
        }
    }
}

/// Where one operation's bytes sit in a batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpSlot {
    start: usize,
    key_len: usize,
    /// `None` for a delete.
    value_len: Option<usize>,
    ttl: Option<Duration>,
}

/// Writes applied together by [`StateBackend::write_batch`]: all or none.
///
/// Keys and values are copied into one growing buffer, so building a batch
/// costs no allocation per operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    data: Vec<u8>,
    ops: Vec<OpSlot>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, key: &[u8], value: Option<&[u8]>, ttl: Option<Duration>) -> &mut Self {
        let start = self.data.len();
        self.data.extend_from_slice(key);
        if let Some(value) = value {
            self.data.extend_from_slice(value);
        }
        self.ops.push(OpSlot {
            start,
            key_len: key.len(),
            value_len: value.map(<[u8]>::len),
            ttl,
        });
        self
    }

    /// Adds a put with the backend's default TTL.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.push(key.as_ref(), Some(value.as_ref()), None)
    }

    /// Adds a put that expires `ttl` after the batch is applied.
    pub fn put_with_ttl(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> &mut Self {
        self.push(key.as_ref(), Some(value.as_ref()), Some(ttl))
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.push(key.as_ref(), None, None)
    }

    /// The operations, in order.
    pub fn ops(&self) -> impl ExactSizeIterator<Item = BatchOp<'_>> + '_ {
        self.ops.iter().map(|op| {
            let key = &self.data[op.start..op.start + op.key_len];
            match op.value_len {
                Some(len) => {
                    let v = op.start + op.key_len;
                    BatchOp::Put {
                        key,
                        value: &self.data[v..v + len],
                        ttl: op.ttl,
                    }
                }
                None => BatchOp::Delete { key },
            }
        })
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of all keys and values together.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// Removes every operation, keeping the allocated space.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ops.clear();
    }

    /// Checks every key, value and TTL before anything is applied, so a
    /// backend can reject the whole batch up front.
    pub fn validate(&self) -> Result<()> {
        for op in self.ops() {
            crate::ttl::check_key(op.key())?;
            if let BatchOp::Put { value, ttl, .. } = op {
                crate::ttl::check_value(value)?;
                if let Some(ttl) = ttl {
                    crate::ttl::ttl_ms(ttl)?;
                }
            }
        }
        Ok(())
    }
}

/// A range of keys for [`StateBackend::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            start: Bound::Included(start.into()),
            end: Bound::Excluded(end.into()),
        }
    }

    /// Keys that start with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange {
            start: Bound::Included(prefix.to_vec()),
            end: prefix_successor(prefix).map_or(Bound::Unbounded, Bound::Excluded),
        }
    }

    /// True if `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }
}

/// The smallest key greater than every key starting with `prefix`, or
/// `None` if there is none (the prefix is empty or all `0xFF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xFF)?;
    let mut succ = prefix[..=last].to_vec();
    succ[last] += 1;
    Some(succ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_covers_exactly_the_prefix() {
        let r = KeyRange::prefix(b"ab\xff");
        assert!(r.contains(b"ab\xff"));
        assert!(r.contains(b"ab\xff\x00"));
        assert!(!r.contains(b"ac"));
        assert!(!r.contains(b"ab\xfe"));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert!(KeyRange::prefix(b"").contains(b"anything"));
    }
}
