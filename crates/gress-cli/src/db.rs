//! `gress db stats|get|scan|compact` on a RocksDB state directory.
//!
//! `stats`, `get` and `scan` open the database read-only; every command
//! takes the directory's lock first, so one a running process holds is
//! refused with a clear message and is never touched.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use gress_rocksdb::{Error as StateError, ReadOnlyDb, RocksDbConfig, RocksDbStateBackend};
use serde_json::json;

use crate::exit;
use crate::out::{Encoding, Out, now_ms, size, time};

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Keys, sizes, levels and RocksDB properties (read-only).
    #[command(after_help = "Examples:\n  gress db stats ./state\n  gress db stats ./state --json")]
    Stats {
        /// The RocksDB state directory.
        dir: PathBuf,
        /// Also print RocksDB's own statistics text (`rocksdb.stats`).
        #[arg(long)]
        verbose: bool,
        /// Count entries exactly, live and expired (reads every key);
        /// `estimate-num-keys` is RocksDB's estimate.
        #[arg(long)]
        count: bool,
    },
    /// One key's value and expiry (read-only). Exit code 4 if absent.
    #[command(
        after_help = "Examples:\n  gress db get ./state user:42\n  gress db get ./state 0001ab --key-encoding hex"
    )]
    Get {
        dir: PathBuf,
        /// The key.
        key: String,
        /// How the key is written on the command line.
        #[arg(long, value_enum, default_value_t = Encoding::Escape)]
        key_encoding: Encoding,
        /// How keys and values are printed.
        #[arg(long, value_enum, default_value_t = Encoding::Escape)]
        encoding: Encoding,
    },
    /// Entries in key order, optionally under a prefix (read-only).
    #[command(
        after_help = "Examples:\n  gress db scan ./state --prefix user: --limit 20\n  gress db scan ./state --json --encoding base64"
    )]
    Scan {
        dir: PathBuf,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// How the prefix is written on the command line.
        #[arg(long, value_enum, default_value_t = Encoding::Escape)]
        key_encoding: Encoding,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// How keys and values are printed.
        #[arg(long, value_enum, default_value_t = Encoding::Escape)]
        encoding: Encoding,
        /// Leave out entries whose TTL has passed (still stored until a
        /// compaction drops them).
        #[arg(long)]
        live: bool,
    },
    /// Compacts the whole key space, dropping expired entries. Writes.
    #[command(after_help = "Examples:\n  gress db compact ./state")]
    Compact { dir: PathBuf },
}

pub(crate) fn run(cmd: &Cmd, out: &Out) -> Result<u8> {
    match cmd {
        Cmd::Stats {
            dir,
            verbose,
            count,
        } => stats(dir, *verbose, *count, out),
        Cmd::Get {
            dir,
            key,
            key_encoding,
            encoding,
        } => get(dir, &key_encoding.parse(key)?, *encoding, out),
        Cmd::Scan {
            dir,
            prefix,
            key_encoding,
            limit,
            encoding,
            live,
        } => scan(
            dir,
            &key_encoding.parse(prefix)?,
            *limit,
            *encoding,
            *live,
            out,
        ),
        Cmd::Compact { dir } => compact(dir, out),
    }
}

/// Explains a lock held by another process.
fn opening(dir: &Path, e: StateError) -> anyhow::Error {
    match e {
        StateError::Locked { .. } => anyhow::anyhow!(
            "{} is in use by a running process (its LOCK is held); stop that process first, \
             or read a checkpoint of it instead",
            dir.display()
        ),
        other => anyhow::Error::new(other).context(format!("opening {}", dir.display())),
    }
}

fn open(dir: &Path) -> Result<ReadOnlyDb> {
    ReadOnlyDb::open(dir).map_err(|e| opening(dir, e))
}

const PROPERTIES: [&str; 10] = [
    "rocksdb.estimate-num-keys",
    "rocksdb.total-sst-files-size",
    "rocksdb.live-sst-files-size",
    "rocksdb.estimate-live-data-size",
    "rocksdb.cur-size-all-mem-tables",
    "rocksdb.num-live-versions",
    "rocksdb.estimate-pending-compaction-bytes",
    "rocksdb.num-entries-active-mem-table",
    "rocksdb.estimate-table-readers-mem",
    "rocksdb.num-snapshots",
];

