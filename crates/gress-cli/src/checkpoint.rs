//! `gress checkpoint list|inspect|verify|restore|gc`.
//!
//! `list`, `inspect` and `verify` only read: they open a [`Catalog`], which
//! never writes, deletes or takes the location, so they are safe beside a
//! job that is checkpointing into it. `gc` opens the location as a
//! checkpoint manager does, which refuses a location a live job holds.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gress_checkpoint::manifest::manifest_path;
use gress_checkpoint::{
    Catalog, CheckpointConfig, CheckpointInfo, CheckpointManager, Manifest, Storage,
};
use gress_rocksdb::{ROCKSDB_CHECKPOINT_FORMAT, RocksDbConfig, RocksDbStateBackend};
use gress_state::checkpoint::Checkpointable;
use gress_state::{MemoryConfig, MemoryStateBackend, SNAPSHOT_FORMAT, StateBackend};
use serde_json::{Value, json};

use crate::exit;
use crate::location::{Fail, Kind, Location, worker_sub};
use crate::out::{Out, size, time};

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Committed checkpoints: id, time, size, backends, metadata (source
    /// offsets); for a job, its commits and each worker's checkpoints.
    #[command(
        after_help = "Examples:\n  gress checkpoint list ./checkpoints\n  gress checkpoint list s3://bucket/jobs/orders --json"
    )]
    List {
        /// A local directory or s3://bucket/prefix.
        location: String,
    },
    /// One checkpoint's manifest: backends, files, sizes, checksums, metadata.
    #[command(
        after_help = "Examples:\n  gress checkpoint inspect ./checkpoints 12\n  gress checkpoint inspect ./job-checkpoints --worker 1"
    )]
    Inspect {
        location: String,
        /// The checkpoint id (default: the newest; for a job, the one of
        /// the newest commit).
        id: Option<u64>,
        /// For a job location: the worker whose checkpoint to show.
        #[arg(long)]
        worker: Option<usize>,
    },
    /// Read every file of a checkpoint and check its size and checksum.
    /// Exit code 3 and a report naming each damaged file if any is.
    #[command(
        after_help = "Examples:\n  gress checkpoint verify ./checkpoints\n  gress checkpoint verify s3://bucket/jobs/orders --all"
    )]
    Verify {
        location: String,
        /// The checkpoint id (default: the newest; for a job, every
        /// worker's checkpoint of the newest commit).
        id: Option<u64>,
        /// Every checkpoint, not only the newest.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// For a job location: only this worker.
        #[arg(long)]
        worker: Option<usize>,
    },
    /// Restore a checkpoint into a new RocksDB directory or a snapshot file.
    #[command(
        after_help = "Examples:\n  gress checkpoint restore ./checkpoints --to-rocksdb ./state\n  gress checkpoint restore ./job-checkpoints --worker 0 --to-snapshot w0.snap"
    )]
    Restore {
        location: String,
        /// The checkpoint id (default: the newest; for a job, the worker's
        /// checkpoint of the newest commit).
        id: Option<u64>,
        /// For a job location: the worker to restore.
        #[arg(long)]
        worker: Option<usize>,
        /// Which backend of the checkpoint (needed if it holds several).
        #[arg(long)]
        backend: Option<String>,
        /// A RocksDB state directory to create.
        #[arg(
            long,
            conflicts_with = "to_snapshot",
            required_unless_present = "to_snapshot"
        )]
        to_rocksdb: Option<PathBuf>,
        /// A snapshot file to write (replaced atomically).
        #[arg(long)]
        to_snapshot: Option<PathBuf>,
    },
    /// Delete old checkpoints beyond `--retain` and every file no kept
    /// checkpoint needs. Refused while a job holds the location.
    #[command(
        after_help = "Examples:\n  gress checkpoint gc ./checkpoints --retain 3 --dry-run\n  gress checkpoint gc s3://bucket/jobs/orders --retain 2"
    )]
    Gc {
        location: String,
        /// Checkpoints to keep (per worker for a job; never fewer than the
        /// job's retained commits need).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        retain: u64,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Check the kept checkpoints' checksums, not only their files'
        /// sizes, before deleting older ones.
        #[arg(long)]
        verify: bool,
    },
}

