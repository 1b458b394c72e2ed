//! Every configuration value is checked before a job starts, with an error
//! naming the setting; values at the edges of their types neither hang nor
//! wrap around.

use std::sync::Arc;
use std::time::Duration;

use gress_state::checkpoint::Checkpointable;
use gress_state::{ManualClock, MemoryConfig, MemoryStateBackend};
use gress_stream::{
    BackendFactory, CollectSink, EpochPolicy, Error, GeneratorSource, JobConfig,
    KeyedProcessFunction, ProcessingContext, Result, StateTtl, ValueStateDescriptor, run,
};
use parking_lot::Mutex;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

fn small_job(config: JobConfig) -> Result<gress_stream::JobReport> {
    run(config, |job| {
        job.source("n", GeneratorSource::new(1, Some(10), |_, i| i))?
            .key_by(|n| *n)
            .count("count")
            .sink("out", CollectSink::new(gress_stream::Collected::new()))
    })
}

fn refused(config: JobConfig, field: &str) {
    match small_job(config) {
        Err(Error::InvalidJob { what, reason }) => {
            assert_eq!(what, field, "{reason}");
        }
        other => panic!("{field}: expected a refusal, got {other:?}"),
    }
}

/// Story: `max_epochs_in_flight = u64::MAX` overflowed the backpressure
/// bound and hung the source; `Interval(0)` was accepted. Every value is
/// now checked, each refusal naming its setting.
#[test]
fn values_out_of_range_are_refused_by_name() {
    let base = || JobConfig::new("config");
    refused(
        base().with_max_epochs_in_flight(u64::MAX),
        "max_epochs_in_flight",
    );
    refused(base().with_max_epochs_in_flight(0), "max_epochs_in_flight");
    refused(
        base().with_epochs(EpochPolicy::Interval(Duration::ZERO)),
        "epoch",
    );
    refused(base().with_epochs(EpochPolicy::Records(0)), "epoch");
    refused(
        base().with_epochs(EpochPolicy::Interval(Duration::MAX)),
        "epoch",
    );
    refused(base().with_workers(0), "workers");
    refused(base().with_retained_commits(0), "retained_commits");
    refused(base().with_idle_timeout(Duration::ZERO), "idle_timeout");
    refused(
        base().with_max_epoch_duration(Duration::MAX),
        "max_epoch_duration",
    );
    refused(
        base().with_connect_timeout(Duration::ZERO),
        "connect_timeout",
    );
    refused(base().with_key_groups(0), "key_groups");
    refused(base().with_max_epoch_records(0), "max_epoch_records");
    refused(base().with_memory(1 << 20), "memory");
    refused(JobConfig::new(""), "job_id");
    let mut c = base();
    c.max_failed_epochs = 0;
    refused(c, "max_failed_epochs");
    let mut c = base();
    c.checkpoint.retain = 0;
    match small_job(c) {
        Err(Error::Checkpoint(e)) => assert!(e.to_string().contains("retain"), "{e}"),
        other => panic!("expected the checkpoint settings refused, got {other:?}"),
    }
}

/// Keeps the first value of each key with a TTL, and outputs what it read
/// before writing.
struct FirstSeen(ValueStateDescriptor<u64>);

impl KeyedProcessFunction<u64, u64> for FirstSeen {
    type Out = (u64, Option<u64>);
    type Side = ();
    fn on_record(&mut self, ctx: &mut ProcessingContext<'_, u64, Self::Out>, v: u64) -> Result<()> {
        let before = ctx.value(&self.0)?.get()?;
        if before.is_none() {
            ctx.value(&self.0)?.set(v)?;
        }
        let k = *ctx.key();
        ctx.output((k, before));
        Ok(())
    }
}

/// Story: a TTL of `Duration::MAX` was turned into milliseconds with a
/// truncating cast and added with wrap-around, so every write expired at
/// once. A TTL too long to reach now means never; a zero TTL is refused.
#[test]
fn a_ttl_of_duration_max_never_expires_and_zero_is_refused() -> R {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    run(JobConfig::new("ttl-max").with_workers(1), move |job| {
        job.source("n", GeneratorSource::new(1, Some(40), |_, i| i))?
            .key_by(|n| n % 4)
            .process(
                "first",
                FirstSeen(ValueStateDescriptor::new("v").with_ttl(StateTtl::new(Duration::MAX))),
            )
            .sink("out", CollectSink::new(sink.clone()))
    })?;
    let out = out.lock();
    assert_eq!(out.len(), 40);
    assert!(
        out.iter().filter(|(_, before)| before.is_some()).count() == 36,
        "values expired: {:?}",
        &out[..8]
    );

    let zero = run(JobConfig::new("ttl-zero"), |job| {
        job.source("n", GeneratorSource::new(1, Some(4), |_, i| i))?
            .key_by(|n| *n)
            .process(
                "first",
                FirstSeen(ValueStateDescriptor::new("v").with_ttl(StateTtl::new(Duration::ZERO))),
            )
            .sink("out", CollectSink::new(gress_stream::Collected::new()))
    });
    match zero {
        Err(Error::Operator { reason, .. }) => assert!(reason.contains("TTL"), "{reason}"),
        other => panic!("expected a zero TTL refused, got {other:?}"),
    }
    Ok(())
}

/// Story: a RocksDB backend opened with a `default_ttl` gave the job's
/// timers and window state that TTL too, so they silently expired. A
/// backend with a default TTL is refused (here a memory backend, which
/// has the same setting).
#[test]
fn a_backend_with_a_default_ttl_is_refused() {
    let clock = ManualClock::shared(1_000);
    let factory = BackendFactory::new(move |_| {
        let backend = MemoryStateBackend::new(
            MemoryConfig::default()
                .with_ttl(Duration::from_secs(60))
                .with_clock(clock.clone()),
        )?;
        Ok(Arc::new(backend) as Arc<dyn Checkpointable>)
    });
    match small_job(JobConfig::new("default-ttl").with_backend(factory)) {
        Err(Error::InvalidJob { what, reason }) => {
            assert_eq!(what, "backend");
            assert!(reason.contains("default TTL"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Two keyed operators with one name would share state, timers and
/// watermark; a job naming two that way is refused, as are two sources.
#[test]
fn duplicate_operator_names_are_refused() {
    let twice = run(JobConfig::new("dup"), |job| {
        let counted = job
            .source("n", GeneratorSource::new(1, Some(10), |_, i| i))?
            .key_by(|n| *n)
            .count("count");
        counted
            .key_by(|(k, _)| *k)
            .count("count")
            .sink("out", CollectSink::new(gress_stream::Collected::new()))
    });
    match twice {
        Err(Error::InvalidJob { reason, .. }) => assert!(reason.contains("`count`"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let sources = run(JobConfig::new("dup-sources"), |job| {
        let a = job.source("n", GeneratorSource::new(1, Some(10), |_, i| i))?;
        let _b = job.source("n", GeneratorSource::new(1, Some(10), |_, i| i))?;
        a.sink("out", CollectSink::new(gress_stream::Collected::new()))
    });
    assert!(
        matches!(&sources, Err(Error::InvalidJob { reason, .. }) if reason.contains("`n`")),
        "{sources:?}"
    );
}
