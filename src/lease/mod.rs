//! One lease primitive, on Redis and in memory: a key held by an owner's
//! token for a time, taken only when free (with a fencing token counted
//! per resource), extended and given up only by its owner. The public
//! [`Locks`](crate::lock::Locks) are built on it, and the cache's fill
//! lease is extended and given up with the same scripts.
//!
//! Each operation is one round trip: one small script on Redis (the same
//! on a Cluster: a lease and its counter share a hash tag), one
//! [`MemoryBackend::atomically`] call in memory.

use std::time::Duration;

use crate::error::Error;
use crate::memory::{MemoryBackend, Value};
use crate::redis::{script, RedisBackend, Script};
use crate::Backend;

/// Takes a free lease and counts its fencing token (`acquire.lua`).
#[allow(dead_code)]
pub(crate) static ACQUIRE: Script = script!("lease-acquire", "acquire.lua");
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
    /// Taken, with this fencing token.
    Token(u64),
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

/// Takes the lease at `keys` for `owner` for `lease` if no one holds it,
/// keeping the fencing counter `counter_ttl` past this token.
#[allow(dead_code)]
pub(crate) async fn acquire(
    backend: &Backend,
    keys: Keys<'_>,
    owner: &str,
    lease: Duration,
    counter_ttl: Duration,
) -> Result<Taken, Error> {
    let lease_ms = crate::time::millis(lease).max(1);
    let counter_ms = crate::time::millis(counter_ttl).max(1);
    match backend {
        Backend::Redis(r) => {
            let reply: i64 = r
                .script(&ACQUIRE)
                .key(keys.lease)
                .key(keys.counter)
                .arg(owner)
                .arg(lease_ms)
                .arg(counter_ms)
                .invoke()
                .await?;
            Ok(taken(reply))
        }
        Backend::Memory(m) => acquire_in_memory(m, keys, owner, lease, counter_ttl),
    }
}

/// The script's reply as a [`Taken`].
fn taken(reply: i64) -> Taken {
    match u64::try_from(reply) {
        Ok(token) if token > 0 => Taken::Token(token),
        _ => Taken::Held(Duration::from_millis(
            reply.unsigned_abs().saturating_sub(1),
        )),
    }
}

fn acquire_in_memory(
    m: &MemoryBackend,
    keys: Keys<'_>,
    owner: &str,
    lease: Duration,
    counter_ttl: Duration,
) -> Result<Taken, Error> {
    m.atomically(|ks| {
        if ks.get(keys.lease).is_some() {
            let left = ks.ttl(keys.lease).flatten().unwrap_or_default();
            return Ok(Taken::Held(left));
        }
        // The counter first: a lease write refused (a full keyspace) then
        // leaves no lock without an owner who knows of it.
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
        ks.set(
            keys.lease,
            Value::Bytes(owner.as_bytes().to_vec()),
            Some(lease.max(Duration::from_millis(1))),
        )?;
        Ok(Taken::Token(token))
    })
}

/// Extends the lease at `key` to `ttl` from now if `owner` holds it: true
/// when extended.
#[allow(dead_code)]
pub(crate) async fn renew(
    backend: &Backend,
    key: &str,
    owner: &str,
    ttl: Duration,
) -> Result<bool, Error> {
    match backend {
        Backend::Redis(r) => renew_on_redis(r, key, owner, ttl).await,
        Backend::Memory(m) => Ok(renew_in_memory(m, key, owner, ttl)),
    }
}

/// [`renew`] in memory.
pub(crate) fn renew_in_memory(m: &MemoryBackend, key: &str, owner: &str, ttl: Duration) -> bool {
    m.atomically(|ks| {
        let held = matches!(ks.get(key), Some(Value::Bytes(b)) if b == owner.as_bytes());
        held && ks.expire(key, ttl.max(Duration::from_millis(1)))
    })
}

/// [`renew`] on Redis.
pub(crate) async fn renew_on_redis(
    r: &RedisBackend,
    key: &str,
    owner: &str,
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
pub(crate) async fn release(backend: &Backend, key: &str, owner: &str) -> Result<bool, Error> {
    match backend {
        Backend::Redis(r) => release_on_redis(r, key, owner).await,
        Backend::Memory(m) => Ok(release_in_memory(m, key, owner)),
    }
}

/// [`release`] in memory.
pub(crate) fn release_in_memory(m: &MemoryBackend, key: &str, owner: &str) -> bool {
    m.atomically(|ks| {
        let held = matches!(ks.get(key), Some(Value::Bytes(b)) if b == owner.as_bytes());
        if held {
            ks.remove(key);
        }
        held
    })
}

/// [`release`] on Redis.
pub(crate) async fn release_on_redis(
    r: &RedisBackend,
    key: &str,
    owner: &str,
) -> Result<bool, Error> {
    let released: i64 = r.script(&RELEASE).key(key).arg(owner).invoke().await?;
    Ok(released == 1)
}

/// Keeps a lease renewed in a task of its own: `renew` (an owner-checked
/// extension to `lease` from now, true while still held) every third of
/// `lease`, for at most `max` from now. The task ends, sending `true` on
/// `lost`, when a renewal finds the lease no longer held, or when none
/// succeeded within the lease since the last one that did (counted from
/// when it was sent); at `max` it ends quietly. Abort it (the returned
/// handle) when the lease is given up. The lock guard and the cache's
/// fill lease both hold their leases so.
#[allow(dead_code)]
pub(crate) fn keep_renewed<F, Fut>(
    lease: Duration,
    max: Option<Duration>,
    renew: F,
    lost: tokio::sync::watch::Sender<bool>,
) -> tokio::task::AbortHandle
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<bool, Error>> + Send,
{
    let start = tokio::time::Instant::now();
    let every = lease / 3;
    let task = async move {
        // When the lease surely ends unless renewed: it was taken before
        // now.
        let mut ends = start + lease;
        loop {
            tokio::time::sleep(every).await;
            if max.is_some_and(|max| start.elapsed() >= max) {
                return;
            }
            let sent = tokio::time::Instant::now();
            match tokio::time::timeout_at(ends, renew()).await {
                Ok(Ok(true)) => ends = sent + lease,
                Ok(Ok(false)) => {
                    tracing::warn!("lease lost: a renewal found it gone or taken");
                    lost.send_replace(true);
                    return;
                }
                Ok(Err(e)) if tokio::time::Instant::now() < ends => {
                    tracing::warn!(error = %e, "lease not renewed; trying again");
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!("lease lost: not renewed within its time");
                    lost.send_replace(true);
                    return;
                }
            }
        }
    };
    tokio::spawn(task).abort_handle()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_a_token_or_the_time_left() {
        assert_eq!(taken(7), Taken::Token(7));
        assert_eq!(taken(-1), Taken::Held(Duration::ZERO));
        assert_eq!(taken(-1_501), Taken::Held(Duration::from_millis(1_500)));
    }
}
