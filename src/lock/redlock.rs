//! [`Redlock`]: one lock across several independent Redis servers, held
//! when a majority of them granted it.

use std::fmt;
use std::time::Duration;

use super::{check, owner_token, ResourceKeys, MIN_LEASE};
use crate::error::{Error, ErrorKind};
use crate::lease::{self, Taken};
use crate::Backend;

/// The Redlock algorithm across independent Redis servers (not replicas
/// of one another, not the nodes of one Cluster): a lock is held when a
/// majority granted it within its lease, for the lease less the time the
/// asking took and an allowance for clock drift.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_layers::lock::Redlock;
/// use redis_layers::redis::RedisBackend;
///
/// # async fn run() -> Result<(), redis_layers::Error> {
/// let servers = ["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]
///     .into_iter()
///     .map(|url| RedisBackend::builder().url(url).build().map(Into::into))
///     .collect::<Result<Vec<_>, _>>()?;
/// let redlock = Redlock::new(servers)?;
/// if let Some(held) = redlock.try_acquire("nightly-report", Duration::from_secs(30)).await? {
///     // Work only until `held.valid_until()`, then stop: nothing renews it.
///     held.release().await;
/// }
/// # Ok(()) }
/// ```
///
/// # What it does and does not promise
///
/// It keeps one holder at a time while fewer than half the servers fail,
/// and as long as processes and clocks behave: each server expires the
/// lock by its own clock, so a server whose clock jumps forward (or that
/// restarts without persistence and forgets the lock) can let a second
/// holder in; a holder paused past its validity (a GC pause, a frozen VM)
/// still believes it holds the lock. Nothing here renews it: finish
/// within [`RedlockGuard::valid_until`], or take it again.
///
/// It gives no fencing token: tokens counted on independent servers do
/// not form one sequence. When correctness matters (a write must never
/// come from a holder that lost the lock), take a [`Locks`](super::Locks)
/// lock on one Redis (with Sentinel for availability) and pass its
/// fencing token to the store you write to, which refuses lower tokens.
/// That is the safe pattern; Redlock is for efficiency (not doing the
/// same work twice), where a rare overlap costs only time.
#[derive(Clone)]
pub struct Redlock {
    servers: Vec<Backend>,
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field("servers", &self.servers.len())
            .finish()
    }
}

/// Clock drift allowed per lease: 1% of it, plus 2 ms.
fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

impl Redlock {
    /// A Redlock across `servers`: at least 3 (an odd number is best: 5
    /// tolerates 2 down). Give each a short deadline: the asking must end
    /// well within the lease.
    pub fn new(servers: Vec<Backend>) -> Result<Self, Error> {
        if servers.len() < 3 {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "Redlock needs at least 3 independent servers, not {}",
                    servers.len()
                ),
            ));
        }
        Ok(Redlock { servers })
    }

    /// The servers that must grant a lock: a majority.
    pub fn quorum(&self) -> usize {
        self.servers.len() / 2 + 1
    }

    /// Asks every server at once for the lock on `resource` for `lease`.
    /// `Some` when a majority granted it and some validity is left (the
    /// lease less the time the asking took and the drift allowance);
    /// `None` otherwise, after giving up what was granted. Servers that
    /// fail count as refusals; an error only when every one failed.
    pub async fn try_acquire(
        &self,
        resource: &str,
        lease: Duration,
    ) -> Result<Option<RedlockGuard>, Error> {
        check(lease, "lease", MIN_LEASE)?;
        let owner = owner_token()?;
        let started = tokio::time::Instant::now();
        let asks = self.servers.iter().map(|server| {
            let owner = &owner;
            async move {
                let keys = ResourceKeys::new(server, resource);
                let taken = lease::acquire(server, &keys.lease, owner.as_bytes(), lease).await;
                (keys.lease, taken)
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let elapsed = started.elapsed();
        let granted = answers
            .iter()
            .filter(|(_, taken)| matches!(taken, Ok(Taken::Yes)))
            .count();
        let keys: Vec<String> = answers.iter().map(|(key, _)| key.clone()).collect();
        let guard = RedlockGuard {
            servers: self.servers.clone(),
            keys,
            owner,
            valid_until: started + lease.saturating_sub(elapsed + drift(lease)),
        };
        let valid = lease > elapsed + drift(lease);
        if granted >= self.quorum() && valid {
            return Ok(Some(guard));
        }
        // Given up on every server, granted or not (a grant may have
        // landed after its call timed out).
        guard.release().await;
        let all_failed = answers.iter().all(|(_, t)| t.is_err());
        match answers.into_iter().find_map(|(_, t)| t.err()) {
            Some(e) if all_failed => Err(e),
            _ => Ok(None),
        }
    }
}

/// A Redlock held by a majority: valid until [`valid_until`](Self::valid_until).
/// Not renewed; released on every server by [`release`](Self::release)
/// (dropping it leaves the lock to expire).
pub struct RedlockGuard {
    servers: Vec<Backend>,
    keys: Vec<String>,
    owner: String,
    valid_until: tokio::time::Instant,
}

impl fmt::Debug for RedlockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedlockGuard")
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

impl RedlockGuard {
    /// Until when the lock is held (this process's clock): stop before.
    pub fn valid_until(&self) -> tokio::time::Instant {
        self.valid_until
    }

    /// Whether its validity has not run out yet.
    pub fn is_valid(&self) -> bool {
        tokio::time::Instant::now() < self.valid_until
    }

    /// Gives the lock up on every server (owner-checked on each): how many
    /// still held it for this owner.
    pub async fn release(self) -> usize {
        let releases = self
            .servers
            .iter()
            .zip(&self.keys)
            .map(|(server, key)| lease::release(server, key, self.owner.as_bytes()));
        futures_util::future::join_all(releases)
            .await
            .into_iter()
            .filter(|released| matches!(released, Ok(true)))
            .count()
    }
}
