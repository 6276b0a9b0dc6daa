//! [`CacheLayer`], its builder, and the service it wraps around a handler.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::config::{
    Config, Options, DEFAULT_COALESCE_WAIT, DEFAULT_GENERATION_REFRESH, DEFAULT_KEEP_STALE,
    DEFAULT_MAX_BODY, DEFAULT_NAME, DEFAULT_TAG_HEADER, DEFAULT_TARGETED,
};
use super::directives::RequestDirectives;
use super::fields::{take_tags, with_status, CACHE_STATUS};
use super::key::key_uri;
use super::purger::Purger;
use super::store::{CacheStore, Store};
use super::{flow, invalidate, lookup};
use crate::body::ResponseBody;
use crate::error::Error;

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
            options: Options {
                store: Store::new(store),
                default_ttl: None,
                max_body: DEFAULT_MAX_BODY,
                name: DEFAULT_NAME.to_owned(),
                strip_set_cookie: false,
                sort_query: false,
                ignored_params: Vec::new(),
                key_extra: None,
                only_statuses: None,
                stale_while_revalidate: None,
                stale_if_error: None,
                keep_stale: DEFAULT_KEEP_STALE,
                coalesce_wait: DEFAULT_COALESCE_WAIT,
                request_directives: RequestDirectives::default(),
                hosts: None,
                tag_header: DEFAULT_TAG_HEADER.to_owned(),
                local_tier: None,
                thread_copies: true,
                max_variants: super::config::DEFAULT_MAX_VARIANTS,
                targeted: vec![DEFAULT_TARGETED.to_owned()],
                min_ttl: None,
                max_ttl: None,
                generation_refresh: DEFAULT_GENERATION_REFRESH,
                failure: crate::FailurePolicy::Open,
                on_refusal: crate::refusal::OnRefusal::default(),
            },
        }
    }

    /// A handle to purge this cache's entries (also in every request's
    /// extensions, for handlers: `Extension<Purger>` in axum).
    pub fn purger(&self) -> Purger {
        Purger::of(&self.config)
    }
}

/// Settings of a [`CacheLayer`]; [`build`](Self::build) checks them.
pub struct CacheLayerBuilder {
    options: Options,
}

impl fmt::Debug for CacheLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayerBuilder")
            .field("default_ttl", &self.options.default_ttl)
            .field("max_body", &self.options.max_body)
            .field("name", &self.options.name)
            .finish_non_exhaustive()
    }
}

