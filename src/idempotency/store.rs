//! The idempotency store seam: claim, renew, complete and release a
//! record, each atomic and one round trip.
//!
//! On Redis the claim is one plain command, `SET record in-flight NX PX
//! lease GET`: it takes a free key, or returns the record that holds it
//! without writing anything, so a replay is one command for Redis. The
//! fencing token is counted apart, only for a handler that asks for it
//! ([`fence`](IdempotencyStore::fence)). Renew, fence, complete and
//! release are small scripts that act only for the claim's holder; all
//! but complete are the lease module's, shared with the locks (an
//! in-flight record begins with its holder's owner mark).
//!
//! The crate implements [`IdempotencyStore`] for [`Backend`],
//! [`RedisBackend`] and [`MemoryBackend`]; implement it to keep records
//! elsewhere. `key` is 32 hex digits (the layer's hash of scope, method,
//! route and client key).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use super::layout::{self, claim_mark, holder_bytes, keys, record_key};
use crate::backend::on_backend;
use crate::error::Error;
use crate::lease;
use crate::memory::{MemoryBackend, Value};
use crate::redis::{script, RedisBackend, Script};
use crate::Backend;

static COMPLETE: Script = script!("idempotency-complete", "record.lua", "complete.lua");

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The key was free: it is now held, for the lease.
    Claimed,
    /// Another request holds the key, or completed it: its record (opaque
    /// bytes).
    Taken {
        /// The record.
        record: Bytes,
    },
}

