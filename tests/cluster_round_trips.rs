//! Round trips per request on each layer's hot path, on a Redis Cluster:
//! the commands every node ran (`INFO commandstats`, summed over the
//! nodes; a script's own commands count too) for a run of requests, so that a regression (a second command,
//! a script where a plain command did) fails here, not only in a
//! benchmark.

#![cfg(feature = "cluster")]

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use support::{Kind, TestBackend};

/// The requests each check counts.
const RUNS: u64 = 20;

/// The tests share the process's cluster: one counts at a time.
static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Calls per command, summed over every node of the cluster.
fn calls(tb: &TestBackend) -> HashMap<String, u64> {
    let cluster = tb.cluster.as_ref().expect("a cluster test");
    let mut out = HashMap::new();
    for node in &cluster.nodes {
        for (name, n) in node.command_calls() {
            *out.entry(name).or_insert(0) += n;
        }
    }
    out
}

/// What the nodes ran while `run` ran (commands that ran no call left
/// out), less the `INFO` calls that read the counts.
async fn counted<F: std::future::Future<Output = ()>>(
    tb: &TestBackend,
    run: F,
) -> BTreeMap<String, u64> {
    let before = calls(tb);
    run.await;
    let after = calls(tb);
    let nodes = tb.cluster.as_ref().unwrap().nodes.len() as u64;
    let mut out = BTreeMap::new();
    for (name, n) in after {
        let mut ran = n - before.get(&name).copied().unwrap_or(0);
        if name == "info" {
            // The snapshot before this one, on every node.
            ran = ran.saturating_sub(nodes);
        }
        if ran > 0 {
            out.insert(name, ran);
        }
    }
    out
}

fn expect(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn a_backend_get_is_one_get() {
    let _one = COUNTING.lock().await;
    let tb = TestBackend::new(Kind::Cluster);
    tb.backend.get("warm").await.unwrap();
    let ran = counted(&tb, async {
        for i in 0..RUNS {
            tb.backend.get(&format!("k{i}")).await.unwrap();
        }
    })
    .await;
    assert_eq!(ran, expect(&[("get", RUNS)]));
}

#[tokio::test]
async fn a_session_read_is_one_get() {
    use redis_layers::session::{Session, SessionLayer};
    let _one = COUNTING.lock().await;
    let tb = TestBackend::new(Kind::Cluster);
    async fn read(session: Session) -> String {
        let n: u64 = session.get("n").await.unwrap().unwrap_or(0);
        n.to_string()
    }
    async fn seed(session: Session) -> &'static str {
        session.insert("n", 7u64).unwrap();
        "ok"
    }
    let app = Router::new()
        .route("/read", get(read))
        .route("/seed", get(seed))
        .layer(SessionLayer::new(tb.backend.clone()));
    let (_, headers, _) = send(&app, Request::get("/seed").body(Body::empty()).unwrap()).await;
    let set = headers["set-cookie"].to_str().unwrap();
    let cookie = HeaderValue::from_str(set.split(';').next().unwrap()).unwrap();
    let read_once = || {
        let mut req = Request::get("/read").body(Body::empty()).unwrap();
        req.headers_mut().insert("cookie", cookie.clone());
        send(&app, req)
    };
    assert_eq!(read_once().await.2, "7");
    let ran = counted(&tb, async {
        for _ in 0..RUNS {
            assert_eq!(read_once().await.2, "7");
        }
    })
    .await;
    assert_eq!(ran, expect(&[("get", RUNS)]));
}

#[tokio::test]
async fn a_rate_limit_decision_is_one_script() {
    use redis_layers::rate_limit::{Policy, RateLimitLayer, Rule};
    let _one = COUNTING.lock().await;
    let tb = TestBackend::new(Kind::Cluster);
    let rule = Rule::any().policy(Policy::per_minute(1_000));
    let app = Router::new().route("/", get(|| async { "hello" })).layer(
        RateLimitLayer::builder(tb.backend.clone())
            .rule(rule)
            .build()
            .unwrap(),
    );
    let request = || {
        let mut req = Request::get("/").body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [192, 0, 2, 7],
                1000,
            ))));
        req
    };
    // The script loaded on first use.
    assert_eq!(send(&app, request()).await.0, StatusCode::OK);
    let ran = counted(&tb, async {
        for _ in 0..RUNS {
            assert_eq!(send(&app, request()).await.0, StatusCode::OK);
        }
    })
    .await;
    // One script per request; what it runs inside counts too (its clock,
    // the key's state read and written).
    assert_eq!(
        ran,
        expect(&[
            ("evalsha", RUNS),
            ("time", RUNS),
            ("get", RUNS),
            ("set", RUNS)
        ])
    );
}

#[tokio::test]
async fn a_cache_hit_is_one_get_and_a_variant_hit_too() {
    use redis_layers::cache::CacheLayer;
    let _one = COUNTING.lock().await;
    let tb = TestBackend::new(Kind::Cluster);
    let layer = CacheLayer::builder(tb.backend.clone())
        .generation_refresh(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/plain",
            get(|| async { ([("cache-control", "public, max-age=600")], "plain") }),
        )
        .route(
            "/varied",
            get(|| async {
                (
                    [
                        ("cache-control", "public, max-age=600"),
                        ("vary", "accept-encoding"),
                    ],
                    "varied",
                )
            }),
        )
        .layer(layer);
    let request = |path: &str| {
        Request::get(path)
            .header("accept-encoding", "gzip")
            .body(Body::empty())
            .unwrap()
    };
    for path in ["/plain", "/varied"] {
        // Stored in the background after the first answer.
        let started = std::time::Instant::now();
        loop {
            let (_, headers, _) = send(&app, request(path)).await;
            if headers["cache-status"].to_str().unwrap().contains("hit") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{path} not stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for path in ["/plain", "/varied"] {
        let ran = counted(&tb, async {
            for _ in 0..RUNS {
                let (_, headers, _) = send(&app, request(path)).await;
                assert!(headers["cache-status"].to_str().unwrap().contains("hit"));
            }
        })
        .await;
        let read = if path == "/plain" { "get" } else { "mget" };
        assert_eq!(ran, expect(&[(read, RUNS)]), "{path}");
    }
}

#[tokio::test]
async fn an_idempotent_replay_is_one_command() {
    use redis_layers::idempotency::{IdempotencyLayer, Scope};
    let _one = COUNTING.lock().await;
    let tb = TestBackend::new(Kind::Cluster);
    let app = Router::new()
        .route(
            "/orders",
            post(|| async { (StatusCode::CREATED, "order 1") }),
        )
        .layer(IdempotencyLayer::new(
            tb.backend.clone(),
            Scope::header("x-api-key"),
        ));
    let request = || {
        Request::post("/orders")
            .header("x-api-key", "k")
            .header("idempotency-key", "replayed")
            .body(Body::from("{}"))
            .unwrap()
    };
    assert_eq!(send(&app, request()).await.0, StatusCode::CREATED);
    // The record is written as the first answer ends; a replay after it.
    let started = std::time::Instant::now();
    while !send(&app, request())
        .await
        .1
        .contains_key("idempotent-replayed")
    {
        assert!(started.elapsed() < Duration::from_secs(5), "never replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ran = counted(&tb, async {
        for _ in 0..RUNS {
            let (status, headers, body) = send(&app, request()).await;
            assert_eq!((status, body.as_str()), (StatusCode::CREATED, "order 1"));
            assert!(headers.contains_key("idempotent-replayed"));
        }
    })
    .await;
    assert_eq!(ran, expect(&[("set", RUNS)]));
}
