//! Checkpoint and recovery, end to end: a keyed count over a stream of
//! events runs on the RocksDB backend with incremental checkpoints every
//! 250 ms, each recording the source offset it matches; the machine
//! "fails" and loses its local state; a new instance restores the last
//! checkpoint, replays the source from the recorded offset, and ends with
//! exactly the counts of a run that never failed.
//!
//! The processing loop takes each checkpoint's cut itself, between two
//! events, so the offset in the metadata matches the state exactly; the
//! files are written and committed on another thread while processing
//! goes on (as a barrier-aligned stream engine does).
//!
//! Run with `./scripts/example checkpointing`; it works in
//! `./example-data/checkpointing`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use gress_checkpoint::{CheckpointConfig, CheckpointManager, LocalStorage, Metadata};
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::{KeyRange, StateBackend};

const EVENTS: u64 = 400_000;
const WORDS: u64 = 5_000;

/// The source: event `offset` is a word.
fn event(offset: u64) -> String {
    format!("word-{:05}", offset.wrapping_mul(2_654_435_761) % WORDS)
}

/// The operator: count events per word (read-modify-write of keyed state).
fn process(state: &dyn StateBackend, offset: u64) -> Result<()> {
    let key = event(offset);
    let count = state
        .get(key.as_bytes())?
        .map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
    state.put(key.as_bytes(), &(count + 1).to_le_bytes())?;
    Ok(())
}

fn counts(state: &dyn StateBackend) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    Ok(state
        .scan(KeyRange::all())?
        .collect::<gress_state::Result<_>>()?)
}

fn manager(root: &Path) -> Result<CheckpointManager> {
    let storage = Arc::new(LocalStorage::new(root.join("checkpoints"))?);
    let config = CheckpointConfig::default()
        .with_interval(Duration::from_millis(250))
        .with_retain(3);
    Ok(CheckpointManager::open(storage, config)?)
}

fn main() -> Result<()> {
    let root = Path::new("example-data/checkpointing");
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }

    // --- Instance 1: process with periodic checkpoints, then fail. ---
    let state = Arc::new(RocksDbStateBackend::open(RocksDbConfig::new(
        root.join("state-1"),
    ))?);
    let m = manager(root)?;
    m.register("word-counts", state.clone())?;
    m.enable_incremental_checkpoints(true);
    let m = Arc::new(m);
    println!("instance 1: counting {EVENTS} events with a checkpoint every 250 ms");
    let started = Instant::now();
    let mut next_checkpoint = Instant::now() + Duration::from_millis(250);
    let mut committing: Option<std::thread::JoinHandle<()>> = None;
    // Fail somewhere in the middle of the stream.
    let fail_at = EVENTS * 3 / 5;
    for o in 0..fail_at {
        if Instant::now() >= next_checkpoint {
            // The cut, between event o-1 and event o.
            let pending = m.begin_checkpoint(Metadata::from([(
                "source-offset".to_string(),
                o.to_string(),
            )]))?;
            if let Some(previous) = committing.take() {
                let _ = previous.join();
            }
            committing = Some(std::thread::spawn(move || match pending.commit() {
                Ok(r) => println!(
                    "  checkpoint {} at offset {}: wrote {} bytes in {} files, reused {} files, {} bytes in all, writers held {:?}",
                    r.info.id,
                    r.info.metadata["source-offset"],
                    r.bytes_written,
                    r.files_written,
                    r.files_reused,
                    r.info.total_bytes,
                    r.max_pause,
                ),
                Err(e) => println!("  checkpoint failed: {e}"),
            }));
            next_checkpoint = Instant::now() + Duration::from_millis(250);
        }
        process(&*state, o)?;
    }
    if let Some(previous) = committing.take() {
        let _ = previous.join();
    }
    println!(
        "instance 1: processed {fail_at} events in {:?}, then the machine fails and its disk is lost",
        started.elapsed()
    );
    state.close()?;
    drop((state, m));
    std::fs::remove_dir_all(root.join("state-1"))?;

    // --- Instance 2: recover from the last checkpoint and replay. ---
    let state = Arc::new(RocksDbStateBackend::open(RocksDbConfig::new(
        root.join("state-2"),
    ))?);
    let m = manager(root)?;
    m.register("word-counts", state.clone())?;
    let restored = m.restore_latest()?;
    let resume_from: u64 = restored.metadata["source-offset"].parse()?;
    println!(
        "instance 2: restored checkpoint {} ({} bytes); the source resumes at offset {resume_from}",
        restored.id, restored.total_bytes
    );
    for o in resume_from..EVENTS {
        process(&*state, o)?;
    }
    m.trigger_checkpoint(Metadata::from([(
        "source-offset".to_string(),
        EVENTS.to_string(),
    )]))?;

    // --- Check against a run that never failed. ---
    let reference = gress_state::MemoryStateBackend::default();
    for o in 0..EVENTS {
        process(&reference, o)?;
    }
    if counts(&*state)? != counts(&reference)? {
        bail!("the recovered counts differ from a run without failure");
    }
    println!(
        "instance 2: counted all {EVENTS} events; the counts equal those of a run without failure ({} words)",
        counts(&reference)?.len()
    );
    for info in m.list() {
        println!(
            "  kept checkpoint {} at offset {}",
            info.id, info.metadata["source-offset"]
        );
    }
    Ok(())
}
