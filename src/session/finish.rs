//! What happens when the response goes out: write what the request changed
//! (update, create, or renew the id), slide the expiry of an untouched
//! session, and decide the cookie.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderMap;

use super::handle::{Edits, Known, Live, Session, State};
use super::id::{SessionHandle, SessionId};
use super::store::{
    DeleteOutcome, DeleteRequest, LoadOutcome, SaveOutcome, SaveRequest, SessionRecord,
};
use super::Activity;
use crate::error::Error;
use crate::headers::no_store;

/// Longest User-Agent kept in a session's metadata.
const MAX_USER_AGENT_LEN: usize = 256;
/// How often a renewal copies the session again when a concurrent save
/// changed it between the copy and the delete of the old record.
const RENEWAL_ATTEMPTS: usize = 3;

/// Why the response-side work failed.
#[derive(Debug)]
pub(crate) enum FinishError {
    /// The store failed (the layer's failure policy decides).
    Store(Error),
    /// The id renewal lost to a concurrent request (another renewal, a
    /// logout, or saves that kept changing the session): nothing of this
    /// request was kept, and no cookie may be sent.
    Conflict,
}

impl From<Error> for FinishError {
    fn from(e: Error) -> Self {
        FinishError::Store(e)
    }
}

impl Session {
    /// Finishes the response without the store when nothing needs it (no
    /// change, no touch due, a logout already done): the common case.
    /// `false` leaves everything for [`finish`](Self::finish).
    pub(crate) fn finish_now(&self, headers: &mut HeaderMap) -> bool {
        let state = self.state();
        let mut edits = self.edits();
        // (A logout followed by changes starts a new session: `finish`.)
        if edits.only_logout() {
            if state.had_cookie() {
                self.remove_cookie(headers);
            }
            self.outcome("destroyed");
        } else if matches!(state.known, Known::Degraded { .. }) {
            // Fail-open after a store failure: write nothing (the failure
            // is the request's outcome).
        } else if edits.is_dirty() || !self.untouched_without_store(&state, headers) {
            return false;
        } else {
            self.outcome(if self.was_used() { "read" } else { "unused" });
        }
        *edits = Edits::default();
        self.close();
        true
    }

    /// An unchanged session whose response needs no store call: drop a
    /// cookie that names no session. `false` when a touch may be due (the
    /// cookie was never looked up and every request counts as activity).
    ///
    /// A live session's cookie is never re-sent (only a write that changes
    /// its persistence does, `update`): a persistent cookie's `Max-Age`
    /// runs to the absolute deadline from when the id was issued, and the
    /// store enforces the idle timeout. So no read answered after a
    /// concurrent login can put the old id back in the browser.
    fn untouched_without_store(&self, state: &State, headers: &mut HeaderMap) -> bool {
        match &state.known {
            Known::Unloaded(_) => self.config().activity != Activity::AnyRequest,
            Known::Missing => {
                self.remove_cookie(headers);
                true
            }
            _ => true,
        }
    }

