//! [`Session`]: what a handler reads and changes. The store is asked only
//! when a handler needs it; changes are recorded and written when the
//! response goes out (`finish.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::config::Config;
use super::id::{SessionHandle, SessionId};
use super::store::{DeleteOutcome, DeleteRequest, LoadOutcome, SessionRecord, Store};
use super::SessionError;
use crate::error::Error;
use crate::FailurePolicy;

/// The session of one request: read and change it from a handler.
///
/// Values are stored as JSON, one entry per key; a request writes only the
/// keys it changed, when the response goes out. Methods that may need the
/// store are `async`; the others only record a change and return at once.
/// Get it in axum with the extractor (`session: Session`), or from the
/// request extensions. Clones share the request's session.
#[derive(Clone)]
pub struct Session {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: Arc<Config>,
    /// What the store said. Held briefly, never across an `.await`; lock
    /// it before `edits`, never the other way round.
    state: std::sync::Mutex<State>,
    /// Held while the session loads, so that calls made concurrently in one
    /// request load it once. Taken only when a load is due, so most requests
    /// never touch it.
    loading: tokio::sync::Mutex<()>,
    /// What handlers changed; behind a plain mutex so the recording methods
    /// need no `.await`.
    edits: std::sync::Mutex<Edits>,
    /// The request carried a well-formed session cookie.
    had_cookie: bool,
    /// A handler used the session (any method: a read, a write, a login,
    /// a logout, an admin call): the response may depend on it, so it is
    /// never shared (see [`Session::mark_response`]).
    used: AtomicBool,
    /// The response has gone out: changes can no longer be saved.
    finished: AtomicBool,
    /// The session layer's span for this request.
    trace: crate::trace::Trace,
    /// The request's outcome was recorded (once per request).
    outcome_recorded: AtomicBool,
}

/// What other layers read of the session (see
/// [`request_session`](crate::request_session)).
impl crate::request_session::SessionSource for Inner {
    fn had_cookie(&self) -> bool {
        self.had_cookie
    }

    fn was_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    fn user(self: Arc<Self>) -> crate::BoxFuture<'static, Result<Option<String>, Error>> {
        Box::pin(async move {
            Session { inner: self }.user().await.map_err(|e| match e {
                SessionError::Store(e) => e,
                other => Error::new(crate::error::ErrorKind::Internal, other.to_string()),
            })
        })
    }
}

