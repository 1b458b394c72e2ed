//! Range restores: one new database from key ranges of several
//! checkpoints (how a rescaled job gives each worker its key groups).
//!
//! The native checkpoint with the most SST files is the base: its files
//! are fetched into the new database directory and opened, exactly as a
//! whole restore does, so its SST files are reused as they are. Everything
//! outside its ranges is then deleted: SST files that lie wholly outside
//! them are dropped from the database (`DeleteFilesInRange`), and range
//! tombstones cover the rest. Every other native checkpoint is fetched
//! into a scratch directory and opened read-only; the stored entries of
//! its ranges (keys and values byte for byte, with their expiry header)
//! are written into SST files that the new database ingests. A
//! `snapshot-v1` source is streamed, and its entries in range written. The
//! memtable is flushed last, so the deletions and writes are on disk in
//! SST files before the restore can be committed.

use std::path::{Path, PathBuf};

use rocksdb::{DB, IngestExternalFileOptions, ReadOptions, SstFileWriter};

use gress_state::checkpoint::{CheckpointFiles, RangeSource, SNAPSHOT_FORMAT};
use gress_state::ttl::StoredValue;
use gress_state::{Error, KeyRange, Result, StateBackend};

use crate::backend::{RocksDbStateBackend, discard_dir};
use crate::capture::ROCKSDB_CHECKPOINT_FORMAT;
use crate::db::Db;
use crate::error;

/// An SST file written for ingestion is closed at about this size.
const SST_TARGET_BYTES: u64 = 256 << 20;

/// The keys `lo <= key < hi`; no `hi`: no upper bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interval {
    pub(crate) lo: Vec<u8>,
    pub(crate) hi: Option<Vec<u8>>,
}

impl Interval {
    fn contains(&self, key: &[u8]) -> bool {
        key >= self.lo.as_slice() && self.hi.as_deref().is_none_or(|hi| key < hi)
    }
}

/// The smallest key greater than `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(key.len() + 1);
    s.extend_from_slice(key);
    s.push(0);
    s
}

/// Sorted, disjoint, non-adjacent, non-empty intervals holding exactly the
/// keys of `ranges`.
pub(crate) fn intervals(ranges: &[KeyRange]) -> Vec<Interval> {
    use std::ops::Bound;
    let mut all: Vec<Interval> = ranges
        .iter()
        .map(|r| Interval {
            lo: match &r.start {
                Bound::Included(s) => s.clone(),
                Bound::Excluded(s) => successor(s),
                Bound::Unbounded => Vec::new(),
            },
            hi: match &r.end {
                Bound::Included(e) => Some(successor(e)),
                Bound::Excluded(e) => Some(e.clone()),
                Bound::Unbounded => None,
            },
        })
        .filter(|i| i.hi.as_ref().is_none_or(|hi| i.lo < *hi))
        .collect();
    all.sort_by(|a, b| a.lo.cmp(&b.lo));
    let mut out: Vec<Interval> = Vec::with_capacity(all.len());
    for next in all {
        if let Some(last) = out.last_mut() {
            match &last.hi {
                // Already reaches past every key.
                None => continue,
                Some(hi) if next.lo <= *hi => {
                    last.hi = match next.hi {
                        Some(h) if h <= *hi => continue,
                        other => other,
                    };
                    continue;
                }
                Some(_) => {}
            }
        }
        out.push(next);
    }
    out
}

/// The keys in none of `kept` (sorted and disjoint), as intervals.
pub(crate) fn complement(kept: &[Interval]) -> Vec<Interval> {
    let mut out = Vec::new();
    let mut cursor = Some(Vec::new());
    for i in kept {
        let Some(from) = cursor.take() else { break };
        if from < i.lo {
            out.push(Interval {
                lo: from,
                hi: Some(i.lo.clone()),
            });
        }
        cursor = i.hi.clone();
    }
    if let Some(from) = cursor {
        out.push(Interval { lo: from, hi: None });
    }
    out
}

/// A directory in the backend's root for one range restore: fetched
/// checkpoints and SST files to ingest. Removed when dropped (and, after a
/// crash, at the next open).
struct Scratch {
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        discard_dir(&self.dir);
    }
}

/// One source with ranges to take, as intervals.
struct Part<'s, 'a> {
    source: &'s RangeSource<'a>,
    kept: Vec<Interval>,
}

fn n_sst(files: &dyn CheckpointFiles) -> usize {
    files
        .names()
        .iter()
        .filter(|n| n.ends_with(".sst") || n.ends_with(".blob"))
        .count()
}

