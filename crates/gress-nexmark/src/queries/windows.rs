//! Queries on windows: q5, q7, q8, q11, q12.

use std::time::Duration;

use gress_stream::{
    AggregateFunction, CoInput, DataStream, KeyedProcessFunction, ProcessingContext, Result,
    TimeDomain, Timer, ValueStateDescriptor, WindowAssigner,
};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::queries::stateless::bids;

const TEN_SECONDS: Duration = Duration::from_secs(10);

/// Counts its inputs; merges (for session windows).
#[derive(Debug, Clone, Copy)]
pub struct Count;

impl AggregateFunction for Count {
    type In = u64;
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: u64) {
        *acc += 1;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> Option<u64> {
        Some(a + b)
    }
}

/// q5's row: an auction with the most bids in a window, and how many.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q5 {
    pub auction: u64,
    pub num: u64,
    /// The window (not in the SQL's output; it tells rows apart).
    pub start: u64,
    pub end: u64,
}

/// Per window: the most bids of an auction, and the auctions with that
/// many; emitted when the window is complete.
struct HotItems {
    best: ValueStateDescriptor<(u64, Vec<u64>)>,
}

impl KeyedProcessFunction<(u64, u64), (u64, u64)> for HotItems {
    type Out = Q5;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, (u64, u64), Q5>,
        (auction, num): (u64, u64),
    ) -> Result<()> {
        ctx.value(&self.best)?.update(|best| {
            let mut best = best.unwrap_or((0, Vec::new()));
            if num > best.0 {
                best = (num, vec![auction]);
            } else if num == best.0 {
                best.1.push(auction);
            }
            Some(best)
        })?;
        let end = ctx.key().1;
        ctx.register_event_timer(end);
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessingContext<'_, (u64, u64), Q5>,
        _: Timer,
    ) -> Result<()> {
        let (start, end) = *ctx.key();
        let best = ctx.value(&self.best)?.get()?;
        ctx.value(&self.best)?.clear()?;
        if let Some((num, auctions)) = best {
            for auction in auctions {
                ctx.output(Q5 {
                    auction,
                    num,
                    start,
                    end,
                });
            }
        }
        Ok(())
    }
}

/// q5, hot items: in each sliding window (10 s, every 2 s), the auctions
/// with the most bids.
pub fn q5<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q5> {
    bids(events)
        .map(|b| b.auction)
        .key_by(|a| *a)
        .window(WindowAssigner::sliding(TEN_SECONDS, Duration::from_secs(2)))
        .aggregate("q5-count", Count)
        .key_by(|r| (r.start, r.end))
        .map_values(|r| (r.key, r.result))
        .process(
            "q5-hot",
            HotItems {
                best: ValueStateDescriptor::new("best"),
            },
        )
}

/// q7's row: a bid with the highest price of its window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q7 {
    pub auction: u64,
    pub price: u64,
    pub bidder: u64,
    pub date_time: u64,
    pub extra: String,
}

/// The highest price of its inputs, and the inputs with it.
#[derive(Debug, Clone, Copy)]
pub struct MaxBids;

impl AggregateFunction for MaxBids {
    type In = Q7;
    type Acc = (u64, Vec<Q7>);
    type Out = (u64, Vec<Q7>);
    fn create(&self) -> Self::Acc {
        (0, Vec::new())
    }
    fn add(&self, acc: &mut Self::Acc, b: Q7) {
        if b.price > acc.0 || acc.1.is_empty() {
            *acc = (b.price, vec![b]);
        } else if b.price == acc.0 {
            acc.1.push(b);
        }
    }
    fn result(&self, acc: &Self::Acc) -> Self::Out {
        acc.clone()
    }
}

/// [`MaxBids`] of [`MaxBids`]' results.
#[derive(Debug, Clone, Copy)]
pub struct MaxOfMaxBids;

impl AggregateFunction for MaxOfMaxBids {
    type In = (u64, Vec<Q7>);
    type Acc = (u64, Vec<Q7>);
    type Out = (u64, Vec<Q7>);
    fn create(&self) -> Self::Acc {
        (0, Vec::new())
    }
    fn add(&self, acc: &mut Self::Acc, (price, mut bids): (u64, Vec<Q7>)) {
        if price > acc.0 || acc.1.is_empty() {
            *acc = (price, bids);
        } else if price == acc.0 {
            acc.1.append(&mut bids);
        }
    }
    fn result(&self, acc: &Self::Acc) -> Self::Out {
        acc.clone()
    }
}

/// q7, highest bid: the bids with the highest price of each tumbling
/// 10 s window. First per auction and window, then per window, so no
/// worker sees every bid.
pub fn q7<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q7> {
    bids(events)
        .map(|b| Q7 {
            auction: b.auction,
            price: b.price,
            bidder: b.bidder,
            date_time: b.date_time,
            extra: b.extra,
        })
        .key_by(|b| b.auction)
        .window(WindowAssigner::tumbling(TEN_SECONDS))
        .aggregate("q7-auction-max", MaxBids)
        .key_by(|r| r.start)
        .map_values(|r| r.result)
        .window(WindowAssigner::tumbling(TEN_SECONDS))
        .aggregate("q7-max", MaxOfMaxBids)
        .flat_map(|r| r.result.1)
}

