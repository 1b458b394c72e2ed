//! Fuzz-style tests of the decoders in gress-state that read untrusted
//! bytes: the snapshot reader (full and delta streams, and the restores
//! built on it) and the stored-value header.
//!
//! Each test runs a million inputs drawn from proptest's `TestRng` under a
//! fixed seed: random bytes, and mutations of valid encodings (bit flips,
//! byte changes, truncations, insertions, duplicated spans, length fields
//! set to extremes), many with their checksums recomputed so that the
//! mutation reaches the parser behind them. A decoder must never panic and
//! must answer `Ok` or a typed error, and the answer must be the one an
//! independent reference decoder, written from docs/format.md, gives.
//!
//! A failing case prints its seed and number; rerun it alone with
//! `GRESS_FUZZ_SEED=<seed> GRESS_FUZZ_CASE=<n>`. `GRESS_FUZZ_CASES=<n>`
//! changes the number of cases.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use gress_state::checkpoint::CheckpointFiles;
use gress_state::memory::MEMORY_CHECKPOINT_FORMAT;
use gress_state::snapshot::{self, SnapshotEntry, SnapshotKind, SnapshotReader, SnapshotWriter};
use gress_state::ttl::{self, StoredValue};
use gress_state::{
    Checkpointable, Error, KeyRange, KeyValue, ManualClock, MemoryConfig, MemoryStateBackend,
    Result, StateBackend,
};
use proptest::prelude::{Rng, RngExt};
use proptest::test_runner::{RngAlgorithm, TestRng};

// ---------------------------------------------------------------------------
// The harness: one generator per case, so any case reruns alone.

const SEED: u64 = 0x6772_6573_735f_6675;
const N_CASES: u64 = 1_000_000;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The generator of case `case` under `seed`.
fn case_rng(seed: u64, case: u64) -> TestRng {
    let a = splitmix(seed ^ splitmix(case));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&splitmix(a).to_le_bytes());
    TestRng::from_seed(RngAlgorithm::XorShift, &bytes)
}

fn fuzz_seed() -> u64 {
    env_u64("GRESS_FUZZ_SEED").unwrap_or(SEED)
}

/// Prints the case being generated or checked if that panics.
struct OnPanic<'a, T: fmt::Debug> {
    name: &'a str,
    seed: u64,
    case: u64,
    input: Option<&'a T>,
}

impl<T: fmt::Debug> Drop for OnPanic<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: case {} failed; rerun it with GRESS_FUZZ_SEED={:#x} GRESS_FUZZ_CASE={}\n\
                 input: {:?}",
                self.name, self.case, self.seed, self.case, self.input
            );
        }
    }
}

/// Generates and checks every case; returns how many ran.
fn run_cases<T: fmt::Debug>(
    name: &str,
    mut generate: impl FnMut(&mut TestRng) -> T,
    mut check: impl FnMut(&T),
) -> u64 {
    let seed = fuzz_seed();
    let cases = match env_u64("GRESS_FUZZ_CASE") {
        Some(case) => case..case + 1,
        None => 0..env_u64("GRESS_FUZZ_CASES").unwrap_or(N_CASES),
    };
    let n_cases = cases.end - cases.start;
    let started = Instant::now();
    for case in cases {
        let input = {
            let _report = OnPanic::<T> {
                name,
                seed,
                case,
                input: None,
            };
            generate(&mut case_rng(seed, case))
        };
        let _report = OnPanic {
            name,
            seed,
            case,
            input: Some(&input),
        };
        check(&input);
    }
    eprintln!(
        "{name}: {n_cases} cases in {:.2?} (seed {seed:#x})",
        started.elapsed()
    );
    n_cases
}

/// Bytes, shown as their length and first 512 bytes in hex.
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes:", self.0.len())?;
        for b in self.0.iter().take(512) {
            write!(f, " {b:02x}")?;
        }
        if self.0.len() > 512 {
            write!(f, " ...")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Byte-level mutations, for any encoding.

const INTERESTING_U32: [u32; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    REF_MAX_BLOCK_PAYLOAD as u32,
    REF_MAX_BLOCK_PAYLOAD as u32 + 1,
    REF_MAX_KEY_LEN as u32,
    REF_MAX_VALUE_LEN as u32,
    i32::MAX as u32,
    u32::MAX,
];

fn random_bytes(rng: &mut TestRng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn interesting_byte(rng: &mut TestRng) -> u8 {
    const BYTES: [u8; 10] = [0x00, 0x01, 0x02, 0x7f, 0x80, 0x81, 0xfe, 0xff, b'B', b'T'];
    if rng.random_bool(0.5) {
        BYTES[rng.random_range(0..BYTES.len())]
    } else {
        rng.random()
    }
}

/// Bit flip, byte change, truncation, insertion, duplicated or deleted span,
/// or a little-endian length field set to an extreme, at a random place.
fn mutate_bytes(rng: &mut TestRng, data: &mut Vec<u8>) {
    let len = data.len();
    let pos = |rng: &mut TestRng| rng.random_range(0..=len);
    match rng.random_range(0..9) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] = interesting_byte(rng);
        }
        2 => data.truncate(pos(rng)),
        3 => {
            let at = pos(rng);
            let n = rng.random_range(1..=16);
            let fresh = random_bytes(rng, n);
            data.splice(at..at, fresh);
        }
        4 if len > 0 => {
            let start = rng.random_range(0..len);
            let end = rng.random_range(start..=len.min(start + 64));
            let span = data[start..end].to_vec();
            let at = pos(rng);
            data.splice(at..at, span);
        }
        5 if len > 0 => {
            let start = rng.random_range(0..len);
            let end = rng.random_range(start..=len.min(start + 64));
            data.drain(start..end);
        }
        6 if len >= 4 => {
            let at = rng.random_range(0..=len - 4);
            let v = INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())];
            data[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        7 if len >= 8 => {
            let at = rng.random_range(0..=len - 8);
            let v = [0, u64::MAX, i64::MAX as u64, NOW, NOW - 1][rng.random_range(0..5)];
            data[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        _ => {
            let n = rng.random_range(1..=8);
            data.extend(random_bytes(rng, n));
        }
    }
}

// ---------------------------------------------------------------------------
// A reference decoder of snapshot streams, written from docs/format.md.

const REF_MAGIC: &[u8; 8] = b"\x89GRSNAP\n";
const REF_HEADER_LEN: usize = 28;
const REF_MAX_KEY_LEN: usize = 16 << 20;
const REF_MAX_VALUE_LEN: usize = 1 << 30;
const REF_MAX_BLOCK_PAYLOAD: usize = (16 << 20) + (1 << 30) + 32;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
    },
    Tombstone {
        key: Vec<u8>,
    },
}

