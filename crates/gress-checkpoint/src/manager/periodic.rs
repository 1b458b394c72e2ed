//! Checkpoints on a timer, on a thread of their own.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{CheckpointManager, Shared};
use crate::error::{Error, Result};
use crate::manifest::Metadata;

/// How long `stop_periodic` waits for a checkpoint in progress before it
/// leaves the thread to finish on its own.
const STOP_WAIT: Duration = Duration::from_secs(2);

pub(super) struct Periodic {
    stop: Arc<(Mutex<bool>, Condvar)>,
    done: mpsc::Receiver<()>,
}

impl CheckpointManager {
    /// Starts taking a checkpoint every `interval` on a background thread,
    /// with the metadata `metadata()` returns just before the cuts are
    /// taken. Writes that land between the two are in the state but not
    /// described by the metadata: keep offsets in the state itself, or use
    /// [`CheckpointManager::begin_checkpoint`] from the processing thread
    /// for an exact match. A failed checkpoint is logged and counted; the
    /// next one is tried on time.
    pub fn start_periodic(&self, metadata: impl Fn() -> Metadata + Send + 'static) -> Result<()> {
        let mut periodic = self.periodic.lock();
        if periodic.is_some() {
            return Err(Error::invalid(
                "start_periodic",
                "periodic checkpoints are running",
            ));
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = Arc::clone(&stop);
        let shared = Arc::clone(&self.shared);
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("gress-checkpoints".into())
            .spawn(move || {
                run(&shared, &thread_stop, &metadata);
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::storage("starting the checkpoint thread for", "periodic", e))?;
        *periodic = Some(Periodic { stop, done });
        Ok(())
    }

    /// Stops periodic checkpoints. Waits a moment for a checkpoint in
    /// progress; one still running after that finishes (or times out) on
    /// its own, so this returns promptly even if the storage hangs.
    pub fn stop_periodic(&self) {
        let Some(p) = self.periodic.lock().take() else {
            return;
        };
        *p.stop.0.lock() = true;
        p.stop.1.notify_all();
        if p.done.recv_timeout(STOP_WAIT).is_err() {
            tracing::warn!("a periodic checkpoint is still running; it finishes in the background");
        }
    }
}

fn run(shared: &Arc<Shared>, stop: &(Mutex<bool>, Condvar), metadata: &dyn Fn() -> Metadata) {
    loop {
        let interval = shared.config.read().interval;
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                stop.1.wait_for(&mut stopped, interval);
            }
            if *stopped {
                return;
            }
        }
        let result = Shared::begin(shared, metadata()).and_then(|p| p.commit());
        if let Err(e) = result {
            if matches!(e, Error::Busy { .. }) {
                tracing::debug!(error = %e, "periodic checkpoint skipped");
            } else {
                tracing::warn!(error = %e, "periodic checkpoint failed; will retry");
            }
        }
    }
}
