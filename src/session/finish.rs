//! What happens when the response goes out: write what the request changed
//! (update, create, or renew the id), slide the expiry of an untouched
//! session, and decide the cookie.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::HeaderMap;

use super::handle::{Edits, Known, Live, Session, State};
use super::id::{SessionHandle, SessionId};
use super::store::{DeleteRequest, SaveOutcome, SaveRequest};
use super::Activity;
use crate::error::Error;
use crate::headers::no_store;

/// Longest User-Agent kept in a session's metadata.
const MAX_USER_AGENT_LEN: usize = 256;

impl Session {
    /// Writes what the request changed and decides the cookie. Called by
    /// the layer once the inner service answered with a non-5xx status.
    pub(crate) async fn finish(&self, headers: &mut HeaderMap) -> Result<(), Error> {
        let mut state = self.inner.state.lock().await;
        // The handler is done: take what it recorded.
        let mut edits = std::mem::take(&mut *self.edits());
        if edits.destroyed {
            if state.had_cookie() {
                self.remove_cookie(headers);
            }
            return Ok(());
        }
        if matches!(state.known, Known::Degraded { .. }) {
            return Ok(());
        }
        if !edits.is_dirty() {
            return self.finish_untouched(&mut state, headers).await;
        }
        let had_cookie = state.had_cookie();
        match std::mem::replace(&mut state.known, Known::Missing) {
            Known::Live(live) if edits.cycle => {
                self.renew(&state, &mut edits, *live, headers).await
            }
            Known::Live(live) => {
                self.update(&live.id, Some(&live), &mut edits, headers)
                    .await
            }
            // A blind write: the save itself checks the session exists.
            Known::Unloaded(id) => self.update(&id, None, &mut edits, headers).await,
            Known::Missing | Known::NoCookie | Known::Degraded { .. } => {
                self.create(&state, had_cookie, &mut edits, headers).await
            }
        }
    }

    /// No changes: slide the expiry if any request counts as activity, and
    /// re-send a persistent cookie only when its expiry moved.
    async fn finish_untouched(
        &self,
        state: &mut State,
        headers: &mut HeaderMap,
    ) -> Result<(), Error> {
        let config = self.config();
        match &state.known {
            Known::Unloaded(id) if config.activity == Activity::AnyRequest => {
                let request = config.load_request().touch_only();
                match config.store.load(&id.handle(), &request).await? {
                    Some(loaded) if loaded.touched => {
                        self.refresh_cookie(headers, id, loaded.expires_in)
                    }
                    Some(_) => {}
                    None => self.remove_cookie(headers),
                }
            }
            Known::Missing => self.remove_cookie(headers),
            Known::Live(live) if live.touched => {
                if let Some(at) = live.expires_at {
                    self.refresh_cookie(
                        headers,
                        &live.id,
                        at.saturating_duration_since(Instant::now()),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn refresh_cookie(&self, headers: &mut HeaderMap, id: &SessionId, expires_in: Duration) {
        if self.config().cookie.persistent {
            self.set_cookie(headers, id, expires_in);
        }
    }

    fn remove_cookie(&self, headers: &mut HeaderMap) {
        self.config().cookie.remove(headers);
        no_store(headers);
    }

    fn set_cookie(&self, headers: &mut HeaderMap, id: &SessionId, expires_in: Duration) {
        self.config().cookie.set(headers, id, Some(expires_in));
        no_store(headers);
    }

    /// The save request carrying `edits`.
    fn with_edits(mut request: SaveRequest, edits: &mut Edits) -> SaveRequest {
        request.clear = edits.clear;
        request.data = std::mem::take(&mut edits.changes).into_iter().collect();
        request.user = edits.user_change.take();
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
    ) -> Result<(), Error> {
        let config = self.config();
        let handle = id.handle();
        let new_user = edits.user_change.clone();
        let request = Self::with_edits(SaveRequest::update(config.idle), edits);
        match config.store.save(&handle, &request).await? {
            SaveOutcome::Saved {
                expires_in,
                deadline_ms,
                ..
            } => {
                let old_user = prior.and_then(|p| p.record.user.as_deref());
                self.reindex(&handle, old_user, new_user, deadline_ms)
                    .await?;
                // The save slid the expiry; a persistent cookie follows when
                // it moved by more than the touch interval.
                let after = Instant::now().checked_add(expires_in);
                let moved = match (prior.and_then(|p| p.expires_at), after) {
                    (Some(before), Some(after)) => {
                        after.saturating_duration_since(before) > config.touch_interval
                    }
                    _ => true,
                };
                if moved || prior.is_some_and(|p| p.touched) {
                    self.refresh_cookie(headers, id, expires_in);
                }
                Ok(())
            }
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
        let request = Self::with_edits(
            SaveRequest::create(config.idle, config.absolute, user_agent_text(state)),
            edits,
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
                Error::internal("the operating system's random source failed")
                    .with_source(e.to_string())
            })?;
            match self.config().store.save(&id.handle(), request).await? {
                SaveOutcome::Saved {
                    expires_in,
                    deadline_ms,
                    ..
                } => return Ok((id, expires_in, deadline_ms)),
                SaveOutcome::Exists => continue,
                _ => {
                    return Err(Error::internal(
                        "the session store refused to create a session",
                    ))
                }
            }
        }
        Err(Error::internal("three fresh session ids collided"))
    }

    /// Moves the session to a new id: write the new record (all data, the
    /// original creation time and deadline), then delete the old one.
    async fn renew(
        &self,
        state: &State,
        edits: &mut Edits,
        live: Live,
        headers: &mut HeaderMap,
    ) -> Result<(), Error> {
        let config = self.config();
        let Live {
            id: old, record, ..
        } = live;
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
        let mut request = SaveRequest::renewal(
            config.idle,
            record.created_ms,
            record.deadline_ms,
            record.user_agent.or_else(|| user_agent_text(state)),
        );
        request.data = data.into_iter().filter(|(_, v)| v.is_some()).collect();
        request.user = user.clone().map(Some);
        let (id, expires_in, deadline_ms) = self.create_record(&request).await?;
        let old_handle = old.handle();
        config
            .store
            .delete(&old_handle, &DeleteRequest::any())
            .await?;
        if let Some(old_user) = &record.user {
            config.store.index_remove(old_user, &old_handle).await?;
        }
        if let Some(user) = &user {
            config
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
/// `None` when it is not visible ASCII (as `HeaderValue::to_str` defines it).
fn user_agent_text(state: &State) -> Option<String> {
    let ua = state.user_agent.as_ref()?.to_str().ok()?;
    Some(ua[..ua.len().min(MAX_USER_AGENT_LEN)].to_owned())
}
