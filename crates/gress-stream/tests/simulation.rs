//! A simulation of a stream job's life: random schedules of runs of a
//! small job (two keyed operators, a window, timers, three `FileSink`s)
//! with crashes at any step, failed, torn and unacknowledged storage
//! writes (data files, manifests, commit records, fencing records), files
//! damaged or deleted between runs, restarts with another number of
//! workers, epochs in flight or retained commits, refused restarts with
//! another number of key groups, and runs that find the job's location
//! held or take it over.
//!
//! The model is a run without failures of the same input: epochs are cut by
//! record counts, so every run cuts the same epochs whatever its workers or
//! numbering. After every recovery the committed output of each sink must
//! be exactly the model's output of its first `k` epochs, for some `k` that
//! never goes back unless a damaged (or badly read) file made recovery
//! fall back; a refused restart changes no byte; no run hangs; and the last
//! run, without faults, ends with the model's whole output, which also
//! checks every state the runs restored.
//!
//! `GRESS_SIM_SCHEDULES` sets the schedules per test (4 tests, 250 each by
//! default); `GRESS_SIM_SEED` runs one schedule of that seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use gress_checkpoint::storage::fault::{FaultKind, FaultRates, FaultyStorage};
use gress_checkpoint::{CheckpointConfig, CheckpointManager, LocalStorage, Retention, Storage};
use gress_stream::{
    AggregateFunction, CheckpointStorage, EpochPolicy, Error, FileSink, GeneratorSource, JobConfig,
    JobReport, KeyedProcessFunction, ProcessingContext, Result, Timer, ValueStateDescriptor,
    WindowAssigner, run,
};
use parking_lot::Mutex;

mod common;

type R<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const PARTITIONS: usize = 3;
const PER_PARTITION: u64 = 120;
const EPOCH: u64 = 15;
const KEYS: u64 = 11;
const SINKS: [&str; 3] = ["counts", "timers", "windows"];

/// The input: key, event time (ms) and value of record `i` of partition `p`.
fn record(p: usize, i: u64) -> (u64, u64, u64) {
    let p = p as u64;
    ((p * 31 + i * 7) % KEYS, i * 10 + p, i * 3 + p)
}

/// A running count per key, an event-time timer per record 25 ms after it
/// (its firing on the side output), and a failure at the `fail_at`-th
/// record of the run.
struct Tally {
    count: ValueStateDescriptor<u64>,
    seen: Arc<AtomicU64>,
    fail_at: Option<u64>,
}

impl KeyedProcessFunction<u64, (u64, u64, u64)> for Tally {
    type Out = (u64, u64);
    type Side = (u64, u64);
    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, (u64, u64), (u64, u64)>,
        r: (u64, u64, u64),
    ) -> Result<()> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if self.fail_at.is_some_and(|at| n >= at) {
            return Err(Error::Operator {
                operator: "tally".into(),
                reason: "injected failure".into(),
            });
        }
        let mut count = 0;
        ctx.value(&self.count)?.update(|c| {
            count = c.unwrap_or(0) + 1;
            Some(count)
        })?;
        let key = *ctx.key();
        ctx.output((key, count));
        ctx.register_event_timer(r.1 + 25);
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, (u64, u64), (u64, u64)>,
        timer: Timer,
    ) -> Result<()> {
        let key = *ctx.key();
        ctx.side_output((key, timer.time));
        Ok(())
    }
}

