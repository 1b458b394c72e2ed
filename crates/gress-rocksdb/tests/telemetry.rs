//! RocksDB's statistics reach the Prometheus endpoint through the same
//! publishing as every backend's metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::StateBackend;
use gress_state::telemetry::{self, MetricsPublisher, serve_prometheus};
use gress_testkit::prometheus::{parse, scrape, value};

type R = Result<(), Box<dyn std::error::Error>>;

/// Every engine statistic of a snapshot is served as
/// `gress_state_engine_stat{stat=...}` with its value, beside the
/// counters and the estimated key count.
#[test]
fn engine_statistics_are_served() -> R {
    let endpoint = serve_prometheus(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let dir = tempfile::tempdir()?;
    let backend = Arc::new(RocksDbStateBackend::open(RocksDbConfig::new(dir.path()))?);
    for i in 0..500u32 {
        backend.put(format!("key:{i:04}").as_bytes(), b"value")?;
    }
    backend.flush()?;
    for i in 0..100u32 {
        backend.get(format!("key:{i:04}").as_bytes())?;
    }
    // A publisher that would not run again during the test: the scrape
    // shows exactly the snapshot published below.
    let publisher = MetricsPublisher::new(std::time::Duration::from_secs(3600))?;
    publisher.register("rocks", &backend)?;
    let m = backend.metrics();
    telemetry::publish("rocks", &m);

    let samples = parse(&scrape(endpoint.addr())?)?;
    assert!(m.engine.contains_key("block_cache_hit"), "{:?}", m.engine);
    assert!(m.engine.contains_key("estimate_num_keys"));
    for (stat, v) in &m.engine {
        assert_eq!(
            value(
                &samples,
                "gress_state_engine_stat",
                &[("backend", "rocks"), ("stat", &telemetry::stat_label(stat))]
            ),
            Some(*v as f64),
            "{stat}"
        );
    }
    let rocks = [("backend", "rocks")];
    assert_eq!(
        value(&samples, "gress_state_keys", &rocks),
        Some(m.n_keys as f64)
    );
    assert_eq!(
        value(&samples, "gress_state_puts_total", &rocks),
        Some(500.0)
    );
    assert_eq!(
        value(&samples, "gress_state_gets_total", &rocks),
        Some(100.0)
    );
    Ok(())
}
