//! The runtime of every keyed operator: records exchanged by key group,
//! applied one epoch at a time in order, watermarks combined over the
//! upstream operator instances, timers fired, and the worker's cut
//! respected.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::context::{ProcessingContext, Timer};
use crate::data::{Data, Item, Key, route};
use crate::error::{Error, Result};
use crate::keys::{TimeDomain, name_id};
use crate::timers::TimerService;
use crate::worker::Shared;

/// Main or side output of a keyed operator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Either<A, B> {
    /// The main output.
    Main(A),
    /// The side output.
    Side(B),
}

/// What a keyed operator does with each record of a key and each timer.
pub trait KeyedProcessFunction<K, V>: 'static {
    /// Records of the main output.
    type Out: Data;
    /// Records of the side output (`()` if unused).
    type Side: Data;

    /// Called for each record, in the order records arrive within an epoch.
    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, Self::Out, Self::Side>,
        value: V,
    ) -> Result<()>;

    /// Called for each timer that fires: event-time timers in time order
    /// once the watermark passes them, processing-time ones once the clock
    /// does (checked at the end of every epoch).
    fn on_timer(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, Self::Out, Self::Side>,
        timer: Timer,
    ) -> Result<()> {
        let _ = (ctx, timer);
        Ok(())
    }

    /// Called at the end of an epoch for each key (and namespace) that
    /// asked during it with [`ProcessingContext::at_epoch_end`], before
    /// the epoch's timers and before its cut: for emitting once per epoch
    /// what changed (a mini-batch). The context's time is the largest
    /// event time the key asked at.
    fn on_epoch_end(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, Self::Out, Self::Side>,
    ) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
}

type Out<O, S> = Item<Either<O, S>>;

/// Builds a keyed operator over `input`; `upstreams` is the number of
/// upstream operator instances whose watermarks combine.
pub(crate) fn keyed_operator<'s, K, V, F>(
    input: StreamVec<'s, u64, Item<(K, V)>>,
    name: &str,
    upstreams: usize,
    mut function: F,
    shared: Shared,
) -> StreamVec<'s, u64, Out<F::Out, F::Side>>
where
    K: Key,
    V: Data,
    F: KeyedProcessFunction<K, V>,
{
    let (peers, key_groups, index) = {
        let s = shared.borrow();
        (s.peers, s.key_groups, s.index)
    };
    {
        let mut s = shared.borrow_mut();
        if let Err(e) = s.register_name("keyed operator", name) {
            s.fail(e);
        }
    }
    let scope = input.scope();
    let op_name = name.to_string();
    let op = name_id(name);
    let pact = Exchange::new(move |item: &Item<(K, V)>| route(item, peers, key_groups));
    input.unary_frontier::<CapacityContainerBuilder<Vec<Out<F::Out, F::Side>>>, _, _, _>(
        pact,
        name,
        move |initial: Capability<u64>, info| {
            let first_epoch = *initial.time();
            drop(initial);
            let activator = scope.activator_for(info.address);
            let mut timers = TimerService::new(op);
            {
                let mut s = shared.borrow_mut();
                s.register_stateful();
                match s.take_timers(op) {
                    Ok(restored) => timers.restore(restored),
                    Err(e) => s.fail(e),
                }
            }
            // The epoch being applied: its records are applied as they
            // arrive, its watermarks and timers once the input frontier
            // passes it. Later epochs wait in `buffers`.
            let mut current = shared.borrow().next_cut.max(first_epoch);
            let mut current_cap: Option<Capability<u64>> = None;
            let mut buffers: BTreeMap<u64, Buffered<K, V>> = BTreeMap::new();
            let mut wm_from: HashMap<u32, u64> = HashMap::new();
            // The watermark after the recovered epoch, so that records
            // replayed after recovery see what they saw before.
            let wm_key = format!("watermark/{op_name}");
            let restored = shared.borrow().restored_number(&wm_key);
            let mut watermark = match restored {
                Ok(w) => w.unwrap_or(0),
                Err(e) => {
                    shared.borrow_mut().fail(e);
                    0
                }
            };
            let mut outs: Vec<(u64, F::Out)> = Vec::new();
            let mut sides: Vec<(u64, F::Side)> = Vec::new();
            let mut key_bytes = Vec::new();
            let mut key_ends = Vec::new();
            let mut ns = Vec::new();
            let mut scratch = Vec::new();
            let mut wms = Vec::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else {
                        return;
                    };
                    let entry = match buffers.entry(epoch) {
                        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::btree_map::Entry::Vacant(v) => {
                            let Some(cap) = cap.retain_least(output.output_index()) else {
                                return;
                            };
                            v.insert((cap, Vec::new()))
                        }
                    };
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                loop {
                    let mut s = shared.borrow_mut();
                    if s.error.is_some() {
                        return;
                    }
                    let passed = !frontier.less_equal(&current);
                    let has_data = buffers.contains_key(&current);
                    if current_cap.is_none() && !has_data {
                        // Nothing of this epoch here: done once it is over.
                        let input_done = frontier.frontier().is_empty() && buffers.is_empty();
                        if passed && !input_done {
                            s.record(current, wm_key.clone(), watermark.to_string());
                            s.operator_done(current);
                            current += 1;
                            continue;
                        }
                        break;
                    }
                    if !s.may_apply(current, &activator) {
                        break;
                    }
                    let s = &mut *s;
                    let mut scratch_refs = Scratch {
                        timers: &mut timers,
                        wm_from: &mut wm_from,
                        watermark: &mut watermark,
                        outs: &mut outs,
                        sides: &mut sides,
                        key_bytes: &mut key_bytes,
                        key_ends: &mut key_ends,
                        ns: &mut ns,
                        scratch: &mut scratch,
                        wms: &mut wms,
                    };
                    let epoch = Epoch {
                        epoch: current,
                        op,
                        op_name: &op_name,
                        upstreams,
                    };
                    let mut result = Ok(());
                    if let Some((cap, items)) = buffers.remove(&current) {
                        current_cap.get_or_insert(cap);
                        result = apply_records(
                            &mut function,
                            &epoch,
                            items,
                            &mut scratch_refs,
                            &mut s.store,
                            &mut s.records_in,
                        );
                    }
                    if result.is_ok() && passed {
                        result =
                            finish_epoch(&mut function, &epoch, &mut scratch_refs, &mut s.store);
                    }
                    if let Err(e) = result {
                        // A function's own `Error::Operator` says it once.
                        s.fail(match e {
                            e @ Error::Operator { .. } => e,
                            e => Error::Operator {
                                operator: op_name.clone(),
                                reason: e.to_string(),
                            },
                        });
                        return;
                    }
                    if let Some(cap) = &current_cap {
                        let mut session = output.session(cap);
                        for (time, o) in outs.drain(..) {
                            session.give(Item::Rec {
                                time,
                                kg: 0,
                                data: Either::Main(o),
                            });
                        }
                        for (time, o) in sides.drain(..) {
                            session.give(Item::Rec {
                                time,
                                kg: 0,
                                data: Either::Side(o),
                            });
                        }
                        if passed {
                            for to in 0..peers as u32 {
                                session.give(Item::Wm {
                                    to,
                                    from: index as u32,
                                    wm: watermark,
                                });
                            }
                        }
                    }
                    if !passed {
                        break;
                    }
                    current_cap = None;
                    s.record(current, wm_key.clone(), watermark.to_string());
                    s.operator_done(current);
                    current += 1;
                }
            }
        },
    )
}

