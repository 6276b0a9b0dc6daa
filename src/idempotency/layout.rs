//! Where records live and how they are encoded, the same on Redis and in
//! memory (`record.lua` reads the same layout).
//!
//! Keys, one hash tag per record: `{prefix}:idem:{<hash>}:r` (the record)
//! and `{prefix}:idem:{<hash>}:n` (its fencing-token counter), where `<hash>`
//! is 32 hex digits of SHA-256 over the scope, method, route and the
//! client's key, so no client key or scope appears in clear.
//!
//! Record, big-endian:
//!
//! ```text
//! "RLI1"
//! u8  state             1 in flight, 2 complete, 3 complete but its
//!                       response too large to keep
//! u64 holder            who claimed it: unique per claim, so renew,
//!                       complete and release act only for their own
//!                       claim (the fencing token is the counter's)
//! [u8; 32] fingerprint  of the request (method, path, query, type, body)
//! -- complete only:
//! u16 status
//! u16 n, n × (u8 len, name, u16 len, value)   the replayed headers
//! body                  the rest
//! ```

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::keys::Namespace;

const MAGIC: &[u8; 4] = b"RLI1";
const IN_FLIGHT: u8 = 1;
const COMPLETE: u8 = 2;
const UNRETAINED: u8 = 3;

/// The record and counter keys of a record hash.
pub(crate) fn keys(ns: &Namespace, hash: &str) -> (String, String) {
    let tagged = ns.tagged("idem", hash);
    (tagged.key("r"), tagged.key("n"))
}

/// The record key of a record hash alone (what most calls touch).
pub(crate) fn record_key(ns: &Namespace, hash: &str) -> String {
    ns.tagged_with_room("idem", hash, 2).into_key("r")
}

pub(crate) use crate::digest::{digest_parts as digest, hex_digest as hash_hex};

/// A holder id as the record and the scripts hold it.
pub(crate) fn holder_bytes(holder: u64) -> [u8; 8] {
    holder.to_be_bytes()
}

/// A new holder id: unique per claim. A random base per process plus a
/// counter, so ids never repeat within a process, and two processes' ids
/// collide with a chance of about one in 2^64 per pair.
pub(crate) fn new_holder() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the operating system's random source.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A stored response, to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    InFlight {
        holder: u64,
        fingerprint: [u8; 32],
    },
    Complete {
        fingerprint: [u8; 32],
        response: Stored,
    },
    /// Completed, but the response was not kept (too large).
    Unretained {
        fingerprint: [u8; 32],
    },
}

/// An in-flight record: its [`claim_mark`], then the fingerprint.
pub(crate) fn in_flight(holder: u64, fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(45);
    out.extend_from_slice(&claim_mark(holder));
    out.extend_from_slice(fingerprint);
    out
}

/// How an in-flight record of `holder` begins: the claim's owner mark as
/// a lease (see [`crate::lease`]): renewing, releasing and fencing a
/// claim are the lease module's, acting only while the record begins so.
/// A completed record never does (its state byte differs).
pub(crate) fn claim_mark(holder: u64) -> [u8; 13] {
    let mut out = [0u8; 13];
    out[..4].copy_from_slice(MAGIC);
    out[4] = IN_FLIGHT;
    out[5..].copy_from_slice(&holder_bytes(holder));
    out
}

/// A completed record; `None` when a header is too long for its field.
pub(crate) fn complete(holder: u64, fingerprint: &[u8; 32], response: &Stored) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(64 + response.body.len());
    out.extend_from_slice(MAGIC);
    out.push(COMPLETE);
    out.extend_from_slice(&holder_bytes(holder));
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(&response.status.as_u16().to_be_bytes());
    out.extend_from_slice(&u16::try_from(response.headers.len()).ok()?.to_be_bytes());
    for (name, value) in &response.headers {
        out.push(u8::try_from(name.as_str().len()).ok()?);
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&u16::try_from(value.len()).ok()?.to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&response.body);
    Some(out)
}

/// A completed record whose response was not kept.
pub(crate) fn unretained(holder: u64, fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut out = in_flight(holder, fingerprint);
    out[4] = UNRETAINED;
    out
}

