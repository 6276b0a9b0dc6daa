//! The example web app: `cargo run --example app`, then open
//! http://127.0.0.1:3000 and log in as `alice` / `wonderland`.
//!
//! Settings, from the environment (a bad value stops the app with one line
//! naming it):
//! - `HOST` (default 127.0.0.1) and `PORT` (default 3000).
//! - `REDIS_URL` (e.g. `redis://127.0.0.1:6379`) switches from the in-process
//!   memory backend to Redis; run two copies on different ports against one
//!   Redis and they share sessions, limits, cache purges and orders.
//! - `COOKIE_SECURE=1` when served over https (e.g. behind a TLS proxy):
//!   the session cookie is then `Secure` and named `__Host-shop`.
//! - `RUST_LOG` sets the log filter (default `info`).
//!
//! It stops gracefully on Ctrl-C or SIGTERM: in-flight requests finish.
//!
//! Form posts to pages from another site are refused (403): the browser's
//! `Sec-Fetch-Site` or `Origin` says where they come from.
//!
//! Pages: a visit counter for logged-in users (`/`), login with a demo
//! account (passwords checked against Argon2id hashes; the session id is
//! renewed), logout, and an account page listing the user's sessions with
//! buttons to revoke one or all others; `/api/time`, a JSON endpoint.
//!
//! Rate limits: login attempts per client address (the layer) and per user
//! name (a check in the handler, since the name is in the body); the API
//! per known `X-API-Key` (`demo`, `alpha`, ...), else per address. Try
//! `for i in $(seq 12); do curl -si localhost:3000/api/time | head -1; done`.
//!
//! Caching: the shop (`/products`, `/products/{id}`) is public and cached
//! for a minute, tagged per product; an administrator (alice) can change a price,
//! which purges that product's tag, so every instance shows the new price
//! at once. Watch `Cache-Status`:
//! `curl -si localhost:3000/products/1 | grep -i cache-status` (twice).
//!
//! Idempotency: `POST /api/orders` needs an `Idempotency-Key` (and a
//! known `X-API-Key` such as `demo`, whose holder the key belongs to); a retry replays the
//! order, a concurrent duplicate gets 409, another body with the same key
//! 422:
//! `curl -si -X POST -H 'X-API-Key: demo' -H 'Idempotency-Key: "o-1"' -H 'Content-Type: application/json' -d '{"item":1}' localhost:3000/api/orders`
//!
//! Locks: new orders of one API account run one at a time across every
//! instance (`LockLayer` keyed by `X-API-Key`); a concurrent one waits up
//! to 2 s, then gets 409 with `Retry-After`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use redis_layers::Backend;

mod config;
mod routes;

fn main() -> ExitCode {
    let config = match config::Config::from_env() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: config::Config) -> Result<(), String> {
    // Redis when REDIS_URL is set, else the in-process memory backend
    // (said at warn level: a demo's default, not a deployment's).
    let backend = Backend::from_env_or_memory("example-app").map_err(|e| e.to_string())?;
    if let Err(e) = backend.ping().await {
        tracing::warn!(error = %e, "Redis is not answering yet; requests will retry");
    }
    let addr = config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!(
                    "port {} on {} is already in use: set PORT to another",
                    addr.port(),
                    addr.ip()
                )
            }
            _ => format!("cannot listen on {addr}: {e}"),
        })?;
    // The port the system chose when PORT=0.
    let addr = listener.local_addr().unwrap_or(addr);
    let hosts = if config.public_hosts.is_empty() {
        vec![
            format!("localhost:{}", addr.port()),
            format!("127.0.0.1:{}", addr.port()),
        ]
    } else {
        config.public_hosts.clone()
    };
    let app = routes::router(backend, config.secure_cookies, &hosts).map_err(|e| e.to_string())?;
    tracing::info!("listening on http://{addr}");
    // With the peer's address: the rate limits key on it.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(|e| format!("the server stopped: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Ctrl-C or (on Unix) SIGTERM, as sent by `kill`, systemd or Kubernetes.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
