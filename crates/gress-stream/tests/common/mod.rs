//! Sources, backends and small helpers shared by the tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use gress_state::checkpoint::Checkpointable;
use gress_state::{KeyRange, MemoryConfig, MemoryStateBackend, StateBackend};
use gress_stream::{BackendFactory, Error, PartitionReader, Poll, Source};
use parking_lot::Mutex;

pub type R = Result<(), Box<dyn std::error::Error>>;

/// A record of the tests: (key, event time ms, value).
pub type Ev = (u64, u64, i64);

/// Fixed records, one list per partition.
#[derive(Debug, Clone)]
pub struct VecSource<T> {
    partitions: Arc<Vec<Vec<T>>>,
    fail: Option<(u64, PathBuf)>,
}

impl<T> VecSource<T> {
    pub fn new(partitions: Vec<Vec<T>>) -> Self {
        VecSource {
            partitions: Arc::new(partitions),
            fail: None,
        }
    }

    /// Every partition stops at `offset` until the job under `checkpoints`
    /// has committed an epoch, then fails.
    pub fn failing_at(mut self, offset: u64, checkpoints: PathBuf) -> Self {
        self.fail = Some((offset, checkpoints));
        self
    }
}

struct VecReader<T> {
    records: Arc<Vec<Vec<T>>>,
    partition: usize,
    next: u64,
    fail: Option<(u64, PathBuf)>,
}

impl<T: gress_stream::Data> PartitionReader<T> for VecReader<T> {
    fn poll(&mut self, max: usize, out: &mut Vec<T>) -> gress_stream::Result<Poll> {
        let records = &self.records[self.partition];
        let mut end = records.len() as u64;
        if let Some((at, dir)) = &self.fail {
            if self.next >= *at {
                let storage = gress_checkpoint::LocalStorage::new(dir)?;
                if gress_stream::latest_commit(&storage)?.is_some() {
                    return Err(Error::Source {
                        source_name: "records".into(),
                        reason: format!("failing on purpose at offset {at}"),
                    });
                }
                return Ok(Poll::Idle);
            }
            end = end.min(*at);
        }
        let until = end.min(self.next + max as u64);
        out.extend(records[self.next as usize..until as usize].iter().cloned());
        self.next = until;
        if self.fail.is_none() && self.next >= records.len() as u64 {
            return Ok(Poll::End);
        }
        Ok(Poll::Ready)
    }

    fn offset(&self) -> u64 {
        self.next
    }
}

impl<T: gress_stream::Data> Source for VecSource<T> {
    type Record = T;

    fn partitions(&self) -> usize {
        self.partitions.len()
    }

    fn open(
        &mut self,
        partition: usize,
        offset: u64,
    ) -> gress_stream::Result<Box<dyn PartitionReader<T>>> {
        Ok(Box::new(VecReader {
            records: Arc::clone(&self.partitions),
            partition,
            next: offset,
            fail: self.fail.clone(),
        }))
    }
}

/// The memory backends a job's workers got, by worker index.
pub type Backends = Arc<Mutex<BTreeMap<usize, Arc<MemoryStateBackend>>>>;

/// A memory backend per worker, kept for inspection.
pub fn kept_memory_backends() -> (BackendFactory, Backends) {
    let kept: Backends = Arc::default();
    let slot = Arc::clone(&kept);
    let factory = BackendFactory::new(move |worker| {
        let backend = Arc::new(MemoryStateBackend::new(MemoryConfig::default())?);
        slot.lock().insert(worker, Arc::clone(&backend));
        Ok(backend as Arc<dyn Checkpointable>)
    });
    (factory, kept)
}

/// Keys and bytes (keys and values) stored in a backend.
pub fn stored(backend: &MemoryStateBackend) -> gress_state::Result<(usize, usize)> {
    let mut keys = 0;
    let mut bytes = 0;
    for entry in backend.scan(KeyRange::all())? {
        let (k, v) = entry?;
        keys += 1;
        bytes += k.len() + v.len();
    }
    Ok((keys, bytes))
}

pub fn multiset<T: Ord + Clone>(items: &[T]) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for item in items {
        *m.entry(item.clone()).or_default() += 1;
    }
    m
}

/// A small deterministic generator for fixed inputs.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `per_partition` records per partition whose times rise by up to `step`
/// and then fall back by up to `disorder` ms: with a watermark bound of at
/// least `disorder`, none is late.
pub fn disordered(
    seed: u64,
    partitions: usize,
    per_partition: usize,
    keys: u64,
    step: u64,
    disorder: u64,
) -> Vec<Vec<Ev>> {
    let mut rng = XorShift(seed | 1);
    (0..partitions)
        .map(|_| {
            let mut base = 0u64;
            (0..per_partition)
                .map(|_| {
                    base += rng.below(step + 1);
                    let t = base.saturating_sub(rng.below(disorder + 1));
                    (rng.below(keys), t, rng.below(100) as i64 - 20)
                })
                .collect()
        })
        .collect()
}

/// Runs `job` on a thread; a hang fails the test instead of stalling it.
pub fn bounded(
    job: impl FnOnce() -> gress_stream::Result<gress_stream::JobReport> + Send + 'static,
) -> gress_stream::Result<gress_stream::JobReport> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(job());
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("the job hung"))
}

/// A `FileSink`'s committed records under `dir`, with how often each came.
pub fn committed_records<T: serde::de::DeserializeOwned + Ord>(
    dir: &std::path::Path,
) -> Result<BTreeMap<T, usize>, Box<dyn std::error::Error>> {
    let mut m = BTreeMap::new();
    for record in gress_stream::FileSink::read_committed::<T>(dir)? {
        *m.entry(record).or_default() += 1;
    }
    Ok(m)
}

/// Every file under `dir` (none if it does not exist), with its bytes.
pub fn tree(dir: &std::path::Path) -> std::io::Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}