impl From<SnapshotEntry<'_>> for Owned {
    fn from(e: SnapshotEntry<'_>) -> Self {
        match e {
            SnapshotEntry::Put {
                key,
                value,
                expires_at_ms,
            } => Owned::Put {
                key: key.to_vec(),
                value: value.to_vec(),
                expires_at_ms,
            },
            SnapshotEntry::Tombstone { key } => Owned::Tombstone { key: key.to_vec() },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Decoded {
    kind: SnapshotKind,
    created_at_ms: u64,
    entries: Vec<Owned>,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// The kind a stream's header declares, if the header is valid.
fn reference_header(b: &[u8]) -> Option<(SnapshotKind, u64)> {
    let h = b.get(..REF_HEADER_LEN)?;
    if &h[..8] != REF_MAGIC
        || le32(&h[24..28]) != crc32c::crc32c(&h[..24])
        || u16::from_le_bytes([h[8], h[9]]) != 1
    {
        return None;
    }
    let flags = u16::from_le_bytes([h[10], h[11]]);
    let kind = match flags {
        0 => SnapshotKind::Full,
        1 => SnapshotKind::Delta,
        _ => return None,
    };
    Some((kind, le64(&h[12..20])))
}

/// Unsigned LEB128 of at most 10 bytes that fits in a u64 and is at most
/// `max`.
fn reference_varint(p: &mut &[u8], max: usize) -> Option<usize> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = p.split_first()?;
        *p = rest;
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return usize::try_from(value).ok().filter(|&v| v <= max);
        }
    }
    None
}

fn reference_take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if n > p.len() {
        return None;
    }
    let (head, rest) = p.split_at(n);
    *p = rest;
    Some(head)
}

fn reference_entry(p: &mut &[u8], kind: SnapshotKind) -> Option<Owned> {
    let (&tag, rest) = p.split_first()?;
    *p = rest;
    let key_len = reference_varint(p, REF_MAX_KEY_LEN)?;
    let key = reference_take(p, key_len)?.to_vec();
    match tag {
        0x00 | 0x01 => {
            let expires_at_ms = match tag {
                0x01 => Some(le64(reference_take(p, 8)?)),
                _ => None,
            };
            let value_len = reference_varint(p, REF_MAX_VALUE_LEN)?;
            let value = reference_take(p, value_len)?.to_vec();
            Some(Owned::Put {
                key,
                value,
                expires_at_ms,
            })
        }
        0x02 if kind == SnapshotKind::Delta => Some(Owned::Tombstone { key }),
        _ => None,
    }
}

/// Where the reference decoder found a stream invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reject {
    /// Magic, header checksum, version or flags.
    Header,
    /// A tag, length or count out of bounds, or the input cut short.
    Framing,
    /// A block or trailer whose checksum does not match.
    Checksum,
    /// An entry that does not parse in a block whose checksum matched.
    Entry,
    /// Counts that disagree with the blocks, or bytes after the trailer.
    Trailer,
}

