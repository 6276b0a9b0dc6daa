//! Edges of the rate limiter: made-up header values, a missing peer
//! address, settings at the limits of what the store represents, and
//! several rules refusing together.

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use redis_layers::memory::MemoryBackend;
use redis_layers::rate_limit::{
    Check, Decision, Key, Policy, RateLimitLayer, RateLimitStore, Rule,
};
use tower::ServiceExt;

use crate::harness::{app, get_from, send, Fixture, Kind};
use crate::support::logs::Logs;

fn fixture(kind: Kind) -> Fixture {
    Fixture::new(kind)
}

/// The `RateLimit` field's item of `policy`: `(r, t)`.
fn item(field: Option<&str>, policy: &str) -> Option<(u64, u64)> {
    let head = format!("\"{policy}\";r=");
    let rest = field?
        .split(", ")
        .find_map(|i| i.strip_prefix(head.as_str()))?;
    let (r, t) = rest.split_once(";t=")?;
    Some((r.parse().ok()?, t.parse().ok()?))
}

crate::support::both_backends! { fixture;
    made_up_api_keys_count_as_the_address => |fx| {
        // Only "known-key" is an issued key.
        let known = Key::header_validated("x-api-key", |key: &str| {
            std::future::ready(key == "known-key")
        });
        let app = app(
            RateLimitLayer::builder(fx.backend())
                .rule(
                    Rule::prefix("/api/")
                        .key(known.or(Key::client_ip()))
                        .policy(Policy::per_hour(10).named("api")),
                )
                .build()
                .unwrap(),
        );
        let peer = "192.0.2.70:1";
        let mut admitted = 0;
        for i in 0..1_000 {
            let value = format!("made-up-{i}");
            let r = send(&app, "GET", "/api/items", peer, &[("x-api-key", value.as_str())]).await;
            match r.status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("{other}: {}", r.body),
            }
        }
        assert_eq!(admitted, 10, "1,000 made-up keys from one address are that address");
        // A known key has its own budget, whole, from the same address.
        for i in 0..10 {
            let r = send(&app, "GET", "/api/items", peer, &[("x-api-key", "known-key")]).await;
            assert_eq!(r.status, StatusCode::OK, "known key, request {i}");
        }
        let r = send(&app, "GET", "/api/items", peer, &[("x-api-key", "known-key")]).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        // Two counters (the address, the known key), not one per value.
        assert_eq!(fx.tb.keys("rl:*").len(), 2, "{:?}", fx.tb.keys("rl:*"));
    }

    a_refusal_by_one_rule_counts_against_no_other => |fx| {
        // Both rules count by the client's address: one call, all or
        // nothing, on every backend (on a cluster, one hash tag).
        let layer = RateLimitLayer::builder(fx.backend())
            .rule(Rule::any().policy(Policy::per_hour(100).named("site")).named("site"))
            .rule(Rule::route("/login").policy(Policy::per_hour(2).named("login")).named("login"))
            // Every refusal goes to the store.
            .deny_cache_capacity(0)
            .build()
            .unwrap();
        let app = app(layer.clone());
        let peer = "192.0.2.60:1";
        for left in [99, 98] {
            let r = send(&app, "POST", "/login", peer, &[]).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(item(r.header("ratelimit"), "site").map(|i| i.0), Some(left));
        }
        for _ in 0..5 {
            let r = send(&app, "POST", "/login", peer, &[]).await;
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
            assert!(r.body.contains("\"login\""), "{}", r.body);
            // The refusal tells every rule's state, none of them counted.
            assert_eq!(
                item(r.header("ratelimit"), "site").map(|i| i.0),
                Some(98),
                "{:?}",
                r.header("ratelimit")
            );
            assert_eq!(item(r.header("ratelimit"), "login").map(|i| i.0), Some(0));
        }
        let r = get_from(&app, "/free", peer).await;
        assert_eq!(
            item(r.header("ratelimit"), "site").map(|i| i.0),
            Some(97),
            "the refused logins consumed nothing of the site's budget"
        );
        let stats = layer.stats();
        assert_eq!((stats.allowed, stats.denied), (3, 5), "{stats:?}");
    }

    rules_keyed_by_different_clients_count_as_documented => |fx| {
        // The login rule counts everyone together; the site rule counts
        // each address. On one Redis and in memory they are one call, all
        // or nothing. On a cluster their keys live in different slots:
        // they are checked one after the other, in the rules' order, so
        // the site rule (first) has counted a request the login rule
        // then refuses.
        let layer = RateLimitLayer::builder(fx.backend())
            .rule(Rule::any().policy(Policy::per_hour(100).named("site")).named("site"))
            .rule(
                Rule::route("/login")
                    .key(Key::global())
                    .policy(Policy::per_hour(1).named("login"))
                    .named("login"),
            )
            .deny_cache_capacity(0)
            .build()
            .unwrap();
        let app = app(layer);
        let peer = "192.0.2.61:1";
        assert_eq!(send(&app, "POST", "/login", "192.0.2.62:1", &[]).await.status, StatusCode::OK);
        for _ in 0..3 {
            let r = send(&app, "POST", "/login", peer, &[]).await;
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        }
        let r = get_from(&app, "/free", peer).await;
        let site = item(r.header("ratelimit"), "site").map(|i| i.0);
        let split = is_cluster(&fx);
        assert_eq!(site, Some(if split { 96 } else { 99 }), "{:?}", r.header("ratelimit"));
    }

    check_all_is_all_or_nothing_and_dry_runs_never_refuse => |fx| {
        let store = fx.backend();
        let a = [Policy::per_hour(10).named("a")];
        let b = [Policy::per_hour(1).named("b")];
        let d = [Policy::per_hour(1).named("d")];
        let remaining = |ds: &[Decision]| ds.iter().map(|x| x.policies[0].remaining).collect::<Vec<_>>();
        let allowed = |ds: &[Decision]| ds.iter().map(|x| x.allowed).collect::<Vec<_>>();
        // One client's keys under three rules (one hash tag: one script on
        // a cluster too).
        let all = [
            Check::new("a|c", &a, 1),
            Check::new("b|c", &b, 1),
            Check::new("d|c", &d, 1).dry_run(true),
        ];
        let first = store.check_all(&all).await.unwrap();
        assert_eq!(allowed(&first), [true, true, true]);
        assert_eq!(remaining(&first), [9, 0, 0]);
        // b refuses: nothing counts; a alone would admit; the dry run tells
        // what it would do.
        let second = store.check_all(&all).await.unwrap();
        assert_eq!(allowed(&second), [true, false, false]);
        assert_eq!(remaining(&second), [9, 0, 0], "a did not count the refused request");
        // Without b, the dry run refusing holds nothing back.
        let third = store.check_all(&[all[0], all[2]]).await.unwrap();
        assert_eq!(allowed(&third), [true, false]);
        assert_eq!(remaining(&third), [8, 0]);
        // A dry run that admits counts only when the others do too.
        let e = [Policy::per_hour(5).named("e")];
        let refused = store
            .check_all(&[Check::new("b|c", &b, 1), Check::new("e|c", &e, 1).dry_run(true)])
            .await
            .unwrap();
        assert_eq!(allowed(&refused), [false, true]);
        let e_alone = store.check("e|c", &e, 1).await.unwrap();
        assert_eq!(e_alone.policies[0].remaining, 4, "the dry run did not count the refused request");
    }

    extreme_settings_work => |fx| {
        let store = fx.backend();
        // One request a day.
        let daily = [Policy::per_day(1).named("daily")];
        let d = store.check("daily", &daily, 1).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.policies[0].remaining, 0);
        let d = store.check("daily", &daily, 1).await.unwrap();
        assert!(!d.allowed);
        let wait = d.retry_after();
        assert!(
            wait > Duration::from_secs(86_390) && wait <= Duration::from_secs(86_400),
            "{wait:?}"
        );
        // A million a second: a whole second's worth at once, then half a
        // second's worth must wait up to that long.
        let fast = [Policy::per_second(1_000_000).named("fast")];
        let d = store.check("fast", &fast, 1_000_000).await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.policies[0].remaining, 0);
        let d = store.check("fast", &fast, 500_000).await.unwrap();
        assert!(!d.allowed, "{d:?}");
        let wait = d.retry_after();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
        assert!(store.check("fast", &fast, 500_000).await.unwrap().allowed);
        // One by one, each request counts.
        let d = store.check("fast-2", &fast, 1).await.unwrap();
        assert_eq!(d.policies[0].remaining, 999_999);
        // The longest burst period accepted: a request taking the whole
        // burst is stored (an expiry of about 2^52 ms, which Redis takes),
        // and the next one waits.
        let year = redis_layers::rate_limit::MAX_WINDOW;
        let most = (1u64 << 52) / year.as_millis() as u64;
        let longest = [Policy::new(1, year).burst(most).named("longest")];
        let d = store.check("longest", &longest, most).await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert!(d.policies[0].reset > Duration::from_secs(1 << 41), "{d:?}");
        let d = store.check("longest", &longest, 1).await.unwrap();
        assert!(!d.allowed, "{d:?}");
    }
}

