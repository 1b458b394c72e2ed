//! RocksDB state backend for gress-state: persistent keyed state larger
//! than RAM, with TTL cleanup in compaction, native hard-linked
//! checkpoints, RocksDB statistics in the metrics, and the same contract as
//! every other backend.
//!
//! ```no_run
//! use std::time::Duration;
//! use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
//! use gress_state::StateBackend;
//!
//! let backend = RocksDbStateBackend::open(RocksDbConfig::new("./state-data"))?;
//! backend.put(b"user:123", br#"{"name": "Alice", "balance": 1000}"#)?;
//! let value = backend.get(b"user:123")?;
//! backend.put_with_ttl(b"session:abc", b"cart", Duration::from_secs(1800))?;
//! backend.create_checkpoint("./checkpoints/cp-1")?;
//! # Ok::<(), gress_state::Error>(())
//! ```
//!
//! This is the only crate of the workspace that depends on `rocksdb`.

mod backend;
mod capture;
mod checkpoint;
mod config;
mod db;
mod error;
mod inspect;
mod ranges;
mod ttl_filter;

pub use backend::RocksDbStateBackend;
pub use capture::ROCKSDB_CHECKPOINT_FORMAT;
pub use config::{Compression, RocksDbConfig};
pub use db::LAYOUT_VERSION;
pub use gress_state::{Error, Result, StateBackend};
pub use inspect::{LevelInfo, ReadOnlyDb, StoredEntry};
pub use rocksdb::LiveFile;

/// Plain RocksDB with the options this backend uses, for measuring the
/// backend against the engine underneath (see `gress-bench`).
pub mod raw {
    pub use rocksdb;

    use crate::RocksDbConfig;

    /// The DB-wide and default-column-family options the backend opens
    /// with (block cache, bloom filters, compression, statistics, memory
    /// budget, TTL compaction filter).
    pub fn options(config: &RocksDbConfig) -> rocksdb::Options {
        crate::db::build_options(config, &Default::default()).0
    }

    /// The write options the backend writes with (WAL, sync), except
    /// `no_slowdown`: the backend sets it and waits out write stalls
    /// itself, retrying every millisecond.
    pub fn write_options(config: &RocksDbConfig) -> rocksdb::WriteOptions {
        crate::db::write_options(config)
    }
}

/// The README's Rust examples, compiled (and the memory one run) as doc
/// tests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
