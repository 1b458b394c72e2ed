//! Keyed state: one backend per worker, a write-back cache in front of it,
//! and typed handles scoped to the current key (and namespace).
//!
//! The cache keeps decoded values of the keys an operator touches. Writes
//! stay in the cache (dirty) until the worker flushes: once per checkpoint
//! epoch, before the cut, as one `WriteBatch`, and when the cache is over
//! its budget. Reads always see the operator's own writes. A miss reads the
//! backend once and keeps the decoded value (or its absence).

mod handles;

use std::any::Any;

/// A backend key, inline when short (a key group, a state id and a small
/// key fit): a lookup compares bytes in the table, not behind a pointer.
type CacheKey = smallvec::SmallVec<[u8; 24]>;

/// A decoded value, inline in its slot when small (counts, sums, small
/// tuples): reading it touches no other cache line.
pub(crate) type Value = smallbox::SmallBox<dyn Any, smallbox::space::S2>;
use std::sync::Arc;
use std::time::Duration;

use gress_state::checkpoint::Checkpointable;
use gress_state::{Clock, WriteBatch};

pub(crate) use handles::Target;
pub use handles::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    ValueState, ValueStateDescriptor,
};

use crate::error::{Error, Result};
use crate::keys::TIMER_STATE_ID;

/// How long state lives without being written (or read, if so chosen), as
/// Flink's `StateTtlConfig`. An expired value is never returned; expired
/// entries are deleted from the backend and the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtl {
    /// Time to live.
    pub ttl: Duration,
    /// What refreshes it.
    pub update: TtlUpdate,
}

/// What refreshes a value's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlUpdate {
    /// Creating or writing the value.
    OnCreateAndWrite,
    /// Reading or writing it.
    OnReadAndWrite,
}

impl StateTtl {
    /// The time to live in ms (at most `u64::MAX`: a TTL that long never
    /// ends).
    pub(crate) fn ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The expiry of a value written or refreshed at `now` (ms); `None`
    /// when it lies beyond what a clock can reach (never).
    pub(crate) fn expiry(&self, now: u64) -> Option<u64> {
        now.checked_add(self.ms()).filter(|&at| at != u64::MAX)
    }

    /// Refreshed on create and write.
    pub fn new(ttl: Duration) -> Self {
        StateTtl {
            ttl,
            update: TtlUpdate::OnCreateAndWrite,
        }
    }

    /// Refreshed on read and write.
    pub fn refreshed_on_read(ttl: Duration) -> Self {
        StateTtl {
            ttl,
            update: TtlUpdate::OnReadAndWrite,
        }
    }
}

/// Encodes a cached value of one state for the backend.
pub(crate) trait Encoder {
    fn encode(&self, value: &dyn Any, out: &mut Vec<u8>) -> Result<()>;
}

impl Slot {
    /// The value, typed.
    pub(crate) fn get<T: 'static>(&self) -> Result<Option<&T>> {
        self.value
            .downcast_ref::<Option<T>>()
            .map(Option::as_ref)
            .ok_or_else(|| Error::codec("state", "one state used with two types"))
    }

    /// The value, typed, for changing in place; call `mark` after.
    pub(crate) fn cell<T: 'static>(&mut self) -> Result<&mut Option<T>> {
        self.value
            .downcast_mut::<Option<T>>()
            .ok_or_else(|| Error::codec("state", "one state used with two types"))
    }

    /// Records whether the value is present now.
    pub(crate) fn mark_present(&mut self, present: bool) {
        self.present = present;
    }
}

/// Encodes timers: they carry no value.
struct TimerEncoder;

