//! The Redis backend: multiplexed connections from a bb8-redis pool, a key
//! namespace, a per-call deadline and an EVALSHA-first script runner.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_layers::redis::RedisBackend;
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let backend = RedisBackend::builder()
//!     .url("redis://127.0.0.1:6379")
//!     .prefix("myapp")
//!     .deadline(Duration::from_millis(200))
//!     .build()?;
//! backend.set("greeting", b"hello", Some(Duration::from_secs(60))).await?;
//! assert_eq!(backend.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```
//!
//! # How connections are used
//!
//! The backend keeps the bb8-redis pool you give it (or builds one from a URL)
//! and exposes it with [`RedisBackend::pool`] for your own commands. On the
//! hot path it does **not** check a connection out per request: a checkout
//! either sends a `PING` (bb8's `test_on_check_out`) or makes concurrent
//! requests queue for a free connection. Instead the backend opens one (or
//! [a few](RedisBackendBuilder::multiplexed_connections)) dedicated
//! [multiplexed](::redis::aio::MultiplexedConnection) connections and spreads
//! calls over them round-robin; concurrent calls are pipelined on one socket.
//! Built from a URL, it opens them itself from that URL; given a pool, it
//! opens them through the pool's connection manager (so credentials,
//! database and TLS settings are the pool's). A connection that breaks is
//! replaced on the next call that needs it, so the backend recovers from a
//! Redis restart or failover by itself.
//!
//! # Deadlines
//!
//! Every call — connecting if needed, sending, and waiting for the reply — is
//! bounded by one deadline (default [`DEFAULT_DEADLINE`]). When it passes the
//! call returns an [`ErrorKind::Timeout`] error; the
//! connection stays usable. With a passed-in pool, replies also time out
//! after redis-rs's default of 500 ms (its manager's connections carry that
//! setting), so a longer deadline is cut to 500 ms there.

mod script;

pub use script::{Script, ScriptCall};

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{Cmd, RedisError, ServerErrorKind, Value};
use bb8_redis::RedisConnectionManager;

use crate::error::{Error, ErrorKind};
use crate::keys::Namespace;

/// The bb8 pool type this backend is built from.
pub type RedisPool = bb8::Pool<RedisConnectionManager>;

/// Per-call deadline used when none is configured: 200 ms.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(200);
/// Pool size used by [`RedisBackendBuilder::url`] when none is configured: 8.
pub const DEFAULT_POOL_SIZE: u32 = 8;
/// Connection timeout of the pool built from a URL when none is configured: 1 s.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// Number of multiplexed connections calls are spread over: 1.
///
/// One connection pipelines every concurrent call, which batches many
/// commands into each socket read and write. On a 2-core machine
/// (`BENCH_LANES=n cargo bench`) one connection reached 0.99 of the raw
/// redis-rs floor, two 0.73 and four 0.62; raise it only where one
/// connection's I/O task is measured to be the bottleneck.
pub const DEFAULT_MULTIPLEXED_CONNECTIONS: usize = 1;

/// A handle to Redis shared by all layers; cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: RedisPool,
    /// Set when built from a URL: lanes then connect with our own timeouts
    /// instead of the manager's (whose replies time out after 500 ms).
    direct: Option<(::redis::Client, ::redis::AsyncConnectionConfig)>,
    lanes: Box<[Lane]>,
    next_lane: AtomicUsize,
    deadline: Duration,
    namespace: Namespace,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.inner.namespace.prefix())
            .field("deadline", &self.inner.deadline)
            .field("multiplexed_connections", &self.inner.lanes.len())
            .finish_non_exhaustive()
    }
}

enum Source {
    None,
    Url(String),
    Pool(RedisPool),
}

/// Configures a [`RedisBackend`]; made by [`RedisBackend::builder`].
#[must_use]
pub struct RedisBackendBuilder {
    source: Source,
    pool_size: u32,
    connection_timeout: Duration,
    deadline: Duration,
    prefix: Option<String>,
    multiplexed: usize,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("pool_size", &self.pool_size)
            .field("connection_timeout", &self.connection_timeout)
            .field("deadline", &self.deadline)
            .field("prefix", &self.prefix)
            .field("multiplexed_connections", &self.multiplexed)
            .finish_non_exhaustive()
    }
}

