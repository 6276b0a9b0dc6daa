//! In-process coordination: concurrent misses for one key run the handler
//! once (the others wait for its entry), one background refresh runs per
//! key at a time, and concurrent invalidations of one URI share their
//! store calls.

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

/// Invalidations by what they remove (their store keys, joined), run as a
/// group commit: at most one runs per URI at a time, and each request
/// waits for a run that *began after* its handler finished (so its write
/// is never followed by a stale read), which one run serves for every
/// request that queued meanwhile. A flood of writes to one URI (every
/// anonymous `POST /logout`) then costs a few rounds of store calls, not
/// one per request, and adds no wait beyond one run.
#[derive(Debug, Default)]
pub(crate) struct Invalidations(Mutex<HashMap<String, Arc<Slot>>>);

#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Tickets handed out: a request takes one once its handler is done.
    taken: std::sync::atomic::AtomicU64,
    /// The last ticket a finished run covered; held while a run goes on.
    covered: tokio::sync::Mutex<u64>,
}

impl Invalidations {
    /// Runs `run` for `id`, unless a run that began after this call has
    /// already covered it. A run that fails (returns false) covers no one:
    /// the next request waiting runs its own.
    pub(crate) async fn run<F, Fut>(&self, id: String, run: F)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        use std::sync::atomic::Ordering;
        let slot = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(id.clone()).or_default().clone()
        };
        // Leaves the map clean however this future ends (done, or dropped
        // by a client that went away).
        let _leave = Leave {
            map: &self.0,
            id,
            slot: slot.clone(),
        };
        let ticket = slot.taken.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = slot.covered.lock().await;
        if *covered < ticket {
            // Every ticket up to here was taken before this run begins: it
            // covers them all, if it succeeds.
            let through = slot.taken.load(Ordering::SeqCst);
            if run().await {
                *covered = through;
            }
        }
    }
}

/// Takes a slot out of the map when its last user leaves (a slot still in
/// the map is shared by whoever finds it; a new one starts from zero).
struct Leave<'a> {
    map: &'a Mutex<HashMap<String, Arc<Slot>>>,
    id: String,
    slot: Arc<Slot>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference, this guard's, and the caller's `slot`.
        if Arc::strong_count(&self.slot) <= 3 {
            map.remove(&self.id);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_invalidations_share_runs_that_begin_after_them() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let inv = Arc::new(Invalidations::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (inv, runs) = (inv.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                inv.run("k".to_owned(), || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    true
                })
                .await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let runs = runs.load(Ordering::SeqCst);
        assert!(
            (1..=10).contains(&runs),
            "{runs} runs for 100 invalidations"
        );
        assert_eq!(inv.0.lock().unwrap().len(), 0, "no slot left behind");
        // One after the others: runs again (nothing covers it).
        let again = Arc::new(AtomicUsize::new(0));
        let a = again.clone();
        inv.run("k".to_owned(), || async move {
            a.fetch_add(1, Ordering::SeqCst);
            true
        })
        .await;
        assert_eq!(again.load(Ordering::SeqCst), 1);
        // A failed run covers no one: each waiting request runs again.
        let failed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (inv, failed) = (inv.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                inv.run("k".to_owned(), || async move {
                    failed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    false
                })
                .await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(failed.load(Ordering::SeqCst), 5);
        // A request dropped while it waits leaves no slot behind.
        let slow = inv.clone();
        let holder = tokio::spawn(async move {
            slow.run("d".to_owned(), || async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                true
            })
            .await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiting = inv.run("d".to_owned(), || async { true });
        let _ = tokio::time::timeout(Duration::from_millis(20), waiting).await;
        holder.await.unwrap();
        assert_eq!(inv.0.lock().unwrap().len(), 0, "no slot left behind");
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
