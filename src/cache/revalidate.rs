//! A stale entry: served while it is refreshed in the background (RFC
//! 5861), or revalidated with its validators, and updated by a 304 (RFC
//! 9111 §4.3.3, §4.3.4).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;

use std::borrow::Cow;

use http::header::HeaderValue;
use http::Method;
use tower_service::Service;

use super::answer::{respond_stored, respond_stored_to};
use super::coalesce::{Lease, Waiting};
use super::config::Config;
use super::directives::CacheOverride;
use super::fields::{never_stored, take_tags, ttl_of, with_status, CONDITIONAL, KEEP_ON_UPDATE};
use super::key::vary_hash;
use super::layout::{Entry, MUST_REVALIDATE, NO_CACHE};
use super::lookup::SessionProbe;
use super::miss::{settle_now, write_entry};
use super::policy;
use super::purger::Purger;
use crate::body::ResponseBody;

/// Adds the stored response's validators to a request, so the handler
/// can answer 304; false when it has none.
pub(super) fn conditional<B>(req: &mut Request<B>, entry: &Entry) -> bool {
    let mut any = false;
    if let Some(etag) = entry.headers.get(header::ETAG) {
        req.headers_mut()
            .insert(header::IF_NONE_MATCH, etag.clone());
        any = true;
    }
    if let Some(modified) = entry.headers.get(header::LAST_MODIFIED) {
        req.headers_mut()
            .insert(header::IF_MODIFIED_SINCE, modified.clone());
        any = true;
    }
    any
}

/// The stored response updated by a 304's fields (RFC 9111 §4.3.4), its
/// age and freshness reset to the moment of the 304.
pub(super) fn refresh_headers(
    config: &Config,
    mut entry: Entry,
    fresh: &HeaderMap,
    request_headers: &HeaderMap,
) -> Entry {
    let mut fresh = fresh.clone();
    let tags = take_tags(&mut fresh, &config.tag_header);
    if !tags.is_empty() {
        entry.tags = tags;
    }
    for name in fresh.keys() {
        if KEEP_ON_UPDATE.contains(name) || never_stored(name) {
            continue;
        }
        entry.headers.remove(name);
        for value in fresh.get_all(name) {
            entry.headers.append(name.clone(), value.clone());
        }
    }
    // A 304 may change Vary: key the entry by the new list.
    entry.vary = policy::vary_names(&entry.headers).unwrap_or_default();
    entry.vary_hash = vary_hash(&entry.vary, request_headers);
    entry
}

/// Stores a revalidated entry again (its freshness worked out from its
/// updated fields); false when those fields no longer allow storing.
pub(super) fn store_refreshed(
    config: &Arc<Config>,
    key: &str,
    entry: &Entry,
    request_headers: &HeaderMap,
    waiting: Waiting,
) -> bool {
    // Only a fill lease's holder stores (see `write_entry`).
    let Some(lease) = &waiting.lease else {
        return false;
    };
    let now = SystemTime::now();
    let Ok(keep) = policy::storable_since(
        request_headers,
        entry.status,
        &entry.headers,
        &config.settings,
        lease.began,
        now,
    ) else {
        return false;
    };
    let mut entry = entry.clone();
    entry.stored_at = policy::unix_ms(now);
    entry.initial_age = keep.initial_age;
    entry.lifetime = keep.lifetime;
    entry.flags = keep.flags;
    entry.swr = keep.swr;
    entry.sie = keep.sie;
    write_entry(
        config.clone(),
        key.to_owned(),
        entry,
        Duration::from_millis(keep.retention),
        waiting,
    );
    true
}

