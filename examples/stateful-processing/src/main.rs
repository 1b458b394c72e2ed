//! Stateful stream processing on gress-stream: a keyed job over a generated
//! stream of user events (user, page, amount, event time).
//!
//! - Per user: a running balance in `ValueState`, and sessions. Events of a
//!   user less than 30 s of event time apart form one session; an
//!   event-time timer closes it once the watermark passes its last event
//!   plus the gap, and emits it with the balance at its end. The open
//!   session lives in a `ValueState` with a TTL, so a session that never
//!   closes (its partition stalls) does not stay in state forever.
//! - Per page: views in tumbling one-minute windows of event time, one
//!   count per window in its own namespace of the page's state, emitted by
//!   an event-time timer at the end of the window.
//!
//! Every epoch is a checkpoint in `--checkpoints`. Output goes to
//! `--output` through file sinks that make an epoch's output visible only
//! once the epoch is committed. `--crash-after N` aborts the process after
//! N events; the next run recovers from the newest committed epoch and
//! ends with the same output as a run that never crashed.
//!
//! Run with `./scripts/example stateful-processing [--backend rocksdb]`;
//! by default it works in `./example-data/stateful-processing`.
//! `--processes P` runs the job as P processes on this machine (timely's
//! cluster mode on loopback); on several machines, start it on each with
//! `GRESS_PROCESS` and `GRESS_HOSTFILE` set, and `--checkpoints
//! s3://bucket/prefix` so that every process shares the checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::Checkpointable;
use gress_stream::S3Config;
use gress_stream::{
    BackendFactory, CheckpointStorage, EpochPolicy, FileSink, GeneratorSource,
    KeyedProcessFunction, MapStateDescriptor, ProcessingContext, StateTtl, Timer,
    ValueStateDescriptor, latest_commit, run,
};
use serde::{Deserialize, Serialize};

/// Partitions of the event stream; fixed, so the stream is the same for
/// any number of workers.
const PARTITIONS: usize = 4;
/// Users of one partition; user `u` is always in partition `u % 4`.
const USERS_PER_PARTITION: u64 = 250;
const PAGES: u64 = 12;
/// Event time of the first event, ms.
const START_MS: u64 = 1_700_000_000_000;
/// Event time between two events of a partition, ms.
const STEP_MS: u64 = 100;
/// Events of a partition are out of order by less than this, ms.
const JITTER_MS: u64 = 80;
/// The watermark trails the newest event time by this much: no event is
/// ever late.
const MAX_OUT_OF_ORDER: Duration = Duration::from_millis(JITTER_MS);
/// Event time without events that ends a session, ms.
const SESSION_GAP_MS: u64 = 30_000;
/// The page counts' tumbling window, ms.
const WINDOW_MS: u64 = 60_000;
/// Processing time an open session may stay unwritten before it is dropped.
const SESSION_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Memory,
    Rocksdb,
}