/// An epoch's capability and the records received for it.
type Buffered<K, V> = (Capability<u64>, Vec<Item<(K, V)>>);

struct Epoch<'a> {
    epoch: u64,
    op: u32,
    op_name: &'a str,
    upstreams: usize,
}

struct Scratch<'a, O, S> {
    timers: &'a mut TimerService,
    wm_from: &'a mut HashMap<u32, u64>,
    watermark: &'a mut u64,
    outs: &'a mut Vec<(u64, O)>,
    sides: &'a mut Vec<(u64, S)>,
    key_bytes: &'a mut Vec<u8>,
    key_ends: &'a mut Vec<(usize, Option<u16>)>,
    ns: &'a mut Vec<u8>,
    scratch: &'a mut Vec<u8>,
    wms: &'a mut Vec<(u32, u64)>,
}

/// Records applied between two read-aheads: the entries read ahead for
/// them stay cached until they run.
const CHUNK: usize = 1024;

/// Applies records of the current epoch (watermarks are kept for its end).
fn apply_records<K: Key, V: Data, F: KeyedProcessFunction<K, V>>(
    function: &mut F,
    epoch: &Epoch<'_>,
    items: Vec<Item<(K, V)>>,
    sc: &mut Scratch<'_, F::Out, F::Side>,
    store: &mut crate::state::StateStore,
    records_in: &mut u64,
) -> Result<()> {
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<Item<(K, V)>> = items.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            return Ok(());
        }
        let n = chunk.len();
        apply_chunk(function, epoch, chunk, sc, store, records_in)?;
        store.maintain(n)?;
    }
}

