//! The `Idempotency-Key` field: an sf-string (RFC 8941), as
//! draft-ietf-httpapi-idempotency-key-header defines it, or, leniently, a
//! bare token; 1 to 255 visible ASCII characters either way.

use http::HeaderValue;

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// The key a field carries, or why it is refused.
pub(crate) fn parse(value: &HeaderValue) -> Result<String, &'static str> {
    let raw = value.as_bytes();
    let raw = trim(raw);
    let key = if let Some(inner) = raw.strip_prefix(b"\"") {
        // sf-string: up to the closing quote, with \" and \\ escapes.
        let mut out = Vec::with_capacity(inner.len());
        let mut bytes = inner.iter();
        let mut closed = false;
        while let Some(&b) = bytes.next() {
            match b {
                b'\\' => match bytes.next() {
                    Some(&e @ (b'"' | b'\\')) => out.push(e),
                    _ => return Err("a backslash in the key escapes only \" or \\"),
                },
                b'"' => {
                    closed = true;
                    break;
                }
                _ => out.push(b),
            }
        }
        if !closed {
            return Err("the quoted key has no closing quote");
        }
        // Parameters after the string are allowed by the syntax; nothing
        // else is.
        let rest: Vec<u8> = bytes.copied().collect();
        let rest = trim(&rest);
        if !rest.is_empty() && !rest.starts_with(b";") {
            return Err("the key field holds more than one string");
        }
        out
    } else {
        raw.to_vec()
    };
    if key.is_empty() {
        return Err("the key is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return Err("the key is longer than 255 characters");
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("the key may hold only visible ASCII characters");
    }
    if !raw.starts_with(b"\"") && key.iter().any(|b| matches!(b, b',' | b';' | b'"')) {
        return Err("an unquoted key may not hold ',', ';' or '\"'");
    }
    String::from_utf8(key).map_err(|_| "the key is not text")
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[u8]) -> Result<String, &'static str> {
        parse(&HeaderValue::from_bytes(v).unwrap())
    }

    #[test]
    fn strings_and_tokens_are_keys() {
        assert_eq!(
            p(b"\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").unwrap(),
            "8e03978e-40d5-43e8-bc93-6894a57f9324"
        );
        assert_eq!(p(b"abc-123").unwrap(), "abc-123");
        assert_eq!(
            p(b"  \"a b\"  ").unwrap_err(),
            "the key may hold only visible ASCII characters"
        );
        assert_eq!(p(b"\"a\\\"b\"").unwrap(), "a\"b");
        assert_eq!(p(b"\"k\";x=1").unwrap(), "k");
        assert_eq!(p(&[b'a'; 255]).unwrap().len(), 255);
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            &b""[..],
            b"\"\"",
            b"\"open",
            b"\"a\" \"b\"",
            b"\"a\\x\"",
            b"a,b",
            b"\xff\xfe",
            &[b'a'; 256],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