impl CacheLayerBuilder {
    /// Freshness for storable responses that state none (no `max-age`,
    /// `s-maxage`, `Expires` or `Last-Modified`). Off by default: such
    /// responses are not stored.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.options.default_ttl = Some(ttl);
        self
    }

    /// The most a body may weigh to be stored; a larger response streams
    /// through uncached.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.options.max_body = bytes;
        self
    }

    /// The cache's name in `Cache-Status` (a token).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = name.into();
        self
    }

    /// Store responses that carry `Set-Cookie`, without that header.
    /// Off by default: such responses are not stored at all.
    pub fn strip_set_cookie(mut self, on: bool) -> Self {
        self.options.strip_set_cookie = on;
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
        self.options.only_statuses = Some(statuses.into_iter().collect());
        self
    }

    /// Sort query parameters before keying, so `?a=1&b=2` and `?b=2&a=1`
    /// share an entry. Off by default (a handler may read them in order).
    pub fn sort_query(mut self, on: bool) -> Self {
        self.options.sort_query = on;
        self
    }

    /// Query parameters left out of the cache key, by name as sent
    /// (`utm_source`, `fbclid`, `gclid`...): requests that differ only in
    /// them share an entry. Use it only for parameters the handler ignores:
    /// the stored answer is the one for whichever of those requests came
    /// first. None by default.
    pub fn ignore_query_params<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.ignored_params = names.into_iter().map(Into::into).collect();
        self
    }

    /// Adds to every request's cache key what `f` says of the request (its
    /// header fields and extensions), when it says something: a tenant, a
    /// cookie's value, a header the answers depend on but which the
    /// handler does not name in `Vary`. Requests for which it gives
    /// different values get different entries. Keep its values few (each
    /// is a copy of the page) and `f` fast: it runs on every GET and HEAD,
    /// hits included.
    ///
    /// An unsafe request invalidates the entry its own value names;
    /// [`Purger::purge_url`] the one for requests `f` gives nothing;
    /// [`Purger::purge_tag`] reaches every one.
    ///
    /// ```
    /// # let store = redis_layers::memory::MemoryBackend::new();
    /// let layer = redis_layers::cache::CacheLayer::builder(store)
    ///     .key_extra(|headers, _extensions| {
    ///         let tenant = headers.get("x-tenant")?.to_str().ok()?;
    ///         Some(tenant.to_owned())
    ///     })
    ///     .build()?;
    /// # Ok::<(), redis_layers::Error>(())
    /// ```
    pub fn key_extra<F>(mut self, f: F) -> Self
    where
        F: Fn(&http::HeaderMap, &http::Extensions) -> Option<String> + Send + Sync + 'static,
    {
        self.options.key_extra = Some(std::sync::Arc::new(f));
        self
    }

    /// A stale-while-revalidate window (RFC 5861) for responses that name
    /// none: within it a stale response is served at once while one
    /// background request refreshes it. Off by default.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.options.stale_while_revalidate = Some(window);
        self
    }

    /// A stale-if-error window (RFC 5861) for responses that name none:
    /// within it a stale response is served when the handler fails or
    /// answers 5xx. Off by default.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.options.stale_if_error = Some(window);
        self
    }

    /// How long a stale response with a validator (`ETag`,
    /// `Last-Modified`) is kept, so that it can be revalidated with a
    /// conditional request instead of fetched whole (default
    /// [`DEFAULT_KEEP_STALE`]; zero keeps nothing past its freshness).
    pub fn keep_stale(mut self, keep: Duration) -> Self {
        self.options.keep_stale = keep;
        self
    }

    /// How long a miss waits for a concurrent miss of the same key (on
    /// this instance or another) to store its response (default
    /// [`DEFAULT_COALESCE_WAIT`]); then it looks again, and asks the
    /// handler itself if there is still nothing. Also the fill lease's
    /// length (at least 1 s; renewed while a fill runs).
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.options.coalesce_wait = wait;
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
        self.options.failure = policy;
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
        self.options.on_refusal = crate::refusal::OnRefusal::new(hook);
        self
    }

    /// What a client's request `Cache-Control` may ask of the cache:
    /// [`RequestDirectives::Ignore`] by default (a client cannot make the
    /// cache bypass itself), or [`RequestDirectives::Honour`].
    pub fn request_directives(mut self, policy: RequestDirectives) -> Self {
        self.options.request_directives = policy;
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
        self.options.hosts = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// The response header a handler names its tags in (default
    /// [`DEFAULT_TAG_HEADER`]); it never reaches the client.
    pub fn tag_header(mut self, name: impl Into<String>) -> Self {
        self.options.tag_header = name.into();
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
        self.options.local_tier = Some(entries);
        self
    }

    /// Whether each worker thread keeps its own copies of the local
    /// tier's small entries (on by default; see
    /// [`local_tier`](Self::local_tier)). A hit on a thread's copy takes
    /// no lock, touches no reference count other threads touch, and is
    /// answered before the request's future is made; off, every local hit
    /// reads the tier's shared copy instead, and each thread saves up to
    /// about 1 MiB per tier. Only matters with a local tier.
    pub fn thread_copies(mut self, on: bool) -> Self {
        self.options.thread_copies = on;
        self
    }

    /// How many variants of one URL are stored at a time (default
    /// [`DEFAULT_MAX_VARIANTS`](super::DEFAULT_MAX_VARIANTS), at most 256).
    /// A response whose `Vary` names request fields is stored as one
    /// variant of its URL, beside the others (`Accept-Encoding: gzip` and
    /// `br`, `Accept-Language: en` and `fr`). Each variant holds its place
    /// until it expires and as long again, so one fetched again soon after
    /// it expired keeps it; a new variant is stored only while a place is
    /// free, so a flood of made-up values of a varied field cannot push out
    /// the variants stored before it (it is answered, not stored). A
    /// response that varies on other fields than the URL's earlier ones
    /// replaces them all.
    pub fn max_variants(mut self, variants: usize) -> Self {
        self.options.max_variants = variants;
        self
    }

    /// The shortest freshness a stored response gets, whatever it says
    /// (a response with `max-age=0`, or a short `Expires`, is then kept
    /// this long): shields a handler from an origin that asks for
    /// revalidation on every request. Unset by default. `no-cache`
    /// responses are still revalidated before every use; what may not be
    /// stored at all still is not.
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.options.min_ttl = Some(ttl);
        self
    }

    /// The longest freshness a stored response gets, whatever it says
    /// (`max-age=31536000` is then kept this long before it is
    /// revalidated). Unset by default; at least `min_ttl`, and not zero.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.options.max_ttl = Some(ttl);
        self
    }

    /// The targeted cache-control fields this cache obeys (RFC 9213), in
    /// order: of those a response carries with a valid, non-empty value
    /// (a Structured Fields Dictionary of `Cache-Control` directives), the
    /// first replaces `Cache-Control`, and `Expires` is then ignored; with
    /// none, `Cache-Control` decides as usual. By default
    /// `["CDN-Cache-Control"]` ([`DEFAULT_TARGETED`]): a handler can give
    /// this cache (and CDNs) a longer life than browsers get. Put a field
    /// of this cache's own first to speak to it alone, or pass an empty
    /// list to obey `Cache-Control` only. The fields are passed on to the
    /// client untouched (a CDN in front may obey them too).
    ///
    /// ```
    /// # let store = redis_layers::memory::MemoryBackend::new();
    /// let layer = redis_layers::cache::CacheLayer::builder(store)
    ///     .targeted_fields(["RedisLayers-Cache-Control", "CDN-Cache-Control"])
    ///     .build()?;
    /// // A handler answering with
    /// //   Cache-Control: max-age=60
    /// //   RedisLayers-Cache-Control: max-age=3600
    /// // is kept an hour here, and a minute by browsers.
    /// # Ok::<(), redis_layers::Error>(())
    /// ```
    pub fn targeted_fields<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.targeted = fields.into_iter().map(Into::into).collect();
        self
    }

    /// How often the layer asks the store for the current generation
    /// (default [`DEFAULT_GENERATION_REFRESH`]): the longest another
    /// instance keeps answering from entries a
    /// [`purge_all`](Purger::purge_all) hid, unless it has a local tier
    /// (which hears the purge at once). The request that asks pays one
    /// more round trip; the others do not wait for it.
    pub fn generation_refresh(mut self, every: Duration) -> Self {
        self.options.generation_refresh = every;
        self
    }

    /// The layer; a Config error when the name is not a token, the tag
    /// header is not a header name, `default_ttl` or `generation_refresh`
    /// is zero, a duration setting is over a year, `max_variants` is not
    /// from 1 to 256, or a local tier is asked of a store that cannot
    /// announce (or outside a Tokio runtime).
    pub fn build(self) -> Result<CacheLayer, Error> {
        Ok(CacheLayer {
            config: Arc::new(Config::new(self.options)?),
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
            && self.config.serves(key_uri(&req), req.headers());
        // A local hit is answered here: no future to allocate, no inner
        // service to clone.
        let looked = is_read
            && match lookup::answer_locally(&self.config, &req) {
                lookup::Local::Hit(res) => {
                    trace.outcome("cache", "hit");
                    if trace.is_on() {
                        trace.span().record("tier", "local");
                    }
                    return ResponseFuture::ready(Ok(res));
                }
                lookup::Local::Looked => true,
                lookup::Local::Unknown => false,
            };
        // Call the instance that was driven to readiness, leave a clone in
        // its place (see tower's "Be careful when cloning inner services").
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        if is_read {
            // Read adds the purger only once the handler may run.
            let read = read_future(config, inner, req, looked);
            return ResponseFuture::from_box(trace.boxed(read));
        }
        req.extensions_mut().insert(Purger::of(&config));
        let known_host = config.serves(key_uri(&req), req.headers());
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
            return ResponseFuture::from_box(trace.boxed(invalidate::write(config, inner, req)));
        }
        // Safe methods, and any request for a host this cache does not
        // serve: to the handler, never stored, tags taken off.
        trace.outcome("cache", "bypass");
        let mut inner = inner;
        let future = trace.span().in_scope(|| inner.call(req));
        let future = crate::trace::unmeasured(future);
        ResponseFuture::from_box(trace.boxed(async move {
            let (mut head, body) = future.await?.into_parts();
            take_tags(&mut head.headers, &config.tag_header);
            let mut res = Response::from_parts(head, ResponseBody::inner(body));
            if !known_host {
                res = with_status(res, &config.name, "fwd=bypass; detail=host");
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

/// A GET's or HEAD's work: [`flow::read`], its outcome counted.
fn read_future<S, ReqBody, ResBody>(
    config: Arc<Config>,
    inner: S,
    req: Request<ReqBody>,
    looked: bool,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>> + Send
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    Counted {
        read: flow::read(config, inner, req, looked),
    }
}

pin_project_lite::pin_project! {
    /// A read, its outcome counted when it answers ([`count`]). A future
    /// of its own rather than an `async fn` taking the read: that would
    /// hold the read twice (as its argument and as what it awaits), and
    /// the read's future is kilobytes.
    struct Counted<F> {
        #[pin]
        read: F,
    }
}

impl<F, B, E> Future for Counted<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = std::task::ready!(self.project().read.poll(cx));
        count(&out);
        Poll::Ready(out)
    }
}

/// A read's outcome, from its `Cache-Status`: counted as a metric and
/// recorded on the layer's span (when either listens).
fn count<B, E>(out: &Result<Response<B>, E>) {
    if !cfg!(feature = "metrics") && !crate::trace::in_layer_span("cache") {
        return;
    }
    if let Ok(res) = out {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBackend;

    /// The read's future is what every request through the layer
    /// allocates and moves: a wrapper holding it twice, or a store call
    /// kept twice in its state (the mistakes that made it 15.7 KB), fails
    /// here.
    #[tokio::test]
    async fn a_reads_future_stays_small() {
        let layer = CacheLayer::builder(MemoryBackend::new()).build().unwrap();
        let inner = tower::service_fn(|_: Request<String>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        });
        let read = read_future(
            layer.config.clone(),
            inner,
            Request::new(String::new()),
            false,
        );
        let size = std::mem::size_of_val(&read);
        assert!(size <= 4096, "the read's future is {size} bytes");
    }
}
