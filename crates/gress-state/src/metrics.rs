//! Operation counters and latency histograms, cheap enough to leave on.
//!
//! Every thread records into its own slot, so the hot path writes no cache
//! line another thread writes. Latency is measured on a sample of
//! operations (every `sample_every`-th per thread) and recorded in per-thread
//! HDR histograms, which [`MetricsRecorder::snapshot`] merges.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use thread_local::ThreadLocal;

/// A point-in-time copy of a backend's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// Point reads (`get`, and each key of a `multi_get`).
    pub gets: u64,
    /// Reads that found a live value.
    pub hits: u64,
    /// Reads that found nothing, or only an expired value.
    pub misses: u64,
    /// Writes of a value (`put`, `put_with_ttl`, and batch puts).
    pub puts: u64,
    /// Deletes (single and batch), including deletes of missing keys.
    pub deletes: u64,
    /// Entries removed because their TTL had passed.
    pub expired: u64,
    /// Atomic batches committed.
    pub batches: u64,
    /// Range or prefix scans started.
    pub scans: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Restores completed.
    pub restores: u64,
    /// Keys currently stored. May include expired entries that have not
    /// been removed yet.
    pub n_keys: u64,
    /// True when `n_keys` is an estimate (RocksDB's `estimate-num-keys`,
    /// which may count a deleted key until compaction) rather than a count.
    pub n_keys_is_estimate: bool,
    /// Latency percentiles per operation kind.
    pub latency: BTreeMap<Op, LatencySummary>,
    /// Engine-specific figures (e.g. RocksDB statistics), by name.
    pub engine: BTreeMap<String, u64>,
}

impl Metrics {
    /// The latency summary of one kind of operation (zero if never sampled).
    pub fn latency_of(&self, op: Op) -> LatencySummary {
        self.latency.get(&op).copied().unwrap_or_default()
    }
}

/// Latency percentiles of one operation kind, from the sampled calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Calls that were timed.
    pub samples: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest timed call.
    pub max: Duration,
}

/// The operation kinds whose latency is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Op {
    /// `get`
    Get,
    /// `put` and `put_with_ttl`
    Put,
    /// `delete`
    Delete,
    /// `multi_get`
    MultiGet,
    /// `write_batch`
    Batch,
    /// scans, time to the first item
    Scan,
}

const N_OPS: usize = 6;

impl Op {
    /// Every kind, in order.
    pub const ALL: [Op; N_OPS] = [
        Op::Get,
        Op::Put,
        Op::Delete,
        Op::MultiGet,
        Op::Batch,
        Op::Scan,
    ];

    fn idx(self) -> usize {
        self as usize
    }

    /// Lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::MultiGet => "multi_get",
            Op::Batch => "batch",
            Op::Scan => "scan",
        }
    }
}

/// The counters a recorder keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Counter {
    /// A read found a live value.
    Hit,
    /// A read found nothing live.
    Miss,
    /// A value was written.
    Put,
    /// A key was deleted.
    Delete,
    /// An entry was removed for being expired.
    Expired,
    /// A batch was committed.
    Batch,
    /// A scan was started.
    Scan,
    /// A snapshot was written.
    Snapshot,
    /// A restore completed.
    Restore,
}

const N_COUNTERS: usize = 9;

// Histogram range: 1 ns to 60 s at 2 significant digits (1% resolution).
const HIST_MAX_NS: u64 = 60_000_000_000;
const HIST_SIGFIG: u8 = 2;

/// One thread's share of a recorder. Only the owning thread writes the
/// counters, so they are plain load-and-store, not read-modify-write.
#[derive(Debug, Default)]
struct ThreadSlot {
    counters: [AtomicU64; N_COUNTERS],
    /// Calls since the last timed one, per operation kind, so that
    /// interleaved kinds (get, put, get, put) are each sampled.
    since_sample: [AtomicU32; N_OPS],
    histograms: Mutex<[Option<Histogram<u64>>; N_OPS]>,
}

/// Records counters and sampled latencies for one backend.
///
/// Each thread writes its own slot (no shared cache line on the hot path);
/// [`MetricsRecorder::snapshot`] sums the slots of every thread that ever
/// recorded.
#[derive(Debug)]
pub struct MetricsRecorder {
    slots: ThreadLocal<ThreadSlot>,
    sample_every: u32,
}

/// The calling thread's view of a recorder, for recording one operation.
#[derive(Debug, Clone, Copy)]
pub struct LocalRecorder<'a> {
    slot: &'a ThreadSlot,
    sample_every: u32,
}

/// A started latency measurement; `None` inside when this call is not
/// sampled.
#[derive(Debug)]
#[must_use = "pass the timer to LocalRecorder::finish"]
pub struct OpTimer {
    op: Op,
    start: Option<Instant>,
}

impl MetricsRecorder {
    /// A recorder that times one call in `sample_every` per thread (1 times
    /// every call, 0 disables latency recording).
    pub fn new(sample_every: u32) -> Self {
        MetricsRecorder {
            slots: ThreadLocal::new(),
            sample_every,
        }
    }

