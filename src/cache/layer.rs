//! [`CacheLayer`], its builder, the service it wraps around a handler, and
//! [`Purger`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::directives::RequestDirectives;
use super::flight::{Flights, Invalidations, Refreshing};
use super::flow;
use super::generation::Generation;
use super::local::LocalTier;
use super::policy::Settings;
use super::store::{CacheStore, Store};
use crate::body::ResponseBody;
use crate::error::{Error, ErrorKind};

/// The most a response body may weigh to be stored, by default: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The cache's name in `Cache-Status`, by default.
pub const DEFAULT_NAME: &str = "redis-layers";

/// How long (ms) a stale response with a validator is kept to be
/// revalidated, by default: one minute.
pub const DEFAULT_KEEP_STALE: Duration = Duration::from_secs(60);

/// How long a request waits for a concurrent miss of the same key to fill
/// the entry, by default.
pub const DEFAULT_COALESCE_WAIT: Duration = Duration::from_secs(3);

/// How often a layer asks the store for the current generation, by
/// default (see [`CacheLayerBuilder::generation_refresh`]).
pub const DEFAULT_GENERATION_REFRESH: Duration = Duration::from_secs(1);

/// The most entries a [`Purger::purge_tag`] removes, and names in one
/// announcement, per step: 500 (an announcement of about 16 KiB).
pub const PURGE_BATCH: usize = 500;

/// The response header a handler names its tags in, by default
/// (comma-separated; removed before the response goes out).
pub const DEFAULT_TAG_HEADER: &str = "cache-tag";

/// The `Cache-Status` field (RFC 9211).
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

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

pub(crate) struct Config {
    /// Names this layer in the threads' decoded entries (whose prepared
    /// `Cache-Status` carries the layer's name).
    pub(crate) id: u64,
    pub(crate) store: Store,
    pub(crate) settings: Settings,
    pub(crate) max_body: usize,
    pub(crate) name: String,
    pub(crate) sort_query: bool,
    pub(crate) coalesce_wait: Duration,
    pub(crate) request_directives: RequestDirectives,
    /// The hosts served, lowercase (`host` or `host:port`); `None`: any.
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) tag_header: HeaderName,
    pub(crate) flights: Flights,
    pub(crate) refreshing: Refreshing,
    pub(crate) invalidations: Invalidations,
    pub(crate) local: Option<Arc<LocalTier>>,
    pub(crate) generation: Arc<Generation>,
    /// Store failures, logged once per outage and then summarised.
    pub(crate) failures: crate::failure_log::FailureLog,
    /// What a failed lookup does.
    pub(crate) failure: crate::FailurePolicy,
    /// How refusals (fail-closed lookups) are answered.
    pub(crate) on_refusal: crate::refusal::OnRefusal,
}

impl Config {
    /// Whether requests to this URI's host (else the `Host` field) are
    /// cached: any host unless [`hosts`](CacheLayerBuilder::hosts) names
    /// them.
    pub(crate) fn serves(&self, uri: &http::Uri, headers: &http::HeaderMap) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        let host = uri.authority().map(|a| a.as_str()).or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        host.is_some_and(|host| hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }

