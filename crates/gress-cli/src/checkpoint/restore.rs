//! `gress checkpoint restore`: a worker's checkpoint into a RocksDB
//! directory or a snapshot file, written atomically.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gress_rocksdb::{ROCKSDB_CHECKPOINT_FORMAT, RocksDbConfig, RocksDbStateBackend};
use gress_state::checkpoint::Checkpointable;
use gress_state::{MemoryConfig, MemoryStateBackend, SNAPSHOT_FORMAT, StateBackend};
use serde_json::json;

use super::{or_not_found, target};
use crate::exit;
use crate::location::{Fail, Location};
use crate::out::Out;

pub(super) enum Target {
    Rocksdb(PathBuf),
    Snapshot(PathBuf),
}

pub(super) fn restore(
    loc: &Location,
    id: Option<u64>,
    worker: Option<usize>,
    backend: Option<&str>,
    target_to: &Target,
    out: &Out,
) -> Result<u8> {
    or_not_found(out, || {
        let (catalog, id) = target(loc, id, worker)?;
        let m = catalog
            .manifest(id)
            .ok_or_else(|| Fail::not_found(format!("no checkpoint {id}")))?;
        let entry = match backend {
            Some(name) => m.backend(name).ok_or_else(|| {
                Fail::not_found(format!(
                    "checkpoint {id} has no backend `{name}` (it has {:?})",
                    m.backends.iter().map(|b| &b.name).collect::<Vec<_>>()
                ))
            })?,
            None => match m.backends.as_slice() {
                [only] => only,
                several => bail!(
                    "checkpoint {id} holds several backends: choose one with --backend ({:?})",
                    several.iter().map(|b| &b.name).collect::<Vec<_>>()
                ),
            },
        };
        let name = entry.name.clone();
        let format = entry.format.clone();
        let bar = out.spinner(&format!("restoring checkpoint {id} ({name})"));
        let restore_into = |b: &dyn Checkpointable| -> Result<()> {
            catalog
                .restore_into(id, &[(name.as_str(), b)], true)
                .with_context(|| format!("restoring checkpoint {id}"))?;
            Ok(())
        };
        let (written, entries) = match target_to {
            Target::Rocksdb(dir) => {
                let n = build_rocksdb(dir, |rocks| {
                    if format == ROCKSDB_CHECKPOINT_FORMAT || format == SNAPSHOT_FORMAT {
                        restore_into(rocks)?;
                    } else {
                        // A memory checkpoint (a full snapshot and its
                        // deltas): through a memory backend, as one
                        // snapshot stream.
                        let mem = MemoryStateBackend::new(MemoryConfig::default())?;
                        restore_into(&mem)?;
                        bar.set_message("writing into RocksDB");
                        let tmp = tempfile::NamedTempFile::new_in(parent_dir(dir))?;
                        mem.snapshot_to(&mut std::io::BufWriter::new(tmp.as_file()))?;
                        let mut input = std::io::BufReader::new(tmp.reopen()?);
                        rocks.restore_from(&mut input)?;
                    }
                    // Counted, not RocksDB's estimate.
                    let mut n = 0u64;
                    for entry in rocks.scan_prefix(b"")? {
                        entry?;
                        n += 1;
                    }
                    Ok(n)
                })?;
                (dir.clone(), n)
            }
            Target::Snapshot(file) => {
                let parent = parent_dir(file);
                let summary = if format == ROCKSDB_CHECKPOINT_FORMAT {
                    let scratch = tempfile::tempdir_in(parent)?;
                    let rocks = RocksDbStateBackend::open(RocksDbConfig::new(scratch.path()))?;
                    restore_into(&rocks)?;
                    let s = write_snapshot(file, &rocks)?;
                    rocks.close()?;
                    s
                } else {
                    let mem = MemoryStateBackend::new(MemoryConfig::default())?;
                    restore_into(&mem)?;
                    write_snapshot(file, &mem)?
                };
                (file.clone(), summary.n_entries)
            }
        };
        bar.finish_and_clear();
        let doc = json!({
            "checkpoint": id,
            "backend": name,
            "format": format,
            "written": written.display().to_string(),
            "entries": entries,
        });
        out.emit(&doc, || {
            say!(
                "restored checkpoint {id} (backend `{name}`, {format}) into {}: {entries} entries",
                written.display()
            );
        });
        Ok(exit::OK)
    })
}

fn parent_dir(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Builds a new RocksDB state directory at `dir` with `fill`: in a
/// temporary directory beside it, closed, synced and renamed into place,
/// so that `dir` appears whole or not at all (a crash midway leaves only
/// the temporary directory, never a half-filled `dir`). Refuses a `dir`
/// that exists and is not empty.
pub(crate) fn build_rocksdb(
    dir: &Path,
    fill: impl FnOnce(&RocksDbStateBackend) -> Result<u64>,
) -> Result<u64> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) || dir.is_file() {
        bail!(
            "{} already exists and is not empty; restore into a new directory",
            dir.display()
        );
    }
    let parent = parent_dir(dir);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".gress-restoring-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let rocks = RocksDbStateBackend::open(RocksDbConfig::new(scratch.path()))
        .with_context(|| format!("creating RocksDB state in {}", scratch.path().display()))?;
    let n = fill(&rocks)?;
    rocks.flush()?;
    rocks.close()?;
    drop(rocks);
    // An empty directory at `dir` (made by the user) is replaced.
    if dir.is_dir() {
        std::fs::remove_dir(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    let built = scratch.keep();
    std::fs::rename(&built, dir)
        .with_context(|| format!("moving the new state to {}", dir.display()))?;
    gress_state::fsutil::sync_dir(parent)?;
    Ok(n)
}

/// Writes `file` through `write`: into a temporary file beside it, then
/// flushed, synced and renamed over it, so `file` is whole or untouched.
pub(crate) fn write_atomically<T>(
    file: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let parent = parent_dir(file);
    let tmp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("creating a file in {}", parent.display()))?;
    let value = {
        let mut w = BufWriter::new(tmp.as_file());
        let value = write(&mut w)?;
        w.flush()?;
        value
    };
    tmp.as_file().sync_all()?;
    tmp.persist(file)
        .with_context(|| format!("writing {}", file.display()))?;
    gress_state::fsutil::sync_dir(parent)?;
    Ok(value)
}

/// Writes `backend`'s snapshot to `file`, atomically.
fn write_snapshot(file: &Path, backend: &dyn StateBackend) -> Result<gress_state::SnapshotSummary> {
    write_atomically(file, |w| Ok(backend.snapshot_to(w)?))
}
