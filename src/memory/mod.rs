//! The in-process backend: a bounded keyspace with TTLs behind one lock.
//!
//! It keeps the semantics the layers rely on from Redis — values, hashes
//! and sorted sets under string keys, millisecond TTLs, atomic multi-key
//! operations, one clock per operation — without a server. It serves
//! development, tests, and single-instance deployments; state is lost on
//! restart and not shared between processes.
//!
//! ```
//! use std::time::Duration;
//! use redis_layers::memory::{MemoryBackend, Value};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), redis_layers::Error> {
//! let backend = MemoryBackend::builder().max_entries(10_000).build()?;
//! backend.set("greeting", b"hello", Some(Duration::from_secs(60))).await?;
//! assert_eq!(backend.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//!
//! // Several keys changed as one step, like a Lua script on Redis:
//! let hits = backend.atomically(|ks| {
//!     let hits = match ks.get("hits") {
//!         Some(Value::Bytes(b)) => String::from_utf8_lossy(b).parse::<u64>().unwrap_or(0),
//!         _ => 0,
//!     } + 1;
//!     ks.set("hits", Value::Bytes(hits.to_string().into_bytes()), None)?;
//!     Ok::<_, redis_layers::Error>(hits)
//! })?;
//! assert_eq!(hits, 1);
//! # Ok(()) }
//! ```
//!
//! # Time
//!
//! The clock is [`tokio::time::Instant`], so tests can pause and advance it
//! (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`). Each
//! [`atomically`](MemoryBackend::atomically) call reads the clock once, as a
//! Redis script reads `TIME` once.
//!
//! # Bounds and expiry
//!
//! At most [`max_entries`](MemoryBackendBuilder::max_entries) keys are kept
//! (default [`DEFAULT_MAX_ENTRIES`]). Expired keys vanish when next touched,
//! and a background task (started when the backend is built inside a Tokio
//! runtime) sweeps them every
//! [`sweep_interval`](MemoryBackendBuilder::sweep_interval).
//!
//! Any client can make the layers create keys (a counter per client
//! address, a record per idempotency key, an entry per URL), so what may
//! be evicted to make room depends on what a key holds, read from its name:
//!
//! | keys | share of `max_entries` | evicted |
//! |---|---|---|
//! | sessions and users' session lists | all of it | only to make room for another session (the one nearest expiry, so the least recently active) |
//! | rate-limit counters | at most 1/4 | never: past the share a new counter is refused ([`ErrorKind::Capacity`], and the rule's store-failure policy applies), so no flood of made-up clients resets a login throttle |
//! | idempotency records, held locks and cache purge markers (together) | at most 1/4 | never: past the share a new key is refused (503), so no flood of made-up keys makes a completed request run again |
//! | cache entries and tags, and keys of your own | all of it | first, by any new key, nearest expiry first |
//!
//! When the keyspace is full, expired keys go first, then the disposable
//! key closest to expiry (like Redis's `volatile-ttl` policy); when there
//! is none (and, for a session, no other session with a TTL) the write
//! fails with [`ErrorKind::Capacity`]. A flood of anonymous requests can
//! therefore fill the cache's room and the two shares, but never evict a
//! session. (With Redis, `maxmemory-policy` decides; use `volatile-ttl` or
//! `noeviction` rather than an `allkeys-*` policy for the same guarantee.)

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::keys::Namespace;

mod sorted_set;

pub use sorted_set::SortedSet;

/// Key limit used when none is configured: 100 000.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// How often expired keys are swept when not configured: every 30 s.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    /// A plain byte string (a Redis string).
    Bytes(Vec<u8>),
    /// A map of fields to byte strings (a Redis hash).
    Hash(HashMap<String, Vec<u8>>),
    /// Members ordered by score (a Redis sorted set).
    SortedSet(SortedSet),
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires_at: Option<Instant>,
}

/// What a key holds, read from its name (the capability after the
/// backend's prefix), and so how it may be evicted. See the module docs,
/// "Bounds and expiry".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Sessions and users' session lists: evicted only to make room for
    /// another session.
    Session,
    /// Rate-limit counters: never evicted; new ones refused past their
    /// share.
    RateLimit,
    /// Idempotency records: never evicted; new ones refused past their
    /// share.
    Idempotency,
    /// Cache entries, tags and the rest (keys of your own): evicted
    /// first, by anyone.
    Disposable,
}

