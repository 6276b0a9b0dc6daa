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
//! and exposes it with [`RedisBackend::pool`] for your own commands (`None`
//! behind Sentinel; on a cluster, a pool to the first seed node). On the
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
//! With the `cluster` feature, [`RedisBackendBuilder::cluster`] connects to
//! a Redis Cluster instead (commands routed by slot); with the `sentinel`
//! feature, [`RedisBackendBuilder::sentinel`] follows a primary through
//! Redis Sentinel. The layers work the same on all three. With the `tls`
//! feature, `rediss://` URLs and `Tls` settings (a private CA, a client
//! certificate) secure each of them; a user and password go in the URL
//! (behind Sentinel, in `SentinelPrimary`).
//!
//! # Deadlines
//!
//! Every call — connecting if needed, sending, and waiting for the reply — is
//! bounded by one deadline (default [`DEFAULT_DEADLINE`]). When it passes the
//! call returns an [`ErrorKind::Timeout`] error; the
//! connection stays usable.
//!
//! A timeout means "outcome unknown": a command already sent still runs
//! if Redis was only slow or paused. A connection retired after three
//! missed deadlines in a row is kept open until its sent commands are
//! answered (a `PING` behind them comes back) or 30 s pass, since closing
//! it would make Redis discard them. A script call marked
//! [`finish_if_late`](ScriptCall::finish_if_late) (the idempotency layer's
//! completion and release) goes on in the background past its deadline,
//! so an `EVALSHA` answered `NOSCRIPT` late is still followed by `EVAL`
//! rather than abandoned halfway; other calls are not, so that a rate
//! check or a session save never lands late and out of order. With a passed-in pool, replies also time out
//! after redis-rs's default of 500 ms (its manager's connections carry that
//! setting), so a longer deadline is cut to 500 ms there.

mod conn;
mod script;
#[cfg(feature = "tls")]
mod tls;

#[allow(unused_imports)]
pub(crate) use script::script;
pub use script::{Script, ScriptCall};
#[cfg(feature = "tls")]
pub use tls::Tls;

use std::fmt;
use std::sync::atomic::AtomicUsize;
#[cfg(feature = "cluster")]
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{Cmd, Value};
use bb8_redis::RedisConnectionManager;

use crate::error::{Error, ErrorKind};
use crate::keys::Namespace;
use crate::time::ServerClock;

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
    /// None when following Sentinel (no node is fixed).
    pool: Option<RedisPool>,
    /// Set when built from a URL: lanes then connect with our own timeouts
    /// instead of the manager's (whose replies time out after 500 ms).
    direct: Option<(::redis::Client, ::redis::AsyncConnectionConfig)>,
    /// Set for a TLS server name of its own: lanes and the subscription
    /// connect through it instead of `direct`'s client.
    #[cfg(feature = "tls")]
    connector: Option<tls::Connector>,
    /// Set for a Redis Cluster: lanes are cluster connections.
    #[cfg(feature = "cluster")]
    cluster: Option<::redis::cluster::ClusterClient>,
    /// A cluster's seed nodes, for subscribing (taken in turn, so a lost
    /// node does not end the subscription for good).
    #[cfg(feature = "cluster")]
    seeds: Vec<::redis::Client>,
    #[cfg(feature = "cluster")]
    next_seed: AtomicUsize,
    /// Set behind Sentinel: lanes (and the cache's subscriber) ask the
    /// sentinels for the primary each time they connect.
    #[cfg(feature = "sentinel")]
    sentinel: Option<(
        tokio::sync::Mutex<::redis::sentinel::SentinelClient>,
        ::redis::AsyncConnectionConfig,
    )>,
    lanes: Box<[conn::Lane]>,
    next_lane: AtomicUsize,
    deadline: Duration,
    namespace: Namespace,
    // Read by the layers' stores (none without a layer feature).
    #[cfg_attr(not(feature = "session"), allow(dead_code))]
    clock: ServerClock,
    /// Set once the first connection asked for Redis's memory policy.
    memory_policy_checked: std::sync::atomic::AtomicBool,
}

/// Redis's eviction settings, as [`RedisBackend::memory_policy`] reads
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// `maxmemory-policy`: `noeviction`, `allkeys-lru`, `volatile-ttl`, ...
    pub policy: String,
    /// `maxmemory` in bytes; 0: no limit.
    pub maxmemory: u64,
}

