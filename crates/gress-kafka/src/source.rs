//! Reading a topic's partitions as a job's source partitions.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use gress_stream::{Data, PartitionReader, Poll, Source};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::group::GroupReporter;
use crate::{KafkaConfig, connect, partitions_of, source_error};

/// One record read from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    /// Its partition.
    pub partition: usize,
    /// Its offset in the partition.
    pub offset: u64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Its timestamp, ms since the UNIX epoch.
    pub timestamp_ms: i64,
}

type Decode<T> = Arc<dyn Fn(KafkaRecord) -> Result<T, String>>;

/// A topic as a source: job partition `p` is the topic's partition `p`, and
/// a partition's offset in the job's checkpoints is the Kafka offset of the
/// next record to read. Each record is turned into the job's record type
/// by `decode`; a record it refuses fails the job (and is read again by the
/// recovery: fix the decoder or the topic).
///
/// Only committed records are read (`read_committed`): records of aborted
/// transactions are skipped, and a partition is read up to its last stable
/// offset, never into a transaction still open. Reading is done by
/// librdkafka's threads, ahead of the job: a poll never waits for the
/// brokers. An offset that is no longer in the topic (deleted by
/// retention) fails the job rather than skipping data.
///
/// Unbounded by default: a partition with no new records is idle, never
/// ended. [`KafkaSource::bounded`] ends each partition the first time the
/// reader catches up with its last stable offset.
pub struct KafkaSource<T> {
    config: KafkaConfig,
    topic: String,
    partitions: usize,
    bounded: bool,
    decode: Decode<T>,
    /// Commits offsets to the configured consumer group.
    group: Option<Rc<GroupReporter>>,
    /// This worker's consumer, shared by its partitions' readers; made at
    /// the first `open`.
    consumer: Option<Arc<BaseConsumer>>,
}

impl<T> std::fmt::Debug for KafkaSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("bounded", &self.bounded)
            .finish_non_exhaustive()
    }
}

impl<T: Data> KafkaSource<T> {
    /// Connects to the brokers and reads how many partitions `topic` has.
    pub fn new(
        config: KafkaConfig,
        topic: impl Into<String>,
        decode: impl Fn(KafkaRecord) -> Result<T, String> + 'static,
    ) -> gress_stream::Result<Self> {
        let topic = topic.into();
        let client = connect(&config).map_err(|e| source_error(&topic, e))?;
        let partitions =
            partitions_of(&client, &config, &topic).map_err(|e| source_error(&topic, e))?;
        let group = match &config.group {
            Some(group) => Some(Rc::new(
                GroupReporter::start(&config, group, &topic)
                    .map_err(|e| source_error(&topic, e))?,
            )),
            None => None,
        };
        Ok(KafkaSource {
            config,
            topic,
            partitions,
            bounded: false,
            decode: Arc::new(decode),
            group,
            consumer: None,
        })
    }

    /// Ends each partition the first time it is read up to its last stable
    /// offset, for jobs over what a topic holds.
    pub fn bounded(mut self) -> Self {
        self.bounded = true;
        self
    }

    /// The consumer of this worker's partitions: assigned, never
    /// subscribed, committing nothing itself.
    fn consumer(&mut self) -> Result<Arc<BaseConsumer>, String> {
        if let Some(c) = &self.consumer {
            return Ok(Arc::clone(c));
        }
        if self.config.brokers.is_empty() {
            return Err("no broker given".into());
        }
        let ms = |d: Duration| d.as_millis().clamp(1, i32::MAX as u128).to_string();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.config.brokers.join(","))
            // Required by librdkafka for an assignment; never joined.
            .set(
                "group.id",
                self.config.group.as_deref().unwrap_or("gress-source"),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set(
                "enable.partition.eof",
                if self.bounded { "true" } else { "false" },
            )
            .set("auto.offset.reset", "error")
            .set("fetch.wait.max.ms", ms(self.config.fetch_wait))
            .set(
                "fetch.max.bytes",
                self.config.fetch_max_bytes.max(1).to_string(),
            )
            .set("socket.timeout.ms", ms(self.config.timeout))
            .create()
            .map_err(|e| format!("cannot create a consumer: {e}"))?;
        let consumer = Arc::new(consumer);
        self.consumer = Some(Arc::clone(&consumer));
        Ok(consumer)
    }
}

