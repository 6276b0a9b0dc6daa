//! How sessions are laid out in a keyspace, the same on Redis and in
//! memory: one hash per session, one index per user, and their keys.

use super::id::SessionHandle;
use super::store::{SaveMode, SaveRequest, SessionRecord};
use crate::keys::Namespace;

/// `{prefix}:session:{<handle>}`: the session's hash.
pub(crate) fn session_key(ns: &Namespace, handle: &SessionHandle) -> String {
    ns.tagged("session", handle.as_str()).into_base()
}

/// `{prefix}:session-user:{<user>}`: the user's index of sessions.
pub(crate) fn user_key(ns: &Namespace, user: &str) -> String {
    ns.tagged("session-user", user).into_base()
}

/// Field names in the stored hash: data under `d:`, metadata under `m:`.
pub(crate) mod fields {
    pub(crate) const DATA: &str = "d:";
    pub(crate) const CREATED: &str = "m:created";
    pub(crate) const DEADLINE: &str = "m:deadline";
    pub(crate) const SEEN: &str = "m:seen";
    pub(crate) const USER: &str = "m:user";
    pub(crate) const USER_AGENT: &str = "m:ua";
}

/// Builds a record from the stored hash's fields.
pub(crate) fn record_from_fields<I: IntoIterator<Item = (String, String)>>(
    pairs: I,
) -> SessionRecord {
    let mut record = SessionRecord::default();
    for (field, value) in pairs {
        if let Some(key) = field.strip_prefix(fields::DATA) {
            record.data.insert(key.to_owned(), value);
            continue;
        }
        match field.as_str() {
            fields::CREATED => record.created_ms = value.parse().unwrap_or(0),
            fields::DEADLINE => record.deadline_ms = value.parse().unwrap_or(0),
            fields::SEEN => record.last_seen_ms = value.parse().unwrap_or(0),
            fields::USER => record.user = Some(value),
            fields::USER_AGENT => record.user_agent = Some(value),
            _ => {}
        }
    }
    record
}

/// The hash fields a save writes (`Some`) or deletes (`None`), in order.
pub(crate) fn field_changes(request: &SaveRequest) -> Vec<(String, Option<&str>)> {
    let mut out = Vec::with_capacity(request.data.len() + 2);
    if let SaveMode::Create {
        user_agent: Some(ua),
        ..
    } = &request.mode
    {
        out.push((fields::USER_AGENT.to_owned(), Some(ua.as_str())));
    }
    if let Some(user) = &request.user {
        out.push((fields::USER.to_owned(), user.as_deref()));
    }
    for (key, value) in &request.data {
        out.push((format!("{}{key}", fields::DATA), value.as_deref()));
    }
    out
}
