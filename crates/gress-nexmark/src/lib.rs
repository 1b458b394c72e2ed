//! The Nexmark benchmark on gress-stream.
//!
//! Nexmark models an online auction: people join, open auctions and bid
//! on them. [`NexmarkSource`] generates the standard events (with the
//! `nexmark` crate, RisingWave's generator) as a partitioned, replayable
//! source with event time; [`queries`] holds every query of the suite,
//! q0-q22, each a function from the event stream to its output stream
//! written with the public gress-stream API. Queries whose results change
//! as events arrive (q4, q6, q9, q15-q19) emit a changelog of
//! [`gress_stream::Change`]s.
//!
//! ```
//! use std::sync::Arc;
//! use gress_nexmark::{NexmarkSettings, events, queries::stateless::q2};
//! use gress_stream::{CollectSink, JobConfig, run};
//!
//! let out = Arc::new(parking_lot::Mutex::new(Vec::new()));
//! let sink = out.clone();
//! let settings = NexmarkSettings::new(20_000, 2);
//! run(JobConfig::new("q2").with_workers(2), move |job| {
//!     q2(events(job, "events", &settings)?).sink("out", CollectSink::new(sink.clone()))
//! })?;
//! assert!(out.lock().iter().all(|(auction, _)| auction % 123 == 0));
//! # Ok::<(), gress_stream::Error>(())
//! ```

pub mod event;
pub mod queries;
mod run;
mod source;
pub mod util;

pub use event::{Auction, Bid, Event, Person};
pub use run::{CountSink, QUERIES, Query};
pub use source::{BASE_TIME, FLINK_RATE, NexmarkSettings, NexmarkSource, events};
