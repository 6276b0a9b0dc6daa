//! SHA-256 digests of request parts, as the layers key their records
//! (so no credential, URL or client key appears in clear in the store),
//! and their hex form. Written once for every layer that needs it.

use sha2::{Digest, Sha256};

/// SHA-256 over `parts`, each prefixed by its length, so that no two
/// different lists hash alike (`["ab", "c"]` is not `["a", "bc"]`).
pub(crate) fn digest_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Appends `bytes` as lowercase hex.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

/// 32 hex digits: the first half of [`digest_parts`].
pub(crate) fn hex_digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut out = String::with_capacity(32);
    push_hex(&mut out, &digest_parts(parts)[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed_and_hex_is_lowercase() {
        assert_ne!(
            digest_parts([b"ab".as_slice(), b"c"]),
            digest_parts([b"a".as_slice(), b"bc"])
        );
        let h = hex_digest([b"x".as_slice()]);
        assert_eq!(h.len(), 32);
        assert!(h
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let mut s = String::from("p:");
        push_hex(&mut s, &[0x0f, 0xa0]);
        assert_eq!(s, "p:0fa0");
    }
}