pub(crate) fn run(cmd: &Cmd, out: &Out) -> Result<u8> {
    match cmd {
        Cmd::List { location } => or_not_found(out, || list(&Location::parse(location)?, out)),
        Cmd::Inspect {
            location,
            id,
            worker,
        } => inspect(&Location::parse(location)?, *id, *worker, out),
        Cmd::Verify {
            location,
            id,
            all,
            worker,
        } => verify(&Location::parse(location)?, *id, *all, *worker, out),
        Cmd::Restore {
            location,
            id,
            worker,
            backend,
            to_rocksdb,
            to_snapshot,
        } => {
            let target = match (to_rocksdb, to_snapshot) {
                (Some(dir), None) => Target::Rocksdb(dir.clone()),
                (None, Some(file)) => Target::Snapshot(file.clone()),
                _ => bail!("give one of --to-rocksdb DIR or --to-snapshot FILE"),
            };
            restore(
                &Location::parse(location)?,
                *id,
                *worker,
                backend.as_deref(),
                &target,
                out,
            )
        }
        Cmd::Gc {
            location,
            retain,
            dry_run,
            verify,
        } => or_not_found(out, || {
            gc(
                &Location::parse(location)?,
                usize::try_from(*retain).unwrap_or(usize::MAX),
                *dry_run,
                *verify,
                out,
            )
        }),
    }
}

fn info_json(i: &CheckpointInfo) -> Value {
    json!({
        "id": i.id,
        "created_at_ms": i.created_at_ms,
        "created_at": time(i.created_at_ms),
        "total_bytes": i.total_bytes,
        "backends": i.backends.iter().map(|(name, format, files, deltas)| json!({
            "name": name, "format": format, "files": files, "chain_deltas": deltas,
        })).collect::<Vec<_>>(),
        "metadata": i.metadata,
    })
}

fn catalog_json(c: &Catalog) -> Value {
    json!({
        "checkpoints": c.checkpoints().iter().map(info_json).collect::<Vec<_>>(),
        "damaged": c.damaged().iter().map(|d| json!({
            "id": d.id, "path": d.path, "reason": d.reason,
        })).collect::<Vec<_>>(),
    })
}

fn print_checkpoints(c: &Catalog, indent: &str) {
    say!(
        "{indent}{:>8}  {:<24}  {:>10}  {:<34}  metadata",
        "id",
        "created",
        "size",
        "backends (format, files, deltas)"
    );
    for i in c.checkpoints() {
        let backends: Vec<String> = i
            .backends
            .iter()
            .map(|(n, f, files, d)| format!("{n} ({f}, {files}, {d})"))
            .collect();
        let meta: Vec<String> = i
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={}", meta_value(k, v)))
            .collect();
        say!(
            "{indent}{:>8}  {:<24}  {:>10}  {:<34}  {}",
            i.id,
            time(i.created_at_ms),
            size(i.total_bytes),
            backends.join(", "),
            meta.join(" ")
        );
    }
    for d in c.damaged() {
        say!(
            "{indent}{:>8}  DAMAGED manifest {}: {}",
            d.id,
            d.path,
            d.reason
        );
    }
}

fn list(loc: &Location, out: &Out) -> Result<u8> {
    match loc.kind()? {
        Kind::Manager(storage) => {
            let catalog = Catalog::open(storage).context("reading the manifests")?;
            let mut doc = catalog_json(&catalog);
            doc["location"] = json!(loc.shown());
            doc["kind"] = json!("backend");
            out.emit(&doc, || {
                say!(
                    "{}: {} checkpoints",
                    loc.shown(),
                    catalog.checkpoints().len()
                );
                print_checkpoints(&catalog, "");
            });
        }
        Kind::Job(indexes) => {
            let root = loc.open("")?;
            let commits = gress_stream::commits(&*root).context("reading the commit records")?;
            let mut workers = Vec::new();
            for w in indexes {
                let catalog = Catalog::open(loc.worker(w)?)
                    .with_context(|| format!("reading worker {w}'s manifests"))?;
                workers.push((w, catalog));
            }
            let doc = json!({
                "location": loc.shown(),
                "kind": "job",
                "commits": commits.iter().map(|c| json!({
                    "epoch": c.epoch,
                    "job": c.job,
                    "workers": c.workers,
                    "key_groups": c.key_groups,
                    "checkpoints": c.checkpoints,
                    "created_at_ms": c.created_at_ms,
                    "created_at": time(c.created_at_ms),
                })).collect::<Vec<_>>(),
                "workers": workers.iter().map(|(w, c)| {
                    let mut v = catalog_json(c);
                    v["worker"] = json!(w);
                    v
                }).collect::<Vec<_>>(),
            });
            out.emit(&doc, || {
                say!("{}: a job's checkpoints", loc.shown());
                match commits.first() {
                    Some(c) => say!(
                        "job `{}`, {} workers, {} key groups; {} commits, newest epoch {} at {}",
                        c.job,
                        c.workers,
                        c.key_groups,
                        commits.len(),
                        c.epoch,
                        time(c.created_at_ms)
                    ),
                    None => say!("no committed epoch"),
                }
                for c in &commits {
                    say!(
                        "  epoch {:>8}  {}  checkpoints {:?}",
                        c.epoch,
                        time(c.created_at_ms),
                        c.checkpoints
                    );
                }
                for (w, c) in &workers {
                    say!("worker {w} ({}):", worker_sub(*w));
                    print_checkpoints(c, "  ");
                }
            });
        }
    }
    Ok(exit::OK)
}