/// The holder of a completed record (kept or not); `None` for any other
/// bytes.
pub(crate) fn completed_by(raw: &[u8]) -> Option<u64> {
    if raw.get(..4)? != MAGIC || !matches!(raw.get(4)?, &COMPLETE | &UNRETAINED) {
        return None;
    }
    Some(u64::from_be_bytes(raw.get(5..13)?.try_into().ok()?))
}

/// Whether `raw` is an in-flight record (without decoding the rest).
pub(crate) fn is_in_flight(raw: &[u8]) -> bool {
    raw.get(..4) == Some(MAGIC) && raw.get(4) == Some(&IN_FLIGHT)
}

/// Reads a record; `None` for anything else. Header values and the body
/// share `raw`'s buffer (no copy).
pub(crate) fn decode(raw: &Bytes) -> Option<Record> {
    let mut c = Cursor { raw, at: 0 };
    if c.take(4)? != MAGIC {
        return None;
    }
    let state = c.take(1)?[0];
    let holder = u64::from_be_bytes(c.take(8)?.try_into().ok()?);
    let fingerprint: [u8; 32] = c.take(32)?.try_into().ok()?;
    match state {
        IN_FLIGHT => Some(Record::InFlight {
            holder,
            fingerprint,
        }),
        UNRETAINED => Some(Record::Unretained { fingerprint }),
        COMPLETE => {
            let status = StatusCode::from_u16(c.u16()?).ok()?;
            let n = c.u16()?;
            let mut headers = HeaderMap::with_capacity(usize::from(n));
            for _ in 0..n {
                let len = usize::from(c.take(1)?[0]);
                let name = HeaderName::from_bytes(c.take(len)?).ok()?;
                let len = usize::from(c.u16()?);
                let value = HeaderValue::from_maybe_shared(c.shared(len)?).ok()?;
                headers.append(name, value);
            }
            let body = raw.slice(c.at..);
            Some(Record::Complete {
                fingerprint,
                response: Stored {
                    status,
                    headers,
                    body,
                },
            })
        }
        _ => None,
    }
}

/// Reads a record front to back.
struct Cursor<'a> {
    raw: &'a Bytes,
    at: usize,
}

impl<'a> Cursor<'a> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let raw: &'a [u8] = self.raw;
        let out = raw.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    /// The next `n` bytes, sharing the record's buffer.
    fn shared(&mut self, n: usize) -> Option<Bytes> {
        let from = self.at;
        self.take(n)?;
        Some(self.raw.slice(from..self.at))
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let fp = [9u8; 32];
        let raw = Bytes::from(in_flight(41, &fp));
        assert_eq!(
            decode(&raw),
            Some(Record::InFlight {
                holder: 41,
                fingerprint: fp
            })
        );
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("location", HeaderValue::from_static("/orders/7"));
        let response = Stored {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"{\"id\":7}"),
        };
        let raw = Bytes::from(complete(42, &fp, &response).unwrap());
        assert_eq!(
            decode(&raw),
            Some(Record::Complete {
                fingerprint: fp,
                response
            })
        );
        let raw2 = Bytes::from(unretained(43, &fp));
        assert_eq!(decode(&raw2), Some(Record::Unretained { fingerprint: fp }));
        for cut in [0, 4, 5, 12, 44, 46, 48] {
            assert_eq!(decode(&raw.slice(..cut)), None, "{cut}");
        }
        assert_eq!(decode(&Bytes::from_static(b"garbage")), None);
    }

    #[test]
    fn holder_ids_do_not_repeat() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| new_holder()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn keys_share_a_tag_and_hide_their_inputs() {
        let ns = Namespace::new("app").unwrap();
        let h = hash_hex([b"user:1".as_slice(), b"POST", b"/orders", b"secret-key"]);
        let (r, n) = keys(&ns, &h);
        assert_eq!(r, format!("app:idem:{{{h}}}:r"));
        assert_eq!(record_key(&ns, &h), r);
        assert_eq!(n, format!("app:idem:{{{h}}}:n"));
        assert!(!r.contains("secret"));
        assert_ne!(
            h,
            hash_hex([b"user:2".as_slice(), b"POST", b"/orders", b"secret-key"])
        );
    }
}