/// Where an idempotency layer keeps its records.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `lease` when it is free, as `holder` (an id unique
    /// to this claim, written into the in-flight record); else returns
    /// what holds it, writing nothing.
    fn claim(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        holder: u64,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, Error>> + Send;

    /// A new fencing token for `holder`'s claim: higher than any before for
    /// this key while its counter lives (`counter_ttl` past this call).
    /// `None`, and nothing counted, when `holder` no longer holds the key,
    /// so tokens rise in the order the key was claimed.
    fn fence(
        &self,
        key: &str,
        holder: u64,
        counter_ttl: Duration,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// Renews the lease of `holder`'s claim; false when it is no longer
    /// held by `holder`.
    fn extend(
        &self,
        key: &str,
        holder: u64,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Replaces `holder`'s claim with `record`, kept `retention`, and
    /// answers true. Also true, and written, when the key is free (the
    /// claim's lease ran out and no one claimed it since: this outcome is
    /// still the key's first), and true without writing when `holder`'s
    /// completed record is already there (a retried completion whose first
    /// reply was lost). False, and nothing written, when another holder's
    /// record is there.
    fn complete(
        &self,
        key: &str,
        holder: u64,
        record: &[u8],
        retention: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Frees `holder`'s claim; false when it was no longer held by
    /// `holder`.
    fn release(&self, key: &str, holder: u64) -> impl Future<Output = Result<bool, Error>> + Send;
}

fn ms(d: Duration) -> u64 {
    crate::time::millis(d).max(1)
}

impl IdempotencyStore for RedisBackend {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        holder: u64,
        lease: Duration,
    ) -> Result<Claim, Error> {
        let record = record_key(self.namespace(), key);
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(&record)
            .arg(layout::in_flight(holder, fingerprint))
            .arg("NX")
            .arg("PX")
            .arg(ms(lease))
            .arg("GET");
        let existing: Option<Vec<u8>> = self.query(&cmd).await?;
        Ok(match existing {
            None => Claim::Claimed,
            Some(raw) => Claim::Taken {
                record: Bytes::from(raw),
            },
        })
    }

    async fn fence(
        &self,
        key: &str,
        holder: u64,
        counter_ttl: Duration,
    ) -> Result<Option<u64>, Error> {
        let (record, counter) = keys(self.namespace(), key);
        let keys = lease::Keys {
            lease: &record,
            counter: &counter,
        };
        lease::fence_on_redis(self, keys, &claim_mark(holder), counter_ttl).await
    }

    async fn extend(&self, key: &str, holder: u64, lease: Duration) -> Result<bool, Error> {
        let record = record_key(self.namespace(), key);
        lease::renew_on_redis(self, &record, &claim_mark(holder), lease).await
    }

    async fn complete(
        &self,
        key: &str,
        holder: u64,
        value: &[u8],
        retention: Duration,
    ) -> Result<bool, Error> {
        let record = record_key(self.namespace(), key);
        let n: i64 = self
            .script(&COMPLETE)
            .key(record)
            .arg(&holder_bytes(holder)[..])
            .arg(value)
            .arg(ms(retention))
            // A late completion is wanted (and safe to repeat).
            .finish_if_late()
            .invoke()
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, key: &str, holder: u64) -> Result<bool, Error> {
        let record = record_key(self.namespace(), key);
        lease::release_on_redis(self, &record, &claim_mark(holder), true).await
    }
}

/// Whether `raw` is in flight under `holder`.
fn holds(raw: Option<&Value>, holder: u64) -> bool {
    match raw {
        Some(Value::Bytes(b)) => matches!(
            layout::decode(&Bytes::copy_from_slice(b)),
            Some(layout::Record::InFlight { holder: t, .. }) if t == holder
        ),
        _ => false,
    }
}

/// Whether `raw` is a completed record of `holder`.
fn written_by(raw: Option<&Value>, holder: u64) -> bool {
    match raw {
        Some(Value::Bytes(b)) => layout::completed_by(b) == Some(holder),
        _ => false,
    }
}

impl IdempotencyStore for MemoryBackend {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        holder: u64,
        lease: Duration,
    ) -> Result<Claim, Error> {
        let record = record_key(self.namespace(), key);
        self.atomically(|ks| {
            if let Some(value) = ks.get(&record) {
                let Value::Bytes(raw) = value else {
                    return Err(Error::wrong_type());
                };
                return Ok(Claim::Taken {
                    record: Bytes::copy_from_slice(raw),
                });
            }
            ks.set(
                &record,
                Value::Bytes(layout::in_flight(holder, fingerprint)),
                Some(lease.max(Duration::from_millis(1))),
            )?;
            Ok(Claim::Claimed)
        })
    }

    async fn fence(
        &self,
        key: &str,
        holder: u64,
        counter_ttl: Duration,
    ) -> Result<Option<u64>, Error> {
        let (record, counter) = keys(self.namespace(), key);
        let keys = lease::Keys {
            lease: &record,
            counter: &counter,
        };
        lease::fence_in_memory(self, keys, &claim_mark(holder), counter_ttl)
    }

    async fn extend(&self, key: &str, holder: u64, lease: Duration) -> Result<bool, Error> {
        let record = record_key(self.namespace(), key);
        Ok(lease::renew_in_memory(
            self,
            &record,
            &claim_mark(holder),
            lease,
        ))
    }

    async fn complete(
        &self,
        key: &str,
        holder: u64,
        value: &[u8],
        retention: Duration,
    ) -> Result<bool, Error> {
        let record = record_key(self.namespace(), key);
        self.atomically(|ks| {
            match ks.get(&record) {
                None => {}
                raw if holds(raw, holder) => {}
                raw => return Ok(written_by(raw, holder)),
            }
            ks.set(
                &record,
                Value::Bytes(value.to_vec()),
                Some(retention.max(Duration::from_millis(1))),
            )?;
            Ok(true)
        })
    }

    async fn release(&self, key: &str, holder: u64) -> Result<bool, Error> {
        let record = record_key(self.namespace(), key);
        Ok(lease::release_in_memory(self, &record, &claim_mark(holder)))
    }
}

impl IdempotencyStore for Backend {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        holder: u64,
        lease: Duration,
    ) -> Result<Claim, Error> {
        on_backend!(self, b => IdempotencyStore::claim(b, key, fingerprint, holder, lease).await)
    }
    async fn fence(
        &self,
        key: &str,
        holder: u64,
        counter_ttl: Duration,
    ) -> Result<Option<u64>, Error> {
        on_backend!(self, b => IdempotencyStore::fence(b, key, holder, counter_ttl).await)
    }
    async fn extend(&self, key: &str, holder: u64, lease: Duration) -> Result<bool, Error> {
        on_backend!(self, b => IdempotencyStore::extend(b, key, holder, lease).await)
    }
    async fn complete(
        &self,
        key: &str,
        holder: u64,
        record: &[u8],
        retention: Duration,
    ) -> Result<bool, Error> {
        on_backend!(self, b => IdempotencyStore::complete(b, key, holder, record, retention).await)
    }
    async fn release(&self, key: &str, holder: u64) -> Result<bool, Error> {
        on_backend!(self, b => IdempotencyStore::release(b, key, holder).await)
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`IdempotencyStore`] in object-safe form.
pub(crate) trait DynIdempotencyStore: Send + Sync {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a [u8; 32],
        holder: u64,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, Error>>;
    fn fence<'a>(
        &'a self,
        key: &'a str,
        holder: u64,
        counter_ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<u64>, Error>>;
    fn extend<'a>(
        &'a self,
        key: &'a str,
        holder: u64,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    fn complete<'a>(
        &'a self,
        key: &'a str,
        holder: u64,
        record: &'a [u8],
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    fn release<'a>(&'a self, key: &'a str, holder: u64) -> BoxFuture<'a, Result<bool, Error>>;
}

impl<T: IdempotencyStore> DynIdempotencyStore for T {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a [u8; 32],
        holder: u64,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, Error>> {
        Box::pin(IdempotencyStore::claim(
            self,
            key,
            fingerprint,
            holder,
            lease,
        ))
    }
    fn fence<'a>(
        &'a self,
        key: &'a str,
        holder: u64,
        counter_ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        Box::pin(IdempotencyStore::fence(self, key, holder, counter_ttl))
    }
    fn extend<'a>(
        &'a self,
        key: &'a str,
        holder: u64,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(IdempotencyStore::extend(self, key, holder, lease))
    }
    fn complete<'a>(
        &'a self,
        key: &'a str,
        holder: u64,
        record: &'a [u8],
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(IdempotencyStore::complete(
            self, key, holder, record, retention,
        ))
    }
    fn release<'a>(&'a self, key: &'a str, holder: u64) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(IdempotencyStore::release(self, key, holder))
    }
}

