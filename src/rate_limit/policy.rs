//! [`Policy`]: how many requests, over what time, by which algorithm; and
//! the algorithms themselves, as the memory store runs them (`check.lua`
//! is their Redis side).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::time::millis;

/// How a [`Policy`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// The generic cell rate algorithm (the default): requests flow at the
    /// policy's rate, with up to `burst` at once; one number per key. Smooth:
    /// no reset instant at which a whole window's quota comes back.
    #[default]
    Gcra,
    /// A counter per calendar window (aligned to multiples of the window
    /// since the Unix epoch): at most `quota` per window, all back at the
    /// window's end. Exact, but allows up to twice the quota across a
    /// window boundary.
    FixedWindow,
    /// Two fixed windows weighted by how far into the current one the
    /// request is: smoother than a fixed window at the same cost. An
    /// estimate (it assumes the previous window's requests were spread
    /// evenly), never above the quota within one window.
    SlidingWindow,
}

impl Algorithm {
    /// Its code in `check.lua`.
    pub(crate) fn code(self) -> u8 {
        match self {
            Algorithm::Gcra => 1,
            Algorithm::FixedWindow => 2,
            Algorithm::SlidingWindow => 3,
        }
    }
}

/// A rate limit: `quota` requests per `window`, counted by an
/// [`Algorithm`].
///
/// ```
/// use std::time::Duration;
/// use redis_layers::rate_limit::Policy;
///
/// let smooth = Policy::per_second(10).burst(20).named("burst");
/// let hourly = Policy::per_hour(1_000).fixed_window().named("hourly");
/// let custom = Policy::new(5, Duration::from_secs(90)).sliding_window();
/// assert_eq!(hourly.quota(), 1_000);
/// assert_eq!(custom.window(), Duration::from_secs(90));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Policy {
    name: Arc<str>,
    quota: u64,
    window: Duration,
    burst: Option<u64>,
    algorithm: Algorithm,
    /// A stable hash of all of the above (see `layout`).
    fingerprint: u64,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("window", &self.window)
            .field("burst", &self.burst_or_quota())
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// FNV-1a's 64-bit parameters.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub(crate) const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The longest window accepted: a year (times in Lua stay exact).
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// The largest quota accepted (counts in Lua stay exact).
pub const MAX_QUOTA: u64 = 1 << 40;
/// The longest a GCRA policy's burst may take to come back whole (its
/// burst × window ÷ quota): 2^52 ms, about 142,000 years. A client's state
/// lives at most that long, so every expiry passed to Redis (`PX`) is a
/// whole number of ms that Lua's doubles hold exactly.
pub const MAX_BURST_PERIOD: Duration = Duration::from_millis(MAX_BURST_PERIOD_MS);
const MAX_BURST_PERIOD_MS: u64 = 1 << 52;

/// The version of the stored states' meaning (see `fingerprinted`).
const STATE_VERSION: u8 = 2;

impl Policy {
    /// `quota` requests per `window`, by GCRA, named `default`.
    pub fn new(quota: u64, window: Duration) -> Self {
        Policy {
            name: Arc::from("default"),
            quota,
            window,
            burst: None,
            algorithm: Algorithm::Gcra,
            fingerprint: 0,
        }
        .fingerprinted()
    }