impl Class {
    const ALL: [Class; 4] = [
        Class::Session,
        Class::RateLimit,
        Class::Idempotency,
        Class::Disposable,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The class of `key` in the namespace `prefix`.
    fn of(prefix: &str, key: &str) -> Class {
        let capability = key
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.split(':').next());
        match capability {
            Some("session" | "session-user") => Class::Session,
            Some("rl") => Class::RateLimit,
            Some("idem") => Class::Idempotency,
            // A lock's fencing counter may go (its tokens keep rising on
            // the clock); a lock may not (an evicted lock is two holders).
            Some("lock") if key.ends_with(":n") => Class::Disposable,
            Some("lock") => Class::Idempotency,
            // When a tag's last purge began: evicted, it would let a fill
            // that began before the purge be stored.
            Some("cache-tag") if key.ends_with(":purged") => Class::Idempotency,
            _ => Class::Disposable,
        }
    }

    /// Most keys of this class: rate-limit counters and idempotency
    /// records, which any client can create and which must not be evicted,
    /// get a share of `max_entries`; the others are bounded by
    /// `max_entries` alone.
    fn cap(self, max_entries: usize) -> Option<usize> {
        match self {
            Class::RateLimit => Some((max_entries / 4).max(1)),
            Class::Idempotency => Some((max_entries / 4).max(1)),
            Class::Session | Class::Disposable => None,
        }
    }
}

/// The keyspace as seen inside one [`MemoryBackend::atomically`] call.
pub struct Keyspace {
    entries: HashMap<String, Entry>,
    /// Keys with a TTL by expiry, one set per [`Class`].
    expiries: [BTreeSet<(Instant, String)>; 4],
    /// Keys per [`Class`], expired ones not yet swept included.
    counts: [usize; 4],
    max_entries: usize,
    prefix: Arc<str>,
    now: Instant,
    epoch: (SystemTime, Instant),
}

