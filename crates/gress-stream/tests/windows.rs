//! Event-time windows: tumbling, sliding and session windows against
//! reference computations, allowed lateness and the late side output,
//! state cleanup, and recovery.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Ev, R, VecSource, disordered, kept_memory_backends, multiset, stored};
use gress_stream::{
    AggregateFunction, CollectSink, EpochPolicy, Error, FileSink, JobConfig, KeyedProcessFunction,
    ProcessingContext, WindowAssigner, WindowResult, run,
};
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

fn collect<T>() -> Arc<Mutex<Vec<T>>> {
    Arc::new(Mutex::new(Vec::new()))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Count and sum of the values, mergeable (for sessions).
#[derive(Debug)]
struct CountSum;

impl AggregateFunction for CountSum {
    type In = Ev;
    type Acc = (u64, i64);
    type Out = (u64, i64);

    fn create(&self) -> (u64, i64) {
        (0, 0)
    }

    fn add(&self, acc: &mut (u64, i64), input: Ev) {
        acc.0 += 1;
        acc.1 += input.2;
    }

    fn result(&self, acc: &(u64, i64)) -> (u64, i64) {
        *acc
    }

    fn merge(&self, a: (u64, i64), b: (u64, i64)) -> Option<(u64, i64)> {
        Some((a.0 + b.0, a.1 + b.1))
    }
}

/// A count that cannot merge accumulators.
#[derive(Debug)]
struct UnmergeableCount;

impl AggregateFunction for UnmergeableCount {
    type In = Ev;
    type Acc = u64;
    type Out = u64;

    fn create(&self) -> u64 {
        0
    }

    fn add(&self, acc: &mut u64, _input: Ev) {
        *acc += 1;
    }

    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Passes each record on with the event time it carries.
struct StampTime;

impl KeyedProcessFunction<u64, WindowResult<u64, Ev>> for StampTime {
    type Out = (WindowResult<u64, Ev>, u64);
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, Self::Out, ()>,
        value: WindowResult<u64, Ev>,
    ) -> gress_stream::Result<()> {
        let time = ctx.time();
        ctx.output((value, time));
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Tumbling(u64),
    Sliding(u64, u64),
    Session(u64),
}

impl Shape {
    fn assigner(self) -> WindowAssigner {
        match self {
            Shape::Tumbling(size) => WindowAssigner::tumbling(ms(size)),
            Shape::Sliding(size, slide) => WindowAssigner::sliding(ms(size), ms(slide)),
            Shape::Session(gap) => WindowAssigner::session(ms(gap)),
        }
    }

    /// The windows `[start, end)` holding time `t` (not for sessions).
    fn windows_of(self, t: u64) -> Vec<(u64, u64)> {
        let (size, slide) = match self {
            Shape::Tumbling(size) => (size, size),
            Shape::Sliding(size, slide) => (size, slide),
            Shape::Session(_) => return Vec::new(),
        };
        let (t, size, slide) = (t as i128, size as i128, slide as i128);
        // Every start k * slide with start <= t < start + size.
        let mut out = Vec::new();
        let mut k = t.div_euclid(slide);
        while k * slide + size > t {
            out.push(((k * slide).max(0) as u64, (k * slide + size) as u64));
            k -= 1;
        }
        out
    }
}

/// Every window of every key with its records, computed directly: what a
/// run in which no record is late fires, once per window.
fn reference(inputs: &[Vec<Ev>], shape: Shape) -> BTreeMap<(u64, u64, u64), Vec<Ev>> {
    let mut windows: BTreeMap<(u64, u64, u64), Vec<Ev>> = BTreeMap::new();
    let all = inputs.iter().flatten().copied();
    match shape {
        Shape::Session(gap) => {
            let mut by_key: BTreeMap<u64, Vec<Ev>> = BTreeMap::new();
            for e in all {
                by_key.entry(e.0).or_default().push(e);
            }
            for (key, mut records) in by_key {
                records.sort_by_key(|e| e.1);
                let mut current: Option<(u64, u64, Vec<Ev>)> = None;
                for e in records {
                    match &mut current {
                        // Touching sessions merge.
                        Some((_, end, members)) if e.1 <= *end => {
                            *end = (*end).max(e.1 + gap);
                            members.push(e);
                        }
                        _ => {
                            if let Some((s, end, members)) = current.take() {
                                windows.insert((key, s, end), members);
                            }
                            current = Some((e.1, e.1 + gap, vec![e]));
                        }
                    }
                }
                if let Some((s, end, members)) = current {
                    windows.insert((key, s, end), members);
                }
            }
        }
        _ => {
            for e in all {
                for (s, end) in shape.windows_of(e.1) {
                    windows.entry((e.0, s, end)).or_default().push(e);
                }
            }
        }
    }
    windows
}

fn sorted_values(records: &[Ev]) -> Vec<i64> {
    let mut v: Vec<i64> = records.iter().map(|e| e.2).collect();
    v.sort_unstable();
    v
}

/// Tumbling windows reduced per key, on 1 and 2 workers with checkpoints,
/// fire once per window with the reference sum, at event time `end - 1`,
/// and nothing is late when the disorder stays within the watermark bound.
#[test]
fn tumbling_windows_reduce_like_the_reference() -> R {
    let inputs = disordered(7, 3, 300, 7, 5, 20);
    let expected: Vec<(u64, u64, u64, i64)> = reference(&inputs, Shape::Tumbling(50))
        .into_iter()
        .map(|((k, s, e), records)| (k, s, e, records.iter().map(|r| r.2).sum()))
        .collect();
    for workers in [1, 2] {
        let dir = tempfile::tempdir()?;
        let (out, late) = (collect(), collect::<Ev>());
        let (out_sink, late_sink) = (out.clone(), late.clone());
        let source = VecSource::new(inputs.clone());
        run(
            config("tumbling", workers, Some(dir.path()), 40),
            move |job| {
                let (main, late) = job
                    .source_with_event_time("events", source.clone(), |e: &Ev| e.1, ms(20))?
                    .key_by(|e: &Ev| e.0)
                    .window(Shape::Tumbling(50).assigner())
                    .reduce_with_late("sum", |a: &Ev, b: Ev| (a.0, a.1.max(b.1), a.2 + b.2));
                late.sink("late", CollectSink::new(late_sink.clone()))?;
                main.key_by(|r| r.key)
                    .process("stamp", StampTime)
                    .sink("out", CollectSink::new(out_sink.clone()))
            },
        )?;
        let out = out.lock();
        for (r, time) in out.iter() {
            assert_eq!(
                *time,
                r.end - 1,
                "{workers} workers: {r:?} emitted at {time}"
            );
        }
        let mut got: Vec<_> = out
            .iter()
            .map(|(r, _)| (r.key, r.start, r.end, r.result.2))
            .collect();
        got.sort_unstable();
        assert_eq!(got, expected, "{workers} workers");
        assert!(
            late.lock().is_empty(),
            "{workers} workers: {:?}",
            late.lock()
        );
    }
    Ok(())
}

/// Sliding windows aggregated per key, on 1 and 2 workers with
/// checkpoints, fire once per window with the reference count and sum.
#[test]
fn sliding_windows_aggregate_like_the_reference() -> R {
    let inputs = disordered(11, 2, 250, 5, 6, 15);
    let shape = Shape::Sliding(60, 20);
    let expected: Vec<_> = reference(&inputs, shape)
        .into_iter()
        .map(|((k, s, e), records)| {
            (
                k,
                s,
                e,
                records.len() as u64,
                records.iter().map(|r| r.2).sum::<i64>(),
            )
        })
        .collect();
    for workers in [1, 2] {
        let dir = tempfile::tempdir()?;
        let out = collect();
        let sink = out.clone();
        let source = VecSource::new(inputs.clone());
        run(
            config("sliding", workers, Some(dir.path()), 25),
            move |job| {
                job.source_with_event_time("events", source.clone(), |e: &Ev| e.1, ms(15))?
                    .key_by(|e: &Ev| e.0)
                    .window(shape.assigner())
                    .aggregate("count-sum", CountSum)
                    .map(|r| (r.key, r.start, r.end, r.result.0, r.result.1))
                    .sink("out", CollectSink::new(sink.clone()))
            },
        )?;
        let mut got = out.lock().clone();
        got.sort_unstable();
        assert_eq!(got, expected, "{workers} workers");
    }
    Ok(())
}

/// Session windows, fed records out of order that bridge earlier sessions,
/// merge their contents and timers: on 1 and 2 workers with checkpoints,
/// `process` and `aggregate` see exactly the reference sessions.
#[test]
fn session_windows_merge_like_the_reference() -> R {
    // Even times and an odd gap: no record lands exactly on a session's
    // end, where whether it merges depends on the watermark.
    let inputs: Vec<Vec<Ev>> = disordered(23, 3, 200, 4, 6, 30)
        .into_iter()
        .map(|p| p.into_iter().map(|(k, t, v)| (k, t * 2, v)).collect())
        .collect();
    let shape = Shape::Session(21);
    let sessions = reference(&inputs, shape);
    let merged = sessions.values().filter(|r| r.len() > 1).count();
    assert!(
        merged > 10,
        "the input should make sessions of several records"
    );
    let expected: Vec<_> = sessions
        .iter()
        .map(|(&(k, s, e), records)| (k, s, e, sorted_values(records)))
        .collect();
    let expected_sums: Vec<_> = sessions
        .iter()
        .map(|(&(k, s, e), records)| {
            (
                k,
                s,
                e,
                records.len() as u64,
                records.iter().map(|r| r.2).sum::<i64>(),
            )
        })
        .collect();
    for workers in [1, 2] {
        let dir = tempfile::tempdir()?;
        let (out, sums) = (collect(), collect());
        let (out_sink, sums_sink) = (out.clone(), sums.clone());
        let source = VecSource::new(inputs.clone());
        run(
            config("sessions", workers, Some(dir.path()), 30),
            move |job| {
                job.source_with_event_time("events", source.clone(), |e: &Ev| e.1, ms(60))?
                    .key_by(|e: &Ev| e.0)
                    .window(shape.assigner())
                    .process("values", |_key: &u64, _w: &_, records: &[Ev]| {
                        sorted_values(records)
                    })
                    .map(|r| (r.key, r.start, r.end, r.result))
                    .sink("out", CollectSink::new(out_sink.clone()))?;
                job.source_with_event_time("again", source.clone(), |e: &Ev| e.1, ms(60))?
                    .key_by(|e: &Ev| e.0)
                    .window(shape.assigner())
                    .aggregate("count-sum", CountSum)
                    .map(|r| (r.key, r.start, r.end, r.result.0, r.result.1))
                    .sink("sums", CollectSink::new(sums_sink.clone()))
            },
        )?;
        let mut got = out.lock().clone();
        got.sort_unstable();
        assert_eq!(got, expected, "{workers} workers");
        let mut got = sums.lock().clone();
        got.sort_unstable();
        assert_eq!(got, expected_sums, "{workers} workers");
    }
    Ok(())
}

/// With one record per epoch and a watermark bound of 0, each record moves
/// the watermark to its time: runs the fixed input and returns the window
/// results and the late records.
/// Window results and late records.
type Outcome<Res> = (Vec<WindowResult<u64, Res>>, Vec<Ev>);

/// Builds windows over a keyed stream: results and late records.
type BuildWindows<Res> = for<'s> fn(
    gress_stream::KeyedStream<'s, u64, Ev>,
) -> (
    gress_stream::DataStream<'s, WindowResult<u64, Res>>,
    gress_stream::DataStream<'s, Ev>,
);

fn run_one_by_one<Res: gress_stream::Data>(
    name: &'static str,
    workers: usize,
    records: Vec<Ev>,
    build: BuildWindows<Res>,
) -> Result<Outcome<Res>, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (out, late) = (collect(), collect());
    let (out_sink, late_sink) = (out.clone(), late.clone());
    let source = VecSource::new(vec![records]);
    run(config(name, workers, Some(dir.path()), 1), move |job| {
        let keyed = job
            .source_with_event_time("events", source.clone(), |e: &Ev| e.1, ms(0))?
            .key_by(|e: &Ev| e.0);
        let (main, late) = build(keyed);
        late.sink("late", CollectSink::new(late_sink.clone()))?;
        main.sink("out", CollectSink::new(out_sink.clone()))
    })?;
    let out = out.lock().clone();
    let late = late.lock().clone();
    Ok((out, late))
}

