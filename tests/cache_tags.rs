//! Cache tags at scale, on Redis, memory and a cluster: a hot tag's set
//! stays bounded and holds only live entries, and a purge removes every
//! live entry in bounded steps.
//!
//! Its own test binary, not part of `tests/cache`: two of these tests make
//! 10,000 store calls each, and beside the cache suite's timing-sensitive
//! tests (on a small machine) they made those miss their timings.

mod support;

use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use redis_layers::cache::store::Heard;
use redis_layers::cache::{CacheLayer, CacheStore, Fill, MAX_TAG_MEMBERS, PURGE_BATCH};
use redis_layers::Backend;
use tower::ServiceExt;

use support::TestBackend;

/// The key of the `i`th made-up entry (32 hex digits, as the layer's).
fn key(i: usize) -> String {
    format!("{i:032x}")
}

/// Entries stored so far.
fn entries(tb: &TestBackend) -> usize {
    tb.keys("cache:*:e").len()
}

/// `/hot`, fresh for a minute and tagged `hot`, behind `layer`.
fn app(layer: CacheLayer) -> Router {
    async fn hot() -> ([(&'static str, &'static str); 2], &'static str) {
        (
            [("cache-control", "max-age=60"), ("cache-tag", "hot")],
            "hot",
        )
    }
    Router::new()
        .route("/hot", axum::routing::get(hot))
        .layer(layer)
}

/// The `Cache-Status` of a GET of `/hot`.
async fn get_hot(app: &Router) -> String {
    let req = Request::builder()
        .uri("/hot")
        .header("host", "shop.example")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert!(res.headers().get("cache-tag").is_none());
    let status = res
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    // The whole body, as a client reads it: an entry is stored only then.
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hot");
    status
}

/// How many keys `tag` records: the size of its set.
fn tag_size(tb: &TestBackend, tag: &str) -> usize {
    let set = format!("{}:cache-tag:{{{tag}}}", tb.backend.namespace().prefix());
    match &tb.backend {
        Backend::Memory(memory) => memory.atomically(|ks| match ks.get(&set) {
            None => 0,
            Some(redis_layers::memory::Value::SortedSet(members)) => members.len(),
            Some(other) => panic!("the tag's set holds {other:?}"),
        }),
        _ => tb.key_cmd(&set, &["ZCARD", &set]),
    }
}

/// Stores an entry as the layer does: takes its fill lease, then writes
/// for the lease's holder, as a fill that began at `began`. True when
/// stored.
async fn fill_at(
    backend: &Backend,
    key: &str,
    entry: &[u8],
    ttl: Duration,
    tags: &[String],
    began: SystemTime,
) -> bool {
    let holder = format!("test-{key}-{began:?}");
    assert!(
        CacheStore::lease(backend, key, &holder, Duration::from_secs(5))
            .await
            .unwrap()
            .0,
        "the fill lease of {key} is free"
    );
    let stored = CacheStore::store(
        backend,
        key,
        entry.to_vec(),
        ttl,
        tags,
        Fill::new(&holder, began),
    )
    .await
    .unwrap();
    CacheStore::unlease(backend, key, &holder).await.unwrap();
    stored
}

/// [`fill_at`] for a fill that began now.
async fn fill(backend: &Backend, key: &str, entry: &[u8], ttl: Duration, tags: &[String]) -> bool {
    fill_at(backend, key, entry, ttl, tags, SystemTime::now()).await
}

/// Stores entries `from..to` tagged `tags` for `ttl`, 16 at a time; how
/// many were stored.
async fn store_many(
    backend: &Backend,
    from: usize,
    to: usize,
    tags: &[&str],
    ttl: Duration,
) -> usize {
    let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let (backend, tags) = (backend.clone(), tags.clone());
        tasks.spawn(async move {
            let mut stored = 0;
            for i in (from + lane..to).step_by(16) {
                let entry = format!("entry {i}").into_bytes();
                if fill(&backend, &key(i), &entry, ttl, &tags).await {
                    stored += 1;
                }
            }
            stored
        });
    }
    tasks.join_all().await.into_iter().sum()
}

