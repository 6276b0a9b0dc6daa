//! What the cache does with one request: the read path (hit, revalidation,
//! stale-while-revalidate, stale-if-error, coalesced misses, storing the
//! answer) and the write path (invalidation).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use headers::{ETag, HeaderMapExt, IfModifiedSince, IfNoneMatch, LastModified};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::body::{CacheBody, Copy};
use super::directives::Directives;
use super::flight::Role;
use super::layer::{Config, Purger, CACHE_STATUS};
use super::layout::{hash, hash_hex, Entry, MUST_REVALIDATE, NO_CACHE};
use super::policy::{self, Unusable};

/// Headers that describe one connection, never stored (RFC 9111 §3.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Fields a 304 must not change in the stored response (RFC 9111 §3.2).
const KEEP_ON_UPDATE: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
];

/// The most tags one response may carry, and the longest tag.
pub(crate) const MAX_TAGS: usize = 32;
pub(crate) const MAX_TAG_LEN: usize = 128;

/// The cache key of a request to `uri` (hashed): scheme, host, path and
/// query, one per line (none of them can hold a line break, so the
/// concatenation is unambiguous; short keys fit one SHA-256 block), and
/// after the first purge of everything a last line with the generation.
pub(crate) fn cache_key(
    sort_query: bool,
    uri: &http::Uri,
    headers: &HeaderMap,
    generation: u64,
) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let mut line = Vec::with_capacity(8 + scheme.len() + host.len() + uri.path().len() + 32);
    line.extend_from_slice(b"GET\n");
    line.extend_from_slice(scheme.as_bytes());
    line.push(b'\n');
    line.extend(host.bytes().map(|b| b.to_ascii_lowercase()));
    line.push(b'\n');
    line.extend_from_slice(uri.path().as_bytes());
    if let Some(query) = uri.query() {
        line.push(b'?');
        if sort_query {
            let mut pairs: Vec<&str> = query.split('&').collect();
            pairs.sort_unstable();
            line.extend_from_slice(pairs.join("&").as_bytes());
        } else {
            line.extend_from_slice(query.as_bytes());
        }
    }
    if generation > 0 {
        line.extend_from_slice(b"\n#");
        line.extend_from_slice(itoa::Buffer::new().format(generation).as_bytes());
    }
    hash_hex([line.as_slice()])
}

