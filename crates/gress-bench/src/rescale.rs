//! The rescale benchmark: keyed state of a job's workers (key-group
//! prefixed keys, as gress-stream lays them out), checkpointed by `from`
//! workers, restored onto `to` workers by key-group ranges, against the
//! time to take one full checkpoint of it and restore it unchanged.
//!
//! Each worker runs on its own thread, as in a job; a phase's time is the
//! wall-clock time until every worker is done.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gress_checkpoint::{Catalog, CheckpointConfig, CheckpointManager, LocalStorage, RangePart};
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::checkpoint::Checkpointable;
use gress_state::{KeyRange, MemoryConfig, MemoryStateBackend, WriteBatch};
use gress_stream::keys::{groups_key_range, groups_of};
use serde::Serialize;

use crate::stream::Backend;

#[derive(clap::Args, Debug, Clone)]
pub struct RescaleArgs {
    /// State size in MiB (keys and values), over all workers.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Workers that take the checkpoint.
    #[arg(long, default_value_t = 2)]
    from: usize,
    /// Workers it is restored onto.
    #[arg(long, default_value_t = 4)]
    to: usize,
    /// Key groups of the job.
    #[arg(long, default_value_t = 128)]
    key_groups: u16,
    /// State backends to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Backend::Memory, Backend::Rocksdb])]
    backends: Vec<Backend>,
    /// Where the state and checkpoints go (a temporary directory inside).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct RescaleRow {
    backend: Backend,
    entries: u64,
    state_bytes: u64,
    from: usize,
    to: usize,
    /// One full checkpoint of every old worker.
    checkpoint_s: f64,
    /// Restoring each old worker's checkpoint unchanged.
    restore_s: f64,
    /// Restoring the new workers from key-group ranges.
    rescale_s: f64,
}

fn open_backend(backend: Backend, dir: &Path) -> Result<Arc<dyn Checkpointable>> {
    Ok(match backend {
        Backend::Memory => Arc::new(MemoryStateBackend::new(MemoryConfig::default())?),
        Backend::Rocksdb => {
            let mut config = RocksDbConfig::new(dir);
            config.wal = false;
            Arc::new(RocksDbStateBackend::open(config)?)
        }
    })
}

fn manager(root: &Path, worker: usize) -> Result<CheckpointManager> {
    let storage = Arc::new(LocalStorage::new(
        root.join(format!("workers/{worker:05}")),
    )?);
    Ok(CheckpointManager::open(
        storage,
        CheckpointConfig::default(),
    )?)
}

