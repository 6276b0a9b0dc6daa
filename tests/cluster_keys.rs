//! Cluster-safe keys, checked by a real Redis Cluster: a node in cluster
//! mode refuses a script whose keys span slots (CROSSSLOT) or that touches
//! keys it did not declare. Every session operation runs on a one-node
//! cluster (which owns all slots, so a plain connection needs no
//! redirects); with the `cluster` feature, each layer's keys are checked
//! to sit in the slots the design names on a cluster of three (the
//! behaviour suites run there too: `on_cluster` in each suite).

mod support;

use std::time::Duration;

use redis_layers::redis::{RedisBackend, Script};
use redis_layers::session::store::{DeleteRequest, LoadRequest, SaveRequest, SessionStore};
use redis_layers::session::SessionHandle;
use support::RedisCluster;

#[tokio::test]
async fn the_test_cluster_forms_with_three_nodes() {
    let cluster = RedisCluster::start(3);
    for node in &cluster.nodes {
        let info: String = node.cmd(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    }
}

#[tokio::test]
async fn a_cluster_node_rejects_cross_slot_scripts() {
    // The check this file relies on: it really happens.
    let cluster = RedisCluster::start(1);
    let backend = RedisBackend::from_url(&cluster.nodes[0].url()).unwrap();
    static TWO_KEYS: Script = Script::new(
        "test-two-keys",
        "redis.call('SET', KEYS[1], 1) return redis.call('SET', KEYS[2], 1)",
    );
    let err = backend
        .script(&TWO_KEYS)
        .key("a")
        .key("b")
        .invoke::<String>()
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("crossslot"),
        "{err:?}"
    );
    let same_slot: String = backend
        .script(&TWO_KEYS)
        .key("{t}a")
        .key("{t}b")
        .invoke()
        .await
        .unwrap();
    assert_eq!(same_slot, "OK");
}

#[tokio::test]
async fn every_session_operation_is_legal_on_a_cluster() {
    let cluster = RedisCluster::start(1);
    let backend = RedisBackend::builder()
        .url(cluster.nodes[0].url())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let store = &backend;
    let handle = SessionHandle::parse("00112233445566778899aabbccddeeff").unwrap();
    let idle = Duration::from_secs(60);
    let create = SaveRequest::create(idle, Duration::from_secs(600), Some("UA".to_owned()))
        .change("a", Some("1".to_owned()))
        .user(Some("u{1}".to_owned()));
    store.save(&handle, &create).await.unwrap();
    let update = SaveRequest::update(idle)
        .clear_data()
        .change("b", Some("2".to_owned()));
    store.save(&handle, &update).await.unwrap();
    for request in [
        LoadRequest::new(idle, Duration::ZERO),
        LoadRequest::new(idle, Duration::ZERO).touch_only(),
    ] {
        // (A touch is due only once the expiry can move: let a moment pass,
        // so that the touch script runs on the cluster node too.)
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(store
            .load(&handle, &request)
            .await
            .unwrap()
            .found()
            .is_some());
    }
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    store.index_add("u{1}", &handle, in_an_hour).await.unwrap();
    assert_eq!(store.list("u{1}").await.unwrap().len(), 1);
    store.index_remove("u{1}", &handle).await.unwrap();
    SessionStore::delete(store, &handle, &DeleteRequest::any().owned_by("u{1}"))
        .await
        .unwrap();
}

/// Each layer's keys sit where the design says: what one call touches in
/// one slot, what spans slots (tags, a user's index) in its own.
#[cfg(feature = "cluster")]
#[tokio::test]
async fn each_layers_keys_sit_in_the_slots_the_design_names() {
    use redis_layers::cache::CacheStore;
    use redis_layers::idempotency::{Claim, IdempotencyStore};
    use redis_layers::rate_limit::{Policy, RateLimitStore};
    use support::{Kind, TestBackend};

    let tb = TestBackend::new(Kind::Cluster);
    let cluster = tb.cluster.clone().expect("a cluster test");
    let slot = |key: &str| -> u64 { cluster.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key]) };
    let backend = tb.backend.clone();

    // Rate limiting: one client's policies of one rule are one key.
    let policies = [
        Policy::per_minute(10).named("m"),
        Policy::per_hour(100).fixed_window().named("h"),
        Policy::per_second(5).sliding_window().named("s"),
    ];
    assert!(
        backend
            .check("rule|client-a", &policies, 1)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        backend
            .check("rule|client-b", &policies, 1)
            .await
            .unwrap()
            .allowed
    );
    let limits = tb.keys("rl:*");
    assert_eq!(limits.len(), 2, "one key per client: {limits:?}");

    // Idempotency: a record and its counter, one slot.
    let fingerprint = [7u8; 32];
    let day = Duration::from_secs(86_400);
    let key = "0123456789abcdef0123456789abcdef";
    let claim = IdempotencyStore::claim(&backend, key, &fingerprint, 9, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claim, Claim::Claimed);
    let token = IdempotencyStore::fence(&backend, key, 9, day)
        .await
        .unwrap();
    assert!(token.is_some_and(|t| t > 0), "{token:?}");
    let records = tb.keys("idem:*");
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(slot(&records[0]), slot(&records[1]), "{records:?}");

    // Cache: an entry and its fill lease in one slot; each tag's set in
    // its own (stored and purged by concurrent per-slot calls).
    let key = "fedcba9876543210fedcba9876543210";
    let began = std::time::SystemTime::now();
    assert!(
        CacheStore::lease(&backend, key, "me", Duration::from_secs(5))
            .await
            .unwrap()
            .0
    );
    let lease: Vec<String> = tb.keys("cache:{*");
    assert_eq!(lease.len(), 1, "the lease: {lease:?}");
    let tags = [
        "product-1".to_owned(),
        "products".to_owned(),
        "home".to_owned(),
    ];
    assert!(CacheStore::store(
        &backend,
        key,
        b"entry".to_vec(),
        Duration::from_secs(60),
        &tags,
        redis_layers::cache::Fill::new("me", began),
    )
    .await
    .unwrap());
    let entry: Vec<String> = tb.keys("cache:{*");
    assert_eq!(
        entry.len(),
        1,
        "the entry (the write gave the lease up): {entry:?}"
    );
    assert_ne!(entry, lease);
    assert_eq!(slot(&entry[0]), slot(&lease[0]), "{entry:?} {lease:?}");
    let sets = tb.keys("cache-tag:*");
    assert_eq!(sets.len(), 3, "{sets:?}");
    let slots: std::collections::HashSet<u64> = sets.iter().map(|k| slot(k)).collect();
    assert!(slots.len() >= 2, "tags spread over slots: {sets:?}");
    assert_eq!(
        CacheStore::purge_tag(&backend, "products", 500, true)
            .await
            .unwrap(),
        vec![key.to_owned()]
    );
    assert_eq!(CacheStore::lookup(&backend, key).await.unwrap(), None);
    // The note of when the purge began sits with its tag's set.
    let purged = tb.keys("cache-tag:*:purged");
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert!(purged[0].contains("{products}"), "{purged:?}");
    let set = purged[0].trim_end_matches(":purged");
    assert_eq!(slot(&purged[0]), slot(set));
}
