//! The source operator: reads a worker's partitions of one source, closes
//! epochs (offsets, event-time high marks, watermarks) and sends one token
//! per epoch to the acks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gress_checkpoint::Metadata;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, StreamVec};

use crate::commit::Token;
use crate::config::{EpochPolicy, JobConfig};
use crate::control::Mode;
use crate::data::Item;
use crate::error::{Error, Result};
use crate::source::{PartitionReader, Poll};
use crate::worker::{OnCommit, Shared};

/// A record's event time, and how far watermarks stay behind.
pub(crate) type EventTime<T> = (Box<dyn Fn(&T) -> u64>, u64);

pub(crate) struct PartitionState<T> {
    pub(crate) partition: usize,
    pub(crate) reader: Box<dyn PartitionReader<T>>,
    pub(crate) ended: bool,
    pub(crate) max_time: u64,
    pub(crate) read_in_epoch: u64,
    /// When it last had records (or was opened).
    pub(crate) last_data: Instant,
    /// Nothing to read for longer than the idle timeout.
    pub(crate) idle: bool,
}

impl<T> PartitionState<T> {
    pub(crate) fn new(
        partition: usize,
        reader: Box<dyn PartitionReader<T>>,
        max_time: u64,
    ) -> Self {
        PartitionState {
            partition,
            reader,
            ended: false,
            max_time,
            read_in_epoch: 0,
            last_data: Instant::now(),
            idle: false,
        }
    }
}

/// How long an epoch may stay open, held by partitions with nothing to
/// read, before a warning says so.
const STUCK_WARNING: Duration = Duration::from_secs(30);

/// A worker's partitions of one source, and where each stood at the end
/// of every closed epoch not yet known to be committed.
struct SourceParts<T> {
    parts: Vec<PartitionState<T>>,
    /// Per closed epoch, oldest first: each partition's offset.
    closed: VecDeque<(u64, Vec<u64>)>,
}

impl<T: 'static> SourceParts<T> {
    /// Tells each reader where the newest committed epoch left it.
    fn report(&mut self, committed: Option<u64>) {
        let Some(c) = committed else { return };
        let mut newest = None;
        while self.closed.front().is_some_and(|(e, _)| *e <= c) {
            newest = self.closed.pop_front().map(|(_, offsets)| offsets);
        }
        for (part, offset) in self.parts.iter_mut().zip(newest.unwrap_or_default()) {
            part.reader.committed(offset);
        }
    }
}

impl<T: 'static> OnCommit for SourceParts<T> {
    fn commit_to(&mut self, committed: Option<u64>) -> Result<()> {
        self.report(committed);
        Ok(())
    }
}

/// Records read per activation at most, so other operators get their turn.
const BATCH: usize = 4096;

