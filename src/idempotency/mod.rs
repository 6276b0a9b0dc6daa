//! Idempotency-Key handling (draft-ietf-httpapi-idempotency-key-header): a
//! retried POST or PATCH gets the first attempt's response instead of
//! running twice, across every instance sharing the store.
//!
//! ```
//! use axum::{routing::post, Router};
//! use redis_layers::idempotency::{IdempotencyLayer, Scope};
//! use redis_layers::memory::MemoryBackend;
//!
//! async fn create_order(body: String) -> (axum::http::StatusCode, String) {
//!     (axum::http::StatusCode::CREATED, format!("order for {body}"))
//! }
//!
//! let backend = MemoryBackend::new(); // or RedisBackend, or Backend::from_env()?
//! let app: Router = Router::new().route(
//!     "/orders",
//!     // Keys are kept per API key: one client never replays another's.
//!     post(create_order).layer(IdempotencyLayer::new(backend, Scope::header("x-api-key"))),
//! );
//! ```
//!
//! # What a request gets
//!
//! On the methods that take a key (POST and PATCH by default):
//!
//! | request | answer |
//! |---|---|
//! | no `Idempotency-Key` | 400 (or passes untouched with `required(false)`) |
//! | a key that is not an sf-string or token of 1 to 255 visible characters | 400 |
//! | no scope (the scope's header or session user is missing) | 400 |
//! | a body over `max_body` | 413 |
//! | a new key | the handler runs under a claim; its response is kept |
//! | the key while its first request runs | 409 with `Retry-After` (or, with [`wait_for_completion`](IdempotencyLayerBuilder::wait_for_completion), the first one's response once it is done) |
//! | the key again, same request | the kept response, `Idempotent-Replayed: true` |
//! | the key again, another method, path, query, content type or body | 422 |
//! | the key again after a response too large to keep | 409, never a second run |
//! | the store unreachable | 503, or 500 when Redis answered with an error (fail-closed: never run without the claim) |
//!
//! Every refusal is problem+json. The record is keyed by a hash of the
//! scope, method, route template and key.
//!
//! # The claim
//!
//! - One store call claims a free key (with a lease, [`DEFAULT_LEASE`],
//!   and a fencing token higher than the key's last) or returns its
//!   record. The in-flight record names its holder (an id unique to the
//!   claim); renewal, completion and release act only for that holder.
//! - While the handler runs the lease is renewed every third of it, so a
//!   long handler keeps its claim; if the process dies, the key is free
//!   again once the lease runs out.
//! - The handler sees its [`FencingToken`] in the request's extensions.
//!   Completion stores the response only if the claim is still its own:
//!   a handler that lost its lease cannot overwrite a newer one, and the
//!   newer handler's token is higher, for your own writes to compare
//!   (unless a Redis failover lost the counter's last increments: tokens
//!   are monotonic only as far as the store's writes survive).
//! - 2xx and 4xx responses (but 408 and 429, which invite a retry) are
//!   final: status, the headers in
//!   [`REPLAYED_HEADERS`] (never `Set-Cookie` or `Date`) and the body are
//!   kept for [`DEFAULT_RETENTION`].
//! - A 5xx, a 408 or 429, an error from the inner service, a panic or a
//!   dropped request releases the key, so the client can retry.
//! - A response body over `max_response` (or with trailers) is sent as it
//!   is and not kept: the key is marked done without it, so a retry gets
//!   409 "response not retained" and the handler never runs twice.
//!   Trailers are not forwarded on such a response.
//!
//! # Round trips
//!
//! A new key: 1 to claim (on Redis a `MULTI`/`EXEC` of plain commands:
//! `SET … NX PX … GET`, `PTTL`, `INCR`, `PEXPIRE`; on a Redis Cluster,
//! whose redirects redis-rs follows only outside a transaction, the
//! script `claim.lua`), 1 script to complete
//! (or release), plus one renewal per third of the lease while the
//! handler runs. A replay or a conflict: the claim alone.
//! A request waiting on a key in flight asks again every 50 ms.

mod header;
mod layer;
mod layout;
pub mod store;

pub use header::MAX_KEY_LEN;
pub use layer::{
    FencingToken, Idempotency, IdempotencyLayer, IdempotencyLayerBuilder, Scope, DEFAULT_LEASE,
    DEFAULT_MAX_BODY, DEFAULT_MAX_RESPONSE, DEFAULT_RETENTION, REPLAYED, REPLAYED_HEADERS,
};
pub use store::{Claim, IdempotencyStore};