impl<T: Data> Source for KafkaSource<T> {
    type Record = T;

    fn partitions(&self) -> usize {
        self.partitions
    }

    fn open(
        &mut self,
        partition: usize,
        offset: u64,
    ) -> gress_stream::Result<Box<dyn PartitionReader<T>>> {
        let topic = self.topic.clone();
        let fail = |reason: String| source_error(&topic, reason);
        let p = i32::try_from(partition)
            .map_err(|_| fail(format!("partition {partition} out of range")))?;
        let at =
            i64::try_from(offset).map_err(|_| fail(format!("offset {offset} out of range")))?;
        let consumer = self.consumer().map_err(fail)?;
        // Its own queue first, so none of its messages reach the main one.
        let queue = consumer
            .split_partition_queue(&topic, p)
            .ok_or_else(|| fail(format!("no queue for partition {partition}")))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, p, Offset::Offset(at))
            .map_err(|e| fail(format!("partition {partition} at {offset}: {e}")))?;
        consumer
            .incremental_assign(&assignment)
            .map_err(|e| fail(format!("assigning partition {partition} at {offset}: {e}")))?;
        Ok(Box::new(Reader {
            topic,
            partition,
            consumer,
            queue,
            next: offset,
            bounded: self.bounded,
            ended: false,
            decode: Arc::clone(&self.decode),
            group: self.group.clone(),
        }))
    }
}

/// One partition being read.
struct Reader<T> {
    topic: String,
    partition: usize,
    consumer: Arc<BaseConsumer>,
    queue: PartitionQueue<rdkafka::consumer::DefaultConsumerContext>,
    /// Offset of the next record to hand out.
    next: u64,
    bounded: bool,
    ended: bool,
    decode: Decode<T>,
    group: Option<Rc<GroupReporter>>,
}

impl<T> Reader<T> {
    /// Where the consumer stands in this partition now (past transaction
    /// markers and aborted records it skipped).
    fn position(&self) -> Option<u64> {
        let positions = self.consumer.position().ok()?;
        let element = positions.find_partition(&self.topic, self.partition as i32)?;
        match element.offset() {
            Offset::Offset(o) => u64::try_from(o).ok(),
            _ => None,
        }
    }
}

impl<T: Data> PartitionReader<T> for Reader<T> {
    fn poll(&mut self, max: usize, out: &mut Vec<T>) -> gress_stream::Result<Poll> {
        if self.ended {
            return Ok(Poll::End);
        }
        // Serves the consumer's events; its messages all go to the
        // partition queues.
        let _ = self.consumer.poll(Duration::ZERO);
        let mut handed = 0;
        while handed < max {
            let message = match self.queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    if self.bounded {
                        // Caught up with the last stable offset: what it
                        // skipped to get there (markers) is read too.
                        if let Some(p) = self.position() {
                            self.next = self.next.max(p);
                        }
                        self.ended = true;
                        break;
                    }
                    continue;
                }
                Some(Err(e)) => {
                    return Err(source_error(
                        &self.topic,
                        format!("partition {} at offset {}: {e}", self.partition, self.next),
                    ));
                }
            };
            let Ok(offset) = u64::try_from(message.offset()) else {
                continue;
            };
            let record = KafkaRecord {
                partition: self.partition,
                offset,
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
            };
            let value = (self.decode)(record).map_err(|e| {
                source_error(
                    &self.topic,
                    format!(
                        "partition {} offset {offset} cannot be decoded: {e}",
                        self.partition
                    ),
                )
            })?;
            out.push(value);
            self.next = offset + 1;
            handed += 1;
        }
        if handed > 0 {
            return Ok(Poll::Ready);
        }
        Ok(if self.ended { Poll::End } else { Poll::Idle })
    }

    fn offset(&self) -> u64 {
        self.next
    }

    fn committed(&mut self, offset: u64) {
        if let Some(group) = &self.group {
            // The job partition is the topic partition (checked at open).
            group.report(self.partition as i32, offset);
        }
    }
}
