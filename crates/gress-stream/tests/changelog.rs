//! Operators whose results update, and the regular join: each against a
//! plain reference, with the changelog well formed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Ev, R, VecSource, disordered};
use gress_state::ManualClock;
use gress_stream::{
    AggregateFunction, Change, ChangelogTable, CollectSink, EpochPolicy, Error, JobConfig,
    PartitionedFileSink, Ranked, RetractingAggregate, StateTtl, run,
};
use parking_lot::Mutex;
use proptest::prelude::*;

fn config(workers: usize, epoch: u64, dir: &std::path::Path) -> JobConfig {
    JobConfig::new("changelog")
        .with_workers(workers)
        .with_checkpoint_dir(dir)
        .with_epochs(EpochPolicy::Records(epoch))
}

/// Sums values.
struct Sum;

impl AggregateFunction for Sum {
    type In = i64;
    type Acc = i64;
    type Out = i64;
    fn create(&self) -> i64 {
        0
    }
    fn add(&self, acc: &mut i64, v: i64) {
        *acc += v;
    }
    fn result(&self, acc: &i64) -> i64 {
        *acc
    }
}

impl RetractingAggregate for Sum {
    fn retract(&self, acc: &mut i64, v: i64) {
        *acc -= v;
    }
}

/// Gives every record a distinct value (its value times 1000 plus a serial
/// number), so that orders are total.
fn distinct(inputs: Vec<Vec<Ev>>) -> Vec<Vec<Ev>> {
    let mut n = 0;
    inputs
        .into_iter()
        .map(|p| {
            p.into_iter()
                .map(|(k, t, v)| {
                    n += 1;
                    (k, t, v * 1000 + n)
                })
                .collect()
        })
        .collect()
}

type Outputs = (
    Vec<Change<Ranked<Ev>>>,
    Vec<Change<(u64, i64)>>,
    Vec<Change<(u64, i64)>>,
);

/// Top-`n` by value per key, a running sum per key, and the sum of each
/// key's top-`n` (a retracting aggregate of the top-N's changelog).
fn run_updating(
    inputs: Vec<Vec<Ev>>,
    n: usize,
    workers: usize,
    epoch: u64,
) -> gress_stream::Result<Outputs> {
    let dir = tempfile::tempdir().map_err(|e| Error::Worker(e.to_string()))?;
    let top = Arc::new(Mutex::new(Vec::new()));
    let sums = Arc::new(Mutex::new(Vec::new()));
    let top_sums = Arc::new(Mutex::new(Vec::new()));
    let (t, s, ts) = (top.clone(), sums.clone(), top_sums.clone());
    let source = VecSource::new(inputs);
    run(config(workers, epoch, dir.path()), move |job| {
        let records = job.source("records", source.clone())?;
        records
            .clone()
            .key_by(|e: &Ev| e.0)
            .map_values(|e| e.2)
            .updating_aggregate("sum", Sum)
            .sink("sums", CollectSink::new(s.clone()))?;
        let ranked = records
            .key_by(|e: &Ev| e.0)
            .top_n("top", n, |a: &Ev, b: &Ev| b.2.cmp(&a.2));
        ranked
            .clone()
            .map(|c| c.map(|r| (r.row.0, r.row.2)))
            .key_by(|c| c.row().0)
            .map_values(|c| c.map(|(_, v)| v))
            .retracting_aggregate("top-sum", Sum)
            .sink("top-sums", CollectSink::new(ts.clone()))?;
        ranked.sink("top", CollectSink::new(t.clone()))
    })?;
    let out = (
        top.lock().clone(),
        sums.lock().clone(),
        top_sums.lock().clone(),
    );
    Ok(out)
}

