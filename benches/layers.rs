//! Load harness: drives tower services in-process with N concurrent tasks for
//! a fixed time and reports each scenario as a ratio to the `floor` — one raw
//! GET on a redis-rs multiplexed connection, the fastest one-round-trip path
//! a layer can hope for. Every round measures the floor again right before
//! each scenario, and the ratio reported is the median over rounds of these
//! paired ratios, so slow drift on a shared machine cancels out.
//!
//! ```text
//! cargo bench --bench layers
//! BENCH_CONCURRENCY=32 BENCH_SECS=5 BENCH_ROUNDS=3 BENCH_ONLY=backend-get,session-read cargo bench
//! REDIS_URL=redis://127.0.0.1:6379 cargo bench        # use a running Redis
//! BENCH_CLUSTER=1 cargo bench --features cluster     # a 3-primary cluster it starts
//! BENCH_TLS=1 cargo bench --features tls             # over TLS (a CA made for the run)
//! BENCH_ALLOCS=1 cargo bench                         # also allocations per request
//! ```
//!
//! Beside the ratios, each scenario's CPU time per request is printed: this
//! process's (`client µs`) and its `redis-server`s' (`server µs`), read
//! from `/proc` over the measured window.
//!
//! With `BENCH_CLUSTER=1` the floor is a GET on a redis-rs cluster
//! connection and every layer's backend is built with `.cluster(...)`.
//!
//! Each layer adds its scenarios to `scenarios()`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use http::Request;
use http_body_util::BodyExt;
use redis_layers::redis::RedisBackend;
use tower::ServiceExt;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The system allocator, counting allocations while `BENCH_ALLOCS=1`
/// (a count per request is exact where throughput swings with the VM).
struct Counting;

static COUNT_ALLOCS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if COUNT_ALLOCS.load(std::sync::atomic::Ordering::Relaxed) {
            ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        if COUNT_ALLOCS.load(std::sync::atomic::Ordering::Relaxed) {
            ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What every scenario gets to build its service.
#[derive(Clone)]
struct Ctx {
    redis_url: String,
    /// The CA to trust, when benchmarking over TLS (`BENCH_TLS=1`).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls_ca: Option<String>,
    /// Seed nodes, when benchmarking a cluster.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    cluster: Option<Vec<String>>,
    prefix: String,
    concurrency: usize,
}

/// A service to drive and the request each iteration sends.
struct Target {
    router: Router,
    request: Arc<dyn Fn(usize, u64) -> Request<Body> + Send + Sync>,
}

struct Scenario {
    name: &'static str,
    build: fn(Ctx) -> BoxFuture<Target>,
}

/// This crate's backend as every scenario configures it.
fn bench_backend(ctx: &Ctx, prefix: String) -> RedisBackend {
    let builder = RedisBackend::builder();
    #[cfg(feature = "cluster")]
    let builder = match &ctx.cluster {
        Some(nodes) => builder.cluster(nodes.clone()),
        None => builder.url(ctx.redis_url.clone()),
    };
    #[cfg(not(feature = "cluster"))]
    let builder = builder.url(ctx.redis_url.clone());
    #[cfg(feature = "tls")]
    let builder = match &ctx.tls_ca {
        Some(ca) => {
            builder.tls(redis_layers::redis::Tls::new().root_certificates_pem(ca.as_bytes()))
        }
        None => builder,
    };
    builder
        .prefix(prefix)
        .multiplexed_connections(env_or(
            "BENCH_LANES",
            redis_layers::redis::DEFAULT_MULTIPLEXED_CONNECTIONS,
        ))
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A redis-rs client for the bench's server (over TLS with `BENCH_TLS=1`).
fn raw_client(ctx: &Ctx) -> redis::Client {
    #[cfg(feature = "tls")]
    if let Some(ca) = &ctx.tls_ca {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.as_bytes().to_vec()),
        };
        return redis::Client::build_with_tls(ctx.redis_url.as_str(), certs).unwrap();
    }
    redis::Client::open(ctx.redis_url.as_str()).unwrap()
}

/// The floor: one raw redis-rs GET per request on `conn`.
fn floor_target<C>(conn: C, key: String) -> Target
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let router = Router::new()
        .route(
            "/",
            get(|State((mut conn, key)): State<(C, String)>| async move {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                v.unwrap_or_default()
            }),
        )
        .with_state((conn, key));
    Target {
        router,
        request: plain_get("/"),
    }
}

/// [`floor_target`] with a deadline: the GET under one tokio timer of
/// 2 s, as this crate's backend bounds every call (on one node the
/// floor's connection has redis-rs's own reply timer of 500 ms, this one
/// none: one timer either way; on a cluster the floor has none).
fn floor_deadline_target<C>(conn: C, key: String) -> Target
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let router = Router::new()
        .route(
            "/",
            get(|State((mut conn, key)): State<(C, String)>| async move {
                let mut cmd = redis::cmd("GET");
                cmd.arg(&key);
                let get = cmd.query_async(&mut conn);
                let v: Option<Vec<u8>> = tokio::time::timeout(Duration::from_secs(2), get)
                    .await
                    .unwrap()
                    .unwrap();
                v.unwrap_or_default()
            }),
        )
        .with_state((conn, key));
    Target {
        router,
        request: plain_get("/"),
    }
}

/// The floor on a cluster: one GET of `{prefix}:<name>` on a redis-rs
/// cluster connection.
#[cfg(feature = "cluster")]
async fn cluster_floor(ctx: &Ctx, nodes: &[String], name: &str) -> Target {
    cluster_target(ctx, nodes, name, floor_target).await
}