support::both_backends! { TestBackend::new;
    a_hot_tag_records_at_most_its_bound_and_refuses_what_it_cannot_record => |fx| {
        let backend = &fx.backend;
        let ttl = Duration::from_secs(60);
        assert_eq!(MAX_TAG_MEMBERS, 10_000);
        assert_eq!(store_many(backend, 0, MAX_TAG_MEMBERS, &["hot"], ttl).await, MAX_TAG_MEMBERS);
        assert_eq!(tag_size(&fx, "hot"), MAX_TAG_MEMBERS);
        // One more URL under the full tag: not stored (a purge of the tag
        // could not find it), though its other tag had room.
        let more = key(MAX_TAG_MEMBERS);
        let tags = ["hot".to_owned(), "cold".to_owned()];
        let stored = fill(backend, &more, b"x", ttl, &tags).await;
        assert_eq!(tag_size(&fx, "hot"), MAX_TAG_MEMBERS, "the bound holds");
        assert_eq!(CacheStore::lookup(backend, &more).await.unwrap(), None);
        assert!(!stored);
        // A URL the tag records already is stored again (a refresh).
        assert!(fill(backend, &key(7), b"new", ttl, &tags).await);
        assert_eq!(CacheStore::lookup(backend, &key(7)).await.unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(tag_size(&fx, "hot"), MAX_TAG_MEMBERS);
        // Through the layer, a response naming the full tag is served but
        // not stored.
        let layer = CacheLayer::new(backend.clone());
        let purger = layer.purger();
        let app = app(layer);
        assert_eq!(entries(&fx), MAX_TAG_MEMBERS);
        let first = get_hot(&app).await;
        assert!(first.contains("fwd=uri-miss"), "{first}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(entries(&fx), MAX_TAG_MEMBERS, "not stored");
        // (A second request waits for the first one's write: had it
        // stored the entry, this would be a hit.)
        let again = get_hot(&app).await;
        assert!(again.contains("fwd=uri-miss"), "{again}");
        // Once the tag is purged there is room again (for fills that
        // began over a second after the purge began).
        assert_eq!(purger.purge_tag("hot").await.unwrap(), MAX_TAG_MEMBERS as u64);
        assert_eq!(entries(&fx), 0);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        get_hot(&app).await;
        let started = Instant::now();
        while entries(&fx) == 0 {
            assert!(started.elapsed() < Duration::from_secs(3), "not stored");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let hit = get_hot(&app).await;
        assert!(hit.contains("; hit"), "{hit}");
    }

    a_tag_drops_the_keys_of_expired_entries_when_written => |fx| {
        let backend = &fx.backend;
        // One entry that lives on keeps the tag alive while others expire.
        assert_eq!(store_many(backend, 0, 1, &["short"], Duration::from_secs(60)).await, 1);
        assert_eq!(store_many(backend, 1, 51, &["short"], Duration::from_millis(100)).await, 50);
        assert_eq!(tag_size(&fx, "short"), 51);
        // Past the entries' expiry and the tag's margin (1 s: an entry may
        // live on a node whose clock is a little behind its tag's node's).
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(store_many(backend, 51, 52, &["short"], Duration::from_secs(60)).await, 1);
        assert_eq!(tag_size(&fx, "short"), 2, "only the live entries are recorded");
        // A set whose entries all expired goes with them.
        assert_eq!(store_many(backend, 60, 61, &["gone"], Duration::from_millis(100)).await, 1);
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(tag_size(&fx, "gone"), 0);
    }

    a_purge_removes_every_live_entry_in_bounded_announcements => |fx| {
        let backend = &fx.backend;
        let ttl = Duration::from_secs(60);
        assert_eq!(store_many(backend, 0, MAX_TAG_MEMBERS, &["hot"], ttl).await, MAX_TAG_MEMBERS);
        let mut heard = CacheStore::listen(backend).expect("the test backends announce");
        assert_eq!(heard.recv().await, Some(Heard::Ready));
        let purger = CacheLayer::new(backend.clone()).purger();
        assert_eq!(purger.purge_tag("hot").await.unwrap(), MAX_TAG_MEMBERS as u64);
        // Every key announced, in messages of at most PURGE_BATCH keys.
        let mut announced = std::collections::HashSet::new();
        let mut messages = 0;
        let started = Instant::now();
        while announced.len() < MAX_TAG_MEMBERS {
            let left = Duration::from_secs(5).saturating_sub(started.elapsed());
            match tokio::time::timeout(left, heard.recv()).await {
                Ok(Some(Heard::Changed(keys))) => {
                    assert!(keys.len() <= PURGE_BATCH, "one message named {} keys", keys.len());
                    messages += 1;
                    announced.extend(keys);
                }
                Ok(other) => panic!("heard {other:?}"),
                Err(_) => panic!("{} keys announced in {messages} messages", announced.len()),
            }
        }
        assert_eq!(messages, MAX_TAG_MEMBERS / PURGE_BATCH);
        assert!((0..MAX_TAG_MEMBERS).all(|i| announced.contains(&key(i))));
        // And every entry is gone.
        assert_eq!(entries(&fx), 0);
        assert_eq!(tag_size(&fx, "hot"), 0);
        assert_eq!(purger.purge_tag("hot").await.unwrap(), 0);
    }

    a_purge_takes_the_keys_recorded_when_it_began_and_resumes_after_an_interruption => |fx| {
        let backend = &fx.backend;
        let ttl = Duration::from_secs(60);
        let tag = ["busy".to_owned()];
        assert_eq!(store_many(backend, 0, 5, &["busy"], ttl).await, 5);
        // The first step sets the five aside and takes two.
        let first = CacheStore::purge_tag(backend, "busy", 2, true).await.unwrap();
        assert_eq!(first.len(), 2);
        // A fill that began before the purge is not stored (its response
        // may predate what the purge announces), nor one that began within
        // the second after it (clocks may differ by that much).
        let before = SystemTime::now() - Duration::from_millis(100);
        assert!(!fill_at(backend, &key(10), b"x", ttl, &tag, before).await);
        assert!(!fill(backend, &key(10), b"x", ttl, &tag).await);
        // Entries tagged after it (a fill that began 1.5 s later) are not
        // part of this purge.
        let later = SystemTime::now() + Duration::from_millis(1_500);
        assert!(fill_at(backend, &key(10), b"x", ttl, &tag, later).await);
        let second = CacheStore::purge_tag(backend, "busy", 2, false).await.unwrap();
        assert_eq!(second.len(), 2);
        // The purge stops here (as on an error). The next one takes the
        // key left over and the one tagged since.
        let mut next = CacheStore::purge_tag(backend, "busy", 10, true).await.unwrap();
        next.sort();
        let mut taken: Vec<String> = first.into_iter().chain(second).collect();
        taken.extend(next.iter().cloned());
        taken.sort();
        let mut all: Vec<String> = (0..5).chain([10]).map(key).collect();
        all.sort();
        assert_eq!(taken, all, "each key once");
        assert_eq!(next.len(), 2);
        assert!(CacheStore::purge_tag(backend, "busy", 10, false).await.unwrap().is_empty());
        for k in &all {
            assert_eq!(CacheStore::lookup(backend, k).await.unwrap(), None);
        }
        // Only the note of when the purge began (kept for FILL_HORIZON).
        assert_eq!(fx.keys("cache-tag:*"), [format!("{}:cache-tag:{{busy}}:purged", backend.namespace().prefix())]);
    }
}

/// What a store of a tagged entry and a tag purge send to Redis.
#[tokio::test]
async fn a_tagged_store_records_its_tags_then_writes_the_entry_and_a_purge_goes_in_steps() {
    let fx = TestBackend::new(support::Kind::Redis);
    let backend = &fx.backend;
    let tags = ["a".to_owned(), "b".to_owned()];
    // Load the scripts: the steady state is one EVALSHA each.
    assert!(fill(backend, &key(0), b"x", Duration::from_secs(60), &tags).await);
    CacheStore::purge_tag(backend, "none", 1, true)
        .await
        .unwrap();
    // The layer takes the fill lease before its handler runs.
    let began = SystemTime::now() + Duration::from_secs(2);
    assert!(
        CacheStore::lease(backend, &key(1), "me", Duration::from_secs(5))
            .await
            .unwrap()
            .0
    );
    let mut monitor = support::Monitor::start(fx.server());
    assert!(CacheStore::store(
        backend,
        &key(1),
        b"x".to_vec(),
        Duration::from_secs(60),
        &tags,
        Fill::new("me", began),
    )
    .await
    .unwrap());
    // The tags, then the entry for the lease's holder (which gives the
    // lease up).
    assert_eq!(monitor.take(), ["evalsha", "evalsha", "evalsha"]);
    let lease = format!("{}:cache:{{{}}}:l", backend.namespace().prefix(), key(1));
    let held: i64 = fx.server().cmd(&["EXISTS", &lease]);
    assert_eq!(held, 0, "the write gave the lease up");
    // The entry ends when its tags let it go; the tag's set with its last
    // entry (and a margin of a second).
    let entry = format!("{}:cache:{{{}}}:e", backend.namespace().prefix(), key(1));
    let left: i64 = fx.server().cmd(&["PTTL", &entry]);
    assert!((59_000..=60_000).contains(&left), "{left}");
    let set = format!("{}:cache-tag:{{a}}", backend.namespace().prefix());
    let left: i64 = fx.server().cmd(&["PTTL", &set]);
    assert!((60_000..=61_000).contains(&left), "{left}");
    assert!(fill(backend, &key(2), b"x", Duration::from_secs(5), &tags).await);
    let left: i64 = fx.server().cmd(&["PTTL", &set]);
    assert!(
        (59_000..=61_000).contains(&left),
        "a shorter entry keeps the set: {left}"
    );
    monitor.take();
    let purger = CacheLayer::new(backend.clone()).purger();
    assert_eq!(purger.purge_tag("a").await.unwrap(), 3);
    // One step: the script, the entries' DELs and the keys' ZREM, the
    // news; then the step that finds none left.
    assert_eq!(
        monitor.take(),
        ["evalsha", "del", "del", "del", "zrem", "publish", "evalsha"]
    );
}