fn is_cluster(fx: &Fixture) -> bool {
    #[cfg(feature = "cluster")]
    if matches!(fx.tb.kind, Kind::Cluster) {
        return true;
    }
    let _ = fx;
    false
}

#[tokio::test]
async fn a_missing_peer_address_is_warned_about_once_per_layer() {
    let logs = Logs::capture(tracing::Level::WARN);
    let make = || {
        app(RateLimitLayer::builder(MemoryBackend::new())
            .policy(Policy::per_minute(100).named("p"))
            .build()
            .unwrap())
    };
    let (a, b) = (make(), make());
    // Served without `ConnectInfo`: no peer address.
    let bare = || http::Request::get("/free").body(Body::empty()).unwrap();
    for _ in 0..5 {
        let res = a.clone().oneshot(bare()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let fix = "into_make_service_with_connect_info";
    assert_eq!(
        logs.count(fix),
        1,
        "one warning, naming the fix: {}",
        logs.text()
    );
    // A request with a peer address says nothing.
    assert_eq!(
        get_from(&b, "/free", "192.0.2.1:1").await.status,
        StatusCode::OK
    );
    assert_eq!(logs.count(fix), 1, "{}", logs.text());
    // Another layer warns once of its own.
    for _ in 0..3 {
        b.clone().oneshot(bare()).await.unwrap();
    }
    assert_eq!(logs.count(fix), 2, "{}", logs.text());
}

/// A store of one's own that implements only `check`.
struct OneByOne(MemoryBackend);

impl RateLimitStore for OneByOne {
    fn check(
        &self,
        key: &str,
        policies: &[Policy],
        cost: u64,
    ) -> impl std::future::Future<Output = Result<Decision, redis_layers::Error>> + Send {
        self.0.check(key, policies, cost)
    }
}

#[tokio::test]
async fn a_store_without_check_all_is_checked_rule_by_rule() {
    // As documented: the default `check_all` checks the rules in order, and
    // a rule before the one that refuses has counted the request.
    let layer = RateLimitLayer::builder(OneByOne(MemoryBackend::new()))
        .rule(
            Rule::any()
                .policy(Policy::per_hour(100).named("site"))
                .named("site"),
        )
        .rule(
            Rule::route("/login")
                .policy(Policy::per_hour(1).named("login"))
                .named("login"),
        )
        .deny_cache_capacity(0)
        .build()
        .unwrap();
    let app = app(layer);
    let peer = "192.0.2.63:1";
    assert_eq!(
        send(&app, "POST", "/login", peer, &[]).await.status,
        StatusCode::OK
    );
    for _ in 0..3 {
        let r = send(&app, "POST", "/login", peer, &[]).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    }
    let r = get_from(&app, "/free", peer).await;
    assert_eq!(item(r.header("ratelimit"), "site").map(|i| i.0), Some(95));
}

#[test]
fn settings_whose_numbers_overflow_are_refused_when_built() {
    use redis_layers::rate_limit::{MAX_QUOTA, MAX_WINDOW};
    use redis_layers::ErrorKind;
    let b = || RateLimitLayer::builder(MemoryBackend::new());
    let year_ms = MAX_WINDOW.as_millis() as u64;
    // The longest burst period kept exactly: 2^52 ms.
    let most = (1u64 << 52) / year_ms;
    for (what, policy) in [
        (
            "a burst of 2^40 over a year",
            Policy::new(1, MAX_WINDOW).burst(MAX_QUOTA),
        ),
        ("a burst of 2^40 a day", Policy::per_day(1).burst(MAX_QUOTA)),
        (
            "one past the longest burst period",
            Policy::new(1, MAX_WINDOW).burst(most + 1),
        ),
    ] {
        let err = b().policy(policy.named("p")).build().expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Config, "{what}: {err}");
        assert!(
            err.to_string().contains("burst"),
            "{what}: names the setting: {err}"
        );
    }
    for (what, policy) in [
        ("one a day", Policy::per_day(1)),
        ("one a year", Policy::new(1, MAX_WINDOW)),
        ("a million a second", Policy::per_second(1_000_000)),
        (
            "2^40 a millisecond",
            Policy::new(MAX_QUOTA, Duration::from_millis(1)),
        ),
        ("2^40 a year", Policy::new(MAX_QUOTA, MAX_WINDOW)),
        (
            "2^40 a year, fixed",
            Policy::new(MAX_QUOTA, MAX_WINDOW).fixed_window(),
        ),
        (
            "2^40 a year, sliding",
            Policy::new(MAX_QUOTA, MAX_WINDOW).sliding_window(),
        ),
        (
            "the longest burst period",
            Policy::new(1, MAX_WINDOW).burst(most),
        ),
    ] {
        let built = b().policy(policy).build();
        assert!(built.is_ok(), "{what}: {built:?}");
    }
}
