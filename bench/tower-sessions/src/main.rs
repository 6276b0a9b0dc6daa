//! This crate's `TowerSessionStore` beside `tower-sessions-redis-store`
//! (fred), both behind tower-sessions 0.14's `SessionManagerLayer`, on one
//! `redis-server` started here on a free port. Each scenario is a ratio to
//! the floor (one raw `GET` on a redis-rs multiplexed connection) measured
//! right before it, the median over rounds. Scenarios:
//!
//! - `read`: a request that reads one value of an existing session (one
//!   `GET` for either store);
//! - `write`: a request that reads and changes it (a `GET`, then a `SET`).
//!
//! ```text
//! cargo run --release --manifest-path bench/tower-sessions/Cargo.toml
//! ROUNDS=5 SECS=3 CONCURRENCY=32 cargo run --release --manifest-path ...
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use redis_layers::redis::RedisBackend;
use redis_layers::tower_sessions::TowerSessionStore;
use tower::ServiceExt;
use tower_sessions::{Session, SessionManagerLayer, SessionStore};
use tower_sessions_redis_store::fred::prelude::*;
use tower_sessions_redis_store::RedisStore;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A redis-server on a free port, killed on drop.
struct Server(Child, u16);

impl Server {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Server(child, port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn read(session: Session) -> String {
    let n: Option<u64> = session.get("n").await.unwrap();
    format!("{n:?}")
}

async fn write(session: Session) -> String {
    let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
    session.insert("n", n).await.unwrap();
    n.to_string()
}

fn app<S: SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/read", get(read))
        .route("/write", post(write))
        .layer(SessionManagerLayer::new(store).with_secure(false))
}

/// A session made through `app`: its cookie.
async fn session_cookie(app: &Router) -> String {
    let res = app
        .clone()
        .oneshot(Request::post("/write").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// Requests per second over `secs` with `concurrency` tasks, each running
/// `one` in a loop.
async fn drive<F, Fut>(concurrency: u64, secs: u64, one: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (one, done) = (one.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    one().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

/// Sends requests like `method path` with `cookie` to `app`, checking each
/// is a 200.
async fn drive_app(
    app: Router,
    method: &'static str,
    path: &'static str,
    cookie: String,
    c: u64,
    secs: u64,
) -> f64 {
    drive(c, secs, move || {
        let (app, cookie) = (app.clone(), cookie.clone());
        async move {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap();
            let res = app.oneshot(req).await.unwrap();
            assert!(res.status().is_success());
            let _ = res.into_body().collect().await.unwrap();
        }
    })
    .await
}

#[tokio::main]
async fn main() {
    let (rounds, secs, c) = (env("ROUNDS", 3), env("SECS", 3), env("CONCURRENCY", 32));
    let server = Server::start();
    let url = format!("redis://127.0.0.1:{}", server.1);

    // The floor: one raw GET on a redis-rs multiplexed connection.
    let client = redis::Client::open(url.as_str()).unwrap();
    let floor_conn = client.get_multiplexed_async_connection().await.unwrap();

    let ours = app(TowerSessionStore::new(
        RedisBackend::builder()
            .url(&url)
            .prefix("ours")
            .build()
            .unwrap(),
    ));
    let config = Config::from_url(&url).unwrap();
    let pool = Pool::new(config, None, None, None, 6).unwrap();
    pool.init().await.unwrap();
    let peer = app(RedisStore::new(pool.clone()));
    let stores = [("redis-layers", ours), ("tower-sessions-redis-store", peer)];
    let cookies: Vec<String> = {
        let mut v = Vec::new();
        for (_, app) in &stores {
            v.push(session_cookie(app).await);
        }
        v
    };

    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); 4];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for round in 0..rounds {
        for (i, (name, app)) in stores.iter().enumerate() {
            for (j, (method, path)) in [("GET", "/read"), ("POST", "/write")]
                .into_iter()
                .enumerate()
            {
                let conn = floor_conn.clone();
                let floor = drive(c, secs, move || {
                    let mut conn = conn.clone();
                    async move {
                        let _: Option<Vec<u8>> = redis::cmd("GET")
                            .arg("floor")
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                    }
                })
                .await;
                let rate = drive_app(app.clone(), method, path, cookies[i].clone(), c, secs).await;
                let k = i * 2 + j;
                ratios[k].push(rate / floor);
                rates[k].push(rate);
                println!(
                    "round {round}: {name} {path}: {rate:.0} req/s, floor {floor:.0}, ratio {:.2}",
                    rate / floor
                );
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\n| store | scenario | req/s (median) | ratio to floor (median) |\n|---|---|---:|---:|"
    );
    for (i, (name, _)) in stores.iter().enumerate() {
        for (j, scenario) in ["read", "write"].into_iter().enumerate() {
            let k = i * 2 + j;
            println!(
                "| {name} | {scenario} | {:.0} | {:.2} |",
                median(&mut rates[k]),
                median(&mut ratios[k])
            );
        }
    }
    drop(server);
}
