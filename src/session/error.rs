//! [`SessionError`]: why a [`Session`](super::Session) method failed, and
//! the response it becomes.

use std::fmt;

use http::StatusCode;

use crate::Problem;

/// Why a [`Session`](super::Session) method failed.
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
    /// A session's own idle timeout must be longer than the layer's touch
    /// interval (see [`Session::set_idle_timeout`](super::Session::set_idle_timeout)).
    InvalidTimeout {
        /// The idle timeout asked for.
        timeout: std::time::Duration,
        /// The layer's touch interval.
        touch_interval: std::time::Duration,
    },
    /// The response has gone out: a change made now (by a task the handler
    /// spawned, say) could no longer be saved. A logout still works.
    ResponseSent,
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
            SessionError::InvalidTimeout {
                timeout,
                touch_interval,
            } => write!(
                f,
                "a session's idle timeout ({timeout:?}) must be longer than the touch interval ({touch_interval:?})"
            ),
            SessionError::ResponseSent => {
                f.write_str("the response has gone out: session changes can no longer be saved")
            }
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Store(e) => Some(e),
            SessionError::Serialize(e) => Some(e),
            SessionError::Deserialize { source, .. } => Some(source),
            SessionError::InvalidUser
            | SessionError::InvalidTimeout { .. }
            | SessionError::ResponseSent => None,
        }
    }
}

impl SessionError {
    /// The problem+json response for this error: 503 when the store is
    /// unavailable, else 500 (a programming error, not the client's).
    pub fn problem(&self) -> Problem {
        match self {
            SessionError::Store(e) => Problem::store_failure("session", e),
            _ => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Session error",
                "The session could not be used.",
            ),
        }
    }
}

/// Marks a response made of a store failure's [`SessionError`]: the
/// session layer answers it through its `on_refusal` hook, when it has
/// one.
#[derive(Clone)]
pub(crate) struct Refused(pub(crate) Problem);

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for SessionError {
    fn into_response(self) -> axum_core::response::Response {
        tracing::error!(error = %self, "session error");
        let problem = self.problem();
        let stored = matches!(self, SessionError::Store(_)).then(|| Refused(problem.clone()));
        let mut res = problem.into_response();
        if let Some(refused) = stored {
            res.extensions_mut().insert(refused);
        }
        res
    }
}
