//! `gress-demo`: uses the state backend end to end, then runs a keyed
//! stream job with windows on RocksDB that crashes once and recovers, and
//! prints what it did.

mod stream;

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use gress_app::ProgramArgs;
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::telemetry::{MetricsPublisher, PrometheusEndpoint, serve_prometheus};
use gress_state::{MemoryConfig, MemoryStateBackend, Op, StateBackend};

#[derive(Parser, Debug)]
#[command(about = "Runs gress-state end to end and prints what happened")]
struct Args {
    #[command(flatten)]
    program: ProgramArgs,
    /// Which backend to run on.
    #[arg(long, value_enum, default_value_t = Backend::Rocksdb)]
    backend: Backend,
    /// Number of user records to write (at least 1).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    users: u64,
    /// Number of events in the keyed aggregation.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Clicks in the stream job (0: skip it).
    #[arg(long, default_value_t = 400_000)]
    clicks: u64,
    /// Serve the backend's metrics for Prometheus at this address while
    /// the demo runs: http://ADDR/metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Serve no metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Keep serving metrics this many seconds after the demo finishes.
    #[arg(long, default_value_t = 0)]
    metrics_linger: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// RocksDB on local disk (the default).
    Rocksdb,
    /// In memory.
    Memory,
}

const DEFAULT_TTL: Duration = Duration::from_secs(3600);

fn rocksdb_config(args: &Args) -> RocksDbConfig {
    RocksDbConfig::new(args.data_dir().join("state")).with_ttl(DEFAULT_TTL)
}

/// The name the demo marks its data directory with.
const PROGRAM: &str = "gress-demo";
const DEFAULT_DATA_DIR: &str = "demo-data";

fn main() -> Result<()> {
    let mut args = Args::parse();
    let dir = args.program.start(PROGRAM, Path::new(DEFAULT_DATA_DIR))?;
    args.program.data_dir = Some(dir);

    let endpoint = if args.no_metrics {
        None
    } else {
        match serve_prometheus(args.metrics_addr) {
            Ok(endpoint) => {
                println!("metrics: {}", endpoint.url());
                Some(endpoint)
            }
            // The demo does not need the endpoint: say why and go on.
            Err(e) => {
                let e = anyhow::Error::from(e);
                println!("metrics: not served ({e:#}); try --metrics-addr 127.0.0.1:0");
                None
            }
        }
    };
    let publisher = MetricsPublisher::new(MetricsPublisher::DEFAULT_INTERVAL)?;

    match args.backend {
        Backend::Memory => {
            let backend = Arc::new(MemoryStateBackend::new(
                MemoryConfig::default().with_ttl(DEFAULT_TTL),
            )?);
            publisher.register(METRICS_LABEL, &backend)?;
            println!("opened the memory backend (default TTL 1 h)");
            exercise(&*backend, &args)?;
            report_metrics(&*backend, endpoint.as_ref(), &publisher);
            backend.close()?;
        }
        Backend::Rocksdb => {
            let config = rocksdb_config(&args);
            let backend = Arc::new(RocksDbStateBackend::open(config.clone())?);
            publisher.register(METRICS_LABEL, &backend)?;
            println!(
                "opened the RocksDB backend in {} (default TTL 1 h)",
                config.path.display()
            );
            exercise(&*backend, &args)?;
            rocksdb_extras(&backend, &args)?;
            report_metrics(&*backend, endpoint.as_ref(), &publisher);
            backend.close()?;
            drop(backend);
            let reopened = RocksDbStateBackend::open(config)?;
            println!(
                "closed and reopened: {} present = {}, about {} keys",
                sample_user(&args),
                reopened.get(sample_user(&args).as_bytes())?.is_some(),
                reopened.estimate_num_keys()?
            );
        }
    }
    if args.clicks > 0 {
        let urls = endpoint.as_ref().map(|e| (e.url(), e.status_url()));
        stream::run_demo(&args.data_dir().join("stream"), args.clicks, urls.as_ref())?;
    }
    println!("demo finished");
    if let Some(endpoint) = &endpoint
        && args.metrics_linger > 0
    {
        println!(
            "metrics: still served at {} for {} s",
            endpoint.url(),
            args.metrics_linger
        );
        std::thread::sleep(Duration::from_secs(args.metrics_linger));
    }
    Ok(())
}

