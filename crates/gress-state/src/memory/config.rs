//! Configuration of the memory backend.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, system_clock};
use crate::error::{Error, Result};
use crate::metrics::DEFAULT_SAMPLE_EVERY;
use crate::ttl::TtlPolicy;

/// Configuration of a [`MemoryStateBackend`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Whether a plain `put` gets `default_ttl`. `put_with_ttl` always
    /// applies its own TTL.
    pub ttl_enabled: bool,
    /// The TTL of a plain `put` when `ttl_enabled`; must then be positive.
    pub default_ttl: Duration,
    /// How often the background thread removes expired entries; zero turns
    /// background cleanup off (expired entries are then removed on read).
    pub cleanup_interval: Duration,
    /// Entries examined per shard under one lock hold during cleanup.
    pub cleanup_batch: usize,
    /// Number of shards, a power of two: more shards, less contention and
    /// smaller copy-on-write copies.
    pub n_shards: usize,
    /// One call in this many (per thread) is timed for latency percentiles;
    /// 1 times every call, 0 none.
    pub latency_sample_every: u32,
    /// The time source for TTL.
    pub clock: Arc<dyn Clock>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            ttl_enabled: false,
            default_ttl: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(1),
            cleanup_batch: 1024,
            n_shards: 1024,
            latency_sample_every: DEFAULT_SAMPLE_EVERY,
            clock: system_clock(),
        }
    }
}

impl MemoryConfig {
    /// Enables TTL with `default_ttl` for plain puts.
    pub fn with_ttl(mut self, default_ttl: Duration) -> Self {
        self.ttl_enabled = true;
        self.default_ttl = default_ttl;
        self
    }

    /// Uses `clock` for TTL decisions.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the background cleanup interval (zero disables it).
    pub fn with_cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Sets the number of shards.
    pub fn with_shards(mut self, n_shards: usize) -> Self {
        self.n_shards = n_shards;
        self
    }

    /// Sets latency sampling (see [`MemoryConfig::latency_sample_every`]).
    pub fn with_latency_sampling(mut self, every: u32) -> Self {
        self.latency_sample_every = every;
        self
    }

    pub(super) fn validate(&self) -> Result<TtlPolicy> {
        if !self.n_shards.is_power_of_two() || self.n_shards > 1 << 16 {
            return Err(Error::invalid_config(
                "n_shards",
                format!(
                    "must be a power of two between 1 and 65536, got {}",
                    self.n_shards
                ),
            ));
        }
        if self.cleanup_batch == 0 {
            return Err(Error::invalid_config("cleanup_batch", "must be at least 1"));
        }
        TtlPolicy::new(self.ttl_enabled, self.default_ttl)
    }
}
