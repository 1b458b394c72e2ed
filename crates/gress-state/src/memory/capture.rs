//! Checkpoint captures of the memory backend.
//!
//! A capture freezes every shard (the cut, under all shard locks) and takes
//! each shard's set of keys changed since the previous cut. A full capture
//! writes every live entry; a delta writes, for every key changed since its
//! base (the newest committed capture), the key's value at the cut or a
//! tombstone. The change sets of captures that no committed capture covers
//! yet are kept, so a capture that fails, or is still being written, never
//! leaves a hole in the next delta, and captures may commit in any order.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::MemoryStateBackend;
use super::shard::{DirtySet, Inner, Table, write_full_snapshot};
use crate::checkpoint::{
    Capture, CaptureKind, CaptureMode, CapturedFile, CheckpointFiles, Checkpointable, FileSource,
    PreparedRestore, RangeSource,
};
use crate::error::{Error, Result};
use crate::snapshot::{SnapshotKind, SnapshotWriter};

/// Checkpoint format of the memory backend: a v1 full snapshot, then v1
/// delta snapshots, one file each.
pub const MEMORY_CHECKPOINT_FORMAT: &str = "memory-v1";

/// Keys changed between one cut and the next, per shard.
type ChangeSet = Arc<Vec<DirtySet>>;

/// Change sets kept while no capture commits; past this many, the chain
/// restarts and the next capture is full.
const MAX_PENDING: usize = 64;

/// What deltas build on. Lock order: this lock, then the shard locks.
#[derive(Default)]
pub(super) struct CaptureChain {
    /// The checkpoint manager that may capture this backend.
    owner: Option<u64>,
    /// Bumped whenever the chain restarts (restore, clear, new owner): a
    /// capture of an earlier generation that commits later moves nothing.
    generation: u64,
    /// The newest committed capture of this generation: deltas apply to
    /// its state.
    base: Option<u64>,
    /// Per capture taken since `base` (in flight, failed, or committed
    /// out of order): its id and the keys changed between the cut before
    /// it and its own cut. Ids increase along the vector.
    pending: Vec<(u64, ChangeSet)>,
}

impl CaptureChain {
    /// Forgets the base: the next capture is full.
    pub(super) fn restart(&mut self) {
        self.generation += 1;
        self.base = None;
        self.pending.clear();
    }
}

impl Checkpointable for MemoryStateBackend {
    fn keeps_state_in_memory(&self) -> bool {
        true
    }

    fn claim_checkpoints(&self, owner: u64) -> Result<()> {
        let mut chain = self.inner.chain.lock();
        match chain.owner {
            Some(current) if current == owner => Ok(()),
            Some(_) => Err(Error::invalid_argument(
                "backend",
                "already registered with another checkpoint manager",
            )),
            None => {
                chain.owner = Some(owner);
                chain.restart();
                Ok(())
            }
        }
    }

    fn release_checkpoints(&self, owner: u64) {
        let mut chain = self.inner.chain.lock();
        if chain.owner == Some(owner) {
            chain.owner = None;
            chain.restart();
        }
    }

    fn delta_base(&self) -> Option<u64> {
        self.inner.chain.lock().base
    }

