//! A storage wrapper that fails, tears or misreports chosen operations, for
//! testing the commit protocol, recovery and the sweep. Behind the
//! `testing` feature.

use std::io::{self, Cursor, Read};

use parking_lot::Mutex;

use super::{ObjectMeta, PutFn, Storage};
use crate::error::{Error, Result};

/// What happens to a chosen write (`put`, `put_new`, `delete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The write fails and stores nothing.
    Fail,
    /// Half of the bytes reach the target path and the write fails: what a
    /// storage without atomic writes leaves after a crash.
    Tear,
    /// The write fails, and so does every later call until
    /// [`FaultyStorage::revive`], as if the process had died at that moment.
    Crash,
    /// The write takes effect but reports an error: a lost response (an S3
    /// request retried after its reply was lost), or a local directory
    /// fsync that failed after the rename or link.
    LostAck,
    /// The write fails as on a full disk (`StorageFull`) and stores
    /// nothing.
    NoSpace,
}

/// Picks the fault of a write from its operation (`put`, `put_new`,
/// `delete`) and path: see [`FaultyStorage::set_rule`].
pub type FaultRule = dyn Fn(&str, &str) -> Option<FaultKind> + Send + Sync;

/// What happens to a chosen read (`open`, `list`, `size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    /// The read fails (a timeout, a flaky connection).
    Fail,
    /// The read returns the object with one bit flipped (`open` only;
    /// other reads fail instead).
    Corrupt,
}

/// Probabilities for [`FaultyStorage::randomize`], out of 1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultRates {
    /// Per write: fail it.
    pub fail: u32,
    /// Per write: tear it.
    pub tear: u32,
    /// Per write: apply it but report an error.
    pub lost_ack: u32,
    /// Per read: fail it.
    pub read_fail: u32,
    /// Per `open`: flip one bit of what it returns.
    pub read_corrupt: u32,
}

/// Counts the writes and reads that reach it and makes chosen ones fail as
/// told: the `n`-th from now ([`arm`](FaultyStorage::arm),
/// [`arm_read`](FaultyStorage::arm_read)), or each with a probability from a
/// seeded generator ([`randomize`](FaultyStorage::randomize)), so a run
/// reproduces from its seed.
pub struct FaultyStorage<S> {
    inner: S,
    state: Mutex<FaultState>,
    rule: Mutex<Option<std::sync::Arc<FaultRule>>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for FaultyStorage<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStorage")
            .field("inner", &self.inner)
            .field("state", &*self.state.lock())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct FaultState {
    writes: u64,
    reads: u64,
    fault: Option<(u64, FaultKind)>,
    read_fault: Option<(u64, ReadFault)>,
    crashed: bool,
    random: Option<(u64, FaultRates)>,
    injected: u64,
    log: Vec<String>,
    keep_log: bool,
}

impl FaultState {
    /// SplitMix64: a tiny, seedable generator; the sequence only has to
    /// reproduce from its seed.
    fn roll(&mut self) -> u32 {
        let Some((seed, _)) = &mut self.random else {
            return u32::MAX;
        };
        *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % 1_000_000) as u32
    }

    fn rates(&self) -> FaultRates {
        self.random.map(|(_, r)| r).unwrap_or_default()
    }
}

impl<S: Storage> FaultyStorage<S> {
    /// Wraps `inner` with no fault armed.
    pub fn new(inner: S) -> Self {
        FaultyStorage {
            inner,
            state: Mutex::new(FaultState {
                keep_log: true,
                ..FaultState::default()
            }),
            rule: Mutex::new(None),
        }
    }

    /// Faults every write `rule` picks (besides armed and random faults),
    /// until set to `None`.
    pub fn set_rule(&self, rule: Option<std::sync::Arc<FaultRule>>) {
        *self.rule.lock() = rule;
    }

    /// Makes the `n`-th write from now on (1 = the next) fail as `kind`.
    pub fn arm(&self, n: u64, kind: FaultKind) {
        let mut s = self.state.lock();
        s.fault = Some((s.writes + n, kind));
    }

    /// Makes the `n`-th read from now on (1 = the next) fail as `kind`.
    pub fn arm_read(&self, n: u64, kind: ReadFault) {
        let mut s = self.state.lock();
        s.read_fault = Some((s.reads + n, kind));
    }

    /// Injects faults at random with these rates, from `seed`; `None`
    /// stops it.
    pub fn randomize(&self, plan: Option<(u64, FaultRates)>) {
        self.state.lock().random = plan;
    }

    /// Disarms every fault.
    pub fn disarm(&self) {
        let mut s = self.state.lock();
        s.fault = None;
        s.read_fault = None;
        s.random = None;
    }

    /// Disarms a crash armed with [`arm`](FaultyStorage::arm) that has not
    /// happened yet.
    pub fn disarm_crash(&self) {
        let mut s = self.state.lock();
        if matches!(s.fault, Some((_, FaultKind::Crash))) {
            s.fault = None;
        }
    }

    /// Ends a simulated crash: calls reach the storage again (a new
    /// process).
    pub fn revive(&self) {
        self.state.lock().crashed = false;
    }

    /// Simulates the death of the process now: every call fails until
    /// [`revive`](FaultyStorage::revive).
    pub fn crash(&self) {
        self.state.lock().crashed = true;
    }

    /// Whether the storage is in a simulated crash.
    pub fn is_crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// Writes seen so far, each as "op path" (kept unless turned off).
    pub fn log(&self) -> Vec<String> {
        self.state.lock().log.clone()
    }

