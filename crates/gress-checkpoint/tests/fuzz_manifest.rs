//! Fuzz-style test of the checkpoint manifest decoder,
//! `Manifest::decode(bytes, path)`: manifests come from storage and are
//! untrusted.
//!
//! A million inputs drawn from proptest's `TestRng` under a fixed seed:
//! random bytes, manifests built from docs/format.md ("Manifest") and by a
//! real `CheckpointManager`, and mutations of those (bit flips, byte
//! changes, truncations, insertions, duplicated spans, hostile header
//! lines, JSON values and lengths set to extremes), most with the header's
//! checksum and length recomputed so that the mutation reaches the JSON
//! and the validation behind them. The decoder must never panic, must fail
//! only with `InvalidManifest` naming the path, and every manifest it
//! accepts must be within the bounds the format sets.
//!
//! A failing case prints its seed and number; rerun it alone with
//! `GRESS_FUZZ_SEED=<seed> GRESS_FUZZ_CASE=<n>`. `GRESS_FUZZ_CASES=<n>`
//! changes the number of cases.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use gress_checkpoint::{CheckpointConfig, CheckpointManager, Error, LocalStorage, Manifest};
use gress_state::{MemoryStateBackend, StateBackend};
use proptest::prelude::{Rng, RngExt};
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------
// The harness: one generator per case, so any case reruns alone.

const SEED: u64 = 0x6772_6573_735f_6d66;
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

fn random_bytes(rng: &mut TestRng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn pick<'a, T>(rng: &mut TestRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Bit flip, byte change, truncation, insertion, duplicated or deleted span,
/// or a run of text that JSON and the header treat specially.
fn mutate_bytes(rng: &mut TestRng, data: &mut Vec<u8>) {
    const TOKENS: [&[u8]; 14] = [
        b"\n", b" ", b"\"", b"\\", b"{", b"}", b"[", b"]", b":", b",", b"-", b"0", b"\xff",
        b"\\u0000",
    ];
    let len = data.len();
    let pos = |rng: &mut TestRng| rng.random_range(0..=len);
    match rng.random_range(0..8) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] = rng.random();
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
            let end = rng.random_range(start..=len.min(start + 128));
            let span = data[start..end].to_vec();
            let at = pos(rng);
            data.splice(at..at, span);
        }
        5 if len > 0 => {
            let start = rng.random_range(0..len);
            let end = rng.random_range(start..=len.min(start + 64));
            data.drain(start..end);
        }
        6 => {
            let at = pos(rng);
            let token = pick(rng, &TOKENS).to_vec();
            data.splice(at..at, token);
        }
        _ => {
            // Nesting deeper than any JSON parser should follow.
            let at = pos(rng);
            let depth = rng.random_range(100..=5000);
            let open = if rng.random_bool(0.5) { b'[' } else { b'{' };
            data.splice(at..at, std::iter::repeat_n(open, depth));
        }
    }
}

/// Bytes, shown as text where they are text.
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(4096)];
        write!(
            f,
            "{} bytes: {:?}",
            self.0.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

// ---------------------------------------------------------------------------
// Manifests built from docs/format.md.

const MAGIC_LINE: &str = "GRESS-CHECKPOINT-MANIFEST 2";
const MAX_FILE_SIZE: u64 = 1 << 40;

/// The checksum of a manifest: over the first line, its newline, and the
/// body.
fn checksum(first: &str, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(format!("{first}\n").as_bytes()), body)
}

/// The header the format puts in front of `body`.
fn with_header(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{MAGIC_LINE}\n{:08x} {}\n",
        checksum(MAGIC_LINE, body),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The body of an encoded manifest, if it has two header lines.
fn body_of(bytes: &[u8]) -> Option<&[u8]> {
    let mut lines = bytes.splitn(3, |&b| b == b'\n');
    lines.next()?;
    lines.next()?;
    lines.next()
}

fn manifest_path(id: u64) -> String {
    format!("manifests/{id:020}.manifest")
}

const PATH_CHARS: &[u8] = b"ABCXYZabcxyz0123456789._-";
const NAME_CHARS: &[u8] = b"ABCXYZabcxyz0123456789_-";

fn word(rng: &mut TestRng, chars: &[u8], max_len: usize) -> String {
    let len = rng.random_range(1..=max_len);
    (0..len).map(|_| char::from(*pick(rng, chars))).collect()
}

/// A path component: never `.` or `..`.
fn component(rng: &mut TestRng) -> String {
    let c = word(rng, PATH_CHARS, 12);
    if c.bytes().all(|b| b == b'.') {
        format!("{c}x")
    } else {
        c
    }
}

/// Any text, escapes and non-ASCII included.
fn text(rng: &mut TestRng) -> String {
    const PIECES: [&str; 10] = ["a", "Z", "/", "\"", "\\", "\n", "\u{0}", "é", "𝄞", " "];
    let n = rng.random_range(0..=12);
    (0..n).map(|_| *pick(rng, &PIECES)).collect()
}

/// Where a manifest is read from, which decides where its files may live.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Area {
    Checkpoint,
    /// The savepoint's name.
    Savepoint(String),
}

