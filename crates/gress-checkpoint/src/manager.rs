//! `CheckpointManager`: takes, commits, retains and restores checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gress_state::checkpoint::{
    Capture, CaptureKind, CaptureMode, CapturedFile, Checkpointable, FileSource, PreparedRestore,
};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::manifest::{
    self, BackendEntry, FileEntry, MANIFESTS, Manifest, Metadata, PRIVATE, SAVEPOINTS, SHARED,
    check_name, id_of_manifest_path, manifest_path, private_dir,
};
use crate::storage::Storage;
use crate::verify::{StoredFiles, VerifyingReader, damaged_or_storage, upload, verify_stored};

/// How the manager checkpoints.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckpointConfig {
    /// Time between periodic checkpoints. Default 30 s.
    pub interval: Duration,
    /// Committed checkpoints kept; older ones and the files only they need
    /// are deleted. At least 1. Default 3.
    pub retain: usize,
    /// Write only what changed where a backend can. Default true.
    pub incremental: bool,
    /// A backend whose delta chain has this many deltas gets a full capture
    /// next. Default 10.
    pub max_deltas: u32,
    /// ... or whose deltas add up to more than this fraction of its last
    /// full capture. Default 0.5.
    pub max_delta_ratio: f64,
    /// Files uploaded or downloaded at once. Default 4.
    pub parallelism: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: Duration::from_secs(30),
            retain: 3,
            incremental: true,
            max_deltas: 10,
            max_delta_ratio: 0.5,
            parallelism: 4,
        }
    }
}

impl CheckpointConfig {
    /// Sets the periodic interval.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets how many checkpoints are kept.
    pub fn with_retain(mut self, retain: usize) -> Self {
        self.retain = retain;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.retain == 0 {
            return Err(Error::invalid(
                "retain",
                "must keep at least one checkpoint",
            ));
        }
        if self.interval.is_zero() {
            return Err(Error::invalid("interval", "must be positive"));
        }
        if !(self.max_delta_ratio.is_finite() && self.max_delta_ratio >= 0.0) {
            return Err(Error::invalid(
                "max_delta_ratio",
                "must be a non-negative number",
            ));
        }
        if self.parallelism == 0 || self.parallelism > 256 {
            return Err(Error::invalid("parallelism", "must be between 1 and 256"));
        }
        Ok(())
    }
}

/// What a committed checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The checkpoint id.
    pub id: u64,
    /// When it was taken, ms since the UNIX epoch.
    pub created_at_ms: u64,
    /// The caller's metadata.
    pub metadata: Metadata,
    /// Total bytes of the files it references (shared ones included).
    pub total_bytes: u64,
    /// Per backend: name, format, number of files, deltas in its chain.
    pub backends: Vec<(String, String, usize, u32)>,
}

impl From<&Manifest> for CheckpointInfo {
    fn from(m: &Manifest) -> Self {
        CheckpointInfo {
            id: m.id,
            created_at_ms: m.created_at_ms,
            metadata: m.metadata.clone(),
            total_bytes: m.total_bytes(),
            backends: m
                .backends
                .iter()
                .map(|b| {
                    (
                        b.name.clone(),
                        b.format.clone(),
                        b.files.len(),
                        b.chain_deltas,
                    )
                })
                .collect(),
        }
    }
}

/// What taking one checkpoint did.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointReport {
    /// The committed checkpoint.
    pub info: CheckpointInfo,
    /// Bytes written to storage by this checkpoint (new files only).
    pub bytes_written: u64,
    /// Files written.
    pub files_written: usize,
    /// Files referenced from earlier checkpoints instead of written again.
    pub files_reused: usize,
    /// The longest time a backend held its writers to take its cut.
    pub max_pause: Duration,
    /// Time from the trigger to the published manifest.
    pub duration: Duration,
}

/// Counters of the manager's work.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointStats {
    /// Checkpoints committed.
    pub committed: u64,
    /// Checkpoints that failed (and left earlier ones intact).
    pub failed: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The last committed checkpoint's report.
    pub last: Option<CheckpointReport>,
}

