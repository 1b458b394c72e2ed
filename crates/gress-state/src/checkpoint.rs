//! What a checkpoint manager needs from a backend.
//!
//! A checkpoint of a backend is a set of files. [`Checkpointable::capture`]
//! takes a consistent cut of the state, pausing writers only for that, and
//! returns a [`Capture`] that lists the files and writes them out while
//! processing goes on. [`Checkpointable::restore_checkpoint`] replaces the
//! state with a checkpoint's files. The manager (crate `gress-checkpoint`)
//! stores the files, shares them between checkpoints, and commits each
//! checkpoint with a manifest; backends know nothing about storage.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::KeyRange;
use crate::backend::StateBackend;
use crate::error::Result;

/// What the manager asks a capture to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaptureMode {
    /// Files that restore the whole state on their own.
    Full,
    /// Only what changed since the backend's previous committed capture,
    /// where the backend can (it may still answer with a full capture).
    Incremental,
}

/// Whether a capture stands alone or builds on the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaptureKind {
    /// These files alone restore the state (they may share files with
    /// earlier checkpoints, e.g. RocksDB SST files).
    Complete,
    /// These files hold the changes since the backend's previous committed
    /// capture: restoring applies that checkpoint's files, then these.
    Delta,
}

/// Where a captured file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// A file on local disk (e.g. a hard link in a RocksDB checkpoint).
    Local(PathBuf),
    /// Bytes produced by [`Capture::write_stream`].
    Stream,
}

/// One file of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFile {
    /// The file's name within the backend's checkpoint, e.g. `000012.sst`
    /// or `delta.snap`. Restores see the same names.
    pub name: String,
    /// Where the bytes come from.
    pub source: FileSource,
    /// For immutable files that may be stored once and referenced by many
    /// checkpoints: a key that names these exact bytes wherever it is used
    /// (e.g. `sst/<db id>/000012.sst`). `None` for files private to one
    /// checkpoint.
    pub shared_key: Option<String>,
}

/// A consistent cut of one backend's state, ready to be written out.
///
/// Dropping a capture that was not [`committed`](Capture::committed) tells
/// the backend that the checkpoint failed. A delta never depends on a
/// capture that was not committed: it holds every change since its
/// [`base`](Capture::base), a checkpoint that was committed before the cut.
pub trait Capture: Send {
    /// Complete or delta.
    fn kind(&self) -> CaptureKind;

    /// For a [`CaptureKind::Delta`]: the id of the committed checkpoint
    /// whose state this delta applies to. `None` for a complete capture.
    fn base(&self) -> Option<u64>;

    /// The backend's checkpoint format, recorded in the manifest and given
    /// back to [`Checkpointable::restore_checkpoint`].
    fn format(&self) -> &'static str;

    /// The files to store, in the order a restore must read them.
    fn files(&self) -> &[CapturedFile];

    /// Writes the bytes of a [`FileSource::Stream`] file; returns their count.
    fn write_stream(&mut self, name: &str, out: &mut dyn Write) -> Result<u64>;

    /// How long writers were held up while the cut was taken.
    fn pause(&self) -> Duration;

    /// Tells the backend the checkpoint was committed, so later
    /// incremental captures may build on this one.
    fn committed(self: Box<Self>);
}

/// Checkpoint format that every [`Checkpointable`] backend restores: one
/// file holding a full snapshot (format v1, docs/format.md). Savepoints use
/// it, and a backend that a checkpoint does not hold is restored from an
/// empty one.
pub const SNAPSHOT_FORMAT: &str = "snapshot-v1";

/// A checkpoint's files for one backend, as a restore reads them.
pub trait CheckpointFiles {
    /// The names of the files, in the order they were captured (for a delta
    /// chain: the full capture first, then each delta in order).
    fn names(&self) -> Vec<String>;

    /// Opens one file as a stream; its size and checksum are verified when
    /// the stream reaches its end, which then reports an error instead of
    /// end of input if they do not match.
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>>;

    /// Copies every file into the directory `dir` (which exists), verified.
    fn fetch_all(&self, dir: &Path) -> Result<()>;
}

/// A restore that has read and verified everything and only waits to be
/// switched in. Dropping it abandons the restore; the state is unchanged.
pub trait PreparedRestore: Send {
    /// Makes the prepared state the backend's state. On `Err` the state is
    /// unchanged; once the switch has happened, this returns `Ok` (a later
    /// step that failed, such as making the switch durable, is logged).
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Part of a restore from several checkpoints: the keys of `ranges` in
/// the checkpoint made of `files` (captured in `format`). Rescaling a job
/// restores each new worker from the key ranges it now owns in the
/// checkpoints of the old workers.
pub struct RangeSource<'a> {
    /// The checkpoint's format (the backend's own, or [`SNAPSHOT_FORMAT`]).
    pub format: &'a str,
    /// The checkpoint's files.
    pub files: &'a dyn CheckpointFiles,
    /// The keys to take from it; keys outside every range are left out.
    pub ranges: &'a [KeyRange],
}

