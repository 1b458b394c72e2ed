//! `gress snapshot inspect|dump|convert`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gress_rocksdb::ReadOnlyDb;
use gress_state::snapshot::{SnapshotEntry, SnapshotReader, SnapshotWriter};
use gress_state::{SnapshotKind, StateBackend};
use serde_json::json;

use crate::checkpoint::{build_rocksdb, write_atomically};
use crate::exit;
use crate::out::{Encoding, Out, size, time};

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Header, entry count, key and value sizes, TTL statistics; reads the
    /// whole file, so a damaged one is reported (exit code 3).
    #[command(
        after_help = "Examples:\n  gress snapshot inspect state.snap\n  gress snapshot inspect state.snap --json"
    )]
    Inspect {
        /// The snapshot file.
        file: PathBuf,
    },
    /// Entries as JSON lines: key, value (escaped, base64 or hex),
    /// expiry, or a tombstone.
    #[command(
        after_help = "Examples:\n  gress snapshot dump state.snap --limit 10\n  gress snapshot dump state.snap --encoding base64 > entries.jsonl"
    )]
    Dump {
        file: PathBuf,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<u64>,
        /// How keys and values are written.
        #[arg(long, value_enum, default_value_t = Encoding::Escape)]
        encoding: Encoding,
    },
    /// Converts a snapshot file into a new RocksDB state directory, or a
    /// RocksDB state directory into a snapshot file (read-only on the
    /// directory; refused while a process holds it).
    #[command(
        after_help = "Examples:\n  gress snapshot convert state.snap ./rocksdb-dir\n  gress snapshot convert ./rocksdb-dir state.snap"
    )]
    Convert {
        /// A snapshot file or a RocksDB state directory.
        from: PathBuf,
        /// A RocksDB directory to create, or a snapshot file to write.
        to: PathBuf,
    },
}

pub(crate) fn run(cmd: &Cmd, out: &Out) -> Result<u8> {
    match cmd {
        Cmd::Inspect { file } => inspect(file, out),
        Cmd::Dump {
            file,
            limit,
            encoding,
        } => dump(file, *limit, *encoding),
        Cmd::Convert { from, to } => convert(from, to, out),
    }
}

fn open(file: &Path) -> Result<SnapshotReader<BufReader<File>>> {
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    SnapshotReader::new(BufReader::with_capacity(1 << 20, f))
        .with_context(|| format!("{} is not a readable snapshot", file.display()))
}

fn kind(k: SnapshotKind) -> &'static str {
    match k {
        SnapshotKind::Full => "full",
        SnapshotKind::Delta => "delta",
    }
}

#[derive(Default)]
struct Stats {
    puts: u64,
    tombstones: u64,
    expiring: u64,
    expired_now: u64,
    min_expiry: Option<u64>,
    max_expiry: Option<u64>,
    key_bytes: u64,
    value_bytes: u64,
    max_key: usize,
    max_value: usize,
}

fn inspect(file: &Path, out: &Out) -> Result<u8> {
    let mut r = open(file)?;
    let header = r.header();
    let total = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let bar = out.bar(total, "reading");
    let now = crate::out::now_ms();
    let mut s = Stats::default();
    let mut damage = None;
    loop {
        let entry = match r.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                damage = Some(e.to_string());
                break;
            }
        };
        s.key_bytes += entry.key().len() as u64;
        s.max_key = s.max_key.max(entry.key().len());
        match entry {
            SnapshotEntry::Put {
                value,
                expires_at_ms,
                ..
            } => {
                s.puts += 1;
                s.value_bytes += value.len() as u64;
                s.max_value = s.max_value.max(value.len());
                if let Some(t) = expires_at_ms {
                    s.expiring += 1;
                    s.expired_now += u64::from(t <= now);
                    s.min_expiry = Some(s.min_expiry.map_or(t, |m| m.min(t)));
                    s.max_expiry = Some(s.max_expiry.map_or(t, |m| m.max(t)));
                }
            }
            SnapshotEntry::Tombstone { .. } => s.tombstones += 1,
        }
        if r.entries_read().is_multiple_of(4096) {
            bar.set_position(r.bytes_read());
        }
    }
    bar.finish_and_clear();
    let doc = json!({
        "file": file.display().to_string(),
        "bytes": total,
        "kind": kind(header.kind),
        "created_at_ms": header.created_at_ms,
        "created_at": time(header.created_at_ms),
        "entries": s.puts + s.tombstones,
        "puts": s.puts,
        "tombstones": s.tombstones,
        "key_bytes": s.key_bytes,
        "value_bytes": s.value_bytes,
        "max_key_len": s.max_key,
        "max_value_len": s.max_value,
        "ttl": {
            "expiring": s.expiring,
            "without_ttl": s.puts - s.expiring,
            "expired_now": s.expired_now,
            "earliest_expiry_ms": s.min_expiry,
            "latest_expiry_ms": s.max_expiry,
        },
        "ok": damage.is_none(),
        "damage": damage,
    });
    out.emit(&doc, || {
        say!(
            "{}: {} snapshot, {}",
            file.display(),
            kind(header.kind),
            size(total)
        );
        say!("created      {}", time(header.created_at_ms));
        say!(
            "entries      {} ({} puts, {} tombstones)",
            s.puts + s.tombstones,
            s.puts,
            s.tombstones
        );
        say!(
            "keys         {} (longest {} B)",
            size(s.key_bytes),
            s.max_key
        );
        say!(
            "values       {} (longest {} B)",
            size(s.value_bytes),
            s.max_value
        );
        say!(
            "ttl          {} expiring ({} already expired), {} without",
            s.expiring,
            s.expired_now,
            s.puts - s.expiring
        );
        if let (Some(a), Some(b)) = (s.min_expiry, s.max_expiry) {
            say!("expiries     {} .. {}", time(a), time(b));
        }
        if let Some(d) = &damage {
            say!("DAMAGED after {} entries: {d}", s.puts + s.tombstones);
        }
    });
    Ok(if damage.is_some() {
        exit::DAMAGED
    } else {
        exit::OK
    })
}

