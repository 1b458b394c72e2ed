//! Taking a checkpoint: the cut (`begin_checkpoint`), then the uploads and
//! the publication of the manifest (`PendingCheckpoint::commit`).
//!
//! Cuts never wait for uploads: up to `max_in_flight` checkpoints may be
//! cut and not yet committed, and a cut beyond that fails at once. A delta
//! capture builds on a committed checkpoint (its base), never on one in
//! flight, so checkpoints in flight commit or fail in any order. Files a
//! checkpoint in flight reuses (shared files, its base's chain) are pinned
//! (referenced) from the cut until it ends, so retention cannot delete
//! them meanwhile.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gress_state::checkpoint::{Capture, CaptureKind, CaptureMode, CapturedFile, FileSource};
use parking_lot::Mutex;

use super::{CheckpointConfig, CheckpointManager, Registered, Shared, error_chain};
use crate::error::{Error, Result};
use crate::fence::now_ms;
use crate::info::{CheckpointInfo, CheckpointReport};
use crate::manifest::{
    BackendEntry, FileEntry, Manifest, Metadata, key_of_shared, manifest_path, private_dir,
    shared_path,
};
use crate::verify::upload;

impl CheckpointManager {
    /// Takes every backend's cut now and returns; the files are written and
    /// the checkpoint committed by [`PendingCheckpoint::commit`], which may
    /// run on another thread while processing goes on. Call this from the
    /// processing thread between two records to get a cut that matches
    /// `metadata` exactly (the way a barrier-aligned engine checkpoints).
    ///
    /// Never waits for an upload: with `max_in_flight` checkpoints cut and
    /// not yet committed or dropped, this fails at once with
    /// [`Error::Busy`]. Dropping the returned checkpoint abandons it.
    pub fn begin_checkpoint(&self, metadata: Metadata) -> Result<PendingCheckpoint> {
        let pending = Shared::begin(&self.shared, metadata);
        if let Err(e) = &pending {
            self.shared.record_failure(e);
        }
        pending
    }
}

/// One backend's part of a checkpoint in flight.
struct Part {
    name: String,
    capture: Mutex<Option<Box<dyn Capture>>>,
    format: &'static str,
    /// The base's files, for a delta; empty for a complete capture.
    chain: Vec<FileEntry>,
    chain_deltas: u32,
    files: Vec<Planned>,
}

/// What becomes of one captured file.
#[derive(Clone)]
enum Planned {
    /// Already stored by an earlier checkpoint (checked again before the
    /// manifest names it).
    Reuse(FileEntry),
    /// To be written at `path`.
    Upload {
        captured: CapturedFile,
        path: String,
    },
}

/// A checkpoint whose cuts are taken and whose files are not yet written.
/// Dropping it abandons the checkpoint.
#[must_use = "call commit() to write and commit the checkpoint"]
pub struct PendingCheckpoint {
    shared: Arc<Shared>,
    id: u64,
    metadata: Metadata,
    parts: Vec<Part>,
    /// References taken at the cut, dropped when this ends.
    pins: Vec<FileEntry>,
    config: CheckpointConfig,
    started: Instant,
    max_pause: Duration,
}

impl std::fmt::Debug for PendingCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCheckpoint")
            .field("id", &self.id)
            .field("max_pause", &self.max_pause)
            .finish_non_exhaustive()
    }
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        // Captures not committed tell their backends so on drop.
        for part in &self.parts {
            drop(part.capture.lock().take());
        }
        let pins = std::mem::take(&mut self.pins);
        self.shared.release_refs(&pins);
        self.shared.state.lock().in_flight -= 1;
    }
}

/// Counts a checkpoint in flight until it becomes a `PendingCheckpoint`.
struct InFlight<'a>(Option<&'a Shared>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.state.lock().in_flight -= 1;
        }
    }
}

