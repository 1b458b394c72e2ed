//! The keyed interval join: against a nested-loop reference, with inputs
//! whose watermarks differ, late records, bounded buffers and recovery.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Ev, R, VecSource, XorShift, disordered, kept_memory_backends, multiset, stored};
use gress_stream::{CollectSink, EpochPolicy, Error, FileSink, JobConfig, run};
use parking_lot::Mutex;
use proptest::prelude::*;

fn config(name: &str, workers: usize, checkpoints: Option<&Path>, epoch: u64) -> JobConfig {
    let config = JobConfig::new(name)
        .with_workers(workers)
        .with_epochs(EpochPolicy::Records(epoch));
    match checkpoints {
        Some(dir) => config.with_checkpoint_dir(dir),
        None => config,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A joined pair: (key, left value, right value).
type Pair = (u64, i64, i64);

/// Gives every record a value unique over both inputs, to tell pairs apart.
fn numbered(inputs: Vec<Vec<Ev>>, first: i64) -> Vec<Vec<Ev>> {
    let mut n = first;
    inputs
        .into_iter()
        .map(|p| {
            p.into_iter()
                .map(|(k, t, _)| {
                    n += 1;
                    (k, t, n)
                })
                .collect()
        })
        .collect()
}

/// Every pair of the same key with `l.time + lower <= r.time <= l.time +
/// upper`.
fn reference(left: &[Vec<Ev>], right: &[Vec<Ev>], lower: i64, upper: i64) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for l in left.iter().flatten() {
        for r in right.iter().flatten() {
            let d = r.1 as i64 - l.1 as i64;
            if l.0 == r.0 && lower <= d && d <= upper {
                pairs.push((l.0, l.2, r.2));
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

struct Case {
    workers: usize,
    checkpoints: Option<std::path::PathBuf>,
    epoch: u64,
    left_bound: u64,
    right_bound: u64,
    lower: i64,
    upper: i64,
}

/// Runs the join of `left` and `right` and returns its pairs, sorted.
fn run_join(
    case: Case,
    left: Vec<Vec<Ev>>,
    right: Vec<Vec<Ev>>,
) -> gress_stream::Result<Vec<Pair>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let (left, right) = (VecSource::new(left), VecSource::new(right));
    let Case {
        workers,
        checkpoints,
        epoch,
        left_bound,
        right_bound,
        lower,
        upper,
    } = case;
    run(
        config("join", workers, checkpoints.as_deref(), epoch),
        move |job| {
            let l = job
                .source_with_event_time("left", left.clone(), |e: &Ev| e.1, ms(left_bound))?
                .key_by(|e: &Ev| e.0);
            let r = job
                .source_with_event_time("right", right.clone(), |e: &Ev| e.1, ms(right_bound))?
                .key_by(|e: &Ev| e.0);
            l.interval_join("join", r, lower, upper, |k: &u64, l: &Ev, r: &Ev| {
                (*k, l.2, r.2)
            })
            .sink("out", CollectSink::new(sink.clone()))
        },
    )?;
    let mut pairs = out.lock().clone();
    pairs.sort_unstable();
    Ok(pairs)
}

/// With nothing late, the join emits exactly the pairs of a nested loop,
/// once each, for bounds around, before and after the left record, on 1
/// and 2 workers with checkpoints.
#[test]
fn interval_join_matches_a_nested_loop() -> R {
    let left = numbered(disordered(3, 2, 250, 4, 5, 12), 0);
    let right = numbered(disordered(9, 3, 200, 4, 6, 12), 10_000);
    for (lower, upper) in [(-10, 10), (0, 0), (-30, -5), (5, 25)] {
        let expected = reference(&left, &right, lower, upper);
        assert!(
            expected.len() > 50,
            "({lower}, {upper}): too few pairs to test"
        );
        for workers in [1, 2] {
            let dir = tempfile::tempdir()?;
            let case = Case {
                workers,
                checkpoints: Some(dir.path().to_path_buf()),
                epoch: 30,
                left_bound: 12,
                right_bound: 12,
                lower,
                upper,
            };
            let got = run_join(case, left.clone(), right.clone())?;
            assert_eq!(got, expected, "({lower}, {upper}), {workers} workers");
        }
    }
    Ok(())
}

/// The join's watermark is the smaller of its inputs': records of an input
/// whose event time runs far behind the other's are not late, so no pair is
/// lost.
#[test]
fn a_join_waits_for_the_slower_input() -> R {
    // Left times run 25 times faster than right times.
    let left: Vec<Vec<Ev>> = vec![(0..300).map(|i| (i % 3, i * 50, i as i64)).collect()];
    let right: Vec<Vec<Ev>> = vec![(0..300).map(|i| (i % 3, i * 2, 1000 + i as i64)).collect()];
    let expected = reference(&left, &right, -60, 60);
    assert!(expected.len() > 20);
    println!("expected {}", expected.len());
    for workers in [1, 2] {
        let case = Case {
            workers,
            checkpoints: None,
            epoch: 10,
            left_bound: 0,
            right_bound: 0,
            lower: -60,
            upper: 60,
        };
        let got = run_join(case, left.clone(), right.clone())?;
        println!("{workers}: got {}", got.len());
        assert_eq!(got, expected, "{workers} workers");
    }
    Ok(())
}

/// A record with an event time below the join's watermark before its epoch
/// is late and joins nothing, while records of the same epoch that are on
/// time still join the waiting ones.
#[test]
fn late_join_records_are_dropped() -> R {
    // One record per epoch and bound 0: after each epoch the watermark is
    // the smaller of the two inputs' latest times.
    let left = vec![vec![(1, 10, 100), (1, 40, 101), (1, 41, 102)]];
    let right = vec![vec![(1, 12, 200), (1, 50, 201), (1, 20, 202)]];
    // Watermark 40 before the third epoch: the right record at 20 is late.
    let mut expected = vec![(1, 100, 200), (1, 101, 201), (1, 102, 201)];
    expected.sort_unstable();
    let mut without_lateness = reference(&left, &right, -5, 15);
    without_lateness.retain(|p| *p != (1, 100, 202));
    assert_eq!(without_lateness, expected);
    for workers in [1, 2] {
        let dir = tempfile::tempdir()?;
        let case = Case {
            workers,
            checkpoints: Some(dir.path().to_path_buf()),
            epoch: 1,
            left_bound: 0,
            right_bound: 0,
            lower: -5,
            upper: 15,
        };
        let got = run_join(case, left.clone(), right.clone())?;
        assert_eq!(got, expected, "{workers} workers");
    }
    Ok(())
}

/// The join's buffers stay bounded while the watermark advances (records
/// go once nothing can join them) and are empty when the job ends.
#[test]
fn join_buffers_are_removed_once_nothing_can_join() -> R {
    // Both inputs advance 2 ms per record, so neither waits for the other.
    let steady = |seed: u64| -> Vec<Vec<Ev>> {
        let mut rng = XorShift(seed);
        (0..2)
            .map(|_| {
                (0..3000u64)
                    .map(|i| (rng.below(4), (2 * i).saturating_sub(rng.below(11)), 0))
                    .collect()
            })
            .collect()
    };
    let (left, right) = (numbered(steady(5), 0), numbered(steady(6), 100_000));
    let expected = reference(&left, &right, -20, 20);
    for workers in [1, 2] {
        let (factory, backends) = kept_memory_backends();
        let out = Arc::new(Mutex::new(Vec::new()));
        let most = Arc::new(AtomicUsize::new(0));
        let (sink, probe, probe_most) = (out.clone(), backends.clone(), most.clone());
        let (l_src, r_src) = (VecSource::new(left.clone()), VecSource::new(right.clone()));
        // No cache: every entry lives in the backend, where the probe sees it.
        let config = config("bounded", workers, None, 50)
            .with_backend(factory)
            .with_cache_bytes(0);
        run(config, move |job| {
            let backend = probe
                .lock()
                .get(&job.worker_index())
                .cloned()
                .ok_or(Error::Worker("no backend".into()))?;
            let most = probe_most.clone();
            let mut seen = 0u64;
            let l = job
                .source_with_event_time("left", l_src.clone(), |e: &Ev| e.1, ms(10))?
                .key_by(|e: &Ev| e.0);
            let r = job
                .source_with_event_time("right", r_src.clone(), |e: &Ev| e.1, ms(10))?
                .key_by(|e: &Ev| e.0);
            l.interval_join("join", r, -20, 20, |k: &u64, l: &Ev, r: &Ev| (*k, l.2, r.2))
                .inspect(move |_| {
                    // The state as of the newest flush, every few pairs.
                    seen += 1;
                    if seen.is_multiple_of(32)
                        && let Ok((_, bytes)) = stored(&backend)
                    {
                        most.fetch_max(bytes, Ordering::Relaxed);
                    }
                })
                .sink("out", CollectSink::new(sink.clone()))
        })?;
        let mut got = out.lock().clone();
        got.sort_unstable();
        assert_eq!(got, expected, "{workers} workers");
        // Kept until the end, the buffers would grow past 100 KB; removed
        // on time they hold about one epoch of records and their timers.
        let most = most.load(Ordering::Relaxed);
        assert!(most > 0, "{workers} workers: the probe saw no state");
        assert!(most < 10_000, "{workers} workers: {most} bytes of buffers");
        for (worker, backend) in backends.lock().iter() {
            assert_eq!(stored(backend)?, (0, 0), "worker {worker} of {workers}");
        }
    }
    Ok(())
}

/// A lower bound above the upper bound fails the job at start.
#[test]
fn inverted_join_bounds_fail_the_job() -> R {
    let case = Case {
        workers: 1,
        checkpoints: None,
        epoch: 10,
        left_bound: 0,
        right_bound: 0,
        lower: 5,
        upper: 4,
    };
    let result = run_join(case, vec![vec![(1, 1, 1)]], vec![vec![(1, 1, 2)]]);
    assert!(
        matches!(
            result,
            Err(Error::InvalidJob {
                what: "interval_join",
                ..
            })
        ),
        "{result:?}"
    );
    Ok(())
}

/// A join failing part way through and restarted from its newest committed
/// epoch restores both buffers and their timers: the committed output of
/// both runs equals the nested loop's, on 1 and 2 workers.
#[test]
fn a_join_resumes_from_the_committed_epoch_after_a_failure() -> R {
    let left = numbered(disordered(13, 2, 300, 3, 4, 8), 0);
    let right = numbered(disordered(17, 2, 300, 3, 4, 8), 10_000);
    let expected = reference(&left, &right, -15, 5);
    for workers in [1, 2] {
        let dir = tempfile::tempdir()?;
        let checkpoints = dir.path().join("checkpoints");
        let out = dir.path().join("out");
        let job = |l_src: VecSource<Ev>, r_src: VecSource<Ev>| {
            let out = out.clone();
            move |job: &mut gress_stream::JobBuilder<'_>| {
                let l = job
                    .source_with_event_time("left", l_src.clone(), |e: &Ev| e.1, ms(8))?
                    .key_by(|e: &Ev| e.0);
                let r = job
                    .source_with_event_time("right", r_src.clone(), |e: &Ev| e.1, ms(8))?
                    .key_by(|e: &Ev| e.0);
                l.interval_join("join", r, -15, 5, |k: &u64, l: &Ev, r: &Ev| (*k, l.2, r.2))
                    .sink("out", FileSink::new(out.clone()))
            }
        };
        let first = run(
            config("join-recover", workers, Some(&checkpoints), 20),
            job(
                VecSource::new(left.clone()).failing_at(160, checkpoints.clone()),
                VecSource::new(right.clone()),
            ),
        );
        assert!(
            matches!(first, Err(Error::Source { .. })),
            "the first run should fail: {first:?}"
        );
        let report = run(
            config("join-recover", workers, Some(&checkpoints), 20),
            job(VecSource::new(left.clone()), VecSource::new(right.clone())),
        )?;
        assert!(report.recovered_from.is_some());
        let mut got: Vec<Pair> = FileSink::read_committed(&out)?;
        got.sort_unstable();
        assert_eq!(multiset(&got), multiset(&expected), "{workers} workers");
    }
    Ok(())
}

/// Partitions of records whose disorder stays within `bound`.
fn ordered_within(bound: u64, first: i64) -> impl Strategy<Value = Vec<Vec<Ev>>> {
    let partition =
        prop::collection::vec((0u64..3, 0u64..6, 0..=bound), 0..40).prop_map(move |steps| {
            let mut base = 0;
            steps
                .into_iter()
                .map(|(key, step, back)| {
                    base += step;
                    (key, base.saturating_sub(back), 0)
                })
                .collect::<Vec<Ev>>()
        });
    prop::collection::vec(partition, 1..3).prop_map(move |p| numbered(p, first))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random bounds, epochs, workers and inputs within their watermark
    /// bounds: the join emits exactly the nested loop's pairs.
    #[test]
    fn interval_join_matches_a_nested_loop_on_random_inputs(
        workers in 1usize..=2,
        epoch in 1u64..15,
        lower in -30i64..30,
        width in 0i64..30,
        left in ordered_within(10, 0),
        right in ordered_within(10, 10_000),
    ) {
        let expected = reference(&left, &right, lower, lower + width);
        let case = Case {
            workers,
            checkpoints: None,
            epoch,
            left_bound: 10,
            right_bound: 10,
            lower,
            upper: lower + width,
        };
        let got = run_join(case, left, right).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, expected);
    }
}
