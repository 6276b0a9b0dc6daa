//! Distributed locks on Redis, memory and a cluster: mutual exclusion
//! across instances, fencing tokens, renewal and loss, owner-checked
//! release, cancelled acquires.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_layers::lock::{LockGuard, Locks};
use redis_layers::{Backend, ErrorKind};

use support::{Kind, TestBackend};

/// Another instance's backend on the same store (the same prefix): a
/// second connection to the same Redis or cluster; in memory, the same
/// keyspace (one process).
fn second_instance(tb: &TestBackend) -> Backend {
    let prefix = tb.backend.namespace().prefix().to_owned();
    match tb.kind {
        Kind::Memory => tb.backend.clone(),
        Kind::Redis => redis_layers::redis::RedisBackend::builder()
            .url(tb.server().url())
            .prefix(prefix)
            .build()
            .unwrap()
            .into(),
        #[cfg(feature = "cluster")]
        Kind::Cluster => redis_layers::redis::RedisBackend::builder()
            .cluster(
                tb.cluster
                    .as_ref()
                    .unwrap()
                    .nodes
                    .iter()
                    .map(support::RedisServer::url),
            )
            .prefix(prefix)
            .build()
            .unwrap()
            .into(),
    }
}

/// The guard's fencing token; it must still hold the lock.
async fn fence(guard: &LockGuard) -> u64 {
    guard
        .fencing_token()
        .await
        .unwrap()
        .expect("counted while held")
}

/// Removes every lock key from outside (an operator, an eviction).
fn delete_locks(tb: &TestBackend) {
    for key in tb.keys("lock:*:o") {
        match &tb.backend {
            Backend::Memory(m) => {
                m.atomically(|ks| ks.remove(&key));
            }
            _ => {
                let _: i64 = tb.key_cmd(&key, &["DEL", &key]);
            }
        }
    }
}

