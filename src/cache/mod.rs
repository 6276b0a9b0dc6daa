//! A shared HTTP response cache (RFC 9111) in front of a handler, on Redis
//! or in memory.
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use redis_layers::cache::CacheLayer;
//! use redis_layers::memory::MemoryBackend;
//!
//! async fn products() -> ([(&'static str, &'static str); 1], &'static str) {
//!     // The handler says how long its answer stays fresh for everyone.
//!     ([("cache-control", "public, max-age=60")], "[\"tea\", \"cake\"]")
//! }
//!
//! # fn run() -> Result<(), redis_layers::Error> {
//! let backend = MemoryBackend::new(); // or RedisBackend, or Backend::from_env()?
//! let cache = CacheLayer::builder(backend)
//!     .max_body(256 * 1024)
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/products", get(products))
//!     .layer(cache);
//! # Ok(()) }
//! # run().unwrap();
//! ```
//!
//! # What is stored
//!
//! Responses to `GET` (a `HEAD` is answered from the `GET` entry), as a
//! shared cache may store them (RFC 9111 §3):
//!
//! - the statuses RFC 9110 calls heuristically cacheable (200, 203, 204,
//!   300, 301, 308, 404, 405, 410, 414, 501); another final status only
//!   when listed with
//!   [`cacheable_status`](CacheLayerBuilder::cacheable_status) and the
//!   response states its freshness (so a blanket `Cache-Control` never
//!   keeps a passing 500); never 206 or 304;
//! - never with `no-store` (in the request or the response), `private`
//!   (qualified or not), `Vary: *`, or `Set-Cookie` (unless
//!   [`strip_set_cookie`](CacheLayerBuilder::strip_set_cookie), which
//!   stores the response without it);
//! - with `Authorization` in the request, only when the response says
//!   `public`, `s-maxage` or `must-revalidate`;
//! - freshness from `s-maxage`, then `max-age`, then `Expires` − `Date`,
//!   then 10% of the time since `Last-Modified` (at most a day), then the
//!   layer's [`default_ttl`](CacheLayerBuilder::default_ttl); a response
//!   with none of these is not stored;
//! - `no-cache` responses are not stored in this version (they may only
//!   be used after revalidation, which is not built yet);
//! - bodies up to [`max_body`](CacheLayerBuilder::max_body); a larger
//!   response streams through uncached. The body is copied as it goes to
//!   the client and stored once it has ended; a client that goes away
//!   first leaves nothing stored.
//!
//! The key hashes the scheme, host, path and query (SHA-256), so nothing a
//! client sends appears in clear in Redis; `Vary` is honoured by storing a
//! hash of the request's values of the listed headers with the entry (one
//! variant per URL: another variant replaces it). Hop-by-hop headers,
//! `Set-Cookie` and `Age` are never stored.
//!
//! # What a request gets
//!
//! - A usable stored response (fresh, and acceptable to the request's
//!   `max-age`, `min-fresh`, `max-stale` and `no-cache`), with `Age` and
//!   `Cache-Status: redis-layers; hit; ttl=<seconds left>`; or a 304 when
//!   its `If-None-Match` (else `If-Modified-Since`) matches the stored
//!   response, with the fields RFC 9110 §15.4.5 lists.
//! - Otherwise the handler's response, with `Cache-Status:
//!   redis-layers; fwd=<why>; fwd-status=<status>` (`uri-miss`,
//!   `vary-miss`, `stale`, `request`, or `miss` with a `detail`), plus
//!   `stored` when it is being stored.
//! - `only-if-cached` without a usable stored response: 504.
//!
//! A non-error response to `POST`, `PUT`, `PATCH` or `DELETE` removes what
//! is stored for its URI and for `Location` / `Content-Location` on the
//! same origin, before the response is returned.
//!
//! Ages are measured with this instance's clock (RFC 9111 §4.2.3): skewed
//! instances sharing a store see an entry older or younger by the skew.
//!
//! # Stacking with sessions
//!
//! Put the cache **outside** the session layer (`.layer(session)` first,
//! then `.layer(cache)`): the session layer marks every response whose
//! handler read the session with `Vary: Cookie` (and `private` when the
//! request had a cookie), and the cache, seeing those marks, keeps one
//! user's page from another. Inside the session layer the cache would see
//! the response before it is marked; this version does not yet detect that
//! order.
//!
//! # Failures
//!
//! The cache never turns a working handler into an error: when the store
//! fails (down, or slower than its deadline) the request goes to the
//! handler (`Cache-Status: ...; fwd=miss; detail=store-error`), and a
//! failed write or invalidation is logged.
//!
//! # Round trips
//!
//! | request | store calls |
//! |---|---|
//! | hit | 1 `GET` |
//! | miss | 1 `GET`, then 1 `SET ... PX` after the body when stored |
//! | request `no-cache` | 0 before the handler, 1 `SET` when stored |
//! | unsafe method | 1 `DEL` per invalidated URI |
//!
//! Not built yet (see the project's issue): revalidation of stale
//! entries, stale-while-revalidate and stale-if-error, tags and purges,
//! coalescing of concurrent misses, the in-process tier.

mod body;
mod directives;
mod layer;
mod layout;
mod policy;
pub mod store;

pub use body::CacheBody;
pub use layer::{Cache, CacheLayer, CacheLayerBuilder, DEFAULT_MAX_BODY, DEFAULT_NAME};
pub use store::CacheStore;
