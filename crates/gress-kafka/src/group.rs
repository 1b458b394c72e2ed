//! Reporting a job's committed offsets to a Kafka consumer group.
//!
//! Where a job resumes is in its checkpoints; the group's offsets are a copy
//! for the tools that watch consumer lag (`kafka-consumer-groups
//! --describe`, lag exporters). The group is never joined: partitions are
//! assigned by the job, and offsets are committed as a standalone consumer
//! does (no generation, no member id).

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::KafkaConfig;

/// A consumer of `group` that never subscribes.
fn consumer(config: &KafkaConfig, group: &str) -> Result<BaseConsumer, String> {
    if config.brokers.is_empty() {
        return Err("no broker given".into());
    }
    let timeout_ms = config.timeout.as_millis().clamp(1, i32::MAX as u128);
    ClientConfig::new()
        .set("bootstrap.servers", config.brokers.join(","))
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("socket.timeout.ms", timeout_ms.to_string())
        .create()
        .map_err(|e| format!("cannot create a client of consumer group `{group}`: {e}"))
}

/// Commits the offsets readers send, newest per partition, from a thread of
/// its own: a reader only queues them, it never waits for the brokers.
#[derive(Debug)]
pub(crate) struct GroupReporter {
    tx: Option<mpsc::Sender<(i32, i64)>>,
    /// Signalled when the thread has committed the last offsets.
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl GroupReporter {
    pub(crate) fn start(config: &KafkaConfig, group: &str, topic: &str) -> Result<Self, String> {
        let consumer = consumer(config, group)?;
        let (tx, rx) = mpsc::channel::<(i32, i64)>();
        let (done_tx, done) = mpsc::channel();
        let (topic, group) = (topic.to_string(), group.to_string());
        let thread = std::thread::Builder::new()
            .name("gress-kafka-group".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut newest = BTreeMap::from([first]);
                    newest.extend(rx.try_iter());
                    let mut list = TopicPartitionList::new();
                    for (&p, &offset) in &newest {
                        if let Err(e) = list.add_partition_offset(&topic, p, Offset::Offset(offset))
                        {
                            tracing::warn!(%topic, partition = p, error = %e, "cannot list an offset to commit");
                        }
                    }
                    if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                        tracing::warn!(%topic, %group, error = %e, "could not commit offsets to the consumer group");
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the offset reporter: {e}"))?;
        Ok(GroupReporter {
            tx: Some(tx),
            done,
            thread: Some(thread),
            timeout: config.timeout,
        })
    }

    /// Queues `offset` (the next record to read) of `partition`.
    pub(crate) fn report(&self, partition: i32, offset: u64) {
        if let (Some(tx), Ok(offset)) = (&self.tx, i64::try_from(offset)) {
            let _ = tx.send((partition, offset));
        }
    }
}

impl Drop for GroupReporter {
    /// Lets the thread commit what is queued, waiting at most the
    /// configured timeout (a job must not hang on its monitoring).
    fn drop(&mut self) {
        self.tx = None;
        if self.done.recv_timeout(self.timeout).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

/// The offsets committed to `config`'s consumer group for `topic`'s
/// partitions `0..partitions`: partition -> the next offset to read (absent
/// where the group committed nothing).
pub fn group_offsets(
    config: &KafkaConfig,
    topic: &str,
    partitions: usize,
) -> gress_stream::Result<BTreeMap<usize, u64>> {
    let fail = |reason: String| crate::source_error(topic, reason);
    let group = config
        .group
        .as_deref()
        .ok_or_else(|| fail("no consumer group configured (KafkaConfig::with_group)".into()))?;
    let consumer = consumer(config, group).map_err(fail)?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        let p = i32::try_from(p).map_err(|_| fail(format!("partition {p} out of range")))?;
        list.add_partition(topic, p);
    }
    let list = consumer
        .committed_offsets(list, config.timeout)
        .map_err(|e| fail(format!("cannot read the offsets of group `{group}`: {e}")))?;
    Ok(list
        .elements_for_topic(topic)
        .iter()
        .filter_map(|e| match (usize::try_from(e.partition()), e.offset()) {
            (Ok(p), Offset::Offset(o)) => Some((p, u64::try_from(o).ok()?)),
            _ => None,
        })
        .collect())
}
