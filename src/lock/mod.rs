//! Distributed locks: one holder at a time per resource, across every
//! instance sharing the [`Backend`], with owner-checked release, automatic
//! renewal, a loss signal and fencing tokens.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_layers::lock::Locks;
//! use redis_layers::Backend;
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let locks = Locks::new(Backend::from_env()?);
//! // Wait up to 5 s for the lock on this report; hold it 30 s at a time
//! // (renewed every 10 s while the guard lives).
//! let Some(guard) = locks
//!     .acquire("report:2026-12", Duration::from_secs(30), Duration::from_secs(5))
//!     .await?
//! else {
//!     return Ok(()); // another instance is building it
//! };
//! // A fenced write: the store refuses a token lower than the last one it
//! // accepted, so a holder that lost the lock (a long pause) cannot
//! // overwrite the work of the one after it.
//! // The first call counts it (one store call) and fails, `None`,
//! // if the lock is no longer this guard's.
//! let Some(token) = guard.fencing_token().await? else {
//!     return Ok(()); // lost already: another holds it now
//! };
//! tokio::select! {
//!     () = build_report(token) => {}
//!     () = guard.lost() => { /* stop: another may hold it now */ }
//! }
//! guard.release().await?;
//! # Ok(()) }
//! # async fn build_report(_token: u64) {}
//! ```
//!
//! # What a lock is
//!
//! A lock is a lease: a key (`{prefix}:lock:{<hash>}:o`, the hash a
//! SHA-256 of the resource name, so no name appears in clear) holding the
//! owner's token (128 bits: 64 drawn from the operating system's random
//! source once per process, and a counter) for the lease time, taken
//! only when free (one plain `SET ... NX PX`). The guard:
//!
//! - renews it every third of the lease (an owner-checked `PEXPIRE`, on
//!   Redis's clock), in a task of its own, while it lives;
//! - reports its loss: [`LockGuard::lost`] resolves (and
//!   [`is_lost`](LockGuard::is_lost) turns true) when a renewal finds the
//!   lock gone or taken, or when renewals failed for a whole lease (the
//!   store unreachable: the lock may have expired). Stop the work then;
//! - releases it when dropped (owner-checked: never another's lock), or
//!   explicitly with [`release`](LockGuard::release), which says whether
//!   it still owned it.
//!
//! A waiting [`acquire`](Locks::acquire) asks again after a pause that
//! doubles from 5 ms up to 250 ms, never past the holder's remaining lease
//! (the store tells it), with jitter, so waiters neither spin on the store
//! nor wake together. An acquire dropped while its call was on the way
//! (the request cancelled) releases the lock if that call took it.
//!
//! # Fencing tokens
//!
//! [`LockGuard::fencing_token`] counts a token for the lock the first
//! time it is asked (one small script; later calls answer from the
//! guard), and only while the lock is still the guard's: a holder whose
//! lease ran out gets `None`, never a token. So tokens rise in the order
//! of their holders: each is higher than every token counted before it
//! for the resource, the last plus one or the store's time in
//! microseconds if that is higher. Taking the lock does not count one:
//! work that needs no fencing (a nightly job that only must not run
//! twice at once) pays one store call to take the lock, not two. The
//! counter is kept twice the lease past the last token, at least a
//! minute (so resources a client
//! makes up, through a [`LockLayer`] keyed by path or header, cost keys
//! for about that long only); after it expires, or after a failover lost
//! its last write, the time keeps tokens rising, as long as the server's
//! clock does not step back by more than the time since the resource's
//! last lock (nor the new primary's clock lag the old one's by as much).
//!
//! A lock alone does not make work exclusive: a holder paused longer than
//! its lease (a GC pause, a frozen VM) may still act after another took
//! the lock. Pass the token to what you write, and have it refuse tokens
//! lower than the last it saw; that is the only safe pattern.
//!
//! # Round trips
//!
//! | call | store calls |
//! |---|---|
//! | [`try_acquire`](Locks::try_acquire) | 1 plain `SET NX PX` (and `GET` with `PTTL`, pipelined, when it is held) |
//! | [`fencing_token`](LockGuard::fencing_token), the first time | 1 small script (owner-checked, counts the token) |
//! | each renewal | 1 small script (owner-checked `PEXPIRE`), every third of the lease |
//! | [`release`](LockGuard::release), or dropping the guard | 1 small script (owner-checked `DEL`) |
//!
//! On the memory backend each is one step under its lock; lock keys are
//! never evicted (they share the idempotency records' class: see
//! [`MemoryBackend`](crate::memory::MemoryBackend)).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, ErrorKind};
use crate::lease::{self, Taken};
use crate::Backend;

