//! Cluster-safe keys, checked by a real Redis Cluster: a node in cluster
//! mode refuses a script whose keys span slots (CROSSSLOT) or that touches
//! keys it did not declare. Every session operation runs on a one-node
//! cluster (which owns all slots, so a plain connection needs no
//! redirects). The `cluster` feature, still reserved, will add routing for
//! clusters of several nodes.

mod support;

use std::time::Duration;

use redis_layers::redis::{RedisBackend, Script};
use redis_layers::session::{
    LoadRequest, RedisSessionStore, SaveMode, SaveRequest, SessionHandle, SessionStore,
};
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
    let store = RedisSessionStore::new(backend);
    let handle = SessionHandle::parse("00112233445566778899aabbccddeeff").unwrap();
    let create = SaveRequest {
        mode: SaveMode::Create {
            created_ms: None,
            deadline_ms: None,
            user_agent: Some("UA".to_owned()),
        },
        idle: Duration::from_secs(60),
        absolute: Duration::from_secs(600),
        clear: false,
        data: vec![("a".to_owned(), Some("1".to_owned()))],
        user: Some(Some("u{1}".to_owned())),
    };
    store.save(&handle, &create).await.unwrap();
    let update = SaveRequest {
        mode: SaveMode::Update,
        clear: true,
        data: vec![("b".to_owned(), Some("2".to_owned()))],
        user: None,
        ..create.clone()
    };
    store.save(&handle, &update).await.unwrap();
    for fields in [true, false] {
        let request = LoadRequest {
            idle: Duration::from_secs(60),
            touch_interval: Duration::ZERO,
            fields,
        };
        assert!(store.load(&handle, &request).await.unwrap().is_some());
    }
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    store.index_add("u{1}", &handle, in_an_hour).await.unwrap();
    assert_eq!(store.list("u{1}").await.unwrap().len(), 1);
    store.index_remove("u{1}", &handle).await.unwrap();
    store.delete(&handle, Some("u{1}")).await.unwrap();
}
