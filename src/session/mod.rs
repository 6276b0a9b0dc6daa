//! Cookie sessions with sliding expiry, field-level saves and per-user
//! session control.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use redis_layers::redis::RedisBackend;
//! use redis_layers::session::{RedisSessionStore, Session, SessionError, SessionLayer};
//!
//! async fn counter(session: Session) -> Result<String, SessionError> {
//!     let visits: u64 = session.get("visits").await?.unwrap_or(0) + 1;
//!     session.insert("visits", visits)?;
//!     Ok(format!("visit number {visits}"))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = RedisBackend::from_url("redis://127.0.0.1:6379")?;
//! let app: Router = Router::new()
//!     .route("/", get(counter))
//!     .layer(SessionLayer::new(RedisSessionStore::new(backend)));
//! # Ok(()) }
//! ```
//!
//! # What it costs
//!
//! | request | store round trips |
//! |---|---|
//! | no session cookie, session untouched | 0 |
//! | cookie, handler reads the session | 1 (the load slides the expiry when due) |
//! | cookie, session untouched | 1 touch ([`Activity::AnyRequest`]) or 0 ([`Activity::SessionRead`]) |
//! | cookie, read then write | 2 |
//! | cookie, write without reading | 1 (the save checks the session still exists) |
//!
//! The expiry slides only when it would move by more than the
//! [touch interval](SessionLayer::touch_interval), so most loads write
//! nothing, and a persistent cookie's `Set-Cookie` is re-sent only then.
//!
//! # Storage and safety
//!
//! - One Redis hash per session, keyed by a SHA-256-derived
//!   [`SessionHandle`]: a dump of Redis reveals no cookie. Ids are 192 bits
//!   from the OS CSPRNG; an id the store does not know is no session (the
//!   client never picks an id).
//! - A save writes only the keys the request changed, in one script that
//!   also checks the session still exists: concurrent requests changing
//!   different keys both persist, and a session destroyed or revoked while
//!   a request ran is never brought back.
//! - Idle and absolute timeouts: the expiry is `min(now + idle, created +
//!   absolute)`, computed from the store's clock.
//! - Malformed, oversized, duplicated, forged (with
//!   [signing](SessionLayer::signing_keys)) or non-UTF-8 cookies are no
//!   session; they never cause an error response.
//! - Nothing is saved when the response is a 5xx.
//! - On the memory store, sessions count against the backend's
//!   [`max_entries`](crate::memory::MemoryBackendBuilder::max_entries); when it
//!   is full, the session closest to expiry is evicted first.
//! - The layer can wrap a whole router (`Router::layer`) or only some routes
//!   (`Router::route_layer`, `get(handler).layer(..)`); routes outside it
//!   never touch the store.
//! - A store failure answers 503 problem+json (the default
//!   [`FailurePolicy::Closed`]), or continues without a session
//!   ([`FailurePolicy::Open`]). Every store call is bounded by the backend's
//!   deadline.

mod cookie;
mod handle;
mod id;
mod layer;
mod memory;
mod redis;
mod store;

pub use self::handle::Session;
pub use self::id::{SessionHandle, SessionId};
pub use self::layer::{
    ResponseFuture, SessionLayer, SessionService, DEFAULT_ABSOLUTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_TOUCH_INTERVAL, MAX_TIMEOUT,
};
pub use self::memory::MemorySessionStore;
pub use self::redis::RedisSessionStore;
pub use self::store::{
    DeleteOutcome, LoadRequest, Loaded, SaveMode, SaveOutcome, SaveRequest, SessionInfo,
    SessionRecord, SessionStore,
};
pub use ::cookie::{Key, SameSite};

use std::fmt;

/// Which requests count as session activity (slide the idle expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Activity {
    /// Every request carrying a valid session cookie (one round trip even
    /// when the handler ignores the session).
    #[default]
    AnyRequest,
    /// Only requests whose handler reads or writes the session.
    SessionRead,
}

/// What the layer does when the session store fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Answer 503 with a problem+json body (the default).
    #[default]
    Closed,
    /// Carry on as if the request had no session; log the failure.
    Open,
}

/// Why a [`Session`] method failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed or timed out (fail-closed policy).
    Store(crate::Error),
    /// A value could not be turned into JSON.
    Serialize(serde_json::Error),
    /// The value stored under `key` is not of the requested type.
    Deserialize {
        /// The session key.
        key: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A user id must be 1 to 256 bytes.
    InvalidUser,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Store(e) => write!(f, "session store: {e}"),
            SessionError::Serialize(e) => write!(f, "session value could not be serialized: {e}"),
            SessionError::Deserialize { key, source } => {
                write!(f, "session value {key:?} has an unexpected type: {source}")
            }
            SessionError::InvalidUser => f.write_str("a session user id must be 1 to 256 bytes"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Store(e) => Some(e),
            SessionError::Serialize(e) => Some(e),
            SessionError::Deserialize { source, .. } => Some(source),
            SessionError::InvalidUser => None,
        }
    }
}

impl SessionError {
    /// The problem+json response for this error: 503 when the store is
    /// unavailable, else 500 (a programming error, not the client's).
    pub fn problem(&self) -> crate::Problem {
        use http::StatusCode;
        match self {
            SessionError::Store(e) if e.is_unavailable() => crate::Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Session store unavailable",
                "The session could not be read or saved; try again shortly.",
            ),
            _ => crate::Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Session error",
                "The session could not be used.",
            ),
        }
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum_core::extract::FromRequestParts;
    use axum_core::response::IntoResponse;
    use http::request::Parts;
    use http::StatusCode;

    use super::{Session, SessionError};
    use crate::Problem;

    impl IntoResponse for SessionError {
        fn into_response(self) -> axum_core::response::Response {
            tracing::error!(error = %self, "session error");
            self.problem().into_response()
        }
    }

    /// Rejection when a handler asks for a [`Session`] but no
    /// [`SessionLayer`](super::SessionLayer) runs in front of it: a 500
    /// naming the missing layer.
    #[derive(Debug)]
    pub struct MissingSessionLayer;

    impl IntoResponse for MissingSessionLayer {
        fn into_response(self) -> axum_core::response::Response {
            tracing::error!("a handler extracts Session but no SessionLayer is installed");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Session layer missing",
                "The Session extractor needs redis_layers::session::SessionLayer on this route.",
            )
            .into_response()
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Session {
        type Rejection = MissingSessionLayer;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Session>()
                .cloned()
                .ok_or(MissingSessionLayer)
        }
    }
}

#[cfg(feature = "axum")]
pub use extract::MissingSessionLayer;