struct Sum;
impl AggregateFunction for Sum {
    type In = (u64, u64, u64);
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, r: (u64, u64, u64)) {
        *acc += r.2;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
struct RunConfig {
    workers: usize,
    in_flight: u64,
    retained: usize,
    key_groups: u16,
    take_over: bool,
    fail_at: Option<u64>,
}

fn job(cfg: &RunConfig, storage: CheckpointStorage, out: &Path) -> Result<JobReport> {
    let mut config = JobConfig::new("simulation")
        .with_workers(cfg.workers)
        .with_checkpoints(storage)
        .with_epochs(EpochPolicy::Records(EPOCH))
        .with_max_epochs_in_flight(cfg.in_flight)
        .with_retained_commits(cfg.retained)
        .with_key_groups(cfg.key_groups)
        .with_take_over(cfg.take_over);
    config.max_failed_epochs = 3;
    config.checkpoint.lease = Some(Duration::from_secs(20));
    let out = out.to_path_buf();
    let fail_at = cfg.fail_at;
    let seen = Arc::new(AtomicU64::new(0));
    run(config, move |job| {
        let records = job.source_with_event_time(
            "records",
            GeneratorSource::new(PARTITIONS, Some(PER_PARTITION), record),
            |r: &(u64, u64, u64)| r.1,
            Duration::from_millis(5),
        )?;
        let (counts, timers) = records.clone().key_by(|r| r.0).process_with_side(
            "tally",
            Tally {
                count: ValueStateDescriptor::new("count"),
                seen: seen.clone(),
                fail_at,
            },
        );
        let windows = records
            .key_by(|r| r.0)
            .window(WindowAssigner::tumbling(Duration::from_millis(100)))
            .aggregate("sums", Sum);
        counts.sink("counts", FileSink::new(out.join("counts")))?;
        timers.sink("timers", FileSink::new(out.join("timers")))?;
        windows.sink("windows", FileSink::new(out.join("windows")))
    })
}

/// Runs `f` on a thread; a hang fails the test (naming the seed).
fn bounded<T: Send + 'static>(seed: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(v) => v,
        Err(_) => panic!("seed {seed}: {what} hung"),
    }
}

type Lines = BTreeMap<String, usize>;

/// The lines of a sink's committed output, with their counts.
fn committed(dir: &Path) -> R<Lines> {
    let mut m = Lines::new();
    if !dir.join("committed").exists() {
        return Ok(m);
    }
    for f in FileSink::committed_files(dir)? {
        for line in std::fs::read_to_string(&f)?.lines() {
            *m.entry(line.to_string()).or_default() += 1;
        }
    }
    Ok(m)
}

/// Per sink, the model's output of its first `k` epochs, for every `k`.
struct Model {
    prefixes: Vec<[Lines; 3]>,
}

impl Model {
    fn new() -> R<Self> {
        let dir = tempfile::tempdir_in(scratch())?;
        let cfg = RunConfig {
            workers: 1,
            in_flight: 4,
            retained: 3,
            key_groups: 32,
            take_over: false,
            fail_at: None,
        };
        job(
            &cfg,
            CheckpointStorage::Local(dir.path().join("cp")),
            dir.path(),
        )?;
        // Per sink and epoch, the epoch's lines.
        let mut per_epoch: Vec<BTreeMap<u64, Lines>> = vec![BTreeMap::new(); 3];
        for (s, sink) in SINKS.iter().enumerate() {
            for f in FileSink::committed_files(&dir.path().join(sink))? {
                let name = f.file_name().ok_or("name")?.to_string_lossy().into_owned();
                let epoch: u64 = name.split('-').next().ok_or("name")?.parse()?;
                let lines = per_epoch[s].entry(epoch).or_default();
                for line in std::fs::read_to_string(&f)?.lines() {
                    *lines.entry(line.to_string()).or_default() += 1;
                }
            }
        }
        let last = per_epoch
            .iter()
            .filter_map(|m| m.keys().next_back().copied())
            .max()
            .unwrap_or(0);
        let mut prefixes = vec![[Lines::new(), Lines::new(), Lines::new()]];
        for e in 0..=last {
            let mut next = prefixes[prefixes.len() - 1].clone();
            for s in 0..3 {
                for (line, n) in per_epoch[s].get(&e).into_iter().flatten() {
                    *next[s].entry(line.clone()).or_default() += n;
                }
            }
            prefixes.push(next);
        }
        Ok(Model { prefixes })
    }

    /// The `k` whose prefix is exactly `output`, if any.
    fn prefix_of(&self, output: &[Lines; 3]) -> Option<usize> {
        self.prefixes.iter().position(|p| p == output)
    }

