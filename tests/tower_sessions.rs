//! `TowerSessionStore` under tower-sessions' own layer, on memory, Redis and
//! the cluster: what an application on tower-sessions (axum-login,
//! axum-messages) sees, and what is stored.

#![cfg(feature = "tower-sessions")]

mod support;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use http::{header, Request, StatusCode};
use redis_layers::tower_sessions::TowerSessionStore;
use redis_layers::Backend;
use support::reply::Reply;
use support::TestBackend;
use tower_sessions::session::{Id, Record};
use tower_sessions::{Expiry, Session, SessionManagerLayer, SessionStore};

async fn incr(session: Session) -> String {
    let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
    session.insert("n", n).await.unwrap();
    n.to_string()
}

async fn read(session: Session) -> String {
    let n: Option<u64> = session.get("n").await.unwrap();
    n.map_or_else(|| "none".to_owned(), |n| n.to_string())
}

async fn cycle(session: Session) -> &'static str {
    session.cycle_id().await.unwrap();
    "ok"
}

async fn flush(session: Session) -> &'static str {
    session.flush().await.unwrap();
    "ok"
}

fn app(backend: &Backend, idle: time::Duration) -> Router {
    let layer = SessionManagerLayer::new(TowerSessionStore::new(backend.clone()))
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(idle));
    Router::new()
        .route("/incr", post(incr))
        .route("/read", get(read))
        .route("/cycle", post(cycle))
        .route("/flush", post(flush))
        .layer(layer)
}

async fn send(app: &Router, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        req = req.header(header::COOKIE, cookie);
    }
    support::reply::send(app, req.body(Body::empty()).unwrap()).await
}

/// The `id=...` pair of a response's `Set-Cookie`.
fn cookie_of(r: &Reply) -> String {
    let set = r.set_cookie().expect("a session cookie");
    set.split(';').next().unwrap().to_owned()
}

/// The stored session keys of this test's namespace.
fn session_keys(tb: &TestBackend) -> Vec<String> {
    tb.keys("session:*")
}

/// The remaining TTL of `key` in milliseconds.
fn pttl(tb: &TestBackend, key: &str) -> i64 {
    match &tb.backend {
        Backend::Memory(memory) => memory.atomically(|ks| {
            ks.ttl(key)
                .flatten()
                .map_or(-1, |ttl| ttl.as_millis() as i64)
        }),
        _ => tb.key_cmd(key, &["PTTL", key]),
    }
}

fn raw(tb: &TestBackend, key: &str) -> Vec<u8> {
    match &tb.backend {
        Backend::Memory(memory) => memory.atomically(|ks| match ks.get(key) {
            Some(redis_layers::memory::Value::Bytes(b)) => b.clone(),
            _ => Vec::new(),
        }),
        _ => tb.key_cmd(key, &["GET", key]),
    }
}