fn dump(file: &Path, limit: Option<u64>, encoding: Encoding) -> Result<u8> {
    let mut r = open(file)?;
    let stdout = std::io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    let mut n = 0;
    while limit.is_none_or(|l| n < l) {
        let entry = match r.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                w.flush()?;
                eprintln!(
                    "error: {} is damaged after {n} entries: {e}",
                    file.display()
                );
                return Ok(exit::DAMAGED);
            }
        };
        let line = match entry {
            SnapshotEntry::Put {
                key,
                value,
                expires_at_ms,
            } => json!({
                "key": encoding.show(key),
                "value": encoding.show(value),
                "expires_at_ms": expires_at_ms,
            }),
            SnapshotEntry::Tombstone { key } => json!({
                "key": encoding.show(key),
                "tombstone": true,
            }),
        };
        if writeln!(w, "{line}").is_err() {
            // A closed pipe (`| head`): stop quietly.
            return Ok(exit::OK);
        }
        n += 1;
    }
    let _ = w.flush();
    Ok(exit::OK)
}

fn convert(from: &Path, to: &Path, out: &Out) -> Result<u8> {
    let meta = std::fs::metadata(from).with_context(|| format!("reading {}", from.display()))?;
    let bar = out.spinner(&format!("converting {}", from.display()));
    let (what, entries) = if meta.is_dir() {
        // RocksDB directory -> snapshot file, read-only on the directory.
        let db = ReadOnlyDb::open(from)
            .with_context(|| format!("opening {} read-only", from.display()))?;
        let summary = write_atomically(to, |out| {
            let mut w = SnapshotWriter::new(out, SnapshotKind::Full, crate::out::now_ms())?;
            let mut failed = None;
            let mut n = 0u64;
            db.scan(b"", |e| {
                if let Err(err) = w.put(&e.key, &e.value, e.expires_at_ms) {
                    failed = Some(err);
                    return false;
                }
                n += 1;
                if n.is_multiple_of(65_536) {
                    bar.set_message(format!("converting: {n} entries"));
                }
                true
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            Ok(w.finish()?)
        })?;
        ("snapshot file", summary.n_entries)
    } else {
        // Snapshot file -> a new RocksDB directory.
        let r = open(from)?;
        if r.header().kind == SnapshotKind::Delta {
            bail!(
                "{} is a delta snapshot: only a full snapshot is a whole state",
                from.display()
            );
        }
        drop(r);
        let summary = build_rocksdb(to, |rocks| {
            let f = File::open(from)?;
            let summary = rocks
                .restore_from(&mut BufReader::with_capacity(1 << 20, f))
                .with_context(|| format!("loading {}", from.display()))?;
            Ok(summary.n_entries_restored)
        })?;
        ("RocksDB directory", summary)
    };
    bar.finish_and_clear();
    let doc = json!({
        "from": from.display().to_string(),
        "to": to.display().to_string(),
        "written": what,
        "entries": entries,
    });
    out.emit(&doc, || {
        say!(
            "wrote {entries} entries from {} into the {what} {}",
            from.display(),
            to.display()
        );
    });
    Ok(exit::OK)
}
