//! Streams of a job and the operators on them.

use std::cell::RefCell;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::data::{Data, Item, Key};
use crate::error::{Error, Result};
use crate::keys::key_group;
use crate::operators::keyed::{Either, KeyedProcessFunction, keyed_operator};
use crate::sink::Sink;
use crate::state::{AggregateFunction, AggregatingStateDescriptor, ValueStateDescriptor};
use crate::worker::{OnCommit, Shared};

/// A stream of records of type `D`.
pub struct DataStream<'s, D> {
    pub(crate) inner: StreamVec<'s, u64, Item<D>>,
    pub(crate) shared: Shared,
}

/// A copy of the stream: every record goes to both (fan-out).
impl<D: Data> Clone for DataStream<'_, D> {
    fn clone(&self) -> Self {
        DataStream {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<D> std::fmt::Debug for DataStream<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStream").finish_non_exhaustive()
    }
}

/// A stream of `(key, value)` records, partitioned by key: operators on it
/// see each key on one worker, with the key's state.
pub struct KeyedStream<'s, K, V> {
    pub(crate) inner: StreamVec<'s, u64, Item<(K, V)>>,
    pub(crate) shared: Shared,
    /// Upstream operator instances whose watermarks combine.
    pub(crate) upstreams: usize,
}

impl<K, V> std::fmt::Debug for KeyedStream<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStream").finish_non_exhaustive()
    }
}

/// Applies `f` to each record of a stream on the same worker; watermarks
/// pass through.
fn per_record<'s, D: Data, D2: Data>(
    stream: StreamVec<'s, u64, Item<D>>,
    name: &str,
    mut f: impl FnMut(u64, D, &mut dyn FnMut(u64, D2)) + 'static,
) -> StreamVec<'s, u64, Item<D2>> {
    stream.unary::<CapacityContainerBuilder<Vec<Item<D2>>>, _, _, _>(
        Pipeline,
        name,
        move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for item in batch.drain(..) {
                            match item {
                                Item::Rec { time, kg, data } => {
                                    f(time, data, &mut |t, d| {
                                        session.give(Item::Rec {
                                            time: t,
                                            kg,
                                            data: d,
                                        })
                                    });
                                }
                                Item::Wm { to, from, wm } => {
                                    session.give(Item::Wm { to, from, wm })
                                }
                            }
                        }
                    }
                });
            }
        },
    )
}

