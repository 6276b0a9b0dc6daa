//! The optional in-process tier in front of the store: decoded entries in
//! a bounded cache (`quick_cache`), kept coherent by the store's
//! announcements. While the announcement channel is down the tier is
//! empty and unused; every change this or another instance makes to the
//! store (purge, invalidation) is announced, and every instance drops its
//! copy.
//!
//! In front of the tier, each thread keeps its own copies of the entries
//! it answers from ([`LocalTier::with_copy`]): a hit there takes no lock
//! and touches no reference count of the tier's, and the response's header
//! fields are prepared once a second. A thread's
//! copy is used only while the tier's epoch is the one it was checked at
//! (a copy checked while a change was under way answers that request only):
//! any change heard, and any entry kept, sends it back to the tier, which
//! either confirms it (the same entry) or replaces it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::HeaderMap;

use tokio::sync::mpsc;

use http::header::AGE;
use http::HeaderValue;

use super::fields::{set_content_length, CACHE_STATUS};
use super::generation::Generation;
use super::key::{store_key, vary_hash, MAX_LINE};
use super::layout::{split_key, Entry};
use super::store::Heard;

/// A URL's entries in the tier: the one response when its responses vary
/// on nothing, else the variants of one `Vary` list (at most
/// [`HELD_VARIANTS`], the latest kept).
pub(crate) struct Held {
    names: Vec<http::HeaderName>,
    variants: Vec<([u8; 16], Arc<Entry>)>,
}

impl Held {
    /// The entry of the variant `id` (all zeros: the URL's one response).
    fn variant(&self, id: &[u8; 16]) -> Option<&Arc<Entry>> {
        self.variants.iter().find(|(v, _)| v == id).map(|(_, e)| e)
    }

    /// The entry a request with `headers` may use, if held.
    fn for_request(&self, headers: &HeaderMap) -> Option<&Arc<Entry>> {
        self.variant(&vary_hash(&self.names, headers))
    }
}

/// Weighs a URL's [`Held`] by its entries.
#[derive(Clone)]
pub(crate) struct Variants;

impl quick_cache::Weighter<String, Arc<Held>> for Variants {
    fn weight(&self, _url: &String, held: &Arc<Held>) -> u64 {
        held.variants.len().max(1) as u64
    }
}

/// The most variants of one URL the tier holds (the latest kept).
const HELD_VARIANTS: usize = 16;

/// The variant a store key names (all zeros for a URL's key).
#[cfg(test)]
fn variant_id(key: &str) -> Option<[u8; 16]> {
    match split_key(key).1 {
        None => Some([0; 16]),
        Some(hex) => {
            let mut out = [0u8; 16];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(out)
        }
    }
}

pub(crate) struct LocalTier {
    /// Names this tier in the threads' fronts.
    id: u64,
    /// Alive while the tier is: a thread drops its copies of a dropped
    /// tier's entries when it next adds a tier.
    alive: Arc<()>,
    /// By URL key, weighed by the entries held (the tier's capacity is
    /// in entries, variants included).
    entries: quick_cache::sync::Cache<String, Arc<Held>, Variants>,
    /// The task that applies what is heard; stopped with the tier, which
    /// drops its channel and so ends the store's listening too.
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// Listening: announcements arrive, so copies can be trusted.
    coherent: AtomicBool,
    /// Moved by every change heard (a purge, an invalidation, a clear): a
    /// copy read from the store before a change is not kept after it.
    changes: AtomicU64,
    /// Moved before and after every change to the entries (so odd while
    /// one is under way): a thread's copy stamped with another epoch is
    /// checked against the tier again, and a copy checked while a change
    /// was under way is never stamped as current.
    epoch: AtomicU64,
    /// Held while the tier's entries change (keep, forget, clear), so that
    /// a keep and a change heard never interleave.
    writing: std::sync::Mutex<()>,
}