impl Shared {
    pub(super) fn begin(self: &Arc<Self>, metadata: Metadata) -> Result<PendingCheckpoint> {
        // A restore may run for long: fail at once rather than wait for it.
        if self.state.lock().restoring {
            return Err(Error::busy("a restore is running"));
        }
        let _cut = self.cut.lock();
        let config = self.config.read().clone();
        let backends = self.backends();
        if backends.is_empty() {
            return Err(Error::invalid("backends", "no backend is registered"));
        }
        let id = {
            let mut state = self.state.lock();
            if self.is_closing() {
                return Err(Error::busy("the checkpoint manager is closed"));
            }
            if state.restoring {
                return Err(Error::busy("a restore is running"));
            }
            if self.fence.is_fenced() {
                return Err(self.fence.check().err().unwrap_or(Error::busy("fenced")));
            }
            if let Some(target) = &state.restore_incomplete {
                return Err(Error::RestoreIncomplete {
                    target: target.clone(),
                });
            }
            if state.in_flight >= config.max_in_flight {
                return Err(Error::busy(format!(
                    "{} checkpoints are being written (max_in_flight)",
                    state.in_flight
                )));
            }
            let id = state.next_id;
            state.next_id = id.checked_add(1).ok_or(Error::IdsExhausted { found: id })?;
            state.in_flight += 1;
            id
        };
        let mut in_flight = InFlight(Some(self));
        let started = Instant::now();
        let mut parts = Vec::with_capacity(backends.len());
        for reg in &backends {
            parts.push(self.cut_one(reg, &config, id)?);
        }
        let max_pause = parts
            .iter()
            .filter_map(|p| p.capture.lock().as_ref().map(|c| c.pause()))
            .max()
            .unwrap_or_default();

        // Pin what this checkpoint will name without writing it.
        let pins: Vec<FileEntry> = {
            let mut state = self.state.lock();
            let mut pins = Vec::new();
            for part in &mut parts {
                pins.extend(part.chain.iter().cloned());
                for planned in &mut part.files {
                    if let Planned::Upload { captured, .. } = planned
                        && let Some(key) = &captured.shared_key
                        && let Some(stored) = state.refs.shared(key)
                    {
                        *planned = Planned::Reuse(FileEntry {
                            name: captured.name.clone(),
                            ..stored.clone()
                        });
                    }
                    if let Planned::Reuse(entry) = planned {
                        pins.push(entry.clone());
                    }
                }
            }
            state.refs.add(&pins);
            pins
        };
        in_flight.0 = None;
        Ok(PendingCheckpoint {
            shared: Arc::clone(self),
            id,
            metadata,
            parts,
            pins,
            config,
            started,
            max_pause,
        })
    }

    /// Captures one backend: a delta on its base where allowed, else full.
    fn cut_one(&self, reg: &Registered, config: &CheckpointConfig, id: u64) -> Result<Part> {
        // The base's part, if the backend would build a delta on a
        // checkpoint that is kept and whose chain may grow.
        let base = reg.backend.delta_base().and_then(|base_id| {
            let state = self.state.lock();
            let entry = state.retained.get(&base_id)?.backend(&reg.name)?.clone();
            allows_delta(&entry, config).then_some((base_id, entry))
        });
        let wants_delta = reg.backend.delta_base().is_some();
        let mode = if config.incremental && (base.is_some() || !wants_delta) {
            CaptureMode::Incremental
        } else {
            CaptureMode::Full
        };
        let mut capture = reg.backend.capture(self.owner, mode, id)?;
        let mut chain = (Vec::new(), 0);
        if capture.kind() == CaptureKind::Delta {
            match (&base, capture.base()) {
                (Some((base_id, entry)), Some(b)) if b == *base_id => {
                    chain = (entry.files.clone(), entry.chain_deltas + 1);
                }
                _ => {
                    // Built on something this manager cannot chain to.
                    drop(capture);
                    capture = reg.backend.capture(self.owner, CaptureMode::Full, id)?;
                    if capture.kind() == CaptureKind::Delta {
                        return Err(Error::Backend {
                            name: reg.name.clone(),
                            reason: "answered a full capture request with a delta".into(),
                        });
                    }
                }
            }
        }
        let files = capture
            .files()
            .iter()
            .map(|f| Planned::Upload {
                path: match &f.shared_key {
                    Some(key) => shared_path(id, self.fence.epoch(), key),
                    None => format!(
                        "{}{}/{}",
                        private_dir(id, self.fence.epoch()),
                        reg.name,
                        f.name
                    ),
                },
                captured: f.clone(),
            })
            .collect();
        Ok(Part {
            name: reg.name.clone(),
            format: capture.format(),
            capture: Mutex::new(Some(capture)),
            chain: chain.0,
            chain_deltas: chain.1,
            files,
        })
    }
}

