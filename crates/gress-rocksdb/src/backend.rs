//! `RocksDbStateBackend`.
//!
//! Layout on disk (docs/format.md, "RocksDB layout"): the default column
//! family holds the state, each key prefixed by a 4-byte big-endian
//! *generation*, each value in the core's stored-value form (a tag byte,
//! then an expiry if any). The `gress-meta` column family records the
//! current generation. A restore writes the snapshot into the next
//! generation and then switches generations with one synced write, so it is
//! atomic and a failed or crashed restore leaves the old state in place.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamilyDescriptor, CompactOptions,
    DB, Options, ReadOptions, SliceTransform, WriteBufferManager, WriteOptions,
};

use gress_state::backend::prefix_successor;
use gress_state::metrics::{Counter, MetricsRecorder, Op};
use gress_state::snapshot::{SnapshotEntry, SnapshotKind, SnapshotReader, SnapshotWriter};
use gress_state::ttl::{StoredValue, TtlPolicy, check_key, check_value, is_expired};
use gress_state::{
    BatchOp, Clock, Error, KeyRange, KeyValue, Metrics, RestoreSummary, Result, ScanIter,
    SnapshotSummary, StateBackend, WriteBatch,
};

use crate::config::RocksDbConfig;
use crate::error;
use crate::ttl_filter::TtlFilterFactory;

/// Column family of the backend's own records.
pub(crate) const META_CF: &str = "gress-meta";
const META_GENERATION: &[u8] = b"generation";
const META_FORMAT: &[u8] = b"format";
/// Version of the on-disk layout this build reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
const GEN_LEN: usize = 4;
/// A restore writes to RocksDB in batches of about this many bytes.
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// The open database and what must live as long as it.
pub(crate) struct Db {
    pub(crate) db: DB,
    /// The DB-wide options; they own the statistics object.
    opts: Options,
    path: PathBuf,
    _cache: Option<Cache>,
    _write_buffer_manager: Option<WriteBufferManager>,
}

/// What a point operation needs: the database and the live generation.
struct Handle {
    db: Arc<Db>,
    generation: u32,
}

/// Persistent state in RocksDB, for state larger than RAM.
///
/// See [`StateBackend`] for the contract, which the conformance suite
/// checks. RocksDB is thread-safe and called without any lock of ours:
/// each call loads the current database handle from an `ArcSwap`.
///
/// Durability: with the WAL on (the default), every acknowledged write
/// survives a crash of the process; with `sync_writes` it also survives an
/// operating-system crash. With the WAL off, writes since the last memtable
/// flush are lost on a crash; recover such a backend from a checkpoint.
pub struct RocksDbStateBackend {
    state: ArcSwapOption<Handle>,
    path: PathBuf,
    ttl: TtlPolicy,
    clock: Arc<dyn Clock>,
    metrics: MetricsRecorder,
    write_opts: WriteOptions,
    /// Default read options, created once: building them per call costs
    /// an allocation in RocksDB's C API.
    read_opts: ReadOptions,
    prefix_len: Option<usize>,
    ttl_dropped: Arc<AtomicU64>,
    /// Serialises restores with each other (not with reads or writes).
    restore_lock: Mutex<()>,
}

impl fmt::Debug for RocksDbStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksDbStateBackend")
            .field("path", &self.path)
            .field("ttl", &self.ttl)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Scratch space for encoding stored keys and values without allocating.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the stored key (generation ++ key) and, if given, the
/// stored value (header ++ value), encoded into a per-thread buffer.
fn with_encoded<R>(
    generation: u32,
    key: &[u8],
    value: Option<(&[u8], Option<u64>)>,
    f: impl FnOnce(&[u8], &[u8]) -> R,
) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        buf.extend_from_slice(&generation.to_be_bytes());
        buf.extend_from_slice(key);
        let key_end = buf.len();
        if let Some((value, expiry)) = value {
            StoredValue::encode_into(expiry, value, &mut buf);
        }
        let (k, v) = buf.split_at(key_end);
        let r = f(k, v);
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        r
    })
}