/// q8's row: a person who opened an auction in the window they joined.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q8 {
    pub id: u64,
    pub name: String,
    /// The window's start.
    pub start: u64,
}

/// Per person and tumbling window: their name once they joined, whether
/// they opened an auction, and whether the row was emitted.
struct NewUsers {
    seen: ValueStateDescriptor<(Option<String>, bool, bool)>,
}

impl KeyedProcessFunction<u64, CoInput<String, ()>> for NewUsers {
    type Out = Q8;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, Q8>,
        value: CoInput<String, ()>,
    ) -> Result<()> {
        let t = ctx.time();
        let start = t - t % 10_000;
        ctx.set_namespace(Some(&start))?;
        let mut row = None;
        ctx.value(&self.seen)?.update(|seen| {
            let (mut name, mut auction, mut emitted) = seen.unwrap_or((None, false, false));
            match value {
                CoInput::Left(n) => name = Some(n),
                CoInput::Right(()) => auction = true,
            }
            if let (Some(n), true, false) = (&name, auction, emitted) {
                row = Some(n.clone());
                emitted = true;
            }
            Some((name, auction, emitted))
        })?;
        if let Some(name) = row {
            let id = *ctx.key();
            ctx.output(Q8 { id, name, start });
        }
        ctx.register_event_timer(start + 10_000);
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut ProcessingContext<'_, u64, Q8>, _: Timer) -> Result<()> {
        ctx.value(&self.seen)?.clear()
    }
}

/// q8, monitor new users: people who opened an auction within the
/// tumbling 10 s window in which they joined (a window join of people and
/// auctions on the seller).
pub fn q8<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q8> {
    let people = events
        .clone()
        .flat_map(|e| e.person().map(|p| (p.id, p.name)));
    let sellers = events.flat_map(|e| e.auction().map(|a| a.seller));
    people
        .key_by(|p| p.0)
        .map_values(|p| p.1)
        .connect(sellers.key_by(|s| *s).map_values(|_| ()))
        .process(
            "q8-join",
            NewUsers {
                seen: ValueStateDescriptor::new("seen"),
            },
        )
}

/// q11's and q12's row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BidderCount {
    pub bidder: u64,
    pub bid_count: u64,
    pub start: u64,
    pub end: u64,
}

/// q11, user sessions: each bidder's bids per session (bids at most 10 s
/// apart).
pub fn q11<'s>(events: DataStream<'s, Event>) -> DataStream<'s, BidderCount> {
    bids(events)
        .map(|b| b.bidder)
        .key_by(|b| *b)
        .window(WindowAssigner::session(TEN_SECONDS))
        .aggregate("q11-sessions", Count)
        .map(|r| BidderCount {
            bidder: r.key,
            bid_count: r.result,
            start: r.start,
            end: r.end,
        })
}

/// Counts per key in tumbling windows of processing time (the job's
/// clock): a window is emitted when the clock passes its end, or when the
/// input ends.
struct ProcessingWindows {
    size: u64,
    count: ValueStateDescriptor<u64>,
}

impl KeyedProcessFunction<u64, u64> for ProcessingWindows {
    type Out = BidderCount;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, BidderCount>,
        _: u64,
    ) -> Result<()> {
        let now = ctx.processing_time();
        let start = now - now % self.size;
        ctx.set_namespace(Some(&start))?;
        let mut first = false;
        ctx.value(&self.count)?.update(|c| {
            first = c.is_none();
            Some(c.unwrap_or(0) + 1)
        })?;
        if first {
            ctx.register_processing_timer(start + self.size);
            // The end of the input flushes what the clock has not.
            ctx.register_event_timer(u64::MAX);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, BidderCount>,
        timer: Timer,
    ) -> Result<()> {
        let start: u64 = timer.decode_namespace()?;
        let Some(count) = ctx.value(&self.count)?.get()? else {
            return Ok(());
        };
        ctx.value(&self.count)?.clear()?;
        match timer.domain {
            TimeDomain::ProcessingTime => ctx.delete_event_timer(u64::MAX),
            TimeDomain::EventTime => ctx.delete_processing_timer(start + self.size),
        }
        let bidder = *ctx.key();
        ctx.output(BidderCount {
            bidder,
            bid_count: count,
            start,
            end: start + self.size,
        });
        Ok(())
    }
}

/// q12, processing-time windows: each bidder's bids per tumbling 10 s
/// window of the job's clock.
pub fn q12<'s>(events: DataStream<'s, Event>) -> DataStream<'s, BidderCount> {
    bids(events).map(|b| b.bidder).key_by(|b| *b).process(
        "q12-windows",
        ProcessingWindows {
            size: 10_000,
            count: ValueStateDescriptor::new("count"),
        },
    )
}
