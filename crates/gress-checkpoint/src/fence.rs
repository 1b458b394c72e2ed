//! One writing manager per storage location: fencing epochs and a lease.
//!
//! ```text
//! fence/<epoch, 20 digits>          create-only: who took the location
//! fence/<epoch, 20 digits>.lease    overwritten by that holder while it runs
//! ```
//!
//! A manager that opens a location for writing creates the next epoch's
//! object (create-only, so of two managers starting at once one fails). The
//! highest epoch holds the location: before every publish and every sweep a
//! manager lists `fence/` and stops with [`Error::Fenced`] if a higher epoch
//! exists. The lease tells a new manager whether the holder still runs: it
//! is renewed every third of its duration and marked released on close; a
//! holder on this machine whose process is gone is known dead at once.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::FENCE;
use crate::storage::Storage;

/// How long releasing a lease may wait for the storage.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Who holds an epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    token: u64,
    host: String,
    pid: u32,
    /// Linux boot id and process start time, to tell whether the process
    /// still runs when it is on this machine.
    #[serde(default)]
    boot_id: Option<String>,
    #[serde(default)]
    start_ticks: Option<u64>,
    created_at_ms: u64,
    /// The lease it keeps, if any: until its first lease record is
    /// written, it counts as alive for this long after `created_at_ms`.
    #[serde(default)]
    lease_ms: Option<u64>,
}

/// The holder's lease record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    token: u64,
    renewed_at_ms: u64,
    lease_ms: u64,
    released: bool,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn epoch_path(epoch: u64) -> String {
    format!("{FENCE}{epoch:020}")
}

fn lease_path(epoch: u64) -> String {
    format!("{FENCE}{epoch:020}.lease")
}

fn epoch_of(path: &str) -> Option<u64> {
    let name = path.strip_prefix(FENCE)?;
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// The highest epoch in storage.
fn top_epoch(storage: &dyn Storage) -> Result<Option<u64>> {
    Ok(storage
        .list(FENCE)?
        .iter()
        .filter_map(|o| epoch_of(&o.path))
        .max())
}

/// This process, as the lease names it.
fn this_process() -> (String, u32, Option<String>, Option<u64>) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let pid = std::process::id();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string());
    (host, pid, boot_id, start_ticks(pid))
}

/// Field 22 of `/proc/<pid>/stat`: when the process started.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Tokens of the managers of this process that hold a location now.
static LIVE_TOKENS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

impl Holder {
    /// Whether the holder is known to have exited: it ran on this machine
    /// in this boot, and no process with its id and start time exists, or
    /// it is a manager of this very process that has been closed.
    fn known_dead(&self) -> bool {
        let (_, pid, boot_id, ours_start) = this_process();
        match (&self.boot_id, boot_id, self.start_ticks) {
            (Some(theirs), Some(ours), Some(start)) if *theirs == ours => {
                if self.pid == pid && Some(start) == ours_start {
                    !LIVE_TOKENS.lock().contains(&self.token)
                } else {
                    start_ticks(self.pid) != Some(start)
                }
            }
            _ => false,
        }
    }

