//! What only a real Redis can show: commands sent, fencing, a dead server.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use redis_layers::idempotency::{Claim, IdempotencyLayer, IdempotencyStore, Scope};

use crate::support::{Kind, Monitor, TestBackend};
use crate::{app, fixture, order, Fixture};

#[tokio::test]
async fn a_new_key_is_a_transaction_and_a_script_and_a_replay_one_transaction() {
    let fx = fixture(Kind::Redis);
    let app = app(
        &fx,
        IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")),
    );
    // Load the scripts first, so the counts below are of EVALSHA alone.
    order(&app, "warm", "w", "x").await;
    let mut monitor = Monitor::start(fx.tb.server());
    order(&app, "a", "k", "tea").await;
    let claim = ["multi", "set", "pttl", "incr", "pexpire", "exec"];
    let mut first = claim.to_vec();
    first.push("evalsha");
    assert_eq!(monitor.take(), first, "claim (plain commands), complete");
    order(&app, "a", "k", "tea").await;
    assert_eq!(monitor.take(), claim, "the claim returns the record");
    // Record and counter share one hash slot, and expire.
    let keys = fx.tb.keys("idem:*");
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in &keys {
        let ttl: i64 = fx.tb.server().cmd(&["PTTL", key]);
        assert!(ttl > 0, "{key}: {ttl}");
        assert!(!key.contains("tea") && !key.contains(":k"), "{key}");
    }
}

#[tokio::test]
async fn a_lost_claim_cannot_complete() {
    let tb = TestBackend::new(Kind::Redis);
    let store = tb.backend.clone();
    let fp = [1u8; 32];
    let lease = Duration::from_millis(200);
    let day = Duration::from_secs(86_400);
    let (first, second) = (0x1111_u64, 0x2222_u64);
    let Claim::Claimed(first_token) = store.claim("k", &fp, first, lease, day).await.unwrap()
    else {
        panic!("free")
    };
    // Taken while the lease holds: the record comes back, nothing is set.
    let Claim::Taken { ttl, .. } = store.claim("k", &fp, second, lease, day).await.unwrap() else {
        panic!("held")
    };
    assert!(ttl <= lease && ttl > Duration::ZERO, "{ttl:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The lease ran out; another request claims with a higher token.
    let Claim::Claimed(second_token) = store.claim("k", &fp, second, lease, day).await.unwrap()
    else {
        panic!("free again")
    };
    assert!(second_token > first_token);
    assert!(!store.extend("k", first, lease).await.unwrap());
    assert!(
        !store
            .complete("k", first, b"late".to_vec(), day)
            .await
            .unwrap(),
        "fenced"
    );
    assert!(!store.release("k", first).await.unwrap());
    assert!(store.extend("k", second, lease).await.unwrap());
    assert!(store
        .complete("k", second, b"RLI1-any".to_vec(), day)
        .await
        .unwrap());
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
    assert!(r.problem_type());
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
    assert!(r.problem_type());
    // Not even a string: the transaction fails, the layer fails closed.
    let _: () = fx.tb.server().cmd(&["DEL", &record]);
    let _: i64 = fx.tb.server().cmd(&["HSET", &record, "f", "v"]);
    let r = order(&app, "a", "k", "tea").await;
    assert!(r.status.is_server_error(), "{}: {}", r.status, r.body);
    assert!(r.problem_type());
    assert_eq!(fx.runs(), 1, "the handler ran only for the first order");
}
