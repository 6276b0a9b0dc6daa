//! Rate-limit behaviour, one suite run against a real Redis and the memory
//! backend; Redis-only tests (commands sent, faults) live in
//! `redis_only.rs`.

#[path = "../support/mod.rs"]
mod support;

mod edges;
mod harness;
mod redis_only;

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use harness::{app, get_from, send, send_body, Fixture, Kind, Reply};
use redis_layers::rate_limit::{
    ForwardedHeader, Key, MissingKey, Policy, RateLimitLayer, RateLimitStore, Rule,
};
use redis_layers::ErrorKind;

#[test]
fn settings_are_checked_when_the_layer_is_built() {
    let store = redis_layers::memory::MemoryBackend::new();
    let ok = RateLimitLayer::builder(store.clone())
        .policy(Policy::per_second(1))
        .build();
    assert!(ok.is_ok(), "the defaults are valid: {ok:?}");
    let b = || RateLimitLayer::builder(store.clone());
    let cases = [
        ("no rule", b().build()),
        ("zero quota", b().policy(Policy::per_second(0)).build()),
        (
            "quota too large",
            b().policy(Policy::per_second(redis_layers::rate_limit::MAX_QUOTA + 1))
                .build(),
        ),
        (
            "zero window",
            b().policy(Policy::new(1, Duration::ZERO)).build(),
        ),
        (
            "window too long",
            b().policy(Policy::new(1, Duration::from_secs(400 * 86_400)))
                .build(),
        ),
        (
            "zero burst",
            b().policy(Policy::per_second(1).burst(0)).build(),
        ),
        (
            "burst on a fixed window",
            b().policy(Policy::per_second(1).fixed_window().burst(3))
                .build(),
        ),
        (
            "policy name with a quote",
            b().policy(Policy::per_second(1).named("a\"b")).build(),
        ),
        (
            "empty policy name",
            b().policy(Policy::per_second(1).named("")).build(),
        ),
        (
            "two rules of one name",
            b().rule(Rule::any().policy(Policy::per_second(1)).named("x"))
                .rule(Rule::any().policy(Policy::per_second(1)).named("x"))
                .build(),
        ),
        ("rule without policy", b().rule(Rule::any()).build()),
        (
            "rule name with a '|'",
            b().rule(Rule::any().policy(Policy::per_second(1)).named("a|b"))
                .build(),
        ),
        (
            "too many policies in a rule",
            b().rule((0..17).fold(Rule::any(), |r, i| {
                r.policy(Policy::per_second(1).named(&format!("p{i}")))
            }))
            .build(),
        ),
        (
            "two policies of one name in a rule",
            b().rule(
                Rule::any()
                    .policy(Policy::per_second(1).named("p"))
                    .policy(Policy::per_minute(9).named("p")),
            )
            .build(),
        ),
        (
            "route without a slash",
            b().rule(Rule::route("login").policy(Policy::per_second(1)))
                .build(),
        ),
        (
            "bad trusted proxy",
            b().policy(Policy::per_second(1))
                .trusted_proxies(["10.0.0.0/33"])
                .build(),
        ),
        (
            "IPv6 prefix too long",
            b().policy(Policy::per_second(1)).ipv6_prefix(129).build(),
        ),
    ];
    for (what, built) in cases {
        let err = built.expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Config, "{what}: {err}");
    }
}

#[test]
#[should_panic(expected = "invalid rate-limit policy")]
fn new_panics_on_an_invalid_policy() {
    let _ = RateLimitLayer::new(
        redis_layers::memory::MemoryBackend::new(),
        Policy::per_second(0),
    );
}

fn fixture(kind: Kind) -> Fixture {
    Fixture::new(kind)
}

/// A rule's layer over the counting store, with peers allowed to vouch
/// for clients when from 10.0.0.0/8.
fn layer(fx: &Fixture, rule: Rule) -> RateLimitLayer {
    RateLimitLayer::builder(fx.counting())
        .trusted_proxies(["10.0.0.0/8"])
        .rule(rule)
        .build()
        .expect("a valid layer")
}

