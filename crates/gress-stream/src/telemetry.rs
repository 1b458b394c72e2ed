//! A job's metrics in the [`metrics`] facade, and the Prometheus endpoint
//! a job turns on with [`JobConfig::with_prometheus`].
//!
//! Each worker keeps its counts as plain numbers and copies them into the
//! facade once per [`JobConfig::metrics_interval`] (and when it ends);
//! epoch cuts and commits, a few per second at most, record their
//! durations as they happen. Every series carries the labels `job_id` and
//! `worker`. Each worker's backend is published (by a
//! [`MetricsPublisher`]) as `backend="<job_id>/<worker>"`, and its
//! checkpoint manager's metrics carry `manager="<job_id>/<worker>"`: see
//! [`gress_state::telemetry`] and [`gress_checkpoint::telemetry`].
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `gress_stream_source_records_total` | counter | records read by the worker's sources |
//! | `gress_stream_records_in_total` | counter | records applied by keyed operators (events per second: its `rate()`) |
//! | `gress_stream_records_out_total` | counter | records written to sinks |
//! | `gress_stream_epochs_cut_total` | counter | epochs whose state was cut |
//! | `gress_stream_epochs_committed_total` | counter | epochs committed, as the worker learned them |
//! | `gress_stream_epochs_failed_total` | counter | epochs that could not be committed |
//! | `gress_stream_committed_epoch` | gauge | the newest committed epoch |
//! | `gress_stream_epoch_lag` | gauge | epochs opened by the worker's sources and not yet committed |
//! | `gress_stream_cut_duration_seconds` | histogram | flushing the state cache and cutting the backend (processing waits) |
//! | `gress_stream_commit_latency_seconds` | histogram | from an epoch's cut to its commit |
//! | `gress_stream_cache_hits_total` | counter | state reads answered by the worker's cache |
//! | `gress_stream_cache_misses_total` | counter | state reads that went to the backend |
//! | `gress_stream_cache_evicted_total` | counter | entries dropped from the cache to stay within its budget |
//! | `gress_stream_cache_written_total` | counter | entries the cache wrote to the backend |
//! | `gress_stream_cache_entries` | gauge | entries in the cache |
//! | `gress_stream_cache_bytes` | gauge | bytes the cache holds (what its budget bounds) |
//!
//! [`JobConfig::with_prometheus`]: crate::JobConfig::with_prometheus
//! [`JobConfig::metrics_interval`]: crate::JobConfig::metrics_interval

use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};

pub use gress_state::telemetry::{
    MetricsPublisher, PrometheusEndpoint, prometheus_endpoint, serve_prometheus,
};

/// Records read by the worker's sources (counter).
pub const SOURCE_RECORDS_TOTAL: &str = "gress_stream_source_records_total";
/// Records applied by keyed operators (counter).
pub const RECORDS_IN_TOTAL: &str = "gress_stream_records_in_total";
/// Records written to sinks (counter).
pub const RECORDS_OUT_TOTAL: &str = "gress_stream_records_out_total";
/// Epochs whose state was cut (counter).
pub const EPOCHS_CUT_TOTAL: &str = "gress_stream_epochs_cut_total";
/// Epochs committed (counter).
pub const EPOCHS_COMMITTED_TOTAL: &str = "gress_stream_epochs_committed_total";
/// Epochs that could not be committed (counter).
pub const EPOCHS_FAILED_TOTAL: &str = "gress_stream_epochs_failed_total";
/// The newest committed epoch (gauge).
pub const COMMITTED_EPOCH: &str = "gress_stream_committed_epoch";
/// Epochs opened and not yet committed (gauge).
pub const EPOCH_LAG: &str = "gress_stream_epoch_lag";
/// Flushing the cache and cutting the backend (histogram).
pub const CUT_DURATION_SECONDS: &str = "gress_stream_cut_duration_seconds";
/// From an epoch's cut to its commit (histogram).
pub const COMMIT_LATENCY_SECONDS: &str = "gress_stream_commit_latency_seconds";

/// State reads answered by the cache (counter).
pub const CACHE_HITS_TOTAL: &str = "gress_stream_cache_hits_total";
/// State reads that went to the backend (counter).
pub const CACHE_MISSES_TOTAL: &str = "gress_stream_cache_misses_total";
/// Entries dropped from the cache to stay within its budget (counter).
pub const CACHE_EVICTED_TOTAL: &str = "gress_stream_cache_evicted_total";
/// Entries the cache wrote to the backend (counter).
pub const CACHE_WRITTEN_TOTAL: &str = "gress_stream_cache_written_total";
/// Entries in the cache (gauge).
pub const CACHE_ENTRIES: &str = "gress_stream_cache_entries";
/// Bytes the cache holds (gauge).
pub const CACHE_BYTES: &str = "gress_stream_cache_bytes";