    fn capture(
        &self,
        owner: u64,
        mode: CaptureMode,
        checkpoint_id: u64,
    ) -> Result<Box<dyn Capture>> {
        let inner = &*self.inner;
        let mut chain = inner.chain.lock();
        if chain.owner != Some(owner) {
            return Err(Error::invalid_argument(
                "owner",
                "this checkpoint manager has not claimed the backend",
            ));
        }
        let newest = chain.pending.last().map(|p| p.0).max(chain.base);
        if newest.is_some_and(|id| id >= checkpoint_id) {
            return Err(Error::invalid_argument(
                "checkpoint_id",
                format!("{checkpoint_id} is not above the previous capture's id"),
            ));
        }
        let started = Instant::now();
        let mut guards = inner.lock_all_for_write()?;
        let mut tables = Vec::with_capacity(guards.len());
        let mut changed = Vec::with_capacity(guards.len());
        for state in guards.iter_mut().filter_map(|g| g.as_mut()) {
            tables.push(state.table.freeze());
            // Tracking starts with the first capture; a base exists only
            // after one, so a delta never misses a change made before.
            let dirty = state.dirty.replace(Box::default());
            changed.push(dirty.map(|d| *d).unwrap_or_default());
        }
        drop(guards);
        let pause = started.elapsed();
        let now_ms = inner.clock.now_ms();

        let base = chain.base.filter(|_| mode == CaptureMode::Incremental);
        let changes: ChangeSet = Arc::new(changed);
        let delta_sets = base.map(|_| {
            let mut sets: Vec<ChangeSet> = chain.pending.iter().map(|p| Arc::clone(&p.1)).collect();
            sets.push(Arc::clone(&changes));
            sets
        });
        chain.pending.push((checkpoint_id, changes));
        let generation = chain.generation;
        if chain.pending.len() > MAX_PENDING {
            chain.restart();
        }
        drop(chain);

        let name = match base {
            Some(_) => format!("delta-{checkpoint_id:020}.snap"),
            None => format!("full-{checkpoint_id:020}.snap"),
        };
        Ok(Box::new(MemoryCapture {
            inner: Arc::clone(&self.inner),
            id: checkpoint_id,
            generation,
            base,
            files: vec![CapturedFile {
                name,
                source: FileSource::Stream,
                shared_key: None,
            }],
            tables,
            delta_sets,
            now_ms,
            pause,
        }))
    }

    fn prepare_restore(
        &self,
        format: &str,
        files: &dyn CheckpointFiles,
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        self.prepare_files(format, files)
    }

    fn prepare_restore_ranges(
        &self,
        sources: &[RangeSource<'_>],
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        self.prepare_ranges(sources)
    }
}

/// A frozen cut of the memory backend: full, or the keys changed since
/// `base`.
struct MemoryCapture {
    inner: Arc<Inner>,
    id: u64,
    generation: u64,
    base: Option<u64>,
    files: Vec<CapturedFile>,
    tables: Vec<Arc<Table>>,
    /// For a delta: the change sets since the base, oldest first.
    delta_sets: Option<Vec<ChangeSet>>,
    now_ms: u64,
    pause: Duration,
}

impl MemoryCapture {
    fn write_delta(&self, sets: &[ChangeSet], out: &mut dyn Write) -> Result<u64> {
        let now = self.now_ms;
        let mut w = SnapshotWriter::new(out, SnapshotKind::Delta, now)?;
        let mut seen: HashSet<&[u8]> = HashSet::new();
        for (shard_idx, table) in self.tables.iter().enumerate() {
            seen.clear();
            let keys = sets.iter().flat_map(|s| s[shard_idx].iter());
            for key in keys {
                // With one change set no key repeats; with several, write
                // each key once.
                if sets.len() > 1 && !seen.insert(&key[..]) {
                    continue;
                }
                let hash = self.inner.hash(key);
                match table.find(hash, |e| e.key() == &key[..]) {
                    Some(e) if !e.is_dead_at(now) => w.put(key, e.value(), e.expiry())?,
                    _ => w.tombstone(key)?,
                }
            }
        }
        Ok(w.finish()?.n_bytes)
    }
}

impl Capture for MemoryCapture {
    fn kind(&self) -> CaptureKind {
        match self.base {
            Some(_) => CaptureKind::Delta,
            None => CaptureKind::Complete,
        }
    }

    fn base(&self) -> Option<u64> {
        self.base
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
        match &self.delta_sets {
            None => Ok(write_full_snapshot(&self.tables, self.now_ms, out)?.n_bytes),
            Some(sets) => self.write_delta(sets, out),
        }
    }

    fn pause(&self) -> Duration {
        self.pause
    }

    fn committed(self: Box<Self>) {
        let mut chain = self.inner.chain.lock();
        if chain.generation != self.generation {
            return;
        }
        if chain.base.is_none_or(|b| b < self.id) {
            chain.base = Some(self.id);
        }
        // Changes up to this cut are in a committed checkpoint now.
        chain.pending.retain(|p| p.0 > self.id);
    }
}
