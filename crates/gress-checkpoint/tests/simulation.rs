//! Deterministic simulation of the checkpoint manager.
//!
//! Each schedule is a seeded random sequence of writes to two memory
//! backends, checkpoints begun, committed out of order or abandoned,
//! restores, manager reopens, process crashes (everything in memory
//! dropped mid-operation), savepoints, and storage faults (failed, torn and
//! lost-acknowledgement writes, failed and corrupted reads) injected at
//! random. After every step the storage itself is checked (without
//! faults): every readable manifest in it restores exactly the state that
//! was cut for that id, every checkpoint reported `Ok` is still there
//! unless at least `retain` newer ones are, and no manifest or file another
//! manifest needs was deleted.
//!
//! A failing schedule prints its seed; rerun it alone with
//! `GRESS_SIM_SEED=<seed> cargo nextest run --release -p gress-checkpoint
//! -E 'test(simulation)' --no-capture`. `GRESS_SIM_SCHEDULES` sets how
//! many schedules run (default 10,000).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gress_checkpoint::storage::fault::{FaultKind, FaultRates, FaultyStorage};
use gress_checkpoint::storage::memory::MemoryStorage;
use gress_checkpoint::{
    Catalog, CheckpointConfig, CheckpointManager, Error, Metadata, PendingCheckpoint, Storage,
};
use gress_state::{Checkpointable, KeyRange, MemoryConfig, MemoryStateBackend, StateBackend};

type Dump = Vec<(Vec<u8>, Vec<u8>)>;
const NAMES: [&str; 2] = ["a", "b"];

/// SplitMix64: small and seedable; a schedule only has to reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

fn backend() -> Arc<MemoryStateBackend> {
    Arc::new(
        MemoryStateBackend::new(
            MemoryConfig::default()
                .with_shards(4)
                .with_cleanup_interval(std::time::Duration::ZERO),
        )
        .expect("valid config"),
    )
}

fn dump(b: &dyn StateBackend) -> Dump {
    b.scan(KeyRange::all())
        .expect("scan")
        .collect::<gress_state::Result<_>>()
        .expect("scan item")
}

/// Counts of what a run did, for the report.
#[derive(Default, Debug)]
struct Totals {
    schedules: u64,
    steps: u64,
    faults: u64,
    committed: u64,
    failed_commits: u64,
    restores: u64,
    crashes: u64,
    reopens: u64,
    checks: u64,
}

