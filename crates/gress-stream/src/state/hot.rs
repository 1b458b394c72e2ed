//! The checkpoints of a worker's state cache.
//!
//! The cache is the state's hot tier: an entry written since it was read
//! from the backend (the cold tier) lives only in the cache until the
//! cache drops it, when it is written to the backend. Checkpoints hold the
//! cache's part as a chain of files in the memory backend's checkpoint
//! format: a full snapshot, then one delta per epoch (the entries written
//! in the epoch, and a tombstone for each entry that left the cache for
//! the backend). Applied in order they give the hot image at a cut: every
//! entry the backend does not hold as it is. A restore puts the backend's
//! checkpoint back, then the hot image on top of it.
//!
//! The full snapshot is written a slice at a time while epochs run (a
//! fuzzy snapshot): when it is done at cut `c`, having started after cut
//! `s`, the deltas of `s + 1 ..= c` hold every change made while it was
//! written, so `[full, delta s+1, ..., delta c]` is the image at cut `c`.
//! A new one starts after `max_deltas` deltas (the checkpoint manager's
//! settings), or once the chain holds more than
//! `max_delta_ratio` of the live state (of 1 MiB at least) in bytes later
//! files superseded, so the chain stays short
//! and the bytes a restore reads stay within a small multiple of the
//! image.
//!
//! Files live in a local directory until no capture and no later chain
//! needs them; every file is offered to the checkpoint manager for sharing,
//! so each is stored once whatever the number of checkpoints naming it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gress_state::checkpoint::{
    Capture, CaptureKind, CaptureMode, CapturedFile, CheckpointFiles, Checkpointable, FileSource,
    PreparedRestore, RangeSource,
};
use gress_state::snapshot::{SnapshotEntry, SnapshotReader, SnapshotWriter};
use gress_state::{
    KeyRange, MEMORY_CHECKPOINT_FORMAT, MemoryConfig, MemoryStateBackend, Metrics, RestoreSummary,
    ScanIter, SnapshotKind, SnapshotSummary, StateBackend, WriteBatch,
};
use parking_lot::Mutex;

/// A file of the chain on local disk, deleted when nothing needs it.
#[derive(Debug)]
pub(crate) struct LocalFile {
    name: String,
    path: PathBuf,
    bytes: u64,
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not delete a cache checkpoint file");
        }
    }
}

/// A file being written: a full snapshot or an epoch's delta.
pub(crate) struct Writing {
    writer: SnapshotWriter<BufWriter<File>>,
    name: String,
    path: PathBuf,
}

impl Writing {
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8], expires_at: Option<u64>) -> Result<()> {
        self.writer.put(key, value, expires_at)
    }

    pub(crate) fn tombstone(&mut self, key: &[u8]) -> Result<()> {
        self.writer.tombstone(key)
    }

    /// Ends the file.
    pub(crate) fn finish(self) -> Result<Arc<LocalFile>> {
        // Dropped (deleted) if anything below fails.
        let mut file = LocalFile {
            name: self.name,
            path: self.path,
            bytes: 0,
        };
        // Flushes what it buffered.
        file.bytes = self.writer.finish()?.n_bytes;
        Ok(Arc::new(file))
    }
}

type Result<T> = std::result::Result<T, gress_state::Error>;

/// The chain captures name, and how it grows.
#[derive(Default)]
struct Chain {
    /// The newest complete full snapshot.
    full: Option<Arc<LocalFile>>,
    /// Deltas after the full's start, oldest first, with their sequence
    /// numbers.
    deltas: Vec<(u64, Arc<LocalFile>)>,
    /// Sequence number of the last delta added.
    seq: u64,
}

/// The cache's part of a worker's checkpoints, registered with the
/// worker's checkpoint manager beside the backend.
pub(crate) struct HotImage {
    /// Where a restore puts the image until the cache takes it.
    restored: MemoryStateBackend,
    /// Whether `restored` holds a restore not yet taken.
    pending_restore: Mutex<bool>,
    dir: tempfile::TempDir,
    /// Names shared files apart from another image's.
    id: u64,
    chain: Mutex<Chain>,
    next_file: Mutex<u64>,
    owner: gress_state::checkpoint::CheckpointClaim,
    /// Deltas in a chain at most before a new full snapshot starts.
    max_deltas: usize,
    /// ... or their bytes, as a fraction of the full snapshot's.
    max_delta_ratio: f64,
}

