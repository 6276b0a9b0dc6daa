//! Response-cache behaviour, one suite run against a real Redis and the
//! memory backend; Redis-only tests (commands sent, faults) live in
//! `redis_only.rs`.

#[path = "../support/mod.rs"]
mod support;

mod redis_only;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;

use axum::Router;
use http_body_util::BodyExt;
use redis_layers::cache::{CacheLayer, CacheLayerBuilder, CacheOverride, RequestDirectives};
use tower::ServiceExt;

use support::{Kind, TestBackend};

/// A backend and a count of handler runs.
pub struct Fixture {
    pub tb: TestBackend,
    pub runs: Arc<AtomicUsize>,
}

fn fixture(kind: Kind) -> Fixture {
    Fixture {
        tb: TestBackend::new(kind),
        runs: Arc::new(AtomicUsize::new(0)),
    }
}

impl Fixture {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn builder(&self) -> CacheLayerBuilder {
        CacheLayer::builder(self.tb.backend.clone())
    }

    /// Entries stored so far.
    fn entries(&self) -> usize {
        self.tb.keys("cache:*:e").len()
    }

    /// Variants stored so far (each under its own key).
    fn variants(&self) -> usize {
        self.tb
            .keys("cache:*")
            .iter()
            .filter(|k| k.rsplit_once("}:v").is_some_and(|(_, v)| v.len() == 32))
            .count()
    }

