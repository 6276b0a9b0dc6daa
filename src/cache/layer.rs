//! [`CacheLayer`], its builder, and the service it wraps around a handler.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use headers::{ETag, HeaderMapExt, IfModifiedSince, IfNoneMatch, LastModified};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::body::{CacheBody, Copy};
use super::directives::Directives;
use super::layout::{hash, hash_hex, Entry};
use super::policy::{self, Settings, Unusable};
use super::store::{CacheStore, Store};
use crate::error::{Error, ErrorKind};

/// The most a response body may weigh to be stored, by default: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The cache's name in `Cache-Status`, by default.
pub const DEFAULT_NAME: &str = "redis-layers";

/// The `Cache-Status` field (RFC 9211).
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

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

/// A shared HTTP cache in front of the inner service; see the [module
/// docs](super).
#[derive(Clone)]
pub struct CacheLayer {
    config: Arc<Config>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("name", &self.config.name)
            .field("max_body", &self.config.max_body)
            .field("default_ttl", &self.config.settings.default_ttl)
            .finish_non_exhaustive()
    }
}

struct Config {
    store: Store,
    settings: Settings,
    max_body: usize,
    name: String,
    sort_query: bool,
}

impl CacheLayer {
    /// A cache on `store` with the defaults: only responses that say how
    /// long they are fresh (or may be given a heuristic freshness) are
    /// stored; bodies up to [`DEFAULT_MAX_BODY`].
    pub fn new(store: impl CacheStore) -> Self {
        CacheLayer::builder(store)
            .build()
            .expect("the default settings are valid")
    }

    /// A builder, to change the defaults.
    pub fn builder(store: impl CacheStore) -> CacheLayerBuilder {
        CacheLayerBuilder {
            store: Store::new(store),
            default_ttl: None,
            max_body: DEFAULT_MAX_BODY,
            name: DEFAULT_NAME.to_owned(),
            strip_set_cookie: false,
            sort_query: false,
            extra_statuses: Vec::new(),
        }
    }
}

/// Settings of a [`CacheLayer`]; [`build`](Self::build) checks them.
pub struct CacheLayerBuilder {
    store: Store,
    default_ttl: Option<Duration>,
    max_body: usize,
    name: String,
    strip_set_cookie: bool,
    sort_query: bool,
    extra_statuses: Vec<StatusCode>,
}

impl fmt::Debug for CacheLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayerBuilder")
            .field("default_ttl", &self.default_ttl)
            .field("max_body", &self.max_body)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CacheLayerBuilder {
    /// Freshness for storable responses that state none (no `max-age`,
    /// `s-maxage`, `Expires` or `Last-Modified`). Off by default: such
    /// responses are not stored.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The most a body may weigh to be stored; a larger response streams
    /// through uncached.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The cache's name in `Cache-Status` (a token).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Store responses that carry `Set-Cookie`, without that header.
    /// Off by default: such responses are not stored at all.
    pub fn strip_set_cookie(mut self, on: bool) -> Self {
        self.strip_set_cookie = on;
        self
    }

    /// Also store responses with `status` when they state their freshness
    /// (`max-age`, `s-maxage`, `Expires`) or say `public`. By default only
    /// the statuses RFC 9110 calls heuristically cacheable are stored
    /// (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501), so a
    /// blanket `Cache-Control` never keeps a passing error or redirect.
    /// 206 and 304 are never stored.
    pub fn cacheable_status(mut self, status: StatusCode) -> Self {
        if !self.extra_statuses.contains(&status) {
            self.extra_statuses.push(status);
        }
        self
    }

    /// Sort query parameters before keying, so `?a=1&b=2` and `?b=2&a=1`
    /// share an entry. Off by default (a handler may read them in order).
    pub fn sort_query(mut self, on: bool) -> Self {
        self.sort_query = on;
        self
    }

    /// The layer; a Config error when the name is not a token or a
    /// duration is zero.
    pub fn build(self) -> Result<CacheLayer, Error> {
        let token = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(Error::new(
                ErrorKind::Config,
                format!("cache name {:?} must be a token", self.name),
            ));
        }
        if self.default_ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::new(
                ErrorKind::Config,
                "default_ttl must not be zero",
            ));
        }
        Ok(CacheLayer {
            config: Arc::new(Config {
                store: self.store,
                settings: Settings {
                    extra_statuses: self.extra_statuses,
                    default_ttl: self.default_ttl.map(crate::time::millis),
                    strip_set_cookie: self.strip_set_cookie,
                },
                max_body: self.max_body,
                name: self.name,
                sort_query: self.sort_query,
            }),
        })
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of a [`CacheLayer`].
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        match *req.method() {
            Method::GET | Method::HEAD => Box::pin(read(config, inner, req)),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE => {
                Box::pin(write(config, inner, req))
            }
            _ => {
                let mut inner = inner;
                let future = inner.call(req);
                Box::pin(async move { Ok(future.await?.map(|b| CacheBody::inner(b, None))) })
            }
        }
    }
}

