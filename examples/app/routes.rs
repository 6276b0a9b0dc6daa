//! The example app's routes and handlers (shared with the end-to-end tests
//! in `tests/app.rs`, which serve this same router).

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use redis_layers::cache::{CacheLayer, Purger};
use redis_layers::idempotency::{FencingToken, IdempotencyLayer, Scope};
use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, RateLimitStore, Rule};
use redis_layers::session::{Session, SessionError, SessionLayer};
use redis_layers::{Backend, Problem};
use serde::Deserialize;

/// The whole app on `backend`. `secure_cookies` is the session cookie's
/// `Secure` flag: off only for plain http on localhost.
pub fn router(backend: Backend, secure_cookies: bool) -> Result<Router, redis_layers::Error> {
    let sessions = SessionLayer::builder(backend.clone())
        // Plain http on localhost needs it off (a Secure cookie would never
        // come back); keep it on anywhere served over https.
        .secure(secure_cookies)
        .build()?;
    let limits = RateLimitLayer::builder(backend.clone())
        // Behind a proxy, name its networks so X-Forwarded-For counts:
        // .trusted_proxies(["10.0.0.0/8"])
        .rule(
            Rule::route("/login")
                .method(axum::http::Method::POST)
                .policy(Policy::per_minute(30).burst(10).named("login-ip"))
                .named("login-ip"),
        )
        .rule(
            Rule::prefix("/api/")
                .key(Key::header("x-api-key").or(Key::client_ip()))
                .policy(Policy::per_minute(10).named("api"))
                .policy(Policy::per_hour(300).fixed_window().named("api-hourly"))
                .named("api"),
        )
        .build()?;
    // Outside the session layer: it sees the session's `Vary: Cookie` and
    // `private` marks, so one user's page never reaches another.
    let cache = CacheLayer::builder(backend.clone())
        .stale_if_error(std::time::Duration::from_secs(300))
        // Hot pages from memory; purges reach every instance's copy.
        .local_tier(1_000)
        .build()?;
    Ok(Router::new()
        .route("/", get(home))
        .route("/products", get(products))
        .route("/products/{id}", get(product))
        .route("/admin/products/{id}/price", post(set_price))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/account", get(account))
        .route("/account/revoke/{handle}", post(revoke))
        .route("/account/revoke-others", post(revoke_others))
        .route("/api/time", get(api_time))
        .route(
            "/api/orders",
            // Keys belong to the API key that sent them.
            post(create_order).layer(IdempotencyLayer::new(
                backend.clone(),
                Scope::header("x-api-key"),
            )),
        )
        .layer(limits)
        .layer(sessions)
        .layer(cache)
        // Outside the session layer: health checks never touch sessions.
        .route("/health", get(health))
        .route("/healthz", get(health))
        .with_state(backend))
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}\
         table{{border-collapse:collapse}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd}}\
         form{{display:inline}}</style>\
         <h1>{title}</h1>{body}"
    ))
}

