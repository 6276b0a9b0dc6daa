//! The [`CacheStore`] contract, call by call.

use std::time::{Duration, SystemTime};

use super::{run_checks, Fresh};
use crate::cache::{CacheStore, Fill};
use crate::ErrorKind;

const TTL: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(5);

/// Checks `store` against the [`CacheStore`] contract: entries by key with
/// their expiry; fill leases taken by one holder at a time, renewed and
/// given up only by it; a write only for the lease's holder, giving the
/// lease up; invalidation ending an entry and its lease; a URL's variants
/// (one lease, a bounded set of places, cleared by the URL's invalidation
/// or by other names); tag purges in
/// steps, and a fill that began before a purge of its tag not stored; the
/// generation counter, when the store has one. Panics on the first check
/// it fails (see the [module](super) docs).
///
/// Unlike the other suites, this one changes what the store holds beyond
/// its own keys: checking the generation counter starts new generations,
/// which hides every cache entry stored before (as
/// [`Purger::purge_all`](crate::cache::Purger::purge_all) does). Run it
/// on a store kept for tests.
pub async fn cache_store<S: CacheStore>(store: &S) {
    let ids = &Fresh::new();
    run_checks!(store, ids;
        a_missing_entry_is_none,
        a_fill_lease_is_given_up_only_by_its_holder,
        a_store_writes_only_for_its_lease_holder_and_an_invalidation_ends_the_lease,
        a_renewed_lease_outlives_its_first_ttl,
        an_entry_expires_after_its_ttl,
        a_purge_removes_the_tagged_entries_in_steps,
        a_fill_that_began_before_a_purge_of_its_tag_is_not_stored,
        a_urls_variants_share_its_lease_and_a_bounded_set_of_places,
        generations_only_rise,
    );
}

async fn write<S: CacheStore>(store: &S, key: &str, holder: &str, ttl: Duration) -> bool {
    let fill = Fill::new(holder, SystemTime::now());
    store
        .store(key, b"x".to_vec(), ttl, &[], fill)
        .await
        .unwrap()
}

async fn a_missing_entry_is_none<S: CacheStore>(store: &S, ids: &Fresh) {
    assert_eq!(store.lookup(&ids.hex(1)).await.unwrap(), None);
    assert_eq!(store.poll(&ids.hex(1)).await.unwrap(), (None, false));
    assert!(
        !store.invalidate(&ids.hex(1)).await.unwrap(),
        "no entry to invalidate"
    );
}

async fn a_fill_lease_is_given_up_only_by_its_holder<S: CacheStore>(store: &S, ids: &Fresh) {
    let key = ids.hex(2);
    let short = Duration::from_millis(500);
    assert!(store.lease(&key, "a", short).await.unwrap().0);
    assert!(!store.lease(&key, "b", short).await.unwrap().0, "held");
    // A's lease runs out; B takes it; A's late give-up leaves B's.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        store.lease(&key, "b", LEASE).await.unwrap().0,
        "A's 500 ms lease ran out"
    );
    store.unlease(&key, "a").await.unwrap();
    assert!(store.poll(&key).await.unwrap().1, "B still holds it");
    store.unlease(&key, "b").await.unwrap();
    assert!(!store.poll(&key).await.unwrap().1, "B gave it up");
}

async fn a_store_writes_only_for_its_lease_holder_and_an_invalidation_ends_the_lease<
    S: CacheStore,
>(
    store: &S,
    ids: &Fresh,
) {
    let key = ids.hex(3);
    assert!(
        !write(store, &key, "a", TTL).await,
        "written without a lease"
    );
    assert!(store.lease(&key, "a", LEASE).await.unwrap().0);
    assert!(
        !write(store, &key, "b", TTL).await,
        "written under another's lease"
    );
    assert_eq!(store.lookup(&key).await.unwrap(), None);
    assert!(write(store, &key, "a", TTL).await, "the holder's write");
    assert_eq!(
        store.lookup(&key).await.unwrap().as_deref(),
        Some(&b"x"[..])
    );
    assert_eq!(
        store.poll(&key).await.unwrap(),
        (Some(bytes::Bytes::from_static(b"x")), false),
        "the write gave the lease up"
    );
    // Taking a lease reads the entry in the same step.
    let (taken, entry) = store.lease(&key, "c", LEASE).await.unwrap();
    assert!(taken);
    assert_eq!(entry.as_deref(), Some(&b"x"[..]));
    // An invalidation removes the entry and ends the fill's lease.
    assert!(store.invalidate(&key).await.unwrap());
    assert!(!store.invalidate(&key).await.unwrap(), "no entry left");
    assert!(
        !write(store, &key, "c", TTL).await,
        "written after an invalidation"
    );
    assert_eq!(store.lookup(&key).await.unwrap(), None);
}