impl LocalTier {
    /// A tier of at most `capacity` entries, listening on `heard`.
    pub(crate) fn start(
        capacity: usize,
        heard: mpsc::Receiver<Heard>,
        generation: Arc<Generation>,
    ) -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let tier = Arc::new(LocalTier {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            entries: quick_cache::sync::Cache::with_weighter(
                capacity.max(1),
                capacity.max(1) as u64,
                Variants,
            ),
            coherent: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            writing: std::sync::Mutex::new(()),
            task: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(listen(Arc::downgrade(&tier), heard, generation));
        *tier.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        tier
    }

    /// The copy of `key` (a URL's or a variant's), when the tier is
    /// coherent.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        if !self.coherent.load(Ordering::Acquire) {
            return None;
        }
        let held = self.entries.get(split_key(key).0)?;
        held.variant(&variant_id(key)?).cloned()
    }

    /// The copy a request with `headers` may use of the URL `url`, when
    /// the tier is coherent.
    pub(crate) fn get_for(&self, url: &str, headers: &HeaderMap) -> Option<Arc<Entry>> {
        if !self.coherent.load(Ordering::Acquire) {
            return None;
        }
        self.entries.get(url)?.for_request(headers).cloned()
    }

    /// Runs `f` on this thread's copy of the entry for the key line that
    /// `line` writes, taken from the tier (or confirmed against it) when
    /// the thread's copy is missing or not stamped with the tier's epoch.
    /// `headers`: the request's, which pick the variant of a URL whose
    /// responses vary.
    pub(crate) fn with_copy<R>(
        &self,
        line: impl FnOnce(&mut Vec<u8>),
        headers: &HeaderMap,
        f: impl FnOnce(&mut ThreadCopy) -> R,
    ) -> Copied<R> {
        if !self.coherent.load(Ordering::Acquire) {
            return Copied::Absent;
        }
        // Read before the tier is: a change after this makes the copy
        // checked now look old next time.
        let epoch = self.epoch.load(Ordering::SeqCst);
        at(Point::Read);
        FRONTS.with(|fronts| {
            let mut fronts = fronts.borrow_mut();
            let fronts = &mut *fronts;
            fronts.line.clear();
            if fronts.line.capacity() > 4 * MAX_LINE {
                fronts.line.shrink_to(MAX_LINE);
            }
            line(&mut fronts.line);
            let line = fronts.line.as_slice();
            if line.len() > MAX_LINE {
                return Copied::Unsuitable;
            }
            let front = front_of(&mut fronts.tiers, self);
            if let Some(copy) = front.copies.get_mut(line).and_then(|s| s.copy(headers)) {
                if copy.epoch == epoch {
                    return Copied::Answered(f(copy));
                }
            }
            match self.refresh(front, line, headers, epoch) {
                Ok(copy) => Copied::Answered(f(copy)),
                Err(Miss::Absent) => Copied::Absent,
                Err(Miss::Unsuitable) => Copied::Unsuitable,
            }
        })
    }

    /// This thread's copy for `line` checked against the tier at `epoch`:
    /// confirmed, replaced, or added; else why there is none. Out of line:
    /// a hit on a current copy never comes here.
    #[cold]
    #[inline(never)]
    fn refresh<'a>(
        &self,
        front: &'a mut Front,
        line: &[u8],
        headers: &HeaderMap,
        epoch: u64,
    ) -> Result<&'a mut ThreadCopy, Miss> {
        // Checked while a change is under way (an odd epoch): the tier may
        // be about to drop what it holds now, so the copy answers this
        // request only and is checked again on the next.
        let stamp = if epoch.is_multiple_of(2) {
            epoch
        } else {
            UNSETTLED
        };
        let shared = self.shared(line, headers);
        at(Point::Checked);
        let Some((names, id, entry)) = shared else {
            front.remove(line, headers);
            return Err(Miss::Absent);
        };
        if front
            .copies
            .get_mut(line)
            .and_then(|slot| slot.copy(headers))
            .is_some_and(|copy| Arc::ptr_eq(&entry, &copy.entry))
        {
            let copy = front
                .copies
                .get_mut(line)
                .and_then(|slot| slot.copy(headers))
                .expect("just found");
            copy.epoch = stamp;
            return Ok(copy);
        }
        if entry.body.len() > PRIVATE_BODY {
            // Not copied per thread: answered from the tier's copy.
            front.remove(line, headers);
            return Err(Miss::Unsuitable);
        }
        if front.held >= FRONT_CAPACITY {
            // A thread answering from many entries: start over.
            front.copies.clear();
            front.held = 0;
        }
        let copy = ThreadCopy::new(entry, stamp, true);
        if names.is_empty() {
            // The common case: the URL's one response, held inline.
            let old = front.copies.insert(line.into(), Slot::One(copy));
            front.held = front.held + 1 - old.map_or(0, |slot| slot.len());
            return match front.copies.get_mut(line) {
                Some(Slot::One(copy)) => Ok(copy),
                _ => Err(Miss::Absent),
            };
        }
        let slot = front
            .copies
            .entry(line.into())
            .or_insert_with(|| Slot::Varies(names.clone(), Vec::new()));
        if !matches!(slot, Slot::Varies(held, _) if *held == names) {
            front.held -= slot.len();
            *slot = Slot::Varies(names, Vec::new());
        }
        let Slot::Varies(_, copies) = slot else {
            return Err(Miss::Absent);
        };
        let at = match copies.iter().position(|(v, _)| *v == id) {
            Some(at) => {
                copies[at].1 = copy;
                at
            }
            None => {
                if copies.len() >= SLOT_VARIANTS {
                    copies.remove(0);
                    front.held -= 1;
                }
                copies.push((id, copy));
                front.held += 1;
                copies.len() - 1
            }
        };
        Ok(&mut copies[at].1)
    }

    /// The tier's copy for a key line and a request's `headers`: the
    /// names its URL varies on, the variant's id, and the entry.
    fn shared(
        &self,
        line: &[u8],
        headers: &HeaderMap,
    ) -> Option<(Vec<http::HeaderName>, [u8; 16], Arc<Entry>)> {
        if !self.coherent.load(Ordering::Acquire) {
            return None;
        }
        let held = self.entries.get(&store_key(line))?;
        let id = vary_hash(&held.names, headers);
        let entry = held.variant(&id)?.clone();
        Some((held.names.clone(), id, entry))
    }

    /// The count of changes to pass to [`keep`](Self::keep) for a copy
    /// about to be read from the store.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a copy read from the store when the count of changes was
    /// `changes`, unless a change was heard since (or the tier is not
    /// coherent). The epoch moves around the insert: a thread's copy of an
    /// older version of the entry is checked against the tier again.
    pub(crate) fn keep(&self, key: &str, entry: Entry, changes: u64) {
        let _writing = self.writing();
        if !self.coherent.load(Ordering::SeqCst) || self.changes() != changes {
            return;
        }
        let url = split_key(key).0;
        let id = if entry.vary.is_empty() {
            [0; 16]
        } else {
            entry.vary_hash
        };
        let held = match self.entries.get(url) {
            Some(held) if held.names == entry.vary => {
                let mut variants: Vec<_> = held
                    .variants
                    .iter()
                    .filter(|(v, _)| *v != id)
                    .cloned()
                    .collect();
                if variants.len() >= HELD_VARIANTS {
                    variants.remove(0);
                }
                variants.push((id, Arc::new(entry)));
                Held {
                    names: held.names.clone(),
                    variants,
                }
            }
            _ => Held {
                names: entry.vary.clone(),
                variants: vec![(id, Arc::new(entry))],
            },
        };
        self.changing(|| self.entries.insert(url.to_owned(), Arc::new(held)));
        crate::metrics::gauge(
            "redis_layers_cache_local_entries",
            self.entries.weight() as usize,
        );
    }

    /// Runs `change` on the entries with the epoch odd meanwhile (see
    /// [`LocalTier::epoch`]); even again afterwards, also if `change`
    /// panics. Called with `writing` held.
    fn changing(&self, change: impl FnOnce()) {
        struct Settle<'a>(&'a AtomicU64);
        impl Drop for Settle<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let _settle = Settle(&self.epoch);
        at(Point::Changing);
        change();
        at(Point::Changed);
    }

    /// Drops the copies of `keys` (with every variant of their URLs). The
    /// epoch moves before and after the removal: a thread's copy
    /// confirmed against the tier while it ran is checked again.
    pub(crate) fn forget(&self, keys: &[String]) {
        let _writing = self.writing();
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.changing(|| {
            for key in keys {
                self.entries.remove(split_key(key).0);
            }
        });
    }

    /// Drops every copy (as [`forget`](Self::forget) does).
    pub(crate) fn clear(&self) {
        let _writing = self.writing();
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.changing(|| self.entries.clear());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A point inside the tier's operations where a test may run other work
/// (see the interleaving test below); nothing runs there outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    /// [`LocalTier::with_copy`], the epoch read, the thread's copy not yet.
    Read,
    /// [`LocalTier::refresh`], the tier's entry read, the copy not yet
    /// stamped.
    Checked,
    /// [`LocalTier::changing`], the epoch moved (odd), the change not yet
    /// made.
    Changing,
    /// [`LocalTier::changing`], the change made, the epoch not yet settled.
    Changed,
}

