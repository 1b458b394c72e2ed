//! What flows between operators.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Records of a job: cloned between operators, serialized between
/// processes (timely's exchange), and kept in state through a codec.
pub trait Data: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Serialize + DeserializeOwned + 'static> Data for T {}

/// Keys of keyed streams: `Data` that can be compared and hashed.
pub trait Key: Data + Eq + std::hash::Hash + Ord {}
impl<T: Data + Eq + std::hash::Hash + Ord> Key for T {}

/// One item of a stream. Timely's timestamp is the epoch; event time rides
/// with each record. Watermarks travel in the same stream, one copy per
/// receiving worker, so a keyed exchange routes them to every worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Item<D> {
    /// A record with its event time (ms) and, on keyed streams, its key
    /// group.
    Rec {
        /// Event time, ms since the UNIX epoch (0 when the source has none).
        time: u64,
        /// Key group (keyed streams only).
        kg: u16,
        /// The record.
        data: D,
    },
    /// "No record with an event time below `wm` will come from `from`
    /// after this epoch", addressed to worker `to`.
    Wm {
        /// The worker this copy goes to.
        to: u32,
        /// The upstream operator instance (worker) that sent it.
        from: u32,
        /// The watermark, ms.
        wm: u64,
    },
}

/// The worker that handles a stream item: the owner of its key group, or
/// the addressee of a watermark.
pub(crate) fn route<D>(item: &Item<D>, peers: usize, key_groups: u16) -> u64 {
    match item {
        Item::Rec { kg, .. } => crate::keys::worker_of(*kg, peers, key_groups) as u64,
        Item::Wm { to, .. } => u64::from(*to),
    }
}
