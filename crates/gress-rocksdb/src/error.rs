//! Mapping of RocksDB's errors onto the state layer's `Error`.

use std::path::Path;

use gress_state::{EngineErrorKind, Error};

/// How RocksDB (and the operating system's `ENOSPC`) words a full disk.
const NO_SPACE: &str = "No space left on device";

/// Whether RocksDB refused a write with `no_slowdown` because writes are
/// stalled (not because of a background error, which also comes as
/// `Incomplete`, with the error's text).
pub(crate) fn is_write_stall(e: &rocksdb::Error) -> bool {
    e.kind() == rocksdb::ErrorKind::Incomplete && e.as_ref().ends_with("Write stall")
}

/// Maps an engine error by kind, keeping RocksDB's error as the source.
///
/// A full disk stops RocksDB's writes, flushes and checkpoints with a
/// background error that it clears by itself: it checks the free space
/// every 5 seconds and resumes once it finds at least `write_buffer_size`
/// bytes free. The message says so, whatever status carried the error.
pub(crate) fn engine(e: rocksdb::Error) -> Error {
    use rocksdb::ErrorKind as K;
    let message = e.to_string();
    if message.contains(NO_SPACE) {
        return Error::Engine {
            engine: "rocksdb",
            kind: EngineErrorKind::Io,
            message: format!(
                "the disk is full ({message}); writes, flushes and checkpoints fail \
                 until at least write_buffer_size bytes are free again, then resume \
                 by themselves within seconds, without a reopen"
            ),
            source: Some(Box::new(e)),
        };
    }
    let kind = match e.kind() {
        K::Corruption => EngineErrorKind::Corruption,
        K::IOError => EngineErrorKind::Io,
        K::Busy | K::TimedOut | K::TryAgain | K::Incomplete | K::Aborted => EngineErrorKind::Busy,
        K::InvalidArgument | K::NotSupported => EngineErrorKind::InvalidArgument,
        K::ShutdownInProgress => EngineErrorKind::ShutdownInProgress,
        _ => EngineErrorKind::Other,
    };
    Error::Engine {
        engine: "rocksdb",
        kind,
        message,
        source: Some(Box::new(e)),
    }
}

/// Maps an error of `DB::open`, recognising the cases a user fixes
/// differently: another process holds the lock, or the directory is not
/// accessible.
pub(crate) fn open(e: rocksdb::Error, path: &Path) -> Error {
    let message = e.to_string();
    let lower = message.to_ascii_lowercase();
    if lower.contains("lock") && (lower.contains("hold") || lower.contains("unavailable")) {
        return Error::Locked {
            path: path.to_path_buf(),
        };
    }
    if lower.contains("permission denied") {
        return Error::io(
            format!("opening RocksDB at {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, message),
        );
    }
    engine(e)
}
