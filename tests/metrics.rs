//! The metrics move: each layer's outcomes, per-rule counts, store call
//! times and errors, connections opened (the `metrics` feature, read
//! through `metrics-util`'s debugging recorder). One test: the recorder is
//! the process's.
#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use http::{Request, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use redis_layers::cache::CacheLayer;
use redis_layers::idempotency::{IdempotencyLayer, Scope};
use redis_layers::lock::Locks;
use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, Rule};
use redis_layers::redis::RedisBackend;
use support::RedisServer;
use tower::ServiceExt;

/// A metric: its name and sorted labels.
type MetricId = (String, Vec<(String, String)>);

/// What the recorder saw, summed (a snapshot drains it).
struct Seen {
    snapshotter: Snapshotter,
    /// Counter totals, or histogram samples.
    totals: std::cell::RefCell<std::collections::HashMap<MetricId, u64>>,
}

impl Seen {
    fn refresh(&self) {
        let mut totals = self.totals.borrow_mut();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let mut labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let n = match value {
                DebugValue::Counter(n) => n,
                DebugValue::Histogram(v) => v.len() as u64,
                // A gauge's last value (0: not set since the last look).
                DebugValue::Gauge(g) if g.into_inner() > 0.0 => {
                    totals.insert((key.key().name().to_owned(), labels), g.into_inner() as u64);
                    continue;
                }
                DebugValue::Gauge(_) => 0,
            };
            *totals
                .entry((key.key().name().to_owned(), labels))
                .or_default() += n;
        }
    }

    /// The counter `name` with exactly these labels (0 when never counted),
    /// or a histogram's samples.
    fn total(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.refresh();
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        self.totals
            .borrow()
            .get(&(name.to_owned(), want))
            .copied()
            .unwrap_or(0)
    }
}

async fn status(app: &Router, req: Request<Body>) -> StatusCode {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap();
    status
}