/// The cache key of a request to `uri` (hashed): scheme, host, path and
/// query, one per line (none of them can hold a line break, so the
/// concatenation is unambiguous; short keys fit one SHA-256 block).
fn cache_key(config: &Config, uri: &http::Uri, headers: &HeaderMap) -> String {
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
        if config.sort_query {
            let mut pairs: Vec<&str> = query.split('&').collect();
            pairs.sort_unstable();
            line.extend_from_slice(pairs.join("&").as_bytes());
        } else {
            line.extend_from_slice(query.as_bytes());
        }
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

/// GET and HEAD: answer from the store when a stored response may be used,
/// else ask the inner service (and store its response when it may be).
async fn read<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let key = cache_key(&config, req.uri(), req.headers());
    let directives = Directives::of(req.headers());
    let now = SystemTime::now();
    // Why the stored response (if any) was not used: RFC 9211's `fwd`.
    let mut fwd = "uri-miss";
    if directives.no_cache {
        fwd = "request";
    } else {
        match config.store.lookup(&key).await {
            Err(e) => {
                tracing::warn!(error = %e, "cache store failed; asking the handler");
                fwd = "miss; detail=store-error";
            }
            Ok(None) => {}
            Ok(Some(raw)) => match Entry::decode(raw) {
                None => fwd = "miss; detail=unreadable",
                Some(entry) if entry.vary_hash != vary_hash(&entry.vary, req.headers()) => {
                    fwd = "vary-miss";
                }
                Some(entry) => {
                    let age = policy::age(&entry, now);
                    match policy::usable(&entry, age, &directives) {
                        Ok(()) => return Ok(hit(&config, entry, age, &req)),
                        Err(Unusable::Stale) => fwd = "stale",
                        Err(Unusable::Request) => fwd = "request",
                    }
                }
            },
        }
    }
    if directives.only_if_cached {
        // RFC 9111 §5.2.1.7: no stored response to use, so 504.
        let mut res = Response::new(CacheBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        res.headers_mut().insert(
            CACHE_STATUS,
            status_field(&config.name, "fwd=miss; detail=only-if-cached"),
        );
        return Ok(res);
    }
    let is_get = req.method() == Method::GET;
    let request_headers = is_get.then(|| req.headers().clone());
    let res = inner.call(req).await?;
    let (mut head, body) = res.into_parts();
    let mut copy = None;
    let mut stored = "";
    if let Some(request_headers) = request_headers {
        let too_big = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > config.max_body as u64);
        let keep = policy::storable(
            &request_headers,
            head.status,
            &head.headers,
            &config.settings,
            now,
        );
        match keep {
            Ok(keep) if !too_big => {
                let vary = policy::vary_names(&head.headers).unwrap_or_default();
                let mut headers = head.headers.clone();
                for name in
                    HOP_BY_HOP
                        .iter()
                        .chain([&header::SET_COOKIE, &header::AGE, &CACHE_STATUS])
                {
                    headers.remove(name);
                }
                let entry = Entry {
                    stored_at: policy::unix_ms(now),
                    initial_age: keep.initial_age,
                    lifetime: keep.lifetime,
                    flags: keep.flags,
                    status: head.status,
                    vary_hash: vary_hash(&vary, &request_headers),
                    vary,
                    headers,
                    body: Bytes::new(),
                };
                let ttl = Duration::from_millis(keep.lifetime - keep.initial_age);
                let store = config.store.clone();
                let hint = usize::try_from(body.size_hint().lower()).unwrap_or(0);
                copy = Some(Copy::new(config.max_body, hint, move |body| {
                    let entry = Entry { body, ..entry };
                    let Some(raw) = entry.encode() else {
                        tracing::debug!("response not stored: a header is too long for an entry");
                        return;
                    };
                    tokio::spawn(async move {
                        if let Err(e) = store.store(&key, raw, ttl).await {
                            tracing::warn!(error = %e, "cache store failed; response not stored");
                        }
                    });
                }));
                stored = "; stored";
            }
            Ok(_) => tracing::debug!("response not stored: body larger than max_body"),
            Err(why) => tracing::trace!(?why, "response not stored"),
        }
    }
    let params = format!("fwd={fwd}; fwd-status={}{stored}", head.status.as_u16());
    head.headers
        .insert(CACHE_STATUS, status_field(&config.name, &params));
    Ok(Response::from_parts(head, CacheBody::inner(body, copy)))
}

/// The stored response as the answer, or a 304 when the request's
/// validators match it (RFC 9110 §13.1.2, §13.1.3).
fn hit<ReqBody, ResBody>(
    config: &Config,
    entry: Entry,
    age: u64,
    req: &Request<ReqBody>,
) -> Response<CacheBody<ResBody>> {
    let ttl = (entry.lifetime as i64 - age as i64) / 1000;
    let not_modified = match req.headers().typed_get::<IfNoneMatch>() {
        Some(inm) => entry
            .headers
            .typed_get::<ETag>()
            .is_some_and(|etag| !inm.precondition_passes(&etag)),
        None => match (
            req.headers().typed_get::<IfModifiedSince>(),
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
        let body = if req.method() == Method::HEAD {
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
    let mut params = String::with_capacity(24);
    params.push_str("hit; ttl=");
    params.push_str(itoa::Buffer::new().format(ttl));
    head.headers
        .insert(CACHE_STATUS, status_field(&config.name, &params));
    Response::from_parts(head, body)
}

/// Unsafe methods: a non-error response invalidates what is stored for
/// the target URI and for `Location` and `Content-Location` on the same
/// origin (RFC 9111 §4.4), before the response goes out, so the client's
/// next read sees its write.
async fn write<S, ReqBody, ResBody>(
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
    if res.status().is_success() || res.status().is_redirection() {
        let mut keys = vec![cache_key(&config, &uri, &headers)];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(target) = res
                .headers()
                .get(name)
                .and_then(|v| same_origin(&uri, &headers, v))
            {
                keys.push(cache_key(&config, &target, &headers));
            }
        }
        for key in keys {
            if let Err(e) = config.store.invalidate(&key).await {
                tracing::warn!(error = %e, "cache store failed; a stored response was not invalidated");
            }
        }
    }
    Ok(res.map(|b| CacheBody::inner(b, None)))
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
