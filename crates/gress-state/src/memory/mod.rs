//! `MemoryStateBackend`: sharded hash maps with copy-on-write snapshots.
//!
//! Keys are hashed once; bits 32.. of the hash pick one of `n_shards`
//! shards, each a lock over a hash table whose entries keep key and value
//! in one allocation (`shard`). Point operations lock one shard. Snapshots,
//! scans and checkpoint captures lock every shard just long enough to
//! freeze its table (a consistent cut), then read without locks; a writer
//! that finds its shard frozen copies the table first, so writers never
//! wait for snapshot I/O. Expired entries are removed on read and by a
//! background thread (`cleanup`). Checkpoint captures (`capture`) write the
//! whole state or the keys changed since the last committed capture;
//! restores (`restore`) build a new state beside the live one and swap it
//! in.

mod capture;
mod cleanup;
mod config;
mod restore;
mod shard;

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, RwLock};

use crate::backend::{BatchOp, KeyRange, ScanIter, StateBackend, WriteBatch};
use crate::error::{Error, Result, closed};
use crate::metrics::{Counter, Metrics, MetricsRecorder, Op};
use crate::snapshot::{RestoreSummary, SnapshotKind, SnapshotSummary};
use crate::ttl::{check_key, check_value};

use capture::CaptureChain;
pub use capture::MEMORY_CHECKPOINT_FORMAT;
use cleanup::Cleaner;
pub use config::MemoryConfig;
use restore::Staged;
use shard::{Entry, Hasher, Inner, ShardState, write_full_snapshot};

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
                chain: Mutex::new(CaptureChain::default()),
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
        // The chain lock comes before the shard locks, as in a capture.
        let mut chain = self.inner.chain.lock();
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
        chain.restart();
        drop(guards);
        drop(chain);
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

    fn get_with_expiry(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Option<u64>)>> {
        let local = self.inner.metrics.local();
        let timer = local.start(Op::Get);
        let result = self.inner.get_one_with_expiry(key);
        if let Ok(found) = &result {
            local.add_reads(u64::from(found.is_some()), 1);
        }
        local.finish(timer);
        result
    }

    fn default_ttl(&self) -> Option<Duration> {
        self.inner.ttl.default_ms().map(Duration::from_millis)
    }

    /// A scan reads every shard's table, whatever its range.
    fn ordered(&self) -> bool {
        false
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
        let summary = write_full_snapshot(&tables, self.inner.clock.now_ms(), out)?;
        self.inner.metrics.add(Counter::Snapshot, 1);
        Ok(summary)
    }

    fn restore_from(&self, input: &mut dyn Read) -> Result<RestoreSummary> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut staged = Staged::new(&self.inner);
        staged.read_stream(&self.inner, input, SnapshotKind::Full, None)?;
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
            cleaner.stop();
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
