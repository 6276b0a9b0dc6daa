//! [`RateLimitLayer`], its builder, the [`RateLimit`] service and its
//! future.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use ipnet::IpNet;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::headers::{self, Limits};
use super::policy::Policy;
use super::rule::{CostFn, Rule, Target};
use super::store::{Check, Decision, PolicyState, RateLimitStore, Store};
use crate::body::ResponseBody;
use crate::client_key::{ClientKey as Key, ForwardedHeader, IpRules};
use crate::error::Error;
use crate::problem::Problem;
use crate::refusal::{OnRefusal, Refusal, RefusalKind};
use crate::FailurePolicy;

/// How many clients the local deny cache remembers when not configured.
pub const DEFAULT_DENY_CACHE_CAPACITY: usize = 10_000;

/// The most policies one rule may hold (all are checked in one script).
pub const MAX_POLICIES_PER_RULE: usize = 16;

/// What the layer does with a request for which no key can be found (no
/// peer address, a missing header with no fallback, an anonymous session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Count all such requests together, under one shared key (the
    /// default: a limit still applies).
    #[default]
    Shared,
    /// Let them through unlimited.
    Skip,
}

/// Limits requests by the policies of the rules they match; answers 429
/// (problem+json, `Retry-After`, the IETF `RateLimit` fields) to those over
/// a limit.
///
/// ```no_run
/// use axum::{routing::{get, post}, Router};
/// use redis_layers::rate_limit::{Policy, RateLimitLayer, Rule, Key};
/// use redis_layers::Backend;
///
/// # fn run() -> Result<(), redis_layers::Error> {
/// let backend = Backend::from_env()?;
/// // One layer, one table of rules for a whole API:
/// let limits = RateLimitLayer::builder(backend.clone())
///     .rule(Rule::route("/login").policy(Policy::per_minute(5).named("login")))
///     .rule(
///         Rule::prefix("/api/")
///             // An issued API key, else the address: see `Key::header_validated`.
///             .key(
///                 Key::header_validated("x-api-key", |key: &str| {
///                     std::future::ready(key.starts_with("issued-"))
///                 })
///                 .or(Key::client_ip()),
///             )
///             .policy(Policy::per_second(10).burst(20).named("api")),
///     )
///     .build()?;
/// let app: Router = Router::new()
///     .route("/login", post(|| async { "welcome" }))
///     .route("/api/items", get(|| async { "[]" }))
///     // Or a layer on one route only:
///     .route(
///         "/search",
///         get(|| async { "results" })
///             .layer(RateLimitLayer::new(backend, Policy::per_second(2).named("search"))),
///     )
///     .layer(limits);
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("rules", &self.config.rules)
            .field("dry_run", &self.config.dry_run)
            .field("failure", &self.config.failure)
            .finish_non_exhaustive()
    }
}

/// Counts of what a layer decided, for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Requests a rule applied to that went through.
    pub allowed: u64,
    /// Requests answered 429 after asking the store.
    pub denied: u64,
    /// Requests answered 429 from the local deny cache, without the store.
    pub denied_locally: u64,
    /// Requests that would have been denied, let through by dry run.
    pub dry_run_denied: u64,
    /// Store failures (let through under fail-open, refused under
    /// fail-closed).
    pub store_errors: u64,
}

#[derive(Default)]
struct Counters {
    allowed: AtomicU64,
    denied: AtomicU64,
    denied_locally: AtomicU64,
    dry_run_denied: AtomicU64,
    store_errors: AtomicU64,
}

struct Config {
    store: Store,
    rules: Vec<CompiledRule>,
    ips: IpRules,
    dry_run: bool,
    legacy_headers: bool,
    failure: FailurePolicy,
    missing_key: MissingKey,
    /// `<rule>|<client>` → its refusal: a request costing at least as
    /// much is refused too until the refusal's instant.
    deny_cache: Option<quick_cache::sync::Cache<String, Arc<Denial>>>,
    on_refusal: OnRefusal,
    counters: Counters,
    /// Store failures, logged once per outage and then summarised.
    failures: crate::failure_log::FailureLog,
}

struct CompiledRule {
    name: String,
    rule: Rule,
    key: Key,
    cost: Option<CostFn>,
    dry_run: bool,
    /// What a store failure does: the rule's choice, else the layer's.
    failure: FailurePolicy,
    /// The rule's `RateLimit-Policy` value, rendered once.
    field: HeaderValue,
    /// Its outcomes, as metrics (the `metrics` feature).
    counters: crate::metrics::RuleCounters,
}

