//! Model-based property test: random operation sequences run against a
//! backend and against a `BTreeMap`, which must agree after every step.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use gress_state::checkpoint::{
    Capture, CaptureKind, CaptureMode, CheckpointFiles, Checkpointable, FileSource,
};
use gress_state::{Clock, KeyRange, StateBackend, WriteBatch};

use crate::{BackendFactory, SuiteConfig};

/// One step of a generated sequence.
#[derive(Debug, Clone)]
pub enum ModelOp {
    /// `put`
    Put(Vec<u8>, Vec<u8>),
    /// `put_with_ttl` with a TTL in ms
    PutTtl(Vec<u8>, Vec<u8>, u64),
    /// `delete`
    Delete(Vec<u8>),
    /// `get`, compared with the model
    Get(Vec<u8>),
    /// Move the clock forward by this many ms
    Advance(u64),
    /// An atomic batch of puts (`Some`) and deletes (`None`)
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    /// `scan_prefix`, compared with the model
    ScanPrefix(Vec<u8>),
    /// Take a snapshot and remember the model beside it
    Snapshot,
    /// Restore the n-th remembered snapshot (modulo how many exist)
    Restore(usize),
    /// Take a checkpoint capture, incremental (`true`) or full
    Capture(bool),
    /// Write out and commit the n-th capture in flight
    CommitCapture(usize),
    /// Drop the n-th capture in flight without committing it
    AbandonCapture(usize),
    /// Restore the n-th committed checkpoint from its files
    RestoreCheckpoint(usize),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![Just(0x00u8), Just(0x01), Just(b'a'), Just(0xFF)],
        0..3,
    )
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..12)
}

fn op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        4 => (key(), value()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        3 => (key(), value(), 1u64..40).prop_map(|(k, v, t)| ModelOp::PutTtl(k, v, t)),
        2 => key().prop_map(ModelOp::Delete),
        4 => key().prop_map(ModelOp::Get),
        2 => (0u64..25).prop_map(ModelOp::Advance),
        1 => vec((key(), proptest::option::of(value())), 0..5).prop_map(ModelOp::Batch),
        1 => vec(prop_oneof![Just(0x00u8), Just(b'a'), Just(0xFF)], 0..2).prop_map(ModelOp::ScanPrefix),
        1 => Just(ModelOp::Snapshot),
        1 => any::<usize>().prop_map(ModelOp::Restore),
        2 => any::<bool>().prop_map(ModelOp::Capture),
        2 => any::<usize>().prop_map(ModelOp::CommitCapture),
        1 => any::<usize>().prop_map(ModelOp::AbandonCapture),
        1 => any::<usize>().prop_map(ModelOp::RestoreCheckpoint),
    ]
}

type Model = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