impl MemoryPolicy {
    /// Whether Redis may evict the layers' keys when full: a limit is set
    /// and the policy is not `noeviction`. Nearly every key the layers
    /// write has a time to live (all but the cache's generation), so the
    /// `volatile-*` policies reach them as surely as the `allkeys-*` ones.
    pub fn may_evict(&self) -> bool {
        self.maxmemory > 0 && self.policy != "noeviction"
    }
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
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
    #[cfg(feature = "sentinel")]
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
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
    #[cfg(feature = "tls")]
    tls: Option<Tls>,
    #[cfg(feature = "sentinel")]
    primary: SentinelPrimary,
}

/// How to reach the primary behind Sentinel: its ACL user and password,
/// database and TLS (the sentinels only name its address). Given to
/// [`RedisBackendBuilder::sentinel_primary`]. `Debug` never shows the
/// password.
#[cfg(feature = "sentinel")]
#[derive(Clone, Default)]
pub struct SentinelPrimary {
    username: Option<String>,
    password: Option<String>,
    db: i64,
    tls: bool,
}

#[cfg(feature = "sentinel")]
impl fmt::Debug for SentinelPrimary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelPrimary")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(feature = "sentinel")]
impl SentinelPrimary {
    /// No user or password, database 0, no TLS.
    pub fn new() -> Self {
        SentinelPrimary::default()
    }

    /// The ACL user (Redis 6+; without one, `AUTH` uses `default`).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (`requirepass`, or the ACL user's).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The database number (default 0).
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// Reach the primary over TLS (verified as
    /// [`RedisBackendBuilder::tls`] says; the `tls` feature).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
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

    /// Connect to a Redis Cluster through these seed nodes (`redis://`
    /// URLs of one or more of its primaries; the rest of the cluster is
    /// discovered from them). Every command goes to the node that owns its
    /// key's slot, redirects (`MOVED`, `ASK`) are followed, and the slot
    /// map is refreshed after a resharding or a failover, all by redis-rs's
    /// async cluster client. The layers keep the keys one call touches in
    /// one slot (a hash tag), and split what spans slots (a user's session
    /// list, a tag purge) into concurrent calls.
    ///
    /// [`pool`](RedisBackend::pool) is then a pool to the first seed node
    /// only, and cache invalidations are heard through that node (Redis
    /// Cluster forwards every `PUBLISH` to every node).
    #[cfg(feature = "cluster")]
    pub fn cluster<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.source = Source::Cluster(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Follow a primary through Redis Sentinel: `sentinels` are the
    /// sentinels' URLs (`redis://`, or `rediss://` for TLS; a password in
    /// them, `redis://:pass@host:26379`, is the sentinels' own, and all of
    /// them must share it), `service` the name they monitor the primary
    /// under (`sentinel monitor <service> ...`). The primary is reached as
    /// [`sentinel_primary`](Self::sentinel_primary) says (by default: no
    /// password, database 0, no TLS). Each connection
    /// asks the sentinels for the current primary; when a failover breaks
    /// it (or the old primary answers `READONLY`), the next call connects
    /// to the new one. The cache's local tier subscribes the same way.
    ///
    /// There is no fixed node to pool connections to:
    /// [`pool`](RedisBackend::pool) is then `None`.
    #[cfg(feature = "sentinel")]
    pub fn sentinel<I, S>(mut self, sentinels: I, service: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.source = Source::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            service: service.into(),
        };
        self
    }

    /// How to reach the primary behind [`sentinel`](Self::sentinel): its
    /// user, password, database and TLS.
    #[cfg(feature = "sentinel")]
    pub fn sentinel_primary(mut self, primary: SentinelPrimary) -> Self {
        self.primary = primary;
        self
    }

    /// TLS settings for `rediss://` URLs (a private CA, a client
    /// certificate): see [`Tls`]. Building fails when they are given for a
    /// URL that is not `rediss://`, or for a pool (whose connections are
    /// its manager's).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
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

