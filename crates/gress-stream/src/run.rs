//! Running a job: timely's workers, each recovering its state and then
//! stepping its dataflow until the job ends or fails.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::builder::JobBuilder;
use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::history::History;
use crate::recovery::{Recovered, check, clear, recover};
use crate::state::StateStore;
use crate::telemetry::MetricsPublisher;
use crate::worker::{Shared, WorkerState, upload_thread};

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobReport {
    /// The newest epoch committed when the run ended.
    pub last_committed: Option<u64>,
    /// The committed epoch the run recovered from.
    pub recovered_from: Option<u64>,
    /// Records applied by keyed operators, over this process's workers.
    pub records_in: u64,
    /// Records written to sinks, over this process's workers.
    pub records_out: u64,
    /// Epochs whose state was cut, per worker summed.
    pub epochs_cut: u64,
    /// Time from start to end.
    pub elapsed: Duration,
    /// The job had finished before this run: it recovered from a commit
    /// after which its sources had nothing left to read.
    pub already_finished: bool,
    /// What each worker's checkpoint of each epoch cost, this process's
    /// workers.
    pub checkpoints: Vec<crate::worker::EpochCheckpoint>,
    /// The state caches of this process's workers, together (the peak is
    /// the largest one worker's cache held).
    pub cache: crate::state::CacheStats,
    /// The savepoint written when the run ended
    /// ([`JobHandle::stop_with_savepoint`](crate::JobHandle::stop_with_savepoint)),
    /// in the process of the job's worker 0.
    pub savepoint: Option<crate::savepoint::SavepointInfo>,
    /// The epoch of the savepoint this run started from, if it did.
    pub from_savepoint: Option<u64>,
}

