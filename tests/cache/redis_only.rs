//! What only a real Redis can show: commands sent, and a failing server.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use redis_layers::cache::CacheLayer;

use crate::support::{Kind, Monitor};
use crate::{answered_locally, app, fixture, get, send, Fixture};

#[tokio::test]
async fn a_hit_is_one_get_and_a_miss_adds_one_set() {
    let fx = fixture(Kind::Redis);
    // Asking for the generation once (not again within the test).
    let layer = fx
        .builder()
        .generation_refresh(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let app = app(&fx, layer);
    let mut monitor = Monitor::start(fx.tb.server());
    // What the layer sent (not the test's own KEYS while it waits).
    let mut sent =
        move || -> Vec<String> { monitor.take().into_iter().filter(|c| c != "keys").collect() };
    get(&app, "/fresh").await;
    fx.stored(1).await;
    // The generation (on first use), look up, take the fill lease (and
    // read the entry, pipelined), then store for the lease's holder, which
    // gives it up (a script, loaded on this first use).
    assert_eq!(sent(), ["get", "get", "set", "get", "evalsha", "eval"]);
    get(&app, "/fresh?another").await;
    fx.stored(2).await;
    assert_eq!(sent(), ["get", "set", "get", "evalsha"]);
    assert!(get(&app, "/fresh").await.hit());
    assert_eq!(sent(), ["get"]);
    send(&app, "POST", "/other", &[]).await;
    assert_eq!(
        sent(),
        ["get", "evalsha", "eval", "evalsha", "publish"],
        "the store's generation, the URI and its Location (each a small script that removes \
         the entry, its variants and its fill lease; loaded on first use), then the news for \
         local tiers"
    );
    // The entry expires with its freshness.
    let ttl: i64 = fx.tb.server().cmd(&["PTTL", &fx.tb.keys("cache:*:e")[0]]);
    assert!((59_000..=60_000).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn the_generation_is_asked_again_once_per_refresh_and_purging_all_is_one_incr() {
    let fx = fixture(Kind::Redis);
    let layer = fx
        .builder()
        .generation_refresh(Duration::from_secs(1))
        .build()
        .unwrap();
    let purger = layer.purger();
    let app = app(&fx, layer);
    get(&app, "/fresh").await;
    fx.stored(1).await;
    let mut monitor = Monitor::start(fx.tb.server());
    let mut sent =
        move || -> Vec<String> { monitor.take().into_iter().filter(|c| c != "keys").collect() };
    // Whatever the wait for the store took, the generation was just
    // asked (or is fresh): a hit right after is the entry alone.
    assert!(get(&app, "/fresh").await.hit());
    sent();
    assert!(get(&app, "/fresh").await.hit());
    assert_eq!(sent(), ["get"], "within the refresh: the entry alone");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(get(&app, "/fresh").await.hit());
    assert!(get(&app, "/fresh").await.hit());
    assert_eq!(
        sent(),
        ["get", "get", "get"],
        "the generation once, then the entry twice"
    );
    assert_eq!(purger.purge_all().await.unwrap(), 1);
    // One small script (loaded on this first use) and the news.
    assert_eq!(sent(), ["evalsha", "eval", "publish"]);
    let key = format!("{}:cache:generation", fx.tb.backend.namespace().prefix());
    let generation: String = fx.tb.server().cmd(&["GET", &key]);
    assert_eq!(generation, "1");
    // The counter lost (a failover dropped the write, or eviction): the
    // next purge still moves past what this layer knows, not back to 1.
    let _: () = fx.tb.server().cmd(&["DEL", &key]);
    assert_eq!(purger.purge_all().await.unwrap(), 2);
    let generation: String = fx.tb.server().cmd(&["GET", &key]);
    assert_eq!(generation, "2");
}

#[tokio::test]
async fn a_dead_store_sends_requests_to_the_handler() {
    let mut fx: Fixture = crate::Fixture {
        tb: crate::support::TestBackend::with_deadline(Kind::Redis, Duration::from_millis(300)),
        runs: Default::default(),
    };
    let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
    get(&app, "/fresh").await;
    fx.stored(1).await;
    fx.tb.server.as_mut().unwrap().kill();
    let started = Instant::now();
    let r = get(&app, "/fresh").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "/fresh #2");
    assert!(
        r.cache_status().contains("detail=store-error"),
        "{}",
        r.cache_status()
    );
    // A layer that never learnt the generation: tags still never reach
    // the client.
    let fresh_layer = crate::app(&fx, CacheLayer::new(fx.tb.backend.clone()));
    let r = get(&fresh_layer, "/tagged").await;
    assert!(
        r.cache_status().contains("detail=store-error"),
        "{}",
        r.cache_status()
    );
    assert!(r.header("cache-tag").is_none(), "tags leaked");
    let w = send(&app, "POST", "/fresh", &[]).await;
    assert_eq!(
        w.status,
        StatusCode::CREATED,
        "a failed invalidation is logged, not an error"
    );
    // Back up (empty): the store is used again.
    fx.tb.server.as_mut().unwrap().restart();
    let started = Instant::now();
    loop {
        let r = get(&app, "/fresh").await;
        // Stored again, or already a hit: a copy made while the store was
        // down may land once it is back, within its deadline.
        if r.cache_status().contains("stored") || r.hit() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            r.cache_status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fx.stored(1).await;
    assert!(get(&app, "/fresh").await.hit());
}

#[tokio::test]
async fn a_foreign_value_under_an_entry_key_is_a_miss() {
    let fx = fixture(Kind::Redis);
    let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
    get(&app, "/fresh").await;
    fx.stored(1).await;
    let key = fx.tb.keys("cache:*:e")[0].clone();
    let _: () = fx.tb.server().cmd(&["SET", &key, "garbage"]);
    let r = get(&app, "/fresh").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.cache_status().contains("detail=unreadable"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn a_local_hit_sends_nothing_and_a_lost_channel_empties_the_tier() {
    let fx = fixture(Kind::Redis);
    let app = app(&fx, fx.builder().local_tier(100).build().unwrap());
    get(&app, "/fresh").await;
    fx.stored(1).await;
    // Once listening, the tier keeps its copy.
    answered_locally(&app, "/fresh").await;
    let mut monitor = Monitor::start(fx.tb.server());
    let r = get(&app, "/fresh").await;
    assert!(
        r.cache_status().contains("detail=local"),
        "{}",
        r.cache_status()
    );
    let sent: Vec<String> = monitor.take().into_iter().filter(|c| c != "keys").collect();
    assert_eq!(sent, Vec::<String>::new(), "a local hit is no round trip");

    // The announcement channel drops; then the entry goes behind the
    // layer's back. The tier was emptied, so the store is asked.
    let _: i64 = fx.tb.server().cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key = fx.tb.keys("cache:*:e")[0].clone();
    let _: i64 = fx.tb.server().cmd(&["DEL", &key]);
    let r = get(&app, "/fresh").await;
    assert!(
        !r.hit(),
        "a copy survived the lost channel: {}",
        r.cache_status()
    );
    // Listening again, the tier works again.
    answered_locally(&app, "/fresh").await;
}

/// Redis paused past the deadline: a miss goes to the handler, and its
/// response is not stored (the write would land when Redis resumes, and a
/// page made while the store failed may be a degraded one).
#[tokio::test]
async fn a_response_made_while_the_store_failed_is_not_stored() {
    let fx: Fixture = crate::Fixture {
        tb: crate::support::TestBackend::with_deadline(Kind::Redis, Duration::from_millis(200)),
        runs: Default::default(),
    };
    let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
    get(&app, "/etag").await;
    fx.stored(1).await;
    let _: () = fx.tb.server().cmd(&["CLIENT", "PAUSE", "700", "ALL"]);
    let r = get(&app, "/fresh").await;
    assert!(
        r.cache_status().contains("detail=store-error"),
        "{}",
        r.cache_status()
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(fx.entries(), 1, "only the entry stored before the pause");
    assert!(!get(&app, "/fresh").await.hit());
}

/// 200 concurrent writes to one URI (think anonymous `POST /logout`):
/// they share invalidation runs, each begun after their handlers, so the
/// store sees a few rounds of calls, not 200, and no write is followed by
/// a stale read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_uri_share_their_invalidations() {
    let fx = fixture(Kind::Redis);
    let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
    get(&app, "/fresh").await;
    fx.stored(1).await;
    let before = fx.tb.server().command_calls();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let w = send(&app, "POST", "/fresh", &[]).await;
            assert_eq!(w.status, StatusCode::CREATED);
            // Read after this write: never the entry stored before.
            let r = get(&app, "/fresh").await;
            assert!(!r.body.ends_with("#1"), "stale after a write: {}", r.body);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = fx.tb.server().command_calls();
    let publishes = crate::support::delta(&before, &after, "publish");
    assert!(
        (1..=60).contains(&publishes),
        "{publishes} invalidation rounds for 200 writes"
    );
}

/// A subscription that stops answering (here: Redis paused for longer than
/// the health check's ping may take) empties the local tier within 5 s,
/// though no error ever reached the connection.
#[tokio::test]
async fn a_silent_subscription_empties_the_local_tier() {
    let fx: Fixture = crate::Fixture {
        tb: crate::support::TestBackend::with_deadline(Kind::Redis, Duration::from_millis(200)),
        runs: Default::default(),
    };
    let app = app(&fx, fx.builder().local_tier(100).build().unwrap());
    get(&app, "/fresh").await;
    fx.stored(1).await;
    answered_locally(&app, "/fresh").await;
    let _: () = fx.tb.server().cmd(&["CLIENT", "PAUSE", "7000", "ALL"]);
    tokio::time::sleep(Duration::from_millis(5_600)).await;
    let r = get(&app, "/fresh").await;
    assert!(
        !r.cache_status().contains("detail=local"),
        "the tier kept its copy: {}",
        r.cache_status()
    );
    // Back: the tier works again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    answered_locally(&app, "/fresh").await;
}

#[tokio::test]
async fn a_variant_hit_is_one_command_once_the_instance_knows_the_url_varies() {
    let fx = fixture(Kind::Redis);
    let layer = || {
        fx.builder()
            .generation_refresh(Duration::from_secs(3_600))
            .build()
            .unwrap()
    };
    let app = app(&fx, layer());
    let fr = [("accept-language", "fr")];
    send(&app, "GET", "/vary", &fr).await;
    send(&app, "GET", "/vary", &[("accept-language", "de")]).await;
    let started = Instant::now();
    while fx.tb.keys("cache:*:v*").len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "two variants and their places"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut monitor = Monitor::start(fx.tb.server());
    let mut sent =
        move || -> Vec<String> { monitor.take().into_iter().filter(|c| c != "keys").collect() };
    assert!(send(&app, "GET", "/vary", &fr).await.hit());
    assert_eq!(
        sent(),
        ["mget"],
        "the variant's key and its pointer, one command"
    );
    // An instance that has not seen the URL: the pointer, then the
    // variant; from then on, the variant alone.
    let other = crate::app(&fx, layer());
    assert!(send(&other, "GET", "/vary", &fr).await.hit());
    assert_eq!(
        sent(),
        ["get", "get", "mget"],
        "the generation, the pointer, the variant"
    );
    assert!(send(&other, "GET", "/vary", &[("accept-language", "de")])
        .await
        .hit());
    assert_eq!(sent(), ["mget"]);
}
