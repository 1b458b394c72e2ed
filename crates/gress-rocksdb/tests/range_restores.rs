//! Range restores of the RocksDB backend: rescaling a job from N workers
//! to M, each new worker's database built from the key-group ranges it
//! now owns in the checkpoints of the old workers (incremental ones, with
//! TTLs and deletes), checked against a model; damaged sources; the
//! checkpoint after a range restore; and random keys and split points.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gress_checkpoint::{
    Catalog, CheckpointConfig, CheckpointManager, LocalStorage, Metadata, RangePart, Storage,
};
use gress_rocksdb::{ROCKSDB_CHECKPOINT_FORMAT, RocksDbConfig, RocksDbStateBackend};
use gress_state::checkpoint::{CheckpointFiles, Checkpointable, RangeSource};
use gress_state::{
    Clock, Error, KeyRange, ManualClock, MemoryStateBackend, SNAPSHOT_FORMAT, StateBackend,
};
use proptest::prelude::*;

type R = Result<(), Box<dyn std::error::Error>>;
type Kv = Vec<(Vec<u8>, Vec<u8>)>;
/// Key → (value, expiry in ms).
type Model = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

/// Key groups of the job (a key starts with its group, u16 big-endian).
const GROUPS: u16 = 64;
const T0: u64 = 1_700_000_000_000;
const SHORT: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(3600);

fn config(path: &Path, clock: &Arc<ManualClock>) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path).with_clock(clock.clone());
    c.write_buffer_size = 1 << 20;
    c.block_cache_size = 1 << 20;
    c
}

fn storage(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(LocalStorage::new(dir).expect("storage"))
}

fn dump(b: &dyn StateBackend) -> Kv {
    b.scan(KeyRange::all())
        .expect("scan")
        .collect::<gress_state::Result<_>>()
        .expect("item")
}

fn key(group: u16, suffix: &[u8]) -> Vec<u8> {
    [&group.to_be_bytes()[..], suffix].concat()
}

/// The keys of groups `lo..hi`, unbounded at the ends of the key space.
fn groups(lo: u16, hi: u16) -> KeyRange {
    KeyRange {
        start: if lo == 0 {
            Bound::Unbounded
        } else {
            Bound::Included(lo.to_be_bytes().to_vec())
        },
        end: if hi == GROUPS {
            Bound::Unbounded
        } else {
            Bound::Excluded(hi.to_be_bytes().to_vec())
        },
    }
}

/// The key groups worker `w` of `n` owns.
fn owned(w: usize, n: usize) -> (u16, u16) {
    let g = usize::from(GROUPS);
    let at = |i: usize| u16::try_from(i * g / n).expect("group");
    (at(w), at(w + 1))
}

/// What `model` holds live at `now` in `range`.
fn expected(model: &Model, range: &KeyRange, now: u64) -> Kv {
    model
        .iter()
        .filter(|(k, (_, at))| range.contains(k) && at.is_none_or(|at| now < at))
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect()
}

/// A worker of the job before the rescale: its backend, checkpointed
/// twice (the second incremental, after deletes and overwrites), and the
/// model of what it holds.
struct OldWorker {
    _backend: Arc<RocksDbStateBackend>,
    _manager: CheckpointManager,
    storage_dir: PathBuf,
    catalog: Catalog,
    checkpoint: u64,
    model: Model,
}

