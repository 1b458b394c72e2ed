//! A keyed interval join (Flink's `IntervalJoin`), built on
//! [`KeyedProcessFunction`].
//!
//! The two keyed inputs become one keyed stream of [`JoinInput`]s: both
//! are already partitioned by key group, so concatenating them keeps every
//! key on its worker. Watermarks of the right input are renumbered after
//! those of the left (`from + left upstreams`), so the operator waits for
//! the watermarks of both inputs and its watermark is the smaller of the
//! two.
//!
//! Each side's records wait in keyed state (a map from event time to the
//! records of that time, per key). A record joins the other side's waiting
//! records in its range, then waits itself until the watermark shows that
//! no record it could join can come any more: an event-time timer removes
//! it then. Records are judged late as everywhere (time below the
//! watermark before their epoch) and dropped, as Flink does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::Operator;

use crate::context::{ProcessingContext, Timer};
use crate::data::{Data, Item, Key};
use crate::error::{Error, Result};
use crate::operators::keyed::KeyedProcessFunction;
use crate::state::MapStateDescriptor;
use crate::stream::{DataStream, KeyedStream};

/// A record of the left or the right input of a join.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum JoinInput<L, R> {
    Left(L),
    Right(R),
}

/// Wraps each record of a keyed stream; watermarks pass with their sender
/// renumbered by `from_offset`.
fn tag<'s, K: Key, T: Data, U: Data>(
    stream: StreamVec<'s, u64, Item<(K, T)>>,
    name: &str,
    from_offset: u32,
    wrap: impl Fn(T) -> U + 'static,
) -> StreamVec<'s, u64, Item<(K, U)>> {
    stream.unary::<CapacityContainerBuilder<Vec<Item<(K, U)>>>, _, _, _>(
        Pipeline,
        name,
        move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for item in batch.drain(..) {
                            session.give(match item {
                                Item::Rec {
                                    time,
                                    kg,
                                    data: (k, v),
                                } => Item::Rec {
                                    time,
                                    kg,
                                    data: (k, wrap(v)),
                                },
                                Item::Wm { to, from, wm } => Item::Wm {
                                    to,
                                    from: from + from_offset,
                                    wm,
                                },
                            });
                        }
                    }
                });
            }
        },
    )
}

impl<'s, K: Key, L: Data> KeyedStream<'s, K, L> {
    /// Joins each record `l` of this stream with every record `r` of
    /// `right` with the same key and an event time in
    /// `[l.time + lower, l.time + upper]` (ms; `lower <= upper`, either may
    /// be negative), emitting `join(key, l, r)` at the later of the two
    /// times. Each pair is emitted once, whichever comes first; late
    /// records of either side are dropped. `lower > upper` fails the job
    /// when it starts with [`Error::InvalidJob`].
    pub fn interval_join<R: Data, O: Data>(
        self,
        name: &str,
        right: KeyedStream<'s, K, R>,
        lower: i64,
        upper: i64,
        join: impl Fn(&K, &L, &R) -> O + 'static,
    ) -> DataStream<'s, O> {
        if lower > upper {
            self.shared.borrow_mut().fail(Error::invalid(
                "interval_join",
                format!("the lower bound {lower} ms is above the upper bound {upper} ms"),
            ));
        }
        let offset = u32::try_from(self.upstreams).unwrap_or(u32::MAX);
        let left = tag(self.inner, "JoinLeft", 0, JoinInput::<L, R>::Left);
        let right_inner = tag(right.inner, "JoinRight", offset, JoinInput::<L, R>::Right);
        let both = KeyedStream {
            inner: left.concat(right_inner),
            shared: self.shared,
            upstreams: self.upstreams + right.upstreams,
        };
        both.process(
            name,
            IntervalJoin {
                lower,
                upper,
                left: MapStateDescriptor::new("join-left"),
                right: MapStateDescriptor::new("join-right"),
                join,
            },
        )
    }
}

