//! Contract suites for stores of your own (feature `test-kit`).
//!
//! Each store trait ([`SessionStore`](crate::session::store::SessionStore),
//! [`RateLimitStore`](crate::rate_limit::RateLimitStore),
//! [`CacheStore`](crate::cache::CacheStore),
//! [`IdempotencyStore`](crate::idempotency::IdempotencyStore)) states a
//! contract in its documentation. The functions here check a store
//! against it, call by call, the way this crate checks its Redis and
//! memory backends (its own tests run these same functions on both). Run
//! them from a test of yours:
//!
//! ```
//! # #[cfg(feature = "idempotency")]
//! # async fn my_store_keeps_the_idempotency_contract() {
//! // In a #[tokio::test] of yours, with your store in place of this one:
//! let my_store = redis_layers::memory::MemoryBackend::new();
//! redis_layers::test_kit::idempotency_store(&my_store).await;
//! # }
//! ```
//!
//! A check that fails panics with what it expected, and the suite logs
//! which check it was (to stderr). Each run makes its own keys (random
//! names), so runs may share one store and run at the same time, and a
//! store that holds data already is fine; the one exception is the cache
//! suite, which starts new cache generations (see
//! [`cache_store`](fn@cache_store)).
//!
//! Timing: some checks wait for leases or expiries of 300 ms to 1 s to
//! run out (a suite takes a few seconds), so a store's calls must answer
//! well within that, and its clock (the store's, which every contract
//! uses) must be within 50 ms of the test process's.
//!
//! The suites need a Tokio runtime with its timer (`#[tokio::test]`).

use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "cache")]
mod cache;
#[cfg(feature = "idempotency")]
mod idempotency;
#[cfg(feature = "rate-limit")]
mod rate_limit;
#[cfg(feature = "session")]
mod session;

#[cfg(feature = "cache")]
pub use cache::cache_store;
#[cfg(feature = "idempotency")]
pub use idempotency::idempotency_store;
#[cfg(feature = "rate-limit")]
pub use rate_limit::rate_limit_store;
#[cfg(feature = "session")]
pub use session::session_store;

/// Names unique to one run of a suite: a random base per run.
#[allow(dead_code)]
pub(crate) struct Fresh {
    base: u64,
}

#[allow(dead_code)]
impl Fresh {
    pub(crate) fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        static RUNS: AtomicU64 = AtomicU64::new(0);
        // RandomState is seeded from the operating system's random source;
        // the counter keeps two runs of one process apart regardless.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(RUNS.fetch_add(1, Ordering::Relaxed));
        Fresh { base: h.finish() }
    }

    /// A key of this run: `name` after the run's base.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("kit{:016x}{name}", self.base)
    }

    /// A 32-hex-digit key of this run (what the cache and idempotency
    /// layers pass their stores), numbered `n`.
    pub(crate) fn hex(&self, n: u64) -> String {
        format!("{:016x}{:016x}", self.base, n)
    }
}

/// Logs the name of the check that is running when it panics.
pub(crate) struct Checking(pub(crate) &'static str);

impl Drop for Checking {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "redis-layers test kit: the store failed the check `{}`",
                self.0
            );
        }
    }
}

/// Runs each named check in turn, each with the store and a run's names.
macro_rules! run_checks {
    ($store:expr, $fresh:expr; $($check:ident),+ $(,)?) => {
        $(
            {
                let _checking = $crate::test_kit::Checking(stringify!($check));
                $check($store, $fresh).await;
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use run_checks;
