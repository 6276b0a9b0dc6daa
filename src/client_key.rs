//! [`ClientKey`]: who a request comes from, for the layers that tell
//! clients apart (the rate limiter's [`Key`](crate::rate_limit::Key), the
//! idempotency layer's [`Scope`](crate::idempotency::Scope): two names of
//! this one type).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{HeaderName, FORWARDED};
use http::request::Parts;
use ipnet::{IpNet, Ipv6Net};

use crate::request_session::RequestSession;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type CustomKey = Arc<dyn Fn(&Parts) -> BoxFuture<Option<String>> + Send + Sync>;
/// Whether a header's value is one the application knows.
type Validator = Arc<dyn Fn(&str) -> BoxFuture<bool> + Send + Sync>;

/// Who a request comes from: its client address, an API key, the
/// session's user, everyone together, or your own function. The rate
/// limiter counts requests by it ([`rate_limit::Key`](crate::rate_limit::Key)
/// is this type) and the idempotency layer keeps keys apart by it
/// ([`idempotency::Scope`](crate::idempotency::Scope) is this type too).
/// When a key yields nothing (no such header, an unknown API key, no
/// user), [`or`](ClientKey::or) tries the next; when none yields, the
/// layer decides (the rate limiter's
/// [`missing_key`](crate::rate_limit::RateLimitLayerBuilder::missing_key),
/// the idempotency layer's 400).
///
/// A header name that is not one is reported by the layer's `build()` as
/// a [`Config`](crate::ErrorKind::Config) error, never by a panic. Header
/// values are kept only as digests.
///
/// ```
/// use redis_layers::ClientKey;
///
/// // A known API key when the client sends one, else its address. Only
/// // known keys count apart: a client making up a new key per request
/// // is still counted by its address.
/// let key = ClientKey::header_validated("x-api-key", |key: &str| {
///     std::future::ready(["demo-key", "partner-key"].contains(&key))
/// })
/// .or(ClientKey::client_ip());
/// # let _ = key;
/// ```
#[derive(Clone)]
pub struct ClientKey {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    PeerIp,
    ClientIp,
    Header(HeaderName),
    ValidatedHeader(HeaderName, Validator),
    /// A header name that is not one: `build()` reports it.
    Invalid(&'static str, &'static str),
    Global,
    SessionUser,
    Custom(CustomKey),
    Either(Box<ClientKey>, Box<ClientKey>),
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::PeerIp => f.write_str("ClientKey::peer_ip()"),
            Kind::ClientIp => f.write_str("ClientKey::client_ip()"),
            Kind::Header(name) => write!(f, "ClientKey::header({name:?})"),
            Kind::ValidatedHeader(name, _) => {
                write!(f, "ClientKey::header_validated({name:?}, ..)")
            }
            Kind::Invalid(from, name) => write!(f, "{from}({name:?})"),
            Kind::Global => f.write_str("ClientKey::global()"),
            Kind::SessionUser => f.write_str("ClientKey::session_user()"),
            Kind::Custom(_) => f.write_str("ClientKey::custom(..)"),
            Kind::Either(a, b) => write!(f, "{a:?}.or({b:?})"),
        }
    }
}

impl ClientKey {
    /// The address of the peer that connected: axum's `ConnectInfo` (serve
    /// with `into_make_service_with_connect_info::<SocketAddr>()`), or a
    /// [`SocketAddr`] request extension (hyper). Forwarding headers are
    /// ignored. IPv6 addresses are grouped by the layer's
    /// [`ipv6_prefix`](crate::rate_limit::RateLimitLayerBuilder::ipv6_prefix). A
    /// request without either has no address: see the rate limiter's
    /// module docs, "Client addresses" (the layer warns once). Not an
    /// idempotency scope (see [`client_ip`](Self::client_ip)).
    pub fn peer_ip() -> Self {
        ClientKey { kind: Kind::PeerIp }
    }

