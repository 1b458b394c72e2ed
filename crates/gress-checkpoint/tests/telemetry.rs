//! The manager's metrics, read from the process's Prometheus endpoint,
//! agree with its own reports and stats.

use std::net::SocketAddr;
use std::sync::Arc;

use gress_checkpoint::storage::fault::{FaultKind, FaultyStorage};
use gress_checkpoint::{CheckpointConfig, CheckpointManager, LocalStorage, Metadata};
use gress_state::telemetry::serve_prometheus;
use gress_state::{MemoryStateBackend, StateBackend};
use gress_testkit::prometheus::{parse, value};

type R = Result<(), Box<dyn std::error::Error>>;

/// Two commits, one storage failure and one restore show up as counters,
/// histograms and gauges equal to the reports and stats.
#[test]
fn commits_failures_and_restores_are_counted() -> R {
    let endpoint = serve_prometheus(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let dir = tempfile::tempdir()?;
    let storage = Arc::new(FaultyStorage::new(LocalStorage::new(dir.path())?));
    let manager = CheckpointManager::open(
        storage.clone(),
        CheckpointConfig::default().with_metrics_label("orders"),
    )?;
    let state = Arc::new(MemoryStateBackend::default());
    manager.register("state", state.clone())?;

    state.put(b"a", b"1")?;
    let first = manager.trigger_checkpoint(Metadata::new())?;
    state.put(b"b", b"2")?;
    storage.arm(1, FaultKind::Fail);
    assert!(manager.trigger_checkpoint(Metadata::new()).is_err());
    let second = manager.trigger_checkpoint(Metadata::new())?;
    manager.restore(first.info.id)?;
    assert!(manager.restore(999).is_err());

    let stats = manager.stats();
    assert_eq!((stats.committed, stats.failed), (2, 1));
    let samples = parse(&endpoint.render())?;
    let l = [("manager", "orders")];
    let get = |name: &str| value(&samples, name, &l);
    assert_eq!(get("gress_checkpoint_committed_total"), Some(2.0));
    assert_eq!(get("gress_checkpoint_failures_total"), Some(1.0));
    assert_eq!(get("gress_checkpoint_duration_seconds_count"), Some(2.0));
    assert_eq!(
        get("gress_checkpoint_duration_seconds_sum"),
        Some(first.duration.as_secs_f64() + second.duration.as_secs_f64())
    );
    assert_eq!(get("gress_checkpoint_pause_seconds_count"), Some(2.0));
    assert_eq!(
        get("gress_checkpoint_written_bytes_total"),
        Some((first.bytes_written + second.bytes_written) as f64)
    );
    assert_eq!(
        get("gress_checkpoint_files_written_total"),
        Some((first.files_written + second.files_written) as f64)
    );
    assert_eq!(
        get("gress_checkpoint_size_bytes"),
        Some(second.info.total_bytes as f64)
    );
    assert!(get("gress_checkpoint_last_commit_timestamp_seconds").is_some_and(|t| t > 1.0e9));
    assert_eq!(get("gress_checkpoint_restores_total"), Some(1.0));
    assert_eq!(
        get("gress_checkpoint_restore_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(get("gress_checkpoint_restore_failures_total"), Some(1.0));
    assert!(
        samples
            .iter()
            .any(|s| s.name == "gress_checkpoint_duration_seconds_bucket"),
        "durations are a histogram with buckets"
    );
    assert_eq!(state.get(b"b")?, None, "the restore took effect");
    Ok(())
}

/// An empty metrics label is refused when the manager opens.
#[test]
fn an_empty_metrics_label_is_refused() -> R {
    let dir = tempfile::tempdir()?;
    let opened = CheckpointManager::open(
        Arc::new(LocalStorage::new(dir.path())?),
        CheckpointConfig::default().with_metrics_label(""),
    );
    match opened {
        Err(gress_checkpoint::Error::Invalid { what, .. }) => assert_eq!(what, "metrics_label"),
        other => return Err(format!("expected Invalid, got {other:?}").into()),
    }
    Ok(())
}
