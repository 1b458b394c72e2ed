//! Kafka source and sink for gress-stream.
//!
//! [`KafkaSource`] reads a topic's partitions as the job's source
//! partitions, committed records only (`read_committed`, through
//! librdkafka): the job assigns them to workers (no consumer group, no
//! rebalancing), and the offset of each is kept in the job's checkpoints,
//! so a recovery, or a rescale, resumes every partition at the offset of
//! the committed epoch. With [`KafkaConfig::with_group`], the offsets of
//! each committed epoch are also committed to that consumer group, for the
//! tools that watch consumer lag: the group is never joined, and a job
//! never reads where to resume from it ([`group_offsets`] reads them back).
//!
//! [`KafkaSink`] is **at-least-once**: an epoch's records are produced (and
//! acknowledged) when the epoch is sealed, before it commits. After a
//! failure the epochs after the committed one are replayed and their
//! records produced again. A transaction per epoch would not make it
//! exactly once: a Kafka transaction does not survive its producer, so one
//! left open by a process that died after the job committed the epoch is
//! aborted by the restarted producer, losing that output. Give records
//! idempotent keys (for example the key and its newest value, on a
//! compacted topic): each replayed record is a copy of one produced
//! before, in the same partition (the partition is a fixed-seed hash of
//! the key), so the last record of every key is right. Each record carries a `gress-epoch` header.
//!
//! ```no_run
//! use gress_kafka::{KafkaConfig, KafkaSink, KafkaSource};
//! use gress_stream::{JobConfig, run};
//!
//! let config = KafkaConfig::new(["127.0.0.1:9092"]);
//! let (input, output) = (config.clone(), config);
//! run(JobConfig::new("counts").with_workers(2), move |job| {
//!     let source = KafkaSource::new(input.clone(), "events", |r| {
//!         r.value.ok_or_else(|| "a record without a value".to_string())
//!     })?;
//!     job.source("events", source)?
//!         .key_by(|v: &Vec<u8>| v.clone())
//!         .count("count")
//!         .sink("counts", KafkaSink::new(output.clone(), "counts", |(key, n): &(Vec<u8>, u64)| {
//!             (Some(key.clone()), n.to_string().into_bytes())
//!         }))
//! })?;
//! # Ok::<(), gress_stream::Error>(())
//! ```

mod group;
mod sink;
mod source;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rskafka::client::{Client, ClientBuilder};

pub use group::group_offsets;
pub use sink::{EPOCH_HEADER, KafkaSink};
pub use source::{KafkaRecord, KafkaSource};

/// Where the brokers are, and how to talk to them.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Longest a broker holds a source's fetch open waiting for records.
    /// Fetching runs on librdkafka's threads, ahead of the job: a poll of
    /// the source never waits for the brokers.
    pub fetch_wait: Duration,
    /// Most bytes one fetch returns.
    pub fetch_max_bytes: i32,
    /// Longest any request to the brokers may take before it fails.
    pub timeout: Duration,
    /// The consumer group a source commits its committed offsets to, for
    /// monitoring; none by default.
    pub group: Option<String>,
}

impl KafkaConfig {
    /// Brokers at `brokers`, with defaults: 50 ms fetch wait, 4 MiB
    /// fetches, 30 s timeout.
    pub fn new<S: Into<String>>(brokers: impl IntoIterator<Item = S>) -> Self {
        KafkaConfig {
            brokers: brokers.into_iter().map(Into::into).collect(),
            fetch_wait: Duration::from_millis(50),
            fetch_max_bytes: 4 << 20,
            timeout: Duration::from_secs(30),
            group: None,
        }
    }

    /// Commits a source's offsets to consumer group `group` each time the
    /// job commits an epoch (best effort: a failure is logged, the job goes
    /// on). Offsets committed to Kafka are for monitoring only: recovery
    /// resumes from the job's checkpoints.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
}

/// The runtime every Kafka client of this process runs on: the source and
/// the sink are called from timely's worker threads, which block on it.
fn runtime() -> gress_stream::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("gress-kafka")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| source_error("kafka", format!("cannot start the Kafka runtime: {e}")))
}

/// Runs `fut` to completion within `timeout`.
fn block_on<T, E: std::fmt::Display>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    match rt.block_on(async { tokio::time::timeout(timeout, fut).await }) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {timeout:?}")),
    }
}

/// A client connected to the brokers of `config`.
fn connect(config: &KafkaConfig) -> std::result::Result<Arc<Client>, String> {
    if config.brokers.is_empty() {
        return Err("no broker given".into());
    }
    let brokers = config.brokers.clone();
    let client = block_on(
        config.timeout,
        &format!("connecting to {}", brokers.join(",")),
        ClientBuilder::new(brokers.clone()).build(),
    )?;
    Ok(Arc::new(client))
}

/// The number of partitions of `topic`.
fn partitions_of(client: &Client, config: &KafkaConfig, topic: &str) -> Result<usize, String> {
    let topics = block_on(config.timeout, "listing topics", client.list_topics())?;
    let found = topics.iter().find(|t| t.name == topic);
    match found {
        Some(t) if !t.partitions.is_empty() => {
            // Partitions are numbered 0..n; a gap would be a topic this
            // source cannot map onto job partitions.
            let n = t.partitions.len();
            if t.partitions.iter().copied().eq(0..n as i32) {
                Ok(n)
            } else {
                Err(format!(
                    "topic `{topic}` has partitions {:?}, not 0..{n}",
                    t.partitions
                ))
            }
        }
        Some(_) => Err(format!("topic `{topic}` has no partitions")),
        None => Err(format!("no topic `{topic}` on the brokers")),
    }
}

fn source_error(topic: &str, reason: impl Into<String>) -> gress_stream::Error {
    gress_stream::Error::Source {
        source_name: format!("kafka:{topic}"),
        reason: reason.into(),
    }
}

fn sink_error(topic: &str, reason: impl Into<String>) -> gress_stream::Error {
    gress_stream::Error::Sink {
        sink: format!("kafka:{topic}"),
        reason: reason.into(),
    }
}
