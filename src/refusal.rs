//! Refusals: what a layer answers when it does not let a request through,
//! and one hook to answer it your way.
//!
//! Every refusal is a [`Refusal`]: its [`kind`](Refusal::kind), the layer,
//! the default [`Problem`] (status, title, detail) and, where the client may
//! retry after a known time, that time. By default a layer answers with the
//! problem as `application/problem+json`. An application that renders
//! pages gives each layer's builder one function, `on_refusal`, receiving
//! the request's head and the refusal; the same function serves every
//! layer:
//!
//! ```
//! use bytes::Bytes;
//! use http::{header, request, Response};
//! use redis_layers::memory::MemoryBackend;
//! use redis_layers::rate_limit::{Policy, RateLimitLayer};
//! use redis_layers::session::SessionLayer;
//! use redis_layers::Refusal;
//!
//! /// Pages get a page; everything else the default problem+json.
//! fn restyle(request: &request::Parts, refusal: &Refusal<'_>) -> Response<Bytes> {
//!     let wants_html = request
//!         .headers
//!         .get(header::ACCEPT)
//!         .and_then(|v| v.to_str().ok())
//!         .is_some_and(|accept| accept.contains("text/html"));
//!     if !wants_html {
//!         return refusal.to_response();
//!     }
//!     let page = format!("<h1>{}</h1><p>{}</p>", refusal.title(), refusal.detail());
//!     let mut res = Response::new(Bytes::from(page));
//!     *res.status_mut() = refusal.status();
//!     res.headers_mut()
//!         .insert(header::CONTENT_TYPE, "text/html; charset=utf-8".parse().unwrap());
//!     res
//! }
//!
//! let backend = MemoryBackend::new();
//! let sessions = SessionLayer::builder(backend.clone()).on_refusal(restyle).build();
//! let limits = RateLimitLayer::builder(backend)
//!     .policy(Policy::per_minute(60))
//!     .on_refusal(restyle)
//!     .build();
//! # assert!(sessions.is_ok() && limits.is_ok());
//! ```
//!
//! Whatever the hook answers, the layer then adds what the protocol needs
//! and the response lacks: `Retry-After` where the refusal has a
//! [`retry_after`](Refusal::retry_after), the `RateLimit` fields on a rate
//! limit's refusal. The hook runs on the request's task and should not
//! block. The cache refuses only a failed lookup, and only when it fails
//! closed (its `504` for `only-if-cached` is the RFC's answer, not a
//! refusal); extractors' errors (a handler asking for a session with no
//! session layer) are the handler's, answered as problem+json.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, request, HeaderValue, Response, StatusCode};

use crate::problem::Problem;

/// Why a layer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The layer's store failed and the layer fails closed: 503 when the
    /// store could not be reached in time, 500 when it answered with an
    /// error (see [`Problem::store_failure`]). The cache refuses only this
    /// way, and only when set to fail closed.
    StoreFailure,
    /// Rate limit: a policy's quota is spent (429, with
    /// [`policies`](Refusal::policies) naming the ones that refused).
    RateLimited,
    /// Session: the session's id was renewed or ended by a concurrent
    /// request while this one ran (409); no cookie is set.
    SessionConflict,
    /// Idempotency: the request has no `Idempotency-Key` where one is
    /// required (400).
    KeyMissing,
    /// Idempotency: the `Idempotency-Key` is not a valid key (400).
    KeyInvalid,
    /// Idempotency or lock: the request names nothing to scope it by (no
    /// credential, no session user, no such header) (400).
    NoScope,
    /// Idempotency: the request's body is larger than the layer keeps; CSRF:
    /// a form read for its token is larger than the layer reads (413).
    BodyTooLarge,
    /// Idempotency or CSRF: the request's body could not be read (400).
    BodyUnreadable,
    /// Idempotency: a request with this key is still being processed
    /// (409, with a `Retry-After`).
    InFlight,
    /// Idempotency: the key was used for a different request (422).
    KeyReused,
    /// Idempotency: the request with this key was processed but its
    /// response was too large to keep for replay (409).
    NotRetained,
    /// Idempotency: the key's stored record cannot be read (409).
    Unreadable,
    /// Lock: the request's resource stayed locked for the whole wait (409,
    /// or the lock layer's configured status, with a `Retry-After`).
    Locked,
    /// CSRF: the browser says the request comes from another site
    /// (`Sec-Fetch-Site`, else `Origin`) (403).
    CrossOrigin,
    /// CSRF: the request sent neither `Sec-Fetch-Site` nor `Origin`, and
    /// not the session's token either (403).
    CsrfToken,
}

/// A refused request, as the `on_refusal` hook of each layer's builder
/// sees it. See the [module docs](self).
#[derive(Debug)]
pub struct Refusal<'a> {
    layer: &'static str,
    kind: RefusalKind,
    problem: Problem,
    retry_after: Option<Duration>,
    policies: &'a [String],
}

impl<'a> Refusal<'a> {
    /// A refusal by `layer` (its span's name: `"session"`, ...), of
    /// `kind`, whose default answer is `problem`: for testing a hook, or a
    /// layer of your own that answers as these do.
    pub fn new(layer: &'static str, kind: RefusalKind, problem: Problem) -> Self {
        Refusal {
            layer,
            kind,
            problem,
            retry_after: None,
            policies: &[],
        }
    }

