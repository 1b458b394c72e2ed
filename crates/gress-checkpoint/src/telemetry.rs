//! The manager's metrics in the [`metrics`] facade.
//!
//! Emitted when a checkpoint commits or fails and when a restore ends:
//! rare events, never per write. Every series carries the label `manager`
//! ([`CheckpointConfig::metrics_label`](crate::CheckpointConfig::metrics_label)).
//! Without an installed recorder (for example
//! `gress_state::telemetry::serve_prometheus`), nothing is recorded.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `gress_checkpoint_duration_seconds` | histogram | from the cut to the published manifest |
//! | `gress_checkpoint_pause_seconds` | histogram | the longest time a backend held its writers for its cut |
//! | `gress_checkpoint_written_bytes_total` | counter | bytes written to storage (new files only) |
//! | `gress_checkpoint_files_written_total` | counter | files written |
//! | `gress_checkpoint_files_reused_total` | counter | files referenced from earlier checkpoints |
//! | `gress_checkpoint_size_bytes` | gauge | bytes the newest committed checkpoint references |
//! | `gress_checkpoint_committed_total` | counter | checkpoints committed |
//! | `gress_checkpoint_failures_total` | counter | checkpoints that failed (cut or commit) |
//! | `gress_checkpoint_uncertain_total` | counter | failures whose publication could not be confirmed either way |
//! | `gress_checkpoint_last_commit_timestamp_seconds` | gauge | when the newest checkpoint committed (UNIX time) |
//! | `gress_checkpoint_restore_duration_seconds` | histogram | restores that succeeded |
//! | `gress_checkpoint_restores_total` | counter | restores that succeeded |
//! | `gress_checkpoint_restore_failures_total` | counter | restores that failed or were refused |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::info::CheckpointReport;

/// The label that names the manager on every series of this module.
pub const MANAGER_LABEL: &str = "manager";

/// From the cut to the published manifest (histogram).
pub const DURATION_SECONDS: &str = "gress_checkpoint_duration_seconds";
/// The longest time a backend held its writers for its cut (histogram).
pub const PAUSE_SECONDS: &str = "gress_checkpoint_pause_seconds";
/// Bytes written to storage (counter).
pub const WRITTEN_BYTES_TOTAL: &str = "gress_checkpoint_written_bytes_total";
/// Files written (counter).
pub const FILES_WRITTEN_TOTAL: &str = "gress_checkpoint_files_written_total";
/// Files reused from earlier checkpoints (counter).
pub const FILES_REUSED_TOTAL: &str = "gress_checkpoint_files_reused_total";
/// Bytes the newest committed checkpoint references (gauge).
pub const SIZE_BYTES: &str = "gress_checkpoint_size_bytes";
/// Checkpoints committed (counter).
pub const COMMITTED_TOTAL: &str = "gress_checkpoint_committed_total";
/// Checkpoints that failed (counter).
pub const FAILURES_TOTAL: &str = "gress_checkpoint_failures_total";
/// Failed checkpoints whose publication is unknown (counter).
pub const UNCERTAIN_TOTAL: &str = "gress_checkpoint_uncertain_total";
/// When the newest checkpoint committed, seconds since the UNIX epoch
/// (gauge).
pub const LAST_COMMIT_TIMESTAMP_SECONDS: &str = "gress_checkpoint_last_commit_timestamp_seconds";
/// Restores that succeeded, by duration (histogram).
pub const RESTORE_DURATION_SECONDS: &str = "gress_checkpoint_restore_duration_seconds";
/// Restores that succeeded (counter).
pub const RESTORES_TOTAL: &str = "gress_checkpoint_restores_total";
/// Restores that failed or were refused (counter).
pub const RESTORE_FAILURES_TOTAL: &str = "gress_checkpoint_restore_failures_total";

