//! Checkpoints that can be trusted: each test here is the story of one way
//! an earlier manager lost committed checkpoints, hung its caller, or left
//! backends at different checkpoints, and checks that it no longer does.

mod common;

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use gress_checkpoint::manifest::{self, Manifest};
use gress_checkpoint::storage::fault::{FaultKind, FaultyStorage, ReadFault};
use gress_checkpoint::storage::{ObjectMeta, PutFn};
use gress_checkpoint::{
    Catalog, CheckpointConfig, CheckpointManager, Error, LocalStorage, Metadata, Storage,
};
use gress_state::checkpoint::{
    Capture, CaptureMode, CheckpointFiles, Checkpointable, PreparedRestore,
};
use gress_state::{
    MemoryStateBackend, Metrics, RestoreSummary, ScanIter, SnapshotSummary, StateBackend,
};
use parking_lot::{Condvar, Mutex};

type R = Result<(), Box<dyn std::error::Error>>;

/// Every checkpoint object in the location (fencing records aside), with
/// a digest of its bytes.
fn contents(storage: &dyn Storage) -> Result<Vec<(String, u32)>, Error> {
    storage
        .list("")?
        .into_iter()
        .filter(|o| !o.path.starts_with(manifest::FENCE))
        .map(|o| {
            let bytes = storage.read_all(&o.path, 1 << 30)?;
            Ok((o.path.clone(), crc32c::crc32c(&bytes)))
        })
        .collect()
}

/// Two committed checkpoints of one backend in a fresh directory.
fn two_checkpoints(dir: &std::path::Path) -> Result<(Arc<dyn Storage>, Vec<u64>), Error> {
    let storage = local(dir);
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(storage.clone(), CheckpointConfig::default());
    m.register("s", state.clone())?;
    let mut ids = Vec::new();
    for round in 1..=2 {
        apply_round(&*state, round);
        ids.push(m.trigger_checkpoint(metadata(round))?.info.id);
    }
    Ok((storage, ids))
}

/// An open by an older build used to read a newer manifest as damage and
/// sweep the files it referenced, and with no readable manifest, delete
/// everything. Now an unknown version stops `open` and nothing changes.
#[test]
fn a_newer_manifest_version_stops_open_and_deletes_nothing() -> R {
    let dir = tempfile::tempdir()?;
    let (storage, ids) = two_checkpoints(dir.path())?;
    // Rewrite every manifest as version 3, intact (checksum over the new
    // first line).
    for id in &ids {
        let path = manifest::manifest_path(*id);
        let bytes = storage.read_all(&path, 1 << 20)?;
        let body = bytes
            .splitn(3, |&b| b == b'\n')
            .nth(2)
            .expect("body")
            .to_vec();
        let first = "GRESS-CHECKPOINT-MANIFEST 3";
        let crc = crc32c::crc32c_append(crc32c::crc32c(format!("{first}\n").as_bytes()), &body);
        let mut newer = format!("{first}\n{crc:08x} {}\n", body.len()).into_bytes();
        newer.extend_from_slice(&body);
        storage.delete(&path)?;
        storage.put_new(&path, &newer)?;
    }
    let before = contents(&*storage)?;
    let err = CheckpointManager::open(storage.clone(), CheckpointConfig::default())
        .expect_err("opened a location with a newer manifest");
    assert!(
        matches!(err, Error::UnsupportedVersion { found: 3, .. }),
        "{err:?}"
    );
    assert!(Catalog::open(storage.clone()).is_err());
    assert_eq!(
        contents(&*storage)?,
        before,
        "something was deleted or changed"
    );
    Ok(())
}

