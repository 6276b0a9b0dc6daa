//! [`IdempotencyLayer`], its builder and service: claim, run, complete or
//! release, replay.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use super::header as key_field;
use super::layout::{self, digest, hash_hex, Record, Stored};
use super::store::{Claim, IdempotencyStore, Store};
use crate::body::ResponseBody;
use crate::client_key::{ClientKey, Identity};
use crate::error::{Error, ErrorKind};
use crate::problem::Problem;
use crate::refusal::{OnRefusal, Refusal, RefusalKind};
use crate::FailurePolicy;

/// How long a claim holds before it must be renewed, by default. While the
/// handler runs the layer renews it every third of this; if the process
/// dies, the key is free again within this time.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long a completed response is kept for replay, by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The largest request body buffered (and fingerprinted), by default;
/// larger is 413.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The largest response body stored for replay, by default; a larger one
/// is sent but not kept (the key is released).
pub const DEFAULT_MAX_RESPONSE: usize = 1 << 20;

/// The response headers stored and replayed, besides none other: never
/// `Set-Cookie`, `Date` or anything describing one connection.
pub const REPLAYED_HEADERS: [&str; 11] = [
    "content-type",
    "content-encoding",
    "vary",
    "content-language",
    "content-location",
    "location",
    "etag",
    "last-modified",
    "cache-control",
    "retry-after",
    "link",
];

const PROBLEM_TYPE: &str =
    "https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/";

