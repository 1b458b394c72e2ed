//! The RocksDB benchmark: the backend with TTL off and on, beside a raw
//! `rocksdb::DB` opened with the same options, in the same run.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use gress_rocksdb::raw::{self, rocksdb};
use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::{StateBackend, WriteBatch};

use crate::workload::{Keys, VALUE_LEN};
use crate::{Row, Runner, compare_with};

#[derive(clap::Args, Debug, Clone)]
pub struct RocksArgs {
    /// State sizes (number of keys) to measure.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10_000u64, 100_000, 1_000_000])]
    sizes: Vec<u64>,
    /// WAL settings to measure.
    #[arg(long, value_delimiter = ',', default_values_t = vec![true, false])]
    wal: Vec<bool>,
    /// Operations per subject in each measured case.
    #[arg(long, default_value_t = 200_000)]
    ops: u64,
    /// Measurement rounds per case; subjects alternate round by round.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Also measure a state four times larger than the block cache, of
    /// this many keys (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    over_cache_keys: u64,
    /// Where the databases go (a temporary directory inside it).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Only these cases (e.g. `get,put`); all when empty.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// A value that compresses as poorly as real payloads, fixed per key.
fn value_of(i: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    v
}

struct Subjects {
    raw: rocksdb::DB,
    raw_write: rocksdb::WriteOptions,
    raw_read: rocksdb::ReadOptions,
    plain: RocksDbStateBackend,
    ttl: RocksDbStateBackend,
}

fn config(path: &Path, wal: bool, cache: usize) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path)
        .with_wal(wal)
        .with_block_cache_size(cache);
    c.enable_statistics = true;
    c
}

fn open(dir: &Path, wal: bool, cache: usize) -> Result<Subjects> {
    let base = config(&dir.join("raw"), wal, cache);
    let raw = rocksdb::DB::open(&raw::options(&base), &base.path)?;
    let raw_write = raw::write_options(&base);
    let plain = RocksDbStateBackend::open(config(&dir.join("plain"), wal, cache))?;
    let ttl = RocksDbStateBackend::open(
        config(&dir.join("ttl"), wal, cache).with_ttl(Duration::from_secs(24 * 3600)),
    )?;
    Ok(Subjects {
        raw,
        raw_write,
        raw_read: rocksdb::ReadOptions::default(),
        plain,
        ttl,
    })
}

fn load(s: &Subjects, n: u64) -> Result<()> {
    const CHUNK: u64 = 10_000;
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        let mut raw = rocksdb::WriteBatch::default();
        let mut ours = WriteBatch::new();
        for i in start..end {
            let (k, v) = (Keys::nth(i), value_of(i));
            raw.put(k, v);
            ours.put(k, v);
        }
        s.raw.write_opt(raw, &s.raw_write)?;
        s.plain.write_batch(&ours)?;
        s.ttl.write_batch(&ours)?;
        start = end;
    }
    Ok(())
}

fn flush_all(s: &Subjects) -> Result<()> {
    s.raw.flush()?;
    s.raw.compact_range(None::<&[u8]>, None::<&[u8]>);
    s.plain.flush()?;
    s.plain.compact()?;
    s.ttl.flush()?;
    s.ttl.compact()?;
    Ok(())
}

/// Measures one operation on the three subjects and fills the ratios.
fn case(
    rows: &mut Vec<Row>,
    args: &RocksArgs,
    op: &str,
    detail: &str,
    n: u64,
    [raw_op, plain_op, ttl_op]: [&(dyn Fn(u64) + Sync); 3],
) {
    if !args.only.is_empty() && !args.only.iter().any(|o| o == op) {
        return;
    }
    crate::status(&format!("rocksdb: {op} {detail} {n} keys"));
    // A batch is 100 writes: measure a hundredth as many batches.
    let ops = if op.starts_with("batch") {
        (args.ops / 100).max(1_000)
    } else {
        args.ops
    };
    let mut r = compare_with(
        &[
            ("raw-rocksdb", Runner::Shared(raw_op)),
            ("gress", Runner::Shared(plain_op)),
            ("gress-ttl", Runner::Shared(ttl_op)),
        ],
        op,
        n,
        1,
        ops,
        args.rounds,
    );
    r[2].ratio_to_no_ttl = Some(r[2].ns_per_op / r[1].ns_per_op);
    for row in &mut r {
        row.case = detail.to_string();
    }
    rows.extend(r);
}

