//! In-process coordination: concurrent misses for one key run the handler
//! once (the others wait for its entry), and one background refresh runs
//! per key at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Misses in flight, by key.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    // The receiver is what followers clone; the leader's guard holds the
    // sender, and dropping it (entry stored, or not, or the request gone)
    // wakes them all: no lost wake-ups, whatever the timing.
    map: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
}

/// What a request is in a flight.
pub(crate) enum Role {
    /// The first: run the handler; the flight ends when the guard drops.
    Leader(Guard),
    /// Another: wait for the leader, then look again.
    Follower(Wait),
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Role {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            return Role::Follower(Wait(rx.clone()));
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.to_owned(), rx);
        Role::Leader(Guard {
            map: self.map.clone(),
            key: key.to_owned(),
            _tx: tx,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

/// The leader's hold on a flight.
pub(crate) struct Guard {
    map: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    key: String,
    _tx: watch::Sender<()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&self.key);
        // `_tx` drops after this: followers wake to a flight already gone.
    }
}

/// A follower's wait.
pub(crate) struct Wait(watch::Receiver<()>);

impl Wait {
    /// Until the leader is done, or `limit`.
    pub(crate) async fn done(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.0.changed()).await;
    }
}

/// Background refreshes, by key: the version (the stale entry's
/// `stored_at`) each one replaces. One refresh per version per instance,
/// even for a request that read the old version just before a refresh
/// finished.
#[derive(Debug, Default)]
pub(crate) struct Refreshing(Mutex<HashMap<String, u64>>);

/// Markers kept at most; past this the map starts over (the cost: one
/// extra refresh of a key refreshed just before).
const MAX_REFRESH_MARKERS: usize = 10_000;

impl Refreshing {
    /// True when no refresh of this version of `key` has started (this one
    /// may).
    pub(crate) fn begin(&self, key: &str, version: u64) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key) == Some(&version) {
            return false;
        }
        if map.len() >= MAX_REFRESH_MARKERS {
            map.clear();
        }
        map.insert(key.to_owned(), version);
        true
    }

    /// A refresh that did not replace the entry: a later stale hit may try
    /// again.
    pub(crate) fn failed(&self, key: &str, version: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key) == Some(&version) {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_wake_when_the_leader_is_done() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(guard) = flights.join("k") else {
            panic!("first is the leader")
        };
        let Role::Follower(wait) = flights.join("k") else {
            panic!("second follows")
        };
        let other = flights.join("other");
        assert!(matches!(other, Role::Leader(_)));
        drop(other);
        let waiting = tokio::spawn(async move {
            let started = std::time::Instant::now();
            wait.done(Duration::from_secs(5)).await;
            started.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(guard);
        let waited = waiting.await.unwrap();
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        assert_eq!(flights.len(), 0);
        // A new miss leads again.
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_wait_is_bounded() {
        let flights = Flights::default();
        let _leader = flights.join("k");
        let Role::Follower(wait) = flights.join("k") else {
            panic!()
        };
        let started = std::time::Instant::now();
        wait.done(Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn one_refresh_per_version() {
        let r = Refreshing::default();
        assert!(r.begin("a", 1));
        assert!(!r.begin("a", 1), "the same version again");
        assert!(r.begin("b", 1));
        assert!(r.begin("a", 2), "a newer version");
        r.failed("a", 2);
        assert!(r.begin("a", 2), "after a failure, again");
    }
}
