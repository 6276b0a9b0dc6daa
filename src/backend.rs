//! [`Backend`]: the one value every layer is built from.

use std::time::Duration;

use crate::error::Error;
use crate::keys::Namespace;
use crate::memory::MemoryBackend;
use crate::redis::RedisBackend;

/// Where the layers keep their state: Redis, or this process's memory.
///
/// Build it once and hand a clone to every layer; each capability's store
/// trait is implemented for it (and for [`RedisBackend`] and
/// [`MemoryBackend`] directly), so choosing the backend at run time takes no
/// per-capability store type:
///
/// ```no_run
/// use redis_layers::session::SessionLayer;
/// use redis_layers::Backend;
///
/// # fn run() -> Result<(), redis_layers::Error> {
/// // Redis at REDIS_URL (an error without it; Backend::from_env_or_memory
/// // falls back to the in-process memory backend).
/// let backend = Backend::from_env()?;
/// let sessions = SessionLayer::new(backend.clone());
/// # let _ = sessions; Ok(()) }
/// ```
///
/// Clones share connections (Redis) or the keyspace (memory).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Backend {
    /// A Redis server (several application instances share it).
    Redis(RedisBackend),
    /// This process's memory (one instance; lost on restart).
    Memory(MemoryBackend),
}

/// Runs `$body` with `$b` bound to the concrete backend inside `$backend`:
/// how each capability implements its store trait for [`Backend`].
macro_rules! on_backend {
    ($backend:expr, $b:ident => $body:expr) => {
        match $backend {
            $crate::Backend::Redis($b) => $body,
            $crate::Backend::Memory($b) => $body,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_backend;

/// `store` as a [`Backend`] when it is one of this crate's backends, so a
/// layer can call it without boxing each future (see each capability's
/// `Store` enum); `None` for a user's own store.
#[allow(dead_code)]
pub(crate) fn as_backend<S: std::any::Any>(store: &S) -> Option<Backend> {
    let any: &dyn std::any::Any = store;
    if let Some(b) = any.downcast_ref::<Backend>() {
        return Some(b.clone());
    }
    if let Some(b) = any.downcast_ref::<crate::redis::RedisBackend>() {
        return Some(b.clone().into());
    }
    any.downcast_ref::<crate::memory::MemoryBackend>()
        .map(|b| b.clone().into())
}

impl Backend {
    /// Redis at `REDIS_URL`, with the default key prefix; a
    /// [`Config`](crate::ErrorKind::Config) error when the variable is unset
    /// or empty, so that a deployment that lost its setting fails at start
    /// instead of quietly keeping its limits, sessions and locks in each
    /// process. For an in-process default (a demo, a test, a single
    /// instance), use [`from_env_or_memory`](Self::from_env_or_memory).
    /// Logs the choice once (never the URL, which may hold a password).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_env_with_prefix(Namespace::DEFAULT_PREFIX)
    }

    /// [`from_env`](Self::from_env) with a key prefix of your own.
    pub fn from_env_with_prefix(prefix: &str) -> Result<Self, Error> {
        match Self::redis_from_env(prefix)? {
            Some(redis) => Ok(redis),
            None => Err(Error::config(
                "REDIS_URL is not set: set it to the Redis the layers share \
                 (or build with Backend::from_env_or_memory for an in-process default)",
            )),
        }
    }

    /// Redis at `REDIS_URL` when that variable is set and not empty, else a
    /// memory backend, which it says at `warn` level: its limits, sessions,
    /// locks and claims are this process's alone, and each instance behind
    /// a load balancer would keep its own. What the example app does.
    pub fn from_env_or_memory(prefix: &str) -> Result<Self, Error> {
        if let Some(redis) = Self::redis_from_env(prefix)? {
            return Ok(redis);
        }
        let memory = MemoryBackend::builder().prefix(prefix).build()?;
        tracing::warn!(
            backend = "memory",
            prefix,
            "REDIS_URL is not set: using the in-process memory backend \
             (limits, sessions and locks are this process's alone)"
        );
        Ok(Backend::Memory(memory))
    }

    /// A Redis backend for `REDIS_URL`, if set and not empty.
    fn redis_from_env(prefix: &str) -> Result<Option<Self>, Error> {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.trim().is_empty() => {
                let redis = RedisBackend::builder()
                    .url(url.trim())
                    .prefix(prefix)
                    .build()?;
                tracing::info!(backend = "redis", prefix, "REDIS_URL is set: using Redis");
                Ok(Some(Backend::Redis(redis)))
            }
            _ => Ok(None),
        }
    }

    /// `"redis"` or `"memory"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Redis(_) => "redis",
            Backend::Memory(_) => "memory",
        }
    }

    /// The key namespace.
    pub fn namespace(&self) -> &Namespace {
        on_backend!(self, b => b.namespace())
    }

    /// The value of a plain key (`GET`); see [`RedisBackend::get`].
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        on_backend!(self, b => b.get(key).await)
    }

    /// Stores a plain key with an optional TTL (`SET key value [PX ttl]`).
    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        on_backend!(self, b => b.set(key, value, ttl).await)
    }

    /// Removes a key (`DEL`); true when one was removed.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        on_backend!(self, b => b.delete(key).await)
    }

    /// Checks that the store answers: a `PING` within the deadline on Redis,
    /// always true in memory. For health checks and start-up.
    pub async fn ping(&self) -> Result<(), Error> {
        match self {
            Backend::Redis(b) => b.ping().await,
            Backend::Memory(_) => Ok(()),
        }
    }
}

impl From<RedisBackend> for Backend {
    fn from(b: RedisBackend) -> Self {
        Backend::Redis(b)
    }
}

impl From<MemoryBackend> for Backend {
    fn from(b: MemoryBackend) -> Self {
        Backend::Memory(b)
    }
}