    /// The client's address as the layer's
    /// [`trusted_proxies`](crate::rate_limit::RateLimitLayerBuilder::trusted_proxies)
    /// saw it (the rate limiter's default key): the peer's address, unless the peer is a
    /// trusted proxy; then the rightmost address that is not a trusted
    /// proxy in the configured
    /// [`forwarded_header`](crate::rate_limit::RateLimitLayerBuilder::forwarded_header)
    /// (`X-Forwarded-For` unless set; the other header is never read).
    /// Forwarding headers from an untrusted peer are ignored, so a client
    /// cannot choose its key by sending them.
    ///
    /// Not an idempotency scope: the idempotency layer's `build()` refuses
    /// an address (alone or in an [`or`](Self::or) chain), since every
    /// client behind one proxy or NAT would share, and replay, each
    /// other's responses.
    pub fn client_ip() -> Self {
        ClientKey {
            kind: Kind::ClientIp,
        }
    }

    /// The value of a request header, whatever it is. Counted under a
    /// SHA-256 digest of the value, so the store holds no credential.
    ///
    /// Every value counts apart, so a client that sends a new value with
    /// each request gets a fresh budget each time (and the store a new
    /// key): use it only for a header the client cannot choose freely (one
    /// a trusted proxy sets), and [`header_validated`](ClientKey::header_validated)
    /// for API keys. (For idempotency keys that is fine: a made-up value
    /// only scopes the client's own keys.)
    ///
    /// Any case is accepted; a name that is not a header name is a
    /// `Config` error from the layer's `build()`.
    pub fn header(name: &'static str) -> Self {
        ClientKey {
            kind: match HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => Kind::Header(header),
                Err(_) => Kind::Invalid("ClientKey::header", name),
            },
        }
    }

    /// The value of a request header when `known` says it is one the
    /// application knows (an issued API key); an unknown value counts as
    /// no header, so [`or`](ClientKey::or) falls through to the next key (the
    /// client's address, say). A client inventing a value per request is
    /// then still counted by its address, and the store holds one key per
    /// known value, not one per invented one. Counted under a SHA-256
    /// digest of the value, like [`header`](ClientKey::header).
    ///
    /// `known` gets the value as text (a value that is not visible ASCII
    /// is never known) and answers with a future, like
    /// [`custom`](ClientKey::custom)'s function: `std::future::ready(..)` for a
    /// lookup in memory, an `async` block for one elsewhere (keep it
    /// cheap: it runs on every request the rule applies to).
    ///
    /// ```
    /// use std::collections::HashSet;
    /// use std::sync::Arc;
    /// use redis_layers::rate_limit::{Policy, Rule};
    /// use redis_layers::ClientKey;
    ///
    /// let issued: Arc<HashSet<String>> = Arc::new(["k-1".into(), "k-2".into()].into());
    /// let api = Rule::prefix("/api/")
    ///     .key(
    ///         ClientKey::header_validated("x-api-key", move |key: &str| {
    ///             std::future::ready(issued.contains(key))
    ///         })
    ///         .or(ClientKey::client_ip()),
    ///     )
    ///     .policy(Policy::per_second(10).named("api"));
    /// # let _ = api;
    /// ```
    ///
    /// A name that is not a header name is a `Config` error from the
    /// layer's `build()`, as for [`header`](ClientKey::header).
    pub fn header_validated<F, Fut>(name: &'static str, known: F) -> Self
    where
        F: Fn(&str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        ClientKey {
            kind: match HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => {
                    Kind::ValidatedHeader(header, Arc::new(move |value| Box::pin(known(value))))
                }
                Err(_) => Kind::Invalid("ClientKey::header_validated", name),
            },
        }
    }

    /// One key for every request. For the rate limiter, a limit on the
    /// route as a whole. As an idempotency scope, any client can replay
    /// any other's response by sending its key: only for routes without
    /// callers to tell apart.
    pub fn global() -> Self {
        ClientKey { kind: Kind::Global }
    }

    /// The user the request's session is bound to (`Session::set_user`);
    /// needs the session layer (`SessionLayer`, the `session` feature)
    /// outside this layer. Nothing for anonymous sessions, or without a
    /// session layer.
    pub fn session_user() -> Self {
        ClientKey {
            kind: Kind::SessionUser,
        }
    }

    /// Your own function of the request's head, answering with a future
    /// (`std::future::ready(..)` when it needs no `.await`); `None` when it
    /// cannot tell. The value is stored in clear in rate-limit keys: return
    /// a digest when it is a credential.
    pub fn custom<F, Fut>(f: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        ClientKey {
            kind: Kind::Custom(Arc::new(move |parts| Box::pin(f(parts)))),
        }
    }

    /// This key, or `other` when this one yields nothing.
    #[must_use]
    pub fn or(self, other: ClientKey) -> Self {
        ClientKey {
            kind: Kind::Either(Box::new(self), Box::new(other)),
        }
    }

    /// Checks what the constructors could not: every header name is one.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match &self.kind {
            Kind::Invalid(from, name) => Err(format!("{from}: {name:?} is not a header name")),
            Kind::Either(a, b) => {
                a.validate()?;
                b.validate()
            }
            _ => Ok(()),
        }
    }

    /// Whether this key falls back to others ([`or`](Self::or)).
    pub(crate) fn is_chain(&self) -> bool {
        matches!(self.kind, Kind::Either(..))
    }

    /// Whether this key (or one it falls back to) is a client address.
    pub(crate) fn uses_address(&self) -> bool {
        match &self.kind {
            Kind::PeerIp | Kind::ClientIp => true,
            Kind::Either(a, b) => a.uses_address() || b.uses_address(),
            _ => false,
        }
    }

    /// Who the request comes from, by a key that is not an address (see
    /// [`uses_address`](Self::uses_address); an address finds nothing
    /// here): the kind and the value as the request gave it, for a layer
    /// that digests them itself.
    pub(crate) async fn identify(&self, parts: &Parts) -> Option<Identity> {
        {
            match &self.kind {
                Kind::Global => Some(Identity::Global),
                Kind::Header(name) => parts
                    .headers
                    .get(name)
                    .filter(|v| !v.is_empty())
                    .map(|value| Identity::Header(name.clone(), value.clone())),
                Kind::ValidatedHeader(name, known) => {
                    let value = parts.headers.get(name)?;
                    let text = value.to_str().ok()?;
                    if text.is_empty() || !known(text).await {
                        return None;
                    }
                    Some(Identity::Header(name.clone(), value.clone()))
                }
                Kind::SessionUser => {
                    let session = RequestSession::of(&parts.extensions)?;
                    let user = session.user().await.ok()??;
                    Some(Identity::User(user))
                }
                Kind::Custom(f) => f(parts).await.map(Identity::Custom),
                // Boxed: only a chain pays for its recursion.
                Kind::Either(a, b) => match Box::pin(a.identify(parts)).await {
                    Some(found) => Some(found),
                    None => Box::pin(b.identify(parts)).await,
                },
                Kind::PeerIp | Kind::ClientIp | Kind::Invalid(..) => None,
            }
        }
    }

    /// Appends the key to `out` if it can be found without an `.await`:
    /// `Ok(true)` when found, `Ok(false)` when this request has none (and
    /// `out` is as it was), `Err(())` when finding it needs an `.await`
    /// ([`find`](Self::find) then).
    pub(crate) fn find_now(
        &self,
        parts: &Parts,
        ips: &IpRules,
        out: &mut String,
    ) -> Result<bool, ()> {
        match &self.kind {
            Kind::PeerIp => Ok(match peer(parts) {
                Some(ip) => {
                    ips.write_key(ip, out);
                    true
                }
                None => ips.no_peer_address(),
            }),
            Kind::ClientIp => Ok(match ips.client(parts) {
                Some(ip) => {
                    ips.write_key(ip, out);
                    true
                }
                None => ips.no_peer_address(),
            }),
            Kind::Header(name) => Ok(header_key(parts, name, out)),
            Kind::Global => {
                out.push_str("global");
                Ok(true)
            }
            Kind::Either(a, b) => {
                if a.find_now(parts, ips, out)? {
                    return Ok(true);
                }
                b.find_now(parts, ips, out)
            }
            Kind::SessionUser => Err(()),
            Kind::Custom(_) | Kind::ValidatedHeader(..) => Err(()),
            // Refused by `build()`.
            Kind::Invalid(..) => Ok(false),
        }
    }

    /// The key, however it is found.
    pub(crate) fn find<'a>(
        &'a self,
        parts: &'a Parts,
        ips: &'a IpRules,
    ) -> Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(async move {
            match &self.kind {
                Kind::SessionUser => {
                    let session = RequestSession::of(&parts.extensions)?;
                    let user = session.user().await.ok()??;
                    Some(format!("user:{user}"))
                }
                Kind::Custom(f) => f(parts).await.map(|k| format!("custom:{k}")),
                Kind::ValidatedHeader(name, known) => {
                    let value = parts.headers.get(name)?.to_str().ok()?;
                    if value.is_empty() || !known(value).await {
                        return None;
                    }
                    let mut key = String::new();
                    header_key(parts, name, &mut key).then_some(key)
                }
                Kind::Either(a, b) => match a.find(parts, ips).await {
                    Some(key) => Some(key),
                    None => b.find(parts, ips).await,
                },
                _ => {
                    let mut key = String::new();
                    match self.find_now(parts, ips, &mut key) {
                        Ok(true) => Some(key),
                        _ => None,
                    }
                }
            }
        })
    }
}

