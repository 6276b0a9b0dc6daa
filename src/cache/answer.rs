//! A stored response as the answer to a request: the response itself, a
//! 304 when the request's validators match it, or the part a `Range`
//! asks for (RFC 9110 §14: a 206, or a 416), with `Age` and
//! `Cache-Status`.

use std::borrow::Cow;

use bytes::Bytes;
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
    let not_modified = entry.status.is_success() && not_modified(request, &entry);
    // §14.2: a Range on a GET of a complete 200, unless If-Range says the
    // client holds another version (§13.1.5).
    let range = if !not_modified && method == Method::GET && entry.status == StatusCode::OK {
        request
            .get(header::RANGE)
            .filter(|_| if_range_holds(request, &entry.headers))
            .map_or(Part::Whole, |range| part(range, entry.body.len() as u64))
    } else {
        Part::Whole
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
        let (status, body) = match range {
            Part::Whole => (status, body),
            Part::Bytes(first, last) => {
                let len = body.len();
                let value = format!("bytes {first}-{last}/{len}");
                if let Ok(value) = http::HeaderValue::try_from(value) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
                let body = body.slice(first as usize..=last as usize);
                headers.insert(header::CONTENT_LENGTH, number_value(body.len() as u64));
                (StatusCode::PARTIAL_CONTENT, body)
            }
            Part::Unsatisfiable => {
                let len = body.len();
                headers.clear();
                if let Ok(value) = http::HeaderValue::try_from(format!("bytes */{len}")) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
                headers.insert(header::CONTENT_LENGTH, number_value(0));
                (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
            }
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

/// Whether the request's validators match the stored response `entry`
/// (RFC 9111 §4.3.2, RFC 9110 §13.1.2-3), so a 304 answers it.
/// `If-None-Match` first: `*`, or an entity-tag equal to the stored `ETag`
/// by weak comparison (`W/` aside, the same opaque tag, commas inside it
/// included); a malformed list matches nothing. Without it,
/// `If-Modified-Since` (ignored when not an HTTP-date): not modified when
/// the stored `Last-Modified` is no later, else its `Date`, else the time
/// it was stored.
pub(super) fn not_modified(request: &HeaderMap, entry: &Entry) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let stored = entry
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| entity_tags(v).and_then(|tags| tags.first().copied().flatten()));
        return request.get_all(header::IF_NONE_MATCH).iter().any(|line| {
            let Some(tags) = line.to_str().ok().and_then(entity_tags) else {
                return false;
            };
            tags.iter().any(|tag| match tag {
                None => true,
                Some(tag) => stored.is_some_and(|stored| weak(stored) == weak(tag)),
            })
        });
    }
    let date = |v: &http::HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    };
    let Some(since) = request.get(header::IF_MODIFIED_SINCE).and_then(date) else {
        return false;
    };
    let modified = entry
        .headers
        .get(header::LAST_MODIFIED)
        .and_then(date)
        .or_else(|| entry.headers.get(header::DATE).and_then(date))
        .unwrap_or_else(|| {
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(entry.stored_at)
        });
    modified <= since
}

/// An entity-tag without its weakness.
fn weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// The members of an entity-tag list (RFC 9110 §8.8.3): `None` for `*`,
/// else the tag with its quotes (and `W/`); `None` for the whole list when
/// it is malformed. A tag may hold commas (`"a,b"`), so the list is read
/// tag by tag, not split on them.
fn entity_tags(text: &str) -> Option<Vec<Option<&str>>> {
    let mut tags = Vec::new();
    let mut rest = text.trim_start_matches([' ', '\t', ',']);
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('*') {
            tags.push(None);
            rest = after;
        } else {
            let opaque = rest.strip_prefix("W/").unwrap_or(rest);
            let inner = opaque.strip_prefix('"')?;
            let close = inner.find('"')?;
            // etagc: visible characters but the quote, and obs-text.
            if inner[..close].bytes().any(|b| b < 0x21 || b == 0x7f) {
                return None;
            }
            let len = rest.len() - inner.len() + close + 1;
            tags.push(Some(&rest[..len]));
            rest = &rest[len..];
        }
        let trimmed = rest.trim_start_matches([' ', '\t']);
        if !trimmed.is_empty() && !trimmed.starts_with(',') {
            return None;
        }
        rest = trimmed.trim_start_matches([' ', '\t', ',']);
    }
    Some(tags)
}

/// What a `Range` asks of a stored body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    /// All of it: no range, one this cache does not serve (another unit,
    /// several ranges, a malformed one), or one If-Range turned off.
    Whole,
    /// Bytes `first..=last`.
    Bytes(u64, u64),
    /// None of the body: a 416.
    Unsatisfiable,
}

