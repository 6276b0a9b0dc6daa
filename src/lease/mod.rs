//! One lease primitive, on Redis and in memory: a key held by an owner
//! for a time, taken only when free, extended and given up only by its
//! owner, and a fencing token counted per resource for its current owner
//! on demand. An owner is told by a mark its lease's value begins with
//! (marks of one kind of lease have one length, so none begins another):
//! a lock's value is its owner's token; an idempotency claim's in-flight
//! record begins with its claim's mark (a completed record never does);
//! a cache fill lease holds its holder's token. [`Locks`](crate::lock::Locks),
//! the idempotency claim and the cache's fill lease are all renewed,
//! given up and fenced with these scripts, and kept renewed by one loop,
//! [`renewing`].
//!
//! Each operation is one round trip: taking a lease is one plain
//! `SET NX PX` (and a second, `GET` and `PTTL`, only when it is held), the
//! others one small script (the same on a Cluster: a lease and its
//! counter share a hash tag); each is one
//! [`MemoryBackend::atomically`] call in memory.

use std::time::Duration;

use crate::error::Error;
use crate::memory::{MemoryBackend, Value};
use crate::redis::{script, RedisBackend, Script};
use crate::Backend;

/// Counts a fencing token for a lease's owner (`fence.lua`).
#[allow(dead_code)]
pub(crate) static FENCE: Script = script!("lease-fence", "fence.lua");
/// Extends a lease for its owner (`renew.lua`).
#[allow(dead_code)]
pub(crate) static RENEW: Script = script!("lease-renew", "renew.lua");
/// Gives a lease up for its owner (`release.lua`).
#[allow(dead_code)]
pub(crate) static RELEASE: Script = script!("lease-release", "release.lua");

/// What an attempt to take a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub(crate) enum Taken {
    /// Taken.
    Yes,
    /// Held by another for about this long still.
    Held(Duration),
}

/// The lease key and its fencing counter: where they live is the caller's
/// choice (they must share a hash tag on a Cluster).
#[allow(dead_code)]
pub(crate) struct Keys<'a> {
    pub(crate) lease: &'a str,
    pub(crate) counter: &'a str,
}

/// Takes the lease at `key` for `owner` for `lease` if no one holds it.
#[allow(dead_code)]
pub(crate) async fn acquire(
    backend: &Backend,
    key: &str,
    owner: &[u8],
    lease: Duration,
) -> Result<Taken, Error> {
    let lease_ms = crate::time::millis(lease).max(1);
    match backend {
        Backend::Redis(r) => {
            let mut set = ::redis::cmd("SET");
            set.arg(key).arg(owner).arg("NX").arg("PX").arg(lease_ms);
            let taken: Option<()> = r.query(&set).await?;
            if taken.is_some() {
                return Ok(Taken::Yes);
            }
            // Held: by whom, and how long still (gone since, -2: free
            // now). By this owner: the same SET applied twice (a client
            // that resent it after a dropped connection, or a call that
            // landed late), which took it: ours.
            let mut pipe = ::redis::pipe();
            pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
            let (holder, left): (Option<Vec<u8>>, i64) = r.pipeline(&pipe).await?;
            if holder.as_deref() == Some(owner) {
                return Ok(Taken::Yes);
            }
            Ok(Taken::Held(Duration::from_millis(
                u64::try_from(left).unwrap_or(0),
            )))
        }
        Backend::Memory(m) => Ok(acquire_in_memory(m, key, owner, lease)),
    }
}

fn acquire_in_memory(m: &MemoryBackend, key: &str, owner: &[u8], lease: Duration) -> Taken {
    m.atomically(|ks| {
        if ks.get(key).is_some() {
            return Taken::Held(ks.ttl(key).flatten().unwrap_or_default());
        }
        match ks.set(
            key,
            Value::Bytes(owner.to_vec()),
            Some(lease.max(Duration::from_millis(1))),
        ) {
            Ok(()) => Taken::Yes,
            // A full keyspace: as if held, briefly.
            Err(_) => Taken::Held(Duration::ZERO),
        }
    })
}