fn old_worker(
    root: &Path,
    w: usize,
    n: usize,
    per_group: u32,
    clock: &Arc<ManualClock>,
) -> Result<OldWorker, Box<dyn std::error::Error>> {
    let backend = Arc::new(RocksDbStateBackend::open(config(
        &root.join(format!("old-{w}")),
        clock,
    ))?);
    let storage_dir = root.join(format!("old-{w}-cp"));
    let manager = CheckpointManager::open(storage(&storage_dir), CheckpointConfig::default())?;
    manager.register("state", backend.clone())?;
    let now = clock.now_ms();
    let expiry = |ttl: Duration| now + u64::try_from(ttl.as_millis()).expect("ms");
    let mut model = Model::new();
    let (lo, hi) = owned(w, n);
    for g in lo..hi {
        for i in 0..per_group {
            let k = key(g, format!("key-{i:05}").as_bytes());
            let v = format!("{w}/{g}/{i}").repeat(8).into_bytes();
            match i % 5 {
                0 => {
                    backend.put_with_ttl(&k, &v, SHORT)?;
                    model.insert(k, (v, Some(expiry(SHORT))));
                }
                1 => {
                    backend.put_with_ttl(&k, &v, LONG)?;
                    model.insert(k, (v, Some(expiry(LONG))));
                }
                _ => {
                    backend.put(&k, &v)?;
                    model.insert(k, (v, None));
                }
            }
        }
    }
    manager.trigger_checkpoint(Metadata::new())?;
    // Changes after the first checkpoint: deletes, overwrites, new keys.
    for g in lo..hi {
        for i in (0..per_group).step_by(7) {
            let k = key(g, format!("key-{i:05}").as_bytes());
            backend.delete(&k)?;
            model.remove(&k);
        }
        for i in (3..per_group).step_by(11) {
            let k = key(g, format!("key-{i:05}").as_bytes());
            let v = format!("new {w}/{g}/{i}").into_bytes();
            backend.put(&k, &v)?;
            model.insert(k, (v, None));
        }
        let k = key(g, b"added");
        backend.put(&k, b"added")?;
        model.insert(k, (b"added".to_vec(), None));
    }
    let report = manager.trigger_checkpoint(Metadata::new())?;
    assert!(
        report.files_reused > 0,
        "the second checkpoint is not incremental"
    );
    Ok(OldWorker {
        _backend: backend,
        _manager: manager,
        catalog: Catalog::open(storage(&storage_dir))?,
        storage_dir,
        checkpoint: report.info.id,
        model,
    })
}

/// The parts new worker `j` of `m` restores from.
fn parts(olds: &[OldWorker], j: usize, m: usize) -> Vec<RangePart<'_>> {
    let (lo, hi) = owned(j, m);
    olds.iter()
        .enumerate()
        .filter_map(|(w, old)| {
            let (olo, ohi) = owned(w, olds.len());
            let (a, b) = (lo.max(olo), hi.min(ohi));
            (a < b).then(|| RangePart {
                catalog: &old.catalog,
                id: old.checkpoint,
                ranges: vec![groups(a, b)],
            })
        })
        .collect()
}

fn union(olds: &[OldWorker]) -> Model {
    olds.iter()
        .flat_map(|o| o.model.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect()
}

/// A new worker: a backend that already holds state and checkpoints of
/// its own before the rescale.
fn new_worker(
    root: &Path,
    name: &str,
    clock: &Arc<ManualClock>,
) -> Result<(Arc<RocksDbStateBackend>, CheckpointManager), Box<dyn std::error::Error>> {
    let backend = Arc::new(RocksDbStateBackend::open(config(&root.join(name), clock))?);
    let manager = CheckpointManager::open(
        storage(&root.join(format!("{name}-cp"))),
        CheckpointConfig::default(),
    )?;
    manager.register("state", backend.clone())?;
    for i in 0..100u32 {
        backend.put(&key(GROUPS - 1, format!("stale-{i}").as_bytes()), b"old")?;
    }
    manager.trigger_checkpoint(Metadata::new())?;
    Ok((backend, manager))
}

/// The directories in the backend's root other than the live database.
fn leftovers(path: &Path) -> Vec<String> {
    let live = fs::read_to_string(path.join("LIVE")).expect("LIVE");
    let mut out: Vec<String> = fs::read_dir(path)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| (n.starts_with("db-") || n.starts_with("restore-")) && *n != live.trim_end())
        .collect();
    out.sort();
    out
}

