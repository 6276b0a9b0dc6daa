//! [`RateLimitStore`] for [`RedisBackend`]: one `check.lua` call per
//! request, for all of its keys and policies (on a cluster, one per run of
//! keys sharing a hash tag).

use std::time::Duration;

use super::layout::state_key;
use super::policy::Policy;
use super::store::{Check, Decision, PolicyState, RateLimitStore};
use crate::error::Error;
use crate::redis::{script, RedisBackend, Script};

static CHECK: Script = script!("rate-limit-check", "check.lua");

impl RateLimitStore for RedisBackend {
    async fn check(&self, key: &str, policies: &[Policy], cost: u64) -> Result<Decision, Error> {
        let reply: Vec<u8> = self
            .script(&CHECK)
            .key(state_key(self.namespace(), key, policies))
            .arg(cost)
            .arg(params(policies))
            .invoke()
            .await?;
        let (_, mut decisions) = decode(&reply, &[Check::new(key, policies, cost)])?;
        decisions
            .pop()
            .ok_or_else(|| Error::decode("the rate-limit script's reply is empty"))
    }

    async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        #[cfg(feature = "cluster")]
        if self.is_cluster() {
            // Keys of one script must share a slot: one script per run of
            // checks with the same hash tag, in order, until one refuses.
            let mut decisions = Vec::with_capacity(checks.len());
            let mut rest = checks;
            while let Some(first) = rest.first() {
                let len = rest
                    .iter()
                    .take_while(|c| super::layout::tag(c.key) == super::layout::tag(first.key))
                    .count();
                let (run, after) = rest.split_at(len);
                let (admitted, part) = self.check_run(run).await?;
                decisions.extend(part);
                if !admitted {
                    break;
                }
                rest = after;
            }
            return Ok(decisions);
        }
        let (_, decisions) = self.check_run(checks).await?;
        Ok(decisions)
    }
}

impl RedisBackend {
    /// `checks` in one script call (their keys must share a slot on a
    /// cluster): whether every gating check admitted the request, and each
    /// check's decision.
    async fn check_run(&self, checks: &[Check<'_>]) -> Result<(bool, Vec<Decision>), Error> {
        let mut call = self.script(&CHECK);
        let mut gates = Vec::with_capacity(checks.len());
        for c in checks {
            call = call
                .key(state_key(self.namespace(), c.key, c.policies))
                .arg(c.cost)
                .arg(params(c.policies));
            gates.push(if c.gates() { b'1' } else { b'0' });
        }
        let reply: Vec<u8> = call.arg(gates).invoke().await?;
        decode(&reply, checks)
    }
}

/// The policies as the script reads them: four doubles each (all below
/// 2^53, so exact).
fn params(policies: &[Policy]) -> Vec<u8> {
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
    params
}

/// The script's reply: doubles, see `check.lua`. Whether every gating
/// check admitted the request, and each check's decision.
fn decode(reply: &[u8], checks: &[Check<'_>]) -> Result<(bool, Vec<Decision>), Error> {
    let policies: usize = checks.iter().map(|c| c.policies.len()).sum();
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
    let mut at = 2;
    let decisions = checks
        .iter()
        .map(|c| {
            let states = c
                .policies
                .iter()
                .map(|_| {
                    let state = PolicyState::new(
                        number(at) == 1.0,
                        number(at + 1).max(0.0) as u64,
                        ms(number(at + 2)),
                        ms(number(at + 3)),
                    );
                    at += 4;
                    state
                })
                .collect();
            Decision::new(states)
        })
        .collect();
    Ok((number(0) == 1.0, decisions))
}