fn stored_key(generation: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(GEN_LEN + key.len());
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The key range `[generation, generation + 1)` as stored keys.
fn generation_bounds(generation: u32) -> (Vec<u8>, Option<Vec<u8>>) {
    let lower = generation.to_be_bytes().to_vec();
    let upper = generation.checked_add(1).map(|g| g.to_be_bytes().to_vec());
    (lower, upper)
}

fn decode<'a>(stored: &'a [u8]) -> Result<StoredValue<'a>> {
    StoredValue::decode(stored)
}

impl RocksDbStateBackend {
    /// Opens (or creates) the database at `config.path`.
    pub fn open(config: RocksDbConfig) -> Result<Self> {
        config.validate()?;
        prepare_dir(&config.path, config.create_if_missing)?;
        let ttl = TtlPolicy::new(config.ttl_enabled, config.default_ttl)?;
        let ttl_dropped = Arc::new(AtomicU64::new(0));
        let (opts, cache, wbm) = build_options(&config, &ttl_dropped);
        let mut meta_opts = Options::default();
        meta_opts.set_compression_type(rocksdb::DBCompressionType::None);
        let cfs = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone()),
            ColumnFamilyDescriptor::new(META_CF, meta_opts),
        ];
        let db = DB::open_cf_descriptors(&opts, &config.path, cfs)
            .map_err(|e| error::open(e, &config.path))?;
        let generation = init_meta(&db)?;
        // Drop other generations: the remains of a restore that crashed
        // before switching, or of the generation a restore replaced.
        drop_other_generations(&db, generation)?;

        let write_opts = write_options(&config);

        let db = Arc::new(Db {
            db,
            opts,
            path: config.path.clone(),
            _cache: cache,
            _write_buffer_manager: wbm,
        });
        tracing::debug!(path = %config.path.display(), generation, "opened RocksDB state");
        Ok(RocksDbStateBackend {
            state: ArcSwapOption::from_pointee(Handle { db, generation }),
            path: config.path,
            ttl,
            clock: config.clock,
            metrics: MetricsRecorder::new(config.latency_sample_every),
            write_opts,
            read_opts: ReadOptions::default(),
            prefix_len: config.prefix_len,
            ttl_dropped,
            restore_lock: Mutex::new(()),
        })
    }

    /// Opens a backend on a copy of a checkpoint made by
    /// [`RocksDbStateBackend::create_checkpoint`]: SST files are hard-linked
    /// (copied if on another file system), the rest copied, into
    /// `config.path`, which must not exist or be empty. The checkpoint is
    /// left untouched.
    pub fn open_checkpoint(checkpoint: &Path, config: RocksDbConfig) -> Result<Self> {
        config.validate()?;
        crate::checkpoint::materialize(checkpoint, &config.path)?;
        Self::open(config)
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn handle(&self) -> Result<arc_swap::Guard<Option<Arc<Handle>>>> {
        let guard = self.state.load();
        if guard.is_none() {
            return Err(Error::Closed);
        }
        Ok(guard)
    }

    fn db(&self) -> Result<Arc<Db>> {
        let guard = self.handle()?;
        Ok(Arc::clone(&guard.as_ref().expect("checked above").db))
    }

    fn get_one(&self, h: &Handle, key: &[u8], now: &mut Option<u64>) -> Result<Option<Vec<u8>>> {
        let found = with_encoded(h.generation, key, None, |k, _| {
            h.db.db.get_pinned_opt(k, &self.read_opts)
        })
        .map_err(error::engine)?;
        let Some(stored) = found else {
            return Ok(None);
        };
        let sv = decode(&stored)?;
        if let Some(at) = sv.expires_at_ms {
            let now = *now.get_or_insert_with(|| self.clock.now_ms());
            if is_expired(at, now) {
                // Left for the compaction filter: deleting here could race a
                // newer write of the same key.
                return Ok(None);
            }
        }
        Ok(Some(sv.value.to_vec()))
    }

    fn put_inner(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        let expiry = self.ttl.expiry(ttl, || self.clock.now_ms())?;
        let guard = self.handle()?;
        let h = guard.as_ref().expect("checked by handle()");
        with_encoded(h.generation, key, Some((value, expiry)), |k, v| {
            h.db.db.put_opt(k, v, &self.write_opts)
        })
        .map_err(error::engine)
    }

    /// A RocksDB property of the data column family, e.g.
    /// `rocksdb.estimate-num-keys`, `rocksdb.cur-size-all-mem-tables`,
    /// `rocksdb.block-cache-usage`; `None` for a name RocksDB does not know.
    pub fn property(&self, name: &str) -> Result<Option<String>> {
        let db = self.db()?;
        db.db.property_value(name).map_err(error::engine)
    }

    /// A RocksDB integer property, or `None` if unknown.
    pub fn property_int(&self, name: &str) -> Result<Option<u64>> {
        let db = self.db()?;
        db.db.property_int_value(name).map_err(error::engine)
    }

    /// Compacts the whole key space; expired entries are dropped on the way.
    pub fn compact(&self) -> Result<()> {
        let db = self.db()?;
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        db.db.compact_range_opt(None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }

    /// Writes a hard-linked RocksDB checkpoint of the whole database to
    /// `dir`, which must not exist. Open it with
    /// [`RocksDbStateBackend::open_checkpoint`].
    pub fn create_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if dir.exists() {
            return Err(Error::invalid_argument(
                "dir",
                format!("checkpoint directory {} already exists", dir.display()),
            ));
        }
        let db = self.db()?;
        let cp = rocksdb::checkpoint::Checkpoint::new(&db.db).map_err(error::engine)?;
        cp.create_checkpoint(dir).map_err(error::engine)?;
        Ok(())
    }

    /// Entries stored, as RocksDB estimates them (`rocksdb.estimate-num-keys`).
    pub fn estimate_num_keys(&self) -> Result<u64> {
        Ok(self.property_int("rocksdb.estimate-num-keys")?.unwrap_or(0))
    }

    /// Bytes of SST files on disk (`rocksdb.total-sst-files-size`).
    pub fn sst_bytes(&self) -> Result<u64> {
        Ok(self
            .property_int("rocksdb.total-sst-files-size")?
            .unwrap_or(0))
    }

    /// The SST files of the live database, for incremental checkpoints.
    pub fn live_files(&self) -> Result<Vec<rocksdb::LiveFile>> {
        let db = self.db()?;
        db.db.live_files().map_err(error::engine)
    }

    fn engine_metrics(&self, db: &Db) -> BTreeMap<String, u64> {
        use rocksdb::statistics::Ticker;
        let mut m = BTreeMap::new();
        let tickers = [
            ("block_cache_hit", Ticker::BlockCacheHit),
            ("block_cache_miss", Ticker::BlockCacheMiss),
            ("bytes_read", Ticker::BytesRead),
            ("bytes_written", Ticker::BytesWritten),
            ("stall_micros", Ticker::StallMicros),
            ("bloom_filter_useful", Ticker::BloomFilterUseful),
            (
                "bloom_filter_prefix_checked",
                Ticker::BloomFilterPrefixChecked,
            ),
            (
                "bloom_filter_prefix_useful",
                Ticker::BloomFilterPrefixUseful,
            ),
            ("memtable_hit", Ticker::MemtableHit),
            ("memtable_miss", Ticker::MemtableMiss),
            ("compaction_key_drop_user", Ticker::CompactionKeyDropUser),
            ("wal_file_synced", Ticker::WalFileSynced),
            ("compact_read_bytes", Ticker::CompactReadBytes),
            ("compact_write_bytes", Ticker::CompactWriteBytes),
            ("flush_write_bytes", Ticker::FlushWriteBytes),
        ];
        for (name, t) in tickers {
            m.insert(name.to_string(), db.opts.get_ticker_count(t));
        }
        // Seeks that a (prefix) filter answered: SST files skipped, and
        // files the filter could not rule out.
        let sum = |a, b| db.opts.get_ticker_count(a) + db.opts.get_ticker_count(b);
        m.insert(
            "seek_filtered".to_string(),
            sum(
                Ticker::LastLevelSeekFiltered,
                Ticker::NonLastLevelSeekFiltered,
            ),
        );
        m.insert(
            "seek_filter_match".to_string(),
            sum(
                Ticker::LastLevelSeekFilterMatch,
                Ticker::NonLastLevelSeekFilterMatch,
            ),
        );
        for prop in [
            "rocksdb.estimate-num-keys",
            "rocksdb.cur-size-all-mem-tables",
            "rocksdb.block-cache-usage",
            "rocksdb.total-sst-files-size",
            "rocksdb.estimate-live-data-size",
        ] {
            if let Ok(Some(v)) = db.db.property_int_value(prop) {
                m.insert(prop.trim_start_matches("rocksdb.").replace('-', "_"), v);
            }
        }
        m.insert(
            "ttl_dropped_by_compaction".to_string(),
            self.ttl_dropped.load(Ordering::Relaxed),
        );
        m
    }

    /// Read options for a scan of `range` in `generation`.
    fn scan_read_options(&self, generation: u32, range: &KeyRange) -> ReadOptions {
        let mut ro = ReadOptions::default();
        let (gen_lower, gen_upper) = generation_bounds(generation);
        let lower = match &range.start {
            Bound::Included(s) => stored_key(generation, s),
            Bound::Excluded(s) => {
                let mut k = stored_key(generation, s);
                k.push(0);
                k
            }
            Bound::Unbounded => gen_lower,
        };
        let upper = match &range.end {
            Bound::Excluded(e) => Some(stored_key(generation, e)),
            Bound::Included(e) => {
                let mut k = stored_key(generation, e);
                k.push(0);
                Some(k)
            }
            Bound::Unbounded => gen_upper,
        };
        // A prefix scan at least as long as the configured prefix can use
        // the prefix bloom filters; anything else must seek in total order.
        let prefix_scan = match (&range.start, &range.end, self.prefix_len) {
            (Bound::Included(s), Bound::Excluded(e), Some(len)) => {
                s.len() >= len && prefix_successor(s).as_ref() == Some(e)
            }
            _ => false,
        };
        if prefix_scan {
            ro.set_prefix_same_as_start(true);
        } else {
            ro.set_total_order_seek(true);
        }
        ro.set_iterate_lower_bound(lower);
        if let Some(upper) = upper {
            ro.set_iterate_upper_bound(upper);
        }
        ro
    }
}

