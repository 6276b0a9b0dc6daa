//! The cache store seam: entries by key, with tag sets, each operation
//! one round trip.
//!
//! The crate implements [`CacheStore`] for [`Backend`],
//! [`RedisBackend`] and [`MemoryBackend`]; implement it to keep
//! entries elsewhere. Keys are 32 hex digits (a hash of the request's
//! cache key); values are opaque bytes the layer encodes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use super::layout::{entry_key, lease_key, tag_key};
use crate::backend::on_backend;
use crate::error::{Error, ErrorKind};
use crate::memory::{MemoryBackend, Value};
use crate::redis::RedisBackend;
use crate::Backend;

/// Where a cache layer keeps its entries.
pub trait CacheStore: Send + Sync + 'static {
    /// The entry stored under `key`, if any (Redis: one `GET`).
    fn lookup(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, Error>> + Send;

    /// Stores `entry` under `key` for `ttl`, replacing any entry there, and
    /// adds `key` to the set of each of `tags`, which then lives at least
    /// as long (Redis: one pipeline of `SET ... PX` and, per tag, `SADD`
    /// and `PEXPIRE`).
    fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
        tags: &[String],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes the entry under `key`; true when there was one (Redis: one
    /// `DEL`).
    fn invalidate(&self, key: &str) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Removes every entry stored with `tag`; how many there were (Redis:
    /// `SMEMBERS`, then one pipeline of `DEL`s and `SREM`).
    fn purge_tag(&self, tag: &str) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Takes the fill lease of `key` for `ttl` if no one holds it: the
    /// holder asks the handler, other instances wait for its entry (Redis:
    /// `SET ... NX PX`).
    fn lease(&self, key: &str, ttl: Duration) -> impl Future<Output = Result<bool, Error>> + Send;

    /// The entry under `key`, and whether its fill lease is still held
    /// (Redis: `GET` and `EXISTS`, pipelined).
    fn poll(&self, key: &str) -> impl Future<Output = Result<(Option<Bytes>, bool), Error>> + Send;

    /// Gives up the fill lease of `key` (Redis: `DEL`).
    fn unlease(&self, key: &str) -> impl Future<Output = Result<(), Error>> + Send;
}

impl CacheStore for RedisBackend {
    async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let value = self.get(&entry_key(self.namespace(), key)).await?;
        Ok(value.map(Bytes::from))
    }

    async fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
        tags: &[String],
    ) -> Result<(), Error> {
        let ms = crate::time::millis(ttl).max(1);
        let entry_key = entry_key(self.namespace(), key);
        if tags.is_empty() {
            return self.set(&entry_key, &entry, Some(ttl)).await;
        }
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(&entry_key)
            .arg(entry)
            .arg("PX")
            .arg(ms)
            .ignore();
        for tag in tags {
            let set = tag_key(self.namespace(), tag);
            // The set outlives each of its entries: NX gives a new set a
            // TTL, GT only ever lengthens it.
            pipe.cmd("SADD").arg(&set).arg(key).ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ms).arg("NX").ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ms).arg("GT").ignore();
        }
        self.pipeline::<()>(&pipe).await
    }

    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        self.delete(&entry_key(self.namespace(), key)).await
    }

    async fn purge_tag(&self, tag: &str) -> Result<u64, Error> {
        let set = tag_key(self.namespace(), tag);
        let members: Vec<String> = self.query(::redis::cmd("SMEMBERS").arg(&set)).await?;
        if members.is_empty() {
            return Ok(0);
        }
        // Each entry by its own key (their slots differ from the set's),
        // then only the members read: one tagged since stays for the next
        // purge.
        let mut pipe = ::redis::pipe();
        for member in &members {
            pipe.cmd("DEL").arg(entry_key(self.namespace(), member));
        }
        pipe.cmd("SREM").arg(&set).arg(&members).ignore();
        let removed: Vec<u64> = self.pipeline(&pipe).await?;
        Ok(removed.iter().sum())
    }

    async fn lease(&self, key: &str, ttl: Duration) -> Result<bool, Error> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(lease_key(self.namespace(), key))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(crate::time::millis(ttl).max(1));
        let reply: Option<String> = self.query(&cmd).await?;
        Ok(reply.is_some())
    }

    async fn poll(&self, key: &str) -> Result<(Option<Bytes>, bool), Error> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("GET").arg(entry_key(self.namespace(), key));
        pipe.cmd("EXISTS").arg(lease_key(self.namespace(), key));
        let (entry, held): (Option<Vec<u8>>, i64) = self.pipeline(&pipe).await?;
        Ok((entry.map(Bytes::from), held > 0))
    }

    async fn unlease(&self, key: &str) -> Result<(), Error> {
        self.delete(&lease_key(self.namespace(), key))
            .await
            .map(drop)
    }
}

