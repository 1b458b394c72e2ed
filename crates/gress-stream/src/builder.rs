//! Building one worker's dataflow: the user's sources and operators, then
//! the acks, the committer and the listener behind them.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::{Scope, StreamVec};

use crate::commit::{CommitterSetup, Token, acks, committer, listen};
use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::operators::source::{EventTime, PartitionState, source_operator};
use crate::source::Source;
use crate::stream::DataStream;
use crate::worker::Shared;

/// Builds one worker's dataflow: sources, then operators on the streams
/// they return.
pub struct JobBuilder<'s> {
    pub(crate) scope: Scope<'s, u64>,
    pub(crate) shared: Shared,
    pub(crate) config: Arc<JobConfig>,
    pub(crate) first_epoch: u64,
    pub(crate) tokens: Vec<StreamVec<'s, u64, Token>>,
}

impl std::fmt::Debug for JobBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBuilder")
            .field("worker", &self.worker_index())
            .finish_non_exhaustive()
    }
}

impl<'s> JobBuilder<'s> {
    /// This worker's index among all workers of the job.
    pub fn worker_index(&self) -> usize {
        self.shared.borrow().index
    }

    /// The number of workers of the job.
    pub fn workers(&self) -> usize {
        self.shared.borrow().peers
    }

    /// The committed epoch this run recovered from.
    pub fn recovered_from(&self) -> Option<u64> {
        self.shared.borrow().recovered_from
    }

    /// Reads `source`; records have no event time (watermarks stay at 0
    /// until the source ends).
    pub fn source<S: Source>(
        &mut self,
        name: &str,
        source: S,
    ) -> Result<DataStream<'s, S::Record>> {
        self.source_inner(name, source, None)
    }

    /// Reads `source`, with event time `time(record)` (ms) and watermarks
    /// `max_out_of_orderness` behind the latest event time of each
    /// partition.
    pub fn source_with_event_time<S: Source>(
        &mut self,
        name: &str,
        source: S,
        time: impl Fn(&S::Record) -> u64 + 'static,
        max_out_of_orderness: Duration,
    ) -> Result<DataStream<'s, S::Record>> {
        self.source_inner(
            name,
            source,
            Some((Box::new(time), max_out_of_orderness.as_millis() as u64)),
        )
    }

    fn source_inner<S: Source>(
        &mut self,
        name: &str,
        mut source: S,
        time: Option<EventTime<S::Record>>,
    ) -> Result<DataStream<'s, S::Record>> {
        self.shared.borrow_mut().register_name("source", name)?;
        let (index, peers) = {
            let s = self.shared.borrow();
            (s.index, s.peers)
        };
        let mut readers = Vec::new();
        for p in (0..source.partitions()).filter(|p| p % peers == index) {
            let (offset, max_time) = {
                let s = self.shared.borrow();
                (
                    s.restored_number(&format!("offset/{name}/{p}"))?
                        .unwrap_or(0),
                    s.restored_number(&format!("maxtime/{name}/{p}"))?
                        .unwrap_or(0),
                )
            };
            readers.push(PartitionState::new(p, source.open(p, offset)?, max_time));
        }
        self.shared.borrow_mut().register_source();
        let (data, tokens) = source_operator(
            self.scope,
            name,
            readers,
            time,
            Rc::clone(&self.shared),
            &self.config,
            self.first_epoch,
        );
        self.tokens.push(tokens);
        Ok(DataStream {
            inner: data,
            shared: Rc::clone(&self.shared),
        })
    }
}

impl<'s> JobBuilder<'s> {
    /// Wires the acks, the committer and the listener after the user's
    /// dataflow.
    pub(crate) fn finish(
        self,
        setup: CommitterSetup,
        slot: Arc<Mutex<Option<timely::scheduling::SyncActivator>>>,
    ) -> Result<()> {
        if self.tokens.is_empty() {
            return Err(Error::invalid("job", "no source"));
        }
        let tokens = self.scope.concatenate(self.tokens);
        let acks = acks(tokens, Rc::clone(&self.shared), slot);
        let settled = committer(acks, Rc::clone(&self.shared), setup);
        listen(settled, self.shared);
        Ok(())
    }
}
