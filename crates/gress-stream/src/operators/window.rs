//! Event-time windows on keyed streams, with Flink's semantics and its
//! default event-time trigger, built on [`KeyedProcessFunction`].
//!
//! Each record is assigned to windows `[start, end)`. A window's contents
//! live in keyed state under the window as namespace: an accumulator for
//! `reduce` and `aggregate`, the list of its records for `process`. Two
//! event-time timers in the same namespace drive it: one at `end`, when it
//! fires, and one at `end + allowed lateness`, when its state is removed
//! (one timer when the lateness is zero).
//!
//! A watermark `w` promises that no record with a time below `w` follows,
//! so a window is complete once the watermark reaches `end` (Flink, whose
//! watermark promises nothing at or below it, says "reaches `end - 1`").
//! Its result is emitted with event time `end - 1`, the window's largest
//! time.
//!
//! Lateness: a record whose window has fired but is not done (the
//! watermark is below `end + allowed lateness`) is added, and the window
//! fires again at once with the updated result: every such record re-fires
//! it. A record none of whose windows can take it any more is late: it goes
//! to the late side output if one was asked for, and is dropped otherwise.
//!
//! Session windows merge: each key keeps the set of its live sessions
//! (state without namespace). A record's window `[t, t + gap)` absorbs
//! every live session it intersects or touches; their contents are merged
//! into the new window's namespace, and their state and timers removed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::context::{ProcessingContext, Timer};
use crate::data::{Data, Key};
use crate::error::{Error, Result};
use crate::keys::TimeDomain;
use crate::operators::keyed::KeyedProcessFunction;
use crate::state::{AggregateFunction, ListStateDescriptor, ValueStateDescriptor};
use crate::stream::{DataStream, KeyedStream};

/// A window of event time: `[start, end)`, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// The first time in the window.
    pub start: u64,
    /// The first time after the window.
    pub end: u64,
}

impl Window {
    /// The largest time in the window: `end - 1`.
    pub fn max_timestamp(&self) -> u64 {
        self.end.saturating_sub(1)
    }

    /// Whether the two windows overlap or touch (sessions that do merge).
    pub fn intersects(&self, other: &Window) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &Window) -> Window {
        Window {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// The result of one firing of a window of one key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowResult<K, R> {
    /// The key.
    pub key: K,
    /// The window's start (ms).
    pub start: u64,
    /// The window's end (ms, exclusive).
    pub end: u64,
    /// What the window function made of the window's records.
    pub result: R,
}

impl<K, R> WindowResult<K, R> {
    /// The window.
    pub fn window(&self) -> Window {
        Window {
            start: self.start,
            end: self.end,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assigner {
    Tumbling { size: u64 },
    Sliding { size: u64, slide: u64 },
    Session { gap: u64 },
}

/// Which windows a record belongs to.
///
/// Sizes, slides and gaps are whole milliseconds; a zero one fails the job
/// when it starts with [`Error::InvalidJob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAssigner(Assigner);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn clamp(t: i128) -> u64 {
    u64::try_from(t.max(0)).unwrap_or(u64::MAX)
}

impl WindowAssigner {
    /// Windows of `size` one after another: `[k * size, (k + 1) * size)`.
    pub fn tumbling(size: Duration) -> Self {
        WindowAssigner(Assigner::Tumbling { size: ms(size) })
    }

    /// Windows of `size` starting every `slide` (`k * slide`): a record is
    /// in about `size / slide` of them. Windows that would start before
    /// time 0 start at 0.
    pub fn sliding(size: Duration, slide: Duration) -> Self {
        WindowAssigner(Assigner::Sliding {
            size: ms(size),
            slide: ms(slide),
        })
    }

    /// Sessions: a record makes the window `[t, t + gap)`, and windows of a
    /// key that overlap or touch merge into one.
    pub fn session(gap: Duration) -> Self {
        WindowAssigner(Assigner::Session { gap: ms(gap) })
    }

    /// Whether windows merge (sessions).
    pub fn is_merging(&self) -> bool {
        matches!(self.0, Assigner::Session { .. })
    }

    /// Why the assigner cannot run, if it cannot.
    fn check(&self) -> Option<Error> {
        let zero = match self.0 {
            Assigner::Tumbling { size } => (size == 0).then_some("the size"),
            Assigner::Sliding { size, slide } => (size == 0)
                .then_some("the size")
                .or((slide == 0).then_some("the slide")),
            Assigner::Session { gap } => (gap == 0).then_some("the gap"),
        };
        zero.map(|what| Error::invalid("window", format!("{what} must be at least 1 ms")))
    }

    /// Appends the windows of a record at time `t` to `out`.
    pub fn assign(&self, t: u64, out: &mut Vec<Window>) {
        match self.0 {
            Assigner::Tumbling { size } => {
                let size = size.max(1);
                let start = t - t % size;
                out.push(Window {
                    start,
                    end: start.saturating_add(size),
                });
            }
            Assigner::Sliding { size, slide } => {
                let (t, size, slide) = (i128::from(t), i128::from(size), i128::from(slide.max(1)));
                let mut start = t - t % slide;
                while start + size > t {
                    out.push(Window {
                        start: clamp(start),
                        end: clamp(start + size),
                    });
                    start -= slide;
                }
            }
            Assigner::Session { gap } => out.push(Window {
                start: t,
                end: t.saturating_add(gap),
            }),
        }
    }
}

/// A keyed stream cut into windows; a window function turns it back into a
/// stream of [`WindowResult`]s.
pub struct WindowedStream<'s, K, V> {
    stream: KeyedStream<'s, K, V>,
    assigner: WindowAssigner,
    lateness: u64,
}

impl<K, V> std::fmt::Debug for WindowedStream<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedStream")
            .field("assigner", &self.assigner)
            .field("allowed_lateness_ms", &self.lateness)
            .finish_non_exhaustive()
    }
}

