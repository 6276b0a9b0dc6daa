//! Cookie sessions with sliding expiry, field-level saves and per-user
//! session control.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use redis_layers::session::{Session, SessionError, SessionLayer};
//! use redis_layers::Backend;
//!
//! async fn counter(session: Session) -> Result<String, SessionError> {
//!     let visits: u64 = session.get("visits").await?.unwrap_or(0) + 1;
//!     session.insert("visits", visits)?;
//!     Ok(format!("visit number {visits}"))
//! }
//!
//! # fn run() -> Result<(), redis_layers::Error> {
//! // Redis at REDIS_URL (Backend::from_env_or_memory falls back to memory).
//! let backend = Backend::from_env()?;
//! let app: Router = Router::new()
//!     .route("/", get(counter))
//!     .layer(SessionLayer::new(backend.clone()));
//! # Ok(()) }
//! ```
//!
//! Settings go through [`SessionLayer::builder`], whose `build()` rejects
//! an invalid cookie name, domain or path and inconsistent timeouts when the
//! application starts, never per request.
//!
//! # What it costs
//!
//! | request | store round trips (Redis commands) |
//! |---|---|
//! | no session cookie, session untouched | 0 |
//! | cookie, handler reads the session | 1 (`GET`); +1 (`touch.lua`) when a touch is due |
//! | cookie, session untouched | 1 (`GETRANGE` of the header) with [`Activity::AnyRequest`], +1 when a touch is due; 0 with [`Activity::SessionRead`] |
//! | cookie, read then write | 2 (`GET`, `save.lua`) |
//! | cookie, write without reading | 1 (`save.lua` checks the session still exists) |
//!
//! A touch (sliding the idle expiry) is due only when it would move the
//! expiry by more than the [touch interval](SessionLayerBuilder::touch_interval),
//! so under steady traffic it costs one extra round trip at most once per
//! interval per session. `Set-Cookie` goes out only when an id is issued
//! (creation, renewal) or dropped: never on a read, so such responses stay
//! cacheable as `private` (see below).
//!
//! # Time
//!
//! Expiry is decided by the store's clock (Redis `TIME` inside the scripts).
//! The read path decides *whether to send* the touch from the stored header
//! and this process's estimate of Redis's time: the time a script last
//! returned plus the time elapsed since on this process's monotonic clock
//! (the measurement over the fastest round trip is kept; it is re-taken at
//! least once a minute, by sending the touch). This host's wall clock is
//! never read, so its skew or a step cannot move the estimate, which is off
//! by at most half a round trip. An error only moves when the touch is
//! sent: too early costs a round trip the script then declines; too late is
//! harmless while it stays below `idle timeout − touch interval`.
//!
//! # Storage and safety
//!
//! - One string value per session: a 42-byte header (expiry, last seen,
//!   absolute deadline, creation time, revision) and the data as
//!   MessagePack. It is keyed by a SHA-256-derived [`SessionHandle`]: a dump
//!   of Redis reveals no cookie. Ids are 192 bits from the OS CSPRNG; an id
//!   the store does not know is no session (the client never picks an id).
//! - A save writes only the keys the request changed, merged inside one
//!   script that also checks the session still exists: concurrent requests
//!   changing different keys both persist, and a session destroyed or
//!   revoked while a request ran is never brought back.
//! - Idle and absolute timeouts: the expiry is `min(now + idle, created +
//!   absolute)`, computed from the store's clock. One session can have its
//!   own idle timeout and cookie persistence ([`Session::remember`] for
//!   "remember me", [`Session::set_idle_timeout`] to shorten it after a
//!   sensitive action, [`Session::reset_expiry`]), kept in its record, so
//!   every later save, touch and renewal follows it; a check of the header
//!   alone reads it off the header (`expires − seen`), so it costs no extra
//!   round trip.
//! - Id renewal ([`Session::cycle_id`]) leaves exactly one successor however
//!   many requests renew at once (a double-submitted login form): the old
//!   record is retired only at the revision that was copied, and replaced
//!   for ten seconds by a marker naming the successor's handle. The old id
//!   never reaches the successor (it may have been planted before the
//!   login: that is what renewal defeats). The losers, and writes that
//!   still carry the old cookie within those ten seconds, get a 409 problem
//!   and no cookie, so the browser keeps the winner's; reads with it see no
//!   session and leave the cookie alone; a logout with it ends the
//!   successor too.
//! - A response whose handler used the session (any method of [`Session`]:
//!   a read, a write such as a fresh CSRF token, a login, a logout, a
//!   listing) carries `Vary: Cookie`, and,
//!   when the request had a session cookie, `Cache-Control: private` unless
//!   the handler set its own; a response that sets or removes the cookie
//!   carries `Cache-Control: no-store`. No shared cache (this crate's, a
//!   CDN) serves one user's page to another.
//! - Malformed, oversized, duplicated, forged (with
//!   [signing](SessionLayerBuilder::signing_keys)) or non-UTF-8 cookies are
//!   no session; they never cause an error response.
//! - Nothing is saved when the response is a 5xx.
//! - On the memory backend, sessions count against its
//!   [`max_entries`](crate::memory::MemoryBackendBuilder::max_entries); when it
//!   is full, a new session evicts cache entries first, then the session
//!   closest to expiry; keys that other clients make the layers create
//!   (rate-limit counters, idempotency records, cache entries) never evict
//!   a session (see [the memory backend](crate::memory)).
//! - The layer can wrap a whole router (`Router::layer`) or only some routes
//!   (`Router::route_layer`, `get(handler).layer(..)`); routes outside it
//!   never touch the store.
//! - A store failure answers a problem+json, 503 when the store could not
//!   be reached in time and 500 when it answered with an error (the default
//!   [`FailurePolicy::Closed`](crate::FailurePolicy::Closed)), or continues
//!   without a session ([`FailurePolicy::Open`](crate::FailurePolicy::Open)).
//!   Every store call is bounded by the backend's deadline.
//!
//! # Conveniences
//!
//! - [`Typed`]: one struct under one key, with a stored value that no
//!   longer deserialises read as absent (and left for older code until
//!   replaced) rather than failing every request.
//! - [`Flash`]: messages for the next page, through the field-level save.
//! - [`crate::csrf`]: a CSRF layer whose token lives in the session.
//!
//! ```
//! use redis_layers::session::{Flash, SessionError, SessionValue, Typed};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct Cart {
//!     items: Vec<u32>,
//! }
//!
//! impl SessionValue for Cart {
//!     const KEY: &'static str = "cart";
//! }
//!
//! async fn add(cart: Typed<Cart>, flash: Flash) -> Result<&'static str, SessionError> {
//!     let n = cart.update(|cart| {
//!         cart.items.push(1);
//!         cart.items.len()
//!     }).await?;
//!     flash.success(format!("{n} items in your cart"))?;
//!     Ok("added")
//! }
//! ```
//!
//! # Inside
//!
//! `layer.rs` (the tower layer, its builder and future) → `handle.rs` (the
//! [`Session`] handlers use; `users.rs` adds per-user control) →
//! `finish.rs` (what is written when the response goes out) → [`store`]
//! (the trait every backend implements: `redis.rs` with its Lua scripts,
//! `memory.rs`).

mod config;
mod cookie;
mod data;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod finish;
mod flash;
mod handle;
mod id;
mod layer;
mod layout;
mod memory;
mod redis;
pub mod store;
mod typed;
mod users;

pub use self::config::{
    DEFAULT_ABSOLUTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_TOUCH_INTERVAL, MAX_TIMEOUT,
};
pub use self::error::SessionError;
#[cfg(feature = "axum")]
pub use self::extract::MissingSessionLayer;
pub use self::flash::{Flash, Level, Message, FLASH_KEY_PREFIX, MAX_UNREAD};
pub use self::handle::Session;
pub use self::id::{SessionHandle, SessionId};
pub use self::layer::{ResponseFuture, SessionLayer, SessionLayerBuilder, SessionService};
pub use self::store::{SessionInfo, SessionStore};
pub use self::typed::{SessionValue, Typed};
pub use ::cookie::{Key, SameSite};

/// Which requests count as session activity (slide the idle expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Activity {
    /// Every request carrying a valid session cookie (one round trip even
    /// when the handler ignores the session).
    #[default]
    AnyRequest,
    /// Only requests whose handler reads or writes the session.
    SessionRead,
}