/// Per-user balances and sessions, per-page view counts; exactly once
/// across crashes.
#[derive(Debug, Parser)]
struct Args {
    /// Checkpoints: the commit records and every worker's checkpoints. A
    /// directory, or `s3://bucket/prefix` (endpoint and credentials from
    /// the `AWS_*` environment variables).
    #[arg(long, default_value = "example-data/stateful-processing/checkpoints")]
    checkpoints: PathBuf,
    /// Committed output: JSON lines under sessions/committed and
    /// pages/committed.
    #[arg(long, default_value = "example-data/stateful-processing/output")]
    output: PathBuf,
    /// RocksDB databases, one per worker (with --backend rocksdb).
    #[arg(long, default_value = "example-data/stateful-processing/state")]
    state: PathBuf,
    /// Worker threads per process; a recovery may use another number (the
    /// job rescales).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Processes to start on this machine, as one job on loopback; a
    /// recovery may use another number. On several machines, start one
    /// process on each with GRESS_PROCESS (its index) and GRESS_HOSTFILE (a
    /// file of `host:port` lines, one per process) instead.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Where each worker keeps its state.
    #[arg(long, value_enum, default_value_t = Backend::Memory)]
    backend: Backend,
    /// Events in the whole stream.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Abort the process once this run has processed this many events.
    #[arg(long)]
    crash_after: Option<u64>,
    /// Events of each partition in one epoch (each epoch is a checkpoint).
    #[arg(long, default_value_t = 1_000)]
    epoch_records: u64,
    /// Start the job from this savepoint (`gress job savepoint` writes
    /// one; `gress job start-from` passes it), with this run's backend and
    /// workers, when --checkpoints holds no committed epoch yet.
    #[arg(long)]
    from_savepoint: Option<PathBuf>,
    /// Delete the checkpoints, output and state first, instead of
    /// recovering from them (only directories this example created).
    #[arg(long)]
    fresh: bool,
    /// How log lines (on standard error, filtered by RUST_LOG, default
    /// info) are written.
    #[arg(long, value_enum, default_value_t)]
    log_format: gress_app::log::LogFormat,
}

/// One event of the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    user: u32,
    page: u16,
    /// Cents; negative for a withdrawal.
    amount: i64,
    /// Event time, ms.
    time: u64,
}

/// A page view, passed from the user operator to the page operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PageView {
    page: u16,
}

/// An open session of a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    start: u64,
    last: u64,
    events: u64,
    net: i64,
}

/// A closed session, with the user's balance at its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionSummary {
    user: u32,
    start: u64,
    end: u64,
    events: u64,
    net: i64,
    balance: i64,
}

/// The views of a page in one window. A view that arrived after its window
/// fired would be counted in a second record for the same window (none do
/// here: the generator's disorder is within the watermark's bound).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PageWindow {
    page: u16,
    start: u64,
    views: u64,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Event `i` of partition `p`, or `None` past the end of the stream. Each
/// partition has a drifting set of about a dozen active users, so users
/// come and go and their sessions open and close.
fn event(p: usize, i: u64, events: u64) -> Option<Event> {
    if i * PARTITIONS as u64 + p as u64 >= events {
        return None;
    }
    let h = mix(((p as u64) << 40) | i);
    let k = (i / 400 * 5 + h % 12) % USERS_PER_PARTITION;
    Some(Event {
        user: (k * PARTITIONS as u64 + p as u64) as u32,
        page: ((h >> 16) % PAGES) as u16,
        amount: ((h >> 32) % 2_000) as i64 - 950,
        time: START_MS + i * STEP_MS + (h >> 48) % JITTER_MS,
    })
}

/// Events processed by this process, for `--crash-after`.
static PROCESSED: AtomicU64 = AtomicU64::new(0);

/// Balances and sessions of one user.
///
/// A key's records do not arrive in event-time order: its events may come
/// from several partitions, and the engine does not promise their order
/// within an epoch either. So each event waits in `pending` until the
/// watermark passes it (an event-time timer at its time); timers fire in
/// time order, so sessions and balances follow event time, the same in
/// every run.
struct Users {
    pending: MapStateDescriptor<u64, Vec<i64>>,
    balance: ValueStateDescriptor<i64>,
    session: ValueStateDescriptor<Session>,
    crash_after: Option<u64>,
}

type UserContext<'a> = ProcessingContext<'a, u32, SessionSummary, PageView>;

impl Users {
    fn new(crash_after: Option<u64>) -> Self {
        Users {
            pending: MapStateDescriptor::new("pending"),
            balance: ValueStateDescriptor::new("balance"),
            session: ValueStateDescriptor::new("session").with_ttl(StateTtl::new(SESSION_TTL)),
            crash_after,
        }
    }
}

/// Emits `s`, which ended with the user's balance at `balance`.
fn close(ctx: &mut UserContext<'_>, s: Session, balance: i64) {
    let user = *ctx.key();
    ctx.output_at(
        s.last,
        SessionSummary {
            user,
            start: s.start,
            end: s.last,
            events: s.events,
            net: s.net,
            balance,
        },
    );
}

