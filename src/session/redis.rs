//! [`SessionStore`] for [`RedisBackend`]: one string value per session (see
//! `layout.rs`), one sorted set per user.
//!
//! A read is one plain `GET` (a touch-only check a `GETRANGE` of the
//! header). The expiry slides through `touch.lua`, a second round trip sent
//! only when the header shows a touch is due by this process's estimate of
//! Redis's clock: at most once per touch interval per session. Saves and
//! deletes are one script each. Every operation touches the keys of one
//! hash tag only, so it runs on Redis Cluster unchanged.

use std::time::Duration;

use super::id::SessionHandle;
use super::layout::{self, renewed, session_key, user_key, Header, HEADER_LEN};
use super::store::{
    DeleteOutcome, DeleteRequest, LoadOutcome, LoadRequest, Loaded, SaveMode, SaveOutcome,
    SaveRequest, SessionInfo, SessionStore, RENEWED_MARKER_TTL,
};
use crate::error::Error;
use crate::redis::{script, RedisBackend, Script};
use crate::time::{millis as ms, system_time};

static TOUCH: Script = script!("session-touch", "record.lua", "touch.lua");
static SAVE: Script = script!("session-save", "record.lua", "save.lua");
static DELETE: Script = script!("session-delete", "record.lua", "delete.lua");
static INDEX_ADD: Script = script!("session-index-add", "index_add.lua");
static INDEX_LIST: Script = script!("session-index-list", "index_list.lua");

impl RedisBackend {
    /// Runs `touch.lua`, telling it the session's own idle timeout as this
    /// request read it at `header`'s revision (`Some(None)`: none), or
    /// that it read only the header (`None`): the session's status (see
    /// the script), its expiry and Redis's time. Teaches the clock
    /// estimate.
    async fn touch(
        &self,
        key: &str,
        own: Option<Option<Duration>>,
        header: &Header,
        request: &LoadRequest,
    ) -> Result<(i64, u64, u64), Error> {
        let clock = self.server_clock();
        let sent = clock.mono_ms();
        let own = match own {
            None => "?".to_owned(),
            Some(None) => String::new(),
            Some(Some(idle)) => ms(idle).to_string(),
        };
        let reply: Vec<u8> = self
            .script(&TOUCH)
            .key(key)
            .arg(ms(request.idle))
            .arg(ms(request.touch_interval))
            .arg(own)
            .arg(header.revision)
            .invoke()
            .await?;
        let [status, expires, now] = numbers(&reply)?;
        clock.observe(sent, now as u64, clock.mono_ms());
        Ok((status as i64, expires as u64, now as u64))
    }
}

/// A script reply of `N` numbers packed as big-endian doubles (`reply3`,
/// `reply4` in `record.lua`).
fn numbers<const N: usize>(reply: &[u8]) -> Result<[f64; N], Error> {
    if reply.len() != N * 8 {
        return Err(Error::decode(
            "a session script's reply has the wrong length",
        ));
    }
    let mut out = [0.0; N];
    for (n, chunk) in out.iter_mut().zip(reply.chunks_exact(8)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        *n = f64::from_be_bytes(bytes);
    }
    Ok(out)
}

impl SessionStore for RedisBackend {
    async fn load(
        &self,
        handle: &SessionHandle,
        request: &LoadRequest,
    ) -> Result<LoadOutcome, Error> {
        let key = session_key(self.namespace(), handle);
        let mut cmd = ::redis::Cmd::with_capacity(4, 16 + key.len());
        cmd.arg(if request.fields { "GET" } else { "GETRANGE" })
            .arg(&key);
        if !request.fields {
            cmd.arg(0).arg(HEADER_LEN - 1);
        }
        let raw: Option<Vec<u8>> = self.query(&cmd).await?;
        // GETRANGE answers "" for a missing key.
        let Some(raw) = raw.filter(|raw| !raw.is_empty()) else {
            return Ok(LoadOutcome::Missing);
        };
        if renewed(&raw).is_some() {
            return Ok(LoadOutcome::Renewed);
        }
        let mut header = Header::parse(&raw)?;
        let mut record = if request.fields {
            Some(layout::record(&header, raw.into())?)
        } else {
            None
        };
        // The idle timeout the expiry slides by: the session's own, read
        // off the record, or off the header alone for a touch-only check
        // (the script then reads the session's own, if any).
        let (idle_ms, own) = match &record {
            Some(record) => (
                layout::idle_ms(record, ms(request.idle)),
                record.idle.is_some(),
            ),
            None => (header.idle_estimate(ms(request.idle)), false),
        };
        // Redis's time unknown (at start, or the estimate is too old): ask
        // the script, which also measures it.
        let estimate = self.server_clock().estimate();
        let due = estimate.is_none_or(|now| {
            header
                .touch_target(now, idle_ms, own, ms(request.touch_interval))
                .is_some()
        });
        let (now, touched) = if due {
            let own = record.as_ref().map(|record| record.idle);
            // Boxed: rare, and its future would otherwise make every
            // load's future (and what it is copied into) larger.
            let (status, expires, now) = Box::pin(self.touch(&key, own, &header, request)).await?;
            match status {
                1 | 2 => {}
                3 => return Ok(LoadOutcome::Renewed),
                _ => return Ok(LoadOutcome::Missing),
            }
            header.expires_ms = expires;
            if status == 2 {
                header.seen_ms = now;
                if let Some(record) = &mut record {
                    record.last_seen_ms = now;
                }
            }
            (now, status == 2)
        } else {
            (estimate.unwrap_or_default(), false)
        };
        let expires_in = Duration::from_millis(header.expires_ms.saturating_sub(now));
        Ok(LoadOutcome::Found(Loaded::new(expires_in, touched, record)))
    }

