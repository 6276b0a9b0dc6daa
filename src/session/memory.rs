//! [`SessionStore`] for [`MemoryBackend`]: the same records, keys and rules
//! as on Redis, each operation under the backend's lock.

use std::collections::HashMap;
use std::time::Duration;

use super::id::SessionHandle;
use super::layout::{field_changes, fields, record_from_fields, session_key, user_key};
use super::store::{
    DeleteOutcome, DeleteRequest, LoadRequest, Loaded, SaveMode, SaveOutcome, SaveRequest,
    SessionInfo, SessionStore,
};
use crate::error::{Error, ErrorKind};
use crate::memory::{Keyspace, MemoryBackend, Value};
use crate::time::{millis as ms, system_time};

fn wrong_type() -> Error {
    Error::new(
        ErrorKind::Server,
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )
}

/// The session hash under `key`, if any (a non-hash is an error, as in Redis).
fn hash<'a>(
    ks: &'a mut Keyspace,
    key: &str,
) -> Result<Option<&'a mut HashMap<String, Vec<u8>>>, Error> {
    match ks.get_mut(key) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(wrong_type()),
    }
}

fn number(h: &HashMap<String, Vec<u8>>, field: &str) -> Option<u64> {
    std::str::from_utf8(h.get(field)?).ok()?.parse().ok()
}

fn text(h: &HashMap<String, Vec<u8>>, field: &str) -> Option<String> {
    h.get(field)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The live deadline of the session under `key`; deletes it when past.
fn live_deadline(ks: &mut Keyspace, key: &str, now: u64) -> Result<Option<u64>, Error> {
    let Some(h) = hash(ks, key)? else {
        return Ok(None);
    };
    let Some(deadline) = number(h, fields::DEADLINE) else {
        return Ok(None);
    };
    if deadline <= now {
        ks.remove(key);
        return Ok(None);
    }
    Ok(Some(deadline))
}

impl SessionStore for MemoryBackend {
    async fn load(
        &self,
        handle: &SessionHandle,
        request: &LoadRequest,
    ) -> Result<Option<Loaded>, Error> {
        let key = session_key(self.namespace(), handle);
        self.atomically(|ks| {
            let now = ks.now_millis();
            let Some(deadline) = live_deadline(ks, &key, now)? else {
                return Ok(None);
            };
            let mut expires = ks.expire_time_millis(&key).flatten().unwrap_or(now);
            let target = now.saturating_add(ms(request.idle)).min(deadline);
            let touched = target.saturating_sub(expires) > ms(request.touch_interval);
            if touched {
                ks.expire_at_millis(&key, target);
                if let Some(h) = hash(ks, &key)? {
                    h.insert(fields::SEEN.to_owned(), now.to_string().into_bytes());
                }
                expires = target;
            }
            let record = if request.fields {
                let h = hash(ks, &key)?.ok_or_else(|| Error::decode("session vanished"))?;
                Some(record_from_fields(h.iter().map(|(k, v)| {
                    (k.clone(), String::from_utf8_lossy(v).into_owned())
                })))
            } else {
                None
            };
            Ok(Some(Loaded::new(
                Duration::from_millis(expires.saturating_sub(now)),
                touched,
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
            let deadline = match &request.mode {
                SaveMode::Create {
                    created_ms,
                    deadline_ms,
                    ..
                } => {
                    if ks.get(&key).is_some() {
                        return Ok(SaveOutcome::Exists);
                    }
                    let deadline = deadline_ms.unwrap_or(now.saturating_add(ms(request.absolute)));
                    if deadline <= now {
                        return Ok(SaveOutcome::Missing);
                    }
                    let mut h = HashMap::new();
                    h.insert(
                        fields::CREATED.to_owned(),
                        created_ms.unwrap_or(now).to_string().into_bytes(),
                    );
                    h.insert(
                        fields::DEADLINE.to_owned(),
                        deadline.to_string().into_bytes(),
                    );
                    ks.set(
                        &key,
                        Value::Hash(h),
                        Some(Duration::from_millis(deadline - now)),
                    )?;
                    deadline
                }
                SaveMode::Update => match live_deadline(ks, &key, now)? {
                    Some(deadline) => deadline,
                    None => return Ok(SaveOutcome::Missing),
                },
            };
            let h = hash(ks, &key)?.ok_or_else(|| Error::decode("session vanished"))?;
            if request.clear {
                h.retain(|field, _| !field.starts_with(fields::DATA));
            }
            for (field, value) in field_changes(request) {
                match value {
                    Some(v) => {
                        h.insert(field, v.as_bytes().to_vec());
                    }
                    None => {
                        h.remove(&field);
                    }
                }
            }
            h.insert(fields::SEEN.to_owned(), now.to_string().into_bytes());
            let expires = now.saturating_add(ms(request.idle)).min(deadline);
            ks.expire_at_millis(&key, expires);
            Ok(SaveOutcome::saved(
                Duration::from_millis(expires - now),
                deadline,
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
            let Some(h) = hash(ks, &key)? else {
                return Ok(DeleteOutcome::Missing);
            };
            let user = text(h, fields::USER);
            if let Some(expected) = &request.owner {
                if user.as_ref() != Some(expected) {
                    return Ok(DeleteOutcome::NotOwned);
                }
            }
            ks.remove(&key);
            Ok(DeleteOutcome::deleted(user))
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
                    return Err(wrong_type());
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
            let now = ks.now_millis();
            let Some(index) = hash(ks, &index_key)? else {
                return Ok(Vec::new());
            };
            let handles: Vec<String> = index.keys().cloned().collect();
            let mut live = Vec::new();
            for member in handles {
                let handle = SessionHandle::parse(&member);
                let info = match &handle {
                    Some(handle) => {
                        let key = session_key(self.namespace(), handle);
                        match live_deadline(ks, &key, now)? {
                            Some(_) => hash(ks, &key)?.and_then(|h| {
                                let created = number(h, fields::CREATED)?;
                                (text(h, fields::USER).as_deref() == Some(user)).then(|| {
                                    SessionInfo::new(
                                        handle.clone(),
                                        system_time(created),
                                        system_time(number(h, fields::SEEN).unwrap_or(created)),
                                        text(h, fields::USER_AGENT),
                                    )
                                })
                            }),
                            None => None,
                        }
                    }
                    None => None,
                };
                match info {
                    Some(info) => live.push(info),
                    None => {
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
