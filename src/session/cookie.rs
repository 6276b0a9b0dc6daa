//! Reading the session cookie from a request and writing it to a response.

use std::time::Duration;

use cookie::{Cookie, CookieJar, Key, SameSite};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use super::id::SessionId;
use crate::error::Error;

/// Longest raw cookie value considered: an id is 32 bytes, a signed one 76.
const MAX_VALUE_LEN: usize = 128;

/// How the session cookie is written and read.
#[derive(Clone)]
pub(crate) struct CookieConfig {
    pub(crate) name: String,
    pub(crate) domain: Option<String>,
    pub(crate) path: String,
    pub(crate) same_site: SameSite,
    pub(crate) secure: bool,
    pub(crate) persistent: bool,
    /// Newest first: the first signs, all verify. Empty: unsigned.
    pub(crate) keys: Vec<Key>,
}

impl std::fmt::Debug for CookieConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieConfig")
            .field("name", &self.name)
            .field("domain", &self.domain)
            .field("path", &self.path)
            .field("same_site", &self.same_site)
            .field("secure", &self.secure)
            .field("persistent", &self.persistent)
            .field("signing_keys", &self.keys.len())
            .finish()
    }
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "id".to_owned(),
            domain: None,
            path: "/".to_owned(),
            same_site: SameSite::Lax,
            secure: true,
            persistent: false,
            keys: Vec::new(),
        }
    }
}

/// A cookie name must be an RFC 6265 token: visible ASCII without
/// separators.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

impl CookieConfig {
    /// Checks the settings once, when the layer is built: anything here that
    /// could make a `Set-Cookie` invalid, or make browsers ignore it.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !is_token(&self.name) || self.name.len() > 64 {
            return Err(Error::config(format!(
                "session cookie name {:?} must be 1 to 64 visible ASCII characters without separators",
                self.name
            )));
        }
        if let Some(domain) = &self.domain {
            let host = domain.strip_prefix('.').unwrap_or(domain);
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err(Error::config(format!(
                    "session cookie domain {domain:?} must be a host name"
                )));
            }
        }
        if !self.path.starts_with('/')
            || !self.path.bytes().all(|b| b.is_ascii_graphic() && b != b';')
        {
            return Err(Error::config(format!(
                "session cookie path {:?} must start with '/' and hold no ';', spaces or control characters",
                self.path
            )));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(Error::config(
                "a SameSite=None session cookie must be Secure (browsers refuse it otherwise)",
            ));
        }
        if self.name.starts_with("__Secure-") && !self.secure {
            return Err(Error::config("a __Secure- cookie must be Secure"));
        }
        if self.name.starts_with("__Host-")
            && (!self.secure || self.domain.is_some() || self.path != "/")
        {
            return Err(Error::config(
                "a __Host- cookie must be Secure, with Path=/ and no Domain",
            ));
        }
        Ok(())
    }

    /// The session id the request carries, if exactly one well-formed (and,
    /// when signing is on, correctly signed) session cookie is present.
    /// Anything else — no cookie, two cookies of that name, a non-UTF-8
    /// header, an oversized, malformed or forged value — is no session.
    pub(crate) fn read(&self, headers: &HeaderMap) -> Option<SessionId> {
        // A `Cookie` header is `name=value` pairs separated by `;` (RFC 6265
        // §4.2.1): scanned in place as bytes, since every request with
        // cookies pays for this. Only the session cookie's value is
        // validated (strictly, by `SessionId::parse` or the signature).
        let name = self.name.as_bytes();
        let mut found: Option<&[u8]> = None;
        for header in headers.get_all(COOKIE) {
            for pair in header.as_bytes().split(|b| *b == b';') {
                let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                    continue;
                };
                if trim(&pair[..eq]) != name {
                    continue;
                }
                if found.is_some() {
                    // Two session cookies (e.g. one planted for a parent
                    // domain): trust neither.
                    return None;
                }
                found = Some(trim(&pair[eq + 1..]));
            }
        }
        let raw = std::str::from_utf8(found?).ok()?;
        if raw.len() > MAX_VALUE_LEN {
            return None;
        }
        if self.keys.is_empty() {
            return SessionId::parse(raw);
        }
        let mut jar = CookieJar::new();
        jar.add_original(Cookie::new(self.name.clone(), raw.to_owned()));
        self.keys.iter().find_map(|key| {
            let verified = jar.signed(key).get(&self.name)?;
            SessionId::parse(verified.value())
        })
    }

    /// `Set-Cookie` for `id`: persistent with `max_age`, else ending with
    /// the browser.
    pub(crate) fn set(&self, headers: &mut HeaderMap, id: &SessionId, max_age: Option<Duration>) {
        let mut cookie = self.base(id.as_str().to_owned());
        if let Some(age) = max_age {
            // Rounded up: a session with half a second left must not get
            // `Max-Age=0`, which deletes the cookie at once.
            let secs = age.as_millis().div_ceil(1000);
            cookie.set_max_age(cookie::time::Duration::seconds(
                i64::try_from(secs).unwrap_or(i64::MAX),
            ));
        }
        let cookie = match self.keys.first() {
            Some(key) => {
                let mut jar = CookieJar::new();
                jar.signed_mut(key).add(cookie);
                match jar.get(&self.name) {
                    Some(signed) => signed.clone(),
                    None => return,
                }
            }
            None => cookie,
        };
        append(headers, &cookie);
    }

    /// `Set-Cookie` that makes the browser drop the cookie.
    pub(crate) fn remove(&self, headers: &mut HeaderMap) {
        let mut cookie = self.base(String::new());
        cookie.make_removal();
        append(headers, &cookie);
    }

    fn base(&self, value: String) -> Cookie<'static> {
        let mut cookie = Cookie::new(self.name.clone(), value);
        cookie.set_http_only(true);
        cookie.set_secure(self.secure);
        cookie.set_same_site(self.same_site);
        cookie.set_path(self.path.clone());
        if let Some(domain) = &self.domain {
            cookie.set_domain(domain.clone());
        }
        cookie
    }
}