impl CompiledRule {
    fn cost(&self, parts: &Parts) -> u64 {
        self.cost.as_ref().map_or(1, |f| f(parts))
    }
}

/// A refusal by the store, as the local deny cache remembers it.
struct Denial {
    /// When a request of `cost` would be admitted.
    until: Instant,
    cost: u64,
    /// Per policy of the rule: what remained, and when its `t` runs out.
    states: Vec<(u64, Instant)>,
    /// The policies that refused.
    violated: Vec<String>,
    /// The problem+json body (it names no time, so it stays true).
    body: bytes::Bytes,
    /// The default 429's head as last rendered, with the whole seconds it
    /// shows (`Retry-After`, then each policy's `t`): requests refused
    /// within the same second get a copy instead of a new rendering.
    rendered: std::sync::Mutex<Option<(Vec<u64>, HeaderMap)>>,
}

impl Denial {
    /// The whole seconds the 429 shows at `now`: `Retry-After`, then each
    /// policy's `t`.
    fn seconds(&self, now: Instant) -> impl Iterator<Item = u64> + '_ {
        let wait = self.until.saturating_duration_since(now);
        std::iter::once(headers::secs_up(wait).max(1)).chain(
            self.states
                .iter()
                .map(move |(_, at)| headers::secs_up(at.saturating_duration_since(now))),
        )
    }
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("name", &self.name)
            .field("rule", &self.rule)
            .field("key", &self.key)
            .field("cost", &self.cost.as_ref().map(|_| "fn"))
            .field("dry_run", &self.dry_run)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A layer that counts every request it sees against `policy`, by the
    /// client's address ([`Key::client_ip`]): the style for one route
    /// (`Router::route_layer`, a method router's `.layer`).
    ///
    /// Counts live under the rule's name and the policy (name and
    /// numbers). The rule is unnamed, so it is named after the place in
    /// the code where this is called: two layers made by two calls (one
    /// `route_layer` per route) count apart, one layer mounted on several
    /// routes counts them together, and every instance of the service
    /// (one build) shares each budget. A helper function that makes the
    /// layer for several routes makes them all at one place: they share
    /// one budget unless their policies are named apart
    /// (`.named("search")`).
    #[track_caller]
    pub fn new(store: impl RateLimitStore, policy: Policy) -> Self {
        let built = RateLimitLayer::builder(store).policy(policy).build();
        match built {
            Ok(layer) => layer,
            Err(e) => panic!("invalid rate-limit policy: {e}"),
        }
    }

    /// A builder for rules, keys and the other settings.
    ///
    /// Where in the code it is called names the layer's unnamed rules
    /// (see [`Rule::named`]).
    #[track_caller]
    pub fn builder(store: impl RateLimitStore) -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            built_at: std::panic::Location::caller(),
            store: Store::new(store),
            rules: Vec::new(),
            key: Key::client_ip(),
            trusted: Vec::new(),
            ipv6_prefix: 64,
            forwarded_header: ForwardedHeader::default(),
            cost: None,
            dry_run: false,
            legacy_headers: false,
            failure: FailurePolicy::Open,
            missing_key: MissingKey::Shared,
            deny_cache: DEFAULT_DENY_CACHE_CAPACITY,
            on_refusal: OnRefusal::default(),
            errors: Vec::new(),
        }
    }

    /// What the layer decided so far.
    pub fn stats(&self) -> RateLimitStats {
        let c = &self.config.counters;
        RateLimitStats {
            allowed: c.allowed.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            denied_locally: c.denied_locally.load(Ordering::Relaxed),
            dry_run_denied: c.dry_run_denied.load(Ordering::Relaxed),
            store_errors: c.store_errors.load(Ordering::Relaxed),
        }
    }
}

/// The settings of a [`RateLimitLayer`]; made by
/// [`RateLimitLayer::builder`].
#[must_use]
pub struct RateLimitLayerBuilder {
    /// Where the builder was made: unnamed rules are named after it.
    built_at: &'static std::panic::Location<'static>,
    store: Store,
    rules: Vec<Rule>,
    key: Key,
    trusted: Vec<IpNet>,
    ipv6_prefix: u8,
    forwarded_header: ForwardedHeader,
    cost: Option<CostFn>,
    dry_run: bool,
    legacy_headers: bool,
    failure: FailurePolicy,
    missing_key: MissingKey,
    deny_cache: usize,
    on_refusal: OnRefusal,
    errors: Vec<String>,
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("rules", &self.rules)
            .field("key", &self.key)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    /// A policy for every request the layer sees (an unnamed rule matching
    /// all: named after where the layer was built, see [`Rule::named`]).
    pub fn policy(self, policy: Policy) -> Self {
        self.rule(Rule::any().policy(policy))
    }

