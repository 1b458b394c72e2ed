//! Sinks that make output visible only for committed epochs.
//!
//! A sink first writes each epoch's output as pending (durable, not
//! visible), then makes it visible when the job commits that epoch. At
//! start it is told the newest committed epoch: pending output up to it is
//! made visible (its commit may have been cut short by a crash), later
//! pending output is discarded. So after any number of crashes the visible
//! output is exactly that of the committed epochs, once.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::data::Data;
use crate::error::{Error, Result};

/// Where a job's output goes.
pub trait Sink<T>: 'static {
    /// Told, before `open`, how many workers the job runs on now. After a
    /// rescale to fewer workers, a sink that keeps output per worker also
    /// settles, at `open`, what the old workers beyond that number left
    /// pending (worker `w` takes old worker `v` when `v % workers == w`).
    fn set_workers(&mut self, workers: usize) {
        let _ = workers;
    }
    /// Told, before `open`, which job and run it writes for: a sink that
    /// keeps output across runs may refuse output of another job, or of a
    /// history the job no longer has.
    fn set_job(&mut self, job: &SinkJob) {
        let _ = job;
    }
    /// Prepares worker `worker`'s part; `committed` is the newest committed
    /// epoch of the job: make output up to it visible, discard the rest.
    fn open(&mut self, worker: usize, committed: Option<u64>) -> Result<()>;
    /// Appends `records` to the output of `epoch`, not yet visible; called
    /// as records arrive, possibly several times per epoch and for several
    /// open epochs.
    fn write_epoch(&mut self, epoch: u64, records: Vec<T>) -> Result<()>;
    /// `epoch` is complete: make what was written for it durable.
    fn seal_epoch(&mut self, epoch: u64) -> Result<()> {
        let _ = epoch;
        Ok(())
    }
    /// Makes every sealed epoch up to `epoch` visible.
    fn commit(&mut self, epoch: u64) -> Result<()>;
    /// Withdraws the output of `epochs` that earlier runs made visible: the
    /// job rolled those epochs back (it recovered from an older commit,
    /// past damaged checkpoints or as asked) and replays what followed
    /// under new epoch numbers. Called right before the first commit of the
    /// run that rolled them back, and again after every later `open` (so
    /// it must do nothing where nothing is left). A sink that cannot take
    /// output back (at-least-once) keeps it.
    fn roll_back(&mut self, epochs: std::ops::RangeInclusive<u64>) -> Result<()> {
        let _ = epochs;
        Ok(())
    }
    /// Epochs up to `through` can no longer be rolled back (they are at or
    /// before every commit the job keeps): a sink may compact their output.
    fn retire(&mut self, through: u64) -> Result<()> {
        let _ = through;
        Ok(())
    }
}

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

/// What a sink is told of the job it writes for ([`Sink::set_job`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkJob {
    /// The job's id.
    pub id: String,
    /// Whether the job has commit records (readable or not): when it has
    /// none, output committed before belongs to no history of this job.
    pub has_history: bool,
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

/// Collects committed output in memory, across all workers of a process:
/// for tests and small jobs. Pending output lives only in the running job,
/// so an epoch committed just before a failure may be missing here (a
/// [`FileSink`] makes it visible on recovery).
///
/// It adds to a [`Collected`] handle, or to an `Arc<std::sync::Mutex<Vec<T>>>`
/// the caller keeps:
///
/// ```
/// use gress_stream::{CollectSink, Collected};
/// let out: Collected<u64> = Collected::new();
/// let sink = CollectSink::new(&out); // one per worker, in the job's build
/// # drop(sink);
/// assert!(out.records().is_empty());
/// ```
#[derive(Debug)]
pub struct CollectSink<T> {
    committed: Collected<T>,
    pending: Vec<(u64, Vec<T>)>,
}

/// The records [`CollectSink`]s committed; clones share them.
#[derive(Debug)]
pub struct Collected<T>(Target<T>);

#[derive(Debug)]
enum Target<T> {
    Std(Arc<std::sync::Mutex<Vec<T>>>),
    Fast(Arc<Mutex<Vec<T>>>),
}

impl<T> Clone for Collected<T> {
    fn clone(&self) -> Self {
        Collected(match &self.0 {
            Target::Std(m) => Target::Std(Arc::clone(m)),
            Target::Fast(m) => Target::Fast(Arc::clone(m)),
        })
    }
}

