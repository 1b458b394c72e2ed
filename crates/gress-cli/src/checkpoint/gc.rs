//! `gress checkpoint gc`: deletes what no kept checkpoint needs (or lists
//! it, with `--dry-run`).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use gress_checkpoint::{Catalog, CheckpointConfig, CheckpointManager, Storage};
use serde_json::json;

use crate::exit;
use crate::location::{Fail, Kind, Location};
use crate::out::Out;

/// Whether every file of checkpoint `id` is there with its size (and,
/// with `full`, its checksum).
fn intact(catalog: &Catalog, id: u64, full: bool) -> Result<bool> {
    let Some(m) = catalog.manifest(id) else {
        return Ok(false);
    };
    for f in m.paths() {
        let ok = if full {
            catalog.verify_file(f)?.is_none()
        } else {
            catalog.storage().size(&f.path)? == Some(f.size)
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn gc(
    loc: &Location,
    retain: usize,
    dry_run: bool,
    verify: bool,
    out: &Out,
) -> Result<u8> {
    // (worker, storage, retain there)
    let mut places: Vec<(Option<usize>, Arc<dyn Storage>, usize)> = Vec::new();
    match loc.kind()? {
        Kind::Manager(storage) => places.push((None, storage, retain)),
        Kind::Job(indexes) => {
            let root = loc.open("")?;
            let commits = gress_stream::commits(&*root)?;
            for w in indexes {
                let storage = loc.worker(w)?;
                let catalog = Catalog::open(Arc::clone(&storage))?;
                // Never drop what a commit that counts names (recovery may
                // fall back to any of them), nor anything newer (an epoch
                // being committed right now).
                let oldest = commits.iter().filter_map(|c| c.checkpoints.get(w)).min();
                let needed = match oldest {
                    Some(&oldest) => catalog
                        .checkpoints()
                        .iter()
                        .filter(|i| i.id >= oldest)
                        .count(),
                    None => catalog.checkpoints().len(),
                };
                places.push((Some(w), storage, retain.max(needed)));
            }
        }
    }
    // Plan everything first: nothing is deleted if any place would keep
    // no intact checkpoint (the older, intact ones would go). A dry run
    // makes the same checks, and is refused where the real run would be.
    let mut planned = Vec::new();
    for (w, storage, keep) in places {
        if dry_run && let Some(holder) = gress_checkpoint::live_holder(&*storage)? {
            bail!(
                "{}{} is in use by a running job or manager ({holder}); gc would be refused",
                loc.shown(),
                w.map_or(String::new(), |w| format!(" worker {w}"))
            );
        }
        let catalog = Catalog::open(Arc::clone(&storage))?;
        let plan = catalog.sweep_plan(keep)?;
        if !plan.checkpoints.is_empty() {
            let mut any = false;
            for &id in &plan.kept {
                if intact(&catalog, id, verify)? {
                    any = true;
                    break;
                }
            }
            if !any {
                bail!(Fail::damaged(format!(
                    "{}{}: none of the checkpoints gc would keep ({:?}) is intact; deleting the \
                     older ones could lose the last good checkpoint. Run `gress checkpoint verify \
                     --all`, or keep more with --retain",
                    loc.shown(),
                    w.map_or(String::new(), |w| format!(" worker {w}")),
                    plan.kept
                )));
            }
        }
        planned.push((w, storage, keep, plan));
    }
    let mut reports = Vec::new();
    for (w, storage, keep, plan) in planned {
        let (removed, not_removed) = if dry_run {
            (0, 0)
        } else {
            let manager = CheckpointManager::open(
                Arc::clone(&storage),
                CheckpointConfig::default().with_retain(keep),
            )
            .with_context(|| {
                format!(
                    "opening {}{} to sweep it",
                    loc.shown(),
                    w.map_or(String::new(), |w| format!(" worker {w}"))
                )
            })?;
            let r = manager.open_report();
            drop(manager);
            (r.removed, r.not_removed)
        };
        reports.push((w, keep, plan, removed, not_removed));
    }
    let doc = json!({
        "location": loc.shown(),
        "dry_run": dry_run,
        "places": reports.iter().map(|(w, keep, plan, removed, not_removed)| json!({
            "worker": w,
            "retain": keep,
            "kept": plan.kept,
            "checkpoints_to_delete": plan.checkpoints,
            "files_to_delete": plan.files,
            "odd_names": plan.odd_names,
            "removed": removed,
            "not_removed": not_removed,
        })).collect::<Vec<_>>(),
    });
    out.emit(&doc, || {
        for (w, keep, plan, removed, not_removed) in &reports {
            let who = w.map_or(String::new(), |w| format!("worker {w}: "));
            say!(
                "{who}keeping {} checkpoints {:?} (retain {keep}); {} {} checkpoints {:?} and {} files",
                plan.kept.len(),
                plan.kept,
                if dry_run { "would delete" } else { "deleting" },
                plan.checkpoints.len(),
                plan.checkpoints,
                plan.files.len()
            );
            if dry_run {
                for f in &plan.files {
                    say!("  {f}");
                }
            } else {
                say!("  {removed} objects deleted, {not_removed} could not be");
            }
        }
    });
    Ok(exit::OK)
}
