//! `gress job state`: a stream job's keyed state at a committed epoch,
//! decoded from its checkpoints (the offline counterpart of Flink's State
//! Processor API).
//!
//! A worker's state at a cut is its backend's checkpoint with the hot
//! image of its state cache (the `cache` part) on top: an entry the image
//! holds supersedes the backend's (docs/format.md, "Keyed state"). Keys
//! are `kg u16 | state id u32 | varint len | key | varint len | namespace`,
//! timers `kg | ffffffff | operator id u32 | domain u8 | time u64 | varint
//! len | key | namespace`; ids are named by the checkpoint's `state/<id>`
//! and `operator/<id>` metadata.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use gress_checkpoint::Catalog;
use gress_rocksdb::{ROCKSDB_CHECKPOINT_FORMAT, RocksDbConfig, RocksDbStateBackend};
use gress_state::checkpoint::Checkpointable;
use gress_state::{MemoryConfig, MemoryStateBackend, StateBackend};
use gress_stream::keys::{TimeDomain, decode_key, get_varint, name_id, put_varint};
use serde_json::json;

use crate::exit;
use crate::location::{Fail, Kind, Location};
use crate::out::Out;

/// What to show.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    pub(crate) operator: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) key: Option<Vec<u8>>,
}

impl Filter {
    fn lists_entries(&self) -> bool {
        self.operator.is_some() || self.state.is_some() || self.key.is_some()
    }
}

/// Bytes as text when printable; a postcard string (length, then UTF-8)
/// as that string, quoted; a lone postcard varint as `varint N`; else hex.
fn shown(bytes: &[u8]) -> String {
    let printable = |s: &str| s.chars().all(|c| !c.is_control());
    if let Ok(s) = std::str::from_utf8(bytes)
        && printable(s)
    {
        return s.to_string();
    }
    if let Some((len, n)) = get_varint(bytes)
        && len > 0
        && usize::try_from(len).is_ok_and(|len| n + len == bytes.len())
        && let Ok(s) = std::str::from_utf8(&bytes[n..])
        && printable(s)
    {
        return format!("{s:?}");
    }
    if let Some((v, n)) = get_varint(bytes)
        && n == bytes.len()
    {
        return format!("varint {v}");
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{hex}")
}

/// Whether a key is `wanted`: the same bytes, or `wanted` as a postcard
/// string (how a `String` key is encoded).
fn key_matches(wanted: &[u8], key: &[u8]) -> bool {
    if key == wanted {
        return true;
    }
    let mut encoded = Vec::with_capacity(wanted.len() + 2);
    put_varint(&mut encoded, wanted.len() as u64);
    encoded.extend_from_slice(wanted);
    key == encoded
}

/// One worker's entries at its checkpoint `id`: backend, then the cache's
/// image over it.
fn worker_entries(catalog: &Catalog, id: u64) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let manifest = catalog
        .manifest(id)
        .ok_or_else(|| Fail::not_found(format!("no checkpoint {id}")))?;
    let mut entries = BTreeMap::new();
    let read = |b: &dyn StateBackend, into: &mut BTreeMap<Vec<u8>, Vec<u8>>| -> Result<()> {
        for kv in b.scan_prefix(b"")? {
            let (k, v) = kv?;
            into.insert(k, v);
        }
        Ok(())
    };
    let scratch = tempfile::tempdir()?;
    let held = restore_parts(catalog, id, manifest, scratch.path())?;
    // The backend first, the cache's image over it.
    for (_, backend) in &held {
        read(&**backend, &mut entries)?;
    }
    for (_, backend) in held {
        backend.close()?;
    }
    Ok(entries)
}