/// What docs/format.md says a stream holds, or where it says the stream
/// is invalid.
fn reference_decode(b: &[u8]) -> std::result::Result<Decoded, Reject> {
    let (kind, created_at_ms) = reference_header(b).ok_or(Reject::Header)?;
    let mut pos = REF_HEADER_LEN;
    let mut entries = Vec::new();
    let mut n_blocks = 0u64;
    loop {
        match b.get(pos).ok_or(Reject::Framing)? {
            b'B' => {
                let head = b.get(pos..pos + 9).ok_or(Reject::Framing)?;
                let len = le32(&head[1..5]) as usize;
                let n = le32(&head[5..9]);
                if len > REF_MAX_BLOCK_PAYLOAD || n == 0 {
                    return Err(Reject::Framing);
                }
                let end = pos + 9 + len;
                let mut payload = b.get(pos + 9..end).ok_or(Reject::Framing)?;
                let crc = b.get(end..end + 4).ok_or(Reject::Framing)?;
                if le32(crc) != crc32c::crc32c(&b[pos..end]) {
                    return Err(Reject::Checksum);
                }
                for _ in 0..n {
                    entries.push(reference_entry(&mut payload, kind).ok_or(Reject::Entry)?);
                }
                if !payload.is_empty() {
                    return Err(Reject::Entry);
                }
                n_blocks += 1;
                pos = end + 4;
            }
            b'T' => {
                let t = b.get(pos..pos + 21).ok_or(Reject::Framing)?;
                if le32(&t[17..21]) != crc32c::crc32c(&t[..17]) {
                    return Err(Reject::Checksum);
                }
                if le64(&t[1..9]) != entries.len() as u64
                    || le64(&t[9..17]) != n_blocks
                    || b.len() != pos + 21
                {
                    return Err(Reject::Trailer);
                }
                return Ok(Decoded {
                    kind,
                    created_at_ms,
                    entries,
                });
            }
            _ => return Err(Reject::Framing),
        }
    }
}

/// Reads a stream with the real reader, to the verified end.
fn real_decode(b: &[u8]) -> Result<Decoded> {
    let mut reader = SnapshotReader::new(b)?;
    let header = reader.header();
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry()? {
        entries.push(Owned::from(entry));
    }
    assert_eq!(reader.next_entry()?, None, "the end stays reported");
    assert_eq!(reader.entries_read(), entries.len() as u64);
    assert_eq!(reader.bytes_read(), b.len() as u64);
    Ok(Decoded {
        kind: header.kind,
        created_at_ms: header.created_at_ms,
        entries,
    })
}

/// The reader and the reference agree on every stream; the reader's
/// errors are typed as bad input.
fn check_reader(bytes: &[u8]) -> std::result::Result<Decoded, Reject> {
    let want = reference_decode(bytes);
    match (real_decode(bytes), &want) {
        (Ok(got), Ok(want)) => assert_eq!(&got, want, "reader and reference disagree"),
        (Err(e), Err(_)) => assert!(e.is_bad_input(), "not a bad-input error: {e:?}"),
        (Ok(got), Err(why)) => {
            panic!("the reader accepted a stream the format forbids ({why:?}): {got:?}")
        }
        (Err(e), Ok(_)) => panic!("the reader rejected a valid stream: {e}"),
    }
    want
}

/// How many inputs were valid, and how many were rejected at each stage.
#[derive(Debug, Default)]
struct Tally {
    valid: u64,
    rejected: BTreeMap<Reject, u64>,
}

impl Tally {
    fn add(&mut self, outcome: &std::result::Result<Decoded, Reject>) {
        match outcome {
            Ok(_) => self.valid += 1,
            Err(why) => *self.rejected.entry(*why).or_default() += 1,
        }
    }

