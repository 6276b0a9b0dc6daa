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
use tokio::sync::mpsc;

use super::layout::{entry_key, lease_key, tag_key};
use crate::backend::on_backend;
use crate::error::Error;
use crate::memory::{MemoryBackend, Value};
use crate::redis::{script, RedisBackend, Script};
use crate::Backend;

static UNLEASE: Script = script!("cache-unlease", "unlease.lua");
static NEXT_GENERATION: Script = script!("cache-next-generation", "generation.lua");

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

    /// Removes every entry stored with `tag`; the keys the tag named
    /// (removed now, or already gone: local copies of either must go)
    /// (Redis: `SMEMBERS`, then one pipeline of `DEL`s and `SREM`).
    fn purge_tag(&self, tag: &str) -> impl Future<Output = Result<Vec<String>, Error>> + Send;

    /// Takes the fill lease of `key` for `ttl`, as `holder`, if no one holds it: the
    /// holder asks the handler, other instances wait for its entry (Redis:
    /// `SET ... NX PX`).
    fn lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// The entry under `key`, and whether its fill lease is still held
    /// (Redis: `GET` and `EXISTS`, pipelined).
    fn poll(&self, key: &str) -> impl Future<Output = Result<(Option<Bytes>, bool), Error>> + Send;

    /// Gives up the fill lease of `key` if `holder` still holds it (Redis:
    /// a compare-and-delete script).
    fn unlease(&self, key: &str, holder: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// Tells every instance's local tier that the entries of `keys` changed
    /// (Redis: one `PUBLISH`). The default tells no one: a store without it
    /// cannot back a local tier.
    fn announce(&self, keys: &[String]) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = keys;
        std::future::ready(Ok(()))
    }

    /// What other instances announce, from now on, with [`Heard::Lost`]
    /// whenever announcements may have been missed (Redis: a `SUBSCRIBE`
    /// connection, reconnected when lost). `None` when this store cannot
    /// (the default; a Redis backend built from a pool rather than a URL).
    fn listen(&self) -> Option<mpsc::Receiver<Heard>> {
        None
    }

    /// The current generation: every entry key is made under it, so a new
    /// one hides every entry stored before (Redis: one `GET`). The default
    /// is always 0: such a store cannot purge everything.
    fn generation(&self) -> impl Future<Output = Result<u64, Error>> + Send {
        std::future::ready(Ok(0))
    }

    /// Starts the next generation, past both the stored one and
    /// `at_least` (the caller's: a counter that went back still moves on),
    /// and returns it (Redis: one small script). The default refuses.
    fn next_generation(&self, at_least: u64) -> impl Future<Output = Result<u64, Error>> + Send {
        let _ = at_least;
        std::future::ready(Err(Error::new(
            crate::error::ErrorKind::Config,
            "this cache store cannot purge everything (no generation counter)",
        )))
    }
}

/// What a local tier hears from its store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Heard {
    /// Listening (again): announcements from now on arrive.
    Ready,
    /// Announcements may have been missed: local copies cannot be trusted.
    Lost,
    /// These entries changed.
    Changed(Vec<String>),
    /// Everything was purged: this is the new generation.
    Generation(u64),
}

impl Heard {
    /// An announcement's payload: keys separated by commas, or
    /// `generation:<n>` after a purge of everything.
    fn of_payload(payload: &str) -> Heard {
        match payload.strip_prefix("generation:") {
            Some(n) => n.parse().map_or(Heard::Lost, Heard::Generation),
            None => Heard::Changed(
                payload
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
        }
    }
}

/// The generation counter: `{prefix}:cache:generation` (one key; it never
/// expires).
fn generation_key(ns: &crate::keys::Namespace) -> String {
    ns.key(&["cache", "generation"])
}

/// A stored counter's value (absent: 0).
fn counter(raw: Option<&[u8]>) -> Result<u64, Error> {
    match raw {
        None => Ok(0),
        Some(raw) => std::str::from_utf8(raw)
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::decode("the cache generation is not a number")),
    }
}

