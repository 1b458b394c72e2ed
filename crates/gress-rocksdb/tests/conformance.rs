//! The shared conformance suite, run against the RocksDB backend.

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_testkit::{Fixture, SuiteConfig};

fn rocksdb(cfg: &SuiteConfig) -> gress_state::Result<Fixture> {
    let dir = tempfile::tempdir().map_err(|e| gress_state::Error::io("creating temp dir", e))?;
    let mut config = RocksDbConfig::new(dir.path().join("db")).with_clock(cfg.clock.clone());
    // Small memtables and cache: the suite opens many databases.
    config.write_buffer_size = 4 << 20;
    config.block_cache_size = 8 << 20;
    if let Some(ttl) = cfg.default_ttl {
        config = config.with_ttl(ttl);
    }
    Ok(Fixture::checkpointable(
        RocksDbStateBackend::open(config)?,
        Some(Box::new(dir)),
    ))
}

gress_testkit::conformance_suite!(rocksdb);
