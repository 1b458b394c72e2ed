//! Operating a running job: [`start`] runs it in the background and returns
//! a [`JobHandle`] that reports its [`JobStatus`], stops it at an epoch
//! boundary, drains it, or waits for it; a [`crate::RestartPolicy`]
//! recovers a failed job in the same process from its newest committed
//! epoch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crate::builder::JobBuilder;
use crate::config::JobConfig;
use crate::control::{Control, JobState, JobStatus, Mode};
use crate::error::{Error, Result};
use crate::run::{JobReport, run};

/// Whether a failure may go away by recovering: not a job that is built or
/// configured wrong, nor one whose checkpoints cannot continue it.
fn restartable(e: &Error) -> bool {
    !matches!(e, Error::InvalidJob { .. } | Error::Recovery { .. })
}

/// A job running in the background, started with [`start`].
#[derive(Debug)]
pub struct JobHandle {
    control: Arc<Control>,
    config: Arc<JobConfig>,
    thread: Option<JoinHandle<Result<JobReport>>>,
}

/// Runs a job in the background, as [`run`] does, and returns its handle
/// at once. A failure is recovered in this process, from the newest
/// committed epoch, as the config's [`crate::RestartPolicy`] allows
/// ([`JobConfig::with_restart`]).
///
/// A job whose sources all ended and whose last epoch is committed is
/// finished: started again, it reads nothing, commits nothing, and its
/// status says [`JobState::Finished`] (`run` returns its report with
/// `already_finished` set).
pub fn start<F>(config: JobConfig, build: F) -> Result<JobHandle>
where
    F: Fn(&mut JobBuilder<'_>) -> Result<()> + Send + Sync + 'static,
{
    config.validate()?;
    let control = Arc::new(Control::default());
    let mut config = config;
    config.control = Arc::clone(&control);
    if let Some(addr) = config.prometheus_addr()? {
        let endpoint = crate::telemetry::serve_prometheus(addr)?;
        tracing::info!(job = %config.job_id, url = %endpoint.url(), "serving metrics");
        config.prometheus = None;
    }
    let config = Arc::new(config);
    crate::status::serve(&config);
    let build = Arc::new(build);
    let (thread_control, thread_config) = (Arc::clone(&control), Arc::clone(&config));
    let thread = std::thread::Builder::new()
        .name(format!("gress-job-{}", config.job_id))
        .spawn(move || supervise(&thread_control, &thread_config, &build))
        .map_err(|e| Error::Worker(format!("could not start the job's thread: {e}")))?;
    Ok(JobHandle {
        control,
        config,
        thread: Some(thread),
    })
}

/// Runs the job, and again after each failure the policy allows.
fn supervise<F>(control: &Control, config: &Arc<JobConfig>, build: &Arc<F>) -> Result<JobReport>
where
    F: Fn(&mut JobBuilder<'_>) -> Result<()> + Send + Sync + 'static,
{
    let mut in_a_row = 0u32;
    loop {
        control.set_state(JobState::Running);
        let each = Arc::clone(build);
        let result = run(JobConfig::clone(config), move |job| each(job));
        let error = match result {
            Ok(report) => {
                control.set_state(match control.mode() {
                    Mode::Stop => JobState::Stopped,
                    _ => JobState::Finished,
                });
                return Ok(report);
            }
            Err(e) => e,
        };
        in_a_row += 1;
        let delay = config.restart.delay(in_a_row);
        match delay {
            Some(delay) if restartable(&error) && control.mode() == Mode::Run => {
                let why = error.to_string();
                tracing::warn!(
                    job = %config.job_id,
                    restart = in_a_row,
                    after_ms = delay.as_millis() as u64,
                    error = %why,
                    "the job failed; recovering from its newest committed epoch"
                );
                control.set_state(JobState::Recovering(why));
                control.restarts.fetch_add(1, Ordering::AcqRel);
                control.sleep(delay);
                if control.mode() != Mode::Run {
                    // Asked to stop while waiting: what is committed stays.
                    control.set_state(JobState::Stopped);
                    return Err(error);
                }
            }
            _ => {
                control.set_state(JobState::Failed(error.to_string()));
                return Err(error);
            }
        }
    }
}

impl JobHandle {
    /// Where the job is, its newest committed epoch and each of this
    /// process's workers' numbers.
    pub fn status(&self) -> JobStatus {
        crate::status::status_of(&self.control, &self.config)
    }

    /// Whether the job has ended (finished, stopped or failed for good).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the job: its sources close the epoch they are reading as the
    /// last one, what is in flight is committed, and the report returned.
    /// The sources' offsets are committed with it: a later run of the job
    /// resumes where it stopped, with no record lost or repeated.
    /// Watermarks do not advance to the end, so windows still open stay
    /// open for that run.
    pub fn stop(mut self) -> Result<JobReport> {
        self.control.ask(Mode::Stop);
        self.join()
    }

    /// Stops the job as [`stop`](JobHandle::stop) does, then writes a
    /// savepoint of its last committed epoch to `location` (a local
    /// directory or an S3 prefix, which must not exist or be empty): every
    /// worker's state in the snapshot format every backend restores, with
    /// the sources' offsets, the operators' watermarks and the names of its
    /// operators and states. [`JobConfig::from_savepoint`] starts a job from
    /// it, with another number of workers or another backend. The report's
    /// `savepoint` says what was written.
    ///
    /// A location that cannot be used is refused before anything is asked
    /// of the job, which then goes on running. If writing fails, the job is
    /// still stopped at its committed epoch (a later run resumes from its
    /// checkpoints) and the error says why.
    pub fn stop_with_savepoint(
        &mut self,
        location: impl Into<crate::config::CheckpointStorage>,
    ) -> Result<JobReport> {
        let location = location.into();
        if self.config.checkpoints.is_none() {
            return Err(Error::invalid(
                "savepoint",
                "a savepoint is of a committed epoch: the job needs checkpoints (with_checkpoints)",
            ));
        }
        if self.thread.is_none() {
            return Err(Error::Worker("the job was already joined".into()));
        }
        crate::savepoint::check_unused(&location)?;
        self.control.ask_savepoint(location);
        self.control.ask(Mode::Stop);
        let report = self.join()?;
        // Worker 0, which completes the savepoint, runs in process 0.
        if report.savepoint.is_none() && self.config.process == 0 {
            return Err(Error::invalid(
                "savepoint",
                format!(
                    "the job ended before the savepoint was asked for (its newest committed \
                     epoch is {:?}); write one from its checkpoints with `gress job savepoint`",
                    report.last_committed
                ),
            ));
        }
        Ok(report)
    }

    /// Drains the job: its sources read until every partition has ended or
    /// has nothing more to read now, then the input ends (watermarks go to
    /// the end, so every window and event-time timer fires) and the last
    /// epoch is committed. Bounded sources run to their end; a partition
    /// that always has records keeps the job running (use
    /// [`stop`](JobHandle::stop) for those).
    pub fn drain(mut self) -> Result<JobReport> {
        self.control.ask(Mode::Drain);
        self.join()
    }

    /// Waits for the job to end by itself.
    pub fn wait(mut self) -> Result<JobReport> {
        self.join()
    }

    fn join(&mut self) -> Result<JobReport> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| Error::Worker("the job's thread panicked".into()))?,
            None => Err(Error::Worker("the job was already joined".into())),
        }
    }
}

impl Drop for JobHandle {
    /// A handle dropped without `stop`, `drain` or `wait` stops the job
    /// and waits for it.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.control.ask(Mode::Stop);
            let _ = self.join();
        }
    }
}