support::both_backends! { fixture;
    a_gcra_burst_is_admitted_whole => |fx| {
        // Rates whose interval is not a whole number of ms: rounding of
        // absolute times must not refuse the burst's last request.
        let store = fx.backend();
        for (i, policy) in [Policy::per_second(7), Policy::per_minute(9), Policy::per_second(13).burst(20)]
            .into_iter()
            .enumerate()
        {
            let burst = policy.burst_size();
            let policies = [policy.named("p")];
            let client = format!("burst-{i}");
            for n in 0..burst {
                let d = store.check(&client, &policies, 1).await.unwrap();
                assert!(d.allowed, "{policies:?}: request {n} of {burst}");
                assert_eq!(d.policies[0].remaining, burst - n - 1, "{policies:?}: request {n}");
            }
            assert!(!store.check(&client, &policies, 1).await.unwrap().allowed, "{policies:?}");
        }
    }


    store_admits_the_quota_then_refuses_without_counting => |fx| {
        let store = fx.backend();
        let policies = [Policy::per_minute(3).fixed_window().named("m")];
        for left in (0..3).rev() {
            let d = store.check("c1", &policies, 1).await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.policies[0].remaining, left);
            assert_eq!(d.retry_after(), Duration::ZERO);
        }
        let refused = store.check("c1", &policies, 1).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.policies[0].remaining, 0);
        assert!(refused.retry_after() > Duration::ZERO);
        assert!(refused.retry_after() <= Duration::from_secs(60));
        // Another client has its own count.
        assert!(store.check("c2", &policies, 1).await.unwrap().allowed);
        // A request costing more than the quota is refused and not counted.
        let big = store.check("c3", &policies, 4).await.unwrap();
        assert!(!big.allowed);
        assert_eq!(
            store.check("c3", &policies, 3).await.unwrap().policies[0].remaining,
            0,
            "the refused request consumed nothing"
        );
    }

    a_refusal_by_one_policy_counts_against_none => |fx| {
        let store = fx.backend();
        let policies = [
            Policy::per_hour(10).fixed_window().named("wide"),
            Policy::per_hour(2).fixed_window().named("narrow"),
        ];
        for _ in 0..2 {
            assert!(store.check("c", &policies, 1).await.unwrap().allowed);
        }
        for _ in 0..5 {
            let d = store.check("c", &policies, 1).await.unwrap();
            assert!(!d.allowed);
            assert!(d.policies[0].admitted, "the wide policy alone would admit");
            assert!(!d.policies[1].admitted);
            // The wide policy saw two requests, not more.
            assert_eq!(d.policies[0].remaining, 8);
        }
        // Cheaper requests do not fit the narrow policy either; a costly
        // one does not fit the wide one: still nothing counted.
        let d = store.check("c", &policies, 9).await.unwrap();
        assert!(!d.policies[0].admitted && !d.policies[1].admitted);
        assert_eq!(d.policies[0].remaining, 8);
    }

    each_algorithm_admits_exactly_its_quota_in_a_window => |fx| {
        let store = fx.backend();
        for (i, policy) in [
            Policy::per_hour(5),
            Policy::per_hour(5).fixed_window(),
            Policy::per_hour(5).sliding_window(),
            Policy::per_hour(60).burst(5),
        ]
        .into_iter()
        .enumerate()
        {
            let client = format!("algo-{i}");
            let policies = [policy.clone()];
            let mut admitted = 0;
            for _ in 0..8 {
                if store.check(&client, &policies, 1).await.unwrap().allowed {
                    admitted += 1;
                }
            }
            assert_eq!(admitted, 5, "{policy:?}");
        }
    }

    waiting_out_retry_after_is_enough => |fx| {
        let store = fx.backend();
        // A period long enough that a loaded machine (the cluster suite on
        // two busy cores) cannot spread four checks over it: with 300 ms
        // the quota sometimes never ran out.
        let period = Duration::from_millis(1_200);
        for (i, policy) in [
            Policy::new(2, period),
            Policy::new(2, period).fixed_window(),
            Policy::new(2, period).sliding_window(),
        ]
        .into_iter()
        .enumerate()
        {
            let client = format!("wait-{i}");
            let policies = [policy.clone()];
            let mut refused = None;
            for _ in 0..4 {
                let d = store.check(&client, &policies, 1).await.unwrap();
                if !d.allowed {
                    refused = Some(d);
                    break;
                }
            }
            let refused = refused.expect("the quota ran out");
            let wait = refused.retry_after();
            assert!(wait > Duration::ZERO && wait <= 2 * period, "{policy:?}: {wait:?}");
            tokio::time::sleep(wait + Duration::from_millis(15)).await;
            let d = store.check(&client, &policies, 1).await.unwrap();
            assert!(d.allowed, "{policy:?}: still refused after {wait:?}: {d:?}");
        }
    }

    idle_state_expires => |fx| {
        let store = fx.backend();
        let policies = [
            Policy::new(1, Duration::from_millis(200)).named("g"),
            Policy::new(1, Duration::from_millis(200)).fixed_window().named("f"),
            Policy::new(1, Duration::from_millis(200)).sliding_window().named("s"),
        ];
        assert!(store.check("idle", &policies, 1).await.unwrap().allowed);
        assert_eq!(fx.tb.keys("rl:*").len(), 1, "one value for all: {:?}", fx.tb.keys("*"));
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(fx.tb.keys("rl:*"), Vec::<String>::new(), "no state is kept for idle clients");
    }

    concurrent_requests_through_two_layers_admit_exactly_the_quota => |fx| {
        for (i, policy) in [
            Policy::per_hour(100).fixed_window(),
            Policy::per_hour(100).sliding_window(),
            Policy::per_hour(100),
        ]
        .into_iter()
        .enumerate()
        {
            // Two instances of a service sharing one store.
            let rule = || Rule::any().policy(policy.clone().named("p")).named(format!("r{i}"));
            let apps = [app(layer(&fx, rule())), app(layer(&fx, rule()))];
            let mut tasks = Vec::new();
            for t in 0..64 {
                let app = apps[t % 2].clone();
                tasks.push(tokio::spawn(async move {
                    let mut ok = 0;
                    let mut refused = 0;
                    for _ in 0..3 {
                        let r = get_from(&app, "/free", "192.0.2.1:5000").await;
                        match r.status {
                            StatusCode::OK => ok += 1,
                            StatusCode::TOO_MANY_REQUESTS => refused += 1,
                            other => panic!("unexpected {other}: {}", r.body),
                        }
                    }
                    (ok, refused)
                }));
            }
            let (mut ok, mut refused) = (0, 0);
            for t in tasks {
                let (o, r) = t.await.unwrap();
                ok += o;
                refused += r;
            }
            assert_eq!(ok, 100, "{policy:?}: exactly the quota got through");
            assert_eq!(refused, 92, "{policy:?}");
        }
    }

    responses_carry_the_ratelimit_fields => |fx| {
        let app = app(layer(
            &fx,
            Rule::route("/api/items")
                .policy(Policy::per_minute(3).fixed_window().named("minute"))
                .policy(Policy::per_hour(100).fixed_window().named("hour")),
        ));
        let peer = "192.0.2.7:1000";
        let r = get_from(&app, "/api/items", peer).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "items");
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"minute\";q=3;w=60, \"hour\";q=100;w=3600")
        );
        let state = r.header("ratelimit").unwrap();
        assert!(state.starts_with("\"minute\";r=2;t="), "{state}");
        assert!(state.contains(", \"hour\";r=99;t="), "{state}");
        assert!(r.header("x-ratelimit-limit").is_none(), "legacy fields are opt-in");
        get_from(&app, "/api/items", peer).await;
        let last = get_from(&app, "/api/items", peer).await;
        assert!(last.header("ratelimit").unwrap().starts_with("\"minute\";r=0;"));

        let refused = get_from(&app, "/api/items", peer).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.header("content-type"), Some("application/problem+json"));
        let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(body["status"], 429);
        assert_eq!(
            body["type"],
            "https://iana.org/assignments/http-problem-types#quota-exceeded"
        );
        assert_eq!(body["violated-policies"], serde_json::json!(["minute"]));
        // The refused request's fields: the minute policy exhausted until
        // Retry-After, the hour one untouched by the refusal.
        let state = refused.header("ratelimit").unwrap();
        assert_eq!(
            state.split(", ").next().unwrap(),
            format!("\"minute\";r=0;t={retry}")
        );
        assert!(state.contains("\"hour\";r=97;"), "{state}");
    }

    legacy_fields_describe_the_tightest_policy => |fx| {
        let app = app(
            RateLimitLayer::builder(fx.counting())
                .rule(
                    Rule::any()
                        .policy(Policy::per_minute(50).fixed_window().named("wide"))
                        .policy(Policy::per_minute(4).fixed_window().named("tight")),
                )
                .legacy_headers(true)
                .build()
                .unwrap(),
        );
        let r = get_from(&app, "/free", "192.0.2.1:1").await;
        assert_eq!(r.header("x-ratelimit-limit"), Some("4"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("3"));
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset));
    }

    requests_no_rule_matches_pass_untouched_without_a_store_call => |fx| {
        let app = app(layer(
            &fx,
            Rule::route("/users/{id}")
                .method(http::Method::GET)
                .policy(Policy::per_minute(1).named("users")),
        ));
        let peer = "192.0.2.9:1";
        for _ in 0..3 {
            let r = get_from(&app, "/free", peer).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.header("ratelimit").is_none());
            let r = send(&app, "POST", "/login", peer, &[]).await;
            assert_eq!(r.status, StatusCode::OK);
        }
        assert_eq!(fx.calls(), 0);
        // The rule names the route template: every user id counts together.
        assert_eq!(get_from(&app, "/users/1", peer).await.status, StatusCode::OK);
        assert_eq!(
            get_from(&app, "/users/2", peer).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(fx.calls(), 2);
    }

    every_matching_rule_applies_with_its_own_key => |fx| {
        let layer = RateLimitLayer::builder(fx.counting())
            .rule(Rule::prefix("/").policy(Policy::per_minute(100).named("site")).named("site"))
            .rule(
                Rule::route("/login")
                    .key(Key::global())
                    .policy(Policy::per_minute(2).named("login-all"))
                    .named("login"),
            )
            .build()
            .unwrap();
        let app = app(layer);
        assert_eq!(send(&app, "POST", "/login", "192.0.2.1:1", &[]).await.status, StatusCode::OK);
        let r = send(&app, "POST", "/login", "192.0.2.2:1", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        let fields = r.header("ratelimit-policy").unwrap();
        assert!(fields.contains("\"site\"") && fields.contains("\"login-all\""), "{fields}");
        // A third client: the global login limit is spent.
        let r = send(&app, "POST", "/login", "192.0.2.3:1", &[]).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(r.body.contains("login-all"));
        // Other routes only meet the site rule.
        assert_eq!(get_from(&app, "/free", "192.0.2.3:1").await.status, StatusCode::OK);
    }

    forwarding_headers_count_only_from_trusted_proxies => |fx| {
        let app = app(layer(&fx, Rule::any().policy(Policy::per_minute(1).named("p"))));
        let ok = StatusCode::OK;
        let no = StatusCode::TOO_MANY_REQUESTS;
        // An untrusted peer cannot choose its key by sending the header.
        let attacker = "203.0.113.5:1";
        assert_eq!(send(&app, "GET", "/free", attacker, &[("x-forwarded-for", "1.1.1.1")]).await.status, ok);
        assert_eq!(send(&app, "GET", "/free", attacker, &[("x-forwarded-for", "2.2.2.2")]).await.status, no);
        // Through the trusted proxy, the rightmost untrusted hop is the
        // client; what the client prepends is ignored.
        let proxy = "10.1.2.3:80";
        let via = |xff: &'static str| [("x-forwarded-for", xff)];
        assert_eq!(send(&app, "GET", "/free", proxy, &via("198.51.100.1")).await.status, ok);
        assert_eq!(send(&app, "GET", "/free", proxy, &via("198.51.100.2")).await.status, ok);
        assert_eq!(
            send(&app, "GET", "/free", proxy, &via("9.9.9.9, 198.51.100.1")).await.status,
            no,
            "a spoofed leftmost entry does not make a new client"
        );
        assert_eq!(
            send(&app, "GET", "/free", proxy, &via("198.51.100.3, 10.9.9.9")).await.status,
            ok,
            "trusted hops are skipped"
        );
        // A Forwarded header the proxy passed through from the client is
        // not read: X-Forwarded-For is the configured header.
        let fwd = [("forwarded", "for=203.0.113.99"), ("x-forwarded-for", "198.51.100.1")];
        assert_eq!(send(&app, "GET", "/free", proxy, &fwd).await.status, no, "still 198.51.100.1");
        // Configured for RFC 7239: Forwarded is read, X-Forwarded-For not.
        let rfc = harness::app(
            RateLimitLayer::builder(fx.counting())
                .trusted_proxies(["10.0.0.0/8"])
                .forwarded_header(ForwardedHeader::Forwarded)
                .rule(Rule::any().policy(Policy::per_minute(1).named("q")))
                .build()
                .unwrap(),
        );
        let fwd = [("forwarded", "for=\"[2001:db8::1]:4711\""), ("x-forwarded-for", "198.51.100.4")];
        assert_eq!(send(&rfc, "GET", "/free", proxy, &fwd).await.status, ok);
        let fwd2 = [("forwarded", "for=2001:db8::ffff"), ("x-forwarded-for", "198.51.100.5")];
        assert_eq!(
            send(&rfc, "GET", "/free", proxy, &fwd2).await.status,
            no,
            "the same IPv6 /64 is one client"
        );
        // One client's junk never merges everyone into the proxy's key.
        let junk = http::HeaderValue::from_bytes(b"\xff, 198.51.100.6").unwrap();
        let mut req = axum::http::Request::get("/free").header("x-forwarded-for", junk);
        req = req.extension(axum::extract::ConnectInfo(proxy.parse::<std::net::SocketAddr>().unwrap()));
        let res = tower::ServiceExt::oneshot(app.clone(), req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), ok, "198.51.100.6 is a new client");
        let junk2 = [("x-forwarded-for", "junk, 198.51.100.7")];
        assert_eq!(send(&app, "GET", "/free", proxy, &junk2).await.status, ok, "and so is 198.51.100.7");
    }

    ipv6_clients_are_grouped_by_prefix => |fx| {
        let app = app(layer(&fx, Rule::any().policy(Policy::per_minute(1).named("p"))));
        assert_eq!(get_from(&app, "/free", "[2001:db8:1:2::1]:1").await.status, StatusCode::OK);
        assert_eq!(
            get_from(&app, "/free", "[2001:db8:1:2:ffff::9]:1").await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "same /64"
        );
        assert_eq!(get_from(&app, "/free", "[2001:db8:1:3::1]:1").await.status, StatusCode::OK);
        // An IPv4-mapped address is the IPv4 client.
        assert_eq!(get_from(&app, "/free", "192.0.2.44:1").await.status, StatusCode::OK);
        assert_eq!(
            get_from(&app, "/free", "[::ffff:192.0.2.44]:1").await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    malformed_forwarding_headers_never_cause_a_server_error => |fx| {
        let app = app(layer(&fx, Rule::any().policy(Policy::per_minute(1000).named("p"))));
        let junk: [&[(&str, &str)]; 10] = [
            &[("x-forwarded-for", "")],
            &[("x-forwarded-for", "not-an-ip")],
            &[("x-forwarded-for", ",,, ,")],
            &[("x-forwarded-for", "999.1.1.1, ::::::")],
            &[("forwarded", "for=")],
            &[("forwarded", "for=\"[::1\"")],
            &[("forwarded", "for=unknown;proto=https, for=_hidden")],
            &[("forwarded", ";;;===,,,")],
            &[("forwarded", "FOR=192.0.2.60:99")],
            &[("x-forwarded-for", &"1.2.3.4,".repeat(2000))],
        ];
        for headers in junk {
            for peer in ["10.0.0.1:1", "203.0.113.1:1"] {
                let r = send(&app, "GET", "/free", peer, headers).await;
                assert_eq!(r.status, StatusCode::OK, "{headers:?} from {peer}: {}", r.body);
            }
        }
    }

    header_keys_count_each_value_apart_and_are_not_stored_in_clear => |fx| {
        let app = app(layer(
            &fx,
            Rule::prefix("/api/")
                .key(Key::header("x-api-key").or(Key::client_ip()))
                .policy(Policy::per_minute(1).named("api")),
        ));
        let peer = "192.0.2.20:1";
        let with = |k: &'static str| [("x-api-key", k)];
        assert_eq!(send(&app, "GET", "/api/items", peer, &with("secret-a")).await.status, StatusCode::OK);
        assert_eq!(send(&app, "GET", "/api/items", peer, &with("secret-b")).await.status, StatusCode::OK);
        assert_eq!(
            send(&app, "GET", "/api/items", peer, &with("secret-a")).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // Without the header: the address.
        assert_eq!(send(&app, "GET", "/api/items", peer, &[]).await.status, StatusCode::OK);
        assert_eq!(
            send(&app, "GET", "/api/items", peer, &[]).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        let keys = fx.tb.keys("*");
        assert!(!keys.is_empty());
        assert!(keys.iter().all(|k| !k.contains("secret")), "{keys:?}");
        // A non-UTF-8 value is a key like any other.
        let r = send(&app, "GET", "/api/items", peer, &[("x-api-key", "caf\u{e9}")]).await;
        assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    requests_without_a_key_share_one_or_skip => |fx| {
        let shared = app(layer(
            &fx,
            Rule::any()
                .key(Key::header("x-api-key"))
                .policy(Policy::per_minute(1).named("p"))
                .named("shared"),
        ));
        let peer = "192.0.2.30:1";
        assert_eq!(get_from(&shared, "/free", peer).await.status, StatusCode::OK);
        assert_eq!(
            get_from(&shared, "/free", "192.0.2.31:1").await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "keyless requests count together"
        );
        let skip = app(
            RateLimitLayer::builder(fx.counting())
                .rule(
                    Rule::any()
                        .key(Key::header("x-api-key"))
                        .policy(Policy::per_minute(1).named("p"))
                        .named("skip"),
                )
                .missing_key(MissingKey::Skip)
                .build()
                .unwrap(),
        );
        let before = fx.calls();
        for _ in 0..3 {
            let r = get_from(&skip, "/free", peer).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.header("ratelimit").is_none());
        }
        assert_eq!(fx.calls(), before, "skipped: no store call");
    }

    a_request_without_a_peer_address_is_limited_not_failed => |fx| {
        use tower::ServiceExt;
        let app = app(layer(&fx, Rule::any().policy(Policy::per_minute(1).named("p"))));
        let req = || http::Request::get("/free").body(axum::body::Body::empty()).unwrap();
        assert_eq!(app.clone().oneshot(req()).await.unwrap().status(), StatusCode::OK);
        assert_eq!(
            app.clone().oneshot(req()).await.unwrap().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    custom_keys_and_costs => |fx| {
        let app = app(layer(
            &fx,
            Rule::any()
                .key(Key::custom(|parts: &http::request::Parts| {
                    let tenant = parts
                        .headers
                        .get("x-tenant")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    async move { tenant }
                }))
                .cost(|parts: &http::request::Parts| if parts.uri.path() == "/api/items" { 5 } else { 1 })
                .policy(Policy::per_minute(6).fixed_window().named("p")),
        ));
        let t = |name: &'static str| [("x-tenant", name)];
        let r = send(&app, "GET", "/api/items", "192.0.2.1:1", &t("acme")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("ratelimit").unwrap().contains("r=1;"));
        // Costs 5; one is left.
        let r = send(&app, "GET", "/api/items", "192.0.2.2:1", &t("acme")).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        let r = send(&app, "GET", "/free", "192.0.2.3:1", &t("acme")).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = send(&app, "GET", "/api/items", "192.0.2.1:1", &t("globex")).await;
        assert_eq!(r.status, StatusCode::OK, "another tenant");
    }

    dry_run_reports_but_never_refuses => |fx| {
        let layer = RateLimitLayer::builder(fx.counting())
            .rule(Rule::any().policy(Policy::per_minute(2).named("p")))
            .dry_run(true)
            .build()
            .unwrap();
        let app = app(layer.clone());
        let mut last = None;
        for _ in 0..5 {
            let r = get_from(&app, "/free", "192.0.2.1:1").await;
            assert_eq!(r.status, StatusCode::OK);
            last = Some(r);
        }
        let last = last.unwrap();
        assert!(last.header("ratelimit").unwrap().contains("r=0;"));
        let stats = layer.stats();
        assert_eq!(stats.dry_run_denied, 3);
        assert_eq!(stats.denied, 0);
        assert_eq!(fx.calls(), 5, "dry run asks the store every time");
    }

    a_dry_run_rule_keyed_apart_never_stops_the_rules_after_it => |fx| {
        // On a cluster the rules' keys (an address, a header) sit in other
        // slots, so the store checks them one call after another: the dry
        // run's refusal must not end the checks (the enforcing rule still
        // counts, and the store does not answer too few decisions).
        let layer = RateLimitLayer::builder(fx.counting())
            .rule(Rule::any().key(Key::peer_ip()).policy(Policy::per_minute(1).named("watch")).dry_run(true))
            .rule(Rule::any().key(Key::header("x-api-key")).policy(Policy::per_minute(10).named("enforce")))
            .build()
            .unwrap();
        let app = app(layer.clone());
        let mut last = None;
        for n in 1..=3 {
            let r = send(&app, "GET", "/free", "192.0.2.1:1", &[("x-api-key", "k1")]).await;
            assert_eq!(r.status, StatusCode::OK, "request {n}");
            last = Some(r);
        }
        let header = last.unwrap().header("ratelimit").expect("the rules' RateLimit header").to_owned();
        assert!(header.contains("r=7;"), "the enforcing rule counted 3 of 10: {header}");
        assert_eq!(layer.stats().dry_run_denied, 2);
    }

    a_refused_client_is_answered_locally_until_its_wait_is_over => |fx| {
        let layer = layer(&fx, Rule::any().policy(Policy::new(2, Duration::from_millis(400)).fixed_window().named("p")));
        let app = app(layer.clone());
        let peer = "192.0.2.1:1";
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(get_from(&app, "/free", peer).await.status);
        }
        let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
        assert!(refused >= 6, "{statuses:?}");
        // The store saw the admitted requests and the first refusal only
        // (a window boundary between them can add a second round).
        assert!(fx.calls() <= 6, "{} store calls for {statuses:?}", fx.calls());
        let stats = layer.stats();
        assert!(stats.denied_locally >= 4, "{stats:?}");
        // Other clients are unaffected.
        assert_eq!(get_from(&app, "/free", "192.0.2.2:1").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(get_from(&app, "/free", peer).await.status, StatusCode::OK);
    }

    a_local_refusal_counts_its_wait_down => |fx| {
        let layer = layer(&fx, Rule::any().policy(Policy::new(1, Duration::from_secs(3)).named("p")));
        let app = app(layer.clone());
        let peer = "192.0.2.1:1";
        assert_eq!(get_from(&app, "/free", peer).await.status, StatusCode::OK);
        let t = |r: &Reply| -> u64 {
            let field = r.header("ratelimit").unwrap();
            field.rsplit("t=").next().unwrap().parse().unwrap()
        };
        let retry = |r: &Reply| -> u64 { r.header("retry-after").unwrap().parse().unwrap() };
        let by_store = get_from(&app, "/free", peer).await;
        let local = get_from(&app, "/free", peer).await;
        assert_eq!(layer.stats().denied_locally, 1);
        for r in [&by_store, &local] {
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(retry(r), t(r), "{:?}", r.header("ratelimit"));
        }
        assert_eq!(local.body, by_store.body);
        assert_eq!(retry(&local), retry(&by_store));
        assert!((2..=3).contains(&retry(&local)), "{}", retry(&local));
        // A second later the same refusal shows a shorter wait.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let later = get_from(&app, "/free", peer).await;
        assert_eq!(later.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(layer.stats().denied_locally, 2);
        assert!(retry(&later) < retry(&local), "{} then {}", retry(&local), retry(&later));
        assert_eq!(retry(&later), t(&later));
    }

    a_custom_refusal_keeps_the_limit_fields => |fx| {
        let layer = RateLimitLayer::builder(fx.counting())
            .policy(Policy::per_minute(1).named("p"))
            .on_refusal(|request, refusal| {
                let mut res = http::Response::new(bytes::Bytes::from(format!(
                    "slow down ({}) on {} for {} ms",
                    refusal.policies().join(","),
                    request.uri.path(),
                    refusal.retry_after().unwrap().as_millis()
                )));
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                res
            })
            .build()
            .unwrap();
        let app = app(layer);
        assert_eq!(get_from(&app, "/free", "192.0.2.1:1").await.status, StatusCode::OK);
        // Refused by the store, then from the deny cache: the same answer.
        for _ in 0..2 {
            let r = get_from(&app, "/free", "192.0.2.1:1").await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(r.body.starts_with("slow down (p) on /free for "), "{}", r.body);
            assert!(r.header("retry-after").is_some());
            assert!(r.header("ratelimit").unwrap().starts_with("\"p\";r=0;t="));
        }
    }

    a_layer_on_one_route_limits_only_that_route => |fx| {
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/search",
                get(|| async { "results" })
                    .layer(RateLimitLayer::new(fx.counting(), Policy::per_minute(1).named("search"))),
            )
            .route("/other", get(|| async { "other" }));
        let peer = "192.0.2.1:1";
        assert_eq!(get_from(&app, "/search", peer).await.status, StatusCode::OK);
        assert_eq!(get_from(&app, "/search", peer).await.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(get_from(&app, "/other", peer).await.status, StatusCode::OK);
        assert_eq!(fx.calls(), 2);
    }

    unnamed_layers_built_in_two_places_count_apart_and_one_place_counts_together => |fx| {
        use axum::routing::get;
        // Two layers, each made where it is mounted, with the same unnamed
        // policy: two budgets.
        let app = axum::Router::new()
            .route(
                "/a",
                get(|| async { "a" })
                    .layer(RateLimitLayer::new(fx.counting(), Policy::per_minute(1))),
            )
            .route(
                "/b",
                get(|| async { "b" })
                    .layer(RateLimitLayer::new(fx.counting(), Policy::per_minute(1))),
            );
        let peer = "192.0.2.1:1";
        assert_eq!(get_from(&app, "/a", peer).await.status, StatusCode::OK);
        assert_eq!(get_from(&app, "/b", peer).await.status, StatusCode::OK, "its own budget");
        assert_eq!(get_from(&app, "/a", peer).await.status, StatusCode::TOO_MANY_REQUESTS);

        // One place in the code: two instances of a service (or one layer
        // on two routes) share the budget.
        let made_here = |fx: &Fixture| RateLimitLayer::new(fx.counting(), Policy::per_minute(1));
        let instance = |layer: RateLimitLayer| {
            axum::Router::new()
                .route("/c", get(|| async { "c" }))
                .route("/d", get(|| async { "d" }))
                .route_layer(layer)
        };
        let (one, two) = (instance(made_here(&fx)), instance(made_here(&fx)));
        let peer = "192.0.2.2:1";
        assert_eq!(get_from(&one, "/c", peer).await.status, StatusCode::OK);
        assert_eq!(get_from(&two, "/c", peer).await.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(get_from(&one, "/d", peer).await.status, StatusCode::TOO_MANY_REQUESTS);
    }

    the_session_user_is_a_key => |fx| {
        use axum::routing::post;
        use redis_layers::session::{Session, SessionLayer};
        async fn login(session: Session, body: String) -> &'static str {
            session.set_user(body).unwrap();
            "in"
        }
        let limits = RateLimitLayer::builder(fx.counting())
            .rule(
                Rule::route("/work")
                    .key(Key::session_user())
                    .policy(Policy::per_minute(1).named("per-user")),
            )
            .missing_key(MissingKey::Skip)
            .build()
            .unwrap();
        let app = axum::Router::new()
            .route("/login", post(login))
            .route("/work", post(|| async { "done" }))
            .layer(limits)
            .layer(SessionLayer::builder(fx.backend()).secure(false).build().unwrap());
        let mut cookies = Vec::new();
        for user in ["ann", "bob", "ann"] {
            let r = send_body(&app, "/login", user, None).await;
            assert_eq!(r.status, StatusCode::OK);
            let set = r.header("set-cookie").unwrap();
            cookies.push(set.split(';').next().unwrap().to_owned());
        }
        let work = |i: usize| send_body(&app, "/work", "", Some(&cookies[i]));
        assert_eq!(work(0).await.status, StatusCode::OK);
        assert_eq!(work(1).await.status, StatusCode::OK, "another user");
        assert_eq!(
            work(2).await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "the same user in another session"
        );
        // Anonymous: skipped (missing_key), not refused.
        for _ in 0..3 {
            assert_eq!(send_body(&app, "/work", "", None).await.status, StatusCode::OK);
        }
    }

    a_changed_policy_set_starts_from_fresh_state => |fx| {
        let store = fx.backend();
        let before = [Policy::per_hour(2).fixed_window().named("p")];
        assert!(store.check("c", &before, 2).await.unwrap().allowed);
        assert!(!store.check("c", &before, 1).await.unwrap().allowed);
        // A new quota (a deploy): its own state, not the old one misread.
        let after = [Policy::per_hour(3).fixed_window().named("p")];
        assert_eq!(store.check("c", &after, 1).await.unwrap().policies[0].remaining, 2);
        // Two policies: each has its own numbers in the one value.
        let two = [
            Policy::per_hour(5).named("g"),
            Policy::per_hour(4).sliding_window().named("s"),
        ];
        let d = store.check("c", &two, 1).await.unwrap();
        assert_eq!((d.policies[0].remaining, d.policies[1].remaining), (4, 3));
        let d = store.check("c", &two, 2).await.unwrap();
        assert_eq!((d.policies[0].remaining, d.policies[1].remaining), (2, 1));
    }

    rules_are_counted_apart => |fx| {
        let make = |name: &str| {
            app(RateLimitLayer::builder(fx.counting())
                .rule(Rule::any().policy(Policy::per_minute(1).named("p")).named(name))
                .build()
                .unwrap())
        };
        let (a, b) = (make("a"), make("b"));
        assert_eq!(get_from(&a, "/free", "192.0.2.1:1").await.status, StatusCode::OK);
        assert_eq!(get_from(&b, "/free", "192.0.2.1:1").await.status, StatusCode::OK);
        assert_eq!(get_from(&a, "/free", "192.0.2.1:1").await.status, StatusCode::TOO_MANY_REQUESTS);
        let keys: HashSet<String> = fx.tb.keys("rl:*").into_iter().collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
    }
}
