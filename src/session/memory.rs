//! [`SessionStore`] for [`MemoryBackend`]: the same values, keys and rules
//! as on Redis (`layout.rs`), each operation under the backend's lock,
//! timed by the backend's clock.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use super::id::SessionHandle;
use super::layout::{self, renewed, renewed_marker, session_key, user_key, Header};
use super::store::{
    DeleteOutcome, DeleteRequest, LoadOutcome, LoadRequest, Loaded, SaveMode, SaveOutcome,
    SaveRequest, SessionInfo, SessionRecord, SessionStore, RENEWED_MARKER_TTL,
};
use crate::error::Error;
use crate::memory::{Keyspace, MemoryBackend, Value};
use crate::time::{millis as ms, system_time};

/// The session value under `key`, if any (a hash is an error, as on Redis).
fn value<'a>(ks: &'a mut Keyspace, key: &str) -> Result<Option<&'a mut Vec<u8>>, Error> {
    match ks.get_mut(key) {
        None => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b)),
        Some(_) => Err(Error::wrong_type()),
    }
}

/// The index hash under `key`, if any.
fn hash<'a>(
    ks: &'a mut Keyspace,
    key: &str,
) -> Result<Option<&'a mut HashMap<String, Vec<u8>>>, Error> {
    match ks.get_mut(key) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(Error::wrong_type()),
    }
}

impl SessionStore for MemoryBackend {
    async fn load(
        &self,
        handle: &SessionHandle,
        request: &LoadRequest,
    ) -> Result<LoadOutcome, Error> {
        let key = session_key(self.namespace(), handle);
        self.atomically(|ks| {
            let now = ks.now_millis();
            let Some(raw) = value(ks, &key)? else {
                return Ok(LoadOutcome::Missing);
            };
            if renewed(raw).is_some() {
                return Ok(LoadOutcome::Renewed);
            }
            // (Decoded whole even for a touch-only check: the session's
            // own idle timeout is in the body, and memory is cheap to read.)
            let (mut header, mut record) = layout::decode(Bytes::copy_from_slice(raw))?;
            let idle_ms = layout::idle_ms(&record, ms(request.idle));
            let own = record.idle.is_some();
            let target = header.touch_target(now, idle_ms, own, ms(request.touch_interval));
            if let Some(target) = target {
                header.touch(target, now);
                header.overwrite(raw);
                record.last_seen_ms = now;
            }
            let record = request.fields.then_some(record);
            if let Some(target) = target {
                ks.expire_at_millis(&key, target);
            }
            Ok(LoadOutcome::Found(Loaded::new(
                Duration::from_millis(header.expires_ms.saturating_sub(now)),
                target.is_some(),
                record,
            )))
        })
    }

    async fn save(
        &self,
        handle: &SessionHandle,
        request: &SaveRequest,
    ) -> Result<SaveOutcome, Error> {
        let key = session_key(self.namespace(), handle);
        self.atomically(|ks| {
            let now = ks.now_millis();
            let existing = match value(ks, &key)? {
                Some(raw) if renewed(raw).is_some() => match request.mode {
                    SaveMode::Update => return Ok(SaveOutcome::Renewed),
                    SaveMode::Create { .. } => return Ok(SaveOutcome::Exists),
                },
                Some(raw) => Some(layout::decode(Bytes::copy_from_slice(raw))?),
                None => None,
            };
            let (mut header, mut record) = match (&request.mode, existing) {
                (SaveMode::Create { .. }, Some(_)) => return Ok(SaveOutcome::Exists),
                (
                    SaveMode::Create {
                        created_ms,
                        deadline_ms,
                        ..
                    },
                    None,
                ) => {
                    let deadline = deadline_ms.unwrap_or(now.saturating_add(ms(request.absolute)));
                    if deadline <= now {
                        return Ok(SaveOutcome::Missing);
                    }
                    let created = created_ms.unwrap_or(now);
                    let header = Header {
                        expires_ms: now,
                        seen_ms: now,
                        deadline_ms: deadline,
                        created_ms: created,
                        revision: 0,
                    };
                    (header, SessionRecord::new(created, deadline))
                }
                (SaveMode::Update, None) => return Ok(SaveOutcome::Missing),
                (SaveMode::Update, Some((header, record))) => {
                    if header.deadline_ms <= now {
                        ks.remove(&key);
                        return Ok(SaveOutcome::Missing);
                    }
                    (header, record)
                }
            };
            layout::apply(&mut record, request);
            // A write is activity: it refreshes last-seen and slides the expiry.
            header.seen_ms = now;
            let idle_ms = layout::idle_ms(&record, ms(request.idle));
            header.expires_ms = now.saturating_add(idle_ms).min(header.deadline_ms);
            header.revision += 1;
            ks.set(&key, Value::Bytes(layout::encode(&header, &record)), None)?;
            ks.expire_at_millis(&key, header.expires_ms);
            Ok(SaveOutcome::saved(
                Duration::from_millis(header.expires_ms - now),
                Duration::from_millis(header.deadline_ms - now),
                header.deadline_ms,
            ))
        })
    }