impl std::fmt::Debug for HotImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotImage")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl HotImage {
    /// A new image with an empty full snapshot, its files in a new
    /// directory under `parent` (the system's temporary directory if
    /// `None`). A new full snapshot starts once the chain has
    /// `max_deltas` deltas or their bytes pass `max_delta_ratio` of the
    /// full snapshot's (the checkpoint manager's rule for backends).
    pub(crate) fn new(
        parent: Option<&std::path::Path>,
        clock: Arc<dyn gress_state::Clock>,
        max_deltas: u32,
        max_delta_ratio: f64,
    ) -> Result<Self> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("gress-cache-");
        let dir = match parent {
            Some(p) => builder.tempdir_in(p),
            None => builder.tempdir(),
        }
        .map_err(|e| gress_state::Error::io("creating the cache's checkpoint directory", e))?;
        let id = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            h.finish()
        };
        let image = HotImage {
            // The job's clock decides which restored entries have expired.
            restored: MemoryStateBackend::new(MemoryConfig::default().with_clock(clock))?,
            pending_restore: Mutex::new(false),
            dir,
            id,
            chain: Mutex::new(Chain::default()),
            next_file: Mutex::new(0),
            owner: Default::default(),
            max_deltas: (max_deltas as usize).max(1),
            max_delta_ratio,
        };
        let empty = image.start_file(SnapshotKind::Full)?.finish()?;
        image.chain.lock().full = Some(empty);
        Ok(image)
    }

    /// A new file's name and path, and the file, created.
    fn new_file(&self, kind: SnapshotKind) -> Result<(String, PathBuf, File)> {
        let n = {
            let mut next = self.next_file.lock();
            *next += 1;
            *next
        };
        let name = match kind {
            SnapshotKind::Full => format!("full-{n:08}.snap"),
            SnapshotKind::Delta => format!("delta-{n:08}.snap"),
        };
        let path = self.dir.path().join(&name);
        let file = File::create(&path)
            .map_err(|e| gress_state::Error::io(format!("creating {}", path.display()), e))?;
        Ok((name, path, file))
    }

    /// Starts a new file of the chain.
    pub(crate) fn start_file(&self, kind: SnapshotKind) -> Result<Writing> {
        let (name, path, file) = self.new_file(kind)?;
        Ok(Writing {
            writer: SnapshotWriter::new(BufWriter::with_capacity(1 << 20, file), kind, 0)?,
            name,
            path,
        })
    }

    /// Adds an epoch's delta to the chain.
    pub(crate) fn add_delta(&self, delta: Writing) -> Result<()> {
        let file = delta.finish()?;
        let mut chain = self.chain.lock();
        chain.seq += 1;
        let seq = chain.seq;
        chain.deltas.push((seq, file));
        Ok(())
    }

    /// The sequence number of the last delta added: a full snapshot
    /// started now needs the deltas after it.
    pub(crate) fn last_seq(&self) -> u64 {
        self.chain.lock().seq
    }

    /// Makes `full`, started when `after` was the last delta, the chain's
    /// base: later captures name it and the deltas after `after`.
    pub(crate) fn seal_full(&self, full: Arc<LocalFile>, after: u64) {
        let mut chain = self.chain.lock();
        chain.full = Some(full);
        chain.deltas.retain(|(seq, _)| *seq > after);
    }

    /// Files a capture now would name.
    #[cfg(test)]
    pub(crate) fn chain_len(&self) -> usize {
        let chain = self.chain.lock();
        usize::from(chain.full.is_some()) + chain.deltas.len()
    }

    /// Whether a new full snapshot is due: the deltas since the last are
    /// many, or the chain holds more than `max_delta_ratio` of the live
    /// state (`live` bytes, and a floor) in bytes that later files
    /// superseded. State that only grows (new keys every epoch) supersedes
    /// nothing, so its chain restarts only after `max_deltas` deltas
    /// instead of rewriting all of it whenever the deltas add up to a
    /// share of it.
    pub(crate) fn full_due(&self, live: u64) -> bool {
        let chain = self.chain.lock();
        let deltas: u64 = chain.deltas.iter().map(|(_, f)| f.bytes).sum();
        let full = chain.full.as_ref().map_or(0, |f| f.bytes);
        let superseded = (full + deltas).saturating_sub(live);
        chain.deltas.len() >= self.max_deltas
            || superseded as f64 > self.max_delta_ratio * live.max(MIN_FULL_BYTES) as f64
    }

    /// Takes what a restore put here: writes it as the chain's new base
    /// (dropping the old chain) and returns its entries, each a key, value
    /// and expiry; `None` if nothing was restored since the last call.
    #[allow(clippy::type_complexity)]
    pub(crate) fn take_restored(&self) -> Result<Option<Vec<(Vec<u8>, Vec<u8>, Option<u64>)>>> {
        {
            let mut pending = self.pending_restore.lock();
            if !*pending {
                return Ok(None);
            }
            *pending = false;
        }
        let (name, path, out) = self.new_file(SnapshotKind::Full)?;
        let mut out = BufWriter::with_capacity(1 << 20, out);
        // Deleted on drop if anything below fails.
        let mut file = LocalFile {
            name,
            path,
            bytes: 0,
        };
        let summary = self.restored.snapshot_to(&mut out)?;
        out.flush()
            .map_err(|e| gress_state::Error::io(format!("writing {}", file.path.display()), e))?;
        drop(out);
        file.bytes = summary.n_bytes;
        let file = Arc::new(file);
        let mut entries = Vec::new();
        {
            let input = File::open(&file.path).map_err(|e| {
                gress_state::Error::io(format!("opening {}", file.path.display()), e)
            })?;
            let mut reader = SnapshotReader::new(std::io::BufReader::new(input))?;
            while let Some(entry) = reader.next_entry()? {
                if let SnapshotEntry::Put {
                    key,
                    value,
                    expires_at_ms,
                } = entry
                {
                    entries.push((key.to_vec(), value.to_vec(), expires_at_ms));
                }
            }
        }
        self.restored.clear()?;
        let mut chain = self.chain.lock();
        chain.full = Some(file);
        chain.deltas.clear();
        Ok(Some(entries))
    }
}