impl std::fmt::Debug for RangeSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeSource")
            .field("format", &self.format)
            .field("files", &self.files.names())
            .field("ranges", &self.ranges)
            .finish()
    }
}

/// A backend whose state a checkpoint manager can capture and restore.
///
/// A backend belongs to at most one manager at a time
/// ([`claim_checkpoints`](Checkpointable::claim_checkpoints)): two managers
/// taking turns would each see only part of the changes, and their deltas
/// would miss writes.
pub trait Checkpointable: StateBackend {
    /// Makes the manager identified by `owner` the only one that may
    /// capture this backend. Refused with [`crate::Error::InvalidArgument`]
    /// if another owner holds it; claiming again with the same owner is
    /// a no-op. A new owner starts a new delta chain.
    fn claim_checkpoints(&self, owner: u64) -> Result<()>;

    /// Lets go of a claim made by `owner` (no-op for any other owner).
    fn release_checkpoints(&self, owner: u64);

    /// The committed checkpoint an incremental capture taken now would
    /// build on, if the backend would answer with a delta.
    fn delta_base(&self) -> Option<u64>;

    /// Whether the backend keeps all its state in this process's memory
    /// (the memory backend). A cache in front of such a backend holds
    /// the state itself rather than a second copy, and needs no budget of
    /// its own. The default: no.
    fn keeps_state_in_memory(&self) -> bool {
        false
    }

    /// Starts, in the background, the work a capture would otherwise do
    /// while writers wait (RocksDB flushes its memtables). The caller then
    /// writes nothing until it captures, and captures once
    /// [`capture_ready`](Checkpointable::capture_ready) says so (or
    /// sooner, waiting for that work). The default does nothing.
    fn prepare_capture(&self) -> Result<()> {
        Ok(())
    }

    /// Whether the work [`prepare_capture`](Checkpointable::prepare_capture)
    /// started is done, so that a capture now is quick. The default: yes.
    fn capture_ready(&self) -> Result<bool> {
        Ok(true)
    }

    /// Takes a consistent cut of the state for checkpoint `checkpoint_id`
    /// of `owner` (ids increase; backends may use them to name files).
    /// Captures are taken one at a time, but several may be written out
    /// and committed (or dropped) in any order.
    fn capture(
        &self,
        owner: u64,
        mode: CaptureMode,
        checkpoint_id: u64,
    ) -> Result<Box<dyn Capture>>;

    /// Reads and verifies the checkpoint made of `files`, captured in
    /// `format` (the backend's own, or [`SNAPSHOT_FORMAT`]), beside the
    /// live state, without changing it. The manager prepares every backend
    /// of a checkpoint before committing any, so a damaged file leaves all
    /// of them as they were.
    fn prepare_restore(
        &self,
        format: &str,
        files: &dyn CheckpointFiles,
    ) -> Result<Box<dyn PreparedRestore + '_>>;

    /// Like [`prepare_restore`](Checkpointable::prepare_restore), from
    /// several checkpoints at once: the new state holds exactly the keys of
    /// each source's ranges, as that source's checkpoint had them (the
    /// ranges of different sources do not overlap). Nothing changes until
    /// the returned restore is committed. The next capture is full.
    fn prepare_restore_ranges(
        &self,
        sources: &[RangeSource<'_>],
    ) -> Result<Box<dyn PreparedRestore + '_>>;

    /// Prepares and commits a restore of this backend alone.
    fn restore_checkpoint(&self, format: &str, files: &dyn CheckpointFiles) -> Result<()> {
        self.prepare_restore(format, files)?.commit()
    }
}

/// The checkpoint manager a backend is registered with, for backends whose
/// claim carries no state of its own (their captures are complete):
/// [`Checkpointable::claim_checkpoints`], `release_checkpoints` and the
/// owner check of `capture` in one place.
#[derive(Debug, Default)]
pub struct CheckpointClaim(parking_lot::Mutex<Option<u64>>);

impl CheckpointClaim {
    /// Claims for `owner`; refused while another manager holds the claim.
    pub fn claim(&self, owner: u64) -> Result<()> {
        let mut current = self.0.lock();
        match *current {
            Some(o) if o != owner => Err(crate::Error::invalid_argument(
                "backend",
                "already registered with another checkpoint manager",
            )),
            _ => {
                *current = Some(owner);
                Ok(())
            }
        }
    }

    /// Releases the claim if `owner` holds it.
    pub fn release(&self, owner: u64) {
        let mut current = self.0.lock();
        if *current == Some(owner) {
            *current = None;
        }
    }

    /// Whether `owner` holds the claim; `what` names the backend in the
    /// error.
    pub fn check(&self, owner: u64, what: &str) -> Result<()> {
        if *self.0.lock() == Some(owner) {
            Ok(())
        } else {
            Err(crate::Error::invalid_argument(
                "owner",
                format!("this checkpoint manager has not claimed the {what}"),
            ))
        }
    }
}
