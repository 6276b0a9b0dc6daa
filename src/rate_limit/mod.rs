//! Distributed rate limiting: exact under concurrency, one store round trip
//! per limited request, per-route rules, the IETF `RateLimit` fields.
//!
//! ```no_run
//! use std::collections::HashSet;
//! use std::sync::Arc;
//!
//! use axum::{routing::{get, post}, Router};
//! use redis_layers::rate_limit::{Key, Policy, RateLimitLayer, Rule};
//! use redis_layers::Backend;
//!
//! # fn run() -> Result<(), redis_layers::Error> {
//! let backend = Backend::from_env()?;
//! let issued: Arc<HashSet<String>> = Arc::new(["k-1".to_owned()].into());
//! let limits = RateLimitLayer::builder(backend)
//!     // Behind a load balancer on 10.0.0.0/8: believe its X-Forwarded-For.
//!     .trusted_proxies(["10.0.0.0/8"])
//!     .rule(
//!         Rule::route("/login")
//!             .policy(Policy::per_minute(10).burst(5).named("login"))
//!             .policy(Policy::per_day(100).fixed_window().named("login-daily")),
//!     )
//!     .rule(
//!         Rule::prefix("/api/")
//!             // An issued API key, else the address. Only issued keys count
//!             // apart: a made-up key is no key, so inventing one per request
//!             // neither escapes the address's budget nor stores a counter.
//!             .key(
//!                 Key::header_validated("x-api-key", move |key: &str| {
//!                     std::future::ready(issued.contains(key))
//!                 })
//!                 .or(Key::client_ip()),
//!             )
//!             .policy(Policy::per_second(10).burst(20).named("api")),
//!     )
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/login", post(|| async { "ok" }))
//!     .route("/api/items", get(|| async { "[]" }))
//!     .layer(limits);
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! - A [`Policy`] is a quota per window, counted by GCRA (the default: a
//!   steady rate with bursts), a fixed window, or a sliding window. Time is
//!   Redis's (`TIME` inside the script), never the application's.
//! - A [`Rule`] says which requests (route template, path prefix, methods)
//!   count against which policies, by which [`Key`] (client address behind
//!   trusted proxies by default, a header such as an API key, the session's
//!   user, one global key, your own function). Key API clients by
//!   [`Key::header_validated`], which counts only values your validator
//!   knows: with [`Key::header`], every made-up value would be a fresh
//!   budget (and a new key in the store). A request that matches no rule
//!   passes with no store call.
//! - Every rule that matches a request is checked in one store call, all
//!   or nothing: when any of their policies refuses it, none counts it
//!   (a refused login consumes nothing of a site-wide limit either), and
//!   the 429 names every violated policy. A dry-run rule never refuses,
//!   and counts a request only when everything else admits it too. On
//!   Redis Cluster see [Several rules on a cluster](#several-rules-on-a-cluster).
//! - State is one value per client per rule name and policy set: rules
//!   (or layers) with the same name and the same policies share a budget
//!   per client; different names count apart. An unnamed rule is named
//!   after where its layer was built (see [`Rule::named`]): two
//!   `route_layer`s made in two places count apart.
//! - Per route, two ways: one layer with a table of rules, or a layer on a
//!   route (`Router::route_layer`, a method router's `.layer`) built with
//!   [`RateLimitLayer::new`].
//! - Responses to limited routes carry `RateLimit-Policy` and `RateLimit`
//!   (draft-ietf-httpapi-ratelimit-headers), optionally the legacy
//!   `X-RateLimit-*` fields. A refused request gets 429 with `Retry-After`
//!   in whole seconds rounded up (never 0 while still refused) and a
//!   `quota-exceeded` problem naming the violated policies.
//! - Once the store says a client is refused until an instant, this
//!   instance answers its requests locally until then: a flood costs the
//!   store nothing (a bounded cache, [`quick_cache`]).
//! - Dry run (per layer or rule): headers and logs as if limiting, never a
//!   429.
//! - A store failure lets the request through by default (logged, counted
//!   in [`RateLimitLayer::stats`]); fail-closed answers 503 (500 when the
//!   store answered with an error, e.g. a failed script). Choose per layer
//!   ([`on_store_error`](RateLimitLayerBuilder::on_store_error)) and per
//!   rule ([`Rule::on_store_error`], which overrides the layer's): a limit
//!   that guards credentials (logins, password resets) should fail closed,
//!   or an attacker who can slow the store down lifts it. The rules a
//!   request matches share its one store call, so when it fails, the
//!   request is refused if any of them (not in dry run) fails closed. A
//!   dry-run rule never refuses, store failure or not.
//!
//! # Client addresses
//!
//! [`Key::client_ip`] (the default key) and [`Key::peer_ip`] need the
//! address of the peer that connected: axum's `ConnectInfo` (serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`), or a
//! `SocketAddr` in the request's extensions (hyper). Without it, every
//! client is counted under one shared key (`unknown`; or, with
//! [`MissingKey::Skip`], not limited at all), and the layer logs a warning
//! naming the fix at the first such request (once per layer). Behind a
//! proxy, name its networks in
//! [`trusted_proxies`](RateLimitLayerBuilder::trusted_proxies), or key by
//! a header the proxy sets.
//!
//! ```no_run
//! use std::net::SocketAddr;
//!
//! use axum::{routing::get, Router};
//! use redis_layers::rate_limit::{Policy, RateLimitLayer};
//! use redis_layers::memory::MemoryBackend;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(RateLimitLayer::new(MemoryBackend::new(), Policy::per_second(10)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // Each request then carries its peer's address.
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! # Several rules on a cluster
//!
//! Keys of one Redis Cluster script must share a slot. A rule's state is
//! tagged by the client it counts (the address, the API key's digest, the
//! user...), not by the rule, so rules that count the same client (the
//! default key everywhere, say) are still one script, all or nothing. Rules
//! that count different clients (a [`Key::global`] login limit beside a
//! per-address site limit) cannot share a script there: the matching rules
//! are then checked in runs of consecutive rules with the same client, one
//! script per run, in the rules' order. A run that refuses ends the check,
//! so the runs before it have counted the refused request (the per-address
//! site limit above is consumed by logins the global limit refuses), and
//! the ones after it are not consulted. On a single Redis (or behind
//! Sentinel) and on the memory backend, there is no such split.
//!
//! # Cost
//!
//! | request | store round trips |
//! |---|---|
//! | matches no rule | 0 |
//! | matches one or more rules | 1 (one script for every policy of every matching rule; on a cluster, one per run of rules counting the same client) |
//! | from a client known to be refused | 0 |

mod headers;
mod layer;
mod layout;
mod memory;
mod policy;
mod redis;
mod rule;
pub mod store;

pub use self::layer::{
    MissingKey, RateLimitLayer, RateLimitLayerBuilder, RateLimitService, RateLimitStats,
    ResponseFuture, DEFAULT_DENY_CACHE_CAPACITY, MAX_POLICIES_PER_RULE,
};
/// Who a request is counted against: [`ClientKey`](crate::ClientKey),
/// under the name this module has always used.
pub use crate::client_key::ClientKey as Key;
pub use crate::client_key::ForwardedHeader;

/// The old name of [`RateLimitService`] (every layer's service is now
/// named `<Layer>Service`).
#[deprecated(since = "0.2.0", note = "renamed `RateLimitService`")]
pub type RateLimit<S> = RateLimitService<S>;
pub use self::policy::{Algorithm, Policy, MAX_BURST_PERIOD, MAX_QUOTA, MAX_WINDOW};
pub use self::rule::Rule;
pub use self::store::{Check, Decision, PolicyState, RateLimitStore};