#[test]
fn the_metrics_move() {
    let recorder = DebuggingRecorder::new();
    let seen = Seen {
        snapshotter: recorder.snapshotter(),
        totals: Default::default(),
    };
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut server = RedisServer::start();
        let backend = RedisBackend::builder()
            .url(server.url())
            .prefix(support::unique_prefix("metrics"))
            .deadline(Duration::from_millis(300))
            .build()
            .unwrap();
        let requests = |layer: &str, outcome: &str| {
            seen.total(
                "redis_layers_requests_total",
                &[("layer", layer), ("outcome", outcome)],
            )
        };

        // Rate limiting: per layer and per rule.
        let app = Router::new().route("/", get(|| async { "ok" })).layer(
            RateLimitLayer::builder(backend.clone())
                .rule(
                    Rule::prefix("/")
                        .key(Key::header("x-api-key"))
                        .policy(Policy::per_minute(2))
                        .named("metered"),
                )
                .build()
                .unwrap(),
        );
        let get_root = || {
            Request::get("/")
                .header("x-api-key", "k")
                .body(Body::empty())
                .unwrap()
        };
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(status(&app, get_root()).await);
        }
        assert_eq!(
            statuses,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ]
        );
        let rule = |outcome| {
            seen.total(
                "redis_layers_rate_limit_rule_total",
                &[("rule", "metered"), ("outcome", outcome)],
            )
        };
        assert_eq!((rule("allowed"), rule("limited")), (2, 1));
        assert_eq!(requests("rate_limit", "allowed"), 2);
        assert_eq!(
            requests("rate_limit", "limited") + requests("rate_limit", "limited_locally"),
            1
        );
        assert!(seen.total("redis_layers_store_call_seconds", &[("backend", "redis")]) >= 2);
        assert_eq!(
            seen.total("redis_layers_rate_limit_deny_cache_entries", &[]),
            1,
            "the refused client, remembered"
        );
        assert!(seen.total("redis_layers_connections_opened_total", &[]) >= 1);

        // Caching: a miss, then hits.
        let app = Router::new()
            .route(
                "/p",
                get(|| async { ([("cache-control", "public, max-age=60")], "p") }),
            )
            .layer(
                CacheLayer::builder(backend.clone())
                    .local_tier(100)
                    .build()
                    .unwrap(),
            );
        // The entry is stored just after the first answer: asked until a hit.
        let mut sent = 0;
        loop {
            let res = app
                .clone()
                .oneshot(Request::get("/p").body(Body::empty()).unwrap())
                .await
                .unwrap();
            sent += 1;
            let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
            // Stored once its body has been read through.
            http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap();
            if status.contains("; hit") {
                break;
            }
            assert!(sent < 200, "never a hit: {status}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(requests("cache", "hit"), 1);
        assert_eq!(requests("cache", "miss"), sent - 1);
        assert!(sent >= 2);
        assert_eq!(seen.total("redis_layers_cache_local_entries", &[]), 1);

        // Idempotency: first, replayed, mismatch.
        let app = Router::new().route(
            "/orders",
            post(|| async { "created" }).layer(IdempotencyLayer::new(
                backend.clone(),
                Scope::header("x-api-key"),
            )),
        );
        let order = |body: &'static str| {
            Request::post("/orders")
                .header("x-api-key", "k")
                .header("idempotency-key", "o-1")
                .body(Body::from(body))
                .unwrap()
        };
        status(&app, order("{}")).await;
        status(&app, order("{}")).await;
        assert_eq!(
            status(&app, order("{\"other\":1}")).await,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            (
                requests("idempotency", "first"),
                requests("idempotency", "replayed"),
                requests("idempotency", "mismatch")
            ),
            (1, 1, 1)
        );

        // A response too large to keep: done once, then `not_retained`.
        let big_app = Router::new().route(
            "/big",
            post(|| async { "x".repeat(64) }).layer(
                IdempotencyLayer::builder(backend.clone(), Scope::header("x-api-key"))
                    .max_response(16)
                    .build()
                    .unwrap(),
            ),
        );
        let big = || {
            Request::post("/big")
                .header("x-api-key", "k")
                .header("idempotency-key", "big-1")
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(status(&big_app, big()).await, StatusCode::OK);
        assert_eq!(status(&big_app, big()).await, StatusCode::CONFLICT);
        assert_eq!(requests("idempotency", "not_retained"), 1);
        assert_eq!(requests("idempotency", "in_flight"), 0);

        // Sessions: what each request did with its session.
        use redis_layers::session::{Session, SessionLayer};
        let sessions =
            Router::new()
                .route(
                    "/login",
                    post(|session: Session| async move {
                        session.set_user("ada").unwrap();
                        "in"
                    }),
                )
                .route(
                    "/me",
                    get(|session: Session| async move {
                        session.user().await.unwrap().unwrap_or_default()
                    }),
                )
                .route("/plain", get(|| async { "plain" }))
                .layer(
                    SessionLayer::builder(backend.clone())
                        .secure(false)
                        .build()
                        .unwrap(),
                );
        let res = sessions
            .clone()
            .oneshot(Request::post("/login").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let cookie = res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let me = Request::get("/me")
            .header("cookie", cookie)
            .body(Body::empty())
            .unwrap();
        status(&sessions, me).await;
        status(
            &sessions,
            Request::get("/plain").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(
            (
                requests("session", "created"),
                requests("session", "read"),
                requests("session", "unused")
            ),
            (1, 1, 1)
        );

        // CSRF: by the headers, and without them by the token.
        let csrf_app = Router::new()
            .route("/f", post(|| async { "ok" }))
            .layer(redis_layers::csrf::CsrfLayer::new())
            .layer(redis_layers::session::SessionLayer::new(backend.clone()));
        let form = |header: Option<(&str, &str)>| {
            let mut req = Request::post("/f");
            if let Some((name, value)) = header {
                req = req.header(name, value);
            }
            req.body(Body::empty()).unwrap()
        };
        let cross = form(Some(("sec-fetch-site", "cross-site")));
        assert_eq!(status(&csrf_app, cross).await, StatusCode::FORBIDDEN);
        let same = form(Some(("sec-fetch-site", "same-origin")));
        assert_eq!(status(&csrf_app, same).await, StatusCode::OK);
        assert_eq!(status(&csrf_app, form(None)).await, StatusCode::FORBIDDEN);
        assert_eq!(
            (
                requests("csrf", "cross_origin"),
                requests("csrf", "same_origin"),
                requests("csrf", "bad_token")
            ),
            (1, 1, 1)
        );

        // Redis down: store errors by kind, and the layer's outcome.
        let locks = Locks::new(backend.clone());
        drop(
            locks
                .try_acquire("job", Duration::from_secs(1))
                .await
                .unwrap(),
        );
        server.kill();
        let before = seen.total(
            "redis_layers_store_errors_total",
            &[("backend", "redis"), ("kind", "connection")],
        ) + seen.total(
            "redis_layers_store_errors_total",
            &[("backend", "redis"), ("kind", "timeout")],
        );
        for _ in 0..3 {
            status(&app, order("{}")).await;
        }
        let after = seen.total(
            "redis_layers_store_errors_total",
            &[("backend", "redis"), ("kind", "connection")],
        ) + seen.total(
            "redis_layers_store_errors_total",
            &[("backend", "redis"), ("kind", "timeout")],
        );
        assert!(after >= before + 3, "{before} -> {after}");
        // The replay path fails at the claim: 503, counted.
        assert_eq!(requests("idempotency", "store_error"), 3);
        // Back: a new connection is counted.
        let opened = seen.total("redis_layers_connections_opened_total", &[]);
        server.restart();
        let started = std::time::Instant::now();
        while backend.ping().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen.total("redis_layers_connections_opened_total", &[]) > opened);
    });
}
