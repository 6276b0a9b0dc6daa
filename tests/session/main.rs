//! Session behaviour, one suite run against a real Redis and the memory
//! backend; Redis-only tests (round trips by `INFO commandstats`, faults)
//! live in `redis_only.rs`.

#[path = "../support/mod.rs"]
mod support;

mod conveniences;
mod expiry;
mod harness;
mod redis_only;

use std::time::Duration;

use harness::{Client, Fixture};
use http::StatusCode;
use redis_layers::session::{Activity, Key};

#[tokio::test]
async fn settings_are_checked_when_the_layer_is_built() {
    use redis_layers::memory::MemoryBackend;
    use redis_layers::session::{SameSite, SessionLayer};
    use redis_layers::ErrorKind;

    let store = MemoryBackend::new();
    let build = |f: &dyn Fn(
        redis_layers::session::SessionLayerBuilder,
    ) -> redis_layers::session::SessionLayerBuilder| {
        f(SessionLayer::builder(store.clone())).build()
    };
    assert!(build(&|b| b).is_ok(), "the defaults are valid");
    let cases: Vec<(&str, Box<dyn Fn(_) -> _>)> = vec![
        (
            "cookie name",
            Box::new(|b: redis_layers::session::SessionLayerBuilder| b.cookie_name("a b")),
        ),
        (
            "cookie domain",
            Box::new(|b: redis_layers::session::SessionLayerBuilder| b.cookie_domain("bad;domain")),
        ),
        (
            "cookie path",
            Box::new(|b: redis_layers::session::SessionLayerBuilder| b.cookie_path("no-slash")),
        ),
        (
            "SameSite=None without Secure",
            Box::new(|b: redis_layers::session::SessionLayerBuilder| {
                b.same_site(SameSite::None).secure(false)
            }),
        ),
        (
            "idle > absolute",
            Box::new(|b: redis_layers::session::SessionLayerBuilder| {
                b.idle_timeout(Duration::from_secs(7200))
                    .absolute_timeout(Duration::from_secs(3600))
            }),
        ),
        (
            "touch >= idle",
            Box::new(|b: redis_layers::session::SessionLayerBuilder| {
                b.idle_timeout(Duration::from_secs(60))
                    .touch_interval(Duration::from_secs(60))
            }),
        ),
        (
            "zero idle",
            Box::new(|b: redis_layers::session::SessionLayerBuilder| {
                b.idle_timeout(Duration::ZERO)
            }),
        ),
    ];
    for (what, configure) in cases {
        let err = build(&*configure).expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Config, "{what}: {err}");
    }
}

#[tokio::test]
async fn a_missing_layer_is_a_500_naming_it() {
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let app = axum::Router::new().route(
        "/",
        get(|_s: redis_layers::session::Session| async { "unreachable" }),
    );
    let res = app
        .oneshot(
            http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("SessionLayer"));
}

