//! The axum extractor for [`Session`].

use axum_core::extract::FromRequestParts;
use axum_core::response::IntoResponse;
use http::request::Parts;
use http::StatusCode;

use super::Session;
use crate::Problem;

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

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Session::of(parts)
    }
}

impl Session {
    /// The request's session, as the session layer put it in the
    /// extensions: what every extractor built on the session starts from.
    pub(crate) fn of(parts: &Parts) -> Result<Self, MissingSessionLayer> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(MissingSessionLayer)
    }
}
