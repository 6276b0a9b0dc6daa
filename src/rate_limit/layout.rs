//! Where rate-limit state lives, the same on Redis and in memory: one
//! value per key per set of policies. The caller's key is split at its
//! first `|` (the layer's are `<rule>|<who>`): `{prefix}:rl:{<who>}:<rule>:<set>`,
//! or `{prefix}:rl:{<key>}:<set>` for a key without `|`, where `<set>` is
//! the hex fingerprint of the policies (names, algorithms and numbers, in
//! order). The client, not the rule, is the hash tag: one client's states
//! under several rules share a Redis Cluster slot, so they can be checked
//! in one script. The value is three big-endian doubles per policy, in
//! order. One value means one read and one write per check whatever the
//! number of policies; the fingerprint means a changed configuration
//! starts from fresh state instead of misreading the old one.

use super::policy::{Policy, State, FNV_OFFSET, FNV_PRIME};
use crate::keys::Namespace;

/// Bytes of one policy's state.
pub(crate) const STATE_LEN: usize = 24;

/// The hash tag of `key`: what follows its first `|`, else all of it.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) fn tag(key: &str) -> &str {
    key.split_once('|').map_or(key, |(_, who)| who)
}

/// The state key of `policies` for the client `key`.
pub(crate) fn state_key(ns: &Namespace, key: &str, policies: &[Policy]) -> String {
    let set = policies.iter().fold(FNV_OFFSET, |hash, p| {
        (hash ^ p.fingerprint()).wrapping_mul(FNV_PRIME)
    });
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((set >> (60 - 4 * i)) & 15) as usize];
    }
    let hex = std::str::from_utf8(&hex).unwrap_or("0");
    match key.split_once('|') {
        // `:<rule>:<set>`: a rule name may hold anything but, after the
        // tag's closing brace, cannot move the tag; and the set, 16 hex
        // digits, never holds a `:`, so no two keys meet.
        Some((rule, who)) => {
            let mut suffix = String::with_capacity(rule.len() + 17);
            suffix.push_str(rule);
            suffix.push(':');
            suffix.push_str(hex);
            ns.tagged_with_room("rl", who, suffix.len() + 1)
                .into_key(&suffix)
        }
        None => ns.tagged_with_room("rl", key, 17).into_key(hex),
    }
}

/// The stored states of `n` policies; zeros (a fresh start) when absent
/// or not of that shape.
pub(crate) fn decode(value: Option<&[u8]>, n: usize) -> Vec<State> {
    let mut states = vec![[0.0; 3]; n];
    if let Some(value) = value.filter(|v| v.len() == STATE_LEN * n) {
        for (state, chunk) in states.iter_mut().zip(value.chunks_exact(STATE_LEN)) {
            for (x, bytes) in state.iter_mut().zip(chunk.chunks_exact(8)) {
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                *x = f64::from_be_bytes(be);
            }
        }
    }
    states
}

/// States to store.
pub(crate) fn encode(states: &[State]) -> Vec<u8> {
    states
        .iter()
        .flatten()
        .flat_map(|x| x.to_be_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_client_and_the_policy_set() {
        let ns = Namespace::new("app").unwrap();
        let a = [Policy::per_second(5).named("a")];
        let key = state_key(&ns, "r|ip:192.0.2.1", &a);
        assert!(key.starts_with("app:rl:{ip:192.0.2.1}:r:"), "{key}");
        assert_eq!(key.len(), "app:rl:{ip:192.0.2.1}:r:".len() + 16);
        assert_eq!(key, state_key(&ns, "r|ip:192.0.2.1", &a), "stable");
        // Another rule, the same client: the same tag, another key.
        let other = state_key(&ns, "s|ip:192.0.2.1", &a);
        assert!(other.starts_with("app:rl:{ip:192.0.2.1}:s:"), "{other}");
        // Keys without a rule, or with a `|` in the client, stay apart.
        let keys = [
            state_key(&ns, "ip:192.0.2.1", &a),
            state_key(&ns, "|ip:192.0.2.1", &a),
            state_key(&ns, "r|ip:192.0.2.1|x", &a),
            state_key(&ns, "r|ip:192.0.2.1", &a),
        ];
        assert!(keys[0].starts_with("app:rl:{ip:192.0.2.1}:"), "{keys:?}");
        for (i, k) in keys.iter().enumerate() {
            assert!(!keys[i + 1..].contains(k), "{keys:?}");
        }
        assert_eq!(tag("r|ip:192.0.2.1|x"), "ip:192.0.2.1|x");
        assert_eq!(tag("ip:192.0.2.1"), "ip:192.0.2.1");
        // Any change to the set is another key.
        for other in [
            vec![Policy::per_second(6).named("a")],
            vec![Policy::per_second(5).named("b")],
            vec![Policy::per_second(5).named("a").burst(2)],
            vec![Policy::per_second(5).named("a").fixed_window()],
            vec![Policy::per_second(5).named("a"), Policy::per_hour(9)],
        ] {
            assert_ne!(key, state_key(&ns, "r|ip:192.0.2.1", &other), "{other:?}");
        }
        // Order matters too.
        let ab = [
            Policy::per_second(1).named("a"),
            Policy::per_second(1).named("b"),
        ];
        let ba = [
            Policy::per_second(1).named("b"),
            Policy::per_second(1).named("a"),
        ];
        assert_ne!(state_key(&ns, "c", &ab), state_key(&ns, "c", &ba));
    }

    #[test]
    fn states_round_trip_and_bad_shapes_start_fresh() {
        let states = vec![[1.5, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let bytes = encode(&states);
        assert_eq!(bytes.len(), 48);
        assert_eq!(decode(Some(&bytes), 2), states);
        assert_eq!(decode(Some(&bytes), 3), vec![[0.0; 3]; 3]);
        assert_eq!(decode(Some(b"garbage"), 1), vec![[0.0; 3]]);
        assert_eq!(decode(None, 1), vec![[0.0; 3]]);
    }
}