/// Flink's default trigger with allowed lateness: a window fires when the
/// watermark reaches its end, a record within the allowed lateness re-fires
/// it with the updated result, and a record after end + lateness goes to
/// the late output instead of any window.
#[test]
fn a_record_within_the_allowed_lateness_refires_its_window() -> R {
    let records = vec![
        (1, 1, 1),
        (1, 5, 2),
        (1, 12, 4),  // watermark 12: [0, 10) fires with 3
        (1, 3, 8),   // late, within lateness: [0, 10) fires again with 11
        (1, 16, 16), // watermark 16: [0, 10) is done
        (1, 7, 32),  // too late: to the late output
        (2, 14, 64), // another key, in [10, 20)
    ];
    for workers in [1, 2] {
        let (out, late) = run_one_by_one("lateness", workers, records.clone(), |keyed| {
            keyed
                .window(WindowAssigner::tumbling(ms(10)))
                .allowed_lateness(ms(5))
                .reduce_with_late("sum", |a: &Ev, b: Ev| (a.0, a.1, a.2 + b.2))
        })?;
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.key, r.start, r.end, r.result.2))
            .collect();
        assert_eq!(
            multiset(&got),
            multiset(&[
                (1, 0, 10, 3),
                (1, 0, 10, 11),
                (1, 10, 20, 20),
                (2, 10, 20, 64)
            ]),
            "{workers} workers"
        );
        assert_eq!(late, vec![(1, 7, 32)], "{workers} workers");
    }
    Ok(())
}

