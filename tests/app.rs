//! The example app end to end: its router served on a free port, driven
//! over real HTTP/1.1 connections by a small client with a cookie jar, on
//! Redis and on the memory backend; and two instances sharing one Redis.

#[path = "support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../examples/app/routes.rs"]
mod routes;

mod app_server;

use app_server::{serve, serve_with};
use support::http::Client;
use support::{Kind, TestBackend};

const LOGIN_ALICE: &str = "user=alice&password=wonderland";

/// The handle of the first session on an account page that is not this one.
fn other_session(account: &str) -> Option<String> {
    let marker = "action=\"/account/revoke/";
    let at = account.find(marker)? + marker.len();
    Some(
        account[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect(),
    )
}

async fn every_flow(kind: Kind) {
    let tb = TestBackend::new(kind);
    let addr = serve(tb.backend.clone()).await;

    // Health; an anonymous visit stores nothing and sets no cookie.
    let mut alice = Client::new(addr);
    assert_eq!(alice.get("/healthz").await.status, 200);
    let r = alice.get("/").await;
    assert!(r.body.contains("Not logged in"), "{}", r.body);
    assert_eq!(r.header("set-cookie"), None);

    // A wrong password is refused, and an unknown user the same way.
    let wrong = alice.form("/login", "user=alice&password=nope").await;
    assert_eq!(wrong.status, 401);
    let unknown = alice.form("/login", "user=carol&password=wonderland").await;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        wrong.body.replace("value=\"alice\"", "value=\"carol\""),
        unknown.body,
        "an unknown user is refused with the same page"
    );
    assert!(wrong.body.contains("Wrong user name or password"));
    // Logged in as bob, then as alice: a new session id, and bob's old
    // cookie opens nothing.
    assert_eq!(
        alice
            .form("/login", "user=bob&password=builder")
            .await
            .status,
        303
    );
    let before = alice.jar.clone();
    assert!(!before.is_empty(), "bob's session cookie");
    let r = alice.form("/login", LOGIN_ALICE).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/account"));
    assert_ne!(alice.jar, before, "a new session id at login");
    let mut old = Client::new(addr);
    old.jar = before;
    assert_eq!(old.get("/account").await.status, 303, "the old id is dead");
    let account = alice.get("/account").await;
    assert!(
        account.body.contains("Sessions of alice"),
        "{}",
        account.body
    );
    assert!(account.body.contains("this session"));
    assert_eq!(account.header("cache-control"), Some("no-store"));
    // The visit counter lives in the logged-in session.
    assert!(alice
        .get("/")
        .await
        .body
        .contains("Visits in this session: <b>1</b>"));
    let home = alice.get("/").await;
    assert!(home.body.contains("Visits in this session: <b>2</b>"));
    assert_eq!(home.header("cache-control"), Some("no-store"));

    // A second device; the first revokes it; it is logged out.
    let mut phone = Client::new(addr);
    assert_eq!(phone.form("/login", LOGIN_ALICE).await.status, 303);
    let account = alice.get("/account").await;
    let handle = other_session(&account.body).expect("the phone's session is listed");
    assert_eq!(
        alice
            .form(&format!("/account/revoke/{handle}"), "")
            .await
            .status,
        303
    );
    let r = phone.get("/account").await;
    assert_eq!(r.status, 303, "revoked: back to the login page");
    assert_eq!(r.header("location"), Some("/login"));

    // A bad user name is a 400 page that echoes it escaped.
    let r = alice.form("/login", "user=%3Cscript%3E&password=x").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("value=\"&lt;script&gt;\""), "{}", r.body);
    assert!(!r.body.contains("<script>"));

    // The API's rate limit, with its fields.
    let mut api = Client::new(addr);
    let mut last = None;
    for _ in 0..11 {
        last = Some(
            api.send("GET", "/api/time", &[("X-API-Key", "alpha")], "")
                .await,
        );
    }
    let r = last.unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert!(r.header("ratelimit").unwrap().contains("\"api\";r=0"));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let other_key = api
        .send("GET", "/api/time", &[("X-API-Key", "beta")], "")
        .await;
    assert_eq!(other_key.status, 200, "another API key has its own budget");

    // Cache: miss, hit, price change purges, miss with the new price.
    let mut shopper = Client::new(addr);
    let r = shopper.get("/products/1").await;
    assert!(r.header("cache-status").unwrap().contains("fwd=uri-miss"));
    let hit = loop {
        let r = shopper.get("/products/1").await;
        if r.header("cache-status").unwrap().contains("hit") {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(hit.body.contains("4.50"), "{}", hit.body);
    assert_eq!(
        alice
            .form("/admin/products/1/price", "cents=777")
            .await
            .status,
        303
    );
    let r = shopper.get("/products/1").await;
    assert!(!r.header("cache-status").unwrap().contains("hit"));
    assert!(r.body.contains("7.77"), "{}", r.body);
    // The home page says so, once.
    let home = alice.get("/").await.body;
    assert!(home.contains("class=\"flash success\""), "{home}");
    assert!(home.contains("product 1 is now"), "{home}");
    assert!(!alice.get("/").await.body.contains("is now"), "shown once");
    // Not logged in: no price change.
    assert_eq!(
        shopper
            .form("/admin/products/1/price", "cents=1")
            .await
            .status,
        303
    );
    assert!(shopper.get("/products/1").await.body.contains("7.77"));
    // Logged in but not an administrator: 403, no price change.
    let mut bob = Client::new(addr);
    assert_eq!(
        bob.form("/login", "user=bob&password=builder").await.status,
        303
    );
    let r = bob.form("/admin/products/1/price", "cents=1").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(shopper.get("/products/1").await.body.contains("7.77"));

    // Every page, cached or not, refuses to be framed and sniffed.
    for path in [
        "/",
        "/products",
        "/products",
        "/products/1",
        "/login",
        "/nowhere",
    ] {
        let r = shopper.get(path).await;
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp:?}");
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("unsafe"),
            "{path}: {csp:?}"
        );
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }

    // Orders: replay, 422, missing key.
    let mut buyer = Client::new(addr);
    let order = |key: &'static str| {
        [
            ("X-API-Key", "gamma"),
            ("Idempotency-Key", key),
            ("Content-Type", "application/json"),
        ]
    };
    let first = buyer
        .send("POST", "/api/orders", &order("\"o-1\""), "{\"item\":1}")
        .await;
    assert_eq!(first.status, 201);
    let again = buyer
        .send("POST", "/api/orders", &order("\"o-1\""), "{\"item\":1}")
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), first.header("location"));
    let other = buyer
        .send("POST", "/api/orders", &order("\"o-1\""), "{\"item\":2}")
        .await;
    assert_eq!(other.status, 422);
    let none = buyer
        .send("POST", "/api/orders", &[("X-API-Key", "gamma")], "{}")
        .await;
    assert_eq!(none.status, 400);
    // Concurrent duplicates: one order, the rest wait-free 409s or replays.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = Client::new(addr);
        tasks.push(tokio::spawn(async move {
            c.send(
                "POST",
                "/api/orders",
                &[
                    ("X-API-Key", "delta"),
                    ("Idempotency-Key", "o-2"),
                    ("Content-Type", "application/json"),
                ],
                "{\"item\":3,\"quantity\":2}",
            )
            .await
        }));
    }
    let mut created = std::collections::HashSet::new();
    let mut conflicts = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => {
                created.insert(r.header("location").unwrap().to_owned());
            }
            409 => {
                assert!(r.header("retry-after").is_some());
                conflicts += 1;
            }
            s => panic!("{s}: {}", r.body),
        }
    }
    assert_eq!(created.len(), 1, "one order for one key: {created:?}");
    assert!(conflicts >= 1, "duplicates during the order get 409");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_on_redis() {
    every_flow(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_on_memory() {
    every_flow(Kind::Memory).await;
}

/// `/metrics`: Prometheus's text format, neither rate-limited nor cached;
/// with the `metrics` feature it shows the layers' counters moving.
#[tokio::test]
async fn metrics_are_served_unlimited_and_uncached() {
    let fx = TestBackend::new(Kind::Memory);
    let addr = serve(fx.backend.clone()).await;
    let mut c = Client::new(addr);
    for _ in 0..3 {
        assert_eq!(c.get("/api/time").await.status, 200);
    }
    // Scraped more often than any limit allows: never refused.
    for _ in 0..12 {
        assert_eq!(c.get("/metrics").await.status, 200);
    }
    let r = c.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(r.header("cache-status"), None, "not through the cache");
    assert_eq!(r.header("ratelimit"), None, "not through the rate limiter");
    // Another machine's scraper gets nothing.
    let router = routes::router(fx.backend.clone(), false, &["shop.test".to_owned()]).unwrap();
    let mut req = http::Request::get("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(
        "192.0.2.7:5000".parse::<std::net::SocketAddr>().unwrap(),
    ));
    let res = tower::ServiceExt::oneshot(router.clone(), req)
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // Nor a peer the server cannot tell.
    let req = http::Request::get("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(router, req).await.unwrap();
    assert_eq!(res.status(), 404);
    #[cfg(feature = "metrics")]
    {
        assert!(r.body.contains("redis_layers_requests_total"), "{}", r.body);
        assert!(r.body.contains("layer=\"rate_limit\""), "{}", r.body);
        assert!(
            r.body.contains("redis_layers_rate_limit_rule_total"),
            "{}",
            r.body
        );
    }
}

/// Over https (`COOKIE_SECURE=1`) the session cookie has a `__Host-`
/// name: browsers take it only `Secure`, host-only, for the whole path.
#[tokio::test]
async fn the_secure_session_cookie_is_a_host_cookie() {
    let fx = TestBackend::new(Kind::Memory);
    let addr = serve_with(fx.backend.clone(), true).await;
    let mut alice = Client::new(addr);
    let r = alice.form("/login", LOGIN_ALICE).await;
    assert_eq!(r.status, 303);
    let cookie = r.header("set-cookie").expect("a session cookie");
    assert!(
        cookie.starts_with(&format!("{}=", routes::SECURE_COOKIE_NAME)),
        "{cookie}"
    );
    assert!(routes::SECURE_COOKIE_NAME.starts_with("__Host-"));
    assert!(
        cookie.contains("Secure") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_redis() {
    let tb = TestBackend::new(Kind::Redis);
    let a = serve(tb.backend.clone()).await;
    let b = serve(tb.backend.clone()).await;

    // A session made on one is valid on the other (alice: an
    // administrator, who may change prices below).
    let mut on_a = Client::new(a);
    assert_eq!(on_a.form("/login", LOGIN_ALICE).await.status, 303);
    let mut on_b = on_a.on(b);
    assert!(on_b
        .get("/account")
        .await
        .body
        .contains("Sessions of alice"));

    // A purge on one is seen by the other.
    let mut shopper = Client::new(b);
    shopper.get("/products/2").await;
    loop {
        let r = shopper.get("/products/2").await;
        if r.header("cache-status").unwrap().contains("hit") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        on_a.form("/admin/products/2/price", "cents=111")
            .await
            .status,
        303
    );
    // B hears of the purge over pub/sub (its local tier drops the page).
    let started = std::time::Instant::now();
    loop {
        let r = shopper.get("/products/2").await;
        if r.body.contains("1.11") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "B still shows {}",
            r.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // An order made on one replays on the other.
    let h = [
        ("X-API-Key", "alpha"),
        ("Idempotency-Key", "shared"),
        ("Content-Type", "application/json"),
    ];
    let first = Client::new(a)
        .send("POST", "/api/orders", &h, "{\"item\":2}")
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = Client::new(b)
        .send("POST", "/api/orders", &h, "{\"item\":2}")
        .await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);

    // New orders of one account run one at a time across both instances
    // (each takes the demo's 150 ms): four at once take four turns.
    let started = std::time::Instant::now();
    let orders = (0..4).map(|i| {
        let addr = if i % 2 == 0 { a } else { b };
        let key = format!("turn-{i}");
        async move {
            let h = [
                ("X-API-Key", "gamma"),
                ("Idempotency-Key", key.as_str()),
                ("Content-Type", "application/json"),
            ];
            Client::new(addr)
                .send("POST", "/api/orders", &h, "{\"item\":1}")
                .await
                .status
        }
    });
    let statuses = futures_util::future::join_all(orders).await;
    assert_eq!(statuses, [201; 4]);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(600),
        "one at a time: {:?}",
        started.elapsed()
    );

    // The rate limit is one budget across both.
    let mut statuses = Vec::new();
    for i in 0..11 {
        let addr = if i % 2 == 0 { a } else { b };
        statuses.push(
            Client::new(addr)
                .send("GET", "/api/time", &[("X-API-Key", "beta")], "")
                .await
                .status,
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.last().map(|s| s.as_u16()), Some(429));
}

/// Other spellings of a product page's URL (the id zero-padded, signed,
/// percent-encoded; a query) are sent to the canonical path with a 308
/// that is not stored: the cache holds one entry for the product however
/// many spellings clients make up.
async fn one_cache_entry_per_product(kind: Kind) {
    let tb = TestBackend::new(kind);
    let addr = serve(tb.backend.clone()).await;
    let mut c = Client::new(addr);
    let entries = || tb.keys("cache:*:e");
    let r = c.get("/products/1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let started = std::time::Instant::now();
    while entries().is_empty() {
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let spellings = [
        "/products/01",
        "/products/001",
        "/products/+1",
        "/products/%31",
        "/products/0000000001",
        "/products/%2B01",
        "/products/01?utm=x",
    ];
    for spelling in spellings {
        for attempt in 1..=2 {
            let r = c.get(spelling).await;
            let what = format!("{spelling}, attempt {attempt}");
            assert_eq!(r.status, 308, "{what}: {}", r.body);
            assert_eq!(r.header("location"), Some("/products/1"), "{what}");
            assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
            let cache_status = r.header("cache-status").unwrap_or_default();
            assert!(
                !cache_status.contains("stored") && !cache_status.contains("hit"),
                "{what}: {cache_status}"
            );
        }
    }
    // Unknown ids stay 404s, however written.
    for path in ["/products/04", "/products/+0", "/products/%34"] {
        assert_eq!(c.get(path).await.status, 404, "{path}");
    }
    // Made-up hosts get the page, never a cache entry of their own.
    for i in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req =
            format!("GET /products/1 HTTP/1.1\r\nHost: x{i}.example\r\nConnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out)
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("detail=host"), "{out}");
    }
    // A copy stored late would show here (stores finish after the reply).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(entries().len(), 1, "one entry: {:?}", entries());
    let r = c.get("/products/1").await;
    assert_eq!(r.status, 200);
    assert!(r.header("cache-status").unwrap().contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cache_entry_per_product_on_redis() {
    one_cache_entry_per_product(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cache_entry_per_product_on_memory() {
    one_cache_entry_per_product(Kind::Memory).await;
}

/// Asserts `r` is the store-failure problem with `status`, `no-store`, not
/// stored by the cache, and without `wrong` (the catalogue's default price).
#[track_caller]
fn price_failure(r: &support::http::Reply, status: u16, wrong: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
    let cache_status = r.header("cache-status").unwrap_or_default();
    assert!(!cache_status.contains("stored"), "{what}: {cache_status}");
    assert!(
        !r.body.contains(wrong),
        "{what} shows the default price: {}",
        r.body
    );
}

/// A price the store answers with an error for (a hash where the price
/// string belongs: `GET` fails with WRONGTYPE) is a 500 problem, never the
/// catalogue's default price; nothing is cached, so once the key holds a
/// price again the pages show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_price_is_an_error_and_nothing_is_cached() {
    let tb = TestBackend::new(Kind::Redis);
    let addr = serve(tb.backend.clone()).await;
    let key = tb.backend.namespace().key(&["shop", "price", "2"]);
    let _: i64 = tb.server().cmd(&["HSET", &key, "cents", "555"]);
    let mut c = Client::new(addr);
    for path in ["/products/2", "/products"] {
        for attempt in 1..=2 {
            let r = c.get(path).await;
            price_failure(&r, 500, "3.20", &format!("{path}, attempt {attempt}"));
        }
    }
    let _: i64 = tb.server().cmd(&["DEL", &key]);
    let _: String = tb.server().cmd(&["SET", &key, "555"]);
    for path in ["/products/2", "/products"] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.body.contains("5.55"), "{path}: {}", r.body);
        assert!(!r.body.contains("3.20"), "{path}: {}", r.body);
    }
}

/// With Redis down, the product pages are a 503 problem (the client may
/// retry; the cache layer would serve its last good page if it had a
/// stale one), never the default price; back up, they show the stored one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_read_with_redis_down_is_a_503() {
    let mut tb = TestBackend::with_deadline(Kind::Redis, std::time::Duration::from_millis(300));
    let addr = serve(tb.backend.clone()).await;
    let key = tb.backend.namespace().key(&["shop", "price", "3"]);
    let mut c = Client::new(addr);
    tb.server.as_mut().unwrap().kill();
    for path in ["/products/3", "/products"] {
        let r = c.get(path).await;
        price_failure(&r, 503, "8.90", path);
    }
    // Back up, empty, with a price stored for product 3.
    tb.server.as_mut().unwrap().restart();
    let _: String = tb.server().cmd(&["SET", &key, "999"]);
    let started = std::time::Instant::now();
    for path in ["/products/3", "/products"] {
        loop {
            let r = c.get(path).await;
            if r.status == 200 {
                assert!(r.body.contains("9.99"), "{path}: {}", r.body);
                assert!(!r.body.contains("8.90"), "{path}: {}", r.body);
                break;
            }
            price_failure(&r, 503, "8.90", path);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{path} still fails after Redis is back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Asserts `r` is a client error in the form its route promises: a small
/// HTML page (pages) or problem+json (the API), never markup it was sent.
#[track_caller]
fn client_error(r: &support::http::Reply, status: u16, api: bool, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    let want = if api {
        "application/problem+json"
    } else {
        "text/html; charset=utf-8"
    };
    assert_eq!(r.header("content-type"), Some(want), "{what}");
    assert!(
        !r.body.contains("<script>"),
        "{what} echoed markup: {}",
        r.body
    );
}

/// Every form and API route answers malformed input with a 4xx page or
/// problem+json, over HTTP; nothing a client sends gets a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_4xx_answers() {
    let tb = TestBackend::new(Kind::Memory);
    let addr = serve(tb.backend.clone()).await;
    let mut c = Client::new(addr);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let json = |key: &'static str| {
        [
            ("X-API-Key", "demo"),
            ("Idempotency-Key", key),
            ("Content-Type", "application/json"),
        ]
    };
    let huge = "a".repeat(routes::MAX_BODY_BYTES + 1);

    // Login (under its per-address limit of 10 in a burst).
    let r = c.form("/login", "password=x").await;
    client_error(&r, 422, false, "login without a user name");
    let r = c.form("/login", "user=alice").await;
    client_error(&r, 422, false, "login without a password");
    let r = c.send("POST", "/login", &[], "user=alice&password=x").await;
    client_error(&r, 415, false, "login without a content type");
    let r = c
        .send("POST", "/login", &form, b"user=%FF%FE&password=x")
        .await;
    assert!(
        r.status == 400 || r.status == 422,
        "not UTF-8: {}",
        r.status
    );
    let r = c
        .form("/login", &format!("user=alice&password={huge}"))
        .await;
    client_error(&r, 413, false, "a huge login form");
    let r = c
        .form("/login", &format!("user={}&password=x", "a".repeat(65)))
        .await;
    client_error(&r, 400, false, "a 65-character user name");
    let r = c
        .form(
            "/login",
            "user=%3Cscript%3Ealert(1)%3C%2Fscript%3E&password=x",
        )
        .await;
    client_error(&r, 400, false, "markup in a user name");
    assert!(r.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let r = c
        .form(
            "/login",
            &format!("user=alice&password={}", "p".repeat(300)),
        )
        .await;
    client_error(&r, 401, false, "a password over the length limit");

    // The price form (logged in) and product paths.
    let mut admin = Client::new(addr);
    assert_eq!(admin.form("/login", LOGIN_ALICE).await.status, 303);
    let r = admin.form("/admin/products/1/price", "cents=-5").await;
    client_error(&r, 422, false, "a negative price");
    let r = admin.form("/admin/products/1/price", "cents=2000000").await;
    client_error(&r, 400, false, "a price over the limit");
    let r = admin.form("/admin/products/1/price", "").await;
    client_error(&r, 422, false, "no price");
    let r = admin.form("/admin/products/999/price", "cents=5").await;
    client_error(&r, 404, false, "an unknown product");
    let r = admin.form("/admin/products/abc/price", "cents=5").await;
    client_error(&r, 404, false, "a product id that is not a number");
    let r = c.get("/products/abc").await;
    client_error(&r, 404, false, "a product page that is not a number");
    let r = c.get("/products/99999999999999999999").await;
    client_error(&r, 404, false, "a product id past u32");
    let r = admin.form("/account/revoke/%3Cscript%3E", "").await;
    client_error(&r, 404, false, "revoking a session that does not exist");
    let r = admin.form("/account/revoke/%FF", "").await;
    client_error(&r, 404, false, "a session handle that is not UTF-8");

    // Cross-site form posts are refused; same-origin ones pass.
    let r = admin
        .send("POST", "/logout", &[("Origin", "http://evil.example")], "")
        .await;
    client_error(&r, 403, false, "a post from another origin");
    let r = admin
        .send("POST", "/logout", &[("Sec-Fetch-Site", "cross-site")], "")
        .await;
    client_error(&r, 403, false, "a post a browser marks cross-site");
    let r = admin
        .send("POST", "/logout", &[("Sec-Fetch-Site", "same-site")], "")
        .await;
    client_error(&r, 403, false, "a post from a sibling site");
    assert_eq!(admin.get("/account").await.status, 200, "still logged in");
    let r = admin
        .send("POST", "/logout", &[("Origin", "http://shop.test")], "")
        .await;
    assert_eq!(r.status, 303, "same origin: logged out");

    // A client that sends neither header needs the session's token, which
    // the account page's forms carry.
    let mut script = Client::new(addr);
    assert_eq!(script.form("/login", LOGIN_ALICE).await.status, 303);
    script.browser = false;
    let r = script.form("/logout", "").await;
    client_error(&r, 403, false, "a post with no origin and no token");
    assert!(r.body.contains("CSRF token"), "{}", r.body);
    let page = script.get("/account").await.body;
    let marker = "name=\"csrf_token\" value=\"";
    let start = page
        .find(marker)
        .expect("a token in the account page's forms")
        + marker.len();
    let token = &page[start..start + 43];
    let r = script.form("/logout", &format!("csrf_token={token}")).await;
    assert_eq!(r.status, 303, "the session's token: logged out");
    let home = script.get("/").await.body;
    assert!(home.contains("You are logged out."), "{home}");
    assert!(!home.contains("Logged in as"), "{home}");
    assert!(
        !script.get("/").await.body.contains("logged out"),
        "shown once"
    );
    let r = script.form("/logout", &format!("csrf_token={token}")).await;
    client_error(&r, 403, false, "the ended session's token");

    // Orders need a known API key; nothing is claimed for another.
    let r = c
        .send(
            "POST",
            "/api/orders",
            &[
                ("X-API-Key", "made-up"),
                ("Idempotency-Key", "\"u-1\""),
                ("Content-Type", "application/json"),
            ],
            "{\"item\":1}",
        )
        .await;
    client_error(&r, 401, true, "an unknown API key");
    assert!(tb.keys("idem:*").is_empty(), "no record for an unknown key");

    // Unknown paths and wrong methods: a page, or problem+json under /api/.
    let r = c.get("/nowhere/%3Cscript%3E").await;
    client_error(&r, 404, false, "an unknown page");
    let r = c.get("/api/nowhere").await;
    client_error(&r, 404, true, "an unknown API route");
    let r = c.send("DELETE", "/login", &[], "").await;
    client_error(&r, 405, false, "DELETE on a page");
    assert!(r.header("allow").is_some_and(|a| a.contains("POST")));
    let r = c.send("PUT", "/api/orders", &[], "").await;
    client_error(&r, 405, true, "PUT on the API");

    // Orders.
    let r = c
        .send("POST", "/api/orders", &json("\"h-1\""), "{\"item\":")
        .await;
    client_error(&r, 400, true, "broken JSON");
    let r = c
        .send(
            "POST",
            "/api/orders",
            &json("\"h-2\""),
            "{\"item\":\"tea\"}",
        )
        .await;
    client_error(&r, 422, true, "a string for a number");
    let r = c
        .send("POST", "/api/orders", &json("\"h-3\""), "{\"item\":42}")
        .await;
    client_error(&r, 422, true, "an unknown product");
    let r = c
        .send(
            "POST",
            "/api/orders",
            &json("\"h-4\""),
            "{\"item\":1,\"quantity\":0}",
        )
        .await;
    client_error(&r, 422, true, "a zero quantity");
    let r = c
        .send(
            "POST",
            "/api/orders",
            &json("\"h-5\""),
            b"{\"item\":\xff}".as_slice(),
        )
        .await;
    client_error(&r, 400, true, "not UTF-8");
    let r = c
        .send(
            "POST",
            "/api/orders",
            &[("X-API-Key", "demo"), ("Idempotency-Key", "\"h-6\"")],
            "{\"item\":1}",
        )
        .await;
    client_error(&r, 415, true, "JSON without its content type");
    let r = c
        .send(
            "POST",
            "/api/orders",
            &json("\"h-7\""),
            format!("{{\"x\":\"{huge}\"}}"),
        )
        .await;
    assert!(r.status == 413, "a huge order: {} {}", r.status, r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let r = c
        .send(
            "POST",
            "/api/orders",
            &json("not a structured string"),
            "{\"item\":1}",
        )
        .await;
    client_error(&r, 400, true, "a malformed Idempotency-Key");
    let long_key = format!("\"{}\"", "k".repeat(300));
    let r = c
        .send(
            "POST",
            "/api/orders",
            &[
                ("X-API-Key", "demo"),
                ("Idempotency-Key", long_key.as_str()),
                ("Content-Type", "application/json"),
            ],
            "{\"item\":1}",
        )
        .await;
    client_error(&r, 400, true, "an oversized Idempotency-Key");
}

/// A flood of anonymous requests (cookieless visits, made-up queries,
/// API keys, idempotency keys, paths and user names) stores next to
/// nothing, so it cannot push a logged-in session out of a full memory
/// backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_anonymous_requests_stores_nothing_and_logs_nobody_out() {
    // Small, so that anything stored per request would fill it.
    let memory = redis_layers::memory::MemoryBackend::builder()
        .max_entries(60)
        .build()
        .unwrap();
    let backend = redis_layers::Backend::Memory(memory.clone());
    let addr = serve(backend).await;
    let mut alice = Client::new(addr);
    assert_eq!(alice.form("/login", LOGIN_ALICE).await.status, 303);
    let stored = memory.len();
    assert!(stored <= 5, "a login stores a few keys, not {stored}");

    let flood: Vec<_> = (0..4)
        .map(|task| {
            tokio::spawn(async move {
                for i in 0..40 {
                    let mut anonymous = Client::new(addr);
                    let r = anonymous.get("/").await;
                    assert_eq!(r.status, 200);
                    assert_eq!(
                        r.header("set-cookie"),
                        None,
                        "an anonymous visit sets no cookie"
                    );
                    let r = anonymous.get(&format!("/products?flood={task}-{i}")).await;
                    assert_eq!(r.status, 308, "a query is redirected away");
                    assert_eq!(r.header("location"), Some("/products"));
                    let r = anonymous
                        .get(&format!("/products/1?flood={task}-{i}"))
                        .await;
                    assert_eq!(r.status, 308);
                    let key = format!("made-up-{task}-{i}");
                    let r = anonymous
                        .send("GET", "/api/time", &[("X-API-Key", key.as_str())], "")
                        .await;
                    assert!(r.status == 200 || r.status == 429, "{}", r.status);
                    let idem = format!("\"{task}-{i}\"");
                    let r = anonymous
                        .send(
                            "POST",
                            "/api/orders",
                            &[
                                ("X-API-Key", key.as_str()),
                                ("Idempotency-Key", idem.as_str()),
                                ("Content-Type", "application/json"),
                            ],
                            "{\"item\":1}",
                        )
                        .await;
                    assert!(r.status == 401 || r.status == 429, "{}", r.status);
                    let r = anonymous.get(&format!("/nowhere/{task}/{i}")).await;
                    assert_eq!(r.status, 404);
                    let r = anonymous
                        .form("/login", &format!("user=u{task}x{i}&password=guess"))
                        .await;
                    assert!(r.status == 401 || r.status == 429, "{}", r.status);
                    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
                }
            })
        })
        .collect();
    for t in flood {
        t.await.unwrap();
    }
    // 1,120 requests; what they may store is bounded by the per-address
    // limits: the login and API counters of one address, and a counter
    // for each of the (at most 10) user names the login limit let through.
    let grown = memory.len() - stored;
    assert!(grown <= 20, "the flood stored {grown} keys");
    let account = alice.get("/account").await;
    assert_eq!(account.status, 200, "alice is still logged in");
    assert!(account.body.contains("Sessions of alice"));
}

/// The example binary itself (built by `cargo test` with the other
/// examples): settings errors, the port in use, SIGTERM.
#[cfg(unix)]
mod process {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn app() -> Command {
        let exe = std::env::current_exe().unwrap();
        let examples = exe.parent().unwrap().parent().unwrap().join("examples");
        let path = examples.join(format!("app{}", std::env::consts::EXE_SUFFIX));
        assert!(
            path.exists(),
            "{} is missing: `cargo test` builds it; or run `cargo build --example app`",
            path.display()
        );
        let mut cmd = Command::new(path);
        cmd.env_remove("REDIS_URL")
            .env_remove("HOST")
            .env_remove("PORT")
            .env_remove("COOKIE_SECURE")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `cmd` to its end (bounded) and returns (exit code, stderr).
    fn fails(cmd: &mut Command) -> (Option<i32>, String) {
        let mut child = cmd.spawn().unwrap();
        let started = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("the app did not stop on a bad setting");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn a_bad_setting_is_one_line_naming_the_variable() {
        let (code, err) = fails(app().env("PORT", "abc"));
        assert_eq!(code, Some(2));
        assert_eq!(
            err.trim(),
            "error: PORT must be a number from 0 to 65535, not \"abc\""
        );
        let (code, err) = fails(app().env("HOST", "my host"));
        assert_eq!(code, Some(2));
        assert!(err.contains("HOST must be an IP address"), "{err}");
        let (code, err) = fails(app().env("REDIS_URL", "secret@localhost:6379"));
        assert_eq!(code, Some(2));
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("REDIS_URL must start with redis://"), "{err}");
        assert!(!err.contains("secret"), "the URL is not echoed: {err}");
        let (code, err) = fails(app().env("REDIS_URL", "redis://u:secret@localhost:99999"));
        assert_eq!(code, Some(2));
        assert!(err.contains("REDIS_URL is not a valid Redis URL"), "{err}");
        assert!(!err.contains("secret"), "the URL is not echoed: {err}");
        let (code, err) = fails(app().env("COOKIE_SECURE", "maybe"));
        assert_eq!(code, Some(2));
        assert!(err.contains("COOKIE_SECURE"), "{err}");
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let (code, err) = fails(app().env("PORT", port.to_string()));
        assert_eq!(code, Some(1));
        assert_eq!(
            err.trim(),
            format!("error: port {port} on 127.0.0.1 is already in use: set PORT to another")
        );
    }

    /// A resident set size from `/proc/<pid>/status`, in bytes.
    #[cfg(target_os = "linux")]
    fn rss(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS in /proc/<pid>/status");
        let kib: u64 = line
            .trim_start_matches("VmRSS:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib * 1024
    }

    /// A failed login to the app on `port`, sent from the loopback
    /// address `from` (each address has its own login budget); its status.
    #[cfg(target_os = "linux")]
    async fn failed_login(port: u16, from: std::net::Ipv4Addr, user: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        let mut stream = socket
            .connect((std::net::Ipv4Addr::LOCALHOST, port).into())
            .await
            .unwrap();
        let body = format!("user={user}&password=not-the-password");
        let request = format!(
            "POST /login HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\
             Sec-Fetch-Site: same-origin\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply);
        reply
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"))
    }

    /// Each password check needs 19 MiB for Argon2 and at most a few run
    /// at once; failed logins from many addresses (each under its own
    /// login limit, each a different unknown user name, so every one
    /// hashes) must not leave the process holding memory far past that.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_logins_keep_memory_near_the_argon2_bound() {
        let port = {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            free.local_addr().unwrap().port()
        };
        // Killed however the test ends.
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Kill(
            app()
                .env("PORT", port.to_string())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        let started = Instant::now();
        loop {
            assert!(child.0.try_wait().unwrap().is_none(), "the app exited");
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the app did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The demo users' hashes are made at the first login: before the
        // baseline.
        let warm_up = failed_login(port, std::net::Ipv4Addr::new(127, 0, 0, 1), "warm-up").await;
        assert_eq!(warm_up, 401);
        let before = rss(pid);

        let logins: Vec<_> = (0..200u16)
            .map(|i| {
                tokio::spawn(async move {
                    let from =
                        std::net::Ipv4Addr::new(127, 0, 1 + (i / 200) as u8, (i % 200) as u8 + 1);
                    let sent = Instant::now();
                    let status = failed_login(port, from, &format!("nobody-{i}")).await;
                    (status, sent.elapsed())
                })
            })
            .collect();
        let (mut checked, mut busy) = (0, 0);
        for login in logins {
            let (status, took) = tokio::time::timeout(Duration::from_secs(120), login)
                .await
                .expect("the logins finish")
                .unwrap();
            match status {
                // Checked: a wrong password (none is rate-limited: each
                // address has its own login budget).
                401 => checked += 1,
                // No place left in the checks' line: answered at once.
                503 => {
                    busy += 1;
                    assert!(took < Duration::from_secs(2), "a 503 waited {took:?}");
                }
                other => panic!("a failed login answered {other}"),
            }
        }
        assert!(checked >= 20, "the line's places were checked: {checked}");
        assert!(busy > 0, "200 logins at once overflow the line of 20");
        let after = rss(pid);
        let grown = after.saturating_sub(before);
        const MIB: u64 = 1024 * 1024;
        assert!(
            grown < 128 * MIB,
            "200 failed logins grew the app from {} MiB to {} MiB",
            before / MIB,
            after / MIB
        );
        drop(child);
    }

    #[test]
    fn sigterm_stops_it_gracefully_and_logs_carry_no_colour_codes() {
        let port = {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            free.local_addr().unwrap().port()
        };
        let mut child = app().env("PORT", port.to_string()).spawn().unwrap();
        let started = Instant::now();
        // Up: /healthz answers.
        loop {
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                use std::io::{Read, Write};
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            });
            if up.is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the app did not start"
            );
            assert!(child.try_wait().unwrap().is_none(), "the app exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let stopping = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                stopping.elapsed() < Duration::from_secs(10),
                "the app did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}", out.status);
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(log.contains("SIGTERM received, shutting down"), "{log}");
        assert!(log.contains("stopped"), "{log}");
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in a log file: {log:?}"
        );
    }
}

/// "Remember me" at login: that session's cookie survives a browser
/// restart (a week, the app's absolute timeout); another login's ends with
/// the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_me_makes_one_sessions_cookie_persistent() {
    let tb = TestBackend::new(Kind::Memory);
    let addr = serve(tb.backend.clone()).await;
    let mut remembered = Client::new(addr);
    let r = remembered
        .form("/login", &format!("{LOGIN_ALICE}&remember=on"))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r.header("set-cookie").unwrap();
    let week = 7 * 24 * 3600;
    assert!(
        set.contains(&format!("Max-Age={week}")) || set.contains(&format!("Max-Age={}", week - 1)),
        "{set}"
    );
    assert!(remembered
        .get("/account")
        .await
        .body
        .contains("Sessions of alice"));
    let r = Client::new(addr).form("/login", LOGIN_ALICE).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(!r.header("set-cookie").unwrap().contains("Max-Age"));
}