fn table<T: Ord + Clone + std::fmt::Debug>(changes: Vec<Change<T>>) -> Vec<T> {
    ChangelogTable::from_changes(changes)
        .expect("a well-formed changelog")
        .rows()
        .into_iter()
        .cloned()
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The changelogs are well formed on any number of workers and epoch
    /// length, and the tables they produce are the top-N, the sums and
    /// the sums of the top-N of a plain computation.
    #[test]
    fn top_n_and_aggregates_produce_their_tables(
        seed in 1u64..10_000,
        n in 1usize..5,
        workers in 1usize..3,
        epoch in 1u64..60,
    ) {
        let inputs = distinct(disordered(seed, 2, 150, 6, 3, 0));
        let mut per_key: BTreeMap<u64, Vec<Ev>> = BTreeMap::new();
        for e in inputs.iter().flatten() {
            per_key.entry(e.0).or_default().push(*e);
        }
        let mut top = Vec::new();
        let mut sums = Vec::new();
        let mut top_sums = Vec::new();
        for (k, mut es) in per_key {
            sums.push((k, es.iter().map(|e| e.2).sum::<i64>()));
            es.sort_by_key(|e| std::cmp::Reverse(e.2));
            es.truncate(n);
            top_sums.push((k, es.iter().map(|e| e.2).sum::<i64>()));
            for (i, e) in es.into_iter().enumerate() {
                top.push(Ranked { rank: i as u32 + 1, row: e });
            }
        }
        top.sort();
        let (got_top, got_sums, got_top_sums) =
            run_updating(inputs, n, workers, epoch).expect("the job runs");
        prop_assert_eq!(table(got_top), top);
        prop_assert_eq!(table(got_sums), sums);
        prop_assert_eq!(table(got_top_sums), top_sums);
    }
}

/// An aggregate whose last input is retracted deletes its row.
#[test]
fn retracting_every_input_deletes_the_row() -> R {
    let dir = tempfile::tempdir()?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    // Key 1 gets 5, then 5 is retracted; key 2 gets 7.
    let changes = vec![vec![
        Change::Insert((1u64, 5i64)),
        Change::Insert((2, 7)),
        Change::Delete((1, 5)),
    ]];
    let source = VecSource::new(changes);
    run(config(1, 1, dir.path()), move |job| {
        job.source("changes", source.clone())?
            .key_by(|c: &Change<(u64, i64)>| c.row().0)
            .map_values(|c| c.map(|(_, v)| v))
            .retracting_aggregate("sum", Sum)
            .sink("out", CollectSink::new(sink.clone()))
    })?;
    let changes = out.lock().clone();
    assert!(changes.contains(&Change::Delete((1, 5))), "{changes:?}");
    assert_eq!(table(changes), vec![(2, 7)]);
    Ok(())
}

/// One side's records of a key, or the other's.
type Side = (bool, u64, i64);

/// The pairs a regular join emits, sorted.
fn run_join(
    inputs: Vec<Vec<Side>>,
    workers: usize,
    ttl: Option<StateTtl>,
    clock: Option<Arc<ManualClock>>,
) -> gress_stream::Result<Vec<(u64, i64, i64)>> {
    let dir = tempfile::tempdir().map_err(|e| Error::Worker(e.to_string()))?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let source = VecSource::new(inputs);
    let mut config = config(workers, 1, dir.path());
    if let Some(c) = &clock {
        config = config.with_clock(c.clone());
    }
    run(config, move |job| {
        let records = job.source("records", source.clone())?;
        let left = records.clone().filter(|r: &Side| r.0).key_by(|r| r.1);
        let right = records.filter(|r: &Side| !r.0).key_by(|r| r.1);
        let clock = clock.clone();
        left.join("join", right, ttl, move |k, l, r| {
            // A right value of 2000 moves the clock past any TTL.
            if let (Some(c), 2000) = (&clock, r.2) {
                c.advance(Duration::from_secs(10));
            }
            // Pairs whose values sum to a multiple of 7 are left out.
            ((l.2 + r.2) % 7 != 0).then_some((*k, l.2, r.2))
        })
        .sink("out", CollectSink::new(sink.clone()))
    })?;
    let mut pairs = out.lock().clone();
    pairs.sort_unstable();
    Ok(pairs)
}

/// Every pair of a key whose join function keeps it, once, however the
/// two sides interleave, on 1 and 2 workers.
#[test]
fn a_regular_join_emits_every_pair_of_a_key_once() -> R {
    let inputs: Vec<Vec<Side>> = disordered(17, 3, 120, 8, 2, 0)
        .into_iter()
        .enumerate()
        .map(|(p, part)| {
            part.into_iter()
                .enumerate()
                .map(|(i, (k, _, v))| ((i + p) % 3 == 0, k, v * 100 + i as i64))
                .collect()
        })
        .collect();
    let mut expected = Vec::new();
    for l in inputs.iter().flatten().filter(|r| r.0) {
        for r in inputs.iter().flatten().filter(|r| !r.0) {
            if l.1 == r.1 && (l.2 + r.2) % 7 != 0 {
                expected.push((l.1, l.2, r.2));
            }
        }
    }
    expected.sort_unstable();
    assert!(expected.len() > 500, "too few pairs to test");
    for workers in [1, 2] {
        assert_eq!(
            run_join(inputs.clone(), workers, None, None)?,
            expected,
            "{workers} workers"
        );
    }
    Ok(())
}

