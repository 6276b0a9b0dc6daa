//! [`Flash`]: messages for the next request that shows them ("Price
//! changed", "You are logged out"), kept in the session.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::handle::Known;
use super::{Session, SessionError};

/// Session keys that hold flash messages start with this. Each request
/// that sets messages stores them under a key of its own
/// (`__flash.<time><random>`), so setting a message never needs the stored
/// ones (no load), and two requests setting messages at once both keep
/// theirs (the session saves only the keys a request changed).
pub const FLASH_KEY_PREFIX: &str = "__flash.";

/// How many earlier requests' messages a request that reads the session
/// and adds one keeps, its own aside.
pub const MAX_UNREAD: usize = 31;

/// How much a message matters, for its styling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Level {
    /// Detail for developers.
    Debug,
    /// Information.
    Info,
    /// Something the user did worked.
    Success,
    /// Something the user should know before going on.
    Warning,
    /// Something failed.
    Error,
}

impl Level {
    /// The level's name in lower case (`"info"`, `"success"`, ...): a CSS
    /// class, say.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Success => "success",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One flash message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// How much it matters.
    #[serde(rename = "l")]
    pub level: Level,
    /// The text to show.
    #[serde(rename = "t")]
    pub text: String,
}

impl Message {
    /// A message of `level` saying `text`.
    pub fn new(level: Level, text: impl Into<String>) -> Self {
        Message {
            level,
            text: text.into(),
        }
    }
}

/// Flash messages: set on one request, shown by the next request that
/// [takes](Flash::take) them, then gone.
///
/// Get it in axum with the extractor (`flash: Flash`), or from a
/// [`Session`] with [`Session::flash`]. Setting a message needs no store
/// access: it is saved with the response, through the session's
/// field-level save, so on a request that already writes the session it
/// costs nothing more, and on one that does not it costs the one save
/// (creating a session when there is none, as any write does).
/// [`take`](Flash::take) reads the session (one load, shared with every
/// other read of the request) and, only when there were messages, removes
/// them with the response's save.
///
/// - Messages come back in the order they were set, across requests.
/// - A message set on a request is not among what that request's `take`
///   returns: it is for the next page (the usual post, redirect, get).
/// - A response with a 5xx status saves nothing, so messages taken by a
///   request that then failed are shown again by the next one.
/// - Unread messages stay until a request takes them or the session ends.
///   A request that adds one after reading the session keeps at most the
///   [`MAX_UNREAD`] latest requests' messages, dropping the oldest (a
///   request that has not read it cannot count them, and adds its own).
///
/// ```
/// use axum::response::{Html, Redirect};
/// use redis_layers::session::{Flash, SessionError};
///
/// async fn change_price(flash: Flash) -> Result<Redirect, SessionError> {
///     // ... change the price ...
///     flash.success("Price changed")?;
///     Ok(Redirect::to("/"))
/// }
///
/// async fn home(flash: Flash) -> Result<Html<String>, SessionError> {
///     let mut page = String::new();
///     for message in flash.take().await? {
///         // Escaped: a message may hold what a user typed (a template
///         // engine such as maud does this for you).
///         let text = message.text.replace('&', "&amp;").replace('<', "&lt;");
///         page.push_str(&format!("<p class={}>{text}</p>", message.level));
///     }
///     Ok(Html(page))
/// }
/// ```
#[derive(Clone)]
pub struct Flash {
    session: Session,
}

impl fmt::Debug for Flash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flash").finish_non_exhaustive()
    }
}

impl Session {
    /// This session's flash messages (see [`Flash`]).
    pub fn flash(&self) -> Flash {
        Flash {
            session: self.clone(),
        }
    }
}

impl Flash {
    /// Adds `message` for the next request that takes the messages.
    pub fn push(&self, message: Message) -> Result<(), SessionError> {
        self.session.mark_used();
        self.session.check_open()?;
        let mut edits = self.session.edits();
        // This request's messages share one key: the one it already made.
        let own = edits.changes.iter_mut().find_map(|(key, json)| {
            let json = json.as_mut()?;
            key.starts_with(FLASH_KEY_PREFIX).then_some(json)
        });
        match own {
            Some(json) => {
                let mut list: Vec<Message> =
                    serde_json::from_str(json).map_err(|source| SessionError::Deserialize {
                        key: FLASH_KEY_PREFIX.to_owned(),
                        source,
                    })?;
                list.push(message);
                *json = serde_json::to_string(&list).map_err(SessionError::Serialize)?;
            }
            None => {
                let json = serde_json::to_string(&[message]).map_err(SessionError::Serialize)?;
                edits.changes.insert(new_key(), Some(json));
                drop(edits);
                self.trim();
            }
        }
        Ok(())
    }