    /// Writes what the request changed and decides the cookie. Called by
    /// the layer once the inner service answered with a non-5xx status and
    /// [`finish_now`](Self::finish_now) could not finish without the store.
    pub(crate) async fn finish(
        &self,
        headers: &mut HeaderMap,
    ) -> Result<Option<&'static str>, FinishError> {
        // The handler is done: take what it recorded, leaving the id the
        // request came with for a logout made after the response.
        let (mut state, mut edits) = {
            let mut state = self.state();
            self.close();
            let cookie = match &state.known {
                Known::Unloaded(id) | Known::Renewed(id) => Some(*id),
                Known::Live(live) => Some(live.id),
                Known::Degraded { cookie } | Known::Finished { cookie } => *cookie,
                Known::NoCookie | Known::Missing => None,
            };
            let taken = State {
                known: Known::Finished { cookie },
                user_agent: None,
            };
            let state = std::mem::replace(&mut *state, taken);
            (state, std::mem::take(&mut *self.edits()))
        };
        if edits.only_logout() {
            if state.had_cookie() {
                self.remove_cookie(headers);
            }
            return Ok(Some("destroyed"));
        }
        // Changes made after a logout (a flash message saying so) go to a
        // new session: `destroy` left the state `Missing`, so it is created
        // below under a fresh id, and its cookie replaces the old one.
        if matches!(state.known, Known::Degraded { .. }) {
            // (The failure was the request's outcome.)
            return Ok(None);
        }
        if !edits.is_dirty() {
            self.finish_untouched(&mut state, headers).await?;
            return Ok(Some("touched"));
        }
        let had_cookie = state.had_cookie();
        match std::mem::replace(&mut state.known, Known::Missing) {
            Known::Live(live) if edits.cycle => self
                .renew(&state, &edits, live, headers)
                .await
                .map(|()| Some("renewed")),
            Known::Live(live) => self
                .update(&live.id, Some(&live), &mut edits, headers)
                .await
                .map(|()| Some("saved")),
            // A blind write: the save itself checks the session exists.
            Known::Unloaded(id) => self
                .update(&id, None, &mut edits, headers)
                .await
                .map(|()| Some("saved")),
            // Writing now would fork the session the other request renewed.
            Known::Renewed(_) => Err(FinishError::Conflict),
            Known::Missing | Known::NoCookie | Known::Degraded { .. } => {
                self.create(&state, had_cookie, &mut edits, headers).await?;
                Ok(Some("created"))
            }
            // (`finish` runs once; nothing is left to write.)
            Known::Finished { .. } => Ok(Some("unused")),
        }
    }

    /// No changes: slide the expiry if any request counts as activity.
    async fn finish_untouched(
        &self,
        state: &mut State,
        headers: &mut HeaderMap,
    ) -> Result<(), Error> {
        if self.untouched_without_store(state, headers) {
            return Ok(());
        }
        // Only a cookie never looked up gets here: touch it.
        if let Known::Unloaded(id) = &state.known {
            let config = self.config();
            let request = config.load_request().touch_only();
            if let LoadOutcome::Missing = config.store.load(&id.handle(), &request).await? {
                self.remove_cookie(headers);
            }
        }
        Ok(())
    }

    fn remove_cookie(&self, headers: &mut HeaderMap) {
        self.config().cookie.remove(headers);
        no_store(headers);
    }

    /// `Set-Cookie` for `id` (newly issued, or whose persistence changed);
    /// a `persistent` cookie lives until the session's absolute deadline,
    /// `ends_in` from now.
    fn set_cookie(
        &self,
        headers: &mut HeaderMap,
        id: &SessionId,
        ends_in: Duration,
        persistent: bool,
    ) {
        self.config()
            .cookie
            .set(headers, id, persistent.then_some(ends_in));
        no_store(headers);
    }

    /// Whether the session's cookie is persistent: its own setting after
    /// this request's change (`own`, what it had before), else the layer's.
    fn persistent(&self, edits: &Edits, own: Option<bool>) -> bool {
        let own = edits.persistent_change.unwrap_or(own);
        own.unwrap_or(self.config().cookie.persistent)
    }

    /// The save request carrying `edits`.
    fn with_edits(mut request: SaveRequest, edits: &mut Edits) -> SaveRequest {
        request.clear = edits.clear;
        request.data = std::mem::take(&mut edits.changes).into_iter().collect();
        request.user = edits.user_change.take();
        request.own_idle = edits.idle_change;
        request.own_persistent = edits.persistent_change;
        request
    }

    /// Saves the edits into the session `id`; `prior` is what this request
    /// loaded, if it did.
    async fn update(
        &self,
        id: &SessionId,
        prior: Option<&Live>,
        edits: &mut Edits,
        headers: &mut HeaderMap,
    ) -> Result<(), FinishError> {
        let config = self.config();
        let handle = &prior.map_or_else(|| id.handle(), |p| p.handle);
        let new_user = edits.user_change.clone();
        // The cookie is sent again only when its persistence changes (or
        // may: a blind write does not know what it was).
        let layer = config.cookie.persistent;
        let resend = edits.persistent_change.and_then(|change| {
            let new = change.unwrap_or(layer);
            let before = prior.map(|p| p.record.persistent.unwrap_or(layer));
            (before != Some(new)).then_some(new)
        });
        let request = Self::with_edits(SaveRequest::update(config.idle), edits);
        match config.store.save(handle, &request).await? {
            SaveOutcome::Saved {
                deadline_ms,
                ends_in,
                ..
            } => {
                let old_user = prior.and_then(|p| p.record.user.as_deref());
                self.reindex(handle, old_user, new_user, deadline_ms)
                    .await?;
                if let Some(persistent) = resend {
                    self.set_cookie(headers, id, ends_in, persistent);
                }
                Ok(())
            }
            // Renewed while the request ran: the change would be lost under
            // the old id, so the client is told to retry with the new one.
            SaveOutcome::Renewed => Err(FinishError::Conflict),
            // Destroyed, revoked or expired while the request ran: never
            // resurrect it; drop the cookie.
            _ => {
                tracing::debug!("session ended during the request; its changes were dropped");
                self.remove_cookie(headers);
                Ok(())
            }
        }
    }

    async fn create(
        &self,
        state: &State,
        had_cookie: bool,
        edits: &mut Edits,
        headers: &mut HeaderMap,
    ) -> Result<(), Error> {
        let holds_data = edits.changes.values().any(Option::is_some)
            || matches!(edits.user_change, Some(Some(_)));
        if !holds_data {
            // Nothing to keep: no session is created for removals alone.
            if had_cookie {
                self.remove_cookie(headers);
            }
            return Ok(());
        }
        let config = self.config();
        let new_user = edits.user_change.clone();
        let persistent = self.persistent(edits, None);
        let request = Self::with_edits(
            SaveRequest::create(config.idle, config.absolute, user_agent_text(state)),
            edits,
        );
        let Some((id, ends_in, deadline_ms)) = self.create_record(&request).await? else {
            return Err(Error::internal(
                "the session store refused to create a session",
            ));
        };
        self.reindex(&id.handle(), None, new_user, deadline_ms)
            .await?;
        self.set_cookie(headers, &id, ends_in, persistent);
        Ok(())
    }

    /// Saves `request` (a create) under a fresh id, retrying on the
    /// (astronomically unlikely) collision: the id, the time until its
    /// absolute deadline, and that deadline. `None` when the store refused
    /// because the deadline kept by a renewal has passed.
    async fn create_record(
        &self,
        request: &SaveRequest,
    ) -> Result<Option<(SessionId, Duration, u64)>, Error> {
        for _ in 0..3 {
            let id = SessionId::generate().map_err(|e| {
                Error::internal("the operating system's random source failed")
                    .with_source(e.to_string())
            })?;
            match self.config().store.save(&id.handle(), request).await? {
                SaveOutcome::Saved {
                    ends_in,
                    deadline_ms,
                    ..
                } => return Ok(Some((id, ends_in, deadline_ms))),
                SaveOutcome::Exists => continue,
                _ => return Ok(None),
            }
        }
        Err(Error::internal("three fresh session ids collided"))
    }

    /// Moves the session to a new id (the data, the original creation time
    /// and deadline), so that exactly one successor survives however many
    /// requests renew the same session at once:
    ///
    /// 1. write the new record, and add it to the user's index;
    /// 2. retire the old record *only if it is still at the revision this
    ///    request copied* (compare-and-delete), leaving for ten seconds a
    ///    marker that names the successor: exactly one renewal can succeed,
    ///    and a change saved after the copy is never dropped;
    /// 3. a renewal that finds the old record gone (another renewal won, or
    ///    a logout) deletes its copy and answers 409 with no cookie; one
    ///    that finds it changed copies it again (up to
    ///    [`RENEWAL_ATTEMPTS`] times).
    ///
    /// The old id never reaches the successor: giving its holder (possibly
    /// someone who planted it before a login) the new session is what a
    /// renewal exists to prevent.
    ///
    /// The new record exists before the old one goes, so a failure between
    /// the two loses nothing (the old id keeps working; the copy expires).
    async fn renew(
        &self,
        state: &State,
        edits: &Edits,
        mut live: Live,
        headers: &mut HeaderMap,
    ) -> Result<(), FinishError> {
        let config = self.config();
        let old = live.handle;
        for _ in 0..RENEWAL_ATTEMPTS {
            let (request, user) = self.renewal_request(state, edits, &live.record);
            let Some((id, ends_in, deadline_ms)) = self.create_record(&request).await? else {
                // The absolute deadline passed while this request ran: the
                // session is over.
                self.remove_cookie(headers);
                return Ok(());
            };
            let new = id.handle();
            if let Some(user) = &user {
                config.store.index_add(user, &new, deadline_ms).await?;
            }
            let retire = DeleteRequest::renewal(live.record.revision, new);
            match config.store.delete(&old, &retire).await? {
                DeleteOutcome::Deleted { .. } => {
                    if let Some(old_user) = &live.record.user {
                        if let Err(e) = config.store.index_remove(old_user, &old).await {
                            // Listing prunes entries of sessions that are gone.
                            tracing::debug!(error = %e, "could not drop a renewed session from its user index");
                        }
                    }
                    let persistent = self.persistent(edits, live.record.persistent);
                    self.set_cookie(headers, &id, ends_in, persistent);
                    return Ok(());
                }
                outcome => {
                    self.discard(&new, user.as_deref()).await;
                    if outcome != DeleteOutcome::Changed {
                        return Err(FinishError::Conflict);
                    }
                    // Saved since we copied it: copy the current version.
                    let reloaded = config.store.load(&old, &config.load_request()).await?;
                    match reloaded.found().and_then(|loaded| loaded.record) {
                        Some(record) => live.record = record,
                        None => return Err(FinishError::Conflict),
                    }
                }
            }
        }
        Err(FinishError::Conflict)
    }

    /// The create request of a renewal that copies `record` with this
    /// request's edits applied, and the user the copy is bound to.
    fn renewal_request(
        &self,
        state: &State,
        edits: &Edits,
        record: &SessionRecord,
    ) -> (SaveRequest, Option<String>) {
        let mut data: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        if !edits.clear {
            // Not the CSRF token: a session planted before the login (the
            // reason ids are renewed) may have one its planter knows.
            let kept = record
                .data
                .iter()
                .filter(|(k, _)| *k != crate::csrf::TOKEN_KEY);
            data.extend(kept.map(|(k, v)| (k, Some(v))));
        }
        data.extend(
            edits
                .changes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref())),
        );
        let user = match &edits.user_change {
            Some(change) => change.clone(),
            None => record.user.clone(),
        };
        let mut request = SaveRequest::renewal(
            self.config().idle,
            record.created_ms,
            record.deadline_ms,
            record.user_agent.clone().or_else(|| user_agent_text(state)),
        );
        request.data = data
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), Some(v?.to_owned()))))
            .collect();
        request.user = user.clone().map(Some);
        // The session's own expiry settings go with it.
        request.own_idle = Some(edits.idle_change.unwrap_or(record.idle));
        request.own_persistent = Some(edits.persistent_change.unwrap_or(record.persistent));
        (request, user)
    }

    /// Deletes a renewal's copy that lost the race (best effort: if this
    /// fails, the copy expires when idle and no client holds its id).
    async fn discard(&self, handle: &SessionHandle, user: Option<&str>) {
        let store = &self.config().store;
        if let Err(e) = store.delete(handle, &DeleteRequest::any()).await {
            tracing::debug!(error = %e, "could not delete a renewal's losing copy");
        }
        if let Some(user) = user {
            if let Err(e) = store.index_remove(user, handle).await {
                tracing::debug!(error = %e, "could not unlist a renewal's losing copy");
            }
        }
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
        let store = &self.config().store;
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

/// The request's User-Agent as text, cut to [`MAX_USER_AGENT_LEN`] bytes;
/// `None` when it is empty or not visible ASCII (as `HeaderValue::to_str`
/// defines it).
fn user_agent_text(state: &State) -> Option<String> {
    let ua = state.user_agent.as_ref()?.to_str().ok()?;
    (!ua.is_empty()).then(|| ua[..ua.len().min(MAX_USER_AGENT_LEN)].to_owned())
}