/// A test's work at the [`Point`]s of one thread.
#[cfg(test)]
type Work = Box<dyn FnMut(Point)>;

#[cfg(test)]
thread_local! {
    /// The test's work at each [`Point`] on this thread.
    static AT: RefCell<Option<Work>> = const { RefCell::new(None) };
}

/// Runs the test's work at `point` (taken out meanwhile: work that reaches
/// another point runs nothing more there).
#[inline(always)]
fn at(point: Point) {
    #[cfg(test)]
    if let Some(mut work) = AT.with(|at| at.borrow_mut().take()) {
        work(point);
        AT.with(|at| *at.borrow_mut() = Some(work));
    }
    let _ = point;
}

/// Why [`LocalTier::refresh`] has no copy.
enum Miss {
    Absent,
    Unsuitable,
}

/// What [`LocalTier::with_copy`] did.
pub(crate) enum Copied<R> {
    /// Ran on this thread's copy.
    Answered(R),
    /// The tier has no copy (or is not coherent).
    Absent,
    /// The tier's copy is not kept per thread (its body is larger than
    /// [`PRIVATE_BODY`], or its key line longer than [`MAX_LINE`]): ask the
    /// tier itself.
    Unsuitable,
}

/// The stamp of a copy checked while a change was under way: odd, so never
/// the epoch of a settled tier.
const UNSETTLED: u64 = u64::MAX;

