//! The cache store seam: entries by key, with tag sets, each operation
//! one or two round trips.
//!
//! The crate implements [`CacheStore`] for [`Backend`](crate::Backend),
//! [`RedisBackend`] and [`MemoryBackend`]; implement it to keep entries
//! elsewhere (and check it with `test_kit::cache_store`). Keys are 32 hex digits (a hash of the request's
//! cache key), or 64 for one variant of a URL (see
//! [`store`](CacheStore::store)); values are opaque bytes the layer encodes.
//!
//! # Tags
//!
//! Each tag records the keys of the entries stored with it that may still
//! live, at most [`MAX_TAG_MEMBERS`] of them: a key leaves its tag when its
//! entry expires (dropped on the tag's next write or purge) or is purged.
//! When a tag already records that many other live entries, an entry
//! naming it is not stored at all (it goes on being fetched from the
//! handler until some of them expire or the tag is purged): an entry its
//! tag could not record would be one that a purge of the tag misses, and
//! serving a purged page is worse than fetching it again. (Evicting a
//! recorded entry instead would let a flood of made-up URLs under one tag
//! push the popular pages out of the cache.)
//!
//! A purge goes in steps of a bounded number of keys
//! ([`purge_tag`](CacheStore::purge_tag)), so no single command, pipeline
//! or announcement names every key of a large tag.
//!
//! # Fills that race a write
//!
//! A response the handler built before a write (or a purge) must not be
//! stored after that write's invalidation: it would serve the old page,
//! to the writer too, until it expires. So an entry is only ever stored
//! by the holder of its key's fill lease ([`lease`](CacheStore::lease),
//! taken before the handler runs), and only while it still holds it:
//! [`invalidate`](CacheStore::invalidate) and a purge remove the lease
//! with the entry, and [`store`](CacheStore::store) writes nothing for a
//! holder who lost it. A purge cannot name the fills of its tag still
//! running (their tags are known only from their responses), so each
//! tag remembers when its last purge began, for [`FILL_HORIZON`], and a
//! fill that began before then is not recorded in it, so not stored.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::layout::{
    entry_key, invalidated_key, lease_key, purge_key, purged_key, split_key, tag_key,
    variant_entry, variant_lease_prefix, variant_prefix, variants_key, NONCE,
};
use crate::error::Error;
use crate::lease;
use crate::memory::{MemoryBackend, SortedSet, Value};
use crate::redis::{script, RedisBackend, Script};

static NEXT_GENERATION: Script = script!("cache-next-generation", "generation.lua");
static RECORD_TAG: Script = script!("cache-tag", "tag.lua");
static PURGE_STEP: Script = script!("cache-purge-step", "purge.lua");
static FILL: Script = script!("cache-fill", "fill.lua");
static INVALIDATE: Script = script!("cache-invalidate", "invalidate.lua");

/// The most entries one tag records at a time: 10,000. An entry naming a
/// tag that records this many other live entries is not stored (see the
/// [module docs](self#tags)).
pub const MAX_TAG_MEMBERS: usize = 10_000;

/// How long (ms) a tag keeps a key past its entry's expiry: on a Redis
/// Cluster the entry may live on a node whose clock is a little behind
/// the clock of its tag's node (the entry then ends a little later than
/// the tag reckons), and the key must not leave the tag while the entry
/// may still be there.
const TAG_MARGIN_MS: u64 = 1_000;

/// How long a fill may take and still be stored: 10 minutes. A tag
/// remembers when its last purge began for this long (a fill that began
/// before it is not stored), so a fill slower than this could not tell
/// whether a purge ran meanwhile; its lease is renewed no longer either.
pub const FILL_HORIZON: Duration = Duration::from_secs(600);

/// One fill of an entry: the lease its holder took before asking the
/// handler, and when it asked. [`CacheStore::store`] writes the entry only
/// while the lease is still the holder's (see the
/// [module docs](self#fills-that-race-a-write)).
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    holder: &'a str,
    began: u64,
    variant: Option<(&'a [u8], usize)>,
    leased: Option<&'a str>,
}

impl<'a> Fill<'a> {
    /// The fill of `holder` (its lease's token), which began at `began`
    /// (before the lease was asked for).
    pub fn new(holder: &'a str, began: std::time::SystemTime) -> Self {
        Fill {
            holder,
            began: super::policy::unix_ms(began),
            variant: None,
            leased: None,
        }
    }