/// A damaged manifest (a torn write, a flipped bit) used to be swept with
/// the files it referenced; with none readable, every file went. Now it is
/// set aside and reported, nothing it could name is deleted, and the
/// checkpoints that are readable stay usable.
#[test]
fn a_damaged_manifest_is_set_aside_and_protects_its_files() -> R {
    let dir = tempfile::tempdir()?;
    let (storage, ids) = two_checkpoints(dir.path())?;
    for id in &ids {
        let path = manifest::manifest_path(*id);
        let mut bytes = storage.read_all(&path, 1 << 20)?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        storage.delete(&path)?;
        storage.put_new(&path, &bytes)?;
    }
    let before = contents(&*storage)?;
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(storage.clone(), CheckpointConfig::default().with_retain(1));
    m.register("s", state.clone())?;
    let damaged: Vec<u64> = m.open_report().damaged.iter().map(|d| d.id).collect();
    assert_eq!(damaged, ids);
    assert_eq!(contents(&*storage)?, before, "open deleted something");
    assert!(matches!(
        m.restore_latest(),
        Err(Error::NoIntactCheckpoint { .. })
    ));
    // Later checkpoints work; retention never reaches the damaged ones'
    // files.
    for round in 3..=6 {
        apply_round(&*state, round);
        m.trigger_checkpoint(metadata(round))?;
    }
    for (path, digest) in &before {
        assert_eq!(
            crc32c::crc32c(&storage.read_all(path, 1 << 30)?),
            *digest,
            "{path} was deleted or changed"
        );
    }
    drop(m);
    let state2 = Arc::new(MemoryStateBackend::default());
    let m2 = manager(storage.clone(), CheckpointConfig::default().with_retain(1));
    m2.register("s", state2.clone())?;
    assert_eq!(round_of(&m2.restore_latest()?.metadata), 6);
    let expected = MemoryStateBackend::default();
    for round in 3..=6 {
        apply_round(&expected, round);
    }
    assert_eq!(dump(&*state2), dump(&expected));
    Ok(())
}

/// One flaky read while opening used to make a manifest look damaged and
/// have its files swept. A failed read now stops `open` with nothing
/// deleted; a corrupted read sets the manifest aside without deleting what
/// it names, and the next open reads it fine.
#[test]
fn flaky_reads_at_open_delete_nothing() -> R {
    let dir = tempfile::tempdir()?;
    let (_, ids) = two_checkpoints(dir.path())?;
    let faulty = Arc::new(FaultyStorage::new(LocalStorage::new(dir.path())?));
    let before = contents(faulty.inner())?;
    // The list of manifests/ is read 1, the first manifest read 2.
    faulty.arm_read(2, ReadFault::Fail);
    let err = CheckpointManager::open(faulty.clone(), CheckpointConfig::default())
        .expect_err("open went on past a failed read");
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    assert_eq!(contents(faulty.inner())?, before);

    faulty.arm_read(2, ReadFault::Corrupt);
    let m = CheckpointManager::open(faulty.clone(), CheckpointConfig::default().with_retain(1))?;
    assert_eq!(m.open_report().damaged.len(), 1, "{:?}", m.open_report());
    assert_eq!(m.list().len(), 1);
    drop(m);
    let after = contents(faulty.inner())?;
    let first_files: Vec<&String> = before
        .iter()
        .map(|(p, _)| p)
        .filter(|p| manifest::owner_of(p) == Some(ids[0]))
        .collect();
    assert!(!first_files.is_empty());
    for path in first_files {
        assert!(
            after.iter().any(|(p, _)| p == path),
            "{path} of the misread checkpoint was deleted"
        );
    }
    let m = manager(faulty.clone(), CheckpointConfig::default().with_retain(2));
    assert!(m.open_report().damaged.is_empty());
    assert_eq!(m.list().len(), 2);
    Ok(())
}