    /// How `output` differs from the closest prefix, for a failure.
    fn explain(&self, output: &[Lines; 3]) -> String {
        let size = |o: &[Lines; 3]| -> Vec<usize> { o.iter().map(|l| l.values().sum()).collect() };
        let mut text = format!("output sizes {:?}\n", size(output));
        let closest = (0..self.prefixes.len())
            .min_by_key(|&k| {
                (0..3)
                    .map(|s| {
                        let (a, b) = (&self.prefixes[k][s], &output[s]);
                        let keys: std::collections::BTreeSet<&String> =
                            a.keys().chain(b.keys()).collect();
                        keys.into_iter()
                            .map(|l| {
                                a.get(l)
                                    .copied()
                                    .unwrap_or(0)
                                    .abs_diff(b.get(l).copied().unwrap_or(0))
                            })
                            .sum::<usize>()
                    })
                    .sum::<usize>()
            })
            .unwrap_or(0);
        text.push_str(&format!(
            "closest prefix {closest}, sizes {:?}\n",
            size(&self.prefixes[closest])
        ));
        for s in 0..3 {
            let (a, b) = (&self.prefixes[closest][s], &output[s]);
            for (line, n) in b {
                let m = a.get(line).copied().unwrap_or(0);
                if *n != m {
                    text.push_str(&format!("  {}: {line} x{n}, model x{m}\n", SINKS[s]));
                }
            }
            for (line, m) in a {
                if !b.contains_key(line) {
                    text.push_str(&format!("  {}: {line} missing, model x{m}\n", SINKS[s]));
                }
            }
        }
        text
    }

    fn complete(&self) -> usize {
        self.prefixes.len() - 1
    }
}

fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A small generator, enough for schedules (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_cent: u64) -> bool {
        self.below(100) < per_cent
    }
}

/// Faults the storages of one run get as they are opened.
#[derive(Debug, Clone, Copy)]
enum Faults {
    None,
    /// Random failed, torn and unacknowledged writes, and maybe failed
    /// reads, from a seed.
    Random {
        seed: u64,
        rates: FaultRates,
    },
    /// The process "dies" at the n-th write to the storage under `sub`
    /// (index into the run's opened storages).
    CrashAt {
        storage: usize,
        write: u64,
    },
}

/// Opens every storage of a run through `FaultyStorage`, with `faults`.
fn faulty(root: PathBuf, faults: Faults) -> CheckpointStorage {
    let opened = Arc::new(Mutex::new(0usize));
    CheckpointStorage::Custom(Arc::new(move |sub: &str| {
        let s = Arc::new(FaultyStorage::new(LocalStorage::new(root.join(sub))?));
        s.keep_log(false);
        let n = {
            let mut opened = opened.lock();
            *opened += 1;
            *opened - 1
        };
        match faults {
            Faults::None => {}
            Faults::Random { seed, rates } => {
                s.randomize(Some((seed ^ (n as u64).wrapping_mul(0x9E37), rates)));
            }
            Faults::CrashAt { storage, write } if storage == n => s.arm(write, FaultKind::Crash),
            Faults::CrashAt { .. } => {}
        }
        Ok(s as Arc<dyn Storage>)
    }))
}

/// The commit records and the counts sink's files, for a failure.
fn listing(cp: &Path, out: &Path) -> String {
    let mut text = String::new();
    if let Ok(records) = gress_stream::commits(&LocalStorage::new(cp).expect("local")) {
        for r in records {
            text.push_str(&format!(
                "record {} workers {} rolls_back {:?}\n",
                r.epoch, r.workers, r.rolls_back
            ));
        }
    }
    for sub in ["committed", "pending", "rolled-back"] {
        let mut names: Vec<String> = std::fs::read_dir(out.join("counts").join(sub))
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        text.push_str(&format!("counts/{sub}: {}\n", names.join(" ")));
    }
    text
}

/// What the schedules did, for the report.
#[derive(Debug, Default)]
struct Stats {
    schedules: u64,
    runs: u64,
    completed: u64,
    crashed_by_operator: u64,
    crashed_by_storage: u64,
    failed_other: u64,
    recoveries_checked: u64,
    fallbacks: u64,
    damaged_files: u64,
    unrecoverable: u64,
    refused_key_groups: u64,
    held: u64,
    taken_over: u64,
    rescales: u64,
}

/// One schedule: runs until the job completes without faults.
/// Damage the job cannot recover from, and says so: every retained
/// commit is damaged, or every commit record is gone (a sink then refuses
/// to drop the output of the history that was lost).
fn unrecoverable(e: &Error) -> bool {
    match e {
        Error::Recovery { reason, .. } => {
            reason.contains("no committed epoch has every worker's checkpoint intact")
        }
        Error::Sink { reason, .. } => reason.contains("history that no longer exists"),
        _ => false,
    }
}

