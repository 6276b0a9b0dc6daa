//! The example web app: `cargo run --example app`, then open http://127.0.0.1:3000.
//!
//! - `PORT` changes the port (default 3000).
//! - `REDIS_URL` (e.g. `redis://127.0.0.1:6379`) switches from the in-process
//!   memory backend to Redis.
//! - `RUST_LOG` sets the log filter (default `info`).

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use redis_layers::memory::MemoryBackend;
use redis_layers::redis::RedisBackend;

/// Which store the app runs on.
#[derive(Clone)]
enum Backend {
    Memory(MemoryBackend),
    Redis(RedisBackend),
}

impl Backend {
    fn from_env() -> Result<Self, redis_layers::Error> {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Ok(Backend::Redis(
                RedisBackend::builder()
                    .url(url)
                    .prefix("example-app")
                    .build()?,
            )),
            _ => Ok(Backend::Memory(MemoryBackend::new())),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory (in-process; set REDIS_URL to use Redis)",
            Backend::Redis(_) => "redis",
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let backend = Backend::from_env()?;
    tracing::info!(backend = backend.describe(), "starting");
    if let Backend::Redis(redis) = &backend {
        if let Err(e) = redis.ping().await {
            tracing::warn!(error = %e, "Redis is not answering yet; requests will retry");
        }
    }

    let app = router(backend);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

fn router(backend: Backend) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/health", get(health))
        .with_state(backend)
}

async fn home(State(backend): State<Backend>) -> Html<String> {
    Html(format!(
        "<!doctype html><title>redis-layers example</title>\
         <h1>redis-layers example</h1><p>Backend: {}</p>\
         <p><a href=\"/health\">/health</a></p>",
        backend.describe()
    ))
}

async fn health(State(backend): State<Backend>) -> impl IntoResponse {
    match backend {
        Backend::Memory(memory) => (StatusCode::OK, format!("ok: memory, {} keys", memory.len())),
        Backend::Redis(redis) => match redis.ping().await {
            Ok(()) => (StatusCode::OK, "ok: redis".to_owned()),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("redis unavailable: {e}"),
            ),
        },
    }
}

async fn shutdown_signal() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
    tracing::info!("Ctrl-C received, shutting down");
}
