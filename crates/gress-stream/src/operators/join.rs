//! A keyed interval join (Flink's `IntervalJoin`), built on
//! [`KeyedProcessFunction`].
//!
//! The two keyed inputs are connected ([`KeyedStream::connect`]) into one
//! keyed stream of [`CoInput`]s, so the operator's watermark is the
//! smaller of the two inputs'.
//!
//! Each side's records wait in keyed state, in *buckets* of event time (a
//! quarter of the join's range wide), each bucket in *chunks*, one per
//! epoch that added to it: per key and side, a small index of the chunks,
//! and one value per chunk (namespace: bucket start and epoch) with its
//! records and their times. A record joins the other side's waiting
//! records in its range (reading only the chunks of buckets that overlap
//! it), then waits until the watermark shows that no record it could join
//! can come any more: one event-time timer per bucket removes the bucket's
//! chunks then. So an epoch writes only what it added (and the index), and
//! a cleanup touches one bucket, however many records a key has waiting. Records are judged late
//! as everywhere (time below the watermark before their epoch) and
//! dropped, as Flink does.

use crate::context::{ProcessingContext, Timer};
use crate::data::{Data, Key};
use crate::error::{Error, Result};
use crate::operators::connect::CoInput;
use crate::operators::keyed::KeyedProcessFunction;
use crate::state::ValueStateDescriptor;
use crate::stream::{DataStream, KeyedStream};

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
        let both = self.connect(right);
        both.process(
            name,
            IntervalJoin {
                lower,
                upper,
                width: bucket_width(lower, upper),
                left: Side::new("join-left"),
                right: Side::new("join-right"),
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

/// The width of a bucket (ms): a quarter of the join's range, so a record's
/// range spans about five buckets and a bucket lives about a quarter range
/// longer than its last record needs.
fn bucket_width(lower: i64, upper: i64) -> u64 {
    let range = u64::try_from(i128::from(upper) - i128::from(lower)).unwrap_or(u64::MAX);
    (range / 4).max(1)
}

/// One side's waiting records of a key.
struct Side<T> {
    /// The chunks that hold records, ascending: (bucket start, epoch that
    /// wrote it).
    index: ValueStateDescriptor<Vec<(u64, u64)>>,
    /// A chunk's records with their times (namespace: bucket start and
    /// epoch): written in one epoch, then only read until removed.
    chunk: ValueStateDescriptor<Vec<(u64, T)>>,
}

impl<T: Data> Side<T> {
    fn new(name: &str) -> Self {
        Side {
            index: ValueStateDescriptor::new(format!("{name}-chunks")),
            chunk: ValueStateDescriptor::new(name),
        }
    }

    /// Adds a record at `t` to its bucket's chunk of this epoch; returns
    /// the bucket's start. The context ends in the bucket's namespace.
    fn add<K: Key, O>(
        &self,
        ctx: &mut ProcessingContext<'_, K, O, ()>,
        width: u64,
        t: u64,
        record: T,
    ) -> Result<u64> {
        let id = (t - t % width, ctx.epoch());
        ctx.set_namespace::<u64>(None)?;
        ctx.value(&self.index)?.update(|index| {
            let mut index = index.unwrap_or_default();
            if let Err(at) = index.binary_search(&id) {
                index.insert(at, id);
            }
            Some(index)
        })?;
        ctx.set_namespace(Some(&id))?;
        ctx.value(&self.chunk)?.update(|c| {
            let mut c = c.unwrap_or_default();
            c.push((t, record));
            Some(c)
        })?;
        ctx.set_namespace(Some(&id.0))?;
        Ok(id.0)
    }

    /// Calls `each(time, record)` for every waiting record with a time in
    /// `[lo, hi]`, reading only the chunks of buckets that overlap it.
    fn each_in<K: Key, O>(
        &self,
        ctx: &mut ProcessingContext<'_, K, O, ()>,
        width: u64,
        lo: i128,
        hi: i128,
        mut each: impl FnMut(u64, &T),
    ) -> Result<()> {
        if lo > hi || hi < 0 {
            return Ok(());
        }
        let (lo, hi) = (clamp(lo), clamp(hi));
        ctx.set_namespace::<u64>(None)?;
        let first = lo - lo % width;
        let chunks: Vec<(u64, u64)> = ctx.value(&self.index)?.with(|index| {
            index
                .map(|i| {
                    i.iter()
                        .copied()
                        .filter(|&(b, _)| b >= first && b <= hi)
                        .collect()
                })
                .unwrap_or_default()
        })?;
        for id in chunks {
            ctx.set_namespace(Some(&id))?;
            ctx.value(&self.chunk)?.with(|c| {
                for (t, r) in c.into_iter().flatten() {
                    if (lo..=hi).contains(t) {
                        each(*t, r);
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Removes every chunk of the bucket starting at `start`.
    fn drop_bucket<K: Key, O>(
        &self,
        ctx: &mut ProcessingContext<'_, K, O, ()>,
        start: u64,
    ) -> Result<()> {
        ctx.set_namespace::<u64>(None)?;
        let mut gone = Vec::new();
        ctx.value(&self.index)?.update(|index| {
            let mut index = index.unwrap_or_default();
            index.retain(|&(b, e)| {
                if b == start {
                    gone.push((b, e));
                }
                b != start
            });
            (!index.is_empty()).then_some(index)
        })?;
        for id in gone {
            ctx.set_namespace(Some(&id))?;
            ctx.value(&self.chunk)?.clear()?;
        }
        Ok(())
    }
}

struct IntervalJoin<L, R, F> {
    lower: i64,
    upper: i64,
    /// Bucket width, ms.
    width: u64,
    left: Side<L>,
    right: Side<R>,
    join: F,
}

impl<L, R, F> IntervalJoin<L, R, F> {
    /// When the left bucket at `start` can join nothing more: every right
    /// record to come has a time of at least the watermark, and its last
    /// record needs one at most `start + width - 1 + upper`.
    fn left_cleanup(&self, start: u64) -> u64 {
        clamp(shift(start.saturating_add(self.width), self.upper))
    }

    /// When the right bucket at `start` can join nothing more: its last
    /// record needs a left record at most `start + width - 1 - lower`.
    fn right_cleanup(&self, start: u64) -> u64 {
        clamp(i128::from(start.saturating_add(self.width)) - i128::from(self.lower))
    }
}

impl<K, L, R, O, F> KeyedProcessFunction<K, CoInput<L, R>> for IntervalJoin<L, R, F>
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
        value: CoInput<L, R>,
    ) -> Result<()> {
        let t = ctx.time();
        if t < ctx.watermark() {
            return Ok(());
        }
        let key = ctx.key().clone();
        let join = &self.join;
        let mut found = Vec::new();
        match value {
            CoInput::Left(l) => {
                let (lo, hi) = (shift(t, self.lower), shift(t, self.upper));
                self.right.each_in(ctx, self.width, lo, hi, |tr, r| {
                    found.push((t.max(tr), join(&key, &l, r)));
                })?;
                let start = self.left.add(ctx, self.width, t, l)?;
                ctx.register_event_timer(self.left_cleanup(start));
            }
            CoInput::Right(r) => {
                let (lo, hi) = (
                    i128::from(t) - i128::from(self.upper),
                    i128::from(t) - i128::from(self.lower),
                );
                self.left.each_in(ctx, self.width, lo, hi, |tl, l| {
                    found.push((t.max(tl), join(&key, l, &r)));
                })?;
                let start = self.right.add(ctx, self.width, t, r)?;
                ctx.register_event_timer(self.right_cleanup(start));
            }
        }
        for (time, out) in found {
            ctx.output_at(time, out);
        }
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut ProcessingContext<'_, K, O, ()>, timer: Timer) -> Result<()> {
        let start: u64 = postcard::from_bytes(&timer.namespace)
            .map_err(|e| Error::codec("join timer namespace", e))?;
        if timer.time == self.left_cleanup(start) {
            self.left.drop_bucket(ctx, start)?;
        }
        if timer.time == self.right_cleanup(start) {
            self.right.drop_bucket(ctx, start)?;
        }
        Ok(())
    }
}
