//! Key groups and the layout of keyed state in a backend.
//!
//! A key's group is `xxh3_64(encoded key) % key_groups`: xxh3 with its fixed
//! default secret, so every process of a job computes the same group. Group
//! `g` belongs to worker `g * workers / key_groups`, so each worker owns a
//! contiguous range. In the backend, every key starts with its group
//! (u16 big-endian), so a range of groups is a contiguous range of keys
//! (docs/format.md, "Keyed state").
//!
//! ```text
//! state:  kg u16 BE | state id u32 BE | varint len | key | varint len | namespace
//! timer:  kg u16 BE | 0xFFFFFFFF | operator id u32 BE | domain u8 | time u64 BE
//!         | varint len | key | namespace
//! ```

use xxhash_rust::xxh3::xxh3_64;

/// The default number of key groups (Flink's default maximum parallelism).
pub const DEFAULT_KEY_GROUPS: u16 = 128;

/// The state id reserved for timers.
pub(crate) const TIMER_STATE_ID: u32 = u32::MAX;

/// The key group of an encoded key.
pub fn key_group(encoded_key: &[u8], key_groups: u16) -> u16 {
    (xxh3_64(encoded_key) % u64::from(key_groups.max(1))) as u16
}

/// The worker (of `workers`) that owns key group `kg`.
pub fn worker_of(kg: u16, workers: usize, key_groups: u16) -> usize {
    usize::from(kg) * workers / usize::from(key_groups.max(1))
}

/// The key groups worker `worker` of `workers` owns: a contiguous range.
pub fn groups_of(worker: usize, workers: usize, key_groups: u16) -> std::ops::Range<u16> {
    let kgs = usize::from(key_groups);
    // The smallest g with g * workers / kgs >= worker.
    let first = |w: usize| (w * kgs).div_ceil(workers.max(1)) as u16;
    first(worker)..first(worker + 1).min(key_groups)
}

/// The backend keys of the key groups `groups`: every key starts with its
/// group (u16, big endian), so a range of groups is one range of keys.
pub fn groups_key_range(groups: std::ops::Range<u16>) -> gress_state::KeyRange {
    gress_state::KeyRange::between(groups.start.to_be_bytes(), groups.end.to_be_bytes())
}

/// A stable 32-bit id for a name (a keyed operator, or a state's full name
/// `operator/state`), the same in every process and every run.
pub fn name_id(name: &str) -> u32 {
    let id = xxh3_64(name.as_bytes()) as u32;
    // Never the timer id.
    if id == TIMER_STATE_ID { id - 1 } else { id }
}

/// Appends `n` as a LEB128 varint (postcard's length prefix).
pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a LEB128 varint at the start of `bytes`: the value and its length.
pub fn get_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// The state id of a key made by [`state_key`] (or a timer key).
pub(crate) fn state_id_of(key: &[u8]) -> Option<u32> {
    let id = key.get(2..6)?;
    Some(u32::from_be_bytes([id[0], id[1], id[2], id[3]]))
}

/// Writes a state key into `out` (cleared first).
pub(crate) fn state_key(out: &mut Vec<u8>, kg: u16, state_id: u32, key: &[u8], ns: &[u8]) {
    out.clear();
    out.extend_from_slice(&kg.to_be_bytes());
    out.extend_from_slice(&state_id.to_be_bytes());
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key);
    put_varint(out, ns.len() as u64);
    out.extend_from_slice(ns);
}

/// Event-time or processing-time timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeDomain {
    /// Fires when the watermark passes the time.
    EventTime = 0,
    /// Fires when the wall clock passes the time.
    ProcessingTime = 1,
}

/// The prefix of every timer of operator `op` in domain `domain` in key
/// group `kg`: timers sort by time after it.
pub(crate) fn timer_prefix(out: &mut Vec<u8>, kg: u16, op: u32, domain: TimeDomain) {
    out.clear();
    out.extend_from_slice(&kg.to_be_bytes());
    out.extend_from_slice(&TIMER_STATE_ID.to_be_bytes());
    out.extend_from_slice(&op.to_be_bytes());
    out.push(domain as u8);
}

/// A timer's key.
pub(crate) fn timer_key(
    out: &mut Vec<u8>,
    kg: u16,
    op: u32,
    domain: TimeDomain,
    time: u64,
    key: &[u8],
    ns: &[u8],
) {
    timer_prefix(out, kg, op, domain);
    out.extend_from_slice(&time.to_be_bytes());
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key);
    out.extend_from_slice(ns);
}

