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
use http::{HeaderMap, Request, Response};
use ipnet::IpNet;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::headers::{Denial, Limits};
use super::key::{IpRules, Key};
use super::policy::Policy;
use super::rule::{CostFn, Rule, Target};
use super::store::{RateLimitStore, Store};
use crate::body::ResponseBody;
use crate::error::Error;
use crate::problem::Problem;
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
///             .key(Key::header("x-api-key").or(Key::client_ip()))
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
    /// Store failures (let through under fail-open, 503 under fail-closed).
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
    /// Client → (refused until, the cost refused): a request costing at
    /// least as much is refused too until then.
    deny_cache: Option<quick_cache::sync::Cache<String, (Instant, u64)>>,
    counters: Counters,
}

struct CompiledRule {
    name: String,
    rule: Rule,
    key: Key,
    cost: Option<CostFn>,
    dry_run: bool,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("name", &self.name)
            .field("rule", &self.rule)
            .field("key", &self.key)
            .field("cost", &self.cost.as_ref().map(|_| "fn"))
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

impl RateLimitLayer {
    /// A layer that counts every request it sees against `policy`, by the
    /// client's address ([`Key::client_ip`]): the style for one route
    /// (`Router::route_layer`, a method router's `.layer`).
    pub fn new(store: impl RateLimitStore, policy: Policy) -> Self {
        let built = RateLimitLayer::builder(store).policy(policy).build();
        match built {
            Ok(layer) => layer,
            Err(e) => panic!("invalid rate-limit policy: {e}"),
        }
    }

    /// A builder for rules, keys and the other settings.
    pub fn builder(store: impl RateLimitStore) -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            store: Store::new(store),
            rules: Vec::new(),
            key: Key::client_ip(),
            trusted: Vec::new(),
            ipv6_prefix: 64,
            cost: None,
            dry_run: false,
            legacy_headers: false,
            failure: FailurePolicy::Open,
            missing_key: MissingKey::Shared,
            deny_cache: DEFAULT_DENY_CACHE_CAPACITY,
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
    store: Store,
    rules: Vec<Rule>,
    key: Key,
    trusted: Vec<IpNet>,
    ipv6_prefix: u8,
    cost: Option<CostFn>,
    dry_run: bool,
    legacy_headers: bool,
    failure: FailurePolicy,
    missing_key: MissingKey,
    deny_cache: usize,
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
    /// A policy for every request the layer sees (a rule matching all).
    pub fn policy(self, policy: Policy) -> Self {
        self.rule(Rule::any().policy(policy).named("all"))
    }

    /// A rule: which requests, which policies, which key. Every matching
    /// rule applies; requests no rule matches pass without a store call.
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
    /// [`RateLimitLayer::stats`]; [`FailurePolicy::Closed`] answers 503).
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