    async fn delete(
        &self,
        handle: &SessionHandle,
        request: &DeleteRequest,
    ) -> Result<DeleteOutcome, Error> {
        let key = session_key(self.namespace(), handle);
        self.atomically(|ks| {
            let Some(raw) = value(ks, &key)? else {
                return Ok(DeleteOutcome::Missing);
            };
            if let Some(successor) = renewed(raw) {
                return Ok(DeleteOutcome::renewed(successor));
            }
            let (header, record) = layout::decode(Bytes::copy_from_slice(raw))?;
            if request.revision.is_some_and(|r| r != header.revision) {
                return Ok(DeleteOutcome::Changed);
            }
            if request.owner.is_some() && request.owner != record.user {
                return Ok(DeleteOutcome::NotOwned);
            }
            match &request.successor {
                Some(successor) => ks.set(
                    &key,
                    Value::Bytes(renewed_marker(successor)),
                    Some(RENEWED_MARKER_TTL),
                )?,
                None => {
                    ks.remove(&key);
                }
            }
            Ok(DeleteOutcome::deleted(record.user))
        })
    }

    async fn index_add(
        &self,
        user: &str,
        handle: &SessionHandle,
        deadline_ms: u64,
    ) -> Result<(), Error> {
        let key = user_key(self.namespace(), user);
        self.atomically(|ks| {
            let now = ks.now_millis();
            let mut index = match ks.remove(&key) {
                None => HashMap::new(),
                Some(Value::Hash(h)) => h,
                Some(other) => {
                    ks.set(&key, other, None)?;
                    return Err(Error::wrong_type());
                }
            };
            index.insert(
                handle.as_str().to_owned(),
                deadline_ms.to_string().into_bytes(),
            );
            index.retain(|_, deadline| {
                std::str::from_utf8(deadline)
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok())
                    .is_some_and(|d| d > now)
            });
            let last = index
                .values()
                .filter_map(|d| number_of(d))
                .max()
                .unwrap_or(now);
            if last > now {
                ks.set(
                    &key,
                    Value::Hash(index),
                    Some(Duration::from_millis(last - now)),
                )?;
            }
            Ok(())
        })
    }

    async fn index_remove(&self, user: &str, handle: &SessionHandle) -> Result<(), Error> {
        let key = user_key(self.namespace(), user);
        self.atomically(|ks| {
            if let Some(index) = hash(ks, &key)? {
                index.remove(handle.as_str());
                if index.is_empty() {
                    ks.remove(&key);
                }
            }
            Ok(())
        })
    }

    async fn list(&self, user: &str) -> Result<Vec<SessionInfo>, Error> {
        let index_key = user_key(self.namespace(), user);
        let mut live = self.atomically(|ks| {
            let Some(index) = hash(ks, &index_key)? else {
                return Ok(Vec::new());
            };
            let members: Vec<String> = index.keys().cloned().collect();
            let mut live = Vec::new();
            for member in members {
                let handle = SessionHandle::parse(&member);
                let record = match &handle {
                    Some(handle) => match value(ks, &session_key(self.namespace(), handle))? {
                        Some(raw) if renewed(raw).is_none() => {
                            Some(layout::decode(Bytes::copy_from_slice(raw))?.1)
                        }
                        _ => None,
                    },
                    None => None,
                };
                match (handle, record) {
                    (Some(handle), Some(record)) if record.user.as_deref() == Some(user) => live
                        .push(SessionInfo::new(
                            handle,
                            system_time(record.created_ms),
                            system_time(record.last_seen_ms),
                            record.user_agent,
                        )),
                    _ => {
                        if let Some(index) = hash(ks, &index_key)? {
                            index.remove(&member);
                        }
                    }
                }
            }
            Ok::<_, Error>(live)
        })?;
        live.sort_by_key(|s| s.created);
        Ok(live)
    }
}

fn number_of(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}
