//! [`CollectSink`]: committed output collected in memory.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::data::Data;
use crate::error::Result;

use super::Sink;

/// Collects committed output in memory, across all workers of a process:
/// for tests and small jobs. Pending output lives only in the running job,
/// so an epoch committed just before a failure may be missing here (a
/// [`FileSink`](super::FileSink) makes it visible on recovery).
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