    /// The fill holds the lease of `key` (by default, of the key it
    /// stores): a request that did not know its URL varies leased the
    /// URL's key, and stores a variant's.
    pub fn leased(self, key: &'a str) -> Self {
        Fill {
            leased: Some(key),
            ..self
        }
    }

    /// The key whose lease the fill holds, when not the one it stores.
    pub fn leased_key(&self) -> Option<&'a str> {
        self.leased
    }

    /// The fill of one variant of a URL (its key names both: see
    /// [`CacheStore::store`]): `pointer` (not empty) goes under the URL's
    /// key (the names its responses vary on), and the URL holds at most
    /// `places` variants.
    pub fn variant(self, pointer: &'a [u8], places: usize) -> Self {
        Fill {
            variant: Some((pointer, places.max(1))),
            ..self
        }
    }

    /// The pointer and the most places, for the fill of a variant.
    pub fn variant_of(&self) -> Option<(&'a [u8], usize)> {
        self.variant
    }

    /// The holder's lease token.
    pub fn holder(&self) -> &'a str {
        self.holder
    }

    /// When the fill began, Unix ms (this instance's clock).
    pub fn began_ms(&self) -> u64 {
        self.began
    }
}

crate::seam::store_seam! {
    /// Where a cache layer keeps its entries.
    pub trait CacheStore: Send + Sync + 'static {
        /// The entry stored under `key`, if any (Redis: one `GET`; a
        /// variant's, one `MGET` of it and its URL's pointer).
        async fn lookup<'a, 'b>(&'a self, key: &'b str) -> Result<Option<Bytes>, Error>;

        /// Stores `entry` under `key` for `ttl`, replacing any entry there,
        /// once each of `tags` has recorded `key` until the entry is gone,
        /// if `fill`'s holder still holds the key's fill lease; the write
        /// gives the lease up. True when stored. Recording drops the keys
        /// whose entries are gone from the tag first.
        ///
        /// False, and the entry is not written (any entry already under `key`
        /// stays): when the lease is no longer the holder's (an invalidation
        /// or purge removed it: the response may predate it; or it expired);
        /// when one of `tags` was purged since `fill` began (or less than a
        /// second after: clocks may differ by that much), or, for a tagged
        /// entry, `fill` began more than [`FILL_HORIZON`] ago (a purge that
        /// long ago is forgotten); or when one of `tags` records
        /// [`MAX_TAG_MEMBERS`] other live entries already (a purge of that tag
        /// could not find it). The other tags may have recorded `key`: a key
        /// whose entry is missing costs their purge a `DEL` that finds
        /// nothing. The lease stays with its holder unless written.
        ///
        /// # Variants
        ///
        /// A key of 64 hex digits names a variant of the URL whose key is
        /// its first 32 (the fill's [`Fill::variant_of`] then gives the
        /// pointer and the most places). Its URL's key then holds the
        /// pointer, with a nonce made when the pointer was; the variant is
        /// stored with that nonce, and [`lookup`](Self::lookup) answers it
        /// only while the URL's key holds that pointer. So whatever removes
        /// or replaces the pointer (an invalidation, other names, an entry
        /// stored under the URL's own key, an eviction) retires every
        /// variant stored under it at once, even one its URL no longer
        /// records. The URL records each variant with the end of its
        /// place: its expiry, plus as long again (a variant fetched again
        /// soon after it expired keeps its place). When the URL holds that
        /// many places already, a new variant is not stored (false): it
        /// finds room only where a place ended, so a flood of made-up
        /// values of a varied field cannot push out the variants stored
        /// before it.
        ///
        /// Each variant has its own fill lease (a fill that did not know
        /// the URL varies holds the URL's: [`Fill::leased`]; the write then
        /// checks the lease the fill names). An invalidation cannot name
        /// every variant's lease (a first fill of a variant is recorded
        /// nowhere yet), so it stamps the URL with the time, and a fill under
        /// a variant's lease that began before the stamp (or less than a
        /// second after: clocks may differ by that much) is not stored; nor
        /// is one that finds no pointer, or another list of names, where it
        /// leased under one (an invalidation or a replacement came between).
        /// The pointer's nonce is 40 hex digits, which the store appends to
        /// the pointer the fill gives and puts before the variant's bytes,
        /// and strips again when it reads the variant.
        ///
        /// Redis: without tags, one small script (compare the lease, `SET
        /// ... PX`, `DEL` the lease; for a variant, also the pointer and the
        /// places); with tags, one small script per tag
        /// first (concurrently: one round trip; on a cluster, on each tag's
        /// node), then that script with the expiry the tags' scripts computed
        /// from Redis's clock (`PXAT`, a second round trip).
        async fn store<'a, 'b, 'c, 'd>(
            &'a self,
            key: &'b str,
            entry: Vec<u8>,
            ttl: Duration,
            tags: &'c [String],
            fill: Fill<'d>,
        ) -> Result<bool, Error>;

        /// Removes the entry under `key`, and its fill lease: a fill running
        /// now is not stored (see [`store`](Self::store)). For a URL's key,
        /// also its pointer and every variant it records, and, when it
        /// records variants, the URL is stamped with the time, so no
        /// variant's fill that began before is stored (a URL that records
        /// none leaves no key behind). True when there was an entry (Redis: a URL's, one small
        /// script; a variant's, two `DEL`s, pipelined).
        async fn invalidate<'a, 'b>(&'a self, key: &'b str) -> Result<bool, Error>;

        /// One step of a purge of `tag`: removes up to `limit` (at least 1)
        /// of the entries set aside for it, and returns their keys (entries
        /// removed now, or already gone: local copies of either must go);
        /// none once the purge is done. The caller repeats it until then.
        ///
        /// The first step (`start`) notes when the purge began (for
        /// [`FILL_HORIZON`]: a fill that began before is not stored with the
        /// tag), sets aside every key the tag records, and the tag starts
        /// again empty: the steps that follow (`start` false)
        /// remove only those, so a purge ends however busy the tag is, and an
        /// entry tagged after it started waits for the next purge. A key
        /// leaves the keys set aside only once its entry is gone, so a purge
        /// that stopped half-way (an error) leaves the rest to the next purge
        /// of the tag, which takes them on too.
        ///
        /// Each entry goes with its fill lease (as with
        /// [`invalidate`](Self::invalidate)).
        ///
        /// Redis: one small script (on the first step it also sets the keys
        /// aside), then one pipeline of `DEL`s (each of an entry and its
        /// lease) and a `ZREM` of the keys returned (on a cluster, each `DEL`
        /// on its entry's node, then the `ZREM`).
        async fn purge_tag<'a, 'b>(
            &'a self,
            tag: &'b str,
            limit: usize,
            start: bool,
        ) -> Result<Vec<String>, Error>;

        /// Takes the fill lease of `key` for `ttl`, as `holder`, if no one
        /// holds it: the holder asks the handler, other instances wait for its
        /// entry. Answers whether it was taken, and the entry under `key` as
        /// it is right after (read in the same step: a fill that ended, and
        /// gave its lease up, just before is seen, so its entry is not fetched
        /// again). Redis: `SET ... NX PX` and `GET` (a variant's: `MGET` of
        /// it and its pointer), pipelined.
        async fn lease<'a, 'b, 'c>(
            &'a self,
            key: &'b str,
            holder: &'c str,
            ttl: Duration,
        ) -> Result<(bool, Option<Bytes>), Error>;

        /// The entry under `key`, and whether its fill lease is still held
        /// (Redis: `GET` and `EXISTS`, pipelined; a variant's: `MGET` of it
        /// and its pointer, and `EXISTS`).
        async fn poll<'a, 'b>(&'a self, key: &'b str) -> Result<(Option<Bytes>, bool), Error>;

        /// Gives up the fill lease of `key` if `holder` still holds it (Redis:
        /// a compare-and-delete script).
        async fn unlease<'a, 'b, 'c>(&'a self, key: &'b str, holder: &'c str) -> Result<(), Error>;

        /// Extends the fill lease of `key` to `ttl` from now if `holder` still
        /// holds it: true when extended (Redis: a compare-and-`PEXPIRE`
        /// script). The layer renews its leases while a fill runs, so a fill
        /// slower than the lease is still stored.
        async fn renew<'a, 'b, 'c>(
            &'a self,
            key: &'b str,
            holder: &'c str,
            ttl: Duration,
        ) -> Result<bool, Error>;

        /// Tells every instance's local tier that the entries of `keys` changed
        /// (Redis: one `PUBLISH`). The default tells no one: a store without it
        /// cannot back a local tier.
        async fn announce<'a, 'b>(&'a self, keys: &'b [String]) -> Result<(), Error> {
            let _ = keys;
            Ok(())
        };

        /// What other instances announce, from now on, with [`Heard::Lost`]
        /// whenever announcements may have been missed (Redis: a `SUBSCRIBE`
        /// connection, reconnected when lost). `None` when this store cannot
        /// (the default; a Redis backend built from a pool rather than a URL).
        fn listen(&self) -> Option<mpsc::Receiver<Heard>> {
            None
        };

        /// The current generation: every entry key is made under it, so a new
        /// one hides every entry stored before (Redis: one `GET`). The default
        /// is always 0: such a store cannot purge everything.
        async fn generation<'a>(&'a self) -> Result<u64, Error> {
            Ok(0)
        };

        /// Starts the next generation, past both the stored one and
        /// `at_least` (the caller's: a counter that went back still moves on),
        /// and returns it (Redis: one small script). The default refuses.
        async fn next_generation<'a>(&'a self, at_least: u64) -> Result<u64, Error> {
            let _ = at_least;
            Err(Error::new(
                crate::error::ErrorKind::Config,
                "this cache store cannot purge everything (no generation counter)",
            ))
        };
    }
    dyn DynCacheStore;
    enum Store;
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

