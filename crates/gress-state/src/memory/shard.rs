//! Shards: hash tables of entries behind one lock each, owned or frozen
//! (copy-on-write) while a snapshot, scan or capture reads them.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use hashbrown::{HashTable, hash_table};
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use super::capture::CaptureChain;
use crate::clock::Clock;
use crate::error::{Error, Result, closed};
use crate::metrics::{Counter, MetricsRecorder};
use crate::snapshot::{SnapshotKind, SnapshotSummary, SnapshotWriter};
use crate::ttl::{TtlPolicy, is_expired};
use crossbeam_utils::CachePadded;

/// Expiry value of an entry that never expires.
pub(super) const NEVER: u64 = u64::MAX;

/// One stored entry: key and value bytes in one shared block.
#[derive(Clone)]
pub(super) struct Entry {
    /// The key followed by the value.
    data: Arc<[u8]>,
    key_len: u32,
    expires_at_ms: u64,
}

impl Entry {
    pub(super) fn new(key: &[u8], value: &[u8], expiry: Option<u64>) -> Self {
        Entry {
            data: crate::concat::concat_arc(key, value),
            // check_key bounds keys to MAX_KEY_LEN, well inside u32.
            key_len: key.len() as u32,
            expires_at_ms: expiry.unwrap_or(NEVER),
        }
    }

    #[inline]
    pub(super) fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    #[inline]
    pub(super) fn value(&self) -> &[u8] {
        &self.data[self.key_len as usize..]
    }

    pub(super) fn expiry(&self) -> Option<u64> {
        (self.expires_at_ms != NEVER).then_some(self.expires_at_ms)
    }

    #[inline]
    pub(super) fn is_expiring(&self) -> bool {
        self.expires_at_ms != NEVER
    }

    #[inline]
    pub(super) fn is_dead_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms != NEVER && is_expired(self.expires_at_ms, now_ms)
    }

    #[inline]
    pub(super) fn is_dead(&self, clock: &dyn Clock) -> bool {
        self.expires_at_ms != NEVER && is_expired(self.expires_at_ms, clock.now_ms())
    }
}

pub(super) type Hasher = foldhash::fast::RandomState;
pub(super) type Table = HashTable<Entry>;

/// A shard's table: owned while no snapshot or scan holds it, shared
/// (copy-on-write) while one does. The owned state costs writers no atomic
/// operation.
pub(super) enum TableCell {
    Owned(Table),
    Frozen(Arc<Table>),
}

impl TableCell {
    #[inline]
    pub(super) fn get(&self) -> &Table {
        match self {
            TableCell::Owned(t) => t,
            TableCell::Frozen(t) => t,
        }
    }

    /// The table for writing; copies it first if a reader still holds it.
    #[inline]
    pub(super) fn get_mut(&mut self) -> &mut Table {
        if let TableCell::Frozen(_) = self {
            self.thaw();
        }
        match self {
            TableCell::Owned(t) => t,
            TableCell::Frozen(_) => unreachable!("thaw leaves the table owned"),
        }
    }

    #[cold]
    pub(super) fn thaw(&mut self) {
        if let TableCell::Frozen(shared) = std::mem::replace(self, TableCell::Owned(Table::new())) {
            *self = TableCell::Owned(Arc::unwrap_or_clone(shared));
        }
    }

    /// A shared handle to the table as it is now.
    pub(super) fn freeze(&mut self) -> Arc<Table> {
        if let TableCell::Owned(t) = self {
            let t = std::mem::replace(t, Table::new());
            *self = TableCell::Frozen(Arc::new(t));
        }
        match self {
            TableCell::Frozen(t) => Arc::clone(t),
            TableCell::Owned(_) => unreachable!("frozen just above"),
        }
    }
}

pub(super) struct ShardState {
    pub(super) table: TableCell,
    /// Entries in `table` that carry an expiry.
    pub(super) n_expiring: usize,
    /// Keys written or deleted since the last checkpoint capture, while
    /// change tracking is on.
    /// Boxed, so the shard (lock and table header) stays in one cache line.
    pub(super) dirty: Option<Box<DirtySet>>,
}

pub(super) type DirtySet = HashTable<Box<[u8]>>;

impl ShardState {
    pub(super) fn empty() -> Self {
        ShardState {
            table: TableCell::Owned(Table::new()),
            n_expiring: 0,
            dirty: None,
        }
    }