impl fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyspace")
            .field("entries", &self.entries.len())
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl Keyspace {
    fn new(max_entries: usize, prefix: &str) -> Self {
        let now = Instant::now();
        Keyspace {
            entries: HashMap::new(),
            expiries: Default::default(),
            counts: [0; 4],
            max_entries,
            prefix: Arc::from(prefix),
            now,
            epoch: (SystemTime::now(), now),
        }
    }

    /// `ttl` from now; a TTL too long to represent is a century.
    fn later(&self, ttl: Duration) -> Instant {
        self.now
            .checked_add(ttl)
            .or_else(|| {
                self.now
                    .checked_add(Duration::from_secs(100 * 365 * 24 * 3600))
            })
            .unwrap_or(self.now)
    }

    fn class(&self, key: &str) -> Class {
        Class::of(&self.prefix, key)
    }

    /// Inserts a key not present; keeps the counts and the expiry index.
    fn insert_new(&mut self, key: &str, entry: Entry) {
        let class = self.class(key);
        if let Some(at) = entry.expires_at {
            self.expiries[class.index()].insert((at, key.to_owned()));
        }
        self.counts[class.index()] += 1;
        self.entries.insert(key.to_owned(), entry);
    }

    /// Removes a key, expired or not; keeps the counts and the index.
    fn take(&mut self, key: &str) -> Option<Entry> {
        self.unindex(key);
        let entry = self.entries.remove(key)?;
        self.counts[self.class(key).index()] -= 1;
        Some(entry)
    }

    /// The wall-clock time at the backend's creation, since the Unix epoch.
    fn epoch_since_unix(&self) -> Duration {
        self.epoch.0.duration_since(UNIX_EPOCH).unwrap_or_default()
    }

    /// The operation's time as Unix milliseconds (what a script gets from `TIME`).
    pub fn now_millis(&self) -> u64 {
        self.millis_of(self.now)
    }

    fn millis_of(&self, at: Instant) -> u64 {
        let unix = self.epoch_since_unix() + at.saturating_duration_since(self.epoch.1);
        unix.as_millis() as u64
    }

    fn instant_of(&self, unix_ms: u64) -> Instant {
        self.epoch.1 + Duration::from_millis(unix_ms).saturating_sub(self.epoch_since_unix())
    }

    /// Sets the expiry of an existing key to a Unix time in ms (like
    /// `PEXPIREAT`); a time not after now removes the key. False when absent.
    pub fn expire_at_millis(&mut self, key: &str, unix_ms: u64) -> bool {
        if !self.expire_if_due(key) {
            return false;
        }
        let at = self.instant_of(unix_ms);
        if at <= self.now {
            self.remove(key);
            return true;
        }
        self.reindex(key, at);
        true
    }

    /// The expiry of `key` as Unix ms (like `PEXPIRETIME`): `None` when
    /// absent, `Some(None)` when it has no TTL. Exact for expiries set with
    /// [`expire_at_millis`](Self::expire_at_millis).
    pub fn expire_time_millis(&mut self, key: &str) -> Option<Option<u64>> {
        if !self.expire_if_due(key) {
            return None;
        }
        let at = self.entries.get(key)?.expires_at;
        Some(at.map(|at| self.millis_of(at)))
    }

    fn is_live(&self, key: &str) -> bool {
        match self.entries.get(key) {
            Some(Entry {
                expires_at: Some(at),
                ..
            }) => *at > self.now,
            Some(_) => true,
            None => false,
        }
    }

    /// Removes `key` if its TTL has run out; true when it is (still) present.
    fn expire_if_due(&mut self, key: &str) -> bool {
        if self.is_live(key) {
            return true;
        }
        self.remove(key);
        false
    }

    /// The value under `key`, if present and not expired.
    pub fn get(&mut self, key: &str) -> Option<&Value> {
        if !self.expire_if_due(key) {
            return None;
        }
        self.entries.get(key).map(|e| &e.value)
    }

    /// The value under `key` for changing in place (its TTL is kept).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        if !self.expire_if_due(key) {
            return None;
        }
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// Stores `value` under `key`, replacing any value and TTL (like `SET`
    /// with `PX`, or without it when `ttl` is `None`).
    pub fn set(&mut self, key: &str, value: Value, ttl: Option<Duration>) -> Result<(), Error> {
        if !self.expire_if_due(key) {
            self.make_room(self.class(key))?;
        }
        self.take(key);
        let expires_at = ttl.map(|ttl| self.later(ttl));
        self.insert_new(key, Entry { value, expires_at });
        Ok(())
    }

    /// Removes `key`; returns its value if it was present and not expired.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let live = self.is_live(key);
        let entry = self.take(key)?;
        live.then_some(entry.value)
    }

    /// `None` when `key` is absent, `Some(None)` when it has no TTL, else the
    /// time it has left.
    pub fn ttl(&mut self, key: &str) -> Option<Option<Duration>> {
        if !self.expire_if_due(key) {
            return None;
        }
        let entry = self.entries.get(key)?;
        Some(
            entry
                .expires_at
                .map(|at| at.saturating_duration_since(self.now)),
        )
    }

    /// Sets the TTL of an existing key (like `PEXPIRE`); false when absent.
    pub fn expire(&mut self, key: &str, ttl: Duration) -> bool {
        if !self.expire_if_due(key) {
            return false;
        }
        let at = self.later(ttl);
        self.reindex(key, at);
        true
    }

    /// Number of keys held, counting expired keys not yet swept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The keys that have not expired, in no particular order (like `KEYS *`).
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| e.expires_at.is_none_or(|at| at > self.now))
            .map(|(k, _)| k.as_str())
    }

    /// True when no keys are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every expired key; returns how many.
    pub fn purge_expired(&mut self) -> usize {
        Class::ALL
            .iter()
            .map(|class| self.purge_expired_of(*class))
            .sum()
    }

    fn purge_expired_of(&mut self, class: Class) -> usize {
        let mut removed = 0;
        while let Some((at, key)) = self.expiries[class.index()].first().cloned() {
            if at > self.now {
                break;
            }
            self.take(&key);
            removed += 1;
        }
        removed
    }

    fn unindex(&mut self, key: &str) {
        if let Some(Entry {
            expires_at: Some(at),
            ..
        }) = self.entries.get(key)
        {
            let class = self.class(key);
            self.expiries[class.index()].remove(&(*at, key.to_owned()));
        }
    }

    /// Gives an existing key the expiry `at`.
    fn reindex(&mut self, key: &str, at: Instant) {
        self.unindex(key);
        if let Some(entry) = self.entries.get_mut(key) {
            entry.expires_at = Some(at);
            let class = self.class(key);
            self.expiries[class.index()].insert((at, key.to_owned()));
        }
    }

    /// Room for one more key of `class`: expired keys go first; then,
    /// when the keyspace is full, the disposable key nearest expiry (a
    /// session may also replace the session nearest expiry). Rate-limit
    /// counters and idempotency records are never evicted, and are refused
    /// past their share.
    fn make_room(&mut self, class: Class) -> Result<(), Error> {
        if let Some(cap) = class
            .cap(self.max_entries)
            .filter(|cap| self.counts[class.index()] >= *cap)
        {
            self.purge_expired_of(class);
            if self.counts[class.index()] >= cap {
                return Err(Error::new(
                    ErrorKind::Capacity,
                    format!(
                        "memory backend holds its share of {class:?} keys ({cap} of max_entries {})",
                        self.max_entries
                    ),
                ));
            }
        }
        if self.entries.len() < self.max_entries {
            return Ok(());
        }
        self.purge_expired();
        while self.entries.len() >= self.max_entries {
            let victims: &[Class] = if class == Class::Session {
                &[Class::Disposable, Class::Session]
            } else {
                &[Class::Disposable]
            };
            let Some(key) = victims
                .iter()
                .find_map(|c| self.expiries[c.index()].first().map(|(_, k)| k.clone()))
            else {
                return Err(Error::new(
                    ErrorKind::Capacity,
                    format!(
                        "memory backend is full ({} keys, max_entries) and holds nothing this key may evict",
                        self.entries.len()
                    ),
                ));
            };
            self.take(&key);
        }
        Ok(())
    }
}