/// `MGET` of a variant's URL key (its pointer) and of the variant.
fn variant_read(backend: &RedisBackend, key: &str) -> ::redis::Cmd {
    let mut cmd = ::redis::cmd("MGET");
    cmd.arg(entry_key(backend.namespace(), split_key(key).0))
        .arg(entry_key(backend.namespace(), key));
    cmd
}

/// A variant's entry from the `MGET` of [`variant_read`].
fn variant_of(read: Vec<Option<Vec<u8>>>) -> Option<Bytes> {
    let mut read = read.into_iter();
    let pointer = read.next().flatten();
    let value = read.next().flatten().map(Bytes::from);
    variant_entry(pointer.as_deref(), value)
}

impl CacheStore for RedisBackend {
    async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        // One call whichever the command (a call's future is kilobytes,
        // and two of them would both be part of every read's future).
        let variant = split_key(key).1.is_some();
        let cmd = if variant {
            variant_read(self, key)
        } else {
            let mut get = ::redis::cmd("GET");
            get.arg(entry_key(self.namespace(), key));
            get
        };
        let read: ::redis::Value = self.query(&cmd).await?;
        let decoded = if variant {
            ::redis::from_redis_value(read).map(variant_of)
        } else {
            ::redis::from_redis_value::<Option<Vec<u8>>>(read).map(|v| v.map(Bytes::from))
        };
        decoded.map_err(|e| Error::decode("unexpected reply").with_source(e.to_string()))
    }

    async fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
        tags: &[String],
        fill: Fill<'_>,
    ) -> Result<bool, Error> {
        let ms = crate::time::millis(ttl).max(1);
        let (url, variant) = split_key(key);
        let (pointer, places) = match (variant, fill.variant) {
            (Some(_), Some((pointer, places))) if !pointer.is_empty() => (pointer, places),
            (Some(_), _) => {
                return Err(Error::new(
                    crate::error::ErrorKind::Config,
                    "a variant is stored with its pointer (Fill::variant)",
                ))
            }
            _ => (&[][..], 0),
        };
        let leased = fill.leased.unwrap_or(key);
        if split_key(leased).0 != url {
            return Err(Error::new(
                crate::error::ErrorKind::Config,
                "a fill holds a lease of the URL it stores",
            ));
        }
        let write = |how: &'static str, at: u64| {
            self.script(&FILL)
                .key(entry_key(self.namespace(), key))
                .key(lease_key(self.namespace(), leased))
                .key(entry_key(self.namespace(), url))
                .key(variants_key(self.namespace(), key))
                .key(invalidated_key(self.namespace(), key))
                .arg(fill.holder)
                .arg(&entry)
                .arg(how)
                .arg(at)
                .arg(pointer)
                .arg(variant.unwrap_or(""))
                .arg(places)
                .arg(variant_prefix(self.namespace(), key))
                .arg(fill.began)
                .arg(TAG_MARGIN_MS)
                .arg(if split_key(leased).1.is_some() {
                    "1"
                } else {
                    "0"
                })
                .invoke::<i64>()
        };
        if tags.is_empty() {
            return Ok(write("PX", ms).await? == 1);
        }
        // The tags first, each script in its tag's slot (concurrent calls
        // share the connection: one round trip): an entry is never found
        // without its tags, or a purge would miss it.
        let records = tags.iter().map(|tag| {
            self.script(&RECORD_TAG)
                .key(tag_key(self.namespace(), tag))
                .key(purged_key(self.namespace(), tag))
                .arg(key)
                .arg(ms)
                .arg(TAG_MARGIN_MS)
                .arg(MAX_TAG_MEMBERS)
                .arg(fill.began)
                .arg(crate::time::millis(FILL_HORIZON))
                .invoke::<i64>()
        });
        let expiries = futures_util::future::try_join_all(records).await?;
        let mut expires = u64::MAX;
        for at in expiries {
            // -1: that tag is full (a purge of it could not find the
            // entry); -2: purged since the fill began.
            let Ok(at) = u64::try_from(at) else {
                return Ok(false);
            };
            expires = expires.min(at);
        }
        // The expiry the tags recorded (from Redis's clock), not a TTL
        // from now: a write that lands late (a paused Redis resuming)
        // still ends when its tags let the key go.
        Ok(write("PXAT", expires).await? == 1)
    }

    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        if split_key(key).1.is_none() {
            let removed: i64 = self
                .script(&INVALIDATE)
                .key(lease_key(self.namespace(), key))
                .key(entry_key(self.namespace(), key))
                .key(variants_key(self.namespace(), key))
                .key(invalidated_key(self.namespace(), key))
                .arg(variant_prefix(self.namespace(), key))
                .arg(crate::time::millis(FILL_HORIZON))
                .arg(variant_lease_prefix(self.namespace(), key))
                .invoke()
                .await?;
            return Ok(removed > 0);
        }
        // The lease first: a fill writing between the two finds it gone
        // (the other order would let it write after the entry's DEL).
        let mut pipe = ::redis::pipe();
        pipe.cmd("DEL").arg(lease_key(self.namespace(), key));
        pipe.cmd("DEL").arg(entry_key(self.namespace(), key));
        let (_leases, entries): (i64, i64) = self.pipeline(&pipe).await?;
        Ok(entries > 0)
    }

    async fn purge_tag(&self, tag: &str, limit: usize, start: bool) -> Result<Vec<String>, Error> {
        let aside = purge_key(self.namespace(), tag);
        let members: Vec<String> = self
            .script(&PURGE_STEP)
            .key(tag_key(self.namespace(), tag))
            .key(&aside)
            .key(purged_key(self.namespace(), tag))
            .arg(if start { "1" } else { "0" })
            .arg(limit.max(1))
            .arg(crate::time::millis(FILL_HORIZON))
            .invoke()
            .await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        // Each entry by its own key (their slots differ from the set's),
        // then only the members read. On a cluster each in its own slot,
        // concurrently; the members leave the keys set aside only once
        // their entries are gone (else a failed DEL would leave an entry
        // no purge finds).
        let groups: Vec<Vec<::redis::Cmd>> = members
            .iter()
            .map(|member| {
                let mut del = ::redis::cmd("DEL");
                del.arg(entry_key(self.namespace(), member))
                    .arg(lease_key(self.namespace(), member));
                vec![del]
            })
            .collect();
        let mut remove = ::redis::cmd("ZREM");
        remove.arg(&aside).arg(&members);
        let _: Vec<u64> = self.phased(vec![groups, vec![vec![remove]]]).await?;
        Ok(members)
    }

    async fn lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(bool, Option<Bytes>), Error> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(lease_key(self.namespace(), key))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(crate::time::millis(ttl).max(1));
        if split_key(key).1.is_some() {
            pipe.add_command(variant_read(self, key));
            let (taken, read): (Option<String>, Vec<Option<Vec<u8>>>) =
                self.pipeline(&pipe).await?;
            return Ok((taken.is_some(), variant_of(read)));
        }
        pipe.cmd("GET").arg(entry_key(self.namespace(), key));
        let (taken, entry): (Option<String>, Option<Vec<u8>>) = self.pipeline(&pipe).await?;
        Ok((taken.is_some(), entry.map(Bytes::from)))
    }

    async fn poll(&self, key: &str) -> Result<(Option<Bytes>, bool), Error> {
        let mut pipe = ::redis::pipe();
        if split_key(key).1.is_some() {
            pipe.add_command(variant_read(self, key));
            pipe.cmd("EXISTS").arg(lease_key(self.namespace(), key));
            let (read, held): (Vec<Option<Vec<u8>>>, i64) = self.pipeline(&pipe).await?;
            return Ok((variant_of(read), held > 0));
        }
        pipe.cmd("GET").arg(entry_key(self.namespace(), key));
        pipe.cmd("EXISTS").arg(lease_key(self.namespace(), key));
        let (entry, held): (Option<Vec<u8>>, i64) = self.pipeline(&pipe).await?;
        Ok((entry.map(Bytes::from), held > 0))
    }

    async fn unlease(&self, key: &str, holder: &str) -> Result<(), Error> {
        lease::release_on_redis(
            self,
            &lease_key(self.namespace(), key),
            holder.as_bytes(),
            false,
        )
        .await
        .map(drop)
    }

    async fn renew(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        lease::renew_on_redis(
            self,
            &lease_key(self.namespace(), key),
            holder.as_bytes(),
            ttl,
        )
        .await
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
                    let mut pubsub = backend.pubsub().await?;
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

/// Records `member` in the sorted set `set` with `score` (a member keeps a
/// greater score it had), after dropping the members scored up to `now`,
/// unless the set holds `bound` other members; the set then lives as long
/// as its highest score. False (nothing recorded) when full. What
/// `tag.lua` and `fill.lua` do with a set.
fn record(
    ks: &mut crate::memory::Keyspace,
    set: &str,
    member: &str,
    score: u64,
    bound: usize,
    now: u64,
) -> Result<bool, Error> {
    let last = match ks.get_mut(set) {
        Some(Value::SortedSet(members)) => {
            members.remove_up_to(now);
            let known = members.score(member);
            if known.is_none() && members.len() >= bound {
                return Ok(false);
            }
            if known.is_none_or(|known| known < score) {
                members.insert(member, score);
            }
            members.last().map_or(score, |(_, last)| last)
        }
        Some(_) => return Err(Error::wrong_type()),
        None => {
            let mut members = SortedSet::new();
            members.insert(member, score);
            ks.set(set, Value::SortedSet(members), None)?;
            score
        }
    };
    ks.expire_at_millis(set, last);
    Ok(true)
}

/// The bytes under `key` in `ks`, if any.
fn bytes_at(ks: &mut crate::memory::Keyspace, key: &str) -> Result<Option<Bytes>, Error> {
    match ks.get(key) {
        None => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(Bytes::copy_from_slice(b))),
        Some(_) => Err(Error::wrong_type()),
    }
}