/// Without allowed lateness a window's state goes when it fires: a record
/// of a fired window is late, and one falling between two hopping windows
/// is dropped without being late.
#[test]
fn without_lateness_a_record_of_a_fired_window_is_late() -> R {
    let records = vec![
        (1, 2, 1),
        (1, 10, 2),  // watermark 10: [0, 5) fires with 1
        (1, 4, 4),   // late
        (1, 11, 16), // [10, 15)
        (1, 17, 8),  // between windows (size 5 every 10), not late: dropped
    ];
    for workers in [1, 2] {
        let (out, late) = run_one_by_one("no-lateness", workers, records.clone(), |keyed| {
            keyed
                .window(WindowAssigner::sliding(ms(5), ms(10)))
                .reduce_with_late("sum", |a: &Ev, b: Ev| (a.0, a.1, a.2 + b.2))
        })?;
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.key, r.start, r.end, r.result.2))
            .collect();
        assert_eq!(
            multiset(&got),
            multiset(&[(1, 0, 5, 1), (1, 10, 15, 18)]),
            "{workers} workers"
        );
        assert_eq!(late, vec![(1, 4, 4)], "{workers} workers");
    }
    Ok(())
}

/// A late record within the allowed lateness that bridges a fired session
/// and a live one merges them, and the merged session fires at once if
/// its end has passed; sessions that are done turn later records late.
#[test]
fn late_records_merge_into_fired_sessions() -> R {
    let records = vec![
        (1, 0, 1),     // session [0, 10)
        (1, 30, 2),    // watermark 30: [0, 10) fires with [1]
        (1, 5, 4),     // late within lateness: [0, 15), fired at once with [1, 4]
        (1, 20, 8),    // touches [30, 40): [20, 40), not yet due
        (1, 100, 16),  // watermark 100: [20, 40) fires; [0, 15) is done at 65
        (1, 1, 32),    // too late, and no live session takes it
        (1, 95, 64),   // late within lateness, merges with [100, 110): [95, 110)
        (1, 200, 128), // watermark 200: [95, 110) fires
    ];
    for workers in [1, 2] {
        let (out, late) = run_one_by_one("late-sessions", workers, records.clone(), |keyed| {
            keyed
                .window(WindowAssigner::session(ms(10)))
                .allowed_lateness(ms(50))
                .process_with_late("values", |_key: &u64, _w: &_, records: &[Ev]| {
                    sorted_values(records)
                })
        })?;
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.start, r.end, r.result.clone()))
            .collect();
        let expected = vec![
            (0, 10, vec![1]),
            (0, 15, vec![1, 4]),
            (20, 40, vec![2, 8]),
            (95, 110, vec![16, 64]),
            (200, 210, vec![128]),
        ];
        assert_eq!(multiset(&got), multiset(&expected), "{workers} workers");
        assert_eq!(late, vec![(1, 1, 32)], "{workers} workers");
    }
    Ok(())
}

