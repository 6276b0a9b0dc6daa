//! This crate's backends as a store for the
//! [tower-sessions](https://docs.rs/tower-sessions) ecosystem
//! ([`TowerSessionStore`], feature `tower-sessions`).
//!
//! An application built on tower-sessions, axum-login or axum-messages
//! keeps its layers and gets this crate's backends under them: every call
//! bounded by the backend's deadline, Redis Cluster, Sentinel, TLS, and the
//! bounded memory backend. It implements the `SessionStore` trait of
//! `tower-sessions-core` 0.14, the version axum-login 0.18 (the current
//! release) builds on: an application and its login crate must share one
//! version of the trait, and 0.14 is the one they share today.
//!
//! ```
//! use axum::{routing::get, Router};
//! use redis_layers::memory::MemoryBackend;
//! use redis_layers::tower_sessions::TowerSessionStore;
//! use tower_sessions::{Session, SessionManagerLayer};
//!
//! async fn visits(session: Session) -> String {
//!     let n: u64 = session.get("n").await.ok().flatten().unwrap_or(0) + 1;
//!     let _ = session.insert("n", n).await;
//!     format!("visit {n}")
//! }
//!
//! let store = TowerSessionStore::new(MemoryBackend::new());
//! let app: Router = Router::new()
//!     .route("/", get(visits))
//!     .layer(SessionManagerLayer::new(store));
//! ```
//!
//! # Storage
//!
//! - A session is one string value under `{prefix}:session:{<digest>}:ts`,
//!   where `<digest>` is the SHA-256 of the session id (hex): a dump of
//!   Redis holds no live cookie. The value is JSON (`{"e": expiry,
//!   "d": data}`); the id is not stored in it.
//! - Its TTL is what is left until the record's `expiry_date` by this
//!   host's clock (`SET ... PX`: relative, so a Redis clock that differs
//!   from this host's moves nothing), and Redis drops it on time; a record
//!   whose expiry has passed is deleted, not saved.
//! - `create` writes with `SET ... NX` and draws a new id on a collision,
//!   as the trait asks, so a new session never overwrites another; `save`
//!   writes with `SET ... XX`, so a request that ran while another logged
//!   the session out (or it expired) does not bring it back (tower-sessions
//!   still sends its cookie, which then names no session).
//! - On the memory backend the keys count as sessions: keys clients make
//!   the other layers create never evict them.
//!
//! tower-sessions decides expiry with this host's clock and writes the
//! whole record on every change; this crate's own [`session`](crate::session)
//! layer does neither (Redis's clock, field-level saves), which is why it
//! stays the faster and stricter choice where nothing ties an application
//! to tower-sessions.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{Error as StoreError, Result as StoreResult};
use tower_sessions_core::SessionStore;

use crate::memory::Value;
use crate::{Backend, Error};

/// How often `create` draws a new id after a collision before it gives up
/// (with 128-bit ids, a second collision means a broken random source).
const CREATE_ATTEMPTS: usize = 3;

/// A tower-sessions `SessionStore` over a [`Backend`] (see the [module
/// docs](self)).
#[derive(Clone)]
pub struct TowerSessionStore {
    backend: Backend,
}

impl fmt::Debug for TowerSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerSessionStore")
            .field("backend", &self.backend.kind())
            .finish()
    }
}

impl TowerSessionStore {
    /// A store keeping sessions in `backend` (Redis, Cluster, Sentinel or
    /// memory), under its key prefix.
    pub fn new(backend: impl Into<Backend>) -> Self {
        TowerSessionStore {
            backend: backend.into(),
        }
    }