    fn describe(&self) -> String {
        format!("pid {} on {}", self.pid, self.host)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(storage: &dyn Storage, path: &str) -> Result<Option<T>> {
    match storage.read_all(path, 64 << 10) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::invalid("fence", format!("cannot encode: {e}")))
}

/// This manager's hold on a location.
pub(crate) struct Fence {
    storage: Arc<dyn Storage>,
    epoch: u64,
    token: u64,
    lease: Option<Duration>,
    /// The higher epoch seen, once fenced.
    fenced_by: AtomicU64,
    heartbeat: Mutex<Option<Heartbeat>>,
}

struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("epoch", &self.epoch)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Fence {
    /// Takes the location: refuses if a live holder has it (unless
    /// `take_over`), then creates the next epoch.
    pub(crate) fn acquire(
        storage: Arc<dyn Storage>,
        lease: Option<Duration>,
        take_over: bool,
        token: u64,
    ) -> Result<Arc<Self>> {
        let top = top_epoch(&*storage)?;
        if let Some(top) = top
            && !take_over
        {
            check_not_alive(&*storage, top)?;
        }
        let epoch = match top {
            None => 1,
            Some(top) => top
                .checked_add(1)
                .ok_or(Error::IdsExhausted { found: top })?,
        };
        let (host, pid, boot_id, start_ticks) = this_process();
        let holder = Holder {
            token,
            host,
            pid,
            boot_id,
            start_ticks,
            created_at_ms: now_ms(),
            lease_ms: lease.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
        };
        // Live from before its fencing record exists: another manager of
        // this process that reads the record in between must not take this
        // one for a closed one.
        LIVE_TOKENS.lock().push(token);
        let not_live = || LIVE_TOKENS.lock().retain(|t| *t != token);
        let record = match to_json(&holder) {
            Ok(record) => record,
            Err(e) => {
                not_live();
                return Err(e);
            }
        };
        match storage.put_new(&epoch_path(epoch), &record) {
            Ok(()) => {}
            Err(Error::Storage { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                not_live();
                return Err(Error::LocationInUse {
                    holder: "another manager opening this location at the same time".into(),
                    age_ms: 0,
                    lease_ms: lease.map_or(0, |l| l.as_millis() as u64),
                });
            }
            Err(e) => {
                // The create may have happened with its reply lost.
                let ours = storage
                    .read_all(&epoch_path(epoch), 64 << 10)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Holder>(&b).ok())
                    .is_some_and(|h| h.token == token);
                if !ours {
                    not_live();
                    return Err(e);
                }
            }
        }
        let fence = Arc::new(Fence {
            storage,
            epoch,
            token,
            lease,
            fenced_by: AtomicU64::new(0),
            heartbeat: Mutex::new(None),
        });
        if lease.is_some() {
            // On error the fence drops and the token stops being live.
            fence.renew()?;
        }
        // Earlier epochs hold nothing now; a manager still running on one
        // sees this epoch and stops.
        for object in fence.storage.list(FENCE)? {
            let old = epoch_of(&object.path)
                .or_else(|| object.path.strip_suffix(".lease").and_then(epoch_of));
            let stale = crate::storage::is_stale_temporary(&object.path);
            if (stale || old.is_some_and(|e| e < epoch))
                && let Err(e) = fence.storage.delete(&object.path)
            {
                tracing::debug!(path = object.path, error = %e, "could not delete an old fencing record");
            }
        }
        Ok(fence)
    }

    /// This manager's epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Fails with [`Error::Fenced`] if a newer manager took over.
    pub(crate) fn check(&self) -> Result<()> {
        let newer = self.fenced_by.load(Ordering::Acquire);
        if newer != 0 {
            return Err(Error::Fenced {
                ours: self.epoch,
                newer,
            });
        }
        match top_epoch(&*self.storage)? {
            Some(top) if top > self.epoch => {
                self.fenced_by.store(top, Ordering::Release);
                tracing::error!(
                    ours = self.epoch,
                    newer = top,
                    "fenced: another manager took over this checkpoint location"
                );
                Err(Error::Fenced {
                    ours: self.epoch,
                    newer: top,
                })
            }
            _ => Ok(()),
        }
    }

    /// True once a newer epoch was seen.
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced_by.load(Ordering::Acquire) != 0
    }

