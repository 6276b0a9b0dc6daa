//! [`SessionLayer`], its builder, the [`SessionService`] it makes, and its
//! future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use cookie::{Key, SameSite};
use http::response::Parts;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::config::{Config, MAX_TIMEOUT};
use super::error::Refused;
use super::finish::FinishError;
use super::handle::Session;
use super::store::{SessionStore, Store};
use super::Activity;
use crate::body::ResponseBody;
use crate::error::Error;
use crate::problem::Problem;
use crate::refusal::{OnRefusal, Refusal, RefusalKind};
use crate::FailurePolicy;

/// Adds a [`Session`] to every request and persists what handlers change.
///
/// Defaults (OWASP Session Management Cheat Sheet): cookie `id`, `HttpOnly`,
/// `Secure`, `SameSite=Lax`, `Path=/`, ending with the browser session; idle
/// timeout [`DEFAULT_IDLE_TIMEOUT`](super::DEFAULT_IDLE_TIMEOUT), absolute
/// timeout [`DEFAULT_ABSOLUTE_TIMEOUT`](super::DEFAULT_ABSOLUTE_TIMEOUT),
/// expiry slid at most once per
/// [`DEFAULT_TOUCH_INTERVAL`](super::DEFAULT_TOUCH_INTERVAL); any request with
/// a valid cookie counts as activity; a store failure answers 503 when the
/// store is unreachable (500 when it answered with an error)
/// ([`FailurePolicy::Closed`]). Change them with
/// [`SessionLayer::builder`].
#[derive(Clone)]
#[must_use]
pub struct SessionLayer {
    config: Arc<Config>,
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl SessionLayer {
    /// A layer keeping sessions in `store` (a [`Backend`](crate::Backend),
    /// or any [`SessionStore`]) with the secure defaults.
    pub fn new(store: impl SessionStore) -> Self {
        SessionLayer {
            config: Arc::new(Config::new(Store::new(store))),
        }
    }

    /// A builder to change the defaults; its [`build`](SessionLayerBuilder::build)
    /// checks the settings.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::memory::MemoryBackend;
    /// use redis_layers::session::SessionLayer;
    ///
    /// let layer = SessionLayer::builder(MemoryBackend::new())
    ///     .cookie_name("__Host-session")
    ///     .idle_timeout(Duration::from_secs(15 * 60))
    ///     .build()
    ///     .expect("valid session settings");
    ///
    /// // Mistakes are reported here, not on every request:
    /// let wrong = SessionLayer::builder(MemoryBackend::new())
    ///     .idle_timeout(Duration::from_secs(60))
    ///     .touch_interval(Duration::from_secs(60))
    ///     .build();
    /// assert!(wrong.is_err());
    /// ```
    pub fn builder(store: impl SessionStore) -> SessionLayerBuilder {
        SessionLayerBuilder {
            config: Config::new(Store::new(store)),
        }
    }
}

/// The settings of a [`SessionLayer`]; made by [`SessionLayer::builder`].
#[must_use]
pub struct SessionLayerBuilder {
    config: Config,
}

impl fmt::Debug for SessionLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayerBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl SessionLayerBuilder {
    /// The cookie name (default `id`): an RFC 6265 token of at most 64
    /// bytes. A `__Host-` name requires `Secure`, `Path=/` and no domain.
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.config.cookie.name = name.into();
        self
    }

    /// The cookie's `Domain` (default: none, so host-only).
    pub fn cookie_domain(mut self, domain: impl Into<String>) -> Self {
        self.config.cookie.domain = Some(domain.into());
        self
    }

    /// The cookie's `Path` (default `/`).
    pub fn cookie_path(mut self, path: impl Into<String>) -> Self {
        self.config.cookie.path = path.into();
        self
    }

