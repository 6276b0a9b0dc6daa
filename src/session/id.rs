//! Session ids (the secret in the cookie) and session handles (the hash of
//! the id that names the record in the store).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Random bytes in a session id: 192 bits from the OS CSPRNG.
const ID_BYTES: usize = 24;
/// Length of an id in the cookie: 24 bytes as unpadded base64url.
pub(crate) const ID_LEN: usize = 32;

/// A session id: the secret the cookie carries. Never logged, never stored:
/// the store only sees its [`SessionHandle`].
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh id from the operating system's CSPRNG.
    pub(crate) fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; ID_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(SessionId(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts only what [`generate`](Self::generate) makes: exactly 32
    /// base64url characters that decode to 24 bytes.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        if s.len() != ID_LEN
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let decoded = URL_SAFE_NO_PAD.decode(s).ok()?;
        (decoded.len() == ID_BYTES).then(|| SessionId(s.to_owned()))
    }

    /// The id as it appears in the cookie.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The handle naming this session in the store and in session lists.
    pub fn handle(&self) -> SessionHandle {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut hex = String::with_capacity(HANDLE_LEN);
        for byte in &digest[..HANDLE_LEN / 2] {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        SessionHandle(hex)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The id is a bearer secret: keep it out of logs.
        f.write_str("SessionId(..)")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";
const HANDLE_LEN: usize = 32;

/// The public name of a session: the first 128 bits of SHA-256 of its id, as
/// hex. The store is keyed by it (so a dump of Redis reveals no live cookie),
/// and session lists show it (so a page listing a user's sessions can offer
/// "revoke" without exposing the other sessions' ids).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionHandle(String);

impl SessionHandle {
    /// Accepts a handle as shown in a session list (32 lowercase hex characters).
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == HANDLE_LEN && s.bytes().all(|b| HEX.contains(&b)))
            .then(|| SessionHandle(s.to_owned()))
    }

    /// The handle as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionHandle({})", self.0)
    }
}

impl fmt::Display for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), ID_LEN);
        assert_eq!(SessionId::parse(a.as_str()), Some(a.clone()));
        assert_ne!(a.handle(), b.handle());
        assert_eq!(a.handle(), SessionId::parse(a.as_str()).unwrap().handle());
    }

    #[test]
    fn malformed_ids_are_rejected() {
        let good = SessionId::generate().unwrap();
        let long = format!("{}A", good.as_str());
        let short = &good.as_str()[1..];
        let bad_char = format!("{}.", &good.as_str()[1..]);
        let padded = format!("{}=", &good.as_str()[1..]);
        for bad in [
            "",
            short,
            long.as_str(),
            bad_char.as_str(),
            padded.as_str(),
            "é",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn handles_are_hex_and_do_not_contain_the_id() {
        let id = SessionId::generate().unwrap();
        let h = id.handle();
        assert_eq!(SessionHandle::parse(h.as_str()), Some(h.clone()));
        assert!(!h.as_str().contains(id.as_str()));
        assert_eq!(
            SessionHandle::parse("ABCDEF0123456789abcdef0123456789"),
            None
        );
        assert_eq!(SessionHandle::parse("abc"), None);
        assert_eq!(format!("{id:?}"), "SessionId(..)");
    }
}
