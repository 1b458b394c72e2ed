//! Running a query as a job (clean, failing part-way, rescaled) and
//! reading its committed output back.

#![allow(dead_code)]

pub mod reference;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gress_nexmark::{Event, NexmarkSettings, NexmarkSource};
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::checkpoint::Checkpointable;
use gress_stream::{
    BackendFactory, Change, ChangelogTable, DataStream, EpochPolicy, Error, FileSink, JobConfig,
    PartitionReader, Poll, Source, run,
};

/// Builds a query on the events and sinks its output under the path.
pub type Build = fn(DataStream<'_, Event>, &Path) -> gress_stream::Result<()>;

/// The events of the reference tests: the Flink suite's generator at
/// 10,000 events per second of event time, so 200,000 events span 20 s
/// and windows of 10 s open and close.
pub fn settings(events: u64) -> NexmarkSettings {
    NexmarkSettings::new(events, 4).with_rate(10_000)
}

/// The events of the failure and rescale tests: 40,000 events over 20 s.
pub fn small() -> NexmarkSettings {
    NexmarkSettings::new(40_000, 4).with_rate(2_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    RocksDb,
}

/// A Nexmark source whose partitions stop at `at` until the job has
/// committed an epoch, then fail.
struct Failing {
    inner: NexmarkSource,
    at: Option<u64>,
    commits: PathBuf,
}

struct FailingReader {
    inner: Box<dyn PartitionReader<Event>>,
    at: Option<u64>,
    commits: PathBuf,
}

fn committed_any(commits: &Path) -> bool {
    std::fs::read_dir(commits).is_ok_and(|d| {
        d.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".commit"))
    })
}

impl PartitionReader<Event> for FailingReader {
    fn poll(&mut self, max: usize, out: &mut Vec<Event>) -> gress_stream::Result<Poll> {
        let mut max = max as u64;
        if let Some(at) = self.at {
            let offset = self.inner.offset();
            if offset >= at {
                if committed_any(&self.commits) {
                    return Err(Error::Source {
                        source_name: "nexmark".into(),
                        reason: format!("failing on purpose at offset {at}"),
                    });
                }
                return Ok(Poll::Idle);
            }
            max = max.min(at - offset);
        }
        self.inner.poll(max as usize, out)
    }

    fn offset(&self) -> u64 {
        self.inner.offset()
    }
}

impl Source for Failing {
    type Record = Event;

    fn partitions(&self) -> usize {
        self.inner.partitions()
    }

    fn open(
        &mut self,
        partition: usize,
        offset: u64,
    ) -> gress_stream::Result<Box<dyn PartitionReader<Event>>> {
        Ok(Box::new(FailingReader {
            inner: self.inner.open(partition, offset)?,
            at: self.at,
            commits: self.commits.clone(),
        }))
    }
}

fn backend(kind: Backend, dir: &Path) -> BackendFactory {
    match kind {
        Backend::Memory => BackendFactory::memory(),
        Backend::RocksDb => {
            let dir = dir.join("state");
            BackendFactory::new(move |worker| {
                let mut config = RocksDbConfig::new(dir.join(format!("worker-{worker}")));
                config.write_buffer_size = 4 << 20;
                config.block_cache_size = 8 << 20;
                Ok(Arc::new(RocksDbStateBackend::open(config)?) as Arc<dyn Checkpointable>)
            })
        }
    }
}

/// Runs the job once on `workers` workers in `dir`; with `fail_at`, its
/// source fails at that offset of every partition once an epoch is
/// committed.
pub fn run_once(
    dir: &Path,
    settings: &NexmarkSettings,
    kind: Backend,
    workers: usize,
    fail_at: Option<u64>,
    build: Build,
) -> gress_stream::Result<gress_stream::JobReport> {
    let config = JobConfig::new("nexmark")
        .with_workers(workers)
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_epochs(EpochPolicy::Records(1_000))
        .with_backend(backend(kind, dir));
    let settings = settings.clone();
    let out = dir.join("out");
    let commits = dir.join("checkpoints").join("commits");
    run(config, move |job| {
        let source = Failing {
            inner: NexmarkSource::new(settings.clone()),
            at: fail_at,
            commits: commits.clone(),
        };
        let events =
            job.source_with_event_time("events", source, Event::time, settings.out_of_orderness)?;
        build(events, &out)
    })
}

/// Runs the job to its end: clean, or failing part-way on 2 workers and
/// then finishing on `then` workers. Returns where the output is.
pub fn run_job(
    dir: &Path,
    settings: &NexmarkSettings,
    kind: Backend,
    failure: Option<usize>,
    build: Build,
) -> PathBuf {
    if let Some(then) = failure {
        let per_partition = settings.events / settings.partitions as u64;
        let failed = run_once(dir, settings, kind, 2, Some(per_partition / 2), build);
        assert!(failed.is_err(), "the injected failure stops the job");
        run_once(dir, settings, kind, then, None, build).expect("the job recovers");
    } else {
        run_once(dir, settings, kind, 2, None, build).expect("the job runs");
    }
    dir.join("out")
}

/// The committed records under `out`.
pub fn read<T: serde::de::DeserializeOwned>(out: &Path) -> Vec<T> {
    FileSink::read_committed(out).expect("committed output")
}

/// Rows, sorted, as text.
pub fn rows<T: Debug + Ord>(mut v: Vec<T>) -> Vec<String> {
    v.sort();
    v.iter().map(|r| format!("{r:?}")).collect()
}

/// The table a changelog produces (well formed, or the test fails), as
/// sorted text.
pub fn table<T: Debug + Ord + Clone>(changes: Vec<Change<T>>) -> Vec<String> {
    let table = ChangelogTable::from_changes(changes).expect("a well-formed changelog");
    table.rows().into_iter().map(|r| format!("{r:?}")).collect()
}

/// Checks a query: the clean run's output equals the reference over the
/// same events.
pub fn matches_reference(
    settings: &NexmarkSettings,
    build: Build,
    output: impl Fn(&Path) -> Vec<String>,
    reference: impl Fn(&[Event]) -> Vec<String>,
) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let events: Vec<Event> = settings.generate().collect();
    let expected = reference(&events);
    assert!(!expected.is_empty(), "the reference has rows");
    eprintln!("{} rows expected", expected.len());
    let out = run_job(dir.path(), settings, Backend::Memory, None, build);
    let got = output(&out);
    assert_eq!(got.len(), expected.len(), "rows");
    assert!(got == expected, "the output differs from the reference");
}

/// Checks a query under failures: on each backend, a run that fails
/// part-way and recovers, and one that fails and resumes on 3 workers,
/// commit what a clean run does (and that equals the reference).
pub fn survives_failures(
    build: Build,
    output: impl Fn(&Path) -> Vec<String>,
    reference: impl Fn(&[Event]) -> Vec<String>,
) {
    let settings = small();
    let events: Vec<Event> = settings.generate().collect();
    let expected = reference(&events);
    assert!(!expected.is_empty(), "the reference has rows");
    let clean = tempfile::tempdir().expect("a temporary directory");
    let out = run_job(clean.path(), &settings, Backend::Memory, None, build);
    assert!(
        output(&out) == expected,
        "the clean run differs from the reference"
    );
    for kind in [Backend::Memory, Backend::RocksDb] {
        for then in [2, 3] {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let out = run_job(dir.path(), &settings, kind, Some(then), build);
            let got = output(&out);
            assert!(
                got == expected,
                "{kind:?}, failed on 2 workers and resumed on {then}: {} rows, {} expected",
                got.len(),
                expected.len()
            );
        }
    }
}