impl KeyedProcessFunction<u32, Event> for Users {
    type Out = SessionSummary;
    type Side = PageView;

    fn on_record(&mut self, ctx: &mut UserContext<'_>, e: Event) -> gress_stream::Result<()> {
        let processed = PROCESSED.fetch_add(1, Ordering::Relaxed) + 1;
        if self.crash_after == Some(processed) {
            eprintln!("crashing: aborting after {processed} events");
            std::process::abort();
        }
        ctx.side_output(PageView { page: e.page });
        ctx.map(&self.pending)?
            .modify(|m| m.entry(e.time).or_default().push(e.amount))?;
        ctx.register_event_timer(e.time);
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut UserContext<'_>, timer: Timer) -> gress_stream::Result<()> {
        let now = timer.time;
        // The events up to now, in event-time order.
        let due = ctx.map(&self.pending)?.modify(|m| {
            let later = m.split_off(&(now + 1));
            std::mem::replace(m, later)
        })?;
        let mut session = ctx.value(&self.session)?.get()?;
        let mut balance = ctx.value(&self.balance)?.get()?.unwrap_or(0);
        let gap_timer = session.as_ref().map(|s| s.last + SESSION_GAP_MS);
        for (time, amounts) in due {
            for amount in amounts {
                match &mut session {
                    Some(s) if time <= s.last + SESSION_GAP_MS => {
                        s.last = s.last.max(time);
                        s.events += 1;
                        s.net += amount;
                    }
                    open => {
                        if let Some(s) = open.take() {
                            close(ctx, s, balance);
                        }
                        *open = Some(Session {
                            start: time,
                            last: time,
                            events: 1,
                            net: amount,
                        });
                    }
                }
                balance += amount;
            }
        }
        if let Some(s) = session.take_if(|s| s.last + SESSION_GAP_MS <= now) {
            close(ctx, s, balance);
        }
        // One gap timer per open session, at its last event plus the gap.
        let next_gap_timer = session.as_ref().map(|s| s.last + SESSION_GAP_MS);
        if gap_timer != next_gap_timer {
            if let Some(t) = gap_timer.filter(|&t| t > now) {
                ctx.delete_event_timer(t);
            }
            if let Some(t) = next_gap_timer {
                ctx.register_event_timer(t);
            }
        }
        ctx.value(&self.session)?.update(|_| session)?;
        ctx.value(&self.balance)?.set(balance)
    }
}

/// Views of one page per tumbling window.
struct PageWindows {
    views: ValueStateDescriptor<u64>,
}

impl KeyedProcessFunction<u16, PageView> for PageWindows {
    type Out = PageWindow;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u16, PageWindow>,
        _view: PageView,
    ) -> gress_stream::Result<()> {
        let start = ctx.time() - ctx.time() % WINDOW_MS;
        ctx.set_namespace(Some(&start))?;
        ctx.value(&self.views)?
            .update(|n| Some(n.unwrap_or(0) + 1))?;
        ctx.register_event_timer(start + WINDOW_MS - 1);
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessingContext<'_, u16, PageWindow>,
        timer: Timer,
    ) -> gress_stream::Result<()> {
        // The timer's namespace, its window, is the current one.
        let views = ctx.value(&self.views)?.get()?.unwrap_or(0);
        ctx.value(&self.views)?.clear()?;
        let page = *ctx.key();
        ctx.output(PageWindow {
            page,
            start: timer.time + 1 - WINDOW_MS,
            views,
        });
        Ok(())
    }
}

fn backend(args: &Args) -> BackendFactory {
    match args.backend {
        Backend::Memory => BackendFactory::memory(),
        Backend::Rocksdb => {
            let dir = args.state.clone();
            BackendFactory::new(move |worker| {
                let config = RocksDbConfig::new(dir.join(format!("worker-{worker}")));
                Ok(Arc::new(RocksDbStateBackend::open(config)?) as Arc<dyn Checkpointable>)
            })
        }
    }
}

