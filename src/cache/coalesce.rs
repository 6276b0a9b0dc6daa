//! Coalescing: one fetch per key at a time, within this instance (a
//! flight: the others wait on it) and across instances (the fill lease:
//! only its holder stores, the others poll for its entry).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Response};

use super::answer::respond_stored_to;
use super::config::Config;
use super::directives::Directives;
use super::fields::ttl_of;
use super::flight::{Guard, Role};
use super::key::vary_hash;
use super::layout::decode_pointer;
use super::layout::Entry;
use super::lookup::{answer_read, decode_cached, find, usable_since, Found};
use super::policy;
use super::store::Fill;
use crate::body::ResponseBody;
use crate::error::Error;

/// Told whether a background write reached the store.
pub(super) type Written = tokio::sync::oneshot::Sender<bool>;

/// What waits on a background write: the followers of a coalesced miss
/// (released when the guard drops), a refresh (told the outcome).
#[derive(Default)]
pub(super) struct Waiting {
    pub(super) flight: Option<Guard>,
    pub(super) lease: Option<Lease>,
    pub(super) notify: Option<Written>,
}

impl Waiting {
    pub(super) fn miss(flight: Option<Guard>, lease: Option<Lease>) -> Self {
        Waiting {
            flight,
            lease,
            notify: None,
        }
    }

    pub(super) fn done(self, written: bool) {
        drop(self.flight);
        drop(self.lease);
        if let Some(notify) = self.notify {
            let _ = notify.send(written);
        }
    }
}

/// This instance's fill lease on a key, taken before the handler runs:
/// only its holder stores the entry, and only while it holds it (an
/// invalidation removes it: see the store's docs). Renewed while the fill
/// runs; given up (in the background) when dropped, unless the entry's
/// write gave it up.
pub(super) struct Lease {
    config: Arc<Config>,
    key: String,
    holder: String,
    /// Before the lease was asked for, so before the handler ran.
    pub(super) began: SystemTime,
    renewing: tokio::task::AbortHandle,
    /// The entry was written, which gave the lease up.
    pub(super) written: bool,
}

impl Lease {
    /// Takes the fill lease of `key` ([`fill_lease`] long, renewed while
    /// held): `None` when another holds it; with the entry stored under
    /// `key` right after (in the same round trip).
    pub(super) async fn take(
        config: &Arc<Config>,
        key: &str,
    ) -> Result<(Option<Lease>, Option<Bytes>), Error> {
        let began = SystemTime::now();
        let holder = Lease::holder(began);
        let sent = tokio::time::Instant::now();
        let (taken, entry) = config.store.lease(key, &holder, fill_lease(config)).await?;
        if !taken {
            return Ok((None, entry));
        }
        // Renewed while the fill runs, for at most MAX_FILL; a lease lost
        // shows when its write is refused (no one listens to `lost`).
        let renewing = {
            let (config, key, holder) = (config.clone(), key.to_owned(), holder.clone());
            let lease = fill_lease(&config);
            crate::lease::keep_renewed(
                sent,
                lease,
                Some(MAX_FILL),
                move || {
                    let (config, key, holder) = (config.clone(), key.clone(), holder.clone());
                    async move { config.store.renew(&key, &holder, lease).await }
                },
                tokio::sync::watch::channel(false).0,
            )
        };
        let lease = Lease {
            config: config.clone(),
            key: key.to_owned(),
            holder,
            began,
            renewing,
            written: false,
        };
        Ok((Some(lease), entry))
    }

    /// A token no other lease holds: a random number drawn once per
    /// process (instances in containers often share a process id), the
    /// time, a counter, each in fixed width (lease owners are told by a
    /// prefix: no token may begin another).
    pub(super) fn holder(now: SystemTime) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            // RandomState is seeded from the operating system's random source.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{base:016x}-{:016x}-{n:016x}", policy::unix_ms(now))
    }

    pub(super) fn fill(&self) -> Fill<'_> {
        Fill::new(&self.holder, self.began).leased(&self.key)
    }
}

/// How long a fill lease lasts between renewals: `coalesce_wait`, at
/// least [`MIN_FILL_LEASE`] (a lease shorter than a renewal's round trip
/// would end under its fill).
pub(super) fn fill_lease(config: &Config) -> Duration {
    config.coalesce_wait.max(MIN_FILL_LEASE)
}

/// The shortest fill lease: 1 s.
pub(super) const MIN_FILL_LEASE: Duration = Duration::from_secs(1);

