//! The cache's table: entries in a slab, found through an open-addressing
//! index of 8-byte slots.
//!
//! A slot holds 32 bits of the key's hash (its tag) and the entry's place
//! in the slab. The top bits of the tag pick the slot a key starts probing
//! at (linear probing), so the index grows, and removes with backward
//! shifts, without reading an entry. Where a key's slot is can be computed
//! from its hash alone: a lookup a few records ahead starts loading the
//! slot, and then the entry, into the CPU cache (`prefetch_slot`,
//! `prefetch_entry`) while earlier records are processed.

use std::any::Any;
use std::hash::BuildHasher;

/// A backend key, inline when short (a key group, a state id and a small
/// key fit): a lookup compares bytes in the entry, not behind a pointer.
pub(super) type CacheKey = smallvec::SmallVec<[u8; 24]>;

/// A decoded value, inline in its entry when small (counts, sums, small
/// tuples): reading it touches no other cache line.
pub(crate) type Value = smallbox::SmallBox<dyn Any, smallbox::space::S2>;

/// A value as the backend stored it, not decoded yet: read ahead for a
/// batch of records, decoded by the first handle that reads it.
pub(super) struct Encoded(pub(super) Box<[u8]>);

/// What the backend holds of a cached entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cold {
    /// Nothing for its key.
    None,
    /// The entry as it was read (unless `dirty` says it changed since).
    Same,
    /// Maybe an older value.
    Stale,
}

/// One cached entry.
pub(crate) struct Slot {
    /// The decoded value, an `Option<T>` (`None` when the key has no
    /// value), or [`Encoded`] bytes until first read: updated in place.
    pub(crate) value: Value,
    /// Whether `value` is `Some`.
    pub(crate) present: bool,
    /// Differs from the backend.
    pub(crate) dirty: bool,
    /// In the store's queue of entries to write back.
    pub(super) queued: bool,
    /// Read or written since the clock hand last passed (second chance).
    pub(super) referenced: bool,
    /// Read or written since it was last queued: still in use, so written
    /// back at the cut rather than while the epoch runs.
    pub(super) touched: bool,
    /// Picked by the clock hand to leave the cache.
    pub(super) evicting: bool,
    /// What the backend holds of it.
    pub(super) cold: Cold,
    /// The slab place is free (no entry).
    pub(super) vacant: bool,
    /// When it expires (ms, at least 1), for state with a TTL: through
    /// [`Slot::expires_at`], 8 bytes rather than an `Option<u64>`'s 16.
    expiry: Option<std::num::NonZeroU64>,
    /// The state it belongs to.
    pub(super) state_id: u32,
    /// Bytes it is counted as.
    pub(super) size: u32,
}

impl Slot {
    /// A clean entry, not queued, referenced (read for a record about to
    /// run).
    pub(super) fn new(
        value: Value,
        present: bool,
        expires_at: Option<u64>,
        state_id: u32,
        size: usize,
        cold: Cold,
    ) -> Self {
        Slot {
            value,
            present,
            dirty: false,
            queued: false,
            referenced: true,
            touched: false,
            evicting: false,
            cold,
            vacant: false,
            expiry: None,
            state_id,
            size: u32::try_from(size).unwrap_or(u32::MAX),
        }
        .with_expiry(expires_at)
    }

    fn with_expiry(mut self, at: Option<u64>) -> Self {
        self.set_expires_at(at);
        self
    }

    /// When it expires (ms), for state with a TTL.
    #[inline]
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.expiry.map(std::num::NonZeroU64::get)
    }

    /// Sets when it expires; an expiry at 0 counts as at 1 ms (expired
    /// alike for every time a clock gives after its start).
    #[inline]
    pub(crate) fn set_expires_at(&mut self, at: Option<u64>) {
        self.expiry = at.map(|t| std::num::NonZeroU64::MIN.saturating_add(t.saturating_sub(1)));
    }

    /// The value, typed.
    pub(crate) fn get<T: 'static>(&self) -> crate::error::Result<Option<&T>> {
        self.value
            .downcast_ref::<Option<T>>()
            .map(Option::as_ref)
            .ok_or_else(|| crate::error::Error::codec("state", "one state used with two types"))
    }

    /// The value, typed, for changing in place; call `mark` after.
    pub(crate) fn cell<T: 'static>(&mut self) -> crate::error::Result<&mut Option<T>> {
        self.value
            .downcast_mut::<Option<T>>()
            .ok_or_else(|| crate::error::Error::codec("state", "one state used with two types"))
    }

    /// Records whether the value is present now.
    pub(crate) fn mark_present(&mut self, present: bool) {
        self.present = present;
    }
}

