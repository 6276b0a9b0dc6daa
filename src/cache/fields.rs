//! Response fields and numbers: what is never stored, `Cache-Status`
//! (RFC 9211), the tag header, `Age`, `Content-Length` and the `ttl` of a
//! hit.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::layout::Entry;

/// The `Cache-Status` field (RFC 9211).
pub(super) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Headers that describe one connection, never stored (RFC 9111 §3.1).
pub(super) const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Fields a 304 must not change in the stored response (RFC 9111 §3.2).
pub(super) const KEEP_ON_UPDATE: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
];

/// Fields no entry keeps: connection-specific ones, `Set-Cookie`, `Age`
/// (worked out on each hit) and `Cache-Status`.
pub(super) fn never_stored(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || name == header::SET_COOKIE
        || name == header::AGE
        || name == CACHE_STATUS
}

/// Request fields that make a request conditional or partial.
pub(super) const CONDITIONAL: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// The most tags one response may carry, and the longest tag.
pub(super) const MAX_TAGS: usize = 32;

pub(super) const MAX_TAG_LEN: usize = 128;

/// The tags a response names in the tag header (comma-separated), which
/// is removed from it: tags are for the cache, not for clients. Empty,
/// overlong or non-text tags are dropped, and at most [`MAX_TAGS`] kept.
pub(super) fn take_tags(headers: &mut HeaderMap, name: &HeaderName) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for value in headers.get_all(name) {
        let Ok(text) = value.to_str() else { continue };
        for tag in text.split(',').map(str::trim) {
            if !tag.is_empty() && tag.len() <= MAX_TAG_LEN && !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_owned());
            }
        }
    }
    headers.remove(name);
    tags.truncate(MAX_TAGS);
    tags
}

/// `Cache-Status` for this cache: `<name>; <params...>` (the parameters
/// concatenated; one allocation of the exact size).
pub(super) fn status_field(name: &str, params: &[&str]) -> HeaderValue {
    let len = name.len() + 2 + params.iter().map(|p| p.len()).sum::<usize>();
    let mut field = String::with_capacity(len);
    field.push_str(name);
    field.push_str("; ");
    for p in params {
        field.push_str(p);
    }
    HeaderValue::try_from(field).unwrap_or_else(|_| HeaderValue::from_static("redis-layers"))
}

pub(super) fn with_status<B>(mut res: Response<B>, name: &str, params: &str) -> Response<B> {
    res.headers_mut()
        .insert(CACHE_STATUS, status_field(name, &[params]));
    res
}

/// The `ttl` parameter of a hit: whole seconds of freshness left
/// (negative when stale).
#[inline]
pub(super) fn ttl_secs(entry: &Entry, age: u64) -> i64 {
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ms(entry.lifetime).saturating_sub(ms(age)).div_euclid(1000)
}

/// [`ttl_secs`], formatted in `buf`.
pub(super) fn ttl_of<'a>(buf: &'a mut itoa::Buffer, entry: &Entry, age: u64) -> &'a str {
    buf.format(ttl_secs(entry, age))
}

/// Sets `Content-Length` to the stored body's length, unless the stored
/// response has one or may not (a 204, RFC 9110 §8.6); a `HEAD` gets the
/// length its `GET` has.
pub(super) fn set_content_length(headers: &mut HeaderMap, status: StatusCode, len: usize) {
    if status != StatusCode::NO_CONTENT && !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, number_value(len as u64));
    }
}

/// A field value holding the number `n` (`Age`, `Content-Length`).
pub(super) fn number_value(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}
