//! The cache store seam: entries by key, each operation one round trip.
//!
//! The crate implements [`CacheStore`] for [`Backend`], [`RedisBackend`]
//! and [`MemoryBackend`]; implement it to keep entries elsewhere. Keys are
//! 32 hex digits (a hash of the request's cache key); values are opaque
//! bytes the layer encodes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use super::layout::entry_key;
use crate::backend::on_backend;
use crate::error::Error;
use crate::memory::MemoryBackend;
use crate::redis::RedisBackend;
use crate::Backend;

/// Where a cache layer keeps its entries.
pub trait CacheStore: Send + Sync + 'static {
    /// The entry stored under `key`, if any (Redis: one `GET`).
    fn lookup(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, Error>> + Send;

    /// Stores `entry` under `key` for `ttl`, replacing any entry there
    /// (Redis: one `SET ... PX`).
    fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes the entry under `key`; true when there was one (Redis: one
    /// `DEL`).
    fn invalidate(&self, key: &str) -> impl Future<Output = Result<bool, Error>> + Send;
}

impl CacheStore for RedisBackend {
    async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let value = self.get(&entry_key(self.namespace(), key)).await?;
        Ok(value.map(Bytes::from))
    }

    async fn store(&self, key: &str, entry: Vec<u8>, ttl: Duration) -> Result<(), Error> {
        self.set(&entry_key(self.namespace(), key), &entry, Some(ttl))
            .await
    }

    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        self.delete(&entry_key(self.namespace(), key)).await
    }
}

impl CacheStore for MemoryBackend {
    async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let value = self.get(&entry_key(self.namespace(), key)).await?;
        Ok(value.map(Bytes::from))
    }

    async fn store(&self, key: &str, entry: Vec<u8>, ttl: Duration) -> Result<(), Error> {
        self.set(&entry_key(self.namespace(), key), &entry, Some(ttl))
            .await
    }

    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        self.delete(&entry_key(self.namespace(), key)).await
    }
}

impl CacheStore for Backend {
    async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        on_backend!(self, b => CacheStore::lookup(b, key).await)
    }

    async fn store(&self, key: &str, entry: Vec<u8>, ttl: Duration) -> Result<(), Error> {
        on_backend!(self, b => CacheStore::store(b, key, entry, ttl).await)
    }

    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        on_backend!(self, b => CacheStore::invalidate(b, key).await)
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`CacheStore`] in object-safe form, for the layer to hold any store.
pub(crate) trait DynCacheStore: Send + Sync {
    fn lookup<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, Error>>;
    fn store<'a>(
        &'a self,
        key: &'a str,
        entry: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn invalidate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>>;
}

impl<T: CacheStore> DynCacheStore for T {
    fn lookup<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, Error>> {
        Box::pin(CacheStore::lookup(self, key))
    }
    fn store<'a>(
        &'a self,
        key: &'a str,
        entry: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(CacheStore::store(self, key, entry, ttl))
    }
    fn invalidate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(CacheStore::invalidate(self, key))
    }
}

/// The store a layer holds: one of this crate's backends, called without
/// boxing, or a user's store behind the object-safe copy.
#[derive(Clone)]
pub(crate) enum Store {
    Backend(Backend),
    Custom(std::sync::Arc<dyn DynCacheStore>),
}

impl Store {
    pub(crate) fn new<S: CacheStore>(store: S) -> Self {
        match crate::backend::as_backend(&store) {
            Some(b) => Store::Backend(b),
            None => Store::Custom(std::sync::Arc::new(store)),
        }
    }

    pub(crate) async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        match self {
            Store::Backend(b) => CacheStore::lookup(b, key).await,
            Store::Custom(s) => s.lookup(key).await,
        }
    }

    pub(crate) async fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), Error> {
        match self {
            Store::Backend(b) => CacheStore::store(b, key, entry, ttl).await,
            Store::Custom(s) => s.store(key, entry, ttl).await,
        }
    }

    pub(crate) async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        match self {
            Store::Backend(b) => CacheStore::invalidate(b, key).await,
            Store::Custom(s) => s.invalidate(key).await,
        }
    }
}
