//! [`LockLayer`]: the inner service runs with a lock held on a resource
//! named by the request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::{LockGuard, Locks};
use crate::body::ResponseBody;
use crate::error::Error;
use crate::problem::Problem;
use crate::refusal::{OnRefusal, Refusal, RefusalKind};
use crate::request_session::RequestSession;
use crate::{Backend, FailurePolicy};

/// The problem type of a refusal because the resource is locked.
const PROBLEM_TYPE: &str = "https://docs.rs/redis-layers/latest/redis_layers/lock/#locked";

type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Which resource a request locks. Requests naming the same resource run
/// one at a time, across every instance sharing the backend.
#[derive(Clone)]
pub struct LockKey {
    kind: KeyKind,
}

#[derive(Clone)]
enum KeyKind {
    Named(&'static str),
    Path,
    Header(HeaderName),
    /// A header name that is not one: `build()` reports it.
    Invalid(&'static str),
    Custom(KeyFn),
    SessionUser,
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            KeyKind::Named(name) => write!(f, "LockKey::named({name:?})"),
            KeyKind::Path => f.write_str("LockKey::path()"),
            KeyKind::Header(h) => write!(f, "LockKey::header({h:?})"),
            KeyKind::Invalid(name) => write!(f, "LockKey::header({name:?})"),
            KeyKind::Custom(_) => f.write_str("LockKey::custom(..)"),
            KeyKind::SessionUser => f.write_str("LockKey::session_user()"),
        }
    }
}

impl LockKey {
    /// One resource for every request (a job that must never run twice at
    /// once).
    pub fn named(name: &'static str) -> Self {
        LockKey {
            kind: KeyKind::Named(name),
        }
    }

    /// The request's path as sent (with its parameters: `/tenants/7/migrate`
    /// and `/tenants/8/migrate` are two resources). Other spellings of one
    /// path (`/tenants/07/migrate`, `/tenants/%37/migrate`) are other
    /// resources here though a typed extractor reads them alike: where
    /// that matters, key on the parsed parameter with
    /// [`custom`](Self::custom), or redirect other spellings first.
    pub fn path() -> Self {
        LockKey {
            kind: KeyKind::Path,
        }
    }

    /// A request header's value (an account id). A request without it
    /// names no resource. A name that is not a header name is a `Config`
    /// error from [`LockLayerBuilder::build`].
    pub fn header(name: &'static str) -> Self {
        LockKey {
            kind: match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => KeyKind::Header(name),
                Err(_) => KeyKind::Invalid(name),
            },
        }
    }

    /// The session's user (needs the session layer outside this one): one
    /// request per user at a time. An anonymous request names no resource.
    pub fn session_user() -> Self {
        LockKey {
            kind: KeyKind::SessionUser,
        }
    }

    /// Your own function of the request head; `None` is "no resource".
    pub fn custom(f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        LockKey {
            kind: KeyKind::Custom(Arc::new(f)),
        }
    }

    /// The resource `parts` names, with its kind (so a header value never
    /// meets an equal path): `None` when it names none; an error when the
    /// session store failed.
    async fn of(&self, parts: &Parts) -> Result<Option<String>, Error> {
        Ok(match &self.kind {
            KeyKind::Named(name) => Some(format!("named:{name}")),
            KeyKind::Path => {
                // The path the client sent (inside `Router::nest`, the
                // request's own has lost the nest's prefix).
                #[cfg(feature = "axum")]
                if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
                    return Ok(Some(format!("path:{}", original.0.path())));
                }
                Some(format!("path:{}", parts.uri.path()))
            }
            KeyKind::Header(name) => parts.headers.get(name).map(|value| {
                let mut out = String::from("header:");
                crate::digest::push_hex(&mut out, value.as_bytes());
                out
            }),
            KeyKind::Custom(f) => f(parts).map(|s| format!("custom:{s}")),
            // Refused by `build()`.
            KeyKind::Invalid(_) => None,
            KeyKind::SessionUser => {
                let Some(session) = RequestSession::of(&parts.extensions) else {
                    return Ok(None);
                };
                let user = session.user().await?;
                user.map(|user| format!("user:{user}"))
            }
        })
    }
}

struct Config {
    locks: Locks,
    key: LockKey,
    lease: Duration,
    wait: Duration,
    status: StatusCode,
    on_refusal: OnRefusal,
    failure: FailurePolicy,
    /// Store failures, logged once per outage and then summarised.
    failures: crate::failure_log::FailureLog,
}