struct Registered {
    name: String,
    backend: Arc<dyn Checkpointable>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Committed checkpoints still kept, by id.
    retained: BTreeMap<u64, Manifest>,
    /// Every stored file the retained checkpoints reference, with how many
    /// reference it.
    refs: HashMap<String, (FileEntry, usize)>,
}

impl State {
    fn add_refs(&mut self, m: &Manifest) {
        for f in m.paths() {
            self.refs
                .entry(f.path.clone())
                .or_insert_with(|| (f.clone(), 0))
                .1 += 1;
        }
    }

    /// Drops `m`'s references; returns the paths no checkpoint needs now.
    fn drop_refs(&mut self, m: &Manifest) -> Vec<String> {
        let mut unreferenced = Vec::new();
        for f in m.paths() {
            if let Some((_, n)) = self.refs.get_mut(&f.path) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(&f.path);
                    unreferenced.push(f.path.clone());
                }
            }
        }
        unreferenced
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    config: RwLock<CheckpointConfig>,
    backends: RwLock<Vec<Arc<Registered>>>,
    /// Held for the whole of a checkpoint, restore or savepoint: one at a
    /// time.
    permit: Arc<Mutex<()>>,
    /// What is committed; locked only briefly.
    state: Mutex<State>,
    stats: Mutex<CheckpointStats>,
    owner: u64,
}

/// Takes periodic or on-demand checkpoints of registered backends, commits
/// each with a checksummed manifest, keeps the last few, and restores them.
///
/// A checkpoint exists only once its manifest is published (create-only);
/// a failed or interrupted checkpoint never hides an earlier one. One
/// manager may use a storage location at a time. Each backend's capture is
/// its own consistent cut; for one cut across several backends, hold the
/// input still while `trigger_checkpoint` runs its captures (as a
/// barrier-aligned engine does).
pub struct CheckpointManager {
    shared: Arc<Shared>,
    periodic: Mutex<Option<Periodic>>,
}

