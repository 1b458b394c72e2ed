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