/// `bytes` without the spaces and tabs around it.
fn trim(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn append(headers: &mut HeaderMap, cookie: &Cookie<'_>) {
    match HeaderValue::from_str(&cookie.to_string()) {
        Ok(value) => {
            headers.append(SET_COOKIE, value);
        }
        // The settings were validated when the layer was built and an id is
        // base64url: this cannot happen.
        Err(_) => tracing::error!("session cookie is not a valid header value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn set_cookie_value(h: &HeaderMap) -> String {
        let raw = h.get(SET_COOKIE).unwrap().to_str().unwrap();
        let c = Cookie::parse(raw.to_owned()).unwrap();
        c.value().to_owned()
    }

    #[test]
    fn reads_one_well_formed_cookie() {
        let c = CookieConfig::default();
        let id = SessionId::generate().unwrap();
        let h = headers(&[format!("a=b; id={}; c=d", id.as_str()).as_bytes()]);
        assert_eq!(c.read(&h), Some(id));
        let h = headers(&[b"a=b", format!("id={}", id.as_str()).as_bytes()]);
        assert_eq!(c.read(&h), Some(id));
        // Whitespace around names and values, and pairs without a value.
        let h = headers(&[format!("flag; a=b;  id = {} ;x=", id.as_str()).as_bytes()]);
        assert_eq!(c.read(&h), Some(id));
        let h = headers(&[format!("xid={0}; idx={0}", id.as_str()).as_bytes()]);
        assert_eq!(c.read(&h), None, "only the exact name counts");
    }

    #[test]
    fn rejects_duplicates_malformed_oversized_and_non_utf8() {
        let c = CookieConfig::default();
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        let dup = format!("id={}; id={}", a.as_str(), b.as_str());
        let same_twice = format!("id={0}; id={0}", a.as_str());
        let huge = format!("id={}", "A".repeat(10_000));
        for bad in [
            dup.as_bytes(),
            same_twice.as_bytes(),
            huge.as_bytes(),
            b"id=short",
            b"id=",
            b"id",
            b";;;==",
            b"id=\xff\xfe",
        ] {
            assert_eq!(
                c.read(&headers(&[bad])),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Duplicates across two headers too.
        let h = headers(&[
            format!("id={}", a.as_str()).as_bytes(),
            format!("id={}", b.as_str()).as_bytes(),
        ]);
        assert_eq!(c.read(&h), None);
    }

    #[test]
    fn signed_cookies_verify_with_any_key_and_sign_with_the_newest() {
        let old = Key::generate();
        let new = Key::generate();
        let id = SessionId::generate().unwrap();

        let signer_old = CookieConfig {
            keys: vec![old.clone()],
            ..CookieConfig::default()
        };
        let mut out = HeaderMap::new();
        signer_old.set(&mut out, &id, None);
        let signed_by_old = set_cookie_value(&out);
        assert_ne!(signed_by_old, id.as_str());

        let rotated = CookieConfig {
            keys: vec![new.clone(), old.clone()],
            ..CookieConfig::default()
        };
        let h = headers(&[format!("id={signed_by_old}").as_bytes()]);
        assert_eq!(rotated.read(&h), Some(id), "old keys still verify");

        let mut out = HeaderMap::new();
        rotated.set(&mut out, &id, None);
        let signed_by_new = set_cookie_value(&out);
        let only_new = CookieConfig {
            keys: vec![new],
            ..CookieConfig::default()
        };
        let h = headers(&[format!("id={signed_by_new}").as_bytes()]);
        assert_eq!(only_new.read(&h), Some(id), "the newest key signs");

        // Unsigned or forged values are refused when signing is on.
        let h = headers(&[format!("id={}", id.as_str()).as_bytes()]);
        assert_eq!(rotated.read(&h), None);
        let mut forged = signed_by_new.clone().into_bytes();
        forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
        let h = headers(&[&[b"id=".as_slice(), &forged].concat()]);
        assert_eq!(rotated.read(&h), None);
    }

    /// Arbitrary header bytes (seeded, repeatable): never a panic, and
    /// anything accepted is a well-formed id.
    #[test]
    fn arbitrary_cookie_headers_never_panic() {
        let plain = CookieConfig::default();
        let signed = CookieConfig {
            keys: vec![Key::generate()],
            ..CookieConfig::default()
        };
        let pieces: [&[u8]; 8] = [b"id=", b";", b" ", b"=", b"\"", b"%", b"\xff", b"A"];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5_000 {
            let mut raw = Vec::new();
            for _ in 0..(next() % 40) {
                let r = next();
                if r % 3 == 0 {
                    raw.extend_from_slice(pieces[(r >> 8) as usize % pieces.len()]);
                } else {
                    // Any byte a header value may hold: visible ASCII, space, tab, obs-text.
                    let b = (r >> 16) as u8;
                    if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 {
                        raw.push(b);
                    }
                }
            }
            let Ok(value) = HeaderValue::from_bytes(&raw) else {
                continue;
            };
            let mut h = HeaderMap::new();
            h.append(COOKIE, value);
            for config in [&plain, &signed] {
                if let Some(id) = config.read(&h) {
                    assert_eq!(SessionId::parse(id.as_str()).as_ref(), Some(&id));
                }
            }
        }
    }

    #[test]
    fn invalid_settings_are_refused() {
        let ok = CookieConfig::default();
        assert!(ok.validate().is_ok());
        let with = |f: &dyn Fn(&mut CookieConfig)| {
            let mut c = CookieConfig::default();
            f(&mut c);
            c.validate()
        };
        for bad in ["", "a b", "a;b", "a=b", "é", "a\u{7f}"] {
            let name = bad.to_owned();
            assert!(with(&|c| c.name = name.clone()).is_err(), "name {bad:?}");
        }
        assert!(with(&|c| c.name = "x".repeat(65)).is_err());
        for bad in ["", ".", "a b", "a;b", "exa_mple.com"] {
            let domain = bad.to_owned();
            assert!(
                with(&|c| c.domain = Some(domain.clone())).is_err(),
                "domain {bad:?}"
            );
        }
        assert!(with(&|c| c.domain = Some(".example.com".into())).is_ok());
        for bad in ["", "app", "/a;b", "/a b"] {
            let path = bad.to_owned();
            assert!(with(&|c| c.path = path.clone()).is_err(), "path {bad:?}");
        }
        assert!(with(&|c| {
            c.same_site = SameSite::None;
            c.secure = false;
        })
        .is_err());
        assert!(with(&|c| {
            c.name = "__Host-id".into();
            c.path = "/app".into();
        })
        .is_err());
        assert!(with(&|c| c.name = "__Host-id".into()).is_ok());
        assert!(with(&|c| {
            c.name = "__Secure-id".into();
            c.secure = false;
        })
        .is_err());
    }

    #[test]
    fn set_cookie_carries_secure_defaults() {
        let c = CookieConfig::default();
        let mut out = HeaderMap::new();
        c.set(&mut out, &SessionId::generate().unwrap(), None);
        let raw = out.get(SET_COOKIE).unwrap().to_str().unwrap();
        for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(raw.contains(attr), "{raw}");
        }
        assert!(
            !raw.contains("Max-Age"),
            "a browser-session cookie without a max age: {raw}"
        );

        // With one, persistent (the caller decides, from the layer's
        // setting or the session's own).
        let p = CookieConfig::default();
        let mut out = HeaderMap::new();
        p.set(
            &mut out,
            &SessionId::generate().unwrap(),
            Some(Duration::from_secs(60)),
        );
        assert!(out
            .get(SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=60"));
        let mut out = HeaderMap::new();
        p.set(
            &mut out,
            &SessionId::generate().unwrap(),
            Some(Duration::from_millis(400)),
        );
        let raw = out.get(SET_COOKIE).unwrap().to_str().unwrap();
        assert!(raw.contains("Max-Age=1"), "rounded up, never 0: {raw}");

        let mut out = HeaderMap::new();
        c.remove(&mut out);
        let raw = out.get(SET_COOKIE).unwrap().to_str().unwrap();
        assert!(raw.contains("Max-Age=0"), "{raw}");
    }
}
