//! The checkpoint manager on the memory backend and local storage: commit,
//! restore, incremental deltas, retention, fallback past damage, hostile
//! manifests, savepoints, periodic mode.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gress_checkpoint::manifest::{self, BackendEntry, FileEntry, Manifest};
use gress_checkpoint::{CheckpointConfig, CheckpointManager, Error, Metadata, Storage};
use gress_state::{MemoryConfig, MemoryStateBackend, StateBackend};

type R = Result<(), Box<dyn std::error::Error>>;

/// A checkpoint restores exactly the state and the metadata it was taken
/// with, replacing whatever came after.
#[test]
fn checkpoint_restores_state_and_metadata() -> R {
    let dir = tempfile::tempdir()?;
    let a = Arc::new(MemoryStateBackend::default());
    let b = Arc::new(MemoryStateBackend::default());
    let m = manager(local(dir.path()), CheckpointConfig::default());
    m.register("left", a.clone())?;
    m.register("right", b.clone())?;
    apply_round(&*a, 1);
    b.put(b"offset", b"17")?;
    let report = m.trigger_checkpoint(metadata(1))?;
    assert_eq!(report.info.backends.len(), 2);
    let (before_a, before_b) = (dump(&*a), dump(&*b));

    apply_round(&*a, 2);
    b.delete(b"offset")?;
    b.put(b"new", b"x")?;
    let info = m.restore_latest()?;
    assert_eq!(info.id, report.info.id);
    assert_eq!(round_of(&info.metadata), 1);
    assert_eq!(dump(&*a), before_a);
    assert_eq!(dump(&*b), before_b);
    assert!(matches!(
        m.restore(999),
        Err(Error::NoSuchCheckpoint { id: 999 })
    ));
    Ok(())
}

fn digest(b: &dyn StateBackend) -> (usize, u64) {
    let all = dump(b);
    let mut h = 0u64;
    for (k, v) in &all {
        h = h.wrapping_add(
            u64::from(crc32c::crc32c(&[k.as_slice(), v.as_slice()].concat())) << 7 ^ k.len() as u64,
        );
    }
    (all.len(), h)
}

/// After 1% of a 1M-key state changes, an incremental checkpoint writes
/// about 1% of a full one's bytes, and every retained checkpoint restores
/// exactly the state it was taken from.
#[test]
fn incremental_checkpoint_of_one_percent_writes_one_percent() -> R {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir()?;
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(
        local(dir.path()),
        CheckpointConfig::default().with_retain(3),
    );
    m.register("state", state.clone())?;
    let value = [7u8; 100];
    for i in 0..N {
        state.put(&i.to_be_bytes(), &value)?;
    }
    let full = m.trigger_checkpoint(metadata(0))?;
    let mut digests = vec![(full.info.id, digest(&*state))];
    let mut ratios = Vec::new();
    for round in 1..=2u64 {
        // 1% of the keys: 0.9% overwritten, 0.1% deleted.
        for j in 0..N / 100 {
            let k = (j * 97 + round * 13) % N;
            if j % 10 == 0 {
                state.delete(&k.to_be_bytes())?;
            } else {
                state.put(&k.to_be_bytes(), &[round as u8; 100])?;
            }
        }
        let delta = m.trigger_checkpoint(metadata(round))?;
        ratios.push(delta.bytes_written as f64 / full.bytes_written as f64);
        digests.push((delta.info.id, digest(&*state)));
    }
    println!(
        "full checkpoint {} bytes; 1% deltas wrote {:.4} and {:.4} of that",
        full.bytes_written, ratios[0], ratios[1]
    );
    for r in &ratios {
        assert!((0.005..0.02).contains(r), "delta/full ratio {r}");
    }
    let catalog = gress_checkpoint::Catalog::open(m.storage().clone())?;
    for (id, expected) in digests {
        let fresh = MemoryStateBackend::default();
        catalog.restore_into(id, &[("state", &fresh)], false)?;
        assert_eq!(digest(&fresh), expected, "checkpoint {id}");
    }
    Ok(())
}

