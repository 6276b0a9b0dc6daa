//! The session store seam: what the layer asks of a store, one domain
//! operation at a time, each atomic by contract.
//!
//! The crate implements [`SessionStore`] for [`Backend`](crate::Backend),
//! [`RedisBackend`](crate::redis::RedisBackend) and
//! [`MemoryBackend`](crate::memory::MemoryBackend); implement it to keep
//! sessions elsewhere. The request types are built by the layer; the
//! response types have constructors for your implementation. All are
//! `#[non_exhaustive]`, so fields can be added without breaking you.
//!
//! A store that wraps another (to count or log calls, say) forwards each
//! method:
//!
//! ```
//! use std::future::Future;
//! use redis_layers::session::store::*;
//! use redis_layers::session::{SessionHandle, SessionInfo};
//! use redis_layers::Error;
//!
//! #[derive(Clone)]
//! struct Logged<S>(S);
//!
//! impl<S: SessionStore> SessionStore for Logged<S> {
//!     fn load(&self, h: &SessionHandle, r: &LoadRequest)
//!         -> impl Future<Output = Result<LoadOutcome, Error>> + Send {
//!         tracing::debug!(handle = %h, "load");
//!         self.0.load(h, r)
//!     }
//!     fn save(&self, h: &SessionHandle, r: &SaveRequest)
//!         -> impl Future<Output = Result<SaveOutcome, Error>> + Send { self.0.save(h, r) }
//!     fn delete(&self, h: &SessionHandle, r: &DeleteRequest)
//!         -> impl Future<Output = Result<DeleteOutcome, Error>> + Send { self.0.delete(h, r) }
//!     fn index_add(&self, u: &str, h: &SessionHandle, d: u64)
//!         -> impl Future<Output = Result<(), Error>> + Send { self.0.index_add(u, h, d) }
//!     fn index_remove(&self, u: &str, h: &SessionHandle)
//!         -> impl Future<Output = Result<(), Error>> + Send { self.0.index_remove(u, h) }
//!     fn list(&self, u: &str)
//!         -> impl Future<Output = Result<Vec<SessionInfo>, Error>> + Send { self.0.list(u) }
//! }
//! ```

use std::time::{Duration, SystemTime};

pub use super::data::SessionData;
use super::id::SessionHandle;
use crate::error::Error;

crate::seam::store_seam! {
    /// Where sessions live.
    ///
    /// Every change is atomic and timed by the store's own clock (never the
    /// application's): on Redis each is one Lua script. A load may read first
    /// and then touch, but the touch re-checks everything by the store's clock,
    /// so an estimate in between can only send it too early (declined) or late.
    /// Each operation touches the keys of one session or of one user, never
    /// both, so each maps to one Redis Cluster slot.
    pub trait SessionStore: Send + Sync + 'static {
        /// Loads a session, or only checks it and slides its expiry when
        /// [`LoadRequest::fields`] is false. Slides the idle expiry only when the
        /// new expiry, `min(now + idle, deadline)`, would be later than the
        /// current one by more than [`LoadRequest::touch_interval`], where
        /// `idle` is the session's own ([`SessionRecord::idle`]) when it has
        /// one, else [`LoadRequest::idle`]. A session with its own whose
        /// expiry was set with another (`expires − seen` differs, below the
        /// deadline: an older version slid it) is touched too, even to an
        /// earlier expiry.
        async fn load<'a, 'b, 'c>(
            &'a self,
            handle: &'b SessionHandle,
            request: &'c LoadRequest,
        ) -> Result<LoadOutcome, Error>;

        /// Applies one request's changes to a session (or creates one) and
        /// slides its expiry by its own idle timeout (after the request's
        /// [`SaveRequest::own_idle`] change), else [`SaveRequest::idle`]. An
        /// update never recreates a session that is gone; a create never
        /// overwrites one that exists.
        async fn save<'a, 'b, 'c>(
            &'a self,
            handle: &'b SessionHandle,
            request: &'c SaveRequest,
        ) -> Result<SaveOutcome, Error>;

        /// Deletes a session, if it meets the request's conditions.
        async fn delete<'a, 'b, 'c>(
            &'a self,
            handle: &'b SessionHandle,
            request: &'c DeleteRequest,
        ) -> Result<DeleteOutcome, Error>;

        /// Records that `handle` belongs to `user` until `deadline_ms` (its
        /// absolute deadline, Unix ms), and prunes the user's entries past their
        /// deadline.
        async fn index_add<'a, 'b, 'c>(
            &'a self,
            user: &'b str,
            handle: &'c SessionHandle,
            deadline_ms: u64,
        ) -> Result<(), Error>;

        /// Removes `handle` from `user`'s index.
        async fn index_remove<'a, 'b, 'c>(
            &'a self,
            user: &'b str,
            handle: &'c SessionHandle,
        ) -> Result<(), Error>;

        /// The live sessions bound to `user`, oldest first, pruning index
        /// entries of sessions that ended.
        async fn list<'a, 'b>(&'a self, user: &'b str) -> Result<Vec<SessionInfo>, Error>;
    }
    dyn DynSessionStore;
    enum Store;
}

