//! One span per layer per request: its outcome, the rules and policies of
//! a rate-limit decision, and the store round trips the layer waited for
//! (its own only: the handler's are not counted), on a real Redis; on the
//! memory backend the round trips stay 0. A layer whose span is filtered
//! off leaves an application's span alone.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use http::{header, Request, StatusCode};
use redis_layers::cache::CacheLayer;
use redis_layers::idempotency::{IdempotencyLayer, Scope};
use redis_layers::lock::{LockKey, LockLayer, Locks};
use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, Rule};
use redis_layers::session::{Session, SessionLayer};
use redis_layers::Backend;
use support::TestBackend;
use tower::ServiceExt;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A closed span: its name, target and last field values.
#[derive(Debug, Clone)]
struct Closed {
    name: String,
    target: String,
    fields: BTreeMap<String, String>,
}

impl Closed {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    fn round_trips(&self) -> u64 {
        self.field("store_round_trips")
            .unwrap_or_else(|| panic!("no store_round_trips on {self:?}"))
            .parse()
            .unwrap()
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Collects every span as it closes.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Closed>>>);

impl<S> Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let span = ctx.span(id).unwrap();
        let mut ext = span.extensions_mut();
        values.record(ext.get_mut::<Fields>().unwrap());
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let fields = span.extensions_mut().remove::<Fields>().unwrap_or_default();
        self.0.lock().unwrap().push(Closed {
            name: span.name().to_owned(),
            target: span.metadata().target().to_owned(),
            fields: fields.0,
        });
    }
}

impl Spans {
    /// Captures spans on this thread while the guard lives, `filter`ed.
    fn capture(filter: &str) -> (Self, tracing::subscriber::DefaultGuard) {
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry().with(
            spans
                .clone()
                .with_filter(tracing_subscriber::EnvFilter::try_new(filter).unwrap()),
        );
        (spans.clone(), tracing::subscriber::set_default(subscriber))
    }

