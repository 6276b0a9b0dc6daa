//! [`RateLimitStore`] for [`MemoryBackend`]: the same states, keys and
//! arithmetic as on Redis (`policy::check`), under the backend's lock.

use std::time::Duration;

use super::layout::{decode, encode, state_key};
use super::policy::{check, Outcome, Policy, State};
use super::store::{Check, Decision, PolicyState, RateLimitStore};
use crate::error::Error;
use crate::memory::{Keyspace, MemoryBackend, Value};

impl RateLimitStore for MemoryBackend {
    async fn check(&self, key: &str, policies: &[Policy], cost: u64) -> Result<Decision, Error> {
        let mut decisions = self.check_all(&[Check::new(key, policies, cost)]).await?;
        decisions
            .pop()
            .ok_or_else(|| Error::decode("no rate-limit decision"))
    }

    async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        let keys: Vec<String> = checks
            .iter()
            .map(|c| state_key(self.namespace(), c.key, c.policies))
            .collect();
        self.atomically(|ks| {
            let now = ks.now_millis() as f64;
            // Every policy of every key first, as `check.lua` does.
            let mut runs = Vec::with_capacity(checks.len());
            for (c, key) in checks.iter().zip(&keys) {
                runs.push(Run::new(ks, key, c, now)?);
            }
            // All or nothing: when a gating key refuses, no key counts the
            // request, and each reports its state without it.
            let allowed = checks
                .iter()
                .zip(&runs)
                .all(|(c, r)| r.admitted || !c.gates());
            let mut decisions = Vec::with_capacity(checks.len());
            for (run, key) in runs.into_iter().zip(&keys) {
                let counted = allowed && run.admitted;
                if counted {
                    let ttl = Duration::from_millis(run.ttl as u64);
                    ks.set(key, Value::Bytes(encode(&run.next)), Some(ttl))?;
                }
                decisions.push(run.decision(counted));
            }
            Ok(decisions)
        })
    }
}

/// One key's policies run on its stored states.
struct Run {
    outcomes: Vec<Outcome>,
    /// The states to store if the request counts.
    next: Vec<State>,
    /// How long they must live (ms).
    ttl: f64,
    /// Every policy of the key admitted the request.
    admitted: bool,
}

impl Run {
    fn new(ks: &mut Keyspace, key: &str, c: &Check<'_>, now: f64) -> Result<Self, Error> {
        let stored = match ks.get(key) {
            None => None,
            Some(Value::Bytes(b)) => Some(b.as_slice()),
            Some(_) => return Err(Error::wrong_type()),
        };
        let mut outcomes = Vec::with_capacity(c.policies.len());
        let mut next = Vec::with_capacity(c.policies.len());
        let mut ttl: f64 = 1.0;
        for (policy, state) in c.policies.iter().zip(decode(stored, c.policies.len())) {
            let (outcome, written, lives) = check(policy, state, now, c.cost as f64);
            outcomes.push(outcome);
            next.push(written);
            ttl = ttl.max(lives.ceil());
        }
        let admitted = outcomes.iter().all(|o| o.allowed);
        Ok(Run {
            outcomes,
            next,
            ttl,
            admitted,
        })
    }

    /// The key's decision: remaining and reset with the request when it
    /// counted, without it when not.
    fn decision(&self, counted: bool) -> Decision {
        let states = self
            .outcomes
            .iter()
            .map(|o| {
                let (remaining, reset) = if counted {
                    (o.remaining, o.reset_ms)
                } else {
                    (o.uncounted_remaining, o.uncounted_reset_ms)
                };
                PolicyState::new(
                    o.allowed,
                    remaining,
                    Duration::from_millis(reset),
                    Duration::from_millis(o.retry_ms),
                )
            })
            .collect();
        Decision::new(states)
    }
}