impl Encoder for TimerEncoder {
    // Timers are keys with an empty value.
    fn encode(&self, _: &dyn Any, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
}

/// A declared state of an operator.
struct Registration {
    name: String,
    encoder: Box<dyn Encoder>,
}

/// One cached entry.
pub(crate) struct Slot {
    /// The decoded value, an `Option<T>` (`None` when the key has no
    /// value): updated in place, never reallocated.
    pub(crate) value: Value,
    /// Whether `value` is `Some`.
    pub(crate) present: bool,
    /// Differs from the backend.
    pub(crate) dirty: bool,
    /// When it expires (ms), for state with a TTL.
    pub(crate) expires_at: Option<u64>,
    /// The state it belongs to.
    state_id: u32,
    /// Bytes it is counted as.
    size: usize,
}

/// A cached key and its entry.
struct Entry {
    key: CacheKey,
    slot: Slot,
}

/// The cache's table: keys hashed once per lookup with a fixed seed, and
/// an entry's place can be found without reading the entry, to prefetch it.
#[derive(Default)]
struct Cache {
    table: hashbrown::HashTable<Entry>,
    hasher: foldhash::fast::FixedState,
}

impl Cache {
    fn hash(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    /// The entry of `key`: one hash and one probe, whether it is there
    /// or not.
    fn entry(&mut self, key: &[u8]) -> hashbrown::hash_table::Entry<'_, Entry> {
        use std::hash::BuildHasher;
        let Cache { table, hasher } = self;
        table.entry(
            hasher.hash_one(key),
            |e| e.key[..] == *key,
            |e| hasher.hash_one(&e.key[..]),
        )
    }

