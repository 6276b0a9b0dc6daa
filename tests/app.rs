//! The example app end to end: its router served on a free port, driven
//! over real HTTP/1.1 connections by a small client with a cookie jar, on
//! Redis and on the memory backend; and two instances sharing one Redis.

#[path = "support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../examples/app/routes.rs"]
mod routes;

use std::net::SocketAddr;

use support::http::Client;
use support::{Kind, TestBackend};

/// The app on a free loopback port, for as long as the test runs.
async fn serve(backend: redis_layers::Backend) -> SocketAddr {
    let app = routes::router(backend, false).expect("the app's router");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

/// The handle of the first session on an account page that is not this one.
fn other_session(account: &str) -> Option<String> {
    let at = account.find("action=/account/revoke/")? + "action=/account/revoke/".len();
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

    // Health and the visit counter.
    let mut alice = Client::new(addr);
    assert_eq!(alice.get("/healthz").await.status, 200);
    assert!(alice
        .get("/")
        .await
        .body
        .contains("Visits in this session: <b>1</b>"));
    assert!(alice
        .get("/")
        .await
        .body
        .contains("Visits in this session: <b>2</b>"));

    // Login renews the session id; the account lists this session.
    let before = alice.jar.clone();
    let r = alice.form("/login", "user=alice").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/account"));
    assert_ne!(alice.jar, before, "a new session id at login");
    let account = alice.get("/account").await;
    assert!(
        account.body.contains("Sessions of alice"),
        "{}",
        account.body
    );
    assert!(account.body.contains("this session"));

    // A second device; the first revokes it; it is logged out.
    let mut phone = Client::new(addr);
    assert_eq!(phone.form("/login", "user=alice").await.status, 303);
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

    // A bad user name is a problem, not a 500.
    let r = alice.form("/login", "user=%3Cscript%3E").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));

    // The API's rate limit, with its fields.
    let mut api = Client::new(addr);
    let mut last = None;
    for _ in 0..11 {
        last = Some(
            api.send("GET", "/api/time", &[("X-API-Key", "k1")], "")
                .await,
        );
    }
    let r = last.unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert!(r.header("ratelimit").unwrap().contains("\"api\";r=0"));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let other_key = api
        .send("GET", "/api/time", &[("X-API-Key", "k2")], "")
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
    // Not logged in: no price change.
    assert_eq!(
        shopper
            .form("/admin/products/1/price", "cents=1")
            .await
            .status,
        303
    );
    assert!(shopper.get("/products/1").await.body.contains("7.77"));

    // Orders: replay, 422, missing key.
    let mut buyer = Client::new(addr);
    let order = |key: &'static str| [("X-API-Key", "buyer"), ("Idempotency-Key", key)];
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
        .send("POST", "/api/orders", &[("X-API-Key", "buyer")], "{}")
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
                &[("X-API-Key", "buyer-2"), ("Idempotency-Key", "o-2")],
                "{}",
            )
            .await
        }));
    }
    let mut created = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            201 => {
                created.insert(r.header("location").unwrap().to_owned());
            }
            409 => assert!(r.header("retry-after").is_some()),
            s => panic!("{s}: {}", r.body),
        }
    }
    assert_eq!(created.len(), 1, "one order for one key: {created:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_on_redis() {
    every_flow(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_on_memory() {
    every_flow(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_redis() {
    let tb = TestBackend::new(Kind::Redis);
    let a = serve(tb.backend.clone()).await;
    let b = serve(tb.backend.clone()).await;

    // A session made on one is valid on the other.
    let mut on_a = Client::new(a);
    assert_eq!(on_a.form("/login", "user=carol").await.status, 303);
    let mut on_b = on_a.on(b);
    assert!(on_b
        .get("/account")
        .await
        .body
        .contains("Sessions of carol"));

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
    let h = [("X-API-Key", "k"), ("Idempotency-Key", "shared")];
    let first = Client::new(a).send("POST", "/api/orders", &h, "{}").await;
    let again = Client::new(b).send("POST", "/api/orders", &h, "{}").await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);

    // The rate limit is one budget across both.
    let mut statuses = Vec::new();
    for i in 0..11 {
        let addr = if i % 2 == 0 { a } else { b };
        statuses.push(
            Client::new(addr)
                .send("GET", "/api/time", &[("X-API-Key", "shared")], "")
                .await
                .status,
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429));
}
