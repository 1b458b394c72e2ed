//! Helpers shared by the checkpoint tests.
#![allow(dead_code)]

use std::sync::Arc;

use gress_checkpoint::{CheckpointConfig, CheckpointManager, LocalStorage, Metadata, Storage};
use gress_state::{KeyRange, MemoryStateBackend, StateBackend};

/// Every live entry of a backend, in key order.
pub fn dump(b: &dyn StateBackend) -> Vec<(Vec<u8>, Vec<u8>)> {
    b.scan(KeyRange::all())
        .expect("scan")
        .collect::<gress_state::Result<_>>()
        .expect("scan item")
}

pub fn metadata(round: u64) -> Metadata {
    Metadata::from([("round".to_string(), round.to_string())])
}

pub fn round_of(m: &Metadata) -> u64 {
    m["round"].parse().expect("round")
}

/// The state after `rounds` rounds of `apply_round`, on a fresh backend.
pub fn expected_after(rounds: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let b = MemoryStateBackend::default();
    for r in 1..=rounds {
        apply_round(&b, r);
    }
    dump(&b)
}

/// A deterministic round of writes: puts, overwrites and deletes.
pub fn apply_round(b: &dyn StateBackend, round: u64) {
    for i in 0..200u64 {
        let k = (round * 7919 + i * 104_729) % 1000;
        b.put(
            format!("key-{k:04}").as_bytes(),
            format!("r{round}-i{i}").as_bytes(),
        )
        .expect("put");
    }
    for i in 0..20u64 {
        let k = (round * 31 + i * 53) % 1000;
        b.delete(format!("key-{k:04}").as_bytes()).expect("delete");
    }
}

pub fn local(dir: &std::path::Path) -> Arc<dyn Storage> {
    Arc::new(LocalStorage::new(dir).expect("local storage"))
}

pub fn manager(storage: Arc<dyn Storage>, config: CheckpointConfig) -> CheckpointManager {
    CheckpointManager::open(storage, config).expect("open manager")
}

/// One round as one atomic batch, with the round number stored in the state
/// itself, so any consistent cut names the round it follows.
pub fn apply_round_batch(b: &dyn StateBackend, round: u64) {
    let mut batch = gress_state::WriteBatch::new();
    for i in 0..200u64 {
        let k = (round * 7919 + i * 104_729) % 1000;
        batch.put(format!("key-{k:04}"), format!("r{round}-i{i}"));
    }
    for i in 0..20u64 {
        let k = (round * 31 + i * 53) % 1000;
        batch.delete(format!("key-{k:04}"));
    }
    batch.put("round", round.to_string());
    b.write_batch(&batch).expect("batch");
}

/// The state after `rounds` batched rounds.
pub fn expected_after_batches(rounds: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let b = MemoryStateBackend::default();
    for r in 1..=rounds {
        apply_round_batch(&b, r);
    }
    dump(&b)
}

/// The round a state says it follows.
pub fn state_round(b: &dyn StateBackend) -> u64 {
    b.get(b"round")
        .expect("get")
        .map_or(0, |v| String::from_utf8_lossy(&v).parse().expect("round"))
}
