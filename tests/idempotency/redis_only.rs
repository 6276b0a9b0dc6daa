//! What only a real Redis can show: commands sent, fencing, a dead server.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use redis_layers::idempotency::{Claim, IdempotencyLayer, IdempotencyStore, Scope};

use crate::support::{Kind, Monitor, TestBackend};
use crate::{app, fixture, order, until_final, Fixture};

#[tokio::test]
async fn a_new_key_is_a_set_and_a_script_and_a_replay_one_set() {
    let fx = fixture(Kind::Redis);
    let app = app(
        &fx,
        IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")),
    );
    // Load the scripts first, so the counts below are of EVALSHA alone.
    order(&app, "warm", "w", "x").await;
    let mut monitor = Monitor::start(fx.tb.server());
    order(&app, "a", "k", "tea").await;
    // `/orders` asks for its fencing token: that is the script between.
    assert_eq!(
        monitor.take(),
        ["set", "evalsha", "evalsha"],
        "claim, fence, complete"
    );
    order(&app, "a", "k", "tea").await;
    assert_eq!(monitor.take(), ["set"], "the claim returns the record");
    // A handler that does not ask for a token: two round trips in all.
    crate::send(
        &app,
        "POST",
        "/plain",
        &[("x-api-key", b"a"), ("idempotency-key", b"p")],
        "x",
    )
    .await;
    assert_eq!(monitor.take(), ["set", "evalsha"], "claim, complete");
    // Record and counter share one hash slot, and expire.
    let keys = fx.tb.keys("idem:*");
    assert_eq!(
        keys.len(),
        5,
        "two records with counters, one without: {keys:?}"
    );
    for key in &keys {
        let ttl: i64 = fx.tb.server().cmd(&["PTTL", key]);
        assert!(ttl > 0, "{key}: {ttl}");
        assert!(!key.contains("tea") && !key.contains(":k"), "{key}");
    }
}

