//! The records an [`IdempotencyStore`](super::IdempotencyStore) keeps, as
//! much of them as a store of your own must read.
//!
//! The layer encodes records and reads them back; a store keeps them as
//! opaque bytes, with two exceptions. A [claim](super::IdempotencyStore::claim)
//! writes the in-flight record itself ([`in_flight`]), and every call made
//! for a holder (extend, fence, complete, release) acts only when the
//! record there is that holder's ([`state`]).
//!
//! A store's whole decision, for a key holding `raw` (or nothing):
//!
//! | call | acts when | answers |
//! |---|---|---|
//! | `claim` | nothing is there: writes `in_flight(holder, fingerprint)` for the lease | `Claimed`; else `Taken { record: raw }` |
//! | `extend`, `release` | `state(raw)` is `InFlight { holder }` | true; else false, nothing changed |
//! | `fence` | `state(raw)` is `InFlight { holder }`: counts the key's token | the token; else `None`, nothing counted |
//!
//! The fencing-token counter lives beside the record, not in it: it
//! outlives a release or a completion (for `counter_ttl` past its last
//! count), so the next claim's tokens are higher still.
//! | `complete` | nothing is there, or `InFlight { holder }`: writes the record | true; also true, writing nothing, on `Completed { holder }`; else false |
//!
//! ```
//! use redis_layers::idempotency::record::{self, State};
//!
//! let raw = record::in_flight(7, &[0; 32]);
//! assert_eq!(record::state(&raw), Some(State::InFlight { holder: 7 }));
//! assert_eq!(record::state(b"not a record"), None);
//! ```

use super::layout;

/// What a stored record says about who wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// A claim that is running: `holder` may extend, fence, complete or
    /// release it.
    InFlight {
        /// The claim's holder id.
        holder: u64,
    },
    /// A finished request's record (its response kept, or too large to
    /// keep), written by `holder`'s completion.
    Completed {
        /// The holder id of the claim that completed it.
        holder: u64,
    },
}

/// The in-flight record a [claim](super::IdempotencyStore::claim) by
/// `holder` writes, for a request with this `fingerprint`.
pub fn in_flight(holder: u64, fingerprint: &[u8; 32]) -> Vec<u8> {
    layout::in_flight(holder, fingerprint)
}

/// What `raw` is; `None` when it is not a record of this crate's (a
/// store that finds one under a key should report it as taken, as the
/// layer then answers the request with a clear error rather than run it).
pub fn state(raw: &[u8]) -> Option<State> {
    if layout::is_in_flight(raw) {
        let holder = raw.get(5..13)?.try_into().ok().map(u64::from_be_bytes)?;
        return Some(State::InFlight { holder });
    }
    layout::completed_by(raw).map(|holder| State::Completed { holder })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    #[test]
    fn states_name_their_holder() {
        assert_eq!(
            state(&in_flight(u64::MAX, &[9; 32])),
            Some(State::InFlight { holder: u64::MAX })
        );
        let response = layout::Stored {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"done"),
        };
        let done = layout::complete(42, &[1; 32], &response).unwrap();
        assert_eq!(state(&done), Some(State::Completed { holder: 42 }));
        // Truncated or foreign bytes are no record.
        assert_eq!(state(&in_flight(1, &[0; 32])[..8]), None);
        assert_eq!(state(b""), None);
        assert_eq!(state(b"RLI1\x09aaaaaaaa"), None);
    }
}