/// Two workers rescaled to one, three and four: every new worker holds
/// exactly the keys of its key groups as the old checkpoints had them,
/// expired ones gone, TTLs kept (they expire on time after the restore),
/// the new workers together hold exactly what the old ones did, and the
/// first checkpoint after the rescale shares no file with earlier ones
/// and restores the same state.
#[test]
fn rescales_from_two_workers_to_one_three_and_four() -> R {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::shared(T0);
    let olds: Vec<OldWorker> = (0..2)
        .map(|w| old_worker(dir.path(), w, 2, 150, &clock))
        .collect::<Result<_, _>>()?;
    let all = union(&olds);
    // The short TTLs have passed, the long ones not.
    clock.advance(Duration::from_secs(60));
    let now = clock.now_ms();
    let want_all = expected(&all, &KeyRange::all(), now);
    assert!(want_all.len() > 5_000, "{}", want_all.len());

    for m in [1, 3, 4] {
        let mut got_all = Kv::new();
        let mut news = Vec::new();
        for j in 0..m {
            let name = format!("new-{m}-{j}");
            let (backend, manager) = new_worker(dir.path(), &name, &clock)?;
            manager.restore_ranges(&parts(&olds, j, m))?;
            let (lo, hi) = owned(j, m);
            let want = expected(&all, &groups(lo, hi), now);
            let got = dump(&*backend);
            assert_eq!(got.len(), want.len(), "m={m} j={j}");
            assert!(got == want, "m={m} j={j}: state differs");
            assert!(
                leftovers(&dir.path().join(&name)).is_empty(),
                "{:?}",
                leftovers(&dir.path().join(&name))
            );
            got_all.extend(got);

            // The next checkpoint is full and restores the same state.
            let report = manager.trigger_checkpoint(Metadata::new())?;
            assert_eq!(report.files_reused, 0, "m={m} j={j}: not a full checkpoint");
            let check = RocksDbStateBackend::open(config(
                &dir.path().join(format!("{name}-check")),
                &clock,
            ))?;
            let catalog = Catalog::open(storage(&dir.path().join(format!("{name}-cp"))))?;
            catalog.restore_into(report.info.id, &[("state", &check)], false)?;
            assert!(
                dump(&check) == want,
                "m={m} j={j}: checkpoint after the rescale"
            );
            news.push((backend, manager, lo, hi));
        }
        got_all.sort();
        assert!(got_all == want_all, "m={m}: union differs");

        // TTLs survived: an hour on, only the keys without one are left.
        if m == 3 {
            clock.advance(LONG);
            let later = clock.now_ms();
            for (backend, _, lo, hi) in &news {
                assert!(dump(&**backend) == expected(&all, &groups(*lo, *hi), later));
            }
            clock.set(now);
        }
    }
    Ok(())
}

