//! The Nexmark events: people, auctions and bids of an online auction.
//!
//! The generator's own types, with `u64` fields, an order (so results can
//! be compared and ranked) and serde.

use serde::{Deserialize, Serialize};

/// A person who sells or bids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    /// A US state, in lowercase (`or`, `id`, `ca`, ...).
    pub state: String,
    /// ms since the UNIX epoch.
    pub date_time: u64,
    pub extra: String,
}

/// An item put up for auction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: u64,
    pub reserve: u64,
    /// When it opens, ms since the UNIX epoch.
    pub date_time: u64,
    /// When it closes.
    pub expires: u64,
    pub seller: u64,
    pub category: u64,
    pub extra: String,
}

/// A bid on an auction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
    /// ms since the UNIX epoch.
    pub date_time: u64,
    pub extra: String,
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// Its event time, ms since the UNIX epoch.
    pub fn time(&self) -> u64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// The bid, if it is one.
    pub fn bid(self) -> Option<Bid> {
        match self {
            Event::Bid(b) => Some(b),
            _ => None,
        }
    }

    /// The auction, if it is one.
    pub fn auction(self) -> Option<Auction> {
        match self {
            Event::Auction(a) => Some(a),
            _ => None,
        }
    }

    /// The person, if it is one.
    pub fn person(self) -> Option<Person> {
        match self {
            Event::Person(p) => Some(p),
            _ => None,
        }
    }
}

fn id(v: usize) -> u64 {
    v as u64
}

impl From<nexmark::event::Event> for Event {
    fn from(e: nexmark::event::Event) -> Self {
        match e {
            nexmark::event::Event::Person(p) => Event::Person(Person {
                id: id(p.id),
                name: p.name,
                email_address: p.email_address,
                credit_card: p.credit_card,
                city: p.city,
                state: p.state,
                date_time: p.date_time,
                extra: p.extra,
            }),
            nexmark::event::Event::Auction(a) => Event::Auction(Auction {
                id: id(a.id),
                item_name: a.item_name,
                description: a.description,
                initial_bid: id(a.initial_bid),
                reserve: id(a.reserve),
                date_time: a.date_time,
                expires: a.expires,
                seller: id(a.seller),
                category: id(a.category),
                extra: a.extra,
            }),
            nexmark::event::Event::Bid(b) => Event::Bid(Bid {
                auction: id(b.auction),
                bidder: id(b.bidder),
                price: id(b.price),
                channel: b.channel,
                url: b.url,
                date_time: b.date_time,
                extra: b.extra,
            }),
        }
    }
}