    /// Every stage of the reader was reached by at least 1% of the inputs.
    fn assert_covers_every_stage(&self, n_cases: u64) {
        eprintln!("{self:?}");
        let floor = n_cases / 100;
        assert!(self.valid >= floor, "too few valid inputs: {self:?}");
        for why in [
            Reject::Header,
            Reject::Framing,
            Reject::Checksum,
            Reject::Entry,
            Reject::Trailer,
        ] {
            let n = self.rejected.get(&why).copied().unwrap_or(0);
            assert!(n >= floor, "too few inputs rejected at {why:?}: {self:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Valid streams and the frames they are made of.

/// The restore clock: entries expiring at or before this are dropped.
const NOW: u64 = 1_767_225_600_000;

fn random_key(rng: &mut TestRng) -> Vec<u8> {
    match rng.random_range(0..8) {
        0 => Vec::new(),
        // Few distinct keys, so deltas hit keys of their base.
        1..=5 => format!("k{}", rng.random_range(0..48u32)).into_bytes(),
        _ => {
            let n = rng.random_range(1..=24);
            random_bytes(rng, n)
        }
    }
}

fn random_value(rng: &mut TestRng, large: bool) -> Vec<u8> {
    let len = match rng.random_range(0..16) {
        _ if large => rng.random_range(200..=600),
        0 => 0,
        1 => rng.random_range(128..=2048),
        _ => rng.random_range(1..=32),
    };
    random_bytes(rng, len)
}

fn random_expiry(rng: &mut TestRng) -> Option<u64> {
    match rng.random_range(0..8) {
        0..=3 => None,
        4 => Some(rng.random_range(0..=NOW)),
        5 => Some([0, NOW, NOW + 1, u64::MAX][rng.random_range(0..4)]),
        _ => Some(NOW + rng.random_range(1..1u64 << 40)),
    }
}

/// Up to `n` entries, each key at most once, as backends write them.
fn random_entries(rng: &mut TestRng, kind: SnapshotKind, n: usize, large: bool) -> Vec<Owned> {
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for _ in 0..n {
        let key = if large {
            let len = rng.random_range(4..=24);
            random_bytes(rng, len)
        } else {
            random_key(rng)
        };
        if !seen.insert(key.clone()) {
            continue;
        }
        if kind == SnapshotKind::Delta && rng.random_ratio(1, 3) {
            entries.push(Owned::Tombstone { key });
        } else {
            entries.push(Owned::Put {
                key,
                value: random_value(rng, large),
                expires_at_ms: random_expiry(rng),
            });
        }
    }
    entries
}

fn encode(kind: SnapshotKind, created_at_ms: u64, entries: &[Owned]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = SnapshotWriter::new(&mut out, kind, created_at_ms)?;
    for e in entries {
        match e {
            Owned::Put {
                key,
                value,
                expires_at_ms,
            } => w.put(key, value, *expires_at_ms)?,
            Owned::Tombstone { key } => w.tombstone(key)?,
        }
    }
    w.finish()?;
    Ok(out)
}

/// A stream cut into its parts, so mutations can keep the checksums right.
#[derive(Debug, Clone)]
struct Frames {
    header: [u8; REF_HEADER_LEN],
    blocks: Vec<Block>,
    /// Entry and block counts; `None` cuts the stream before the trailer.
    trailer: Option<(u64, u64)>,
    /// Bytes after the trailer.
    tail: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Block {
    /// The length field, when it is not the payload's length.
    len: Option<u32>,
    n: u32,
    payload: Vec<u8>,
}

impl Frames {
    /// Cuts a valid stream.
    fn parse(b: &[u8]) -> Frames {
        let header = b[..REF_HEADER_LEN].try_into().expect("a header");
        let mut blocks = Vec::new();
        let mut pos = REF_HEADER_LEN;
        while b[pos] == b'B' {
            let len = le32(&b[pos + 1..pos + 5]) as usize;
            blocks.push(Block {
                len: None,
                n: le32(&b[pos + 5..pos + 9]),
                payload: b[pos + 9..pos + 9 + len].to_vec(),
            });
            pos += 13 + len;
        }
        assert_eq!(b.len(), pos + 21, "a valid stream ends with its trailer");
        Frames {
            header,
            blocks,
            trailer: Some((le64(&b[pos + 1..pos + 9]), le64(&b[pos + 9..pos + 17]))),
            tail: Vec::new(),
        }
    }

    fn counts(&self) -> (u64, u64) {
        let n_entries = self.blocks.iter().map(|b| u64::from(b.n)).sum();
        (n_entries, self.blocks.len() as u64)
    }

    /// The stream, with every checksum computed over what it covers.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header.to_vec();
        let crc = crc32c::crc32c(&out[..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        for block in &self.blocks {
            let start = out.len();
            let len = block.len.unwrap_or(block.payload.len() as u32);
            out.push(b'B');
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&block.n.to_le_bytes());
            out.extend_from_slice(&block.payload);
            let crc = crc32c::crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        if let Some((n_entries, n_blocks)) = self.trailer {
            let start = out.len();
            out.push(b'T');
            out.extend_from_slice(&n_entries.to_le_bytes());
            out.extend_from_slice(&n_blocks.to_le_bytes());
            let crc = crc32c::crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

/// Where the fields of the entries in a payload are, as far as they parse.
#[derive(Debug, Clone, Copy)]
enum Spot {
    Kind(usize),
    Varint { at: usize, len: usize, value: u64 },
    Expiry(usize),
}

fn spots(payload: &[u8]) -> Vec<Spot> {
    let mut out = Vec::new();
    let mut pos = 0;
    let varint = |pos: &mut usize, out: &mut Vec<Spot>| -> Option<u64> {
        let at = *pos;
        let mut value = 0u64;
        for i in 0..10 {
            let b = *payload.get(*pos)?;
            *pos += 1;
            value |= u64::from(b & 0x7f).checked_shl(7 * i).unwrap_or(0);
            if b & 0x80 == 0 {
                out.push(Spot::Varint {
                    at,
                    len: *pos - at,
                    value,
                });
                return Some(value);
            }
        }
        None
    };
    while let Some(&kind) = payload.get(pos) {
        out.push(Spot::Kind(pos));
        pos += 1;
        let Some(key_len) = varint(&mut pos, &mut out) else {
            break;
        };
        pos = pos.saturating_add(key_len as usize);
        if kind == 0x01 {
            out.push(Spot::Expiry(pos));
            pos = pos.saturating_add(8);
        }
        if kind != 0x02 {
            let Some(value_len) = varint(&mut pos, &mut out) else {
                break;
            };
            pos = pos.saturating_add(value_len as usize);
        }
    }
    out.retain(|s| match *s {
        Spot::Expiry(at) => at.checked_add(8).is_some_and(|end| end <= payload.len()),
        _ => true,
    });
    out
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// A length varint replaced by an extreme: limits and one past them, the
/// largest u64, overlong and overflowing encodings.
fn extreme_varint(rng: &mut TestRng, current: u64) -> Vec<u8> {
    match rng.random_range(0..13) {
        0 => varint(0),
        1 => varint(current.saturating_add(1)),
        2 => varint(current.saturating_sub(1)),
        3 => varint(REF_MAX_KEY_LEN as u64),
        4 => varint(REF_MAX_KEY_LEN as u64 + 1),
        5 => varint(REF_MAX_VALUE_LEN as u64),
        6 => varint(REF_MAX_VALUE_LEN as u64 + 1),
        7 => varint(u64::MAX),
        8 => varint(u64::from(u32::MAX)),
        9 => {
            // Overlong: the same value padded with zero groups.
            let mut out = varint(current);
            let pad = rng.random_range(1..=10 - out.len().min(9));
            *out.last_mut().expect("one byte") |= 0x80;
            out.extend(std::iter::repeat_n(0x80, pad - 1));
            out.push(0);
            out
        }
        10 => {
            let mut out = vec![0x80; 10];
            out.push(0);
            out
        }
        11 => {
            // Ten bytes whose last one carries bits past 64.
            let mut out = vec![if rng.random_bool(0.5) { 0x80 } else { 0xff }; 9];
            out.push(rng.random_range(0x02..=0x7f));
            out
        }
        _ => {
            let n = rng.random_range(1..=11);
            random_bytes(rng, n)
        }
    }
}

/// One change to a single field of one entry in a block's payload.
fn mutate_entry_field(rng: &mut TestRng, payload: &mut Vec<u8>) {
    let found = spots(payload);
    if found.is_empty() {
        return mutate_bytes(rng, payload);
    }
    match found[rng.random_range(0..found.len())] {
        Spot::Kind(at) => {
            payload[at] = [0x00, 0x01, 0x02, 0x03, 0x80, 0xff][rng.random_range(0..6)];
        }
        Spot::Varint { at, len, value } => {
            let new = extreme_varint(rng, value);
            payload.splice(at..at + len, new);
        }
        Spot::Expiry(at) => {
            let v = [0, NOW - 1, NOW, NOW + 1, u64::MAX, rng.random()][rng.random_range(0..6)];
            payload[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// One structural change, keeping the framing parseable; returns whether
/// it set the trailer's counts on purpose.
fn mutate_frames(rng: &mut TestRng, f: &mut Frames) -> bool {
    let n_blocks = f.blocks.len();
    let pick = |rng: &mut TestRng| rng.random_range(0..n_blocks);
    match rng.random_range(0..16) {
        0 => {
            let v: u16 = [0, 2, 0x0100, 0xffff, rng.random()][rng.random_range(0..5)];
            f.header[8..10].copy_from_slice(&v.to_le_bytes());
        }
        1 => {
            let flags = u16::from_le_bytes([f.header[10], f.header[11]]);
            let v = match rng.random_range(0..3) {
                0 => flags ^ 1,
                1 => flags | 1 << rng.random_range(1..16),
                _ => rng.random(),
            };
            f.header[10..12].copy_from_slice(&v.to_le_bytes());
        }
        2 => {
            let at = rng.random_range(12..24);
            f.header[at] = rng.random();
        }
        3..=5 if n_blocks > 0 => {
            let b = &mut f.blocks[pick(rng)];
            mutate_entry_field(rng, &mut b.payload);
        }
        6 | 7 if n_blocks > 0 => {
            let b = &mut f.blocks[pick(rng)];
            let old_len = b.payload.len() as u32;
            mutate_bytes(rng, &mut b.payload);
            if rng.random_ratio(1, 4) {
                b.len = Some(old_len);
            }
        }
        8 if n_blocks > 0 => {
            let b = &mut f.blocks[pick(rng)];
            let len = b.payload.len() as u32;
            b.len = Some(match rng.random_range(0..5) {
                0 => len.wrapping_sub(1),
                1 => len.wrapping_add(1),
                2 => 0,
                _ => INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())],
            });
        }
        9 if n_blocks > 0 => {
            let b = &mut f.blocks[pick(rng)];
            b.n = match rng.random_range(0..5) {
                0 => b.n.wrapping_sub(1),
                1 => b.n.wrapping_add(1),
                2 => 0,
                3 => u32::MAX,
                _ => rng.random(),
            };
        }
        10 if n_blocks > 0 => {
            let i = pick(rng);
            match rng.random_range(0..3) {
                0 => {
                    f.blocks.remove(i);
                }
                1 => {
                    let copy = f.blocks[i].clone();
                    f.blocks.insert(pick(rng), copy);
                }
                _ => f.blocks.swap(i, pick(rng)),
            }
        }
        11 => {
            // A block of random bytes with a correct checksum.
            let len = rng.random_range(0..=48);
            let block = Block {
                len: None,
                n: rng.random_range(0..=4),
                payload: random_bytes(rng, len),
            };
            let at = rng.random_range(0..=n_blocks);
            f.blocks.insert(at, block);
        }
        12 => {
            let (e, b) = f.counts();
            f.trailer = Some(match rng.random_range(0..5) {
                0 => (e.wrapping_add(1), b),
                1 => (e, b.wrapping_sub(1)),
                2 => (0, 0),
                3 => (u64::MAX, u64::MAX),
                _ => (rng.random(), b),
            });
            return true;
        }
        13 => {
            f.trailer = None;
            return true;
        }
        14 => {
            let n = rng.random_range(1..=4);
            f.tail = random_bytes(rng, n);
            if rng.random_bool(0.5) {
                f.tail[0] = b'T';
            }
        }
        _ => {
            // Move the stream's tombstone flag the other way.
            f.header[10] ^= 1;
        }
    }
    false
}

/// Valid streams of one kind, cut into frames, with what they hold.
struct Corpus {
    kind: SnapshotKind,
    small: Vec<(Vec<u8>, Frames)>,
    large: Vec<(Vec<u8>, Frames)>,
}

impl Corpus {
    fn new(kind: SnapshotKind) -> Result<Corpus> {
        let mut rng = case_rng(fuzz_seed(), u64::MAX - kind as u64);
        let mut sample = |n: usize, large: bool| -> Result<(Vec<u8>, Frames)> {
            let entries = random_entries(&mut rng, kind, n, large);
            let created_at_ms = rng.random();
            let bytes = encode(kind, created_at_ms, &entries)?;
            let decoded = check_reader(&bytes).expect("the writer's output is valid");
            assert_eq!(
                decoded,
                Decoded {
                    kind,
                    created_at_ms,
                    entries,
                },
                "decode(encode(x)) == x"
            );
            let frames = Frames::parse(&bytes);
            Ok((bytes, frames))
        };
        let small = (0..48)
            .map(|i| sample(i % 25, false))
            .collect::<Result<_>>()?;
        let large = (0..2)
            .map(|_| sample(400, true))
            .collect::<Result<Vec<_>>>()?;
        assert!(
            large.iter().all(|(_, f)| f.blocks.len() >= 2),
            "multi-block samples"
        );
        Ok(Corpus { kind, small, large })
    }

    fn pick(&self, rng: &mut TestRng) -> &(Vec<u8>, Frames) {
        if rng.random_ratio(1, 64) {
            &self.large[rng.random_range(0..self.large.len())]
        } else {
            &self.small[rng.random_range(0..self.small.len())]
        }
    }

    /// One input: random bytes, a fresh valid stream, or a mutated sample.
    fn generate(&self, rng: &mut TestRng) -> Result<Vec<u8>> {
        let bytes = match rng.random_range(0..100) {
            0..4 => {
                let len = rng.random_range(0..=160);
                random_bytes(rng, len)
            }
            4..8 => {
                // A valid header, then random bytes.
                let mut out = self.small[0].0[..REF_HEADER_LEN].to_vec();
                let len = rng.random_range(0..=160);
                out.extend(random_bytes(rng, len));
                out
            }
            8..14 => {
                // Round trip of a fresh stream (checked against the
                // reference, which must read back the same entries).
                let n = rng.random_range(0..=12);
                let entries = random_entries(rng, self.kind, n, false);
                let bytes = encode(self.kind, rng.random(), &entries)?;
                let decoded = reference_decode(&bytes).expect("the writer's output is valid");
                assert_eq!(decoded.entries, entries, "decode(encode(x)) == x");
                bytes
            }
            14..40 => {
                let mut bytes = self.pick(rng).0.clone();
                for _ in 0..rng.random_range(1..=4) {
                    mutate_bytes(rng, &mut bytes);
                }
                bytes
            }
            _ => {
                let mut frames = self.pick(rng).1.clone();
                let mut counts_set = false;
                for _ in 0..rng.random_range(1..=3) {
                    counts_set |= mutate_frames(rng, &mut frames);
                }
                if !counts_set {
                    frames.trailer = Some(frames.counts());
                }
                let mut bytes = frames.to_bytes();
                if rng.random_ratio(1, 10) {
                    mutate_bytes(rng, &mut bytes);
                }
                bytes
            }
        };
        Ok(bytes)
    }
}

// ---------------------------------------------------------------------------
// Restores of fuzzed streams.

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// What restoring `entries` on top of `state` leaves at time `NOW`.
fn apply(state: &mut Model, entries: &[Owned]) {
    for e in entries {
        match e {
            Owned::Put {
                key,
                value,
                expires_at_ms,
            } if !expires_at_ms.is_some_and(|at| NOW >= at) => {
                state.insert(key.clone(), value.clone());
            }
            Owned::Put { key, .. } | Owned::Tombstone { key } => {
                state.remove(key);
            }
        }
    }
}

/// A checkpoint's files held in memory.
struct MemFiles<'a>(Vec<(String, &'a [u8])>);

impl<'a> MemFiles<'a> {
    /// A memory-backend chain: a full stream, then one delta.
    fn chain(full: &'a [u8], delta: &'a [u8]) -> Self {
        MemFiles(vec![
            ("full-1.snap".to_string(), full),
            ("delta-2.snap".to_string(), delta),
        ])
    }
}

impl CheckpointFiles for MemFiles<'_> {
    fn names(&self) -> Vec<String> {
        self.0.iter().map(|(name, _)| name.clone()).collect()
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>> {
        let (_, bytes) = self
            .0
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::invalid_argument("name", format!("no file {name}")))?;
        Ok(Box::new(*bytes))
    }

    fn fetch_all(&self, _dir: &Path) -> Result<()> {
        Err(Error::Unsupported {
            operation: "fetch_all",
            backend: "in-memory files",
        })
    }
}

/// Which restore a fuzzed stream goes through.
#[derive(Debug, Clone, Copy)]
enum Chain<'a> {
    /// `restore_from` of the stream alone (a full one).
    Alone,
    /// A memory checkpoint of the stream (a full one), then a valid delta.
    BeforeDelta(&'a [u8], &'a [Owned]),
    /// A memory checkpoint of a valid full stream, then the stream (a
    /// delta).
    AfterFull(&'a [u8], &'a [Owned]),
}

/// A memory backend holding a baseline state, into which fuzzed streams
/// are restored.
struct Restorer {
    backend: MemoryStateBackend,
    baseline: Vec<u8>,
    baseline_state: Vec<KeyValue>,
}

impl Restorer {
    fn new() -> Result<Self> {
        let config = MemoryConfig::default()
            .with_shards(4)
            .with_cleanup_interval(Duration::ZERO)
            .with_clock(ManualClock::shared(NOW));
        let backend = MemoryStateBackend::new(config)?;
        for i in 0..6u32 {
            backend.put(format!("k{i}").as_bytes(), b"baseline")?;
            backend.put_with_ttl(
                format!("k{}", 40 + i).as_bytes(),
                b"expiring",
                Duration::from_secs(60),
            )?;
        }
        let baseline = backend.snapshot()?;
        let baseline_state = Self::state(&backend)?;
        Ok(Restorer {
            backend,
            baseline,
            baseline_state,
        })
    }

    fn state(backend: &MemoryStateBackend) -> Result<Vec<KeyValue>> {
        backend.scan(KeyRange::all())?.collect()
    }

    /// Restores `fuzzed` through `chain`. A valid chain must leave exactly
    /// what its entries say; an invalid one must fail with a typed error
    /// and leave the state as it was.
    fn check(&self, fuzzed: &[u8], decoded: Option<&Decoded>, chain: Chain<'_>) -> Result<()> {
        let expect_kind = match chain {
            Chain::Alone | Chain::BeforeDelta(..) => SnapshotKind::Full,
            Chain::AfterFull(..) => SnapshotKind::Delta,
        };
        let result = match chain {
            Chain::Alone => self.backend.restore(fuzzed).map(drop),
            Chain::BeforeDelta(delta, _) => self
                .backend
                .prepare_restore(MEMORY_CHECKPOINT_FORMAT, &MemFiles::chain(fuzzed, delta))
                .and_then(|p| p.commit()),
            Chain::AfterFull(full, _) => self
                .backend
                .prepare_restore(MEMORY_CHECKPOINT_FORMAT, &MemFiles::chain(full, fuzzed))
                .and_then(|p| p.commit()),
        };
        let expected = decoded.filter(|d| d.kind == expect_kind).map(|d| {
            let mut model = Model::new();
            match chain {
                Chain::Alone => apply(&mut model, &d.entries),
                Chain::BeforeDelta(_, delta) => {
                    apply(&mut model, &d.entries);
                    apply(&mut model, delta);
                }
                Chain::AfterFull(_, full) => {
                    apply(&mut model, full);
                    apply(&mut model, &d.entries);
                }
            }
            model
        });
        match (result, expected) {
            (Ok(()), Some(model)) => {
                let want: Vec<KeyValue> = model.into_iter().collect();
                assert_eq!(Self::state(&self.backend)?, want, "restored state");
                assert_eq!(self.backend.len()?, want.len());
                self.backend.restore(&self.baseline)?;
            }
            (Ok(()), None) => panic!("a restore accepted an invalid chain"),
            (Err(e), Some(_)) => panic!("a restore rejected a valid chain: {e}"),
            (Err(e), None) => {
                let wrong_kind = reference_header(fuzzed).is_some_and(|(k, _)| k != expect_kind);
                if wrong_kind {
                    assert!(
                        matches!(e, Error::InvalidArgument { .. }),
                        "a stream of the wrong kind: {e:?}"
                    );
                } else {
                    assert!(e.is_bad_input(), "not a bad-input error: {e:?}");
                }
                assert_eq!(
                    Self::state(&self.backend)?,
                    self.baseline_state,
                    "a failed restore changed the state"
                );
                assert_eq!(self.backend.len()?, self.baseline_state.len());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The tests.

/// The reference decoder's limits are the crate's.
#[test]
fn reference_limits_are_the_crate_limits() {
    assert_eq!(&snapshot::MAGIC, REF_MAGIC);
    assert_eq!(snapshot::HEADER_LEN, REF_HEADER_LEN);
    assert_eq!(snapshot::FORMAT_VERSION, 1);
    assert_eq!(snapshot::MAX_BLOCK_PAYLOAD, REF_MAX_BLOCK_PAYLOAD);
    assert_eq!(ttl::MAX_KEY_LEN, REF_MAX_KEY_LEN);
    assert_eq!(ttl::MAX_VALUE_LEN, REF_MAX_VALUE_LEN);
}

/// A million full-snapshot inputs: the reader never panics, agrees with the
/// reference decoder on every one, and a restore of each (alone, or as the
/// base of a delta chain) either leaves exactly its entries or fails with a
/// typed error and leaves the state untouched.
#[test]
fn fuzz_full_snapshot_reader_and_restore() -> Result<()> {
    let corpus = Corpus::new(SnapshotKind::Full)?;
    let delta_entries = vec![
        Owned::Put {
            key: b"k1".to_vec(),
            value: b"from the delta".to_vec(),
            expires_at_ms: None,
        },
        Owned::Tombstone {
            key: b"k2".to_vec(),
        },
    ];
    let delta = encode(SnapshotKind::Delta, 2, &delta_entries)?;
    let restorer = Restorer::new()?;
    let mut tally = Tally::default();
    let n = run_cases(
        "full snapshot",
        |rng| {
            let bytes = corpus.generate(rng).expect("generate");
            (Bytes(bytes), rng.random_ratio(1, 4))
        },
        |(Bytes(bytes), as_chain)| {
            let decoded = check_reader(bytes);
            tally.add(&decoded);
            let chain = if *as_chain {
                Chain::BeforeDelta(&delta, &delta_entries)
            } else {
                Chain::Alone
            };
            restorer
                .check(bytes, decoded.as_ref().ok(), chain)
                .expect("restore check");
        },
    );
    tally.assert_covers_every_stage(n);
    Ok(())
}

/// A million delta-snapshot inputs: the reader never panics and agrees with
/// the reference decoder, and a memory checkpoint of a valid full stream
/// followed by the fuzzed delta either leaves exactly their entries or
/// fails with a typed error and leaves the state untouched.
#[test]
fn fuzz_delta_snapshot_reader_and_restore() -> Result<()> {
    let corpus = Corpus::new(SnapshotKind::Delta)?;
    let mut rng = case_rng(fuzz_seed(), u64::MAX - 7);
    let full_entries = random_entries(&mut rng, SnapshotKind::Full, 16, false);
    let full = encode(SnapshotKind::Full, 1, &full_entries)?;
    let restorer = Restorer::new()?;
    let mut tally = Tally::default();
    let n = run_cases(
        "delta snapshot",
        |rng| Bytes(corpus.generate(rng).expect("generate")),
        |Bytes(bytes)| {
            let decoded = check_reader(bytes);
            tally.add(&decoded);
            restorer
                .check(
                    bytes,
                    decoded.as_ref().ok(),
                    Chain::AfterFull(&full, &full_entries),
                )
                .expect("restore check");
        },
    );
    tally.assert_covers_every_stage(n);
    Ok(())
}

/// What docs/format.md ("Stored value") says `stored` is.
fn reference_stored_value(stored: &[u8]) -> Option<(Option<u64>, &[u8])> {
    match stored {
        [0x00, value @ ..] => Some((None, value)),
        [0x01, rest @ ..] if rest.len() >= 8 => Some((Some(le64(&rest[..8])), &rest[8..])),
        _ => None,
    }
}

/// A million stored values: `decode` and `expiry_of` never panic, agree
/// with the format and with each other, fail only with `Corrupted`, and
/// every encoded value decodes to what was encoded.
#[test]
fn fuzz_stored_value_header() -> Result<()> {
    let (mut n_valid, mut n_invalid) = (0u64, 0u64);
    let n = run_cases(
        "stored value",
        |rng| {
            let len = match rng.random_range(0..4) {
                0 => rng.random_range(0..=2),
                1 => rng.random_range(8..=10),
                _ => rng.random_range(0..=40),
            };
            let value = random_bytes(rng, len);
            let expiry = random_expiry(rng);
            let (mut stored, mut encoded) = if rng.random_ratio(1, 4) {
                (random_bytes(rng, len), None)
            } else {
                (StoredValue::encode(expiry, &value), Some((expiry, value)))
            };
            if rng.random_ratio(1, 2) {
                encoded = None;
                for _ in 0..rng.random_range(1..=3) {
                    mutate_bytes(rng, &mut stored);
                }
            }
            (Bytes(stored), encoded, rng.random::<u64>())
        },
        |(Bytes(stored), encoded, now)| {
            let got = StoredValue::decode(stored);
            match (&got, reference_stored_value(stored)) {
                (Ok(sv), Some((expires_at_ms, value))) => {
                    n_valid += 1;
                    assert_eq!((sv.expires_at_ms, sv.value), (expires_at_ms, value));
                    assert_eq!(
                        sv.is_expired_at(*now),
                        expires_at_ms.is_some_and(|at| *now >= at)
                    );
                }
                (Err(e), None) => {
                    n_invalid += 1;
                    assert!(matches!(e, Error::Corrupted { .. }), "{e:?}");
                }
                (got, want) => panic!("decode gave {got:?}, the format says {want:?}"),
            }
            match (StoredValue::expiry_of(stored), &got) {
                (Ok(at), Ok(sv)) => assert_eq!(at, sv.expires_at_ms),
                (Err(e), Err(_)) => assert!(matches!(e, Error::Corrupted { .. }), "{e:?}"),
                (at, _) => panic!("expiry_of gave {at:?}, decode {got:?}"),
            }
            if let Some((expiry, value)) = encoded {
                let sv = got.as_ref().expect("an encoded value decodes");
                assert_eq!((sv.expires_at_ms, sv.value), (*expiry, &value[..]));
                let mut appended = b"prefix".to_vec();
                StoredValue::encode_into(*expiry, value, &mut appended);
                assert_eq!(
                    &appended[6..],
                    &stored[..],
                    "encode_into appends the same bytes"
                );
            }
        },
    );
    eprintln!("{n_valid} valid, {n_invalid} invalid");
    assert!(
        n_valid >= n / 100 && n_invalid >= n / 100,
        "both outcomes are exercised"
    );
    Ok(())
}
