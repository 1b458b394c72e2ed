//! [`FileSink`]: JSON lines, an epoch's file made visible when it commits.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::Data;
use crate::error::{Error, Result};

use super::{Sink, SinkJob};

/// Files of JSON lines: one per epoch and worker that had records, written
/// under `pending/` and renamed into `committed/` when the epoch commits.
/// Output an earlier run committed for epochs the job rolled back is moved
/// into `rolled-back/`.
///
/// In a job of several processes, every process must see the same
/// directory (a shared file system): after a rescale or a rollback a
/// worker settles files other workers wrote.
///
/// The directory belongs to one job: its id is written to `JOB` at the
/// first start. A start refuses, and changes nothing, when `JOB` names
/// another job, or when `committed/` holds output but the job has no
/// committed epoch (its checkpoints were deleted or are elsewhere): that
/// output would otherwise be taken back or mixed with a new run's.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    /// The job, once told.
    job: Option<SinkJob>,
    worker: usize,
    /// Workers of the job now (0: not told).
    workers: usize,
    /// Epochs being written, with their pending file.
    open: std::collections::BTreeMap<u64, BufWriter<File>>,
    /// Sealed epochs not yet committed.
    written: BTreeSet<u64>,
    /// Compact once this many files of retired epochs accumulate (0: never).
    compact_after: usize,
}