/// The part `range` (a `Range` field) asks of a body of `len` bytes
/// (RFC 9110 §14.1.2): a single `bytes` range, `first-last`, `first-` or
/// `-suffix`; `last` past the end means the end. Several ranges are
/// answered whole (a server may ignore `Range`; no multipart here).
pub(super) fn part(range: &http::HeaderValue, len: u64) -> Part {
    let Ok(text) = range.to_str() else {
        return Part::Whole;
    };
    let Some((unit, set)) = text.split_once('=') else {
        return Part::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Part::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Part::Whole;
    };
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.is_empty(), number(first), number(last)) {
        // -suffix: the last `suffix` bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 {
                Part::Unsatisfiable
            } else if len == 0 {
                // A suffix of an empty body is all of it (§14.1.1).
                Part::Whole
            } else {
                Part::Bytes(len.saturating_sub(suffix), len - 1)
            }
        }
        (false, Some(first), last) if last.is_some() || last_is_open(set) => {
            if last.is_some_and(|last| last < first) {
                return Part::Whole;
            }
            if first >= len {
                return Part::Unsatisfiable;
            }
            Part::Bytes(first, last.map_or(len - 1, |last| last.min(len - 1)))
        }
        _ => Part::Whole,
    }
}

/// Whether `first-` is open-ended (nothing after the dash).
fn last_is_open(set: &str) -> bool {
    set.trim().ends_with('-')
}

