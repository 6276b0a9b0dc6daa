//! [`SessionStore`] on Redis: one hash per session, one sorted set per user.
//!
//! Keys (the handle is the SHA-256-derived [`SessionHandle`], never the id):
//! - `{prefix}:session:{<handle>}`: hash of `d:<key>` data fields (JSON) and
//!   `m:*` metadata; its TTL is the session's expiry.
//! - `{prefix}:session-user:{<user>}`: sorted set of the user's handles,
//!   scored by each session's absolute deadline; expires with the last one.
//!
//! Each operation touches the keys of one hash tag only, so it runs on Redis
//! Cluster unchanged. A load is one round trip: `touch.lua` (slides the
//! expiry when due) pipelined with a plain `HGETALL`.

use ::redis::{FromRedisValue, Value};

use super::id::SessionHandle;
use super::store::{
    fields, from_ms, DeleteOutcome, LoadRequest, Loaded, SaveMode, SaveOutcome, SaveRequest,
    SessionInfo, SessionRecord, SessionStore,
};
use crate::error::Error;
use crate::redis::{RedisBackend, Script};

static TOUCH: Script = Script::new("session-touch", include_str!("touch.lua"));
static SAVE: Script = Script::new("session-save", include_str!("save.lua"));
static DELETE: Script = Script::new("session-delete", include_str!("delete.lua"));
static INDEX_ADD: Script = Script::new("session-index-add", include_str!("index_add.lua"));
static INDEX_LIST: Script = Script::new("session-index-list", include_str!("index_list.lua"));

/// Sessions in Redis; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisSessionStore {
    backend: RedisBackend,
}

impl RedisSessionStore {
    /// A store on `backend`, under its key prefix.
    pub fn new(backend: RedisBackend) -> Self {
        RedisSessionStore { backend }
    }

    /// The Redis key of a session.
    pub fn session_key(&self, handle: &SessionHandle) -> String {
        self.backend
            .namespace()
            .tagged("session", handle.as_str())
            .into_base()
    }

    /// The Redis key of a user's session index.
    pub fn user_key(&self, user: &str) -> String {
        self.backend
            .namespace()
            .tagged("session-user", user)
            .into_base()
    }
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn decode<T: FromRedisValue>(v: Value, what: &str) -> Result<T, Error> {
    T::from_redis_value(v).map_err(|e| {
        Error::decode(format!("unexpected {what} in a session script reply"))
            .with_source(e.to_string())
    })
}

impl SessionStore for RedisSessionStore {
    async fn load(
        &self,
        handle: &SessionHandle,
        request: &LoadRequest,
    ) -> Result<Option<Loaded>, Error> {
        let key = self.session_key(handle);
        let touch = self
            .backend
            .script(&TOUCH)
            .key(&key)
            .arg(ms(request.idle))
            .arg(ms(request.touch_interval));
        // One round trip either way: the touch script alone, or pipelined
        // with a plain HGETALL of the same key.
        type Touch = Option<(u64, i64)>;
        type Fields = Option<Vec<(String, String)>>;
        let (touched, fields): (Touch, Fields) = if request.fields {
            let mut hgetall = ::redis::cmd("HGETALL");
            hgetall.arg(&key);
            let (t, f) = touch.invoke_then(&hgetall).await?;
            (t, Some(f))
        } else {
            (touch.invoke().await?, None)
        };
        let Some((ttl_ms, touched)) = touched else {
            return Ok(None);
        };
        let record = match fields {
            // Deleted between the two commands: no session.
            Some(f) if f.is_empty() => return Ok(None),
            Some(f) => Some(SessionRecord::from_fields(f)),
            None => None,
        };
        Ok(Some(Loaded {
            expires_in: std::time::Duration::from_millis(ttl_ms),
            touched: touched == 1,
            record,
        }))
    }

