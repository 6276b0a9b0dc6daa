//! The session conveniences on every backend: typed values, flash
//! messages and the CSRF layer.

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use http::{header, Request, StatusCode};
use redis_layers::csrf::{CsrfLayer, CsrfLayerBuilder, CsrfToken, TOKEN_FIELD, TOKEN_HEADER};
use redis_layers::session::{Flash, Session, SessionError, SessionValue, Typed};
use serde::{Deserialize, Serialize};

use crate::harness::{Client, Fixture};
use crate::support::reply::Reply;

#[derive(Serialize, Deserialize, Default, Debug)]
struct Cart {
    items: Vec<u32>,
}

impl SessionValue for Cart {
    const KEY: &'static str = "cart";
}

async fn cart_add(cart: Typed<Cart>, Path(item): Path<u32>) -> Result<String, SessionError> {
    let n = cart.update(|c| {
        c.items.push(item);
        c.items.len()
    });
    Ok(n.await?.to_string())
}

async fn cart_show(cart: Typed<Cart>) -> Result<String, SessionError> {
    Ok(match cart.get().await? {
        Some(cart) => format!("{:?}", cart.items),
        None => "empty".to_owned(),
    })
}

async fn cart_strict(session: Session) -> Result<String, SessionError> {
    let cart = session.typed::<Cart>().try_get().await?;
    Ok(format!("{:?}", cart.map(|c| c.items)))
}

async fn cart_clear(cart: Typed<Cart>) -> &'static str {
    cart.remove();
    "ok"
}

async fn set_raw(session: Session, Path((key, json)): Path<(String, String)>) -> &'static str {
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    session.insert(&key, value).unwrap();
    "ok"
}

async fn get_raw(session: Session, Path(key): Path<String>) -> String {
    match session.get::<serde_json::Value>(&key).await.unwrap() {
        Some(v) => v.to_string(),
        None => "none".to_owned(),
    }
}

async fn flash_add(
    flash: Flash,
    Path((level, text)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    for text in text.split(',') {
        match level.as_str() {
            "success" => flash.success(text)?,
            "error" => flash.error(text)?,
            "warning" => flash.warning(text)?,
            "debug" => flash.debug(text)?,
            _ => flash.info(text)?,
        }
    }
    Ok("ok")
}

async fn flash_show(flash: Flash) -> Result<String, SessionError> {
    let shown: Vec<String> = flash
        .take()
        .await?
        .into_iter()
        .map(|m| format!("{}:{}", m.level, m.text))
        .collect();
    Ok(shown.join(" "))
}

/// Sets a message and takes the stored ones in one request.
async fn flash_both(flash: Flash) -> Result<String, SessionError> {
    flash.info("later")?;
    flash_show(flash).await
}

/// Takes the messages, then fails: nothing is saved.
async fn flash_fail(flash: Flash) -> (StatusCode, String) {
    let shown = flash.take().await.unwrap().len();
    (StatusCode::INTERNAL_SERVER_ERROR, shown.to_string())
}

/// Reads the session, then adds a message.
async fn read_and_flash(session: Session) -> Result<&'static str, SessionError> {
    let _: Option<u64> = session.get("n").await?;
    session.flash().info("last")?;
    Ok("ok")
}

/// A write and a message in one request.
async fn write_and_flash(session: Session) -> Result<&'static str, SessionError> {
    session.insert("n", 1)?;
    session.flash().success("saved")?;
    Ok("ok")
}

/// Logs out, then says so on the next page.
async fn logout_with_flash(session: Session) -> Result<&'static str, SessionError> {
    session.insert("dropped", 1)?;
    session.destroy().await?;
    session.flash().info("logged out")?;
    Ok("ok")
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.cycle_id().await?;
    session.set_user("alice")?;
    Ok("ok")
}

/// A "best effort" logout that ignores a failure, then flashes.
async fn lenient_logout(session: Session) -> Result<&'static str, SessionError> {
    let _ = session.destroy().await;
    session.flash().info("logged out")?;
    Ok("ok")
}

async fn token(token: CsrfToken) -> String {
    token.to_string()
}

async fn form_echo(body: String) -> String {
    format!("got {body}")
}