/// The entry under `key` in `ks` (a variant's only while its pointer is
/// there, as on Redis).
fn entry_at(
    ks: &mut crate::memory::Keyspace,
    ns: &crate::keys::Namespace,
    key: &str,
) -> Result<Option<Bytes>, Error> {
    let value = bytes_at(ks, &entry_key(ns, key))?;
    if split_key(key).1.is_none() {
        return Ok(value);
    }
    let pointer = bytes_at(ks, &entry_key(ns, split_key(key).0))?;
    Ok(variant_entry(pointer.as_deref(), value))
}

impl CacheStore for MemoryBackend {
    async fn lookup(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.atomically(|ks| entry_at(ks, self.namespace(), key))
    }

    async fn store(
        &self,
        key: &str,
        entry: Vec<u8>,
        ttl: Duration,
        tags: &[String],
        fill: Fill<'_>,
    ) -> Result<bool, Error> {
        let entry_key = entry_key(self.namespace(), key);
        let leased = fill.leased.unwrap_or(key);
        let lease = lease_key(self.namespace(), leased);
        let stamp = invalidated_key(self.namespace(), key);
        let ttl = ttl.max(Duration::from_millis(1));
        if split_key(key).1.is_some() && fill.variant.is_none_or(|(p, _)| p.is_empty()) {
            return Err(Error::new(
                crate::error::ErrorKind::Config,
                "a variant is stored with its pointer (Fill::variant)",
            ));
        }
        if split_key(leased).0 != split_key(key).0 {
            return Err(Error::new(
                crate::error::ErrorKind::Config,
                "a fill holds a lease of the URL it stores",
            ));
        }
        self.atomically(|ks| {
            let now = ks.now_millis();
            let score = now
                .saturating_add(crate::time::millis(ttl))
                .saturating_add(TAG_MARGIN_MS);
            let horizon = crate::time::millis(FILL_HORIZON);
            // As on Redis, every tag records the key if it may, and the
            // entry is written only when all of them did, for the
            // lease's holder.
            let mut recorded = true;
            for tag in tags {
                let purged = match ks.get(&purged_key(self.namespace(), tag)) {
                    None => 0,
                    // Unreadable: as if purged now.
                    Some(Value::Bytes(raw)) => std::str::from_utf8(raw)
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(u64::MAX),
                    Some(_) => return Err(Error::wrong_type()),
                };
                if fill.began.saturating_add(horizon) <= now.saturating_add(TAG_MARGIN_MS)
                    || purged.saturating_add(TAG_MARGIN_MS) >= fill.began
                {
                    recorded = false;
                    continue;
                }
                let set = tag_key(self.namespace(), tag);
                if !record(ks, &set, key, score, MAX_TAG_MEMBERS, now)? {
                    recorded = false;
                }
            }
            let held =
                matches!(ks.get(&lease), Some(Value::Bytes(b)) if b == fill.holder.as_bytes());
            if !(recorded && held) {
                return Ok(false);
            }
            // As fill.lua does.
            if split_key(leased).1.is_some() {
                let stamped = bytes_at(ks, &stamp)?.map(|raw| {
                    std::str::from_utf8(&raw)
                        .ok()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(u64::MAX)
                });
                if stamped.is_some_and(|at| at.saturating_add(TAG_MARGIN_MS) >= fill.began) {
                    return Ok(false);
                }
            }
            let (url, variant) = split_key(key);
            let url_key = super::layout::entry_key(self.namespace(), url);
            let index = variants_key(self.namespace(), key);
            let prefix = variant_prefix(self.namespace(), key);
            let clear = |ks: &mut crate::memory::Keyspace| -> Result<(), Error> {
                match ks.remove(&index) {
                    None => Ok(()),
                    Some(Value::SortedSet(members)) => {
                        for (id, _) in members.iter() {
                            ks.remove(&format!("{prefix}{id}"));
                        }
                        Ok(())
                    }
                    Some(_) => Err(Error::wrong_type()),
                }
            };
            let (Some(id), Some((pointer, places))) = (variant, fill.variant) else {
                if variant.is_none() {
                    clear(ks)?;
                }
                ks.set(&entry_key, Value::Bytes(entry), Some(ttl))?;
                ks.remove(&lease);
                return Ok(true);
            };
            let nonce = match bytes_at(ks, &url_key)? {
                Some(held) if held.len() == pointer.len() + NONCE && held.starts_with(pointer) => {
                    held.slice(pointer.len()..)
                }
                // Leased under another list of names: replaced since.
                _ if split_key(leased).1.is_some() => return Ok(false),
                _ => {
                    clear(ks)?;
                    // As unique as the holder's token (the time besides).
                    let digest = crate::digest::digest_parts([
                        fill.holder.as_bytes(),
                        &now.to_be_bytes()[..],
                    ]);
                    let mut made = String::with_capacity(NONCE);
                    for b in &digest[..NONCE / 2] {
                        use std::fmt::Write as _;
                        let _ = write!(made, "{b:02x}");
                    }
                    Bytes::from(made)
                }
            };
            let expires = now.saturating_add(crate::time::millis(ttl));
            let place = expires.saturating_add(crate::time::millis(ttl));
            if !record(ks, &index, id, place, places, now)? {
                return Ok(false);
            }
            let last = match ks.get_mut(&index) {
                Some(Value::SortedSet(members)) => members.last().map_or(place, |(_, l)| l),
                _ => place,
            };
            ks.set(
                &entry_key,
                Value::Bytes([&nonce[..], &entry].concat()),
                Some(ttl),
            )?;
            ks.set(&url_key, Value::Bytes([pointer, &nonce[..]].concat()), None)?;
            ks.expire_at_millis(&url_key, last);
            ks.remove(&lease);
            Ok(true)
        })
    }