/// Whether the request's `If-Range` (if any) lets its `Range` apply to the
/// stored response with `stored` fields (RFC 9110 §13.1.5): an entity-tag
/// that strongly matches the stored `ETag`, or a date equal to a strong
/// `Last-Modified` (one at least a second before the stored `Date`;
/// without a `Date` it cannot be told strong, and the whole is sent).
pub(super) fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(if_range) = request.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(value) = if_range.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        // Strong comparison: neither weak, the same opaque tag.
        let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
        return !value.starts_with("W/")
            && etag.is_some_and(|etag| !etag.starts_with("W/") && etag.trim() == value);
    }
    let date = |v: &str| httpdate::parse_http_date(v.trim()).ok();
    let modified = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(date);
    let sent = stored
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(date);
    match (date(value), modified) {
        (Some(asked), Some(modified)) => {
            asked == modified
                && sent.is_some_and(|sent| {
                    sent.duration_since(modified)
                        .is_ok_and(|d| d >= std::time::Duration::from_secs(1))
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(range: &str, len: u64) -> Part {
        part(&http::HeaderValue::from_str(range).unwrap(), len)
    }

    fn entry_with(fields: &[(&'static str, &str)]) -> Entry {
        let mut headers = HeaderMap::new();
        for (n, v) in fields {
            headers.append(*n, v.parse().unwrap());
        }
        Entry {
            stored_at: 1_445_412_480_000, // Wed, 21 Oct 2015 07:28:00 GMT
            initial_age: 0,
            lifetime: 60_000,
            swr: 0,
            sie: 0,
            flags: 0,
            status: StatusCode::OK,
            vary: vec![],
            vary_hash: [0; 16],
            headers,
            tags: vec![],
            body: Bytes::new(),
        }
    }

    fn asking(fields: &[(&'static str, &str)]) -> HeaderMap {
        entry_with(fields).headers
    }

    #[test]
    fn rfc9110_13_1_2_if_none_match_compares_weakly_and_reads_unusual_tags() {
        let stored = entry_with(&[("etag", "W/\"a,b\"")]);
        for matching in [
            "\"a,b\"",
            "W/\"a,b\"",
            "\"x\", W/\"a,b\"",
            "*",
            "\"x\",*",
            "  \"a,b\"  ",
        ] {
            assert!(
                not_modified(&asking(&[("if-none-match", matching)]), &stored),
                "{matching}"
            );
        }
        for other in [
            "\"a\"",
            "\"b\"",
            "\"a,b",
            "a,b",
            "\"a,b\" x",
            "W/ \"a,b\"",
            "",
        ] {
            assert!(
                !not_modified(&asking(&[("if-none-match", other)]), &stored),
                "{other:?}"
            );
        }
        // Two lines are one list.
        let two = asking(&[("if-none-match", "\"x\""), ("if-none-match", "\"a,b\"")]);
        assert!(not_modified(&two, &stored));
        // `*` matches a stored response without an ETag; a tag does not.
        let untagged = entry_with(&[]);
        assert!(not_modified(&asking(&[("if-none-match", "*")]), &untagged));
        assert!(!not_modified(
            &asking(&[("if-none-match", "\"a\"")]),
            &untagged
        ));
        // If-None-Match present (even malformed): If-Modified-Since is not read.
        let both = asking(&[
            ("if-none-match", "nonsense"),
            ("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT"),
        ]);
        assert!(!not_modified(&both, &stored));
    }

    #[test]
    fn rfc9111_4_3_2_if_modified_since_falls_back_to_date_then_the_time_stored() {
        let ims = |v: &str| asking(&[("if-modified-since", v)]);
        let before = "Tue, 20 Oct 2015 07:28:00 GMT";
        let same = "Wed, 21 Oct 2015 07:28:00 GMT";
        let after = "Thu, 22 Oct 2015 07:28:00 GMT";
        let modified = entry_with(&[("last-modified", same), ("date", after)]);
        assert!(not_modified(&ims(same), &modified));
        assert!(not_modified(&ims(after), &modified));
        assert!(!not_modified(&ims(before), &modified));
        // No Last-Modified: Date. Neither: when it was stored.
        let dated = entry_with(&[("date", after)]);
        assert!(!not_modified(&ims(same), &dated));
        assert!(not_modified(&ims(after), &dated));
        // An unreadable Last-Modified: Date is next.
        let unreadable = entry_with(&[("last-modified", "soon"), ("date", after)]);
        assert!(!not_modified(&ims(same), &unreadable));
        let bare = entry_with(&[]);
        assert!(not_modified(&ims(same), &bare));
        assert!(!not_modified(&ims(before), &bare));
        // Not a date: ignored.
        assert!(!not_modified(&ims("yesterday"), &modified));
    }

    #[test]
    fn rfc9110_14_1_2_byte_ranges() {
        assert_eq!(p("bytes=0-4", 10), Part::Bytes(0, 4));
        assert_eq!(p("Bytes = 2-", 10), Part::Bytes(2, 9));
        assert_eq!(
            p("bytes=5-100", 10),
            Part::Bytes(5, 9),
            "past the end: to the end"
        );
        assert_eq!(p("bytes=-3", 10), Part::Bytes(7, 9));
        assert_eq!(
            p("bytes=-30", 10),
            Part::Bytes(0, 9),
            "a suffix longer than the body: all"
        );
        assert_eq!(p("bytes=10-", 10), Part::Unsatisfiable);
        assert_eq!(p("bytes=-0", 10), Part::Unsatisfiable);
        assert_eq!(p("bytes=0-0", 0), Part::Unsatisfiable);
        assert_eq!(
            p("bytes=-5", 0),
            Part::Whole,
            "a suffix of nothing: the (empty) whole"
        );
        // Served whole: not bytes, several ranges, malformed.
        for whole in [
            "items=0-4",
            "bytes=0-1,3-4",
            "bytes=4-2",
            "bytes=a-b",
            "bytes=-",
            "bytes 0-4",
            "bytes=+1-2",
            "bytes=1--2",
        ] {
            assert_eq!(p(whole, 10), Part::Whole, "{whole}");
        }
    }

    #[test]
    fn rfc9110_13_1_5_if_range_needs_a_strong_match() {
        let stored = |fields: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in fields {
                h.insert(*n, v.parse().unwrap());
            }
            h
        };
        let asking = |v: &str| stored(&[("if-range", v)]);
        let tagged = stored(&[("etag", "\"v1\"")]);
        assert!(if_range_holds(&HeaderMap::new(), &tagged), "no If-Range");
        assert!(if_range_holds(&asking("\"v1\""), &tagged));
        assert!(!if_range_holds(&asking("\"v2\""), &tagged));
        assert!(!if_range_holds(&asking("W/\"v1\""), &tagged), "weak: never");
        assert!(!if_range_holds(
            &asking("\"v1\""),
            &stored(&[("etag", "W/\"v1\"")])
        ));
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        let dated = stored(&[
            ("last-modified", lm),
            ("date", "Wed, 21 Oct 2015 08:00:00 GMT"),
        ]);
        assert!(if_range_holds(&asking(lm), &dated));
        assert!(!if_range_holds(
            &asking("Wed, 21 Oct 2015 07:28:01 GMT"),
            &dated
        ));
        let weak = stored(&[("last-modified", lm), ("date", lm)]);
        assert!(
            !if_range_holds(&asking(lm), &weak),
            "modified within the second it was sent"
        );
        assert!(!if_range_holds(&asking("yesterday"), &dated));
    }
}