fn routes() -> Router {
    Router::new()
        .route("/cart", get(cart_show))
        .route("/cart/strict", get(cart_strict))
        .route("/cart/add/{item}", post(cart_add))
        .route("/cart/clear", post(cart_clear))
        .route("/raw/{key}/{json}", post(set_raw))
        .route("/raw/{key}", get(get_raw))
        .route("/flash", get(flash_show))
        .route("/flash/{level}/{text}", post(flash_add))
        .route("/flash-both", post(flash_both))
        .route("/read-and-flash", post(read_and_flash))
        .route("/flash-fail", post(flash_fail))
        .route("/write-and-flash", post(write_and_flash))
        .route("/logout-flash", post(logout_with_flash))
        .route("/lenient-logout", post(lenient_logout))
        .route("/login", post(login))
        .route("/token", get(token))
        .route("/form", post(form_echo))
        .route("/api/form", post(form_echo))
}

/// The routes behind the session layer alone.
fn app(fx: &Fixture) -> Router {
    routes().layer(fx.layer(|l| l))
}

/// The routes behind the CSRF layer (exempting `/api/`), behind the
/// session layer.
fn guarded(fx: &Fixture) -> Router {
    csrf_app(fx, |b| b)
}

fn csrf_app(fx: &Fixture, configure: impl FnOnce(CsrfLayerBuilder) -> CsrfLayerBuilder) -> Router {
    let csrf = configure(CsrfLayer::builder().exempt("/api/"))
        .build()
        .unwrap();
    routes().layer(csrf).layer(fx.layer(|l| l))
}

/// One request with a cookie, headers and a body.
async fn send(
    app: &Router,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        req = req.header(header::COOKIE, cookie);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    crate::support::reply::send(app, req.body(Body::from(body.to_owned())).unwrap()).await
}

