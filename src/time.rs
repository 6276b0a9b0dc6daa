//! Time conversions every layer needs.
//!
//! Expiry and every other rule about time is decided by the store's clock
//! (Redis `TIME` inside scripts, see `src/lua/prelude.lua`), never by the
//! application's: several instances with skewed clocks must agree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The instant `ms` milliseconds after the Unix epoch.
pub(crate) fn system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
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
}