/// How long a fill may keep its lease (renewed): a minute, from before the
/// handler ran to the end of its body (a client reading the body slowly
/// holds the copy up). A fill slower than that is answered but not stored,
/// and other instances may fill meanwhile.
pub(super) const MAX_FILL: Duration = Duration::from_secs(60);

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewing.abort();
        if self.written {
            return;
        }
        let (config, key) = (self.config.clone(), std::mem::take(&mut self.key));
        let holder = std::mem::take(&mut self.holder);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            crate::task::spawn_on(&handle, async move {
                if let Err(e) = config.store.unlease(&key, &holder).await {
                    tracing::debug!(error = %e, "cache fill lease not given up; it expires");
                }
            });
        }
    }
}

/// What [`wait_fill`] saw.
pub(super) enum Waited<ResBody> {
    /// The entry the fill stored, as this request's answer.
    Answer(Response<ResponseBody<ResBody>>),
    /// The fill stored a variant of the URL (whose key now holds a
    /// pointer): look this request's variant up.
    Varies,
    /// The lease ended without a usable entry (or the wait was too long):
    /// ask the handler.
    Nothing,
}

/// Waits (at most `coalesce_wait`) for another instance holding the fill
/// lease to store the entry.
pub(super) async fn wait_fill<ResBody>(
    config: &Config,
    key: &str,
    request: &HeaderMap,
    method: &Method,
    directives: &Directives,
    since: u64,
) -> Waited<ResBody> {
    let until = tokio::time::Instant::now() + config.coalesce_wait;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(FILL_POLL).await;
        let Ok((raw, held)) = config.store.poll(key).await else {
            return Waited::Nothing;
        };
        if raw.as_deref().and_then(decode_pointer).is_some() {
            return Waited::Varies;
        }
        if let Some(entry) = raw.and_then(Entry::decode) {
            if entry.vary_hash == vary_hash(&entry.vary, request) {
                let age = policy::age(&entry, SystemTime::now());
                if usable_since(&entry, age, directives, Some(since)).is_ok() {
                    let mut ttl = itoa::Buffer::new();
                    let params = ["hit; ttl=", ttl_of(&mut ttl, &entry, age), "; collapsed"];
                    return Waited::Answer(respond_stored_to(
                        config,
                        Cow::Owned(entry),
                        age,
                        request,
                        method,
                        &params,
                    ));
                }
            }
        }
        if !held {
            return Waited::Nothing;
        }
    }
    Waited::Nothing
}

/// The entry a just-ended fill stored (`raw`, read with the lease), when it
/// may answer this request: stored after it arrived (`since`), it counts
/// as validated, as with [`usable_since`].
pub(super) fn usable_fill(
    config: &Config,
    key: &str,
    raw: Bytes,
    request: &HeaderMap,
    directives: &Directives,
    since: u64,
) -> Option<(Arc<Entry>, u64)> {
    let entry = decode_cached(config.id, key, raw)?;
    if entry.vary_hash != vary_hash(&entry.vary, request) {
        return None;
    }
    let age = policy::age(&entry, SystemTime::now());
    usable_since(&entry, age, directives, Some(since)).ok()?;
    Some((entry, age))
}

/// How often a request waiting on another instance's fill looks again.
pub(super) const FILL_POLL: Duration = Duration::from_millis(25);

/// What [`gather`] found. (Made once per request that misses, and moved
/// once: the size of its largest variant costs nothing worth a box.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Gathered<B> {
    /// The answer: a stored response, perhaps one a fetch this request
    /// waited on stored.
    Answer(Response<ResponseBody<B>>),
    /// The store failed, and the layer fails closed.
    Failed(Box<crate::Error>),
    /// Ask the handler: RFC 9211's `fwd` reason, the stale entry found
    /// (with its age), and what waits on this request's fetch (its flight
    /// and fill lease, when it leads one).
    Ask(&'static str, Option<(Entry, u64)>, Waiting),
}

