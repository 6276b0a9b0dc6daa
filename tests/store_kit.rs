//! The test kit's contract suites (`redis_layers::test_kit`, feature
//! `test-kit`), run against this crate's backends, and against stores
//! written here from the public API alone, as a user would: a wrapper
//! that counts and logs every call of each of the four store traits, and
//! an idempotency store over a `Mutex<HashMap>` that reads records only
//! through `idempotency::record`.
#![cfg(all(
    feature = "test-kit",
    feature = "session",
    feature = "rate-limit",
    feature = "cache",
    feature = "idempotency"
))]

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_layers::cache::store::Heard;
use redis_layers::cache::{CacheStore, Fill};
use redis_layers::idempotency::record::{self, State};
use redis_layers::idempotency::{Claim, IdempotencyLayer, IdempotencyStore};
use redis_layers::rate_limit::{Check, Decision, Policy, RateLimitStore};
use redis_layers::session::store::{
    DeleteOutcome, DeleteRequest, LoadOutcome, LoadRequest, SaveOutcome, SaveRequest, SessionStore,
};
use redis_layers::session::{SessionHandle, SessionInfo};
use redis_layers::{test_kit, ClientKey, Error};
use tokio::sync::mpsc;

use support::{both_backends, TestBackend};

/// Forwards every call to `inner`, counting and logging it: the shape of
/// a store that wraps another, written with elided lifetimes and
/// `impl Future` returns as the traits' docs show.
#[derive(Clone)]
struct Logged<S> {
    inner: S,
    calls: Arc<AtomicUsize>,
}

