//! A stream job on RocksDB with a memory budget stays within it: a process
//! of its own runs a job that writes ten times its budget of state, and
//! its peak resident set (`VmHWM` in `/proc/self/status`) stays within
//! the budget plus 20%.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::Checkpointable;
use gress_stream::{
    BackendFactory, EpochPolicy, GeneratorSource, JobConfig, KeyedProcessFunction,
    ProcessingContext, Result, ValueStateDescriptor, run,
};

type R = std::result::Result<(), Box<dyn std::error::Error>>;

/// Set in the process that runs the job: the directory it works in.
const CHILD: &str = "GRESS_MEMORY_BUDGET_CHILD";
const WORKERS: usize = 2;
/// Each worker's budget.
const BUDGET: usize = 160 << 20;
/// Bytes of each value.
const VALUE: usize = 2_000;
/// Keys written, each once, per worker: ten times the job's budget of
/// values.
const PER_WORKER: u64 = (10 * BUDGET / VALUE) as u64 + 1;

/// Writes a value of `VALUE` bytes under each key.
struct Write(ValueStateDescriptor<Vec<u8>>);

impl KeyedProcessFunction<u64, u64> for Write {
    type Out = ();
    type Side = ();
    fn on_record(&mut self, ctx: &mut ProcessingContext<'_, u64, ()>, i: u64) -> Result<()> {
        // Compressible on disk, as large as it says in memory.
        let mut value = vec![(i % 251) as u8; VALUE];
        value[..8].copy_from_slice(&i.to_le_bytes());
        ctx.value(&self.0)?.set(value)
    }
}

/// The job, in the child process: prints its peak RSS and what it wrote.
fn child(dir: &std::path::Path) -> R {
    let state = dir.join("state");
    let config = JobConfig::new("memory-budget")
        .with_workers(WORKERS)
        .with_memory(BUDGET)
        .with_epochs(EpochPolicy::Interval(Duration::from_millis(500)))
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_local_dir(dir)
        .with_backend(BackendFactory::with_memory_budget(move |worker, bytes| {
            let mut c = RocksDbConfig::new(state.join(format!("worker-{worker}")));
            if let Some(bytes) = bytes {
                c = c.with_memory_budget(bytes);
            }
            Ok(Arc::new(RocksDbStateBackend::open(c)?) as Arc<dyn Checkpointable>)
        }));
    let report = run(config, |job| {
        let _ = job
            .source(
                "keys",
                GeneratorSource::new(WORKERS, Some(PER_WORKER), |p, i| p as u64 * PER_WORKER + i),
            )?
            .key_by(|k| *k)
            .process("write", Write(ValueStateDescriptor::new("v")));
        Ok(())
    })?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmHWM in /proc/self/status")?;
    println!(
        "RESULT peak_kb={peak_kb} records={} cache_peak={} evicted={}",
        report.records_in, report.cache.peak_bytes, report.cache.evicted
    );
    Ok(())
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

#[test]
fn a_job_stays_within_its_memory_budget() -> R {
    if let Some(dir) = std::env::var_os(CHILD) {
        return child(std::path::Path::new(&dir));
    }
    let dir = tempfile::tempdir()?;
    let out = Command::new(std::env::current_exe()?)
        .args([
            "a_job_stays_within_its_memory_budget",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, dir.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the job's process failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .ok_or_else(|| format!("no result from the job's process: {stdout}"))?;
    let peak = field(line, "peak_kb").ok_or("no peak")? * 1024;
    let records = field(line, "records").ok_or("no records")?;
    let cache_peak = field(line, "cache_peak").ok_or("no cache peak")?;
    let budget = (WORKERS * BUDGET) as u64;
    println!("budget {} MiB; {line}", budget >> 20);
    // Ten times the budget went through the state.
    assert_eq!(records, WORKERS as u64 * PER_WORKER);
    assert!(records * VALUE as u64 >= 10 * budget);
    // The cache stayed within its share, and the process within the
    // budget plus 20%.
    let share = (BUDGET as f64 * gress_stream::CACHE_SHARE) as u64;
    assert!(
        cache_peak <= share + share / 8,
        "a worker's cache held {cache_peak} bytes, its share is {share}: {line}"
    );
    assert!(
        peak <= budget + budget / 5,
        "peak RSS {} MiB, budget {} MiB: {line}",
        peak >> 20,
        budget >> 20
    );
    Ok(())
}
