//! Sinks that make output visible only for committed epochs.
//!
//! A sink first writes each epoch's output as pending (durable, not
//! visible), then makes it visible when the job commits that epoch. At
//! start it is told the newest committed epoch: pending output up to it is
//! made visible (its commit may have been cut short by a crash), later
//! pending output is discarded. So after any number of crashes the visible
//! output is exactly that of the committed epochs, once.

mod collect;
mod file;
mod partitioned;

use crate::error::Result;

pub use collect::{CollectSink, Collected};
pub use file::FileSink;
pub use partitioned::PartitionedFileSink;

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

/// What a sink is told of the job it writes for ([`Sink::set_job`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkJob {
    /// The job's id.
    pub id: String,
    /// Whether the job has commit records (readable or not): when it has
    /// none, output committed before belongs to no history of this job.
    pub has_history: bool,
}
