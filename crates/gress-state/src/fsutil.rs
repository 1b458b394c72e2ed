//! File-system steps that every durable write in the workspace shares.
//!
//! A file's contents are durable once the file is fsynced; its name is
//! durable once the directory holding it is fsynced (POSIX). Every crate
//! that publishes files by rename or link goes through these helpers.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Fsyncs the directory `dir`, making the names in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents below `root`, fsyncing the parent
/// of every directory it creates, so the new directories survive a crash.
/// `dir` must be `root` or lie below it.
pub fn create_dir_all_synced(root: &Path, dir: &Path) -> io::Result<()> {
    let rel = dir.strip_prefix(root).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not below {}", dir.display(), root.display()),
        )
    })?;
    let mut current = root.to_path_buf();
    for part in rel.components() {
        let parent = current.clone();
        current.push(part);
        match fs::create_dir(&current) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && current.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_once() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("a/b/c");
        create_dir_all_synced(root.path(), &dir)?;
        assert!(dir.is_dir());
        create_dir_all_synced(root.path(), &dir)?;
        let outside = create_dir_all_synced(&dir, root.path());
        assert_eq!(
            outside.map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidInput)
        );
        Ok(())
    }
}
