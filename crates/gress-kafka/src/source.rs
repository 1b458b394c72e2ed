//! Reading a topic's partitions as a job's source partitions.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use gress_stream::{Data, PartitionReader, Poll, Source};
use rskafka::client::Client;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};

use crate::group::GroupReporter;
use crate::{KafkaConfig, block_on, connect, partitions_of, source_error};

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
/// Unbounded by default: a partition with no new records is idle, never
/// ended. [`KafkaSource::bounded`] ends each partition at the end it has
/// when first read.
pub struct KafkaSource<T> {
    config: KafkaConfig,
    topic: String,
    client: Arc<Client>,
    partitions: usize,
    bounded: bool,
    decode: Decode<T>,
    /// Commits offsets to the configured consumer group.
    group: Option<Rc<GroupReporter>>,
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
            client,
            partitions,
            bounded: false,
            decode: Arc::new(decode),
            group,
        })
    }

    /// Ends each partition at its high watermark as first read (the
    /// records it held then), for jobs over what a topic holds.
    pub fn bounded(mut self) -> Self {
        self.bounded = true;
        self
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
        let p = i32::try_from(partition)
            .map_err(|_| source_error(&topic, format!("partition {partition} out of range")))?;
        i64::try_from(offset)
            .map_err(|_| source_error(&topic, format!("offset {offset} out of range")))?;
        let client = block_on(
            self.config.timeout,
            &format!("opening partition {partition}"),
            self.client
                .partition_client(topic.clone(), p, UnknownTopicHandling::Error),
        )
        .map_err(|e| source_error(&topic, e))?;
        Ok(Box::new(Reader {
            config: self.config.clone(),
            topic,
            partition,
            client,
            next: offset,
            end: None,
            bounded: self.bounded,
            buffered: VecDeque::new(),
            decode: Arc::clone(&self.decode),
            group: self.group.clone(),
        }))
    }
}

/// One partition being read.
struct Reader<T> {
    config: KafkaConfig,
    topic: String,
    partition: usize,
    client: PartitionClient,
    /// Offset of the next record to hand out.
    next: u64,
    /// Where a bounded partition ends (set by the first fetch).
    end: Option<u64>,
    bounded: bool,
    /// Fetched, not yet handed out.
    buffered: VecDeque<KafkaRecord>,
    decode: Decode<T>,
    group: Option<Rc<GroupReporter>>,
}

impl<T: Data> Reader<T> {
    /// Fetches what follows the buffered records.
    fn fetch(&mut self) -> gress_stream::Result<()> {
        let from = self.buffered.back().map_or(self.next, |r| r.offset + 1);
        let wait_ms = i32::try_from(self.config.fetch_wait.as_millis()).unwrap_or(i32::MAX);
        let (records, high_watermark) = block_on(
            self.config.timeout,
            &format!("fetching partition {} at {from}", self.partition),
            self.client
                .fetch_records(from as i64, 1..self.config.fetch_max_bytes.max(1), wait_ms),
        )
        .map_err(|e| source_error(&self.topic, e))?;
        if self.bounded && self.end.is_none() {
            self.end = Some(u64::try_from(high_watermark).unwrap_or(0));
        }
        for r in records {
            // A fetch may start at the beginning of a batch before `from`.
            let Ok(offset) = u64::try_from(r.offset) else {
                continue;
            };
            if offset < from {
                continue;
            }
            self.buffered.push_back(KafkaRecord {
                partition: self.partition,
                offset,
                key: r.record.key,
                value: r.record.value,
                timestamp_ms: r.record.timestamp.timestamp_millis(),
            });
        }
        Ok(())
    }
}

impl<T: Data> PartitionReader<T> for Reader<T> {
    fn poll(&mut self, max: usize, out: &mut Vec<T>) -> gress_stream::Result<Poll> {
        if self.end.is_some_and(|end| self.next >= end) {
            return Ok(Poll::End);
        }
        if self.buffered.is_empty() {
            self.fetch()?;
        }
        let mut handed = 0;
        while handed < max {
            if self.end.is_some_and(|end| self.next >= end) {
                return Ok(Poll::End);
            }
            let Some(record) = self.buffered.pop_front() else {
                break;
            };
            let offset = record.offset;
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
        if self.end.is_some_and(|end| self.next >= end) {
            return Ok(Poll::End);
        }
        Ok(if handed == 0 { Poll::Idle } else { Poll::Ready })
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
