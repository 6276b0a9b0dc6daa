//! Idempotency behaviour, one suite run against a real Redis and the
//! memory backend; Redis-only tests (commands sent, faults) live in
//! `redis_only.rs`.

#[path = "../support/mod.rs"]
mod support;

mod redis_only;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use redis_layers::idempotency::{Fence, IdempotencyLayer, IdempotencyLayerBuilder, Scope};
use tower::ServiceExt;

use support::{Kind, TestBackend};

pub struct Fixture {
    pub tb: TestBackend,
    pub runs: Arc<AtomicUsize>,
}

pub fn fixture(kind: Kind) -> Fixture {
    Fixture {
        tb: TestBackend::new(kind),
        runs: Arc::new(AtomicUsize::new(0)),
    }
}

impl Fixture {
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
    pub fn builder(&self) -> IdempotencyLayerBuilder {
        IdempotencyLayer::builder(self.tb.backend.clone(), Scope::header("x-api-key"))
    }
}

/// `/orders` creates an order (201, Location, a body naming the run and
/// the fencing token); `/slow` takes 600 ms; `/fail` answers 500 the first
/// time; `/panic` panics the first time; `/big` answers 5 KB; `/trickle`
/// answers at once with a body that takes a second to arrive.
pub fn app(fx: &Fixture, layer: IdempotencyLayer) -> Router {
    async fn handle(
        State(runs): State<Arc<AtomicUsize>>,
        uri: axum::http::Uri,
        fence: Option<axum::Extension<Fence>>,
        body: String,
    ) -> axum::response::Response {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        // Only `/orders` asks for its token (it costs a store call).
        let token = match &fence {
            Some(fence) if uri.path() == "/orders" || uri.path() == "/fail" => {
                fence.token().await.unwrap().map_or(0, |t| t.0)
            }
            _ => 0,
        };
        match uri.path() {
            "/slow" => tokio::time::sleep(Duration::from_millis(600)).await,
            "/slower" => tokio::time::sleep(Duration::from_millis(1_500)).await,
            "/fail" if n == 1 => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("oops, token {token}"),
                )
                    .into_response()
            }
            "/panic" if n == 1 => panic!("handler panicked"),
            "/big" => return "x".repeat(5_000).into_response(),
            "/bad" => return (StatusCode::BAD_REQUEST, "bad order").into_response(),
            "/busy" if n == 1 => return (StatusCode::TOO_MANY_REQUESTS, "busy").into_response(),
            "/trickle" => {
                return (
                    StatusCode::CREATED,
                    Body::new(Trickle::new(10, Duration::from_millis(100))),
                )
                    .into_response()
            }
            _ => {}
        }
        (
            StatusCode::CREATED,
            [
                ("location", format!("/orders/{n}")),
                ("set-cookie", "s=1".to_owned()),
            ],
            format!("order #{n} token {} for {body}", token),
        )
            .into_response()
    }
    Router::new()
        .route("/{*path}", post(handle).patch(handle).put(handle))
        .with_state(fx.runs.clone())
        .layer(layer)
}

/// A body of `left` chunks, one every `every`.
pub struct Trickle {
    left: usize,
    every: Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Trickle {
    pub fn new(chunks: usize, every: Duration) -> Self {
        Trickle {
            left: chunks,
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
        }
    }
}

impl http_body::Body for Trickle {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        self.left -= 1;
        let next = tokio::time::Instant::now() + self.every;
        self.sleep.as_mut().reset(next);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b"chunk;",
        )))))
    }
}