    /// With its fingerprint: FNV-1a (64 bits) over the name and the
    /// numbers in big-endian bytes, so every build of the crate on every
    /// platform agrees, and instances sharing a store share states.
    fn fingerprinted(mut self) -> Self {
        let mut hash = FNV_OFFSET;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                hash = (hash ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
            }
        };
        eat(self.name.as_bytes());
        // The state's shape comes with the algorithm: version 1 stored a
        // GCRA state as an absolute arrival time, version 2 as a backlog
        // relative to when it was written; a state of another version is
        // never read as this one.
        eat(&[0, self.algorithm.code(), STATE_VERSION]);
        eat(&self.quota.to_be_bytes());
        eat(&self.window_ms().to_be_bytes());
        eat(&self.burst_or_quota().to_be_bytes());
        self.fingerprint = hash;
        self
    }

    /// The fingerprint (see `fingerprinted`).
    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// `quota` requests per second.
    pub fn per_second(quota: u64) -> Self {
        Policy::new(quota, Duration::from_secs(1))
    }

    /// `quota` requests per minute.
    pub fn per_minute(quota: u64) -> Self {
        Policy::new(quota, Duration::from_secs(60))
    }

    /// `quota` requests per hour.
    pub fn per_hour(quota: u64) -> Self {
        Policy::new(quota, Duration::from_secs(3600))
    }

    /// `quota` requests per day.
    pub fn per_day(quota: u64) -> Self {
        Policy::new(quota, Duration::from_secs(24 * 3600))
    }

    /// The name, in headers, keys and problems (default `default`): a
    /// token of letters, digits, `-`, `_` and `.`, unique within a layer.
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.name = Arc::from(name);
        self.fingerprinted()
    }

    /// For GCRA, how many requests may arrive at once (default: the quota).
    /// The burst must come back whole within [`MAX_BURST_PERIOD`] (burst ×
    /// window ÷ quota); the layer's `build()` refuses a larger one.
    #[must_use]
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self.fingerprinted()
    }

    /// Counts by [`Algorithm::FixedWindow`].
    #[must_use]
    pub fn fixed_window(mut self) -> Self {
        self.algorithm = Algorithm::FixedWindow;
        self.fingerprinted()
    }

    /// Counts by [`Algorithm::SlidingWindow`].
    #[must_use]
    pub fn sliding_window(mut self) -> Self {
        self.algorithm = Algorithm::SlidingWindow;
        self.fingerprinted()
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests per window.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The burst (GCRA; the quota unless set).
    pub fn burst_size(&self) -> u64 {
        self.burst_or_quota()
    }

    fn burst_or_quota(&self) -> u64 {
        self.burst.unwrap_or(self.quota)
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The window in ms.
    pub(crate) fn window_ms(&self) -> u64 {
        millis(self.window)
    }

    /// What the layer checks when it is built.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(Error::config(format!(
                "rate-limit policy name {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        if self.quota == 0 || self.quota > MAX_QUOTA {
            return Err(Error::config(format!(
                "rate-limit policy {:?}: the quota must be 1 to 2^40",
                self.name
            )));
        }
        if self.window < Duration::from_millis(1) || self.window > MAX_WINDOW {
            return Err(Error::config(format!(
                "rate-limit policy {:?}: the window must be 1 ms to a year",
                self.name
            )));
        }
        if self.burst == Some(0) || self.burst_or_quota() > MAX_QUOTA {
            return Err(Error::config(format!(
                "rate-limit policy {:?}: the burst must be 1 to 2^40",
                self.name
            )));
        }
        if self.burst.is_some() && self.algorithm != Algorithm::Gcra {
            return Err(Error::config(format!(
                "rate-limit policy {:?}: a burst applies to GCRA only",
                self.name
            )));
        }
        if self.algorithm == Algorithm::Gcra {
            // How long the burst takes to come back whole: the longest a
            // state lives, and so the largest expiry sent to Redis. Exact
            // in u128 (at most 2^40 × 2^35).
            let period = (u128::from(self.burst_or_quota()) * u128::from(self.window_ms()))
                .div_ceil(u128::from(self.quota));
            if period > u128::from(MAX_BURST_PERIOD_MS) {
                return Err(Error::config(format!(
                    "rate-limit policy {:?}: the burst ({}) would take {period} ms to come back \
                     at {} per {} ms; at most 2^52 ms (MAX_BURST_PERIOD) is kept exactly: \
                     lower the burst",
                    self.name,
                    self.burst_or_quota(),
                    self.quota,
                    self.window_ms()
                )));
            }
        }
        Ok(())
    }
}

