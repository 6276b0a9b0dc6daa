//! Per-user session control from a handler: list a user's sessions, revoke
//! one, or all but the current one.

use super::handle::{Known, Session};
use super::id::SessionHandle;
use super::store::{DeleteOutcome, DeleteRequest, SessionInfo};
use super::SessionError;

impl Session {
    /// The sessions of the user this session is bound to, oldest first,
    /// with this one marked [`current`](SessionInfo::current). Empty when
    /// the session is not bound to a user.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, SessionError> {
        self.mark_used();
        let (user, current) = self.user_and_handle().await?;
        let Some(user) = user else {
            return Ok(Vec::new());
        };
        let mut list = self
            .trace()
            .measure(self.config().store.list(&user))
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
        self.mark_used();
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
        self.mark_used();
        let (user, current) = self.user_and_handle().await?;
        let Some(user) = user else { return Ok(0) };
        let list = self
            .trace()
            .measure(self.config().store.list(&user))
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

    /// Deletes `handle` if it is `user`'s, and drops it from their index.
    async fn revoke_handle(
        &self,
        user: &str,
        handle: &SessionHandle,
    ) -> Result<bool, SessionError> {
        let store = &self.config().store;
        self.trace()
            .measure(async {
                let outcome = store
                    .delete(handle, &DeleteRequest::any().owned_by(user))
                    .await
                    .map_err(SessionError::Store)?;
                let revoked = match outcome {
                    DeleteOutcome::Deleted { .. } => true,
                    DeleteOutcome::Missing => false,
                    _ => return Ok(false),
                };
                store
                    .index_remove(user, handle)
                    .await
                    .map_err(SessionError::Store)?;
                Ok(revoked)
            })
            .await
    }

    async fn user_and_handle(
        &self,
    ) -> Result<(Option<String>, Option<SessionHandle>), SessionError> {
        self.ensure_loaded().await?;
        Ok(match &self.state().known {
            Known::Live(live) => (live.record.user.clone(), Some(live.handle)),
            _ => (None, None),
        })
    }
}
