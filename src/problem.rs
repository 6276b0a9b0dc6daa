//! Problem details (RFC 9457): how layers answer what they reject.

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::ResponseBody;
use crate::error::Error;

/// An `application/problem+json` response body: a status, a short title and
/// a detail sentence. Layers use it for every rejection, so clients get one
/// machine-readable error shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    members: Vec<(&'static str, serde_json::Value)>,
}

impl Problem {
    /// A problem with the given status, title and detail.
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            kind: "about:blank",
            title,
            detail: detail.into(),
            members: Vec::new(),
        }
    }

    /// The problem type, a URI (default `about:blank`).
    #[must_use]
    pub fn with_type(mut self, uri: &'static str) -> Self {
        self.kind = uri;
        self
    }

    /// An extension member of the problem object (RFC 9457 §3.2).
    #[must_use]
    pub fn with_member(mut self, name: &'static str, value: serde_json::Value) -> Self {
        self.members.push((name, value));
        self
    }

    /// What every layer answers when its store failed under
    /// [`FailurePolicy::Closed`](crate::FailurePolicy::Closed): 503 when the
    /// store could not be reached in time (the client may retry), else 500
    /// (the store answered with an error: a bug or a misconfiguration).
    /// `capability` names the store in the detail (`"session"`).
    pub fn store_failure(capability: &str, error: &Error) -> Self {
        if error.is_unavailable() {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                format!("The {capability} store could not be reached in time; try again shortly."),
            )
        } else {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Store error",
                format!("The {capability} store failed."),
            )
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The title: short, the same for every problem of its kind.
    pub fn title(&self) -> &str {
        self.title
    }

    /// The detail: a sentence for the client about this occurrence.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        let mut object = json!({
            "type": self.kind,
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(map) = object.as_object_mut() {
            for (name, value) in &self.members {
                map.insert((*name).to_owned(), value.clone());
            }
        }
        object.to_string()
    }

    /// The complete response.
    pub fn to_response<B>(&self) -> Response<ResponseBody<B>> {
        self.to_response_bytes().map(ResponseBody::full)
    }

    /// The complete response with a plain [`Bytes`](bytes::Bytes) body (see
    /// also [`Refusal::to_response`](crate::Refusal::to_response), which
    /// adds a refusal's `Retry-After`).
    pub fn to_response_bytes(&self) -> Response<bytes::Bytes> {
        let mut res = Response::new(bytes::Bytes::from(self.to_json()));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Problem {
    fn into_response(self) -> axum_core::response::Response {
        let (parts, _) = self.to_response::<()>().into_parts();
        axum_core::response::Response::from_parts(
            parts,
            axum_core::body::Body::from(self.to_json()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9457_fields() {
        let p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable", "x");
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["status"], 503);
        assert_eq!(v["title"], "Store unavailable");
        assert_eq!(v["detail"], "x");
        let res = p.to_response::<()>();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn store_failures_are_503_only_when_the_store_is_unreachable() {
        use crate::ErrorKind;
        let down = Problem::store_failure("session", &Error::new(ErrorKind::Timeout, "t"));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(down.to_json().contains("session store"));
        let broken = Problem::store_failure("session", &Error::new(ErrorKind::Script, "s"));
        assert_eq!(broken.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
