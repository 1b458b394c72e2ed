//! Rescaling: a job committed with N workers restarts on M, each new
//! worker restoring the key groups it now owns (state and timers) from the
//! checkpoints of the old workers that held them, and the source
//! partitions with their offsets. After every rescale, committed output and
//! state equal those of a job that never rescaled.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gress_stream::{
    EpochPolicy, Error, FileSink, GeneratorSource, JobConfig, KeyedProcessFunction,
    ProcessingContext, Result, ValueStateDescriptor, WindowAssigner, WindowResult, run,
};
use serde::{Deserialize, Serialize};

type R = std::result::Result<(), Box<dyn std::error::Error>>;

const PARTITIONS: usize = 4;
const PER_PARTITION: u64 = 3_000;
const KEYS: u64 = 40;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ev {
    p: u64,
    i: u64,
}

fn key_of(e: &Ev) -> u64 {
    (e.p * 7 + e.i * 13) % KEYS
}

/// A running count and sum per key; with `fail_from = Some(e)`, fails at
/// the first record of epoch `e` or later once epoch `e - 2` is committed
/// (so every failing run leaves a commit behind).
struct Running {
    count: ValueStateDescriptor<(u64, u64)>,
    fail_from: Option<u64>,
    commits: std::path::PathBuf,
}

/// The newest committed epoch in `commits/`.
fn newest_commit(commits: &Path) -> Option<u64> {
    std::fs::read_dir(commits)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".commit")?.parse::<u64>().ok()
        })
        .max()
}

impl KeyedProcessFunction<u64, Ev> for Running {
    type Out = (u64, u64, u64);
    type Side = ();
    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, (u64, u64, u64)>,
        e: Ev,
    ) -> Result<()> {
        if let Some(from) = self.fail_from
            && ctx.epoch() >= from
            && newest_commit(&self.commits).is_some_and(|c| c + 2 >= from)
        {
            return Err(Error::Worker("injected failure".into()));
        }
        let mut now = (0, 0);
        ctx.value(&self.count)?.update(|c| {
            let (n, s) = c.unwrap_or((0, 0));
            now = (n + 1, s + e.i);
            Some(now)
        })?;
        let k = *ctx.key();
        ctx.output((k, now.0, now.1));
        Ok(())
    }
}

fn run_job(dir: &Path, workers: usize, fail_from: Option<u64>) -> Result<()> {
    let commits = dir.join("checkpoints").join("commits");
    let config = JobConfig::new("rescale")
        .with_workers(workers)
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_key_groups(16)
        .with_epochs(EpochPolicy::Records(250));
    let (running, windows) = (dir.join("running"), dir.join("windows"));
    run(config, move |job| {
        let events = job.source_with_event_time(
            "events",
            GeneratorSource::new(PARTITIONS, Some(PER_PARTITION), |p, i| Ev {
                p: p as u64,
                i,
            }),
            |e| e.i * 10,
            // Partitions run at different speeds; no record is ever late.
            Duration::from_secs(1_000),
        )?;
        events
            .clone()
            .key_by(key_of)
            .process(
                "running",
                Running {
                    count: ValueStateDescriptor::new("count"),
                    fail_from,
                    commits: commits.clone(),
                },
            )
            .sink("running", FileSink::new(running.clone()))?;
        events
            .map(|e| (key_of(&e), 1u64))
            .key_by(|(k, _)| *k)
            .window(WindowAssigner::tumbling(Duration::from_millis(2_000)))
            .reduce("per-window", |a: &(u64, u64), b: (u64, u64)| {
                (a.0, a.1 + b.1)
            })
            .sink("windows", FileSink::new(windows.clone()))
    })?;
    Ok(())
}

fn committed<T: serde::de::DeserializeOwned + Ord>(dir: &Path) -> Vec<T> {
    let mut all: Vec<_> = FileSink::read_committed(dir).expect("committed output");
    all.sort_unstable();
    all
}

/// Final (count, sum) per key, from the running output.
fn final_state(running: &[(u64, u64, u64)]) -> BTreeMap<u64, (u64, u64)> {
    let mut state = BTreeMap::new();
    for &(k, n, s) in running {
        let e = state.entry(k).or_insert((0, 0));
        if n > e.0 {
            *e = (n, s);
        }
    }
    state
}

#[test]
fn a_job_rescaled_from_2_to_1_3_4_and_back_to_2_equals_one_that_never_was() -> R {
    let reference = tempfile::tempdir()?;
    run_job(reference.path(), 2, None)?;
    let expected_running: Vec<(u64, u64, u64)> = committed(&reference.path().join("running"));
    let expected_windows: Vec<WindowResult<u64, (u64, u64)>> =
        committed(&reference.path().join("windows"));
    assert_eq!(expected_running.len(), PARTITIONS * PER_PARTITION as usize);

    let dir = tempfile::tempdir()?;
    // Each run fails part-way (a committed epoch behind it), and the next
    // one starts on another number of workers.
    for (workers, fail_from) in [(2, 2), (1, 4), (3, 6), (4, 8)] {
        let failed = run_job(dir.path(), workers, Some(fail_from));
        assert!(
            failed.is_err(),
            "{workers} workers: the injected failure stops the job"
        );
        // A commit stays behind (its output may still wait in `pending/`
        // for the next run's start to publish it).
        assert!(
            newest_commit(&dir.path().join("checkpoints").join("commits")).is_some(),
            "{workers} workers: something was committed"
        );
        let done: Vec<(u64, u64, u64)> = committed(&dir.path().join("running"));
        // Nothing committed twice so far, and no key counted past the
        // reference (a key's running sum depends on how partitions
        // interleave; its count does not).
        let reference_state = final_state(&expected_running);
        let mut seen = std::collections::BTreeSet::new();
        for &(k, n, _) in &done {
            assert!(
                seen.insert((k, n)),
                "{workers} workers: count {n} of key {k} committed twice"
            );
            assert!(
                n <= reference_state[&k].0,
                "{workers} workers: key {k} counted past the reference"
            );
        }
    }
    run_job(dir.path(), 2, None)?;
    let running: Vec<(u64, u64, u64)> = committed(&dir.path().join("running"));
    let windows: Vec<WindowResult<u64, (u64, u64)>> = committed(&dir.path().join("windows"));
    let counts = |r: &[(u64, u64, u64)]| r.iter().map(|&(k, n, _)| (k, n)).collect::<Vec<_>>();
    assert_eq!(
        counts(&running),
        counts(&expected_running),
        "running counts"
    );
    assert_eq!(
        final_state(&running),
        final_state(&expected_running),
        "final state"
    );
    assert_eq!(windows, expected_windows, "window results");
    Ok(())
}
