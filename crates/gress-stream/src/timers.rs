//! Timers of one keyed operator on one worker.
//!
//! Registered timers are kept in memory in time order, and in the backend
//! (through the state cache, so they are in every checkpoint) under the key
//! layout of `keys::timer_key`. A timer is unique per (domain, time, key,
//! namespace): registering it again does nothing. On restore the worker
//! reads back every operator's timers of the key groups it owns at once.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use gress_state::{KeyRange, StateBackend};

use crate::error::Result;
use crate::keys::{TIMER_STATE_ID, TimeDomain, groups_key_range, parse_timer_key, timer_key};
use crate::state::StateStore;

/// A timer: when, for which key (encoded) and namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerEntry {
    pub(crate) time: u64,
    pub(crate) kg: u16,
    pub(crate) key: Vec<u8>,
    pub(crate) ns: Vec<u8>,
}

/// The timers of one operator.
#[derive(Debug, Default)]
pub(crate) struct TimerService {
    op: u32,
    event: BTreeSet<TimerEntry>,
    processing: BTreeSet<TimerEntry>,
    /// Keys (and namespaces) to call at the end of the epoch, with the
    /// largest event time they asked at; in memory only (they are called
    /// before the epoch's cut).
    epoch_end: HashMap<(u16, Vec<u8>, Vec<u8>), u64>,
    scratch: Vec<u8>,
}

impl TimerService {
    pub(crate) fn new(op: u32) -> Self {
        TimerService {
            op,
            ..TimerService::default()
        }
    }

    fn set(&mut self, domain: TimeDomain) -> &mut BTreeSet<TimerEntry> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registers a timer (once).
    pub(crate) fn register(&mut self, store: &mut StateStore, domain: TimeDomain, t: TimerEntry) {
        timer_key(
            &mut self.scratch,
            t.kg,
            self.op,
            domain,
            t.time,
            &t.key,
            &t.ns,
        );
        if self.set(domain).insert(t) {
            store.put_raw(&self.scratch, TIMER_STATE_ID, true);
        }
    }

    /// Asks for a call at the end of the epoch (once per key and
    /// namespace).
    pub(crate) fn at_epoch_end(&mut self, kg: u16, key: &[u8], ns: &[u8], time: u64) {
        match self.epoch_end.get_mut(&(kg, key.to_vec(), ns.to_vec())) {
            Some(t) => *t = (*t).max(time),
            None => {
                self.epoch_end.insert((kg, key.to_vec(), ns.to_vec()), time);
            }
        }
    }

    /// The keys to call at the end of this epoch, in key order.
    pub(crate) fn take_epoch_end(&mut self) -> Vec<TimerEntry> {
        let mut due: Vec<TimerEntry> = self
            .epoch_end
            .drain()
            .map(|((kg, key, ns), time)| TimerEntry { time, kg, key, ns })
            .collect();
        due.sort_unstable_by(|a, b| (a.kg, &a.key, &a.ns).cmp(&(b.kg, &b.key, &b.ns)));
        due
    }

    /// Deletes a timer if registered.
    pub(crate) fn delete(&mut self, store: &mut StateStore, domain: TimeDomain, t: &TimerEntry) {
        if self.set(domain).remove(t) {
            timer_key(
                &mut self.scratch,
                t.kg,
                self.op,
                domain,
                t.time,
                &t.key,
                &t.ns,
            );
            store.put_raw(&self.scratch, TIMER_STATE_ID, false);
        }
    }

    /// Removes and returns the earliest timer due at `now` (time <= now).
    pub(crate) fn pop_due(
        &mut self,
        store: &mut StateStore,
        domain: TimeDomain,
        now: u64,
    ) -> Option<TimerEntry> {
        let set = self.set(domain);
        let first = set.first()?;
        if first.time > now {
            return None;
        }
        let t = set.pop_first()?;
        timer_key(
            &mut self.scratch,
            t.kg,
            self.op,
            domain,
            t.time,
            &t.key,
            &t.ns,
        );
        store.put_raw(&self.scratch, TIMER_STATE_ID, false);
        Some(t)
    }

    /// Adds timers read back from the backend.
    pub(crate) fn restore(&mut self, timers: Vec<(TimeDomain, TimerEntry)>) {
        for (domain, t) in timers {
            self.set(domain).insert(t);
        }
    }
}

/// The operator, domain and timer a timer key names.
fn timer_of(key: &[u8]) -> Option<(u32, TimeDomain, TimerEntry)> {
    if key.get(2..6) != Some(&TIMER_STATE_ID.to_be_bytes()[..]) {
        return None;
    }
    let kg = key.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    let op = key
        .get(6..10)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
    let domain = key.get(10).and_then(|&d| match d {
        0 => Some(TimeDomain::EventTime),
        1 => Some(TimeDomain::ProcessingTime),
        _ => None,
    })?;
    let (time, k, ns) = parse_timer_key(key)?;
    Some((
        op,
        domain,
        TimerEntry {
            time,
            kg,
            key: k.to_vec(),
            ns: ns.to_vec(),
        },
    ))
}

/// Adds the timers of `keys` (timer keys) to `all`.
pub(crate) fn add_keys(all: &mut HashMap<u32, Vec<(TimeDomain, TimerEntry)>>, keys: Vec<Vec<u8>>) {
    for key in keys {
        if let Some((op, domain, timer)) = timer_of(&key) {
            all.entry(op).or_default().push((domain, timer));
        }
    }
}

/// Every operator's timers in key groups `groups`, by operator id: one scan
/// of the timers of each key group on an ordered backend, or one scan of
/// the whole range on one whose scans read everything anyway.
pub(crate) fn load_all(
    backend: &dyn StateBackend,
    groups: Range<u16>,
) -> Result<HashMap<u32, Vec<(TimeDomain, TimerEntry)>>> {
    let mut out: HashMap<u32, Vec<(TimeDomain, TimerEntry)>> = HashMap::new();
    let mut take = |key: &[u8]| {
        if let Some((op, domain, timer)) = timer_of(key) {
            out.entry(op).or_default().push((domain, timer));
        }
    };
    if backend.ordered() {
        for kg in groups {
            let mut from = kg.to_be_bytes().to_vec();
            from.extend_from_slice(&TIMER_STATE_ID.to_be_bytes());
            let to = (u32::from(kg) + 1).to_be_bytes()[2..].to_vec();
            let range = if kg == u16::MAX {
                KeyRange::prefix(&from)
            } else {
                KeyRange::between(from, to)
            };
            for entry in backend.scan(range)? {
                take(&entry?.0);
            }
        }
    } else {
        for entry in backend.scan(groups_key_range(groups))? {
            take(&entry?.0);
        }
    }
    Ok(out)
}