impl RedisBackendBuilder {
    /// Connect to this Redis URL (`redis://`, `rediss://` or `unix://`); a
    /// bb8 pool is built for it with [`pool_size`](Self::pool_size) and
    /// [`connection_timeout`](Self::connection_timeout).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.source = Source::Url(url.into());
        self
    }

    /// Use a pool you already have. Its connection manager opens the
    /// backend's multiplexed connections; `pool_size` and
    /// `connection_timeout` are then the pool's own. bb8-redis's manager
    /// opens connections whose replies time out after 500 ms (redis-rs's
    /// default), so with a passed-in pool a [`deadline`](Self::deadline)
    /// longer than that is cut to 500 ms while waiting for a reply.
    pub fn pool(mut self, pool: RedisPool) -> Self {
        self.source = Source::Pool(pool);
        self
    }

    /// Maximum connections of the pool built from a URL (default
    /// [`DEFAULT_POOL_SIZE`]). The layers do not draw from the pool; it
    /// serves your own commands through [`RedisBackend::pool`].
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long the pool built from a URL waits for a connection (default
    /// [`DEFAULT_CONNECTION_TIMEOUT`]). Backend calls are bounded by the
    /// shorter [`deadline`](Self::deadline) as well.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// The per-call deadline covering connecting, sending and the reply
    /// (default [`DEFAULT_DEADLINE`]).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The key prefix (default [`Namespace::DEFAULT_PREFIX`]); see [`Namespace::new`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How many multiplexed connections calls are spread over (default
    /// [`DEFAULT_MULTIPLEXED_CONNECTIONS`]; at least 1).
    pub fn multiplexed_connections(mut self, n: usize) -> Self {
        self.multiplexed = n.max(1);
        self
    }

    /// Builds the backend. Nothing is sent to Redis yet: connections open on
    /// first use, so an application can start while Redis is still coming up.
    /// Use [`RedisBackend::ping`] to check connectivity at start-up.
    pub fn build(self) -> Result<RedisBackend, Error> {
        let namespace = match &self.prefix {
            Some(p) => Namespace::new(p)?,
            None => Namespace::default(),
        };
        let (pool, direct) = match self.source {
            Source::Pool(pool) => (pool, None),
            Source::Url(url) => {
                let invalid = |e: ::redis::RedisError| {
                    Error::new(ErrorKind::Config, "invalid Redis URL").with_source(e)
                };
                let manager = RedisConnectionManager::new(url.as_str()).map_err(invalid)?;
                let client = ::redis::Client::open(url.as_str()).map_err(invalid)?;
                // The deadline bounds every call; redis-rs's own reply
                // timeout (500 ms by default) would cap a longer one.
                let config = ::redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connection_timeout))
                    .set_response_timeout(None);
                let pool = bb8::Pool::builder()
                    .max_size(self.pool_size)
                    .connection_timeout(self.connection_timeout)
                    // A PING per checkout costs a round trip; broken
                    // connections surface as errors on use instead.
                    .test_on_check_out(false)
                    .build_unchecked(manager);
                (pool, Some((client, config)))
            }
            Source::None => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "RedisBackend needs a URL or a pool",
                ))
            }
        };
        let lanes = (0..self.multiplexed).map(|_| Lane::default()).collect();
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                pool,
                direct,
                lanes,
                next_lane: AtomicUsize::new(0),
                deadline: self.deadline,
                namespace,
            }),
        })
    }
}

impl RedisBackend {
    /// A builder with the documented defaults; give it a [`url`](RedisBackendBuilder::url)
    /// or a [`pool`](RedisBackendBuilder::pool).
    pub fn builder() -> RedisBackendBuilder {
        RedisBackendBuilder {
            source: Source::None,
            pool_size: DEFAULT_POOL_SIZE,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            prefix: None,
            multiplexed: DEFAULT_MULTIPLEXED_CONNECTIONS,
        }
    }