/// A session with a CSRF token: its cookie and token.
async fn session_with_token(app: &Router) -> (String, String) {
    let r = send(app, "GET", "/token", None, &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = r.set_cookie().expect("a session made for the token");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    // The same token on the next request: one per session.
    let again = send(app, "GET", "/token", Some(&cookie), &[], "").await;
    assert_eq!(again.body, r.body);
    assert_eq!(again.set_cookie(), None);
    (cookie, r.body)
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

crate::support::both_backends! { Fixture::new;
    typed_values_round_trip => |fx| {
        let mut c = Client::new(app(&fx));
        assert_eq!(c.get("/cart").await.body, "empty");
        assert_eq!(c.post("/cart/add/3").await.body, "1");
        assert_eq!(c.post("/cart/add/5").await.body, "2");
        assert_eq!(c.get("/cart").await.body, "[3, 5]");
        assert_eq!(c.get("/raw/cart").await.body, r#"{"items":[3,5]}"#, "stored as JSON under its key");
        c.post("/cart/clear").await;
        assert_eq!(c.get("/cart").await.body, "empty");
    }

    a_typed_value_that_no_longer_fits_is_read_as_absent_until_replaced => |fx| {
        let mut c = Client::new(app(&fx));
        // What an older version stored under the key.
        c.post("/raw/cart/%5B1%2C2%5D").await;
        c.post("/raw/other/1").await;
        let strict = c.get("/cart/strict").await;
        assert_eq!(strict.status, StatusCode::INTERNAL_SERVER_ERROR, "try_get reports it");
        assert!(strict.is_problem());
        assert_eq!(c.get("/raw/cart").await.body, "[1,2]", "try_get leaves it");
        let r = c.get("/cart").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "empty"), "no 500");
        assert_eq!(c.get("/cart").await.body, "empty", "every time");
        assert_eq!(c.get("/raw/cart").await.body, "[1,2]", "kept for older code until replaced");
        // A fresh start from the default, stored in the new shape.
        assert_eq!(c.post("/cart/add/9").await.body, "1");
        assert_eq!(c.get("/cart/strict").await.body, "Some([9])");
        assert_eq!(c.get("/raw/other").await.body, "1", "nothing else changed");
    }

    flash_messages_show_once_in_the_order_they_were_set => |fx| {
        let mut c = Client::new(app(&fx));
        assert_eq!(c.get("/flash").await.body, "", "none yet, and no session for it");
        assert_eq!(c.cookie, None);
        c.post("/flash/success/saved,done").await;
        c.post("/flash/warning/careful").await;
        c.post("/flash/error/failed").await;
        let r = c.get("/flash").await;
        assert_eq!(r.body, "success:saved success:done warning:careful error:failed");
        assert_eq!(c.get("/flash").await.body, "", "shown once");
        assert_eq!(fx.session_count(), 1, "the session stays");
    }

    a_flash_is_for_the_next_request_not_this_one => |fx| {
        let mut c = Client::new(app(&fx));
        c.post("/flash/info/first").await;
        assert_eq!(c.post("/flash-both").await.body, "info:first");
        assert_eq!(c.get("/flash").await.body, "info:later");
    }

    unread_messages_are_bounded_by_a_request_that_reads_the_session => |fx| {
        use redis_layers::session::MAX_UNREAD;
        let mut c = Client::new(app(&fx));
        let blind = MAX_UNREAD + 4;
        for i in 0..blind {
            c.post(&format!("/flash/info/m{i:02}")).await;
        }
        c.post("/read-and-flash").await;
        let shown = c.get("/flash").await.body;
        let got: Vec<&str> = shown.split(' ').collect();
        let mut want: Vec<String> = (blind - MAX_UNREAD..blind).map(|i| format!("info:m{i:02}")).collect();
        want.push("info:last".to_owned());
        assert_eq!(got, want, "the oldest go first");
    }

    a_failed_response_keeps_the_messages_it_took => |fx| {
        let mut c = Client::new(app(&fx));
        c.post("/flash/info/kept").await;
        let r = c.post("/flash-fail").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "1"));
        assert_eq!(c.get("/flash").await.body, "info:kept");
    }

    a_flash_costs_no_round_trip_beyond_the_write => |fx| {
        let mut c = Client::new(app(&fx));
        c.post("/raw/n/0").await;
        let base = fx.store_calls();
        c.post("/write-and-flash").await;
        assert_eq!(fx.store_calls() - base, 1, "one save holds the write and the message");
        let base = fx.store_calls();
        assert_eq!(c.get("/flash").await.body, "success:saved");
        assert_eq!(fx.store_calls() - base, 2, "a load, and the save that removes it");
        let base = fx.store_calls();
        assert_eq!(c.get("/flash").await.body, "");
        assert_eq!(fx.store_calls() - base, 1, "no messages: the load only");
    }

    flashes_set_at_once_by_two_instances_are_all_kept => |fx| {
        let a = app(&fx);
        let b = app(&fx);
        let mut c = Client::new(a.clone());
        c.post("/raw/n/0").await;
        let cookie = c.cookie.clone().unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            let cookie = cookie.clone();
            tasks.push(tokio::spawn(async move {
                let path = format!("/flash/info/m{i}");
                send(&app, "POST", &path, Some(&cookie), &[], "").await.status
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
        let shown = c.get("/flash").await.body;
        let mut got: Vec<&str> = shown.split(' ').collect();
        got.sort_unstable();
        let want: Vec<String> = (0..8).map(|i| format!("info:m{i}")).collect();
        assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
    }

    a_flash_after_a_logout_goes_to_a_new_session => |fx| {
        let mut c = Client::new(app(&fx));
        c.post("/raw/secret/1").await;
        let old = c.cookie.clone().unwrap();
        let r = c.post("/logout-flash").await;
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let new = c.cookie.clone().expect("a new session's cookie");
        assert_ne!(new, old, "a fresh id");
        assert_eq!(fx.session_count(), 1, "the old session is gone");
        assert_eq!(c.get("/raw/secret").await.body, "none", "nothing of the old one");
        assert_eq!(c.get("/raw/dropped").await.body, "none", "changes before the logout are dropped");
        assert_eq!(c.get("/flash").await.body, "info:logged out");
        // The old cookie names nothing.
        let r = send(&app(&fx), "GET", "/raw/secret", Some(&old), &[], "").await;
        assert_eq!(r.body, "none");
    }

    a_failed_logout_writes_nothing_and_still_drops_the_cookie => |fx| {
        let mut c = Client::new(app(&fx));
        c.post("/raw/secret/1").await;
        let old = c.cookie.clone().unwrap();
        fx.fail_deletes.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = c.post("/lenient-logout").await;
        fx.fail_deletes.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(c.cookie, None, "the cookie is dropped: {:?}", r.set_cookie());
        assert_eq!(fx.session_count(), 1, "no new session");
        // The old session (its delete failed) got no message either.
        let r = send(&app(&fx), "GET", "/flash", Some(&old), &[], "").await;
        assert_eq!(r.body, "");
    }

    csrf_fetch_metadata_decides_for_browsers_that_send_it => |fx| {
        let app = guarded(&fx);
        let site = |v: &'static str| [("sec-fetch-site", v)];
        for ok in ["same-origin", "none"] {
            let r = send(&app, "POST", "/form", None, &site(ok), "a=1").await;
            assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "got a=1"), "{ok}");
        }
        for refused in ["same-site", "cross-site"] {
            let r = send(&app, "POST", "/form", None, &site(refused), "a=1").await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{refused}");
            assert!(r.is_problem());
            assert!(r.body.contains("another site"), "{}", r.body);
        }
        // Safe methods and exempt paths are not checked.
        let r = send(&app, "GET", "/flash", None, &site("cross-site"), "").await;
        assert_eq!(r.status, StatusCode::OK);
        let r = send(&app, "POST", "/api/form", None, &site("cross-site"), "x").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(fx.store_calls(), 0, "headers alone decide: no store access");
    }

    csrf_origin_decides_when_fetch_metadata_is_absent => |fx| {
        let app = guarded(&fx);
        let same = [("origin", "http://shop.test:8080"), ("host", "shop.test:8080")];
        let r = send(&app, "POST", "/form", None, &same, "a=1").await;
        assert_eq!(r.status, StatusCode::OK);
        for origin in ["http://evil.test", "http://shop.test:9090", "null"] {
            let h = [("origin", origin), ("host", "shop.test:8080")];
            let r = send(&app, "POST", "/form", None, &h, "a=1").await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{origin}");
        }
        let trusted = csrf_app(&fx, |b| b.trusted_origin("https://admin.shop.test"));
        let h = [("origin", "https://admin.shop.test"), ("host", "shop.test"), ("sec-fetch-site", "same-site")];
        assert_eq!(send(&trusted, "POST", "/form", None, &h, "").await.status, StatusCode::OK);
    }

    csrf_without_headers_needs_the_sessions_token => |fx| {
        let app = guarded(&fx);
        let (cookie, token) = session_with_token(&app).await;
        // No token at all.
        let r = send(&app, "POST", "/form", Some(&cookie), &[FORM], "a=1").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.is_problem() && r.body.contains("no CSRF token"), "{}", r.body);
        // The token in the form: the handler gets the body untouched.
        let body = format!("a=1&{TOKEN_FIELD}={token}");
        let r = send(&app, "POST", "/form", Some(&cookie), &[FORM], &body).await;
        assert_eq!((r.status, r.body), (StatusCode::OK, format!("got {body}")));
        // The token in the header, any body.
        let r = send(&app, "POST", "/form", Some(&cookie), &[(TOKEN_HEADER, &token)], "{}").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "got {}"));
        // A wrong token, or the right one in a body that is not a form.
        let wrong = format!("a=1&{TOKEN_FIELD}={}", "A".repeat(43));
        let r = send(&app, "POST", "/form", Some(&cookie), &[FORM], &wrong).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = send(&app, "POST", "/form", Some(&cookie), &[], &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        // No session at all.
        let r = send(&app, "POST", "/form", None, &[FORM], &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }

    csrf_a_token_from_another_session_is_refused => |fx| {
        let app = guarded(&fx);
        let (mine, _) = session_with_token(&app).await;
        let (_, theirs) = session_with_token(&app).await;
        let body = format!("{TOKEN_FIELD}={theirs}");
        let r = send(&app, "POST", "/form", Some(&mine), &[FORM], &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = send(&app, "POST", "/form", Some(&mine), &[(TOKEN_HEADER, &theirs)], "").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }

    csrf_a_login_renews_the_token_with_the_id => |fx| {
        let app = guarded(&fx);
        let (cookie, before) = session_with_token(&app).await;
        let same = [("sec-fetch-site", "same-origin")];
        let r = send(&app, "POST", "/login", Some(&cookie), &same, "").await;
        assert_eq!(r.status, StatusCode::OK);
        let renewed = r.set_cookie().unwrap().split(';').next().unwrap().to_owned();
        let after = send(&app, "GET", "/token", Some(&renewed), &[], "").await.body;
        assert_ne!(after, before, "a token known before the login is no good after it");
        let body = format!("{TOKEN_FIELD}={before}");
        let r = send(&app, "POST", "/form", Some(&renewed), &[FORM], &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let body = format!("{TOKEN_FIELD}={after}");
        let r = send(&app, "POST", "/form", Some(&renewed), &[FORM], &body).await;
        assert_eq!(r.status, StatusCode::OK);
    }

    csrf_a_value_of_another_type_under_the_key_is_replaced_not_a_500 => |fx| {
        let app = guarded(&fx);
        let mut c = Client::new(app.clone());
        c.post("/raw/__csrf/%5B1%5D").await;
        let r = c.get("/token").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len(), 43, "{}", r.body);
        assert_eq!(c.get("/token").await.body, r.body, "stored");
    }

    csrf_an_origin_that_is_not_this_host_falls_back_to_the_token => |fx| {
        let app = guarded(&fx);
        let (cookie, token) = session_with_token(&app).await;
        // A proxy that rewrites Host: the browser's Origin names the public
        // host; the token still gets the form through.
        let h = [("origin", "https://shop.example"), ("host", "127.0.0.1:3000"), FORM];
        let body = format!("{TOKEN_FIELD}={token}");
        let r = send(&app, "POST", "/form", Some(&cookie), &h, &body).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = send(&app, "POST", "/form", Some(&cookie), &h, "a=1").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }

    csrf_a_chunked_form_over_the_limit_is_413 => |fx| {
        let app = csrf_app(&fx, |b| b.max_form_body(64));
        let (cookie, token) = session_with_token(&app).await;
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(bytes::Bytes::from(format!("{TOKEN_FIELD}={token}&pad="))),
            Ok(bytes::Bytes::from("x".repeat(40))),
        ];
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let req = Request::post("/form")
            .header(header::COOKIE, &cookie)
            .header(FORM.0, FORM.1)
            .body(body)
            .unwrap();
        let r = crate::support::reply::send(&app, req).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    }

    csrf_an_oversized_form_is_413_and_a_restyled_refusal_is_the_hooks => |fx| {
        let app = csrf_app(&fx, |b| b.max_form_body(64));
        let (cookie, token) = session_with_token(&app).await;
        let body = format!("{TOKEN_FIELD}={token}&pad={}", "x".repeat(64));
        let r = send(&app, "POST", "/form", Some(&cookie), &[FORM], &body).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(r.is_problem());
        let restyled = csrf_app(&fx, |b| {
            b.on_refusal(|_, refusal| {
                assert_eq!(refusal.layer(), "csrf");
                let mut res = http::Response::new(bytes::Bytes::from(format!("{:?}", refusal.kind())));
                *res.status_mut() = refusal.status();
                res
            })
        });
        let r = send(&restyled, "POST", "/form", None, &[("sec-fetch-site", "cross-site")], "").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::FORBIDDEN, "CrossOrigin"));
        let r = send(&restyled, "POST", "/form", None, &[], "").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::FORBIDDEN, "CsrfToken"));
    }
}

#[tokio::test]
async fn csrf_without_a_session_layer_is_a_500_naming_it() {
    let app = routes().layer(CsrfLayer::new());
    // Headers alone need no session.
    let r = send(
        &app,
        "POST",
        "/form",
        None,
        &[("sec-fetch-site", "same-origin")],
        "x",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // The token does.
    let r = send(&app, "POST", "/form", None, &[], "x").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.is_problem() && r.body.contains("SessionLayer"),
        "{}",
        r.body
    );
}
