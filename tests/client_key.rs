//! One client identity for the layers that tell clients apart: the rate
//! limiter's `Key` and the idempotency layer's `Scope` are one type,
//! `ClientKey`; a header name that is not one is a `build()` error in
//! every layer (never a panic), and an address is no idempotency scope.

mod support;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::{Request, StatusCode};
use redis_layers::idempotency::{IdempotencyLayer, Scope};
use redis_layers::lock::{LockKey, LockLayer};
use redis_layers::memory::MemoryBackend;
use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, Rule};
use redis_layers::{ClientKey, ErrorKind};
use support::TestBackend;

#[test]
fn a_bad_header_name_is_a_build_error_in_every_layer() {
    let backend = MemoryBackend::new();
    let limits = RateLimitLayer::builder(backend.clone())
        .rule(
            Rule::prefix("/api/")
                .key(Key::header("x api key").or(Key::client_ip()))
                .policy(Policy::per_minute(1))
                .named("api"),
        )
        .build()
        .unwrap_err();
    assert_eq!(limits.kind(), ErrorKind::Config);
    assert!(
        limits
            .to_string()
            .contains("\"x api key\" is not a header name"),
        "{limits}"
    );
    assert!(
        limits.to_string().contains("\"api\""),
        "names the rule: {limits}"
    );

    let idempotency = IdempotencyLayer::builder(backend.clone(), Scope::header("x:account"))
        .build()
        .unwrap_err();
    assert_eq!(idempotency.kind(), ErrorKind::Config);
    assert!(
        idempotency.to_string().contains("\"x:account\""),
        "{idempotency}"
    );

    let lock = LockLayer::builder(backend, LockKey::header("x tenant"))
        .build()
        .unwrap_err();
    assert_eq!(lock.kind(), ErrorKind::Config);
    assert!(lock.to_string().contains("\"x tenant\""), "{lock}");
}

#[test]
fn an_address_is_no_idempotency_scope() {
    for scope in [
        Scope::client_ip(),
        Scope::header("x-api-key").or(ClientKey::peer_ip()),
    ] {
        let e = IdempotencyLayer::builder(MemoryBackend::new(), scope)
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("no caller identity"), "{e}");
    }
}

async fn post_order(
    app: &Router,
    api_key: Option<&str>,
    body: &'static str,
) -> (StatusCode, String) {
    let mut req = Request::post("/orders").header("idempotency-key", "\"k-1\"");
    if let Some(key) = api_key {
        req = req.header("x-api-key", key);
    }
    let r = support::reply::send(app, req.body(Body::from(body)).unwrap()).await;
    (r.status, r.body)
}

support::both_backends! { TestBackend::new;
    an_idempotency_scope_can_be_checked_against_issued_keys => |fx| {
        // Only issued API keys scope records; others have no scope (400),
        // so made-up keys store nothing.
        let scope = ClientKey::header_validated("x-api-key", |key: &str| {
            std::future::ready(key == "issued-1" || key == "issued-2")
        });
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let runs = counter.clone();
        let app = Router::new()
            .route(
                "/orders",
                post(move |body: String| {
                    let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    async move { format!("order {n}: {body}") }
                }),
            )
            .layer(IdempotencyLayer::builder(fx.backend.clone(), scope).build().unwrap());
        let first = post_order(&app, Some("issued-1"), "tea").await;
        assert_eq!(first, (StatusCode::OK, "order 1: tea".to_owned()));
        assert_eq!(post_order(&app, Some("issued-1"), "tea").await, first, "replayed");
        // Another issued key: another scope, the same client key runs.
        let other = post_order(&app, Some("issued-2"), "tea").await;
        assert_eq!(other, (StatusCode::OK, "order 2: tea".to_owned()));
        for made_up in [Some("made-up"), None] {
            let (status, _) = post_order(&app, made_up, "tea").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{made_up:?}");
        }
        assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