/// Worker checkpoint `id`'s two parts (`state`, then `cache`), each
/// restored into a scratch backend under `scratch`: RocksDB for a RocksDB
/// checkpoint, else memory. Both are restored at once (a restore of one
/// would drop the other).
pub(crate) fn restore_parts(
    catalog: &Catalog,
    id: u64,
    manifest: &gress_checkpoint::Manifest,
    scratch: &std::path::Path,
) -> Result<Vec<(&'static str, Box<dyn Checkpointable>)>> {
    let mut held: Vec<(&'static str, Box<dyn Checkpointable>)> = Vec::new();
    for part in ["state", "cache"] {
        let Some(entry) = manifest.backend(part) else {
            continue;
        };
        let backend: Box<dyn Checkpointable> = if entry.format == ROCKSDB_CHECKPOINT_FORMAT {
            Box::new(RocksDbStateBackend::open(RocksDbConfig::new(
                scratch.join(part),
            ))?)
        } else {
            Box::new(MemoryStateBackend::new(MemoryConfig::default())?)
        };
        held.push((part, backend));
    }
    let parts: Vec<(&str, &dyn Checkpointable)> =
        held.iter().map(|(name, b)| (*name, &**b)).collect();
    catalog
        .restore_into(id, &parts, true)
        .with_context(|| format!("reading checkpoint {id}"))?;
    Ok(held)
}

/// The retained commit of `epoch`, or the newest; a missing one is a
/// [`Fail`] (exit code 4).
pub(crate) fn pick_commit(
    loc: &Location,
    epoch: Option<u64>,
) -> Result<gress_stream::CommitRecord> {
    let commits = gress_stream::commits(&*loc.open("")?)?;
    let commit = match epoch {
        Some(e) => commits.iter().find(|c| c.epoch == e).ok_or_else(|| {
            Fail::not_found(format!(
                "{}: epoch {e} is not a retained commit (retained: {:?})",
                loc.shown(),
                commits.iter().map(|c| c.epoch).collect::<Vec<_>>()
            ))
        })?,
        None => commits
            .iter()
            .max_by_key(|c| c.epoch)
            .ok_or_else(|| Fail::not_found(format!("{}: no committed epoch", loc.shown())))?,
    };
    Ok(commit.clone())
}

/// Prints what `filter` asks of the job's state at `epoch` (default: the
/// newest); a missing epoch or entry is a [`Fail`] (exit code 4).
pub(crate) fn read(
    location: &str,
    epoch: Option<u64>,
    filter: &Filter,
    limit: usize,
    out: &Out,
) -> Result<u8> {
    let loc = Location::parse(location)?;
    let Kind::Job(_) = loc.kind()? else {
        bail!(
            "{}: not a stream job's checkpoints (no commits/)",
            loc.shown()
        );
    };
    let commit = pick_commit(&loc, epoch)?;
    // Names, and entries, over every worker of the commit.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (w, &id) in commit.checkpoints.iter().enumerate() {
        let catalog = Catalog::open(Arc::clone(&loc.worker(w)?))?;
        if let Some(m) = catalog.manifest(id) {
            names.extend(
                m.metadata
                    .iter()
                    .filter(|(k, _)| k.starts_with("state/") || k.starts_with("operator/"))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        entries.extend(worker_entries(&catalog, id)?);
    }
    let state_name = |id: u32| names.get(&format!("state/{id:08x}")).cloned();
    let operator_name = |id: u32| names.get(&format!("operator/{id:08x}")).cloned();
    let wanted_state = |id: u32| -> bool {
        let name = state_name(id);
        match (&filter.operator, &filter.state) {
            (Some(op), Some(st)) => id == name_id(&format!("{op}/{st}")),
            (Some(op), None) => name.is_some_and(|n| n.starts_with(&format!("{op}/"))),
            (None, Some(st)) => name.is_some_and(|n| n.ends_with(&format!("/{st}"))),
            (None, None) => true,
        }
    };
    let wanted_timer = |op: u32| -> bool {
        filter.state.is_none() && filter.operator.as_deref().is_none_or(|o| name_id(o) == op)
    };

    if !filter.lists_entries() {
        // What is there: entries per state and timers per operator.
        let mut counts: BTreeMap<(bool, u32), u64> = BTreeMap::new();
        let mut undecoded = 0u64;
        for (k, _) in &entries {
            match decode_key(k) {
                Some(d) => *counts.entry((d.timer.is_some(), d.id)).or_default() += 1,
                None => undecoded += 1,
            }
        }
        let rows: Vec<serde_json::Value> = counts
            .iter()
            .map(|(&(timer, id), n)| {
                let name = if timer {
                    operator_name(id)
                } else {
                    state_name(id)
                };
                json!({
                    "kind": if timer { "timers" } else { "state" },
                    "id": format!("{id:08x}"),
                    "name": name,
                    "entries": n,
                })
            })
            .collect();
        let doc = json!({
            "epoch": commit.epoch,
            "job": commit.job,
            "workers": commit.workers,
            "key_groups": commit.key_groups,
            "states": rows,
            "undecoded": undecoded,
        });
        out.emit(&doc, || {
            say!(
                "job {} at committed epoch {} ({} workers, {} key groups): {} entries",
                commit.job,
                commit.epoch,
                commit.workers,
                commit.key_groups,
                entries.len()
            );
            for row in &rows {
                say!(
                    "  {:<6} {} {:<40} {} entries",
                    row["kind"].as_str().unwrap_or_default(),
                    row["id"].as_str().unwrap_or_default(),
                    row["name"]
                        .as_str()
                        .unwrap_or("(not named in the checkpoint)"),
                    row["entries"]
                );
            }
            if undecoded > 0 {
                say!("  {undecoded} entries are not keyed state");
            }
        });
        return Ok(exit::OK);
    }

    let mut shown_n = 0usize;
    let mut matched = 0usize;
    for (k, v) in &entries {
        let Some(d) = decode_key(k) else { continue };
        let keep = match d.timer {
            Some(_) => wanted_timer(d.id),
            None => wanted_state(d.id),
        } && filter
            .key
            .as_deref()
            .is_none_or(|key| key_matches(key, d.key));
        if !keep {
            continue;
        }
        matched += 1;
        if shown_n >= limit {
            continue;
        }
        shown_n += 1;
        let doc = match d.timer {
            Some((domain, time)) => json!({
                "key_group": d.kg,
                "timer": {
                    "operator": operator_name(d.id).unwrap_or_else(|| format!("{:08x}", d.id)),
                    "domain": if domain == TimeDomain::EventTime { "event-time" } else { "processing-time" },
                    "time": time,
                },
                "key": shown(d.key),
                "namespace": shown(d.namespace),
            }),
            None => json!({
                "key_group": d.kg,
                "state": state_name(d.id).unwrap_or_else(|| format!("{:08x}", d.id)),
                "key": shown(d.key),
                "namespace": shown(d.namespace),
                "value": shown(v),
            }),
        };
        if out.json {
            say!("{doc}");
        } else if let Some((domain, time)) = d.timer {
            say!(
                "kg {:>5}  timer of {} ({}) at {time}  key {}  namespace {}",
                d.kg,
                doc["timer"]["operator"].as_str().unwrap_or_default(),
                if domain == TimeDomain::EventTime {
                    "event time"
                } else {
                    "processing time"
                },
                shown(d.key),
                shown(d.namespace)
            );
        } else {
            say!(
                "kg {:>5}  {}  key {}  namespace {}  value {}",
                d.kg,
                doc["state"].as_str().unwrap_or_default(),
                shown(d.key),
                shown(d.namespace),
                shown(v)
            );
        }
    }
    if !out.json && matched > shown_n {
        say!("... {} more (--limit)", matched - shown_n);
    }
    if matched == 0 {
        bail!(Fail::not_found(format!(
            "{}: no entry of epoch {} matches",
            loc.shown(),
            commit.epoch
        )));
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_decoded_where_they_can_be() {
        assert_eq!(shown(b"user-1"), "user-1");
        assert_eq!(shown(b"\x03abc"), "\"abc\"");
        assert_eq!(shown(&[0x96, 0x01]), "varint 150");
        assert_eq!(shown(&[0, 255]), "0x00ff");
        assert!(key_matches(b"abc", b"\x03abc"));
        assert!(key_matches(b"abc", b"abc"));
        assert!(!key_matches(b"abc", b"\x03abd"));
    }
}
