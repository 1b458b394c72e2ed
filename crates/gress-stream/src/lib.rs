//! Stateful stream processing on timely dataflow, with keyed state in
//! gress-state backends and exactly-once checkpoints through
//! gress-checkpoint.
//!
//! A job is built on every worker by the same closure: sources, stateless
//! operators, `key_by`, keyed operators with typed state and timers, and
//! sinks. Timely runs it on several threads (and processes); this crate adds
//! keyed state, timers, watermarks, and epochs that are cut, checkpointed
//! and committed so that recovery resumes exactly where the last committed
//! epoch left off.
//!
//! ```
//! use gress_stream::{CollectSink, Collected, GeneratorSource, JobConfig, run};
//!
//! let out = Collected::new();
//! let sink_out = out.clone();
//! run(JobConfig::new("counts").with_workers(2), move |job| {
//!     job.source("numbers", GeneratorSource::new(2, Some(100), |p, i| (p as u64 * 100 + i) % 7))?
//!         .key_by(|n| *n)
//!         .count("count")
//!         .sink("out", CollectSink::new(&sink_out))
//! })?;
//! assert_eq!(out.len(), 200);
//! # Ok::<(), gress_stream::Error>(())
//! ```
//!
//! This crate does not depend on RocksDB: the application chooses each
//! worker's backend with a [`BackendFactory`].

mod agree;
mod builder;
mod changelog;
pub mod cluster;
mod codec;
mod commit;
mod config;
mod context;
mod control;
mod data;
mod error;
mod handle;
mod history;
pub mod keys;
mod location;
mod operators;
mod recovery;
mod rescale;
mod run;
pub mod savepoint;
mod sink;
mod source;
mod state;
mod status;
mod stream;
pub mod telemetry;
mod time;
mod timers;
pub(crate) mod worker;

pub use builder::JobBuilder;
pub use changelog::{Change, ChangelogTable, MalformedChange};
pub use codec::{Codec, Postcard};
pub use config::{
    BackendFactory, CACHE_SHARE, CheckpointStorage, DEFAULT_CACHE_BYTES, EpochPolicy, IntoBackend,
    JobConfig, MIN_MEMORY, OpenStorage, RECORDS_SHARE, UNCOUNTED_SHARE,
};
pub use context::{ProcessingContext, Timer};
pub use control::{
    CheckpointStatus, JobState, JobStatus, RestartPolicy, SavepointStatus, WorkerStatus,
};
pub use data::{Data, Key};
pub use error::{Error, Result};
pub use gress_checkpoint::S3Config;
pub use handle::{JobHandle, start};
pub use history::{COMMITS, CommitRecord, commits, latest_commit};
pub use keys::TimeDomain;
pub use operators::connect::CoInput;
pub use operators::keyed::{Either, KeyedProcessFunction};
pub use operators::updating::{Ranked, RetractingAggregate};
pub use operators::window::{Window, WindowAssigner, WindowResult, WindowedStream};
pub use run::{JobReport, run};
pub use savepoint::SavepointInfo;
pub use sink::{CollectSink, Collected, FileSink, PartitionedFileSink, Sink, SinkJob};
pub use source::{FileSource, GeneratorSource, PartitionReader, Poll, Source};
pub use state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, CacheStats, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    StateStore, StateTtl, TtlUpdate, ValueState, ValueStateDescriptor,
};
pub use stream::{DataStream, KeyedStream};
pub use worker::EpochCheckpoint;
