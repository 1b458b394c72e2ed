//! `MemoryStateBackend`: sharded hash maps with copy-on-write snapshots.
//!
//! Layout: keys are hashed once; bits 32.. of the hash pick one of
//! `n_shards` shards, each an `RwLock` over an `Arc` of a hash table. An
//! entry keeps key and value in one allocation, so a lookup touches the
//! table and that one block. Point operations lock one shard. Snapshots and scans lock every shard for read
//! just long enough to clone the `Arc`s (a consistent cut), then read
//! without locks; a writer that finds its shard shared copies that shard
//! first (`Arc::make_mut`), so writers never wait for snapshot I/O.
//! Expired entries are removed lazily on read and by a background thread
//! that walks each shard in bounded steps.

use std::fmt;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hashbrown::{HashTable, hash_table};
use parking_lot::{Condvar, Mutex, RwLock, RwLockWriteGuard};

use crate::backend::{BatchOp, KeyRange, ScanIter, StateBackend, WriteBatch};
use crate::checkpoint::{
    Capture, CaptureKind, CaptureMode, CapturedFile, CheckpointFiles, Checkpointable, FileSource,
    PreparedRestore,
};
use crate::clock::{Clock, system_clock};
use crate::error::{Error, Result, closed};
use crate::metrics::{Counter, DEFAULT_SAMPLE_EVERY, Metrics, MetricsRecorder, Op};
use crate::snapshot::{
    RestoreSummary, SnapshotEntry, SnapshotKind, SnapshotReader, SnapshotSummary, SnapshotWriter,
};
use crate::ttl::{TtlPolicy, check_key, check_value, is_expired};
use std::hash::BuildHasher;

/// Configuration of a [`MemoryStateBackend`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Whether a plain `put` gets `default_ttl`. `put_with_ttl` always
    /// applies its own TTL.
    pub ttl_enabled: bool,
    /// The TTL of a plain `put` when `ttl_enabled`; must then be positive.
    pub default_ttl: Duration,
    /// How often the background thread removes expired entries; zero turns
    /// background cleanup off (expired entries are then removed on read).
    pub cleanup_interval: Duration,
    /// Entries examined per shard under one lock hold during cleanup.
    pub cleanup_batch: usize,
    /// Number of shards, a power of two: more shards, less contention and
    /// smaller copy-on-write copies.
    pub n_shards: usize,
    /// One call in this many (per thread) is timed for latency percentiles;
    /// 1 times every call, 0 none.
    pub latency_sample_every: u32,
    /// The time source for TTL.
    pub clock: Arc<dyn Clock>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            ttl_enabled: false,
            default_ttl: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(1),
            cleanup_batch: 1024,
            n_shards: 1024,
            latency_sample_every: DEFAULT_SAMPLE_EVERY,
            clock: system_clock(),
        }
    }
}

impl MemoryConfig {
    /// Enables TTL with `default_ttl` for plain puts.
    pub fn with_ttl(mut self, default_ttl: Duration) -> Self {
        self.ttl_enabled = true;
        self.default_ttl = default_ttl;
        self
    }

    /// Uses `clock` for TTL decisions.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the background cleanup interval (zero disables it).
    pub fn with_cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Sets the number of shards.
    pub fn with_shards(mut self, n_shards: usize) -> Self {
        self.n_shards = n_shards;
        self
    }

    /// Sets latency sampling (see [`MemoryConfig::latency_sample_every`]).
    pub fn with_latency_sampling(mut self, every: u32) -> Self {
        self.latency_sample_every = every;
        self
    }

    fn validate(&self) -> Result<TtlPolicy> {
        if !self.n_shards.is_power_of_two() || self.n_shards > 1 << 16 {
            return Err(Error::invalid_config(
                "n_shards",
                format!(
                    "must be a power of two between 1 and 65536, got {}",
                    self.n_shards
                ),
            ));
        }
        if self.cleanup_batch == 0 {
            return Err(Error::invalid_config("cleanup_batch", "must be at least 1"));
        }
        TtlPolicy::new(self.ttl_enabled, self.default_ttl)
    }
}

