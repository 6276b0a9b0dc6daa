//! Cluster-safe keys, checked by a real Redis Cluster: a node in cluster
//! mode refuses a script whose keys span slots (CROSSSLOT) or that touches
//! keys it did not declare. Every session operation runs on a one-node
//! cluster (which owns all slots, so a plain connection needs no
//! redirects). The `cluster` feature, still reserved, will add routing for
//! clusters of several nodes.

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
