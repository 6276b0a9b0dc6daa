//! [`SessionLayer`], the [`SessionService`] it makes, and its future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cookie::{Key, SameSite};
use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::cookie::CookieConfig;
use super::handle::{Session, Shared};
use super::store::SessionStore;
use super::{Activity, FailurePolicy};
use crate::body::ResponseBody;
use crate::problem::Problem;

/// Idle timeout used when none is configured: 30 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Absolute timeout used when none is configured: 8 hours.
pub const DEFAULT_ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(8 * 60 * 60);
/// Touch interval used when none is configured: 60 seconds.
pub const DEFAULT_TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// The longest timeout accepted: 10 years. Longer settings are cut to it,
/// so expiry times stay exact integers in Lua (whose numbers are doubles).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Adds a [`Session`] to every request and persists what handlers change.
///
/// Defaults (OWASP Session Management Cheat Sheet): cookie `id`, `HttpOnly`,
/// `Secure`, `SameSite=Lax`, `Path=/`, ending with the browser session; idle
/// timeout [`DEFAULT_IDLE_TIMEOUT`], absolute timeout
/// [`DEFAULT_ABSOLUTE_TIMEOUT`], expiry slid at most once per
/// [`DEFAULT_TOUCH_INTERVAL`]; any request with a valid cookie counts as
/// activity; a store failure answers 503 (fail-closed).
#[derive(Clone)]
#[must_use]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("cookie", &self.shared.cookie)
            .field("idle", &self.shared.idle)
            .field("absolute", &self.shared.absolute)
            .field("touch_interval", &self.shared.touch_interval)
            .field("activity", &self.shared.activity)
            .field("failure", &self.shared.failure)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// A layer keeping sessions in `store`, with the secure defaults.
    pub fn new<St: SessionStore>(store: St) -> Self {
        SessionLayer {
            shared: Arc::new(Shared {
                store: Arc::new(store),
                cookie: CookieConfig::default(),
                idle: DEFAULT_IDLE_TIMEOUT,
                absolute: DEFAULT_ABSOLUTE_TIMEOUT,
                touch_interval: DEFAULT_TOUCH_INTERVAL,
                activity: Activity::AnyRequest,
                failure: FailurePolicy::Closed,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// The cookie name (default `id`).
    pub fn cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with(|s| s.cookie.name = name)
    }

    /// The cookie's `Domain` (default: none, so host-only).
    pub fn cookie_domain(self, domain: impl Into<String>) -> Self {
        let domain = domain.into();
        self.with(|s| s.cookie.domain = Some(domain))
    }

    /// The cookie's `Path` (default `/`).
    pub fn cookie_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.with(|s| s.cookie.path = path)
    }

    /// The cookie's `SameSite` (default `Lax`).
    pub fn same_site(self, same_site: SameSite) -> Self {
        self.with(|s| s.cookie.same_site = same_site)
    }

    /// Whether the cookie is `Secure` (default true). Turn it off only for
    /// local development over plain http.
    pub fn secure(self, secure: bool) -> Self {
        self.with(|s| s.cookie.secure = secure)
    }

    /// A persistent cookie (with `Max-Age`, surviving browser restarts)
    /// instead of the default browser-session cookie. Its `Max-Age` follows
    /// the session's expiry; `Set-Cookie` is re-sent only when that moved.
    pub fn persistent(self, persistent: bool) -> Self {
        self.with(|s| s.cookie.persistent = persistent)
    }

    /// Sign the cookie (HMAC, the `cookie` crate's signed jar). The first
    /// key signs; every key verifies, so rotate by putting the new key first
    /// and keeping the old one until its cookies have expired.
    pub fn signing_keys(self, keys: impl IntoIterator<Item = Key>) -> Self {
        let keys: Vec<Key> = keys.into_iter().collect();
        self.with(|s| s.cookie.keys = keys)
    }

    /// Inactivity after which a session ends (default [`DEFAULT_IDLE_TIMEOUT`];
    /// kept between 1 ms and [`MAX_TIMEOUT`]).
    pub fn idle_timeout(self, idle: Duration) -> Self {
        self.with(|s| s.idle = idle.clamp(Duration::from_millis(1), MAX_TIMEOUT))
    }

    /// Age after which a session ends however active (default
    /// [`DEFAULT_ABSOLUTE_TIMEOUT`]; kept between 1 ms and [`MAX_TIMEOUT`]).
    pub fn absolute_timeout(self, absolute: Duration) -> Self {
        self.with(|s| s.absolute = absolute.clamp(Duration::from_millis(1), MAX_TIMEOUT))
    }

    /// The expiry slides only when it would move by more than this (default
    /// [`DEFAULT_TOUCH_INTERVAL`]), so most requests write nothing.
    pub fn touch_interval(self, interval: Duration) -> Self {
        self.with(|s| s.touch_interval = interval.min(MAX_TIMEOUT))
    }

    /// Which requests slide the expiry (default [`Activity::AnyRequest`]).
    pub fn activity(self, activity: Activity) -> Self {
        self.with(|s| s.activity = activity)
    }

    /// What a store failure does (default [`FailurePolicy::Closed`]).
    pub fn on_store_error(self, policy: FailurePolicy) -> Self {
        self.with(|s| s.failure = policy)
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`SessionLayer`].
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
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
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let session = Session::new(self.shared.clone(), req.headers());
        req.extensions_mut().insert(session.clone());
        let failure = self.shared.failure;
        // Call the instance that was driven to readiness, leave a clone in
        // its place (see tower's "Be careful when cloning inner services").
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            inner: Box::pin(async move {
                let res = inner.call(req).await?;
                if res.status().is_server_error() {
                    // The handler failed: persist nothing it may have half done.
                    return Ok(res.map(ResponseBody::inner));
                }
                let (mut parts, body) = res.into_parts();
                match session.finish(&mut parts.headers).await {
                    Ok(()) => Ok(Response::from_parts(parts, ResponseBody::inner(body))),
                    Err(e) => match failure {
                        FailurePolicy::Open => {
                            tracing::warn!(error = %e, "session could not be saved (fail-open)");
                            Ok(Response::from_parts(parts, ResponseBody::inner(body)))
                        }
                        FailurePolicy::Closed => {
                            tracing::error!(error = %e, "session could not be saved");
                            Ok(store_unavailable(&e))
                        }
                    },
                }
            }),
        }
    }
}

pub(crate) fn store_unavailable<B>(e: &crate::Error) -> Response<ResponseBody<B>> {
    if e.is_unavailable() {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Session store unavailable",
            "The session could not be read or saved; try again shortly.",
        )
        .to_response()
    } else {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Session store error",
            "The session could not be read or saved.",
        )
        .to_response()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The response future of [`SessionService`].
pub struct ResponseFuture<B, E> {
    inner: BoxFuture<Result<Response<ResponseBody<B>>, E>>,
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
