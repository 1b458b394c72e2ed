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
mod checkpoint;
mod config;
mod error;
mod ttl_filter;

pub use backend::{LAYOUT_VERSION, RocksDbStateBackend};
pub use config::{Compression, RocksDbConfig};
pub use gress_state::{Error, Result, StateBackend};
pub use rocksdb::LiveFile;