impl Session {
    /// The neutral view of this session that other layers read.
    pub(crate) fn request_session(&self) -> crate::request_session::RequestSession {
        crate::request_session::RequestSession::new(self.inner.clone())
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

pub(super) struct State {
    pub(super) known: Known,
    /// The request's User-Agent, kept as the raw header (a cheap clone) and
    /// turned into text only if a session is created.
    pub(super) user_agent: Option<HeaderValue>,
}

/// What is known about the request's session: each state carries exactly
/// what it needs, so "a loaded session without an id" cannot be written.
pub(super) enum Known {
    /// The request carries no usable session cookie.
    NoCookie,
    /// A well-formed cookie, not looked up yet.
    Unloaded(SessionId),
    /// The cookie names no live session (or this request destroyed it).
    Missing,
    /// The cookie names a session that a concurrent request renewed moments
    /// ago: no session here (the old id never reaches the successor), the
    /// cookie is left alone (the client most likely holds the successor's
    /// already), a write answers 409, a logout ends the successor too.
    Renewed(SessionId),
    /// A live session.
    Live(Live),
    /// The response has gone out (`finish` took the state); `cookie` is the
    /// id the request came with, which a late logout still deletes.
    Finished {
        /// The request's session id, if it had one.
        cookie: Option<SessionId>,
    },
    /// A store call failed under the fail-open policy: behave as if there
    /// were no session and write nothing.
    Degraded {
        /// The cookie's id, if any (a logout still tries to delete it).
        cookie: Option<SessionId>,
    },
}

pub(super) struct Live {
    pub(super) id: SessionId,
    /// The id's handle, hashed once per request.
    pub(super) handle: SessionHandle,
    pub(super) record: SessionRecord,
}

impl State {
    /// The request carried a session cookie (so a response may need to
    /// replace or remove it).
    pub(super) fn had_cookie(&self) -> bool {
        !matches!(
            self.known,
            Known::NoCookie | Known::Degraded { cookie: None } | Known::Finished { cookie: None }
        )
    }
}

/// What handlers changed, not yet written.
#[derive(Default)]
pub(super) struct Edits {
    /// Data changes: key to JSON (`None` removes).
    pub(super) changes: BTreeMap<String, Option<String>>,
    pub(super) clear: bool,
    pub(super) user_change: Option<Option<String>>,
    pub(super) cycle: bool,
    /// The session's own idle timeout: set, or dropped (`Some(None)`).
    pub(super) idle_change: Option<Option<Duration>>,
    /// The session's own cookie persistence: set, or dropped.
    pub(super) persistent_change: Option<Option<bool>>,
    pub(super) destroyed: bool,
    /// The logout is done (the session deleted, or there was none): the
    /// changes made after it start a new session. A logout that failed
    /// leaves this false, so they are dropped with the cookie.
    pub(super) ended: bool,
}

impl Edits {
    pub(super) fn is_dirty(&self) -> bool {
        !self.changes.is_empty()
            || self.clear
            || self.user_change.is_some()
            || self.cycle
            || self.idle_change.is_some()
            || self.persistent_change.is_some()
    }

    /// A logout whose response only drops the cookie: no later change, or
    /// the logout failed (nothing may then be written, to the old session
    /// or a new one).
    pub(super) fn only_logout(&self) -> bool {
        self.destroyed && !(self.ended && self.is_dirty())
    }
}

/// Longest user id accepted by [`Session::set_user`].
const MAX_USER_LEN: usize = 256;

impl Session {
    pub(crate) fn new(
        config: Arc<Config>,
        headers: &HeaderMap,
        trace: crate::trace::Trace,
    ) -> Self {
        let known = match config.cookie.read(headers) {
            Some(id) => Known::Unloaded(id),
            None => Known::NoCookie,
        };
        let user_agent = headers.get(http::header::USER_AGENT).cloned();
        let had_cookie = matches!(known, Known::Unloaded(_));
        Session {
            inner: Arc::new(Inner {
                config,
                state: std::sync::Mutex::new(State { known, user_agent }),
                loading: tokio::sync::Mutex::new(()),
                edits: std::sync::Mutex::default(),
                had_cookie,
                used: AtomicBool::new(false),
                finished: AtomicBool::new(false),
                trace,
                outcome_recorded: AtomicBool::new(false),
            }),
        }
    }

    /// Marks a response whose handler used the session so that no shared
    /// cache serves it to another client: `Vary: Cookie`, plus
    /// `Cache-Control: private` (unless the handler set `Cache-Control`)
    /// when the request carried a session cookie. A response that sets or
    /// removes the cookie gets `no-store` instead, in `finish`.
    pub(crate) fn mark_response(&self, headers: &mut HeaderMap) {
        if self.was_used() {
            crate::headers::session_dependent(headers, self.inner.had_cookie);
        }
    }

    /// Whether a handler has used the session, by any method.
    pub(super) fn was_used(&self) -> bool {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Records that a handler used the session: every public method calls
    /// this first, so that a response built from a session (even one that
    /// only wrote to it, say a fresh CSRF token also put in the page) is
    /// never served to anyone else.
    pub(super) fn mark_used(&self) {
        if !self.was_used() {
            self.inner.used.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The session layer's span for this request (its store calls are
    /// counted there, wherever the handler makes them).
    pub(super) fn trace(&self) -> &crate::trace::Trace {
        &self.inner.trace
    }

    /// Records what the request did with its session, on the session
    /// layer's span and as a metric; the first outcome stands (a store
    /// failure, then the 5xx it caused, is one request).
    pub(super) fn outcome(&self, outcome: &'static str) {
        if self.inner.outcome_recorded.swap(true, Ordering::Relaxed) {
            return;
        }
        self.trace().outcome("session", outcome);
    }

    /// Refuses a change once the response has gone out (it would be lost).
    pub(super) fn check_open(&self) -> Result<(), SessionError> {
        if self.inner.finished.load(Ordering::Acquire) {
            tracing::warn!("a session change after the response went out was dropped");
            return Err(SessionError::ResponseSent);
        }
        Ok(())
    }

    /// Marks the response as gone out: later changes are refused.
    pub(super) fn close(&self) {
        self.inner.finished.store(true, Ordering::Release);
    }

    /// The state (held briefly, never across an `.await`).
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recorded edits (held briefly, never across an `.await`).
    pub(super) fn edits(&self) -> std::sync::MutexGuard<'_, Edits> {
        self.inner.edits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the session if not done yet. Under fail-open a store failure
    /// counts as "no session".
    pub(super) async fn ensure_loaded(&self) -> Result<(), SessionError> {
        self.mark_used();
        if !matches!(self.state().known, Known::Unloaded(_)) {
            return Ok(());
        }
        let _loading = self.inner.loading.lock().await;
        // Another call may have loaded it while this one waited.
        let Known::Unloaded(id) = self.state().known else {
            return Ok(());
        };
        let handle = id.handle();
        let config = self.config();
        // Measured only while the span is on, then boxed as a trait
        // object: a handler awaiting a session method keeps a shallow type
        // (deep ones overflow the compiler's recursion limit proving the
        // handler's future `Send`).
        let request = config.load_request();
        let loaded = if self.trace().is_on() {
            let load: crate::BoxFuture<'_, Result<LoadOutcome, Error>> =
                Box::pin(self.trace().measure(config.store.load(&handle, &request)));
            load.await
        } else {
            config.store.load(&handle, &request).await
        };
        let mut state = self.state();
        if !matches!(state.known, Known::Unloaded(_)) {
            // Destroyed meanwhile: that stands.
            return Ok(());
        }
        let loaded = match loaded {
            Ok(loaded) => {
                config.failures.succeeded();
                loaded
            }
            Err(e) => return self.store_failed(&mut state, Some(id), e),
        };
        state.known = match loaded {
            LoadOutcome::Renewed => Known::Renewed(id),
            LoadOutcome::Found(loaded) => {
                let Some(record) = loaded.record else {
                    let e =
                        Error::internal("the session store loaded a session without its record");
                    return self.store_failed(&mut state, Some(id), e);
                };
                Known::Live(Live { id, handle, record })
            }
            _ => Known::Missing,
        };
        Ok(())
    }

    pub(super) fn store_failed(
        &self,
        state: &mut State,
        cookie: Option<SessionId>,
        e: Error,
    ) -> Result<(), SessionError> {
        match self.config().failure {
            FailurePolicy::Open => {
                let failures = &self.config().failures;
                failures.failed(&e, "continuing without a session (fail-open)", false);
                self.outcome("store_error");
                state.known = Known::Degraded { cookie };
                Ok(())
            }
            FailurePolicy::Closed => {
                let failures = &self.config().failures;
                failures.failed(&e, "answering with a store failure (fail-closed)", true);
                self.outcome("store_error");
                Err(SessionError::Store(e))
            }
        }
    }

    /// The value under `key`, decoded from JSON; `None` when absent.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.ensure_loaded().await?;
        let state = self.state();
        // Decoded in place (the edits lock is held briefly, never across an
        // `.await`): no copy of the JSON text.
        let edits = self.edits();
        let json = match edits.changes.get(key) {
            Some(change) => change.as_deref(),
            None if edits.clear => None,
            None => match &state.known {
                Known::Live(live) => live.record.data.get(key),
                _ => None,
            },
        };
        let Some(json) = json else {
            return Ok(None);
        };
        serde_json::from_str(json)
            .map(Some)
            .map_err(|source| SessionError::Deserialize {
                key: key.to_owned(),
                source,
            })
    }

    /// Sets `key` to `value` (as JSON). Needs no store access: only this key
    /// is written when the response goes out, and a session is created then
    /// if there is none.
    pub fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        self.mark_used();
        self.check_open()?;
        let json = serde_json::to_string(&value).map_err(SessionError::Serialize)?;
        self.edits().changes.insert(key.to_owned(), Some(json));
        Ok(())
    }

    /// Removes `key` when the response goes out.
    pub fn remove(&self, key: &str) {
        self.mark_used();
        if self.check_open().is_ok() {
            self.edits().changes.insert(key.to_owned(), None);
        }
    }

    /// Removes every key when the response goes out (the user binding and
    /// metadata stay).
    pub fn clear(&self) {
        self.mark_used();
        if self.check_open().is_err() {
            return;
        }
        let mut edits = self.edits();
        edits.changes.clear();
        edits.clear = true;
    }

    /// The session's id, when a session exists (loads it to find out).
    pub async fn id(&self) -> Result<Option<SessionId>, SessionError> {
        self.ensure_loaded().await?;
        Ok(match &self.state().known {
            Known::Live(live) => Some(live.id),
            _ => None,
        })
    }

    /// Gives the session a new id when the response goes out (call it on
    /// login or any privilege change). The data moves to the new id; the new
    /// record is written before the old one is retired, so a failure between
    /// the two loses nothing. When several requests renew the same session
    /// at once, one wins; the others answer 409 with no cookie (see the
    /// module docs).
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        self.mark_used();
        self.check_open()?;
        self.ensure_loaded().await?;
        self.edits().cycle = true;
        Ok(())
    }

    /// Binds the session to `user` (for example at login, with
    /// [`cycle_id`](Self::cycle_id)), so it appears in the user's
    /// [`sessions`](Self::sessions) list. The user id must be 1 to 256 bytes.
    pub fn set_user(&self, user: impl Into<String>) -> Result<(), SessionError> {
        self.mark_used();
        self.check_open()?;
        let user = user.into();
        if user.is_empty() || user.len() > MAX_USER_LEN {
            return Err(SessionError::InvalidUser);
        }
        self.edits().user_change = Some(Some(user));
        Ok(())
    }

    /// "Remember me": gives this session its own idle timeout `idle` and a
    /// persistent cookie, when the response goes out. It is
    /// [`set_idle_timeout`](Self::set_idle_timeout) and
    /// [`set_persistent(true)`](Self::set_persistent) together; call it at
    /// login (with [`cycle_id`](Self::cycle_id), which keeps both). The
    /// absolute deadline still counts from the session's creation (a
    /// renewal keeps it), so a session that began long before the login
    /// ends sooner than one made at it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::session::{Session, SessionError};
    ///
    /// async fn login(session: Session, remember_me: bool) -> Result<(), SessionError> {
    ///     session.cycle_id().await?;
    ///     session.set_user("alice")?;
    ///     if remember_me {
    ///         // Up to the layer's absolute timeout (set it long enough).
    ///         session.remember(Duration::from_secs(30 * 24 * 3600))?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn remember(&self, idle: Duration) -> Result<(), SessionError> {
        self.set_idle_timeout(idle)?;
        self.set_persistent(true)
    }

    /// Gives this session its own idle timeout, longer or shorter than the
    /// layer's (after a sensitive action, say), when the response goes out.
    /// Every later save and touch slides the expiry by it; the layer's
    /// absolute timeout still bounds the session, and nothing else changes
    /// (the cookie stays as it was). It must be longer than the layer's
    /// touch interval, or an active session could expire between touches
    /// ([`SessionError::InvalidTimeout`]); it is cut to
    /// [`MAX_TIMEOUT`](super::MAX_TIMEOUT). A request without a session
    /// creates none for this alone.
    pub fn set_idle_timeout(&self, idle: Duration) -> Result<(), SessionError> {
        self.mark_used();
        self.check_open()?;
        let interval = self.config().touch_interval;
        // (Compared as stored: whole milliseconds.)
        let whole_ms = crate::time::millis(idle);
        if whole_ms <= crate::time::millis(interval) {
            return Err(SessionError::InvalidTimeout {
                timeout: idle,
                touch_interval: interval,
            });
        }
        let idle = Duration::from_millis(whole_ms).min(super::MAX_TIMEOUT);
        self.edits().idle_change = Some(Some(idle));
        Ok(())
    }

    /// Makes this session's cookie persistent (`Max-Age` running to the
    /// session's absolute deadline, so it survives a browser restart) or
    /// not (it ends with the browser), whatever the layer's
    /// [`persistent`](super::SessionLayerBuilder::persistent) setting. The
    /// cookie is sent again with the response when that changes what it
    /// was (or may have: a request that did not read the session cannot
    /// tell, and sends it).
    pub fn set_persistent(&self, persistent: bool) -> Result<(), SessionError> {
        self.mark_used();
        self.check_open()?;
        self.edits().persistent_change = Some(Some(persistent));
        Ok(())
    }

    /// Drops this session's own idle timeout and cookie persistence: the
    /// layer's settings apply again (the cookie is sent again when its
    /// persistence changes, as with [`set_persistent`](Self::set_persistent)).
    pub fn reset_expiry(&self) {
        self.mark_used();
        if self.check_open().is_ok() {
            let mut edits = self.edits();
            edits.idle_change = Some(None);
            edits.persistent_change = Some(None);
        }
    }

    /// The user the session is bound to.
    pub async fn user(&self) -> Result<Option<String>, SessionError> {
        self.mark_used();
        if let Some(change) = &self.edits().user_change {
            return Ok(change.clone());
        }
        self.ensure_loaded().await?;
        Ok(match &self.state().known {
            Known::Live(live) => live.record.user.clone(),
            _ => None,
        })
    }

    /// Logs out: deletes the session from the store now and expires the
    /// cookie in the response. Changes made in this request before it are
    /// dropped; changes made after it (a [flash](Self::flash) message
    /// saying "logged out") go to a new session with a fresh id, whose
    /// cookie replaces the old one. A
    /// store failure is returned even under [`FailurePolicy::Open`]: a
    /// logout must not look done when it is not. Called after the response
    /// has gone out (from a spawned task), it still deletes the session the
    /// request came with.
    pub async fn destroy(&self) -> Result<(), SessionError> {
        self.mark_used();
        let handle = {
            let state = self.state();
            *self.edits() = Edits {
                destroyed: true,
                ..Edits::default()
            };
            match &state.known {
                Known::Unloaded(id)
                | Known::Renewed(id)
                | Known::Degraded { cookie: Some(id) }
                | Known::Finished { cookie: Some(id) } => id.handle(),
                Known::Live(live) => live.handle,
                Known::NoCookie
                | Known::Missing
                | Known::Degraded { cookie: None }
                | Known::Finished { cookie: None } => {
                    self.edits().ended = true;
                    return Ok(());
                }
            }
        };
        let store = &self.config().store;
        let delete: crate::BoxFuture<'_, Result<(), SessionError>> =
            Box::pin(self.trace().measure(async {
                let mut outcome = store
                    .delete(&handle, &DeleteRequest::any())
                    .await
                    .map_err(SessionError::Store)?;
                // A logout sent with an id that a concurrent login just
                // replaced ends the successor too: the user asked to log
                // out. (It gives the old id's holder no access, only this.)
                if let DeleteOutcome::Renewed {
                    successor: Some(successor),
                } = outcome
                {
                    outcome = store
                        .delete(&successor, &DeleteRequest::any())
                        .await
                        .map_err(SessionError::Store)?;
                    if let DeleteOutcome::Deleted { user: Some(user) } = &outcome {
                        Self::unlist(store, user, &successor).await;
                    }
                } else if let DeleteOutcome::Deleted { user: Some(user) } = &outcome {
                    Self::unlist(store, user, &handle).await;
                }
                Ok::<_, SessionError>(())
            }));
        if let Err(e) = delete.await {
            self.outcome("store_error");
            return Err(e);
        }
        self.state().known = Known::Missing;
        self.edits().ended = true;
        Ok(())
    }

    /// Drops an ended session from its user's index (best effort: listing
    /// prunes entries of sessions that are gone anyway).
    async fn unlist(store: &Store, user: &str, handle: &SessionHandle) {
        if let Err(e) = store.index_remove(user, handle).await {
            tracing::debug!(error = %e, "could not remove an ended session from its user index");
        }
    }
}
