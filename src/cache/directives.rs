//! `Cache-Control` directives (RFC 9111 §5.2), parsed by hand.
//!
//! The `headers` crate's `CacheControl` was the first choice, but for a
//! shared cache it falls short where it matters: `private="Set-Cookie"` and
//! `no-cache="..."` (the qualified forms) are dropped as unknown, so such a
//! response would look public; names are matched case-sensitively; one bad
//! value (`max-age=soon`) fails the whole header; and the RFC 5861
//! extensions are not read. Here every form is kept, a bad value is read
//! the way RFC 9111 §4.2.1 and §1.2.2 ask (an invalid freshness value means
//! stale; delta-seconds past 2^31 mean 2^31), and unknown directives are
//! ignored.

use http::header::{HeaderName, CACHE_CONTROL};
use http::HeaderMap;

/// The largest delta-seconds value the RFC asks caches to handle (§1.2.2).
const MAX_DELTA: u64 = 1 << 31;

/// The directives of every `Cache-Control` field of a message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    /// `no-cache`, qualified or not (both mean "revalidate" to this cache).
    pub(crate) no_cache: bool,
    /// `private`, qualified or not (a shared cache stores neither).
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    /// `must-understand` (RFC 9111 §5.2.2.3).
    pub(crate) must_understand: bool,
    /// A `Cache-Control` line that is not text: read as `no-store`, and
    /// never overridden (it may have said `private`).
    pub(crate) unreadable: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) only_if_cached: bool,
    /// `Some(0)` when the value is invalid: the response is then stale.
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    /// `max-stale` without a value accepts any staleness.
    pub(crate) max_stale: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
}

/// What the cache makes of the `Cache-Control` a *client* sends on a
/// request (`no-cache`, `max-age`, `min-fresh`, `max-stale`).
///
/// RFC 9111 §5.2.1 lets a client say it *prefers* a fresher answer;
/// honouring that sends each such request past the cache, and browsers send
/// `no-cache` on every hard reload, so any client could push the whole load
/// of a popular page onto the handler at will. Most reverse proxies
/// therefore ignore these by default, and so does this cache. `no-store`
/// (the client's privacy) and `only-if-cached` (which never reaches the
/// handler) are always honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RequestDirectives {
    /// Treat `no-cache`, `max-age`, `min-fresh` and `max-stale` on requests
    /// as absent (the default): the response's own freshness decides.
    #[default]
    Ignore,
    /// Follow them as RFC 9111 describes for a shared cache. Concurrent
    /// requests that refuse the stored response still run the handler
    /// once per key at a time: they share one fetch, and any response
    /// stored after such a request arrived satisfies it.
    Honour,
}

/// A handler's word on storing its response, over what the response's
/// fields say: put it in the response's extensions.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::cache::CacheOverride;
///
/// async fn prices() -> impl axum::response::IntoResponse {
///     // Browsers may not keep it (no-store), but this cache keeps it a
///     // minute, whatever the fields say.
///     (
///         [("cache-control", "no-store")],
///         axum::Extension(CacheOverride::Store(Duration::from_secs(60))),
///         "prices",
///     )
/// }
/// ```
///
/// It applies to a full response the handler gives (a miss, a refresh)
/// and to a 304 or a `HEAD` answer that would update a stored response
/// (there [`Forbid`](Self::Forbid) keeps the stored one as it was).
/// [`Store`](Self::Store) overrides what the response says of freshness
/// and `no-store`, never what makes it one user's: a response that says
/// `private`, answers a request with `Authorization` without calling
/// itself shareable (`public`, `s-maxage`, `must-revalidate` in its own
/// fields), sets a cookie (unless
/// [`strip_set_cookie`](crate::cache::CacheLayerBuilder::strip_set_cookie)),
/// varies on `*`, or comes from a handler that read the session is not
/// stored; nor is a status the cache never stores (1xx, 206, 304, or one
/// outside [`only_statuses`](crate::cache::CacheLayerBuilder::only_statuses)),
/// nor an answer to a request with `no-store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOverride {
    /// Store it, fresh for this long (whole seconds, within the layer's
    /// [`min_ttl`](crate::cache::CacheLayerBuilder::min_ttl) and
    /// [`max_ttl`](crate::cache::CacheLayerBuilder::max_ttl)): as if it
    /// said `Cache-Control: public, max-age=<seconds>` to this cache
    /// alone. The client gets the fields the handler set.
    Store(std::time::Duration),
    /// Never store it.
    Forbid,
}

