//! Typed state: descriptors (name, codec, TTL) and the handles an operator
//! gets for the current key.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Encoder, Slot, StateStore, StateTtl, TtlUpdate};
use crate::codec::{Codec, Postcard};
use crate::data::{Data, Key};
use crate::error::{Error, Result};
use crate::keys::{get_varint, name_id, put_varint};

/// The name, id and TTL every descriptor has.
struct Common {
    name: String,
    ttl: Option<StateTtl>,
    /// (operator id << 32 | state id) of the last operator that used it,
    /// plus one; 0 before first use.
    resolved: AtomicU64,
    /// The store it was last registered with (`StateStore::serial`): a
    /// descriptor used by another store (another worker, a later run)
    /// registers with that one too.
    registered_with: AtomicU64,
}

impl Common {
    fn new(name: impl Into<String>) -> Self {
        Common {
            name: name.into(),
            ttl: None,
            resolved: AtomicU64::new(0),
            registered_with: AtomicU64::new(0),
        }
    }

    /// The state's id within operator `op`, registered with the store on
    /// first use.
    fn id(
        &self,
        op: u32,
        op_name: &str,
        store: &mut StateStore,
        encoder: impl FnOnce() -> Box<dyn Encoder>,
    ) -> Result<u32> {
        let cached = self.resolved.load(Ordering::Relaxed);
        if cached != 0
            && (cached - 1) >> 32 == u64::from(op)
            && self.registered_with.load(Ordering::Relaxed) == store.serial()
        {
            return Ok((cached - 1) as u32);
        }
        if let Some(ttl) = self.ttl
            && ttl.ttl < std::time::Duration::from_millis(1)
        {
            return Err(Error::invalid(
                "state",
                format!("the TTL of `{}` must be at least 1 ms", self.name),
            ));
        }
        let full = format!("{op_name}/{}", self.name);
        let id = name_id(&full);
        store.register(id, &full, encoder)?;
        self.registered_with
            .store(store.serial(), Ordering::Relaxed);
        self.resolved.store(
            ((u64::from(op) << 32) | u64::from(id)) + 1,
            Ordering::Relaxed,
        );
        Ok(id)
    }
}

impl std::fmt::Debug for Common {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Where a handle points: the store, the state's id, and the full key.
pub(crate) struct Target<'a> {
    pub(crate) store: &'a mut StateStore,
    pub(crate) key: &'a mut Vec<u8>,
    pub(crate) op: u32,
    pub(crate) op_name: &'a str,
    /// Key group, encoded key and namespace of the current scope.
    pub(crate) kg: u16,
    pub(crate) user_key: &'a [u8],
    pub(crate) ns: &'a [u8],
}

impl Target<'_> {
    fn full_key(&mut self, state_id: u32) {
        self.store.note_state(self.op, state_id, self.ns.is_empty());
        crate::keys::state_key(self.key, self.kg, state_id, self.user_key, self.ns);
    }
}

/// Reads the slot of the current key, applying TTL: an expired value reads
/// as absent (and is deleted at the next flush); with refresh on read, a
/// read extends the life of a present value.
fn live_slot<'s, T: 'static>(
    store: &'s mut StateStore,
    key: &[u8],
    state_id: u32,
    ttl: Option<StateTtl>,
    decode: &dyn Fn(&[u8]) -> Result<T>,
) -> Result<&'s mut Slot> {
    let now = ttl.map(|_| store.now_ms());
    let slot = store.slot(key, state_id, decode)?;
    if let (Some(ttl), Some(now)) = (ttl, now) {
        if slot.expires_at().is_some_and(|at| at <= now) {
            *slot.cell::<T>()? = None;
            slot.mark_present(false);
            slot.set_expires_at(None);
            slot.dirty = true;
        } else if slot.present {
            match (ttl.update, slot.expires_at()) {
                (TtlUpdate::OnReadAndWrite, _) => {
                    let at = ttl.expiry(now);
                    slot.dirty |= at != slot.expires_at();
                    slot.set_expires_at(at);
                }
                // Stored before the state had a TTL: it lives a TTL from
                // now, written so.
                (TtlUpdate::OnCreateAndWrite, None) => {
                    let at = ttl.expiry(now);
                    slot.dirty |= at.is_some();
                    slot.set_expires_at(at);
                }
                (TtlUpdate::OnCreateAndWrite, Some(_)) => {}
            }
        }
    }
    Ok(slot)
}

