//! Composable [tower](https://docs.rs/tower) layers backed by Redis, for
//! services that run as several instances behind a load balancer and share
//! one Redis: sessions, rate limiting, a shared HTTP cache, idempotency
//! keys and distributed locks. They drop into any axum or hyper stack.
//! Every read-modify-write is atomic in Redis, each request costs the
//! fewest round trips possible, every Redis call has a deadline, and the
//! defaults are the safe ones. An in-process [memory] backend with the same
//! semantics serves tests, demos and single instances.
//!
//! | Layer | Module | Feature | Round trips on the hot path |
//! |---|---|---|---|
//! | Sessions with sliding expiry | [`session`] | `session` | a read: 1 `GET` |
//! | CSRF protection for forms (Fetch Metadata, `Origin`, session token) | [`csrf`] | `session` | 0 for browsers; a token check: the session's read |
//! | Rate limiting (GCRA and windows, IETF `RateLimit` fields) | [`rate_limit`] | `rate-limit` | 1 script, 0 for a client known to be refused |
//! | Shared HTTP cache (RFC 9111) | [`cache`] | `cache` | a hit: 1 `GET`, 0 from the local tier |
//! | Idempotency keys (IETF draft) | [`idempotency`] | `idempotency` | a replay: 1 `SET NX GET` |
//! | Distributed locks | [`lock`] | `lock` | 1 `SET NX` to take, 1 script to release |
//!
//! One [`Backend`] serves every layer: [`redis::RedisBackend`] (one node,
//! Cluster, Sentinel; TLS and ACL), or [`memory::MemoryBackend`].
//! [`Backend::from_env`] reads `REDIS_URL` and fails without it;
//! [`Backend::from_env_or_memory`] falls back to memory, loudly.
//!
//! # One example per layer
//!
//! Sessions ([`session`]):
//!
//! ```
//! use axum::{routing::get, Router};
//! use redis_layers::memory::MemoryBackend;
//! use redis_layers::session::{Session, SessionError, SessionLayer};
//!
//! async fn visits(session: Session) -> Result<String, SessionError> {
//!     let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
//!     session.insert("visits", n)?;
//!     Ok(format!("visit {n}"))
//! }
//!
//! let backend = MemoryBackend::new(); // or Backend::from_env()?
//! let app: Router = Router::new()
//!     .route("/", get(visits))
//!     .layer(SessionLayer::new(backend));
//! ```
//!
//! Rate limiting ([`rate_limit`]), by client address unless told otherwise:
//!
//! ```
//! use axum::{routing::post, Router};
//! use redis_layers::memory::MemoryBackend;
//! use redis_layers::rate_limit::{Policy, RateLimitLayer, Rule};
//!
//! # fn run() -> Result<(), redis_layers::Error> {
//! let limits = RateLimitLayer::builder(MemoryBackend::new())
//!     .rule(Rule::route("/login").policy(Policy::per_minute(10).burst(5).named("login")))
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/login", post(|| async { "welcome" }))
//!     .layer(limits);
//! # Ok(()) }
//! # run().unwrap();
//! ```
//!
//! A shared cache ([`cache`]) that stores what the handler says may be
//! stored:
//!
//! ```
//! use axum::{routing::get, Router};
//! use redis_layers::cache::CacheLayer;
//! use redis_layers::memory::MemoryBackend;
//!
//! # fn run() -> Result<(), redis_layers::Error> {
//! let app: Router = Router::new()
//!     .route("/products", get(|| async { ([("cache-control", "public, max-age=60")], "[]") }))
//!     .layer(CacheLayer::builder(MemoryBackend::new()).hosts(["shop.example"]).build()?);
//! # Ok(()) }
//! # run().unwrap();
//! ```
//!
//! Idempotency keys ([`idempotency`]): a retried POST gets the first
//! answer instead of running twice:
//!
//! ```
//! use axum::{routing::post, Router};
//! use redis_layers::idempotency::{IdempotencyLayer, Scope};
//! use redis_layers::memory::MemoryBackend;
//!
//! let orders = IdempotencyLayer::new(MemoryBackend::new(), Scope::header("x-api-key"));
//! let app: Router = Router::new().route("/orders", post(|| async { "created" }).layer(orders));
//! ```
//!
//! Locks ([`lock`]): one request per resource at a time, across instances:
//!
//! ```
//! use axum::{routing::post, Router};
//! use redis_layers::lock::{LockKey, LockLayer};
//! use redis_layers::memory::MemoryBackend;
//!
//! # fn run() -> Result<(), redis_layers::Error> {
//! let lock = LockLayer::builder(MemoryBackend::new(), LockKey::path()).build()?;
//! let app: Router = Router::new()
//!     .route("/tenants/{id}/migrate", post(|| async { "migrated" }))
//!     .layer(lock);
//! # Ok(()) }
//! # run().unwrap();
//! ```
//!
//! # What every layer shares
//!
//! - When the store fails: each builder's `on_store_error` takes a
//!   [`FailurePolicy`]; the defaults and what each choice means are in one
//!   table there.
//! - Refusals (a 429, a session conflict, an idempotency key in flight, a
//!   resource locked, a store down) are problem+json ([`Problem`]); one
//!   `on_refusal` hook restyles them all ([`refusal`]).
//! - Operations: a tracing span per layer per request ([`trace`]), and
//!   metrics behind the `metrics` feature ([`metrics`]).
//!
//! # More
//!
//! The crate's README (on its crates.io page) holds the long material: the example app, the benchmark figures and how they
//! are measured, the Cluster and Sentinel notes, and "Running in
//! production" (TLS and ACL, the Redis settings that matter, alerts).
//! Features: `session`, `rate-limit`, `cache`, `idempotency`, `lock` and
//! `axum` by default; `full` adds `cluster`, `sentinel`, `tls` and
//! `metrics`.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod body;
// Who a request comes from: the rate limiter's keys, idempotency scopes.
// (Each of the two layers uses its own part of it.)
#[cfg(any(feature = "rate-limit", feature = "idempotency"))]
#[allow(dead_code)]
#[cfg_attr(not(feature = "rate-limit"), allow(unreachable_pub))]
mod client_key;
// Unused by a build with only some of the layers that key by digest.
#[cfg(any(
    feature = "rate-limit",
    feature = "cache",
    feature = "idempotency",
    feature = "lock"
))]
#[allow(dead_code)]
mod digest;
mod error;
mod failure;
// Helpers the layers share: unused when every layer feature is off.
#[cfg_attr(not(feature = "session"), allow(dead_code))]
mod headers;
mod keys;
// The lease under locks and the cache's fill lease.
#[allow(dead_code)]
mod failure_log;
#[allow(dead_code)]
mod lease;
#[allow(dead_code)]
pub mod metrics;
mod problem;
// Parts of it are used by some layers only.
#[allow(dead_code)]
pub mod refusal;
// Read by whichever layers are compiled in.
#[allow(dead_code)]
mod request_session;
#[cfg(any(
    feature = "session",
    feature = "rate-limit",
    feature = "cache",
    feature = "idempotency"
))]
mod seam;
#[allow(dead_code)]
mod task;
#[cfg(feature = "test-kit")]
pub mod test_kit;
#[cfg_attr(not(feature = "session"), allow(dead_code))]
mod time;
#[allow(dead_code)]
pub mod trace;

#[cfg(feature = "cache")]
pub mod cache;
#[cfg(feature = "session")]
pub mod csrf;
#[cfg(feature = "idempotency")]
pub mod idempotency;
#[cfg(feature = "lock")]
pub mod lock;
pub mod memory;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
pub mod redis;
#[cfg(feature = "session")]
pub mod session;
#[cfg(feature = "tower-sessions")]
pub mod tower_sessions;

pub use backend::Backend;

/// A boxed, type-erased future (keeps the types of futures that await it
/// shallow).
pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
pub use body::ResponseBody;
#[cfg(any(feature = "rate-limit", feature = "idempotency"))]
pub use client_key::ClientKey;
pub use error::{Error, ErrorKind};
pub use failure::FailurePolicy;
pub use keys::{Namespace, TaggedKeys};
pub use problem::Problem;

/// The README's examples, compiled and run as tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use refusal::{Refusal, RefusalKind};

/// The crates this one is built on, at the versions it uses: build a
/// [`RedisPool`](crate::redis::RedisPool) for
/// [`RedisBackendBuilder::pool`](crate::redis::RedisBackendBuilder::pool)
/// with these, so the types match.
pub mod deps {
    pub use ::bb8;
    pub use ::bb8_redis;
    pub use ::redis;
}