/// Counts a fencing token for `owner` if it holds the lease at
/// `keys.lease`, keeping the counter `counter_ttl` past it: `None` when
/// it does not (or no longer) hold it.
#[allow(dead_code)]
pub(crate) async fn fence(
    backend: &Backend,
    keys: Keys<'_>,
    owner: &[u8],
    counter_ttl: Duration,
) -> Result<Option<u64>, Error> {
    match backend {
        Backend::Redis(r) => fence_on_redis(r, keys, owner, counter_ttl).await,
        Backend::Memory(m) => fence_in_memory(m, keys, owner, counter_ttl),
    }
}

/// [`fence`] on Redis.
pub(crate) async fn fence_on_redis(
    r: &RedisBackend,
    keys: Keys<'_>,
    owner: &[u8],
    counter_ttl: Duration,
) -> Result<Option<u64>, Error> {
    let token: i64 = r
        .script(&FENCE)
        .key(keys.lease)
        .key(keys.counter)
        .arg(owner)
        .arg(crate::time::millis(counter_ttl).max(1))
        .invoke()
        .await?;
    Ok(u64::try_from(token).ok().filter(|t| *t > 0))
}

/// [`fence`] in memory.
pub(crate) fn fence_in_memory(
    m: &MemoryBackend,
    keys: Keys<'_>,
    owner: &[u8],
    counter_ttl: Duration,
) -> Result<Option<u64>, Error> {
    m.atomically(|ks| {
        if !held_by(ks.get(keys.lease), owner) {
            return Ok(None);
        }
        let last = match ks.get(keys.counter) {
            None => 0,
            Some(Value::Bytes(raw)) => std::str::from_utf8(raw)
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0),
            Some(_) => return Err(Error::wrong_type()),
        };
        let now_us = ks.now_millis().saturating_mul(1000);
        let token = last.saturating_add(1).max(now_us);
        ks.set(
            keys.counter,
            Value::Bytes(token.to_string().into_bytes()),
            Some(counter_ttl.max(Duration::from_millis(1))),
        )?;
        Ok(Some(token))
    })
}

/// Whether a lease's value is held by `owner`: it begins with the owner's
/// mark.
fn held_by(value: Option<&Value>, owner: &[u8]) -> bool {
    // An empty mark would begin every value.
    !owner.is_empty() && matches!(value, Some(Value::Bytes(b)) if b.starts_with(owner))
}

/// Extends the lease at `key` to `ttl` from now if `owner` holds it: true
/// when extended.
#[allow(dead_code)]
pub(crate) async fn renew(
    backend: &Backend,
    key: &str,
    owner: &[u8],
    ttl: Duration,
) -> Result<bool, Error> {
    match backend {
        Backend::Redis(r) => renew_on_redis(r, key, owner, ttl).await,
        Backend::Memory(m) => Ok(renew_in_memory(m, key, owner, ttl)),
    }
}

/// [`renew`] in memory.
pub(crate) fn renew_in_memory(m: &MemoryBackend, key: &str, owner: &[u8], ttl: Duration) -> bool {
    m.atomically(|ks| {
        held_by(ks.get(key), owner) && ks.expire(key, ttl.max(Duration::from_millis(1)))
    })
}

/// [`renew`] on Redis.
pub(crate) async fn renew_on_redis(
    r: &RedisBackend,
    key: &str,
    owner: &[u8],
    ttl: Duration,
) -> Result<bool, Error> {
    let renewed: i64 = r
        .script(&RENEW)
        .key(key)
        .arg(owner)
        .arg(crate::time::millis(ttl).max(1))
        .invoke()
        .await?;
    Ok(renewed == 1)
}

/// Gives up the lease at `key` if `owner` holds it: true when it did.
#[allow(dead_code)]
pub(crate) async fn release(backend: &Backend, key: &str, owner: &[u8]) -> Result<bool, Error> {
    match backend {
        Backend::Redis(r) => release_on_redis(r, key, owner, false).await,
        Backend::Memory(m) => Ok(release_in_memory(m, key, owner)),
    }
}