mod layer;
mod redlock;

pub use layer::{LockKey, LockLayer, LockLayerBuilder, LockService, ResponseFuture, DEFAULT_LEASE};
pub use redlock::{Redlock, RedlockGuard};

/// How long a resource's fencing counter is kept past its last
/// token, at least (and always twice the lease): a minute. Tokens
/// rise after it expires too (the server's time is their floor).
const COUNTER_FLOOR: Duration = Duration::from_secs(60);
/// The shortest lease: renewals come every third of it.
const MIN_LEASE: Duration = Duration::from_millis(30);
/// The longest lease (and wait): a year.
const MAX_LEASE: Duration = Duration::from_secs(365 * 86_400);
/// A waiter's first and longest pause between attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Takes locks on resources in a [`Backend`]. Cheap to clone; clones share
/// the backend.
#[derive(Clone)]
pub struct Locks {
    backend: Backend,
}

impl fmt::Debug for Locks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locks").finish_non_exhaustive()
    }
}

impl Locks {
    /// Locks kept in `backend` (under its key prefix).
    pub fn new(backend: impl Into<Backend>) -> Self {
        Locks {
            backend: backend.into(),
        }
    }

    /// The backend the locks are kept in.
    pub(crate) fn backend(&self) -> Backend {
        self.backend.clone()
    }

    /// Takes the lock on `resource` for `lease` (renewed while the guard
    /// lives) if no one holds it: one store call. `None` when another
    /// holds it. A `Config` error for a lease under 30 ms or over a year.
    pub async fn try_acquire(
        &self,
        resource: &str,
        lease: Duration,
    ) -> Result<Option<LockGuard>, Error> {
        check(lease, "lease", MIN_LEASE)?;
        let keys = ResourceKeys::new(&self.backend, resource);
        match self.attempt(&keys, lease).await? {
            Attempt::Taken(owner) => Ok(Some(LockGuard::start(
                self.backend.clone(),
                &keys,
                owner,
                lease,
            ))),
            Attempt::Held(_) => Ok(None),
        }
    }

