//! What a running job shares with its handle: the stop or drain request
//! its sources read, and the status its workers report
//! ([`JobStatus`]); and the [`RestartPolicy`] a handle applies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

/// What to do when a job started with [`crate::start`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Fail for good at the first failure (the default).
    #[default]
    Never,
    /// Restart up to `attempts` times in a row, `delay` apart.
    FixedDelay {
        /// Restarts at most, in a row.
        attempts: u32,
        /// Wait before each.
        delay: Duration,
    },
    /// Restart up to `attempts` times in a row, waiting `initial` before
    /// the first and twice as long before each next one, at most `max`.
    ExponentialBackoff {
        /// Restarts at most, in a row.
        attempts: u32,
        /// Wait before the first restart.
        initial: Duration,
        /// The longest wait.
        max: Duration,
    },
}

impl RestartPolicy {
    /// The wait before restart number `n` (1-based), or `None` when the
    /// policy allows no more.
    pub fn delay(&self, n: u32) -> Option<Duration> {
        match *self {
            RestartPolicy::Never => None,
            RestartPolicy::FixedDelay { attempts, delay } => (n <= attempts).then_some(delay),
            RestartPolicy::ExponentialBackoff {
                attempts,
                initial,
                max,
            } => (n <= attempts).then(|| {
                let factor = 2u32.saturating_pow(n.saturating_sub(1));
                initial.saturating_mul(factor).min(max)
            }),
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "error")]
pub enum JobState {
    /// Processing records.
    Running,
    /// Failed, and waiting to recover under its [`RestartPolicy`].
    Recovering(String),
    /// Stopping at an epoch boundary ([`JobHandle::stop`] or
    /// [`JobHandle::drain`]).
    Stopping,
    /// Every source ended and the last epoch is committed.
    Finished,
    /// Stopped at an epoch boundary, committed: a later run resumes it.
    Stopped,
    /// Failed for good: the error.
    Failed(String),
}

/// One worker's part of a job's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    /// The worker's index in the job.
    pub worker: usize,
    /// The newest epoch committed, as this worker learned it.
    pub committed_epoch: Option<u64>,
    /// Epochs its sources opened that are not committed yet.
    pub epochs_in_flight: u64,
    /// Records read by its sources.
    pub records_read: u64,
    /// Records applied by its keyed operators.
    pub records_in: u64,
    /// Records written to its sinks.
    pub records_out: u64,
    /// The newest epoch it cut.
    pub cut_epoch: Option<u64>,
    /// As of `cut_epoch`: each source partition's offset
    /// (`offset/<source>/<partition>`), its newest event time
    /// (`maxtime/...`), and each event-time operator's watermark
    /// (`watermark/<operator>`, `end of input` once the input ended).
    pub positions: BTreeMap<String, String>,
    /// The newest checkpoint it stored: its epoch, how long it took from
    /// the cut to its manifest (ms), and the bytes it wrote.
    pub last_checkpoint: Option<CheckpointStatus>,
}

/// A worker's newest stored checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckpointStatus {
    /// The epoch it belongs to.
    pub epoch: u64,
    /// From the cut to the published manifest, ms.
    pub duration_ms: u64,
    /// Bytes written for it (new files only).
    pub bytes_written: u64,
}

/// A job's status: what [`JobHandle::status`] returns and `/status`
/// serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobStatus {
    /// The job's id.
    pub job_id: String,
    /// Where it is.
    #[serde(flatten)]
    pub state: JobState,
    /// Processes of the job, and this one's index.
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// Workers of the job, over all processes.
    pub workers: usize,
    /// The newest committed epoch this process knows of.
    pub committed_epoch: Option<u64>,
    /// When this process learned of it, ms since the UNIX epoch.
    pub committed_at_ms: Option<u64>,
    /// Restarts under the restart policy so far.
    pub restarts: u32,
    /// This process's workers.
    pub worker_status: Vec<WorkerStatus>,
    /// The savepoint asked for with the stop, once written or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<SavepointStatus>,
}

/// A savepoint a stop was asked to write, as the status tells of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavepointStatus {
    /// Where it goes.
    pub location: String,
    /// `pending`, `written` or `failed`.
    pub state: &'static str,
    /// The committed epoch it holds, once written.
    pub epoch: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// How a job's sources are asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Read on.
    Run,
    /// Close the current epoch as the last; the job can resume later.
    Stop,
    /// Read what is there, then end the input (watermarks to the end).
    Drain,
}