    /// A rule: which requests, which policies, which key. Every matching
    /// rule applies (all in one store call, all or nothing: see the module
    /// docs for Redis Cluster); requests no rule matches pass without a
    /// store call. A rule's place is the order its runs are checked in on
    /// a cluster.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Who is counted when a rule does not say (default
    /// [`Key::client_ip`]).
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    /// The networks of the proxies in front of the service (default none:
    /// forwarding headers are never read). Only a peer in these networks is
    /// believed about the client's address; see [`Key::client_ip`]. An
    /// entry that is not a network (`10.0.0.0/8`) or an address is a
    /// configuration error at [`build`](Self::build).
    pub fn trusted_proxies<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for network in networks {
            let text = network.as_ref().trim();
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            {
                Ok(net) => self.trusted.push(net),
                Err(_) => self.errors.push(format!(
                    "trusted proxy {text:?} is not an address or network"
                )),
            }
        }
        self
    }

    /// The header the trusted proxies write the client's address into
    /// (default `X-Forwarded-For`); the other one is never read. See
    /// [`ForwardedHeader`].
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.forwarded_header = header;
        self
    }

    /// How many leading bits of an IPv6 address name a client (default 64:
    /// a host usually holds a whole /64). 128 counts each address apart.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// The cost of a request when a rule does not say (default 1): by
    /// route, by body size, by anything in the request's head.
    pub fn cost(mut self, cost: impl Fn(&Parts) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// Headers and logs as if limiting, never a 429 (default false).
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset` (for the
    /// policy closest to its limit), for clients that know only those.
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy_headers = on;
        self
    }

    /// What a store failure does (default [`FailurePolicy::Open`]: the
    /// request goes through, the failure is logged and counted in
    /// [`RateLimitLayer::stats`]; [`FailurePolicy::Closed`] answers 503, or 500
    /// when the store answered with an error such as a failed script; a
    /// dry-run rule lets the request through either way). A rule's own
    /// [`Rule::on_store_error`] overrides it for that rule: a login rule
    /// may fail closed on a layer that fails open.
    pub fn on_store_error(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// What happens to a request for which no key is found (default
    /// [`MissingKey::Shared`]).
    pub fn missing_key(mut self, choice: MissingKey) -> Self {
        self.missing_key = choice;
        self
    }

    /// How many denied clients this instance remembers (default
    /// [`DEFAULT_DENY_CACHE_CAPACITY`]; 0 turns the cache off). While a
    /// client is known to be denied until an instant, its requests get a
    /// 429 here, with no store call.
    pub fn deny_cache_capacity(mut self, clients: usize) -> Self {
        self.deny_cache = clients;
        self
    }

    /// Your own answer to a refused request (a 429, or the store-failure
    /// problem of a rule failing closed) instead of the default
    /// problem+json; the same hook every layer takes (see
    /// [`refusal`](crate::refusal)). The layer adds `Retry-After` and the
    /// `RateLimit` fields unless the response has them. A refusal this
    /// instance remembers (the deny cache) is rendered by the hook each
    /// time.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Response, StatusCode};
    /// use redis_layers::memory::MemoryBackend;
    /// use redis_layers::rate_limit::{Policy, RateLimitLayer};
    /// use redis_layers::RefusalKind;
    ///
    /// let layer = RateLimitLayer::builder(MemoryBackend::new())
    ///     .policy(Policy::per_minute(60))
    ///     .on_refusal(|request, refusal| {
    ///         if refusal.kind() != RefusalKind::RateLimited || request.uri.path().starts_with("/api/") {
    ///             return refusal.to_response();
    ///         }
    ///         let mut res = Response::new(Bytes::from(format!(
    ///             "slow down: {}",
    ///             refusal.policies().join(", ")
    ///         )));
    ///         *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    ///         res
    ///     })
    ///     .build();
    /// # assert!(layer.is_ok());
    /// ```
    pub fn on_refusal(
        mut self,
        hook: impl Fn(&Parts, &Refusal<'_>) -> Response<bytes::Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.on_refusal = OnRefusal::new(hook);
        self
    }

    /// Checks the settings and builds the layer: every policy valid
    /// (names; quotas up to [`MAX_QUOTA`](super::MAX_QUOTA), windows up to
    /// [`MAX_WINDOW`](super::MAX_WINDOW), bursts that come back within
    /// [`MAX_BURST_PERIOD`](super::MAX_BURST_PERIOD): every number the
    /// store computes from them stays exact), at least one rule, rule
    /// names unique and without `|`, policy names unique within a rule,
    /// trusted proxies that parse, an IPv6 prefix of at most 128 bits.
    pub fn build(self) -> Result<RateLimitLayer, Error> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(Error::config(e));
        }
        if self.rules.is_empty() {
            return Err(Error::config("a rate-limit layer needs a policy or a rule"));
        }
        if self.ipv6_prefix > 128 {
            return Err(Error::config("the IPv6 prefix is at most 128 bits"));
        }
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.into_iter().enumerate() {
            let name = rule
                .name
                .clone()
                .unwrap_or_else(|| default_rule_name(self.built_at, i));
            if !names.insert(name.clone()) {
                return Err(Error::config(format!(
                    "two rate-limit rules are named {name:?}"
                )));
            }
            if name.contains('|') {
                // Keys are `<rule>|<client>`, the client after the first
                // `|` being the hash tag that keeps one client's rules in
                // one script on Redis Cluster.
                return Err(Error::config(format!(
                    "rate-limit rule name {name:?} must not contain '|'"
                )));
            }
            if rule.policies.is_empty() {
                return Err(Error::config(format!(
                    "rate-limit rule {name:?} has no policy"
                )));
            }
            if rule.policies.len() > MAX_POLICIES_PER_RULE {
                return Err(Error::config(format!(
                    "rate-limit rule {name:?} has more than {MAX_POLICIES_PER_RULE} policies"
                )));
            }
            let mut policy_names = HashSet::new();
            for policy in &rule.policies {
                policy.validate()?;
                if !policy_names.insert(policy.name()) {
                    return Err(Error::config(format!(
                        "rate-limit rule {name:?} has two policies named {:?}",
                        policy.name()
                    )));
                }
            }
            if let Target::Route(route) | Target::Prefix(route) = &rule.target {
                if !route.starts_with('/') {
                    return Err(Error::config(format!(
                        "rate-limit rule {name:?}: {route:?} must start with '/'"
                    )));
                }
            }
            let key = rule.key.clone().unwrap_or_else(|| self.key.clone());
            key.validate()
                .map_err(|e| Error::config(format!("rate-limit rule {name:?}: {e}")))?;
            let field =
                HeaderValue::try_from(headers::policy_field(&rule.policies)).map_err(|_| {
                    Error::config(format!("rate-limit rule {name:?}: bad policy names"))
                })?;
            rules.push(CompiledRule {
                field,
                counters: crate::metrics::RuleCounters::new(&name),
                name,
                key,
                cost: rule.cost.clone().or_else(|| self.cost.clone()),
                dry_run: rule.dry_run.unwrap_or(self.dry_run),
                failure: rule.failure.unwrap_or(self.failure),
                rule,
            });
        }
        Ok(RateLimitLayer {
            config: Arc::new(Config {
                store: self.store,
                rules,
                ips: IpRules {
                    trusted: self.trusted,
                    ipv6_prefix: self.ipv6_prefix,
                    header: self.forwarded_header,
                    warned_no_peer: Arc::default(),
                },
                dry_run: self.dry_run,
                legacy_headers: self.legacy_headers,
                failure: self.failure,
                missing_key: self.missing_key,
                deny_cache: (self.deny_cache > 0)
                    .then(|| quick_cache::sync::Cache::new(self.deny_cache)),
                on_refusal: self.on_refusal,
                counters: Counters::default(),
                failures: crate::failure_log::FailureLog::new("rate-limit"),
            }),
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// A rule that applies to a request, with its key when it was found
/// without an `.await`.
struct Pending {
    rule: usize,
    /// `<rule>|<client>`; `None` while the key needs an `.await`.
    key: Option<String>,
    cost: u64,
}

/// What the checks decided for a request.
enum Verdict {
    /// Go on; these fields go on the response (the legacy ones too when
    /// true).
    Pass(Limits, bool),
    /// Answer this instead.
    Stop(http::response::Parts, bytes::Bytes),
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let config = &self.config;
        // The layer's span, made once a rule applies: a request no rule
        // covers is none of the layer's business.
        let mut trace = None;

        // Without an `.await`: the rules that apply, their keys, and any
        // refusal this instance already knows of (then no store call).
        let mut pending = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            if !rule.rule.matches(&parts) {
                continue;
            }
            let trace = trace.get_or_insert_with(|| {
                crate::trace::layer_span!("rate_limit", rules, refused_by, policies)
            });
            let mut key = String::with_capacity(rule.name.len() + 48);
            key.push_str(&rule.name);
            key.push('|');
            match rule.key.find_now(&parts, &config.ips, &mut key) {
                Ok(true) => {}
                Ok(false) => match config.missing_key {
                    MissingKey::Skip => continue,
                    MissingKey::Shared => key.push_str("unknown"),
                },
                Err(()) => {
                    pending.push(Pending {
                        rule: i,
                        key: None,
                        cost: 0,
                    });
                    continue;
                }
            }
            let cost = rule.cost(&parts);
            let refused = trace
                .span()
                .in_scope(|| config.refused_locally(&parts, rule, &key, cost));
            if let Some((head, bytes)) = refused {
                return ResponseFuture {
                    span: trace.span().clone(),
                    state: State::Ready {
                        response: Some((head, bytes)),
                    },
                };
            }
            pending.push(Pending {
                rule: i,
                key: Some(key),
                cost,
            });
        }
        // Call the instance that was driven to readiness, leave a clone in
        // its place (see tower's "Be careful when cloning inner services").
        // A local refusal returned above without either.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let trace = match trace {
            Some(trace) if !pending.is_empty() => trace,
            skipped => {
                // No rule applies (or none found its key, with keyless
                // requests skipped): untouched, no store call.
                if let Some(trace) = skipped {
                    trace.span().record("outcome", "skipped");
                }
                return ResponseFuture {
                    span: tracing::Span::none(),
                    state: State::Inner {
                        future: inner.call(Request::from_parts(parts, body)),
                        limits: None,
                        legacy: false,
                    },
                };
            }
        };
        let span = trace.span().clone();
        ResponseFuture {
            span,
            state: State::Checking {
                check: trace.boxed_measured(check(self.config.clone(), parts, pending)),
                body: Some(body),
                inner: Some(inner),
            },
        }
    }
}