/// Escapes text for HTML (user names and user agents come from clients).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn home(
    State(backend): State<Backend>,
    session: Session,
) -> Result<Html<String>, SessionError> {
    let visits: u64 = session.get("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
    let who = match session.user().await? {
        Some(user) => format!(
            "Logged in as <b>{}</b>. <a href=\"/account\">Your sessions</a> \
             <form method=post action=/logout><button>Log out</button></form>",
            escape(&user)
        ),
        None => "Not logged in. <a href=\"/login\">Log in</a>".to_owned(),
    };
    Ok(page(
        "redis-layers example",
        &format!(
            "<p>Visits in this session: <b>{visits}</b></p><p>{who}</p>\
             <p><a href=\"/products\">Shop</a> (cached)</p>\
             <p>Backend: {}</p><p><a href=\"/health\">/health</a></p>",
            backend.kind()
        ),
    ))
}

/// The shop's catalogue: names here, prices in the backend (shared by
/// every instance).
const PRODUCTS: [(u32, &str, u64); 3] = [
    (1, "Green tea", 450),
    (2, "Oat biscuits", 320),
    (3, "Honey jar", 890),
];

fn price_key(backend: &Backend, id: u32) -> String {
    backend.namespace().key(&["shop", "price", &id.to_string()])
}

async fn price(backend: &Backend, id: u32, default: u64) -> u64 {
    match backend.get(&price_key(backend, id)).await {
        Ok(Some(raw)) => std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
        _ => default,
    }
}

fn euros(cents: u64) -> String {
    format!("{}.{:02} €", cents / 100, cents % 100)
}

/// Public pages: cached by the cache layer for a minute (and refreshed in
/// the background for 30 s after), tagged so a price change can purge
/// them.
fn public(tags: String, body: Html<String>) -> Response {
    (
        [
            (
                axum::http::header::CACHE_CONTROL,
                "public, max-age=60, stale-while-revalidate=30".to_owned(),
            ),
            (
                axum::http::header::HeaderName::from_static("cache-tag"),
                tags,
            ),
        ],
        body,
    )
        .into_response()
}

async fn products(State(backend): State<Backend>) -> Response {
    let mut rows = String::new();
    for (id, name, default) in PRODUCTS {
        rows.push_str(&format!(
            "<tr><td><a href=\"/products/{id}\">{name}</a></td><td>{}</td></tr>",
            euros(price(&backend, id, default).await)
        ));
    }
    public(
        "products".to_owned(),
        page(
            "Shop",
            &format!("<table>{rows}</table><p><a href=\"/\">Home</a></p>"),
        ),
    )
}

async fn product(State(backend): State<Backend>, Path(id): Path<u32>) -> Response {
    let Some((id, name, default)) = PRODUCTS.into_iter().find(|p| p.0 == id) else {
        return Problem::new(StatusCode::NOT_FOUND, "No such product", "Try /products.")
            .into_response();
    };
    let cents = price(&backend, id, default).await;
    public(
        format!("products, product-{id}"),
        page(
            name,
            &format!(
                "<p>Price: <b>{}</b></p>\
                 <form method=post action=/admin/products/{id}/price>\
                 <label>New price (cents) <input name=cents type=number min=0 max=1000000 required></label> \
                 <button>Change (logged-in users)</button></form>\
                 <p><a href=\"/products\">All products</a></p>",
                euros(cents)
            ),
        ),
    )
}

#[derive(Deserialize)]
struct PriceForm {
    cents: u64,
}

async fn set_price(
    State(backend): State<Backend>,
    Extension(purger): Extension<Purger>,
    session: Session,
    Path(id): Path<u32>,
    Form(form): Form<PriceForm>,
) -> Result<Response, SessionError> {
    if session.user().await?.is_none() {
        return Ok(Redirect::to("/login").into_response());
    }
    if !PRODUCTS.iter().any(|p| p.0 == id) || form.cents > 1_000_000 {
        return Ok(Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid price change",
            "Name a listed product and a price up to 1000000 cents.",
        )
        .into_response());
    }
    let stored = backend
        .set(
            &price_key(&backend, id),
            form.cents.to_string().as_bytes(),
            None,
        )
        .await;
    if let Err(e) = stored {
        return Ok(Problem::store_failure("shop", &e).into_response());
    }
    // Every instance shares the store: the next request anywhere misses
    // and shows the new price.
    for tag in [format!("product-{id}"), "products".to_owned()] {
        if let Err(e) = purger.purge_tag(&tag).await {
            tracing::warn!(error = %e, tag, "purge failed; the old price shows until it expires");
        }
    }
    Ok(Redirect::to(&format!("/products/{id}")).into_response())
}

async fn login_form() -> Html<String> {
    page(
        "Log in",
        "<form method=post action=/login>\
         <label>User name <input name=user required maxlength=64 pattern=\"[A-Za-z0-9_.-]+\"></label> \
         <button>Log in</button></form><p>Any name works: this is a demo.</p>",
    )
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
}

