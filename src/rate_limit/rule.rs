//! [`Rule`]: which requests a set of policies limits, and by which key.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::Method;

use super::policy::Policy;
use crate::client_key::ClientKey as Key;
use crate::FailurePolicy;

/// The cost of a request, from its head (default 1).
pub(crate) type CostFn = Arc<dyn Fn(&Parts) -> u64 + Send + Sync>;

/// Which requests a set of [`Policy`]s limits, counted by which [`Key`].
///
/// A rule matches a route (a template such as `/users/{id}`: axum's
/// `MatchedPath` when there is one, else the template matched against the
/// path itself, so rules work under plain hyper and in a layer around a
/// whole `Router` too), a path prefix, or every request, optionally only
/// for some methods. Paths are the ones the client sent: inside axum's
/// `Router::nest`, the full path (`OriginalUri`), prefix included. Every rule that matches a
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
    /// (`/users/{id}`; `{name}` is one path segment, `{*name}` the rest of
    /// the path). With axum's `MatchedPath` (a layer added inside a
    /// `Router`) that template must be this one, so `/users/me` does not
    /// count against `/users/{id}` when a route of its own serves it;
    /// without it (plain hyper, a layer around the router) the template is
    /// matched against the path.
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
    /// under it, and metrics and spans name it. Any text but `|` (checked
    /// when the layer is built). Rules and layers named alike (with the
    /// same policies) share their budgets, wherever they are mounted.
    ///
    /// The default is where in the code the layer was built and the
    /// rule's place in it (`src/routes.rs:42:10#0`): each layer built in
    /// its own place counts apart, and every instance running the same
    /// build names it alike. Name rules whose budgets must survive an
    /// upgrade that moves that line.
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
            Target::Prefix(prefix) => path_of(parts).starts_with(prefix.as_str()),
            Target::Route(route) => {
                #[cfg(feature = "axum")]
                if let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() {
                    return matched.as_str() == route;
                }
                template_matches(route, path_of(parts))
            }
        }
    }
}

/// The path the client sent: inside axum's `Router::nest`, the original
/// (the request's own has lost the nest's prefix).
fn path_of(parts: &Parts) -> &str {
    #[cfg(feature = "axum")]
    if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
        return original.0.path();
    }
    parts.uri.path()
}

/// Whether `path` fits a route template: segment by segment, `{name}`
/// fitting any one segment, `{*name}` the rest (at least one segment);
/// anything else literally. Empty segments are skipped on both sides
/// (`/login/` and `//login` fit `/login`), so that a path a router or a
/// path-normalising layer behind the limiter would serve as the route
/// cannot slip past its rule by a slash.
fn template_matches(template: &str, path: &str) -> bool {
    let mut want = template.split('/').filter(|s| !s.is_empty());
    let mut have = path.split('/').filter(|s| !s.is_empty());
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some(w), Some(h)) => {
                if w.starts_with("{*") && w.ends_with('}') {
                    return true;
                }
                let param = w.len() > 2 && w.starts_with('{') && w.ends_with('}');
                if !param && w != h {
                    return false;
                }
            }
            _ => return false,
        }
    }
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

    #[test]
    fn route_templates_match_paths_without_axums_matched_path() {
        let user = Rule::route("/users/{id}");
        assert!(user.matches(&head(Method::GET, "/users/7")));
        assert!(user.matches(&head(Method::GET, "/users/7?tab=orders")));
        assert!(
            user.matches(&head(Method::GET, "/users/7/")),
            "a slash more"
        );
        assert!(user.matches(&head(Method::GET, "//users//7")));
        assert!(!user.matches(&head(Method::GET, "/users/")));
        assert!(!user.matches(&head(Method::GET, "/users")));
        assert!(!user.matches(&head(Method::GET, "/users/7/orders")));
        assert!(!user.matches(&head(Method::GET, "/accounts/7")));
        let files = Rule::route("/files/{*path}");
        assert!(files.matches(&head(Method::GET, "/files/a/b/c.txt")));
        assert!(!files.matches(&head(Method::GET, "/files/")));
        let exact = Rule::route("/login");
        assert!(exact.matches(&head(Method::GET, "/login")));
        assert!(
            exact.matches(&head(Method::GET, "/login/")),
            "no slipping past by a slash"
        );
        assert!(!exact.matches(&head(Method::GET, "/login/x")));
        // A literal brace pair is a parameter only when it spans the
        // whole segment.
        assert!(!Rule::route("/a{b}").matches(&head(Method::GET, "/ax")));
    }
}
