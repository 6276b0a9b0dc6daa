//! What the layers count, through the [`metrics`](https://docs.rs/metrics)
//! facade crate (the `metrics` feature): any exporter (Prometheus,
//! StatsD, OpenTelemetry) installed as the process's recorder receives
//! them. Without the feature every function here is empty.
//!
//! | name | type | labels | what it counts; what to alert on |
//! |---|---|---|---|
//! | `redis_layers_requests_total` | counter | `layer`, `outcome` | requests each layer decided, by outcome (below); alert on a rising share of `store_error` |
//! | `redis_layers_rate_limit_rule_total` | counter | `rule`, `outcome` | per rate-limit rule: `allowed`, `limited`, `dry_run_limited` |
//! | `redis_layers_store_call_seconds` | histogram | `backend` | each store call's time (Redis: one round trip, from asking for a connection to the reply); alert on its p99 nearing the deadline |
//! | `redis_layers_store_errors_total` | counter | `backend`, `kind` | store calls that failed, by [`ErrorKind`](crate::ErrorKind) (`timeout`, `connection`, `server`, ...); alert on any sustained rate |
//! | `redis_layers_connections_opened_total` | counter | | Redis connections opened (the first ones, then each reconnect); alert on a steady climb (a flapping network or Redis) |
//! | `redis_layers_cache_local_entries` | gauge | | entries in the cache's local tier, set as it takes one (bounded by `local_tier(n)`) |
//! | `redis_layers_rate_limit_deny_cache_entries` | gauge | | clients the rate limiter knows to be refused, set as it learns one (bounded by its deny cache) |
//!
//! Outcomes of `redis_layers_requests_total`, per layer:
//!
//! - `rate_limit`: `allowed`, `limited` (by the store), `limited_locally`
//!   (a refusal this instance already knew of: no store call),
//!   `store_error` (then let through or refused, as the rule's
//!   `on_store_error` says);
//! - `cache`: `hit`, `stale` (served stale: while revalidating, or on an
//!   error), `miss`, `bypass` (not cacheable: a method, `no-store`, a
//!   personal request), `invalidate` (an unsafe method: what it changed is
//!   purged), `store_error`;
//! - `idempotency`: `first` (the handler ran), `replayed`, `in_flight`
//!   (409), `mismatch` (422), `not_retained` (409: done, but its response
//!   was too large to keep), `unreadable` (409: a record that does not
//!   decode), `store_error` (503);
//! - `lock`: `acquired`, `locked` (409/423), `store_error` (503);
//! - `session`: `unused` (the handler never touched it), `read`,
//!   `touched` (an unchanged session's expiry slid), `saved`, `created`,
//!   `renewed` (a new id), `destroyed`, `conflict` (409: a concurrent
//!   renewal won), `discarded` (a 5xx: nothing of the request kept),
//!   `store_error`;
//! - `csrf` (unsafe methods on paths it checks): `same_origin` (passed by
//!   `Sec-Fetch-Site` or `Origin`), `cross_origin` (403), `token` (passed
//!   by the session's token), `bad_token` (403), `body_too_large` (413),
//!   `body_unreadable` (400), `store_error` (the session could not be
//!   read).
//!
//! Install the exporter before building the layers (per-rule counters
//! are registered when a rate-limit layer is built).

use std::time::Duration;

/// One request's outcome in `layer`.
#[inline]
pub(crate) fn request(layer: &'static str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("redis_layers_requests_total", "layer" => layer, "outcome" => outcome)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (layer, outcome);
}

/// Times a store call from its start: [`finish`](Self::finish) records
/// it (as a metric, and as a round trip of the layer whose code made it,
/// see [`trace`](crate::trace)). Takes no time when neither wants it.
pub(crate) struct StoreTimer {
    started: Option<std::time::Instant>,
}

impl StoreTimer {
    #[inline]
    pub(crate) fn start() -> Self {
        let wanted = cfg!(feature = "metrics") || crate::trace::counting();
        StoreTimer {
            started: wanted.then(std::time::Instant::now),
        }
    }

    /// Records the call's time, and its error's kind if it failed.
    #[inline]
    pub(crate) fn finish<T>(self, backend: &'static str, out: &Result<T, crate::Error>) {
        let Some(started) = self.started else {
            return;
        };
        let took = started.elapsed();
        crate::trace::round_trip(took);
        store_call(backend, took, out.as_ref().err().map(crate::Error::kind));
    }
}

/// A store call's time and whether it failed (with its kind).
#[inline]
pub(crate) fn store_call(backend: &'static str, took: Duration, error: Option<crate::ErrorKind>) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::histogram!("redis_layers_store_call_seconds", "backend" => backend)
            .record(took.as_secs_f64());
        if let Some(kind) = error {
            ::metrics::counter!(
                "redis_layers_store_errors_total",
                "backend" => backend,
                "kind" => kind_label(kind)
            )
            .increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, took, error);
}

/// The size of an in-process table (set when it grows).
#[inline]
pub(crate) fn gauge(name: &'static str, size: usize) {
    #[cfg(feature = "metrics")]
    ::metrics::gauge!(name).set(size as f64);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, size);
}

/// A Redis connection opened.
#[inline]
pub(crate) fn connection_opened() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("redis_layers_connections_opened_total").increment(1);
}

/// A rate-limit rule's counters, registered once when its layer is built.
#[derive(Clone, Default)]
pub(crate) struct RuleCounters {
    #[cfg(feature = "metrics")]
    allowed: Option<::metrics::Counter>,
    #[cfg(feature = "metrics")]
    limited: Option<::metrics::Counter>,
    #[cfg(feature = "metrics")]
    dry_run_limited: Option<::metrics::Counter>,
}

impl std::fmt::Debug for RuleCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleCounters").finish_non_exhaustive()
    }
}

impl RuleCounters {
    /// The counters of the rule named `rule`.
    pub(crate) fn new(rule: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let counter = |outcome: &'static str| {
                Some(::metrics::counter!(
                    "redis_layers_rate_limit_rule_total",
                    "rule" => rule.to_owned(),
                    "outcome" => outcome
                ))
            };
            RuleCounters {
                allowed: counter("allowed"),
                limited: counter("limited"),
                dry_run_limited: counter("dry_run_limited"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = rule;
            RuleCounters::default()
        }
    }

    #[inline]
    pub(crate) fn allowed(&self) {
        #[cfg(feature = "metrics")]
        if let Some(c) = &self.allowed {
            c.increment(1);
        }
    }

    #[inline]
    pub(crate) fn limited(&self) {
        #[cfg(feature = "metrics")]
        if let Some(c) = &self.limited {
            c.increment(1);
        }
    }

    #[inline]
    pub(crate) fn dry_run_limited(&self) {
        #[cfg(feature = "metrics")]
        if let Some(c) = &self.dry_run_limited {
            c.increment(1);
        }
    }
}

/// An error kind as a label.
#[cfg(feature = "metrics")]
fn kind_label(kind: crate::ErrorKind) -> &'static str {
    use crate::ErrorKind as K;
    match kind {
        K::Timeout => "timeout",
        K::Connection => "connection",
        K::Server => "server",
        K::Script => "script",
        K::Decode => "decode",
        K::Capacity => "capacity",
        K::Config => "config",
        _ => "other",
    }
}
