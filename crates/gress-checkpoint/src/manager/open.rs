//! Opening a location for writing: read it, take it, sweep what crashes
//! left behind.
//!
//! Nothing is deleted before the location is taken (fencing), and nothing
//! is deleted that a manifest could need: an unknown manifest version or a
//! storage error while reading stops `open` before any deletion; a damaged
//! manifest is kept and protects every file it could name.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use parking_lot::{Mutex, RwLock};

use super::{CheckpointConfig, CheckpointManager, Retention, Shared, State};
use crate::catalog::{Catalog, read_savepoint};
use crate::error::{Error, Result};
use crate::fence::{Fence, new_token};
use crate::info::{CheckpointStats, OpenReport};
use crate::manifest::{
    PRIVATE, RESTORE_INTENT, SAVEPOINT_MANIFEST, SAVEPOINTS, SHARED, is_temporary, manifest_path,
    owner_of,
};
use crate::storage::{Storage, check_path};

impl CheckpointManager {
    /// Opens the checkpoints in `storage` for writing: reads every
    /// manifest, takes the location (refusing one that a live manager
    /// holds, unless [`CheckpointConfig::take_over`]), keeps the newest
    /// `retain` readable checkpoints and deletes what no kept checkpoint
    /// needs: older checkpoints, files of checkpoints that never committed,
    /// temporary files, leftovers of failed savepoints.
    ///
    /// A manifest of a newer format version, or a storage error, stops
    /// `open` before anything is deleted. A damaged manifest is set aside
    /// (kept, reported in [`CheckpointManager::open_report`]) and every
    /// file it could reference is kept.
    pub fn open(storage: Arc<dyn Storage>, config: CheckpointConfig) -> Result<Self> {
        config.validate()?;
        let catalog = Catalog::open(Arc::clone(&storage))?;
        let owner = new_token();
        let fence = Fence::acquire(Arc::clone(&storage), config.lease, config.take_over, owner)?;

        let mut report = OpenReport {
            damaged: catalog.damaged().to_vec(),
            odd_names: catalog.odd_names().to_vec(),
            ..OpenReport::default()
        };
        let mut state = State {
            max_damaged: catalog.damaged().iter().map(|d| d.id).max(),
            ..State::default()
        };

        // Ids: above every manifest and every data file's owner.
        let data: Vec<String> = [SHARED, PRIVATE]
            .into_iter()
            .map(|area| storage.list(area))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .map(|o| o.path)
            .collect();
        let max_id = data
            .iter()
            .filter_map(|p| owner_of(p))
            .chain(catalog.max_id())
            .max()
            .unwrap_or(0);
        state.next_id = max_id
            .checked_add(1)
            .ok_or(Error::IdsExhausted { found: max_id })?;
        state.first_own_id = state.next_id;

        report.restore_incomplete = read_intent(&*storage)?;
        state.restore_incomplete = report.restore_incomplete.clone();
        if let Some(target) = &report.restore_incomplete {
            tracing::warn!(
                target,
                "a restore did not complete: restore before checkpointing"
            );
        }

        // Checkpoints beyond retention, and what no kept checkpoint needs.
        // A manifest that cannot be deleted stays a checkpoint, with all
        // its files.
        // Under `Required`, no checkpoint goes before the owner says which
        // are needed; files no manifest names do.
        let retain = match config.retention {
            Retention::Newest => config.retain,
            Retention::Required => usize::MAX,
        };
        let plan = plan_sweep(&catalog, &data, retain)?;
        report.odd_names.extend(plan.odd_names);
        if !plan.checkpoints.is_empty() {
            fence.check()?;
        }
        let mut kept: BTreeMap<u64, _> = catalog.manifests().clone();
        let mut doomed = plan.files;
        for id in plan.checkpoints {
            match storage.delete(&manifest_path(id)) {
                Ok(()) => {
                    report.removed += 1;
                    kept.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "could not delete an old checkpoint; keeping it");
                    report.not_removed += 1;
                    if let Some(m) = kept.get(&id) {
                        let needed: HashSet<&str> = m.paths().map(|f| f.path.as_str()).collect();
                        doomed.retain(|p| !needed.contains(p.as_str()));
                    }
                }
            }
        }
        for m in kept.values() {
            state.refs.add(m.paths());
        }
        state.retained = kept;