support::both_backends! { TestBackend::new;
    a_session_round_trips_through_tower_sessions_layer => |tb| {
        let app = app(&tb.backend, time::Duration::minutes(10));
        assert_eq!(send(&app, "GET", "/read", None).await.body, "none");
        assert!(session_keys(&tb).is_empty(), "nothing stored for an empty session");
        let r = send(&app, "POST", "/incr", None).await;
        assert_eq!(r.body, "1");
        let cookie = cookie_of(&r);
        assert_eq!(send(&app, "POST", "/incr", Some(&cookie)).await.body, "2");
        // Another instance on the same backend sees it.
        let other = self::app(&tb.backend, time::Duration::minutes(10));
        assert_eq!(send(&other, "GET", "/read", Some(&cookie)).await.body, "2");

        // What is stored: one key, named by the id's digest, holding no id.
        let keys = session_keys(&tb);
        assert_eq!(keys.len(), 1, "{keys:?}");
        let id = cookie.trim_start_matches("id=");
        assert!(keys[0].ends_with(":ts") && !keys[0].contains(id), "{keys:?}");
        let value = String::from_utf8(raw(&tb, &keys[0])).unwrap();
        assert!(!value.contains(id), "{value}");
        assert!(value.contains("\"n\":2"), "{value}");
        // Its TTL is the session's expiry (10 minutes).
        let ttl = pttl(&tb, &keys[0]);
        assert!((590_000..=600_000).contains(&ttl), "{ttl}");

        // A new id: the data moves, the old id names nothing.
        let r = send(&app, "POST", "/cycle", Some(&cookie)).await;
        let renewed = cookie_of(&r);
        assert_ne!(renewed, cookie);
        assert_eq!(send(&app, "GET", "/read", Some(&renewed)).await.body, "2");
        assert_eq!(send(&app, "GET", "/read", Some(&cookie)).await.body, "none");
        assert_eq!(session_keys(&tb).len(), 1);

        // A logout removes it.
        send(&app, "POST", "/flush", Some(&renewed)).await;
        assert_eq!(send(&app, "GET", "/read", Some(&renewed)).await.body, "none");
        assert!(session_keys(&tb).is_empty());
    }

    create_never_overwrites_another_session => |tb| {
        let store = TowerSessionStore::new(tb.backend.clone());
        let expiry = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
        let mut first = Record { id: Id(7), data: Default::default(), expiry_date: expiry };
        first.data.insert("who".into(), "first".into());
        store.create(&mut first).await.unwrap();
        assert_eq!(first.id, Id(7));
        let mut second = Record { id: Id(7), data: Default::default(), expiry_date: expiry };
        second.data.insert("who".into(), "second".into());
        store.create(&mut second).await.unwrap();
        assert_ne!(second.id, Id(7), "a fresh id after the collision");
        let loaded = store.load(&Id(7)).await.unwrap().unwrap();
        assert_eq!(loaded.data["who"], "first");
        assert_eq!(loaded.expiry_date.unix_timestamp(), expiry.unix_timestamp());
        assert_eq!(store.load(&second.id).await.unwrap().unwrap().data["who"], "second");
        // A save overwrites; an expired record is removed, not saved.
        second.data.insert("who".into(), "saved".into());
        store.save(&second).await.unwrap();
        assert_eq!(store.load(&second.id).await.unwrap().unwrap().data["who"], "saved");
        second.expiry_date = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
        store.save(&second).await.unwrap();
        assert!(store.load(&second.id).await.unwrap().is_none());
        // An expired new record is not stored, and takes no other id.
        let mut late = Record { id: Id(11), data: Default::default(), expiry_date: second.expiry_date };
        store.create(&mut late).await.unwrap();
        assert_eq!(late.id, Id(11));
        assert!(store.load(&Id(11)).await.unwrap().is_none());
        store.delete(&Id(7)).await.unwrap();
        assert!(store.load(&Id(7)).await.unwrap().is_none());
        // A save of a session deleted meanwhile (a logout by another
        // request) does not bring it back.
        first.data.insert("who".into(), "late".into());
        store.save(&first).await.unwrap();
        assert!(store.load(&Id(7)).await.unwrap().is_none(), "stays deleted");
        assert!(session_keys(&tb).is_empty());
    }

    a_stored_value_that_is_no_session_is_a_decode_error => |tb| {
        let store = TowerSessionStore::new(tb.backend.clone());
        let expiry = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
        let mut record = Record { id: Id(9), data: Default::default(), expiry_date: expiry };
        store.create(&mut record).await.unwrap();
        let key = session_keys(&tb).pop().unwrap();
        tb.backend.set(&key, b"not json", None).await.unwrap();
        let err = store.load(&Id(9)).await.unwrap_err();
        assert!(matches!(err, tower_sessions::session_store::Error::Decode(_)), "{err}");
    }
}

/// A store that cannot reach Redis fails within the backend's deadline,
/// with the trait's backend error (tower-sessions then answers 500).
#[tokio::test]
async fn an_unreachable_redis_is_a_bounded_backend_error() {
    let mut server = support::RedisServer::start();
    let backend = redis_layers::redis::RedisBackend::builder()
        .url(server.url())
        .prefix(support::unique_prefix("ts"))
        .deadline(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let store = TowerSessionStore::new(backend);
    assert!(store.load(&Id(1)).await.unwrap().is_none());
    server.kill();
    let started = std::time::Instant::now();
    let err = store.load(&Id(1)).await.unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, tower_sessions::session_store::Error::Backend(_)),
        "{err}"
    );
    // A handler that answers a store error with 500, as axum-login does.
    let careful = |session: Session| async move {
        match session.get::<u64>("n").await {
            Ok(n) => (StatusCode::OK, format!("{n:?}")),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    };
    let app = Router::new()
        .route("/read", get(careful))
        .layer(SessionManagerLayer::new(store).with_secure(false));
    let r = send(&app, "GET", "/read", Some("id=AAAAAAAAAAAAAAAAAAAAAA")).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.body.contains("connect"), "{}", r.body);
}
