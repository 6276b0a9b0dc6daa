//! The memory backend's bounds hold against made-up keys: a flood of
//! rate-limit counters, idempotency records and cache entries that any
//! anonymous client can create never evicts a logged-in session.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use redis_layers::cache::CacheLayer;
use redis_layers::idempotency::{IdempotencyLayer, Scope};
use redis_layers::memory::MemoryBackend;
use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, Rule};
use redis_layers::session::{Session, SessionLayer};
use tower::ServiceExt;

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, String, Option<String>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let cookie = res
        .headers()
        .get("set-cookie")
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_keys_never_evict_a_logged_in_session() {
    let memory = MemoryBackend::builder().max_entries(100).build().unwrap();
    async fn login(session: Session) -> &'static str {
        session.insert("name", "alice").unwrap();
        session.set_user("alice").unwrap();
        "in"
    }
    async fn me(session: Session) -> String {
        session
            .get::<String>("name")
            .await
            .unwrap()
            .unwrap_or_default()
    }
    let limits = RateLimitLayer::builder(memory.clone())
        .rule(
            Rule::prefix("/api")
                .key(Key::header("x-api-key"))
                .policy(Policy::per_hour(100)),
        )
        .build()
        .unwrap();
    let api = Router::new()
        .route("/api/time", get(|| async { "now" }))
        .route(
            "/api/orders",
            post(|| async { (StatusCode::CREATED, "order") }).layer(IdempotencyLayer::new(
                memory.clone(),
                Scope::header("x-api-key"),
            )),
        )
        .route(
            "/api/page/{n}",
            get(|| async { ([("cache-control", "public, max-age=3600")], "page") }),
        )
        .layer(CacheLayer::new(memory.clone()))
        .layer(limits);
    let app = Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .layer(SessionLayer::new(memory.clone()))
        .merge(api);

    let (status, _, cookie) =
        call(&app, Request::post("/login").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = cookie.expect("a session cookie");
    let me = || {
        Request::get("/me")
            .header("cookie", &cookie)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(call(&app, me()).await.1, "alice");

    // 1,000 made-up API keys (a counter each), 1,000 idempotency keys (a
    // record each), 1,000 cacheable URLs (an entry each).
    for i in 0..1_000 {
        let key = format!("made-up-{i}");
        let r = Request::get("/api/time")
            .header("x-api-key", &key)
            .body(Body::empty())
            .unwrap();
        let (status, _, _) = call(&app, r).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "rate limits fail open when their share is full"
        );
        let r = Request::post("/api/orders")
            .header("x-api-key", &key)
            .header("idempotency-key", &key)
            .body(Body::empty())
            .unwrap();
        let (status, body, _) = call(&app, r).await;
        assert!(
            status == StatusCode::CREATED
                || status == StatusCode::INTERNAL_SERVER_ERROR
                || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}: {body}"
        );
        let r = Request::get(format!("/api/page/{i}"))
            .header("x-api-key", &key)
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&app, r).await.0, StatusCode::OK);
    }
    // Let the cache's background writes land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(memory.len() <= 100, "{}", memory.len());
    assert_eq!(
        call(&app, me()).await.1,
        "alice",
        "the session survived the flood"
    );
}