/// A valid manifest as a JSON body, and the path it is read from.
fn valid_manifest(rng: &mut TestRng) -> (Value, String) {
    let area = if rng.random_ratio(1, 5) {
        Area::Savepoint(word(rng, NAME_CHARS, 16))
    } else {
        Area::Checkpoint
    };
    let id: u64 = match rng.random_range(0..4) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.random(),
        _ => rng.random_range(1..100),
    };
    let mut metadata = Map::new();
    for _ in 0..rng.random_range(0..=3) {
        metadata.insert(text(rng), Value::String(text(rng)));
    }
    let mut backends = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..rng.random_range(0..=3) {
        let max_len = if rng.random_ratio(1, 8) { 64 } else { 12 };
        let name = word(rng, NAME_CHARS, max_len);
        if !names.insert(name.clone()) {
            continue;
        }
        let mut files = Vec::new();
        let mut file_names = HashSet::new();
        for _ in 0..rng.random_range(0..=4) {
            let file_name = component(rng);
            if !file_names.insert(file_name.clone()) {
                continue;
            }
            let path = match &area {
                Area::Savepoint(sp) => format!("savepoints/{sp}/{file_name}"),
                Area::Checkpoint => match rng.random_range(0..3) {
                    0 => format!(
                        "shared/{:020}-{:020}/{}/{}",
                        rng.random_range(0..=id),
                        rng.random::<u64>(),
                        component(rng),
                        component(rng)
                    ),
                    1 if id > 0 => format!(
                        "checkpoints/{:020}-{:020}/{name}/{file_name}",
                        rng.random_range(0..id),
                        rng.random::<u64>()
                    ),
                    _ => format!(
                        "checkpoints/{id:020}-{:020}/{name}/{file_name}",
                        rng.random::<u64>()
                    ),
                },
            };
            let size = match rng.random_range(0..4) {
                0 => MAX_FILE_SIZE,
                1 => 0,
                _ => rng.random_range(0..MAX_FILE_SIZE),
            };
            files.push(json!({
                "name": file_name,
                "path": path,
                "size": size,
                "crc32c": rng.random::<u32>(),
            }));
        }
        let format = match rng.random_range(0..4) {
            0 => "memory-v1".to_string(),
            1 => "rocksdb-v1".to_string(),
            2 => "snapshot-v1".to_string(),
            _ => word(rng, PATH_CHARS, 64),
        };
        let mut backend = json!({ "name": name, "format": format, "files": files });
        if rng.random_bool(0.5) {
            backend["chain_deltas"] = json!(rng.random::<u32>());
        }
        backends.push(backend);
    }
    let mut body = json!({
        "id": id,
        "created_at_ms": rng.random::<u64>(),
        "backends": backends,
    });
    if !metadata.is_empty() || rng.random_bool(0.5) {
        body["metadata"] = Value::Object(metadata);
    }
    let path = match area {
        Area::Savepoint(sp) => format!("savepoints/{sp}/MANIFEST"),
        Area::Checkpoint => manifest_path(id),
    };
    (body, path)
}

fn encode_body(rng: &mut TestRng, body: &Value) -> Vec<u8> {
    let encoded = if rng.random_bool(0.5) {
        serde_json::to_vec_pretty(body)
    } else {
        serde_json::to_vec(body)
    };
    encoded.expect("a JSON value encodes")
}