/// Delta chains carry deletes and TTLs and give way to a full checkpoint
/// after `max_deltas`; each link restores the state it was taken from.
#[test]
fn delta_chains_restart_after_max_deltas() -> R {
    let dir = tempfile::tempdir()?;
    let clock = gress_state::ManualClock::shared(1_000);
    let state = Arc::new(MemoryStateBackend::new(
        MemoryConfig::default().with_clock(clock.clone()),
    )?);
    let mut config = CheckpointConfig::default().with_retain(10);
    config.max_deltas = 2;
    // Only the delta count decides here; the size rule is tested below.
    config.max_delta_ratio = 1e9;
    let m = manager(local(dir.path()), config);
    m.register("s", state.clone())?;
    let mut expected = Vec::new();
    for round in 1..=7u64 {
        apply_round(&*state, round);
        state.put_with_ttl(
            format!("ttl-{round}").as_bytes(),
            b"x",
            Duration::from_millis(10),
        )?;
        let r = m.trigger_checkpoint(metadata(round))?;
        expected.push((
            r.info.id,
            dump(&*state),
            r.info.backends[0].3,
            gress_state::Clock::now_ms(&*clock),
        ));
        clock.advance(Duration::from_millis(5));
    }
    let chain: Vec<u32> = expected.iter().map(|e| e.2).collect();
    assert_eq!(chain, vec![0, 1, 2, 0, 1, 2, 0]);
    // Read beside the running manager, through the read-only catalog.
    let catalog = gress_checkpoint::Catalog::open(m.storage().clone())?;
    for (id, state_then, _, at) in &expected {
        let fresh = MemoryStateBackend::new(MemoryConfig::default().with_clock(clock.clone()))?;
        clock.set(*at);
        catalog.restore_into(*id, &[("s", &fresh)], false)?;
        assert_eq!(dump(&fresh), *state_then, "checkpoint {id}");
    }
    Ok(())
}

/// Every data file in the location, sorted.
fn stored_files(storage: &Arc<dyn Storage>) -> Result<Vec<String>, Error> {
    let mut stored: Vec<String> = storage
        .list(manifest::PRIVATE)?
        .into_iter()
        .chain(storage.list(manifest::SHARED)?)
        .map(|o| o.path)
        .collect();
    stored.sort();
    Ok(stored)
}

/// Every file the manifests of `ids` name, sorted, once each.
fn referenced_files(storage: &Arc<dyn Storage>, ids: &[u64]) -> Result<Vec<String>, Error> {
    let mut referenced: Vec<String> = Vec::new();
    for &id in ids {
        let bytes = storage.read_all(&manifest::manifest_path(id), 1 << 20)?;
        let man = Manifest::decode(&bytes, "m")?;
        referenced.extend(man.paths().map(|f| f.path.clone()));
    }
    referenced.sort();
    referenced.dedup();
    Ok(referenced)
}

/// Only the last `retain` checkpoints stay, and exactly the files they
/// reference: nothing a retained checkpoint needs is ever deleted.
#[test]
fn retention_keeps_last_n_and_their_files() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    let state = Arc::new(MemoryStateBackend::default());
    let mut config = CheckpointConfig::default().with_retain(2);
    config.max_deltas = 3;
    let m = manager(storage.clone(), config);
    m.register("s", state.clone())?;
    for round in 1..=9 {
        apply_round(&*state, round);
        m.trigger_checkpoint(metadata(round))?;
        let kept = m.list();
        assert!(kept.len() <= 2);
        let manifests = storage.list(manifest::MANIFESTS)?;
        assert_eq!(manifests.len(), kept.len());
        // Every stored file is referenced by a kept checkpoint, and the
        // reverse.
        let ids: Vec<u64> = kept.iter().map(|info| info.id).collect();
        assert_eq!(
            stored_files(&storage)?,
            referenced_files(&storage, &ids)?,
            "round {round}"
        );
    }
    // The oldest kept checkpoint still restores after the others moved on.
    let oldest = m.list()[0].clone();
    m.restore(oldest.id)?;
    assert_eq!(dump(&*state), expected_after(round_of(&oldest.metadata)));
    Ok(())
}

