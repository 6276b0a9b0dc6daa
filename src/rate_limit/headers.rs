//! The HTTP surface of a limit: the `RateLimit-Policy` and `RateLimit`
//! fields of draft-ietf-httpapi-ratelimit-headers, the legacy
//! `X-RateLimit-*` ones, and the 429 problem.
//!
//! Everything that does not change per request is rendered once: a rule's
//! `RateLimit-Policy` value when the layer is built, a refusal's body when
//! the store refuses (the local deny cache reuses it).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use super::policy::Policy;
use crate::problem::Problem;

/// `RateLimit-Policy`: each policy's quota (`q`) and window (`w`, seconds).
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: each policy's remaining quota (`r`) and the seconds until
/// more is available (`t`).
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The problem type the draft defines for a 429.
pub(crate) const QUOTA_EXCEEDED: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// Whole seconds, rounded up: a client told to wait 0 s while it is still
/// limited would retry at once.
pub(crate) fn secs_up(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

/// A rule's `RateLimit-Policy` items, rendered when the layer is built.
/// Policy names are tokens (checked at build): they need no escaping
/// inside an sf-string.
pub(crate) fn policy_field(policies: &[Policy]) -> String {
    let mut out = String::new();
    for policy in policies {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(policy.name());
        out.push_str("\";q=");
        out.push_str(itoa::Buffer::new().format(policy.quota()));
        out.push_str(";w=");
        out.push_str(itoa::Buffer::new().format(secs_up(policy.window()).max(1)));
    }
    out
}

/// The fields of the limits a request met, built as the rules are
/// checked.
#[derive(Default)]
pub(crate) struct Limits {
    /// `RateLimit-Policy`: the one rule's pre-rendered value, or several
    /// joined.
    policy: Field,
    /// `RateLimit`.
    state: String,
    /// The policy closest to its limit: (quota, remaining, reset seconds).
    tightest: Option<(u64, u64, u64)>,
}

#[derive(Default)]
enum Field {
    #[default]
    None,
    One(HeaderValue),
    Many(String),
}

impl Limits {
    /// A rule's policies: its pre-rendered `RateLimit-Policy` value, and
    /// each policy's remaining quota and time until reset.
    pub(crate) fn add(
        &mut self,
        field: &HeaderValue,
        policies: &[Policy],
        states: impl Iterator<Item = (u64, Duration)>,
    ) {
        self.policy = match std::mem::take(&mut self.policy) {
            Field::None => Field::One(field.clone()),
            Field::One(first) => {
                let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
                joined.push_str(", ");
                joined.push_str(&String::from_utf8_lossy(field.as_bytes()));
                Field::Many(joined)
            }
            Field::Many(mut joined) => {
                joined.push_str(", ");
                joined.push_str(&String::from_utf8_lossy(field.as_bytes()));
                Field::Many(joined)
            }
        };
        let mut n = itoa::Buffer::new();
        for (policy, (remaining, reset)) in policies.iter().zip(states) {
            let reset = secs_up(reset);
            if !self.state.is_empty() {
                self.state.push_str(", ");
            }
            self.state.push('"');
            self.state.push_str(policy.name());
            self.state.push_str("\";r=");
            self.state.push_str(n.format(remaining));
            self.state.push_str(";t=");
            self.state.push_str(n.format(reset));
            if self.tightest.is_none_or(|(_, r, _)| remaining < r) {
                self.tightest = Some((policy.quota(), remaining, reset));
            }
        }
    }

    /// Puts the fields on `headers`.
    pub(crate) fn write(self, headers: &mut HeaderMap, legacy: bool) {
        let policy = match self.policy {
            Field::None => return,
            Field::One(value) => value,
            Field::Many(joined) => match HeaderValue::try_from(joined) {
                Ok(value) => value,
                Err(_) => return,
            },
        };
        headers.insert(RATELIMIT_POLICY, policy);
        if let Ok(value) = HeaderValue::try_from(self.state) {
            headers.insert(RATELIMIT, value);
        }
        if let (true, Some((quota, remaining, reset))) = (legacy, self.tightest) {
            headers.insert(X_LIMIT, HeaderValue::from(quota));
            headers.insert(X_REMAINING, HeaderValue::from(remaining));
            headers.insert(X_RESET, HeaderValue::from(reset));
        }
    }
}

/// `Retry-After`, whole seconds rounded up, at least 1.
pub(crate) fn retry_after(wait: Duration) -> HeaderValue {
    HeaderValue::from(secs_up(wait).max(1))
}

/// The 429 problem, naming the violated policies. It says nothing about
/// time (that is `Retry-After`'s job), so one body serves every refusal
/// of the same policies.
pub(crate) fn problem<'a>(violated: impl Iterator<Item = &'a str>) -> Problem {
    let violated: Vec<&str> = violated.collect();
    let names = violated
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        format!("Rate limit {names} exceeded; retry after the time in Retry-After."),
    )
    .with_type(QUOTA_EXCEEDED)
    .with_member("violated-policies", json!(violated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_draft() {
        let policies = [
            Policy::per_minute(100).named("burst"),
            Policy::per_day(1_000).fixed_window().named("daily"),
        ];
        let field = HeaderValue::try_from(policy_field(&policies)).unwrap();
        let mut limits = Limits::default();
        limits.add(
            &field,
            &policies,
            [
                (99, Duration::from_millis(600)),
                (900, Duration::from_millis(36_000_001)),
            ]
            .into_iter(),
        );
        let mut h = HeaderMap::new();
        limits.write(&mut h, true);
        assert_eq!(
            h[RATELIMIT_POLICY],
            "\"burst\";q=100;w=60, \"daily\";q=1000;w=86400"
        );
        assert_eq!(h[RATELIMIT], "\"burst\";r=99;t=1, \"daily\";r=900;t=36001");
        assert_eq!(h["x-ratelimit-remaining"], "99");
        assert_eq!(h["x-ratelimit-limit"], "100");
        let mut none = HeaderMap::new();
        Limits::default().write(&mut none, true);
        assert!(none.is_empty());
    }

    #[test]
    fn several_rules_join_their_fields() {
        let a = [Policy::per_second(5).named("a")];
        let b = [Policy::per_minute(7).named("b")];
        let fa = HeaderValue::try_from(policy_field(&a)).unwrap();
        let fb = HeaderValue::try_from(policy_field(&b)).unwrap();
        let mut limits = Limits::default();
        limits.add(&fa, &a, [(4, Duration::from_millis(200))].into_iter());
        limits.add(&fb, &b, [(6, Duration::from_secs(59))].into_iter());
        let mut h = HeaderMap::new();
        limits.write(&mut h, false);
        assert_eq!(h[RATELIMIT_POLICY], "\"a\";q=5;w=1, \"b\";q=7;w=60");
        assert_eq!(h[RATELIMIT], "\"a\";r=4;t=1, \"b\";r=6;t=59");
        assert!(h.get("x-ratelimit-limit").is_none());
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        for (ms, secs) in [(1, "1"), (999, "1"), (1_000, "1"), (1_001, "2"), (0, "1")] {
            assert_eq!(retry_after(Duration::from_millis(ms)), secs, "{ms} ms");
        }
        let json: serde_json::Value =
            serde_json::from_str(&problem(["a", "b"].into_iter()).to_json()).unwrap();
        assert_eq!(json["status"], 429);
        assert_eq!(json["violated-policies"], serde_json::json!(["a", "b"]));
        assert_eq!(json["type"], QUOTA_EXCEEDED);
    }
}
