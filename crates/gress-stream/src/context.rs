//! What a keyed operator gets for each record and each timer.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::TimeDomain;
use crate::state::Target;
use crate::state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    StateStore, ValueState, ValueStateDescriptor,
};
use crate::timers::{TimerEntry, TimerService};

/// The state handle target of a context: disjoint borrows of its fields.
macro_rules! target {
    ($ctx:expr) => {
        Target {
            store: &mut *$ctx.store,
            key: &mut *$ctx.scratch,
            op: $ctx.op,
            op_name: $ctx.op_name,
            kg: $ctx.kg,
            user_key: $ctx.key_bytes,
            ns: &$ctx.ns[..],
        }
    };
}

/// A timer that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// The time it was registered for (ms).
    pub time: u64,
    /// Event or processing time.
    pub domain: TimeDomain,
    /// The namespace it was registered in (empty unless set).
    pub namespace: Vec<u8>,
}

impl Timer {
    /// The namespace, decoded (as [`ProcessingContext::set_namespace`]
    /// encoded it).
    pub fn decode_namespace<N: serde::de::DeserializeOwned>(&self) -> Result<N> {
        postcard::from_bytes(&self.namespace).map_err(|e| Error::codec("timer namespace", e))
    }
}

/// The current key, time, watermark, epoch, its keyed state, timers and
/// outputs, handed to a keyed operator per record and per timer.
pub struct ProcessingContext<'a, K, O, S = ()> {
    pub(crate) key: &'a K,
    pub(crate) key_bytes: &'a [u8],
    pub(crate) kg: u16,
    pub(crate) ns: &'a mut Vec<u8>,
    pub(crate) time: u64,
    pub(crate) watermark: u64,
    pub(crate) epoch: u64,
    pub(crate) store: &'a mut StateStore,
    pub(crate) timers: &'a mut TimerService,
    pub(crate) out: &'a mut Vec<(u64, O)>,
    pub(crate) side: &'a mut Vec<(u64, S)>,
    pub(crate) scratch: &'a mut Vec<u8>,
    pub(crate) op: u32,
    pub(crate) op_name: &'a str,
}

impl<K, O, S> std::fmt::Debug for ProcessingContext<'_, K, O, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessingContext")
            .field("operator", &self.op_name)
            .field("time", &self.time)
            .field("watermark", &self.watermark)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl<'a, K, O, S> ProcessingContext<'a, K, O, S> {
    /// The current key.
    pub fn key(&self) -> &K {
        self.key
    }

    /// The event time of the record (ms), or the time of the timer.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// The current watermark: no record with an earlier event time is
    /// expected any more (it would be late).
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The epoch being processed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The wall clock (the job's clock), ms.
    pub fn processing_time(&self) -> u64 {
        self.store.now_ms()
    }

    /// The current namespace, encoded.
    pub(crate) fn namespace_bytes(&self) -> &[u8] {
        self.ns
    }

    /// Sets the namespace to these encoded bytes.
    pub(crate) fn set_namespace_bytes(&mut self, ns: &[u8]) {
        self.ns.clear();
        self.ns.extend_from_slice(ns);
    }

    /// Scopes state and timers below the key, e.g. to a window; `None`
    /// returns to the key itself.
    pub fn set_namespace<N: Serialize>(&mut self, namespace: Option<&N>) -> Result<()> {
        self.ns.clear();
        if let Some(ns) = namespace {
            let bytes = postcard::to_stdvec(ns).map_err(|e| Error::codec("namespace", e))?;
            self.ns.extend_from_slice(&bytes);
        }
        Ok(())
    }

    /// Emits a record with the current time.
    pub fn output(&mut self, value: O) {
        self.out.push((self.time, value));
    }

    /// Emits a record with event time `time`.
    pub fn output_at(&mut self, time: u64, value: O) {
        self.out.push((time, value));
    }

    /// Emits a record to the side output.
    pub fn side_output(&mut self, value: S) {
        self.side.push((self.time, value));
    }

    fn timer(&self, time: u64) -> TimerEntry {
        TimerEntry {
            time,
            kg: self.kg,
            key: self.key_bytes.to_vec(),
            ns: self.ns.clone(),
        }
    }

    /// Calls `on_timer` for this key (and namespace) once the watermark
    /// reaches `time`. Registering the same timer twice fires it once.
    pub fn register_event_timer(&mut self, time: u64) {
        let t = self.timer(time);
        self.timers.register(self.store, TimeDomain::EventTime, t);
    }

    /// Calls `on_timer` once the wall clock reaches `time` (checked at the
    /// end of every epoch).
    pub fn register_processing_timer(&mut self, time: u64) {
        let t = self.timer(time);
        self.timers
            .register(self.store, TimeDomain::ProcessingTime, t);
    }

    /// Calls `on_epoch_end` for this key and namespace at the end of the
    /// current epoch (once, however often asked), before the epoch is
    /// cut: the way to emit once per epoch what changed. Nothing of it is
    /// checkpointed, as it is over before the cut.
    pub fn at_epoch_end(&mut self) {
        self.timers
            .at_epoch_end(self.kg, self.key_bytes, self.ns, self.time);
    }

    /// Deletes an event-time timer of this key and namespace.
    pub fn delete_event_timer(&mut self, time: u64) {
        let t = self.timer(time);
        self.timers.delete(self.store, TimeDomain::EventTime, &t);
    }

    /// Deletes a processing-time timer of this key and namespace.
    pub fn delete_processing_timer(&mut self, time: u64) {
        let t = self.timer(time);
        self.timers
            .delete(self.store, TimeDomain::ProcessingTime, &t);
    }

    /// The value of `descriptor` for the current key and namespace.
    pub fn value<'s, T: 'static>(
        &'s mut self,
        descriptor: &'s ValueStateDescriptor<T>,
    ) -> Result<ValueState<'s, T>> {
        descriptor.handle(target!(self))
    }

    /// The list of `descriptor` for the current key and namespace.
    pub fn list<'s, T: 'static>(
        &'s mut self,
        descriptor: &'s ListStateDescriptor<T>,
    ) -> Result<ListState<'s, T>> {
        descriptor.handle(target!(self))
    }

    /// The map of `descriptor` for the current key and namespace.
    pub fn map<'s, MK: crate::Key, MV: crate::Data>(
        &'s mut self,
        descriptor: &'s MapStateDescriptor<MK, MV>,
    ) -> Result<MapState<'s, MK, MV>> {
        descriptor.handle(target!(self))
    }

    /// The reducing state of `descriptor` for the current key and namespace.
    pub fn reducing<'s, T: crate::Data>(
        &'s mut self,
        descriptor: &'s ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<'s, T>> {
        descriptor.handle(target!(self))
    }

    /// The aggregating state of `descriptor` for the current key and
    /// namespace.
    pub fn aggregating<'s, F: AggregateFunction>(
        &'s mut self,
        descriptor: &'s AggregatingStateDescriptor<F>,
    ) -> Result<AggregatingState<'s, F>> {
        descriptor.handle(target!(self))
    }
}
