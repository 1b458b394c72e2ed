//! The checkpoint manifest: what a checkpoint holds, checksummed.
//!
//! Byte layout (docs/format.md, "Checkpoint manifest"):
//!
//! ```text
//! GRESS-CHECKPOINT-MANIFEST 2\n
//! <crc32c of the first line and the body, 8 lower-case hex digits> <body length, decimal>\n
//! <body: JSON>
//! ```
//!
//! The first two lines keep this shape in every version, and the checksum
//! covers the version, so a flipped bit reads as damage while a manifest of
//! a newer version reads as [`Error::UnsupportedVersion`].
//!
//! Manifests come from storage and are untrusted: every field is checked
//! before anything is read, restored or deleted on its word.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::check_path;

const MAGIC: &str = "GRESS-CHECKPOINT-MANIFEST";
/// Manifest format version this build writes and reads.
pub const MANIFEST_VERSION: u32 = 2;
/// The largest manifest body accepted.
pub const MAX_MANIFEST_LEN: u64 = 64 << 20;
/// The largest stored file a manifest may name.
pub const MAX_FILE_SIZE: u64 = 1 << 40;
const MAX_FILES: usize = 1_000_000;
const MAX_METADATA_ENTRIES: usize = 100_000;
const MAX_METADATA_LEN: usize = 1 << 20;

/// Directory of manifests in the storage.
pub const MANIFESTS: &str = "manifests/";
/// Directory of files shared between checkpoints.
pub const SHARED: &str = "shared/";
/// Directory of files private to one checkpoint.
pub const PRIVATE: &str = "checkpoints/";
/// Directory of savepoints.
pub const SAVEPOINTS: &str = "savepoints/";
/// Directory of fencing tokens (see the manager's `fence` module).
pub const FENCE: &str = "fence/";
/// Written before a restore switches any backend, deleted once all are
/// switched.
pub const RESTORE_INTENT: &str = "restore.intent";
/// The name of a savepoint's manifest inside its directory.
pub const SAVEPOINT_MANIFEST: &str = "MANIFEST";

/// Caller metadata committed with the state, e.g. source offsets.
pub type Metadata = BTreeMap<String, String>;

/// One stored file of a backend's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The name the backend gave it (restores see this name).
    pub name: String,
    /// Where it is in the storage.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// CRC32C of its bytes.
    pub crc32c: u32,
}

/// One backend's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntry {
    /// The name it was registered under.
    pub name: String,
    /// The backend's checkpoint format (e.g. `memory-v1`, `rocksdb-v1`,
    /// `snapshot-v1` for savepoints).
    pub format: String,
    /// Every file a restore needs, in restore order.
    pub files: Vec<FileEntry>,
    /// How many of the files were written by this checkpoint's own delta
    /// chain since its last full capture (0 for a complete capture).
    #[serde(default)]
    pub chain_deltas: u32,
}

/// A committed checkpoint (or savepoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Checkpoint id; ids only grow.
    pub id: u64,
    /// When the checkpoint was taken, ms since the UNIX epoch.
    pub created_at_ms: u64,
    /// The caller's metadata.
    #[serde(default)]
    pub metadata: Metadata,
    /// Each registered backend's part.
    pub backends: Vec<BackendEntry>,
}

/// Storage path of checkpoint `id`'s manifest.
pub fn manifest_path(id: u64) -> String {
    format!("{MANIFESTS}{id:020}.manifest")
}

