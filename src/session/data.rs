//! [`SessionData`]: a session's data, decoded only as far as it is read.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use super::layout::text;

/// A session's data: each key's value as JSON text.
///
/// A load keeps the stored bytes and finds a key by scanning them, so a
/// request that reads one value decodes one value; the first change turns
/// the data into a map.
///
/// ```
/// use redis_layers::session::store::SessionData;
///
/// let mut data: SessionData = [("cart".to_owned(), "[1,2]".to_owned())].into_iter().collect();
/// assert_eq!(data.get("cart"), Some("[1,2]"));
/// data.insert("n".to_owned(), "3".to_owned());
/// data.remove("cart");
/// assert_eq!(data.iter().collect::<Vec<_>>(), [("n", "3")]);
/// ```
#[derive(Clone, Default)]
pub struct SessionData {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Map(HashMap<String, String>),
    /// `count` pairs of MessagePack strings from `start` in `bytes`,
    /// checked well-formed when they were loaded.
    Packed {
        bytes: Bytes,
        start: usize,
        count: usize,
    },
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Map(HashMap::new())
    }
}

impl SessionData {
    /// No data.
    pub fn new() -> Self {
        SessionData::default()
    }

    /// The `count` key/JSON pairs of MessagePack strings at `start` in
    /// `bytes` (already checked by the caller).
    pub(crate) fn packed(bytes: Bytes, start: usize, count: usize) -> Self {
        SessionData {
            repr: Repr::Packed {
                bytes,
                start,
                count,
            },
        }
    }

    /// The JSON text stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        match &self.repr {
            Repr::Map(map) => map.get(key).map(String::as_str),
            Repr::Packed { .. } => self.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
        }
    }

    /// Sets `key` to the JSON text `json`.
    pub fn insert(&mut self, key: String, json: String) {
        self.map_mut().insert(key, json);
    }

    /// Removes `key`; its JSON text, if it was there.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.map_mut().remove(key)
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.repr = Repr::default();
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Map(map) => map.len(),
            Repr::Packed { count, .. } => *count,
        }
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key with its JSON text, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let (map, packed) = match &self.repr {
            Repr::Map(map) => (Some(map.iter()), None),
            Repr::Packed {
                bytes,
                start,
                count,
            } => (None, Some((&bytes[*start..], *count))),
        };
        let from_map = map
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let from_bytes = packed.into_iter().flat_map(|(mut rest, count)| {
            (0..count).map_while(move |_| Some((text(&mut rest)?, text(&mut rest)?)))
        });
        from_map.chain(from_bytes)
    }

    fn map_mut(&mut self) -> &mut HashMap<String, String> {
        if let Repr::Packed { .. } = self.repr {
            let map = self
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            self.repr = Repr::Map(map);
        }
        match &mut self.repr {
            Repr::Map(map) => map,
            Repr::Packed { .. } => unreachable!("just decoded into a map"),
        }
    }
}

impl FromIterator<(String, String)> for SessionData {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        SessionData {
            repr: Repr::Map(iter.into_iter().collect()),
        }
    }
}

impl From<HashMap<String, String>> for SessionData {
    fn from(map: HashMap<String, String>) -> Self {
        SessionData {
            repr: Repr::Map(map),
        }
    }
}

impl PartialEq for SessionData {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Eq for SessionData {}

impl fmt::Debug for SessionData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(pairs: &[(&str, &str)]) -> SessionData {
        let mut bytes = b"junk".to_vec();
        for (k, v) in pairs {
            rmp::encode::write_str(&mut bytes, k).unwrap();
            rmp::encode::write_str(&mut bytes, v).unwrap();
        }
        SessionData::packed(Bytes::from(bytes), 4, pairs.len())
    }

    #[test]
    fn packed_data_reads_like_a_map_and_turns_into_one_on_change() {
        let mut data = packed(&[("a", "1"), ("b", "\"two\"")]);
        assert_eq!(data.get("b"), Some("\"two\""));
        assert_eq!(data.get("c"), None);
        assert_eq!(data.len(), 2);
        let map: SessionData = [("b", "\"two\""), ("a", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(data, map, "equal whatever the form");
        assert_eq!(data.remove("a").as_deref(), Some("1"));
        data.insert("c".into(), "3".into());
        let mut pairs: Vec<_> = data.iter().collect();
        pairs.sort();
        assert_eq!(pairs, [("b", "\"two\""), ("c", "3")]);
        data.clear();
        assert!(data.is_empty());
        assert_eq!(format!("{:?}", packed(&[("k", "1")])), r#"{"k": "1"}"#);
    }
}