/// The catalog a command works on, and the id it means: for a job, the
/// worker's location and (by default) its checkpoint of the newest commit.
fn target(loc: &Location, id: Option<u64>, worker: Option<usize>) -> Result<(Catalog, u64)> {
    let storage = match (loc.kind()?, worker) {
        (Kind::Manager(storage), None) => storage,
        (Kind::Manager(_), Some(_)) => {
            bail!(
                "{} is one backend's checkpoints: no --worker here",
                loc.shown()
            )
        }
        (Kind::Job(workers), None) => bail!(
            "{} is a job's checkpoints: say which worker (--worker N, one of {workers:?})",
            loc.shown(),
        ),
        (Kind::Job(_), Some(w)) => {
            let storage = loc.worker(w)?;
            if id.is_some() {
                storage
            } else {
                return committed_of(loc, w, storage);
            }
        }
    };
    let catalog = Catalog::open(storage).context("reading the manifests")?;
    let id = match id.or_else(|| catalog.latest().map(|i| i.id)) {
        Some(id) => id,
        None => bail!(Fail::not_found(format!(
            "{}: no committed checkpoint",
            loc.shown()
        ))),
    };
    if catalog.manifest(id).is_none() {
        return Err(missing(&catalog, id, loc));
    }
    Ok((catalog, id))
}

/// Worker `w`'s checkpoint of the newest commit. A running job may retire
/// that checkpoint between reading the commit and the manifests, having
/// committed a newer one: then both are read again.
fn committed_of(loc: &Location, w: usize, storage: Arc<dyn Storage>) -> Result<(Catalog, u64)> {
    let root = loc.open("")?;
    for _ in 0..5 {
        let newest = gress_stream::latest_commit(&*root)?;
        let Some(id) = newest.and_then(|c| c.checkpoints.get(w).copied()) else {
            bail!(Fail::not_found(format!(
                "{}: no committed epoch names a checkpoint of worker {w}",
                loc.shown()
            )));
        };
        let catalog = Catalog::open(Arc::clone(&storage)).context("reading the manifests")?;
        if catalog.manifest(id).is_some() {
            return Ok((catalog, id));
        }
    }
    bail!(Fail::not_found(format!(
        "{}: worker {w}'s committed checkpoint keeps disappearing (a job is retiring them)",
        loc.shown()
    )))
}

/// A metadata value as a person reads it: a watermark or event-time high
/// mark of `u64::MAX` is the end of the input (JSON keeps the number).
fn meta_value<'a>(key: &str, value: &'a str) -> std::borrow::Cow<'a, str> {
    let time = key.starts_with("watermark/") || key.starts_with("maxtime/");
    if time && value.parse::<u64>() == Ok(u64::MAX) {
        "end of input".into()
    } else {
        value.into()
    }
}

/// Runs `f`, turning a [`Fail`] into its exit code and message.
pub(crate) fn or_not_found(out: &Out, f: impl FnOnce() -> Result<u8>) -> Result<u8> {
    match f() {
        Err(e) => match e.downcast_ref::<Fail>() {
            Some(fail) => {
                if out.json {
                    say!(
                        "{}",
                        json!({ "error": fail.message, "not_found": fail.code == exit::NOT_FOUND })
                    );
                }
                eprintln!("error: {fail}");
                Ok(fail.code)
            }
            None => Err(e),
        },
        ok => ok,
    }
}