struct World {
    rng: Rng,
    storage: Arc<FaultyStorage<MemoryStorage>>,
    config: CheckpointConfig,
    backends: Vec<Arc<MemoryStateBackend>>,
    manager: Option<CheckpointManager>,
    pending: Vec<PendingCheckpoint>,
    /// Managers taken over by a newer one while still running, with the
    /// checkpoints they had in flight.
    fenced: Vec<(CheckpointManager, Vec<PendingCheckpoint>)>,
    /// The state of each backend at the cut of each checkpoint id.
    cut: BTreeMap<u64, Vec<Dump>>,
    /// The state at each savepoint.
    savepoints: BTreeMap<String, Vec<Dump>>,
    /// Ids whose commit returned `Ok`.
    ok: BTreeSet<u64>,
    /// Whether reads may come back corrupted (then an intact newest
    /// checkpoint can look damaged, and recovery may fall back past it).
    corrupt_reads: bool,
    log: Vec<String>,
    totals: Totals,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let mut config = CheckpointConfig::default()
            .with_retain(1 + rng.below(3) as usize)
            .with_max_in_flight(1 + rng.below(3) as usize)
            .with_parallelism(1)
            .with_lease(None);
        config.max_deltas = 1 + rng.below(4) as u32;
        config.max_delta_ratio = [0.1, 0.5, 10.0][rng.below(3) as usize];
        config.incremental = !rng.chance(100);
        let corrupt_reads = rng.chance(300);
        let rates = FaultRates {
            fail: rng.below(40_000) as u32,
            tear: rng.below(20_000) as u32,
            lost_ack: rng.below(40_000) as u32,
            read_fail: rng.below(40_000) as u32,
            read_corrupt: if corrupt_reads {
                rng.below(20_000) as u32
            } else {
                0
            },
        };
        let storage = Arc::new(FaultyStorage::new(MemoryStorage::new()));
        storage.keep_log(false);
        storage.randomize(Some((rng.next(), rates)));
        let mut world = World {
            rng,
            storage,
            config,
            backends: vec![backend(), backend()],
            manager: None,
            pending: Vec::new(),
            fenced: Vec::new(),
            cut: BTreeMap::new(),
            savepoints: BTreeMap::new(),
            ok: BTreeSet::new(),
            corrupt_reads,
            log: Vec::new(),
            totals: Totals::default(),
        };
        world
            .log
            .push(format!("config {:?} rates {rates:?}", world.config));
        world.open();
        world
    }

    fn dumps(&self) -> Vec<Dump> {
        self.backends.iter().map(|b| dump(&**b)).collect()
    }

    fn open(&mut self) {
        let storage: Arc<dyn Storage> = self.storage.clone();
        match CheckpointManager::open(storage, self.config.clone()) {
            Ok(m) => {
                for (name, b) in NAMES.iter().zip(&self.backends) {
                    m.register(name, b.clone()).expect("register");
                }
                self.log.push(format!(
                    "open: ok, report {:?}",
                    m.open_report().restore_incomplete
                ));
                self.manager = Some(m);
            }
            Err(e) => self.log.push(format!("open: {e}")),
        }
    }

    fn step(&mut self) {
        self.totals.steps += 1;
        if self.manager.is_none() {
            self.open();
            return;
        }
        match self.rng.below(100) {
            0..=29 => self.write(),
            30..=41 => self.begin(),
            42..=53 => self.commit(),
            54..=57 => {
                if !self.pending.is_empty() {
                    let i = self.rng.below(self.pending.len() as u64) as usize;
                    let p = self.pending.remove(i);
                    self.log.push(format!("abandon {}", p.id()));
                }
            }
            58..=65 => {
                self.begin();
                let last = self.pending.len().saturating_sub(1);
                self.commit_at(last);
            }
            66..=73 => self.restore_latest(),
            74..=77 => self.restore_id(),
            78..=82 => self.reopen(),
            83..=86 => self.crash(),
            87..=88 => self.savepoint(),
            89..=90 => self.restore_savepoint(),
            95..=96 => self.take_over(),
            97 => self.fenced_commit(),
            91..=94 => {
                // The process dies at one of the next few storage writes,
                // in the middle of whatever it is doing then.
                let n = 1 + self.rng.below(6);
                self.log.push(format!("crash at write +{n}"));
                self.storage.arm(n, FaultKind::Crash);
            }
            _ => self.write(),
        }
        if self.storage.is_crashed() {
            self.crash();
        }
    }

    fn write(&mut self) {
        let b = self.rng.below(2) as usize;
        for _ in 0..1 + self.rng.below(6) {
            let key = format!("k{:02}", self.rng.below(24));
            if self.rng.chance(200) {
                self.backends[b].delete(key.as_bytes()).expect("delete");
            } else {
                let value = format!("v{}", self.rng.below(1_000_000));
                self.backends[b]
                    .put(key.as_bytes(), value.as_bytes())
                    .expect("put");
            }
        }
    }

    fn begin(&mut self) {
        let Some(m) = &self.manager else { return };
        let before = self.dumps();
        match m.begin_checkpoint(Metadata::new()) {
            Ok(p) => {
                self.log.push(format!("begin {}", p.id()));
                self.cut.insert(p.id(), before);
                self.pending.push(p);
            }
            Err(e) => self.log.push(format!("begin: {e}")),
        }
    }

    fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let i = self.rng.below(self.pending.len() as u64) as usize;
        self.commit_at(i);
    }

    fn commit_at(&mut self, i: usize) {
        if i >= self.pending.len() {
            return;
        }
        let p = self.pending.remove(i);
        let id = p.id();
        match p.commit() {
            Ok(report) => {
                assert_eq!(report.info.id, id);
                self.log.push(format!("commit {id}: ok"));
                self.ok.insert(id);
                self.totals.committed += 1;
            }
            Err(e) => {
                self.log.push(format!("commit {id}: {e}"));
                self.totals.failed_commits += 1;
            }
        }
    }

    fn restore_latest(&mut self) {
        let Some(m) = &self.manager else { return };
        let before = self.dumps();
        let result = m.restore_latest();
        let after = self.dumps();
        match result {
            Ok(info) => {
                self.log.push(format!("restore_latest: {}", info.id));
                self.totals.restores += 1;
                assert_eq!(
                    Some(&after),
                    self.cut.get(&info.id),
                    "restore_latest gave checkpoint {} with a state it never had",
                    info.id
                );
                if let Some(&newest_ok) = self.ok.last()
                    && !self.corrupt_reads
                {
                    assert!(
                        info.id >= newest_ok,
                        "restore_latest rolled back to {} past {newest_ok}, which was committed",
                        info.id
                    );
                }
            }
            Err(e) => {
                self.log.push(format!("restore_latest: {e}"));
                assert_eq!(before, after, "a failed restore changed the state: {e}");
                if let Error::NothingToRestore = e {
                    assert!(
                        self.storage
                            .inner()
                            .list("manifests/")
                            .expect("list")
                            .is_empty(),
                        "NothingToRestore with manifests in storage"
                    );
                }
            }
        }
    }

    fn restore_id(&mut self) {
        let Some(m) = &self.manager else { return };
        let Some(&id) = self
            .cut
            .keys()
            .nth(self.rng.below(self.cut.len() as u64) as usize)
        else {
            return;
        };
        let before = self.dumps();
        match m.restore(id) {
            Ok(info) => {
                self.log.push(format!("restore {id}: ok"));
                assert_eq!(info.id, id);
                assert_eq!(Some(&self.dumps()), self.cut.get(&id), "restore {id}");
            }
            Err(e) => {
                self.log.push(format!("restore {id}: {e}"));
                assert_eq!(
                    before,
                    self.dumps(),
                    "a failed restore changed the state: {e}"
                );
            }
        }
    }

    fn savepoint(&mut self) {
        let Some(m) = &self.manager else { return };
        let name = format!("sp-{}", self.rng.below(4));
        let before = self.dumps();
        match m.trigger_savepoint(&name, Metadata::new()) {
            Ok(_) => {
                self.log.push(format!("savepoint {name}: ok"));
                self.savepoints.insert(name, before);
            }
            Err(e) => self.log.push(format!("savepoint {name}: {e}")),
        }
    }

    fn restore_savepoint(&mut self) {
        let Some(m) = &self.manager else { return };
        let Some(name) = self
            .savepoints
            .keys()
            .nth(self.rng.below(self.savepoints.len() as u64) as usize)
            .cloned()
        else {
            return;
        };
        let before = self.dumps();
        match m.restore_savepoint(&name) {
            Ok(_) => {
                self.log.push(format!("restore savepoint {name}: ok"));
                assert_eq!(Some(&self.dumps()), self.savepoints.get(&name));
            }
            Err(e) => {
                self.log.push(format!("restore savepoint {name}: {e}"));
                assert_eq!(before, self.dumps(), "a failed restore changed the state");
            }
        }
    }

    /// A second deployment opens the location while this one still runs,
    /// with checkpoints in flight: it takes over (no lease in these runs)
    /// and carries on from the newest checkpoint on its own backends.
    fn take_over(&mut self) {
        let Some(old) = self.manager.take() else {
            return;
        };
        self.log.push("take over".into());
        let pending = std::mem::take(&mut self.pending);
        self.fenced.push((old, pending));
        self.backends = vec![backend(), backend()];
        self.open();
        if self.manager.is_some() {
            self.restore_latest();
        }
    }

    /// A manager that was taken over tries to finish a checkpoint: it must
    /// not publish (and must not have deleted anything the new one needs,
    /// which `check` verifies).
    fn fenced_commit(&mut self) {
        let Some((_, pending)) = self.fenced.last_mut() else {
            return;
        };
        let Some(p) = pending.pop() else { return };
        let id = p.id();
        match p.commit() {
            Ok(_) => panic!("checkpoint {id} of a manager that was taken over was published"),
            Err(e) => self.log.push(format!("fenced commit {id}: {e}")),
        }
    }

    fn reopen(&mut self) {
        self.log.push("reopen".into());
        self.totals.reopens += 1;
        self.pending.clear();
        self.manager = None;
        self.open();
    }

    /// The process dies: nothing in memory survives, and no call of the
    /// dying process reaches the storage any more.
    fn crash(&mut self) {
        self.log.push("crash".into());
        self.totals.crashes += 1;
        self.storage.crash();
        self.pending.clear();
        self.fenced.clear();
        self.manager = None;
        self.storage.revive();
        self.storage.disarm_crash();
        self.backends = vec![backend(), backend()];
        self.open();
    }

    /// What must hold of the storage after every step, read without faults.
    fn check(&mut self) {
        self.totals.checks += 1;
        let inner: Arc<dyn Storage> = Arc::new(Plain(self.storage.clone()));
        let catalog = Catalog::open(inner).unwrap_or_else(|e| panic!("catalog: {e}"));
        let readable: Vec<u64> = catalog.checkpoints().iter().map(|c| c.id).collect();
        for &id in &readable {
            let fresh = [backend(), backend()];
            let targets: [(&str, &dyn Checkpointable); 2] = [("a", &*fresh[0]), ("b", &*fresh[1])];
            catalog
                .restore_into(id, &targets, false)
                .unwrap_or_else(|e| {
                    panic!("manifest {id} is in storage but does not restore: {e}")
                });
            let got: Vec<Dump> = fresh.iter().map(|b| dump(&**b)).collect();
            assert_eq!(
                Some(&got),
                self.cut.get(&id),
                "checkpoint {id} restores a state that was never cut"
            );
        }
        let retain = self.config.retain;
        for &id in &self.ok {
            if readable.contains(&id) {
                continue;
            }
            let newer = readable.iter().filter(|&&r| r > id).count();
            assert!(
                newer >= retain,
                "checkpoint {id} was committed and is gone with only {newer} newer kept (retain {retain})"
            );
        }
    }
}