/// `make`'s target on a redis-rs cluster connection, for the key
/// `{prefix}:<name>`.
#[cfg(feature = "cluster")]
async fn cluster_target(
    ctx: &Ctx,
    nodes: &[String],
    name: &str,
    make: fn(redis::cluster_async::ClusterConnection, String) -> Target,
) -> Target {
    let client = redis::cluster::ClusterClient::new(nodes.to_vec()).unwrap();
    let conn = client.get_async_connection().await.unwrap();
    make(conn, format!("{}:{name}", ctx.prefix))
}

/// The values the raw scenarios read, on a cluster.
#[cfg(feature = "cluster")]
async fn seed_cluster(prefix: &str, nodes: &[String]) {
    let client = redis::cluster::ClusterClient::new(nodes.to_vec()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:bench"))
        .arg("0123456789abcdef")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:bench-1k"))
        .arg("x".repeat(1100))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:bench-hash"))
        .arg(&["m:created", "1764230400000", "m:deadline", "1764259200000"])
        .arg(&["m:seen", "1764230400000", "d:n", "0"])
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A router whose one route runs `handle(backend, key)` against this
/// crate's backend; the key holds the seeded value.
fn backend_target(
    ctx: Ctx,
    handle: fn(RedisBackend, String) -> BoxFuture<Vec<u8>>,
) -> BoxFuture<Target> {
    backend_target_of(ctx, "bench", handle)
}

/// [`backend_target`] on the seeded value `name` (`bench`, `bench-1k`).
fn backend_target_of(
    ctx: Ctx,
    name: &'static str,
    handle: fn(RedisBackend, String) -> BoxFuture<Vec<u8>>,
) -> BoxFuture<Target> {
    Box::pin(async move {
        let backend = bench_backend(&ctx, ctx.prefix.clone());
        let key = backend.namespace().key(&[name]);
        let router = Router::new()
            .route(
                "/",
                get(
                    move |State((backend, key)): State<(RedisBackend, String)>| {
                        handle(backend, key)
                    },
                ),
            )
            .with_state((backend, key));
        Target {
            router,
            request: plain_get("/"),
        }
    })
}

fn plain_get(path: &'static str) -> Arc<dyn Fn(usize, u64) -> Request<Body> + Send + Sync> {
    Arc::new(move |_, _| Request::get(path).body(Body::empty()).unwrap())
}

/// A router with the session layer on Redis, and one session cookie per
/// task (created through the router itself) so tasks do not share a key.
async fn session_target(ctx: Ctx, path: &'static str, memory: bool) -> Target {
    use redis_layers::memory::MemoryBackend;
    use redis_layers::session::{Session, SessionLayer};
    use redis_layers::Backend;

    async fn read(session: Session) -> String {
        let n: u64 = session.get("n").await.unwrap().unwrap_or(0);
        n.to_string()
    }
    async fn write(session: Session) -> String {
        let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
        session.insert("n", n).unwrap();
        n.to_string()
    }
    async fn seed(session: Session) -> &'static str {
        session.insert("n", 0u64).unwrap();
        "ok"
    }

    let backend: Backend = if memory {
        MemoryBackend::new().into()
    } else {
        bench_backend(
            &ctx,
            format!("{}-{}", ctx.prefix, path.trim_start_matches('/')),
        )
        .into()
    };
    let layer = SessionLayer::new(backend);
    let router = Router::new()
        .route("/read", get(read))
        .route("/write", get(write))
        .route("/seed", get(seed))
        .layer(layer);
    let mut cookies = Vec::with_capacity(ctx.concurrency);
    for _ in 0..ctx.concurrency {
        let res = router
            .clone()
            .oneshot(Request::get("/seed").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let set = res.headers()[http::header::SET_COOKIE].to_str().unwrap();
        let pair = set.split(';').next().unwrap().to_owned();
        // Built once: parsing a header value per request is the client's
        // work, not the layer's.
        cookies.push(http::HeaderValue::from_maybe_shared(bytes::Bytes::from(pair)).unwrap());
    }
    let cookies = Arc::new(cookies);
    Target {
        router,
        request: Arc::new(move |task, _| {
            let mut req = Request::get(path).body(Body::empty()).unwrap();
            req.headers_mut()
                .insert(http::header::COOKIE, cookies[task % cookies.len()].clone());
            req
        }),
    }
}

/// A router limited by one rule holding `policies` (keyed by the client
/// address, one address per task so tasks do not share a key).
async fn ratelimit_target(
    ctx: Ctx,
    name: &str,
    policies: Vec<redis_layers::rate_limit::Policy>,
) -> Target {
    use redis_layers::rate_limit::{RateLimitLayer, Rule};

    let backend = bench_backend(&ctx, format!("{}-{name}", ctx.prefix));
    let rule = policies.into_iter().fold(Rule::any(), Rule::policy);
    let layer = RateLimitLayer::builder(backend).rule(rule).build().unwrap();
    let router = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer);
    let peers: Arc<Vec<std::net::SocketAddr>> = Arc::new(
        (0..ctx.concurrency)
            .map(|i| std::net::SocketAddr::from(([192, 0, 2, (i % 250) as u8], 1000)))
            .collect(),
    );
    Target {
        router,
        request: Arc::new(move |task, _| {
            let mut req = Request::get("/").body(Body::empty()).unwrap();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peers[task % peers.len()]));
            req
        }),
    }
}