/// The hash of a request's values of the headers `names` (all zeros when
/// the response varies on nothing).
fn vary_hash(names: &[HeaderName], headers: &HeaderMap) -> [u8; 16] {
    if names.is_empty() {
        return [0; 16];
    }
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

/// `Cache-Status` for this cache: `<name>; <params>`.
fn status_field(name: &str, params: &str) -> HeaderValue {
    let mut field = String::with_capacity(name.len() + 2 + params.len());
    field.push_str(name);
    field.push_str("; ");
    field.push_str(params);
    HeaderValue::try_from(field).unwrap_or_else(|_| HeaderValue::from_static("redis-layers"))
}

/// The tags a response names in the tag header (comma-separated), which
/// is removed from it: tags are for the cache, not for clients. Empty,
/// overlong or non-text tags are dropped, and at most [`MAX_TAGS`] kept.
pub(crate) fn take_tags(headers: &mut HeaderMap, name: &HeaderName) -> Vec<String> {
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

/// What a lookup found.
enum Found {
    /// A stored response this request may use as it is.
    Usable(Entry, u64),
    /// None to use: RFC 9211's `fwd` reason, and a stale entry (with its
    /// age) when there is one.
    Not(&'static str, Option<(Entry, u64)>),
}

async fn find(config: &Config, key: &str, req: &HeaderMap, d: &Directives) -> Found {
    let epoch = config.local.as_ref().map(|l| l.epoch());
    match config.store.lookup(key).await {
        Err(e) => {
            tracing::warn!(error = %e, "cache store failed; asking the handler");
            Found::Not("miss; detail=store-error", None)
        }
        Ok(None) => Found::Not("uri-miss", None),
        Ok(Some(raw)) => match Entry::decode(raw) {
            None => Found::Not("miss; detail=unreadable", None),
            Some(entry) if entry.vary_hash != vary_hash(&entry.vary, req) => {
                Found::Not("vary-miss", None)
            }
            Some(entry) => {
                let age = policy::age(&entry, SystemTime::now());
                match policy::usable(&entry, age, d) {
                    Ok(()) => {
                        if let (Some(local), Some(epoch)) = (&config.local, epoch) {
                            local.keep(key, entry.clone(), epoch);
                        }
                        Found::Usable(entry, age)
                    }
                    Err(Unusable::Stale) => Found::Not("stale", Some((entry, age))),
                    Err(Unusable::Request) => Found::Not("request", Some((entry, age))),
                }
            }
        },
    }
}

/// GET and HEAD: answer from the store when a stored response may be used,
/// else ask the inner service (and store its response when it may be).
pub(crate) async fn read<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    mut req: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    // One clock read for the generation's refresh and the local tier's age.
    let now = SystemTime::now();
    let generation = match config.generation.fresh(now) {
        Some(generation) => Ok(generation),
        // Boxed: the store call's state would otherwise grow every
        // request's future (measured: local hits 0.40 -> 0.26 of bare).
        None => Box::pin(config.generation.current(&config.store, now)).await,
    };
    let generation = match generation {
        Ok(generation) => generation,
        Err(e) => {
            // Without the generation no key is known to be current:
            // neither read nor store.
            tracing::warn!(error = %e, "cache store failed; asking the handler");
            req.extensions_mut().insert(Purger::of(&config));
            let res = inner.call(req).await?;
            return Ok(with_status(
                res.map(|body| CacheBody::inner(body, None)),
                &config.name,
                "fwd=miss; detail=store-error",
            ));
        }
    };
    let key = cache_key(config.sort_query, req.uri(), req.headers(), generation);
    let directives = Directives::of(req.headers());
    // Inside the session layer: a request with a session is never answered
    // from the store (its handler may read the session), and a response
    // whose handler read the session is never stored.
    let session = SessionProbe::of(&req);
    let is_get = req.method() == Method::GET;
    let method = req.method().clone();
    let mut fwd = "request";
    let mut stale = None;
    let mut flight = None;
    let mut lease = None;
    // The local tier first: a hit there is no round trip.
    if let (Some(local), false, false) = (&config.local, session.personal(), directives.no_cache) {
        if let Some(entry) = local.get(&key) {
            if entry.vary_hash == vary_hash(&entry.vary, req.headers()) {
                let age = policy::age(&entry, now);
                if policy::usable(&entry, age, &directives).is_ok() {
                    let params = ttl_params(&entry, age, "; detail=local");
                    return Ok(respond_stored(
                        &config,
                        (*entry).clone(),
                        age,
                        &req,
                        &params,
                    ));
                }
            }
        }
    }
    // From here the handler may run: it may want to purge.
    req.extensions_mut().insert(Purger::of(&config));
    if session.personal() {
        fwd = "bypass";
    } else if !directives.no_cache {
        let mut collapsed = false;
        loop {
            match find(&config, &key, req.headers(), &directives).await {
                Found::Usable(entry, age) => {
                    let params =
                        ttl_params(&entry, age, if collapsed { "; collapsed" } else { "" });
                    return Ok(respond_stored(&config, entry, age, &req, &params));
                }
                Found::Not(why, found) => {
                    fwd = why;
                    stale = found;
                }
            }
            // Coalesce only plain misses of GETs, and wait only once.
            if collapsed || stale.is_some() || !is_get || fwd.contains("store-error") {
                break;
            }
            match config.flights.join(&key) {
                Role::Leader(guard) => {
                    flight = Some(guard);
                    // Across instances: one fills the entry, the others
                    // wait for it.
                    let holder = Lease::holder();
                    match config
                        .store
                        .lease(&key, &holder, config.coalesce_wait)
                        .await
                    {
                        Ok(true) => lease = Some(Lease::new(config.clone(), key.clone(), holder)),
                        Ok(false) => {
                            let waited =
                                wait_fill(&config, &key, req.headers(), &method, &directives);
                            if let Some(res) = waited.await {
                                return Ok(res);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cache fill lease unavailable"),
                    }
                    break;
                }
                Role::Follower(wait) => {
                    wait.done(config.coalesce_wait).await;
                    collapsed = true;
                }
            }
        }
    }
    if directives.only_if_cached {
        // RFC 9111 §5.2.1.7: nothing usable stored, so 504.
        let mut res = Response::new(CacheBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        res.headers_mut().insert(
            CACHE_STATUS,
            status_field(&config.name, "fwd=miss; detail=only-if-cached"),
        );
        return Ok(res);
    }

    if let Some((entry, age)) = stale.take() {
        let over = age.saturating_sub(entry.lifetime);
        let strict = entry.flags & (MUST_REVALIDATE | NO_CACHE) != 0;
        // RFC 5861 §3: serve it now, refresh in the background.
        if is_get && fwd == "stale" && !strict && over < entry.swr {
            let params = ttl_params(&entry, age, "; detail=stale-while-revalidate");
            let res = respond_stored(&config, entry.clone(), age, &req, &params);
            let version = entry.stored_at;
            if config.refreshing.begin(&key, version) {
                let config = config.clone();
                tokio::spawn(async move {
                    let request_headers = req.headers().clone();
                    // Only this cache's validators: a 304 must validate
                    // the stored entry, not whatever the client held.
                    for name in CONDITIONAL {
                        req.headers_mut().remove(name);
                    }
                    let validated = conditional(&mut req, &entry);
                    let stale = validated.then_some(entry);
                    let replaced = match inner.call(req).await {
                        Ok(res) => settle(&config, key.clone(), stale, &request_headers, res).await,
                        Err(_) => false,
                    };
                    if !replaced {
                        config.refreshing.failed(&key, version);
                    }
                });
            }
            return Ok(res);
        }
        // Else ask the handler, conditionally when the client did not.
        let client_conditional = req.headers().contains_key(header::IF_NONE_MATCH)
            || req.headers().contains_key(header::IF_MODIFIED_SINCE);
        // What the client asked, before this cache adds its validators.
        let request_headers = req.headers().clone();
        let revalidating = is_get && !client_conditional && conditional(&mut req, &entry);
        let may_use_stale = !strict && over < entry.sie;
        let res = match inner.call(req).await {
            Ok(res) => res,
            Err(e) if may_use_stale => {
                tracing::warn!("handler failed; serving a stale response (stale-if-error)");
                drop(e);
                let params = format!(
                    "fwd=stale; detail=stale-if-error; {}",
                    ttl_params(&entry, age, "")
                );
                return Ok(respond_stored_to(
                    &config,
                    entry,
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
                &config,
                entry,
                age,
                &request_headers,
                &method,
                &params,
            ));
        }
        if revalidating && res.status() == StatusCode::NOT_MODIFIED {
            let (head, _) = res.into_parts();
            let refreshed = refresh_headers(&config, entry, &head.headers, &request_headers);
            let params = format!(
                "fwd=stale; fwd-status=304{}",
                if store_refreshed(&config, &key, &refreshed, &request_headers, None) {
                    "; stored"
                } else {
                    ""
                }
            );
            return Ok(respond_stored_to(
                &config,
                refreshed,
                0,
                &request_headers,
                &method,
                &params,
            ));
        }
        let storable = is_get && !session.read();
        let (res, params) = settle_now(
            &config,
            key,
            &request_headers,
            res,
            storable,
            fwd,
            Waiting::default(),
        );
        return Ok(with_status(res, &config.name, &params));
    }

    let request_headers = if is_get {
        Some(req.headers().clone())
    } else {
        None
    };
    let res = inner.call(req).await?;
    match request_headers {
        Some(h) => {
            let storable = !session.read();
            let (res, params) = settle_now(
                &config,
                key,
                &h,
                res,
                storable,
                fwd,
                Waiting::miss(flight, lease),
            );
            Ok(with_status(res, &config.name, &params))
        }
        None => {
            let (mut head, body) = res.into_parts();
            take_tags(&mut head.headers, &config.tag_header);
            let params = format!("fwd={fwd}; fwd-status={}", head.status.as_u16());
            Ok(with_status(
                Response::from_parts(head, CacheBody::inner(body, None)),
                &config.name,
                &params,
            ))
        }
    }
}

/// The session handle a session layer outside this one put on the
/// request, if any (nothing without the `session` feature).
struct SessionProbe {
    #[cfg(feature = "session")]
    session: Option<crate::session::Session>,
}

impl SessionProbe {
    fn of<B>(_req: &Request<B>) -> Self {
        SessionProbe {
            #[cfg(feature = "session")]
            session: _req.extensions().get::<crate::session::Session>().cloned(),
        }
    }

    /// The request carries a session cookie.
    fn personal(&self) -> bool {
        #[cfg(feature = "session")]
        if let Some(s) = &self.session {
            return s.had_cookie();
        }
        false
    }

    /// The handler read the session.
    fn read(&self) -> bool {
        #[cfg(feature = "session")]
        if let Some(s) = &self.session {
            return s.was_read();
        }
        false
    }
}

fn with_status<B>(mut res: Response<B>, name: &str, params: &str) -> Response<B> {
    res.headers_mut()
        .insert(CACHE_STATUS, status_field(name, params));
    res
}

/// `hit; ttl=<seconds left>` (negative when stale) and `extra`.
fn ttl_params(entry: &Entry, age: u64, extra: &str) -> String {
    let ttl = (i128::from(entry.lifetime) - i128::from(age)).div_euclid(1000);
    let mut params = String::with_capacity(24 + extra.len());
    params.push_str("hit; ttl=");
    params.push_str(itoa::Buffer::new().format(ttl));
    params.push_str(extra);
    params
}

/// Adds the stored response's validators to a request, so the handler
/// can answer 304; false when it has none.
fn conditional<B>(req: &mut Request<B>, entry: &Entry) -> bool {
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
fn refresh_headers(
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

/// Fields no entry keeps: connection-specific ones, `Set-Cookie`, `Age`
/// (worked out on each hit) and `Cache-Status`.
fn never_stored(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || name == header::SET_COOKIE
        || name == header::AGE
        || name == CACHE_STATUS
}

/// Stores a revalidated entry again (its freshness worked out from its
/// updated fields); false when those fields no longer allow storing.
fn store_refreshed(
    config: &Arc<Config>,
    key: &str,
    entry: &Entry,
    request_headers: &HeaderMap,
    notify: Option<Written>,
) -> bool {
    let now = SystemTime::now();
    let Ok(keep) = policy::storable(
        request_headers,
        entry.status,
        &entry.headers,
        &config.settings,
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
        Waiting {
            notify,
            ..Waiting::default()
        },
    );
    true
}

/// Told whether a background write reached the store.
type Written = tokio::sync::oneshot::Sender<bool>;

/// What waits on a background write: the followers of a coalesced miss
/// (released when the guard drops), a refresh (told the outcome).
#[derive(Default)]
struct Waiting {
    flight: Option<super::flight::Guard>,
    lease: Option<Lease>,
    notify: Option<Written>,
}

impl Waiting {
    fn miss(flight: Option<super::flight::Guard>, lease: Option<Lease>) -> Self {
        Waiting {
            flight,
            lease,
            notify: None,
        }
    }

    fn done(self, written: bool) {
        drop(self.flight);
        drop(self.lease);
        if let Some(notify) = self.notify {
            let _ = notify.send(written);
        }
    }
}

/// This instance's fill lease on a key: given up (in the background) when
/// dropped, once the entry is written or turned out not storable.
struct Lease {
    config: Arc<Config>,
    key: String,
    holder: String,
}

impl Lease {
    fn new(config: Arc<Config>, key: String, holder: String) -> Self {
        Lease {
            config,
            key,
            holder,
        }
    }

    /// A token no other lease holds: this process, the time, a counter.
    fn holder() -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = policy::unix_ms(SystemTime::now());
        format!("{}-{t}-{n}", std::process::id())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (config, key) = (self.config.clone(), std::mem::take(&mut self.key));
        let holder = std::mem::take(&mut self.holder);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = config.store.unlease(&key, &holder).await {
                    tracing::debug!(error = %e, "cache fill lease not given up; it expires");
                }
            });
        }
    }
}

/// Waits (at most `coalesce_wait`) for another instance holding the fill
/// lease to store the entry: its response once there, or `None` when the
/// lease ends without a usable entry (then ask the handler).
async fn wait_fill<ResBody>(
    config: &Config,
    key: &str,
    request: &HeaderMap,
    method: &Method,
    directives: &Directives,
) -> Option<Response<CacheBody<ResBody>>> {
    let until = tokio::time::Instant::now() + config.coalesce_wait;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(FILL_POLL).await;
        let (raw, held) = config.store.poll(key).await.ok()?;
        if let Some(entry) = raw.and_then(Entry::decode) {
            if entry.vary_hash == vary_hash(&entry.vary, request) {
                let age = policy::age(&entry, SystemTime::now());
                if policy::usable(&entry, age, directives).is_ok() {
                    let params = ttl_params(&entry, age, "; collapsed");
                    return Some(respond_stored_to(
                        config, entry, age, request, method, &params,
                    ));
                }
            }
        }
        if !held {
            return None;
        }
    }
    None
}

/// How often a request waiting on another instance's fill looks again.
const FILL_POLL: Duration = Duration::from_millis(25);

/// Request fields that make a request conditional or partial.
const CONDITIONAL: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// The handler's response on its way out: decides whether it is stored
/// (then copies its body as it streams), strips the tag header, and
/// returns it with the `Cache-Status` parameters. `flight`, when this
/// request leads a coalesced miss, is released once the entry is stored
/// (or not).
fn settle_now<ResBody>(
    config: &Arc<Config>,
    key: String,
    request_headers: &HeaderMap,
    res: Response<ResBody>,
    may_store: bool,
    fwd: &str,
    waiting: Waiting,
) -> (Response<CacheBody<ResBody>>, String)
where
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let (mut head, body) = res.into_parts();
    let tags = take_tags(&mut head.headers, &config.tag_header);
    let mut copy = None;
    let mut stored = "";
    if may_store {
        if let Some((entry, ttl)) = plan(config, request_headers, &head, tags) {
            let hint = usize::try_from(body.size_hint().lower()).unwrap_or(0);
            let config = config.clone();
            copy = Some(Copy::new(config.max_body, hint, move |body| {
                write_entry(config, key, Entry { body, ..entry }, ttl, waiting);
            }));
            stored = "; stored";
        }
    }
    let params = format!("fwd={fwd}; fwd-status={}{stored}", head.status.as_u16());
    (
        Response::from_parts(head, CacheBody::inner(body, copy)),
        params,
    )
}

/// The entry (without its body) and retention for a response that may be
/// stored, or `None`.
fn plan(
    config: &Config,
    request_headers: &HeaderMap,
    head: &http::response::Parts,
    tags: Vec<String>,
) -> Option<(Entry, Duration)> {
    let too_big = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > config.max_body as u64);
    if too_big {
        tracing::debug!("response not stored: body larger than max_body");
        return None;
    }
    let now = SystemTime::now();
    let keep = match policy::storable(
        request_headers,
        head.status,
        &head.headers,
        &config.settings,
        now,
    ) {
        Ok(keep) => keep,
        Err(why) => {
            tracing::trace!(?why, "response not stored");
            return None;
        }
    };
    let vary = policy::vary_names(&head.headers).unwrap_or_default();
    let mut headers = head.headers.clone();
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| never_stored(n))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
    let entry = Entry {
        stored_at: policy::unix_ms(now),
        initial_age: keep.initial_age,
        lifetime: keep.lifetime,
        swr: keep.swr,
        sie: keep.sie,
        flags: keep.flags,
        status: head.status,
        vary_hash: vary_hash(&vary, request_headers),
        vary,
        headers,
        tags,
        body: Bytes::new(),
    };
    Some((entry, Duration::from_millis(keep.retention)))
}

