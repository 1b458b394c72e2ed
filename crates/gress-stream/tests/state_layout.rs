//! What keyed operators write and read: an epoch writes what it changed,
//! not a hot key's whole buffer; a restart reads timers once per worker;
//! a cached value with a TTL keeps its expiry through an eviction.

use std::sync::Arc;
use std::time::Duration;

use gress_state::checkpoint::Checkpointable;
use gress_state::{MemoryConfig, MemoryStateBackend, StateBackend};
use gress_stream::{
    BackendFactory, CollectSink, EpochPolicy, FileSink, GeneratorSource, JobConfig, JobReport,
    KeyedProcessFunction, ProcessingContext, Result, Timer, ValueStateDescriptor, WindowAssigner,
    run,
};
use parking_lot::Mutex;

mod common;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

/// Checkpoints of every epoch are deltas on the last one, so their size is
/// what the epoch changed.
fn deltas_only(dir: &std::path::Path) -> JobConfig {
    let mut config = JobConfig::new("layout")
        .with_checkpoint_dir(dir)
        .with_epochs(EpochPolicy::Records(50));
    config.checkpoint.max_deltas = 10_000;
    config.checkpoint.max_delta_ratio = 1e9;
    config
}

/// Bytes each epoch's checkpoint wrote, worker 0, in epoch order (the
/// first, a full one, left out).
fn bytes_per_epoch(report: &JobReport) -> Vec<u64> {
    let mut cps: Vec<_> = report
        .checkpoints
        .iter()
        .filter(|c| c.worker == 0)
        .collect();
    cps.sort_by_key(|c| c.epoch);
    cps.iter().skip(1).map(|c| c.bytes_written).collect()
}

/// Whether no epoch of the second half writes more than twice what the
/// most of the early ones does (a layout that rewrites a growing buffer
/// writes ten times more by then).
fn flat(bytes: &[u64]) -> bool {
    let n = bytes.len();
    let early = bytes[2..6].iter().copied().max().unwrap_or(0);
    let late = bytes[n / 2..].iter().copied().max().unwrap_or(0);
    late <= 2 * early
}

/// Story: the interval join kept a key's waiting records as one value, so
/// every epoch re-encoded the whole buffer and every cleanup timer scanned
/// it: O(n²) per hot key. Records now wait in chunks written once: with
/// one hot key and a range wide enough that nothing is cleaned up, what
/// each epoch writes stays flat as the buffer grows.
#[test]
fn a_hot_join_key_writes_only_what_each_epoch_added() -> R {
    let dir = tempfile::tempdir()?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let report = run(deltas_only(dir.path()), move |job| {
        let left = job
            .source_with_event_time(
                "left",
                GeneratorSource::new(1, Some(2_000), |_, i| (0u64, i)),
                |r: &(u64, u64)| r.1,
                Duration::ZERO,
            )?
            .key_by(|r| r.0);
        // One right record, at time 0: every left record joins it.
        let right = job
            .source_with_event_time(
                "right",
                GeneratorSource::new(1, Some(1), |_, _| (0u64, 0u64)),
                |r: &(u64, u64)| r.1,
                Duration::ZERO,
            )?
            .key_by(|r| r.0);
        left.interval_join("join", right, -1_000_000, 0, |_, l, r| (l.1, r.1))
            .sink("out", CollectSink::new(sink.clone()))
    })?;
    assert_eq!(out.lock().len(), 2_000);
    let bytes = bytes_per_epoch(&report);
    assert!(bytes.len() >= 30, "{bytes:?}");
    assert!(flat(&bytes), "bytes written per epoch grow: {bytes:?}");
    Ok(())
}

/// Story: a `process` window kept its records as one list, re-encoded in
/// full at every epoch. Records now go into one chunk per epoch: with all
/// records of a key in one long window, what each epoch writes stays flat.
#[test]
fn a_long_process_window_writes_only_what_each_epoch_added() -> R {
    let dir = tempfile::tempdir()?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let report = run(deltas_only(dir.path()), move |job| {
        job.source_with_event_time(
            "n",
            GeneratorSource::new(1, Some(2_000), |_, i| (0u64, i)),
            |r: &(u64, u64)| r.1,
            Duration::ZERO,
        )?
        .key_by(|r| r.0)
        .window(WindowAssigner::tumbling(Duration::from_secs(3600)))
        .process("all", |_, _, records: &[(u64, u64)]| {
            (records.len(), records.windows(2).all(|w| w[0].1 < w[1].1))
        })
        .sink("out", CollectSink::new(sink.clone()))
    })?;
    let got: Vec<(usize, bool)> = out.lock().iter().map(|w| w.result).collect();
    assert_eq!(got, [(2_000, true)], "one window of every record, in order");
    let bytes = bytes_per_epoch(&report);
    assert!(flat(&bytes), "bytes written per epoch grow: {bytes:?}");
    Ok(())
}

