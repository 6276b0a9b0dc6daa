//! How sessions are laid out, the same on Redis and in memory.
//!
//! - `{prefix}:session:{<handle>}:v2`: the session, **one string value**: a
//!   fixed 42-byte header followed by the fields as MessagePack. Its TTL is
//!   the session's expiry.
//! - `{prefix}:session-user:{<user>}`: the user's index of sessions (a
//!   sorted set on Redis, scored by each session's absolute deadline).
//!
//! The header is what the read path needs to decide, without Lua, whether
//! the expiry is due to slide; a touch rewrites bytes 2..18 in place
//! (`SETRANGE`):
//!
//! | bytes | field | meaning |
//! |---|---|---|
//! | 0..2 | `S1` | format and version |
//! | 2..10 | expires | the expiry set on the key, Unix ms |
//! | 10..18 | seen | when the session was last active, Unix ms |
//! | 18..26 | deadline | the absolute deadline, Unix ms |
//! | 26..34 | created | when the session was created, Unix ms |
//! | 34..42 | revision | saves so far (a renewal deletes the old record only at the revision it copied) |
//!
//! Each field is a big-endian IEEE 754 double holding a whole number below
//! 2^53 (exact): Lua's numbers are doubles, and Redis's bundled `struct`
//! library packs and unpacks them in C, several times faster than
//! formatting decimal text in Lua (measured: 0.45 µs against 1.8 µs per
//! save). A renewal replaces the old id's value, for ten seconds, with a
//! marker: `R1` and the successor's handle. The body is a MessagePack
//! map with `u` (user), `a` (user agent), `d` (a map of data key to JSON
//! text), `i` (the session's own idle timeout in ms, as decimal text) and
//! `p` (its own cookie persistence, `"1"` or `"0"`), each left out when
//! empty; an empty map may be written as an empty
//! array (what Lua's `cmsgpack` makes of an empty table). MessagePack
//! because Redis scripts read and write it natively (`cmsgpack`), so a save
//! can merge fields inside Redis, and the `rmp` crate reads it here without
//! an intermediate value tree. `record.lua` is the Lua side of this file.

use rmp::decode::{marker_to_len, read_marker, read_str_from_slice, Bytes as Reader};
use rmp::Marker;

use std::time::Duration;

use bytes::Bytes;

use super::data::SessionData;
use super::id::SessionHandle;
use super::store::{SaveMode, SaveRequest, SessionRecord};
use crate::error::Error;
use crate::keys::Namespace;
use crate::time::millis as ms;

/// `{prefix}:session:{<handle>}:v2`: the session's value. The suffix names
/// the layout, so instances running an older layout (a hash under the key
/// without it) and this one never read each other's keys as the wrong type.
pub(crate) fn session_key(ns: &Namespace, handle: &SessionHandle) -> String {
    ns.tagged_with_room("session", handle.as_str(), LAYOUT.len())
        .into_key(LAYOUT)
}

/// The layout version, the last part of every session key.
const LAYOUT: &str = "v2";

/// `{prefix}:session-user:{<user>}`: the user's index of sessions.
pub(crate) fn user_key(ns: &Namespace, user: &str) -> String {
    ns.tagged("session-user", user).into_base()
}

const MAGIC: &[u8; 2] = b"S1";
/// What a renewal leaves under the old id for a short while, followed by
/// the successor's handle (see
/// [`LoadOutcome::Renewed`](super::store::LoadOutcome::Renewed)).
pub(crate) const RENEWED: &[u8] = b"R1";

/// When `value` is a renewal's marker: the successor it names, if readable.
pub(crate) fn renewed(value: &[u8]) -> Option<Option<SessionHandle>> {
    let rest = value.strip_prefix(RENEWED)?;
    Some(
        std::str::from_utf8(rest)
            .ok()
            .and_then(SessionHandle::parse),
    )
}

