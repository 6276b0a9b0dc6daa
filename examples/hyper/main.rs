//! The four layers over a plain hyper 1 server, no axum:
//! `cargo run --example hyper`, then `curl -si localhost:3001/hello`.
//!
//! `REDIS_URL` switches from the memory backend to Redis; `PORT` changes
//! the port (default 3001). The stack itself is in `stack.rs`, which
//! `tests/hyper.rs` serves and drives over HTTP.

use std::net::SocketAddr;

use redis_layers::Backend;

mod stack;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let backend = Backend::from_env_or_memory("example-hyper")?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    stack::serve(listener, backend).await
}