/// Once the watermark has passed every window (the sources ended), no
/// window contents, session sets or timers are left in any worker's
/// state, whatever the window kind and allowed lateness.
#[test]
fn window_state_and_timers_are_removed_once_windows_are_done() -> R {
    let inputs = disordered(31, 2, 300, 6, 5, 40);
    for workers in [1, 2] {
        let (factory, backends) = kept_memory_backends();
        let out = collect();
        let sink = out.clone();
        let source = VecSource::new(inputs.clone());
        let config = config("cleanup", workers, None, 20).with_backend(factory);
        run(config, move |job| {
            let shapes = [
                Shape::Tumbling(40),
                Shape::Sliding(40, 15),
                Shape::Session(9),
            ];
            for (i, shape) in shapes.into_iter().enumerate() {
                for lateness in [0, 25] {
                    // Bound 10 < disorder 40: some records are late.
                    job.source_with_event_time(
                        &format!("events-{i}-{lateness}"),
                        source.clone(),
                        |e: &Ev| e.1,
                        ms(10),
                    )?
                    .key_by(|e: &Ev| e.0)
                    .window(shape.assigner())
                    .allowed_lateness(ms(lateness))
                    .process(
                        &format!("w-{i}-{lateness}"),
                        |_k: &u64, _w: &_, r: &[Ev]| r.len(),
                    )
                    .map(|r| r.result)
                    .sink(
                        &format!("out-{i}-{lateness}"),
                        CollectSink::new(sink.clone()),
                    )?;
                }
            }
            Ok(())
        })?;
        assert!(!out.lock().is_empty());
        let backends = backends.lock();
        assert_eq!(backends.len(), workers);
        for (worker, backend) in backends.iter() {
            assert_eq!(stored(backend)?, (0, 0), "worker {worker} of {workers}");
        }
    }
    Ok(())
}

