//! The optional in-process tier in front of the store: decoded entries in
//! a bounded cache (`quick_cache`), kept coherent by the store's
//! announcements. While the announcement channel is down the tier is
//! empty and unused; every change this or another instance makes to the
//! store (purge, invalidation) is announced, and every instance drops its
//! copy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::generation::Generation;
use super::layout::Entry;
use super::store::Heard;

pub(crate) struct LocalTier {
    entries: quick_cache::sync::Cache<String, Arc<Entry>>,
    /// The task that applies what is heard; stopped with the tier, which
    /// drops its channel and so ends the store's listening too.
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// Listening: announcements arrive, so copies can be trusted.
    coherent: AtomicBool,
    /// Bumped by every change heard: a copy read from the store before a
    /// change is not kept after it.
    epoch: AtomicU64,
}

impl LocalTier {
    /// A tier of at most `capacity` entries, listening on `heard`.
    pub(crate) fn start(
        capacity: usize,
        heard: mpsc::Receiver<Heard>,
        generation: Arc<Generation>,
    ) -> Arc<Self> {
        let tier = Arc::new(LocalTier {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            coherent: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            task: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(listen(Arc::downgrade(&tier), heard, generation));
        *tier.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        tier
    }

    /// The copy of `key`, when the tier is coherent.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        if !self.coherent.load(Ordering::Acquire) {
            return None;
        }
        self.entries.get(key)
    }

    /// The epoch to pass to [`keep`](Self::keep) for a copy about to be
    /// read from the store.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keeps a copy read from the store at `epoch`, unless something
    /// changed since (or the tier is not coherent).
    pub(crate) fn keep(&self, key: &str, entry: Entry, epoch: u64) {
        if !self.coherent.load(Ordering::SeqCst) || self.epoch() != epoch {
            return;
        }
        self.entries.insert(key.to_owned(), Arc::new(entry));
        // A change heard between the check and the insert: undo it (the
        // change bumped the epoch before removing, so one of the two sees
        // the other).
        if !self.coherent.load(Ordering::SeqCst) || self.epoch() != epoch {
            self.entries.remove(key);
        }
    }

    /// Drops the copies of `keys`.
    pub(crate) fn forget(&self, keys: &[String]) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for key in keys {
            self.entries.remove(key.as_str());
        }
    }

    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Drop for LocalTier {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

async fn listen(
    tier: Weak<LocalTier>,
    mut heard: mpsc::Receiver<Heard>,
    generation: Arc<Generation>,
) {
    while let Some(event) = heard.recv().await {
        let Some(tier) = tier.upgrade() else { return };
        match event {
            Heard::Ready => {
                // A purge of everything may have gone by unheard.
                generation.mark_due();
                tier.clear();
                tier.coherent.store(true, Ordering::Release);
            }
            Heard::Lost => {
                generation.mark_due();
                tier.coherent.store(false, Ordering::Release);
                tier.clear();
            }
            Heard::Changed(keys) => tier.forget(&keys),
            // Everything purged: keys of the new generation from now on.
            Heard::Generation(n) => {
                generation.learn(n);
                tier.clear();
            }
        }
    }
    // The store stopped telling: nothing can be trusted any more.
    if let Some(tier) = tier.upgrade() {
        tier.coherent.store(false, Ordering::Release);
        tier.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry() -> Entry {
        Entry {
            stored_at: 0,
            initial_age: 0,
            lifetime: 1,
            swr: 0,
            sie: 0,
            flags: 0,
            status: http::StatusCode::OK,
            vary: vec![],
            vary_hash: [0; 16],
            headers: http::HeaderMap::new(),
            tags: vec![],
            body: bytes::Bytes::new(),
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn copies_follow_what_is_heard() {
        let (tx, rx) = mpsc::channel(8);
        let tier = LocalTier::start(10, rx, Arc::new(Generation::new(Duration::from_secs(1))));
        tier.keep("a", entry(), tier.epoch());
        assert!(tier.get("a").is_none(), "not listening yet: nothing kept");
        tx.send(Heard::Ready).await.unwrap();
        settle().await;
        tier.keep("a", entry(), tier.epoch());
        tier.keep("b", entry(), tier.epoch());
        assert!(tier.get("a").is_some());
        tx.send(Heard::Changed(vec!["a".into()])).await.unwrap();
        settle().await;
        assert!(tier.get("a").is_none() && tier.get("b").is_some());
        // A copy read before a change is not kept after it.
        let before = tier.epoch();
        tx.send(Heard::Changed(vec!["c".into()])).await.unwrap();
        settle().await;
        tier.keep("c", entry(), before);
        assert!(tier.get("c").is_none());
        // Lost: emptied and unused until ready again.
        tx.send(Heard::Lost).await.unwrap();
        settle().await;
        assert_eq!(tier.len(), 0);
        tier.keep("d", entry(), tier.epoch());
        assert!(tier.get("d").is_none());
        tx.send(Heard::Ready).await.unwrap();
        settle().await;
        tier.keep("d", entry(), tier.epoch());
        assert!(tier.get("d").is_some());
        // The channel gone: emptied for good.
        drop(tx);
        settle().await;
        assert!(tier.get("d").is_none());
    }
}
