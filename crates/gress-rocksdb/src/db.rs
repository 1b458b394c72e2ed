//! The backend's directory: which RocksDB database is live, and opening one.
//!
//! ```text
//! <path>/LOCK          held (flock) by the process that has the backend open
//! <path>/LIVE          "db-000007\n": the live database directory
//! <path>/db-000007/    the RocksDB database
//! <path>/db-000008/    a restore being prepared (deleted if it never commits)
//! <path>/restore-000009/ scratch of a range restore (other checkpoints'
//!                      files, SST files to ingest); deleted when it ends
//! ```
//!
//! A restore builds a whole new database beside the live one and switches
//! `LIVE` to it with one atomic rename (docs/format.md, "RocksDB layout").

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options, SliceTransform,
    WriteBufferManager, WriteOptions,
};

use gress_state::error::closed;
use gress_state::fsutil::sync_dir;
use gress_state::{Error, Result};

use crate::config::RocksDbConfig;
use crate::error;
use crate::ttl_filter::{TtlFilterFactory, TtlState};

/// Column family of the backend's own records.
pub(crate) const META_CF: &str = "gress-meta";
const META_FORMAT: &[u8] = b"format";
const META_DB_ID: &[u8] = b"db-id";
/// Version of the on-disk layout this build reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
/// Write buffer of [`META_CF`]: the smallest `write_buffer_size` a config
/// may have, so the data column family's is always the largest.
const META_WRITE_BUFFER_SIZE: usize = 64 << 10;
const LIVE: &str = "LIVE";
const LOCK: &str = "LOCK";

/// An open RocksDB database and what must live as long as it.
pub(crate) struct Db {
    db: Option<DB>,
    /// The DB-wide options; they own the statistics object.
    pub(crate) opts: Options,
    pub(crate) dir: PathBuf,
    /// Names this database's SST files in shared checkpoint storage; new
    /// for every database a restore creates.
    pub(crate) id: String,
    /// Delete the directory once the database is closed.
    retired: std::sync::atomic::AtomicBool,
    /// The backend directory's lock: held while any database of it is open.
    _lock: Arc<File>,
}

impl Db {
    pub(crate) fn db(&self) -> &DB {
        self.db
            .as_ref()
            .expect("the database stays open until Db is dropped")
    }

    /// Marks the directory for deletion when the last user lets go.
    pub(crate) fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        drop(self.db.take());
        if self.retired.load(std::sync::atomic::Ordering::Acquire)
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not delete a replaced database");
        }
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.dir)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Options shared by every database the backend opens: one block cache and
/// one memory budget for the old and the new database during a restore.
pub(crate) struct Engine {
    pub(crate) opts: Options,
    _cache: Option<Cache>,
    _write_buffer_manager: Option<WriteBufferManager>,
}

impl Engine {
    pub(crate) fn new(config: &RocksDbConfig, ttl: &Arc<TtlState>) -> Self {
        let (opts, cache, wbm) = build_options(config, ttl);
        Engine {
            opts,
            _cache: cache,
            _write_buffer_manager: wbm,
        }
    }

    /// Opens (creating if asked) the database in `dir` of `root`.
    pub(crate) fn open(&self, root: &Root, dir: &Path, create: bool) -> Result<Db> {
        // First, so that a closed backend creates no directory.
        let lock = root.lock()?;
        let mut opts = self.opts.clone();
        opts.create_if_missing(create);
        let mut meta_opts = Options::default();
        meta_opts.set_compression_type(rocksdb::DBCompressionType::None);
        // After a disk-full error RocksDB resumes by itself once the free
        // space reaches the largest write buffer of any column family;
        // RocksDB's default of 64 MiB here would set that bar for every
        // configuration. The column family holds two small records.
        meta_opts.set_write_buffer_size(META_WRITE_BUFFER_SIZE);
        let cfs = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone()),
            ColumnFamilyDescriptor::new(META_CF, meta_opts),
        ];
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| error::open(e, dir))?;
        let id = init_meta(&db)?;
        Ok(Db {
            db: Some(db),
            opts,
            dir: dir.to_path_buf(),
            id,
            retired: Default::default(),
            _lock: lock,
        })
    }

    /// Opens a database copied from elsewhere (a checkpoint) and gives it a
    /// new id, so its future SST files are never confused with the
    /// original's in shared storage.
    pub(crate) fn open_copy(&self, root: &Root, dir: &Path) -> Result<Db> {
        let mut db = self.open(root, dir, false)?;
        let id = new_db_id();
        let meta = meta_cf(db.db())?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.db()
            .put_cf_opt(meta, META_DB_ID, id.as_bytes(), &sync)
            .map_err(error::engine)?;
        db.id = id;
        Ok(db)
    }

    /// Opens the database in `dir` (a checkpoint's files) read-only, to
    /// read from it; checks its layout version. It takes no lock and
    /// writes nothing.
    pub(crate) fn open_read_only(&self, dir: &Path) -> Result<DB> {
        let cfs = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, self.opts.clone()),
            ColumnFamilyDescriptor::new(META_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors_read_only(&self.opts, dir, cfs, false)
            .map_err(|e| error::open(e, dir))?;
        let meta = meta_cf(&db)?;
        match db.get_cf(meta, META_FORMAT).map_err(error::engine)? {
            Some(v) => check_layout(&v)?,
            None => {
                return Err(Error::corrupted(
                    "RocksDB gress-meta",
                    0,
                    "no layout version",
                ));
            }
        }
        Ok(db)
    }
}

