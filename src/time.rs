//! Time: conversions every layer needs, and what the application knows of
//! the store's clock.
//!
//! Expiry and every other rule about time is decided by the store's clock
//! (Redis `TIME` inside scripts, see `src/lua/prelude.lua`), never by the
//! application's: several instances with skewed clocks must agree. The
//! application only *estimates* the store's time, to skip a round trip when
//! it can tell that nothing is due. The estimate never reads this host's
//! wall clock; it is off by at most half a measured round trip (plus the
//! drift of a monotonic clock over a minute), which only moves *when* a
//! touch is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The instant `ms` milliseconds after the Unix epoch.
pub(crate) fn system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// How long a measurement of the store's clock is trusted before it must
/// be taken again.
pub(crate) const SERVER_CLOCK_MAX_AGE: Duration = Duration::from_secs(60);

/// A measurement is replaced by a less precise one (a slower round trip)
/// only once it is this old.
const SERVER_CLOCK_KEEP_BEST: Duration = Duration::from_secs(10);

/// The application's estimate of the store's clock: the store's time as a
/// script last reported it, plus the time elapsed since on this process's
/// monotonic clock. The wall clock of this host is never read, so its skew
/// or a step (an NTP correction) cannot move the estimate.
///
/// A measurement is off by at most half its round trip, so the one taken
/// over the fastest round trip is kept (as NTP does): a slow reply under
/// load cannot push the estimate ahead and make touches look due early.
#[derive(Debug)]
pub(crate) struct ServerClock {
    /// The origin of the monotonic readings below.
    base: Instant,
    /// The store's time (Unix ms) at the measurement; 0 when never measured.
    server_ms: AtomicU64,
    /// Monotonic ms since `base` when the store read it.
    at_ms: AtomicU64,
    /// The round trip of that measurement, ms.
    rtt_ms: AtomicU64,
}

impl Default for ServerClock {
    fn default() -> Self {
        ServerClock {
            base: Instant::now(),
            server_ms: AtomicU64::new(0),
            at_ms: AtomicU64::new(0),
            rtt_ms: AtomicU64::new(0),
        }
    }
}

impl ServerClock {
    /// This process's monotonic clock, ms (for [`observe`](Self::observe)).
    pub(crate) fn mono_ms(&self) -> u64 {
        millis(self.base.elapsed())
    }

    /// The store's time now, Unix ms, if measured recently enough to trust;
    /// `None` tells the caller to ask the store.
    pub(crate) fn estimate(&self) -> Option<u64> {
        self.estimate_at(self.mono_ms())
    }

    /// [`estimate`](Self::estimate) at monotonic time `now_ms`.
    fn estimate_at(&self, now_ms: u64) -> Option<u64> {
        let server_ms = self.server_ms.load(Ordering::Acquire);
        if server_ms == 0 {
            return None;
        }
        let age = now_ms.saturating_sub(self.at_ms.load(Ordering::Relaxed));
        (age <= millis(SERVER_CLOCK_MAX_AGE)).then(|| server_ms.saturating_add(age))
    }

    /// Records the store's time `server_ms`, read by a call sent at
    /// monotonic time `sent_ms` and answered at `received_ms` (both from
    /// [`mono_ms`](Self::mono_ms)): the store read it about halfway between.
    pub(crate) fn observe(&self, sent_ms: u64, server_ms: u64, received_ms: u64) {
        let rtt = received_ms.saturating_sub(sent_ms);
        let at = sent_ms / 2 + received_ms / 2;
        let measured = self.server_ms.load(Ordering::Acquire) != 0;
        let better = !measured
            || rtt <= self.rtt_ms.load(Ordering::Relaxed)
            || at.saturating_sub(self.at_ms.load(Ordering::Relaxed))
                > millis(SERVER_CLOCK_KEEP_BEST);
        if !better || server_ms == 0 {
            return;
        }
        // Readers may briefly pair a new time with the old instant (or the
        // reverse); either is a measurement a few ms off, which only moves
        // when a touch is sent.
        self.at_ms.store(at, Ordering::Relaxed);
        self.rtt_ms.store(rtt, Ordering::Relaxed);
        self.server_ms.store(server_ms, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_and_round_trip() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(
            system_time(1_700_000_000_123),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
    }

    #[test]
    fn the_estimate_is_the_store_time_plus_monotonic_time_since() {
        let clock = ServerClock::default();
        assert_eq!(clock.estimate_at(0), None, "never measured");
        // The store said 1_000_000 halfway through a 10 ms call.
        clock.observe(0, 1_000_000, 10);
        assert_eq!(clock.estimate_at(30_005), Some(1_000_000 + 30_000));
        assert_eq!(
            clock.estimate_at(60_006),
            None,
            "older than the maximum age"
        );
        assert!(
            clock.estimate().is_some(),
            "on the real clock: just measured"
        );
    }

    #[test]
    fn the_fastest_round_trip_wins_until_it_is_old() {
        let clock = ServerClock::default();
        // 2 ms round trip.
        clock.observe(0, 1_000_001, 2);
        // A 200 ms round trip (a reply read late): ignored.
        clock.observe(100, 1_000_999, 300);
        assert_eq!(clock.estimate_at(1_001), Some(1_000_001 + 1_000));
        // Once the best is older than 10 s, a slower one replaces it.
        clock.observe(12_000, 2_000_000, 12_040);
        assert_eq!(clock.estimate_at(12_021), Some(2_000_000 + 1));
    }
}
