//! `gress job savepoint | list | start-from`: savepoints of stream jobs
//! (layout in `gress_stream::savepoint` and docs/format.md).
//!
//! `savepoint` writes one from a committed epoch's checkpoints, offline:
//! each worker's two parts (its backend's checkpoint, and its state
//! cache's hot image) are restored into scratch backends, the image is
//! written over the backend's state, and that is written as a portable
//! snapshot, so a job started from it restores exactly what a recovery
//! from that epoch would, on any backend and worker count.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gress_checkpoint::Catalog;
use gress_state::WriteBatch;
use gress_state::checkpoint::Checkpointable;
use gress_stream::CheckpointStorage;
use gress_stream::savepoint::{self, SavepointInfo};
use serde_json::json;

use crate::exit;
use crate::job_state::{pick_commit, restore_parts};
use crate::location::{Fail, Kind, Location};
use crate::out::{self, Out};

/// A savepoint location named on the command line; a local one is created
/// when `create` (a new savepoint), else it must exist.
fn savepoint_location(text: &str, create: bool) -> Result<CheckpointStorage> {
    let location = CheckpointStorage::from_url(text)?;
    if let CheckpointStorage::Local(path) = &location {
        if create {
            std::fs::create_dir_all(path).with_context(|| format!("creating {text}"))?;
        } else if !path.is_dir() {
            bail!(Fail::not_found(format!("{text}: no such directory")));
        }
    }
    Ok(location)
}

fn info_json(info: &SavepointInfo) -> serde_json::Value {
    json!({
        "job": info.job,
        "epoch": info.epoch,
        "workers": info.workers,
        "key_groups": info.key_groups,
        "created_at_ms": info.created_at_ms,
        "names": info.names,
    })
}

/// `gress job savepoint LOCATION DEST [--epoch E]`.
pub(crate) fn take(location: &str, dest: &str, epoch: Option<u64>, out: &Out) -> Result<u8> {
    let loc = Location::parse(location)?;
    let Kind::Job(_) = loc.kind()? else {
        bail!(
            "{}: not a stream job's checkpoints (no commits/)",
            loc.shown()
        );
    };
    let commit = pick_commit(&loc, epoch)?;
    let target = savepoint_location(dest, true)?;
    savepoint::check_unused(&target)?;
    // The location was empty: on failure, everything there is ours.
    let written = write_parts(&loc, &commit, &target, out);
    if written.is_err() {
        savepoint::discard(&target);
    }
    let info = written?;
    let doc = info_json(&info);
    out.emit(&doc, || {
        say!(
            "savepoint of job `{}` at committed epoch {} written to {dest}: {} workers, {} key groups",
            info.job,
            info.epoch,
            info.workers,
            info.key_groups
        );
        say!("start a job from it: JobConfig::from_savepoint, or gress job start-from {dest} -- PROGRAM ARGS");
    });
    Ok(exit::OK)
}

