//! The cache key: what a request's key line holds (host, path, query,
//! generation), the store key hashed from it (remembered per thread), and
//! the hash of the request fields a response varies on.

use std::sync::Arc;

use http::header;
use http::header::HeaderName;
use http::HeaderMap;

use super::layout::{hash, hash_hex};

/// A function adding to a request's cache key (see
/// [`CacheLayerBuilder::key_extra`](crate::cache::CacheLayerBuilder::key_extra)).
pub(super) type KeyFn =
    Arc<dyn Fn(&HeaderMap, &http::Extensions) -> Option<String> + Send + Sync + 'static>;

/// How a layer makes its keys, beyond host, path and query.
#[derive(Clone, Default)]
pub(super) struct KeyRules {
    /// The query's parameters sorted.
    pub(super) sort_query: bool,
    /// Query parameters left out (by name, as sent).
    pub(super) ignored_params: Vec<String>,
    /// What the application adds, from the request.
    pub(super) extra: Option<KeyFn>,
}

impl KeyRules {
    /// What the application adds to `req`'s key, if anything.
    #[inline]
    pub(super) fn extra_of<B>(&self, req: &http::Request<B>) -> Option<String> {
        self.extra
            .as_ref()
            .and_then(|f| f(req.headers(), req.extensions()))
    }
}

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
    rules: &KeyRules,
    uri: &http::Uri,
    headers: &HeaderMap,
    extra: Option<&str>,
    generation: u64,
) -> String {
    hash_hex([key_line(rules, uri, headers, extra, generation).as_slice()])
}

/// What a request's cache key hashes: host, path and query, one per line
/// (none of them can hold a line break, so the concatenation is
/// unambiguous; short keys fit one SHA-256 block), and after the first
/// purge of everything a last line with the generation. Not the scheme:
/// an HTTP/1 request usually carries none (origin-form) and an HTTP/2 one
/// its `:scheme` (`https` behind TLS), so one page would be two entries,
/// and a purge by URL would miss one of them. An application that
/// answers differently by scheme must not let those answers be stored.
/// What the application adds (`extra`) comes before the generation,
/// length first (it may hold anything).
pub(super) fn key_line(
    rules: &KeyRules,
    uri: &http::Uri,
    headers: &HeaderMap,
    extra: Option<&str>,
    generation: u64,
) -> Vec<u8> {
    let mut line = Vec::with_capacity(64 + uri.path().len());
    write_key_line(&mut line, rules, uri, headers, extra, generation);
    line
}

/// Appends a request's [`key_line`] to `line`.
#[inline]
pub(super) fn write_key_line(
    line: &mut Vec<u8>,
    rules: &KeyRules,
    uri: &http::Uri,
    headers: &HeaderMap,
    extra: Option<&str>,
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
        if rules.sort_query || !rules.ignored_params.is_empty() {
            write_query(line, query, rules);
        } else {
            line.push(b'?');
            line.extend_from_slice(query.as_bytes());
        }
    }
    if let Some(extra) = extra {
        line.extend_from_slice(b"\n+");
        line.extend_from_slice(itoa::Buffer::new().format(extra.len()).as_bytes());
        line.push(b':');
        line.extend_from_slice(extra.as_bytes());
    }
    if generation > 0 {
        line.extend_from_slice(b"\n#");
        line.extend_from_slice(itoa::Buffer::new().format(generation).as_bytes());
    }
}

/// Writes `?` and `query` as `rules` ask: without the ignored parameters,
/// and sorted; nothing when every parameter is ignored (the key of the
/// URL without a query, which an invalidation or a purge by URL names).
#[inline(never)]
pub(super) fn write_query(line: &mut Vec<u8>, query: &str, rules: &KeyRules) {
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
            !rules.ignored_params.iter().any(|p| p == name)
        })
        .collect();
    if rules.sort_query {
        pairs.sort_unstable();
    }
    if pairs.is_empty() && !rules.ignored_params.is_empty() {
        return;
    }
    line.push(b'?');
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(rules: &KeyRules, uri: &str, extra: Option<&str>) -> String {
        let uri: http::Uri = uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "Shop.Example".parse().unwrap());
        String::from_utf8(key_line(rules, &uri, &headers, extra, 0)).unwrap()
    }

    #[test]
    fn ignored_parameters_leave_the_key_and_the_rest_keep_their_order() {
        let rules = KeyRules {
            ignored_params: vec!["utm_source".into(), "fbclid".into()],
            ..KeyRules::default()
        };
        assert_eq!(
            line(&rules, "/p?b=2&utm_source=x&a=1&fbclid", None),
            "GET\nshop.example\n/p?b=2&a=1"
        );
        assert_eq!(
            line(&rules, "/p?utm_source=x", None),
            line(&rules, "/p", None),
            "the page's own key"
        );
        // A name that only begins like an ignored one stays.
        assert_eq!(
            line(&rules, "/p?utm_sourced=1", None),
            "GET\nshop.example\n/p?utm_sourced=1"
        );
        let sorted = KeyRules {
            sort_query: true,
            ..rules
        };
        assert_eq!(
            line(&sorted, "/p?b=2&utm_source=x&a=1", None),
            "GET\nshop.example\n/p?a=1&b=2"
        );
    }

    #[test]
    fn what_the_application_adds_cannot_pass_for_anything_else() {
        let rules = KeyRules::default();
        assert_eq!(
            line(&rules, "/p", Some("acme")),
            "GET\nshop.example\n/p\n+4:acme"
        );
        // An added part that looks like a generation line is still its own.
        let uri: http::Uri = "/p".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "h".parse().unwrap());
        let a = key_line(&rules, &uri, &headers, Some("x\n#5"), 0);
        let b = key_line(&rules, &uri, &headers, Some("x"), 5);
        assert_ne!(a, b);
        assert_ne!(line(&rules, "/p", Some("")), line(&rules, "/p", None));
    }
}