/// The least time a key's fencing counter lives.
const COUNTER_FLOOR: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` (seconds) of a 409 for a key in flight: its request may
/// end any moment, and asking again costs one command.
const IN_FLIGHT_RETRY_AFTER: u64 = 1;

/// How often a request waiting on a key in flight asks again.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// `Idempotent-Replayed: true` marks a replayed response.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A fencing token: a number that grows with every claim of one key, for a
/// handler to pass along with its own writes, so that a handler that lost
/// its claim (a lease that ran out) cannot overwrite a newer one's work.
/// Ask [`Fence::token`] for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FencingToken(pub u64);

/// The claim a handler runs under, in the request's extensions (axum:
/// `Extension<Fence>`). Its [`token`](Fence::token) is counted on first
/// use, so a handler that never asks pays no round trip for it.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<FenceInner>,
}

struct FenceInner {
    config: Arc<Config>,
    key: String,
    holder: u64,
    counter_ttl: Duration,
    token: tokio::sync::OnceCell<Option<FencingToken>>,
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence")
            .field("token", &self.inner.token.get())
            .finish_non_exhaustive()
    }
}

impl Fence {
    /// This claim's fencing token: higher than that of every earlier claim
    /// of the same key (while the key's counter lives, at least a day past
    /// its last claim and always longer than its records). One store call
    /// the first time, none after. `None` when the claim is no longer
    /// this request's (its lease ran out and the key was claimed again, or
    /// it was already completed): stop, your work would be stale.
    pub async fn token(&self) -> Result<Option<FencingToken>, Error> {
        let inner = &self.inner;
        inner
            .token
            .get_or_try_init(|| async {
                let token = inner
                    .config
                    .store
                    .fence(&inner.key, inner.holder, inner.counter_ttl)
                    .await?;
                Ok(token.map(FencingToken))
            })
            .await
            .copied()
    }
}

/// One request's scope, as parts of the record key's digest: the kind
/// (which keeps a header value from meeting an equal user id) and the
/// value. A scope that falls back from one header to another (`chained`)
/// names the header too, so a value sent in the second never meets an
/// equal one of the first. (A single scope digests the same bytes as
/// before scopes were [`ClientKey`]s, so records written by an earlier
/// version are found.)
fn scope_parts(identity: &Identity, chained: bool) -> (std::borrow::Cow<'_, [u8]>, &[u8]) {
    use std::borrow::Cow;
    match identity {
        Identity::Global => (Cow::Borrowed(b"global"), b""),
        Identity::Header(name, value) if chained => (
            Cow::Owned(format!("hdr:{name}").into_bytes()),
            value.as_bytes(),
        ),
        Identity::Header(_, value) => (Cow::Borrowed(b"hdr"), value.as_bytes()),
        Identity::Custom(value) => (Cow::Borrowed(b"fn"), value.as_bytes()),
        Identity::User(user) => (Cow::Borrowed(b"user"), user.as_bytes()),
    }
}

/// Idempotency-Key handling in front of the inner service; see the
/// [module docs](super).
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("scope", &self.config.scope)
            .field("required", &self.config.required)
            .finish_non_exhaustive()
    }
}

struct Config {
    store: Store,
    scope: ClientKey,
    header: HeaderName,
    methods: Vec<Method>,
    required: bool,
    lease: Duration,
    retention: Duration,
    max_body: usize,
    max_response: usize,
    wait: Duration,
    release_on_server_error: bool,
    /// Store failures, logged once per outage and then summarised.
    failures: crate::failure_log::FailureLog,
    /// How refusals are answered.
    on_refusal: OnRefusal,
    failure: FailurePolicy,
}

impl IdempotencyLayer {
    /// Requires an `Idempotency-Key` on POST and PATCH, with records
    /// scoped by `scope` (who the caller is: see [`Scope`](super::Scope)), and the other
    /// defaults.
    ///
    /// # Panics
    ///
    /// When `scope` cannot be one (a header name that is not one, a client
    /// address): [`builder`](Self::builder)`(..).build()` returns that as
    /// an error instead.
    pub fn new(store: impl IdempotencyStore, scope: ClientKey) -> Self {
        match Self::builder(store, scope).build() {
            Ok(layer) => layer,
            Err(e) => panic!("invalid idempotency layer: {e}"),
        }
    }

    /// A builder, to change the defaults.
    pub fn builder(store: impl IdempotencyStore, scope: ClientKey) -> IdempotencyLayerBuilder {
        IdempotencyLayerBuilder {
            store: Store::new(store),
            scope,
            header: "idempotency-key".to_owned(),
            methods: vec![Method::POST, Method::PATCH],
            required: true,
            lease: DEFAULT_LEASE,
            retention: DEFAULT_RETENTION,
            max_body: DEFAULT_MAX_BODY,
            max_response: DEFAULT_MAX_RESPONSE,
            wait: Duration::ZERO,
            release_on_server_error: true,
            on_refusal: OnRefusal::default(),
            failure: FailurePolicy::Closed,
        }
    }
}

/// Settings of an [`IdempotencyLayer`]; [`build`](Self::build) checks
/// them.
pub struct IdempotencyLayerBuilder {
    store: Store,
    scope: ClientKey,
    header: String,
    methods: Vec<Method>,
    required: bool,
    lease: Duration,
    retention: Duration,
    max_body: usize,
    max_response: usize,
    wait: Duration,
    release_on_server_error: bool,
    on_refusal: OnRefusal,
    failure: FailurePolicy,
}

impl fmt::Debug for IdempotencyLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("header", &self.header)
            .field("methods", &self.methods)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayerBuilder {
    /// The header carrying the key (default `Idempotency-Key`).
    pub fn header(mut self, name: impl Into<String>) -> Self {
        self.header = name.into();
        self
    }

    /// The methods that take a key (default POST and PATCH); others pass
    /// untouched.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Whether a request without a key is refused (400, the default) or
    /// passes without idempotency.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// How long a claim holds without renewal (default [`DEFAULT_LEASE`]).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a completed response is replayed (default
    /// [`DEFAULT_RETENTION`]).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The largest request body accepted (default [`DEFAULT_MAX_BODY`]);
    /// larger is 413.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The largest response body kept for replay (default
    /// [`DEFAULT_MAX_RESPONSE`]).
    pub fn max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// Instead of answering 409 at once, wait up to `wait` for a request
    /// with the same key to finish, then replay its response (or run, if
    /// it released the key). Off by default (zero): 409 at once. The store
    /// is asked again every 50 ms while waiting.
    pub fn wait_for_completion(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Whether a 5xx response (and a 408 or 429, which invite a retry)
    /// frees the key so that a retry runs the handler again: true by
    /// default, taking such an answer to mean the request had no effect.
    /// Set false when a handler can fail *after* its side effects: those
    /// responses are then kept and replayed like any other.
    pub fn release_on_server_error(mut self, release: bool) -> Self {
        self.release_on_server_error = release;
        self
    }

    /// What a store failure does when the key is claimed: the default
    /// [`FailurePolicy::Closed`] answers 503 (500 when the store answered
    /// with an error), so a request never runs without its claim;
    /// [`FailurePolicy::Open`] runs the handler anyway, unprotected: a
    /// retry during the outage runs it again, nothing is recorded for
    /// replay, and the handler finds no [`Fence`] in its extensions. Only
    /// for handlers whose duplicates are harmless. The key's checks (a
    /// valid key, a scope, the body's size) apply either way.
    pub fn on_store_error(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Your own answer to the layer's refusals (a missing or invalid key,
    /// no scope, a body too large or unreadable, a key in flight, reused
    /// or not replayable, a store failure) instead of the default
    /// problem+json; the same hook every layer takes (see
    /// [`refusal`](crate::refusal)). The layer adds `Retry-After` to a
    /// key in flight unless the answer has one.
    pub fn on_refusal(
        mut self,
        hook: impl Fn(&Parts, &Refusal<'_>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.on_refusal = OnRefusal::new(hook);
        self
    }

    /// The layer; a Config error for a bad header name (the key's or the
    /// scope's), a scope by client address, no methods, or a lease or
    /// retention under 100 ms.
    pub fn build(self) -> Result<IdempotencyLayer, Error> {
        let header = HeaderName::from_bytes(self.header.as_bytes()).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!("{:?} is not a header name", self.header),
            )
        })?;
        if self.methods.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no methods take a key"));
        }
        self.scope
            .validate()
            .map_err(|e| Error::config(format!("idempotency scope: {e}")))?;
        if self.scope.uses_address() {
            return Err(Error::config(
                "idempotency scope: a client address is no caller identity (clients behind one \
                 proxy or NAT would replay each other's responses); scope by a credential \
                 header, the session's user, or your own function",
            ));
        }
        let floor = Duration::from_millis(100);
        if self.lease < floor || self.retention < floor {
            return Err(Error::new(
                ErrorKind::Config,
                "lease and retention must be at least 100 ms",
            ));
        }
        // Past a year is a mistake (`Duration::MAX` for "forever"), and the
        // store's expiry arithmetic would overflow.
        let year = Duration::from_secs(365 * 24 * 3600);
        if self.lease > year || self.retention > year || self.wait > year {
            return Err(Error::new(
                ErrorKind::Config,
                "lease, retention and wait_for_completion must be at most a year",
            ));
        }
        Ok(IdempotencyLayer {
            config: Arc::new(Config {
                store: self.store,
                scope: self.scope,
                header,
                methods: self.methods,
                required: self.required,
                lease: self.lease,
                retention: self.retention,
                max_body: self.max_body,
                max_response: self.max_response,
                wait: self.wait,
                release_on_server_error: self.release_on_server_error,
                on_refusal: self.on_refusal,
                failure: self.failure,
                failures: crate::failure_log::FailureLog::new("idempotency"),
            }),
        })
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of an [`IdempotencyLayer`]. The inner service receives the
/// request with its body buffered (a [`ResponseBody`], the crate's body
/// type, in both directions).
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S>
where
    S: Service<Request<ResponseBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        // Not a method the layer covers, or (where keys are optional) no
        // key: straight through.
        let keyless = !config.required && !req.headers().contains_key(&config.header);
        if keyless || !config.methods.contains(req.method()) {
            return ResponseFuture {
                state: FutureState::Passing {
                    future: inner.call(req.map(ResponseBody::inner)),
                },
            };
        }
        let trace = crate::trace::layer_span!("idempotency");
        ResponseFuture {
            state: FutureState::Running {
                future: trace.boxed(run(config, inner, req)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`IdempotencyService`]: the inner service's
    /// own for a request the layer lets by (a method it does not cover,
    /// no key where keys are optional), else the layer's work (the claim,
    /// the body, the handler and the completion, boxed).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: FutureState<F, B, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = FutureProj]
    enum FutureState<F, B, E> {
        Passing {
            #[pin]
            future: F,
        },
        Running {
            future: BoxFuture<Result<Response<ResponseBody<B>>, E>>,
        },
        // Answered: polling again is a bug of the caller's.
        Done,
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let out = match state.as_mut().project() {
            FutureProj::Passing { future } => {
                std::task::ready!(future.poll(cx)).map(|res| res.map(ResponseBody::inner))
            }
            FutureProj::Running { future } => std::task::ready!(future.as_mut().poll(cx)),
            FutureProj::Done => {
                panic!("idempotency: a response future polled after it completed")
            }
        };
        state.set(FutureState::Done);
        Poll::Ready(out)
    }
}

/// A problem of the layer's own.
fn problem(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Problem {
    Problem::new(status, title, detail).with_type(PROBLEM_TYPE)
}

/// The answer to a refused request: the application's, else the
/// problem+json.
fn refuse<B>(config: &Config, parts: &Parts, refusal: &Refusal<'_>) -> Response<ResponseBody<B>> {
    config
        .on_refusal
        .answer(parts, refusal)
        .map(ResponseBody::full)
}

/// [`refuse`] with a problem of the layer's own.
fn refuse_with<B>(
    config: &Config,
    parts: &Parts,
    kind: RefusalKind,
    problem: Problem,
) -> Response<ResponseBody<B>> {
    refuse(config, parts, &Refusal::new("idempotency", kind, problem))
}

async fn run<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ResponseBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let (mut parts, body) = req.into_parts();
    // The key.
    // (Without one, where keys are optional, `call` sent it straight on.)
    let client_key = match parts.headers.get(&config.header) {
        None => {
            let problem = problem(
                StatusCode::BAD_REQUEST,
                "Idempotency key missing",
                format!("This request needs an {} header.", config.header),
            );
            return Ok(refuse_with(
                &config,
                &parts,
                RefusalKind::KeyMissing,
                problem,
            ));
        }
        Some(value) => match key_field::parse(value) {
            Ok(key) => key,
            Err(why) => {
                let problem = problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid idempotency key",
                    format!("{}: {why}.", config.header),
                );
                return Ok(refuse_with(
                    &config,
                    &parts,
                    RefusalKind::KeyInvalid,
                    problem,
                ));
            }
        },
    };
    let Some(scope) = config.scope.identify(&parts).await else {
        let problem = problem(
            StatusCode::BAD_REQUEST,
            "No idempotency scope",
            "An idempotency key is kept per caller, and this request names none (no credential or session).",
        );
        return Ok(refuse_with(&config, &parts, RefusalKind::NoScope, problem));
    };
    // The body, whole and bounded.
    let body = match crate::body::read_whole(body, config.max_body).await {
        Ok(bytes) => bytes,
        Err(crate::body::ReadError::TooLarge) => {
            let problem = problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
                format!(
                    "An idempotent request's body may be at most {} bytes.",
                    config.max_body
                ),
            );
            return Ok(refuse_with(
                &config,
                &parts,
                RefusalKind::BodyTooLarge,
                problem,
            ));
        }
        Err(crate::body::ReadError::Read) => {
            let problem = problem(
                StatusCode::BAD_REQUEST,
                "Unreadable request body",
                "The request body could not be read.",
            );
            return Ok(refuse_with(
                &config,
                &parts,
                RefusalKind::BodyUnreadable,
                problem,
            ));
        }
    };
    let (kind, scope) = scope_parts(&scope, config.scope.is_chain());
    let key = hash_hex([
        &kind[..],
        scope,
        parts.method.as_str().as_bytes(),
        route(&parts).as_bytes(),
        client_key.as_bytes(),
    ]);
    let fingerprint = digest([
        parts.method.as_str().as_bytes(),
        parts.uri.path().as_bytes(),
        parts.uri.query().unwrap_or("").as_bytes(),
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .map_or(&b""[..], HeaderValue::as_bytes),
        &body[..],
    ]);
    // The counter outlives every record of the key and, with a floor of a
    // day, any handler kept alive by its renewals: tokens never repeat
    // while an old holder may still act.
    let counter_ttl = config.retention.max(COUNTER_FLOOR) + config.lease * 2;
    // With a wait configured, a key in flight is asked again until it
    // completes (then replayed), is freed (then claimed), or the wait ends.
    let waited_until = tokio::time::Instant::now() + config.wait;
    let holder = layout::new_holder();
    let mut sent;
    loop {
        // The claim's lease counts from when it was asked for.
        sent = tokio::time::Instant::now();
        let mut claim = PendingClaim::start(&config, &key, fingerprint, holder);
        match claim.answer().await {
            Err(e) => {
                // A claim that timed out may still land later (the backend
                // does not abandon a sent call): free it if it is ours.
                let (store, key) = (config.clone(), key.clone());
                crate::task::spawn_here(async move {
                    let _ = store.store.release(&key, holder).await;
                });
                crate::trace::outcome("idempotency", "store_error");
                if config.failure == FailurePolicy::Open {
                    let doing = "running the handler without a claim (fail-open)";
                    config.failures.failed(&e, doing, false);
                    let req = Request::from_parts(parts, ResponseBody::full(body));
                    let res = crate::trace::unmeasured(inner.call(req)).await;
                    return Ok(res?.map(ResponseBody::inner));
                }
                // Fail closed: never run the handler without the claim.
                config.failures.failed(
                    &e,
                    "answering 503: no handler without the claim (fail-closed)",
                    true,
                );
                let problem = Problem::store_failure("idempotency", &e);
                return Ok(refuse_with(
                    &config,
                    &parts,
                    RefusalKind::StoreFailure,
                    problem,
                ));
            }
            Ok(Claim::Claimed) => {
                config.failures.succeeded();
                crate::trace::outcome("idempotency", "first");
                break;
            }
            Ok(Claim::Taken { record }) => {
                config.failures.succeeded();
                let in_flight = layout::is_in_flight(&record);
                let now = tokio::time::Instant::now();
                if in_flight && now < waited_until {
                    let pause = WAIT_POLL.min(waited_until - now);
                    // Boxed: a timer is large, and rarely needed here.
                    Box::pin(tokio::time::sleep(pause)).await;
                    continue;
                }
                return Ok(taken(&config, &parts, &record, &fingerprint));
            }
        }
    }

    // From here on the outcome is recorded whether or not the client still
    // listens: the handler and the completion run here, but if this future
    // is dropped (a client gone, an outer timeout) they go on in a task of
    // their own, in this request's span. Neither the handler is cancelled
    // nor the key freed.
    parts.extensions.insert(Fence {
        inner: Arc::new(FenceInner {
            config: config.clone(),
            key: key.clone(),
            holder,
            counter_ttl,
            token: tokio::sync::OnceCell::new(),
        }),
    });
    let handler =
        crate::trace::unmeasured(inner.call(Request::from_parts(parts, ResponseBody::full(body))));
    let held = Held::new(config, key, holder, sent);
    DetachOnDrop(Some(Box::pin(execute(held, fingerprint, handler)))).await
}

/// A future that, dropped before it is done, is finished in a task of its
/// own (in the span it was dropped in) rather than cancelled; its output
/// is then dropped.
struct DetachOnDrop<T: Send + 'static>(Option<BoxFuture<T>>);

impl<T: Send + 'static> Future for DetachOnDrop<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        // Out while polled: if the handler panics, the future is dropped
        // with the panic (its claim released), not detached half-run.
        let Some(mut future) = self.0.take() else {
            panic!("idempotency: a request's future polled after it completed");
        };
        match future.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(out),
            Poll::Pending => {
                self.0 = Some(future);
                Poll::Pending
            }
        }
    }
}

impl<T: Send + 'static> Drop for DetachOnDrop<T> {
    fn drop(&mut self) {
        let Some(future) = self.0.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(
                async move {
                    let _ = future.await;
                }
                .instrument(tracing::Span::current()),
            );
        }
    }
}

/// Runs the handler under `held`'s claim and records its outcome: the
/// response once the first attempt to record it is over (further attempts,
/// when the store was unreachable, go on in the background).
async fn execute<F, B, E>(
    mut held: Held,
    fingerprint: [u8; 32],
    handler: F,
) -> Result<Response<ResponseBody<B>>, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
{
    let res = match held.beside(handler).await {
        Ok(res) => res,
        Err(e) => {
            // The service failed before making a response: taken as
            // having had no effect.
            held.release().await;
            return Err(e);
        }
    };
    let status = res.status();
    let transient = matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
    );
    if held.config.release_on_server_error && (status.is_server_error() || transient) {
        // The client may retry: free the key.
        held.release().await;
        return Ok(res.map(ResponseBody::inner));
    }
    let (head, body) = res.into_parts();
    // The lease is renewed while the body is read too: a slow body must
    // not let a duplicate claim the key.
    let (prefix, rest) = held
        .beside(read_prefix(body, held.config.max_response))
        .await;
    let (record, res) = match rest {
        None => {
            let stored = Stored {
                status: head.status,
                headers: replayed_headers(&head.headers),
                body: prefix.clone(),
            };
            let record = layout::complete(held.holder, &fingerprint, &stored).unwrap_or_else(|| {
                tracing::warn!("idempotent response has a header too long to keep; a retry gets 409, not a replay");
                layout::unretained(held.holder, &fingerprint)
            });
            (
                record,
                Response::from_parts(head, ResponseBody::full(prefix)),
            )
        }
        // Too large to keep (or trailers, or an error midway): sent as it
        // comes, and the key is marked done without its response, so a
        // retry does not run the handler again.
        Some(rest) => {
            tracing::warn!("idempotent response too large to keep; a retry gets 409, not a replay");
            (
                layout::unretained(held.holder, &fingerprint),
                Response::from_parts(head, ResponseBody::chain(prefix, rest)),
            )
        }
    };
    if !held.beside(held.complete_once(&record)).await {
        // The store could not be reached: answer now, and keep trying
        // (the lease renewed meanwhile) in a task of its own.
        tokio::spawn(
            async move {
                held.beside(held.complete_with_retries(&record)).await;
                held.finish();
            }
            .instrument(tracing::Span::current()),
        );
        return Ok(res);
    }
    held.finish();
    Ok(res)
}

/// The answer when the key is already claimed or completed, counted by
/// what the record said.
fn taken<B>(
    config: &Config,
    parts: &Parts,
    record: &Bytes,
    fingerprint: &[u8; 32],
) -> Response<ResponseBody<B>> {
    let (answer, outcome) = answer_taken(record, fingerprint);
    crate::trace::outcome("idempotency", outcome);
    match answer {
        Ok(res) => res,
        Err(refusal) => refuse(config, parts, &refusal),
    }
}

/// [`taken`]'s answer (the stored response, or a refusal), and its outcome
/// (`in_flight`, `replayed`, `mismatch`, `not_retained`, `unreadable`).
fn answer_taken<B>(
    record: &Bytes,
    fingerprint: &[u8; 32],
) -> (
    Result<Response<ResponseBody<B>>, Box<Refusal<'static>>>,
    &'static str,
) {
    let refusal = |kind, status, title, detail: &str| {
        let problem = problem(status, title, detail);
        Err(Box::new(Refusal::new("idempotency", kind, problem)))
    };
    match layout::decode(record) {
        Some(Record::InFlight { .. }) => {
            let in_flight = refusal(
                RefusalKind::InFlight,
                StatusCode::CONFLICT,
                "Request in progress",
                "A request with this idempotency key is still being processed; retry later.",
            );
            let wait = Duration::from_secs(IN_FLIGHT_RETRY_AFTER);
            (
                in_flight.map_err(|r| Box::new(r.retrying_after(wait))),
                "in_flight",
            )
        }
        Some(Record::Complete {
            fingerprint: stored,
            ..
        }
        | Record::Unretained {
            fingerprint: stored,
        }) if &stored != fingerprint => (
            refusal(
                RefusalKind::KeyReused,
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency key reused",
                "This idempotency key was used for a different request.",
            ),
            "mismatch",
        ),
        Some(Record::Complete { response, .. }) => {
            let mut res = Response::new(ResponseBody::full(response.body));
            *res.status_mut() = response.status;
            *res.headers_mut() = response.headers;
            res.headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            (Ok(res), "replayed")
        }
        Some(Record::Unretained { .. }) => (
            refusal(
                RefusalKind::NotRetained,
                StatusCode::CONFLICT,
                "Response not retained",
                "The request with this key was processed, but its response was too large to keep for replay; use a new key to run it again.",
            ),
            "not_retained",
        ),
        None => (
            refusal(
                RefusalKind::Unreadable,
                StatusCode::CONFLICT,
                "Idempotency record unreadable",
                "The record for this idempotency key cannot be read; use a new key.",
            ),
            "unreadable",
        ),
    }
}

/// The route a request matched (axum's template), else its path.
fn route(parts: &Parts) -> &str {
    #[cfg(feature = "axum")]
    if let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return matched.as_str();
    }
    parts.uri.path()
}

fn replayed_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if REPLAYED_HEADERS.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Up to `max` bytes of a body: the whole of it (and `None`), or what was
/// read and the rest of it to send on.
async fn read_prefix<B: Body<Data = Bytes> + Send + 'static>(
    body: B,
    max: usize,
) -> (Bytes, Option<Pin<Box<B>>>) {
    let mut body = Box::pin(body);
    let mut buf = BytesMut::new();
    if body.size_hint().lower() > max as u64 {
        return (Bytes::new(), Some(body));
    }
    loop {
        match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => return (buf.freeze(), None),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > max {
                        return (buf.freeze(), Some(body));
                    }
                }
                // Trailers are not kept: send on what is left.
                Err(_) => return (buf.freeze(), Some(body)),
            },
            Some(Err(_)) => return (buf.freeze(), Some(body)),
        }
    }
}

/// A claim call on its way. Dropped before it answers (the request went
/// away mid-call), the call is finished in a task of its own and a claim
/// it made is released: no orphaned in-flight record holds the key for a
/// lease.
struct PendingClaim {
    call: Option<BoxFuture<Result<Claim, Error>>>,
    config: Arc<Config>,
    key: String,
    holder: u64,
}

impl PendingClaim {
    fn start(config: &Arc<Config>, key: &str, fingerprint: [u8; 32], holder: u64) -> Self {
        let (config, key) = (config.clone(), key.to_owned());
        let call = {
            let (config, key) = (config.clone(), key.clone());
            Box::pin(async move {
                config
                    .store
                    .claim(&key, &fingerprint, holder, config.lease)
                    .await
            })
        };
        PendingClaim {
            call: Some(call),
            config,
            key,
            holder,
        }
    }

    async fn answer(&mut self) -> Result<Claim, Error> {
        let Some(call) = self.call.as_mut() else {
            return Err(Error::new(ErrorKind::Config, "claim answered twice"));
        };
        let out = call.await;
        self.call = None;
        out
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        release_later(&self.config, &mut self.key, self.holder, async move {
            matches!(call.await, Ok(Claim::Claimed))
        });
    }
}

/// Releases `holder`'s claim of `key` in a task of its own, once `first`
/// says there is one (for a drop, which cannot await).
fn release_later(
    config: &Arc<Config>,
    key: &mut String,
    holder: u64,
    first: impl Future<Output = bool> + Send + 'static,
) {
    let (config, key) = (config.clone(), std::mem::take(key));
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        crate::task::spawn_on(&handle, async move {
            if first.await {
                let _ = config.store.release(&key, holder).await;
            }
        });
    }
}

/// First pause before a failed completion is sent again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between completion attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A claim while its handler runs: renews the lease beside it, records
/// the outcome, and, if dropped before either (a panic), releases the key.
struct Held {
    config: Arc<Config>,
    key: String,
    holder: u64,
    /// When the claim was asked for: its lease counts from then.
    claimed: tokio::time::Instant,
    done: bool,
}

impl Held {
    fn new(config: Arc<Config>, key: String, holder: u64, claimed: tokio::time::Instant) -> Self {
        Held {
            config,
            key,
            holder,
            claimed,
            done: false,
        }
    }

    /// Runs `work`, renewing the claim's lease every third of it meanwhile
    /// (in this same task: no task or timer for work quicker than that;
    /// see [`lease::renewing`](crate::lease::renewing)). A claim lost
    /// meanwhile (the lease ran out, or another request holds the key
    /// now) still lets the work finish: completion writes onto a free key
    /// only, and fencing refuses it over another's claim.
    async fn beside<F: Future>(&self, work: F) -> F::Output {
        let lease = self.config.lease;
        let renew = || self.config.store.extend(&self.key, self.holder, lease);
        crate::lease::renewing(work, self.claimed, lease, None, renew, None).await
    }

    /// One attempt to store `record`: true when it is over for good
    /// (stored, or taken over by another request), false on any store
    /// error. Every error is retried, not only an unreachable store: a
    /// demoted primary (`READONLY`), a full one (`OOM`), `LOADING` or
    /// `BUSY` pass, and giving up would free the key at the lease's end
    /// for a handler that already ran.
    async fn complete_once(&self, record: &[u8]) -> bool {
        let config = &self.config;
        match config
            .store
            .complete(&self.key, self.holder, record, config.retention)
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(
                    "idempotency claim taken over before completion; the response is not kept (fencing)"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "idempotency record not stored yet; trying again");
                false
            }
        }
    }

    /// Sends `record` again with backoff while the store is unreachable,
    /// for up to the retention. Until it is stored a retry finds the key
    /// in flight (409), never free: completion is safe to repeat and
    /// writes onto a key whose lease ran out meanwhile, if no one claimed
    /// it since.
    async fn complete_with_retries(&self, record: &[u8]) {
        let started = tokio::time::Instant::now();
        let mut pause = RETRY_FIRST;
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
            if self.complete_once(record).await {
                return;
            }
            if started.elapsed() >= self.config.retention {
                tracing::error!("idempotency record not stored within the retention; giving up");
                return;
            }
        }
    }

    /// The outcome is recorded (or given up on): nothing to release.
    fn finish(&mut self) {
        self.done = true;
    }

    async fn release(&mut self) {
        self.done = true;
        if let Err(e) = self.config.store.release(&self.key, self.holder).await {
            tracing::warn!(error = %e, "idempotency key not released; it frees itself when the lease ends");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        release_later(&self.config, &mut self.key, self.holder, async { true });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scope's bytes in the record key's digest are those of the
    /// layer's first version: records written before are still found.
    #[test]
    fn scopes_digest_as_they_always_did() {
        let parts = |identity: &Identity, chained| {
            let (kind, value) = scope_parts(identity, chained);
            (kind.into_owned(), value.to_vec())
        };
        let name = HeaderName::from_static("x-account");
        let header = Identity::Header(name, HeaderValue::from_static("acme"));
        assert_eq!(parts(&header, false), (b"hdr".to_vec(), b"acme".to_vec()));
        let user = Identity::User("ivy".to_owned());
        assert_eq!(parts(&user, false), (b"user".to_vec(), b"ivy".to_vec()));
        let custom = Identity::Custom("t-1".to_owned());
        assert_eq!(parts(&custom, false), (b"fn".to_vec(), b"t-1".to_vec()));
        assert_eq!(
            parts(&Identity::Global, false),
            (b"global".to_vec(), vec![])
        );
        // In a chain, a header's value is kept apart from another header's.
        assert_eq!(
            parts(&header, true),
            (b"hdr:x-account".to_vec(), b"acme".to_vec())
        );
    }
}
