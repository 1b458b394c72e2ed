//! `RocksDbStateBackend`.
//!
//! The state is one RocksDB database: user keys as they are, values in the
//! core's stored-value form (a tag byte, then an expiry if any). The
//! backend's directory holds the live database and a `LIVE` pointer to it
//! (see `db.rs`); a restore builds a new database beside the live one and
//! switches the pointer with one atomic rename, so it is atomic, and a
//! failed or crashed restore leaves the old state in place.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use rocksdb::{BottommostLevelCompaction, CompactOptions, DB, ReadOptions, WriteOptions};

use gress_state::backend::prefix_successor;
use gress_state::error::closed;
use gress_state::metrics::{Counter, MetricsRecorder, Op};
use gress_state::snapshot::{SnapshotEntry, SnapshotKind, SnapshotReader, SnapshotWriter};
use gress_state::ttl::{StoredValue, TtlPolicy, check_key, check_value, is_expired};
use gress_state::{
    BatchOp, Clock, Error, KeyRange, KeyValue, Metrics, RestoreSummary, Result, ScanIter,
    SnapshotSummary, StateBackend, WriteBatch,
};

use crate::config::RocksDbConfig;
use crate::db::{Db, Engine, Root, db_name, parse_db_name, write_options};
use crate::error;
use crate::ttl_filter::{OpenRead, TtlState};

/// A restore writes to RocksDB in batches of about this many bytes.
const RESTORE_BATCH_BYTES: usize = 4 << 20;
/// How long a write stalled by RocksDB waits before it tries again.
const STALL_RETRY: Duration = Duration::from_millis(1);

/// Persistent state in RocksDB, for state larger than RAM.
///
/// See [`StateBackend`] for the contract, which the conformance suite
/// checks. RocksDB is thread-safe and called without any lock of ours:
/// each call loads the live database from an `ArcSwap`.
///
/// Durability: with the WAL on (the default), every acknowledged write
/// survives a crash of the process; with `sync_writes` it also survives an
/// operating-system crash. With the WAL off, writes since the last memtable
/// flush are lost on a crash; recover such a backend from a checkpoint.
pub struct RocksDbStateBackend {
    pub(crate) state: ArcSwapOption<Db>,
    /// The directory; its lock is shared by every open database, so it is
    /// released when the last of them closes.
    pub(crate) root: Root,
    pub(crate) engine: Engine,
    /// Number of the next database directory a restore creates.
    pub(crate) next_db: AtomicU64,
    /// Serialises switches of the live database (not reads or writes).
    switch_lock: Mutex<()>,
    /// The checkpoint manager that may capture this backend.
    pub(crate) checkpoint_owner: gress_state::checkpoint::CheckpointClaim,
    ttl: TtlPolicy,
    pub(crate) clock: Arc<dyn Clock>,
    metrics: MetricsRecorder,
    write_opts: WriteOptions,
    /// Default read options, created once: building them per call costs
    /// an allocation in RocksDB's C API.
    read_opts: ReadOptions,
    prefix_len: Option<usize>,
    /// Shared with the TTL compaction filter: open readers, drop count.
    ttl_state: Arc<TtlState>,
    /// Microseconds writers waited out RocksDB write stalls here (RocksDB
    /// counts only the waits it does itself).
    stall_waited_us: AtomicU64,
}

impl fmt::Debug for RocksDbStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksDbStateBackend")
            .field("path", &self.root.path)
            .field("ttl", &self.ttl)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Scratch space for encoding stored values without allocating.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the stored form of (`expiry`, `value`), encoded into a
/// per-thread buffer.
fn with_stored<R>(value: &[u8], expiry: Option<u64>, f: impl FnOnce(&[u8]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        StoredValue::encode_into(expiry, value, &mut buf);
        let r = f(&buf);
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        r
    })
}

/// Removes a database directory that a failed restore created; a failure to
/// remove it is logged (the next open removes it).
pub(crate) fn discard_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the directory of a failed restore");
        }
    }
}

fn decode(stored: &[u8]) -> Result<StoredValue<'_>> {
    StoredValue::decode(stored)
}

