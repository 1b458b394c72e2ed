//! A job started with `with_prometheus` serves its metrics over HTTP while
//! it runs: records in and out, epochs, checkpoints, and its backends'.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gress_stream::telemetry::{prometheus_endpoint, serve_prometheus};
use gress_stream::{
    CollectSink, EpochPolicy, Error, JobConfig, PartitionReader, Poll, Source, run,
};
use gress_testkit::prometheus::{parse, scrape, sum, value};
use parking_lot::Mutex;

type R = Result<(), Box<dyn std::error::Error>>;

const PER_PARTITION: u64 = 20_000;

/// Reads `PER_PARTITION` records per partition, then waits (idle) until
/// `stop` is set, then ends: the job stays up while the test scrapes.
struct Held {
    stop: Arc<AtomicBool>,
}

struct HeldReader {
    partition: usize,
    next: u64,
    stop: Arc<AtomicBool>,
}

impl Source for Held {
    type Record = u64;

    fn partitions(&self) -> usize {
        2
    }

    fn open(
        &mut self,
        partition: usize,
        offset: u64,
    ) -> gress_stream::Result<Box<dyn PartitionReader<u64>>> {
        Ok(Box::new(HeldReader {
            partition,
            next: offset,
            stop: Arc::clone(&self.stop),
        }))
    }
}

impl PartitionReader<u64> for HeldReader {
    fn poll(&mut self, max: usize, out: &mut Vec<u64>) -> gress_stream::Result<Poll> {
        if self.next >= PER_PARTITION {
            return Ok(if self.stop.load(Ordering::Acquire) {
                Poll::End
            } else {
                Poll::Idle
            });
        }
        let until = PER_PARTITION.min(self.next + max as u64);
        out.extend((self.next..until).map(|i| (self.partition as u64 * 31 + i) % 97));
        self.next = until;
        Ok(Poll::Ready)
    }

    fn offset(&self) -> u64 {
        self.next
    }
}

