//! The example app's routes and handlers (shared with the end-to-end tests
//! in `tests/app.rs`, which serve this same router).

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Form, Json, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use redis_layers::cache::{CacheLayer, Purger};
use redis_layers::csrf::{CsrfLayer, CsrfToken};
use redis_layers::idempotency::{Fence, IdempotencyLayer, Scope};
use redis_layers::lock::{LockKey, LockLayer};
use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, RateLimitStore, Rule};
use redis_layers::session::{Session, SessionError, SessionLayer};
use redis_layers::{Backend, ErrorKind, FailurePolicy, Problem, Refusal, RefusalKind};
use serde::Deserialize;

#[path = "users.rs"]
mod users;
#[path = "views.rs"]
mod views;

/// Request bodies larger than this get a 413 (forms and JSON alike).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The API keys this demo knows (a real app looks them up). Unknown keys
/// are not trusted with anything stored: the API's rate limit falls back
/// to the client's address, and orders need a known key.
pub const API_KEYS: [&str; 6] = ["demo", "alpha", "beta", "gamma", "delta", "epsilon"];

/// The request's `X-API-Key` when it is one of [`API_KEYS`].
fn known_api_key(headers: &HeaderMap) -> Option<&'static str> {
    let sent = headers.get("x-api-key")?.to_str().ok()?;
    API_KEYS.into_iter().find(|k| *k == sent)
}

/// The session cookie's name when served over https.
pub const SECURE_COOKIE_NAME: &str = "__Host-shop";

/// How long a "remember me" login lasts idle (and at most).
const REMEMBER_ME: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How long placing an order takes: it stands for the payment provider's
/// round trip, and is why a concurrent duplicate sees 409.
const ORDER_LATENCY: std::time::Duration = std::time::Duration::from_millis(150);

/// The whole app on `backend`. `secure_cookies` is the session cookie's
/// `Secure` flag: off only for plain http on localhost. `hosts` are the
/// `Host` values the shop answers to (`host` or `host:port`): pages for
/// any other are made but never cached, so made-up hosts cannot fill the
/// cache.
pub fn router(
    backend: Backend,
    secure_cookies: bool,
    hosts: &[String],
) -> Result<Router, redis_layers::Error> {
    // The metrics recorder first: a rate-limit layer registers its rules'
    // counters when it is built.
    prometheus();
    let sessions = SessionLayer::builder(backend.clone())
        // Idle 30 minutes (the default) for every session; a week at most
        // for one whose user ticked "remember me" (its own idle timeout,
        // see `login`). Sessions that stay active end after a week.
        .absolute_timeout(REMEMBER_ME)
        // Plain http on localhost needs it off (a Secure cookie would never
        // come back); keep it on anywhere served over https.
        .secure(secure_cookies)
        // A session that lost a race, or a store that is down: a page.
        .on_refusal(refusal_page);
    // Over https, a `__Host-` name: browsers then accept the cookie only
    // Secure, for this host alone and the whole path, so a sibling
    // subdomain cannot plant or shadow it.
    let sessions = if secure_cookies {
        sessions.cookie_name(SECURE_COOKIE_NAME)
    } else {
        sessions
    }
    .build()?;
    let limits = RateLimitLayer::builder(backend.clone())
        // Behind a proxy, name its networks so X-Forwarded-For counts:
        // .trusted_proxies(["10.0.0.0/8"])
        .rule(
            Rule::route("/login")
                .method(Method::POST)
                .policy(Policy::per_minute(30).burst(10).named("login-ip"))
                .on_store_error(FailurePolicy::Closed)
                .named("login-ip"),
        )
        .rule(
            Rule::prefix("/api/")
                // A known API key, else the address: a made-up key per
                // request neither escapes the limit nor stores a counter.
                .key(
                    // Kept as a digest in the store, never in clear.
                    Key::header_validated("x-api-key", |sent: &str| {
                        std::future::ready(API_KEYS.contains(&sent))
                    })
                    .or(Key::client_ip()),
                )
                .policy(Policy::per_minute(10).named("api"))
                .policy(Policy::per_hour(300).fixed_window().named("api-hourly"))
                .named("api"),
        )
        .on_refusal(refusal_page)
        .build()?;
    // Cross-site request forgery: browsers say where a form post comes
    // from (`Sec-Fetch-Site`, else `Origin`) and posts from another site,
    // a sibling subdomain or another port are refused; clients that send
    // neither must carry the session's token (the forms of pages that
    // already use the session have it). The API is exempt: it is
    // authenticated by X-API-Key, which a browser does not add by itself.
    let csrf = CsrfLayer::builder()
        .exempt("/api/")
        .on_refusal(refusal_page)
        .build()?;
    // Outside the session layer: it sees the session's `Vary: Cookie` and
    // `private` marks, so one user's page never reaches another.
    let cache = CacheLayer::builder(backend.clone())
        .hosts(hosts.iter().cloned())
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
            // Keys belong to the API key that sent them; only known API
            // keys get as far as a stored record.
            post(create_order)
                // One new order at a time per API account, across every
                // instance (a real shop checks stock and writes the order
                // without another checkout of the account in between);
                // others wait up to 2 s, then get 409. Inside the
                // idempotency layer: a replay takes no lock.
                .layer::<_, std::convert::Infallible>(
                    LockLayer::builder(backend.clone(), LockKey::header("x-api-key"))
                        .lease(std::time::Duration::from_secs(10))
                        .wait(std::time::Duration::from_secs(2))
                        .on_refusal(refusal_page)
                        .build()?,
                )
                .layer(
                    IdempotencyLayer::builder(backend.clone(), Scope::header("x-api-key"))
                        .max_body(MAX_BODY_BYTES)
                        .on_refusal(refusal_page)
                        .build()?,
                )
                .layer(middleware::from_fn(require_api_key)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Inside the session layer: a token check reads the session.
        .layer(csrf)
        .layer(limits)
        .layer(sessions)
        .layer(cache)
        // Outermost: on every answer, cached ones included.
        .layer(middleware::map_response(security_headers))
        // Outside every layer: health checks never touch sessions, and the
        // metrics are neither limited nor cached.
        .route("/health", get(health))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .with_state(backend))
}

