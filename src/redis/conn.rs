//! The connection machinery under [`RedisBackend`]: multiplexed lanes opened
//! on demand, the per-call deadline, and error classification. Commands
//! (`mod.rs`) and scripts (`script.rs`) both run through [`RedisBackend::call`].

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::RedisBackend;
use crate::error::{Error, ErrorKind};

/// A connection handed to one call, and where it came from, so that an
/// error can retire exactly that connection.
pub(super) struct Checkout {
    lane: usize,
    generation: u64,
    pub(super) conn: Conn,
}

/// One multiplexed connection: to a single Redis, or (with the `cluster`
/// feature) to a Redis Cluster, where redis-rs routes each command to the
/// node owning its key's slot and follows `MOVED` / `ASK` redirects.
#[derive(Clone)]
pub(super) enum Conn {
    Node(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(::redis::cluster_async::ClusterConnection),
}

impl Conn {
    /// One command.
    pub(super) async fn send_packed_command(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Node(c) => c.send_packed_command(cmd).await,
            #[cfg(feature = "cluster")]
            // An error reply may come back as `Err` here: callers extract
            // errors either way.
            Conn::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }

    /// A pipeline's replies from `offset`, `count` of them.
    pub(super) async fn send_packed_commands(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>, RedisError> {
        match self {
            Conn::Node(c) => c.send_packed_commands(pipeline, offset, count).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisBackend {
    /// Runs `work` on a connection, within the deadline. `work` maps redis
    /// errors with [`Checkout::fail`] so a broken connection is replaced.
    pub(super) async fn call<T, F>(&self, work: impl FnOnce(Checkout) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let deadline = self.inner.deadline;
        let lanes = &self.inner.lanes;
        let index = self.inner.next_lane.fetch_add(1, Ordering::Relaxed) % lanes.len();
        // The connection the call went out on (0: none yet), so that its
        // timeout counts against that connection only.
        let sent_on = AtomicU64::new(0);
        let attempt = async {
            let checkout = self.checkout(index).await?;
            sent_on.store(checkout.generation, Ordering::Relaxed);
            work(checkout).await
        };
        let timer = crate::metrics::StoreTimer::start();
        let out = match tokio::time::timeout(deadline, attempt).await {
            Ok(result) => {
                lanes[index].answered();
                result
            }
            Err(_) => {
                lanes[index].timed_out(sent_on.load(Ordering::Relaxed));
                Err(Error::timeout(deadline))
            }
        };
        timer.finish("redis", &out);
        out
    }

    /// Like [`call`](Self::call), for work that must not be lost halfway
    /// once sent: when the deadline passes, the caller gets its timeout
    /// error as usual, but `work` goes on in a task of its own for up to
    /// [`LATE_GRACE`] and its outcome is dropped. A script whose `EVALSHA`
    /// comes back `NOSCRIPT` after the deadline (Redis was slow, then lost
    /// its script cache) is thus still sent with `EVAL`, as a plain command
    /// that timed out would still have run: a timed-out call may take
    /// effect later, but never half.
    pub(super) async fn call_detachable<T, F>(
        &self,
        work: impl FnOnce(Checkout) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        let deadline = self.inner.deadline;
        let timer = crate::metrics::StoreTimer::start();
        let out = self.detachable(work, deadline).await;
        timer.finish("redis", &out);
        out
    }

    /// [`call_detachable`](Self::call_detachable) itself.
    async fn detachable<T, F>(
        &self,
        work: impl FnOnce(Checkout) -> F,
        deadline: Duration,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        let until = tokio::time::Instant::now() + deadline;
        let lanes = &self.inner.lanes;
        let index = self.inner.next_lane.fetch_add(1, Ordering::Relaxed) % lanes.len();
        let checkout = match tokio::time::timeout_at(until, self.checkout(index)).await {
            Ok(checkout) => checkout?,
            // Still connecting: no connection to count against.
            Err(_) => return Err(Error::timeout(deadline)),
        };
        let sent_on = checkout.generation;
        // Boxed so that it can move into a task of its own if it runs late.
        let mut work = Box::pin(work(checkout));
        match tokio::time::timeout_at(until, &mut work).await {
            Ok(result) => {
                lanes[index].answered();
                result
            }
            Err(_) => {
                lanes[index].timed_out(sent_on);
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = tokio::time::timeout(LATE_GRACE, work).await;
                    });
                }
                Err(Error::timeout(deadline))
            }
        }
    }

    /// A multiplexed connection from lane `index`, opened if needed.
    async fn checkout(&self, index: usize) -> Result<Checkout, Error> {
        let lanes = &self.inner.lanes;
        let lane = &lanes[index];
        let checkout = |(generation, conn)| Checkout {
            lane: index,
            generation,
            conn,
        };
        if let Some(current) = lane.current() {
            return Ok(checkout(current));
        }
        // One task per lane connects; the others wait for its result.
        // Boxed: connecting is rare, and its future is large (kilobytes),
        // which every call's future would otherwise carry and copy.
        Ok(checkout(Box::pin(self.connect(lane)).await?))
    }

    /// Opens and installs a connection for `lane`, unless another task did
    /// while this one waited for the lane's lock.
    async fn connect(&self, lane: &Lane) -> Result<(u64, Conn), Error> {
        let connected = self.open(lane).await;
        if connected.is_ok() {
            self.check_memory_policy_once();
        }
        connected
    }

    /// [`connect`](Self::connect) itself.
    async fn open(&self, lane: &Lane) -> Result<(u64, Conn), Error> {
        let _connecting = lane.connecting.lock().await;
        if let Some(current) = lane.current() {
            return Ok(current);
        }
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.inner.cluster {
            let conn = cluster
                .get_async_connection()
                .await
                .map(Conn::Cluster)
                .map_err(|e| connect_error(e, None))?;
            return {
                crate::metrics::connection_opened();
                Ok((lane.install(conn.clone()), conn))
            };
        }
        #[cfg(feature = "sentinel")]
        if let Some((sentinel, config)) = &self.inner.sentinel {
            // The primary as the sentinels see it now.
            let conn = sentinel
                .lock()
                .await
                .get_async_connection_with_config(config)
                .await
                .map(Conn::Node)
                .map_err(|e| connect_error(e, None))?;
            return {
                crate::metrics::connection_opened();
                Ok((lane.install(conn.clone()), conn))
            };
        }
        let conn = match (&self.inner.direct, &self.inner.pool) {
            (Some((client, config)), _) => self.open_direct(client, config).await,
            (None, Some(pool)) => pool.dedicated_connection().await,
            (None, None) => {
                return Err(Error::config("the Redis backend has no way to connect"));
            }
        };
        let tls = self.inner.direct.as_ref().map(|(client, _)| {
            matches!(
                client.get_connection_info().addr(),
                ::redis::ConnectionAddr::TcpTls { .. }
            )
        });
        let conn = Conn::Node(conn.map_err(|e| connect_error(e, tls))?);
        {
            crate::metrics::connection_opened();
            Ok((lane.install(conn.clone()), conn))
        }
    }
}

impl RedisBackend {
    /// A connection to the URL's Redis: redis-rs's, or through the TLS
    /// connector when the server name is our own to set.
    async fn open_direct(
        &self,
        client: &::redis::Client,
        config: &::redis::AsyncConnectionConfig,
    ) -> Result<::redis::aio::MultiplexedConnection, RedisError> {
        #[cfg(feature = "tls")]
        if let Some(connector) = &self.inner.connector {
            return connector.connect(config).await;
        }
        client
            .get_multiplexed_async_connection_with_config(config)
            .await
    }
}

/// A failed connection attempt as an error whose message names the cause
/// (a refused password, an untrusted certificate, TLS spoken to a
/// plaintext port or the other way round): what an operator reads first.
/// `tls`: whether the address was a TLS one, when known. redis-rs's errors
/// name no credentials.
fn connect_error(e: RedisError, tls: Option<bool>) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    };
    let text = e.to_string();
    let hint = if e.kind() == ::redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
    {
        "; check the user and password"
    } else if text.contains("CertificateRequired") {
        "; the server asks for a client certificate (Tls::client_certificate_pem)"
    } else if text.contains("not valid for name") {
        "; the certificate names another host: connect by that name, or name it with \
         Tls::server_name"
    } else if text.to_lowercase().contains("certificate") {
        "; check the TLS settings (the CA that signed the server's certificate)"
    } else if tls == Some(true) && (e.is_timeout() || text.contains("corrupt")) {
        "; no TLS handshake answered: is it a TLS port? (rediss:// on a plaintext port)"
    } else if tls == Some(false) && (e.is_connection_dropped() || text.contains("reset")) {
        "; the server hung up: is it a TLS port? (use rediss://)"
    } else {
        ""
    };
    Error::new(kind, format!("could not connect to Redis: {e}{hint}")).with_source(e)
}