    /// Drops local copies of `keys` here and tells every other instance.
    pub(crate) async fn announce(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        if let Some(local) = &self.local {
            local.forget(keys);
        }
        if let Err(e) = self.store.announce(keys).await {
            tracing::warn!(error = %e, "cache invalidation not announced; other local tiers keep their copies until they expire");
        }
    }
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
            only_statuses: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            keep_stale: DEFAULT_KEEP_STALE,
            coalesce_wait: DEFAULT_COALESCE_WAIT,
            request_directives: RequestDirectives::default(),
            hosts: None,
            tag_header: DEFAULT_TAG_HEADER.to_owned(),
            local_tier: None,
            generation_refresh: DEFAULT_GENERATION_REFRESH,
            failure: crate::FailurePolicy::Open,
            on_refusal: crate::refusal::OnRefusal::default(),
        }
    }

    /// A handle to purge this cache's entries (also in every request's
    /// extensions, for handlers: `Extension<Purger>` in axum).
    pub fn purger(&self) -> Purger {
        Purger {
            config: self.config.clone(),
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
    only_statuses: Option<Vec<StatusCode>>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    keep_stale: Duration,
    coalesce_wait: Duration,
    request_directives: RequestDirectives,
    hosts: Option<Vec<String>>,
    tag_header: String,
    local_tier: Option<usize>,
    generation_refresh: Duration,
    failure: crate::FailurePolicy,
    on_refusal: crate::refusal::OnRefusal,
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

    /// Formerly: also store responses with `status` when they state their
    /// freshness. Every final status is stored then (RFC 9111 §3), so this
    /// changes nothing; to store fewer, use
    /// [`only_statuses`](Self::only_statuses).
    #[deprecated(
        since = "0.2.0",
        note = "every final status with explicit freshness is stored; narrow with `only_statuses`"
    )]
    pub fn cacheable_status(self, status: StatusCode) -> Self {
        let _ = status;
        self
    }

    /// Store only responses with these statuses. By default any final
    /// status is stored when the response states its freshness
    /// (`max-age`, `s-maxage`, `Expires`) or says `public`, as RFC 9111 §3
    /// allows, and the statuses RFC 9110 calls heuristically cacheable
    /// (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501) also
    /// without it; an origin that puts a blanket `Cache-Control` on its
    /// errors can keep them out with, say, `only_statuses([StatusCode::OK])`.
    /// 206 and 304 are never stored.
    pub fn only_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.only_statuses = Some(statuses.into_iter().collect());
        self
    }

    /// Sort query parameters before keying, so `?a=1&b=2` and `?b=2&a=1`
    /// share an entry. Off by default (a handler may read them in order).
    pub fn sort_query(mut self, on: bool) -> Self {
        self.sort_query = on;
        self
    }

    /// A stale-while-revalidate window (RFC 5861) for responses that name
    /// none: within it a stale response is served at once while one
    /// background request refreshes it. Off by default.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// A stale-if-error window (RFC 5861) for responses that name none:
    /// within it a stale response is served when the handler fails or
    /// answers 5xx. Off by default.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// How long a stale response with a validator (`ETag`,
    /// `Last-Modified`) is kept, so that it can be revalidated with a
    /// conditional request instead of fetched whole (default
    /// [`DEFAULT_KEEP_STALE`]; zero keeps nothing past its freshness).
    pub fn keep_stale(mut self, keep: Duration) -> Self {
        self.keep_stale = keep;
        self
    }

    /// How long a miss waits for a concurrent miss of the same key (on
    /// this instance or another) to store its response (default
    /// [`DEFAULT_COALESCE_WAIT`]); then it looks again, and asks the
    /// handler itself if there is still nothing. Also the fill lease's
    /// length (at least 1 s; renewed while a fill runs).
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.coalesce_wait = wait;
        self
    }

    /// What a store failure does when the cache looks a request up: the
    /// default [`FailurePolicy::Open`](crate::FailurePolicy::Open) asks the
    /// handler (and stores nothing: `Cache-Status: ...; detail=store-error`);
    /// [`FailurePolicy::Closed`](crate::FailurePolicy::Closed) answers 503
    /// (500 when the store answered with an error) instead, for an origin
    /// that only stands up behind its cache. Failures after the handler
    /// answered (storing its response) are logged either way.
    pub fn on_store_error(mut self, policy: crate::FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Your own answer to the cache's refusals (only a failed lookup under
    /// [`on_store_error`](Self::on_store_error)`(Closed)`) instead of the
    /// default problem+json; the same hook every layer takes (see
    /// [`refusal`](crate::refusal)). The answer gets the cache's
    /// `Cache-Status` and is never stored.
    pub fn on_refusal(
        mut self,
        hook: impl Fn(&http::request::Parts, &crate::Refusal<'_>) -> Response<Bytes>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.on_refusal = crate::refusal::OnRefusal::new(hook);
        self
    }

    /// What a client's request `Cache-Control` may ask of the cache:
    /// [`RequestDirectives::Ignore`] by default (a client cannot make the
    /// cache bypass itself), or [`RequestDirectives::Honour`].
    pub fn request_directives(mut self, policy: RequestDirectives) -> Self {
        self.request_directives = policy;
        self
    }

    /// The hosts this cache serves, as clients send them in `Host` (`host`
    /// or `host:port`, compared without regard to case). A GET or HEAD for
    /// any other host goes to the handler and is never stored or looked up
    /// (`Cache-Status: ...; fwd=bypass; detail=host`), so a client making
    /// up `Host` values cannot fill the store with copies of your pages.
    /// Unset, every host is cached apart (the key includes the host): set
    /// it in production.
    pub fn hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// The response header a handler names its tags in (default
    /// [`DEFAULT_TAG_HEADER`]); it never reaches the client.
    pub fn tag_header(mut self, name: impl Into<String>) -> Self {
        self.tag_header = name.into();
        self
    }

    /// An in-process tier of up to `entries` decoded entries in front of the
    /// store: a hit there costs no round trip. Each worker thread also keeps
    /// its own copies of up to 64 of them (bodies up to 16 KiB: about 1 MiB
    /// per thread), checked against the tier after every change. It is kept coherent through
    /// the store's announcements (Redis pub/sub): every purge and
    /// invalidation, on any instance, drops the copies everywhere; while
    /// the channel is down the tier is emptied and unused. Off by default.
    /// Needs a store that can announce: a Redis backend built from a URL,
    /// or the memory backend.
    pub fn local_tier(mut self, entries: usize) -> Self {
        self.local_tier = Some(entries);
        self
    }

    /// How often the layer asks the store for the current generation
    /// (default [`DEFAULT_GENERATION_REFRESH`]): the longest another
    /// instance keeps answering from entries a
    /// [`purge_all`](Purger::purge_all) hid, unless it has a local tier
    /// (which hears the purge at once). The request that asks pays one
    /// more round trip; the others do not wait for it.
    pub fn generation_refresh(mut self, every: Duration) -> Self {
        self.generation_refresh = every;
        self
    }

    /// The layer; a Config error when the name is not a token, the tag
    /// header is not a header name, `default_ttl` or `generation_refresh`
    /// is zero, a duration setting is over a year, or a local tier is asked of a store that cannot announce
    /// (or outside a Tokio runtime).
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
        let tag_header = HeaderName::from_bytes(self.tag_header.as_bytes()).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!("tag header {:?} is not a header name", self.tag_header),
            )
        })?;
        // Windows past a year are a mistake (and `Duration::MAX` would
        // overflow the store's expiry arithmetic): refuse them here rather
        // than fail on every request.
        const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
        for (name, value) in [
            ("default_ttl", self.default_ttl),
            ("stale_while_revalidate", self.stale_while_revalidate),
            ("stale_if_error", self.stale_if_error),
            ("keep_stale", Some(self.keep_stale)),
            ("coalesce_wait", Some(self.coalesce_wait)),
            ("generation_refresh", Some(self.generation_refresh)),
        ] {
            if value.is_some_and(|v| v > LONGEST) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{name} must be at most a year"),
                ));
            }
        }
        let hosts = match self.hosts {
            None => None,
            Some(hosts) => {
                let valid = |h: &str| {
                    !h.is_empty()
                        && h.parse::<http::uri::Authority>()
                            .is_ok_and(|a| a.as_str() == h && !h.contains('@'))
                };
                if hosts.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "hosts must name at least one host",
                    ));
                }
                if let Some(bad) = hosts.iter().find(|h| !valid(h)) {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!("{bad:?} is not a host (host or host:port)"),
                    ));
                }
                Some(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect())
            }
        };
        if self.generation_refresh.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "generation_refresh must not be zero",
            ));
        }
        let generation = Arc::new(Generation::new(self.generation_refresh));
        let local = match self.local_tier {
            None => None,
            Some(entries) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "a local tier is built inside a Tokio runtime",
                    ));
                }
                let heard = self.store.listen().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Config,
                        "a local tier needs a store that announces changes (a Redis backend built from a URL, or memory)",
                    )
                })?;
                Some(LocalTier::start(entries, heard, generation.clone()))
            }
        };
        let ms = |d: Duration| crate::time::millis(d);
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(CacheLayer {
            config: Arc::new(Config {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                store: self.store,
                settings: Settings {
                    only_statuses: self.only_statuses,
                    default_ttl: self.default_ttl.map(ms),
                    strip_set_cookie: self.strip_set_cookie,
                    stale_while_revalidate: self.stale_while_revalidate.map(ms),
                    stale_if_error: self.stale_if_error.map(ms),
                    keep_stale: ms(self.keep_stale),
                },
                max_body: self.max_body,
                name: self.name,
                sort_query: self.sort_query,
                coalesce_wait: self.coalesce_wait,
                request_directives: self.request_directives,
                hosts,
                tag_header,
                flights: Flights::default(),
                refreshing: Refreshing::default(),
                invalidations: Invalidations::default(),
                local,
                generation,
                failures: crate::failure_log::FailureLog::new("cache"),
                failure: self.failure,
                on_refusal: self.on_refusal,
            }),
        })
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of a [`CacheLayer`].
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let trace = crate::trace::layer_span!("cache", tier);
        let is_read = matches!(*req.method(), Method::GET | Method::HEAD)
            && self.config.serves(flow::key_uri(&req), req.headers());
        // A local hit is answered here: no future to allocate, no inner
        // service to clone.
        let looked = is_read
            && match flow::answer_locally(&self.config, &req) {
                flow::Local::Hit(res) => {
                    trace.outcome("cache", "hit");
                    if trace.is_on() {
                        trace.span().record("tier", "local");
                    }
                    return ResponseFuture::ready(Ok(res));
                }
                flow::Local::Looked => true,
                flow::Local::Unknown => false,
            };
        // Call the instance that was driven to readiness, leave a clone in
        // its place (see tower's "Be careful when cloning inner services").
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        if is_read {
            // Read adds the purger only once the handler may run.
            let read = counted(flow::read(config, inner, req, looked));
            return ResponseFuture::from_box(trace.boxed(read));
        }
        req.extensions_mut().insert(Purger::of(&config));
        let known_host = config.serves(flow::key_uri(&req), req.headers());
        // RFC 9111 §4.4: a non-error answer to an unsafe method, or one
        // whose safety is unknown, invalidates the target URI. The safe
        // methods (RFC 9110 §9.2.1) change nothing, and CONNECT names no
        // resource of this origin.
        let unsafe_method = !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::CONNECT
        );
        if unsafe_method && known_host {
            trace.outcome("cache", "invalidate");
            return ResponseFuture::from_box(trace.boxed(flow::write(config, inner, req)));
        }
        // Safe methods, and any request for a host this cache does not
        // serve: to the handler, never stored, tags taken off.
        trace.outcome("cache", "bypass");
        let mut inner = inner;
        let future = trace.span().in_scope(|| inner.call(req));
        let future = crate::trace::unmeasured(future);
        ResponseFuture::from_box(trace.boxed(async move {
            let (mut head, body) = future.await?.into_parts();
            flow::take_tags(&mut head.headers, &config.tag_header);
            let mut res = Response::from_parts(head, ResponseBody::inner(body));
            if !known_host {
                res = flow::with_status(res, &config.name, "fwd=bypass; detail=host");
            }
            Ok(res)
        }))
    }
}