impl<'s, K: Key, V: Data> KeyedStream<'s, K, V> {
    /// Cuts the stream into event-time windows of each key.
    pub fn window(self, assigner: WindowAssigner) -> WindowedStream<'s, K, V> {
        WindowedStream {
            stream: self,
            assigner,
            lateness: 0,
        }
    }
}

impl<'s, K: Key, V: Data> WindowedStream<'s, K, V> {
    /// Keeps each window's state for `lateness` after it fires: a record of
    /// the window arriving in that time re-fires it with the updated
    /// result. Zero (the default) removes the state when the window fires.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = ms(lateness);
        self
    }

    fn operator<C>(self, contents: C) -> (KeyedStream<'s, K, V>, WindowOperator<C>) {
        if let Some(e) = self.assigner.check() {
            self.stream.shared.borrow_mut().fail(e);
        }
        let op = WindowOperator {
            assigner: self.assigner,
            lateness: self.lateness,
            contents,
            sessions: ValueStateDescriptor::new("window-sessions"),
            scratch: Vec::new(),
        };
        (self.stream, op)
    }

    /// Folds each window's records with `reduce(acc, record)`, incrementally.
    pub fn reduce(
        self,
        name: &str,
        reduce: impl Fn(&V, V) -> V + 'static,
    ) -> DataStream<'s, WindowResult<K, V>> {
        let (stream, op) = self.operator(ReduceContents {
            state: ValueStateDescriptor::new("window-reduced"),
            reduce,
        });
        stream.process(name, op)
    }

    /// Like [`WindowedStream::reduce`], with the late records as a second
    /// stream.
    pub fn reduce_with_late(
        self,
        name: &str,
        reduce: impl Fn(&V, V) -> V + 'static,
    ) -> (DataStream<'s, WindowResult<K, V>>, DataStream<'s, V>) {
        let (stream, op) = self.operator(ReduceContents {
            state: ValueStateDescriptor::new("window-reduced"),
            reduce,
        });
        stream.process_with_side(name, op)
    }

    fn aggregate_operator<F>(
        self,
        function: F,
    ) -> (KeyedStream<'s, K, V>, WindowOperator<AggregateContents<F>>)
    where
        F: AggregateFunction<In = V>,
    {
        if self.assigner.is_merging()
            && function
                .merge(function.create(), function.create())
                .is_none()
        {
            self.stream.shared.borrow_mut().fail(Error::invalid(
                "window",
                "session windows merge accumulators: the aggregate function must implement `merge`",
            ));
        }
        self.operator(AggregateContents {
            state: ValueStateDescriptor::new("window-accumulator"),
            function,
        })
    }

    /// Aggregates each window's records with `function`, incrementally
    /// (one accumulator per window). Session windows need its `merge`.
    pub fn aggregate<F>(self, name: &str, function: F) -> DataStream<'s, WindowResult<K, F::Out>>
    where
        F: AggregateFunction<In = V>,
        F::Out: Data,
    {
        let (stream, op) = self.aggregate_operator(function);
        stream.process(name, op)
    }

    /// Like [`WindowedStream::aggregate`], with the late records as a
    /// second stream.
    pub fn aggregate_with_late<F>(
        self,
        name: &str,
        function: F,
    ) -> (DataStream<'s, WindowResult<K, F::Out>>, DataStream<'s, V>)
    where
        F: AggregateFunction<In = V>,
        F::Out: Data,
    {
        let (stream, op) = self.aggregate_operator(function);
        stream.process_with_side(name, op)
    }

    /// Calls `function(key, window, records)` with all the records of a
    /// window (in arrival order) when it fires; the records are kept in a
    /// list until then.
    pub fn process<R: Data>(
        self,
        name: &str,
        function: impl FnMut(&K, &Window, &[V]) -> R + 'static,
    ) -> DataStream<'s, WindowResult<K, R>> {
        let (stream, op) = self.operator(ProcessContents::new(function));
        stream.process(name, op)
    }

    /// Like [`WindowedStream::process`], with the late records as a second
    /// stream.
    pub fn process_with_late<R: Data>(
        self,
        name: &str,
        function: impl FnMut(&K, &Window, &[V]) -> R + 'static,
    ) -> (DataStream<'s, WindowResult<K, R>>, DataStream<'s, V>) {
        let (stream, op) = self.operator(ProcessContents::new(function));
        stream.process_with_side(name, op)
    }
}