/// Creates the directory, or checks that it is one.
fn prepare_dir(path: &Path, create_if_missing: bool) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::invalid_config(
            "path",
            format!("{} exists and is not a directory", path.display()),
        )),
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
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))
        }
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

pub(crate) fn write_options(config: &RocksDbConfig) -> WriteOptions {
    let mut write_opts = WriteOptions::default();
    write_opts.disable_wal(!config.wal);
    write_opts.set_sync(config.sync_writes && config.wal);
    write_opts
}

pub(crate) fn build_options(
    config: &RocksDbConfig,
    ttl_dropped: &Arc<AtomicU64>,
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
    }
    if let Some(len) = config.prefix_len {
        // Set before open, so the filters of every SST carry prefixes.
        opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(GEN_LEN + len));
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
        dropped: Arc::clone(ttl_dropped),
    });
    if config.ttl_enabled {
        // Files untouched by writes are still rewritten, and so filtered,
        // once they are this old.
        let secs = config.default_ttl.as_secs().clamp(3600, 30 * 86_400);
        opts.set_periodic_compaction_seconds(secs);
    }
    (opts, cache, wbm)
}

/// Reads (or, for a new database, writes) the layout version and the live
/// generation.
fn init_meta(db: &DB) -> Result<u32> {
    let meta = db.cf_handle(META_CF).ok_or_else(|| {
        Error::corrupted("RocksDB database", 0, "missing column family gress-meta")
    })?;
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    match db.get_cf(meta, META_FORMAT).map_err(error::engine)? {
        Some(v) => {
            let version = <[u8; 4]>::try_from(v.as_slice()).map(u32::from_be_bytes);
            if version.ok() != Some(LAYOUT_VERSION) {
                return Err(Error::UnsupportedFormat {
                    found: format!("gress-rocksdb layout {v:02x?}").into(),
                    supported: format!("layout {LAYOUT_VERSION}").into(),
                });
            }
        }
        None => db
            .put_cf_opt(meta, META_FORMAT, LAYOUT_VERSION.to_be_bytes(), &sync)
            .map_err(error::engine)?,
    }
    match db.get_cf(meta, META_GENERATION).map_err(error::engine)? {
        Some(v) => <[u8; 4]>::try_from(v.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| Error::corrupted("RocksDB gress-meta", 0, "generation is not 4 bytes")),
        None => {
            db.put_cf_opt(meta, META_GENERATION, 0u32.to_be_bytes(), &sync)
                .map_err(error::engine)?;
            Ok(0)
        }
    }
}

