//! The app's settings, read from the environment and checked at start: a
//! bad value stops the app with one line naming the variable.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// What the app runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `HOST` and `PORT` (default 127.0.0.1:3000).
    pub addr: SocketAddr,
    /// `COOKIE_SECURE`: the session cookie's `Secure` flag (default off,
    /// for plain http on localhost; turn it on behind TLS).
    pub secure_cookies: bool,
    /// `PUBLIC_HOSTS`: the hosts the shop is reached at, comma-separated
    /// (`shop.example.com`, `host:port`); pages for others are not cached.
    /// Empty (the default) means `localhost` and `127.0.0.1` at the port.
    pub public_hosts: Vec<String>,
}

impl Config {
    /// The variables read.
    pub const VARS: [&'static str; 5] =
        ["HOST", "PORT", "COOKIE_SECURE", "REDIS_URL", "PUBLIC_HOSTS"];

    /// From the process environment.
    pub fn from_env() -> Result<Self, String> {
        for name in Self::VARS {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(name) {
                return Err(format!("{name} is not valid UTF-8"));
            }
        }
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From `var` (a variable's value by name; `None` when unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let host = match set("HOST") {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(h) if h.trim() == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(h) => h.trim().parse().map_err(|_| {
                format!("HOST must be an IP address such as 127.0.0.1 or 0.0.0.0, not {h:?}")
            })?,
        };
        let port = match set("PORT") {
            None => 3000,
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| format!("PORT must be a number from 0 to 65535, not {p:?}"))?,
        };
        let secure_cookies = match set("COOKIE_SECURE").as_deref().map(str::trim) {
            None | Some("0" | "false" | "no") => false,
            Some("1" | "true" | "yes") => true,
            Some(other) => return Err(format!("COOKIE_SECURE must be 1 or 0, not {other:?}")),
        };
        // The URL itself is never echoed: it may hold a password.
        if let Some(url) = set("REDIS_URL") {
            let schemes = ["redis://", "rediss://", "unix://", "redis+unix://"];
            if !schemes.iter().any(|s| url.trim().starts_with(s)) {
                return Err(
                    "REDIS_URL must start with redis:// (or rediss://, unix://), \
                     as in redis://127.0.0.1:6379"
                        .to_owned(),
                );
            }
            if redis::IntoConnectionInfo::into_connection_info(url.trim()).is_err() {
                return Err(
                    "REDIS_URL is not a valid Redis URL (a host, a port up to 65535, \
                     a database number), as in redis://127.0.0.1:6379/0"
                        .to_owned(),
                );
            }
        }
        let public_hosts: Vec<String> = set("PUBLIC_HOSTS")
            .map(|v| {
                v.split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(bad) = public_hosts.iter().find(|h| {
            h.parse::<axum::http::uri::Authority>()
                .map_or(true, |a| a.as_str() != h.as_str() || h.contains('@'))
        }) {
            return Err(format!(
                "PUBLIC_HOSTS must list hosts such as shop.example.com or localhost:3000, not {bad:?}"
            ));
        }
        Ok(Config {
            addr: SocketAddr::new(host, port),
            secure_cookies,
            public_hosts,
        })
    }
}
