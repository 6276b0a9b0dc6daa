//! Where a layer sits in an axum app must not change what it matches or
//! keys by: a rate-limit route rule works around a whole router (no
//! `MatchedPath` there) as inside it; inside `Router::nest`, prefix rules
//! and cache keys see the path the client sent, nest prefix included.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use redis_layers::cache::CacheLayer;
use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, Rule};
use support::TestBackend;
use tower::{Layer, ServiceExt};

async fn get_status<S, B>(svc: &S, path: &str) -> (StatusCode, String)
where
    S: tower::Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = Request::get(path)
        .header("x-api-key", "k")
        .body(Body::empty())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn limits(fx: &TestBackend, rule: Rule) -> RateLimitLayer {
    RateLimitLayer::builder(fx.backend.clone())
        .rule(
            rule.key(Key::header("x-api-key"))
                .policy(Policy::per_minute(2)),
        )
        .build()
        .unwrap()
}

support::both_backends! { TestBackend::new;
    a_route_rule_matches_around_a_whole_router_too => |fx| {
        let router = Router::new()
            .route("/users/{id}", get(|Path(id): Path<u32>| async move { id.to_string() }))
            .route("/about", get(|| async { "about" }));
        // Outside the router: no MatchedPath; the template is matched
        // against the path.
        let app = limits(&fx, Rule::route("/users/{id}")).layer(router);
        let statuses = [
            get_status(&app, "/users/1").await.0,
            get_status(&app, "/users/2").await.0,
            get_status(&app, "/users/3").await.0,
        ];
        assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
        assert_eq!(get_status(&app, "/about").await.0, StatusCode::OK, "another route");
    }

    a_prefix_rule_inside_nest_sees_the_nest_prefix => |fx| {
        let api = Router::new()
            .route("/orders", get(|| async { "[]" }))
            .layer(limits(&fx, Rule::prefix("/api/")));
        let app = Router::new().nest("/api", api);
        let statuses = [
            get_status(&app, "/api/orders").await.0,
            get_status(&app, "/api/orders").await.0,
            get_status(&app, "/api/orders").await.0,
        ];
        assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    }

    a_lock_keyed_by_path_inside_nest_names_the_full_path => |fx| {
        use redis_layers::lock::{LockKey, LockLayer};
        let job = || {
            Router::new()
                .route(
                    "/job",
                    get(|| async {
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        "done"
                    }),
                )
                .layer(LockLayer::builder(fx.backend.clone(), LockKey::path()).build().unwrap())
        };
        let app = Router::new().nest("/a", job()).nest("/b", job());
        let (a, b) = tokio::join!(get_status(&app, "/a/job"), get_status(&app, "/b/job"));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "two resources, not one");
        // The same full path is one resource.
        let (a, again) = tokio::join!(get_status(&app, "/a/job"), async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            get_status(&app, "/a/job").await
        });
        assert_eq!((a.0, again.0), (StatusCode::OK, StatusCode::CONFLICT));
    }

    two_nested_routers_keep_their_own_cache_entries => |fx| {
        let runs = Arc::new(AtomicU64::new(0));
        let shop = |name: &'static str| {
            let runs = runs.clone();
            Router::new()
                .route(
                    "/item",
                    get(move || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        async move { ([("cache-control", "public, max-age=60")], name) }
                    }),
                )
                .layer(CacheLayer::new(fx.backend.clone()))
        };
        let app = Router::new().nest("/tea", shop("tea")).nest("/coffee", shop("coffee"));
        assert_eq!(get_status(&app, "/tea/item").await.1, "tea");
        assert_eq!(get_status(&app, "/coffee/item").await.1, "coffee", "not the tea shop's entry");
        assert_eq!(get_status(&app, "/tea/item").await.1, "tea");
        assert_eq!(get_status(&app, "/coffee/item").await.1, "coffee");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "each stored once, then served from the cache");
    }
}