/// The committed lines of the sink under `dir`.
fn committed_lines(dir: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    if !dir.join("committed").exists() {
        return Ok(lines);
    }
    for file in FileSink::committed_files(dir)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        lines.extend(text.lines().map(str::to_string));
    }
    Ok(lines)
}

/// The checkpoint storage `--checkpoints` names.
fn checkpoint_storage(args: &Args) -> Result<CheckpointStorage> {
    let name = args.checkpoints.to_string_lossy();
    Ok(match name.strip_prefix("s3://") {
        Some(rest) => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("{name}: no bucket");
            }
            CheckpointStorage::S3(S3Config::new(bucket).with_prefix(prefix.trim_end_matches('/')))
        }
        None => CheckpointStorage::Local(args.checkpoints.clone()),
    })
}

/// The name this example marks the directories it creates with.
const PROGRAM: &str = "example-stateful-processing";

/// Prepares the checkpoints, output and state: each local directory is
/// created (and marked) if missing, kept to recover from, or with `--fresh`
/// deleted, but only if this example created it. Checkpoints in object
/// storage are deleted with `--fresh` unless a running job holds them.
fn prepare(args: &Args, storage: &CheckpointStorage) -> Result<()> {
    if args.fresh
        && let Some(holder) = storage.held_by()?
    {
        bail!(
            "--fresh would delete the checkpoints of a job that is running ({holder}); \
             stop it first"
        );
    }
    match storage {
        CheckpointStorage::Local(dir) => {
            gress_app::data_dir::open(dir, PROGRAM, args.fresh)?;
        }
        _ if args.fresh => {
            let storage = storage.open("")?;
            for object in storage.list("")? {
                storage.delete(&object.path)?;
            }
        }
        _ => {}
    }
    gress_app::data_dir::open(&args.output, PROGRAM, args.fresh)?;
    gress_app::data_dir::open(&args.state, PROGRAM, args.fresh)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    gress_app::log::init(args.log_format);
    let cluster = gress_stream::cluster::from_env()?;
    let storage = checkpoint_storage(&args)?;
    let sessions_dir = args.output.join("sessions");
    let pages_dir = args.output.join("pages");
    if let Some((process, hosts)) = &cluster {
        // One of the job's processes: the command that started the job
        // has cleared and reported.
        if args.fresh {
            bail!(
                "--fresh clears the job's storage: run it before starting the processes, \
                 not in process {process} of {}",
                hosts.len()
            );
        }
    } else {
        prepare(&args, &storage)?;
        match latest_commit(&*storage.open("")?)? {
            Some(c) => println!(
                "recovering from committed epoch {} in {}",
                c.epoch,
                args.checkpoints.display()
            ),
            None => {
                if !committed_lines(&sessions_dir)?.is_empty()
                    || !committed_lines(&pages_dir)?.is_empty()
                {
                    bail!(
                        "{} holds output but {} no committed epoch; run with --fresh",
                        args.output.display(),
                        args.checkpoints.display()
                    );
                }
                println!(
                    "processing {} events on {} process(es) of {} workers, {:?} state, \
                     a checkpoint every epoch",
                    args.events, args.processes, args.workers, args.backend
                );
                if let Some(savepoint) = &args.from_savepoint {
                    println!("starting from the savepoint in {}", savepoint.display());
                }
            }
        }
        if args.processes > 1 {
            // Every process gets these arguments; the clearing is done.
            let each = std::env::args_os().skip(1).filter(|a| a != "--fresh");
            gress_stream::cluster::launch_local(args.processes, each)?;
            return summarize(&sessions_dir, &pages_dir);
        }
    }

    let mut config = gress_stream::JobConfig::new("stateful-processing")
        .with_workers(args.workers)
        .with_checkpoints(storage)
        .with_epochs(EpochPolicy::Records(args.epoch_records))
        .with_backend(backend(&args));
    if let Some((process, hosts)) = cluster.clone() {
        config = config.with_cluster(process, hosts);
    }
    if let Some(savepoint) = &args.from_savepoint {
        config = config.from_savepoint(savepoint.clone());
    }
    let events = args.events;
    let crash_after = args.crash_after;
    let per_partition = events.div_ceil(PARTITIONS as u64);
    let (sessions_out, pages_out) = (sessions_dir.clone(), pages_dir.clone());
    let report = run(config, move |job| {
        let source = GeneratorSource::new(PARTITIONS, Some(per_partition), move |p, i| {
            event(p, i, events)
        });
        let (sessions, views) = job
            .source_with_event_time(
                "events",
                source,
                |e: &Option<Event>| e.as_ref().map_or(0, |e| e.time),
                MAX_OUT_OF_ORDER,
            )?
            .flat_map(|e| e)
            .key_by(|e: &Event| e.user)
            .process_with_side("users", Users::new(crash_after));
        sessions.sink("sessions", FileSink::new(sessions_out.clone()))?;
        views
            .key_by(|v: &PageView| v.page)
            .process(
                "pages",
                PageWindows {
                    views: ValueStateDescriptor::new("views"),
                },
            )
            .sink("pages", FileSink::new(pages_out.clone()))
    })?;
    let who = match &cluster {
        Some((process, _)) => format!("process {process}: "),
        None => String::new(),
    };
    println!(
        "{who}done in {:.1?}: {} events processed in this run{}, last committed epoch {:?}",
        report.elapsed,
        PROCESSED.load(Ordering::Relaxed),
        report
            .recovered_from
            .map(|e| format!(" (recovered from epoch {e})"))
            .unwrap_or_default(),
        report.last_committed,
    );
    if cluster.is_some() {
        // The command that started the processes sums up.
        return Ok(());
    }
    summarize(&sessions_dir, &pages_dir)
}

