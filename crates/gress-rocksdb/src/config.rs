//! `RocksDbConfig`: the seed's fields and defaults, workload presets, and
//! validation into RocksDB options.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gress_state::clock::{Clock, system_clock};
use gress_state::metrics::DEFAULT_SAMPLE_EVERY;
use gress_state::{Error, Result};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// Block compression of SST files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// No compression.
    None,
    /// Snappy: fast, moderate ratio. The default.
    #[default]
    Snappy,
    /// LZ4: fast, moderate ratio.
    Lz4,
    /// Zstandard: better ratio, more CPU.
    Zstd,
}

impl Compression {
    pub(crate) fn to_rocksdb(self) -> rocksdb::DBCompressionType {
        match self {
            Compression::None => rocksdb::DBCompressionType::None,
            Compression::Snappy => rocksdb::DBCompressionType::Snappy,
            Compression::Lz4 => rocksdb::DBCompressionType::Lz4,
            Compression::Zstd => rocksdb::DBCompressionType::Zstd,
        }
    }
}

/// Configuration of a [`RocksDbStateBackend`](crate::RocksDbStateBackend).
///
/// Fields and defaults follow the seed's `RocksDBConfig`;
/// [`RocksDbConfig::new`] is its `DefaultRocksDBConfig(path)`. Invalid values
/// are reported by `open` as [`Error::InvalidConfig`] naming the field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RocksDbConfig {
    /// Directory of the database.
    pub path: PathBuf,
    /// Create the database if `path` holds none. Default true.
    pub create_if_missing: bool,
    /// Bytes of one memtable before it is flushed. Default 64 MiB.
    pub write_buffer_size: usize,
    /// Memtables kept in memory (one active, the rest flushing). Default 3.
    pub max_write_buffer_number: i32,
    /// File handles RocksDB keeps open; -1 for unlimited. Default 1000.
    pub max_open_files: i32,
    /// Uncompressed bytes per SST data block. Default 4 KiB.
    pub block_size: usize,
    /// Bytes of the LRU block cache. Default 128 MiB.
    pub block_cache_size: usize,
    /// Bloom filter bits per key; 0 disables filters. Default 10.
    pub bloom_filter_bits: f64,
    /// SST compression. Default Snappy.
    pub compression: Compression,
    /// Collect RocksDB statistics (reported by `metrics()`). Default true.
    pub enable_statistics: bool,
    /// Give plain puts `default_ttl`. Default false.
    pub ttl_enabled: bool,
    /// TTL of a plain put when `ttl_enabled`. Default 1 hour.
    pub default_ttl: Duration,
    /// How long after its expiry an entry may still be kept on disk:
    /// compaction drops only entries that expired at least this long before
    /// both the clock's time and the start of the oldest open scan or
    /// snapshot. Reads hide an entry from its expiry on regardless; the
    /// grace only keeps a clock that steps forward by less than this, and
    /// back, from losing entries that are live again. Default 5 minutes;
    /// at most 30 days.
    pub ttl_compaction_grace: Duration,
    /// Write a write-ahead log. With it off, writes since the last memtable
    /// flush are lost on a crash (recover from a checkpoint instead).
    /// Default true.
    pub wal: bool,
    /// fsync the WAL on every write: acknowledged writes then survive an
    /// operating-system crash or power loss, not only a process crash.
    /// Default false.
    pub sync_writes: bool,
    /// Charge memtables to the block cache and cap both together at
    /// `block_cache_size` (RocksDB's write buffer manager). Default false.
    pub bound_memory: bool,
    /// Length of the key prefix that prefix bloom filters and prefix scans
    /// use, e.g. the length of an operator id. `None` (the default) turns
    /// prefix filters off; scans still work.
    pub prefix_len: Option<usize>,
    /// Background flush and compaction threads. Default 2.
    pub max_background_jobs: i32,
    /// Time source for TTL.
    pub clock: Arc<dyn Clock>,
    /// One call in this many per thread is timed for latency percentiles.
    pub latency_sample_every: u32,
}

