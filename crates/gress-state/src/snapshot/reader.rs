//! [`SnapshotReader`]: a stream in, verified entries out.

use std::borrow::Cow;
use std::io::Read;

use crate::error::{Error, Result};
use crate::ttl::{MAX_KEY_LEN, MAX_VALUE_LEN};

use super::{
    BLOCK_HEADER_LEN, FLAG_DELTA, FORMAT_VERSION, HEADER_LEN, INPUT, KIND_PUT, KIND_PUT_EXPIRING,
    KIND_TOMBSTONE, KNOWN_FLAGS, MAGIC, MAX_BLOCK_PAYLOAD, SnapshotEntry, SnapshotHeader,
    SnapshotKind, TAG_BLOCK, TAG_TRAILER, TRAILER_LEN, read_full, truncated,
};

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