    /// A client for `url`, with the TLS settings when it is `rediss://`.
    fn client(&self, url: &str) -> Result<::redis::Client, Error> {
        let tls_url = url.starts_with("rediss://");
        #[cfg(not(feature = "tls"))]
        if tls_url {
            return Err(Error::config(
                "a rediss:// URL needs the `tls` feature of redis-layers",
            ));
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            if !tls_url {
                return Err(Error::config(
                    "TLS settings were given, but a URL is not rediss://",
                ));
            }
            return ::redis::Client::build_with_tls(url, tls.certificates()).map_err(|e| {
                if e.kind() == ::redis::ErrorKind::InvalidClientConfig
                    && e.to_string().contains("URL")
                {
                    url_error(e)
                } else {
                    tls::invalid(e)
                }
            });
        }
        #[cfg(feature = "tls")]
        if tls_url {
            tls::install_provider();
        }
        let _ = tls_url;
        ::redis::Client::open(url).map_err(url_error)
    }

    /// The sentinels' client: their addresses and credentials from their
    /// URLs, the primary's from [`sentinel_primary`](Self::sentinel_primary).
    #[cfg(feature = "sentinel")]
    fn sentinel_client(
        &self,
        sentinels: &[String],
        service: &str,
    ) -> Result<::redis::sentinel::SentinelClient, Error> {
        use ::redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        use ::redis::IntoConnectionInfo;
        if sentinels.is_empty() {
            return Err(Error::config("Sentinel needs at least one sentinel"));
        }
        let infos = sentinels
            .iter()
            .map(|url| {
                #[cfg(not(feature = "tls"))]
                if url.starts_with("rediss://") {
                    return Err(Error::config(
                        "a rediss:// URL needs the `tls` feature of redis-layers",
                    ));
                }
                url.as_str().into_connection_info().map_err(url_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let auth = infos[0].redis_settings();
        let (username, password) = (auth.username(), auth.password());
        if infos.iter().any(|i| {
            i.redis_settings().username() != username || i.redis_settings().password() != password
        }) {
            return Err(Error::config(
                "the sentinels' URLs must share one user and password",
            ));
        }
        let sentinel_tls = infos
            .iter()
            .any(|i| matches!(i.addr(), ::redis::ConnectionAddr::TcpTls { .. }));
        let mut b = SentinelClientBuilder::new(
            infos.iter().map(|i| i.addr().clone()),
            service,
            SentinelServerType::Master,
        )
        .map_err(url_error)?
        .set_client_to_redis_db(self.primary.db);
        if let Some(user) = username {
            b = b.set_client_to_sentinel_username(user);
        }
        if let Some(password) = password {
            b = b.set_client_to_sentinel_password(password);
        }
        if let Some(user) = &self.primary.username {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.primary.password {
            b = b.set_client_to_redis_password(password);
        }
        #[cfg(feature = "tls")]
        {
            if self.tls.is_some() && !self.primary.tls {
                return Err(Error::config(
                    "TLS settings were given, but the primary behind Sentinel is reached \
                     without TLS: set SentinelPrimary::tls(true)",
                ));
            }
            if sentinel_tls || self.primary.tls {
                tls::install_provider();
            }
            if sentinel_tls {
                b = b.set_client_to_sentinel_tls_mode(::redis::TlsMode::Secure);
            }
            if self.primary.tls {
                b = b.set_client_to_redis_tls_mode(::redis::TlsMode::Secure);
            }
            if let Some(tls) = &self.tls {
                if sentinel_tls {
                    b = b.set_client_to_sentinel_certificates(tls.certificates());
                }
                if self.primary.tls {
                    b = b.set_client_to_redis_certificates(tls.certificates());
                }
            }
        }
        let _ = sentinel_tls;
        b.build()
            .map_err(|e| Error::config(format!("invalid Sentinel settings: {e}")))
    }

    /// Builds the backend. Nothing is sent to Redis yet: connections open on
    /// first use, so an application can start while Redis is still coming up.
    /// Use [`RedisBackend::ping`] to check connectivity at start-up.
    ///
    /// It must run inside a Tokio runtime (the pool's housekeeping task is
    /// spawned on it); outside one it returns an [`ErrorKind::Config`] error.
    pub fn build(self) -> Result<RedisBackend, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "RedisBackend must be built inside a Tokio runtime",
            ));
        }
        let namespace = match &self.prefix {
            Some(p) => Namespace::new(p)?,
            None => Namespace::default(),
        };
        let invalid = url_error;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            tls.check()?;
            tls::install_provider();
            if matches!(self.source, Source::Pool(_)) {
                return Err(Error::config(
                    "TLS settings apply to URLs; a pool's connections are its manager's",
                ));
            }
            if tls.server_name_override().is_some() && !matches!(self.source, Source::Url(_)) {
                return Err(Error::config(
                    "a TLS server name applies to a standalone Redis (url) only: a Cluster's \
                     and Sentinel's connections are opened by redis-rs",
                ));
            }
        }
        #[cfg(feature = "tls")]
        let mut connector = None;
        // A pool and a direct client for `url`.
        let direct = |url: &str| -> Result<_, Error> {
            let client = self.client(url)?;
            // The deadline bounds every call; redis-rs's own reply
            // timeout (500 ms by default) would cap a longer one.
            let config = ::redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connection_timeout))
                .set_response_timeout(None);
            #[cfg(feature = "tls")]
            if let Some(tls) = &self.tls {
                connector = tls::Connector::new(tls, &client, self.connection_timeout)?;
                if connector.is_some() {
                    // Connections of our own: no pool (its manager would
                    // verify the URL's host).
                    return Ok((None, Some((client, config))));
                }
            }
            // The pool's manager connects as the client does (TLS
            // settings included).
            let manager = RedisConnectionManager::new(client.get_connection_info().clone())
                .map_err(invalid)?;
            let pool = bb8::Pool::builder()
                .max_size(self.pool_size)
                .connection_timeout(self.connection_timeout)
                // A PING per checkout costs a round trip; broken
                // connections surface as errors on use instead.
                .test_on_check_out(false)
                .build_unchecked(manager);
            Ok((Some(pool), Some((client, config))))
        };
        #[allow(unused_mut)]
        let mut direct = direct;
        #[cfg(feature = "cluster")]
        let mut cluster = None;
        #[cfg(feature = "cluster")]
        let mut seeds = Vec::new();
        #[cfg(feature = "sentinel")]
        let mut sentinel = None;
        let (pool, direct) = match &self.source {
            Source::Pool(pool) => (Some(pool.clone()), None),
            #[cfg(feature = "sentinel")]
            Source::Sentinel { sentinels, service } => {
                let client = self.sentinel_client(sentinels, service)?;
                let config = ::redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connection_timeout))
                    .set_response_timeout(None);
                sentinel = Some((tokio::sync::Mutex::new(client), config));
                (None, None)
            }
            Source::Url(url) => direct(url)?,
            #[cfg(feature = "cluster")]
            Source::Cluster(nodes) => {
                let Some(first) = nodes.first() else {
                    return Err(Error::config(
                        "a Redis Cluster needs at least one seed node",
                    ));
                };
                for node in nodes {
                    seeds.push(self.client(node)?);
                }
                #[allow(unused_mut)]
                let mut builder =
                    ::redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(self.connection_timeout)
                        // The deadline bounds every call of ours. The
                        // node connections' reply timer bounds what
                        // redis-rs sends itself (the slot map, the PINGs
                        // of a new connection, which hold up every slot
                        // while they wait on a frozen node) and the
                        // requests a node never answers, so they do not
                        // pile up. It costs a timer per command; no
                        // second, overall one on top.
                        .response_timeout(Duration::from_secs(60))
                        .overall_response_timeout(None)
                        .tcp_settings(node_tcp_settings());
                #[cfg(feature = "tls")]
                if let Some(tls) = &self.tls {
                    builder = builder.certs(tls.certificates());
                }
                cluster = Some(builder.build().map_err(invalid)?);
                direct(first)?
            }
            Source::None => return Err(Error::config("RedisBackend needs a URL or a pool")),
        };
        let lanes = (0..self.multiplexed)
            .map(|_| conn::Lane::default())
            .collect();
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                pool,
                direct,
                #[cfg(feature = "tls")]
                connector,
                #[cfg(feature = "cluster")]
                cluster,
                #[cfg(feature = "cluster")]
                seeds,
                #[cfg(feature = "cluster")]
                next_seed: AtomicUsize::new(0),
                #[cfg(feature = "sentinel")]
                sentinel,
                lanes,
                next_lane: AtomicUsize::new(0),
                deadline: self.deadline,
                namespace,
                clock: ServerClock::default(),
                memory_policy_checked: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }
}