impl Config {
    /// The 429 for a client this instance knows to be refused, if it is.
    fn refused_locally(
        &self,
        parts: &Parts,
        rule: &CompiledRule,
        key: &str,
        cost: u64,
    ) -> Option<(http::response::Parts, bytes::Bytes)> {
        if rule.dry_run {
            return None;
        }
        let cache = self.deny_cache.as_ref()?;
        let refusal = cache.get(key)?;
        let now = Instant::now();
        if refusal.until <= now {
            // Only this expired refusal: another request may have stored a
            // fresh one since.
            cache.remove_if(key, |stored| Arc::ptr_eq(stored, &refusal));
            return None;
        }
        if cost < refusal.cost {
            // A cheaper request may fit: ask the store.
            return None;
        }
        self.counters.denied_locally.fetch_add(1, Ordering::Relaxed);
        crate::trace::outcome("rate_limit", "limited_locally");
        if crate::trace::in_layer_span("rate_limit") {
            crate::trace::record("rate_limit", "refused_by", &rule.name);
            crate::trace::record("rate_limit", "policies", &refusal.violated.join(","));
        }
        if self.on_refusal.is_set() {
            // The user's 429 is theirs to build each time.
            return Some(self.refuse_known(parts, rule, &refusal, now));
        }
        // A poisoned lock only means a panic elsewhere mid-copy: the
        // cached head is then rendered again.
        let mut rendered = refusal.rendered.lock().unwrap_or_else(|e| e.into_inner());
        let head = match &*rendered {
            Some((seconds, head)) if seconds.iter().copied().eq(refusal.seconds(now)) => {
                head.clone()
            }
            _ => {
                let (head, _) = self.refuse_known(parts, rule, &refusal, now);
                *rendered = Some((refusal.seconds(now).collect(), head.headers.clone()));
                return Some((head, refusal.body.clone()));
            }
        };
        drop(rendered);
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = StatusCode::TOO_MANY_REQUESTS;
        parts.headers = head;
        Some((parts, refusal.body.clone()))
    }

