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
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionId([u8; ID_LEN]);

impl SessionId {
    /// A fresh id from the operating system's CSPRNG.
    pub(crate) fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; ID_BYTES];
        getrandom::fill(&mut bytes)?;
        let mut text = [0u8; ID_LEN];
        // 24 bytes are exactly 32 base64 characters: the buffer fits.
        let written = URL_SAFE_NO_PAD
            .encode_slice(bytes, &mut text)
            .unwrap_or_default();
        debug_assert_eq!(written, ID_LEN);
        Ok(SessionId(text))
    }

    /// Accepts only what [`generate`](Self::generate) makes: exactly 32
    /// base64url characters. (32 characters of 6 bits are exactly 24 bytes,
    /// so any such string is a well-formed id; nothing needs decoding.)
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; ID_LEN] = s.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            .then_some(SessionId(bytes))
    }

    /// The id as it appears in the cookie.
    pub fn as_str(&self) -> &str {
        // Only base64url characters are ever stored (see `parse`, `generate`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The handle naming this session in the store and in session lists.
    pub fn handle(&self) -> SessionHandle {
        let digest = Sha256::digest(self.0);
        let mut hex = [0u8; HANDLE_LEN];
        for (i, byte) in digest[..HANDLE_LEN / 2].iter().enumerate() {
            hex[2 * i] = HEX[usize::from(byte >> 4)];
            hex[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
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
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionHandle([u8; HANDLE_LEN]);

impl SessionHandle {
    /// Accepts a handle as shown in a session list (32 lowercase hex characters).
    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; HANDLE_LEN] = s.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| HEX.contains(b))
            .then_some(SessionHandle(bytes))
    }

    /// The handle as text.
    pub fn as_str(&self) -> &str {
        // Only lowercase hex is ever stored (see `parse`, `SessionId::handle`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionHandle({})", self.as_str())
    }
}

impl fmt::Display for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
        assert_eq!(SessionId::parse(a.as_str()), Some(a));
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
        let multibyte = format!("{}é", &good.as_str()[2..]);
        for bad in [
            "",
            short,
            long.as_str(),
            bad_char.as_str(),
            padded.as_str(),
            "é",
            multibyte.as_str(),
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn handles_are_hex_and_do_not_contain_the_id() {
        let id = SessionId::generate().unwrap();
        let h = id.handle();
        assert_eq!(SessionHandle::parse(h.as_str()), Some(h));
        assert!(!h.as_str().contains(id.as_str()));
        assert_eq!(
            SessionHandle::parse("ABCDEF0123456789abcdef0123456789"),
            None
        );
        assert_eq!(SessionHandle::parse("abc"), None);
        assert_eq!(format!("{id:?}"), "SessionId(..)");
    }
}