fn drop_other_generations(db: &DB, keep: u32) -> Result<()> {
    let (lower, upper) = generation_bounds(keep);
    if keep > 0 {
        clear_range(db, &[0u8; 4], &lower)?;
    }
    if let Some(upper) = upper {
        clear_range(db, &upper, &[0xFFu8; 5])?;
    }
    Ok(())
}

/// Deletes every data key in `[lower, upper)`, if there is any, and
/// compacts the range, so that no range tombstone is left behind to slow
/// down reads of the live generation.
fn clear_range(db: &DB, lower: &[u8], upper: &[u8]) -> Result<()> {
    let mut ro = ReadOptions::default();
    ro.set_total_order_seek(true);
    ro.fill_cache(false);
    ro.set_iterate_upper_bound(upper.to_vec());
    let mut it = db.raw_iterator_opt(ro);
    it.seek(lower);
    let any = it.valid();
    it.status().map_err(error::engine)?;
    drop(it);
    if !any {
        return Ok(());
    }
    let cf = db
        .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
        .ok_or_else(|| Error::corrupted("RocksDB database", 0, "missing default column family"))?;
    db.delete_range_cf(cf, lower, upper)
        .map_err(error::engine)?;
    db.flush().map_err(error::engine)?;
    db.compact_range(Some(lower), Some(upper));
    Ok(())
}

