//! Per-session expiry ("remember me", a shortened session) on every
//! backend: the store's TTL and the cookie's `Max-Age` follow the session's
//! own settings, through saves, touches and renewals.

use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;
use redis_layers::session::{Session, SessionError};
use redis_layers::Backend;

use crate::harness::{Client, Fixture};

const MIN: u64 = 60;
const DAY: u64 = 24 * 60 * MIN;

async fn remember(session: Session, Path(secs): Path<u64>) -> Result<&'static str, SessionError> {
    session.remember(Duration::from_secs(secs))?;
    session.insert("n", 1)?;
    Ok("ok")
}

async fn shorten(session: Session, Path(secs): Path<u64>) -> Result<&'static str, SessionError> {
    session.set_idle_timeout(Duration::from_secs(secs))?;
    Ok("ok")
}

async fn forget(session: Session) -> &'static str {
    session.reset_expiry();
    "ok"
}

/// The same two after reading the session (so the layer knows what they
/// change).
async fn remember_loaded(
    session: Session,
    Path(secs): Path<u64>,
) -> Result<&'static str, SessionError> {
    session.get::<u64>("n").await?;
    session.remember(Duration::from_secs(secs))?;
    Ok("ok")
}

async fn forget_loaded(session: Session) -> Result<&'static str, SessionError> {
    session.get::<u64>("n").await?;
    session.reset_expiry();
    Ok("ok")
}

async fn set(session: Session) -> Result<&'static str, SessionError> {
    session.insert("n", 1)?;
    Ok("ok")
}

async fn read(session: Session) -> Result<String, SessionError> {
    Ok(format!("{:?}", session.get::<u64>("n").await?))
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.cycle_id().await?;
    session.set_user("alice")?;
    Ok("ok")
}

async fn handle(session: Session) -> Result<String, SessionError> {
    Ok(session
        .id()
        .await?
        .map(|id| id.handle().as_str().to_owned())
        .unwrap_or_default())
}

fn routes() -> Router {
    Router::new()
        .route("/remember/{secs}", post(remember))
        .route("/shorten/{secs}", post(shorten))
        .route("/forget", post(forget))
        .route("/remember-loaded/{secs}", post(remember_loaded))
        .route("/forget-loaded", post(forget_loaded))
        .route("/set", post(set))
        .route("/read", get(read))
        .route("/untouched", get(|| async { "ok" }))
        .route("/login", post(login))
        .route("/handle", get(handle))
}

/// Idle 10 minutes, absolute 30 days; a touch whenever the expiry would
/// move by more than 1 ms, so every request slides it.
fn app(fx: &Fixture) -> Router {
    routes().layer(fx.layer(|l| {
        l.idle_timeout(Duration::from_secs(10 * MIN))
            .absolute_timeout(Duration::from_secs(30 * DAY))
            .touch_interval(Duration::from_millis(1))
    }))
}

/// The remaining TTLs, in seconds, of the stored sessions (not renewal
/// markers), smallest first: read from the store directly, since a request
/// that loads a session may slide its expiry and hide what set it.
fn ttls(fx: &Fixture) -> Vec<u64> {
    let mut out: Vec<u64> = fx
        .test
        .keys("session:*")
        .iter()
        .filter_map(|key| {
            let (value, ms): (Vec<u8>, i64) = match fx.backend() {
                Backend::Memory(memory) => memory.atomically(|ks| {
                    let ttl = ks.ttl(key).flatten().map_or(-1, |t| t.as_millis() as i64);
                    match ks.get(key) {
                        Some(redis_layers::memory::Value::Bytes(b)) => (b.clone(), ttl),
                        _ => (Vec::new(), ttl),
                    }
                }),
                _ => (
                    fx.test.key_cmd(key, &["GET", key]),
                    fx.test.key_cmd(key, &["PTTL", key]),
                ),
            };
            value
                .starts_with(b"S1")
                .then(|| (ms.max(0) as u64).div_ceil(1000))
        })
        .collect();
    out.sort_unstable();
    out
}

/// The TTL of the one stored session.
fn ttl(fx: &Fixture) -> u64 {
    let all = ttls(fx);
    assert_eq!(all.len(), 1, "one session: {all:?}");
    all[0]
}

/// The `Max-Age` of a `Set-Cookie`, if it has one.
fn max_age(set_cookie: &str) -> Option<u64> {
    set_cookie
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Max-Age="))
        .map(|v| v.parse().unwrap())
}

fn near(value: u64, want: u64) -> bool {
    value <= want && value + 5 >= want
}