fn stats(dir: &Path, verbose: bool, count: bool, out: &Out) -> Result<u8> {
    let db = open(dir)?;
    let counted = if count {
        let now = now_ms();
        let bar = out.spinner("counting entries");
        let (mut all, mut expired) = (0u64, 0u64);
        db.scan(b"", |e| {
            all += 1;
            expired += u64::from(e.expires_at_ms.is_some_and(|t| t <= now));
            if all.is_multiple_of(65_536) {
                bar.set_message(format!("counting entries: {all}"));
            }
            true
        })?;
        bar.finish_and_clear();
        Some((all, expired))
    } else {
        None
    };
    let mut props = serde_json::Map::new();
    for p in PROPERTIES {
        if let Some(v) = db.property_int(p)? {
            props.insert(p.to_string(), json!(v));
        }
    }
    let levels = db.levels()?;
    let text = if verbose {
        db.property("rocksdb.stats")?
    } else {
        None
    };
    let doc = json!({
        "dir": dir.display().to_string(),
        "live": db.live(),
        "properties": props,
        "levels": levels.iter().map(|l| json!({
            "level": l.level, "files": l.files, "bytes": l.bytes,
        })).collect::<Vec<_>>(),
        "rocksdb_stats": text,
        "entries": counted.map(|(all, _)| all),
        "expired_entries": counted.map(|(_, expired)| expired),
    });
    out.emit(&doc, || {
        say!("{} (live database {})", dir.display(), db.live());
        for (k, v) in &props {
            let n = v.as_u64().unwrap_or(0);
            let shown = if k.contains("size") || k.contains("bytes") || k.ends_with("-mem") {
                format!("{n} ({})", size(n))
            } else {
                n.to_string()
            };
            say!("  {:<44} {shown}", k.trim_start_matches("rocksdb."));
        }
        if let Some((all, expired)) = counted {
            say!(
                "  {:<44} {all} ({expired} expired, kept until compaction)",
                "entries"
            );
        }
        say!("  {:<6} {:>6} {:>12}", "level", "files", "size");
        for l in &levels {
            say!("  {:<6} {:>6} {:>12}", l.level, l.files, size(l.bytes));
        }
        if let Some(t) = &text {
            say!("{t}");
        }
    });
    Ok(exit::OK)
}

fn get(dir: &Path, key: &[u8], encoding: Encoding, out: &Out) -> Result<u8> {
    let db = open(dir)?;
    let now = now_ms();
    match db.get(key)? {
        Some(e) => {
            let doc = json!({
                "key": encoding.show(&e.key),
                "value": encoding.show(&e.value),
                "expires_at_ms": e.expires_at_ms,
                "expired": e.expires_at_ms.is_some_and(|t| t <= now),
            });
            out.emit(&doc, || {
                say!("{}", encoding.show(&e.value));
                if let Some(t) = e.expires_at_ms {
                    let state = if t <= now { "expired" } else { "expires" };
                    eprintln!("({state} at {})", time(t));
                }
            });
            Ok(exit::OK)
        }
        None => {
            let doc = json!({ "key": encoding.show(key), "found": false });
            out.emit(&doc, || {
                eprintln!("no key {} in {}", encoding.show(key), dir.display());
            });
            Ok(exit::NOT_FOUND)
        }
    }
}

fn scan(
    dir: &Path,
    prefix: &[u8],
    limit: u64,
    encoding: Encoding,
    live: bool,
    out: &Out,
) -> Result<u8> {
    let db = open(dir)?;
    let now = now_ms();
    let stdout = std::io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    let mut n = 0;
    let mut closed = false;
    db.scan(prefix, |e| {
        if n >= limit {
            return false;
        }
        if live && e.expires_at_ms.is_some_and(|t| t <= now) {
            return true;
        }
        let written = if out.json {
            let line = json!({
                "key": encoding.show(&e.key),
                "value": encoding.show(&e.value),
                "expires_at_ms": e.expires_at_ms,
            });
            writeln!(w, "{line}")
        } else {
            let ttl = e
                .expires_at_ms
                .map_or(String::new(), |t| format!("  (expires {})", time(t)));
            writeln!(
                w,
                "{} = {}{ttl}",
                encoding.show(&e.key),
                encoding.show(&e.value)
            )
        };
        if written.is_err() {
            closed = true;
            return false;
        }
        n += 1;
        true
    })?;
    if !closed {
        let _ = w.flush();
    }
    Ok(exit::OK)
}

fn compact(dir: &Path, out: &Out) -> Result<u8> {
    let mut config = RocksDbConfig::new(dir);
    config.create_if_missing = false;
    let backend = RocksDbStateBackend::open(config).map_err(|e| opening(dir, e))?;
    let before = backend.sst_bytes()?;
    let keys_before = backend.estimate_num_keys()?;
    let bar = out.spinner(&format!("compacting {}", dir.display()));
    backend.compact().context("compacting")?;
    bar.finish_and_clear();
    let after = backend.sst_bytes()?;
    let keys_after = backend.estimate_num_keys()?;
    gress_state::StateBackend::close(&backend)?;
    let doc = json!({
        "dir": dir.display().to_string(),
        "sst_bytes_before": before,
        "sst_bytes_after": after,
        "estimated_keys_before": keys_before,
        "estimated_keys_after": keys_after,
    });
    out.emit(&doc, || {
        say!(
            "compacted {}: {} -> {}, about {keys_before} -> {keys_after} keys",
            dir.display(),
            size(before),
            size(after)
        );
    });
    Ok(exit::OK)
}