/// Deltas may add up to this many bytes before a new full snapshot starts,
/// however small the last one.
const MIN_FULL_BYTES: u64 = 1 << 20;

/// A capture: the chain as it was at the cut.
struct HotCapture {
    files: Vec<CapturedFile>,
    /// Keeps the files on disk until written.
    _keep: Vec<Arc<LocalFile>>,
}

impl Capture for HotCapture {
    fn kind(&self) -> CaptureKind {
        CaptureKind::Complete
    }

    fn base(&self) -> Option<u64> {
        None
    }

    fn format(&self) -> &'static str {
        MEMORY_CHECKPOINT_FORMAT
    }

    fn files(&self) -> &[CapturedFile] {
        &self.files
    }

    fn write_stream(&mut self, name: &str, _out: &mut dyn Write) -> Result<u64> {
        Err(gress_state::Error::invalid_argument(
            "name",
            format!("{name}: the cache's capture has only files on disk"),
        ))
    }

    fn pause(&self) -> Duration {
        Duration::ZERO
    }

    fn committed(self: Box<Self>) {}
}

impl Checkpointable for HotImage {
    fn claim_checkpoints(&self, owner: u64) -> Result<()> {
        self.owner.claim(owner)
    }

    fn release_checkpoints(&self, owner: u64) {
        self.owner.release(owner);
    }

    fn delta_base(&self) -> Option<u64> {
        None
    }

    fn capture(&self, owner: u64, mode: CaptureMode, _id: u64) -> Result<Box<dyn Capture>> {
        self.owner.check(owner, "cache")?;
        let chain = self.chain.lock();
        let keep: Vec<Arc<LocalFile>> = chain
            .full
            .iter()
            .cloned()
            .chain(chain.deltas.iter().map(|(_, f)| Arc::clone(f)))
            .collect();
        let files = keep
            .iter()
            .map(|f| CapturedFile {
                name: f.name.clone(),
                source: FileSource::Local(f.path.clone()),
                shared_key: (mode == CaptureMode::Incremental)
                    .then(|| format!("cache/{:016x}/{}", self.id, f.name)),
            })
            .collect();
        Ok(Box::new(HotCapture { files, _keep: keep }))
    }

    fn prepare_restore(
        &self,
        format: &str,
        files: &dyn CheckpointFiles,
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        let inner = self.restored.prepare_restore(format, files)?;
        Ok(Box::new(HotRestore { image: self, inner }))
    }

    fn prepare_restore_ranges(
        &self,
        sources: &[RangeSource<'_>],
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        let inner = self.restored.prepare_restore_ranges(sources)?;
        Ok(Box::new(HotRestore { image: self, inner }))
    }
}

/// A restore of the image: switched in, it waits for the cache to take it.
struct HotRestore<'a> {
    image: &'a HotImage,
    inner: Box<dyn PreparedRestore + 'a>,
}

impl PreparedRestore for HotRestore<'_> {
    fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit()?;
        *self.image.pending_restore.lock() = true;
        Ok(())
    }
}

/// The image's entries, as a backend: what a restore put here and the
/// cache has not taken yet. The cache writes nothing through this.
impl StateBackend for HotImage {
    fn name(&self) -> &'static str {
        "cache"
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.restored.get(key)
    }
    fn get_with_expiry(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Option<u64>)>> {
        self.restored.get_with_expiry(key)
    }
    fn multi_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.restored.multi_get(keys)
    }
    fn ordered(&self) -> bool {
        false
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.restored.put(key, value)
    }
    fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.restored.put_with_ttl(key, value, ttl)
    }
    fn delete(&self, key: &[u8]) -> Result<()> {
        self.restored.delete(key)
    }
    fn write_batch(&self, batch: &WriteBatch) -> Result<()> {
        self.restored.write_batch(batch)
    }
    fn scan(&self, range: KeyRange) -> Result<ScanIter<'_>> {
        self.restored.scan(range)
    }
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<SnapshotSummary> {
        self.restored.snapshot_to(out)
    }
    fn restore_from(&self, input: &mut dyn std::io::Read) -> Result<RestoreSummary> {
        let summary = self.restored.restore_from(input)?;
        *self.pending_restore.lock() = true;
        Ok(summary)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn metrics(&self) -> Metrics {
        self.restored.metrics()
    }
    fn close(&self) -> Result<()> {
        self.restored.close()
    }
    fn is_closed(&self) -> bool {
        self.restored.is_closed()
    }
}
