//! What the cache does with a GET or HEAD, step by step: the lookup
//! ([`lookup`](super::lookup)), coalescing
//! ([`coalesce`](super::coalesce)), a stale entry
//! ([`revalidate`](super::revalidate)), and the handler's response
//! ([`miss`](super::miss)).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::coalesce::{gather, Gathered, Waiting};
use super::config::Config;
use super::directives::Directives;
use super::fields::{status_field, take_tags, with_status, CACHE_STATUS};
use super::key::{key_line, key_uri, store_key};
use super::lookup::{answer_read, find, local_answer, Found, SessionProbe};
use super::miss::settle_now;
use super::policy;
use super::purger::Purger;
use super::revalidate::{revalidate, serve_and_refresh};
use super::variants::Varying;
use crate::body::ResponseBody;

/// GET and HEAD: answer from the store when a stored response may be used,
/// else ask the inner service (and store its response when it may be).
/// `looked`: [`answer_locally`](super::lookup::answer_locally) already
/// asked the local tier.
pub(super) async fn read<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    mut req: Request<ReqBody>,
    looked: bool,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    // One clock read for the generation's refresh and the local tier's age.
    let now = SystemTime::now();
    let generation = match config.generation.fresh(now) {
        Some(generation) => Ok(generation),
        // Boxed: the store call's state would otherwise grow every
        // request's future (measured: local hits 0.40 -> 0.26 of bare).
        None => {
            // (Boxed in a statement of its own: a future made within the
            // awaited expression keeps its place in this one's state.)
            let current = Box::pin(config.generation.current(&config.store, now));
            current.await
        }
    };
    let generation = match generation {
        Ok(generation) => generation,
        // Failing closed, only a request that would have looked the store
        // up is refused (one with a session, or `no-cache` where honoured,
        // goes to the handler as it always does).
        Err(e)
            if config.failure == crate::FailurePolicy::Closed
                && !SessionProbe::of(&req, config.request_directives).personal()
                && !Directives::of_request(req.headers(), config.request_directives).no_cache =>
        {
            return Ok(refuse(&config, req, &e));
        }
        Err(e) => {
            // Without the generation no key is known to be current:
            // neither read nor store.
            config.failures.failed(&e, "asking the handler", false);
            let bypass = Box::pin(async move {
                req.extensions_mut().insert(Purger::of(&config));
                let (mut head, body) = crate::trace::unmeasured(inner.call(req))
                    .await?
                    .into_parts();
                // Tags are the cache's business, stored or not.
                take_tags(&mut head.headers, &config.tag_header);
                Ok(with_status(
                    Response::from_parts(head, ResponseBody::inner(body)),
                    &config.name,
                    "fwd=miss; detail=store-error",
                ))
            });
            return bypass.await;
        }
    };
    let extra = config.key.extra_of(&req);
    let url = store_key(&key_line(
        &config.key,
        key_uri(&req),
        req.headers(),
        extra.as_deref(),
        generation,
    ));
    let directives = Directives::of_request(req.headers(), config.request_directives);
    // Inside the session layer: a request with a session is never answered
    // from the store (its handler may read the session), and a response
    // whose handler read the session is never stored.
    let session = SessionProbe::of(&req, config.request_directives);
    // The local tier first (unless already asked): a hit there is no
    // round trip.
    if let (Some(local), false, false, false) = (
        &config.local,
        looked,
        session.personal(),
        directives.no_cache,
    ) {
        if let Some(res) = local
            .get_for(&url, req.headers())
            .and_then(|entry| local_answer(&config, &entry, &req, &directives, now))
        {
            return Ok(res);
        }
    }
    // Then the store: the request's variant, when the URL is known to vary.
    let mut key = Varying::key_for(&config.varying, url, req.headers());
    let mut first = None;
    if !session.personal() && !directives.no_cache {
        match find(&config, &mut key, req.headers(), &directives, None).await {
            Found::Usable(entry, age) => {
                let (headers, method) = (req.headers(), req.method());
                return Ok(answer_read(&config, &key, entry, headers, method, age, ""));
            }
            Found::Failed(e) => return Ok(refuse(&config, req, &e)),
            not => first = Some(not),
        }
    }
    // A miss, a stale entry or a bypass: the rest, boxed apart (its state
    // would otherwise be part of every request's future, hits included;
    // most of a hit's future, 2.9 KB, is the store call).
    let rest = Box::pin(read_on(config, inner, req, key, directives, session, first));
    rest.await
}

