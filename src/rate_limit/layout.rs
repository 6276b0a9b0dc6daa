//! Where rate-limit state lives, the same on Redis and in memory:
//! `{prefix}:rl:{<client key>}:<policy>`, one value per policy per client
//! (three big-endian doubles), every key of a client in one hash tag.

use super::policy::{Policy, State};
use crate::keys::Namespace;

/// The state key of `policy` for the client `key`.
pub(crate) fn policy_key(ns: &Namespace, key: &str, policy: &Policy) -> String {
    ns.tagged("rl", key).key(policy.name())
}

/// A stored state; zeros when absent or unreadable (a fresh start).
pub(crate) fn decode(value: Option<&[u8]>) -> State {
    let mut state = [0.0; 3];
    if let Some(value) = value.filter(|v| v.len() == 24) {
        for (n, chunk) in state.iter_mut().zip(value.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *n = f64::from_be_bytes(bytes);
        }
    }
    state
}

/// A state to store.
pub(crate) fn encode(state: &State) -> Vec<u8> {
    state.iter().flat_map(|n| n.to_be_bytes()).collect()
}
