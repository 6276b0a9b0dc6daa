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
async fn poll_twice<S>(service: S)
where
    S: Service<Request<String>>,
    S::Future: Unpin,
{
    let req = Request::get("http://shop.test/")
        .body(String::new())
        .unwrap();
    poll_twice_with(service, req).await;
}

/// [`poll_twice`] with `req`.
async fn poll_twice_with<S>(mut service: S, req: Request<String>)
where
    S: Service<Request<String>>,
    S::Future: Unpin,
{
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

/// An idempotent POST's request, with its key and scope.
fn order() -> Request<String> {
    Request::post("http://shop.test/orders")
        .header("idempotency-key", "\"k\"")
        .header("x-account", "acme")
        .body("{}".to_owned())
        .unwrap()
}

/// An idempotency layer around a handler whose future is ready at once
/// (so the layer's future is `Unpin` for a request it lets by).
fn idempotency_layer() -> redis_layers::idempotency::IdempotencyLayer {
    use redis_layers::idempotency::{IdempotencyLayer, Scope};
    IdempotencyLayer::new(MemoryBackend::new(), Scope::header("x-account"))
}

fn ready_handler(
    _req: Request<redis_layers::ResponseBody<String>>,
) -> std::future::Ready<Result<Response<String>, Infallible>> {
    std::future::ready(Ok(Response::new("ok".to_owned())))
}

#[tokio::test]
#[should_panic(expected = "polled after it completed")]
async fn the_idempotency_layer_s_for_a_request_it_lets_by() {
    // A GET: the inner service's own future, not boxed.
    let service = idempotency_layer().layer(tower::service_fn(ready_handler));
    poll_twice(service).await;
}

#[tokio::test]
#[should_panic(expected = "polled after it completed")]
async fn the_idempotency_layer_s_for_a_request_it_claims() {
    let service = idempotency_layer().layer(tower::service_fn(ready_handler));
    poll_twice_with(service, order()).await;
}

#[tokio::test]
#[should_panic(expected = "polled after it completed")]
async fn the_lock_layer_s() {
    use redis_layers::lock::{LockKey, LockLayer};
    let layer = LockLayer::builder(MemoryBackend::new(), LockKey::named("one"))
        .build()
        .unwrap();
    let service = layer.layer(tower::service_fn(handler));
    poll_twice(service).await;
}