/// Stores `body` as the variant `variant` (its key: the URL's then the
/// variant's hex digits) under `pointer`, at most `places` per URL, under
/// the URL's lease (as a fill that did not know the URL varies does).
async fn write_variant<S: CacheStore>(
    store: &S,
    url: &str,
    variant: &str,
    pointer: &[u8],
    places: usize,
    ttl: Duration,
) -> bool {
    let key = format!("{url}{variant}");
    assert!(store.lease(url, "v", LEASE).await.unwrap().0, "lease free");
    let fill = Fill::new("v", SystemTime::now())
        .variant(pointer, places)
        .leased(url);
    let stored = store
        .store(&key, variant.as_bytes().to_vec(), ttl, &[], fill)
        .await
        .unwrap();
    if !stored {
        store.unlease(url, "v").await.unwrap();
    }
    stored
}

async fn a_urls_variants_share_its_lease_and_a_bounded_set_of_places<S: CacheStore>(
    store: &S,
    ids: &Fresh,
) {
    let url = ids.hex(9);
    let variant = |n: u8| format!("{:032x}", u128::from(n) + 1);
    let key = |n: u8| format!("{url}{}", variant(n));
    let found = |raw: Option<bytes::Bytes>| raw.map(|b| String::from_utf8_lossy(&b).into_owned());
    // Each variant has a lease of its own.
    assert!(store.lease(&key(0), "a", LEASE).await.unwrap().0);
    assert!(!store.lease(&key(0), "b", LEASE).await.unwrap().0, "held");
    assert!(
        store.lease(&url, "b", LEASE).await.unwrap().0,
        "the URL's is another"
    );
    store.unlease(&key(0), "a").await.unwrap();
    store.unlease(&url, "b").await.unwrap();
    // Two places: two variants stored, beside the pointer.
    assert!(write_variant(store, &url, &variant(0), b"P1", 2, TTL).await);
    assert!(write_variant(store, &url, &variant(1), b"P1", 2, TTL).await);
    let pointer = found(store.lookup(&url).await.unwrap()).unwrap_or_default();
    assert!(
        pointer.len() == 2 + 40 && pointer.starts_with("P1"),
        "the pointer, then a nonce of 40 hex digits: {pointer:?}"
    );
    assert_eq!(
        found(store.lookup(&key(0)).await.unwrap()),
        Some(variant(0))
    );
    assert_eq!(
        found(store.lookup(&key(1)).await.unwrap()),
        Some(variant(1))
    );
    // No third place: not stored, and the first two stay.
    assert!(!write_variant(store, &url, &variant(2), b"P1", 2, TTL).await);
    assert_eq!(store.lookup(&key(2)).await.unwrap(), None);
    assert_eq!(
        found(store.lookup(&key(0)).await.unwrap()),
        Some(variant(0))
    );
    // A variant that has a place is stored again.
    assert!(write_variant(store, &url, &variant(1), b"P1", 2, TTL).await);
    // Invalidating the URL removes every variant and the pointer.
    assert!(store.invalidate(&url).await.unwrap());
    for n in 0..2 {
        assert_eq!(store.lookup(&key(n)).await.unwrap(), None, "variant {n}");
    }
    assert_eq!(store.lookup(&url).await.unwrap(), None);
    // Places last the entry's time and as long again: two places taken by
    // short-lived variants, a third finds room only once one ended.
    let short = Duration::from_millis(400);
    // A variant's fill is stored only from a second after the invalidation
    // (clocks may differ by that much).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(write_variant(store, &url, &variant(0), b"P1", 2, short).await);
    assert!(write_variant(store, &url, &variant(1), b"P1", 2, short).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.lookup(&key(0)).await.unwrap(), None, "expired");
    assert!(
        !write_variant(store, &url, &variant(2), b"P1", 2, TTL).await,
        "the expired variants keep their places for as long again"
    );
    assert!(
        write_variant(store, &url, &variant(0), b"P1", 2, TTL).await,
        "a variant fetched again keeps its place"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        write_variant(store, &url, &variant(2), b"P1", 2, TTL).await,
        "the other place ended"
    );
    // Other names: the variants stored under the earlier ones go.
    assert!(write_variant(store, &url, &variant(3), b"P2", 2, TTL).await);
    assert!(found(store.lookup(&url).await.unwrap()).is_some_and(|p| p.starts_with("P2")));
    assert_eq!(store.lookup(&key(0)).await.unwrap(), None);
    assert_eq!(store.lookup(&key(2)).await.unwrap(), None);
    assert_eq!(
        found(store.lookup(&key(3)).await.unwrap()),
        Some(variant(3))
    );
    // Under a variant's own lease (taken once the URL was seen to vary).
    assert!(store.lease(&key(8), "w", LEASE).await.unwrap().0);
    let fill = Fill::new("w", SystemTime::now()).variant(b"P2", 2);
    assert!(store
        .store(&key(8), b"w".to_vec(), TTL, &[], fill)
        .await
        .unwrap());
    assert_eq!(
        found(store.lookup(&key(8)).await.unwrap()).as_deref(),
        Some("w")
    );
    // The URL's own response (it varies on nothing now): the same.
    assert!(store.lease(&url, "u", LEASE).await.unwrap().0);
    assert!(write(store, &url, "u", TTL).await);
    assert_eq!(store.lookup(&key(3)).await.unwrap(), None);
    assert_eq!(
        found(store.lookup(&url).await.unwrap()).as_deref(),
        Some("x")
    );
    // A fill under a variant's lease finds no pointer now (the URL's
    // response replaced it after the lease): not stored.
    assert!(store.lease(&key(8), "w2", LEASE).await.unwrap().0);
    let fill = Fill::new("w2", SystemTime::now()).variant(b"P2", 2);
    assert!(!store
        .store(&key(8), b"w2".to_vec(), TTL, &[], fill)
        .await
        .unwrap());
    assert_eq!(
        found(store.lookup(&url).await.unwrap()).as_deref(),
        Some("x")
    );
    store.unlease(&key(8), "w2").await.unwrap();
    // Invalidating one variant leaves the others.
    assert!(write_variant(store, &url, &variant(4), b"P3", 2, TTL).await);
    assert!(write_variant(store, &url, &variant(5), b"P3", 2, TTL).await);
    assert!(store.invalidate(&key(4)).await.unwrap());
    assert_eq!(store.lookup(&key(4)).await.unwrap(), None);
    assert_eq!(
        found(store.lookup(&key(5)).await.unwrap()),
        Some(variant(5))
    );
    assert_eq!(
        store.poll(&key(5)).await.unwrap(),
        (Some(bytes::Bytes::from(variant(5))), false)
    );
    // A variant's fill that began before its URL's invalidation is not
    // stored (the invalidation could not name its lease).
    let began = SystemTime::now();
    assert!(store.lease(&key(6), "late", LEASE).await.unwrap().0);
    assert!(store.invalidate(&url).await.unwrap());
    assert_eq!(store.lookup(&key(5)).await.unwrap(), None);
    // Another fill (under the URL's lease) puts the same pointer back.
    assert!(write_variant(store, &url, &variant(9), b"P3", 2, TTL).await);
    let late = Fill::new("late", began).variant(b"P3", 2);
    assert!(
        !store
            .store(&key(6), b"old".to_vec(), TTL, &[], late)
            .await
            .unwrap(),
        "stored after the invalidation"
    );
    assert_eq!(store.lookup(&key(6)).await.unwrap(), None);
    // Nor is a variant without its pointer.
    assert!(store.lease(&key(7), "p", LEASE).await.unwrap().0);
    let bare = Fill::new("p", SystemTime::now());
    assert!(store
        .store(&key(7), b"x".to_vec(), TTL, &[], bare)
        .await
        .is_err());
    store.unlease(&key(7), "p").await.unwrap();
    store.unlease(&key(6), "late").await.unwrap();
}

