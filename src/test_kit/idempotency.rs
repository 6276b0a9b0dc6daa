//! The [`IdempotencyStore`] contract, call by call.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{run_checks, Fresh};
use crate::idempotency::layout::{self, Stored};
use crate::idempotency::record::{self, State};
use crate::idempotency::{Claim, IdempotencyStore};

const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);
const FP: [u8; 32] = [7; 32];

/// Checks `store` against the [`IdempotencyStore`] contract: a claim takes
/// a free key once and writes the in-flight record
/// ([`record::in_flight`]); extend, fence, complete and release act only
/// for the claim's holder; a completion is written once (retried, it
/// answers true without writing again), also on a key whose lease ran
/// out; leases and retention expire; fencing tokens rise in claim order.
/// Panics on the first check it fails (see the [module](super) docs).
pub async fn idempotency_store<S: IdempotencyStore>(store: &S) {
    let ids = &Fresh::new();
    run_checks!(store, ids;
        a_claim_takes_a_free_key_once,
        extend_and_release_act_only_for_the_holder,
        a_lease_runs_out,
        a_completion_replaces_the_claim_once,
        a_completion_on_a_free_key_is_written,
        a_completion_by_another_holder_writes_nothing,
        fencing_tokens_rise_in_claim_order,
        a_completed_record_is_kept_for_its_retention,
    );
}

/// A completed record of `holder`'s, answering `body`.
fn completed(holder: u64, body: &'static [u8]) -> Vec<u8> {
    let response = Stored {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from_static(body),
    };
    layout::complete(holder, &FP, &response).expect("a small record")
}

async fn taken<S: IdempotencyStore>(store: &S, key: &str) -> Bytes {
    match store.claim(key, &FP, u64::MAX, LEASE).await.unwrap() {
        Claim::Taken { record } => record,
        other => panic!("expected the key to be taken, the claim answered {other:?}"),
    }
}

async fn a_claim_takes_a_free_key_once<S: IdempotencyStore>(store: &S, ids: &Fresh) {
    let key = ids.hex(1);
    assert_eq!(
        store.claim(&key, &FP, 1, LEASE).await.unwrap(),
        Claim::Claimed
    );
    for holder in [2, 1] {
        let Claim::Taken { record } = store.claim(&key, &FP, holder, LEASE).await.unwrap() else {
            panic!("a held key was claimed again (by holder {holder})");
        };
        assert_eq!(
            &record[..],
            &record::in_flight(1, &FP)[..],
            "the claim's in-flight record"
        );
        assert_eq!(record::state(&record), Some(State::InFlight { holder: 1 }));
    }
    // Another key is another claim.
    assert_eq!(
        store.claim(&ids.hex(2), &FP, 2, LEASE).await.unwrap(),
        Claim::Claimed
    );
}

async fn extend_and_release_act_only_for_the_holder<S: IdempotencyStore>(store: &S, ids: &Fresh) {
    let key = ids.hex(3);
    assert!(
        !store.extend(&key, 1, LEASE).await.unwrap(),
        "extended a free key"
    );
    assert!(
        !store.release(&key, 1).await.unwrap(),
        "released a free key"
    );
    assert_eq!(
        store
            .claim(&key, &FP, 1, Duration::from_millis(500))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert!(
        !store.extend(&key, 2, LEASE).await.unwrap(),
        "extended by another holder"
    );
    assert!(store.extend(&key, 1, LEASE).await.unwrap());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        record::state(&taken(store, &key).await),
        Some(State::InFlight { holder: 1 }),
        "the extended lease outlived its first 500 ms"
    );
    assert!(
        !store.release(&key, 2).await.unwrap(),
        "released by another holder"
    );
    assert_eq!(
        record::state(&taken(store, &key).await),
        Some(State::InFlight { holder: 1 })
    );
    assert!(store.release(&key, 1).await.unwrap());
    assert!(!store.release(&key, 1).await.unwrap(), "released twice");
    assert_eq!(
        store.claim(&key, &FP, 3, LEASE).await.unwrap(),
        Claim::Claimed
    );
}

async fn a_lease_runs_out<S: IdempotencyStore>(store: &S, ids: &Fresh) {
    let key = ids.hex(4);
    let short = Duration::from_millis(300);
    assert_eq!(
        store.claim(&key, &FP, 1, short).await.unwrap(),
        Claim::Claimed
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store.claim(&key, &FP, 2, LEASE).await.unwrap(),
        Claim::Claimed,
        "the first claim's 300 ms lease ran out"
    );
    assert!(
        !store.extend(&key, 1, LEASE).await.unwrap(),
        "the lost claim extended"
    );
}

