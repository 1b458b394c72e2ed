//! Backend metrics in the [`metrics`] facade, and (feature `prometheus`) a
//! Prometheus scrape endpoint.
//!
//! Nothing is sent to the facade per operation: backends keep their own
//! per-thread counters ([`StateBackend::metrics`]), and [`publish`] copies
//! one snapshot of them into the facade. A [`MetricsPublisher`] does that
//! for the backends registered with it, on a thread of its own, once per
//! interval. Every series carries the label `backend` with the name the
//! backend was published under.
//!
//! | name | type | extra labels | meaning |
//! |---|---|---|---|
//! | `gress_state_gets_total` | counter | | point reads |
//! | `gress_state_hits_total` | counter | | reads that found a live value |
//! | `gress_state_misses_total` | counter | | reads that found nothing live |
//! | `gress_state_puts_total` | counter | | values written |
//! | `gress_state_deletes_total` | counter | | deletes |
//! | `gress_state_expired_total` | counter | | entries removed for their TTL |
//! | `gress_state_batches_total` | counter | | atomic batches committed |
//! | `gress_state_scans_total` | counter | | scans started |
//! | `gress_state_snapshots_total` | counter | | snapshots written |
//! | `gress_state_restores_total` | counter | | restores completed |
//! | `gress_state_keys` | gauge | | keys stored (RocksDB: an estimate) |
//! | `gress_state_op_latency_seconds` | gauge | `op`, `quantile` | sampled latency: `0.5`, `0.99`, `0.999`, and `1` (the slowest) |
//! | `gress_state_op_latency_samples_total` | counter | `op` | calls timed |
//! | `gress_state_engine_stat` | gauge | `stat` | engine statistics ([`Metrics::engine`], e.g. RocksDB's `block_cache_hit`) |
//!
//! Latency percentiles cover every sampled call since the backend was
//! opened. Counters are set to the backend's own totals, so a scrape and
//! [`StateBackend::metrics`] agree once the publisher has run.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use gress_state::telemetry::MetricsPublisher;
//! use gress_state::{MemoryStateBackend, StateBackend};
//!
//! let orders = Arc::new(MemoryStateBackend::default());
//! let publisher = MetricsPublisher::new(Duration::from_secs(1))?;
//! publisher.register("orders", &orders)?;
//! orders.put(b"order:1", b"paid")?;
//! // Every second, `gress_state_puts_total{backend="orders"}` and the rest
//! // are refreshed; dropping the publisher stops it.
//! # Ok::<(), gress_state::Error>(())
//! ```
//!
//! [`StateBackend::metrics`]: crate::StateBackend::metrics

mod publisher;

#[cfg(feature = "prometheus")]
mod prometheus;

pub use publisher::MetricsPublisher;

#[cfg(feature = "prometheus")]
pub use prometheus::{
    ControlSource, PrometheusEndpoint, prometheus_endpoint, serve_prometheus, set_control_source,
    set_status_source,
};

use crate::metrics::Metrics;

/// The label that names the backend on every series of this module.
pub const BACKEND_LABEL: &str = "backend";

/// Keys stored (gauge).
pub const KEYS: &str = "gress_state_keys";
/// Sampled operation latency in seconds (gauge, labels `op` and
/// `quantile`).
pub const OP_LATENCY_SECONDS: &str = "gress_state_op_latency_seconds";
/// Operations timed for [`OP_LATENCY_SECONDS`] (counter, label `op`).
pub const OP_LATENCY_SAMPLES_TOTAL: &str = "gress_state_op_latency_samples_total";
/// One engine statistic (gauge, label `stat`).
pub const ENGINE_STAT: &str = "gress_state_engine_stat";

/// A counter of [`Metrics`]: its name, help text, and value.
type CounterOf = (&'static str, &'static str, fn(&Metrics) -> u64);