impl FileSink {
    /// Output under `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSink {
            dir: dir.into(),
            job: None,
            worker: 0,
            workers: 0,
            open: std::collections::BTreeMap::new(),
            written: BTreeSet::new(),
            compact_after: 0,
        }
    }

    /// Merges a worker's committed files of epochs that can no longer be
    /// rolled back into one *segment* file once `files` of them have
    /// accumulated, so `committed/` does not grow by a file per epoch
    /// forever. A segment is named `<first>-<last>-<worker>.jsonl` and
    /// holds those epochs' records in epoch order. It is renamed into
    /// place before the files it replaces are deleted; a reader that lists
    /// the directory during that step sees both, which
    /// [`FileSink::read_committed`] resolves (a file a segment covers is
    /// skipped), as does the next compaction (it deletes it).
    pub fn with_compaction(mut self, files: usize) -> Self {
        self.compact_after = files;
        self
    }

    fn name(&self, epoch: u64) -> String {
        Self::file_name(epoch, self.worker)
    }

    fn file_name(epoch: u64, worker: usize) -> String {
        format!("{epoch:020}-{worker:05}.jsonl")
    }

    fn fail(&self, what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
        Error::Sink {
            sink: self.dir.display().to_string(),
            reason: format!("{what} {}: {e}", path.display()),
        }
    }

    /// Moves the sealed output of `epoch` by `worker` into `committed/`
    /// (replacing a file of that name, which only a rolled-back run can
    /// have left).
    fn publish(&self, epoch: u64, worker: usize) -> Result<()> {
        let name = Self::file_name(epoch, worker);
        let from = self.dir.join("pending").join(&name);
        let to = self.dir.join("committed").join(&name);
        fs::rename(&from, &to).map_err(|e| self.fail("committing", &from, e))?;
        gress_state::fsutil::sync_dir(&self.dir.join("committed"))
            .map_err(|e| self.fail("syncing", &to, e))
    }

    /// The epoch and worker of an epoch file's name (not a segment's).
    fn parse_name(name: &str) -> Option<(u64, usize)> {
        match OutputFile::parse(name)? {
            OutputFile::Epoch { epoch, worker } => Some((epoch, worker)),
            OutputFile::Segment { .. } => None,
        }
    }

    /// Merges this worker's committed epoch files up to `through` into a
    /// segment once there are enough of them; removes files a segment
    /// already covers.
    fn compact(&mut self, through: u64) -> Result<()> {
        let committed = self.dir.join("committed");
        let mut files: Vec<(u64, PathBuf)> = Vec::new();
        let mut segments: Vec<(u64, u64)> = Vec::new();
        for entry in fs::read_dir(&committed).map_err(|e| self.fail("listing", &committed, e))? {
            let entry = entry.map_err(|e| self.fail("listing", &committed, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match OutputFile::parse(&name) {
                Some(OutputFile::Epoch { epoch, worker }) if worker == self.worker => {
                    files.push((epoch, entry.path()));
                }
                Some(OutputFile::Segment {
                    first,
                    last,
                    worker,
                }) if worker == self.worker => {
                    segments.push((first, last));
                }
                _ => {}
            }
        }
        // Left by a compaction cut short after its segment was in place.
        let covered = |e: u64| segments.iter().any(|&(f, l)| (f..=l).contains(&e));
        let (stale, mut files): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|(e, _)| covered(*e));
        for (_, path) in &stale {
            fs::remove_file(path).map_err(|e| self.fail("removing", path, e))?;
        }
        files.retain(|(e, _)| *e <= through);
        if files.len() < self.compact_after.max(2) {
            if !stale.is_empty() {
                gress_state::fsutil::sync_dir(&committed)
                    .map_err(|e| self.fail("syncing", &committed, e))?;
            }
            return Ok(());
        }
        files.sort();
        let (first, last) = (files[0].0, files[files.len() - 1].0);
        let segment = committed.join(format!("{first:020}-{last:020}-{:05}.jsonl", self.worker));
        let tmp = self.dir.join(format!("compacting-{:05}.tmp", self.worker));
        let mut out =
            BufWriter::new(File::create(&tmp).map_err(|e| self.fail("creating", &tmp, e))?);
        for (_, path) in &files {
            let mut input = File::open(path).map_err(|e| self.fail("reading", path, e))?;
            std::io::copy(&mut input, &mut out).map_err(|e| self.fail("compacting", path, e))?;
        }
        let file = out
            .into_inner()
            .map_err(|e| self.fail("writing", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| self.fail("syncing", &tmp, e))?;
        fs::rename(&tmp, &segment).map_err(|e| self.fail("renaming", &tmp, e))?;
        gress_state::fsutil::sync_dir(&committed)
            .map_err(|e| self.fail("syncing", &committed, e))?;
        for (_, path) in &files {
            fs::remove_file(path).map_err(|e| self.fail("removing", path, e))?;
        }
        gress_state::fsutil::sync_dir(&committed).map_err(|e| self.fail("syncing", &committed, e))
    }

    /// Whether this worker settles files written by `owner`: its own, and
    /// those of old workers beyond the current number (after a rescale to
    /// fewer workers).
    fn settles(&self, owner: usize) -> bool {
        owner == self.worker
            || (self.workers > 0 && owner >= self.workers && owner % self.workers == self.worker)
    }

    /// The records committed under `dir`, in epoch order (each epoch's
    /// files by worker); none if nothing was committed yet.
    pub fn read_committed<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
        let fail = |path: &Path, e: &dyn std::fmt::Display| Error::Sink {
            sink: dir.display().to_string(),
            reason: format!("reading {}: {e}", path.display()),
        };
        if !dir.join("committed").exists() {
            return Ok(Vec::new());
        }
        let mut records = Vec::new();
        let files = Self::committed_files(dir).map_err(|e| fail(dir, &e))?;
        let segments: Vec<(u64, u64, usize)> = files
            .iter()
            .filter_map(
                |f| match OutputFile::parse(&f.file_name()?.to_string_lossy())? {
                    OutputFile::Segment {
                        first,
                        last,
                        worker,
                    } => Some((first, last, worker)),
                    OutputFile::Epoch { .. } => None,
                },
            )
            .collect();
        for file in files {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            // An epoch file a segment holds already (a compaction midway).
            if let Some(OutputFile::Epoch { epoch, worker }) =
                name.as_deref().and_then(OutputFile::parse)
                && segments
                    .iter()
                    .any(|&(f, l, w)| w == worker && (f..=l).contains(&epoch))
            {
                continue;
            }
            let text = fs::read_to_string(&file).map_err(|e| fail(&file, &e))?;
            for line in text.lines() {
                records.push(serde_json::from_str(line).map_err(|e| fail(&file, &e))?);
            }
        }
        Ok(records)
    }

    /// The committed output files, in epoch order (a segment where its
    /// first epoch is).
    pub fn committed_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir.join("committed"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        Ok(files)
    }
}

