//! Keyed operators whose results are updated as input arrives, emitted as
//! a changelog ([`Change`]): top-N per key, and aggregations of append-only
//! or changelog input (Flink's group aggregation and `ROW_NUMBER() <= N`).
//!
//! State per key: top-N keeps the key's current rows, best first (at most
//! N) and, while an epoch changes them, the rows last emitted; an
//! aggregation keeps its accumulator, the number of inputs it holds, and
//! the result it last emitted. Both emit at the end of each epoch
//! ([`ProcessingContext::at_epoch_end`]) what changed in it, a mini-batch:
//! a key updated a thousand times in an epoch emits one change.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::changelog::Change;
use crate::context::ProcessingContext;
use crate::data::{Data, Key};
use crate::error::{Error, Result};
use crate::operators::keyed::KeyedProcessFunction;
use crate::state::{AggregateFunction, ValueStateDescriptor};
use crate::stream::{DataStream, KeyedStream};

/// A row with its rank within its key (1 is the first).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ranked<T> {
    /// 1 for the first row.
    pub rank: u32,
    /// The row.
    pub row: T,
}

/// An aggregation that can also take an input back, for changelog input
/// (an update's old row, a delete).
pub trait RetractingAggregate: AggregateFunction {
    /// Removes one input that was added before.
    fn retract(&self, acc: &mut Self::Acc, input: Self::In);
}

impl<'s, K: Key, V: Data> KeyedStream<'s, K, V> {
    /// The first `n` records of each key in the order `order` gives
    /// (`Less`: the first argument ranks before the second; of equal ones
    /// the earlier stays ahead), as a changelog of ranked rows, emitted
    /// once per epoch and key: a rank that gained a row is inserted, one
    /// whose row changed is updated. `n = 0` fails the job when it starts
    /// with [`Error::InvalidJob`].
    pub fn top_n(
        self,
        name: &str,
        n: usize,
        order: impl Fn(&V, &V) -> Ordering + 'static,
    ) -> DataStream<'s, Change<Ranked<V>>>
    where
        V: PartialEq,
    {
        if n == 0 {
            self.shared
                .borrow_mut()
                .fail(Error::invalid("top_n", "n must be at least 1".to_string()));
        }
        self.process(
            name,
            TopN {
                rows: ValueStateDescriptor::new("top-n"),
                n,
                order,
            },
        )
    }

    /// A running aggregate per key of append-only input, as a changelog of
    /// `(key, result)`. Changes are emitted once per epoch and key (a
    /// mini-batch): the key's first epoch inserts its row, and a later one
    /// that changed the result updates it.
    pub fn updating_aggregate<F>(
        self,
        name: &str,
        function: F,
    ) -> DataStream<'s, Change<(K, F::Out)>>
    where
        F: AggregateFunction<In = V>,
        F::Out: Data + PartialEq,
    {
        self.process(
            name,
            Updating {
                state: ValueStateDescriptor::new("aggregate"),
                function,
            },
        )
    }
}

impl<'s, K: Key, V: Data> KeyedStream<'s, K, Change<V>> {
    /// A running aggregate per key of changelog input, as a changelog of
    /// `(key, result)`: inserts and new versions are added, old versions
    /// and deletes retracted. Changes are emitted once per epoch and key:
    /// the key's row is inserted, updated when the result changed, and
    /// deleted once the last of its inputs is retracted.
    pub fn retracting_aggregate<F>(
        self,
        name: &str,
        function: F,
    ) -> DataStream<'s, Change<(K, F::Out)>>
    where
        F: RetractingAggregate<In = V>,
        F::Out: Data + PartialEq,
    {
        self.process(
            name,
            Retracting {
                state: ValueStateDescriptor::new("aggregate"),
                function,
            },
        )
    }
}

/// A key's rows, best first, and (while the epoch changed them) the rows
/// last emitted.
#[derive(Clone, Serialize, Deserialize)]
struct TopRows<V> {
    rows: Vec<V>,
    emitted: Option<Vec<V>>,
}

struct TopN<V, F> {
    rows: ValueStateDescriptor<TopRows<V>>,
    n: usize,
    order: F,
}

impl<K, V, F> KeyedProcessFunction<K, V> for TopN<V, F>
where
    K: Key,
    V: Data + PartialEq,
    F: Fn(&V, &V) -> Ordering + 'static,
{
    type Out = Change<Ranked<V>>;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, Self::Out, ()>,
        value: V,
    ) -> Result<()> {
        let (n, order) = (self.n, &self.order);
        let mut ask = false;
        ctx.value(&self.rows)?.update(|top| {
            let mut top = top.unwrap_or(TopRows {
                rows: Vec::new(),
                emitted: None,
            });
            let at = top
                .rows
                .iter()
                .position(|r| order(&value, r) == Ordering::Less)
                .unwrap_or(top.rows.len());
            if at >= n {
                return Some(top);
            }
            if top.emitted.is_none() {
                top.emitted = Some(top.rows.clone());
                ask = true;
            }
            top.rows.insert(at, value);
            top.rows.truncate(n);
            Some(top)
        })?;
        if ask {
            ctx.at_epoch_end();
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, ctx: &mut ProcessingContext<'_, K, Self::Out, ()>) -> Result<()> {
        let mut changes = Vec::new();
        ctx.value(&self.rows)?.update(|top| {
            let mut top = top?;
            let before = top.emitted.take().unwrap_or_default();
            for i in 0..before.len().max(top.rows.len()) {
                let rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
                match (before.get(i), top.rows.get(i)) {
                    (None, Some(r)) => changes.push(Change::Insert(Ranked {
                        rank,
                        row: r.clone(),
                    })),
                    (Some(b), Some(r)) if b != r => {
                        changes.push(Change::UpdateBefore(Ranked {
                            rank,
                            row: b.clone(),
                        }));
                        changes.push(Change::UpdateAfter(Ranked {
                            rank,
                            row: r.clone(),
                        }));
                    }
                    (Some(b), None) => changes.push(Change::Delete(Ranked {
                        rank,
                        row: b.clone(),
                    })),
                    _ => {}
                }
            }
            Some(top)
        })?;
        for c in changes {
            ctx.output(c);
        }
        Ok(())
    }
}