impl Checkout {
    /// One command, one reply; an error reply becomes `Err`.
    pub(super) async fn roundtrip(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        self.conn.send_packed_command(cmd).await?.extract_error()
    }

    /// Maps a redis error; drops this lane's connection when it is broken.
    /// `script` names the script that was running, if any.
    pub(super) fn fail(
        &self,
        backend: &RedisBackend,
        e: RedisError,
        script: Option<&'static str>,
    ) -> Error {
        let (kind, reconnect) = classify(&e, script.is_some());
        if reconnect {
            backend.inner.lanes[self.lane].invalidate(self.generation);
        }
        let message = match script {
            Some(name) => format!("script {name} failed"),
            None => "command failed".to_owned(),
        };
        Error::new(kind, message).with_source(e)
    }
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
        // A transaction refused: one of its commands' errors decides (a
        // READONLY inside it means a demoted primary as well).
        Some("EXECABORT") => {
            let demoted = e.clone().into_server_errors().is_some_and(|errors| {
                errors
                    .iter()
                    .any(|(_, err)| matches!(err.code(), "READONLY" | "MASTERDOWN"))
            });
            (ErrorKind::Server, demoted)
        }
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

/// Deadlines missed in a row after which a lane's connection is retired:
/// a server that vanished without closing the socket (a host lost in a
/// failover) would otherwise hold the lane until the kernel gives up.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

/// How long a retired connection, or a call that ran past its deadline, is
/// kept going so that commands already sent are still answered (and so
/// run) by a Redis that was only slow or paused. Past it they are dropped:
/// a server that has not answered in this time is taken for gone.
pub(crate) const LATE_GRACE: Duration = Duration::from_secs(30);

/// Keeps a connection taken off its lane open until every command sent on
/// it has been answered, or [`LATE_GRACE`] has passed. Closing it at once
/// would make Redis discard commands it had received but not yet run (a
/// `CLIENT PAUSE`, a long script elsewhere), so a completion the caller
/// took for "timed out, may still run" would then never run.
fn retire(conn: Conn) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        match conn {
            // Replies come in order: once this PING is answered, so is
            // everything sent before it.
            Conn::Node(mut c) => {
                let ping = ::redis::cmd("PING");
                let _ = tokio::time::timeout(LATE_GRACE, c.send_packed_command(&ping)).await;
            }
            // A cluster connection spreads commands over nodes, so no one
            // reply marks the end of the others: hold it for the grace.
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => {
                tokio::time::sleep(LATE_GRACE).await;
                drop(c);
            }
        }
    });
}

