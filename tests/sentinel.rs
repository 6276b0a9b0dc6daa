//! Behind Redis Sentinel: the backend finds the primary through the
//! sentinels, every layer works unchanged, and a failover is followed.
//! Needs the `sentinel` feature; each test starts a primary, a replica and
//! three sentinels of its own.
#![cfg(feature = "sentinel")]

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use redis_layers::cache::CacheLayer;
use redis_layers::idempotency::{IdempotencyLayer, Scope};
use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, Rule};
use redis_layers::redis::RedisBackend;
use redis_layers::session::{Session, SessionError, SessionLayer};
use redis_layers::Backend;
use support::SentinelSetup;
use tower::ServiceExt;

fn backend(setup: &SentinelSetup) -> Backend {
    RedisBackend::builder()
        .sentinel(setup.sentinel_urls(), "mymaster")
        .prefix("sentinel")
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap()
        .into()
}

/// The four layers on one backend.
fn app(backend: &Backend) -> Router {
    async fn login(session: Session, Path(v): Path<u64>) -> Result<&'static str, SessionError> {
        session.insert("v", v)?;
        Ok("in")
    }
    async fn read(session: Session) -> Result<String, SessionError> {
        Ok(session
            .get::<u64>("v")
            .await?
            .map_or_else(|| "none".to_owned(), |v| v.to_string()))
    }
    let orders =
        post(|body: String| async move { (StatusCode::CREATED, format!("order for {body}")) })
            .layer(IdempotencyLayer::new(
                backend.clone(),
                Scope::header("x-api-key"),
            ));
    Router::new()
        .route("/login/{v}", get(login))
        .route("/read", get(read))
        .route("/limited", get(|| async { "ok" }))
        .route(
            "/cached",
            get(|| async {
                (
                    [(header::CACHE_CONTROL, "public, max-age=60")],
                    "cached page",
                )
            }),
        )
        .route("/orders", orders)
        .layer(
            RateLimitLayer::builder(backend.clone())
                .rule(
                    Rule::prefix("/limited")
                        .key(Key::global())
                        .policy(Policy::per_hour(3)),
                )
                .build()
                .unwrap(),
        )
        .layer(
            SessionLayer::builder(backend.clone())
                .secure(false)
                .build()
                .unwrap(),
        )
        .layer(
            CacheLayer::builder(backend.clone())
                .local_tier(10)
                .build()
                .unwrap(),
        )
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Vec<(String, String)>, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "shop.test");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

async fn login(app: &Router, v: u64) -> String {
    let (status, headers, _) = send(app, "GET", &format!("/login/{v}"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    header(&headers, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_works_behind_sentinel() {
    let setup = SentinelSetup::start();
    let backend = backend(&setup);
    let app = app(&backend);
    // Sessions.
    let cookie = login(&app, 41).await;
    let (status, _, body) = send(&app, "GET", "/read", &[("cookie", &cookie)], "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "41"));
    // Rate limits.
    for _ in 0..3 {
        assert_eq!(
            send(&app, "GET", "/limited", &[], "").await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&app, "GET", "/limited", &[], "").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Caching: stored, then a hit.
    let (_, first, _) = send(&app, "GET", "/cached", &[], "").await;
    assert!(header(&first, "cache-status")
        .unwrap()
        .contains("fwd=uri-miss"));
    let started = Instant::now();
    loop {
        let (_, again, _) = send(&app, "GET", "/cached", &[], "").await;
        if header(&again, "cache-status").unwrap().contains("hit") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "never a hit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Idempotency: a replay.
    let h = [("x-api-key", "k"), ("idempotency-key", "\"o-1\"")];
    let (status, _, body) = send(&app, "POST", "/orders", &h, "tea").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::CREATED, "order for tea")
    );
    let (status, headers, again) = send(&app, "POST", "/orders", &h, "tea").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again, body);
    assert_eq!(header(&headers, "idempotent-replayed"), Some("true"));
    // It all went to the primary, none of it to the sentinels' own keyspace.
    let keys: Vec<String> = setup.primary.cmd(&["KEYS", "sentinel:*"]);
    assert!(keys.len() >= 4, "{keys:?}");
    // No fixed node to pool connections to.
    let Backend::Redis(redis) = &backend else {
        unreachable!()
    };
    assert!(redis.pool().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_within_a_bounded_time() {
    let mut setup = SentinelSetup::start();
    let backend = backend(&setup);
    let app = app(&backend);
    let mut cookies = Vec::new();
    for v in 0..10u64 {
        cookies.push(login(&app, v).await);
    }
    // Replication is asynchronous: wait until the replica holds it all
    // (a write acknowledged just before the loss may be lost with it).
    support::wait_in_sync(&setup.primary, &setup.replica).await;

    setup.primary.kill();
    let app2 = app.clone();
    let (recovered, failures) = support::until_every_session_reads_back(cookies.len(), |v| {
        let (app, cookie) = (app2.clone(), cookies[v].clone());
        async move {
            let (status, _, body) = send(&app, "GET", "/read", &[("cookie", &cookie)], "").await;
            (status.as_u16(), body)
        }
    })
    .await;
    // The sentinels promoted the replica (each learns it within a hello
    // round or two), and the backend writes there.
    let started = Instant::now();
    while setup
        .sentinels
        .iter()
        .any(|s| s.primary_port() != Some(setup.replica.port()))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sentinels never agreed on the new primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info: String = setup.replica.cmd(&["INFO", "replication"]);
    assert!(info.contains("role:master"), "{info}");
    let cookie = login(&app, 99).await;
    let (status, _, body) = send(&app, "GET", "/read", &[("cookie", &cookie)], "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "99"));
    assert!(failures > 0, "the loss was noticed at all");
    eprintln!("recovered {recovered:?} after the primary died; {failures} reads failed meanwhile");
}

/// Behind Sentinel with passwords everywhere: the data nodes require one
/// (the primary's, given with `sentinel_primary`), the sentinels another
/// (in their URLs). Every layer works; a wrong primary password fails
/// naming the cause, and neither password shows in an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_works_behind_sentinel_with_passwords() {
    use redis_layers::redis::SentinelPrimary;
    const DATA: &str = "data-Pa55word";
    const OWN: &str = "sentinel-Pa55word";
    let setup = SentinelSetup::start_with(Some((DATA, OWN)));
    let urls: Vec<String> = setup
        .sentinels
        .iter()
        .map(|s| s.url().replace("redis://", &format!("redis://:{OWN}@")))
        .collect();
    let build = |password: &str| {
        RedisBackend::builder()
            .sentinel(urls.clone(), "mymaster")
            .sentinel_primary(SentinelPrimary::new().password(password))
            .prefix(support::unique_prefix("sentinel-auth"))
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let backend = build(DATA);
    backend.ping().await.unwrap();
    support::smoke::smoke(backend.into()).await;

    let wrong = build("wrong-Pa55word");
    let err = wrong.ping().await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("user and password"), "{shown}");
    assert!(!shown.contains(DATA) && !shown.contains(OWN) && !shown.contains("wrong-Pa55word"));
    assert!(!format!("{:?}", SentinelPrimary::new().password(DATA)).contains(DATA));

    // The sentinels' own password missing: they refuse to name the primary.
    let no_sentinel_password = RedisBackend::builder()
        .sentinel(setup.sentinel_urls(), "mymaster")
        .sentinel_primary(SentinelPrimary::new().password(DATA))
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = no_sentinel_password.ping().await.unwrap_err();
    assert!(err.to_string().contains("user and password"), "{err}");
}
