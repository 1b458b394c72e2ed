//! `MetricsPublisher`: publishes registered backends' metrics on a timer.

use std::fmt;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::backend::StateBackend;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// A backend's current metrics, or `None` once it is dropped or closed.
type Snapshot = dyn Fn() -> Option<Metrics> + Send + Sync;

#[derive(Clone)]
struct Source {
    label: String,
    snapshot: Arc<Snapshot>,
}

struct Shared {
    sources: Mutex<Vec<Source>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    /// Publishes every source once; forgets those that are gone.
    fn publish_all(&self) {
        let sources = self.sources.lock().clone();
        let mut gone = Vec::new();
        for source in sources {
            match (source.snapshot)() {
                Some(m) => super::publish(&source.label, &m),
                None => gone.push(source.snapshot),
            }
        }
        if !gone.is_empty() {
            self.sources
                .lock()
                .retain(|s| !gone.iter().any(|g| Arc::ptr_eq(g, &s.snapshot)));
        }
    }
}

/// Publishes the metrics of registered backends into the [`metrics`]
/// facade (see [`publish`](super::publish)) once per interval, on a thread
/// of its own, so that no backend operation pays for it.
///
/// The publisher holds backends weakly: a backend that is dropped or closed
/// is forgotten (its series keep their last values). Dropping the publisher
/// publishes once more and stops its thread.
pub struct MetricsPublisher {
    shared: Arc<Shared>,
    interval: Duration,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for MetricsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsPublisher")
            .field("interval", &self.interval)
            .field("backends", &self.labels())
            .finish_non_exhaustive()
    }
}

impl MetricsPublisher {
    /// The interval jobs use unless told otherwise.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    /// Starts a publisher that refreshes every `interval` (at least 1 ms).
    pub fn new(interval: Duration) -> Result<Self> {
        if interval < Duration::from_millis(1) {
            return Err(Error::invalid_config(
                "interval",
                "the metrics interval must be at least 1 ms",
            ));
        }
        super::describe();
        let shared = Arc::new(Shared {
            sources: Mutex::new(Vec::new()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("gress-metrics".into())
            .spawn(move || {
                loop {
                    let stopping = {
                        let mut stop = worker.stop.lock();
                        if !*stop {
                            worker.wake.wait_for(&mut stop, interval);
                        }
                        *stop
                    };
                    worker.publish_all();
                    if stopping {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("starting the metrics publisher thread", e))?;
        Ok(MetricsPublisher {
            shared,
            interval,
            thread: Some(thread),
        })
    }

    /// The refresh interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Publishes `backend` under `label` (the value of the `backend`
    /// label), now and every interval until it is dropped or closed.
    /// Labels are unique within a publisher and non-empty.
    pub fn register<B>(&self, label: impl Into<String>, backend: &Arc<B>) -> Result<()>
    where
        B: StateBackend + ?Sized + 'static,
    {
        let label = label.into();
        if label.is_empty() {
            return Err(Error::invalid_argument("label", "must not be empty"));
        }
        let weak: Weak<B> = Arc::downgrade(backend);
        let snapshot: Arc<Snapshot> = Arc::new(move || {
            let backend = weak.upgrade()?;
            (!backend.is_closed()).then(|| backend.metrics())
        });
        {
            let mut sources = self.shared.sources.lock();
            if sources.iter().any(|s| s.label == label) {
                return Err(Error::invalid_argument(
                    "label",
                    format!("a backend is already published as `{label}`"),
                ));
            }
            sources.push(Source {
                label: label.clone(),
                snapshot: Arc::clone(&snapshot),
            });
        }
        if let Some(m) = snapshot() {
            super::publish(&label, &m);
        }
        Ok(())
    }

    /// Stops publishing the backend registered as `label`; returns whether
    /// there was one. Its series keep their last values.
    pub fn unregister(&self, label: &str) -> bool {
        let mut sources = self.shared.sources.lock();
        let before = sources.len();
        sources.retain(|s| s.label != label);
        sources.len() != before
    }

    /// The labels of the backends being published.
    pub fn labels(&self) -> Vec<String> {
        self.shared
            .sources
            .lock()
            .iter()
            .map(|s| s.label.clone())
            .collect()
    }

    /// Publishes every registered backend now, on the calling thread.
    pub fn publish_now(&self) {
        self.shared.publish_all();
    }
}

impl Drop for MetricsPublisher {
    fn drop(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the metrics publisher thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStateBackend;

    #[test]
    fn forgets_backends_that_are_dropped_or_closed() -> Result<()> {
        let publisher = MetricsPublisher::new(Duration::from_secs(3600))?;
        let a = Arc::new(MemoryStateBackend::default());
        let b: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::default());
        publisher.register("a", &a)?;
        publisher.register("b", &b)?;
        assert_eq!(publisher.labels(), ["a", "b"]);
        drop(a);
        b.close()?;
        publisher.publish_now();
        assert!(publisher.labels().is_empty());
        Ok(())
    }

    #[test]
    fn refuses_empty_and_duplicate_labels_and_a_zero_interval() -> Result<()> {
        assert!(matches!(
            MetricsPublisher::new(Duration::ZERO),
            Err(Error::InvalidConfig {
                field: "interval",
                ..
            })
        ));
        let publisher = MetricsPublisher::new(Duration::from_millis(10))?;
        let a = Arc::new(MemoryStateBackend::default());
        assert!(matches!(
            publisher.register("", &a),
            Err(Error::InvalidArgument { name: "label", .. })
        ));
        publisher.register("a", &a)?;
        assert!(matches!(
            publisher.register("a", &a),
            Err(Error::InvalidArgument { name: "label", .. })
        ));
        assert!(publisher.unregister("a"));
        assert!(!publisher.unregister("a"));
        publisher.register("a", &a)?;
        Ok(())
    }
}