crate::support::both_backends! { Fixture::new;
    remember_me_lengthens_one_session_and_makes_its_cookie_persistent => |fx| {
        let mut remembered = Client::new(app(&fx));
        let r = remembered.post(&format!("/remember/{}", 7 * DAY)).await;
        assert_eq!(r.status, StatusCode::OK);
        let age = max_age(r.set_cookie().unwrap()).expect("a persistent cookie");
        assert!(near(age, 30 * DAY), "Max-Age runs to the absolute deadline: {age}");
        assert!(near(ttl(&fx), 7 * DAY), "created with it");
        // Another session keeps the layer's settings.
        let mut plain = Client::new(app(&fx));
        let r = plain.post("/set").await;
        assert_eq!(max_age(r.set_cookie().unwrap()), None, "a browser-session cookie");
        let both = ttls(&fx);
        assert!(near(both[0], 10 * MIN) && near(both[1], 7 * DAY), "{both:?}");
    }

    the_sliding_touch_keeps_the_sessions_own_idle_timeout => |fx| {
        let mut c = Client::new(app(&fx));
        c.post(&format!("/remember/{}", 7 * DAY)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A read (a full load, then a touch) and a request that does not use
        // the session (a touch of the header alone): both slide by 7 days.
        assert_eq!(c.get("/read").await.body, "Some(1)");
        assert!(near(ttl(&fx), 7 * DAY));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = c.get("/untouched").await;
        assert_eq!(r.set_cookie(), None, "a touch re-sends no cookie");
        assert!(near(ttl(&fx), 7 * DAY));
        // A write slides by it too.
        c.post("/set").await;
        assert!(near(ttl(&fx), 7 * DAY));
    }

    a_session_can_be_shortened_and_stays_short => |fx| {
        let mut c = Client::new(app(&fx));
        c.post("/set").await;
        assert!(near(ttl(&fx), 10 * MIN));
        let r = c.post("/shorten/120").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.set_cookie(), None, "the cookie stays as it was");
        assert!(near(ttl(&fx), 120));
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.get("/untouched").await;
        assert!(near(ttl(&fx), 120), "a touch keeps it short");
        c.get("/read").await;
        assert!(near(ttl(&fx), 120));
    }

    a_renewal_keeps_the_sessions_own_expiry => |fx| {
        let mut c = Client::new(app(&fx));
        c.post(&format!("/remember/{}", 7 * DAY)).await;
        let before = c.cookie.clone();
        let r = c.post("/login").await;
        assert_ne!(c.cookie, before, "a new id");
        let age = max_age(r.set_cookie().unwrap()).expect("still persistent");
        assert!(near(age, 30 * DAY), "{age}");
        assert!(near(ttl(&fx), 7 * DAY));
    }

    forgetting_returns_to_the_layers_settings => |fx| {
        let mut c = Client::new(app(&fx));
        c.post(&format!("/remember/{}", 7 * DAY)).await;
        let r = c.post("/forget").await;
        let set = r.set_cookie().expect("the cookie re-sent as a browser-session cookie");
        assert_eq!(max_age(set), None, "{set}");
        assert!(c.cookie.is_some(), "the same session");
        assert_eq!(c.get("/read").await.body, "Some(1)");
        assert!(near(ttl(&fx), 10 * MIN));
    }

    an_idle_timeout_is_cut_to_the_absolute_deadline => |fx| {
        let mut c = Client::new(app(&fx));
        c.post(&format!("/remember/{}", 365 * DAY)).await;
        assert!(near(ttl(&fx), 30 * DAY));
    }

    an_idle_timeout_within_the_touch_interval_is_refused => |fx| {
        let app = routes().layer(fx.layer(|l| {
            l.idle_timeout(Duration::from_secs(10 * MIN))
                .touch_interval(Duration::from_secs(MIN))
        }));
        let mut c = Client::new(app);
        c.post("/set").await;
        for secs in [30, 60, 0] {
            let r = c.post(&format!("/shorten/{secs}")).await;
            assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{secs}: a programming error");
            assert!(r.is_problem());
        }
        assert!(near(ttl(&fx), 10 * MIN), "nothing saved");
        assert_eq!(c.post("/shorten/61").await.status, StatusCode::OK);
        assert!(near(ttl(&fx), 61));
    }

    a_persistence_change_re_sends_the_cookie_only_when_it_changes => |fx| {
        let mut c = Client::new(app(&fx));
        c.post(&format!("/remember/{}", 7 * DAY)).await;
        let r = c.post(&format!("/remember-loaded/{}", 7 * DAY)).await;
        assert_eq!(r.set_cookie(), None, "already persistent");
        let r = c.post("/forget-loaded").await;
        assert_eq!(max_age(r.set_cookie().expect("now a browser-session cookie")), None);
        let r = c.post("/forget-loaded").await;
        assert_eq!(r.set_cookie(), None, "nothing changed");
        // Without a read the layer cannot tell: it sends the cookie.
        let r = c.post("/forget").await;
        assert_eq!(max_age(r.set_cookie().expect("sent")), None);
    }

    instances_with_other_layer_settings_do_not_undo_each_others_touches => |fx| {
        // Another instance (or the next deploy) with a 2-minute setting
        // shares the session: the plain touch rule, so neither side moves
        // the expiry earlier on every request.
        let mut c = Client::new(app(&fx));
        c.post("/set").await;
        assert!(near(ttl(&fx), 10 * MIN));
        let shorter = routes().layer(fx.layer(|l| {
            l.idle_timeout(Duration::from_secs(2 * MIN))
                .absolute_timeout(Duration::from_secs(30 * DAY))
                .touch_interval(Duration::from_millis(1))
        }));
        let mut other = Client::new(shorter);
        other.cookie = c.cookie.clone();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(other.get("/untouched").await.status, StatusCode::OK);
        assert_eq!(other.get("/read").await.body, "Some(1)");
        assert!(near(ttl(&fx), 10 * MIN), "{:?}", ttls(&fx));
    }
}

