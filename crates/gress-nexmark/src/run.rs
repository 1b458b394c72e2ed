//! Every query by name, with its output counted (for benchmarks).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gress_stream::{Data, DataStream, Error, PartitionedFileSink, Result, Sink};

use crate::event::Event;
use crate::queries::stateless::{Q10, SideInput};
use crate::queries::{joins, stateless, updating, windows};

/// The names of the queries, in order.
pub const QUERIES: [&str; 23] = [
    "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9", "q10", "q11", "q12", "q13", "q14",
    "q15", "q16", "q17", "q18", "q19", "q20", "q21", "q22",
];

/// One query of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Query(u8);

impl Query {
    /// All of them.
    pub fn all() -> Vec<Query> {
        (0..23).map(Query).collect()
    }

    /// Its name, `q0` to `q22`.
    pub fn name(self) -> &'static str {
        QUERIES[usize::from(self.0)]
    }

    /// The query of a name (`q5` or `5`).
    pub fn parse(name: &str) -> Result<Query> {
        let n = name.trim().trim_start_matches(['q', 'Q']);
        match n.parse::<u8>() {
            Ok(i) if i < 23 => Ok(Query(i)),
            _ => Err(Error::InvalidJob {
                what: "nexmark query",
                reason: format!("{name:?} is not one of q0 to q22").into(),
            }),
        }
    }

    /// What kind of query it is, for the benchmark's targets: `stateless`,
    /// `windowed` or `updating`.
    pub fn kind(self) -> &'static str {
        match self.0 {
            0 | 1 | 2 | 10 | 13 | 14 | 21 | 22 => "stateless",
            5 | 7 | 8 | 11 | 12 => "windowed",
            _ => "updating",
        }
    }

    /// Builds the query on `events`, its output counted into `count` (q10
    /// writes its files under `out`, partitioned; q13 reads `side`).
    pub fn build_counted<'s>(
        self,
        events: DataStream<'s, Event>,
        count: &CountSink,
        side: &SideInput,
        out: &std::path::Path,
    ) -> Result<()> {
        let name = self.name();
        let sink = count.clone();
        match self.0 {
            0 => stateless::q0(events).sink(name, sink),
            1 => stateless::q1(events).sink(name, sink),
            2 => stateless::q2(events).sink(name, sink),
            3 => joins::q3(events).sink(name, sink),
            4 => joins::q4(events).sink(name, sink),
            5 => windows::q5(events).sink(name, sink),
            6 => joins::q6(events).sink(name, sink),
            7 => windows::q7(events).sink(name, sink),
            8 => windows::q8(events).sink(name, sink),
            9 => joins::q9(events).sink(name, sink),
            10 => {
                let dir: PathBuf = out.to_path_buf();
                stateless::q10(events)
                    .inspect(move |_| {
                        sink.add(1);
                    })
                    .sink(name, PartitionedFileSink::new(dir, Q10::partition))
            }
            11 => windows::q11(events).sink(name, sink),
            12 => windows::q12(events).sink(name, sink),
            13 => stateless::q13(events, side.clone()).sink(name, sink),
            14 => stateless::q14(events).sink(name, sink),
            15 => updating::q15(events).sink(name, sink),
            16 => updating::q16(events).sink(name, sink),
            17 => updating::q17(events).sink(name, sink),
            18 => updating::q18(events).sink(name, sink),
            19 => updating::q19(events).sink(name, sink),
            20 => joins::q20(events).sink(name, sink),
            21 => stateless::q21(events).sink(name, sink),
            _ => stateless::q22(events).sink(name, sink),
        }
    }
}

/// A sink that only counts the records committed to it, over all workers
/// of a process (the benchmark's "blackhole").
#[derive(Debug, Clone, Default)]
pub struct CountSink {
    committed: Arc<AtomicU64>,
    pending: Vec<(u64, u64)>,
}

impl CountSink {
    /// A new count at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records committed so far.
    pub fn count(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.committed.fetch_add(n, Ordering::Relaxed);
    }
}

impl<T: Data> Sink<T> for CountSink {
    fn open(&mut self, _worker: usize, _committed: Option<u64>) -> Result<()> {
        Ok(())
    }

    fn write_epoch(&mut self, epoch: u64, records: Vec<T>) -> Result<()> {
        match self.pending.last_mut() {
            Some((e, n)) if *e == epoch => *n += records.len() as u64,
            _ => self.pending.push((epoch, records.len() as u64)),
        }
        Ok(())
    }

    fn commit(&mut self, epoch: u64) -> Result<()> {
        let done: u64 = self
            .pending
            .iter()
            .filter(|(e, _)| *e <= epoch)
            .map(|(_, n)| n)
            .sum();
        self.pending.retain(|(e, _)| *e > epoch);
        self.add(done);
        Ok(())
    }
}