type Ctx<'c, 'a, K, O, S> = &'c mut ProcessingContext<'a, K, O, S>;

/// What a window keeps in the state of its namespace (the context's
/// current one), and how it becomes a result.
trait Contents<K, V>: 'static {
    /// The result of a firing.
    type Result: Data;
    /// The contents, taken out of one window to merge into another.
    type Part;

    /// Adds a record; whether the window held nothing before (lists: true).
    fn add<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, value: V) -> Result<bool>;
    /// Removes and returns the contents.
    fn take<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>) -> Result<Option<Self::Part>>;
    /// Merges contents taken from another window in.
    fn absorb<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, part: Self::Part) -> Result<()>;
    /// The result, if the window has contents.
    fn result<O, S>(
        &mut self,
        ctx: Ctx<'_, '_, K, O, S>,
        key: &K,
        window: &Window,
    ) -> Result<Option<Self::Result>>;
    fn clear<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>) -> Result<()>;
}

struct ReduceContents<V, F> {
    state: ValueStateDescriptor<V>,
    reduce: F,
}

impl<K, V: Data, F: Fn(&V, V) -> V + 'static> Contents<K, V> for ReduceContents<V, F> {
    type Result = V;
    type Part = V;

    fn add<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, value: V) -> Result<bool> {
        let reduce = &self.reduce;
        let mut fresh = false;
        ctx.value(&self.state)?.update(|acc| {
            Some(match acc {
                Some(acc) => reduce(&acc, value),
                None => {
                    fresh = true;
                    value
                }
            })
        })?;
        Ok(fresh)
    }

    fn take<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>) -> Result<Option<V>> {
        let mut taken = None;
        ctx.value(&self.state)?.update(|acc| {
            taken = acc;
            None
        })?;
        Ok(taken)
    }

    fn absorb<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, part: V) -> Result<()> {
        self.add(ctx, part).map(|_| ())
    }

    fn result<O, S>(
        &mut self,
        ctx: Ctx<'_, '_, K, O, S>,
        _key: &K,
        _window: &Window,
    ) -> Result<Option<V>> {
        ctx.value(&self.state)?.get()
    }

    fn clear<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>) -> Result<()> {
        ctx.value(&self.state)?.clear()
    }
}

