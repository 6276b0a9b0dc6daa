//! The Redis backend against a real `redis-server`: script runner, deadlines,
//! restarts, key isolation, error kinds, and concurrency on multiplexed
//! connections.

mod support;

use std::time::{Duration, Instant};

use redis_layers::redis::{RedisBackend, Script};
use redis_layers::ErrorKind;
use support::{delta, unique_prefix, RedisServer};

/// KEYS[1]: a counter. ARGV[1]: increment. Returns the new value.
static INCR_BY: Script = Script::new(
    "test-incr-by",
    "return redis.call('INCRBY', KEYS[1], ARGV[1])",
);

/// Raises a Lua error.
static FAILING: Script = Script::new("test-failing", "return redis.error_reply('boom')");

fn backend(server: &RedisServer, deadline_ms: u64) -> RedisBackend {
    RedisBackend::builder()
        .url(server.url())
        .prefix(unique_prefix("backend"))
        .deadline(Duration::from_millis(deadline_ms))
        .build()
        .unwrap()
}

const MARGIN: Duration = Duration::from_millis(150);

#[tokio::test]
async fn scripts_cost_one_evalsha_and_never_a_script_load() {
    let server = RedisServer::start();
    let b = backend(&server, 500);
    let key = b.namespace().key(&["n"]);
    // Warm up: the first call finds no cached script and falls back to EVAL.
    let v: i64 = b.script(&INCR_BY).key(&key).arg(1).invoke().await.unwrap();
    assert_eq!(v, 1);

    let before = server.command_calls();
    for i in 2..=11 {
        let v: i64 = b.script(&INCR_BY).key(&key).arg(1).invoke().await.unwrap();
        assert_eq!(v, i);
    }
    let after = server.command_calls();
    assert_eq!(delta(&before, &after, "evalsha"), 10);
    assert_eq!(delta(&before, &after, "eval"), 0);
    assert_eq!(delta(&before, &after, "ping"), 0, "no PING per call");
    assert_eq!(after.get("script|load"), None);
}

#[tokio::test]
async fn the_script_runner_recovers_after_script_flush() {
    let server = RedisServer::start();
    let b = backend(&server, 500);
    let key = b.namespace().key(&["n"]);
    let _: i64 = b.script(&INCR_BY).key(&key).arg(5).invoke().await.unwrap();

    let _: () = server.cmd(&["SCRIPT", "FLUSH"]);
    let before = server.command_calls();
    let v: i64 = b.script(&INCR_BY).key(&key).arg(5).invoke().await.unwrap();
    assert_eq!(v, 10, "the call after the flush still runs exactly once");
    let mid = server.command_calls();
    assert_eq!(delta(&before, &mid, "evalsha"), 1);
    assert_eq!(
        delta(&before, &mid, "eval"),
        1,
        "NOSCRIPT falls back to EVAL"
    );

    // EVAL cached the script again: back to one EVALSHA per call.
    let v: i64 = b.script(&INCR_BY).key(&key).arg(5).invoke().await.unwrap();
    assert_eq!(v, 15);
    let after = server.command_calls();
    assert_eq!(delta(&mid, &after, "evalsha"), 1);
    assert_eq!(delta(&mid, &after, "eval"), 0);
    assert_eq!(after.get("script|load"), None, "never SCRIPT LOAD");
}

#[tokio::test]
async fn a_paused_redis_yields_a_timeout_within_the_deadline() {
    let server = RedisServer::start();
    let deadline = Duration::from_millis(100);
    let b = backend(&server, 100);
    b.ping().await.unwrap();

    let _: () = server.cmd(&["CLIENT", "PAUSE", "800", "ALL"]);
    let started = Instant::now();
    let err = b.get("k").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_unavailable());
    assert!(took >= deadline - Duration::from_millis(5), "{took:?}");
    assert!(took < deadline + MARGIN, "{took:?}");

    let started = Instant::now();
    let err = b
        .script(&INCR_BY)
        .key("k2")
        .arg(1)
        .invoke::<i64>()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(started.elapsed() < deadline + MARGIN);

    // Once the pause ends the same backend answers again.
    tokio::time::sleep(Duration::from_millis(900)).await;
    b.ping().await.unwrap();
    let v: i64 = b.script(&INCR_BY).key("k2").arg(1).invoke().await.unwrap();
    assert!(v >= 1);
}

