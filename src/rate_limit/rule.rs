//! [`Rule`]: which requests a set of policies limits, and by which key.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::Method;

use super::key::Key;
use super::policy::Policy;
use crate::FailurePolicy;

/// The cost of a request, from its head (default 1).
pub(crate) type CostFn = Arc<dyn Fn(&Parts) -> u64 + Send + Sync>;

/// Which requests a set of [`Policy`]s limits, counted by which [`Key`].
///
/// A rule matches a route (axum's `MatchedPath` template, such as
/// `/users/{id}`; without axum, the request path), a path prefix, or every
/// request, optionally only for some methods. Every rule that matches a
/// request applies, all checked in one store call, all or nothing (on
/// Redis Cluster, see the module docs); a request no rule matches passes
/// untouched, with no store call.
///
/// ```
/// use http::Method;
/// use redis_layers::rate_limit::{Key, Policy, Rule};
///
/// let login = Rule::route("/login")
///     .method(Method::POST)
///     .policy(Policy::per_minute(5).named("login-ip"))
///     .named("login-ip");
/// let api = Rule::prefix("/api/")
///     // An issued API key, else the address (a made-up key is no key).
///     .key(
///         Key::header_validated("x-api-key", |key: &str| {
///             std::future::ready(key.starts_with("issued-"))
///         })
///         .or(Key::client_ip()),
///     )
///     .policy(Policy::per_second(10).burst(20).named("api"))
///     .policy(Policy::per_hour(1_000).fixed_window().named("api-hourly"));
/// # let _ = (login, api);
/// ```
#[derive(Clone)]
pub struct Rule {
    pub(crate) name: Option<String>,
    pub(crate) methods: Vec<Method>,
    pub(crate) target: Target,
    pub(crate) policies: Vec<Policy>,
    pub(crate) key: Option<Key>,
    pub(crate) cost: Option<CostFn>,
    pub(crate) dry_run: Option<bool>,
    pub(crate) failure: Option<FailurePolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Any,
    Route(String),
    Prefix(String),
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .field("methods", &self.methods)
            .field("target", &self.target)
            .field("policies", &self.policies)
            .field("key", &self.key)
            .field("dry_run", &self.dry_run)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl Rule {
    fn new(target: Target) -> Self {
        Rule {
            name: None,
            methods: Vec::new(),
            target,
            policies: Vec::new(),
            key: None,
            cost: None,
            dry_run: None,
            failure: None,
        }
    }

    /// Requests to this route: the template it was registered with in axum
    /// (`/users/{id}`), or, without axum's `MatchedPath`, the exact path.
    pub fn route(route: impl Into<String>) -> Self {
        Rule::new(Target::Route(route.into()))
    }

    /// Requests whose path starts with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Rule::new(Target::Prefix(prefix.into()))
    }

    /// Every request.
    pub fn any() -> Self {
        Rule::new(Target::Any)
    }

    /// Only requests with this method (call it again for more).
    #[must_use]
    pub fn method(mut self, method: Method) -> Self {
        self.methods.push(method);
        self
    }

    /// A policy the matching requests are counted against; all of a rule's
    /// policies are checked together, all or nothing.
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    /// Who is counted (default: the layer's key).
    #[must_use]
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// The cost of a request (default: the layer's, or 1).
    #[must_use]
    pub fn cost(mut self, cost: impl Fn(&Parts) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// Headers and logs as if limiting, never a 429 (default: the layer's
    /// setting): watch a limit before it bites.
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = Some(dry_run);
        self
    }

    /// What a store failure does to the requests this rule applies to
    /// (default: the layer's
    /// [`on_store_error`](super::RateLimitLayerBuilder::on_store_error)).
    /// Make a rule guarding credentials (a login, a password reset) fail
    /// closed, so that an unreachable store does not lift its limit, while
    /// the rest of the layer stays open:
    ///
    /// ```
    /// use http::Method;
    /// use redis_layers::rate_limit::{Policy, Rule};
    /// use redis_layers::FailurePolicy;
    ///
    /// let login = Rule::route("/login")
    ///     .method(Method::POST)
    ///     .policy(Policy::per_minute(5).named("login"))
    ///     .on_store_error(FailurePolicy::Closed);
    /// # let _ = login;
    /// ```
    #[must_use]
    pub fn on_store_error(mut self, policy: FailurePolicy) -> Self {
        self.failure = Some(policy);
        self
    }

    /// The rule's name: its counters are kept apart from other rules'
    /// under it (default: `rule-<n>`, its place in the layer). Any text
    /// but `|` (checked when the layer is built).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether the rule applies to a request with this head.
    pub(crate) fn matches(&self, parts: &Parts) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(&parts.method) {
            return false;
        }
        match &self.target {
            Target::Any => true,
            Target::Prefix(prefix) => parts.uri.path().starts_with(prefix.as_str()),
            Target::Route(route) => route_of(parts) == route,
        }
    }
}

/// The route a request matched: axum's template, else the path.
fn route_of(parts: &Parts) -> &str {
    #[cfg(feature = "axum")]
    if let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return matched.as_str();
    }
    parts.uri.path()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: Method, path: &str) -> Parts {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn rules_match_by_method_route_and_prefix() {
        let login = Rule::route("/login").method(Method::POST);
        assert!(login.matches(&head(Method::POST, "/login")));
        assert!(!login.matches(&head(Method::GET, "/login")));
        assert!(!login.matches(&head(Method::POST, "/login/x")));
        let api = Rule::prefix("/api/");
        assert!(api.matches(&head(Method::DELETE, "/api/orders/7")));
        assert!(!api.matches(&head(Method::GET, "/apis")));
        assert!(Rule::any().matches(&head(Method::PUT, "/")));
    }
}