/// A publication whose answer was lost (an S3 PUT retried after its reply
/// went missing, a directory fsync failing after the link) used to be
/// cleaned up as failed: the checkpoint's files were deleted under a
/// published manifest. Now the manifest is read back and the checkpoint
/// counts as committed.
#[test]
fn a_publication_whose_answer_was_lost_is_committed() -> R {
    let dir = tempfile::tempdir()?;
    let faulty = Arc::new(FaultyStorage::new(LocalStorage::new(dir.path())?));
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(faulty.clone(), CheckpointConfig::default().with_lease(None));
    m.register("s", state.clone())?;
    apply_round(&*state, 1);
    // One data file, then the manifest.
    faulty.arm(2, FaultKind::LostAck);
    let report = m.trigger_checkpoint(metadata(1))?;
    assert!(
        faulty
            .log()
            .iter()
            .any(|l| l.starts_with("put_new manifests/")),
        "{:?}",
        faulty.log()
    );
    drop(m);
    let fresh = Arc::new(MemoryStateBackend::default());
    let m2 = manager(local(dir.path()), CheckpointConfig::default());
    m2.register("s", fresh.clone())?;
    assert_eq!(m2.restore_latest()?.id, report.info.id);
    assert_eq!(dump(&*fresh), expected_after(1));
    Ok(())
}

/// A stray manifest named with the largest id used to overflow `max_id + 1`.
#[test]
fn the_largest_id_in_storage_is_a_typed_error() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    storage.put_new(&manifest::manifest_path(u64::MAX), b"stray")?;
    let err = CheckpointManager::open(storage, CheckpointConfig::default())
        .expect_err("opened with no id left");
    assert!(
        matches!(err, Error::IdsExhausted { found: u64::MAX }),
        "{err:?}"
    );
    Ok(())
}

/// Two managers on one location deleted each other's files. Now a second
/// one is refused while the first holds a live lease; one that takes over
/// fences the first, which can then neither publish nor delete.
#[test]
fn a_second_manager_is_refused_or_fences_the_first() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    let state = Arc::new(MemoryStateBackend::default());
    let first = manager(storage.clone(), CheckpointConfig::default());
    first.register("s", state.clone())?;
    apply_round(&*state, 1);
    first.trigger_checkpoint(metadata(1))?;
    let in_flight = first.begin_checkpoint(metadata(2))?;

    let err = CheckpointManager::open(storage.clone(), CheckpointConfig::default())
        .expect_err("a second manager opened beside a live one");
    assert!(matches!(err, Error::LocationInUse { .. }), "{err:?}");
    assert!(err.to_string().contains("take_over"), "{err}");

    let other = Arc::new(MemoryStateBackend::default());
    let second = manager(
        storage.clone(),
        CheckpointConfig::default().with_take_over(true),
    );
    second.register("s", other.clone())?;
    assert!(
        second.register("again", state.clone()).is_err(),
        "a backend in two managers"
    );
    second.restore_latest()?;
    apply_round(&*other, 2);
    let committed = second.trigger_checkpoint(metadata(2))?;

    let err = in_flight.commit().expect_err("a fenced manager published");
    assert!(matches!(err, Error::Fenced { .. }), "{err:?}");
    let err = first
        .trigger_checkpoint(metadata(3))
        .expect_err("a fenced manager checkpointed");
    assert!(matches!(err, Error::Fenced { .. }), "{err:?}");
    drop(first);

    let fresh = MemoryStateBackend::default();
    let catalog = Catalog::open(storage)?;
    catalog.restore_into(committed.info.id, &[("s", &fresh)], false)?;
    assert_eq!(dump(&fresh), expected_after(2));
    Ok(())
}

/// A read-only look at a location (a tool listing checkpoints) used to
/// open a manager and sweep an upload in progress, after which the job
/// published a checkpoint naming a deleted file. The catalog deletes
/// nothing, so the checkpoint in flight commits and restores.
#[test]
fn reading_a_location_beside_a_running_job_deletes_nothing() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(storage.clone(), CheckpointConfig::default());
    m.register("s", state.clone())?;
    apply_round(&*state, 1);
    m.trigger_checkpoint(metadata(1))?;
    apply_round(&*state, 2);
    let pending = m.begin_checkpoint(metadata(2))?;
    let before = contents(&*storage)?;
    let catalog = Catalog::open(storage.clone())?;
    assert_eq!(catalog.checkpoints().len(), 1);
    let checks = catalog.verify(catalog.latest().expect("one").id)?;
    assert!(checks.iter().all(|c| c.problem.is_none()), "{checks:?}");
    assert_eq!(contents(&*storage)?, before);
    let id = pending.commit()?.info.id;
    let fresh = MemoryStateBackend::default();
    Catalog::open(storage)?.restore_into(id, &[("s", &fresh)], false)?;
    assert_eq!(dump(&fresh), expected_after(2));
    Ok(())
}

