//! Restores through `restore_from` and `prepare_restore`, in both checkpoint
//! formats the RocksDB backend reads, and what every failed one leaves on
//! disk: nothing but the live database.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use gress_rocksdb::{ROCKSDB_CHECKPOINT_FORMAT, RocksDbConfig, RocksDbStateBackend};
use gress_state::checkpoint::{CheckpointFiles, Checkpointable};
use gress_state::{Error, KeyRange, MemoryStateBackend, Result, SNAPSHOT_FORMAT, StateBackend};

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(what.to_string(), e)
}

fn small(path: &Path) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path);
    c.write_buffer_size = 1 << 20;
    c.block_cache_size = 1 << 20;
    c
}

/// Checkpoint files in a local directory, as a checkpoint manager would
/// hand them to a backend; `fail_fetch_after` makes `fetch_all` fail
/// after copying that many files, like a download that breaks off.
struct DirFiles {
    dir: PathBuf,
    names: Vec<String>,
    fail_fetch_after: Option<usize>,
}

impl DirFiles {
    fn all(dir: &Path) -> Result<Self> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(io("listing checkpoint"))? {
            let entry = entry.map_err(io("listing checkpoint"))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(DirFiles {
            dir: dir.to_path_buf(),
            names,
            fail_fetch_after: None,
        })
    }
}

impl CheckpointFiles for DirFiles {
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>> {
        let f = fs::File::open(self.dir.join(name)).map_err(io("opening a checkpoint file"))?;
        Ok(Box::new(f))
    }

    fn fetch_all(&self, dir: &Path) -> Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            if self.fail_fetch_after == Some(i) {
                return Err(Error::io(
                    "fetching a checkpoint file",
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "size mismatch"),
                ));
            }
            fs::copy(self.dir.join(name), dir.join(name)).map_err(io("copying"))?;
        }
        Ok(())
    }
}