/// The marker a renewal leaves: [`RENEWED`] and the successor's handle.
pub(crate) fn renewed_marker(successor: &SessionHandle) -> Vec<u8> {
    [RENEWED, successor.as_str().as_bytes()].concat()
}
/// Length of the header.
pub(crate) const HEADER_LEN: usize = 2 + 5 * 8;
/// The largest number a header field holds exactly (2^53).
const FIELD_MAX: u64 = 1 << 53;

/// The fixed header of a stored session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) expires_ms: u64,
    pub(crate) seen_ms: u64,
    pub(crate) deadline_ms: u64,
    pub(crate) created_ms: u64,
    pub(crate) revision: u64,
}

impl Header {
    /// Reads the header at the start of `raw` (a whole value, or only its
    /// first [`HEADER_LEN`] bytes).
    pub(crate) fn parse(raw: &[u8]) -> Result<Header, Error> {
        let unknown = || Error::decode("a stored session has an unknown format");
        if raw.len() < HEADER_LEN || &raw[..2] != MAGIC {
            return Err(unknown());
        }
        let field = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&raw[2 + i * 8..2 + (i + 1) * 8]);
            let n = f64::from_be_bytes(bytes);
            // A whole number in 0..=2^53, as this crate writes them.
            (n >= 0.0 && n <= FIELD_MAX as f64 && n.fract() == 0.0).then_some(n as u64)
        };
        match (field(0), field(1), field(2), field(3), field(4)) {
            (
                Some(expires_ms),
                Some(seen_ms),
                Some(deadline_ms),
                Some(created_ms),
                Some(revision),
            ) => Ok(Header {
                expires_ms,
                seen_ms,
                deadline_ms,
                created_ms,
                revision,
            }),
            _ => Err(unknown()),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        for n in [
            self.expires_ms,
            self.seen_ms,
            self.deadline_ms,
            self.created_ms,
            self.revision,
        ] {
            out.extend_from_slice(&(n.min(FIELD_MAX) as f64).to_be_bytes());
        }
    }

    /// The touch rule: the expiry a touch at `now_ms` would set,
    /// `min(now + idle, deadline)`, when that is later than the current
    /// expiry by more than `interval_ms`, or when `idle_ms` is the
    /// session's `own` idle timeout and the expiry was set with another
    /// (by an older version of the crate, which does not know it: then
    /// even earlier, so that the header says the session's timeout again;
    /// see [`idle_estimate`](Self::idle_estimate)); `None` when no touch is
    /// due. `touch.lua` applies the same rule. (A session without its own
    /// keeps the plain rule: instances with different layer settings
    /// sharing sessions must not undo each other's touches.)
    pub(crate) fn touch_target(
        &self,
        now_ms: u64,
        idle_ms: u64,
        own: bool,
        interval_ms: u64,
    ) -> Option<u64> {
        let target = now_ms.saturating_add(idle_ms).min(self.deadline_ms);
        let stale = own
            && self.expires_ms < self.deadline_ms
            && self.expires_ms.checked_sub(self.seen_ms) != Some(idle_ms);
        (target > now_ms && (target.saturating_sub(self.expires_ms) > interval_ms || stale))
            .then_some(target)
    }

    /// The idle timeout the expiry was last set with, read off the header
    /// alone: `expires - seen` when the expiry is not the deadline (a save
    /// or touch sets `expires = min(seen + idle, deadline)`), else
    /// `default_ms` (at the deadline, any idle timeout at least as long
    /// slides nothing). Exact for a session's own idle timeout as for the
    /// layer's, so a check of the header alone decides like a full load.
    pub(crate) fn idle_estimate(&self, default_ms: u64) -> u64 {
        if self.expires_ms < self.deadline_ms && self.expires_ms > self.seen_ms {
            self.expires_ms - self.seen_ms
        } else {
            default_ms
        }
    }

    /// Slides the expiry to `target`, as seen at `now_ms` (bytes 2..18).
    pub(crate) fn touch(&mut self, target: u64, now_ms: u64) {
        self.expires_ms = target;
        self.seen_ms = now_ms;
    }

    /// Writes the header over the first [`HEADER_LEN`] bytes of `value`.
    pub(crate) fn overwrite(&self, value: &mut [u8]) {
        let mut out = Vec::with_capacity(HEADER_LEN);
        self.write(&mut out);
        value[..HEADER_LEN].copy_from_slice(&out);
    }
}