/// `begin_checkpoint` used to hold a permit until `commit`: a thread that
/// held a checkpoint and began another, or restored, deadlocked. Now cuts
/// never wait: a second is allowed, one beyond `max_in_flight` fails at
/// once, restore says a checkpoint is pending, and checkpoints commit in
/// any order, each restoring its own cut.
#[test]
fn a_pending_checkpoint_never_blocks_the_processing_thread() -> R {
    let dir = tempfile::tempdir()?;
    let state = Arc::new(MemoryStateBackend::default());
    let mut config = CheckpointConfig::default()
        .with_max_in_flight(2)
        .with_retain(5);
    config.max_delta_ratio = 100.0;
    let m = manager(local(dir.path()), config);
    m.register("s", state.clone())?;
    apply_round(&*state, 1);
    m.trigger_checkpoint(metadata(1))?;
    apply_round(&*state, 2);
    let second = m.begin_checkpoint(metadata(2))?;
    apply_round(&*state, 3);
    let third = m.begin_checkpoint(metadata(3))?;
    apply_round(&*state, 4);
    let err = m
        .begin_checkpoint(metadata(4))
        .expect_err("a third in flight");
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    let err = m
        .restore_latest()
        .expect_err("restored under a pending checkpoint");
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    assert_eq!(
        dump(&*state),
        expected_after(4),
        "the failed restore changed state"
    );

    // Out of order: the later cut commits first.
    let third_id = third.commit()?.info.id;
    let second_id = second.commit()?.info.id;
    let catalog = Catalog::open(m.storage().clone())?;
    for (id, round) in [(second_id, 2), (third_id, 3)] {
        let fresh = MemoryStateBackend::default();
        catalog.restore_into(id, &[("s", &fresh)], false)?;
        assert_eq!(dump(&fresh), expected_after(round), "checkpoint {id}");
    }
    // The next delta builds on a committed checkpoint and holds round 4.
    let fourth = m.trigger_checkpoint(metadata(4))?;
    assert!(fourth.info.backends[0].3 > 0, "not a delta");
    state.clear()?;
    m.restore(fourth.info.id)?;
    assert_eq!(dump(&*state), expected_after(4));
    Ok(())
}

/// A storage whose writes block until released: a frozen endpoint.
#[derive(Debug)]
struct Frozen {
    inner: LocalStorage,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Frozen {
    fn wait(&self) {
        let mut open = self.gate.0.lock();
        while !*open {
            self.gate.1.wait(&mut open);
        }
    }
}

impl Storage for Frozen {
    fn put(&self, path: &str, write: &mut PutFn<'_>) -> gress_checkpoint::Result<()> {
        if path.starts_with("checkpoints/") {
            self.wait();
        }
        self.inner.put(path, write)
    }
    fn put_new(&self, path: &str, bytes: &[u8]) -> gress_checkpoint::Result<()> {
        self.inner.put_new(path, bytes)
    }
    fn open(&self, path: &str) -> gress_checkpoint::Result<Box<dyn Read + Send + '_>> {
        self.inner.open(path)
    }
    fn list(&self, prefix: &str) -> gress_checkpoint::Result<Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> gress_checkpoint::Result<()> {
        self.inner.delete(path)
    }
}