/// An in-process backend; cheap to clone (clones share the keyspace).
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    keyspace: Mutex<Keyspace>,
    namespace: Namespace,
    /// Messages between the layers sharing this backend (Redis pub/sub's
    /// counterpart: the cache's local tiers hear of invalidations on it).
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    events: tokio::sync::broadcast::Sender<std::sync::Arc<str>>,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("prefix", &self.inner.namespace.prefix())
            .finish_non_exhaustive()
    }
}

/// Configures a [`MemoryBackend`]; made by [`MemoryBackend::builder`].
#[derive(Debug)]
#[must_use]
pub struct MemoryBackendBuilder {
    max_entries: usize,
    sweep_interval: Duration,
    prefix: Option<String>,
}

impl MemoryBackendBuilder {
    /// The most keys kept (default [`DEFAULT_MAX_ENTRIES`]; at least 1).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// How often expired keys are swept (default [`DEFAULT_SWEEP_INTERVAL`]).
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every.max(Duration::from_millis(1));
        self
    }

    /// The key prefix (default [`Namespace::DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Builds the backend, and starts its sweeper if a Tokio runtime is
    /// running; the sweeper stops when the last clone is dropped.
    pub fn build(self) -> Result<MemoryBackend, Error> {
        let namespace = match &self.prefix {
            Some(p) => Namespace::new(p)?,
            None => Namespace::default(),
        };
        let inner = Arc::new(Inner {
            keyspace: Mutex::new(Keyspace::new(self.max_entries, namespace.prefix())),
            namespace,
            events: tokio::sync::broadcast::channel(1024).0,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&inner), self.sweep_interval));
        }
        Ok(MemoryBackend { inner })
    }
}