struct Periodic {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl fmt::Debug for CheckpointManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointManager")
            .field("storage", &self.shared.storage)
            .field("backends", &self.backend_names())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl CheckpointManager {
    /// Opens the checkpoints in `storage`: reads every manifest, keeps the
    /// newest `retain` valid ones, and deletes what a crash left behind
    /// (files no kept checkpoint references, temporary files).
    pub fn open(storage: Arc<dyn Storage>, config: CheckpointConfig) -> Result<Self> {
        config.validate()?;
        let mut state = State::default();
        let mut max_id = 0;
        let mut invalid = Vec::new();
        for object in storage.list(MANIFESTS)? {
            let Some(id) = id_of_manifest_path(&object.path) else {
                continue;
            };
            max_id = max_id.max(id);
            match read_manifest(&*storage, id) {
                Ok(m) if m.id == id => {
                    state.retained.insert(id, m);
                }
                Ok(_) => invalid.push((id, "id differs from its file name".to_string())),
                Err(e) if e.is_damage() => invalid.push((id, e.to_string())),
                Err(e) => return Err(e),
            }
        }
        for (id, why) in &invalid {
            tracing::warn!(id, reason = %why, "ignoring a damaged checkpoint manifest");
        }
        // Private directories may name ids whose manifest never made it.
        for object in storage.list(PRIVATE)? {
            if let Some(id) = object.path[PRIVATE.len()..]
                .split('/')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
            {
                max_id = max_id.max(id);
            }
        }
        state.next_id = max_id + 1;
        while state.retained.len() > config.retain {
            let (id, _) = state.retained.pop_first().expect("non-empty");
            storage.delete(&manifest_path(id))?;
        }
        let oldest_kept = state.retained.keys().next().copied().unwrap_or(u64::MAX);
        for (id, _) in invalid {
            if id < oldest_kept {
                storage.delete(&manifest_path(id))?;
            }
        }
        let kept: Vec<Manifest> = state.retained.values().cloned().collect();
        for m in &kept {
            state.add_refs(m);
        }
        let mut removed = 0;
        for area in [SHARED, PRIVATE] {
            for object in storage.list(area)? {
                if !state.refs.contains_key(&object.path) {
                    storage.delete(&object.path)?;
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "deleted files no kept checkpoint needs");
        }
        Ok(CheckpointManager {
            shared: Arc::new(Shared {
                storage,
                config: RwLock::new(config),
                backends: RwLock::new(Vec::new()),
                permit: Arc::new(Mutex::new(())),
                state: Mutex::new(state),
                stats: Mutex::new(CheckpointStats::default()),
                owner: next_owner(),
            }),
            periodic: Mutex::new(None),
        })
    }

    /// Registers a backend under a stable `name` (1 to 64 characters of
    /// `[A-Za-z0-9_-]`), the key of its part in every checkpoint.
    pub fn register(&self, name: &str, backend: Arc<dyn Checkpointable>) -> Result<()> {
        check_name(name)?;
        let mut backends = self.shared.backends.write();
        if backends.iter().any(|b| b.name == name) {
            return Err(Error::invalid(
                "name",
                format!("a backend named `{name}` is registered"),
            ));
        }
        backend.claim_checkpoints(self.shared.owner)?;
        backends.push(Arc::new(Registered {
            name: name.to_string(),
            backend,
        }));
        Ok(())
    }

    /// The registered names, in registration order.
    pub fn backend_names(&self) -> Vec<String> {
        self.shared
            .backends
            .read()
            .iter()
            .map(|b| b.name.clone())
            .collect()
    }

    /// Turns incremental checkpoints on or off.
    pub fn enable_incremental_checkpoints(&self, on: bool) {
        self.shared.config.write().incremental = on;
    }

    /// Takes a checkpoint now and commits it with `metadata`; returns what
    /// it did. On error nothing is committed, earlier checkpoints are
    /// intact, and the next checkpoint is full for every backend.
    pub fn trigger_checkpoint(&self, metadata: Metadata) -> Result<CheckpointReport> {
        self.shared.trigger(metadata)
    }

    /// Takes every backend's cut now and returns; the files are written and
    /// the checkpoint committed by [`PendingCheckpoint::commit`], which may
    /// run on another thread while processing goes on. Call this from the
    /// processing thread between two records to get a cut that matches
    /// `metadata` exactly (the way a barrier-aligned engine checkpoints).
    /// The next checkpoint, restore or savepoint waits for the commit.
    pub fn begin_checkpoint(&self, metadata: Metadata) -> Result<PendingCheckpoint> {
        let pending = Shared::begin(&self.shared, metadata);
        if let Err(e) = &pending {
            self.shared.record_failure(e);
        }
        pending
    }

    /// Committed checkpoints, oldest first.
    pub fn list(&self) -> Vec<CheckpointInfo> {
        self.shared
            .state
            .lock()
            .retained
            .values()
            .map(CheckpointInfo::from)
            .collect()
    }

    /// The newest committed checkpoint.
    pub fn latest(&self) -> Option<CheckpointInfo> {
        self.shared
            .state
            .lock()
            .retained
            .values()
            .next_back()
            .map(CheckpointInfo::from)
    }

    /// Restores checkpoint `id` into the registered backends. Every
    /// backend's part is read and verified before any backend changes.
    pub fn restore(&self, id: u64) -> Result<CheckpointInfo> {
        let _one_at_a_time = self.shared.permit.lock();
        let manifest = read_manifest(&*self.shared.storage, id).map_err(|e| match e {
            Error::Storage { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Error::NoSuchCheckpoint { id }
            }
            other => other,
        })?;
        if manifest.id != id {
            return Err(Error::InvalidManifest {
                path: manifest_path(id),
                reason: "id differs from its file name".into(),
            });
        }
        self.shared.restore_manifest(&manifest)?;
        Ok(CheckpointInfo::from(&manifest))
    }

    /// Restores the newest checkpoint that is intact. A damaged or
    /// incomplete one is reported (with why) and the next older one tried;
    /// the error lists every attempt if none could be restored.
    pub fn restore_latest(&self) -> Result<CheckpointInfo> {
        let mut ids: Vec<u64> = self
            .shared
            .storage
            .list(MANIFESTS)?
            .iter()
            .filter_map(|o| id_of_manifest_path(&o.path))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut tried = Vec::new();
        for id in ids {
            match self.restore(id) {
                Ok(info) => {
                    if !tried.is_empty() {
                        tracing::warn!(restored = id, skipped = ?tried, "fell back to an older checkpoint");
                    }
                    return Ok(info);
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "checkpoint cannot be restored");
                    tried.push((id, error_chain(&e)));
                }
            }
        }
        Err(Error::NothingToRestore { tried })
    }

    /// Writes a savepoint: a full, portable snapshot (format v1) of every
    /// registered backend, under `name`, outside retention. It restores
    /// into any backend type.
    pub fn trigger_savepoint(&self, name: &str, metadata: Metadata) -> Result<CheckpointInfo> {
        check_name(name)?;
        let _one_at_a_time = self.shared.permit.lock();
        let storage = &*self.shared.storage;
        let dir = format!("{SAVEPOINTS}{name}/");
        let manifest_at = format!("{dir}MANIFEST");
        if storage.size(&manifest_at)?.is_some() {
            return Err(Error::invalid("name", format!("savepoint `{name}` exists")));
        }
        let mut backends = Vec::new();
        for reg in self.shared.backends.read().iter() {
            let path = format!("{dir}{}.snap", reg.name);
            let (size, crc32c) = upload(storage, &path, &mut |w| {
                reg.backend.snapshot_to(w)?;
                Ok(())
            })?;
            backends.push(BackendEntry {
                name: reg.name.clone(),
                format: SNAPSHOT_FORMAT.into(),
                files: vec![FileEntry {
                    name: format!("{}.snap", reg.name),
                    path,
                    size,
                    crc32c,
                }],
                chain_deltas: 0,
            });
        }
        let manifest = Manifest {
            id: 0,
            created_at_ms: now_ms(),
            metadata,
            backends,
        };
        storage.put_new(&manifest_at, &manifest.encode()?)?;
        Ok(CheckpointInfo::from(&manifest))
    }

    /// Restores savepoint `name` into the registered backends, whatever
    /// their type. Every file is verified before any backend changes.
    pub fn restore_savepoint(&self, name: &str) -> Result<CheckpointInfo> {
        check_name(name)?;
        let _one_at_a_time = self.shared.permit.lock();
        let storage = &*self.shared.storage;
        let path = format!("{SAVEPOINTS}{name}/MANIFEST");
        let bytes = storage.read_all(&path, manifest::MAX_MANIFEST_LEN + 128)?;
        let manifest = Manifest::decode(&bytes, &path)?;
        let backends = self.shared.backends.read();
        let mut plan = Vec::new();
        for reg in backends.iter() {
            let entry = manifest.backend(&reg.name).ok_or_else(|| Error::Backend {
                name: reg.name.clone(),
                reason: "not in this savepoint".into(),
            })?;
            let [file] = entry.files.as_slice() else {
                return Err(Error::InvalidManifest {
                    path: path.clone(),
                    reason: "a savepoint holds one file per backend".into(),
                });
            };
            if entry.format != SNAPSHOT_FORMAT
                || !file.path.starts_with(&format!("{SAVEPOINTS}{name}/"))
            {
                return Err(Error::InvalidManifest {
                    path: path.clone(),
                    reason: format!(
                        "backend `{}` is not a v1 snapshot of this savepoint",
                        reg.name
                    )
                    .into(),
                });
            }
            verify_stored(storage, file)?;
            plan.push((reg, file));
        }
        for (reg, file) in plan {
            let mut input = VerifyingReader::new(storage.open(&file.path)?, file);
            reg.backend.restore_from(&mut input)?;
        }
        Ok(CheckpointInfo::from(&manifest))
    }

    /// Starts taking a checkpoint every `interval` on a background thread,
    /// with the metadata `metadata()` returns just before the cuts are
    /// taken. Writes that land between the two are in the state but not
    /// described by the metadata: keep offsets in the state itself, or use
    /// [`CheckpointManager::begin_checkpoint`] from the processing thread
    /// for an exact match. A failed checkpoint is logged and counted; the
    /// next one is tried on time.
    pub fn start_periodic(&self, metadata: impl Fn() -> Metadata + Send + 'static) -> Result<()> {
        let mut periodic = self.periodic.lock();
        if periodic.is_some() {
            return Err(Error::invalid(
                "start_periodic",
                "periodic checkpoints are running",
            ));
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = Arc::clone(&stop);
        let shared = Arc::clone(&self.shared);
        let thread = std::thread::Builder::new()
            .name("gress-checkpoints".into())
            .spawn(move || {
                loop {
                    let interval = shared.config.read().interval;
                    {
                        let mut stopped = thread_stop.0.lock();
                        if !*stopped {
                            thread_stop.1.wait_for(&mut stopped, interval);
                        }
                        if *stopped {
                            return;
                        }
                    }
                    if let Err(e) = shared.trigger(metadata()) {
                        tracing::warn!(error = %e, "periodic checkpoint failed; will retry");
                    }
                }
            })
            .map_err(|e| Error::storage("starting the checkpoint thread for", "periodic", e))?;
        *periodic = Some(Periodic { stop, thread });
        Ok(())
    }

    /// Stops periodic checkpoints, waiting for one in progress to finish.
    pub fn stop_periodic(&self) {
        if let Some(p) = self.periodic.lock().take() {
            *p.stop.0.lock() = true;
            p.stop.1.notify_all();
            if p.thread.join().is_err() {
                tracing::error!("the checkpoint thread panicked");
            }
        }
    }

    /// Counters of checkpoints taken and failed.
    pub fn stats(&self) -> CheckpointStats {
        self.shared.stats.lock().clone()
    }

    /// The storage the manager writes to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }
}

impl Drop for CheckpointManager {
    fn drop(&mut self) {
        self.stop_periodic();
        for reg in self.shared.backends.read().iter() {
            reg.backend.release_checkpoints(self.shared.owner);
        }
    }
}

pub use gress_state::SNAPSHOT_FORMAT;

fn next_owner() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) as u64
}