/// Under `Retention::Required`, opening deletes no checkpoint, however
/// many there are; `set_required` then keeps exactly the named ones and
/// those this manager commits after the newest of them, with every file
/// they reference, and deletes the rest.
#[test]
fn required_retention_keeps_what_the_owner_names() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    let state = Arc::new(MemoryStateBackend::default());
    let mut ids = Vec::new();
    {
        let m = manager(
            storage.clone(),
            CheckpointConfig::default().with_retain(100),
        );
        m.register("s", state.clone())?;
        for round in 1..=6 {
            apply_round(&*state, round);
            ids.push(m.trigger_checkpoint(metadata(round))?.info.id);
        }
    }
    let required = CheckpointConfig::default()
        .with_retain(1)
        .with_retention(gress_checkpoint::Retention::Required);
    let m = manager(storage.clone(), required);
    assert_eq!(
        m.list().len(),
        6,
        "open deleted checkpoints before being told"
    );
    m.register("s", state.clone())?;
    // Keep the second and the fourth: the others were never needed.
    m.set_required([ids[1], ids[3]])?;
    let kept: Vec<u64> = m.list().iter().map(|c| c.id).collect();
    assert_eq!(kept, [ids[1], ids[3]]);
    for &id in &kept {
        m.restore(id)?;
    }
    // New checkpoints are kept until the owner says otherwise.
    apply_round(&*state, 7);
    let new = m.trigger_checkpoint(metadata(7))?.info.id;
    apply_round(&*state, 8);
    let at_newer = dump(&*state);
    let newer = m.trigger_checkpoint(metadata(8))?.info.id;
    let kept: Vec<u64> = m.list().iter().map(|c| c.id).collect();
    assert_eq!(kept, [ids[1], ids[3], new, newer]);
    m.set_required([newer])?;
    let kept: Vec<u64> = m.list().iter().map(|c| c.id).collect();
    assert_eq!(kept, [newer]);
    apply_round(&*state, 9);
    m.restore(newer)?;
    assert_eq!(dump(&*state), at_newer);
    // Only what the kept checkpoint references is stored.
    assert_eq!(
        stored_files(&storage)?,
        referenced_files(&storage, &[newer])?
    );
    Ok(())
}

/// Story: a manager that had created its fencing record but not yet
/// written its first lease was taken for dead, so of two managers opening
/// at once the second took over within a millisecond and the first was
/// fenced in its first moments. A holder that keeps a lease now counts as
/// alive for one lease from when it took the location.
#[test]
fn a_holder_that_has_not_written_its_lease_yet_is_alive() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    // Process 1 runs on this machine for sure: a holder that is alive.
    let stat = std::fs::read_to_string("/proc/1/stat")?;
    let start: u64 = stat[stat.rfind(')').ok_or("stat")? + 1..]
        .split_whitespace()
        .nth(19)
        .ok_or("stat")?
        .parse()?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let holder = |created_at_ms: u64| {
        serde_json::json!({
            "token": 7, "host": "here", "pid": 1, "boot_id": boot.trim(),
            "start_ticks": start, "created_at_ms": created_at_ms, "lease_ms": 20_000,
        })
        .to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    storage.put_new("fence/00000000000000000001", holder(now).as_bytes())?;
    match CheckpointManager::open(storage.clone(), CheckpointConfig::default()) {
        Err(Error::LocationInUse { .. }) => {}
        other => panic!("expected the location held, got {other:?}"),
    }
    // One lease later without a lease record, the holder is taken for dead.
    storage.delete("fence/00000000000000000001")?;
    storage.put_new(
        "fence/00000000000000000001",
        holder(now - 60_000).as_bytes(),
    )?;
    CheckpointManager::open(storage, CheckpointConfig::default())?;
    Ok(())
}

/// What a crash leaves behind (files without a manifest, temporary files)
/// is deleted when the manager opens; committed checkpoints are untouched.
#[test]
fn orphans_are_removed_at_open() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    let state = Arc::new(MemoryStateBackend::default());
    {
        let m = manager(storage.clone(), CheckpointConfig::default());
        m.register("s", state.clone())?;
        apply_round(&*state, 1);
        m.trigger_checkpoint(metadata(1))?;
    }
    let junk = [
        "checkpoints/00000000000000000099-00000000000000000001/s/full-99.snap",
        "shared/00000000000000000042-00000000000000000007/sst/abc/000001.sst",
        "checkpoints/00000000000000000001-00000000000000000001/s/x.tmp-1-2",
        "manifests/00000000000000000007.manifest.tmp-1-2",
        "savepoints/never-published/s.snap",
        "savepoints/never-published/s.snap.tmp-3-4",
    ];
    // Names of no known layout are reported and left alone.
    let odd = [
        "shared/not-an-owner/x.sst",
        "manifests/notes.txt",
        "checkpoints/00000000000000000098-00000000000000000001/s/bad name",
    ];
    for path in odd {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent"))?;
        std::fs::write(full, b"junk")?;
    }
    for path in junk {
        storage.put(path, &mut |w| {
            w.write_all(b"junk").map_err(|e| Error::Invalid {
                what: "test",
                reason: e.to_string().into(),
            })
        })?;
    }
    let m = manager(storage.clone(), CheckpointConfig::default());
    m.register("s", state.clone())?;
    for path in junk {
        assert_eq!(storage.size(path)?, None, "{path} survived");
    }
    for path in odd {
        assert!(dir.path().join(path).exists(), "{path} was touched");
        assert!(
            m.open_report().odd_names.iter().any(|p| p == path),
            "{path} not reported"
        );
    }
    // The id after an orphaned one is never reused.
    apply_round(&*state, 2);
    assert_eq!(m.trigger_checkpoint(metadata(2))?.info.id, 100);
    state.clear()?;
    assert_eq!(round_of(&m.restore_latest()?.metadata), 2);
    assert_eq!(dump(&*state), expected_after(2));
    Ok(())
}