/// TCP settings for a cluster's node connections: keepalive probes, so
/// that an idle connection to a host that vanished without closing its
/// sockets fails within about 30 s of quiet (Linux, macOS and the BSDs:
/// [`KEEPALIVE_IDLE`], then three probes 5 s apart; elsewhere the
/// system's probe interval and count), and redis-rs then reconnects and
/// asks for the slot map, rather than when the next command's reply timer
/// runs out. Probes only: a node that is
/// paused still acknowledges at the TCP level and keeps its connection.
/// (No `TCP_USER_TIMEOUT`: it also counts a full receive window, so it
/// would cut off a paused node under load, and Redis would drop the
/// commands it had received but not yet run.)
#[cfg(feature = "cluster")]
fn node_tcp_settings() -> ::redis::io::tcp::TcpSettings {
    use ::redis::io::tcp::socket2::TcpKeepalive;
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd",
        target_os = "netbsd"
    ))]
    let keepalive = keepalive
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    ::redis::io::tcp::TcpSettings::default().set_keepalive(keepalive)
}

/// How long a cluster node's connection stays idle before TCP probes it.
#[cfg(feature = "cluster")]
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);

/// A URL that does not parse (the URL itself is not repeated: it may hold
/// a password).
fn url_error(e: ::redis::RedisError) -> Error {
    Error::new(
        ErrorKind::Config,
        "invalid Redis URL (expected redis://host:port, rediss://host:port or unix:///path)",
    )
    .with_source(e)
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
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "sentinel")]
            primary: SentinelPrimary::default(),
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

    /// The bb8 pool, for commands of your own: the one given to the
    /// builder, or built from its URL (on a cluster, to the first seed
    /// node). `None` behind Sentinel, where no node is fixed, and with a
    /// TLS server name of its own (`Tls::server_name`), which bb8-redis's
    /// manager cannot take.
    pub fn pool(&self) -> Option<&RedisPool> {
        self.inner.pool.as_ref()
    }

    /// The key namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// The per-call deadline.
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// Whether this backend talks to a Redis Cluster (calls whose keys span
    /// slots are then split).
    #[cfg(feature = "cluster")]
    pub(crate) fn is_cluster(&self) -> bool {
        self.inner.cluster.is_some()
    }

    /// Sends `groups` of commands and decodes every reply, in order. Each
    /// group's keys share one slot. On a single Redis: one pipeline of
    /// them all. On a cluster, where the groups may live on several nodes:
    /// each group as its own pipeline (in order within it), the groups
    /// concurrently (still about one round trip).
    #[cfg_attr(not(feature = "session"), allow(dead_code))]
    pub(crate) async fn grouped<T: ::redis::FromRedisValue>(
        &self,
        groups: Vec<Vec<Cmd>>,
    ) -> Result<Vec<T>, Error> {
        self.phased(vec![groups]).await
    }

    /// [`grouped`](Self::grouped) in phases: on a cluster, a phase starts
    /// only once every group of the one before succeeded (what must not
    /// happen unless the earlier writes did: the cache's entries removed
    /// before their keys leave a tag). On a single Redis, still one
    /// pipeline, in order.
    #[cfg_attr(not(any(feature = "session", feature = "cache")), allow(dead_code))]
    pub(crate) async fn phased<T: ::redis::FromRedisValue>(
        &self,
        phases: Vec<Vec<Vec<Cmd>>>,
    ) -> Result<Vec<T>, Error> {
        let pipeline_of = |cmds: Vec<Cmd>| {
            let mut pipe = ::redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            pipe
        };
        #[cfg(feature = "cluster")]
        if self.is_cluster() {
            let mut out = Vec::new();
            for groups in phases {
                let pipes: Vec<_> = groups.into_iter().map(pipeline_of).collect();
                let calls = pipes.iter().map(|pipe| self.pipeline::<Vec<T>>(pipe));
                let replies = futures_util::future::try_join_all(calls).await?;
                out.extend(replies.into_iter().flatten());
            }
            return Ok(out);
        }
        let all: Vec<Cmd> = phases.into_iter().flatten().flatten().collect();
        if all.is_empty() {
            return Ok(Vec::new());
        }
        self.pipeline(&pipeline_of(all)).await
    }

    /// Whether [`subscriber`](Self::subscriber) can give a client: built
    /// from a URL (or seed nodes), or behind Sentinel.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) fn can_subscribe(&self) -> bool {
        #[cfg(feature = "sentinel")]
        if self.inner.sentinel.is_some() {
            return true;
        }
        self.inner.direct.is_some()
    }

    /// A pub/sub connection: to the URL's Redis, a cluster's next seed
    /// node, or the primary the sentinels name now.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) async fn pubsub(&self) -> Result<::redis::aio::PubSub, ::redis::RedisError> {
        #[cfg(feature = "tls")]
        if let Some(connector) = &self.inner.connector {
            return connector.pubsub().await;
        }
        self.subscriber().await?.get_async_pubsub().await
    }

    /// A client for a dedicated connection (pub/sub): the URL's, or the
    /// primary the sentinels name now.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) async fn subscriber(&self) -> Result<::redis::Client, ::redis::RedisError> {
        #[cfg(feature = "sentinel")]
        if let Some((sentinel, _)) = &self.inner.sentinel {
            return sentinel.lock().await.async_get_client().await;
        }
        // On a cluster any node hears every PUBLISH: the next seed each
        // time.
        #[cfg(feature = "cluster")]
        if !self.inner.seeds.is_empty() {
            let at = self.inner.next_seed.fetch_add(1, Ordering::Relaxed);
            return Ok(self.inner.seeds[at % self.inner.seeds.len()].clone());
        }
        match &self.inner.direct {
            Some((client, _)) => Ok(client.clone()),
            None => Err(::redis::RedisError::from((
                ::redis::ErrorKind::InvalidClientConfig,
                "no URL to subscribe with",
            ))),
        }
    }

    /// The application's estimate of Redis's clock.
    #[cfg_attr(not(feature = "session"), allow(dead_code))]
    pub(crate) fn server_clock(&self) -> &ServerClock {
        &self.inner.clock
    }

    /// Redis's `maxmemory-policy` and `maxmemory` (`CONFIG GET`); `None`
    /// where `CONFIG` is not allowed (an ACL without `+config`, a managed
    /// Redis that renames it). On a cluster, one node's.
    ///
    /// The first connection a backend opens reads them and warns once
    /// when Redis may evict the layers' keys ([`MemoryPolicy::may_evict`]):
    /// an evicted session logs its user out, an evicted rate-limit
    /// counter resets a client's budget, an evicted idempotency claim or
    /// lock lets a request run twice. `noeviction` makes a full Redis
    /// refuse writes instead, which each layer answers as its store
    /// failure policy says.
    pub async fn memory_policy(&self) -> Result<Option<MemoryPolicy>, Error> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory");
        let replies: Result<(Vec<String>, Vec<String>), Error> = self.pipeline(&pipe).await;
        match replies {
            Ok((policy, max)) => {
                let (Some(policy), Some(max)) = (policy.get(1), max.get(1)) else {
                    return Ok(None);
                };
                Ok(Some(MemoryPolicy {
                    policy: policy.clone(),
                    maxmemory: max.parse().unwrap_or(0),
                }))
            }
            Err(e) if e.kind() == ErrorKind::Server => {
                tracing::debug!(error = %e, "CONFIG GET not allowed: memory policy unknown");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the memory policy once, in the background, after the first
    /// connection; warns when Redis may evict the layers' keys.
    pub(crate) fn check_memory_policy_once(&self) {
        use std::sync::atomic::Ordering;
        if self
            .inner
            .memory_policy_checked
            .swap(true, Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.clone();
        runtime.spawn(async move {
            match backend.memory_policy().await {
                Ok(Some(p)) if p.may_evict() => tracing::warn!(
                    policy = %p.policy,
                    maxmemory = p.maxmemory,
                    "Redis may evict this crate's keys when full (maxmemory-policy {}): \
                     sessions lost, rate limits reset, idempotency claims and locks \
                     dropped; use noeviction (or room to spare) for the layers' Redis",
                    p.policy
                ),
                Ok(Some(p)) => tracing::debug!(policy = %p.policy, maxmemory = p.maxmemory, "Redis memory policy"),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "Redis memory policy not read"),
            }
        });
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
            .call(|mut c| async move { c.roundtrip(cmd).await.map_err(|e| c.fail(self, e, None)) })
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
            .call(|mut c| async move {
                pipe.query_async::<Value>(&mut c.conn)
                    .await
                    .map_err(|e| c.fail(self, e, None))
            })
            .await?;
        T::from_redis_value(value)
            .map_err(|e| Error::decode("unexpected pipeline reply").with_source(e.to_string()))
    }
}