fn read_manifest(storage: &dyn Storage, id: u64) -> Result<Manifest> {
    let path = manifest_path(id);
    let bytes = storage.read_all(&path, manifest::MAX_MANIFEST_LEN + 128)?;
    Manifest::decode(&bytes, &path)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// One file to upload from local disk.
struct UploadJob<'a> {
    backend: usize,
    slot: usize,
    path: String,
    local: &'a std::path::Path,
}

/// A checkpoint whose cuts are taken and whose files are not yet written.
/// Dropping it abandons the checkpoint (backends capture in full next time).
#[must_use = "call commit() to write and commit the checkpoint"]
pub struct PendingCheckpoint {
    shared: Arc<Shared>,
    _permit: parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>,
    id: u64,
    metadata: Metadata,
    backends: Vec<Arc<Registered>>,
    captures: Vec<Box<dyn Capture>>,
    latest: Option<Manifest>,
    refs: HashMap<String, (FileEntry, usize)>,
    config: CheckpointConfig,
    started: Instant,
    max_pause: Duration,
}

impl fmt::Debug for PendingCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingCheckpoint")
            .field("id", &self.id)
            .field("max_pause", &self.max_pause)
            .finish_non_exhaustive()
    }
}

impl PendingCheckpoint {
    /// The id the checkpoint will have.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Writes the files and publishes the manifest; returns what it did.
    /// On error nothing is committed and earlier checkpoints are intact.
    pub fn commit(self) -> Result<CheckpointReport> {
        let shared = Arc::clone(&self.shared);
        let result = self.commit_inner();
        match &result {
            Ok(report) => {
                let mut stats = shared.stats.lock();
                stats.committed += 1;
                stats.last = Some(report.clone());
            }
            Err(e) => shared.record_failure(e),
        }
        result
    }