    fn write_lease(&self, released: bool) -> Result<()> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let record = Lease {
            token: self.token,
            renewed_at_ms: now_ms(),
            lease_ms: lease.as_millis() as u64,
            released,
        };
        let bytes = to_json(&record)?;
        self.storage.put(&lease_path(self.epoch), &mut |w| {
            w.write_all(&bytes)
                .map_err(|e| Error::storage("writing", lease_path(self.epoch), e))
        })
    }

    fn renew(&self) -> Result<()> {
        self.write_lease(false)
    }

    /// Renews the lease every third of its duration on a thread, until
    /// [`Fence::release`].
    pub(crate) fn start_heartbeat(self: &Arc<Self>) {
        let Some(lease) = self.lease else {
            return;
        };
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = Arc::clone(&stop);
        let fence = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("gress-checkpoint-lease".into())
            .spawn(move || {
                loop {
                    {
                        let mut stopped = thread_stop.0.lock();
                        if !*stopped {
                            thread_stop.1.wait_for(&mut stopped, lease / 3);
                        }
                        if *stopped {
                            return;
                        }
                    }
                    let Some(fence) = fence.upgrade() else {
                        return;
                    };
                    if fence.check().is_err() {
                        return;
                    }
                    let deadline = std::time::Instant::now() + lease / 3;
                    if let Err(e) = crate::storage::with_deadline(deadline, || fence.renew()) {
                        tracing::warn!(error = %e, "could not renew the checkpoint location's lease");
                    }
                }
            });
        match spawned {
            Ok(thread) => *self.heartbeat.lock() = Some(Heartbeat { stop, thread }),
            Err(e) => tracing::warn!(error = %e, "could not start the lease thread"),
        }
    }

    /// Stops renewing and marks the lease released, so the next manager
    /// may start at once.
    pub(crate) fn release(&self) {
        LIVE_TOKENS.lock().retain(|t| *t != self.token);
        if let Some(hb) = self.heartbeat.lock().take() {
            *hb.stop.0.lock() = true;
            hb.stop.1.notify_all();
            if hb.thread.join().is_err() {
                tracing::error!("the lease thread panicked");
            }
        }
        // Best effort, and bounded: a store that does not answer must not
        // hold up a manager being dropped.
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        if self.lease.is_some()
            && !self.is_fenced()
            && let Err(e) = crate::storage::with_deadline(deadline, || self.write_lease(true))
        {
            tracing::warn!(error = %e, "could not release the checkpoint location's lease");
        }
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        LIVE_TOKENS.lock().retain(|t| *t != self.token);
    }
}

/// Who holds the location now, if a manager whose lease is live does:
/// read only, for tools that must not disturb a running job.
pub fn live_holder(storage: &dyn Storage) -> Result<Option<String>> {
    let Some(top) = top_epoch(storage)? else {
        return Ok(None);
    };
    match check_not_alive(storage, top) {
        Ok(()) => Ok(None),
        Err(Error::LocationInUse { holder, .. }) => Ok(Some(holder)),
        Err(e) => Err(e),
    }
}

/// Refuses if the holder of `epoch` looks alive.
fn check_not_alive(storage: &dyn Storage, epoch: u64) -> Result<()> {
    let holder: Option<Holder> = read_json(storage, &epoch_path(epoch))?;
    let lease: Option<Lease> = read_json(storage, &lease_path(epoch))?;
    let Some(lease) = lease else {
        // A holder that keeps a lease and has not written it yet has just
        // taken the location: alive for one lease from then. One that
        // keeps none cannot be told from a dead one.
        return match holder {
            Some(h) if !h.known_dead() => match h.lease_ms {
                Some(lease_ms) if now_ms().saturating_sub(h.created_at_ms) < lease_ms => {
                    Err(Error::LocationInUse {
                        holder: h.describe(),
                        age_ms: now_ms().saturating_sub(h.created_at_ms),
                        lease_ms,
                    })
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        };
    };
    if lease.released || holder.as_ref().is_some_and(Holder::known_dead) {
        return Ok(());
    }
    let age_ms = now_ms().saturating_sub(lease.renewed_at_ms);
    if age_ms >= lease.lease_ms {
        return Ok(());
    }
    Err(Error::LocationInUse {
        holder: holder.map_or_else(|| "an unknown manager".into(), |h| h.describe()),
        age_ms,
        lease_ms: lease.lease_ms,
    })
}

/// A process-unique, hard to guess token for a manager.
pub(crate) fn new_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u64(now_ms());
    h.write_u32(std::process::id());
    h.finish() | 1
}
