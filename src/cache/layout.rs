//! Where entries live and how they are encoded, the same on Redis and in
//! memory.
//!
//! Key: `{prefix}:cache:{<hash>}:e`, where `<hash>` is 32 hex digits of the
//! SHA-256 of the request's cache key (method, host, path and query: not
//! the scheme, which differs between HTTP/1 and HTTP/2), so nothing a client sends (a token in a query string) appears
//! in clear in Redis.
//!
//! A URL whose responses name header fields in `Vary` keeps each variant
//! under its own key, `{prefix}:cache:{<hash>}:v<variant>` (`<variant>`:
//! 32 hex digits, the hash of the request's values of those fields; the
//! same hash tag, so the same slot on a cluster). Its URL key then holds
//! a pointer instead of an entry: `"RLV1"`, then `u8 n, n × (u8 len,
//! name)`, the names `Vary` lists; and `{prefix}:cache:{<hash>}:vs`, a
//! sorted set, records each variant stored with the end of its place
//! (see the store's `store`). Through
//! the store seam a variant's key is the URL's 32 hex digits followed by
//! the variant's 32.
//!
//! Value: a compact binary entry, big-endian throughout:
//!
//! ```text
//! "RLC1"                 magic and version
//! u64 stored_at          Unix ms when stored (this instance's clock)
//! u64 initial_age        ms: the response's age when stored (RFC 9111 §4.2.3)
//! u64 lifetime           ms: its freshness lifetime (§4.2.1)
//! u64 swr, u64 sie       ms: stale-while-revalidate, stale-if-error
//! u8  flags              1: no-cache (revalidate before every use)
//!                        2: must-revalidate (never served stale)
//! u16 status
//! u8  n, n × (u8 len, name)   the header names `Vary` lists, lowercase
//! [u8; 16]               hash of the request's values of those headers
//! u16 m, m × (u8 len, name, u16 len, value)   the stored header fields
//! u8  t, t × (u8 len, tag)    the tags the response named
//! body                   the rest
//! ```

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::keys::Namespace;

const MAGIC: &[u8; 4] = b"RLC1";

/// Entry flag: revalidate before every use.
pub(crate) const NO_CACHE: u8 = 1;
/// Entry flag: never served stale.
pub(crate) const MUST_REVALIDATE: u8 = 2;

/// The entry keys that carry `tag`: `{prefix}:cache-tag:{<tag>}`, a sorted
/// set scored by when each entry is gone (Unix ms, plus a margin), which
/// lives as long as its last member. Its own slot: a purge reads it, then
/// removes each entry by key.
pub(crate) fn tag_key(ns: &Namespace, tag: &str) -> String {
    ns.tagged("cache-tag", tag).into_base()
}

/// The entry keys set aside for a purge of `tag` (the same form, and the
/// same slot as [`tag_key`]): `{prefix}:cache-tag:{<tag>}:purging`.
pub(crate) fn purge_key(ns: &Namespace, tag: &str) -> String {
    ns.tagged("cache-tag", tag).into_key("purging")
}

/// When the last purge of `tag` began (Unix ms, the same slot as
/// [`tag_key`]): `{prefix}:cache-tag:{<tag>}:purged`, kept for
/// [`FILL_HORIZON`](crate::cache::FILL_HORIZON).
pub(crate) fn purged_key(ns: &Namespace, tag: &str) -> String {
    ns.tagged("cache-tag", tag).into_key("purged")
}

/// `{prefix}:cache:{<url>}:<suffix>` for the URL of `key`, followed by the
/// variant's hex digits when `key` names one and `variant` is true.
fn url_key(ns: &Namespace, key: &str, suffix: &str, variant: bool) -> String {
    let (url, id) = split_key(key);
    let id = id.filter(|_| variant).unwrap_or("");
    let mut out = ns
        .tagged_with_room("cache", url, suffix.len() + 1 + id.len())
        .into_key(suffix);
    out.push_str(id);
    out
}

/// The fill lease of a request's cache key (same hash tag as its entry):
/// held by the instance asking the handler on a miss. A variant has its
/// own: `{prefix}:cache:{<hash>}:l<variant>`.
pub(crate) fn lease_key(ns: &Namespace, key: &str) -> String {
    url_key(ns, key, "l", true)
}

/// What every variant lease of the URL of `key` begins with.
pub(crate) fn variant_lease_prefix(ns: &Namespace, key: &str) -> String {
    url_key(ns, key, "l", false)
}

