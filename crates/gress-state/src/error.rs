//! The one error type of the state layer.

use std::borrow::Cow;
use std::path::PathBuf;

/// The result type of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a state backend.
///
/// Variants carry what a caller needs to act on the failure; engine detail
/// (for example RocksDB's own status) is kept in [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend was closed; nothing is read or written any more.
    #[error("the state backend is closed")]
    Closed,

    /// The input is not a valid stream or file of the format it claims to be.
    #[error("corrupted {input} at byte {offset}: {reason}")]
    Corrupted {
        /// What was being read: "snapshot stream", or a file path.
        input: Cow<'static, str>,
        /// Byte offset in that input where the problem was found.
        offset: u64,
        /// What was wrong.
        reason: Cow<'static, str>,
    },

    /// A checksum did not match the bytes it covers.
    #[error("checksum mismatch in {section}: expected {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        /// The part of the input the checksum covers, e.g. "snapshot block 3".
        section: Cow<'static, str>,
        /// The checksum stored in the input.
        expected: u32,
        /// The checksum computed over the bytes read.
        actual: u32,
    },

    /// The input is of a format or version this build does not read.
    #[error("unsupported format: found {found}, this build reads {supported}")]
    UnsupportedFormat {
        /// What the input declared (magic or version).
        found: Cow<'static, str>,
        /// What this build accepts.
        supported: Cow<'static, str>,
    },

    /// A configuration field has a value the backend cannot work with.
    #[error("invalid configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The field name, as spelled in the config struct.
        field: &'static str,
        /// Why the value was rejected.
        reason: Cow<'static, str>,
    },

    /// An argument of a call is out of its domain (e.g. a zero TTL).
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument name.
        name: &'static str,
        /// Why it was rejected.
        reason: Cow<'static, str>,
    },

    /// A key or value is larger than every backend accepts.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// "key" or "value".
        what: &'static str,
        /// The size that was passed.
        len: u64,
        /// The largest size accepted.
        max: u64,
    },

    /// The database directory is locked by another process or handle.
    #[error("{path} is locked by another process or handle")]
    Locked {
        /// The locked directory.
        path: PathBuf,
    },

    /// An operating-system I/O error.
    #[error("I/O error while {context}")]
    Io {
        /// What was being done, e.g. "writing snapshot block".
        context: Cow<'static, str>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A storage engine reported an error that fits no other variant.
    #[error("{engine} error ({kind:?}): {message}")]
    Engine {
        /// The engine, e.g. "rocksdb".
        engine: &'static str,
        /// The class of failure.
        kind: EngineErrorKind,
        /// The engine's message.
        message: String,
        /// The engine's own error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The metrics endpoint cannot serve at this address: this process
    /// already serves metrics elsewhere, or another `metrics` recorder is
    /// installed. (An address that cannot be bound is an [`Error::Io`].)
    #[error("cannot serve metrics at {addr}: {reason}")]
    MetricsEndpoint {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why not.
        reason: Cow<'static, str>,
    },

    /// The backend does not implement this operation.
    #[error("`{operation}` is not supported by the {backend} backend")]
    Unsupported {
        /// The operation name.
        operation: &'static str,
        /// The backend name.
        backend: &'static str,
    },
}

/// The class of an [`Error::Engine`] failure, for callers that retry or alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EngineErrorKind {
    /// Data on disk failed a consistency check.
    Corruption,
    /// The engine's I/O failed (disk full, permission denied, ...).
    Io,
    /// The engine is busy or timed out; retrying may succeed.
    Busy,
    /// The call was invalid for the engine's state.
    InvalidArgument,
    /// The engine is shutting down.
    ShutdownInProgress,
    /// Anything else.
    Other,
}

/// [`Error::Closed`], built only when needed: `ok_or_else(closed)` keeps a
/// hot path from constructing and dropping an error on every call.
#[cold]
pub fn closed() -> Error {
    Error::Closed
}

impl Error {
    /// Builds an [`Error::Io`] with the given context.
    pub fn io(context: impl Into<Cow<'static, str>>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Builds an [`Error::Corrupted`].
    pub fn corrupted(
        input: impl Into<Cow<'static, str>>,
        offset: u64,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Error::Corrupted {
            input: input.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::InvalidConfig`].
    pub fn invalid_config(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid_argument(name: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Error::InvalidArgument {
            name,
            reason: reason.into(),
        }
    }

    /// True for [`Error::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed)
    }

    /// True for errors that mean "the input bytes are bad": corrupt, torn,
    /// foreign or of an unknown version, or a stream whose reader reported
    /// invalid data (for example a stored file whose checksum failed).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Corrupted { .. }
            | Error::ChecksumMismatch { .. }
            | Error::UnsupportedFormat { .. } => true,
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::InvalidData,
            _ => false,
        }
    }
}
