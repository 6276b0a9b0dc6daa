//! Cross-site request forgery protection for forms: [`CsrfLayer`].
//!
//! A request with an unsafe method (anything but `GET`, `HEAD`,
//! `OPTIONS`, `TRACE`) passes when the browser says it comes from this
//! origin, and is refused (403 problem+json) when it says otherwise:
//!
//! 1. **`Sec-Fetch-Site`** (Fetch Metadata; current browsers send it to
//!    secure contexts: https, and http on localhost): `same-origin` and
//!    `none` (the user typed or bookmarked it) pass; `same-site`,
//!    `cross-site` and anything else are refused, so a sibling subdomain
//!    or another port cannot post either.
//! 2. Else **`Origin`**: passes when its host and port are the request's
//!    `Host` (or the URI's authority, in HTTP/2), default ports aside.
//! 3. Else (older browsers, pages over plain http, a proxy that rewrites
//!    `Host`, an `Origin` of elsewhere or `null`, scripts) a
//!    **synchronizer token**: the request must carry the session's token in
//!    the `x-csrf-token` header or, for `application/x-www-form-urlencoded`
//!    bodies, in the `csrf_token` form field. Put it in forms with
//!    [`CsrfToken`]; it is made on first use, kept in the session (one per
//!    session, under the key `__csrf`, dropped when the session's id is
//!    renewed) and compared in constant time. A page elsewhere cannot know
//!    it, so an `Origin` that does not match is no reason to refuse a
//!    request that carries it.
//!
//! [Trusted origins](CsrfLayerBuilder::trusted_origin) pass in steps 1
//! and 2 (another site of yours that posts here), and [exempt
//! paths](CsrfLayerBuilder::exempt) are not checked at all (an API
//! authenticated by a header, not a cookie).
//!
//! Requests that pass in steps 1 and 2 cost nothing: no store access, no
//! body read. Step 3 reads the session (one load, shared with the
//! handler's own reads) and, for forms, the body (at most
//! [`max_form_body`](CsrfLayerBuilder::max_form_body) bytes, else 413; the
//! handler gets the same bytes).
//!
//! The layer goes inside a [`SessionLayer`](crate::session::SessionLayer)
//! (`.layer(csrf).layer(sessions)` in axum, where the last layer added is
//! the outermost): step 3 needs the request's session, and without one
//! it answers 500 naming the missing layer.
//!
//! ```
//! use axum::extract::Form;
//! use axum::response::Html;
//! use axum::routing::get;
//! use axum::Router;
//! use redis_layers::csrf::{CsrfLayer, CsrfToken};
//! use redis_layers::memory::MemoryBackend;
//! use redis_layers::session::SessionLayer;
//!
//! async fn form(token: CsrfToken) -> Html<String> {
//!     Html(format!(
//!         r#"<form method="post">{}<input name="q"><button>Send</button></form>"#,
//!         token.hidden_input()
//!     ))
//! }
//!
//! async fn submit(Form(fields): Form<Vec<(String, String)>>) -> String {
//!     format!("{} fields", fields.len())
//! }
//!
//! # fn run() -> Result<(), redis_layers::Error> {
//! let backend = MemoryBackend::new();
//! let app: Router = Router::new()
//!     .route("/form", get(form).post(submit))
//!     .layer(CsrfLayer::builder().exempt("/api/").build()?)
//!     .layer(SessionLayer::new(backend));
//! # Ok(()) }
//! ```
//!
//! A refusal goes through the builder's
//! [`on_refusal`](CsrfLayerBuilder::on_refusal) hook like every layer's
//! ([`RefusalKind::CrossOrigin`], [`RefusalKind::CsrfToken`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error::Error;
use crate::problem::Problem;
use crate::refusal::{OnRefusal, Refusal, RefusalKind};
use crate::session::{Session, SessionError};
use crate::BoxFuture;

/// The form field that carries the token.
pub const TOKEN_FIELD: &str = "csrf_token";
/// The header that carries the token (for scripts).
pub const TOKEN_HEADER: &str = "x-csrf-token";
/// The session key the token is kept under.
pub const TOKEN_KEY: &str = "__csrf";
/// Default for [`CsrfLayerBuilder::max_form_body`]: 64 KiB.
pub const DEFAULT_MAX_FORM_BODY: usize = 64 * 1024;