/// The answer when a lookup failed and the layer fails closed: the
/// store-failure problem (or the application's answer), marked
/// `store-error` in `Cache-Status`, never stored.
pub(super) fn refuse<ReqBody, B>(
    config: &Config,
    req: Request<ReqBody>,
    e: &crate::Error,
) -> Response<ResponseBody<B>> {
    config
        .failures
        .failed(e, "refusing the request (fail-closed)", true);
    let (parts, _) = req.into_parts();
    let problem = crate::Problem::store_failure("cache", e);
    let refusal = crate::Refusal::new("cache", crate::RefusalKind::StoreFailure, problem);
    let res = config.on_refusal.answer(&parts, &refusal);
    with_status(
        res.map(ResponseBody::full),
        &config.name,
        "fwd=miss; detail=store-error",
    )
}

/// [`read`] once the store had nothing to use as it is: `first` is what
/// it found (`None` when it was not asked).
async fn read_on<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    mut req: Request<ReqBody>,
    mut key: String,
    directives: Directives,
    session: SessionProbe,
    first: Option<Found>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let is_get = req.method() == Method::GET;
    // When this request started to wait on another's fetch, if it does.
    let arrived = policy::unix_ms(SystemTime::now());
    let (fwd, stale, waiting) = if session.personal() {
        ("bypass", None, Waiting::default())
    } else {
        let method = req.method().clone();
        let gathered = gather(
            &config,
            &mut key,
            req.headers(),
            &method,
            &directives,
            arrived,
            first,
            !session.never_stored_before_the_handler(),
        );
        match gathered.await {
            Gathered::Answer(res) => return Ok(res),
            Gathered::Failed(e) => return Ok(refuse(&config, req, &e)),
            Gathered::Ask(fwd, stale, waiting) => (fwd, stale, waiting),
        }
    };
    if directives.only_if_cached {
        // RFC 9111 §5.2.1.7: nothing usable stored, so 504.
        let mut res = Response::new(ResponseBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        res.headers_mut().insert(
            CACHE_STATUS,
            status_field(&config.name, &["fwd=miss; detail=only-if-cached"]),
        );
        return Ok(res);
    }
    if let Some((entry, age)) = stale {
        if is_get && fwd == "stale" && policy::serve_while_revalidating(&entry, age) {
            return Ok(serve_and_refresh(&config, inner, req, key, entry, age));
        }
        let stale = (entry, age);
        return revalidate(&config, inner, req, key, stale, fwd, &session, waiting).await;
    }
    // A miss, or a bypass. The handler runs only here and in the steps
    // above (never for a stored answer): it may want to purge.
    let request_headers = is_get.then(|| req.headers().clone());
    req.extensions_mut().insert(Purger::of(&config));
    let res = crate::trace::unmeasured(inner.call(req)).await?;
    match request_headers {
        Some(h) => {
            // Not a response made while the store was failing for this
            // request: its write could land when the store comes back (a
            // paused Redis) and, made from a degraded handler, serve a
            // wrong page everywhere until it expires.
            let storable = !session.read() && !fwd.contains("store-error");
            let (res, params) = settle_now(&config, key, &h, res, storable, fwd, waiting);
            Ok(with_status(res, &config.name, &params))
        }
        None => {
            let (mut head, body) = res.into_parts();
            take_tags(&mut head.headers, &config.tag_header);
            let params = format!("fwd={fwd}; fwd-status={}", head.status.as_u16());
            Ok(with_status(
                Response::from_parts(head, ResponseBody::inner(body)),
                &config.name,
                &params,
            ))
        }
    }
}
