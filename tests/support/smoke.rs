//! Each layer's smoke flow on one backend: what must work on any
//! topology and transport (TLS, a password, Sentinel, a Cluster).
#![cfg(all(
    feature = "session",
    feature = "rate-limit",
    feature = "cache",
    feature = "idempotency",
    feature = "lock"
))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use redis_layers::Backend;
use tower::ServiceExt;

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Each layer's smoke flow on `backend`: a session kept across requests,
/// a limit enforced, a response cached, a POST replayed, a lock held.
pub async fn smoke(backend: Backend) {
    use redis_layers::cache::CacheLayer;
    use redis_layers::idempotency::{IdempotencyLayer, Scope};
    use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, Rule};
    use redis_layers::session::{Session, SessionLayer};

    // Sessions.
    let app = Router::new()
        .route(
            "/visit",
            get(|session: Session| async move {
                let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
                session.insert("n", n).unwrap();
                n.to_string()
            }),
        )
        .layer(
            SessionLayer::builder(backend.clone())
                .secure(false)
                .build()
                .unwrap(),
        );
    let (_, headers, body) = call(&app, Request::get("/visit").body(Body::empty()).unwrap()).await;
    assert_eq!(body, "1");
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let req = Request::get("/visit")
        .header("cookie", &cookie)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, req).await.2, "2", "the session was kept");

    // Rate limiting.
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::builder(backend.clone())
            .rule(
                Rule::prefix("/")
                    .key(Key::header("x-api-key"))
                    .policy(Policy::per_minute(2)),
            )
            .build()
            .unwrap(),
    );
    let statuses: Vec<StatusCode> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            let req = Request::get("/")
                .header("x-api-key", "k")
                .body(Body::empty())
                .unwrap();
            out.push(call(&app, req).await.0);
        }
        out
    };
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    // Caching.
    let runs = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/products",
            get({
                let runs = runs.clone();
                move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    ([("cache-control", "public, max-age=60")], "[\"tea\"]")
                }
            }),
        )
        .layer(CacheLayer::new(backend.clone()));
    for _ in 0..3 {
        let (status, _, body) =
            call(&app, Request::get("/products").body(Body::empty()).unwrap()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "[\"tea\"]"));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "served from the cache");

    // Idempotency.
    let orders = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/orders",
        post({
            let orders = orders.clone();
            move || async move { format!("order {}", orders.fetch_add(1, Ordering::SeqCst) + 1) }
        })
        .layer(IdempotencyLayer::new(
            backend.clone(),
            Scope::header("x-api-key"),
        )),
    );
    let order = || {
        Request::post("/orders")
            .header("x-api-key", "k")
            .header("idempotency-key", "order-1")
            .body(Body::from("{}"))
            .unwrap()
    };
    let first = call(&app, order()).await;
    let again = call(&app, order()).await;
    assert_eq!(first.2, "order 1");
    assert_eq!(again.2, "order 1");
    assert_eq!(again.1["idempotent-replayed"], "true");

    // Locks.
    let locks = redis_layers::lock::Locks::new(backend.clone());
    let guard = locks
        .try_acquire("job", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(locks
        .try_acquire("job", Duration::from_secs(5))
        .await
        .unwrap()
        .is_none());
    assert!(guard.fencing_token().await.unwrap().is_some());
    assert!(guard.release().await.unwrap());
}
