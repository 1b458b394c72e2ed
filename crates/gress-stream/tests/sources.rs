//! Sources: idle partitions do not stop a job, files are read to their
//! last byte and a file shorter than its committed offset is an error, and
//! re-timed streams carry watermarks of their new times across a recovery.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::Duration;

use gress_stream::{
    CollectSink, EpochPolicy, Error, FileSink, FileSource, GeneratorSource, JobConfig, JobReport,
    PartitionReader, Poll, Result, Source, WindowAssigner, WindowResult, run,
};
use parking_lot::Mutex;

mod common;
use common::bounded;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

/// Partition 0: `n` records `(0, t)` with event times `0, 1, 2, ...`, at
/// most `per_poll` per poll, every other poll none. Partition 1: nothing (idle) until partition 0
/// has ended and `linger` more polls have passed, then its end.
#[derive(Clone)]
struct OneBusyOneIdle {
    n: u64,
    per_poll: usize,
    linger: u64,
    busy_done: Arc<AtomicBool>,
}

struct Busy {
    next: u64,
    n: u64,
    per_poll: usize,
    done: Arc<AtomicBool>,
    /// Every other poll has nothing: the source comes back after a few
    /// milliseconds, so the records spread over many short epochs.
    pause: bool,
}

impl PartitionReader<(u64, u64)> for Busy {
    fn poll(&mut self, max: usize, out: &mut Vec<(u64, u64)>) -> Result<Poll> {
        self.pause = !self.pause;
        if self.pause {
            return Ok(Poll::Idle);
        }
        let until = self.n.min(self.next + max.min(self.per_poll) as u64);
        out.extend((self.next..until).map(|t| (0, t)));
        self.next = until;
        if self.next >= self.n {
            self.done.store(true, Ordering::Release);
            return Ok(Poll::End);
        }
        Ok(Poll::Ready)
    }
    fn offset(&self) -> u64 {
        self.next
    }
}

struct Idle {
    busy_done: Arc<AtomicBool>,
    linger: u64,
}

impl PartitionReader<(u64, u64)> for Idle {
    fn poll(&mut self, _max: usize, _out: &mut Vec<(u64, u64)>) -> Result<Poll> {
        if !self.busy_done.load(Ordering::Acquire) {
            return Ok(Poll::Idle);
        }
        if self.linger > 0 {
            self.linger -= 1;
            return Ok(Poll::Idle);
        }
        Ok(Poll::End)
    }
    fn offset(&self) -> u64 {
        0
    }
}

impl Source for OneBusyOneIdle {
    type Record = (u64, u64);
    fn partitions(&self) -> usize {
        2
    }
    fn open(&mut self, p: usize, offset: u64) -> Result<Box<dyn PartitionReader<(u64, u64)>>> {
        Ok(match p {
            0 => Box::new(Busy {
                next: offset,
                n: self.n,
                per_poll: self.per_poll,
                done: self.busy_done.clone(),
                pause: false,
            }),
            _ => Box::new(Idle {
                busy_done: self.busy_done.clone(),
                linger: self.linger,
            }),
        })
    }
}

/// Story: under `Records(n)` an epoch closed only once every partition
/// had `n` records, so one partition with nothing to read stopped the
/// job: no epoch closed, nothing committed, and here the busy partition
/// could not even finish. With an idle timeout the idle partition no
/// longer holds epochs open.
#[test]
fn an_idle_partition_does_not_hold_epochs_under_records() -> R {
    let dir = tempfile::tempdir()?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let cp = dir.path().to_path_buf();
    let report = bounded(move || {
        run(
            JobConfig::new("idle-records")
                .with_checkpoint_dir(cp)
                .with_epochs(EpochPolicy::Records(100))
                .with_idle_timeout(Duration::from_millis(30)),
            move |job| {
                let source = OneBusyOneIdle {
                    n: 1_000,
                    per_poll: 64,
                    linger: 0,
                    busy_done: Arc::default(),
                };
                job.source("s", source)?
                    .sink("out", CollectSink::new(sink.clone()))
            },
        )
    })?;
    assert_eq!(out.lock().len(), 1_000);
    assert!(report.epochs_cut >= 10, "{report:?}");
    Ok(())
}

