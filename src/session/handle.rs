//! The per-request [`Session`] handle and what happens when the response
//! goes out.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use super::cookie::CookieConfig;
use super::id::{SessionHandle, SessionId};
use super::store::{
    DeleteOutcome, LoadRequest, Loaded, SaveMode, SaveOutcome, SaveRequest, SessionInfo,
    SessionRecord, SessionStore,
};
use super::{Activity, FailurePolicy, SessionError};
use crate::error::Error;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`SessionStore`] behind a pointer, so [`Session`] needs no type parameter.
pub(crate) trait DynStore: Send + Sync {
    fn load<'a>(
        &'a self,
        h: &'a SessionHandle,
        r: &'a LoadRequest,
    ) -> BoxFuture<'a, Result<Option<Loaded>, Error>>;
    fn save<'a>(
        &'a self,
        h: &'a SessionHandle,
        r: &'a SaveRequest,
    ) -> BoxFuture<'a, Result<SaveOutcome, Error>>;
    fn delete<'a>(
        &'a self,
        h: &'a SessionHandle,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<DeleteOutcome, Error>>;
    fn index_add<'a>(
        &'a self,
        user: &'a str,
        h: &'a SessionHandle,
        deadline_ms: u64,
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn index_remove<'a>(
        &'a self,
        user: &'a str,
        h: &'a SessionHandle,
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn list<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<SessionInfo>, Error>>;
}

impl<T: SessionStore> DynStore for T {
    fn load<'a>(
        &'a self,
        h: &'a SessionHandle,
        r: &'a LoadRequest,
    ) -> BoxFuture<'a, Result<Option<Loaded>, Error>> {
        Box::pin(SessionStore::load(self, h, r))
    }
    fn save<'a>(
        &'a self,
        h: &'a SessionHandle,
        r: &'a SaveRequest,
    ) -> BoxFuture<'a, Result<SaveOutcome, Error>> {
        Box::pin(SessionStore::save(self, h, r))
    }
    fn delete<'a>(
        &'a self,
        h: &'a SessionHandle,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<DeleteOutcome, Error>> {
        Box::pin(SessionStore::delete(self, h, user))
    }
    fn index_add<'a>(
        &'a self,
        user: &'a str,
        h: &'a SessionHandle,
        deadline_ms: u64,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(SessionStore::index_add(self, user, h, deadline_ms))
    }
    fn index_remove<'a>(
        &'a self,
        user: &'a str,
        h: &'a SessionHandle,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(SessionStore::index_remove(self, user, h))
    }
    fn list<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<SessionInfo>, Error>> {
        Box::pin(SessionStore::list(self, user))
    }
}

/// Configuration shared by a layer's sessions.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn DynStore>,
    pub(crate) cookie: CookieConfig,
    pub(crate) idle: Duration,
    pub(crate) absolute: Duration,
    pub(crate) touch_interval: Duration,
    pub(crate) activity: Activity,
    pub(crate) failure: FailurePolicy,
}

/// What the store told us about the cookie's session.
#[derive(Debug)]
enum Known {
    /// Not asked yet.
    Unknown,
    /// Asked: no live session (or no cookie at all).
    Absent,
    /// Loaded.
    Present(SessionRecord),
}

struct State {
    /// The id from the cookie, well-formed; not yet known to exist.
    cookie_id: Option<SessionId>,
    known: Known,
    /// The session's expiry as last seen (local monotonic clock).
    expires_at: Option<Instant>,
    /// The last load moved the expiry.
    touched: bool,
    /// A store call failed under the fail-open policy: do nothing more.
    degraded: bool,
    user_agent: Option<http::HeaderValue>,
}

/// What handlers changed; recorded without touching the store, behind a
/// plain mutex so the recording methods need no `.await`.
#[derive(Default)]
struct Edits {
    /// Data changes: key to JSON (`None` removes).
    changes: BTreeMap<String, Option<String>>,
    clear: bool,
    user_change: Option<Option<String>>,
    cycle: bool,
    destroyed: bool,
}

impl Edits {
    fn is_dirty(&self) -> bool {
        !self.changes.is_empty() || self.clear || self.user_change.is_some() || self.cycle
    }
}

/// The session of one request: read and change it from a handler.
///
/// Values are stored as JSON, one field per key; a request writes only the
/// keys it changed, when the response goes out. Methods that may need the
/// store are `async`; the others only record a change and return at once.
/// Get it in axum with the extractor (`session: Session`), or from the
/// request extensions.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    /// What the store said; locked across store calls. Lock it before
    /// `edits`, never the other way round.
    state: Arc<Mutex<State>>,
    edits: Arc<std::sync::Mutex<Edits>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// Longest user id accepted by [`Session::set_user`].