/// Marks a slot written now.
fn written(slot: &mut Slot, present: bool, ttl: Option<StateTtl>, now: Option<u64>) {
    slot.mark_present(present);
    slot.dirty = true;
    slot.set_expires_at(match (ttl, now) {
        (Some(ttl), Some(now)) if present => ttl.expiry(now),
        _ => None,
    });
}

/// The `Some` value of an `Option<T>` held as `dyn Any`.
fn downcast<'v, T: 'static>(value: &'v dyn Any, what: &str) -> Result<&'v T> {
    value
        .downcast_ref::<Option<T>>()
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::codec(what.to_string(), "state used with two different types"))
}

// ---------------------------------------------------------------------------
// Value

/// Declares a single value per key (and namespace).
pub struct ValueStateDescriptor<T> {
    common: Common,
    codec: Arc<dyn Codec<T>>,
}

impl<T> std::fmt::Debug for ValueStateDescriptor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.common.fmt(f)
    }
}

impl<T: Data> ValueStateDescriptor<T> {
    /// A value stored with postcard.
    pub fn new(name: impl Into<String>) -> Self {
        ValueStateDescriptor {
            common: Common::new(name),
            codec: Arc::new(Postcard::<T>::default()),
        }
    }
}

impl<T: 'static> ValueStateDescriptor<T> {
    /// Uses `codec` instead of postcard.
    pub fn with_codec(mut self, codec: impl Codec<T>) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// Gives the value a time to live.
    pub fn with_ttl(mut self, ttl: StateTtl) -> Self {
        self.common.ttl = Some(ttl);
        self
    }

    pub(crate) fn handle<'a>(&'a self, mut target: Target<'a>) -> Result<ValueState<'a, T>> {
        // The codec is cloned only when the state is first registered.
        let id = self
            .common
            .id(target.op, target.op_name, target.store, || {
                Box::new(ValueEncoder(Arc::clone(&self.codec)))
            })?;
        target.full_key(id);
        Ok(ValueState {
            store: target.store,
            key: target.key,
            id,
            desc: self,
        })
    }
}

struct ValueEncoder<T>(Arc<dyn Codec<T>>);

impl<T: 'static> Encoder for ValueEncoder<T> {
    fn encode(&self, value: &dyn Any, out: &mut Vec<u8>) -> Result<()> {
        self.0.encode(downcast::<T>(value, "value state")?, out)
    }
}

/// The value of the current key.
pub struct ValueState<'a, T> {
    store: &'a mut StateStore,
    key: &'a [u8],
    id: u32,
    desc: &'a ValueStateDescriptor<T>,
}

impl<T> std::fmt::Debug for ValueState<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueState")
    }
}

impl<T: 'static> ValueState<'_, T> {
    fn slot(&mut self) -> Result<&mut Slot> {
        let codec = &self.desc.codec;
        live_slot(self.store, self.key, self.id, self.desc.common.ttl, &|b| {
            codec.decode(b)
        })
    }

    /// Runs `f` on the value, without copying it.
    pub fn with<R>(&mut self, f: impl FnOnce(Option<&T>) -> R) -> Result<R> {
        let slot = self.slot()?;
        Ok(f(slot.get::<T>()?))
    }

    /// A copy of the value.
    pub fn get(&mut self) -> Result<Option<T>>
    where
        T: Clone,
    {
        self.with(|v| v.cloned())
    }

    /// Sets the value.
    pub fn set(&mut self, value: T) -> Result<()> {
        self.update(|_| Some(value))
    }

    /// Removes the value.
    pub fn clear(&mut self) -> Result<()> {
        self.update(|_| None)
    }

