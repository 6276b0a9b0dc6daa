//! Key names: one namespace per backend, hash tags for keys a script touches together.
//!
//! Every key a layer writes starts with the backend's prefix and the
//! capability, then a *hash tag* in braces: `{prefix}:{capability}:{{tag}}`,
//! optionally followed by `:{suffix}`. A session, for example, is one key,
//! `redis-layers:session:{3f9a…}`. Keys that share a tag hash to the same
//! Redis Cluster slot, so one Lua script may touch all of them on a cluster.
//! Keys that need no partner use [`Namespace::key`] and carry no tag.
//!
//! ```
//! use redis_layers::Namespace;
//!
//! let ns = Namespace::new("myapp").unwrap();
//! let group = ns.tagged("rate", "203.0.113.7");
//! assert_eq!(group.base(), "myapp:rate:{203.0.113.7}");
//! assert_eq!(group.key("minute"), "myapp:rate:{203.0.113.7}:minute");
//! assert_eq!(group.key("hour"), "myapp:rate:{203.0.113.7}:hour");
//! assert_eq!(ns.key(&["health"]), "myapp:health");
//! ```

use std::fmt::Write as _;
use std::sync::Arc;

use crate::error::{Error, ErrorKind};

/// The key prefix a backend writes under; isolates applications (or tests)
/// sharing one Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    prefix: Arc<str>,
}

impl Namespace {
    /// The prefix used when none is configured.
    pub const DEFAULT_PREFIX: &'static str = "redis-layers";

    /// A namespace with the given prefix.
    ///
    /// The prefix must be non-empty, at most 128 bytes, and free of `{`, `}`
    /// and whitespace: braces in the prefix would become the hash tag of every
    /// key and put the whole namespace on one cluster slot.
    pub fn new(prefix: &str) -> Result<Self, Error> {
        if prefix.is_empty() || prefix.len() > 128 {
            return Err(Error::new(
                ErrorKind::Config,
                "key prefix must be 1 to 128 bytes long",
            ));
        }
        if prefix
            .chars()
            .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!("key prefix {prefix:?} must not contain braces, whitespace or control characters"),
            ));
        }
        Ok(Namespace {
            prefix: Arc::from(prefix),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix:part:part…`, without a hash tag.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = String::with_capacity(
            self.prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        key.push_str(&self.prefix);
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// Keys of one `capability` that share the hash tag `tag`.
    ///
    /// Any `{`, `}` or `%` in `tag` is percent-encoded, so a caller-chosen tag
    /// (an IP address, a user id) can neither break out of the braces nor
    /// collide with another tag.
    pub fn tagged(&self, capability: &str, tag: &str) -> TaggedKeys {
        self.tagged_with_room(capability, tag, 0)
    }

    /// [`tagged`](Self::tagged), with room for a `:suffix` of `room` bytes
    /// (so that [`TaggedKeys::into_key`] needs no second allocation).
    pub(crate) fn tagged_with_room(&self, capability: &str, tag: &str, room: usize) -> TaggedKeys {
        let mut base =
            String::with_capacity(self.prefix.len() + capability.len() + tag.len() + 5 + room);
        base.push_str(&self.prefix);
        base.push(':');
        base.push_str(capability);
        base.push_str(":{");
        if tag.bytes().any(|b| matches!(b, b'{' | b'}' | b'%')) {
            for c in tag.chars() {
                match c {
                    '{' | '}' | '%' => {
                        let _ = write!(base, "%{:02X}", c as u32);
                    }
                    c => base.push(c),
                }
            }
        } else {
            // The common case (a hex handle, an address): copied whole.
            base.push_str(tag);
        }
        base.push('}');
        TaggedKeys { base }
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            prefix: Arc::from(Self::DEFAULT_PREFIX),
        }
    }
}

/// Keys sharing one hash tag; see [`Namespace::tagged`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedKeys {
    base: String,
}

impl TaggedKeys {
    /// `prefix:capability:{tag}:suffix`.
    pub fn key(&self, suffix: &str) -> String {
        let mut key = String::with_capacity(self.base.len() + 1 + suffix.len());
        key.push_str(&self.base);
        key.push(':');
        key.push_str(suffix);
        key
    }

    /// `prefix:capability:{tag}`, the part every key of the group starts with.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The base as an owned key, for a group that is a single key.
    pub fn into_base(self) -> String {
        self.base
    }

    /// `prefix:capability:{tag}:suffix`, reusing the base's buffer.
    #[cfg_attr(not(feature = "session"), allow(dead_code))]
    pub(crate) fn into_key(mut self, suffix: &str) -> String {
        self.base.push(':');
        self.base.push_str(suffix);
        self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot-relevant part of a key, by Redis's rule: the text between the
    /// first `{` and the next `}`, if non-empty.
    fn hash_tag(key: &str) -> &str {
        if let Some(open) = key.find('{') {
            if let Some(len) = key[open + 1..].find('}') {
                if len > 0 {
                    return &key[open + 1..open + 1 + len];
                }
            }
        }
        key
    }

    #[test]
    fn keys_of_one_group_share_the_tag() {
        let ns = Namespace::new("app").unwrap();
        let g = ns.tagged("rate", "1.2.3.4");
        assert_eq!(hash_tag(&g.key("a")), "1.2.3.4");
        assert_eq!(hash_tag(&g.key("b")), hash_tag(&g.key("a")));
    }

    #[test]
    fn hostile_tags_cannot_escape_the_braces() {
        let ns = Namespace::default();
        let a = ns.tagged("x", "a}b");
        let b = ns.tagged("x", "a%7Db");
        assert_eq!(hash_tag(&a.key("k")), "a%7Db");
        assert_ne!(a, b, "encoding must be injective");
        assert_eq!(hash_tag(&ns.tagged("x", "{").key("k")), "%7B");
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        for bad in ["", "a{b", "a}b", "a b", "a\nb"] {
            let err = Namespace::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}");
        }
        assert!(Namespace::new(&"x".repeat(129)).is_err());
        assert_eq!(Namespace::default().prefix(), "redis-layers");
    }
}