/// Registers the help text of this module's series with the installed
/// recorder. Idempotent; [`crate::run`] calls it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        SOURCE_RECORDS_TOTAL,
        "Records read by the worker's sources."
    );
    describe_counter!(
        RECORDS_IN_TOTAL,
        "Records applied by keyed operators; its rate is the events per second."
    );
    describe_counter!(RECORDS_OUT_TOTAL, "Records written to sinks.");
    describe_counter!(EPOCHS_CUT_TOTAL, "Epochs whose state was cut.");
    describe_counter!(
        EPOCHS_COMMITTED_TOTAL,
        "Epochs committed, as the worker learned them."
    );
    describe_counter!(
        EPOCHS_FAILED_TOTAL,
        "Epochs that could not be committed (a checkpoint failed)."
    );
    describe_gauge!(COMMITTED_EPOCH, "The newest committed epoch.");
    describe_gauge!(
        EPOCH_LAG,
        "Epochs opened by the worker's sources and not yet committed."
    );
    describe_histogram!(
        CUT_DURATION_SECONDS,
        "Time to flush the state cache and cut the backend at an epoch's end; processing waits meanwhile."
    );
    describe_histogram!(
        COMMIT_LATENCY_SECONDS,
        "Time from an epoch's cut on this worker to its commit."
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        "State reads answered by the worker's cache."
    );
    describe_counter!(CACHE_MISSES_TOTAL, "State reads that went to the backend.");
    describe_counter!(
        CACHE_EVICTED_TOTAL,
        "Entries dropped from the cache to stay within its budget."
    );
    describe_counter!(
        CACHE_WRITTEN_TOTAL,
        "Entries the cache wrote to the backend (spilled values and deletions)."
    );
    describe_gauge!(CACHE_ENTRIES, "Entries in the worker's state cache.");
    describe_gauge!(
        CACHE_BYTES,
        "Bytes the worker's state cache holds; its budget bounds them."
    );
}

/// What one worker's counts are, for [`WorkerMetrics::refresh`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) records_read: u64,
    pub(crate) records_in: u64,
    pub(crate) records_out: u64,
    pub(crate) epochs_cut: u64,
    pub(crate) committed: Option<u64>,
    pub(crate) epoch_lag: u64,
    pub(crate) cache: crate::state::CacheStats,
    pub(crate) cache_entries: usize,
    pub(crate) cache_bytes: usize,
}

/// One worker's handles into the facade, resolved once.
pub(crate) struct WorkerMetrics {
    source_records: Counter,
    records_in: Counter,
    records_out: Counter,
    epochs_cut: Counter,
    pub(crate) epochs_committed: Counter,
    pub(crate) epochs_failed: Counter,
    committed_epoch: Gauge,
    epoch_lag: Gauge,
    pub(crate) cut_duration: Histogram,
    pub(crate) commit_latency: Histogram,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_evicted: Counter,
    cache_written: Counter,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    interval: Duration,
    next_refresh: Instant,
}

impl WorkerMetrics {
    pub(crate) fn new(job_id: &str, worker: usize, interval: Duration) -> Self {
        let labels = [
            ("job_id", job_id.to_string()),
            ("worker", worker.to_string()),
        ];
        WorkerMetrics {
            source_records: metrics::counter!(SOURCE_RECORDS_TOTAL, &labels),
            records_in: metrics::counter!(RECORDS_IN_TOTAL, &labels),
            records_out: metrics::counter!(RECORDS_OUT_TOTAL, &labels),
            epochs_cut: metrics::counter!(EPOCHS_CUT_TOTAL, &labels),
            epochs_committed: metrics::counter!(EPOCHS_COMMITTED_TOTAL, &labels),
            epochs_failed: metrics::counter!(EPOCHS_FAILED_TOTAL, &labels),
            committed_epoch: metrics::gauge!(COMMITTED_EPOCH, &labels),
            epoch_lag: metrics::gauge!(EPOCH_LAG, &labels),
            cut_duration: metrics::histogram!(CUT_DURATION_SECONDS, &labels),
            commit_latency: metrics::histogram!(COMMIT_LATENCY_SECONDS, &labels),
            cache_hits: metrics::counter!(CACHE_HITS_TOTAL, &labels),
            cache_misses: metrics::counter!(CACHE_MISSES_TOTAL, &labels),
            cache_evicted: metrics::counter!(CACHE_EVICTED_TOTAL, &labels),
            cache_written: metrics::counter!(CACHE_WRITTEN_TOTAL, &labels),
            cache_entries: metrics::gauge!(CACHE_ENTRIES, &labels),
            cache_bytes: metrics::gauge!(CACHE_BYTES, &labels),
            interval,
            next_refresh: Instant::now(),
        }
    }

    /// Whether a periodic refresh is due.
    pub(crate) fn due(&self) -> bool {
        Instant::now() >= self.next_refresh
    }

    /// Copies the worker's counts into the facade.
    pub(crate) fn refresh(&mut self, c: Counts) {
        self.source_records.absolute(c.records_read);
        self.records_in.absolute(c.records_in);
        self.records_out.absolute(c.records_out);
        self.epochs_cut.absolute(c.epochs_cut);
        if let Some(epoch) = c.committed {
            self.committed_epoch.set(epoch as f64);
        }
        self.epoch_lag.set(c.epoch_lag as f64);
        self.cache_hits.absolute(c.cache.hits);
        self.cache_misses.absolute(c.cache.misses);
        self.cache_evicted.absolute(c.cache.evicted);
        self.cache_written.absolute(c.cache.written);
        self.cache_entries.set(c.cache_entries as f64);
        self.cache_bytes.set(c.cache_bytes as f64);
        self.next_refresh = Instant::now() + self.interval;
    }
}