    /// Replaces the value with what `f` makes of it (`None` removes it);
    /// one lookup, in place.
    pub fn update(&mut self, f: impl FnOnce(Option<T>) -> Option<T>) -> Result<()> {
        let ttl = self.desc.common.ttl;
        let now = ttl.map(|_| self.store.now_ms());
        let slot = self.slot()?;
        let cell = slot.cell::<T>()?;
        let next = f(cell.take());
        let present = next.is_some();
        *cell = next;
        written(slot, present, ttl, now);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// List

/// Declares a list per key (and namespace).
pub struct ListStateDescriptor<T> {
    common: Common,
    codec: Arc<dyn Codec<T>>,
}

impl<T> std::fmt::Debug for ListStateDescriptor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.common.fmt(f)
    }
}

impl<T: Data> ListStateDescriptor<T> {
    /// A list whose elements are stored with postcard.
    pub fn new(name: impl Into<String>) -> Self {
        ListStateDescriptor {
            common: Common::new(name),
            codec: Arc::new(Postcard::<T>::default()),
        }
    }
}

impl<T: 'static> ListStateDescriptor<T> {
    /// Encodes elements with `codec`.
    pub fn with_codec(mut self, codec: impl Codec<T>) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// Gives the list a time to live.
    pub fn with_ttl(mut self, ttl: StateTtl) -> Self {
        self.common.ttl = Some(ttl);
        self
    }

    pub(crate) fn handle<'a>(&'a self, mut target: Target<'a>) -> Result<ListState<'a, T>> {
        let id = self
            .common
            .id(target.op, target.op_name, target.store, || {
                Box::new(ListEncoder(Arc::clone(&self.codec)))
            })?;
        target.full_key(id);
        Ok(ListState {
            store: target.store,
            key: target.key,
            id,
            desc: self,
        })
    }
}

/// Elements, each as a varint length and its encoding.
struct ListEncoder<T>(Arc<dyn Codec<T>>);

impl<T: 'static> Encoder for ListEncoder<T> {
    fn encode(&self, value: &dyn Any, out: &mut Vec<u8>) -> Result<()> {
        let list = downcast::<Vec<T>>(value, "list state")?;
        encode_seq(list.iter(), &*self.0, out)
    }
}

fn encode_seq<'x, T: 'static>(
    items: impl Iterator<Item = &'x T>,
    codec: &dyn Codec<T>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut one = Vec::new();
    for item in items {
        one.clear();
        codec.encode(item, &mut one)?;
        put_varint(out, one.len() as u64);
        out.extend_from_slice(&one);
    }
    Ok(())
}

fn decode_seq<T: 'static>(mut bytes: &[u8], codec: &dyn Codec<T>, what: &str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, n) =
            get_varint(bytes).ok_or_else(|| Error::codec(what.to_string(), "bad length"))?;
        let end = n
            .checked_add(usize::try_from(len).unwrap_or(usize::MAX))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| Error::codec(what.to_string(), "truncated element"))?;
        out.push(codec.decode(&bytes[n..end])?);
        bytes = &bytes[end..];
    }
    Ok(out)
}

/// The list of the current key.
pub struct ListState<'a, T> {
    store: &'a mut StateStore,
    key: &'a [u8],
    id: u32,
    desc: &'a ListStateDescriptor<T>,
}

impl<T> std::fmt::Debug for ListState<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListState")
    }
}

impl<T: 'static> ListState<'_, T> {
    fn modify<R>(&mut self, f: impl FnOnce(&mut Vec<T>) -> R) -> Result<R> {
        let ttl = self.desc.common.ttl;
        let now = ttl.map(|_| self.store.now_ms());
        let codec = &self.desc.codec;
        let name = &self.desc.common.name;
        let slot = live_slot(self.store, self.key, self.id, ttl, &|b| {
            decode_seq(b, &**codec, name)
        })?;
        let cell = slot.cell::<Vec<T>>()?;
        let list = cell.get_or_insert_with(Vec::new);
        let r = f(list);
        let present = !list.is_empty();
        if !present {
            *cell = None;
        }
        written(slot, present, ttl, now);
        Ok(r)
    }