    /// A backend for `url` with all defaults.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        Self::builder().url(url).build()
    }

    /// A backend over an existing pool with all defaults.
    pub fn from_pool(pool: RedisPool) -> Result<Self, Error> {
        Self::builder().pool(pool).build()
    }

    /// The bb8 pool, for commands of your own.
    pub fn pool(&self) -> &RedisPool {
        &self.inner.pool
    }

    /// The key namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// The per-call deadline.
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// Sends `PING`; an error tells that Redis cannot be reached within the deadline.
    pub async fn ping(&self) -> Result<(), Error> {
        let reply: String = self.query(&::redis::cmd("PING")).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(Error::decode(format!("PING answered {reply:?}")))
        }
    }

    /// `GET key` (the key is used as given: build it with [`namespace`](Self::namespace)
    /// if it should be prefixed).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.query(::redis::cmd("GET").arg(key)).await
    }

    /// `SET key value [PX ttl]`.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
        }
        let _: Value = self.query(&cmd).await?;
        Ok(())
    }

    /// `DEL key`; true when a key was removed.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        let n: i64 = self.query(::redis::cmd("DEL").arg(key)).await?;
        Ok(n > 0)
    }

    /// Prepares a call of `script`; add keys and arguments, then `invoke`.
    pub fn script<'a>(&'a self, script: &'a Script) -> ScriptCall<'a> {
        ScriptCall::new(self, script)
    }

    /// Sends any command within the deadline and decodes the reply.
    pub async fn query<T: ::redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Error> {
        let value = self
            .with_deadline(async {
                let (lane, generation, mut conn) = self.connection().await?;
                self.send(lane, generation, &mut conn, cmd, None).await
            })
            .await?;
        T::from_redis_value(value)
            .map_err(|e| Error::decode("unexpected reply").with_source(e.to_string()))
    }

    /// Sends a pipeline (one round trip) within the deadline and decodes the
    /// replies, as a tuple or a `Vec`.
    pub async fn pipeline<T: ::redis::FromRedisValue>(
        &self,
        pipe: &::redis::Pipeline,
    ) -> Result<T, Error> {
        let value = self
            .with_deadline(async {
                let (lane, generation, mut conn) = self.connection().await?;
                pipe.query_async::<Value>(&mut conn)
                    .await
                    .map_err(|e| self.fail(lane, generation, e, None))
            })
            .await?;
        T::from_redis_value(value)
            .map_err(|e| Error::decode("unexpected pipeline reply").with_source(e.to_string()))
    }

    /// EVALSHA, and on NOSCRIPT the EVAL built by `eval`, on one connection
    /// within one deadline.
    async fn run_script_commands(
        &self,
        name: &'static str,
        evalsha: &Cmd,
        eval: impl FnOnce() -> Cmd,
    ) -> Result<Value, Error> {
        self.with_deadline(async {
            let (lane, generation, mut conn) = self.connection().await?;
            match roundtrip(&mut conn, evalsha).await {
                Err(e) if e.kind() == ::redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                    tracing::debug!(script = name, "NOSCRIPT: sending the body with EVAL");
                    self.send(lane, generation, &mut conn, &eval(), Some(name))
                        .await
                }
                Ok(value) => Ok(value),
                Err(e) => Err(self.fail(lane, generation, e, Some(name))),
            }
        })
        .await
    }

    /// A two-command pipeline whose first command is EVALSHA; on NOSCRIPT
    /// the pipeline built by `eval` is sent instead. Both replies, errors
    /// extracted.
    async fn run_script_pipeline(
        &self,
        name: &'static str,
        evalsha: &::redis::Pipeline,
        eval: impl FnOnce() -> ::redis::Pipeline,
    ) -> Result<(Value, Value), Error> {
        self.with_deadline(async {
            let (lane, generation, mut conn) = self.connection().await?;
            let mut replies = conn
                .send_packed_commands(evalsha, 0, 2)
                .await
                .map_err(|e| self.fail(lane, generation, e, Some(name)))?;
            let noscript = matches!(replies.first(), Some(Value::ServerError(e))
                if e.kind() == Some(ServerErrorKind::NoScript));
            if noscript {
                tracing::debug!(script = name, "NOSCRIPT: sending the body with EVAL");
                replies = conn
                    .send_packed_commands(&eval(), 0, 2)
                    .await
                    .map_err(|e| self.fail(lane, generation, e, Some(name)))?;
            }
            let mut replies = replies.into_iter();
            let (Some(first), Some(second)) = (replies.next(), replies.next()) else {
                return Err(Error::decode(format!(
                    "script {name}: short pipeline reply"
                )));
            };
            let first = first
                .extract_error()
                .map_err(|e| self.fail(lane, generation, e, Some(name)))?;
            let second = second
                .extract_error()
                .map_err(|e| self.fail(lane, generation, e, None))?;
            Ok((first, second))
        })
        .await
    }

    async fn with_deadline<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.inner.deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::timeout(self.inner.deadline)),
        }
    }

    async fn send(
        &self,
        lane: usize,
        generation: u64,
        conn: &mut MultiplexedConnection,
        cmd: &Cmd,
        script: Option<&'static str>,
    ) -> Result<Value, Error> {
        roundtrip(conn, cmd)
            .await
            .map_err(|e| self.fail(lane, generation, e, script))
    }

    /// Maps a redis error, dropping the lane's connection when it is broken.
    fn fail(
        &self,
        lane: usize,
        generation: u64,
        e: RedisError,
        script: Option<&'static str>,
    ) -> Error {
        let (kind, reconnect) = classify(&e, script.is_some());
        if reconnect {
            self.inner.lanes[lane].invalidate(generation);
        }
        let message = match script {
            Some(name) => format!("script {name} failed"),
            None => "command failed".to_owned(),
        };
        Error::new(kind, message).with_source(e)
    }

    /// A multiplexed connection from the next lane, opened if needed.
    async fn connection(&self) -> Result<(usize, u64, MultiplexedConnection), Error> {
        let lanes = &self.inner.lanes;
        let index = self.inner.next_lane.fetch_add(1, Ordering::Relaxed) % lanes.len();
        let lane = &lanes[index];
        if let Some((generation, conn)) = lane.current() {
            return Ok((index, generation, conn));
        }
        // One task per lane connects; the others wait for its result.
        let _connecting = lane.connecting.lock().await;
        if let Some((generation, conn)) = lane.current() {
            return Ok((index, generation, conn));
        }
        let conn = match &self.inner.direct {
            Some((client, config)) => {
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await
            }
            None => self.inner.pool.dedicated_connection().await,
        };
        let conn = conn.map_err(|e| {
            let kind = if e.is_timeout() {
                ErrorKind::Timeout
            } else {
                ErrorKind::Connection
            };
            Error::new(kind, "could not connect to Redis").with_source(e)
        })?;
        let generation = lane.install(conn.clone());
        Ok((index, generation, conn))
    }
}