self_cell::self_cell!(
    /// A RocksDB iterator together with the database it reads, so a scan
    /// outlives neither and keeps the database open while it runs.
    struct ScanCell {
        owner: Arc<Db>,
        #[covariant]
        dependent: RawIter,
    }
);

type RawIter<'a> = rocksdb::DBRawIteratorWithThreadMode<'a, DB>;

/// A scan's iterator: live entries of one generation in key order.
struct Scan {
    cell: ScanCell,
    now_ms: u64,
    started: bool,
    done: bool,
}

impl Iterator for Scan {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let now = self.now_ms;
        let started = std::mem::replace(&mut self.started, true);
        let item = self.cell.with_dependent_mut(|_, it| {
            if started {
                it.next();
            } else {
                it.seek_to_first();
            }
            loop {
                if !it.valid() {
                    return it.status().err().map(|e| Err(error::engine(e)));
                }
                let (Some(k), Some(v)) = (it.key(), it.value()) else {
                    return None;
                };
                match decode(v) {
                    Ok(sv) if sv.is_expired_at(now) => it.next(),
                    Ok(sv) => return Some(Ok((k[GEN_LEN..].to_vec(), sv.value.to_vec()))),
                    Err(e) => return Some(Err(e)),
                }
            }
        });
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

impl StateBackend for RocksDbStateBackend {
    fn name(&self) -> &'static str {
        "rocksdb"
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let local = self.metrics.local();
        let timer = local.start(Op::Get);
        let guard = self.handle()?;
        let h = guard.as_ref().expect("checked by handle()");
        let found = self.get_one(h, key, &mut None)?;
        local.add(
            if found.is_some() {
                Counter::Hit
            } else {
                Counter::Miss
            },
            1,
        );
        local.finish(timer);
        Ok(found)
    }