/// When the URL of `key` was last invalidated (Unix ms, Redis's clock),
/// kept for [`FILL_HORIZON`](crate::cache::FILL_HORIZON): a fill under a
/// variant's lease that began before it is not stored.
/// `{prefix}:cache:{<hash>}:i`.
pub(crate) fn invalidated_key(ns: &Namespace, key: &str) -> String {
    url_key(ns, key, "i", false)
}

/// The store key of a request's cache key (a URL's, or one variant's).
pub(crate) fn entry_key(ns: &Namespace, key: &str) -> String {
    match split_key(key).1 {
        None => url_key(ns, key, "e", false),
        Some(_) => url_key(ns, key, "v", true),
    }
}

/// What every variant key of the URL `key` begins with (the URL's entry
/// key with `v` in place of `e`).
pub(crate) fn variant_prefix(ns: &Namespace, key: &str) -> String {
    url_key(ns, key, "v", false)
}

/// The variants recorded for the URL of `key`, each with the end of its
/// place (Unix ms): `{prefix}:cache:{<hash>}:vs`.
pub(crate) fn variants_key(ns: &Namespace, key: &str) -> String {
    url_key(ns, key, "vs", false)
}

/// A store key's URL part, and its variant part when it names one: a
/// variant's key is 64 hex digits, the URL's 32 then the variant's.
pub(crate) fn split_key(key: &str) -> (&str, Option<&str>) {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        (&key[..32], Some(&key[32..]))
    } else {
        (key, None)
    }
}

/// The store key of the variant `variant` (the hash of a request's values
/// of the fields its response's `Vary` names) of the URL key `url`.
pub(crate) fn variant_key(url: &str, variant: &[u8; 16]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    out.push_str(split_key(url).0);
    for b in variant {
        let _ = write!(out, "{b:02x}");
    }
    out
}

const POINTER: &[u8; 4] = b"RLV1";

/// The length of a pointer's nonce (hex digits), which begins each of its
/// variants' values.
pub(crate) const NONCE: usize = 40;

/// The value a varying URL's key holds: the names its responses' `Vary`
/// lists (see the module docs). `None` when a name is too long.
pub(crate) fn encode_pointer(names: &[HeaderName]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(5 + names.len() * 16);
    out.extend_from_slice(POINTER);
    out.push(u8::try_from(names.len()).ok()?);
    for name in names {
        out.push(u8::try_from(name.as_str().len()).ok()?);
        out.extend_from_slice(name.as_str().as_bytes());
    }
    Some(out)
}

/// The names a pointer lists, or `None` when `raw` is not a pointer (as
/// stored, with its nonce after the names, or as [`encode_pointer`] made
/// it).
pub(crate) fn decode_pointer(raw: &[u8]) -> Option<Vec<HeaderName>> {
    let mut r = Reader { raw, at: 0 };
    if r.take(4)? != POINTER {
        return None;
    }
    let n = r.u8()?;
    let mut names = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let len = r.u8()?;
        names.push(HeaderName::from_bytes(r.take(usize::from(len))?).ok()?);
    }
    let rest = raw.len() - r.at;
    ((rest == 0 || rest == NONCE) && !names.is_empty()).then_some(names)
}

/// A variant's entry, as stored (`value`: its pointer's nonce, then the
/// entry), when the URL's key holds the pointer it was stored under
/// (`pointer`): a variant whose pointer went (an invalidation, other
/// names, an entry of the URL's own) is never used.
pub(crate) fn variant_entry(pointer: Option<&[u8]>, value: Option<Bytes>) -> Option<Bytes> {
    let (pointer, value) = (pointer?, value?);
    let nonce = pointer.get(pointer.len().checked_sub(NONCE)?..)?;
    (value.get(..NONCE)? == nonce).then(|| value.slice(NONCE..))
}

pub(crate) use crate::digest::hex_digest as hash_hex;

/// The first 16 bytes of [`digest_parts`](crate::digest::digest_parts).
pub(crate) fn hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 16] {
    let full = crate::digest::digest_parts(parts);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// A stored response and what the cache knows of it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) stored_at: u64,
    pub(crate) initial_age: u64,
    pub(crate) lifetime: u64,
    pub(crate) swr: u64,
    pub(crate) sie: u64,
    pub(crate) flags: u8,
    pub(crate) status: StatusCode,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) vary_hash: [u8; 16],
    pub(crate) headers: HeaderMap,
    pub(crate) tags: Vec<String>,
    pub(crate) body: Bytes,
}

