//! [`RateLimitStore`] for [`MemoryBackend`]: the same states, keys and
//! arithmetic as on Redis (`policy::check`), under the backend's lock.

use std::time::Duration;

use super::layout::{decode, encode, state_key};
use super::policy::{check, Policy};
use super::store::{Decision, PolicyState, RateLimitStore};
use crate::error::Error;
use crate::memory::{MemoryBackend, Value};

impl RateLimitStore for MemoryBackend {
    async fn check(&self, key: &str, policies: &[Policy], cost: u64) -> Result<Decision, Error> {
        let key = state_key(self.namespace(), key, policies);
        self.atomically(|ks| {
            let now = ks.now_millis() as f64;
            let stored = match ks.get(&key) {
                None => None,
                Some(Value::Bytes(b)) => Some(b.as_slice()),
                Some(_) => return Err(Error::wrong_type()),
            };
            let mut outcomes = Vec::with_capacity(policies.len());
            let mut next = Vec::with_capacity(policies.len());
            let mut ttl: f64 = 1.0;
            for (policy, state) in policies.iter().zip(decode(stored, policies.len())) {
                let (outcome, written, lives) = check(policy, state, now, cost as f64);
                outcomes.push(outcome);
                next.push(written);
                ttl = ttl.max(lives.ceil());
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
                let ttl = Duration::from_millis(ttl as u64);
                ks.set(&key, Value::Bytes(encode(&next)), Some(ttl))?;
            }
            Ok(decision)
        })
    }
}
