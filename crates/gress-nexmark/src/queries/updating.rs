//! Queries whose results update as bids arrive: q15, q16, q17 (grouped
//! statistics with distinct counts), q18 (the last bid of each bidder on
//! each auction) and q19 (each auction's 10 highest bids).

use gress_stream::{
    AggregateFunction, Change, DataStream, Key, KeyedProcessFunction, ProcessingContext, Ranked,
    Result, ValueStateDescriptor,
};
use serde::{Deserialize, Serialize};

use crate::event::{Bid, Event};
use crate::queries::stateless::bids;
use crate::util;

/// Price ranks of q15-q17: 1 below 10,000, 2 below 1,000,000, 3 above.
fn rank(price: u64) -> usize {
    if price < 10_000 {
        1
    } else if price < 1_000_000 {
        2
    } else {
        3
    }
}

/// A bid's contribution to its group's statistics: its rank, its minute,
/// and which distinct counts it is the first of (bit 0: any rank, bit
/// `r`: rank `r`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub rank: u8,
    pub minute: String,
    pub new_bidder: u8,
    pub new_auction: u8,
}

/// Bids, bidders and auctions per rank, of one group (q15, q16).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BidStats {
    /// The latest `HH:mm` of its bids (q16 only; empty in q15).
    pub minute: String,
    pub total_bids: u64,
    pub rank1_bids: u64,
    pub rank2_bids: u64,
    pub rank3_bids: u64,
    pub total_bidders: u64,
    pub rank1_bidders: u64,
    pub rank2_bidders: u64,
    pub rank3_bidders: u64,
    pub total_auctions: u64,
    pub rank1_auctions: u64,
    pub rank2_auctions: u64,
    pub rank3_auctions: u64,
}

impl BidStats {
    /// Adds one bid's tally.
    pub fn add(&mut self, t: &Tally) {
        let bit = |bits: u8, i: u8| u64::from((bits >> i) & 1);
        self.total_bids += 1;
        let r = t.rank;
        self.rank1_bids += u64::from(r == 1);
        self.rank2_bids += u64::from(r == 2);
        self.rank3_bids += u64::from(r == 3);
        self.total_bidders += bit(t.new_bidder, 0);
        self.rank1_bidders += bit(t.new_bidder, 1);
        self.rank2_bidders += bit(t.new_bidder, 2);
        self.rank3_bidders += bit(t.new_bidder, 3);
        self.total_auctions += bit(t.new_auction, 0);
        self.rank1_auctions += bit(t.new_auction, 1);
        self.rank2_auctions += bit(t.new_auction, 2);
        self.rank3_auctions += bit(t.new_auction, 3);
        if t.minute > self.minute {
            self.minute.clone_from(&t.minute);
        }
    }
}

/// Sums tallies.
#[derive(Debug, Clone, Copy)]
pub struct SumTallies;

impl AggregateFunction for SumTallies {
    type In = Tally;
    type Acc = BidStats;
    type Out = BidStats;
    fn create(&self) -> BidStats {
        BidStats::default()
    }
    fn add(&self, acc: &mut BidStats, t: Tally) {
        acc.add(&t);
    }
    fn result(&self, acc: &BidStats) -> BidStats {
        acc.clone()
    }
}

/// Marks the first bid of a distinct value (bidder or auction) in its
/// group, overall and per rank: one byte of state per group and value.
/// Records carry a payload `P` along.
struct FirstOf {
    seen: ValueStateDescriptor<u8>,
    bidder: bool,
}

impl<K: Key, G: gress_stream::Data, P: gress_stream::Data> KeyedProcessFunction<K, (G, (P, Tally))>
    for FirstOf
{
    type Out = (G, (P, Tally));
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, Self::Out>,
        (group, (payload, mut tally)): (G, (P, Tally)),
    ) -> Result<()> {
        let bits = 1u8 | (1 << tally.rank);
        let mut new = 0;
        ctx.value(&self.seen)?.update(|seen| {
            let seen = seen.unwrap_or(0);
            new = bits & !seen;
            Some(seen | bits)
        })?;
        if self.bidder {
            tally.new_bidder = new;
        } else {
            tally.new_auction = new;
        }
        ctx.output((group, (payload, tally)));
        Ok(())
    }
}