/// Applies a chunk of records: their keys encoded once, the state they
/// read fetched from the backend together, and each record's state
/// prefetched into the CPU cache a few records ahead.
fn apply_chunk<K: Key, V: Data, F: KeyedProcessFunction<K, V>>(
    function: &mut F,
    epoch: &Epoch<'_>,
    items: Vec<Item<(K, V)>>,
    sc: &mut Scratch<'_, F::Out, F::Side>,
    store: &mut crate::state::StateStore,
    records_in: &mut u64,
) -> Result<()> {
    // Per item: where its key ends in `key_bytes`, and its key group.
    sc.key_bytes.clear();
    sc.key_ends.clear();
    for item in &items {
        let kg = match item {
            Item::Rec {
                kg, data: (key, _), ..
            } => {
                postcard::to_io(key, &mut *sc.key_bytes).map_err(|e| Error::codec("key", e))?;
                Some(*kg)
            }
            Item::Wm { .. } => None,
        };
        sc.key_ends.push((sc.key_bytes.len(), kg));
    }
    let key_at = |ends: &[(usize, Option<u16>)], i: usize| {
        (if i == 0 { 0 } else { ends[i - 1].0 })..ends[i].0
    };
    store.read_ahead(
        epoch.op,
        (0..sc.key_ends.len()).map(|i| {
            sc.key_ends[i]
                .1
                .map(|kg| (kg, &sc.key_bytes[key_at(sc.key_ends, i)]))
        }),
    )?;
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Item::Rec {
                time,
                kg,
                data: (key, value),
            } => {
                *records_in += 1;
                store.prefetch(i);
                sc.ns.clear();
                let mut ctx = ProcessingContext {
                    key: &key,
                    key_bytes: &sc.key_bytes[key_at(sc.key_ends, i)],
                    kg,
                    ns: sc.ns,
                    time,
                    watermark: *sc.watermark,
                    epoch: epoch.epoch,
                    store,
                    timers: sc.timers,
                    out: sc.outs,
                    side: sc.sides,
                    scratch: sc.scratch,
                    op: epoch.op,
                    op_name: epoch.op_name,
                };
                function.on_record(&mut ctx, value)?;
                if store.over_budget() {
                    store.maybe_evict()?;
                }
            }
            Item::Wm { from, wm, .. } => sc.wms.push((from, wm)),
        }
    }
    Ok(())
}

/// The context of a key (and namespace) outside its records: for a timer
/// or the epoch's end.
fn timer_context<'a, K, O, S>(
    key: &'a K,
    t: &crate::timers::TimerEntry,
    epoch: &'a Epoch<'_>,
    sc: &'a mut Scratch<'_, O, S>,
    store: &'a mut crate::state::StateStore,
) -> ProcessingContext<'a, K, O, S> {
    sc.key_bytes.clear();
    sc.key_bytes.extend_from_slice(&t.key);
    sc.ns.clear();
    sc.ns.extend_from_slice(&t.ns);
    ProcessingContext {
        key,
        key_bytes: sc.key_bytes,
        kg: t.kg,
        ns: sc.ns,
        time: t.time,
        watermark: *sc.watermark,
        epoch: epoch.epoch,
        store,
        timers: sc.timers,
        out: sc.outs,
        side: sc.sides,
        scratch: sc.scratch,
        op: epoch.op,
        op_name: epoch.op_name,
    }
}

/// Ends the current epoch: its watermarks combine into the operator's,
/// the keys that asked hear of the epoch's end, then the timers due fire.
fn finish_epoch<K: Key, V: Data, F: KeyedProcessFunction<K, V>>(
    function: &mut F,
    epoch: &Epoch<'_>,
    sc: &mut Scratch<'_, F::Out, F::Side>,
    store: &mut crate::state::StateStore,
) -> Result<()> {
    for (from, wm) in sc.wms.drain(..) {
        let slot = sc.wm_from.entry(from).or_insert(0);
        *slot = (*slot).max(wm);
    }
    if sc.wm_from.len() >= epoch.upstreams {
        let combined = sc.wm_from.values().copied().min().unwrap_or(0);
        *sc.watermark = (*sc.watermark).max(combined);
    }
    // Keys that asked to hear of the epoch's end, before its timers (and
    // before the cut: nothing of this is checkpointed).
    for t in sc.timers.take_epoch_end() {
        let key: K = postcard::from_bytes(&t.key).map_err(|e| Error::codec("key", e))?;
        let mut ctx = timer_context(&key, &t, epoch, sc, store);
        function.on_epoch_end(&mut ctx)?;
    }
    let now = store.now_ms();
    for (domain, due) in [
        (TimeDomain::EventTime, *sc.watermark),
        (TimeDomain::ProcessingTime, now),
    ] {
        while let Some(t) = sc.timers.pop_due(store, domain, due) {
            let key: K = postcard::from_bytes(&t.key).map_err(|e| Error::codec("timer key", e))?;
            let timer = Timer {
                time: t.time,
                domain,
                namespace: t.ns.clone(),
            };
            let mut ctx = timer_context(&key, &t, epoch, sc, store);
            function.on_timer(&mut ctx, timer)?;
            if store.over_budget() {
                store.maybe_evict()?;
            }
        }
    }
    Ok(())
}
