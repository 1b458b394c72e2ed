//! A job's history: its commit records, which of them still count, and
//! which are kept.
//!
//! A commit record says that every worker's checkpoint of an epoch is
//! durable; it is published create-only under `commits/` once they all
//! are. A run recovers from a record and numbers its epochs after the
//! newest record there is. A run that recovers from an older record than
//! the newest (a newer one is damaged, or the operator chose it) *rolls
//! back* the epochs after it: every record it publishes names that range
//! (`rolls_back`), and a record inside the range of a newer valid record no
//! longer counts. Until the run commits its first epoch, nothing of the
//! rolled-back epochs is deleted and a restart may still resume from them.
//!
//! The job keeps the newest `retained_commits` valid records, and each
//! worker every checkpoint they name; the committer deletes the rest.

use std::ops::RangeInclusive;

use gress_checkpoint::Storage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A committed epoch of a job: every worker's checkpoint of it is durable.
///
/// Unknown fields are refused when a record is read: a damaged field name
/// must not pass for an absent field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRecord {
    /// The epoch.
    pub epoch: u64,
    /// The job's id.
    pub job: String,
    /// The number of workers that took part.
    pub workers: usize,
    /// The job's number of key groups.
    pub key_groups: u16,
    /// Each worker's checkpoint id of this epoch, by worker index.
    pub checkpoints: Vec<u64>,
    /// When it was committed, ms since the UNIX epoch.
    pub created_at_ms: u64,
    /// The epochs this record's run rolled back (it recovered from the
    /// epoch before them): records of those epochs no longer count, and
    /// their output is withdrawn.
    /// (Always written: timely's wire format between processes is not
    /// self-describing. Missing in records of older versions.)
    #[serde(default)]
    pub rolls_back: Option<(u64, u64)>,
    /// CRC32C of the record's JSON with this field `null`: set when the
    /// record is published, checked when it is read (a damaged record is
    /// unreadable, never taken for another one). Missing in records of
    /// older versions, which are not checked.
    #[serde(default)]
    pub checksum: Option<u32>,
}

impl CommitRecord {
    /// The record's JSON, with its checksum.
    fn encode(&self) -> Result<Vec<u8>> {
        let mut record = self.clone();
        record.checksum = None;
        let plain = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::invalid("commit record", e.to_string()))?;
        record.checksum = Some(crc32c::crc32c(&plain));
        serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::invalid("commit record", e.to_string()))
    }

    /// Parses a stored record; `None` if it does not parse or its checksum
    /// does not match.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let record: CommitRecord = serde_json::from_slice(bytes).ok()?;
        let Some(stored) = record.checksum else {
            return Some(record);
        };
        let mut plain = record.clone();
        plain.checksum = None;
        let json = serde_json::to_vec_pretty(&plain).ok()?;
        (crc32c::crc32c(&json) == stored).then_some(record)
    }

    /// The epochs this record's run rolled back, if any.
    pub fn rolled_back(&self) -> Option<RangeInclusive<u64>> {
        self.rolls_back.map(|(first, last)| first..=last)
    }

    /// Worker `worker`'s checkpoint of this epoch, if it took part.
    pub fn checkpoint_of(&self, worker: usize) -> Option<u64> {
        self.checkpoints.get(worker).copied()
    }
}

/// Directory of commit records in the job's checkpoint storage.
pub const COMMITS: &str = "commits/";

/// Largest commit record read.
const MAX_RECORD: u64 = 1 << 20;

pub(crate) fn commit_path(epoch: u64) -> String {
    format!("{COMMITS}{epoch:020}.commit")
}

/// Every commit record of a job that parses, newest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    records: Vec<CommitRecord>,
    /// Epochs of records there that do not parse: they count for
    /// nothing, but a run numbers its epochs after them too.
    unreadable: Vec<u64>,
}

impl History {
    /// Reads every record under `commits/`. One that does not parse (torn
    /// by a storage that is not atomic, or damaged) is skipped with a
    /// warning; one deleted between the listing and its reading is left
    /// out.
    pub(crate) fn read(storage: &dyn Storage) -> Result<Self> {
        Self::read_some(storage, None)
    }

    /// Reads records newest first, stopping once `valid` of them count.
    fn read_some(storage: &dyn Storage, valid: Option<usize>) -> Result<Self> {
        let mut epochs: Vec<u64> = storage
            .list(COMMITS)?
            .iter()
            .filter_map(|o| epoch_of(&o.path))
            .collect();
        epochs.sort_unstable_by(|a, b| b.cmp(a));
        let mut history = History::default();
        for epoch in epochs {
            if valid.is_some_and(|n| history.valid().count() >= n) {
                break;
            }
            let path = commit_path(epoch);
            let bytes = match storage.read_all(&path, MAX_RECORD) {
                Ok(bytes) => bytes,
                // Deleted since the listing: pruned by a running job.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            match CommitRecord::decode(&bytes) {
                Some(record) if record.epoch == epoch => history.records.push(record),
                Some(_) | None => {
                    tracing::warn!(path, "skipping an unreadable commit record");
                    history.unreadable.push(epoch);
                }
            }
        }
        Ok(history)
    }