impl RocksDbStateBackend {
    /// Opens (or creates) the backend in the directory `config.path`.
    pub fn open(config: RocksDbConfig) -> Result<Self> {
        config.validate()?;
        let root = Root::open(&config.path, config.create_if_missing)?;
        let ttl_state = Arc::new(TtlState::default());
        let engine = Engine::new(&config, &ttl_state);
        let (name, db) = match root.live()? {
            Some(name) => {
                let dir = root.path.join(&name);
                if !dir.is_dir() {
                    return Err(Error::corrupted(
                        root.path.join("LIVE").display().to_string(),
                        0,
                        format!("the live database {name} is missing"),
                    ));
                }
                let db = engine.open(&root, &dir, false)?;
                (name, db)
            }
            None => {
                if root.path.join("CURRENT").exists() {
                    return Err(Error::UnsupportedFormat {
                        found: format!("a bare RocksDB database in {}", root.path.display()).into(),
                        supported: "a gress-rocksdb directory (LIVE and db-NNNNNN/)".into(),
                    });
                }
                let name = db_name(1);
                let dir = root.path.join(&name);
                if dir.exists() {
                    // A first open that crashed before LIVE was written.
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
                }
                let db = engine.open(&root, &dir, true)?;
                root.set_live_synced(&name)?;
                (name, db)
            }
        };
        Self::assemble(config, root, engine, ttl_state, name, db)
    }