impl RocksDbStateBackend {
    /// Builds a new database beside the live one holding exactly the keys
    /// of each source's ranges, as that source's checkpoint had them. On
    /// `Err` nothing of it is left on disk.
    pub(crate) fn stage_ranges(&self, sources: &[RangeSource<'_>]) -> Result<(String, Db)> {
        for source in sources {
            match source.format {
                ROCKSDB_CHECKPOINT_FORMAT => {}
                SNAPSHOT_FORMAT => {
                    let n = source.files.names().len();
                    if n != 1 {
                        return Err(Error::invalid_argument(
                            "files",
                            format!("{n} files for checkpoint format {SNAPSHOT_FORMAT}"),
                        ));
                    }
                }
                other => {
                    return Err(Error::UnsupportedFormat {
                        found: format!("checkpoint format {other}").into(),
                        supported: format!("{ROCKSDB_CHECKPOINT_FORMAT} or {SNAPSHOT_FORMAT}")
                            .into(),
                    });
                }
            }
        }
        // A source none of whose keys are taken is not read at all.
        let parts: Vec<Part<'_, '_>> = sources
            .iter()
            .map(|source| Part {
                source,
                kept: intervals(source.ranges),
            })
            .filter(|p| !p.kept.is_empty())
            .collect();
        let base = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.source.format == ROCKSDB_CHECKPOINT_FORMAT)
            .max_by_key(|(i, p)| (n_sst(p.source.files), std::cmp::Reverse(*i)))
            .map(|(i, _)| i);
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (name, db) = match base {
            Some(i) => self.stage_checkpoint(parts[i].source.files)?,
            None => {
                let (name, dir) = self.new_db_dir()?;
                let db = self
                    .engine
                    .open(&self.root, &dir, true)
                    .inspect_err(|_| discard_dir(&dir))?;
                (name, db)
            }
        };
        match self.fill_ranges(&db, &parts, base) {
            Ok(()) => Ok((name, db)),
            Err(e) => {
                // Deleted as `db` is dropped here.
                db.retire();
                Err(e)
            }
        }
    }

    fn fill_ranges(&self, db: &Db, parts: &[Part<'_, '_>], base: Option<usize>) -> Result<()> {
        if let Some(i) = base {
            self.keep_only(db, &parts[i].kept)?;
        }
        let now = self.clock.now_ms();
        let mut scratch = None;
        for (i, part) in parts.iter().enumerate() {
            if Some(i) == base {
                continue;
            }
            if part.source.format == SNAPSHOT_FORMAT {
                self.write_snapshot_ranges(db, part, now)?;
                continue;
            }
            let scratch = match &mut scratch {
                Some(s) => s,
                None => scratch.insert(self.new_scratch()?),
            };
            let dir = scratch.dir.join(format!("source-{i}"));
            let ssts = self.extract_ranges(&dir, &scratch.dir, i, part, now);
            discard_dir(&dir);
            let ssts = ssts?;
            if !ssts.is_empty() {
                let mut opts = IngestExternalFileOptions::default();
                opts.set_move_files(true);
                db.db()
                    .ingest_external_file_opts(&opts, ssts)
                    .map_err(error::engine)?;
            }
        }
        drop(scratch);
        // The deletions and snapshot entries were written without the WAL.
        db.db().flush().map_err(error::engine)
    }