impl Args {
    /// The data directory, once `main` has prepared it.
    fn data_dir(&self) -> &Path {
        (self.program.data_dir.as_deref()).unwrap_or(Path::new(DEFAULT_DATA_DIR))
    }
}

/// The user record the demo reads back: `user:123`, or the last one when
/// there are fewer.
fn sample_user(args: &Args) -> String {
    format!("user:{}", args.users.saturating_sub(1).min(123))
}

/// The `backend` label of the demo's metrics.
const METRICS_LABEL: &str = "demo";

/// What every backend does: writes, an aggregation, TTL, snapshot, restore.
fn exercise(backend: &dyn StateBackend, args: &Args) -> Result<()> {
    // 1. Writes and reads.
    let t = Instant::now();
    for i in 0..args.users {
        let record = format!(r#"{{"name": "user-{i}", "balance": {}}}"#, 1000 + i);
        backend.put(format!("user:{i}").as_bytes(), record.as_bytes())?;
    }
    println!("wrote {} user records in {:?}", args.users, t.elapsed());
    let alice = backend
        .get(sample_user(args).as_bytes())?
        .context(format!("{} missing", sample_user(args)))?;
    println!(
        "read {} -> {}",
        sample_user(args),
        String::from_utf8_lossy(&alice)
    );

    // 2. A keyed aggregation: read-modify-write per event.
    let t = Instant::now();
    for e in 0..args.events {
        let key = format!("clicks:user:{}", (e * 7919) % 100);
        let count = backend
            .get(key.as_bytes())?
            .map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
        backend.put(key.as_bytes(), &(count + 1).to_le_bytes())?;
    }
    let clicks = backend.scan_prefix(b"clicks:")?.count();
    println!(
        "aggregated {} click events into {clicks} per-user counters in {:?}",
        args.events,
        t.elapsed()
    );

    // 3. TTL: a session that expires.
    backend.put_with_ttl(b"session:abc", b"cart=3 items", Duration::from_millis(100))?;
    let at_once = backend.get(b"session:abc")?.is_some();
    std::thread::sleep(Duration::from_millis(150));
    let later = backend.get(b"session:abc")?.is_some();
    println!("session:abc with a 100 ms TTL: present at once = {at_once}, after 150 ms = {later}");
    if !at_once || later {
        bail!("TTL did not behave as expected");
    }

    // 4. Snapshot to a file, written to a temp name, synced, then renamed.
    let snapshot_path = args.data_dir().join("state-snapshot.bin");
    let summary = write_snapshot(backend, &snapshot_path)?;
    println!(
        "snapshot: {} entries, {} blocks, {} bytes -> {}",
        summary.n_entries,
        summary.n_blocks,
        summary.n_bytes,
        snapshot_path.display()
    );

    // 5. Lose state, then restore: restore replaces, so the stray key goes.
    for i in 0..args.users / 2 {
        backend.delete(format!("user:{i}").as_bytes())?;
    }
    backend.put(b"stray", b"written after the snapshot")?;
    let mut input = BufReader::new(File::open(&snapshot_path)?);
    let restored = backend.restore_from(&mut input)?;
    let stray_gone = backend.get(b"stray")?.is_none();
    let mut users_back = 0;
    for i in 0..args.users {
        users_back += u64::from(backend.get(format!("user:{i}").as_bytes())?.is_some());
    }
    println!(
        "restored {} entries: {users_back}/{} users back, stray key gone = {stray_gone}",
        restored.n_entries_restored, args.users
    );
    if users_back != args.users || !stray_gone {
        bail!("restore did not give back the snapshot's state");
    }

    // 6. A damaged snapshot is refused and changes nothing.
    let mut damaged = fs::read(&snapshot_path)?;
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xFF;
    match backend.restore(&damaged) {
        Err(e) => println!("restore of a damaged snapshot refused: {e}"),
        Ok(_) => bail!("a damaged snapshot was accepted"),
    }
    println!(
        "state after the refused restore still has {} = {}",
        sample_user(args),
        backend.get(sample_user(args).as_bytes())?.is_some()
    );
    Ok(())
}

/// RocksDB's own tools: properties, flush, a hard-linked checkpoint opened
/// as a new database.
fn rocksdb_extras(backend: &RocksDbStateBackend, args: &Args) -> Result<()> {
    backend.flush()?;
    println!(
        "flushed memtables: rocksdb.estimate-num-keys = {}, rocksdb.total-sst-files-size = {}",
        backend
            .property("rocksdb.estimate-num-keys")?
            .unwrap_or_default(),
        backend
            .property("rocksdb.total-sst-files-size")?
            .unwrap_or_default(),
    );
    let checkpoint = args.data_dir().join("checkpoints/cp-1");
    fs::create_dir_all(args.data_dir().join("checkpoints"))?;
    backend.create_checkpoint(&checkpoint)?;
    backend.put(
        sample_user(args).as_bytes(),
        b"changed after the checkpoint",
    )?;
    let copy = RocksDbStateBackend::open_checkpoint(
        &checkpoint,
        RocksDbConfig::new(args.data_dir().join("from-checkpoint")),
    )?;
    println!(
        "checkpoint {} opened as a new database: {} -> {}",
        checkpoint.display(),
        sample_user(args),
        String::from_utf8_lossy(&copy.get(sample_user(args).as_bytes())?.unwrap_or_default())
    );
    Ok(())
}

fn report_metrics(
    backend: &dyn StateBackend,
    endpoint: Option<&PrometheusEndpoint>,
    publisher: &MetricsPublisher,
) {
    let m = backend.metrics();
    println!(
        "metrics: gets {} (hits {}, misses {}), puts {}, deletes {}, keys {}{}",
        m.gets,
        m.hits,
        m.misses,
        m.puts,
        m.deletes,
        m.n_keys,
        if m.n_keys_is_estimate {
            " (estimate)"
        } else {
            ""
        }
    );
    for op in [Op::Get, Op::Put, Op::Delete, Op::Scan] {
        let l = m.latency_of(op);
        if l.samples > 0 {
            println!(
                "  {:<6} latency over {:>6} sampled calls: p50 {:?}, p99 {:?}, p999 {:?}, max {:?}",
                op.name(),
                l.samples,
                l.p50,
                l.p99,
                l.p999,
                l.max
            );
        }
    }
    for name in [
        "block_cache_hit",
        "block_cache_miss",
        "bytes_written",
        "stall_micros",
    ] {
        if let Some(v) = m.engine.get(name) {
            println!("  rocksdb {name}: {v}");
        }
    }
    if let Some(endpoint) = endpoint {
        // What a scrape of the endpoint says now.
        publisher.publish_now();
        let wanted = [
            "gress_state_puts_total{",
            "gress_state_gets_total{",
            "gress_state_keys{",
        ];
        println!("  served at {}:", endpoint.url());
        for line in endpoint.render().lines() {
            if wanted.iter().any(|w| line.starts_with(w))
                && line.contains(&format!("backend=\"{METRICS_LABEL}\""))
            {
                println!("    {line}");
            }
        }
    }
}

/// Writes a snapshot so that a crash leaves either the old file or the new
/// one, never a torn mix: temp file, fsync, rename, fsync of the directory.
fn write_snapshot(backend: &dyn StateBackend, path: &Path) -> Result<gress_state::SnapshotSummary> {
    let dir = path.parent().context("snapshot path has no directory")?;
    let tmp = path.with_extension("bin.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = BufWriter::new(file);
    let summary = backend.snapshot_to(&mut out)?;
    out.flush()?;
    out.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .context("syncing snapshot")?;
    fs::rename(&tmp, path).context("renaming snapshot into place")?;
    gress_state::fsutil::sync_dir(dir).context("syncing snapshot directory")?;
    Ok(summary)
}