    fn multi_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let local = self.metrics.local();
        let timer = local.start(Op::MultiGet);
        let guard = self.handle()?;
        let h = guard.as_ref().expect("checked by handle()");
        let stored: Vec<Vec<u8>> = keys.iter().map(|k| stored_key(h.generation, k)).collect();
        let mut now = None;
        let mut out = Vec::with_capacity(keys.len());
        let mut hits = 0;
        for found in h.db.db.multi_get_opt(&stored, &self.read_opts) {
            let value = match found.map_err(error::engine)? {
                None => None,
                Some(stored) => {
                    let sv = decode(&stored)?;
                    let dead = sv.expires_at_ms.is_some_and(|at| {
                        is_expired(at, *now.get_or_insert_with(|| self.clock.now_ms()))
                    });
                    (!dead).then(|| sv.value.to_vec())
                }
            };
            hits += u64::from(value.is_some());
            out.push(value);
        }
        local.add(Counter::Hit, hits);
        local.add(Counter::Miss, keys.len() as u64 - hits);
        local.finish(timer);
        Ok(out)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let local = self.metrics.local();
        let timer = local.start(Op::Put);
        self.put_inner(key, value, None)?;
        local.add(Counter::Put, 1);
        local.finish(timer);
        Ok(())
    }

    fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let local = self.metrics.local();
        let timer = local.start(Op::Put);
        self.put_inner(key, value, Some(ttl))?;
        local.add(Counter::Put, 1);
        local.finish(timer);
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        let local = self.metrics.local();
        let timer = local.start(Op::Delete);
        let guard = self.handle()?;
        let h = guard.as_ref().expect("checked by handle()");
        with_encoded(h.generation, key, None, |k, _| {
            h.db.db.delete_opt(k, &self.write_opts)
        })
        .map_err(error::engine)?;
        local.add(Counter::Delete, 1);
        local.finish(timer);
        Ok(())
    }

    fn write_batch(&self, batch: &WriteBatch) -> Result<()> {
        let local = self.metrics.local();
        let timer = local.start(Op::Batch);
        batch.validate()?;
        let guard = self.handle()?;
        let h = guard.as_ref().expect("checked by handle()");
        let mut now = None;
        // Room for every key and value plus RocksDB's per-record framing.
        let mut wb = rocksdb::WriteBatch::with_capacity_bytes(
            batch.byte_len() + batch.len() * (GEN_LEN + 9 + 12),
        );
        let (mut n_puts, mut n_deletes) = (0, 0);
        for op in batch.ops() {
            match op {
                BatchOp::Put { key, value, ttl } => {
                    let expiry = self
                        .ttl
                        .expiry(ttl, || *now.get_or_insert_with(|| self.clock.now_ms()))?;
                    with_encoded(h.generation, key, Some((value, expiry)), |k, v| {
                        wb.put(k, v)
                    });
                    n_puts += 1;
                }
                BatchOp::Delete { key } => {
                    with_encoded(h.generation, key, None, |k, _| wb.delete(k));
                    n_deletes += 1;
                }
            }
        }
        h.db.db
            .write_opt(wb, &self.write_opts)
            .map_err(error::engine)?;
        local.add(Counter::Put, n_puts);
        local.add(Counter::Delete, n_deletes);
        local.add(Counter::Batch, 1);
        local.finish(timer);
        Ok(())
    }

    fn scan(&self, range: KeyRange) -> Result<ScanIter<'_>> {
        let local = self.metrics.local();
        let timer = local.start(Op::Scan);
        let (db, generation) = {
            let guard = self.handle()?;
            let h = guard.as_ref().expect("checked by handle()");
            (Arc::clone(&h.db), h.generation)
        };
        let ro = self.scan_read_options(generation, &range);
        let cell = ScanCell::new(db, |db| db.db.raw_iterator_opt(ro));
        local.add(Counter::Scan, 1);
        local.finish(timer);
        Ok(Box::new(Scan {
            cell,
            now_ms: self.clock.now_ms(),
            started: false,
            done: false,
        }))
    }

    fn snapshot_to(&self, out: &mut dyn Write) -> Result<SnapshotSummary> {
        let (db, generation) = {
            let guard = self.handle()?;
            let h = guard.as_ref().expect("checked by handle()");
            (Arc::clone(&h.db), h.generation)
        };
        // A RocksDB snapshot: a consistent point in time that writers do
        // not wait for, and that a restore's range deletion cannot touch.
        let snap = db.db.snapshot();
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        ro.set_total_order_seek(true);
        let (lower, upper) = generation_bounds(generation);
        ro.set_iterate_lower_bound(lower);
        if let Some(upper) = upper {
            ro.set_iterate_upper_bound(upper);
        }
        let mut it = snap.raw_iterator_opt(ro);
        it.seek_to_first();
        let now = self.clock.now_ms();
        let mut writer = SnapshotWriter::new(out, SnapshotKind::Full, now)?;
        while it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                let sv = decode(v)?;
                if !sv.is_expired_at(now) {
                    writer.put(&k[GEN_LEN..], sv.value, sv.expires_at_ms)?;
                }
            }
            it.next();
        }
        it.status().map_err(error::engine)?;
        let summary = writer.finish()?;
        self.metrics.add(Counter::Snapshot, 1);
        Ok(summary)
    }

    fn restore_from(&self, input: &mut dyn Read) -> Result<RestoreSummary> {
        let _one_restore = self.restore_lock.lock();
        let current = self.state.load_full().ok_or(Error::Closed)?;
        let db = Arc::clone(&current.db);
        let next = current.generation.checked_add(1).ok_or_else(|| {
            Error::invalid_argument("restore", "generation counter exhausted; reopen a copy")
        })?;
        let result = self.write_generation(&db, next, input);
        let summary = match result {
            Ok(summary) => summary,
            Err(e) => {
                // Nothing points at the half-written generation; clear it.
                if let Err(cleanup) = drop_other_generations(&db.db, current.generation) {
                    tracing::warn!(error = %cleanup, "could not clear a failed restore");
                }
                return Err(e);
            }
        };
        // Switch: one synced write makes the new generation the state.
        let meta = db
            .db
            .cf_handle(META_CF)
            .ok_or_else(|| Error::corrupted("RocksDB database", 0, "missing gress-meta"))?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.db
            .put_cf_opt(meta, META_GENERATION, next.to_be_bytes(), &sync)
            .map_err(error::engine)?;
        let new = Arc::new(Handle {
            db: Arc::clone(&db),
            generation: next,
        });
        let prev = self
            .state
            .compare_and_swap(&Some(Arc::clone(&current)), Some(new));
        if !prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, &current)) {
            // Closed meanwhile: the switch is on disk and takes effect on
            // the next open.
            return Err(Error::Closed);
        }
        drop(prev);
        // Point calls that loaded the old generation finish before its data
        // is deleted; scans and snapshots read through RocksDB snapshots,
        // which the deletion does not touch.
        let waited = Instant::now();
        while Arc::strong_count(&current) > 1 && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_micros(100));
        }
        drop_other_generations(&db.db, next)?;
        self.metrics.add(Counter::Restore, 1);
        Ok(summary)
    }

    fn flush(&self) -> Result<()> {
        let db = self.db()?;
        db.db.flush().map_err(error::engine)?;
        let meta = db
            .db
            .cf_handle(META_CF)
            .ok_or_else(|| Error::corrupted("RocksDB database", 0, "missing gress-meta"))?;
        db.db.flush_cf(meta).map_err(error::engine)?;
        db.db.flush_wal(true).map_err(error::engine)
    }

    fn metrics(&self) -> Metrics {
        let mut m = self.metrics.snapshot();
        if let Some(h) = self.state.load_full() {
            m.engine = self.engine_metrics(&h.db);
            m.n_keys = m.engine.get("estimate_num_keys").copied().unwrap_or(0);
            m.n_keys_is_estimate = true;
        }
        m
    }

    fn close(&self) -> Result<()> {
        let Some(old) = self.state.swap(None) else {
            return Ok(());
        };
        // Let point calls in flight finish, so the database (and its lock
        // file) is released when this returns, unless a scan iterator is
        // still open; then it is released when that iterator is dropped.
        let waited = Instant::now();
        while Arc::strong_count(&old) > 1 && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_micros(100));
        }
        tracing::debug!(path = %self.path.display(), "closed RocksDB state");
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.state.load().is_none()
    }
}

