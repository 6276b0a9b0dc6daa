//! The rate-limit store seam: one domain operation (for one key or for
//! several at once), atomic by contract.
//!
//! The crate implements [`RateLimitStore`] for [`Backend`](crate::Backend),
//! [`RedisBackend`](crate::redis::RedisBackend) and
//! [`MemoryBackend`](crate::memory::MemoryBackend); implement it to count
//! elsewhere.

use std::time::Duration;

use super::policy::Policy;
use crate::error::Error;

crate::seam::store_seam! {
    /// Where rate-limit state lives.
    pub trait RateLimitStore: Send + Sync + 'static {
        /// Checks a request of `cost` by the client `key` against `policies`,
        /// all or nothing, by the store's clock: when every policy admits it,
        /// each counts it; when any refuses, none does. The state of `key`
        /// under this set of policies expires when idle; a changed set (other
        /// names, numbers, algorithms or order) starts from fresh state.
        ///
        /// On Redis Cluster the part of `key` after its first `|` (all of it
        /// when there is none) is the hash tag: the layer's keys are
        /// `<rule>|<client>`, so one client's states under several rules share
        /// a slot, and [`check_all`](Self::check_all) can check them in one
        /// script.
        async fn check<'a, 'b, 'c>(
            &'a self,
            key: &'b str,
            policies: &'c [Policy],
            cost: u64,
        ) -> Result<Decision, Error>;

        /// Checks one request against several keys' policies (the layer: the
        /// rules that apply to it, each with its own key), all or nothing
        /// when the store can: when every policy of every check that is not a
        /// [dry run](Check::dry_run) admits the request, each check whose own
        /// policies admit it counts it; otherwise no check counts it. Returns
        /// one [`Decision`] per check, in order. The keys must differ.
        ///
        /// This crate's backends do it in one call: one script on a single
        /// Redis, one lock in memory. On Redis Cluster, where keys of one
        /// script must share a slot, consecutive checks whose keys share a hash
        /// tag (see [`check`](Self::check)) are one script; runs with other
        /// tags are checked one after another, in order, and a run that
        /// refuses ends the call: the runs before it have counted the request,
        /// and the decisions stop at the refusing run.
        ///
        /// The default runs [`check`](Self::check) for each in turn the same
        /// way (each check a run): a store of your own is all or nothing
        /// across keys only if it overrides this.
        async fn check_all<'a, 'b, 'c>(
            &'a self,
            checks: &'b [Check<'c>],
        ) -> Result<Vec<Decision>, Error> {
            let mut decisions = Vec::with_capacity(checks.len());
            for c in checks {
                let decision = self.check(c.key, c.policies, c.cost).await?;
                let refused = !decision.allowed && !c.dry_run;
                decisions.push(decision);
                if refused {
                    break;
                }
            }
            Ok(decisions)
        };
    }
    dyn DynRateLimitStore;
    enum Store;
}

/// One key's part of a request checked by [`RateLimitStore::check_all`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Check<'a> {
    /// The client's key (the layer's: `<rule>|<client>`).
    pub key: &'a str,
    /// The policies of this key.
    pub policies: &'a [Policy],
    /// What the request costs under them.
    pub cost: u64,
    /// A dry run: these policies never refuse the request for the others.
    /// Their state counts it only if their own policies and every other
    /// check admit it, as if they were limiting.
    pub dry_run: bool,
}

impl<'a> Check<'a> {
    /// A check of a request of `cost` by `key` against `policies`.
    pub fn new(key: &'a str, policies: &'a [Policy], cost: u64) -> Self {
        Check {
            key,
            policies,
            cost,
            dry_run: false,
        }
    }

    /// As a dry run (see [`Check::dry_run`]).
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Whether this check's verdict decides the request.
    pub(crate) fn gates(&self) -> bool {
        !self.dry_run
    }
}

/// What [`RateLimitStore::check`] decided (or, for one key,
/// [`RateLimitStore::check_all`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Every policy admitted the request (and counted it, unless another
    /// check of the same [`check_all`](RateLimitStore::check_all)
    /// refused it).
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