/// Shared by a running job's workers and its handle.
#[derive(Debug)]
pub(crate) struct Control {
    mode: AtomicU8,
    pub(crate) restarts: AtomicU32,
    state: Mutex<JobState>,
    workers: Mutex<BTreeMap<usize, WorkerStatus>>,
    committed_at_ms: Mutex<(Option<u64>, Option<u64>)>,
    wake: Condvar,
    wake_lock: Mutex<()>,
    /// Where a stop writes its savepoint, if asked for one.
    savepoint: Mutex<Option<crate::location::CheckpointStorage>>,
    /// What became of it.
    savepoint_status: Mutex<Option<SavepointStatus>>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            mode: AtomicU8::new(0),
            restarts: AtomicU32::new(0),
            state: Mutex::new(JobState::Running),
            workers: Mutex::new(BTreeMap::new()),
            committed_at_ms: Mutex::new((None, None)),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            savepoint: Mutex::new(None),
            savepoint_status: Mutex::new(None),
        }
    }
}

impl Control {
    pub(crate) fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            0 => Mode::Run,
            1 => Mode::Stop,
            _ => Mode::Drain,
        }
    }

    /// Asks the run to write a savepoint to `location` once its last epoch
    /// is committed.
    pub(crate) fn ask_savepoint(&self, location: crate::location::CheckpointStorage) {
        *self.savepoint_status.lock() = Some(SavepointStatus {
            location: location.describe(),
            state: "pending",
            epoch: None,
            error: None,
        });
        *self.savepoint.lock() = Some(location);
    }

    /// Records what became of the savepoint asked for.
    pub(crate) fn savepoint_done(&self, result: std::result::Result<u64, String>) {
        if let Some(status) = &mut *self.savepoint_status.lock() {
            match result {
                Ok(epoch) => {
                    status.state = "written";
                    status.epoch = Some(epoch);
                }
                Err(why) => {
                    status.state = "failed";
                    status.error = Some(why);
                }
            }
        }
    }

    /// Where the savepoint goes, if one was asked for.
    pub(crate) fn savepoint(&self) -> Option<crate::location::CheckpointStorage> {
        self.savepoint.lock().clone()
    }

    pub(crate) fn ask(&self, mode: Mode) {
        let value = match mode {
            Mode::Run => 0,
            Mode::Stop => 1,
            Mode::Drain => 2,
        };
        // Stop wins over drain: never from stopping back to reading.
        self.mode.fetch_max(value, Ordering::AcqRel);
        let _held = self.wake_lock.lock();
        self.wake.notify_all();
    }

    /// A worker's latest numbers.
    pub(crate) fn report(&self, status: WorkerStatus) {
        if let Some(epoch) = status.committed_epoch {
            let mut at = self.committed_at_ms.lock();
            if at.0.is_none_or(|e| e < epoch) {
                *at = (Some(epoch), Some(now_ms()));
            }
        }
        self.workers.lock().insert(status.worker, status);
    }

    pub(crate) fn set_state(&self, state: JobState) {
        *self.state.lock() = state;
    }

    /// Waits up to `delay`, or until asked to stop.
    pub(crate) fn sleep(&self, delay: Duration) {
        let mut held = self.wake_lock.lock();
        if self.mode() == Mode::Run {
            self.wake.wait_for(&mut held, delay);
        }
    }

    /// The status of job `job_id`, running as process `process` of
    /// `processes` with `workers` workers in all.
    pub(crate) fn status(
        &self,
        job_id: &str,
        (process, processes): (usize, usize),
        workers: usize,
    ) -> JobStatus {
        let worker_status: Vec<WorkerStatus> = self.workers.lock().values().cloned().collect();
        let (committed_epoch, committed_at_ms) = *self.committed_at_ms.lock();
        JobStatus {
            job_id: job_id.to_string(),
            state: match self.state.lock().clone() {
                JobState::Running if self.mode() != Mode::Run => JobState::Stopping,
                state => state,
            },
            processes,
            process,
            workers,
            committed_epoch,
            committed_at_ms,
            restarts: self.restarts.load(Ordering::Acquire),
            worker_status,
            savepoint: self.savepoint_status.lock().clone(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_wait_as_configured() {
        let fixed = RestartPolicy::FixedDelay {
            attempts: 2,
            delay: Duration::from_millis(10),
        };
        assert_eq!(fixed.delay(1), Some(Duration::from_millis(10)));
        assert_eq!(fixed.delay(2), Some(Duration::from_millis(10)));
        assert_eq!(fixed.delay(3), None);
        let backoff = RestartPolicy::ExponentialBackoff {
            attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let waits: Vec<_> = (1..=6).map(|n| backoff.delay(n)).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 500, 500]
                .map(|ms| Some(Duration::from_millis(ms)))
                .into_iter()
                .chain([None])
                .collect::<Vec<_>>()
        );
        assert_eq!(RestartPolicy::Never.delay(1), None);
    }
}