/// The decoded manifest holds exactly what `body` says.
fn assert_round_trip(m: &Manifest, body: &Value) {
    assert_eq!(Some(m.id), body["id"].as_u64());
    assert_eq!(Some(m.created_at_ms), body["created_at_ms"].as_u64());
    let metadata: BTreeMap<String, String> = body
        .get("metadata")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_string()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(m.metadata, metadata);
    let backends = body["backends"].as_array().expect("an array");
    assert_eq!(m.backends.len(), backends.len());
    for (b, want) in m.backends.iter().zip(backends) {
        assert_eq!(Some(b.name.as_str()), want["name"].as_str());
        assert_eq!(Some(b.format.as_str()), want["format"].as_str());
        assert_eq!(
            u64::from(b.chain_deltas),
            want.get("chain_deltas")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        );
        let files = want["files"].as_array().expect("an array");
        assert_eq!(b.files.len(), files.len());
        for (f, want) in b.files.iter().zip(files) {
            assert_eq!(Some(f.name.as_str()), want["name"].as_str());
            assert_eq!(Some(f.path.as_str()), want["path"].as_str());
            assert_eq!(Some(f.size), want["size"].as_u64());
            assert_eq!(Some(u64::from(f.crc32c)), want["crc32c"].as_u64());
        }
    }
}

// ---------------------------------------------------------------------------
// Hostile mutations.

/// A string chosen to break a field: paths that escape or are malformed,
/// names that are too long, text outside the allowed characters.
fn hostile_string(rng: &mut TestRng) -> Value {
    const STRINGS: [&str; 28] = [
        "",
        ".",
        "..",
        "../x",
        "/etc/passwd",
        "a//b",
        "a/",
        "shared/",
        "shared/../x",
        "shared/./x",
        "shared/a b",
        "shared/é",
        "shared/x\u{0}",
        "checkpoints/",
        "checkpoints/00000000000000000099/b/f",
        "checkpoints/5/b/f",
        "checkpoints/x/b/f",
        "checkpoints/-1/b/f",
        "checkpoints/18446744073709551616/b/f",
        "shared/00000000000000000099-00000000000000000001/k",
        "shared/00000000000000000001/k",
        "shared/5-1/k",
        "shared/k",
        "savepoints/sp/x",
        "savepoints/other/x",
        "manifests/x",
        "memory-v1",
        "a/b",
    ];
    match rng.random_range(0..8) {
        0..=4 => Value::String(pick(rng, &STRINGS).to_string()),
        5 => Value::String("x".repeat(*pick(rng, &[63, 64, 65, 255, 256, 1024, 1025]))),
        6 => Value::String(format!(
            "shared/{}",
            "a/".repeat(rng.random_range(400..=600))
        )),
        _ => Value::String(text(rng)),
    }
}

/// A value of any type, numbers out of range included.
fn hostile_value(rng: &mut TestRng) -> Value {
    match rng.random_range(0..8) {
        0..=1 => hostile_string(rng),
        2 => json!(*pick(
            rng,
            &[0, 1, MAX_FILE_SIZE, MAX_FILE_SIZE + 1, u64::MAX]
        )),
        3 => json!(*pick(rng, &[-1i64, i64::MIN, i64::from(u32::MAX) + 1])),
        4 => json!(*pick(rng, &[1.5f64, -0.0, 1e300])),
        5 => serde_json::from_str("18446744073709551616").expect("a big number"),
        _ => pick(rng, &[Value::Null, json!(true), json!([]), json!({})]).clone(),
    }
}

/// A hostile value mostly of the type of `old`, so that it gets past the
/// JSON schema to the checks behind it.
fn hostile_like(rng: &mut TestRng, old: &Value) -> Value {
    if rng.random_ratio(1, 4) {
        return hostile_value(rng);
    }
    match old {
        Value::String(_) => hostile_string(rng),
        Value::Number(n) => {
            let n = n.as_u64().unwrap_or(0);
            json!(*pick(
                rng,
                &[
                    0,
                    1,
                    n.wrapping_sub(1),
                    n.wrapping_add(1),
                    n / 2,
                    MAX_FILE_SIZE,
                    MAX_FILE_SIZE + 1,
                    u64::from(u32::MAX) + 1,
                    u64::MAX,
                ]
            ))
        }
        _ => hostile_value(rng),
    }
}

