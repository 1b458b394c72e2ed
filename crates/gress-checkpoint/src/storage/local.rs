//! Checkpoints in a local directory, with fsync and atomic rename.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gress_state::fsutil::{create_dir_all_synced, sync_dir};

use super::{ObjectMeta, PutFn, Storage, check_path};
use crate::error::{Error, Result};

/// A directory on a local file system.
///
/// `put` writes a temporary file beside the target, fsyncs it, renames it
/// into place and fsyncs the directory; `put_new` links the temporary file
/// to the target name, which fails if the name exists. Directories are
/// created with their parents fsynced, up to the root. A crash leaves at
/// most a temporary file (named `*.tmp-*`), never a partial object.
/// Listing never follows symbolic links: a link is reported and skipped.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalStorage {
    /// Uses (and creates) the directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let shown = root.display().to_string();
        if !root.is_dir() {
            fs::create_dir_all(&root).map_err(|e| Error::storage("creating", shown.clone(), e))?;
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| Error::storage("syncing the parent of", shown, e))?;
            }
        }
        Ok(LocalStorage { root })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> Result<PathBuf> {
        check_path(path)?;
        Ok(self.root.join(path))
    }

    /// Writes a temporary file next to `target` and returns its path.
    fn write_tmp(&self, target: &Path, path: &str, write: &mut PutFn<'_>) -> Result<PathBuf> {
        let dir = target.parent().unwrap_or(&self.root);
        create_dir_all_synced(&self.root, dir)
            .map_err(|e| Error::storage("creating directory for", path, e))?;
        let tmp = PathBuf::from(format!(
            "{}.tmp-{}-{}",
            target.display(),
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let file = File::create(&tmp).map_err(|e| Error::storage("creating", path, e))?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            write(&mut out)?;
            let file = out
                .into_inner()
                .map_err(|e| Error::storage("writing", path, e.into_error()))?;
            file.sync_all()
                .map_err(|e| Error::storage("syncing", path, e))
        })();
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

fn sync_parent(target: &Path, root: &Path, path: &str) -> Result<()> {
    sync_dir(target.parent().unwrap_or(root))
        .map_err(|e| Error::storage("syncing directory of", path, e))
}

impl Storage for LocalStorage {
    fn put(&self, path: &str, write: &mut PutFn<'_>) -> Result<()> {
        let target = self.full(path)?;
        let tmp = self.write_tmp(&target, path, write)?;
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::storage("renaming into place", path, e));
        }
        sync_parent(&target, &self.root, path)
    }

    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let target = self.full(path)?;
        let tmp = self.write_tmp(&target, path, &mut |w| {
            w.write_all(bytes)
                .map_err(|e| Error::storage("writing", path, e))
        })?;
        // link(2) fails with EEXIST if the name is taken: create-only.
        let linked = fs::hard_link(&tmp, &target);
        let _ = fs::remove_file(&tmp);
        linked.map_err(|e| Error::storage("publishing", path, e))?;
        // If this fails the object is published but maybe not durable; the
        // caller learns that the write took effect by reading it back.
        sync_parent(&target, &self.root, path)
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + '_>> {
        let file = File::open(self.full(path)?).map_err(|e| Error::storage("opening", path, e))?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        // Walk from the deepest directory the prefix names.
        let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.full(dir_part)?
        };
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::storage("listing", dir.display().to_string(), e)),
            };
            for entry in entries {
                let entry =
                    entry.map_err(|e| Error::storage("listing", dir.display().to_string(), e))?;
                let full = entry.path();
                let shown = || full.display().to_string();
                // Neither file_type nor metadata of a DirEntry follows links.
                let kind = entry
                    .file_type()
                    .map_err(|e| Error::storage("listing", shown(), e))?;
                if kind.is_symlink() {
                    tracing::warn!(path = %shown(), "skipping a symbolic link in checkpoint storage");
                    continue;
                }
                if kind.is_dir() {
                    stack.push(full);
                    continue;
                }
                if !kind.is_file() {
                    tracing::warn!(path = %shown(), "skipping a special file in checkpoint storage");
                    continue;
                }
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Renamed or deleted since the directory was read (a
                    // writer publishing or sweeping beside this listing):
                    // not there any more.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::storage("listing", shown(), e)),
                };
                let Ok(rel) = full.strip_prefix(&self.root) else {
                    continue;
                };
                let rel = rel.to_string_lossy().replace('\\', "/");
                if rel.starts_with(prefix) {
                    out.push(ObjectMeta {
                        path: rel,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn size(&self, path: &str) -> Result<Option<u64>> {
        match fs::symlink_metadata(self.full(path)?) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::storage("reading size of", path, e)),
        }
    }

    fn delete(&self, path: &str) -> Result<()> {
        // Temporary files left by a crash carry a suffix that check_path
        // accepts, so they can be deleted like any object.
        let target = self.full(path)?;
        match fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::storage("deleting", path, e)),
        }
        // Drop directories left empty, up to the root.
        let mut dir = target.parent();
        while let Some(d) = dir {
            if d == self.root || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

/// Whether `path` is a temporary file of a write that can no longer finish:
/// one of `LocalStorage`'s (`*.tmp-<pid>-<n>`) whose process is not this
/// one and no longer runs on this machine. Used to sweep what a killed
/// process left beside objects that no manifest names.
pub fn is_stale_temporary(path: &str) -> bool {
    let Some((_, tail)) = path.rsplit_once(".tmp-") else {
        return false;
    };
    let Some(pid) = tail.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_new_refuses_to_overwrite() -> Result<()> {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = LocalStorage::new(dir.path())?;
        s.put_new("manifests/1", b"first")?;
        assert!(s.put_new("manifests/1", b"second").is_err());
        assert_eq!(s.read_all("manifests/1", 100)?, b"first");
        assert_eq!(s.list("manifests/")?.len(), 1, "temporary file left behind");
        Ok(())
    }

    /// Listing used to follow symbolic links, so a link to a parent
    /// directory made `list` (and the sweep at open) loop forever.
    #[test]
    fn listing_skips_symbolic_links() -> Result<()> {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = LocalStorage::new(dir.path())?;
        s.put_new("shared/00000000000000000001/a", b"x")?;
        let io = |e| Error::storage("linking", "test", e);
        std::os::unix::fs::symlink(dir.path(), dir.path().join("shared/loop")).map_err(io)?;
        std::os::unix::fs::symlink(
            dir.path().join("shared/00000000000000000001/a"),
            dir.path().join("shared/alias"),
        )
        .map_err(io)?;
        let listed: Vec<String> = s.list("")?.into_iter().map(|o| o.path).collect();
        assert_eq!(listed, vec!["shared/00000000000000000001/a".to_string()]);
        assert_eq!(s.size("shared/alias")?, None);
        Ok(())
    }

    #[test]
    fn failed_put_leaves_nothing() -> Result<()> {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = LocalStorage::new(dir.path())?;
        s.put("a/b", &mut |w| {
            w.write_all(b"old")
                .map_err(|e| Error::storage("w", "a/b", e))
        })?;
        let err = s.put("a/b", &mut |w| {
            w.write_all(b"partial")
                .map_err(|e| Error::storage("w", "a/b", e))?;
            Err(Error::invalid("test", "fail mid-write"))
        });
        assert!(err.is_err());
        assert_eq!(s.read_all("a/b", 100)?, b"old");
        assert_eq!(s.list("")?.len(), 1);
        s.delete("a/b")?;
        s.delete("a/b")?;
        assert!(s.list("")?.is_empty());
        Ok(())
    }
}
