//! RFC 9111 as a shared cache reads it: whether a response may be stored
//! (§3), for how long it is fresh (§4.2.1), how old it is (§4.2.3), and
//! whether a stored response may answer a request (§4.2, §5.2.1).

use std::time::SystemTime;

use http::header::{
    HeaderName, AUTHORIZATION, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY,
};
use http::{HeaderMap, StatusCode};

use super::directives::Directives;
use super::layout::{Entry, MUST_REVALIDATE, NO_CACHE};

/// Heuristic freshness is this fraction of the time since Last-Modified
/// (RFC 9111 §4.2.2 suggests 10%)...
const HEURISTIC_FRACTION: u64 = 10;
/// ...and at most a day.
const HEURISTIC_MAX_MS: u64 = 86_400_000;

/// Status codes RFC 9110 §15.1 calls heuristically cacheable.
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Final status codes whose caching requirements this cache implements
/// (the ones RFC 9110 defines), for `must-understand`: all but 206 and 304,
/// which it never stores (it does not combine partial or updated
/// responses).
pub(crate) fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 300..=303 | 305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// What the layer's settings add to the RFC.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// When set, only responses with these statuses are stored.
    pub(crate) only_statuses: Option<Vec<StatusCode>>,
    /// Freshness for a storable response that states none, in ms.
    pub(crate) default_ttl: Option<u64>,
    /// Store responses with `Set-Cookie`, without that header.
    pub(crate) strip_set_cookie: bool,
    /// stale-while-revalidate (ms) for responses that do not say.
    pub(crate) stale_while_revalidate: Option<u64>,
    /// stale-if-error (ms) for responses that do not say.
    pub(crate) stale_if_error: Option<u64>,
    /// How long (ms) a stale response with a validator is kept, to be
    /// revalidated rather than fetched again.
    pub(crate) keep_stale: u64,
    /// The targeted fields this cache obeys (RFC 9213), first first.
    pub(crate) targeted: Vec<HeaderName>,
    /// Bounds (ms) on every stored response's freshness lifetime.
    pub(crate) min_ttl: Option<u64>,
    pub(crate) max_ttl: Option<u64>,
}

/// Why a response is not stored (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshness,
    NoCache,
}

/// How a storable response is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keep {
    pub(crate) lifetime: u64,
    pub(crate) initial_age: u64,
    pub(crate) flags: u8,
    /// stale-while-revalidate and stale-if-error windows, ms.
    pub(crate) swr: u64,
    pub(crate) sie: u64,
    /// How long (ms) the store keeps the entry: its remaining freshness
    /// plus the longest window in which a stale copy is still of use.
    pub(crate) retention: u64,
}

/// Whether a stale `entry`, `age` ms old, may be served while it is
/// refreshed in the background (RFC 5861 §3).
pub(crate) fn serve_while_revalidating(entry: &Entry, age: u64) -> bool {
    let strict = entry.flags & (MUST_REVALIDATE | NO_CACHE) != 0;
    !strict && age.saturating_sub(entry.lifetime) < entry.swr
}

/// [`storable_since`] for a response that arrived as it was asked for.
#[cfg(test)]
pub(crate) fn storable(
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    settings: &Settings,
    now: SystemTime,
) -> Result<Keep, NotStored> {
    storable_since(request, status, response, settings, now, now)
}

/// Whether a response to a GET, asked for at `requested` and arrived at
/// `now`, may be stored by a shared cache, and how.
pub(crate) fn storable_since(
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    settings: &Settings,
    requested: SystemTime,
    now: SystemTime,
) -> Result<Keep, NotStored> {
    storable_as(request, status, response, None, settings, requested, now)
}

