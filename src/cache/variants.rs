//! Which URLs vary, as this instance last learned: a varying URL's key
//! holds a pointer (the names its responses' `Vary` lists), and each
//! variant has a key of its own (see [`layout`](super::layout)). Knowing
//! the names, a request's variant is looked up at once (one round trip);
//! not knowing them (a URL not seen lately, or forgotten), the pointer is
//! read first (two). What is learned here is only a hint: a variant not
//! found sends the lookup back to the URL's key, which corrects it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::key::vary_hash;
use super::layout::{split_key, variant_key};

/// How many varying URLs an instance remembers the names of (the least
/// used forgotten first): a flood of made-up URLs costs each of them, and
/// the URLs it pushes out, a round trip more, never a wrong answer.
pub(crate) const VARYING_URLS: usize = 4096;

pub(crate) struct Varying {
    /// Set once any URL was seen to vary: until then a lookup skips the
    /// map.
    any: AtomicBool,
    names: quick_cache::sync::Cache<String, Arc<[HeaderName]>>,
}

impl Default for Varying {
    fn default() -> Self {
        Varying {
            any: AtomicBool::new(false),
            names: quick_cache::sync::Cache::new(VARYING_URLS),
        }
    }
}

impl Varying {
    /// The store key to look up for a request with `headers` to the URL
    /// whose key is `url`: its variant's, when the URL is known to vary;
    /// else the URL's own.
    #[inline]
    pub(crate) fn key_for(&self, url: String, headers: &HeaderMap) -> String {
        if !self.any.load(Ordering::Relaxed) {
            return url;
        }
        match self.names.get(url.as_str()) {
            Some(names) => variant_key(&url, &vary_hash(&names, headers)),
            None => url,
        }
    }

    /// The URL of `key` varies on `names` (none: it does not).
    pub(crate) fn learn(&self, key: &str, names: &[HeaderName]) {
        let url = split_key(key).0;
        if names.is_empty() {
            if self.any.load(Ordering::Relaxed) {
                self.names.remove(url);
            }
            return;
        }
        if self.names.get(url).is_some_and(|known| &*known == names) {
            return;
        }
        self.any.store(true, Ordering::Relaxed);
        self.names.insert(url.to_owned(), names.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learned_url_is_looked_up_by_variant_and_unlearned_by_its_own_key() {
        let varying = Varying::default();
        let url = "0123456789abcdef0123456789abcdef".to_owned();
        let mut gzip = HeaderMap::new();
        gzip.insert("accept-encoding", "gzip".parse().unwrap());
        assert_eq!(varying.key_for(url.clone(), &gzip), url);
        let names = [HeaderName::from_static("accept-encoding")];
        varying.learn(&url, &names);
        let key = varying.key_for(url.clone(), &gzip);
        assert_eq!(key, variant_key(&url, &vary_hash(&names, &gzip)));
        assert_ne!(key, varying.key_for(url.clone(), &HeaderMap::new()));
        // Learned again from the variant's key: the same URL.
        varying.learn(&key, &[]);
        assert_eq!(varying.key_for(url.clone(), &gzip), url);
    }
}