/// The `db-NNNNNN` directories in the backend's directory.
fn db_dirs(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(path).map_err(io("listing the backend"))? {
        let name = entry
            .map_err(io("listing the backend"))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("db-") {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn dump(b: &dyn StateBackend) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    b.scan(KeyRange::all())?.collect()
}

/// A copy of the native checkpoint `from` in `to`, with `damage` applied
/// to the file whose name starts with `prefix`.
fn damaged_copy(from: &Path, to: &Path, prefix: &str, damage: fn(&mut Vec<u8>)) -> Result<()> {
    fs::create_dir(to).map_err(io("creating a copy"))?;
    let mut damaged = false;
    for name in DirFiles::all(from)?.names {
        let mut bytes = fs::read(from.join(&name)).map_err(io("reading"))?;
        if name.starts_with(prefix) {
            damage(&mut bytes);
            damaged = true;
        }
        fs::write(to.join(&name), bytes).map_err(io("writing"))?;
    }
    assert!(damaged, "no file {prefix}* in the checkpoint");
    Ok(())
}

/// Every way a RocksDB restore can fail leaves the live state as it was
/// and no database directory but the live one, at once (not only after
/// the next open): a corrupt or truncated snapshot to `restore_from`, a
/// commit that fails before `LIVE` is renamed, checkpoint files that break
/// off while fetched, miss an SST or hold a damaged MANIFEST or CURRENT,
/// a damaged or misnamed snapshot to `prepare_restore`, an abandoned
/// prepared restore of either format, and a commit after close.
#[test]
fn failed_restores_leave_only_the_live_database() -> Result<()> {
    let dir = tempfile::tempdir().map_err(io("creating a temp dir"))?;
    let path = dir.path().join("state");
    let backend = RocksDbStateBackend::open(small(&path))?;
    for i in 0..200u32 {
        backend.put(format!("live-{i:03}").as_bytes(), b"kept")?;
    }
    let live = dump(&backend)?;

    let source = MemoryStateBackend::default();
    for i in 0..500u32 {
        source.put(format!("restored-{i:03}").as_bytes(), &[7; 64])?;
    }
    let snapshot = source.snapshot()?;
    let snap_dir = dir.path().join("snap");
    fs::create_dir(&snap_dir).map_err(io("creating snap"))?;
    let mut corrupt = snapshot.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x20;
    let truncated = snapshot[..snapshot.len() - 10].to_vec();
    fs::write(snap_dir.join("corrupt.snap"), &corrupt).map_err(io("writing"))?;
    fs::write(snap_dir.join("truncated.snap"), &truncated).map_err(io("writing"))?;
    fs::write(snap_dir.join("good.snap"), &snapshot).map_err(io("writing"))?;

    // A native checkpoint of another database, and damaged copies of it.
    let other = RocksDbStateBackend::open(small(&dir.path().join("other")))?;
    for i in 0..300u32 {
        other.put(format!("checkpointed-{i:03}").as_bytes(), &[3; 64])?;
    }
    other.flush()?;
    let cp = dir.path().join("cp");
    other.create_checkpoint(&cp)?;
    damaged_copy(&cp, &dir.path().join("bad-manifest"), "MANIFEST", |b| {
        b[8..].iter_mut().for_each(|x| *x ^= 0xff)
    })?;
    damaged_copy(&cp, &dir.path().join("bad-current"), "CURRENT", |b| {
        *b = b"MANIFEST-999999\n".to_vec()
    })?;

    let unchanged = |step: &str| -> Result<()> {
        assert_eq!(db_dirs(&path)?, ["db-000001"], "{step}: left behind");
        assert_eq!(dump(&backend)?, live, "{step}: live state changed");
        Ok(())
    };
    let check = |step: &str, result: Result<()>| -> Result<()> {
        assert!(result.is_err(), "{step}: succeeded");
        unchanged(step)
    };

    check(
        "restore_from, corrupt",
        backend.restore_from(&mut corrupt.as_slice()).map(drop),
    )?;
    check(
        "restore_from, truncated",
        backend.restore_from(&mut truncated.as_slice()).map(drop),
    )?;

    // A directory where `LIVE.tmp` is written makes the commit fail
    // before the rename.
    let blocker = path.join("LIVE.tmp");
    fs::create_dir(&blocker).map_err(io("creating LIVE.tmp"))?;
    check(
        "restore_from, commit fails before the rename",
        backend.restore_from(&mut snapshot.as_slice()).map(drop),
    )?;
    fs::remove_dir(&blocker).map_err(io("removing LIVE.tmp"))?;

    let checkpoint = |dir: &Path, edit: fn(&mut DirFiles)| -> Result<()> {
        let mut files = DirFiles::all(dir)?;
        edit(&mut files);
        backend
            .prepare_restore(ROCKSDB_CHECKPOINT_FORMAT, &files)
            .map(drop)
    };
    check(
        "checkpoint, fetch breaks off",
        checkpoint(&cp, |f| f.fail_fetch_after = Some(2)),
    )?;
    check(
        "checkpoint, an SST missing",
        checkpoint(&cp, |f| f.names.retain(|n| !n.ends_with(".sst"))),
    )?;
    check(
        "checkpoint, damaged MANIFEST",
        checkpoint(&dir.path().join("bad-manifest"), |_| {}),
    )?;
    check(
        "checkpoint, CURRENT names no MANIFEST",
        checkpoint(&dir.path().join("bad-current"), |_| {}),
    )?;

    let snapshot_files = |names: &[&str]| DirFiles {
        dir: snap_dir.clone(),
        names: names.iter().map(|n| n.to_string()).collect(),
        fail_fetch_after: None,
    };
    for (step, names) in [
        ("snapshot format, corrupt", &["corrupt.snap"][..]),
        ("snapshot format, truncated", &["truncated.snap"]),
        ("snapshot format, two files", &["good.snap", "good.snap"]),
        ("snapshot format, no file", &[]),
    ] {
        check(
            step,
            backend
                .prepare_restore(SNAPSHOT_FORMAT, &snapshot_files(names))
                .map(drop),
        )?;
    }

    // Abandoned after a successful prepare: the state stays, the staged
    // database goes when the prepared restore is dropped.
    let prepared = backend.prepare_restore(ROCKSDB_CHECKPOINT_FORMAT, &DirFiles::all(&cp)?)?;
    assert_eq!(db_dirs(&path)?.len(), 2, "nothing staged");
    drop(prepared);
    unchanged("checkpoint, abandoned")?;
    let prepared = backend.prepare_restore(SNAPSHOT_FORMAT, &snapshot_files(&["good.snap"]))?;
    assert_eq!(db_dirs(&path)?.len(), 2, "nothing staged");
    drop(prepared);
    unchanged("snapshot format, abandoned")?;

    // A commit after close fails and deletes what it staged.
    let prepared = backend.prepare_restore(SNAPSHOT_FORMAT, &snapshot_files(&["good.snap"]))?;
    backend.close()?;
    assert!(matches!(prepared.commit(), Err(Error::Closed)));
    assert_eq!(db_dirs(&path)?, ["db-000001"], "commit after close");
    drop(backend);

    let reopened = RocksDbStateBackend::open(small(&path))?;
    assert_eq!(dump(&reopened)?, live);
    Ok(())
}

/// `prepare_restore` reads `snapshot-v1` (one full snapshot file, as a
/// savepoint stores it): the live state is unchanged until the commit, and
/// then it is exactly the snapshot's, also after a reopen.
#[test]
fn snapshot_format_restores_through_prepare_restore() -> Result<()> {
    let dir = tempfile::tempdir().map_err(io("creating a temp dir"))?;
    let path = dir.path().join("state");
    let backend = RocksDbStateBackend::open(small(&path))?;
    backend.put(b"only-before", b"x")?;
    let before = dump(&backend)?;

    let source = MemoryStateBackend::default();
    for i in 0..1000u32 {
        source.put(format!("k{i:04}").as_bytes(), format!("v{i}").as_bytes())?;
    }
    let snap_dir = dir.path().join("snap");
    fs::create_dir(&snap_dir).map_err(io("creating snap"))?;
    fs::write(snap_dir.join("state.snap"), source.snapshot()?).map_err(io("writing"))?;
    let files = DirFiles::all(&snap_dir)?;

    let prepared = backend.prepare_restore(SNAPSHOT_FORMAT, &files)?;
    assert_eq!(dump(&backend)?, before, "changed before the commit");
    prepared.commit()?;
    let want = dump(&source)?;
    assert_eq!(dump(&backend)?, want);
    assert_eq!(db_dirs(&path)?, ["db-000002"]);
    drop(backend);

    let reopened = RocksDbStateBackend::open(small(&path))?;
    assert_eq!(dump(&reopened)?, want);

    let err = reopened
        .prepare_restore("memory-v1", &files)
        .map(drop)
        .expect_err("a foreign format was accepted");
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err:?}");
    Ok(())
}