/// The wrapped storage, without faults: what is really stored.
#[derive(Debug)]
struct Plain(Arc<FaultyStorage<MemoryStorage>>);

impl Storage for Plain {
    fn put(
        &self,
        path: &str,
        write: &mut gress_checkpoint::storage::PutFn<'_>,
    ) -> gress_checkpoint::Result<()> {
        self.0.inner().put(path, write)
    }
    fn put_new(&self, path: &str, bytes: &[u8]) -> gress_checkpoint::Result<()> {
        self.0.inner().put_new(path, bytes)
    }
    fn open(&self, path: &str) -> gress_checkpoint::Result<Box<dyn std::io::Read + Send + '_>> {
        self.0.inner().open(path)
    }
    fn list(
        &self,
        prefix: &str,
    ) -> gress_checkpoint::Result<Vec<gress_checkpoint::storage::ObjectMeta>> {
        self.0.inner().list(prefix)
    }
    fn delete(&self, path: &str) -> gress_checkpoint::Result<()> {
        self.0.inner().delete(path)
    }
}

fn run_schedule(seed: u64, totals: &mut Totals) {
    let mut world = World::new(seed);
    let steps = 20 + world.rng.below(60);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..steps {
            world.step();
            world.check();
        }
        // Faults off, one clean reopen: the sweep leaves no garbage but
        // what a damaged manifest protects.
        world.storage.disarm();
        world.reopen();
        world.check();
        if let Some(m) = &world.manager {
            let protected = m.open_report().damaged.iter().map(|d| d.id).max();
            let catalog = Catalog::open(Arc::new(Plain(world.storage.clone()))).expect("catalog");
            let mut named = BTreeSet::new();
            for c in catalog.checkpoints() {
                let man = catalog.manifest(c.id).expect("manifest");
                named.extend(man.paths().map(|f| f.path.clone()));
            }
            for area in ["shared/", "checkpoints/"] {
                for o in world.storage.inner().list(area).expect("list") {
                    let owner = gress_checkpoint::manifest::owner_of(&o.path);
                    let kept_for_damage = owner.zip(protected).is_some_and(|(o, d)| o <= d);
                    assert!(
                        named.contains(&o.path) || kept_for_damage,
                        "garbage left after a clean open: {}",
                        o.path
                    );
                }
            }
        }
    }));
    totals.faults += world.storage.injected();
    totals.committed += world.totals.committed;
    totals.failed_commits += world.totals.failed_commits;
    totals.restores += world.totals.restores;
    totals.crashes += world.totals.crashes;
    totals.reopens += world.totals.reopens;
    totals.steps += world.totals.steps;
    totals.checks += world.totals.checks;
    totals.schedules += 1;
    if let Err(panic) = outcome {
        let all = std::env::var("GRESS_SIM_SEED").is_ok();
        let shown = if all { world.log.len() } else { 40 };
        eprintln!("schedule with seed {seed} failed; steps, oldest first:");
        for line in &world.log[world.log.len().saturating_sub(shown)..] {
            eprintln!("  {line}");
        }
        eprintln!(
            "reproduce: GRESS_SIM_SEED={seed} cargo nextest run --release -p gress-checkpoint -E 'test(simulation)' --no-capture"
        );
        std::panic::resume_unwind(panic);
    }
}