/// Expiry value of an entry that never expires.
const NEVER: u64 = u64::MAX;

/// One stored entry: key and value bytes in one shared block.
#[derive(Clone)]
struct Entry {
    /// The key followed by the value.
    data: Arc<[u8]>,
    key_len: u32,
    expires_at_ms: u64,
}

impl Entry {
    fn new(key: &[u8], value: &[u8], expiry: Option<u64>) -> Self {
        Entry {
            data: crate::concat::concat_arc(key, value),
            // check_key bounds keys to MAX_KEY_LEN, well inside u32.
            key_len: key.len() as u32,
            expires_at_ms: expiry.unwrap_or(NEVER),
        }
    }

    #[inline]
    fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    #[inline]
    fn value(&self) -> &[u8] {
        &self.data[self.key_len as usize..]
    }

    fn expiry(&self) -> Option<u64> {
        (self.expires_at_ms != NEVER).then_some(self.expires_at_ms)
    }

    #[inline]
    fn is_expiring(&self) -> bool {
        self.expires_at_ms != NEVER
    }

    #[inline]
    fn is_dead_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms != NEVER && is_expired(self.expires_at_ms, now_ms)
    }

    #[inline]
    fn is_dead(&self, clock: &dyn Clock) -> bool {
        self.expires_at_ms != NEVER && is_expired(self.expires_at_ms, clock.now_ms())
    }
}

type Hasher = foldhash::fast::RandomState;
type Table = HashTable<Entry>;

/// A shard's table: owned while no snapshot or scan holds it, shared
/// (copy-on-write) while one does. The owned state costs writers no atomic
/// operation.
enum TableCell {
    Owned(Table),
    Frozen(Arc<Table>),
}

impl TableCell {
    #[inline]
    fn get(&self) -> &Table {
        match self {
            TableCell::Owned(t) => t,
            TableCell::Frozen(t) => t,
        }
    }

    /// The table for writing; copies it first if a reader still holds it.
    #[inline]
    fn get_mut(&mut self) -> &mut Table {
        if let TableCell::Frozen(_) = self {
            self.thaw();
        }
        match self {
            TableCell::Owned(t) => t,
            TableCell::Frozen(_) => unreachable!("thaw leaves the table owned"),
        }
    }

    #[cold]
    fn thaw(&mut self) {
        if let TableCell::Frozen(shared) = std::mem::replace(self, TableCell::Owned(Table::new())) {
            *self = TableCell::Owned(Arc::unwrap_or_clone(shared));
        }
    }