    /// The cookie's `SameSite` (default `Lax`); `None` requires `Secure`.
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.config.cookie.same_site = same_site;
        self
    }

    /// Whether the cookie is `Secure` (default true). Turn it off only for
    /// local development over plain http.
    pub fn secure(mut self, secure: bool) -> Self {
        self.config.cookie.secure = secure;
        self
    }

    /// A persistent cookie (with `Max-Age`, surviving browser restarts)
    /// instead of the default browser-session cookie. Its `Max-Age` runs to
    /// the session's absolute deadline and is set only when an id is issued
    /// (creation, renewal), or when a write changes one session's
    /// persistence ([`Session::set_persistent`]); the idle timeout is
    /// enforced by the store. No read ever re-sends the cookie, so a
    /// response to a read that raced a login cannot put the old id back in
    /// the browser.
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.config.cookie.persistent = persistent;
        self
    }

    /// Sign the cookie (HMAC, the `cookie` crate's signed jar). The first
    /// key signs; every key verifies, so rotate by putting the new key first
    /// and keeping the old one until its cookies have expired.
    pub fn signing_keys(mut self, keys: impl IntoIterator<Item = Key>) -> Self {
        self.config.cookie.keys = keys.into_iter().collect();
        self
    }

    /// Inactivity after which a session ends (default
    /// [`DEFAULT_IDLE_TIMEOUT`](super::DEFAULT_IDLE_TIMEOUT); at least 1 ms,
    /// at most the absolute timeout; cut to [`MAX_TIMEOUT`](super::MAX_TIMEOUT)).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.config.idle = idle.min(MAX_TIMEOUT);
        self
    }

    /// Age after which a session ends however active (default
    /// [`DEFAULT_ABSOLUTE_TIMEOUT`](super::DEFAULT_ABSOLUTE_TIMEOUT); at
    /// least 1 ms; cut to [`MAX_TIMEOUT`](super::MAX_TIMEOUT)).
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.config.absolute = absolute.min(MAX_TIMEOUT);
        self
    }

    /// The expiry slides only when it would move by more than this (default
    /// [`DEFAULT_TOUCH_INTERVAL`](super::DEFAULT_TOUCH_INTERVAL); shorter than
    /// the idle timeout), so most requests write nothing.
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.config.touch_interval = interval.min(MAX_TIMEOUT);
        self
    }

    /// Which requests slide the expiry (default [`Activity::AnyRequest`]).
    pub fn activity(mut self, activity: Activity) -> Self {
        self.config.activity = activity;
        self
    }

    /// What a store failure does (default [`FailurePolicy::Closed`]: 503
    /// when the store is unreachable, 500 when it answered with an error;
    /// [`FailurePolicy::Open`] carries on without a session).
    pub fn on_store_error(mut self, policy: FailurePolicy) -> Self {
        self.config.failure = policy;
        self
    }

    /// Your own answer to the layer's refusals instead of the default
    /// problem+json: a renewal that lost to a concurrent request (409,
    /// [`RefusalKind::SessionConflict`]) and, failing closed, a store
    /// failure (503/500, [`RefusalKind::StoreFailure`]), including one a
    /// handler returns as a [`SessionError`](super::SessionError). The
    /// same hook every layer takes (see [`refusal`](crate::refusal)).
    /// With a hook set, the layer keeps a copy of each request's head for
    /// it.
    pub fn on_refusal(
        mut self,
        hook: impl Fn(&http::request::Parts, &Refusal<'_>) -> Response<bytes::Bytes>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.config.on_refusal = OnRefusal::new(hook);
        self
    }

    /// Checks the settings and builds the layer. An [`ErrorKind::Config`]
    /// error names the first setting that is wrong: a cookie name, domain
    /// or path that is not valid in a `Set-Cookie`, `SameSite=None` or a
    /// `__Host-`/`__Secure-` name without `Secure`, a zero timeout, an idle
    /// timeout longer than the absolute one, or a touch interval not
    /// shorter than the idle timeout.
    ///
    /// [`ErrorKind::Config`]: crate::ErrorKind::Config
    pub fn build(self) -> Result<SessionLayer, Error> {
        self.config.validate()?;
        Ok(SessionLayer {
            config: Arc::new(self.config),
        })
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`SessionLayer`].
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let trace = crate::trace::layer_span!("session");
        let session = Session::new(self.config.clone(), req.headers(), trace);
        req.extensions_mut().insert(session.request_session());
        req.extensions_mut().insert(session.clone());
        // The head a refusal hook is given, kept only for one.
        let request = if self.config.on_refusal.is_set() {
            let (parts, body) = req.into_parts();
            let copy = Box::new(parts.clone());
            req = Request::from_parts(parts, body);
            Some(copy)
        } else {
            None
        };
        // Call the instance that was driven to readiness, leave a clone in
        // its place (see tower's "Be careful when cloning inner services").
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = session.trace().span().clone();
        let future = span.in_scope(|| inner.call(req));
        ResponseFuture {
            span,
            state: State::Inner {
                future,
                session: Some(session),
                request,
            },
        }
    }
}

/// The problem of a request whose id renewal lost to a concurrent request
/// (another renewal, a logout, a save): 409, and no cookie, so the client
/// keeps whatever cookie the winning response set.
fn renewal_conflict() -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "Session changed concurrently",
        "Another request renewed or ended this session while this one ran; retry with the current cookie.",
    )
}