/// A file under `committed/`.
enum OutputFile {
    /// One epoch of one worker: `<epoch>-<worker>.jsonl`.
    Epoch { epoch: u64, worker: usize },
    /// Compacted epochs of one worker: `<first>-<last>-<worker>.jsonl`.
    Segment {
        first: u64,
        last: u64,
        worker: usize,
    },
}

impl OutputFile {
    fn parse(name: &str) -> Option<Self> {
        let parts: Vec<&str> = name.strip_suffix(".jsonl")?.split('-').collect();
        match parts[..] {
            [epoch, worker] => Some(OutputFile::Epoch {
                epoch: epoch.parse().ok()?,
                worker: worker.parse().ok()?,
            }),
            [first, last, worker] => Some(OutputFile::Segment {
                first: first.parse().ok()?,
                last: last.parse().ok()?,
                worker: worker.parse().ok()?,
            }),
            _ => None,
        }
    }
}

impl<T: Data + Serialize> Sink<T> for FileSink {
    fn set_workers(&mut self, workers: usize) {
        self.workers = workers;
    }

    fn set_job(&mut self, job: &SinkJob) {
        self.job = Some(job.clone());
    }

    fn open(&mut self, worker: usize, committed: Option<u64>) -> Result<()> {
        self.worker = worker;
        self.claim(committed)?;
        for sub in ["pending", "committed"] {
            let d = self.dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| self.fail("creating", &d, e))?;
        }
        let pending = self.dir.join("pending");
        for entry in fs::read_dir(&pending).map_err(|e| self.fail("listing", &pending, e))? {
            let entry = entry.map_err(|e| self.fail("listing", &pending, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((epoch, owner)) = Self::parse_name(&name) else {
                continue;
            };
            if !self.settles(owner) {
                continue;
            }
            if committed.is_some_and(|c| epoch <= c) {
                self.publish(epoch, owner)?;
            } else {
                fs::remove_file(entry.path())
                    .map_err(|e| self.fail("discarding", &entry.path(), e))?;
            }
        }
        // Output of epochs after the job's newest commit belongs to no
        // commit any more (its record was lost): it is withdrawn like
        // rolled-back output, so what is committed here is what the job
        // committed.
        let after = committed.map_or(0, |c| c.saturating_add(1));
        if after < u64::MAX {
            self.withdraw(after..=u64::MAX)?;
        }
        Ok(())
    }

    fn write_epoch(&mut self, epoch: u64, records: Vec<T>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let path = self.dir.join("pending").join(self.name(epoch));
        if !self.open.contains_key(&epoch) {
            let file = File::create(&path).map_err(|e| self.fail("creating", &path, e))?;
            self.open
                .insert(epoch, BufWriter::with_capacity(1 << 16, file));
        }
        let Some(out) = self.open.get_mut(&epoch) else {
            return Ok(());
        };
        let mut failed = None;
        for record in &records {
            if let Err(e) = serde_json::to_writer(&mut *out, record)
                .map_err(|e| e.to_string())
                .and_then(|()| out.write_all(b"\n").map_err(|e| e.to_string()))
            {
                failed = Some(e);
                break;
            }
        }
        match failed {
            Some(e) => Err(self.fail("writing", &path, e)),
            None => Ok(()),
        }
    }

    fn seal_epoch(&mut self, epoch: u64) -> Result<()> {
        let path = self.dir.join("pending").join(self.name(epoch));
        let file = match self.open.remove(&epoch) {
            Some(out) => out
                .into_inner()
                .map_err(|e| self.fail("writing", &path, e.into_error()))?,
            // Nothing was written for it: no file.
            None => return Ok(()),
        };
        file.sync_all()
            .map_err(|e| self.fail("syncing", &path, e))?;
        // The file's name too: a sealed epoch survives a power loss.
        gress_state::fsutil::sync_dir(&self.dir.join("pending"))
            .map_err(|e| self.fail("syncing", &path, e))?;
        self.written.insert(epoch);
        Ok(())
    }

    fn commit(&mut self, epoch: u64) -> Result<()> {
        while let Some(&e) = self.written.first() {
            if e > epoch {
                break;
            }
            self.publish(e, self.worker)?;
            self.written.remove(&e);
        }
        Ok(())
    }

    fn retire(&mut self, through: u64) -> Result<()> {
        if self.compact_after == 0 {
            return Ok(());
        }
        self.compact(through)
    }

    fn roll_back(&mut self, epochs: std::ops::RangeInclusive<u64>) -> Result<()> {
        self.withdraw(epochs)
    }
}

/// The file naming the job a [`FileSink`]'s directory belongs to.
const JOB_FILE: &str = "JOB";

impl FileSink {
    /// Refuses a directory holding another job's output, or output no
    /// commit of this job accounts for; then records the job as its owner.
    fn claim(&self, committed: Option<u64>) -> Result<()> {
        let refuse = |reason: String| Error::Sink {
            sink: self.dir.display().to_string(),
            reason,
        };
        let path = self.dir.join(JOB_FILE);
        let owner = match fs::read_to_string(&path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.fail("reading", &path, e)),
        };
        if let (Some(owner), Some(SinkJob { id: job, .. })) = (&owner, &self.job)
            && owner != job
        {
            return Err(refuse(format!(
                "the directory holds output of job `{owner}`, not `{job}`: \
                 choose another directory, or move that output away"
            )));
        }
        let without_history = self.job.as_ref().is_some_and(|j| !j.has_history);
        if committed.is_none() && without_history {
            let epochs: Vec<u64> = match Self::committed_files(&self.dir) {
                Ok(files) => files
                    .iter()
                    .filter_map(|f| OutputFile::parse(&f.file_name()?.to_string_lossy()))
                    .map(|f| match f {
                        OutputFile::Epoch { epoch, .. } => epoch,
                        OutputFile::Segment { last, .. } => last,
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(self.fail("listing", &self.dir.join("committed"), e)),
            };
            if let Some(last) = epochs.iter().max() {
                return Err(refuse(format!(
                    "committed/ holds output up to epoch {last}, but the job has no commit \
                     record (its checkpoints were deleted, are in another location, or were \
                     never kept): that output belongs to a history that no longer exists; \
                     move it away or choose another directory"
                )));
            }
        }
        if let (None, Some(SinkJob { id: job, .. })) = (owner, &self.job) {
            fs::create_dir_all(&self.dir).map_err(|e| self.fail("creating", &self.dir, e))?;
            // Workers claim at once: each writes its own file and renames
            // it into place, so the name is never seen half written.
            let tmp = self.dir.join(format!(".{JOB_FILE}.{}.tmp", self.worker));
            let write = || -> std::io::Result<()> {
                let mut file = File::create(&tmp)?;
                file.write_all(format!("{job}\n").as_bytes())?;
                file.sync_all()
            };
            write().map_err(|e| self.fail("writing", &tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| self.fail("writing", &path, e))?;
            gress_state::fsutil::sync_dir(&self.dir)
                .map_err(|e| self.fail("syncing", &self.dir, e))?;
        }
        Ok(())
    }

    /// Moves this worker's committed epoch files of `epochs` into
    /// `rolled-back/`.
    fn withdraw(&mut self, epochs: std::ops::RangeInclusive<u64>) -> Result<()> {
        let committed = self.dir.join("committed");
        let aside = self.dir.join("rolled-back");
        let mut moved = 0;
        for entry in fs::read_dir(&committed).map_err(|e| self.fail("listing", &committed, e))? {
            let entry = entry.map_err(|e| self.fail("listing", &committed, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((epoch, owner)) = Self::parse_name(&name) else {
                continue;
            };
            if !epochs.contains(&epoch) || !self.settles(owner) {
                continue;
            }
            if moved == 0 {
                fs::create_dir_all(&aside).map_err(|e| self.fail("creating", &aside, e))?;
            }
            let to = aside.join(&name);
            fs::rename(entry.path(), &to)
                .map_err(|e| self.fail("withdrawing", &entry.path(), e))?;
            moved += 1;
        }
        if moved > 0 {
            for dir in [&committed, &aside] {
                gress_state::fsutil::sync_dir(dir).map_err(|e| self.fail("syncing", dir, e))?;
            }
            tracing::warn!(
                sink = %self.dir.display(),
                first = epochs.start(),
                last = epochs.end(),
                files = moved,
                "withdrew the output of rolled-back epochs into rolled-back/"
            );
        }
        Ok(())
    }
}