async fn sweep(inner: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let removed = MemoryBackend::lock(&inner).purge_expired();
        if removed > 0 {
            tracing::trace!(removed, "memory backend swept expired keys");
        }
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    /// A backend with the documented defaults.
    pub fn new() -> Self {
        // The defaults are valid, so building cannot fail.
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("default memory backend config is valid"))
    }

    /// A builder with the documented defaults.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            max_entries: DEFAULT_MAX_ENTRIES,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            prefix: None,
        }
    }

    /// The key namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    fn lock(inner: &Inner) -> MutexGuard<'_, Keyspace> {
        // A panic inside `atomically` cannot leave the map half-updated in a
        // way that breaks its invariants badly enough to stop serving.
        let mut ks = inner.keyspace.lock().unwrap_or_else(|p| p.into_inner());
        ks.now = Instant::now();
        ks
    }

    /// Runs `f` with exclusive access to the keyspace: the memory backend's
    /// equivalent of one Lua script. Keep `f` short and free of I/O.
    pub fn atomically<R>(&self, f: impl FnOnce(&mut Keyspace) -> R) -> R {
        f(&mut Self::lock(&self.inner))
    }

    /// The value of a byte-string key (like `GET`).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.atomically(|ks| match ks.get(key) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(_) => Err(Error::wrong_type()),
        })
    }

    /// Stores a byte string (like `SET key value [PX ttl]`).
    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        self.atomically(|ks| ks.set(key, Value::Bytes(value.to_vec()), ttl))
    }

    /// Removes a key (like `DEL`); true when one was removed.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        Ok(self.atomically(|ks| ks.remove(key)).is_some())
    }

    /// Number of keys held, counting expired keys not yet swept.
    pub fn len(&self) -> usize {
        self.atomically(|ks| ks.len())
    }

    /// True when no keys are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `message` to every current subscriber (like `PUBLISH`).
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) fn publish(&self, message: &str) {
        let _ = self.inner.events.send(std::sync::Arc::from(message));
    }

    /// Messages published from now on (like `SUBSCRIBE`).
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<str>> {
        self.inner.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn what_must_not_be_evicted_is_told_by_name() {
        let of = |key: &str| Class::of("app", key);
        assert_eq!(of("app:lock:{ab}:o"), Class::Idempotency, "a held lock");
        assert_eq!(of("app:lock:{ab}:n"), Class::Disposable, "its counter");
        assert_eq!(of("app:cache-tag:{t}:purged"), Class::Idempotency);
        assert_eq!(of("app:cache-tag:{t}"), Class::Disposable);
        assert_eq!(of("app:cache:{ab}:e"), Class::Disposable);
        assert_eq!(of("app:idem:{ab}:r"), Class::Idempotency);
        assert_eq!(of("app:session:x"), Class::Session);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_expire_lazily() {
        let b = MemoryBackend::builder()
            .sweep_interval(Duration::from_secs(3600))
            .build()
            .unwrap();
        b.set("k", b"v", Some(Duration::from_secs(10)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        let left = b.atomically(|ks| ks.ttl("k")).unwrap().unwrap();
        assert_eq!(left, Duration::from_millis(1));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.get("k").await.unwrap(), None);
        assert_eq!(b.len(), 0, "reading an expired key removes it");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_removes_untouched_expired_keys() {
        let b = MemoryBackend::builder()
            .sweep_interval(Duration::from_secs(1))
            .build()
            .unwrap();
        for i in 0..10 {
            b.set(&format!("k{i}"), b"v", Some(Duration::from_millis(500)))
                .await
                .unwrap();
        }
        b.set("forever", b"v", None).await.unwrap();
        assert_eq!(b.len(), 11);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(b.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_stops_with_the_backend() {
        let b = MemoryBackend::builder()
            .sweep_interval(Duration::from_millis(10))
            .build()
            .unwrap();
        let weak = Arc::downgrade(&b.inner);
        drop(b);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_keyspace_evicts_the_soonest_expiring_key() {
        let b = MemoryBackend::builder().max_entries(3).build().unwrap();
        b.set("late", b"1", Some(Duration::from_secs(30)))
            .await
            .unwrap();
        b.set("soon", b"2", Some(Duration::from_secs(10)))
            .await
            .unwrap();
        b.set("none", b"3", None).await.unwrap();
        b.set("new", b"4", Some(Duration::from_secs(20)))
            .await
            .unwrap();
        assert_eq!(b.get("soon").await.unwrap(), None);
        for k in ["late", "none", "new"] {
            assert!(b.get(k).await.unwrap().is_some(), "{k}");
        }
        // Overwriting an existing key needs no room.
        b.set("none", b"5", None).await.unwrap();
        assert_eq!(b.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_evicted_before_live_ones() {
        let b = MemoryBackend::builder().max_entries(2).build().unwrap();
        b.set("old", b"1", Some(Duration::from_secs(1)))
            .await
            .unwrap();
        b.set("keep", b"2", Some(Duration::from_secs(5)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        b.set("new", b"3", None).await.unwrap();
        assert!(b.get("keep").await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_are_evicted_only_for_sessions_and_counters_never() {
        let b = MemoryBackend::builder()
            .max_entries(8)
            .prefix("p")
            .build()
            .unwrap();
        let ttl = |s| Some(Duration::from_secs(s));
        // Two sessions, expiring soonest of all.
        b.set("p:session:{a}", b"1", ttl(5)).await.unwrap();
        b.set("p:session:{b}", b"2", ttl(6)).await.unwrap();
        // Counters: a share of 8 / 4 = 2, then refused, never evicting.
        b.set("p:rl:{x}:1", b"1", ttl(100)).await.unwrap();
        b.set("p:rl:{y}:1", b"1", ttl(100)).await.unwrap();
        let err = b.set("p:rl:{z}:1", b"1", ttl(1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Capacity);
        // Idempotency: a share of 2 as well.
        b.set("p:idem:{k}:r", b"1", ttl(100)).await.unwrap();
        b.set("p:idem:{l}:r", b"1", ttl(100)).await.unwrap();
        let err = b.set("p:idem:{j}:r", b"1", ttl(100)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Capacity);
        // Cache entries fill the rest, then evict one another.
        for i in 0..10 {
            b.set(&format!("p:cache:{{{i}}}:e"), b"e", ttl(50 + i))
                .await
                .unwrap();
        }
        assert_eq!(b.len(), 8);
        for k in [
            "p:session:{a}",
            "p:session:{b}",
            "p:rl:{x}:1",
            "p:idem:{k}:r",
        ] {
            assert!(b.get(k).await.unwrap().is_some(), "{k} was evicted");
        }
        // A new session takes a cache entry's room first...
        b.set("p:session:{c}", b"3", ttl(7)).await.unwrap();
        assert!(b.get("p:session:{a}").await.unwrap().is_some());
        // ...and, with only sessions and shares left, the session nearest
        // expiry.
        b.set("p:session:{d}", b"4", ttl(8)).await.unwrap();
        assert!(b.get("p:session:{a}").await.unwrap().is_some());
        b.set("p:session:{e}", b"5", ttl(9)).await.unwrap();
        assert_eq!(b.get("p:session:{a}").await.unwrap(), None);
        assert!(b.get("p:rl:{x}:1").await.unwrap().is_some());
        // A cache entry can no longer find room: refused.
        let err = b.set("p:cache:{new}:e", b"e", ttl(1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Capacity);
        // Expired counters make room in their share.
        tokio::time::advance(Duration::from_secs(101)).await;
        b.set("p:rl:{z}:1", b"1", ttl(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_ttl_too_long_to_represent_is_no_panic() {
        let b = MemoryBackend::new();
        b.set("k", b"v", Some(Duration::MAX)).await.unwrap();
        assert!(b.get("k").await.unwrap().is_some());
        assert!(b.atomically(|ks| ks.expire("k", Duration::MAX)));
    }

    #[tokio::test]
    async fn a_keyspace_full_of_persistent_keys_refuses_new_ones() {
        let b = MemoryBackend::builder().max_entries(1).build().unwrap();
        b.set("a", b"1", None).await.unwrap();
        let err = b.set("b", b"2", None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Capacity);
    }

    #[tokio::test(start_paused = true)]
    async fn set_replaces_the_ttl_and_expire_changes_it() {
        let b = MemoryBackend::new();
        b.atomically(|ks| {
            ks.set("k", bytes("v"), Some(Duration::from_secs(1)))
                .unwrap();
            ks.set("k", bytes("w"), None).unwrap();
            assert_eq!(ks.ttl("k"), Some(None));
            assert!(ks.expire("k", Duration::from_secs(5)));
            assert_eq!(ks.ttl("k"), Some(Some(Duration::from_secs(5))));
            assert!(!ks.expire("missing", Duration::from_secs(5)));
            assert_eq!(ks.ttl("missing"), None);
        });
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.get("k").await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_in_unix_millis_is_exact() {
        let b = MemoryBackend::new();
        tokio::time::advance(Duration::from_micros(1_500)).await;
        b.atomically(|ks| {
            let now = ks.now_millis();
            ks.set("k", bytes("v"), None).unwrap();
            assert!(ks.expire_at_millis("k", now + 250));
            assert_eq!(ks.expire_time_millis("k"), Some(Some(now + 250)));
            assert_eq!(ks.expire_time_millis("missing"), None);
            assert!(ks.expire_at_millis("k", now), "a past time removes the key");
            assert_eq!(ks.get("k"), None);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_tokio_time() {
        let b = MemoryBackend::new();
        let t0 = b.atomically(|ks| ks.now_millis());
        tokio::time::advance(Duration::from_secs(90)).await;
        let t1 = b.atomically(|ks| ks.now_millis());
        assert_eq!(t1 - t0, 90_000);
    }

    #[tokio::test]
    async fn a_hash_is_not_a_string() {
        let b = MemoryBackend::new();
        b.atomically(|ks| ks.set("h", Value::Hash(HashMap::new()), None))
            .unwrap();
        assert_eq!(b.get("h").await.unwrap_err().kind(), ErrorKind::Server);
        assert!(b.delete("h").await.unwrap());
        assert!(!b.delete("h").await.unwrap());
    }
}