/// The counters of [`Metrics`], in the order of its fields.
pub(crate) const COUNTERS: [CounterOf; 10] = [
    (
        "gress_state_gets_total",
        "Point reads (get, and each key of a multi_get).",
        |m| m.gets,
    ),
    (
        "gress_state_hits_total",
        "Point reads that found a live value.",
        |m| m.hits,
    ),
    (
        "gress_state_misses_total",
        "Point reads that found nothing, or only an expired value.",
        |m| m.misses,
    ),
    (
        "gress_state_puts_total",
        "Values written (put, put_with_ttl, batch puts).",
        |m| m.puts,
    ),
    (
        "gress_state_deletes_total",
        "Deletes, single and in batches.",
        |m| m.deletes,
    ),
    (
        "gress_state_expired_total",
        "Entries removed because their TTL had passed.",
        |m| m.expired,
    ),
    (
        "gress_state_batches_total",
        "Atomic batches committed.",
        |m| m.batches,
    ),
    (
        "gress_state_scans_total",
        "Range and prefix scans started.",
        |m| m.scans,
    ),
    ("gress_state_snapshots_total", "Snapshots written.", |m| {
        m.snapshots
    }),
    ("gress_state_restores_total", "Restores completed.", |m| {
        m.restores
    }),
];

/// The percentiles published as `quantile` of [`OP_LATENCY_SECONDS`].
const QUANTILES: [&str; 4] = ["0.5", "0.99", "0.999", "1"];

/// Copies one snapshot of a backend's metrics into the [`metrics`] facade,
/// labelled `backend="<backend>"`: counters are set to the snapshot's
/// totals, gauges to its values. Without an installed recorder this does
/// nothing.
pub fn publish(backend: &str, m: &Metrics) {
    let label = || backend.to_string();
    for (name, _, value) in COUNTERS {
        metrics::counter!(name, BACKEND_LABEL => label()).absolute(value(m));
    }
    metrics::gauge!(KEYS, BACKEND_LABEL => label()).set(m.n_keys as f64);
    for (op, summary) in &m.latency {
        let values = [summary.p50, summary.p99, summary.p999, summary.max];
        for (quantile, latency) in QUANTILES.into_iter().zip(values) {
            metrics::gauge!(
                OP_LATENCY_SECONDS,
                BACKEND_LABEL => label(),
                "op" => op.name(),
                "quantile" => quantile
            )
            .set(latency.as_secs_f64());
        }
        metrics::counter!(OP_LATENCY_SAMPLES_TOTAL, BACKEND_LABEL => label(), "op" => op.name())
            .absolute(summary.samples);
    }
    for (stat, value) in &m.engine {
        metrics::gauge!(ENGINE_STAT, BACKEND_LABEL => label(), "stat" => stat_label(stat))
            .set(*value as f64);
    }
}

/// Registers the help text of every series [`publish`] writes with the
/// installed recorder. Idempotent; [`MetricsPublisher::new`] and
/// `serve_prometheus` call it.
pub fn describe() {
    for (name, help, _) in COUNTERS {
        metrics::describe_counter!(name, help);
    }
    metrics::describe_gauge!(
        KEYS,
        "Keys stored; for RocksDB, its estimate (may count deleted keys until compaction)."
    );
    metrics::describe_gauge!(
        OP_LATENCY_SECONDS,
        "Latency of sampled operations since the backend opened, by operation and quantile (1 is the slowest)."
    );
    metrics::describe_counter!(
        OP_LATENCY_SAMPLES_TOTAL,
        "Operations timed for gress_state_op_latency_seconds."
    );
    metrics::describe_gauge!(
        ENGINE_STAT,
        "Statistics of the storage engine (RocksDB tickers and properties), by name."
    );
}

/// An engine statistic's name as a snake-case label value:
/// `rocksdb.block.cache-hit` becomes `rocksdb_block_cache_hit`.
pub fn stat_label(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        };
        if !(c == '_' && (out.is_empty() || out.ends_with('_'))) {
            out.push(c);
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("unnamed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_labels_are_snake_case() {
        assert_eq!(
            stat_label("rocksdb.block.cache.hit"),
            "rocksdb_block_cache_hit"
        );
        assert_eq!(
            stat_label("rocksdb.estimate-num-keys"),
            "rocksdb_estimate_num_keys"
        );
        assert_eq!(stat_label("block_cache_hit"), "block_cache_hit");
        assert_eq!(stat_label("Stall µs (total)"), "stall_s_total");
        assert_eq!(stat_label(".."), "unnamed");
    }

    #[test]
    fn counter_names_follow_prometheus_conventions() {
        for (name, help, _) in COUNTERS {
            assert!(
                name.starts_with("gress_state_") && name.ends_with("_total"),
                "{name}"
            );
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            assert!(!help.is_empty());
        }
    }
}