impl<'s, D: Data> DataStream<'s, D> {
    /// Each record turned into another.
    pub fn map<D2: Data>(self, mut f: impl FnMut(D) -> D2 + 'static) -> DataStream<'s, D2> {
        DataStream {
            inner: per_record(self.inner, "Map", move |t, d, emit| emit(t, f(d))),
            shared: self.shared,
        }
    }

    /// Only the records `f` keeps.
    pub fn filter(self, mut f: impl FnMut(&D) -> bool + 'static) -> DataStream<'s, D> {
        DataStream {
            inner: per_record(self.inner, "Filter", move |t, d, emit| {
                if f(&d) {
                    emit(t, d)
                }
            }),
            shared: self.shared,
        }
    }

    /// Each record turned into any number of records.
    pub fn flat_map<D2: Data, I: IntoIterator<Item = D2>>(
        self,
        mut f: impl FnMut(D) -> I + 'static,
    ) -> DataStream<'s, D2> {
        DataStream {
            inner: per_record(self.inner, "FlatMap", move |t, d, emit| {
                for d2 in f(d) {
                    emit(t, d2);
                }
            }),
            shared: self.shared,
        }
    }

    /// Calls `f` on each record, passing it on.
    pub fn inspect(self, mut f: impl FnMut(&D) + 'static) -> DataStream<'s, D> {
        DataStream {
            inner: per_record(self.inner, "Inspect", move |t, d, emit| {
                f(&d);
                emit(t, d)
            }),
            shared: self.shared,
        }
    }

    /// Sets each record's event time (ms) to `f(record)`, and replaces the
    /// stream's watermarks with ones `max_out_of_orderness` behind the
    /// largest new time this operator has seen on its worker (Flink's
    /// `assignTimestampsAndWatermarks`). The largest time is recorded in
    /// every checkpoint (under `name`, unique in the job), so a replay after
    /// recovery sees the same watermarks.
    pub fn with_event_time(
        self,
        name: &str,
        mut f: impl FnMut(&D) -> u64 + 'static,
        max_out_of_orderness: std::time::Duration,
    ) -> DataStream<'s, D> {
        let bound = u64::try_from(max_out_of_orderness.as_millis()).unwrap_or(u64::MAX);
        let key = format!("watermark/{name}");
        let mut max_time = {
            let mut s = self.shared.borrow_mut();
            if let Err(e) = s.register_name("event-time operator", name) {
                s.fail(e);
            }
            let restored = match s.restored_number(&key) {
                Ok(t) => t.unwrap_or(0),
                Err(e) => {
                    s.fail(e);
                    0
                }
            };
            // Carried into every checkpoint, records or not.
            let first = s.first_epoch;
            s.record_from(first, &key, restored);
            restored
        };
        let shared = self.shared.clone();
        let inner = self
            .inner
            .unary::<CapacityContainerBuilder<Vec<Item<D>>>, _, _, _>(
                Pipeline,
                "EventTime",
                move |_cap, _info| {
                    move |input, output| {
                        input.for_each_stamp(|cap, data| {
                            let Some(&epoch) = cap.least() else { return };
                            let before = max_time;
                            let mut session = output.session(&cap);
                            for batch in data {
                                for item in batch.drain(..) {
                                    match item {
                                        Item::Rec { kg, data, .. } => {
                                            let t = f(&data);
                                            max_time = max_time.max(t);
                                            session.give(Item::Rec { time: t, kg, data });
                                        }
                                        Item::Wm { to, from, wm } => {
                                            // The end of the input passes
                                            // through; otherwise the new times
                                            // decide.
                                            let wm = if wm == u64::MAX {
                                                u64::MAX
                                            } else {
                                                max_time.saturating_sub(bound)
                                            };
                                            session.give(Item::Wm { to, from, wm });
                                        }
                                    }
                                }
                            }
                            if max_time != before {
                                shared.borrow_mut().record_from(epoch, &key, max_time);
                            }
                        });
                    }
                },
            );
        DataStream {
            inner,
            shared: self.shared,
        }
    }

    /// Partitions the stream by `key(record)`: the records of one key go to
    /// the one worker that owns the key's group.
    pub fn key_by<K: Key>(self, mut key: impl FnMut(&D) -> K + 'static) -> KeyedStream<'s, K, D> {
        let (key_groups, peers) = {
            let s = self.shared.borrow();
            (s.key_groups, s.peers)
        };
        let mut scratch = Vec::new();
        let failed = Rc::new(RefCell::new(None::<Error>));
        let fail_slot = Rc::clone(&failed);
        let shared = self.shared.clone();
        let inner = self
            .inner
            .unary::<CapacityContainerBuilder<Vec<Item<(K, D)>>>, _, _, _>(
                Pipeline,
                "KeyBy",
                move |_cap, _info| {
                    move |input, output| {
                        input.for_each_stamp(|cap, data| {
                            let mut session = output.session(&cap);
                            for batch in data {
                                for item in batch.drain(..) {
                                    match item {
                                        Item::Rec { time, data, .. } => {
                                            let k = key(&data);
                                            scratch.clear();
                                            if let Err(e) = postcard::to_io(&k, &mut scratch) {
                                                *fail_slot.borrow_mut() =
                                                    Some(Error::codec("key", e));
                                                continue;
                                            }
                                            let kg = key_group(&scratch, key_groups);
                                            session.give(Item::Rec {
                                                time,
                                                kg,
                                                data: (k, data),
                                            });
                                        }
                                        Item::Wm { to, from, wm } => {
                                            session.give(Item::Wm { to, from, wm })
                                        }
                                    }
                                }
                            }
                        });
                        if let Some(e) = fail_slot.borrow_mut().take() {
                            shared.borrow_mut().fail(e);
                        }
                    }
                },
            );
        drop(failed);
        KeyedStream {
            inner,
            shared: self.shared,
            upstreams: peers,
        }
    }

    /// Writes the stream to `sink`, exactly once: each epoch's records are
    /// written when the epoch is complete and made visible when the job
    /// commits it.
    pub fn sink<S: Sink<D>>(self, name: &str, mut sink: S) -> Result<()> {
        let (job, index, peers, committed, rolled_back, pending_rollback, first_epoch) = {
            let s = self.shared.borrow();
            (
                s.job_id.clone(),
                s.index,
                s.peers,
                s.committed,
                s.rolled_back.clone(),
                s.pending_rollback,
                s.first_epoch,
            )
        };
        let fail = |e: Error| Error::Sink {
            sink: name.to_string(),
            reason: e.to_string(),
        };
        sink.set_workers(peers);
        sink.set_job(&crate::sink::SinkJob {
            id: job,
            has_history: first_epoch > 0,
        });
        sink.open(index, committed).map_err(fail)?;
        // Rollbacks earlier runs committed, in case one did not finish.
        for (first, last) in rolled_back {
            sink.roll_back(first..=last).map_err(fail)?;
        }
        let driver = Rc::new(RefCell::new(SinkDriver {
            sink,
            written: Vec::new(),
            committed,
            pending_rollback,
            first_epoch,
            retired: None,
            name: name.to_string(),
            _d: std::marker::PhantomData,
        }));
        let shared = self.shared.clone();
        let scope = self.inner.scope();
        let name_owned = name.to_string();
        let mut builder = OperatorBuilder::new(name_owned, scope);
        let mut input = builder.new_input(self.inner, Pipeline);
        let info = builder.operator_info();
        let activator = scope.activator_for(info.address);
        shared.borrow_mut().listeners.push(activator);
        shared
            .borrow_mut()
            .on_commit
            .push(Rc::clone(&driver) as Rc<RefCell<dyn OnCommit>>);
        shared.borrow_mut().register_sink();
        let first_epoch = shared.borrow().next_cut;
        builder.build_reschedule(move |_caps| {
            // One past the newest epoch seen (records or watermarks): once
            // the input ends, every epoch before it is sealed.
            let mut seen_upto = first_epoch;
            let mut batch: Vec<D> = Vec::new();
            let mut next_seal = first_epoch;
            move |frontiers| {
                let mut d = driver.borrow_mut();
                let mut s = shared.borrow_mut();
                let mut failed = None;
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    seen_upto = seen_upto.max(epoch + 1);
                    for records in data {
                        for item in records.drain(..) {
                            if let Item::Rec { data, .. } = item {
                                batch.push(data);
                            }
                        }
                    }
                    if failed.is_some() {
                        batch.clear();
                        return;
                    }
                    if batch.is_empty() {
                        // Watermarks only: no output for this epoch here.
                        return;
                    }
                    s.records_out += batch.len() as u64;
                    if let Err(e) = d.append(epoch, std::mem::take(&mut batch)) {
                        failed = Some(e);
                    }
                });
                if let Some(e) = failed {
                    s.fail(e);
                    return false;
                }
                // Seal every epoch the frontier has passed, in order (an
                // epoch with no record here still gets sealed, so its
                // commit has a file to publish).
                let frontier = &frontiers[0];
                let first = next_seal;
                let upto = match frontier.frontier().first() {
                    Some(&f) => f,
                    None => seen_upto.max(first),
                };
                let mut epoch = first;
                while epoch < upto {
                    if let Err(e) = d.seal(epoch) {
                        s.fail(e);
                        return false;
                    }
                    // Sealed before the epoch is cut: a commit never names
                    // an epoch whose output a failure could still lose.
                    s.sink_done(epoch);
                    epoch += 1;
                }
                next_seal = epoch;
                if let Err(e) = d.commit_to(s.committed) {
                    s.fail(e);
                    return false;
                }
                if let Some(oldest) = s.oldest_kept()
                    && d.retired < Some(oldest)
                {
                    d.retired = Some(oldest);
                    if let Err(e) = d.sink.retire(oldest) {
                        s.fail(Error::Sink {
                            sink: d.name.clone(),
                            reason: e.to_string(),
                        });
                        return false;
                    }
                }
                // Stay until everything written is committed or the job is
                // over.
                !d.written.is_empty() && s.error.is_none() && !s.finished
            }
        });
        Ok(())
    }
}

