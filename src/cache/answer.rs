//! A stored response as the answer to a request: the response itself, or
//! a 304 when the request's validators match it, with `Age` and
//! `Cache-Status`.

use std::borrow::Cow;

use bytes::Bytes;
use headers::{ETag, HeaderMapExt, IfModifiedSince, IfNoneMatch, LastModified};
use http::header;
use http::{HeaderMap, Method, Request, Response, StatusCode};

use super::config::Config;
use super::fields::{number_value, set_content_length, status_field, CACHE_STATUS};
use super::layout::Entry;
use crate::body::ResponseBody;

/// The stored response as the answer to `req`; see [`respond_stored_to`].
pub(super) fn respond_stored<ReqBody, ResBody>(
    config: &Config,
    entry: Cow<'_, Entry>,
    age: u64,
    req: &Request<ReqBody>,
    params: &[&str],
) -> Response<ResponseBody<ResBody>> {
    respond_stored_to(config, entry, age, req.headers(), req.method(), params)
}

/// The stored response, or a 304 when the request's validators match it
/// (RFC 9110 §13.1.2, §13.1.3), with `Age` and `Cache-Status`.
pub(super) fn respond_stored_to<ResBody>(
    config: &Config,
    entry: Cow<'_, Entry>,
    age: u64,
    request: &HeaderMap,
    method: &Method,
    params: &[&str],
) -> Response<ResponseBody<ResBody>> {
    // RFC 9110 §13.2.1: preconditions apply to a 2xx answer only.
    let not_modified = entry.status.is_success()
        && match request.typed_get::<IfNoneMatch>() {
            Some(inm) => entry
                .headers
                .typed_get::<ETag>()
                .is_some_and(|etag| !inm.precondition_passes(&etag)),
            None => match (
                request.typed_get::<IfModifiedSince>(),
                entry.headers.typed_get::<LastModified>(),
            ) {
                (Some(since), Some(modified)) => !since.is_modified(modified.into()),
                _ => false,
            },
        };
    let (mut head, body) = if not_modified {
        // §15.4.5: the fields a 200 would have sent that describe it.
        let mut headers = HeaderMap::new();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
        ] {
            for value in entry.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let mut res = Response::new(ResponseBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        *res.headers_mut() = headers;
        res.into_parts()
    } else {
        let status = entry.status;
        let (headers, body) = match entry {
            Cow::Owned(entry) => (entry.headers, entry.body),
            Cow::Borrowed(entry) => (entry.headers.clone(), entry.body.clone()),
        };
        let mut headers = headers;
        set_content_length(&mut headers, status, body.len());
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            body
        };
        let mut res = Response::new(ResponseBody::full(body));
        *res.status_mut() = status;
        *res.headers_mut() = headers;
        res.into_parts()
    };
    head.headers.insert(header::AGE, number_value(age / 1000));
    head.headers
        .insert(CACHE_STATUS, status_field(&config.name, params));
    Response::from_parts(head, body)
}
