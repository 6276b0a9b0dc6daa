//! Purging everything without listing anything: every entry key is made
//! under the store's current generation (a counter, 0 until the first
//! purge of everything), and a purge starts the next one, so the entries
//! of earlier generations are never found again and expire on their own.
//!
//! Each layer keeps the generation it knows and asks the store again at
//! most every `refresh` (one request then pays one more round trip); it
//! learns a new one at once from its own purges and, with a local tier,
//! from the store's announcements.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::policy::unix_ms;
use super::store::Store;
use crate::error::Error;

/// Never checked.
const NEVER: u64 = u64::MAX;

/// The generation a layer keys its entries under.
pub(crate) struct Generation {
    value: AtomicU64,
    /// When the store last told it, Unix ms ([`NEVER`] before). The wall
    /// clock, which the request reads anyway: one clock read less. Should
    /// it step back, the next ask waits for it to catch up again.
    checked: AtomicU64,
    /// A request is asking the store now: the others use the known value.
    asking: AtomicBool,
    refresh: u64,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("value", &self.value.load(Ordering::Relaxed))
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

/// Clears `asking` however the asking request ends (cancelled included).
struct Asking<'a>(&'a AtomicBool);

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Generation {
    pub(crate) fn new(refresh: Duration) -> Self {
        Generation {
            value: AtomicU64::new(0),
            checked: AtomicU64::new(NEVER),
            asking: AtomicBool::new(false),
            refresh: crate::time::millis(refresh),
        }
    }

    /// The generation, when known and not due for a refresh: no store
    /// call (the hot path, kept out of the request's future).
    pub(crate) fn fresh(&self, now: SystemTime) -> Option<u64> {
        let checked = self.checked.load(Ordering::Acquire);
        (!self.due(checked, unix_ms(now))).then(|| self.value.load(Ordering::Acquire))
    }

    /// The generation a request may use at `now` (Unix ms) without a
    /// store call: a fresh one, or while another request is asking, the
    /// known one (as [`current`](Self::current) gives it). `None` when
    /// this request should ask.
    #[inline]
    pub(crate) fn usable_at(&self, now: u64) -> Option<u64> {
        let checked = self.checked.load(Ordering::Acquire);
        let asked_elsewhere = checked != NEVER && self.asking.load(Ordering::Acquire);
        (asked_elsewhere || !self.due(checked, now)).then(|| self.value.load(Ordering::Acquire))
    }

    /// Due for asking: never asked, `refresh` passed, or the clock stepped
    /// back past the last ask (so a clock fixed after a jump forward does
    /// not stop the asking).
    fn due(&self, checked: u64, now: u64) -> bool {
        checked == NEVER || now < checked || now - checked >= self.refresh
    }

    /// Makes the next request ask (announcements may have been missed).
    pub(crate) fn mark_due(&self) {
        if self.checked.load(Ordering::Acquire) != NEVER {
            self.checked.store(0, Ordering::Release);
        }
    }

    /// The generation to key a request under. Asks the store when it was
    /// never told (every request until it answers: an error then means
    /// the request must neither read nor store) or when `refresh` has
    /// passed (one request asks; on an error the known one is kept).
    pub(crate) async fn current(&self, store: &Store, now: SystemTime) -> Result<u64, Error> {
        let now = unix_ms(now);
        let checked = self.checked.load(Ordering::Acquire);
        if checked == NEVER {
            let generation = store.generation().await?;
            self.learn_at(generation, now);
            return Ok(self.value.load(Ordering::Acquire));
        }
        if self.due(checked, now) && !self.asking.swap(true, Ordering::AcqRel) {
            let _asking = Asking(&self.asking);
            match store.generation().await {
                Ok(generation) => self.learn_at(generation, now),
                Err(e) => {
                    tracing::warn!(error = %e, "cache generation not refreshed; keeping the known one");
                    self.checked.store(now, Ordering::Release);
                }
            }
        }
        Ok(self.value.load(Ordering::Acquire))
    }

    /// The highest generation known here (without asking).
    pub(crate) fn known(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Learns `generation` (never going back to an older one).
    pub(crate) fn learn(&self, generation: u64) {
        self.learn_at(generation, unix_ms(SystemTime::now()));
    }

    fn learn_at(&self, generation: u64, now: u64) {
        self.value.fetch_max(generation, Ordering::AcqRel);
        self.checked.store(now, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBackend;
    use crate::Backend;

    #[tokio::test]
    async fn asks_once_per_refresh_and_never_goes_back() {
        let memory = MemoryBackend::new();
        let store = Store::new(Backend::Memory(memory.clone()));
        let generation = Generation::new(Duration::from_secs(1));
        let t0 = SystemTime::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(generation.current(&store, at(0)).await.unwrap(), 0);
        // The store moves on; within the refresh the known one is used.
        assert_eq!(store.next_generation(0).await.unwrap(), 1);
        assert_eq!(generation.current(&store, at(999)).await.unwrap(), 0);
        assert_eq!(generation.current(&store, at(1_000)).await.unwrap(), 1);
        // The clock stepping back (a jump forward corrected): asked again.
        assert_eq!(store.next_generation(0).await.unwrap(), 2);
        assert_eq!(generation.current(&store, at(10)).await.unwrap(), 2);
        assert_eq!(generation.current(&store, at(20)).await.unwrap(), 2);
        // Announcements missed: the next request asks.
        assert_eq!(store.next_generation(0).await.unwrap(), 3);
        assert_eq!(generation.current(&store, at(30)).await.unwrap(), 2);
        generation.mark_due();
        assert_eq!(generation.current(&store, at(40)).await.unwrap(), 3);
        // Learned from a purge or an announcement: at once, never back.
        generation.learn(5);
        assert_eq!(generation.current(&store, at(2_001)).await.unwrap(), 5);
        // A store whose counter went back (a failover lost an INCR) still
        // moves past what this layer knows.
        assert_eq!(store.next_generation(5).await.unwrap(), 6);
        generation.learn(3);
        let later = SystemTime::now() + Duration::from_secs(5);
        assert_eq!(generation.current(&store, later).await.unwrap(), 6);
    }
}
