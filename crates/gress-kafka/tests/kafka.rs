//! A keyed count from a Kafka topic to a Kafka topic, on a `tansu` broker
//! the test starts on loopback. Runs that fail part-way, on 2, 1 and 3
//! workers, each recovering from the previous one's committed epoch, end
//! with what an uninterrupted run gives: every partition read exactly once
//! (the counts are exact), and the output topic holding every running
//! count at least once, with the newest record of every key its final
//! count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gress_kafka::testing::Broker;
use gress_kafka::{KafkaConfig, KafkaRecord, KafkaSink, KafkaSource};

use gress_stream::{
    EpochPolicy, Error, JobConfig, KeyedProcessFunction, ProcessingContext, Result,
    ValueStateDescriptor, run,
};

type R<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const IN_PARTITIONS: i32 = 4;
const OUT_PARTITIONS: i32 = 3;
const PER_PARTITION: u64 = 2_000;
const KEYS: u64 = 97;

fn key_of(p: u64, i: u64) -> u64 {
    (p * 7919 + i * 104_729) % KEYS
}

/// A running count per key; with `fail_at = Some(n)`, fails at its `n`th
/// record of this run once an epoch is committed.
struct Count {
    count: ValueStateDescriptor<u64>,
    fail_at: Option<u64>,
    seen: u64,
    commits: std::path::PathBuf,
}

impl KeyedProcessFunction<u64, u64> for Count {
    type Out = (u64, u64);
    type Side = ();
    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, u64, (u64, u64)>,
        _: u64,
    ) -> Result<()> {
        self.seen += 1;
        if let Some(n) = self.fail_at
            && self.seen >= n
            && std::fs::read_dir(&self.commits).is_ok_and(|mut d| d.next().is_some())
        {
            return Err(Error::Worker("injected failure".into()));
        }
        let mut now = 0;
        ctx.value(&self.count)?.update(|c| {
            now = c.unwrap_or(0) + 1;
            Some(now)
        })?;
        let k = *ctx.key();
        ctx.output((k, now));
        Ok(())
    }
}

fn run_job(config: &KafkaConfig, dir: &Path, workers: usize, fail_at: Option<u64>) -> Result<()> {
    let commits = dir.join("checkpoints").join("commits");
    let job = JobConfig::new("kafka-count")
        .with_workers(workers)
        .with_checkpoint_dir(dir.join("checkpoints"))
        .with_key_groups(16)
        .with_epochs(EpochPolicy::Records(300));
    let (input, output) = (config.clone(), config.clone());
    run(job, move |job| {
        let source = KafkaSource::new(input.clone(), "events", number)?.bounded();
        job.source("events", source)?
            .key_by(|k: &u64| *k)
            .process(
                "count",
                Count {
                    count: ValueStateDescriptor::new("count"),
                    fail_at,
                    seen: 0,
                    commits: commits.clone(),
                },
            )
            .sink(
                "counts",
                KafkaSink::new(output.clone(), "counts", |(k, n): &(u64, u64)| {
                    (Some(k.to_be_bytes().to_vec()), n.to_be_bytes().to_vec())
                }),
            )
    })?;
    Ok(())
}

/// A record whose value is a number in decimal text.
fn number(r: KafkaRecord) -> std::result::Result<u64, String> {
    let value = r.value.ok_or("no value")?;
    let text = String::from_utf8(value).map_err(|e| e.to_string())?;
    text.parse::<u64>().map_err(|e| e.to_string())
}