    /// A history of these records (any order), and the epochs of
    /// unreadable ones.
    pub(crate) fn from_records(mut records: Vec<CommitRecord>, unreadable: Vec<u64>) -> Self {
        records.sort_by_key(|r| std::cmp::Reverse(r.epoch));
        records.dedup_by_key(|r| r.epoch);
        History {
            records,
            unreadable,
        }
    }

    /// Epochs of records that do not parse.
    pub(crate) fn unreadable(&self) -> &[u64] {
        &self.unreadable
    }

    /// Every record, newest first, counting or not.
    pub(crate) fn records(&self) -> &[CommitRecord] {
        &self.records
    }

    /// The records that count, newest first: those outside the rolled-back
    /// range of every newer record that counts.
    pub(crate) fn valid(&self) -> impl Iterator<Item = &CommitRecord> {
        let mut below = u64::MAX;
        let mut ranges: Vec<RangeInclusive<u64>> = Vec::new();
        self.records.iter().filter(move |r| {
            if r.epoch >= below || ranges.iter().any(|range| range.contains(&r.epoch)) {
                return false;
            }
            below = r.epoch;
            ranges.extend(r.rolled_back());
            true
        })
    }

    /// The newest record that counts.
    pub(crate) fn newest_valid(&self) -> Option<&CommitRecord> {
        self.valid().next()
    }

    /// The highest epoch any record names, readable or not: a run numbers
    /// its epochs after it, so it never publishes a record where one is.
    pub(crate) fn max_epoch(&self) -> Option<u64> {
        let readable = self.records.first().map(|r| r.epoch);
        readable.max(self.unreadable.iter().copied().max())
    }

    /// The records a run may recover from, newest first: the valid ones,
    /// or only epoch `from` if asked for.
    pub(crate) fn candidates(&self, from: Option<u64>) -> Result<Vec<CommitRecord>> {
        let valid: Vec<CommitRecord> = self.valid().cloned().collect();
        match from {
            None => Ok(valid),
            Some(epoch) => match valid.iter().find(|r| r.epoch == epoch) {
                Some(r) => Ok(vec![r.clone()]),
                None => Err(Error::Recovery {
                    epoch,
                    reason: format!(
                        "it is not a retained committed epoch of this job (retained: {})",
                        describe_epochs(valid.iter().map(|r| r.epoch))
                    )
                    .into(),
                }),
            },
        }
    }

    /// Adds a record just published.
    pub(crate) fn push(&mut self, record: CommitRecord) {
        self.records.retain(|r| r.epoch != record.epoch);
        self.records.insert(0, record);
        self.records.sort_by_key(|r| std::cmp::Reverse(r.epoch));
    }

    /// The records to delete now: those that no longer count, the valid
    /// ones beyond the newest `keep`, and unreadable ones older than the
    /// newest kept. Removes them from this history.
    pub(crate) fn prune(&mut self, keep: usize) -> Vec<u64> {
        let kept: Vec<u64> = self.valid().take(keep.max(1)).map(|r| r.epoch).collect();
        let (stay, go): (Vec<CommitRecord>, Vec<CommitRecord>) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| kept.contains(&r.epoch));
        self.records = stay;
        let newest = kept.first().copied().unwrap_or(0);
        let (old, young): (Vec<u64>, Vec<u64>) = std::mem::take(&mut self.unreadable)
            .into_iter()
            .partition(|&e| e < newest);
        self.unreadable = young;
        go.into_iter().map(|r| r.epoch).chain(old).collect()
    }
}

fn epoch_of(path: &str) -> Option<u64> {
    path.strip_prefix(COMMITS)?
        .strip_suffix(".commit")?
        .parse()
        .ok()
}

