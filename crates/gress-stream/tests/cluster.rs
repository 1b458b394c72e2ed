//! A job on two processes (timely's cluster mode, on loopback) commits what
//! it commits on one, and recovers exactly when either process is killed
//! and both are restarted.
//!
//! Each process is this test binary again, running the ignored test
//! `cluster_child` with its settings in the environment. Both processes
//! checkpoint into the same directory: each worker under `workers/<global
//! index>/`, the commit records (written by worker 0) under `commits/`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gress_stream::{EpochPolicy, FileSink, GeneratorSource, JobConfig, latest_commit, run};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const KEYS: u64 = 50;
const PARTITIONS: usize = 4;
const WORKERS_PER_PROCESS: usize = 2;
const PROCESS: &str = "GRESS_CLUSTER_PROCESS";
const HOSTS: &str = "GRESS_CLUSTER_HOSTS";
const DIR: &str = "GRESS_CLUSTER_DIR";
const PER_PARTITION: &str = "GRESS_CLUSTER_PER_PARTITION";
/// Records per 1 ms of sleep on each worker; 0 for full speed.
const SLOW: &str = "GRESS_CLUSTER_SLOW";
/// How long a process may take to stop once its peer is gone, or to finish
/// a run, before the test kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Record `i` of partition `p`: a key.
fn event(p: usize, i: u64) -> u64 {
    (p as u64 * 7919 + i * 104_729) % KEYS
}

/// The running counts a correct run commits, as a multiset.
fn expected(per_partition: u64) -> BTreeMap<(u64, u64), usize> {
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for p in 0..PARTITIONS {
        for i in 0..per_partition {
            let c = counts.entry(event(p, i)).or_default();
            *c += 1;
            *seen.entry((event(p, i), *c)).or_default() += 1;
        }
    }
    seen
}

fn multiset(records: &[(u64, u64)]) -> BTreeMap<(u64, u64), usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(*r).or_default() += 1;
    }
    m
}

/// The keyed count of the tests, with checkpoints and output under `dir`.
fn job(
    config: JobConfig,
    dir: &Path,
    per_partition: u64,
    slow: u64,
) -> gress_stream::Result<gress_stream::JobReport> {
    let out = dir.join("out");
    let config = config
        .with_workers(WORKERS_PER_PROCESS)
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_epochs(EpochPolicy::Records(5_000));
    run(config, move |job| {
        // Timely builds the dataflow once every process is connected.
        if job.worker_index() % WORKERS_PER_PROCESS == 0 {
            println!("job running");
        }
        let mut n = 0u64;
        job.source(
            "events",
            GeneratorSource::new(PARTITIONS, Some(per_partition), event),
        )?
        .inspect(move |_| {
            n += 1;
            if slow > 0 && n.is_multiple_of(slow) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .key_by(|k| *k)
        .count("count")
        .sink("out", FileSink::new(out.clone()))
    })
}

/// Not a test: one process of the cluster tests.
#[test]
#[ignore = "run by the cluster tests as a child process"]
fn cluster_child() -> R {
    let (Ok(process), Ok(hosts), Some(dir)) = (
        std::env::var(PROCESS),
        std::env::var(HOSTS),
        std::env::var_os(DIR),
    ) else {
        return Ok(());
    };
    let per_partition = std::env::var(PER_PARTITION)?.parse()?;
    let slow = std::env::var(SLOW)?.parse()?;
    let hosts: Vec<String> = hosts.split(',').map(str::to_string).collect();
    println!("child started");
    let config = JobConfig::new("cluster").with_cluster(process.parse()?, hosts);
    let report = job(config, Path::new(&dir), per_partition, slow)?;
    println!("child done {:?}", report.last_committed);
    Ok(())
}

/// Two loopback addresses with ports that were free a moment ago.
fn free_hosts() -> R<Vec<String>> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok(vec![
        a.local_addr()?.to_string(),
        b.local_addr()?.to_string(),
    ])
}

/// A running process of the job; its stdout is drained by a thread, which
/// reports when the job runs (every process is connected) and passes the
/// rest on.
struct Process {
    child: Child,
    running: mpsc::Receiver<()>,
}

fn spawn(
    process: usize,
    hosts: &[String],
    dir: &Path,
    per_partition: u64,
    slow: u64,
) -> R<Process> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "cluster_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROCESS, process.to_string())
        .env(HOSTS, hosts.join(","))
        .env(DIR, dir)
        .env(PER_PARTITION, per_partition.to_string())
        .env(SLOW, slow.to_string())
        // A process whose peer is killed panics on every thread.
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, running) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if line.contains("job running") {
                let _ = tx.send(());
            } else if !line.is_empty() {
                println!("[process {process}] {line}");
            }
        }
    });
    Ok(Process { child, running })
}