    /// Runs `f` on the elements, without copying them.
    pub fn with<R>(&mut self, f: impl FnOnce(&[T]) -> R) -> Result<R> {
        let codec = &self.desc.codec;
        let name = &self.desc.common.name;
        let slot = live_slot(self.store, self.key, self.id, self.desc.common.ttl, &|b| {
            decode_seq(b, &**codec, name)
        })?;
        let _ = name;
        Ok(f(slot.get::<Vec<T>>()?.map_or(&[][..], |l| &l[..])))
    }

    /// A copy of the elements.
    pub fn get(&mut self) -> Result<Vec<T>>
    where
        T: Clone,
    {
        self.with(|l| l.to_vec())
    }

    /// Appends one element.
    pub fn add(&mut self, value: T) -> Result<()> {
        self.modify(|l| l.push(value))
    }

    /// Replaces the elements.
    pub fn update(&mut self, values: Vec<T>) -> Result<()> {
        self.modify(|l| *l = values)
    }

    /// Removes every element.
    pub fn clear(&mut self) -> Result<()> {
        self.modify(Vec::clear)
    }

    /// Changes the elements in place.
    pub fn modify_with<R>(&mut self, f: impl FnOnce(&mut Vec<T>) -> R) -> Result<R> {
        self.modify(f)
    }
}

// ---------------------------------------------------------------------------
// Map

/// Declares a map per key (and namespace). A map's entries are read and
/// written together, as one value of the backend.
pub struct MapStateDescriptor<K, V> {
    common: Common,
    keys: Arc<dyn Codec<K>>,
    values: Arc<dyn Codec<V>>,
}

impl<K, V> std::fmt::Debug for MapStateDescriptor<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.common.fmt(f)
    }
}

impl<K: Key, V: Data> MapStateDescriptor<K, V> {
    /// A map stored with postcard.
    pub fn new(name: impl Into<String>) -> Self {
        MapStateDescriptor {
            common: Common::new(name),
            keys: Arc::new(Postcard::<K>::default()),
            values: Arc::new(Postcard::<V>::default()),
        }
    }

    /// Gives the map a time to live.
    pub fn with_ttl(mut self, ttl: StateTtl) -> Self {
        self.common.ttl = Some(ttl);
        self
    }

    pub(crate) fn handle<'a>(&'a self, mut target: Target<'a>) -> Result<MapState<'a, K, V>> {
        let id = self
            .common
            .id(target.op, target.op_name, target.store, || {
                Box::new(MapEncoder {
                    keys: Arc::clone(&self.keys),
                    values: Arc::clone(&self.values),
                })
            })?;
        target.full_key(id);
        Ok(MapState {
            store: target.store,
            key: target.key,
            id,
            desc: self,
        })
    }
}

/// Entries in key order, each key then value as in a list.
struct MapEncoder<K, V> {
    keys: Arc<dyn Codec<K>>,
    values: Arc<dyn Codec<V>>,
}

impl<K: 'static, V: 'static> Encoder for MapEncoder<K, V> {
    fn encode(&self, value: &dyn Any, out: &mut Vec<u8>) -> Result<()> {
        let map = downcast::<BTreeMap<K, V>>(value, "map state")?;
        let mut one = Vec::new();
        for (k, v) in map {
            one.clear();
            self.keys.encode(k, &mut one)?;
            put_varint(out, one.len() as u64);
            out.extend_from_slice(&one);
            one.clear();
            self.values.encode(v, &mut one)?;
            put_varint(out, one.len() as u64);
            out.extend_from_slice(&one);
        }
        Ok(())
    }
}