/// Every layer's refusals, one hook: the API keeps the default
/// problem+json; pages get a small page saying the same (and the login
/// limit says when to try again).
fn refusal_page(
    request: &axum::http::request::Parts,
    refusal: &Refusal<'_>,
) -> axum::http::Response<bytes::Bytes> {
    if request.uri.path().starts_with("/api/") {
        return refusal.to_response();
    }
    let login = refusal.kind() == RefusalKind::RateLimited
        && refusal.policies().iter().any(|p| p.starts_with("login"));
    if login {
        let wait = refusal.retry_after().unwrap_or_default();
        let wait = wait.as_millis().div_ceil(1000).max(1);
        return views::error_bytes(
            refusal.status(),
            "Too many login attempts",
            &format!("Too many attempts from your address; try again in {wait} s."),
        );
    }
    views::error_bytes(refusal.status(), refusal.title(), refusal.detail())
}

/// Pages may not be framed (clickjacking: `frame-ancestors 'none'`, and
/// `X-Frame-Options` for older browsers), load nothing from elsewhere, and
/// post forms only here; no response is sniffed as another type.
async fn security_headers(mut res: Response) -> Response {
    static CSP: std::sync::LazyLock<header::HeaderValue> = std::sync::LazyLock::new(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        // The one inline style sheet, allowed by its hash; no script at all.
        let style = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(views::CSS.as_bytes()));
        header::HeaderValue::try_from(format!(
            "default-src 'none'; style-src 'sha256-{style}'; img-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        ))
        .expect("a header value")
    });
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    res
}

/// Orders need a known API key: 401 problem+json before anything is
/// claimed or stored.
async fn require_api_key(req: Request, next: Next) -> Response {
    if known_api_key(req.headers()).is_none() {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            "Unknown API key",
            "Send a known X-API-Key (this demo knows \"demo\").",
        )
        .into_response();
    }
    next.run(req).await
}

/// `Cache-Control: no-store` for pages that show private data.
fn private(page: maud::Markup) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], page).into_response()
}

/// Unknown paths: problem+json under `/api/`, a small page elsewhere.
async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "No such API route: see /api/time and /api/orders.",
        )
        .into_response();
    }
    views::error(
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no page at this address.",
    )
}

/// A known path with a method it does not take.
async fn wrong_method(method: Method, uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            format!("{} does not take {method}.", uri.path()),
        )
        .into_response();
    }
    views::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        &format!("This page does not take {method}."),
    )
}

/// A form the extractor refused (wrong content type, a missing or bad
/// field, not UTF-8, too large): its 4xx status, as a page.
fn bad_form(rejection: FormRejection) -> Response {
    let detail = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => format!("The form is larger than {MAX_BODY_BYTES} bytes."),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "Send the form as application/x-www-form-urlencoded.".to_owned()
        }
        _ => "A field is missing or not valid.".to_owned(),
    };
    views::error(rejection.status(), "Invalid form", &detail)
}