/// Refuses a layout version other than [`LAYOUT_VERSION`].
fn check_layout(v: &[u8]) -> Result<()> {
    let version = <[u8; 4]>::try_from(v).map(u32::from_be_bytes);
    if version.ok() != Some(LAYOUT_VERSION) {
        return Err(Error::UnsupportedFormat {
            found: format!("gress-rocksdb layout {v:02x?}").into(),
            supported: format!("layout {LAYOUT_VERSION}").into(),
        });
    }
    Ok(())
}

fn meta_cf(db: &DB) -> Result<&rocksdb::ColumnFamily> {
    db.cf_handle(META_CF)
        .ok_or_else(|| Error::corrupted("RocksDB database", 0, "missing column family gress-meta"))
}

/// A random 128-bit id, from the OS-seeded hasher keys of the standard
/// library.
fn new_db_id() -> String {
    let mut id = String::new();
    for salt in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        id.push_str(&format!("{:016x}", h.finish()));
    }
    id
}

/// Reads (or, for a new database, writes) the layout version and the id.
fn init_meta(db: &DB) -> Result<String> {
    let meta = meta_cf(db)?;
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    match db.get_cf(meta, META_FORMAT).map_err(error::engine)? {
        Some(v) => check_layout(&v)?,
        None => db
            .put_cf_opt(meta, META_FORMAT, LAYOUT_VERSION.to_be_bytes(), &sync)
            .map_err(error::engine)?,
    }
    match db.get_cf(meta, META_DB_ID).map_err(error::engine)? {
        Some(v) if !v.is_empty() && v.iter().all(u8::is_ascii_hexdigit) => {
            Ok(String::from_utf8_lossy(&v).into_owned())
        }
        Some(_) => Err(Error::corrupted(
            "RocksDB gress-meta",
            0,
            "db-id is not hex",
        )),
        None => {
            let id = new_db_id();
            db.put_cf_opt(meta, META_DB_ID, id.as_bytes(), &sync)
                .map_err(error::engine)?;
            Ok(id)
        }
    }
}

/// The backend's root directory, locked for this process.
pub(crate) struct Root {
    pub(crate) path: PathBuf,
    /// The directory lock, shared with every open database; dropped from
    /// here on close, so it goes with the last database.
    lock: parking_lot::Mutex<Option<Arc<File>>>,
}

impl Root {
    /// Creates or checks the directory and takes its lock.
    pub(crate) fn open(path: &Path, create_if_missing: bool) -> Result<Self> {
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::invalid_config(
                    "path",
                    format!("{} exists and is not a directory", path.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create_if_missing {
                    return Err(Error::invalid_config(
                        "path",
                        format!(
                            "{} does not exist and create_if_missing is false",
                            path.display()
                        ),
                    ));
                }
                fs::create_dir_all(path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
        let lock_path = path.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", lock_path.display()), e));
            }
        }
        Ok(Root {
            path: path.to_path_buf(),
            lock: parking_lot::Mutex::new(Some(Arc::new(lock))),
        })
    }

    fn lock(&self) -> Result<Arc<File>> {
        self.lock.lock().clone().ok_or_else(closed)
    }

    /// Lets go of this handle on the directory lock (at close).
    pub(crate) fn release(&self) {
        self.lock.lock().take();
    }

    /// The live database's directory name, if one was ever made live.
    pub(crate) fn live(&self) -> Result<Option<String>> {
        let live = self.path.join(LIVE);
        match fs::read_to_string(&live) {
            Ok(s) => {
                let name = s.trim_end().to_string();
                if parse_db_name(&name).is_none() {
                    return Err(Error::corrupted(
                        live.display().to_string(),
                        0,
                        format!("`{name}` is not a database directory name"),
                    ));
                }
                Ok(Some(name))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", live.display()), e)),
        }
    }

    /// Points `LIVE` at `name`: fsyncs the directory (so the entry of the
    /// database directory `name` is durable before `LIVE` can name it),
    /// writes `LIVE.tmp`, fsyncs it and renames it over `LIVE`. The rename
    /// is the commit point of a restore: on `Err`, `LIVE` still names the
    /// database it named before. The rename becomes durable only with
    /// [`Root::sync`].
    pub(crate) fn set_live(&self, name: &str) -> Result<()> {
        let live = self.path.join(LIVE);
        let tmp = self.path.join(format!("{LIVE}.tmp"));
        let io = |what: &str, e| Error::io(format!("{what} {}", live.display()), e);
        sync_dir(&self.path).map_err(|e| io("syncing the directory of", e))?;
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{name}\n").as_bytes())?;
                f.sync_all()
            })
            .map_err(|e| io("writing", e));
        let renamed = written.and_then(|()| fs::rename(&tmp, &live).map_err(|e| io("renaming", e)));
        if renamed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        renamed
    }