fn corrupt(storage: &Arc<dyn Storage>, path: &str, edit: impl FnOnce(&mut Vec<u8>)) -> R {
    let mut bytes = storage.read_all(path, 1 << 30)?;
    edit(&mut bytes);
    storage.delete(path)?;
    storage.put(path, &mut |w| {
        w.write_all(&bytes).map_err(|e| Error::Invalid {
            what: "test",
            reason: e.to_string().into(),
        })
    })?;
    Ok(())
}

/// Recovery picks the newest intact checkpoint: a damaged manifest, a
/// flipped byte in a data file, a truncated or missing file each make it
/// say why and fall back to the previous one.
#[test]
fn recovery_falls_back_past_damage() -> R {
    type Damage = fn(&Arc<dyn Storage>, u64, &str) -> R;
    let cases: Vec<(&str, Damage)> = vec![
        ("flipped manifest byte", |s, id, _| {
            corrupt(s, &manifest::manifest_path(id), |b| {
                let i = b.len() - 10;
                b[i] ^= 1;
            })
        }),
        ("truncated manifest", |s, id, _| {
            corrupt(s, &manifest::manifest_path(id), |b| b.truncate(b.len() / 2))
        }),
        ("flipped data byte", |s, _, file| {
            corrupt(s, file, |b| {
                let mid = b.len() / 2;
                b[mid] ^= 0x80;
            })
        }),
        ("truncated data file", |s, _, file| {
            corrupt(s, file, |b| b.truncate(b.len() - 1))
        }),
        ("missing data file", |s, _, file| Ok(s.delete(file)?)),
    ];
    for (what, damage) in cases {
        let dir = tempfile::tempdir()?;
        let storage = local(dir.path());
        let state = Arc::new(MemoryStateBackend::default());
        let m = manager(storage.clone(), CheckpointConfig::default());
        m.register("s", state.clone())?;
        apply_round(&*state, 1);
        m.trigger_checkpoint(metadata(1))?;
        apply_round(&*state, 2);
        // A full checkpoint, so the damage touches only the newest one.
        m.enable_incremental_checkpoints(false);
        let newest = m.trigger_checkpoint(metadata(2))?;
        let man = Manifest::decode(
            &storage.read_all(&manifest::manifest_path(newest.info.id), 1 << 20)?,
            "m",
        )?;
        damage(&storage, newest.info.id, &man.backends[0].files[0].path)?;

        // A new process.
        drop(m);
        state.clear()?;
        let m2 = manager(storage.clone(), CheckpointConfig::default());
        m2.register("s", state.clone())?;
        let info = m2.restore_latest()?;
        assert_eq!(round_of(&info.metadata), 1, "{what}");
        assert_eq!(dump(&*state), expected_after(1), "{what}");
        match m2.restore(newest.info.id) {
            Err(e) => assert!(
                e.is_damage()
                    || matches!(e, Error::NoSuchCheckpoint { .. })
                    || matches!(e, Error::State(_)),
                "{what}: {e}"
            ),
            Ok(_) => panic!("{what}: damaged checkpoint restored"),
        }
        assert_eq!(
            dump(&*state),
            expected_after(1),
            "{what}: failed restore changed state"
        );
    }
    Ok(())
}