    /// The key of the session `id`.
    fn key(&self, id: &Id) -> String {
        let digest = Sha256::digest(id.to_string().as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in digest {
            use std::fmt::Write as _;
            let _ = write!(hex, "{byte:02x}");
        }
        self.backend.namespace().tagged("session", &hex).key("ts")
    }

    /// Writes `record`: with [`Write::New`] only where no session is
    /// (`NX`), with [`Write::Existing`] only where it still is (`XX`).
    /// `Ok(false)`: nothing was written for that reason.
    async fn write(&self, record: &Record, mode: Write) -> StoreResult<bool> {
        let key = self.key(&record.id);
        let expires_ms = unix_ms(record);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if expires_ms <= now_ms {
            // Already expired: nothing to keep. A change removes the
            // session; a new one is simply not stored (there is nothing
            // under its fresh id to remove).
            if mode == Write::Existing {
                self.backend.delete(&key).await.map_err(backend_error)?;
            }
            return Ok(true);
        }
        // What is left of it, by this host's clock (tower-sessions computes
        // the expiry from now on this host): a relative TTL, so Redis's
        // clock being off from this host's moves nothing.
        let ttl_ms = u64::try_from(expires_ms - now_ms).unwrap_or(u64::MAX);
        let value = serde_json::to_vec(&Stored {
            e: expires_ms,
            d: std::borrow::Cow::Borrowed(&record.data),
        })
        .map_err(|e| StoreError::Encode(e.to_string()))?;
        let written = match &self.backend {
            Backend::Redis(redis) => {
                let mut cmd = ::redis::cmd("SET");
                cmd.arg(&key).arg(&value).arg("PX").arg(ttl_ms);
                cmd.arg(match mode {
                    Write::New => "NX",
                    Write::Existing => "XX",
                });
                let reply: Option<String> = redis.query(&cmd).await.map_err(backend_error)?;
                reply.is_some()
            }
            Backend::Memory(memory) => {
                let ttl = Duration::from_millis(ttl_ms);
                memory
                    .atomically(|ks| {
                        if ks.get(&key).is_some() != (mode == Write::Existing) {
                            return Ok(false);
                        }
                        ks.set(&key, Value::Bytes(value), Some(ttl)).map(|()| true)
                    })
                    .map_err(backend_error)?
            }
        };
        Ok(written)
    }
}

/// Which writes [`TowerSessionStore::write`] makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// A new session: never over another.
    New,
    /// A change: never bringing back a session deleted meanwhile.
    Existing,
}

/// What is stored: the expiry (Unix ms) and the data; never the id.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    e: u128,
    d: std::borrow::Cow<'a, HashMap<String, serde_json::Value>>,
}

/// The record's expiry in Unix milliseconds (0 before the epoch).
fn unix_ms(record: &Record) -> u128 {
    u128::try_from(record.expiry_date.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn backend_error(e: Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[async_trait]
impl SessionStore for TowerSessionStore {
    async fn create(&self, record: &mut Record) -> StoreResult<()> {
        for _ in 0..CREATE_ATTEMPTS {
            if self.write(record, Write::New).await? {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(StoreError::Backend(format!(
            "{CREATE_ATTEMPTS} fresh session ids collided"
        )))
    }

    async fn save(&self, record: &Record) -> StoreResult<()> {
        // A session deleted while the request ran (a logout, an expiry)
        // stays deleted: `save` is only ever a change to a session that
        // `create` made.
        self.write(record, Write::Existing).await.map(drop)
    }

    async fn load(&self, id: &Id) -> StoreResult<Option<Record>> {
        let Some(raw) = self
            .backend
            .get(&self.key(id))
            .await
            .map_err(backend_error)?
        else {
            return Ok(None);
        };
        let stored: Stored<'static> =
            serde_json::from_slice(&raw).map_err(|e| StoreError::Decode(e.to_string()))?;
        let nanos = i128::try_from(stored.e.saturating_mul(1_000_000))
            .map_err(|e| StoreError::Decode(e.to_string()))?;
        let expiry_date = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|e| StoreError::Decode(e.to_string()))?;
        Ok(Some(Record {
            id: *id,
            data: stored.d.into_owned(),
            expiry_date,
        }))
    }

    async fn delete(&self, id: &Id) -> StoreResult<()> {
        self.backend
            .delete(&self.key(id))
            .await
            .map(drop)
            .map_err(backend_error)
    }
}