/// [`release`] in memory.
pub(crate) fn release_in_memory(m: &MemoryBackend, key: &str, owner: &[u8]) -> bool {
    m.atomically(|ks| {
        let held = held_by(ks.get(key), owner);
        if held {
            ks.remove(key);
        }
        held
    })
}

/// [`release`] on Redis; `finish_if_late`: a call past the backend's
/// deadline still lands (the answer is not waited for).
pub(crate) async fn release_on_redis(
    r: &RedisBackend,
    key: &str,
    owner: &[u8],
    finish_if_late: bool,
) -> Result<bool, Error> {
    let mut call = r.script(&RELEASE).key(key).arg(owner);
    if finish_if_late {
        call = call.finish_if_late();
    }
    let released: i64 = call.invoke().await?;
    Ok(released == 1)
}

/// Runs `work` while keeping a lease renewed, in the caller's task (no
/// task, and no timer for work done before the first renewal is due):
/// `renew` (an owner-checked extension to `lease` from now, true while
/// still held) every third of `lease`, for at most `max` from now.
///
/// The lease is lost when a renewal finds it no longer held: then `lost`
/// (if given) turns true, renewals stop, and `work` is still run to its
/// end: what it writes must be fenced (an owner-checked write, a fencing
/// token). When none succeeded within the lease since the last one that
/// did (counted from when it was sent: the lease may have run out
/// meanwhile), `lost` turns true too, but renewals go on: if the late ones
/// landed, the lease is still held, and kept. At
/// `max` renewals stop quietly. This is the one renewal design of the
/// crate: the idempotency claim and the lock layer run their handler in
/// it; [`keep_renewed`] runs it in a task for a guard that outlives any
/// one future (a lock guard, the cache's fill lease).
pub(crate) async fn renewing<W, F, Fut>(
    work: W,
    since: tokio::time::Instant,
    lease: Duration,
    max: Option<Duration>,
    renew: F,
    lost: Option<&tokio::sync::watch::Sender<bool>>,
) -> W::Output
where
    W: std::future::Future,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    use tokio::time::Instant;
    let start = Instant::now();
    let every = lease / 3;
    // When the lease ends at the earliest unless renewed: counted from
    // when the call that took it was sent (Redis may have run it at once
    // and the answer come late), as each renewal is below.
    let mut ends = since + lease;
    // Whether the loss was reported for want of a renewal in time.
    let mut given_up = false;
    let mut work = std::pin::pin!(work);
    // The first renewal is due a third of the lease after it was asked
    // for (at once if the answer came later than that), the next ones a
    // third after each.
    let mut next = since + every;
    loop {
        // Biased: the work is polled first, so work done at once never
        // registers the timer.
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = tokio::time::sleep_until(next) => {}
        }
        if max.is_some_and(|max| start.elapsed() >= max) {
            return work.await;
        }
        let sent = Instant::now();
        next = sent + every;
        // The layer's own upkeep, not a call its request waits for.
        let renewal = tokio::time::timeout_at(ends, crate::trace::unmeasured(renew()));
        let renewed = tokio::select! {
            biased;
            out = &mut work => return out,
            renewed = renewal => renewed,
        };
        match renewed {
            Ok(Ok(true)) => {
                RENEWAL_FAILURES.succeeded();
                ends = sent + lease;
            }
            Ok(Ok(false)) => {
                tracing::warn!("lease lost: a renewal found it gone or taken");
                if let Some(lost) = lost {
                    lost.send_replace(true);
                }
                return work.await;
            }
            Ok(Err(e)) if Instant::now() < ends => {
                RENEWAL_FAILURES.failed(
                    &e,
                    "a lease not renewed; trying again while it lasts",
                    false,
                );
            }
            Ok(Err(_)) | Err(_) => {
                // Said once; renewals go on (owner-checked): if the late
                // ones landed, the lease is still held, and kept.
                if !given_up {
                    given_up = true;
                    tracing::warn!("lease may be lost: not renewed within its time");
                    if let Some(lost) = lost {
                        lost.send_replace(true);
                    }
                }
                ends = tokio::time::Instant::now() + lease;
            }
        }
    }
}

