//! The one error type of the checkpoint layer.

use std::borrow::Cow;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while taking, storing or restoring
/// checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage failed (I/O error, permission denied, disk full, object
    /// store unreachable). Earlier checkpoints are intact.
    #[error("storage error while {op} `{path}`")]
    Storage {
        /// What was being done: "writing", "reading", "listing", ...
        op: &'static str,
        /// The object or file concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A manifest could not be parsed or failed validation.
    #[error("checkpoint manifest `{path}` is invalid: {reason}")]
    InvalidManifest {
        /// The manifest's path in the storage.
        path: String,
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },

    /// A stored file does not have the size or checksum its manifest says.
    #[error("stored file `{path}` is damaged: {reason}")]
    DamagedFile {
        /// The file's path in the storage.
        path: String,
        /// Size or checksum mismatch, or missing.
        reason: Cow<'static, str>,
    },

    /// No checkpoint with this id is committed.
    #[error("no committed checkpoint {id}")]
    NoSuchCheckpoint {
        /// The id asked for.
        id: u64,
    },

    /// No committed checkpoint could be restored; each attempt's reason is
    /// listed, newest first.
    #[error("no checkpoint could be restored ({} tried)", .tried.len())]
    NothingToRestore {
        /// (checkpoint id, why it was rejected), newest first.
        tried: Vec<(u64, String)>,
    },

    /// A checkpoint does not hold a registered backend, or holds one that
    /// is not registered.
    #[error("backend `{name}`: {reason}")]
    Backend {
        /// The backend's registered name.
        name: String,
        /// What is wrong.
        reason: Cow<'static, str>,
    },

    /// An argument or configuration value is out of its domain.
    #[error("invalid `{what}`: {reason}")]
    Invalid {
        /// The argument or field.
        what: &'static str,
        /// Why.
        reason: Cow<'static, str>,
    },

    /// A backend failed to capture or restore its state.
    #[error("state backend error")]
    State(#[from] gress_state::Error),
}

impl Error {
    pub(crate) fn storage(
        op: &'static str,
        path: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        Error::Storage {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// True if the error says the stored data is bad (as opposed to the
    /// storage being unreachable right now).
    pub fn is_damage(&self) -> bool {
        match self {
            Error::InvalidManifest { .. } | Error::DamagedFile { .. } => true,
            Error::State(e) => e.is_bad_input(),
            _ => false,
        }
    }
}

impl From<Error> for gress_state::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::State(e) => e,
            Error::Storage { op, path, source } => {
                gress_state::Error::io(format!("{op} checkpoint file {path}"), source)
            }
            Error::DamagedFile { path, reason } => gress_state::Error::corrupted(path, 0, reason),
            other => gress_state::Error::corrupted("checkpoint", 0, other.to_string()),
        }
    }
}