    #[inline]
    pub(super) fn mark_dirty(&mut self, hasher: &Hasher, hash: u64, key: &[u8]) {
        if let Some(dirty) = &mut self.dirty
            && dirty.find(hash, |k| **k == *key).is_none()
        {
            dirty.insert_unique(hash, key.into(), |k| hasher.hash_one(k));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.get().len()
    }

    #[inline]
    pub(super) fn find(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        self.table.get().find(hash, |e| e.key() == key)
    }

    /// Inserts or replaces; returns the replaced entry so it is freed
    /// outside the lock.
    pub(super) fn insert(&mut self, hasher: &Hasher, hash: u64, entry: Entry) -> Option<Entry> {
        let expiring = entry.is_expiring();
        self.mark_dirty(hasher, hash, entry.key());
        let table = self.table.get_mut();
        let old = match table.entry(
            hash,
            |e| e.key() == entry.key(),
            |e| hasher.hash_one(e.key()),
        ) {
            hash_table::Entry::Occupied(mut o) => Some(std::mem::replace(o.get_mut(), entry)),
            hash_table::Entry::Vacant(v) => {
                v.insert(entry);
                None
            }
        };
        if old.as_ref().is_some_and(Entry::is_expiring) {
            self.n_expiring -= 1;
        }
        if expiring {
            self.n_expiring += 1;
        }
        old
    }

    /// Removes `key` if present (and, when `only_if_dead` is given, only if
    /// it is expired at that clock's current time). Only a removal by the
    /// user (not for expiry) counts as a change for checkpoints: an expired
    /// entry is dropped by every restore anyway.
    pub(super) fn remove(
        &mut self,
        hasher: &Hasher,
        hash: u64,
        key: &[u8],
        only_if_dead: Option<&dyn Clock>,
    ) -> Option<Entry> {
        let entry = self.find(hash, key)?;
        match only_if_dead {
            Some(clock) if !entry.is_dead(clock) => return None,
            Some(_) => {}
            None => self.mark_dirty(hasher, hash, key),
        }
        // Copy on write only once we know there is something to remove.
        let table = self.table.get_mut();
        let (old, _) = table.find_entry(hash, |e| e.key() == key).ok()?.remove();
        if old.is_expiring() {
            self.n_expiring -= 1;
        }
        Some(old)
    }
}

pub(super) type Shard = CachePadded<RwLock<Option<ShardState>>>;

pub(super) struct Inner {
    pub(super) shards: Box<[Shard]>,
    pub(super) shard_mask: u64,
    pub(super) hasher: Hasher,
    pub(super) ttl: TtlPolicy,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) metrics: MetricsRecorder,
    pub(super) closed: AtomicBool,
    pub(super) cleanup_interval: Duration,
    pub(super) cleanup_batch: usize,
    /// What checkpoint deltas build on.
    pub(super) chain: Mutex<CaptureChain>,
}

impl Inner {
    #[inline]
    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Bits 32.. pick the shard: the tables use the low bits for buckets and
    /// the top 7 for tags, so a shard's keys still spread within it.
    #[inline]
    pub(super) fn shard_idx(&self, hash: u64) -> usize {
        ((hash >> 32) & self.shard_mask) as usize
    }

    #[inline]
    pub(super) fn shard(&self, hash: u64) -> &RwLock<Option<ShardState>> {
        &self.shards[self.shard_idx(hash)]
    }

    /// One point read; `Ok(Some(true))`-style hit accounting is left to the
    /// caller, which knows its thread slot.
    #[inline]
    pub(super) fn get_one(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_one_with_expiry(key)?.map(|(v, _)| v))
    }

    pub(super) fn get_one_with_expiry(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Option<u64>)>> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let guard = shard.read();
        let state = guard.as_ref().ok_or_else(closed)?;
        match state.find(hash, key) {
            None => Ok(None),
            Some(entry) if entry.is_dead(&*self.clock) => {
                drop(guard);
                self.remove_if_dead(shard, hash, key);
                Ok(None)
            }
            Some(entry) => Ok(Some((entry.value().to_vec(), entry.expiry()))),
        }
    }

    /// Removes an entry seen expired by a reader. The check is repeated
    /// under the write lock, so a value written since the reader looked is
    /// kept.
    pub(super) fn remove_if_dead(&self, shard: &RwLock<Option<ShardState>>, hash: u64, key: &[u8]) {
        let removed = {
            let mut guard = shard.write();
            guard
                .as_mut()
                .and_then(|state| state.remove(&self.hasher, hash, key, Some(&*self.clock)))
        };
        if removed.is_some() {
            self.metrics.add(Counter::Expired, 1);
        }
    }

    pub(super) fn lock_all_for_write(
        &self,
    ) -> Result<Vec<RwLockWriteGuard<'_, Option<ShardState>>>> {
        // Ascending order, as every multi-shard lock holder, so none deadlock.
        let guards: Vec<_> = self.shards.iter().map(|s| s.write()).collect();
        if guards.iter().any(|g| g.is_none()) {
            return Err(Error::Closed);
        }
        Ok(guards)
    }

    /// A consistent cut of every shard, taken by holding all shard locks at
    /// once for the time it takes to share each table.
    pub(super) fn freeze(&self) -> Result<Vec<Arc<Table>>> {
        let mut guards = self.lock_all_for_write()?;
        Ok(guards
            .iter_mut()
            .filter_map(|g| g.as_mut().map(|s| s.table.freeze()))
            .collect())
    }
}

/// Writes every live entry of `tables` as a full snapshot taken at `now_ms`.
pub(super) fn write_full_snapshot(
    tables: &[Arc<Table>],
    now_ms: u64,
    out: &mut dyn std::io::Write,
) -> Result<SnapshotSummary> {
    let mut writer = SnapshotWriter::new(out, SnapshotKind::Full, now_ms)?;
    for table in tables {
        for entry in table.iter().filter(|e| !e.is_dead_at(now_ms)) {
            writer.put(entry.key(), entry.value(), entry.expiry())?;
        }
    }
    writer.finish()
}
