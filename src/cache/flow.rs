//! What the cache does with one request: the read path (hit, revalidation,
//! stale-while-revalidate, stale-if-error, coalesced misses, storing the
//! answer) and the write path (invalidation).

use std::borrow::Cow;
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

use super::directives::Directives;
use super::flight::Role;
use super::layer::{Config, Purger, CACHE_STATUS};
use super::layout::{hash, hash_hex, Entry, MUST_REVALIDATE, NO_CACHE};
use super::local::{Copied, ThreadCopy, MAX_LINE};
use super::policy::{self, Unusable};
use super::store::Fill;
use crate::body::{ResponseBody, Tap};
use crate::error::Error;
use crate::request_session::RequestSession;

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

/// The URI a request's cache key is made of: the one the client sent.
/// Inside axum's `Router::nest` the request's own URI has lost the nest's
/// prefix (two nested routers would share entries); axum keeps the
/// original as `OriginalUri`.
pub(crate) fn key_uri<B>(req: &http::Request<B>) -> &http::Uri {
    #[cfg(feature = "axum")]
    if let Some(original) = req.extensions().get::<axum::extract::OriginalUri>() {
        return &original.0;
    }
    req.uri()
}

/// The cache key of a request to `uri`: [`key_line`], hashed.
pub(crate) fn cache_key(
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
pub(crate) fn key_line(
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
fn write_key_line(
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
fn write_sorted_query(line: &mut Vec<u8>, query: &str) {
    let mut pairs: Vec<&str> = query.split('&').collect();
    pairs.sort_unstable();
    line.extend_from_slice(pairs.join("&").as_bytes());
}

/// The store key of a key line (the first 128 bits of its SHA-256, in
/// hex): this thread's memory of it when the line was seen lately, else
/// computed (then remembered, when the line is at most [`MAX_LINE`]
/// long).
pub(crate) fn store_key(line: &[u8]) -> String {
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
const REMEMBERED_KEYS: usize = 1024;

thread_local! {
    /// Key lines and their store keys: a pure function's results, never
    /// stale (the line names the generation), so the hash is computed
    /// once per line and thread while it stays in use.
    static KEYS: std::cell::RefCell<std::collections::HashMap<Box<[u8]>, [u8; 32], quick_cache::DefaultHashBuilder>> =
        std::cell::RefCell::new(std::collections::HashMap::default());
}

/// What the local tier says of a request, before any future is made.
pub(crate) enum Local<B> {
    /// Its answer: a usable copy.
    Hit(Response<B>),
    /// It was asked and has nothing usable.
    Looked,
    /// Not asked here: no tier, the generation is due for a refresh, or
    /// the tier's copy is not kept per thread (then `read` asks the tier).
    Unknown,
}

/// The local tier's answer to a GET or HEAD, found without awaiting
/// anything: the layer asks before it makes the request's future, so a
/// hit on this thread's copy allocates no future and clones no inner
/// service.
pub(crate) fn answer_locally<B, ResBody>(
    config: &Config,
    req: &Request<B>,
) -> Local<ResponseBody<ResBody>> {
    let Some(local) = &config.local else {
        return Local::Unknown;
    };
    // One clock read, in Unix ms, for the generation and the copy's age.
    let now = policy::unix_ms(SystemTime::now());
    let Some(generation) = config.generation.usable_at(now) else {
        return Local::Unknown;
    };
    let directives = Directives::of_request(req.headers(), config.request_directives);
    if directives.no_cache || SessionProbe::personal_request(req) {
        return Local::Looked;
    }
    let line = |line: &mut Vec<u8>| {
        write_key_line(
            line,
            config.sort_query,
            key_uri(req),
            req.headers(),
            generation,
        )
    };
    let answer = |copy: &mut ThreadCopy| copy_answer(config, copy, req, &directives, now);
    match local.with_copy(line, answer) {
        Copied::Answered(Some(res)) => Local::Hit(res),
        Copied::Answered(None) | Copied::Absent => Local::Looked,
        // The tier itself answers, on the request's way through `read`.
        Copied::Unsuitable => Local::Unknown,
    }
}

/// This thread's copy of a local entry as the answer to `req`, when the
/// request may use it: the prepared fields and body, or for a
/// conditional request the general answer (it may be a 304).
fn copy_answer<B, ResBody>(
    config: &Config,
    copy: &mut ThreadCopy,
    req: &Request<B>,
    directives: &Directives,
    now: u64,
) -> Option<Response<ResponseBody<ResBody>>> {
    let entry = &*copy.entry;
    if entry.vary_hash != vary_hash(&entry.vary, req.headers()) {
        return None;
    }
    let age = policy::age_at(entry, now);
    policy::usable(entry, age, directives).ok()?;
    Some(answer_copy(config, copy, req, age, "; detail=local"))
}

/// A thread's copy (usable at `age` by `req`) as the answer: its prepared
/// fields and body, or for a conditional request the general answer (it
/// may be a 304). `detail` ends `Cache-Status` (the same for every use
/// of one copy).
fn answer_copy<B, ResBody>(
    config: &Config,
    copy: &mut ThreadCopy,
    req: &Request<B>,
    age: u64,
    detail: &'static str,
) -> Response<ResponseBody<ResBody>> {
    let entry = &*copy.entry;
    let ttl = ttl_secs(entry, age);
    if req.headers().contains_key(header::IF_NONE_MATCH)
        || req.headers().contains_key(header::IF_MODIFIED_SINCE)
    {
        let mut buf = itoa::Buffer::new();
        let params = ["hit; ttl=", buf.format(ttl), detail];
        return respond_stored(config, Cow::Borrowed(entry), age, req, &params);
    }
    let status = entry.status;
    let (headers, body) = copy.answer(age / 1000, ttl, number_value, || {
        let mut buf = itoa::Buffer::new();
        status_field(&config.name, &["hit; ttl=", buf.format(ttl), detail])
    });
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    let mut res = Response::new(ResponseBody::full(body));
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

/// The most entries a thread keeps decoded, and the largest it keeps
/// (bytes as stored): 1 MiB of stored bytes per thread at most, plus
/// their prepared header fields.
const DECODED_ENTRIES: usize = 64;
const DECODED_MAX: usize = 16 * 1024;

/// An entry as read from the store, decoded, with its answer's fields
/// prepared by the layer `layer`.
struct Decoded {
    layer: u64,
    raw: Bytes,
    copy: ThreadCopy,
}

thread_local! {
    /// The entries this thread read from the store lately, by store key:
    /// a read that returns the same bytes again (the common case: a hot
    /// entry) skips decoding and reuses the prepared fields.
    static DECODED: std::cell::RefCell<std::collections::HashMap<String, Decoded, quick_cache::DefaultHashBuilder>> =
        std::cell::RefCell::new(std::collections::HashMap::default());
}

/// The entry `raw` (read from the store by the layer `layer` for `key`)
/// holds: decoded again only when this thread has not just decoded the
/// same bytes for that layer.
fn decode_cached(layer: u64, key: &str, raw: Bytes) -> Option<Arc<Entry>> {
    if raw.len() > DECODED_MAX {
        return Entry::decode(raw).map(Arc::new);
    }
    DECODED.with(|decoded| {
        let mut decoded = decoded.borrow_mut();
        if let Some(known) = decoded.get(key) {
            if known.layer == layer && known.raw == raw {
                return Some(known.copy.entry.clone());
            }
        }
        let entry = Arc::new(Entry::decode(raw.clone())?);
        if decoded.len() >= DECODED_ENTRIES && !decoded.contains_key(key) {
            decoded.clear();
        }
        let copy = ThreadCopy::new(entry.clone(), 0, false);
        decoded.insert(key.to_owned(), Decoded { layer, raw, copy });
        Some(entry)
    })
}

/// A stored response just read for `key` as the answer to `req` (usable at
/// `age`), from this thread's prepared fields when it decoded it.
fn answer_read<B, ResBody>(
    config: &Config,
    key: &str,
    entry: Arc<Entry>,
    req: &Request<B>,
    age: u64,
    detail: &'static str,
) -> Response<ResponseBody<ResBody>> {
    // The prepared fields end `Cache-Status` without a detail: an
    // answer with one (a collapsed wait's) is built on its own.
    let answer = detail.is_empty().then(|| {
        DECODED.with(|decoded| {
            let mut decoded = decoded.borrow_mut();
            let known = decoded.get_mut(key)?;
            (known.layer == config.id && Arc::ptr_eq(&known.copy.entry, &entry))
                .then(|| answer_copy(config, &mut known.copy, req, age, detail))
        })
    });
    answer.flatten().unwrap_or_else(|| {
        let mut ttl = itoa::Buffer::new();
        let params = ["hit; ttl=", ttl_of(&mut ttl, &entry, age), detail];
        respond_stored(config, Cow::Borrowed(&entry), age, req, &params)
    })
}

/// A local copy as the answer to `req`, when the request may use it.
fn local_answer<B, ResBody>(
    config: &Config,
    entry: &Entry,
    req: &Request<B>,
    directives: &Directives,
    now: SystemTime,
) -> Option<Response<ResponseBody<ResBody>>> {
    if entry.vary_hash != vary_hash(&entry.vary, req.headers()) {
        return None;
    }
    let age = policy::age(entry, now);
    policy::usable(entry, age, directives).ok()?;
    let mut ttl = itoa::Buffer::new();
    let params = ["hit; ttl=", ttl_of(&mut ttl, entry, age), "; detail=local"];
    Some(respond_stored(
        config,
        Cow::Borrowed(entry),
        age,
        req,
        &params,
    ))
}

/// The hash of a request's values of the headers `names` (all zeros when
/// the response varies on nothing).
#[inline]
fn vary_hash(names: &[HeaderName], headers: &HeaderMap) -> [u8; 16] {
    if names.is_empty() {
        return [0; 16];
    }
    vary_values_hash(names, headers)
}

/// [`vary_hash`] of a response that names some fields (kept out of line:
/// most hits name none).
#[inline(never)]
fn vary_values_hash(names: &[HeaderName], headers: &HeaderMap) -> [u8; 16] {
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

/// `Cache-Status` for this cache: `<name>; <params...>` (the parameters
/// concatenated; one allocation of the exact size).
fn status_field(name: &str, params: &[&str]) -> HeaderValue {
    let len = name.len() + 2 + params.iter().map(|p| p.len()).sum::<usize>();
    let mut field = String::with_capacity(len);
    field.push_str(name);
    field.push_str("; ");
    for p in params {
        field.push_str(p);
    }
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
    Usable(Arc<Entry>, u64),
    /// None to use: RFC 9211's `fwd` reason, and a stale entry (with its
    /// age) when there is one.
    Not(&'static str, Option<(Arc<Entry>, u64)>),
    /// The store failed, and the layer fails closed.
    Failed(Box<crate::Error>),
}

/// `since`: the request has waited on another request's fetch of this key
/// since then (Unix ms); an entry stored after it satisfies the request's
/// own directives (see [`usable_since`]).
async fn find(
    config: &Config,
    key: &str,
    req: &HeaderMap,
    d: &Directives,
    since: Option<u64>,
) -> Found {
    let changes = config.local.as_ref().map(|l| l.changes());
    let found = config.store.lookup(key).await;
    if found.is_ok() {
        config.failures.succeeded();
    }
    match found {
        Err(e) if config.failure == crate::FailurePolicy::Closed => Found::Failed(Box::new(e)),
        Err(e) => {
            config.failures.failed(&e, "asking the handler", false);
            Found::Not("miss; detail=store-error", None)
        }
        Ok(None) => Found::Not("uri-miss", None),
        Ok(Some(raw)) => match decode_cached(config.id, key, raw) {
            None => Found::Not("miss; detail=unreadable", None),
            Some(entry) if entry.vary_hash != vary_hash(&entry.vary, req) => {
                Found::Not("vary-miss", None)
            }
            Some(entry) => {
                let age = policy::age(&entry, SystemTime::now());
                match usable_since(&entry, age, d, since) {
                    Ok(()) => {
                        if let (Some(local), Some(changes)) = (&config.local, changes) {
                            local.keep(key, Entry::clone(&entry), changes);
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

/// Whether `entry` may answer a request with directives `d` ([`policy::usable`]),
/// where an entry stored after `since` (the request waited on
/// another request's fetch meanwhile) counts as validated: it is as fresh
/// as asking the handler again would be, so a request's `no-cache` or
/// `max-age=0` is met by the fetch it shared, and concurrent such requests
/// run the handler once.
fn usable_since(
    entry: &Entry,
    age: u64,
    d: &Directives,
    since: Option<u64>,
) -> Result<(), Unusable> {
    // Strictly after: both are whole milliseconds, and an entry stored in
    // the millisecond the request arrived may have been stored before it.
    match since {
        Some(since) if entry.stored_at > since => {
            policy::usable(entry, age, &Directives::default())
        }
        _ => policy::usable(entry, age, d),
    }
}

/// Whether a stale `entry`, `age` ms old, may be served while it is
/// refreshed in the background (RFC 5861 §3).
fn serve_while_revalidating(entry: &Entry, age: u64) -> bool {
    let strict = entry.flags & (MUST_REVALIDATE | NO_CACHE) != 0;
    !strict && age.saturating_sub(entry.lifetime) < entry.swr
}

/// GET and HEAD: answer from the store when a stored response may be used,
/// else ask the inner service (and store its response when it may be).
/// `looked`: [`answer_locally`] already asked the local tier.
pub(crate) async fn read<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    mut req: Request<ReqBody>,
    looked: bool,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
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
        // Failing closed, only a request that would have looked the store
        // up is refused (one with a session, or `no-cache` where honoured,
        // goes to the handler as it always does).
        Err(e)
            if config.failure == crate::FailurePolicy::Closed
                && !SessionProbe::of(&req).personal()
                && !Directives::of_request(req.headers(), config.request_directives).no_cache =>
        {
            return Ok(refuse(&config, req, &e));
        }
        Err(e) => {
            // Without the generation no key is known to be current:
            // neither read nor store.
            config.failures.failed(&e, "asking the handler", false);
            return Box::pin(async move {
                req.extensions_mut().insert(Purger::of(&config));
                let (mut head, body) = crate::trace::unmeasured(inner.call(req))
                    .await?
                    .into_parts();
                // Tags are the cache's business, stored or not.
                take_tags(&mut head.headers, &config.tag_header);
                Ok(with_status(
                    Response::from_parts(head, ResponseBody::inner(body)),
                    &config.name,
                    "fwd=miss; detail=store-error",
                ))
            })
            .await;
        }
    };
    let key = store_key(&key_line(
        config.sort_query,
        key_uri(&req),
        req.headers(),
        generation,
    ));
    let directives = Directives::of_request(req.headers(), config.request_directives);
    // Inside the session layer: a request with a session is never answered
    // from the store (its handler may read the session), and a response
    // whose handler read the session is never stored.
    let session = SessionProbe::of(&req);
    // The local tier first (unless already asked): a hit there is no
    // round trip.
    if let (Some(local), false, false, false) = (
        &config.local,
        looked,
        session.personal(),
        directives.no_cache,
    ) {
        if let Some(res) = local
            .get(&key)
            .and_then(|entry| local_answer(&config, &entry, &req, &directives, now))
        {
            return Ok(res);
        }
    }
    // Then the store.
    let mut first = None;
    if !session.personal() && !directives.no_cache {
        match find(&config, &key, req.headers(), &directives, None).await {
            Found::Usable(entry, age) => {
                return Ok(answer_read(&config, &key, entry, &req, age, ""));
            }
            Found::Failed(e) => return Ok(refuse(&config, req, &e)),
            not => first = Some(not),
        }
    }
    // A miss, a stale entry or a bypass: the rest, boxed apart (its state
    // would otherwise be part of every request's future, hits included;
    // most of a hit's future, 2.9 KB, is the store call).
    Box::pin(read_on(config, inner, req, key, directives, session, first)).await
}

/// The answer when a lookup failed and the layer fails closed: the
/// store-failure problem (or the application's answer), marked
/// `store-error` in `Cache-Status`, never stored.
fn refuse<ReqBody, B>(
    config: &Config,
    req: Request<ReqBody>,
    e: &crate::Error,
) -> Response<ResponseBody<B>> {
    config
        .failures
        .failed(e, "refusing the request (fail-closed)", true);
    let (parts, _) = req.into_parts();
    let problem = crate::Problem::store_failure("cache", e);
    let refusal = crate::Refusal::new("cache", crate::RefusalKind::StoreFailure, problem);
    let res = config.on_refusal.answer(&parts, &refusal);
    with_status(
        res.map(ResponseBody::full),
        &config.name,
        "fwd=miss; detail=store-error",
    )
}

/// [`read`] once the store had nothing to use as it is: `first` is what
/// it found (`None` when it was not asked).
async fn read_on<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    mut req: Request<ReqBody>,
    key: String,
    directives: Directives,
    session: SessionProbe,
    mut first: Option<Found>,
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
    // When this request started to wait on another's fetch, if it does.
    let arrived = policy::unix_ms(SystemTime::now());
    let mut fwd;
    let mut stale = None;
    let mut flight = None;
    let mut lease = None;
    if session.personal() {
        fwd = "bypass";
    } else {
        let mut collapsed = false;
        loop {
            let found = match first.take() {
                Some(found) => found,
                None => {
                    let since = collapsed.then_some(arrived);
                    find(&config, &key, req.headers(), &directives, since).await
                }
            };
            match found {
                Found::Usable(entry, age) => {
                    let detail = if collapsed { "; collapsed" } else { "" };
                    return Ok(answer_read(&config, &key, entry, &req, age, detail));
                }
                Found::Not(why, found) => {
                    fwd = why;
                    stale = found.map(|(entry, age)| (Arc::unwrap_or_clone(entry), age));
                }
                Found::Failed(e) => return Ok(refuse(&config, req, &e)),
            }
            // Every way a GET reaches the handler (a miss, a stale entry,
            // another variant, a request refusing the stored response)
            // fetches once per key at a time: the others wait for it, once,
            // then look again. Not when the store is failing (nothing to
            // wait on), nor for a stale entry that may be served while it
            // is refreshed (no one waits then).
            if collapsed || !is_get || fwd.contains("store-error") {
                break;
            }
            if let Some((entry, age)) = &stale {
                if fwd == "stale" && serve_while_revalidating(entry, *age) {
                    break;
                }
            }
            match config.flights.join(&key) {
                Role::Leader(guard) => {
                    flight = Some(guard);
                    // Across instances: one fills the entry, the others
                    // wait for it. Only a lease's holder stores.
                    let mut taken = Lease::take(&config, &key).await;
                    if let Ok((None, _)) = taken {
                        let waited =
                            wait_fill(&config, &key, req.headers(), &method, &directives, arrived);
                        if let Some(res) = waited.await {
                            return Ok(res);
                        }
                        // That fill ended with nothing for this request
                        // (not storable, or its holder gone): fill it
                        // here if no one else does now.
                        taken = Lease::take(&config, &key).await;
                    }
                    match taken {
                        Ok((Some(taken), entry)) => {
                            // A fill that ended (and let the lease go)
                            // just before this request took it: its entry.
                            let filled = entry.and_then(|raw| {
                                usable_fill(&config, &key, raw, req.headers(), &directives, arrived)
                            });
                            if let Some((entry, age)) = filled {
                                drop(taken);
                                return Ok(answer_read(
                                    &config,
                                    &key,
                                    entry,
                                    &req,
                                    age,
                                    "; collapsed",
                                ));
                            }
                            lease = Some(taken);
                        }
                        Ok((None, _)) => {}
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
        let mut res = Response::new(ResponseBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        res.headers_mut().insert(
            CACHE_STATUS,
            status_field(&config.name, &["fwd=miss; detail=only-if-cached"]),
        );
        return Ok(res);
    }

    if let Some((entry, age)) = stale.take() {
        let over = age.saturating_sub(entry.lifetime);
        let strict = entry.flags & (MUST_REVALIDATE | NO_CACHE) != 0;
        // RFC 5861 §3: serve it now, refresh in the background.
        if is_get && fwd == "stale" && serve_while_revalidating(&entry, age) {
            let mut ttl = itoa::Buffer::new();
            let params = [
                "hit; ttl=",
                ttl_of(&mut ttl, &entry, age),
                "; detail=stale-while-revalidate",
            ];
            let res = respond_stored(&config, Cow::Borrowed(&entry), age, &req, &params);
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
                            if Entry::decode(raw.clone())
                                .is_some_and(|e| e.stored_at != version) =>
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
                    req.extensions_mut().insert(Purger::of(&config));
                    let replaced = match crate::trace::unmeasured(inner.call(req)).await {
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
            return Ok(res);
        }
        // Else ask the handler, conditionally when the client did not.
        let client_conditional = req.headers().contains_key(header::IF_NONE_MATCH)
            || req.headers().contains_key(header::IF_MODIFIED_SINCE);
        // What the client asked, before this cache adds its validators.
        let request_headers = req.headers().clone();
        let revalidating = is_get && !client_conditional && conditional(&mut req, &entry);
        let may_use_stale = !strict && over < entry.sie;
        req.extensions_mut().insert(Purger::of(&config));
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
                    &config,
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
                &config,
                Cow::Owned(entry),
                age,
                &request_headers,
                &method,
                &[&params],
            ));
        }
        if revalidating && res.status() == StatusCode::NOT_MODIFIED {
            let (head, _) = res.into_parts();
            let refreshed = refresh_headers(&config, entry, &head.headers, &request_headers);
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
            let storable =
                !session.read() && (cookies.is_empty() || config.settings.strip_set_cookie);
            let stored = storable
                && store_refreshed(
                    &config,
                    &key,
                    &refreshed,
                    &request_headers,
                    Waiting::miss(flight.take(), lease.take()),
                );
            let params = format!(
                "fwd=stale; fwd-status=304{}",
                if stored { "; stored" } else { "" }
            );
            let mut res = respond_stored_to(
                &config,
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
        let storable = is_get && !session.read();
        let (res, params) = settle_now(
            &config,
            key,
            &request_headers,
            res,
            storable,
            fwd,
            Waiting::miss(flight, lease),
        );
        return Ok(with_status(res, &config.name, &params));
    }

    let request_headers = if is_get {
        Some(req.headers().clone())
    } else {
        None
    };
    // The handler runs only here and above (never for a stored answer):
    // it may want to purge.
    req.extensions_mut().insert(Purger::of(&config));
    let res = crate::trace::unmeasured(inner.call(req)).await?;
    match request_headers {
        Some(h) => {
            // Not a response made while the store was failing for this
            // request: its write could land when the store comes back (a
            // paused Redis) and, made from a degraded handler, serve a
            // wrong page everywhere until it expires.
            let storable = !session.read() && !fwd.contains("store-error");
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
                Response::from_parts(head, ResponseBody::inner(body)),
                &config.name,
                &params,
            ))
        }
    }
}

/// The session a session layer outside this one put on the request, if
/// any (see [`request_session`](crate::request_session)).
struct SessionProbe {
    session: Option<RequestSession>,
}

impl SessionProbe {
    fn of<B>(req: &Request<B>) -> Self {
        SessionProbe {
            session: RequestSession::of(req.extensions()).cloned(),
        }
    }

    /// `req` carries a session cookie (as [`personal`](Self::personal),
    /// without keeping the session).
    fn personal_request<B>(req: &Request<B>) -> bool {
        RequestSession::of(req.extensions()).is_some_and(RequestSession::had_cookie)
    }

    /// The request carries a session cookie.
    fn personal(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(RequestSession::had_cookie)
    }

    /// The handler used the session (any method).
    fn read(&self) -> bool {
        self.session.as_ref().is_some_and(RequestSession::was_used)
    }
}

pub(crate) fn with_status<B>(mut res: Response<B>, name: &str, params: &str) -> Response<B> {
    res.headers_mut()
        .insert(CACHE_STATUS, status_field(name, &[params]));
    res
}

/// The `ttl` parameter of a hit: whole seconds of freshness left
/// (negative when stale).
fn ttl_secs(entry: &Entry, age: u64) -> i64 {
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ms(entry.lifetime).saturating_sub(ms(age)).div_euclid(1000)
}

/// [`ttl_secs`], formatted in `buf`.
fn ttl_of<'a>(buf: &'a mut itoa::Buffer, entry: &Entry, age: u64) -> &'a str {
    buf.format(ttl_secs(entry, age))
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

/// This instance's fill lease on a key, taken before the handler runs:
/// only its holder stores the entry, and only while it holds it (an
/// invalidation removes it: see the store's docs). Renewed while the fill
/// runs; given up (in the background) when dropped, unless the entry's
/// write gave it up.
struct Lease {
    config: Arc<Config>,
    key: String,
    holder: String,
    /// Before the lease was asked for, so before the handler ran.
    began: SystemTime,
    renewing: tokio::task::AbortHandle,
    /// The entry was written, which gave the lease up.
    written: bool,
}

impl Lease {
    /// Takes the fill lease of `key` ([`fill_lease`] long, renewed while
    /// held): `None` when another holds it; with the entry stored under
    /// `key` right after (in the same round trip).
    async fn take(
        config: &Arc<Config>,
        key: &str,
    ) -> Result<(Option<Lease>, Option<Bytes>), Error> {
        let began = SystemTime::now();
        let holder = Lease::holder(began);
        let sent = tokio::time::Instant::now();
        let (taken, entry) = config.store.lease(key, &holder, fill_lease(config)).await?;
        if !taken {
            return Ok((None, entry));
        }
        // Renewed while the fill runs, for at most MAX_FILL; a lease lost
        // shows when its write is refused (no one listens to `lost`).
        let renewing = {
            let (config, key, holder) = (config.clone(), key.to_owned(), holder.clone());
            let lease = fill_lease(&config);
            crate::lease::keep_renewed(
                sent,
                lease,
                Some(MAX_FILL),
                move || {
                    let (config, key, holder) = (config.clone(), key.clone(), holder.clone());
                    async move { config.store.renew(&key, &holder, lease).await }
                },
                tokio::sync::watch::channel(false).0,
            )
        };
        let lease = Lease {
            config: config.clone(),
            key: key.to_owned(),
            holder,
            began,
            renewing,
            written: false,
        };
        Ok((Some(lease), entry))
    }

    /// A token no other lease holds: a random number drawn once per
    /// process (instances in containers often share a process id), the
    /// time, a counter, each in fixed width (lease owners are told by a
    /// prefix: no token may begin another).
    fn holder(now: SystemTime) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            // RandomState is seeded from the operating system's random source.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{base:016x}-{:016x}-{n:016x}", policy::unix_ms(now))
    }

    fn fill(&self) -> Fill<'_> {
        Fill::new(&self.holder, self.began)
    }
}

/// How long a fill lease lasts between renewals: `coalesce_wait`, at
/// least [`MIN_FILL_LEASE`] (a lease shorter than a renewal's round trip
/// would end under its fill).
fn fill_lease(config: &Config) -> Duration {
    config.coalesce_wait.max(MIN_FILL_LEASE)
}

/// The shortest fill lease: 1 s.
const MIN_FILL_LEASE: Duration = Duration::from_secs(1);

/// How long a fill may keep its lease (renewed): a minute, from before the
/// handler ran to the end of its body (a client reading the body slowly
/// holds the copy up). A fill slower than that is answered but not stored,
/// and other instances may fill meanwhile.
const MAX_FILL: Duration = Duration::from_secs(60);

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewing.abort();
        if self.written {
            return;
        }
        let (config, key) = (self.config.clone(), std::mem::take(&mut self.key));
        let holder = std::mem::take(&mut self.holder);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            crate::task::spawn_on(&handle, async move {
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
    since: u64,
) -> Option<Response<ResponseBody<ResBody>>> {
    let until = tokio::time::Instant::now() + config.coalesce_wait;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(FILL_POLL).await;
        let (raw, held) = config.store.poll(key).await.ok()?;
        if let Some(entry) = raw.and_then(Entry::decode) {
            if entry.vary_hash == vary_hash(&entry.vary, request) {
                let age = policy::age(&entry, SystemTime::now());
                if usable_since(&entry, age, directives, Some(since)).is_ok() {
                    let mut ttl = itoa::Buffer::new();
                    let params = ["hit; ttl=", ttl_of(&mut ttl, &entry, age), "; collapsed"];
                    return Some(respond_stored_to(
                        config,
                        Cow::Owned(entry),
                        age,
                        request,
                        method,
                        &params,
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

/// The entry a just-ended fill stored (`raw`, read with the lease), when it
/// may answer this request: stored after it arrived (`since`), it counts
/// as validated, as with [`usable_since`].
fn usable_fill(
    config: &Config,
    key: &str,
    raw: Bytes,
    request: &HeaderMap,
    directives: &Directives,
    since: u64,
) -> Option<(Arc<Entry>, u64)> {
    let entry = decode_cached(config.id, key, raw)?;
    if entry.vary_hash != vary_hash(&entry.vary, request) {
        return None;
    }
    let age = policy::age(&entry, SystemTime::now());
    usable_since(&entry, age, directives, Some(since)).ok()?;
    Some((entry, age))
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
) -> (Response<ResponseBody<ResBody>>, String)
where
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let (mut head, body) = res.into_parts();
    let tags = take_tags(&mut head.headers, &config.tag_header);
    let mut copy = None;
    let mut stored = "";
    // Only a fill lease's holder stores (see `write_entry`).
    if may_store && waiting.lease.is_some() {
        let requested = waiting
            .lease
            .as_ref()
            .map_or_else(SystemTime::now, |l| l.began);
        if let Some((entry, ttl)) = plan(config, request_headers, &head, tags, requested) {
            let hint = usize::try_from(body.size_hint().lower()).unwrap_or(0);
            let config = config.clone();
            copy = Some(Tap::new(config.max_body, hint, move |body| {
                write_entry(config, key, Entry { body, ..entry }, ttl, waiting);
            }));
            stored = "; stored";
        }
    }
    let params = format!("fwd={fwd}; fwd-status={}{stored}", head.status.as_u16());
    (
        Response::from_parts(head, ResponseBody::tapped(body, copy)),
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
    requested: SystemTime,
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
    let keep = match policy::storable_since(
        request_headers,
        head.status,
        &head.headers,
        &config.settings,
        requested,
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

/// Writes an entry in the background, for the holder of its fill lease
/// (`waiting.lease`; without one nothing is written): the store writes it
/// only while the lease is still the holder's, so a response fetched
/// before a write's invalidation (which removed the lease) is never
/// stored after it. `flight` is released when the write is done.
fn write_entry(
    config: Arc<Config>,
    key: String,
    entry: Entry,
    ttl: Duration,
    mut waiting: Waiting,
) {
    let Some(raw) = entry.encode() else {
        tracing::debug!("response not stored: a header is too long for an entry");
        return;
    };
    crate::task::spawn_here(async move {
        let Some(lease) = waiting.lease.as_mut() else {
            waiting.done(false);
            return;
        };
        // Before the write: a purge announced while it runs wins.
        let changes = config.local.as_ref().map(|l| l.changes());
        let stored = config
            .store
            .store(&key, raw, ttl, &entry.tags, lease.fill())
            .await;
        let written = match stored {
            Ok(true) => {
                lease.written = true;
                if let (Some(local), Some(changes)) = (&config.local, changes) {
                    local.keep(&key, entry, changes);
                }
                true
            }
            Ok(false) => {
                tracing::debug!(
                    "response not stored: its URI was invalidated or a tag of it purged \
                     since its fetch began (or its lease ended), or a tag of it records \
                     as many live entries as it may"
                );
                false
            }
            Err(e) => {
                config.failures.failed(&e, "response not stored", false);
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

/// The stored response as the answer to `req`; see [`respond_stored_to`].
fn respond_stored<ReqBody, ResBody>(
    config: &Config,
    entry: Cow<'_, Entry>,
    age: u64,
    req: &Request<ReqBody>,
    params: &[&str],
) -> Response<ResponseBody<ResBody>> {
    respond_stored_to(config, entry, age, req.headers(), req.method(), params)
}

/// The stored response, or a 304 when the request's validators match it
/// (RFC 9110 §13.1.2, §13.1.3), with `Age` and `Cache-Status`.
fn respond_stored_to<ResBody>(
    config: &Config,
    entry: Cow<'_, Entry>,
    age: u64,
    request: &HeaderMap,
    method: &Method,
    params: &[&str],
) -> Response<ResponseBody<ResBody>> {
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
        let mut res = Response::new(ResponseBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        *res.headers_mut() = headers;
        res.into_parts()
    } else {
        let status = entry.status;
        let (headers, body) = match entry {
            Cow::Owned(entry) => (entry.headers, entry.body),
            Cow::Borrowed(entry) => (entry.headers.clone(), entry.body.clone()),
        };
        let mut headers = headers;
        set_content_length(&mut headers, status, body.len());
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            body
        };
        let mut res = Response::new(ResponseBody::full(body));
        *res.status_mut() = status;
        *res.headers_mut() = headers;
        res.into_parts()
    };
    head.headers.insert(header::AGE, number_value(age / 1000));
    head.headers
        .insert(CACHE_STATUS, status_field(&config.name, params));
    Response::from_parts(head, body)
}

/// Sets `Content-Length` to the stored body's length, unless the stored
/// response has one or may not (a 204, RFC 9110 §8.6); a `HEAD` gets the
/// length its `GET` has.
pub(crate) fn set_content_length(headers: &mut HeaderMap, status: StatusCode, len: usize) {
    if status != StatusCode::NO_CONTENT && !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, number_value(len as u64));
    }
}

/// Numbers below this (an `Age` under almost three hours, a
/// `Content-Length` under 10 kB) come from [`DIGITS`], without an
/// allocation each.
const NUMBERS: u64 = 10_000;

/// The decimal forms of `0..NUMBERS`, one after another (38,890 bytes).
static DIGITS: [u8; 38_890] = all_digits();

const fn all_digits() -> [u8; 38_890] {
    let mut out = [0u8; 38_890];
    let mut n = 0;
    let mut at = 0;
    while n < NUMBERS {
        let len = digits(n);
        let mut i = len;
        let mut v = n;
        while i > 0 {
            i -= 1;
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += len;
        n += 1;
    }
    out
}

/// The number of decimal digits of `n` (below [`NUMBERS`]).
const fn digits(n: u64) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        _ => 4,
    }
}

/// A field value holding the number `n` (`Age`, `Content-Length`).
fn number_value(n: u64) -> HeaderValue {
    if n < NUMBERS {
        // Where `n` starts in the table: every shorter number first.
        let len = digits(n);
        let (first, start) = match len {
            1 => (0, 0),
            2 => (10, 10),
            3 => (100, 190),
            _ => (1000, 2890),
        };
        let at = start + (n - first) as usize * len;
        if let Ok(text) = std::str::from_utf8(&DIGITS[at..at + len]) {
            return HeaderValue::from_static(text);
        }
    }
    HeaderValue::from(n)
}

/// Unsafe methods: a non-error response invalidates what is stored for
/// the target URI and for `Location` and `Content-Location` on the same
/// origin (RFC 9111 §4.4), before the response goes out, so the client's
/// next read sees its write.
pub(crate) async fn write<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let uri = key_uri(&req).clone();
    let headers = req.headers().clone();
    let res = crate::trace::unmeasured(inner.call(req)).await?;
    let (mut head, body) = res.into_parts();
    take_tags(&mut head.headers, &config.tag_header);
    if head.status.is_success() || head.status.is_redirection() {
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
        // Concurrent writes to the same URIs share one run of store calls
        // that begins after each of their handlers finished.
        let id = targets
            .iter()
            .map(|t| cache_key(config.sort_query, t, &headers, 0))
            .collect::<Vec<_>>()
            .join(",");
        config
            .invalidations
            .run(id, || invalidate(&config, &targets, &headers))
            .await;
    }
    Ok(Response::from_parts(head, ResponseBody::inner(body)))
}

/// Removes the entries of `targets` (under the store's generation, and
/// the one this instance knew) and tells every local tier; false when a
/// store call failed.
async fn invalidate(config: &Config, targets: &[http::Uri], headers: &HeaderMap) -> bool {
    // The store's generation now, not the one known here (up to a refresh
    // old): a purge of everything elsewhere must not make this
    // invalidation miss the entry stored since. The known one too, for
    // what this instance stored under it.
    let known = config.generation.known();
    let generation = match config.store.generation().await {
        Ok(generation) => {
            config.generation.learn(generation);
            config.generation.known()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cache store failed; a stored response was not invalidated");
            return false;
        }
    };
    let mut generations = vec![generation];
    if known != generation {
        generations.push(known);
    }
    let mut keys = Vec::new();
    for generation in generations {
        for target in targets {
            keys.push(cache_key(config.sort_query, target, headers, generation));
        }
    }
    let mut done = true;
    for key in &keys {
        if let Err(e) = config.store.invalidate(key).await {
            tracing::warn!(error = %e, "cache store failed; a stored response was not invalidated");
            done = false;
        }
    }
    config.announce(&keys).await;
    done
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
            // The host, as the cache key has it (no scheme), of an http
            // or https URI.
            let web = target
                .scheme_str()
                .is_none_or(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
            let same = web && authority.as_str().eq_ignore_ascii_case(&host);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_values_are_decimal() {
        for n in (0..NUMBERS + 50).chain([99_999, u64::MAX]) {
            assert_eq!(number_value(n).to_str().unwrap(), n.to_string(), "{n}");
        }
    }
}
