//! A layer's settings, checked once when the layer is built and shared by
//! every request's [`Session`](super::Session).

use std::time::Duration;

use super::cookie::CookieConfig;
use super::store::{LoadRequest, Store};
use super::Activity;
use crate::error::Error;
use crate::FailurePolicy;

/// Idle timeout used when none is configured: 30 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Absolute timeout used when none is configured: 8 hours.
pub const DEFAULT_ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(8 * 60 * 60);
/// Touch interval used when none is configured: 60 seconds.
pub const DEFAULT_TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// The longest timeout accepted: 10 years. Longer settings are cut to it,
/// so expiry times stay exact integers in Lua (whose numbers are doubles).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Store,
    pub(crate) cookie: CookieConfig,
    pub(crate) idle: Duration,
    pub(crate) absolute: Duration,
    pub(crate) touch_interval: Duration,
    pub(crate) activity: Activity,
    pub(crate) failure: FailurePolicy,
    /// Store failures, logged once per outage and then summarised.
    pub(crate) failures: std::sync::Arc<crate::failure_log::FailureLog>,
    /// How refusals are answered.
    pub(crate) on_refusal: crate::refusal::OnRefusal,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("cookie", &self.cookie)
            .field("idle", &self.idle)
            .field("absolute", &self.absolute)
            .field("touch_interval", &self.touch_interval)
            .field("activity", &self.activity)
            .field("failure", &self.failure)
            .field("on_refusal", &self.on_refusal)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub(crate) fn new(store: Store) -> Self {
        Config {
            store,
            cookie: CookieConfig::default(),
            idle: DEFAULT_IDLE_TIMEOUT,
            absolute: DEFAULT_ABSOLUTE_TIMEOUT,
            touch_interval: DEFAULT_TOUCH_INTERVAL,
            activity: Activity::AnyRequest,
            failure: FailurePolicy::Closed,
            failures: std::sync::Arc::new(crate::failure_log::FailureLog::new("session")),
            on_refusal: crate::refusal::OnRefusal::default(),
        }
    }

    /// Every rule the settings must follow, so that no request can fail
    /// because of them.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        self.cookie.validate()?;
        // (Compared as the store keeps them: whole milliseconds.)
        let ms = crate::time::millis;
        if ms(self.idle) == 0 || ms(self.absolute) == 0 {
            return Err(Error::config(
                "session idle and absolute timeouts must be at least 1 ms",
            ));
        }
        if self.idle > self.absolute {
            return Err(Error::config(format!(
                "session idle timeout ({:?}) is longer than the absolute timeout ({:?})",
                self.idle, self.absolute
            )));
        }
        if ms(self.touch_interval) >= ms(self.idle) {
            return Err(Error::config(format!(
                "session touch interval ({:?}) must be shorter than the idle timeout ({:?}), \
                 or an active session would expire between touches",
                self.touch_interval, self.idle
            )));
        }
        Ok(())
    }

    pub(crate) fn load_request(&self) -> LoadRequest {
        LoadRequest::new(self.idle, self.touch_interval)
    }
}