/// [`storable_since`], with `forced`: the directives the handler gave this
/// cache alone (see [`CacheOverride`](crate::cache::CacheOverride)), over
/// any field of the response.
pub(crate) fn storable_as(
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    forced: Option<Directives>,
    settings: &Settings,
    requested: SystemTime,
    now: SystemTime,
) -> Result<Keep, NotStored> {
    let req = Directives::of(request);
    // RFC 9213 §2.1: the first targeted field with a valid, non-empty
    // value replaces `Cache-Control`, and `Expires` is then ignored.
    let targeted = settings
        .targeted
        .iter()
        .find_map(|name| Directives::of_targeted(response, name));
    let expires = forced.is_none() && targeted.is_none() && response.contains_key(EXPIRES);
    // What the response says of itself, whatever a handler's override asks:
    // `private`, and what makes an answer to `Authorization` shareable,
    // are the response's word.
    let fields = targeted.unwrap_or_else(|| Directives::of(response));
    let res = match forced {
        Some(forced) => Directives {
            private: fields.private,
            unreadable: fields.unreadable,
            ..forced
        },
        None => fields.clone(),
    };
    // Never an interim answer, a partial or a 304 (this cache does not
    // combine them), nor, under `must-understand`, a status whose
    // requirements it does not implement (§5.2.2.3).
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || (res.must_understand && !understood(status))
        || settings
            .only_statuses
            .as_ref()
            .is_some_and(|only| !only.contains(&status))
    {
        return Err(NotStored::Status);
    }
    // `must-understand` with an understood status overrides `no-store`
    // (§5.2.2.3); the request's `no-store` always holds.
    if req.no_store
        || res.unreadable
        || (res.no_store && !(res.must_understand && understood(status)))
    {
        return Err(NotStored::NoStore);
    }
    if res.private {
        return Err(NotStored::Private);
    }
    // Any final status may be stored when the response states its
    // freshness or says `public` (§3); without either, only the statuses
    // RFC 9110 calls heuristically cacheable (§4.2.2).
    let explicit = res.s_maxage.is_some() || res.max_age.is_some() || expires;
    if !(explicit || res.public || heuristically_cacheable(status)) {
        return Err(NotStored::Status);
    }
    if request.contains_key(AUTHORIZATION)
        && !(fields.public || fields.s_maxage.is_some() || fields.must_revalidate)
    {
        return Err(NotStored::Authorization);
    }
    if response.contains_key(SET_COOKIE) && !settings.strip_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if vary_names(response).is_none() {
        return Err(NotStored::VaryStar);
    }
    let validator = response.contains_key(ETAG) || response.contains_key(LAST_MODIFIED);
    if res.no_cache && !validator {
        // Used only after revalidation, which needs a validator: without
        // one, a stored copy would never be used.
        return Err(NotStored::NoCache);
    }
    let now_ms = unix_ms(now);
    let date = http_date(response, DATE);
    let lifetime = if let Some(s) = res.s_maxage.or(res.max_age) {
        s.saturating_mul(1000)
    } else if expires {
        // An invalid Expires means already expired (§5.3).
        match http_date(response, EXPIRES) {
            Some(expires) => expires.saturating_sub(date.unwrap_or(now_ms)),
            None => 0,
        }
    } else if let (true, Some(modified)) = (
        heuristically_cacheable(status) || res.public,
        http_date(response, LAST_MODIFIED),
    ) {
        (date.unwrap_or(now_ms).saturating_sub(modified) / HEURISTIC_FRACTION).min(HEURISTIC_MAX_MS)
    } else if res.no_cache {
        // Revalidated before every use: its own freshness does not matter.
        0
    } else {
        settings.default_ttl.ok_or(NotStored::NoFreshness)?
    };
    // The operator's bounds, over whatever the response said.
    let lifetime = lifetime
        .max(settings.min_ttl.unwrap_or(0))
        .min(settings.max_ttl.unwrap_or(u64::MAX));
    // §4.2.3: the apparent age is what Date says; the Age a handler
    // passes on (from an upstream) is corrected by the response delay,
    // the time the handler took, as the response may have aged that much
    // on its way.
    let apparent = date.map_or(0, |d| now_ms.saturating_sub(d));
    let delay = now_ms.saturating_sub(unix_ms(requested));
    let corrected_age = super::directives::age_seconds(response)
        .map_or(0, |s| s * 1000)
        .saturating_add(delay);
    let initial_age = apparent.max(corrected_age);
    if lifetime <= initial_age && !res.no_cache {
        return Err(NotStored::NoFreshness);
    }
    let mut flags = 0;
    if res.must_revalidate || res.proxy_revalidate || res.s_maxage.is_some() {
        flags |= MUST_REVALIDATE;
    }
    if res.no_cache {
        flags |= NO_CACHE;
    }
    let secs = |s: u64| s.saturating_mul(1000);
    let swr = res
        .stale_while_revalidate
        .map(secs)
        .or(settings.stale_while_revalidate)
        .unwrap_or(0);
    let sie = res
        .stale_if_error
        .map(secs)
        .or(settings.stale_if_error)
        .unwrap_or(0);
    let keep = if validator { settings.keep_stale } else { 0 };
    let retention = lifetime
        .saturating_sub(initial_age)
        .saturating_add(swr.max(sie).max(keep));
    Ok(Keep {
        lifetime,
        initial_age,
        flags,
        swr,
        sie,
        retention,
    })
}