/// With a time to live, a side not added to for that long joins nothing
/// more; without one, it does.
#[test]
fn a_join_with_a_ttl_forgets_a_side_left_alone_that_long() -> R {
    // One partition, an epoch per record: left 1, right 2000 (joins, and
    // moves the clock 10 s on), right 2.
    let inputs = vec![vec![(true, 1u64, 1i64), (false, 1, 2000), (false, 1, 2)]];
    let ttl = StateTtl::new(Duration::from_secs(1));
    let without = run_join(inputs.clone(), 1, None, Some(ManualClock::shared(1_000)))?;
    assert_eq!(without, vec![(1, 1, 2), (1, 1, 2000)]);
    let with_ttl = run_join(inputs, 1, Some(ttl), Some(ManualClock::shared(1_000)))?;
    assert_eq!(with_ttl, vec![(1, 1, 2000)], "the left record expired");
    Ok(())
}

/// A partition that is not a plain relative path stops the job with the
/// sink's error, naming it.
#[test]
fn a_partition_outside_the_sink_directory_is_refused() -> R {
    let dir = tempfile::tempdir()?;
    let source = VecSource::new(vec![vec![1u64, 2, 3]]);
    let out = dir.path().join("out");
    let err = run(config(1, 10, &dir.path().join("checkpoints")), move |job| {
        job.source("n", source.clone())?.sink(
            "out",
            PartitionedFileSink::new(out.clone(), |n: &u64| {
                if *n == 2 {
                    "../escape".to_string()
                } else {
                    format!("n={n}")
                }
            }),
        )
    })
    .expect_err("the partition is refused");
    assert!(err.to_string().contains("../escape"), "{err}");
    assert!(!dir.path().join("escape").exists());
    Ok(())
}

/// The pairs of `join_unique`, sorted.
fn run_join_unique(
    inputs: Vec<Vec<Side>>,
    workers: usize,
) -> gress_stream::Result<Vec<(u64, i64, i64)>> {
    let dir = tempfile::tempdir().map_err(|e| Error::Worker(e.to_string()))?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let source = VecSource::new(inputs);
    run(config(workers, 7, dir.path()), move |job| {
        let records = job.source("records", source.clone())?;
        let left = records.clone().filter(|r: &Side| r.0).key_by(|r| r.1);
        let right = records.filter(|r: &Side| !r.0).key_by(|r| r.1);
        left.join_unique("join", right, None, |k, l, r| {
            ((l.2 + r.2) % 7 != 0).then_some((*k, l.2, r.2))
        })
        .sink("out", CollectSink::new(sink.clone()))
    })?;
    let mut pairs = out.lock().clone();
    pairs.sort_unstable();
    Ok(pairs)
}

/// With one right record per key, arriving before, between or after its
/// left records, `join_unique` emits what the regular join does; a second
/// right record for a key stops the job with an error naming it.
#[test]
fn a_unique_join_matches_the_regular_join_and_refuses_a_second_right_record() -> R {
    // Keys 0..40: the right record of key k is at position k * 7 % 150 of
    // partition k % 2, among left records of random keys.
    let mut parts: Vec<Vec<Side>> = disordered(5, 2, 150, 40, 2, 0)
        .into_iter()
        .map(|part| part.into_iter().map(|(k, _, v)| (true, k, v)).collect())
        .collect();
    for k in 0..40u64 {
        let part = &mut parts[(k % 2) as usize];
        let at = (k as usize * 7) % part.len();
        part.insert(at, (false, k, 1_000 + k as i64));
    }
    let mut expected = Vec::new();
    for l in parts.iter().flatten().filter(|r| r.0) {
        for r in parts.iter().flatten().filter(|r| !r.0) {
            if l.1 == r.1 && (l.2 + r.2) % 7 != 0 {
                expected.push((l.1, l.2, r.2));
            }
        }
    }
    expected.sort_unstable();
    assert!(expected.len() > 200, "too few pairs to test");
    for workers in [1, 2] {
        assert_eq!(
            run_join_unique(parts.clone(), workers)?,
            expected,
            "{workers} workers"
        );
    }
    parts[0].push((false, 3, 5));
    parts[0].push((false, 3, 6));
    let err = run_join_unique(parts, 2).expect_err("a second right record");
    assert!(err.to_string().contains("second right record"), "{err}");
    Ok(())
}