impl RocksDbConfig {
    /// The seed's `DefaultRocksDBConfig(path)`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RocksDbConfig {
            path: path.into(),
            create_if_missing: true,
            write_buffer_size: 64 * MIB,
            max_write_buffer_number: 3,
            max_open_files: 1000,
            block_size: 4 * KIB,
            block_cache_size: 128 * MIB,
            bloom_filter_bits: 10.0,
            compression: Compression::Snappy,
            enable_statistics: true,
            ttl_enabled: false,
            default_ttl: Duration::from_secs(3600),
            ttl_compaction_grace: Duration::from_secs(300),
            wal: true,
            sync_writes: false,
            bound_memory: false,
            prefix_len: None,
            max_background_jobs: 2,
            clock: system_clock(),
            latency_sample_every: DEFAULT_SAMPLE_EVERY,
        }
    }

    /// Write-heavy workloads: larger and more memtables (256 MiB × 6), so
    /// bursts are absorbed without write stalls, and more background jobs.
    pub fn write_heavy(path: impl Into<PathBuf>) -> Self {
        let mut c = Self::new(path);
        c.write_buffer_size = 256 * MIB;
        c.max_write_buffer_number = 6;
        c.max_background_jobs = 4;
        c
    }

    /// Read-heavy and low-latency workloads: a 1 GiB block cache and 12
    /// bloom bits per key (fewer false positives), LZ4 for cheaper
    /// decompression.
    pub fn read_heavy(path: impl Into<PathBuf>) -> Self {
        let mut c = Self::new(path);
        c.block_cache_size = GIB;
        c.bloom_filter_bits = 12.0;
        c.compression = Compression::Lz4;
        c
    }

    /// Balanced: the defaults with a 512 MiB cache and 128 MiB memtables.
    pub fn balanced(path: impl Into<PathBuf>) -> Self {
        let mut c = Self::new(path);
        c.block_cache_size = 512 * MIB;
        c.write_buffer_size = 128 * MIB;
        c
    }

    /// State much larger than RAM: 16 KiB blocks (smaller index), Zstd,
    /// memory bounded to the 512 MiB cache, unlimited open files.
    pub fn large_state(path: impl Into<PathBuf>) -> Self {
        let mut c = Self::new(path);
        c.block_size = 16 * KIB;
        c.block_cache_size = 512 * MIB;
        c.compression = Compression::Zstd;
        c.bound_memory = true;
        c.max_open_files = -1;
        c
    }

    /// Enables TTL with `default_ttl` for plain puts.
    pub fn with_ttl(mut self, default_ttl: Duration) -> Self {
        self.ttl_enabled = true;
        self.default_ttl = default_ttl;
        self
    }

    /// Uses `clock` for TTL decisions.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the write-ahead log on or off.
    pub fn with_wal(mut self, wal: bool) -> Self {
        self.wal = wal;
        self
    }

    /// Sets the prefix length for prefix bloom filters.
    pub fn with_prefix_len(mut self, len: usize) -> Self {
        self.prefix_len = Some(len);
        self
    }

    /// Sets the block cache size.
    pub fn with_block_cache_size(mut self, bytes: usize) -> Self {
        self.block_cache_size = bytes;
        self
    }

    /// Bounds the database's memory at about `bytes`: a block cache of
    /// that size with the memtables charged to it (`bound_memory`), each
    /// memtable a quarter of it at most (64 MiB at most), so the data
    /// blocks, indexes, filters and memtables share one bound. Pass the
    /// bytes a stream job leaves to its backend
    /// (`gress_stream::BackendFactory::with_memory_budget`).
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.block_cache_size = bytes;
        self.bound_memory = true;
        self.write_buffer_size = (bytes / 4).clamp(MIB, 64 * MIB);
        self
    }

    /// Checks every field; the first bad one is reported by name.
    pub fn validate(&self) -> Result<()> {
        fn range<T: PartialOrd + std::fmt::Display>(
            field: &'static str,
            v: T,
            min: T,
            max: T,
        ) -> Result<()> {
            if v < min || v > max {
                return Err(Error::invalid_config(
                    field,
                    format!("{v} is outside {min}..={max}"),
                ));
            }
            Ok(())
        }
        if self.path.as_os_str().is_empty() {
            return Err(Error::invalid_config("path", "is empty"));
        }
        range(
            "write_buffer_size",
            self.write_buffer_size,
            64 * KIB,
            64 * GIB,
        )?;
        range(
            "max_write_buffer_number",
            self.max_write_buffer_number,
            1,
            64,
        )?;
        if self.max_open_files != -1 {
            range("max_open_files", self.max_open_files, 16, 1 << 20)?;
        }
        range("block_size", self.block_size, 256, 256 * MIB)?;
        range("block_cache_size", self.block_cache_size, 0, 1 << 40)?;
        if !self.bloom_filter_bits.is_finite() {
            return Err(Error::invalid_config(
                "bloom_filter_bits",
                "is not a finite number",
            ));
        }
        range("bloom_filter_bits", self.bloom_filter_bits, 0.0, 64.0)?;
        range("max_background_jobs", self.max_background_jobs, 1, 256)?;
        if let Some(len) = self.prefix_len {
            range("prefix_len", len, 1, 4096)?;
        }
        if self.bound_memory && self.block_cache_size < self.write_buffer_size {
            return Err(Error::invalid_config(
                "block_cache_size",
                "must hold at least one memtable (write_buffer_size) when bound_memory is on",
            ));
        }
        if self.ttl_compaction_grace > Duration::from_secs(30 * 86_400) {
            return Err(Error::invalid_config(
                "ttl_compaction_grace",
                format!("{:?} is longer than 30 days", self.ttl_compaction_grace),
            ));
        }
        gress_state::ttl::TtlPolicy::new(self.ttl_enabled, self.default_ttl)?;
        Ok(())
    }
}
