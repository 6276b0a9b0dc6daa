//! One refusal hook for every layer: each layer's refusals reach the
//! application's `on_refusal` with the request's head and the refusal's
//! kind, status and retry time; the layer adds `Retry-After` (and the rate
//! limit's fields) when the hook's answer lacks them; without a hook the
//! answers stay problem+json.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{header, request, Request, Response, StatusCode};
use redis_layers::idempotency::{IdempotencyLayer, Scope};
use redis_layers::lock::{LockKey, LockLayer};
use redis_layers::rate_limit::{Policy, RateLimitLayer};
use redis_layers::session::{Session, SessionError, SessionLayer};
use redis_layers::{FailurePolicy, Refusal, RefusalKind};
use support::reply::{send, Reply};
use support::TestBackend;

/// What the hook saw: the layer, the kind, the request's method and path,
/// and the default status.
type Seen = Arc<Mutex<Vec<(&'static str, RefusalKind, String, StatusCode)>>>;

/// A hook that records each refusal and answers with an HTML page (a
/// teapot's status for the lock, to show the status is the hook's).
fn hook(
    seen: &Seen,
) -> impl Fn(&request::Parts, &Refusal<'_>) -> Response<Bytes> + Send + Sync + Clone + 'static {
    let seen = seen.clone();
    move |req, refusal| {
        seen.lock().unwrap().push((
            refusal.layer(),
            refusal.kind(),
            format!("{} {}", req.method, req.uri.path()),
            refusal.status(),
        ));
        let mut res = Response::new(Bytes::from(format!(
            "<h1>{}</h1><p>{}</p>",
            refusal.title(),
            refusal.detail()
        )));
        *res.status_mut() = if refusal.layer() == "lock" {
            StatusCode::IM_A_TEAPOT
        } else {
            refusal.status()
        };
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            "text/html; charset=utf-8".parse().unwrap(),
        );
        res
    }
}

fn is_page(r: &Reply) -> bool {
    r.headers[header::CONTENT_TYPE] == "text/html; charset=utf-8" && r.body.starts_with("<h1>")
}

fn cookie_of(r: &Reply) -> String {
    let set = r.headers[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// The session's routes: `/set` writes, `/login` renews the id.
fn session_app(fx: &TestBackend, seen: Option<&Seen>) -> Router {
    let layer = SessionLayer::builder(fx.backend.clone()).secure(false);
    let layer = match seen {
        Some(seen) => layer.on_refusal(hook(seen)),
        None => layer,
    };
    Router::new()
        .route(
            "/set",
            post(|s: Session| async move {
                s.insert("a", 1)?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/login",
            post(|s: Session| async move {
                s.cycle_id().await?;
                s.set_user("ivy")?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/get",
            get(|s: Session| async move {
                Ok::<_, SessionError>(s.get::<i64>("a").await?.unwrap_or(0).to_string())
            }),
        )
        .layer(layer.build().unwrap())
}

fn with_cookie(method: &str, path: &str, cookie: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

/// A session cookie whose id a login has just renewed: a write with it
/// loses to the renewal.
async fn superseded_cookie(app: &Router) -> String {
    let set = send(app, Request::post("/set").body(Body::empty()).unwrap()).await;
    let old = cookie_of(&set);
    let login = send(app, with_cookie("POST", "/login", &old)).await;
    assert_eq!(login.status, StatusCode::OK);
    old
}

/// A handler's progress, for a test to act while it runs: it says it has
/// started, then waits to be let go (no timing guesses).
#[derive(Clone, Default)]
struct Gate {
    started: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl Gate {
    /// The handler's part.
    async fn pass(&self) {
        self.started.notify_one();
        self.release.notified().await;
    }

    /// A handler answering `answer` once the gate lets it pass.
    fn handler(
        &self,
        answer: &'static str,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = &'static str> + Send>>
           + Clone
           + Send
           + Sync
           + 'static {
        let gate = self.clone();
        move || {
            let gate = gate.clone();
            Box::pin(async move {
                gate.pass().await;
                answer
            })
        }
    }
}

fn idempotency_app(fx: &TestBackend, seen: &Seen, gate: &Gate) -> Router {
    let layer = IdempotencyLayer::builder(fx.backend.clone(), Scope::header("x-account"))
        .max_body(16)
        .on_refusal(hook(seen))
        .build()
        .unwrap();
    Router::new()
        .route("/orders", post(gate.handler("created")))
        .layer(layer)
}

fn order(key: Option<&str>, body: &'static str) -> Request<Body> {
    let mut req = Request::post("/orders").header("x-account", "acme");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(Body::from(body)).unwrap()
}

fn lock_app(fx: &TestBackend, seen: &Seen, gate: &Gate) -> Router {
    let layer = LockLayer::builder(fx.backend.clone(), LockKey::header("x-tenant"))
        .lease(Duration::from_secs(5))
        .on_refusal(hook(seen))
        .build()
        .unwrap();
    Router::new()
        .route("/migrate", post(gate.handler("migrated")))
        .layer(layer)
}

fn migrate(tenant: Option<&str>) -> Request<Body> {
    let mut req = Request::post("/migrate");
    if let Some(tenant) = tenant {
        req = req.header("x-tenant", tenant);
    }
    req.body(Body::empty()).unwrap()
}

fn kinds(seen: &Seen) -> Vec<(&'static str, RefusalKind, String, StatusCode)> {
    std::mem::take(&mut *seen.lock().unwrap())
}

support::both_backends! { TestBackend::new;
    a_rate_limit_refusal_reaches_the_hook_with_its_policies_and_keeps_its_fields => |fx| {
        let seen: Seen = Arc::default();
        let names = Arc::new(Mutex::new(Vec::new()));
        let inner = hook(&seen);
        let policies = names.clone();
        let layer = RateLimitLayer::builder(fx.backend.clone())
            .policy(Policy::per_minute(1).named("pages"))
            .on_refusal(move |req, refusal| {
                policies.lock().unwrap().push(refusal.policies().to_vec());
                inner(req, refusal)
            })
            .build()
            .unwrap();
        let app = Router::new().route("/page", get(|| async { "page" })).layer(layer.clone());
        let req = || {
            let mut req = Request::get("/page").body(Body::empty()).unwrap();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 1], 1))));
            req
        };
        assert_eq!(send(&app, req()).await.status, StatusCode::OK);
        // Refused by the store, then by the deny cache: the hook both times.
        for _ in 0..2 {
            let r = send(&app, req()).await;
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
            assert!(is_page(&r), "{}", r.body);
            assert!(r.headers.contains_key(header::RETRY_AFTER));
            let fields = r.headers["ratelimit"].to_str().unwrap();
            assert!(fields.starts_with("\"pages\";r=0;t="), "{fields}");
        }
        assert_eq!(layer.stats().denied_locally, 1, "the second from the deny cache");
        let seen = kinds(&seen);
        assert_eq!(seen.len(), 2, "{seen:?}");
        for (layer, kind, request, status) in seen {
            assert_eq!((layer, kind), ("rate_limit", RefusalKind::RateLimited));
            assert_eq!(request, "GET /page");
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
        assert_eq!(*names.lock().unwrap(), vec![vec!["pages".to_owned()]; 2]);
    }

    a_session_conflict_reaches_the_hook_and_sets_no_cookie => |fx| {
        let seen: Seen = Arc::default();
        let app = session_app(&fx, Some(&seen));
        let old = superseded_cookie(&app).await;
        let r = send(&app, with_cookie("POST", "/set", &old)).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(is_page(&r), "{}", r.body);
        assert!(!r.headers.contains_key(header::SET_COOKIE));
        assert_eq!(
            kinds(&seen),
            [("session", RefusalKind::SessionConflict, "POST /set".to_owned(), StatusCode::CONFLICT)]
        );
        // Without a hook: the problem+json, as before.
        let app = session_app(&fx, None);
        let old = superseded_cookie(&app).await;
        let r = send(&app, with_cookie("POST", "/set", &old)).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/problem+json");
    }

    each_idempotency_refusal_reaches_the_hook_with_its_kind => |fx| {
        let seen: Seen = Arc::default();
        let gate = Gate::default();
        let app = idempotency_app(&fx, &seen, &gate);
        let cases = [
            (order(None, "{}"), StatusCode::BAD_REQUEST, RefusalKind::KeyMissing),
            (order(Some("not a \"key\""), "{}"), StatusCode::BAD_REQUEST, RefusalKind::KeyInvalid),
            (order(Some("\"k-big\""), "0123456789abcdefXYZ"), StatusCode::PAYLOAD_TOO_LARGE, RefusalKind::BodyTooLarge),
        ];
        for (req, status, kind) in cases {
            let r = send(&app, req).await;
            assert_eq!(r.status, status, "{kind:?}: {}", r.body);
            assert!(is_page(&r), "{kind:?}: {}", r.body);
            let seen = kinds(&seen);
            assert_eq!(seen.len(), 1);
            assert_eq!((seen[0].0, seen[0].1, seen[0].2.as_str()), ("idempotency", kind, "POST /orders"));
        }
        // A key in flight: 409 from the hook, with the layer's Retry-After.
        let first = tokio::spawn({
            let app = app.clone();
            async move { send(&app, order(Some("\"k1\""), "{}")).await }
        });
        gate.started.notified().await;
        let r = send(&app, order(Some("\"k1\""), "{}")).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert!(is_page(&r));
        assert_eq!(r.headers[header::RETRY_AFTER], "1");
        gate.release.notify_one();
        assert_eq!(first.await.unwrap().status, StatusCode::OK);
        // The key reused for another body: 422.
        let r = send(&app, order(Some("\"k1\""), "{\"n\":2}")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(is_page(&r));
        let refused: Vec<RefusalKind> = kinds(&seen).into_iter().map(|s| s.1).collect();
        assert_eq!(refused, [RefusalKind::InFlight, RefusalKind::KeyReused]);
        // A replay is no refusal: the stored answer, untouched.
        let r = send(&app, order(Some("\"k1\""), "{}")).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "created"));
        assert!(kinds(&seen).is_empty());
    }

    a_lock_refusal_reaches_the_hook_whose_status_stands => |fx| {
        let seen: Seen = Arc::default();
        let gate = Gate::default();
        let app = lock_app(&fx, &seen, &gate);
        let r = send(&app, migrate(None)).await;
        assert_eq!(r.status, StatusCode::IM_A_TEAPOT);
        assert!(is_page(&r));
        let held = tokio::spawn({
            let app = app.clone();
            async move { send(&app, migrate(Some("t1"))).await }
        });
        gate.started.notified().await;
        let r = send(&app, migrate(Some("t1"))).await;
        assert_eq!(r.status, StatusCode::IM_A_TEAPOT);
        assert!(r.headers.contains_key(header::RETRY_AFTER), "added by the layer");
        gate.release.notify_one();
        assert_eq!(held.await.unwrap().status, StatusCode::OK);
        let seen: Vec<(RefusalKind, StatusCode)> =
            kinds(&seen).into_iter().map(|s| (s.1, s.3)).collect();
        assert_eq!(
            seen,
            [(RefusalKind::NoScope, StatusCode::BAD_REQUEST), (RefusalKind::Locked, StatusCode::CONFLICT)]
        );
    }
}

/// Store failures under fail-closed reach the hook in every layer that
/// fails closed, including a session failure a handler returns as a
/// `SessionError`.
#[tokio::test]
async fn store_failures_reach_the_hook_in_every_layer() {
    let mut fx = TestBackend::with_deadline(support::Kind::Redis, Duration::from_millis(200));
    let seen: Seen = Arc::default();
    let sessions = session_app(&fx, Some(&seen));
    let set = send(
        &sessions,
        Request::post("/set").body(Body::empty()).unwrap(),
    )
    .await;
    let cookie = cookie_of(&set);
    let limits = Router::new()
        .route("/page", get(|| async { "page" }))
        .layer(
            RateLimitLayer::builder(fx.backend.clone())
                .policy(Policy::per_minute(10))
                .on_store_error(FailurePolicy::Closed)
                .on_refusal(hook(&seen))
                .build()
                .unwrap(),
        );
    let gate = Gate::default();
    let orders = idempotency_app(&fx, &seen, &gate);
    let locks = lock_app(&fx, &seen, &gate);
    fx.server.as_mut().unwrap().kill();

    let r = send(&sessions, with_cookie("GET", "/get", &cookie)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        is_page(&r),
        "the handler's SessionError, restyled: {}",
        r.body
    );
    // A write without a read: the layer's own save fails, after the
    // handler answered.
    let r = send(&sessions, with_cookie("POST", "/set", &cookie)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(is_page(&r), "the failed save, restyled: {}", r.body);
    let mut req = Request::get("/page").body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 1],
            1,
        ))));
    let r = send(&limits, req).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(is_page(&r));
    let r = send(&orders, order(Some("\"k\""), "{}")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(is_page(&r));
    let r = send(&locks, migrate(Some("t"))).await;
    assert_eq!(r.status, StatusCode::IM_A_TEAPOT);

    let seen: Vec<(&str, RefusalKind, StatusCode)> =
        kinds(&seen).into_iter().map(|s| (s.0, s.1, s.3)).collect();
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    assert_eq!(
        seen,
        [
            ("session", RefusalKind::StoreFailure, unavailable),
            ("session", RefusalKind::StoreFailure, unavailable),
            ("rate_limit", RefusalKind::StoreFailure, unavailable),
            ("idempotency", RefusalKind::StoreFailure, unavailable),
            ("lock", RefusalKind::StoreFailure, unavailable),
        ]
    );
}

/// `on_store_error` on the builders that gained it: a cache told to fail
/// closed refuses (through its hook) instead of asking the handler;
/// idempotency and locks told to fail open run the handler without their
/// claim or lock (every time: nothing protects a retry), while the
/// defaults still refuse.
#[tokio::test]
async fn the_cache_fails_closed_and_idempotency_and_locks_fail_open_when_told() {
    use redis_layers::cache::CacheLayer;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut fx = TestBackend::with_deadline(support::Kind::Redis, Duration::from_millis(200));
    let seen: Seen = Arc::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = |runs: &Arc<AtomicUsize>| {
        let runs = runs.clone();
        move || {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                "ran"
            }
        }
    };
    let page = || Router::new().route("/page", get(|| async { "page" }));
    let closed_cache = page().layer(
        CacheLayer::builder(fx.backend.clone())
            .on_store_error(FailurePolicy::Closed)
            .on_refusal(hook(&seen))
            .build()
            .unwrap(),
    );
    let open_cache = page().layer(CacheLayer::builder(fx.backend.clone()).build().unwrap());
    // Failing closed, a request that would not read the store (no-cache,
    // honoured) still goes to the handler.
    let honouring_cache = page().layer(
        CacheLayer::builder(fx.backend.clone())
            .on_store_error(FailurePolicy::Closed)
            .request_directives(redis_layers::cache::RequestDirectives::Honour)
            .build()
            .unwrap(),
    );
    // A cache that knows its generation (asked before the outage) fails
    // at the lookup itself.
    let warm_cache = page().layer(
        CacheLayer::builder(fx.backend.clone())
            .on_store_error(FailurePolicy::Closed)
            .generation_refresh(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let warm = Request::get("http://shop.test/page")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&warm_cache, warm).await.status, StatusCode::OK);
    let orders = |policy| {
        Router::new().route("/orders", post(counted(&runs))).layer(
            IdempotencyLayer::builder(fx.backend.clone(), Scope::header("x-account"))
                .on_store_error(policy)
                .build()
                .unwrap(),
        )
    };
    let migrations = |policy| {
        Router::new().route("/migrate", post(counted(&runs))).layer(
            LockLayer::builder(fx.backend.clone(), LockKey::header("x-tenant"))
                .on_store_error(policy)
                .build()
                .unwrap(),
        )
    };
    let (open_orders, closed_orders) = (orders(FailurePolicy::Open), orders(FailurePolicy::Closed));
    let (open_locks, closed_locks) = (
        migrations(FailurePolicy::Open),
        migrations(FailurePolicy::Closed),
    );
    fx.server.as_mut().unwrap().kill();
    let get_page = || {
        Request::get("http://shop.test/page")
            .body(Body::empty())
            .unwrap()
    };

    let r = send(&closed_cache, get_page()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(is_page(&r), "{}", r.body);
    let status = r.headers["cache-status"].to_str().unwrap();
    assert!(status.ends_with("fwd=miss; detail=store-error"), "{status}");
    let r = send(&open_cache, get_page()).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "page"));
    let no_cache = Request::get("http://shop.test/page")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::empty())
        .unwrap();
    let r = send(&honouring_cache, no_cache).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "page"));
    assert_eq!(
        send(&honouring_cache, get_page()).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = send(&warm_cache, get_page()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/problem+json");

    for _ in 0..2 {
        let r = send(&open_orders, order(Some("\"k\""), "{}")).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ran"));
        let r = send(&open_locks, migrate(Some("t"))).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ran"));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4, "each retry ran again");
    let r = send(&closed_orders, order(Some("\"k\""), "{}")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = send(&closed_locks, migrate(Some("t"))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        4,
        "failing closed, nothing ran"
    );
    let seen: Vec<(&str, RefusalKind)> = kinds(&seen).into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(seen, [("cache", RefusalKind::StoreFailure)]);
}