fn decode_map<K: Ord + 'static, V: 'static>(
    mut bytes: &[u8],
    keys: &dyn Codec<K>,
    values: &dyn Codec<V>,
    what: &str,
) -> Result<BTreeMap<K, V>> {
    let mut out = BTreeMap::new();
    let next = |bytes: &mut &[u8]| -> Result<(usize, usize)> {
        let (len, n) =
            get_varint(bytes).ok_or_else(|| Error::codec(what.to_string(), "bad length"))?;
        let end = n
            .checked_add(usize::try_from(len).unwrap_or(usize::MAX))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| Error::codec(what.to_string(), "truncated entry"))?;
        Ok((n, end))
    };
    while !bytes.is_empty() {
        let (n, end) = next(&mut bytes)?;
        let k = keys.decode(&bytes[n..end])?;
        bytes = &bytes[end..];
        let (n, end) = next(&mut bytes)?;
        let v = values.decode(&bytes[n..end])?;
        bytes = &bytes[end..];
        out.insert(k, v);
    }
    Ok(out)
}

/// The map of the current key.
pub struct MapState<'a, K, V> {
    store: &'a mut StateStore,
    key: &'a [u8],
    id: u32,
    desc: &'a MapStateDescriptor<K, V>,
}

impl<K, V> std::fmt::Debug for MapState<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MapState")
    }
}

impl<K: Ord + 'static, V: 'static> MapState<'_, K, V> {
    fn slot(&mut self) -> Result<&mut Slot> {
        let (keys, values, name) = (&self.desc.keys, &self.desc.values, &self.desc.common.name);
        live_slot(self.store, self.key, self.id, self.desc.common.ttl, &|b| {
            decode_map(b, &**keys, &**values, name)
        })
    }

    /// Runs `f` on the entries, without copying them.
    pub fn with<R>(&mut self, f: impl FnOnce(Option<&BTreeMap<K, V>>) -> R) -> Result<R> {
        let slot = self.slot()?;
        Ok(f(slot.get::<BTreeMap<K, V>>()?))
    }

    /// Changes the entries in place.
    pub fn modify<R>(&mut self, f: impl FnOnce(&mut BTreeMap<K, V>) -> R) -> Result<R> {
        let ttl = self.desc.common.ttl;
        let now = ttl.map(|_| self.store.now_ms());
        let slot = self.slot()?;
        let cell = slot.cell::<BTreeMap<K, V>>()?;
        let map = cell.get_or_insert_with(BTreeMap::new);
        let r = f(map);
        let present = !map.is_empty();
        if !present {
            *cell = None;
        }
        written(slot, present, ttl, now);
        Ok(r)
    }

    /// A copy of the value under `k`.
    pub fn get(&mut self, k: &K) -> Result<Option<V>>
    where
        V: Clone,
    {
        self.with(|m| m.and_then(|m| m.get(k).cloned()))
    }

    /// Sets `k` to `v`.
    pub fn put(&mut self, k: K, v: V) -> Result<()> {
        self.modify(|m| {
            m.insert(k, v);
        })
    }

    /// Removes `k`.
    pub fn remove(&mut self, k: &K) -> Result<Option<V>> {
        self.modify(|m| m.remove(k))
    }

    /// Removes every entry.
    pub fn clear(&mut self) -> Result<()> {
        self.modify(BTreeMap::clear)
    }

    /// A copy of every entry, in key order.
    pub fn entries(&mut self) -> Result<Vec<(K, V)>>
    where
        K: Clone,
        V: Clone,
    {
        self.with(|m| {
            m.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default()
        })
    }
}

// ---------------------------------------------------------------------------
// Reducing and aggregating

/// Declares a value per key that folds added values with a reduce function.
pub struct ReducingStateDescriptor<T> {
    value: ValueStateDescriptor<T>,
    reduce: Arc<ReduceFn<T>>,
}

/// Folds an added value into the current one.
type ReduceFn<T> = dyn Fn(&T, T) -> T + Send + Sync;

impl<T> std::fmt::Debug for ReducingStateDescriptor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: Data> ReducingStateDescriptor<T> {
    /// Folds with `reduce(current, added)`.
    pub fn new(
        name: impl Into<String>,
        reduce: impl Fn(&T, T) -> T + Send + Sync + 'static,
    ) -> Self {
        ReducingStateDescriptor {
            value: ValueStateDescriptor::new(name),
            reduce: Arc::new(reduce),
        }
    }

