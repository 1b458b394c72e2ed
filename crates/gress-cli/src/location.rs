//! Where checkpoints are: a local directory or `s3://bucket/prefix`, and
//! whether that is one backend's checkpoints or a stream job's.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use gress_checkpoint::Storage;
use gress_checkpoint::manifest::MANIFESTS;
use gress_stream::{COMMITS, CheckpointStorage, S3Config};

use crate::exit;

/// A checkpoint location given on the command line.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    shown: String,
    storage: CheckpointStorage,
}

/// What a location holds.
pub(crate) enum Kind {
    /// A checkpoint manager's location (`manifests/`).
    Manager(Arc<dyn Storage>),
    /// A stream job's: `commits/` and `workers/<index>/`, with the worker
    /// indexes found there.
    Job(Vec<usize>),
}

impl Location {
    /// Parses `text`: `s3://bucket[/prefix]` or a local directory, which
    /// must exist (reading never creates one).
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let storage = if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("`{text}`: no bucket (s3://bucket/prefix)");
            }
            CheckpointStorage::S3(
                S3Config::new(bucket).with_prefix(prefix.trim_matches('/').to_string()),
            )
        } else {
            let path = PathBuf::from(text);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("{text} is not a directory"),
                Err(e) => bail!("cannot read {text}: {e}"),
            }
            CheckpointStorage::Local(path)
        };
        Ok(Location {
            shown: text.to_string(),
            storage,
        })
    }

    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// The storage under `sub` ("" for the location itself). For a local
    /// location, a missing sub-directory is an error, never created.
    pub(crate) fn open(&self, sub: &str) -> Result<Arc<dyn Storage>> {
        if let CheckpointStorage::Local(root) = &self.storage
            && !sub.is_empty()
            && !root.join(sub).is_dir()
        {
            bail!("{}: no {sub}", self.shown);
        }
        self.storage
            .open(sub)
            .with_context(|| format!("opening {}", self.shown))
    }

    /// The storage of job worker `w`.
    pub(crate) fn worker(&self, w: usize) -> Result<Arc<dyn Storage>> {
        self.open(&worker_sub(w))
    }

    /// Whether this is a manager's location or a job's (one listing of
    /// `workers/`, which a job's commands need anyway).
    pub(crate) fn kind(&self) -> Result<Kind> {
        let root = self.open("")?;
        let list = |prefix: &str| {
            root.list(prefix)
                .with_context(|| format!("listing {}", self.shown))
        };
        let mut workers: Vec<usize> = list("workers/")?
            .iter()
            .filter_map(|o| {
                o.path
                    .strip_prefix("workers/")?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        workers.sort_unstable();
        workers.dedup();
        if !workers.is_empty() || !list(COMMITS)?.is_empty() {
            return Ok(Kind::Job(workers));
        }
        if !list(MANIFESTS)?.is_empty() {
            return Ok(Kind::Manager(root));
        }
        bail!(Fail::not_found(format!(
            "{}: no checkpoints here (neither manifests/ of a backend's checkpoints nor commits/ of a job)",
            self.shown
        )))
    }
}

pub(crate) fn worker_sub(w: usize) -> String {
    format!("workers/{w:05}")
}

/// An error with its own exit code: what was asked for is not there
/// (4) or is damaged (3).
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Fail {
    pub(crate) fn not_found(message: String) -> Self {
        Fail {
            code: exit::NOT_FOUND,
            message,
        }
    }

    pub(crate) fn damaged(message: String) -> Self {
        Fail {
            code: exit::DAMAGED,
            message,
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fail {}