impl<T> Default for Collected<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Collected<T> {
    /// Nothing collected yet.
    pub fn new() -> Self {
        Collected(Target::Std(Arc::default()))
    }

    /// Runs `f` on the records, locked.
    pub fn with<R>(&self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        match &self.0 {
            // A panic while the lock was held leaves whole records behind.
            Target::Std(m) => f(&mut m.lock().unwrap_or_else(|p| p.into_inner())),
            Target::Fast(m) => f(&mut m.lock()),
        }
    }

    /// A copy of the records committed so far, in commit order.
    pub fn records(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.with(|r| r.clone())
    }

    /// Takes the records committed so far, leaving none.
    pub fn take(&self) -> Vec<T> {
        self.with(std::mem::take)
    }

    /// How many records were committed.
    pub fn len(&self) -> usize {
        self.with(|r| r.len())
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> From<&Collected<T>> for Collected<T> {
    fn from(handle: &Collected<T>) -> Self {
        handle.clone()
    }
}

impl<T> From<Arc<std::sync::Mutex<Vec<T>>>> for Collected<T> {
    fn from(into: Arc<std::sync::Mutex<Vec<T>>>) -> Self {
        Collected(Target::Std(into))
    }
}

impl<T> From<&Arc<std::sync::Mutex<Vec<T>>>> for Collected<T> {
    fn from(into: &Arc<std::sync::Mutex<Vec<T>>>) -> Self {
        Collected(Target::Std(Arc::clone(into)))
    }
}

impl<T> From<Arc<Mutex<Vec<T>>>> for Collected<T> {
    fn from(into: Arc<Mutex<Vec<T>>>) -> Self {
        Collected(Target::Fast(into))
    }
}

impl<T> CollectSink<T> {
    /// A sink adding committed records to `into`: a [`Collected`] (or a
    /// reference to one), or an `Arc<std::sync::Mutex<Vec<T>>>`.
    pub fn new(into: impl Into<Collected<T>>) -> Self {
        CollectSink {
            committed: into.into(),
            pending: Vec::new(),
        }
    }
}

impl<T: Data> Sink<T> for CollectSink<T> {
    fn open(&mut self, _worker: usize, _committed: Option<u64>) -> Result<()> {
        Ok(())
    }

    fn write_epoch(&mut self, epoch: u64, records: Vec<T>) -> Result<()> {
        self.pending.push((epoch, records));
        Ok(())
    }

    fn commit(&mut self, epoch: u64) -> Result<()> {
        let pending = &mut self.pending;
        self.committed.with(|out| {
            pending.retain_mut(|(e, records)| {
                if *e <= epoch {
                    out.append(records);
                    false
                } else {
                    true
                }
            });
        });
        Ok(())
    }
}

/// Files of JSON lines like [`FileSink`]'s, in one directory per partition
/// of the output (Hive style, e.g. `dt=2026-01-01/hm=10:05`): each
/// record goes to the partition `partition(record)` names, a relative
/// path. Each partition directory has its own `pending/` and
/// `committed/`, settled as a [`FileSink`] settles its directory; a
/// partition's directory is created with its first record.
pub struct PartitionedFileSink<T> {
    dir: PathBuf,
    partition: Arc<dyn Fn(&T) -> String>,
    parts: std::collections::BTreeMap<String, FileSink>,
    job: Option<SinkJob>,
    worker: usize,
    workers: usize,
    committed: Option<u64>,
}

impl<T> std::fmt::Debug for PartitionedFileSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedFileSink")
            .field("dir", &self.dir)
            .field("partitions", &self.parts.len())
            .finish_non_exhaustive()
    }
}

/// The directories of a partitioned sink's output that are partitions
/// (hold `pending/` or `committed/`), as paths relative to `dir`.
fn partitions_under(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let here = dir.join(&rel);
        if here.join("pending").is_dir() || here.join("committed").is_dir() {
            found.push(rel.to_string_lossy().into_owned());
            continue;
        }
        let entries = match fs::read_dir(&here) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                todo.push(rel.join(entry.file_name()));
            }
        }
    }
    found.sort();
    Ok(found)
}

