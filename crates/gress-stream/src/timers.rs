//! Timers of one keyed operator on one worker.
//!
//! Registered timers are kept in memory in time order, and in the backend
//! (through the state cache, so they are in every checkpoint) under the key
//! layout of `keys::timer_key`. A timer is unique per (domain, time, key,
//! namespace): registering it again does nothing. On restore they are read
//! back from the key groups the worker owns.

use std::collections::BTreeSet;
use std::ops::Range;

use gress_state::StateBackend;

use crate::error::Result;
use crate::keys::{TIMER_STATE_ID, TimeDomain, parse_timer_key, timer_key, timer_prefix};
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

    /// Reads back this operator's timers in `groups` from the backend.
    pub(crate) fn load(&mut self, backend: &dyn StateBackend, groups: Range<u16>) -> Result<()> {
        self.event.clear();
        self.processing.clear();
        let mut prefix = Vec::new();
        for kg in groups {
            for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
                timer_prefix(&mut prefix, kg, self.op, domain);
                for entry in backend.scan_prefix(&prefix)? {
                    let (key, _) = entry?;
                    if let Some((time, k, ns)) = parse_timer_key(&key) {
                        let t = TimerEntry {
                            time,
                            kg,
                            key: k.to_vec(),
                            ns: ns.to_vec(),
                        };
                        self.set(domain).insert(t);
                    }
                }
            }
        }
        Ok(())
    }
}