/// The handler's answer to a background refresh: a 304 refreshes the
/// stored entry, a storable response replaces it (its body read here, up
/// to `max_body`), anything else leaves it. True when the entry is being
/// replaced.
pub(super) async fn settle<ResBody>(
    config: &Arc<Config>,
    key: String,
    stale: Option<Entry>,
    request_headers: &HeaderMap,
    res: Response<ResBody>,
    lease: Option<Lease>,
) -> bool
where
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let (tx, written) = tokio::sync::oneshot::channel();
    let waiting = Waiting {
        lease,
        notify: Some(tx),
        ..Waiting::default()
    };
    if res.status() == StatusCode::NOT_MODIFIED {
        // Only a 304 to this cache's own validators refreshes the entry.
        let Some(entry) = stale else { return false };
        let refreshed = refresh_headers(config, entry, res.headers(), request_headers);
        if !store_refreshed(config, &key, &refreshed, request_headers, waiting) {
            return false;
        }
        return written.await.unwrap_or(false);
    }
    let (res, params) = settle_now(config, key, request_headers, res, true, "stale", waiting);
    if !params.ends_with("stored") {
        return false;
    }
    // Read the body through, so that its copy is stored; then wait for
    // the write (a copy given up, or a failed write, is not a refresh).
    let mut body = Box::pin(res.into_body());
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).as_mut().poll_frame(cx)).await {
        if frame.is_err() {
            return false;
        }
    }
    drop(body);
    written.await.unwrap_or(false)
}

/// RFC 5861 §3: a stale entry (`age` ms old, within its
/// stale-while-revalidate window) as the answer now, refreshed in the
/// background: once per stored version on this instance, and once across
/// instances (the fill lease, without which nothing is stored).
pub(super) fn serve_and_refresh<S, ReqBody, ResBody>(
    config: &Arc<Config>,
    mut inner: S,
    mut req: Request<ReqBody>,
    key: String,
    entry: Entry,
    age: u64,
) -> Response<ResponseBody<ResBody>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let mut ttl = itoa::Buffer::new();
    let params = [
        "hit; ttl=",
        ttl_of(&mut ttl, &entry, age),
        "; detail=stale-while-revalidate",
    ];
    let res = respond_stored(config, Cow::Borrowed(&entry), age, &req, &params);
    let version = entry.stored_at;
    if config.refreshing.begin(&key, version) {
        let config = config.clone();
        crate::task::spawn_here(async move {
            // One refresh across instances too: the fill lease
            // (without which nothing is stored).
            let lease = match Lease::take(&config, &key).await {
                // Another instance may have refreshed it (and let
                // its lease go) since this one read the stale
                // version: the entry read with the lease tells.
                Ok((Some(lease), Some(raw)))
                    if Entry::decode(raw.clone()).is_some_and(|e| e.stored_at != version) =>
                {
                    drop(lease);
                    return;
                }
                Ok((Some(lease), _)) => lease,
                // Another instance refreshes it: this version
                // stays marked, so stale hits here do not ask for
                // the lease again and again meanwhile.
                Ok((None, _)) => return,
                Err(_) => {
                    config.refreshing.failed(&key, version);
                    return;
                }
            };
            let request_headers = req.headers().clone();
            // Only this cache's validators: a 304 must validate
            // the stored entry, not whatever the client held.
            for name in CONDITIONAL {
                req.headers_mut().remove(name);
            }
            let validated = conditional(&mut req, &entry);
            let stale = validated.then_some(entry);
            let session = SessionProbe::of(&req, config.request_directives);
            req.extensions_mut().insert(Purger::of(&config));
            let replaced = match crate::trace::unmeasured(inner.call(req)).await {
                // As on a miss: what a handler made from the session is
                // never stored.
                Ok(_) if session.read() => false,
                Ok(res) => {
                    settle(
                        &config,
                        key.clone(),
                        stale,
                        &request_headers,
                        res,
                        Some(lease),
                    )
                    .await
                }
                Err(_) => false,
            };
            if !replaced {
                config.refreshing.failed(&key, version);
            }
        });
    }
    res
}

