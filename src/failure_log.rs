//! Store-failure logging that stays readable during an outage.
//!
//! When Redis is down every request fails the same way; a line per request
//! floods the logs exactly when people read them. Each layer keeps a
//! [`FailureLog`]: the first failure of an outage is logged in full (with
//! its error), then at most one summary line per interval saying how many
//! more there were, and one line when the store answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Error;

/// How often, at most, an outage's summary line is written.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// One layer's store-failure log (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct FailureLog {
    /// The store, as logs name it (`"rate-limit"`, `"cache"`, ...).
    store: &'static str,
    every: Duration,
    /// Set while failing: a success checks only this.
    failing: AtomicBool,
    state: Mutex<Outage>,
}

#[derive(Debug, Default)]
struct Outage {
    /// When the outage's first failure was seen.
    began: Option<Instant>,
    /// When its last failure was seen.
    last_failure: Option<Instant>,
    /// Whether a severe failure (a request refused) was logged at `error`.
    severe_logged: bool,
    /// When the last line was written.
    last_line: Option<Instant>,
    /// Failures since that line.
    unlogged: u64,
    /// Failures in the outage.
    total: u64,
}

/// How a failure was logged (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logged {
    /// The outage's first: in full.
    First,
    /// A summary of the ones since the last line.
    Summary,
    /// Counted, not written.
    Counted,
}

impl FailureLog {
    /// A log for `store`'s failures, summarised every [`SUMMARY_EVERY`].
    pub(crate) fn new(store: &'static str) -> Self {
        Self::every(store, SUMMARY_EVERY)
    }

    /// A log summarised every `every`.
    pub(crate) fn every(store: &'static str, every: Duration) -> Self {
        FailureLog {
            store,
            every,
            failing: AtomicBool::new(false),
            state: Mutex::new(Outage::default()),
        }
    }

    /// A store call failed; `outcome` says what the layer did about it
    /// (`"letting the request through (fail-open)"`). Logged at `error`
    /// when `severe` (a request refused), else at `warn`.
    pub(crate) fn failed(&self, e: &Error, outcome: &str, severe: bool) -> Logged {
        let now = Instant::now();
        let mut o = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.failing.store(true, Ordering::Relaxed);
        o.total += 1;
        o.last_failure = Some(now);
        let store = self.store;
        // The first failure of an outage, or the first that refuses
        // requests (an `error`-based alert must hear of it).
        if o.began.is_none() || (severe && !o.severe_logged) {
            o.began.get_or_insert(now);
            o.last_line = Some(now);
            o.unlogged = 0;
            o.severe_logged |= severe;
            if severe {
                tracing::error!(store, error = %e, "{store} store failed; {outcome}");
            } else {
                tracing::warn!(store, error = %e, "{store} store failed; {outcome}");
            }
            return Logged::First;
        }
        o.unlogged += 1;
        if o.last_line
            .is_some_and(|at| now.duration_since(at) >= self.every)
        {
            let (more, total) = (o.unlogged, o.total);
            o.last_line = Some(now);
            o.unlogged = 0;
            tracing::warn!(
                store,
                failures = more,
                total,
                error = %e,
                "{store} store still failing: {more} more failures since the last line \
                 ({total} in this outage); {outcome}"
            );
            return Logged::Summary;
        }
        Logged::Counted
    }

    /// A store call succeeded: ends an outage with one line, once no
    /// failure was seen for a while (a second, or the summary interval if
    /// shorter): calls that fail now and then (a shard down, sporadic
    /// timeouts) stay one outage rather than a line pair per failure. One
    /// atomic load when there was none.
    pub(crate) fn succeeded(&self) {
        if !self.failing.load(Ordering::Relaxed) {
            return;
        }
        let mut o = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let quiet = self.every.min(Duration::from_secs(1));
        if o.last_failure.is_some_and(|at| at.elapsed() < quiet) {
            return;
        }
        if !self.failing.swap(false, Ordering::Relaxed) {
            return;
        }
        let lasted = o.began.map(|b| b.elapsed()).unwrap_or_default();
        let store = self.store;
        tracing::info!(
            store,
            failures = o.total,
            lasted_ms = lasted.as_millis() as u64,
            "{store} store answers again after {} failures over {lasted:?}",
            o.total
        );
        *o = Outage::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::sync::Arc;

    /// Lines written by `tracing` while `f` runs.
    fn lines_of(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        out.lines().map(str::to_owned).collect()
    }

    #[test]
    fn an_outage_is_one_line_then_a_summary_per_interval_then_one_when_over() {
        let log = FailureLog::every("rate-limit", Duration::from_millis(200));
        let e = Error::new(ErrorKind::Connection, "could not connect to Redis");
        let mut kinds = Vec::new();
        let lines = lines_of(|| {
            for _ in 0..500 {
                kinds.push(log.failed(&e, "letting the request through", false));
            }
            std::thread::sleep(Duration::from_millis(250));
            for _ in 0..10 {
                kinds.push(log.failed(&e, "letting the request through", false));
            }
            // Right after a failure a success does not end the outage.
            log.succeeded();
            std::thread::sleep(Duration::from_millis(250));
            log.succeeded();
            log.succeeded();
            // A new outage starts over.
            kinds.push(log.failed(&e, "refusing the request", true));
        });
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].contains("WARN") && lines[0].contains("rate-limit store failed"));
        assert!(lines[0].contains("could not connect"), "{}", lines[0]);
        assert!(lines[1].contains("500 more failures"), "{}", lines[1]);
        assert!(lines[1].contains("501 in this outage"), "{}", lines[1]);
        assert!(lines[2].contains("INFO") && lines[2].contains("answers again after 510"));
        assert!(lines[3].contains("ERROR") && lines[3].contains("refusing"));
        assert_eq!(kinds.iter().filter(|k| **k == Logged::First).count(), 2);
        assert_eq!(kinds.iter().filter(|k| **k == Logged::Summary).count(), 1);
    }

    #[test]
    fn a_refusal_after_lenient_failures_is_logged_at_error_once() {
        let log = FailureLog::every("rate-limit", Duration::from_secs(60));
        let e = Error::new(ErrorKind::Timeout, "deadline exceeded");
        let lines = lines_of(|| {
            log.failed(&e, "letting the request through (fail-open)", false);
            log.failed(&e, "refusing the request (fail-closed)", true);
            log.failed(&e, "refusing the request (fail-closed)", true);
        });
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].contains("WARN"));
        assert!(lines[1].contains("ERROR") && lines[1].contains("fail-closed"));
    }

    #[test]
    fn success_without_an_outage_writes_nothing() {
        let log = FailureLog::new("cache");
        let lines = lines_of(|| {
            for _ in 0..100 {
                log.succeeded();
            }
        });
        assert!(lines.is_empty(), "{lines:?}");
    }
}
