//! The seed README's "Basic Usage", "TTL Support" and "Snapshots and
//! Checkpoints" snippets, on the RocksDB backend.
//!
//! Run with `./scripts/example state-backend`; it works in
//! `./example-data/state-backend` (`--data-dir` for another directory).

use std::fs;
use std::time::Duration;

use anyhow::Result;
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::StateBackend;

/// The seed's state-backend snippets on RocksDB.
#[derive(Debug, clap::Parser)]
struct Args {
    #[command(flatten)]
    program: gress_app::ProgramArgs,
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let root = &args.program.start(
        "example-state-backend",
        std::path::Path::new("example-data/state-backend"),
    )?;
    fs::create_dir_all(root.join("checkpoints"))?;

    // --- Basic Usage ---
    let config = RocksDbConfig::new(root.join("state-data"));
    let backend = RocksDbStateBackend::open(config)?;
    backend.put(b"user:123", br#"{"name": "Alice", "balance": 1000}"#)?;
    let value = backend.get(b"user:123")?;
    println!(
        "get user:123 -> {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );
    backend.delete(b"user:123")?;
    println!("after delete -> {:?}", backend.get(b"user:123")?);
    backend.close()?;

    // --- TTL Support ---
    let mut config = RocksDbConfig::new(root.join("state"));
    config.ttl_enabled = true;
    config.default_ttl = Duration::from_secs(3600);
    let backend = RocksDbStateBackend::open(config)?;
    backend.put_with_ttl(
        b"session:abc",
        b"session data",
        Duration::from_secs(30 * 60),
    )?;
    backend.put(b"cache:xyz", b"cache data")?; // uses the 1 hour default
    println!(
        "session:abc -> {:?}, cache:xyz -> {:?}",
        backend.get(b"session:abc")?.is_some(),
        backend.get(b"cache:xyz")?.is_some()
    );

    // --- Snapshots and Checkpoints ---
    let snapshot = backend.snapshot()?;
    let snapshot_file = root.join("state-snapshot.bin");
    fs::write(&snapshot_file, &snapshot)?;
    let snapshot_data = fs::read(&snapshot_file)?;
    let restored = backend.restore(&snapshot_data)?;
    println!(
        "restored {} entries from {}",
        restored.n_entries_restored,
        snapshot_file.display()
    );

    let checkpoint = root.join("checkpoints/cp-1");
    backend.create_checkpoint(&checkpoint)?; // hard-linked RocksDB checkpoint
    let from_checkpoint = RocksDbStateBackend::open_checkpoint(
        &checkpoint,
        RocksDbConfig::new(root.join("recovered")),
    )?;
    println!(
        "checkpoint {} reopened: session:abc present = {}",
        checkpoint.display(),
        from_checkpoint.get(b"session:abc")?.is_some()
    );
    Ok(())
}
