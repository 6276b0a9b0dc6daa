//! The HTTP surface of a limit: the `RateLimit-Policy` and `RateLimit`
//! fields of draft-ietf-httpapi-ratelimit-headers, the legacy
//! `X-RateLimit-*` ones, and the 429 problem.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use super::policy::Policy;
use super::store::Decision;
use crate::problem::Problem;

/// `RateLimit-Policy`: each policy's quota (`q`) and window (`w`, seconds).
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: each policy's remaining quota (`r`) and the seconds until
/// more is available (`t`).
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The problem type the draft defines for a 429.
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// Whole seconds, rounded up: a client told to wait 0 s while it is still
/// limited would retry at once.
fn secs_up(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

struct Item {
    name: String,
    quota: u64,
    window: u64,
    remaining: u64,
    reset: u64,
}

/// The limits a request met, for its response headers.
#[derive(Default)]
pub(crate) struct Limits {
    items: Vec<Item>,
}

impl Limits {
    /// `policies` as a store decided them. For a policy that refused the
    /// request, `t` is its wait, so `Retry-After` (the longest wait) is
    /// never earlier than any `t`.
    pub(crate) fn add(&mut self, policies: &[Policy], decision: &Decision) {
        for (policy, state) in policies.iter().zip(&decision.policies) {
            let reset = if state.admitted {
                state.reset
            } else {
                state.retry_after
            };
            self.push(policy, state.remaining, reset);
        }
    }

    /// `policies` as exhausted for `wait` (a local denial).
    pub(crate) fn add_exhausted(&mut self, policies: &[Policy], wait: Duration) {
        for policy in policies {
            self.push(policy, 0, wait);
        }
    }

    fn push(&mut self, policy: &Policy, remaining: u64, reset: Duration) {
        self.items.push(Item {
            name: policy.name().to_owned(),
            quota: policy.quota(),
            window: secs_up(policy.window()).max(1),
            remaining,
            reset: secs_up(reset),
        });
    }

    /// The fields for these limits (none when there are none).
    pub(crate) fn headers(&self, legacy: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if self.items.is_empty() {
            return headers;
        }
        let join =
            |f: &dyn Fn(&Item) -> String| self.items.iter().map(f).collect::<Vec<_>>().join(", ");
        // Policy names are tokens (checked when the layer is built): they
        // need no escaping inside an sf-string.
        let policy = join(&|i| format!("\"{}\";q={};w={}", i.name, i.quota, i.window));
        let state = join(&|i| format!("\"{}\";r={};t={}", i.name, i.remaining, i.reset));
        for (name, value) in [(RATELIMIT_POLICY, policy), (RATELIMIT, state)] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        if legacy {
            if let Some(tight) = self.items.iter().min_by_key(|i| i.remaining) {
                for (name, value) in [
                    ("x-ratelimit-limit", tight.quota),
                    ("x-ratelimit-remaining", tight.remaining),
                    ("x-ratelimit-reset", tight.reset),
                ] {
                    headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
                }
            }
        }
        headers
    }
}

/// Why a request was refused: the policies it broke, and how long until it
/// would be admitted.
pub(crate) struct Denial {
    violated: Vec<String>,
    retry: Duration,
}

impl Denial {
    pub(crate) fn new<'a>(violated: impl Iterator<Item = &'a str>, retry: Duration) -> Self {
        Denial {
            violated: violated.map(str::to_owned).collect(),
            retry,
        }
    }

    /// `Retry-After`, whole seconds rounded up, at least 1.
    pub(crate) fn retry_after_header(&self) -> HeaderValue {
        HeaderValue::from(secs_up(self.retry).max(1))
    }

    /// The 429 problem, naming the violated policies.
    pub(crate) fn problem(&self) -> Problem {
        let seconds = secs_up(self.retry).max(1);
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            format!(
                "Rate limit {} exceeded; retry in {seconds} s.",
                self.violated
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .with_type(QUOTA_EXCEEDED)
        .with_member("violated-policies", json!(self.violated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::store::PolicyState;

    #[test]
    fn fields_follow_the_draft() {
        let policies = [
            Policy::per_minute(100).named("burst"),
            Policy::per_day(1_000).fixed_window().named("daily"),
        ];
        let decision = Decision::new(vec![
            PolicyState::new(true, 99, Duration::from_millis(600), Duration::ZERO),
            PolicyState::new(true, 900, Duration::from_millis(36_000_001), Duration::ZERO),
        ]);
        let mut limits = Limits::default();
        limits.add(&policies, &decision);
        let h = limits.headers(true);
        assert_eq!(
            h[RATELIMIT_POLICY],
            "\"burst\";q=100;w=60, \"daily\";q=1000;w=86400"
        );
        assert_eq!(h[RATELIMIT], "\"burst\";r=99;t=1, \"daily\";r=900;t=36001");
        assert_eq!(h["x-ratelimit-remaining"], "99");
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert!(Limits::default().headers(true).is_empty());
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        for (ms, secs) in [(1, "1"), (999, "1"), (1_000, "1"), (1_001, "2"), (0, "1")] {
            let d = Denial::new(["p"].into_iter(), Duration::from_millis(ms));
            assert_eq!(d.retry_after_header(), secs, "{ms} ms");
        }
        let json: serde_json::Value = serde_json::from_str(
            &Denial::new(["a", "b"].into_iter(), Duration::from_secs(3))
                .problem()
                .to_json(),
        )
        .unwrap();
        assert_eq!(json["status"], 429);
        assert_eq!(json["violated-policies"], serde_json::json!(["a", "b"]));
        assert_eq!(json["type"], QUOTA_EXCEEDED);
    }
}