/// Dropping a manager whose periodic checkpoint was stuck on a frozen
/// storage used to wait for it (for minutes on a hung S3 endpoint, forever
/// if the thread waited for a permit). Drop now returns while the
/// checkpoint is still stuck, and the stuck checkpoint publishes nothing
/// once the storage thaws.
#[test]
fn drop_returns_while_a_periodic_checkpoint_is_stuck() -> R {
    let dir = tempfile::tempdir()?;
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let frozen = Arc::new(Frozen {
        inner: LocalStorage::new(dir.path())?,
        gate: gate.clone(),
    });
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(
        frozen.clone(),
        CheckpointConfig::default().with_interval(Duration::from_millis(5)),
    );
    m.register("s", state.clone())?;
    apply_round(&*state, 1);
    m.start_periodic(Metadata::new)?;
    std::thread::sleep(Duration::from_millis(100));
    let (done, dropped) = mpsc::channel();
    std::thread::spawn(move || {
        drop(m);
        let _ = done.send(());
    });
    // A bound that only catches a hang: drop waits about two seconds.
    dropped
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "drop hung on a stuck checkpoint")?;
    *gate.0.lock() = true;
    gate.1.notify_all();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        frozen.list(manifest::MANIFESTS)?.is_empty(),
        "a checkpoint of a closed manager was published"
    );
    Ok(())
}

/// A backend that fails its restore's switch on demand, around a real
/// memory backend: the one way to stop a restore between two backends.
struct FailingSwitch {
    inner: MemoryStateBackend,
    fail: Mutex<bool>,
}

struct FailingPrepared<'a> {
    inner: Box<dyn PreparedRestore + 'a>,
    fail: bool,
}

impl PreparedRestore for FailingPrepared<'_> {
    fn commit(self: Box<Self>) -> gress_state::Result<()> {
        if self.fail {
            return Err(gress_state::Error::io(
                "switching",
                io::Error::other("injected: the switch failed"),
            ));
        }
        self.inner.commit()
    }
}

impl std::fmt::Debug for FailingSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailingSwitch")
    }
}

impl StateBackend for FailingSwitch {
    fn name(&self) -> &'static str {
        "failing-switch"
    }
    fn get(&self, key: &[u8]) -> gress_state::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn get_with_expiry(&self, key: &[u8]) -> gress_state::Result<Option<(Vec<u8>, Option<u64>)>> {
        self.inner.get_with_expiry(key)
    }
    fn multi_get(&self, keys: &[&[u8]]) -> gress_state::Result<Vec<Option<Vec<u8>>>> {
        self.inner.multi_get(keys)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> gress_state::Result<()> {
        self.inner.put(key, value)
    }
    fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> gress_state::Result<()> {
        self.inner.put_with_ttl(key, value, ttl)
    }
    fn delete(&self, key: &[u8]) -> gress_state::Result<()> {
        self.inner.delete(key)
    }
    fn write_batch(&self, batch: &gress_state::WriteBatch) -> gress_state::Result<()> {
        self.inner.write_batch(batch)
    }
    fn scan(&self, range: gress_state::KeyRange) -> gress_state::Result<ScanIter<'_>> {
        self.inner.scan(range)
    }
    fn snapshot_to(&self, out: &mut dyn io::Write) -> gress_state::Result<SnapshotSummary> {
        self.inner.snapshot_to(out)
    }
    fn restore_from(&self, input: &mut dyn Read) -> gress_state::Result<RestoreSummary> {
        self.inner.restore_from(input)
    }
    fn flush(&self) -> gress_state::Result<()> {
        self.inner.flush()
    }
    fn metrics(&self) -> Metrics {
        self.inner.metrics()
    }
    fn close(&self) -> gress_state::Result<()> {
        self.inner.close()
    }
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}