    async fn invalidate(&self, key: &str) -> Result<bool, Error> {
        let (entry, lease) = (
            entry_key(self.namespace(), key),
            lease_key(self.namespace(), key),
        );
        let url = split_key(key).1.is_none();
        let (index, prefix) = (
            variants_key(self.namespace(), key),
            variant_prefix(self.namespace(), key),
        );
        let stamp = invalidated_key(self.namespace(), key);
        let leases = variant_lease_prefix(self.namespace(), key);
        self.atomically(|ks| {
            if url && ks.get(&index).is_some() {
                // The stamp first, as on Redis (only for a URL that
                // records variants: made-up URLs leave nothing behind).
                let now = ks.now_millis();
                ks.set(
                    &stamp,
                    Value::Bytes(now.to_string().into_bytes()),
                    Some(FILL_HORIZON),
                )?;
            }
            ks.remove(&lease);
            let held = ks.remove(&entry);
            if !url {
                return Ok(held.is_some());
            }
            // As invalidate.lua does: a pointer is not an entry.
            let mut removed = matches!(&held, Some(Value::Bytes(b)) if !b.starts_with(b"RLV1"));
            match ks.remove(&index) {
                None => {}
                Some(Value::SortedSet(members)) => {
                    for (id, _) in members.iter() {
                        removed |= ks.remove(&format!("{prefix}{id}")).is_some();
                        ks.remove(&format!("{leases}{id}"));
                    }
                }
                Some(_) => return Err(Error::wrong_type()),
            }
            Ok(removed)
        })
    }