impl Directives {
    /// A request's directives, under `policy`.
    #[inline]
    pub(crate) fn of_request(headers: &HeaderMap, policy: RequestDirectives) -> Self {
        let mut d = Directives::of(headers);
        if policy == RequestDirectives::Ignore {
            d.no_cache = false;
            d.max_age = None;
            d.min_fresh = None;
            d.max_stale = None;
        }
        d
    }

    /// Every `Cache-Control` field of `headers`; an unreadable field (not
    /// visible ASCII) reads as `no-store`, the safe side.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            match value.to_str() {
                Ok(text) => d.read(text),
                Err(_) => {
                    d.no_store = true;
                    d.unreadable = true;
                }
            }
        }
        d
    }

    /// What a handler's [`CacheOverride::Store`](crate::cache::CacheOverride::Store)
    /// means: `public, max-age=<seconds>`.
    pub(crate) fn forced(seconds: u64) -> Self {
        Directives {
            public: true,
            max_age: Some(seconds.min(MAX_DELTA)),
            ..Directives::default()
        }
    }

    /// The directives of the targeted field `name` (RFC 9213 §2.1), or
    /// `None` when `headers` has no valid, non-empty value of it (absent,
    /// not text, not a Structured Fields Dictionary, or empty): the field
    /// is then ignored. Parsed with the `sfv` crate (RFC 9651), as the RFC
    /// asks; a member that is an inner list is not a directive and is
    /// skipped, as are unknown names.
    pub(crate) fn of_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut text = String::new();
        for (i, line) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(line.to_str().ok()?);
        }
        let dictionary: sfv::Dictionary = sfv::Parser::new(&text).parse().ok()?;
        if dictionary.is_empty() {
            return None;
        }
        let mut d = Directives::default();
        for (key, member) in &dictionary {
            let sfv::ListEntry::Item(item) = member else {
                continue;
            };
            // A flag is set unless its value is `?0`; seconds are a
            // non-negative Integer (anything else: invalid, so stale).
            let set = item.bare_item.as_boolean() != Some(false);
            let seconds = item
                .bare_item
                .as_integer()
                .and_then(|n| u64::try_from(i64::from(n)).ok())
                .map_or(0, |n| n.min(MAX_DELTA));
            match key.as_str() {
                "no-store" => d.no_store |= set,
                "no-cache" => d.no_cache |= set,
                "private" => d.private |= set,
                "public" => d.public |= set,
                "must-revalidate" => d.must_revalidate |= set,
                "must-understand" => d.must_understand |= set,
                "proxy-revalidate" => d.proxy_revalidate |= set,
                "max-age" => d.max_age = Some(seconds),
                "s-maxage" => d.s_maxage = Some(seconds),
                "stale-while-revalidate" => d.stale_while_revalidate = Some(seconds),
                "stale-if-error" => d.stale_if_error = Some(seconds),
                _ => {}
            }
        }
        Some(d)
    }

    // Out of line: most requests carry no `Cache-Control`.
    #[inline(never)]
    fn read(&mut self, text: &str) {
        for item in split_outside_quotes(text) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            let seconds = || value.map_or(Some(0), parse_delta);
            match name.to_ascii_lowercase().as_str() {
                "no-store" => self.no_store = true,
                "no-cache" => self.no_cache = true,
                "private" => self.private = true,
                "public" => self.public = true,
                "must-revalidate" => self.must_revalidate = true,
                "must-understand" => self.must_understand = true,
                "proxy-revalidate" => self.proxy_revalidate = true,
                "only-if-cached" => self.only_if_cached = true,
                // Invalid values make the response stale (max-age=0); of
                // duplicates, the first counts (RFC 9111 §4.2.1).
                "max-age" => {
                    self.max_age = self.max_age.or(Some(seconds().unwrap_or(0)));
                }
                "s-maxage" => {
                    self.s_maxage = self.s_maxage.or(Some(seconds().unwrap_or(0)));
                }
                "min-fresh" => self.min_fresh = seconds().or(self.min_fresh),
                "max-stale" => {
                    self.max_stale = match value {
                        None => Some(u64::MAX),
                        Some(v) => parse_delta(v).or(self.max_stale),
                    }
                }
                // As for max-age, the first of duplicates counts.
                "stale-while-revalidate" => {
                    self.stale_while_revalidate = self
                        .stale_while_revalidate
                        .or_else(|| value.and_then(parse_delta));
                }
                "stale-if-error" => {
                    self.stale_if_error =
                        self.stale_if_error.or_else(|| value.and_then(parse_delta));
                }
                _ => {}
            }
        }
    }
}

