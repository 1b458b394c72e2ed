//! Two keyed streams as one (Flink's `connect` and `KeyedCoProcessFunction`),
//! and the regular join built on it.
//!
//! Both inputs are already partitioned by key group, so concatenating them
//! keeps every key on its worker. Watermarks of the right input are
//! renumbered after those of the left (`from + left upstreams`), so an
//! operator on the connected stream waits for the watermarks of both
//! inputs and its watermark is the smaller of the two.
//!
//! The regular join keeps every record of both sides in keyed state (one
//! list per key and side), each record joining those of the other side
//! that are there when it arrives: each matching pair is emitted once,
//! by whichever record came second. An optional time to live bounds the
//! state.

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::Operator;

use crate::context::ProcessingContext;
use crate::data::{Data, Item, Key};
use crate::error::{Error, Result};
use crate::operators::keyed::KeyedProcessFunction;
use crate::state::{ListStateDescriptor, StateTtl, ValueStateDescriptor};
use crate::stream::{DataStream, KeyedStream};

/// A record of the left or the right input of a connected stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoInput<L, R> {
    /// From the stream `connect` was called on.
    Left(L),
    /// From the stream passed to `connect`.
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
    /// This stream and `right` as one keyed stream: a keyed operator on it
    /// sees the records of both inputs of each key, with the key's state
    /// and timers (Flink's `KeyedCoProcessFunction`), and its watermark is
    /// the smaller of the two inputs'.
    pub fn connect<R: Data>(
        self,
        right: KeyedStream<'s, K, R>,
    ) -> KeyedStream<'s, K, CoInput<L, R>> {
        let offset = u32::try_from(self.upstreams).unwrap_or(u32::MAX);
        let left = tag(self.inner, "ConnectLeft", 0, CoInput::<L, R>::Left);
        let right_inner = tag(right.inner, "ConnectRight", offset, CoInput::<L, R>::Right);
        KeyedStream {
            inner: left.concat(right_inner),
            shared: self.shared,
            upstreams: self.upstreams + right.upstreams,
        }
    }

    /// Joins every record of this stream with every record of `right` with
    /// the same key, whenever each arrived (a regular inner join, not
    /// bounded by time), emitting `join(key, l, r)` when it is `Some`, at
    /// the later of the two times. Both sides are kept in keyed state (a
    /// list per key and side); with `ttl`, a key's list of one side is
    /// dropped once it has not been added to for that long (by the job's
    /// clock), and its records join nothing after that.
    pub fn join<R: Data, O: Data>(
        self,
        name: &str,
        right: KeyedStream<'s, K, R>,
        ttl: Option<StateTtl>,
        join: impl Fn(&K, &L, &R) -> Option<O> + 'static,
    ) -> DataStream<'s, O> {
        fn side<T: Data>(name: &str, ttl: Option<StateTtl>) -> ListStateDescriptor<(u64, T)> {
            let d = ListStateDescriptor::new(name);
            match ttl {
                Some(ttl) => d.with_ttl(ttl),
                None => d,
            }
        }
        self.connect(right).process(
            name,
            RegularJoin {
                left: side("join-left", ttl),
                right: side("join-right", ttl),
                join,
            },
        )
    }
}

impl<'s, K: Key, L: Data> KeyedStream<'s, K, L> {
    /// [`KeyedStream::join`] for a right side with at most one record per
    /// key (a primary key: an auction by its id, a person by theirs). The
    /// right record is kept; left records wait only until it arrives, and
    /// join it alone after, so the left side's state holds only records
    /// whose match has not come yet. With `ttl`, both are dropped as it
    /// says. A second right record for a key fails the
    /// job with [`crate::Error::Operator`] rather than emit a wrong
    /// result.
    pub fn join_unique<R: Data, O: Data>(
        self,
        name: &str,
        right: KeyedStream<'s, K, R>,
        ttl: Option<StateTtl>,
        join: impl Fn(&K, &L, &R) -> Option<O> + 'static,
    ) -> DataStream<'s, O> {
        let mut one = ValueStateDescriptor::new("join-right");
        let mut waiting = ListStateDescriptor::new("join-waiting");
        if let Some(ttl) = ttl {
            one = one.with_ttl(ttl);
            waiting = waiting.with_ttl(ttl);
        }
        self.connect(right).process(
            name,
            UniqueJoin {
                right: one,
                waiting,
                join,
            },
        )
    }
}

struct UniqueJoin<L, R, F> {
    /// The key's right record, with its time.
    right: ValueStateDescriptor<(u64, R)>,
    /// Left records that came before it, with their times.
    waiting: ListStateDescriptor<(u64, L)>,
    join: F,
}

impl<K, L, R, O, F> KeyedProcessFunction<K, CoInput<L, R>> for UniqueJoin<L, R, F>
where
    K: Key,
    L: Data,
    R: Data,
    O: Data,
    F: Fn(&K, &L, &R) -> Option<O> + 'static,
{
    type Out = O;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, O, ()>,
        value: CoInput<L, R>,
    ) -> Result<()> {
        let t = ctx.time();
        let key = ctx.key().clone();
        let join = &self.join;
        match value {
            CoInput::Left(l) => {
                let found = ctx
                    .value(&self.right)?
                    .with(|r| r.map(|(tr, r)| (*tr, join(&key, &l, r))))?;
                match found {
                    Some((tr, Some(o))) => ctx.output_at(t.max(tr), o),
                    Some((_, None)) => {}
                    None => ctx.list(&self.waiting)?.add((t, l))?,
                }
            }
            CoInput::Right(r) => {
                if ctx.value(&self.right)?.with(|old| old.is_some())? {
                    return Err(Error::Worker(
                        "join_unique: a second right record for one key".into(),
                    ));
                }
                let waiting = ctx.list(&self.waiting)?.get()?;
                ctx.list(&self.waiting)?.clear()?;
                for (tl, l) in waiting {
                    if let Some(o) = join(&key, &l, &r) {
                        ctx.output_at(t.max(tl), o);
                    }
                }
                ctx.value(&self.right)?.set((t, r))?;
            }
        }
        Ok(())
    }
}

struct RegularJoin<L, R, F> {
    /// The left records of a key, with their times.
    left: ListStateDescriptor<(u64, L)>,
    /// The right records of a key, with their times.
    right: ListStateDescriptor<(u64, R)>,
    join: F,
}

impl<K, L, R, O, F> KeyedProcessFunction<K, CoInput<L, R>> for RegularJoin<L, R, F>
where
    K: Key,
    L: Data,
    R: Data,
    O: Data,
    F: Fn(&K, &L, &R) -> Option<O> + 'static,
{
    type Out = O;
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, O, ()>,
        value: CoInput<L, R>,
    ) -> Result<()> {
        let t = ctx.time();
        let key = ctx.key().clone();
        let join = &self.join;
        let mut found = Vec::new();
        match value {
            CoInput::Left(l) => {
                ctx.list(&self.right)?.with(|rights| {
                    for (tr, r) in rights {
                        if let Some(o) = join(&key, &l, r) {
                            found.push((t.max(*tr), o));
                        }
                    }
                })?;
                ctx.list(&self.left)?.add((t, l))?;
            }
            CoInput::Right(r) => {
                ctx.list(&self.left)?.with(|lefts| {
                    for (tl, l) in lefts {
                        if let Some(o) = join(&key, l, &r) {
                            found.push((t.max(*tl), o));
                        }
                    }
                })?;
                ctx.list(&self.right)?.add((t, r))?;
            }
        }
        for (time, out) in found {
            ctx.output_at(time, out);
        }
        Ok(())
    }
}