/// An aggregation's state per key.
#[derive(Clone, Serialize, Deserialize)]
struct AggState<A, O> {
    acc: A,
    /// Inputs it holds (changelog input: the row is deleted at 0).
    rows: u64,
    /// The result last emitted.
    emitted: Option<O>,
    /// Whether it asked to hear of the epoch's end.
    pending: bool,
}

/// Emits the change from the key's emitted result to its current one at
/// the end of an epoch.
fn flush<K: Key, F: AggregateFunction>(
    ctx: &mut ProcessingContext<'_, K, Change<(K, F::Out)>, ()>,
    state: &ValueStateDescriptor<AggState<F::Acc, F::Out>>,
    f: &F,
) -> Result<()>
where
    F::Out: Data + PartialEq,
{
    let mut change = (None, None);
    ctx.value(state)?.update(|s| {
        let mut s = s?;
        let now = (s.rows > 0).then(|| f.result(&s.acc));
        change = (s.emitted.take(), now.clone());
        if s.rows == 0 {
            return None;
        }
        s.emitted = now;
        s.pending = false;
        Some(s)
    })?;
    let (old, new) = change;
    let time = ctx.time();
    let key = ctx.key().clone();
    match (old, new) {
        (None, Some(n)) => ctx.output_at(time, Change::Insert((key, n))),
        (Some(o), Some(n)) if o != n => {
            ctx.output_at(time, Change::UpdateBefore((key.clone(), o)));
            ctx.output_at(time, Change::UpdateAfter((key, n)));
        }
        (Some(o), None) => ctx.output_at(time, Change::Delete((key, o))),
        _ => {}
    }
    Ok(())
}

/// Adds (or retracts) one input; the key's change is emitted at the end of
/// the epoch.
fn fold<K: Key, O: Data, F: AggregateFunction>(
    ctx: &mut ProcessingContext<'_, K, O, ()>,
    state: &ValueStateDescriptor<AggState<F::Acc, F::Out>>,
    f: &F,
    apply: impl FnOnce(&F, &mut F::Acc) -> bool,
) -> Result<()>
where
    F::Out: Data,
{
    let mut register = false;
    ctx.value(state)?.update(|s| {
        let mut s = s.unwrap_or_else(|| AggState {
            acc: f.create(),
            rows: 0,
            emitted: None,
            pending: false,
        });
        if apply(f, &mut s.acc) {
            s.rows += 1;
        } else {
            s.rows = s.rows.saturating_sub(1);
        }
        register = !s.pending;
        s.pending = true;
        Some(s)
    })?;
    if register {
        ctx.at_epoch_end();
    }
    Ok(())
}

struct Updating<F: AggregateFunction> {
    state: ValueStateDescriptor<AggState<F::Acc, F::Out>>,
    function: F,
}

impl<K, F> KeyedProcessFunction<K, F::In> for Updating<F>
where
    K: Key,
    F: AggregateFunction,
    F::In: Data,
    F::Out: Data + PartialEq,
{
    type Out = Change<(K, F::Out)>;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, Self::Out, ()>,
        value: F::In,
    ) -> Result<()> {
        fold(ctx, &self.state, &self.function, |f, acc| {
            f.add(acc, value);
            true
        })
    }

    fn on_epoch_end(&mut self, ctx: &mut ProcessingContext<'_, K, Self::Out, ()>) -> Result<()> {
        flush(ctx, &self.state, &self.function)
    }
}

struct Retracting<F: AggregateFunction> {
    state: ValueStateDescriptor<AggState<F::Acc, F::Out>>,
    function: F,
}

impl<K, F> KeyedProcessFunction<K, Change<F::In>> for Retracting<F>
where
    K: Key,
    F: RetractingAggregate,
    F::In: Data,
    F::Out: Data + PartialEq,
{
    type Out = Change<(K, F::Out)>;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, Self::Out, ()>,
        change: Change<F::In>,
    ) -> Result<()> {
        let adds = change.adds();
        let row = change.into_row();
        fold(ctx, &self.state, &self.function, |f, acc| {
            if adds {
                f.add(acc, row);
            } else {
                f.retract(acc, row);
            }
            adds
        })
    }

    fn on_epoch_end(&mut self, ctx: &mut ProcessingContext<'_, K, Self::Out, ()>) -> Result<()> {
        flush(ctx, &self.state, &self.function)
    }
}