/// Options of [`SessionStore::load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadRequest {
    /// The idle timeout the expiry slides to, for a session without one of
    /// its own ([`SessionRecord::idle`]).
    pub idle: Duration,
    /// The expiry moves only when it would move by more than this.
    pub touch_interval: Duration,
    /// Return the session's contents (false: only check and touch).
    pub fields: bool,
}

impl LoadRequest {
    /// A load of the whole session.
    pub fn new(idle: Duration, touch_interval: Duration) -> Self {
        LoadRequest {
            idle,
            touch_interval,
            fields: true,
        }
    }

    /// Only check the session exists and slide its expiry when due.
    #[must_use]
    pub fn touch_only(mut self) -> Self {
        self.fields = false;
        self
    }
}

/// What [`SessionStore::load`] found under a handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadOutcome {
    /// A live session.
    Found(Loaded),
    /// No session (never created, expired, destroyed or revoked).
    Missing,
    /// The session was renewed moments ago: its id was replaced (see
    /// [`DeleteRequest::renewal`]). The old id gives no access to the
    /// successor (that is what a renewal is for), but the layer answers
    /// differently: a write is refused (409) rather than starting a new
    /// session, and the client's cookie is left alone, since the client
    /// most likely holds the successor's already.
    Renewed,
}

impl LoadOutcome {
    /// The session, if one was found.
    pub fn found(self) -> Option<Loaded> {
        match self {
            LoadOutcome::Found(loaded) => Some(loaded),
            _ => None,
        }
    }
}

/// A live session, as [`SessionStore::load`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded {
    /// Time until the session expires, as of the load.
    pub expires_in: Duration,
    /// True when this load moved the expiry.
    pub touched: bool,
    /// The session's contents, when [`LoadRequest::fields`] was set.
    pub record: Option<SessionRecord>,
}

impl Loaded {
    /// A load result.
    pub fn new(expires_in: Duration, touched: bool, record: Option<SessionRecord>) -> Self {
        Loaded {
            expires_in,
            touched,
            record,
        }
    }
}

/// A session's contents and metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionRecord {
    /// Data: key to JSON text.
    pub data: SessionData,
    /// When the session was created, Unix ms.
    pub created_ms: u64,
    /// Its absolute deadline, Unix ms.
    pub deadline_ms: u64,
    /// When it was last seen active (updated when the expiry slides), Unix ms.
    pub last_seen_ms: u64,
    /// The user it is bound to.
    pub user: Option<String>,
    /// The User-Agent of the request that created it.
    pub user_agent: Option<String>,
    /// Its own idle timeout ("remember me", or a shortened session), which
    /// the expiry slides by instead of the layer's.
    pub idle: Option<Duration>,
    /// Its own cookie persistence: `Some(true)`, a cookie with `Max-Age`
    /// running to the absolute deadline; `Some(false)`, one that ends with
    /// the browser; `None`, the layer's setting.
    pub persistent: Option<bool>,
    /// How many saves the session has seen; a renewal deletes the old
    /// record only at the revision it copied (see [`DeleteRequest::revision`]).
    pub revision: u64,
}

