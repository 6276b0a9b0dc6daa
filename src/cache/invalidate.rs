//! The write path: a non-error answer to an unsafe method invalidates
//! the stored responses of its target URI (RFC 9111 §4.4).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response};
use tower_service::Service;

use super::config::Config;
use super::fields::take_tags;
use super::key::{cache_key, key_uri};
use crate::body::ResponseBody;

/// Unsafe methods: a non-error response invalidates what is stored for
/// the target URI and for `Location` and `Content-Location` on the same
/// origin (RFC 9111 §4.4), before the response goes out, so the client's
/// next read sees its write.
pub(super) async fn write<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let uri = key_uri(&req).clone();
    let headers = req.headers().clone();
    let extra = config.key.extra_of(&req);
    let res = crate::trace::unmeasured(inner.call(req)).await?;
    let (mut head, body) = res.into_parts();
    take_tags(&mut head.headers, &config.tag_header);
    if head.status.is_success() || head.status.is_redirection() {
        let mut targets = vec![uri.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(target) = head
                .headers
                .get(name)
                .and_then(|v| same_origin(&uri, &headers, v))
            {
                targets.push(target);
            }
        }
        // Concurrent writes to the same URIs share one run of store calls
        // that begins after each of their handlers finished.
        let id = targets
            .iter()
            .map(|t| cache_key(&config.key, t, &headers, extra.as_deref(), 0))
            .collect::<Vec<_>>()
            .join(",");
        config
            .invalidations
            .run(id, || {
                invalidate(&config, &targets, &headers, extra.as_deref())
            })
            .await;
    }
    Ok(Response::from_parts(head, ResponseBody::inner(body)))
}

/// Removes the entries of `targets` (under the store's generation, and
/// the one this instance knew) for the request with `headers` and
/// `extra` (what the application adds to its key), and tells every local
/// tier; false when a store call failed.
pub(super) async fn invalidate(
    config: &Config,
    targets: &[http::Uri],
    headers: &HeaderMap,
    extra: Option<&str>,
) -> bool {
    // The store's generation now, not the one known here (up to a refresh
    // old): a purge of everything elsewhere must not make this
    // invalidation miss the entry stored since. The known one too, for
    // what this instance stored under it.
    let known = config.generation.known();
    let generation = match config.store.generation().await {
        Ok(generation) => {
            config.generation.learn(generation);
            config.generation.known()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cache store failed; a stored response was not invalidated");
            return false;
        }
    };
    let mut generations = vec![generation];
    if known != generation {
        generations.push(known);
    }
    let mut keys = Vec::new();
    for generation in generations {
        for target in targets {
            keys.push(cache_key(&config.key, target, headers, extra, generation));
        }
    }
    let mut done = true;
    for key in &keys {
        if let Err(e) = config.store.invalidate(key).await {
            tracing::warn!(error = %e, "cache store failed; a stored response was not invalidated");
            done = false;
        }
    }
    config.announce(&keys).await;
    done
}

/// `value` (an absolute or relative reference) as a URI on the request's
/// origin, or `None` when it names another origin.
pub(super) fn same_origin(
    uri: &http::Uri,
    headers: &HeaderMap,
    value: &HeaderValue,
) -> Option<http::Uri> {
    let target: http::Uri = value.to_str().ok()?.parse().ok()?;
    match target.authority() {
        None => {
            // A relative reference: resolve an absolute path only.
            let path = target.path_and_query()?.as_str();
            if !path.starts_with('/') {
                return None;
            }
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(path.parse().ok()?);
            http::Uri::from_parts(parts).ok()
        }
        Some(authority) => {
            let host = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })?;
            // The host, as the cache key has it (no scheme), of an http
            // or https URI.
            let web = target
                .scheme_str()
                .is_none_or(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
            let same = web && authority.as_str().eq_ignore_ascii_case(&host);
            same.then(|| {
                // Keyed as the request would be: without the authority when
                // the request had none.
                if uri.authority().is_some() {
                    target.clone()
                } else {
                    target
                        .path_and_query()
                        .and_then(|p| p.as_str().parse().ok())
                        .unwrap_or(target.clone())
                }
            })
        }
    }
}