struct AggregateContents<F: AggregateFunction> {
    state: ValueStateDescriptor<F::Acc>,
    function: F,
}

impl<K, F> Contents<K, F::In> for AggregateContents<F>
where
    F: AggregateFunction,
    F::Out: Data,
{
    type Result = F::Out;
    type Part = F::Acc;

    fn add<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, value: F::In) -> Result<bool> {
        let f = &self.function;
        let mut fresh = false;
        ctx.value(&self.state)?.update(|acc| {
            let mut acc = acc.unwrap_or_else(|| {
                fresh = true;
                f.create()
            });
            f.add(&mut acc, value);
            Some(acc)
        })?;
        Ok(fresh)
    }

    fn take<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>) -> Result<Option<F::Acc>> {
        let mut taken = None;
        ctx.value(&self.state)?.update(|acc| {
            taken = acc;
            None
        })?;
        Ok(taken)
    }

    fn absorb<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, part: F::Acc) -> Result<()> {
        let f = &self.function;
        let mut merged = true;
        ctx.value(&self.state)?.update(|acc| match acc {
            None => Some(part),
            Some(acc) => {
                let m = f.merge(acc, part);
                merged = m.is_some();
                m
            }
        })?;
        if merged {
            Ok(())
        } else {
            Err(Error::invalid(
                "window",
                "the aggregate function cannot merge accumulators",
            ))
        }
    }

    fn result<O, S>(
        &mut self,
        ctx: Ctx<'_, '_, K, O, S>,
        _key: &K,
        _window: &Window,
    ) -> Result<Option<F::Out>> {
        let f = &self.function;
        ctx.value(&self.state)?.with(|acc| acc.map(|a| f.result(a)))
    }

    fn clear<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>) -> Result<()> {
        ctx.value(&self.state)?.clear()
    }
}

/// A window's records for `process`, in arrival order: one chunk per epoch
/// that added to the window (namespace: the window's, then the epoch), and
/// the list of chunks in the window's namespace. An epoch writes only its
/// own chunk, whatever the window holds already.
struct ProcessContents<V, F> {
    chunks: ValueStateDescriptor<Vec<u64>>,
    list: ListStateDescriptor<V>,
    function: F,
    /// The window's namespace, kept while the context visits a chunk.
    window_ns: Vec<u8>,
}

impl<V: Data, F> ProcessContents<V, F> {
    fn new(function: F) -> Self {
        ProcessContents {
            chunks: ValueStateDescriptor::new("window-chunks"),
            list: ListStateDescriptor::new("window-records"),
            function,
            window_ns: Vec::new(),
        }
    }

    /// Puts the context in chunk `chunk` of the window it is in.
    fn enter<K, O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, chunk: u64) {
        let mut ns = std::mem::take(&mut self.window_ns);
        ns.clear();
        ns.extend_from_slice(ctx.namespace_bytes());
        let window_len = ns.len();
        ns.extend_from_slice(&chunk.to_be_bytes());
        ctx.set_namespace_bytes(&ns);
        ns.truncate(window_len);
        self.window_ns = ns;
    }

    /// Back to the window's namespace after [`Self::enter`].
    fn leave<K, O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>) {
        ctx.set_namespace_bytes(&self.window_ns);
    }

    /// Appends `values` to the window, in the chunk of the current epoch.
    fn append<K, O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, values: Vec<V>) -> Result<()> {
        let chunk = ctx.epoch();
        ctx.value(&self.chunks)?.update(|chunks| {
            let mut chunks = chunks.unwrap_or_default();
            if chunks.last() != Some(&chunk) {
                chunks.push(chunk);
            }
            Some(chunks)
        })?;
        self.enter(ctx, chunk);
        let added = ctx.list(&self.list)?.modify_with(|l| l.extend(values));
        self.leave(ctx);
        added
    }

    /// Every record of the window, in order, removing them if `remove`.
    fn records<K, O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, remove: bool) -> Result<Vec<V>> {
        let chunks = if remove {
            let mut taken = None;
            ctx.value(&self.chunks)?.update(|c| {
                taken = c;
                None
            })?;
            taken.unwrap_or_default()
        } else {
            ctx.value(&self.chunks)?.get()?.unwrap_or_default()
        };
        let mut out = Vec::new();
        for chunk in chunks {
            self.enter(ctx, chunk);
            let read = if remove {
                ctx.list(&self.list)?.modify_with(std::mem::take)
            } else {
                ctx.list(&self.list)?.get()
            };
            self.leave(ctx);
            out.extend(read?);
        }
        Ok(out)
    }
}