/// An `Age` header's seconds (RFC 9111 §5.1): of a list (one line with
/// commas, or several lines), the first member; delta-seconds, so digits
/// only (no sign, no fraction), capped at 2^31; `None`, and the header
/// ignored, when that member is anything else.
pub(crate) fn age_seconds(headers: &HeaderMap) -> Option<u64> {
    let first = headers.get(http::header::AGE)?.to_str().ok()?;
    let value = first.split(',').next().unwrap_or_default().trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA))
}

/// delta-seconds: digits only (a quoted value is tolerated, as RFC 9111
/// §5.2 asks of recipients), capped at 2^31.
fn parse_delta(value: &str) -> Option<u64> {
    let value = value.trim_matches('"');
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA))
}

/// Splits on commas that are not inside a quoted string
/// (`private="a, b", max-age=5` is two directives).
fn split_outside_quotes(text: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(values: &[&str]) -> Directives {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        Directives::of(&h)
    }

    #[test]
    fn qualified_forms_count() {
        let d = parse(&[r#"private="Set-Cookie, X-Foo", max-age=60"#]);
        assert!(d.private);
        assert_eq!(d.max_age, Some(60));
        assert!(parse(&[r#"no-cache="Set-Cookie""#]).no_cache);
    }

    #[test]
    fn names_are_case_insensitive_and_fields_combine() {
        let d = parse(&["Public, S-MaxAge=10", "NO-STORE"]);
        assert!(d.public && d.no_store);
        assert_eq!(d.s_maxage, Some(10));
    }

    #[test]
    fn bad_values_read_safely() {
        assert_eq!(parse(&["max-age=soon"]).max_age, Some(0), "invalid: stale");
        assert_eq!(parse(&["max-age=-5"]).max_age, Some(0));
        assert_eq!(parse(&["max-age=\"30\""]).max_age, Some(30));
        assert_eq!(
            parse(&["max-age=999999999999999999999999"]).max_age,
            Some(MAX_DELTA)
        );
        assert_eq!(parse(&["max-stale"]).max_stale, Some(u64::MAX));
        assert_eq!(parse(&["min-fresh=x"]).min_fresh, None);
        assert_eq!(
            parse(&["stale-while-revalidate=30, stale-if-error=600"]),
            Directives {
                stale_while_revalidate: Some(30),
                stale_if_error: Some(600),
                ..Directives::default()
            }
        );
        assert_eq!(parse(&[",, ,unknown-thing=1"]), Directives::default());
        let mut h = HeaderMap::new();
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"max-age=5\xff").unwrap(),
        );
        assert!(Directives::of(&h).no_store, "unreadable: do not store");
    }

    fn targeted(values: &[&str]) -> Option<Directives> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("cdn-cache-control", v.parse().unwrap());
        }
        Directives::of_targeted(&h, &HeaderName::from_static("cdn-cache-control"))
    }

    #[test]
    fn rfc9213_2_1_a_targeted_field_is_a_dictionary_or_ignored() {
        let d = targeted(&["max-age=60, private=\"set-cookie\"", "no-cache"]).unwrap();
        assert_eq!(d.max_age, Some(60));
        assert!(d.private && d.no_cache && !d.no_store);
        // Not a dictionary, empty, absent: ignored.
        assert_eq!(targeted(&["max-age=60, =x"]), None);
        assert_eq!(targeted(&["Max-Age=60"]), None, "keys are lowercase");
        assert_eq!(targeted(&[""]), None);
        assert_eq!(targeted(&[]), None);
        // Of duplicate keys the last counts (a dictionary's rule).
        assert_eq!(
            targeted(&["max-age=60, max-age=5"]).unwrap().max_age,
            Some(5)
        );
        // Invalid seconds mean stale; large ones are capped; `?0` unsets.
        assert_eq!(targeted(&["max-age=-1"]).unwrap().max_age, Some(0));
        assert_eq!(targeted(&["max-age=\"60\""]).unwrap().max_age, Some(0));
        assert_eq!(
            targeted(&["s-maxage=999999999999"]).unwrap().s_maxage,
            Some(MAX_DELTA)
        );
        let d = targeted(&["no-store=?0, max-age=9;x=1, foo=(a b)"]).unwrap();
        assert!(!d.no_store);
        assert_eq!(d.max_age, Some(9), "parameters do not change the value");
    }
}