/// Flips one byte in the middle of the file at `path`.
fn flip(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut bytes = fs::read(path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(path, bytes)?;
    Ok(())
}

/// A damaged SST file in either source (so both the database reused as
/// the base and a source whose ranges are ingested fail), a missing one,
/// and a damaged MANIFEST: the range restore fails, and the target's live
/// state is unchanged, with nothing left in its directory.
#[test]
fn a_damaged_source_fails_and_leaves_the_target_unchanged() -> R {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::shared(T0);
    let olds: Vec<OldWorker> = (0..2)
        .map(|w| old_worker(dir.path(), w, 2, 100, &clock))
        .collect::<Result<_, _>>()?;
    let (target, manager) = new_worker(dir.path(), "target", &clock)?;
    let before = dump(&*target);
    // Rescaled to one worker: both sources are read.
    let files = |old: &OldWorker, suffix: &str| -> Vec<PathBuf> {
        let manifest = old.catalog.manifest(old.checkpoint).expect("manifest");
        manifest.backends[0]
            .files
            .iter()
            .filter(|f| f.name.contains(suffix))
            .map(|f| old.storage_dir.join(&f.path))
            .collect()
    };
    for w in 0..2 {
        for (what, suffix) in [("an SST file", ".sst"), ("the MANIFEST", "MANIFEST")] {
            let path = files(&olds[w], suffix)
                .into_iter()
                .next()
                .expect("a file to damage");
            let good = fs::read(&path)?;
            flip(&path)?;
            let result = manager.restore_ranges(&parts(&olds, 0, 1));
            assert!(result.is_err(), "worker {w}, {what}: restored");
            assert!(
                dump(&*target) == before,
                "worker {w}, {what}: state changed"
            );
            assert_eq!(leftovers(&dir.path().join("target")), Vec::<String>::new());
            fs::write(&path, good)?;
        }
    }
    let path = files(&olds[1], ".sst").into_iter().next().expect("an SST");
    fs::remove_file(&path)?;
    assert!(manager.restore_ranges(&parts(&olds, 0, 1)).is_err());
    assert!(dump(&*target) == before);
    drop(olds);

    // Intact, it restores.
    let again = dir.path().join("again");
    fs::create_dir_all(&again)?;
    let olds: Vec<OldWorker> = (0..2)
        .map(|w| old_worker(&again, w, 2, 100, &clock))
        .collect::<Result<_, _>>()?;
    manager.restore_ranges(&parts(&olds, 0, 1))?;
    let want = expected(&union(&olds), &KeyRange::all(), clock.now_ms());
    assert!(dump(&*target) == want);
    Ok(())
}

/// Checkpoint files in a local directory (a native checkpoint made by
/// `create_checkpoint`, or one snapshot file).
struct DirFiles {
    dir: PathBuf,
    names: Vec<String>,
}

impl DirFiles {
    fn all(dir: &Path) -> gress_state::Result<Self> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io("listing", e))? {
            let entry = entry.map_err(|e| Error::io("listing", e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(DirFiles {
            dir: dir.to_path_buf(),
            names,
        })
    }
}

impl CheckpointFiles for DirFiles {
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn open(&self, name: &str) -> gress_state::Result<Box<dyn Read + '_>> {
        let f = fs::File::open(self.dir.join(name)).map_err(|e| Error::io("opening", e))?;
        Ok(Box::new(f))
    }

    fn fetch_all(&self, dir: &Path) -> gress_state::Result<()> {
        for name in &self.names {
            fs::copy(self.dir.join(name), dir.join(name)).map_err(|e| Error::io("copying", e))?;
        }
        Ok(())
    }
}

/// Sources of both formats at once (native checkpoints and a full
/// snapshot of a memory backend, with TTLs), called through the trait: the
/// live state is unchanged until the commit and exactly the ranges' keys
/// after it; an abandoned one leaves nothing; no source restores an empty
/// state; a foreign format is refused.
#[test]
fn native_and_snapshot_sources_together() -> R {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::shared(T0);
    let mut model = Model::new();
    let mut sources_dirs = Vec::new();
    for w in 0..2u16 {
        let b = RocksDbStateBackend::open(config(&dir.path().join(format!("src-{w}")), &clock))?;
        for g in 0..GROUPS {
            for i in 0..20u32 {
                let k = key(g, format!("{w}-{i}").as_bytes());
                let v = format!("v{w}-{g}-{i}").into_bytes();
                if i % 4 == 0 {
                    b.put_with_ttl(&k, &v, LONG)?;
                    model.insert(k, (v, Some(T0 + 3_600_000)));
                } else {
                    b.put(&k, &v)?;
                    model.insert(k, (v, None));
                }
            }
        }
        let cp = dir.path().join(format!("cp-{w}"));
        b.create_checkpoint(&cp)?;
        sources_dirs.push(cp);
    }
    let mut mem_config = gress_state::MemoryConfig::default();
    mem_config.clock = clock.clone();
    let mem = MemoryStateBackend::new(mem_config)?;
    for g in 0..GROUPS {
        for i in 0..20u32 {
            let k = key(g, format!("m-{i}").as_bytes());
            let v = format!("mem-{g}-{i}").into_bytes();
            if i % 3 == 0 {
                mem.put_with_ttl(&k, &v, SHORT)?;
                model.insert(k, (v, Some(T0 + 10_000)));
            } else {
                mem.put(&k, &v)?;
                model.insert(k, (v, None));
            }
        }
    }
    let snap_dir = dir.path().join("snap");
    fs::create_dir(&snap_dir)?;
    fs::write(snap_dir.join("state.snap"), mem.snapshot()?)?;

    let target_path = dir.path().join("target");
    let target = RocksDbStateBackend::open(config(&target_path, &clock))?;
    target.put(b"before", b"x")?;
    let before = dump(&target);

    let files0 = DirFiles::all(&sources_dirs[0])?;
    let files1 = DirFiles::all(&sources_dirs[1])?;
    let snap = DirFiles::all(&snap_dir)?;
    let r0 = [groups(0, 10), groups(40, 50)];
    let r1 = [groups(10, 20), groups(50, GROUPS)];
    let r2 = [groups(20, 40)];
    let sources = [
        RangeSource {
            format: ROCKSDB_CHECKPOINT_FORMAT,
            files: &files0,
            ranges: &r0,
        },
        RangeSource {
            format: SNAPSHOT_FORMAT,
            files: &snap,
            ranges: &r2,
        },
        RangeSource {
            format: ROCKSDB_CHECKPOINT_FORMAT,
            files: &files1,
            ranges: &r1,
        },
    ];
    let want: Kv = {
        let mut want = Vec::new();
        for (w, ranges) in [("0-", &r0[..]), ("m-", &r2), ("1-", &r1)] {
            for r in ranges {
                want.extend(
                    expected(&model, r, clock.now_ms())
                        .into_iter()
                        .filter(|(k, _)| k[2..].starts_with(w.as_bytes())),
                );
            }
        }
        want.sort();
        want
    };

    drop(target.prepare_restore_ranges(&sources)?);
    assert!(dump(&target) == before);
    assert_eq!(leftovers(&target_path), Vec::<String>::new());

    clock.advance(Duration::from_secs(60));
    let want: Kv = want
        .into_iter()
        .filter(|(k, _)| model[k].1.is_none_or(|at| clock.now_ms() < at))
        .collect();
    let prepared = target.prepare_restore_ranges(&sources)?;
    assert!(dump(&target) == before, "changed before the commit");
    prepared.commit()?;
    assert!(dump(&target) == want);
    assert_eq!(leftovers(&target_path), Vec::<String>::new());
    drop(target);
    let reopened = RocksDbStateBackend::open(config(&target_path, &clock))?;
    assert!(dump(&reopened) == want, "after a reopen");

    reopened.prepare_restore_ranges(&[])?.commit()?;
    assert!(dump(&reopened).is_empty());
    let err = reopened
        .prepare_restore_ranges(&[RangeSource {
            format: "memory-v1",
            files: &snap,
            ranges: &r2,
        }])
        .map(drop)
        .expect_err("a foreign format was accepted");
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err:?}");
    Ok(())
}

