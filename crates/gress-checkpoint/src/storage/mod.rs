//! Where checkpoint files and manifests are kept.
//!
//! Paths are relative, `/`-separated, made of `[A-Za-z0-9._-]` components.
//! Every implementation makes each write appear whole or not at all, and
//! `put_new` create-only: that is what the commit protocol relies on
//! (docs/format.md, "Checkpoint commit protocol").

use std::cell::Cell;
use std::fmt;
use std::io::{Read, Write};
use std::time::Instant;

use crate::error::{Error, Result};

#[cfg(feature = "testing")]
pub mod fault;
mod local;
#[cfg(feature = "testing")]
pub mod memory;
#[cfg(feature = "s3")]
pub mod s3;

pub use local::{LocalStorage, is_stale_temporary};
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3Storage};

/// An object in the storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its path.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The writer handed to [`Storage::put`]'s callback.
pub type PutFn<'a> = dyn FnMut(&mut dyn Write) -> Result<()> + 'a;

/// A place to keep checkpoints: a local directory, an object store, or a
/// test wrapper that injects faults.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Stores at `path` the bytes `write` produces. The object becomes
    /// visible whole, and durable, when this returns `Ok`; on error nothing
    /// is visible at `path` (an earlier object there stays). Memory use is
    /// bounded whatever the size.
    fn put(&self, path: &str, write: &mut PutFn<'_>) -> Result<()>;

    /// Stores `bytes` at `path` only if nothing is there: create-only, so
    /// two writers can never both think they published the same object.
    /// Durable when this returns `Ok`.
    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<()>;

    /// Reads an object.
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + '_>>;

    /// Every object whose path starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Removes an object; removing a missing one succeeds.
    fn delete(&self, path: &str) -> Result<()>;

    /// Whether the object at `path` holds exactly `bytes` (`Ok(false)` if
    /// it is missing or differs). Used after a create-only write reported
    /// an error, to learn whether it took effect.
    fn holds(&self, path: &str, bytes: &[u8]) -> Result<bool> {
        match self.read_all(path, bytes.len() as u64) {
            Ok(found) => Ok(found == bytes),
            Err(e) if e.is_not_found() => Ok(false),
            Err(Error::Invalid { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The size of the object at `path`, or `None` if there is none.
    fn size(&self, path: &str) -> Result<Option<u64>> {
        Ok(self
            .list(path)?
            .into_iter()
            .find(|o| o.path == path)
            .map(|o| o.size))
    }

    /// Reads a whole (small) object, refusing more than `limit` bytes.
    fn read_all(&self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut input = self.open(path)?.take(limit + 1);
        input
            .read_to_end(&mut out)
            .map_err(|e| Error::storage("reading", path, e))?;
        if out.len() as u64 > limit {
            return Err(Error::invalid(
                "object",
                format!("{path} is larger than {limit} bytes"),
            ));
        }
        Ok(out)
    }
}

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with every storage call this thread makes bounded by
/// `deadline`: a call still waiting for a remote store then fails with a
/// `TimedOut` storage error (the request itself is left to finish or fail
/// on its own). Nested calls keep the earlier deadline. Local disks are not
/// interrupted.
pub fn with_deadline<T>(deadline: Instant, f: impl FnOnce() -> T) -> T {
    let outer = DEADLINE.with(Cell::get);
    let effective = outer.map_or(deadline, |o| o.min(deadline));
    DEADLINE.with(|d| d.set(Some(effective)));
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(outer);
    f()
}

/// The deadline of this thread's storage calls, if any.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
pub(crate) fn deadline() -> Option<Instant> {
    DEADLINE.with(Cell::get)
}

/// Checks that `path` is relative, `/`-separated and made of
/// `[A-Za-z0-9._-]` components other than `.` and `..`.
pub fn check_path(path: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::invalid("path", format!("`{path}`: {reason}")));
    if path.is_empty() || path.len() > 1024 {
        return bad("empty or longer than 1024 bytes");
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("empty, `.` or `..` component");
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("characters outside [A-Za-z0-9._-]");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_path;

    #[test]
    fn paths_that_could_escape_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            "a\\b",
            "a b",
            "a/",
            "é",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "manifests/00000000000000000001.manifest",
            "shared/sst/ab-12/000012.sst",
        ] {
            assert!(check_path(good).is_ok(), "{good:?} refused");
        }
    }
}
