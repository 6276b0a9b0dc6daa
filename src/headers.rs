//! Response headers several layers set, written once.

use http::header::CACHE_CONTROL;
use http::{HeaderMap, HeaderValue};

/// `Cache-Control: no-store`: the response sets or clears a credential (a
/// session cookie) or is an error no cache should keep.
pub(crate) fn no_store(headers: &mut HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}