/// Runs the inner service with a lock held on the resource a request
/// names ([`LockKey`]): requests on one resource run one at a time, across
/// every instance sharing the backend.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::post, Extension, Router};
/// use redis_layers::lock::{LockHandle, LockKey, LockLayer};
/// use redis_layers::memory::MemoryBackend;
///
/// async fn migrate(Extension(lock): Extension<LockHandle>) -> String {
///     // Pass the token to what you write (see the module docs).
///     match lock.fencing_token().await {
///         Ok(Some(token)) => format!("migrating with token {token}"),
///         Ok(None) => "the lock was lost; stopped".to_owned(),
///         Err(e) => format!("no token: {e}"),
///     }
/// }
///
/// # fn build() -> Result<(), redis_layers::Error> {
/// let app: Router = Router::new()
///     .route("/tenants/{id}/migrate", post(migrate))
///     .layer(
///         LockLayer::builder(MemoryBackend::new(), LockKey::path())
///             .lease(Duration::from_secs(60))
///             .wait(Duration::from_secs(2))
///             .build()?,
///     );
/// # let _ = app; Ok(()) }
/// ```
///
/// The lock is taken before the inner service is called (waiting up to
/// [`wait`](LockLayerBuilder::wait), 0 by default), renewed while it runs,
/// and released once its response is ready (not while a streamed body is
/// still being sent): one store call to take it, one to release it.
/// The handler finds a [`LockHandle`](super::LockHandle) in the request's extensions (its
/// fencing token, counted when first asked for; a signal if the lock is
/// lost).
///
/// Answers of the layer's own, all problem+json: a request that names no
/// resource (no such header, an anonymous session) gets `400`; a resource
/// still locked after the wait, `409` with `Retry-After` (the status is
/// [`status`](LockLayerBuilder::status)); a store that fails, `503` (or
/// `500` for an error reply): never the handler without the lock. Answer
/// them your way with [`on_refusal`](LockLayerBuilder::on_refusal).
#[derive(Clone)]
pub struct LockLayer {
    config: Arc<Config>,
}

impl fmt::Debug for LockLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLayer")
            .field("key", &self.config.key)
            .field("lease", &self.config.lease)
            .field("wait", &self.config.wait)
            .finish_non_exhaustive()
    }
}

impl LockLayer {
    /// Settings for a layer locking the resource `key` names, in
    /// `backend`.
    pub fn builder(backend: impl Into<Backend>, key: LockKey) -> LockLayerBuilder {
        LockLayerBuilder {
            locks: Locks::new(backend),
            key,
            lease: DEFAULT_LEASE,
            wait: Duration::ZERO,
            status: StatusCode::CONFLICT,
            on_refusal: OnRefusal::default(),
            failure: FailurePolicy::Closed,
        }
    }
}

/// The default lease of a [`LockLayer`]: 30 s (renewed every 10 s while
/// the handler runs).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Settings of a [`LockLayer`].
pub struct LockLayerBuilder {
    locks: Locks,
    key: LockKey,
    lease: Duration,
    wait: Duration,
    status: StatusCode,
    on_refusal: OnRefusal,
    failure: FailurePolicy,
}

impl fmt::Debug for LockLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLayerBuilder")
            .field("key", &self.key)
            .field("lease", &self.lease)
            .field("wait", &self.wait)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl LockLayerBuilder {
    /// The lock's lease (default [`DEFAULT_LEASE`]): how long it outlives
    /// an instance that died holding it. Renewed every third of it while
    /// the handler runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a request waits for the lock before it is refused
    /// (default 0: refused at once when held).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The status of the default refusal: `409 Conflict` (the default) or
    /// `423 Locked`; any 4xx.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// What a store failure does while taking the lock: the default
    /// [`FailurePolicy::Closed`] answers 503 (500 when the store answered
    /// with an error), never running the handler without its lock;
    /// [`FailurePolicy::Open`] runs the handler without the lock (and
    /// without a [`LockHandle`](super::LockHandle) in its extensions), for
    /// a lock that only saves duplicate work. A release that fails is only
    /// logged either way: the lease frees the lock.
    pub fn on_store_error(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Your own answer to the layer's refusals (a resource still locked,
    /// [`RefusalKind::Locked`]; no resource named,
    /// [`RefusalKind::NoScope`]; a store failure) instead of the default
    /// problem+json; the same hook every layer takes (see
    /// [`refusal`](crate::refusal)). The layer adds `Retry-After` to a
    /// locked refusal unless the answer has one.
    pub fn on_refusal(
        mut self,
        hook: impl Fn(&Parts, &Refusal<'_>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.on_refusal = OnRefusal::new(hook);
        self
    }

    /// Checks the settings (a lease from 30 ms to a year, a wait up to a
    /// year, a 4xx status, a lock key whose header name is one) and builds
    /// the layer.
    pub fn build(self) -> Result<LockLayer, Error> {
        super::check(self.lease, "lease", super::MIN_LEASE)?;
        super::check(self.wait, "wait", Duration::ZERO)?;
        if let KeyKind::Invalid(name) = &self.key.kind {
            return Err(Error::config(format!(
                "LockKey::header: {name:?} is not a header name"
            )));
        }
        if !self.status.is_client_error() {
            return Err(Error::config(format!(
                "a lock refusal's status must be a 4xx, not {}",
                self.status
            )));
        }
        Ok(LockLayer {
            config: Arc::new(Config {
                locks: self.locks,
                key: self.key,
                lease: self.lease,
                wait: self.wait,
                status: self.status,
                on_refusal: self.on_refusal,
                failure: self.failure,
                failures: crate::failure_log::FailureLog::new("lock"),
            }),
        })
    }
}

impl<S> Layer<S> for LockLayer {
    type Service = LockService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LockService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`LockLayer`] wraps around the inner one.
#[derive(Clone)]
pub struct LockService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> fmt::Debug for LockService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockService")
            .field("key", &self.config.key)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LockService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let trace = crate::trace::layer_span!("lock");
        ResponseFuture(Some(trace.boxed(run(self.config.clone(), inner, req))))
    }
}