    /// The answer to a refused request: the 429 (or the user's) naming
    /// the `violated` policies, with the `RateLimit` fields of `limits`
    /// and `Retry-After` (`wait`); `body` is the default 429's.
    fn refuse(
        &self,
        parts: &Parts,
        violated: &[String],
        wait: Duration,
        body: &bytes::Bytes,
        limits: Limits,
    ) -> (http::response::Parts, bytes::Bytes) {
        let (mut head, body) = if self.on_refusal.is_set() {
            let problem = headers::problem(violated.iter().map(String::as_str));
            let refusal = Refusal::new("rate_limit", RefusalKind::RateLimited, problem)
                .retrying_after(wait)
                .naming(violated);
            self.on_refusal.answer(parts, &refusal).into_parts()
        } else {
            let (mut head, ()) = Response::new(()).into_parts();
            head.status = StatusCode::TOO_MANY_REQUESTS;
            head.headers.reserve(6);
            head.headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            head.headers.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            (head, body.clone())
        };
        if !head.headers.contains_key(headers::RATELIMIT) {
            limits.write(&mut head.headers, self.legacy_headers);
        }
        if !head.headers.contains_key(http::header::RETRY_AFTER) {
            head.headers
                .insert(http::header::RETRY_AFTER, headers::retry_after(wait));
        }
        (head, body)
    }

