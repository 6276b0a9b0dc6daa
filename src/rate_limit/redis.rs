//! [`RateLimitStore`] for [`RedisBackend`]: one `check.lua` call per
//! request, for all of its policies.

use std::time::Duration;

use super::layout::state_key;
use super::policy::Policy;
use super::store::{Decision, PolicyState, RateLimitStore};
use crate::error::Error;
use crate::redis::{script, RedisBackend, Script};

static CHECK: Script = script!("rate-limit-check", "check.lua");

impl RateLimitStore for RedisBackend {
    async fn check(&self, key: &str, policies: &[Policy], cost: u64) -> Result<Decision, Error> {
        // The policies as the script reads them: four doubles each (all
        // below 2^53, so exact).
        let mut params = Vec::with_capacity(32 * policies.len());
        for policy in policies {
            for x in [
                f64::from(policy.algorithm().code()),
                policy.quota() as f64,
                policy.window_ms() as f64,
                policy.burst_size() as f64,
            ] {
                params.extend_from_slice(&x.to_be_bytes());
            }
        }
        let reply: Vec<u8> = self
            .script(&CHECK)
            .key(state_key(self.namespace(), key, policies))
            .arg(cost)
            .arg(params)
            .invoke()
            .await?;
        decode(&reply, policies.len())
    }
}

/// The script's reply: doubles, see `check.lua`.
fn decode(reply: &[u8], policies: usize) -> Result<Decision, Error> {
    if reply.len() != (2 + 4 * policies) * 8 {
        return Err(Error::decode(
            "the rate-limit script's reply has the wrong length",
        ));
    }
    let number = |i: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&reply[i * 8..i * 8 + 8]);
        f64::from_be_bytes(bytes)
    };
    let ms = |v: f64| Duration::from_millis(v.max(0.0) as u64);
    let states = (0..policies)
        .map(|p| {
            let at = 2 + 4 * p;
            PolicyState::new(
                number(at) == 1.0,
                number(at + 1).max(0.0) as u64,
                ms(number(at + 2)),
                ms(number(at + 3)),
            )
        })
        .collect();
    Ok(Decision::new(states))
}
