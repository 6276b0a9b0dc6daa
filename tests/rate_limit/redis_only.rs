//! What only a real Redis can show: commands actually sent, key layout,
//! and failures of the server itself.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use redis_layers::rate_limit::{Policy, RateLimitLayer, Rule};
use redis_layers::FailurePolicy;

use crate::harness::{app, get_from, send, Fixture, Kind};
use crate::support::Monitor;

fn limited(fx: &Fixture, failure: FailurePolicy) -> RateLimitLayer {
    RateLimitLayer::builder(fx.backend())
        .rule(
            Rule::route("/api/items")
                .policy(Policy::per_minute(3).named("a"))
                .policy(Policy::per_hour(50).fixed_window().named("b"))
                .policy(Policy::per_day(500).sliding_window().named("c")),
        )
        .on_store_error(failure)
        .build()
        .unwrap()
}

#[tokio::test]
async fn one_script_call_per_limited_request_none_otherwise() {
    let fx = Fixture::new(Kind::Redis);
    let mut monitor = Monitor::start(fx.server());
    let app = app(limited(&fx, FailurePolicy::Open));
    let peer = "192.0.2.1:1";

    get_from(&app, "/free", peer).await;
    assert_eq!(monitor.take(), Vec::<String>::new(), "no rule: no command");

    // The first call after a start loads the script (NOSCRIPT, then EVAL).
    get_from(&app, "/api/items", peer).await;
    assert_eq!(monitor.take(), ["evalsha", "eval"]);
    // Three policies, one round trip.
    get_from(&app, "/api/items", peer).await;
    assert_eq!(monitor.take(), ["evalsha"]);
    get_from(&app, "/api/items", peer).await;
    assert_eq!(monitor.take(), ["evalsha"]);
    // The refusal is one round trip; its repeats none.
    let r = get_from(&app, "/api/items", peer).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(monitor.take(), ["evalsha"]);
    for _ in 0..5 {
        let r = get_from(&app, "/api/items", peer).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(monitor.take(), Vec::<String>::new(), "denied locally");
}

#[tokio::test]
async fn one_script_call_for_every_rule_that_applies() {
    let fx = Fixture::new(Kind::Redis);
    let mut monitor = Monitor::start(fx.server());
    let layer = RateLimitLayer::builder(fx.backend())
        .rule(
            Rule::any()
                .policy(Policy::per_minute(100).named("site"))
                .named("site"),
        )
        .rule(
            Rule::route("/login")
                .key(redis_layers::rate_limit::Key::global())
                .policy(Policy::per_minute(1).named("login"))
                .policy(Policy::per_hour(9).fixed_window().named("login-h"))
                .named("login"),
        )
        .rule(
            Rule::route("/login")
                .policy(Policy::per_minute(5).named("login-ip"))
                .dry_run(true)
                .named("login-ip"),
        )
        .build()
        .unwrap();
    let app = app(layer);
    let peer = "192.0.2.1:1";
    // Warm the script cache.
    get_from(&app, "/free", peer).await;
    monitor.take();
    // Three rules, four policies: one round trip.
    let r = send(&app, "POST", "/login", peer, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(monitor.take(), ["evalsha"]);
    let policy = r.header("ratelimit-policy").unwrap();
    for name in ["site", "login", "login-h", "login-ip"] {
        assert!(policy.contains(&format!("\"{name}\"")), "{policy}");
    }
    // The refusal too.
    let r = send(&app, "POST", "/login", peer, &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(monitor.take(), ["evalsha"]);
    assert_eq!(fx.tb.keys("rl:*").len(), 3, "{:?}", fx.tb.keys("rl:*"));
}

#[tokio::test]
async fn a_clients_states_share_one_hash_slot_and_expire() {
    let fx = Fixture::new(Kind::Redis);
    let app = app(limited(&fx, FailurePolicy::Open));
    get_from(&app, "/api/items", "192.0.2.1:1").await;
    let keys = fx.tb.keys("rl:*");
    assert_eq!(
        keys.len(),
        1,
        "one value for the rule's three policies: {keys:?}"
    );
    // Redis Cluster hashes only the part in braces: one tag, one slot.
    let slots: std::collections::HashSet<&str> = keys
        .iter()
        .map(|k| {
            let open = k.find('{').expect("a hash tag");
            let close = open + k[open..].find('}').expect("a closed hash tag");
            &k[open..=close]
        })
        .collect();
    assert_eq!(slots.len(), 1, "{keys:?}");
    for key in &keys {
        let ttl: i64 = fx.server().cmd(&["PTTL", key]);
        assert!(ttl > 0 && ttl <= 2 * 86_400_000, "{key}: {ttl}");
        assert!(key.contains("192.0.2.1"), "{key}");
    }
}

#[tokio::test]
async fn a_dead_redis_fails_open_by_default_and_closed_on_request() {
    let mut fx = Fixture::with_deadline(Kind::Redis, Duration::from_millis(200));
    let open = limited(&fx, FailurePolicy::Open);
    let closed = limited(&fx, FailurePolicy::Closed);
    let (open_app, closed_app) = (app(open.clone()), app(closed.clone()));
    // A dry run never refuses, even fail-closed.
    let dry_app = app(RateLimitLayer::builder(fx.backend())
        .rule(Rule::route("/api/items").policy(Policy::per_minute(3).named("a")))
        .on_store_error(FailurePolicy::Closed)
        .dry_run(true)
        .build()
        .unwrap());
    assert_eq!(
        get_from(&open_app, "/api/items", "192.0.2.1:1")
            .await
            .status,
        StatusCode::OK
    );

    fx.server_mut().kill();
    for _ in 0..2 {
        let started = Instant::now();
        let r = get_from(&open_app, "/api/items", "192.0.2.1:1").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("ratelimit").is_none(), "no state to report");
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );

        let r = get_from(&dry_app, "/api/items", "192.0.2.1:1").await;
        assert_eq!(r.status, StatusCode::OK, "dry run: {}", r.body);

        let started = Instant::now();
        let r = get_from(&closed_app, "/api/items", "192.0.2.1:1").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(open.stats().store_errors, 2);
    assert_eq!(closed.stats().store_errors, 2);

    // Restarted (empty): limiting resumes without a rebuild.
    fx.server_mut().restart();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            get_from(&closed_app, "/api/items", "192.0.2.1:1")
                .await
                .status,
        );
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "limits apply again: {statuses:?}"
    );
}