/// The session's CSRF token, to put in forms (see the [module docs](self)).
///
/// In axum it is an extractor; elsewhere, [`CsrfToken::of`]. Getting it
/// reads the session; the first time, it makes the token and stores it
/// with the response (creating a session when there is none).
#[derive(Clone, PartialEq, Eq)]
pub struct CsrfToken(String);

impl fmt::Debug for CsrfToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CsrfToken(..)")
    }
}

impl fmt::Display for CsrfToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl CsrfToken {
    /// The token of `session`, made and stored now if it has none.
    pub async fn of(session: &Session) -> Result<Self, SessionError> {
        match session.get::<String>(TOKEN_KEY).await {
            Ok(Some(token)) if is_token(&token) => return Ok(CsrfToken(token)),
            // Something else under the key (not ours): replaced below.
            Ok(_) | Err(SessionError::Deserialize { .. }) => {}
            Err(e) => return Err(e),
        }
        let token = new_token().map_err(|e| {
            SessionError::Store(Error::internal(format!("no randomness for a token: {e}")))
        })?;
        session.insert(TOKEN_KEY, &token)?;
        Ok(CsrfToken(token))
    }

    /// The token's text (URL- and HTML-safe: base64url).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<input type="hidden" name="csrf_token" value="...">`, to put in a
    /// form (the token needs no escaping).
    pub fn hidden_input(&self) -> String {
        format!(
            r#"<input type="hidden" name="{TOKEN_FIELD}" value="{}">"#,
            self.0
        )
    }
}

/// 32 random bytes, base64url without padding (43 characters).
fn new_token() -> Result<String, getrandom::Error> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `token` has the shape [`new_token`] gives.
fn is_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for CsrfToken {
    type Rejection = axum_core::response::Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        use axum_core::response::IntoResponse as _;
        let session = Session::of(parts).map_err(|e| e.into_response())?;
        CsrfToken::of(&session).await.map_err(|e| e.into_response())
    }
}

/// Checks that unsafe requests come from this origin (see the [module
/// docs](self)).
#[derive(Clone, Debug)]
#[must_use]
pub struct CsrfLayer {
    config: Arc<Config>,
}

#[derive(Debug)]
struct Config {
    exempt: Vec<String>,
    /// Each trusted origin, as [`parse_origin`] gives it.
    trusted: Vec<(String, String)>,
    max_form_body: usize,
    on_refusal: OnRefusal,
}

impl Default for CsrfLayer {
    fn default() -> Self {
        CsrfLayer::new()
    }
}

impl CsrfLayer {
    /// A layer with no exemptions and no trusted origins.
    pub fn new() -> Self {
        CsrfLayer {
            config: Arc::new(Config {
                exempt: Vec::new(),
                trusted: Vec::new(),
                max_form_body: DEFAULT_MAX_FORM_BODY,
                on_refusal: OnRefusal::default(),
            }),
        }
    }

    /// A builder for exemptions, trusted origins and the form body limit.
    ///
    /// ```
    /// use redis_layers::csrf::CsrfLayer;
    ///
    /// let layer = CsrfLayer::builder()
    ///     .exempt("/api/")
    ///     .trusted_origin("https://admin.example.com")
    ///     .build()
    ///     .expect("valid settings");
    ///
    /// // Mistakes are reported when the layer is built:
    /// assert!(CsrfLayer::builder().trusted_origin("admin.example.com/x").build().is_err());
    /// assert!(CsrfLayer::builder().exempt("api").build().is_err());
    /// ```
    pub fn builder() -> CsrfLayerBuilder {
        CsrfLayerBuilder {
            exempt: Vec::new(),
            trusted: Vec::new(),
            max_form_body: DEFAULT_MAX_FORM_BODY,
            on_refusal: OnRefusal::default(),
        }
    }
}

/// The settings of a [`CsrfLayer`]; made by [`CsrfLayer::builder`].
#[must_use]
pub struct CsrfLayerBuilder {
    exempt: Vec<String>,
    trusted: Vec<String>,
    max_form_body: usize,
    on_refusal: OnRefusal,
}

impl fmt::Debug for CsrfLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfLayerBuilder")
            .field("exempt", &self.exempt)
            .field("trusted", &self.trusted)
            .field("max_form_body", &self.max_form_body)
            .finish_non_exhaustive()
    }
}

impl CsrfLayerBuilder {
    /// Requests whose path is `prefix` or under it (which must start with
    /// `/`; `/api` covers `/api` and `/api/orders`, not `/apiary`) are not
    /// checked: routes authenticated by something a browser does not send
    /// by itself (an API key header, a bearer token).
    pub fn exempt(mut self, prefix: impl Into<String>) -> Self {
        self.exempt.push(prefix.into());
        self
    }

