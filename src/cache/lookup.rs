//! The first step of a read: whether the request may use a stored
//! response at all (a session, the request's directives), then the local
//! tier (this thread's copy first) and the store, with the entries this
//! thread decoded lately.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header;
use http::{HeaderMap, Method, Request, Response};

use super::answer::{respond_stored, respond_stored_to};
use super::config::Config;
use super::directives::{Directives, RequestDirectives};
use super::fields::{number_value, status_field, ttl_of, ttl_secs};
use super::key::{key_uri, vary_hash, write_key_line};
use super::layout::{decode_pointer, split_key, variant_key, Entry};
use super::local::{Copied, ThreadCopy};
use super::policy::{self, Unusable};
use crate::body::ResponseBody;
use crate::request_session::RequestSession;

/// What the local tier says of a request, before any future is made.
pub(super) enum Local<B> {
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
pub(super) fn answer_locally<B, ResBody>(
    config: &Config,
    req: &Request<B>,
) -> Local<ResponseBody<ResBody>> {
    let Some(local) = config.local.as_ref().filter(|_| config.thread_copies) else {
        return Local::Unknown;
    };
    // One clock read, in Unix ms, for the generation and the copy's age.
    let now = policy::unix_ms(SystemTime::now());
    let Some(generation) = config.generation.usable_at(now) else {
        return Local::Unknown;
    };
    let directives = Directives::of_request(req.headers(), config.request_directives);
    if directives.no_cache || SessionProbe::personal_request(req, config.request_directives) {
        return Local::Looked;
    }
    let extra = config.key.extra_of(req);
    let line = |line: &mut Vec<u8>| {
        write_key_line(
            line,
            &config.key,
            key_uri(req),
            req.headers(),
            extra.as_deref(),
            generation,
        )
    };
    let answer = |copy: &mut ThreadCopy| copy_answer(config, copy, req, &directives, now);
    match local.with_copy(line, req.headers(), answer) {
        Copied::Answered(Some(res)) => Local::Hit(res),
        Copied::Answered(None) | Copied::Absent => Local::Looked,
        // The tier itself answers, on the request's way through `read`.
        Copied::Unsuitable => Local::Unknown,
    }
}

/// This thread's copy of a local entry as the answer to `req`, when the
/// request may use it: the prepared fields and body, or for a
/// conditional request the general answer (it may be a 304).
pub(super) fn copy_answer<B, ResBody>(
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
    let detail = "; detail=local";
    Some(answer_copy(
        config,
        copy,
        req.headers(),
        req.method(),
        age,
        detail,
    ))
}

/// A thread's copy (usable at `age`) as the answer to a request with
/// `request` fields and `method`: its prepared
/// fields and body, or for a conditional request the general answer (it
/// may be a 304). `detail` ends `Cache-Status` (the same for every use
/// of one copy).
pub(super) fn answer_copy<ResBody>(
    config: &Config,
    copy: &mut ThreadCopy,
    request: &HeaderMap,
    method: &Method,
    age: u64,
    detail: &'static str,
) -> Response<ResponseBody<ResBody>> {
    let entry = &*copy.entry;
    let ttl = ttl_secs(entry, age);
    // Conditional and range requests: the general answer (a 304, a 206).
    if request.contains_key(header::IF_NONE_MATCH)
        || request.contains_key(header::IF_MODIFIED_SINCE)
        || request.contains_key(header::RANGE)
    {
        let mut buf = itoa::Buffer::new();
        let params = ["hit; ttl=", buf.format(ttl), detail];
        return respond_stored_to(config, Cow::Borrowed(entry), age, request, method, &params);
    }
    let status = entry.status;
    let (headers, body) = copy.answer(age / 1000, ttl, number_value, || {
        let mut buf = itoa::Buffer::new();
        status_field(&config.name, &["hit; ttl=", buf.format(ttl), detail])
    });
    let body = if method == Method::HEAD {
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
pub(super) const DECODED_ENTRIES: usize = 64;

pub(super) const DECODED_MAX: usize = 16 * 1024;

/// An entry as read from the store, decoded, with its answer's fields
/// prepared by the layer `layer`.
pub(super) struct Decoded {
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
pub(super) fn decode_cached(layer: u64, key: &str, raw: Bytes) -> Option<Arc<Entry>> {
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

/// A stored response just read for `key` as the answer to a request
/// with `request` fields and `method` (usable at
/// `age`), from this thread's prepared fields when it decoded it.
pub(super) fn answer_read<ResBody>(
    config: &Config,
    key: &str,
    entry: Arc<Entry>,
    request: &HeaderMap,
    method: &Method,
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
                .then(|| answer_copy(config, &mut known.copy, request, method, age, detail))
        })
    });
    answer.flatten().unwrap_or_else(|| {
        let mut ttl = itoa::Buffer::new();
        let params = ["hit; ttl=", ttl_of(&mut ttl, &entry, age), detail];
        respond_stored_to(config, Cow::Borrowed(&entry), age, request, method, &params)
    })
}

/// A local copy as the answer to `req`, when the request may use it.
pub(super) fn local_answer<B, ResBody>(
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

/// What a lookup found.
pub(super) enum Found {
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
/// own directives (see [`usable_since`]). `key` may change: to the
/// request's variant when the URL's key holds a pointer, or back to the
/// URL's when its variant is not there (see [`fetch`]).
pub(super) async fn find(
    config: &Config,
    key: &mut String,
    req: &HeaderMap,
    d: &Directives,
    since: Option<u64>,
) -> Found {
    let changes = config.local.as_ref().map(|l| l.changes());
    let found = fetch(config, key, req).await;
    if found.is_ok() {
        config.failures.succeeded();
    }
    let key = key.as_str();
    match found {
        Err(e) if config.failure == crate::FailurePolicy::Closed => Found::Failed(Box::new(e)),
        Err(e) => {
            config.failures.failed(&e, "asking the handler", false);
            Found::Not("miss; detail=store-error", None)
        }
        Ok((None, false)) => Found::Not("uri-miss", None),
        Ok((None, true)) => Found::Not("vary-miss", None),
        Ok((Some(raw), _)) => match decode_cached(config.id, key, raw) {
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

/// The stored value of `key` for a request with fields `req`, and
/// whether its URL is known to vary. One round trip when `key` is right:
/// a URL's key that holds an entry, or the request's variant. A URL's key
/// that holds a pointer: the request's variant is read next (and the
/// names learned). A variant not there: the URL's key is read, which
/// tells whether the URL still varies, and on what.
pub(super) async fn fetch(
    config: &Config,
    key: &mut String,
    req: &HeaderMap,
) -> Result<(Option<Bytes>, bool), crate::Error> {
    let raw = config.store.lookup(key).await?;
    let (url, variant) = split_key(key);
    let url = url.to_owned();
    let raw = match (raw, variant) {
        (Some(raw), None) => raw,
        (Some(raw), Some(_)) => return Ok((Some(raw), true)),
        (None, None) => return Ok((None, false)),
        (None, Some(_)) => {
            let Some(raw) = config.store.lookup(&url).await? else {
                config.varying.learn(&url, &[]);
                *key = url;
                return Ok((None, false));
            };
            if decode_pointer(&raw).is_none() {
                // The URL no longer varies: its one response.
                config.varying.learn(&url, &[]);
                *key = url;
                return Ok((Some(raw), false));
            }
            raw
        }
    };
    let Some(names) = decode_pointer(&raw) else {
        return Ok((Some(raw), false));
    };
    config.varying.learn(&url, &names);
    let variant = variant_key(&url, &vary_hash(&names, req));
    if variant == *key {
        // The variant looked up first is the one the pointer names.
        return Ok((None, true));
    }
    *key = variant;
    Ok((config.store.lookup(key).await?, true))
}

/// Whether `entry` may answer a request with directives `d` ([`policy::usable`]),
/// where an entry stored after `since` (the request waited on
/// another request's fetch meanwhile) counts as validated: it is as fresh
/// as asking the handler again would be, so a request's `no-cache` or
/// `max-age=0` is met by the fetch it shared, and concurrent such requests
/// run the handler once.
pub(super) fn usable_since(
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

/// What makes a request the handler's alone: the session a session layer
/// outside this one put on it, if any (see
/// [`request_session`](crate::request_session)), and preconditions only
/// the origin can evaluate (`If-Match`, `If-Unmodified-Since`: RFC 9111
/// §4.3.2). The answer to a request with those is never stored as the
/// page (it may be a 412); under [`RequestDirectives::Honour`] such a
/// request also goes to the handler with them intact, while by default
/// (as for the client's other requests of the cache) a stored response
/// answers it, so that no client can make the cache bypass itself.
pub(super) struct SessionProbe {
    session: Option<RequestSession>,
    for_origin: bool,
    forwarded: bool,
}

impl SessionProbe {
    pub(super) fn of<B>(req: &Request<B>, policy: RequestDirectives) -> Self {
        let for_origin = for_origin(req.headers());
        SessionProbe {
            session: RequestSession::of(req.extensions()).cloned(),
            for_origin,
            forwarded: for_origin && policy == RequestDirectives::Honour,
        }
    }

    /// `req` is never answered from the store (as
    /// [`personal`](Self::personal), without keeping the session).
    pub(super) fn personal_request<B>(req: &Request<B>, policy: RequestDirectives) -> bool {
        RequestSession::of(req.extensions()).is_some_and(RequestSession::had_cookie)
            || (policy == RequestDirectives::Honour && for_origin(req.headers()))
    }

    /// The request is never answered from the store: it carries a session
    /// cookie, or (when forwarded) a precondition for the origin.
    pub(super) fn personal(&self) -> bool {
        self.forwarded
            || self
                .session
                .as_ref()
                .is_some_and(RequestSession::had_cookie)
    }

    /// The answer will not be stored, known before the handler runs (a
    /// precondition for the origin; a session's use shows only after).
    pub(super) fn never_stored_before_the_handler(&self) -> bool {
        self.for_origin
    }

    /// The answer is never stored: the handler used the session (any
    /// method), or the request carried a precondition for the origin.
    pub(super) fn read(&self) -> bool {
        self.for_origin || self.session.as_ref().is_some_and(RequestSession::was_used)
    }
}

/// Whether `headers` carry a precondition only the origin evaluates.
fn for_origin(headers: &HeaderMap) -> bool {
    headers.contains_key(header::IF_MATCH) || headers.contains_key(header::IF_UNMODIFIED_SINCE)
}