impl Checkpointable for FailingSwitch {
    fn claim_checkpoints(&self, owner: u64) -> gress_state::Result<()> {
        self.inner.claim_checkpoints(owner)
    }
    fn release_checkpoints(&self, owner: u64) {
        self.inner.release_checkpoints(owner)
    }
    fn delta_base(&self) -> Option<u64> {
        self.inner.delta_base()
    }
    fn capture(
        &self,
        owner: u64,
        mode: CaptureMode,
        checkpoint_id: u64,
    ) -> gress_state::Result<Box<dyn Capture>> {
        self.inner.capture(owner, mode, checkpoint_id)
    }
    fn prepare_restore(
        &self,
        format: &str,
        files: &dyn CheckpointFiles,
    ) -> gress_state::Result<Box<dyn PreparedRestore + '_>> {
        Ok(Box::new(FailingPrepared {
            inner: self.inner.prepare_restore(format, files)?,
            fail: *self.fail.lock(),
        }))
    }

    fn prepare_restore_ranges(
        &self,
        sources: &[gress_state::RangeSource<'_>],
    ) -> gress_state::Result<Box<dyn PreparedRestore + '_>> {
        Ok(Box::new(FailingPrepared {
            inner: self.inner.prepare_restore_ranges(sources)?,
            fail: *self.fail.lock(),
        }))
    }
}

/// A restore of several backends used to switch them one by one and stop
/// at the first error, leaving them at different checkpoints, and the job
/// would then checkpoint that mix. Now the interrupted restore is recorded
/// (in storage, so a new process sees it too), checkpoints are refused
/// until a restore completes, and the next restore brings every backend to
/// one checkpoint.
#[test]
fn an_interrupted_restore_blocks_checkpoints_until_one_completes() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    let a = Arc::new(MemoryStateBackend::default());
    let b = Arc::new(FailingSwitch {
        inner: MemoryStateBackend::default(),
        fail: Mutex::new(false),
    });
    let m = manager(storage.clone(), CheckpointConfig::default());
    m.register("a", a.clone())?;
    m.register("b", b.clone())?;
    apply_round(&*a, 1);
    apply_round(&b.inner, 101);
    let first = m.trigger_checkpoint(metadata(1))?.info.id;
    apply_round(&*a, 2);
    apply_round(&b.inner, 102);

    *b.fail.lock() = true;
    m.restore(first).expect_err("the injected switch failure");
    assert!(m.restore_incomplete().is_some());
    let err = m
        .trigger_checkpoint(metadata(9))
        .expect_err("checkpointed a mix");
    assert!(matches!(err, Error::RestoreIncomplete { .. }), "{err:?}");

    // A new process learns of it from the storage.
    drop(m);
    let m = manager(storage.clone(), CheckpointConfig::default());
    m.register("a", a.clone())?;
    m.register("b", b.clone())?;
    assert!(m.open_report().restore_incomplete.is_some());
    assert!(m.begin_checkpoint(metadata(9)).is_err());
    *b.fail.lock() = false;
    m.restore_latest()?;
    assert_eq!(dump(&*a), expected_after(1));
    assert_eq!(dump(&b.inner), expected_after_b(1));
    assert!(m.restore_incomplete().is_none());
    m.trigger_checkpoint(metadata(2))?;
    Ok(())
}

fn expected_after_b(rounds: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let b = MemoryStateBackend::default();
    for r in 1..=rounds {
        apply_round(&b, 100 + r);
    }
    dump(&b)
}

/// `restore_savepoint` used to restore backend by backend, so a damaged
/// second file left the first backend restored. Now every file is read
/// before any backend changes.
#[test]
fn a_damaged_savepoint_changes_no_backend() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    let (a, b) = (
        Arc::new(MemoryStateBackend::default()),
        Arc::new(MemoryStateBackend::default()),
    );
    let m = manager(storage.clone(), CheckpointConfig::default());
    m.register("a", a.clone())?;
    m.register("b", b.clone())?;
    apply_round(&*a, 1);
    apply_round(&*b, 101);
    m.trigger_savepoint("sp", metadata(1))?;
    apply_round(&*a, 2);
    apply_round(&*b, 102);
    let path = "savepoints/sp/b.snap";
    let mut bytes = storage.read_all(path, 1 << 30)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    storage.delete(path)?;
    storage.put_new(path, &bytes)?;
    let err = m
        .restore_savepoint("sp")
        .expect_err("restored a damaged savepoint");
    assert!(err.is_damage(), "{err:?}");
    assert_eq!(dump(&*a), expected_after(2), "backend a changed");
    assert_eq!(dump(&*b), expected_after_b(2), "backend b changed");
    Ok(())
}

