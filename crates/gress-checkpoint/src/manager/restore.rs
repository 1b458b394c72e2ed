//! Restores through the manager: all backends or none.
//!
//! Every registered backend reads and verifies its part beside its live
//! state; then an intent naming the target is written to the storage, the
//! backends are switched one after another, and the intent is deleted. If
//! a switch fails, or the process dies between two switches, the intent
//! remains: the manager then refuses to checkpoint (backends may be at
//! different checkpoints) until a restore completes.

use std::time::Instant;

use gress_state::checkpoint::Checkpointable;

use super::{CheckpointManager, Shared, error_chain};
use crate::catalog::{read_manifest, read_savepoint};
use crate::error::{Error, Result};
use crate::info::CheckpointInfo;
use crate::manifest::{MANIFESTS, Manifest, RESTORE_INTENT, check_name, id_of_manifest_path};
use crate::restore::{
    Prepared, RangePart, RestorePlan, RestoreSource, SavepointPart, prepare_ranges,
    read_checkpoint_parts, read_savepoint_parts,
};

/// Marks a restore running; undone on drop.
struct Restoring<'a>(&'a Shared);

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        self.0.state.lock().restoring = false;
    }
}

impl CheckpointManager {
    /// Restores checkpoint `id` into the registered backends. Every
    /// backend's part is read and verified before any backend changes; a
    /// registered backend the checkpoint does not hold starts empty. Fails
    /// with [`Error::Busy`] while a checkpoint is in flight.
    pub fn restore(&self, id: u64) -> Result<CheckpointInfo> {
        self.shared.restore(&format!("checkpoint {id}"), || {
            read_manifest(&*self.shared.storage, id).map_err(|e| {
                if e.is_not_found() {
                    Error::NoSuchCheckpoint { id }
                } else {
                    e
                }
            })
        })
    }