/// Whether a backend's checkpoint may be extended by a delta.
fn allows_delta(prev: &BackendEntry, config: &CheckpointConfig) -> bool {
    if prev.chain_deltas >= config.max_deltas {
        return false;
    }
    let Some((full, deltas)) = prev.files.split_first() else {
        return false;
    };
    if prev.chain_deltas == 0 {
        return true;
    }
    let delta_bytes: u64 = deltas.iter().map(|f| f.size).sum();
    (delta_bytes as f64) <= config.max_delta_ratio * full.size.max(1) as f64
}

/// Size and CRC32C of a written file.
type Uploaded = Result<(u64, u32)>;

/// One file to write.
struct Job {
    part: usize,
    slot: usize,
    path: String,
}

/// What publishing the manifest came to.
enum Published {
    Yes,
    /// Certainly not published: the files may go.
    No(Error),
    /// It may or may not exist.
    Unknown(Error),
}

impl PendingCheckpoint {
    /// The id the checkpoint will have.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Writes the files and publishes the manifest; returns what it did.
    /// On error nothing is committed (or, if the storage's answer was lost,
    /// the checkpoint may exist and restores correctly) and earlier
    /// checkpoints are intact. `Ok` means the checkpoint is published and
    /// restores.
    pub fn commit(mut self) -> Result<CheckpointReport> {
        let shared = Arc::clone(&self.shared);
        // Every storage call of the checkpoint ends by its deadline.
        let deadline = self.deadline();
        let result = crate::storage::with_deadline(deadline, || self.commit_inner());
        match &result {
            Ok(report) => {
                crate::telemetry::committed(&self.config.metrics_label, report);
                let mut stats = shared.stats.lock();
                stats.committed += 1;
                stats.last = Some(report.clone());
            }
            Err(e) => shared.record_failure(e),
        }
        result
    }

    fn deadline(&self) -> Instant {
        self.started + self.config.checkpoint_timeout
    }