/// JSON pointers to every node of `v`, `v` itself included.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// One hostile change at a node of a JSON value chosen uniformly: a field
/// replaced, removed or added, an array element duplicated or removed.
fn mutate_json(rng: &mut TestRng, root: &mut Value) {
    let mut all = Vec::new();
    pointers(root, String::new(), &mut all);
    let at = pick(rng, &all);
    let v = root.pointer_mut(at).expect("a pointer made from the value");
    match v {
        Value::Object(m) if rng.random_bool(0.5) => {
            if !m.is_empty() && rng.random_bool(0.5) {
                let i = rng.random_range(0..m.len());
                let key = m.keys().nth(i).cloned().expect("a key");
                m.remove(&key);
            } else {
                let key = pick(rng, &["id", "extra", "name", "files", "size", "path"]);
                m.insert(key.to_string(), hostile_value(rng));
            }
        }
        Value::Array(a) if rng.random_bool(0.5) => {
            if !a.is_empty() && rng.random_bool(0.5) {
                let i = rng.random_range(0..a.len());
                let copy = a[i].clone();
                a.push(copy);
            } else if !a.is_empty() {
                a.remove(rng.random_range(0..a.len()));
            } else {
                a.push(hostile_value(rng));
            }
        }
        _ => *v = hostile_like(rng, v),
    }
}