/// Failed renewals, of every lease in the process: during an outage each
/// held lease fails its renewals, and a line each would flood the logs
/// (see [`FailureLog`](crate::failure_log::FailureLog)).
static RENEWAL_FAILURES: std::sync::LazyLock<crate::failure_log::FailureLog> =
    std::sync::LazyLock::new(|| crate::failure_log::FailureLog::new("lease"));

/// [`renewing`] in a task of its own, for a lease held while a guard
/// lives: the task ends when the lease is lost (`lost` turns true) and
/// stays, idle, after `max`. Abort it (the returned handle) when the
/// lease is given up.
#[allow(dead_code)]
pub(crate) fn keep_renewed<F, Fut>(
    since: tokio::time::Instant,
    lease: Duration,
    max: Option<Duration>,
    renew: F,
    lost: tokio::sync::watch::Sender<bool>,
) -> tokio::task::AbortHandle
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<bool, Error>> + Send,
{
    let task = async move {
        let mut until_lost = lost.subscribe();
        let work = async move {
            // Ends when `renewing` reports the loss.
            let _ = until_lost.wait_for(|lost| *lost).await;
        };
        renewing(work, since, lease, max, renew, Some(&lost)).await;
    };
    // A span of its own that follows from the request's: the renewals
    // may outlive the request, whose span they must not hold open.
    let span = tracing::info_span!(parent: None, "lease_renewal");
    span.follows_from(tracing::Span::current());
    tokio::spawn(tracing::Instrument::instrument(task, span)).abort_handle()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owner is told by the mark its lease's value begins with: another
    /// mark of the same length, or a value in another state, is not it.
    #[tokio::test]
    async fn only_the_owner_mark_renews_releases_and_fences() {
        let m = MemoryBackend::new();
        let backend = Backend::Memory(m.clone());
        let lease = Duration::from_secs(5);
        assert_eq!(
            acquire(&backend, "l", b"owner-a", lease).await.unwrap(),
            Taken::Yes
        );
        assert!(matches!(
            acquire(&backend, "l", b"owner-b", lease).await.unwrap(),
            Taken::Held(left) if left > Duration::from_secs(4)
        ));
        let keys = || Keys {
            lease: "l",
            counter: "n",
        };
        let ttl = Duration::from_secs(60);
        assert!(!renew(&backend, "l", b"owner-b", lease).await.unwrap());
        assert_eq!(
            fence(&backend, keys(), b"owner-b", ttl).await.unwrap(),
            None
        );
        assert!(!release(&backend, "l", b"owner-b").await.unwrap());
        assert!(renew(&backend, "l", b"owner-a", lease).await.unwrap());
        let first = fence(&backend, keys(), b"owner-a", ttl)
            .await
            .unwrap()
            .unwrap();
        let second = fence(&backend, keys(), b"owner-a", ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(second > first);
        assert!(release(&backend, "l", b"owner-a").await.unwrap());
        assert!(!release(&backend, "l", b"owner-a").await.unwrap(), "gone");
        // A value that merely begins with the mark is held by it (an
        // idempotency record in flight); one in another state is not.
        m.atomically(|ks| ks.set("r", Value::Bytes(b"\x01mark-1:fingerprint".to_vec()), None))
            .unwrap();
        assert!(renew(&backend, "r", b"\x01mark-1", lease).await.unwrap());
        m.atomically(|ks| ks.set("r", Value::Bytes(b"\x02mark-1:response".to_vec()), None))
            .unwrap();
        assert!(!release(&backend, "r", b"\x01mark-1").await.unwrap());
        assert!(
            m.atomically(|ks| ks.get("r").is_some()),
            "a completed record stays"
        );
    }
}

#[cfg(test)]
mod renewal_tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    /// A lease whose taking was answered late counts from when it was
    /// asked for: renewals failing, its loss is reported once that time
    /// plus the lease has passed, not a lease after the answer.
    #[tokio::test(start_paused = true)]
    async fn a_lease_counts_from_when_it_was_asked_for() {
        let lease = Duration::from_millis(300);
        // Asked for 250 ms ago; the answer just came.
        let since = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(250)).await;
        let (lost, seen) = tokio::sync::watch::channel(false);
        let renew = || async { Err::<bool, _>(Error::timeout(Duration::from_millis(50))) };
        let work = async {
            // Half a lease after the answer: the lease (from the ask) is
            // over.
            tokio::time::sleep(lease / 2).await;
            *seen.borrow()
        };
        let reported = renewing(work, since, lease, None, renew, Some(&lost)).await;
        assert!(
            reported,
            "the loss was reported within the lease from the ask"
        );
    }

    /// A lease whose answer came late (at 0.7 of it) is renewed at once,
    /// not a third of a lease after the answer (by then it is gone).
    #[tokio::test(start_paused = true)]
    async fn a_late_answer_is_renewed_at_once() {
        let lease = Duration::from_millis(300);
        let since = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(210)).await;
        let (lost, seen) = tokio::sync::watch::channel(false);
        let renew = || async { Ok(true) };
        renewing(
            tokio::time::sleep(lease * 3),
            since,
            lease,
            None,
            renew,
            Some(&lost),
        )
        .await;
        assert!(!*seen.borrow(), "renewed in time, never lost");
    }

    /// Failed renewals are logged once per outage (then summarised), not
    /// once each.
    #[tokio::test(start_paused = true)]
    async fn failed_renewals_are_not_logged_one_by_one() {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let lease = Duration::from_secs(3);
        let calls = Arc::new(AtomicU32::new(0));
        let renew = || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<bool, _>(Error::timeout(Duration::from_millis(5))) }
        };
        // Renewals every second, failing, for 2.9 s (within the lease).
        let work = tokio::time::sleep(Duration::from_millis(2_900));
        renewing(work, tokio::time::Instant::now(), lease, None, renew, None).await;
        assert!(calls.load(Ordering::SeqCst) >= 2);
        let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
        let lines = text.matches("lease not renewed").count();
        assert!(lines <= 1, "{text}");
    }

    /// Renewals that fail for longer than the lease report the loss, and
    /// go on: one that lands later (the store was slow, not gone) keeps a
    /// lease that was still held.
    #[tokio::test(start_paused = true)]
    async fn a_lease_not_renewed_in_time_is_reported_lost_and_renewed_still() {
        let lease = Duration::from_millis(300);
        let calls = Arc::new(AtomicU32::new(0));
        let renew = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 5 {
                    Err(Error::timeout(Duration::from_millis(100)))
                } else {
                    Ok(true)
                }
            }
        };
        let (lost, seen) = tokio::sync::watch::channel(false);
        let work = tokio::time::sleep(lease * 10);
        renewing(
            work,
            tokio::time::Instant::now(),
            lease,
            None,
            renew,
            Some(&lost),
        )
        .await;
        assert!(*seen.borrow(), "the loss was reported");
        let n = calls.load(Ordering::SeqCst);
        assert!(n >= 20, "renewals went on after it: {n}");
    }

    /// A renewal that finds the lease taken ends the renewals.
    #[tokio::test(start_paused = true)]
    async fn a_lease_found_taken_is_no_longer_renewed() {
        let lease = Duration::from_millis(300);
        let calls = Arc::new(AtomicU32::new(0));
        let renew = || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok(false) }
        };
        let (lost, seen) = tokio::sync::watch::channel(false);
        renewing(
            tokio::time::sleep(lease * 10),
            tokio::time::Instant::now(),
            lease,
            None,
            renew,
            Some(&lost),
        )
        .await;
        assert!(*seen.borrow());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