/// The id in a manifest path, if it is one.
pub fn id_of_manifest_path(path: &str) -> Option<u64> {
    let name = path.strip_prefix(MANIFESTS)?.strip_suffix(".manifest")?;
    if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// The directory component naming who wrote a data file: the checkpoint
/// id, then the fencing epoch of the manager that wrote it, so two
/// managers never write the same path, even for the same id.
pub fn writer_dir(id: u64, epoch: u64) -> String {
    format!("{id:020}-{epoch:020}")
}

/// Directory of checkpoint `id`'s private files, written at `epoch`.
pub fn private_dir(id: u64, epoch: u64) -> String {
    format!("{PRIVATE}{}/", writer_dir(id, epoch))
}

/// Path of a shared file first stored by checkpoint `id` (at `epoch`)
/// under `key`.
pub fn shared_path(id: u64, epoch: u64, key: &str) -> String {
    format!("{SHARED}{}/{key}", writer_dir(id, epoch))
}

/// The checkpoint id in a writer directory component, if it is one.
fn id_of_writer_dir(dir: &str) -> Option<u64> {
    let (id, epoch) = dir.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(id) || !digits(epoch) {
        return None;
    }
    epoch.parse::<u64>().ok()?;
    id.parse().ok()
}

/// The id of the checkpoint that wrote a data file, from its
/// `shared/<id>-<epoch>/` or `checkpoints/<id>-<epoch>/` component. `None`
/// for any other path.
pub fn owner_of(path: &str) -> Option<u64> {
    let rest = path
        .strip_prefix(SHARED)
        .or_else(|| path.strip_prefix(PRIVATE))?;
    let (dir, tail) = rest.split_once('/')?;
    if tail.is_empty() {
        return None;
    }
    id_of_writer_dir(dir)
}

/// The sharing key of a shared file's path (what follows its writer
/// directory).
pub fn key_of_shared(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(SHARED)?;
    let (dir, key) = rest.split_once('/')?;
    (id_of_writer_dir(dir).is_some() && !key.is_empty()).then_some(key)
}

/// True for the temporary files that storage writes leave behind when a
/// process dies mid-write (`<name>.tmp-<pid>-<seq>`); no manifest ever
/// names one.
pub fn is_temporary(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.contains(".tmp-"))
}

impl Manifest {
    /// Encodes with the checksummed header.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid("manifest", format!("cannot encode: {e}")))?;
        let first = format!("{MAGIC} {MANIFEST_VERSION}\n");
        let crc = crc32c::crc32c_append(crc32c::crc32c(first.as_bytes()), &body);
        let mut out = format!("{first}{crc:08x} {}\n", body.len()).into_bytes();
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes and validates bytes read from `path` (for messages).
    pub fn decode(bytes: &[u8], path: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidManifest {
            path: path.to_string(),
            reason: reason.into(),
        };
        let mut lines = bytes.splitn(3, |&b| b == b'\n');
        let (Some(first), Some(second), Some(body)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(bad("truncated header".into()));
        };
        let first_text =
            std::str::from_utf8(first).map_err(|_| bad("header is not text".into()))?;
        let Some(version) = first_text
            .strip_prefix(MAGIC)
            .and_then(|v| v.strip_prefix(' '))
        else {
            return Err(bad("not a gress checkpoint manifest".into()));
        };
        if version.is_empty() || version.len() > 9 || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("malformed version".into()));
        }
        let version: u32 = version
            .parse()
            .map_err(|_| bad("malformed version".into()))?;
        let second = std::str::from_utf8(second).map_err(|_| bad("header is not text".into()))?;
        let (crc, len) = second
            .split_once(' ')
            .ok_or_else(|| bad("malformed checksum line".into()))?;
        if crc.len() != 8 || !crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("malformed checksum".into()));
        }
        if len.is_empty()
            || !len.bytes().all(|b| b.is_ascii_digit())
            || (len.len() > 1 && len.starts_with('0'))
        {
            return Err(bad("malformed length".into()));
        }
        let crc = u32::from_str_radix(crc, 16).map_err(|_| bad("malformed checksum".into()))?;
        let len: u64 = len.parse().map_err(|_| bad("malformed length".into()))?;
        if len > MAX_MANIFEST_LEN {
            return Err(bad(format!(
                "body of {len} bytes exceeds {MAX_MANIFEST_LEN}"
            )));
        }
        if body.len() as u64 != len {
            return Err(bad(format!(
                "body is {} bytes, header says {len} (torn or truncated)",
                body.len()
            )));
        }
        // The first line with its newline, then the body.
        let actual =
            crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(first), b"\n"), body);
        if actual != crc {
            return Err(bad(format!(
                "checksum mismatch: header {crc:08x}, computed {actual:08x}"
            )));
        }
        if version != MANIFEST_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_string(),
                found: version,
                supported: MANIFEST_VERSION,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        let area = match path.strip_prefix(SAVEPOINTS) {
            Some(rest) => Area::Savepoint(format!(
                "{SAVEPOINTS}{}/",
                rest.split('/').next().unwrap_or("")
            )),
            None => Area::Checkpoint,
        };
        manifest.validate_in(&area).map_err(|e| match e {
            Error::Invalid { reason, .. } => bad(reason.into_owned()),
            other => other,
        })?;
        Ok(manifest)
    }

    /// Checks everything a restore or a deletion will trust, for a
    /// checkpoint manifest.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(&Area::Checkpoint)
    }

    fn validate_in(&self, area: &Area) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid("manifest", reason));
        if self.metadata.len() > MAX_METADATA_ENTRIES
            || self
                .metadata
                .iter()
                .any(|(k, v)| k.len() + v.len() > MAX_METADATA_LEN)
        {
            return bad("metadata too large".into());
        }
        let mut names = HashSet::new();
        for backend in &self.backends {
            check_name(&backend.name)?;
            if !names.insert(&backend.name) {
                return bad(format!("backend `{}` appears twice", backend.name));
            }
            if backend.format.is_empty() || backend.format.len() > 64 {
                return bad(format!("backend `{}` has no valid format", backend.name));
            }
            if backend.files.len() > MAX_FILES {
                return bad(format!("backend `{}` lists too many files", backend.name));
            }
            let mut file_names = HashSet::new();
            for file in &backend.files {
                check_file_name(&file.name)?;
                if !file_names.insert(&file.name) {
                    return bad(format!("file `{}` appears twice", file.name));
                }
                check_path(&file.path)?;
                if let Area::Savepoint(dir) = area {
                    if !file.path.starts_with(dir.as_str()) {
                        return bad(format!(
                            "file path `{}` is outside the savepoint",
                            file.path
                        ));
                    }
                    if file.size > MAX_FILE_SIZE {
                        return bad(format!("file `{}` claims {} bytes", file.name, file.size));
                    }
                    continue;
                }
                // Data files live under the checkpoint that wrote them,
                // which is never newer than this one.
                match owner_of(&file.path) {
                    Some(owner) if owner <= self.id => {}
                    Some(_) => {
                        return bad(format!(
                            "file path `{}` belongs to no earlier checkpoint",
                            file.path
                        ));
                    }
                    None => {
                        return bad(format!(
                            "file path `{}` is outside the checkpoint area",
                            file.path
                        ));
                    }
                }
                if file.size > MAX_FILE_SIZE {
                    return bad(format!("file `{}` claims {} bytes", file.name, file.size));
                }
            }
        }
        Ok(())
    }

    /// Every stored path this checkpoint needs.
    pub fn paths(&self) -> impl Iterator<Item = &FileEntry> {
        self.backends.iter().flat_map(|b| b.files.iter())
    }

    /// The entry of backend `name`.
    pub fn backend(&self, name: &str) -> Option<&BackendEntry> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Total bytes of the files this checkpoint references.
    pub fn total_bytes(&self) -> u64 {
        self.paths().map(|f| f.size).sum()
    }
}

