//! The cache key: what a request's key line holds (host, path, query,
//! generation), the store key hashed from it (remembered per thread), and
//! the hash of the request fields a response varies on.

use http::header;
use http::header::HeaderName;
use http::HeaderMap;

use super::layout::{hash, hash_hex};

/// The URI a request's cache key is made of: the one the client sent.
/// Inside axum's `Router::nest` the request's own URI has lost the nest's
/// prefix (two nested routers would share entries); axum keeps the
/// original as `OriginalUri`.
pub(super) fn key_uri<B>(req: &http::Request<B>) -> &http::Uri {
    #[cfg(feature = "axum")]
    if let Some(original) = req.extensions().get::<axum::extract::OriginalUri>() {
        return &original.0;
    }
    req.uri()
}

/// The cache key of a request to `uri`: [`key_line`], hashed.
pub(super) fn cache_key(
    sort_query: bool,
    uri: &http::Uri,
    headers: &HeaderMap,
    generation: u64,
) -> String {
    hash_hex([key_line(sort_query, uri, headers, generation).as_slice()])
}

/// What a request's cache key hashes: host, path and query, one per line
/// (none of them can hold a line break, so the concatenation is
/// unambiguous; short keys fit one SHA-256 block), and after the first
/// purge of everything a last line with the generation. Not the scheme:
/// an HTTP/1 request usually carries none (origin-form) and an HTTP/2 one
/// its `:scheme` (`https` behind TLS), so one page would be two entries,
/// and a purge by URL would miss one of them. An application that
/// answers differently by scheme must not let those answers be stored.
pub(super) fn key_line(
    sort_query: bool,
    uri: &http::Uri,
    headers: &HeaderMap,
    generation: u64,
) -> Vec<u8> {
    let mut line = Vec::with_capacity(64 + uri.path().len());
    write_key_line(&mut line, sort_query, uri, headers, generation);
    line
}

/// Appends a request's [`key_line`] to `line`.
#[inline]
pub(super) fn write_key_line(
    line: &mut Vec<u8>,
    sort_query: bool,
    uri: &http::Uri,
    headers: &HeaderMap,
    generation: u64,
) {
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    line.extend_from_slice(b"GET\n");
    line.extend(host.bytes().map(|b| b.to_ascii_lowercase()));
    line.push(b'\n');
    line.extend_from_slice(uri.path().as_bytes());
    if let Some(query) = uri.query() {
        line.push(b'?');
        if sort_query {
            write_sorted_query(line, query);
        } else {
            line.extend_from_slice(query.as_bytes());
        }
    }
    if generation > 0 {
        line.extend_from_slice(b"\n#");
        line.extend_from_slice(itoa::Buffer::new().format(generation).as_bytes());
    }
}

/// Writes `query` with its parameters sorted.
#[inline(never)]
pub(super) fn write_sorted_query(line: &mut Vec<u8>, query: &str) {
    let mut pairs: Vec<&str> = query.split('&').collect();
    pairs.sort_unstable();
    line.extend_from_slice(pairs.join("&").as_bytes());
}

/// The store key of a key line (the first 128 bits of its SHA-256, in
/// hex): this thread's memory of it when the line was seen lately, else
/// computed (then remembered, when the line is at most [`MAX_LINE`]
/// long).
pub(super) fn store_key(line: &[u8]) -> String {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if let Some(key) = keys.get(line) {
            if let Ok(key) = std::str::from_utf8(key) {
                return key.to_owned();
            }
        }
        let key = hash_hex([line]);
        if let (Ok(hex), true) = (<[u8; 32]>::try_from(key.as_bytes()), line.len() <= MAX_LINE) {
            if keys.len() >= REMEMBERED_KEYS {
                // A thread seeing many lines (a crawl, a flood): start over.
                keys.clear();
            }
            keys.insert(line.into(), hex);
        }
        key
    })
}

/// The most key lines a thread remembers the store key of (with
/// [`MAX_LINE`], at most about 0.5 MiB).
pub(super) const REMEMBERED_KEYS: usize = 1024;

thread_local! {
    /// Key lines and their store keys: a pure function's results, never
    /// stale (the line names the generation), so the hash is computed
    /// once per line and thread while it stays in use.
    static KEYS: std::cell::RefCell<std::collections::HashMap<Box<[u8]>, [u8; 32], quick_cache::DefaultHashBuilder>> =
        std::cell::RefCell::new(std::collections::HashMap::default());
}

/// The hash of a request's values of the headers `names` (all zeros when
/// the response varies on nothing).
#[inline]
pub(super) fn vary_hash(names: &[HeaderName], headers: &HeaderMap) -> [u8; 16] {
    if names.is_empty() {
        return [0; 16];
    }
    vary_values_hash(names, headers)
}

/// [`vary_hash`] of a response that names some fields (kept out of line:
/// most hits name none).
#[inline(never)]
pub(super) fn vary_values_hash(names: &[HeaderName], headers: &HeaderMap) -> [u8; 16] {
    let mut values: Vec<Vec<u8>> = Vec::with_capacity(names.len() * 2);
    for name in names {
        values.push(name.as_str().as_bytes().to_vec());
        let mut all = headers.get_all(name).iter().peekable();
        if all.peek().is_none() {
            // Absent differs from empty.
            values.push(vec![0]);
            continue;
        }
        let mut joined = vec![1];
        for (i, v) in all.enumerate() {
            if i > 0 {
                joined.push(b',');
            }
            joined.extend_from_slice(v.as_bytes());
        }
        values.push(joined);
    }
    hash(values.iter().map(Vec::as_slice))
}

/// The longest key line a thread keeps a copy for.
pub(super) const MAX_LINE: usize = 512;