/// A sink between its writes and its commits.
struct SinkDriver<S, D> {
    sink: S,
    written: Vec<u64>,
    committed: Option<u64>,
    /// Epochs this run rolls back, withdrawn before its first commit.
    pending_rollback: Option<(u64, u64)>,
    /// This run's first epoch.
    first_epoch: u64,
    /// The last epoch the sink was told can no longer be rolled back.
    retired: Option<u64>,
    name: String,
    #[allow(dead_code)]
    _d: std::marker::PhantomData<D>,
}

impl<S: Sink<D>, D: Data> SinkDriver<S, D> {
    fn error(&self, e: Error) -> Error {
        Error::Sink {
            sink: self.name.clone(),
            reason: e.to_string(),
        }
    }

    fn append(&mut self, epoch: u64, records: Vec<D>) -> Result<()> {
        self.sink
            .write_epoch(epoch, records)
            .map_err(|e| self.error(e))
    }

    fn seal(&mut self, epoch: u64) -> Result<()> {
        self.sink.seal_epoch(epoch).map_err(|e| self.error(e))?;
        self.written.push(epoch);
        Ok(())
    }
}

impl<S: Sink<D>, D: Data> OnCommit for SinkDriver<S, D> {
    fn commit_to(&mut self, committed: Option<u64>) -> Result<()> {
        let Some(c) = committed else { return Ok(()) };
        if c >= self.first_epoch
            && let Some((first, last)) = self.pending_rollback.take()
        {
            self.sink.roll_back(first..=last).map_err(|e| Error::Sink {
                sink: self.name.clone(),
                reason: e.to_string(),
            })?;
        }
        if self.written.first().is_some_and(|&e| e <= c) {
            self.sink.commit(c).map_err(|e| Error::Sink {
                sink: self.name.clone(),
                reason: e.to_string(),
            })?;
            self.written.retain(|&e| e > c);
        }
        self.committed = Some(c);
        Ok(())
    }
}

