//! Queries with regular joins and results that update: q3, q4, q6, q9,
//! q20.

use std::collections::BTreeMap;

use gress_stream::{AggregateFunction, Change, DataStream, RetractingAggregate};
use serde::{Deserialize, Serialize};

use crate::event::{Auction, Bid, Event};

/// q3's row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q3 {
    pub name: String,
    pub city: String,
    pub state: String,
    /// The auction.
    pub id: u64,
}

/// q3, local item suggestion: auctions of category 10 by sellers in
/// Oregon, Idaho or California (a regular join of auctions and people on
/// the seller; a person's id is unique, so auctions wait only for their
/// seller, and the state filter applies in the join).
pub fn q3<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q3> {
    let auctions = events.clone().flat_map(|e| {
        e.auction()
            .filter(|a| a.category == 10)
            .map(|a| (a.seller, a.id))
    });
    let people = events.flat_map(|e| e.person().map(|p| (p.id, p.name, p.city, p.state)));
    auctions
        .key_by(|a| a.0)
        .join_unique("q3-join", people.key_by(|p| p.0), None, |_, a, p| {
            matches!(p.3.as_str(), "or" | "id" | "ca").then(|| Q3 {
                name: p.1.clone(),
                city: p.2.clone(),
                state: p.3.clone(),
                id: a.1,
            })
        })
}

/// The largest price.
#[derive(Debug, Clone, Copy)]
pub struct MaxPrice;

impl AggregateFunction for MaxPrice {
    type In = u64;
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, price: u64) {
        *acc = (*acc).max(price);
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// The mean of integers, truncated (SQL's `AVG` of a `BIGINT`).
#[derive(Debug, Clone, Copy)]
pub struct Average;

impl AggregateFunction for Average {
    type In = u64;
    type Acc = (u64, u64);
    type Out = u64;
    fn create(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), v: u64) {
        acc.0 += v;
        acc.1 += 1;
    }
    fn result(&self, acc: &(u64, u64)) -> u64 {
        acc.0.checked_div(acc.1).unwrap_or(0)
    }
}

impl RetractingAggregate for Average {
    fn retract(&self, acc: &mut (u64, u64), v: u64) {
        acc.0 = acc.0.saturating_sub(v);
        acc.1 = acc.1.saturating_sub(1);
    }
}

/// Auctions and their bids, joined on the auction: `join(auction, bid)`
/// for each pair. An auction's id is unique, so bids wait only until
/// their auction arrives.
fn auction_bids<'s, A, B, O>(
    events: DataStream<'s, Event>,
    name: &str,
    auction: impl Fn(Auction) -> A + 'static,
    bid: impl Fn(Bid) -> B + 'static,
    key_a: impl Fn(&A) -> u64 + 'static,
    key_b: impl Fn(&B) -> u64 + 'static,
    join: impl Fn(&A, &B) -> Option<O> + 'static,
) -> DataStream<'s, O>
where
    A: gress_stream::Data,
    B: gress_stream::Data,
    O: gress_stream::Data,
{
    let auctions = events.clone().flat_map(move |e| e.auction().map(&auction));
    let bids = events.flat_map(move |e| e.bid().map(&bid));
    bids.key_by(key_b)
        .join_unique(name, auctions.key_by(key_a), None, move |_, b, a| {
            join(a, b)
        })
}

/// q4, average price per category: the mean of the final prices (highest
/// bid while open) of each category's auctions, as a changelog of
/// `(category, average)`.
pub fn q4<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Change<(u64, u64)>> {
    auction_bids(
        events,
        "q4-join",
        |a| (a.id, a.category, a.date_time, a.expires),
        |b| (b.auction, b.price, b.date_time),
        |a| a.0,
        |b| b.0,
        |a, b| (b.2 >= a.2 && b.2 <= a.3).then_some((a.0, a.1, b.1)),
    )
    .key_by(|&(id, category, _)| (id, category))
    .map_values(|(_, _, price)| price)
    .updating_aggregate("q4-final", MaxPrice)
    .map(|c| c.map(|((_, category), price)| (category, price)))
    .key_by(|c| c.row().0)
    .map_values(|c| c.map(|(_, price)| price))
    .retracting_aggregate("q4-average", Average)
}

/// An auction's winning bid so far (q6).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Winner {
    pub auction: u64,
    pub seller: u64,
    pub price: u64,
    pub date_time: u64,
    pub bidder: u64,
}