    /// The answer to a request refused by a rule this instance remembers
    /// as refusing its client until an instant.
    fn refuse_known(
        &self,
        parts: &Parts,
        rule: &CompiledRule,
        refusal: &Denial,
        now: Instant,
    ) -> (http::response::Parts, bytes::Bytes) {
        let mut limits = Limits::default();
        limits.add(
            &rule.field,
            &rule.rule.policies,
            refusal
                .states
                .iter()
                .map(|(remaining, at)| (*remaining, at.saturating_duration_since(now))),
        );
        let wait = refusal.until.saturating_duration_since(now);
        self.refuse(parts, &refusal.violated, wait, &refusal.body, limits)
    }

    /// The answer when the store failed: through (no fields) unless a rule
    /// that applies fails closed and is not a dry run; then the store
    /// failure's problem (503, or 500 when the store answered with an
    /// error).
    fn store_failed(&self, parts: &Parts, pending: &[Pending], e: &Error) -> Verdict {
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        crate::trace::outcome("rate_limit", "store_error");
        let rules = || pending.iter().map(|p| self.rules[p.rule].name.as_str());
        let closed: Vec<&str> = pending
            .iter()
            .map(|p| &self.rules[p.rule])
            .filter(|r| !r.dry_run && r.failure == FailurePolicy::Closed)
            .map(|r| r.name.as_str())
            .collect();
        if closed.is_empty() {
            let rules: Vec<&str> = rules().collect();
            self.failures.failed(
                e,
                &format!("letting the request through (fail-open; rules {rules:?})"),
                false,
            );
            return Verdict::Pass(Limits::default(), false);
        }
        self.failures.failed(
            e,
            &format!("refusing the request (fail-closed; rules {closed:?})"),
            true,
        );
        let problem = Problem::store_failure("rate-limit", e);
        let refusal = Refusal::new("rate_limit", RefusalKind::StoreFailure, problem);
        let (head, body) = self.on_refusal.answer(parts, &refusal).into_parts();
        Verdict::Stop(head, body)
    }
}

/// The name of a layer's `i`th rule when it has none: where the layer was
/// built and the rule's place in it (`src/routes.rs:42:10#0`). Two layers
/// built in different places (two `route_layer`s) so count apart, and
/// every instance of one build names the rule alike. (`|` separates a
/// key's rule from its client: none in a file name is kept.)
fn default_rule_name(built_at: &std::panic::Location<'_>, i: usize) -> String {
    let file = built_at.file().replace('|', "_");
    format!("{file}:{}:{}#{i}", built_at.line(), built_at.column())
}

/// The checks that need an `.await`: keys found by one, refusals known for
/// them, then one store call for every rule that applies. The request
/// head comes back with the verdict.
async fn check(config: Arc<Config>, parts: Parts, mut pending: Vec<Pending>) -> (Parts, Verdict) {
    // Keys that need an `.await`, and what is known locally of them.
    let mut i = 0;
    while i < pending.len() {
        if pending[i].key.is_some() {
            i += 1;
            continue;
        }
        let rule = &config.rules[pending[i].rule];
        let key = match (rule.key.find(&parts, &config.ips).await, config.missing_key) {
            (Some(key), _) => key,
            (None, MissingKey::Shared) => "unknown".to_owned(),
            (None, MissingKey::Skip) => {
                pending.remove(i);
                continue;
            }
        };
        let key = format!("{}|{key}", rule.name);
        let cost = rule.cost(&parts);
        if let Some((head, body)) = config.refused_locally(&parts, rule, &key, cost) {
            return (parts, Verdict::Stop(head, body));
        }
        pending[i].key = Some(key);
        pending[i].cost = cost;
        i += 1;
    }
    let verdict = decide(&config, &parts, &pending).await;
    (parts, verdict)
}

