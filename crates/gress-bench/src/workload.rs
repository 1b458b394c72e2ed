//! Keys and values of the benchmark workload.

/// Key length in bytes.
pub const KEY_LEN: usize = 16;
/// Value length in bytes.
pub const VALUE_LEN: usize = 100;

/// A set of `n` distinct 16-byte keys derived from their index, so no key
/// array competes with the state for cache.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    n: u64,
}

pub(crate) fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps `x` uniformly onto `0..n` without a division.
pub(crate) fn scale(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

impl Keys {
    /// Keys `0..n` are in the state.
    pub fn new(n: u64) -> Self {
        Keys { n }
    }

    /// The i-th key of the state.
    pub fn nth(i: u64) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        k[..8].copy_from_slice(&mix(i).to_be_bytes());
        k[8..].copy_from_slice(&i.to_be_bytes());
        k
    }

    /// A key in the state, picked by `x` (any u64).
    pub fn hit(&self, x: u64) -> [u8; KEY_LEN] {
        Self::nth(scale(x, self.n))
    }

    /// A key not in the state, picked by `x`.
    pub fn miss(&self, x: u64) -> [u8; KEY_LEN] {
        Self::nth(self.n + scale(x, u64::MAX / 2))
    }
}
