//! A job on two processes (timely's cluster mode, on loopback) commits what
//! it commits on one, and recovers exactly when either process is killed
//! and both are restarted; a job restored from S3 alone (nothing of its
//! first run on local disk) recovers exactly; and a job refuses to run
//! twice on the same checkpoint storage.
//!
//! Each process is this test binary again, running the ignored test
//! `cluster_child` with its settings in the environment. All processes of a
//! job checkpoint into the same storage (a local directory, or a prefix of
//! a bucket on a `moto_server` started by the test): each worker under
//! `workers/<global index>/`, the commit records (written by worker 0)
//! under `commits/`. The output is a `FileSink` in a local directory every
//! process reaches: it stands for the job's output system.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gress_checkpoint::S3Config;
use gress_checkpoint::storage::s3::testing::MotoServer;
use gress_stream::{
    CheckpointStorage, EpochPolicy, FileSink, GeneratorSource, JobConfig, latest_commit, run,
};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const KEYS: u64 = 50;
const PARTITIONS: usize = 4;
const WORKERS_PER_PROCESS: usize = 2;
const PROCESS: &str = "GRESS_CLUSTER_PROCESS";
/// `host:port` of every process, comma-separated; empty for one process
/// outside cluster mode.
const HOSTS: &str = "GRESS_CLUSTER_HOSTS";
/// Where the output goes, under `out/` (and the checkpoints, under
/// `checkpoints/`, unless they go to S3).
const DIR: &str = "GRESS_CLUSTER_DIR";
/// S3 checkpoints: endpoint, bucket and prefix; all three or none.
const S3_ENDPOINT: &str = "GRESS_CLUSTER_S3_ENDPOINT";
const S3_BUCKET: &str = "GRESS_CLUSTER_S3_BUCKET";
const S3_PREFIX: &str = "GRESS_CLUSTER_S3_PREFIX";
const PER_PARTITION: &str = "GRESS_CLUSTER_PER_PARTITION";
/// Stop with a savepoint to this directory once an epoch is committed.
const SAVEPOINT: &str = "GRESS_CLUSTER_SAVEPOINT";
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

/// The final count of every key.
fn final_counts(records: &[(u64, u64)]) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for &(k, c) in records {
        let slot = m.entry(k).or_default();
        *slot = c.max(*slot);
    }
    m
}

fn multiset(records: &[(u64, u64)]) -> BTreeMap<(u64, u64), usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(*r).or_default() += 1;
    }
    m
}

/// Where a job's checkpoints go.
#[derive(Clone)]
enum Store {
    /// `<dir>/checkpoints`.
    Local,
    /// A prefix of a bucket.
    S3(Box<S3Config>),
}

impl Store {
    fn storage(&self, dir: &Path) -> CheckpointStorage {
        match self {
            Store::Local => CheckpointStorage::Local(dir.join("checkpoints")),
            Store::S3(config) => CheckpointStorage::S3((**config).clone()),
        }
    }

    fn env(&self, command: &mut Command) {
        if let Store::S3(config) = self {
            command
                .env(S3_ENDPOINT, config.endpoint.as_deref().unwrap_or_default())
                .env(S3_BUCKET, &config.bucket)
                .env(S3_PREFIX, &config.prefix);
        }
    }

    /// The commit record of the newest committed epoch, if any.
    fn latest_commit(&self, dir: &Path) -> R<Option<gress_stream::CommitRecord>> {
        let root = self.storage(dir).open("")?;
        Ok(latest_commit(&*root)?)
    }
}

/// A bucket of its own on `server` with the job under `prefix`.
fn s3(server: &MotoServer, bucket: &str, prefix: &str) -> R<Store> {
    Ok(Store::S3(Box::new(
        server.bucket(bucket)?.with_prefix(prefix),
    )))
}

/// The keyed count of the tests, with output under `dir/out`.
fn job(
    config: JobConfig,
    dir: &Path,
    store: &Store,
    per_partition: u64,
    slow: u64,
) -> gress_stream::Result<gress_stream::JobReport> {
    let (config, build) = job_parts(config, dir, store, per_partition, slow);
    run(config, build)
}