fn schedule(seed: u64, model: &Model, stats: &mut Stats) -> R {
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir_in(scratch())?;
    let (cp, out) = (dir.path().join("cp"), dir.path().join("out"));
    let mut settled = 0usize;
    let mut may_fall_back = false;
    let mut workers = 1 + rng.below(3) as usize;
    let steps = 2 + rng.below(6);
    stats.schedules += 1;
    for step in 0..=steps {
        let last = step == steps;
        let ctx = |what: &str| format!("seed {seed} step {step}: {what}");
        // Sometimes another number of workers.
        if !last && rng.chance(30) {
            let next = 1 + rng.below(3) as usize;
            if next != workers {
                stats.rescales += 1;
            }
            workers = next;
        }
        let mut cfg = RunConfig {
            workers,
            in_flight: 1 + rng.below(4),
            retained: 1 + rng.below(3) as usize,
            key_groups: 32,
            take_over: false,
            fail_at: None,
        };
        let has_commit = gress_stream::latest_commit(&LocalStorage::new(&cp)?)?.is_some();

        // A restart with another number of key groups is refused and
        // changes nothing.
        if !last && has_commit && rng.chance(10) {
            let before = common::tree(&cp)?;
            let refused_cfg = RunConfig {
                key_groups: 64,
                ..cfg.clone()
            };
            let (c, o) = (cp.clone(), out.clone());
            let result = bounded(seed, "a refused run", move || {
                job(&refused_cfg, CheckpointStorage::Local(c), &o)
            });
            match result {
                Err(Error::Recovery { reason, .. }) if reason.contains("key groups") => {}
                other => return Err(ctx(&format!("expected a refusal, got {other:?}")).into()),
            }
            if common::tree(&cp)? != before {
                return Err(ctx("a refused restart changed the checkpoints").into());
            }
            stats.refused_key_groups += 1;
        }

        // Damage a stored file between runs.
        if !last && has_commit && rng.chance(20) {
            let files: Vec<PathBuf> = common::tree(&cp)?
                .into_keys()
                .filter(|p| !p.components().any(|c| c.as_os_str() == "fence"))
                .collect();
            if !files.is_empty() {
                let f = &files[rng.below(files.len() as u64) as usize];
                if rng.chance(50) {
                    std::fs::remove_file(f)?;
                } else {
                    let mut bytes = std::fs::read(f)?;
                    if !bytes.is_empty() {
                        let at = rng.below(bytes.len() as u64) as usize;
                        bytes[at] ^= 1 << rng.below(8);
                        std::fs::write(f, bytes)?;
                    }
                }
                stats.damaged_files += 1;
                may_fall_back = true;
            }
        }

        // A manager that still holds worker 0's location: the run is
        // refused, or takes it over.
        let zombie = if !last && has_commit && rng.chance(10) {
            let m = CheckpointManager::open(
                Arc::new(LocalStorage::new(cp.join("workers/00000"))?),
                CheckpointConfig::default()
                    .with_retention(Retention::Required)
                    .with_take_over(true),
            )?;
            cfg.take_over = rng.chance(50);
            Some(m)
        } else {
            None
        };

        // Faults of this run.
        let faults = if last {
            Faults::None
        } else {
            match rng.below(4) {
                0 => Faults::None,
                1 => Faults::CrashAt {
                    storage: rng.below(workers as u64 + 2) as usize,
                    write: 1 + rng.below(40),
                },
                _ => {
                    let reads = rng.chance(30);
                    Faults::Random {
                        seed: rng.next(),
                        rates: FaultRates {
                            fail: rng.below(40_000) as u32,
                            tear: rng.below(10_000) as u32,
                            lost_ack: rng.below(40_000) as u32,
                            read_fail: if reads { 5_000 } else { 0 },
                            read_corrupt: if reads { 2_000 } else { 0 },
                        },
                    }
                }
            }
        };
        if let Faults::Random { rates, .. } = faults
            && (rates.read_corrupt > 0 || rates.tear > 0)
        {
            may_fall_back = true;
        }
        if !last && rng.chance(50) {
            cfg.fail_at = Some(rng.below(PER_PARTITION * PARTITIONS as u64));
        }

        let storage = faulty(cp.clone(), faults);
        let (run_cfg, o) = (cfg.clone(), out.clone());
        let result = bounded(seed, "a run", move || job(&run_cfg, storage, &o));
        stats.runs += 1;
        let injected = !matches!(faults, Faults::None);
        match (&result, &zombie) {
            (Ok(_), _) => stats.completed += 1,
            (Err(Error::Operator { reason, .. }), _) if reason.contains("injected") => {
                stats.crashed_by_operator += 1;
            }
            (Err(Error::Checkpoint(gress_checkpoint::Error::LocationInUse { .. })), Some(_))
                if !cfg.take_over =>
            {
                stats.held += 1;
            }
            (Err(e), _) if unrecoverable(e) && may_fall_back => {
                // Every retained commit is damaged: the job cannot
                // recover, and says so. Start it over.
                stats.unrecoverable += 1;
                drop(zombie);
                std::fs::remove_dir_all(&cp)?;
                std::fs::remove_dir_all(&out).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })?;
                settled = 0;
                may_fall_back = false;
                continue;
            }
            (Err(e), _) if injected => {
                let _ = e;
                stats.crashed_by_storage += 1;
            }
            (Err(e), _) => {
                stats.failed_other += 1;
                return Err(
                    ctx(&format!("{cfg:?} failed without an injected fault: {e:?}")).into(),
                );
            }
        }
        if zombie.is_some() && cfg.take_over {
            stats.taken_over += 1;
        }
        drop(zombie);
        if last && result.is_err() {
            return Err(ctx(&format!("the last run failed: {result:?}")).into());
        }

        // A recovery settles what the sinks show: a run that recovers and
        // stops at its first record (or completes, if the job is done).
        let probe = RunConfig {
            fail_at: Some(0),
            take_over: false,
            ..cfg.clone()
        };
        let (c, o) = (cp.clone(), out.clone());
        let settle = bounded(seed, "a recovery", move || {
            job(&probe, CheckpointStorage::Local(c), &o)
        });
        match &settle {
            Ok(_) => {}
            Err(Error::Operator { reason, .. }) if reason.contains("injected") => {}
            Err(e) if unrecoverable(e) && may_fall_back => {
                stats.unrecoverable += 1;
                std::fs::remove_dir_all(&cp)?;
                let _ = std::fs::remove_dir_all(&out);
                settled = 0;
                may_fall_back = false;
                continue;
            }
            Err(e) => {
                return Err(ctx(&format!(
                    "a recovery failed: {e:?}\nrun {cfg:?} with {faults:?}: {result:?}\n{}\n{:?}",
                    listing(&cp, &out),
                    common::tree(&cp).map(|t| t.into_keys().collect::<Vec<_>>())
                ))
                .into());
            }
        }
        stats.recoveries_checked += 1;
        let output = [
            committed(&out.join(SINKS[0]))?,
            committed(&out.join(SINKS[1]))?,
            committed(&out.join(SINKS[2]))?,
        ];
        let Some(k) = model.prefix_of(&output) else {
            return Err(ctx(&format!(
                "the committed output is not the model's output of its first epochs\n\
                 run {cfg:?} with {faults:?}: {result:?}\nrecovery: {settle:?}\n{}\n{}",
                model.explain(&output),
                listing(&cp, &out)
            ))
            .into());
        };
        if k < settled {
            if !may_fall_back {
                return Err(ctx(&format!(
                    "the committed output went back from {settled} epochs to {k} without damage"
                ))
                .into());
            }
            stats.fallbacks += 1;
        }
        settled = k;
        // A rollback that a recovery chose stays pending until a run
        // commits; only a run that completed has surely carried it out.
        if result.is_ok() {
            may_fall_back = false;
        }
        if last && k != model.complete() {
            return Err(ctx(&format!(
                "the job ended with {k} of {} epochs",
                model.complete()
            ))
            .into());
        }
    }
    Ok(())
}

fn schedules(part: u64) -> R {
    let model = Model::new()?;
    let mut stats = Stats::default();
    if let Some(seed) = std::env::var("GRESS_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        if part == 0 {
            schedule(seed, &model, &mut stats)?;
            println!("{stats:?}");
        }
        return Ok(());
    }
    let n: u64 = std::env::var("GRESS_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(250);
    let base = std::env::var("GRESS_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("base seed {base} (GRESS_SIM_BASE to repeat, GRESS_SIM_SEED for one schedule)");
    for i in 0..n {
        let seed = base
            .wrapping_add(part.wrapping_mul(1 << 32))
            .wrapping_add(i);
        schedule(seed, &model, &mut stats)?;
    }
    println!("part {part}: {stats:?}");
    Ok(())
}

#[test]
fn simulation_part_0() -> R {
    schedules(0)
}

#[test]
fn simulation_part_1() -> R {
    schedules(1)
}

#[test]
fn simulation_part_2() -> R {
    schedules(2)
}

#[test]
fn simulation_part_3() -> R {
    schedules(3)
}