    /// Opens a backend on a copy of a checkpoint made by
    /// [`RocksDbStateBackend::create_checkpoint`]: SST files are hard-linked
    /// (copied if on another file system), the rest copied, into a new
    /// database in `config.path`, which must not hold one yet. The
    /// checkpoint is left untouched.
    pub fn open_checkpoint(checkpoint: &Path, config: RocksDbConfig) -> Result<Self> {
        config.validate()?;
        let root = Root::open(&config.path, true)?;
        if root.live()?.is_some() {
            return Err(Error::invalid_config(
                "path",
                format!(
                    "{} already holds a database; a checkpoint opens into a new directory",
                    root.path.display()
                ),
            ));
        }
        let name = db_name(1);
        let dir = root.path.join(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
        crate::checkpoint::materialize(checkpoint, &dir)?;
        let ttl_state = Arc::new(TtlState::default());
        let engine = Engine::new(&config, &ttl_state);
        let db = engine.open_copy(&root, &dir)?;
        root.set_live_synced(&name)?;
        Self::assemble(config, root, engine, ttl_state, name, db)
    }

    fn assemble(
        config: RocksDbConfig,
        root: Root,
        engine: Engine,
        ttl_state: Arc<TtlState>,
        live: String,
        db: Db,
    ) -> Result<Self> {
        // Databases left by restores that never committed, or replaced by
        // one while still in use, and checkpoint staging directories.
        for stale in root.stale_dbs(&live)? {
            if let Err(e) = std::fs::remove_dir_all(&stale) {
                tracing::warn!(dir = %stale.display(), error = %e, "could not remove a stale directory");
            }
        }
        let next = parse_db_name(&live).unwrap_or(1) + 1;
        tracing::debug!(path = %root.path.display(), live, "opened RocksDB state");
        Ok(RocksDbStateBackend {
            state: ArcSwapOption::from_pointee(db),
            root,
            engine,
            next_db: AtomicU64::new(next),
            switch_lock: Mutex::new(()),
            checkpoint_owner: Default::default(),
            ttl: TtlPolicy::new(config.ttl_enabled, config.default_ttl)?,
            clock: config.clock.clone(),
            metrics: MetricsRecorder::new(config.latency_sample_every),
            write_opts: {
                let mut opts = write_options(&config);
                opts.set_no_slowdown(true);
                opts
            },
            read_opts: ReadOptions::default(),
            prefix_len: config.prefix_len,
            ttl_state,
            stall_waited_us: AtomicU64::new(0),
        })
    }

    /// The backend's directory.
    pub fn path(&self) -> &Path {
        &self.root.path
    }

    /// The live database, shared; keeps it open while held.
    pub(crate) fn current(&self) -> Result<Arc<Db>> {
        self.state.load_full().ok_or_else(closed)
    }

    /// Makes `db` (in directory `name`, fully written) the live database.
    ///
    /// The rename of `LIVE` is the commit point. An error before it leaves
    /// the old database live and deletes the new one. Once it happened, the
    /// switch is done and this returns `Ok`: if the directory fsync that
    /// makes it durable fails, that is logged, and the old database's
    /// directory is kept (after a power loss `LIVE` may still name it) until
    /// the next open removes whichever database `LIVE` does not name.
    pub(crate) fn switch_to(&self, db: Db, name: &str) -> Result<()> {
        let _one_switch = self.switch_lock.lock();
        let Some(current) = self.state.load_full() else {
            db.retire();
            return Err(Error::Closed);
        };
        if let Err(e) = self.root.set_live(name) {
            db.retire();
            return Err(e);
        }
        let durable = match self.root.sync() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    path = %self.root.path.display(),
                    live = name,
                    error = %e,
                    "restore committed, but the directory fsync that makes it durable failed; \
                     the replaced database is kept until the next open"
                );
                false
            }
        };
        let prev = self
            .state
            .compare_and_swap(&Some(Arc::clone(&current)), Some(Arc::new(db)));
        // If the backend was closed meanwhile, the new database is closed
        // right here; `LIVE` names it, so it is the state at the next open.
        if durable && prev.as_ref().is_none_or(|p| Arc::ptr_eq(p, &current)) {
            // Deleted once the calls and scans still reading it are done.
            current.retire();
        }
        self.metrics.add(Counter::Restore, 1);
        Ok(())
    }

    /// A new, empty database directory for a restore.
    pub(crate) fn new_db_dir(&self) -> Result<(String, std::path::PathBuf)> {
        let name = db_name(self.next_db.fetch_add(1, Ordering::Relaxed));
        let dir = self.root.path.join(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
        Ok((name, dir))
    }

    /// Streams the full snapshot `input` into a new database beside the
    /// live one. On `Err` nothing of it is left on disk.
    pub(crate) fn stage_snapshot(
        &self,
        input: &mut dyn Read,
    ) -> Result<(String, Db, RestoreSummary)> {
        let (name, dir) = self.new_db_dir()?;
        let db = self
            .engine
            .open(&self.root, &dir, true)
            .inspect_err(|_| discard_dir(&dir))?;
        match self.load_snapshot(&db, input) {
            Ok(summary) => Ok((name, db, summary)),
            Err(e) => {
                // Deleted as `db` is dropped here.
                db.retire();
                Err(e)
            }
        }
    }

    fn get_one(&self, db: &DB, key: &[u8], now: &mut Option<u64>) -> Result<Option<Vec<u8>>> {
        Ok(self.get_one_with_expiry(db, key, now)?.map(|(v, _)| v))
    }

    fn get_one_with_expiry(
        &self,
        db: &DB,
        key: &[u8],
        now: &mut Option<u64>,
    ) -> Result<Option<(Vec<u8>, Option<u64>)>> {
        let found = db
            .get_pinned_opt(key, &self.read_opts)
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
        Ok(Some((sv.value.to_vec(), sv.expires_at_ms)))
    }

    fn put_inner(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        let expiry = self.ttl.expiry(ttl, || self.clock.now_ms())?;
        let guard = self.state.load();
        let db = guard.as_ref().ok_or_else(closed)?;
        loop {
            match with_stored(value, expiry, |v| db.db().put_opt(key, v, &self.write_opts)) {
                Err(e) if self.waited_out_stall(&e)? => {}
                done => return done.map_err(error::engine),
            }
        }
    }

    /// For a write that failed with `e`: if RocksDB stalled it (writes go
    /// with `no_slowdown`), waits a moment and returns `true` for another
    /// try; `false` for any other error.
    ///
    /// A writer that waits inside RocksDB holds its write queue, and when
    /// the disk fills up meanwhile, RocksDB's automatic recovery waits for
    /// that queue while the writer waits for the recovery: neither ever
    /// returns (facebook/rocksdb#9876). Waiting here instead keeps
    /// RocksDB's throttling (its write credit refills every millisecond)
    /// without holding the queue.
    fn waited_out_stall(&self, e: &rocksdb::Error) -> Result<bool> {
        if !error::is_write_stall(e) {
            return Ok(false);
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let waited = Instant::now();
        std::thread::sleep(STALL_RETRY);
        let us = u64::try_from(waited.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stall_waited_us.fetch_add(us, Ordering::Relaxed);
        Ok(true)
    }

    /// A RocksDB property of the data column family, e.g.
    /// `rocksdb.estimate-num-keys`, `rocksdb.cur-size-all-mem-tables`,
    /// `rocksdb.block-cache-usage`; `None` for a name RocksDB does not know.
    pub fn property(&self, name: &str) -> Result<Option<String>> {
        self.current()?
            .db()
            .property_value(name)
            .map_err(error::engine)
    }

    /// A RocksDB integer property, or `None` if unknown.
    pub fn property_int(&self, name: &str) -> Result<Option<u64>> {
        self.current()?
            .db()
            .property_int_value(name)
            .map_err(error::engine)
    }

    /// Compacts the whole key space; expired entries are dropped on the way.
    pub fn compact(&self) -> Result<()> {
        let db = self.current()?;
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        db.db()
            .compact_range_opt(None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }

    /// Writes a hard-linked RocksDB checkpoint of the database to `dir`,
    /// which must not exist. Open it with
    /// [`RocksDbStateBackend::open_checkpoint`].
    pub fn create_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if dir.exists() {
            return Err(Error::invalid_argument(
                "dir",
                format!("checkpoint directory {} already exists", dir.display()),
            ));
        }
        let db = self.current()?;
        let cp = rocksdb::checkpoint::Checkpoint::new(db.db()).map_err(error::engine)?;
        cp.create_checkpoint(dir).map_err(error::engine)
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

    /// The SST files of the live database.
    pub fn live_files(&self) -> Result<Vec<rocksdb::LiveFile>> {
        self.current()?.db().live_files().map_err(error::engine)
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
        if let Some(us) = m.get_mut("stall_micros") {
            *us += self.stall_waited_us.load(Ordering::Relaxed);
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
            if let Ok(Some(v)) = db.db().property_int_value(prop) {
                m.insert(prop.trim_start_matches("rocksdb.").replace('-', "_"), v);
            }
        }
        m.insert(
            "ttl_dropped_by_compaction".to_string(),
            self.ttl_state.dropped.load(Ordering::Relaxed),
        );
        m
    }

    /// `batch` as a RocksDB batch of stored values, with its numbers of
    /// puts and deletes.
    fn encode_batch(&self, batch: &WriteBatch) -> Result<(rocksdb::WriteBatch, u64, u64)> {
        let mut now = None;
        // Room for every key and value plus RocksDB's per-record framing.
        let mut wb =
            rocksdb::WriteBatch::with_capacity_bytes(batch.byte_len() + batch.len() * (9 + 12));
        let (mut n_puts, mut n_deletes) = (0, 0);
        for op in batch.ops() {
            match op {
                BatchOp::Put { key, value, ttl } => {
                    let expiry = self
                        .ttl
                        .expiry(ttl, || *now.get_or_insert_with(|| self.clock.now_ms()))?;
                    with_stored(value, expiry, |v| wb.put(key, v));
                    n_puts += 1;
                }
                BatchOp::Delete { key } => {
                    wb.delete(key);
                    n_deletes += 1;
                }
            }
        }
        Ok((wb, n_puts, n_deletes))
    }

    /// Writes `wb` to the new database `db` of a restore, waiting out
    /// stalls like every other write, and empties it.
    pub(crate) fn write_staged(&self, db: &Db, wb: &mut rocksdb::WriteBatch) -> Result<()> {
        // The new database is invisible until the switch and flushed just
        // before it, so the WAL would only slow the load down.
        let mut staged = WriteOptions::default();
        staged.disable_wal(true);
        staged.set_no_slowdown(true);
        loop {
            // A copy, since a write consumes its batch, stalled or not.
            let copy = rocksdb::WriteBatch::from_data(wb.data());
            match db.db().write_opt(copy, &staged) {
                Ok(()) => break,
                Err(e) if self.waited_out_stall(&e)? => {}
                Err(e) => return Err(error::engine(e)),
            }
        }
        wb.clear();
        Ok(())
    }

    /// Read options for a scan of `range`.
    fn scan_read_options(&self, range: &KeyRange) -> ReadOptions {
        let mut ro = ReadOptions::default();
        match &range.start {
            Bound::Included(s) => ro.set_iterate_lower_bound(s.clone()),
            Bound::Excluded(s) => ro.set_iterate_lower_bound([s.as_slice(), &[0]].concat()),
            Bound::Unbounded => {}
        }
        match &range.end {
            Bound::Excluded(e) => ro.set_iterate_upper_bound(e.clone()),
            Bound::Included(e) => ro.set_iterate_upper_bound([e.as_slice(), &[0]].concat()),
            Bound::Unbounded => {}
        }
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
        ro
    }

    /// Streams a full snapshot into the new, empty database `db`.
    fn load_snapshot(&self, db: &Db, input: &mut dyn Read) -> Result<RestoreSummary> {
        let now = self.clock.now_ms();
        let summary = self.write_full_snapshot(db, input, now, |_| true)?;
        db.db().flush().map_err(error::engine)?;
        Ok(summary)
    }

    /// Writes the entries of a full snapshot that `keep` accepts and that
    /// have not expired at `now` into `db`, in bounded batches. Reads the
    /// snapshot to its end, which verifies it.
    pub(crate) fn write_full_snapshot(
        &self,
        db: &Db,
        input: &mut dyn Read,
        now: u64,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<RestoreSummary> {
        let mut reader = SnapshotReader::new(input)?;
        if reader.header().kind != SnapshotKind::Full {
            return Err(Error::invalid_argument(
                "snapshot",
                "a delta snapshot cannot replace the state; restore its full base first",
            ));
        }
        let mut summary = RestoreSummary::default();
        let mut wb = rocksdb::WriteBatch::default();
        let mut value_buf = Vec::new();
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
            if !keep(key) {
                continue;
            }
            if expires_at_ms.is_some_and(|at| is_expired(at, now)) {
                summary.n_entries_expired += 1;
                continue;
            }
            value_buf.clear();
            StoredValue::encode_into(expires_at_ms, value, &mut value_buf);
            wb.put(key, &value_buf);
            summary.n_entries_restored += 1;
            if wb.size_in_bytes() >= RESTORE_BATCH_BYTES {
                self.write_staged(db, &mut wb)?;
            }
        }
        self.write_staged(db, &mut wb)?;
        summary.n_entries_read = reader.entries_read();
        summary.n_bytes = reader.bytes_read();
        Ok(summary)
    }
}

self_cell::self_cell!(
    /// A RocksDB iterator together with the database it reads, so a scan
    /// keeps the database open while it runs.
    struct ScanCell {
        owner: Arc<Db>,
        #[covariant]
        dependent: RawIter,
    }
);

type RawIter<'a> = rocksdb::DBRawIteratorWithThreadMode<'a, DB>;

/// A scan's iterator: live entries in key order.
struct Scan {
    cell: ScanCell,
    /// The scan's time, held against TTL compaction while the scan lives.
    read: OpenRead,
    started: bool,
    done: bool,
}

impl Iterator for Scan {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let now = self.read.now_ms;
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
                    Ok(sv) => return Some(Ok((k.to_vec(), sv.value.to_vec()))),
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
        let guard = self.state.load();
        let db = guard.as_ref().ok_or_else(closed)?;
        let found = self.get_one(db.db(), key, &mut None)?;
        local.add_reads(u64::from(found.is_some()), 1);
        local.finish(timer);
        Ok(found)
    }

    fn get_with_expiry(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Option<u64>)>> {
        let local = self.metrics.local();
        let timer = local.start(Op::Get);
        let guard = self.state.load();
        let db = guard.as_ref().ok_or_else(closed)?;
        let found = self.get_one_with_expiry(db.db(), key, &mut None)?;
        local.add_reads(u64::from(found.is_some()), 1);
        local.finish(timer);
        Ok(found)
    }

    fn default_ttl(&self) -> Option<Duration> {
        self.ttl.default_ms().map(Duration::from_millis)
    }

    fn multi_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self
            .multi_get_with_expiry(keys)?
            .into_iter()
            .map(|found| found.map(|(v, _)| v))
            .collect())
    }

    fn multi_get_with_expiry(&self, keys: &[&[u8]]) -> Result<Vec<Option<(Vec<u8>, Option<u64>)>>> {
        let local = self.metrics.local();
        let timer = local.start(Op::MultiGet);
        let guard = self.state.load();
        let db = guard.as_ref().ok_or_else(closed)?;
        let db = db.db();
        let cf = db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .ok_or_else(|| {
                gress_state::Error::corrupted(
                    "RocksDB database",
                    0,
                    "missing the default column family",
                )
            })?;
        let mut now = None;
        let mut out = Vec::with_capacity(keys.len());
        let mut hits = 0;
        // RocksDB's batched MultiGet: one pass over the memtables and the
        // files, with the blocks of several keys read together.
        for found in db.batched_multi_get_cf_opt(&cf, keys.iter().copied(), false, &self.read_opts)
        {
            let value = match found.map_err(error::engine)? {
                None => None,
                Some(stored) => {
                    let sv = decode(&stored)?;
                    let dead = sv.expires_at_ms.is_some_and(|at| {
                        is_expired(at, *now.get_or_insert_with(|| self.clock.now_ms()))
                    });
                    (!dead).then(|| (sv.value.to_vec(), sv.expires_at_ms))
                }
            };
            hits += u64::from(value.is_some());
            out.push(value);
        }
        local.add_reads(hits, keys.len() as u64);
        local.finish(timer);
        Ok(out)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let m = &self.metrics;
        m.measure(Op::Put, Counter::Put, || self.put_inner(key, value, None))
    }

    fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let m = &self.metrics;
        m.measure(Op::Put, Counter::Put, || {
            self.put_inner(key, value, Some(ttl))
        })
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.metrics.measure(Op::Delete, Counter::Delete, || {
            let guard = self.state.load();
            let db = guard.as_ref().ok_or_else(closed)?;
            loop {
                match db.db().delete_opt(key, &self.write_opts) {
                    Err(e) if self.waited_out_stall(&e)? => {}
                    done => return done.map_err(error::engine),
                }
            }
        })
    }

    fn write_batch(&self, batch: &WriteBatch) -> Result<()> {
        let local = self.metrics.local();
        let timer = local.start(Op::Batch);
        batch.validate()?;
        let guard = self.state.load();
        let db = guard.as_ref().ok_or_else(closed)?;
        let (mut wb, n_puts, n_deletes) = self.encode_batch(batch)?;
        loop {
            match db.db().write_opt(wb, &self.write_opts) {
                Ok(()) => break,
                // The batch was consumed: encode it again (expiries from
                // the clock of this try).
                Err(e) if self.waited_out_stall(&e)? => wb = self.encode_batch(batch)?.0,
                Err(e) => return Err(error::engine(e)),
            }
        }
        local.add(Counter::Put, n_puts);
        local.add(Counter::Delete, n_deletes);
        local.add(Counter::Batch, 1);
        local.finish(timer);
        Ok(())
    }

    fn scan(&self, range: KeyRange) -> Result<ScanIter<'_>> {
        let local = self.metrics.local();
        let timer = local.start(Op::Scan);
        let db = self.current()?;
        // Registered before the iterator exists, so no compaction drops an
        // entry live at the scan's time while it runs.
        let read = self.ttl_state.start_read(&*self.clock);
        let ro = self.scan_read_options(&range);
        let cell = ScanCell::new(db, |db| db.db().raw_iterator_opt(ro));
        local.add(Counter::Scan, 1);
        local.finish(timer);
        Ok(Box::new(Scan {
            cell,
            read,
            started: false,
            done: false,
        }))
    }

    fn snapshot_to(&self, out: &mut dyn Write) -> Result<SnapshotSummary> {
        let db = self.current()?;
        let read = self.ttl_state.start_read(&*self.clock);
        let now = read.now_ms;
        // A RocksDB snapshot: a consistent point in time that writers do
        // not wait for.
        let snap = db.db().snapshot();
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        ro.set_total_order_seek(true);
        let mut it = snap.raw_iterator_opt(ro);
        it.seek_to_first();
        let mut writer = SnapshotWriter::new(out, SnapshotKind::Full, now)?;
        while it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                let sv = decode(v)?;
                if !sv.is_expired_at(now) {
                    writer.put(k, sv.value, sv.expires_at_ms)?;
                }
            }
            it.next();
        }
        it.status().map_err(error::engine)?;
        let summary = writer.finish()?;
        drop(read);
        self.metrics.add(Counter::Snapshot, 1);
        Ok(summary)
    }

    fn restore_from(&self, input: &mut dyn Read) -> Result<RestoreSummary> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (name, db, summary) = self.stage_snapshot(input)?;
        self.switch_to(db, &name)?;
        Ok(summary)
    }

    fn flush(&self) -> Result<()> {
        let db = self.current()?;
        db.db().flush().map_err(error::engine)?;
        db.db().flush_wal(true).map_err(error::engine)
    }

    fn metrics(&self) -> Metrics {
        let mut m = self.metrics.snapshot();
        if let Some(db) = self.state.load_full() {
            m.engine = self.engine_metrics(&db);
            m.n_keys = m.engine.get("estimate_num_keys").copied().unwrap_or(0);
            m.n_keys_is_estimate = true;
        }
        m
    }

    fn close(&self) -> Result<()> {
        let Some(old) = self.state.swap(None) else {
            return Ok(());
        };
        self.root.release();
        // Give point calls in flight a moment to finish, so the database
        // (and the directory's lock) is usually released when this returns.
        // An open scan iterator keeps it until the iterator is dropped.
        let waited = Instant::now();
        while Arc::strong_count(&old) > 1 && waited.elapsed() < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_micros(100));
        }
        tracing::debug!(path = %self.root.path.display(), "closed RocksDB state");
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.state.load().is_none()
    }
}