/// Looks a GET or HEAD up (`first`: what a first lookup found, if one
/// ran) and, for a GET that has nothing to use, joins the fetch of the key
/// under way here or on another instance: waits for it once, then looks
/// again, or leads it (this request's flight and fill lease, in
/// [`Gathered::Ask`]); not when `may_lead` is false (its answer will not
/// be stored, so none could wait on it). `arrived`: when the request
/// arrived (Unix ms);
/// an entry stored after it counts as validated (see [`usable_since`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn gather<B>(
    config: &Arc<Config>,
    key: &mut String,
    headers: &HeaderMap,
    method: &Method,
    directives: &Directives,
    arrived: u64,
    mut first: Option<Found>,
    may_lead: bool,
) -> Gathered<B> {
    let is_get = method == Method::GET;
    let mut fwd;
    let mut stale;
    let mut flight = None;
    let mut lease = None;
    let mut collapsed = false;
    // The key of the fetch this request waited on, if it did.
    let mut waited_on: Option<String> = None;
    // The key this request leased, when another than the one it looked up.
    let mut switched: Option<String> = None;
    loop {
        let found = match first.take() {
            Some(found) => found,
            None => {
                let since = collapsed.then_some(arrived);
                find(config, key, headers, directives, since).await
            }
        };
        let key: &str = key;
        match found {
            Found::Usable(entry, age) => {
                let detail = if collapsed { "; collapsed" } else { "" };
                return Gathered::Answer(answer_read(
                    config, key, entry, headers, method, age, detail,
                ));
            }
            Found::Not(why, found) => {
                fwd = why;
                stale = found.map(|(entry, age)| (Arc::unwrap_or_clone(entry), age));
            }
            Found::Failed(e) => return Gathered::Failed(e),
        }
        // Every way a GET reaches the handler (a miss, a stale entry,
        // another variant, a request refusing the stored response)
        // fetches once per key at a time: the others wait for it, once,
        // then look again. Not when the store is failing (nothing to
        // wait on), nor for a stale entry that may be served while it
        // is refreshed (no one waits then).
        // A wait on a fetch of another key (the lookup after it found
        // the URL varies, and on what) leaves this request's own variant
        // to fetch: it leads that fetch, once.
        let other_variant = waited_on.as_deref().is_some_and(|w| w != key);
        if (collapsed && !other_variant) || !is_get || !may_lead || fwd.contains("store-error") {
            break;
        }
        waited_on = None;
        if let Some((entry, age)) = &stale {
            if fwd == "stale" && policy::serve_while_revalidating(entry, *age) {
                break;
            }
        }
        match config.flights.join(key) {
            Role::Leader(guard) => {
                flight = Some(guard);
                // Across instances: one fills the entry, the others
                // wait for it. Only a lease's holder stores.
                let mut leased = key.to_owned();
                let mut taken = Lease::take(config, &leased).await;
                if let Ok((None, _)) = taken {
                    let waited = wait_fill(config, key, headers, method, directives, arrived);
                    match waited.await {
                        Waited::Answer(res) => return Gathered::Answer(res),
                        // The fill stored a variant: this request's, perhaps;
                        // else its own fill is this request's to lead.
                        Waited::Varies => {
                            let since = Some(arrived);
                            match find(config, &mut leased, headers, directives, since).await {
                                Found::Usable(entry, age) => {
                                    return Gathered::Answer(answer_read(
                                        config,
                                        &leased,
                                        entry,
                                        headers,
                                        method,
                                        age,
                                        "; collapsed",
                                    ));
                                }
                                Found::Failed(e) => return Gathered::Failed(e),
                                // What this request's own key holds, not
                                // what the URL's held before.
                                Found::Not(why, found) => {
                                    fwd = why;
                                    stale = found
                                        .map(|(entry, age)| (Arc::unwrap_or_clone(entry), age));
                                }
                            }
                        }
                        // That fill ended with nothing for this request
                        // (not storable, or its holder gone): fill it here
                        // if no one else does now.
                        Waited::Nothing => {}
                    }
                    taken = Lease::take(config, &leased).await;
                }
                match taken {
                    Ok((Some(taken), entry)) => {
                        // A fill that ended (and let the lease go)
                        // just before this request took it: its entry.
                        let filled = match entry {
                            Some(raw) if decode_pointer(&raw).is_some() => {
                                // A variant of the URL: this request's?
                                let since = Some(arrived);
                                let mut variant = leased.clone();
                                match find(config, &mut variant, headers, directives, since).await {
                                    Found::Usable(entry, age) => Some((variant, entry, age)),
                                    Found::Failed(e) => return Gathered::Failed(e),
                                    // Its own variant is missing or stale:
                                    // this request fills it, under the
                                    // URL's lease it holds.
                                    Found::Not(why, found) => {
                                        fwd = why;
                                        stale = found
                                            .map(|(entry, age)| (Arc::unwrap_or_clone(entry), age));
                                        None
                                    }
                                }
                            }
                            Some(raw) => {
                                usable_fill(config, &leased, raw, headers, directives, arrived)
                                    .map(|(entry, age)| (leased.clone(), entry, age))
                            }
                            None => None,
                        };
                        if let Some((found, entry, age)) = filled {
                            drop(taken);
                            return Gathered::Answer(answer_read(
                                config,
                                &found,
                                entry,
                                headers,
                                method,
                                age,
                                "; collapsed",
                            ));
                        }
                        lease = Some(taken);
                    }
                    Ok((None, _)) => {}
                    Err(e) => tracing::warn!(error = %e, "cache fill lease unavailable"),
                }
                switched = Some(leased);
                break;
            }
            Role::Follower(wait) => {
                wait.done(config.coalesce_wait).await;
                if !collapsed {
                    waited_on = Some(key.to_owned());
                }
                collapsed = true;
            }
        }
    }
    if let Some(leased) = switched {
        *key = leased;
    }
    Gathered::Ask(fwd, stale, Waiting::miss(flight, lease))
}