/// The highest price first; of equal prices the earlier bid, then the
/// smaller bidder.
fn best_price(a: &Winner, b: &Winner) -> std::cmp::Ordering {
    b.price
        .cmp(&a.price)
        .then(a.date_time.cmp(&b.date_time))
        .then(a.bidder.cmp(&b.bidder))
}

/// The mean price of a seller's latest 11 winning bids (by bid time, then
/// auction): `AVG(price) OVER (ORDER BY dateTime ROWS BETWEEN 10
/// PRECEDING AND CURRENT ROW)` at the seller's latest row.
#[derive(Debug, Clone, Copy)]
pub struct LatestAverage;

impl AggregateFunction for LatestAverage {
    type In = Winner;
    type Acc = BTreeMap<(u64, u64, u64), u32>;
    type Out = u64;
    fn create(&self) -> Self::Acc {
        BTreeMap::new()
    }
    fn add(&self, acc: &mut Self::Acc, w: Winner) {
        *acc.entry((w.date_time, w.auction, w.price)).or_insert(0) += 1;
    }
    fn result(&self, acc: &Self::Acc) -> u64 {
        let (mut sum, mut n) = (0u64, 0u64);
        'rows: for (&(_, _, price), &times) in acc.iter().rev() {
            for _ in 0..times {
                if n == 11 {
                    break 'rows;
                }
                sum += price;
                n += 1;
            }
        }
        sum.checked_div(n).unwrap_or(0)
    }
}

impl RetractingAggregate for LatestAverage {
    fn retract(&self, acc: &mut Self::Acc, w: Winner) {
        let k = (w.date_time, w.auction, w.price);
        if let Some(n) = acc.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                acc.remove(&k);
            }
        }
    }
}

/// q6, average selling price by seller: each auction's winning bid (the
/// highest while it was open), and per seller the mean of the latest 11,
/// as a changelog of `(seller, average)`.
pub fn q6<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Change<(u64, u64)>> {
    auction_bids(
        events,
        "q6-join",
        |a| (a.id, a.seller, a.date_time, a.expires),
        |b| (b.auction, b.price, b.date_time, b.bidder),
        |a| a.0,
        |b| b.0,
        |a, b| {
            (b.2 >= a.2 && b.2 <= a.3).then_some(Winner {
                auction: a.0,
                seller: a.1,
                price: b.1,
                date_time: b.2,
                bidder: b.3,
            })
        },
    )
    .key_by(|w| w.auction)
    .top_n("q6-winner", 1, best_price)
    .map(|c| c.map(|r| r.row))
    .key_by(|c| c.row().seller)
    .retracting_aggregate("q6-average", LatestAverage)
}

/// q9's row: an auction with its winning bid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q9 {
    pub auction: Auction,
    pub bid: Bid,
}

/// q9, winning bids: each auction with its highest bid while it was open
/// (of equal prices the earliest), as a changelog.
pub fn q9<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Change<Q9>> {
    auction_bids(
        events,
        "q9-join",
        |a| a,
        |b| b,
        |a| a.id,
        |b| b.auction,
        |a, b| {
            (b.date_time >= a.date_time && b.date_time <= a.expires).then(|| Q9 {
                auction: a.clone(),
                bid: b.clone(),
            })
        },
    )
    .key_by(|r| r.auction.id)
    .top_n("q9-winner", 1, |a, b| {
        b.bid
            .price
            .cmp(&a.bid.price)
            .then(a.bid.date_time.cmp(&b.bid.date_time))
            .then(a.bid.cmp(&b.bid))
    })
    .map(|c| c.map(|r| r.row))
}

/// q20's row: a bid with its auction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q20 {
    pub bid: Bid,
    pub auction: Auction,
}

/// q20, expand bid with auction: bids on auctions of category 10, with
/// the auction (a regular join; an auction's id is unique, so bids wait
/// only until their auction arrives, and the category filter applies in
/// the join).
pub fn q20<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q20> {
    let auctions = events.clone().flat_map(Event::auction);
    let bids = events.flat_map(Event::bid);
    bids.key_by(|b| b.auction).join_unique(
        "q20-join",
        auctions.key_by(|a| a.id),
        None,
        |_, b, a| {
            (a.category == 10).then(|| Q20 {
                bid: b.clone(),
                auction: a.clone(),
            })
        },
    )
}