/// Decodes a whole stored value. The data stays in `raw` (see
/// [`SessionData`]): it is checked here, and decoded as it is read.
pub(crate) fn decode(raw: Bytes) -> Result<(Header, SessionRecord), Error> {
    let header = Header::parse(&raw)?;
    Ok((header, record(&header, raw)?))
}

/// The record of a value whose header was parsed already.
pub(crate) fn record(header: &Header, raw: Bytes) -> Result<SessionRecord, Error> {
    let mut record = SessionRecord::new(header.created_ms, header.deadline_ms);
    record.last_seen_ms = header.seen_ms;
    record.revision = header.revision;
    let data = decode_body(&raw, &mut record)
        .ok_or_else(|| Error::decode("a stored session's fields could not be read"))?;
    if let Some((start, count)) = data {
        record.data = SessionData::packed(raw, start, count);
    }
    Ok(record)
}

/// Encodes a whole value (the memory store's side of `save.lua`).
pub(crate) fn encode(header: &Header, record: &SessionRecord) -> Vec<u8> {
    let data_len: usize = record
        .data
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum();
    let mut out = Vec::with_capacity(HEADER_LEN + 16 + data_len);
    header.write(&mut out);
    let idle = record.idle.map(|idle| ms(idle).to_string());
    let persistent = record
        .persistent
        .map(|p| if p { "1" } else { "0" }.to_owned());
    let entries = [
        record.user.is_some(),
        record.user_agent.is_some(),
        !record.data.is_empty(),
        idle.is_some(),
        persistent.is_some(),
    ];
    let count = entries.iter().filter(|e| **e).count() as u32;
    // Writes into a Vec cannot fail.
    let _ = rmp::encode::write_map_len(&mut out, count);
    for (name, value) in [
        ("u", &record.user),
        ("a", &record.user_agent),
        ("i", &idle),
        ("p", &persistent),
    ] {
        if let Some(value) = value {
            let _ = rmp::encode::write_str(&mut out, name);
            let _ = rmp::encode::write_str(&mut out, value);
        }
    }
    if !record.data.is_empty() {
        let _ = rmp::encode::write_str(&mut out, "d");
        let _ = rmp::encode::write_map_len(&mut out, record.data.len() as u32);
        for (key, json) in record.data.iter() {
            let _ = rmp::encode::write_str(&mut out, key);
            let _ = rmp::encode::write_str(&mut out, json);
        }
    }
    out
}

/// The length of a map (an empty array counts as an empty map).
fn map_len(rest: &mut &[u8]) -> Option<u32> {
    let mut rd = Reader::new(rest);
    let len = match read_marker(&mut rd).ok()? {
        Marker::FixArray(0) => 0,
        marker => marker_to_len(&mut rd, marker).ok()?,
    };
    *rest = rd.remaining_slice();
    Some(len)
}

/// The next MessagePack string (checked UTF-8).
pub(crate) fn text<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    let (s, tail) = read_str_from_slice(*rest).ok()?;
    *rest = tail;
    Some(s)
}

