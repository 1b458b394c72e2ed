//! Each query's result computed by plain Rust over the same events: the
//! reference the engine's committed output must equal.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gress_nexmark::queries::joins::{Q3, Q9, Q20};
use gress_nexmark::queries::stateless::{Q0, Q1, Q14, Q21, Q22};
use gress_nexmark::queries::stateless::{Q10, Q13, SideInput};
use gress_nexmark::queries::updating::{AuctionStats, BidStats};
use gress_nexmark::queries::windows::{BidderCount, Q5, Q7, Q8};
use gress_nexmark::util;
use gress_nexmark::{Auction, Bid, Event, Person};
use gress_stream::Ranked;

pub fn bids(events: &[Event]) -> impl Iterator<Item = &Bid> {
    events.iter().filter_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

pub fn auctions(events: &[Event]) -> impl Iterator<Item = &Auction> {
    events.iter().filter_map(|e| match e {
        Event::Auction(a) => Some(a),
        _ => None,
    })
}

pub fn people(events: &[Event]) -> impl Iterator<Item = &Person> {
    events.iter().filter_map(|e| match e {
        Event::Person(p) => Some(p),
        _ => None,
    })
}

pub fn q3(events: &[Event]) -> Vec<Q3> {
    let sellers: HashMap<u64, &Person> = people(events)
        .filter(|p| ["or", "id", "ca"].contains(&p.state.as_str()))
        .map(|p| (p.id, p))
        .collect();
    let mut out: Vec<Q3> = auctions(events)
        .filter(|a| a.category == 10)
        .filter_map(|a| {
            let p = sellers.get(&a.seller)?;
            Some(Q3 {
                name: p.name.clone(),
                city: p.city.clone(),
                state: p.state.clone(),
                id: a.id,
            })
        })
        .collect();
    out.sort();
    out
}

/// The bids of each auction placed while it was open.
fn valid_bids(events: &[Event]) -> Vec<(&Auction, Vec<&Bid>)> {
    let mut by_auction: HashMap<u64, Vec<&Bid>> = HashMap::new();
    for b in bids(events) {
        by_auction.entry(b.auction).or_default().push(b);
    }
    auctions(events)
        .map(|a| {
            let valid = by_auction
                .get(&a.id)
                .map(|bs| {
                    bs.iter()
                        .copied()
                        .filter(|b| b.date_time >= a.date_time && b.date_time <= a.expires)
                        .collect()
                })
                .unwrap_or_default();
            (a, valid)
        })
        .collect()
}

pub fn q4(events: &[Event]) -> Vec<(u64, u64)> {
    let mut per_category: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (a, valid) in valid_bids(events) {
        if let Some(max) = valid.iter().map(|b| b.price).max() {
            let e = per_category.entry(a.category).or_default();
            e.0 += max;
            e.1 += 1;
        }
    }
    per_category
        .into_iter()
        .map(|(c, (sum, n))| (c, sum / n))
        .collect()
}

pub fn q5(events: &[Event]) -> Vec<Q5> {
    let mut counts: BTreeMap<(u64, u64), HashMap<u64, u64>> = BTreeMap::new();
    for b in bids(events) {
        let t = b.date_time;
        let mut start = t - t % 2_000;
        loop {
            *counts
                .entry((start, start + 10_000))
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
            if start < 2_000 || start - 2_000 + 10_000 <= t {
                break;
            }
            start -= 2_000;
        }
    }
    let mut out = Vec::new();
    for ((start, end), per_auction) in counts {
        let max = per_auction.values().copied().max().unwrap_or(0);
        for (auction, num) in per_auction {
            if num == max {
                out.push(Q5 {
                    auction,
                    num,
                    start,
                    end,
                });
            }
        }
    }
    out.sort();
    out
}

pub fn q6(events: &[Event]) -> Vec<(u64, u64)> {
    let mut per_seller: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for (a, valid) in valid_bids(events) {
        let best = valid.iter().min_by(|x, y| {
            y.price
                .cmp(&x.price)
                .then(x.date_time.cmp(&y.date_time))
                .then(x.bidder.cmp(&y.bidder))
        });
        if let Some(b) = best {
            per_seller
                .entry(a.seller)
                .or_default()
                .push((b.date_time, a.id, b.price));
        }
    }
    per_seller
        .into_iter()
        .map(|(seller, mut wins)| {
            wins.sort();
            let last: Vec<u64> = wins.iter().rev().take(11).map(|w| w.2).collect();
            (seller, last.iter().sum::<u64>() / last.len() as u64)
        })
        .collect()
}

pub fn q7(events: &[Event]) -> Vec<Q7> {
    let mut max: HashMap<u64, u64> = HashMap::new();
    for b in bids(events) {
        let w = b.date_time - b.date_time % 10_000;
        let m = max.entry(w).or_insert(0);
        *m = (*m).max(b.price);
    }
    let mut out: Vec<Q7> = bids(events)
        .filter(|b| max[&(b.date_time - b.date_time % 10_000)] == b.price)
        .map(|b| Q7 {
            auction: b.auction,
            price: b.price,
            bidder: b.bidder,
            date_time: b.date_time,
            extra: b.extra.clone(),
        })
        .collect();
    out.sort();
    out
}

pub fn q8(events: &[Event]) -> Vec<Q8> {
    let window = |t: u64| t - t % 10_000;
    let sellers: BTreeSet<(u64, u64)> = auctions(events)
        .map(|a| (a.seller, window(a.date_time)))
        .collect();
    let mut out: Vec<Q8> = people(events)
        .filter(|p| sellers.contains(&(p.id, window(p.date_time))))
        .map(|p| Q8 {
            id: p.id,
            name: p.name.clone(),
            start: window(p.date_time),
        })
        .collect();
    out.sort();
    out
}

pub fn q9(events: &[Event]) -> Vec<Q9> {
    let mut out: Vec<Q9> = valid_bids(events)
        .into_iter()
        .filter_map(|(a, valid)| {
            let best = valid.into_iter().min_by(|x, y| {
                y.price
                    .cmp(&x.price)
                    .then(x.date_time.cmp(&y.date_time))
                    .then(x.cmp(y))
            })?;
            Some(Q9 {
                auction: a.clone(),
                bid: best.clone(),
            })
        })
        .collect();
    out.sort();
    out
}

pub fn q10(events: &[Event]) -> BTreeMap<String, Vec<Q10>> {
    let mut out: BTreeMap<String, Vec<Q10>> = BTreeMap::new();
    for b in bids(events) {
        let row = Q10 {
            auction: b.auction,
            bidder: b.bidder,
            price: b.price,
            date_time: b.date_time,
            extra: b.extra.clone(),
            dt: util::day(b.date_time),
            hm: util::hour_minute(b.date_time),
        };
        out.entry(row.partition()).or_default().push(row);
    }
    for rows in out.values_mut() {
        rows.sort();
    }
    out
}

pub fn q11(events: &[Event]) -> Vec<BidderCount> {
    let mut times: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for b in bids(events) {
        times.entry(b.bidder).or_default().push(b.date_time);
    }
    let mut out = Vec::new();
    for (bidder, mut ts) in times {
        ts.sort_unstable();
        let (mut start, mut last, mut n) = (ts[0], ts[0], 0);
        for t in ts {
            if t > last + 10_000 {
                out.push(BidderCount {
                    bidder,
                    bid_count: n,
                    start,
                    end: last + 10_000,
                });
                (start, n) = (t, 0);
            }
            last = t;
            n += 1;
        }
        out.push(BidderCount {
            bidder,
            bid_count: n,
            start,
            end: last + 10_000,
        });
    }
    out.sort();
    out
}

/// Bids per bidder (q12's windows of processing time add up to these).
pub fn q12(events: &[Event]) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for b in bids(events) {
        *out.entry(b.bidder).or_default() += 1;
    }
    out
}