impl Entry {
    /// The binary form (see the module docs); `None` when a name or value
    /// is too long for its length field.
    pub(crate) fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(64 + self.body.len() + 32 * self.headers.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.stored_at.to_be_bytes());
        out.extend_from_slice(&self.initial_age.to_be_bytes());
        out.extend_from_slice(&self.lifetime.to_be_bytes());
        out.extend_from_slice(&self.swr.to_be_bytes());
        out.extend_from_slice(&self.sie.to_be_bytes());
        out.push(self.flags);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.push(u8::try_from(self.vary.len()).ok()?);
        for name in &self.vary {
            out.push(u8::try_from(name.as_str().len()).ok()?);
            out.extend_from_slice(name.as_str().as_bytes());
        }
        out.extend_from_slice(&self.vary_hash);
        out.extend_from_slice(&u16::try_from(self.headers.len()).ok()?.to_be_bytes());
        for (name, value) in &self.headers {
            out.push(u8::try_from(name.as_str().len()).ok()?);
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&u16::try_from(value.len()).ok()?.to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.push(u8::try_from(self.tags.len()).ok()?);
        for tag in &self.tags {
            out.push(u8::try_from(tag.len()).ok()?);
            out.extend_from_slice(tag.as_bytes());
        }
        out.extend_from_slice(&self.body);
        Some(out)
    }

    /// Reads an entry; `None` for anything not written by `encode` (another
    /// version, a truncated or foreign value), which the cache then treats
    /// as a miss.
    pub(crate) fn decode(raw: Bytes) -> Option<Entry> {
        let mut r = Reader { raw: &raw, at: 0 };
        if r.take(4)? != MAGIC {
            return None;
        }
        let stored_at = r.u64()?;
        let initial_age = r.u64()?;
        let lifetime = r.u64()?;
        let swr = r.u64()?;
        let sie = r.u64()?;
        let flags = r.u8()?;
        let status = StatusCode::from_u16(r.u16()?).ok()?;
        let n = r.u8()?;
        let mut vary = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let len = r.u8()?;
            vary.push(HeaderName::from_bytes(r.take(usize::from(len))?).ok()?);
        }
        let mut vary_hash = [0u8; 16];
        vary_hash.copy_from_slice(r.take(16)?);
        let m = r.u16()?;
        // Room for the fields an answer adds (`Age`, `Cache-Status`,
        // `Content-Length`).
        let mut headers = HeaderMap::with_capacity(usize::from(m) + 3);
        for _ in 0..m {
            let len = r.u8()?;
            let name = HeaderName::from_bytes(r.take(usize::from(len))?).ok()?;
            let len = usize::from(r.u16()?);
            r.take(len)?;
            // A view of the stored bytes, not a copy.
            let value = HeaderValue::from_maybe_shared(raw.slice(r.at - len..r.at)).ok()?;
            headers.append(name, value);
        }
        let t = r.u8()?;
        let mut tags = Vec::with_capacity(usize::from(t));
        for _ in 0..t {
            let len = r.u8()?;
            tags.push(String::from_utf8(r.take(usize::from(len))?.to_vec()).ok()?);
        }
        let at = r.at;
        Some(Entry {
            stored_at,
            initial_age,
            lifetime,
            swr,
            sie,
            flags,
            status,
            vary,
            vary_hash,
            headers,
            tags,
            body: raw.slice(at..),
        })
    }
}

struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.raw.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-many", HeaderValue::from_static("a"));
        headers.append("x-many", HeaderValue::from_static("b"));
        Entry {
            stored_at: 1_764_230_400_000,
            initial_age: 1_500,
            lifetime: 60_000,
            swr: 5_000,
            sie: 9_000,
            flags: MUST_REVALIDATE,
            status: StatusCode::NOT_FOUND,
            vary: vec![HeaderName::from_static("accept-encoding")],
            vary_hash: [7; 16],
            headers,
            tags: vec!["product:7".into(), "list".into()],
            body: Bytes::from_static(b"hello\x00world"),
        }
    }

    #[test]
    fn entries_round_trip() {
        let e = sample();
        let back = Entry::decode(Bytes::from(e.encode().unwrap())).unwrap();
        assert_eq!(back.stored_at, e.stored_at);
        assert_eq!(back.initial_age, e.initial_age);
        assert_eq!(back.lifetime, e.lifetime);
        assert_eq!((back.swr, back.sie), (e.swr, e.sie));
        assert_eq!(back.flags, e.flags);
        assert_eq!(back.status, e.status);
        assert_eq!(back.vary, e.vary);
        assert_eq!(back.vary_hash, e.vary_hash);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.tags, e.tags);
        assert_eq!(back.body, e.body);
    }

    #[test]
    fn foreign_or_truncated_values_are_not_entries() {
        let raw = sample().encode().unwrap();
        for cut in [0, 3, 10, 30, 40, 50, 60, 70] {
            assert!(
                Entry::decode(Bytes::copy_from_slice(&raw[..cut])).is_none(),
                "{cut}"
            );
        }
        assert!(Entry::decode(Bytes::from_static(b"RLC2whatever")).is_none());
        assert!(Entry::decode(Bytes::from_static(b"")).is_none());
    }

    #[test]
    fn a_tag_and_its_purge_share_a_slot() {
        let ns = Namespace::new("app").unwrap();
        assert_eq!(tag_key(&ns, "product-7"), "app:cache-tag:{product-7}");
        assert_eq!(
            purge_key(&ns, "product-7"),
            "app:cache-tag:{product-7}:purging"
        );
        // A tag cannot close the hash tag early and meet another's keys.
        assert_eq!(tag_key(&ns, "a}:purging"), "app:cache-tag:{a%7D:purging}");
    }

    #[test]
    fn a_urls_variants_share_its_slot() {
        let ns = Namespace::new("app").unwrap();
        let url = "0123456789abcdef0123456789abcdef";
        let key = variant_key(url, &[0xab; 16]);
        assert_eq!(key.len(), 64);
        assert_eq!(split_key(&key), (url, Some(&key[32..])));
        assert_eq!(split_key(url), (url, None));
        assert_eq!(
            entry_key(&ns, &key),
            format!("app:cache:{{{url}}}:v{}", "ab".repeat(16))
        );
        assert!(entry_key(&ns, &key).starts_with(&variant_prefix(&ns, url)));
        assert_eq!(
            lease_key(&ns, &key),
            format!("app:cache:{{{url}}}:l{}", "ab".repeat(16))
        );
        assert_eq!(lease_key(&ns, url), format!("app:cache:{{{url}}}:l"));
        assert_eq!(invalidated_key(&ns, &key), format!("app:cache:{{{url}}}:i"));
        assert_eq!(variants_key(&ns, &key), format!("app:cache:{{{url}}}:vs"));
        // Not 64 hex digits: a key of its own, as any other.
        let odd = "g".repeat(64);
        assert_eq!(split_key(&odd), (odd.as_str(), None));
    }

    #[test]
    fn pointers_round_trip_and_are_not_entries() {
        let names = vec![
            HeaderName::from_static("accept-encoding"),
            HeaderName::from_static("accept-language"),
        ];
        let raw = encode_pointer(&names).unwrap();
        assert_eq!(decode_pointer(&raw), Some(names));
        assert!(Entry::decode(Bytes::from(raw.clone())).is_none());
        assert!(decode_pointer(&raw[..raw.len() - 1]).is_none());
        assert!(decode_pointer(&sample().encode().unwrap()).is_none());
        assert!(decode_pointer(&encode_pointer(&[]).unwrap()).is_none());
        // As stored: with a nonce, which each variant's value begins with.
        let nonce = "a".repeat(NONCE);
        let stored = [raw.as_slice(), nonce.as_bytes()].concat();
        assert!(decode_pointer(&stored).is_some());
        let value = Bytes::from([nonce.as_bytes(), b"entry"].concat());
        assert_eq!(
            variant_entry(Some(&stored), Some(value.clone())).as_deref(),
            Some(&b"entry"[..])
        );
        let other = [raw.as_slice(), "b".repeat(NONCE).as_bytes()].concat();
        assert_eq!(variant_entry(Some(&other), Some(value.clone())), None);
        assert_eq!(variant_entry(None, Some(value.clone())), None);
        assert_eq!(variant_entry(Some(&stored), None), None);
        assert_eq!(variant_entry(Some(b"RLC1..."), Some(value)), None);
        // The pointer's bytes are the layer's: the store compares nonces.
    }

    #[test]
    fn keys_hide_what_they_hash() {
        let ns = Namespace::new("app").unwrap();
        let h = hash_hex([b"GET".as_slice(), b"/?token=secret"]);
        let key = entry_key(&ns, &h);
        assert_eq!(key, format!("app:cache:{{{h}}}:e"));
        assert!(!key.contains("secret"));
        assert_eq!(h.len(), 32);
        // Length prefixes: moving a byte between parts changes the hash.
        assert_ne!(h, hash_hex([b"GET/".as_slice(), b"?token=secret"]));
    }
}
