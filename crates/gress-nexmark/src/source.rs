//! A partitioned, replayable source of Nexmark events.
//!
//! Event `n` (0, 1, 2, ... over the whole stream) is a function of `n` and
//! the generator's settings alone, so a partition is a slice of the event
//! numbers: partition `p` of `P` reads events `p, p + P, p + 2P, ...`, and
//! its offset is how many of them it has read. Recovery reopens each
//! partition at its checkpointed offset and reads the same events again.

use std::sync::Arc;
use std::time::Duration;

use gress_stream::{DataStream, JobBuilder, PartitionReader, Poll, Result, Source};
use nexmark::EventGenerator;
use nexmark::config::NexmarkConfig;

use crate::event::Event;

/// The event time of event 0 unless set: 2026-01-01T00:00:00Z (ms).
pub const BASE_TIME: u64 = 1_767_225_600_000;

/// Events per second of event time in the Flink suite (`first-event.rate`
/// and `next-event.rate`): 10M events span one second.
pub const FLINK_RATE: usize = 10_000_000;

/// What the generator makes, and how much of it.
///
/// The defaults are those of the Flink Nexmark suite: 10,000,000 events
/// per second of event time, people, auctions and bids in proportions
/// 1:3:46, 100 auctions in flight, 1,000 active people, hot sellers,
/// auctions, bidders and channels at ratios 4, 2, 4 and 2, and five
/// categories (10-14). Event time starts at [`BASE_TIME`] rather than the
/// wall clock, so that every run (and every replay) is the same. US
/// states are lowercase (`or`, `id`, `ca`, ...). Watermarks trail the
/// largest event time read by 4 s, as in the Flink suite's tables.
#[derive(Debug, Clone)]
pub struct NexmarkSettings {
    /// Events in the whole stream.
    pub events: u64,
    /// Source partitions (each worker reads `partitions / workers` of them).
    pub partitions: usize,
    /// How far watermarks trail the largest event time read.
    pub out_of_orderness: Duration,
    /// The generator's settings.
    pub config: NexmarkConfig,
}

impl NexmarkSettings {
    /// `events` events in `partitions` partitions, with the Flink suite's
    /// generator settings.
    pub fn new(events: u64, partitions: usize) -> Self {
        let config = NexmarkConfig {
            first_rate: FLINK_RATE,
            next_rate: FLINK_RATE,
            base_time: BASE_TIME,
            ..NexmarkConfig::default()
        };
        NexmarkSettings {
            events,
            partitions: partitions.max(1),
            out_of_orderness: Duration::from_secs(4),
            config,
        }
    }

    /// Events per second of event time (both rates of the generator).
    pub fn with_rate(mut self, per_second: usize) -> Self {
        self.config.first_rate = per_second.max(1);
        self.config.next_rate = per_second.max(1);
        self
    }

    /// All events, in order (for checking results).
    pub fn generate(&self) -> impl Iterator<Item = Event> + use<> {
        EventGenerator::new(self.config.clone())
            .take(usize::try_from(self.events).unwrap_or(usize::MAX))
            .map(Event::from)
    }

    /// The events of partition `p`.
    fn per_partition(&self, p: usize) -> u64 {
        let (n, parts) = (self.events, self.partitions as u64);
        let p = p as u64;
        if p >= n { 0 } else { (n - p).div_ceil(parts) }
    }
}

/// The Nexmark events as a [`Source`].
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    settings: Arc<NexmarkSettings>,
}

impl NexmarkSource {
    /// A source of the events `settings` describe.
    pub fn new(settings: NexmarkSettings) -> Self {
        NexmarkSource {
            settings: Arc::new(settings),
        }
    }
}

struct Reader {
    generator: EventGenerator,
    next: u64,
    end: u64,
}

impl PartitionReader<Event> for Reader {
    fn poll(&mut self, max: usize, out: &mut Vec<Event>) -> Result<Poll> {
        let until = self.end.min(self.next + max as u64);
        while self.next < until {
            if let Some(e) = self.generator.next() {
                out.push(Event::from(e));
            }
            self.next += 1;
        }
        Ok(if self.next >= self.end {
            Poll::End
        } else {
            Poll::Ready
        })
    }

    fn offset(&self) -> u64 {
        self.next
    }
}

impl Source for NexmarkSource {
    type Record = Event;

    fn partitions(&self) -> usize {
        self.settings.partitions
    }

    fn open(&mut self, partition: usize, offset: u64) -> Result<Box<dyn PartitionReader<Event>>> {
        let parts = self.settings.partitions as u64;
        let generator = EventGenerator::new(self.settings.config.clone())
            .with_offset(partition as u64 + offset.saturating_mul(parts))
            .with_step(parts);
        Ok(Box::new(Reader {
            generator,
            next: offset,
            end: self.settings.per_partition(partition),
        }))
    }
}

/// The events of `settings` as a stream with event time, read under
/// `name`.
pub fn events<'s>(
    job: &mut JobBuilder<'s>,
    name: &str,
    settings: &NexmarkSettings,
) -> Result<DataStream<'s, Event>> {
    job.source_with_event_time(
        name,
        NexmarkSource::new(settings.clone()),
        Event::time,
        settings.out_of_orderness,
    )
}
