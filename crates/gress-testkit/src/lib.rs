//! The conformance suite every `StateBackend` must pass, and a model-based
//! property test.
//!
//! A backend crate runs the whole suite with one macro call in a test file:
//!
//! ```ignore
//! gress_testkit::conformance_suite!(|cfg: &gress_testkit::SuiteConfig| {
//!     let backend = MyBackend::open(cfg.clock.clone(), cfg.default_ttl)?;
//!     Ok(gress_testkit::Fixture::new(backend))
//! });
//! ```
//!
//! Every test opens fresh backends through the factory, with a
//! [`ManualClock`] so TTL is checked deterministically.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use gress_state::{Checkpointable, ManualClock, Result, StateBackend};

pub mod conformance;
pub mod model;
pub mod prometheus;

/// What the suite asks of a backend it opens.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// The clock the backend must use for TTL.
    pub clock: Arc<ManualClock>,
    /// The default TTL of plain puts; `None` means TTL is disabled.
    pub default_ttl: Option<Duration>,
}

impl SuiteConfig {
    /// A config with a fresh manual clock at a fixed start time.
    pub fn new(default_ttl: Option<Duration>) -> Self {
        SuiteConfig {
            clock: ManualClock::shared(START_MS),
            default_ttl,
        }
    }
}

/// The manual clock's start: 2026-01-01T00:00:00Z.
pub const START_MS: u64 = 1_767_225_600_000;

/// An open backend plus whatever must outlive it (e.g. a temp directory).
pub struct Fixture {
    /// The backend under test.
    pub backend: Arc<dyn StateBackend>,
    /// The same backend as a [`Checkpointable`], when it is one: the model
    /// test then also captures, commits, abandons and restores checkpoints.
    pub checkpoints: Option<Arc<dyn Checkpointable>>,
    guard: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// A fixture that owns nothing but the backend.
    pub fn new(backend: impl StateBackend + 'static) -> Self {
        Fixture {
            backend: Arc::new(backend),
            checkpoints: None,
            guard: None,
        }
    }

    /// A fixture that also keeps `guard` alive until after the backend is
    /// dropped.
    pub fn with_guard(backend: impl StateBackend + 'static, guard: impl Any + Send) -> Self {
        Fixture {
            backend: Arc::new(backend),
            checkpoints: None,
            guard: Some(Box::new(guard)),
        }
    }

    /// A fixture of a backend that checkpoints, keeping `guard` (if any)
    /// alive until after it is dropped.
    pub fn checkpointable(
        backend: impl Checkpointable + 'static,
        guard: Option<Box<dyn Any + Send>>,
    ) -> Self {
        let backend = Arc::new(backend);
        Fixture {
            backend: backend.clone(),
            checkpoints: Some(backend),
            guard,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Close before the guard (say, a temp dir) goes away.
        let _ = self.backend.close();
        drop(self.guard.take());
    }
}

/// Opens backends for the suite.
pub trait BackendFactory: Sync {
    /// Opens a new, empty backend configured by `cfg`.
    fn open(&self, cfg: &SuiteConfig) -> Result<Fixture>;
}

impl<F> BackendFactory for F
where
    F: Fn(&SuiteConfig) -> Result<Fixture> + Sync,
{
    fn open(&self, cfg: &SuiteConfig) -> Result<Fixture> {
        self(cfg)
    }
}

/// Expands to a module `conformance` with one `#[test]` per contract check,
/// each calling the same-named function of [`conformance`] with the given
/// factory, plus the model-based property test.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@tests $factory;
            basic_operations,
            overwrite_replaces_value,
            missing_keys,
            empty_key_and_empty_value,
            binary_keys,
            large_value,
            oversized_key_is_rejected,
            batch_applies_every_op_in_order,
            batch_is_all_or_nothing,
            multi_get_returns_in_order,
            scan_in_key_order,
            ttl_default_and_override,
            ttl_has_millisecond_precision,
            get_with_expiry_tells_the_expiry,
            ttl_zero_is_rejected,
            expired_entries_are_invisible,
            expired_entries_are_not_snapshotted,
            ttl_survives_snapshot_as_absolute_time,
            snapshot_round_trip,
            restore_replaces_state,
            bad_snapshots_leave_state_unchanged,
            delta_snapshot_is_not_a_full_restore,
            closed_backend_gives_closed,
            metrics_count_operations,
            concurrent_readers_and_writers,
            snapshot_is_consistent_under_writes,
            lazy_expiry_never_removes_a_fresh_write,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() -> $crate::__private::Result<()> {
                    $crate::conformance::$name(&$factory)
                }
            )*

            #[test]
            fn model_based_property_test() {
                $crate::model::check_against_model(&$factory, 64);
            }

            #[test]
            fn model_based_checkpoint_test() {
                $crate::model::check_checkpoints_against_model(&$factory, 256);
            }
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use gress_state::Result;
}
