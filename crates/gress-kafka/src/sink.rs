//! Writing a stream to a topic, at least once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gress_stream::Sink;
use rskafka::client::Client;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;

use crate::{KafkaConfig, block_on, connect, partitions_of, sink_error};

type Encode<T> = Arc<dyn Fn(&T) -> (Option<Vec<u8>>, Vec<u8>)>;

/// The header naming the epoch that produced a record.
pub const EPOCH_HEADER: &str = "gress-epoch";

/// A topic as a sink, at least once (see the crate's documentation): the
/// records of an epoch are produced when the epoch is sealed, and produced
/// again if the job fails before the epoch commits. `encode` gives each
/// record's key and value. A record with a key goes to the partition of a
/// fixed-seed hash of the key, so the copies of a key's records, replays
/// included, stay in one partition in order; a record without one goes to
/// the partition of the worker that writes it.
pub struct KafkaSink<T> {
    config: KafkaConfig,
    topic: String,
    encode: Encode<T>,
    worker: usize,
    client: Option<Arc<Client>>,
    partitions: Vec<PartitionClient>,
    /// Records of epochs not yet sealed.
    pending: BTreeMap<u64, Vec<T>>,
}

impl<T> std::fmt::Debug for KafkaSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .field("worker", &self.worker)
            .field("partitions", &self.partitions.len())
            .finish_non_exhaustive()
    }
}

impl<T> KafkaSink<T> {
    /// Writes to `topic` (which must exist) through the brokers of
    /// `config`; connects when the job opens it.
    pub fn new(
        config: KafkaConfig,
        topic: impl Into<String>,
        encode: impl Fn(&T) -> (Option<Vec<u8>>, Vec<u8>) + 'static,
    ) -> Self {
        KafkaSink {
            config,
            topic: topic.into(),
            encode: Arc::new(encode),
            worker: 0,
            client: None,
            partitions: Vec::new(),
            pending: BTreeMap::new(),
        }
    }
}

/// The partition of a record key: the same in every process and run.
fn partition_of_key(key: &[u8], partitions: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(key) % partitions as u64) as usize
}

impl<T: 'static> Sink<T> for KafkaSink<T> {
    fn open(&mut self, worker: usize, _committed: Option<u64>) -> gress_stream::Result<()> {
        // Nothing to settle: what earlier runs produced is in the topic,
        // and epochs after the committed one are produced again.
        self.worker = worker;
        let topic = self.topic.clone();
        let client = connect(&self.config).map_err(|e| sink_error(&topic, e))?;
        let n = partitions_of(&client, &self.config, &topic).map_err(|e| sink_error(&topic, e))?;
        let mut partitions = Vec::with_capacity(n);
        for p in 0..n as i32 {
            let pc = block_on(
                self.config.timeout,
                &format!("opening partition {p}"),
                client.partition_client(topic.clone(), p, UnknownTopicHandling::Error),
            )
            .map_err(|e| sink_error(&topic, e))?;
            partitions.push(pc);
        }
        self.client = Some(client);
        self.partitions = partitions;
        Ok(())
    }

    fn write_epoch(&mut self, epoch: u64, records: Vec<T>) -> gress_stream::Result<()> {
        self.pending.entry(epoch).or_default().extend(records);
        Ok(())
    }

    fn seal_epoch(&mut self, epoch: u64) -> gress_stream::Result<()> {
        let Some(records) = self.pending.remove(&epoch) else {
            return Ok(());
        };
        if self.partitions.is_empty() {
            return Err(sink_error(&self.topic, "written before it was opened"));
        }
        let n = self.partitions.len();
        let timestamp = chrono::Utc::now();
        let headers = BTreeMap::from([(EPOCH_HEADER.to_string(), epoch.to_string().into_bytes())]);
        let mut by_partition: HashMap<usize, Vec<Record>> = HashMap::new();
        for record in &records {
            let (key, value) = (self.encode)(record);
            let p = match &key {
                Some(k) => partition_of_key(k, n),
                None => self.worker % n,
            };
            by_partition.entry(p).or_default().push(Record {
                key,
                value: Some(value),
                headers: headers.clone(),
                timestamp,
            });
        }
        for (p, records) in by_partition {
            // Bounded batches: a broker refuses requests over its limit.
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let mut batch = Vec::new();
                let mut bytes = 0;
                while let Some(r) = records.next_if(|_| bytes < 512 << 10) {
                    bytes += r.approximate_size();
                    batch.push(r);
                }
                block_on(
                    self.config.timeout,
                    &format!("producing epoch {epoch} to partition {p}"),
                    self.partitions[p].produce(batch, Compression::NoCompression),
                )
                .map_err(|e| sink_error(&self.topic, e))?;
            }
        }
        Ok(())
    }

    fn commit(&mut self, _epoch: u64) -> gress_stream::Result<()> {
        // Produced and acknowledged at the seal: nothing more to do.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_has_one_partition_everywhere() {
        // Fixed values: every process, and every release, must agree.
        assert_eq!(
            partition_of_key(b"user-1", 4),
            partition_of_key(b"user-1", 4)
        );
        let spread: std::collections::BTreeSet<_> = (0..64u32)
            .map(|i| partition_of_key(&i.to_be_bytes(), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
