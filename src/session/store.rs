//! The session store seam: domain operations, each atomic by contract.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::id::SessionHandle;
use crate::error::Error;

/// Where sessions live. The Redis store implements each operation with one
/// Lua script (or one command), the memory store under one lock; implement
/// it to keep sessions elsewhere.
///
/// Every operation is atomic, reads the time from the store's own clock, and
/// touches the keys of one session or of one user, never both (so each maps
/// to one Redis Cluster slot).
pub trait SessionStore: Clone + Send + Sync + 'static {
    /// Loads a session, or only slides its expiry when `request.fields` is
    /// false. Slides the idle expiry only when the new expiry would be later
    /// than the current one by more than `request.touch_interval`. `None`
    /// when there is no live session under `handle`.
    fn load(
        &self,
        handle: &SessionHandle,
        request: &LoadRequest,
    ) -> impl Future<Output = Result<Option<Loaded>, Error>> + Send;

    /// Applies one request's changes to a session (or creates one), and
    /// slides its expiry. An update never recreates a session that is gone.
    fn save(
        &self,
        handle: &SessionHandle,
        request: &SaveRequest,
    ) -> impl Future<Output = Result<SaveOutcome, Error>> + Send;

    /// Deletes a session; with `only_for_user`, only when it is bound to
    /// that user.
    fn delete(
        &self,
        handle: &SessionHandle,
        only_for_user: Option<&str>,
    ) -> impl Future<Output = Result<DeleteOutcome, Error>> + Send;

    /// Records that `handle` belongs to `user` until `deadline_ms` (its
    /// absolute deadline), and prunes the user's entries past their deadline.
    fn index_add(
        &self,
        user: &str,
        handle: &SessionHandle,
        deadline_ms: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes `handle` from `user`'s index.
    fn index_remove(
        &self,
        user: &str,
        handle: &SessionHandle,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The live sessions bound to `user`, pruning entries of sessions that
    /// ended.
    fn list(&self, user: &str) -> impl Future<Output = Result<Vec<SessionInfo>, Error>> + Send;
}

/// Options of [`SessionStore::load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadRequest {
    /// The idle timeout the expiry slides to.
    pub idle: Duration,
    /// The expiry moves only when it would move by more than this.
    pub touch_interval: Duration,
    /// Return the session's fields (false: only touch).
    pub fields: bool,
}

/// What [`SessionStore::load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Time until the session expires, as of the load.
    pub expires_in: Duration,
    /// True when this load moved the expiry.
    pub touched: bool,
    /// The session's contents, when [`LoadRequest::fields`] was set.
    pub record: Option<SessionRecord>,
}

/// A session's contents and metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRecord {
    /// Data fields: key to JSON text.
    pub data: HashMap<String, String>,
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
}

/// Changes of [`SessionStore::save`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRequest {
    /// Create or update.
    pub mode: SaveMode,
    /// The idle timeout.
    pub idle: Duration,
    /// The absolute timeout (used when creating without a kept deadline).
    pub absolute: Duration,
    /// Remove every data field before applying `data`.
    pub clear: bool,
    /// Data fields to set (`Some(json)`) or remove (`None`).
    pub data: Vec<(String, Option<String>)>,
    /// Bind to a user (`Some(Some(id))`) or unbind (`Some(None)`).
    pub user: Option<Option<String>>,
}

/// Whether [`SessionStore::save`] creates or updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveMode {
    /// Change an existing session; do nothing if it is gone.
    Update,
    /// Create a session; do nothing if the handle exists.
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
pub enum SaveOutcome {
    /// Saved; the session now expires in `expires_in` and ends at the
    /// latest at `deadline_ms`.
    Saved {
        /// Time until the session expires, as of the save.
        expires_in: Duration,
        /// Absolute deadline, Unix ms.
        deadline_ms: u64,
    },
    /// Update of a session that no longer exists: nothing written.
    Missing,
    /// Create with a handle that exists: nothing written.
    Exists,
}

/// What [`SessionStore::delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Deleted; it was bound to this user.
    Deleted {
        /// The user it was bound to.
        user: Option<String>,
    },
    /// There was no such session.
    Missing,
    /// It is bound to another user: nothing deleted.
    NotOwned,
}

/// One entry of a user's session list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session's public handle (pass it to [`Session::revoke`](super::Session::revoke)).
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

pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Field names in the stored hash: data under `d:`, metadata under `m:`.
pub(crate) mod fields {
    pub(crate) const DATA: &str = "d:";
    pub(crate) const CREATED: &str = "m:created";
    pub(crate) const DEADLINE: &str = "m:deadline";
    pub(crate) const SEEN: &str = "m:seen";
    pub(crate) const USER: &str = "m:user";
    pub(crate) const USER_AGENT: &str = "m:ua";
}

impl SessionRecord {
    /// Builds a record from the stored hash's fields.
    pub(crate) fn from_fields<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut record = SessionRecord::default();
        for (field, value) in pairs {
            if let Some(key) = field.strip_prefix(fields::DATA) {
                record.data.insert(key.to_owned(), value);
                continue;
            }
            match field.as_str() {
                fields::CREATED => record.created_ms = value.parse().unwrap_or(0),
                fields::DEADLINE => record.deadline_ms = value.parse().unwrap_or(0),
                fields::SEEN => record.last_seen_ms = value.parse().unwrap_or(0),
                fields::USER => record.user = Some(value),
                fields::USER_AGENT => record.user_agent = Some(value),
                _ => {}
            }
        }
        record
    }
}

impl SaveRequest {
    /// The hash fields this save writes (`Some`) or deletes (`None`), in order.
    pub(crate) fn field_changes(&self) -> Vec<(String, Option<&str>)> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        if let SaveMode::Create {
            user_agent: Some(ua),
            ..
        } = &self.mode
        {
            out.push((fields::USER_AGENT.to_owned(), Some(ua.as_str())));
        }
        if let Some(user) = &self.user {
            out.push((fields::USER.to_owned(), user.as_deref()));
        }
        for (key, value) in &self.data {
            out.push((format!("{}{key}", fields::DATA), value.as_deref()));
        }
        out
    }
}