/// Waits up to `timeout` for `p` to exit; `None` if it did not.
fn wait_for(p: &mut Process, timeout: Duration) -> R<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = p.child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs both processes to the end; kills both and fails if either takes
/// longer than `RUN_TIMEOUT`.
fn run_to_end(hosts: &[String], dir: &Path, per_partition: u64, slow: u64) -> R {
    let mut processes = [
        spawn(0, hosts, dir, per_partition, slow)?,
        spawn(1, hosts, dir, per_partition, slow)?,
    ];
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut failed = Vec::new();
    for (i, p) in processes.iter_mut().enumerate() {
        match wait_for(p, deadline.saturating_duration_since(Instant::now()))? {
            Some(status) if status.success() => {}
            Some(status) => failed.push(format!("process {i} failed: {status}")),
            None => failed.push(format!("process {i} did not finish in {RUN_TIMEOUT:?}")),
        }
    }
    for p in &mut processes {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; ").into())
    }
}

fn committed_output(dir: &Path) -> R<Vec<(u64, u64)>> {
    let mut all = Vec::new();
    for file in FileSink::committed_files(&dir.join("out"))? {
        for line in std::fs::read_to_string(file)?.lines() {
            all.push(serde_json::from_str::<(u64, u64)>(line)?);
        }
    }
    Ok(all)
}

/// Two processes of two workers each commit the same running counts as one
/// process does, and the commit records name all four workers.
#[test]
fn two_processes_commit_what_one_process_does() -> R {
    const N: u64 = 50_000;
    let one = tempfile::tempdir()?;
    job(JobConfig::new("cluster"), one.path(), N, 0)?;
    let on_one = multiset(&committed_output(one.path())?);
    assert_eq!(on_one, expected(N), "one process");

    let two = tempfile::tempdir()?;
    run_to_end(&free_hosts()?, two.path(), N, 0)?;
    assert_eq!(
        multiset(&committed_output(two.path())?),
        on_one,
        "two processes"
    );
    let storage = gress_checkpoint::LocalStorage::new(two.path().join("checkpoints"))?;
    let commit = latest_commit(&storage)?.ok_or("no commit record")?;
    assert_eq!(commit.workers, 2 * WORKERS_PER_PROCESS);
    assert_eq!(commit.checkpoints.len(), 2 * WORKERS_PER_PROCESS);
    Ok(())
}

/// Either process of a two-process job killed with SIGKILL at a random
/// moment, six times: the other stops by itself (its connection breaks),
/// both are restarted on the same addresses, and the committed output ends
/// equal to an uninterrupted run's.
#[test]
fn a_killed_process_and_a_restart_of_both_recover_exactly() -> R {
    const N: u64 = 300_000;
    const KILLS: usize = 6;
    // 1 ms of sleep per 25 records on each worker, which reads one
    // partition: at least 12 s of running time, more than the kill delays
    // add up to, so that every kill lands while the job runs.
    const SLOW: u64 = 25;
    let dir = tempfile::tempdir()?;
    let hosts = free_hosts()?;
    let started = Instant::now();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut stuck = 0;
    for kill in 0..KILLS {
        let victim = kill % 2;
        let mut processes = [
            spawn(0, &hosts, dir.path(), N, SLOW)?,
            spawn(1, &hosts, dir.path(), N, SLOW)?,
        ];
        for p in &processes {
            p.running.recv_timeout(STOP_TIMEOUT)?;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 700));
        for (i, p) in processes.iter_mut().enumerate() {
            assert!(
                p.child.try_wait()?.is_none(),
                "process {i} ended before kill {kill}"
            );
        }
        processes[victim].child.kill()?;
        processes[victim].child.wait()?;
        let survivor = &mut processes[1 - victim];
        let stopping = Instant::now();
        match wait_for(survivor, STOP_TIMEOUT)? {
            Some(status) => {
                assert!(
                    !status.success(),
                    "process {} reported success after its peer was killed",
                    1 - victim
                );
                println!(
                    "kill {kill}: process {victim} killed; process {} stopped by itself in {:.1?} ({status})",
                    1 - victim,
                    stopping.elapsed()
                );
            }
            None => {
                stuck += 1;
                survivor.child.kill()?;
                survivor.child.wait()?;
                println!(
                    "kill {kill}: process {victim} killed; process {} still ran after {STOP_TIMEOUT:?} and was killed",
                    1 - victim
                );
            }
        }
    }
    run_to_end(&hosts, dir.path(), N, SLOW)?;
    let got = committed_output(dir.path())?;
    assert_eq!(multiset(&got), expected(N), "after {KILLS} kills");
    assert_eq!(
        stuck, 0,
        "a process went on running after its peer was killed"
    );
    println!(
        "{KILLS} kills, {} committed records, {:.1?}",
        got.len(),
        started.elapsed()
    );
    Ok(())
}