async fn home(State(backend): State<Backend>, session: Session) -> Result<Response, SessionError> {
    // "Price changed", "You are logged out": shown once, then gone.
    let messages = session.flash().take().await?;
    let Some(user) = session.user().await? else {
        // No write: an anonymous visit creates no session.
        let page = views::home(None, None, None, &messages, backend.kind());
        return Ok(page.into_response());
    };
    let visits: u64 = session.get("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
    let token = CsrfToken::of(&session).await?;
    Ok(private(views::home(
        Some(&user),
        Some(visits),
        Some(&token),
        &messages,
        backend.kind(),
    )))
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

/// A product's price in cents: the stored one, else the catalogue's
/// `default` while none is stored. A failed read (or a stored value that
/// is no price) is an error, never the default: a page with a made-up
/// price would be cached and shown to everyone.
async fn price(backend: &Backend, id: u32, default: u64) -> Result<u64, redis_layers::Error> {
    let Some(raw) = backend.get(&price_key(backend, id)).await? else {
        return Ok(default);
    };
    std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            redis_layers::Error::new(
                ErrorKind::Decode,
                format!("the stored price of product {id} is not a number"),
            )
        })
}

/// A public page that could not read its prices: the store-failure
/// problem (503 when the store is unreachable, 500 when it answered with
/// an error), `no-store`. The cache layer stores nothing and, within its
/// stale-if-error window, answers with the last good page instead.
fn prices_unavailable(error: &redis_layers::Error) -> Response {
    tracing::error!(error = %error, "prices not read");
    Problem::store_failure("price", error).into_response()
}

fn euros(cents: u64) -> String {
    format!("{}.{:02} €", cents / 100, cents % 100)
}

/// Public pages: cached by the cache layer for a minute (and refreshed in
/// the background for 30 s after), tagged so a price change can purge
/// them.
fn public(tags: String, page: maud::Markup) -> Response {
    (
        [
            (
                header::CACHE_CONTROL,
                "public, max-age=60, stale-while-revalidate=30".to_owned(),
            ),
            (header::HeaderName::from_static("cache-tag"), tags),
        ],
        page,
    )
        .into_response()
}

/// The shop's pages answer at one spelling of their URL, `canonical`: the
/// cache keys by the URL as sent, so a query, or an id written another way
/// (`/products/01`, `/products/+1`, `/products/%31`, all 1 to `Path<u32>`),
/// would each store a copy. Any other spelling gets a permanent redirect
/// to `canonical` (not stored), before any work; links written so still
/// work.
fn redirect_to_canonical(uri: &Uri, canonical: &str) -> Option<Response> {
    if uri.path() == canonical && uri.query().is_none() {
        return None;
    }
    Some(
        (
            [(header::CACHE_CONTROL, "no-store")],
            Redirect::permanent(canonical),
        )
            .into_response(),
    )
}

async fn products(State(backend): State<Backend>, uri: Uri) -> Response {
    if let Some(redirect) = redirect_to_canonical(&uri, "/products") {
        return redirect;
    }
    let mut rows = Vec::new();
    for (id, name, default) in PRODUCTS {
        let price = match price(&backend, id, default).await {
            Ok(cents) => euros(cents),
            Err(e) => return prices_unavailable(&e),
        };
        rows.push(views::ProductRow { id, name, price });
    }
    public("products".to_owned(), views::products(&rows))
}

fn find_product(id: Result<Path<u32>, PathRejection>) -> Option<(u32, &'static str, u64)> {
    let Path(id) = id.ok()?;
    PRODUCTS.into_iter().find(|p| p.0 == id)
}

fn no_such_product() -> Response {
    views::error(
        StatusCode::NOT_FOUND,
        "No such product",
        "See the product list for what the shop sells.",
    )
}