#[tokio::test]
async fn a_busy_redis_yields_a_timeout_within_the_deadline() {
    let server = RedisServer::start();
    let deadline = Duration::from_millis(100);
    let b = backend(&server, 100);
    b.ping().await.unwrap();

    let sleeper = block_server(&server, "0.7");
    let started = Instant::now();
    let err = b.get("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(
        started.elapsed() < deadline + MARGIN,
        "{:?}",
        started.elapsed()
    );
    sleeper.join().unwrap();
    b.ping().await.unwrap();
}

#[tokio::test]
async fn the_backend_recovers_after_redis_is_killed_and_restarted() {
    let mut server = RedisServer::start();
    let b = backend(&server, 200);
    let key = b.namespace().key(&["n"]);
    let _: i64 = b.script(&INCR_BY).key(&key).arg(1).invoke().await.unwrap();

    server.kill();
    for _ in 0..4 {
        let started = Instant::now();
        let err = b.get(&key).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(started.elapsed() < Duration::from_millis(200) + MARGIN);
    }

    server.restart();
    // The restarted server is empty and has no cached scripts.
    let mut failures = 0;
    let v = loop {
        match b.script(&INCR_BY).key(&key).arg(1).invoke::<i64>().await {
            Ok(v) => break v,
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                failures += 1;
                assert!(failures <= 2, "still failing after restart: {e}");
            }
        }
    };
    assert_eq!(v, 1);
    for _ in 0..20 {
        b.get(&key)
            .await
            .expect("every call succeeds once reconnected");
    }
}

#[tokio::test]
async fn a_server_that_was_never_up_gives_connection_errors() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let b = RedisBackend::builder()
        .url(url)
        .deadline(Duration::from_millis(300))
        .build()
        .expect("building does not connect");
    let started = Instant::now();
    let err = b.ping().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(started.elapsed() < Duration::from_millis(300) + MARGIN);
}

#[tokio::test]
async fn prefixes_isolate_two_backends_on_one_redis() {
    let server = RedisServer::start();
    let a = RedisBackend::builder()
        .url(server.url())
        .prefix("app-a")
        .build()
        .unwrap();
    let b = RedisBackend::builder()
        .url(server.url())
        .prefix("app-b")
        .build()
        .unwrap();
    let ka = a.namespace().key(&["shared"]);
    let kb = b.namespace().key(&["shared"]);
    assert_ne!(ka, kb);
    a.set(&ka, b"from a", None).await.unwrap();
    b.set(&kb, b"from b", None).await.unwrap();
    assert_eq!(a.get(&ka).await.unwrap().as_deref(), Some(&b"from a"[..]));
    assert_eq!(b.get(&kb).await.unwrap().as_deref(), Some(&b"from b"[..]));
    assert!(b.delete(&kb).await.unwrap());
    assert_eq!(a.get(&ka).await.unwrap().as_deref(), Some(&b"from a"[..]));
    let keys: Vec<String> = server.cmd(&["KEYS", "app-a:*"]);
    assert_eq!(keys, vec!["app-a:shared".to_owned()]);
}

#[tokio::test]
async fn error_kinds_tell_scripts_servers_and_decoding_apart() {
    let server = RedisServer::start();
    let b = backend(&server, 500);
    let err = b.script(&FAILING).invoke::<i64>().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Script, "{err}");
    assert!(err.to_string().contains("test-failing"), "{err}");

    let key = b.namespace().key(&["h"]);
    let _: () = server.cmd(&["HSET", &key, "f", "v"]);
    let err = b.get(&key).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server, "WRONGTYPE: {err}");

    b.set(&key, b"not a number", None).await.unwrap();
    let err = b
        .query::<i64>(redis::cmd("GET").arg(&key))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");

    // None of these broke the connection.
    b.ping().await.unwrap();
}