/// How often a local tier's subscription is pinged.
const HEALTH_EVERY: Duration = Duration::from_secs(3);
/// How long a ping may take before the subscription counts as lost (and
/// the local tier is emptied): so a dead subscription empties the tier
/// within `HEALTH_EVERY + HEALTH_DEADLINE`, 5 s. Generous, so that a busy
/// Redis (or host) does not make the tier flap.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// The channel announcements travel on.
fn channel(ns: &crate::keys::Namespace) -> String {
    ns.key(&["cache", "events"])
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
        // One pipeline, the tags first: an entry is never found without
        // its tags (a purge would miss it). On a cluster each tag's set
        // (its own slot) concurrently, then the entry.
        let mut set_entry = ::redis::cmd("SET");
        set_entry.arg(&entry_key).arg(entry).arg("PX").arg(ms);
        let mut groups = Vec::new();
        for tag in tags {
            let set = tag_key(self.namespace(), tag);
            // The set outlives each of its entries: NX gives a new set a
            // TTL, GT only ever lengthens it.
            let mut add = ::redis::cmd("SADD");
            add.arg(&set).arg(key);
            let mut new_ttl = ::redis::cmd("PEXPIRE");
            new_ttl.arg(&set).arg(ms).arg("NX");
            let mut longer = ::redis::cmd("PEXPIRE");
            longer.arg(&set).arg(ms).arg("GT");
            groups.push(vec![add, new_ttl, longer]);
        }
        let _: Vec<::redis::Value> = self.phased(vec![groups, vec![vec![set_entry]]]).await?;
        Ok(())
    }

    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        self.delete(&entry_key(self.namespace(), key)).await
    }

    async fn purge_tag(&self, tag: &str) -> Result<Vec<String>, Error> {
        let set = tag_key(self.namespace(), tag);
        let members: Vec<String> = self.query(::redis::cmd("SMEMBERS").arg(&set)).await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        // Each entry by its own key (their slots differ from the set's),
        // then only the members read: one tagged since stays for the next
        // purge.
        // On a cluster each in its own slot, concurrently; the members
        // leave the set only once their entries are gone (else a failed
        // DEL would leave an entry no purge finds).
        let groups: Vec<Vec<::redis::Cmd>> = members
            .iter()
            .map(|member| {
                let mut del = ::redis::cmd("DEL");
                del.arg(entry_key(self.namespace(), member));
                vec![del]
            })
            .collect();
        let mut remove = ::redis::cmd("SREM");
        remove.arg(&set).arg(&members);
        let _: Vec<u64> = self.phased(vec![groups, vec![vec![remove]]]).await?;
        Ok(members)
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(lease_key(self.namespace(), key))
            .arg(holder)
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

    async fn unlease(&self, key: &str, holder: &str) -> Result<(), Error> {
        let _: i64 = self
            .script(&UNLEASE)
            .key(lease_key(self.namespace(), key))
            .arg(holder)
            .invoke()
            .await?;
        Ok(())
    }

    async fn announce(&self, keys: &[String]) -> Result<(), Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut cmd = ::redis::cmd("PUBLISH");
        cmd.arg(channel(self.namespace())).arg(keys.join(","));
        self.query::<i64>(&cmd).await.map(drop)
    }

    fn listen(&self) -> Option<mpsc::Receiver<Heard>> {
        if !self.can_subscribe() {
            return None;
        }
        let backend = self.clone();
        let channel = channel(self.namespace());
        let deadline = self.deadline();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                let connected = tokio::time::timeout(deadline.max(Duration::from_secs(1)), async {
                    // Asked again on every reconnection: behind Sentinel, the
                    // primary of the moment.
                    let client = backend.subscriber().await?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, ::redis::RedisError>(pubsub)
                })
                .await;
                if let Ok(Ok(pubsub)) = connected {
                    if tx.send(Heard::Ready).await.is_err() {
                        return;
                    }
                    let (mut sink, mut messages) = pubsub.split();
                    // A connection can die without a word (a host gone, a
                    // network partition): pinged every HEALTH_EVERY, one
                    // not answered within HEALTH_DEADLINE counts as lost.
                    let mut health = tokio::time::interval_at(
                        tokio::time::Instant::now() + HEALTH_EVERY,
                        HEALTH_EVERY,
                    );
                    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = health.tick() => {
                                let pong = tokio::time::timeout(
                                    HEALTH_DEADLINE,
                                    sink.ping::<::redis::Value>(),
                                )
                                .await;
                                if !matches!(pong, Ok(Ok(_))) {
                                    break;
                                }
                            }
                            message = messages.next() => {
                                let Some(message) = message else { break };
                                // An unreadable message may have named keys:
                                // nothing local can be trusted then.
                                let heard = match message.get_payload::<String>() {
                                    Ok(payload) => Heard::of_payload(&payload),
                                    Err(_) => Heard::Lost,
                                };
                                let lost = heard == Heard::Lost;
                                if tx.send(heard).await.is_err() || (lost && tx.send(Heard::Ready).await.is_err()) {
                                    return;
                                }
                            }
                            // The layer is gone: stop listening.
                            () = tx.closed() => return,
                        }
                    }
                }
                if tx.send(Heard::Lost).await.is_err() {
                    return;
                }
                tracing::warn!("cache invalidation channel lost; local tier emptied, reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Some(rx)
    }

    async fn generation(&self) -> Result<u64, Error> {
        counter(
            self.get(&generation_key(self.namespace()))
                .await?
                .as_deref(),
        )
    }

    async fn next_generation(&self, at_least: u64) -> Result<u64, Error> {
        self.script(&NEXT_GENERATION)
            .key(generation_key(self.namespace()))
            .arg(at_least)
            .invoke()
            .await
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
                    Some(_) => return Err(Error::wrong_type()),
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

    async fn purge_tag(&self, tag: &str) -> Result<Vec<String>, Error> {
        let set = tag_key(self.namespace(), tag);
        self.atomically(|ks| {
            let members = match ks.remove(&set) {
                None => return Ok(Vec::new()),
                Some(Value::Hash(members)) => members,
                Some(_) => return Err(Error::wrong_type()),
            };
            let members: Vec<String> = members.into_keys().collect();
            for member in &members {
                ks.remove(&entry_key(self.namespace(), member));
            }
            Ok(members)
        })
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let lease = lease_key(self.namespace(), key);
        self.atomically(|ks| {
            if ks.get(&lease).is_some() {
                return Ok(false);
            }
            ks.set(
                &lease,
                Value::Bytes(holder.as_bytes().to_vec()),
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
                Some(_) => return Err(Error::wrong_type()),
            };
            Ok((found, ks.get(&lease).is_some()))
        })
    }

    async fn unlease(&self, key: &str, holder: &str) -> Result<(), Error> {
        let lease = lease_key(self.namespace(), key);
        self.atomically(|ks| {
            if matches!(ks.get(&lease), Some(Value::Bytes(b)) if b == holder.as_bytes()) {
                ks.remove(&lease);
            }
        });
        Ok(())
    }

    async fn announce(&self, keys: &[String]) -> Result<(), Error> {
        if !keys.is_empty() {
            self.publish(&keys.join(","));
        }
        Ok(())
    }

    fn listen(&self) -> Option<mpsc::Receiver<Heard>> {
        let mut events = self.subscribe();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            if tx.send(Heard::Ready).await.is_err() {
                return;
            }
            loop {
                let heard = tokio::select! {
                    event = events.recv() => match event {
                        Ok(payload) => Heard::of_payload(&payload),
                        Err(RecvError::Lagged(_)) => Heard::Lost,
                        Err(RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                };
                let lost = heard == Heard::Lost;
                if tx.send(heard).await.is_err() {
                    return;
                }
                if lost && tx.send(Heard::Ready).await.is_err() {
                    return;
                }
            }
        });
        Some(rx)
    }

    async fn generation(&self) -> Result<u64, Error> {
        counter(
            self.get(&generation_key(self.namespace()))
                .await?
                .as_deref(),
        )
    }

    async fn next_generation(&self, at_least: u64) -> Result<u64, Error> {
        let key = generation_key(self.namespace());
        self.atomically(|ks| {
            let stored = match ks.get(&key) {
                None => 0,
                Some(Value::Bytes(raw)) => counter(Some(raw))?,
                Some(_) => return Err(Error::wrong_type()),
            };
            let next = stored.max(at_least) + 1;
            ks.set(&key, Value::Bytes(next.to_string().into_bytes()), None)?;
            Ok(next)
        })
    }
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

    async fn purge_tag(&self, tag: &str) -> Result<Vec<String>, Error> {
        on_backend!(self, b => CacheStore::purge_tag(b, tag).await)
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        on_backend!(self, b => CacheStore::lease(b, key, holder, ttl).await)
    }

    async fn poll(&self, key: &str) -> Result<(Option<Bytes>, bool), Error> {
        on_backend!(self, b => CacheStore::poll(b, key).await)
    }

    async fn unlease(&self, key: &str, holder: &str) -> Result<(), Error> {
        on_backend!(self, b => CacheStore::unlease(b, key, holder).await)
    }

    async fn announce(&self, keys: &[String]) -> Result<(), Error> {
        on_backend!(self, b => CacheStore::announce(b, keys).await)
    }

    fn listen(&self) -> Option<mpsc::Receiver<Heard>> {
        on_backend!(self, b => CacheStore::listen(b))
    }

    async fn generation(&self) -> Result<u64, Error> {
        on_backend!(self, b => CacheStore::generation(b).await)
    }

    async fn next_generation(&self, at_least: u64) -> Result<u64, Error> {
        on_backend!(self, b => CacheStore::next_generation(b, at_least).await)
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
    fn purge_tag<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<Vec<String>, Error>>;
    fn lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    fn poll<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(Option<Bytes>, bool), Error>>;
    fn unlease<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    fn announce<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), Error>>;
    fn listen(&self) -> Option<mpsc::Receiver<Heard>>;
    fn generation(&self) -> BoxFuture<'_, Result<u64, Error>>;
    fn next_generation(&self, at_least: u64) -> BoxFuture<'_, Result<u64, Error>>;
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
    fn purge_tag<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<Vec<String>, Error>> {
        Box::pin(CacheStore::purge_tag(self, tag))
    }
    fn lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(CacheStore::lease(self, key, holder, ttl))
    }
    fn poll<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(Option<Bytes>, bool), Error>> {
        Box::pin(CacheStore::poll(self, key))
    }
    fn unlease<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(CacheStore::unlease(self, key, holder))
    }
    fn announce<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(CacheStore::announce(self, keys))
    }
    fn listen(&self) -> Option<mpsc::Receiver<Heard>> {
        CacheStore::listen(self)
    }
    fn generation(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(CacheStore::generation(self))
    }
    fn next_generation(&self, at_least: u64) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(CacheStore::next_generation(self, at_least))
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

    pub(crate) async fn purge_tag(&self, tag: &str) -> Result<Vec<String>, Error> {
        match self {
            Store::Backend(b) => CacheStore::purge_tag(b, tag).await,
            Store::Custom(s) => s.purge_tag(tag).await,
        }
    }

    pub(crate) async fn lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, Error> {
        match self {
            Store::Backend(b) => CacheStore::lease(b, key, holder, ttl).await,
            Store::Custom(s) => s.lease(key, holder, ttl).await,
        }
    }

    pub(crate) async fn poll(&self, key: &str) -> Result<(Option<Bytes>, bool), Error> {
        match self {
            Store::Backend(b) => CacheStore::poll(b, key).await,
            Store::Custom(s) => s.poll(key).await,
        }
    }

    pub(crate) async fn unlease(&self, key: &str, holder: &str) -> Result<(), Error> {
        match self {
            Store::Backend(b) => CacheStore::unlease(b, key, holder).await,
            Store::Custom(s) => s.unlease(key, holder).await,
        }
    }

    pub(crate) async fn announce(&self, keys: &[String]) -> Result<(), Error> {
        match self {
            Store::Backend(b) => CacheStore::announce(b, keys).await,
            Store::Custom(s) => s.announce(keys).await,
        }
    }

    pub(crate) fn listen(&self) -> Option<mpsc::Receiver<Heard>> {
        match self {
            Store::Backend(b) => CacheStore::listen(b),
            Store::Custom(s) => s.listen(),
        }
    }

    pub(crate) async fn generation(&self) -> Result<u64, Error> {
        match self {
            Store::Backend(b) => CacheStore::generation(b).await,
            Store::Custom(s) => s.generation().await,
        }
    }

    pub(crate) async fn next_generation(&self, at_least: u64) -> Result<u64, Error> {
        match self {
            Store::Backend(b) => CacheStore::next_generation(b, at_least).await,
            Store::Custom(s) => s.next_generation(at_least).await,
        }
    }
}