#[tokio::test]
async fn a_lost_claim_cannot_fence_or_complete() {
    let tb = TestBackend::new(Kind::Redis);
    let store = tb.backend.clone();
    let fp = [1u8; 32];
    let lease = Duration::from_millis(200);
    let day = Duration::from_secs(86_400);
    let (first, second) = (0x1111_u64, 0x2222_u64);
    assert_eq!(
        store.claim("k", &fp, first, lease).await.unwrap(),
        Claim::Claimed
    );
    let first_token = store.fence("k", first, day).await.unwrap().expect("held");
    // Taken while the lease holds: the record comes back, nothing is set,
    // and the other holder gets no token.
    let Claim::Taken { .. } = store.claim("k", &fp, second, lease).await.unwrap() else {
        panic!("held")
    };
    assert_eq!(store.fence("k", second, day).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The lease ran out; another request claims, with a higher token.
    assert_eq!(
        store.claim("k", &fp, second, lease).await.unwrap(),
        Claim::Claimed
    );
    let second_token = store.fence("k", second, day).await.unwrap().expect("held");
    assert!(second_token > first_token);
    // The first holder, late: no token, no renewal, no completion.
    assert_eq!(store.fence("k", first, day).await.unwrap(), None);
    assert!(!store.extend("k", first, lease).await.unwrap());
    assert!(
        !store.complete("k", first, b"late", day).await.unwrap(),
        "fenced"
    );
    assert!(!store.release("k", first).await.unwrap());
    assert!(store.extend("k", second, lease).await.unwrap());
    let record = {
        let mut r = b"RLI1".to_vec();
        r.push(2);
        r.extend_from_slice(&second.to_be_bytes());
        r.extend_from_slice(&fp);
        r
    };
    assert!(store.complete("k", second, &record, day).await.unwrap());
    // Sent again (its first reply lost): still true, nothing changes.
    assert!(store.complete("k", second, &record, day).await.unwrap());
    assert!(!store.complete("k", first, b"late", day).await.unwrap());
}

#[tokio::test]
async fn a_dead_store_refuses_within_the_deadline() {
    let mut fx = Fixture {
        tb: TestBackend::with_deadline(Kind::Redis, Duration::from_millis(300)),
        runs: Default::default(),
    };
    let app = app(
        &fx,
        IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")),
    );
    fx.tb.server.as_mut().unwrap().kill();
    let started = Instant::now();
    let r = order(&app, "a", "k", "tea").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.is_problem());
    assert_eq!(fx.runs(), 0, "never without the claim");
    fx.tb.server.as_mut().unwrap().restart();
    let started = Instant::now();
    loop {
        let r = order(&app, "a", "k", "tea").await;
        if r.status == StatusCode::CREATED {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{}", r.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn foreign_data_at_a_record_key_never_runs_the_handler() {
    let fx = fixture(Kind::Redis);
    let app = app(
        &fx,
        IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")),
    );
    assert_eq!(
        order(&app, "a", "k", "tea").await.status,
        StatusCode::CREATED
    );
    let record = fx
        .tb
        .keys("idem:*:r")
        .pop()
        .expect("the record of the first order");
    // Not a record: the claim reports it and the handler does not run.
    let _: () = fx.tb.server().cmd(&["SET", &record, "junk"]);
    let r = order(&app, "a", "k", "tea").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.is_problem());
    // Not even a string: the claim script fails, the layer fails closed.
    let _: () = fx.tb.server().cmd(&["DEL", &record]);
    let _: i64 = fx.tb.server().cmd(&["HSET", &record, "f", "v"]);
    let r = order(&app, "a", "k", "tea").await;
    assert!(r.status.is_server_error(), "{}: {}", r.status, r.body);
    assert!(r.is_problem());
    assert_eq!(fx.runs(), 1, "the handler ran only for the first order");
}

/// A layer on a backend with a short deadline, and its fixture.
fn paused_fixture() -> (Fixture, axum::Router) {
    let fx = Fixture {
        tb: TestBackend::with_deadline(Kind::Redis, Duration::from_millis(200)),
        runs: Default::default(),
    };
    let app = app(
        &fx,
        IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")),
    );
    (fx, app)
}

/// Redis pauses writes while the handler (600 ms) runs, for longer than
/// the deadline: the completion times out, the client retries during the
/// pause and after it, and the handler has run once.
#[tokio::test]
async fn a_completion_behind_a_paused_redis_is_recorded_once() {
    let (fx, app) = paused_fixture();
    let first = {
        let app = app.clone();
        tokio::spawn(
            async move { until_final(&app, "/slow", "paused", Duration::from_secs(1)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = fx.tb.server().cmd(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    // Retries while paused: refused (503: the claim times out) or 409,
    // never a second run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let r = crate::send(
            &app,
            "POST",
            "/slow",
            &[("x-api-key", b"a"), ("idempotency-key", b"paused")],
            "x",
        )
        .await;
        assert!(
            matches!(
                r.status,
                StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{}: {}",
            r.status,
            r.body
        );
    }
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    let r = until_final(&app, "/slow", "paused", Duration::from_secs(5)).await;
    assert_eq!(r.header("idempotent-replayed"), Some("true"), "{}", r.body);
    assert_eq!(fx.runs(), 1);
}

/// The connection carrying the completion is killed while Redis holds it
/// (paused): the completion is sent again on a new connection.
#[tokio::test]
async fn a_completion_whose_connection_is_killed_is_recorded_once() {
    let (fx, app) = paused_fixture();
    let first = {
        let app = app.clone();
        tokio::spawn(
            async move { until_final(&app, "/slow", "killed", Duration::from_secs(1)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = fx.tb.server().cmd(&["CLIENT", "PAUSE", "1200", "WRITE"]);
    // The handler ends at 600 ms; its completion waits behind the pause.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let _: i64 = fx
        .tb
        .server()
        .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    let r = until_final(&app, "/slow", "killed", Duration::from_secs(5)).await;
    assert_eq!(r.header("idempotent-replayed"), Some("true"), "{}", r.body);
    assert_eq!(fx.runs(), 1);
}

/// The script cache is flushed, then Redis pauses, while the handler runs:
/// the completion's `EVALSHA` is answered `NOSCRIPT` only after its
/// deadline, and the record is still written.
#[tokio::test]
async fn the_first_completion_after_script_flush_is_recorded() {
    let (fx, app) = paused_fixture();
    order(&app, "a", "warm", "x").await;
    let first = {
        let app = app.clone();
        tokio::spawn(
            async move { until_final(&app, "/slow", "flushed", Duration::from_secs(1)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = fx.tb.server().cmd(&["SCRIPT", "FLUSH"]);
    let _: () = fx.tb.server().cmd(&["CLIENT", "PAUSE", "1000", "WRITE"]);
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    let r = until_final(&app, "/slow", "flushed", Duration::from_secs(5)).await;
    assert_eq!(r.header("idempotent-replayed"), Some("true"), "{}", r.body);
    assert_eq!(fx.runs(), 2, "the warm-up order, then this one once");
}

/// A request dropped while its claim waits on a paused Redis: once Redis
/// resumes, the claim that lands is released, so the key is not held for a
/// whole lease (30 s) by no one.
#[tokio::test]
async fn a_claim_dropped_mid_call_leaves_no_orphan() {
    let fx = fixture(Kind::Redis);
    let app = app(
        &fx,
        IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")),
    );
    order(&app, "a", "warm", "x").await;
    let _: () = fx.tb.server().cmd(&["CLIENT", "PAUSE", "400", "WRITE"]);
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        order(&app, "a", "orphan", "tea"),
    )
    .await;
    assert!(dropped.is_err(), "the claim was still waiting");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = order(&app, "a", "orphan", "tea").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.header("idempotent-replayed").is_none());
    assert_eq!(fx.runs(), 2);
}

/// A completion answered with an error reply (here `OOM`: Redis out of
/// memory refuses scripts that may write), not a timeout: it is retried,
/// the key stays claimed meanwhile (never freed for a second run), and
/// once Redis takes writes again the retry gets the first response.
#[tokio::test]
async fn a_completion_refused_with_an_error_reply_is_retried() {
    let fx = fixture(Kind::Redis);
    let app = app(
        &fx,
        IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")),
    );
    // Scripts loaded first: this is about the error reply, not NOSCRIPT.
    order(&app, "warm", "w", "x").await;
    let server = fx.tb.server();
    let first = tokio::spawn({
        let app = app.clone();
        async move {
            crate::send(
                &app,
                "POST",
                "/slow",
                &[("x-api-key", b"a"), ("idempotency-key", b"oom")],
                "x",
            )
            .await
        }
    });
    // Claimed, the handler running: Redis now refuses writes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = server.cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let _: () = server.cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    let answered = first.await.unwrap();
    assert_eq!(answered.status, StatusCode::CREATED, "{}", answered.body);
    // While writes are refused a retry is refused too (its claim is a
    // write), and the handler does not run again.
    let during = crate::send(
        &app,
        "POST",
        "/slow",
        &[("x-api-key", b"a"), ("idempotency-key", b"oom")],
        "x",
    )
    .await;
    assert_ne!(during.status, StatusCode::CREATED, "{}", during.body);
    let _: () = server.cmd(&["CONFIG", "SET", "maxmemory", "0"]);
    let replay = until_final(&app, "/slow", "oom", Duration::from_secs(5)).await;
    assert_eq!(replay.body, answered.body);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(fx.runs(), 2, "the warm-up and the first run only");
}
