//! A response read whole, for the tests that drive a service in process
//! (the suites over real HTTP use [`http`](super::http)).

use axum::body::Body;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A response: status, headers and the body as text.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// A header's value as text (`None` when absent or not text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Set-Cookie` header, when there is one.
    pub fn set_cookie(&self) -> Option<&str> {
        self.header("set-cookie")
    }

    /// Whether the body is problem+json.
    pub fn is_problem(&self) -> bool {
        self.header("content-type") == Some("application/problem+json")
    }

    /// The cache's `Cache-Status` ("" without one).
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    /// Whether the cache answered from what it stored.
    pub fn hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

/// Sends `req` to (a clone of) `service` and reads the response whole.
pub async fn send<S, B>(service: &S, req: Request<Body>) -> Reply
where
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = service.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