/// A router whose one route answers a 1 KB public response through the
/// cache layer (with its local tier when `local`), already stored: every
/// request is a hit (from Redis, or from the local tier).
async fn cache_target(ctx: Ctx, local: bool, copies: bool) -> Target {
    cache_target_varying(ctx, local, copies, false).await
}

/// [`cache_target`], the response varying on `Accept-Encoding` when
/// `vary` (each request sends `gzip`).
async fn cache_target_varying(ctx: Ctx, local: bool, copies: bool, vary: bool) -> Target {
    use redis_layers::cache::CacheLayer;
    let name = if local { "local" } else { "cache" };
    let backend = bench_backend(&ctx, format!("{}-{name}", ctx.prefix));
    let mut layer = CacheLayer::builder(backend);
    if local {
        layer = layer.local_tier(1024).thread_copies(copies);
    }
    // A body the handler need not copy (axum clones a layered route's
    // handler, captures included, on every request).
    let body = one_kb();
    let router = Router::new()
        .route(
            "/",
            get(move || async move {
                let mut headers = http::HeaderMap::new();
                headers.insert(
                    "cache-control",
                    http::HeaderValue::from_static("public, max-age=3600"),
                );
                if vary {
                    headers.insert("vary", http::HeaderValue::from_static("accept-encoding"));
                }
                (headers, body)
            }),
        )
        .layer(layer.build().unwrap());
    let request: Arc<dyn Fn(usize, u64) -> Request<Body> + Send + Sync> = if vary {
        Arc::new(|_, _| {
            Request::get("/")
                .header("accept-encoding", "gzip")
                .body(Body::empty())
                .unwrap()
        })
    } else {
        plain_get("/")
    };
    // Stored by the first request (the write follows its body); with a
    // local tier, kept locally once it listens and reads it back.
    let want = if local { "detail=local" } else { "hit" };
    let started = Instant::now();
    loop {
        let res = router.clone().oneshot(request(0, 0)).await.unwrap();
        let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
        let _ = res.into_body().collect().await;
        if status.contains(want) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Target { router, request }
}

/// `POST /orders` answering 201 behind an idempotency layer on `backend`,
/// scoped by `X-API-Key`.
fn orders_router(backend: impl redis_layers::idempotency::IdempotencyStore) -> Router {
    use redis_layers::idempotency::{IdempotencyLayer, Scope};
    Router::new()
        .route(
            "/orders",
            axum::routing::post(|| async { (http::StatusCode::CREATED, "order 1") }),
        )
        .layer(IdempotencyLayer::new(backend, Scope::header("x-api-key")))
}

/// Each task locking a resource of its own (uncontended) on Redis: with
/// `Locks` in the handler (take, then release: two small scripts), or
/// with a `LockLayer` around a trivial handler (the same two calls).
async fn lock_target(ctx: Ctx, layer: bool) -> Target {
    use redis_layers::lock::{LockKey, LockLayer, Locks};
    let backend = bench_backend(&ctx, format!("{}-lock", ctx.prefix));
    let router = if layer {
        Router::new().route("/", get(|| async { "done" })).layer(
            LockLayer::builder(backend, LockKey::header("x-task"))
                .build()
                .unwrap(),
        )
    } else {
        Router::new()
            .route(
                "/",
                get(
                    |State(locks): State<Locks>, headers: http::HeaderMap| async move {
                        let resource = headers["x-task"].to_str().unwrap().to_owned();
                        let guard = locks
                            .try_acquire(&resource, Duration::from_secs(10))
                            .await
                            .unwrap()
                            .expect("uncontended");
                        assert!(guard.release().await.unwrap());
                        "done"
                    },
                ),
            )
            .with_state(Locks::new(backend))
    };
    // Task names built once: a client's formatting is not the layer's cost.
    let tasks: Arc<Vec<http::HeaderValue>> = Arc::new(
        (0..ctx.concurrency)
            .map(|t| http::HeaderValue::try_from(format!("task-{t}")).unwrap())
            .collect(),
    );
    let request: Arc<dyn Fn(usize, u64) -> Request<Body> + Send + Sync> =
        Arc::new(move |task, _| {
            let mut req = Request::get("/").body(Body::empty()).unwrap();
            req.headers_mut()
                .insert("x-task", tasks[task % tasks.len()].clone());
            req
        });
    Target { router, request }
}

/// POSTs to `/orders` behind an idempotency layer (on Redis, or on the
/// memory backend): a new key each time (`first`), or each task's own key,
/// completed once before the run (a replay).
async fn idempotency_target(ctx: Ctx, first: bool, memory: bool) -> Target {
    let router = if memory {
        // Room for every key a run makes (a fresh one per request).
        orders_router(
            redis_layers::memory::MemoryBackend::builder()
                .max_entries(100_000_000)
                .build()
                .unwrap(),
        )
    } else {
        let name = if first { "idem-first" } else { "idem" };
        orders_router(bench_backend(&ctx, format!("{}-{name}", ctx.prefix)))
    };
    let request: Arc<dyn Fn(usize, u64) -> Request<Body> + Send + Sync> = if first {
        // A fresh key per request (the client's formatting is small next
        // to two round trips).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Arc::new(|_, _| {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Request::post("/orders")
                .header("x-api-key", "bench")
                .header("idempotency-key", format!("f-{n}-{}", std::process::id()))
                .body(Body::from("{}"))
                .unwrap()
        })
    } else {
        // Keys built once: a client's formatting is not the layer's cost.
        let keys: Arc<Vec<http::HeaderValue>> = Arc::new(
            (0..ctx.concurrency)
                .map(|t| http::HeaderValue::try_from(format!("k-{t}")).unwrap())
                .collect(),
        );
        Arc::new(move |task, _| {
            let mut req = Request::post("/orders")
                .header("x-api-key", "bench")
                .body(Body::from("{}"))
                .unwrap();
            req.headers_mut()
                .insert("idempotency-key", keys[task % keys.len()].clone());
            req
        })
    };
    if !first {
        // Each task's key completed once.
        for task in 0..ctx.concurrency {
            let res = router.clone().oneshot(request(task, 0)).await.unwrap();
            assert_eq!(res.status(), http::StatusCode::CREATED);
        }
    }
    Target { router, request }
}