/// With every checkpoint damaged, restore says so for each, newest first
/// (and says that checkpoints exist, unlike an empty location).
#[test]
fn nothing_to_restore_lists_every_attempt() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(storage.clone(), CheckpointConfig::default());
    m.register("s", state.clone())?;
    let mut ids = Vec::new();
    for round in 1..=2 {
        apply_round(&*state, round);
        ids.push(m.trigger_checkpoint(metadata(round))?.info.id);
    }
    for id in &ids {
        corrupt(&storage, &manifest::manifest_path(*id), |b| b[40] ^= 1)?;
    }
    match m.restore_latest() {
        Err(Error::NoIntactCheckpoint { tried }) => {
            let tried_ids: Vec<u64> = tried.iter().map(|t| t.0).collect();
            assert_eq!(tried_ids, vec![ids[1], ids[0]]);
            assert!(tried[0].1.contains("invalid"), "{}", tried[0].1);
        }
        other => panic!("expected NoIntactCheckpoint, got {other:?}"),
    }
    Ok(())
}

/// Manifests are untrusted: a path escaping the checkpoint area, an absurd
/// size or a wrong checksum is a typed error before anything is read.
#[test]
fn hostile_manifests_are_rejected() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(&dir.path().join("store"));
    std::fs::write(dir.path().join("secret"), b"outside")?;
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(storage.clone(), CheckpointConfig::default());
    m.register("s", state.clone())?;
    state.put(b"k", b"v")?;
    let hostile = |id: u64, path: &str, size: u64| Manifest {
        id,
        created_at_ms: 0,
        metadata: Metadata::new(),
        backends: vec![BackendEntry {
            name: "s".into(),
            format: "memory-v1".into(),
            files: vec![FileEntry {
                name: "full.snap".into(),
                path: path.into(),
                size,
                crc32c: 0,
            }],
            chain_deltas: 0,
        }],
    };
    let cases = [
        (50, "../secret", 7),
        (51, "checkpoints/00000000000000000051/../../../secret", 7),
        (52, "shared/x", u64::MAX),
        (53, "checkpoints/00000000000000000099/s/full.snap", 7),
    ];
    for (id, path, size) in cases {
        storage.put_new(
            &manifest::manifest_path(id),
            &hostile(id, path, size).encode()?,
        )?;
        match m.restore(id) {
            Err(e @ Error::InvalidManifest { .. }) => assert!(e.is_damage()),
            other => panic!("{path}: expected InvalidManifest, got {other:?}"),
        }
    }
    assert_eq!(state.get(b"k")?.as_deref(), Some(&b"v"[..]));
    assert_eq!(std::fs::read(dir.path().join("secret"))?, b"outside");
    Ok(())
}

/// A storage error fails that checkpoint with a typed error, leaves the
/// earlier ones intact, and the next checkpoint succeeds.
#[test]
fn storage_error_fails_one_checkpoint_only() -> R {
    use gress_checkpoint::storage::fault::{FaultKind, FaultyStorage};
    let dir = tempfile::tempdir()?;
    let faulty = Arc::new(FaultyStorage::new(gress_checkpoint::LocalStorage::new(
        dir.path(),
    )?));
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(faulty.clone(), CheckpointConfig::default());
    m.register("s", state.clone())?;
    apply_round(&*state, 1);
    m.trigger_checkpoint(metadata(1))?;
    apply_round(&*state, 2);
    faulty.arm(1, FaultKind::Fail);
    let err = m
        .trigger_checkpoint(metadata(2))
        .expect_err("fault ignored");
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    assert_eq!(m.list().len(), 1);
    assert_eq!(m.stats().failed, 1);
    // Processing goes on; the next checkpoint is a delta on the last
    // committed one, holding the changes of both rounds since, and commits.
    apply_round(&*state, 3);
    let next = m.trigger_checkpoint(metadata(3))?;
    assert_eq!(
        next.info.backends[0].3, 1,
        "a failed checkpoint does not break the delta chain"
    );
    state.clear()?;
    m.restore_latest()?;
    assert_eq!(dump(&*state), expected_after(3));
    Ok(())
}