/// One multiplexed connection slot.
#[derive(Default)]
pub(super) struct Lane {
    current: Mutex<Option<(u64, Conn)>>,
    connecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
    /// Deadlines missed in a row.
    timeouts: AtomicU32,
}

impl Lane {
    /// A call finished within its deadline.
    fn answered(&self) {
        // A read first: no shared write on the hot path.
        if self.timeouts.load(Ordering::Relaxed) != 0 {
            self.timeouts.store(0, Ordering::Relaxed);
        }
    }

    /// A call sent on the connection of `generation` (0: none, it was
    /// still connecting) missed its deadline; enough in a row on the
    /// current connection retire it. Timeouts of calls sent on a connection
    /// already retired do not count: during a long pause they would retire
    /// each new connection in turn, each kept open for [`LATE_GRACE`].
    fn timed_out(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(&*current, Some((g, _)) if *g == generation) {
            return;
        }
        if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_BEFORE_RECONNECT {
            self.timeouts.store(0, Ordering::Relaxed);
            if let Some((_, conn)) = current.take() {
                drop(current);
                retire(conn);
            }
        }
    }

    fn current(&self) -> Option<(u64, Conn)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn install(&self, conn: Conn) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        // A new connection has missed nothing yet (reset under the lock
        // that `timed_out` counts under).
        self.timeouts.store(0, Ordering::Relaxed);
        *current = Some((generation, conn));
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
