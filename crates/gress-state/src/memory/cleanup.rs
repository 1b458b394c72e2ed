//! Background removal of expired entries, in bounded steps per shard.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use super::MemoryStateBackend;
use super::shard::{Inner, ShardState};
use crate::backend::StateBackend;
use crate::metrics::Counter;

/// The cleanup thread and how to stop it.
pub(super) struct Cleaner {
    pub(super) stop: Arc<(Mutex<bool>, Condvar)>,
    pub(super) thread: JoinHandle<()>,
}

impl Cleaner {
    /// Stops the thread and waits for it.
    pub(super) fn stop(self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if self.thread.join().is_err() {
            tracing::error!("the TTL cleanup thread panicked");
        }
    }
}

impl MemoryStateBackend {
    /// Starts the cleanup thread on the first write that carries an expiry.
    #[inline]
    pub(super) fn note_expiring_write(&self) {
        if !self.cleaner_started.load(Ordering::Relaxed) {
            self.start_cleaner();
        }
    }

    fn start_cleaner(&self) {
        let mut cleaner = self.cleaner.lock();
        if self.cleaner_started.load(Ordering::Relaxed) || self.is_closed() {
            return;
        }
        self.cleaner_started.store(true, Ordering::Relaxed);
        if self.inner.cleanup_interval.is_zero() {
            return;
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.cleanup_interval;
        let thread_stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("gress-ttl-cleanup".into())
            .spawn(move || cleanup_loop(&weak, interval, &thread_stop));
        match spawned {
            Ok(thread) => *cleaner = Some(Cleaner { stop, thread }),
            // Without the thread, expired entries are still never returned
            // and are removed on read; say so and carry on.
            Err(e) => tracing::warn!(error = %e, "could not start the TTL cleanup thread"),
        }
    }
}

impl Inner {
    /// One pass of background cleanup over every shard, in bounded steps.
    pub(super) fn cleanup_pass(&self) -> u64 {
        let mut removed = 0;
        for shard in self.shards.iter() {
            removed += self.cleanup_shard(shard);
        }
        if removed > 0 {
            self.metrics.add(Counter::Expired, removed);
        }
        removed
    }

    /// Walks one shard's buckets from first to last, `cleanup_batch` buckets
    /// per lock hold. Removing does not move other entries; if the table
    /// grows between steps, entries missed are caught by the next pass. Only
    /// expired entries are removed.
    fn cleanup_shard(&self, shard: &RwLock<Option<ShardState>>) -> u64 {
        if shard.read().as_ref().is_none_or(|s| s.n_expiring == 0) {
            return 0;
        }
        let mut removed = 0;
        let mut bucket = 0;
        loop {
            let now = self.clock.now_ms();
            let mut guard = shard.write();
            let Some(state) = guard.as_mut() else {
                return removed;
            };
            let end = state
                .table
                .get()
                .num_buckets()
                .min(bucket + self.cleanup_batch);
            while bucket < end && state.n_expiring > 0 {
                if state
                    .table
                    .get()
                    .get_bucket(bucket)
                    .is_some_and(|e| e.is_dead_at(now))
                {
                    let table = state.table.get_mut();
                    if let Ok(entry) = table.get_bucket_entry(bucket) {
                        entry.remove();
                        state.n_expiring -= 1;
                        removed += 1;
                    }
                }
                bucket += 1;
            }
            if bucket >= state.table.get().num_buckets() || state.n_expiring == 0 {
                return removed;
            }
            drop(guard);
            std::thread::yield_now();
        }
    }
}

fn cleanup_loop(inner: &Weak<Inner>, interval: Duration, stop: &(Mutex<bool>, Condvar)) {
    loop {
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                stop.1.wait_for(&mut stopped, interval);
            }
            if *stopped {
                return;
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let removed = inner.cleanup_pass();
        if removed > 0 {
            tracing::trace!(removed, "removed expired entries");
        }
    }
}
