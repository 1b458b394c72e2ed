//! Data directories a program may replace, and only those.
//!
//! A program that writes state, checkpoints or output into a directory
//! marks it as its own when it creates it (or finds it empty): a file
//! named [`MARKER`] holds the program's name. Only a marked directory is
//! ever emptied, and only when the caller asks: a directory holding
//! anything else is refused, so a mistyped `--data-dir` costs an error
//! message, not someone's files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The file that marks a directory as created by a program.
pub const MARKER: &str = ".gress-created-by";

/// Why a directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory holds files and the caller did not ask to replace
    /// them.
    #[error(
        "{} is not empty; pass --fresh to replace what {program} wrote there, or choose another directory",
        path.display()
    )]
    NotEmpty {
        /// The directory.
        path: PathBuf,
        /// The program that refused.
        program: String,
    },
    /// The directory holds files this program did not create: it is never
    /// emptied.
    #[error(
        "{} holds files {program} did not create ({found}); it is left alone: choose another directory or empty it yourself",
        path.display()
    )]
    NotOurs {
        /// The directory.
        path: PathBuf,
        /// The program that refused.
        program: String,
        /// Who created it, as far as can be told.
        found: String,
    },
    /// The path exists and is not a directory.
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The file system refused.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path being worked on.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What was in the directory before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// It did not exist, or was empty: it is now created and marked.
    Created,
    /// It held an earlier run of this program: that run's files are
    /// still there (see [`open`]).
    Kept,
    /// It held an earlier run of this program, which was deleted.
    Replaced,
}

/// Who created `dir`: `None` when it has no readable marker.
pub fn created_by(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(MARKER)).ok()?;
    Some(text.trim().to_string())
}

fn is_empty(dir: &Path) -> Result<bool, DataDirError> {
    Ok(fs::read_dir(dir).map_err(io_err(dir))?.next().is_none())
}

fn mark(dir: &Path, program: &str) -> Result<(), DataDirError> {
    let marker = dir.join(MARKER);
    fs::write(&marker, format!("{program}\n")).map_err(io_err(&marker))
}

/// Creates `dir` (and its parents) for `program`, or finds it empty, and
/// marks it as `program`'s.
fn create(dir: &Path, program: &str) -> Result<Prepared, DataDirError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    mark(dir, program)?;
    Ok(Prepared::Created)
}

/// Deletes `dir` if `program` created it, then creates it again, empty.
fn replace(dir: &Path, program: &str) -> Result<Prepared, DataDirError> {
    match created_by(dir) {
        Some(owner) if owner == program => {
            fs::remove_dir_all(dir).map_err(io_err(dir))?;
            create(dir, program)?;
            Ok(Prepared::Replaced)
        }
        owner => Err(DataDirError::NotOurs {
            path: dir.to_path_buf(),
            program: program.to_string(),
            found: match owner {
                Some(other) => format!("it was created by {other}"),
                None => format!("it has no {MARKER} file"),
            },
        }),
    }
}

fn ours(dir: &Path, program: &str) -> bool {
    created_by(dir).as_deref() == Some(program)
}

fn existing(dir: &Path) -> Result<bool, DataDirError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(DataDirError::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// A directory for a run that starts from nothing: created if missing,
/// used if empty. One holding files is refused unless `replace_ours` is
/// set, and then emptied only if `program` created it.
pub fn empty(dir: &Path, program: &str, replace_ours: bool) -> Result<Prepared, DataDirError> {
    if !existing(dir)? || is_empty(dir)? {
        return create(dir, program);
    }
    if ours(dir, program) && !replace_ours {
        return Err(DataDirError::NotEmpty {
            path: dir.to_path_buf(),
            program: program.to_string(),
        });
    }
    // Refused as not ours, if it is not: --fresh would not help.
    replace(dir, program)
}

/// A directory a job resumes from: created if missing or empty, kept as it
/// is if it holds files (an earlier run to recover), and emptied when
/// `fresh` is set, only if `program` created it. A non-empty directory
/// `program` did not create is refused either way.
pub fn open(dir: &Path, program: &str, fresh: bool) -> Result<Prepared, DataDirError> {
    if !existing(dir)? || is_empty(dir)? {
        return create(dir, program);
    }
    if fresh || !ours(dir, program) {
        return replace(dir, program);
    }
    Ok(Prepared::Kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_created_marked_and_replaced_only_when_ours() {
        let root = tempfile::tempdir().expect("temporary directory");
        let dir = root.path().join("a/b");
        assert_eq!(empty(&dir, "p", false).expect("created"), Prepared::Created);
        assert_eq!(created_by(&dir).as_deref(), Some("p"));
        fs::write(dir.join("state"), b"x").expect("write");
        // Ours, but not asked to replace it.
        let e = empty(&dir, "p", false).expect_err("not empty");
        assert!(matches!(e, DataDirError::NotEmpty { .. }), "{e}");
        assert!(dir.join("state").exists());
        // Another program never deletes it.
        let e = empty(&dir, "q", true).expect_err("not ours");
        assert!(matches!(e, DataDirError::NotOurs { .. }), "{e}");
        assert!(e.to_string().contains("created by p"), "{e}");
        assert!(dir.join("state").exists());
        assert_eq!(
            empty(&dir, "p", true).expect("replaced"),
            Prepared::Replaced
        );
        assert!(!dir.join("state").exists());
        assert_eq!(created_by(&dir).as_deref(), Some("p"));
    }

    #[test]
    fn a_directory_someone_else_filled_is_left_alone() {
        let root = tempfile::tempdir().expect("temporary directory");
        let mine = root.path().join("photos");
        fs::create_dir(&mine).expect("mkdir");
        fs::write(mine.join("cat.jpg"), b"meow").expect("write");
        for replace in [false, true] {
            let e = empty(&mine, "p", replace).expect_err("refused");
            assert!(matches!(e, DataDirError::NotOurs { .. }), "{e}");
            let e = open(&mine, "p", replace).expect_err("refused");
            assert!(matches!(e, DataDirError::NotOurs { .. }), "{e}");
        }
        assert_eq!(fs::read(mine.join("cat.jpg")).expect("kept"), b"meow");
        let file = mine.join("cat.jpg");
        let e = empty(&file, "p", true).expect_err("a file");
        assert!(matches!(e, DataDirError::NotADirectory(_)), "{e}");
    }

    #[test]
    fn a_job_directory_is_kept_to_resume_unless_fresh() {
        let root = tempfile::tempdir().expect("temporary directory");
        let dir = root.path().join("job");
        assert_eq!(open(&dir, "p", false).expect("created"), Prepared::Created);
        fs::write(dir.join("checkpoint"), b"1").expect("write");
        assert_eq!(open(&dir, "p", false).expect("kept"), Prepared::Kept);
        assert!(dir.join("checkpoint").exists());
        assert_eq!(open(&dir, "p", true).expect("replaced"), Prepared::Replaced);
        assert!(!dir.join("checkpoint").exists());
        // An empty directory someone made is adopted.
        let made = root.path().join("made");
        fs::create_dir(&made).expect("mkdir");
        assert_eq!(open(&made, "p", true).expect("adopted"), Prepared::Created);
    }
}
