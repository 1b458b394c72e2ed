//! Snapshot format v1: a streamed, checksummed, versioned encoding of a
//! backend's entries, portable between backends.
//!
//! The byte layout is specified in docs/format.md ("Snapshot stream v1").
//! In short: a 28-byte header, then blocks of entries each with a CRC32C,
//! then a trailer with the entry and block counts. Writing and reading hold
//! one block in memory (about 64 KiB, never more than [`MAX_BLOCK_PAYLOAD`]),
//! whatever the size of the state.

use std::borrow::Cow;
use std::io::{self, Read, Write};

use crate::error::{Error, Result};
use crate::ttl::{MAX_KEY_LEN, MAX_VALUE_LEN};

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

/// Streams entries into the v1 format.
///
/// Call [`SnapshotWriter::finish`] at the end: a stream without its trailer
/// is rejected by every reader as truncated.
#[derive(Debug)]
pub struct SnapshotWriter<W: Write> {
    out: W,
    kind: SnapshotKind,
    block: Vec<u8>,
    n_in_block: u32,
    summary: SnapshotSummary,
}

impl<W: Write> SnapshotWriter<W> {
    /// Writes the header and returns a writer for the entries.
    pub fn new(mut out: W, kind: SnapshotKind, created_at_ms: u64) -> Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        header[0..8].copy_from_slice(&MAGIC);
        header[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = match kind {
            SnapshotKind::Full => 0,
            SnapshotKind::Delta => FLAG_DELTA,
        };
        header[10..12].copy_from_slice(&flags.to_le_bytes());
        header[12..20].copy_from_slice(&created_at_ms.to_le_bytes());
        // bytes 20..24 are reserved and zero.
        let crc = crc32c::crc32c(&header[..24]);
        header[24..28].copy_from_slice(&crc.to_le_bytes());
        out.write_all(&header)
            .map_err(|e| Error::io("writing snapshot header", e))?;
        Ok(SnapshotWriter {
            out,
            kind,
            block: Vec::with_capacity(BLOCK_TARGET_LEN + 1024),
            n_in_block: 0,
            summary: SnapshotSummary {
                n_bytes: HEADER_LEN as u64,
                ..SnapshotSummary::default()
            },
        })
    }

    /// Appends a live entry.
    pub fn put(&mut self, key: &[u8], value: &[u8], expires_at_ms: Option<u64>) -> Result<()> {
        crate::ttl::check_key(key)?;
        crate::ttl::check_value(value)?;
        let (kind, expiry_len) = if expires_at_ms.is_some() {
            (KIND_PUT_EXPIRING, 8)
        } else {
            (KIND_PUT, 0)
        };
        let entry_len = 1
            + varint_len(key.len() as u64)
            + key.len()
            + expiry_len
            + varint_len(value.len() as u64)
            + value.len();
        self.make_room(entry_len)?;
        self.block.push(kind);
        put_varint(&mut self.block, key.len() as u64);
        self.block.extend_from_slice(key);
        if let Some(at) = expires_at_ms {
            self.block.extend_from_slice(&at.to_le_bytes());
        }
        put_varint(&mut self.block, value.len() as u64);
        self.block.extend_from_slice(value);
        self.entry_added()
    }

    /// Appends a tombstone; only delta snapshots may carry them.
    pub fn tombstone(&mut self, key: &[u8]) -> Result<()> {
        if self.kind != SnapshotKind::Delta {
            return Err(Error::invalid_argument(
                "kind",
                "tombstones belong only in delta snapshots",
            ));
        }
        crate::ttl::check_key(key)?;
        self.make_room(1 + varint_len(key.len() as u64) + key.len())?;
        self.block.push(KIND_TOMBSTONE);
        put_varint(&mut self.block, key.len() as u64);
        self.block.extend_from_slice(key);
        self.entry_added()
    }