impl SessionRecord {
    /// An empty record created at `created_ms` (and last seen then) that
    /// ends at the latest at `deadline_ms`.
    pub fn new(created_ms: u64, deadline_ms: u64) -> Self {
        SessionRecord {
            created_ms,
            deadline_ms,
            last_seen_ms: created_ms,
            ..SessionRecord::default()
        }
    }
}

/// The changes of one request, for [`SessionStore::save`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveRequest {
    /// Create or update.
    pub mode: SaveMode,
    /// The idle timeout.
    pub idle: Duration,
    /// The absolute timeout (used when creating without a kept deadline).
    pub absolute: Duration,
    /// Remove every data key before applying `data`.
    pub clear: bool,
    /// Data keys to set (`Some(json)`, never empty JSON text) or remove (`None`).
    pub data: Vec<(String, Option<String>)>,
    /// Bind to a user (`Some(Some(id))`) or unbind (`Some(None)`).
    pub user: Option<Option<String>>,
    /// Give the session its own idle timeout (`Some(Some(idle))`), or drop
    /// it to slide by [`idle`](Self::idle) again (`Some(None)`).
    pub own_idle: Option<Option<Duration>>,
    /// Set (`Some(Some(_))`) or drop (`Some(None)`) the session's own
    /// cookie persistence ([`SessionRecord::persistent`]).
    pub own_persistent: Option<Option<bool>>,
}

impl SaveRequest {
    /// Changes to an existing session.
    pub fn update(idle: Duration) -> Self {
        SaveRequest::new(SaveMode::Update, idle, Duration::ZERO)
    }

    /// A new session that ends at the latest `absolute` after it is created.
    pub fn create(idle: Duration, absolute: Duration, user_agent: Option<String>) -> Self {
        let mode = SaveMode::Create {
            created_ms: None,
            deadline_ms: None,
            user_agent,
        };
        SaveRequest::new(mode, idle, absolute)
    }

    /// A new session that keeps an old one's creation time and absolute
    /// deadline (id renewal).
    pub fn renewal(
        idle: Duration,
        created_ms: u64,
        deadline_ms: u64,
        user_agent: Option<String>,
    ) -> Self {
        let mode = SaveMode::Create {
            created_ms: Some(created_ms),
            deadline_ms: Some(deadline_ms),
            user_agent,
        };
        SaveRequest::new(mode, idle, Duration::ZERO)
    }

    fn new(mode: SaveMode, idle: Duration, absolute: Duration) -> Self {
        SaveRequest {
            mode,
            idle,
            absolute,
            clear: false,
            data: Vec::new(),
            user: None,
            own_idle: None,
            own_persistent: None,
        }
    }

    /// Sets (`Some(json)`) or removes (`None`) a data key.
    #[must_use]
    pub fn change(mut self, key: impl Into<String>, json: Option<String>) -> Self {
        self.data.push((key.into(), json));
        self
    }

    /// Removes every data key before the changes apply.
    #[must_use]
    pub fn clear_data(mut self) -> Self {
        self.clear = true;
        self
    }

    /// Binds the session to `user`, or unbinds it (`None`).
    #[must_use]
    pub fn user(mut self, user: Option<String>) -> Self {
        self.user = Some(user);
        self
    }

    /// Gives the session its own idle timeout, or drops it (`None`).
    #[must_use]
    pub fn own_idle(mut self, idle: Option<Duration>) -> Self {
        self.own_idle = Some(idle);
        self
    }

    /// Sets the session's own cookie persistence, or drops it (`None`).
    #[must_use]
    pub fn own_persistent(mut self, persistent: Option<bool>) -> Self {
        self.own_persistent = Some(persistent);
        self
    }
}

