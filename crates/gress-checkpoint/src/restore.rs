//! Restoring a checkpoint or savepoint into several backends, all or
//! nothing: every backend reads and verifies its part beside its live
//! state first, and only then are they switched, one after another.

use std::io::{Cursor, Read};
use std::path::Path;

use gress_state::SNAPSHOT_FORMAT;
use gress_state::checkpoint::{CheckpointFiles, Checkpointable, PreparedRestore};
use gress_state::snapshot::{SnapshotKind, SnapshotWriter};

use crate::error::{Error, Result};
use crate::manifest::{BackendEntry, Manifest};
use crate::storage::Storage;
use crate::verify::StoredFiles;

/// Where a manifest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestoreSource {
    Checkpoint,
    Savepoint,
}

/// Which part of a manifest each backend restores.
pub(crate) struct RestorePlan<'a> {
    manifest: &'a Manifest,
    source: RestoreSource,
    /// (name, backend, its part; `None`: not in the manifest, starts empty)
    parts: Vec<(&'a str, &'a dyn Checkpointable, Option<&'a BackendEntry>)>,
}

impl<'a> RestorePlan<'a> {
    pub(crate) fn new(
        manifest: &'a Manifest,
        source: RestoreSource,
        backends: &[(&'a str, &'a dyn Checkpointable)],
        allow_non_restored_state: bool,
    ) -> Result<Self> {
        for entry in &manifest.backends {
            if backends.iter().any(|(name, _)| *name == entry.name) {
                continue;
            }
            if !allow_non_restored_state {
                return Err(Error::Backend {
                    name: entry.name.clone(),
                    reason: "in the checkpoint but not registered; allow non-restored state to \
                             restore without it"
                        .into(),
                });
            }
            tracing::warn!(backend = %entry.name, "dropping the state of a backend that is no longer registered");
        }
        let mut parts = Vec::with_capacity(backends.len());
        for &(name, backend) in backends {
            let entry = manifest.backend(name);
            if entry.is_none() {
                tracing::info!(backend = name, "not in the checkpoint: it starts empty");
            }
            if let (Some(entry), RestoreSource::Savepoint) = (entry, source)
                && (entry.format != SNAPSHOT_FORMAT || entry.files.len() != 1)
            {
                return Err(Error::InvalidManifest {
                    path: "savepoint MANIFEST".into(),
                    reason: format!(
                        "backend `{name}` is not one {SNAPSHOT_FORMAT} file in this savepoint"
                    )
                    .into(),
                });
            }
            parts.push((name, backend, entry));
        }
        Ok(RestorePlan {
            manifest,
            source,
            parts,
        })
    }

    /// Every backend reads and verifies its part; nothing is switched.
    pub(crate) fn prepare(
        &self,
        storage: &dyn Storage,
        parallelism: usize,
    ) -> Result<Prepared<'a>> {
        if self.source == RestoreSource::Checkpoint {
            // Cheap check first: every file is there with its size.
            for f in self.manifest.paths() {
                match storage.size(&f.path)? {
                    Some(size) if size == f.size => {}
                    Some(size) => {
                        return Err(Error::DamagedFile {
                            path: f.path.clone(),
                            reason: format!("{size} bytes, expected {}", f.size).into(),
                        });
                    }
                    None => {
                        return Err(Error::DamagedFile {
                            path: f.path.clone(),
                            reason: "missing".into(),
                        });
                    }
                }
            }
        }
        let mut parts = Vec::with_capacity(self.parts.len());
        for &(name, backend, entry) in &self.parts {
            let prepared = match entry {
                Some(entry) => {
                    let files = StoredFiles {
                        storage,
                        files: &entry.files,
                        parallelism,
                    };
                    backend.prepare_restore(&entry.format, &files)
                }
                None => backend.prepare_restore(SNAPSHOT_FORMAT, &EmptySnapshot::new()?),
            }
            .map_err(Error::from_state)?;
            parts.push((name.to_string(), prepared));
        }
        Ok(Prepared { parts })
    }
}

/// Every backend's restore, ready to switch.
pub(crate) struct Prepared<'a> {
    parts: Vec<(String, Box<dyn PreparedRestore + 'a>)>,
}

impl Prepared<'_> {
    /// Switches every backend; on failure, how many were switched before
    /// it, and the error.
    pub(crate) fn commit_all(self) -> std::result::Result<(), (usize, Error)> {
        for (switched, (name, part)) in self.parts.into_iter().enumerate() {
            if let Err(e) = part.commit() {
                tracing::error!(backend = %name, switched, error = %e, "a restore failed part-way");
                return Err((switched, Error::from_state(e)));
            }
        }
        Ok(())
    }
}

/// An empty full snapshot: what a backend that a checkpoint does not hold
/// restores.
struct EmptySnapshot {
    bytes: Vec<u8>,
}

const EMPTY_NAME: &str = "empty.snap";

impl EmptySnapshot {
    fn new() -> Result<Self> {
        let mut bytes = Vec::new();
        SnapshotWriter::new(&mut bytes, SnapshotKind::Full, 0)?.finish()?;
        Ok(EmptySnapshot { bytes })
    }
}

impl CheckpointFiles for EmptySnapshot {
    fn names(&self) -> Vec<String> {
        vec![EMPTY_NAME.to_string()]
    }

    fn open(&self, name: &str) -> gress_state::Result<Box<dyn Read + '_>> {
        if name != EMPTY_NAME {
            return Err(gress_state::Error::invalid_argument(
                "name",
                format!("no file {name} in an empty snapshot"),
            ));
        }
        Ok(Box::new(Cursor::new(&self.bytes[..])))
    }

    fn fetch_all(&self, dir: &Path) -> gress_state::Result<()> {
        let path = dir.join(EMPTY_NAME);
        std::fs::write(&path, &self.bytes)
            .map_err(|e| gress_state::Error::io(format!("writing {}", path.display()), e))
    }
}