async fn product(
    State(backend): State<Backend>,
    uri: Uri,
    id: Result<Path<u32>, PathRejection>,
) -> Response {
    let Some((id, name, default)) = find_product(id) else {
        return no_such_product();
    };
    if let Some(redirect) = redirect_to_canonical(&uri, &format!("/products/{id}")) {
        return redirect;
    }
    let cents = match price(&backend, id, default).await {
        Ok(cents) => cents,
        Err(e) => return prices_unavailable(&e),
    };
    public(
        format!("products, product-{id}"),
        views::product(id, name, &euros(cents)),
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
    id: Result<Path<u32>, PathRejection>,
    form: Result<Form<PriceForm>, FormRejection>,
) -> Result<Response, SessionError> {
    let Some(user) = session.user().await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    if !users::is_admin(&user) {
        return Ok(views::error(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Only an administrator may change prices.",
        ));
    }
    let Some((id, _, _)) = find_product(id) else {
        return Ok(no_such_product());
    };
    let cents = match form {
        Ok(Form(form)) if form.cents <= 1_000_000 => form.cents,
        Ok(_) => {
            return Ok(views::error(
                StatusCode::BAD_REQUEST,
                "Invalid price",
                "A price is 0 to 1000000 cents.",
            ))
        }
        Err(rejection) => return Ok(bad_form(rejection)),
    };
    let stored = backend
        .set(&price_key(&backend, id), cents.to_string().as_bytes(), None)
        .await;
    if let Err(e) = stored {
        tracing::error!(error = %e, "price not stored");
        return Ok(views::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Price not changed",
            "The store is unavailable; try again shortly.",
        ));
    }
    // Every instance shares the store: the next request anywhere misses
    // and shows the new price.
    for tag in [format!("product-{id}"), "products".to_owned()] {
        if let Err(e) = purger.purge_tag(&tag).await {
            tracing::warn!(error = %e, tag, "purge failed; the old price shows until it expires");
        }
    }
    // Shown on the home page (the product page is shared by everyone,
    // cached: it shows no one's messages).
    session.flash().success(format!(
        "The price of product {id} is now {}.",
        euros(cents)
    ))?;
    Ok(Redirect::to("/").into_response())
}

async fn login_form() -> maud::Markup {
    views::login(None, "")
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    /// The "remember me" checkbox (`on` when ticked).
    remember: Option<String>,
}