    fn new_scratch(&self) -> Result<Scratch> {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.path.join(format!("restore-{n:06}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
        std::fs::create_dir(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Scratch { dir })
    }

    /// Deletes every key of the staged `db` outside `kept`.
    fn keep_only(&self, db: &Db, kept: &[Interval]) -> Result<()> {
        // For each interval to delete, its last key in the database, so
        // `DeleteFilesInRange` (whose end is inclusive) never drops a file
        // that holds a kept key.
        let gone = complement(kept);
        let mut last_keys = Vec::with_capacity(gone.len());
        {
            let mut ro = ReadOptions::default();
            ro.fill_cache(false);
            ro.set_total_order_seek(true);
            let mut it = db.db().raw_iterator_opt(ro);
            for g in &gone {
                match &g.hi {
                    Some(hi) => {
                        it.seek_for_prev(hi);
                        if it.valid() && it.key() == Some(hi.as_slice()) {
                            it.prev();
                        }
                    }
                    None => it.seek_to_last(),
                }
                it.status().map_err(error::engine)?;
                let last = it
                    .valid()
                    .then(|| it.key())
                    .flatten()
                    .filter(|k| *k >= g.lo.as_slice())
                    .map(<[u8]>::to_vec);
                last_keys.push(last);
            }
        }
        // Files first: a file dropped after the range tombstones were
        // flushed could hold one of them.
        for (g, last) in gone.iter().zip(&last_keys) {
            if let Some(last) = last {
                db.db()
                    .delete_file_in_range(&g.lo, last)
                    .map_err(error::engine)?;
            }
        }
        let mut wb = rocksdb::WriteBatch::default();
        for (g, last) in gone.iter().zip(&last_keys) {
            match (&g.hi, last) {
                (Some(hi), _) => wb.delete_range(&g.lo, hi),
                // Past the last key nothing is left to delete.
                (None, Some(last)) => wb.delete_range(&g.lo, &successor(last)),
                (None, None) => {}
            }
        }
        self.write_staged(db, &mut wb)
    }

    /// Fetches the native checkpoint of `part` into `dir`, opens it
    /// read-only and writes the stored entries of its ranges that have not
    /// expired at `now` into SST files in `out`: the files, none if no
    /// entry is in range.
    fn extract_ranges(
        &self,
        dir: &Path,
        out: &Path,
        index: usize,
        part: &Part<'_, '_>,
        now: u64,
    ) -> Result<Vec<PathBuf>> {
        std::fs::create_dir(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        part.source.files.fetch_all(dir)?;
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let source = self.engine.open_read_only(dir)?;
        let mut files = Vec::new();
        let mut writer: Option<(SstFileWriter<'_>, PathBuf)> = None;
        for kept in &part.kept {
            for_each_entry(&source, kept, |key, stored| {
                if StoredValue::decode(stored)?.is_expired_at(now) {
                    return Ok(());
                }
                let (w, _) = match &mut writer {
                    Some(w) => w,
                    None => {
                        let path = out.join(format!("source-{index}-{:04}.sst", files.len()));
                        let w = SstFileWriter::create(&self.engine.opts);
                        w.open(&path).map_err(error::engine)?;
                        writer.insert((w, path))
                    }
                };
                w.put(key, stored).map_err(error::engine)?;
                if w.file_size() >= SST_TARGET_BYTES
                    && let Some((mut w, path)) = writer.take()
                {
                    w.finish().map_err(error::engine)?;
                    files.push(path);
                }
                Ok(())
            })?;
        }
        if let Some((mut w, path)) = writer.take() {
            w.finish().map_err(error::engine)?;
            files.push(path);
        }
        Ok(files)
    }

    /// Streams the full snapshot of `part` and writes its entries in range
    /// that have not expired at `now` into `db`.
    fn write_snapshot_ranges(&self, db: &Db, part: &Part<'_, '_>, now: u64) -> Result<()> {
        let names = part.source.files.names();
        let [name] = names.as_slice() else {
            return Err(Error::invalid_argument(
                "files",
                format!(
                    "{} files for checkpoint format {SNAPSHOT_FORMAT}",
                    names.len()
                ),
            ));
        };
        let mut input = part.source.files.open(name)?;
        self.write_full_snapshot(db, &mut input, now, |key| {
            part.kept.iter().any(|i| i.contains(key))
        })?;
        Ok(())
    }
}

/// Calls `f` with every stored entry of `source` in `range`, in key order.
fn for_each_entry(
    source: &DB,
    range: &Interval,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut ro = ReadOptions::default();
    ro.fill_cache(false);
    ro.set_total_order_seek(true);
    ro.set_iterate_lower_bound(range.lo.clone());
    if let Some(hi) = &range.hi {
        ro.set_iterate_upper_bound(hi.clone());
    }
    let mut it = source.raw_iterator_opt(ro);
    it.seek(&range.lo);
    while it.valid() {
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            f(k, v)?;
        }
        it.next();
    }
    it.status().map_err(error::engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(lo: &[u8], hi: Option<&[u8]>) -> Interval {
        Interval {
            lo: lo.to_vec(),
            hi: hi.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn intervals_merge_and_normalise_bounds() {
        use std::ops::Bound::*;
        let ranges = [
            KeyRange::between(b"m".to_vec(), b"p".to_vec()),
            KeyRange {
                start: Excluded(b"a".to_vec()),
                end: Included(b"c".to_vec()),
            },
            KeyRange::between(b"b".to_vec(), b"d".to_vec()),
            KeyRange::between(b"d".to_vec(), b"e".to_vec()),
            KeyRange::between(b"x".to_vec(), b"x".to_vec()),
            KeyRange::between(b"n".to_vec(), b"o".to_vec()),
        ];
        assert_eq!(
            intervals(&ranges),
            [iv(b"a\0", Some(b"e")), iv(b"m", Some(b"p"))]
        );
        assert_eq!(
            complement(&intervals(&ranges)),
            [iv(b"", Some(b"a\0")), iv(b"e", Some(b"m")), iv(b"p", None)]
        );
        assert_eq!(intervals(&[KeyRange::all()]), [iv(b"", None)]);
        assert_eq!(complement(&intervals(&[KeyRange::all()])), []);
        assert_eq!(complement(&[]), [iv(b"", None)]);
        let tail = [
            KeyRange {
                start: Included(b"k".to_vec()),
                end: Unbounded,
            },
            KeyRange::between(b"q".to_vec(), b"z".to_vec()),
        ];
        assert_eq!(intervals(&tail), [iv(b"k", None)]);
        assert_eq!(complement(&intervals(&tail)), [iv(b"", Some(b"k"))]);
    }
}