/// The most copies a thread keeps per tier.
const FRONT_CAPACITY: usize = 64;

/// Only entries with bodies up to this size are copied for each thread:
/// a thread's copies of one tier hold at most `FRONT_CAPACITY` of them,
/// about 1 MiB.
const PRIVATE_BODY: usize = 16 * 1024;

/// The most tiers a thread keeps copies for (the oldest go first, and
/// dropped tiers' copies whenever one is added).
const FRONT_TIERS: usize = 4;

thread_local! {
    static FRONTS: RefCell<Fronts> = RefCell::new(Fronts::default());
}

/// A thread's copies, per tier (with the tier's liveness), and a buffer
/// for key lines.
#[derive(Default)]
struct Fronts {
    tiers: Vec<(u64, Weak<()>, Front)>,
    line: Vec<u8>,
}

/// A thread's copies for one tier: by key line, hashed with
/// `quick_cache`'s fast hasher (randomly seeded), at most
/// [`FRONT_CAPACITY`] copies in all.
#[derive(Default)]
struct Front {
    copies: HashMap<Box<[u8]>, Slot, quick_cache::DefaultHashBuilder>,
    held: usize,
}

impl Front {
    /// Drops the copy for `line` that a request with `headers` would use.
    fn remove(&mut self, line: &[u8], headers: &HeaderMap) {
        let empty = match self.copies.get_mut(line) {
            None => return,
            Some(Slot::One(_)) => true,
            Some(Slot::Varies(names, copies)) => {
                let id = vary_hash(names, headers);
                let before = copies.len();
                copies.retain(|(v, _)| *v != id);
                self.held -= before - copies.len();
                copies.is_empty()
            }
        };
        if empty {
            if let Some(Slot::One(_)) = self.copies.remove(line) {
                self.held -= 1;
            }
        }
    }
}

