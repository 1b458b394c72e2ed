//! Agreement between the workers of a job, in every process, before its
//! dataflow runs: each worker gives a value and receives every worker's.
//!
//! Recovery uses it to settle, round after round, on one commit that every
//! worker could restore. Each round is a small dataflow of its own; every
//! worker takes part in every round (a worker that failed says so in its
//! value rather than leaving), so all build the same dataflows in the same
//! order.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use timely::dataflow::operators::{Exchange, Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::data::Data;
use crate::error::{Error, Result};

/// How long a round goes on after a worker of this process failed.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// Every worker's `value`, by worker index. Fails only if a worker of this
/// process stopped (`abort`) while waiting.
pub(crate) fn exchange_all<T: Data>(
    worker: &mut timely::worker::Worker,
    value: T,
    abort: &AtomicBool,
) -> Result<Vec<T>> {
    let peers = worker.peers();
    let index = worker.index() as u32;
    let mut input = InputHandle::new();
    let probe = ProbeHandle::new();
    let got: Rc<RefCell<Vec<(u32, T)>>> = Rc::default();
    let sink = Rc::clone(&got);
    worker.dataflow::<u64, _, _>(|scope| {
        scope
            .input_from(&mut input)
            .container::<Vec<(u32, u32, T)>>()
            .exchange(|(to, _, _): &(u32, u32, T)| u64::from(*to))
            .inspect(move |(_, from, v): &(u32, u32, T)| {
                sink.borrow_mut().push((*from, v.clone()));
            })
            .probe_with(&probe);
    });
    for to in 0..peers as u32 {
        input.send((to, index, value.clone()));
    }
    input.close();
    // A worker of this process that failed stops the round, but only once
    // the round had a moment to complete: one that sent its value and
    // went on to fail later lets the others finish the round (and open
    // their sinks, which settles committed output) rather than leave it.
    let mut aborted_at: Option<Instant> = None;
    while !probe.done() {
        if abort.load(Ordering::Acquire) {
            let since = *aborted_at.get_or_insert_with(Instant::now);
            if since.elapsed() > ABORT_GRACE {
                return Err(Error::Worker(
                    "stopped because another worker failed".into(),
                ));
            }
        }
        worker.step_or_park(Some(Duration::from_millis(20)));
    }
    let mut values = std::mem::take(&mut *got.borrow_mut());
    values.sort_by_key(|(from, _)| *from);
    if values.len() != peers {
        return Err(Error::Worker(format!(
            "agreement got {} answers from {peers} workers",
            values.len()
        )));
    }
    Ok(values.into_iter().map(|(_, v)| v).collect())
}