fn u64_of(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

#[test]
fn a_count_from_kafka_to_kafka_recovers_and_rescales_without_losing_or_changing_a_count() -> R {
    let broker = Broker::start()?;
    broker.create_topic("events", IN_PARTITIONS)?;
    broker.create_topic("counts", OUT_PARTITIONS)?;
    let mut expected_final: BTreeMap<u64, u64> = BTreeMap::new();
    for p in 0..IN_PARTITIONS {
        let records = (0..PER_PARTITION)
            .map(|i| {
                let k = key_of(p as u64, i);
                *expected_final.entry(k).or_default() += 1;
                (None, k.to_string().into_bytes())
            })
            .collect();
        broker.produce("events", p, records)?;
    }
    let expected_pairs: BTreeSet<(u64, u64)> = expected_final
        .iter()
        .flat_map(|(&k, &n)| (1..=n).map(move |c| (k, c)))
        .collect();

    let dir = tempfile::tempdir()?;
    let config = broker.config();
    for (workers, fail_at) in [(2, 1_000), (1, 1_500), (3, 700)] {
        let failed = run_job(&config, dir.path(), workers, Some(fail_at));
        assert!(
            failed.is_err(),
            "{workers} workers: the injected failure stops the job"
        );
    }
    run_job(&config, dir.path(), 2, None)?;

    let mut pairs = BTreeSet::new();
    let mut newest: BTreeMap<u64, u64> = BTreeMap::new();
    let mut produced = 0;
    for p in 0..OUT_PARTITIONS {
        for (_, key, value, epoch) in broker.read_all("counts", p)? {
            let (k, n) = (
                u64_of(&key.ok_or("a record without a key")?),
                u64_of(&value),
            );
            assert!(epoch.is_some(), "a record without its epoch header");
            pairs.insert((k, n));
            newest.insert(k, n);
            produced += 1;
        }
    }
    // At least once: every running count is there, and nothing else is.
    let missing: Vec<_> = expected_pairs.difference(&pairs).take(10).collect();
    let extra: Vec<_> = pairs.difference(&expected_pairs).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} records, {} distinct; missing {missing:?}, unexpected {extra:?}; \
         the newest counts sum to {} of {}",
        produced,
        pairs.len(),
        newest.values().sum::<u64>(),
        expected_final.values().sum::<u64>()
    );
    assert!(produced >= expected_pairs.len());
    // A key's copies stay in order in one partition: its newest record is
    // its final count, as in a run that never failed.
    let wrong: Vec<_> = newest
        .iter()
        .filter(|(k, n)| expected_final.get(k) != Some(n))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "newest count of some keys is not final: {wrong:?}"
    );
    Ok(())
}

