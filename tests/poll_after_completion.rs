//! A response future polled again after it completed panics, as tower's
//! own futures do, instead of hanging its caller forever on `Pending`.

use std::convert::Infallible;

use http::{Request, Response};
use redis_layers::cache::CacheLayer;
use redis_layers::memory::MemoryBackend;
use redis_layers::rate_limit::{Policy, RateLimitLayer};
use redis_layers::session::SessionLayer;
use tower::{Layer, Service, ServiceExt};

async fn handler(_req: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("ok".to_owned()))
}

/// Polls the service's future for one request to its end, then again.
async fn poll_twice<S>(mut service: S)
where
    S: Service<Request<String>>,
    S::Future: Unpin,
{
    let req = Request::get("http://shop.test/")
        .body(String::new())
        .unwrap();
    let mut future = service.ready().await.ok().unwrap().call(req);
    let _ = (&mut future).await;
    let _ = (&mut future).await;
}

#[tokio::test]
#[should_panic(expected = "polled after it completed")]
async fn the_rate_limiter_s() {
    let layer = RateLimitLayer::new(MemoryBackend::new(), Policy::per_minute(10));
    let service = layer.layer(tower::service_fn(handler));
    poll_twice(tower::util::BoxService::new(service)).await;
}

#[tokio::test]
#[should_panic(expected = "polled after it completed")]
async fn the_session_layer_s() {
    let layer = SessionLayer::builder(MemoryBackend::new())
        .secure(false)
        .build()
        .unwrap();
    let service = layer.layer(tower::service_fn(handler));
    poll_twice(tower::util::BoxService::new(service)).await;
}

#[tokio::test]
#[should_panic(expected = "polled after it completed")]
async fn the_cache_s() {
    let layer = CacheLayer::builder(MemoryBackend::new()).build().unwrap();
    let service = layer.layer(tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
            bytes::Bytes::from("ok"),
        )))
    }));
    poll_twice(tower::util::BoxService::new(service)).await;
}
