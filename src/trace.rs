//! One tracing span per layer per request, with what an operator filters
//! on: the outcome, and the store round trips the request waited for and
//! their time.
//!
//! | span (target) | fields |
//! |---|---|
//! | `session` (`redis_layers::session`) | `outcome`, `store_round_trips`, `store_us` |
//! | `rate_limit` (`redis_layers::rate_limit`) | `outcome`, `rules` (the rules that applied), `refused_by` (the rules that refused), `policies` (the policies they violated), `store_round_trips`, `store_us` |
//! | `cache` (`redis_layers::cache`) | `outcome`, `tier` (`local` for a hit answered from the local tier), `store_round_trips`, `store_us` |
//! | `idempotency` (`redis_layers::idempotency`) | `outcome`, `store_round_trips`, `store_us` |
//! | `lock` (`redis_layers::lock`) | `outcome`, `store_round_trips`, `store_us` |
//!
//! The outcomes are those of the `redis_layers_requests_total` metric
//! ([`metrics`](crate::metrics)), plus the rate limiter's `skipped` (rules
//! applied, but none found its key). The spans are at `INFO`; the inner
//! service runs inside them (a handler's events name the layers around
//! it), and so does work a request leaves behind in a task of its own (a
//! cache fill's write, a refresh, an idempotency completion). A lease
//! renewed in a task of its own (a `LockGuard`, a cache fill) runs in a
//! `lease_renewal` span (target `redis_layers::lease`) that follows from
//! the request's, so as not to hold it open. A filter such as
//! `redis_layers=warn` turns them off, and then they cost one check per
//! request.
//!
//! `store_round_trips` counts the Redis calls the layer made and waited
//! for (a pipeline is one; calls made by the inner service, lease
//! renewals, and calls in tasks of their own are not counted; a handler's
//! session reads and writes are the session span's); `store_us` is their
//! time in microseconds. On the memory backend both stay `0`.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, Span};

tokio::task_local! {
    /// Where the store calls of the code running now are counted (`None`:
    /// nowhere).
    static COUNTS: Option<Arc<Counts>>;
}

/// A layer's store round trips for one request.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    round_trips: AtomicU32,
    micros: AtomicU64,
}

impl Counts {
    fn record(&self, span: &Span) {
        span.record(
            "store_round_trips",
            self.round_trips.load(Ordering::Relaxed),
        );
        span.record("store_us", self.micros.load(Ordering::Relaxed));
    }
}

/// Counts a Redis round trip that took `took` for the layer whose code is
/// running, if any (called by the Redis backend).
#[inline]
pub(crate) fn round_trip(took: Duration) {
    let _ = COUNTS.try_with(|counts| {
        if let Some(counts) = counts {
            counts.round_trips.fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            counts.micros.fetch_add(micros, Ordering::Relaxed);
        }
    });
}

/// Whether a layer is counting round trips here (so the Redis backend
/// needs the time of each).
#[inline]
pub(crate) fn counting() -> bool {
    COUNTS.try_with(Option::is_some).unwrap_or(false)
}

/// A layer's span for one request, and its store round trips.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    span: Span,
    /// `None` while the span is off: nothing is counted.
    counts: Option<Arc<Counts>>,
}

/// The span of `layer` (a literal: `session`, `rate_limit`, ...), with the
/// fields every layer has, plus `extra` ones.
#[allow(unused_macros)] // (no layer compiled in)
macro_rules! layer_span {
    ($layer:literal $(, $field:ident)*) => {
        $crate::trace::Trace::new(tracing::info_span!(
            target: concat!("redis_layers::", $layer),
            $layer,
            outcome = tracing::field::Empty,
            $($field = tracing::field::Empty,)*
            store_round_trips = 0u32,
            store_us = 0u64,
        ))
    };
}
#[allow(unused_imports)]
pub(crate) use layer_span;

impl Trace {
    /// Counts round trips for `span` only if anyone listens to it.
    pub(crate) fn new(span: Span) -> Self {
        let counts = (!span.is_disabled()).then(Arc::default);
        Trace { span, counts }
    }

    /// A trace that records nothing.
    pub(crate) fn none() -> Self {
        Trace {
            span: Span::none(),
            counts: None,
        }
    }

