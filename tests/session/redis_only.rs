//! What only a real Redis can show: commands actually sent, writes actually
//! made, what the keys reveal, and failures of the server itself.

use std::time::{Duration, Instant};

use http::StatusCode;
use redis_layers::FailurePolicy;

use crate::harness::{send_raw, Client, Fixture, Kind};
use crate::support::{Monitor, RedisServer};

/// Writes Redis applied since start (the dirty counter).
fn writes(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "persistence"]);
    info.lines()
        .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rdb_changes_since_last_save in INFO")
}

#[tokio::test]
async fn round_trips_and_writes_as_measured_by_redis() {
    let fx = Fixture::new(Kind::Redis);
    let server = fx.server();
    let mut monitor = Monitor::start(server);
    // On the bare backend, as users run it.
    let app = fx.bare_app(|l| l.touch_interval(Duration::from_millis(300)));
    let mut c = Client::new(app.clone());

    c.get("/untouched").await;
    c.get("/get/a").await;
    assert_eq!(
        monitor.take(),
        Vec::<String>::new(),
        "no cookie: no command"
    );

    // A create (NOSCRIPT once after a start, then EVAL); the save script
    // returns Redis's time, from which the layer learns the clock offset.
    c.post("/set/a/1").await;
    assert_eq!(monitor.take(), ["evalsha", "eval"]);

    // A read: one plain GET, no write.
    let w = writes(server);
    c.get("/get/a").await;
    assert_eq!(monitor.take(), ["get"], "read-only, touch not due");
    assert_eq!(writes(server), w, "and no write");

    // The first touch after a start: NOSCRIPT, then EVAL.
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.get("/get/a").await;
    assert_eq!(monitor.take(), ["get", "evalsha", "eval"]);

    // A read whose touch is due: the GET, then the touch script.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let w = writes(server);
    c.get("/get/a").await;
    assert_eq!(monitor.take(), ["get", "evalsha"], "read-only, touch due");
    assert!(writes(server) > w, "the touch wrote the new expiry");

    // Untouched with a cookie: the header alone.
    c.get("/untouched").await;
    assert_eq!(
        monitor.take(),
        ["getrange"],
        "cookie, untouched, touch not due"
    );

    c.post("/incr/a").await;
    assert_eq!(
        monitor.take(),
        ["get", "evalsha"],
        "read then write: two round trips"
    );

    c.post("/set/b/1").await;
    assert_eq!(monitor.take(), ["evalsha"], "blind write: one round trip");
    assert_eq!(server.command_calls().get("script|load"), None);
}

