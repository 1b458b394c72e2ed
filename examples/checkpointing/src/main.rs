//! Checkpoint and recovery, end to end, on gress-stream: a keyed count of
//! words runs on two workers, each with its own RocksDB state, and every
//! epoch is a checkpoint that records the source offsets it matches
//! (incremental: each SST file is stored once and shared by the
//! checkpoints that need it). The machine fails part-way: the process
//! aborts, and its disk, with the RocksDB state, is lost. A new instance on
//! an empty disk recovers from the newest committed epoch, replays the
//! source from the offsets recorded with it, and ends with exactly the
//! counts of a run that never failed: every running count committed once.
//!
//! Instance 1 is this program again, in a child process, so that its
//! failure is as abrupt as a machine's.
//!
//! Run with `./scripts/example checkpointing`; it works in
//! `./example-data/checkpointing` (`--data-dir` for another directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use gress_checkpoint::{Catalog, LocalStorage};
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::Checkpointable;
use gress_stream::{
    BackendFactory, EpochPolicy, FileSink, GeneratorSource, JobConfig, JobReport, latest_commit,
    run,
};

const PARTITIONS: usize = 4;
const PER_PARTITION: u64 = 100_000;
const EVENTS: u64 = PARTITIONS as u64 * PER_PARTITION;
const WORDS: u64 = 5_000;
const WORKERS: usize = 2;
/// Events of each partition in one epoch, and so between two checkpoints.
const EPOCH_RECORDS: u64 = 5_000;
/// Set in the child process that runs instance 1.
const INSTANCE_1: &str = "EXAMPLE_CHECKPOINTING_INSTANCE_1";

/// The source: event `i` of partition `p` is a word.
fn word(p: usize, i: u64) -> String {
    let offset = p as u64 * PER_PARTITION + i;
    format!("word-{:05}", offset.wrapping_mul(2_654_435_761) % WORDS)
}

/// RocksDB state for each worker under `dir`.
fn rocksdb(dir: PathBuf) -> BackendFactory {
    BackendFactory::new(move |worker| {
        let config = RocksDbConfig::new(dir.join(format!("worker-{worker}")));
        Ok(Arc::new(RocksDbStateBackend::open(config)?) as Arc<dyn Checkpointable>)
    })
}

/// Counts the words with state in `state`, checkpoints and output under
/// `root`; with `fail_after`, the process aborts after that many events.
fn count_words(root: &Path, state: PathBuf, fail_after: Option<u64>) -> Result<JobReport> {
    let config = JobConfig::new("word-count")
        .with_workers(WORKERS)
        .with_checkpoint_dir(root.join("checkpoints"))
        .with_epochs(EpochPolicy::Records(EPOCH_RECORDS))
        .with_backend(rocksdb(state));
    let output = root.join("output");
    let seen = Arc::new(AtomicU64::new(0));
    Ok(run(config, move |job| {
        let seen = Arc::clone(&seen);
        job.source(
            "words",
            GeneratorSource::new(PARTITIONS, Some(PER_PARTITION), word),
        )?
        .inspect(move |_| {
            let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
            if fail_after == Some(n) {
                println!("instance 1: the machine fails after {n} events");
                std::process::abort();
            }
        })
        .key_by(|w: &String| w.clone())
        .count("count")
        .sink("counts", FileSink::new(output.clone()))
    })?)
}

/// Bytes of the files under `dir`.
fn disk_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// A keyed count that loses its machine and recovers exactly.
#[derive(Debug, clap::Parser)]
struct Args {
    #[command(flatten)]
    program: gress_app::ProgramArgs,
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    if let Some(root) = std::env::var_os(INSTANCE_1) {
        // The directory the parent prepared.
        let root = PathBuf::from(root);
        gress_app::log::init(args.program.log_format);
        count_words(&root, root.join("state-1"), Some(EVENTS * 3 / 5))?;
        bail!("instance 1 was meant to fail");
    }
    let root = &args.program.start(
        "example-checkpointing",
        Path::new("example-data/checkpointing"),
    )?;

    // --- Instance 1: count with a checkpoint every epoch, then fail. ---
    println!(
        "instance 1: counting {EVENTS} words on {WORKERS} workers with RocksDB state, a checkpoint every {} events",
        EPOCH_RECORDS * PARTITIONS as u64
    );
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(INSTANCE_1, root)
        .status()?;
    if status.success() {
        bail!("instance 1 did not fail");
    }
    let checkpoints = LocalStorage::new(root.join("checkpoints"))?;
    let commit =
        latest_commit(&checkpoints)?.context("nothing was committed before the failure")?;
    println!(
        "instance 1: gone ({status}) with epoch {} committed; its disk is lost",
        commit.epoch
    );
    std::fs::remove_dir_all(root.join("state-1"))?;

    // --- Instance 2: recover on an empty disk and finish. ---
    let report = count_words(root, root.join("state-2"), None)?;
    println!(
        "instance 2: restored epoch {} into empty RocksDB state, replayed the source from its offsets, committed up to epoch {} in {:.1?}",
        report
            .recovered_from
            .context("instance 2 did not recover")?,
        report
            .last_committed
            .context("instance 2 committed nothing")?,
        report.elapsed,
    );
    for worker in 0..WORKERS {
        let dir = root
            .join("checkpoints")
            .join("workers")
            .join(format!("{worker:05}"));
        let catalog = Catalog::open(Arc::new(LocalStorage::new(&dir)?))?;
        let kept = catalog.checkpoints();
        let referenced: u64 = kept.iter().map(|c| c.total_bytes).sum();
        let epochs: Vec<&str> = kept
            .iter()
            .filter_map(|c| c.metadata.get("epoch").map(String::as_str))
            .collect();
        println!(
            "  worker {worker} keeps checkpoints of epochs {}: {referenced} bytes referenced, {} bytes stored (shared files stored once)",
            epochs.join(", "),
            disk_bytes(&dir)?,
        );
    }

    // --- Check against a run without failure. ---
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            *expected.entry(word(p, i)).or_default() += 1;
        }
    }
    // Every running count (word, 1..=n) committed exactly once.
    let mut committed: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (word, count) in FileSink::read_committed::<(String, u64)>(&root.join("output"))? {
        committed.entry(word).or_default().push(count);
    }
    for (word, counts) in &mut committed {
        counts.sort_unstable();
        let n = expected.get(word).copied().unwrap_or(0);
        if !counts.iter().copied().eq(1..=n) {
            bail!(
                "`{word}`: {} running counts committed up to {:?}, expected 1..={n} once each",
                counts.len(),
                counts.last()
            );
        }
    }
    if committed.len() != expected.len() {
        bail!(
            "{} words committed, {} counted without failure",
            committed.len(),
            expected.len()
        );
    }
    println!(
        "instance 2: the counts of all {} words equal those of a run without failure; each of the {EVENTS} running counts was committed once",
        expected.len()
    );
    Ok(())
}