/// Writes an entry in the background; `flight` is released when the write
/// is done.
fn write_entry(config: Arc<Config>, key: String, entry: Entry, ttl: Duration, waiting: Waiting) {
    let Some(raw) = entry.encode() else {
        tracing::debug!("response not stored: a header is too long for an entry");
        return;
    };
    tokio::spawn(async move {
        // Before the write: a purge announced while it runs wins.
        let epoch = config.local.as_ref().map(|l| l.epoch());
        let written = match config.store.store(&key, raw, ttl, &entry.tags).await {
            Ok(()) => {
                if let (Some(local), Some(epoch)) = (&config.local, epoch) {
                    local.keep(&key, entry, epoch);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache store failed; response not stored");
                false
            }
        };
        waiting.done(written);
    });
}

/// The handler's answer to a background refresh: a 304 refreshes the
/// stored entry, a storable response replaces it (its body read here, up
/// to `max_body`), anything else leaves it. True when the entry is being
/// replaced.
async fn settle<ResBody>(
    config: &Arc<Config>,
    key: String,
    stale: Option<Entry>,
    request_headers: &HeaderMap,
    res: Response<ResBody>,
) -> bool
where
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let (tx, written) = tokio::sync::oneshot::channel();
    if res.status() == StatusCode::NOT_MODIFIED {
        // Only a 304 to this cache's own validators refreshes the entry.
        let Some(entry) = stale else { return false };
        let refreshed = refresh_headers(config, entry, res.headers(), request_headers);
        if !store_refreshed(config, &key, &refreshed, request_headers, Some(tx)) {
            return false;
        }
        return written.await.unwrap_or(false);
    }
    let waiting = Waiting {
        notify: Some(tx),
        ..Waiting::default()
    };
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

/// The stored response as the answer to `req`; see [`respond_stored_to`].
fn respond_stored<ReqBody, ResBody>(
    config: &Config,
    entry: Entry,
    age: u64,
    req: &Request<ReqBody>,
    params: &str,
) -> Response<CacheBody<ResBody>> {
    respond_stored_to(config, entry, age, req.headers(), req.method(), params)
}

/// The stored response, or a 304 when the request's validators match it
/// (RFC 9110 §13.1.2, §13.1.3), with `Age` and `Cache-Status`.
fn respond_stored_to<ResBody>(
    config: &Config,
    entry: Entry,
    age: u64,
    request: &HeaderMap,
    method: &Method,
    params: &str,
) -> Response<CacheBody<ResBody>> {
    // RFC 9110 §13.2.1: preconditions apply to a 2xx answer only.
    let not_modified = entry.status.is_success()
        && match request.typed_get::<IfNoneMatch>() {
            Some(inm) => entry
                .headers
                .typed_get::<ETag>()
                .is_some_and(|etag| !inm.precondition_passes(&etag)),
            None => match (
                request.typed_get::<IfModifiedSince>(),
                entry.headers.typed_get::<LastModified>(),
            ) {
                (Some(since), Some(modified)) => !since.is_modified(modified.into()),
                _ => false,
            },
        };
    let (mut head, body) = if not_modified {
        // §15.4.5: the fields a 200 would have sent that describe it.
        let mut headers = HeaderMap::new();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
        ] {
            for value in entry.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let mut res = Response::new(CacheBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        *res.headers_mut() = headers;
        res.into_parts()
    } else {
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            entry.body
        };
        let mut res = Response::new(CacheBody::full(body));
        *res.status_mut() = entry.status;
        *res.headers_mut() = entry.headers;
        res.into_parts()
    };
    head.headers
        .insert(header::AGE, HeaderValue::from(age / 1000));
    head.headers
        .insert(CACHE_STATUS, status_field(&config.name, params));
    Response::from_parts(head, body)
}

/// Unsafe methods: a non-error response invalidates what is stored for
/// the target URI and for `Location` and `Content-Location` on the same
/// origin (RFC 9111 §4.4), before the response goes out, so the client's
/// next read sees its write.
pub(crate) async fn write<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let res = inner.call(req).await?;
    let (mut head, body) = res.into_parts();
    take_tags(&mut head.headers, &config.tag_header);
    if head.status.is_success() || head.status.is_redirection() {
        // The store's generation now, not the one known here (up to a
        // refresh old): a purge of everything elsewhere must not make this
        // invalidation miss the entry stored since. (Writes are rare: one
        // more GET.) The known one too, for what this instance stored
        // under it.
        let known = config.generation.known();
        let generation = match config.store.generation().await {
            Ok(generation) => {
                config.generation.learn(generation);
                config.generation.known()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache store failed; a stored response was not invalidated");
                return Ok(Response::from_parts(head, CacheBody::inner(body, None)));
            }
        };
        let mut generations = vec![generation];
        if known != generation {
            generations.push(known);
        }
        let mut targets = vec![uri.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(target) = head
                .headers
                .get(name)
                .and_then(|v| same_origin(&uri, &headers, v))
            {
                targets.push(target);
            }
        }
        let mut keys = Vec::new();
        for generation in generations {
            for target in &targets {
                keys.push(cache_key(config.sort_query, target, &headers, generation));
            }
        }
        for key in &keys {
            if let Err(e) = config.store.invalidate(key).await {
                tracing::warn!(error = %e, "cache store failed; a stored response was not invalidated");
            }
        }
        config.announce(&keys).await;
    }
    Ok(Response::from_parts(head, CacheBody::inner(body, None)))
}

/// `value` (an absolute or relative reference) as a URI on the request's
/// origin, or `None` when it names another origin.
fn same_origin(uri: &http::Uri, headers: &HeaderMap, value: &HeaderValue) -> Option<http::Uri> {
    let target: http::Uri = value.to_str().ok()?.parse().ok()?;
    match target.authority() {
        None => {
            // A relative reference: resolve an absolute path only.
            let path = target.path_and_query()?.as_str();
            if !path.starts_with('/') {
                return None;
            }
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(path.parse().ok()?);
            http::Uri::from_parts(parts).ok()
        }
        Some(authority) => {
            let host = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })?;
            let scheme = uri.scheme_str().unwrap_or("http");
            let same = authority.as_str().eq_ignore_ascii_case(&host)
                && target.scheme_str().unwrap_or(scheme) == scheme;
            same.then(|| {
                // Keyed as the request would be: without the authority when
                // the request had none.
                if uri.authority().is_some() {
                    target.clone()
                } else {
                    target
                        .path_and_query()
                        .and_then(|p| p.as_str().parse().ok())
                        .unwrap_or(target.clone())
                }
            })
        }
    }
}