        let shared = Arc::new(Shared {
            storage,
            config: RwLock::new(config),
            backends: RwLock::new(Vec::new()),
            owner,
            fence,
            cut: Mutex::new(()),
            state: Mutex::new(state),
            stats: Mutex::new(CheckpointStats::default()),
            closing: AtomicBool::new(false),
            report: Mutex::new(OpenReport::default()),
        });
        let (removed, failed) = shared.delete_files(&doomed);
        report.removed += removed;
        report.not_removed += failed;
        if report.removed > 0 {
            tracing::info!(
                removed = report.removed,
                "deleted what no kept checkpoint needs"
            );
        }
        shared.fence.start_heartbeat();
        *shared.report.lock() = report;
        Ok(CheckpointManager {
            shared,
            periodic: Mutex::new(None),
        })
    }
}

/// What sweeping a location would delete: see [`Catalog::sweep_plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepPlan {
    /// Checkpoints beyond retention, oldest first (their manifests go
    /// first, then the files only they need).
    pub checkpoints: Vec<u64>,
    /// Kept checkpoints, oldest first.
    pub kept: Vec<u64>,
    /// Objects to delete: files no kept checkpoint needs, temporary files,
    /// leftovers of failed savepoints.
    pub files: Vec<String>,
    /// Objects whose names are not of this layout, left alone.
    pub odd_names: Vec<String>,
}

/// The sweep that keeps the newest `retain` readable checkpoints of
/// `catalog`, given every object under the data areas.
pub(crate) fn plan_sweep(catalog: &Catalog, data: &[String], retain: usize) -> Result<SweepPlan> {
    let mut plan = SweepPlan::default();
    let manifests = catalog.manifests();
    let dropped = manifests.len().saturating_sub(retain);
    plan.checkpoints = manifests.keys().take(dropped).copied().collect();
    plan.kept = manifests.keys().skip(dropped).copied().collect();
    let mut state = State {
        max_damaged: catalog.damaged().iter().map(|d| d.id).max(),
        ..State::default()
    };
    for id in &plan.kept {
        if let Some(m) = manifests.get(id) {
            state.refs.add(m.paths());
        }
    }
    plan.files = catalog.temporary().to_vec();
    for path in data {
        if is_temporary(path) {
            plan.files.push(path.clone());
        } else if owner_of(path).is_none() || check_path(path).is_err() {
            tracing::warn!(
                path,
                "leaving alone an object whose name is not of this layout"
            );
            plan.odd_names.push(path.clone());
        } else if state.may_delete(path) {
            plan.files.push(path.clone());
        }
    }
    let mut report = OpenReport::default();
    plan.files.extend(savepoint_leftovers(
        catalog.storage().as_ref(),
        &mut report,
    )?);
    plan.odd_names.extend(report.odd_names);
    Ok(plan)
}

impl Catalog {
    /// What [`CheckpointManager::open`] with `retain` kept checkpoints
    /// would delete, computed without deleting or writing anything (a dry
    /// run of a sweep).
    pub fn sweep_plan(&self, retain: usize) -> Result<SweepPlan> {
        let data: Vec<String> = [SHARED, PRIVATE]
            .into_iter()
            .map(|area| self.storage().list(area))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .map(|o| o.path)
            .collect();
        plan_sweep(self, &data, retain)
    }
}

/// Files under `savepoints/` that no savepoint needs: everything of a
/// savepoint whose manifest was never published, files its manifest does
/// not name, temporary files. A savepoint whose manifest is damaged keeps
/// everything.
fn savepoint_leftovers(storage: &dyn Storage, report: &mut OpenReport) -> Result<Vec<String>> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut doomed = Vec::new();
    for object in storage.list(SAVEPOINTS)? {
        let Some((name, _)) = object.path[SAVEPOINTS.len()..].split_once('/') else {
            report.odd_names.push(object.path);
            continue;
        };
        if is_temporary(&object.path) {
            doomed.push(object.path);
        } else if check_path(&object.path).is_err() {
            report.odd_names.push(object.path);
        } else {
            by_name
                .entry(name.to_string())
                .or_default()
                .push(object.path);
        }
    }
    for (name, paths) in by_name {
        let manifest_at = format!("{SAVEPOINTS}{name}/{SAVEPOINT_MANIFEST}");
        if !paths.contains(&manifest_at) {
            doomed.extend(paths);
            continue;
        }
        match read_savepoint(storage, &name) {
            Ok(m) => {
                let named: HashSet<&str> = m.paths().map(|f| f.path.as_str()).collect();
                doomed.extend(
                    paths
                        .into_iter()
                        .filter(|p| *p != manifest_at && !named.contains(p.as_str())),
                );
            }
            Err(e) if e.is_damage() => {
                tracing::warn!(savepoint = name, reason = %e, "keeping a savepoint whose manifest is damaged");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(doomed)
}

/// The restore recorded as not completed, if any.
pub(super) fn read_intent(storage: &dyn Storage) -> Result<Option<String>> {
    match storage.read_all(RESTORE_INTENT, 4096) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}
