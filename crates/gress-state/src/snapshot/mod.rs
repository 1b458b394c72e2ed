//! Snapshot format v1: a streamed, checksummed, versioned encoding of a
//! backend's entries, portable between backends.
//!
//! The byte layout is specified in docs/format.md ("Snapshot stream v1").
//! In short: a 28-byte header, then blocks of entries each with a CRC32C,
//! then a trailer with the entry and block counts. Writing and reading hold
//! one block in memory (about 64 KiB, never more than [`MAX_BLOCK_PAYLOAD`]),
//! whatever the size of the state.

use std::borrow::Cow;
use std::io::{self, Read};

use crate::error::{Error, Result};
use crate::ttl::{MAX_KEY_LEN, MAX_VALUE_LEN};

mod reader;
#[cfg(test)]
mod tests;
mod writer;

pub use reader::SnapshotReader;
pub use writer::SnapshotWriter;

/// The 8 magic bytes that open every snapshot stream.
pub const MAGIC: [u8; 8] = *b"\x89GRSNAP\n";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 28;
/// A block is closed once its payload reaches this many bytes.
pub const BLOCK_TARGET_LEN: usize = 64 << 10;
/// The largest block payload a writer produces and a reader accepts: room
/// for one entry of maximal size. The writer closes a block early rather
/// than let the next entry take it past this.
pub const MAX_BLOCK_PAYLOAD: usize = MAX_KEY_LEN + MAX_VALUE_LEN + 32;

/// Kind byte, two varints of at most 10 bytes, and the expiry.
const MAX_ENTRY_OVERHEAD: usize = 1 + 10 + 8 + 10;
const _: () = assert!(MAX_KEY_LEN + MAX_VALUE_LEN + MAX_ENTRY_OVERHEAD <= MAX_BLOCK_PAYLOAD);

const FLAG_DELTA: u16 = 0x0001;
const KNOWN_FLAGS: u16 = FLAG_DELTA;

const TAG_BLOCK: u8 = b'B';
const TAG_TRAILER: u8 = b'T';
const BLOCK_HEADER_LEN: usize = 9;
const TRAILER_LEN: usize = 21;

const KIND_PUT: u8 = 0x00;
const KIND_PUT_EXPIRING: u8 = 0x01;
const KIND_TOMBSTONE: u8 = 0x02;

const INPUT: &str = "snapshot stream";

/// Whether a stream holds a whole state or the changes since a base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotKind {
    /// Every live entry; no tombstones. Restoring it replaces the state.
    Full,
    /// Puts and tombstones to apply on top of an earlier state.
    Delta,
}

/// What a finished snapshot contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotSummary {
    /// Entries written (puts and tombstones).
    pub n_entries: u64,
    /// Blocks written.
    pub n_blocks: u64,
    /// Total bytes of the stream, header and trailer included.
    pub n_bytes: u64,
}

/// What a restore loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreSummary {
    /// Entries read from the stream.
    pub n_entries_read: u64,
    /// Entries now live in the backend (expired ones are dropped).
    pub n_entries_restored: u64,
    /// Entries skipped because they had expired by the time of the restore.
    pub n_entries_expired: u64,
    /// Bytes read from the stream.
    pub n_bytes: u64,
}

/// The fixed header of a snapshot stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Full or delta.
    pub kind: SnapshotKind,
    /// Writer's clock when the snapshot was taken, ms since the epoch.
    pub created_at_ms: u64,
}

/// One entry of a snapshot, borrowed from the reader's block buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotEntry<'a> {
    /// A live key and value.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Absolute expiry in ms since the epoch, or `None` for never.
        expires_at_ms: Option<u64>,
    },
    /// A key deleted since the base (delta snapshots only).
    Tombstone {
        /// The key.
        key: &'a [u8],
    },
}

impl<'a> SnapshotEntry<'a> {
    /// The entry's key.
    pub fn key(&self) -> &'a [u8] {
        match *self {
            SnapshotEntry::Put { key, .. } | SnapshotEntry::Tombstone { key } => key,
        }
    }
}

fn varint_len(v: u64) -> usize {
    (u64::BITS - v.leading_zeros()).div_ceil(7).max(1) as usize
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn truncated(offset: u64, reason: impl Into<Cow<'static, str>>) -> Error {
    let reason = reason.into();
    Error::corrupted(INPUT, offset, format!("truncated: {reason}"))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading snapshot stream", e)),
        }
    }
    Ok(got)
}