/// The response future of [`CacheService`]: ready at once for an answer from a
/// thread's copy of a local-tier entry, else the cache's work and the
/// inner service's.
pub struct ResponseFuture<T, E> {
    state: FutureState<T, E>,
}

enum FutureState<T, E> {
    Ready(Option<Result<T, E>>),
    /// The work, and whether it has answered.
    Boxed(BoxFuture<Result<T, E>>, bool),
}

// The ready value is moved out, never pinned; the boxed future is pinned
// on the heap.
impl<T, E> Unpin for ResponseFuture<T, E> {}

impl<T, E> ResponseFuture<T, E> {
    fn ready(value: Result<T, E>) -> Self {
        ResponseFuture {
            state: FutureState::Ready(Some(value)),
        }
    }

    fn from_box(future: BoxFuture<Result<T, E>>) -> Self {
        ResponseFuture {
            state: FutureState::Boxed(future, false),
        }
    }
}

impl<T, E> fmt::Debug for ResponseFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A read's outcome, from its `Cache-Status`: counted as a metric and
/// recorded on the layer's span (when either listens).
async fn counted<B, E>(
    read: impl Future<Output = Result<Response<B>, E>>,
) -> Result<Response<B>, E> {
    let out = read.await;
    if !cfg!(feature = "metrics") && !crate::trace::in_layer_span("cache") {
        return out;
    }
    if let Ok(res) = &out {
        let status = res
            .headers()
            .get(CACHE_STATUS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let outcome = if status.contains("detail=store-error") {
            "store_error"
        } else if status.contains("fwd=stale") || status.contains("stale-while-revalidate") {
            "stale"
        } else if status.contains("fwd=bypass") || status.is_empty() {
            "bypass"
        } else if status.contains("; hit") {
            "hit"
        } else {
            "miss"
        };
        crate::trace::outcome("cache", outcome);
    }
    out
}

impl<T, E> Future for ResponseFuture<T, E> {
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            FutureState::Ready(value) => match value.take() {
                Some(value) => Poll::Ready(value),
                None => panic!("cache: a response future polled after it completed"),
            },
            FutureState::Boxed(future, done) => {
                // (The work is freed with this future, not here: measured
                // faster on a hit.)
                assert!(!*done, "cache: a response future polled after it completed");
                let out = std::task::ready!(future.as_mut().poll(cx));
                *done = true;
                Poll::Ready(out)
            }
        }
    }
}