/// Zero sizes, slides and gaps, and session windows over an aggregate
/// function that cannot merge accumulators, fail the job at start.
#[test]
fn invalid_window_settings_fail_the_job() -> R {
    let cases: Vec<(&str, WindowAssigner, bool)> = vec![
        ("zero size", WindowAssigner::tumbling(ms(0)), false),
        ("zero slide", WindowAssigner::sliding(ms(10), ms(0)), false),
        ("zero gap", WindowAssigner::session(ms(0)), false),
        ("no merge", WindowAssigner::session(ms(10)), true),
    ];
    for (what, assigner, unmergeable) in cases {
        let source = VecSource::new(vec![vec![(1u64, 1u64, 1i64)]]);
        let result = run(config("invalid", 1, None, 10), move |job| {
            let windowed = job
                .source_with_event_time("events", source.clone(), |e: &Ev| e.1, ms(0))?
                .key_by(|e: &Ev| e.0)
                .window(assigner);
            if unmergeable {
                windowed
                    .aggregate("count", UnmergeableCount)
                    .sink("out", CollectSink::new(collect()))
            } else {
                windowed
                    .reduce("sum", |a: &Ev, _b: Ev| *a)
                    .sink("out", CollectSink::new(collect()))
            }
        });
        assert!(
            matches!(result, Err(Error::InvalidJob { what: "window", .. })),
            "{what}: {result:?}"
        );
    }
    Ok(())
}