/// Whether [`SessionStore::save`] creates or updates.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaveMode {
    /// Change an existing session; do nothing if it is gone.
    Update,
    /// Create a session; do nothing if the handle exists.
    #[non_exhaustive]
    Create {
        /// Creation time to keep (id renewal), else now.
        created_ms: Option<u64>,
        /// Absolute deadline to keep (id renewal), else now + absolute.
        deadline_ms: Option<u64>,
        /// The creating request's User-Agent.
        user_agent: Option<String>,
    },
}

/// What [`SessionStore::save`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaveOutcome {
    /// Saved; the session now expires in `expires_in` and ends at the
    /// latest at `deadline_ms`, `ends_in` from now.
    #[non_exhaustive]
    Saved {
        /// Time until the session expires, as of the save.
        expires_in: Duration,
        /// Time until its absolute deadline, as of the save (by the store's
        /// clock).
        ends_in: Duration,
        /// Absolute deadline, Unix ms.
        deadline_ms: u64,
    },
    /// Update of a session that no longer exists (or a create whose kept
    /// deadline has passed): nothing written.
    Missing,
    /// Update of a session renewed moments ago (see [`LoadOutcome::Renewed`]):
    /// nothing written.
    Renewed,
    /// Create with a handle that exists: nothing written.
    Exists,
}

impl SaveOutcome {
    /// [`SaveOutcome::Saved`]: the session expires in `expires_in` and ends
    /// at `deadline_ms`, which is `ends_in` from now. Both durations must come
    /// from the store's own clock: the layer gives a persistent cookie
    /// `Max-Age` = `ends_in`.
    pub fn saved(expires_in: Duration, ends_in: Duration, deadline_ms: u64) -> Self {
        SaveOutcome::Saved {
            expires_in,
            ends_in,
            deadline_ms,
        }
    }
}

/// The conditions of [`SessionStore::delete`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteRequest {
    /// Delete only a session bound to this user.
    pub owner: Option<String>,
    /// Delete only a session still at this [revision](SessionRecord::revision)
    /// (no save since it was read).
    pub revision: Option<u64>,
    /// Leave a marker naming this successor for [`RENEWED_MARKER_TTL`]
    /// instead of nothing, so that requests still carrying the old id see
    /// [`LoadOutcome::Renewed`] (set by [`DeleteRequest::renewal`]).
    pub successor: Option<SessionHandle>,
}

/// How long the marker of a renewed session stays. Requests that carry the
/// old id within this time (a double-submitted login form, requests in
/// flight) are told the session was renewed, not that it is gone, so they
/// neither start a second session nor clear the client's new cookie; after
/// it, the old id is simply unknown.
pub const RENEWED_MARKER_TTL: Duration = Duration::from_secs(10);

impl DeleteRequest {
    /// Delete whatever session is there.
    pub fn any() -> Self {
        DeleteRequest::default()
    }

    /// Delete only a session bound to `user`.
    #[must_use]
    pub fn owned_by(mut self, user: impl Into<String>) -> Self {
        self.owner = Some(user.into());
        self
    }

    /// Delete only a session still at `revision`: a compare-and-delete, so
    /// that a renewal never drops a change saved after it read the session.
    #[must_use]
    pub fn at_revision(mut self, revision: u64) -> Self {
        self.revision = Some(revision);
        self
    }

    /// Retire a session whose id a renewal replaced with `successor`: only
    /// at `revision`, leaving a marker that names the successor for
    /// [`RENEWED_MARKER_TTL`].
    pub fn renewal(revision: u64, successor: SessionHandle) -> Self {
        DeleteRequest {
            revision: Some(revision),
            successor: Some(successor),
            ..DeleteRequest::default()
        }
    }
}