/// Registers a timer per record and counts what fires.
struct Timers(char);

impl KeyedProcessFunction<u64, u64> for Timers {
    type Out = (char, u64);
    type Side = ();
    fn on_record(&mut self, ctx: &mut ProcessingContext<'_, u64, Self::Out>, v: u64) -> Result<()> {
        ctx.register_event_timer(1_000_000 + v);
        Ok(())
    }
    fn on_timer(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, Self::Out>,
        t: Timer,
    ) -> Result<()> {
        ctx.output((self.0, t.time));
        Ok(())
    }
}

/// Story: a restart read each keyed operator's timers with two scans per
/// key group (256 passes over the whole memory backend per operator at 128
/// key groups). They are now read once per worker for every operator: one
/// scan on a backend whose scans read everything.
#[test]
fn timers_are_read_with_one_scan_per_worker() -> R {
    let dir = tempfile::tempdir()?;
    let backends: Arc<Mutex<Vec<Arc<MemoryStateBackend>>>> = Arc::default();
    let made = backends.clone();
    let factory = BackendFactory::new(move |_| {
        let b = Arc::new(MemoryStateBackend::new(MemoryConfig::default())?);
        made.lock().push(b.clone());
        Ok(b as Arc<dyn Checkpointable>)
    });
    let fired = Arc::new(Mutex::new(Vec::new()));
    let job = |fail: bool| {
        let sink = fired.clone();
        run(
            JobConfig::new("timers")
                .with_workers(2)
                .with_checkpoint_dir(dir.path())
                .with_epochs(EpochPolicy::Records(100))
                .with_backend(factory.clone()),
            move |job| {
                let s = job.source_with_event_time(
                    "n",
                    GeneratorSource::new(2, Some(300), |p, i| p as u64 * 1000 + i),
                    |v| *v,
                    Duration::ZERO,
                )?;
                let s = s.map(move |v| {
                    assert!(!(fail && v == 250), "failing on purpose");
                    v
                });
                let a = s.clone().key_by(|v| v % 7).process("a", Timers('a'));
                let b = s.clone().key_by(|v| v % 5).process("b", Timers('b'));
                let c = s.key_by(|v| v % 3).process("c", Timers('c'));
                a.sink("a", CollectSink::new(sink.clone()))?;
                b.sink("b", CollectSink::new(sink.clone()))?;
                c.sink("c", CollectSink::new(sink.clone()))
            },
        )
    };
    assert!(job(true).is_err(), "the first run was to fail");
    backends.lock().clear();
    job(false)?;
    for b in backends.lock().iter() {
        assert_eq!(b.metrics().scans, 1, "scans of a restarted worker");
    }
    // Every timer of every operator fired once, restored or not.
    let fired = fired.lock();
    for op in ['a', 'b', 'c'] {
        assert_eq!(fired.iter().filter(|(o, _)| *o == op).count(), 600, "{op}");
    }
    Ok(())
}

/// Keeps a value with a TTL (set at time 0) and outputs whether it was
/// there.
struct Touch(ValueStateDescriptor<u64>);

impl KeyedProcessFunction<(), u64> for Touch {
    type Out = (u64, bool);
    type Side = ();
    fn on_record(&mut self, ctx: &mut ProcessingContext<'_, (), Self::Out>, t: u64) -> Result<()> {
        let there = ctx.value(&self.0)?.get()?.is_some();
        if t == 0 {
            ctx.value(&self.0)?.set(t)?;
        }
        ctx.output((t, there));
        Ok(())
    }
}

