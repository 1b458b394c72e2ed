//! A Kafka-compatible broker on loopback for tests: `tansu` (from
//! crates.io, `cargo install tansu`) with in-memory storage, started on a
//! free port and killed on drop.
//!
//! The binary is `$GRESS_TANSU` if set, else `tansu` on `PATH`, else
//! `~/.cache/gress-tools/bin/tansu` (where `scripts/test` installs it).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{KafkaConfig, block_on, connect};

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    address: String,
}

/// Where the `tansu` binary is.
fn tansu_binary() -> std::io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("GRESS_TANSU") {
        return Ok(PathBuf::from(path));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let candidate = PathBuf::from(home).join(".cache/gress-tools/bin/tansu");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no `tansu` broker: run ./scripts/test (it installs one), or \
         `cargo install tansu --version 0.6.0`, or set GRESS_TANSU",
    ))
}

impl Broker {
    /// Starts a broker and waits until it answers.
    pub fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let child = Command::new(tansu_binary()?)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut broker = Broker { child, address };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = broker.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "tansu exited at start: {status}"
                )));
            }
            if TcpStream::connect(&broker.address).is_ok() && connect(&broker.config()).is_ok() {
                return Ok(broker);
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("tansu did not answer within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `host:port` of the broker.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A configuration for this broker.
    pub fn config(&self) -> KafkaConfig {
        KafkaConfig::new([self.address.clone()])
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        let config = self.config();
        let client = connect(&config)?;
        let controller = client.controller_client().map_err(|e| e.to_string())?;
        block_on(
            config.timeout,
            "creating a topic",
            controller.create_topic(topic, partitions, 1, 5_000),
        )
    }

    /// A client of partition `partition` of `topic` (which must exist).
    fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(KafkaConfig, rskafka::client::partition::PartitionClient), String> {
        let config = self.config();
        let client = connect(&config)?;
        let pc = block_on(
            config.timeout,
            "opening a partition",
            client.partition_client(
                topic.to_string(),
                partition,
                rskafka::client::partition::UnknownTopicHandling::Error,
            ),
        )?;
        Ok((config, pc))
    }

    /// Appends `records` (key, value) to partition `partition` of `topic`,
    /// one record per batch: a fetch from an offset inside a batch of
    /// several records gets, from tansu 0.6, only the batches after it
    /// (Kafka returns the batch that holds the offset), so a source resumed
    /// there would skip records.
    pub fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    ) -> Result<(), String> {
        let (config, pc) = self.partition(topic, partition)?;
        let now = chrono::Utc::now();
        for chunk in records.chunks(1) {
            let batch = chunk
                .iter()
                .map(|(k, v)| rskafka::record::Record {
                    key: k.clone(),
                    value: Some(v.clone()),
                    headers: Default::default(),
                    timestamp: now,
                })
                .collect();
            block_on(
                config.timeout,
                "producing",
                pc.produce(
                    batch,
                    rskafka::client::partition::Compression::NoCompression,
                ),
            )?;
        }
        Ok(())
    }

    /// Starts a transaction of producer `transactional_id` and appends
    /// `values` to partition `partition` of `topic` in it, leaving it open:
    /// the returned producer holds it until dropped or fenced.
    pub fn produce_in_transaction(
        &self,
        transactional_id: &str,
        topic: &str,
        partition: i32,
        values: Vec<Vec<u8>>,
    ) -> Result<rdkafka::producer::BaseProducer, String> {
        use rdkafka::producer::{BaseRecord, Producer};
        let timeout = std::time::Duration::from_secs(20);
        let producer = self.transactional_producer(transactional_id)?;
        producer
            .begin_transaction()
            .map_err(|e| format!("begin_transaction: {e}"))?;
        for v in &values {
            producer
                .send(
                    BaseRecord::<(), [u8]>::to(topic)
                        .partition(partition)
                        .payload(v),
                )
                .map_err(|(e, _)| format!("send: {e}"))?;
        }
        producer.flush(timeout).map_err(|e| format!("flush: {e}"))?;
        Ok(producer)
    }

    /// Aborts the open transaction of `transactional_id` the way a
    /// restarted producer does: a new producer with the same id fences the
    /// old one, and the broker writes an abort marker.
    pub fn abort_by_fencing(&self, transactional_id: &str) -> Result<(), String> {
        self.transactional_producer(transactional_id).map(drop)
    }

    /// A producer of `transactional_id`, its transactions initialized
    /// (which fences any earlier producer of that id).
    fn transactional_producer(
        &self,
        transactional_id: &str,
    ) -> Result<rdkafka::producer::BaseProducer, String> {
        use rdkafka::producer::{BaseProducer, Producer};
        let producer: BaseProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .set("transactional.id", transactional_id)
            .create()
            .map_err(|e| e.to_string())?;
        producer
            .init_transactions(std::time::Duration::from_secs(20))
            .map_err(|e| format!("init_transactions: {e}"))?;
        Ok(producer)
    }

    /// Every record of partition `partition` of `topic`, in order: offset,
    /// key, value and the epoch header.
    #[allow(clippy::type_complexity)]
    pub fn read_all(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Vec<(i64, Option<Vec<u8>>, Vec<u8>, Option<Vec<u8>>)>, String> {
        let (config, pc) = self.partition(topic, partition)?;
        let mut out = Vec::new();
        let mut next = 0i64;
        loop {
            let (records, high) = block_on(
                config.timeout,
                "fetching",
                pc.fetch_records(next, 1..(4 << 20), 100),
            )?;
            for r in records {
                if r.offset < next {
                    continue;
                }
                next = r.offset + 1;
                out.push((
                    r.offset,
                    r.record.key,
                    r.record.value.unwrap_or_default(),
                    r.record.headers.get(crate::sink::EPOCH_HEADER).cloned(),
                ));
            }
            if next >= high {
                return Ok(out);
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