/// Story: under `Interval`, the watermark is the smallest over the
/// partitions, so an idle partition froze event time and no window fired
/// until the job ended. With an idle timeout it leaves the minimum: the
/// windows of the busy partition fire while the idle one still runs.
#[test]
fn an_idle_partition_does_not_freeze_event_time() -> R {
    let dir = tempfile::tempdir()?;
    let out_dir = dir.path().join("out");
    let cp = dir.path().join("cp");
    let sink_dir = out_dir.clone();
    bounded(move || {
        run(
            JobConfig::new("idle-interval")
                .with_checkpoint_dir(cp)
                .with_epochs(EpochPolicy::Interval(Duration::from_millis(5)))
                .with_idle_timeout(Duration::from_millis(20)),
            move |job| {
                let source = OneBusyOneIdle {
                    n: 2_000,
                    per_poll: 8,
                    // The idle partition ends long after the busy one.
                    linger: 200,
                    busy_done: Arc::default(),
                };
                job.source_with_event_time("s", source, |r: &(u64, u64)| r.1, Duration::ZERO)?
                    .key_by(|r| r.0)
                    .window(WindowAssigner::tumbling(Duration::from_millis(100)))
                    .reduce("per-100ms", |a, b| (a.0, a.1.max(b.1)))
                    .sink("out", FileSink::new(sink_dir.clone()))
            },
        )
    })?;
    let files = FileSink::committed_files(&out_dir)?;
    let windows: usize = FileSink::read_committed::<WindowResult<u64, (u64, u64)>>(&out_dir)?.len();
    assert_eq!(windows, 20);
    // Windows were committed over several epochs, not all at the end.
    assert!(
        files.len() >= 2,
        "every window fired in one epoch: {files:?}"
    );
    Ok(())
}

/// Story: a `FileSource` treated a last line without its line break as
/// still being written and ended before it, silently losing it. A file is
/// read to its end as it is.
#[test]
fn a_last_line_without_a_line_break_is_read() -> R {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "1\n2\n3")?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    run(JobConfig::new("last-line"), move |job| {
        job.source("lines", FileSource::<u64>::json_lines(vec![input.clone()]))?
            .sink("out", CollectSink::new(sink.clone()))
    })?;
    let mut got = out.lock().clone();
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3]);
    Ok(())
}