/// The lowercase names `Vary` lists; `None` for `Vary: *` (never
/// matches, so never stored).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<http::HeaderName>> {
    let mut names: Vec<http::HeaderName> = Vec::new();
    for value in headers.get_all(VARY) {
        let text = value.to_str().ok()?;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                return None;
            }
            let name = http::HeaderName::from_bytes(item.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    // In one order: a response that lists the same fields otherwise is
    // keyed, and stored, as the same variants.
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// The entry's age at `now`, in ms (§4.2.3).
pub(crate) fn age(entry: &Entry, now: SystemTime) -> u64 {
    age_at(entry, unix_ms(now))
}

/// [`age`] at `now` in Unix ms.
#[inline]
pub(crate) fn age_at(entry: &Entry, now: u64) -> u64 {
    entry
        .initial_age
        .saturating_add(now.saturating_sub(entry.stored_at))
}

/// Why a stored response cannot answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unusable {
    /// Past its freshness lifetime (and the request accepts no staleness).
    Stale,
    /// Fresh, but the request's directives forbid its use (`no-cache`,
    /// `max-age`, `min-fresh`).
    Request,
}

/// Whether `entry`, `age` ms old, may answer a request with directives
/// `req` without revalidation (§4.2, §5.2.1).
#[inline]
pub(crate) fn usable(entry: &Entry, age: u64, req: &Directives) -> Result<(), Unusable> {
    let fresh = age < entry.lifetime;
    if entry.flags & NO_CACHE != 0 {
        return Err(if fresh {
            Unusable::Request
        } else {
            Unusable::Stale
        });
    }
    if !fresh {
        // max-stale lets a stale response through unless the response
        // forbids it.
        let stale_by = age - entry.lifetime;
        let accepted = entry.flags & MUST_REVALIDATE == 0
            && req
                .max_stale
                .is_some_and(|s| stale_by < s.saturating_mul(1000));
        return if accepted {
            Ok(())
        } else {
            Err(Unusable::Stale)
        };
    }
    if req.no_cache {
        return Err(Unusable::Request);
    }
    // Ages and lifetimes compare in whole seconds, as RFC 9111 counts them
    // (§1.2.2): an entry stored 1 ms ago is 0 seconds old, so `max-age=0`
    // accepts it.
    if req.max_age.is_some_and(|s| age / 1000 > s) {
        return Err(Unusable::Request);
    }
    if req
        .min_fresh
        .is_some_and(|s| (entry.lifetime - age) / 1000 < s)
    {
        return Err(Unusable::Request);
    }
    Ok(())
}