/// Prints what the committed output says.
fn summarize(sessions_dir: &Path, pages_dir: &Path) -> Result<()> {
    let mut sessions = Vec::new();
    for line in committed_lines(sessions_dir)? {
        sessions.push(serde_json::from_str::<SessionSummary>(&line)?);
    }
    let mut windows = Vec::new();
    for line in committed_lines(pages_dir)? {
        windows.push(serde_json::from_str::<PageWindow>(&line)?);
    }
    // A user's balance after their last session.
    let mut balances: BTreeMap<u32, (u64, i64)> = BTreeMap::new();
    for s in &sessions {
        let b = balances.entry(s.user).or_insert((0, 0));
        if s.end >= b.0 {
            *b = (s.end, s.balance);
        }
    }
    let events: u64 = sessions.iter().map(|s| s.events).sum();
    println!(
        "{} sessions of {} users ({events} events), {} page windows ({} views)",
        sessions.len(),
        balances.len(),
        windows.len(),
        windows.iter().map(|w| w.views).sum::<u64>(),
    );
    if let Some(s) = sessions.iter().max_by_key(|s| (s.end - s.start, s.user)) {
        println!(
            "  longest session: user {} for {} s, {} events, net {:.2}",
            s.user,
            (s.end - s.start) / 1000,
            s.events,
            s.net as f64 / 100.0
        );
    }
    let mut ranked: Vec<(i64, u32)> = balances.iter().map(|(u, (_, b))| (*b, *u)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    for (balance, user) in ranked.iter().take(3) {
        println!("  balance of user {user}: {:.2}", *balance as f64 / 100.0);
    }
    if let Some(w) = windows.iter().max_by_key(|w| (w.views, w.page, w.start)) {
        println!(
            "  busiest page window: page {} in minute {}, {} views",
            w.page,
            (w.start - START_MS) / WINDOW_MS,
            w.views
        );
    }
    Ok(())
}