    /// Requests from `origin` (`https://host[:port]`, as browsers send it
    /// in `Origin`; the scheme counts, so `http://` of the same host is
    /// another origin) pass even when `Sec-Fetch-Site` says `same-site` or
    /// `cross-site`.
    pub fn trusted_origin(mut self, origin: impl Into<String>) -> Self {
        self.trusted.push(origin.into());
        self
    }

    /// The largest form body read to find the token (default
    /// [`DEFAULT_MAX_FORM_BODY`]); a larger one is refused with 413.
    pub fn max_form_body(mut self, bytes: usize) -> Self {
        self.max_form_body = bytes;
        self
    }

    /// Answers refusals with `hook` instead of the default problem+json
    /// (see [`refusal`](crate::refusal)).
    pub fn on_refusal(
        mut self,
        hook: impl Fn(&Parts, &Refusal<'_>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.on_refusal = OnRefusal::new(hook);
        self
    }

    /// The layer; an error names an exemption that does not start with `/`
    /// or a trusted origin that is not `scheme://host[:port]`.
    pub fn build(self) -> Result<CsrfLayer, Error> {
        if let Some(bad) = self.exempt.iter().find(|p| !p.starts_with('/')) {
            return Err(Error::config(format!(
                "a CSRF exemption must be a path prefix starting with '/': {bad:?}"
            )));
        }
        let mut trusted = Vec::with_capacity(self.trusted.len());
        for origin in &self.trusted {
            let parsed = parse_origin(origin.as_bytes()).ok_or_else(|| {
                Error::config(format!(
                    "a trusted origin must be scheme://host[:port], as in Origin: {origin:?}"
                ))
            })?;
            trusted.push(parsed);
        }
        Ok(CsrfLayer {
            config: Arc::new(Config {
                exempt: self.exempt,
                trusted,
                max_form_body: self.max_form_body,
                on_refusal: self.on_refusal,
            }),
        })
    }
}

/// An `Origin` value (`scheme://host[:port]`, nothing after) as its
/// lowercase scheme and `host[:port]`, without the scheme's default port
/// (`:443` for https, `:80` for http); `None` for `null` or anything else.
fn parse_origin(origin: &[u8]) -> Option<(String, String)> {
    let origin = std::str::from_utf8(origin).ok()?;
    let (scheme, rest) = origin.split_once("://")?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok || rest.is_empty() {
        return None;
    }
    // Only a host and port: no path, query, user info.
    let authority: http::uri::Authority = rest.parse().ok()?;
    if authority.as_str().contains('@') || authority.as_str().len() != rest.len() {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let authority = without_default_port(authority.as_str(), &scheme);
    Some((scheme, authority))
}

/// `host[:port]` in lower case, without `:443` (https) or `:80` (http).
fn without_default_port(authority: &str, scheme: &str) -> String {
    let authority = authority.to_ascii_lowercase();
    let default = match scheme {
        "https" => Some(":443"),
        "http" => Some(":80"),
        _ => None,
    };
    match default.and_then(|port| authority.strip_suffix(port)) {
        Some(host) => host.to_owned(),
        None => authority,
    }
}

impl<S> Layer<S> for CsrfLayer {
    type Service = CsrfService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CsrfService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service a [`CsrfLayer`] makes.
#[derive(Clone)]
pub struct CsrfService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> fmt::Debug for CsrfService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether `path` is `prefix` or under it: `/api` covers `/api` and
/// `/api/x`, not `/apiary`; `/api/` covers `/api/x`.
fn is_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// What the request's headers decide.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A safe method or an exempt path: not checked.
    Unchecked,
    /// The browser says it comes from this origin (or a trusted one).
    SameOrigin,
    /// The browser says (by `Sec-Fetch-Site`) it comes from elsewhere.
    CrossOrigin,
    /// No `Sec-Fetch-Site`, and no `Origin` of this host: the token
    /// decides.
    Token,
}

impl Config {
    fn verdict(&self, parts: &Parts) -> Verdict {
        if matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        ) || self
            .exempt
            .iter()
            .any(|prefix| is_under(parts.uri.path(), prefix))
        {
            return Verdict::Unchecked;
        }
        let headers = &parts.headers;
        // One Origin, else none usable.
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let origin = match (origins.next(), origins.next()) {
            (Some(origin), None) => parse_origin(origin.as_bytes()),
            _ => None,
        };
        let trusted = origin.as_ref().is_some_and(|o| self.trusted.contains(o));
        if let Some(site) = headers.get("sec-fetch-site") {
            return match site.as_bytes() {
                b"same-origin" | b"none" => Verdict::SameOrigin,
                _ if trusted => Verdict::SameOrigin,
                _ => Verdict::CrossOrigin,
            };
        }
        // No Fetch Metadata: an older browser, a page served over plain
        // http (browsers send it to secure contexts only), or a script.
        let Some((scheme, authority)) = origin else {
            return Verdict::Token;
        };
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        if trusted || host.is_some_and(|h| without_default_port(h, &scheme) == authority) {
            return Verdict::SameOrigin;
        }
        // Another origin, or one this host is not called by (a proxy that
        // rewrites Host): the token decides, which a page elsewhere cannot
        // know. A lone Origin is no proof either way.
        tracing::debug!(
            origin = %format!("{scheme}://{authority}"),
            host = host.unwrap_or(""),
            "CSRF: Origin is not this host; checking the token"
        );
        Verdict::Token
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CsrfService<S>
where
    S: Service<Request<ResponseBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let verdict = self.config.verdict(&parts);
        let config = &self.config;
        match verdict {
            Verdict::Unchecked => {}
            Verdict::SameOrigin => crate::metrics::request("csrf", "same_origin"),
            Verdict::CrossOrigin => {
                crate::metrics::request("csrf", "cross_origin");
                let problem = Problem::new(
                    StatusCode::FORBIDDEN,
                    "Cross-site request refused",
                    "This request was sent from another site.",
                );
                let res = refuse(config, &parts, RefusalKind::CrossOrigin, problem);
                return ResponseFuture::new(State::Ready { res: Some(Ok(res)) });
            }
            Verdict::Token => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let config = config.clone();
                let fut = Box::pin(check_token(config, inner, parts, body));
                return ResponseFuture::new(State::Checking { fut });
            }
        }
        let req = Request::from_parts(parts, ResponseBody::inner(body));
        ResponseFuture::new(State::Inner {
            fut: self.inner.call(req),
        })
    }
}