#[test]
fn a_missing_topic_or_broker_is_a_clear_error() -> R {
    let broker = Broker::start()?;
    let err = KafkaSource::new(broker.config(), "no-such-topic", |r| Ok(r.offset))
        .expect_err("a missing topic");
    assert!(err.to_string().contains("no-such-topic"), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut config = KafkaConfig::new([format!("127.0.0.1:{port}")]);
    config.timeout = std::time::Duration::from_secs(2);
    let err = KafkaSource::new(config, "events", |r| Ok(r.offset)).expect_err("no broker");
    assert!(matches!(err, Error::Source { .. }), "{err}");
    Ok(())
}

#[test]
fn a_record_the_decoder_refuses_fails_the_job_naming_its_offset() -> R {
    let broker = Broker::start()?;
    broker.create_topic("events", 1)?;
    broker.produce(
        "events",
        0,
        vec![(None, b"1".to_vec()), (None, b"not a number".to_vec())],
    )?;
    let dir = tempfile::tempdir()?;
    let config = broker.config();
    let job = JobConfig::new("decode").with_checkpoint_dir(dir.path().join("checkpoints"));
    let err = run(job, move |job| {
        let source = KafkaSource::new(config.clone(), "events", number)?.bounded();
        job.source("events", source)?
            .key_by(|k: &u64| *k)
            .count("count")
            .sink(
                "out",
                gress_stream::CollectSink::new(gress_stream::Collected::new()),
            )
    })
    .expect_err("a record that cannot be decoded");
    assert!(err.to_string().contains("offset 1"), "{err}");
    Ok(())
}

#[test]
fn committed_offsets_are_reported_to_the_consumer_group() -> R {
    let broker = Broker::start()?;
    broker.create_topic("events", 2)?;
    for p in 0..2 {
        let records = (0..300u64).map(|i| (None, i.to_string().into_bytes()));
        broker.produce("events", p, records.collect())?;
    }
    let config = broker.config().with_group("gress-count");
    assert!(
        gress_kafka::group_offsets(&config, "events", 2)?.is_empty(),
        "nothing committed yet"
    );
    let dir = tempfile::tempdir()?;
    let job = |fail: bool| {
        let config = config.clone();
        let commits = dir.path().join("checkpoints").join("commits");
        let job = JobConfig::new("group")
            .with_workers(2)
            .with_checkpoint_dir(dir.path().join("checkpoints"))
            .with_epochs(EpochPolicy::Records(50));
        run(job, move |job| {
            let source = KafkaSource::new(config.clone(), "events", number)?.bounded();
            job.source("events", source)?
                .key_by(|k: &u64| *k % 7)
                .process(
                    "count",
                    Count {
                        count: ValueStateDescriptor::new("count"),
                        fail_at: fail.then_some(400),
                        seen: 0,
                        commits: commits.clone(),
                    },
                )
                .sink(
                    "out",
                    gress_stream::CollectSink::new(gress_stream::Collected::new()),
                )
        })
    };
    job(true).expect_err("the injected failure stops the job");
    let partial = gress_kafka::group_offsets(&config, "events", 2)?;
    assert!(
        partial.values().all(|&o| o <= 300),
        "offsets past the end: {partial:?}"
    );
    job(false)?;
    let done = gress_kafka::group_offsets(&config, "events", 2)?;
    assert_eq!(done, BTreeMap::from([(0, 300), (1, 300)]));
    // A group without a name is a clear error, not a guess.
    let err = gress_kafka::group_offsets(&broker.config(), "events", 2).expect_err("no group");
    assert!(err.to_string().contains("with_group"), "{err}");
    Ok(())
}

fn bounded_read(config: KafkaConfig, dir: &Path) -> Result<Vec<u64>> {
    let out = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = out.clone();
    let job = JobConfig::new("bounded-read").with_checkpoint_dir(dir.join("checkpoints"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = run(job, move |job| {
            let source = KafkaSource::new(config.clone(), "events", number)?.bounded();
            job.source("events", source)?
                .sink("out", gress_stream::CollectSink::new(sink.clone()))
        });
        let _ = tx.send(result);
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .map_err(|_| Error::Worker("a bounded read never ended".into()))??;
    let mut got = out.lock().clone();
    got.sort_unstable();
    Ok(got)
}

/// Story: the source read uncommitted data and ended a bounded partition
/// at its high watermark, which a transaction still open holds above the
/// last stable offset: the read never ended. It now reads committed
/// records only and ends at the last stable offset: the records of a
/// transaction still open are not read, and the read ends.
#[test]
fn an_open_transaction_is_not_read_and_a_bounded_read_ends() -> R {
    let broker = Broker::start()?;
    broker.create_topic("events", 1)?;
    let plain = (0..200u64).map(|i| (None, i.to_string().into_bytes()));
    broker.produce("events", 0, plain.collect())?;
    let open = broker.produce_in_transaction(
        "writer",
        "events",
        0,
        (1_000..1_020u64)
            .map(|i| i.to_string().into_bytes())
            .collect(),
    )?;
    let dir = tempfile::tempdir()?;
    let got = bounded_read(broker.config(), dir.path())?;
    assert_eq!(got, (0..200).collect::<Vec<u64>>());
    drop(open);
    Ok(())
}

/// Story: a partition whose log ended with a transaction marker never
/// ended a bounded read: the marker is no record, so the reader's offset
/// stayed below the partition's end. Markers are now read past: after an
/// aborted transaction and more records, the read ends with every record
/// written outside the transaction. (This broker does not send the list of
/// aborted transactions; against Kafka, librdkafka leaves their records
/// out as well.)
#[test]
fn a_log_ending_with_a_transaction_marker_ends_a_bounded_read() -> R {
    let broker = Broker::start()?;
    broker.create_topic("events", 1)?;
    let plain = (0..100u64).map(|i| (None, i.to_string().into_bytes()));
    broker.produce("events", 0, plain.collect())?;
    let aborted = broker.produce_in_transaction(
        "writer",
        "events",
        0,
        (1_000..1_010u64)
            .map(|i| i.to_string().into_bytes())
            .collect(),
    )?;
    broker.abort_by_fencing("writer")?;
    drop(aborted);
    let dir = tempfile::tempdir()?;
    let got = bounded_read(broker.config(), dir.path())?;
    let plain: Vec<u64> = got.iter().copied().filter(|v| *v < 1_000).collect();
    assert_eq!(plain, (0..100).collect::<Vec<u64>>());
    Ok(())
}
