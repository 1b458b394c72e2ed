//! The one error type of the checkpoint layer.

use std::borrow::Cow;
use std::io;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while taking, storing or restoring
/// checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage failed (I/O error, permission denied, disk full, object
    /// store unreachable or timed out). Earlier checkpoints are intact.
    #[error("storage error while {op} `{path}`")]
    Storage {
        /// What was being done: "writing", "reading", "listing", ...
        op: &'static str,
        /// The object or file concerned.
        path: String,
        /// The underlying error; its kind says which (e.g. `StorageFull`,
        /// `TimedOut`, `PermissionDenied`).
        #[source]
        source: io::Error,
    },

    /// A manifest could not be parsed or failed validation.
    #[error("checkpoint manifest `{path}` is invalid: {reason}")]
    InvalidManifest {
        /// The manifest's path in the storage.
        path: String,
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },

    /// A manifest is intact but of a format version this build does not
    /// read (written by a newer build). Nothing is deleted on its account.
    #[error(
        "checkpoint manifest `{path}` has format version {found}; this build reads {supported}"
    )]
    UnsupportedVersion {
        /// The manifest's path in the storage.
        path: String,
        /// The version it declares.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
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

    /// The storage holds no checkpoint at all.
    #[error("no checkpoint to restore")]
    NothingToRestore,

    /// Checkpoints exist but every one is damaged; each attempt's reason
    /// is listed, newest first.
    #[error("no intact checkpoint ({} tried, all damaged)", .tried.len())]
    NoIntactCheckpoint {
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

    /// The operation cannot run now; nothing was done. Retrying later
    /// may succeed.
    #[error("busy: {reason}")]
    Busy {
        /// What is in the way.
        reason: Cow<'static, str>,
    },

    /// Another manager holds this storage location and was seen alive
    /// recently: two managers would delete each other's files.
    #[error(
        "checkpoint location is held by another manager ({holder}), last seen {age_ms} ms ago; \
         it is free once that manager closes or its lease of {lease_ms} ms runs out, \
         or set `take_over` to fence it"
    )]
    LocationInUse {
        /// Who holds it: host, process id, since when.
        holder: String,
        /// Time since the holder last renewed its lease.
        age_ms: u64,
        /// The lease duration.
        lease_ms: u64,
    },

    /// A newer manager took over this storage location; this one may no
    /// longer publish or delete anything.
    #[error(
        "fenced: a newer manager (epoch {newer}) took over this checkpoint location from epoch {ours}"
    )]
    Fenced {
        /// This manager's fencing epoch.
        ours: u64,
        /// The epoch that took over.
        newer: u64,
    },

    /// A restore was interrupted after switching some backends: until a
    /// restore completes, backends may be at different checkpoints, so no
    /// checkpoint is taken.
    #[error("a restore of {target} did not complete; restore again before checkpointing")]
    RestoreIncomplete {
        /// The checkpoint or savepoint that was being restored.
        target: String,
    },

    /// Checkpoint ids are used up: storage holds an id at the top of the
    /// range.
    #[error("checkpoint id space exhausted: storage holds id {found}")]
    IdsExhausted {
        /// The largest id found.
        found: u64,
    },

    /// A backend failed to capture or restore its state.
    #[error(transparent)]
    State(#[from] gress_state::Error),
}

impl Error {
    pub(crate) fn storage(op: &'static str, path: impl Into<String>, source: io::Error) -> Self {
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

    pub(crate) fn busy(reason: impl Into<Cow<'static, str>>) -> Self {
        Error::Busy {
            reason: reason.into(),
        }
    }

    /// True if the error says the stored data is bad (as opposed to the
    /// storage being unreachable right now): recovery may fall back to an
    /// older checkpoint past it.
    pub fn is_damage(&self) -> bool {
        match self {
            Error::InvalidManifest { .. } | Error::DamagedFile { .. } => true,
            Error::State(e) => e.is_bad_input(),
            _ => false,
        }
    }

    /// True if the storage said "not found".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Storage { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// Turns an error that came back through a backend into the checkpoint
    /// error it started as, when it was one (see the `From` impl below).
    pub(crate) fn from_state(e: gress_state::Error) -> Self {
        match e {
            gress_state::Error::Io { source, context }
                if source.get_ref().is_some_and(|inner| inner.is::<Error>()) =>
            {
                match source.into_inner().map(|inner| inner.downcast::<Error>()) {
                    Some(Ok(original)) => *original,
                    // Checked just above; keep what we have otherwise.
                    _ => Error::State(gress_state::Error::io(
                        context,
                        io::Error::other("checkpoint error"),
                    )),
                }
            }
            other => Error::State(other),
        }
    }
}

/// A checkpoint error handed to a backend (e.g. while it reads checkpoint
/// files) becomes an I/O error of the kind that matches its cause, with the
/// original error inside, so nothing is lost and `is_bad_input` stays true
/// only for damage; [`Error::from_state`] unwraps it again.
impl From<Error> for gress_state::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::State(_) => {
                let Error::State(inner) = e else {
                    unreachable!("matched above")
                };
                return inner;
            }
            Error::Storage { source, .. } => source.kind(),
            Error::InvalidManifest { .. } | Error::DamagedFile { .. } => io::ErrorKind::InvalidData,
            Error::Invalid { .. } | Error::Backend { .. } => io::ErrorKind::InvalidInput,
            Error::Busy { .. } => io::ErrorKind::WouldBlock,
            _ => io::ErrorKind::Other,
        };
        gress_state::Error::io("reading checkpoint storage", io::Error::new(kind, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_through_a_backend() {
        let damaged = Error::DamagedFile {
            path: "shared/x".into(),
            reason: "checksum".into(),
        };
        let as_state = gress_state::Error::from(damaged);
        assert!(as_state.is_bad_input(), "{as_state}");
        let back = Error::from_state(as_state);
        assert!(
            matches!(back, Error::DamagedFile { ref path, .. } if path == "shared/x"),
            "{back:?}"
        );

        let invalid = gress_state::Error::from(Error::invalid("files", "none"));
        assert!(!invalid.is_bad_input(), "an invalid argument is not damage");

        let full = Error::storage(
            "writing",
            "shared/y",
            io::Error::new(io::ErrorKind::StorageFull, "disk full"),
        );
        let back = Error::from_state(gress_state::Error::from(full));
        assert!(
            matches!(&back, Error::Storage { source, .. } if source.kind() == io::ErrorKind::StorageFull),
            "{back:?}"
        );
    }

    #[test]
    fn state_errors_print_their_cause() {
        let e = Error::State(gress_state::Error::Closed);
        assert_eq!(e.to_string(), gress_state::Error::Closed.to_string());
    }
}