/// The target of a scenario answered in process: `router`, sent plain
/// GETs of `/`.
fn in_process(router: Router) -> BoxFuture<Target> {
    Box::pin(async move {
        Target {
            router,
            request: plain_get("/"),
        }
    })
}

/// No layer, no Redis: one route answering "hello".
fn bare_router() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// A layer that does nothing: what any layer on a route costs in axum
/// (a boxed service clone and a boxed future per request), for reading
/// the in-process scenarios against `bare`.
#[derive(Clone)]
struct NoopLayer;

impl<S> tower::Layer<S> for NoopLayer {
    type Service = Noop<S>;
    fn layer(&self, inner: S) -> Noop<S> {
        Noop(inner)
    }
}

#[derive(Clone)]
struct Noop<S>(S);

impl<S: tower::Service<R>, R> tower::Service<R> for Noop<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: R) -> S::Future {
        self.0.call(req)
    }
}

/// No layer, no Redis: one route answering the cache scenarios' 1 KB
/// public response.
fn one_kb_router() -> Router {
    let body = one_kb();
    Router::new().route(
        "/",
        get(move || async move { ([("cache-control", "public, max-age=3600")], body) }),
    )
}

/// A 1 KB public response, as the cache scenarios store it, kept
/// (leaked) for the life of the bench.
fn one_kb() -> &'static str {
    static BODY: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    BODY.get_or_init(|| Box::leak("x".repeat(1024).into_boxed_str()))
}

