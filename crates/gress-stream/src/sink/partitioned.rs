//! [`PartitionedFileSink`]: a [`FileSink`] per partition directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::data::Data;
use crate::error::{Error, Result};

use super::{FileSink, Sink, SinkJob};

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
