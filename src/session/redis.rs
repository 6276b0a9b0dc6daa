//! [`SessionStore`] for [`RedisBackend`]: one hash per session, one sorted
//! set per user.
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
use super::layout::{field_changes, fields, record_from_fields, session_key, user_key};
use super::store::{
    DeleteOutcome, DeleteRequest, LoadRequest, Loaded, SaveMode, SaveOutcome, SaveRequest,
    SessionInfo, SessionStore,
};
use crate::error::Error;
use crate::redis::{script, RedisBackend, Script};
use crate::time::{millis as ms, system_time};

static TOUCH: Script = script!("session-touch", "touch.lua");
static SAVE: Script = script!("session-save", "save.lua");
static DELETE: Script = script!("session-delete", "delete.lua");
static INDEX_ADD: Script = script!("session-index-add", "index_add.lua");
static INDEX_LIST: Script = script!("session-index-list", "index_list.lua");

fn decode<T: FromRedisValue>(v: Value, what: &str) -> Result<T, Error> {
    T::from_redis_value(v).map_err(|e| {
        Error::decode(format!("unexpected {what} in a session script reply"))
            .with_source(e.to_string())
    })
}

impl SessionStore for RedisBackend {
    async fn load(
        &self,
        handle: &SessionHandle,
        request: &LoadRequest,
    ) -> Result<Option<Loaded>, Error> {
        let key = session_key(self.namespace(), handle);
        let touch = self
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
            Some(f) => Some(record_from_fields(f)),
            None => None,
        };
        Ok(Some(Loaded::new(
            std::time::Duration::from_millis(ttl_ms),
            touched == 1,
            record,
        )))
    }

    async fn save(
        &self,
        handle: &SessionHandle,
        request: &SaveRequest,
    ) -> Result<SaveOutcome, Error> {
        let mut call = self
            .script(&SAVE)
            .key(session_key(self.namespace(), handle));
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
        for (field, value) in field_changes(request) {
            call = call.arg(field).arg(value.unwrap_or(""));
        }
        let reply: Value = call.invoke().await?;
        match reply {
            Value::Int(0) => Ok(SaveOutcome::Missing),
            Value::Int(-1) => Ok(SaveOutcome::Exists),
            other => {
                let (ttl_ms, deadline_ms): (u64, u64) = decode(other, "save result")?;
                Ok(SaveOutcome::saved(
                    std::time::Duration::from_millis(ttl_ms),
                    deadline_ms,
                ))
            }
        }
    }

    async fn delete(
        &self,
        handle: &SessionHandle,
        request: &DeleteRequest,
    ) -> Result<DeleteOutcome, Error> {
        let (status, user): (i64, String) = self
            .script(&DELETE)
            .key(session_key(self.namespace(), handle))
            .arg(request.owner.as_deref().unwrap_or(""))
            .invoke()
            .await?;
        Ok(match status {
            1 => DeleteOutcome::deleted((!user.is_empty()).then_some(user)),
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
            .script(&INDEX_ADD)
            .key(user_key(self.namespace(), user))
            .arg(handle.as_str())
            .arg(deadline_ms)
            .invoke()
            .await?;
        Ok(())
    }

    async fn index_remove(&self, user: &str, handle: &SessionHandle) -> Result<(), Error> {
        let _: i64 = self
            .query(
                ::redis::cmd("ZREM")
                    .arg(user_key(self.namespace(), user))
                    .arg(handle.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn list(&self, user: &str) -> Result<Vec<SessionInfo>, Error> {
        let index = user_key(self.namespace(), user);
        let members: Vec<String> = self.script(&INDEX_LIST).key(&index).invoke().await?;
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
                .arg(session_key(self.namespace(), handle))
                .arg(fields::USER)
                .arg(fields::CREATED)
                .arg(fields::SEEN)
                .arg(fields::USER_AGENT);
        }
        type Meta = (Option<String>, Option<u64>, Option<u64>, Option<String>);
        let metas: Vec<Meta> = self.pipeline(&pipe).await?;
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (handle, (owner, created, seen, user_agent)) in handles.into_iter().zip(metas) {
            match (owner, created) {
                (Some(owner), Some(created)) if owner == user => live.push(SessionInfo::new(
                    handle,
                    system_time(created),
                    system_time(seen.unwrap_or(created)),
                    user_agent,
                )),
                _ => stale.push(handle),
            }
        }
        if !stale.is_empty() {
            let mut zrem = ::redis::cmd("ZREM");
            zrem.arg(&index);
            for handle in &stale {
                zrem.arg(handle.as_str());
            }
            let _: i64 = self.query(&zrem).await?;
        }
        live.sort_by_key(|s| s.created);
        Ok(live)
    }
}
