//! Time: conversions every layer needs, the application's clock, and what
//! the application knows of the store's clock.
//!
//! Expiry and every other rule about time is decided by the store's clock
//! (Redis `TIME` inside scripts, see `src/lua/prelude.lua`), never by the
//! application's: several instances with skewed clocks must agree. The
//! application only *estimates* the store's time, to skip a round trip when
//! it can tell that nothing is due; a wrong estimate costs a round trip,
//! never correctness.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The instant `ms` milliseconds after the Unix epoch.
pub(crate) fn system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

/// The application's wall clock: [`SystemTime::now`] unless replaced.
///
/// Replace it to test how the layers behave when this machine's clock is off
/// (see [`RedisBackendBuilder::clock`](crate::redis::RedisBackendBuilder::clock)):
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use redis_layers::Clock;
///
/// let five_minutes_late = Clock::from_fn(|| SystemTime::now() - Duration::from_secs(300));
/// assert!(five_minutes_late.now() < SystemTime::now());
/// ```
#[derive(Clone, Default)]
pub struct Clock {
    now: Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock::default()
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Clock {
            now: Some(Arc::new(now)),
        }
    }

    /// The current time by this clock.
    pub fn now(&self) -> SystemTime {
        match &self.now {
            Some(now) => now(),
            None => SystemTime::now(),
        }
    }

    pub(crate) fn unix_ms(&self) -> u64 {
        unix_ms(self.now())
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.now.is_some() {
            "Clock(custom)"
        } else {
            "Clock(system)"
        })
    }
}

/// How long a measured offset between the application's clock and the
/// store's is trusted before it must be measured again.
pub(crate) const SERVER_CLOCK_MAX_AGE: Duration = Duration::from_secs(60);

/// A measurement is replaced by a less precise one (a slower round trip)
/// only once it is this old.
const SERVER_CLOCK_KEEP_BEST: Duration = Duration::from_secs(10);

/// The application's estimate of the store's clock: its own clock plus an
/// offset measured from the `TIME` that scripts return.
///
/// A measurement is off by at most half its round trip, so the one taken
/// over the fastest round trip is kept (as NTP does): a slow reply under
/// load cannot push the estimate ahead and make touches look due early.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    clock: Clock,
    /// Store time minus application time, in ms, as measured.
    offset_ms: AtomicI64,
    /// The round trip of that measurement, ms.
    rtt_ms: AtomicU64,
    /// Application time (ms) of the measurement; 0 when never measured.
    measured_at: AtomicU64,
}

impl ServerClock {
    pub(crate) fn new(clock: Clock) -> Self {
        ServerClock {
            clock,
            ..ServerClock::default()
        }
    }

    /// The application's clock, Unix ms.
    pub(crate) fn app_ms(&self) -> u64 {
        self.clock.unix_ms()
    }

    /// The store's time now, Unix ms, if the offset was measured recently
    /// enough to trust; `None` tells the caller to ask the store.
    pub(crate) fn estimate(&self) -> Option<u64> {
        let measured_at = self.measured_at.load(Ordering::Acquire);
        if measured_at == 0 {
            return None;
        }
        let now = self.app_ms();
        let max_age = millis(SERVER_CLOCK_MAX_AGE);
        // Too old, or this clock jumped backwards past the measurement.
        if now.saturating_sub(measured_at) > max_age || measured_at > now.saturating_add(max_age) {
            return None;
        }
        let offset = self.offset_ms.load(Ordering::Relaxed);
        Some(now.saturating_add_signed(offset))
    }

    /// Records the store's time `server_ms`, read by a call sent at
    /// application time `sent_ms` and answered at `received_ms`: the store
    /// read it about halfway between.
    pub(crate) fn observe(&self, sent_ms: u64, server_ms: u64, received_ms: u64) {
        let rtt = received_ms.saturating_sub(sent_ms);
        let measured_at = self.measured_at.load(Ordering::Acquire);
        let better = measured_at == 0
            || rtt <= self.rtt_ms.load(Ordering::Relaxed)
            || received_ms.saturating_sub(measured_at) > millis(SERVER_CLOCK_KEEP_BEST)
            || measured_at > received_ms;
        if !better {
            return;
        }
        let midpoint = sent_ms / 2 + received_ms / 2;
        let offset = i64::try_from(i128::from(server_ms) - i128::from(midpoint)).unwrap_or(0);
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.rtt_ms.store(rtt, Ordering::Relaxed);
        self.measured_at
            .store(received_ms.max(1), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn conversions_saturate_and_round_trip() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(unix_ms(system_time(1_700_000_000_123)), 1_700_000_000_123);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn the_server_clock_learns_an_offset_and_forgets_it_when_old() {
        let app = Arc::new(AtomicU64::new(1_000_000));
        let read = app.clone();
        let clock = ServerClock::new(Clock::from_fn(move || {
            system_time(read.load(Ordering::Relaxed))
        }));
        assert_eq!(clock.estimate(), None, "never measured");
        // The store is 5 minutes behind; the call took 10 ms.
        clock.observe(1_000_000, 1_000_005 - 300_000, 1_000_010);
        assert_eq!(clock.estimate(), Some(1_000_000 - 300_000));
        app.store(1_030_000, Ordering::Relaxed);
        assert_eq!(clock.estimate(), Some(1_030_000 - 300_000));
        app.store(1_000_010 + 60_001, Ordering::Relaxed);
        assert_eq!(clock.estimate(), None, "older than the maximum age");
        // A clock that jumps far backwards distrusts the measurement too.
        clock.observe(2_000_000, 2_000_000, 2_000_000);
        app.store(1_900_000, Ordering::Relaxed);
        assert_eq!(clock.estimate(), None);
    }

    #[test]
    fn the_fastest_round_trip_wins_until_it_is_old() {
        let app = Arc::new(AtomicU64::new(1_000_000));
        let read = app.clone();
        let clock = ServerClock::new(Clock::from_fn(move || {
            system_time(read.load(Ordering::Relaxed))
        }));
        // 2 ms round trip: offset +1 000.
        clock.observe(1_000_000, 1_001_001, 1_000_002);
        assert_eq!(clock.estimate(), Some(1_001_000));
        // A 200 ms round trip whose reply was read late: ignored.
        clock.observe(1_000_100, 1_001_110, 1_000_300);
        assert_eq!(clock.estimate(), Some(1_001_000));
        // As precise: taken.
        clock.observe(1_000_400, 1_001_402, 1_000_402);
        assert_eq!(clock.estimate(), Some(1_001_001));
        // Once the best is older than 10 s, a slower one replaces it.
        app.store(1_020_000, Ordering::Relaxed);
        clock.observe(1_019_900, 1_020_950, 1_020_000);
        assert_eq!(clock.estimate(), Some(1_020_000 + 1_000));
    }
}