/// A file truncated below the offset a committed epoch read up to is an
/// error naming it, not a silent restart from a wrong position.
#[test]
fn a_file_shorter_than_its_committed_offset_is_an_error() -> R {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.txt");
    let text: String = (0..100).map(|i| format!("{i}\n")).collect();
    std::fs::write(&input, &text)?;
    let job = |input: PathBuf, cp: PathBuf| {
        run(
            JobConfig::new("truncated").with_checkpoint_dir(cp),
            move |job| {
                job.source("lines", FileSource::<u64>::json_lines(vec![input.clone()]))?
                    .sink("out", CollectSink::new(gress_stream::Collected::new()))
            },
        )
    };
    job(input.clone(), dir.path().join("cp"))?;
    std::fs::write(&input, "1\n2\n")?;
    match job(input, dir.path().join("cp")) {
        Err(Error::Source { reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
        other => panic!("expected a source error, got {other:?}"),
    }
    Ok(())
}

/// Counts per key and 100 ms of the new event time, over records re-timed
/// after the source.
fn retimed_counts(cp: PathBuf, out: PathBuf, fail_after: Option<u64>) -> Result<JobReport> {
    run(
        JobConfig::new("retimed")
            .with_workers(2)
            .with_checkpoint_dir(cp)
            .with_epochs(EpochPolicy::Records(50)),
        move |job| {
            let seen = Arc::new(AtomicU64::new(0));
            job.source(
                "n",
                GeneratorSource::new(2, Some(600), |p, i| (p as u64, i * 3 + p as u64)),
            )?
            .map(move |r| {
                if let Some(n) = fail_after {
                    assert!(
                        seen.fetch_add(1, Ordering::Relaxed) < n,
                        "failing on purpose"
                    );
                }
                r
            })
            .with_event_time("retime", |r: &(u64, u64)| r.1, Duration::from_millis(20))
            .key_by(|r| r.0)
            .window(WindowAssigner::tumbling(Duration::from_millis(100)))
            .aggregate("counts", Count)
            .sink("out", FileSink::new(out.clone()))
        },
    )
}

struct Count;
impl gress_stream::AggregateFunction for Count {
    type In = (u64, u64);
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: (u64, u64)) {
        *acc += 1;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Story: `with_event_time` changed records' times but passed on the
/// source's watermarks, which knew nothing of the new times (here: none).
/// Now it makes watermarks from the new times and records its high mark in
/// checkpoints: windows fire on the new times, exactly once each with
/// every record, and a run that fails part-way and recovers commits the
/// same windows as one that does not.
#[test]
fn re_timed_streams_carry_their_own_watermarks() -> R {
    let dir = tempfile::tempdir()?;
    let clean = dir.path().join("clean");
    retimed_counts(dir.path().join("cp1"), clean.clone(), None)?;
    let got = FileSink::read_committed::<WindowResult<u64, u64>>(&clean)?;
    let mut expected: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for p in 0..2u64 {
        for i in 0..600u64 {
            let t = i * 3 + p;
            *expected.entry((p, t - t % 100)).or_default() += 1;
        }
    }
    let got_map: BTreeMap<(u64, u64), u64> =
        got.iter().map(|w| ((w.key, w.start), w.result)).collect();
    assert_eq!(got.len(), expected.len(), "a window fired more than once");
    assert_eq!(got_map, expected);

    let (cp, out) = (dir.path().join("cp2"), dir.path().join("out"));
    let first = retimed_counts(cp.clone(), out.clone(), Some(350));
    assert!(first.is_err(), "the first run was to fail");
    retimed_counts(cp, out.clone(), None)?;
    let mut again = FileSink::read_committed::<WindowResult<u64, u64>>(&out)?;
    let mut got = got;
    again.sort();
    got.sort();
    assert_eq!(again, got);
    Ok(())
}

/// Partition 0: 5 records, then nothing for `pause` polls, then 5 more and
/// its end.
#[derive(Clone)]
struct Slow {
    pause: u64,
}

struct SlowReader {
    next: u64,
    pause: u64,
}

impl PartitionReader<u64> for SlowReader {
    fn poll(&mut self, _max: usize, out: &mut Vec<u64>) -> Result<Poll> {
        if self.next == 5 && self.pause > 0 {
            self.pause -= 1;
            return Ok(Poll::Idle);
        }
        let until = if self.next < 5 { 5 } else { 10 };
        out.extend(self.next..until);
        self.next = until;
        Ok(if self.next == 10 {
            Poll::End
        } else {
            Poll::Ready
        })
    }
    fn offset(&self) -> u64 {
        self.next
    }
}

impl Source for Slow {
    type Record = u64;
    fn partitions(&self) -> usize {
        1
    }
    fn open(&mut self, _p: usize, offset: u64) -> Result<Box<dyn PartitionReader<u64>>> {
        Ok(Box::new(SlowReader {
            next: offset,
            pause: self.pause,
        }))
    }
}

/// Under `Records(n)` an epoch waits for `n` records of every partition; a
/// slow partition held output back for as long as it took. With a maximum
/// epoch duration, the records read so far are committed within it: here
/// the first five records commit long before the partition ends.
#[test]
fn a_maximum_epoch_duration_commits_a_slow_partition() -> R {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let sink = out.clone();
    let cp = dir.path().join("cp");
    bounded(move || {
        run(
            JobConfig::new("slow")
                .with_checkpoint_dir(cp)
                .with_epochs(EpochPolicy::Records(1_000))
                .with_max_epoch_duration(Duration::from_millis(20)),
            move |job| {
                job.source("s", Slow { pause: 100 })?
                    .sink("out", FileSink::new(sink.clone()))
            },
        )
    })?;
    let files = FileSink::committed_files(&out)?;
    assert!(files.len() >= 2, "all records in one epoch: {files:?}");
    let first: Vec<u64> = serde_json::from_str::<Vec<u64>>(&format!(
        "[{}]",
        std::fs::read_to_string(&files[0])?
            .trim()
            .replace('\n', ",")
    ))?;
    assert_eq!(first, [0, 1, 2, 3, 4]);
    Ok(())
}

/// Story: an `Interval` epoch took whatever its sources read in its time,
/// so a fast source with a long interval filled memory with the records of
/// the epochs in flight. With `max_epoch_records` an epoch closes once a
/// source's partitions on a worker have read that many: here an hour-long
/// interval still commits 10,000 records as 10 epochs of 1,000 per worker.
#[test]
fn an_interval_epoch_closes_at_its_record_bound() -> R {
    let dir = tempfile::tempdir()?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&out);
    let cp = dir.path().join("cp");
    let report = bounded(move || {
        run(
            JobConfig::new("bounded-epochs")
                .with_workers(2)
                .with_checkpoint_dir(cp)
                .with_epochs(EpochPolicy::Interval(Duration::from_secs(3600)))
                .with_max_epoch_records(1_000),
            move |job| {
                job.source("n", GeneratorSource::new(2, Some(10_000), |_, i| i))?
                    .key_by(|n| n % 100)
                    .count("count")
                    .sink("out", CollectSink::new(Arc::clone(&sink)))
            },
        )
    })?;
    // Each worker reads one partition of 10,000 records.
    assert!(
        report.epochs_cut >= 2 * 10,
        "{} epochs cut",
        report.epochs_cut
    );
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (key, count) in out.lock().iter() {
        let c = last.entry(*key).or_default();
        *c = (*c).max(*count);
    }
    assert_eq!(last.len(), 100);
    assert!(last.values().all(|&c| c == 200), "{last:?}");
    Ok(())
}