/// Writes every worker's part of `commit` and completes the savepoint.
fn write_parts(
    loc: &Location,
    commit: &gress_stream::CommitRecord,
    target: &CheckpointStorage,
    out: &Out,
) -> Result<SavepointInfo> {
    let bar = out.bar(commit.workers as u64, "workers");
    let mut parts = Vec::with_capacity(commit.workers);
    for (w, &id) in commit.checkpoints.iter().enumerate() {
        let catalog = Catalog::open(Arc::clone(&loc.worker(w)?))?;
        let manifest = catalog.manifest(id).ok_or_else(|| {
            Fail::damaged(format!(
                "{}: worker {w}'s checkpoint {id} of epoch {} is missing or damaged",
                loc.shown(),
                commit.epoch
            ))
        })?;
        let metadata = manifest.metadata.clone();
        if metadata.get("epoch").map(String::as_str) != Some(commit.epoch.to_string().as_str()) {
            bail!(Fail::damaged(format!(
                "{}: worker {w}'s checkpoint {id} is not of epoch {}",
                loc.shown(),
                commit.epoch
            )));
        }
        let scratch = tempfile::tempdir()?;
        let held = restore_parts(&catalog, id, manifest, scratch.path()).map_err(|e| {
            if e.chain().any(|c| {
                c.downcast_ref::<gress_checkpoint::Error>()
                    .is_some_and(|e| e.is_damage() || e.is_not_found())
            }) {
                anyhow::Error::new(Fail::damaged(format!("{e:#}")))
            } else {
                e
            }
        })?;
        let state = merge_cache(&held)
            .with_context(|| format!("merging worker {w}'s cache image into its state"))?;
        savepoint::write_part(target, w, &[("state", state)], metadata.clone())
            .with_context(|| format!("writing worker {w}'s part"))?;
        for (_, backend) in held {
            backend.close()?;
        }
        parts.push(metadata);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let info = SavepointInfo::new(
        &commit.job,
        commit.epoch,
        commit.workers,
        commit.key_groups,
        &parts,
    );
    savepoint::finish(target, &info)?;
    Ok(info)
}

/// Writes the cache's image (entries the backend does not hold as they
/// are) over the backend's state, as a restore of the checkpoint would:
/// the savepoint then holds the worker's whole state in one part, as one
/// written by a stopped job does. Returns the merged backend.
fn merge_cache<'h>(
    held: &'h [(&'static str, Box<dyn Checkpointable>)],
) -> Result<&'h dyn Checkpointable> {
    let part = |name: &str| held.iter().find(|(n, _)| *n == name).map(|(_, b)| &**b);
    let state = part("state").context("the checkpoint has no `state` part")?;
    let Some(cache) = part("cache") else {
        return Ok(state);
    };
    let now = out::now_ms();
    let mut batch = WriteBatch::new();
    let mut bytes = 0;
    for kv in cache.scan_prefix(b"")? {
        let (key, _) = kv?;
        let Some((value, expires_at)) = cache.get_with_expiry(&key)? else {
            continue;
        };
        bytes += key.len() + value.len();
        match expires_at {
            Some(t) if t <= now => continue,
            Some(t) => batch.put_with_ttl(&key, &value, Duration::from_millis(t - now)),
            None => batch.put(&key, &value),
        };
        if bytes >= 8 << 20 {
            state.write_batch(&batch)?;
            batch = WriteBatch::new();
            bytes = 0;
        }
    }
    state.write_batch(&batch)?;
    state.flush()?;
    Ok(state)
}

/// `gress job list DIR`: the savepoints at DIR and directly under it.
pub(crate) fn list(dir: &str, out: &Out) -> Result<u8> {
    let found = savepoint::list_local(Path::new(dir))?;
    if found.is_empty() {
        bail!(Fail::not_found(format!("{dir}: no savepoints")));
    }
    let rows: Vec<serde_json::Value> = found
        .iter()
        .map(|(path, info)| match info {
            Ok(info) => {
                let mut v = info_json(info);
                v["path"] = json!(path.display().to_string());
                v
            }
            Err(e) => json!({"path": path.display().to_string(), "error": e.to_string()}),
        })
        .collect();
    out.emit(&json!({ "savepoints": rows }), || {
        for (path, info) in &found {
            match info {
                Ok(info) => say!(
                    "{}  job `{}`  epoch {}  {} workers  {} key groups  {}  {} operators and states",
                    path.display(),
                    info.job,
                    info.epoch,
                    info.workers,
                    info.key_groups,
                    out::time(info.created_at_ms),
                    info.names.len()
                ),
                Err(e) => say!("{}  not usable: {e}", path.display()),
            }
        }
    });
    Ok(exit::OK)
}

/// `gress job start-from SAVEPOINT -- PROGRAM ARGS...`: verifies every
/// file of the savepoint, then runs the program with
/// `--from-savepoint SAVEPOINT` added, and exits with its exit code.
pub(crate) fn start_from(location: &str, program: &[String], out: &Out) -> Result<u8> {
    let Some((program, args)) = program.split_first() else {
        bail!("no program to start: gress job start-from SAVEPOINT -- PROGRAM [ARGS...]");
    };
    let target = savepoint_location(location, false)?;
    let (info, files) = savepoint::verify(&target)?;
    let damaged: Vec<String> = files
        .iter()
        .filter_map(|f| f.problem.as_ref().map(|p| format!("{}: {p}", f.path)))
        .collect();
    if !damaged.is_empty() {
        bail!(Fail::damaged(format!(
            "{location}: the savepoint is damaged ({})",
            damaged.join("; ")
        )));
    }
    if !out.json {
        eprintln!(
            "starting {program} from the savepoint of job `{}` at epoch {} ({} workers, {} files verified)",
            info.job,
            info.epoch,
            info.workers,
            files.len()
        );
    }
    let status = Command::new(program)
        .args(args)
        .arg("--from-savepoint")
        .arg(location)
        .status()
        .with_context(|| format!("starting {program}"))?;
    Ok(match status.code() {
        Some(code) => u8::try_from(code).unwrap_or(exit::FAILED),
        None => exit::FAILED,
    })
}
