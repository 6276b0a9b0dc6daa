//! The rate-limit store seam: one domain operation, atomic by contract.
//!
//! The crate implements [`RateLimitStore`] for [`Backend`],
//! [`RedisBackend`](crate::redis::RedisBackend) and
//! [`MemoryBackend`](crate::memory::MemoryBackend); implement it to count
//! elsewhere.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::policy::Policy;
use crate::backend::on_backend;
use crate::error::Error;
use crate::Backend;

/// Where rate-limit state lives.
pub trait RateLimitStore: Send + Sync + 'static {
    /// Checks a request of `cost` by the client `key` against `policies`,
    /// all or nothing, by the store's clock: when every policy admits it,
    /// each counts it; when any refuses, none does. The state of `key`
    /// under this set of policies expires when idle; a changed set (other
    /// names, numbers, algorithms or order) starts from fresh state. All of
    /// a key's state shares one Redis Cluster slot.
    fn check(
        &self,
        key: &str,
        policies: &[Policy],
        cost: u64,
    ) -> impl Future<Output = Result<Decision, Error>> + Send;
}

/// What [`RateLimitStore::check`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Every policy admitted the request (and counted it).
    pub allowed: bool,
    /// Each policy's state, in the order of the request's policies.
    pub policies: Vec<PolicyState>,
}

impl Decision {
    /// A decision from the policies' states: allowed when all admitted.
    pub fn new(policies: Vec<PolicyState>) -> Self {
        Decision {
            allowed: policies.iter().all(|p| p.admitted),
            policies,
        }
    }

    /// How long until the request would be admitted (the longest wait of
    /// the policies that refused it); zero when it was.
    pub fn retry_after(&self) -> Duration {
        self.policies
            .iter()
            .map(|p| p.retry_after)
            .max()
            .unwrap_or_default()
    }
}

/// One policy's state after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyState {
    /// This policy alone would admit the request.
    pub admitted: bool,
    /// Requests left (after this one, when the request was admitted).
    pub remaining: u64,
    /// Until the quota is whole again (GCRA: the burst is refilled; a
    /// window: it ends).
    pub reset: Duration,
    /// Until a request of this cost would be admitted (zero when admitted).
    pub retry_after: Duration,
}

impl PolicyState {
    /// A policy's state.
    pub fn new(admitted: bool, remaining: u64, reset: Duration, retry_after: Duration) -> Self {
        PolicyState {
            admitted,
            remaining,
            reset,
            retry_after,
        }
    }
}

impl RateLimitStore for Backend {
    async fn check(&self, key: &str, policies: &[Policy], cost: u64) -> Result<Decision, Error> {
        on_backend!(self, b => RateLimitStore::check(b, key, policies, cost).await)
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`RateLimitStore`] behind a pointer, for stores other than this crate's.
pub(crate) trait DynRateLimitStore: Send + Sync {
    fn check<'a>(
        &'a self,
        key: &'a str,
        policies: &'a [Policy],
        cost: u64,
    ) -> BoxFuture<'a, Result<Decision, Error>>;
}

impl<T: RateLimitStore> DynRateLimitStore for T {
    fn check<'a>(
        &'a self,
        key: &'a str,
        policies: &'a [Policy],
        cost: u64,
    ) -> BoxFuture<'a, Result<Decision, Error>> {
        Box::pin(RateLimitStore::check(self, key, policies, cost))
    }
}

/// How the layer holds its store: this crate's backends as they are, any
/// other store behind a pointer.
#[derive(Clone)]
pub(crate) enum Store {
    Backend(Backend),
    Custom(Arc<dyn DynRateLimitStore>),
}

impl Store {
    pub(crate) fn new<S: RateLimitStore>(store: S) -> Self {
        match crate::backend::as_backend(&store) {
            Some(b) => Store::Backend(b),
            None => Store::Custom(Arc::new(store)),
        }
    }

    pub(crate) async fn check(
        &self,
        key: &str,
        policies: &[Policy],
        cost: u64,
    ) -> Result<Decision, Error> {
        match self {
            Store::Backend(b) => RateLimitStore::check(b, key, policies, cost).await,
            Store::Custom(s) => s.check(key, policies, cost).await,
        }
    }
}
