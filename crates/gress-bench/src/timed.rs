//! A backend wrapper that times what a stream job's epoch cut asks of the
//! backend: the cache flush (`write_batch`), the capture, and the time
//! from the capture to the checkpoint's commit. Everything else is passed
//! through untouched.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gress_state::checkpoint::{
    Capture, CaptureKind, CaptureMode, CapturedFile, CheckpointFiles, Checkpointable,
    PreparedRestore,
};
use gress_state::{
    KeyRange, Metrics, RestoreSummary, Result, ScanIter, SnapshotSummary, StateBackend, WriteBatch,
};

/// What one worker's backend saw, in order.
#[derive(Debug, Default)]
pub(crate) struct CutLog {
    /// `write_batch` calls: start, duration, operations.
    pub(crate) flushes: Vec<(Instant, Duration, usize)>,
    /// Captures: start, duration of the call, the pause the backend reports.
    pub(crate) captures: Vec<(Instant, Duration, Duration)>,
    /// Checkpoints committed: time from the capture's start.
    pub(crate) committed: Vec<Duration>,
}

impl CutLog {
    /// The worker's stall per cut: a capture plus the flush that ended
    /// right before it (the same cut); without captures, each flush.
    pub(crate) fn cut_pauses(&self) -> Vec<Duration> {
        if self.captures.is_empty() {
            return self.flushes.iter().map(|f| f.1).collect();
        }
        self.captures
            .iter()
            .map(|&(start, took, _)| {
                let flush = self
                    .flushes
                    .iter()
                    .rev()
                    .find(|&&(s, d, _)| {
                        s + d <= start && start.duration_since(s + d) < Duration::from_millis(5)
                    })
                    .map_or(Duration::ZERO, |f| f.1);
                flush + took
            })
            .collect()
    }
}

/// A backend with its cut-related calls timed into a shared log.
#[derive(Debug)]
pub(crate) struct TimedBackend {
    inner: Arc<dyn Checkpointable>,
    log: Arc<Mutex<CutLog>>,
}

impl TimedBackend {
    pub(crate) fn new(inner: Arc<dyn Checkpointable>, log: Arc<Mutex<CutLog>>) -> Self {
        TimedBackend { inner, log }
    }
}

fn lock(log: &Mutex<CutLog>) -> std::sync::MutexGuard<'_, CutLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

impl StateBackend for TimedBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn get_with_expiry(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Option<u64>)>> {
        self.inner.get_with_expiry(key)
    }
    fn default_ttl(&self) -> Option<std::time::Duration> {
        self.inner.default_ttl()
    }
    fn ordered(&self) -> bool {
        self.inner.ordered()
    }
    fn multi_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.multi_get(keys)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put(key, value)
    }
    fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.inner.put_with_ttl(key, value, ttl)
    }
    fn delete(&self, key: &[u8]) -> Result<()> {
        self.inner.delete(key)
    }
    fn write_batch(&self, batch: &WriteBatch) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.write_batch(batch);
        lock(&self.log)
            .flushes
            .push((start, start.elapsed(), batch.len()));
        r
    }
    fn scan(&self, range: KeyRange) -> Result<ScanIter<'_>> {
        self.inner.scan(range)
    }
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<SnapshotSummary> {
        self.inner.snapshot_to(out)
    }
    fn restore_from(&self, input: &mut dyn Read) -> Result<RestoreSummary> {
        self.inner.restore_from(input)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn metrics(&self) -> Metrics {
        self.inner.metrics()
    }
    fn close(&self) -> Result<()> {
        self.inner.close()
    }
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}

impl Checkpointable for TimedBackend {
    fn claim_checkpoints(&self, owner: u64) -> Result<()> {
        self.inner.claim_checkpoints(owner)
    }
    fn release_checkpoints(&self, owner: u64) {
        self.inner.release_checkpoints(owner)
    }
    fn delta_base(&self) -> Option<u64> {
        self.inner.delta_base()
    }
    fn capture(
        &self,
        owner: u64,
        mode: CaptureMode,
        checkpoint_id: u64,
    ) -> Result<Box<dyn Capture>> {
        let start = Instant::now();
        let inner = self.inner.capture(owner, mode, checkpoint_id)?;
        lock(&self.log)
            .captures
            .push((start, start.elapsed(), inner.pause()));
        Ok(Box::new(TimedCapture {
            inner,
            start,
            log: Arc::clone(&self.log),
        }))
    }
    fn prepare_restore(
        &self,
        format: &str,
        files: &dyn CheckpointFiles,
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        self.inner.prepare_restore(format, files)
    }

    fn prepare_restore_ranges(
        &self,
        sources: &[gress_state::RangeSource<'_>],
    ) -> Result<Box<dyn PreparedRestore + '_>> {
        self.inner.prepare_restore_ranges(sources)
    }
}

struct TimedCapture {
    inner: Box<dyn Capture>,
    start: Instant,
    log: Arc<Mutex<CutLog>>,
}

impl Capture for TimedCapture {
    fn kind(&self) -> CaptureKind {
        self.inner.kind()
    }
    fn base(&self) -> Option<u64> {
        self.inner.base()
    }
    fn format(&self) -> &'static str {
        self.inner.format()
    }
    fn files(&self) -> &[CapturedFile] {
        self.inner.files()
    }
    fn write_stream(&mut self, name: &str, out: &mut dyn Write) -> Result<u64> {
        self.inner.write_stream(name, out)
    }
    fn pause(&self) -> Duration {
        self.inner.pause()
    }
    fn committed(self: Box<Self>) {
        lock(&self.log).committed.push(self.start.elapsed());
        self.inner.committed();
    }
}