impl<S> Logged<S> {
    fn new(inner: S) -> Self {
        Logged {
            inner,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn note(&self, call: &str) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(call, "store call");
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl<S: SessionStore> SessionStore for Logged<S> {
    fn load(
        &self,
        h: &SessionHandle,
        r: &LoadRequest,
    ) -> impl Future<Output = Result<LoadOutcome, Error>> + Send {
        self.note("load");
        self.inner.load(h, r)
    }
    fn save(
        &self,
        h: &SessionHandle,
        r: &SaveRequest,
    ) -> impl Future<Output = Result<SaveOutcome, Error>> + Send {
        self.note("save");
        self.inner.save(h, r)
    }
    fn delete(
        &self,
        h: &SessionHandle,
        r: &DeleteRequest,
    ) -> impl Future<Output = Result<DeleteOutcome, Error>> + Send {
        self.note("delete");
        self.inner.delete(h, r)
    }
    fn index_add(
        &self,
        user: &str,
        h: &SessionHandle,
        deadline_ms: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.note("index_add");
        self.inner.index_add(user, h, deadline_ms)
    }
    fn index_remove(
        &self,
        user: &str,
        h: &SessionHandle,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.note("index_remove");
        self.inner.index_remove(user, h)
    }
    fn list(&self, user: &str) -> impl Future<Output = Result<Vec<SessionInfo>, Error>> + Send {
        self.note("list");
        self.inner.list(user)
    }
}

impl<S: RateLimitStore> RateLimitStore for Logged<S> {
    fn check(
        &self,
        key: &str,
        policies: &[Policy],
        cost: u64,
    ) -> impl Future<Output = Result<Decision, Error>> + Send {
        self.note("check");
        self.inner.check(key, policies, cost)
    }
    fn check_all(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Vec<Decision>, Error>> + Send {
        self.note("check_all");
        self.inner.check_all(checks)
    }
}

impl<S: CacheStore> CacheStore for Logged<S> {
    async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.note("lookup");
        self.inner.lookup(key).await
    }
    async fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
        tags: &[String],
        fill: Fill<'_>,
    ) -> Result<bool, Error> {
        self.note("store");
        self.inner.store(key, entry, ttl, tags, fill).await
    }
    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        self.note("invalidate");
        self.inner.invalidate(key).await
    }
    async fn purge_tag(&self, tag: &str, limit: usize, start: bool) -> Result<Vec<String>, Error> {
        self.note("purge_tag");
        self.inner.purge_tag(tag, limit, start).await
    }
    async fn lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(bool, Option<Bytes>), Error> {
        self.note("lease");
        self.inner.lease(key, holder, ttl).await
    }
    async fn poll(&self, key: &str) -> Result<(Option<Bytes>, bool), Error> {
        self.note("poll");
        self.inner.poll(key).await
    }
    async fn unlease(&self, key: &str, holder: &str) -> Result<(), Error> {
        self.note("unlease");
        self.inner.unlease(key, holder).await
    }
    async fn renew(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        self.note("renew");
        self.inner.renew(key, holder, ttl).await
    }
    async fn announce(&self, keys: &[String]) -> Result<(), Error> {
        self.note("announce");
        self.inner.announce(keys).await
    }
    fn listen(&self) -> Option<mpsc::Receiver<Heard>> {
        self.inner.listen()
    }
    async fn generation(&self) -> Result<u64, Error> {
        self.note("generation");
        self.inner.generation().await
    }
    async fn next_generation(&self, at_least: u64) -> Result<u64, Error> {
        self.note("next_generation");
        self.inner.next_generation(at_least).await
    }
}

impl<S: IdempotencyStore> IdempotencyStore for Logged<S> {
    fn claim(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        holder: u64,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, Error>> + Send {
        self.note("claim");
        self.inner.claim(key, fingerprint, holder, lease)
    }
    fn fence(
        &self,
        key: &str,
        holder: u64,
        counter_ttl: Duration,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send {
        self.note("fence");
        self.inner.fence(key, holder, counter_ttl)
    }
    fn extend(
        &self,
        key: &str,
        holder: u64,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.note("extend");
        self.inner.extend(key, holder, lease)
    }
    fn complete(
        &self,
        key: &str,
        holder: u64,
        record: &[u8],
        retention: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.note("complete");
        self.inner.complete(key, holder, record, retention)
    }
    fn release(&self, key: &str, holder: u64) -> impl Future<Output = Result<bool, Error>> + Send {
        self.note("release");
        self.inner.release(key, holder)
    }
}

/// Idempotency records in a map, with their expiry: the table in
/// `idempotency::record`'s docs, and nothing else.
/// Each key's record and when it expires.
type Records = HashMap<String, (Vec<u8>, Instant)>;

#[derive(Clone, Default)]
struct MapStore {
    records: Arc<Mutex<Records>>,
    tokens: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
}

impl MapStore {
    /// The live record under `key`, dropping one that expired.
    fn live<'m>(map: &'m mut Records, key: &str) -> Option<&'m mut (Vec<u8>, Instant)> {
        if map
            .get(key)
            .is_some_and(|(_, until)| *until <= Instant::now())
        {
            map.remove(key);
        }
        map.get_mut(key)
    }