/// Runs a job: `build` is called on every worker to build the same
/// dataflow. With checkpoints configured, the job first recovers from the
/// newest committed epoch whose checkpoints are all intact (state, source
/// offsets, sink output), then commits an epoch at a time; finite sources
/// end the job once their last epoch is committed.
///
/// A run that cannot continue the job (its checkpoints belong to another
/// job id or number of key groups, or the epoch asked for is not retained)
/// is refused before anything is written.
pub fn run<F>(config: JobConfig, build: F) -> Result<JobReport>
where
    F: Fn(&mut JobBuilder<'_>) -> Result<()> + Send + Sync + 'static,
{
    config.validate()?;
    // Read-only: refuse a run that cannot continue the job before any
    // location is taken or anything deleted.
    if let Some(storage) = &config.checkpoints {
        let history = History::read(&*storage.open("")?)?;
        check(&history, &config, config.total_workers())?;
        if let Some(location) = &config.savepoint
            && history.newest_valid().is_none()
        {
            let info = crate::savepoint::read(location)?;
            crate::recovery::check_savepoint(&info, &config, config.total_workers())?;
        }
    } else if config.savepoint.is_some() {
        return Err(Error::invalid(
            "savepoint",
            "starting from a savepoint needs checkpoints (with_checkpoints): the job's state \
             is restored through its checkpoint manager",
        ));
    }
    if let Some(addr) = config.prometheus_addr()? {
        let endpoint = crate::telemetry::serve_prometheus(addr)?;
        tracing::info!(
            job = %config.job_id,
            metrics = %endpoint.url(),
            status = %format!("http://{}/status", endpoint.addr()),
            "serving metrics and status"
        );
    }
    crate::telemetry::describe();
    gress_checkpoint::telemetry::describe();
    let publisher = Arc::new(MetricsPublisher::new(config.metrics_interval)?);
    let (allocators, guard) = allocators(&config)?;
    let started = Instant::now();
    let abort = Arc::new(AtomicBool::new(false));
    let config = Arc::new(config);
    crate::status::serve(&config);
    let (control, job_id) = (Arc::clone(&config.control), config.job_id.clone());
    let build = Arc::new(build);
    let worker_abort = Arc::clone(&abort);
    let worker_publisher = Arc::clone(&publisher);
    let guards = timely::execute::execute_from(
        allocators,
        guard,
        timely::WorkerConfig::default(),
        move |worker| {
            // A panic in a user operator unwinds this thread: tell the others.
            let _on_panic = AbortOnPanic(&worker_abort);
            let result = run_worker(worker, &config, &*build, &worker_abort, &worker_publisher);
            if result.is_err() {
                worker_abort.store(true, Ordering::Release);
                // Timely steps a worker until its dataflows finish; a failed
                // job's never would.
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
            }
            result
        },
    )
    .map_err(Error::Worker)?;
    let mut report = JobReport::default();
    let mut records_read = 0;
    // The cause, rather than the workers that stopped because of it.
    let mut cause = None;
    let mut stopped = None;
    for outcome in guards.join() {
        match outcome {
            Ok(Ok(w)) => {
                report.records_in += w.records_in;
                records_read += w.records_read;
                report.records_out += w.records_out;
                report.epochs_cut += w.epochs_cut;
                report.last_committed = report.last_committed.max(w.last_committed);
                report.recovered_from = w.recovered_from;
                report.from_savepoint = w.from_savepoint;
                if w.savepoint.is_some() {
                    report.savepoint = w.savepoint;
                }
                report.checkpoints.extend(w.checkpoints);
                report.cache.add(&w.cache);
            }
            Ok(Err(e)) if e.to_string().contains(STOPPED) => {
                stopped.get_or_insert(e);
            }
            Ok(Err(e)) => {
                cause.get_or_insert(e);
            }
            Err(panic) => {
                cause.get_or_insert(Error::Worker(format!("a worker panicked: {panic}")));
            }
        }
    }
    if let Some(e) = cause.or(stopped) {
        if control.savepoint().is_some() {
            control.savepoint_done(Err(crate::worker::error_chain(&e)));
        }
        return Err(e);
    }
    report.elapsed = started.elapsed();
    if let Some(info) = &report.savepoint {
        control.savepoint_done(Ok(info.epoch));
    }
    control.set_state(match control.mode() {
        crate::control::Mode::Stop => crate::control::JobState::Stopped,
        _ => crate::control::JobState::Finished,
    });
    if let Some(epoch) = report.recovered_from
        && records_read == 0
        && control.mode() == crate::control::Mode::Run
    {
        report.already_finished = true;
        tracing::info!(
            job = %job_id,
            epoch,
            "the job had already finished: its sources have nothing after committed epoch {epoch}"
        );
    }
    Ok(report)
}

const STOPPED: &str = "stopped because another worker failed";

/// Timely's communication for this process: threads, and in a job of
/// several processes a connection to each of the others, made here with
/// the job's connect timeout.
fn allocators(
    config: &JobConfig,
) -> Result<(
    Vec<timely::communication::AllocatorBuilder>,
    Box<dyn std::any::Any + Send>,
)> {
    use timely::communication::allocator::ProcessBuilder;
    use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;

    if config.hosts.is_empty() {
        let communication = if config.workers > 1 {
            timely::CommunicationConfig::Process(config.workers)
        } else {
            timely::CommunicationConfig::Thread
        };
        return communication.try_build().map_err(Error::Worker);
    }
    let sockets = crate::cluster::connect(&config.hosts, config.process, config.connect_timeout)?;
    let hooks = timely::communication::Hooks::default();
    let local =
        ProcessBuilder::new_typed_vector(config.workers, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) =
        initialize_networking_from_sockets(local, sockets, config.process, config.workers, hooks)
            .map_err(|e| Error::Worker(format!("could not start networking: {e}")))?;
    Ok((
        builders
            .into_iter()
            .map(timely::communication::AllocatorBuilder::Tcp)
            .collect(),
        Box::new(guard),
    ))
}

/// Sets the abort flag if the worker's thread unwinds.
struct AbortOnPanic<'a>(&'a AtomicBool);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// How often a worker gives its cache time for background work.
const IDLE_WORK_EVERY: Duration = Duration::from_millis(50);

/// One worker's part of a run.
struct WorkerReport {
    cache: crate::state::CacheStats,
    checkpoints: Vec<crate::worker::EpochCheckpoint>,
    records_read: u64,
    records_in: u64,
    records_out: u64,
    epochs_cut: u64,
    last_committed: Option<u64>,
    recovered_from: Option<u64>,
    from_savepoint: Option<u64>,
    savepoint: Option<crate::savepoint::SavepointInfo>,
}