/// What [`SessionStore::delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeleteOutcome {
    /// Deleted; `user` is the user it was bound to.
    #[non_exhaustive]
    Deleted {
        /// The user it was bound to.
        user: Option<String>,
    },
    /// There was no such session.
    Missing,
    /// Only the marker a renewal left: nothing deleted. `successor` is the
    /// session that replaced it (a logout carrying the old id ends it too).
    #[non_exhaustive]
    Renewed {
        /// The successor's handle, as the marker names it.
        successor: Option<SessionHandle>,
    },
    /// It is bound to another user than [`DeleteRequest::owner`]: nothing
    /// deleted.
    NotOwned,
    /// It was saved since [`DeleteRequest::revision`]: nothing deleted.
    Changed,
}

impl DeleteOutcome {
    /// [`DeleteOutcome::Deleted`].
    pub fn deleted(user: Option<String>) -> Self {
        DeleteOutcome::Deleted { user }
    }

    /// [`DeleteOutcome::Renewed`].
    pub fn renewed(successor: Option<SessionHandle>) -> Self {
        DeleteOutcome::Renewed { successor }
    }
}

/// One entry of a user's session list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's public handle (pass it to
    /// [`Session::revoke`](super::Session::revoke)).
    pub handle: SessionHandle,
    /// When it was created.
    pub created: SystemTime,
    /// When it was last seen active (to the touch interval).
    pub last_seen: SystemTime,
    /// The User-Agent it was created with, as the client sent it.
    pub user_agent: Option<String>,
    /// True for the session of the request that asked.
    pub current: bool,
}

impl SessionInfo {
    /// A list entry (not [`current`](Self::current); the layer marks that).
    pub fn new(
        handle: SessionHandle,
        created: SystemTime,
        last_seen: SystemTime,
        user_agent: Option<String>,
    ) -> Self {
        SessionInfo {
            handle,
            created,
            last_seen,
            user_agent,
            current: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBackend;
    use crate::redis::RedisBackend;
    use crate::Backend;

    #[derive(Clone)]
    struct Wrapped(MemoryBackend);

    impl SessionStore for Wrapped {
        async fn load(&self, h: &SessionHandle, r: &LoadRequest) -> Result<LoadOutcome, Error> {
            SessionStore::load(&self.0, h, r).await
        }
        async fn save(&self, h: &SessionHandle, r: &SaveRequest) -> Result<SaveOutcome, Error> {
            SessionStore::save(&self.0, h, r).await
        }
        async fn delete(
            &self,
            h: &SessionHandle,
            r: &DeleteRequest,
        ) -> Result<DeleteOutcome, Error> {
            SessionStore::delete(&self.0, h, r).await
        }
        async fn index_add(&self, u: &str, h: &SessionHandle, d: u64) -> Result<(), Error> {
            SessionStore::index_add(&self.0, u, h, d).await
        }
        async fn index_remove(&self, u: &str, h: &SessionHandle) -> Result<(), Error> {
            SessionStore::index_remove(&self.0, u, h).await
        }
        async fn list(&self, u: &str) -> Result<Vec<SessionInfo>, Error> {
            SessionStore::list(&self.0, u).await
        }
    }

    #[tokio::test]
    async fn the_crate_backends_are_called_directly_and_other_stores_through_a_pointer() {
        let memory = MemoryBackend::new();
        assert!(matches!(
            Store::new(memory.clone()),
            Store::Backend(Backend::Memory(_))
        ));
        let backend: Backend = memory.clone().into();
        assert!(matches!(
            Store::new(backend),
            Store::Backend(Backend::Memory(_))
        ));
        let redis = RedisBackend::from_url("redis://127.0.0.1:1").unwrap();
        assert!(matches!(
            Store::new(redis),
            Store::Backend(Backend::Redis(_))
        ));
        let wrapped = Store::new(Wrapped(memory));
        assert!(matches!(wrapped, Store::Custom(_)));
        // Both paths reach the store.
        let handle = SessionHandle::parse("00112233445566778899aabbccddeeff").unwrap();
        let request = LoadRequest::new(Duration::from_secs(60), Duration::ZERO);
        assert_eq!(
            wrapped.load(&handle, &request).await.unwrap(),
            LoadOutcome::Missing
        );
    }
}