/// The answer to a refused request: the application's, else the
/// problem+json.
fn refuse<B>(
    config: &Config,
    parts: &Parts,
    kind: RefusalKind,
    problem: Problem,
) -> Response<ResponseBody<B>> {
    let refusal = Refusal::new("csrf", kind, problem);
    config
        .on_refusal
        .answer(parts, &refusal)
        .map(ResponseBody::full)
}

/// Step 3: the token in the header or the form must be the session's.
async fn check_token<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ResponseBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
{
    let Some(session) = parts.extensions.get::<Session>().cloned() else {
        tracing::error!("CsrfLayer needs a SessionLayer outside it to check tokens");
        return Ok(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Session layer missing",
            "The CSRF check needs redis_layers::session::SessionLayer outside CsrfLayer.",
        )
        .to_response_bytes()
        .map(ResponseBody::full));
    };
    let (sent, body) = match header_token(&parts.headers) {
        Some(sent) => (Some(sent), ResponseBody::inner(body)),
        None if is_form(&parts.headers) => {
            match crate::body::read_whole(body, config.max_form_body).await {
                Ok(bytes) => (form_token(&bytes), ResponseBody::full(bytes)),
                Err(crate::body::ReadError::TooLarge) => {
                    crate::metrics::request("csrf", "body_too_large");
                    let problem = Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Form too large",
                        format!(
                            "A form without Origin is read for its token, up to {} bytes.",
                            config.max_form_body
                        ),
                    );
                    return Ok(refuse(&config, &parts, RefusalKind::BodyTooLarge, problem));
                }
                Err(crate::body::ReadError::Read) => {
                    crate::metrics::request("csrf", "body_unreadable");
                    let problem = Problem::new(
                        StatusCode::BAD_REQUEST,
                        "Unreadable body",
                        "The request's body could not be read.",
                    );
                    return Ok(refuse(
                        &config,
                        &parts,
                        RefusalKind::BodyUnreadable,
                        problem,
                    ));
                }
            }
        }
        None => (None, ResponseBody::inner(body)),
    };
    let stored = match session.get::<String>(TOKEN_KEY).await {
        Ok(stored) => stored,
        // A value of another type under the key is no token.
        Err(SessionError::Deserialize { .. }) => None,
        Err(e) => {
            crate::metrics::request("csrf", "store_error");
            let problem = e.problem();
            let kind = RefusalKind::StoreFailure;
            return Ok(refuse(&config, &parts, kind, problem));
        }
    };
    let matches = match (&sent, &stored) {
        (Some(sent), Some(stored)) => {
            use subtle::ConstantTimeEq as _;
            is_token(stored) && bool::from(sent.as_bytes().ct_eq(stored.as_bytes()))
        }
        _ => false,
    };
    if !matches {
        crate::metrics::request("csrf", "bad_token");
        let detail = if sent.is_none() {
            "This form has no CSRF token and the browser sent no Origin; reload the form and send it again."
        } else {
            "This form's CSRF token is not this session's; reload the form and send it again."
        };
        let problem = Problem::new(StatusCode::FORBIDDEN, "CSRF token missing or wrong", detail);
        return Ok(refuse(&config, &parts, RefusalKind::CsrfToken, problem));
    }
    crate::metrics::request("csrf", "token");
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    let res = inner.call(Request::from_parts(parts, body)).await?;
    Ok(res.map(ResponseBody::inner))
}