    async fn save(
        &self,
        handle: &SessionHandle,
        request: &SaveRequest,
    ) -> Result<SaveOutcome, Error> {
        let mut call = self.backend.script(&SAVE).key(self.session_key(handle));
        call = match &request.mode {
            SaveMode::Update => call
                .arg("update")
                .arg(ms(request.idle))
                .arg(0)
                .arg("")
                .arg(""),
            SaveMode::Create {
                created_ms,
                deadline_ms,
                ..
            } => call
                .arg("create")
                .arg(ms(request.idle))
                .arg(ms(request.absolute))
                .arg(created_ms.map(|v| v.to_string()).unwrap_or_default())
                .arg(deadline_ms.map(|v| v.to_string()).unwrap_or_default()),
        };
        call = call.arg(if request.clear { "1" } else { "0" });
        for (field, value) in request.field_changes() {
            call = call.arg(field).arg(value.unwrap_or(""));
        }
        let reply: Value = call.invoke().await?;
        match reply {
            Value::Int(0) => Ok(SaveOutcome::Missing),
            Value::Int(-1) => Ok(SaveOutcome::Exists),
            other => {
                let (ttl_ms, deadline_ms): (u64, u64) = decode(other, "save result")?;
                Ok(SaveOutcome::Saved {
                    expires_in: std::time::Duration::from_millis(ttl_ms),
                    deadline_ms,
                })
            }
        }
    }

    async fn delete(
        &self,
        handle: &SessionHandle,
        only_for_user: Option<&str>,
    ) -> Result<DeleteOutcome, Error> {
        let (status, user): (i64, String) = self
            .backend
            .script(&DELETE)
            .key(self.session_key(handle))
            .arg(only_for_user.unwrap_or(""))
            .invoke()
            .await?;
        Ok(match status {
            1 => DeleteOutcome::Deleted {
                user: (!user.is_empty()).then_some(user),
            },
            -1 => DeleteOutcome::NotOwned,
            _ => DeleteOutcome::Missing,
        })
    }

    async fn index_add(
        &self,
        user: &str,
        handle: &SessionHandle,
        deadline_ms: u64,
    ) -> Result<(), Error> {
        let _: i64 = self
            .backend
            .script(&INDEX_ADD)
            .key(self.user_key(user))
            .arg(handle.as_str())
            .arg(deadline_ms)
            .invoke()
            .await?;
        Ok(())
    }

    async fn index_remove(&self, user: &str, handle: &SessionHandle) -> Result<(), Error> {
        let _: i64 = self
            .backend
            .query(
                ::redis::cmd("ZREM")
                    .arg(self.user_key(user))
                    .arg(handle.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn list(&self, user: &str) -> Result<Vec<SessionInfo>, Error> {
        let index = self.user_key(user);
        let members: Vec<String> = self
            .backend
            .script(&INDEX_LIST)
            .key(&index)
            .invoke()
            .await?;
        let handles: Vec<SessionHandle> = members
            .iter()
            .filter_map(|m| SessionHandle::parse(m))
            .collect();
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for every session's metadata.
        let mut pipe = ::redis::pipe();
        for handle in &handles {
            pipe.cmd("HMGET")
                .arg(self.session_key(handle))
                .arg(fields::USER)
                .arg(fields::CREATED)
                .arg(fields::SEEN)
                .arg(fields::USER_AGENT);
        }
        type Meta = (Option<String>, Option<u64>, Option<u64>, Option<String>);
        let metas: Vec<Meta> = self.backend.pipeline(&pipe).await?;
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (handle, (owner, created, seen, user_agent)) in handles.into_iter().zip(metas) {
            match (owner, created) {
                (Some(owner), Some(created)) if owner == user => live.push(SessionInfo {
                    handle,
                    created: from_ms(created),
                    last_seen: from_ms(seen.unwrap_or(created)),
                    user_agent,
                    current: false,
                }),
                _ => stale.push(handle),
            }
        }
        if !stale.is_empty() {
            let mut zrem = ::redis::cmd("ZREM");
            zrem.arg(&index);
            for handle in &stale {
                zrem.arg(handle.as_str());
            }
            let _: i64 = self.backend.query(&zrem).await?;
        }
        live.sort_by_key(|s| s.created);
        Ok(live)
    }
}