    /// The span.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Counts a request's `outcome` in `layer` (the metric) and records it
    /// on this span.
    pub(crate) fn outcome(&self, layer: &'static str, outcome: &'static str) {
        crate::metrics::request(layer, outcome);
        if self.is_on() {
            self.span.record("outcome", outcome);
        }
    }

    /// Whether the span is on (worth computing a field for).
    pub(crate) fn is_on(&self) -> bool {
        self.counts.is_some()
    }

    /// `work`, the layer's own, with its round trips counted when the
    /// span is on; the span's store fields are updated when it ends.
    pub(crate) fn measure<F: Future>(&self, work: F) -> Measure<F> {
        self.clone().measuring(work)
    }
}

impl Trace {
    /// `work` (a layer's whole request) boxed: when the span is on, run in
    /// it with its round trips counted, except those of the inner service
    /// (call it through [`unmeasured`]); else as it is.
    pub(crate) fn boxed<'a, F>(self, work: F) -> crate::BoxFuture<'a, F::Output>
    where
        F: Future + Send + 'a,
    {
        if self.is_on() {
            let span = self.span.clone();
            Box::pin(self.measuring(work).instrument(span))
        } else {
            Box::pin(work)
        }
    }

    /// Like [`boxed`](Self::boxed), measured but not entering the span
    /// (for a layer whose own future enters it).
    pub(crate) fn boxed_measured<'a, F>(self, work: F) -> crate::BoxFuture<'a, F::Output>
    where
        F: Future + Send + 'a,
    {
        if self.is_on() {
            Box::pin(self.measuring(work))
        } else {
            Box::pin(work)
        }
    }

    /// [`measure`](Self::measure), owning the trace.
    fn measuring<F: Future>(self, work: F) -> Measure<F> {
        match self.counts {
            None => Measure::Off { work },
            Some(counts) => Measure::On {
                work: COUNTS.scope(Some(counts.clone()), work),
                counts,
                span: self.span,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// A layer's work, with its round trips counted when its span is on
    /// ([`Trace::measure`]). A wrapper, not an `async fn`: that would hold
    /// the work twice (as its argument and as what it awaits), and a
    /// layer's future is kilobytes.
    #[project = MeasureProj]
    pub(crate) enum Measure<F: Future> {
        Off {
            #[pin]
            work: F,
        },
        On {
            #[pin]
            work: tokio::task::futures::TaskLocalFuture<Option<Arc<Counts>>, F>,
            counts: Arc<Counts>,
            span: Span,
        },
    }
}

impl<F: Future> Future for Measure<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        match self.project() {
            MeasureProj::Off { work } => work.poll(cx),
            MeasureProj::On { work, counts, span } => {
                let out = std::task::ready!(work.poll(cx));
                counts.record(span);
                std::task::Poll::Ready(out)
            }
        }
    }
}

/// Runs `work` (the inner service) with its store calls counted for no
/// layer around it.
pub(crate) async fn unmeasured<F: Future>(work: F) -> F::Output {
    if counting() {
        COUNTS.scope(None, work).await
    } else {
        work.await
    }
}

/// Counts a request's `outcome` in `layer` (the metric) and records it on
/// the layer's span, when that span is the current one (a span of another
/// layer, or the application's, is left alone).
#[inline]
pub(crate) fn outcome(layer: &'static str, outcome: &'static str) {
    crate::metrics::request(layer, outcome);
    record(layer, "outcome", outcome);
}

/// Records `value` as `field` on the current span if it is `layer`'s.
pub(crate) fn record(layer: &'static str, field: &'static str, value: &str) {
    if !tracing::level_enabled!(tracing::Level::INFO) {
        // Nobody listens at INFO: no layer span is on.
        return;
    }
    let span = Span::current();
    if is_layer_span(&span, layer) {
        span.record(field, value);
    }
}

/// Whether `span` is `layer`'s own span.
pub(crate) fn is_layer_span(span: &Span, layer: &str) -> bool {
    span.metadata().is_some_and(|m| {
        m.name() == layer
            && m.target()
                .strip_prefix("redis_layers::")
                .is_some_and(|t| t == layer)
    })
}

/// Whether the current span is `layer`'s own (so a field is worth
/// computing).
pub(crate) fn in_layer_span(layer: &str) -> bool {
    tracing::level_enabled!(tracing::Level::INFO) && is_layer_span(&Span::current(), layer)
}