async fn a_completion_replaces_the_claim_once<S: IdempotencyStore>(store: &S, ids: &Fresh) {
    let key = ids.hex(5);
    assert_eq!(
        store.claim(&key, &FP, 1, LEASE).await.unwrap(),
        Claim::Claimed
    );
    let first = completed(1, b"first");
    assert!(store.complete(&key, 1, &first, DAY).await.unwrap());
    assert_eq!(&taken(store, &key).await[..], &first[..]);
    // A retried completion (its first reply lost) is true, and not written.
    assert!(
        store
            .complete(&key, 1, &completed(1, b"again"), DAY)
            .await
            .unwrap(),
        "a retried completion"
    );
    assert_eq!(&taken(store, &key).await[..], &first[..], "the retry wrote");
    // The claim is over: its holder can no longer act on the key.
    assert!(!store.extend(&key, 1, LEASE).await.unwrap());
    assert!(!store.release(&key, 1).await.unwrap());
    assert_eq!(store.fence(&key, 1, DAY).await.unwrap(), None);
    assert!(!store
        .complete(&key, 2, &completed(2, b"other"), DAY)
        .await
        .unwrap());
    assert_eq!(&taken(store, &key).await[..], &first[..]);
}

async fn a_completion_on_a_free_key_is_written<S: IdempotencyStore>(store: &S, ids: &Fresh) {
    // The claim's lease ran out and no one claimed the key since: this
    // outcome is still the key's first.
    let key = ids.hex(6);
    let record = completed(1, b"late");
    assert!(store.complete(&key, 1, &record, DAY).await.unwrap());
    assert_eq!(&taken(store, &key).await[..], &record[..]);
}

async fn a_completion_by_another_holder_writes_nothing<S: IdempotencyStore>(
    store: &S,
    ids: &Fresh,
) {
    let key = ids.hex(7);
    assert_eq!(
        store.claim(&key, &FP, 1, LEASE).await.unwrap(),
        Claim::Claimed
    );
    assert!(!store
        .complete(&key, 2, &completed(2, b"not mine"), DAY)
        .await
        .unwrap());
    assert_eq!(
        record::state(&taken(store, &key).await),
        Some(State::InFlight { holder: 1 })
    );
}

async fn fencing_tokens_rise_in_claim_order<S: IdempotencyStore>(store: &S, ids: &Fresh) {
    let key = ids.hex(8);
    assert_eq!(store.fence(&key, 1, DAY).await.unwrap(), None, "a free key");
    assert_eq!(
        store.claim(&key, &FP, 1, LEASE).await.unwrap(),
        Claim::Claimed
    );
    let t1 = store
        .fence(&key, 1, DAY)
        .await
        .unwrap()
        .expect("the holder's token");
    let t2 = store
        .fence(&key, 1, DAY)
        .await
        .unwrap()
        .expect("the holder's token");
    assert!(t2 > t1, "{t1} then {t2}");
    assert_eq!(
        store.fence(&key, 2, DAY).await.unwrap(),
        None,
        "another holder"
    );
    assert!(store.release(&key, 1).await.unwrap());
    assert_eq!(
        store.claim(&key, &FP, 2, LEASE).await.unwrap(),
        Claim::Claimed
    );
    let t3 = store
        .fence(&key, 2, DAY)
        .await
        .unwrap()
        .expect("the new holder's token");
    assert!(t3 > t2, "{t2} then {t3}: the counter went back");
    assert_eq!(
        store.fence(&key, 1, DAY).await.unwrap(),
        None,
        "the old holder"
    );
}

async fn a_completed_record_is_kept_for_its_retention<S: IdempotencyStore>(store: &S, ids: &Fresh) {
    let key = ids.hex(9);
    assert_eq!(
        store.claim(&key, &FP, 1, LEASE).await.unwrap(),
        Claim::Claimed
    );
    let short = Duration::from_millis(500);
    assert!(store
        .complete(&key, 1, &completed(1, b"brief"), short)
        .await
        .unwrap());
    assert!(matches!(
        store.claim(&key, &FP, 2, LEASE).await.unwrap(),
        Claim::Taken { .. }
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        store.claim(&key, &FP, 3, LEASE).await.unwrap(),
        Claim::Claimed,
        "the record outlived its 500 ms retention"
    );
}