/// The token in the `x-csrf-token` header (one value, short enough).
fn header_token(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(TOKEN_HEADER).iter();
    let value = values.next()?;
    if values.next().is_some() || value.len() > 256 {
        return None;
    }
    value.to_str().ok().map(str::to_owned)
}

/// Whether the body is an `application/x-www-form-urlencoded` form.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The form's `csrf_token` field, when it has exactly one.
fn form_token(body: &[u8]) -> Option<String> {
    let mut found = None;
    for (name, value) in form_urlencoded::parse(body) {
        if name == TOKEN_FIELD {
            if found.is_some() {
                return None;
            }
            found = Some(value.into_owned());
        }
    }
    found
}

pin_project! {
    /// The response future of [`CsrfService`]: the inner service's, a
    /// refusal, or the token check (boxed) then the inner service's.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        // Passed on without a check, or by its headers.
        Inner { #[pin] fut: F },
        // Refused by its headers.
        Ready { res: Option<Result<Response<ResponseBody<B>>, E>> },
        // The token check, then the inner service.
        Checking { fut: BoxFuture<'static, Result<Response<ResponseBody<B>>, E>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    fn new(state: State<F, B, E>) -> Self {
        ResponseFuture { state }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut } => fut.poll(cx).map_ok(|res| res.map(ResponseBody::inner)),
            StateProj::Ready { res } => Poll::Ready(
                res.take()
                    .expect("csrf: a response future polled after it completed"),
            ),
            StateProj::Checking { fut } => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn layer(configure: impl FnOnce(CsrfLayerBuilder) -> CsrfLayerBuilder) -> Arc<Config> {
        configure(CsrfLayer::builder()).build().unwrap().config
    }

    #[test]
    fn the_headers_decide_in_order() {
        let c = layer(|b| {
            b.exempt("/api/")
                .exempt("/hook")
                .trusted_origin("https://Admin.Example.com")
        });
        let v = |method, path, headers: &[(&str, &str)]| c.verdict(&parts(method, path, headers));
        let cross = [("sec-fetch-site", "cross-site")];
        assert_eq!(v("GET", "/", &cross), Verdict::Unchecked);
        assert_eq!(v("POST", "/api/x", &cross), Verdict::Unchecked);
        assert_eq!(v("POST", "/apix", &cross), Verdict::CrossOrigin);
        assert_eq!(v("POST", "/hook", &cross), Verdict::Unchecked);
        assert_eq!(v("POST", "/hook/a", &cross), Verdict::Unchecked);
        assert_eq!(
            v("POST", "/hooks", &cross),
            Verdict::CrossOrigin,
            "a segment, not a prefix"
        );
        assert_eq!(
            v("post", "/", &cross),
            Verdict::CrossOrigin,
            "an unknown method is unsafe"
        );
        assert_eq!(
            v("POST", "/", &[("sec-fetch-site", "same-origin")]),
            Verdict::SameOrigin
        );
        assert_eq!(
            v("POST", "/", &[("sec-fetch-site", "none")]),
            Verdict::SameOrigin
        );
        assert_eq!(
            v("POST", "/", &[("sec-fetch-site", "same-site")]),
            Verdict::CrossOrigin
        );
        assert_eq!(
            v("DELETE", "/", &[("sec-fetch-site", "bogus")]),
            Verdict::CrossOrigin
        );
        // Sec-Fetch-Site wins over a matching Origin.
        let h = [
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://a.test"),
            ("host", "a.test"),
        ];
        assert_eq!(v("POST", "/", &h), Verdict::CrossOrigin);
        // A trusted origin passes even cross-site; its scheme counts.
        let h = [
            ("sec-fetch-site", "same-site"),
            ("origin", "https://admin.example.com"),
        ];
        assert_eq!(v("POST", "/", &h), Verdict::SameOrigin);
        let h = [
            ("sec-fetch-site", "same-site"),
            ("origin", "https://admin.example.com:443"),
        ];
        assert_eq!(v("POST", "/", &h), Verdict::SameOrigin);
        let h = [
            ("sec-fetch-site", "same-site"),
            ("origin", "http://admin.example.com"),
        ];
        assert_eq!(v("POST", "/", &h), Verdict::CrossOrigin);
        // Origin alone, against Host (ports count, default ones and case do
        // not); anything else leaves it to the token.
        let o = |origin, host| v("PUT", "/", &[("origin", origin), ("host", host)]);
        assert_eq!(o("http://a.test:8080", "A.test:8080"), Verdict::SameOrigin);
        assert_eq!(o("https://a.test", "a.test:443"), Verdict::SameOrigin);
        assert_eq!(o("http://a.test:80", "a.test"), Verdict::SameOrigin);
        assert_eq!(o("https://a.test", "a.test:80"), Verdict::Token);
        assert_eq!(o("http://a.test:8081", "a.test:8080"), Verdict::Token);
        assert_eq!(o("http://evil.test", "a.test"), Verdict::Token);
        assert_eq!(o("null", "a.test"), Verdict::Token);
        assert_eq!(o("http://a.test/path", "a.test"), Verdict::Token);
        assert_eq!(o("http://user@a.test", "a.test"), Verdict::Token);
        assert_eq!(
            o("https://admin.example.com", "a.test"),
            Verdict::SameOrigin
        );
        // Two Origin headers are none.
        let two = [
            ("origin", "http://a.test"),
            ("origin", "http://a.test"),
            ("host", "a.test"),
        ];
        assert_eq!(v("POST", "/", &two), Verdict::Token);
        // HTTP/2: no Host, the URI's authority.
        let h2 = parts(
            "POST",
            "https://a.test/form",
            &[("origin", "https://a.test")],
        );
        assert_eq!(c.verdict(&h2), Verdict::SameOrigin);
        let h2 = parts(
            "POST",
            "https://a.test/form",
            &[("origin", "https://b.test")],
        );
        assert_eq!(c.verdict(&h2), Verdict::Token);
        // Neither header: the token decides.
        assert_eq!(v("POST", "/", &[("host", "a.test")]), Verdict::Token);
    }

    #[test]
    fn settings_are_checked_when_built() {
        assert!(CsrfLayer::builder().exempt("api/").build().is_err());
        for bad in [
            "example.com",
            "https://",
            "https://a.test/",
            "null",
            "https://u@a.test",
        ] {
            assert!(
                CsrfLayer::builder().trusted_origin(bad).build().is_err(),
                "{bad}"
            );
        }
        assert!(CsrfLayer::builder()
            .trusted_origin("http://a.test:8080")
            .build()
            .is_ok());
    }

    #[test]
    fn tokens_are_found_once_in_headers_and_forms() {
        let token = new_token().unwrap();
        assert!(is_token(&token));
        assert!(!is_token("short"));
        let body = format!("a=1&{TOKEN_FIELD}={token}&b=2");
        assert_eq!(form_token(body.as_bytes()).as_deref(), Some(token.as_str()));
        let twice = format!("{TOKEN_FIELD}=x&{TOKEN_FIELD}={token}");
        assert_eq!(form_token(twice.as_bytes()), None, "two tokens are none");
        assert_eq!(form_token(b"a=1"), None);
        let mut headers = HeaderMap::new();
        headers.insert(TOKEN_HEADER, token.parse().unwrap());
        assert_eq!(header_token(&headers).as_deref(), Some(token.as_str()));
        headers.append(TOKEN_HEADER, "other".parse().unwrap());
        assert_eq!(header_token(&headers), None, "two headers are none");
        let form = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_form(&h)
        };
        assert!(form("application/x-www-form-urlencoded"));
        assert!(form("Application/X-WWW-Form-Urlencoded; charset=utf-8"));
        assert!(!form("multipart/form-data; boundary=x"));
    }
}
