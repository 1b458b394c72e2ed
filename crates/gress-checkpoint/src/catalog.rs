//! A read-only view of a checkpoint location: what is committed, what is
//! damaged, what each checkpoint holds, whether its files are intact.
//!
//! Opening a catalog never writes or deletes anything, so tools (listing,
//! inspecting, verifying) may use one beside a job that is checkpointing
//! into the same location. [`CheckpointManager::open`] starts from one.
//!
//! [`CheckpointManager::open`]: crate::CheckpointManager::open

use std::collections::BTreeMap;
use std::sync::Arc;

use gress_state::checkpoint::Checkpointable;

use crate::error::{Error, Result};
use crate::info::CheckpointInfo;
use crate::manifest::{
    self, MANIFESTS, Manifest, SAVEPOINT_MANIFEST, SAVEPOINTS, id_of_manifest_path, manifest_path,
};
use crate::restore::{RestorePlan, RestoreSource};
use crate::storage::Storage;
use crate::verify::verify_stored;

/// A manifest that could not be read, set aside: kept in storage, never
/// restored, and protecting every file it could reference from deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedManifest {
    /// The id in its file name.
    pub id: u64,
    /// Its path in the storage.
    pub path: String,
    /// Why it was rejected.
    pub reason: String,
}

/// What [`Catalog::verify`] found for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    /// The backend the file belongs to.
    pub backend: String,
    /// The file's path in the storage.
    pub path: String,
    /// Its size per the manifest.
    pub size: u64,
    /// `None` if the file is intact, else what is wrong.
    pub problem: Option<String>,
}

/// Every manifest of a location, read and classified.
#[derive(Debug)]
pub struct Catalog {
    storage: Arc<dyn Storage>,
    checkpoints: BTreeMap<u64, Arc<Manifest>>,
    damaged: Vec<DamagedManifest>,
    temporary: Vec<String>,
    odd: Vec<String>,
}