async fn a_renewed_lease_outlives_its_first_ttl<S: CacheStore>(store: &S, ids: &Fresh) {
    let key = ids.hex(4);
    assert!(
        !store.renew(&key, "d", LEASE).await.unwrap(),
        "renewed a free lease"
    );
    assert!(
        store
            .lease(&key, "d", Duration::from_millis(500))
            .await
            .unwrap()
            .0
    );
    assert!(
        !store.renew(&key, "e", LEASE).await.unwrap(),
        "renewed by another"
    );
    assert!(store.renew(&key, "d", LEASE).await.unwrap());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(store.poll(&key).await.unwrap().1, "renewed");
    assert!(write(store, &key, "d", TTL).await);
    assert!(
        !store.renew(&key, "d", LEASE).await.unwrap(),
        "given up by the write"
    );
}

async fn an_entry_expires_after_its_ttl<S: CacheStore>(store: &S, ids: &Fresh) {
    let key = ids.hex(5);
    assert!(store.lease(&key, "a", LEASE).await.unwrap().0);
    assert!(write(store, &key, "a", Duration::from_millis(500)).await);
    assert!(store.lookup(&key).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        store.lookup(&key).await.unwrap(),
        None,
        "lived past its 500 ms"
    );
}

async fn a_purge_removes_the_tagged_entries_in_steps<S: CacheStore>(store: &S, ids: &Fresh) {
    let tag = ids.key("products");
    let other = ids.key("other");
    let keys: Vec<String> = (10..13).map(|n| ids.hex(n)).collect();
    for key in &keys {
        assert!(store.lease(key, "a", LEASE).await.unwrap().0);
        let fill = Fill::new("a", SystemTime::now());
        let tags = [tag.clone()];
        assert!(store
            .store(key, b"t".to_vec(), TTL, &tags, fill)
            .await
            .unwrap());
    }
    let untagged = ids.hex(13);
    assert!(store.lease(&untagged, "a", LEASE).await.unwrap().0);
    let fill = Fill::new("a", SystemTime::now());
    let tags = [other.clone()];
    assert!(store
        .store(&untagged, b"u".to_vec(), TTL, &tags, fill)
        .await
        .unwrap());

    let mut removed = store.purge_tag(&tag, 2, true).await.unwrap();
    assert!(
        !removed.is_empty() && removed.len() <= 2,
        "the first step removes 1 to 2 entries: {removed:?}"
    );
    for _ in 0..10 {
        let step = store.purge_tag(&tag, 2, false).await.unwrap();
        if step.is_empty() {
            break;
        }
        assert!(
            step.len() <= 2,
            "a step removes at most its limit: {step:?}"
        );
        removed.extend(step);
    }
    removed.sort();
    removed.dedup();
    assert_eq!(removed, keys, "the purge's steps name every tagged entry");
    for key in &keys {
        assert_eq!(store.lookup(key).await.unwrap(), None, "purged");
    }
    assert!(
        store.lookup(&untagged).await.unwrap().is_some(),
        "another tag's entry"
    );
    assert!(
        store.purge_tag(&tag, 2, true).await.unwrap().is_empty(),
        "purged twice"
    );
}

