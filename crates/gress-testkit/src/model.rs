//! Model-based property test: random operation sequences run against a
//! backend and against a `BTreeMap`, which must agree after every step.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

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
                model = saved
                    .iter()
                    .filter(|(_, (_, exp))| exp.is_none_or(|at| now < at))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
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
