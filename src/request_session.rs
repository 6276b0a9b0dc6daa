//! What the session layer tells the other layers about a request's
//! session, as a request extension: whether the request carried a session
//! cookie, whether the handler used the session, and the user it is bound
//! to. The cache (never store or serve what a session shaped), the rate
//! limiter (`Key::session_user`), idempotency (`Scope::session_user`) and
//! locks (`LockKey::session_user`) read only this, never the session
//! module: layers do not import each other, and a layer works the same
//! with or without the `session` feature (without a session layer there
//! is simply no extension).

use std::sync::Arc;

use crate::error::Error;

/// A session as other layers see it (implemented by the session layer's
/// per-request state).
pub(crate) trait SessionSource: Send + Sync + 'static {
    /// The request carried a well-formed session cookie.
    fn had_cookie(&self) -> bool;
    /// A handler used the session (any method).
    fn was_used(&self) -> bool;
    /// The user the session is bound to (loading it if need be); `None`
    /// without a session or a user. A store failure is an error.
    fn user(self: Arc<Self>) -> crate::BoxFuture<'static, Result<Option<String>, Error>>;
}

/// The request extension the session layer puts on each request.
#[derive(Clone)]
pub(crate) struct RequestSession(Arc<dyn SessionSource>);

impl RequestSession {
    /// The extension for `source`.
    pub(crate) fn new(source: Arc<dyn SessionSource>) -> Self {
        RequestSession(source)
    }

    /// The request's session, if a session layer runs outside.
    pub(crate) fn of(extensions: &http::Extensions) -> Option<&RequestSession> {
        extensions.get::<RequestSession>()
    }

    /// The request carried a session cookie.
    pub(crate) fn had_cookie(&self) -> bool {
        self.0.had_cookie()
    }

    /// A handler used the session.
    pub(crate) fn was_used(&self) -> bool {
        self.0.was_used()
    }

    /// The user the session is bound to.
    pub(crate) fn user(&self) -> crate::BoxFuture<'static, Result<Option<String>, Error>> {
        self.0.clone().user()
    }
}

impl std::fmt::Debug for RequestSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSession").finish_non_exhaustive()
    }
}