/// Reads the user and user agent into `record`, and checks the data map,
/// whose place it returns: its first entry's offset in `raw` and how many
/// entries it has (`None` when there is no data).
fn decode_body(raw: &[u8], record: &mut SessionRecord) -> Option<Option<(usize, usize)>> {
    let mut rest = &raw[HEADER_LEN..];
    let mut data = None;
    if rest.is_empty() {
        return Some(data);
    }
    for _ in 0..map_len(&mut rest)? {
        match text(&mut rest)? {
            "u" => record.user = Some(text(&mut rest)?.to_owned()),
            "a" => record.user_agent = Some(text(&mut rest)?.to_owned()),
            "i" => {
                let idle: u64 = text(&mut rest)?.parse().ok()?;
                record.idle = Some(Duration::from_millis(idle));
            }
            "p" => {
                record.persistent = match text(&mut rest)? {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => return None,
                }
            }
            "d" => {
                let count = map_len(&mut rest)? as usize;
                let start = raw.len() - rest.len();
                for _ in 0..count {
                    text(&mut rest)?;
                    text(&mut rest)?;
                }
                data = Some((start, count));
            }
            // A field a later version added: skipped, so that this
            // version still reads the session. (`save.lua` merges into the
            // stored body, so an update keeps it; a renewal, and the
            // memory store, write only the fields they know.)
            _ => skip(&mut rest, 0)?,
        }
    }
    rest.is_empty().then_some(data)
}

/// Skips one MessagePack value of a type Redis's `cmsgpack` reads back
/// (nil, booleans, numbers, strings, arrays and maps of these); `None`
/// when malformed, nested deeper than 16, or of a type it does not read
/// (bin, ext), which `save.lua` could not merge into.
fn skip(rest: &mut &[u8], depth: u8) -> Option<()> {
    let (&marker, tail) = rest.split_first()?;
    *rest = tail;
    let take = |rest: &mut &[u8], n: usize| -> Option<()> {
        *rest = rest.get(n..)?;
        Some(())
    };
    let len = |rest: &mut &[u8], n: usize| -> Option<usize> {
        let bytes = rest.get(..n)?;
        *rest = &rest[n..];
        Some(
            bytes
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b)),
        )
    };
    let values = |rest: &mut &[u8], n: usize| -> Option<()> {
        if depth >= 16 {
            return None;
        }
        (0..n).try_for_each(|_| skip(rest, depth + 1))
    };
    match marker {
        // positive and negative fixint, nil, false, true
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(()),
        0x80..=0x8f => values(rest, 2 * usize::from(marker & 0x0f)),
        0x90..=0x9f => values(rest, usize::from(marker & 0x0f)),
        0xa0..=0xbf => take(rest, usize::from(marker & 0x1f)),
        // str 8/16/32
        0xd9 => len(rest, 1).and_then(|n| take(rest, n)),
        0xda => len(rest, 2).and_then(|n| take(rest, n)),
        0xdb => len(rest, 4).and_then(|n| take(rest, n)),
        // float 32/64, uint 8..64, int 8..64
        0xca => take(rest, 4),
        0xcb => take(rest, 8),
        0xcc | 0xd0 => take(rest, 1),
        0xcd | 0xd1 => take(rest, 2),
        0xce | 0xd2 => take(rest, 4),
        0xcf | 0xd3 => take(rest, 8),
        // array 16/32, map 16/32
        0xdc => len(rest, 2).and_then(|n| values(rest, n)),
        0xdd => len(rest, 4).and_then(|n| values(rest, n)),
        0xde => len(rest, 2).and_then(|n| values(rest, n.checked_mul(2)?)),
        0xdf => len(rest, 4).and_then(|n| values(rest, n.checked_mul(2)?)),
        // bin and ext (cmsgpack cannot read them back), and 0xc1 (never
        // used)
        _ => None,
    }
}

/// Applies a save's changes to a record (the memory store's side of
/// `save.lua`): clear, then each data change (an empty JSON text removes,
/// as on Redis), then the user binding; the user agent on creation.
pub(crate) fn apply(record: &mut SessionRecord, request: &SaveRequest) {
    if let SaveMode::Create {
        user_agent: Some(ua),
        ..
    } = &request.mode
    {
        // (An empty one is none, as in `save.lua`.)
        record.user_agent = (!ua.is_empty()).then(|| ua.clone());
    }
    if request.clear {
        record.data.clear();
    }
    for (key, json) in &request.data {
        match json {
            Some(json) if !json.is_empty() => {
                record.data.insert(key.clone(), json.clone());
            }
            _ => {
                record.data.remove(key);
            }
        }
    }
    if let Some(user) = &request.user {
        record.user = user.clone();
    }
    if let Some(idle) = request.own_idle {
        record.idle = idle;
    }
    if let Some(persistent) = request.own_persistent {
        record.persistent = persistent;
    }
}