/// Splits a keyed operator's output into its main and side streams;
/// watermarks go to both.
fn split<'s, O: Data, S: Data>(
    stream: StreamVec<'s, u64, Item<Either<O, S>>>,
) -> (StreamVec<'s, u64, Item<O>>, StreamVec<'s, u64, Item<S>>) {
    let scope = stream.scope();
    let mut builder = OperatorBuilder::new("Split".to_owned(), scope);
    let mut input = builder.new_input(stream, Pipeline);
    let (main_out, main) = builder.new_output::<Vec<Item<O>>>();
    let (side_out, side) = builder.new_output::<Vec<Item<S>>>();
    let mut main_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Item<O>>>>::from(main_out);
    let mut side_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Item<S>>>>::from(side_out);
    builder.build(move |_caps| {
        move |_frontiers| {
            let mut main_handle = main_out.activate();
            let mut side_handle = side_out.activate();
            input.for_each_stamp(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                let main_cap: Capability<u64> = cap.delayed(&epoch, 0);
                let side_cap: Capability<u64> = cap.delayed(&epoch, 1);
                let mut m = main_handle.session(&main_cap);
                let mut s = side_handle.session(&side_cap);
                for batch in data {
                    for item in batch.drain(..) {
                        match item {
                            Item::Rec {
                                time,
                                kg,
                                data: Either::Main(d),
                            } => m.give(Item::Rec { time, kg, data: d }),
                            Item::Rec {
                                time,
                                kg,
                                data: Either::Side(d),
                            } => s.give(Item::Rec { time, kg, data: d }),
                            Item::Wm { to, from, wm } => {
                                m.give(Item::Wm { to, from, wm });
                                s.give(Item::Wm { to, from, wm });
                            }
                        }
                    }
                }
            });
        }
    });
    (main, side)
}

/// Keeps the main output of a keyed operator.
fn main_only<'s, O: Data, S: Data>(
    stream: StreamVec<'s, u64, Item<Either<O, S>>>,
) -> StreamVec<'s, u64, Item<O>> {
    per_record(stream, "Main", |t, d, emit| {
        if let Either::Main(d) = d {
            emit(t, d)
        }
    })
}

impl<'s, K: Key, V: Data> KeyedStream<'s, K, V> {
    /// Runs `function` on every record of every key, with the key's state
    /// and timers (Flink's `KeyedProcessFunction`); returns its main output.
    pub fn process<F>(self, name: &str, function: F) -> DataStream<'s, F::Out>
    where
        F: KeyedProcessFunction<K, V>,
    {
        let out = keyed_operator(
            self.inner,
            name,
            self.upstreams,
            function,
            self.shared.clone(),
        );
        DataStream {
            inner: main_only(out),
            shared: self.shared,
        }
    }