/// Removes entries of a [`CacheLayer`] from its store: by tag, or by URL.
/// Get one from [`CacheLayer::purger`], or in a handler from the request's
/// extensions (axum: `Extension<Purger>`).
///
/// A purge removes the entries from the shared store, so every instance
/// sharing it sees the purge at once.
#[derive(Clone)]
pub struct Purger {
    config: Arc<Config>,
}

impl fmt::Debug for Purger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Purger").finish_non_exhaustive()
    }
}

impl Purger {
    /// The purger of the layer with `config`.
    pub(crate) fn of(config: &Arc<Config>) -> Self {
        Purger {
            config: config.clone(),
        }
    }

    /// Removes every entry stored with `tag` (named by its handler in the
    /// tag header) before the purge began; how many the tag named (some
    /// may have expired already).
    ///
    /// It goes in steps of up to [`PURGE_BATCH`] entries, each removed from
    /// the store and then announced to local tiers in one message, until
    /// none is left of those the tag named when the purge began; an entry
    /// stored with the tag meanwhile is left for the next purge. On an
    /// error the steps stop there: the entries not yet removed are left to
    /// the next purge of the tag (retry it).
    pub async fn purge_tag(&self, tag: &str) -> Result<u64, Error> {
        let mut purged = 0;
        let mut start = true;
        loop {
            let keys = self.config.store.purge_tag(tag, PURGE_BATCH, start).await?;
            if keys.is_empty() {
                return Ok(purged);
            }
            start = false;
            purged += keys.len() as u64;
            self.config.announce(&keys).await;
        }
    }