impl RocksDbStateBackend {
    /// Streams a snapshot into `generation`; returns once every entry is
    /// written and the stream's end was verified.
    fn write_generation(
        &self,
        db: &Db,
        generation: u32,
        input: &mut dyn Read,
    ) -> Result<RestoreSummary> {
        drop_other_generations_in(&db.db, generation)?;
        let mut reader = SnapshotReader::new(input)?;
        if reader.header().kind != SnapshotKind::Full {
            return Err(Error::invalid_argument(
                "snapshot",
                "a delta snapshot cannot replace the state; restore its full base first",
            ));
        }
        let now = self.clock.now_ms();
        let mut summary = RestoreSummary::default();
        let mut wb = rocksdb::WriteBatch::default();
        let mut value_buf = Vec::new();
        // Staged writes skip the WAL: they are invisible until the switch,
        // and made durable by a flush just before it.
        let mut staged = WriteOptions::default();
        staged.disable_wal(true);
        while let Some(entry) = reader.next_entry()? {
            let SnapshotEntry::Put {
                key,
                value,
                expires_at_ms,
            } = entry
            else {
                return Err(Error::corrupted(
                    "snapshot stream",
                    reader.bytes_read(),
                    "tombstone in a full snapshot",
                ));
            };
            if expires_at_ms.is_some_and(|at| is_expired(at, now)) {
                summary.n_entries_expired += 1;
                continue;
            }
            value_buf.clear();
            StoredValue::encode_into(expires_at_ms, value, &mut value_buf);
            wb.put(stored_key(generation, key), &value_buf);
            summary.n_entries_restored += 1;
            if wb.size_in_bytes() >= RESTORE_BATCH_BYTES {
                db.db
                    .write_opt(std::mem::take(&mut wb), &staged)
                    .map_err(error::engine)?;
            }
        }
        db.db.write_opt(wb, &staged).map_err(error::engine)?;
        db.db.flush().map_err(error::engine)?;
        summary.n_entries_read = reader.entries_read();
        summary.n_bytes = reader.bytes_read();
        Ok(summary)
    }
}

/// Deletes whatever `generation` holds (the remains of an earlier failure).
fn drop_other_generations_in(db: &DB, generation: u32) -> Result<()> {
    let (lower, upper) = generation_bounds(generation);
    clear_range(db, &lower, &upper.unwrap_or_else(|| vec![0xFF; 5]))
}

impl Drop for RocksDbStateBackend {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}
