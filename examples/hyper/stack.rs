//! The four layers stacked with `tower::ServiceBuilder` in front of a
//! plain `service_fn`, served by hyper 1 through hyper-util. Rate-limit
//! rules are keyed by path (there is no axum `MatchedPath` here).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use redis_layers::cache::CacheLayer;
use redis_layers::idempotency::{IdempotencyLayer, Scope};
use redis_layers::rate_limit::{Policy, RateLimitLayer, Rule};
use redis_layers::session::{Session, SessionLayer};
use redis_layers::Backend;
use tower::ServiceBuilder;

/// The handler: a few routes by path.
async fn handle<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: Body<Data = Bytes>,
{
    let session = req.extensions().get::<Session>().cloned();
    let (status, headers, body): (StatusCode, Vec<(&str, String)>, String) =
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/hello") => (StatusCode::OK, vec![], "hello".into()),
            (&Method::GET, "/visits") => {
                let Some(session) = session else {
                    return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, "no session layer"));
                };
                let n: u64 = session.get("n").await.ok().flatten().unwrap_or(0) + 1;
                let _ = session.insert("n", n);
                (StatusCode::OK, vec![], n.to_string())
            }
            (&Method::GET, "/cached") => {
                let n = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                (
                    StatusCode::OK,
                    vec![("cache-control", "public, max-age=60".into())],
                    format!("made at {n}"),
                )
            }
            (&Method::POST, "/orders") => {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let n = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                (
                    StatusCode::CREATED,
                    vec![("location", format!("/orders/{n:x}"))],
                    format!("order {n:x} for {}", String::from_utf8_lossy(&body)),
                )
            }
            _ => (StatusCode::NOT_FOUND, vec![], "not found".into()),
        };
    let mut res = plain(status, &body);
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            res.headers_mut().insert(name, value);
        }
    }
    Ok(res)
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *res.status_mut() = status;
    res
}

/// Serves the stack on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Backend,
) -> Result<(), Box<dyn std::error::Error>> {
    let limits = RateLimitLayer::builder(backend.clone())
        .rule(Rule::route("/hello").policy(Policy::per_minute(5).named("hello")))
        .build()?;
    let cache = CacheLayer::new(backend.clone());
    let sessions = SessionLayer::builder(backend.clone())
        .secure(false)
        .build()?;
    let idempotency = IdempotencyLayer::builder(backend, Scope::header("x-api-key"))
        .lease(Duration::from_secs(30))
        .build()?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let service = ServiceBuilder::new()
            // The peer's address, as the rate limit's client key.
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert::<SocketAddr>(peer);
                req
            })
            .layer(limits.clone())
            .layer(cache.clone())
            .layer(sessions.clone())
            .layer(idempotency.clone())
            .service_fn(handle);
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}