fn live(model: &Model, now: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .iter()
        .filter(|(_, (_, exp))| exp.is_none_or(|at| now < at))
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect()
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn run_ops(
    factory: &dyn BackendFactory,
    default_ttl: Option<u64>,
    ops: &[ModelOp],
) -> Result<(), TestCaseError> {
    let cfg = SuiteConfig::new(default_ttl.map(Duration::from_millis));
    let fixture = factory.open(&cfg).map_err(fail)?;
    let b: &dyn StateBackend = &*fixture.backend;
    let clock = &cfg.clock;
    let mut model = Model::new();
    let mut snapshots: Vec<(Vec<u8>, Model)> = Vec::new();
    let mut checkpoints = Checkpoints::default();
    if let Some(c) = &fixture.checkpoints {
        c.claim_checkpoints(OWNER).map_err(fail)?;
    }
    let expiry = |now: u64, ttl: Option<u64>| ttl.or(default_ttl).map(|t| now + t);

    for op in ops {
        let now = clock.now_ms();
        match op {
            ModelOp::Put(k, v) => {
                b.put(k, v).map_err(fail)?;
                model.insert(k.clone(), (v.clone(), expiry(now, None)));
            }
            ModelOp::PutTtl(k, v, t) => {
                b.put_with_ttl(k, v, Duration::from_millis(*t))
                    .map_err(fail)?;
                model.insert(k.clone(), (v.clone(), expiry(now, Some(*t))));
            }
            ModelOp::Delete(k) => {
                b.delete(k).map_err(fail)?;
                model.remove(k);
            }
            ModelOp::Get(k) => {
                let want = model
                    .get(k)
                    .filter(|(_, exp)| exp.is_none_or(|at| now < at))
                    .map(|(v, _)| v.clone());
                prop_assert_eq!(b.get(k).map_err(fail)?, want, "get {:02x?}", k);
            }
            ModelOp::Advance(ms) => clock.advance(Duration::from_millis(*ms)),
            ModelOp::Batch(entries) => {
                let mut batch = WriteBatch::new();
                for (k, v) in entries {
                    match v {
                        Some(v) => {
                            batch.put(k.clone(), v.clone());
                            model.insert(k.clone(), (v.clone(), expiry(now, None)));
                        }
                        None => {
                            batch.delete(k.clone());
                            model.remove(k);
                        }
                    }
                }
                b.write_batch(&batch).map_err(fail)?;
            }
            ModelOp::ScanPrefix(p) => {
                let got: Vec<_> = b
                    .scan_prefix(p)
                    .map_err(fail)?
                    .collect::<Result<_, _>>()
                    .map_err(fail)?;
                let want: Vec<_> = live(&model, now)
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(p))
                    .collect();
                prop_assert_eq!(got, want, "scan_prefix {:02x?}", p);
            }
            ModelOp::Snapshot => {
                snapshots.push((b.snapshot().map_err(fail)?, model.clone()));
            }
            ModelOp::Restore(i) => {
                if snapshots.is_empty() {
                    continue;
                }
                let (bytes, saved) = &snapshots[i % snapshots.len()];
                b.restore(bytes).map_err(fail)?;
                model = unexpired(saved, now);
            }
            ModelOp::Capture(incremental) => {
                let Some(c) = &fixture.checkpoints else {
                    continue;
                };
                checkpoints.capture(&**c, *incremental, &model)?;
            }
            ModelOp::CommitCapture(i) => checkpoints.commit(*i)?,
            ModelOp::AbandonCapture(i) => {
                if !checkpoints.pending.is_empty() {
                    let i = i % checkpoints.pending.len();
                    checkpoints.pending.remove(i);
                }
            }
            ModelOp::RestoreCheckpoint(i) => {
                let Some(c) = &fixture.checkpoints else {
                    continue;
                };
                if let Some(saved) = checkpoints.restore(&**c, *i)? {
                    model = unexpired(&saved, now);
                }
            }
        }
    }
    let now = clock.now_ms();
    let all: Vec<_> = b
        .scan(KeyRange::all())
        .map_err(fail)?
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    prop_assert_eq!(all, live(&model, now), "final state");
    Ok(())
}

fn unexpired(saved: &Model, now: u64) -> Model {
    saved
        .iter()
        .filter(|(_, (_, exp))| exp.is_none_or(|at| now < at))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The owner the model test claims backends as.
const OWNER: u64 = 7;

/// A capture in flight, with the model at its cut.
struct InFlight {
    id: u64,
    capture: Box<dyn Capture>,
    model: Model,
}

/// A committed checkpoint: its whole chain of files, and the model at its
/// cut.
struct Committed {
    format: &'static str,
    files: Vec<(String, Vec<u8>)>,
    model: Model,
}

/// Captures taken, in flight and committed, as a checkpoint manager would
/// keep them (files in memory instead of storage).
#[derive(Default)]
struct Checkpoints {
    next_id: u64,
    pending: Vec<InFlight>,
    committed: BTreeMap<u64, Committed>,
}

impl Checkpoints {
    fn capture(
        &mut self,
        backend: &dyn Checkpointable,
        incremental: bool,
        model: &Model,
    ) -> Result<(), TestCaseError> {
        self.next_id += 1;
        let mode = if incremental {
            CaptureMode::Incremental
        } else {
            CaptureMode::Full
        };
        let capture = backend.capture(OWNER, mode, self.next_id).map_err(fail)?;
        prop_assert!(
            mode == CaptureMode::Incremental || capture.kind() == CaptureKind::Complete,
            "a full capture request answered with a delta"
        );
        self.pending.push(InFlight {
            id: self.next_id,
            capture,
            model: model.clone(),
        });
        Ok(())
    }

    /// Writes the capture's files out (later than its cut, as a manager
    /// does) and commits it on top of its base.
    fn commit(&mut self, i: usize) -> Result<(), TestCaseError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let InFlight {
            id,
            mut capture,
            model,
        } = self.pending.remove(i % self.pending.len());
        let mut files = match (capture.kind(), capture.base()) {
            (CaptureKind::Complete, None) => Vec::new(),
            (CaptureKind::Delta, Some(base)) => match self.committed.get(&base) {
                Some(c) => c.files.clone(),
                None => {
                    return Err(TestCaseError::fail(format!(
                        "capture {id} is a delta on {base}, which was never committed"
                    )));
                }
            },
            (kind, base) => {
                return Err(TestCaseError::fail(format!(
                    "capture {id}: kind {kind:?} with base {base:?}"
                )));
            }
        };
        for f in capture.files().to_vec() {
            let bytes = match &f.source {
                FileSource::Stream => {
                    let mut out = Vec::new();
                    capture.write_stream(&f.name, &mut out).map_err(fail)?;
                    out
                }
                FileSource::Local(path) => std::fs::read(path).map_err(fail)?,
            };
            files.retain(|(name, _)| *name != f.name);
            files.push((f.name.clone(), bytes));
        }
        let format = capture.format();
        capture.committed();
        self.committed.insert(
            id,
            Committed {
                format,
                files,
                model,
            },
        );
        Ok(())
    }

    /// Restores the `i`-th committed checkpoint; returns the model at its
    /// cut.
    fn restore(
        &self,
        backend: &dyn Checkpointable,
        i: usize,
    ) -> Result<Option<Model>, TestCaseError> {
        let Some((_, c)) = self.committed.iter().nth(i % self.committed.len().max(1)) else {
            return Ok(None);
        };
        backend
            .restore_checkpoint(c.format, &MemoryFiles(&c.files))
            .map_err(fail)?;
        Ok(Some(c.model.clone()))
    }
}

