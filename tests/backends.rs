//! The operations both backends offer behave the same: one suite, run
//! against a real Redis and against the memory backend.

mod support;

use std::time::Duration;

use redis_layers::memory::MemoryBackend;
use redis_layers::redis::RedisBackend;
use support::{unique_prefix, RedisServer};

/// Runs each listed test body against both backends. `$make` gives a
/// backend; the Redis variant keeps its server alive for the test.
macro_rules! backend_suite {
    ($($name:ident => |$b:ident| $body:block)*) => {
        mod on_redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let server = RedisServer::start();
                    let $b = RedisBackend::builder()
                        .url(server.url())
                        .prefix(unique_prefix(stringify!($name)))
                        .build()
                        .unwrap();
                    $body
                    drop(server);
                }
            )*
        }
        mod on_memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let $b = MemoryBackend::builder()
                        .prefix(unique_prefix(stringify!($name)))
                        .build()
                        .unwrap();
                    $body
                }
            )*
        }
    };
}

backend_suite! {
    set_get_delete => |b| {
        let key = b.namespace().key(&["k"]);
        assert_eq!(b.get(&key).await.unwrap(), None);
        b.set(&key, b"one", None).await.unwrap();
        assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"one"[..]));
        b.set(&key, b"two", None).await.unwrap();
        assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"two"[..]));
        assert!(b.delete(&key).await.unwrap());
        assert!(!b.delete(&key).await.unwrap());
        assert_eq!(b.get(&key).await.unwrap(), None);
    }

    binary_values_round_trip => |b| {
        let key = b.namespace().key(&["bin"]);
        let value: Vec<u8> = (0..=255).collect();
        b.set(&key, &value, None).await.unwrap();
        assert_eq!(b.get(&key).await.unwrap(), Some(value));
        b.set(&key, b"", None).await.unwrap();
        assert_eq!(b.get(&key).await.unwrap(), Some(Vec::new()));
    }

    ttls_expire => |b| {
        let short = b.namespace().key(&["short"]);
        let long = b.namespace().key(&["long"]);
        b.set(&short, b"v", Some(Duration::from_millis(60))).await.unwrap();
        b.set(&long, b"v", Some(Duration::from_secs(60))).await.unwrap();
        assert!(b.get(&short).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(b.get(&short).await.unwrap(), None);
        assert!(b.get(&long).await.unwrap().is_some());
    }

    set_without_ttl_clears_an_old_ttl => |b| {
        let key = b.namespace().key(&["k"]);
        b.set(&key, b"v", Some(Duration::from_millis(60))).await.unwrap();
        b.set(&key, b"w", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"w"[..]));
    }
}