#[tokio::test]
async fn under_steady_traffic_the_touch_runs_at_most_once_per_interval() {
    let fx = Fixture::new(Kind::Redis);
    let mut monitor = Monitor::start(fx.server());
    let interval = Duration::from_millis(200);
    let app = fx.app(|l| {
        l.idle_timeout(Duration::from_secs(5))
            .touch_interval(interval)
    });
    let mut c = Client::new(app);
    // The save slides the expiry: the interval counts from it.
    let saved = std::time::Instant::now();
    c.post("/set/a/1").await;
    c.get("/get/a").await;
    monitor.take();

    let started = std::time::Instant::now();
    let mut reads = 0;
    while started.elapsed() < Duration::from_millis(1_500) {
        assert_eq!(c.get("/get/a").await.body, "1");
        reads += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = saved.elapsed();
    let sent = monitor.take();
    let gets = sent.iter().filter(|c| *c == "get").count();
    let touches = sent.iter().filter(|c| *c == "evalsha").count();
    // (The first touch after a start is EVALSHA, NOSCRIPT, then EVAL.)
    let evals = sent.iter().filter(|c| *c == "eval").count();
    assert_eq!(gets, reads, "one GET per read: {sent:?}");
    assert!(evals <= 1, "{sent:?}");
    assert_eq!(gets + touches + evals, sent.len(), "nothing else: {sent:?}");
    // The layer's estimate of Redis's clock may run ahead by half the
    // round trip it was measured over; on a loaded machine (this suite's
    // tests run in parallel on two cores) that reaches tens of ms, so a
    // touch may come up to ~50 ms early. Without the interval there would
    // be a touch per read (over a hundred).
    let slack = Duration::from_millis(50);
    let most = (elapsed.as_millis() / (interval - slack).as_millis()) as usize + 1;
    assert!(
        touches <= most,
        "{touches} touches in {elapsed:?} (at most {most})"
    );
    assert!(touches >= 3, "the expiry kept sliding: {touches} touches");
}

/// Reads alone keep a session alive across several idle timeouts, the
/// touch (decided from the header and the estimate of Redis's clock) stays
/// rare, and once reads stop the session ends by Redis's clock. (The
/// estimate never reads this host's wall clock, so a skewed or stepped host
/// clock cannot move it; see `time.rs`.)
#[tokio::test]
async fn touches_keep_a_session_alive_and_stay_rare() {
    let fx = Fixture::new(Kind::Redis);
    let mut monitor = Monitor::start(fx.server());
    let interval = Duration::from_millis(200);
    let app = fx.app(|l| {
        l.idle_timeout(Duration::from_millis(800))
            .touch_interval(interval)
    });
    let mut c = Client::new(app);
    let saved = std::time::Instant::now();
    c.post("/set/a/1").await;
    monitor.take();
    let mut reads = 0;
    while saved.elapsed() < Duration::from_millis(2_000) {
        // Longer than the idle timeout in all: only touches keep it alive.
        assert_eq!(c.get("/get/a").await.body, "1", "expired while active");
        reads += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = monitor.take();
    let touches = sent.iter().filter(|c| *c == "evalsha").count();
    let most = (saved.elapsed().as_millis() / interval.as_millis()) as usize + 1;
    assert!(
        touches <= most,
        "{touches} touches for {reads} reads (at most {most}): {sent:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(c.get("/get/a").await.body, "none", "idle too long");
}

#[tokio::test]
async fn redis_keys_do_not_reveal_session_ids() {
    let fx = Fixture::new(Kind::Redis);
    let server = fx.server();
    let mut c = Client::new(fx.app(|l| l));
    c.post("/set/a/1").await;
    let id = fx.first_session_id(c.cookie.as_ref().unwrap());
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains(&id), "{keys:?}");
    let value: Vec<u8> = server.cmd(&["GET", &keys[0]]);
    assert!(
        !String::from_utf8_lossy(&value).contains(&id),
        "the value holds no id"
    );
    let ttl: i64 = server.cmd(&["PTTL", &keys[0]]);
    assert!(ttl > 0, "every session key expires");
}

#[tokio::test]
async fn a_dead_redis_is_a_503_within_the_deadline_and_recovery_is_automatic() {
    let mut fx = Fixture::with_deadline(Kind::Redis, Duration::from_millis(200));
    let app = fx.app(|l| l);
    let mut c = Client::new(app.clone());
    c.post("/set/a/1").await;
    let cookie = c.cookie.clone().unwrap();

    fx.server_mut().kill();
    for path in ["/get/a", "/untouched", "/set/b/2"] {
        let method = if path.starts_with("/set") {
            "POST"
        } else {
            "GET"
        };
        let started = Instant::now();
        let r = send_raw(&app, method, path, Some(cookie.as_bytes())).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(r.body.contains("\"status\":503"), "{}", r.body);
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    // Without a cookie nothing needs Redis.
    let r = send_raw(&app, "GET", "/untouched", None).await;
    assert_eq!(r.status, StatusCode::OK);

    // Restarted (empty): the same layer works again without a rebuild.
    fx.server_mut().restart();
    let mut ok = false;
    for _ in 0..3 {
        let mut fresh = Client::new(app.clone());
        if fresh.post("/set/a/1").await.status == StatusCode::OK {
            assert_eq!(fresh.get("/get/a").await.body, "1");
            ok = true;
            break;
        }
    }
    assert!(ok, "the layer recovered after the restart");
}

#[tokio::test]
async fn fail_open_continues_without_a_session() {
    let mut fx = Fixture::with_deadline(Kind::Redis, Duration::from_millis(200));
    let app = fx.app(|l| l.on_store_error(FailurePolicy::Open));
    let mut c = Client::new(app.clone());
    c.post("/set/a/1").await;
    let cookie = c.cookie.clone().unwrap();
    fx.server_mut().kill();
    let r = send_raw(&app, "GET", "/get/a", Some(cookie.as_bytes())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "none");
    let r = send_raw(&app, "POST", "/set/a/2", Some(cookie.as_bytes())).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the save failure is logged, not returned"
    );
}

#[tokio::test]
async fn a_paused_redis_bounds_request_latency() {
    let fx = Fixture::with_deadline(Kind::Redis, Duration::from_millis(150));
    let server = fx.server();
    let app = fx.app(|l| l);
    let mut c = Client::new(app.clone());
    c.post("/set/a/1").await;
    let cookie = c.cookie.clone().unwrap();
    let _: () = server.cmd(&["CLIENT", "PAUSE", "1000", "ALL"]);
    let started = Instant::now();
    let r = send_raw(&app, "GET", "/get/a", Some(cookie.as_bytes())).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.get("/get/a").await.body,
        "1",
        "served again once Redis answers"
    );
}

#[tokio::test]
async fn scripts_survive_a_script_flush() {
    let fx = Fixture::new(Kind::Redis);
    let server = fx.server();
    let mut c = Client::new(fx.app(|l| l));
    c.post("/set/a/1").await;
    let _: () = server.cmd(&["SCRIPT", "FLUSH"]);
    assert_eq!(c.post("/incr/a").await.body, "2");
    assert_eq!(c.get("/get/a").await.body, "2");
    assert_eq!(server.command_calls().get("script|load"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_traffic_only_costs_the_outage() {
    let mut fx = Fixture::with_deadline(Kind::Redis, Duration::from_millis(200));
    let app = fx.app(|l| l);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // Each iteration: a fresh session written, then read back.
            let mut outcomes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let mut c = Client::new(app.clone());
                let w = c.post("/set/a/1").await.status;
                let r = if w == StatusCode::OK {
                    c.get("/get/a").await.body
                } else {
                    String::new()
                };
                outcomes.push((Instant::now(), w, r, started.elapsed()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    fx.server_mut().kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fx.server_mut().restart();
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut failures = 0;
    let mut after_recovery = 0;
    for t in tasks {
        for (started, status, body, took) in t.await.unwrap() {
            assert!(
                status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                "only success or a clean 503: {status}"
            );
            // Two requests, each within the 200 ms deadline plus slack.
            assert!(took < Duration::from_millis(900), "{took:?}");
            if status != StatusCode::OK {
                failures += 1;
            }
            if started > restarted + Duration::from_millis(300) {
                // Long after the restart every iteration works end to end.
                after_recovery += 1;
                assert_eq!(status, StatusCode::OK, "still failing after the restart");
                assert_eq!(body, "1", "a session written is read back");
            }
        }
    }
    assert!(failures > 0, "the outage was observed");
    assert!(after_recovery > 8, "traffic continued after the restart");
}