    fn commit_inner(mut self) -> Result<CheckpointReport> {
        let shared = Arc::clone(&self.shared);
        let mut written: Vec<String> = Vec::new();
        let committed = shared.write_checkpoint(
            self.id,
            std::mem::take(&mut self.metadata),
            &self.backends,
            &mut self.captures,
            self.latest.as_ref(),
            &self.refs,
            &mut written,
            &self.config,
        );
        let (manifest, bytes_written, files_written, files_reused) = match committed {
            Ok(done) => done,
            Err(e) => {
                // Anything written for a checkpoint that did not commit goes.
                for path in written.iter().rev() {
                    if let Err(cleanup) = shared.storage.delete(path) {
                        tracing::warn!(path, error = %cleanup, "could not delete a file of a failed checkpoint");
                    }
                }
                return Err(e);
            }
        };
        for capture in std::mem::take(&mut self.captures) {
            capture.committed();
        }
        {
            let mut state = shared.state.lock();
            state.add_refs(&manifest);
            state.retained.insert(self.id, manifest.clone());
            shared.apply_retention(&mut state, self.config.retain);
        }
        let report = CheckpointReport {
            info: CheckpointInfo::from(&manifest),
            bytes_written,
            files_written,
            files_reused,
            max_pause: self.max_pause,
            duration: self.started.elapsed(),
        };
        tracing::info!(
            id = self.id,
            bytes_written,
            files_written,
            files_reused,
            pause_us = self.max_pause.as_micros() as u64,
            "checkpoint committed"
        );
        Ok(report)
    }
}