/// A stale entry that may not be served as it is (`fwd` says why): the
/// handler is asked, with the entry's validators unless the client sent
/// its own; a 304 refreshes the entry, a failure or a 5xx within the
/// entry's stale-if-error window is answered with it, and any other
/// response is settled as a miss would be.
#[allow(clippy::too_many_arguments)]
pub(super) async fn revalidate<S, ReqBody, ResBody>(
    config: &Arc<Config>,
    mut inner: S,
    mut req: Request<ReqBody>,
    key: String,
    (entry, age): (Entry, u64),
    fwd: &'static str,
    session: &SessionProbe,
    mut waiting: Waiting,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let is_get = req.method() == Method::GET;
    let method = req.method().clone();
    let over = age.saturating_sub(entry.lifetime);
    let strict = entry.flags & (MUST_REVALIDATE | NO_CACHE) != 0;
    // Else ask the handler, conditionally when the client did not.
    let client_conditional = req.headers().contains_key(header::IF_NONE_MATCH)
        || req.headers().contains_key(header::IF_MODIFIED_SINCE);
    // What the client asked, before this cache adds its validators.
    let request_headers = req.headers().clone();
    let revalidating = is_get && !client_conditional && conditional(&mut req, &entry);
    let may_use_stale = !strict && over < entry.sie;
    // A HEAD may freshen the entry (below): under the fill lease, taken
    // before the handler runs, so an invalidation meanwhile wins (as for
    // any fill), with the entry stored when it was taken.
    // (Not when it could not freshen anyway: a stored answer other than a
    // 200, or a request whose answer is never stored.)
    let head_lease = if method == Method::HEAD
        && entry.status == StatusCode::OK
        && !session.never_stored_before_the_handler()
    {
        match Lease::take(config, &key).await {
            Ok((Some(lease), raw)) => Some((lease, raw)),
            _ => None,
        }
    } else {
        None
    };
    req.extensions_mut().insert(Purger::of(config));
    let res = match crate::trace::unmeasured(inner.call(req)).await {
        Ok(res) => res,
        Err(e) if may_use_stale => {
            tracing::warn!("handler failed; serving a stale response (stale-if-error)");
            drop(e);
            let mut ttl = itoa::Buffer::new();
            let params = [
                "fwd=stale; detail=stale-if-error; hit; ttl=",
                ttl_of(&mut ttl, &entry, age),
            ];
            return Ok(respond_stored_to(
                config,
                Cow::Owned(entry),
                age,
                &request_headers,
                &method,
                &params,
            ));
        }
        Err(e) => return Err(e),
    };
    if res.status().is_server_error() && may_use_stale {
        let params = format!(
            "fwd=stale; fwd-status={}; detail=stale-if-error",
            res.status().as_u16()
        );
        return Ok(respond_stored_to(
            config,
            Cow::Owned(entry),
            age,
            &request_headers,
            &method,
            &[&params],
        ));
    }
    if revalidating && res.status() == StatusCode::NOT_MODIFIED {
        let (head, _) = res.into_parts();
        let refreshed = refresh_headers(config, entry, &head.headers, &request_headers);
        // The 304 is this request's answer too: cookies that the
        // handler or a layer inside this one set (a login, a removal)
        // go to this client, never into the entry. Such a 304 refreshes
        // the entry only where a 200 with a cookie would be stored.
        let cookies: Vec<HeaderValue> = head
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        let storable = !session.read()
            && (cookies.is_empty() || config.settings.strip_set_cookie)
            && head.extensions.get::<CacheOverride>() != Some(&CacheOverride::Forbid);
        let stored = storable
            && store_refreshed(
                config,
                &key,
                &refreshed,
                &request_headers,
                std::mem::take(&mut waiting),
            );
        let params = format!(
            "fwd={fwd}; fwd-status=304{}",
            if stored { "; stored" } else { "" }
        );
        let mut res = respond_stored_to(
            config,
            Cow::Owned(refreshed),
            0,
            &request_headers,
            &method,
            &[&params],
        );
        for cookie in cookies {
            res.headers_mut().append(header::SET_COOKIE, cookie);
        }
        return Ok(res);
    }
    if method == Method::HEAD && res.status() == StatusCode::OK {
        let version = entry.stored_at;
        let held = head_lease.is_some();
        let (mut head, body) = res.into_parts();
        let params = freshen_with_head(
            config,
            &key,
            entry,
            &request_headers,
            &head,
            session,
            head_lease,
        )
        .await;
        if held && params.is_empty() {
            // It held the lease and refreshed nothing: a stale hit may
            // ask for a refresh of this version again.
            config.refreshing.failed(&key, version);
        }
        take_tags(&mut head.headers, &config.tag_header);
        let params = format!("fwd={fwd}; fwd-status=200{params}");
        let res = Response::from_parts(head, ResponseBody::inner(body));
        return Ok(with_status(res, &config.name, &params));
    }
    let storable = is_get && !session.read();
    let (res, params) = settle_now(config, key, &request_headers, res, storable, fwd, waiting);
    Ok(with_status(res, &config.name, &params))
}

