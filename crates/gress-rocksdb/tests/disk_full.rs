//! The RocksDB backend on a disk that fills up: a small tmpfs, mounted by
//! the test when it runs as root and may mount; elsewhere the tests say why
//! they skip and pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use gress_rocksdb::{Compression, RocksDbConfig, RocksDbStateBackend};
use gress_state::checkpoint::{CaptureMode, Checkpointable};
use gress_state::{Error, Result, StateBackend};

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` spells it) at `at`;
    /// `None`, with the reason printed, where that is not possible.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        if !root {
            println!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs {
                at: at.to_path_buf(),
            }),
            Ok(out) => {
                println!(
                    "skipped: mount failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg("-l").arg(&self.at).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("could not unmount {}: {other:?}", self.at.display()),
        }
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// 1 KiB that no compression shrinks, different for every `i`.
fn value(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Key `n` of writer `w`.
fn key(w: u64, n: u64) -> Vec<u8> {
    format!("key-{w}-{n:08}").into_bytes()
}

const WRITERS: u64 = 8;

/// Ends the process as failed if the test is not done within `limit`:
/// a write that never returns cannot fail the test any other way.
fn watchdog(limit: Duration, mnt: PathBuf, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while !done.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                eprintln!("FAILED: a write or flush still hangs after {limit:?}");
                drop(Command::new("umount").arg("-l").arg(&mnt).status());
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// A backend whose disk ran full used to fail every write, flush and
/// capture until it was reopened, even after space was freed: RocksDB
/// resumes by itself only once the free space reaches the largest write
/// buffer of the database, and the backend's own column family had
/// RocksDB's default of 64 MiB, more than this disk could ever free. And
/// a writer that RocksDB had parked in a write stall when the disk filled
/// up blocked RocksDB's recovery for good, and itself with it (in about
/// half the rounds with these settings; hence several rounds). Now
/// writers on a full disk fail with an error that says the disk is full
/// and that the backend resumes by itself; once space is freed, writes,
/// flushes and captures work again without a reopen, and every
/// acknowledged write is there.
#[test]
fn writes_resume_after_the_disk_was_full() -> Result<()> {
    let dir = tempfile::tempdir().map_err(io("creating a temp dir"))?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).map_err(io("creating the mount point"))?;
    let Some(_tmpfs) = Tmpfs::mount(&mnt, "8m") else {
        return Ok(());
    };
    let done = Arc::new(AtomicBool::new(false));
    watchdog(Duration::from_secs(600), mnt.clone(), done.clone());
    for round in 0..4 {
        let path = mnt.join(format!("db-{round}"));
        fill_free_and_resume(&mnt, &path)?;
        std::fs::remove_dir_all(&path).map_err(io("removing the database"))?;
    }
    done.store(true, Ordering::SeqCst);
    Ok(())
}

/// One round of [`writes_resume_after_the_disk_was_full`] with a new
/// backend in `path` on the tmpfs `mnt`.
fn fill_free_and_resume(mnt: &Path, path: &Path) -> Result<()> {
    // Written first, deleted to free space once the disk is full.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0xA5; 3 << 20]).map_err(io("writing the filler"))?;

    // Small memtables, two at most: writes stall often.
    let mut config = RocksDbConfig::new(path);
    config.write_buffer_size = 64 << 10;
    config.max_write_buffer_number = 2;
    config.block_cache_size = 1 << 20;
    config.compression = Compression::None;
    let backend = RocksDbStateBackend::open(config.clone())?;
    backend.claim_checkpoints(1)?;

    // Writers put until their first error, or until space was freed.
    let freed = AtomicBool::new(false);
    let (failures, failed) = mpsc::channel::<Error>();
    let acked: Vec<u64> = std::thread::scope(|s| -> Result<_> {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (backend, freed, failures) = (&backend, &freed, failures.clone());
                s.spawn(move || {
                    let mut n = 0;
                    while !freed.load(Ordering::SeqCst) {
                        match backend.put(&key(w, n), &value(w << 32 | n)) {
                            Ok(()) => n += 1,
                            Err(e) => {
                                drop(failures.send(e));
                                break;
                            }
                        }
                        assert!(n < 100_000, "8 MiB never filled up");
                    }
                    n
                })
            })
            .collect();
        drop(failures);
        let first = failed.recv_timeout(Duration::from_secs(60));
        std::fs::remove_file(&filler).map_err(io("removing the filler"))?;
        freed.store(true, Ordering::SeqCst);
        let acked = writers
            .into_iter()
            .map(|w| w.join().expect("writer panicked"))
            .collect();
        let first = first.expect("no write failed on the full disk");
        println!("disk full: {first}");
        assert!(
            matches!(&first, Error::Engine { message, .. } if message.contains("the disk is full")),
            "{first:?}"
        );
        Ok(acked)
    })?;
    println!("acknowledged puts per writer: {acked:?}");

    // RocksDB checks the free space every 5 seconds.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut retries = 0;
    while let Err(e) = backend.put(b"after", b"freed") {
        if Instant::now() > deadline {
            return Err(e);
        }
        retries += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("puts resumed after {retries} retries");
    backend.flush()?;
    let capture = backend.capture(1, CaptureMode::Full, 1)?;
    assert!(!capture.files().is_empty());
    drop(capture);
    for (w, &n) in (0..WRITERS).zip(&acked) {
        for i in 0..n {
            assert_eq!(
                backend.get(&key(w, i))?,
                Some(value(w << 32 | i)),
                "acknowledged put {i} of writer {w}"
            );
        }
    }
    drop(backend);

    let reopened = RocksDbStateBackend::open(config)?;
    assert_eq!(reopened.get(b"after")?.as_deref(), Some(&b"freed"[..]));
    Ok(())
}