    /// Stops or resumes keeping the log (long runs).
    pub fn keep_log(&self, keep: bool) {
        let mut s = self.state.lock();
        s.keep_log = keep;
        if !keep {
            s.log = Vec::new();
        }
    }

    /// Number of writes seen so far.
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    /// Number of faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state.lock().injected
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Counts a write; returns the fault to apply to it, if any.
    fn next_write(&self, op: &'static str, path: &str) -> Result<Option<FaultKind>> {
        let ruled = self.rule.lock().as_ref().and_then(|rule| rule(op, path));
        let mut s = self.state.lock();
        if s.crashed {
            return Err(injected(
                op,
                path,
                "storage unreachable after a simulated crash",
            ));
        }
        s.writes += 1;
        if s.keep_log {
            s.log.push(format!("{op} {path}"));
        }
        let chosen = match s.fault {
            Some((at, kind)) if at == s.writes => {
                s.fault = None;
                Some(kind)
            }
            _ if ruled.is_some() => ruled,
            _ => {
                let rates = s.rates();
                let roll = s.roll();
                if roll < rates.fail {
                    Some(FaultKind::Fail)
                } else if roll < rates.fail + rates.tear {
                    Some(FaultKind::Tear)
                } else if roll < rates.fail + rates.tear + rates.lost_ack {
                    Some(FaultKind::LostAck)
                } else {
                    None
                }
            }
        };
        if let Some(kind) = chosen {
            s.injected += 1;
            s.crashed = kind == FaultKind::Crash;
        }
        Ok(chosen)
    }

    /// Counts a read; returns the fault to apply to it, if any.
    fn next_read(&self, op: &'static str, path: &str) -> Result<Option<ReadFault>> {
        let mut s = self.state.lock();
        if s.crashed {
            return Err(injected(
                op,
                path,
                "storage unreachable after a simulated crash",
            ));
        }
        s.reads += 1;
        let chosen = match s.read_fault {
            Some((at, kind)) if at == s.reads => {
                s.read_fault = None;
                Some(kind)
            }
            _ => {
                let rates = s.rates();
                let roll = s.roll();
                if roll < rates.read_fail {
                    Some(ReadFault::Fail)
                } else if roll < rates.read_fail + rates.read_corrupt {
                    Some(ReadFault::Corrupt)
                } else {
                    None
                }
            }
        };
        if chosen.is_some() {
            s.injected += 1;
        }
        Ok(chosen)
    }
}

fn no_space(op: &'static str, path: &str) -> Error {
    Error::storage(
        op,
        path,
        io::Error::new(
            io::ErrorKind::StorageFull,
            "injected fault: no space left on device",
        ),
    )
}

fn injected(op: &'static str, path: &str, what: &str) -> Error {
    Error::storage(
        op,
        path,
        io::Error::other(format!("injected fault: {what}")),
    )
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn put(&self, path: &str, write: &mut PutFn<'_>) -> Result<()> {
        match self.next_write("put", path)? {
            None => self.inner.put(path, write),
            Some(FaultKind::Tear) => {
                let mut bytes = Vec::new();
                write(&mut bytes)?;
                let half = &bytes[..bytes.len() / 2];
                self.inner.put(path, &mut |w| {
                    w.write_all(half)
                        .map_err(|e| Error::storage("writing", path, e))
                })?;
                Err(injected("writing", path, "torn write"))
            }
            Some(FaultKind::LostAck) => {
                self.inner.put(path, write)?;
                Err(injected("writing", path, "response lost after the write"))
            }
            Some(FaultKind::Fail | FaultKind::Crash) => {
                Err(injected("writing", path, "write failed"))
            }
            Some(FaultKind::NoSpace) => Err(no_space("writing", path)),
        }
    }

    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<()> {
        match self.next_write("put_new", path)? {
            None => self.inner.put_new(path, bytes),
            Some(FaultKind::Tear) => {
                self.inner.put_new(path, &bytes[..bytes.len() / 2])?;
                Err(injected("publishing", path, "torn write"))
            }
            Some(FaultKind::LostAck) => {
                self.inner.put_new(path, bytes)?;
                Err(injected(
                    "publishing",
                    path,
                    "response lost after the write",
                ))
            }
            Some(FaultKind::Fail | FaultKind::Crash) => {
                Err(injected("publishing", path, "write failed"))
            }
            Some(FaultKind::NoSpace) => Err(no_space("publishing", path)),
        }
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + '_>> {
        match self.next_read("opening", path)? {
            None => self.inner.open(path),
            Some(ReadFault::Fail) => Err(injected("opening", path, "read failed")),
            Some(ReadFault::Corrupt) => {
                let mut bytes = Vec::new();
                self.inner
                    .open(path)?
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::storage("reading", path, e))?;
                let middle = bytes.len() / 2;
                if let Some(b) = bytes.get_mut(middle) {
                    *b ^= 0x10;
                }
                Ok(Box::new(Cursor::new(bytes)))
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        match self.next_read("listing", prefix)? {
            None => self.inner.list(prefix),
            Some(_) => Err(injected("listing", prefix, "list failed")),
        }
    }

    fn size(&self, path: &str) -> Result<Option<u64>> {
        match self.next_read("reading size of", path)? {
            None => self.inner.size(path),
            Some(_) => Err(injected("reading size of", path, "read failed")),
        }
    }

    fn delete(&self, path: &str) -> Result<()> {
        match self.next_write("delete", path)? {
            None => self.inner.delete(path),
            Some(FaultKind::LostAck) => {
                self.inner.delete(path)?;
                Err(injected("deleting", path, "response lost after the delete"))
            }
            Some(_) => Err(injected("deleting", path, "delete failed")),
        }
    }
}