/// The idle timeout a session slides by: its own, else `default_ms` (the
/// layer's).
pub(crate) fn idle_ms(record: &SessionRecord, default_ms: u64) -> u64 {
    record.idle.map_or(default_ms, ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            expires_ms: 1_700_000_600_000,
            seen_ms: 1_700_000_000_000,
            deadline_ms: 1_700_028_800_000,
            created_ms: 1_699_999_000_000,
            revision: 7,
        }
    }

    #[test]
    fn a_record_round_trips() {
        let mut record = SessionRecord::new(1_699_999_000_000, 1_700_028_800_000);
        record.last_seen_ms = 1_700_000_000_000;
        record.revision = 7;
        record.user = Some("alice".into());
        record.user_agent = Some("Agent/1 (ü)".into());
        record.data.insert("cart".into(), "[1,2,3]".into());
        record.data.insert(String::new(), "\"\"".into());
        record.data.insert("long".into(), "x".repeat(70_000));
        record.idle = Some(Duration::from_secs(7 * 24 * 3600));
        record.persistent = Some(false);
        let raw = encode(&header(), &record);
        assert_eq!(&raw[..2], b"S1");
        assert_eq!(&raw[2..10], &1_700_000_600_000f64.to_be_bytes());
        assert_eq!(&raw[34..42], &7f64.to_be_bytes());
        let (h, back) = decode(Bytes::from(raw.clone())).unwrap();
        assert_eq!(h, header());
        assert_eq!(back, record);

        let empty = SessionRecord::new(5, 6);
        let (_, back) = decode(Bytes::from(encode(&header(), &empty))).unwrap();
        assert_eq!(back.data.len(), 0);
        assert_eq!(back.user, None);
    }

    #[test]
    fn what_lua_writes_is_read() {
        // cmsgpack packs an empty table as an empty array, and may order
        // keys any way.
        let mut raw = Vec::new();
        header().write(&mut raw);
        raw.push(0x90);
        let (_, r) = decode(Bytes::from(raw.clone())).unwrap();
        assert!(r.data.is_empty() && r.user.is_none());
        let mut raw = Vec::new();
        header().write(&mut raw);
        raw.extend_from_slice(&[
            0x82, 0xa1, b'd', 0x81, 0xa1, b'k', 0xa1, b'1', 0xa1, b'u', 0xa1, b'x',
        ]);
        let (_, r) = decode(Bytes::from(raw.clone())).unwrap();
        assert_eq!(r.user.as_deref(), Some("x"));
        assert_eq!(r.data.get("k"), Some("1"));
    }

    #[test]
    fn fields_a_later_version_adds_are_skipped() {
        // { z = { 1, { "x" = 1.5 }, nil, true }, u = "x", y = 300, w = -2 }
        let mut raw = Vec::new();
        header().write(&mut raw);
        raw.extend_from_slice(&[0x84, 0xa1, b'z', 0x94, 0x01, 0x81, 0xa1, b'x', 0xcb]);
        raw.extend_from_slice(&1.5f64.to_be_bytes());
        raw.extend_from_slice(&[0xc0, 0xc3, 0xa1, b'u', 0xa1, b'x']);
        raw.extend_from_slice(&[0xa1, b'y', 0xcd, 0x01, 0x2c, 0xa1, b'w', 0xfe]);
        let (_, r) = decode(Bytes::from(raw.clone())).unwrap();
        assert_eq!(r.user.as_deref(), Some("x"));
        // Cut anywhere: an error, never a panic.
        for end in HEADER_LEN..raw.len() {
            let _ = decode(Bytes::copy_from_slice(&raw[..end]));
        }
        // Nested too deep, or of a type cmsgpack cannot read: an error.
        for bad in [&[0x91; 20][..], &[0xc4, 0x01, 0x00], &[0xd4, 0x01, 0x00]] {
            let mut raw = Vec::new();
            header().write(&mut raw);
            raw.extend_from_slice(&[0x81, 0xa1, b'z']);
            raw.extend_from_slice(bad);
            raw.push(0xc0);
            assert!(decode(Bytes::from(raw)).is_err(), "{bad:x?}");
        }
    }

    #[test]
    fn malformed_values_are_decode_errors_not_panics() {
        let good = encode(&header(), &SessionRecord::new(1, 2));
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"S2".to_vec(),
            good[..HEADER_LEN - 1].to_vec(),
            [&good[..], &[0xc1]].concat(),
        ];
        for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY, 1e300] {
            let mut bad_field = good.clone();
            bad_field[10..18].copy_from_slice(&f64::to_be_bytes(bad));
            cases.push(bad_field);
        }
        let mut truncated = encode(&header(), &{
            let mut r = SessionRecord::new(1, 2);
            r.user = Some("someone".into());
            r
        });
        truncated.pop();
        cases.push(truncated);
        for case in &cases {
            assert_eq!(
                decode(Bytes::from(case.clone())).unwrap_err().kind(),
                crate::ErrorKind::Decode
            );
        }
        // Every prefix of a real value: an error or a value, never a panic.
        let mut full = SessionRecord::new(1, 2);
        full.user = Some("u".into());
        full.data.insert("a".into(), "1".into());
        let raw = encode(&header(), &full);
        for end in 0..raw.len() {
            let _ = decode(Bytes::copy_from_slice(&raw[..end]));
        }
    }

    #[test]
    fn the_touch_rule() {
        let h = header();
        let (idle, interval) = (600_000, 60_000);
        // Last set at seen + idle: not due until the interval has passed.
        assert_eq!(
            h.touch_target(h.seen_ms + 60_000, idle, false, interval),
            None
        );
        assert_eq!(
            h.touch_target(h.seen_ms + 60_001, idle, false, interval),
            Some(h.seen_ms + 60_001 + idle)
        );
        // Never past the deadline, and nothing to slide at the deadline.
        assert_eq!(
            h.touch_target(h.deadline_ms - 100_000, idle, false, interval),
            Some(h.deadline_ms)
        );
        let mut at_deadline = h;
        at_deadline.expires_ms = h.deadline_ms;
        assert_eq!(
            at_deadline.touch_target(h.deadline_ms - 1, idle, true, 0),
            None
        );
        // The session's own idle timeout, but the expiry was set with
        // another (an older version slid it by the layer's): due, even
        // when earlier, so the header says the session's timeout again.
        assert_eq!(
            h.touch_target(h.seen_ms + 1, 1_000, true, 0),
            Some(h.seen_ms + 1 + 1_000)
        );
        // The layer's idle timeout, set with another (instances with other
        // settings share the session): the plain rule.
        assert_eq!(h.touch_target(h.seen_ms + 1, 1_000, false, 0), None);
        assert_eq!(h.idle_estimate(5), idle, "expires - seen");
        let mut capped = h;
        capped.expires_ms = h.deadline_ms;
        assert_eq!(capped.idle_estimate(5), 5, "at the deadline: the default");
        assert_eq!(
            capped.touch_target(h.deadline_ms - 10, 1, true, 0),
            None,
            "nothing slides"
        );
        let mut odd = h;
        odd.expires_ms = h.seen_ms;
        assert_eq!(odd.idle_estimate(5), 5, "expires <= seen: the default");

        let mut raw = encode(&h, &SessionRecord::new(1, 2));
        let mut touched = h;
        touched.touch(h.expires_ms + 5, h.seen_ms + 5);
        touched.overwrite(&mut raw);
        assert_eq!(Header::parse(&raw).unwrap(), touched);
    }
}
