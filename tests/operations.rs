//! What an operator sees: one warning when Redis may evict the layers'
//! keys, and store failures logged once per outage (then summarised, then
//! one line when the store is back), not once per request.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, Rule};
use redis_layers::redis::{MemoryPolicy, RedisBackend};
use support::logs::Logs;
use support::RedisServer;
use tower::ServiceExt;

#[tokio::test]
async fn a_redis_that_may_evict_the_layers_keys_is_warned_about_once() {
    let logs = Logs::capture(tracing::Level::INFO);
    let evicting =
        RedisServer::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]);
    let backend = RedisBackend::from_url(&evicting.url()).unwrap();
    for _ in 0..5 {
        backend.ping().await.unwrap();
    }
    let policy = backend.memory_policy().await.unwrap().unwrap();
    assert_eq!(
        policy,
        MemoryPolicy {
            policy: "allkeys-lru".into(),
            maxmemory: 100 * 1024 * 1024
        }
    );
    assert!(policy.may_evict());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let warned = logs.lines("may evict");
    assert_eq!(warned.len(), 1, "once per backend: {warned:#?}");
    assert!(warned[0].contains("WARN") && warned[0].contains("allkeys-lru"));

    // noeviction, or no limit: nothing to say.
    for args in [
        &["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"][..],
        &["--maxmemory-policy", "allkeys-lru"][..],
    ] {
        let server = RedisServer::start_with(args);
        let backend = RedisBackend::from_url(&server.url()).unwrap();
        backend.ping().await.unwrap();
        assert!(!backend.memory_policy().await.unwrap().unwrap().may_evict());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(logs.lines("may evict").len(), 1);

    // A user not allowed CONFIG: unknown, not an error.
    let _: String = evicting.cmd(&[
        "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-config",
    ]);
    let limited =
        RedisBackend::from_url(&format!("redis://app:pw@127.0.0.1:{}", evicting.port())).unwrap();
    assert_eq!(limited.memory_policy().await.unwrap(), None);
}

#[tokio::test]
async fn an_outage_is_logged_once_then_when_it_ends_not_per_request() {
    let logs = Logs::capture(tracing::Level::INFO);
    let mut server = RedisServer::start();
    let backend = RedisBackend::builder()
        .url(server.url())
        .prefix(support::unique_prefix("outage"))
        .deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        RateLimitLayer::builder(backend)
            .rule(
                Rule::prefix("/")
                    .key(Key::header("x-api-key"))
                    .policy(Policy::per_minute(1_000)),
            )
            .build()
            .unwrap(),
    );
    let send = || async {
        let req = Request::get("/")
            .header("x-api-key", "k")
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(req).await.unwrap().status()
    };
    assert_eq!(send().await, StatusCode::OK);
    server.kill();
    for _ in 0..50 {
        // Fail-open by default: through, and counted.
        assert_eq!(send().await, StatusCode::OK);
    }
    let failed = logs.lines("rate-limit store");
    assert_eq!(failed.len(), 1, "one line for the outage: {failed:#?}");
    assert!(failed[0].contains("WARN") && failed[0].contains("fail-open"));
    server.restart();
    let started = std::time::Instant::now();
    while logs.lines("answers again").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "never back");
        assert_eq!(send().await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = logs.lines("answers again");
    assert_eq!(back.len(), 1, "{back:#?}");
    assert!(back[0].contains("rate-limit store answers again after"));
    // Healthy again: nothing more.
    for _ in 0..20 {
        assert_eq!(send().await, StatusCode::OK);
    }
    assert_eq!(logs.lines("rate-limit store").len(), 2);
}

/// Work a request leaves behind (here a lock released as its guard is
/// dropped, with Redis gone) logs inside the request's span, so its lines
/// say which request they belong to.
#[tokio::test]
async fn work_a_request_leaves_behind_logs_in_its_span() {
    use tracing::Instrument;
    let logs = Logs::capture(tracing::Level::INFO);
    let mut server = RedisServer::start();
    let backend = RedisBackend::builder()
        .url(server.url())
        .prefix(support::unique_prefix("spans"))
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    let locks = redis_layers::lock::Locks::new(backend);
    async {
        let guard = locks
            .try_acquire("job", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        server.kill();
        drop(guard);
    }
    .instrument(tracing::info_span!("request", id = 42))
    .await;
    let started = std::time::Instant::now();
    while logs.lines("lock not released").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(3), "never logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = logs.lines("lock not released");
    assert!(lines[0].contains("request{id=42}"), "{lines:#?}");
}