/// A thread's copies for one key line: of the URL's one response, or of
/// some variants of one `Vary` list (at most [`SLOT_VARIANTS`]).
enum Slot {
    /// The URL's one response (its responses vary on nothing).
    One(ThreadCopy),
    /// Some variants of the `Vary` list named.
    Varies(Vec<http::HeaderName>, Vec<([u8; 16], ThreadCopy)>),
}

impl Slot {
    /// The copy a request with `headers` may use, if any.
    #[inline]
    fn copy(&mut self, headers: &HeaderMap) -> Option<&mut ThreadCopy> {
        match self {
            Slot::One(copy) => Some(copy),
            Slot::Varies(names, copies) => {
                let id = vary_hash(names, headers);
                copies
                    .iter_mut()
                    .find(|(v, _)| *v == id)
                    .map(|(_, copy)| copy)
            }
        }
    }

    /// How many copies it holds.
    fn len(&self) -> usize {
        match self {
            Slot::One(_) => 1,
            Slot::Varies(_, copies) => copies.len(),
        }
    }
}

/// The most variants of one URL a thread keeps copies of.
const SLOT_VARIANTS: usize = 4;

/// A thread's copies for `tier`.
fn front_of<'a>(tiers: &'a mut Vec<(u64, Weak<()>, Front)>, tier: &LocalTier) -> &'a mut Front {
    let at = match tiers.iter().position(|(id, _, _)| *id == tier.id) {
        Some(at) => at,
        None => {
            tiers.retain(|(_, alive, _)| alive.strong_count() > 0);
            if tiers.len() >= FRONT_TIERS {
                tiers.remove(0);
            }
            tiers.push((tier.id, Arc::downgrade(&tier.alive), Front::default()));
            tiers.len() - 1
        }
    };
    &mut tiers[at].2
}

/// One thread's copy of a tier's entry, with the header fields of its
/// answer prepared for one (age, ttl) pair of seconds.
pub(crate) struct ThreadCopy {
    pub(crate) entry: Arc<Entry>,
    /// The tier's epoch when this copy was last checked against it, or
    /// [`UNSETTLED`] when a change was under way then.
    epoch: u64,
    /// The (age, ttl) the prepared fields are for.
    stamp: Option<(u64, i64)>,
    headers: HeaderMap,
    body: Bytes,
}

impl ThreadCopy {
    /// A copy of `entry` checked at `epoch`. `private`: the entry is shared
    /// with other threads (the tier's), so its bytes are copied for this
    /// thread: cloning them per hit then touches no reference count
    /// another thread touches.
    pub(crate) fn new(entry: Arc<Entry>, epoch: u64, private: bool) -> Self {
        let mut headers = if private {
            let mut headers = HeaderMap::with_capacity(entry.headers.len() + 3);
            for (name, value) in &entry.headers {
                let mut own =
                    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
                own.set_sensitive(value.is_sensitive());
                headers.append(name.clone(), own);
            }
            headers
        } else {
            entry.headers.clone()
        };
        // The fields every answer sets, already there: an answer replaces
        // them instead of growing its clone of the map.
        headers.insert(AGE, HeaderValue::from_static("0"));
        headers.insert(CACHE_STATUS, HeaderValue::from_static(""));
        set_content_length(&mut headers, entry.status, entry.body.len());
        let body = if private && entry.body.len() <= PRIVATE_BODY {
            Bytes::copy_from_slice(&entry.body)
        } else {
            entry.body.clone()
        };
        ThreadCopy {
            entry,
            epoch,
            stamp: None,
            headers,
            body,
        }
    }

