//! A storage wrapper that fails or tears chosen writes, for testing the
//! commit protocol and recovery.

use std::io::{self, Read};

use parking_lot::Mutex;

use super::{ObjectMeta, PutFn, Storage};
use crate::error::{Error, Result};

/// What happens to the chosen write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The write fails and stores nothing.
    Fail,
    /// Half of the bytes reach the target path and the write fails: what a
    /// storage without atomic writes leaves after a crash.
    Tear,
    /// The write fails, and so does every later call, as if the process
    /// had died at that moment.
    Crash,
}

/// Counts the writes (`put`, `put_new`, `delete`) that reach it and makes
/// the `n`-th (counting from 1) fail as told.
#[derive(Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    state: Mutex<FaultState>,
}

#[derive(Debug)]
struct FaultState {
    writes: u64,
    fault: Option<(u64, FaultKind)>,
    crashed: bool,
    log: Vec<String>,
}

impl<S: Storage> FaultyStorage<S> {
    /// Wraps `inner` with no fault armed.
    pub fn new(inner: S) -> Self {
        FaultyStorage {
            inner,
            state: Mutex::new(FaultState {
                writes: 0,
                fault: None,
                crashed: false,
                log: Vec::new(),
            }),
        }
    }

    /// Makes the `n`-th write from now on (1 = the next) fail as `kind`.
    pub fn arm(&self, n: u64, kind: FaultKind) {
        let mut s = self.state.lock();
        s.fault = Some((s.writes + n, kind));
    }

    /// Writes seen so far, each as "op path".
    pub fn log(&self) -> Vec<String> {
        self.state.lock().log.clone()
    }

    /// Number of writes seen so far.
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Counts a write; returns the fault to apply to it, if any.
    fn next_write(&self, op: &'static str, path: &str) -> Result<Option<FaultKind>> {
        let mut s = self.state.lock();
        if s.crashed {
            return Err(injected(
                op,
                path,
                "storage unreachable after a simulated crash",
            ));
        }
        s.writes += 1;
        s.log.push(format!("{op} {path}"));
        match s.fault {
            Some((at, kind)) if at == s.writes => {
                s.fault = None;
                s.crashed = kind == FaultKind::Crash;
                Ok(Some(kind))
            }
            _ => Ok(None),
        }
    }

    fn check_alive(&self, op: &'static str, path: &str) -> Result<()> {
        if self.state.lock().crashed {
            return Err(injected(
                op,
                path,
                "storage unreachable after a simulated crash",
            ));
        }
        Ok(())
    }
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
            Some(_) => Err(injected("writing", path, "write failed")),
        }
    }

    fn put_new(&self, path: &str, bytes: &[u8]) -> Result<()> {
        match self.next_write("put_new", path)? {
            None => self.inner.put_new(path, bytes),
            Some(FaultKind::Tear) => {
                self.inner.put_new(path, &bytes[..bytes.len() / 2])?;
                Err(injected("publishing", path, "torn write"))
            }
            Some(_) => Err(injected("publishing", path, "write failed")),
        }
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send + '_>> {
        self.check_alive("opening", path)?;
        self.inner.open(path)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.check_alive("listing", prefix)?;
        self.inner.list(prefix)
    }

    fn size(&self, path: &str) -> Result<Option<u64>> {
        self.check_alive("reading size of", path)?;
        self.inner.size(path)
    }

    fn delete(&self, path: &str) -> Result<()> {
        match self.next_write("delete", path)? {
            None => self.inner.delete(path),
            Some(_) => Err(injected("deleting", path, "delete failed")),
        }
    }
}
