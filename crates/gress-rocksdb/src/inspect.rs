//! Reading a backend directory without changing it, for tools.
//!
//! [`ReadOnlyDb::open`] takes the directory's lock, so it refuses a
//! directory that a running backend holds ([`Error::Locked`]) and no
//! backend can open it while it is being read. The database is opened
//! read-only: nothing in the directory is written, not even by a WAL
//! replay.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{DB, IteratorMode};

use gress_state::ttl::StoredValue;
use gress_state::{Error, Result};

use crate::config::RocksDbConfig;
use crate::db::{Engine, Root};
use crate::error;
use crate::ttl_filter::TtlState;

/// A backend directory opened read-only.
pub struct ReadOnlyDb {
    db: DB,
    live: String,
    path: PathBuf,
    _engine: Engine,
    _root: Root,
}

impl std::fmt::Debug for ReadOnlyDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyDb")
            .field("path", &self.path)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

/// One stored entry, as the backend wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The user's value.
    pub value: Vec<u8>,
    /// When it expires, ms since the UNIX epoch; `None` for never. An
    /// expired entry stays stored until a compaction drops it.
    pub expires_at_ms: Option<u64>,
}

/// One level of the LSM tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelInfo {
    /// The level number.
    pub level: i32,
    /// SST files in it.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

impl ReadOnlyDb {
    /// Opens the backend directory `path` read-only. Fails with
    /// [`Error::Locked`] if a process has it open, with a clear error if it
    /// is missing or not a backend directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let root = Root::open(path, false)?;
        let live = root.live()?.ok_or_else(|| {
            Error::invalid_config(
                "path",
                format!(
                    "{} is not a gress-rocksdb directory (no LIVE file)",
                    path.display()
                ),
            )
        })?;
        let config = RocksDbConfig::new(path).with_block_cache_size(8 << 20);
        let engine = Engine::new(&config, &Arc::new(TtlState::default()));
        let db = engine.open_read_only(&path.join(&live))?;
        Ok(ReadOnlyDb {
            db,
            live,
            path: path.to_path_buf(),
            _engine: engine,
            _root: root,
        })
    }

    /// The live database's directory name (`db-NNNNNN`).
    pub fn live(&self) -> &str {
        &self.live
    }

    /// A RocksDB property of the data column family, `None` if unknown.
    pub fn property(&self, name: &str) -> Result<Option<String>> {
        self.db.property_value(name).map_err(error::engine)
    }

    /// A RocksDB integer property, `None` if unknown.
    pub fn property_int(&self, name: &str) -> Result<Option<u64>> {
        self.db.property_int_value(name).map_err(error::engine)
    }

    /// The SST files of the live database, by level.
    pub fn levels(&self) -> Result<Vec<LevelInfo>> {
        let mut levels: Vec<LevelInfo> = Vec::new();
        for f in self.db.live_files().map_err(error::engine)? {
            if f.column_family_name != rocksdb::DEFAULT_COLUMN_FAMILY_NAME {
                continue;
            }
            match levels.iter_mut().find(|l| l.level == f.level) {
                Some(l) => {
                    l.files += 1;
                    l.bytes += f.size as u64;
                }
                None => levels.push(LevelInfo {
                    level: f.level,
                    files: 1,
                    bytes: f.size as u64,
                }),
            }
        }
        levels.sort_by_key(|l| l.level);
        Ok(levels)
    }

    /// The entry stored under `key`, expired or not.
    pub fn get(&self, key: &[u8]) -> Result<Option<StoredEntry>> {
        match self.db.get_pinned(key).map_err(error::engine)? {
            Some(stored) => {
                let v = StoredValue::decode(&stored)?;
                Ok(Some(StoredEntry {
                    key: key.to_vec(),
                    value: v.value.to_vec(),
                    expires_at_ms: v.expires_at_ms,
                }))
            }
            None => Ok(None),
        }
    }

    /// Calls `f` with every stored entry whose key starts with `prefix`,
    /// in key order, until it returns `false`.
    pub fn scan(&self, prefix: &[u8], mut f: impl FnMut(StoredEntry) -> bool) -> Result<()> {
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        // Whatever prefix extractor the database was written with.
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_total_order_seek(true);
        for item in self.db.iterator_opt(mode, opts) {
            let (key, stored) = item.map_err(error::engine)?;
            if !key.starts_with(prefix) {
                break;
            }
            let v = StoredValue::decode(&stored)?;
            let entry = StoredEntry {
                key: key.to_vec(),
                value: v.value.to_vec(),
                expires_at_ms: v.expires_at_ms,
            };
            if !f(entry) {
                break;
            }
        }
        Ok(())
    }
}