    /// The headers and body of an answer at `age` and `ttl` seconds: the
    /// prepared fields, set again (`Age`, and `Cache-Status` from
    /// `status`) when the seconds changed.
    pub(crate) fn answer(
        &mut self,
        age: u64,
        ttl: i64,
        age_field: impl FnOnce(u64) -> HeaderValue,
        status: impl FnOnce() -> HeaderValue,
    ) -> (HeaderMap, Bytes) {
        if self.stamp != Some((age, ttl)) {
            self.stamp_fields(age, ttl, age_field, status);
        }
        (self.headers.clone(), self.body.clone())
    }

    /// Sets the prepared fields for `age` and `ttl` (once a second).
    #[cold]
    #[inline(never)]
    fn stamp_fields(
        &mut self,
        age: u64,
        ttl: i64,
        age_field: impl FnOnce(u64) -> HeaderValue,
        status: impl FnOnce() -> HeaderValue,
    ) {
        self.headers.insert(AGE, age_field(age));
        self.headers.insert(CACHE_STATUS, status());
        self.stamp = Some((age, ttl));
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
        tier.keep("a", entry(), tier.changes());
        assert!(tier.get("a").is_none(), "not listening yet: nothing kept");
        tx.send(Heard::Ready).await.unwrap();
        settle().await;
        tier.keep("a", entry(), tier.changes());
        tier.keep("b", entry(), tier.changes());
        assert!(tier.get("a").is_some());
        tx.send(Heard::Changed(vec!["a".into()])).await.unwrap();
        settle().await;
        assert!(tier.get("a").is_none() && tier.get("b").is_some());
        // A copy read before a change is not kept after it.
        let before = tier.changes();
        tx.send(Heard::Changed(vec!["c".into()])).await.unwrap();
        settle().await;
        tier.keep("c", entry(), before);
        assert!(tier.get("c").is_none());
        // Lost: emptied and unused until ready again.
        tx.send(Heard::Lost).await.unwrap();
        settle().await;
        assert_eq!(tier.len(), 0);
        tier.keep("d", entry(), tier.changes());
        assert!(tier.get("d").is_none());
        tx.send(Heard::Ready).await.unwrap();
        settle().await;
        tier.keep("d", entry(), tier.changes());
        assert!(tier.get("d").is_some());
        // The channel gone: emptied for good.
        drop(tx);
        settle().await;
        assert!(tier.get("d").is_none());
    }