    /// Waits until `count` reaches `n` (3 s at most).
    async fn until(&self, what: &str, n: usize, count: impl Fn() -> usize) {
        let started = Instant::now();
        while count() < n {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{} {what}, expected {n}",
                count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` variants are stored.
    async fn stored_variants(&self, n: usize) {
        self.until("variants", n, || self.variants()).await;
    }

    /// Waits until `n` entries are stored (the write follows the body).
    async fn stored(&self, n: usize) {
        self.until("entries", n, || self.entries()).await;
    }
}

/// Routes whose answers say how they may be cached; each body carries the
/// handler's run count, so a cached answer is recognisable.
fn app(fx: &Fixture, layer: CacheLayer) -> Router {
    async fn answer(
        State(runs): State<Arc<AtomicUsize>>,
        uri: axum::http::Uri,
        headers: HeaderMap,
    ) -> axum::response::Response {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        let path = uri.path();
        let mut out = HeaderMap::new();
        let mut set = |name: &'static str, value: &str| {
            out.append(name, value.parse().unwrap());
        };
        let mut body = format!("{path} #{n}");
        match path {
            "/fresh" => set("cache-control", "public, max-age=60"),
            "/short" => set("cache-control", "max-age=1"),
            "/three" => set("cache-control", "max-age=3"),
            "/private" => set("cache-control", "private, max-age=60"),
            "/no-store" => set("cache-control", "no-store"),
            "/no-cache" => set("cache-control", "no-cache, max-age=60"),
            "/cookie" => {
                set("cache-control", "max-age=60");
                set("set-cookie", "id=secret");
            }
            "/plain" => {}
            "/vary" => {
                set("cache-control", "max-age=60");
                set("vary", "Accept-Language");
                let lang = headers
                    .get("accept-language")
                    .map(|v| v.to_str().unwrap().to_owned());
                body = format!("{path} #{n} {lang:?}");
            }
            // Varies on Accept-Language, unless asked not to.
            "/sometimes-vary" => {
                set("cache-control", "max-age=60");
                if !headers.contains_key("x-no-vary") {
                    set("vary", "Accept-Language");
                }
            }
            "/vary-star" => {
                set("cache-control", "max-age=60");
                set("vary", "*");
            }
            "/etag" => {
                for name in ["if-match", "if-unmodified-since"] {
                    if let Some(v) = headers.get(name) {
                        set("x-seen-precondition", v.to_str().unwrap());
                    }
                }
                set("cache-control", "max-age=60");
                set("etag", "\"v1\"");
                set("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT");
            }
            "/big" => {
                set("cache-control", "max-age=60");
                body = "x".repeat(5_000);
            }
            "/error" => {
                set("cache-control", "max-age=60");
                return (StatusCode::INTERNAL_SERVER_ERROR, out, body).into_response();
            }
            // Browsers may not keep it; this cache (a CDN-like shared
            // cache) keeps it a minute, or 20 s under its own field.
            "/targeted" => {
                set("cache-control", "no-store");
                set("cdn-cache-control", "max-age=60");
                set("redislayers-cache-control", "max-age=20");
            }
            // As /rev, its HEAD answer slow.
            "/rev-slow" => {
                set("cache-control", "max-age=1");
                set("etag", "\"r1\"");
                if headers.contains_key("x-slow") {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            }
            // A new ETag on every run.
            "/changing" => {
                set("cache-control", "max-age=1");
                set("etag", &format!("\"e{n}\""));
            }
            // A handler that answers ranges itself.
            "/partial" => {
                set("cache-control", "max-age=60");
                set("content-range", "bytes 0-3/100");
                return (StatusCode::PARTIAL_CONTENT, out, "abcd").into_response();
            }
            // The handler's word over the fields.
            "/forced" | "/forbidden" | "/forced-private" => {
                let (cc, word) = match path {
                    "/forced" => ("no-store", CacheOverride::Store(Duration::from_secs(30))),
                    "/forced-private" => (
                        "private, max-age=60",
                        CacheOverride::Store(Duration::from_secs(30)),
                    ),
                    _ => ("public, max-age=60", CacheOverride::Forbid),
                };
                set("cache-control", cc);
                return (out, axum::Extension(word), body).into_response();
            }
            // From an upstream that said it was 5 s old, after 1.1 s.
            "/aged-slow" => {
                tokio::time::sleep(Duration::from_millis(1_100)).await;
                set("cache-control", "max-age=60");
                set("age", "5");
            }
            // A status no RFC defines, with and without must-understand.
            "/odd" | "/odd-must-understand" => {
                let cc = if path == "/odd" {
                    "max-age=60"
                } else {
                    "must-understand, max-age=60"
                };
                set("cache-control", cc);
                return (StatusCode::from_u16(599).unwrap(), out, body).into_response();
            }
            "/missing" => {
                return (
                    StatusCode::NOT_FOUND,
                    [("cache-control", "max-age=60")],
                    body,
                )
                    .into_response();
            }
            "/rev" | "/no-cache-etag" => {
                let cc = if path == "/rev" {
                    "max-age=1"
                } else {
                    "no-cache"
                };
                set("cache-control", cc);
                set("etag", "\"r1\"");
                if headers.get("if-none-match").is_some_and(|v| v == "\"r1\"") {
                    return (StatusCode::NOT_MODIFIED, out).into_response();
                }
            }
            "/swr" => set("cache-control", "max-age=1, stale-while-revalidate=30"),
            // No validator of its own, but answers 304 to any If-None-Match.
            "/swr-lazy" => {
                set("cache-control", "max-age=1, stale-while-revalidate=30");
                if headers.contains_key("if-none-match") {
                    return (StatusCode::NOT_MODIFIED, out).into_response();
                }
            }
            // Revalidated with a 304 that tries to set a cookie and tag.
            "/rev-cookie" => {
                set("cache-control", "max-age=1");
                set("etag", "\"c1\"");
                if headers.get("if-none-match").is_some_and(|v| v == "\"c1\"") {
                    set("set-cookie", "user=alice");
                    set("cache-tag", "secret-tag");
                    return (StatusCode::NOT_MODIFIED, out).into_response();
                }
            }
            "/sie" | "/no-sie" => {
                let cc = if path == "/sie" {
                    "max-age=1, stale-if-error=30"
                } else {
                    "max-age=1"
                };
                set("cache-control", cc);
                if n > 1 {
                    return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
                }
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                set("cache-control", "max-age=60");
            }
            // Fresh for a second, slow to make, with a validator.
            "/slow-short" => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                set("cache-control", "max-age=1");
                set("etag", "\"s1\"");
            }
            // The same without a validator, past its window of staleness.
            "/slow-stale" => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                set("cache-control", "max-age=1, stale-while-revalidate=1");
            }
            "/tagged" => {
                set("cache-control", "max-age=60");
                set("cache-tag", "products, product-7");
            }
            "/other-tagged" => {
                set("cache-control", "max-age=60");
                set("cache-tag", "product-8");
            }
            "/hop" => {
                set("cache-control", "max-age=60");
                set("connection", "close");
                set("keep-alive", "timeout=5");
                set("x-kept", "yes");
            }
            _ => {}
        }
        (out, body).into_response()
    }
    async fn change(State(runs): State<Arc<AtomicUsize>>) -> impl IntoResponse {
        runs.fetch_add(1, Ordering::SeqCst);
        (
            StatusCode::CREATED,
            [("location", "/fresh?created")],
            "changed",
        )
    }
    async fn fail() -> impl IntoResponse {
        (StatusCode::BAD_REQUEST, "no")
    }
    async fn purge(
        axum::Extension(purger): axum::Extension<redis_layers::cache::Purger>,
        axum::extract::Path(tag): axum::extract::Path<String>,
    ) -> String {
        purger.purge_tag(&tag).await.unwrap().to_string()
    }
    async fn sees_purger(
        purger: Option<axum::Extension<redis_layers::cache::Purger>>,
    ) -> &'static str {
        if purger.is_some() {
            "purger"
        } else {
            "none"
        }
    }
    Router::new()
        .route("/admin/purge/{tag}", axum::routing::post(purge))
        .route("/sees-purger", axum::routing::get(sees_purger))
        .route(
            "/{*path}",
            // Other methods (OPTIONS, WebDAV's, made-up ones) answer as POST.
            axum::routing::get(answer)
                .post(change)
                .put(fail)
                .fallback(change),
        )
        .with_state(fx.runs.clone())
        .layer(layer)
}

use support::reply::Reply;

async fn send(app: &Router, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.example");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    support::reply::send(app, req.body(Body::empty()).unwrap()).await
}

async fn get(app: &Router, path: &str) -> Reply {
    send(app, "GET", path, &[]).await
}

/// Two instances A and B with local tiers (and B's purger), A having
/// stored `/tagged`.
async fn two_local_tiers(fx: &Fixture) -> (Router, Router, redis_layers::cache::Purger) {
    let a_layer = fx.builder().local_tier(100).build().unwrap();
    let b_layer = fx.builder().local_tier(100).build().unwrap();
    let purger = b_layer.purger();
    let (a, b) = (app(fx, a_layer), app(fx, b_layer));
    get(&a, "/tagged").await;
    fx.stored(1).await;
    (a, b, purger)
}

/// The `ttl` a hit's `Cache-Status` gives (whole seconds of freshness left).
fn ttl(r: &Reply) -> i64 {
    let status = r.cache_status();
    let at = status
        .find("ttl=")
        .unwrap_or_else(|| panic!("no ttl: {status}"))
        + 4;
    let digits: String = status[at..]
        .chars()
        .take_while(|c| *c == '-' || c.is_ascii_digit())
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("ttl in {status}"))
}

/// Waits until `app` answers `path` from its local tier (it keeps copies
/// once it listens, a moment after start).
/// How long a new layer's local tier may take to keep its first copy: it
/// keeps none until its subscription to the store's announcements is
/// established, which on a loaded machine (the whole suite on 2 cores, a
/// shared cluster) took over 3 s now and then. A bound on liveness, not a
/// measure of speed.
const LOCAL_READY: Duration = Duration::from_secs(10);

async fn answered_locally(app: &Router, path: &str) {
    let started = Instant::now();
    while !get(app, path).await.cache_status().contains("detail=local") {
        assert!(started.elapsed() < LOCAL_READY, "no local copy of {path}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

support::both_backends! { fixture;
    a_fresh_response_is_served_from_the_store => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let first = get(&app, "/fresh").await;
        assert_eq!(first.body, "/fresh #1");
        assert_eq!(first.cache_status(), "redis-layers; fwd=uri-miss; fwd-status=200; stored");
        fx.stored(1).await;
        let second = get(&app, "/fresh").await;
        assert_eq!(second.body, "/fresh #1");
        assert_eq!(second.status, StatusCode::OK);
        assert!(second.hit(), "{}", second.cache_status());
        assert!(second.cache_status().starts_with("redis-layers; hit; ttl="));
        assert_eq!(second.header("age"), Some("0"));
        assert_eq!(second.header("cache-control"), Some("public, max-age=60"));
        assert_eq!(fx.runs(), 1);
        // Another query is another resource.
        assert_eq!(get(&app, "/fresh?page=2").await.body, "/fresh?page=2 #2".replace("?page=2", ""));
        assert_eq!(fx.runs(), 2);
    }

    age_grows_and_an_expired_entry_is_not_served => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/short").await;
        fx.stored(1).await;
        let hit = get(&app, "/short").await;
        assert!(hit.hit());
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let after = get(&app, "/short").await;
        assert_eq!(after.body, "/short #2", "{}", after.cache_status());
        assert!(!after.hit());
    }

    age_counts_up_on_hits => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/fresh").await;
        fx.stored(1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let hit = get(&app, "/fresh").await;
        assert!(hit.hit());
        // At least the time slept; a loaded machine may add a second.
        let age: u64 = hit.header("age").unwrap().parse().unwrap();
        assert!((1..=2).contains(&age), "{age}");
        // ttl and Age add up to the 60 s lifetime (each rounded down).
        let ttl: u64 = hit.cache_status().rsplit("ttl=").next().unwrap().parse().unwrap();
        assert!(ttl + age == 59 || ttl + age == 60, "ttl {ttl}, age {age}");
    }

    what_a_shared_cache_must_not_store_is_not_stored => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        for path in ["/private", "/no-store", "/cookie", "/plain", "/vary-star", "/no-cache", "/odd-must-understand"] {
            let a = get(&app, path).await;
            let b = get(&app, path).await;
            assert_ne!(a.body, b.body, "{path} was served from the store");
            assert!(!a.cache_status().contains("stored"), "{path}: {}", a.cache_status());
            assert!(!b.hit());
        }
        assert_eq!(fx.entries(), 0);
        // The other user's cookie never reaches anyone.
        let c = get(&app, "/cookie").await;
        assert!(c.header("set-cookie").is_some());
    }

    a_request_with_authorization_is_not_shared => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        // max-age alone does not allow storing an authorised response.
        send(&app, "GET", "/short", &[("authorization", "Bearer a")]).await;
        let other = get(&app, "/short").await;
        assert_eq!(other.body, "/short #2");
        // public does.
        send(&app, "GET", "/fresh", &[("authorization", "Bearer a")]).await;
        fx.stored(2).await;
        assert!(get(&app, "/fresh").await.hit());
    }

    a_default_ttl_stores_what_says_nothing => |fx| {
        let layer = fx.builder().default_ttl(Duration::from_secs(30)).build().unwrap();
        let app = app(&fx, layer);
        get(&app, "/plain").await;
        fx.stored(1).await;
        assert_eq!(get(&app, "/plain").await.body, "/plain #1");
        // Still never what must not be stored.
        get(&app, "/private").await;
        assert_ne!(get(&app, "/private").await.body, "/private #2");
    }

    a_not_found_is_cached_but_not_an_error => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let a = get(&app, "/missing").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        fx.stored(1).await;
        let b = get(&app, "/missing").await;
        assert_eq!(b.status, StatusCode::NOT_FOUND);
        assert!(b.hit());
        assert_eq!(b.body, a.body);
    }

    rfc9111_3_any_final_status_with_explicit_freshness_is_stored => |fx| {
        let plain = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        for (path, status) in [("/error", 500), ("/odd", 599)] {
            let a = get(&plain, path).await;
            assert_eq!(a.status, status);
            fx.stored(1 + usize::from(status == 599)).await;
            let b = get(&plain, path).await;
            assert!(b.hit(), "{path}: {}", b.cache_status());
            assert_eq!((b.status, &b.body), (a.status, &a.body));
        }
        // The operator narrows it.
        let only_ok = fx.builder().only_statuses([StatusCode::OK]).build().unwrap();
        let narrowed = app(&fx, only_ok);
        for path in ["/missing", "/odd"] {
            get(&narrowed, &format!("{path}?narrowed")).await;
            let again = get(&narrowed, &format!("{path}?narrowed")).await;
            assert!(!again.hit(), "{path}: {}", again.cache_status());
        }
        get(&narrowed, "/fresh?narrowed").await;
        fx.stored(3).await;
        assert!(get(&narrowed, "/fresh?narrowed").await.hit());
        // (Stores are written after the answer: by now the 404 and the 599
        // would be there too.)
        assert_eq!(fx.entries(), 3, "/error, /odd and /fresh?narrowed");
        assert!(!get(&narrowed, "/odd?narrowed").await.hit());
    }

    rfc9111_4_2_3_a_response_ages_while_the_handler_runs => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/aged-slow").await;
        fx.stored(1).await;
        let hit = get(&app, "/aged-slow").await;
        assert!(hit.hit());
        let age: u64 = hit.header("age").unwrap().parse().unwrap();
        assert!((6..=8).contains(&age), "Age 5 plus the 1.1 s it took: {age}");
    }

    vary_keeps_variants_apart => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let fr = send(&app, "GET", "/vary", &[("accept-language", "fr")]).await;
        assert_eq!(fr.body, "/vary #1 Some(\"fr\")");
        fx.stored(1).await;
        let fr2 = send(&app, "GET", "/vary", &[("accept-language", "fr")]).await;
        assert!(fr2.hit());
        assert_eq!(fr2.body, fr.body);
        let de = send(&app, "GET", "/vary", &[("accept-language", "de")]).await;
        assert_eq!(de.body, "/vary #2 Some(\"de\")");
        assert!(de.cache_status().contains("fwd=vary-miss"), "{}", de.cache_status());
        let none = get(&app, "/vary").await;
        assert!(!none.body.contains("fr") && !none.body.contains("de"), "{}", none.body);
    }

    several_variants_of_a_url_are_stored_side_by_side => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let lang = |l: &'static str| [("accept-language", l)];
        let fr = send(&app, "GET", "/vary", &lang("fr")).await;
        fx.stored_variants(1).await;
        let de = send(&app, "GET", "/vary", &lang("de")).await;
        assert!(de.cache_status().contains("fwd=vary-miss"), "{}", de.cache_status());
        fx.stored_variants(2).await;
        let none = get(&app, "/vary").await;
        fx.stored_variants(3).await;
        assert_eq!(fx.runs(), 3);
        // Each answered from the store, in turn, none fetched again.
        for _ in 0..2 {
            for (asked, first) in [(Some("fr"), &fr), (Some("de"), &de), (None, &none)] {
                let again = match asked {
                    Some(l) => send(&app, "GET", "/vary", &[("accept-language", l)]).await,
                    None => get(&app, "/vary").await,
                };
                assert!(again.hit(), "{asked:?}: {}", again.cache_status());
                assert_eq!(again.body, first.body);
            }
        }
        assert_eq!(fx.runs(), 3);
        // One more instance (it has not seen the URL vary): the same answers.
        let other = crate::app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let again = send(&other, "GET", "/vary", &lang("de")).await;
        assert!(again.hit(), "{}", again.cache_status());
        assert_eq!(again.body, de.body);
        assert_eq!(fx.runs(), 3);
    }

    a_flood_of_made_up_variants_cannot_push_out_the_stored_ones => |fx| {
        let layer = || fx.builder().max_variants(3).build().unwrap();
        let app = app(&fx, layer());
        let fr = send(&app, "GET", "/vary", &[("accept-language", "fr")]).await;
        fx.stored_variants(1).await;
        let de = send(&app, "GET", "/vary", &[("accept-language", "de")]).await;
        fx.stored_variants(2).await;
        // Made-up values, from two instances: one more finds a place.
        let other = crate::app(&fx, layer());
        for n in 0..40 {
            let value = format!("x-{n}");
            let app = if n % 2 == 0 { &app } else { &other };
            let res = send(app, "GET", "/vary", &[("accept-language", &value)]).await;
            assert!(!res.hit(), "{n}");
        }
        // Each store is in the background: let them land.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fx.variants(), 3, "the bound holds");
        for (l, first) in [("fr", &fr), ("de", &de)] {
            for app in [&app, &other] {
                let again = send(app, "GET", "/vary", &[("accept-language", l)]).await;
                assert!(again.hit(), "{l}: {}", again.cache_status());
                assert_eq!(again.body, first.body);
            }
        }
        // A made-up value past the bound was answered, not stored.
        let late = send(&app, "GET", "/vary", &[("accept-language", "x-39")]).await;
        assert!(!late.hit() || fx.variants() == 3, "{}", late.cache_status());
    }

    invalidating_a_url_removes_every_variant_everywhere => |fx| {
        let layer = || fx.builder().local_tier(100).build().unwrap();
        let (a, b) = (app(&fx, layer()), app(&fx, layer()));
        for l in ["fr", "de"] {
            send(&a, "GET", "/vary", &[("accept-language", l)]).await;
        }
        fx.stored_variants(2).await;
        // B keeps both variants in its local tier.
        for l in ["fr", "de"] {
            let started = Instant::now();
            while !send(&b, "GET", "/vary", &[("accept-language", l)])
                .await
                .cache_status()
                .contains("detail=local")
            {
                assert!(started.elapsed() < LOCAL_READY, "no local copy of {l}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let runs = fx.runs();
        send(&a, "POST", "/vary", &[]).await;
        assert_eq!(fx.variants(), 0);
        // A variant's fill is stored from a second after an invalidation
        // of its URL (clocks may differ that much).
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        // B's local copies went with the store's: fetched anew, and A
        // then reads what B stored.
        for l in ["fr", "de"] {
            let fresh = send(&b, "GET", "/vary", &[("accept-language", l)]).await;
            assert!(!fresh.hit(), "{l}: {}", fresh.cache_status());
            fx.stored_variants(if l == "fr" { 1 } else { 2 }).await;
            let read = send(&a, "GET", "/vary", &[("accept-language", l)]).await;
            assert!(read.hit(), "{l}: {}", read.cache_status());
            assert_eq!(read.body, fresh.body);
        }
        assert_eq!(fx.runs(), runs + 3, "the POST and two fetches");
    }

    a_variant_its_url_no_longer_records_is_never_served_after_an_invalidation => |fx| {
        // B has seen the URL vary: it looks the variant up at once.
        let (a, b) = (app(&fx, CacheLayer::new(fx.tb.backend.clone())), crate::app(&fx, CacheLayer::new(fx.tb.backend.clone())));
        let fr = [("accept-language", "fr")];
        let first = send(&a, "GET", "/vary", &fr).await;
        fx.stored_variants(1).await;
        assert!(send(&b, "GET", "/vary", &fr).await.hit());
        // The URL's record of its variants is gone (evicted under memory
        // pressure, say): the invalidation cannot name the variant.
        for key in fx.tb.keys("cache:*:vs") {
            assert!(fx.tb.backend.delete(&key).await.unwrap());
        }
        send(&a, "POST", "/vary", &[]).await;
        assert_eq!(fx.variants(), 1, "the variant itself is still there");
        let after = send(&b, "GET", "/vary", &fr).await;
        assert!(!after.hit(), "{}", after.cache_status());
        assert_ne!(after.body, first.body);
    }

    writes_to_made_up_urls_leave_no_key_behind => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        for n in 0..50 {
            let res = send(&app, "POST", &format!("/made-up/{n}"), &[]).await;
            assert_eq!(res.status, StatusCode::CREATED);
        }
        assert_eq!(fx.tb.keys("cache:*"), Vec::<String>::new());
        // A varying URL's invalidation stamps it (its variants' fills in
        // flight are refused), for a while.
        send(&app, "GET", "/vary", &[("accept-language", "fr")]).await;
        fx.stored_variants(1).await;
        send(&app, "POST", "/vary", &[]).await;
        let left = fx.tb.keys("cache:*");
        assert!(left.len() == 1 && left[0].ends_with("}:i"), "{left:?}");
    }

    a_url_that_stops_varying_is_answered_its_one_response => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let fr = [("accept-language", "fr")];
        send(&app, "GET", "/sometimes-vary", &fr).await;
        fx.stored_variants(1).await;
        assert!(send(&app, "GET", "/sometimes-vary", &fr).await.hit());
        // Another variant's fetch answers without Vary: the URL's one
        // response replaces its variants.
        let one = send(&app, "GET", "/sometimes-vary", &[("accept-language", "de"), ("x-no-vary", "1")]).await;
        assert!(one.cache_status().contains("fwd=vary-miss"), "{}", one.cache_status());
        let started = Instant::now();
        while fx.variants() > 0 {
            assert!(started.elapsed() < Duration::from_secs(3), "variants left");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let again = send(&app, "GET", "/sometimes-vary", &fr).await;
        assert!(again.hit(), "{}", again.cache_status());
        assert_eq!(again.body, one.body);
        assert_eq!(fx.runs(), 2);
    }

    variants_are_answered_from_the_local_tier => |fx| {
        for copies in [true, false] {
            let app = app(&fx, fx.builder().local_tier(100).thread_copies(copies).build().unwrap());
            let mut bodies = Vec::new();
            for l in ["fr", "de", "en"] {
                bodies.push(send(&app, "GET", "/vary", &[("accept-language", l)]).await.body);
            }
            fx.stored_variants(3).await;
            for (l, body) in ["fr", "de", "en"].into_iter().zip(&bodies) {
                let started = Instant::now();
                loop {
                    let res = send(&app, "GET", "/vary", &[("accept-language", l)]).await;
                    assert_eq!(&res.body, body, "{l}");
                    if res.cache_status().contains("detail=local") {
                        break;
                    }
                    assert!(started.elapsed() < LOCAL_READY, "no local copy of {l}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            // In turn, each from its own copy.
            for _ in 0..3 {
                for (l, body) in ["fr", "de", "en"].into_iter().zip(&bodies) {
                    let res = send(&app, "GET", "/vary", &[("accept-language", l)]).await;
                    assert!(res.cache_status().contains("detail=local"), "{copies} {l}: {}", res.cache_status());
                    assert_eq!(&res.body, body);
                }
            }
            assert!(fx.builder().build().unwrap().purger().purge_url("/vary", "shop.example").await.unwrap());
            assert_eq!(fx.variants(), 0, "a purge by URL removes every variant");
            // A variant's fill is stored from a second after an
            // invalidation of its URL (clocks may differ that much).
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
    }

    conditional_requests_get_304s => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/etag").await;
        fx.stored(1).await;
        let r = send(&app, "GET", "/etag", &[("if-none-match", "\"v0\", W/\"v1\"")]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert_eq!(r.body, "");
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert_eq!(r.header("cache-control"), Some("max-age=60"));
        assert!(r.header("content-type").is_none());
        assert!(r.hit());
        let r = send(&app, "GET", "/etag", &[("if-none-match", "\"v2\"")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "/etag #1");
        let r = send(&app, "GET", "/etag", &[("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        let r = send(&app, "GET", "/etag", &[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")]).await;
        assert_eq!(r.status, StatusCode::OK);
        // If-None-Match wins over If-Modified-Since.
        let r = send(&app, "GET", "/etag", &[("if-none-match", "\"v2\""), ("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")]).await;
        assert_eq!(r.status, StatusCode::OK);
        // Malformed validators are ignored, never an error.
        let r = send(&app, "GET", "/etag", &[("if-none-match", "not a tag"), ("if-modified-since", "yesterday")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(fx.runs(), 1);
    }

    head_is_answered_from_the_get_entry => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/fresh").await;
        fx.stored(1).await;
        let r = send(&app, "HEAD", "/fresh", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "");
        assert!(r.hit());
        assert_eq!(fx.runs(), 1);
    }

    every_hit_carries_the_stored_length_heads_included => |fx| {
        // From the store, then (with a local tier) from this thread's copy.
        for local in [false, true] {
            let mut builder = fx.builder();
            if local {
                builder = builder.local_tier(10);
            }
            let app = app(&fx, builder.build().unwrap());
            let path = if local { "/big" } else { "/fresh" };
            let first = get(&app, path).await;
            let length = first.body.len().to_string();
            let started = Instant::now();
            loop {
                let r = get(&app, path).await;
                assert_eq!(r.body, first.body);
                if r.hit() {
                    assert_eq!(r.header("content-length"), Some(length.as_str()), "{local}");
                    let age: u64 = r.header("age").unwrap().parse().unwrap();
                    assert!(age < 5, "{age}");
                    if !local || r.cache_status().contains("detail=local") {
                        break;
                    }
                }
                assert!(started.elapsed() < LOCAL_READY, "{}", r.cache_status());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A HEAD gets the length its GET has, and no body.
            let r = send(&app, "HEAD", path, &[]).await;
            assert!(r.hit(), "{}", r.cache_status());
            assert_eq!(r.body, "");
            assert_eq!(r.header("content-length"), Some(length.as_str()), "{local}");
        }
    }

    a_local_copy_answers_conditionals_heads_and_narrowed_requests => |fx| {
        let app = app(&fx, fx.builder().local_tier(10).request_directives(RequestDirectives::Honour).build().unwrap());
        get(&app, "/etag").await;
        fx.stored(1).await;
        answered_locally(&app, "/etag").await;
        let r = send(&app, "GET", "/etag", &[("if-none-match", "\"v1\"")]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert!(r.cache_status().contains("detail=local"), "{}", r.cache_status());
        assert_eq!(r.header("etag"), Some("\"v1\""));
        let r = send(&app, "GET", "/etag", &[("if-none-match", "\"v0\"")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "/etag #1");
        let r = send(&app, "HEAD", "/etag", &[]).await;
        assert!(r.cache_status().contains("detail=local"), "{}", r.cache_status());
        assert_eq!(r.body, "");
        assert_eq!(r.header("content-length"), Some("8"));
        // A request that allows no stored answer reaches the handler.
        let r = send(&app, "GET", "/etag", &[("cache-control", "no-cache")]).await;
        assert!(!r.cache_status().contains("detail=local"), "{}", r.cache_status());
        // Its write done (a request meanwhile would share its fetch).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = send(&app, "GET", "/etag", &[("cache-control", "min-fresh=3600")]).await;
        assert!(!r.hit(), "{}", r.cache_status());
        assert_eq!(fx.runs(), 3);
    }

    an_entry_stored_anew_is_read_anew => |fx| {
        // A reads the entry twice (the second time from bytes it decoded
        // already); B replaces it in the store; A's next read is B's.
        let a = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let b_layer = CacheLayer::new(fx.tb.backend.clone());
        let purger = b_layer.purger();
        let b = app(&fx, b_layer);
        get(&a, "/fresh").await;
        fx.stored(1).await;
        for _ in 0..3 {
            let r = get(&a, "/fresh").await;
            assert!(r.hit() && r.body == "/fresh #1", "{} {}", r.body, r.cache_status());
        }
        assert!(purger.purge_url("/fresh", "shop.example").await.unwrap());
        assert_eq!(get(&b, "/fresh").await.body, "/fresh #2");
        fx.stored(1).await;
        for _ in 0..3 {
            let r = get(&a, "/fresh").await;
            assert!(r.hit() && r.body == "/fresh #2", "{} {}", r.body, r.cache_status());
        }
    }

    each_layer_names_itself_on_entries_it_shares => |fx| {
        // Same store, same URL, same stored bytes: each answer still
        // carries its own layer's name.
        let a = app(&fx, fx.builder().name("edge").build().unwrap());
        let b = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&a, "/fresh").await;
        fx.stored(1).await;
        for _ in 0..3 {
            let r = get(&a, "/fresh").await;
            assert!(r.cache_status().starts_with("edge; hit"), "{}", r.cache_status());
            let r = get(&b, "/fresh").await;
            assert!(r.cache_status().starts_with("redis-layers; hit"), "{}", r.cache_status());
        }
    }

    a_local_copy_that_expired_is_replaced_on_every_thread => |fx| {
        // The tier keeps the entry stored after expiry (or after a reload
        // with no-cache): every thread answers from it, not from its own
        // copy of the old one, and not from the store.
        let app = app(&fx, fx.builder().local_tier(10).request_directives(RequestDirectives::Honour).build().unwrap());
        let until_on_all_tasks = |path: &'static str, want: String| {
            let app = app.clone();
            async move {
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    let (app, want) = (app.clone(), want.clone());
                    tasks.push(tokio::spawn(async move {
                        let started = Instant::now();
                        loop {
                            let r = get(&app, path).await;
                            if r.body == want && r.cache_status().contains("detail=local") {
                                return;
                            }
                            assert!(started.elapsed() < LOCAL_READY, "{} {}", r.body, r.cache_status());
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
        };
        let first = get(&app, "/three").await.body;
        fx.stored(1).await;
        // Listening (a moment after start): copies are kept from now on.
        answered_locally(&app, "/three").await;
        until_on_all_tasks("/three", first.clone()).await;
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        let r = get(&app, "/three").await;
        assert_ne!(r.body, first, "{}", r.cache_status());
        until_on_all_tasks("/three", r.body).await;
        // A reload with no-cache stores the handler's new answer.
        let first = get(&app, "/fresh").await.body;
        fx.stored(2).await;
        until_on_all_tasks("/fresh", first.clone()).await;
        let r = send(&app, "GET", "/fresh", &[("cache-control", "no-cache")]).await;
        assert_ne!(r.body, first);
        until_on_all_tasks("/fresh", r.body).await;
    }

    every_threads_copy_hears_a_purge => |fx| {
        // Many tasks on both worker threads answer from their thread's
        // copies of A's local tier; a purge through B reaches them all.
        // Every thread answers from its copy until A's tier drops the
        // entry, so the first new answer means it has: from then on no
        // task on either thread may see the old one (a copy checked while
        // the tier was changing is not trusted again).
        let (a, b, purger) = two_local_tiers(&fx).await;
        answered_locally(&a, "/tagged").await;
        let purged = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let new_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (a, purged, new_seen) = (a.clone(), purged.clone(), new_seen.clone());
            tasks.push(tokio::spawn(async move {
                let (mut local_hits, mut seen_new) = (0, false);
                let started = Instant::now();
                loop {
                    let done = purged.load(Ordering::SeqCst);
                    let heard = new_seen.load(Ordering::SeqCst);
                    let r = get(&a, "/tagged").await;
                    if r.cache_status().contains("detail=local") {
                        local_hits += 1;
                    }
                    if r.body == "/tagged #1" {
                        assert!(!heard, "the old answer came back: {}", r.cache_status());
                    } else {
                        seen_new = true;
                        new_seen.store(true, Ordering::SeqCst);
                    }
                    if done && seen_new {
                        return local_hits;
                    }
                    assert!(started.elapsed() < Duration::from_secs(5), "still the old answer");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(purger.purge_tag("products").await.unwrap(), 1);
        purged.store(true, Ordering::SeqCst);
        let mut local_hits = 0;
        for t in tasks {
            local_hits += t.await.unwrap();
        }
        assert!(local_hits > 16, "the tasks answered from local copies: {local_hits}");
        drop(b);
    }

    clients_cannot_bypass_the_cache_by_default => |fx| {
        // A hard reload (no-cache), max-age=0, min-fresh: the stored
        // response still answers, and the handler ran once.
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/fresh").await;
        fx.stored(1).await;
        for cc in ["no-cache", "max-age=0", "min-fresh=3600", "no-cache, max-age=0"] {
            let r = send(&app, "GET", "/fresh", &[("cache-control", cc)]).await;
            assert!(r.hit(), "{cc}: {}", r.cache_status());
            assert_eq!(r.body, "/fresh #1");
        }
        // only-if-cached and no-store still count.
        let r = send(&app, "GET", "/never-seen", &[("cache-control", "only-if-cached")]).await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(fx.runs(), 1);
    }

    request_directives_narrow_what_is_served => |fx| {
        let app = app(&fx, fx.builder().request_directives(RequestDirectives::Honour).build().unwrap());
        get(&app, "/fresh").await;
        fx.stored(1).await;
        let r = send(&app, "GET", "/fresh", &[("cache-control", "no-cache")]).await;
        assert_eq!(r.body, "/fresh #2");
        assert!(r.cache_status().contains("fwd=request"), "{}", r.cache_status());
        // That answer replaced the entry.
        fx.stored(1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = send(&app, "GET", "/fresh", &[("cache-control", "max-age=0")]).await;
        assert!(r.cache_status().contains("fwd=request"), "{}", r.cache_status());
        // Its write done (a request meanwhile would share its fetch).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = send(&app, "GET", "/fresh", &[("cache-control", "min-fresh=3600")]).await;
        assert!(!r.hit());
        let r = send(&app, "GET", "/fresh", &[("cache-control", "max-age=3600, min-fresh=1")]).await;
        assert!(r.hit(), "{}", r.cache_status());
        // only-if-cached: what is stored, else 504.
        let r = send(&app, "GET", "/fresh", &[("cache-control", "only-if-cached")]).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = send(&app, "GET", "/never-seen", &[("cache-control", "only-if-cached")]).await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        // no-store: served, nothing stored.
        let before = fx.entries();
        send(&app, "GET", "/etag", &[("cache-control", "no-store")]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fx.entries(), before);
        // Malformed directives are read safely.
        let r = send(&app, "GET", "/fresh", &[("cache-control", "max-age=soon, ,,=")]).await;
        assert_eq!(r.status, StatusCode::OK);
    }

    a_write_invalidates_its_uri_and_location => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/fresh").await;
        get(&app, "/fresh?created").await;
        fx.stored(2).await;
        assert!(get(&app, "/fresh").await.hit());
        // A failed write changes nothing.
        assert_eq!(send(&app, "PUT", "/fresh", &[]).await.status, StatusCode::BAD_REQUEST);
        assert!(get(&app, "/fresh").await.hit());
        let w = send(&app, "POST", "/fresh", &[]).await;
        assert_eq!(w.status, StatusCode::CREATED);
        assert_eq!(fx.entries(), 0, "both the URI and Location are gone");
        assert!(!get(&app, "/fresh").await.hit());
    }

    rfc9111_4_4_a_method_of_unknown_safety_invalidates_and_a_safe_one_does_not => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/fresh").await;
        fx.stored(1).await;
        // Safe methods answered 2xx change nothing.
        for method in ["OPTIONS", "TRACE"] {
            assert_eq!(send(&app, method, "/fresh", &[]).await.status, StatusCode::CREATED);
            assert!(get(&app, "/fresh").await.hit(), "{method} invalidated");
        }
        // A WebDAV method, and one this cache has never heard of: unsafe
        // until known otherwise (RFC 9111 §4.4).
        for method in ["PROPPATCH", "FROBNICATE"] {
            get(&app, "/fresh").await;
            fx.stored(1).await;
            assert!(get(&app, "/fresh").await.hit());
            assert_eq!(send(&app, method, "/fresh", &[]).await.status, StatusCode::CREATED);
            assert_eq!(fx.entries(), 0, "{method} left the entry");
            assert!(!get(&app, "/fresh").await.hit(), "{method}");
        }
    }

    a_large_body_streams_through_uncached => |fx| {
        let layer = fx.builder().max_body(1_000).build().unwrap();
        let app = app(&fx, layer);
        let a = get(&app, "/big").await;
        assert_eq!(a.body.len(), 5_000);
        let b = get(&app, "/big").await;
        assert_eq!(b.body.len(), 5_000);
        assert!(!b.hit());
        assert_eq!(fx.runs(), 2);
        assert_eq!(fx.entries(), 0);
    }

    hop_by_hop_headers_are_not_stored => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/hop").await;
        fx.stored(1).await;
        let r = get(&app, "/hop").await;
        assert!(r.hit());
        assert_eq!(r.header("x-kept"), Some("yes"));
        assert!(r.header("connection").is_none() && r.header("keep-alive").is_none());
    }

    keys_hide_the_url => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/fresh?token=hunter2").await;
        fx.stored(1).await;
        let keys = fx.tb.keys("cache:*:e");
        assert_eq!(keys.len(), 1);
        assert!(!keys[0].contains("hunter2") && !keys[0].contains("fresh"), "{keys:?}");
    }

    hosts_do_not_share_entries => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/fresh").await;
        fx.stored(1).await;
        let mut req = Request::get("/fresh").header("host", "other.example").body(Body::empty()).unwrap();
        req.headers_mut().insert("x", "y".parse().unwrap());
        let res = app.clone().oneshot(req).await.unwrap();
        assert!(!res.headers()["cache-status"].to_str().unwrap().contains("hit"));
    }

    query_order_matters_unless_sorted => |fx| {
        let plain = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&plain, "/fresh?b=2&a=1").await;
        fx.stored(1).await;
        assert!(get(&plain, "/fresh?b=2&a=1").await.hit());
        assert!(!get(&plain, "/fresh?a=1&b=2").await.hit());
        let sorted = app(&fx, fx.builder().sort_query(true).build().unwrap());
        get(&sorted, "/fresh?d=4&c=3").await;
        fx.stored(3).await;
        assert!(get(&sorted, "/fresh?c=3&d=4").await.hit());
        // A query, even an empty one, is another resource than none.
        assert!(!get(&sorted, "/fresh").await.hit());
        fx.stored(4).await;
        assert!(!get(&sorted, "/fresh?").await.hit());
    }

    a_stale_entry_is_revalidated_and_a_304_refreshes_it => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        assert_eq!(get(&app, "/rev").await.body, "/rev #1");
        fx.stored(1).await;
        assert!(get(&app, "/rev").await.hit());
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = get(&app, "/rev").await;
        assert_eq!(r.status, StatusCode::OK, "the client asked nothing conditional");
        assert_eq!(r.body, "/rev #1", "the stored body, validated");
        assert_eq!(r.cache_status(), "redis-layers; fwd=stale; fwd-status=304; stored");
        assert_eq!(fx.runs(), 2);
        // Fresh again after the 304.
        let started = Instant::now();
        loop {
            let r = get(&app, "/rev").await;
            if r.hit() {
                assert_eq!(r.body, "/rev #1");
                break;
            }
            assert!(started.elapsed() < Duration::from_millis(900), "{}", r.cache_status());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A client's own validator still gets its 304 from the store.
        let r = send(&app, "GET", "/rev", &[("if-none-match", "\"r1\"")]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    }

    rfc9111_5_2_1_4_a_no_cache_request_revalidates_with_the_stored_validators => |fx| {
        let app = app(&fx, fx.builder().request_directives(RequestDirectives::Honour).build().unwrap());
        get(&app, "/rev").await;
        fx.stored(1).await;
        // Fresh, but the client asks for validation: the handler gets the
        // stored ETag and answers 304; the client gets the stored body.
        let r = send(&app, "GET", "/rev", &[("cache-control", "no-cache")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "/rev #1", "the stored body, validated");
        assert_eq!(r.cache_status(), "redis-layers; fwd=request; fwd-status=304; stored");
        assert_eq!(fx.runs(), 2, "the handler was asked");
        // A client's own validators go to the handler as they are (not
        // this cache's): its 304 is for the client.
        let r = send(&app, "GET", "/rev", &[("cache-control", "no-cache"), ("if-none-match", "\"r1\"")]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert_eq!(fx.runs(), 3);
    }

    a_no_cache_response_is_stored_and_revalidated_before_each_use => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/no-cache-etag").await;
        fx.stored(1).await;
        for runs in 2..4 {
            let r = get(&app, "/no-cache-etag").await;
            assert_eq!(r.body, "/no-cache-etag #1");
            assert!(r.cache_status().contains("fwd-status=304"), "{}", r.cache_status());
            assert_eq!(fx.runs(), runs, "asked every time");
        }
    }

    stale_while_revalidate_serves_stale_and_refreshes_once => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/swr").await;
        fx.stored(1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move { get(&app, "/swr").await }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            // Stale at once, or (once the refresh is in) the new one.
            if r.body == "/swr #1" {
                assert!(r.cache_status().contains("detail=stale-while-revalidate"), "{}", r.cache_status());
                assert!(r.header("age").unwrap().parse::<u64>().unwrap() >= 1);
            } else {
                assert_eq!(r.body, "/swr #2");
                assert!(r.hit(), "{}", r.cache_status());
            }
        }
        // One refresh replaced it.
        let started = Instant::now();
        loop {
            let r = get(&app, "/swr").await;
            if r.body == "/swr #2" {
                assert!(r.hit(), "{}", r.cache_status());
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(2), "{} after {} runs", r.cache_status(), fx.runs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(fx.runs(), 2, "exactly one background refresh");
    }

    a_background_refresh_uses_only_the_caches_validators => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/swr-lazy").await;
        fx.stored(1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        // The client's own validator must not reach the refresh: the entry
        // has none, so the refresh is a plain request and replaces it.
        let r = send(&app, "GET", "/swr-lazy", &[("if-none-match", "\"whatever\"")]).await;
        assert!(r.cache_status().contains("stale-while-revalidate"), "{}", r.cache_status());
        let started = Instant::now();
        loop {
            let r = get(&app, "/swr-lazy").await;
            if r.body == "/swr-lazy #2" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(2), "{}: {}", r.body, r.cache_status());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    a_304_never_stores_a_cookie_or_leaks_tags => |fx| {
        let app = app(&fx, fx.builder().strip_set_cookie(true).build().unwrap());
        get(&app, "/rev-cookie").await;
        fx.stored(1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = get(&app, "/rev-cookie").await;
        assert!(r.cache_status().contains("fwd-status=304"), "{}", r.cache_status());
        // The cookie reaches this client (a login must not be lost), the
        // tag does not.
        assert_eq!(r.header("set-cookie"), Some("user=alice"));
        assert!(r.header("cache-tag").is_none());
        let started = Instant::now();
        loop {
            let r = get(&app, "/rev-cookie").await;
            if r.hit() {
                assert!(r.header("set-cookie").is_none(), "a stored cookie was served");
                assert!(r.header("cache-tag").is_none());
                break;
            }
            assert!(started.elapsed() < Duration::from_millis(900), "{}", r.cache_status());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The 304's tag was taken for the entry, not shown.
        let purger = redis_layers::cache::CacheLayer::new(fx.tb.backend.clone()).purger();
        assert_eq!(purger.purge_tag("secret-tag").await.unwrap(), 1);
    }

    a_304_that_sets_a_cookie_reaches_its_client_and_refreshes_nothing => |fx| {
        // Without strip_set_cookie a response with a cookie is not stored,
        // and neither is a 304's refresh that carries one.
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/rev-cookie").await;
        fx.stored(1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        for _ in 0..2 {
            let r = get(&app, "/rev-cookie").await;
            assert!(r.cache_status().contains("fwd-status=304"), "{}", r.cache_status());
            assert!(!r.cache_status().contains("stored"), "{}", r.cache_status());
            assert_eq!(r.header("set-cookie"), Some("user=alice"));
        }
        assert_eq!(fx.runs(), 3, "revalidated each time");
    }

    made_up_hosts_are_never_stored_when_hosts_are_named => |fx| {
        let app = app(&fx, fx.builder().hosts(["shop.example", "www.shop.example:8080"]).build().unwrap());
        let with_host = |host: String| {
            let app = app.clone();
            async move {
                let req = Request::builder().uri("/tagged").header("host", host).body(Body::empty()).unwrap();
                let res = app.oneshot(req).await.unwrap();
                let status = res.headers().get("cache-status").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                let tag = res.headers().contains_key("cache-tag");
                let code = res.status();
                // Read through: an entry is written after its body.
                res.into_body().collect().await.unwrap();
                (code, status, tag)
            }
        };
        for i in 0..100 {
            let (status, cache_status, tag) = with_host(format!("x{i}.example")).await;
            assert_eq!(status, StatusCode::OK);
            assert!(cache_status.contains("fwd=bypass; detail=host"), "{cache_status}");
            assert!(!tag, "tags never reach the client");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fx.entries(), 0, "nothing stored for made-up hosts");
        // The named hosts are cached, case aside.
        with_host("SHOP.example".to_owned()).await;
        with_host("www.shop.example:8080".to_owned()).await;
        fx.stored(2).await;
        assert!(with_host("shop.example".to_owned()).await.1.contains("hit"));
        // A write to another host invalidates nothing of ours.
        assert_eq!(fx.entries(), 2);
        // Bad settings are refused.
        for bad in [vec![], vec!["bad host"], vec!["user@host"], vec!["host/path"]] {
            assert!(fx.builder().hosts(bad.clone()).build().is_err(), "{bad:?}");
        }
    }

    a_304_is_only_for_a_stored_2xx => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/missing").await;
        fx.stored(1).await;
        let r = send(&app, "GET", "/missing", &[("if-none-match", "*")]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.hit());
    }

    stale_if_error_serves_stale_when_the_handler_fails => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        assert_eq!(get(&app, "/sie").await.body, "/sie #1");
        fx.stored(1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = get(&app, "/sie").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "/sie #1");
        assert!(r.cache_status().contains("fwd-status=503; detail=stale-if-error"), "{}", r.cache_status());
    }

    without_stale_if_error_a_failure_reaches_the_client => |fx| {
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&app, "/no-sie").await;
        fx.stored(1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = get(&app, "/no-sie").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        // The layer's own window applies to responses that name none.
        let fx2 = fixture(fx.tb.kind);
        let lenient = crate::app(&fx2, fx2.builder().stale_if_error(Duration::from_secs(30)).build().unwrap());
        get(&lenient, "/no-sie").await;
        fx2.stored(1).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = get(&lenient, "/no-sie").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.cache_status());
        assert_eq!(r.body, "/no-sie #1");
    }

    concurrent_misses_run_the_handler_once_per_instance => |fx| {
        let a = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let b = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { get(&app, "/slow").await }));
        }
        let mut collapsed = 0;
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.body.starts_with("/slow #"), "{}", r.body);
            if r.cache_status().contains("collapsed") {
                collapsed += 1;
            }
        }
        assert_eq!(fx.runs(), 1, "50 misses on 2 instances, one fill lease");
        assert_eq!(collapsed, 49);
    }

    concurrent_requests_on_a_stale_entry_run_the_handler_once => |fx| {
        // Stale, no stale-while-revalidate window left: 50 requests on two
        // instances run the handler once (a revalidation here), not 50 times.
        for path in ["/slow-short", "/slow-stale"] {
            let a = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
            let b = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
            get(&a, path).await;
            fx.stored(1).await;
            let before = fx.runs();
            tokio::time::sleep(Duration::from_millis(2_100)).await;
            let mut tasks = Vec::new();
            for i in 0..50 {
                let app = if i % 2 == 0 { a.clone() } else { b.clone() };
                tasks.push(tokio::spawn(async move { get(&app, path).await }));
            }
            for t in tasks {
                let r = t.await.unwrap();
                assert_eq!(r.status, StatusCode::OK, "{path}");
            }
            assert_eq!(fx.runs() - before, 1, "{path}: 50 stale requests on 2 instances");
            let purger = CacheLayer::new(fx.tb.backend.clone()).purger();
            purger.purge_all().await.unwrap();
        }
    }

    a_stale_while_revalidate_refresh_runs_once_across_instances => |fx| {
        let a = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let b = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&a, "/swr").await;
        fx.stored(1).await;
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { get(&app, "/swr").await }));
        }
        for t in tasks {
            // Served stale, or fresh once the refresh landed: a hit.
            let r = t.await.unwrap();
            assert!(r.hit(), "{}", r.cache_status());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fx.runs(), 2, "one refresh for both instances");
    }

    concurrent_no_cache_requests_share_one_fetch_when_honoured => |fx| {
        let a = app(&fx, fx.builder().request_directives(RequestDirectives::Honour).build().unwrap());
        let b = app(&fx, fx.builder().request_directives(RequestDirectives::Honour).build().unwrap());
        get(&a, "/slow").await;
        fx.stored(1).await;
        for cc in ["no-cache", "max-age=0"] {
            // An entry a second old: refused by either directive.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            let before = fx.runs();
            let mut tasks = Vec::new();
            for i in 0..50 {
                let app = if i % 2 == 0 { a.clone() } else { b.clone() };
                tasks.push(tokio::spawn(async move {
                    send(&app, "GET", "/slow", &[("cache-control", cc)]).await
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap().status, StatusCode::OK);
            }
            // One coalescing window: the first request fetches, the others
            // take what it stored after they arrived.
            assert_eq!(fx.runs() - before, 1, "{cc}: 50 requests, one fetch");
            // Later, the next one fetches again: the request is honoured.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            let r = send(&a, "GET", "/slow", &[("cache-control", cc)]).await;
            assert!(!r.hit(), "{cc}: {}", r.cache_status());
        }
    }

    a_fill_that_is_not_stored_frees_the_waiters_at_once => |fx| {
        // Private answers are never shared: instances waiting on another's
        // fill go to the handler as soon as its lease ends.
        let a = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let b = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { get(&app, "/private").await }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert!(r.body.starts_with("/private #"));
            assert!(!r.hit());
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(fx.entries(), 0);
    }

    tags_purge_what_they_name => |fx| {
        let layer = CacheLayer::new(fx.tb.backend.clone());
        let purger = layer.purger();
        let app = app(&fx, layer);
        let r = get(&app, "/tagged").await;
        assert!(r.header("cache-tag").is_none(), "tags never reach the client");
        get(&app, "/other-tagged").await;
        get(&app, "/fresh").await;
        fx.stored(3).await;
        assert!(get(&app, "/tagged").await.hit());
        assert_eq!(purger.purge_tag("product-7").await.unwrap(), 1);
        assert!(!get(&app, "/tagged").await.hit(), "purged");
        assert!(get(&app, "/other-tagged").await.hit(), "another tag stays");
        assert!(get(&app, "/fresh").await.hit(), "untagged stays");
        assert_eq!(purger.purge_tag("nothing").await.unwrap(), 0);
        // A reading handler (a miss) gets the purger too.
        assert_eq!(get(&app, "/sees-purger").await.body, "purger");
        // From a handler, through the request's extensions, on another
        // instance sharing the store.
        let other = crate::app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let r = send(&other, "POST", "/admin/purge/product-8", &[]).await;
        assert_eq!(r.body, "1");
        assert!(!get(&app, "/other-tagged").await.hit());
        // By URL.
        assert!(purger.purge_url("/fresh", "shop.example").await.unwrap());
        assert!(!get(&app, "/fresh").await.hit());
        assert!(!purger.purge_url("/fresh", "other.example").await.unwrap());
    }

    purging_everything_hides_every_entry_on_every_instance => |fx| {
        let layer = CacheLayer::new(fx.tb.backend.clone());
        let purger = layer.purger();
        let app = app(&fx, layer);
        // Another instance that asks the store for the generation often,
        // and one with a local tier that never asks but hears purges.
        let other = crate::app(
            &fx,
            fx.builder().generation_refresh(Duration::from_millis(100)).build().unwrap(),
        );
        let local = crate::app(
            &fx,
            fx.builder()
                .generation_refresh(Duration::from_secs(3_600))
                .local_tier(100)
                .build()
                .unwrap(),
        );
        for path in ["/tagged", "/fresh"] {
            get(&app, path).await;
        }
        fx.stored(2).await;
        for (name, app) in [("this", &app), ("other", &other), ("local", &local)] {
            for path in ["/tagged", "/fresh"] {
                assert!(get(app, path).await.hit(), "{name} {path}");
            }
        }
        let before = get(&app, "/tagged").await.body;
        let runs = fx.runs();
        assert_eq!(purger.purge_all().await.unwrap(), 1);
        // At once here, the entries stored again under the new generation.
        let r = get(&app, "/fresh").await;
        assert!(r.cache_status().contains("fwd=uri-miss"), "{}", r.cache_status());
        assert_eq!(fx.runs(), runs + 1);
        fx.stored(3).await;
        assert!(get(&app, "/fresh").await.hit());
        // Within a bounded time on the others, with nothing listed: they
        // stop answering with what was stored before.
        for (name, app) in [("other", &other), ("local", &local)] {
            let started = Instant::now();
            loop {
                let r = get(app, "/tagged").await;
                if r.body != before {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(3), "{name} still answers {before}: {}", r.cache_status());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(purger.purge_all().await.unwrap(), 2, "generations count up");
        assert!(!get(&app, "/fresh").await.hit());
    }

    over_a_real_server_responses_are_stored => |fx| {
        // A server stops reading a body of known length at its last byte:
        // the copy must be stored then (an in-process client polls on to
        // the end and would not show it).
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let fetch = || async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /fresh HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.unwrap();
            reply.to_ascii_lowercase()
        };
        assert!(fetch().await.contains("fwd=uri-miss"));
        fx.stored(1).await;
        let second = fetch().await;
        assert!(second.contains("cache-status: redis-layers; hit"), "{second}");
        assert!(second.ends_with("/fresh #1"), "{second}");
        server.abort();
    }

    the_local_tier_answers_without_the_store_and_hears_purges => |fx| {
        let (a, b, purger) = two_local_tiers(&fx).await;
        // Once listening (a moment after start), each tier keeps the copy
        // it wrote or read from the store, and answers from it.
        for app in [&a, &b] {
            answered_locally(app, "/tagged").await;
        }
        assert_eq!(fx.runs(), 1);
        // Purged through B: A drops its copy too.
        assert_eq!(purger.purge_tag("products").await.unwrap(), 1);
        let started = Instant::now();
        loop {
            let r = get(&a, "/tagged").await;
            if !r.hit() {
                assert!(r.cache_status().contains("fwd=uri-miss"), "{}", r.cache_status());
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(2), "A still serves its copy: {}", r.cache_status());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // An unsafe method on A reaches B's tier. (A fill begun within a
        // second of a purge of its tag is not stored.)
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        get(&a, "/tagged").await;
        fx.stored(1).await;
        answered_locally(&b, "/tagged").await;
        send(&a, "POST", "/tagged", &[]).await;
        let started = Instant::now();
        while get(&b, "/tagged").await.cache_status().contains("detail=local") {
            assert!(started.elapsed() < Duration::from_secs(2), "B still serves its copy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    rfc9213_targeted_fields_speak_to_this_cache_over_cache_control => |fx| {
        // By default CDN-Cache-Control: stored despite Cache-Control's
        // no-store, kept a minute, the fields passed on as they were.
        let cdn = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let first = get(&cdn, "/targeted").await;
        assert!(first.cache_status().ends_with("stored"), "{}", first.cache_status());
        fx.stored(1).await;
        let hit = get(&cdn, "/targeted").await;
        assert!(hit.hit(), "{}", hit.cache_status());
        assert!((50..=60).contains(&ttl(&hit)), "{}", hit.cache_status());
        assert_eq!(hit.header("cache-control"), Some("no-store"));
        assert_eq!(hit.header("cdn-cache-control"), Some("max-age=60"));
        assert_eq!(fx.runs(), 1);
        // This cache's own field first: 20 s.
        let own = fx
            .builder()
            .targeted_fields(["RedisLayers-Cache-Control", "CDN-Cache-Control"])
            .build()
            .unwrap();
        let own = app(&fx, own);
        get(&own, "/targeted?own").await;
        fx.stored(2).await;
        let hit = get(&own, "/targeted?own").await;
        assert!(hit.hit(), "{}", hit.cache_status());
        let status = hit.cache_status();
        assert!((10..=20).contains(&ttl(&hit)), "{status}");
        // None obeyed: Cache-Control's no-store holds.
        let plain = fx.builder().targeted_fields(Vec::<String>::new()).build().unwrap();
        let plain = app(&fx, plain);
        let r = get(&plain, "/targeted").await;
        assert!(!r.cache_status().contains("stored"), "{}", r.cache_status());
    }

    a_handlers_override_and_the_operators_bounds_decide_what_is_kept => |fx| {
        let plain = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        // Forced: stored for 30 s despite no-store, which the client sees.
        let r = get(&plain, "/forced").await;
        assert!(r.cache_status().ends_with("stored"), "{}", r.cache_status());
        fx.stored(1).await;
        let hit = get(&plain, "/forced").await;
        assert!(hit.hit(), "{}", hit.cache_status());
        assert!((20..=30).contains(&ttl(&hit)), "{}", hit.cache_status());
        assert_eq!(hit.header("cache-control"), Some("no-store"));
        // Forbidden: never stored, though its fields allow it.
        for _ in 0..2 {
            let r = get(&plain, "/forbidden").await;
            assert!(!r.hit() && !r.cache_status().contains("stored"), "{}", r.cache_status());
        }
        assert_eq!(fx.runs(), 3);
        // Forced, but the response says it is one user's: never shared.
        for _ in 0..2 {
            let r = send(&plain, "GET", "/forced-private", &[("authorization", "Bearer a")]).await;
            assert!(!r.hit() && !r.cache_status().contains("stored"), "{}", r.cache_status());
        }
        assert_eq!(fx.runs(), 5);
        // Bounds: max-age=1 kept 30 s, max-age=60 kept 5 s.
        let bounded = fx.builder().min_ttl(Duration::from_secs(10)).max_ttl(Duration::from_secs(5)).build();
        assert!(bounded.is_err(), "min over max");
        let bounded = app(&fx, fx.builder().min_ttl(Duration::from_secs(30)).build().unwrap());
        get(&bounded, "/short").await;
        fx.stored(2).await;
        let r = get(&bounded, "/short").await;
        assert!((20..=30).contains(&ttl(&r)), "{}", r.cache_status());
        let capped = app(&fx, fx.builder().max_ttl(Duration::from_secs(5)).build().unwrap());
        get(&capped, "/fresh").await;
        fx.stored(3).await;
        let r = get(&capped, "/fresh").await;
        assert!((0..=5).contains(&ttl(&r)), "{}", r.cache_status());
    }

    the_key_takes_what_the_application_adds_and_leaves_what_it_ignores => |fx| {
        let layer = fx
            .builder()
            .ignore_query_params(["utm_source", "fbclid"])
            .key_extra(|headers, _| Some(headers.get("x-tenant")?.to_str().ok()?.to_owned()))
            .build()
            .unwrap();
        let keyed = app(&fx, layer);
        let as_tenant = |t: &'static str, path: &'static str| {
            let keyed = keyed.clone();
            async move { send(&keyed, "GET", path, &[("x-tenant", t)]).await }
        };
        assert_eq!(as_tenant("acme", "/fresh?utm_source=mail").await.body, "/fresh #1");
        fx.stored(1).await;
        // Another tracking value, the same entry.
        let r = as_tenant("acme", "/fresh?fbclid=1&utm_source=ad").await;
        assert!(r.hit(), "{}", r.cache_status());
        assert_eq!(r.body, "/fresh #1");
        // Another tenant, or none: other entries.
        assert_eq!(as_tenant("initech", "/fresh").await.body, "/fresh #2");
        assert_eq!(get(&keyed, "/fresh").await.body, "/fresh #3");
        fx.stored(3).await;
        assert!(as_tenant("initech", "/fresh").await.hit());
        let r = as_tenant("acme", "/fresh").await;
        assert!(r.hit(), "tracking parameters aside, the same page: {}", r.cache_status());
        // A write by one tenant invalidates its own entry only.
        send(&keyed, "POST", "/fresh", &[("x-tenant", "acme")]).await;
        assert!(!as_tenant("acme", "/fresh").await.hit());
        assert!(as_tenant("initech", "/fresh").await.hit());
        assert!(get(&keyed, "/fresh").await.hit());
        // The local tier (and a thread's copy) keys the same way.
        let local = fx
            .builder()
            .local_tier(10)
            .key_extra(|headers, _| Some(headers.get("x-tenant")?.to_str().ok()?.to_owned()))
            .build()
            .unwrap();
        let local = app(&fx, local);
        answered_locally(&local, "/three").await;
        let anyone = get(&local, "/three").await.body;
        let acme = send(&local, "GET", "/three", &[("x-tenant", "acme")]).await;
        assert!(!acme.hit(), "the copy for requests without a tenant: {}", acme.cache_status());
        assert_ne!(acme.body, anyone);
    }

    rfc9110_14_a_range_is_served_from_a_stored_complete_response => |fx| {
        let plain = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let local = app(&fx, fx.builder().local_tier(10).build().unwrap());
        get(&plain, "/etag").await;
        fx.stored(1).await;
        answered_locally(&local, "/etag").await;
        // The same answers from the store and from a thread's copy.
        for (app, detail) in [(&plain, false), (&local, true)] {
            let range = |r: &'static str, extra: Option<(&'static str, &'static str)>| {
                let mut h = vec![("range", r)];
                h.extend(extra);
                async move { send(app, "GET", "/etag", &h).await }
            };
            let r = range("bytes=0-4", None).await;
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.cache_status());
            assert_eq!(r.body, "/etag");
            assert_eq!(r.header("content-range"), Some("bytes 0-4/8"));
            assert_eq!(r.header("content-length"), Some("5"));
            assert!(r.hit() && r.cache_status().contains("detail=local") == detail, "{}", r.cache_status());
            assert_eq!(range("bytes=-2", None).await.body, "#1");
            assert_eq!(range("bytes=6-", None).await.body, "#1");
            let r = range("bytes=8-", None).await;
            assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
            assert_eq!(r.header("content-range"), Some("bytes */8"));
            assert_eq!(r.body, "");
            // Several ranges, or another unit: the whole.
            for whole in ["bytes=0-1,4-5", "lines=1-2"] {
                let r = range(whole, None).await;
                assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "/etag #1"), "{whole}");
            }
            // If-Range: the stored version, strongly, or the whole.
            let r = range("bytes=0-4", Some(("if-range", "\"v1\""))).await;
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
            for other in ["\"v0\"", "W/\"v1\"", "Thu, 01 Jan 2015 00:00:00 GMT"] {
                let r = range("bytes=0-4", Some(("if-range", other))).await;
                assert_eq!(r.status, StatusCode::OK, "{other}");
                assert_eq!(r.body, "/etag #1");
            }
            // A validator that matches comes first: 304.
            let r = range("bytes=0-4", Some(("if-none-match", "\"v1\""))).await;
            assert_eq!(r.status, StatusCode::NOT_MODIFIED);
            // HEAD: no range.
            let r = send(app, "HEAD", "/etag", &[("range", "bytes=0-4")]).await;
            assert_eq!(r.status, StatusCode::OK);
        }
        assert_eq!(fx.runs(), 1);
        // A partial answer from the handler goes through and is not stored.
        for _ in 0..2 {
            let r = send(&plain, "GET", "/partial", &[("range", "bytes=0-3")]).await;
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(r.body, "abcd");
            assert!(!r.hit() && !r.cache_status().contains("stored"), "{}", r.cache_status());
        }
        assert_eq!(fx.runs(), 3);
    }

    rfc9111_4_3_5_a_head_response_freshens_or_retires_a_stale_entry => |fx| {
        let plain = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&plain, "/rev").await;
        get(&plain, "/changing").await;
        fx.stored(2).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        // The same ETag: the stored GET response is fresh again.
        let r = send(&plain, "HEAD", "/rev", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.cache_status().contains("fwd=stale; fwd-status=200; stored"), "{}", r.cache_status());
        let started = Instant::now();
        loop {
            let r = get(&plain, "/rev").await;
            if r.hit() {
                assert_eq!(r.body, "/rev #1");
                break;
            }
            assert!(started.elapsed() < Duration::from_millis(800), "not freshened: {}", r.cache_status());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Another ETag: the stored response is gone, the next GET fetches.
        let r = send(&plain, "HEAD", "/changing", &[]).await;
        assert_eq!(r.header("etag"), Some("\"e4\""));
        let r = get(&plain, "/changing").await;
        assert!(r.cache_status().contains("fwd=uri-miss"), "{}", r.cache_status());
        assert_eq!(fx.runs(), 5);
        // A write while the HEAD's handler runs wins: the entry is not
        // brought back by the HEAD's answer.
        get(&plain, "/rev-slow").await;
        fx.stored(3).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let head = {
            let plain = plain.clone();
            tokio::spawn(async move { send(&plain, "HEAD", "/rev-slow", &[("x-slow", "1")]).await })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        send(&plain, "POST", "/rev-slow", &[]).await;
        // (Its write is tried, and refused: the lease went with the entry.)
        let r = head.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = get(&plain, "/rev-slow").await;
        assert!(r.cache_status().contains("fwd=uri-miss"), "the write's invalidation held: {}", r.cache_status());
    }

    rfc9111_4_3_2_preconditions_for_the_origin_reach_the_handler_intact => |fx| {
        // By default a stored response answers them (no client makes the
        // cache bypass itself), and what the handler answers to one is
        // never stored as the page.
        let plain = app(&fx, fx.builder().local_tier(10).build().unwrap());
        let r = send(&plain, "GET", "/etag", &[("if-match", "\"v0\"")]).await;
        assert!(!r.cache_status().contains("stored"), "{}", r.cache_status());
        get(&plain, "/etag").await;
        fx.stored(1).await;
        answered_locally(&plain, "/etag").await;
        let r = send(&plain, "GET", "/etag", &[("if-match", "\"v0\"")]).await;
        assert!(r.hit(), "{}", r.cache_status());
        assert_eq!(fx.runs(), 2);
        // Honoured: to the handler, intact, and not stored.
        let plain = app(&fx, fx.builder().local_tier(10).request_directives(RequestDirectives::Honour).build().unwrap());
        get(&plain, "/etag").await;
        fx.stored(1).await;
        answered_locally(&plain, "/etag").await;
        for (name, value) in [("if-match", "\"v0\""), ("if-unmodified-since", "Tue, 20 Oct 2015 07:28:00 GMT")] {
            let r = send(&plain, "GET", "/etag", &[(name, value)]).await;
            assert!(!r.hit(), "{name}: {}", r.cache_status());
            assert!(r.cache_status().contains("fwd=bypass") && !r.cache_status().contains("stored"), "{}", r.cache_status());
            assert_eq!(r.header("x-seen-precondition"), Some(value), "{name} reached the handler");
        }
        assert_eq!(fx.runs(), 4);
        assert!(get(&plain, "/etag").await.hit());
    }

    without_thread_copies_the_local_tier_still_answers_and_hears_purges => |fx| {
        let a_layer = fx.builder().local_tier(100).thread_copies(false).build().unwrap();
        let b_layer = fx.builder().local_tier(100).thread_copies(false).build().unwrap();
        let purger = b_layer.purger();
        let (a, b) = (app(&fx, a_layer), app(&fx, b_layer));
        get(&a, "/tagged").await;
        fx.stored(1).await;
        for app in [&a, &b] {
            answered_locally(app, "/tagged").await;
        }
        assert_eq!(fx.runs(), 1);
        assert_eq!(purger.purge_tag("products").await.unwrap(), 1);
        let started = Instant::now();
        while get(&a, "/tagged").await.hit() {
            assert!(started.elapsed() < Duration::from_secs(2), "A still serves its copy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    a_fill_lease_is_given_up_only_by_its_holder => |fx| {
        use redis_layers::cache::CacheStore;
        let store = fx.tb.backend.clone();
        let short = Duration::from_millis(100);
        assert!(store.lease("k", "a", short).await.unwrap().0);
        assert!(!store.lease("k", "b", short).await.unwrap().0, "held");
        // A's lease runs out; B takes it; A's late give-up leaves B's.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(store.lease("k", "b", Duration::from_secs(5)).await.unwrap().0);
        store.unlease("k", "a").await.unwrap();
        assert!(store.poll("k").await.unwrap().1, "B still holds it");
        store.unlease("k", "b").await.unwrap();
        assert!(!store.poll("k").await.unwrap().1);
    }

    a_fill_that_began_before_a_write_is_not_stored => |fx| {
        let gate = Gate::default();
        let a = gated_app(CacheLayer::new(fx.tb.backend.clone()), &gate);
        let b = gated_app(CacheLayer::new(fx.tb.backend.clone()), &gate);
        // A asks the handler, which reads the data (v0) and stalls.
        let early = tokio::spawn({
            let a = a.clone();
            async move { get(&a, "/gated").await }
        });
        gate.started(1).await;
        // The write, on the other instance, while that fill runs.
        assert_eq!(send(&b, "POST", "/gated", &[]).await.status, StatusCode::OK);
        gate.open();
        let early = early.await.unwrap();
        assert_eq!(early.body, "v0", "its own answer predates the write");
        // Its write (after its body) must not land: it would serve v0 to
        // everyone, the writer included, until it expires.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fx.entries(), 0);
        let next = get(&b, "/gated").await;
        assert_eq!(next.body, "v1", "{}", next.cache_status());
        // A fill that began after the write is stored.
        fx.stored(1).await;
        let hit = get(&a, "/gated").await;
        assert!(hit.hit() && hit.body == "v1", "{hit:?}");
        assert_eq!(gate.runs(), 2);
    }

    a_fill_that_began_before_a_purge_of_its_tag_is_not_stored => |fx| {
        let gate = Gate::default();
        let a = gated_app(CacheLayer::new(fx.tb.backend.clone()), &gate);
        let b_layer = CacheLayer::new(fx.tb.backend.clone());
        let purger = b_layer.purger();
        let b = gated_app(b_layer, &gate);
        let early = tokio::spawn({
            let a = a.clone();
            async move { get(&a, "/gated").await }
        });
        gate.started(1).await;
        // The data changes and its tag is purged while A's fill runs (the
        // purge cannot find the fill: its tags come with its response).
        gate.version.fetch_add(1, Ordering::SeqCst);
        assert_eq!(purger.purge_tag("gated").await.unwrap(), 0);
        gate.open();
        assert_eq!(early.await.unwrap().body, "v0");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fx.entries(), 0, "the fill that began before the purge");
        assert_eq!(get(&b, "/gated").await.body, "v1");
        // Fills within a second of the purge are not stored either
        // (clocks may differ by that much); later ones are.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(get(&b, "/gated").await.body, "v1");
        fx.stored(1).await;
        assert!(get(&a, "/gated").await.hit());
    }

    a_fill_slower_than_its_lease_keeps_it_and_is_stored => |fx| {
        // The lease lasts coalesce_wait, at least 1 s; the fill takes 1.6 s.
        let layer = fx.builder().coalesce_wait(Duration::from_millis(150)).build().unwrap();
        let gate = Gate::default();
        let a = gated_app(layer, &gate);
        let slow = tokio::spawn({
            let a = a.clone();
            async move { get(&a, "/gated").await }
        });
        gate.started(1).await;
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        gate.open();
        assert_eq!(slow.await.unwrap().body, "v0");
        fx.stored(1).await;
        assert!(get(&a, "/gated").await.hit());
        assert_eq!(gate.runs(), 1);
    }

    a_waiter_whose_filler_went_away_fills_and_stores => |fx| {
        let gate = Gate::default();
        let a = gated_app(CacheLayer::new(fx.tb.backend.clone()), &gate);
        let b = gated_app(CacheLayer::new(fx.tb.backend.clone()), &gate);
        // A takes the fill lease and stalls; B waits for A's entry.
        let first = tokio::spawn({
            let a = a.clone();
            async move { get(&a, "/gated").await }
        });
        gate.started(1).await;
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { get(&b, "/gated").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(gate.runs(), 1, "B waits");
        // A's client goes away: its lease is given up, B takes it over.
        first.abort();
        gate.open();
        let waited = waiter.await.unwrap();
        assert_eq!(waited.body, "v0");
        fx.stored(1).await;
        assert!(get(&a, "/gated").await.hit());
        assert_eq!(gate.runs(), 2);
    }

    a_store_writes_only_for_its_lease_holder_and_an_invalidation_ends_the_lease => |fx| {
        use redis_layers::cache::{CacheStore, Fill};
        let store = fx.tb.backend.clone();
        let now = std::time::SystemTime::now();
        let ttl = Duration::from_secs(60);
        let write = |holder: &'static str| {
            let store = store.clone();
            async move { store.store("k", b"x".to_vec(), ttl, &[], Fill::new(holder, now)).await.unwrap() }
        };
        assert!(!write("a").await, "no lease");
        assert!(store.lease("k", "a", Duration::from_secs(5)).await.unwrap().0);
        assert!(!write("b").await, "another's lease");
        assert_eq!(store.lookup("k").await.unwrap(), None);
        assert!(write("a").await);
        assert_eq!(store.lookup("k").await.unwrap().as_deref(), Some(&b"x"[..]));
        assert!(!store.poll("k").await.unwrap().1, "the write gave the lease up");
        // An invalidation removes the entry and ends a fill's lease.
        // Taking a lease reads the entry in the same step (a fill that just
        // ended is seen, not fetched again).
        let (taken, entry) = store.lease("k", "c", Duration::from_secs(5)).await.unwrap();
        assert!(taken);
        assert_eq!(entry.as_deref(), Some(&b"x"[..]));
        assert!(store.invalidate("k").await.unwrap());
        assert!(!store.invalidate("k").await.unwrap(), "no entry left");
        assert!(!write("c").await);
        assert_eq!(store.lookup("k").await.unwrap(), None);
        // Renewal: only the holder's, and it keeps the lease past its TTL.
        assert!(store.lease("k", "d", Duration::from_millis(150)).await.unwrap().0);
        assert!(!store.renew("k", "e", Duration::from_secs(5)).await.unwrap());
        assert!(store.renew("k", "d", Duration::from_secs(5)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.poll("k").await.unwrap().1, "renewed");
        assert!(write("d").await);
        assert!(!store.renew("k", "d", Duration::from_secs(5)).await.unwrap(), "given up");
    }

    two_instances_share_the_store => |fx| {
        let a = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        let b = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
        get(&a, "/fresh").await;
        fx.stored(1).await;
        assert!(get(&b, "/fresh").await.hit());
        send(&b, "POST", "/fresh", &[]).await;
        assert!(!get(&a, "/fresh").await.hit());
    }
}

/// A handler that reads its data (`version`), then stalls until opened:
/// a fill that races a write.
#[derive(Clone)]
struct Gate {
    version: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            version: Arc::default(),
            started: Arc::default(),
            open: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl Gate {
    /// Waits until the handler has run `n` times.
    async fn started(&self, n: usize) {
        let since = Instant::now();
        while self.runs() < n {
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "the handler never ran"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn runs(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// `GET /gated` (fresh for a minute, tagged `gated`, body `v<version>`
/// as read before the gate) and `POST /gated` (the next version).
fn gated_app(layer: CacheLayer, gate: &Gate) -> Router {
    async fn read(State(gate): State<Gate>) -> axum::response::Response {
        let version = gate.version.load(Ordering::SeqCst);
        gate.started.fetch_add(1, Ordering::SeqCst);
        let mut open = gate.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        (
            [("cache-control", "max-age=60"), ("cache-tag", "gated")],
            format!("v{version}"),
        )
            .into_response()
    }
    async fn write(State(gate): State<Gate>) -> StatusCode {
        gate.version.fetch_add(1, Ordering::SeqCst);
        StatusCode::OK
    }
    Router::new()
        .route("/gated", axum::routing::get(read).post(write))
        .with_state(gate.clone())
        .layer(layer)
}

/// A store of one's own that cannot announce changes.
#[derive(Clone)]
struct Quiet(redis_layers::Backend);

impl redis_layers::cache::CacheStore for Quiet {
    async fn lookup(&self, key: &str) -> Result<Option<bytes::Bytes>, redis_layers::Error> {
        self.0.lookup(key).await
    }
    async fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
        tags: &[String],
        fill: redis_layers::cache::Fill<'_>,
    ) -> Result<bool, redis_layers::Error> {
        self.0.store(key, entry, ttl, tags, fill).await
    }
    async fn invalidate(&self, key: &str) -> Result<bool, redis_layers::Error> {
        self.0.invalidate(key).await
    }
    async fn purge_tag(
        &self,
        tag: &str,
        limit: usize,
        start: bool,
    ) -> Result<Vec<String>, redis_layers::Error> {
        self.0.purge_tag(tag, limit, start).await
    }
    async fn lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(bool, Option<bytes::Bytes>), redis_layers::Error> {
        self.0.lease(key, holder, ttl).await
    }
    async fn poll(&self, key: &str) -> Result<(Option<bytes::Bytes>, bool), redis_layers::Error> {
        self.0.poll(key).await
    }
    async fn unlease(&self, key: &str, holder: &str) -> Result<(), redis_layers::Error> {
        self.0.unlease(key, holder).await
    }
    async fn renew(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, redis_layers::Error> {
        self.0.renew(key, holder, ttl).await
    }
}

#[tokio::test]
async fn a_collapsed_answer_and_a_plain_hit_each_say_what_they_are() {
    // One thread (this runtime's): a waiter's answer and a plain hit right
    // after it come from the same decoded entry.
    let fx = fixture(Kind::Memory);
    let app = app(&fx, CacheLayer::new(fx.tb.backend.clone()));
    let leader = tokio::spawn({
        let app = app.clone();
        async move { get(&app, "/slow").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = get(&app, "/slow").await;
    assert!(
        waiter.cache_status().contains("; collapsed"),
        "{}",
        waiter.cache_status()
    );
    let plain = get(&app, "/slow").await;
    assert!(plain.hit(), "{}", plain.cache_status());
    assert!(
        !plain.cache_status().contains("collapsed"),
        "{}",
        plain.cache_status()
    );
    assert_eq!(leader.await.unwrap().body, "/slow #1");
    assert_eq!(fx.runs(), 1);
}

#[tokio::test]
async fn a_stored_204_gets_no_content_length() {
    // RFC 9110 §8.6: never on a 204. Through the layer alone (a router
    // would add its own).
    use redis_layers::memory::MemoryBackend;
    let inner = tower::service_fn(|_req: Request<Body>| async {
        let mut res = axum::response::Response::new(Body::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        res.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        Ok::<_, std::convert::Infallible>(res)
    });
    let service = tower::Layer::layer(&CacheLayer::new(MemoryBackend::new()), inner);
    let call = || {
        let req = Request::get("http://shop.example/none")
            .body(Body::empty())
            .unwrap();
        service.clone().oneshot(req)
    };
    let first = call().await.unwrap();
    let _ = first.into_body().collect().await;
    let started = Instant::now();
    loop {
        let res = call().await.unwrap();
        let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
        if status.contains("; hit") {
            assert_eq!(res.status(), StatusCode::NO_CONTENT);
            assert!(res.headers().get("content-length").is_none());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_local_tier_needs_a_store_that_announces() {
    let quiet = Quiet(redis_layers::memory::MemoryBackend::new().into());
    let err = CacheLayer::builder(quiet.clone())
        .local_tier(10)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), redis_layers::ErrorKind::Config);
    assert!(
        CacheLayer::builder(quiet).build().is_ok(),
        "without the tier it is fine"
    );
}

#[test]
fn settings_are_checked_when_the_layer_is_built() {
    let backend = redis_layers::memory::MemoryBackend::new();
    let err = CacheLayer::builder(backend.clone())
        .name("my cache")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), redis_layers::ErrorKind::Config);
    let err = CacheLayer::builder(backend.clone())
        .default_ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), redis_layers::ErrorKind::Config);
    for b in [
        CacheLayer::builder(backend.clone()).keep_stale(Duration::MAX),
        CacheLayer::builder(backend.clone()).stale_while_revalidate(Duration::MAX),
        CacheLayer::builder(backend.clone()).stale_if_error(Duration::from_secs(400 * 86_400)),
        CacheLayer::builder(backend.clone()).default_ttl(Duration::MAX),
        CacheLayer::builder(backend.clone()).coalesce_wait(Duration::MAX),
    ] {
        let err = b.build().unwrap_err();
        assert_eq!(err.kind(), redis_layers::ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("at most a year"), "{err}");
    }
    assert!(CacheLayer::builder(backend.clone())
        .stale_while_revalidate(Duration::from_secs(365 * 86_400))
        .build()
        .is_ok());
    for bad in ["not a name", "Cache-Control"] {
        let err = CacheLayer::builder(backend.clone())
            .targeted_fields([bad])
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), redis_layers::ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("targeted field"), "{err}");
    }
    assert!(CacheLayer::builder(backend).name("edge-1").build().is_ok());
}

/// The cache stacked with the session layer.
mod with_sessions {
    use super::*;

    support::both_backends! { fixture;
        outside_the_session_layer_one_users_page_never_reaches_another => |fx| {
            use redis_layers::session::{Session, SessionLayer};
            async fn login(session: Session, axum::extract::Path(name): axum::extract::Path<String>) -> &'static str {
                session.insert("name", name).unwrap();
                "ok"
            }
            async fn me(session: Session) -> impl IntoResponse {
                let name: Option<String> = session.get("name").await.unwrap();
                ([("cache-control", "public, max-age=60")], name.unwrap_or_default())
            }
            let app = Router::new()
                .route("/login/{name}", axum::routing::post(login))
                .route("/me", axum::routing::get(me))
                .layer(SessionLayer::new(fx.tb.backend.clone()))
                .layer(CacheLayer::new(fx.tb.backend.clone()));
            let mut cookies = Vec::new();
            for name in ["alice", "bob"] {
                let r = send(&app, "POST", &format!("/login/{name}"), &[]).await;
                let set = r.header("set-cookie").unwrap();
                cookies.push(set.split(';').next().unwrap().to_owned());
            }
            let as_user = |i: usize| [("cookie", cookies[i].as_str())];
            let a = send(&app, "GET", "/me", &as_user(0)).await;
            assert_eq!(a.body, "alice");
            assert!(a.header("vary").unwrap().to_ascii_lowercase().contains("cookie"));
            fx.stored(1).await;
            let b = send(&app, "GET", "/me", &as_user(1)).await;
            assert_eq!(b.body, "bob", "{}", b.cache_status());
            let anonymous = get(&app, "/me").await;
            assert_eq!(anonymous.body, "");
            let a2 = send(&app, "GET", "/me", &as_user(0)).await;
            assert_eq!(a2.body, "alice");
        }

        a_background_refresh_built_from_the_session_is_not_stored => |fx| {
            use redis_layers::session::{Session, SessionLayer};
            // Public and session-free at first; a later run reads the
            // session (as a page that greets whoever asks would).
            let runs = Arc::new(AtomicUsize::new(0));
            let counted = runs.clone();
            let page = move |session: Session| {
                let runs = counted.clone();
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    let body = if n == 1 {
                        "for anyone".to_owned()
                    } else {
                        let name: Option<String> = session.get("name").await.unwrap();
                        format!("for {name:?}")
                    };
                    ([("cache-control", "public, max-age=1, stale-while-revalidate=30")], body)
                }
            };
            let router = Router::new().route("/swr-session", axum::routing::get(page));
            let cache = CacheLayer::new(fx.tb.backend.clone());
            let app = router.layer(cache).layer(SessionLayer::new(fx.tb.backend.clone()));
            assert_eq!(get(&app, "/swr-session").await.body, "for anyone");
            fx.stored(1).await;
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            // Stale: served, and refreshed in the background by a handler
            // that reads the session: that answer is not stored.
            let r = get(&app, "/swr-session").await;
            assert!(r.cache_status().contains("stale-while-revalidate"), "{}", r.cache_status());
            let started = Instant::now();
            while runs.load(Ordering::SeqCst) < 2 {
                assert!(started.elapsed() < Duration::from_secs(3), "no refresh ran");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = get(&app, "/swr-session").await;
            assert_eq!(r.body, "for anyone", "{}", r.cache_status());
        }

        a_page_built_with_any_session_method_is_never_shared => |fx| {
            use redis_layers::session::{Session, SessionLayer};
            // Every method of `Session`: the handler uses the session that
            // way and puts the caller's cookie (standing for a CSRF token,
            // a name) in a page it calls public.
            const METHODS: [&str; 12] = [
                "get", "insert", "remove", "clear", "id", "cycle_id", "set_user",
                "user", "destroy", "sessions", "revoke", "revoke_others",
            ];
            async fn login(session: Session) -> &'static str {
                session.insert("name", "alice").unwrap();
                session.set_user("alice").unwrap();
                "ok"
            }
            async fn page(
                session: Session,
                axum::extract::Path(method): axum::extract::Path<String>,
                headers: axum::http::HeaderMap,
            ) -> impl IntoResponse {
                match method.as_str() {
                    "get" => drop(session.get::<String>("name").await),
                    "insert" => session.insert("csrf", "fresh").unwrap(),
                    "remove" => session.remove("name"),
                    "clear" => session.clear(),
                    "id" => drop(session.id().await),
                    "cycle_id" => drop(session.cycle_id().await),
                    "set_user" => session.set_user("alice").unwrap(),
                    "user" => {
                        session.set_user("alice").unwrap();
                        drop(session.user().await);
                    }
                    "destroy" => drop(session.destroy().await),
                    "sessions" => drop(session.sessions().await),
                    "revoke" => drop(session.revoke("nope").await),
                    "revoke_others" => drop(session.revoke_others().await),
                    m => panic!("{m}"),
                }
                let cookie = headers
                    .get("cookie")
                    .map(|c| c.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                ([("cache-control", "public, max-age=60")], format!("page for {cookie}"))
            }
            for outside in [true, false] {
                let router = Router::new()
                    .route("/login", axum::routing::post(login))
                    .route("/page/{method}", axum::routing::get(page));
                let sessions = SessionLayer::new(fx.tb.backend.clone());
                let cache = CacheLayer::builder(fx.tb.backend.clone())
                    .name(if outside { "outside" } else { "inside" })
                    .build()
                    .unwrap();
                let app = if outside {
                    router.layer(sessions).layer(cache)
                } else {
                    router.layer(cache).layer(sessions)
                };
                for method in METHODS {
                    let r = send(&app, "POST", "/login", &[]).await;
                    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned();
                    let path = format!("/page/{method}");
                    let mine = send(&app, "GET", &path, &[("cookie", cookie.as_str())]).await;
                    assert_eq!(mine.body, format!("page for {cookie}"), "{method}");
                    // Give a (wrongful) store time to land.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let other = get(&app, &path).await;
                    assert!(
                        !other.body.contains(&cookie),
                        "outside: {outside}, {method}: another client got the first one's page ({})",
                        other.cache_status()
                    );
                }
            }
        }

        inside_the_session_layer_session_requests_bypass_it => |fx| {
            use redis_layers::session::{Session, SessionLayer};
            async fn login(session: Session, axum::extract::Path(name): axum::extract::Path<String>) -> &'static str {
                session.insert("name", name).unwrap();
                "ok"
            }
            async fn me(session: Session) -> impl IntoResponse {
                let name: Option<String> = session.get("name").await.unwrap();
                ([("cache-control", "public, max-age=60")], name.unwrap_or_default())
            }
            async fn news() -> impl IntoResponse {
                ([("cache-control", "public, max-age=60")], "news")
            }
            // The cache sees responses before the session layer marks them.
            let app = Router::new()
                .route("/login/{name}", axum::routing::post(login))
                .route("/me", axum::routing::get(me))
                .route("/news", axum::routing::get(news))
                .layer(CacheLayer::new(fx.tb.backend.clone()))
                .layer(SessionLayer::new(fx.tb.backend.clone()));
            let mut cookies = Vec::new();
            for name in ["alice", "bob"] {
                let r = send(&app, "POST", &format!("/login/{name}"), &[]).await;
                let set = r.header("set-cookie").unwrap();
                cookies.push(set.split(';').next().unwrap().to_owned());
            }
            let as_user = |i: usize| [("cookie", cookies[i].as_str())];
            let a = send(&app, "GET", "/me", &as_user(0)).await;
            assert_eq!(a.body, "alice");
            assert!(a.cache_status().contains("fwd=bypass"), "{}", a.cache_status());
            let b = send(&app, "GET", "/me", &as_user(1)).await;
            assert_eq!(b.body, "bob");
            // An anonymous read of the session is not stored either.
            let anon = get(&app, "/me").await;
            assert!(!anon.cache_status().contains("stored"), "{}", anon.cache_status());
            assert_eq!(send(&app, "GET", "/me", &as_user(0)).await.body, "alice");
            // A page that never reads the session is cached for anonymous
            // requests.
            get(&app, "/news").await;
            fx.stored(1).await;
            assert!(get(&app, "/news").await.hit());
            assert_eq!(fx.entries(), 1);
        }
    }
}