/// The header lines changed in ways a lenient or careless parser might
/// accept: another version, a checksum or length that is off, malformed,
/// or at an extreme.
fn mutate_header(rng: &mut TestRng, body: &[u8]) -> Vec<u8> {
    let crc = checksum(MAGIC_LINE, body);
    let len = body.len() as u64;
    let mut first = MAGIC_LINE.to_string();
    let mut crc_text = format!("{crc:08x}");
    let mut len_text = len.to_string();
    match rng.random_range(0..16) {
        0 => {
            first = pick(
                rng,
                &[
                    "GRESS-CHECKPOINT-MANIFEST 1",
                    "GRESS-CHECKPOINT-MANIFEST 02",
                    "GRESS-CHECKPOINT-MANIFEST +2",
                    "GRESS-CHECKPOINT-MANIFEST  2",
                    "GRESS-CHECKPOINT-MANIFEST 2 ",
                    "GRESS-CHECKPOINT-MANIFEST",
                    "gress-checkpoint-manifest 2",
                    "GRESS-CHECKPOINT-MANIFEST 2\r",
                    "",
                ],
            )
            .to_string()
        }
        1 => crc_text = format!("{:08x}", crc ^ (1 << rng.random_range(0..32))),
        2 => crc_text = format!("{crc:08X}"),
        3 => crc_text = format!("{crc:x}"),
        4 => crc_text = format!("0{crc:08x}"),
        5 => crc_text = format!("+{crc:08x}"),
        6 => crc_text = pick(rng, &["", "ffffffffff", "-1", "0x0", "zzzzzzzz"]).to_string(),
        7 => len_text = (len + 1).to_string(),
        8 => len_text = len.saturating_sub(1).to_string(),
        9 => len_text = format!("+{len}"),
        10 => len_text = format!("0{len}"),
        11 => {
            len_text = pick(
                rng,
                &[
                    "",
                    "-1",
                    "18446744073709551615",
                    "18446744073709551616",
                    "67108864",
                    "67108865",
                    "1e3",
                ],
            )
            .to_string()
        }
        12 => len_text = format!("{len} "),
        13 => crc_text = format!("{crc_text} "),
        14 => crc_text = format!("{crc_text}\t"),
        _ => len_text = format!("{len}\r"),
    }
    let mut out = format!("{first}\n{crc_text} {len_text}\n").into_bytes();
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------
// What the decoder must do.

/// Everything docs/format.md bounds holds for an accepted manifest: the
/// checksum and length match the body, every path is made of allowed
/// components and lies in the area of the manifest, no file is over 1 TiB,
/// and no backend or file is named twice.
fn assert_in_bounds(bytes: &[u8], path: &str, m: &Manifest) {
    let mut lines = bytes.splitn(3, |&b| b == b'\n');
    let (first, second, body) = (
        lines.next().expect("a first line"),
        lines.next().expect("a second line"),
        lines.next().expect("a body"),
    );
    assert_eq!(first, MAGIC_LINE.as_bytes(), "magic and version");
    let second = std::str::from_utf8(second).expect("a text header");
    let (crc, len) = second.split_once(' ').expect("checksum and length");
    assert_eq!(u32::from_str_radix(crc, 16), Ok(checksum(MAGIC_LINE, body)));
    assert!(
        crc.len() == 8 && crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "checksum {crc:?} is not 8 lower-case hex digits"
    );
    assert!(
        !len.starts_with(['+', '0']) || len == "0",
        "length {len:?} is not plain decimal"
    );
    assert_eq!(len.parse::<u64>(), Ok(body.len() as u64));

    let savepoint_dir = path
        .strip_prefix("savepoints/")
        .map(|rest| format!("savepoints/{}/", rest.split('/').next().unwrap_or("")));
    let mut backend_names = HashSet::new();
    for b in &m.backends {
        assert!(backend_names.insert(&b.name), "backend {} twice", b.name);
        let mut file_names = HashSet::new();
        for f in &b.files {
            assert!(file_names.insert(&f.name), "file {} twice", f.name);
            assert!(f.size <= MAX_FILE_SIZE, "file of {} bytes", f.size);
            for part in f.path.split('/') {
                assert!(
                    !part.is_empty()
                        && part != "."
                        && part != ".."
                        && part
                            .bytes()
                            .all(|c| PATH_CHARS.contains(&c) || c.is_ascii_alphanumeric()),
                    "path {}",
                    f.path
                );
            }
            match &savepoint_dir {
                Some(dir) => assert!(f.path.starts_with(dir.as_str()), "path {}", f.path),
                None => {
                    // `shared/<id>-<epoch>/...` or `checkpoints/<id>-<epoch>/...`,
                    // both 20 digits, the id not above the manifest's.
                    let owner = f
                        .path
                        .strip_prefix("checkpoints/")
                        .or_else(|| f.path.strip_prefix("shared/"))
                        .map(|rest| rest.split('/').next().unwrap_or(""));
                    let id_of = |o: &str| {
                        let (id, epoch) = o.split_once('-')?;
                        (id.len() == 20 && epoch.len() == 20 && epoch.parse::<u64>().is_ok())
                            .then(|| id.parse::<u64>().ok())
                            .flatten()
                    };
                    assert!(
                        owner.and_then(id_of).is_some_and(|o| o <= m.id),
                        "path {} in checkpoint {}",
                        f.path,
                        m.id
                    );
                }
            }
        }
    }
}

/// Decodes; an error must be `InvalidManifest` naming `path`, an accepted
/// manifest must be in bounds. Returns the manifest if accepted.
fn check_decode(bytes: &[u8], path: &str) -> Option<Manifest> {
    match Manifest::decode(bytes, path) {
        Ok(m) => {
            assert_in_bounds(bytes, path, &m);
            Some(m)
        }
        Err(Error::InvalidManifest { path: named, .. }) => {
            assert_eq!(named, path, "the error names the manifest");
            None
        }
        Err(other) => panic!("not an InvalidManifest error: {other:?}"),
    }
}

/// Manifests written by a real manager: a delta chain of three checkpoints
/// of two backends, and a savepoint.
fn manager_manifests() -> gress_checkpoint::Result<Vec<(Vec<u8>, String)>> {
    let dir = tempfile::tempdir().map_err(|e| Error::Storage {
        op: "creating",
        path: "a temporary directory".into(),
        source: e,
    })?;
    let manager = CheckpointManager::open(
        Arc::new(LocalStorage::new(dir.path())?),
        CheckpointConfig::default(),
    )?;
    let counts = Arc::new(MemoryStateBackend::default());
    let sessions = Arc::new(MemoryStateBackend::default());
    manager.register("counts", counts.clone())?;
    manager.register("sessions", sessions.clone())?;
    for i in 0..100 {
        counts.put(format!("key-{i}").as_bytes(), b"0")?;
    }
    let mut ids = Vec::new();
    for round in 1..=3 {
        counts.put(format!("key-{round}").as_bytes(), b"changed")?;
        sessions.put(format!("s-{round}").as_bytes(), b"open")?;
        let metadata = [("offset/topic-0".to_string(), round.to_string())].into();
        ids.push(manager.trigger_checkpoint(metadata)?.info.id);
    }
    manager.trigger_savepoint("before-upgrade", Default::default())?;
    let mut out = Vec::new();
    let mut read = |path: String| -> gress_checkpoint::Result<()> {
        let bytes = std::fs::read(dir.path().join(&path)).map_err(|e| Error::Storage {
            op: "reading",
            path: path.clone(),
            source: e,
        })?;
        out.push((bytes, path));
        Ok(())
    };
    for id in ids {
        read(manifest_path(id))?;
    }
    read("savepoints/before-upgrade/MANIFEST".to_string())?;
    Ok(out)
}

/// Valid encodings to mutate, with the path each is read from and its body.
struct Seeds(Vec<(Vec<u8>, String, Value)>);

impl Seeds {
    fn new() -> gress_checkpoint::Result<Seeds> {
        let mut seeds = Vec::new();
        for (bytes, path) in manager_manifests()? {
            let m = check_decode(&bytes, &path).expect("a manager's manifest decodes");
            assert!(m.backends.iter().any(|b| !b.files.is_empty()));
            let body = serde_json::from_slice(body_of(&bytes).expect("a body"))
                .expect("a manager's manifest body is JSON");
            seeds.push((bytes, path, body));
        }
        let mut rng = case_rng(fuzz_seed(), u64::MAX);
        while seeds.len() < 32 {
            let (body, path) = valid_manifest(&mut rng);
            let bytes = with_header(&encode_body(&mut rng, &body));
            seeds.push((bytes, path, body));
        }
        Ok(Seeds(seeds))
    }

    /// One input and the path it is decoded as; for a fresh valid manifest
    /// also the body it must decode to.
    fn generate(&self, rng: &mut TestRng) -> (Bytes, String, Option<Value>) {
        let (seed_bytes, seed_path, seed_body) = pick(rng, &self.0);
        let mut path = seed_path.clone();
        let mut expect = None;
        let bytes = match rng.random_range(0..100) {
            0..4 => {
                let len = rng.random_range(0..=200);
                random_bytes(rng, len)
            }
            4..8 => {
                let mut out = format!("{MAGIC_LINE}\n").into_bytes();
                let len = rng.random_range(0..=200);
                out.extend(random_bytes(rng, len));
                out
            }
            8..12 => {
                let len = rng.random_range(0..=200);
                with_header(&random_bytes(rng, len))
            }
            12..22 => {
                let (body, valid_path) = valid_manifest(rng);
                let bytes = with_header(&encode_body(rng, &body));
                path = valid_path;
                expect = Some(body);
                bytes
            }
            22..40 => {
                let mut bytes = seed_bytes.clone();
                for _ in 0..rng.random_range(1..=3) {
                    mutate_bytes(rng, &mut bytes);
                }
                bytes
            }
            40..60 => {
                let mut body = body_of(seed_bytes).expect("a body").to_vec();
                for _ in 0..rng.random_range(1..=3) {
                    mutate_bytes(rng, &mut body);
                }
                with_header(&body)
            }
            60..92 => {
                let mut body = seed_body.clone();
                for _ in 0..rng.random_range(1..=2) {
                    mutate_json(rng, &mut body);
                }
                with_header(&encode_body(rng, &body))
            }
            _ => mutate_header(rng, body_of(seed_bytes).expect("a body")),
        };
        if rng.random_ratio(1, 50) {
            // The same bytes read as a savepoint, or from an odd path.
            path = pick(
                rng,
                &[
                    "savepoints/sp/MANIFEST",
                    "savepoints/",
                    "savepoints//MANIFEST",
                    "",
                    "manifests/x",
                ],
            )
            .to_string();
            expect = None;
        }
        (Bytes(bytes), path, expect)
    }
}

/// A million manifests: `Manifest::decode` never panics, fails only with
/// `InvalidManifest` naming the path, accepts only manifests within the
/// bounds of the format, and decodes every valid manifest to what it says.
#[test]
fn fuzz_manifest_decode() -> gress_checkpoint::Result<()> {
    let seeds = Seeds::new()?;
    let (mut n_valid, mut n_invalid) = (0u64, 0u64);
    let n = run_cases(
        "manifest",
        |rng| seeds.generate(rng),
        |(Bytes(bytes), path, expect)| {
            let decoded = check_decode(bytes, path);
            match &decoded {
                Some(_) => n_valid += 1,
                None => n_invalid += 1,
            }
            if let Some(body) = expect {
                let m = decoded.expect("a valid manifest decodes");
                assert_round_trip(&m, body);
            }
        },
    );
    eprintln!("{n_valid} accepted, {n_invalid} rejected");
    assert!(
        n_valid >= n / 100 && n_invalid >= n / 100,
        "both outcomes are exercised"
    );
    Ok(())
}