    /// Checks the settings and builds the layer: every policy valid
    /// (names, quotas, windows), at least one rule, rule names unique,
    /// policy names unique within a rule, trusted proxies that parse, an
    /// IPv6 prefix of at most 128 bits.
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
            let name = rule.name.clone().unwrap_or_else(|| format!("rule-{i}"));
            if !names.insert(name.clone()) {
                return Err(Error::config(format!(
                    "two rate-limit rules are named {name:?}"
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
            rules.push(CompiledRule {
                name,
                key: rule.key.clone().unwrap_or_else(|| self.key.clone()),
                cost: rule.cost.clone().or_else(|| self.cost.clone()),
                dry_run: rule.dry_run.unwrap_or(self.dry_run),
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
                },
                dry_run: self.dry_run,
                legacy_headers: self.legacy_headers,
                failure: self.failure,
                missing_key: self.missing_key,
                deny_cache: (self.deny_cache > 0)
                    .then(|| quick_cache::sync::Cache::new(self.deny_cache)),
                counters: Counters::default(),
            }),
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the checks decided for a request.
enum Verdict {
    /// Go on; these headers go on the response.
    Pass(HeaderMap),
    /// Answer this instead.
    Stop(http::response::Parts, bytes::Bytes),
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
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
        // Call the instance that was driven to readiness, leave a clone in
        // its place (see tower's "Be careful when cloning inner services").
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        if !self.config.rules.iter().any(|r| r.rule.matches(&parts)) {
            // No rule: untouched, no store call.
            return ResponseFuture {
                state: State::Inner {
                    future: inner.call(Request::from_parts(parts, body)),
                    headers: HeaderMap::new(),
                },
            };
        }
        let config = self.config.clone();
        ResponseFuture {
            state: State::Checking {
                check: Box::pin(check(config, parts)),
                body: Some(body),
                inner: Some(inner),
            },
        }
    }
}

/// Runs every matching rule's check; the request head comes back with the
/// verdict.
async fn check(config: Arc<Config>, parts: Parts) -> (Parts, Verdict) {
    let mut limits = Limits::default();
    for rule in config.rules.iter().filter(|r| r.rule.matches(&parts)) {
        let key = match rule.key.find_now(&parts, &config.ips) {
            Ok(key) => key,
            Err(()) => rule.key.find(&parts, &config.ips).await,
        };
        let key = match (key, config.missing_key) {
            (Some(key), _) => key,
            (None, MissingKey::Shared) => "unknown".to_owned(),
            (None, MissingKey::Skip) => continue,
        };
        let client = format!("{}|{}", rule.name, key);
        let policies = &rule.rule.policies;
        let cost = rule.cost.as_ref().map_or(1, |f| f(&parts));

        // Known to be denied until an instant: answer here.
        if let (Some(cache), false) = (&config.deny_cache, rule.dry_run) {
            if let Some((until, refused_cost)) = cache.get(&client) {
                let now = Instant::now();
                if until > now && cost >= refused_cost {
                    config
                        .counters
                        .denied_locally
                        .fetch_add(1, Ordering::Relaxed);
                    let wait = until - now;
                    limits.add_exhausted(policies, wait);
                    let denial = Denial::new(policies.iter().map(Policy::name), wait);
                    return (parts, stop(&config, &limits, &denial));
                }
                if until <= now {
                    cache.remove(&client);
                }
            }
        }

        let decision = match config.store.check(&client, policies, cost).await {
            Ok(decision) => decision,
            Err(e) => {
                config.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                match config.failure {
                    FailurePolicy::Open => {
                        tracing::warn!(error = %e, rule = %rule.name, "rate-limit store failed; letting the request through (fail-open)");
                        continue;
                    }
                    FailurePolicy::Closed => {
                        tracing::error!(error = %e, rule = %rule.name, "rate-limit store failed");
                        let (head, body) =
                            problem_response(&Problem::store_failure("rate-limit", &e));
                        return (parts, Verdict::Stop(head, body));
                    }
                }
            }
        };
        limits.add(policies, &decision);
        if decision.allowed {
            continue;
        }
        let retry = decision.retry_after();
        let violated = policies
            .iter()
            .zip(&decision.policies)
            .filter(|(_, state)| !state.admitted)
            .map(|(policy, _)| policy.name());
        let denial = Denial::new(violated, retry);
        if rule.dry_run {
            config
                .counters
                .dry_run_denied
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(rule = %rule.name, key = %key, retry_after_ms = retry.as_millis() as u64, "rate limit exceeded (dry run: let through)");
            continue;
        }
        config.counters.denied.fetch_add(1, Ordering::Relaxed);
        if let Some(cache) = &config.deny_cache {
            if retry > Duration::ZERO {
                cache.insert(client, (Instant::now() + retry, cost));
            }
        }
        tracing::debug!(rule = %rule.name, key = %key, "rate limit exceeded");
        return (parts, stop(&config, &limits, &denial));
    }
    config.counters.allowed.fetch_add(1, Ordering::Relaxed);
    (parts, Verdict::Pass(limits.headers(config.legacy_headers)))
}

/// The 429 answer, with the limit headers.
fn stop(config: &Config, limits: &Limits, denial: &Denial) -> Verdict {
    let (mut head, body) = problem_response(&denial.problem());
    head.headers.extend(limits.headers(config.legacy_headers));
    head.headers
        .insert(http::header::RETRY_AFTER, denial.retry_after_header());
    Verdict::Stop(head, body)
}

fn problem_response(problem: &Problem) -> (http::response::Parts, bytes::Bytes) {
    let (head, _) = problem.to_response::<()>().into_parts();
    (head, bytes::Bytes::from(problem.to_json()))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`]: the check (only when a rule
    /// applies), then the inner service's future.
    pub struct ResponseFuture<F, S, B> {
        #[pin]
        state: State<F, S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, B> {
        Checking {
            check: BoxFuture<(Parts, Verdict)>,
            body: Option<B>,
            inner: Option<S>,
        },
        Inner {
            #[pin]
            future: F,
            headers: HeaderMap,
        },
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
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Checking { check, body, inner } => {
                    let (parts, verdict) = ready!(check.as_mut().poll(cx));
                    match verdict {
                        Verdict::Stop(head, bytes) => {
                            return Poll::Ready(Ok(Response::from_parts(
                                head,
                                ResponseBody::full(bytes),
                            )))
                        }
                        Verdict::Pass(headers) => {
                            let (Some(body), Some(mut inner)) = (body.take(), inner.take()) else {
                                // Polled again after it finished.
                                return Poll::Pending;
                            };
                            let future = inner.call(Request::from_parts(parts, body));
                            State::Inner { future, headers }
                        }
                    }
                }
                StateProj::Inner { future, headers } => {
                    let mut res = ready!(future.poll(cx))?;
                    if !headers.is_empty() {
                        res.headers_mut().extend(std::mem::take(headers));
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
            };
            this.state.set(next);
        }
    }
}