    /// Restores the newest checkpoint that is intact. A damaged one (a bad
    /// manifest, a missing or corrupt file) is reported with why and the
    /// next older one tried; any other error (the storage unreachable, a
    /// disk full while restoring) is returned as it is, so state and
    /// offsets never silently roll back past an intact checkpoint.
    pub fn restore_latest(&self) -> Result<CheckpointInfo> {
        let mut ids: Vec<u64> = self
            .shared
            .storage
            .list(MANIFESTS)?
            .iter()
            .filter_map(|o| id_of_manifest_path(&o.path))
            .collect();
        if ids.is_empty() {
            return Err(Error::NothingToRestore);
        }
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
                // Deleted by retention since the listing.
                Err(Error::NoSuchCheckpoint { .. }) => {}
                Err(e) if e.is_damage() => {
                    tracing::warn!(id, error = %error_chain(&e), "checkpoint cannot be restored");
                    tried.push((id, error_chain(&e)));
                }
                Err(e) => return Err(e),
            }
        }
        if tried.is_empty() {
            return Err(Error::NothingToRestore);
        }
        Err(Error::NoIntactCheckpoint { tried })
    }

    /// Restores the registered backends from key ranges of checkpoints in
    /// other locations (each part: a checkpoint of a [`Catalog`]'s location
    /// and the ranges to take from it), all or nothing: how a rescaled job
    /// gives each worker the key groups it now owns. A backend that no
    /// part holds starts empty. The next checkpoint is full.
    ///
    /// [`Catalog`]: crate::Catalog
    pub fn restore_ranges(&self, parts: &[RangePart<'_>]) -> Result<()> {
        self.shared
            .restore_with("a rescale", |named, allow, parallelism| {
                let parts = read_checkpoint_parts(parts)?;
                Ok((prepare_ranges(&parts, named, allow, parallelism)?, ()))
            })
    }

    /// Restores the registered backends from key ranges of savepoints in
    /// other locations, all or nothing, as [`restore_ranges`] does for
    /// checkpoints: how a stream job started from a savepoint gives each
    /// worker the key groups it owns, whatever the number of workers and
    /// the backends' type that wrote it. A backend that no part holds
    /// starts empty. The next checkpoint is full.
    ///
    /// [`restore_ranges`]: CheckpointManager::restore_ranges
    pub fn restore_savepoint_ranges(&self, parts: &[SavepointPart<'_>]) -> Result<()> {
        self.shared
            .restore_with("a savepoint", |named, allow, parallelism| {
                let parts = read_savepoint_parts(parts)?;
                Ok((prepare_ranges(&parts, named, allow, parallelism)?, ()))
            })
    }

    /// Restores savepoint `name` into the registered backends, whatever
    /// their type, all or nothing, reading each file once.
    pub fn restore_savepoint(&self, name: &str) -> Result<CheckpointInfo> {
        check_name(name)?;
        self.shared.restore(&format!("savepoint {name}"), || {
            read_savepoint(&*self.shared.storage, name)
        })
    }
}

impl Shared {
    fn restore(
        &self,
        target: &str,
        read: impl FnOnce() -> Result<Manifest>,
    ) -> Result<CheckpointInfo> {
        let source = if target.starts_with("savepoint") {
            RestoreSource::Savepoint
        } else {
            RestoreSource::Checkpoint
        };
        self.restore_with(target, |named, allow, parallelism| {
            let manifest = read()?;
            let plan = RestorePlan::new(&manifest, source, named, allow)?;
            let prepared = plan.prepare(&*self.storage, parallelism)?;
            Ok((prepared, CheckpointInfo::from(&manifest)))
        })
    }

    /// Runs a restore: `prepare` reads and verifies every backend's new
    /// state (nothing changes), then the intent is recorded and every
    /// backend switched.
    pub(super) fn restore_with<T>(
        &self,
        target: &str,
        prepare: impl for<'b> FnOnce(
            &[(&'b str, &'b dyn Checkpointable)],
            bool,
            usize,
        ) -> Result<(Prepared<'b>, T)>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = self.restore_inner(target, prepare);
        crate::telemetry::restored(
            &self.config.read().metrics_label,
            result.as_ref().ok().map(|_| started.elapsed()),
        );
        result
    }

    fn restore_inner<T>(
        &self,
        target: &str,
        prepare: impl for<'b> FnOnce(
            &[(&'b str, &'b dyn Checkpointable)],
            bool,
            usize,
        ) -> Result<(Prepared<'b>, T)>,
    ) -> Result<T> {
        let in_flight = |n: usize| {
            Error::busy(format!(
                "{n} checkpoint(s) in flight: commit or drop them before restoring"
            ))
        };
        let _restoring = {
            let mut state = self.state.lock();
            if self.is_closing() {
                return Err(Error::busy("the checkpoint manager is closed"));
            }
            if state.restoring {
                return Err(Error::busy("another restore is running"));
            }
            if state.in_flight > 0 {
                return Err(in_flight(state.in_flight));
            }
            state.restoring = true;
            Restoring(self)
        };
        // Waits only for a cut being taken, which may have got in first.
        let _cut = self.cut.lock();
        {
            let state = self.state.lock();
            if state.in_flight > 0 {
                return Err(in_flight(state.in_flight));
            }
        }
        let backends = self.backends();
        let named: Vec<(&str, &dyn Checkpointable)> = backends
            .iter()
            .map(|r| (r.name.as_str(), &*r.backend as &dyn Checkpointable))
            .collect();
        let (allow, parallelism) = {
            let config = self.config.read();
            (config.allow_non_restored_state, config.parallelism)
        };
        let (prepared, out) = prepare(&named, allow, parallelism)?;

        // Past this point a failure leaves backends at different
        // checkpoints: record the intent first.
        self.fence.check()?;
        self.write_intent(target)?;
        match prepared.commit_all() {
            Ok(()) => {}
            Err((switched, e)) => {
                self.state.lock().restore_incomplete = Some(target.to_string());
                tracing::error!(
                    target,
                    switched,
                    "restore incomplete: restore again before checkpointing"
                );
                return Err(e);
            }
        }
        self.state.lock().restore_incomplete = None;
        if let Err(e) = self.storage.delete(RESTORE_INTENT) {
            // Harmless but for the next open, which will ask for a restore.
            tracing::warn!(error = %e, "could not delete the restore intent");
        }
        Ok(out)
    }

    fn write_intent(&self, target: &str) -> Result<()> {
        let line = format!("{target}\n");
        self.storage.put(RESTORE_INTENT, &mut |w| {
            w.write_all(line.as_bytes())
                .map_err(|e| Error::storage("writing", RESTORE_INTENT, e))
        })
    }
}