const MAX_USER_LEN: usize = 256;
/// Longest User-Agent kept in a session's metadata.
const MAX_USER_AGENT_LEN: usize = 256;

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, headers: &HeaderMap) -> Self {
        let cookie_id = shared.cookie.read(headers);
        // Kept as the raw header (a cheap clone); turned into text only if
        // a session is created.
        let user_agent = headers.get(http::header::USER_AGENT).cloned();
        let known = if cookie_id.is_some() {
            Known::Unknown
        } else {
            Known::Absent
        };
        Session {
            shared,
            state: Arc::new(Mutex::new(State {
                cookie_id,
                known,
                expires_at: None,
                touched: false,
                degraded: false,
                user_agent,
            })),
            edits: Arc::default(),
        }
    }

    /// The recorded edits (held briefly, never across an `.await`).
    fn edits(&self) -> std::sync::MutexGuard<'_, Edits> {
        self.edits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the session if not done yet. Under fail-open a store failure
    /// counts as "no session".
    async fn ensure_loaded<'a>(
        &'a self,
        state: &mut tokio::sync::MutexGuard<'a, State>,
    ) -> Result<(), SessionError> {
        if !matches!(state.known, Known::Unknown) {
            return Ok(());
        }
        let Some(id) = state.cookie_id.clone() else {
            state.known = Known::Absent;
            return Ok(());
        };
        let request = LoadRequest {
            idle: self.shared.idle,
            touch_interval: self.shared.touch_interval,
            fields: true,
        };
        match self.shared.store.load(&id.handle(), &request).await {
            Ok(Some(loaded)) => {
                state.expires_at = Instant::now().checked_add(loaded.expires_in);
                state.touched = loaded.touched;
                state.known = Known::Present(loaded.record.unwrap_or_default());
                Ok(())
            }
            Ok(None) => {
                state.known = Known::Absent;
                Ok(())
            }
            Err(e) => self.store_failed(state, e),
        }
    }

    fn store_failed(&self, state: &mut State, e: Error) -> Result<(), SessionError> {
        match self.shared.failure {
            FailurePolicy::Closed => Err(SessionError::Store(e)),
            FailurePolicy::Open => {
                tracing::warn!(error = %e, "session store failed; continuing without a session");
                state.known = Known::Absent;
                state.degraded = true;
                Ok(())
            }
        }
    }

    /// The value under `key`, decoded from JSON; `None` when absent.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        let edits = self.edits();
        let json = match edits.changes.get(key) {
            Some(change) => change.clone(),
            None if edits.clear => None,
            None => match &state.known {
                Known::Present(record) => record.data.get(key).cloned(),
                _ => None,
            },
        };
        drop(edits);
        match json {
            None => Ok(None),
            Some(json) => {
                serde_json::from_str(&json)
                    .map(Some)
                    .map_err(|source| SessionError::Deserialize {
                        key: key.to_owned(),
                        source,
                    })
            }
        }
    }

    /// Sets `key` to `value` (as JSON). Needs no store access: only this key
    /// is written when the response goes out, and a session is created then
    /// if there is none.
    pub fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        let json = serde_json::to_string(&value).map_err(SessionError::Serialize)?;
        self.edits().changes.insert(key.to_owned(), Some(json));
        Ok(())
    }

    /// Removes `key` when the response goes out.
    pub fn remove(&self, key: &str) {
        self.edits().changes.insert(key.to_owned(), None);
    }

    /// Removes every key when the response goes out (the user binding and
    /// metadata stay).
    pub fn clear(&self) {
        let mut edits = self.edits();
        edits.changes.clear();
        edits.clear = true;
    }

    /// The session's id, when a session exists (loads it to find out).
    pub async fn id(&self) -> Result<Option<SessionId>, SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        Ok(match state.known {
            Known::Present(_) => state.cookie_id.clone(),
            _ => None,
        })
    }

    /// Gives the session a new id when the response goes out (call it on
    /// login or any privilege change). The data moves to the new id; the new
    /// record is written before the old one is deleted, so a failure between
    /// the two loses nothing.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        self.edits().cycle = true;
        Ok(())
    }

    /// Binds the session to `user` (for example at login, with
    /// [`cycle_id`](Self::cycle_id)), so it appears in the user's
    /// [`sessions`](Self::sessions) list. The user id must be 1 to 256 bytes.
    pub fn set_user(&self, user: impl Into<String>) -> Result<(), SessionError> {
        let user = user.into();
        if user.is_empty() || user.len() > MAX_USER_LEN {
            return Err(SessionError::InvalidUser);
        }
        self.edits().user_change = Some(Some(user));
        Ok(())
    }

    /// The user the session is bound to.
    pub async fn user(&self) -> Result<Option<String>, SessionError> {
        let mut state = self.state.lock().await;
        if let Some(change) = &self.edits().user_change {
            return Ok(change.clone());
        }
        self.ensure_loaded(&mut state).await?;
        Ok(match &state.known {
            Known::Present(record) => record.user.clone(),
            _ => None,
        })
    }

    /// Logs out: deletes the session from the store now and expires the
    /// cookie in the response. Changes made in this request are dropped.
    pub async fn destroy(&self) -> Result<(), SessionError> {
        let mut state = self.state.lock().await;
        *self.edits() = Edits {
            destroyed: true,
            ..Edits::default()
        };
        let Some(id) = state.cookie_id.clone() else {
            return Ok(());
        };
        state.known = Known::Absent;
        let handle = id.handle();
        match self.shared.store.delete(&handle, None).await {
            Ok(DeleteOutcome::Deleted { user: Some(user) }) => {
                if let Err(e) = self.shared.store.index_remove(&user, &handle).await {
                    // The index entry is pruned on the next listing anyway.
                    tracing::debug!(error = %e, "could not remove a destroyed session from its user index");
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(SessionError::Store(e)),
        }
    }

    /// The sessions of the user this session is bound to, oldest first,
    /// with this one marked [`current`](SessionInfo::current). Empty when
    /// the session is not bound to a user.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, SessionError> {
        let (user, current) = self.user_and_handle().await?;
        let Some(user) = user else {
            return Ok(Vec::new());
        };
        let mut list = self
            .shared
            .store
            .list(&user)
            .await
            .map_err(SessionError::Store)?;
        for info in &mut list {
            info.current = Some(&info.handle) == current.as_ref();
        }
        Ok(list)
    }

    /// Revokes one of this user's sessions by its handle (as listed by
    /// [`sessions`](Self::sessions)). Returns false when the handle is
    /// malformed or names no session of this user. Revoking the current
    /// session is [`destroy`](Self::destroy).
    pub async fn revoke(&self, handle: &str) -> Result<bool, SessionError> {
        let Some(handle) = SessionHandle::parse(handle) else {
            return Ok(false);
        };
        let (user, current) = self.user_and_handle().await?;
        let Some(user) = user else { return Ok(false) };
        if current.as_ref() == Some(&handle) {
            self.destroy().await?;
            return Ok(true);
        }
        self.revoke_handle(&user, &handle).await
    }

    /// Revokes every session of this user except the current one ("log out
    /// other devices"); returns how many were revoked.
    pub async fn revoke_others(&self) -> Result<usize, SessionError> {
        let (user, current) = self.user_and_handle().await?;
        let Some(user) = user else { return Ok(0) };
        let list = self
            .shared
            .store
            .list(&user)
            .await
            .map_err(SessionError::Store)?;
        let mut revoked = 0;
        for info in list {
            if Some(&info.handle) != current.as_ref()
                && self.revoke_handle(&user, &info.handle).await?
            {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    async fn revoke_handle(
        &self,
        user: &str,
        handle: &SessionHandle,
    ) -> Result<bool, SessionError> {
        let store = &self.shared.store;
        match store
            .delete(handle, Some(user))
            .await
            .map_err(SessionError::Store)?
        {
            DeleteOutcome::Deleted { .. } => {
                store
                    .index_remove(user, handle)
                    .await
                    .map_err(SessionError::Store)?;
                Ok(true)
            }
            DeleteOutcome::Missing => {
                store
                    .index_remove(user, handle)
                    .await
                    .map_err(SessionError::Store)?;
                Ok(false)
            }
            DeleteOutcome::NotOwned => Ok(false),
        }
    }

    async fn user_and_handle(
        &self,
    ) -> Result<(Option<String>, Option<SessionHandle>), SessionError> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state).await?;
        Ok(match &state.known {
            Known::Present(record) => (
                record.user.clone(),
                state.cookie_id.as_ref().map(SessionId::handle),
            ),
            _ => (None, None),
        })
    }

    /// Writes what the request changed and decides the cookie. Called by
    /// the layer once the inner service answered with a non-5xx status.
    pub(crate) async fn finish(&self, headers: &mut HeaderMap) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if state.degraded {
            return Ok(());
        }
        // The handler is done: take what it recorded.
        let mut edits = std::mem::take(&mut *self.edits());
        if edits.destroyed {
            if state.cookie_id.is_some() {
                self.remove_cookie(headers);
            }
            return Ok(());
        }
        if !edits.is_dirty() {
            return self.finish_untouched(&mut state, headers).await;
        }
        let state = &mut *state;
        match std::mem::replace(&mut state.known, Known::Absent) {
            Known::Present(record) if edits.cycle => {
                self.renew(state, &mut edits, record, headers).await
            }
            Known::Present(record) => {
                let id = state
                    .cookie_id
                    .clone()
                    .ok_or_else(|| Error::decode("loaded session without id"))?;
                self.update(state, &mut edits, &id, record.user.clone(), headers)
                    .await
            }
            Known::Unknown => {
                // A blind write: the save itself checks the session exists.
                let id = state
                    .cookie_id
                    .clone()
                    .ok_or_else(|| Error::decode("unknown session without id"))?;
                self.update(state, &mut edits, &id, None, headers).await
            }
            Known::Absent => self.create(state, &mut edits, headers).await,
        }
    }

    /// No changes: slide the expiry if any request counts as activity, and
    /// re-send a persistent cookie only when its expiry moved.
    async fn finish_untouched(
        &self,
        state: &mut State,
        headers: &mut HeaderMap,
    ) -> Result<(), Error> {
        let shared = &*self.shared;
        let Some(id) = state.cookie_id.clone() else {
            return Ok(());
        };
        match state.known {
            Known::Unknown if shared.activity == Activity::AnyRequest => {
                let request = LoadRequest {
                    idle: shared.idle,
                    touch_interval: shared.touch_interval,
                    fields: false,
                };
                match shared.store.load(&id.handle(), &request).await? {
                    Some(loaded) => {
                        if loaded.touched {
                            self.refresh_cookie(headers, &id, loaded.expires_in);
                        }
                    }
                    None => self.remove_cookie(headers),
                }
            }
            Known::Unknown => {}
            Known::Absent => self.remove_cookie(headers),
            Known::Present(_) => {
                if state.touched {
                    if let Some(at) = state.expires_at {
                        self.refresh_cookie(
                            headers,
                            &id,
                            at.saturating_duration_since(Instant::now()),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn refresh_cookie(&self, headers: &mut HeaderMap, id: &SessionId, expires_in: Duration) {
        if self.shared.cookie.persistent {
            self.set_cookie(headers, id, expires_in);
        }
    }

    fn remove_cookie(&self, headers: &mut HeaderMap) {
        self.shared.cookie.remove(headers);
        no_store(headers);
    }

    fn set_cookie(&self, headers: &mut HeaderMap, id: &SessionId, expires_in: Duration) {
        self.shared.cookie.set(headers, id, Some(expires_in));
        no_store(headers);
    }

    fn save_request(&self, edits: &mut Edits, mode: SaveMode) -> SaveRequest {
        SaveRequest {
            mode,
            idle: self.shared.idle,
            absolute: self.shared.absolute,
            clear: edits.clear,
            data: std::mem::take(&mut edits.changes).into_iter().collect(),
            user: edits.user_change.take(),
        }
    }

    async fn update(
        &self,
        state: &mut State,
        edits: &mut Edits,
        id: &SessionId,
        old_user: Option<String>,
        headers: &mut HeaderMap,
    ) -> Result<(), Error> {
        let shared = &*self.shared;
        let handle = id.handle();
        let new_user = edits.user_change.clone();
        let request = self.save_request(edits, SaveMode::Update);
        match shared.store.save(&handle, &request).await? {
            SaveOutcome::Saved {
                expires_in,
                deadline_ms,
            } => {
                self.reindex(&handle, old_user.as_deref(), new_user, deadline_ms)
                    .await?;
                // The save slid the expiry; a persistent cookie follows when
                // it moved by more than the touch interval.
                let after = Instant::now().checked_add(expires_in);
                let moved = match (state.expires_at, after) {
                    (Some(before), Some(after)) => {
                        after.saturating_duration_since(before) > shared.touch_interval
                    }
                    _ => true,
                };
                if moved || state.touched {
                    self.refresh_cookie(headers, id, expires_in);
                }
                Ok(())
            }
            // Destroyed, revoked or expired while the request ran: never
            // resurrect it; drop the cookie.
            SaveOutcome::Missing | SaveOutcome::Exists => {
                tracing::debug!("session ended during the request; its changes were dropped");
                self.remove_cookie(headers);
                Ok(())
            }
        }
    }

    async fn create(
        &self,
        state: &mut State,
        edits: &mut Edits,
        headers: &mut HeaderMap,
    ) -> Result<(), Error> {
        let holds_data = edits.changes.values().any(Option::is_some)
            || matches!(edits.user_change, Some(Some(_)));
        if !holds_data {
            // Nothing to keep: no session is created for removals alone.
            if state.cookie_id.is_some() {
                self.remove_cookie(headers);
            }
            return Ok(());
        }
        let new_user = edits.user_change.clone();
        let request = self.save_request(
            edits,
            SaveMode::Create {
                created_ms: None,
                deadline_ms: None,
                user_agent: state.user_agent.as_ref().and_then(user_agent_text),
            },
        );
        let (id, expires_in, deadline_ms) = self.create_record(&request).await?;
        self.reindex(&id.handle(), None, new_user, deadline_ms)
            .await?;
        self.set_cookie(headers, &id, expires_in);
        Ok(())
    }

    /// Saves `request` (a create) under a fresh id, retrying on the
    /// (astronomically unlikely) collision.
    async fn create_record(
        &self,
        request: &SaveRequest,
    ) -> Result<(SessionId, Duration, u64), Error> {
        for _ in 0..3 {
            let id = SessionId::generate().map_err(|e| {
                Error::new(crate::ErrorKind::Config, "the OS random source failed")
                    .with_source(e.to_string())
            })?;
            match self.shared.store.save(&id.handle(), request).await? {
                SaveOutcome::Saved {
                    expires_in,
                    deadline_ms,
                } => return Ok((id, expires_in, deadline_ms)),
                SaveOutcome::Exists => continue,
                SaveOutcome::Missing => {
                    return Err(Error::decode("a new session could not be created"))
                }
            }
        }
        Err(Error::decode("three fresh session ids collided"))
    }

    /// Moves the session to a new id: write the new record (all data, the
    /// original creation time and deadline), then delete the old one.
    async fn renew(
        &self,
        state: &mut State,
        edits: &mut Edits,
        record: SessionRecord,
        headers: &mut HeaderMap,
    ) -> Result<(), Error> {
        let shared = &*self.shared;
        let old = state
            .cookie_id
            .clone()
            .ok_or_else(|| Error::decode("loaded session without id"))?;
        let mut data: BTreeMap<String, Option<String>> = if edits.clear {
            BTreeMap::new()
        } else {
            record.data.into_iter().map(|(k, v)| (k, Some(v))).collect()
        };
        data.extend(std::mem::take(&mut edits.changes));
        let user = match edits.user_change.take() {
            Some(change) => change,
            None => record.user.clone(),
        };
        let request = SaveRequest {
            mode: SaveMode::Create {
                created_ms: Some(record.created_ms),
                deadline_ms: Some(record.deadline_ms),
                user_agent: record
                    .user_agent
                    .or_else(|| state.user_agent.as_ref().and_then(user_agent_text)),
            },
            idle: shared.idle,
            absolute: shared.absolute,
            clear: false,
            data: data.into_iter().filter(|(_, v)| v.is_some()).collect(),
            user: user.clone().map(Some),
        };
        let (id, expires_in, deadline_ms) = self.create_record(&request).await?;
        let old_handle = old.handle();
        shared.store.delete(&old_handle, None).await?;
        if let Some(old_user) = &record.user {
            shared.store.index_remove(old_user, &old_handle).await?;
        }
        if let Some(user) = &user {
            shared
                .store
                .index_add(user, &id.handle(), deadline_ms)
                .await?;
        }
        self.set_cookie(headers, &id, expires_in);
        Ok(())
    }

    async fn reindex(
        &self,
        handle: &SessionHandle,
        old_user: Option<&str>,
        new_user: Option<Option<String>>,
        deadline_ms: u64,
    ) -> Result<(), Error> {
        let Some(new_user) = new_user else {
            return Ok(());
        };
        let store = &self.shared.store;
        if let Some(old) = old_user {
            if Some(old) != new_user.as_deref() {
                store.index_remove(old, handle).await?;
            }
        }
        if let Some(new) = &new_user {
            store.index_add(new, handle, deadline_ms).await?;
        }
        Ok(())
    }
}

/// The User-Agent as text, cut to [`MAX_USER_AGENT_LEN`] bytes; `None` when
/// it is not visible ASCII (as `HeaderValue::to_str` defines it).
fn user_agent_text(value: &http::HeaderValue) -> Option<String> {
    let ua = value.to_str().ok()?;
    Some(ua[..ua.len().min(MAX_USER_AGENT_LEN)].to_owned())
}

/// A response that sets a session cookie must not be stored by a shared cache.
fn no_store(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
}
