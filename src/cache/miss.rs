//! The handler's response on its way out: whether it is stored, its
//! entry, and the write, in the background, by the fill lease's holder.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Response};
use http_body::Body;

use super::coalesce::Waiting;
use super::config::Config;
use super::directives::{CacheOverride, Directives};
use super::fields::{never_stored, take_tags};
use super::key::vary_hash;
use super::layout::{encode_pointer, split_key, variant_key, Entry};
use super::policy;
use crate::body::{ResponseBody, Tap};

/// The handler's response on its way out: decides whether it is stored
/// (then copies its body as it streams), strips the tag header, and
/// returns it with the `Cache-Status` parameters. `flight`, when this
/// request leads a coalesced miss, is released once the entry is stored
/// (or not).
pub(super) fn settle_now<ResBody>(
    config: &Arc<Config>,
    key: String,
    request_headers: &HeaderMap,
    res: Response<ResBody>,
    may_store: bool,
    fwd: &str,
    waiting: Waiting,
) -> (Response<ResponseBody<ResBody>>, String)
where
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let (mut head, body) = res.into_parts();
    let tags = take_tags(&mut head.headers, &config.tag_header);
    let mut copy = None;
    let mut stored = "";
    // Only a fill lease's holder stores (see `write_entry`).
    if may_store && waiting.lease.is_some() {
        let requested = waiting
            .lease
            .as_ref()
            .map_or_else(SystemTime::now, |l| l.began);
        if let Some((entry, ttl)) = plan(config, request_headers, &head, tags, requested) {
            let hint = usize::try_from(body.size_hint().lower()).unwrap_or(0);
            let config = config.clone();
            copy = Some(Tap::new(config.max_body, hint, move |body| {
                write_entry(config, key, Entry { body, ..entry }, ttl, waiting);
            }));
            stored = "; stored";
        }
    }
    let params = format!("fwd={fwd}; fwd-status={}{stored}", head.status.as_u16());
    (
        Response::from_parts(head, ResponseBody::tapped(body, copy)),
        params,
    )
}

/// The entry (without its body) and retention for a response that may be
/// stored, or `None`.
pub(super) fn plan(
    config: &Config,
    request_headers: &HeaderMap,
    head: &http::response::Parts,
    tags: Vec<String>,
    requested: SystemTime,
) -> Option<(Entry, Duration)> {
    let too_big = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > config.max_body as u64);
    if too_big {
        tracing::debug!("response not stored: body larger than max_body");
        return None;
    }
    let forced = match head.extensions.get::<CacheOverride>() {
        Some(CacheOverride::Forbid) => {
            tracing::trace!("response not stored: its handler forbade it");
            return None;
        }
        Some(CacheOverride::Store(ttl)) => Some(Directives::forced(ttl.as_secs())),
        None => None,
    };
    let now = SystemTime::now();
    let keep = match policy::storable_as(
        request_headers,
        head.status,
        &head.headers,
        forced,
        &config.settings,
        requested,
        now,
    ) {
        Ok(keep) => keep,
        Err(why) => {
            tracing::trace!(?why, "response not stored");
            return None;
        }
    };
    let vary = policy::vary_names(&head.headers).unwrap_or_default();
    let mut headers = head.headers.clone();
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| never_stored(n))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
    let entry = Entry {
        stored_at: policy::unix_ms(now),
        initial_age: keep.initial_age,
        lifetime: keep.lifetime,
        swr: keep.swr,
        sie: keep.sie,
        flags: keep.flags,
        status: head.status,
        vary_hash: vary_hash(&vary, request_headers),
        vary,
        headers,
        tags,
        body: Bytes::new(),
    };
    Some((entry, Duration::from_millis(keep.retention)))
}

/// Writes an entry in the background, for the holder of its fill lease
/// (`waiting.lease`; without one nothing is written): the store writes it
/// only while the lease is still the holder's, so a response fetched
/// before a write's invalidation (which removed the lease) is never
/// stored after it. `flight` is released when the write is done. `key`
/// names the URL (or any variant of it): a response that varies is
/// stored as the variant the request's fields pick.
pub(super) fn write_entry(
    config: Arc<Config>,
    key: String,
    entry: Entry,
    ttl: Duration,
    mut waiting: Waiting,
) {
    let url = split_key(&key).0;
    let (key, pointer) = if entry.vary.is_empty() {
        (url.to_owned(), None)
    } else {
        (
            variant_key(url, &entry.vary_hash),
            encode_pointer(&entry.vary),
        )
    };
    let (Some(raw), true) = (entry.encode(), entry.vary.is_empty() || pointer.is_some()) else {
        tracing::debug!("response not stored: a header is too long for an entry");
        return;
    };
    crate::task::spawn_here(async move {
        let Some(lease) = waiting.lease.as_mut() else {
            waiting.done(false);
            return;
        };
        // Before the write: a purge announced while it runs wins.
        let changes = config.local.as_ref().map(|l| l.changes());
        let mut fill = lease.fill();
        if let Some(pointer) = &pointer {
            fill = fill.variant(pointer, config.max_variants);
        }
        let stored = config.store.store(&key, raw, ttl, &entry.tags, fill).await;
        let written = match stored {
            Ok(true) => {
                lease.written = true;
                config.varying.learn(&key, &entry.vary);
                if let (Some(local), Some(changes)) = (&config.local, changes) {
                    local.keep(&key, entry, changes);
                }
                true
            }
            Ok(false) => {
                tracing::debug!(
                    "response not stored: its URI was invalidated or a tag of it purged \
                     since its fetch began (or its lease ended), a tag of it records \
                     as many live entries as it may, or its URL as many variants"
                );
                false
            }
            Err(e) => {
                config.failures.failed(&e, "response not stored", false);
                false
            }
        };
        waiting.done(written);
    });
}