    /// Whether `holder` holds `key`, under the lock the caller then acts
    /// under (a check and its act apart would let a claim that replaced
    /// an expired one be released or fenced by the old holder).
    fn held_by(map: &mut Records, key: &str, holder: u64) -> bool {
        Self::live(map, key)
            .is_some_and(|(raw, _)| record::state(raw) == Some(State::InFlight { holder }))
    }
}

impl IdempotencyStore for MapStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        holder: u64,
        lease: Duration,
    ) -> Result<Claim, Error> {
        let mut map = self.records.lock().unwrap();
        if let Some((raw, _)) = Self::live(&mut map, key) {
            return Ok(Claim::Taken {
                record: Bytes::copy_from_slice(raw),
            });
        }
        let record = record::in_flight(holder, fingerprint);
        map.insert(key.to_owned(), (record, Instant::now() + lease));
        Ok(Claim::Claimed)
    }

    async fn fence(
        &self,
        key: &str,
        holder: u64,
        counter_ttl: Duration,
    ) -> Result<Option<u64>, Error> {
        let mut map = self.records.lock().unwrap();
        if !Self::held_by(&mut map, key, holder) {
            return Ok(None);
        }
        let mut tokens = self.tokens.lock().unwrap();
        let now = Instant::now();
        let entry = tokens.entry(key.to_owned()).or_insert((0, now));
        if entry.1 <= now {
            entry.0 = 0; // the counter expired (or is new)
        }
        entry.0 += 1;
        entry.1 = now + counter_ttl;
        Ok(Some(entry.0))
    }

    async fn extend(&self, key: &str, holder: u64, lease: Duration) -> Result<bool, Error> {
        let mut map = self.records.lock().unwrap();
        match Self::live(&mut map, key) {
            Some((raw, until)) if record::state(raw) == Some(State::InFlight { holder }) => {
                *until = Instant::now() + lease;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn complete(
        &self,
        key: &str,
        holder: u64,
        value: &[u8],
        retention: Duration,
    ) -> Result<bool, Error> {
        let mut map = self.records.lock().unwrap();
        let writes = match Self::live(&mut map, key) {
            None => true,
            Some((raw, _)) => match record::state(raw) {
                Some(State::InFlight { holder: h }) if h == holder => true,
                Some(State::Completed { holder: h }) if h == holder => return Ok(true),
                _ => return Ok(false),
            },
        };
        if writes {
            map.insert(key.to_owned(), (value.to_vec(), Instant::now() + retention));
        }
        Ok(writes)
    }

    async fn release(&self, key: &str, holder: u64) -> Result<bool, Error> {
        let mut map = self.records.lock().unwrap();
        let held = Self::held_by(&mut map, key, holder);
        if held {
            map.remove(key);
        }
        Ok(held)
    }
}

both_backends! { TestBackend::new;
    the_backend_keeps_every_store_contract => |fx| {
        test_kit::session_store(&fx.backend).await;
        test_kit::rate_limit_store(&fx.backend).await;
        test_kit::cache_store(&fx.backend).await;
        test_kit::idempotency_store(&fx.backend).await;
    }

    a_wrapper_written_outside_the_crate_keeps_every_store_contract => |fx| {
        let logged = Logged::new(fx.backend.clone());
        test_kit::session_store(&logged).await;
        let after_sessions = logged.calls();
        assert!(after_sessions > 20, "the suite called the wrapper: {after_sessions}");
        test_kit::rate_limit_store(&logged).await;
        test_kit::cache_store(&logged).await;
        test_kit::idempotency_store(&logged).await;
        assert!(logged.calls() > after_sessions + 60, "{}", logged.calls());
    }

    two_runs_of_a_suite_share_one_store => |fx| {
        let (a, b) = tokio::join!(
            test_kit::idempotency_store(&fx.backend),
            test_kit::idempotency_store(&fx.backend),
        );
        let ((), ()) = (a, b);
    }
}

#[tokio::test]
async fn a_map_store_written_outside_the_crate_keeps_the_idempotency_contract() {
    test_kit::idempotency_store(&MapStore::default()).await;
}

#[tokio::test]
async fn a_map_store_serves_the_idempotency_layer() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let store = MapStore::default();
    let app = axum::Router::new()
        .route(
            "/orders",
            post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { (StatusCode::CREATED, format!("order {n}")) }
            }),
        )
        .layer(IdempotencyLayer::new(store.clone(), ClientKey::global()));
    let send = |key: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::post("/orders")
                .header("idempotency-key", key)
                .body(Body::from("{}"))
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    assert_eq!(send("a").await, (StatusCode::CREATED, "order 1".to_owned()));
    assert_eq!(
        send("a").await,
        (StatusCode::CREATED, "order 1".to_owned()),
        "a replay"
    );
    assert_eq!(send("b").await, (StatusCode::CREATED, "order 2".to_owned()));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(store.records.lock().unwrap().len(), 2, "one record per key");
}
