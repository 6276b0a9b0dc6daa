//! [`RateLimitStore`] for [`MemoryBackend`]: the same states, keys and
//! arithmetic as on Redis (`policy::check`), under the backend's lock.

use std::time::Duration;

use super::layout::{decode, encode, policy_key};
use super::policy::{check, Policy};
use super::store::{Decision, PolicyState, RateLimitStore};
use crate::error::{Error, ErrorKind};
use crate::memory::{MemoryBackend, Value};

impl RateLimitStore for MemoryBackend {
    async fn check(&self, key: &str, policies: &[Policy], cost: u64) -> Result<Decision, Error> {
        let keys: Vec<String> = policies
            .iter()
            .map(|p| policy_key(self.namespace(), key, p))
            .collect();
        self.atomically(|ks| {
            let now = ks.now_millis() as f64;
            let mut outcomes = Vec::with_capacity(policies.len());
            let mut writes = Vec::with_capacity(policies.len());
            for (policy, key) in policies.iter().zip(&keys) {
                let stored = match ks.get(key) {
                    None => None,
                    Some(Value::Bytes(b)) => Some(b.as_slice()),
                    Some(_) => {
                        return Err(Error::new(
                            ErrorKind::Server,
                            "WRONGTYPE Operation against a key holding the wrong kind of value",
                        ))
                    }
                };
                let (outcome, next, ttl) = check(policy, decode(stored), now, cost as f64);
                outcomes.push(outcome);
                writes.push((next, ttl));
            }
            // All or nothing: when any policy refuses, none counts the
            // request, and each reports its state without it.
            let allowed = outcomes.iter().all(|o| o.allowed);
            let states = outcomes
                .iter()
                .map(|o| {
                    let (remaining, reset) = if allowed {
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
            let decision = Decision::new(states);
            if allowed {
                for (key, (next, ttl)) in keys.iter().zip(writes) {
                    let ttl = Duration::from_millis((ttl.ceil() as u64).max(1));
                    ks.set(key, Value::Bytes(encode(&next)), Some(ttl))?;
                }
            }
            Ok(decision)
        })
    }
}