pub fn q13(events: &[Event], side: &SideInput) -> Vec<Q13> {
    let mut out: Vec<Q13> = bids(events)
        .filter_map(|b| {
            Some(Q13 {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price,
                date_time: b.date_time,
                value: side.get(b.auction % 10_000)?.clone(),
            })
        })
        .collect();
    out.sort();
    out
}

fn rank(price: u64) -> u8 {
    match price {
        p if p < 10_000 => 1,
        p if p < 1_000_000 => 2,
        _ => 3,
    }
}

/// q15's and q16's statistics of a group of bids.
fn stats<'a>(group: impl Iterator<Item = &'a Bid>, minutes: bool) -> BidStats {
    let mut s = BidStats::default();
    let mut bidders: [BTreeSet<u64>; 4] = Default::default();
    let mut auctions: [BTreeSet<u64>; 4] = Default::default();
    for b in group {
        let r = rank(b.price);
        s.total_bids += 1;
        match r {
            1 => s.rank1_bids += 1,
            2 => s.rank2_bids += 1,
            _ => s.rank3_bids += 1,
        }
        for i in [0, usize::from(r)] {
            bidders[i].insert(b.bidder);
            auctions[i].insert(b.auction);
        }
        if minutes {
            s.minute = s.minute.max(util::hour_minute(b.date_time));
        }
    }
    let n = |s: &BTreeSet<u64>| s.len() as u64;
    s.total_bidders = n(&bidders[0]);
    s.rank1_bidders = n(&bidders[1]);
    s.rank2_bidders = n(&bidders[2]);
    s.rank3_bidders = n(&bidders[3]);
    s.total_auctions = n(&auctions[0]);
    s.rank1_auctions = n(&auctions[1]);
    s.rank2_auctions = n(&auctions[2]);
    s.rank3_auctions = n(&auctions[3]);
    s
}