/// `1, 2, 5` or `none`.
pub(crate) fn describe_epochs(epochs: impl Iterator<Item = u64>) -> String {
    let list: Vec<String> = epochs.map(|e| e.to_string()).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// The newest commit record that counts, if any.
pub fn latest_commit(storage: &dyn Storage) -> Result<Option<CommitRecord>> {
    // Records read newest first until one counts (a rolled-back one is
    // older than the record that rolled it back).
    Ok(History::read_some(storage, Some(1))?
        .newest_valid()
        .cloned())
}

/// Every commit record that counts, newest first (records a later run
/// rolled back are left out, as is one deleted while it was being read).
pub fn commits(storage: &dyn Storage) -> Result<Vec<CommitRecord>> {
    Ok(History::read(storage)?.valid().cloned().collect())
}

/// Publishes a record (create-only; a record already there with the same
/// content counts). `Ok` once it is durable: what follows is cleanup.
pub(crate) fn publish(storage: &dyn Storage, record: &CommitRecord) -> Result<()> {
    let bytes = record.encode()?;
    let path = commit_path(record.epoch);
    if let Err(e) = storage.put_new(&path, &bytes) {
        match storage.holds(&path, &bytes) {
            Ok(true) => {}
            _ => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes what killed writers left under `commits/`: temporary files of
/// record publications that can no longer finish.
pub(crate) fn sweep_temporaries(storage: &dyn Storage) {
    let Ok(objects) = storage.list(COMMITS) else {
        return;
    };
    for o in objects {
        if gress_checkpoint::storage::is_stale_temporary(&o.path)
            && let Err(e) = storage.delete(&o.path)
        {
            tracing::debug!(path = o.path, error = %e, "could not delete a temporary file");
        }
    }
}

/// Deletes the records of `epochs`, newest first (a crash midway leaves
/// the oldest, so what remains is still a history), logging what fails.
pub(crate) fn delete_records(storage: &dyn Storage, mut epochs: Vec<u64>) {
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    for epoch in epochs {
        let path = commit_path(epoch);
        if let Err(e) = storage.delete(&path) {
            tracing::warn!(path, error = %e, "could not delete a commit record; the next commit tries again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: u64, rolls_back: Option<(u64, u64)>) -> CommitRecord {
        CommitRecord {
            epoch,
            job: "j".into(),
            workers: 1,
            key_groups: 8,
            checkpoints: vec![epoch * 10],
            created_at_ms: 0,
            rolls_back,
            checksum: None,
        }
    }

    /// A record reads back as written; a flipped bit anywhere makes it
    /// unreadable, even where the JSON still parses.
    #[test]
    fn a_damaged_record_does_not_read() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let bytes = record(41, Some((3, 4))).encode()?;
        let back = CommitRecord::decode(&bytes).ok_or("did not read back")?;
        assert_eq!(back.epoch, 41);
        assert_eq!(back.rolls_back, Some((3, 4)));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                if let Some(r) = CommitRecord::decode(&damaged) {
                    // Only a change JSON does not see (whitespace) reads.
                    assert_eq!(r, back, "byte {i} bit {bit}");
                }
            }
        }
        Ok(())
    }

    fn valid(h: &History) -> Vec<u64> {
        h.valid().map(|r| r.epoch).collect()
    }

    /// A record inside the rolled-back range of a newer valid record does
    /// not count; ranges of records that do not count are ignored.
    #[test]
    fn rolled_back_records_do_not_count() {
        // 1..=5, then a run from 3 rolls back 4..=5 and commits 6, 7; then
        // a run from 6 rolls back 7 and commits 8.
        let h = History::from_records(
            vec![
                record(1, None),
                record(2, None),
                record(3, None),
                record(4, None),
                record(5, None),
                record(6, Some((4, 5))),
                record(7, Some((4, 5))),
                record(8, Some((7, 7))),
            ],
            Vec::new(),
        );
        assert_eq!(valid(&h), [8, 6, 3, 2, 1]);
        assert_eq!(h.max_epoch(), Some(8));
        // Without 8, the range of 7 still applies.
        let h = History::from_records(h.records()[1..].to_vec(), Vec::new());
        assert_eq!(valid(&h), [7, 6, 3, 2, 1]);
    }

    /// Pruning deletes what does not count and what is beyond the newest
    /// `keep` valid records, never the newest.
    #[test]
    fn pruning_keeps_the_newest_valid_records() {
        let mut h = History::from_records(
            vec![
                record(1, None),
                record(2, None),
                record(3, None),
                record(4, None),
                record(6, Some((3, 4))),
            ],
            Vec::new(),
        );
        let mut gone = h.prune(2);
        gone.sort_unstable();
        assert_eq!(gone, [1, 3, 4]);
        assert_eq!(valid(&h), [6, 2]);
        assert!(h.prune(2).is_empty());
    }

    /// Asking for an epoch that is not a valid record names the ones there
    /// are.
    #[test]
    fn a_chosen_epoch_must_be_a_valid_record() {
        let h = History::from_records(
            vec![record(1, None), record(2, None), record(4, Some((2, 3)))],
            Vec::new(),
        );
        assert_eq!(h.candidates(None).map(|c| c.len()).ok(), Some(2));
        assert_eq!(h.candidates(Some(1)).map(|c| c[0].epoch).ok(), Some(1));
        let err = h
            .candidates(Some(2))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("retained: 4, 1"), "{err}");
    }
}