/// Periodic mode takes checkpoints on its own thread until stopped.
#[test]
fn periodic_checkpoints_run_until_stopped() -> R {
    let dir = tempfile::tempdir()?;
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(
        local(dir.path()),
        CheckpointConfig::default()
            .with_interval(Duration::from_millis(20))
            .with_retain(100),
    );
    m.register("s", state.clone())?;
    state.put(b"k", b"v")?;
    m.start_periodic(|| metadata(0))?;
    assert!(m.start_periodic(|| metadata(0)).is_err(), "started twice");
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.stats().committed < 3 {
        assert!(Instant::now() < deadline, "no periodic checkpoints in 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    m.stop_periodic();
    let after_stop = m.stats().committed;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(m.stats().committed, after_stop);
    assert_eq!(m.list().len() as u64, after_stop);
    Ok(())
}

/// A savepoint is a portable full snapshot: restored even into a backend
/// configured differently, and never removed by retention.
#[test]
fn savepoints_restore_and_outlive_retention() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(storage.clone(), CheckpointConfig::default().with_retain(1));
    m.register("s", state.clone())?;
    apply_round(&*state, 1);
    m.trigger_savepoint("before-upgrade", metadata(1))?;
    assert!(
        m.trigger_savepoint("before-upgrade", metadata(1)).is_err(),
        "overwrote a savepoint"
    );
    for round in 2..=4 {
        apply_round(&*state, round);
        m.trigger_checkpoint(metadata(round))?;
    }
    let other = Arc::new(MemoryStateBackend::new(
        MemoryConfig::default().with_shards(4),
    )?);
    drop(m);
    let m2 = CheckpointManager::open(storage.clone(), CheckpointConfig::default().with_retain(1))?;
    m2.register("s", other.clone())?;
    let info = m2.restore_savepoint("before-upgrade")?;
    assert_eq!(round_of(&info.metadata), 1);
    assert_eq!(dump(&*other), expected_after(1));
    Ok(())
}

/// Registration refuses duplicate and malformed names and a backend
/// registered twice; a backend added after a checkpoint starts empty when
/// that checkpoint restores.
#[test]
fn registration_is_checked() -> R {
    let dir = tempfile::tempdir()?;
    let m = manager(local(dir.path()), CheckpointConfig::default());
    let state = Arc::new(MemoryStateBackend::default());
    assert!(matches!(m.restore_latest(), Err(Error::NothingToRestore)));
    m.register("s", state.clone())?;
    assert!(m.register("s", state.clone()).is_err());
    assert!(
        m.register("s2", state.clone()).is_err(),
        "one backend, two names"
    );
    assert!(m.register("a/b", state.clone()).is_err());
    assert!(m.register("", state.clone()).is_err());
    state.put(b"k", b"v")?;
    m.trigger_checkpoint(metadata(0))?;
    let late = Arc::new(MemoryStateBackend::default());
    late.put(b"before", b"restore")?;
    m.register("late", late.clone())?;
    m.restore_latest()?;
    assert_eq!(state.get(b"k")?.as_deref(), Some(&b"v"[..]));
    assert!(dump(&*late).is_empty(), "a new backend starts empty");
    assert!(
        CheckpointManager::open(
            local(dir.path()),
            CheckpointConfig::default().with_retain(0)
        )
        .is_err()
    );
    Ok(())
}

/// Writers are held up only while the cut is taken, not while the files
/// are written: a writer thread keeps committing puts during a checkpoint
/// of 1M keys. Reports the capture pause and the writer's slowest put.
#[test]
fn writers_run_while_a_checkpoint_is_written() -> R {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir()?;
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(local(dir.path()), CheckpointConfig::default());
    m.register("state", state.clone())?;
    for i in 0..1_000_000u64 {
        state.put(&i.to_be_bytes(), &[7u8; 100])?;
    }
    let done = AtomicBool::new(false);
    let puts = AtomicU64::new(0);
    let slowest = AtomicU64::new(0);
    let report = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut i = 0u64;
            while !done.load(Ordering::Acquire) {
                let t = Instant::now();
                state
                    .put(format!("side-{}", i % 10_000).as_bytes(), b"x")
                    .expect("put");
                slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                puts.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        let before = puts.load(Ordering::Relaxed);
        let report = m.trigger_checkpoint(metadata(1));
        let during = puts.load(Ordering::Relaxed) - before;
        done.store(true, Ordering::Release);
        writer.join().expect("writer");
        report.map(|r| (r, during))
    });
    let (report, during) = report?;
    println!(
        "1M keys: capture pause {:?}, checkpoint took {:?}, {} puts by a writer meanwhile, slowest put {} us",
        report.max_pause,
        report.duration,
        during,
        slowest.load(Ordering::Relaxed)
    );
    assert!(
        during > 1_000,
        "the writer was blocked during the checkpoint ({during} puts)"
    );
    assert!(
        report.max_pause < report.duration / 4,
        "most of the checkpoint held writers"
    );
    Ok(())
}
