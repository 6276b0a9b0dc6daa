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
//! The crate implements [`IdempotencyStore`] for
//! [`Backend`](crate::Backend), [`RedisBackend`] and [`MemoryBackend`];
//! implement it to keep records elsewhere: [`record`](super::record) has
//! what such a store must read of the records, and
//! `test_kit::idempotency_store` checks it. `key` is 32 hex digits (the
//! layer's hash of scope, method, route and client key).

use std::time::Duration;

use bytes::Bytes;

use super::layout::{self, claim_mark, holder_bytes, keys, record_key};
use crate::error::Error;
use crate::lease;
use crate::memory::{MemoryBackend, Value};
use crate::redis::{script, RedisBackend, Script};

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

crate::seam::store_seam! {
    /// Where an idempotency layer keeps its records.
    pub trait IdempotencyStore: Send + Sync + 'static {
        /// Claims `key` for `lease` when it is free, as `holder` (an id unique
        /// to this claim, written into the in-flight record); else returns
        /// what holds it, writing nothing.
        async fn claim<'a, 'b, 'c>(
            &'a self,
            key: &'b str,
            fingerprint: &'c [u8; 32],
            holder: u64,
            lease: Duration,
        ) -> Result<Claim, Error>;

        /// A new fencing token for `holder`'s claim: higher than any before for
        /// this key while its counter lives (`counter_ttl` past this call).
        /// `None`, and nothing counted, when `holder` no longer holds the key,
        /// so tokens rise in the order the key was claimed.
        async fn fence<'a, 'b>(
            &'a self,
            key: &'b str,
            holder: u64,
            counter_ttl: Duration,
        ) -> Result<Option<u64>, Error>;

        /// Renews the lease of `holder`'s claim; false when it is no longer
        /// held by `holder`.
        async fn extend<'a, 'b>(
            &'a self,
            key: &'b str,
            holder: u64,
            lease: Duration,
        ) -> Result<bool, Error>;

        /// Replaces `holder`'s claim with `record`, kept `retention`, and
        /// answers true. Also true, and written, when the key is free (the
        /// claim's lease ran out and no one claimed it since: this outcome is
        /// still the key's first), and true without writing when `holder`'s
        /// completed record is already there (a retried completion whose first
        /// reply was lost). False, and nothing written, when another holder's
        /// record is there.
        async fn complete<'a, 'b, 'c>(
            &'a self,
            key: &'b str,
            holder: u64,
            record: &'c [u8],
            retention: Duration,
        ) -> Result<bool, Error>;

        /// Frees `holder`'s claim; false when it was no longer held by
        /// `holder`.
        async fn release<'a, 'b>(&'a self, key: &'b str, holder: u64) -> Result<bool, Error>;
    }
    dyn DynIdempotencyStore;
    enum Store;
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
