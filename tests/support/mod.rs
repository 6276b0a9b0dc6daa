//! Test support: real `redis-server` processes on free ports, killed on drop.
//!
//! Every test that needs Redis starts its own server (`RedisServer::start`),
//! so tests never share state and never touch a Redis the developer runs.
//! Set `REDIS_SERVER` to use a binary other than the `redis-server` on PATH.
#![allow(dead_code, unreachable_pub, unused_macros, unused_imports)]

pub mod http;
pub mod logs;
pub mod pki;
pub mod reply;
pub mod smoke;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A `redis-server` child process on a loopback port.
pub struct RedisServer {
    port: u16,
    /// Its `--requirepass`, for the harness's own connections.
    password: Option<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    binary: PathBuf,
}

fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn missing_binary(binary: &PathBuf) -> ! {
    panic!(
        "\n\nThe tests need a `redis-server` binary (Redis 7 or newer) and could not run {:?}.\n\
         Install it (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`)\n\
         or point REDIS_SERVER at the binary.\n\n",
        binary
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Sends one inline command over a fresh socket and returns the raw reply.
fn raw_command(port: u16, command: &str, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl RedisServer {
    /// Starts a server on a free port; panics with install advice when the
    /// binary is missing.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let binary = binary();
        for _attempt in 0..5 {
            let password = extra
                .iter()
                .position(|a| *a == "--requirepass")
                .and_then(|at| extra.get(at + 1))
                .map(|p| (*p).to_owned());
            let mut server = RedisServer {
                port: free_port(),
                password,
                child: None,
                dir: tempfile::tempdir().expect("temp dir for redis-server"),
                binary: binary.clone(),
            };
            if server.spawn(extra) {
                return server;
            }
        }
        panic!("redis-server did not start after 5 attempts (see its log in the temp dir)")
    }

    /// Spawns the process on `self.port`; true once it answers PING.
    fn spawn(&mut self, extra: &[&str]) -> bool {
        let port = self.port.to_string();
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .arg("--logfile")
        .arg(&log)
        .args(["--enable-debug-command", "yes"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing_binary(&self.binary),
            Err(e) => panic!("could not start {:?}: {e}", self.binary),
        };
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_status)) = child.try_wait() {
                    // Exited early: usually the port was taken in between.
                    self.child = None;
                    return false;
                }
            }
            if let Ok(reply) = raw_command(self.port, "PING", Duration::from_millis(200)) {
                // NOAUTH: up, and asking for its password.
                if reply.starts_with("+PONG") || reply.starts_with("-NOAUTH") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a new, empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn(&[]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// A plain connection for setup and inspection (not the code under test).
    pub fn admin(&self) -> redis::Connection {
        let url = match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("admin connection to the test redis-server")
    }

    /// Runs one admin command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.admin())
            .unwrap_or_else(|e| panic!("admin command {args:?} failed: {e}"))
    }

    /// Calls per command from `INFO commandstats` (`get`, `evalsha`,
    /// `script|load`, …), counting rejected calls too (failed
    /// calls, such as a NOSCRIPT reply, are already in `calls`).
    pub fn command_calls(&self) -> HashMap<String, u64> {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        let mut calls = HashMap::new();
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let mut total = 0;
            for field in fields.split(',') {
                if let Some((k, v)) = field.split_once('=') {
                    if matches!(k, "calls" | "rejected_calls") {
                        total += v.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            calls.insert(name.to_owned(), total);
        }
        calls
    }

    /// Resets `INFO commandstats`.
    pub fn reset_stats(&self) {
        let _: () = self.cmd(&["CONFIG", "RESETSTAT"]);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Calls of `command` between two [`RedisServer::command_calls`] snapshots.
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, command: &str) -> u64 {
    after.get(command).copied().unwrap_or(0) - before.get(command).copied().unwrap_or(0)
}

/// A key prefix no other test in this process uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Redis Cluster of `n` primaries (no replicas), each a [`RedisServer`]
/// started with `--cluster-enabled yes`, slots split evenly, all killed on
/// drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// How many of `nodes` (the first) were started as primaries.
    pub primaries: usize,
}

/// A server ready to join a cluster (node timeout 2 s, for quick
/// failovers).
fn cluster_node() -> RedisServer {
    RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
}

impl RedisCluster {
    /// Starts `primaries` primaries with a replica each (the replicas are
    /// `nodes[primaries..]`, `nodes[primaries + i]` replicating
    /// `nodes[i]`), and waits until every node reports `cluster_state:ok`
    /// and every replica's link to its primary is up.
    pub fn start_with_replicas(primaries: usize) -> Self {
        let mut cluster = Self::start(primaries);
        let replicas: Vec<RedisServer> = (0..primaries).map(|_| cluster_node()).collect();
        for replica in &replicas {
            let _: () = cluster.nodes[0].cmd(&[
                "CLUSTER",
                "MEET",
                "127.0.0.1",
                &replica.port().to_string(),
            ]);
        }
        let started = Instant::now();
        for (i, replica) in replicas.iter().enumerate() {
            let primary: String = cluster.nodes[i].cmd(&["CLUSTER", "MYID"]);
            // The replica must have heard of its primary first.
            loop {
                let known: String = replica.cmd(&["CLUSTER", "NODES"]);
                if known.contains(&primary) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the replica never met its primary"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let _: () = replica.cmd(&["CLUSTER", "REPLICATE", &primary]);
        }
        let n = primaries * 2;
        loop {
            let ok = cluster.nodes.iter().chain(&replicas).all(|node| {
                let info: String = node.cmd(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{n}"))
            }) && replicas.iter().all(|replica| {
                let info: String = replica.cmd(&["INFO", "replication"]);
                info.contains("master_link_status:up")
            });
            if ok {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the replicas never caught up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.nodes.extend(replicas);
        cluster
    }

    /// The node owning `key`'s slot (slots are split evenly, in order).
    pub fn node_for(&self, key: &str) -> &RedisServer {
        let slot: usize = self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key]);
        let per = 16384 / self.primaries;
        &self.nodes[(slot / per).min(self.primaries - 1)]
    }

    /// Starts `n` nodes, assigns the 16384 slots, joins them, and waits until
    /// every node reports `cluster_state:ok`.
    pub fn start(n: usize) -> Self {
        Self::start_from(n, cluster_node)
    }

    /// [`start`](Self::start) with nodes `node` starts (with
    /// `--cluster-enabled yes` among their arguments).
    pub fn start_from(n: usize, node: impl Fn() -> RedisServer) -> Self {
        assert!(n >= 1);
        let nodes: Vec<RedisServer> = (0..n).map(|_| node()).collect();
        let per = 16384 / n;
        for (i, node) in nodes.iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == n { 16383 } else { first + per - 1 };
            let _: () = node.cmd(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ]);
        }
        for node in &nodes[1..] {
            // With `tls-cluster yes` a node's bus is its TLS port + 10000.
            let tls: Vec<String> = node.cmd(&["CONFIG", "GET", "tls-cluster"]);
            let port = if tls.get(1).is_some_and(|v| v == "yes") {
                let tls_port: Vec<String> = node.cmd(&["CONFIG", "GET", "tls-port"]);
                tls_port[1].clone()
            } else {
                node.port().to_string()
            };
            let _: () = nodes[0].cmd(&["CLUSTER", "MEET", "127.0.0.1", &port]);
        }
        let started = Instant::now();
        loop {
            let ok = nodes.iter().all(|node| {
                let info: String = node.cmd(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{n}"))
            });
            if ok {
                return RedisCluster {
                    nodes,
                    primaries: n,
                };
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the test cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Which backend a behaviour test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Memory,
    /// A three-primary Redis Cluster (the `cluster` feature).
    #[cfg(feature = "cluster")]
    Cluster,
}

/// A backend for one test: a Redis backend on its own `redis-server`
/// (kept alive, and reachable for inspection, as long as this value), a
/// Redis Cluster shared by the tests running at the same time, or a
/// memory backend. Each gets a key prefix no other test uses.
pub struct TestBackend {
    pub backend: redis_layers::Backend,
    pub server: Option<RedisServer>,
    pub kind: Kind,
    #[cfg(feature = "cluster")]
    pub cluster: Option<std::sync::Arc<RedisCluster>>,
}

/// The test cluster of this test process: started by the first test that
/// needs it, stopped when the last one holding it ends (a static would
/// never be dropped, and its servers would outlive the tests).
#[cfg(feature = "cluster")]
pub fn shared_cluster() -> std::sync::Arc<RedisCluster> {
    use std::sync::{Arc, Mutex, Weak};
    static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(RedisCluster::start(3));
    *shared = Arc::downgrade(&cluster);
    cluster
}

impl TestBackend {
    pub fn new(kind: Kind) -> Self {
        Self::with_deadline(kind, Duration::from_secs(2))
    }

    pub fn with_deadline(kind: Kind, deadline: Duration) -> Self {
        match kind {
            Kind::Redis => Self::redis_with(|b| b.deadline(deadline)),
            Kind::Memory => Self::memory(),
            #[cfg(feature = "cluster")]
            Kind::Cluster => Self::cluster_with(|b| b.deadline(deadline)),
        }
    }

    /// A Redis backend on the shared test cluster, configured by
    /// `configure`.
    #[cfg(feature = "cluster")]
    pub fn cluster_with(
        configure: impl FnOnce(
            redis_layers::redis::RedisBackendBuilder,
        ) -> redis_layers::redis::RedisBackendBuilder,
    ) -> Self {
        let cluster = shared_cluster();
        let builder = redis_layers::redis::RedisBackend::builder()
            .cluster(cluster.nodes.iter().map(RedisServer::url))
            .prefix(unique_prefix("test"))
            .deadline(Duration::from_secs(2));
        let redis = configure(builder)
            .build()
            .expect("a Redis backend for the test cluster");
        TestBackend {
            backend: redis.into(),
            server: None,
            kind: Kind::Cluster,
            cluster: Some(cluster),
        }
    }

    /// A Redis backend on its own server, configured by `configure`.
    pub fn redis_with(
        configure: impl FnOnce(
            redis_layers::redis::RedisBackendBuilder,
        ) -> redis_layers::redis::RedisBackendBuilder,
    ) -> Self {
        let server = RedisServer::start();
        let builder = redis_layers::redis::RedisBackend::builder()
            .url(server.url())
            .prefix(unique_prefix("test"))
            .deadline(Duration::from_secs(2));
        let redis = configure(builder)
            .build()
            .expect("a Redis backend for the test server");
        TestBackend {
            backend: redis.into(),
            server: Some(server),
            kind: Kind::Redis,
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }

    /// A memory backend.
    pub fn memory() -> Self {
        TestBackend {
            backend: redis_layers::memory::MemoryBackend::builder()
                .prefix(unique_prefix("test"))
                .build()
                .expect("a memory backend")
                .into(),
            server: None,
            kind: Kind::Memory,
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }

    /// The test's Redis server; panics on the memory backend (and on a
    /// cluster: see [`key_cmd`](Self::key_cmd)).
    pub fn server(&self) -> &RedisServer {
        self.server.as_ref().expect("a Redis test on one server")
    }

    /// Runs an admin command about `key` on the server that holds it (the
    /// test's server, or the cluster node owning its slot).
    pub fn key_cmd<T: redis::FromRedisValue>(&self, key: &str, args: &[&str]) -> T {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            return cluster.node_for(key).cmd(args);
        }
        let _ = key;
        self.server().cmd(args)
    }

    /// Keys under this backend's prefix matching `pattern` (after the
    /// prefix), on either backend.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let prefix = self.backend.namespace().prefix().to_owned();
        match &self.backend {
            #[cfg(feature = "cluster")]
            redis_layers::Backend::Redis(_) if self.cluster.is_some() => {
                let cluster = self.cluster.as_ref().expect("the cluster");
                let mut keys = Vec::new();
                for node in &cluster.nodes {
                    let found: Vec<String> = node.cmd(&["KEYS", &format!("{prefix}:{pattern}")]);
                    keys.extend(found);
                }
                keys
            }
            redis_layers::Backend::Redis(_) => {
                self.server().cmd(&["KEYS", &format!("{prefix}:{pattern}")])
            }
            redis_layers::Backend::Memory(memory) => {
                let glob = format!("{prefix}:{pattern}");
                memory.atomically(|ks| {
                    ks.keys()
                        .filter(|k| glob_match(&glob, k))
                        .map(str::to_owned)
                        .collect()
                })
            }
            _ => unreachable!("a backend this harness does not know"),
        }
    }
}

/// Redis's `KEYS` glob, for the `*` wildcard only.
fn glob_match(pattern: &str, key: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = key.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Runs each test body once per backend: `both_backends!(make; name =>
/// |fx| { .. } ...)` makes `on_redis::name`, `on_memory::name` and (with
/// the `cluster` feature) `on_cluster::name`, each with `fx =
/// make(Kind::Redis)`, `make(Kind::Memory)` or `make(Kind::Cluster)`. Every
/// capability's behaviour suite uses it, so the memory backend is held to
/// exactly what Redis does.
macro_rules! both_backends {
    ($make:path; $($name:ident => |$fx:ident| $body:block)*) => {
        mod on_redis {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $fx = $make($crate::support::Kind::Redis);
                    $body
                }
            )*
        }
        mod on_memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $fx = $make($crate::support::Kind::Memory);
                    $body
                }
            )*
        }
        #[cfg(feature = "cluster")]
        mod on_cluster {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $fx = $make($crate::support::Kind::Cluster);
                    $body
                }
            )*
        }
    };
}
pub(crate) use both_backends;

/// The commands clients send to a server, as `MONITOR` reports them,
/// without those that scripts run inside Redis (which `INFO commandstats`
/// counts too). For round-trip tests: what did the layer send?
pub struct Monitor {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    port: u16,
    markers: usize,
}

impl Monitor {
    /// Starts monitoring `server` (a background thread reads until the
    /// server closes the connection).
    pub fn start(server: &RedisServer) -> Self {
        use std::io::BufRead;
        let mut stream =
            TcpStream::connect(("127.0.0.1", server.port())).expect("monitor connection");
        stream.write_all(b"MONITOR\r\n").expect("MONITOR");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let mut reader = std::io::BufReader::new(stream);
        let mut first = String::new();
        reader.read_line(&mut first).expect("MONITOR reply");
        assert!(first.starts_with("+OK"), "MONITOR answered {first:?}");
        std::thread::spawn(move || {
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                sink.lock().unwrap().push(std::mem::take(&mut line));
            }
        });
        Monitor {
            lines,
            port: server.port(),
            markers: 0,
        }
    }

    /// The commands sent since the last call, lowercase, in order (e.g.
    /// `["get", "evalsha"]`), excluding commands run by scripts and this
    /// harness's own admin commands.
    pub fn take(&mut self) -> Vec<String> {
        // A marker through another connection: once MONITOR shows it,
        // every command sent before it has been reported.
        self.markers += 1;
        let marker = format!("monitor-marker-{}", self.markers);
        raw_command(self.port, &format!("ECHO {marker}"), Duration::from_secs(2)).expect("marker");
        let started = Instant::now();
        loop {
            let mut lines = self.lines.lock().unwrap();
            if let Some(at) = lines.iter().position(|l| l.contains(&marker)) {
                let taken: Vec<String> = lines.drain(..=at).collect();
                return taken
                    .iter()
                    .filter(|l| !l.contains(" lua]") && !l.contains("\"ECHO\""))
                    .filter(|l| !l.contains("\"INFO\"") && !l.contains("\"CONFIG\""))
                    .filter_map(|l| l.split('"').nth(1).map(str::to_lowercase))
                    .collect();
            }
            drop(lines);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "MONITOR did not report the marker"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A primary, a replica and three sentinels watching the primary as
/// `mymaster` (quorum 2, down after 1 s), all on free loopback ports and
/// killed on drop.
pub struct SentinelSetup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<Sentinel>,
}

/// One `redis-server --sentinel` process.
pub struct Sentinel {
    port: u16,
    /// Its own `requirepass`, when set.
    password: Option<String>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(primary: u16) -> Sentinel {
        Self::start_with(primary, None)
    }

    /// A sentinel with `(the data nodes' password, its own)`.
    fn start_with(primary: u16, passwords: Option<(&str, &str)>) -> Sentinel {
        for _attempt in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir for a sentinel");
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                     sentinel monitor mymaster 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 5000\n{}",
                    dir.path().display(),
                    dir.path().join("sentinel.log").display(),
                    passwords.map_or(String::new(), |(data, own)| format!(
                        "sentinel auth-pass mymaster {data}\nrequirepass {own}\n"
                    )),
                ),
            )
            .expect("sentinel.conf");
            let child = match Command::new(binary())
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing_binary(&binary()),
                Err(e) => panic!("could not start a sentinel: {e}"),
            };
            let mut sentinel = Sentinel {
                port,
                password: passwords.map(|(_, own)| own.to_owned()),
                child: Some(child),
                _dir: dir,
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if raw_command(port, "PING", Duration::from_millis(200))
                    .is_ok_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
                {
                    return sentinel;
                }
                if let Some(Ok(Some(_))) = sentinel.child.as_mut().map(Child::try_wait) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            sentinel.kill();
        }
        panic!("a sentinel did not start after 5 attempts")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its URL with its password, if it has one.
    pub fn admin_url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => self.url(),
        }
    }

    /// The primary's port as this sentinel names it now.
    pub fn primary_port(&self) -> Option<u16> {
        let client = redis::Client::open(self.admin_url()).ok()?;
        let mut conn = client.get_connection().ok()?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut conn)
            .ok()?;
        addr.get(1)?.parse().ok()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

impl SentinelSetup {
    /// Starts them all and waits until the replica is in sync and every
    /// sentinel names the primary and knows the others.
    pub fn start() -> SentinelSetup {
        Self::start_with(None)
    }

    /// [`start`](Self::start) with `(the data nodes' password, the
    /// sentinels' own)`: the primary and replica require the first (the
    /// replica authenticating to the primary with it), the sentinels the
    /// second.
    pub fn start_with(passwords: Option<(&str, &str)>) -> SentinelSetup {
        let data: Vec<&str> = match passwords {
            Some((data, _)) => vec!["--requirepass", data, "--masterauth", data],
            None => Vec::new(),
        };
        let primary = RedisServer::start_with(&data);
        let port = primary.port().to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", &port];
        args.extend_from_slice(&data);
        let replica = RedisServer::start_with(&args);
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| Sentinel::start_with(primary.port(), passwords))
            .collect();
        let started = Instant::now();
        loop {
            let info: String = replica.cmd(&["INFO", "replication"]);
            let synced = info.contains("master_link_status:up");
            let named = sentinels
                .iter()
                .all(|s| s.primary_port() == Some(primary.port()));
            let acquainted = sentinels.iter().all(|s| {
                let client = redis::Client::open(s.admin_url()).unwrap();
                let Ok(mut conn) = client.get_connection() else {
                    return false;
                };
                let others: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("sentinels")
                    .arg("mymaster")
                    .query(&mut conn)
                    .unwrap_or_default();
                others.len() == 2
            });
            if synced && named && acquainted {
                return SentinelSetup {
                    primary,
                    replica,
                    sentinels,
                };
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the sentinels never agreed (synced {synced}, named {named}, acquainted {acquainted})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::url).collect()
    }
}

/// Waits (up to 10 s) until `replica` has received everything `primary`
/// wrote: replication is asynchronous, and a failover test must not count
/// a write lost in flight as the layer's.
pub async fn wait_in_sync(primary: &RedisServer, replica: &RedisServer) {
    let offset = |info: String, field: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
    };
    let started = Instant::now();
    loop {
        let sent = offset(primary.cmd(&["INFO", "replication"]), "master_repl_offset:");
        let got = offset(replica.cmd(&["INFO", "replication"]), "slave_repl_offset:");
        if sent.is_some() && sent == got {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a primary is lost: reads every session `read(i)` (its status and
/// body) until all answer 200 with `i`, within 30 s. A 5xx meanwhile is
/// the session layer's failure policy (counted); anything else, or a
/// session answering another's value, fails the test. Returns how long it
/// took and how many reads failed.
pub async fn until_every_session_reads_back<F, Fut>(sessions: usize, read: F) -> (Duration, u64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (u16, String)>,
{
    let lost = Instant::now();
    let mut failures = 0u64;
    loop {
        let mut all_ok = true;
        for i in 0..sessions {
            let (status, body) = read(i).await;
            match status {
                200 => assert_eq!(body, i.to_string(), "session {i}"),
                500..=599 => {
                    failures += 1;
                    all_ok = false;
                }
                s => panic!("session {i}: {s} {body}"),
            }
        }
        if all_ok {
            return (lost.elapsed(), failures);
        }
        assert!(
            lost.elapsed() < Duration::from_secs(30),
            "no recovery within 30 s ({failures} failed reads)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