/// SST files that lie wholly outside the ranges taken from the reused
/// database are dropped, not only covered by tombstones: a worker whose
/// state is in one file per key group (compacted, at the last level),
/// split in four, leaves each new worker about a quarter of its entries.
#[test]
fn files_wholly_outside_the_ranges_are_dropped() -> R {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::shared(T0);
    // One database per group, each compacted into one file, gathered into
    // one database by a range restore: its own file and the ingested
    // files do not overlap.
    let mut cps = Vec::new();
    for g in 0..8u16 {
        let b = RocksDbStateBackend::open(config(&dir.path().join(format!("g{g}")), &clock))?;
        for i in 0..2000u32 {
            b.put(&key(g, &i.to_be_bytes()), &[g as u8; 64])?;
        }
        b.compact()?;
        let cp = dir.path().join(format!("g{g}-cp"));
        b.create_checkpoint(&cp)?;
        cps.push(DirFiles::all(&cp)?);
    }
    let ranges: Vec<[KeyRange; 1]> = (0..8u16).map(|g| [groups(g, g + 1)]).collect();
    let sources: Vec<RangeSource<'_>> = cps
        .iter()
        .zip(&ranges)
        .map(|(files, ranges)| RangeSource {
            format: ROCKSDB_CHECKPOINT_FORMAT,
            files,
            ranges,
        })
        .collect();
    let whole = RocksDbStateBackend::open(config(&dir.path().join("whole"), &clock))?;
    whole.prepare_restore_ranges(&sources)?.commit()?;
    assert_eq!(dump(&whole).len(), 16_000);
    let whole_cp = dir.path().join("whole-cp");
    whole.create_checkpoint(&whole_cp)?;
    let whole_files = DirFiles::all(&whole_cp)?;

    for part in 0..4u16 {
        let b = RocksDbStateBackend::open(config(&dir.path().join(format!("part{part}")), &clock))?;
        let ranges = [groups(part * 2, part * 2 + 2)];
        b.prepare_restore_ranges(&[RangeSource {
            format: ROCKSDB_CHECKPOINT_FORMAT,
            files: &whole_files,
            ranges: &ranges,
        }])?
        .commit()?;
        assert_eq!(dump(&b).len(), 4000);
        let entries: u64 = b
            .live_files()?
            .iter()
            .filter(|f| f.column_family_name == "default")
            .map(|f| f.num_entries - f.num_deletions)
            .sum();
        assert!(
            entries <= 4000,
            "part {part}: {entries} entries in its files"
        );
    }
    Ok(())
}

/// Splits at `splits` (sorted keys): range `i` is `[splits[i-1], splits[i])`,
/// unbounded at both ends.
fn split_ranges(splits: &[Vec<u8>]) -> Vec<KeyRange> {
    (0..=splits.len())
        .map(|i| KeyRange {
            start: if i == 0 {
                Bound::Unbounded
            } else {
                Bound::Included(splits[i - 1].clone())
            },
            end: splits
                .get(i)
                .map_or(Bound::Unbounded, |s| Bound::Excluded(s.clone())),
        })
        .collect()
}