impl Drop for RocksDbStateBackend {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::faults::DIR_SYNC_FAILS;

    fn small(path: &Path) -> RocksDbConfig {
        let mut c = RocksDbConfig::new(path);
        c.write_buffer_size = 1 << 20;
        c.block_cache_size = 1 << 20;
        c
    }

    /// A restore whose directory fsync failed after `LIVE` had been renamed
    /// used to report the error and delete the new database, although
    /// `LIVE` already named it, so the next open found its live database
    /// missing. Once the rename happened the restore is done: it returns
    /// `Ok`, keeps the old database's directory (a power loss could still
    /// leave `LIVE` naming it), and the next open removes that directory.
    #[test]
    fn directory_fsync_failure_after_the_rename_keeps_the_restore() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
        let path = dir.path().join("state");
        let backend = RocksDbStateBackend::open(small(&path))?;
        backend.put(b"k", b"before")?;
        let source = gress_state::MemoryStateBackend::default();
        source.put(b"k", b"restored")?;
        let snapshot = source.snapshot()?;

        DIR_SYNC_FAILS.set(true);
        let restored = backend.restore(&snapshot);
        DIR_SYNC_FAILS.set(false);
        restored?;
        assert_eq!(backend.get(b"k")?.as_deref(), Some(&b"restored"[..]));
        let live =
            std::fs::read_to_string(path.join("LIVE")).map_err(|e| Error::io("reading LIVE", e))?;
        assert_eq!(live, "db-000002\n");
        assert!(
            path.join("db-000001").is_dir(),
            "the replaced database was deleted before its replacement was durable"
        );
        backend.close()?;
        drop(backend);

        let reopened = RocksDbStateBackend::open(small(&path))?;
        assert_eq!(reopened.get(b"k")?.as_deref(), Some(&b"restored"[..]));
        assert!(!path.join("db-000001").exists(), "stale database kept");
        Ok(())
    }
}