/// A checkpoint's files held in memory.
struct MemoryFiles<'a>(&'a [(String, Vec<u8>)]);

impl CheckpointFiles for MemoryFiles<'_> {
    fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }

    fn open(&self, name: &str) -> gress_state::Result<Box<dyn std::io::Read + '_>> {
        let (_, bytes) = self.0.iter().find(|(n, _)| n == name).ok_or_else(|| {
            gress_state::Error::invalid_argument("name", format!("no file {name}"))
        })?;
        Ok(Box::new(&bytes[..]))
    }

    fn fetch_all(&self, dir: &std::path::Path) -> gress_state::Result<()> {
        for (name, bytes) in self.0 {
            std::fs::write(dir.join(name), bytes)
                .map_err(|e| gress_state::Error::io(format!("writing {name}"), e))?;
        }
        Ok(())
    }
}

/// Steps weighted toward checkpoints: captures taken, committed out of
/// order, abandoned and restored between writes to a few keys.
fn checkpoint_op() -> impl Strategy<Value = ModelOp> {
    let key = || vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 1..2);
    prop_oneof![
        4 => (key(), value()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        1 => (key(), value(), 1u64..40).prop_map(|(k, v, t)| ModelOp::PutTtl(k, v, t)),
        2 => key().prop_map(ModelOp::Delete),
        1 => (0u64..25).prop_map(ModelOp::Advance),
        3 => Just(ModelOp::Capture(true)),
        1 => Just(ModelOp::Capture(false)),
        4 => any::<usize>().prop_map(ModelOp::CommitCapture),
        1 => any::<usize>().prop_map(ModelOp::AbandonCapture),
        1 => any::<usize>().prop_map(ModelOp::RestoreCheckpoint),
        1 => key().prop_map(ModelOp::Get),
    ]
}

/// Runs `cases` random sequences of checkpoint captures, commits in any
/// order, abandons and restores against a backend that checkpoints (a
/// no-op for one that does not); panics with the shrunk failing sequence
/// if a restored checkpoint differs from the state at its cut.
pub fn check_checkpoints_against_model(factory: &dyn BackendFactory, cases: u32) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (proptest::option::of(1u64..60), vec(checkpoint_op(), 1..120));
    if let Err(e) = runner.run(&strategy, |(ttl, ops)| run_ops(factory, ttl, &ops)) {
        panic!("backend checkpoints disagree with the model: {e}");
    }
}

/// Runs `cases` random sequences against backends from `factory`; panics
/// with the shrunk failing sequence if the backend and the model disagree.
pub fn check_against_model(factory: &dyn BackendFactory, cases: u32) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (proptest::option::of(1u64..60), vec(op(), 1..80));
    if let Err(e) = runner.run(&strategy, |(ttl, ops)| run_ops(factory, ttl, &ops)) {
        panic!("backend disagrees with the model: {e}");
    }
}