/// RFC 9111 §4.3.5: a 200 to a HEAD (with `head` its parts) for a stale
/// stored 200 to a GET, `entry`, when this request took the key's fill
/// lease (`lease`, with the entry stored when it did) before asking the
/// handler. When the fields the HEAD answer carries of `ETag`,
/// `Last-Modified` and `Content-Length` (at least one of them) are the
/// stored response's, the entry's fields are updated as a 304 would update
/// them (§3.2) and it is fresh again; when one differs, the entry is
/// removed, so the next GET fetches. Neither when the entry changed since
/// it was read, the answer sets a cookie the entry may not keep, its
/// handler read the session, or it carries
/// [`CacheOverride::Forbid`]. Returns the `Cache-Status` parameters to
/// add (`; stored`, or none).
async fn freshen_with_head(
    config: &Arc<Config>,
    key: &str,
    entry: Entry,
    request_headers: &HeaderMap,
    head: &http::response::Parts,
    session: &SessionProbe,
    lease: Option<(Lease, Option<Bytes>)>,
) -> &'static str {
    let Some((lease, now_stored)) = lease else {
        return "";
    };
    let unchanged = now_stored
        .and_then(Entry::decode)
        .is_some_and(|now| now.stored_at == entry.stored_at);
    let fresh = &head.headers;
    let cookies = fresh.contains_key(header::SET_COOKIE);
    if !unchanged
        || entry.status != StatusCode::OK
        || session.read()
        || (cookies && !config.settings.strip_set_cookie)
        || head.extensions.get::<CacheOverride>() == Some(&CacheOverride::Forbid)
    {
        return "";
    }
    let compared = [header::ETAG, header::LAST_MODIFIED, header::CONTENT_LENGTH];
    if !compared.iter().any(|name| fresh.contains_key(name)) {
        // Nothing to tell the stored representation from another.
        return "";
    }
    let agrees = |name: &header::HeaderName| {
        fresh
            .get(name)
            .is_none_or(|v| entry.headers.get(name) == Some(v))
    };
    let length_agrees = fresh.get(header::CONTENT_LENGTH).is_none_or(|v| {
        v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) == Some(entry.body.len())
    });
    if !(agrees(&header::ETAG) && agrees(&header::LAST_MODIFIED) && length_agrees) {
        // A different representation now: the stored one is not used
        // again (the lease goes with it).
        if let Err(e) = config.store.invalidate(key).await {
            config
                .failures
                .failed(&e, "a stale response not removed", false);
        }
        config.announce(&[key.to_owned()]).await;
        return "";
    }
    let refreshed = refresh_headers(config, entry, fresh, request_headers);
    let waiting = Waiting::miss(None, Some(lease));
    if store_refreshed(config, key, &refreshed, request_headers, waiting) {
        "; stored"
    } else {
        ""
    }
}