/// While the job runs, a scrape shows records in, committed epochs,
/// committed checkpoints and the workers' backends; once it ends, the
/// counters equal the job's report.
#[test]
fn a_running_job_serves_its_metrics() -> R {
    let dir = tempfile::tempdir()?;
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Vec::new()));
    let config = JobConfig::new("live")
        .with_workers(2)
        .with_checkpoint_dir(dir.path())
        .with_epochs(EpochPolicy::Records(1000))
        .with_metrics_interval(Duration::from_millis(20))
        .with_prometheus(SocketAddr::from(([127, 0, 0, 1], 0)));
    let (job_stop, job_out) = (Arc::clone(&stop), Arc::clone(&out));
    let job = std::thread::spawn(move || {
        run(config, move |job| {
            job.source(
                "events",
                Held {
                    stop: Arc::clone(&job_stop),
                },
            )?
            .key_by(|n| *n)
            .count("count")
            .sink("out", CollectSink::new(Arc::clone(&job_out)))
        })
    });

    // Generous deadlines; nothing here measures speed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let addr = loop {
        if let Some(endpoint) = prometheus_endpoint() {
            break endpoint.addr();
        }
        if Instant::now() > deadline || job.is_finished() {
            return Err("the job never started its endpoint".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let job_label = [("job_id", "live")];
    let live = loop {
        let samples = parse(&scrape(addr)?)?;
        let ready = sum(&samples, "gress_stream_records_in_total", &job_label)
            == (2 * PER_PARTITION) as f64
            && sum(&samples, "gress_stream_epochs_committed_total", &job_label) > 0.0
            && value(
                &samples,
                "gress_checkpoint_committed_total",
                &[("manager", "live/0")],
            )
            .is_some_and(|v| v > 0.0)
            && value(
                &samples,
                "gress_checkpoint_committed_total",
                &[("manager", "live/1")],
            )
            .is_some_and(|v| v > 0.0)
            && value(
                &samples,
                "gress_stream_cache_entries",
                &[("job_id", "live"), ("worker", "0")],
            )
            .is_some_and(|v| v > 0.0);
        if ready {
            break samples;
        }
        if job.is_finished() {
            let ended = job.join().map_err(|_| "the job thread panicked")?;
            return Err(format!("the job ended before it was scraped: {ended:?}").into());
        }
        if Instant::now() > deadline {
            return Err(
                format!("the metrics never showed the job's progress:\n{samples:#?}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !job.is_finished(),
        "the job is still running (held by its source)"
    );
    assert_eq!(
        sum(&live, "gress_stream_source_records_total", &job_label),
        (2 * PER_PARTITION) as f64
    );
    assert!(
        value(
            &live,
            "gress_stream_cut_duration_seconds_count",
            &[("job_id", "live"), ("worker", "0")]
        )
        .is_some_and(|n| n > 0.0)
    );
    assert!(
        value(
            &live,
            "gress_checkpoint_duration_seconds_count",
            &[("manager", "live/1")]
        )
        .is_some_and(|n| n > 0.0)
    );
    assert!(
        value(
            &live,
            "gress_stream_epoch_lag",
            &[("job_id", "live"), ("worker", "0")]
        )
        .is_some()
    );
    assert!(value(&live, "gress_state_keys", &[("backend", "live/1")]).is_some());
    // A fresh start restores nothing; what has not happened reads 0.
    for backend in ["live/0", "live/1"] {
        assert_eq!(
            value(&live, "gress_state_restores_total", &[("backend", backend)]),
            Some(0.0),
            "{backend}"
        );
    }
    for name in [
        "gress_checkpoint_failures_total",
        "gress_checkpoint_restores_total",
        "gress_checkpoint_restore_failures_total",
        "gress_checkpoint_uncertain_total",
    ] {
        assert_eq!(
            value(&live, name, &[("manager", "live/0")]),
            Some(0.0),
            "{name}"
        );
    }

    stop.store(true, Ordering::Release);
    let report = job.join().map_err(|_| "the job thread panicked")??;
    let last = parse(&scrape(addr)?)?;
    assert_eq!(
        sum(&last, "gress_stream_records_in_total", &job_label),
        report.records_in as f64
    );
    assert_eq!(
        sum(&last, "gress_stream_records_out_total", &job_label),
        report.records_out as f64
    );
    assert_eq!(report.records_out, out.lock().len() as u64);
    assert_eq!(
        sum(&last, "gress_stream_epochs_cut_total", &job_label),
        report.epochs_cut as f64
    );
    let committed = report.last_committed.ok_or("nothing committed")?;
    for worker in ["0", "1"] {
        let labels = [("job_id", "live"), ("worker", worker)];
        assert_eq!(
            value(&last, "gress_stream_committed_epoch", &labels),
            Some(committed as f64)
        );
        assert_eq!(value(&last, "gress_stream_epoch_lag", &labels), Some(0.0));
    }
    Ok(())
}

/// A job asking for an endpoint at another address than the one the
/// process serves fails at start with a typed error.
#[test]
fn a_second_endpoint_address_is_refused() -> R {
    let running = serve_prometheus(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let elsewhere = SocketAddr::from(([127, 0, 0, 2], running.addr().port()));
    let result = run(JobConfig::new("refused").with_prometheus(elsewhere), |_| {
        Ok(())
    });
    match result {
        Err(Error::State(gress_state::Error::MetricsEndpoint { addr, .. })) => {
            assert_eq!(addr, elsewhere);
        }
        other => return Err(format!("expected a MetricsEndpoint error, got {other:?}").into()),
    }
    Ok(())
}

/// Bad metrics settings are refused before anything starts: a port that
/// the process index would push past 65535, and a zero interval.
#[test]
fn bad_metrics_settings_are_invalid_jobs() -> R {
    let hosts = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
    let beyond = JobConfig::new("ports")
        .with_cluster(1, hosts)
        .with_prometheus(SocketAddr::from(([127, 0, 0, 1], 65535)));
    match run(beyond, |_| Ok(())) {
        Err(Error::InvalidJob { what, .. }) => assert_eq!(what, "prometheus"),
        other => return Err(format!("expected InvalidJob, got {other:?}").into()),
    }
    let zero = JobConfig::new("interval").with_metrics_interval(Duration::ZERO);
    match run(zero, |_| Ok(())) {
        Err(Error::InvalidJob { what, .. }) => assert_eq!(what, "metrics_interval"),
        other => return Err(format!("expected InvalidJob, got {other:?}").into()),
    }
    Ok(())
}