fn run_worker<F>(
    worker: &mut timely::worker::Worker,
    config: &Arc<JobConfig>,
    build: &F,
    abort: &AtomicBool,
    publisher: &MetricsPublisher,
) -> Result<WorkerReport>
where
    F: Fn(&mut JobBuilder<'_>) -> Result<()>,
{
    let index = worker.index();
    let peers = worker.peers();
    let (_, backend_bytes) = config.memory_split(false);
    let backend = config.backend.make(index, &config.clock, backend_bytes)?;
    let (cache_bytes, _) = config.memory_split(backend.keeps_state_in_memory());
    if let Some(ttl) = backend.default_ttl() {
        return Err(Error::invalid(
            "backend",
            format!(
                "worker {index}'s backend gives every value a default TTL of {ttl:?}, so timers \
                 and window state would expire with it; open it without a default TTL and give \
                 states that should expire a StateTtl"
            ),
        ));
    }
    let backend_label = format!("{}/{index}", config.job_id);
    publisher.register(backend_label.clone(), &backend)?;
    let slot: Arc<Mutex<Option<timely::scheduling::SyncActivator>>> = Arc::new(Mutex::new(None));
    let (checkpoints, recovered, root, hot) = match &config.checkpoints {
        None => {
            clear(&*backend)?;
            (None, Recovered::default(), None, None)
        }
        Some(storage) => {
            // The cache's part of the worker's checkpoints.
            let hot = Arc::new(crate::state::HotImage::new(
                config.local_dir.as_deref(),
                Arc::clone(&config.clock),
                config.checkpoint.max_deltas,
                config.checkpoint.max_delta_ratio,
            )?);
            let (manager, recovered) = recover(worker, abort, config, storage, &backend, &hot)?;
            let checkpoints = upload_thread(index, Arc::clone(&slot), Arc::clone(&manager));
            (
                Some((checkpoints, manager)),
                recovered,
                Some(storage.open("")?),
                Some(hot),
            )
        }
    };
    let Recovered {
        commit,
        metadata,
        history,
        committed,
        first_epoch,
        rolls_back,
        rolled_back,
        kept,
        from_savepoint,
    } = recovered;
    let recovered_from = commit.as_ref().map(|c| c.epoch);
    let hot_image = hot.clone();
    let store = StateStore::new(
        Arc::clone(&backend),
        cache_bytes,
        Arc::clone(&config.clock),
        hot,
    )?;
    let (checkpoints, manager) = match checkpoints {
        Some((c, m)) => (Some(c), Some(m)),
        None => (None, None),
    };
    let shared: Shared = Rc::new(RefCell::new(WorkerState::new(
        index,
        peers,
        config.key_groups,
        config.job_id.clone(),
        store,
        checkpoints,
        first_epoch,
        committed,
        config.metrics_interval,
    )));
    {
        let mut s = shared.borrow_mut();
        s.restored = metadata;
        s.recovered_from = recovered_from;
        s.pending_rollback = rolls_back;
        s.rolled_back = rolled_back;
        s.keep_commits(kept);
        s.control = Arc::clone(&config.control);
    }
    let setup = crate::commit::CommitterSetup {
        storage: root,
        history,
        keep: config.retained_commits,
        rolls_back,
        fence: manager.filter(|_| index == 0),
        max_failed: config.max_failed_epochs,
    };
    let built = worker.dataflow::<u64, _, _>(|scope| {
        let mut builder = JobBuilder {
            scope,
            shared: Rc::clone(&shared),
            config: Arc::clone(config),
            first_epoch,
            tokens: Vec::new(),
        };
        build(&mut builder)?;
        builder.finish(setup, slot)
    });
    let built = built.and_then(|()| {
        if from_savepoint.is_some() {
            crate::savepoint::drop_unknown_state(
                &mut shared.borrow_mut(),
                config.allow_non_restored_state,
            )?;
        }
        Ok(())
    });
    if let Err(e) = built {
        abort.store(true, Ordering::Release);
        return Err(e);
    }
    let mut last_idle = Instant::now();
    loop {
        if let Some(e) = shared.borrow_mut().error.take() {
            abort.store(true, Ordering::Release);
            return Err(e);
        }
        if abort.load(Ordering::Acquire) {
            return Err(Error::Worker(STOPPED.into()));
        }
        // A cut waiting for its backend is looked at often.
        let park = if shared.borrow().store.capture_pending() {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(50)
        };
        if !worker.step_or_park(Some(park)) {
            break;
        }
        let mut s = shared.borrow_mut();
        // Now and then, work the cache does when there is time (a full
        // snapshot of it moves on even while no records come).
        let done = if last_idle.elapsed() >= IDLE_WORK_EVERY {
            last_idle = Instant::now();
            s.store.idle()
        } else {
            s.store.finish_capture(false)
        };
        if let Err(e) = done {
            s.fail(e);
        }
        s.refresh_metrics(false);
        drop(s);
    }
    shared.borrow_mut().refresh_metrics(true);
    if !backend.is_closed() {
        gress_state::telemetry::publish(&backend_label, &backend.metrics());
    }
    let committed = shared.borrow().committed;
    for each in &shared.borrow().on_commit {
        each.borrow_mut().commit_to(committed)?;
    }
    let savepoint =
        crate::savepoint::at_run_end(worker, abort, config, &shared, &backend, hot_image.as_ref())?;
    let s = shared.borrow();
    Ok(WorkerReport {
        cache: s.store.stats(),
        checkpoints: s.checkpoint_costs.clone(),
        records_read: s.records_read,
        records_in: s.records_in,
        records_out: s.records_out,
        epochs_cut: s.epochs_cut,
        last_committed: committed,
        recovered_from,
        from_savepoint,
        savepoint,
    })
}