    /// Takes the lock on `resource` for `lease`, waiting up to `wait` for
    /// its holder to let it go (see the [module docs](self) for how it
    /// waits). `None` when the wait ran out.
    pub async fn acquire(
        &self,
        resource: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<LockGuard>, Error> {
        Ok(self.acquire_or_left(resource, lease, wait).await?.ok())
    }

    /// [`acquire`](Self::acquire), or when the wait ran out, about how
    /// long the holder's lease has still to run.
    pub(crate) async fn acquire_or_left(
        &self,
        resource: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Result<LockGuard, Duration>, Error> {
        Ok(self
            .wait_for(resource, lease, wait)
            .await?
            .map(|(keys, owner)| LockGuard::start(self.backend.clone(), &keys, owner, lease)))
    }

    /// [`acquire_or_left`](Self::acquire_or_left) without the guard: the
    /// keys and the owner that took the lock, for a caller that holds it
    /// in a guard of its choice.
    pub(crate) async fn wait_for(
        &self,
        resource: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Result<(ResourceKeys, Owner), Duration>, Error> {
        check(lease, "lease", MIN_LEASE)?;
        check(wait, "wait", Duration::ZERO)?;
        let keys = ResourceKeys::new(&self.backend, resource);
        let until = tokio::time::Instant::now() + wait;
        let mut pause = FIRST_PAUSE;
        loop {
            let left = match self.attempt(&keys, lease).await? {
                Attempt::Taken(owner) => return Ok(Ok((keys, owner))),
                Attempt::Held(left) => left,
            };
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ok(Err(left));
            }
            // Not past the holder's lease (it may end sooner), not past
            // the wait; jittered by up to a half, so waiters spread out.
            let base = pause.min(left.max(Duration::from_millis(1)));
            let sleep = (base / 2 + jitter(base / 2)).min(until - now);
            tokio::time::sleep(sleep).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// One attempt: the call runs in a [`Pending`] that, dropped before
    /// the answer, finishes it in the background and gives up a lock it
    /// took.
    async fn attempt(&self, keys: &ResourceKeys, lease: Duration) -> Result<Attempt, Error> {
        let owner = owner_token()?;
        // The lease may start as soon as the call is sent: it is counted
        // from then, never from the answer.
        let sent = tokio::time::Instant::now();
        let call: BoxFuture<Result<Taken, Error>> = {
            let (backend, key, owner) = (self.backend.clone(), keys.lease.clone(), owner.clone());
            Box::pin(async move { lease::acquire(&backend, &key, owner.as_bytes(), lease).await })
        };
        let mut pending = Pending {
            call: Some(call),
            backend: self.backend.clone(),
            key: keys.lease.clone(),
            owner: owner.clone(),
        };
        let answer = match pending.answer().await {
            Ok(answer) => answer,
            Err(e) => {
                // A call that timed out may still land and take the lock:
                // give it up (owner-checked) should it have.
                let (backend, key) = (self.backend.clone(), keys.lease.clone());
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    crate::task::spawn_on(&handle, async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = lease::release(&backend, &key, owner.as_bytes()).await;
                    });
                }
                return Err(e);
            }
        };
        match answer {
            Taken::Held(left) => Ok(Attempt::Held(left)),
            Taken::Yes => Ok(Attempt::Taken(Owner { token: owner, sent })),
        }
    }
}

enum Attempt {
    /// Taken, by this owner.
    Taken(Owner),
    Held(Duration),
}

/// Who took a lock, and when it asked (the lease is counted from then).
#[derive(Debug)]
pub(crate) struct Owner {
    /// The owner token, the lock's value.
    pub(crate) token: String,
    /// When the call that took it was sent.
    pub(crate) sent: tokio::time::Instant,
}

/// A lease or wait within bounds, else a `Config` error.
fn check(d: Duration, what: &str, min: Duration) -> Result<(), Error> {
    if d < min || d > MAX_LEASE {
        return Err(Error::new(
            ErrorKind::Config,
            format!("a lock's {what} must be between {min:?} and a year, not {d:?}"),
        ));
    }
    Ok(())
}

/// A resource's lock key and fencing counter (one hash tag).
pub(crate) struct ResourceKeys {
    lease: String,
    counter: String,
}

impl ResourceKeys {
    fn new(backend: &Backend, resource: &str) -> Self {
        let ns = match backend {
            Backend::Redis(r) => r.namespace(),
            Backend::Memory(m) => m.namespace(),
        };
        let hash = crate::digest::hex_digest([resource.as_bytes()]);
        let tagged = ns.tagged("lock", &hash);
        ResourceKeys {
            lease: tagged.key("o"),
            counter: tagged.key("n"),
        }
    }
}

/// 128 random bits from the operating system, as 32 hex digits.
fn owner_token() -> Result<String, Error> {
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
    // 128 bits: 64 from the operating system's random source, drawn once
    // per process, then a counter: unique across processes (with the
    // chance of two bases meeting about one in 2^64) and within one, with
    // no system call per lock.
    static BASE: OnceLock<Result<[u8; 8], String>> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = BASE.get_or_init(|| {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map(|()| bytes)
            .map_err(|e| e.to_string())
    });
    let base = base.as_ref().map_err(|e| {
        Error::new(ErrorKind::Internal, "no random bytes for lock owners").with_source(e.clone())
    })?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut out = String::with_capacity(32);
    crate::digest::push_hex(&mut out, base);
    crate::digest::push_hex(&mut out, &n.to_be_bytes());
    Ok(out)
}

/// Up to `max`, spread by the clock's low bits (no random source needed:
/// only waiters' wake-ups are spread).
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(u64::from(nanos) % max_ns)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An acquire call on its way; dropped before it answered, it is finished
/// in a task of its own and a lock it took is given up.
struct Pending {
    call: Option<BoxFuture<Result<Taken, Error>>>,
    backend: Backend,
    key: String,
    owner: String,
}

impl Pending {
    async fn answer(&mut self) -> Result<Taken, Error> {
        let Some(call) = self.call.as_mut() else {
            return Err(Error::new(
                ErrorKind::Internal,
                "lock attempt answered twice",
            ));
        };
        let out = call.await;
        self.call = None;
        out
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let (backend, key, owner) = (
            self.backend.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.owner),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            crate::task::spawn_on(&handle, async move {
                if let Ok(Taken::Yes) = call.await {
                    let _ = lease::release(&backend, &key, owner.as_bytes()).await;
                }
            });
        }
    }
}

/// A held lock: renewed while it lives, released when dropped. See the
/// [module docs](self).
pub struct LockGuard {
    inner: Arc<GuardInner>,
    handle: LockHandle,
    /// The renewal task, when the guard has one (see
    /// [`LockGuard::unrenewed`]).
    renewing: Option<tokio::task::AbortHandle>,
    released: bool,
}

/// What a handler behind a [`LockLayer`] sees of the lock held for it (an
/// extension, or an extractor with the `axum` feature): its fencing token
/// and whether it was lost. Cheap to clone.
#[derive(Clone)]
pub struct LockHandle {
    inner: Arc<GuardInner>,
    lost: watch::Receiver<bool>,
}

impl fmt::Debug for LockHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockHandle")
            .field("fencing_token", &self.inner.token.get())
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LockHandle {
    /// The lock's fencing token, counted the first time any handle or the
    /// guard asks: `None` if the lock was no longer held then (see
    /// [`LockGuard::fencing_token`]).
    pub async fn fencing_token(&self) -> Result<Option<u64>, Error> {
        self.inner.fencing_token().await
    }

    /// True once the lock was lost (see [`LockGuard::is_lost`]).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lock is lost; never while it is held (see
    /// [`LockGuard::lost`]), nor once its guard released it.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            // An error: the renewal task is gone (the lock released):
            // wait forever, as a held lock would.
            if lost.wait_for(|lost| *lost).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

struct GuardInner {
    backend: Backend,
    key: String,
    counter: String,
    owner: String,
    /// When the call that took the lock was sent (its lease counts from
    /// then).
    sent: tokio::time::Instant,
    lease: Duration,
    /// Counted on first demand, then kept.
    token: tokio::sync::OnceCell<u64>,
}

impl GuardInner {
    async fn renew(&self) -> Result<bool, Error> {
        lease::renew(&self.backend, &self.key, self.owner.as_bytes(), self.lease).await
    }

    async fn fencing_token(&self) -> Result<Option<u64>, Error> {
        /// The lease was not held when asked: nothing to keep.
        struct NotHeld;
        let counted = self
            .token
            .get_or_try_init(|| async {
                let keys = lease::Keys {
                    lease: &self.key,
                    counter: &self.counter,
                };
                let ttl = COUNTER_FLOOR.max(self.lease * 2);
                // Boxed as a trait object: a handler awaiting the token
                // would otherwise carry the whole store call's type
                // (deep enough to overflow the compiler's recursion
                // limit when axum checks it is `Send`).
                let fence: Pin<Box<dyn Future<Output = Result<Option<u64>, Error>> + Send + '_>> =
                    Box::pin(lease::fence(
                        &self.backend,
                        keys,
                        self.owner.as_bytes(),
                        ttl,
                    ));
                match fence.await {
                    Ok(Some(token)) => Ok(token),
                    Ok(None) => Err(Ok(NotHeld)),
                    Err(e) => Err(Err(e)),
                }
            })
            .await;
        match counted {
            Ok(token) => Ok(Some(*token)),
            Err(Ok(NotHeld)) => Ok(None),
            Err(Err(e)) => Err(e),
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("fencing_token", &self.inner.token.get())
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// A guard renewing its lock in a task of its own while it lives.
    fn start(backend: Backend, keys: &ResourceKeys, owner: Owner, lease: Duration) -> Self {
        let sent = owner.sent;
        let (mut guard, lost) = Self::unrenewed(backend, keys, owner, lease);
        let inner = guard.inner.clone();
        guard.renewing = Some(lease::keep_renewed(
            sent,
            lease,
            None,
            move || {
                let inner = inner.clone();
                async move { inner.renew().await }
            },
            lost,
        ));
        guard
    }

    /// A guard that does not renew its lock by itself: its holder runs
    /// the work that needs it through [`renewing`](Self::renewing) (no
    /// task per lock), with the sender of its loss signal.
    pub(crate) fn unrenewed(
        backend: Backend,
        keys: &ResourceKeys,
        owner: Owner,
        lease: Duration,
    ) -> (Self, watch::Sender<bool>) {
        let inner = Arc::new(GuardInner {
            backend,
            key: keys.lease.clone(),
            counter: keys.counter.clone(),
            owner: owner.token,
            sent: owner.sent,
            lease,
            token: tokio::sync::OnceCell::new(),
        });
        let (tx, lost) = watch::channel(false);
        let guard = LockGuard {
            handle: LockHandle {
                inner: inner.clone(),
                lost,
            },
            inner,
            renewing: None,
            released: false,
        };
        (guard, tx)
    }

    /// Runs `work` with the lock renewed meanwhile, in this task (see
    /// [`lease::renewing`]); `lost` turns true if it is lost.
    pub(crate) async fn renewing<W: Future>(
        &self,
        work: W,
        lost: &watch::Sender<bool>,
    ) -> W::Output {
        let inner = &self.inner;
        lease::renewing(
            work,
            inner.sent,
            inner.lease,
            None,
            || inner.renew(),
            Some(lost),
        )
        .await
    }

    /// A view of this lock for others (a handler): its token and loss.
    pub fn handle(&self) -> LockHandle {
        self.handle.clone()
    }

    /// This lock's fencing token: higher than every token counted for the
    /// resource before (see the [module docs](self#fencing-tokens)). The
    /// first call counts it, one store call, if the lock is still this
    /// guard's, and `None` if it is not (its lease ran out, or it was
    /// taken away): stop the work then. Later calls, and the
    /// [`LockHandle`]s', answer with the same token and no store call:
    /// a token stays its holder's, and fenced storage refuses it once a
    /// later holder wrote with a higher one.
    pub async fn fencing_token(&self) -> Result<Option<u64>, Error> {
        self.inner.fencing_token().await
    }

    /// True once a renewal found the lock gone or taken, or renewals
    /// failed for a whole lease.
    pub fn is_lost(&self) -> bool {
        self.handle.is_lost()
    }

    /// Resolves when the lock is lost (at once if it already is); never
    /// while it is held.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.handle.lost()
    }

    /// Stops renewing and gives the lock up: true when it was still this
    /// guard's (false: it had expired or been taken, and another's lock
    /// was left alone).
    pub async fn release(mut self) -> Result<bool, Error> {
        if let Some(renewing) = &self.renewing {
            renewing.abort();
        }
        let released = lease::release(
            &self.inner.backend,
            &self.inner.key,
            self.inner.owner.as_bytes(),
        )
        .await;
        // Only now: dropped before the answer (a cancelled request), the
        // guard's drop gives the lock up again, owner-checked.
        self.released = true;
        released
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(renewing) = &self.renewing {
            renewing.abort();
        }
        if self.released {
            return;
        }
        let inner = self.inner.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            crate::task::spawn_on(&handle, async move {
                if let Err(e) =
                    lease::release(&inner.backend, &inner.key, inner.owner.as_bytes()).await
                {
                    tracing::warn!(error = %e, "lock not released; it frees itself when its lease ends");
                }
            });
        }
    }
}