/// Per group of bids: the statistics of q15 and q16, as a changelog. The
/// distinct counts are split the way planners split them: bids are keyed
/// by (group, bidder), then by (group, auction), each stage marking the
/// first bid of its value, and the last stage sums per group. (Summing
/// per shard of a group first, so that no one worker sums every bid of a
/// hot group, measured no faster on q15's one group and slower on q16's
/// many.)
fn bid_statistics<'s, G: Key>(
    events: DataStream<'s, Event>,
    name: &str,
    mut group: impl FnMut(&Bid) -> G + 'static,
    minutes: bool,
) -> DataStream<'s, Change<(G, BidStats)>> {
    bids(events)
        .map(move |b| {
            let tally = Tally {
                rank: rank(b.price) as u8,
                minute: if minutes {
                    util::hour_minute(b.date_time)
                } else {
                    String::new()
                },
                new_bidder: 0,
                new_auction: 0,
            };
            (group(&b), b.bidder, b.auction, tally)
        })
        .key_by(|(g, bidder, _, _)| (g.clone(), *bidder))
        .map_values(|(g, _, auction, t)| (g, (auction, t)))
        .process(
            &format!("{name}-bidders"),
            FirstOf {
                seen: ValueStateDescriptor::new("seen"),
                bidder: true,
            },
        )
        .key_by(|(g, (auction, _))| (g.clone(), *auction))
        .map_values(|(g, (_, t))| (g, ((), t)))
        .process(
            &format!("{name}-auctions"),
            FirstOf {
                seen: ValueStateDescriptor::new("seen"),
                bidder: false,
            },
        )
        .key_by(|(g, _)| g.clone())
        .map_values(|(_, (_, t))| t)
        .updating_aggregate(&format!("{name}-stats"), SumTallies)
}

/// q15, bidding statistics per day, as a changelog of `(day, stats)`.
pub fn q15<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Change<(String, BidStats)>> {
    let mut days = util::DayCache::default();
    bid_statistics(events, "q15", move |b| days.day(b.date_time), false)
}

/// q16, channel statistics per day, as a changelog of `((channel, day),
/// stats)` (with the latest minute).
pub fn q16<'s>(
    events: DataStream<'s, Event>,
) -> DataStream<'s, Change<((String, String), BidStats)>> {
    let mut days = util::DayCache::default();
    bid_statistics(
        events,
        "q16",
        move |b| (b.channel.clone(), days.day(b.date_time)),
        true,
    )
}

/// Bids and prices of one auction and day (q17).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AuctionStats {
    pub total_bids: u64,
    pub rank1_bids: u64,
    pub rank2_bids: u64,
    pub rank3_bids: u64,
    pub min_price: u64,
    pub max_price: u64,
    /// Truncated, as SQL's `AVG` of a `BIGINT`.
    pub avg_price: u64,
    pub sum_price: u64,
}

/// Adds prices up.
#[derive(Debug, Clone, Copy)]
pub struct PriceStats;

impl AggregateFunction for PriceStats {
    type In = u64;
    type Acc = AuctionStats;
    type Out = AuctionStats;
    fn create(&self) -> AuctionStats {
        AuctionStats::default()
    }
    fn add(&self, s: &mut AuctionStats, price: u64) {
        let r = rank(price);
        s.min_price = if s.total_bids == 0 {
            price
        } else {
            s.min_price.min(price)
        };
        s.max_price = s.max_price.max(price);
        s.total_bids += 1;
        s.rank1_bids += u64::from(r == 1);
        s.rank2_bids += u64::from(r == 2);
        s.rank3_bids += u64::from(r == 3);
        s.sum_price += price;
        s.avg_price = s.sum_price / s.total_bids;
    }
    fn result(&self, s: &AuctionStats) -> AuctionStats {
        s.clone()
    }
}

/// q17, auction statistics per auction and day, as a changelog of
/// `((auction, day), stats)`.
pub fn q17<'s>(
    events: DataStream<'s, Event>,
) -> DataStream<'s, Change<((u64, String), AuctionStats)>> {
    let mut days = util::DayCache::default();
    bids(events)
        .map(move |b| ((b.auction, days.day(b.date_time)), b.price))
        .key_by(|(k, _)| k.clone())
        .map_values(|(_, price)| price)
        .updating_aggregate("q17-stats", PriceStats)
}

/// q18, find last bid: each bidder's latest bid on each auction (of bids
/// at the same time, the greatest), as a changelog.
pub fn q18<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Change<Bid>> {
    bids(events)
        .key_by(|b| (b.bidder, b.auction))
        .top_n("q18-last", 1, |a, b| {
            b.date_time.cmp(&a.date_time).then_with(|| b.cmp(a))
        })
        .map(|c| c.map(|r| r.row))
}

/// q19, auction top-10 price: each auction's 10 highest bids, ranked
/// (of equal prices the earlier first, then the smaller bid), as a
/// changelog.
pub fn q19<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Change<Ranked<Bid>>> {
    bids(events)
        .key_by(|b| b.auction)
        .top_n("q19-top", 10, |a, b| {
            b.price
                .cmp(&a.price)
                .then(a.date_time.cmp(&b.date_time))
                .then_with(|| a.cmp(b))
        })
}
