//! The shared conformance suite, run against the memory backend.

use gress_state::{MemoryConfig, MemoryStateBackend};
use gress_testkit::{Fixture, SuiteConfig};

fn memory(cfg: &SuiteConfig) -> gress_state::Result<Fixture> {
    let mut config = MemoryConfig::default().with_clock(cfg.clock.clone());
    if let Some(ttl) = cfg.default_ttl {
        config = config.with_ttl(ttl);
    }
    Ok(Fixture::checkpointable(
        MemoryStateBackend::new(config)?,
        None,
    ))
}

gress_testkit::conformance_suite!(memory);