/// Who a request comes from, as [`ClientKey::identify`] finds it.
pub(crate) enum Identity {
    Global,
    /// The header's name and its (non-empty) value.
    Header(HeaderName, http::HeaderValue),
    User(String),
    Custom(String),
}

/// Appends `hdr:` and a hex SHA-256 prefix of the header's value (the
/// store never holds the credential itself); false when there is no
/// value.
fn header_key(parts: &Parts, name: &HeaderName, out: &mut String) -> bool {
    use sha2::{Digest, Sha256};
    let Some(value) = parts.headers.get(name).map(|v| v.as_bytes()) else {
        return false;
    };
    if value.is_empty() {
        return false;
    }
    let digest = Sha256::digest(value);
    out.push_str("hdr:");
    crate::digest::push_hex(out, &digest[..16]);
    true
}

/// The peer's address: axum's `ConnectInfo`, or a `SocketAddr` extension.
fn peer(parts: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    parts.extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

/// How addresses become keys: which peers are trusted proxies, and how
/// IPv6 addresses are grouped.
#[derive(Debug, Clone)]
pub(crate) struct IpRules {
    pub(crate) trusted: Vec<IpNet>,
    pub(crate) ipv6_prefix: u8,
    pub(crate) header: ForwardedHeader,
    /// Set once a request without a peer address was warned about (one
    /// warning per layer).
    pub(crate) warned_no_peer: Arc<AtomicBool>,
}

/// Which header the trusted proxies write the client's address into.
///
/// One is chosen in configuration, never by which header a request
/// carries: most proxies append to `X-Forwarded-For` and pass a client's
/// own `Forwarded` header through untouched, so reading `Forwarded`
/// whenever present would let the client pick its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, cloud load balancers): the
    /// default.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), its `for=` parameters.
    Forwarded,
}