/// The cheapest script: one GET.
static GET: redis_layers::redis::Script =
    redis_layers::redis::Script::new("bench-get", "return redis.call('GET', KEYS[1])");

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "floor",
            build: |ctx| {
                Box::pin(async move {
                    #[cfg(feature = "cluster")]
                    if let Some(nodes) = &ctx.cluster {
                        return cluster_floor(&ctx, nodes, "bench").await;
                    }
                    let client = raw_client(&ctx);
                    let conn = client.get_multiplexed_async_connection().await.unwrap();
                    floor_target(conn, format!("{}:bench", ctx.prefix))
                })
            },
        },
        Scenario {
            name: "bare",
            build: |_| in_process(bare_router()),
        },
        // The floor with the payload of a cache hit: one raw GET of a
        // 1.1 KB value, returned as the body (compare `cache-hit-redis`,
        // which moves that much; the floor moves 16 bytes).
        Scenario {
            name: "floor-1k",
            build: |ctx| {
                Box::pin(async move {
                    #[cfg(feature = "cluster")]
                    if let Some(nodes) = &ctx.cluster {
                        return cluster_floor(&ctx, nodes, "bench-1k").await;
                    }
                    let client = raw_client(&ctx);
                    let conn = client.get_multiplexed_async_connection().await.unwrap();
                    floor_target(conn, format!("{}:bench-1k", ctx.prefix))
                })
            },
        },
        // References for the in-process scenarios (read against `bare`):
        // bare's route behind a layer that does nothing, and the cache
        // scenarios' 1 KB response answered by its handler, no layer.
        Scenario {
            name: "noop-layer",
            build: |_| in_process(bare_router().layer(NoopLayer)),
        },
        Scenario {
            name: "bare-1k",
            build: |_| in_process(one_kb_router()),
        },
        // The cache scenarios' response behind a layer that does nothing
        // (the handler still runs, where a local hit skips it).
        Scenario {
            name: "noop-layer-1k",
            build: |_| in_process(one_kb_router().layer(NoopLayer)),
        },
        Scenario {
            name: "backend-get",
            build: |ctx| {
                backend_target(ctx, |backend, key| {
                    Box::pin(async move { backend.get(&key).await.unwrap().unwrap_or_default() })
                })
            },
        },
        // The floor under a deadline's timer: what bounding a call costs.
        Scenario {
            name: "floor-deadline",
            build: |ctx| {
                Box::pin(async move {
                    #[cfg(feature = "cluster")]
                    if let Some(nodes) = &ctx.cluster {
                        return cluster_target(&ctx, nodes, "bench", floor_deadline_target).await;
                    }
                    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                    let conn = raw_client(&ctx)
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .unwrap();
                    floor_deadline_target(conn, format!("{}:bench", ctx.prefix))
                })
            },
        },
        // The backend's GET of `floor-1k`'s value: what a cache hit's
        // payload costs through the backend (compare `cache-hit-redis`).
        Scenario {
            name: "backend-get-1k",
            build: |ctx| {
                backend_target_of(ctx, "bench-1k", |backend, key| {
                    Box::pin(async move { backend.get(&key).await.unwrap().unwrap_or_default() })
                })
            },
        },
        // The command a replay sends: `SET key value NX PX ms GET` on a
        // key that holds a record (the value is not written), with a
        // 45-byte value as the claim's: what the command costs next to a
        // GET.
        Scenario {
            name: "backend-set-nx-get",
            build: |ctx| {
                backend_target(ctx, |backend, key| {
                    Box::pin(async move {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(&key)
                            .arg([7u8; 45].as_slice())
                            .arg("NX")
                            .arg("PX")
                            .arg(60_000)
                            .arg("GET");
                        let v: Option<Vec<u8>> = backend.query(&cmd).await.unwrap();
                        v.unwrap_or_default()
                    })
                })
            },
        },
        // `backend-get` sent as the idempotency scenarios' request (a POST
        // with a body and two headers): what the harness's request costs.
        Scenario {
            name: "backend-get-post",
            build: |ctx| {
                Box::pin(async move {
                    let backend = bench_backend(&ctx, ctx.prefix.clone());
                    let key = backend.namespace().key(&["bench"]);
                    let router = Router::new()
                        .route(
                            "/",
                            axum::routing::post(
                                |State((backend, key)): State<(RedisBackend, String)>| async move {
                                    backend.get(&key).await.unwrap().unwrap_or_default()
                                },
                            ),
                        )
                        .with_state((backend, key));
                    let idempotency_key = http::HeaderValue::from_static("k-1");
                    let request: Arc<dyn Fn(usize, u64) -> Request<Body> + Send + Sync> =
                        Arc::new(move |_, _| {
                            let mut req = Request::post("/")
                                .header("x-api-key", "bench")
                                .body(Body::from("{}"))
                                .unwrap();
                            req.headers_mut()
                                .insert("idempotency-key", idempotency_key.clone());
                            req
                        });
                    Target { router, request }
                })
            },
        },
        // The cheapest script call: EVALSHA of a script doing one GET. The
        // reference for layers whose single round trip is a Lua script.
        Scenario {
            name: "backend-script",
            build: |ctx| {
                backend_target(ctx, |backend, key| {
                    Box::pin(async move {
                        let v: Option<Vec<u8>> =
                            backend.script(&GET).key(&key).invoke().await.unwrap();
                        v.unwrap_or_default()
                    })
                })
            },
        },
        // The floor of a read-then-write request: a GET, then the
        // cheapest script, one after the other (two round trips).
        Scenario {
            name: "get-then-script",
            build: |ctx| {
                backend_target(ctx, |backend, key| {
                    Box::pin(async move {
                        let _ = backend.get(&key).await.unwrap();
                        let v: Option<Vec<u8>> =
                            backend.script(&GET).key(&key).invoke().await.unwrap();
                        v.unwrap_or_default()
                    })
                })
            },
        },
        // Two of the cheapest scripts, one after the other: the floor of
        // anything made of two script round trips (a lock taken, then
        // released).
        Scenario {
            name: "script-then-script",
            build: |ctx| {
                backend_target(ctx, |backend, key| {
                    Box::pin(async move {
                        let _: Option<Vec<u8>> =
                            backend.script(&GET).key(&key).invoke().await.unwrap();
                        let v: Option<Vec<u8>> =
                            backend.script(&GET).key(&key).invoke().await.unwrap();
                        v.unwrap_or_default()
                    })
                })
            },
        },
        // The read of the layout this crate moved away from (a hash per
        // session, its TTL checked in the same round trip): PTTL and
        // HGETALL of a 4-field hash, pipelined, no layer. Against
        // `backend-get` (one GET of a whole session value) it shows what
        // each layout's read costs Redis and the client at best.
        Scenario {
            name: "hash-pttl-read",
            build: |ctx| {
                backend_target(ctx, |backend, key| {
                    Box::pin(async move {
                        let mut pipe = redis::pipe();
                        let hash = format!("{key}-hash");
                        pipe.cmd("PTTL").arg(&hash).cmd("HGETALL").arg(&hash);
                        let (_, fields): (i64, Vec<(String, String)>) =
                            backend.pipeline(&pipe).await.unwrap();
                        fields.into_iter().next().unwrap_or_default().1.into_bytes()
                    })
                })
            },
        },
        Scenario {
            name: "session-read",
            build: |ctx| Box::pin(session_target(ctx, "/read", false)),
        },
        Scenario {
            name: "session-write",
            build: |ctx| Box::pin(session_target(ctx, "/write", false)),
        },
        // One GCRA policy that always admits: one check.lua per request.
        Scenario {
            name: "ratelimit-allow",
            build: |ctx| {
                use redis_layers::rate_limit::Policy;
                Box::pin(ratelimit_target(
                    ctx,
                    "allow",
                    vec![Policy::per_second(1_000_000_000).named("a")],
                ))
            },
        },
        // Three policies (one of each algorithm), still one script call.
        Scenario {
            name: "ratelimit-allow-3",
            build: |ctx| {
                use redis_layers::rate_limit::Policy;
                Box::pin(ratelimit_target(
                    ctx,
                    "allow3",
                    vec![
                        Policy::per_second(1_000_000_000).named("a"),
                        Policy::per_hour(1_000_000_000_000)
                            .fixed_window()
                            .named("b"),
                        Policy::per_day(1_000_000_000_000)
                            .sliding_window()
                            .named("c"),
                    ],
                ))
            },
        },
        // One fixed-window policy through the layer's script, to compare
        // with `fixed-window-pipeline`.
        Scenario {
            name: "ratelimit-allow-fixed",
            build: |ctx| {
                use redis_layers::rate_limit::Policy;
                Box::pin(ratelimit_target(
                    ctx,
                    "fixed",
                    vec![Policy::per_hour(1_000_000_000_000)
                        .fixed_window()
                        .named("f")],
                ))
            },
        },
        // A fixed window as plain commands, no layer: SET NX PX, INCRBY,
        // PTTL pipelined (one round trip, no script; but a refused request
        // would count, and its window is the key's TTL, not the clock's).
        Scenario {
            name: "fixed-window-pipeline",
            build: |ctx| {
                backend_target(ctx, |backend, key| {
                    Box::pin(async move {
                        let mut pipe = redis::pipe();
                        let counter = format!("{key}-fixed");
                        pipe.cmd("SET")
                            .arg(&counter)
                            .arg(0)
                            .arg("PX")
                            .arg(3_600_000)
                            .arg("NX")
                            .ignore()
                            .cmd("INCRBY")
                            .arg(&counter)
                            .arg(1)
                            .cmd("PTTL")
                            .arg(&counter);
                        let (count, ttl): (i64, i64) = backend.pipeline(&pipe).await.unwrap();
                        format!("{count} {ttl}").into_bytes()
                    })
                })
            },
        },
        // Every client already refused: answered by the local deny cache
        // (compare with `bare`).
        Scenario {
            name: "ratelimit-deny",
            build: |ctx| {
                Box::pin(async move {
                    use redis_layers::rate_limit::Policy;
                    let target =
                        ratelimit_target(ctx.clone(), "deny", vec![Policy::per_day(1).named("d")])
                            .await;
                    // Spend each client's one request, and get it refused once.
                    for task in 0..ctx.concurrency {
                        for i in 0..2 {
                            let _ = target
                                .router
                                .clone()
                                .oneshot((target.request)(task, i))
                                .await
                                .unwrap();
                        }
                    }
                    target
                })
            },
        },
        // A stored 1 KB response answered from Redis: one GET.
        Scenario {
            name: "cache-hit-redis",
            build: |ctx| Box::pin(cache_target(ctx, false, true)),
        },
        // The same, the response varying on Accept-Encoding (one variant
        // of several a URL may hold): still one GET, of the variant.
        Scenario {
            name: "cache-hit-redis-vary",
            build: |ctx| Box::pin(cache_target_varying(ctx, false, true, true)),
        },
        // The same 1 KB response from the cache's local tier: no round
        // trip (compare with `bare`).
        Scenario {
            name: "cache-hit-local",
            build: |ctx| Box::pin(cache_target(ctx, true, true)),
        },
        // The same without the threads' own copies: every hit reads the
        // tier's shared copy (what the per-thread copies save).
        Scenario {
            name: "cache-hit-local-shared",
            build: |ctx| Box::pin(cache_target(ctx, true, false)),
        },
        // A retried POST answered from its idempotency record: one claim
        // (a plain SET NX GET) that returns the record.
        // A lock taken and released, uncontended: two small scripts.
        Scenario {
            name: "lock-uncontended",
            build: |ctx| Box::pin(lock_target(ctx, false)),
        },
        // The same through a LockLayer around a trivial handler.
        Scenario {
            name: "lock-layer",
            build: |ctx| Box::pin(lock_target(ctx, true)),
        },
        Scenario {
            name: "idempotency-replay",
            build: |ctx| Box::pin(idempotency_target(ctx, false, false)),
        },
        // A first POST with a new key each time: claim, run, complete.
        Scenario {
            name: "idempotency-first",
            build: |ctx| Box::pin(idempotency_target(ctx, true, false)),
        },
        // The idempotency layer's own cost, without Redis (compare with
        // `bare`).
        Scenario {
            name: "idempotency-replay-mem",
            build: |ctx| Box::pin(idempotency_target(ctx, false, true)),
        },
        Scenario {
            name: "idempotency-first-mem",
            build: |ctx| Box::pin(idempotency_target(ctx, true, true)),
        },
        // The layer's own cost, without Redis: the same requests on the
        // memory store.
        Scenario {
            name: "session-read-mem",
            build: |ctx| Box::pin(session_target(ctx, "/read", true)),
        },
        Scenario {
            name: "session-write-mem",
            build: |ctx| Box::pin(session_target(ctx, "/write", true)),
        },
    ]
}