impl<T: Data + Serialize> PartitionedFileSink<T> {
    /// Output under `dir`, partitioned by `partition`.
    pub fn new(dir: impl Into<PathBuf>, partition: impl Fn(&T) -> String + 'static) -> Self {
        PartitionedFileSink {
            dir: dir.into(),
            partition: Arc::new(partition),
            parts: std::collections::BTreeMap::new(),
            job: None,
            worker: 0,
            workers: 0,
            committed: None,
        }
    }

    /// The committed records of every partition under `dir`, by partition.
    pub fn read_committed(dir: &Path) -> Result<std::collections::BTreeMap<String, Vec<T>>>
    where
        T: serde::de::DeserializeOwned,
    {
        let parts = partitions_under(dir).map_err(|e| Error::Sink {
            sink: dir.display().to_string(),
            reason: format!("listing partitions: {e}"),
        })?;
        let mut out = std::collections::BTreeMap::new();
        for part in parts {
            let records = FileSink::read_committed(&dir.join(&part))?;
            if !records.is_empty() {
                out.insert(part, records);
            }
        }
        Ok(out)
    }

    /// The partition's sink, opened with its first use.
    fn part(&mut self, name: &str) -> Result<&mut FileSink> {
        if !self.parts.contains_key(name) {
            let valid = !name.is_empty()
                && Path::new(name).components().all(|c| {
                    matches!(c, std::path::Component::Normal(s)
                        if !["pending", "committed", "rolled-back"].contains(&&*s.to_string_lossy()))
                });
            if !valid {
                return Err(Error::Sink {
                    sink: self.dir.display().to_string(),
                    reason: format!(
                        "partition {name:?} is not a relative path of plain names \
                         (none of them pending, committed or rolled-back)"
                    ),
                });
            }
            let mut sink = FileSink::new(self.dir.join(name));
            Sink::<T>::set_workers(&mut sink, self.workers);
            if let Some(job) = &self.job {
                Sink::<T>::set_job(&mut sink, job);
            }
            Sink::<T>::open(&mut sink, self.worker, self.committed)?;
            self.parts.insert(name.to_string(), sink);
        }
        self.parts.get_mut(name).ok_or_else(|| Error::Sink {
            sink: self.dir.display().to_string(),
            reason: format!("partition {name} vanished"),
        })
    }
}

impl<T: Data + Serialize> Sink<T> for PartitionedFileSink<T> {
    fn set_workers(&mut self, workers: usize) {
        self.workers = workers;
    }

    fn set_job(&mut self, job: &SinkJob) {
        self.job = Some(job.clone());
    }

    fn open(&mut self, worker: usize, committed: Option<u64>) -> Result<()> {
        self.worker = worker;
        self.committed = committed;
        self.parts.clear();
        let parts = partitions_under(&self.dir).map_err(|e| Error::Sink {
            sink: self.dir.display().to_string(),
            reason: format!("listing partitions: {e}"),
        })?;
        for part in parts {
            self.part(&part)?;
        }
        Ok(())
    }

    fn write_epoch(&mut self, epoch: u64, records: Vec<T>) -> Result<()> {
        let mut by_part: std::collections::BTreeMap<String, Vec<T>> =
            std::collections::BTreeMap::new();
        for r in records {
            by_part.entry((self.partition)(&r)).or_default().push(r);
        }
        for (part, records) in by_part {
            self.part(&part)?.write_epoch(epoch, records)?;
        }
        Ok(())
    }

    fn seal_epoch(&mut self, epoch: u64) -> Result<()> {
        for sink in self.parts.values_mut() {
            Sink::<T>::seal_epoch(sink, epoch)?;
        }
        Ok(())
    }

    fn commit(&mut self, epoch: u64) -> Result<()> {
        self.committed = Some(epoch);
        for sink in self.parts.values_mut() {
            Sink::<T>::commit(sink, epoch)?;
        }
        Ok(())
    }

    fn roll_back(&mut self, epochs: std::ops::RangeInclusive<u64>) -> Result<()> {
        for sink in self.parts.values_mut() {
            Sink::<T>::roll_back(sink, epochs.clone())?;
        }
        Ok(())
    }

    fn retire(&mut self, through: u64) -> Result<()> {
        for sink in self.parts.values_mut() {
            Sink::<T>::retire(sink, through)?;
        }
        Ok(())
    }
}