    /// Fsyncs the backend's directory, making a [`Root::set_live`] durable.
    pub(crate) fn sync(&self) -> Result<()> {
        #[cfg(test)]
        if faults::DIR_SYNC_FAILS.with(std::cell::Cell::get) {
            return Err(Error::io(
                format!("syncing {}", self.path.display()),
                std::io::Error::other("injected fault"),
            ));
        }
        sync_dir(&self.path).map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }

    /// [`Root::set_live`], then [`Root::sync`], for a database made live
    /// when nothing else was.
    pub(crate) fn set_live_synced(&self, name: &str) -> Result<()> {
        self.set_live(name)?;
        self.sync()
    }

    /// Database directories other than `keep` (left by a restore that never
    /// committed, or replaced by one whose old database was still open),
    /// and the scratch directories of captures and range restores.
    pub(crate) fn stale_dbs(&self, keep: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.path)
            .map_err(|e| Error::io(format!("listing {}", self.path.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("listing {}", self.path.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_db = parse_db_name(&name).is_some() && name != keep;
            let stale_scratch = name.starts_with("capture-") || name.starts_with("restore-");
            if stale_db || stale_scratch {
                out.push(entry.path());
            }
        }
        Ok(out)
    }
}

/// `db-000007` → 7.
pub(crate) fn parse_db_name(name: &str) -> Option<u64> {
    let n = name.strip_prefix("db-")?;
    (n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok())?
}

pub(crate) fn db_name(n: u64) -> String {
    format!("db-{n:06}")
}

pub(crate) fn write_options(config: &RocksDbConfig) -> WriteOptions {
    let mut write_opts = WriteOptions::default();
    write_opts.disable_wal(!config.wal);
    write_opts.set_sync(config.sync_writes && config.wal);
    write_opts
}

pub(crate) fn build_options(
    config: &RocksDbConfig,
    ttl: &Arc<TtlState>,
) -> (Options, Option<Cache>, Option<WriteBufferManager>) {
    let mut opts = Options::default();
    opts.create_if_missing(config.create_if_missing);
    opts.create_missing_column_families(true);
    opts.set_write_buffer_size(config.write_buffer_size);
    opts.set_max_write_buffer_number(config.max_write_buffer_number);
    opts.set_max_open_files(config.max_open_files);
    opts.set_max_background_jobs(config.max_background_jobs);
    opts.set_compression_type(config.compression.to_rocksdb());
    opts.set_level_compaction_dynamic_level_bytes(true);
    if config.enable_statistics {
        opts.enable_statistics();
    }

    let mut table = BlockBasedOptions::default();
    table.set_block_size(config.block_size);
    table.set_format_version(6);
    let cache = if config.block_cache_size > 0 {
        let cache = Cache::new_lru_cache(config.block_cache_size);
        table.set_block_cache(&cache);
        // Index and filter blocks live in the cache, so memory stays within
        // its size; partitioned, so a state larger than the cache does not
        // thrash whole-file filters in and out, with the top levels pinned.
        table.set_cache_index_and_filter_blocks(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_pin_top_level_index_and_filter(true);
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        Some(cache)
    } else {
        table.disable_cache();
        None
    };
    if config.bloom_filter_bits > 0.0 {
        table.set_bloom_filter(config.bloom_filter_bits, false);
        table.set_whole_key_filtering(true);
        // A bloom filter over the memtable's keys too: a read of a key the
        // memtable lacks (most, for a cache that reads only its misses)
        // skips the skip list.
        opts.set_memtable_prefix_bloom_ratio(0.02);
        opts.set_memtable_whole_key_filtering(true);
    }
    if let Some(len) = config.prefix_len {
        // Set before open, so the filters of every SST carry prefixes.
        opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(len));
        opts.set_memtable_prefix_bloom_ratio(0.1);
        opts.set_memtable_whole_key_filtering(true);
    }
    opts.set_block_based_table_factory(&table);

    let wbm = match (&cache, config.bound_memory) {
        (Some(cache), true) => {
            let wbm = WriteBufferManager::new_write_buffer_manager_with_cache(
                config.block_cache_size,
                true,
                cache.clone(),
            );
            opts.set_write_buffer_manager(&wbm);
            Some(wbm)
        }
        _ => None,
    };

    opts.set_compaction_filter_factory(TtlFilterFactory {
        clock: Arc::clone(&config.clock),
        state: Arc::clone(ttl),
        grace_ms: u64::try_from(config.ttl_compaction_grace.as_millis()).unwrap_or(u64::MAX),
    });
    if config.ttl_enabled {
        // Files untouched by writes are still rewritten, and so filtered,
        // once they are this old.
        let secs = config.default_ttl.as_secs().clamp(3600, 30 * 86_400);
        opts.set_periodic_compaction_seconds(secs);
    }
    (opts, cache, wbm)
}

/// Faults that unit tests inject into the directory steps.
#[cfg(test)]
pub(crate) mod faults {
    thread_local! {
        /// Makes [`super::Root::sync`] fail on this thread.
        pub(crate) static DIR_SYNC_FAILS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
}