    /// A shared handle to the table as it is now.
    fn freeze(&mut self) -> Arc<Table> {
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

struct ShardState {
    table: TableCell,
    /// Entries in `table` that carry an expiry.
    n_expiring: usize,
    /// Keys written or deleted since the last checkpoint capture, while
    /// change tracking is on.
    /// Boxed, so the shard (lock and table header) stays in one cache line.
    dirty: Option<Box<DirtySet>>,
}

type DirtySet = HashTable<Box<[u8]>>;

impl ShardState {
    fn empty() -> Self {
        ShardState {
            table: TableCell::Owned(Table::new()),
            n_expiring: 0,
            dirty: None,
        }
    }

    #[inline]
    fn mark_dirty(&mut self, hasher: &Hasher, hash: u64, key: &[u8]) {
        if let Some(dirty) = &mut self.dirty
            && dirty.find(hash, |k| **k == *key).is_none()
        {
            dirty.insert_unique(hash, key.into(), |k| hasher.hash_one(k));
        }
    }

    fn len(&self) -> usize {
        self.table.get().len()
    }

    #[inline]
    fn find(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        self.table.get().find(hash, |e| e.key() == key)
    }

    /// Inserts or replaces; returns the replaced entry so it is freed
    /// outside the lock.
    fn insert(&mut self, hasher: &Hasher, hash: u64, entry: Entry) -> Option<Entry> {
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
    fn remove(
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

type Shard = CachePadded<RwLock<Option<ShardState>>>;

struct Inner {
    shards: Box<[Shard]>,
    shard_mask: u64,
    hasher: Hasher,
    ttl: TtlPolicy,
    clock: Arc<dyn Clock>,
    metrics: MetricsRecorder,
    closed: AtomicBool,
    cleanup_interval: Duration,
    cleanup_batch: usize,
    /// Set when the dirty sets no longer describe every change since the
    /// last committed capture (first capture, failed checkpoint, restore,
    /// clear): the next capture is full.
    force_full_capture: AtomicBool,
}

/// Fast in-memory state with TTL, snapshots and metrics.
///
/// See [`StateBackend`] for the contract. Memory use is about the size of
/// the keys and values plus ~80 bytes per entry. A snapshot or scan that is
/// in progress keeps the entries it sees alive; shards written during it are
/// copied once (the entry table, not the keys and values).
///
/// Scans visit every entry (the shards are hash tables), so they cost time
/// in proportion to the whole state, not to the range; keep wide scans for
/// small states or use the RocksDB backend.
pub struct MemoryStateBackend {
    inner: Arc<Inner>,
    cleaner: Mutex<Option<Cleaner>>,
    cleaner_started: AtomicBool,
}

struct Cleaner {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl fmt::Debug for MemoryStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStateBackend")
            .field("n_shards", &self.inner.shards.len())
            .field("ttl", &self.inner.ttl)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStateBackend {
    fn default() -> Self {
        Self::new(MemoryConfig::default()).expect("the default configuration is valid")
    }
}

impl MemoryStateBackend {
    /// Creates an empty backend.
    pub fn new(config: MemoryConfig) -> Result<Self> {
        let ttl = config.validate()?;
        let shards = (0..config.n_shards)
            .map(|_| CachePadded::new(RwLock::new(Some(ShardState::empty()))))
            .collect();
        Ok(MemoryStateBackend {
            inner: Arc::new(Inner {
                shards,
                shard_mask: config.n_shards as u64 - 1,
                hasher: Hasher::default(),
                ttl,
                clock: config.clock,
                metrics: MetricsRecorder::new(config.latency_sample_every),
                closed: AtomicBool::new(false),
                cleanup_interval: config.cleanup_interval,
                cleanup_batch: config.cleanup_batch,
                force_full_capture: AtomicBool::new(true),
            }),
            cleaner: Mutex::new(None),
            cleaner_started: AtomicBool::new(false),
        })
    }

    /// Entries stored, including expired ones not yet removed. Not a
    /// consistent count while other threads write.
    pub fn len(&self) -> Result<usize> {
        let mut n = 0;
        for shard in self.inner.shards.iter() {
            n += shard.read().as_ref().ok_or_else(closed)?.len();
        }
        Ok(n)
    }

    /// True if nothing is stored.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<()> {
        let mut guards = self.inner.lock_all_for_write()?;
        let old: Vec<_> = guards
            .iter_mut()
            .filter_map(|g| {
                let dirty = g
                    .as_ref()
                    .and_then(|s| s.dirty.as_ref())
                    .map(|_| Box::default());
                g.replace(ShardState {
                    dirty,
                    ..ShardState::empty()
                })
            })
            .collect();
        self.inner.force_full_capture.store(true, Ordering::Release);
        drop(guards);
        drop(old);
        Ok(())
    }

    /// Removes expired entries now, as the background thread does; returns
    /// how many were removed.
    pub fn purge_expired(&self) -> Result<u64> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(self.inner.cleanup_pass())
    }

    /// Starts the cleanup thread on the first write that carries an expiry.
    #[inline]
    fn note_expiring_write(&self) {
        if !self.cleaner_started.load(Ordering::Relaxed) {
            self.start_cleaner();
        }
    }

    fn start_cleaner(&self) {
        let mut cleaner = self.cleaner.lock();
        if self.cleaner_started.load(Ordering::Relaxed) || self.is_closed() {
            return;
        }
        self.cleaner_started.store(true, Ordering::Relaxed);
        if self.inner.cleanup_interval.is_zero() {
            return;
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.cleanup_interval;
        let thread_stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("gress-ttl-cleanup".into())
            .spawn(move || cleanup_loop(&weak, interval, &thread_stop));
        match spawned {
            Ok(thread) => *cleaner = Some(Cleaner { stop, thread }),
            // Without the thread, expired entries are still never returned
            // and are removed on read; say so and carry on.
            Err(e) => tracing::warn!(error = %e, "could not start the TTL cleanup thread"),
        }
    }

    fn put_inner(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        let inner = &*self.inner;
        let expiry = inner.ttl.expiry(ttl, || inner.clock.now_ms())?;
        let entry = Entry::new(key, value, expiry);
        let hash = inner.hash(key);
        let old = {
            let mut guard = inner.shard(hash).write();
            let state = guard.as_mut().ok_or_else(closed)?;
            state.insert(&inner.hasher, hash, entry)
        };
        drop(old);
        if expiry.is_some() {
            self.note_expiring_write();
        }
        Ok(())
    }
}

impl Inner {
    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Bits 32.. pick the shard: the tables use the low bits for buckets and
    /// the top 7 for tags, so a shard's keys still spread within it.
    #[inline]
    fn shard_idx(&self, hash: u64) -> usize {
        ((hash >> 32) & self.shard_mask) as usize
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Option<ShardState>> {
        &self.shards[self.shard_idx(hash)]
    }

    /// One point read; `Ok(Some(true))`-style hit accounting is left to the
    /// caller, which knows its thread slot.
    #[inline]
    fn get_one(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
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
            Some(entry) => Ok(Some(entry.value().to_vec())),
        }
    }

    /// Removes an entry seen expired by a reader. The check is repeated
    /// under the write lock, so a value written since the reader looked is
    /// kept.
    fn remove_if_dead(&self, shard: &RwLock<Option<ShardState>>, hash: u64, key: &[u8]) {
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

    fn lock_all_for_write(&self) -> Result<Vec<RwLockWriteGuard<'_, Option<ShardState>>>> {
        // Ascending order, as every multi-shard lock holder, so none deadlock.
        let guards: Vec<_> = self.shards.iter().map(|s| s.write()).collect();
        if guards.iter().any(|g| g.is_none()) {
            return Err(Error::Closed);
        }
        Ok(guards)
    }

    /// A consistent cut of every shard, taken by holding all shard locks at
    /// once for the time it takes to share each table.
    fn freeze(&self) -> Result<Vec<Arc<Table>>> {
        let mut guards = self.lock_all_for_write()?;
        Ok(guards
            .iter_mut()
            .filter_map(|g| g.as_mut().map(|s| s.table.freeze()))
            .collect())
    }

    /// One pass of background cleanup over every shard, in bounded steps.
    fn cleanup_pass(&self) -> u64 {
        let mut removed = 0;
        for shard in self.shards.iter() {
            removed += self.cleanup_shard(shard);
        }
        if removed > 0 {
            self.metrics.add(Counter::Expired, removed);
        }
        removed
    }

    /// Walks one shard's buckets from first to last, `cleanup_batch` buckets
    /// per lock hold. Removing does not move other entries; if the table
    /// grows between steps, entries missed are caught by the next pass. Only
    /// expired entries are removed.
    fn cleanup_shard(&self, shard: &RwLock<Option<ShardState>>) -> u64 {
        if shard.read().as_ref().is_none_or(|s| s.n_expiring == 0) {
            return 0;
        }
        let mut removed = 0;
        let mut bucket = 0;
        loop {
            let now = self.clock.now_ms();
            let mut guard = shard.write();
            let Some(state) = guard.as_mut() else {
                return removed;
            };
            let end = state
                .table
                .get()
                .num_buckets()
                .min(bucket + self.cleanup_batch);
            while bucket < end && state.n_expiring > 0 {
                if state
                    .table
                    .get()
                    .get_bucket(bucket)
                    .is_some_and(|e| e.is_dead_at(now))
                {
                    let table = state.table.get_mut();
                    if let Ok(entry) = table.get_bucket_entry(bucket) {
                        entry.remove();
                        state.n_expiring -= 1;
                        removed += 1;
                    }
                }
                bucket += 1;
            }
            if bucket >= state.table.get().num_buckets() || state.n_expiring == 0 {
                return removed;
            }
            drop(guard);
            std::thread::yield_now();
        }
    }
}

fn cleanup_loop(inner: &Weak<Inner>, interval: Duration, stop: &(Mutex<bool>, Condvar)) {
    loop {
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                stop.1.wait_for(&mut stopped, interval);
            }
            if *stopped {
                return;
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let removed = inner.cleanup_pass();
        if removed > 0 {
            tracing::trace!(removed, "removed expired entries");
        }
    }
}

/// A state built beside the live one by a restore, swapped in only once
/// every input stream was read and verified.
struct Staged {
    shards: Vec<ShardState>,
    now_ms: u64,
    summary: RestoreSummary,
}

impl Staged {
    fn new(inner: &Inner) -> Self {
        Staged {
            shards: (0..inner.shards.len())
                .map(|_| ShardState::empty())
                .collect(),
            now_ms: inner.clock.now_ms(),
            summary: RestoreSummary::default(),
        }
    }

    /// Applies one snapshot stream: a full one onto an empty stage, or a
    /// delta onto what is staged.
    fn read_stream(
        &mut self,
        inner: &Inner,
        input: &mut dyn Read,
        expect: SnapshotKind,
    ) -> Result<()> {
        let mut reader = SnapshotReader::new(input)?;
        let kind = reader.header().kind;
        if kind != expect {
            return Err(Error::invalid_argument(
                "snapshot",
                match expect {
                    SnapshotKind::Full => {
                        "a delta snapshot cannot replace the state; restore its full base first"
                    }
                    SnapshotKind::Delta => "expected a delta snapshot after the full one",
                },
            ));
        }
        while let Some(entry) = reader.next_entry()? {
            let key = entry.key();
            let hash = inner.hash(key);
            let shard = &mut self.shards[inner.shard_idx(hash)];
            match entry {
                SnapshotEntry::Put {
                    value,
                    expires_at_ms,
                    ..
                } if !expires_at_ms.is_some_and(|at| is_expired(at, self.now_ms)) => {
                    shard.insert(&inner.hasher, hash, Entry::new(key, value, expires_at_ms));
                }
                SnapshotEntry::Put { .. } => {
                    self.summary.n_entries_expired += 1;
                    shard.remove(&inner.hasher, hash, key, None);
                }
                SnapshotEntry::Tombstone { .. } => {
                    shard.remove(&inner.hasher, hash, key, None);
                }
            }
        }
        self.summary.n_entries_read += reader.entries_read();
        self.summary.n_bytes += reader.bytes_read();
        Ok(())
    }
}

impl MemoryStateBackend {
    /// Swaps a fully read stage in for the live state.
    fn commit_staged(&self, mut staged: Staged) -> Result<RestoreSummary> {
        let inner = &*self.inner;
        let any_expiring = staged.shards.iter().any(|s| s.n_expiring > 0);
        staged.summary.n_entries_restored = staged.shards.iter().map(|s| s.len() as u64).sum();
        let mut guards = inner.lock_all_for_write()?;
        let old: Vec<_> = guards
            .iter_mut()
            .zip(staged.shards)
            .map(|(guard, mut new)| {
                // Change tracking goes on, but what changed is now "all".
                new.dirty = guard
                    .as_ref()
                    .and_then(|s| s.dirty.as_ref())
                    .map(|_| Box::default());
                guard.replace(new)
            })
            .collect();
        inner.force_full_capture.store(true, Ordering::Release);
        drop(guards);
        drop(old);
        inner.metrics.add(Counter::Restore, 1);
        if any_expiring {
            self.note_expiring_write();
        }
        Ok(staged.summary)
    }
}

/// Checkpoint format of the memory backend: a v1 full snapshot, then v1
/// delta snapshots, one file each.
pub const MEMORY_CHECKPOINT_FORMAT: &str = "memory-v1";

impl Checkpointable for MemoryStateBackend {
    fn capture(&self, mode: CaptureMode, checkpoint_id: u64) -> Result<Box<dyn Capture>> {
        let inner = &*self.inner;
        let started = Instant::now();
        let mut guards = inner.lock_all_for_write()?;
        let delta = mode == CaptureMode::Incremental
            && !inner.force_full_capture.load(Ordering::Acquire)
            && guards
                .iter()
                .all(|g| g.as_ref().is_some_and(|s| s.dirty.is_some()));
        let mut tables = Vec::with_capacity(guards.len());
        let mut dirty = Vec::with_capacity(if delta { guards.len() } else { 0 });
        for state in guards.iter_mut().filter_map(|g| g.as_mut()) {
            tables.push(state.table.freeze());
            let changed = state.dirty.replace(Box::default());
            if delta {
                dirty.push(changed.map(|d| *d).unwrap_or_default());
            }
        }
        inner.force_full_capture.store(false, Ordering::Release);
        drop(guards);
        let pause = started.elapsed();
        let name = if delta {
            format!("delta-{checkpoint_id:020}.snap")
        } else {
            format!("full-{checkpoint_id:020}.snap")
        };
        Ok(Box::new(MemoryCapture {
            inner: Arc::clone(&self.inner),
            files: vec![CapturedFile {
                name,
                source: FileSource::Stream,
                shared_key: None,
            }],
            tables,
            dirty: delta.then_some(dirty),
            now_ms: inner.clock.now_ms(),
            pause,
            committed: false,
        }))
    }

    fn prepare_restore(
        &self,
        format: &str,
        files: &dyn CheckpointFiles,
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        if format != MEMORY_CHECKPOINT_FORMAT {
            return Err(Error::UnsupportedFormat {
                found: format!("checkpoint format {format}").into(),
                supported: MEMORY_CHECKPOINT_FORMAT.into(),
            });
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let names = files.names();
        if names.is_empty() {
            return Err(Error::invalid_argument(
                "files",
                "a checkpoint with no files",
            ));
        }
        let mut staged = Staged::new(&self.inner);
        for (i, name) in names.iter().enumerate() {
            let expect = if i == 0 {
                SnapshotKind::Full
            } else {
                SnapshotKind::Delta
            };
            let mut input = files.open(name)?;
            staged.read_stream(&self.inner, &mut input, expect)?;
        }
        Ok(Box::new(PreparedMemoryRestore {
            backend: self,
            staged,
        }))
    }
}

struct PreparedMemoryRestore<'a> {
    backend: &'a MemoryStateBackend,
    staged: Staged,
}

impl PreparedRestore for PreparedMemoryRestore<'_> {
    fn commit(self: Box<Self>) -> Result<()> {
        self.backend.commit_staged(self.staged).map(drop)
    }
}

/// A frozen cut of the memory backend: full, or the changed keys.
struct MemoryCapture {
    inner: Arc<Inner>,
    files: Vec<CapturedFile>,
    tables: Vec<Arc<Table>>,
    /// Per shard, the keys changed since the previous capture (delta only).
    dirty: Option<Vec<HashTable<Box<[u8]>>>>,
    now_ms: u64,
    pause: Duration,
    committed: bool,
}

impl Capture for MemoryCapture {
    fn kind(&self) -> CaptureKind {
        if self.dirty.is_some() {
            CaptureKind::Delta
        } else {
            CaptureKind::Complete
        }
    }

    fn format(&self) -> &'static str {
        MEMORY_CHECKPOINT_FORMAT
    }

    fn files(&self) -> &[CapturedFile] {
        &self.files
    }

    fn write_stream(&mut self, name: &str, out: &mut dyn Write) -> Result<u64> {
        if name != self.files[0].name {
            return Err(Error::invalid_argument(
                "name",
                format!("no file {name} in this capture"),
            ));
        }
        let now = self.now_ms;
        let summary = match &self.dirty {
            None => {
                let mut w = SnapshotWriter::new(out, SnapshotKind::Full, now)?;
                for table in &self.tables {
                    for entry in table.iter().filter(|e| !e.is_dead_at(now)) {
                        w.put(entry.key(), entry.value(), entry.expiry())?;
                    }
                }
                w.finish()?
            }
            Some(dirty) => {
                let mut w = SnapshotWriter::new(out, SnapshotKind::Delta, now)?;
                for (table, keys) in self.tables.iter().zip(dirty) {
                    for key in keys.iter() {
                        let hash = self.inner.hash(key);
                        match table.find(hash, |e| e.key() == &key[..]) {
                            Some(e) if !e.is_dead_at(now) => w.put(key, e.value(), e.expiry())?,
                            _ => w.tombstone(key)?,
                        }
                    }
                }
                w.finish()?
            }
        };
        Ok(summary.n_bytes)
    }

    fn pause(&self) -> Duration {
        self.pause
    }

    fn committed(mut self: Box<Self>) {
        self.committed = true;
    }
}

impl Drop for MemoryCapture {
    fn drop(&mut self) {
        if !self.committed {
            // The changes this capture took from the dirty sets never made
            // it into a checkpoint: the next capture must be full.
            self.inner.force_full_capture.store(true, Ordering::Release);
        }
    }
}

impl StateBackend for MemoryStateBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let local = self.inner.metrics.local();
        let timer = local.start(Op::Get);
        let result = self.inner.get_one(key);
        if let Ok(found) = &result {
            local.add_reads(u64::from(found.is_some()), 1);
        }
        local.finish(timer);
        result
    }

    fn multi_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let local = self.inner.metrics.local();
        let timer = local.start(Op::MultiGet);
        let mut out = Vec::with_capacity(keys.len());
        let mut hits = 0;
        for key in keys {
            let found = self.inner.get_one(key)?;
            hits += u64::from(found.is_some());
            out.push(found);
        }
        local.add_reads(hits, keys.len() as u64);
        local.finish(timer);
        Ok(out)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let m = &self.inner.metrics;
        m.measure(Op::Put, Counter::Put, || self.put_inner(key, value, None))
    }

    fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let m = &self.inner.metrics;
        m.measure(Op::Put, Counter::Put, || {
            self.put_inner(key, value, Some(ttl))
        })
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        let inner = &*self.inner;
        inner.metrics.measure(Op::Delete, Counter::Delete, || {
            let hash = inner.hash(key);
            let removed = {
                let mut guard = inner.shard(hash).write();
                let state = guard.as_mut().ok_or_else(closed)?;
                state.remove(&inner.hasher, hash, key, None)
            };
            drop(removed);
            Ok(())
        })
    }

    fn write_batch(&self, batch: &WriteBatch) -> Result<()> {
        let inner = &*self.inner;
        let local = inner.metrics.local();
        let timer = local.start(Op::Batch);
        batch.validate()?;
        let now = inner.clock.now_ms();
        let mut any_expiring = false;
        // Everything that can fail or allocate happens before locking.
        let mut prepared = Vec::with_capacity(batch.len());
        for op in batch.ops() {
            let hash = inner.hash(op.key());
            let entry = match op {
                BatchOp::Put { key, value, ttl } => {
                    let expiry = inner.ttl.expiry(ttl, || now)?;
                    any_expiring |= expiry.is_some();
                    Some(Entry::new(key, value, expiry))
                }
                BatchOp::Delete { .. } => None,
            };
            prepared.push((inner.shard_idx(hash), hash, op.key(), entry));
        }
        let mut shard_ids: Vec<usize> = prepared.iter().map(|p| p.0).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards = Vec::with_capacity(shard_ids.len());
        for &idx in &shard_ids {
            let guard = inner.shards[idx].write();
            if guard.is_none() {
                return Err(Error::Closed);
            }
            guards.push(guard);
        }
        let mut garbage = Vec::with_capacity(prepared.len());
        let (mut n_puts, mut n_deletes) = (0, 0);
        for (shard_idx, hash, key, entry) in prepared {
            let g = shard_ids
                .binary_search(&shard_idx)
                .expect("every shard of the batch is locked");
            let state = guards[g].as_mut().expect("checked open above");
            let old = match entry {
                Some(entry) => {
                    n_puts += 1;
                    state.insert(&inner.hasher, hash, entry)
                }
                None => {
                    n_deletes += 1;
                    state.remove(&inner.hasher, hash, key, None)
                }
            };
            garbage.push(old);
        }
        drop(guards);
        drop(garbage);
        local.add(Counter::Put, n_puts);
        local.add(Counter::Delete, n_deletes);
        local.add(Counter::Batch, 1);
        if any_expiring {
            self.note_expiring_write();
        }
        local.finish(timer);
        Ok(())
    }

    fn scan(&self, range: KeyRange) -> Result<ScanIter<'_>> {
        let local = self.inner.metrics.local();
        let timer = local.start(Op::Scan);
        let tables = self.inner.freeze()?;
        let now = self.inner.clock.now_ms();
        let mut hits: Vec<Entry> = Vec::new();
        for table in &tables {
            hits.extend(
                table
                    .iter()
                    .filter(|e| !e.is_dead_at(now) && range.contains(e.key()))
                    .cloned(),
            );
        }
        drop(tables);
        hits.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        local.add(Counter::Scan, 1);
        local.finish(timer);
        Ok(Box::new(
            hits.into_iter()
                .map(|e| Ok((e.key().to_vec(), e.value().to_vec()))),
        ))
    }

    fn snapshot_to(&self, out: &mut dyn Write) -> Result<SnapshotSummary> {
        let tables = self.inner.freeze()?;
        let now = self.inner.clock.now_ms();
        let mut writer = SnapshotWriter::new(out, SnapshotKind::Full, now)?;
        for table in &tables {
            for entry in table.iter().filter(|e| !e.is_dead_at(now)) {
                writer.put(entry.key(), entry.value(), entry.expiry())?;
            }
        }
        let summary = writer.finish()?;
        self.inner.metrics.add(Counter::Snapshot, 1);
        Ok(summary)
    }

    fn restore_from(&self, input: &mut dyn Read) -> Result<RestoreSummary> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut staged = Staged::new(&self.inner);
        staged.read_stream(&self.inner, input, SnapshotKind::Full)?;
        self.commit_staged(staged)
    }

    fn flush(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn metrics(&self) -> Metrics {
        let mut m = self.inner.metrics.snapshot();
        m.n_keys = self.len().unwrap_or(0) as u64;
        m
    }

    fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(cleaner) = self.cleaner.lock().take() {
            *cleaner.stop.0.lock() = true;
            cleaner.stop.1.notify_all();
            if cleaner.thread.join().is_err() {
                tracing::error!("the TTL cleanup thread panicked");
            }
        }
        let old: Vec<_> = self
            .inner
            .shards
            .iter()
            .map(|shard| shard.write().take())
            .collect();
        drop(old);
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}

impl Drop for MemoryStateBackend {
    fn drop(&mut self) {
        // close never fails for this backend.
        let _ = self.close();
    }
}
