//! The app's HTML, as maud templates: every `(value)` is escaped, so a user
//! name or user agent with markup in it shows as text.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use redis_layers::csrf::{self, CsrfToken};
use redis_layers::session::Message;

pub const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:44em;margin:1.5em auto;padding:0 1em;color:#222}\
header{display:flex;gap:1em;align-items:baseline;border-bottom:1px solid #ddd;padding-bottom:.5em}\
header a.home{font-weight:bold;text-decoration:none;color:#a00}\
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}\
form.inline{display:inline}label{display:block;margin:.4em 0}\
.error{color:#a00;font-weight:bold}.hint{color:#555;font-size:.9em}\
.flash{padding:.4em .8em;border-left:4px solid #888;background:#f6f6f6}\
.flash.success{border-color:#2a2}.flash.warning,.flash.error{border-color:#a00}";

/// The page around `body`: title, navigation, styles (no JavaScript).
pub fn layout(title: &str, user: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · redis-layers shop" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    a.home href="/" { "redis-layers shop" }
                    a href="/products" { "Products" }
                    @if let Some(user) = user {
                        a href="/account" { "Account (" (user) ")" }
                    } @else {
                        a href="/login" { "Log in" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The home page. `visits` is the logged-in session's visit count;
/// anonymous visitors get no session (and cost no stored state).
/// `messages`: the flash messages earlier requests left.
pub fn home(
    user: Option<&str>,
    visits: Option<u64>,
    token: Option<&CsrfToken>,
    messages: &[Message],
    backend: &str,
) -> Markup {
    layout(
        "Welcome",
        user,
        html! {
            @for message in messages {
                p class={ "flash " (message.level) } role="status" { (message.text) }
            }
            @match (user, visits) {
                (Some(user), Some(visits)) => {
                    p { "Logged in as " b { (user) } "." }
                    p id="visits" { "Visits in this session: " b { (visits) } }
                    form.inline method="post" action="/logout" {
                        (csrf_input(token))
                        button { "Log out" }
                    }
                }
                _ => {
                    p { "Not logged in. " a href="/login" { "Log in" }
                        " to start a session; it counts your visits." }
                    p.hint { "Anonymous visits store nothing: a flood of them cannot push logged-in sessions out." }
                }
            }
            p { a href="/products" { "The shop" } " (cached, with "
                code { "Cache-Status" } " on every response)." }
            p.hint { "Backend: " (backend) ". " a href="/healthz" { "/healthz" } }
        },
    )
}

/// One row of the product list.
pub struct ProductRow<'a> {
    pub id: u32,
    pub name: &'a str,
    pub price: String,
}

/// The product list.
pub fn products(rows: &[ProductRow<'_>]) -> Markup {
    layout(
        "Products",
        None,
        html! {
            table {
                tr { th { "Product" } th { "Price" } }
                @for row in rows {
                    tr {
                        td { a href={ "/products/" (row.id) } { (row.name) } }
                        td { (row.price) }
                    }
                }
            }
        },
    )
}

/// The session's CSRF token as a hidden form field, for clients that send
/// neither `Sec-Fetch-Site` nor `Origin` (every current browser sends
/// them, and passes without it).
fn csrf_input(token: Option<&CsrfToken>) -> Markup {
    html! {
        @if let Some(token) = token {
            input type="hidden" name=(csrf::TOKEN_FIELD) value=(token.as_str());
        }
    }
}

/// One product, with the price form (administrators only may use it). The
/// page is shared by everyone (cached), so its form carries no session's
/// token: browsers pass the CSRF check by their `Sec-Fetch-Site`.
pub fn product(id: u32, name: &str, price: &str) -> Markup {
    layout(
        name,
        None,
        html! {
            p { "Price: " b id="price" { (price) } }
            form method="post" action={ "/admin/products/" (id) "/price" } {
                label { "New price in cents (0 to 1000000) "
                    input name="cents" type="number" min="0" max="1000000" required; }
                button { "Change the price (administrators)" }
            }
            p.hint { "Changing it purges this page and the list from the cache on every instance." }
        },
    )
}

/// The login form, with the rule user names follow and, after a failed
/// attempt, what went wrong and the name that was tried.
/// It carries no CSRF token: a token lives in a session, and the login
/// page makes none per visitor (a flood of visits would push real sessions
/// out). Browsers pass the check by their `Sec-Fetch-Site` or `Origin`.
pub fn login(error: Option<&str>, user: &str) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            form id="login" method="post" action="/login" {
                label { "User name "
                    input name="user" value=(user) required maxlength="64"
                        pattern="[A-Za-z0-9_.\\-]+" autocomplete="username"; }
                label { "Password "
                    input name="password" type="password" required maxlength="256"
                        autocomplete="current-password"; }
                label { input name="remember" type="checkbox"; " Remember me on this device for a week" }
                button { "Log in" }
            }
            p.hint { "User names are 1 to 64 letters, digits, '_', '.' or '-'. "
                "Demo accounts: " code { "alice" } " / " code { "wonderland" } ", "
                code { "bob" } " / " code { "builder" } "." }
        },
    )
}

/// One row of the account page.
pub struct SessionRow {
    pub handle: String,
    pub device: String,
    pub created: String,
    pub last_seen: String,
    pub current: bool,
}

/// The account page: the user's sessions, each revocable.
pub fn account(user: &str, rows: &[SessionRow], token: &CsrfToken) -> Markup {
    layout(
        &format!("Sessions of {user}"),
        Some(user),
        html! {
            table id="sessions" {
                tr { th { "Device" } th { "Created" } th { "Last seen" } th {} }
                @for row in rows {
                    tr {
                        td { (row.device) }
                        td { (row.created) }
                        td { (row.last_seen) }
                        td {
                            @if row.current {
                                i { "this session" }
                            } @else {
                                form.inline method="post" action={ "/account/revoke/" (row.handle) } {
                                    (csrf_input(Some(token)))
                                    button { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
            p {
                form.inline method="post" action="/account/revoke-others" {
                    (csrf_input(Some(token)))
                    button { "Log out other devices" }
                }
                " "
                form.inline id="logout" method="post" action="/logout" {
                    (csrf_input(Some(token)))
                    button { "Log out" }
                }
            }
        },
    )
}

/// [`error`] as a bare `Response<Bytes>` (for the layers' `on_refusal`).
pub fn error_bytes(
    status: StatusCode,
    title: &str,
    detail: &str,
) -> axum::http::Response<bytes::Bytes> {
    let page = error_page(title, detail);
    let mut res = axum::http::Response::new(bytes::Bytes::from(page.into_string()));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

/// A small error page with `status`, never cached.
pub fn error(status: StatusCode, title: &str, detail: &str) -> Response {
    let page = error_page(title, detail);
    (status, [(header::CACHE_CONTROL, "no-store")], page).into_response()
}

/// The markup of an error page: its detail and a way home.
fn error_page(title: &str, detail: &str) -> Markup {
    layout(
        title,
        None,
        html! {
            p { (detail) }
            p { a href="/" { "Home" } }
        },
    )
}