/// `t + by`, without overflow.
fn shift(t: u64, by: i64) -> i128 {
    i128::from(t) + i128::from(by)
}

fn clamp(t: i128) -> u64 {
    u64::try_from(t.max(0)).unwrap_or(u64::MAX)
}

struct IntervalJoin<L, R, F> {
    lower: i64,
    upper: i64,
    left: MapStateDescriptor<u64, Vec<L>>,
    right: MapStateDescriptor<u64, Vec<R>>,
    join: F,
}

impl<L, R, F> IntervalJoin<L, R, F> {
    /// When a left record at `t` can join nothing more: every right record
    /// to come has a time of at least the watermark, and it needs one at
    /// most `t + upper`.
    fn left_cleanup(&self, t: u64) -> u64 {
        clamp(shift(t, self.upper) + 1)
    }

    /// When a right record at `t` can join nothing more: it needs a left
    /// record at most `t - lower`.
    fn right_cleanup(&self, t: u64) -> u64 {
        clamp(i128::from(t) - i128::from(self.lower) + 1)
    }
}

/// The records of `waiting` with a time in `[lo, hi]`, with their times.
fn in_range<T>(
    waiting: Option<&BTreeMap<u64, Vec<T>>>,
    lo: i128,
    hi: i128,
) -> impl Iterator<Item = (u64, &T)> {
    let valid = lo <= hi && hi >= 0;
    let (lo, hi) = (clamp(lo), clamp(hi));
    waiting
        .filter(|_| valid)
        .into_iter()
        .flat_map(move |m| m.range(lo..=hi))
        .flat_map(|(&t, records)| records.iter().map(move |r| (t, r)))
}

impl<K, L, R, O, F> KeyedProcessFunction<K, JoinInput<L, R>> for IntervalJoin<L, R, F>
where
    K: Key,
    L: Data,
    R: Data,
    O: Data,
    F: Fn(&K, &L, &R) -> O + 'static,
{
    type Out = O;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, O, ()>,
        value: JoinInput<L, R>,
    ) -> Result<()> {
        let t = ctx.time();
        if t < ctx.watermark() {
            return Ok(());
        }
        let key = ctx.key().clone();
        let join = &self.join;
        let mut found = Vec::new();
        match value {
            JoinInput::Left(l) => {
                let (lo, hi) = (shift(t, self.lower), shift(t, self.upper));
                ctx.map(&self.right)?.with(|waiting| {
                    for (tr, r) in in_range(waiting, lo, hi) {
                        found.push((t.max(tr), join(&key, &l, r)));
                    }
                })?;
                ctx.map(&self.left)?
                    .modify(|waiting| waiting.entry(t).or_default().push(l))?;
                ctx.register_event_timer(self.left_cleanup(t));
            }
            JoinInput::Right(r) => {
                let (lo, hi) = (
                    i128::from(t) - i128::from(self.upper),
                    i128::from(t) - i128::from(self.lower),
                );
                ctx.map(&self.left)?.with(|waiting| {
                    for (tl, l) in in_range(waiting, lo, hi) {
                        found.push((t.max(tl), join(&key, l, &r)));
                    }
                })?;
                ctx.map(&self.right)?
                    .modify(|waiting| waiting.entry(t).or_default().push(r))?;
                ctx.register_event_timer(self.right_cleanup(t));
            }
        }
        for (time, out) in found {
            ctx.output_at(time, out);
        }
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut ProcessingContext<'_, K, O, ()>, timer: Timer) -> Result<()> {
        let now = timer.time;
        let this = &*self;
        ctx.map(&this.left)?
            .modify(|waiting| waiting.retain(|&t, _| this.left_cleanup(t) > now))?;
        ctx.map(&this.right)?
            .modify(|waiting| waiting.retain(|&t, _| this.right_cleanup(t) > now))?;
        Ok(())
    }
}