impl<K, V: Data, R: Data, F> Contents<K, V> for ProcessContents<V, F>
where
    F: FnMut(&K, &Window, &[V]) -> R + 'static,
{
    type Result = R;
    type Part = Vec<V>;

    fn add<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, value: V) -> Result<bool> {
        self.append(ctx, vec![value]).map(|()| true)
    }

    fn take<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>) -> Result<Option<Vec<V>>> {
        let taken = self.records(ctx, true)?;
        Ok((!taken.is_empty()).then_some(taken))
    }

    fn absorb<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>, part: Vec<V>) -> Result<()> {
        self.append(ctx, part)
    }

    fn result<O, S>(
        &mut self,
        ctx: Ctx<'_, '_, K, O, S>,
        key: &K,
        window: &Window,
    ) -> Result<Option<R>> {
        let records = self.records(ctx, false)?;
        let f = &mut self.function;
        Ok((!records.is_empty()).then(|| f(key, window, &records)))
    }

    fn clear<O, S>(&mut self, ctx: Ctx<'_, '_, K, O, S>) -> Result<()> {
        self.records(ctx, true).map(drop)
    }
}

/// The keyed process function behind every windowed stream.
struct WindowOperator<C> {
    assigner: WindowAssigner,
    /// Allowed lateness, ms.
    lateness: u64,
    contents: C,
    /// Per key, the live sessions (merging assigners only).
    sessions: ValueStateDescriptor<Vec<Window>>,
    scratch: Vec<Window>,
}

impl<C> WindowOperator<C> {
    /// When a window's state is removed.
    fn cleanup_time(&self, w: &Window) -> u64 {
        w.end.saturating_add(self.lateness)
    }

    /// Whether a window can take no more records: its state is (or is
    /// about to be) removed.
    fn is_done(&self, w: &Window, watermark: u64) -> bool {
        self.cleanup_time(w) <= watermark
    }
}

impl<C> WindowOperator<C> {
    /// Emits the window's result; the context is in its namespace.
    fn fire<K: Key, V, R: Data>(
        &mut self,
        ctx: Ctx<'_, '_, K, WindowResult<K, R>, V>,
        w: &Window,
    ) -> Result<()>
    where
        C: Contents<K, V, Result = R>,
    {
        let key = ctx.key().clone();
        if let Some(result) = self.contents.result(ctx, &key, w)? {
            ctx.output_at(
                w.max_timestamp(),
                WindowResult {
                    key,
                    start: w.start,
                    end: w.end,
                    result,
                },
            );
        }
        Ok(())
    }

    /// Adds a record to a window that is not done and fires it at once if
    /// it has fired before, or has it fire at its end; the context ends in
    /// the window's namespace.
    fn add<K: Key, V, R: Data>(
        &mut self,
        ctx: Ctx<'_, '_, K, WindowResult<K, R>, V>,
        w: &Window,
        value: V,
        merged: bool,
    ) -> Result<()>
    where
        C: Contents<K, V, Result = R>,
    {
        ctx.set_namespace(Some(w))?;
        // Timers come with a window's first record (a merged session's are new).
        let fresh = self.contents.add(ctx, value)? || merged;
        if w.end <= ctx.watermark() {
            self.fire(ctx, w)?;
        } else if fresh {
            ctx.register_event_timer(w.end);
        }
        if fresh {
            ctx.register_event_timer(self.cleanup_time(w));
        }
        Ok(())
    }