impl Catalog {
    /// Reads every manifest under `manifests/`. A manifest of an unknown
    /// (newer) format version, and a storage error while listing or
    /// reading, stop with an error; a damaged manifest is set aside and
    /// listed by [`Catalog::damaged`].
    pub fn open(storage: Arc<dyn Storage>) -> Result<Self> {
        let mut catalog = Catalog {
            storage,
            checkpoints: BTreeMap::new(),
            damaged: Vec::new(),
            temporary: Vec::new(),
            odd: Vec::new(),
        };
        for object in catalog.storage.list(MANIFESTS)? {
            let path = object.path;
            let Some(id) = id_of_manifest_path(&path) else {
                if manifest::is_temporary(&path) {
                    catalog.temporary.push(path);
                } else {
                    tracing::warn!(
                        path,
                        "ignoring an object under manifests/ that is not a manifest"
                    );
                    catalog.odd.push(path);
                }
                continue;
            };
            match read_manifest(&*catalog.storage, id) {
                Ok(m) => {
                    catalog.checkpoints.insert(id, Arc::new(m));
                }
                // Deleted since the listing (a running manager retired
                // that checkpoint): no checkpoint any more. Asked again,
                // so that a read failing for another reason stops here.
                Err(e) if e.is_not_found() && catalog.storage.size(&path)?.is_none() => {
                    tracing::debug!(id, "a manifest was deleted while the location was read");
                }
                Err(e) if e.is_damage() => {
                    tracing::warn!(id, reason = %e, "setting aside a damaged checkpoint manifest");
                    catalog.damaged.push(DamagedManifest {
                        id,
                        path,
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(catalog)
    }

    /// The storage this catalog reads.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Committed, readable checkpoints, oldest first.
    pub fn checkpoints(&self) -> Vec<CheckpointInfo> {
        self.checkpoints
            .values()
            .map(|m| CheckpointInfo::from(&**m))
            .collect()
    }

    /// The newest readable checkpoint.
    pub fn latest(&self) -> Option<CheckpointInfo> {
        self.checkpoints
            .values()
            .next_back()
            .map(|m| CheckpointInfo::from(&**m))
    }

    /// The manifest of checkpoint `id`, if it is readable.
    pub fn manifest(&self, id: u64) -> Option<&Manifest> {
        self.checkpoints.get(&id).map(|m| &**m)
    }

    /// Manifests set aside as damaged, by id.
    pub fn damaged(&self) -> &[DamagedManifest] {
        &self.damaged
    }

    /// Names under `manifests/` that are neither manifests nor temporary
    /// files (reported and left alone).
    pub fn odd_names(&self) -> &[String] {
        &self.odd
    }

    pub(crate) fn temporary(&self) -> &[String] {
        &self.temporary
    }

    pub(crate) fn manifests(&self) -> &BTreeMap<u64, Arc<Manifest>> {
        &self.checkpoints
    }

    /// The largest checkpoint id a manifest name carries, damaged ones
    /// included.
    pub fn max_id(&self) -> Option<u64> {
        let readable = self.checkpoints.keys().next_back().copied();
        let damaged = self.damaged.iter().map(|d| d.id).max();
        readable.max(damaged)
    }

    /// Reads and validates savepoint `name`'s manifest.
    pub fn savepoint(&self, name: &str) -> Result<Manifest> {
        crate::manifest::check_name(name)?;
        read_savepoint(&*self.storage, name)
    }

    /// Savepoints with a readable manifest, by name.
    pub fn savepoints(&self) -> Result<Vec<(String, CheckpointInfo)>> {
        let mut out = Vec::new();
        for object in self.storage.list(SAVEPOINTS)? {
            let Some(name) = object
                .path
                .strip_prefix(SAVEPOINTS)
                .and_then(|rest| rest.strip_suffix(&format!("/{SAVEPOINT_MANIFEST}")))
            else {
                continue;
            };
            match read_savepoint(&*self.storage, name) {
                Ok(m) => out.push((name.to_string(), CheckpointInfo::from(&m))),
                Err(e) if e.is_damage() => {
                    tracing::warn!(savepoint = name, reason = %e, "damaged savepoint manifest");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reads every file of checkpoint `id` in full and checks its size and
    /// checksum; returns one line per file. `Err` only if the manifest is
    /// not readable or the storage fails; damage is in the report.
    pub fn verify(&self, id: u64) -> Result<Vec<FileCheck>> {
        let manifest = self.manifest(id).ok_or(Error::NoSuchCheckpoint { id })?;
        let mut out = Vec::new();
        for backend in &manifest.backends {
            for file in &backend.files {
                let problem = self.verify_file(file)?;
                out.push(FileCheck {
                    backend: backend.name.clone(),
                    path: file.path.clone(),
                    size: file.size,
                    problem,
                });
            }
        }
        Ok(out)
    }

    /// Reads one file of a manifest in full and checks its size and
    /// checksum: `None` if it is intact, else what is wrong (damaged or
    /// missing). `Err` only if the storage fails.
    pub fn verify_file(&self, file: &crate::manifest::FileEntry) -> Result<Option<String>> {
        match verify_stored(&*self.storage, file) {
            Ok(()) => Ok(None),
            Err(e) if e.is_damage() || e.is_not_found() => Ok(Some(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Restores checkpoint `id` into `backends` (name, backend), which no
    /// manager needs to own: every part is read and verified before any
    /// backend changes. Writes nothing to the storage. A backend the
    /// checkpoint does not hold starts empty; a part of the checkpoint
    /// with no backend here is an error unless `allow_non_restored_state`.
    pub fn restore_into(
        &self,
        id: u64,
        backends: &[(&str, &dyn Checkpointable)],
        allow_non_restored_state: bool,
    ) -> Result<CheckpointInfo> {
        let manifest = self.manifest(id).ok_or(Error::NoSuchCheckpoint { id })?;
        let plan = RestorePlan::new(
            manifest,
            RestoreSource::Checkpoint,
            backends,
            allow_non_restored_state,
        )?;
        let prepared = plan.prepare(&*self.storage, 4)?;
        prepared.commit_all().map_err(|(_, e)| e)?;
        Ok(CheckpointInfo::from(manifest))
    }
}

/// Reads and validates checkpoint `id`'s manifest.
pub(crate) fn read_manifest(storage: &dyn Storage, id: u64) -> Result<Manifest> {
    let path = manifest_path(id);
    let bytes = storage.read_all(&path, manifest::MAX_MANIFEST_LEN + 128)?;
    let m = Manifest::decode(&bytes, &path)?;
    if m.id != id {
        return Err(Error::InvalidManifest {
            path,
            reason: format!("holds id {}, its file name says {id}", m.id).into(),
        });
    }
    Ok(m)
}

/// Reads and validates savepoint `name`'s manifest.
pub(crate) fn read_savepoint(storage: &dyn Storage, name: &str) -> Result<Manifest> {
    let path = format!("{SAVEPOINTS}{name}/{SAVEPOINT_MANIFEST}");
    let bytes = storage.read_all(&path, manifest::MAX_MANIFEST_LEN + 128)?;
    Manifest::decode(&bytes, &path)
}