    async fn purge_tag(&self, tag: &str, limit: usize, start: bool) -> Result<Vec<String>, Error> {
        let (set, aside) = (
            tag_key(self.namespace(), tag),
            purge_key(self.namespace(), tag),
        );
        let purged = purged_key(self.namespace(), tag);
        self.atomically(|ks| {
            let now = ks.now_millis();
            if start {
                ks.set(
                    &purged,
                    Value::Bytes(now.to_string().into_bytes()),
                    Some(FILL_HORIZON),
                )?;
                match ks.remove(&set) {
                    None => {}
                    Some(Value::SortedSet(members)) => {
                        let merged = match ks.remove(&aside) {
                            None => members,
                            Some(Value::SortedSet(mut merged)) => {
                                for (member, score) in members.iter() {
                                    if merged.score(member).is_none_or(|s| s < score) {
                                        merged.insert(member, score);
                                    }
                                }
                                merged
                            }
                            Some(_) => return Err(Error::wrong_type()),
                        };
                        ks.set(&aside, Value::SortedSet(merged), None)?;
                    }
                    Some(_) => return Err(Error::wrong_type()),
                }
            }
            let (batch, last) = match ks.get_mut(&aside) {
                None => return Ok(Vec::new()),
                Some(Value::SortedSet(members)) => {
                    members.remove_up_to(now);
                    let batch: Vec<String> = members
                        .iter()
                        .take(limit.max(1))
                        .map(|(member, _)| member.to_owned())
                        .collect();
                    for member in &batch {
                        members.remove(member);
                    }
                    (batch, members.last().map(|(_, score)| score))
                }
                Some(_) => return Err(Error::wrong_type()),
            };
            match last {
                Some(last) => {
                    ks.expire_at_millis(&aside, last);
                }
                None => {
                    ks.remove(&aside);
                }
            }
            for member in &batch {
                ks.remove(&entry_key(self.namespace(), member));
                ks.remove(&lease_key(self.namespace(), member));
            }
            Ok(batch)
        })
    }

    async fn lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(bool, Option<Bytes>), Error> {
        let lease = lease_key(self.namespace(), key);
        self.atomically(|ks| {
            let taken = ks.get(&lease).is_none();
            if taken {
                ks.set(
                    &lease,
                    Value::Bytes(holder.as_bytes().to_vec()),
                    Some(ttl.max(Duration::from_millis(1))),
                )?;
            }
            Ok((taken, entry_at(ks, self.namespace(), key)?))
        })
    }

    async fn poll(&self, key: &str) -> Result<(Option<Bytes>, bool), Error> {
        let lease = lease_key(self.namespace(), key);
        self.atomically(|ks| {
            let found = entry_at(ks, self.namespace(), key)?;
            Ok((found, ks.get(&lease).is_some()))
        })
    }

    async fn unlease(&self, key: &str, holder: &str) -> Result<(), Error> {
        lease::release_in_memory(self, &lease_key(self.namespace(), key), holder.as_bytes());
        Ok(())
    }

    async fn renew(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        Ok(lease::renew_in_memory(
            self,
            &lease_key(self.namespace(), key),
            holder.as_bytes(),
            ttl,
        ))
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