fn run_size(
    rows: &mut Vec<Row>,
    args: &RocksArgs,
    n: u64,
    wal: bool,
    cache: usize,
    label: &str,
) -> Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let tmp = tempfile::tempdir_in(&args.dir)?;
    let s = open(tmp.path(), wal, cache)?;
    let keys = Keys::new(n);
    crate::status(&format!("rocksdb: loading {n} keys ({label})"));
    load(&s, n)?;
    let detail = |what: &str| format!("{label} {what}");

    // Reads before any flush: small states are still in the memtable.
    if !label.contains("cache/4") {
        case(
            rows,
            args,
            "get",
            &detail("unflushed"),
            n,
            [
                &|x| {
                    black_box(s.raw.get_opt(keys.hit(x), &s.raw_read).expect("get"));
                },
                &|x| {
                    black_box(s.plain.get(&keys.hit(x)).expect("get"));
                },
                &|x| {
                    black_box(s.ttl.get(&keys.hit(x)).expect("get"));
                },
            ],
        );
    }
    flush_all(&s)?;
    case(
        rows,
        args,
        "get",
        &detail("flushed"),
        n,
        [
            &|x| {
                black_box(s.raw.get_opt(keys.hit(x), &s.raw_read).expect("get"));
            },
            &|x| {
                black_box(s.plain.get(&keys.hit(x)).expect("get"));
            },
            &|x| {
                black_box(s.ttl.get(&keys.hit(x)).expect("get"));
            },
        ],
    );
    case(
        rows,
        args,
        "get_miss",
        &detail("flushed"),
        n,
        [
            &|x| {
                black_box(s.raw.get_opt(keys.miss(x), &s.raw_read).expect("get"));
            },
            &|x| {
                black_box(s.plain.get(&keys.miss(x)).expect("get"));
            },
            &|x| {
                black_box(s.ttl.get(&keys.miss(x)).expect("get"));
            },
        ],
    );
    let value = |x: u64| value_of(x.rotate_left(17));
    case(
        rows,
        args,
        "put",
        &detail(""),
        n,
        [
            &|x| {
                s.raw
                    .put_opt(keys.hit(x), value(x), &s.raw_write)
                    .expect("put")
            },
            &|x| s.plain.put(&keys.hit(x), &value(x)).expect("put"),
            &|x| s.ttl.put(&keys.hit(x), &value(x)).expect("put"),
        ],
    );
    // Batches of 100 puts; ns/op is per batch.
    const BATCH: u64 = 100;
    case(
        rows,
        args,
        "batch_put_100",
        &detail(""),
        n,
        [
            &|x| {
                let mut b = rocksdb::WriteBatch::default();
                for j in 0..BATCH {
                    b.put(
                        keys.hit(x.wrapping_add(j.wrapping_mul(0x9E37_79B9))),
                        value(x),
                    );
                }
                s.raw.write_opt(b, &s.raw_write).expect("batch");
            },
            &|x| {
                let mut b = WriteBatch::new();
                for j in 0..BATCH {
                    b.put(
                        keys.hit(x.wrapping_add(j.wrapping_mul(0x9E37_79B9))),
                        value(x),
                    );
                }
                s.plain.write_batch(&b).expect("batch");
            },
            &|x| {
                let mut b = WriteBatch::new();
                for j in 0..BATCH {
                    b.put(
                        keys.hit(x.wrapping_add(j.wrapping_mul(0x9E37_79B9))),
                        value(x),
                    );
                }
                s.ttl.write_batch(&b).expect("batch");
            },
        ],
    );
    // Read-modify-write of one key: a keyed aggregation's step.
    case(
        rows,
        args,
        "read_modify_write",
        &detail(""),
        n,
        [
            &|x| {
                let k = keys.hit(x);
                let mut v = s
                    .raw
                    .get_opt(k, &s.raw_read)
                    .expect("get")
                    .unwrap_or_default();
                if let Some(b) = v.first_mut() {
                    *b = b.wrapping_add(1);
                }
                s.raw.put_opt(k, v, &s.raw_write).expect("put");
            },
            &|x| {
                let k = keys.hit(x);
                let mut v = s.plain.get(&k).expect("get").unwrap_or_default();
                if let Some(b) = v.first_mut() {
                    *b = b.wrapping_add(1);
                }
                s.plain.put(&k, &v).expect("put");
            },
            &|x| {
                let k = keys.hit(x);
                let mut v = s.ttl.get(&k).expect("get").unwrap_or_default();
                if let Some(b) = v.first_mut() {
                    *b = b.wrapping_add(1);
                }
                s.ttl.put(&k, &v).expect("put");
            },
        ],
    );
    Ok(())
}

pub(crate) fn bench_rocksdb(args: &RocksArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let default_cache = RocksDbConfig::new("unused").block_cache_size;
    for &wal in &args.wal {
        let wal_label = if wal { "wal" } else { "no-wal" };
        for &n in &args.sizes {
            run_size(&mut rows, args, n, wal, default_cache, wal_label)?;
        }
        if args.over_cache_keys > 0 {
            // Keys and values take about 120 bytes each before compression.
            let state_bytes = args.over_cache_keys as usize * 120;
            let label = format!("{wal_label} cache/4");
            run_size(
                &mut rows,
                args,
                args.over_cache_keys,
                wal,
                state_bytes / 4,
                &label,
            )?;
        }
    }
    Ok(rows)
}