/// A checkpoint holding a backend that is no longer registered is refused
/// unless the job allows dropping that state.
#[test]
fn state_of_a_removed_backend_needs_explicit_permission_to_drop() -> R {
    let dir = tempfile::tempdir()?;
    let storage = local(dir.path());
    {
        let (a, b) = (
            Arc::new(MemoryStateBackend::default()),
            Arc::new(MemoryStateBackend::default()),
        );
        let m = manager(storage.clone(), CheckpointConfig::default());
        m.register("a", a.clone())?;
        m.register("b", b.clone())?;
        apply_round(&*a, 1);
        apply_round(&*b, 101);
        m.trigger_checkpoint(metadata(1))?;
    }
    let a = Arc::new(MemoryStateBackend::default());
    let m = manager(storage.clone(), CheckpointConfig::default());
    m.register("a", a.clone())?;
    let err = m.restore_latest().expect_err("dropped state silently");
    assert!(
        matches!(&err, Error::Backend { name, .. } if name == "b"),
        "{err:?}"
    );
    assert!(dump(&*a).is_empty());
    drop(m);
    let m = manager(
        storage,
        CheckpointConfig::default().with_allow_non_restored_state(true),
    );
    m.register("a", a.clone())?;
    m.restore_latest()?;
    assert_eq!(dump(&*a), expected_after(1));
    Ok(())
}

/// `restore_latest` used to fall back past an intact newest checkpoint on a
/// transient error and return `Ok` with an older checkpoint's offsets. Now
/// it falls back only past damage and returns other errors as they are.
#[test]
fn a_transient_error_is_returned_not_fallen_back_past() -> R {
    let dir = tempfile::tempdir()?;
    let _ = two_checkpoints(dir.path())?;
    let faulty = Arc::new(FaultyStorage::new(LocalStorage::new(dir.path())?));
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(faulty.clone(), CheckpointConfig::default());
    m.register("s", state.clone())?;
    // The listing, then the newest manifest's read fails.
    faulty.arm_read(2, ReadFault::Fail);
    let err = m
        .restore_latest()
        .expect_err("fell back past a transient error");
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    assert!(dump(&*state).is_empty(), "the state changed");
    assert_eq!(round_of(&m.restore_latest()?.metadata), 2);
    Ok(())
}

/// Disk full while a memory backend's file was written used to be reported
/// as a state error (and RocksDB's as a storage error). Whatever layer the
/// write passed through, the storage's failure is a storage error of the
/// same kind.
#[test]
fn a_full_storage_is_a_storage_error() -> R {
    #[derive(Debug)]
    struct Full(LocalStorage);
    impl Storage for Full {
        fn put(&self, path: &str, write: &mut PutFn<'_>) -> gress_checkpoint::Result<()> {
            self.0.put(path, &mut |w| {
                let mut full = FullWriter(w);
                write(&mut full)
            })
        }
        fn put_new(&self, path: &str, bytes: &[u8]) -> gress_checkpoint::Result<()> {
            self.0.put_new(path, bytes)
        }
        fn open(&self, path: &str) -> gress_checkpoint::Result<Box<dyn Read + Send + '_>> {
            self.0.open(path)
        }
        fn list(&self, prefix: &str) -> gress_checkpoint::Result<Vec<ObjectMeta>> {
            self.0.list(prefix)
        }
        fn delete(&self, path: &str) -> gress_checkpoint::Result<()> {
            self.0.delete(path)
        }
    }
    struct FullWriter<'a>(&'a mut dyn io::Write);
    impl io::Write for FullWriter<'_> {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device",
            ))
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    let dir = tempfile::tempdir()?;
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(
        Arc::new(Full(LocalStorage::new(dir.path())?)),
        CheckpointConfig::default().with_lease(None),
    );
    m.register("s", state.clone())?;
    apply_round(&*state, 1);
    let err = m
        .trigger_checkpoint(metadata(1))
        .expect_err("wrote to a full disk");
    assert!(
        matches!(&err, Error::Storage { source, .. } if source.kind() == io::ErrorKind::StorageFull),
        "{err:?}"
    );
    Ok(())
}

