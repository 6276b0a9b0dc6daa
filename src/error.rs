//! The one error type both backends return.

use std::fmt;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong when talking to a backend.
///
/// The kinds are what a layer needs to decide on a response (a timeout and a
/// dead connection both mean "the store is unavailable", a script error means a
/// bug) and what an operator needs in a log line. The underlying `redis` or
/// `bb8` error is kept as the [`source`](std::error::Error::source) for logging,
/// but no `redis` or `bb8` type is part of this type's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The call did not finish within the backend's per-call deadline.
    Timeout,
    /// No connection could be made, or the connection broke during the call.
    Connection,
    /// Redis answered with an error that is not a script error (for example
    /// `READONLY`, `LOADING` or `OOM`).
    Server,
    /// A Lua script failed while running (a bug in the script or its inputs).
    Script,
    /// The reply (or a stored value) did not have the expected shape.
    Decode,
    /// The backend is full: the memory backend reached its entry limit and had
    /// nothing it was allowed to evict.
    Capacity,
    /// A layer or backend was configured wrongly (a bad URL, a bad key
    /// prefix, an idle timeout longer than the absolute one); reported when
    /// it is built, never per request.
    Config,
    /// A failure inside this process that no client or store caused: the
    /// operating system's random source failed, or an invariant of this
    /// crate broke (a bug; please report it).
    Internal,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "deadline exceeded",
            ErrorKind::Connection => "connection failed",
            ErrorKind::Server => "server error",
            ErrorKind::Script => "script error",
            ErrorKind::Decode => "unexpected reply",
            ErrorKind::Capacity => "backend full",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::Internal => "internal error",
        }
    }
}

/// An error from a backend: a [`kind`](Error::kind), a message, and an
/// optional underlying cause.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause, reported by [`source`](std::error::Error::source).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when the backend could not be reached in time or at all: the
    /// errors a fail-open policy forgives.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout | ErrorKind::Connection)
    }

    pub(crate) fn timeout(deadline: Duration) -> Self {
        Error::new(
            ErrorKind::Timeout,
            format!("no answer within the {} ms deadline", deadline.as_millis()),
        )
    }

    pub(crate) fn decode(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Decode, message)
    }

    /// What Redis answers to a command on a key of another type; the
    /// memory backend answers the same.
    pub(crate) fn wrong_type() -> Self {
        Error::new(
            ErrorKind::Server,
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        )
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    #[allow(dead_code)] // unused when every layer feature is off
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.describe(), self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind_and_message() {
        let e = Error::new(ErrorKind::Script, "boom");
        assert_eq!(e.to_string(), "script error: boom");
        assert!(!e.is_unavailable());
        assert!(Error::timeout(Duration::from_millis(5)).is_unavailable());
    }

    #[test]
    fn source_is_kept() {
        let io = std::io::Error::other("inner");
        let e = Error::new(ErrorKind::Connection, "outer").with_source(io);
        let src = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(src.as_deref(), Some("inner"));
    }
}
