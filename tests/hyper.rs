//! The four layers over a plain hyper 1 server (`examples/hyper/`), no
//! axum router: served on a free port and driven over HTTP, on Redis and on
//! the memory backend.

#[path = "support/mod.rs"]
mod support;

#[path = "../examples/hyper/stack.rs"]
mod stack;

use support::http::Client;
use support::{Kind, TestBackend};

async fn drive(kind: Kind) {
    let tb = TestBackend::new(kind);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = tb.backend.clone();
    tokio::spawn(async move {
        stack::serve(listener, backend)
            .await
            .map_err(|e| e.to_string())
    });

    // Rate limit keyed by path and peer address.
    let mut c = Client::new(addr);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(c.get("/hello").await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    let r = c.get("/hello").await;
    assert!(r.header("ratelimit").unwrap().contains("\"hello\";r=0"));
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        c.get("/visits").await.status,
        200,
        "other paths are not limited"
    );

    // Sessions: the cookie comes back and the count goes up.
    let mut v = Client::new(addr);
    assert_eq!(v.get("/visits").await.body, "1");
    assert_eq!(v.get("/visits").await.body, "2");
    assert_eq!(
        Client::new(addr).get("/visits").await.body,
        "1",
        "a new client, a new session"
    );

    // Cache: stored, then a hit with the same body.
    let first = c.get("/cached").await;
    assert!(first.header("cache-status").unwrap().contains("stored"));
    let hit = loop {
        let r = c.get("/cached").await;
        if r.header("cache-status").unwrap().contains("hit") {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(hit.body, first.body);

    // Idempotency: replayed, 422 for another body, 400 without a key.
    let h = [("X-API-Key", "a"), ("Idempotency-Key", "\"k-1\"")];
    let o1 = c.send("POST", "/orders", &h, "tea").await;
    assert_eq!(o1.status, 201);
    let o2 = c.send("POST", "/orders", &h, "tea").await;
    assert_eq!(o2.header("idempotent-replayed"), Some("true"));
    assert_eq!(o2.body, o1.body);
    assert_eq!(c.send("POST", "/orders", &h, "coffee").await.status, 422);
    assert_eq!(
        c.send("POST", "/orders", &[("X-API-Key", "a")], "tea")
            .await
            .status,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_over_plain_hyper_on_redis() {
    drive(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_over_plain_hyper_on_memory() {
    drive(Kind::Memory).await;
}
