//! What the manager and the catalog report about checkpoints.

use std::time::Duration;

use crate::manifest::{Manifest, Metadata};

/// What a committed checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The checkpoint id.
    pub id: u64,
    /// When it was taken, ms since the UNIX epoch.
    pub created_at_ms: u64,
    /// The caller's metadata.
    pub metadata: Metadata,
    /// Total bytes of the files it references (shared ones included).
    pub total_bytes: u64,
    /// Per backend: name, format, number of files, deltas in its chain.
    pub backends: Vec<(String, String, usize, u32)>,
}

impl From<&Manifest> for CheckpointInfo {
    fn from(m: &Manifest) -> Self {
        CheckpointInfo {
            id: m.id,
            created_at_ms: m.created_at_ms,
            metadata: m.metadata.clone(),
            total_bytes: m.total_bytes(),
            backends: m
                .backends
                .iter()
                .map(|b| {
                    (
                        b.name.clone(),
                        b.format.clone(),
                        b.files.len(),
                        b.chain_deltas,
                    )
                })
                .collect(),
        }
    }
}

/// What taking one checkpoint did.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointReport {
    /// The committed checkpoint.
    pub info: CheckpointInfo,
    /// Bytes written to storage by this checkpoint (new files only).
    pub bytes_written: u64,
    /// Files written.
    pub files_written: usize,
    /// Files referenced from earlier checkpoints instead of written again.
    pub files_reused: usize,
    /// The longest time a backend held its writers to take its cut.
    pub max_pause: Duration,
    /// Time from the cut to the published manifest.
    pub duration: Duration,
}

/// Counters of the manager's work.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointStats {
    /// Checkpoints committed.
    pub committed: u64,
    /// Checkpoints that failed (and left earlier ones intact).
    pub failed: u64,
    /// Checkpoints whose publication could not be confirmed either way
    /// (reported as failed; their files are kept until the next open).
    pub uncertain: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The last committed checkpoint's report.
    pub last: Option<CheckpointReport>,
}

/// What opening a location found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Manifests set aside as damaged (kept, never restored).
    pub damaged: Vec<crate::catalog::DamagedManifest>,
    /// Objects whose names are not of this layout, left alone.
    pub odd_names: Vec<String>,
    /// Objects deleted: checkpoints beyond retention, files no kept
    /// checkpoint needs, temporary files, leftovers of failed savepoints.
    pub removed: usize,
    /// Objects that would have been deleted but could not be.
    pub not_removed: usize,
    /// A restore that did not complete, if one was recorded.
    pub restore_incomplete: Option<String>,
}
