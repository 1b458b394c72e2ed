//! Crash safety: a write failed or torn at every step of the commit, and a
//! process killed with SIGKILL at random moments while it checkpoints. In
//! every case recovery restores exactly the last committed checkpoint.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use gress_checkpoint::manifest;
use gress_checkpoint::storage::fault::{FaultKind, FaultyStorage};
use gress_checkpoint::{CheckpointConfig, LocalStorage, Storage};
use gress_state::MemoryStateBackend;

type R = Result<(), Box<dyn std::error::Error>>;

/// For every write of a checkpoint (data files, manifest, retention
/// deletes) and each way it can go wrong, recovery in a new process gives
/// the previous checkpoint if the commit reported an error, the new one if
/// it reported success, and the orphans are gone, except the files a torn
/// (damaged) manifest could still name, which are kept with it.
#[test]
fn every_step_of_the_commit_can_fail() -> R {
    for kind in [
        FaultKind::Fail,
        FaultKind::Tear,
        FaultKind::Crash,
        FaultKind::LostAck,
    ] {
        let mut step = 1;
        loop {
            let dir = tempfile::tempdir()?;
            let faulty = Arc::new(FaultyStorage::new(LocalStorage::new(dir.path())?));
            let config = CheckpointConfig::default().with_retain(1);
            let (a, b) = (
                Arc::new(MemoryStateBackend::default()),
                Arc::new(MemoryStateBackend::default()),
            );
            let m = manager(faulty.clone(), config.clone());
            m.register("a", a.clone())?;
            m.register("b", b.clone())?;
            apply_round(&*a, 1);
            apply_round(&*b, 101);
            m.trigger_checkpoint(metadata(1))?;
            apply_round(&*a, 2);
            apply_round(&*b, 102);
            let writes_before = faulty.writes();
            faulty.arm(step, kind);
            let result = m.trigger_checkpoint(metadata(2));
            let writes = faulty.writes() - writes_before;
            drop(m);

            // A new process: plain storage, fresh backends.
            let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path())?);
            let (a2, b2) = (
                Arc::new(MemoryStateBackend::default()),
                Arc::new(MemoryStateBackend::default()),
            );
            let m2 = manager(storage.clone(), config);
            m2.register("a", a2.clone())?;
            m2.register("b", b2.clone())?;
            let info = m2.restore_latest()?;
            let committed = if result.is_ok() { 2 } else { 1 };
            assert_eq!(
                round_of(&info.metadata),
                committed,
                "{kind:?} at write {step}: {:?}",
                faulty.log()
            );
            assert_eq!(
                dump(&*a2),
                expected_after(committed),
                "{kind:?} at write {step}"
            );
            assert_eq!(
                dump(&*b2),
                expected_after_b(committed),
                "{kind:?} at write {step}"
            );
            // Only files of the kept checkpoint remain.
            let stored: Vec<_> = storage
                .list(manifest::PRIVATE)?
                .into_iter()
                .chain(storage.list(manifest::SHARED)?)
                .map(|o| o.path)
                .collect();
            let man = manifest::Manifest::decode(
                &storage.read_all(&manifest::manifest_path(info.id), 1 << 20)?,
                "m",
            )?;
            let max_damaged = m2.open_report().damaged.iter().map(|d| d.id).max();
            for path in &stored {
                let protected = manifest::owner_of(path)
                    .zip(max_damaged)
                    .is_some_and(|(owner, damaged)| owner <= damaged);
                assert!(
                    protected || man.paths().any(|f| &f.path == path),
                    "{kind:?} at write {step}: orphan {path}"
                );
            }
            if step > writes {
                // The fault fell after the last write: every step was covered.
                assert!(result.is_ok());
                break;
            }
            step += 1;
        }
        assert!(step >= 4, "{kind:?}: only {step} writes in a checkpoint");
    }
    Ok(())
}

fn expected_after_b(rounds: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let b = MemoryStateBackend::default();
    for r in 1..=rounds {
        apply_round(&b, 100 + r);
    }
    dump(&b)
}

const ROLE: &str = "GRESS_CHECKPOINT_CHILD";
const PATH: &str = "GRESS_CHECKPOINT_PATH";

/// Not a test: the body of the child process `killed_at_random_moments`
/// starts. It recovers from the last checkpoint, then applies rounds of
/// writes while a periodic checkpoint runs every 5 ms.
#[test]
#[ignore = "run by killed_at_random_moments as a child process"]
fn child() -> R {
    let (Ok(_), Some(path)) = (std::env::var(ROLE), std::env::var_os(PATH)) else {
        return Ok(());
    };
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(
        local(std::path::Path::new(&path)),
        CheckpointConfig::default()
            .with_interval(Duration::from_millis(5))
            .with_retain(2),
    );
    m.register("s", state.clone())?;
    if m.latest().is_some() {
        m.restore_latest()?;
    }
    let round = Arc::new(AtomicU64::new(state_round(&*state)));
    let meta_round = round.clone();
    m.start_periodic(move || metadata(meta_round.load(Ordering::SeqCst)))?;
    println!("started at round {}", round.load(Ordering::SeqCst));
    loop {
        let r = round.load(Ordering::SeqCst) + 1;
        apply_round_batch(&*state, r);
        round.store(r, Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A child checkpoints periodically while writing and is killed with
/// SIGKILL at random moments, 25 times; after each kill the newest
/// checkpoint restores, and its state is exactly a whole round, the one
/// it records, never a partial write.
#[test]
fn killed_at_random_moments() -> R {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut last_round = 0;
    for kill in 0..25 {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, "1")
            .env(PATH, dir.path())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(out).lines();
        // libtest's own lines come first.
        let started = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("started at round")));
        assert!(started.is_some(), "the child never started");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(10 + seed % 150));
        child.kill()?;
        child.wait()?;

        let storage = local(dir.path());
        let newest = storage
            .list(manifest::MANIFESTS)?
            .iter()
            .filter_map(|o| manifest::id_of_manifest_path(&o.path))
            .max();
        let state = Arc::new(MemoryStateBackend::default());
        let m = manager(storage, CheckpointConfig::default().with_retain(2));
        m.register("s", state.clone())?;
        let Some(newest) = newest else {
            continue;
        };
        let info = m.restore_latest()?;
        assert_eq!(
            info.id, newest,
            "kill {kill}: the newest checkpoint did not restore"
        );
        let round = state_round(&*state);
        assert!(
            round_of(&info.metadata) <= round,
            "kill {kill}: metadata ahead of state"
        );
        assert!(
            round >= last_round,
            "kill {kill}: went back from {last_round} to {round}"
        );
        assert_eq!(
            dump(&*state),
            expected_after_batches(round),
            "kill {kill}: not a whole round"
        );
        last_round = round;
    }
    assert!(last_round > 0, "no checkpoint was ever committed");
    println!("25 kills; recovered up to round {last_round}");
    Ok(())
}