struct Outcome {
    requests: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    errors: u64,
    /// CPU seconds (user and system) spent in the measured window by this
    /// process, and by the `redis-server`s it started.
    cpu: (f64, f64),
    /// Allocations made in the measured window (with `BENCH_ALLOCS=1`).
    allocs: u64,
}

/// CPU seconds (user and system) process `pid` has used, from
/// `/proc/<pid>/stat` (Linux; 0 elsewhere). In clock ticks of 10 ms.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command's name (which may hold spaces): the
    // state first, utime and stime 11th and 12th.
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 1)..]
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The `redis-server` processes this one started (the harness's own
/// server or cluster nodes).
fn redis_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent = stat[stat.rfind(')').map_or(0, |i| i + 1)..]
                .split_whitespace()
                .nth(1)
                .map(str::to_owned);
            stat.contains("(redis-server)") && parent.as_deref() == Some(me.as_str())
        })
        .collect()
}

/// CPU seconds used so far by this process and by its `redis-server`s.
fn cpu_now(servers: &[u32]) -> (f64, f64) {
    (
        cpu_secs(std::process::id()),
        servers.iter().map(|pid| cpu_secs(*pid)).sum(),
    )
}

impl Outcome {
    /// Client and server CPU µs per request in the measured window.
    fn cpu_per_request(&self) -> (f64, f64) {
        let n = self.requests.max(1) as f64;
        (self.cpu.0 * 1e6 / n, self.cpu.1 * 1e6 / n)
    }
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64
    }
}