fn manifest_json(m: &Manifest) -> Value {
    json!({
        "id": m.id,
        "created_at_ms": m.created_at_ms,
        "created_at": time(m.created_at_ms),
        "total_bytes": m.total_bytes(),
        "metadata": m.metadata,
        "backends": m.backends.iter().map(|b| json!({
            "name": b.name,
            "format": b.format,
            "chain_deltas": b.chain_deltas,
            "files": b.files.iter().map(|f| json!({
                "name": f.name, "path": f.path, "size": f.size,
                "crc32c": format!("{:08x}", f.crc32c),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn inspect(loc: &Location, id: Option<u64>, worker: Option<usize>, out: &Out) -> Result<u8> {
    or_not_found(out, || {
        let (catalog, id) = target(loc, id, worker)?;
        let m = catalog
            .manifest(id)
            .ok_or_else(|| Fail::not_found(format!("no checkpoint {id}")))?;
        out.emit(&manifest_json(m), || {
            say!(
                "checkpoint {} of {}, {} ({})",
                m.id,
                loc.shown(),
                time(m.created_at_ms),
                size(m.total_bytes())
            );
            for (k, v) in &m.metadata {
                say!("  {k} = {}", meta_value(k, v));
            }
            for b in &m.backends {
                say!(
                    "backend `{}`: format {}, {} files, {} deltas in its chain",
                    b.name,
                    b.format,
                    b.files.len(),
                    b.chain_deltas
                );
                for f in &b.files {
                    say!(
                        "  {:<24} {:>12}  crc32c {:08x}  {}",
                        f.name,
                        size(f.size),
                        f.crc32c,
                        f.path
                    );
                }
            }
        });
        Ok(exit::OK)
    })
}

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

fn verify(
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

/// Why checkpoint `id` is not readable: its manifest is damaged (exit
/// code 3), or there is none (exit code 4).
fn missing(catalog: &Catalog, id: u64, loc: &Location) -> anyhow::Error {
    match catalog.damaged().iter().find(|d| d.id == id) {
        Some(d) => Fail::damaged(format!(
            "{}: checkpoint {id}'s manifest {} is damaged: {}",
            loc.shown(),
            d.path,
            d.reason
        ))
        .into(),
        None => Fail::not_found(format!("{}: no checkpoint {id}", loc.shown())).into(),
    }
}

enum Target {
    Rocksdb(PathBuf),
    Snapshot(PathBuf),
}

fn restore(
    loc: &Location,
    id: Option<u64>,
    worker: Option<usize>,
    backend: Option<&str>,
    target_to: &Target,
    out: &Out,
) -> Result<u8> {
    or_not_found(out, || {
        let (catalog, id) = target(loc, id, worker)?;
        let m = catalog
            .manifest(id)
            .ok_or_else(|| Fail::not_found(format!("no checkpoint {id}")))?;
        let entry = match backend {
            Some(name) => m.backend(name).ok_or_else(|| {
                Fail::not_found(format!(
                    "checkpoint {id} has no backend `{name}` (it has {:?})",
                    m.backends.iter().map(|b| &b.name).collect::<Vec<_>>()
                ))
            })?,
            None => match m.backends.as_slice() {
                [only] => only,
                several => bail!(
                    "checkpoint {id} holds several backends: choose one with --backend ({:?})",
                    several.iter().map(|b| &b.name).collect::<Vec<_>>()
                ),
            },
        };
        let name = entry.name.clone();
        let format = entry.format.clone();
        let bar = out.spinner(&format!("restoring checkpoint {id} ({name})"));
        let restore_into = |b: &dyn Checkpointable| -> Result<()> {
            catalog
                .restore_into(id, &[(name.as_str(), b)], true)
                .with_context(|| format!("restoring checkpoint {id}"))?;
            Ok(())
        };
        let (written, entries) = match target_to {
            Target::Rocksdb(dir) => {
                let n = build_rocksdb(dir, |rocks| {
                    if format == ROCKSDB_CHECKPOINT_FORMAT || format == SNAPSHOT_FORMAT {
                        restore_into(rocks)?;
                    } else {
                        // A memory checkpoint (a full snapshot and its
                        // deltas): through a memory backend, as one
                        // snapshot stream.
                        let mem = MemoryStateBackend::new(MemoryConfig::default())?;
                        restore_into(&mem)?;
                        bar.set_message("writing into RocksDB");
                        let tmp = tempfile::NamedTempFile::new_in(parent_dir(dir))?;
                        mem.snapshot_to(&mut std::io::BufWriter::new(tmp.as_file()))?;
                        let mut input = std::io::BufReader::new(tmp.reopen()?);
                        rocks.restore_from(&mut input)?;
                    }
                    // Counted, not RocksDB's estimate.
                    let mut n = 0u64;
                    for entry in rocks.scan_prefix(b"")? {
                        entry?;
                        n += 1;
                    }
                    Ok(n)
                })?;
                (dir.clone(), n)
            }
            Target::Snapshot(file) => {
                let parent = parent_dir(file);
                let summary = if format == ROCKSDB_CHECKPOINT_FORMAT {
                    let scratch = tempfile::tempdir_in(parent)?;
                    let rocks = RocksDbStateBackend::open(RocksDbConfig::new(scratch.path()))?;
                    restore_into(&rocks)?;
                    let s = write_snapshot(file, &rocks)?;
                    rocks.close()?;
                    s
                } else {
                    let mem = MemoryStateBackend::new(MemoryConfig::default())?;
                    restore_into(&mem)?;
                    write_snapshot(file, &mem)?
                };
                (file.clone(), summary.n_entries)
            }
        };
        bar.finish_and_clear();
        let doc = json!({
            "checkpoint": id,
            "backend": name,
            "format": format,
            "written": written.display().to_string(),
            "entries": entries,
        });
        out.emit(&doc, || {
            say!(
                "restored checkpoint {id} (backend `{name}`, {format}) into {}: {entries} entries",
                written.display()
            );
        });
        Ok(exit::OK)
    })
}

fn parent_dir(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Builds a new RocksDB state directory at `dir` with `fill`: in a
/// temporary directory beside it, closed, synced and renamed into place,
/// so that `dir` appears whole or not at all (a crash midway leaves only
/// the temporary directory, never a half-filled `dir`). Refuses a `dir`
/// that exists and is not empty.
pub(crate) fn build_rocksdb(
    dir: &Path,
    fill: impl FnOnce(&RocksDbStateBackend) -> Result<u64>,
) -> Result<u64> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) || dir.is_file() {
        bail!(
            "{} already exists and is not empty; restore into a new directory",
            dir.display()
        );
    }
    let parent = parent_dir(dir);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".gress-restoring-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let rocks = RocksDbStateBackend::open(RocksDbConfig::new(scratch.path()))
        .with_context(|| format!("creating RocksDB state in {}", scratch.path().display()))?;
    let n = fill(&rocks)?;
    rocks.flush()?;
    rocks.close()?;
    drop(rocks);
    // An empty directory at `dir` (made by the user) is replaced.
    if dir.is_dir() {
        std::fs::remove_dir(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    let built = scratch.keep();
    std::fs::rename(&built, dir)
        .with_context(|| format!("moving the new state to {}", dir.display()))?;
    gress_state::fsutil::sync_dir(parent)?;
    Ok(n)
}

/// Writes `file` through `write`: into a temporary file beside it, then
/// flushed, synced and renamed over it, so `file` is whole or untouched.
pub(crate) fn write_atomically<T>(
    file: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let parent = parent_dir(file);
    let tmp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("creating a file in {}", parent.display()))?;
    let value = {
        let mut w = BufWriter::new(tmp.as_file());
        let value = write(&mut w)?;
        w.flush()?;
        value
    };
    tmp.as_file().sync_all()?;
    tmp.persist(file)
        .with_context(|| format!("writing {}", file.display()))?;
    gress_state::fsutil::sync_dir(parent)?;
    Ok(value)
}

/// Writes `backend`'s snapshot to `file`, atomically.
fn write_snapshot(file: &Path, backend: &dyn StateBackend) -> Result<gress_state::SnapshotSummary> {
    write_atomically(file, |w| Ok(backend.snapshot_to(w)?))
}

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

fn gc(loc: &Location, retain: usize, dry_run: bool, verify: bool, out: &Out) -> Result<u8> {
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