/// The rule the login form states.
fn valid_user_name(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

async fn login(
    State(backend): State<Backend>,
    session: Session,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return bad_form(rejection),
    };
    let user = form.user.trim();
    if !valid_user_name(user) {
        return (
            StatusCode::BAD_REQUEST,
            views::login(
                Some("User names are 1 to 64 letters, digits, '_', '.' or '-'."),
                user,
            ),
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
            let mut res = views::error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many login attempts",
                &format!("Too many attempts for this user name; try again in {wait} s."),
            );
            res.headers_mut().insert(header::RETRY_AFTER, wait.into());
            return res;
        }
        Ok(_) => {}
        // Fail closed, like the layer's login rule: an attempt the store
        // cannot count is not made.
        Err(e) => {
            tracing::error!(error = %e, "login limit unavailable");
            return views::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "Logins are paused; try again shortly.",
            );
        }
    }
    // Argon2 is slow on purpose (and takes 19 MiB): off the async workers,
    // a few at a time, each in one of as many reused buffers, so a burst
    // of logins cannot exhaust memory.
    static HASHING: tokio::sync::Semaphore =
        tokio::sync::Semaphore::const_new(users::MAX_CONCURRENT_CHECKS);
    // A place in line first: with every place taken, 503 at once.
    static PLACES: tokio::sync::Semaphore =
        tokio::sync::Semaphore::const_new(users::MAX_CONCURRENT_CHECKS + users::MAX_QUEUED_CHECKS);
    let Ok(place) = PLACES.try_acquire() else {
        let mut res = views::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many logins are being checked; try again in a second.",
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return res;
    };
    let Ok(permit) = HASHING.acquire().await else {
        return views::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Logins are paused.",
        );
    };
    let (name, password) = (user.to_owned(), form.password);
    // The permit goes with the check: a client that leaves mid-check does
    // not free its place (and buffer) before the hashing is over.
    let check = move || {
        let (_permit, _place) = (permit, place);
        users::verify(&name, &password)
    };
    let verified = match tokio::task::spawn_blocking(check).await {
        Ok(verified) => verified,
        Err(e) => {
            tracing::error!(error = %e, "password check failed");
            return views::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Login failed",
                "The password could not be checked; try again.",
            );
        }
    };
    if !verified {
        return (
            StatusCode::UNAUTHORIZED,
            views::login(Some("Wrong user name or password."), user),
        )
            .into_response();
    }
    // A new id on every privilege change (OWASP): a session id an attacker
    // planted before login is useless after it.
    let result = async {
        session.cycle_id().await?;
        session.set_user(user)?;
        if form.remember.is_some() {
            // This session only: a week's idle timeout and a cookie that
            // survives a browser restart.
            session.remember(REMEMBER_ME)?;
        }
        Ok::<_, SessionError>(())
    }
    .await;
    match result {
        Ok(()) => Redirect::to("/account").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn logout(session: Session) -> Result<Redirect, SessionError> {
    session.destroy().await?;
    // After the logout: a new session, holding only this message until
    // the home page shows it.
    session.flash().info("You are logged out.")?;
    Ok(Redirect::to("/"))
}

async fn account(session: Session) -> Result<Response, SessionError> {
    let Some(user) = session.user().await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    let ago = |t: std::time::SystemTime| {
        t.elapsed()
            .map(|d| format!("{} s ago", d.as_secs()))
            .unwrap_or_else(|_| "now".to_owned())
    };
    let rows: Vec<views::SessionRow> = session
        .sessions()
        .await?
        .into_iter()
        .map(|s| views::SessionRow {
            handle: s.handle.to_string(),
            device: s.user_agent.unwrap_or_else(|| "unknown".to_owned()),
            created: ago(s.created),
            last_seen: ago(s.last_seen),
            current: s.current,
        })
        .collect();
    let token = CsrfToken::of(&session).await?;
    Ok(private(views::account(&user, &rows, &token)))
}

async fn revoke(
    session: Session,
    handle: Result<Path<String>, PathRejection>,
) -> Result<Response, SessionError> {
    if session.user().await?.is_none() {
        return Ok(Redirect::to("/login").into_response());
    }
    let revoked = match handle {
        Ok(Path(handle)) => session.revoke(&handle).await?,
        Err(_) => false,
    };
    if revoked {
        Ok(Redirect::to("/account").into_response())
    } else {
        Ok(views::error(
            StatusCode::NOT_FOUND,
            "No such session",
            "That session does not exist or is not yours.",
        ))
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
    Json(serde_json::json!({ "unix_ms": now.as_millis() as u64 }))
}

/// An order: a listed product and a quantity.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Order {
    item: u32,
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

/// Creates an order (here: makes up its number). Runs once per
/// idempotency key; retries get this same answer, 4xx answers included.
async fn create_order(
    Extension(fence): Extension<Fence>,
    order: Result<Json<Order>, JsonRejection>,
) -> Response {
    let order = match order {
        Ok(Json(order)) => order,
        Err(rejection) => {
            return Problem::new(
                rejection.status(),
                "Invalid order",
                match rejection {
                    JsonRejection::MissingJsonContentType(_) => {
                        "Send the order as application/json.".to_owned()
                    }
                    JsonRejection::BytesRejection(_) => {
                        format!("The order is larger than {MAX_BODY_BYTES} bytes.")
                    }
                    _ => "Send {\"item\": <product id>, \"quantity\": 1 to 100}.".to_owned(),
                },
            )
            .into_response()
        }
    };
    if !PRODUCTS.iter().any(|p| p.0 == order.item) || !(1..=100).contains(&order.quantity) {
        return Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid order",
            "Name a listed product (1 to 3) and a quantity from 1 to 100.",
        )
        .into_response();
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let id = format!("{nanos:x}");
    // A real shop would pass the token with its order write, so that a
    // handler whose claim ran out cannot overwrite a newer one's order.
    let token = match fence.token().await {
        Ok(Some(token)) => token.0,
        Ok(None) => {
            return Problem::new(
                StatusCode::CONFLICT,
                "Order superseded",
                "Another request with this key took over; retry with the same key.",
            )
            .into_response()
        }
        Err(e) => return Problem::store_failure("idempotency", &e).into_response(),
    };
    tokio::time::sleep(ORDER_LATENCY).await;
    tracing::info!(order = %id, fencing_token = token, "order created");
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/orders/{id}"))],
        Json(serde_json::json!({
            "id": id,
            "item": order.item,
            "quantity": order.quantity,
        })),
    )
        .into_response()
}

/// The process's Prometheus recorder, installed once (`None` if another
/// recorder was installed first).
fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(
                    |e| tracing::warn!(error = %e, "no Prometheus recorder: /metrics is empty"),
                )
                .ok()
        })
        .as_ref()
}

/// `GET /metrics`: the layers' counters and histograms in Prometheus's
/// text format (with redis-layers' `metrics` feature; see
/// `redis_layers::metrics` for each one), to a scraper on this machine
/// only: any other peer, or one the server cannot tell, gets the 404 of
/// a page that is not there (what the shop counts is not the public's
/// business). Behind a reverse proxy on this machine every peer is local:
/// do not route `/metrics` through it.
async fn metrics(uri: Uri, request: Request) -> Response {
    let local = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|info| info.0.ip().to_canonical().is_loopback());
    if !local {
        return not_found(uri).await;
    }
    let body = prometheus().map(|h| h.render()).unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "text/plain; version=0.0.4"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
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
