//! [`Purger`]: removes a cache's entries, by tag, by URL, or all of them.

use std::fmt;
use std::sync::Arc;

use super::config::Config;
use super::key::cache_key;
use crate::error::{Error, ErrorKind};

/// The most entries a [`Purger::purge_tag`] removes, and names in one
/// announcement, per step: 500 (an announcement of about 16 KiB).
pub const PURGE_BATCH: usize = 500;

/// Removes entries of a [`CacheLayer`](crate::cache::CacheLayer) from its store: by tag, or by URL.
/// Get one from [`CacheLayer::purger`](crate::cache::CacheLayer::purger), or in a handler from the request's
/// extensions (axum: `Extension<Purger>`).
///
/// A purge removes the entries from the shared store, so every instance
/// sharing it sees the purge at once.
#[derive(Clone)]
pub struct Purger {
    config: Arc<Config>,
}

impl fmt::Debug for Purger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Purger").finish_non_exhaustive()
    }
}

impl Purger {
    /// The purger of the layer with `config`.
    pub(crate) fn of(config: &Arc<Config>) -> Self {
        Purger {
            config: config.clone(),
        }
    }

    /// Removes every entry stored with `tag` (named by its handler in the
    /// tag header) before the purge began; how many the tag named (some
    /// may have expired already).
    ///
    /// It goes in steps of up to [`PURGE_BATCH`] entries, each removed from
    /// the store and then announced to local tiers in one message, until
    /// none is left of those the tag named when the purge began; an entry
    /// stored with the tag meanwhile is left for the next purge. On an
    /// error the steps stop there: the entries not yet removed are left to
    /// the next purge of the tag (retry it).
    pub async fn purge_tag(&self, tag: &str) -> Result<u64, Error> {
        let mut purged = 0;
        let mut start = true;
        loop {
            let keys = self.config.store.purge_tag(tag, PURGE_BATCH, start).await?;
            if keys.is_empty() {
                return Ok(purged);
            }
            start = false;
            purged += keys.len() as u64;
            self.config.announce(&keys).await;
        }
    }

    /// Purges everything this cache stored, on every instance that shares
    /// its store: the store's generation moves on, and every entry key is
    /// made under the generation, so no entry stored before is found
    /// again; they expire on their own (no `SCAN`, nothing listed).
    /// Returns the new generation.
    ///
    /// This instance sees the purge at once, instances with a local tier
    /// as soon as they hear it (pub/sub), and the others within their
    /// [`generation_refresh`](crate::cache::CacheLayerBuilder::generation_refresh).
    pub async fn purge_all(&self) -> Result<u64, Error> {
        let known = self.config.generation.known();
        let generation = self.config.store.next_generation(known).await?;
        self.config.generation.learn(generation);
        if let Some(local) = &self.config.local {
            local.clear();
        }
        if let Err(e) = self
            .config
            .store
            .announce(&[format!("generation:{generation}")])
            .await
        {
            tracing::warn!(error = %e, "purge of everything not announced; other instances see it within their generation refresh");
        }
        Ok(generation)
    }

    /// Removes the entry for a URL: `uri` as requests name it (a path and
    /// query, or an absolute URI), on `host` (the `Host` header's value)
    /// when `uri` names none. The scheme does not matter (the key has
    /// none: the page served over HTTP/1 and HTTP/2 is one entry). True
    /// when there was one. With
    /// [`key_extra`](crate::cache::CacheLayerBuilder::key_extra), this is
    /// the entry of requests for which it adds nothing; purge the others
    /// by tag.
    pub async fn purge_url(&self, uri: &str, host: &str) -> Result<bool, Error> {
        let uri: http::Uri = uri
            .parse()
            .map_err(|_| Error::new(ErrorKind::Config, format!("{uri:?} is not a URI")))?;
        let mut headers = http::HeaderMap::new();
        if let Ok(host) = http::HeaderValue::from_str(host) {
            headers.insert(http::header::HOST, host);
        }
        let generation = self
            .config
            .generation
            .current(&self.config.store, std::time::SystemTime::now())
            .await?;
        let key = cache_key(&self.config.key, &uri, &headers, None, generation);
        // Announced whatever the store said: a timed-out DEL may still
        // have run.
        let removed = self.config.store.invalidate(&key).await;
        self.config.announce(&[key]).await;
        removed
    }
}
