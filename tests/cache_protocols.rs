//! One page, one cache entry, whatever the protocol: fetched over HTTP/1
//! (whose request line carries no scheme) and over HTTP/2 with `:scheme`
//! `https` (what a client behind TLS sends), from a real server that
//! speaks both, then purged once by URL. On memory and on Redis.

mod support;

use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use redis_layers::cache::CacheLayer;
use support::http::Client;
use support::{Kind, TestBackend};

/// Serves `router` on a free loopback port, HTTP/1 and HTTP/2 (prior
/// knowledge) on the same listener.
async fn serve(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A GET over HTTP/2 for `https://<authority><path>`: `:scheme` https,
/// as a client reaching the server through TLS sends it.
async fn get_h2(addr: std::net::SocketAddr, authority: &str, path: &str) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(format!("https://{authority}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        cache_status,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn one_entry_for_both_protocols(kind: Kind) {
    let tb = TestBackend::new(kind);
    let layer = CacheLayer::new(tb.backend.clone());
    let purger = layer.purger();
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    let router = axum::Router::new()
        .route(
            "/page",
            get(move || {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                async move {
                    (
                        [("cache-control", "public, max-age=60")],
                        format!("page #{n}"),
                    )
                }
            }),
        )
        .layer(layer);
    let addr = serve(router).await;
    // The HTTP/1 client sends `Host: shop.test`; HTTP/2 the same authority.
    let mut h1 = Client::new(addr);
    let first = h1.get("/page").await;
    assert_eq!(first.body, "page #1");

    // Once HTTP/1 hits its entry (written just after the first answer),
    // HTTP/2 finds that same entry.
    for _ in 0..100 {
        if h1.get("/page").await.hit() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, cache_status, body) = get_h2(addr, "shop.test", "/page").await;
    assert_eq!(status, 200);
    assert!(
        cache_status.contains("hit"),
        "HTTP/2 missed HTTP/1's entry: {cache_status}"
    );
    assert_eq!(body, "page #1");

    // One purge by URL, with either scheme, removes it for both.
    assert!(purger
        .purge_url("https://shop.test/page", "shop.test")
        .await
        .unwrap());
    let after = h1.get("/page").await;
    assert!(!after.hit(), "HTTP/1 still hits: {}", after.cache_status());
    assert_eq!(after.body, "page #2");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_page_is_one_entry_over_http1_and_http2_on_memory() {
    one_entry_for_both_protocols(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_page_is_one_entry_over_http1_and_http2_on_redis() {
    one_entry_for_both_protocols(Kind::Redis).await;
}
