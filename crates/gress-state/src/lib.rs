//! Keyed state for stream processors: the [`StateBackend`] contract, TTL,
//! the portable snapshot format, metrics (and their export, [`telemetry`]),
//! and the in-memory backend.
//!
//! ```
//! use gress_state::{MemoryStateBackend, StateBackend};
//!
//! let state = MemoryStateBackend::default();
//! state.put(b"user:123", br#"{"balance": 1000}"#)?;
//! assert_eq!(state.get(b"user:123")?.as_deref(), Some(&br#"{"balance": 1000}"#[..]));
//!
//! let snapshot = state.snapshot()?;
//! state.delete(b"user:123")?;
//! state.restore(&snapshot)?;
//! assert!(state.get(b"user:123")?.is_some());
//! # Ok::<(), gress_state::Error>(())
//! ```
//!
//! This crate never depends on RocksDB; the RocksDB backend lives in
//! `gress-rocksdb` and implements the same trait.

pub mod backend;
pub mod checkpoint;
pub mod clock;
mod concat;
pub mod error;
pub mod fsutil;
pub mod memory;
pub mod metrics;
pub mod snapshot;
pub mod telemetry;
pub mod ttl;
mod util;

pub use backend::{BatchOp, KeyRange, KeyValue, ScanIter, StateBackend, WriteBatch};
pub use checkpoint::{
    Capture, CaptureKind, CaptureMode, Checkpointable, RangeSource, SNAPSHOT_FORMAT,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{EngineErrorKind, Error, Result};
pub use memory::{MEMORY_CHECKPOINT_FORMAT, MemoryConfig, MemoryStateBackend};
pub use metrics::{LatencySummary, Metrics, MetricsRecorder, Op};
pub use snapshot::{RestoreSummary, SnapshotKind, SnapshotSummary};