    /// Like [`KeyedStream::process`], with the side output too.
    pub fn process_with_side<F>(
        self,
        name: &str,
        function: F,
    ) -> (DataStream<'s, F::Out>, DataStream<'s, F::Side>)
    where
        F: KeyedProcessFunction<K, V>,
    {
        let out = keyed_operator(
            self.inner,
            name,
            self.upstreams,
            function,
            self.shared.clone(),
        );
        let (main, side) = split(out);
        (
            DataStream {
                inner: main,
                shared: self.shared.clone(),
            },
            DataStream {
                inner: side,
                shared: self.shared,
            },
        )
    }

    /// Each value turned into another, on the worker it is on: the stream
    /// stays partitioned by the same key.
    pub fn map_values<V2: Data>(
        self,
        mut f: impl FnMut(V) -> V2 + 'static,
    ) -> KeyedStream<'s, K, V2> {
        KeyedStream {
            inner: per_record(self.inner, "MapValues", move |t, (k, v), emit| {
                emit(t, (k, f(v)))
            }),
            shared: self.shared,
            upstreams: self.upstreams,
        }
    }

    /// A running reduce per key: emits `(key, reduced so far)` for each
    /// record.
    pub fn reduce(
        self,
        name: &str,
        reduce: impl Fn(&V, V) -> V + 'static,
    ) -> DataStream<'s, (K, V)> {
        self.process(
            name,
            Reduce {
                state: ValueStateDescriptor::new("reduced"),
                reduce,
            },
        )
    }

    /// A running aggregate per key: emits `(key, result so far)` for each
    /// record.
    pub fn aggregate<F>(self, name: &str, function: F) -> DataStream<'s, (K, F::Out)>
    where
        F: AggregateFunction<In = V>,
        F::Out: Data,
    {
        self.process(
            name,
            Aggregate {
                state: AggregatingStateDescriptor::new("aggregate", function),
            },
        )
    }

    /// A running count per key: emits `(key, count so far)` for each record.
    pub fn count(self, name: &str) -> DataStream<'s, (K, u64)> {
        self.process(
            name,
            Count {
                state: ValueStateDescriptor::new("count"),
            },
        )
    }
}

struct Reduce<V, R> {
    state: ValueStateDescriptor<V>,
    reduce: R,
}

impl<K: Key, V: Data, R: Fn(&V, V) -> V + 'static> KeyedProcessFunction<K, V> for Reduce<V, R> {
    type Out = (K, V);
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut crate::ProcessingContext<'_, K, (K, V), ()>,
        value: V,
    ) -> Result<()> {
        let reduce = &self.reduce;
        let mut out = None;
        ctx.value(&self.state)?.update(|current| {
            let next = match current {
                Some(c) => reduce(&c, value),
                None => value,
            };
            out = Some(next.clone());
            Some(next)
        })?;
        if let Some(v) = out {
            let key = ctx.key().clone();
            ctx.output((key, v));
        }
        Ok(())
    }
}

struct Aggregate<F: AggregateFunction> {
    state: AggregatingStateDescriptor<F>,
}

impl<K: Key, F: AggregateFunction> KeyedProcessFunction<K, F::In> for Aggregate<F>
where
    F::In: Data,
    F::Out: Data,
{
    type Out = (K, F::Out);
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut crate::ProcessingContext<'_, K, Self::Out, ()>,
        value: F::In,
    ) -> Result<()> {
        let result = {
            let mut agg = ctx.aggregating(&self.state)?;
            agg.add(value)?;
            agg.get()?
        };
        if let Some(r) = result {
            let key = ctx.key().clone();
            ctx.output((key, r));
        }
        Ok(())
    }
}

struct Count {
    state: ValueStateDescriptor<u64>,
}

impl<K: Key, V: Data> KeyedProcessFunction<K, V> for Count {
    type Out = (K, u64);
    type Side = ();

    fn on_record(
        &mut self,
        ctx: &mut crate::ProcessingContext<'_, K, (K, u64), ()>,
        _value: V,
    ) -> Result<()> {
        let mut n = 0;
        ctx.value(&self.state)?.update(|c| {
            n = c.unwrap_or(0) + 1;
            Some(n)
        })?;
        let key = ctx.key().clone();
        ctx.output((key, n));
        Ok(())
    }
}