/// One store call for the rules that apply (every key found), and what
/// it means for the request.
async fn decide(config: &Config, parts: &Parts, pending: &[Pending]) -> Verdict {
    // Every key is found by now; each check beside its rule.
    if let [p] = pending {
        // One rule (the usual case): the plain check, nothing allocated.
        let Some(one) = entry(config, p) else {
            return judge(config, parts, pending, &[], &[]);
        };
        return match config
            .store
            .check(one.1.key, one.1.policies, one.1.cost)
            .await
        {
            Ok(decision) => {
                config.failures.succeeded();
                judge(
                    config,
                    parts,
                    pending,
                    &[one],
                    std::slice::from_ref(&decision),
                )
            }
            Err(e) => config.store_failed(parts, pending, &e),
        };
    }
    let entries: Vec<_> = pending.iter().filter_map(|p| entry(config, p)).collect();
    let checks: Vec<Check<'_>> = entries.iter().map(|(_, c)| *c).collect();
    let decisions = match checks.as_slice() {
        [] => Vec::new(),
        all => match config.store.check_all(all).await {
            Ok(decisions) => {
                config.failures.succeeded();
                decisions
            }
            Err(e) => return config.store_failed(parts, pending, &e),
        },
    };
    judge(config, parts, pending, &entries, &decisions)
}

/// A rule that applies, and its check (`None` while its key is unknown).
fn entry<'a>(config: &'a Config, p: &'a Pending) -> Option<(&'a CompiledRule, Check<'a>)> {
    let rule = &config.rules[p.rule];
    let key = p.key.as_deref()?;
    let check = Check::new(key, &rule.rule.policies, p.cost).dry_run(rule.dry_run);
    Some((rule, check))
}