/// The answer to a refused request: the hook's, given the request's head
/// (kept only when there is a hook), else the problem+json.
fn refuse<B>(
    session: &Session,
    request: Option<&http::request::Parts>,
    kind: RefusalKind,
    problem: Problem,
) -> Response<ResponseBody<B>> {
    let refusal = Refusal::new("session", kind, problem);
    let res = match request {
        Some(request) => {
            // The hook's page may say nothing of caching: a session's
            // answer is marked as one.
            let mut res = session.config().on_refusal.answer(request, &refusal);
            session.mark_response(res.headers_mut());
            res
        }
        None => refusal.to_response(),
    };
    res.map(ResponseBody::full)
}

/// Writes what the request changed (the store calls of `finish`), then
/// builds the response; under fail-closed a store failure replaces it.
async fn finish<B>(
    session: Session,
    request: Option<Box<http::request::Parts>>,
    mut parts: Parts,
    body: B,
) -> Response<ResponseBody<B>> {
    let finished = if session.trace().is_on() {
        let finish = session.finish(&mut parts.headers);
        session.trace().measure(finish).await
    } else {
        session.finish(&mut parts.headers).await
    };
    match finished {
        Ok(outcome) => {
            if let Some(outcome) = outcome {
                session.outcome(outcome);
            }
            Response::from_parts(parts, ResponseBody::inner(body))
        }
        Err(FinishError::Conflict) => {
            tracing::info!("session renewal lost to a concurrent request");
            session.outcome("conflict");
            refuse(
                &session,
                request.as_deref(),
                RefusalKind::SessionConflict,
                renewal_conflict(),
            )
        }
        Err(FinishError::Store(e)) => match session.config().failure {
            FailurePolicy::Open => {
                let failures = &session.config().failures;
                failures.failed(&e, "session not saved (fail-open)", false);
                session.outcome("store_error");
                Response::from_parts(parts, ResponseBody::inner(body))
            }
            FailurePolicy::Closed => {
                let failures = &session.config().failures;
                failures.failed(&e, "session not saved; answering 5xx (fail-closed)", true);
                session.outcome("store_error");
                let problem = Problem::store_failure("session", &e);
                refuse(
                    &session,
                    request.as_deref(),
                    RefusalKind::StoreFailure,
                    problem,
                )
            }
        },
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`SessionService`]: the inner service's
    /// future, then, only when the response needs the store (a save, a
    /// touch), that work.
    pub struct ResponseFuture<F, B> {
        // The layer's span, entered while this is polled.
        span: tracing::Span,
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner {
            #[pin]
            future: F,
            session: Option<Session>,
            // The request's head, for the refusal hook (only with one).
            request: Option<Box<http::request::Parts>>,
        },
        Finishing {
            future: BoxFuture<Response<ResponseBody<B>>>,
        },
        // Answered: polling again is a bug of the caller's.
        Done,
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Send + 'static,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            let finishing = match this.state.as_mut().project() {
                StateProj::Inner {
                    future,
                    session,
                    request,
                } => {
                    let out = ready!(future.poll(cx));
                    let session = session.take().expect("taken once, leaving this state");
                    let request = request.take();
                    this.state.set(State::Done);
                    let (mut parts, body) = match out {
                        Ok(res) => res.into_parts(),
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    session.mark_response(&mut parts.headers);
                    // A 5xx persists nothing the handler may have half done;
                    // most other responses need no store call at all.
                    if parts.status.is_server_error() {
                        session.close();
                        session.outcome("discarded");
                        // A handler's store failure, answered by the hook.
                        if let Some(request) = request.as_deref() {
                            if let Some(Refused(problem)) = parts.extensions.remove::<Refused>() {
                                let kind = RefusalKind::StoreFailure;
                                return Poll::Ready(Ok(refuse(
                                    &session,
                                    Some(request),
                                    kind,
                                    problem,
                                )));
                            }
                        }
                    }
                    if parts.status.is_server_error() || session.finish_now(&mut parts.headers) {
                        return Poll::Ready(Ok(Response::from_parts(
                            parts,
                            ResponseBody::inner(body),
                        )));
                    }
                    Box::pin(finish(session, request, parts, body))
                }
                StateProj::Finishing { future } => {
                    let res = ready!(future.as_mut().poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(res));
                }
                StateProj::Done => panic!("session: a response future polled after it completed"),
            };
            this.state.set(State::Finishing { future: finishing });
        }
    }
}