    /// A record no window took: to the late output if it is late (it may
    /// instead fall between two hopping windows).
    fn late<K, O, V>(&self, ctx: Ctx<'_, '_, K, O, V>, value: V) {
        if ctx.time().saturating_add(self.lateness) < ctx.watermark() {
            ctx.side_output(value);
        }
    }

    fn add_to_windows<K: Key, V: Data, R: Data>(
        &mut self,
        ctx: Ctx<'_, '_, K, WindowResult<K, R>, V>,
        value: V,
    ) -> Result<()>
    where
        C: Contents<K, V, Result = R>,
    {
        let mut windows = std::mem::take(&mut self.scratch);
        windows.clear();
        self.assigner.assign(ctx.time(), &mut windows);
        let watermark = ctx.watermark();
        windows.retain(|w| !self.is_done(w, watermark));
        let result = match windows.split_last() {
            None => {
                self.late(ctx, value);
                Ok(())
            }
            Some((last, rest)) => rest
                .iter()
                .try_for_each(|w| self.add(ctx, w, value.clone(), false))
                .and_then(|()| self.add(ctx, last, value, false)),
        };
        self.scratch = windows;
        result
    }

    fn add_to_session<K: Key, V: Data, R: Data>(
        &mut self,
        ctx: Ctx<'_, '_, K, WindowResult<K, R>, V>,
        value: V,
    ) -> Result<()>
    where
        C: Contents<K, V, Result = R>,
    {
        self.scratch.clear();
        self.assigner.assign(ctx.time(), &mut self.scratch);
        let Some(&new) = self.scratch.first() else {
            return Ok(());
        };
        ctx.set_namespace::<Window>(None)?;
        let sessions = ctx.value(&self.sessions)?.get()?.unwrap_or_default();
        let (mut merging, mut live): (Vec<Window>, Vec<Window>) =
            sessions.into_iter().partition(|s| s.intersects(&new));
        let merged = merging.iter().fold(new, |a, s| a.cover(s));
        if self.is_done(&merged, ctx.watermark()) {
            self.late(ctx, value);
            return Ok(());
        }
        live.push(merged);
        live.sort_unstable();
        ctx.value(&self.sessions)?.set(live)?;
        merging.sort_unstable();
        for s in merging.iter().filter(|s| **s != merged) {
            ctx.set_namespace(Some(s))?;
            let part = self.contents.take(ctx)?;
            ctx.delete_event_timer(s.end);
            ctx.delete_event_timer(self.cleanup_time(s));
            if let Some(part) = part {
                ctx.set_namespace(Some(&merged))?;
                self.contents.absorb(ctx, part)?;
            }
        }
        self.add(ctx, &merged, value, true)
    }
}

impl<K, V, C> KeyedProcessFunction<K, V> for WindowOperator<C>
where
    K: Key,
    V: Data,
    C: Contents<K, V>,
{
    type Out = WindowResult<K, C::Result>;
    type Side = V;

    fn on_record(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, Self::Out, V>,
        value: V,
    ) -> Result<()> {
        if self.assigner.is_merging() {
            self.add_to_session(ctx, value)
        } else {
            self.add_to_windows(ctx, value)
        }
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessingContext<'_, K, Self::Out, V>,
        timer: Timer,
    ) -> Result<()> {
        if timer.domain != TimeDomain::EventTime {
            return Ok(());
        }
        let w: Window = postcard::from_bytes(&timer.namespace)
            .map_err(|e| Error::codec("window timer namespace", e))?;
        if timer.time == w.end {
            self.fire(ctx, &w)?;
        }
        if timer.time == self.cleanup_time(&w) {
            self.contents.clear(ctx)?;
            if self.assigner.is_merging() {
                ctx.set_namespace::<Window>(None)?;
                ctx.value(&self.sessions)?.update(|sessions| {
                    let mut sessions = sessions.unwrap_or_default();
                    sessions.retain(|s| *s != w);
                    (!sessions.is_empty()).then_some(sessions)
                })?;
            }
        }
        Ok(())
    }
}