/// What the store's decisions (one per check, or up to a refusal) mean
/// for the request.
fn judge(
    config: &Config,
    parts: &Parts,
    pending: &[Pending],
    checks: &[(&CompiledRule, Check<'_>)],
    decisions: &[Decision],
) -> Verdict {
    // A store that stopped early must say why: a refusal.
    let stopped = decisions
        .iter()
        .zip(checks)
        .any(|(d, (_, c))| !d.allowed && !c.dry_run);
    if decisions.len() > checks.len() || (decisions.len() < checks.len() && !stopped) {
        let e = Error::decode(format!(
            "the rate-limit store answered {} decisions for {} checks",
            decisions.len(),
            checks.len()
        ));
        return config.store_failed(parts, pending, &e);
    }

    // For a policy that refused, `t` is its wait, so `Retry-After` (the
    // longest wait) is never earlier than any `t`.
    let shown = |s: &PolicyState| {
        if s.admitted {
            s.reset
        } else {
            s.retry_after
        }
    };
    if checks.is_empty() {
        // No rule found its key (keyless requests skipped): untouched.
        crate::trace::record("rate_limit", "outcome", "skipped");
        return Verdict::Pass(Limits::default(), config.legacy_headers);
    }
    if crate::trace::in_layer_span("rate_limit") {
        let rules: Vec<&str> = checks.iter().map(|(rule, _)| rule.name.as_str()).collect();
        crate::trace::record("rate_limit", "rules", &rules.join(","));
    }
    let mut limits = Limits::default();
    let mut refused = Vec::new();
    for ((rule, c), decision) in checks.iter().zip(decisions) {
        limits.add(
            &rule.field,
            c.policies,
            decision.policies.iter().map(|s| (s.remaining, shown(s))),
        );
        if decision.allowed {
            rule.counters.allowed();
            continue;
        }
        if rule.dry_run {
            rule.counters.dry_run_limited();
            config
                .counters
                .dry_run_denied
                .fetch_add(1, Ordering::Relaxed);
            let violated = violated(c.policies, decision);
            tracing::info!(rule = %rule.name, key = %c.key, violated = ?violated, retry_after_ms = decision.retry_after().as_millis() as u64, "rate limit exceeded (dry run: let through)");
            continue;
        }
        refused.push((rule, c, decision));
    }
    if refused.is_empty() {
        config.counters.allowed.fetch_add(1, Ordering::Relaxed);
        crate::trace::outcome("rate_limit", "allowed");
        return Verdict::Pass(limits, config.legacy_headers);
    }

    // Refused: each refusing rule's client is remembered as refused (the
    // refusal counted nothing of that rule, so it stands on its own), and
    // the answer names every violated policy.
    config.counters.denied.fetch_add(1, Ordering::Relaxed);
    crate::trace::outcome("rate_limit", "limited");
    let now = Instant::now();
    let mut all_violated = Vec::new();
    let mut refused_by = Vec::new();
    let mut wait = Duration::ZERO;
    for (rule, c, decision) in refused {
        refused_by.push(rule.name.as_str());
        rule.counters.limited();
        let retry = decision.retry_after();
        let violated = violated(c.policies, decision);
        tracing::debug!(rule = %rule.name, key = %c.key, violated = ?violated, "rate limit exceeded");
        for name in &violated {
            // Two rules may name a policy alike: named once.
            if !all_violated.contains(name) {
                all_violated.push(name.clone());
            }
        }
        wait = wait.max(retry);
        if let (Some(cache), false) = (&config.deny_cache, retry.is_zero()) {
            let refusal = Denial {
                until: later(now, retry),
                cost: c.cost,
                states: decision
                    .policies
                    .iter()
                    .map(|s| (s.remaining, later(now, shown(s))))
                    .collect(),
                body: problem_body(&violated),
                violated,
                rendered: std::sync::Mutex::new(None),
            };
            cache.insert(c.key.to_owned(), Arc::new(refusal));
            crate::metrics::gauge("redis_layers_rate_limit_deny_cache_entries", cache.len());
        }
    }
    if crate::trace::in_layer_span("rate_limit") {
        crate::trace::record("rate_limit", "refused_by", &refused_by.join(","));
        crate::trace::record("rate_limit", "policies", &all_violated.join(","));
    }
    let body = problem_body(&all_violated);
    let (head, body) = config.refuse(parts, &all_violated, wait, &body, limits);
    Verdict::Stop(head, body)
}

/// The names of the policies that refused.
fn violated(policies: &[Policy], decision: &Decision) -> Vec<String> {
    policies
        .iter()
        .zip(&decision.policies)
        .filter(|(_, state)| !state.admitted)
        .map(|(policy, _)| policy.name().to_owned())
        .collect()
}

/// The default 429's body, naming the violated policies.
fn problem_body(violated: &[String]) -> bytes::Bytes {
    bytes::Bytes::from(headers::problem(violated.iter().map(String::as_str)).to_json())
}

/// `now + wait`, for a wait a store reported: a request costing far more
/// than any burst can be told to wait longer than an `Instant` reaches
/// (the cost is the application's function of the request), so that is
/// capped at a year; a refusal remembered for shorter only asks the store
/// again sooner.
fn later(now: Instant, wait: Duration) -> Instant {
    let year = Duration::from_secs(366 * 24 * 3600);
    now.checked_add(wait.min(year)).unwrap_or(now)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`]: the check (only when a rule
    /// applies and this instance does not already know the answer), then
    /// the inner service's future.
    pub struct ResponseFuture<F, S, B> {
        // The layer's span, entered while this is polled.
        span: tracing::Span,
        #[pin]
        state: State<F, S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, B> {
        Ready {
            response: Option<(http::response::Parts, bytes::Bytes)>,
        },
        Checking {
            check: BoxFuture<(Parts, Verdict)>,
            body: Option<B>,
            inner: Option<S>,
        },
        Inner {
            #[pin]
            future: F,
            limits: Option<Limits>,
            legacy: bool,
        },
        // Answered: polling again is a bug of the caller's.
        Done,
    }
}

impl<F, S, B> fmt::Debug for ResponseFuture<F, S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, S, ReqBody, ResBody, E> Future for ResponseFuture<F, S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Future = F, Error = E>,
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Ready { response } => {
                    let (head, bytes) = response.take().expect("taken only when done");
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(Response::from_parts(head, ResponseBody::full(bytes))));
                }
                StateProj::Checking { check, body, inner } => {
                    let (parts, verdict) = ready!(check.as_mut().poll(cx));
                    match verdict {
                        Verdict::Stop(head, bytes) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(Response::from_parts(
                                head,
                                ResponseBody::full(bytes),
                            )));
                        }
                        Verdict::Pass(limits, legacy) => {
                            let (body, mut inner) = (
                                body.take().expect("taken once, leaving this state"),
                                inner.take().expect("taken once, leaving this state"),
                            );
                            let future = inner.call(Request::from_parts(parts, body));
                            State::Inner {
                                future,
                                limits: Some(limits),
                                legacy,
                            }
                        }
                    }
                }
                StateProj::Inner {
                    future,
                    limits,
                    legacy,
                } => {
                    let out = ready!(future.poll(cx));
                    let limits = limits.take();
                    let legacy = *legacy;
                    this.state.set(State::Done);
                    let mut res = out?;
                    if let Some(limits) = limits {
                        limits.write(res.headers_mut(), legacy);
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
                StateProj::Done => {
                    panic!("rate limit: a response future polled after it completed")
                }
            };
            this.state.set(next);
        }
    }
}