/// The store a layer holds: one of this crate's backends, called without
/// boxing its futures (a replay's one call), or a user's store behind the
/// object-safe copy.
#[derive(Clone)]
pub(crate) enum Store {
    Backend(Backend),
    Custom(std::sync::Arc<dyn DynIdempotencyStore>),
}

impl Store {
    pub(crate) fn new<S: IdempotencyStore>(store: S) -> Self {
        match crate::backend::as_backend(&store) {
            Some(b) => Store::Backend(b),
            None => Store::Custom(std::sync::Arc::new(store)),
        }
    }

    pub(crate) async fn claim(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        holder: u64,
        lease: Duration,
    ) -> Result<Claim, Error> {
        match self {
            Store::Backend(b) => IdempotencyStore::claim(b, key, fingerprint, holder, lease).await,
            Store::Custom(s) => s.claim(key, fingerprint, holder, lease).await,
        }
    }

    pub(crate) async fn fence(
        &self,
        key: &str,
        holder: u64,
        counter_ttl: Duration,
    ) -> Result<Option<u64>, Error> {
        match self {
            Store::Backend(b) => IdempotencyStore::fence(b, key, holder, counter_ttl).await,
            Store::Custom(s) => s.fence(key, holder, counter_ttl).await,
        }
    }

    pub(crate) async fn extend(
        &self,
        key: &str,
        holder: u64,
        lease: Duration,
    ) -> Result<bool, Error> {
        match self {
            Store::Backend(b) => IdempotencyStore::extend(b, key, holder, lease).await,
            Store::Custom(s) => s.extend(key, holder, lease).await,
        }
    }

    pub(crate) async fn complete(
        &self,
        key: &str,
        holder: u64,
        record: &[u8],
        retention: Duration,
    ) -> Result<bool, Error> {
        match self {
            Store::Backend(b) => {
                IdempotencyStore::complete(b, key, holder, record, retention).await
            }
            Store::Custom(s) => s.complete(key, holder, record, retention).await,
        }
    }

    pub(crate) async fn release(&self, key: &str, holder: u64) -> Result<bool, Error> {
        match self {
            Store::Backend(b) => IdempotencyStore::release(b, key, holder).await,
            Store::Custom(s) => s.release(key, holder).await,
        }
    }
}
