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
//! | the key while its first request runs | 409 with `Retry-After: 1` (or, with [`wait_for_completion`](IdempotencyLayerBuilder::wait_for_completion), the first one's response once it is done) |
//! | the key again, same request | the kept response, `Idempotent-Replayed: true` |
//! | the key again, another method, path, query, content type or body | 422 |
//! | the key again after a response too large to keep | 409, never a second run |
//! | the store unreachable | 503, or 500 when Redis answered with an error (fail-closed by default: never run without the claim; [`on_store_error`](IdempotencyLayerBuilder::on_store_error)`(Open)` runs the handler unprotected) |
//!
//! Every refusal is problem+json unless the builder's
//! [`on_refusal`](IdempotencyLayerBuilder::on_refusal) answers it. The
//! record is keyed by a hash of the scope, method, route template and key.
//!
//! # The claim
//!
//! - One store call claims a free key (with a lease, [`DEFAULT_LEASE`])
//!   or returns its record; a fencing token, higher than the key's last,
//!   is counted when the handler asks for it ([`Fence::token`]). The in-flight record names its holder (an id unique to the
//!   claim); renewal, completion and release act only for that holder.
//! - While the handler runs the lease is renewed every third of it, so a
//!   long handler keeps its claim; if the process dies, the key is free
//!   again once the lease runs out.
//! - The handler finds its claim's [`Fence`] in the request's extensions;
//!   [`Fence::token`] gives its [`FencingToken`] (one store call, made only
//!   when asked, and only while the claim holds). Completion stores the
//!   response only if the claim is still its own: a handler that lost its
//!   lease cannot overwrite a newer one, and the newer handler's token is
//!   higher, for your own writes to compare (unless a Redis failover lost
//!   the counter's last increments: tokens are monotonic only as far as
//!   the store's writes survive).
//! - 2xx and 4xx responses (but 408 and 429, which invite a retry) are
//!   final: status, the headers in
//!   [`REPLAYED_HEADERS`] (never `Set-Cookie` or `Date`) and the body are
//!   kept for [`DEFAULT_RETENTION`].
//! - A 5xx, a 408 or 429, or an error from the inner service is taken to
//!   mean the request had no effect: the key is released, so the client
//!   can retry. A handler that can fail *after* its side effects should
//!   say so with
//!   [`release_on_server_error(false)`](IdempotencyLayerBuilder::release_on_server_error):
//!   its 5xx are then kept and replayed. A panic releases the key too.
//! - A response body over `max_response` (or with trailers) is sent as it
//!   is and not kept: the key is marked done without it, so a retry gets
//!   409 "response not retained" and the handler never runs twice.
//!   Trailers are not forwarded on such a response.
//!
//! # Exactly once, when the client or the store misbehaves
//!
//! Once the handler has started for a key, no later request with that key
//! runs it again, except as the previous section says (a 5xx, an error, a
//! panic). In particular:
//!
//! - **The client goes away** (a timeout, an HTTP/2 reset, an outer
//!   `TimeoutLayer` dropping the response future): the handler and the
//!   completion, which run in the request's future, go on in a task of
//!   their own (in the request's tracing span) and finish regardless; a retry meanwhile gets 409 with `Retry-After`,
//!   and the response once it is recorded. An idempotent handler is
//!   therefore never cancelled by this layer's callers. A request dropped
//!   while its claim is on its way finishes the call in the background and
//!   releases what it claimed.
//! - **The lease** is renewed while the handler runs and while its
//!   response body is read, until the record is written.
//! - **The store fails while completing** (deadline, lost connection, any
//!   error reply): the
//!   response still goes to the client, and the completion is sent again
//!   with backoff (50 ms doubling to 2 s, the lease renewed meanwhile) for
//!   up to the retention. Completion is safe to repeat, and it writes onto
//!   a key that is free (a lease that ran out while Redis was unreachable),
//!   refusing only where another request's claim or record stands. Until
//!   it lands, retries find the key in flight (409), never free.
//!
//! What can still run a handler twice, and why:
//!
//! - The process dies (or is killed) after the handler started and before
//!   the completion landed: nothing is left to renew the lease, so the key
//!   is free once it runs out, and a retry runs again. A record written
//!   before the handler's effects would need a two-phase protocol with the
//!   handler's own store; use the [`FencingToken`] to make your writes
//!   reject a stale holder.
//! - The store stays unreachable for longer than the lease *and* another
//!   instance claims the key in between (it reached the store when this one
//!   could not): both may run. The completion that lands second is refused
//!   by fencing.
//! - A Redis failover loses the last writes (asynchronous replication):
//!   a claim or record not yet on the replica is gone.
//! - A store that refuses the completion (any error: a demoted primary,
//!   `OOM`, a key of the wrong type) for longer than the retention: the
//!   completion is retried, the lease renewed, until then; past it the
//!   key frees at the lease's end.
//!
//! # Round trips
//!
//! A new key: 1 to claim (`SET record in-flight NX PX lease GET`, a plain
//! command: it takes a free key, or returns its record and writes
//! nothing), 1 script to complete (or release): two in all, plus one
//! renewal per third of the lease while the handler runs, and one script
//! for the fencing token if the handler asks for it. A replay or a
//! conflict: the claim alone, one command. A request waiting on a key in
//! flight asks again every 50 ms.

mod header;
mod layer;
pub(crate) mod layout;
pub mod record;
pub mod store;

pub use header::MAX_KEY_LEN;
pub use layer::{
    Fence, FencingToken, IdempotencyLayer, IdempotencyLayerBuilder, IdempotencyService,
    ResponseFuture, DEFAULT_LEASE, DEFAULT_MAX_BODY, DEFAULT_MAX_RESPONSE, DEFAULT_RETENTION,
    REPLAYED, REPLAYED_HEADERS,
};
pub use store::{Claim, IdempotencyStore};

/// Whose keys a record belongs to: the same client key from two scopes
/// never meets. This is [`ClientKey`](crate::ClientKey) (the rate
/// limiter's `Key` too): a credential header (`Scope::header`, kept only
/// in the record key's digest), a header checked against the values you
/// issued (`Scope::header_validated`), the session's user
/// (`Scope::session_user`, needs the session layer outside this one), your
/// own async function (`Scope::custom`), `Scope::global()` (any client can
/// replay any other's response: only for routes without callers to tell
/// apart), or one of them failing over to the next (`or`). A client
/// address is refused at `build()`: clients behind one proxy would replay
/// each other's responses.
pub use crate::client_key::ClientKey as Scope;

/// The old name of [`IdempotencyService`] (every layer's service is now
/// named `<Layer>Service`).
#[deprecated(since = "0.2.0", note = "renamed `IdempotencyService`")]
pub type Idempotency<S> = IdempotencyService<S>;