    fn stopped(&self) -> Option<Error> {
        if self.shared.is_closing() {
            return Some(Error::busy("the checkpoint manager is closed"));
        }
        if Instant::now() > self.deadline() {
            return Some(Error::storage(
                "finishing",
                manifest_path(self.id),
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "checkpoint {} not published within {:?}",
                        self.id, self.config.checkpoint_timeout
                    ),
                ),
            ));
        }
        None
    }

    fn commit_inner(&mut self) -> Result<CheckpointReport> {
        let storage = Arc::clone(&self.shared.storage);
        // A reused file must still be there before a manifest names it.
        let mut files_reused = 0;
        for part in &mut self.parts {
            for planned in &mut part.files {
                let Planned::Reuse(entry) = planned else {
                    continue;
                };
                if storage.size(&entry.path)? == Some(entry.size) {
                    files_reused += 1;
                    continue;
                }
                tracing::warn!(
                    path = entry.path,
                    "a shared file is gone or changed; storing it again"
                );
                let captured = part
                    .capture
                    .lock()
                    .as_ref()
                    .and_then(|c| c.files().iter().find(|f| f.name == entry.name).cloned())
                    .ok_or_else(|| Error::invalid("capture", "lost a captured file"))?;
                let key = key_of_shared(&entry.path)
                    .unwrap_or(&entry.name)
                    .to_string();
                *planned = Planned::Upload {
                    captured,
                    path: shared_path(self.id, self.shared.fence.epoch(), &key),
                };
            }
        }

        let mut written: Vec<String> = Vec::new();
        let uploaded = self.upload_all(&mut written);
        let (entries, bytes_written) = match uploaded {
            Ok(done) => done,
            Err(e) => {
                self.clean_up(&written);
                return Err(e);
            }
        };
        let manifest = Manifest {
            id: self.id,
            created_at_ms: now_ms(),
            metadata: std::mem::take(&mut self.metadata),
            backends: entries,
        };
        let published = match manifest.validate().and_then(|()| manifest.encode()) {
            Err(e) => Published::No(e),
            Ok(bytes) => match self.stopped() {
                Some(e) => Published::No(e),
                None => match self.shared.fence.check() {
                    Err(e) => Published::No(e),
                    Ok(()) => publish(&*storage, &manifest_path(self.id), &bytes),
                },
            },
        };
        match published {
            Published::Yes => {}
            Published::No(e) => {
                self.clean_up(&written);
                return Err(e);
            }
            Published::Unknown(e) => {
                tracing::warn!(id = self.id, error = %error_chain(&e), "cannot tell whether the checkpoint was published; keeping its files");
                self.shared.keep_uncertain(&manifest);
                self.shared.stats.lock().uncertain += 1;
                crate::telemetry::uncertain(&self.config.metrics_label);
                return Err(e);
            }
        }
        // A newer manager that took over right before the publication may
        // have swept this checkpoint's files: then it cannot be vouched for.
        match self.shared.fence.check() {
            Ok(()) => {}
            Err(e @ Error::Fenced { .. }) => {
                if let Err(cleanup) = storage.delete(&manifest_path(self.id)) {
                    tracing::warn!(id = self.id, error = %cleanup, "could not withdraw a checkpoint published while being fenced");
                }
                return Err(e);
            }
            // Published, and nothing says another manager took over.
            Err(e) => tracing::warn!(error = %e, "could not re-check fencing after publishing"),
        }

        let manifest = Arc::new(manifest);
        {
            let mut state = self.shared.state.lock();
            state.refs.add(manifest.paths());
            state.retained.insert(self.id, Arc::clone(&manifest));
        }
        for part in &self.parts {
            if let Some(capture) = part.capture.lock().take() {
                capture.committed();
            }
        }
        self.shared.apply_retention();
        let report = CheckpointReport {
            info: CheckpointInfo::from(&*manifest),
            bytes_written,
            files_written: written.len(),
            files_reused,
            max_pause: self.max_pause,
            duration: self.started.elapsed(),
        };
        // One per checkpoint (in a stream job, per worker and epoch): debug.
        tracing::debug!(
            id = self.id,
            bytes_written,
            files_written = written.len(),
            files_reused,
            pause_us = self.max_pause.as_micros() as u64,
            "checkpoint committed"
        );
        Ok(report)
    }

    /// Writes every new file, several at once; stops starting new ones at
    /// the first failure, the deadline, or close. `written` gets every path
    /// a write was attempted at.
    fn upload_all(&self, written: &mut Vec<String>) -> Result<(Vec<BackendEntry>, u64)> {
        let mut jobs = Vec::new();
        let mut slots: Vec<Vec<Option<FileEntry>>> = Vec::with_capacity(self.parts.len());
        for (p, part) in self.parts.iter().enumerate() {
            let mut part_slots = Vec::with_capacity(part.files.len());
            for (slot, planned) in part.files.iter().enumerate() {
                match planned {
                    Planned::Reuse(entry) => part_slots.push(Some(entry.clone())),
                    Planned::Upload { path, .. } => {
                        part_slots.push(None);
                        jobs.push(Job {
                            part: p,
                            slot,
                            path: path.clone(),
                        });
                    }
                }
            }
            slots.push(part_slots);
        }
        written.extend(jobs.iter().map(|j| j.path.clone()));

        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let results: Mutex<Vec<(usize, Uploaded)>> = Mutex::new(Vec::new());
        let workers = self.config.parallelism.clamp(1, jobs.len().max(1));
        let cancelled = || failed.load(Ordering::Relaxed) || self.stopped().is_some();
        let deadline = self.deadline();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    crate::storage::with_deadline(deadline, || {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(job) = jobs.get(i) else { return };
                            if let Some(e) = self.stopped() {
                                failed.store(true, Ordering::Relaxed);
                                results.lock().push((i, Err(e)));
                                return;
                            }
                            if failed.load(Ordering::Relaxed) {
                                return;
                            }
                            let result = self.upload_one(job, &cancelled);
                            if result.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                            results.lock().push((i, result));
                        }
                    });
                });
            }
        });
        let mut results = results.into_inner();
        results.sort_by_key(|(i, r)| (r.is_ok(), *i));
        let mut bytes_written = 0;
        for (i, result) in results {
            let (size, crc32c) = result?;
            let job = &jobs[i];
            bytes_written += size;
            let Planned::Upload { captured, .. } = &self.parts[job.part].files[job.slot] else {
                continue;
            };
            slots[job.part][job.slot] = Some(FileEntry {
                name: captured.name.clone(),
                path: job.path.clone(),
                size,
                crc32c,
            });
        }
        if let Some(e) = self.stopped() {
            return Err(e);
        }
        let mut entries = Vec::with_capacity(self.parts.len());
        for (part, part_slots) in self.parts.iter().zip(slots) {
            let mut files = part.chain.clone();
            for (slot, entry) in part_slots.into_iter().enumerate() {
                files.push(entry.ok_or_else(|| {
                    Error::invalid(
                        "upload",
                        format!("file {slot} of {} was not written", part.name),
                    )
                })?);
            }
            entries.push(BackendEntry {
                name: part.name.clone(),
                format: part.format.to_string(),
                files,
                chain_deltas: part.chain_deltas,
            });
        }
        Ok((entries, bytes_written))
    }

    fn upload_one(&self, job: &Job, cancelled: &dyn Fn() -> bool) -> Result<(u64, u32)> {
        let part = &self.parts[job.part];
        let Planned::Upload { captured, .. } = &part.files[job.slot] else {
            return Err(Error::invalid("upload", "not a file to write"));
        };
        let storage = &*self.shared.storage;
        match &captured.source {
            FileSource::Local(local) => upload(storage, &job.path, Some(cancelled), &mut |w| {
                let mut f = File::open(local)
                    .map_err(|e| Error::storage("reading", local.display().to_string(), e))?;
                io::copy(&mut f, w).map_err(|e| Error::storage("copying", job.path.clone(), e))?;
                Ok(())
            }),
            FileSource::Stream => upload(storage, &job.path, Some(cancelled), &mut |w| {
                let mut guard = part.capture.lock();
                let capture = guard
                    .as_mut()
                    .ok_or_else(|| Error::invalid("capture", "already released"))?;
                capture
                    .write_stream(&captured.name, w)
                    .map(drop)
                    .map_err(Error::from_state)
            }),
        }
    }

    /// Deletes what a failed checkpoint wrote (none of it is referenced).
    fn clean_up(&self, written: &[String]) {
        let doomed: Vec<String> = {
            let state = self.shared.state.lock();
            written
                .iter()
                .filter(|p| !state.refs.contains(p))
                .cloned()
                .collect()
        };
        self.shared.delete_files(&doomed);
    }
}

/// Publishes a manifest with a create-only write. After an error, reads it
/// back: a write whose answer was lost may have taken effect.
fn publish(storage: &dyn crate::storage::Storage, path: &str, bytes: &[u8]) -> Published {
    let error = match storage.put_new(path, bytes) {
        Ok(()) => return Published::Yes,
        Err(e) => e,
    };
    match storage.size(path) {
        Ok(None) => Published::No(error),
        Ok(Some(_)) => match storage.read_all(path, bytes.len() as u64) {
            Ok(found) if found == bytes => {
                tracing::info!(path, error = %error_chain(&error), "the publication succeeded although it reported an error");
                Published::Yes
            }
            _ => Published::Unknown(error),
        },
        Err(_) => Published::Unknown(error),
    }
}