/// Story: a value with a TTL read back from the backend (after a recovery
/// or an eviction) got a fresh expiry of now + TTL in the cache, so it was
/// returned after its TTL had passed, and written back revived. It now
/// keeps the expiry the backend stored: set at 0 with a 10 s TTL, restored
/// and read at 6 s, it is gone at 11 s.
#[test]
fn a_value_read_back_keeps_its_expiry() -> R {
    let dir = tempfile::tempdir()?;
    let clock = gress_state::ManualClock::shared(0);
    let out = dir.path().join("out");
    let job = |source: common::VecSource<u64>| {
        let (c, step, sink) = (clock.clone(), clock.clone(), out.clone());
        let factory = BackendFactory::new(move |_| {
            Ok(Arc::new(MemoryStateBackend::new(
                MemoryConfig::default().with_clock(c.clone()),
            )?) as Arc<dyn Checkpointable>)
        });
        run(
            JobConfig::new("ttl-readback")
                .with_clock(clock.clone())
                .with_backend(factory)
                .with_checkpoint_dir(dir.path().join("checkpoints"))
                .with_epochs(EpochPolicy::Records(1)),
            move |job| {
                let step = step.clone();
                job.source("t", source.clone())?
                    .map(move |t| {
                        step.set(t);
                        t
                    })
                    .key_by(|_| ())
                    .process(
                        "touch",
                        Touch(
                            ValueStateDescriptor::new("v")
                                .with_ttl(gress_stream::StateTtl::new(Duration::from_secs(10))),
                        ),
                    )
                    .sink("out", FileSink::new(sink.clone()))
            },
        )
    };
    let times = common::VecSource::new(vec![vec![0u64, 6_000, 11_000]]);
    // The first run commits the value set at 0, then fails.
    assert!(job(times.clone().failing_at(1, dir.path().join("checkpoints"))).is_err());
    job(times)?;
    // Read from files: what the failed run committed is published when
    // the next one starts, where an in-memory sink could miss it.
    let got: Vec<(u64, bool)> = FileSink::read_committed(&out)?;
    assert_eq!(got, [(0, false), (6_000, true), (11_000, false)]);
    Ok(())
}

/// Story: the cache was trimmed to its budget only at the cut, so a job
/// writing 5M keys in one epoch with an 8 MiB budget grew to 1.4 GB. The
/// budget now holds between records: writing 200,000 keys in one epoch
/// with a 1 MiB budget, the cache never holds much more than 1 MiB.
#[test]
fn the_cache_budget_holds_within_an_epoch() -> R {
    let budget = 1 << 20;
    let report = run(
        JobConfig::new("budget")
            .with_cache_bytes(budget)
            .with_epochs(EpochPolicy::Records(1_000_000)),
        |job| {
            job.source("n", GeneratorSource::new(1, Some(200_000), |_, i| i))?
                .key_by(|n| *n)
                .count("count")
                .sink("out", CollectSink::new(gress_stream::Collected::new()))
        },
    )?;
    assert!(report.cache.evicted > 100_000, "{:?}", report.cache);
    assert!(
        report.cache.peak_bytes <= budget as u64 + (4 << 10),
        "the cache held {} bytes for a budget of {budget}",
        report.cache.peak_bytes
    );
    Ok(())
}

/// Every checkpoint names the ids in its state keys: each keyed operator
/// (`operator/<id>`, whose timers carry the id) and each state
/// (`state/<id>` = `operator/state`), so that tools can say what a key
/// is. Names an earlier run recorded are kept, and survive a rescale.
#[test]
fn checkpoints_name_their_operators_and_states() -> R {
    let dir = tempfile::tempdir()?;
    let job = |workers: usize| {
        run(
            JobConfig::new("names")
                .with_workers(workers)
                .with_checkpoint_dir(dir.path())
                .with_epochs(EpochPolicy::Records(100)),
            move |job| {
                job.source("n", GeneratorSource::new(2, Some(300), |p, i| p as u64 + i))?
                    .key_by(|v| v % 5)
                    .count("count")
                    .sink("out", CollectSink::new(gress_stream::Collected::new()))
            },
        )
    };
    job(2)?;
    let names = |worker: &str| -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
        let storage = gress_checkpoint::LocalStorage::new(dir.path().join("workers").join(worker))?;
        let catalog = gress_checkpoint::Catalog::open(Arc::new(storage))?;
        let newest = catalog.checkpoints().last().ok_or("no checkpoint")?.id;
        let manifest = catalog.manifest(newest).ok_or("no manifest")?;
        Ok(manifest
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("state/") || k.starts_with("operator/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    };
    // Five keys: a worker may hold no state of `count`; together they do.
    let mut first = names("00000")?;
    first.extend(names("00001")?);
    first.sort();
    first.dedup();
    let id = |name: &str| format!("{:08x}", xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32);
    assert!(
        first.contains(&(format!("operator/{}", id("count")), "count".to_string())),
        "{first:?}"
    );
    assert!(
        first.iter().any(|(k, v)| k.starts_with("state/")
            && v.starts_with("count/")
            && *k == format!("state/{}", id(v))),
        "{first:?}"
    );
    // Run again on 3 workers: it reads nothing (the job is finished),
    // uses no state, and its checkpoints still name them all.
    let again = job(3)?;
    assert!(again.already_finished);
    // Each new worker takes the names of the old ones it restores from.
    let third = names("00002")?;
    assert!(
        first.iter().all(|n| third.contains(n)),
        "{third:?} lacks some of {first:?}"
    );
    Ok(())
}
