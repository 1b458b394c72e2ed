//! `gress checkpoint list|inspect|verify|restore|gc`.
//!
//! `list`, `inspect` and `verify` only read: they open a [`Catalog`], which
//! never writes, deletes or takes the location, so they are safe beside a
//! job that is checkpointing into it. `gc` opens the location as a
//! checkpoint manager does, which refuses a location a live job holds.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gress_checkpoint::{Catalog, CheckpointInfo, Manifest, Storage};
use serde_json::{Value, json};

use crate::exit;
use crate::location::{Fail, Kind, Location, worker_sub};
use crate::out::{Out, size, time};

mod gc;
mod restore;
mod verify;

use gc::gc;
use restore::{Target, restore};
pub(crate) use restore::{build_rocksdb, write_atomically};
use verify::verify;

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