/// One command, one reply; an error reply becomes `Err`.
async fn roundtrip(conn: &mut MultiplexedConnection, cmd: &Cmd) -> Result<Value, RedisError> {
    conn.send_packed_command(cmd).await?.extract_error()
}

/// The error kind, and whether the connection must be replaced.
fn classify(e: &RedisError, in_script: bool) -> (ErrorKind, bool) {
    if e.is_timeout() {
        return (ErrorKind::Timeout, false);
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return (ErrorKind::Connection, true);
    }
    match e.code() {
        // After a failover the old primary answers READONLY: reconnecting
        // follows DNS or a proxy to the new one.
        Some("READONLY" | "MASTERDOWN") => (ErrorKind::Server, true),
        // Redis is there but cannot serve the call right now (or is
        // misconfigured): not the script's fault.
        Some(
            "LOADING" | "BUSY" | "OOM" | "CLUSTERDOWN" | "TRYAGAIN" | "MOVED" | "ASK" | "CROSSSLOT"
            | "NOPERM" | "NOAUTH" | "WRONGPASS" | "MISCONF",
        ) => (ErrorKind::Server, false),
        // Anything else raised while a script ran (a Lua error, an error
        // reply, a WRONGTYPE from redis.call) is the script's.
        Some(_) if in_script => (ErrorKind::Script, false),
        Some(_) => (ErrorKind::Server, false),
        None => match e.kind() {
            ::redis::ErrorKind::Parse | ::redis::ErrorKind::UnexpectedReturnType => {
                (ErrorKind::Decode, false)
            }
            _ => (ErrorKind::Connection, e.is_unrecoverable_error()),
        },
    }
}

/// One multiplexed connection slot.
#[derive(Default)]
struct Lane {
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    connecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

impl Lane {
    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn install(&self, conn: MultiplexedConnection) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, conn));
        generation
    }

    /// Drops the connection if it is still the one of `generation` (a newer
    /// one may already have replaced it).
    fn invalidate(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(&*current, Some((g, _)) if *g == generation) {
            *current = None;
        }
    }
}