impl Shared {
    fn record_failure(&self, e: &Error) {
        let mut stats = self.stats.lock();
        stats.failed += 1;
        stats.last_error = Some(error_chain(e));
    }

    fn trigger(self: &Arc<Self>, metadata: Metadata) -> Result<CheckpointReport> {
        match Shared::begin(self, metadata) {
            Ok(pending) => pending.commit(),
            Err(e) => {
                self.record_failure(&e);
                Err(e)
            }
        }
    }

    /// Takes every backend's cut, one after another.
    fn begin(self: &Arc<Self>, metadata: Metadata) -> Result<PendingCheckpoint> {
        let started = Instant::now();
        let permit = self.permit.lock_arc();
        let config = self.config.read().clone();
        let backends: Vec<Arc<Registered>> = self.backends.read().clone();
        if backends.is_empty() {
            return Err(Error::invalid("backends", "no backend is registered"));
        }
        let (id, latest, refs) = {
            let mut state = self.state.lock();
            let id = state.next_id;
            state.next_id += 1;
            let latest = state.retained.values().next_back().cloned();
            (id, latest, state.refs.clone())
        };
        let mut captures: Vec<Box<dyn Capture>> = Vec::with_capacity(backends.len());
        for reg in &backends {
            // Incremental unless turned off or the backend's delta chain is
            // long enough; a backend with nothing to build on answers an
            // incremental request with a complete capture.
            let chain_ok = latest
                .as_ref()
                .and_then(|m| m.backend(&reg.name))
                .is_none_or(|prev| allows_delta(prev, &config));
            let mode = if config.incremental && chain_ok {
                CaptureMode::Incremental
            } else {
                CaptureMode::Full
            };
            captures.push(reg.backend.capture(self.owner, mode, id)?);
        }
        let max_pause = captures.iter().map(|c| c.pause()).max().unwrap_or_default();
        Ok(PendingCheckpoint {
            shared: Arc::clone(self),
            _permit: permit,
            id,
            metadata,
            backends,
            captures,
            latest,
            refs,
            config,
            started,
            max_pause,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn write_checkpoint(
        &self,
        id: u64,
        metadata: Metadata,
        backends: &[Arc<Registered>],
        captures: &mut [Box<dyn Capture>],
        latest: Option<&Manifest>,
        refs: &HashMap<String, (FileEntry, usize)>,
        written: &mut Vec<String>,
        config: &CheckpointConfig,
    ) -> Result<(Manifest, u64, usize, usize)> {
        let storage = &*self.storage;
        let (mut bytes_written, mut files_reused) = (0u64, 0usize);
        let mut entries: Vec<BackendEntry> = Vec::with_capacity(backends.len());
        let mut jobs: Vec<UploadJob<'_>> = Vec::new();
        // Files of each backend, in capture order; uploads fill them in.
        let mut slots: Vec<Vec<Option<FileEntry>>> = Vec::new();
        let files: Vec<Vec<CapturedFile>> = captures.iter().map(|c| c.files().to_vec()).collect();
        for (b, (reg, capture)) in backends.iter().zip(captures.iter_mut()).enumerate() {
            let (chain, chain_deltas) = match capture.kind() {
                CaptureKind::Complete => (Vec::new(), 0),
                CaptureKind::Delta => {
                    let prev = latest.and_then(|m| m.backend(&reg.name)).ok_or_else(|| {
                        Error::Backend {
                            name: reg.name.clone(),
                            reason: "a delta capture without a committed checkpoint to build on"
                                .into(),
                        }
                    })?;
                    (prev.files.clone(), prev.chain_deltas + 1)
                }
            };
            let mut backend_slots = Vec::with_capacity(files[b].len());
            for (slot, file) in files[b].iter().enumerate() {
                let path = match &file.shared_key {
                    Some(key) => format!("{SHARED}{key}"),
                    None => format!("{}{}/{}", private_dir(id), reg.name, file.name),
                };
                if let Some((stored, _)) = refs.get(&path).filter(|_| file.shared_key.is_some()) {
                    files_reused += 1;
                    backend_slots.push(Some(FileEntry {
                        name: file.name.clone(),
                        ..stored.clone()
                    }));
                    continue;
                }
                match &file.source {
                    FileSource::Local(local) => {
                        jobs.push(UploadJob {
                            backend: b,
                            slot,
                            path,
                            local,
                        });
                        backend_slots.push(None);
                    }
                    FileSource::Stream => {
                        written.push(path.clone());
                        let (size, crc32c) = upload(storage, &path, &mut |w| {
                            capture
                                .write_stream(&file.name, w)
                                .map(drop)
                                .map_err(Error::from)
                        })?;
                        bytes_written += size;
                        backend_slots.push(Some(FileEntry {
                            name: file.name.clone(),
                            path,
                            size,
                            crc32c,
                        }));
                    }
                }
            }
            slots.push(backend_slots);
            entries.push(BackendEntry {
                name: reg.name.clone(),
                format: capture.format().to_string(),
                files: chain,
                chain_deltas,
            });
        }
        written.extend(jobs.iter().map(|j| j.path.clone()));
        let files_written = written.len();
        for (job, result) in self.upload_parallel(&jobs, config.parallelism) {
            let (size, crc32c) = result?;
            bytes_written += size;
            slots[job.backend][job.slot] = Some(FileEntry {
                name: files[job.backend][job.slot].name.clone(),
                path: job.path.clone(),
                size,
                crc32c,
            });
        }
        for (entry, backend_slots) in entries.iter_mut().zip(slots) {
            entry.files.extend(backend_slots.into_iter().flatten());
        }
        let manifest = Manifest {
            id,
            created_at_ms: now_ms(),
            metadata,
            backends: entries,
        };
        manifest.validate()?;
        // The commit point: create-only, so it can never replace another.
        storage.put_new(&manifest_path(id), &manifest.encode()?)?;
        Ok((manifest, bytes_written, files_written, files_reused))
    }

    fn upload_parallel<'j>(
        &self,
        jobs: &'j [UploadJob<'_>],
        parallelism: usize,
    ) -> Vec<(&'j UploadJob<'j>, Result<(u64, u32)>)> {
        let next = AtomicUsize::new(0);
        let results = Mutex::new(Vec::with_capacity(jobs.len()));
        let workers = parallelism.clamp(1, jobs.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else {
                            return;
                        };
                        let result = upload(&*self.storage, &job.path, &mut |w| {
                            let mut f = File::open(job.local).map_err(|e| {
                                Error::storage("reading", job.local.display().to_string(), e)
                            })?;
                            io::copy(&mut f, w)
                                .map_err(|e| Error::storage("copying", job.path.clone(), e))?;
                            Ok(())
                        });
                        results.lock().push((job, result));
                    }
                });
            }
        });
        results.into_inner()
    }

    /// Deletes the oldest checkpoints beyond `retain`: manifest first (so
    /// it stops being a checkpoint), then every file no kept one needs.
    fn apply_retention(&self, state: &mut State, retain: usize) {
        while state.retained.len() > retain {
            let Some((&old_id, _)) = state.retained.iter().next() else {
                return;
            };
            if let Err(e) = self.storage.delete(&manifest_path(old_id)) {
                tracing::warn!(id = old_id, error = %e, "could not delete an old checkpoint; keeping it");
                return;
            }
            let old = state.retained.remove(&old_id).expect("present");
            for path in state.drop_refs(&old) {
                if let Err(e) = self.storage.delete(&path) {
                    // Left for the orphan sweep at the next start.
                    tracing::warn!(path, error = %e, "could not delete an unreferenced file");
                }
            }
        }
    }

    fn restore_manifest(&self, manifest: &Manifest) -> Result<()> {
        let backends = self.backends.read();
        for entry in &manifest.backends {
            if !backends.iter().any(|b| b.name == entry.name) {
                return Err(Error::Backend {
                    name: entry.name.clone(),
                    reason: "in the checkpoint but not registered".into(),
                });
            }
        }
        let storage = &*self.storage;
        // Cheap check first: every file is there with its size.
        for f in manifest.paths() {
            match storage.size(&f.path)? {
                Some(size) if size == f.size => {}
                Some(size) => {
                    return Err(Error::DamagedFile {
                        path: f.path.clone(),
                        reason: format!("{size} bytes, expected {}", f.size).into(),
                    });
                }
                None => {
                    return Err(Error::DamagedFile {
                        path: f.path.clone(),
                        reason: "missing".into(),
                    });
                }
            }
        }
        let parallelism = self.config.read().parallelism;
        let mut prepared: Vec<Box<dyn PreparedRestore + '_>> = Vec::new();
        for reg in backends.iter() {
            let entry = manifest.backend(&reg.name).ok_or_else(|| Error::Backend {
                name: reg.name.clone(),
                reason: "registered but not in the checkpoint".into(),
            })?;
            let files = StoredFiles {
                storage,
                files: &entry.files,
                parallelism,
            };
            let p = reg
                .backend
                .prepare_restore(&entry.format, &files)
                .map_err(|e| match e {
                    gress_state::Error::Io { source, context }
                        if source.kind() == io::ErrorKind::InvalidData =>
                    {
                        damaged_or_storage(source, &context)
                    }
                    other => Error::State(other),
                })?;
            prepared.push(p);
        }
        for p in prepared {
            p.commit()?;
        }
        Ok(())
    }
}

/// Whether a backend's previous checkpoint may be extended by a delta.
fn allows_delta(prev: &BackendEntry, config: &CheckpointConfig) -> bool {
    if prev.chain_deltas >= config.max_deltas {
        return false;
    }
    let Some((full, deltas)) = prev.files.split_first() else {
        return false;
    };
    if prev.chain_deltas == 0 {
        // A complete capture (memory full snapshot or RocksDB files): the
        // backend decides what an increment is.
        return true;
    }
    let delta_bytes: u64 = deltas.iter().map(|f| f.size).sum();
    (delta_bytes as f64) <= config.max_delta_ratio * full.size.max(1) as f64
}
