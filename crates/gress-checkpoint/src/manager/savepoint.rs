//! Savepoints: portable full copies (one v1 snapshot per backend) under a
//! name, outside retention; they restore into any backend type.

use gress_state::SNAPSHOT_FORMAT;
use gress_state::checkpoint::Checkpointable;

use super::CheckpointManager;
use crate::error::{Error, Result};
use crate::fence::now_ms;
use crate::info::CheckpointInfo;
use crate::manifest::{
    BackendEntry, FileEntry, Manifest, Metadata, SAVEPOINT_MANIFEST, SAVEPOINTS, check_name,
};
use crate::storage::Storage;
use crate::verify::upload;

impl CheckpointManager {
    /// Writes a savepoint: a full, portable snapshot (format v1) of every
    /// registered backend, under `name`, outside retention. Backends are
    /// snapshotted one after another while no checkpoint is being cut; for
    /// one cut across them, hold the input still. A failed savepoint
    /// leaves nothing behind (or, after a crash, leftovers that the next
    /// open deletes).
    pub fn trigger_savepoint(&self, name: &str, metadata: Metadata) -> Result<CheckpointInfo> {
        let shared = &self.shared;
        let _cut = shared.cut.lock();
        if shared.is_closing() {
            return Err(Error::busy("the checkpoint manager is closed"));
        }
        shared.fence.check()?;
        let backends = shared.backends();
        let named: Vec<(&str, &dyn Checkpointable)> = backends
            .iter()
            .map(|r| (r.name.as_str(), &*r.backend as &dyn Checkpointable))
            .collect();
        let result = write(&*shared.storage, name, &named, metadata, &|| {
            shared.fence.check()
        });
        if let Err((written, _)) = &result {
            shared.delete_files(written);
        }
        result.map_err(|(_, e)| e)
    }
}

/// Writes savepoint `name` of `backends` (name, backend) to `storage`, as
/// [`CheckpointManager::trigger_savepoint`] does, without a manager: for a
/// savepoint written to a location of its own (a stream job's savepoint
/// holds one per worker) or from backends no manager owns. The backends
/// are only read. On error, what was written is deleted again.
pub fn write_savepoint(
    storage: &dyn Storage,
    name: &str,
    backends: &[(&str, &dyn Checkpointable)],
    metadata: Metadata,
) -> Result<CheckpointInfo> {
    write(storage, name, backends, metadata, &|| Ok(())).map_err(|(written, e)| {
        for path in written {
            if let Err(e) = storage.delete(&path) {
                tracing::warn!(path, error = %e, "could not delete a file of a failed savepoint");
            }
        }
        e
    })
}

/// Writes the savepoint; on error, the paths that may have been written.
fn write(
    storage: &dyn Storage,
    name: &str,
    backends: &[(&str, &dyn Checkpointable)],
    metadata: Metadata,
    before_manifest: &dyn Fn() -> Result<()>,
) -> std::result::Result<CheckpointInfo, (Vec<String>, Error)> {
    check_name(name).map_err(|e| (Vec::new(), e))?;
    let dir = format!("{SAVEPOINTS}{name}/");
    let manifest_at = format!("{dir}{SAVEPOINT_MANIFEST}");
    match storage.size(&manifest_at) {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err((
                Vec::new(),
                Error::invalid("name", format!("savepoint `{name}` exists")),
            ));
        }
        Err(e) => return Err((Vec::new(), e)),
    }
    let mut written = Vec::new();
    let result = (|| {
        let mut entries = Vec::new();
        for &(backend_name, backend) in backends {
            let path = format!("{dir}{backend_name}.snap");
            written.push(path.clone());
            let (size, crc32c) = upload(storage, &path, None, &mut |w| {
                backend.snapshot_to(w).map(drop).map_err(Error::from_state)
            })?;
            entries.push(BackendEntry {
                name: backend_name.to_string(),
                format: SNAPSHOT_FORMAT.into(),
                files: vec![FileEntry {
                    name: format!("{backend_name}.snap"),
                    path,
                    size,
                    crc32c,
                }],
                chain_deltas: 0,
            });
        }
        let manifest = Manifest {
            id: 0,
            created_at_ms: now_ms(),
            metadata,
            backends: entries,
        };
        let bytes = manifest.encode()?;
        before_manifest()?;
        if let Err(e) = storage.put_new(&manifest_at, &bytes) {
            // The answer may have been lost after the write.
            match storage.read_all(&manifest_at, bytes.len() as u64) {
                Ok(found) if found == bytes => {}
                _ => {
                    written.push(manifest_at.clone());
                    return Err(e);
                }
            }
        }
        Ok(CheckpointInfo::from(&manifest))
    })();
    result.map_err(|e| (written, e))
}
