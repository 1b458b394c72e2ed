//! Every kind of typed keyed state (value, list, map, reducing,
//! aggregating, and a value with a TTL under a manual clock) gives the
//! same results on RocksDB as on the memory backend, with a cache so small
//! that values are evicted and read back from the backend all the time,
//! and across a failure and recovery.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::{Checkpointable, Clock, ManualClock};
use gress_stream::{
    AggregateFunction, AggregatingStateDescriptor, BackendFactory, EpochPolicy, Error, FileSink,
    GeneratorSource, JobConfig, KeyedProcessFunction, ListStateDescriptor, MapStateDescriptor,
    ProcessingContext, ReducingStateDescriptor, Result, StateTtl, ValueStateDescriptor, run,
};
use serde::{Deserialize, Serialize};

const RECORDS: u64 = 6_000;
const KEYS: u64 = 300;

/// Count and sum, read as the mean.
struct Mean;

impl AggregateFunction for Mean {
    type In = u64;
    type Acc = (u64, u64);
    type Out = u64;
    fn create(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), input: u64) {
        acc.0 += 1;
        acc.1 += input;
    }
    fn result(&self, acc: &(u64, u64)) -> u64 {
        acc.1 / acc.0.max(1)
    }
}

/// What one record saw of its key's state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Seen {
    i: u64,
    count: u64,
    recent: Vec<u64>,
    map_len: usize,
    map_hit: Option<u64>,
    sum: Option<u64>,
    mean: Option<u64>,
    /// Whether the key's TTL'd value was still alive.
    alive: bool,
}

struct AllKinds {
    count: ValueStateDescriptor<u64>,
    recent: ListStateDescriptor<u64>,
    by_rest: MapStateDescriptor<u64, u64>,
    sum: ReducingStateDescriptor<u64>,
    mean: AggregatingStateDescriptor<Mean>,
    last_seen: ValueStateDescriptor<u64>,
    clock: Arc<ManualClock>,
    fail_at: Option<u64>,
}

impl KeyedProcessFunction<u64, u64> for AllKinds {
    type Out = Seen;
    type Side = ();

    fn on_record(&mut self, ctx: &mut ProcessingContext<'_, u64, Seen>, i: u64) -> Result<()> {
        if self.fail_at == Some(i) {
            return Err(Error::Worker("injected failure".into()));
        }
        // Processing time moves 1 ms per record: deterministic on one
        // worker, so a TTL of 400 ms expires keys not seen for a while.
        self.clock.set(1_000_000 + i);
        let mut count = 0;
        ctx.value(&self.count)?.update(|c| {
            count = c.unwrap_or(0) + 1;
            Some(count)
        })?;
        let recent = {
            let mut list = ctx.list(&self.recent)?;
            list.add(i)?;
            list.modify_with(|v| {
                if v.len() > 4 {
                    v.remove(0);
                }
                v.clone()
            })?
        };
        let (map_len, map_hit) = {
            let mut map = ctx.map(&self.by_rest)?;
            let hit = map.get(&(i % 7))?;
            map.put(i % 7, i)?;
            if i.is_multiple_of(11) {
                map.remove(&(i % 5))?;
            }
            (map.entries()?.len(), hit)
        };
        let sum = {
            let mut s = ctx.reducing(&self.sum)?;
            s.add(i)?;
            s.get()?
        };
        let mean = {
            let mut m = ctx.aggregating(&self.mean)?;
            m.add(i)?;
            m.get()?
        };
        let alive = {
            let mut v = ctx.value(&self.last_seen)?;
            let alive = v.get()?.is_some();
            v.set(i)?;
            alive
        };
        ctx.output(Seen {
            i,
            count,
            recent,
            map_len,
            map_hit,
            sum,
            mean,
            alive,
        });
        Ok(())
    }
}

/// Key of record `i`: some keys come back often, some rarely (so their
/// TTL'd value expires).
fn key_of(i: u64) -> u64 {
    if i.is_multiple_of(3) {
        (i / 3) % KEYS
    } else {
        i % 13
    }
}

fn run_job(dir: &Path, rocksdb: bool, fail_at: Option<u64>) -> Result<()> {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut config = JobConfig::new("state-kinds")
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_epochs(EpochPolicy::Records(500))
        .with_clock(Arc::clone(&clock) as Arc<dyn Clock>);
    // A few hundred bytes: nearly every access misses the cache.
    config.cache_bytes = Some(2_000);
    if rocksdb {
        let state = dir.join("state");
        let clock = Arc::clone(&clock);
        config = config.with_backend(BackendFactory::new(move |worker| {
            let mut c = RocksDbConfig::new(state.join(format!("worker-{worker}")))
                .with_clock(Arc::clone(&clock) as Arc<dyn Clock>);
            c.write_buffer_size = 1 << 20;
            c.block_cache_size = 1 << 20;
            Ok(Arc::new(RocksDbStateBackend::open(c)?) as Arc<dyn Checkpointable>)
        }));
    }
    let out = dir.join("out");
    run(config, move |job| {
        job.source("numbers", GeneratorSource::new(1, Some(RECORDS), |_, i| i))?
            .key_by(|i| key_of(*i))
            .process(
                "kinds",
                AllKinds {
                    count: ValueStateDescriptor::new("count"),
                    recent: ListStateDescriptor::new("recent"),
                    by_rest: MapStateDescriptor::new("by-rest"),
                    sum: ReducingStateDescriptor::new("sum", |a: &u64, b: u64| a + b),
                    mean: AggregatingStateDescriptor::new("mean", Mean),
                    last_seen: ValueStateDescriptor::new("last-seen")
                        .with_ttl(StateTtl::new(Duration::from_millis(400))),
                    clock: Arc::clone(&clock),
                    fail_at,
                },
            )
            .sink("out", FileSink::new(out.clone()))
    })?;
    Ok(())
}

fn committed(dir: &Path) -> Vec<Seen> {
    let mut all: Vec<_> = FileSink::read_committed(&dir.join("out")).expect("committed output");
    all.sort_unstable();
    all
}

#[test]
fn every_state_kind_is_the_same_on_rocksdb_as_in_memory() -> Result<()> {
    let tmp = |_| tempfile::tempdir().map_err(|e| Error::Worker(e.to_string()));
    let (memory, rocks, recovered) = (tmp(0)?, tmp(1)?, tmp(2)?);
    run_job(memory.path(), false, None)?;
    run_job(rocks.path(), true, None)?;
    assert!(run_job(recovered.path(), true, Some(3_333)).is_err());
    run_job(recovered.path(), true, None)?;

    let expected = committed(memory.path());
    assert_eq!(expected.len(), RECORDS as usize);
    assert!(
        expected.iter().any(|s| s.alive),
        "some TTL'd values are read alive"
    );
    assert!(
        expected.iter().any(|s| !s.alive && s.count > 1),
        "some TTL'd values expire between two records of their key"
    );
    for (name, dir) in [("RocksDB", &rocks), ("RocksDB after recovery", &recovered)] {
        let got = committed(dir.path());
        let first = expected.iter().zip(&got).find(|(a, b)| a != b);
        assert_eq!(got.len(), expected.len(), "{name}: records");
        assert!(
            first.is_none(),
            "{name}: first difference (memory, rocksdb) {first:?}"
        );
    }
    Ok(())
}
