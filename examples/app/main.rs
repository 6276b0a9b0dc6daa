//! The example web app: `cargo run --example app`, then open http://127.0.0.1:3000.
//!
//! - `PORT` changes the port (default 3000).
//! - `REDIS_URL` (e.g. `redis://127.0.0.1:6379`) switches from the in-process
//!   memory backend to Redis; run two copies on different ports against one
//!   Redis and a session works on both.
//! - `RUST_LOG` sets the log filter (default `info`).
//!
//! Pages: a visit counter (`/`), login with any user name (the session id is
//! renewed), logout, and an account page listing the user's sessions with
//! buttons to revoke one or all others; `/api/time`, a JSON endpoint.
//!
//! Rate limits: login attempts per client address (the layer) and per user
//! name (a check in the handler, since the name is in the body); the API
//! per `X-API-Key`, else per address. Try
//! `for i in $(seq 12); do curl -si localhost:3000/api/time | head -1; done`.
//!
//! Caching: the shop (`/products`, `/products/{id}`) is public and cached
//! for a minute, tagged per product; a logged-in user can change a price,
//! which purges that product's tag, so every instance shows the new price
//! at once. Watch `Cache-Status`:
//! `curl -si localhost:3000/products/1 | grep -i cache-status` (twice).
//!
//! Idempotency: `POST /api/orders` needs an `Idempotency-Key` (and an
//! `X-API-Key`, whose holder the key belongs to); a retry replays the
//! order, a concurrent duplicate gets 409, another body with the same key
//! 422:
//! `curl -si -X POST -H 'X-API-Key: demo' -H 'Idempotency-Key: "o-1"' -d '{"item":1}' localhost:3000/api/orders`

use std::net::SocketAddr;

use redis_layers::Backend;

mod routes;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // Redis when REDIS_URL is set, else the in-process memory backend.
    let backend = Backend::from_env_with_prefix("example-app")?;
    if let Err(e) = backend.ping().await {
        tracing::warn!(error = %e, "Redis is not answering yet; requests will retry");
    }

    // COOKIE_SECURE=1 when served over https (e.g. behind a TLS proxy).
    let secure = std::env::var("COOKIE_SECURE").is_ok_and(|v| v == "1" || v == "true");
    let app = routes::router(backend, secure)?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on http://{addr}");
    // With the peer's address: the rate limits key on it.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
    tracing::info!("Ctrl-C received, shutting down");
}
