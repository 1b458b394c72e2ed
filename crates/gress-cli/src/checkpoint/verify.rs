//! `gress checkpoint verify`: every file read in full, its size and
//! checksum checked.

use anyhow::{Context, Result, bail};
use gress_checkpoint::Catalog;
use gress_checkpoint::manifest::manifest_path;
use serde_json::json;

use super::{committed_of, missing, or_not_found};
use crate::exit;
use crate::location::{Fail, Kind, Location};
use crate::out::{Out, size};

/// One checkpoint's verification.
struct Checked {
    worker: Option<usize>,
    id: u64,
    files: usize,
    bytes: u64,
    problems: Vec<(String, String, String)>,
    /// Retired (its manifest deleted by the running job) while being read:
    /// missing files are then no damage.
    retired: bool,
}

pub(super) fn verify(
    loc: &Location,
    id: Option<u64>,
    all: bool,
    worker: Option<usize>,
    out: &Out,
) -> Result<u8> {
    or_not_found(out, || {
        // (worker, catalog, ids to check)
        let mut plan: Vec<(Option<usize>, Catalog, Vec<u64>)> = Vec::new();
        match loc.kind()? {
            Kind::Manager(storage) => {
                if worker.is_some() {
                    bail!(
                        "{} is one backend's checkpoints: no --worker here",
                        loc.shown()
                    );
                }
                let catalog = Catalog::open(storage).context("reading the manifests")?;
                let ids = pick(&catalog, id, all, loc)?;
                plan.push((None, catalog, ids));
            }
            Kind::Job(indexes) => {
                let root = loc.open("")?;
                let newest = gress_stream::latest_commit(&*root)?;
                let workers = match worker {
                    Some(w) => vec![w],
                    None => indexes,
                };
                for w in workers {
                    let storage = loc.worker(w)?;
                    if id.is_none() && !all {
                        if newest
                            .as_ref()
                            .is_none_or(|c| c.checkpoints.get(w).is_none())
                        {
                            // A worker beyond the newest commit's count
                            // (left by a job that ran with more workers).
                            continue;
                        }
                        let (catalog, id) = committed_of(loc, w, storage)?;
                        plan.push((Some(w), catalog, vec![id]));
                        continue;
                    }
                    let catalog = Catalog::open(storage)
                        .with_context(|| format!("reading worker {w}'s manifests"))?;
                    let ids = pick(&catalog, id, all, loc)?;
                    plan.push((Some(w), catalog, ids));
                }
            }
        }
        let total_files: u64 = plan
            .iter()
            .flat_map(|(_, c, ids)| ids.iter().filter_map(|id| c.manifest(*id)))
            .map(|m| m.paths().count() as u64)
            .sum();
        let bar = out.bar(total_files, "verifying");
        let mut checked = Vec::new();
        for (w, catalog, ids) in &plan {
            for &id in ids {
                let Some(m) = catalog.manifest(id) else {
                    continue;
                };
                let mut c = Checked {
                    worker: *w,
                    id,
                    files: 0,
                    bytes: 0,
                    problems: Vec::new(),
                    retired: false,
                };
                for b in &m.backends {
                    for f in &b.files {
                        bar.set_message(f.name.clone());
                        if let Some(problem) = catalog.verify_file(f)? {
                            c.problems.push((b.name.clone(), f.path.clone(), problem));
                        }
                        c.files += 1;
                        c.bytes += f.size;
                        bar.inc(1);
                    }
                }
                if !c.problems.is_empty() && catalog.storage().size(&manifest_path(id))?.is_none() {
                    c.retired = true;
                }
                checked.push(c);
            }
        }
        bar.finish_and_clear();
        // Manifests that cannot be read are damage too: a checkpoint lost.
        let torn: Vec<(Option<usize>, gress_checkpoint::DamagedManifest)> = plan
            .iter()
            .flat_map(|(w, c, _)| c.damaged().iter().map(|d| (*w, d.clone())))
            .collect();
        let damaged =
            !torn.is_empty() || checked.iter().any(|c| !c.problems.is_empty() && !c.retired);
        let doc = json!({
            "location": loc.shown(),
            "ok": !damaged,
            "damaged_manifests": torn.iter().map(|(w, d)| json!({
                "worker": w, "id": d.id, "path": d.path, "reason": d.reason,
            })).collect::<Vec<_>>(),
            "checkpoints": checked.iter().map(|c| json!({
                "worker": c.worker,
                "id": c.id,
                "files": c.files,
                "bytes": c.bytes,
                "retired_while_verifying": c.retired,
                "ok": c.problems.is_empty() || c.retired,
                "problems": c.problems.iter().map(|(b, p, why)| json!({
                    "backend": b, "path": p, "problem": why,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        out.emit(&doc, || {
            for c in &checked {
                let who = c.worker.map_or(String::new(), |w| format!("worker {w} "));
                if c.retired {
                    say!(
                        "{who}checkpoint {}: retired by its job while being verified (not damage)",
                        c.id
                    );
                } else if c.problems.is_empty() {
                    say!(
                        "{who}checkpoint {}: ok ({} files, {})",
                        c.id,
                        c.files,
                        size(c.bytes)
                    );
                } else {
                    say!(
                        "{who}checkpoint {}: DAMAGED ({} of {} files)",
                        c.id,
                        c.problems.len(),
                        c.files
                    );
                    for (b, p, why) in &c.problems {
                        say!("  backend `{b}`: {p}: {why}");
                    }
                }
            }
            for (w, d) in &torn {
                let who = w.map_or(String::new(), |w| format!("worker {w} "));
                say!(
                    "{who}checkpoint {}: DAMAGED manifest {}: {}",
                    d.id,
                    d.path,
                    d.reason
                );
            }
            if checked.is_empty() && torn.is_empty() {
                say!("{}: nothing to verify", loc.shown());
            }
        });
        Ok(if damaged { exit::DAMAGED } else { exit::OK })
    })
}

/// The ids to verify in one catalog.
fn pick(catalog: &Catalog, id: Option<u64>, all: bool, loc: &Location) -> Result<Vec<u64>> {
    if all {
        return Ok(catalog.checkpoints().iter().map(|i| i.id).collect());
    }
    let id = match id.or_else(|| catalog.latest().map(|i| i.id)) {
        Some(id) => id,
        None => bail!(Fail::not_found(format!(
            "{}: no committed checkpoint",
            loc.shown()
        ))),
    };
    if catalog.manifest(id).is_none() {
        return Err(missing(catalog, id, loc));
    }
    Ok(vec![id])
}