/// The source operator: records and watermarks out of one output, and one
/// token per epoch (for the acks) out of the other.
pub(crate) fn source_operator<'s, T: crate::Data>(
    scope: Scope<'s, u64>,
    name: &str,
    parts: Vec<PartitionState<T>>,
    time: Option<EventTime<T>>,
    shared: Shared,
    config: &JobConfig,
    first_epoch: u64,
) -> (StreamVec<'s, u64, Item<T>>, StreamVec<'s, u64, Token>) {
    let mut builder = OperatorBuilder::new(format!("Source({name})"), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    let (data_out, data) = builder.new_output::<Vec<Item<T>>>();
    let (token_out, tokens) = builder.new_output::<Vec<Token>>();
    let mut data_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Item<T>>>>::from(data_out);
    let mut token_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Token>>>::from(token_out);
    let policy = config.epoch;
    let in_flight = config.max_epochs_in_flight;
    let idle_timeout = config.idle_timeout;
    let max_epoch = config.max_epoch_duration;
    let epoch_records = config.epoch_records_bound();
    let control = Arc::clone(&config.control);
    let name = name.to_string();
    let state = Rc::new(RefCell::new(SourceParts {
        parts,
        closed: VecDeque::new(),
    }));
    {
        let mut s = shared.borrow_mut();
        s.listeners.push(activator.clone());
        s.on_commit
            .push(Rc::clone(&state) as Rc<RefCell<dyn OnCommit>>);
    }
    builder.build(move |mut caps: Vec<Capability<u64>>| {
        let mut token_cap = caps.pop();
        let mut data_cap = caps.pop();
        for cap in data_cap.iter_mut().chain(token_cap.iter_mut()) {
            cap.downgrade(&first_epoch);
        }
        let mut epoch_started = Instant::now();
        let mut warned = false;
        // The last watermark sent: an idle partition that has records again
        // never moves it back.
        let mut last_wm = 0u64;
        let mut buf: Vec<T> = Vec::new();
        activator.activate();
        move |_frontiers| {
            let (Some(dcap), Some(tcap)) = (&mut data_cap, &mut token_cap) else {
                return;
            };
            let epoch = *dcap.time();
            let (error, finished, settled, index, peers, committed) = {
                let s = shared.borrow();
                let c = s.committed;
                (
                    s.error.is_some(),
                    s.finished,
                    s.settled,
                    s.index,
                    s.peers,
                    c,
                )
            };
            let mut guard = state.borrow_mut();
            guard.report(committed);
            let SourceParts { parts, closed } = &mut *guard;
            let all_ended = parts.iter().all(|p| p.ended);
            // Asked to stop: the epoch being read is the last (and so is
            // each one this worker opens until the last is committed).
            let mode = control.mode();
            let stopping = mode == Mode::Stop;
            if error || (finished && (all_ended || mode != Mode::Run)) {
                data_cap = None;
                token_cap = None;
                return;
            }
            if epoch >= settled + in_flight {
                // Backpressure: the listener wakes this source.
                return;
            }
            let mut out = data_out.activate();
            let mut session = out.session(&*dcap);
            let mut idle = true;
            let mut failed = None;
            let mut read = 0;
            let now = Instant::now();
            // Records this worker's partitions read in the epoch: an
            // `Interval` epoch closes early at `epoch_records`.
            let mut in_epoch: u64 = parts.iter().map(|p| p.read_in_epoch).sum();
            for part in parts.iter_mut().filter(|p| !p.ended && !stopping) {
                let want = match policy {
                    EpochPolicy::Records(n) => {
                        n.saturating_sub(part.read_in_epoch).min(BATCH as u64)
                    }
                    EpochPolicy::Interval(_) => epoch_records
                        .map_or(BATCH as u64, |n| n.saturating_sub(in_epoch))
                        .min(BATCH as u64),
                };
                if want == 0 {
                    continue;
                }
                buf.clear();
                match part.reader.poll(want as usize, &mut buf) {
                    Ok(Poll::End) => part.ended = true,
                    Ok(Poll::Ready) => idle = false,
                    Ok(Poll::Idle) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                // Draining: a partition with nothing more to read now has
                // ended its input.
                if mode == Mode::Drain && buf.is_empty() {
                    part.ended = true;
                }
                if buf.is_empty() {
                    part.idle = idle_timeout
                        .is_some_and(|t| now.saturating_duration_since(part.last_data) >= t);
                } else {
                    part.last_data = now;
                    part.idle = false;
                }
                part.read_in_epoch += buf.len() as u64;
                in_epoch += buf.len() as u64;
                read += buf.len() as u64;
                for record in buf.drain(..) {
                    let t = match &time {
                        Some((f, _)) => {
                            let t = f(&record);
                            part.max_time = part.max_time.max(t);
                            t
                        }
                        None => 0,
                    };
                    session.give(Item::Rec {
                        time: t,
                        kg: 0,
                        data: record,
                    });
                }
            }
            drop(session);
            if read > 0 {
                shared.borrow_mut().records_read += read;
            }
            if let Some(e) = failed {
                shared.borrow_mut().fail(Error::Source {
                    source_name: name.clone(),
                    reason: e.to_string(),
                });
                drop(out);
                data_cap = None;
                token_cap = None;
                return;
            }
            let open_for = epoch_started.elapsed();
            let epoch_over = stopping
                || parts.iter().all(|p| p.ended)
                || match policy {
                    EpochPolicy::Records(n) => {
                        // Every partition has its count, ended or is idle,
                        // and the epoch has records; or it has been open
                        // for the longest an epoch may be.
                        (parts
                            .iter()
                            .all(|p| p.ended || p.idle || p.read_in_epoch >= n)
                            && parts.iter().any(|p| p.read_in_epoch > 0))
                            || max_epoch.is_some_and(|d| open_for >= d)
                    }
                    EpochPolicy::Interval(d) => {
                        open_for >= d || epoch_records.is_some_and(|n| in_epoch >= n)
                    }
                };
            if !epoch_over {
                if let EpochPolicy::Records(n) = policy
                    && !warned
                    && open_for >= STUCK_WARNING
                {
                    let waiting: Vec<usize> = parts
                        .iter()
                        .filter(|p| !p.ended && !p.idle && p.read_in_epoch < n)
                        .map(|p| p.partition)
                        .collect();
                    tracing::warn!(
                        source = %name,
                        epoch,
                        partitions = ?waiting,
                        open_s = open_for.as_secs(),
                        "an epoch is held open by partitions with fewer records than the epoch's \
                         count; set JobConfig::idle_timeout or max_epoch_duration if they can idle"
                    );
                    warned = true;
                }
                drop(out);
                if idle {
                    activator.activate_after(Duration::from_millis(5));
                } else {
                    activator.activate();
                }
                return;
            }
            // Close the epoch: watermarks to every worker, offsets, token.
            // Idle partitions hold the watermark back no more; with every
            // partition idle, it stays where it was.
            let wm = if parts.iter().all(|p| p.ended) {
                u64::MAX
            } else {
                parts
                    .iter()
                    .filter(|p| !p.ended && !p.idle)
                    .map(|p| match &time {
                        Some((_, bound)) => p.max_time.saturating_sub(*bound),
                        None => 0,
                    })
                    .min()
                    .unwrap_or(last_wm)
                    .max(last_wm)
            };
            last_wm = wm;
            {
                let mut session = out.session(&*dcap);
                for to in 0..peers as u32 {
                    session.give(Item::Wm {
                        to,
                        from: index as u32,
                        wm,
                    });
                }
            }
            drop(out);
            // Where each partition stands, and its event-time high mark, so
            // that a replay after recovery emits the same watermarks.
            let offsets: Metadata = parts
                .iter()
                .flat_map(|p| {
                    [
                        (
                            format!("offset/{name}/{}", p.partition),
                            p.reader.offset().to_string(),
                        ),
                        (
                            format!("maxtime/{name}/{}", p.partition),
                            p.max_time.to_string(),
                        ),
                    ]
                })
                .collect();
            closed.push_back((epoch, parts.iter().map(|p| p.reader.offset()).collect()));
            shared.borrow_mut().source_done(epoch, offsets);
            token_out.activate().session(&*tcap).give(Token {
                finished: stopping || parts.iter().all(|p| p.ended),
            });
            for p in parts.iter_mut() {
                p.read_in_epoch = 0;
            }
            dcap.downgrade(&(epoch + 1));
            tcap.downgrade(&(epoch + 1));
            epoch_started = Instant::now();
            warned = false;
            activator.activate();
        }
    });
    (data, tokens)
}
