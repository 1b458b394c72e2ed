//! Savepoints: portable full copies (one v1 snapshot per backend) under a
//! name, outside retention; they restore into any backend type.

use gress_state::SNAPSHOT_FORMAT;

use super::CheckpointManager;
use crate::error::{Error, Result};
use crate::fence::now_ms;
use crate::info::CheckpointInfo;
use crate::manifest::{
    BackendEntry, FileEntry, Manifest, Metadata, SAVEPOINT_MANIFEST, SAVEPOINTS, check_name,
};
use crate::verify::upload;

impl CheckpointManager {
    /// Writes a savepoint: a full, portable snapshot (format v1) of every
    /// registered backend, under `name`, outside retention. Backends are
    /// snapshotted one after another while no checkpoint is being cut; for
    /// one cut across them, hold the input still. A failed savepoint
    /// leaves nothing behind (or, after a crash, leftovers that the next
    /// open deletes).
    pub fn trigger_savepoint(&self, name: &str, metadata: Metadata) -> Result<CheckpointInfo> {
        check_name(name)?;
        let shared = &self.shared;
        let _cut = shared.cut.lock();
        if shared.is_closing() {
            return Err(Error::busy("the checkpoint manager is closed"));
        }
        shared.fence.check()?;
        let storage = &*shared.storage;
        let dir = format!("{SAVEPOINTS}{name}/");
        let manifest_at = format!("{dir}{SAVEPOINT_MANIFEST}");
        if storage.size(&manifest_at)?.is_some() {
            return Err(Error::invalid("name", format!("savepoint `{name}` exists")));
        }
        let mut written = Vec::new();
        let result = (|| {
            let mut backends = Vec::new();
            for reg in shared.backends() {
                let path = format!("{dir}{}.snap", reg.name);
                written.push(path.clone());
                let (size, crc32c) = upload(storage, &path, None, &mut |w| {
                    reg.backend
                        .snapshot_to(w)
                        .map(drop)
                        .map_err(Error::from_state)
                })?;
                backends.push(BackendEntry {
                    name: reg.name.clone(),
                    format: SNAPSHOT_FORMAT.into(),
                    files: vec![FileEntry {
                        name: format!("{}.snap", reg.name),
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
                backends,
            };
            let bytes = manifest.encode()?;
            shared.fence.check()?;
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
        if result.is_err() {
            shared.delete_files(&written);
        }
        result
    }
}