async fn a_fill_that_began_before_a_purge_of_its_tag_is_not_stored<S: CacheStore>(
    store: &S,
    ids: &Fresh,
) {
    let tag = ids.key("gated");
    let key = ids.hex(20);
    let began = SystemTime::now() - Duration::from_secs(5);
    assert!(store.lease(&key, "a", LEASE).await.unwrap().0);
    assert!(store.purge_tag(&tag, 10, true).await.unwrap().is_empty());
    let tags = [tag.clone()];
    let fill = Fill::new("a", began);
    assert!(
        !store
            .store(&key, b"old".to_vec(), TTL, &tags, fill)
            .await
            .unwrap(),
        "a fill that began 5 s before its tag's purge was stored"
    );
    assert_eq!(store.lookup(&key).await.unwrap(), None);
    // A fill that begins after the purge is stored.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let fill = Fill::new("a", SystemTime::now());
    assert!(store
        .store(&key, b"new".to_vec(), TTL, &tags, fill)
        .await
        .unwrap());
}

async fn generations_only_rise<S: CacheStore>(store: &S, _ids: &Fresh) {
    let now = store.generation().await.unwrap();
    match store.next_generation(now).await {
        Ok(next) => {
            assert!(next > now, "{now} then {next}");
            // (At least: another run may have moved it on since.)
            assert!(store.generation().await.unwrap() >= next);
            let past = store.next_generation(next + 100).await.unwrap();
            assert!(
                past > next + 100,
                "past the caller's {}: {past}",
                next + 100
            );
            let again = store.next_generation(0).await.unwrap();
            assert!(
                again > past,
                "a caller's lower number moved it back: {past} then {again}"
            );
        }
        // A store without a generation counter says so, and stays at 0.
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            assert_eq!(now, 0);
        }
    }
}
