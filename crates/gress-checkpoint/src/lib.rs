//! Checkpoints for gress-state: periodic or on-demand, incremental, and
//! crash-safe, on a local directory or S3-compatible object storage, with
//! recovery that verifies what it restores and falls back past damage.
//!
//! ```
//! use std::sync::Arc;
//! use gress_checkpoint::{CheckpointConfig, CheckpointManager, LocalStorage, Metadata};
//! use gress_state::{MemoryStateBackend, StateBackend};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let state = Arc::new(MemoryStateBackend::default());
//! let manager = CheckpointManager::open(
//!     Arc::new(LocalStorage::new(dir.path())?),
//!     CheckpointConfig::default(),
//! )?;
//! manager.register("counts", state.clone())?;
//!
//! state.put(b"k", b"v")?;
//! let offsets = Metadata::from([("offset/topic-0".into(), "42".into())]);
//! let report = manager.trigger_checkpoint(offsets)?;
//!
//! state.put(b"k", b"changed")?;
//! let restored = manager.restore_latest()?;
//! assert_eq!(restored.id, report.info.id);
//! assert_eq!(state.get(b"k")?.as_deref(), Some(&b"v"[..]));
//! # Ok::<(), gress_checkpoint::Error>(())
//! ```
//!
//! What a committed checkpoint survives, and how, is in ARCHITECTURE.md
//! and docs/format.md. This crate does not depend on RocksDB: backends
//! expose what a checkpoint needs through `gress_state::Checkpointable`.

mod catalog;
mod error;
mod fence;
mod info;
mod manager;
pub mod manifest;
mod restore;
pub mod storage;
pub mod telemetry;
mod verify;

pub use catalog::{Catalog, DamagedManifest, FileCheck};
pub use error::{Error, Result};
pub use fence::live_holder;
pub use gress_state::SNAPSHOT_FORMAT;
pub use info::{CheckpointInfo, CheckpointReport, CheckpointStats, OpenReport};
pub use manager::{
    CheckpointConfig, CheckpointManager, PendingCheckpoint, Retention, SweepPlan, write_savepoint,
};
pub use manifest::{Manifest, Metadata};
pub use restore::{RangePart, SavepointPart};
pub use storage::{LocalStorage, Storage};
#[cfg(feature = "s3")]
pub use storage::{S3Config, S3Storage};