    /// Purges everything this cache stored, on every instance that shares
    /// its store: the store's generation moves on, and every entry key is
    /// made under the generation, so no entry stored before is found
    /// again; they expire on their own (no `SCAN`, nothing listed).
    /// Returns the new generation.
    ///
    /// This instance sees the purge at once, instances with a local tier
    /// as soon as they hear it (pub/sub), and the others within their
    /// [`generation_refresh`](CacheLayerBuilder::generation_refresh).
    pub async fn purge_all(&self) -> Result<u64, Error> {
        let known = self.config.generation.known();
        let generation = self.config.store.next_generation(known).await?;
        self.config.generation.learn(generation);
        if let Some(local) = &self.config.local {
            local.clear();
        }
        if let Err(e) = self
            .config
            .store
            .announce(&[format!("generation:{generation}")])
            .await
        {
            tracing::warn!(error = %e, "purge of everything not announced; other instances see it within their generation refresh");
        }
        Ok(generation)
    }

    /// Removes the entry for a URL: `uri` as requests name it (a path and
    /// query, or an absolute URI), on `host` (the `Host` header's value)
    /// when `uri` names none. The scheme does not matter (the key has
    /// none: the page served over HTTP/1 and HTTP/2 is one entry). True
    /// when there was one.
    pub async fn purge_url(&self, uri: &str, host: &str) -> Result<bool, Error> {
        let uri: http::Uri = uri
            .parse()
            .map_err(|_| Error::new(ErrorKind::Config, format!("{uri:?} is not a URI")))?;
        let mut headers = http::HeaderMap::new();
        if let Ok(host) = http::HeaderValue::from_str(host) {
            headers.insert(http::header::HOST, host);
        }
        let generation = self
            .config
            .generation
            .current(&self.config.store, std::time::SystemTime::now())
            .await?;
        let key = flow::cache_key(self.config.sort_query, &uri, &headers, generation);
        // Announced whatever the store said: a timed-out DEL may still
        // have run.
        let removed = self.config.store.invalidate(&key).await;
        self.config.announce(&[key]).await;
        removed
    }
}