async fn drive(target: Target, concurrency: usize, warmup: Duration, run: Duration) -> Outcome {
    let start = Instant::now() + warmup;
    let end = start + run;
    let mut tasks = Vec::with_capacity(concurrency);
    // As `axum::serve` runs a router: its handlers (and the layers around
    // them) made into services once, not on every request.
    let served = target.router.with_state::<()>(());
    for task in 0..concurrency {
        let router = served.clone();
        let request = target.request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            let mut i = 0u64;
            loop {
                let req = request(task, i);
                i += 1;
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let res = router.clone().oneshot(req).await.unwrap();
                let ok = res.status().is_success() || res.status().is_redirection();
                let _ = res.into_body().collect().await;
                let t1 = Instant::now();
                if t0 >= start && t1 <= end {
                    latencies.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                    if !ok {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    // The CPU both sides use from the window's start to its end.
    let servers = redis_children();
    tokio::time::sleep_until(start.into()).await;
    let before = cpu_now(&servers);
    let allocs_before = ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep_until(end.into()).await;
    let after = cpu_now(&servers);
    let allocs = ALLOCS.load(std::sync::atomic::Ordering::Relaxed) - allocs_before;
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies_us.extend(l);
        errors += e;
    }
    latencies_us.sort_unstable();
    Outcome {
        requests: latencies_us.len() as u64,
        elapsed: run,
        latencies_us,
        errors,
        cpu: (after.0 - before.0, after.1 - before.1),
        allocs,
    }
}

/// Scenarios answered without Redis, also reported against `bare`.
const IN_PROCESS: &[&str] = &[
    "noop-layer",
    "bare-1k",
    "noop-layer-1k",
    "ratelimit-deny",
    "cache-hit-local",
    "cache-hit-local-shared",
    "idempotency-replay-mem",
    "idempotency-first-mem",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; run only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("layers bench: skipped (run with `cargo bench`)");
        return;
    }
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 64);
    let secs: f64 = env_or("BENCH_SECS", 3.0);
    let warmup: f64 = env_or("BENCH_WARMUP_SECS", 0.5);
    let rounds: usize = env_or("BENCH_ROUNDS", 1);
    let count_allocs = std::env::var("BENCH_ALLOCS").is_ok_and(|v| v == "1");
    COUNT_ALLOCS.store(count_allocs, std::sync::atomic::Ordering::Relaxed);
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect());

    let tls = std::env::var("BENCH_TLS").is_ok_and(|v| v == "1");
    #[cfg(feature = "tls")]
    let pki = tls.then(support::pki::Pki::new);
    #[cfg(not(feature = "tls"))]
    if tls {
        panic!("BENCH_TLS=1 needs `--features tls`");
    }
    let (_server, redis_url, tls_ca) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url, None),
        #[cfg(feature = "tls")]
        Err(_) if pki.is_some() => {
            let pki = pki.as_ref().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let server = support::pki::tls_server(pki, port, false, &[]);
            (
                Some(server),
                format!("rediss://127.0.0.1:{port}"),
                Some(pki.ca.clone()),
            )
        }
        Err(_) => {
            let server = support::RedisServer::start();
            let url = server.url();
            (Some(server), url, None)
        }
    };
    #[cfg(feature = "cluster")]
    let cluster_nodes = (std::env::var("BENCH_CLUSTER").is_ok_and(|v| v == "1"))
        .then(|| support::RedisCluster::start(3));
    #[cfg(feature = "cluster")]
    let cluster = cluster_nodes.as_ref().map(|c| {
        c.nodes
            .iter()
            .map(support::RedisServer::url)
            .collect::<Vec<_>>()
    });
    #[cfg(not(feature = "cluster"))]
    let cluster: Option<Vec<String>> = None;
    if std::env::var("BENCH_CLUSTER").is_ok_and(|v| v == "1") && cluster.is_none() {
        panic!("BENCH_CLUSTER=1 needs `--features cluster`");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let ctx = Ctx {
        redis_url: redis_url.clone(),
        tls_ca,
        cluster: cluster.clone(),
        prefix: format!("bench-{}", std::process::id()),
        concurrency,
    };
    runtime.block_on(async {
        #[cfg(feature = "cluster")]
        if let Some(nodes) = &cluster {
            seed_cluster(&ctx.prefix, nodes).await;
            return;
        }
        let client = raw_client(&ctx);
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("{}:bench", ctx.prefix))
            .arg("0123456789abcdef")
            .query_async(&mut conn)
            .await
            .unwrap();
        // What `floor-1k` reads: about the size of a stored 1 KB entry.
        let _: () = redis::cmd("SET")
            .arg(format!("{}:bench-1k", ctx.prefix))
            .arg("x".repeat(1100))
            .query_async(&mut conn)
            .await
            .unwrap();
        // The old session layout, for `hash-pttl-read`.
        let _: () = redis::cmd("HSET")
            .arg(format!("{}:bench-hash", ctx.prefix))
            .arg(&["m:created", "1764230400000", "m:deadline", "1764259200000"])
            .arg(&["m:seen", "1764230400000", "d:n", "0"])
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("PEXPIRE")
            .arg(format!("{}:bench-hash", ctx.prefix))
            .arg(3_600_000)
            .query_async(&mut conn)
            .await
            .unwrap();
    });

    println!(
        "redis-layers bench: {concurrency} concurrent tasks, {secs}s per scenario, {rounds} round(s), {} worker threads, redis {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        redis_url
    );
    let mut results: BTreeMap<&'static str, Vec<Outcome>> = BTreeMap::new();
    // Per scenario and round: (rps, p50) as ratios to a floor run measured
    // just before it, so that drift during the run (a shared VM's CPU
    // steal, frequency changes) cancels out of each ratio.
    let mut ratios: BTreeMap<&'static str, Vec<(f64, f64)>> = BTreeMap::new();
    let order: Vec<&'static str> = scenarios().iter().map(|s| s.name).collect();
    let measure = |scenario: &Scenario| {
        runtime.block_on(async {
            let target = (scenario.build)(ctx.clone()).await;
            drive(
                target,
                concurrency,
                Duration::from_secs_f64(warmup),
                Duration::from_secs_f64(secs),
            )
            .await
        })
    };
    let floor_scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "floor")
        .expect("a floor scenario");
    // Scenarios that never reach Redis: also paired with `bare` (no layer,
    // no Redis), the floor of a request answered in process, run right
    // after on the same requests (so what the client puts on a request,
    // such as the peer address, costs the same on both sides).
    let measure_with_bare = |scenario: &Scenario| {
        runtime.block_on(async {
            let target = (scenario.build)(ctx.clone()).await;
            let bare = Target {
                router: bare_router(),
                request: target.request.clone(),
            };
            let warmup = Duration::from_secs_f64(warmup);
            let run = Duration::from_secs_f64(secs);
            let outcome = drive(target, concurrency, warmup, run).await;
            (outcome, drive(bare, concurrency, warmup, run).await)
        })
    };
    let mut bare_ratios: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        // Rotate the order each round so no scenario always runs first
        // (or right after a heavy one).
        let mut list = scenarios();
        let len = list.len();
        list.rotate_left(round % len);
        for scenario in list {
            if let Some(only) = &only {
                if !only.iter().any(|o| o == scenario.name) {
                    continue;
                }
            }
            if scenario.name == "floor" {
                // Measured alone only when asked for alone.
                results.entry("floor").or_default().push(measure(&scenario));
                continue;
            }
            let floor = measure(&floor_scenario);
            let (outcome, bare) = if IN_PROCESS.contains(&scenario.name) {
                let (outcome, bare) = measure_with_bare(&scenario);
                (outcome, Some(bare))
            } else {
                (measure(&scenario), None)
            };
            ratios.entry(scenario.name).or_default().push((
                outcome.rps() / floor.rps(),
                outcome.percentile(0.50) / floor.percentile(0.50),
            ));
            if let Some(bare) = bare {
                bare_ratios
                    .entry(scenario.name)
                    .or_default()
                    .push(outcome.rps() / bare.rps());
            }
            results.entry("floor").or_default().push(floor);
            results.entry(scenario.name).or_default().push(outcome);
        }
    }

    // Per scenario, the round with the median throughput, and the median of
    // its paired ratios.
    let pick = |name: &str| -> &Outcome {
        let runs = &results[name];
        let mut idx: Vec<usize> = (0..runs.len()).collect();
        idx.sort_by(|a, b| runs[*a].rps().total_cmp(&runs[*b].rps()));
        &runs[idx[idx.len() / 2]]
    };
    let median = |mut values: Vec<f64>| -> f64 {
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        if values.len().is_multiple_of(2) {
            (values[mid - 1] + values[mid]) / 2.0
        } else {
            values[mid]
        }
    };
    println!(
        "\nreq/s, p50 and p99: the round with the median throughput (floor: over all its runs);\n\
         rps/floor and p50/floor: the median over rounds of the ratio to the floor run just before;\n\
         cpu µs: CPU time per request of this process (client) and of the redis-servers it\n\
         started (server), median over rounds (steadier than throughput on a shared VM)."
    );
    println!(
        "\n{:<16} {:>11} {:>9} {:>9} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "scenario",
        "req/s",
        "p50 µs",
        "p99 µs",
        "errors",
        "rps/floor",
        "p50/floor",
        "client µs",
        "server µs"
    );
    for name in order {
        if !results.contains_key(name) {
            continue;
        }
        let o = pick(name);
        let (rps_ratio, p50_ratio) = match ratios.get(name) {
            Some(r) => (
                median(r.iter().map(|x| x.0).collect()),
                median(r.iter().map(|x| x.1).collect()),
            ),
            None => (1.0, 1.0),
        };
        let runs = &results[name];
        let client = median(runs.iter().map(|r| r.cpu_per_request().0).collect());
        let server = median(runs.iter().map(|r| r.cpu_per_request().1).collect());
        println!(
            "{:<16} {:>11.0} {:>9.0} {:>9.0} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            name,
            o.rps(),
            o.percentile(0.50),
            o.percentile(0.99),
            o.errors,
            rps_ratio,
            p50_ratio,
            client,
            server,
        );
    }
    if count_allocs {
        println!("\nallocations per request (all of this process's, the client's included):");
        for (name, runs) in &results {
            let per: Vec<f64> = runs
                .iter()
                .map(|r| r.allocs as f64 / r.requests.max(1) as f64)
                .collect();
            println!("{name:<24} {:>8.1}", median(per));
        }
    }
    for (name, r) in bare_ratios {
        println!(
            "{name}: {:.2} of bare (median over rounds of the ratio to a bare run just after)",
            median(r)
        );
    }
}
