//! [`SnapshotWriter`]: entries in, a checksummed stream out.

use std::io::{self, Write};

use crate::error::{Error, Result};

use super::{
    BLOCK_HEADER_LEN, BLOCK_TARGET_LEN, FLAG_DELTA, FORMAT_VERSION, HEADER_LEN, KIND_PUT,
    KIND_PUT_EXPIRING, KIND_TOMBSTONE, MAGIC, MAX_BLOCK_PAYLOAD, SnapshotKind, SnapshotSummary,
    TAG_BLOCK, TAG_TRAILER, TRAILER_LEN, put_varint, varint_len,
};

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