/// One policy's state after a check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) allowed: bool,
    /// Requests left (after this one, when allowed).
    pub(crate) remaining: u64,
    /// ms until the quota is whole again (GCRA: the bucket is full; a
    /// window: it ends).
    pub(crate) reset_ms: u64,
    /// ms until a request of this cost would be allowed (0 when allowed).
    pub(crate) retry_ms: u64,
    /// `remaining` had this request not been counted: what a client is
    /// told when another policy refused the request (all or nothing).
    pub(crate) uncounted_remaining: u64,
    /// `reset_ms` had this request not been counted.
    pub(crate) uncounted_reset_ms: u64,
}

impl Outcome {
    fn refused(remaining: f64, reset: f64, retry: f64) -> Self {
        let remaining = remaining.max(0.0).floor() as u64;
        let reset = reset.max(0.0).ceil() as u64;
        Outcome {
            allowed: false,
            remaining,
            reset_ms: reset,
            retry_ms: retry.max(1.0).ceil() as u64,
            uncounted_remaining: remaining,
            uncounted_reset_ms: reset,
        }
    }

    fn admitted(
        remaining: f64,
        reset: f64,
        uncounted_remaining: f64,
        uncounted_reset: f64,
    ) -> Self {
        Outcome {
            allowed: true,
            remaining: remaining.max(0.0).floor() as u64,
            reset_ms: reset.max(0.0).ceil() as u64,
            retry_ms: 0,
            uncounted_remaining: uncounted_remaining.max(0.0).floor() as u64,
            uncounted_reset_ms: uncounted_reset.max(0.0).ceil() as u64,
        }
    }
}

/// A policy's stored state: up to three numbers (see `check.lua`).
pub(crate) type State = [f64; 3];