/// A cached key and its entry; `key` is empty and `slot.vacant` set while
/// the slab place is free.
pub(super) struct Entry {
    pub(super) key: CacheKey,
    pub(super) slot: Slot,
}

/// An empty index slot.
const EMPTY: u64 = 0;
/// Index size when the first entry arrives: 2^MIN_BITS slots.
const MIN_BITS: u32 = 10;

/// The index and the slab.
#[derive(Default)]
pub(super) struct Table {
    /// `EMPTY`, or the tag (high 32 bits) and the slab place plus one.
    index: Vec<u64>,
    /// `index.len() == 1 << bits` (0 before the first insert).
    bits: u32,
    entries: Vec<Entry>,
    /// Vacant slab places, reused before the slab grows.
    free: Vec<u32>,
    len: usize,
    hasher: foldhash::fast::FixedState,
}

#[inline]
fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl Table {
    #[inline]
    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Slab places (live and vacant): the clock hand's range.
    pub(super) fn places(&self) -> usize {
        self.entries.len()
    }

    #[inline]
    fn home(&self, tag: u32) -> usize {
        // bits is in MIN_BITS..=32 once the index exists.
        (u64::from(tag) >> (32 - self.bits)) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    /// The slab place of `key`, if cached.
    #[inline]
    pub(super) fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        if self.index.is_empty() {
            return None;
        }
        let tag = tag_of(hash);
        let mask = self.mask();
        let mut i = self.home(tag);
        loop {
            let v = self.index[i];
            if v == EMPTY {
                return None;
            }
            if (v >> 32) as u32 == tag {
                let at = (v as u32) - 1;
                if self.entries[at as usize].key[..] == *key {
                    return Some(at);
                }
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    pub(super) fn entry(&self, at: u32) -> &Entry {
        &self.entries[at as usize]
    }

    #[inline]
    pub(super) fn entry_mut(&mut self, at: u32) -> &mut Entry {
        &mut self.entries[at as usize]
    }

    /// Adds `key`, which is not cached; returns its slab place.
    pub(super) fn insert(&mut self, hash: u64, key: &[u8], slot: Slot) -> u32 {
        // At most 7/10 full: probes stay short.
        if (self.len + 1) * 10 > self.index.len() * 7 {
            self.grow();
        }
        let entry = Entry {
            key: CacheKey::from_slice(key),
            slot,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.entries[at as usize] = entry;
                at
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        self.place(tag_of(hash), at);
        self.len += 1;
        at
    }

    /// Puts slab place `at` with `tag` into the index.
    fn place(&mut self, tag: u32, at: u32) {
        let mask = self.mask();
        let mut i = self.home(tag);
        while self.index[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.index[i] = (u64::from(tag) << 32) | u64::from(at + 1);
    }

    /// Doubles the index; entries stay where they are.
    #[cold]
    fn grow(&mut self) {
        let bits = if self.bits == 0 {
            MIN_BITS
        } else {
            self.bits + 1
        };
        assert!(bits <= 32, "the state cache cannot index over 2^32 slots");
        let old = std::mem::replace(&mut self.index, vec![EMPTY; 1 << bits]);
        self.bits = bits;
        for v in old.into_iter().filter(|&v| v != EMPTY) {
            self.place((v >> 32) as u32, (v as u32) - 1);
        }
    }

    /// Removes the entry at slab place `at` (which is live) and returns
    /// it; the place becomes vacant.
    pub(super) fn remove(&mut self, at: u32) -> Entry {
        let hash = self.hash(&self.entries[at as usize].key);
        let tag = tag_of(hash);
        let mask = self.mask();
        let wanted = (u64::from(tag) << 32) | u64::from(at + 1);
        let mut i = self.home(tag);
        while self.index[i] != wanted {
            debug_assert!(self.index[i] != EMPTY, "a live entry is indexed");
            i = (i + 1) & mask;
        }
        // Backward shift: move later slots of the same run into the gap
        // unless that would put one before its home.
        let mut gap = i;
        let mut j = (i + 1) & mask;
        loop {
            let v = self.index[j];
            if v == EMPTY {
                break;
            }
            let home = self.home((v >> 32) as u32);
            // Whether `home` lies cyclically in (gap, j]: then the slot
            // must stay.
            let stays = if gap <= j {
                gap < home && home <= j
            } else {
                gap < home || home <= j
            };
            if !stays {
                self.index[gap] = v;
                gap = j;
            }
            j = (j + 1) & mask;
        }
        self.index[gap] = EMPTY;
        self.len -= 1;
        self.free.push(at);
        let mut slot = Slot::new(smallbox::smallbox!(()), false, None, 0, 0, Cold::None);
        slot.vacant = true;
        let vacant = Entry {
            key: CacheKey::new(),
            slot,
        };
        std::mem::replace(&mut self.entries[at as usize], vacant)
    }

    /// The live entries.
    pub(super) fn live(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| !e.slot.vacant)
    }

    /// Starts loading the index slot where `hash`'s probe begins.
    #[inline]
    pub(super) fn prefetch_slot(&self, hash: u64) {
        if !self.index.is_empty() {
            prefetch_read(
                std::ptr::from_ref(&self.index[self.home(tag_of(hash))]).cast(),
                1,
            );
        }
    }

    /// Starts loading the entry at slab place `at`.
    #[inline]
    pub(super) fn prefetch_place(&self, at: u32) {
        if let Some(entry) = self.entries.get(at as usize) {
            prefetch_read(
                std::ptr::from_ref(entry).cast(),
                std::mem::size_of::<Entry>(),
            );
        }
    }

    /// Starts loading the entry `hash` probably has: the first slot of its
    /// probe with the same tag (best loaded already by `prefetch_slot`).
    #[inline]
    pub(super) fn prefetch_entry(&self, hash: u64) {
        if self.index.is_empty() {
            return;
        }
        let tag = tag_of(hash);
        let mask = self.mask();
        let mut i = self.home(tag);
        for _ in 0..4 {
            let v = self.index[i];
            if v == EMPTY {
                return;
            }
            if (v >> 32) as u32 == tag {
                let at = (v as u32 - 1) as usize;
                prefetch_read(
                    std::ptr::from_ref(&self.entries[at]).cast(),
                    std::mem::size_of::<Entry>(),
                );
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

/// Starts loading the cache lines of `len` bytes at `at` into the CPU
/// cache.
#[inline(always)]
#[allow(unsafe_code)] // The one use: a prefetch instruction, a hint.
fn prefetch_read(at: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let last = at.wrapping_add(len.max(1) - 1);
        // SAFETY: a prefetch is a hint: it reads nothing into the program
        // and never faults, whatever the address; SSE is part of x86_64.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(at.cast());
            _mm_prefetch::<_MM_HINT_T0>(last.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(n: u32) -> Slot {
        Slot::new(smallbox::smallbox!(Some(n)), true, None, 1, 1, Cold::Same)
    }

    /// Inserts and removes in any order keep every other key findable,
    /// through growth and backward shifts, against a `HashMap` model.
    #[test]
    fn index_matches_a_model() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(64), |(ops in proptest::collection::vec((0u16..600, any::<bool>()), 1..3000))| {
            let mut table = Table::default();
            let mut model = std::collections::HashMap::new();
            for (k, insert) in ops {
                let key = k.to_be_bytes();
                let hash = table.hash(&key);
                match (table.find(hash, &key), insert) {
                    (None, true) => {
                        let at = table.insert(hash, &key, slot(u32::from(k)));
                        model.insert(k, at);
                    }
                    (Some(at), false) => {
                        let e = table.remove(at);
                        prop_assert_eq!(&e.key[..], &key[..]);
                        model.remove(&k);
                    }
                    (found, _) => prop_assert_eq!(found, model.get(&k).copied()),
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for k in 0u16..600 {
                let key = k.to_be_bytes();
                let found = table.find(table.hash(&key), &key);
                prop_assert_eq!(found, model.get(&k).copied());
                if let Some(at) = found {
                    prop_assert_eq!(table.entry(at).slot.get::<u32>().ok().flatten().copied(), Some(u32::from(k)));
                }
            }
        });
    }

    /// An entry's size is most of what a cached key costs beyond its bytes:
    /// it stays within 88 bytes (key inline up to 24 bytes, value inline up
    /// to 16).
    #[test]
    fn an_entry_stays_small() {
        assert!(std::mem::size_of::<super::Entry>() <= 88);
    }
}