/// The response future of [`LockService`]: the layer's work (taking the
/// lock, the handler with the lock renewed, the release), boxed.
pub struct ResponseFuture<B, E>(Option<BoxFuture<Result<Response<ResponseBody<B>>, E>>>);

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(future) = self.0.as_mut() else {
            panic!("lock: a response future polled after it completed");
        };
        let out = std::task::ready!(future.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(out)
    }
}

/// The answer to a refused request: the application's, else the
/// problem+json.
fn refuse<B>(
    config: &Config,
    parts: &Parts,
    kind: RefusalKind,
    problem: Problem,
) -> Response<ResponseBody<B>> {
    let refusal = Refusal::new("lock", kind, problem);
    config
        .on_refusal
        .answer(parts, &refusal)
        .map(ResponseBody::full)
}

async fn run<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let (mut parts, body) = req.into_parts();
    let resource = match config.key.of(&parts).await {
        Ok(resource) => resource,
        Err(e) => {
            tracing::error!(error = %e, "session store failed; no lock taken");
            let problem = Problem::store_failure("session", &e);
            return Ok(refuse(&config, &parts, RefusalKind::StoreFailure, problem));
        }
    };
    let Some(resource) = resource else {
        let problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "No lock resource",
            "This request names no resource to lock (no such header, or no user).",
        );
        return Ok(refuse(&config, &parts, RefusalKind::NoScope, problem));
    };
    let (keys, owner) = match config
        .locks
        .wait_for(&resource, config.lease, config.wait)
        .await
    {
        // Fail open: the handler without the lock (and without a handle).
        Err(e) if config.failure == FailurePolicy::Open => {
            let doing = "running the handler without the lock (fail-open)";
            config.failures.failed(&e, doing, false);
            crate::trace::outcome("lock", "store_error");
            let res = crate::trace::unmeasured(inner.call(Request::from_parts(parts, body))).await;
            return Ok(res?.map(ResponseBody::inner));
        }
        // Fail closed: never the handler without the lock.
        Err(e) => {
            config
                .failures
                .failed(&e, "answering 503: no handler without the lock", true);
            crate::trace::outcome("lock", "store_error");
            let problem = Problem::store_failure("lock", &e);
            return Ok(refuse(&config, &parts, RefusalKind::StoreFailure, problem));
        }
        Ok(Err(left)) => {
            config.failures.succeeded();
            crate::trace::outcome("lock", "locked");
            let problem = Problem::new(
                config.status,
                "Resource locked",
                "Another request on the same resource is in progress; retry later.",
            )
            .with_type(PROBLEM_TYPE);
            let refusal = Refusal::new("lock", RefusalKind::Locked, problem).retrying_after(left);
            return Ok(config
                .on_refusal
                .answer(&parts, &refusal)
                .map(ResponseBody::full));
        }
        Ok(Ok(taken)) => {
            config.failures.succeeded();
            crate::trace::outcome("lock", "acquired");
            taken
        }
    };
    // Renewed in this task while the handler runs: no task per request.
    let (guard, lost) = LockGuard::unrenewed(config.locks.backend(), &keys, owner, config.lease);
    parts.extensions.insert(guard.handle());
    let res = guard
        .renewing(
            crate::trace::unmeasured(inner.call(Request::from_parts(parts, body))),
            &lost,
        )
        .await;
    // Released before the answer goes out: the client's next request on
    // the resource finds it free.
    if let Err(e) = guard.release().await {
        tracing::warn!(error = %e, "lock not released; it frees itself when its lease ends");
    }
    Ok(res?.map(ResponseBody::inner))
}