/// Runs `policy` for a request of `cost` at `now` (ms) on `state` (zeros
/// when the key is new): the outcome, the state to store if the request
/// is admitted, and how long to keep it (ms). The same arithmetic as
/// `check.lua`, on the same doubles.
pub(crate) fn check(policy: &Policy, state: State, now: f64, cost: f64) -> (Outcome, State, f64) {
    let quota = policy.quota as f64;
    let window = policy.window_ms() as f64;
    match policy.algorithm {
        Algorithm::Gcra => {
            // The state is when it was written (ms) and the backlog then:
            // how far the theoretical arrival time ran ahead of that
            // instant. Kept relative rather than as an absolute time
            // (~1.7e12 ms, where a double resolves only ~2.4e-4 ms), an
            // interval of a millionth of a ms still counts exactly: every
            // number here is at most the burst's period.
            let interval = window / quota;
            let burst = policy.burst_or_quota() as f64 * interval;
            // A burst's sums can still land a hair past the burst:
            // admitting up to half a ms (or half an interval) early, below
            // the whole-ms clock's resolution, keeps rounding from refusing
            // a request within the burst.
            let tol = (interval / 2.0).min(0.5);
            let backlog = (state[1] - (now - state[0])).max(0.0);
            let new_backlog = backlog + interval * cost;
            let over = new_backlog - burst - tol;
            let uncounted = (burst + tol - backlog) / interval;
            if over > 0.0 {
                let outcome = Outcome::refused(uncounted, backlog, over);
                (outcome, state, 0.0)
            } else {
                let outcome = Outcome::admitted(-over / interval, new_backlog, uncounted, backlog);
                (outcome, [now, new_backlog, 0.0], new_backlog)
            }
        }
        Algorithm::FixedWindow => {
            let start = (now / window).floor() * window;
            let count = if state[0] == start { state[1] } else { 0.0 };
            let reset = start + window - now;
            if count + cost > quota {
                (Outcome::refused(quota - count, reset, reset), state, 0.0)
            } else {
                let outcome = Outcome::admitted(quota - count - cost, reset, quota - count, reset);
                (outcome, [start, count + cost, 0.0], reset)
            }
        }
        Algorithm::SlidingWindow => {
            let start = (now / window).floor() * window;
            // The stored windows, moved forward to this one.
            let (current, previous) = if state[0] == start {
                (state[1], state[2])
            } else if state[0] == start - window {
                (0.0, state[1])
            } else {
                (0.0, 0.0)
            };
            let reset = start + window - now;
            let used = previous * reset / window + current;
            if used + cost > quota {
                let retry = if current + cost <= quota {
                    // Within this window, once the previous one's weight
                    // has fallen enough (previous > 0 here).
                    let needed = (quota - current - cost) / previous;
                    start + window - needed * window - now
                } else if cost <= quota && current > 0.0 {
                    // This window alone is over the quota: in the next
                    // one, once this one's weight has fallen enough.
                    let needed = (quota - cost) / current;
                    start + 2.0 * window - needed * window - now
                } else {
                    // More than the quota: never; say the window.
                    reset
                };
                (Outcome::refused(quota - used, reset, retry), state, 0.0)
            } else {
                let outcome = Outcome::admitted(quota - used - cost, reset, quota - used, reset);
                // Kept until the next window ends: it is that one's "previous".
                (outcome, [start, current + cost, previous], reset + window)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(policy: &Policy, times: &[f64]) -> Vec<bool> {
        let mut state = [0.0; 3];
        times
            .iter()
            .map(|now| {
                let (o, next, _) = check(policy, state, *now, 1.0);
                if o.allowed {
                    state = next;
                }
                o.allowed
            })
            .collect()
    }

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        // 10 per second (one per 100 ms), bursts of 3.
        let p = Policy::per_second(10).burst(3);
        assert_eq!(
            run(&p, &[0.0, 0.0, 0.0, 0.0, 100.0, 150.0, 200.0]),
            [true, true, true, false, true, false, true]
        );
        // Written at 0, 300 ms ahead: full.
        let (o, _, _) = check(&p, [0.0, 300.0, 0.0], 0.0, 1.0);
        assert!(!o.allowed);
        assert_eq!(o.retry_ms, 100, "the next slot opens in 100 ms");
        assert_eq!(o.reset_ms, 300);
        // 200 ms later, two slots are free again.
        let (o, _, _) = check(&p, [0.0, 300.0, 0.0], 200.0, 1.0);
        assert!(o.allowed);
        assert_eq!((o.remaining, o.reset_ms), (1, 200));
        let (o, state, ttl) = check(&p, [0.0; 3], 1_000.0, 1.0);
        assert!(o.allowed);
        assert_eq!((o.remaining, o.reset_ms), (2, 100));
        assert_eq!((state[0], state[1], ttl), (1_000.0, 100.0, 100.0));
    }

    #[test]
    fn a_fixed_window_is_exact_and_resets_at_its_end() {
        let p = Policy::per_second(2).fixed_window();
        assert_eq!(
            run(&p, &[0.0, 10.0, 20.0, 999.0, 1_000.0, 1_001.0, 1_002.0]),
            [true, true, false, false, true, true, false]
        );
        let (o, _, _) = check(&p, [1_000.0, 2.0, 0.0], 1_250.0, 1.0);
        assert_eq!((o.allowed, o.remaining, o.retry_ms), (false, 0, 750));
        // A costly request that does not fit is refused whole.
        let (o, _, _) = check(&p, [0.0; 3], 0.0, 3.0);
        assert!(!o.allowed);
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_window() {
        let p = Policy::new(10, Duration::from_secs(1)).sliding_window();
        // 10 used in [0, 1000): at 1250, 75% of them still count (7.5),
        // so 2 more fit and the third does not.
        let full = [0.0, 10.0, 0.0];
        let (o, s, _) = check(&p, full, 1_250.0, 1.0);
        assert!(o.allowed);
        let (o, s, _) = check(&p, s, 1_250.0, 1.0);
        assert!(o.allowed);
        let (o, _, _) = check(&p, s, 1_250.0, 1.0);
        assert!(!o.allowed);
        assert!(o.retry_ms > 0 && o.retry_ms <= 750, "{o:?}");
        // Two windows later nothing counts.
        let (o, _, _) = check(&p, full, 2_500.0, 10.0);
        assert!(o.allowed);
    }

    #[test]
    fn a_full_sliding_window_waits_into_the_next_one() {
        // 2 per 300 ms, both used early in the window [0, 300): at 300 the
        // two still weigh fully, so the wait runs until 450, when they
        // weigh one.
        let p = Policy::new(2, Duration::from_millis(300)).sliding_window();
        let (o, _, _) = check(&p, [0.0, 2.0, 0.0], 20.0, 1.0);
        assert!(!o.allowed);
        assert_eq!(o.retry_ms, 430);
        assert!(!check(&p, [0.0, 2.0, 0.0], 449.0, 1.0).0.allowed);
        assert!(check(&p, [0.0, 2.0, 0.0], 450.0, 1.0).0.allowed);
        // A request costing more than the quota never fits.
        let (o, _, _) = check(&p, [0.0; 3], 20.0, 3.0);
        assert!(!o.allowed);
        assert_eq!(o.retry_ms, 280);
    }

    #[test]
    fn uncounted_figures_leave_the_request_out() {
        for p in [
            Policy::per_second(10),
            Policy::per_second(10).fixed_window(),
            Policy::per_second(10).sliding_window(),
        ] {
            let (o, _, _) = check(&p, [0.0; 3], 0.0, 3.0);
            assert!(o.allowed);
            assert_eq!((o.remaining, o.uncounted_remaining), (7, 10), "{p:?}");
            let (refused, _, _) = check(&p, [0.0; 3], 0.0, 11.0);
            assert_eq!(refused.uncounted_remaining, refused.remaining, "{p:?}");
        }
    }

    #[test]
    fn bad_policies_are_config_errors() {
        for bad in [
            Policy::per_second(0),
            Policy::new(1, Duration::ZERO),
            Policy::per_second(1).named("has space"),
            Policy::per_second(1).burst(0),
            Policy::per_second(1).fixed_window().burst(2),
        ] {
            assert_eq!(
                bad.validate().unwrap_err().kind(),
                crate::ErrorKind::Config,
                "{bad:?}"
            );
        }
        assert!(Policy::per_minute(100).burst(20).validate().is_ok());
    }

    #[test]
    fn tiny_intervals_count_every_request() {
        // Intervals far below what a double resolves at an absolute time
        // in ms (about 2.4e-4 ms today): each request still counts once.
        let now = 1_764_230_400_123.0;
        for policy in [
            Policy::per_second(1_000_000),
            Policy::per_second(10_000_000),
            Policy::new(MAX_QUOTA, Duration::from_millis(1)),
        ] {
            let mut state = [0.0; 3];
            for i in 1..=1_000u64 {
                let (outcome, next, _) = check(&policy, state, now, 1.0);
                assert!(outcome.allowed, "{policy:?}: request {i}");
                assert_eq!(
                    outcome.remaining,
                    policy.burst_size() - i,
                    "{policy:?}: request {i}"
                );
                state = next;
            }
        }
    }

    #[test]
    fn a_full_burst_is_admitted_at_real_timestamps() {
        // Absolute times where doubles round: every request of a burst
        // sent in the same millisecond is admitted, `r` counts down one
        // at a time, and the next one is refused.
        let now = 1_764_230_400_123.0;
        for policy in [
            Policy::per_second(6),
            Policy::per_second(7),
            Policy::per_second(13),
            Policy::per_minute(9),
            Policy::per_minute(17),
            Policy::new(3, Duration::from_secs(2)),
            Policy::per_second(7).burst(40),
            Policy::per_hour(1_000),
        ] {
            let mut state = [0.0; 3];
            let burst = policy.burst_or_quota();
            for i in 0..burst {
                let (outcome, next, _) = check(&policy, state, now, 1.0);
                assert!(outcome.allowed, "{policy:?}: request {i} of {burst}");
                assert_eq!(outcome.remaining, burst - i - 1, "{policy:?}: request {i}");
                state = next;
            }
            let (outcome, _, _) = check(&policy, state, now, 1.0);
            assert!(!outcome.allowed, "{policy:?}: one past the burst");
            assert_eq!(outcome.remaining, 0);
            let interval = policy.window_ms() as f64 / policy.quota as f64;
            assert!(
                (outcome.retry_ms as f64 - interval).abs() <= 1.0,
                "{policy:?}: {}",
                outcome.retry_ms
            );
        }
    }
}
