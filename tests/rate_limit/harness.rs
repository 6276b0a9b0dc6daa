//! Test app, a counting store and a request helper for the rate-limit
//! suites.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::routing::{get, post};
use axum::Router;
use redis_layers::rate_limit::{Check, Decision, Policy, RateLimitLayer, RateLimitStore};
use redis_layers::{Backend, Error};

pub use crate::support::Kind;
use crate::support::{RedisServer, TestBackend};

/// Counts store calls, so tests on either backend can tell what reached
/// the store.
#[derive(Clone)]
pub struct Counting {
    pub inner: Backend,
    pub calls: Arc<AtomicUsize>,
}

impl RateLimitStore for Counting {
    fn check(
        &self,
        key: &str,
        policies: &[Policy],
        cost: u64,
    ) -> impl Future<Output = Result<Decision, Error>> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.check(key, policies, cost)
    }

    fn check_all(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Vec<Decision>, Error>> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.check_all(checks)
    }
}

/// A backend for one test, and what a test needs around it.
pub struct Fixture {
    pub tb: TestBackend,
    pub calls: Arc<AtomicUsize>,
}

impl Fixture {
    pub fn new(kind: Kind) -> Self {
        Fixture {
            tb: TestBackend::new(kind),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn with_deadline(kind: Kind, deadline: std::time::Duration) -> Self {
        Fixture {
            tb: TestBackend::with_deadline(kind, deadline),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn backend(&self) -> Backend {
        self.tb.backend.clone()
    }

    /// The backend behind a call counter.
    pub fn counting(&self) -> Counting {
        Counting {
            inner: self.backend(),
            calls: self.calls.clone(),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn server(&self) -> &RedisServer {
        self.tb.server()
    }

    pub fn server_mut(&mut self) -> &mut RedisServer {
        self.tb.server.as_mut().expect("a Redis test")
    }
}

/// The test app: a few routes under `layer`.
pub fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/login", post(|| async { "welcome" }))
        .route("/users/{id}", get(|| async { "user" }))
        .route("/api/items", get(|| async { "items" }))
        .route("/free", get(|| async { "free" }))
        .layer(layer)
}

pub use crate::support::reply::Reply;

/// Sends a request from `peer` (an address, as `ConnectInfo` carries it)
/// with `headers`.
pub async fn send(
    app: &Router,
    method: &str,
    path: &str,
    peer: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(Body::empty()).unwrap();
    let addr: SocketAddr = peer.parse().expect("a socket address");
    req.extensions_mut().insert(ConnectInfo(addr));
    crate::support::reply::send(app, req).await
}

/// A GET from `peer`.
pub async fn get_from(app: &Router, path: &str, peer: &str) -> Reply {
    send(app, "GET", path, peer, &[]).await
}

/// A POST with a body and, optionally, a cookie, from one fixed peer.
pub async fn send_body(app: &Router, path: &str, body: &str, cookie: Option<&str>) -> Reply {
    let mut req = Request::post(path);
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    let mut req = req.body(Body::from(body.to_owned())).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 99], 1))));
    crate::support::reply::send(app, req).await
}