/// What a touch by an older version of the crate leaves on a session with
/// its own idle timeout (it does not know it): the expiry slid by the
/// layer's `idle`, from the store's time now.
fn slide_as_an_older_version(fx: &Fixture, idle: Duration) {
    let keys = fx.test.keys("session:*");
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    let header = |now: u64| -> Vec<u8> {
        let expires = now + idle.as_millis() as u64;
        [(expires as f64).to_be_bytes(), (now as f64).to_be_bytes()].concat()
    };
    match fx.backend() {
        Backend::Memory(memory) => memory.atomically(|ks| {
            let now = ks.now_millis();
            let Some(redis_layers::memory::Value::Bytes(b)) = ks.get_mut(key) else {
                panic!("a session")
            };
            b[2..18].copy_from_slice(&header(now));
            ks.expire_at_millis(key, now + idle.as_millis() as u64);
        }),
        _ => {
            let mut admin = fx.server().admin();
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut admin).unwrap();
            let now = secs * 1000 + micros / 1000;
            let _: () = redis::cmd("SETRANGE")
                .arg(key)
                .arg(2)
                .arg(header(now))
                .query(&mut admin)
                .unwrap();
            let _: () = redis::cmd("PEXPIRE")
                .arg(key)
                .arg(idle.as_millis() as u64)
                .query(&mut admin)
                .unwrap();
        }
    }
}

/// A session with its own idle timeout that an older version slid by the
/// layer's (during a rolling deploy) gets its own back at the next touch of
/// a full load, even though that moves the expiry.
#[tokio::test]
async fn a_touch_restores_an_own_idle_timeout_an_older_version_ignored() {
    for kind in [crate::support::Kind::Memory, crate::support::Kind::Redis] {
        for own in [7 * DAY, 2 * MIN] {
            let fx = Fixture::new(kind);
            let mut c = Client::new(app(&fx));
            c.post("/set").await;
            c.post(&format!("/shorten/{own}")).await;
            assert!(near(ttl(&fx), own));
            slide_as_an_older_version(&fx, Duration::from_secs(10 * MIN));
            assert!(near(ttl(&fx), 10 * MIN));
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(c.get("/read").await.body, "Some(1)");
            assert!(near(ttl(&fx), own), "{kind:?} {own}: {:?}", ttls(&fx));
        }
    }
}

/// On Redis, a check of the header alone (a request that does not use the
/// session) decides like a full load: a session's own idle timeout, longer
/// or shorter than the layer's, slides at most once per touch interval and
/// keeps sliding, with nothing but `GETRANGE` between touches.
#[tokio::test]
async fn the_header_alone_decides_touches_by_the_sessions_own_idle_timeout() {
    let interval = Duration::from_millis(200);
    for own in [60, 2] {
        let fx = Fixture::new(crate::support::Kind::Redis);
        let app = routes().layer(fx.layer(|l| {
            l.idle_timeout(Duration::from_secs(10))
                .touch_interval(interval)
        }));
        let mut c = Client::new(app);
        let r = c.post(&format!("/remember/{own}")).await;
        assert_eq!(r.status, StatusCode::OK);
        let mut monitor = crate::support::Monitor::start(fx.server());
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(1_500) {
            assert_eq!(c.get("/untouched").await.status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = started.elapsed();
        let sent = monitor.take();
        let touches = sent.iter().filter(|c| c.starts_with("eval")).count();
        let checks = sent.iter().filter(|c| *c == "getrange").count();
        assert_eq!(checks + touches, sent.len(), "own {own}s: {sent:?}");
        // (Up to ~50 ms early: the estimate of Redis's clock; see
        // `under_steady_traffic_the_touch_runs_at_most_once_per_interval`.)
        let most = (elapsed.as_millis() / (interval.as_millis() - 50)) as usize + 2;
        assert!(
            touches <= most,
            "own {own}s: {touches} touches in {elapsed:?}"
        );
        assert!(
            touches >= 3,
            "own {own}s: the expiry kept sliding: {sent:?}"
        );
        assert!(near(ttl(&fx), own), "own {own}s");
    }
}