impl IpRules {
    /// A request has no peer address, so an address key finds nothing:
    /// warns the first time (per layer), naming the fix. Always false.
    fn no_peer_address(&self) -> bool {
        if !self.warned_no_peer.load(Ordering::Relaxed)
            && !self.warned_no_peer.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "rate limit: a request has no peer address (no axum ConnectInfo, no SocketAddr \
                 extension), so ClientKey::client_ip() and ClientKey::peer_ip() cannot tell clients apart: \
                 every such request is counted under one shared key (or, with \
                 MissingKey::Skip, not limited at all). Serve the app with \
                 into_make_service_with_connect_info::<SocketAddr>() (hyper: insert the \
                 connection's SocketAddr into each request's extensions), or key by a header \
                 a trusted proxy sets. Warned once per layer."
            );
        }
        false
    }

    /// `ip:<address>`, or `ip:<network>/<prefix>` for IPv6 (one client may
    /// hold a whole /64). An IPv4-mapped IPv6 address counts as IPv4.
    fn write_key(&self, ip: IpAddr, out: &mut String) {
        use std::fmt::Write;
        out.push_str("ip:");
        let _ = match canonical(ip) {
            IpAddr::V4(v4) => {
                // The usual case, without the formatting machinery.
                let mut n = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push('.');
                    }
                    out.push_str(n.format(octet));
                }
                Ok(())
            }
            IpAddr::V6(v6) => match Ipv6Net::new(v6, self.ipv6_prefix) {
                Ok(net) => write!(out, "{}", net.trunc()),
                Err(_) => write!(out, "{v6}"),
            },
        };
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address (see [`ClientKey::client_ip`]).
    fn client(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = peer(parts)?;
        if !self.is_trusted(peer) {
            return Some(canonical(peer));
        }
        let hops = match self.header {
            ForwardedHeader::Forwarded => forwarded_for(parts),
            ForwardedHeader::XForwardedFor => x_forwarded_for(parts),
        };
        // From the nearest hop outwards: the first address that is not a
        // trusted proxy is the client. A hop that cannot be read ends the
        // walk: the last trusted address is all that can be vouched for.
        let mut client = canonical(peer);
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if self.is_trusted(*ip) => client = canonical(*ip),
                Some(ip) => return Some(canonical(*ip)),
                None => break,
            }
        }
        Some(client)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The comma-separated items of every `name` field, each read on its own:
/// a byte that is not text spoils only its own item (a proxy appends the
/// real address to the same line a client may have filled with junk).
fn items<'a>(parts: &'a Parts, name: &'a str) -> impl Iterator<Item = Option<&'a str>> + 'a {
    parts
        .headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|item| std::str::from_utf8(item).ok())
}

/// The `X-Forwarded-For` hops in order (left: the farthest); `None` for a
/// hop that is not an address.
fn x_forwarded_for(parts: &Parts) -> Vec<Option<IpAddr>> {
    items(parts, "x-forwarded-for")
        .map(|hop| hop.and_then(|h| parse_hop(h.trim())))
        .collect()
}

/// The `for=` parameters of `Forwarded` (RFC 7239) in order.
fn forwarded_for(parts: &Parts) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for element in items(parts, FORWARDED.as_str()) {
        let Some(element) = element else {
            hops.push(None);
            continue;
        };
        let node = element.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("for")
                .then(|| value.trim())
        });
        // An element without `for` says nothing of the client: skip it.
        if let Some(node) = node {
            hops.push(parse_hop(node.trim_matches('"')));
        }
    }
    hops
}

/// An address, with or without a port (`[v6]:port`, `v4:port`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = hop.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder();
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        parts.extensions.insert(peer.parse::<SocketAddr>().unwrap());
        parts
    }

    fn rules(trusted: &[&str]) -> IpRules {
        IpRules {
            trusted: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            ipv6_prefix: 64,
            header: ForwardedHeader::XForwardedFor,
            warned_no_peer: Arc::default(),
        }
    }

    fn now(key: &ClientKey, p: &Parts, r: &IpRules) -> Option<String> {
        let mut out = String::new();
        key.find_now(p, r, &mut out).unwrap().then_some(out)
    }

    fn client(p: &Parts, r: &IpRules) -> Option<String> {
        now(&ClientKey::client_ip(), p, r)
    }

    #[test]
    fn a_bad_header_name_is_a_build_error_not_a_panic() {
        let bad = ClientKey::header("x api key").or(ClientKey::client_ip());
        assert_eq!(
            bad.validate().unwrap_err(),
            "ClientKey::header: \"x api key\" is not a header name"
        );
        let known = |_: &str| std::future::ready(true);
        let bad = ClientKey::global().or(ClientKey::header_validated("x:y", known));
        assert!(bad.validate().unwrap_err().contains("header_validated"));
        assert!(ClientKey::header("X-Api-Key").validate().is_ok());
        // Found by no request meanwhile.
        let r = rules(&[]);
        let p = parts("192.0.2.1:1", &[]);
        assert_eq!(now(&ClientKey::header("x api key"), &p, &r), None);
    }

    #[test]
    fn address_keys_are_told_apart_from_the_others() {
        assert!(ClientKey::peer_ip().uses_address());
        assert!(ClientKey::header("x-a")
            .or(ClientKey::client_ip())
            .uses_address());
        assert!(!ClientKey::header("x-a")
            .or(ClientKey::session_user())
            .uses_address());
        assert!(!ClientKey::global().uses_address());
    }

    #[tokio::test]
    async fn identify_gives_the_kind_and_the_raw_value() {
        let p = parts("192.0.2.1:1", &[("x-a", "acme"), ("x-b", "issued")]);
        let id = |key: ClientKey| {
            let p = &p;
            async move {
                match key.identify(p).await {
                    Some(Identity::Header(n, v)) => format!("hdr {n} {}", v.to_str().unwrap()),
                    Some(Identity::User(u)) => format!("user {u}"),
                    Some(Identity::Custom(c)) => format!("fn {c}"),
                    Some(Identity::Global) => "global".to_owned(),
                    None => "none".to_owned(),
                }
            }
        };
        assert_eq!(id(ClientKey::header("x-a")).await, "hdr x-a acme");
        assert_eq!(id(ClientKey::header("x-missing")).await, "none");
        let issued = |v: &str| std::future::ready(v == "issued");
        assert_eq!(id(ClientKey::header_validated("x-a", issued)).await, "none");
        assert_eq!(
            id(ClientKey::header_validated("x-b", issued)).await,
            "hdr x-b issued"
        );
        let custom =
            ClientKey::custom(|p: &Parts| std::future::ready(Some(p.uri.path().to_owned())));
        assert_eq!(id(custom).await, "fn /");
        assert_eq!(
            id(ClientKey::session_user()).await,
            "none",
            "no session layer"
        );
        let fallback = ClientKey::header("x-missing").or(ClientKey::global());
        assert_eq!(id(fallback).await, "global");
        assert_eq!(id(ClientKey::client_ip()).await, "none", "refused at build");
    }

    #[test]
    fn forwarding_headers_from_untrusted_peers_are_ignored() {
        let r = rules(&["10.0.0.0/8"]);
        let p = parts("203.0.113.7:5000", &[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(client(&p, &r).as_deref(), Some("ip:203.0.113.7"));
        let p = parts("203.0.113.7:5000", &[("forwarded", "for=1.2.3.4")]);
        assert_eq!(client(&p, &r).as_deref(), Some("ip:203.0.113.7"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let r = rules(&["10.0.0.0/8", "192.168.0.0/16"]);
        // A client spoofing a leftmost entry does not matter.
        let p = parts(
            "10.0.0.2:80",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.9, 192.168.1.1")],
        );
        assert_eq!(client(&p, &r).as_deref(), Some("ip:198.51.100.9"));
        let forwarded = [(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.1.1.1",
        )];
        let p = parts("10.0.0.2:80", &forwarded);
        // Not the configured header: ignored, the proxy is the client.
        assert_eq!(client(&p, &r).as_deref(), Some("ip:10.0.0.2"));
        let rfc = IpRules {
            header: ForwardedHeader::Forwarded,
            ..rules(&["10.0.0.0/8", "192.168.0.0/16"])
        };
        assert_eq!(client(&p, &rfc).as_deref(), Some("ip:2001:db8:cafe::/64"));
        // And X-Forwarded-For is then ignored.
        let p = parts("10.0.0.2:80", &[("x-forwarded-for", "198.51.100.9")]);
        assert_eq!(client(&p, &rfc).as_deref(), Some("ip:10.0.0.2"));
        // Only proxies: the farthest one.
        let p = parts("10.0.0.2:80", &[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(client(&p, &r).as_deref(), Some("ip:10.9.9.9"));
        // No header: the proxy itself.
        let p = parts("10.0.0.2:80", &[]);
        assert_eq!(client(&p, &r).as_deref(), Some("ip:10.0.0.2"));
    }

    #[test]
    fn malformed_forwarding_headers_stop_at_the_last_trusted_hop() {
        let r = rules(&["10.0.0.0/8"]);
        for bad in ["garbage", "1.2.3.4, ???, 10.0.0.9", ", ,", "999.1.1.1"] {
            let p = parts("10.0.0.2:80", &[("x-forwarded-for", bad)]);
            let key = client(&p, &r).unwrap();
            assert!(key == "ip:10.0.0.2" || key == "ip:10.0.0.9", "{bad}: {key}");
        }
        let rfc = IpRules {
            header: ForwardedHeader::Forwarded,
            ..rules(&["10.0.0.0/8"])
        };
        let p = parts("10.0.0.2:80", &[("forwarded", "for=unknown;proto=http")]);
        assert_eq!(client(&p, &rfc).as_deref(), Some("ip:10.0.0.2"));
    }

    #[test]
    fn a_bad_byte_spoils_only_its_own_hop() {
        // The client wrote junk; the proxy appended the real address to
        // the same line.
        let r = rules(&["10.0.0.0/8"]);
        let mut req = http::Request::builder();
        req = req.header(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.23").unwrap(),
        );
        let (mut p, ()) = req.body(()).unwrap().into_parts();
        p.extensions
            .insert("10.0.0.2:80".parse::<SocketAddr>().unwrap());
        assert_eq!(client(&p, &r).as_deref(), Some("ip:198.51.100.23"));
    }

    #[test]
    fn ipv6_clients_in_one_prefix_share_a_key() {
        let r = rules(&[]);
        let a = parts("[2001:db8:1:2::1]:1", &[]);
        let b = parts("[2001:db8:1:2:ffff::9]:1", &[]);
        let c = parts("[2001:db8:1:3::1]:1", &[]);
        assert_eq!(client(&a, &r), client(&b, &r));
        assert_ne!(client(&a, &r), client(&c, &r));
        let mapped = parts("[::ffff:192.0.2.1]:1", &[]);
        assert_eq!(client(&mapped, &r).as_deref(), Some("ip:192.0.2.1"));
    }

    #[tokio::test]
    async fn validated_header_keys_count_only_known_values() {
        let r = rules(&[]);
        let key =
            ClientKey::header_validated("x-api-key", |v: &str| std::future::ready(v == "known"))
                .or(ClientKey::peer_ip());
        // A known value is keyed as `ClientKey::header` keys it.
        let p = parts("192.0.2.1:1", &[("x-api-key", "known")]);
        let plain = now(&ClientKey::header("x-api-key"), &p, &r);
        assert!(plain.is_some());
        assert_eq!(key.find(&p, &r).await, plain);
        // Anything else is the fallback.
        for headers in [
            &[("x-api-key", "made-up")][..],
            &[("x-api-key", "")],
            &[("x-api-key", "caf\u{e9}")],
            &[],
        ] {
            let p = parts("192.0.2.1:1", headers);
            assert_eq!(
                key.find(&p, &r).await.as_deref(),
                Some("ip:192.0.2.1"),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn header_keys_hide_the_value_and_fall_back() {
        let r = rules(&[]);
        let key = ClientKey::header("x-api-key").or(ClientKey::peer_ip());
        let p = parts("192.0.2.1:1", &[("x-api-key", "secret-token")]);
        let k = now(&key, &p, &r).unwrap();
        assert!(k.starts_with("hdr:") && !k.contains("secret"), "{k}");
        // The name in any case.
        let upper = ClientKey::header("X-Api-Key").or(ClientKey::peer_ip());
        assert_eq!(now(&upper, &p, &r).as_deref(), Some(k.as_str()));
        let p = parts("192.0.2.1:1", &[]);
        assert_eq!(now(&key, &p, &r).as_deref(), Some("ip:192.0.2.1"));
        // No peer address at all: nothing.
        let (bare, ()) = http::Request::new(()).into_parts();
        assert_eq!(now(&ClientKey::peer_ip(), &bare, &r), None);
    }
}
