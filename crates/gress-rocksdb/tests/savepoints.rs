//! Savepoints of a stream job: a job on the memory backend with 2 workers
//! is stopped with a savepoint part-way, started from it on RocksDB with 3
//! workers, stopped with a savepoint again and finished from that one on
//! the memory backend with 1 worker. Together the three runs commit what
//! one uninterrupted run commits: every running count once, and every
//! window (open windows and their timers travel in the savepoint).
//! A job that no longer has an operator the savepoint holds state of is
//! refused, unless it allows non-restored state; a savepoint is never
//! written over anything, and a damaged one is refused.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_stream::{
    BackendFactory, EpochPolicy, Error, FileSink, GeneratorSource, JobConfig, JobHandle,
    KeyedProcessFunction, ProcessingContext, Result, ValueStateDescriptor, WindowAssigner,
    WindowResult, run, start,
};
use serde::{Deserialize, Serialize};

type R = std::result::Result<(), Box<dyn std::error::Error>>;

const PARTITIONS: usize = 4;
const PER_PARTITION: u64 = 6_000;
const KEYS: u64 = 40;
const KEY_GROUPS: u16 = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ev {
    p: u64,
    i: u64,
}

fn key_of(e: &Ev) -> u64 {
    (e.p * 7 + e.i * 13) % KEYS
}

/// A running count per key.
struct Running {
    count: ValueStateDescriptor<u64>,
    /// Records until an injected failure (once, when it reaches 0).
    fail: Arc<AtomicI64>,
}

