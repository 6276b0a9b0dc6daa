//! The operations both backends offer behave the same: one suite, run
//! against a real Redis and against the memory backend, through the
//! [`Backend`](redis_layers::Backend) value the layers take.

mod support;

use std::time::Duration;

use support::{both_backends, TestBackend};

both_backends! { TestBackend::new;
    set_get_delete => |fx| {
        let b = &fx.backend;
        let key = b.namespace().key(&["k"]);
        assert_eq!(b.get(&key).await.unwrap(), None);
        b.set(&key, b"one", None).await.unwrap();
        assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"one"[..]));
        b.set(&key, b"two", None).await.unwrap();
        assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"two"[..]));
        assert!(b.delete(&key).await.unwrap());
        assert!(!b.delete(&key).await.unwrap());
        assert_eq!(b.get(&key).await.unwrap(), None);
        assert_eq!(fx.keys("*").len(), 0);
    }

    binary_values_round_trip => |fx| {
        let b = &fx.backend;
        let key = b.namespace().key(&["bin"]);
        let value: Vec<u8> = (0..=255).collect();
        b.set(&key, &value, None).await.unwrap();
        assert_eq!(b.get(&key).await.unwrap(), Some(value));
        b.set(&key, b"", None).await.unwrap();
        assert_eq!(b.get(&key).await.unwrap(), Some(Vec::new()));
    }

    ttls_expire => |fx| {
        let b = &fx.backend;
        let short = b.namespace().key(&["short"]);
        let long = b.namespace().key(&["long"]);
        b.set(&short, b"v", Some(Duration::from_millis(60))).await.unwrap();
        b.set(&long, b"v", Some(Duration::from_secs(60))).await.unwrap();
        assert!(b.get(&short).await.unwrap().is_some());
        assert_eq!(fx.keys("*").len(), 2);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(b.get(&short).await.unwrap(), None);
        assert!(b.get(&long).await.unwrap().is_some());
        assert_eq!(fx.keys("*"), vec![long.clone()]);
    }

    set_without_ttl_clears_an_old_ttl => |fx| {
        let b = &fx.backend;
        let key = b.namespace().key(&["k"]);
        b.set(&key, b"v", Some(Duration::from_millis(60))).await.unwrap();
        b.set(&key, b"w", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"w"[..]));
    }

    ping_answers => |fx| {
        fx.backend.ping().await.unwrap();
        assert!(["redis", "memory"].contains(&fx.backend.kind()));
    }
}

#[test]
fn a_redis_backend_outside_a_runtime_is_a_config_error() {
    let err = redis_layers::redis::RedisBackend::from_url("redis://127.0.0.1:1").unwrap_err();
    assert_eq!(err.kind(), redis_layers::ErrorKind::Config);
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

#[tokio::test]
async fn from_env_needs_redis_url_and_from_env_or_memory_falls_back() {
    // One test touches the environment, so no other test races it.
    std::env::remove_var("REDIS_URL");
    // A service that lost its setting fails at start, naming it.
    let err = redis_layers::Backend::from_env().unwrap_err();
    assert_eq!(err.kind(), redis_layers::ErrorKind::Config);
    assert!(err.to_string().contains("REDIS_URL"), "{err}");
    std::env::set_var("REDIS_URL", "  ");
    assert!(redis_layers::Backend::from_env_with_prefix("env-test").is_err());
    // The lenient form, as the example app uses it.
    let b = redis_layers::Backend::from_env_or_memory("env-test").unwrap();
    assert_eq!(b.kind(), "memory");
    assert_eq!(b.namespace().prefix(), "env-test");
    std::env::set_var("REDIS_URL", "redis://127.0.0.1:1");
    let b = redis_layers::Backend::from_env().unwrap();
    assert_eq!(b.kind(), "redis", "built lazily: no connection yet");
    std::env::set_var("REDIS_URL", "not a url");
    let err = redis_layers::Backend::from_env().unwrap_err();
    assert_eq!(err.kind(), redis_layers::ErrorKind::Config);
    std::env::remove_var("REDIS_URL");
}