    /// Closes the current block if an entry of `entry_len` bytes would take
    /// it past [`MAX_BLOCK_PAYLOAD`]; a checked entry always fits in an empty
    /// block.
    fn make_room(&mut self, entry_len: usize) -> Result<()> {
        if self.block.len() + entry_len > MAX_BLOCK_PAYLOAD {
            self.flush_block()?;
        }
        Ok(())
    }

    fn entry_added(&mut self) -> Result<()> {
        self.n_in_block += 1;
        self.summary.n_entries += 1;
        if self.block.len() >= BLOCK_TARGET_LEN || self.n_in_block == u32::MAX {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        if self.n_in_block == 0 {
            return Ok(());
        }
        let len = u32::try_from(self.block.len()).map_err(|_| Error::TooLarge {
            what: "snapshot block",
            len: self.block.len() as u64,
            max: u64::from(u32::MAX),
        })?;
        let mut head = [0u8; BLOCK_HEADER_LEN];
        head[0] = TAG_BLOCK;
        head[1..5].copy_from_slice(&len.to_le_bytes());
        head[5..9].copy_from_slice(&self.n_in_block.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &self.block);
        let write = |out: &mut W| -> io::Result<()> {
            out.write_all(&head)?;
            out.write_all(&self.block)?;
            out.write_all(&crc.to_le_bytes())
        };
        write(&mut self.out).map_err(|e| Error::io("writing snapshot block", e))?;
        self.summary.n_blocks += 1;
        self.summary.n_bytes += (BLOCK_HEADER_LEN + self.block.len() + 4) as u64;
        self.block.clear();
        if self.block.capacity() > 4 * BLOCK_TARGET_LEN {
            // Do not keep a huge single-entry buffer around.
            self.block.shrink_to(BLOCK_TARGET_LEN + 1024);
        }
        self.n_in_block = 0;
        Ok(())
    }

    /// Writes the last block and the trailer, flushes, and returns what the
    /// stream holds.
    pub fn finish(mut self) -> Result<SnapshotSummary> {
        self.flush_block()?;
        let mut trailer = [0u8; TRAILER_LEN];
        trailer[0] = TAG_TRAILER;
        trailer[1..9].copy_from_slice(&self.summary.n_entries.to_le_bytes());
        trailer[9..17].copy_from_slice(&self.summary.n_blocks.to_le_bytes());
        let crc = crc32c::crc32c(&trailer[..17]);
        trailer[17..21].copy_from_slice(&crc.to_le_bytes());
        self.out
            .write_all(&trailer)
            .and_then(|()| self.out.flush())
            .map_err(|e| Error::io("writing snapshot trailer", e))?;
        self.summary.n_bytes += TRAILER_LEN as u64;
        Ok(self.summary)
    }
}

/// Reads a v1 stream entry by entry, verifying every checksum.
///
/// [`SnapshotReader::next_entry`] returns `Ok(None)` only after the trailer
/// has been read and checked against what was read and the input has ended,
/// so a caller that applies entries to a staging area can commit exactly
/// when it sees `None`.
#[derive(Debug)]
pub struct SnapshotReader<R: Read> {
    input: R,
    header: SnapshotHeader,
    offset: u64,
    block: Vec<u8>,
    block_offset: u64,
    block_idx: u64,
    pos: usize,
    left_in_block: u32,
    n_entries: u64,
    n_blocks: u64,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut input, &mut header)?;
        if got < MAGIC.len() || header[..8] != MAGIC {
            return Err(Error::UnsupportedFormat {
                found: Cow::Owned(format!("magic {:02x?}", &header[..got.min(MAGIC.len())])),
                supported: Cow::Borrowed("gress-state snapshot (magic 89 47 52 53 4e 41 50 0a)"),
            });
        }
        if got < HEADER_LEN {
            return Err(truncated(got as u64, "snapshot header"));
        }
        let stored = u32::from_le_bytes(header[24..28].try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(&header[..24]);
        if stored != actual {
            return Err(Error::ChecksumMismatch {
                section: Cow::Borrowed("snapshot header"),
                expected: stored,
                actual,
            });
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                found: Cow::Owned(format!("snapshot format version {version}")),
                supported: Cow::Owned(format!("version {FORMAT_VERSION}")),
            });
        }
        let flags = u16::from_le_bytes([header[10], header[11]]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::UnsupportedFormat {
                found: Cow::Owned(format!("snapshot flags {flags:#06x}")),
                supported: Cow::Owned(format!("flags within {KNOWN_FLAGS:#06x}")),
            });
        }
        let kind = if flags & FLAG_DELTA != 0 {
            SnapshotKind::Delta
        } else {
            SnapshotKind::Full
        };
        let created_at_ms = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
        Ok(SnapshotReader {
            input,
            header: SnapshotHeader {
                kind,
                created_at_ms,
            },
            offset: HEADER_LEN as u64,
            block: Vec::new(),
            block_offset: 0,
            block_idx: 0,
            pos: 0,
            left_in_block: 0,
            n_entries: 0,
            n_blocks: 0,
            done: false,
        })
    }

    /// The stream's header.
    pub fn header(&self) -> SnapshotHeader {
        self.header
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Entries returned so far.
    pub fn entries_read(&self) -> u64 {
        self.n_entries
    }

    /// The next entry, or `None` once the verified end has been reached.
    pub fn next_entry(&mut self) -> Result<Option<SnapshotEntry<'_>>> {
        if self.done {
            return Ok(None);
        }
        while self.left_in_block == 0 {
            if self.pos != self.block.len() {
                return Err(self.bad_block("bytes left over after the block's last entry"));
            }
            if !self.read_next_block()? {
                self.done = true;
                return Ok(None);
            }
        }
        self.left_in_block -= 1;
        self.n_entries += 1;
        self.parse_entry().map(Some)
    }

    /// Reads entries until the verified end and returns how many there were.
    pub fn skip_to_end(&mut self) -> Result<u64> {
        while self.next_entry()?.is_some() {}
        Ok(self.n_entries)
    }

    fn bad_block(&self, reason: impl Into<Cow<'static, str>>) -> Error {
        let reason = reason.into();
        Error::corrupted(
            INPUT,
            self.block_offset + BLOCK_HEADER_LEN as u64 + self.pos as u64,
            format!("block {}: {reason}", self.block_idx),
        )
    }

    /// Reads the next block into the buffer; false when the trailer was read.
    fn read_next_block(&mut self) -> Result<bool> {
        let start = self.offset;
        let mut tag = [0u8; 1];
        if read_full(&mut self.input, &mut tag)? == 0 {
            return Err(truncated(start, "stream ends without a trailer"));
        }
        match tag[0] {
            TAG_BLOCK => {}
            TAG_TRAILER => {
                self.read_trailer(start)?;
                return Ok(false);
            }
            other => {
                return Err(Error::corrupted(
                    INPUT,
                    start,
                    format!("expected a block or trailer tag, found {other:#04x}"),
                ));
            }
        }
        let mut head = [0u8; BLOCK_HEADER_LEN];
        head[0] = TAG_BLOCK;
        if read_full(&mut self.input, &mut head[1..])? < BLOCK_HEADER_LEN - 1 {
            return Err(truncated(start, "block header cut short"));
        }
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        let n = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes"));
        if len > MAX_BLOCK_PAYLOAD {
            return Err(Error::corrupted(
                INPUT,
                start + 1,
                format!("block length {len} exceeds the maximum {MAX_BLOCK_PAYLOAD}"),
            ));
        }
        if n == 0 {
            return Err(Error::corrupted(INPUT, start + 5, "block with no entries"));
        }
        // Grow the buffer with the bytes that actually arrive, so a corrupt
        // length cannot make us allocate a gigabyte up front.
        self.block.clear();
        let got = (&mut self.input)
            .take(len as u64)
            .read_to_end(&mut self.block)
            .map_err(|e| Error::io("reading snapshot block", e))?;
        if got < len {
            return Err(truncated(
                start,
                format!("block {} has {got} of {len} payload bytes", self.n_blocks),
            ));
        }
        let mut crc_bytes = [0u8; 4];
        if read_full(&mut self.input, &mut crc_bytes)? < 4 {
            return Err(truncated(start, "block checksum cut short"));
        }
        let stored = u32::from_le_bytes(crc_bytes);
        let actual = crc32c::crc32c_append(crc32c::crc32c(&head), &self.block);
        if stored != actual {
            return Err(Error::ChecksumMismatch {
                section: Cow::Owned(format!("snapshot block {} at byte {start}", self.n_blocks)),
                expected: stored,
                actual,
            });
        }
        self.offset = start + (BLOCK_HEADER_LEN + len + 4) as u64;
        self.block_offset = start;
        self.block_idx = self.n_blocks;
        self.n_blocks += 1;
        self.pos = 0;
        self.left_in_block = n;
        Ok(true)
    }

    fn read_trailer(&mut self, start: u64) -> Result<()> {
        let mut trailer = [0u8; TRAILER_LEN];
        trailer[0] = TAG_TRAILER;
        if read_full(&mut self.input, &mut trailer[1..])? < TRAILER_LEN - 1 {
            return Err(truncated(start, "trailer cut short"));
        }
        let stored = u32::from_le_bytes(trailer[17..21].try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(&trailer[..17]);
        if stored != actual {
            return Err(Error::ChecksumMismatch {
                section: Cow::Borrowed("snapshot trailer"),
                expected: stored,
                actual,
            });
        }
        let n_entries = u64::from_le_bytes(trailer[1..9].try_into().expect("8 bytes"));
        let n_blocks = u64::from_le_bytes(trailer[9..17].try_into().expect("8 bytes"));
        if n_entries != self.n_entries || n_blocks != self.n_blocks {
            return Err(Error::corrupted(
                INPUT,
                start,
                format!(
                    "trailer counts {n_entries} entries in {n_blocks} blocks, \
                     the stream had {} in {}",
                    self.n_entries, self.n_blocks
                ),
            ));
        }
        self.offset = start + TRAILER_LEN as u64;
        let mut extra = [0u8; 1];
        if read_full(&mut self.input, &mut extra)? != 0 {
            return Err(Error::corrupted(
                INPUT,
                self.offset,
                "bytes after the trailer",
            ));
        }
        Ok(())
    }

    fn parse_entry(&mut self) -> Result<SnapshotEntry<'_>> {
        let kind = self.take_byte()?;
        let key_len = self.take_len(MAX_KEY_LEN, "key")?;
        let key_range = self.take_range(key_len, "key")?;
        let entry = match kind {
            KIND_PUT | KIND_PUT_EXPIRING => {
                let expires_at_ms = if kind == KIND_PUT_EXPIRING {
                    let r = self.take_range(8, "expiry")?;
                    Some(u64::from_le_bytes(
                        self.block[r].try_into().expect("8 bytes"),
                    ))
                } else {
                    None
                };
                let value_len = self.take_len(MAX_VALUE_LEN, "value")?;
                let value_range = self.take_range(value_len, "value")?;
                SnapshotEntry::Put {
                    key: &self.block[key_range],
                    value: &self.block[value_range],
                    expires_at_ms,
                }
            }
            KIND_TOMBSTONE => {
                if self.header.kind != SnapshotKind::Delta {
                    return Err(self.bad_block("tombstone in a full snapshot"));
                }
                SnapshotEntry::Tombstone {
                    key: &self.block[key_range],
                }
            }
            other => return Err(self.bad_block(format!("unknown entry kind {other:#04x}"))),
        };
        Ok(entry)
    }

    fn take_byte(&mut self) -> Result<u8> {
        let b = *self
            .block
            .get(self.pos)
            .ok_or_else(|| self.bad_block("entry count exceeds the block's bytes"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take_len(&mut self, max: usize, what: &'static str) -> Result<usize> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take_byte()?;
            let bits = u64::from(b & 0x7f);
            if (bits << shift) >> shift != bits {
                return Err(self.bad_block(format!("{what} length varint overflows 64 bits")));
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return match usize::try_from(value) {
                    Ok(len) if len <= max => Ok(len),
                    _ => Err(self.bad_block(format!("{what} length {value} exceeds {max}"))),
                };
            }
        }
        Err(self.bad_block(format!("{what} length varint longer than 10 bytes")))
    }

    fn take_range(&mut self, len: usize, what: &'static str) -> Result<std::ops::Range<usize>> {
        let end = self.pos + len;
        if end > self.block.len() {
            return Err(self.bad_block(format!("{what} runs past the end of the block")));
        }
        let r = self.pos..end;
        self.pos = end;
        Ok(r)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: SnapshotKind) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out, kind, 42).expect("header");
        w.put(b"a", b"1", None).expect("put");
        w.put(b"", b"", Some(7)).expect("put");
        if kind == SnapshotKind::Delta {
            w.tombstone(b"gone").expect("tombstone");
        }
        w.finish().expect("finish");
        out
    }

    #[test]
    fn round_trip_keeps_entries_and_header() -> Result<()> {
        let bytes = sample(SnapshotKind::Delta);
        let mut r = SnapshotReader::new(&bytes[..])?;
        assert_eq!(r.header().kind, SnapshotKind::Delta);
        assert_eq!(r.header().created_at_ms, 42);
        assert_eq!(
            r.next_entry()?,
            Some(SnapshotEntry::Put {
                key: b"a",
                value: b"1",
                expires_at_ms: None
            })
        );
        assert_eq!(
            r.next_entry()?,
            Some(SnapshotEntry::Put {
                key: b"",
                value: b"",
                expires_at_ms: Some(7)
            })
        );
        assert_eq!(
            r.next_entry()?,
            Some(SnapshotEntry::Tombstone { key: b"gone" })
        );
        assert_eq!(r.next_entry()?, None);
        Ok(())
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let bytes = sample(SnapshotKind::Full);
        for len in 0..bytes.len() {
            let err = SnapshotReader::new(&bytes[..len]).and_then(|mut r| r.skip_to_end());
            match err {
                Err(e) => assert!(e.is_bad_input(), "len {len}: {e}"),
                Ok(n) => panic!("truncated to {len} bytes, read {n} entries"),
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_a_typed_error() {
        let bytes = sample(SnapshotKind::Full);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let res = SnapshotReader::new(&bad[..]).and_then(|mut r| r.skip_to_end());
                match res {
                    Err(e) => assert!(e.is_bad_input(), "byte {i} bit {bit}: {e}"),
                    Ok(_) => panic!("flip of byte {i} bit {bit} went unnoticed"),
                }
            }
        }
    }

    /// The writer's size estimate matches what it encodes, so blocks are
    /// closed exactly when an entry would not fit.
    #[test]
    fn varint_len_matches_the_encoding() {
        let mut values = vec![0, 1, u64::MAX, MAX_KEY_LEN as u64, MAX_VALUE_LEN as u64];
        for bits in 1..64 {
            values.extend([(1u64 << bits) - 1, 1u64 << bits, (1u64 << bits) + 1]);
        }
        for v in values {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
    }

    /// The writer used to close a block only after appending an entry, so
    /// ~60 KiB of small entries followed by one maximal entry made a block
    /// 60 KiB over `MAX_BLOCK_PAYLOAD`, and the reader rejected a snapshot
    /// the writer had just produced. A writer must never produce a block a
    /// reader refuses: a maximal entry now starts a block of its own.
    #[test]
    fn maximal_entry_after_a_nearly_full_block_reads_back() -> Result<()> {
        let key = vec![0x6b; MAX_KEY_LEN];
        let value = vec![0x76; MAX_VALUE_LEN];
        // Each small entry takes 15 bytes: 60 KiB, one block still open.
        let n_small = (60 << 10) / 15;
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out, SnapshotKind::Full, 0)?;
        for i in 0..n_small {
            w.put(format!("small-{i:05}").as_bytes(), b"v", None)?;
        }
        w.put(&key, &value, Some(u64::MAX))?;
        let summary = w.finish()?;
        drop(value);

        let mut r = SnapshotReader::new(&out[..])?;
        for i in 0..n_small {
            let want = format!("small-{i:05}");
            match r.next_entry()? {
                Some(SnapshotEntry::Put { key, value, .. }) => {
                    assert_eq!((key, value), (want.as_bytes(), &b"v"[..]));
                }
                other => panic!("entry {i}: {other:?}"),
            }
        }
        match r.next_entry()? {
            Some(SnapshotEntry::Put {
                key: k,
                value: v,
                expires_at_ms,
            }) => {
                assert_eq!(k, &key[..]);
                assert_eq!(v.len(), MAX_VALUE_LEN);
                assert!(v.iter().all(|&b| b == 0x76), "value bytes changed");
                assert_eq!(expires_at_ms, Some(u64::MAX));
            }
            other => panic!("maximal entry: {:?}", other.map(|e| e.key().len())),
        }
        assert_eq!(r.next_entry()?, None);
        assert_eq!(summary.n_blocks, 2, "the maximal entry sits alone");
        Ok(())
    }

    /// A stream of one block holding `payload` as `n` entries, every
    /// checksum right.
    fn stream_with_block(payload: &[u8], n: u32) -> Vec<u8> {
        let mut out = sample(SnapshotKind::Full)[..HEADER_LEN].to_vec();
        let start = out.len();
        out.push(TAG_BLOCK);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(payload);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        let mut trailer = vec![TAG_TRAILER];
        trailer.extend_from_slice(&u64::from(n).to_le_bytes());
        trailer.extend_from_slice(&1u64.to_le_bytes());
        let crc = crc32c::crc32c(&trailer);
        trailer.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&trailer);
        out
    }

    /// The reader used to shift the tenth byte of a length varint past bit
    /// 63 and drop the bits that fell off, so a length of 2^64 read as 0
    /// and a stream the format forbids was accepted (the fuzz tests found
    /// it). A varint whose value does not fit in 64 bits is `Corrupted`.
    #[test]
    fn overflowing_length_varint_is_corrupted() -> Result<()> {
        let mut payload = vec![KIND_PUT];
        payload.extend_from_slice(&[0x80; 9]);
        payload.push(0x02);
        payload.push(0);
        let err = SnapshotReader::new(&stream_with_block(&payload, 1)[..])?
            .skip_to_end()
            .expect_err("a key length of 2^64");
        match err {
            Error::Corrupted { reason, .. } => assert!(
                reason.contains("key length varint overflows 64 bits"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }

        // The largest ten-byte varint that fits is read, and refused as
        // too long a key, not as an overflow.
        let mut payload = vec![KIND_PUT];
        payload.extend_from_slice(&[0xff; 9]);
        payload.push(0x01);
        payload.push(0);
        let err = SnapshotReader::new(&stream_with_block(&payload, 1)[..])?
            .skip_to_end()
            .expect_err("a key length of 2^64 - 1");
        match err {
            Error::Corrupted { reason, .. } => assert!(
                reason.contains(&format!("key length {} exceeds", u64::MAX)),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }

        // An overlong but fitting encoding of a length is still a length.
        let payload = [KIND_PUT, 0x81, 0x80, 0x00, b'k', 0x80, 0x00];
        let stream = stream_with_block(&payload, 1);
        let mut r = SnapshotReader::new(&stream[..])?;
        assert_eq!(
            r.next_entry()?,
            Some(SnapshotEntry::Put {
                key: b"k",
                value: b"",
                expires_at_ms: None
            })
        );
        assert_eq!(r.next_entry()?, None);
        Ok(())
    }

    #[test]
    fn tombstone_is_refused_in_a_full_snapshot() {
        let mut out = Vec::new();
        let mut w = SnapshotWriter::new(&mut out, SnapshotKind::Full, 0).expect("header");
        assert!(matches!(
            w.tombstone(b"k"),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