    /// Asks the CPU to load the entry `key` probably has, without waiting
    /// for it: the first entry in its probe sequence whose tag matches (a
    /// wrong guess costs nothing but the load). A lookup of the entry soon
    /// after finds it in the CPU cache.
    fn prefetch(&self, key: &[u8]) {
        let hash = self.hash(key);
        if let Some(entry) = self.table.find(hash, |_| true) {
            prefetch_read(std::ptr::from_ref(entry).cast());
        }
    }
}

/// Starts loading the two cache lines at `at` into the CPU cache.
#[inline(always)]
#[allow(unsafe_code)] // The one use: a prefetch instruction, a hint.
fn prefetch_read(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // An entry spans at most two cache lines.
        let last = at.wrapping_add(std::mem::size_of::<Entry>() - 1);
        // SAFETY: a prefetch is a hint: it reads nothing into the program
        // and never faults, whatever the address; SSE is part of x86_64.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(at.cast());
            _mm_prefetch::<_MM_HINT_T0>(last.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Counters of the cache, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered by the cache.
    pub hits: u64,
    /// Reads that went to the backend.
    pub misses: u64,
    /// Entries written to the backend.
    pub written: u64,
    /// Entries dropped to stay within the budget.
    pub evicted: u64,
    /// Flushes (write batches).
    pub flushes: u64,
    /// The most bytes the cache held at once.
    pub peak_bytes: u64,
}

impl CacheStats {
    /// Counters of several caches together (the peak: the largest).
    pub fn add(&mut self, other: &CacheStats) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.written += other.written;
        self.evicted += other.evicted;
        self.flushes += other.flushes;
        self.peak_bytes = self.peak_bytes.max(other.peak_bytes);
    }
}

/// A worker's keyed state: its backend and the write-back cache.
pub struct StateStore {
    backend: Arc<dyn Checkpointable>,
    cache: Cache,
    /// Looked up once per dirty entry at each flush.
    registry: hashbrown::HashMap<u32, Registration, foldhash::fast::FixedState>,
    bytes: usize,
    budget: usize,
    clock: Arc<dyn Clock>,
    stats: CacheStats,
    /// The state id of the last lookup, for prefetching.
    last_state: Option<u32>,
    prefetch_key: Vec<u8>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("entries", &self.cache.len())
            .field("bytes", &self.bytes)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    pub(crate) fn new(
        backend: Arc<dyn Checkpointable>,
        budget: usize,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut registry = hashbrown::HashMap::default();
        registry.insert(
            TIMER_STATE_ID,
            Registration {
                name: "timers".into(),
                encoder: Box::new(TimerEncoder),
            },
        );
        StateStore {
            backend,
            cache: Cache::default(),
            registry,
            bytes: 0,
            budget,
            clock,
            stats: CacheStats::default(),
            last_state: None,
            prefetch_key: Vec::new(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Checkpointable> {
        &self.backend
    }

    /// Counters of the cache.
    pub fn stats(&self) -> CacheStats {
        let mut stats = self.stats;
        stats.peak_bytes = stats.peak_bytes.max(self.bytes as u64);
        stats
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Declares state `name` under `id`; a second declaration of the same
    /// id must carry the same name.
    pub(crate) fn register(
        &mut self,
        id: u32,
        name: &str,
        encoder: impl FnOnce() -> Box<dyn Encoder>,
    ) -> Result<()> {
        match self.registry.get(&id) {
            Some(r) if r.name == name => Ok(()),
            Some(r) => Err(Error::invalid(
                "state",
                format!("`{name}` and `{}` have the same id; rename one", r.name),
            )),
            None => {
                self.registry.insert(
                    id,
                    Registration {
                        name: name.to_string(),
                        encoder: encoder(),
                    },
                );
                Ok(())
            }
        }
    }

    /// The cached entry for `key`, read from the backend on a miss.
    pub(crate) fn slot<T: 'static>(
        &mut self,
        key: &[u8],
        state_id: u32,
        decode: &dyn Fn(&[u8]) -> Result<T>,
    ) -> Result<&mut Slot> {
        self.last_state = Some(state_id);
        match self.cache.entry(key) {
            hashbrown::hash_table::Entry::Occupied(o) => {
                self.stats.hits += 1;
                Ok(&mut o.into_mut().slot)
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                self.stats.misses += 1;
                // With the expiry the backend keeps: a value read back after
                // an eviction or a recovery expires when it always would.
                let (value, expires_at): (Option<T>, Option<u64>) =
                    match self.backend.get_with_expiry(key)? {
                        Some((bytes, at)) => (Some(decode(&bytes)?), at),
                        None => (None, None),
                    };
                let size = key.len() + 64 + std::mem::size_of::<T>();
                self.bytes += size;
                let slot = Slot {
                    present: value.is_some(),
                    value: smallbox::smallbox!(value),
                    dirty: false,
                    expires_at,
                    state_id,
                    size,
                };
                let entry = v.insert(Entry {
                    key: CacheKey::from_slice(key),
                    slot,
                });
                Ok(&mut entry.into_mut().slot)
            }
        }
    }

    /// Prefetches the entry of the state last looked up, for `user_key` in
    /// key group `kg`: called for a record a few records ahead of the one
    /// being processed, it overlaps their cache misses.
    pub(crate) fn prefetch(&mut self, kg: u16, user_key: &[u8]) {
        let Some(state_id) = self.last_state else {
            return;
        };
        crate::keys::state_key(&mut self.prefetch_key, kg, state_id, user_key, b"");
        self.cache.prefetch(&self.prefetch_key);
    }

    /// Sets a timer key (present or deleted) without reading it first.
    pub(crate) fn put_raw(&mut self, key: &[u8], state_id: u32, present: bool) {
        let value: Value = smallbox::smallbox!(present.then_some(()));
        match self.cache.entry(key) {
            hashbrown::hash_table::Entry::Occupied(o) => {
                let slot = &mut o.into_mut().slot;
                slot.value = value;
                slot.present = present;
                slot.dirty = true;
                slot.expires_at = None;
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                let size = key.len() + 64;
                self.bytes += size;
                v.insert(Entry {
                    key: CacheKey::from_slice(key),
                    slot: Slot {
                        value,
                        present,
                        dirty: true,
                        expires_at: None,
                        state_id,
                        size,
                    },
                });
            }
        }
    }

    /// Writes every dirty entry to the backend in one batch.
    pub(crate) fn flush(&mut self) -> Result<()> {
        let now = self.clock.now_ms();
        let mut batch = WriteBatch::new();
        let mut scratch = Vec::new();
        let mut written = 0;
        for Entry { key, slot } in self.cache.table.iter_mut() {
            if !slot.dirty {
                continue;
            }
            let live = slot.present && slot.expires_at.is_none_or(|at| at > now);
            match (&slot.value, live) {
                (value, true) => {
                    let reg = self.registry.get(&slot.state_id).ok_or_else(|| {
                        Error::invalid("state", format!("undeclared state id {}", slot.state_id))
                    })?;
                    scratch.clear();
                    reg.encoder.encode(&**value, &mut scratch)?;
                    match slot.expires_at {
                        Some(at) => batch.put_with_ttl(
                            &key[..],
                            &scratch,
                            Duration::from_millis(at.saturating_sub(now).max(1)),
                        ),
                        None => batch.put(&key[..], &scratch),
                    };
                    let size = key.len() + scratch.len() + 48;
                    self.bytes = self.bytes + size - slot.size.min(self.bytes);
                    slot.size = size;
                }
                _ => {
                    batch.delete(&key[..]);
                }
            }
            slot.dirty = false;
            written += 1;
        }
        if written > 0 {
            self.backend.write_batch(&batch)?;
            self.stats.written += written;
            self.stats.flushes += 1;
        }
        Ok(())
    }

    /// Whether the cache holds more than its budget.
    #[inline]
    pub(crate) fn over_budget(&self) -> bool {
        self.bytes > self.budget
    }

    /// Flushes, then drops clean entries until the cache is within its
    /// budget. Called as entries are added, between two records, so the
    /// cache never grows past its budget by more than one record's state:
    /// what is flushed belongs to the epoch being applied, the only one
    /// the backend may hold beyond the last cut.
    pub(crate) fn maybe_evict(&mut self) -> Result<()> {
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.bytes as u64);
        if self.bytes <= self.budget {
            return Ok(());
        }
        self.flush()?;
        let target = self.budget - self.budget / 4;
        let mut bytes = self.bytes;
        let mut evicted = 0;
        self.cache.table.retain(|Entry { slot, .. }| {
            if bytes <= target || slot.dirty {
                return true;
            }
            bytes = bytes.saturating_sub(slot.size);
            evicted += 1;
            false
        });
        self.bytes = bytes;
        self.stats.evicted += evicted;
        Ok(())
    }

    /// Dirty entries not yet flushed.
    pub fn dirty_entries(&self) -> usize {
        self.cache.table.iter().filter(|e| e.slot.dirty).count()
    }

    /// Entries and bytes the cache holds.
    pub fn cached(&self) -> (usize, usize) {
        (self.cache.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use gress_state::{ManualClock, MemoryStateBackend};

    use super::*;
    use crate::state::handles::Target;

    fn store(budget: usize) -> (StateStore, Arc<MemoryStateBackend>, Arc<ManualClock>) {
        let clock = ManualClock::shared(1_000_000);
        // The backend enforces the TTL the store computes: one clock.
        let backend = Arc::new(
            MemoryStateBackend::new(gress_state::MemoryConfig::default().with_clock(clock.clone()))
                .expect("valid config"),
        );
        let store = StateStore::new(backend.clone(), budget, clock.clone());
        (store, backend, clock)
    }

    fn target<'a>(
        store: &'a mut StateStore,
        scratch: &'a mut Vec<u8>,
        key: &'a [u8],
    ) -> Target<'a> {
        Target {
            store,
            key: scratch,
            op: 1,
            op_name: "op",
            kg: 3,
            user_key: key,
            ns: b"",
        }
    }

    /// Writes stay in the cache until a flush, and reads see them at once;
    /// a flush writes them to the backend in one batch.
    #[test]
    fn reads_see_own_writes_and_flush_writes_back() -> Result<()> {
        let (mut store, backend, _) = store(1 << 20);
        let desc = ValueStateDescriptor::<u64>::new("v");
        let mut scratch = Vec::new();
        desc.handle(target(&mut store, &mut scratch, b"k"))?
            .set(7)?;
        assert_eq!(
            desc.handle(target(&mut store, &mut scratch, b"k"))?.get()?,
            Some(7)
        );
        assert_eq!(backend.len()?, 0, "written before the flush");
        assert_eq!(store.dirty_entries(), 1);
        store.flush()?;
        assert_eq!(backend.len()?, 1);
        assert_eq!(store.dirty_entries(), 0);
        desc.handle(target(&mut store, &mut scratch, b"k"))?
            .clear()?;
        store.flush()?;
        assert_eq!(backend.len()?, 0, "a cleared value is deleted");
        Ok(())
    }

    /// Over its budget the cache writes back and drops entries; they read
    /// back from the backend unchanged.
    #[test]
    fn eviction_writes_back_and_reads_return() -> Result<()> {
        let (mut store, _backend, _) = store(16 << 10);
        let desc = ValueStateDescriptor::<String>::new("v");
        let mut scratch = Vec::new();
        for i in 0..2_000u32 {
            let key = i.to_be_bytes();
            desc.handle(target(&mut store, &mut scratch, &key))?
                .set(format!("value-{i}"))?;
            store.maybe_evict()?;
        }
        assert!(store.stats().evicted > 0, "nothing was evicted");
        assert!(
            store.cached().1 <= 16 << 10,
            "over budget: {:?}",
            store.cached()
        );
        for i in 0..2_000u32 {
            let key = i.to_be_bytes();
            assert_eq!(
                desc.handle(target(&mut store, &mut scratch, &key))?.get()?,
                Some(format!("value-{i}"))
            );
        }
        Ok(())
    }

    /// With a TTL refreshed on create and write, a value is gone once its
    /// time passed, from the cache and after a flush from the backend; with
    /// refresh on read, reading keeps it alive.
    #[test]
    fn ttl_expires_values_and_read_refreshes() -> Result<()> {
        let (mut store, backend, clock) = store(1 << 20);
        let write =
            ValueStateDescriptor::<u64>::new("w").with_ttl(StateTtl::new(Duration::from_secs(10)));
        let read = ValueStateDescriptor::<u64>::new("r")
            .with_ttl(StateTtl::refreshed_on_read(Duration::from_secs(10)));
        let mut scratch = Vec::new();
        write
            .handle(target(&mut store, &mut scratch, b"k"))?
            .set(1)?;
        read.handle(target(&mut store, &mut scratch, b"k"))?
            .set(2)?;
        store.flush()?;
        for _ in 0..3 {
            clock.advance(Duration::from_secs(6));
            assert_eq!(
                read.handle(target(&mut store, &mut scratch, b"k"))?.get()?,
                Some(2)
            );
        }
        assert_eq!(
            write
                .handle(target(&mut store, &mut scratch, b"k"))?
                .get()?,
            None
        );
        store.flush()?;
        assert_eq!(backend.len()?, 1, "the expired value stayed in the backend");
        // Read straight from the backend after the cache is gone.
        let mut fresh = StateStore::new(backend.clone(), 1 << 20, clock.clone());
        assert_eq!(
            read.handle(target(&mut fresh, &mut scratch, b"k"))?.get()?,
            Some(2)
        );
        clock.advance(Duration::from_secs(11));
        let mut fresh = StateStore::new(backend, 1 << 20, clock);
        assert_eq!(
            read.handle(target(&mut fresh, &mut scratch, b"k"))?.get()?,
            None
        );
        Ok(())
    }

    struct Sum;
    impl AggregateFunction for Sum {
        type In = u64;
        type Acc = (u64, u64);
        type Out = f64;
        fn create(&self) -> (u64, u64) {
            (0, 0)
        }
        fn add(&self, acc: &mut (u64, u64), input: u64) {
            acc.0 += input;
            acc.1 += 1;
        }
        fn result(&self, acc: &(u64, u64)) -> f64 {
            acc.0 as f64 / acc.1 as f64
        }
    }

    /// Every kind of state keeps its value through a flush and a read back
    /// from the backend into an empty cache.
    #[test]
    fn every_state_kind_survives_a_flush() -> Result<()> {
        let (mut store, backend, clock) = store(1 << 20);
        let list = ListStateDescriptor::<String>::new("l");
        let map = MapStateDescriptor::<String, u64>::new("m");
        let reducing = ReducingStateDescriptor::<u64>::new("r", |a: &u64, b: u64| (*a).max(b));
        let aggregating = AggregatingStateDescriptor::new("a", Sum);
        let mut scratch = Vec::new();
        for i in 0..5u64 {
            list.handle(target(&mut store, &mut scratch, b"k"))?
                .add(format!("e{i}"))?;
            map.handle(target(&mut store, &mut scratch, b"k"))?
                .put(format!("m{}", i % 3), i)?;
            reducing
                .handle(target(&mut store, &mut scratch, b"k"))?
                .add(i * 7 % 5)?;
            aggregating
                .handle(target(&mut store, &mut scratch, b"k"))?
                .add(i)?;
        }
        map.handle(target(&mut store, &mut scratch, b"k"))?
            .remove(&"m0".to_string())?;
        store.flush()?;
        let mut fresh = StateStore::new(backend, 1 << 20, clock);
        let got_list = list.handle(target(&mut fresh, &mut scratch, b"k"))?.get()?;
        assert_eq!(got_list, ["e0", "e1", "e2", "e3", "e4"]);
        let got_map = map
            .handle(target(&mut fresh, &mut scratch, b"k"))?
            .entries()?;
        assert_eq!(got_map, [("m1".to_string(), 4), ("m2".to_string(), 2)]);
        assert_eq!(
            reducing
                .handle(target(&mut fresh, &mut scratch, b"k"))?
                .get()?,
            Some(4)
        );
        assert_eq!(
            aggregating
                .handle(target(&mut fresh, &mut scratch, b"k"))?
                .get()?,
            Some(2.0)
        );
        assert_eq!(
            list.handle(target(&mut fresh, &mut scratch, b"other"))?
                .get()?,
            Vec::<String>::new()
        );
        Ok(())
    }
}