    async fn save(
        &self,
        handle: &SessionHandle,
        request: &SaveRequest,
    ) -> Result<SaveOutcome, Error> {
        let mut call = self
            .script(&SAVE)
            .key(session_key(self.namespace(), handle));
        let optional = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
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
                .arg(optional(*created_ms))
                .arg(optional(*deadline_ms)),
        };
        call = call.arg(if request.clear { "1" } else { "0" });
        call = match &request.user {
            None => call.arg(""),
            Some(None) => call.arg("-"),
            Some(Some(user)) => call.arg(format!("={user}")),
        };
        call = match &request.mode {
            SaveMode::Create {
                user_agent: Some(ua),
                ..
            } => call.arg(ua.as_str()),
            _ => call.arg(""),
        };
        call = match request.own_idle {
            None => call.arg(""),
            Some(None) => call.arg("-"),
            Some(Some(idle)) => call.arg(ms(idle)),
        };
        call = call.arg(match request.own_persistent {
            None => "",
            Some(None) => "-",
            Some(Some(true)) => "1",
            Some(Some(false)) => "0",
        });
        for (key, json) in &request.data {
            call = call.arg(key.as_str()).arg(json.as_deref().unwrap_or(""));
        }
        let clock = self.server_clock();
        let sent = clock.mono_ms();
        let reply: Vec<u8> = call.invoke().await?;
        let [status, expires, deadline, now] = numbers(&reply)?;
        let (expires, deadline, now) = (expires as u64, deadline as u64, now as u64);
        clock.observe(sent, now, clock.mono_ms());
        Ok(match status as i64 {
            1 => SaveOutcome::saved(
                Duration::from_millis(expires.saturating_sub(now)),
                Duration::from_millis(deadline.saturating_sub(now)),
                deadline,
            ),
            2 => SaveOutcome::Renewed,
            -1 => SaveOutcome::Exists,
            _ => SaveOutcome::Missing,
        })
    }

    async fn delete(
        &self,
        handle: &SessionHandle,
        request: &DeleteRequest,
    ) -> Result<DeleteOutcome, Error> {
        let (status, detail): (i64, String) = self
            .script(&DELETE)
            .key(session_key(self.namespace(), handle))
            .arg(request.owner.as_deref().unwrap_or(""))
            .arg(request.revision.map(|r| r.to_string()).unwrap_or_default())
            .arg(request.successor.as_ref().map_or("", SessionHandle::as_str))
            .arg(ms(RENEWED_MARKER_TTL))
            .invoke()
            .await?;
        Ok(match status {
            1 => DeleteOutcome::deleted((!detail.is_empty()).then_some(detail)),
            -1 => DeleteOutcome::NotOwned,
            -2 => DeleteOutcome::Changed,
            -3 => DeleteOutcome::renewed(SessionHandle::parse(&detail)),
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
        // One round trip for every session (on a cluster, concurrent
        // reads of their slots).
        let reads = handles
            .iter()
            .map(|handle| {
                let mut get = ::redis::cmd("GET");
                get.arg(session_key(self.namespace(), handle));
                vec![get]
            })
            .collect();
        let values: Vec<Option<Vec<u8>>> = self.grouped(reads).await?;
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (handle, value) in handles.into_iter().zip(values) {
            let record = value
                .filter(|v| renewed(v).is_none())
                .map(|v| layout::decode(v.into()))
                .transpose()?;
            match record {
                Some((_, record)) if record.user.as_deref() == Some(user) => {
                    live.push(SessionInfo::new(
                        handle,
                        system_time(record.created_ms),
                        system_time(record.last_seen_ms),
                        record.user_agent,
                    ))
                }
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