    /// The time after which the client may try again (sent as
    /// `Retry-After`).
    #[must_use]
    pub fn retrying_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    pub(crate) fn naming(mut self, policies: &'a [String]) -> Self {
        self.policies = policies;
        self
    }

    /// Why the request was refused.
    pub fn kind(&self) -> RefusalKind {
        self.kind
    }

    /// The layer that refused it: `"session"`, `"rate_limit"`, `"cache"`,
    /// `"idempotency"`, `"lock"` or `"csrf"` (the names of its tracing span and
    /// metrics).
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// The default answer's status.
    pub fn status(&self) -> StatusCode {
        self.problem.status()
    }

    /// The default answer's title: short, the same for every refusal of
    /// its kind.
    pub fn title(&self) -> &str {
        self.problem.title()
    }

    /// The default answer's detail: a sentence for the client.
    pub fn detail(&self) -> &str {
        self.problem.detail()
    }

    /// The default answer's problem, to extend or render.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// When the client may try again (rate limits, locks, requests in
    /// flight); the layer sends it as `Retry-After` unless the hook's
    /// answer has one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The rate-limit policies that refused the request (empty for the
    /// other kinds).
    pub fn policies(&self) -> &[String] {
        self.policies
    }

    /// The default answer: the problem as `application/problem+json`,
    /// `Cache-Control: no-store`, and `Retry-After` when the refusal has a
    /// time (in whole seconds, at least 1).
    pub fn to_response(&self) -> Response<Bytes> {
        let mut res = self.problem.to_response_bytes();
        self.complete(&mut res);
        res
    }

    /// Adds what the protocol needs and `res` lacks (`Retry-After`).
    fn complete(&self, res: &mut Response<Bytes>) {
        if let Some(wait) = self.retry_after {
            if !res.headers().contains_key(header::RETRY_AFTER) {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, retry_after(wait));
            }
        }
    }
}

/// `Retry-After` for a wait: whole seconds rounded up, at least 1.
pub(crate) fn retry_after(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// A function answering refusals: what each builder's `on_refusal` keeps.
type Hook = dyn Fn(&request::Parts, &Refusal<'_>) -> Response<Bytes> + Send + Sync;

/// A layer's way of answering refusals: the application's hook, else the
/// default problem+json.
#[derive(Clone, Default)]
pub(crate) struct OnRefusal(Option<Arc<Hook>>);

impl OnRefusal {
    pub(crate) fn new(
        hook: impl Fn(&request::Parts, &Refusal<'_>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        OnRefusal(Some(Arc::new(hook)))
    }

    /// Whether the application answers refusals itself.
    pub(crate) fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The answer to `refusal` of a request with head `request`.
    pub(crate) fn answer(
        &self,
        request: &request::Parts,
        refusal: &Refusal<'_>,
    ) -> Response<Bytes> {
        match &self.0 {
            Some(hook) => {
                let mut res = hook(request, refusal);
                refusal.complete(&mut res);
                res
            }
            None => refusal.to_response(),
        }
    }
}

impl std::fmt::Debug for OnRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "custom"
        } else {
            "problem+json"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> request::Parts {
        http::Request::new(()).into_parts().0
    }

    #[test]
    fn the_default_is_the_problem_with_its_retry_time() {
        let problem = Problem::new(StatusCode::CONFLICT, "Busy", "Try later.");
        let refusal = Refusal::new("lock", RefusalKind::Locked, problem)
            .retrying_after(Duration::from_millis(1_200));
        let res = OnRefusal::default().answer(&head(), &refusal);
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["title"], "Busy");
        assert_eq!(body["detail"], "Try later.");
    }

    #[test]
    fn a_hook_answers_and_keeps_its_own_retry_after_else_gets_one() {
        let hook = OnRefusal::new(|req, refusal| {
            let mut res = Response::new(Bytes::from(format!(
                "{} {} {:?}",
                req.uri.path(),
                refusal.layer(),
                refusal.kind()
            )));
            *res.status_mut() = StatusCode::IM_A_TEAPOT;
            if req.uri.path() == "/own" {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("99"));
            }
            res
        });
        let refusal = Refusal::new(
            "rate_limit",
            RefusalKind::RateLimited,
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "t", "d"),
        )
        .retrying_after(Duration::from_millis(10));
        let mut req = head();
        req.uri = "/page".parse().unwrap();
        let res = hook.answer(&req, &refusal);
        assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(res.body(), "/page rate_limit RateLimited");
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        req.uri = "/own".parse().unwrap();
        assert_eq!(
            hook.answer(&req, &refusal).headers()[header::RETRY_AFTER],
            "99"
        );
        // No retry time: none added.
        req.uri = "/page".parse().unwrap();
        let plain = Refusal::new(
            "session",
            RefusalKind::SessionConflict,
            Problem::new(StatusCode::CONFLICT, "t", "d"),
        );
        assert!(!hook
            .answer(&req, &plain)
            .headers()
            .contains_key(header::RETRY_AFTER));
    }
}