support::both_backends! { Fixture::new;
    no_cookie_and_untouched_costs_nothing => |fx| {
        let mut c = Client::new(fx.app(|l| l));
        let r = c.get("/untouched").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.set_cookie(), None, "no cookie set for an untouched session");
        // Reading without a cookie needs no store either: there is no id to load.
        let r = c.get("/get/a").await;
        assert_eq!(r.body, "none");
        assert_eq!(fx.store_calls(), 0);
    }

    a_session_is_created_only_when_it_holds_data => |fx| {
        let mut c = Client::new(fx.app(|l| l));
        c.post("/remove/a").await;
        assert_eq!(c.cookie, None);
        assert_eq!(fx.store_calls(), 0);
        let r = c.post("/set/a/1").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(c.cookie.is_some());
        assert_eq!(fx.store_calls(), 1, "one create");
        assert_eq!(c.get("/get/a").await.body, "1");
    }

    cookie_attributes_and_cache_control => |fx| {
        let mut c = Client::new(fx.app(|l| l));
        let r = c.post("/set/a/1").await;
        let set = r.set_cookie().unwrap();
        for attr in ["id=", "HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(!set.contains("Max-Age"), "browser-session cookie by default: {set}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        // A read-only request does not re-send the cookie.
        let r = c.get("/get/a").await;
        assert_eq!(r.set_cookie(), None);
    }

    custom_cookie_settings_are_used => |fx| {
        let app = fx.app(|l| {
            l.cookie_name("sid")
                .cookie_domain("example.com")
                .cookie_path("/")
                .same_site(redis_layers::session::SameSite::Strict)
                .secure(false)
        });
        let r = harness::send_raw(&app, "POST", "/set/a/1", None).await;
        let set = r.set_cookie().unwrap();
        assert!(set.starts_with("sid="), "{set}");
        for attr in ["Domain=example.com", "SameSite=Strict", "HttpOnly"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(!set.contains("Secure"), "{set}");
        let pair = set.split(';').next().unwrap().to_owned();
        let r = harness::send_raw(&app, "GET", "/get/a", Some(pair.as_bytes())).await;
        assert_eq!(r.body, "1");
        // The default name means nothing to this layer.
        let renamed = pair.replacen("sid=", "id=", 1);
        let r = harness::send_raw(&app, "GET", "/get/a", Some(renamed.as_bytes())).await;
        assert_eq!(r.body, "none");
    }

    values_round_trip_with_types => |fx| {
        let mut c = Client::new(fx.app(|l| l));
        c.post("/set/n/41").await;
        c.post("/incr/n").await;
        assert_eq!(c.get("/get/n").await.body, "42");
        c.post("/set/s/%22text%22").await;
        assert_eq!(c.get("/get/s").await.body, "\"text\"");
        c.post("/remove/n").await;
        assert_eq!(c.get("/get/n").await.body, "none");
        assert_eq!(c.get("/get/s").await.body, "\"text\"");
        c.post("/clear").await;
        assert_eq!(c.get("/get/s").await.body, "none");
    }

    a_wrongly_typed_value_is_a_problem_not_a_panic => |fx| {
        let mut c = Client::new(fx.app(|l| l));
        c.post("/set/n/%22not-a-number%22").await;
        let r = c.post("/incr/n").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(c.get("/get/n").await.body, "\"not-a-number\"", "5xx saved nothing");
    }

    round_trips_per_request_kind => |fx| {
        let mut c = Client::new(fx.app(|l| l.touch_interval(Duration::from_secs(600))));
        c.post("/set/a/1").await;
        let base = fx.store_calls();
        c.get("/get/a").await;
        assert_eq!(fx.store_calls() - base, 1, "read-only: one load");
        let base = fx.store_calls();
        c.get("/untouched").await;
        assert_eq!(fx.store_calls() - base, 1, "cookie but untouched: one touch");
        let base = fx.store_calls();
        c.post("/incr/a").await;
        assert_eq!(fx.store_calls() - base, 2, "read then write: load + save");
        let base = fx.store_calls();
        c.post("/set/b/2").await;
        assert_eq!(fx.store_calls() - base, 1, "blind write: one save");
        assert_eq!(c.get("/get/a").await.body, "2");
        assert_eq!(c.get("/get/b").await.body, "2");
    }

    session_read_activity_skips_the_touch => |fx| {
        let mut c = Client::new(fx.app(|l| l.activity(Activity::SessionRead)));
        c.post("/set/a/1").await;
        let base = fx.store_calls();
        c.get("/untouched").await;
        assert_eq!(fx.store_calls() - base, 0);
    }

    bad_cookies_are_no_session => |fx| {
        let app = fx.app(|l| l);
        let mut real = Client::new(app.clone());
        real.post("/set/a/secret").await;
        let good = real.cookie.clone().unwrap();
        let other = {
            let mut c = Client::new(app.clone());
            c.post("/set/a/other").await;
            c.cookie.unwrap()
        };
        let base = fx.store_calls();
        let unknown = format!("id={}", "A".repeat(32));
        let cases: Vec<Vec<u8>> = vec![
            b"id=".to_vec(),
            b"id=short".to_vec(),
            format!("id={}", "x".repeat(100_000)).into_bytes(),
            format!("{good}; {other}").into_bytes(),
            format!("{good}; {good}").into_bytes(),
            format!("{}.", good).into_bytes(),
            b"id=\xff\xfe\xfd".to_vec(),
            b";;;;====;;".to_vec(),
            b"id=!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!".to_vec(),
        ];
        for raw in &cases {
            let r = harness::send_raw(&app, "GET", "/get/a", Some(raw)).await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(r.body, "none", "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(fx.store_calls() - base, 0, "malformed cookies never reach the store");
        // Well-formed but unknown: one lookup, no session, cookie dropped.
        let r = harness::send_raw(&app, "GET", "/get/a", Some(unknown.as_bytes())).await;
        assert_eq!(r.body, "none");
        assert!(r.set_cookie().unwrap().contains("Max-Age=0"));
        // The real session is untouched by all of that.
        assert_eq!(real.get("/get/a").await.body, "\"secret\"");
    }

    an_unknown_id_never_becomes_a_session => |fx| {
        let app = fx.app(|l| l);
        let chosen = format!("id={}", "B".repeat(32));
        let r = harness::send_raw(&app, "POST", "/set/a/1", Some(chosen.as_bytes())).await;
        assert_eq!(r.status, StatusCode::OK);
        let set = r.set_cookie().unwrap_or_default();
        // A blind write to an id the store does not know drops the cookie and
        // never creates a session under the client's chosen id.
        assert!(!set.contains(&"B".repeat(32)) || set.contains("Max-Age=0"), "{set}");
        let r = harness::send_raw(&app, "GET", "/get/a", Some(chosen.as_bytes())).await;
        assert_eq!(r.body, "none");
    }

    signed_cookies_reject_forgeries_and_rotate => |fx| {
        let old = Key::generate();
        let new = Key::generate();
        let old_app = fx.app(|l| l.signing_keys([old.clone()]));
        let mut c = Client::new(old_app);
        c.post("/set/a/1").await;
        let signed = c.cookie.clone().unwrap();
        assert!(signed.len() > "id=".len() + 32, "{signed}");

        let rotated = fx.app(|l| l.signing_keys([new.clone(), old.clone()]));
        let r = harness::send_raw(&rotated, "GET", "/get/a", Some(signed.as_bytes())).await;
        assert_eq!(r.body, "1", "old keys still verify");

        // The bare id (signature stripped) is refused.
        let id = fx.first_session_id(&signed);
        let bare = format!("id={id}");
        let r = harness::send_raw(&rotated, "GET", "/get/a", Some(bare.as_bytes())).await;
        assert_eq!(r.body, "none");

        let only_new = fx.app(|l| l.signing_keys([new.clone()]));
        let r = harness::send_raw(&only_new, "GET", "/get/a", Some(signed.as_bytes())).await;
        assert_eq!(r.body, "none", "retired keys no longer verify");
    }

    cycle_id_moves_the_data_and_kills_the_old_id => |fx| {
        let app = fx.app(|l| l);
        let mut c = Client::new(app.clone());
        c.post("/set/cart/3").await;
        let before = c.cookie.clone().unwrap();
        let r = c.post("/login/alice").await;
        assert_eq!(r.status, StatusCode::OK);
        let after = c.cookie.clone().unwrap();
        assert_ne!(before, after, "a new id after login");
        assert_eq!(c.get("/get/cart").await.body, "3", "data moved");
        assert_eq!(c.get("/user").await.body, "alice");
        let r = harness::send_raw(&app, "GET", "/get/cart", Some(before.as_bytes())).await;
        assert_eq!(r.body, "none", "the old id is dead");
    }

    a_failed_renewal_loses_nothing => |fx| {
        let app = fx.app(|l| l);
        let mut c = Client::new(app.clone());
        c.post("/set/cart/3").await;
        let old = c.cookie.clone().unwrap();
        // The new record is written, then deleting the old one fails.
        fx.fail_deletes.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = c.post("/login/alice").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.set_cookie(), None, "the failed response carries no new cookie");
        fx.fail_deletes.store(false, std::sync::atomic::Ordering::SeqCst);
        // The client still holds the old id, and it still works.
        assert_eq!(c.cookie.as_deref(), Some(old.as_str()));
        assert_eq!(c.get("/get/cart").await.body, "3");
    }

    destroy_logs_out_server_side => |fx| {
        let app = fx.app(|l| l);
        let mut c = Client::new(app.clone());
        c.post("/login/bob").await;
        c.post("/set/a/1").await;
        let cookie = c.cookie.clone().unwrap();
        let r = c.post("/logout").await;
        assert!(r.set_cookie().unwrap().contains("Max-Age=0"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(c.cookie, None);
        // Replaying the old cookie finds nothing.
        let r = harness::send_raw(&app, "GET", "/get/a", Some(cookie.as_bytes())).await;
        assert_eq!(r.body, "none");
        let mut other = Client::new(app);
        other.post("/login/bob").await;
        assert_eq!(other.get("/sessions").await.body.matches("handle").count(), 1);
    }

    no_save_on_server_errors => |fx| {
        let mut c = Client::new(fx.app(|l| l));
        c.post("/set/a/1").await;
        let r = c.post("/fail/a/2").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(c.get("/get/a").await.body, "1");
        let mut fresh = Client::new(fx.app(|l| l));
        let r = fresh.post("/fail/a/2").await;
        assert_eq!(r.set_cookie(), None, "no session created by a failed request");
    }

    idle_timeout_slides_with_activity => |fx| {
        let mut c = Client::new(fx.app(|l| {
            l.idle_timeout(Duration::from_millis(600)).touch_interval(Duration::from_millis(100))
        }));
        c.post("/set/a/1").await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Reads keep it alive past the idle timeout.
            assert_eq!(c.get("/get/a").await.body, "1");
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(c.get("/get/a").await.body, "none", "idle too long");
    }

    untouched_requests_count_as_activity => |fx| {
        let mut c = Client::new(fx.app(|l| {
            l.idle_timeout(Duration::from_millis(600)).touch_interval(Duration::from_millis(100))
        }));
        c.post("/set/a/1").await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(c.get("/untouched").await.status, StatusCode::OK);
        }
        assert_eq!(c.get("/get/a").await.body, "1");
    }

    the_absolute_timeout_ends_an_active_session => |fx| {
        let mut c = Client::new(fx.app(|l| {
            l.idle_timeout(Duration::from_millis(800))
                .absolute_timeout(Duration::from_millis(1000))
                .touch_interval(Duration::from_millis(50))
        }));
        c.post("/set/a/1").await;
        let mut alive_after = Duration::ZERO;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(1800) {
            if c.get("/get/a").await.body == "1" {
                alive_after = started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(alive_after >= Duration::from_millis(700), "{alive_after:?}");
        assert!(alive_after < Duration::from_millis(1100), "{alive_after:?}");
    }

    persistent_cookies_last_until_the_deadline_and_are_never_resent => |fx| {
        let mut c = Client::new(fx.app(|l| {
            l.persistent(true)
                .idle_timeout(Duration::from_secs(600))
                .absolute_timeout(Duration::from_secs(3600))
                .touch_interval(Duration::from_millis(300))
        }));
        let r = c.post("/set/a/1").await;
        let set = r.set_cookie().unwrap();
        assert!(set.contains("Max-Age=3599") || set.contains("Max-Age=3600"), "{set}");
        let r = c.get("/get/a").await;
        assert_eq!(r.set_cookie(), None, "touch not due: no Set-Cookie");
        tokio::time::sleep(Duration::from_millis(500)).await;
        for path in ["/get/a", "/untouched", "/set/b/2"] {
            let r = if path.starts_with("/set") { c.post(path).await } else { c.get(path).await };
            assert_eq!(r.set_cookie(), None, "{path}: the slid expiry is the store's business");
            assert_ne!(r.header("cache-control"), Some("no-store"), "{path}");
        }
    }

    a_renewed_persistent_cookie_keeps_the_original_deadline => |fx| {
        let mut c = Client::new(fx.app(|l| {
            l.persistent(true)
                .idle_timeout(Duration::from_secs(10))
                .absolute_timeout(Duration::from_secs(10))
                .touch_interval(Duration::from_secs(1))
        }));
        c.post("/set/a/1").await;
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let set = c.post("/login/pat").await.set_cookie().unwrap().to_owned();
        let max_age: u64 = set
            .split(';')
            .find_map(|a| a.trim().strip_prefix("Max-Age="))
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=8).contains(&max_age), "the deadline was kept: {set}");
    }

    a_logout_after_the_response_still_ends_the_session => |fx| {
        let mut c = Client::new(fx.app(|l| l));
        c.post("/set/a/1").await;
        c.post("/late-logout").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(c.get("/get/a").await.body, "none");
        assert_eq!(fx.session_count(), 0);
    }

    a_change_after_the_response_is_refused => |fx| {
        let mut c = Client::new(fx.app(|l| l));
        c.post("/set/a/1").await;
        c.post("/late-insert").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(c.get("/get/late").await.body, "none", "never saved");
        // The late task saw the refusal (entries from other tests are true
        // too, or are logouts that succeeded: all must be true).
        let results = harness::LATE_RESULTS.lock().unwrap().clone();
        assert!(!results.is_empty() && results.iter().all(|r| *r), "{results:?}");
    }

    concurrent_field_saves_from_two_layers_all_persist => |fx| {
        let a = fx.app(|l| l);
        let b = fx.app(|l| l);
        let mut c = Client::new(a.clone());
        c.post("/set/seed/0").await;
        let cookie = c.cookie.clone().unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            let cookie = cookie.clone();
            tasks.push(tokio::spawn(async move {
                // Each request reads the session, then changes its own key.
                let path = format!("/incr/k{i}");
                harness::send_raw(&app, "POST", &path, Some(cookie.as_bytes())).await.status
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
        for i in 0..40 {
            assert_eq!(c.get(&format!("/get/k{i}")).await.body, "1", "k{i} lost");
        }
        assert_eq!(c.get("/get/seed").await.body, "0");
    }

    a_save_never_resurrects_a_destroyed_session => |fx| {
        let app = fx.app(|l| l);
        let mut c = Client::new(app.clone());
        c.post("/set/a/1").await;
        let cookie = c.cookie.clone().unwrap();
        // A slow request writes after the session was destroyed.
        let slow = {
            let app = app.clone();
            let cookie = cookie.clone();
            tokio::spawn(async move {
                harness::send_raw(&app, "POST", "/slow-set/b/2", Some(cookie.as_bytes())).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.post("/logout").await;
        let r = slow.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.set_cookie().unwrap_or_default().contains("Max-Age=0"));
        let r = harness::send_raw(&app, "GET", "/get/b", Some(cookie.as_bytes())).await;
        assert_eq!(r.body, "none");
        assert_eq!(fx.session_count(), 0, "nothing left in the store");
    }

    users_list_and_revoke_their_sessions => |fx| {
        let app = fx.app(|l| l);
        let mut laptop = Client::with_agent(app.clone(), "Laptop/1.0");
        let mut phone = Client::with_agent(app.clone(), "Phone/2.0");
        let mut tablet = Client::with_agent(app.clone(), "Tablet/3.0");
        for c in [&mut laptop, &mut phone, &mut tablet] {
            c.post("/login/carol").await;
        }
        let mut intruder = Client::new(app.clone());
        intruder.post("/login/mallory").await;

        let list: serde_json::Value = serde_json::from_str(&laptop.get("/sessions").await.body).unwrap();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 3);
        let agents: Vec<&str> = list.iter().map(|s| s["user_agent"].as_str().unwrap()).collect();
        assert!(agents.contains(&"Phone/2.0") && agents.contains(&"Tablet/3.0"), "{agents:?}");
        assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
        let phone_handle = list.iter().find(|s| s["user_agent"] == "Phone/2.0").unwrap()["handle"]
            .as_str().unwrap().to_owned();

        // Another user cannot revoke carol's session.
        let r = intruder.post(&format!("/revoke/{phone_handle}")).await;
        assert_eq!(r.body, "false");
        assert_eq!(phone.get("/user").await.body, "carol");
        // Malformed handles are refused without a store error.
        assert_eq!(laptop.post("/revoke/not-a-handle").await.body, "false");

        assert_eq!(laptop.post(&format!("/revoke/{phone_handle}")).await.body, "true");
        assert_eq!(phone.get("/user").await.body, "none", "revoked");
        assert_eq!(laptop.post("/revoke-others").await.body, "1");
        assert_eq!(tablet.get("/user").await.body, "none");
        assert_eq!(laptop.get("/user").await.body, "carol", "the current session stays");
        let list: serde_json::Value = serde_json::from_str(&laptop.get("/sessions").await.body).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
    }

    huge_timeouts_are_cut_not_broken => |fx| {
        let app = fx.app(|l| {
            l.idle_timeout(Duration::MAX)
                .absolute_timeout(Duration::MAX)
                .touch_interval(Duration::from_secs(3600))
                .persistent(true)
        });
        let mut c = Client::new(app);
        let r = c.post("/login/max").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(c.get("/user").await.body, "max");
        let list: serde_json::Value = serde_json::from_str(&c.get("/sessions").await.body).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
    }

    long_user_agents_are_cut_to_256_bytes => |fx| {
        let app = fx.app(|l| l);
        let long = "A".repeat(5000);
        let mut c = Client::with_agent(app, &long);
        c.post("/login/ua").await;
        let list: serde_json::Value = serde_json::from_str(&c.get("/sessions").await.body).unwrap();
        let ua = list[0]["user_agent"].as_str().unwrap();
        assert_eq!(ua.len(), 256);
    }

    concurrent_renewals_leave_exactly_one_successor => |fx| {
        // A double-submitted login, forty times over, through two instances
        // on the bare backend (the layer calls this crate's store directly).
        let a = fx.bare_app(|l| l);
        let b = fx.bare_app(|l| l);
        let mut c = Client::new(a.clone());
        c.post("/set/cart/3").await;
        let old = c.cookie.clone().unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            let old = old.clone();
            tasks.push(tokio::spawn(async move {
                harness::send_raw(&app, "POST", "/login/alice", Some(old.as_bytes())).await
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let r = t.await.unwrap();
            match r.status {
                StatusCode::OK => winners.push(r.set_cookie().expect("the winner's new cookie").to_owned()),
                StatusCode::CONFLICT => {
                    assert_eq!(r.set_cookie(), None, "a loser sends no cookie");
                    assert_eq!(r.header("content-type"), Some("application/problem+json"));
                }
                other => panic!("unexpected {other}: {}", r.body),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one renewal wins: {winners:?}");
        assert_eq!(fx.session_count(), 1, "exactly one live session: no forks");
        assert_eq!(fx.index_len("alice"), 1, "and one entry in the user's index");
        let new = winners[0].split(';').next().unwrap().to_owned();
        let r = harness::send_raw(&a, "GET", "/get/cart", Some(new.as_bytes())).await;
        assert_eq!(r.body, "3", "the successor holds the data");
        let r = harness::send_raw(&b, "GET", "/user", Some(new.as_bytes())).await;
        assert_eq!(r.body, "alice");
        let r = harness::send_raw(&a, "GET", "/get/cart", Some(old.as_bytes())).await;
        assert_eq!(r.body, "none", "the old id is dead");
    }

    requests_with_a_just_renewed_cookie_leave_it_alone => |fx| {
        let app = fx.app(|l| l);
        let mut c = Client::new(app.clone());
        c.post("/set/a/1").await;
        let old = c.cookie.clone().unwrap();
        c.post("/login/ivy").await;
        // A request sent with the old cookie before the login's response
        // arrived: no session, and no removal cookie that would clobber
        // the new one in the browser.
        let r = harness::send_raw(&app, "GET", "/get/a", Some(old.as_bytes())).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "none"));
        assert_eq!(r.set_cookie(), None);
        let r = harness::send_raw(&app, "GET", "/untouched", Some(old.as_bytes())).await;
        assert_eq!(r.set_cookie(), None);
        // A write with it would be lost (or fork the session): 409.
        for path in ["/set/b/2", "/incr/b", "/login/ivy"] {
            let r = harness::send_raw(&app, "POST", path, Some(old.as_bytes())).await;
            assert_eq!(r.status, StatusCode::CONFLICT, "{path}");
            assert_eq!(r.set_cookie(), None, "{path}");
        }
        assert_eq!(fx.session_count(), 1);
        assert_eq!(c.get("/get/a").await.body, "1", "the successor is untouched");
        assert_eq!(c.get("/get/b").await.body, "none");
    }

    a_logout_with_the_cookie_a_login_just_replaced_ends_the_new_session => |fx| {
        let app = fx.app(|l| l);
        let mut c = Client::new(app.clone());
        c.post("/set/a/1").await;
        let old = c.cookie.clone().unwrap();
        c.post("/login/kim").await;
        let new = c.cookie.clone().unwrap();
        // The logout was sent before the login's response arrived.
        let r = harness::send_raw(&app, "POST", "/logout", Some(old.as_bytes())).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.set_cookie().unwrap().contains("Max-Age=0"));
        let r = harness::send_raw(&app, "GET", "/user", Some(new.as_bytes())).await;
        assert_eq!(r.body, "none", "the successor is logged out too");
        assert_eq!(fx.session_count(), 0);
    }

    a_renewal_past_the_absolute_deadline_ends_the_session => |fx| {
        let app = fx.app(|l| {
            l.idle_timeout(Duration::from_millis(500))
                .absolute_timeout(Duration::from_millis(500))
                .touch_interval(Duration::from_millis(100))
        });
        let mut c = Client::new(app.clone());
        c.post("/set/a/1").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Loads the session, then outlives its deadline before renewing it.
        let r = c.post("/slow-login/lee").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.set_cookie().unwrap_or_default().contains("Max-Age=0"));
        assert_eq!(fx.session_count(), 0);
    }

    an_empty_user_agent_is_none => |fx| {
        let app = fx.app(|l| l);
        let mut c = Client::with_agent(app, "");
        c.post("/login/eve").await;
        let list: serde_json::Value = serde_json::from_str(&c.get("/sessions").await.body).unwrap();
        assert_eq!(list[0]["user_agent"], serde_json::Value::Null);
    }

    a_renewal_keeps_a_change_saved_while_it_ran => |fx| {
        let app = fx.app(|l| l);
        let mut c = Client::new(app.clone());
        c.post("/set/a/1").await;
        let old = c.cookie.clone().unwrap();
        // A login that reads the session, then takes its time.
        let login = {
            let app = app.clone();
            let old = old.clone();
            tokio::spawn(async move {
                harness::send_raw(&app, "POST", "/slow-login/erin", Some(old.as_bytes())).await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Meanwhile another request saves a change to the old session.
        let r = harness::send_raw(&app, "POST", "/set/b/2", Some(old.as_bytes())).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = login.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let new = r.set_cookie().unwrap().split(';').next().unwrap().to_owned();
        let r = harness::send_raw(&app, "GET", "/get/b", Some(new.as_bytes())).await;
        assert_eq!(r.body, "2", "the renewal copied the change made after its read");
        let r = harness::send_raw(&app, "GET", "/get/a", Some(new.as_bytes())).await;
        assert_eq!(r.body, "1");
        assert_eq!(fx.session_count(), 1);
    }

    responses_built_from_a_session_are_private => |fx| {
        let app = fx.app(|l| l);
        let mut c = Client::new(app.clone());
        // No cookie: a read makes the response vary by cookie, but it is the
        // same for every cookie-less client, so it stays shareable.
        let r = c.get("/get/a").await;
        assert_eq!(r.header("vary"), Some("cookie"));
        assert_eq!(r.header("cache-control"), None);
        // A route that never touches the session gets no marker.
        let r = c.get("/untouched").await;
        assert_eq!((r.header("vary"), r.header("cache-control")), (None, None));
        // Setting the cookie: no-store.
        let r = c.post("/set/a/1").await;
        assert_eq!(r.header("cache-control"), Some("no-store"));
        // With the cookie, a read is private and varies by cookie.
        let r = c.get("/get/a").await;
        assert_eq!(r.body, "1");
        assert_eq!(r.header("vary"), Some("cookie"));
        assert_eq!(r.header("cache-control"), Some("private"));
        // A handler's own Cache-Control is kept.
        let r = c.get("/get-cached/a").await;
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        assert_eq!(r.header("vary"), Some("cookie"));
        // The account page (a list of the user's sessions) is private.
        c.post("/login/gina").await;
        let r = c.get("/sessions").await;
        assert_eq!(r.header("cache-control"), Some("private"));
        assert_eq!(r.header("vary"), Some("cookie"));
        // An untouched request with a cookie reads nothing: no marker.
        let r = c.get("/untouched").await;
        assert_eq!(r.header("vary"), None);
    }

    expired_sessions_leave_the_user_index => |fx| {
        let app = fx.app(|l| {
            l.idle_timeout(Duration::from_millis(300)).touch_interval(Duration::from_millis(100))
        });
        let mut old = Client::new(app.clone());
        old.post("/login/dave").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut new = Client::new(app);
        new.post("/login/dave").await;
        let list: serde_json::Value = serde_json::from_str(&new.get("/sessions").await.body).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1, "the idle-expired session is gone");
        assert_eq!(fx.index_len("dave"), 1, "and pruned from the index");
    }
}
