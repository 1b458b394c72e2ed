//! Where a job's checkpoints and savepoints live: a local directory, a
//! prefix of an S3 bucket, or any storage.

use std::path::PathBuf;
use std::sync::Arc;

use gress_checkpoint::{LocalStorage, Storage};

use crate::error::{Error, Result};

/// Opens the storage under a sub-path (`""` for the root).
pub type OpenStorage = dyn Fn(&str) -> gress_checkpoint::Result<Arc<dyn Storage>> + Send + Sync;

/// Where a job keeps its checkpoints: every worker's under
/// `workers/<index>/`, the job's commit records under `commits/`.
#[derive(Clone)]
#[non_exhaustive]
pub enum CheckpointStorage {
    /// A local directory (or one every process of the job can reach).
    Local(PathBuf),
    /// S3-compatible object storage.
    S3(gress_checkpoint::S3Config),
    /// Any storage: opens the storage under a sub-path.
    Custom(Arc<OpenStorage>),
}

impl std::fmt::Debug for CheckpointStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointStorage::Local(p) => f.debug_tuple("Local").field(p).finish(),
            CheckpointStorage::S3(c) => f.debug_tuple("S3").field(c).finish(),
            CheckpointStorage::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl From<PathBuf> for CheckpointStorage {
    fn from(path: PathBuf) -> Self {
        CheckpointStorage::Local(path)
    }
}

impl From<&std::path::Path> for CheckpointStorage {
    fn from(path: &std::path::Path) -> Self {
        CheckpointStorage::Local(path.to_path_buf())
    }
}

impl From<gress_checkpoint::S3Config> for CheckpointStorage {
    fn from(config: gress_checkpoint::S3Config) -> Self {
        CheckpointStorage::S3(config)
    }
}

impl CheckpointStorage {
    /// A location as people write it: `s3://bucket[/prefix]` (endpoint,
    /// region and credentials from the `AWS_*` environment variables), else
    /// a local directory.
    pub fn from_url(text: &str) -> Result<Self> {
        match text.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Error::invalid(
                        "location",
                        format!("`{text}`: no bucket (s3://bucket/prefix)"),
                    ));
                }
                Ok(CheckpointStorage::S3(
                    gress_checkpoint::S3Config::new(bucket)
                        .with_prefix(prefix.trim_matches('/').to_string()),
                ))
            }
            None if text.is_empty() => Err(Error::invalid("location", "an empty path")),
            None => Ok(CheckpointStorage::Local(PathBuf::from(text))),
        }
    }

    /// Who runs the job these checkpoints belong to, if a run holds them
    /// now (its lease is live); reads only. A running job holds worker 0's
    /// location whatever its number of workers.
    pub fn held_by(&self) -> Result<Option<String>> {
        Ok(gress_checkpoint::live_holder(
            &*self.open("workers/00000")?,
        )?)
    }

    /// The storage under `sub` (`""` for the root).
    pub fn open(&self, sub: &str) -> Result<Arc<dyn Storage>> {
        Ok(match self {
            CheckpointStorage::Local(root) => {
                let dir = if sub.is_empty() {
                    root.clone()
                } else {
                    root.join(sub)
                };
                Arc::new(LocalStorage::new(dir)?)
            }
            CheckpointStorage::S3(config) => {
                let mut config = config.clone();
                if !sub.is_empty() {
                    let prefix = config.prefix.trim_end_matches('/');
                    config.prefix = if prefix.is_empty() {
                        sub.to_string()
                    } else {
                        format!("{prefix}/{sub}")
                    };
                }
                Arc::new(gress_checkpoint::S3Storage::new(config)?)
            }
            CheckpointStorage::Custom(open) => open(sub)?,
        })
    }
}

impl CheckpointStorage {
    /// The location as people write it: the path, `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match self {
            CheckpointStorage::Local(p) => p.display().to_string(),
            CheckpointStorage::S3(c) => format!("s3://{}/{}", c.bucket, c.prefix),
            CheckpointStorage::Custom(_) => "a custom storage".to_string(),
        }
    }
}