pub fn q15(events: &[Event]) -> Vec<(String, BidStats)> {
    let mut days: BTreeMap<String, Vec<&Bid>> = BTreeMap::new();
    for b in bids(events) {
        days.entry(util::day(b.date_time)).or_default().push(b);
    }
    days.into_iter()
        .map(|(d, bs)| (d, stats(bs.into_iter(), false)))
        .collect()
}

pub fn q16(events: &[Event]) -> Vec<((String, String), BidStats)> {
    let mut groups: BTreeMap<(String, String), Vec<&Bid>> = BTreeMap::new();
    for b in bids(events) {
        groups
            .entry((b.channel.clone(), util::day(b.date_time)))
            .or_default()
            .push(b);
    }
    groups
        .into_iter()
        .map(|(g, bs)| (g, stats(bs.into_iter(), true)))
        .collect()
}

pub fn q17(events: &[Event]) -> Vec<((u64, String), AuctionStats)> {
    let mut groups: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
    for b in bids(events) {
        groups
            .entry((b.auction, util::day(b.date_time)))
            .or_default()
            .push(b.price);
    }
    groups
        .into_iter()
        .map(|(g, prices)| {
            let n = prices.len() as u64;
            let sum: u64 = prices.iter().sum();
            let count = |r| prices.iter().filter(|&&p| rank(p) == r).count() as u64;
            let s = AuctionStats {
                total_bids: n,
                rank1_bids: count(1),
                rank2_bids: count(2),
                rank3_bids: count(3),
                min_price: prices.iter().copied().min().unwrap_or(0),
                max_price: prices.iter().copied().max().unwrap_or(0),
                avg_price: sum / n,
                sum_price: sum,
            };
            (g, s)
        })
        .collect()
}

