//! Restoring a checkpoint or savepoint into several backends, all or
//! nothing: every backend reads and verifies its part beside its live
//! state first, and only then are they switched, one after another.

use std::io::{Cursor, Read};
use std::path::Path;

use gress_state::checkpoint::RangeSource;
use gress_state::checkpoint::{CheckpointFiles, Checkpointable, PreparedRestore};
use gress_state::snapshot::{SnapshotKind, SnapshotWriter};
use gress_state::{KeyRange, SNAPSHOT_FORMAT};

use crate::catalog::Catalog;
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
pub(crate) struct RestorePlan<'m, 'a> {
    manifest: &'m Manifest,
    source: RestoreSource,
    /// (name, backend, its part; `None`: not in the manifest, starts empty)
    parts: Vec<(&'a str, &'a dyn Checkpointable, Option<&'m BackendEntry>)>,
}

impl<'m, 'a> RestorePlan<'m, 'a> {
    pub(crate) fn new(
        manifest: &'m Manifest,
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

/// One source of a range restore: the keys of `ranges` in checkpoint `id`
/// of `catalog`'s location.
#[derive(Debug)]
pub struct RangePart<'a> {
    /// The location the checkpoint is in (read only).
    pub catalog: &'a Catalog,
    /// The checkpoint.
    pub id: u64,
    /// The keys to take from it.
    pub ranges: Vec<KeyRange>,
}

/// One source of a range restore from a savepoint: the keys of `ranges`
/// in savepoint `name` of `catalog`'s location. A stream job's savepoint
/// holds one per worker; a job started from it with another number of
/// workers gives each worker the key groups it now owns.
#[derive(Debug)]
pub struct SavepointPart<'a> {
    /// The location the savepoint is in (read only).
    pub catalog: &'a Catalog,
    /// The savepoint's name.
    pub name: &'a str,
    /// The keys to take from it.
    pub ranges: Vec<KeyRange>,
}

/// A part of a range restore with its manifest read.
pub(crate) struct ReadPart<'p> {
    pub(crate) catalog: &'p Catalog,
    pub(crate) manifest: Manifest,
    pub(crate) ranges: &'p [KeyRange],
}

/// Reads the manifests of checkpoint parts.
pub(crate) fn read_checkpoint_parts<'p>(parts: &'p [RangePart<'_>]) -> Result<Vec<ReadPart<'p>>> {
    parts
        .iter()
        .map(|part| {
            let manifest = part
                .catalog
                .manifest(part.id)
                .ok_or(Error::NoSuchCheckpoint { id: part.id })?;
            Ok(ReadPart {
                catalog: part.catalog,
                manifest: manifest.clone(),
                ranges: &part.ranges,
            })
        })
        .collect()
}

/// Reads the manifests of savepoint parts; each backend in them must be
/// one portable snapshot.
pub(crate) fn read_savepoint_parts<'p>(
    parts: &'p [SavepointPart<'_>],
) -> Result<Vec<ReadPart<'p>>> {
    parts
        .iter()
        .map(|part| {
            let manifest = part.catalog.savepoint(part.name)?;
            if let Some(entry) = manifest
                .backends
                .iter()
                .find(|e| e.format != SNAPSHOT_FORMAT || e.files.len() != 1)
            {
                return Err(Error::InvalidManifest {
                    path: format!("savepoint {} MANIFEST", part.name),
                    reason: format!(
                        "backend `{}` is not one {SNAPSHOT_FORMAT} file in this savepoint",
                        entry.name
                    )
                    .into(),
                });
            }
            Ok(ReadPart {
                catalog: part.catalog,
                manifest,
                ranges: &part.ranges,
            })
        })
        .collect()
}

/// Every backend reads and verifies its ranges of every part; nothing is
/// switched.
pub(crate) fn prepare_ranges<'a>(
    parts: &[ReadPart<'_>],
    backends: &[(&'a str, &'a dyn Checkpointable)],
    allow_non_restored_state: bool,
    parallelism: usize,
) -> Result<Prepared<'a>> {
    for part in parts {
        let manifest = &part.manifest;
        for entry in &manifest.backends {
            if !backends.iter().any(|(name, _)| *name == entry.name) && !allow_non_restored_state {
                return Err(Error::Backend {
                    name: entry.name.clone(),
                    reason: "in the checkpoint but not registered; allow non-restored state to \
                             restore without it"
                        .into(),
                });
            }
        }
        let storage = &**part.catalog.storage();
        for f in manifest.paths() {
            match storage.size(&f.path)? {
                Some(size) if size == f.size => {}
                found => {
                    return Err(Error::DamagedFile {
                        path: f.path.clone(),
                        reason: match found {
                            Some(size) => format!("{size} bytes, expected {}", f.size).into(),
                            None => "missing".into(),
                        },
                    });
                }
            }
        }
    }
    let mut prepared = Vec::with_capacity(backends.len());
    for &(name, backend) in backends {
        let held: Vec<(&ReadPart<'_>, &BackendEntry)> = parts
            .iter()
            .filter_map(|part| part.manifest.backend(name).map(|e| (part, e)))
            .collect();
        let files: Vec<StoredFiles<'_>> = held
            .iter()
            .map(|(part, entry)| StoredFiles {
                storage: &**part.catalog.storage(),
                files: &entry.files,
                parallelism,
            })
            .collect();
        let sources: Vec<RangeSource<'_>> = held
            .iter()
            .zip(&files)
            .map(|((part, entry), files)| RangeSource {
                format: &entry.format,
                files,
                ranges: part.ranges,
            })
            .collect();
        let part = backend
            .prepare_restore_ranges(&sources)
            .map_err(Error::from_state)?;
        prepared.push((name.to_string(), part));
    }
    Ok(Prepared { parts: prepared })
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
