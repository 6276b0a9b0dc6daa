//! The [`RateLimitStore`] contract, call by call.

use super::{run_checks, Fresh};
use crate::rate_limit::{Check, Policy, RateLimitStore};

/// Checks `store` against the [`RateLimitStore`] contract: each algorithm
/// admits its quota and then refuses, with a time to retry; costs; keys
/// counted apart; a refused request counted by no policy (all or nothing
/// for one key); a changed set of policies starting afresh; and
/// [`check_all`](RateLimitStore::check_all) stopping at a refusing check,
/// with dry runs that never refuse for the others. Panics on the first
/// check it fails (see the [module](super) docs).
pub async fn rate_limit_store<S: RateLimitStore>(store: &S) {
    let ids = &Fresh::new();
    run_checks!(store, ids;
        each_algorithm_admits_its_quota_then_refuses,
        a_request_costs_what_it_says,
        keys_are_counted_apart,
        a_refused_request_is_counted_by_no_policy,
        a_changed_set_of_policies_starts_afresh,
        check_all_stops_at_a_refusal_and_dry_runs_never_refuse,
    );
}

async fn each_algorithm_admits_its_quota_then_refuses<S: RateLimitStore>(store: &S, ids: &Fresh) {
    let policies = [
        ("gcra", Policy::per_minute(3)),
        ("fixed", Policy::per_minute(3).fixed_window()),
        ("sliding", Policy::per_minute(3).sliding_window()),
    ];
    for (name, policy) in policies {
        let key = ids.key(name);
        let policy = [policy];
        for remaining in [2, 1, 0] {
            let d = store.check(&key, &policy, 1).await.unwrap();
            assert!(d.allowed, "{name}: refused within the quota");
            assert_eq!(d.policies.len(), 1, "{name}: one state per policy");
            assert_eq!(d.policies[0].remaining, remaining, "{name}: {d:?}");
        }
        let d = store.check(&key, &policy, 1).await.unwrap();
        assert!(!d.allowed, "{name}: admitted past the quota");
        assert!(!d.policies[0].admitted, "{name}: {d:?}");
        assert!(
            // (A sliding window may ask for more than one window.)
            !d.retry_after().is_zero() && d.retry_after().as_secs() <= 120,
            "{name}: retry after {:?}",
            d.retry_after()
        );
    }
}

async fn a_request_costs_what_it_says<S: RateLimitStore>(store: &S, ids: &Fresh) {
    let key = ids.key("cost");
    let policy = [Policy::per_minute(5)];
    let d = store.check(&key, &policy, 3).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.policies[0].remaining, 2);
    assert!(
        !store.check(&key, &policy, 3).await.unwrap().allowed,
        "3 of 2 left"
    );
    let d = store.check(&key, &policy, 2).await.unwrap();
    assert!(d.allowed, "the refused 3 were not counted");
    assert_eq!(d.policies[0].remaining, 0);
}

async fn keys_are_counted_apart<S: RateLimitStore>(store: &S, ids: &Fresh) {
    let policy = [Policy::per_minute(1)];
    assert!(
        store
            .check(&ids.key("a"), &policy, 1)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !store
            .check(&ids.key("a"), &policy, 1)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        store
            .check(&ids.key("b"), &policy, 1)
            .await
            .unwrap()
            .allowed,
        "another key's budget"
    );
}

async fn a_refused_request_is_counted_by_no_policy<S: RateLimitStore>(store: &S, ids: &Fresh) {
    let key = ids.key("both");
    let policies = [
        Policy::per_minute(5).named("wide"),
        Policy::per_minute(2).named("narrow"),
    ];
    for _ in 0..2 {
        assert!(store.check(&key, &policies, 1).await.unwrap().allowed);
    }
    let d = store.check(&key, &policies, 1).await.unwrap();
    assert!(!d.allowed, "the narrow policy refuses the third");
    assert_eq!(d.policies.len(), 2);
    assert!(d.policies[0].admitted && !d.policies[1].admitted, "{d:?}");
    // Had the wide policy counted the refused requests, what it has left
    // would fall with each.
    let left = d.policies[0].remaining;
    for _ in 0..3 {
        let d = store.check(&key, &policies, 1).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(
            d.policies[0].remaining, left,
            "a refused request was counted: {d:?}"
        );
    }
}

async fn a_changed_set_of_policies_starts_afresh<S: RateLimitStore>(store: &S, ids: &Fresh) {
    let key = ids.key("changed");
    let one = [Policy::per_minute(1)];
    assert!(store.check(&key, &one, 1).await.unwrap().allowed);
    assert!(!store.check(&key, &one, 1).await.unwrap().allowed);
    let two = [Policy::per_minute(2)];
    let d = store.check(&key, &two, 1).await.unwrap();
    assert!(d.allowed, "another quota is another state: {d:?}");
    assert_eq!(d.policies[0].remaining, 1);
}

async fn check_all_stops_at_a_refusal_and_dry_runs_never_refuse<S: RateLimitStore>(
    store: &S,
    ids: &Fresh,
) {
    let (spent, open) = (ids.key("spent"), ids.key("open"));
    let one = [Policy::per_minute(1)];
    let five = [Policy::per_minute(5)];
    assert!(store.check(&spent, &one, 1).await.unwrap().allowed);

    // The spent key refuses first: the open key does not count it.
    let checks = [Check::new(&spent, &one, 1), Check::new(&open, &five, 1)];
    let decisions = store.check_all(&checks).await.unwrap();
    assert!(!decisions[0].allowed, "{decisions:?}");
    let d = store.check(&open, &five, 1).await.unwrap();
    assert_eq!(
        d.policies[0].remaining, 4,
        "the refused request was counted: {d:?}"
    );

    // As a dry run, the spent key refuses nothing: the open key counts.
    let checks = [
        Check::new(&spent, &one, 1).dry_run(true),
        Check::new(&open, &five, 1),
    ];
    let decisions = store.check_all(&checks).await.unwrap();
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert!(!decisions[0].allowed, "the dry run's own verdict");
    assert!(decisions[1].allowed);
    assert_eq!(decisions[1].policies[0].remaining, 3, "{decisions:?}");
}