    /// Drops the oldest unread requests' messages beyond [`MAX_UNREAD`],
    /// when this request has read the session (else it cannot count them).
    fn trim(&self) {
        let state = self.session.state();
        let mut edits = self.session.edits();
        let Known::Live(live) = &state.known else {
            return;
        };
        if edits.clear {
            return;
        }
        let mut unread: Vec<&str> = live
            .record
            .data
            .iter()
            .map(|(key, _)| key)
            .filter(|key| key.starts_with(FLASH_KEY_PREFIX))
            .filter(|key| !edits.changes.contains_key(*key))
            .collect();
        if unread.len() <= MAX_UNREAD {
            return;
        }
        unread.sort_unstable();
        let drop = unread.len() - MAX_UNREAD;
        for key in &unread[..drop] {
            edits.changes.insert((*key).to_owned(), None);
        }
    }

    /// Adds a message of `level`.
    pub fn add(&self, level: Level, text: impl Into<String>) -> Result<(), SessionError> {
        self.push(Message::new(level, text))
    }

    /// Adds a [`Level::Debug`] message.
    pub fn debug(&self, text: impl Into<String>) -> Result<(), SessionError> {
        self.add(Level::Debug, text)
    }

    /// Adds a [`Level::Info`] message.
    pub fn info(&self, text: impl Into<String>) -> Result<(), SessionError> {
        self.add(Level::Info, text)
    }

    /// Adds a [`Level::Success`] message.
    pub fn success(&self, text: impl Into<String>) -> Result<(), SessionError> {
        self.add(Level::Success, text)
    }

    /// Adds a [`Level::Warning`] message.
    pub fn warning(&self, text: impl Into<String>) -> Result<(), SessionError> {
        self.add(Level::Warning, text)
    }

    /// Adds a [`Level::Error`] message.
    pub fn error(&self, text: impl Into<String>) -> Result<(), SessionError> {
        self.add(Level::Error, text)
    }

    /// The messages earlier requests set, oldest first; they are removed
    /// when this response goes out. A stored list that cannot be read (a
    /// key under [`FLASH_KEY_PREFIX`] written by other code) is logged,
    /// skipped and removed.
    pub async fn take(&self) -> Result<Vec<Message>, SessionError> {
        self.session.ensure_loaded().await?;
        let state = self.session.state();
        let mut edits = self.session.edits();
        let Known::Live(live) = &state.known else {
            return Ok(Vec::new());
        };
        if edits.clear {
            return Ok(Vec::new());
        }
        let mut stored: Vec<(&str, &str)> = live
            .record
            .data
            .iter()
            .filter(|(key, _)| key.starts_with(FLASH_KEY_PREFIX))
            // Taken earlier in this request (removed), or this request's own.
            .filter(|(key, _)| !edits.changes.contains_key(*key))
            .collect();
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        stored.sort_unstable_by_key(|(key, _)| *key);
        let open = self.session.check_open().is_ok();
        let mut messages = Vec::new();
        for (key, json) in stored {
            match serde_json::from_str::<Vec<Message>>(json) {
                Ok(list) => messages.extend(list),
                Err(e) => {
                    tracing::warn!(key, error = %e, "an unreadable flash message list was dropped");
                }
            }
            if open {
                edits.changes.insert(key.to_owned(), None);
            }
        }
        Ok(messages)
    }
}

/// A new request's flash key: the wall-clock time in microseconds (so keys
/// sort in the order they were set; a clock step only reorders messages),
/// then random bits (so two requests in the same microsecond differ).
fn new_key() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut random = [0u8; 4];
    // Without randomness, two requests within a microsecond share a key
    // and the later save wins: rare, and only a lost message.
    let _ = getrandom::fill(&mut random);
    format!(
        "{FLASH_KEY_PREFIX}{micros:014x}{:08x}",
        u32::from_be_bytes(random)
    )
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for Flash {
    type Rejection = super::MissingSessionLayer;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Session::of(parts)?.flash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_the_order_they_were_made_and_differ() {
        let a = new_key();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_key();
        assert!(a.starts_with(FLASH_KEY_PREFIX));
        assert_eq!(a.len(), FLASH_KEY_PREFIX.len() + 22);
        assert!(a < b, "{a} < {b}");
        let same: std::collections::HashSet<_> = (0..1000).map(|_| new_key()).collect();
        assert_eq!(same.len(), 1000);
    }

    #[test]
    fn messages_are_stored_compactly_and_read_back() {
        let json = serde_json::to_string(&[Message::new(Level::Success, "Saved")]).unwrap();
        assert_eq!(json, r#"[{"l":"success","t":"Saved"}]"#);
        let back: Vec<Message> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0].level.as_str(), "success");
        assert!(serde_json::from_str::<Vec<Message>>(r#"[{"l":"loud","t":"x"}]"#).is_err());
    }
}