/// Registers the help text of this module's series with the installed
/// recorder. Idempotent; registering a backend with a manager calls it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        DURATION_SECONDS,
        "Time from a checkpoint's cut to its published manifest."
    );
    describe_histogram!(
        PAUSE_SECONDS,
        "The longest time a backend held its writers to take its cut."
    );
    describe_counter!(
        WRITTEN_BYTES_TOTAL,
        "Bytes written to checkpoint storage (new files only)."
    );
    describe_counter!(FILES_WRITTEN_TOTAL, "Files written to checkpoint storage.");
    describe_counter!(
        FILES_REUSED_TOTAL,
        "Files referenced from earlier checkpoints instead of written again."
    );
    describe_gauge!(
        SIZE_BYTES,
        "Bytes the newest committed checkpoint references, shared files included."
    );
    describe_counter!(COMMITTED_TOTAL, "Checkpoints committed.");
    describe_counter!(
        FAILURES_TOTAL,
        "Checkpoints that failed to cut or commit; earlier ones stay intact."
    );
    describe_counter!(
        UNCERTAIN_TOTAL,
        "Failed checkpoints whose publication could not be confirmed either way."
    );
    describe_gauge!(
        LAST_COMMIT_TIMESTAMP_SECONDS,
        "When the newest checkpoint committed, in seconds since the UNIX epoch."
    );
    describe_histogram!(
        RESTORE_DURATION_SECONDS,
        "Time taken by restores that succeeded."
    );
    describe_counter!(RESTORES_TOTAL, "Restores that succeeded.");
    describe_counter!(
        RESTORE_FAILURES_TOTAL,
        "Restores that failed or were refused."
    );
}

fn label(manager: &str) -> [(&'static str, String); 1] {
    [(MANAGER_LABEL, manager.to_string())]
}

pub(crate) fn committed(manager: &str, report: &CheckpointReport) {
    let l = label(manager);
    metrics::histogram!(DURATION_SECONDS, &l).record(report.duration.as_secs_f64());
    metrics::histogram!(PAUSE_SECONDS, &l).record(report.max_pause.as_secs_f64());
    metrics::counter!(WRITTEN_BYTES_TOTAL, &l).increment(report.bytes_written);
    metrics::counter!(FILES_WRITTEN_TOTAL, &l).increment(report.files_written as u64);
    metrics::counter!(FILES_REUSED_TOTAL, &l).increment(report.files_reused as u64);
    metrics::gauge!(SIZE_BYTES, &l).set(report.info.total_bytes as f64);
    metrics::counter!(COMMITTED_TOTAL, &l).increment(1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!(LAST_COMMIT_TIMESTAMP_SECONDS, &l).set(now.as_secs_f64());
}

/// Sets every counter of `manager` to at least 0, so that a series that
/// has not happened yet reads 0 rather than being absent.
pub(crate) fn start(manager: &str) {
    let l = label(manager);
    for name in [
        WRITTEN_BYTES_TOTAL,
        FILES_WRITTEN_TOTAL,
        FILES_REUSED_TOTAL,
        COMMITTED_TOTAL,
        FAILURES_TOTAL,
        UNCERTAIN_TOTAL,
        RESTORES_TOTAL,
        RESTORE_FAILURES_TOTAL,
    ] {
        metrics::counter!(name, &l).increment(0);
    }
}

pub(crate) fn failed(manager: &str) {
    metrics::counter!(FAILURES_TOTAL, &label(manager)).increment(1);
}

pub(crate) fn uncertain(manager: &str) {
    metrics::counter!(UNCERTAIN_TOTAL, &label(manager)).increment(1);
}

/// A restore ended: in `took` if it succeeded, `None` if it failed.
pub(crate) fn restored(manager: &str, took: Option<Duration>) {
    let l = label(manager);
    match took {
        Some(took) => {
            metrics::histogram!(RESTORE_DURATION_SECONDS, &l).record(took.as_secs_f64());
            metrics::counter!(RESTORES_TOTAL, &l).increment(1);
        }
        None => metrics::counter!(RESTORE_FAILURES_TOTAL, &l).increment(1),
    }
}
