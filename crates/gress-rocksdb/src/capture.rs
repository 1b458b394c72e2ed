//! Checkpoints of the RocksDB backend for the checkpoint manager.
//!
//! A capture is a native RocksDB checkpoint (SST files hard-linked into a
//! staging directory next to the live database). SST and blob files never
//! change once written, so they are offered for sharing under a key made
//! of the database's id and the file name: the manager stores each once
//! and references it from every checkpoint that needs it. A restore fetches
//! a checkpoint's files into a new database directory, opens it, and
//! switches to it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gress_state::checkpoint::{
    Capture, CaptureKind, CaptureMode, CapturedFile, CheckpointFiles, Checkpointable, FileSource,
    PreparedRestore, SNAPSHOT_FORMAT,
};
use gress_state::{Error, Result, StateBackend};

use crate::backend::{RocksDbStateBackend, discard_dir};
use crate::db::Db;
use crate::error;

/// Checkpoint format of the RocksDB backend: the files of a native RocksDB
/// checkpoint.
pub const ROCKSDB_CHECKPOINT_FORMAT: &str = "rocksdb-v1";

struct RocksCapture {
    /// Staging directory of the native checkpoint; removed on drop.
    dir: PathBuf,
    files: Vec<CapturedFile>,
    pause: Duration,
    /// Keeps the database (and so the hard-linked files' origin) open.
    _db: Arc<Db>,
}

impl Capture for RocksCapture {
    fn kind(&self) -> CaptureKind {
        CaptureKind::Complete
    }

    fn base(&self) -> Option<u64> {
        None
    }

    fn format(&self) -> &'static str {
        ROCKSDB_CHECKPOINT_FORMAT
    }

    fn files(&self) -> &[CapturedFile] {
        &self.files
    }

    fn write_stream(&mut self, name: &str, _out: &mut dyn Write) -> Result<u64> {
        Err(Error::invalid_argument(
            "name",
            format!("{name}: a RocksDB capture has only files on disk"),
        ))
    }

    fn pause(&self) -> Duration {
        self.pause
    }

    fn committed(self: Box<Self>) {}
}

impl Drop for RocksCapture {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a checkpoint staging directory");
        }
    }
}

fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        if entry
            .file_type()
            .map_err(|e| Error::io(format!("reading {}", entry.path().display()), e))?
            .is_file()
        {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

struct PreparedRocksRestore<'a> {
    backend: &'a RocksDbStateBackend,
    db: Option<Db>,
    name: String,
}

impl PreparedRestore for PreparedRocksRestore<'_> {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let db = self.db.take().expect("committed once");
        self.backend.switch_to(db, &self.name)
    }
}

impl Drop for PreparedRocksRestore<'_> {
    fn drop(&mut self) {
        // Abandoned: the new database and its directory go.
        if let Some(db) = self.db.take() {
            db.retire();
        }
    }
}

impl Checkpointable for RocksDbStateBackend {
    fn claim_checkpoints(&self, owner: u64) -> Result<()> {
        self.checkpoint_owner.claim(owner)
    }

    fn release_checkpoints(&self, owner: u64) {
        self.checkpoint_owner.release(owner);
    }

    /// Captures are always complete (their SST files are shared instead).
    fn delta_base(&self) -> Option<u64> {
        None
    }

    /// Switches the memtables to immutable ones and flushes them in the
    /// background: the capture that follows then only hard-links files.
    fn prepare_capture(&self) -> Result<()> {
        let db = self.current()?;
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(false);
        db.db().flush_opt(&opts).map_err(error::engine)
    }

    /// Ready once no flushed memtable waits to be written.
    fn capture_ready(&self) -> Result<bool> {
        let db = self.current()?;
        let pending = db
            .db()
            .property_int_value("rocksdb.num-immutable-mem-table")
            .map_err(error::engine)?;
        Ok(pending.unwrap_or(0) == 0)
    }

