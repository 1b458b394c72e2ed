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
}

/// Files of JSON lines: one per epoch and worker, written under
/// `pending/` and renamed into `committed/` when the epoch commits.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    worker: usize,
    /// Workers of the job now (0: not told).
    workers: usize,
    /// Epochs being written, with their pending file.
    open: std::collections::BTreeMap<u64, BufWriter<File>>,
    /// Sealed epochs not yet committed.
    written: BTreeSet<u64>,
}

impl FileSink {
    /// Output under `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSink {
            dir: dir.into(),
            worker: 0,
            workers: 0,
            open: std::collections::BTreeMap::new(),
            written: BTreeSet::new(),
        }
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

    fn publish(&self, epoch: u64, worker: usize) -> Result<()> {
        let name = Self::file_name(epoch, worker);
        let from = self.dir.join("pending").join(&name);
        let to = self.dir.join("committed").join(&name);
        if to.exists() {
            // Committed before a crash that came before the pending file
            // was gone: nothing left to do.
            let _ = fs::remove_file(&from);
            return Ok(());
        }
        fs::rename(&from, &to).map_err(|e| self.fail("committing", &from, e))?;
        gress_state::fsutil::sync_dir(&self.dir.join("committed"))
            .map_err(|e| self.fail("syncing", &to, e))
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
        for file in Self::committed_files(dir).map_err(|e| fail(dir, &e))? {
            let text = fs::read_to_string(&file).map_err(|e| fail(&file, &e))?;
            for line in text.lines() {
                records.push(serde_json::from_str(line).map_err(|e| fail(&file, &e))?);
            }
        }
        Ok(records)
    }

    /// The committed output files, in epoch order.
    pub fn committed_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir.join("committed"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        Ok(files)
    }
}

impl<T: Data + Serialize> Sink<T> for FileSink {
    fn set_workers(&mut self, workers: usize) {
        self.workers = workers;
    }

    fn open(&mut self, worker: usize, committed: Option<u64>) -> Result<()> {
        self.worker = worker;
        for sub in ["pending", "committed"] {
            let d = self.dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| self.fail("creating", &d, e))?;
        }
        let pending = self.dir.join("pending");
        for entry in fs::read_dir(&pending).map_err(|e| self.fail("listing", &pending, e))? {
            let entry = entry.map_err(|e| self.fail("listing", &pending, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((epoch, owner)) = name
                .strip_suffix(".jsonl")
                .and_then(|n| n.split_once('-'))
                .and_then(|(e, w)| Some((e.parse::<u64>().ok()?, w.parse::<usize>().ok()?)))
            else {
                continue;
            };
            // Its own files, and those of old workers beyond the current
            // number (after a rescale to fewer workers).
            let mine = owner == self.worker
                || (self.workers > 0
                    && owner >= self.workers
                    && owner % self.workers == self.worker);
            if !mine {
                continue;
            }
            if committed.is_some_and(|c| epoch <= c) {
                self.publish(epoch, owner)?;
            } else {
                fs::remove_file(entry.path())
                    .map_err(|e| self.fail("discarding", &entry.path(), e))?;
            }
        }
        Ok(())
    }

    fn write_epoch(&mut self, epoch: u64, records: Vec<T>) -> Result<()> {
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
}

/// Collects committed output in memory, across all workers of a process:
/// for tests and small jobs. Pending output lives only in the running job,
/// so an epoch committed just before a failure may be missing here (a
/// [`FileSink`] makes it visible on recovery).
#[derive(Debug)]
pub struct CollectSink<T> {
    committed: Arc<Mutex<Vec<T>>>,
    pending: Vec<(u64, Vec<T>)>,
}

impl<T> CollectSink<T> {
    /// A sink adding committed records to `into`.
    pub fn new(into: Arc<Mutex<Vec<T>>>) -> Self {
        CollectSink {
            committed: into,
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
        let mut out = self.committed.lock();
        self.pending.retain_mut(|(e, records)| {
            if *e <= epoch {
                out.append(records);
                false
            } else {
                true
            }
        });
        Ok(())
    }
}
