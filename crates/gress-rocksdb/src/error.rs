//! Mapping of RocksDB's errors onto the state layer's `Error`.

use std::path::Path;

use gress_state::{EngineErrorKind, Error};

/// Maps an engine error by kind, keeping RocksDB's error as the source.
pub(crate) fn engine(e: rocksdb::Error) -> Error {
    use rocksdb::ErrorKind as K;
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
        message: e.to_string(),
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