#[tokio::test]
async fn a_paused_redis_bounds_latency() {
    let fx = Fixture::with_deadline(Kind::Redis, Duration::from_millis(150));
    let app = app(limited(&fx, FailurePolicy::Open));
    get_from(&app, "/api/items", "192.0.2.1:1").await;
    let _: () = fx.server().cmd(&["CLIENT", "PAUSE", "1000", "ALL"]);
    let started = Instant::now();
    let r = get_from(&app, "/api/items", "192.0.2.1:1").await;
    assert_eq!(r.status, StatusCode::OK, "fail-open");
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get_from(&app, "/api/items", "192.0.2.1:1").await;
    assert!(
        r.header("ratelimit").is_some(),
        "counting again once Redis answers"
    );
}

#[tokio::test]
async fn the_script_survives_a_script_flush() {
    let fx = Fixture::new(Kind::Redis);
    let app = app(limited(&fx, FailurePolicy::Closed));
    assert_eq!(
        get_from(&app, "/api/items", "192.0.2.1:1").await.status,
        StatusCode::OK
    );
    let _: () = fx.server().cmd(&["SCRIPT", "FLUSH"]);
    let r = get_from(&app, "/api/items", "192.0.2.1:1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("ratelimit").unwrap().contains("\"a\";r=1;"));
}

#[tokio::test]
async fn state_of_the_wrong_shape_is_reset_not_failed() {
    let fx = Fixture::new(Kind::Redis);
    let app = app(limited(&fx, FailurePolicy::Closed));
    get_from(&app, "/api/items", "192.0.2.1:1").await;
    for key in fx.tb.keys("rl:*") {
        let _: () = fx.server().cmd(&["SET", &key, "garbage"]);
    }
    let r = get_from(&app, "/api/items", "192.0.2.1:1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn a_rule_chooses_its_own_failure_policy() {
    let mut fx = Fixture::with_deadline(Kind::Redis, Duration::from_millis(200));
    let login = || {
        Rule::route("/login")
            .policy(Policy::per_minute(5).named("login"))
            .named("login")
    };
    let api = || {
        Rule::route("/api/items")
            .policy(Policy::per_minute(5).named("api"))
            .named("api")
    };
    // A fail-open layer with a fail-closed login rule, and the other way
    // round.
    let open = app(RateLimitLayer::builder(fx.backend())
        .rule(login().on_store_error(FailurePolicy::Closed))
        .rule(api())
        .build()
        .unwrap());
    let closed = app(RateLimitLayer::builder(fx.backend())
        .on_store_error(FailurePolicy::Closed)
        .rule(login())
        .rule(api().on_store_error(FailurePolicy::Open))
        .build()
        .unwrap());
    // A request both a fail-open and a fail-closed rule apply to (one
    // store call): refused.
    let both = app(RateLimitLayer::builder(fx.backend())
        .rule(
            Rule::any()
                .policy(Policy::per_minute(50).named("site"))
                .named("site"),
        )
        .rule(login().on_store_error(FailurePolicy::Closed))
        .build()
        .unwrap());
    let peer = "192.0.2.1:1";
    for app in [&open, &closed, &both] {
        assert_eq!(
            send(app, "POST", "/login", peer, &[]).await.status,
            StatusCode::OK
        );
        assert_eq!(
            get_from(app, "/api/items", peer).await.status,
            StatusCode::OK
        );
    }

    fx.server_mut().kill();
    for app in [&open, &closed] {
        let r = send(app, "POST", "/login", peer, &[]).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let r = get_from(app, "/api/items", peer).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "the fail-open rule admits: {}",
            r.body
        );
        assert!(r.header("ratelimit").is_none(), "no state to report");
    }
    let r = send(&both, "POST", "/login", peer, &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let r = get_from(&both, "/free", peer).await;
    assert_eq!(r.status, StatusCode::OK, "only the site rule: {}", r.body);
}