/// Waits until no lock key is left (a release runs in the background).
async fn no_locks_left(tb: &TestBackend) {
    let started = std::time::Instant::now();
    while !tb.keys("lock:*:o").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a lock was left behind"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

support::both_backends! { TestBackend::new;
    one_holder_at_a_time_across_two_instances => |fx| {
        let instances = [Locks::new(fx.backend.clone()), Locks::new(second_instance(&fx))];
        let inside = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicU64::new(0));
        // A counter only the holder touches, read and written apart (a
        // lost update shows a second holder).
        let counter = Arc::new(Mutex::new(0u64));
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..64 {
            let locks = instances[task % 2].clone();
            let (inside, overlaps, counter, tokens) =
                (inside.clone(), overlaps.clone(), counter.clone(), tokens.clone());
            tasks.spawn(async move {
                let guard = locks
                    .acquire("counter", Duration::from_secs(5), Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|e| panic!("acquire failed: {e:?}"))
                    .expect("acquired within the wait");
                if inside.swap(true, Ordering::SeqCst) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let read = *counter.lock().unwrap();
                tokio::task::yield_now().await;
                *counter.lock().unwrap() = read + 1;
                let token = fence(&guard).await;
                tokens.lock().unwrap().push(token);
                inside.store(false, Ordering::SeqCst);
                assert!(guard.release().await.unwrap(), "still its own");
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
        assert_eq!(*counter.lock().unwrap(), 64);
        let tokens = tokens.lock().unwrap().clone();
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens rise in holding order: {tokens:?}");
        no_locks_left(&fx).await;
    }

    a_held_lock_is_refused_then_free_once_released => |fx| {
        let locks = Locks::new(fx.backend.clone());
        let lease = Duration::from_secs(5);
        let a = locks.try_acquire("job", lease).await.unwrap().expect("free");
        assert!(locks.try_acquire("job", lease).await.unwrap().is_none(), "held");
        // Another resource is another lock.
        let other = locks.try_acquire("other-job", lease).await.unwrap().expect("free");
        // A short wait runs out.
        let started = std::time::Instant::now();
        assert!(locks.acquire("job", lease, Duration::from_millis(200)).await.unwrap().is_none());
        assert!(started.elapsed() >= Duration::from_millis(200));
        let token = fence(&a).await;
        assert!(a.release().await.unwrap());
        let b = locks.try_acquire("job", lease).await.unwrap().expect("released");
        assert!(fence(&b).await > token);
        // Dropping releases too.
        drop(b);
        drop(other);
        no_locks_left(&fx).await;
        assert!(locks.try_acquire("job", lease).await.unwrap().is_some());
    }

    a_waiter_gets_the_lock_when_its_holder_lets_go => |fx| {
        let locks = Locks::new(fx.backend.clone());
        let holder = locks.try_acquire("r", Duration::from_secs(5)).await.unwrap().unwrap();
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move {
                let started = std::time::Instant::now();
                let guard = locks.acquire("r", Duration::from_secs(5), Duration::from_secs(5)).await.unwrap();
                let waited = started.elapsed();
                let token = match guard {
                    Some(g) => Some(fence(&g).await),
                    None => None,
                };
                (token, waited)
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let first = fence(&holder).await;
        holder.release().await.unwrap();
        let (token, waited) = waiter.await.unwrap();
        assert!(token.expect("acquired") > first);
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_millis(900), "woke within its pauses: {waited:?}");
    }

    a_lock_taken_away_is_reported_lost_within_one_renewal => |fx| {
        let locks = Locks::new(fx.backend.clone());
        let lease = Duration::from_millis(600);
        let guard = locks.try_acquire("r", lease).await.unwrap().unwrap();
        // It is renewed: held well past its lease.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert!(!guard.is_lost());
        assert!(locks.try_acquire("r", lease).await.unwrap().is_none(), "still held");
        // Removed from outside, then taken by another: the next renewal
        // (within a third of the lease) reports it.
        delete_locks(&fx);
        let other = locks.try_acquire("r", Duration::from_secs(5)).await.unwrap().expect("free now");
        tokio::time::timeout(lease / 3 + Duration::from_millis(150), guard.lost())
            .await
            .expect("lost within one renewal");
        assert!(guard.is_lost());
        // It gets no token now: tokens are only counted for the holder.
        assert_eq!(guard.fencing_token().await.unwrap(), None);
        assert!(fence(&other).await > 0);
        // Its release leaves the other's lock alone.
        assert!(!guard.release().await.unwrap());
        assert!(locks.try_acquire("r", lease).await.unwrap().is_none(), "the other's lock stays");
        assert!(other.release().await.unwrap());
    }

    a_waiter_dropped_while_waiting_or_taking_leaves_nothing_behind => |fx| {
        let locks = Locks::new(fx.backend.clone());
        // The waiter is dropped right as the holder lets go: before its
        // next attempt, during it, or just after it took the lock. In
        // every case nothing stays held.
        for round in 0..20 {
            let holder = locks.try_acquire("r", Duration::from_secs(5)).await.unwrap().unwrap();
            let waiter = tokio::spawn({
                let locks = locks.clone();
                async move { locks.acquire("r", Duration::from_secs(30), Duration::from_secs(10)).await }
            });
            tokio::time::sleep(Duration::from_millis(10 + round)).await;
            holder.release().await.unwrap();
            tokio::time::sleep(Duration::from_millis(round % 7)).await;
            waiter.abort();
            let _ = waiter.await;
            no_locks_left(&fx).await;
        }
        assert!(locks.try_acquire("r", Duration::from_secs(1)).await.unwrap().is_some());
    }

    tokens_keep_rising_after_their_counter_is_gone => |fx| {
        let locks = Locks::new(fx.backend.clone());
        let lease = Duration::from_secs(5);
        let a = locks.try_acquire("r", lease).await.unwrap().unwrap();
        let first = fence(&a).await;
        assert!(a.release().await.unwrap());
        // The counter expired (or a failover lost it): the store's time
        // is the floor.
        let counters = fx.keys("lock:*:n");
        assert_eq!(counters.len(), 1);
        for key in counters {
            match &fx.backend {
                Backend::Memory(m) => {
                    m.atomically(|ks| ks.remove(&key));
                }
                _ => {
                    let _: i64 = fx.key_cmd(&key, &["DEL", &key]);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = locks.try_acquire("r", lease).await.unwrap().unwrap();
        let second = fence(&b).await;
        assert!(second > first, "{second} > {first}");
    }

    bad_leases_are_config_errors => |fx| {
        let locks = Locks::new(fx.backend.clone());
        for lease in [Duration::ZERO, Duration::from_millis(29), Duration::from_secs(400 * 86_400)] {
            let err = locks.try_acquire("r", lease).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{lease:?}");
        }
        let err = locks.acquire("r", Duration::from_secs(1), Duration::MAX).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(fx.keys("lock:*").is_empty());
    }
}

/// A holder that dies (its process, here a runtime of its own with its
/// own connection, gone without a release) blocks the resource for its
/// lease only; the next holder's token is higher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_is_replaced_after_its_lease_with_a_higher_token() {
    for kind in [Kind::Redis, Kind::Memory] {
        let fx = TestBackend::new(kind);
        let lease = Duration::from_millis(500);
        let crashed = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Runtime::new().unwrap();
                    let token = runtime.block_on(async {
                        let guard = Locks::new(second_instance(&fx))
                            .try_acquire("r", lease)
                            .await
                            .unwrap()
                            .unwrap();
                        let token = fence(&guard).await;
                        std::mem::forget(guard);
                        token
                    });
                    runtime.shutdown_background();
                    token
                })
                .join()
                .unwrap()
        });
        let locks = Locks::new(fx.backend.clone());
        assert!(
            locks.try_acquire("r", lease).await.unwrap().is_none(),
            "held until its lease ends"
        );
        let started = std::time::Instant::now();
        let next = locks
            .acquire("r", lease, Duration::from_secs(3))
            .await
            .unwrap()
            .expect("free once the lease ended");
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
        let next = fence(&next).await;
        assert!(next > crashed, "{next} > {crashed}");
    }
}

/// What a lock sends to Redis: one plain `SET NX PX` to take it (and
/// `GET` with `PTTL` when it is held), one script to give it up, and one
/// script the first time its fencing token is asked for, none after.
#[tokio::test]
async fn an_uncontended_lock_is_one_call_to_take_and_one_to_release() {
    let fx = TestBackend::new(Kind::Redis);
    let locks = Locks::new(fx.backend.clone());
    // Load the scripts: the steady state is one EVALSHA each.
    let warm = locks
        .try_acquire("warm", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    fence(&warm).await;
    warm.release().await.unwrap();
    let _: i64 = fx.server().cmd(&["DEL", &fx.keys("lock:*:n")[0]]);
    let mut monitor = support::Monitor::start(fx.server());
    let guard = locks
        .try_acquire("report-42", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(monitor.take(), ["set"]);
    assert!(locks
        .try_acquire("report-42", Duration::from_secs(5))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        monitor.take(),
        ["set", "get", "pttl"],
        "held: by whom, how long still"
    );
    assert!(guard.release().await.unwrap());
    assert_eq!(monitor.take(), ["evalsha"]);
    assert!(fx.keys("lock:*").is_empty(), "no token asked, no counter");
    // With a token: counted once, then the guard answers.
    let guard = locks
        .try_acquire("report-42", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    monitor.take();
    let token = fence(&guard).await;
    assert_eq!(monitor.take(), ["evalsha"]);
    assert_eq!(fence(&guard).await, token);
    assert_eq!(guard.handle().fencing_token().await.unwrap(), Some(token));
    assert!(monitor.take().is_empty(), "the token is kept");
    assert!(guard.release().await.unwrap());
    // Only its counter stays (a minute, twice the lease at least); names
    // hide the resource.
    let keys = fx.keys("lock:*");
    assert_eq!(keys.len(), 1, "the resource's counter: {keys:?}");
    assert!(
        keys[0].ends_with(":n") && !keys[0].contains("report"),
        "{keys:?}"
    );
    let ttl: i64 = fx.server().cmd(&["PTTL", &keys[0]]);
    assert!(
        (55_000..=60_000).contains(&ttl),
        "a counter is kept a minute: {ttl}"
    );
}

/// An acquire whose call is on its way when the request is dropped (here
/// held up by a paused Redis): once the call lands, the lock it took is
/// given up, not left for a whole lease.
#[tokio::test]
async fn an_acquire_dropped_mid_call_gives_up_what_it_took() {
    let fx = TestBackend::new(Kind::Redis);
    let locks = Locks::new(fx.backend.clone());
    // The release script loaded first (the paused call is one SET).
    drop(
        locks
            .try_acquire("warm", Duration::from_secs(1))
            .await
            .unwrap(),
    );
    let _: () = fx.server().cmd(&["CLIENT", "PAUSE", "400", "WRITE"]);
    let attempt = tokio::time::timeout(
        Duration::from_millis(100),
        locks.try_acquire("r", Duration::from_secs(30)),
    )
    .await;
    assert!(attempt.is_err(), "still waiting on the paused server");
    // The pause ends; the call lands and takes the lock; it is given up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    no_locks_left(&fx).await;
    assert!(locks
        .try_acquire("r", Duration::from_secs(1))
        .await
        .unwrap()
        .is_some());
}

mod layer {
    use super::*;
    use axum::body::Body;
    use axum::extract::{Extension, State};
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use http_body_util::BodyExt;
    use redis_layers::lock::{LockHandle, LockKey, LockLayer};
    use tower::ServiceExt;

    /// Who is inside the handler, and how often two were.
    #[derive(Clone, Default)]
    struct Inside {
        now: Arc<AtomicU64>,
        overlaps: Arc<AtomicU64>,
        runs: Arc<AtomicU64>,
    }

    /// `POST /jobs/{id}`: takes `hold` inside, answers the fencing token.
    fn app(layer: LockLayer, inside: &Inside, hold: Duration) -> Router {
        Router::new()
            .route(
                "/jobs/{id}",
                post(
                    move |State(inside): State<Inside>, Extension(lock): Extension<LockHandle>| async move {
                        if inside.now.fetch_add(1, Ordering::SeqCst) > 0 {
                            inside.overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        inside.runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(hold).await;
                        inside.now.fetch_sub(1, Ordering::SeqCst);
                        lock.fencing_token().await.unwrap().expect("held").to_string()
                    },
                ),
            )
            .with_state(inside.clone())
            .layer(layer)
    }

    async fn post_to(
        app: &Router,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::post(path);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    support::both_backends! { TestBackend::new;
        requests_on_one_resource_run_one_at_a_time_across_two_instances => |fx| {
            let inside = Inside::default();
            let layer = |backend: Backend| {
                LockLayer::builder(backend, LockKey::path())
                    .wait(Duration::from_secs(30))
                    .build()
                    .unwrap()
            };
            let apps = [
                app(layer(fx.backend.clone()), &inside, Duration::from_millis(5)),
                app(layer(second_instance(&fx)), &inside, Duration::from_millis(5)),
            ];
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..50 {
                let app = apps[i % 2].clone();
                tasks.spawn(async move { post_to(&app, "/jobs/1", &[]).await });
            }
            let mut tokens = Vec::new();
            while let Some(done) = tasks.join_next().await {
                let (status, _, body) = done.unwrap();
                assert_eq!(status, StatusCode::OK, "{body}");
                tokens.push(body.parse::<u64>().unwrap());
            }
            assert_eq!(inside.overlaps.load(Ordering::SeqCst), 0);
            assert_eq!(inside.runs.load(Ordering::SeqCst), 50);
            tokens.sort_unstable();
            tokens.dedup();
            assert_eq!(tokens.len(), 50, "a token per holder");
            no_locks_left(&fx).await;
        }

        a_resource_still_locked_after_the_wait_is_refused_with_retry_after => |fx| {
            let inside = Inside::default();
            let layer = LockLayer::builder(fx.backend.clone(), LockKey::path())
                .lease(Duration::from_secs(4))
                .build()
                .unwrap();
            let app = app(layer, &inside, Duration::from_millis(400));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..10 {
                let app = app.clone();
                tasks.spawn(async move { post_to(&app, "/jobs/7", &[]).await });
            }
            let (mut ok, mut refused) = (0, 0);
            while let Some(done) = tasks.join_next().await {
                let (status, headers, body) = done.unwrap();
                match status {
                    StatusCode::OK => ok += 1,
                    StatusCode::CONFLICT => {
                        refused += 1;
                        assert_eq!(headers["content-type"], "application/problem+json");
                        let after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                        assert!((1..=4).contains(&after), "{after}");
                        assert!(body.contains("Resource locked"), "{body}");
                    }
                    other => panic!("{other}: {body}"),
                }
            }
            assert_eq!((ok, refused), (1, 9));
            // Another resource is not held up.
            assert_eq!(post_to(&app, "/jobs/8", &[]).await.0, StatusCode::OK);
            // 423 when asked for, and a refusal of one's own.
            let layer = LockLayer::builder(fx.backend.clone(), LockKey::named("one"))
                .status(StatusCode::LOCKED)
                .build()
                .unwrap();
            let locked = app_with(layer, Duration::from_millis(300));
            let first = tokio::spawn({
                let locked = locked.clone();
                async move { post_to(&locked, "/jobs/1", &[]).await }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(post_to(&locked, "/jobs/2", &[]).await.0, StatusCode::LOCKED, "one lock for every path");
            assert_eq!(first.await.unwrap().0, StatusCode::OK);
        }

        a_slow_handler_keeps_its_lock_renewed_and_hears_of_its_loss => |fx| {
            // The lease is 300 ms; the handler runs 1.2 s. Renewed in the
            // request's own task, the lock stays held throughout; taken
            // away from outside, the handler's loss signal fires.
            let lease = Duration::from_millis(300);
            let layer = |backend: Backend| {
                LockLayer::builder(backend, LockKey::named("slow")).lease(lease).build().unwrap()
            };
            let heard = Arc::new(AtomicBool::new(false));
            let slow = Router::new()
                .route(
                    "/slow",
                    post({
                        let heard = heard.clone();
                        move |Extension(lock): Extension<LockHandle>| async move {
                            tokio::select! {
                                () = lock.lost() => heard.store(true, Ordering::SeqCst),
                                () = tokio::time::sleep(Duration::from_millis(1_200)) => {}
                            }
                            "done"
                        }
                    }),
                )
                .layer(layer(fx.backend.clone()));
            let other = app_with(layer(second_instance(&fx)), Duration::ZERO);
            let first = tokio::spawn({
                let slow = slow.clone();
                async move { post_to(&slow, "/slow", &[]).await }
            });
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                assert_eq!(post_to(&other, "/jobs/1", &[]).await.0, StatusCode::CONFLICT, "still held");
            }
            assert!(!heard.load(Ordering::SeqCst));
            delete_locks(&fx);
            let (status, _, body) = first.await.unwrap();
            assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));
            assert!(heard.load(Ordering::SeqCst), "the loss was heard");
            no_locks_left(&fx).await;
        }

        a_request_naming_no_resource_is_400 => |fx| {
            let inside = Inside::default();
            let layer = LockLayer::builder(fx.backend.clone(), LockKey::header("x-account")).build().unwrap();
            let app = app(layer, &inside, Duration::ZERO);
            let (status, headers, _) = post_to(&app, "/jobs/1", &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(headers["content-type"], "application/problem+json");
            assert_eq!(inside.runs.load(Ordering::SeqCst), 0);
            assert_eq!(post_to(&app, "/jobs/1", &[("x-account", "a")]).await.0, StatusCode::OK);
            no_locks_left(&fx).await;
        }
    }

    fn app_with(layer: LockLayer, hold: Duration) -> Router {
        app(layer, &Inside::default(), hold)
    }

    #[test]
    fn bad_settings_are_refused_at_build() {
        let backend = redis_layers::memory::MemoryBackend::new();
        for builder in [
            LockLayer::builder(backend.clone(), LockKey::path()).lease(Duration::from_millis(5)),
            LockLayer::builder(backend.clone(), LockKey::path()).wait(Duration::MAX),
            LockLayer::builder(backend.clone(), LockKey::path()).status(StatusCode::OK),
        ] {
            assert_eq!(builder.build().unwrap_err().kind(), ErrorKind::Config);
        }
    }

    /// A store that cannot be reached: 503, and the handler never runs
    /// without the lock.
    #[tokio::test]
    async fn a_failing_store_is_503_and_the_handler_does_not_run() {
        let mut fx = TestBackend::with_deadline(Kind::Redis, Duration::from_millis(300));
        let inside = Inside::default();
        let layer = LockLayer::builder(fx.backend.clone(), LockKey::path())
            .build()
            .unwrap();
        let app = app(layer, &inside, Duration::ZERO);
        fx.server.as_mut().unwrap().kill();
        let started = std::time::Instant::now();
        let (status, headers, _) = post_to(&app, "/jobs/1", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(inside.runs.load(Ordering::SeqCst), 0);
    }
}

mod redlock {
    use super::*;
    use redis_layers::lock::Redlock;
    use support::RedisServer;

    /// `n` independent servers and a backend on each (short deadlines:
    /// a dead server must not hold the asking up).
    fn servers(n: usize) -> (Vec<RedisServer>, Vec<Backend>) {
        let servers: Vec<RedisServer> = (0..n).map(|_| RedisServer::start()).collect();
        let prefix = support::unique_prefix("redlock");
        let backends = servers
            .iter()
            .map(|s| {
                redis_layers::redis::RedisBackend::builder()
                    .url(s.url())
                    .prefix(prefix.clone())
                    .deadline(Duration::from_millis(200))
                    .build()
                    .unwrap()
                    .into()
            })
            .collect();
        (servers, backends)
    }

    const LEASE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_majority_grants_it_and_a_second_holder_is_refused() {
        let (_servers, backends) = servers(5);
        let a = Redlock::new(backends.clone()).unwrap();
        let b = Redlock::new(backends.clone()).unwrap();
        assert_eq!(a.quorum(), 3);
        let held = a.try_acquire("report", LEASE).await.unwrap().expect("free");
        assert!(held.is_valid());
        let left = held.valid_until() - tokio::time::Instant::now();
        assert!(left > Duration::from_secs(9) && left < LEASE, "{left:?}");
        assert!(b.try_acquire("report", LEASE).await.unwrap().is_none());
        assert!(b.try_acquire("other", LEASE).await.unwrap().is_some());
        assert_eq!(held.release().await, 5, "released on every server");
        assert!(b.try_acquire("report", LEASE).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn five_servers_lock_with_two_down_and_not_with_three() {
        let (mut servers, backends) = servers(5);
        let redlock = Redlock::new(backends).unwrap();
        servers[0].kill();
        servers[1].kill();
        let held = redlock
            .try_acquire("r", LEASE)
            .await
            .unwrap()
            .expect("3 of 5");
        assert_eq!(held.release().await, 3);
        servers[2].kill();
        assert!(
            redlock.try_acquire("r", LEASE).await.unwrap().is_none(),
            "2 of 5"
        );
        // Nothing left held on the two that granted it.
        for server in &servers[3..] {
            let keys: Vec<String> = server.cmd(&["KEYS", "*:lock:*:o"]);
            assert!(keys.is_empty(), "{keys:?}");
        }
    }

    #[tokio::test]
    async fn three_servers_lock_with_one_down_and_not_with_two() {
        let (mut servers, backends) = servers(3);
        let redlock = Redlock::new(backends).unwrap();
        servers[2].kill();
        let held = redlock
            .try_acquire("r", LEASE)
            .await
            .unwrap()
            .expect("2 of 3");
        assert_eq!(held.release().await, 2);
        servers[1].kill();
        assert!(
            redlock.try_acquire("r", LEASE).await.unwrap().is_none(),
            "1 of 3"
        );
        servers[0].kill();
        // Every server failing is an error, not a refusal.
        assert!(redlock.try_acquire("r", LEASE).await.is_err());
    }

    #[tokio::test]
    async fn grants_short_of_a_majority_are_given_back() {
        let (_servers, backends) = servers(5);
        // Another owner holds it on three servers.
        let mut others = Vec::new();
        for backend in &backends[..3] {
            others.push(
                Locks::new(backend.clone())
                    .try_acquire("r", LEASE)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let redlock = Redlock::new(backends.clone()).unwrap();
        assert!(redlock.try_acquire("r", LEASE).await.unwrap().is_none());
        // The two it was granted are free again.
        for backend in &backends[3..] {
            assert!(Locks::new(backend.clone())
                .try_acquire("r", LEASE)
                .await
                .unwrap()
                .is_some());
        }
        drop(others);
    }

    #[tokio::test]
    async fn fewer_than_three_servers_is_a_config_error() {
        let (_servers, backends) = servers(2);
        assert_eq!(
            Redlock::new(backends).unwrap_err().kind(),
            ErrorKind::Config
        );
    }
}