/// The keyed count's config and dataflow.
fn job_parts(
    config: JobConfig,
    dir: &Path,
    store: &Store,
    per_partition: u64,
    slow: u64,
) -> (
    JobConfig,
    impl Fn(&mut gress_stream::JobBuilder<'_>) -> gress_stream::Result<()> + Send + Sync + 'static,
) {
    let out = dir.join("out");
    let config = config
        .with_workers(WORKERS_PER_PROCESS)
        .with_checkpoints(store.storage(dir))
        .with_epochs(EpochPolicy::Records(5_000));
    let build = move |job: &mut gress_stream::JobBuilder<'_>| {
        // Timely builds the dataflow once every process is connected.
        if job.worker_index().is_multiple_of(WORKERS_PER_PROCESS) {
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
    };
    (config, build)
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
    let hosts: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    let store = match (
        std::env::var(S3_ENDPOINT),
        std::env::var(S3_BUCKET),
        std::env::var(S3_PREFIX),
    ) {
        (Ok(endpoint), Ok(bucket), Ok(prefix)) => Store::S3(Box::new(
            S3Config::new(bucket)
                .with_endpoint(endpoint, "test", "test")
                .with_region("us-east-1")
                .with_prefix(prefix),
        )),
        _ => Store::Local,
    };
    println!("child started");
    let config = JobConfig::new("cluster").with_cluster(process.parse()?, hosts);
    if let Some(savepoint) = std::env::var_os(SAVEPOINT) {
        // Each process is asked on its own, once it knows of a commit.
        let (config, build) = job_parts(
            config.with_metrics_interval(Duration::from_millis(10)),
            Path::new(&dir),
            &store,
            per_partition,
            slow,
        );
        let mut handle = gress_stream::start(config, build)?;
        let deadline = Instant::now() + RUN_TIMEOUT;
        while handle.status().committed_epoch.is_none() {
            if handle.is_finished() || Instant::now() > deadline {
                return Err("no epoch was committed".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let report = handle.stop_with_savepoint(Path::new(&savepoint))?;
        println!(
            "child done {:?} savepoint {:?}",
            report.last_committed,
            report.savepoint.map(|s| s.epoch)
        );
        return Ok(());
    }
    let report = job(config, Path::new(&dir), &store, per_partition, slow)?;
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

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts process `process` of the processes at `hosts` (one process
/// outside cluster mode if `hosts` is empty), in the working directory
/// `cwd`.
#[allow(clippy::too_many_arguments)]
fn spawn(
    process: usize,
    hosts: &[String],
    dir: &Path,
    store: &Store,
    per_partition: u64,
    slow: u64,
    cwd: Option<&Path>,
) -> R<Process> {
    spawn_with(process, hosts, dir, store, per_partition, slow, cwd, None)
}

/// [`spawn`], stopping with a savepoint to `savepoint` once an epoch is
/// committed.
#[allow(clippy::too_many_arguments)]
fn spawn_with(
    process: usize,
    hosts: &[String],
    dir: &Path,
    store: &Store,
    per_partition: u64,
    slow: u64,
    cwd: Option<&Path>,
    savepoint: Option<&Path>,
) -> R<Process> {
    let mut command = Command::new(std::env::current_exe()?);
    command
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
        .stdout(Stdio::piped());
    if let Some(cwd) = cwd {
        command.current_dir(cwd).env("TMPDIR", cwd);
    }
    store.env(&mut command);
    if let Some(savepoint) = savepoint {
        command.env(SAVEPOINT, savepoint);
    }
    let mut child = command.spawn()?;
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

/// Waits for every process to end; fails if one fails or takes longer than
/// `RUN_TIMEOUT` (all are killed then).
fn wait_all(mut processes: Vec<Process>) -> R {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut failed = Vec::new();
    for (i, p) in processes.iter_mut().enumerate() {
        match wait_for(p, deadline.saturating_duration_since(Instant::now()))? {
            Some(status) if status.success() => {}
            Some(status) => failed.push(format!("process {i} failed: {status}")),
            None => failed.push(format!("process {i} did not finish in {RUN_TIMEOUT:?}")),
        }
    }
    drop(processes);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; ").into())
    }
}

/// Runs both processes to the end; kills both and fails if either takes
/// longer than `RUN_TIMEOUT`.
fn run_to_end(hosts: &[String], dir: &Path, store: &Store, per_partition: u64, slow: u64) -> R {
    wait_all(vec![
        spawn(0, hosts, dir, store, per_partition, slow, None)?,
        spawn(1, hosts, dir, store, per_partition, slow, None)?,
    ])
}

fn committed_output(dir: &Path) -> R<Vec<(u64, u64)>> {
    Ok(FileSink::read_committed(&dir.join("out"))?)
}

/// Checks the committed output under `dir` against an uninterrupted run's.
fn check_output(dir: &Path, per_partition: u64, what: &str) -> R<usize> {
    let got = committed_output(dir)?;
    let want = expected(per_partition);
    assert_eq!(multiset(&got), want, "{what}");
    let counts = final_counts(&got);
    assert_eq!(counts.len() as u64, KEYS, "{what}: keys");
    assert_eq!(
        counts.values().sum::<u64>(),
        PARTITIONS as u64 * per_partition,
        "{what}: final counts"
    );
    Ok(got.len())
}

/// A seed for the random choices of a test: `GRESS_CLUSTER_SEED` if set,
/// else the clock; printed so that a failing run can be repeated.
fn seed() -> u64 {
    let seed = std::env::var("GRESS_CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    println!("seed {seed} (GRESS_CLUSTER_SEED to repeat)");
    seed
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Two processes of two workers each commit the same running counts as one
/// process does, and the commit records name all four workers.
#[test]
fn two_processes_commit_what_one_process_does() -> R {
    const N: u64 = 50_000;
    let one = tempfile::tempdir()?;
    job(JobConfig::new("cluster"), one.path(), &Store::Local, N, 0)?;
    let on_one = multiset(&committed_output(one.path())?);
    assert_eq!(on_one, expected(N), "one process");

    let two = tempfile::tempdir()?;
    run_to_end(&free_hosts()?, two.path(), &Store::Local, N, 0)?;
    assert_eq!(
        multiset(&committed_output(two.path())?),
        on_one,
        "two processes"
    );
    let commit = Store::Local
        .latest_commit(two.path())?
        .ok_or("no commit record")?;
    assert_eq!(commit.workers, 2 * WORKERS_PER_PROCESS);
    assert_eq!(commit.checkpoints.len(), 2 * WORKERS_PER_PROCESS);
    Ok(())
}

/// A job of two processes, each asked on its own to stop with a savepoint,
/// writes one savepoint of four workers' parts; a job of one process with
/// three workers goes on from it, and the two commit what one run does.
#[test]
fn two_processes_stop_with_one_savepoint_that_one_process_continues() -> R {
    const N: u64 = 60_000;
    let dir = tempfile::tempdir()?;
    let first = dir.path().join("first");
    let savepoint = dir.path().join("savepoint");
    let hosts = free_hosts()?;
    wait_all(vec![
        spawn_with(
            0,
            &hosts,
            &first,
            &Store::Local,
            N,
            5,
            None,
            Some(&savepoint),
        )?,
        spawn_with(
            1,
            &hosts,
            &first,
            &Store::Local,
            N,
            5,
            None,
            Some(&savepoint),
        )?,
    ])?;
    let info = gress_stream::savepoint::read(&CheckpointStorage::Local(savepoint.clone()))?;
    assert_eq!(info.workers, 2 * WORKERS_PER_PROCESS);
    let stopped = committed_output(&first)?;
    assert!(
        !stopped.is_empty() && stopped.len() < PARTITIONS * N as usize,
        "stopped part-way: {} records",
        stopped.len()
    );

    let second = dir.path().join("second");
    let config = JobConfig::new("cluster-2")
        .from_savepoint(savepoint.clone())
        .with_workers(3);
    let (config, build) = job_parts(config, &second, &Store::Local, N, 0);
    let report = run(config.with_workers(3), build)?;
    assert_eq!(report.from_savepoint, Some(info.epoch));
    let mut all = stopped;
    all.extend(committed_output(&second)?);
    assert_eq!(
        multiset(&all),
        expected(N),
        "the two jobs commit one run's output"
    );
    Ok(())
}

/// Either process of a two-process job checkpointing on S3, chosen at
/// random, killed with SIGKILL at a random moment, ten times: the other
/// stops by itself (its connection breaks), both are restarted on the same
/// addresses, and the committed output ends equal to an uninterrupted
/// run's.
#[test]
fn a_killed_process_and_a_restart_of_both_recover_exactly_from_s3() -> R {
    const N: u64 = 300_000;
    const KILLS: usize = 10;
    // 1 ms of sleep per 25 records on each worker, which reads one
    // partition: at least 12 s of running time, more than the kill delays
    // add up to, so that every kill lands while the job runs.
    const SLOW: u64 = 25;
    let server = MotoServer::start()?;
    let store = s3(&server, "kills", "jobs/cluster")?;
    let dir = tempfile::tempdir()?;
    let hosts = free_hosts()?;
    let started = Instant::now();
    let mut seed = seed();
    let mut stuck = 0;
    let mut victims = [0; 2];
    for kill in 0..KILLS {
        let mut victim = (xorshift(&mut seed) >> 32) as usize % 2;
        if kill == KILLS - 1 && victims[1 - victim] == 0 {
            // Both processes get killed at least once.
            victim = 1 - victim;
        }
        victims[victim] += 1;
        let mut processes = [
            spawn(0, &hosts, dir.path(), &store, N, SLOW, None)?,
            spawn(1, &hosts, dir.path(), &store, N, SLOW, None)?,
        ];
        for p in &processes {
            p.running.recv_timeout(STOP_TIMEOUT)?;
        }
        // Two kills in three after this run has committed an epoch of its
        // own, the others at any moment (while it restores or replays).
        let after_commit = !xorshift(&mut seed).is_multiple_of(3);
        if after_commit {
            let next = store.latest_commit(dir.path())?.map_or(0, |c| c.epoch + 1);
            wait_for_commit(&mut processes[0], &store, dir.path(), next)?;
        }
        std::thread::sleep(Duration::from_millis(xorshift(&mut seed) % 500));
        for (i, p) in processes.iter_mut().enumerate() {
            assert!(
                p.child.try_wait()?.is_none(),
                "process {i} ended before kill {kill}"
            );
        }
        processes[victim].child.kill()?;
        processes[victim].child.wait()?;
        let committed = store.latest_commit(dir.path())?.map(|c| c.epoch);
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
                    "kill {kill} at {:.1?}: process {victim} killed ({}committed epoch {committed:?}); process {} stopped by itself in {:.1?} ({status})",
                    started.elapsed(),
                    if after_commit { "after a commit, " } else { "" },
                    1 - victim,
                    stopping.elapsed()
                );
            }
            None => {
                stuck += 1;
                println!(
                    "kill {kill}: process {victim} killed; process {} still ran after {STOP_TIMEOUT:?} and was killed",
                    1 - victim
                );
            }
        }
    }
    run_to_end(&hosts, dir.path(), &store, N, SLOW)?;
    let records = check_output(dir.path(), N, &format!("after {KILLS} kills"))?;
    assert_eq!(
        stuck, 0,
        "a process went on running after its peer was killed"
    );
    let commit = store.latest_commit(dir.path())?.ok_or("no commit record")?;
    assert_eq!(commit.workers, 2 * WORKERS_PER_PROCESS);
    println!(
        "{KILLS} kills (process 0 {} times, process 1 {} times), {records} committed records, {:.1?}",
        victims[0],
        victims[1],
        started.elapsed()
    );
    Ok(())
}

/// Waits until the job under `dir` has committed epoch `epoch`, while `p`
/// runs.
fn wait_for_commit(p: &mut Process, store: &Store, dir: &Path, epoch: u64) -> R<u64> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(c) = store.latest_commit(dir)?
            && c.epoch >= epoch
        {
            return Ok(c.epoch);
        }
        if let Some(status) = p.child.try_wait()? {
            return Err(format!("the job ended ({status}) before committing epoch {epoch}").into());
        }
        if Instant::now() >= deadline {
            return Err(format!("no commit of epoch {epoch} in {STOP_TIMEOUT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A job checkpointing on S3 is killed after some commits; it is restarted
/// as if on another machine: in a new, empty working directory (and temp
/// directory), with new memory backends, nothing of the first run on local
/// disk but the output (the job's output system). It recovers from S3 and
/// commits exactly what an uninterrupted run does.
#[test]
fn a_job_restored_on_another_machine_from_s3_only_recovers_exactly() -> R {
    const N: u64 = 60_000;
    // 1 ms of sleep per 25 records on each worker (two partitions each):
    // about 5 s of running time.
    const SLOW: u64 = 25;
    let started = Instant::now();
    let server = MotoServer::start()?;
    let store = s3(&server, "moved", "jobs/moved")?;
    let output = tempfile::tempdir()?;
    let first_machine = tempfile::tempdir()?;
    let mut first = spawn(
        0,
        &[],
        output.path(),
        &store,
        N,
        SLOW,
        Some(first_machine.path()),
    )?;
    first.running.recv_timeout(STOP_TIMEOUT)?;
    let committed = wait_for_commit(&mut first, &store, output.path(), 2)?;
    first.child.kill()?;
    let status = first.child.wait()?;
    assert!(!status.success(), "the first run finished before the kill");
    drop(first);
    let before = committed_output(output.path())?.len();
    assert!(before > 0, "nothing committed before the kill");
    assert!(
        before < PARTITIONS * N as usize,
        "everything committed before the kill"
    );
    println!(
        "first run killed after committing epoch {committed}, {before} records, at {:.1?}",
        started.elapsed()
    );
    // The first machine is gone.
    first_machine.close()?;

    let second_machine = tempfile::tempdir()?;
    let second = spawn(
        0,
        &[],
        output.path(),
        &store,
        N,
        SLOW,
        Some(second_machine.path()),
    )?;
    wait_all(vec![second])?;
    let records = check_output(output.path(), N, "restored from S3 on another machine")?;
    let commit = store
        .latest_commit(output.path())?
        .ok_or("no commit record")?;
    assert_eq!(commit.workers, WORKERS_PER_PROCESS);
    assert!(commit.epoch > committed);
    println!(
        "restored from epoch {committed}: {records} committed records, {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// While a job runs (a process of its own), the same job started again on
/// the same checkpoint storage (S3, and a local directory) fails at once
/// with `LocationInUse`: each worker's checkpoint location is held under a
/// live lease. The running job goes on and commits exactly.
#[test]
fn a_running_job_refuses_to_start_twice_on_the_same_checkpoint_storage() -> R {
    const N: u64 = 60_000;
    const SLOW: u64 = 25;
    let started = Instant::now();
    let server = MotoServer::start()?;
    let stores = [
        ("S3", s3(&server, "twice", "jobs/twice")?),
        ("local", Store::Local),
    ];
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let mut firsts = Vec::new();
    for ((_, store), dir) in stores.iter().zip(&dirs) {
        firsts.push(spawn(0, &[], dir.path(), store, N, SLOW, None)?);
    }
    for (((what, store), dir), first) in stores.iter().zip(&dirs).zip(&mut firsts) {
        first.running.recv_timeout(STOP_TIMEOUT)?;
        // Every worker's manager holds its location once an epoch commits.
        wait_for_commit(first, store, dir.path(), 0)?;
        let trying = Instant::now();
        let second = job(JobConfig::new("cluster"), dir.path(), store, N, 0);
        let took = trying.elapsed();
        match &second {
            Err(gress_stream::Error::Checkpoint(gress_checkpoint::Error::LocationInUse {
                holder,
                lease_ms,
                ..
            })) => {
                assert!(
                    holder.contains(&format!("pid {}", first.child.id())),
                    "{what}: held by {holder}"
                );
                println!(
                    "{what}: the second start failed in {took:.1?}: {} (lease {lease_ms} ms)",
                    second
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                );
            }
            other => panic!("{what}: a second run of a running job: {other:?}"),
        }
        assert!(
            took < Duration::from_secs(10),
            "{what}: took {took:?} to fail"
        );
        assert!(
            first.child.try_wait()?.is_none(),
            "{what}: the first run ended when the second started"
        );
    }
    wait_all(firsts)?;
    for ((what, _), dir) in stores.iter().zip(&dirs) {
        check_output(dir.path(), N, &format!("{what}: the first run"))?;
    }
    println!("{:.1?}", started.elapsed());
    Ok(())
}
