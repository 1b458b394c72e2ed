//! Restores: a new state is built beside the live one from snapshot
//! streams (a full one, then deltas) and swapped in only once every stream
//! was read and verified.

use std::io::Read;

use super::MemoryStateBackend;
use super::capture::MEMORY_CHECKPOINT_FORMAT;
use super::shard::{Entry, Inner, ShardState};
use crate::backend::{KeyRange, StateBackend};
use crate::checkpoint::{CheckpointFiles, PreparedRestore, RangeSource, SNAPSHOT_FORMAT};
use crate::error::{Error, Result};
use crate::metrics::Counter;
use crate::snapshot::{RestoreSummary, SnapshotEntry, SnapshotKind, SnapshotReader};
use crate::ttl::is_expired;

/// A state built beside the live one by a restore, swapped in only once
/// every input stream was read and verified.
pub(super) struct Staged {
    shards: Vec<ShardState>,
    now_ms: u64,
    summary: RestoreSummary,
}

impl Staged {
    pub(super) fn new(inner: &Inner) -> Self {
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
    pub(super) fn read_stream(
        &mut self,
        inner: &Inner,
        input: &mut dyn Read,
        expect: SnapshotKind,
        ranges: Option<&[KeyRange]>,
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
            if ranges.is_some_and(|r| !r.iter().any(|r| r.contains(key))) {
                continue;
            }
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
    pub(super) fn commit_staged(&self, mut staged: Staged) -> Result<RestoreSummary> {
        let inner = &*self.inner;
        let any_expiring = staged.shards.iter().any(|s| s.n_expiring > 0);
        staged.summary.n_entries_restored = staged.shards.iter().map(|s| s.len() as u64).sum();
        // The chain lock comes before the shard locks, as in a capture.
        let mut chain = inner.chain.lock();
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
        // The next capture is full: no delta describes this change.
        chain.restart();
        drop(guards);
        drop(chain);
        drop(old);
        inner.metrics.add(Counter::Restore, 1);
        if any_expiring {
            self.note_expiring_write();
        }
        Ok(staged.summary)
    }

    /// Reads a checkpoint's files into a new state: a memory-backend chain
    /// (a full snapshot, then deltas) or a single full snapshot.
    pub(super) fn prepare_files(
        &self,
        format: &str,
        files: &dyn CheckpointFiles,
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut staged = Staged::new(&self.inner);
        self.stage_files(&mut staged, format, files, None)?;
        Ok(Box::new(PreparedMemoryRestore {
            backend: self,
            staged,
        }))
    }

    /// Reads the given key ranges of several checkpoints into one new
    /// state.
    pub(super) fn prepare_ranges(
        &self,
        sources: &[RangeSource<'_>],
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut staged = Staged::new(&self.inner);
        for source in sources {
            self.stage_files(
                &mut staged,
                source.format,
                source.files,
                Some(source.ranges),
            )?;
        }
        Ok(Box::new(PreparedMemoryRestore {
            backend: self,
            staged,
        }))
    }

    /// Reads one checkpoint's chain (a full snapshot, then deltas) into
    /// `staged`, keeping only the keys of `ranges` when given.
    fn stage_files(
        &self,
        staged: &mut Staged,
        format: &str,
        files: &dyn CheckpointFiles,
        ranges: Option<&[KeyRange]>,
    ) -> Result<()> {
        let names = files.names();
        match format {
            MEMORY_CHECKPOINT_FORMAT if !names.is_empty() => {}
            SNAPSHOT_FORMAT if names.len() == 1 => {}
            MEMORY_CHECKPOINT_FORMAT | SNAPSHOT_FORMAT => {
                return Err(Error::invalid_argument(
                    "files",
                    format!("{} files for checkpoint format {format}", names.len()),
                ));
            }
            other => {
                return Err(Error::UnsupportedFormat {
                    found: format!("checkpoint format {other}").into(),
                    supported: format!("{MEMORY_CHECKPOINT_FORMAT} or {SNAPSHOT_FORMAT}").into(),
                });
            }
        }
        for (i, name) in names.iter().enumerate() {
            let expect = if i == 0 {
                SnapshotKind::Full
            } else {
                SnapshotKind::Delta
            };
            let mut input = files.open(name)?;
            staged.read_stream(&self.inner, &mut input, expect, ranges)?;
        }
        Ok(())
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