async fn login(
    State(backend): State<Backend>,
    session: Session,
    Form(form): Form<LoginForm>,
) -> Response {
    let user = form.user.trim();
    let valid = !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid user name",
            "Use 1 to 64 letters, digits, '_', '.' or '-'.",
        )
        .into_response();
    }
    // Per user name, whatever the address (password spraying from many
    // addresses): the name is in the body, so the handler asks the store.
    let per_name = [Policy::per_hour(20).burst(5).named("login-user")];
    match backend
        .check(&format!("login-user|{user}"), &per_name, 1)
        .await
    {
        Ok(decision) if !decision.allowed => {
            let wait = decision.retry_after().as_millis().div_ceil(1000).max(1) as u64;
            let mut res = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many login attempts",
                "Too many attempts for this user name; try again later.",
            )
            .into_response();
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, wait.into());
            return res;
        }
        Ok(_) => {}
        // Fail open, as the layer does by default.
        Err(e) => tracing::warn!(error = %e, "login limit unavailable"),
    }
    // A new id on every privilege change (OWASP): a session id an attacker
    // planted before login is useless after it.
    let result = async {
        session.cycle_id().await?;
        session.set_user(user)
    }
    .await;
    match result {
        Ok(()) => Redirect::to("/account").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn logout(session: Session) -> Result<Redirect, SessionError> {
    session.destroy().await?;
    Ok(Redirect::to("/"))
}

async fn account(session: Session) -> Result<Response, SessionError> {
    let Some(user) = session.user().await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    let mut rows = String::new();
    for s in session.sessions().await? {
        let age = |t: std::time::SystemTime| {
            t.elapsed()
                .map(|d| format!("{} s ago", d.as_secs()))
                .unwrap_or_else(|_| "now".to_owned())
        };
        let action = if s.current {
            "<i>this session</i>".to_owned()
        } else {
            format!(
                "<form method=post action=/account/revoke/{}><button>Revoke</button></form>",
                s.handle
            )
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
            escape(s.user_agent.as_deref().unwrap_or("unknown")),
            age(s.created),
            age(s.last_seen),
        ));
    }
    Ok(page(
        &format!("Sessions of {}", escape(&user)),
        &format!(
            "<table><tr><th>Device</th><th>Created</th><th>Last seen</th><th></th></tr>{rows}</table>\
             <p><form method=post action=/account/revoke-others><button>Log out other devices</button></form> \
             <form method=post action=/logout><button>Log out</button></form> <a href=\"/\">Home</a></p>"
        ),
    )
    .into_response())
}

async fn revoke(session: Session, Path(handle): Path<String>) -> Result<Response, SessionError> {
    if session.revoke(&handle).await? {
        Ok(Redirect::to("/account").into_response())
    } else {
        Ok(Problem::new(
            StatusCode::NOT_FOUND,
            "No such session",
            "That session does not exist or is not yours.",
        )
        .into_response())
    }
}

async fn revoke_others(session: Session) -> Result<Redirect, SessionError> {
    let n = session.revoke_others().await?;
    tracing::info!(revoked = n, "logged out other devices");
    Ok(Redirect::to("/account"))
}

async fn api_time() -> impl IntoResponse {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!("{{\"unix_ms\":{}}}", now.as_millis()),
    )
}

/// Creates an order (here: makes up its number). Runs once per
/// idempotency key; retries get this same answer.
async fn create_order(Extension(token): Extension<FencingToken>, body: String) -> Response {
    if body.len() > 4096 {
        return Problem::new(StatusCode::BAD_REQUEST, "Order too large", "At most 4 KB.")
            .into_response();
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let id = format!("{nanos:x}");
    tracing::info!(order = %id, fencing_token = token.0, "order created");
    (
        StatusCode::CREATED,
        [
            (axum::http::header::LOCATION, format!("/api/orders/{id}")),
            (
                axum::http::header::CONTENT_TYPE,
                "application/json".to_owned(),
            ),
        ],
        format!("{{\"id\":\"{id}\",\"items\":{}}}", serde_json::json!(body)),
    )
        .into_response()
}

async fn health(State(backend): State<Backend>) -> impl IntoResponse {
    match backend.ping().await {
        Ok(()) => (StatusCode::OK, format!("ok: {}", backend.kind())),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} unavailable: {e}", backend.kind()),
        ),
    }
}
