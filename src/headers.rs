//! Response headers several layers set, written once.

use http::header::{Entry, CACHE_CONTROL, VARY};
use http::{HeaderMap, HeaderValue};

/// `Cache-Control: no-store`: the response sets or clears a credential (a
/// session cookie) or is an error no cache should keep.
pub(crate) fn no_store(headers: &mut HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Marks a response whose handler read the session: `Vary: Cookie`, so a
/// shared cache never answers one cookie's request with another's response;
/// and when the request carried a session cookie (`personal`),
/// `Cache-Control: private` unless the handler chose a `Cache-Control`
/// itself, so no shared cache stores it at all. (Without a cookie the
/// response is the same for every cookie-less client, so it may be shared.)
pub(crate) fn session_dependent(headers: &mut HeaderMap, personal: bool) {
    add_vary(headers, "cookie");
    if personal {
        if let Entry::Vacant(slot) = headers.entry(CACHE_CONTROL) {
            slot.insert(HeaderValue::from_static("private"));
        }
    }
}

/// Adds `name` to `Vary` unless it (or `*`) is already listed.
pub(crate) fn add_vary(headers: &mut HeaderMap, name: &'static str) {
    if let Entry::Vacant(slot) = headers.entry(VARY) {
        slot.insert(HeaderValue::from_static(name));
        return;
    }
    let listed = headers.get_all(VARY).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|item| item == "*" || item.eq_ignore_ascii_case(name))
        })
    });
    if !listed {
        headers.append(VARY, HeaderValue::from_static(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vary(h: &HeaderMap) -> Vec<&str> {
        h.get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn vary_is_added_once_and_respects_star() {
        let mut h = HeaderMap::new();
        add_vary(&mut h, "cookie");
        add_vary(&mut h, "cookie");
        assert_eq!(vary(&h), ["cookie"]);

        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding, Cookie"));
        add_vary(&mut h, "cookie");
        assert_eq!(vary(&h), ["Accept-Encoding, Cookie"]);

        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("*"));
        add_vary(&mut h, "cookie");
        assert_eq!(vary(&h), ["*"]);

        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("accept"));
        add_vary(&mut h, "cookie");
        assert_eq!(vary(&h), ["accept", "cookie"]);
    }

    #[test]
    fn private_keeps_a_handler_cache_control() {
        let mut h = HeaderMap::new();
        session_dependent(&mut h, true);
        assert_eq!(h[CACHE_CONTROL], "private");
        assert_eq!(vary(&h), ["cookie"]);
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        session_dependent(&mut h, true);
        assert_eq!(h[CACHE_CONTROL], "no-cache");
        no_store(&mut h);
        assert_eq!(h[CACHE_CONTROL], "no-store");
        let mut h = HeaderMap::new();
        session_dependent(&mut h, false);
        assert_eq!(
            h.get(CACHE_CONTROL),
            None,
            "no cookie: the same for everyone"
        );
        assert_eq!(vary(&h), ["cookie"]);
    }
}