/// Sends `path` with key `key` until the answer is final (not 409, not
/// 503), for up to `within`.
pub async fn until_final(app: &Router, path: &str, key: &str, within: Duration) -> Reply {
    let started = std::time::Instant::now();
    loop {
        let r = send(
            app,
            "POST",
            path,
            &[("x-api-key", b"a"), ("idempotency-key", key.as_bytes())],
            "x",
        )
        .await;
        if r.status != StatusCode::CONFLICT && r.status != StatusCode::SERVICE_UNAVAILABLE {
            return r;
        }
        assert!(
            started.elapsed() < within,
            "{key}: no final answer in {within:?}: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub use support::reply::Reply;

pub async fn send(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    for (n, v) in headers {
        req = req.header(*n, axum::http::HeaderValue::from_bytes(v).unwrap());
    }
    support::reply::send(app, req.body(Body::from(body.to_owned())).unwrap()).await
}

/// A POST by client `who` with key `key`.
pub async fn order(app: &Router, who: &str, key: &str, body: &str) -> Reply {
    send(
        app,
        "POST",
        "/orders",
        &[
            ("x-api-key", who.as_bytes()),
            ("idempotency-key", key.as_bytes()),
            ("content-type", b"text/plain"),
        ],
        body,
    )
    .await
}

support::both_backends! { fixture;
    a_retry_replays_the_first_response => |fx| {
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let first = order(&app, "alice", "\"k-1\"", "tea").await;
        assert_eq!(first.status, StatusCode::CREATED);
        assert!(first.body.starts_with("order #1 token "), "{}", first.body);
        assert!(first.header("idempotent-replayed").is_none());
        let again = order(&app, "alice", "\"k-1\"", "tea").await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.body, first.body);
        assert_eq!(again.header("location"), Some("/orders/1"));
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert!(again.header("set-cookie").is_none(), "never replayed");
        assert_eq!(fx.runs(), 1);
        // The bare-token form names the same key.
        assert_eq!(order(&app, "alice", "k-1", "tea").await.body, first.body);
        // A new key runs again.
        assert_eq!(order(&app, "alice", "k-2", "tea").await.body.split(' ').nth(1), Some("#2"));
    }

    a_4xx_is_final_too => |fx| {
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", b"k")];
        assert_eq!(send(&app, "POST", "/bad", h, "").await.status, StatusCode::BAD_REQUEST);
        let r = send(&app, "POST", "/bad", h, "").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
        assert_eq!(fx.runs(), 1);
    }

    the_same_key_for_another_request_is_422 => |fx| {
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        order(&app, "alice", "k", "tea").await;
        let r = order(&app, "alice", "k", "coffee").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.is_problem());
        // Another content type is another request too.
        let r = send(&app, "POST", "/orders", &[("x-api-key", b"alice"), ("idempotency-key", b"k"), ("content-type", b"application/json")], "tea").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(fx.runs(), 1);
    }

    scopes_never_meet => |fx| {
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let a = order(&app, "alice", "same", "tea").await;
        let b = order(&app, "bob", "same", "tea").await;
        assert_ne!(a.body, b.body);
        assert!(b.header("idempotent-replayed").is_none());
        assert_eq!(fx.runs(), 2);
        // No scope at all: refused.
        let r = send(&app, "POST", "/orders", &[("idempotency-key", b"k")], "tea").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.is_problem());
        assert_eq!(fx.runs(), 2);
    }

    bad_keys_are_400s => |fx| {
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let long = vec![b'a'; 256];
        for key in [&b""[..], b"\"\"", b"\"unterminated", b"a,b", b"\xff", &long, b"\"a\" \"b\""] {
            let r = send(&app, "POST", "/orders", &[("x-api-key", b"a"), ("idempotency-key", key)], "tea").await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{key:?}");
            assert!(r.is_problem(), "{key:?}");
        }
        // Missing, when required.
        let r = send(&app, "POST", "/orders", &[("x-api-key", b"a")], "tea").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(fx.runs(), 0);
    }

    optional_mode_and_other_methods_pass => |fx| {
        let app = app(&fx, fx.builder().required(false).build().unwrap());
        let r = send(&app, "POST", "/orders", &[("x-api-key", b"a")], "tea").await;
        assert_eq!(r.status, StatusCode::CREATED);
        // PUT is not one of the methods: passes, key or not.
        let r = send(&app, "PUT", "/orders", &[("idempotency-key", b"a,b")], "tea").await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(fx.runs(), 2);
    }

    a_body_over_the_limit_is_413 => |fx| {
        let app = app(&fx, fx.builder().max_body(10).build().unwrap());
        let r = order(&app, "a", "k", "this body is longer than ten bytes").await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(r.is_problem());
        assert_eq!(fx.runs(), 0);
    }

    a_body_in_pieces_is_the_same_request_as_in_one => |fx| {
        let app = app(&fx, fx.builder().max_body(20).build().unwrap());
        let chunked = |parts: &'static [&'static str], key: &'static str| {
            let stream = futures_util::stream::iter(
                parts.iter().map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from_static(p.as_bytes()))),
            );
            Request::post("/orders")
                .header("x-api-key", "alice")
                .header("idempotency-key", key)
                .header("content-type", "text/plain")
                .body(Body::from_stream(stream))
                .unwrap()
        };
        let res = app.clone().oneshot(chunked(&["gr", "een ", "", "tea"], "k")).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let first = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(first.ends_with("for green tea"), "the handler got it whole: {first}");
        // The same bytes in one piece: a replay, not another request (422).
        let again = order(&app, "alice", "k", "green tea").await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.body, first);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        // And in other pieces.
        let res = app.clone().oneshot(chunked(&["green", " tea"], "k")).await.unwrap();
        assert_eq!(res.headers()["idempotent-replayed"], "true");
        // Pieces over the limit together: 413, the handler never runs.
        let res = app.clone().oneshot(chunked(&["0123456789", "0123456789", "!"], "k2")).await.unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(fx.runs(), 1);
    }

    a_key_in_flight_is_409_and_runs_once_across_instances => |fx| {
        let a = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let b = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                send(&app, "POST", "/slow", &[("x-api-key", b"a"), ("idempotency-key", b"k")], "x").await
            }));
        }
        let (mut ok, mut conflict) = (0, 0);
        for t in tasks {
            let r = t.await.unwrap();
            match r.status {
                StatusCode::CREATED => ok += 1,
                StatusCode::CONFLICT => {
                    conflict += 1;
                    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
                    assert!((1..=30).contains(&wait), "{wait}");
                    assert!(r.is_problem());
                }
                s => panic!("{s}: {}", r.body),
            }
        }
        assert_eq!((ok, conflict), (1, 49));
        assert_eq!(fx.runs(), 1);
        // Done: every later one replays.
        let r = send(&b, "POST", "/slow", &[("x-api-key", b"a"), ("idempotency-key", b"k")], "x").await;
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
    }

    a_duplicate_can_wait_for_the_first_and_get_its_response => |fx| {
        let app = app(&fx, fx.builder().wait_for_completion(Duration::from_secs(2)).build().unwrap());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                send(&app, "POST", "/slow", &[("x-api-key", b"a"), ("idempotency-key", b"w")], "x").await
            }));
        }
        let mut bodies = std::collections::HashSet::new();
        let mut replayed = 0;
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            if r.header("idempotent-replayed").is_some() {
                replayed += 1;
            }
            bodies.insert(r.body);
        }
        assert_eq!(bodies.len(), 1, "one response for all");
        assert_eq!(replayed, 7);
        assert_eq!(fx.runs(), 1);
        // A wait shorter than the handler still ends in a 409.
        let short = crate::app(&fx, fx.builder().wait_for_completion(Duration::from_millis(100)).build().unwrap());
        let first = {
            let short = short.clone();
            tokio::spawn(async move {
                send(&short, "POST", "/slow", &[("x-api-key", b"a"), ("idempotency-key", b"w2")], "x").await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = send(&short, "POST", "/slow", &[("x-api-key", b"a"), ("idempotency-key", b"w2")], "x").await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    }

    a_5xx_releases_the_key => |fx| {
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", b"k")];
        assert_eq!(send(&app, "POST", "/fail", h, "").await.status, StatusCode::INTERNAL_SERVER_ERROR);
        let r = send(&app, "POST", "/fail", h, "").await;
        assert_eq!(r.status, StatusCode::CREATED, "the retry ran");
        assert!(r.header("idempotent-replayed").is_none());
        assert_eq!(fx.runs(), 2);
    }

    a_panic_releases_the_key => |fx| {
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", b"p")];
        let panicked = {
            let app = app.clone();
            tokio::spawn(async move { send(&app, "POST", "/panic", &[("x-api-key", b"a"), ("idempotency-key", b"p")], "").await })
        };
        assert!(panicked.await.is_err(), "the handler panicked");
        let retry = || send(&app, "POST", "/panic", h, "");
        let started = std::time::Instant::now();
        let r = loop {
            let r = retry().await;
            if r.status != StatusCode::CONFLICT {
                break r;
            }
            assert!(started.elapsed() < Duration::from_secs(2), "still claimed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(fx.runs(), 2, "the panicked run, then the retry");
    }

    a_long_handler_keeps_its_claim => |fx| {
        // Lease 500 ms, handler 1.5 s (three leases): the renewals (every
        // ~170 ms) keep it claimed throughout.
        let app = app(&fx, fx.builder().lease(Duration::from_millis(500)).build().unwrap());
        let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", b"long")];
        let first = {
            let app = app.clone();
            tokio::spawn(async move {
                send(&app, "POST", "/slower", &[("x-api-key", b"a"), ("idempotency-key", b"long")], "").await
            })
        };
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(send(&app, "POST", "/slower", h, "").await.status, StatusCode::CONFLICT, "past the first lease");
        assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
        assert_eq!(fx.runs(), 1);
    }

    a_response_too_large_to_keep_is_sent_and_never_run_again => |fx| {
        let app = app(&fx, fx.builder().max_response(1_000).build().unwrap());
        let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", b"big")];
        assert_eq!(send(&app, "POST", "/big", h, "").await.body.len(), 5_000);
        let r = send(&app, "POST", "/big", h, "").await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(r.is_problem() && r.body.contains("not retained"), "{}", r.body);
        assert!(r.header("retry-after").is_none());
        assert_eq!(fx.runs(), 1, "the handler ran once");
        // Another body with that key is still a misuse.
        assert_eq!(send(&app, "POST", "/big", h, "other").await.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    a_429_from_the_handler_releases_the_key => |fx| {
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", b"busy")];
        assert_eq!(send(&app, "POST", "/busy", h, "").await.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(send(&app, "POST", "/busy", h, "").await.status, StatusCode::CREATED, "ran again");
        assert_eq!(fx.runs(), 2);
    }

    a_request_dropped_at_any_point_never_runs_twice => |fx| {
        // Dropped while claiming, while the handler runs (600 ms), around
        // its end and while completing: the handler runs once per key,
        // whatever the retries find.
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let drops = [0u64, 1, 3, 50, 300, 590, 600, 602, 605, 620];
        for (i, after) in drops.iter().enumerate() {
            let key = format!("drop-{i}");
            let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", key.as_bytes())];
            let _ = tokio::time::timeout(Duration::from_millis(*after), send(&app, "POST", "/slow", h, "x")).await;
            let r = until_final(&app, "/slow", &key, Duration::from_secs(5)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{key}: {}", r.body);
            let again = until_final(&app, "/slow", &key, Duration::from_secs(5)).await;
            assert_eq!(again.header("idempotent-replayed"), Some("true"), "{key}");
            assert_eq!(fx.runs(), i + 1, "{key} dropped after {after} ms ran twice");
        }
    }

    a_body_slower_than_the_lease_keeps_the_claim => |fx| {
        // Lease 300 ms; the body takes a second to arrive after the
        // handler returned: a duplicate meanwhile is 409, never a second run.
        let app = app(&fx, fx.builder().lease(Duration::from_millis(300)).build().unwrap());
        let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", b"slow-body")];
        let first = {
            let app = app.clone();
            tokio::spawn(async move {
                send(&app, "POST", "/trickle", &[("x-api-key", b"a"), ("idempotency-key", b"slow-body")], "x").await
            })
        };
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = send(&app, "POST", "/trickle", h, "x").await;
            assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        }
        let first = first.await.unwrap();
        assert_eq!(first.status, StatusCode::CREATED);
        assert_eq!(first.body, "chunk;".repeat(10));
        let again = send(&app, "POST", "/trickle", h, "x").await;
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.body, first.body);
        assert_eq!(fx.runs(), 1);
    }

    a_5xx_can_be_kept_when_handlers_fail_after_their_effects => |fx| {
        let app = app(&fx, fx.builder().release_on_server_error(false).build().unwrap());
        let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", b"k")];
        assert_eq!(send(&app, "POST", "/fail", h, "").await.status, StatusCode::INTERNAL_SERVER_ERROR);
        let r = send(&app, "POST", "/fail", h, "").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
        assert_eq!(fx.runs(), 1);
    }

    tokens_grow_per_key => |fx| {
        let app = app(&fx, IdempotencyLayer::new(fx.tb.backend.clone(), Scope::header("x-api-key")));
        let h: &[(&str, &[u8])] = &[("x-api-key", b"a"), ("idempotency-key", b"t")];
        let token = |body: &str| -> u64 {
            let at = body.find("token ").unwrap_or_else(|| panic!("{body}")) + 6;
            body[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        };
        let first = send(&app, "POST", "/fail", h, "").await; // released
        let second = send(&app, "POST", "/fail", h, "").await;
        assert!(token(&second.body) > token(&first.body), "{} then {}", first.body, second.body);
    }
}

#[test]
fn settings_are_checked_when_the_layer_is_built() {
    let backend = redis_layers::memory::MemoryBackend::new();
    let b = || IdempotencyLayer::builder(backend.clone(), Scope::global());
    assert!(b().header("bad header").build().is_err());
    assert!(b().methods([]).build().is_err());
    assert!(b().lease(Duration::from_millis(10)).build().is_err());
    assert!(b().retention(Duration::MAX).build().is_err());
    assert!(b().lease(Duration::MAX).build().is_err());
    assert!(b().wait_for_completion(Duration::MAX).build().is_err());
    assert!(b().build().is_ok());
}