    /// Takes the spans of `layer` closed so far, waiting a little for the
    /// `n` expected (work left in a task of its own may hold one open).
    async fn take(&self, layer: &str, n: usize) -> Vec<Closed> {
        // Up to 5 s: a busy machine (the cluster's tests beside) can be
        // slow to finish a fill's write, which holds the spans around it.
        for _ in 0..1000 {
            if self.count(layer) >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut all = self.0.lock().unwrap();
        let (mine, rest): (Vec<Closed>, Vec<Closed>) = all.drain(..).partition(|s| s.name == layer);
        *all = rest;
        assert_eq!(mine.len(), n, "spans of {layer}: {mine:?}");
        for span in mine.iter().filter(|s| s.target.starts_with("redis_layers")) {
            assert_eq!(span.target, format!("redis_layers::{layer}"));
        }
        mine
    }

    /// Takes a closed span of `layer` with `outcome`, waiting for it (up
    /// to 5 s); other spans stay (one may close late: a span lives as
    /// long as work that holds it).
    async fn outcome(&self, layer: &str, outcome: &str) -> Closed {
        for _ in 0..1000 {
            {
                let mut all = self.0.lock().unwrap();
                let at = all
                    .iter()
                    .position(|s| s.name == layer && s.field("outcome") == Some(outcome));
                if let Some(at) = at {
                    let span = all.remove(at);
                    assert_eq!(span.target, format!("redis_layers::{layer}"));
                    return span;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "no {layer} span with outcome {outcome}: {:?}",
            self.0.lock().unwrap()
        );
    }

    fn count(&self, layer: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == layer)
            .count()
    }
}

/// The app: sessions around everything; a rate-limited, cached page whose
/// handler takes a lock of its own (store calls that are not the
/// layers'); an idempotent order; a locked job.
fn app(backend: &Backend) -> Router {
    let locks = Locks::new(backend.clone());
    let pages = Router::new()
        .route(
            "/page",
            get(move || {
                let locks = locks.clone();
                async move {
                    let guard = locks
                        .try_acquire("handler-own", Duration::from_secs(5))
                        .await
                        .unwrap()
                        .expect("free");
                    guard.release().await.unwrap();
                    ([(header::CACHE_CONTROL, "public, max-age=60")], "page")
                }
            }),
        )
        .layer(CacheLayer::builder(backend.clone()).build().unwrap())
        .layer(
            RateLimitLayer::builder(backend.clone())
                .rule(
                    Rule::prefix("/page")
                        .key(Key::header("x-client"))
                        .policy(Policy::per_minute(3).named("burst"))
                        .named("pages"),
                )
                .build()
                .unwrap(),
        );
    let order = post(|| async { "ordered" }).layer(IdempotencyLayer::new(
        backend.clone(),
        Scope::header("x-client"),
    ));
    let job = post(|| async { "done" }).layer(
        LockLayer::builder(backend.clone(), LockKey::path())
            .build()
            .unwrap(),
    );
    Router::new()
        .merge(pages)
        .route("/orders", order)
        .route("/jobs/{id}", job)
        .route(
            "/login",
            post(|session: Session| async move {
                session.set_user("ada").unwrap();
                "in"
            }),
        )
        .route(
            "/me",
            get(
                |session: Session| async move { session.user().await.unwrap().unwrap_or_default() },
            ),
        )
        .layer(
            SessionLayer::builder(backend.clone())
                .secure(false)
                .build()
                .unwrap(),
        )
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (head, body) = res.into_parts();
    axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (head.status, head.headers)
}

fn page() -> Request<Body> {
    Request::get("/page")
        .header("x-client", "c1")
        .body(Body::empty())
        .unwrap()
}

/// The round trips `spans` counted: on the memory backend always 0, on
/// Redis `redis`.
fn expect_trips(fx: &TestBackend, spans: &[Closed], redis: u64) {
    let want = if matches!(fx.kind, support::Kind::Memory) {
        0
    } else {
        redis
    };
    for span in spans {
        assert_eq!(span.round_trips(), want, "{span:?}");
        if want > 0 {
            let us: u64 = span.field("store_us").unwrap().parse().unwrap();
            assert!(us > 0, "{span:?}");
        }
    }
}

/// One test of this file at a time: tracing caches each callsite's
/// interest process-wide, and a subscriber that turns a layer's spans off
/// (installed by a test running beside) can briefly turn them off for the
/// other test's subscriber too.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

support::both_backends! { TestBackend::new;
    each_layer_records_its_outcome_and_its_own_round_trips => |fx| {
        let _serial = SERIAL.lock().await;
        let (spans, _guard) = Spans::capture("info");
        let app = app(&fx.backend);

        // A cache miss, then a hit; each checked by the rate limiter. The
        // handler's own lock calls (two round trips) are nobody's.
        let (status, headers) = send(&app, page()).await;
        assert_eq!(status, StatusCode::OK);
        let cs = headers["cache-status"].to_str().unwrap();
        assert!(cs.contains("miss"), "{cs}");
        let miss = [spans.outcome("cache", "miss").await];
        // The cache's generation (read once, then kept a while), the
        // lookup, the fill lease: the handler's lock is not here.
        expect_trips(&fx, &miss, 3);
        let allowed = [spans.outcome("rate_limit", "allowed").await];
        assert_eq!(allowed[0].field("rules"), Some("pages"));
        expect_trips(&fx, &allowed, 1);
        let session = [spans.outcome("session", "unused").await];
        expect_trips(&fx, &session, 0);

        // Until the fill is stored (a task of its own): each try from a
        // client of its own, so the limit stays out of it.
        let mut hit = None;
        for i in 0..100 {
            let req = Request::get("/page")
                .header("x-client", format!("hit-{i}"))
                .body(Body::empty())
                .unwrap();
            let (status, headers) = send(&app, req).await;
            assert_eq!(status, StatusCode::OK);
            if headers["cache-status"].to_str().unwrap().contains("; hit") {
                hit = Some([spans.outcome("cache", "hit").await]);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let hit = hit.expect("a hit");
        assert_eq!(hit[0].field("tier"), None);
        // The lookup, and the cache's generation when its re-read falls
        // due (every second by default).
        if !matches!(fx.kind, support::Kind::Memory) {
            assert!((1..=2).contains(&hit[0].round_trips()), "{hit:?}");
        }

        // Past the limit: refused, naming the rule and the policy.
        let mut refused = None;
        for _ in 0..3 {
            let (status, _) = send(&app, page()).await;
            if status == StatusCode::TOO_MANY_REQUESTS {
                refused = Some(spans.outcome("rate_limit", "limited").await);
                break;
            }
        }
        let last = &refused.expect("a 429");
        assert_eq!(last.field("outcome"), Some("limited"));
        assert_eq!(last.field("refused_by"), Some("pages"));
        assert_eq!(last.field("policies"), Some("burst"));
        expect_trips(&fx, std::slice::from_ref(last), 1);
        // Known locally from then on: no store call.
        let (status, _) = send(&app, page()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let local = [spans.outcome("rate_limit", "limited_locally").await];
        assert_eq!(local[0].field("refused_by"), Some("pages"));
        assert_eq!(local[0].round_trips(), 0);

        // Idempotency: the claim and the completion, then the replay.
        let order = || {
            Request::post("/orders")
                .header("x-client", "c1")
                .header("idempotency-key", "k-1")
                .body(Body::from("tea"))
                .unwrap()
        };
        send(&app, order()).await;
        let first = [spans.outcome("idempotency", "first").await];
        expect_trips(&fx, &first, 2);
        send(&app, order()).await;
        let replayed = [spans.outcome("idempotency", "replayed").await];
        expect_trips(&fx, &replayed, 1);

        // A lock: taken, then released.
        let (status, _) =
            send(&app, Request::post("/jobs/7").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let lock = [spans.outcome("lock", "acquired").await];
        expect_trips(&fx, &lock, 2);

        // A session: created at login (its writes counted), then read
        // back (one load).
        let (_, headers) =
            send(&app, Request::post("/login").body(Body::empty()).unwrap()).await;
        let created = [spans.outcome("session", "created").await];
        if !matches!(fx.kind, support::Kind::Memory) {
            assert!(created[0].round_trips() >= 1, "{created:?}");
        }
        let cookie = headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let (_, _) = send(
            &app,
            Request::get("/me")
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let read = [spans.outcome("session", "read").await];
        expect_trips(&fx, &read, 1);
    }

    a_layer_span_filtered_off_leaves_the_application_span_alone => |fx| {
        let _serial = SERIAL.lock().await;
        // The application's own span has an `outcome` field too; the
        // rate limiter's span is off, the cache's on.
        let (spans, _guard) =
            Spans::capture("info,redis_layers::rate_limit=off,redis_layers::session=off");
        let app = app(&fx.backend);
        let request_span = tracing::info_span!("request", outcome = tracing::field::Empty);
        let (status, _) = tracing::Instrument::instrument(send(&app, page()), request_span).await;
        assert_eq!(status, StatusCode::OK);
        spans.outcome("cache", "miss").await;
        assert_eq!(spans.count("rate_limit"), 0);
        let request = spans.take("request", 1).await;
        assert_eq!(request[0].field("outcome"), None, "{request:?}");
    }
}