#[tokio::test]
async fn a_bad_url_or_prefix_is_a_config_error() {
    let err = RedisBackend::from_url("nonsense://x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = RedisBackend::builder()
        .url("redis://127.0.0.1:1")
        .prefix("bad{prefix}")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = RedisBackend::builder().build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn a_pool_passed_in_is_used_and_stays_available() {
    let server = RedisServer::start();
    let manager = bb8_redis::RedisConnectionManager::new(server.url()).unwrap();
    let pool = bb8::Pool::builder()
        .max_size(2)
        .build(manager)
        .await
        .unwrap();
    let b = RedisBackend::builder()
        .pool(pool)
        .prefix(unique_prefix("pool"))
        .build()
        .unwrap();
    let key = b.namespace().key(&["k"]);
    b.set(&key, b"v", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let mut conn = b.pool().expect("a pool").get().await.unwrap();
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(v, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_from_two_backends_are_all_applied() {
    let server = RedisServer::start();
    let prefix = unique_prefix("concurrent");
    let make = || {
        RedisBackend::builder()
            .url(server.url())
            .prefix(prefix.clone())
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (a, b) = (make(), make());
    let key = a.namespace().key(&["count"]);
    let mut tasks = Vec::new();
    for i in 0..400 {
        let backend = if i % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            backend
                .script(&INCR_BY)
                .key(&key)
                .arg(1)
                .invoke::<i64>()
                .await
                .unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=400).collect::<Vec<i64>>(),
        "each increment applied once"
    );
    // Two backends with two multiplexed connections each: 4 clients, not 400.
    let clients: String = server.cmd(&["CLIENT", "LIST"]);
    assert!(clients.lines().count() <= 5, "{clients}");
}

/// Blocks the server for `secs` from another thread; returns its handle.
fn block_server(server: &RedisServer, secs: &str) -> std::thread::JoinHandle<()> {
    let url = server.url();
    let secs = secs.to_owned();
    let handle = std::thread::spawn(move || {
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(secs)
            .query(&mut conn)
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(50));
    handle
}

#[tokio::test]
async fn a_deadline_longer_than_redis_rs_reply_timeout_is_honoured() {
    let server = RedisServer::start();
    let b = backend(&server, 1500);
    b.ping().await.unwrap();
    let sleeper = block_server(&server, "0.8");
    let started = Instant::now();
    b.ping()
        .await
        .expect("a slow reply within the deadline is a success");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    sleeper.join().unwrap();
}

#[tokio::test]
async fn with_a_passed_in_pool_replies_time_out_at_the_managers_500_ms() {
    let server = RedisServer::start();
    let manager = bb8_redis::RedisConnectionManager::new(server.url()).unwrap();
    let pool = bb8::Pool::builder().build_unchecked(manager);
    let b = RedisBackend::builder()
        .pool(pool)
        .deadline(Duration::from_millis(1500))
        .build()
        .unwrap();
    b.ping().await.unwrap();
    let sleeper = block_server(&server, "0.9");
    let started = Instant::now();
    let err = b.ping().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "documented 500 ms cap: {took:?}"
    );
    sleeper.join().unwrap();
}

/// A server that stops answering without closing the socket (a host lost
/// in a failover) is left after three missed deadlines in a row: the next
/// call opens a new connection, instead of waiting on the old one until
/// the kernel gives up.
#[tokio::test]
async fn three_missed_deadlines_in_a_row_replace_the_connection() {
    let server = RedisServer::start();
    let backend = RedisBackend::builder()
        .url(server.url())
        .deadline(Duration::from_millis(100))
        .build()
        .unwrap();
    let id = || async {
        backend
            .query::<i64>(&redis::cmd("CLIENT").arg("ID").to_owned())
            .await
    };
    let before = id().await.unwrap();
    assert_eq!(
        id().await.unwrap(),
        before,
        "one connection while all is well"
    );
    // Two misses: the connection stays.
    let blocked = block_server(&server, "0.5");
    for _ in 0..2 {
        assert_eq!(backend.ping().await.unwrap_err().kind(), ErrorKind::Timeout);
    }
    blocked.join().unwrap();
    assert_eq!(
        id().await.unwrap(),
        before,
        "two misses keep the connection"
    );
    // Three in a row: a new one.
    let blocked = block_server(&server, "0.6");
    for _ in 0..3 {
        assert_eq!(backend.ping().await.unwrap_err().kind(), ErrorKind::Timeout);
    }
    blocked.join().unwrap();
    assert_ne!(
        id().await.unwrap(),
        before,
        "a new connection after three misses"
    );
}

/// A script call marked `finish_if_late` that times out behind a paused
/// Redis whose script cache was flushed: its `EVALSHA` comes back
/// `NOSCRIPT` after the deadline, and the call must still send `EVAL`
/// then, so the script runs once.
#[tokio::test]
async fn a_script_that_times_out_still_runs_once_after_a_late_noscript() {
    let server = RedisServer::start();
    let b = backend(&server, 150);
    let key = b.namespace().key(&["late"]);
    let v: i64 = b.script(&INCR_BY).key(&key).arg(1).invoke().await.unwrap();
    assert_eq!(v, 1);
    let _: () = server.cmd(&["SCRIPT", "FLUSH"]);
    let _: () = server.cmd(&["CLIENT", "PAUSE", "600", "WRITE"]);
    let err = b
        .script(&INCR_BY)
        .key(&key)
        .arg(10)
        .finish_if_late()
        .invoke::<i64>()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    until_counter(&server, &key, 11, "the timed-out script never ran").await;
    // Exactly once: nothing else sends it again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n: String = server.cmd(&["GET", &key]);
    assert_eq!(n, "11");
}

/// Three deadlines missed in a row retire the connection; commands already
/// sent on it (held by a paused Redis) still run once Redis resumes, rather
/// than being dropped with the socket.
#[tokio::test]
async fn commands_sent_before_a_reconnect_still_run() {
    let server = RedisServer::start();
    let b = backend(&server, 100);
    let key = b.namespace().key(&["sent"]);
    // The script cached first: this is about the connection, not NOSCRIPT.
    let warm = b.namespace().key(&["warm"]);
    let _: i64 = b.script(&INCR_BY).key(&warm).arg(1).invoke().await.unwrap();
    let _: () = server.cmd(&["CLIENT", "PAUSE", "800", "WRITE"]);
    for _ in 0..4 {
        let err = b
            .script(&INCR_BY)
            .key(&key)
            .arg(1)
            .invoke::<i64>()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    }
    until_counter(
        &server,
        &key,
        4,
        "commands sent before the reconnect were lost",
    )
    .await;
    // And the backend works on its new connection.
    let v: i64 = b.script(&INCR_BY).key(&key).arg(1).invoke().await.unwrap();
    assert_eq!(v, 5);
}

/// Waits (up to 3 s) until the counter at `key` reads `want`.
async fn until_counter(server: &RedisServer, key: &str, want: i64, why: &str) {
    let started = Instant::now();
    loop {
        let n: Option<String> = server.cmd(&["GET", key]);
        let n: Option<i64> = n.and_then(|s| s.parse().ok());
        if n == Some(want) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{why}: {n:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// During a long pause, calls keep coming and each new connection times
/// out too; a connection is retired only after three deadlines missed on
/// it, not after three missed by calls sent on connections already
/// retired (which would retire every new connection at once, each kept
/// open for the late-answer grace: one connection per few calls).
#[tokio::test]
async fn a_long_pause_retires_connections_by_their_own_timeouts() {
    let server = RedisServer::start();
    let b = RedisBackend::builder()
        .url(server.url())
        .prefix(support::unique_prefix("pause"))
        .multiplexed_connections(1)
        .deadline(Duration::from_millis(100))
        .build()
        .unwrap();
    let key = b.namespace().key(&["k"]);
    b.get(&key).await.unwrap();
    let connections = |server: &RedisServer| -> u64 {
        let info: String = server.cmd(&["INFO", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    let before = connections(&server);
    let _: () = server.cmd(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    // 60 writes over 1.2 s, each timing out.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let (b, key) = (b.clone(), key.clone());
        calls.spawn(async move { b.set(&key, b"x", None).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Some(call) = calls.join_next().await {
        assert_eq!(call.unwrap().unwrap_err().kind(), ErrorKind::Timeout);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The admin connections of this test count too (one per command).
    let opened = connections(&server) - before;
    assert!(
        opened <= 14,
        "{opened} connections opened for 60 timed-out calls"
    );
    // And the backend works once the pause is over.
    b.set(&key, b"y", None).await.unwrap();
}