#[inline]
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, crate::time::millis)
}

fn http_date(headers: &HeaderMap, name: http::HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok().map(unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    const NOW: u64 = 1_764_230_400_000;

    fn now() -> SystemTime {
        crate::time::system_time(NOW)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn date(ms: u64) -> String {
        httpdate::fmt_http_date(crate::time::system_time(ms))
    }

    fn plain() -> Settings {
        Settings {
            only_statuses: None,
            default_ttl: None,
            strip_set_cookie: false,
            stale_while_revalidate: None,
            stale_if_error: None,
            keep_stale: 60_000,
            targeted: vec![HeaderName::from_static("cdn-cache-control")],
            min_ttl: None,
            max_ttl: None,
        }
    }

    fn keep(
        req: &[(&'static str, &str)],
        status: u16,
        res: &[(&'static str, &str)],
    ) -> Result<Keep, NotStored> {
        storable(
            &headers(req),
            StatusCode::from_u16(status).unwrap(),
            &headers(res),
            &plain(),
            now(),
        )
    }

    #[test]
    fn freshness_comes_from_s_maxage_then_max_age_then_expires() {
        let cc = |v| [("cache-control", v)];
        assert_eq!(
            keep(&[], 200, &cc("max-age=60, s-maxage=5"))
                .unwrap()
                .lifetime,
            5_000
        );
        assert_eq!(keep(&[], 200, &cc("max-age=60")).unwrap().lifetime, 60_000);
        let e = date(NOW + 30_000);
        let d = date(NOW);
        assert_eq!(
            keep(&[], 200, &[("expires", &e), ("date", &d)])
                .unwrap()
                .lifetime,
            30_000
        );
        assert_eq!(
            keep(&[], 200, &[("expires", "0")]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(keep(&[], 200, &[]), Err(NotStored::NoFreshness));
        // Heuristic: 10% of the time since Last-Modified.
        let lm = date(NOW - 1_000_000);
        assert_eq!(
            keep(&[], 200, &[("last-modified", &lm)]).unwrap().lifetime,
            100_000
        );
        // Not for a status that is not heuristically cacheable.
        assert_eq!(
            keep(&[], 302, &[("last-modified", &lm)]),
            Err(NotStored::Status)
        );
        // Any final status with explicit freshness, or `public` (§3),
        // unknown codes too.
        for status in [201, 204, 302, 307, 400, 418, 500, 503, 599] {
            assert!(keep(&[], status, &cc("max-age=9")).is_ok(), "{status}");
        }
        assert!(keep(&[], 599, &[("expires", &date(NOW + 9_000))]).is_ok());
        assert!(
            keep(&[], 302, &cc("public")).is_err(),
            "public, but no freshness at all"
        );
        assert_eq!(
            keep(
                &[],
                302,
                &[("cache-control", "public"), ("last-modified", &lm)]
            )
            .unwrap()
            .lifetime,
            100_000,
            "public allows a heuristic"
        );
        // Narrowed by the layer.
        let only = Settings {
            only_statuses: Some(vec![StatusCode::OK]),
            ..plain()
        };
        let res = headers(&[("cache-control", "max-age=9")]);
        assert!(storable(&HeaderMap::new(), StatusCode::OK, &res, &only, now()).is_ok());
        assert_eq!(
            storable(&HeaderMap::new(), StatusCode::NOT_FOUND, &res, &only, now()),
            Err(NotStored::Status)
        );
        // The configured default comes last.
        let with_default = Settings {
            default_ttl: Some(7_000),
            ..plain()
        };
        let k = storable(
            &HeaderMap::new(),
            StatusCode::OK,
            &HeaderMap::new(),
            &with_default,
            now(),
        );
        assert_eq!(k.unwrap().lifetime, 7_000);
    }

    #[test]
    fn what_a_shared_cache_must_not_store() {
        let cc = |v| [("cache-control", v)];
        assert_eq!(
            keep(&[], 200, &cc("max-age=60, private")),
            Err(NotStored::Private)
        );
        assert_eq!(
            keep(&[], 200, &cc(r#"private="x", max-age=60"#)),
            Err(NotStored::Private)
        );
        assert_eq!(
            keep(&[], 200, &cc("no-store, max-age=60")),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            keep(&cc("no-store"), 200, &cc("max-age=60")),
            Err(NotStored::NoStore)
        );
        assert_eq!(keep(&[], 206, &cc("max-age=60")), Err(NotStored::Status));
        assert_eq!(keep(&[], 304, &cc("max-age=60")), Err(NotStored::Status));
        assert_eq!(keep(&[], 101, &cc("max-age=60")), Err(NotStored::Status));
    }

    #[test]
    fn rfc9111_5_2_2_3_must_understand() {
        let cc = |v| [("cache-control", v)];
        // A status this cache understands: stored, even with no-store.
        assert!(keep(&[], 200, &cc("must-understand, max-age=60")).is_ok());
        assert!(keep(&[], 200, &cc("must-understand, no-store, max-age=60")).is_ok());
        assert!(keep(&[], 404, &cc("no-store, must-understand, max-age=60")).is_ok());
        // One it does not: never, whatever else the response says.
        assert_eq!(
            keep(&[], 599, &cc("must-understand, max-age=60")),
            Err(NotStored::Status)
        );
        assert_eq!(
            keep(&[], 299, &cc("must-understand, no-store, public")),
            Err(NotStored::Status)
        );
        // Nor 206 (not combined here), and the request's no-store holds.
        assert_eq!(
            keep(&[], 206, &cc("must-understand, max-age=60")),
            Err(NotStored::Status)
        );
        assert_eq!(
            keep(
                &cc("no-store"),
                200,
                &cc("must-understand, no-store, max-age=60")
            ),
            Err(NotStored::NoStore)
        );
        // A Cache-Control line that is not text may have said private:
        // must-understand does not override it.
        let mut res = headers(&[("cache-control", "must-understand, max-age=60")]);
        res.append(
            "cache-control",
            HeaderValue::from_bytes(b"private, \xff").unwrap(),
        );
        assert_eq!(
            storable(&HeaderMap::new(), StatusCode::OK, &res, &plain(), now()),
            Err(NotStored::NoStore)
        );
        // Without it, no-store wins.
        assert_eq!(
            keep(&[], 599, &cc("no-store, max-age=60")),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            keep(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            keep(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept, *")]
            ),
            Err(NotStored::VaryStar)
        );
        let auth = [("authorization", "Bearer x")];
        assert_eq!(
            keep(&auth, 200, &cc("max-age=60")),
            Err(NotStored::Authorization)
        );
        for ok in [
            "max-age=60, public",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            assert!(keep(&auth, 200, &cc(ok)).is_ok(), "{ok}");
        }
        let strip = Settings {
            strip_set_cookie: true,
            ..plain()
        };
        let res = headers(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]);
        assert!(storable(&HeaderMap::new(), StatusCode::OK, &res, &strip, now()).is_ok());
    }

    #[test]
    fn age_counts_from_date_and_the_age_header() {
        let d = date(NOW - 4_000);
        let k = keep(&[], 200, &[("cache-control", "max-age=60"), ("date", &d)]).unwrap();
        assert_eq!(k.initial_age, 4_000);
        let k = keep(&[], 200, &[("cache-control", "max-age=60"), ("age", "10")]).unwrap();
        assert_eq!(k.initial_age, 10_000);
        assert_eq!(
            keep(&[], 200, &[("cache-control", "max-age=60"), ("age", "60")]),
            Err(NotStored::NoFreshness),
            "already stale"
        );
        let k = keep(&[], 200, &[("cache-control", "s-maxage=5")]).unwrap();
        assert_eq!(
            k.flags & MUST_REVALIDATE,
            MUST_REVALIDATE,
            "s-maxage implies proxy-revalidate"
        );
    }

    #[test]
    fn rfc9111_5_1_an_age_that_is_not_delta_seconds_is_ignored() {
        let age = |value: &str| {
            keep(&[], 200, &[("cache-control", "max-age=60"), ("age", value)])
                .map(|k| k.initial_age)
        };
        assert_eq!(age(" 7 "), Ok(7_000), "optional whitespace");
        for ignored in ["+5", "-5", "5.0", "5s", "0x10", "", "\"5\"", "x, 5"] {
            assert_eq!(age(ignored), Ok(0), "{ignored:?}");
        }
        // A list, on one line or two: its first member.
        assert_eq!(age("5, 6"), Ok(5_000));
        let two = keep(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("age", "5"), ("age", "6")],
        );
        assert_eq!(two.map(|k| k.initial_age), Ok(5_000));
        // Past 2^31 seconds: capped (§1.2.2), so stale, not ignored.
        assert_eq!(age("99999999999999999999999"), Err(NotStored::NoFreshness));
    }

    #[test]
    fn rfc9111_4_2_3_a_delayed_response_has_aged_on_its_way() {
        let res = headers(&[("cache-control", "max-age=60"), ("age", "10")]);
        let settings = plain();
        let after = |delay_ms: u64| {
            let requested = crate::time::system_time(NOW - delay_ms);
            storable_since(
                &HeaderMap::new(),
                StatusCode::OK,
                &res,
                &settings,
                requested,
                now(),
            )
        };
        assert_eq!(after(0).unwrap().initial_age, 10_000);
        assert_eq!(
            after(3_000).unwrap().initial_age,
            13_000,
            "Age plus the delay"
        );
        assert_eq!(
            after(50_000),
            Err(NotStored::NoFreshness),
            "10 s + 50 s: stale"
        );
        // Without Age, the delay alone (the handler's own time).
        let plain_res = headers(&[("cache-control", "max-age=60")]);
        let requested = crate::time::system_time(NOW - 2_000);
        let k = storable_since(
            &HeaderMap::new(),
            StatusCode::OK,
            &plain_res,
            &settings,
            requested,
            now(),
        );
        assert_eq!(k.unwrap().initial_age, 2_000);
    }

    #[test]
    fn rfc9111_4_2_1_of_duplicate_directives_the_first_counts() {
        let lifetime = |cc: &[(&'static str, &str)]| keep(&[], 200, cc).map(|k| k.lifetime);
        assert_eq!(
            lifetime(&[("cache-control", "max-age=60, max-age=1")]),
            Ok(60_000)
        );
        assert_eq!(
            lifetime(&[
                ("cache-control", "max-age=60"),
                ("cache-control", "max-age=1")
            ]),
            Ok(60_000)
        );
        assert_eq!(
            lifetime(&[("cache-control", "s-maxage=30, s-maxage=90")]),
            Ok(30_000)
        );
        let windows = keep(
            &[],
            200,
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=30, stale-if-error=40, \
                 stale-while-revalidate=5, stale-if-error=6",
            )],
        )
        .unwrap();
        assert_eq!((windows.swr, windows.sie), (30_000, 40_000));
        // A malformed first one makes the response stale: not stored.
        assert_eq!(
            lifetime(&[("cache-control", "max-age=soon, max-age=60")]),
            Err(NotStored::NoFreshness)
        );
    }

    fn entry(lifetime: u64, flags: u8) -> Entry {
        Entry {
            stored_at: NOW,
            initial_age: 0,
            lifetime,
            flags,
            swr: 0,
            sie: 0,
            status: StatusCode::OK,
            vary: vec![],
            vary_hash: [0; 16],
            headers: HeaderMap::new(),
            tags: vec![],
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn requests_narrow_what_they_accept() {
        let cc = |v: &str| Directives::of(&headers(&[("cache-control", v)]));
        let e = entry(60_000, 0);
        let later = |ms| age(&e, now() + Duration::from_millis(ms));
        assert_eq!(later(10_000), 10_000);
        assert_eq!(usable(&e, 10_000, &Directives::default()), Ok(()));
        assert_eq!(
            usable(&e, 60_000, &Directives::default()),
            Err(Unusable::Stale)
        );
        assert_eq!(usable(&e, 10_000, &cc("no-cache")), Err(Unusable::Request));
        assert_eq!(usable(&e, 10_000, &cc("max-age=5")), Err(Unusable::Request));
        assert_eq!(usable(&e, 10_000, &cc("max-age=10")), Ok(()));
        assert_eq!(
            usable(&e, 10_000, &cc("min-fresh=51")),
            Err(Unusable::Request)
        );
        assert_eq!(usable(&e, 10_000, &cc("min-fresh=50")), Ok(()));
        assert_eq!(usable(&e, 65_000, &cc("max-stale=10")), Ok(()));
        assert_eq!(usable(&e, 65_000, &cc("max-stale=5")), Err(Unusable::Stale));
        assert_eq!(usable(&e, 65_000, &cc("max-stale")), Ok(()));
        let strict = entry(60_000, MUST_REVALIDATE);
        assert_eq!(
            usable(&strict, 65_000, &cc("max-stale")),
            Err(Unusable::Stale)
        );
    }

    #[test]
    fn stale_windows_and_validators_set_the_retention() {
        let k = keep(
            &[],
            200,
            &[(
                "cache-control",
                "max-age=60, stale-while-revalidate=30, stale-if-error=600",
            )],
        )
        .unwrap();
        assert_eq!((k.swr, k.sie, k.retention), (30_000, 600_000, 660_000));
        // No validator, no window: kept while fresh.
        assert_eq!(
            keep(&[], 200, &[("cache-control", "max-age=60")])
                .unwrap()
                .retention,
            60_000
        );
        // A validator: kept keep_stale longer, to be revalidated.
        let k = keep(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"a\"")],
        )
        .unwrap();
        assert_eq!(k.retention, 120_000);
        // no-cache: stored only with a validator, and flagged.
        assert_eq!(
            keep(&[], 200, &[("cache-control", "no-cache")]),
            Err(NotStored::NoCache)
        );
        let k = keep(
            &[],
            200,
            &[("cache-control", "no-cache"), ("etag", "\"a\"")],
        )
        .unwrap();
        assert_eq!(k.flags & NO_CACHE, NO_CACHE);
        assert_eq!(k.retention, 60_000);
        // The layer's windows apply when the response names none.
        let s = Settings {
            stale_while_revalidate: Some(5_000),
            stale_if_error: Some(7_000),
            ..plain()
        };
        let res = headers(&[("cache-control", "max-age=10")]);
        let k = storable(&HeaderMap::new(), StatusCode::OK, &res, &s, now()).unwrap();
        assert_eq!((k.swr, k.sie, k.retention), (5_000, 7_000, 17_000));
        let res = headers(&[("cache-control", "max-age=10, stale-while-revalidate=1")]);
        let k = storable(&HeaderMap::new(), StatusCode::OK, &res, &s, now()).unwrap();
        assert_eq!(k.swr, 1_000, "the response's own window wins");
    }

    #[test]
    fn rfc9213_2_1_the_first_valid_targeted_field_replaces_cache_control_and_expires() {
        let mine = HeaderName::from_static("redislayers-cache-control");
        let s = Settings {
            targeted: vec![mine, HeaderName::from_static("cdn-cache-control")],
            ..plain()
        };
        let lifetime = |fields: &[(&'static str, &str)]| {
            storable(
                &HeaderMap::new(),
                StatusCode::OK,
                &headers(fields),
                &s,
                now(),
            )
            .map(|k| k.lifetime)
        };
        // CDN-Cache-Control over Cache-Control (and over its no-store).
        let cc = ("cache-control", "no-store");
        assert_eq!(
            lifetime(&[cc, ("cdn-cache-control", "max-age=30")]),
            Ok(30_000)
        );
        // The cache's own field first of all.
        let both = [
            ("cdn-cache-control", "max-age=30"),
            ("redislayers-cache-control", "max-age=5"),
        ];
        assert_eq!(lifetime(&both), Ok(5_000));
        // An invalid one is skipped for the next in the list...
        let bad = [
            ("redislayers-cache-control", "max-age=5, ="),
            ("cdn-cache-control", "max-age=7"),
        ];
        assert_eq!(lifetime(&bad), Ok(7_000));
        // ...and with none valid, Cache-Control decides.
        let none = [
            ("cdn-cache-control", "{bad"),
            ("cache-control", "max-age=3"),
        ];
        assert_eq!(lifetime(&none), Ok(3_000));
        // A targeted field says nothing of Expires: ignored, so a response
        // with only that and `public` gets no explicit freshness.
        let expires = [
            ("cdn-cache-control", "public"),
            ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
        ];
        assert_eq!(lifetime(&expires), Err(NotStored::NoFreshness));
        // no-store and private in the targeted field hold.
        assert_eq!(
            lifetime(&[
                ("cdn-cache-control", "no-store"),
                ("cache-control", "max-age=9")
            ]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            lifetime(&[("cdn-cache-control", "private")]),
            Err(NotStored::Private)
        );
    }

    #[test]
    fn the_operators_bounds_clamp_every_lifetime() {
        let s = Settings {
            min_ttl: Some(10_000),
            max_ttl: Some(600_000),
            ..plain()
        };
        let lifetime = |cc: &str| {
            storable(
                &HeaderMap::new(),
                StatusCode::OK,
                &headers(&[("cache-control", cc)]),
                &s,
                now(),
            )
            .map(|k| k.lifetime)
        };
        assert_eq!(lifetime("max-age=0"), Ok(10_000));
        assert_eq!(lifetime("max-age=60"), Ok(60_000));
        assert_eq!(lifetime("max-age=31536000"), Ok(600_000));
        // What may not be stored still is not.
        assert_eq!(lifetime("no-store, max-age=60"), Err(NotStored::NoStore));
        assert_eq!(lifetime("private, max-age=60"), Err(NotStored::Private));
        // A handler's override: public, max-age, within the bounds.
        let forced = |cc: &str, secs: u64| {
            let res = headers(&[("cache-control", cc)]);
            let forced = Some(Directives::forced(secs));
            storable_as(
                &HeaderMap::new(),
                StatusCode::OK,
                &res,
                forced,
                &s,
                now(),
                now(),
            )
            .map(|k| (k.lifetime, k.flags))
        };
        assert_eq!(forced("no-store", 30), Ok((30_000, 0)));
        assert_eq!(forced("max-age=5", 3_600), Ok((600_000, 0)));
        // Not over the response's own `private`, nor for an answer to
        // `Authorization` that the response does not call shareable.
        assert_eq!(forced("private", 30), Err(NotStored::Private));
        assert_eq!(forced("no-store, private", 30), Err(NotStored::Private));
        let mut auth = HeaderMap::new();
        auth.insert(AUTHORIZATION, "Bearer x".parse().unwrap());
        let forced_for = |cc: &str| {
            let res = headers(&[("cache-control", cc)]);
            let forced = Some(Directives::forced(30));
            storable_as(&auth, StatusCode::OK, &res, forced, &s, now(), now()).map(|k| k.lifetime)
        };
        assert_eq!(forced_for("max-age=5"), Err(NotStored::Authorization));
        assert_eq!(forced_for("public"), Ok(30_000));
    }
}