pub fn q18(events: &[Event]) -> Vec<Bid> {
    let mut last: BTreeMap<(u64, u64), &Bid> = BTreeMap::new();
    for b in bids(events) {
        let e = last.entry((b.bidder, b.auction)).or_insert(b);
        if (b.date_time, b) > (e.date_time, *e) {
            *e = b;
        }
    }
    let mut out: Vec<Bid> = last.into_values().cloned().collect();
    out.sort();
    out
}

pub fn q19(events: &[Event]) -> Vec<Ranked<Bid>> {
    let mut per: BTreeMap<u64, Vec<&Bid>> = BTreeMap::new();
    for b in bids(events) {
        per.entry(b.auction).or_default().push(b);
    }
    let mut out = Vec::new();
    for (_, mut bs) in per {
        bs.sort_by(|x, y| {
            y.price
                .cmp(&x.price)
                .then(x.date_time.cmp(&y.date_time))
                .then(x.cmp(y))
        });
        for (i, b) in bs.into_iter().take(10).enumerate() {
            out.push(Ranked {
                rank: i as u32 + 1,
                row: b.clone(),
            });
        }
    }
    out.sort();
    out
}

pub fn q20(events: &[Event]) -> Vec<Q20> {
    let cat10: HashMap<u64, &Auction> = auctions(events)
        .filter(|a| a.category == 10)
        .map(|a| (a.id, a))
        .collect();
    let mut out: Vec<Q20> = bids(events)
        .filter_map(|b| {
            Some(Q20 {
                bid: b.clone(),
                auction: (*cat10.get(&b.auction)?).clone(),
            })
        })
        .collect();
    out.sort();
    out
}

pub fn q0(events: &[Event]) -> Vec<Q0> {
    bids(events).cloned().map(Q0::from).collect()
}

pub fn q1(events: &[Event]) -> Vec<Q1> {
    bids(events)
        .map(|b| Q1 {
            auction: b.auction,
            bidder: b.bidder,
            price_milli: b.price * 908,
            date_time: b.date_time,
            extra: b.extra.clone(),
        })
        .collect()
}

pub fn q2(events: &[Event]) -> Vec<(u64, u64)> {
    bids(events)
        .filter(|b| b.auction % 123 == 0)
        .map(|b| (b.auction, b.price))
        .collect()
}

pub fn q14(events: &[Event]) -> Vec<Q14> {
    bids(events)
        .filter(|b| {
            let euros = b.price as f64 * 0.908;
            euros > 1_000_000.0 && euros < 50_000_000.0
        })
        .map(|b| {
            let h = util::hour(b.date_time);
            Q14 {
                auction: b.auction,
                bidder: b.bidder,
                price_milli: b.price * 908,
                bid_time_type: match h {
                    8..=18 => "dayTime",
                    0..=6 | 20.. => "nightTime",
                    _ => "otherTime",
                }
                .to_string(),
                date_time: b.date_time,
                extra: b.extra.clone(),
                c_counts: b.extra.matches('c').count() as u64,
            }
        })
        .collect()
}

pub fn q21(events: &[Event]) -> Vec<Q21> {
    bids(events)
        .filter_map(|b| {
            let id = match b.channel.to_lowercase().as_str() {
                "apple" => "0".to_string(),
                "google" => "1".to_string(),
                "facebook" => "2".to_string(),
                "baidu" => "3".to_string(),
                _ => util::channel_id(&b.url)?.to_string(),
            };
            Some(Q21 {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price,
                channel: b.channel.clone(),
                channel_id: id,
            })
        })
        .collect()
}

pub fn q22(events: &[Event]) -> Vec<Q22> {
    bids(events)
        .map(|b| {
            let parts: Vec<&str> = b.url.split('/').collect();
            let dir = |i: usize| parts.get(i).map(|s| s.to_string());
            Q22 {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price,
                channel: b.channel.clone(),
                dir1: dir(3),
                dir2: dir(4),
                dir3: dir(5),
            }
        })
        .collect()
}
