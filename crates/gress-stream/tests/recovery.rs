//! What a restarted job may change and what it may not, and what carries
//! over a restart: state, timers, offsets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gress_stream::{
    CollectSink, EpochPolicy, Error, GeneratorSource, JobConfig, KeyedProcessFunction,
    ProcessingContext, Result, Timer, ValueStateDescriptor, run,
};
use parking_lot::Mutex;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

fn config(dir: &std::path::Path, workers: usize) -> JobConfig {
    JobConfig::new("recovery")
        .with_workers(workers)
        .with_checkpoint_dir(dir)
        .with_epochs(EpochPolicy::Records(50))
}

/// Restarting with another number of key groups, or with more workers
/// than key groups, is refused with a clear error; the same settings
/// recover.
#[test]
fn a_different_number_of_key_groups_is_refused() -> R {
    let dir = tempfile::tempdir()?;
    let job = |config: JobConfig| {
        run(config, |job| {
            job.source("n", GeneratorSource::new(2, Some(200), |_, i| i % 10))?
                .key_by(|n| *n)
                .count("count")
                .sink("out", CollectSink::new(Arc::new(Mutex::new(Vec::new()))))
        })
    };
    job(config(dir.path(), 2))?;
    match job(config(dir.path(), 3).with_key_groups(2)) {
        Err(Error::InvalidJob { reason, .. }) => assert!(reason.contains("key groups"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match job(config(dir.path(), 2).with_key_groups(64)) {
        Err(Error::Recovery { reason, .. }) => assert!(reason.contains("key groups"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    job(config(dir.path(), 2))?;
    Ok(())
}

/// Sums per key.
struct Sum(ValueStateDescriptor<u64>);

impl KeyedProcessFunction<u64, u64> for Sum {
    type Out = (u64, u64);
    type Side = ();
    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, (u64, u64)>,
        v: u64,
    ) -> Result<()> {
        let mut sum = 0;
        ctx.value(&self.0)?.update(|s| {
            sum = s.unwrap_or(0) + v;
            Some(sum)
        })?;
        let k = *ctx.key();
        ctx.output((k, sum));
        Ok(())
    }
}

/// A job that gains a stateful operator restores from a checkpoint taken
/// before it existed: the old operator's state carries on, the new one
/// starts empty.
#[test]
fn a_new_stateful_operator_starts_empty() -> R {
    let dir = tempfile::tempdir()?;
    let counts = Arc::new(Mutex::new(Vec::new()));
    let sink = counts.clone();
    run(config(dir.path(), 2), move |job| {
        job.source("n", GeneratorSource::new(2, Some(100), |_, i| i % 5))?
            .key_by(|n| *n)
            .count("count")
            .sink("counts", CollectSink::new(sink.clone()))
    })?;
    // Version two reads 100 more records per partition and adds a sum.
    let (counts2, sums) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let (c2, s2) = (counts2.clone(), sums.clone());
    run(config(dir.path(), 2), move |job| {
        let numbers = job.source("n", GeneratorSource::new(2, Some(200), |_, i| i % 5))?;
        numbers
            .clone()
            .key_by(|n| *n)
            .count("count")
            .sink("counts", CollectSink::new(c2.clone()))?;
        numbers
            .key_by(|n| *n)
            .process("sum", Sum(ValueStateDescriptor::new("sum")))
            .sink("sums", CollectSink::new(s2.clone()))
    })?;
    // Counts went on from 40 per key (200 records over 5 keys) to 80.
    let first_max = counts.lock().iter().map(|(_, c)| *c).max();
    assert_eq!(first_max, Some(40));
    let (lo, hi) = counts2
        .lock()
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), (_, c)| (lo.min(*c), hi.max(*c)));
    assert_eq!((lo, hi), (41, 80), "the count did not carry on");
    // The new operator saw only the records read after the restart.
    let mut last = std::collections::BTreeMap::new();
    for (k, s) in sums.lock().iter() {
        let e = last.entry(*k).or_insert(0);
        *e = (*e).max(*s);
    }
    let total: u64 = last.values().sum();
    let expected: u64 = 2 * (100..200u64).map(|i| i % 5).sum::<u64>();
    assert_eq!(total, expected);
    Ok(())
}

/// Registers a far-off event-time timer per key and reports it when it
/// fires; fails once on purpose at record 150 of the run.
struct Timers {
    fail_at: Option<u64>,
    seen: u64,
}

impl KeyedProcessFunction<u64, u64> for Timers {
    type Out = u64;
    type Side = ();
    fn on_record(&mut self, ctx: &mut ProcessingContext<'_, u64, u64>, _v: u64) -> Result<()> {
        self.seen += 1;
        if Some(self.seen) == self.fail_at {
            return Err(Error::Operator {
                operator: "timers".into(),
                reason: "failing on purpose".into(),
            });
        }
        ctx.register_event_timer(1_000_000);
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut ProcessingContext<'_, u64, u64>, timer: Timer) -> Result<()> {
        assert_eq!(timer.time, 1_000_000);
        let k = *ctx.key();
        ctx.output(k);
        Ok(())
    }
}

/// Timers registered before a committed epoch fire after recovery, once
/// per key, even though the records that registered them are not replayed.
#[test]
fn timers_survive_recovery() -> R {
    let dir = tempfile::tempdir()?;
    let fired = Arc::new(Mutex::new(Vec::new()));
    let failed_once = Arc::new(AtomicBool::new(false));
    for attempt in 0..2 {
        let (sink, failed) = (fired.clone(), failed_once.clone());
        let result = run(config(dir.path(), 1), move |job| {
            let fail_at = (!failed.swap(true, Ordering::SeqCst)).then_some(150);
            job.source_with_event_time(
                "n",
                GeneratorSource::new(1, Some(300), |_, i| i),
                |i| *i,
                std::time::Duration::ZERO,
            )?
            // Keys 0..20 only before the failure, so their timers come
            // back only from the checkpoint.
            .key_by(|i| if *i < 100 { i % 20 } else { 20 + i % 20 })
            .process("timers", Timers { fail_at, seen: 0 })
            .sink("fired", CollectSink::new(sink.clone()))
        });
        match (attempt, result) {
            (0, Err(Error::Operator { .. })) => {}
            (1, Ok(_)) => {}
            (a, other) => panic!("attempt {a}: {other:?}"),
        }
    }
    let mut keys = fired.lock().clone();
    keys.sort_unstable();
    assert_eq!(keys, (0..40).collect::<Vec<u64>>());
    Ok(())
}