/// Runs `f(worker)` on one thread per worker; the wall-clock time of all.
fn on_threads<T: Send>(
    workers: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<(Vec<T>, Duration)> {
    let started = Instant::now();
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let f = &f;
                s.spawn(move || f(w))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a worker thread panicked"))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    Ok((results.into_iter().collect::<Result<_>>()?, elapsed))
}

fn bench_one(args: &RescaleArgs, backend: Backend, root: &Path) -> Result<RescaleRow> {
    let key_len = 2 + 8;
    let entries = (args.mib << 20) / (key_len + args.value_bytes) as u64;
    let kgs = u64::from(args.key_groups);
    let (from, to) = (args.from, args.to);
    crate::status(&format!(
        "rescale {}: writing {entries} entries over {from} workers",
        backend_name(backend)
    ));

    // The old workers' state, each holding its key groups.
    let (old, _) = on_threads(from, |w| {
        let b = open_backend(backend, &root.join(format!("old-{w}")))?;
        let mine = groups_of(w, from, args.key_groups);
        let mut batch = WriteBatch::new();
        let value = vec![0x5au8; args.value_bytes];
        for i in 0..entries {
            let kg = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % kgs;
            let kg = kg as u16;
            if !mine.contains(&kg) {
                continue;
            }
            let mut key = kg.to_be_bytes().to_vec();
            key.extend_from_slice(&i.to_be_bytes());
            batch.put(key, &value);
            if batch.len() >= 10_000 {
                b.write_batch(&batch)?;
                batch = WriteBatch::new();
            }
        }
        b.write_batch(&batch)?;
        b.flush()?;
        Ok(b)
    })?;

    // One full checkpoint per old worker.
    let old_root = root.join("checkpoints");
    let (ids, checkpoint) = on_threads(from, |w| {
        let m = manager(&old_root, w)?;
        m.register("state", Arc::clone(&old[w]))?;
        let report = m.trigger_checkpoint(Default::default())?;
        Ok(report.info.id)
    })?;
    drop(old);

    // Restoring it unchanged, onto as many workers.
    let (counts, restore) = on_threads(from, |w| {
        let b = open_backend(backend, &root.join(format!("same-{w}")))?;
        let catalog = Catalog::open(Arc::new(LocalStorage::new(
            old_root.join(format!("workers/{w:05}")),
        )?))?;
        catalog.restore_into(ids[w], &[("state", &*b)], false)?;
        Ok(b)
    })?;
    let restored = count_all(&counts)?;
    drop(counts);

    // Rescaling onto `to` workers by key-group ranges.
    let new_root = root.join("rescaled");
    let (counts, rescale) = on_threads(to, |w| {
        let b = open_backend(backend, &root.join(format!("new-{w}")))?;
        let m = manager(&new_root, w)?;
        m.register("state", Arc::clone(&b))?;
        let mine = groups_of(w, to, args.key_groups);
        let catalogs = (0..from)
            .map(|o| {
                Ok(Catalog::open(Arc::new(LocalStorage::new(
                    old_root.join(format!("workers/{o:05}")),
                )?))?)
            })
            .collect::<Result<Vec<_>>>()?;
        let parts: Vec<RangePart<'_>> = catalogs
            .iter()
            .enumerate()
            .filter_map(|(o, catalog)| {
                let theirs = groups_of(o, from, args.key_groups);
                let (a, z) = (mine.start.max(theirs.start), mine.end.min(theirs.end));
                (a < z).then(|| RangePart {
                    catalog,
                    id: ids[o],
                    ranges: vec![groups_key_range(a..z)],
                })
            })
            .collect();
        m.restore_ranges(&parts)?;
        Ok(b)
    })?;
    let rescaled = count_all(&counts)?;
    if restored != rescaled {
        bail!("{restored} entries restored, {rescaled} after the rescale");
    }
    Ok(RescaleRow {
        backend,
        entries: restored,
        state_bytes: restored * (key_len + args.value_bytes) as u64,
        from,
        to,
        checkpoint_s: checkpoint.as_secs_f64(),
        restore_s: restore.as_secs_f64(),
        rescale_s: rescale.as_secs_f64(),
    })
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Memory => "memory",
        Backend::Rocksdb => "rocksdb",
    }
}

/// Entries in all the backends (not timed).
fn count_all(backends: &[Arc<dyn Checkpointable>]) -> Result<u64> {
    let mut n = 0;
    for b in backends {
        for kv in b.scan(KeyRange::all())? {
            kv?;
            n += 1;
        }
    }
    Ok(n)
}

pub(crate) fn run(args: &RescaleArgs) -> Result<crate::Outcome> {
    use std::fmt::Write;
    if args.from == 0 || args.to == 0 {
        bail!("--from and --to must be at least 1");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut rows = Vec::new();
    for &backend in &args.backends {
        let tmp = tempfile::tempdir_in(&args.dir)?;
        rows.push(bench_one(args, backend, tmp.path())?);
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "rescale {} -> {} workers, {} key groups, {} MiB of state",
        args.from, args.to, args.key_groups, args.mib
    );
    let _ = writeln!(
        table,
        "{:<10} {:>12} {:>12} {:>14} {:>12} {:>12}",
        "backend", "entries", "MiB", "checkpoint s", "restore s", "rescale s"
    );
    for r in &rows {
        let _ = writeln!(
            table,
            "{:<10} {:>12} {:>12} {:>14.2} {:>12.2} {:>12.2}",
            backend_name(r.backend),
            r.entries,
            r.state_bytes >> 20,
            r.checkpoint_s,
            r.restore_s,
            r.rescale_s
        );
    }
    let plot = rows
        .iter()
        .flat_map(|r| {
            [
                ("full checkpoint", r.checkpoint_s),
                ("full restore", r.restore_s),
                ("rescale", r.rescale_s),
            ]
            .map(|(what, s)| crate::PlotRow {
                label: format!("{} {what}", backend_name(r.backend)),
                throughput: r.state_bytes as f64 / s.max(1e-9),
                latency_ns: vec![("time", s * 1e9)],
            })
        })
        .collect();
    Ok(crate::Outcome {
        table,
        json: serde_json::to_value(&rows)?,
        plot,
        throughput_unit: "bytes",
    })
}
