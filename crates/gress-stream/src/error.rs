//! The one error type of the stream layer.

use std::borrow::Cow;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that stops a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A state backend failed.
    #[error(transparent)]
    State(#[from] gress_state::Error),

    /// Checkpoint storage or the checkpoint manager failed.
    #[error(transparent)]
    Checkpoint(#[from] gress_checkpoint::Error),

    /// A value could not be encoded or decoded by its codec.
    #[error("codec error in {what}: {reason}")]
    Codec {
        /// The state or record concerned.
        what: Cow<'static, str>,
        /// What went wrong.
        reason: String,
    },

    /// A source failed to read.
    #[error("source `{source_name}` failed: {reason}")]
    Source {
        /// The source's name in the job.
        source_name: String,
        /// What went wrong.
        reason: String,
    },

    /// A sink failed to write or commit.
    #[error("sink `{sink}` failed: {reason}")]
    Sink {
        /// The sink's name in the job.
        sink: String,
        /// What went wrong.
        reason: String,
    },

    /// A user operator returned an error.
    #[error("operator `{operator}` failed: {reason}")]
    Operator {
        /// The operator's name.
        operator: String,
        /// Its error.
        reason: String,
    },

    /// The job is configured or built in a way that cannot run.
    #[error("invalid job: {what}: {reason}")]
    InvalidJob {
        /// The setting or part of the job.
        what: &'static str,
        /// Why.
        reason: Cow<'static, str>,
    },

    /// A committed checkpoint cannot be restored into this job.
    #[error("cannot recover from committed epoch {epoch}: {reason}")]
    Recovery {
        /// The committed epoch.
        epoch: u64,
        /// Why.
        reason: Cow<'static, str>,
    },

    /// Timely dataflow failed to start or a worker stopped abnormally
    /// (a panic in a user operator, a lost peer process).
    #[error("worker failure: {0}")]
    Worker(String),
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Error::InvalidJob {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn codec(what: impl Into<Cow<'static, str>>, reason: impl ToString) -> Self {
        Error::Codec {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