    #[tokio::test]
    async fn a_threads_copy_follows_the_tier() {
        let (tx, rx) = mpsc::channel(8);
        let tier = LocalTier::start(10, rx, Arc::new(Generation::new(Duration::from_secs(1))));
        tx.send(Heard::Ready).await.unwrap();
        settle().await;
        let key = super::super::key::store_key(b"GET\nhttp\nh\n/a");
        let line = |l: &mut Vec<u8>| l.extend_from_slice(b"GET\nhttp\nh\n/a");
        // The entry this thread's copy was taken from, if it answered.
        let ask = || match tier.with_copy(line, &HeaderMap::new(), |copy| copy.entry.clone()) {
            Copied::Answered(entry) => Ok(entry),
            Copied::Absent => Err("absent"),
            Copied::Unsuitable => Err("unsuitable"),
        };
        assert_eq!(ask().err(), Some("absent"));
        let mut first = entry();
        first.body = Bytes::from_static(b"one");
        tier.keep(&key, first, tier.changes());
        let kept = tier.get(&key).unwrap();
        assert!(Arc::ptr_eq(&ask().unwrap(), &kept));
        assert!(Arc::ptr_eq(&ask().unwrap(), &kept), "answered again");
        // Another key kept moves the epoch: the copy is confirmed.
        tier.keep("other", entry(), tier.changes());
        assert!(Arc::ptr_eq(&ask().unwrap(), &kept));
        // Forgotten: the thread's copy no longer answers.
        tier.forget(std::slice::from_ref(&key));
        assert_eq!(ask().err(), Some("absent"));
        assert_eq!(ask().err(), Some("absent"));
        // Kept anew: the copy is of the new entry.
        tier.keep(&key, entry(), tier.changes());
        let second = tier.get(&key).unwrap();
        assert!(Arc::ptr_eq(&ask().unwrap(), &second));
        // Replaced while this thread holds a copy: the copy is replaced.
        tier.keep(&key, entry(), tier.changes());
        let third = tier.get(&key).unwrap();
        assert!(!Arc::ptr_eq(&second, &third));
        assert!(Arc::ptr_eq(&ask().unwrap(), &third));
        // Checked in the middle of a change (as `forget` runs: the epoch
        // moved, the entry not yet removed): answered, but not trusted
        // once the entry is gone, before the change ends.
        tier.epoch.fetch_add(1, Ordering::SeqCst);
        assert!(Arc::ptr_eq(&ask().unwrap(), &third));
        tier.entries.remove(key.as_str());
        assert_eq!(ask().err(), Some("absent"));
        tier.epoch.fetch_add(1, Ordering::SeqCst);
        // A copy made anew in the middle of a change: the same.
        tier.keep(&key, entry(), tier.changes());
        let fourth = tier.get(&key).unwrap();
        assert!(Arc::ptr_eq(&ask().unwrap(), &fourth));
        tier.epoch.fetch_add(1, Ordering::SeqCst);
        let held = Held {
            names: vec![],
            variants: vec![([0; 16], Arc::new(entry()))],
        };
        tier.entries.insert(key.clone(), Arc::new(held));
        assert!(!Arc::ptr_eq(&ask().unwrap(), &fourth), "a new copy");
        tier.entries.remove(key.as_str());
        assert_eq!(ask().err(), Some("absent"));
        tier.epoch.fetch_add(1, Ordering::SeqCst);
        // A change that panics still ends: the epoch is settled again.
        let before = tier.epoch.load(Ordering::SeqCst);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tier.changing(|| panic!("in a change"))
        }));
        assert!(panicked.is_err());
        assert_eq!(tier.epoch.load(Ordering::SeqCst), before + 2);
        tier.keep(&key, entry(), tier.changes());
        assert!(ask().is_ok());
        // Replaced by an entry too large to copy per thread: the tier
        // answers it, not the thread's older copy.
        let mut large = entry();
        large.body = Bytes::from(vec![b'x'; PRIVATE_BODY + 1]);
        tier.keep(&key, large, tier.changes());
        assert_eq!(ask().err(), Some("unsuitable"));
        assert_eq!(ask().err(), Some("unsuitable"));
        // Cleared: nothing answers.
        tier.clear();
        assert_eq!(ask().err(), Some("absent"));
    }

    /// What a thread's read of the key answers: the body of the entry its
    /// copy holds, or none.
    fn read(tier: &LocalTier) -> Option<Bytes> {
        let line = |l: &mut Vec<u8>| l.extend_from_slice(b"GET\nh\n/model");
        match tier.with_copy(line, &HeaderMap::new(), |copy| copy.entry.body.clone()) {
            Copied::Answered(body) => Some(body),
            Copied::Absent => None,
            Copied::Unsuitable => panic!("a small entry is copied per thread"),
        }
    }

    fn entry_of(body: &'static [u8]) -> Entry {
        let mut e = entry();
        e.body = Bytes::from_static(body);
        e
    }

    /// A change to the tier the model runs against a thread's reads.
    #[derive(Clone, Copy, Debug)]
    enum Change {
        Forget,
        Clear,
        /// A new version kept (read from the store after the last change).
        Replace,
        /// Kept from a read that began before an invalidation of the key,
        /// which runs just before the keep.
        KeepLate,
    }

    /// Every interleaving of one change to the tier with a thread's read of
    /// the key, at every point of both (the read inside the change at
    /// `Changing` or `Changed`, the change inside the read at `Read` or
    /// `Checked`, or either wholly first), from every state of the thread's
    /// copy (none, current, or checked at an older epoch): a read that
    /// overlaps the change answers the old or the new state, and every read
    /// after it answers the new one. The races the epoch scheme exists for
    /// (a copy confirmed while a removal runs, a copy stamped after its
    /// entry went, an entry kept after an invalidation it predates) each
    /// fail here when the scheme's step for it is taken out.
    #[tokio::test]
    async fn every_interleaving_of_a_change_and_a_read_ends_with_the_new_state() {
        let points = [Point::Read, Point::Checked, Point::Changing, Point::Changed];
        let key = super::super::key::store_key(b"GET\nh\n/model");
        let mut runs = 0;
        for change in [
            Change::Forget,
            Change::Clear,
            Change::Replace,
            Change::KeepLate,
        ] {
            for copy in ["none", "current", "older"] {
                // None: the change wholly before (`Some(false)`) or after
                // (`Some(true)`) the read, else inside or around it at a point.
                for at_point in points.map(Some).into_iter().chain([None]) {
                    for before in [false, true] {
                        if at_point.is_some() && before {
                            continue;
                        }
                        let (tx, rx) = mpsc::channel(8);
                        let generation = Arc::new(Generation::new(Duration::from_secs(1)));
                        let tier = LocalTier::start(10, rx, generation);
                        tx.send(Heard::Ready).await.unwrap();
                        settle().await;
                        let old = Bytes::from_static(b"old");
                        tier.keep(&key, entry_of(b"old"), tier.changes());
                        match copy {
                            "none" => {}
                            "current" => assert_eq!(read(&tier), Some(old.clone())),
                            _ => {
                                assert_eq!(read(&tier), Some(old.clone()));
                                tier.keep("elsewhere", entry(), tier.changes());
                            }
                        }
                        let late = tier.changes();
                        let after: Option<Bytes> = match change {
                            Change::Forget | Change::Clear | Change::KeepLate => None,
                            Change::Replace => Some(Bytes::from_static(b"new")),
                        };
                        let t = tier.clone();
                        let key = key.clone();
                        let apply = move || match change {
                            Change::Forget => t.forget(std::slice::from_ref(&key)),
                            Change::Clear => t.clear(),
                            Change::Replace => t.keep(&key, entry_of(b"new"), t.changes()),
                            Change::KeepLate => {
                                t.forget(std::slice::from_ref(&key));
                                t.keep(&key, entry_of(b"late"), late);
                            }
                        };
                        let during = match at_point {
                            None if before => {
                                apply();
                                read(&tier)
                            }
                            None => {
                                let during = read(&tier);
                                apply();
                                during
                            }
                            Some(point @ (Point::Read | Point::Checked)) => {
                                // The change runs inside the read (or after
                                // it, when the read does not reach the point:
                                // a current copy never checks the tier).
                                let apply = std::rc::Rc::new(std::cell::Cell::new(Some(apply)));
                                let inside = apply.clone();
                                set_at(move |p| {
                                    if p == point {
                                        if let Some(apply) = inside.take() {
                                            apply();
                                        }
                                    }
                                });
                                let during = read(&tier);
                                clear_at();
                                if let Some(apply) = apply.take() {
                                    apply();
                                }
                                during
                            }
                            Some(point) => {
                                // The read runs inside the change.
                                let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
                                let record = seen.clone();
                                let t = tier.clone();
                                set_at(move |p| {
                                    if p == point {
                                        record.borrow_mut().push(read(&t));
                                    }
                                });
                                apply();
                                clear_at();
                                let seen = seen.borrow();
                                seen.first().cloned().flatten()
                            }
                        };
                        let case =
                            format!("{change:?}, copy {copy}, at {at_point:?}, before {before}");
                        assert!(
                            during == Some(old.clone()) || during == after,
                            "{case}: a read during the change answered {during:?}"
                        );
                        if at_point.is_none() && before {
                            assert_eq!(during, after, "{case}: a read after the change");
                        }
                        for _ in 0..2 {
                            assert_eq!(read(&tier), after, "{case}: a read after the change");
                        }
                        runs += 1;
                    }
                }
            }
        }
        assert_eq!(runs, 4 * 3 * 6);
    }

    fn set_at(work: impl FnMut(Point) + 'static) {
        AT.with(|at| *at.borrow_mut() = Some(Box::new(work)));
    }

    fn clear_at() {
        AT.with(|at| *at.borrow_mut() = None);
    }
}