/// A backend key of keyed state, taken apart ([`decode_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedKey<'a> {
    /// The key group.
    pub kg: u16,
    /// The state's id, or for a timer its operator's id.
    pub id: u32,
    /// For a timer: its domain and time (ms).
    pub timer: Option<(TimeDomain, u64)>,
    /// The encoded key.
    pub key: &'a [u8],
    /// The encoded namespace.
    pub namespace: &'a [u8],
}

/// Takes apart a state or timer key (the layout at the top of this
/// module); `None` if `bytes` is not one.
pub fn decode_key(bytes: &[u8]) -> Option<DecodedKey<'_>> {
    let kg = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?);
    if state_id_of(bytes)? == TIMER_STATE_ID {
        let op = u32::from_be_bytes(bytes.get(6..10)?.try_into().ok()?);
        let domain = match *bytes.get(10)? {
            0 => TimeDomain::EventTime,
            1 => TimeDomain::ProcessingTime,
            _ => return None,
        };
        let (time, key, namespace) = parse_timer_key(bytes)?;
        return Some(DecodedKey {
            kg,
            id: op,
            timer: Some((domain, time)),
            key,
            namespace,
        });
    }
    let rest = bytes.get(6..)?;
    let (len, n) = get_varint(rest)?;
    let end = n.checked_add(usize::try_from(len).ok()?)?;
    let key = rest.get(n..end)?;
    let rest = &rest[end..];
    let (ns_len, m) = get_varint(rest)?;
    let namespace = rest.get(m..m.checked_add(usize::try_from(ns_len).ok()?)?)?;
    Some(DecodedKey {
        kg,
        id: state_id_of(bytes)?,
        timer: None,
        key,
        namespace,
    })
}

/// Parses a timer key written by [`timer_key`]: (time, key, namespace).
pub(crate) fn parse_timer_key(bytes: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let rest = bytes.get(11..)?;
    let time = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let rest = &rest[8..];
    let (len, n) = get_varint(rest)?;
    let len = usize::try_from(len).ok()?;
    let key = rest.get(n..n.checked_add(len)?)?;
    let ns = &rest[n + len..];
    Some((time, key, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_partition_into_contiguous_ranges() {
        for workers in 1..=9 {
            for kgs in [1u16, 7, 128, 1000] {
                let mut next = 0;
                for w in 0..workers {
                    let range = groups_of(w, workers, kgs);
                    assert_eq!(range.start, next, "workers {workers} kgs {kgs}");
                    for g in range.clone() {
                        assert_eq!(worker_of(g, workers, kgs), w);
                    }
                    next = range.end;
                }
                assert_eq!(next, kgs);
            }
        }
    }

    #[test]
    fn key_groups_are_fixed_across_runs() {
        // A change here would move every key of every existing job.
        assert_eq!(key_group(b"user-42", 128), key_group(b"user-42", 128));
        assert_eq!(
            xxh3_64(b"user-42") % 128,
            u64::from(key_group(b"user-42", 128))
        );
    }

    #[test]
    fn timer_keys_parse_back_and_sort_by_time() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        timer_key(&mut a, 3, 9, TimeDomain::EventTime, 100, b"k", b"ns");
        timer_key(&mut b, 3, 9, TimeDomain::EventTime, 1000, b"a", b"");
        assert!(a < b);
        assert_eq!(parse_timer_key(&a), Some((100, &b"k"[..], &b"ns"[..])));
        let d = decode_key(&a).expect("a timer key");
        assert_eq!(
            (d.kg, d.id, d.timer, d.key, d.namespace),
            (
                3,
                9,
                Some((TimeDomain::EventTime, 100)),
                &b"k"[..],
                &b"ns"[..]
            )
        );
    }

    #[test]
    fn state_keys_decode_and_garbage_does_not() {
        let mut k = Vec::new();
        state_key(&mut k, 7, name_id("op/count"), b"abc", b"n");
        let d = decode_key(&k).expect("a state key");
        assert_eq!(
            (d.kg, d.id, d.timer, d.key, d.namespace),
            (7, name_id("op/count"), None, &b"abc"[..], &b"n"[..])
        );
        assert_eq!(decode_key(&[0, 1, 2]), None);
        k.truncate(k.len() - 1);
        assert_eq!(decode_key(&k), None);
    }
}