/// A job failing part way through and restarted from its newest committed
/// epoch restores window contents, session sets and timers: the committed
/// output of both runs (through a file sink, which publishes at restart
/// what was committed before the failure) equals an uninterrupted run's,
/// on 1 and 2 workers.
#[test]
fn windows_resume_from_the_committed_epoch_after_a_failure() -> R {
    let inputs = disordered(47, 2, 400, 5, 4, 10);
    let tumbling: Vec<_> = reference(&inputs, Shape::Tumbling(30))
        .into_iter()
        .map(|((k, s, e), r)| (k, s, e, r.iter().map(|r| r.2).sum::<i64>()))
        .collect();
    // Times stay below 2 * 400 * 4 = 3200; gap 7 on even times (see the
    // session test) after doubling them.
    let sessions: Vec<_> = reference(
        &inputs
            .iter()
            .map(|p| p.iter().map(|&(k, t, v)| (k, t * 2, v)).collect())
            .collect::<Vec<_>>(),
        Shape::Session(7),
    )
    .into_iter()
    .map(|((k, s, e), r)| (k, s, e, r.iter().map(|r| r.2).sum::<i64>()))
    .collect();
    for workers in [1, 2] {
        let dir = tempfile::tempdir()?;
        let checkpoints = dir.path().join("checkpoints");
        let (out, sess) = (dir.path().join("out"), dir.path().join("sessions"));
        let job = |source: VecSource<Ev>| {
            let (out, sess) = (out.clone(), sess.clone());
            move |job: &mut gress_stream::JobBuilder<'_>| {
                job.source_with_event_time("events", source.clone(), |e: &Ev| e.1, ms(10))?
                    .key_by(|e: &Ev| e.0)
                    .window(WindowAssigner::tumbling(ms(30)))
                    .reduce("sum", |a: &Ev, b: Ev| (a.0, a.1, a.2 + b.2))
                    .map(|r| (r.key, r.start, r.end, r.result.2))
                    .sink("out", FileSink::new(out.clone()))?;
                job.source_with_event_time("doubled", source.clone(), |e: &Ev| e.1 * 2, ms(20))?
                    .key_by(|e: &Ev| e.0)
                    .window(WindowAssigner::session(ms(7)))
                    .reduce("session-sum", |a: &Ev, b: Ev| (a.0, a.1, a.2 + b.2))
                    .map(|r| (r.key, r.start, r.end, r.result.2))
                    .sink("sessions", FileSink::new(sess.clone()))
            }
        };
        let failing = VecSource::new(inputs.clone()).failing_at(200, checkpoints.clone());
        let first = run(
            config("recover", workers, Some(&checkpoints), 20),
            job(failing),
        );
        assert!(
            matches!(first, Err(Error::Source { .. })),
            "the first run should fail: {first:?}"
        );
        let report = run(
            config("recover", workers, Some(&checkpoints), 20),
            job(VecSource::new(inputs.clone())),
        )?;
        assert!(report.recovered_from.is_some());
        let mut got: Vec<(u64, u64, u64, i64)> = FileSink::read_committed(&out)?;
        got.sort_unstable();
        assert_eq!(got, tumbling, "{workers} workers");
        let mut got: Vec<(u64, u64, u64, i64)> = FileSink::read_committed(&sess)?;
        got.sort_unstable();
        assert_eq!(got, sessions, "{workers} workers");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Models

/// Which window function a model case runs.
#[derive(Debug, Clone, Copy)]
enum Function {
    Reduce,
    Aggregate,
    Process,
}

/// What a window function makes of a window's records, in one form for
/// all three: the sum; count and sum; the sorted values.
fn summary(function: Function, records: &[Ev]) -> Vec<i64> {
    let sum = records.iter().map(|r| r.2).sum::<i64>();
    match function {
        Function::Reduce => vec![sum],
        Function::Aggregate => vec![records.len() as i64, sum],
        Function::Process => sorted_values(records),
    }
}

fn shape_strategy() -> impl Strategy<Value = Shape> {
    prop_oneof![
        (1u64..50).prop_map(Shape::Tumbling),
        (1u64..60, 1u64..30).prop_map(|(size, slide)| Shape::Sliding(size, slide)),
        // Odd gaps (and even times): see the session test.
        (0u64..15).prop_map(|g| Shape::Session(2 * g + 1)),
    ]
}

fn function_strategy() -> impl Strategy<Value = Function> {
    prop_oneof![
        Just(Function::Reduce),
        Just(Function::Aggregate),
        Just(Function::Process),
    ]
}

/// Partitions of records whose disorder stays within `bound`.
fn ordered_enough(bound: u64) -> impl Strategy<Value = Vec<Vec<Ev>>> {
    let partition = prop::collection::vec((0u64..4, 0u64..8, 0..=bound, -50i64..50), 0..50)
        .prop_map(|steps| {
            let mut base = 0;
            steps
                .into_iter()
                .map(|(key, step, back, value)| {
                    base += step;
                    (key, base.saturating_sub(back), value)
                })
                .collect::<Vec<Ev>>()
        });
    prop::collection::vec(partition, 1..4)
}

/// (key, start, end, result) of each firing, and the late records.
type ModelOutcome = (Vec<(u64, u64, u64, Vec<i64>)>, Vec<Ev>);

fn run_model_case(
    workers: usize,
    epoch: u64,
    bound: u64,
    shape: Shape,
    function: Function,
    inputs: Vec<Vec<Ev>>,
) -> Result<ModelOutcome, Error> {
    let (out, late) = (collect(), collect());
    let (out_sink, late_sink) = (out.clone(), late.clone());
    let source = VecSource::new(inputs);
    run(config("model", workers, None, epoch), move |job| {
        let windowed = job
            .source_with_event_time("events", source.clone(), |e: &Ev| e.1, ms(bound))?
            .key_by(|e: &Ev| e.0)
            .window(shape.assigner());
        let (main, late) = match function {
            Function::Reduce => {
                let (main, late) =
                    windowed.reduce_with_late("w", |a: &Ev, b: Ev| (a.0, a.1, a.2 + b.2));
                (
                    main.map(|r| (r.key, r.start, r.end, vec![r.result.2])),
                    late,
                )
            }
            Function::Aggregate => {
                let (main, late) = windowed.aggregate_with_late("w", CountSum);
                (
                    main.map(|r| (r.key, r.start, r.end, vec![r.result.0 as i64, r.result.1])),
                    late,
                )
            }
            Function::Process => {
                let (main, late) =
                    windowed.process_with_late("w", |_k: &u64, _w: &_, r: &[Ev]| sorted_values(r));
                (main.map(|r| (r.key, r.start, r.end, r.result)), late)
            }
        };
        late.sink("late", CollectSink::new(late_sink.clone()))?;
        main.sink("out", CollectSink::new(out_sink.clone()))
    })?;
    let mut out = out.lock().clone();
    out.sort_unstable();
    let late = late.lock().clone();
    Ok((out, late))
}

/// The watermark after each epoch, by the source's rules: per partition
/// the largest time read so far minus the bound, or the end of time once
/// the partition has ended; the smallest over all partitions. Epoch `e`
/// holds records `[e * n, (e + 1) * n)` of every partition.
fn watermarks(inputs: &[Vec<Ev>], n: u64, bound: u64) -> Vec<u64> {
    let n = n as usize;
    let epochs = inputs
        .iter()
        .map(|p| p.len().saturating_sub(1) / n + 1)
        .max()
        .unwrap_or(1);
    (0..epochs)
        .map(|e| {
            inputs
                .iter()
                .map(|p| {
                    let read = ((e + 1) * n).min(p.len());
                    if read == p.len() {
                        u64::MAX
                    } else {
                        let max = p[..read].iter().map(|r| r.1).max().unwrap_or(0);
                        max.saturating_sub(bound)
                    }
                })
                .min()
                .unwrap_or(u64::MAX)
        })
        .collect()
}

/// What the tumbling or sliding windows of a run emit, modeled epoch by
/// epoch: per window the counts of its firings (each firing sees one
/// record more than the one before) and the sum of the last; and the late
/// records. Neither depends on the order of records within an epoch.
type Firings = BTreeMap<(u64, u64, u64), (Vec<u64>, i64)>;

fn lateness_model(
    inputs: &[Vec<Ev>],
    n: u64,
    bound: u64,
    lateness: u64,
    shape: Shape,
) -> (Firings, Vec<Ev>) {
    #[derive(Default)]
    struct Win {
        count: u64,
        sum: i64,
        timer: bool,
    }
    let mut firings: Firings = BTreeMap::new();
    let mut late = Vec::new();
    let mut live: BTreeMap<(u64, u64, u64), Win> = BTreeMap::new();
    let mut fire = |w: (u64, u64, u64), count: u64, sum: i64| {
        let f = firings.entry(w).or_default();
        f.0.push(count);
        f.1 = sum;
    };
    let mut watermark = 0;
    for (e, after) in watermarks(inputs, n, bound).into_iter().enumerate() {
        let (from, to) = (e * n as usize, (e + 1) * n as usize);
        for record in inputs
            .iter()
            .flat_map(|p| &p[from.min(p.len())..to.min(p.len())])
        {
            let windows: Vec<_> = shape
                .windows_of(record.1)
                .into_iter()
                .filter(|&(_, end)| end.saturating_add(lateness) > watermark)
                .collect();
            if windows.is_empty() && record.1 + lateness < watermark {
                late.push(*record);
            }
            for (start, end) in windows {
                let w = (record.0, start, end);
                let win = live.entry(w).or_default();
                win.count += 1;
                win.sum += record.2;
                if end <= watermark {
                    fire(w, win.count, win.sum);
                } else {
                    win.timer = true;
                }
            }
        }
        watermark = watermark.max(after);
        for (&w, win) in live.iter_mut() {
            if win.timer && w.2 <= watermark {
                win.timer = false;
                fire(w, win.count, win.sum);
            }
        }
        live.retain(|w, _| w.2.saturating_add(lateness) > watermark);
    }
    for f in firings.values_mut() {
        f.0.sort_unstable();
    }
    (firings, late)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Records whose disorder stays within the watermark bound are never
    /// late: every window kind and function, on 1 and 2 workers and any
    /// epoch size, fires each window once with exactly its records.
    #[test]
    fn windows_match_a_model_when_nothing_is_late(
        workers in 1usize..=2,
        epoch in 1u64..20,
        bound in 0u64..30,
        shape in shape_strategy(),
        function in function_strategy(),
        seed_inputs in ordered_enough(29),
    ) {
        // Cap the disorder at this case's bound, and double the times for
        // sessions (even times, odd gaps).
        let inputs: Vec<Vec<Ev>> = seed_inputs
            .into_iter()
            .map(|p| {
                let mut max = 0u64;
                p.into_iter()
                    .map(|(k, t, v)| {
                        let t = t.max(max.saturating_sub(bound));
                        max = max.max(t);
                        match shape {
                            Shape::Session(_) => (k, t * 2, v),
                            _ => (k, t, v),
                        }
                    })
                    .collect()
            })
            .collect();
        let bound = match shape {
            Shape::Session(_) => bound * 2,
            _ => bound,
        };
        let expected: Vec<_> = reference(&inputs, shape)
            .into_iter()
            .map(|((k, s, e), r)| (k, s, e, summary(function, &r)))
            .collect();
        let (got, late) = run_model_case(workers, epoch, bound, shape, function, inputs)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, expected);
        prop_assert!(late.is_empty(), "late: {:?}", late);
    }

    /// With records later than the watermark bound, tumbling and sliding
    /// windows with allowed lateness fire, re-fire and drop records exactly
    /// as the epoch-by-epoch model of the watermark says, on 1 and 2
    /// workers.
    #[test]
    fn lateness_matches_an_epoch_model(
        workers in 1usize..=2,
        epoch in 1u64..10,
        bound in 0u64..10,
        lateness in 0u64..30,
        shape in shape_strategy().prop_filter("not sessions", |s| !matches!(s, Shape::Session(_))),
        inputs in ordered_enough(40),
    ) {
        let (model, model_late) = lateness_model(&inputs, epoch, bound, lateness, shape);
        let (out, late) = (collect(), collect());
        let (out_sink, late_sink) = (out.clone(), late.clone());
        let source = VecSource::new(inputs);
        let config = config("lateness-model", workers, None, epoch);
        run(config, move |job| {
            let (main, late) = job
                .source_with_event_time("events", source.clone(), |e: &Ev| e.1, ms(bound))?
                .key_by(|e: &Ev| e.0)
                .window(shape.assigner())
                .allowed_lateness(ms(lateness))
                .aggregate_with_late("w", CountSum);
            late.sink("late", CollectSink::new(late_sink.clone()))?;
            main.sink("out", CollectSink::new(out_sink.clone()))
        })
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut got: Firings = BTreeMap::new();
        let mut last_count = BTreeMap::new();
        for r in out.lock().iter() {
            let w = (r.key, r.start, r.end);
            let f = got.entry(w).or_default();
            f.0.push(r.result.0);
            if last_count.get(&w).is_none_or(|&c| c < r.result.0) {
                last_count.insert(w, r.result.0);
                f.1 = r.result.1;
            }
        }
        for f in got.values_mut() {
            f.0.sort_unstable();
        }
        prop_assert_eq!(got, model);
        prop_assert_eq!(multiset(&late.lock()), multiset(&model_late));
    }
}