impl KeyedProcessFunction<u64, Ev> for Running {
    type Out = (u64, u64);
    type Side = ();
    fn on_record(&mut self, ctx: &mut ProcessingContext<'_, u64, (u64, u64)>, _: Ev) -> Result<()> {
        if self.fail.fetch_sub(1, Ordering::Relaxed) == 1 {
            return Err(Error::Operator {
                operator: "running".into(),
                reason: "injected failure".into(),
            });
        }
        let mut now = 0;
        ctx.value(&self.count)?.update(|c| {
            now = c.unwrap_or(0) + 1;
            Some(now)
        })?;
        let k = *ctx.key();
        ctx.output((k, now));
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Backend {
    Memory,
    RocksDb,
}

/// One run's config: its own checkpoints and output under `dir`.
fn config(dir: &Path, job: &str, workers: usize, backend: Backend) -> JobConfig {
    let config = JobConfig::new(job)
        .with_workers(workers)
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_key_groups(KEY_GROUPS)
        .with_epochs(EpochPolicy::Records(200))
        .with_metrics_interval(Duration::from_millis(10));
    match backend {
        Backend::Memory => config,
        Backend::RocksDb => config.with_backend(rocksdb(dir)),
    }
}

/// Each worker's RocksDB database, under `dir/state/`.
fn rocksdb(dir: &Path) -> BackendFactory {
    let dir = dir.join("state");
    BackendFactory::new(move |worker| {
        let mut config = RocksDbConfig::new(dir.join(format!("worker-{worker}")));
        config.write_buffer_size = 1 << 20;
        config.block_cache_size = 4 << 20;
        let backend = Arc::new(RocksDbStateBackend::open(config)?);
        Ok(backend)
    })
}

/// The job: running counts, and counts per key in 2 s event-time windows.
/// While `slow` is set, records pass slowly enough to stop the job
/// part-way. With `windows = false` the window operator is left out.
fn build(
    out: &Path,
    slow: Arc<AtomicBool>,
    windows: bool,
) -> impl Fn(&mut gress_stream::JobBuilder<'_>) -> Result<()> + Send + Sync + 'static {
    build_failing(out, slow, windows, Arc::new(AtomicI64::new(i64::MAX)))
}

/// [`build`], failing once after `fail` records (over all workers and
/// runs of the process).
fn build_failing(
    out: &Path,
    slow: Arc<AtomicBool>,
    windows: bool,
    fail: Arc<AtomicI64>,
) -> impl Fn(&mut gress_stream::JobBuilder<'_>) -> Result<()> + Send + Sync + 'static {
    let (running, windowed) = (out.join("running"), out.join("windows"));
    move |job| {
        let slow = Arc::clone(&slow);
        let events = job
            .source_with_event_time(
                "events",
                GeneratorSource::new(PARTITIONS, Some(PER_PARTITION), |p, i| Ev {
                    p: p as u64,
                    i,
                }),
                |e| e.i * 10,
                Duration::from_secs(1_000),
            )?
            .map(move |e| {
                if slow.load(Ordering::Relaxed) && e.i.is_multiple_of(4) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                e
            });
        let counted = events.clone().key_by(key_of).process(
            "running",
            Running {
                count: ValueStateDescriptor::new("count"),
                fail: Arc::clone(&fail),
            },
        );
        counted.sink("running", FileSink::new(running.clone()))?;
        if windows {
            events
                .map(|e| (key_of(&e), 1u64))
                .key_by(|(k, _)| *k)
                .window(WindowAssigner::tumbling(Duration::from_millis(2_000)))
                .reduce("per-window", |a: &(u64, u64), b: (u64, u64)| {
                    (a.0, a.1 + b.1)
                })
                .sink("windows", FileSink::new(windowed.clone()))?;
        }
        Ok(())
    }
}

type Running2 = Vec<(u64, u64)>;
type Windows = Vec<WindowResult<u64, (u64, u64)>>;

fn committed(out: &Path) -> std::result::Result<(Running2, Windows), Error> {
    let mut running: Running2 = FileSink::read_committed(&out.join("running"))?;
    let mut windows: Windows = if out.join("windows").exists() {
        FileSink::read_committed(&out.join("windows"))?
    } else {
        Vec::new()
    };
    running.sort_unstable();
    windows.sort_unstable();
    Ok((running, windows))
}

/// Waits until the job has committed two epochs, then stops it with a
/// savepoint at `to`.
fn stop_part_way(
    mut handle: JobHandle,
    to: &Path,
) -> std::result::Result<u64, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        if let Some(e) = handle.status().committed_epoch {
            break e;
        }
        if handle.is_finished() || Instant::now() > deadline {
            return Err(format!("never committed: {:?}", handle.status()).into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    while handle.status().committed_epoch < Some(first + 1) {
        if handle.is_finished() || Instant::now() > deadline {
            return Err(format!("never committed twice: {:?}", handle.status()).into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let report = handle.stop_with_savepoint(to)?;
    let info = report.savepoint.ok_or("the report names no savepoint")?;
    assert_eq!(
        report.last_committed,
        Some(info.epoch),
        "the savepoint is of the last commit"
    );
    Ok(info.epoch)
}

/// The state and timer ids of every key in a savepoint's parts.
fn key_ids(
    savepoint: &Path,
    workers: usize,
) -> std::result::Result<std::collections::BTreeSet<u32>, Box<dyn std::error::Error>> {
    let mut ids = std::collections::BTreeSet::new();
    for w in 0..workers {
        for part in ["state", "cache"] {
            let file = savepoint.join(format!("workers/{w:05}/savepoints/savepoint/{part}.snap"));
            let mut reader = gress_state::snapshot::SnapshotReader::new(std::io::BufReader::new(
                std::fs::File::open(&file)?,
            ))?;
            while let Some(entry) = reader.next_entry()? {
                if let gress_state::snapshot::SnapshotEntry::Put { key, .. } = entry {
                    ids.insert(
                        gress_stream::keys::decode_key(key)
                            .ok_or("not a state key")?
                            .id,
                    );
                }
            }
        }
    }
    Ok(ids)
}

/// Whether the job under `dir` has committed an epoch.
fn has_commit(dir: &Path) -> std::result::Result<bool, Box<dyn std::error::Error>> {
    let storage = gress_checkpoint::LocalStorage::new(dir.join("checkpoints"))?;
    Ok(gress_stream::latest_commit(&storage)?.is_some())
}

#[test]
fn a_job_moved_by_savepoints_between_backends_and_worker_counts_commits_what_one_run_does() -> R {
    let reference = tempfile::tempdir()?;
    run(
        config(reference.path(), "reference", 2, Backend::Memory),
        build(reference.path(), Arc::default(), true),
    )?;
    let (expected_running, expected_windows) = committed(reference.path())?;
    assert_eq!(expected_running.len(), PARTITIONS * PER_PARTITION as usize);
    assert!(!expected_windows.is_empty());

    let root = tempfile::tempdir()?;
    let (a, b, c) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("c"),
    );
    let (sp1, sp2) = (root.path().join("sp1"), root.path().join("sp2"));
    let slow = Arc::new(AtomicBool::new(true));

    // 1. Memory, 2 workers, stopped with a savepoint part-way.
    let handle = start(
        config(&a, "moved", 2, Backend::Memory),
        build(&a, Arc::clone(&slow), true),
    )?;
    let e1 = stop_part_way(handle, &sp1)?;
    let info = gress_stream::savepoint::read(&sp1.clone().into())?;
    assert_eq!(
        (info.epoch, info.workers, info.key_groups),
        (e1, 2, KEY_GROUPS)
    );
    assert!(
        info.names.iter().any(|n| n == "running/count")
            && info.names.iter().any(|n| n == "per-window"),
        "the savepoint names its operators and states: {:?}",
        info.names
    );
    let (running_a, _) = committed(&a)?;
    assert!(running_a.len() < expected_running.len(), "stopped part-way");

    // A savepoint is never written over another: refused, and the job
    // goes on running.
    let x = root.path().join("x");
    let mut other = start(
        config(&x, "other", 1, Backend::Memory),
        build(&x, Arc::clone(&slow), true),
    )?;
    let refused = other.stop_with_savepoint(&*sp1);
    assert!(
        matches!(
            &refused,
            Err(Error::InvalidJob {
                what: "savepoint",
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(!other.is_finished(), "a refused savepoint stops nothing");
    other.stop_with_savepoint(root.path().join("x-savepoint"))?;

    // 2. RocksDB, 3 workers, from the savepoint; stopped with another.
    let handle = start(
        config(&b, "moved-b", 3, Backend::RocksDb).from_savepoint(sp1.clone()),
        build(&b, Arc::clone(&slow), true),
    )?;
    let e2 = stop_part_way(handle, &sp2)?;
    assert!(e2 > e1, "epochs go on after the savepoint's");
    assert_eq!(
        gress_stream::savepoint::read(&sp2.clone().into())?.workers,
        3
    );

    // 3. Memory, 1 worker, from the second savepoint, to the end.
    slow.store(false, Ordering::Relaxed);
    let report = run(
        config(&c, "moved-c", 1, Backend::Memory).from_savepoint(sp2.clone()),
        build(&c, Arc::clone(&slow), true),
    )?;
    assert_eq!(report.from_savepoint, Some(e2));

    let mut running = Vec::new();
    let mut windows = Vec::new();
    for dir in [&a, &b, &c] {
        let (r, w) = committed(dir)?;
        assert!(
            !r.is_empty(),
            "{}: each run committed some of the work",
            dir.display()
        );
        running.extend(r);
        windows.extend(w);
    }
    running.sort_unstable();
    windows.sort_unstable();
    assert_eq!(
        running.len(),
        expected_running.len(),
        "every record counted once"
    );
    assert_eq!(running, expected_running, "running counts");
    assert_eq!(windows, expected_windows, "window results");

    // Run again, the last job recovers from its own checkpoints (it has
    // committed): it says it is finished and reads nothing.
    let again = run(
        config(&c, "moved-c", 1, Backend::Memory).from_savepoint(sp2.clone()),
        build(&c, Arc::clone(&slow), true),
    )?;
    assert!(again.already_finished);
    assert_eq!(again.from_savepoint, None);
    Ok(())
}

/// The seed of the randomized schedule: `GRESS_TEST_SEED`, else the time.
fn seed() -> u64 {
    let seed = std::env::var("GRESS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("GRESS_TEST_SEED={seed}");
    seed.max(1)
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Random schedules: a chain of jobs, each on a random backend and number
/// of workers, started from the previous one's savepoint, failing once at
/// a random record (recovered in-process by a restart policy: from the
/// savepoint again before its first commit, from its own checkpoints
/// after), and stopped with a savepoint part-way; the last runs to the
/// end. Together they commit one uninterrupted run's output.
#[test]
fn random_chains_of_savepoints_with_failures_commit_one_runs_output() -> R {
    let mut rng = seed();
    let reference = tempfile::tempdir()?;
    run(
        config(reference.path(), "reference", 2, Backend::Memory),
        build(reference.path(), Arc::default(), true),
    )?;
    let expected = committed(reference.path())?;
    let root = tempfile::tempdir()?;
    let slow = Arc::new(AtomicBool::new(true));
    let mut previous: Option<std::path::PathBuf> = None;
    let mut dirs = Vec::new();
    let stages = 3;
    for stage in 0..stages {
        let workers = 1 + (xorshift(&mut rng) % 4) as usize;
        let backend = if xorshift(&mut rng).is_multiple_of(2) {
            Backend::Memory
        } else {
            Backend::RocksDb
        };
        let fail_after = 1 + (xorshift(&mut rng) % 1_500) as i64;
        let dir = root.path().join(format!("stage-{stage}"));
        let mut config = config(&dir, &format!("chain-{stage}"), workers, backend).with_restart(
            gress_stream::RestartPolicy::FixedDelay {
                attempts: 3,
                delay: Duration::from_millis(10),
            },
        );
        if let Some(sp) = &previous {
            config = config.from_savepoint(sp.clone());
        }
        let countdown = Arc::new(AtomicI64::new(fail_after));
        let build = build_failing(&dir, Arc::clone(&slow), true, Arc::clone(&countdown));
        eprintln!(
            "stage {stage}: {workers} workers, {}, failing after {fail_after} records",
            match backend {
                Backend::Memory => "memory",
                Backend::RocksDb => "rocksdb",
            }
        );
        if stage + 1 == stages {
            slow.store(false, Ordering::Relaxed);
            let handle = start(config, build)?;
            handle.wait()?;
        } else {
            let handle = start(config, build)?;
            let sp = root.path().join(format!("sp-{stage}"));
            stop_part_way(handle, &sp)?;
            previous = Some(sp);
        }
        assert!(
            countdown.load(Ordering::Relaxed) <= 0,
            "stage {stage} failed once and recovered"
        );
        dirs.push(dir);
    }
    let mut running = Vec::new();
    let mut windows = Vec::new();
    for dir in &dirs {
        let (r, w) = committed(dir)?;
        running.extend(r);
        windows.extend(w);
    }
    running.sort_unstable();
    windows.sort_unstable();
    assert_eq!(running, expected.0, "running counts");
    assert_eq!(windows, expected.1, "window results");
    Ok(())
}

#[test]
fn a_savepoint_with_state_of_a_removed_operator_is_refused_unless_allowed() -> R {
    let root = tempfile::tempdir()?;
    let (a, sp) = (root.path().join("a"), root.path().join("sp"));
    let slow = Arc::new(AtomicBool::new(true));
    let handle = start(
        config(&a, "removed", 2, Backend::Memory),
        build(&a, Arc::clone(&slow), true),
    )?;
    stop_part_way(handle, &sp)?;
    slow.store(false, Ordering::Relaxed);

    // Without the window operator: refused, and nothing committed.
    let b = root.path().join("b");
    let refused = run(
        config(&b, "removed-b", 2, Backend::RocksDb).from_savepoint(sp.clone()),
        build(&b, Arc::clone(&slow), false),
    );
    match &refused {
        Err(
            e @ Error::InvalidJob {
                what: "savepoint", ..
            },
        ) => {
            assert!(e.to_string().contains("per-window"), "{e}");
        }
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    assert!(!has_commit(&b)?);

    // Another number of key groups: refused before anything is written.
    let c = root.path().join("c");
    let refused = run(
        config(&c, "removed-c", 2, Backend::Memory)
            .with_key_groups(32)
            .from_savepoint(sp.clone()),
        build(&c, Arc::clone(&slow), true),
    );
    assert!(
        matches!(
            &refused,
            Err(Error::InvalidJob {
                what: "savepoint",
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(!c.join("checkpoints").join("workers").exists());

    // Allowed: the running counts go on from the savepoint's; stopped
    // part-way with a savepoint that no longer holds window state.
    slow.store(true, Ordering::Relaxed);
    let handle = start(
        config(&b, "removed-b", 2, Backend::RocksDb)
            .from_savepoint(sp.clone())
            .allow_non_restored_state(true),
        build(&b, Arc::clone(&slow), false),
    )?;
    let sp2 = root.path().join("sp2");
    stop_part_way(handle, &sp2)?;
    let names = gress_stream::savepoint::read(&sp2.clone().into())?.names;
    assert!(
        !names.iter().any(|n| n.starts_with("per-window")),
        "the dropped operator's names are forgotten: {names:?}"
    );
    // And its state is gone: no key of the savepoint's parts is of the
    // window operator's timers or states.
    let dropped: Vec<u32> = gress_stream::savepoint::read(&sp.clone().into())?
        .names
        .iter()
        .filter(|n| n.starts_with("per-window"))
        .map(|n| gress_stream::keys::name_id(n))
        .collect();
    assert!(!dropped.is_empty());
    let before = key_ids(&sp, 2)?;
    assert!(
        dropped.iter().any(|id| before.contains(id)),
        "the first savepoint holds window state"
    );
    let after = key_ids(&sp2, 2)?;
    assert!(!after.is_empty(), "the running counts are there");
    assert!(
        !dropped.iter().any(|id| after.contains(id)),
        "the dropped operator's state was kept"
    );
    slow.store(false, Ordering::Relaxed);

    // An operator added (the windows again, from nothing): no refusal.
    let d = root.path().join("d");
    let report = run(
        config(&d, "removed-d", 3, Backend::Memory).from_savepoint(sp2.clone()),
        build(&d, Arc::clone(&slow), true),
    )?;
    assert!(report.from_savepoint.is_some());
    let (_, windows) = committed(&d)?;
    assert!(!windows.is_empty(), "the added window operator runs");

    let (mut running, _) = committed(&a)?;
    running.extend(committed(&b)?.0);
    running.extend(committed(&d)?.0);
    running.sort_unstable();
    let reference = tempfile::tempdir()?;
    run(
        config(reference.path(), "reference", 2, Backend::Memory),
        build(reference.path(), Arc::default(), false),
    )?;
    assert_eq!(running, committed(reference.path())?.0);
    Ok(())
}

#[test]
fn a_damaged_or_incomplete_savepoint_is_refused() -> R {
    let root = tempfile::tempdir()?;
    let (a, sp) = (root.path().join("a"), root.path().join("sp"));
    let handle = start(
        config(&a, "damaged", 2, Backend::Memory),
        build(&a, Arc::new(AtomicBool::new(true)), true),
    )?;
    stop_part_way(handle, &sp)?;
    // A job of 3 workers started from the savepoint, under `dir`.
    let from = |dir: &Path, id: &str| {
        run(
            config(dir, id, 3, Backend::Memory).from_savepoint(sp.clone()),
            build(dir, Arc::default(), true),
        )
    };

    // A part's file damaged: `verify` names it, and a start is refused.
    let (_, files) = gress_stream::savepoint::verify(&sp.clone().into())?;
    assert!(files.iter().all(|f| f.problem.is_none()), "{files:?}");
    let victim = files
        .iter()
        .find(|f| f.size > 100)
        .ok_or("no file to damage")?;
    let path = sp.join(&victim.path);
    let mut bytes = std::fs::read(&path)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes)?;
    let (_, files) = gress_stream::savepoint::verify(&sp.clone().into())?;
    assert!(files.iter().any(|f| f.problem.is_some()), "{files:?}");
    let b = root.path().join("b");
    let refused = from(&b, "damaged-b");
    assert!(refused.is_err(), "a damaged savepoint was restored");
    assert!(!has_commit(&b)?);

    // A part's manifest cut short, or SAVEPOINT damaged: refused.
    std::fs::write(&path, {
        bytes[at] ^= 0xff;
        &bytes
    })?;
    let manifest = sp.join("workers/00001/savepoints/savepoint/MANIFEST");
    let whole = std::fs::read(&manifest)?;
    std::fs::write(&manifest, &whole[..whole.len() / 2])?;
    let refused = from(&b, "damaged-b");
    match refused {
        Err(e) => assert!(e.to_string().contains("worker 1's part"), "{e}"),
        Ok(r) => return Err(format!("a savepoint with a damaged manifest was used: {r:?}").into()),
    }
    std::fs::write(&manifest, &whole)?;
    let info_at = sp.join(gress_stream::savepoint::SAVEPOINT_FILE);
    let info = std::fs::read(&info_at)?;
    std::fs::write(&info_at, &info[..info.len() - 3])?;
    let refused = from(&b, "damaged-b");
    match refused {
        Err(e) => assert!(e.to_string().contains("SAVEPOINT is damaged"), "{e}"),
        Ok(r) => return Err(format!("a damaged SAVEPOINT was used: {r:?}").into()),
    }
    std::fs::write(&info_at, &info)?;
    // Whole again, it is used.
    let report = from(&b, "damaged-b")?;
    assert!(report.from_savepoint.is_some());

    // Without its SAVEPOINT file it is incomplete.
    let b = root.path().join("b2");
    std::fs::remove_file(sp.join(gress_stream::savepoint::SAVEPOINT_FILE))?;
    let refused = from(&b, "damaged-b2");
    match refused {
        Err(e) => assert!(e.to_string().contains("no savepoint here"), "{e}"),
        Ok(r) => return Err(format!("an incomplete savepoint was used: {r:?}").into()),
    }
    Ok(())
}