/// Runs the schedules (or the one `GRESS_SIM_SEED` names) on two threads
/// and reports what they did.
#[test]
fn simulation_of_checkpoints_under_faults() {
    if let Ok(seed) = std::env::var("GRESS_SIM_SEED") {
        let seed: u64 = seed.parse().expect("GRESS_SIM_SEED is a number");
        let mut totals = Totals::default();
        run_schedule(seed, &mut totals);
        println!("{totals:?}");
        return;
    }
    let schedules: u64 = std::env::var("GRESS_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let threads = 2;
    let results: Vec<Totals> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut totals = Totals::default();
                    let mut seed = t;
                    while seed < schedules {
                        run_schedule(seed, &mut totals);
                        seed += threads;
                    }
                    totals
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("a schedule failed (its seed is printed above)")
            })
            .collect()
    });
    let mut all = Totals::default();
    for t in results {
        all.schedules += t.schedules;
        all.steps += t.steps;
        all.faults += t.faults;
        all.committed += t.committed;
        all.failed_commits += t.failed_commits;
        all.restores += t.restores;
        all.crashes += t.crashes;
        all.reopens += t.reopens;
        all.checks += t.checks;
    }
    println!(
        "simulation: {} schedules, {} steps, {} faults injected, {} checkpoints committed, {} failed, {} restores, {} crashes, {} reopens, {} invariant checks",
        all.schedules,
        all.steps,
        all.faults,
        all.committed,
        all.failed_commits,
        all.restores,
        all.crashes,
        all.reopens,
        all.checks
    );
    assert!(
        all.committed > all.schedules,
        "too few checkpoints committed"
    );
    assert!(all.faults > all.schedules, "too few faults injected");
}
