//! The Prometheus endpoint, scraped over loopback HTTP, reports what the
//! backends' own `metrics()` report.
//!
//! The `metrics` recorder is process-wide: every test here asks for the one
//! endpoint of the process (127.0.0.1, port 0) and publishes under labels
//! of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gress_state::telemetry::{self, MetricsPublisher, prometheus_endpoint, serve_prometheus};
use gress_state::{Error, MemoryConfig, MemoryStateBackend, Metrics, Op, StateBackend, WriteBatch};
use gress_testkit::prometheus::{Sample, parse, scrape, value};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Scrapes until `done` holds for the samples, or fails after a generous
/// deadline (never a measure of speed: the publisher runs every 20 ms).
fn scrape_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&[Sample]) -> bool,
) -> Result<Vec<Sample>, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let samples = parse(&scrape(addr)?)?;
        if done(&samples) {
            return Ok(samples);
        }
        if Instant::now() > deadline {
            return Err(format!("the endpoint never showed {what}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn counters_of(m: &Metrics) -> [(&'static str, u64); 10] {
    [
        ("gress_state_gets_total", m.gets),
        ("gress_state_hits_total", m.hits),
        ("gress_state_misses_total", m.misses),
        ("gress_state_puts_total", m.puts),
        ("gress_state_deletes_total", m.deletes),
        ("gress_state_expired_total", m.expired),
        ("gress_state_batches_total", m.batches),
        ("gress_state_scans_total", m.scans),
        ("gress_state_snapshots_total", m.snapshots),
        ("gress_state_restores_total", m.restores),
    ]
}

/// After a known mix of operations, every counter, the key count and the
/// latency percentiles scraped from the endpoint equal `metrics()`.
#[test]
fn scraped_values_equal_the_backends_own_metrics() -> TestResult {
    let endpoint = serve_prometheus(loopback())?;
    let backend = Arc::new(MemoryStateBackend::new(
        MemoryConfig::default().with_latency_sampling(1),
    )?);
    let publisher = MetricsPublisher::new(Duration::from_millis(20))?;
    publisher.register("orders", &backend)?;

    for i in 0..100u32 {
        backend.put(format!("order:{i:03}").as_bytes(), &i.to_le_bytes())?;
    }
    for i in 0..30u32 {
        // 20 hits (0..20) and 10 misses (100..110).
        let i = if i < 20 { i } else { i + 80 };
        backend.get(format!("order:{i:03}").as_bytes())?;
    }
    for i in 0..5u32 {
        backend.delete(format!("order:{i:03}").as_bytes())?;
    }
    let mut batch = WriteBatch::new();
    batch.put(b"batch:1", b"x").delete(b"order:010");
    backend.write_batch(&batch)?;
    assert_eq!(backend.scan_prefix(b"order:")?.count(), 94);
    let snapshot = backend.snapshot()?;
    backend.restore(&snapshot)?;

    let expected = backend.metrics();
    assert_eq!(
        (expected.puts, expected.hits, expected.misses),
        (101, 20, 10)
    );
    assert_eq!(expected.n_keys, 95);
    let labels = [("backend", "orders")];
    let samples = scrape_until(endpoint.addr(), "the backend's totals", |s| {
        counters_of(&expected)
            .iter()
            .all(|(name, v)| value(s, name, &labels) == Some(*v as f64))
            && value(s, "gress_state_keys", &labels) == Some(expected.n_keys as f64)
    })?;
    for (name, v) in counters_of(&expected) {
        assert_eq!(value(&samples, name, &labels), Some(v as f64), "{name}");
    }
    for op in [Op::Get, Op::Put, Op::Delete, Op::Batch, Op::Scan] {
        let l = expected.latency_of(op);
        assert!(l.samples > 0, "{op:?} was timed");
        let op_labels = [("backend", "orders"), ("op", op.name())];
        assert_eq!(
            value(&samples, "gress_state_op_latency_samples_total", &op_labels),
            Some(l.samples as f64)
        );
        for (quantile, d) in [
            ("0.5", l.p50),
            ("0.99", l.p99),
            ("0.999", l.p999),
            ("1", l.max),
        ] {
            let labels = [
                ("backend", "orders"),
                ("op", op.name()),
                ("quantile", quantile),
            ];
            assert_eq!(
                value(&samples, "gress_state_op_latency_seconds", &labels),
                Some(d.as_secs_f64()),
                "{op:?} quantile {quantile}"
            );
        }
    }
    // The text format carries help and type lines for the series.
    let text = endpoint.render();
    assert!(text.contains("# TYPE gress_state_puts_total counter"));
    assert!(text.contains("# HELP gress_state_keys "));
    Ok(())
}

/// Writes after registration reach the endpoint on the publisher's next
/// run, with no call from the writer: the publisher polls.
#[test]
fn the_publisher_refreshes_on_its_own() -> TestResult {
    let endpoint = serve_prometheus(loopback())?;
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::default());
    let publisher = MetricsPublisher::new(Duration::from_millis(20))?;
    publisher.register("sessions", &backend)?;
    let labels = [("backend", "sessions")];
    scrape_until(endpoint.addr(), "the first snapshot", |s| {
        value(s, "gress_state_puts_total", &labels) == Some(0.0)
    })?;
    for i in 0..7u8 {
        backend.put(&[i], b"v")?;
    }
    scrape_until(endpoint.addr(), "7 puts", |s| {
        value(s, "gress_state_puts_total", &labels) == Some(7.0)
            && value(s, "gress_state_keys", &labels) == Some(7.0)
    })?;
    Ok(())
}

/// One endpoint per process: asking again for port 0 (or its own address)
/// returns it; asking for another address is a typed error, not a panic.
#[test]
fn a_process_has_one_endpoint() -> TestResult {
    let first = serve_prometheus(loopback())?;
    let again = serve_prometheus(loopback())?;
    assert_eq!(first.addr(), again.addr());
    assert_eq!(serve_prometheus(first.addr())?.addr(), first.addr());
    assert_eq!(prometheus_endpoint().map(|e| e.addr()), Some(first.addr()));
    assert_eq!(first.url(), format!("http://{}/metrics", first.addr()));

    let elsewhere = SocketAddr::from(([127, 0, 0, 1], first.addr().port().wrapping_add(1).max(1)));
    match serve_prometheus(elsewhere) {
        Err(Error::MetricsEndpoint { addr, reason }) => {
            assert_eq!(addr, elsewhere);
            assert!(reason.contains(&first.addr().to_string()), "{reason}");
        }
        other => return Err(format!("expected a MetricsEndpoint error, got {other:?}").into()),
    }
    Ok(())
}

/// An address that cannot be bound fails with the I/O error, and leaves
/// the process free to serve elsewhere.
#[test]
fn an_unbindable_address_is_an_io_error() -> TestResult {
    // TEST-NET-1 is never a local address.
    let foreign = SocketAddr::from(([192, 0, 2, 1], 0));
    match (prometheus_endpoint(), serve_prometheus(foreign)) {
        (None, Err(Error::Io { context, .. })) => {
            assert!(context.contains("192.0.2.1"), "{context}");
            let endpoint = serve_prometheus(loopback())?;
            assert_ne!(endpoint.addr().port(), 0);
        }
        // Another test of this process started the endpoint first.
        (Some(_), Err(Error::MetricsEndpoint { .. })) => {}
        (_, other) => return Err(format!("expected an error, got {other:?}").into()),
    }
    Ok(())
}

/// Engine statistics (RocksDB's, for instance) are published with
/// snake-case names, at once, without a publisher.
#[test]
fn engine_statistics_get_snake_case_names() -> TestResult {
    let endpoint = serve_prometheus(loopback())?;
    let mut m = Metrics::default();
    m.engine.insert("rocksdb.bytes-read".into(), 5);
    m.engine.insert("block_cache_hit".into(), 7);
    telemetry::publish("engine", &m);
    let samples = parse(&endpoint.render())?;
    let stat = |name| {
        value(
            &samples,
            "gress_state_engine_stat",
            &[("backend", "engine"), ("stat", name)],
        )
    };
    assert_eq!(stat("rocksdb_bytes_read"), Some(5.0));
    assert_eq!(stat("block_cache_hit"), Some(7.0));
    Ok(())
}
