#![doc = include_str!("../README.md")]
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
pub mod refusal;
// Read by whichever layers are compiled in.
#[allow(dead_code)]
mod request_session;
#[allow(dead_code)]
mod task;
#[cfg_attr(not(feature = "session"), allow(dead_code))]
mod time;
#[allow(dead_code)]
pub mod trace;

#[cfg(feature = "cache")]
pub mod cache;
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

pub use backend::Backend;

/// A boxed, type-erased future (keeps the types of futures that await it
/// shallow).
pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
pub use body::ResponseBody;
pub use error::{Error, ErrorKind};
pub use failure::FailurePolicy;
pub use keys::{Namespace, TaggedKeys};
pub use problem::Problem;
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