    /// A native checkpoint. With [`CaptureMode::Incremental`] its SST files
    /// are offered for sharing with other checkpoints; with
    /// [`CaptureMode::Full`] every file is stored anew. Refused unless
    /// `owner` has claimed the backend.
    fn capture(
        &self,
        owner: u64,
        mode: CaptureMode,
        checkpoint_id: u64,
    ) -> Result<Box<dyn Capture>> {
        self.checkpoint_owner.check(owner, "backend")?;
        let db = self.current()?;
        let dir = self.root.path.join(format!("capture-{checkpoint_id:020}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
        let started = Instant::now();
        // Flushes the memtables first, so the WAL holds (almost) nothing;
        // writers go on into a new memtable meanwhile.
        rocksdb::checkpoint::Checkpoint::new(db.db())
            .and_then(|cp| cp.create_checkpoint(&dir))
            .map_err(error::engine)?;
        let pause = started.elapsed();
        let files = list_files(&dir)?
            .into_iter()
            .map(|name| {
                let immutable = name.ends_with(".sst") || name.ends_with(".blob");
                CapturedFile {
                    source: FileSource::Local(dir.join(&name)),
                    shared_key: (immutable && mode == CaptureMode::Incremental)
                        .then(|| format!("rocksdb/{}/{name}", db.id)),
                    name,
                }
            })
            .collect();
        Ok(Box::new(RocksCapture {
            dir,
            files,
            pause,
            _db: db,
        }))
    }

    /// Accepts [`ROCKSDB_CHECKPOINT_FORMAT`] (the files are fetched into a
    /// new database directory and opened) and [`SNAPSHOT_FORMAT`] (the one
    /// snapshot file is streamed into a new database). Either way the new
    /// database sits beside the live one until the commit; on `Err`, or
    /// when the prepared restore is dropped, it is deleted.
    fn prepare_restore(
        &self,
        format: &str,
        files: &dyn CheckpointFiles,
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        let staged = match format {
            ROCKSDB_CHECKPOINT_FORMAT => {
                if self.is_closed() {
                    return Err(Error::Closed);
                }
                self.stage_checkpoint(files)?
            }
            SNAPSHOT_FORMAT => {
                let names = files.names();
                let [name] = names.as_slice() else {
                    return Err(Error::invalid_argument(
                        "files",
                        format!("{} files for checkpoint format {format}", names.len()),
                    ));
                };
                if self.is_closed() {
                    return Err(Error::Closed);
                }
                let mut input = files.open(name)?;
                let (name, db, _summary) = self.stage_snapshot(&mut input)?;
                (name, db)
            }
            other => {
                return Err(Error::UnsupportedFormat {
                    found: format!("checkpoint format {other}").into(),
                    supported: format!("{ROCKSDB_CHECKPOINT_FORMAT} or {SNAPSHOT_FORMAT}").into(),
                });
            }
        };
        let (name, db) = staged;
        Ok(Box::new(PreparedRocksRestore {
            backend: self,
            db: Some(db),
            name,
        }))
    }

    /// Builds the new database from the largest native checkpoint among
    /// the sources (its files reused as they are, the keys outside its
    /// ranges deleted), then ingests SST files written from the ranges of
    /// the other native checkpoints and writes those of `snapshot-v1`
    /// sources. Like `prepare_restore`, nothing changes until the commit,
    /// and the new database has a new id, so the next capture shares no
    /// file with earlier checkpoints.
    fn prepare_restore_ranges(
        &self,
        sources: &[gress_state::RangeSource<'_>],
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (name, db) = self.stage_ranges(sources)?;
        Ok(Box::new(PreparedRocksRestore {
            backend: self,
            db: Some(db),
            name,
        }))
    }
}

impl RocksDbStateBackend {
    /// Fetches a native checkpoint's files into a new database directory
    /// and opens it. On `Err` nothing of it is left on disk.
    pub(crate) fn stage_checkpoint(&self, files: &dyn CheckpointFiles) -> Result<(String, Db)> {
        let (name, dir) = self.new_db_dir()?;
        let opened = std::fs::create_dir(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
            .and_then(|()| files.fetch_all(&dir))
            .and_then(|()| self.engine.open_copy(&self.root, &dir));
        match opened {
            Ok(db) => Ok((name, db)),
            Err(e) => {
                discard_dir(&dir);
                Err(e)
            }
        }
    }
}
