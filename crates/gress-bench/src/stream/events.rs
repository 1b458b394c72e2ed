//! The benchmark's workload: keys, event times, the counting function and
//! the sink that measures latency.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gress_stream::{KeyedProcessFunction, ProcessingContext, Sink, ValueStateDescriptor};
use hdrhistogram::Histogram;

use super::Distribution;
use crate::workload::{mix, scale};

/// Picks keys for events.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyPicker {
    pub(super) keys: u64,
    /// For Zipf: the harmonic number of `keys`.
    pub(super) zipf: Option<f64>,
}

/// The Euler-Mascheroni constant.
pub(super) const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

impl KeyPicker {
    pub(super) fn new(keys: u64, distribution: Distribution) -> Self {
        let n = keys as f64;
        KeyPicker {
            keys,
            zipf: (distribution == Distribution::Zipf)
                .then(|| n.ln() + EULER_GAMMA + 1.0 / (2.0 * n)),
        }
    }

    /// The key of event `i` of partition `p`, in `0..keys`.
    pub(super) fn key_of(&self, p: usize, i: u64) -> u64 {
        let x = mix(((p as u64) << 48) ^ i);
        match self.zipf {
            None => scale(x, self.keys),
            Some(h) => {
                // The rank k (1-based) whose harmonic number H(k) ~ ln k + γ
                // is u·H(keys): the inverse of Zipf's CDF for s = 1.
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                let rank = ((u * h - EULER_GAMMA).exp() as u64).clamp(1, self.keys);
                // Spread ranks over the key space (and the key groups).
                scale(mix(rank), self.keys)
            }
        }
    }
}

/// Microseconds since `base`, read from the clock once every 256 calls.
pub(super) struct Stamper {
    pub(super) base: Instant,
    pub(super) calls: Cell<u32>,
    pub(super) now_us: Cell<u64>,
}

impl Stamper {
    pub(super) fn new(base: Instant) -> Self {
        Stamper {
            base,
            calls: Cell::new(0),
            now_us: Cell::new(0),
        }
    }

    pub(super) fn now_us(&self) -> u64 {
        let n = self.calls.get();
        if n.is_multiple_of(256) {
            self.now_us.set(self.base.elapsed().as_micros() as u64);
        }
        self.calls.set(n.wrapping_add(1));
        self.now_us.get()
    }
}

/// The running count: one read and one write of a `ValueState<u64>` per
/// event; emits (key, count, generated µs).
pub(super) struct RunningCount {
    pub(super) count: ValueStateDescriptor<u64>,
}

impl KeyedProcessFunction<u64, (u64, u64)> for RunningCount {
    type Out = (u64, u64, u64);
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, Self::Out, ()>,
        (key, born_us): (u64, u64),
    ) -> gress_stream::Result<()> {
        let mut n = 0;
        ctx.value(&self.count)?.update(|c| {
            n = c.unwrap_or(0) + 1;
            Some(n)
        })?;
        ctx.output((key, n, born_us));
        Ok(())
    }
}

/// What the sinks of a run saw, over all workers.
#[derive(Debug)]
pub(super) struct SinkOutcome {
    pub(super) records: u64,
    pub(super) latency_us: Histogram<u64>,
}

/// Counts records and, when an epoch commits, records each of its
/// events' latency from generation to now.
pub(super) struct LatencySink {
    pub(super) base: Instant,
    /// Per written epoch: runs of (generated µs, events).
    pub(super) pending: Vec<(u64, Vec<(u64, u64)>)>,
    pub(super) outcome: Arc<Mutex<SinkOutcome>>,
}

impl Sink<(u64, u64, u64)> for LatencySink {
    fn open(&mut self, _worker: usize, _committed: Option<u64>) -> gress_stream::Result<()> {
        Ok(())
    }

    fn write_epoch(
        &mut self,
        epoch: u64,
        records: Vec<(u64, u64, u64)>,
    ) -> gress_stream::Result<()> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &(_, _, born) in &records {
            match runs.last_mut() {
                Some((b, n)) if *b == born => *n += 1,
                _ => runs.push((born, 1)),
            }
        }
        self.pending.push((epoch, runs));
        Ok(())
    }

    fn commit(&mut self, epoch: u64) -> gress_stream::Result<()> {
        let now = self.base.elapsed().as_micros() as u64;
        let mut out = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        self.pending.retain(|(e, runs)| {
            if *e > epoch {
                return true;
            }
            for &(born, n) in runs {
                out.records += n;
                out.latency_us
                    .record_n(now.saturating_sub(born).max(1), n)
                    .expect("an auto-resizing histogram takes any value");
            }
            false
        });
        Ok(())
    }
}
