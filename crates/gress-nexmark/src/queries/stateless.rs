//! Queries without state: q0, q1, q2, q10, q13, q14, q21, q22.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use gress_stream::{DataStream, Error, Result};
use serde::{Deserialize, Serialize};

use crate::event::{Bid, Event};
use crate::util;

/// The bids of the event stream.
pub fn bids<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Bid> {
    events.flat_map(Event::bid)
}

/// A bid without its channel and url (q0's columns).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q0 {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub date_time: u64,
    pub extra: String,
}

impl From<Bid> for Q0 {
    fn from(b: Bid) -> Self {
        Q0 {
            auction: b.auction,
            bidder: b.bidder,
            price: b.price,
            date_time: b.date_time,
            extra: b.extra,
        }
    }
}

/// q0, pass-through: every bid.
pub fn q0<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q0> {
    bids(events).map(Q0::from)
}

/// q1's row: the price in euros, as thousandths (`0.908 * price`, exact).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q1 {
    pub auction: u64,
    pub bidder: u64,
    /// Euros × 1000 (a `DECIMAL(23, 3)` as an integer).
    pub price_milli: u64,
    pub date_time: u64,
    pub extra: String,
}

/// q1, currency conversion: each bid's price in euros.
pub fn q1<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q1> {
    bids(events).map(|b| Q1 {
        auction: b.auction,
        bidder: b.bidder,
        price_milli: b.price.saturating_mul(908),
        date_time: b.date_time,
        extra: b.extra,
    })
}

/// q2, selection: `(auction, price)` of the bids on every 123rd auction.
pub fn q2<'s>(events: DataStream<'s, Event>) -> DataStream<'s, (u64, u64)> {
    events.flat_map(|e| match e {
        Event::Bid(b) if b.auction % 123 == 0 => Some((b.auction, b.price)),
        _ => None,
    })
}

/// q10's row: a bid with its day and minute, the partition it is written
/// to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q10 {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub date_time: u64,
    pub extra: String,
    /// `yyyy-MM-dd`.
    pub dt: String,
    /// `HH:mm`.
    pub hm: String,
}

impl Q10 {
    /// The partition of a row: `dt=<day>/hm=<HH-mm>`.
    pub fn partition(&self) -> String {
        format!("dt={}/hm={}", self.dt, self.hm.replace(':', "-"))
    }
}

/// q10, log to a file system: every bid with its day and minute, to be
/// written to a [`gress_stream::PartitionedFileSink`] partitioned by
/// [`Q10::partition`].
pub fn q10<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q10> {
    let mut days = util::DayCache::default();
    bids(events).map(move |b| Q10 {
        dt: days.day(b.date_time),
        hm: util::hour_minute(b.date_time),
        auction: b.auction,
        bidder: b.bidder,
        price: b.price,
        date_time: b.date_time,
        extra: b.extra,
    })
}

/// q13's side input: `key,value` lines of a bounded file.
#[derive(Debug, Clone, Default)]
pub struct SideInput(Arc<HashMap<u64, String>>);

impl SideInput {
    /// Reads the file: one `key,value` per line.
    pub fn load(path: &Path) -> Result<Self> {
        let fail = |reason: String| Error::Source {
            source_name: format!("side input {}", path.display()),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once(',')
                .ok_or_else(|| fail(format!("line {} has no comma: {line:?}", i + 1)))?;
            let k: u64 = k
                .trim()
                .parse()
                .map_err(|e| fail(format!("line {}: key {k:?}: {e}", i + 1)))?;
            map.insert(k, v.to_string());
        }
        Ok(SideInput(Arc::new(map)))
    }

    /// Writes a side input of keys `0..n`, each with the value `n<key>`.
    pub fn write(path: &Path, n: u64) -> std::io::Result<()> {
        let mut text = String::new();
        for k in 0..n {
            text.push_str(&format!("{k},n{k}\n"));
        }
        std::fs::write(path, text)
    }

    /// The value of `key`.
    pub fn get(&self, key: u64) -> Option<&String> {
        self.0.get(&key)
    }
}

/// q13's row: a bid with the side input's value for its auction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q13 {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub date_time: u64,
    pub value: String,
}

/// q13, bounded side input join: each bid with the side input's value of
/// `auction % 10000` (bids without one are dropped, an inner join).
pub fn q13<'s>(events: DataStream<'s, Event>, side: SideInput) -> DataStream<'s, Q13> {
    bids(events).flat_map(move |b| {
        side.get(b.auction % 10_000).map(|v| Q13 {
            auction: b.auction,
            bidder: b.bidder,
            price: b.price,
            date_time: b.date_time,
            value: v.clone(),
        })
    })
}

/// q14's row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q14 {
    pub auction: u64,
    pub bidder: u64,
    /// Euros × 1000.
    pub price_milli: u64,
    /// `dayTime`, `nightTime` or `otherTime`.
    pub bid_time_type: String,
    pub date_time: u64,
    pub extra: String,
    /// How many `c`s `extra` holds.
    pub c_counts: u64,
}

/// q14, calculation: bids between 1M and 50M euros, with the time of day
/// (UTC) and a count of `c`s.
pub fn q14<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q14> {
    events.flat_map(|e| {
        let b = e.bid()?;
        let milli = b.price.saturating_mul(908);
        if !(milli > 1_000_000_000 && milli < 50_000_000_000) {
            return None;
        }
        let h = util::hour(b.date_time);
        let kind = if (8..=18).contains(&h) {
            "dayTime"
        } else if h <= 6 || h >= 20 {
            "nightTime"
        } else {
            "otherTime"
        };
        Some(Q14 {
            auction: b.auction,
            bidder: b.bidder,
            price_milli: milli,
            bid_time_type: kind.to_string(),
            date_time: b.date_time,
            c_counts: util::count_char(&b.extra, 'c'),
            extra: b.extra,
        })
    })
}

/// q21's row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q21 {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub channel_id: String,
}

/// q21, add channel id: the known channels' ids, else the url's
/// `channel_id`; bids with neither are dropped.
pub fn q21<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q21> {
    events.flat_map(|e| {
        let b = e.bid()?;
        let known = match b.channel.to_lowercase().as_str() {
            "apple" => Some("0"),
            "google" => Some("1"),
            "facebook" => Some("2"),
            "baidu" => Some("3"),
            _ => None,
        };
        let id = match known {
            Some(id) => id.to_string(),
            None => util::channel_id(&b.url)?.to_string(),
        };
        Some(Q21 {
            auction: b.auction,
            bidder: b.bidder,
            price: b.price,
            channel: b.channel,
            channel_id: id,
        })
    })
}

/// q22's row: the first three directories of a bid's url.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Q22 {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub dir1: Option<String>,
    pub dir2: Option<String>,
    pub dir3: Option<String>,
}

/// q22, get url directories.
pub fn q22<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Q22> {
    bids(events).map(|b| {
        let dir = |i| util::split_index(&b.url, i).map(str::to_string);
        Q22 {
            dir1: dir(3),
            dir2: dir(4),
            dir3: dir(5),
            auction: b.auction,
            bidder: b.bidder,
            price: b.price,
            channel: b.channel,
        }
    })
}