/// A failed savepoint used to leave its files for good (the sweep skipped
/// `savepoints/`). Now it cleans up after itself, and what a crash leaves
/// goes at the next open.
#[test]
fn a_failed_savepoint_leaves_nothing() -> R {
    let dir = tempfile::tempdir()?;
    let faulty = Arc::new(FaultyStorage::new(LocalStorage::new(dir.path())?));
    let state = Arc::new(MemoryStateBackend::default());
    let m = manager(faulty.clone(), CheckpointConfig::default().with_lease(None));
    m.register("s", state.clone())?;
    apply_round(&*state, 1);
    faulty.arm(2, FaultKind::Fail);
    m.trigger_savepoint("sp", metadata(1))
        .expect_err("the manifest write failed");
    assert!(faulty.inner().list("savepoints/")?.is_empty());
    faulty.arm(2, FaultKind::Crash);
    m.trigger_savepoint("sp", metadata(1)).expect_err("crashed");
    drop(m);
    assert!(
        !faulty.inner().list("savepoints/")?.is_empty(),
        "the crash left files"
    );
    let m = manager(local(dir.path()), CheckpointConfig::default());
    assert!(
        faulty.inner().list("savepoints/")?.is_empty(),
        "{:?}",
        m.open_report()
    );
    Ok(())
}

/// Manifests decode only what this build wrote: the manifest read back
/// equals the one published (the rest of the format is covered by the
/// manifest fuzz test).
#[test]
fn manifests_round_trip_through_storage() -> R {
    let dir = tempfile::tempdir()?;
    let (storage, ids) = two_checkpoints(dir.path())?;
    let catalog = Catalog::open(storage.clone())?;
    for id in ids {
        let path = manifest::manifest_path(id);
        let m = Manifest::decode(&storage.read_all(&path, 1 << 20)?, &path)?;
        assert_eq!(Some(&m), catalog.manifest(id));
    }
    Ok(())
}

/// A storage whose listing still names a manifest that was deleted just
/// after: what a reader sees while a running manager retires a checkpoint.
#[derive(Debug)]
struct StaleListing {
    inner: Arc<dyn Storage>,
    ghost: String,
    listed: std::sync::atomic::AtomicBool,
}

impl Storage for StaleListing {
    fn put(&self, path: &str, write: &mut PutFn<'_>) -> Result<(), Error> {
        self.inner.put(path, write)
    }
    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<(), Error> {
        self.inner.put_new(path, bytes)
    }
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + '_>, Error> {
        self.inner.open(path)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, Error> {
        let mut out = self.inner.list(prefix)?;
        // Only the first listing: it is gone from the next.
        if self.ghost.starts_with(prefix)
            && !self.listed.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            out.push(ObjectMeta {
                path: self.ghost.clone(),
                size: 100,
            });
        }
        Ok(out)
    }
    fn delete(&self, path: &str) -> Result<(), Error> {
        self.inner.delete(path)
    }
}

#[test]
fn a_manifest_deleted_while_the_location_is_read_is_no_checkpoint() -> R {
    let dir = tempfile::tempdir()?;
    let (storage, ids) = two_checkpoints(dir.path())?;
    let stale: Arc<dyn Storage> = Arc::new(StaleListing {
        inner: storage,
        ghost: manifest::manifest_path(ids[1] + 1),
        listed: Default::default(),
    });
    let catalog = Catalog::open(stale)?;
    assert_eq!(
        catalog
            .checkpoints()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        ids
    );
    assert!(catalog.damaged().is_empty());
    Ok(())
}