/// Where a manifest's files may live.
enum Area {
    /// `shared/<owner>/` and `checkpoints/<owner>/`, with an owner id not
    /// above the manifest's.
    Checkpoint,
    /// Under the savepoint's own directory.
    Savepoint(String),
}

/// Backend names: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::invalid(
            "name",
            format!("`{name}` is not 1 to 64 characters of [A-Za-z0-9_-]"),
        ));
    }
    Ok(())
}

fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.contains('/') {
        return Err(Error::invalid(
            "file name",
            format!("`{name}` is not a plain file name"),
        ));
    }
    check_path(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            id: 7,
            created_at_ms: 1,
            metadata: [("offset/topic-0".to_string(), "42".to_string())].into(),
            backends: vec![BackendEntry {
                name: "counts".into(),
                format: "memory-v1".into(),
                files: vec![FileEntry {
                    name: "full-7.snap".into(),
                    path:
                        "checkpoints/00000000000000000007-00000000000000000001/counts/full-7.snap"
                            .into(),
                    size: 10,
                    crc32c: 3,
                }],
                chain_deltas: 0,
            }],
        }
    }

    #[test]
    fn round_trip() -> Result<()> {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()?, "m")?, m);
        Ok(())
    }

    #[test]
    fn every_truncation_and_flip_is_rejected() -> Result<()> {
        let bytes = sample().encode()?;
        for len in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..len], "m").is_err(),
                "cut at {len}"
            );
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(Manifest::decode(&bad, "m").is_err(), "flip at {i}");
        }
        Ok(())
    }

    #[test]
    fn hostile_fields_are_rejected() -> Result<()> {
        type Edit = fn(&mut Manifest);
        let cases: Vec<(&str, Edit)> = vec![
            ("escaping path", |m| {
                m.backends[0].files[0].path = "../../etc/passwd".into()
            }),
            ("absolute path", |m| {
                m.backends[0].files[0].path = "/etc/passwd".into()
            }),
            ("outside area", |m| {
                m.backends[0].files[0].path = "manifests/x".into()
            }),
            ("newer owner", |m| {
                m.backends[0].files[0].path =
                    "checkpoints/00000000000000000009-00000000000000000001/counts/x".into()
            }),
            ("newer shared owner", |m| {
                m.backends[0].files[0].path =
                    "shared/00000000000000000009-00000000000000000001/rocksdb/x.sst".into()
            }),
            ("shared without owner", |m| {
                m.backends[0].files[0].path = "shared/rocksdb/x.sst".into()
            }),
            ("owner without epoch", |m| {
                m.backends[0].files[0].path = "checkpoints/00000000000000000007/counts/x".into()
            }),
            ("absurd size", |m| m.backends[0].files[0].size = u64::MAX),
            ("bad name", |m| m.backends[0].name = "a/b".into()),
            ("file name with slash", |m| {
                m.backends[0].files[0].name = "a/b".into()
            }),
            ("duplicate backend", |m| {
                let b = m.backends[0].clone();
                m.backends.push(b);
            }),
        ];
        for (what, edit) in cases {
            let mut m = sample();
            edit(&mut m);
            // Encoding does not validate; decoding must.
            let err = Manifest::decode(&m.encode()?, "m").expect_err(what);
            assert!(err.is_damage(), "{what}: {err}");
        }
        Ok(())
    }

    /// A manifest written by a newer build is intact but unreadable here:
    /// it must say so (and never read as damage, which recovery would
    /// skip and the sweep would act on), while a flipped version digit is
    /// damage.
    #[test]
    fn newer_version_is_not_damage() -> Result<()> {
        let body = serde_json::to_vec(&sample()).expect("json");
        let first = "GRESS-CHECKPOINT-MANIFEST 3\n";
        let crc = crc32c::crc32c_append(crc32c::crc32c(first.as_bytes()), &body);
        let mut newer = format!("{first}{crc:08x} {}\n", body.len()).into_bytes();
        newer.extend_from_slice(&body);
        let err = Manifest::decode(&newer, "m").expect_err("version 3");
        assert!(
            matches!(err, Error::UnsupportedVersion { found: 3, .. }),
            "{err:?}"
        );
        assert!(!err.is_damage());

        let mut flipped = sample().encode()?;
        let digit = flipped
            .iter()
            .position(|&b| b == b'2')
            .expect("version digit");
        flipped[digit] = b'3';
        let err = Manifest::decode(&flipped, "m").expect_err("flipped");
        assert!(err.is_damage(), "{err:?}");
        Ok(())
    }

    #[test]
    fn data_paths_name_their_owner() {
        assert_eq!(owner_of(&shared_path(9, 2, "rocksdb/ab/1.sst")), Some(9));
        assert_eq!(
            key_of_shared(&shared_path(9, 2, "rocksdb/ab/1.sst")),
            Some("rocksdb/ab/1.sst")
        );
        assert_eq!(owner_of(&format!("{}x/y", private_dir(4, 3))), Some(4));
        assert_ne!(
            private_dir(4, 3),
            private_dir(4, 5),
            "epochs keep writers apart"
        );
        assert_eq!(owner_of("shared/rocksdb/x.sst"), None);
        assert_eq!(owner_of("checkpoints/00000000000000000004/x"), None);
        assert_eq!(
            owner_of("checkpoints/00000000000000000004-00000000000000000001/"),
            None
        );
        assert_eq!(owner_of("manifests/00000000000000000004.manifest"), None);
        assert!(is_temporary(
            "manifests/00000000000000000004.manifest.tmp-1-2"
        ));
        assert!(!is_temporary("shared/00000000000000000004/rocksdb/a/1.sst"));
    }

    #[test]
    fn manifest_paths_parse_back() {
        assert_eq!(id_of_manifest_path(&manifest_path(42)), Some(42));
        assert_eq!(id_of_manifest_path("manifests/42.manifest"), None);
        assert_eq!(
            id_of_manifest_path("manifests/00000000000000000042.manifest.tmp-1-2"),
            None
        );
    }
}