/// The keys in both `a` and `b` (both `[start, end)` or unbounded).
fn intersect(a: &KeyRange, b: &KeyRange) -> Option<KeyRange> {
    let start = match (&a.start, &b.start) {
        (Bound::Included(x), Bound::Included(y)) => Bound::Included(x.max(y).clone()),
        (Bound::Unbounded, s) | (s, Bound::Unbounded) => s.clone(),
        _ => unreachable!("only included starts"),
    };
    let end = match (&a.end, &b.end) {
        (Bound::Excluded(x), Bound::Excluded(y)) => Bound::Excluded(x.min(y).clone()),
        (Bound::Unbounded, e) | (e, Bound::Unbounded) => e.clone(),
        _ => unreachable!("only excluded ends"),
    };
    let empty = matches!((&start, &end), (Bound::Included(s), Bound::Excluded(e)) if s >= e);
    (!empty).then_some(KeyRange { start, end })
}

fn split_points(max: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4), 0..max).prop_map(
        |mut v| {
            v.sort();
            v.dedup();
            v
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Random keys (a 2-byte group, then random bytes), owned by one to
    /// three old workers split at random keys, rescaled to workers split
    /// at other random keys: each new worker holds exactly its keys, and
    /// its first checkpoint restores the same state.
    #[test]
    fn random_keys_and_split_points(
        entries in proptest::collection::btree_map(
            (0u16..8, proptest::collection::vec(any::<u8>(), 0..6))
                .prop_map(|(g, s)| key(g, &s)),
            proptest::collection::vec(any::<u8>(), 0..40),
            0..400,
        ),
        old_splits in split_points(3),
        new_splits in split_points(4),
        deleted in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::shared(T0);
        let old_ranges = split_ranges(&old_splits);
        let mut model = entries.clone();
        let keys: Vec<Vec<u8>> = entries.keys().cloned().collect();
        let mut cps = Vec::new();
        for (w, range) in old_ranges.iter().enumerate() {
            let b = RocksDbStateBackend::open(config(&dir.path().join(format!("old{w}")), &clock))
                .expect("open");
            for (k, v) in entries.iter().filter(|(k, _)| range.contains(k)) {
                b.put(k, v).expect("put");
            }
            b.flush().expect("flush");
            for d in &deleted {
                if !keys.is_empty() {
                    let k = d.get(&keys);
                    if range.contains(k) {
                        b.delete(k).expect("delete");
                        model.remove(k);
                    }
                }
            }
            let cp = dir.path().join(format!("old{w}-cp"));
            b.create_checkpoint(&cp).expect("checkpoint");
            cps.push(DirFiles::all(&cp).expect("files"));
        }
        for (j, new_range) in split_ranges(&new_splits).iter().enumerate() {
            let parts: Vec<(usize, [KeyRange; 1])> = old_ranges
                .iter()
                .enumerate()
                .filter_map(|(w, r)| intersect(r, new_range).map(|i| (w, [i])))
                .collect();
            let sources: Vec<RangeSource<'_>> = parts
                .iter()
                .map(|(w, ranges)| RangeSource {
                    format: ROCKSDB_CHECKPOINT_FORMAT,
                    files: &cps[*w],
                    ranges,
                })
                .collect();
            let path = dir.path().join(format!("new{j}"));
            let b = RocksDbStateBackend::open(config(&path, &clock)).expect("open");
            b.put(b"\xff\xffleft over", b"x").expect("put");
            b.prepare_restore_ranges(&sources).expect("prepare").commit().expect("commit");
            let want: Kv = model
                .iter()
                .filter(|(k, _)| new_range.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(dump(&b), want.clone());
            let cp = dir.path().join(format!("new{j}-cp"));
            b.create_checkpoint(&cp).expect("checkpoint");
            let check = RocksDbStateBackend::open(config(&dir.path().join(format!("check{j}")), &clock))
                .expect("open");
            check
                .prepare_restore(ROCKSDB_CHECKPOINT_FORMAT, &DirFiles::all(&cp).expect("files"))
                .expect("prepare")
                .commit()
                .expect("commit");
            prop_assert_eq!(dump(&check), want);
        }
    }
}