    /// The calling thread's slot.
    #[inline]
    pub fn local(&self) -> LocalRecorder<'_> {
        LocalRecorder {
            slot: self.slots.get_or_default(),
            sample_every: self.sample_every,
        }
    }

    /// Adds `n` to a counter.
    #[inline]
    pub fn add(&self, counter: Counter, n: u64) {
        self.local().add(counter, n);
    }

    /// Runs one operation of kind `op`: times it if it is sampled and, if
    /// it succeeds, adds one to `counter`.
    #[inline]
    pub fn measure<T>(
        &self,
        op: Op,
        counter: Counter,
        f: impl FnOnce() -> crate::Result<T>,
    ) -> crate::Result<T> {
        let local = self.local();
        let timer = local.start(op);
        let value = f()?;
        local.add(counter, 1);
        local.finish(timer);
        Ok(value)
    }

    /// Records one latency observation.
    pub fn record(&self, op: Op, latency: Duration) {
        self.local().record(op, latency);
    }

    /// Sums every thread's slot into a [`Metrics`]; `n_keys` and `engine`
    /// are left for the backend to fill.
    pub fn snapshot(&self) -> Metrics {
        let mut counts = [0u64; N_COUNTERS];
        let mut merged: [Option<Histogram<u64>>; N_OPS] = Default::default();
        for slot in self.slots.iter() {
            for (sum, c) in counts.iter_mut().zip(slot.counters.iter()) {
                *sum += c.load(Ordering::Relaxed);
            }
            let hists = slot.histograms.lock();
            for (m, h) in merged.iter_mut().zip(hists.iter()) {
                if let Some(h) = h {
                    // Same bounds on both sides: add cannot fail.
                    let _ = m.get_or_insert_with(new_histogram).add(h);
                }
            }
        }
        let c = |k: Counter| counts[k as usize];
        let mut latency = BTreeMap::new();
        for op in Op::ALL {
            if let Some(h) = &merged[op.idx()] {
                latency.insert(op, summarize(h));
            }
        }
        Metrics {
            gets: c(Counter::Hit) + c(Counter::Miss),
            hits: c(Counter::Hit),
            misses: c(Counter::Miss),
            puts: c(Counter::Put),
            deletes: c(Counter::Delete),
            expired: c(Counter::Expired),
            batches: c(Counter::Batch),
            scans: c(Counter::Scan),
            snapshots: c(Counter::Snapshot),
            restores: c(Counter::Restore),
            n_keys: 0,
            n_keys_is_estimate: false,
            latency,
            engine: BTreeMap::new(),
        }
    }
}

impl LocalRecorder<'_> {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(self, counter: Counter, n: u64) {
        let c = &self.slot.counters[counter as usize];
        // Single writer: this thread.
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Counts `total` point reads of which `hits` found a live value.
    #[inline]
    pub fn add_reads(self, hits: u64, total: u64) {
        if hits > 0 {
            self.add(Counter::Hit, hits);
        }
        if total > hits {
            self.add(Counter::Miss, total - hits);
        }
    }

    /// Starts timing a call if it is sampled.
    #[inline]
    pub fn start(self, op: Op) -> OpTimer {
        let start = match self.sample_every {
            0 => None,
            1 => Some(Instant::now()),
            every => {
                let since = &self.slot.since_sample[op.idx()];
                let n = since.load(Ordering::Relaxed) + 1;
                if n >= every {
                    since.store(0, Ordering::Relaxed);
                    Some(Instant::now())
                } else {
                    since.store(n, Ordering::Relaxed);
                    None
                }
            }
        };
        OpTimer { op, start }
    }

    /// Records the latency of a timed call.
    #[inline]
    pub fn finish(self, timer: OpTimer) {
        if let Some(start) = timer.start {
            self.record(timer.op, start.elapsed());
        }
    }

    /// Records one latency observation.
    pub fn record(self, op: Op, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        let mut hists = self.slot.histograms.lock();
        hists[op.idx()]
            .get_or_insert_with(new_histogram)
            .saturating_record(ns);
    }
}

impl Default for MetricsRecorder {
    fn default() -> Self {
        Self::new(DEFAULT_SAMPLE_EVERY)
    }
}

/// Default latency sampling: one call in 64 of each kind, per thread, is
/// timed (a timed call costs two clock reads and a histogram update).
pub const DEFAULT_SAMPLE_EVERY: u32 = 64;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, HIST_SIGFIG)
        .expect("constant histogram bounds are valid")
}

fn summarize(h: &Histogram<u64>) -> LatencySummary {
    let at = |q: f64| Duration::from_nanos(h.value_at_quantile(q));
    LatencySummary {
        samples: h.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: Duration::from_nanos(h.max()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_latency_add_up_across_threads() {
        let rec = MetricsRecorder::new(1);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        rec.add(Counter::Hit, 1);
                        let local = rec.local();
                        let t = local.start(Op::Get);
                        local.finish(t);
                    }
                });
            }
        });
        let m = rec.snapshot();
        assert_eq!(m.hits, 400);
        assert_eq!(m.gets, 400);
        assert_eq!(m.latency_of(Op::Get).samples, 400);
        assert_eq!(m.latency_of(Op::Put).samples, 0);
    }

    #[test]
    fn interleaved_kinds_are_each_sampled() {
        let rec = MetricsRecorder::new(4);
        for _ in 0..40 {
            for op in [Op::Get, Op::Put] {
                let local = rec.local();
                let t = local.start(op);
                local.finish(t);
            }
        }
        let m = rec.snapshot();
        assert_eq!(m.latency_of(Op::Get).samples, 10);
        assert_eq!(m.latency_of(Op::Put).samples, 10);
    }

    #[test]
    fn sampling_times_one_call_in_n() {
        let rec = MetricsRecorder::new(8);
        for _ in 0..80 {
            let t = rec.local().start(Op::Put);
            rec.local().finish(t);
        }
        assert_eq!(rec.snapshot().latency_of(Op::Put).samples, 10);
    }
}