    /// Gives the value a time to live.
    pub fn with_ttl(mut self, ttl: StateTtl) -> Self {
        self.value = self.value.with_ttl(ttl);
        self
    }

    pub(crate) fn handle<'a>(&'a self, target: Target<'a>) -> Result<ReducingState<'a, T>> {
        Ok(ReducingState {
            value: self.value.handle(target)?,
            reduce: &*self.reduce,
        })
    }
}

/// The folded value of the current key.
pub struct ReducingState<'a, T> {
    value: ValueState<'a, T>,
    reduce: &'a ReduceFn<T>,
}

impl<T> std::fmt::Debug for ReducingState<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReducingState")
    }
}

impl<T: 'static> ReducingState<'_, T> {
    /// Folds `added` into the value.
    pub fn add(&mut self, added: T) -> Result<()> {
        let reduce = self.reduce;
        self.value.update(|current| match current {
            Some(c) => Some(reduce(&c, added)),
            None => Some(added),
        })
    }

    /// A copy of the value.
    pub fn get(&mut self) -> Result<Option<T>>
    where
        T: Clone,
    {
        self.value.get()
    }

    /// Removes the value.
    pub fn clear(&mut self) -> Result<()> {
        self.value.clear()
    }
}

/// An aggregation: an accumulator that inputs are added to, and the
/// result read from it (Flink's `AggregateFunction`).
pub trait AggregateFunction: Send + Sync + 'static {
    /// What is added.
    type In;
    /// What is kept.
    type Acc: Data;
    /// What is read.
    type Out;
    /// A new accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds one input.
    fn add(&self, acc: &mut Self::Acc, input: Self::In);
    /// The result of an accumulator.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
    /// Two accumulators merged into one, for windows that merge (session
    /// windows); `None` when the function cannot merge (the default), which
    /// session windows refuse when the job starts.
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Option<Self::Acc> {
        let _ = (a, b);
        None
    }
}

/// Declares an accumulator per key.
pub struct AggregatingStateDescriptor<F: AggregateFunction> {
    value: ValueStateDescriptor<F::Acc>,
    function: Arc<F>,
}

impl<F: AggregateFunction> std::fmt::Debug for AggregatingStateDescriptor<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

impl<F: AggregateFunction> AggregatingStateDescriptor<F> {
    /// Aggregates with `function`.
    pub fn new(name: impl Into<String>, function: F) -> Self {
        AggregatingStateDescriptor {
            value: ValueStateDescriptor::new(name),
            function: Arc::new(function),
        }
    }

    /// Gives the accumulator a time to live.
    pub fn with_ttl(mut self, ttl: StateTtl) -> Self {
        self.value = self.value.with_ttl(ttl);
        self
    }

    pub(crate) fn handle<'a>(&'a self, target: Target<'a>) -> Result<AggregatingState<'a, F>> {
        Ok(AggregatingState {
            value: self.value.handle(target)?,
            function: &self.function,
        })
    }
}

/// The accumulator of the current key.
pub struct AggregatingState<'a, F: AggregateFunction> {
    value: ValueState<'a, F::Acc>,
    function: &'a F,
}

impl<F: AggregateFunction> std::fmt::Debug for AggregatingState<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AggregatingState")
    }
}

impl<F: AggregateFunction> AggregatingState<'_, F> {
    /// Adds one input.
    pub fn add(&mut self, input: F::In) -> Result<()> {
        let f = self.function;
        self.value.update(|acc| {
            let mut acc = acc.unwrap_or_else(|| f.create());
            f.add(&mut acc, input);
            Some(acc)
        })
    }

    /// The result so far, if anything was added.
    pub fn get(&mut self) -> Result<Option<F::Out>> {
        let f = self.function;
        self.value.with(|acc| acc.map(|a| f.result(a)))
    }

    /// Removes the accumulator.
    pub fn clear(&mut self) -> Result<()> {
        self.value.clear()
    }
}