impl CacheStore for MemoryBackend {
    async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let value = self.get(&entry_key(self.namespace(), key)).await?;
        Ok(value.map(Bytes::from))
    }

    async fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
        tags: &[String],
    ) -> Result<(), Error> {
        let entry_key = entry_key(self.namespace(), key);
        let ttl = ttl.max(Duration::from_millis(1));
        self.atomically(|ks| {
            ks.set(&entry_key, Value::Bytes(entry), Some(ttl))?;
            for tag in tags {
                let set = tag_key(self.namespace(), tag);
                let longer = match ks.ttl(&set) {
                    Some(Some(left)) => left.max(ttl),
                    _ => ttl,
                };
                match ks.get_mut(&set) {
                    Some(Value::Hash(members)) => {
                        members.insert(key.to_owned(), Vec::new());
                    }
                    Some(_) => return Err(wrong_type()),
                    None => {
                        let members = [(key.to_owned(), Vec::new())].into_iter().collect();
                        ks.set(&set, Value::Hash(members), None)?;
                    }
                }
                ks.expire(&set, longer);
            }
            Ok(())
        })
    }

    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        self.delete(&entry_key(self.namespace(), key)).await
    }

    async fn purge_tag(&self, tag: &str) -> Result<u64, Error> {
        let set = tag_key(self.namespace(), tag);
        self.atomically(|ks| {
            let members = match ks.remove(&set) {
                None => return Ok(0),
                Some(Value::Hash(members)) => members,
                Some(_) => return Err(wrong_type()),
            };
            let mut removed = 0;
            for member in members.keys() {
                if ks.remove(&entry_key(self.namespace(), member)).is_some() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    async fn lease(&self, key: &str, ttl: Duration) -> Result<bool, Error> {
        let lease = lease_key(self.namespace(), key);
        self.atomically(|ks| {
            if ks.get(&lease).is_some() {
                return Ok(false);
            }
            ks.set(
                &lease,
                Value::Bytes(b"1".to_vec()),
                Some(ttl.max(Duration::from_millis(1))),
            )?;
            Ok(true)
        })
    }

    async fn poll(&self, key: &str) -> Result<(Option<Bytes>, bool), Error> {
        let (entry, lease) = (
            entry_key(self.namespace(), key),
            lease_key(self.namespace(), key),
        );
        self.atomically(|ks| {
            let found = match ks.get(&entry) {
                None => None,
                Some(Value::Bytes(b)) => Some(Bytes::copy_from_slice(b)),
                Some(_) => return Err(wrong_type()),
            };
            Ok((found, ks.get(&lease).is_some()))
        })
    }

    async fn unlease(&self, key: &str) -> Result<(), Error> {
        self.delete(&lease_key(self.namespace(), key))
            .await
            .map(drop)
    }
}

fn wrong_type() -> Error {
    Error::new(
        ErrorKind::Server,
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )
}

impl CacheStore for Backend {
    async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        on_backend!(self, b => CacheStore::lookup(b, key).await)
    }

    async fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
        tags: &[String],
    ) -> Result<(), Error> {
        on_backend!(self, b => CacheStore::store(b, key, entry, ttl, tags).await)
    }

    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        on_backend!(self, b => CacheStore::invalidate(b, key).await)
    }

    async fn purge_tag(&self, tag: &str) -> Result<u64, Error> {
        on_backend!(self, b => CacheStore::purge_tag(b, tag).await)
    }

    async fn lease(&self, key: &str, ttl: Duration) -> Result<bool, Error> {
        on_backend!(self, b => CacheStore::lease(b, key, ttl).await)
    }

    async fn poll(&self, key: &str) -> Result<(Option<Bytes>, bool), Error> {
        on_backend!(self, b => CacheStore::poll(b, key).await)
    }

    async fn unlease(&self, key: &str) -> Result<(), Error> {
        on_backend!(self, b => CacheStore::unlease(b, key).await)
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
        tags: &'a [String],
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn invalidate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>>;
    fn purge_tag<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<u64, Error>>;
    fn lease<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, Error>>;
    fn poll<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(Option<Bytes>, bool), Error>>;
    fn unlease<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>>;
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
        tags: &'a [String],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(CacheStore::store(self, key, entry, ttl, tags))
    }
    fn invalidate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(CacheStore::invalidate(self, key))
    }
    fn purge_tag<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(CacheStore::purge_tag(self, tag))
    }
    fn lease<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(CacheStore::lease(self, key, ttl))
    }
    fn poll<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(Option<Bytes>, bool), Error>> {
        Box::pin(CacheStore::poll(self, key))
    }
    fn unlease<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(CacheStore::unlease(self, key))
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
        tags: &[String],
    ) -> Result<(), Error> {
        match self {
            Store::Backend(b) => CacheStore::store(b, key, entry, ttl, tags).await,
            Store::Custom(s) => s.store(key, entry, ttl, tags).await,
        }
    }

    pub(crate) async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        match self {
            Store::Backend(b) => CacheStore::invalidate(b, key).await,
            Store::Custom(s) => s.invalidate(key).await,
        }
    }

    pub(crate) async fn purge_tag(&self, tag: &str) -> Result<u64, Error> {
        match self {
            Store::Backend(b) => CacheStore::purge_tag(b, tag).await,
            Store::Custom(s) => s.purge_tag(tag).await,
        }
    }

    pub(crate) async fn lease(&self, key: &str, ttl: Duration) -> Result<bool, Error> {
        match self {
            Store::Backend(b) => CacheStore::lease(b, key, ttl).await,
            Store::Custom(s) => s.lease(key, ttl).await,
        }
    }

    pub(crate) async fn poll(&self, key: &str) -> Result<(Option<Bytes>, bool), Error> {
        match self {
            Store::Backend(b) => CacheStore::poll(b, key).await,
            Store::Custom(s) => s.poll(key).await,
        }
    }

    pub(crate) async fn unlease(&self, key: &str) -> Result<(), Error> {
        match self {
            Store::Backend(b) => CacheStore::unlease(b, key).await,
            Store::Custom(s) => s.unlease(key).await,
        }
    }
}
