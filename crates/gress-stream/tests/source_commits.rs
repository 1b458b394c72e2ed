//! Sources hear which offsets are committed (for reporting, as a Kafka
//! consumer group's offsets): never an offset the job could read again
//! after a failure, never going back, and at the end where the input ends.

use std::collections::BTreeMap;
use std::sync::Arc;

use gress_stream::{
    EpochPolicy, Error, GeneratorSource, JobConfig, KeyedProcessFunction, PartitionReader, Poll,
    ProcessingContext, Result, Source, run,
};
use parking_lot::Mutex;

type R<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const PARTITIONS: usize = 5;
const PER_PARTITION: u64 = 3_000;

/// What the readers saw: per partition, where each run opened it and the
/// committed offsets reported, in order.
#[derive(Debug, Default)]
struct Log {
    opened: BTreeMap<usize, Vec<u64>>,
    reported: BTreeMap<usize, Vec<u64>>,
}

struct Reporting {
    inner: GeneratorSource<u64>,
    log: Arc<Mutex<Log>>,
}

struct Reader {
    partition: usize,
    inner: Box<dyn PartitionReader<u64>>,
    log: Arc<Mutex<Log>>,
}

impl PartitionReader<u64> for Reader {
    fn poll(&mut self, max: usize, out: &mut Vec<u64>) -> Result<Poll> {
        self.inner.poll(max, out)
    }
    fn offset(&self) -> u64 {
        self.inner.offset()
    }
    fn committed(&mut self, offset: u64) {
        let mut log = self.log.lock();
        log.reported.entry(self.partition).or_default().push(offset);
    }
}

impl Source for Reporting {
    type Record = u64;
    fn partitions(&self) -> usize {
        self.inner.partitions()
    }
    fn open(&mut self, partition: usize, offset: u64) -> Result<Box<dyn PartitionReader<u64>>> {
        let inner = self.inner.open(partition, offset)?;
        let mut log = self.log.lock();
        log.opened.entry(partition).or_default().push(offset);
        Ok(Box::new(Reader {
            partition,
            inner,
            log: Arc::clone(&self.log),
        }))
    }
}

/// Fails at its `n`th record once the job has committed an epoch.
struct FailAt {
    n: Option<u64>,
    seen: u64,
    commits: std::path::PathBuf,
}

impl KeyedProcessFunction<u64, u64> for FailAt {
    type Out = u64;
    type Side = ();
    fn on_record(&mut self, ctx: &mut ProcessingContext<'_, u64, u64>, v: u64) -> Result<()> {
        self.seen += 1;
        if self.n.is_some_and(|n| self.seen >= n)
            && std::fs::read_dir(&self.commits).is_ok_and(|mut d| d.next().is_some())
        {
            return Err(Error::Worker("injected failure".into()));
        }
        ctx.output(v);
        Ok(())
    }
}

fn job(
    dir: &std::path::Path,
    workers: usize,
    fail_at: Option<u64>,
    log: &Arc<Mutex<Log>>,
) -> Result<()> {
    let config = JobConfig::new("reported")
        .with_workers(workers)
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_epochs(EpochPolicy::Records(200));
    let commits = dir.join("checkpoints").join("commits");
    let log = Arc::clone(log);
    run(config, move |job| {
        let source = Reporting {
            inner: GeneratorSource::new(PARTITIONS, Some(PER_PARTITION), |p, i| {
                p as u64 * 100_000 + i
            }),
            log: Arc::clone(&log),
        };
        job.source("numbers", source)?
            .key_by(|v: &u64| *v % 13)
            .process(
                "fail",
                FailAt {
                    n: fail_at,
                    seen: 0,
                    commits: commits.clone(),
                },
            )
            .sink(
                "out",
                gress_stream::CollectSink::new(gress_stream::Collected::new()),
            )
    })?;
    Ok(())
}

#[test]
fn reported_offsets_never_run_ahead_of_recovery_and_end_at_the_end() -> R {
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for (workers, fail_at) in [
        (2, Some(1_500)),
        (1, Some(2_000)),
        (3, Some(1_000)),
        (2, None),
    ] {
        let log = Arc::new(Mutex::new(Log::default()));
        let result = job(dir.path(), workers, fail_at, &log);
        assert_eq!(result.is_err(), fail_at.is_some(), "{result:?}");
        runs.push(
            Arc::try_unwrap(log)
                .map_err(|_| "log still shared")?
                .into_inner(),
        );
    }
    let reported_before_failing: usize = runs[..runs.len() - 1]
        .iter()
        .map(|r| r.reported.values().map(Vec::len).sum::<usize>())
        .sum();
    assert!(
        reported_before_failing > 0,
        "the failing runs committed epochs and reported them"
    );
    for p in 0..PARTITIONS {
        for (i, pair) in runs.windows(2).enumerate() {
            let (run, next) = (&pair[0], &pair[1]);
            let resumed = next.opened[&p][0];
            let reported = run.reported.get(&p).cloned().unwrap_or_default();
            assert!(
                reported.windows(2).all(|w| w[0] <= w[1]),
                "run {i}, partition {p}: reported offsets went back: {reported:?}"
            );
            // Everything reported is committed: the next run resumes at or
            // after it, and never reads again what was reported done.
            assert!(
                reported.iter().all(|&o| o <= resumed),
                "run {i}, partition {p}: reported {reported:?}, next run resumed at {resumed}"
            );
        }
        let last = &runs[runs.len() - 1];
        assert_eq!(
            last.reported.get(&p).and_then(|r| r.last()),
            Some(&PER_PARTITION),
            "partition {p}: the complete run ends by reporting its end"
        );
    }
    Ok(())
}
