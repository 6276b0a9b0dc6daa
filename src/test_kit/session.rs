//! The [`SessionStore`] contract, operation by operation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{run_checks, Fresh};
use crate::session::store::{
    DeleteOutcome, DeleteRequest, LoadOutcome, LoadRequest, Loaded, SaveOutcome, SaveRequest,
    SessionRecord, SessionStore,
};
use crate::session::SessionHandle;

const IDLE: Duration = Duration::from_secs(600);
const ABSOLUTE: Duration = Duration::from_secs(3600);

/// Checks `store` against the [`SessionStore`] contract: creating,
/// updating (field by field, never recreating), loading and sliding the
/// expiry (never past the absolute deadline, by the session's own idle
/// timeout when it has one), revisions, deletes with
/// their conditions, renewal markers, and the per-user index. Panics on
/// the first check it fails (see the [module](super) docs).
pub async fn session_store<S: SessionStore>(store: &S) {
    let ids = &Fresh::new();
    run_checks!(store, ids;
        save_creates_once_and_load_returns_fields_and_metadata,
        update_changes_only_the_given_fields_and_never_recreates,
        load_touches_only_when_due_and_never_past_the_deadline,
        large_change_sets_are_applied_whole,
        saves_count_revisions_and_delete_can_require_one,
        a_touch_moves_last_seen_and_the_expiry_together,
        a_sessions_own_idle_timeout_rules_its_expiry,
        a_renewal_leaves_a_marker_that_gives_no_session,
        delete_can_require_an_owner,
        the_user_index_lists_live_owned_sessions_and_prunes_the_rest,
    );
}

impl Fresh {
    fn handle(&self, n: u64) -> SessionHandle {
        SessionHandle::parse(&self.hex(n)).expect("32 hex digits")
    }

    fn user(&self, name: &str) -> String {
        self.key(name)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn create(data: &[(&str, &str)], user: Option<&str>) -> SaveRequest {
    let mut request = SaveRequest::create(IDLE, ABSOLUTE, Some("Agent/1".to_owned()));
    for (k, v) in data {
        request = request.change(*k, Some((*v).to_owned()));
    }
    match user {
        Some(u) => request.user(Some(u.to_owned())),
        None => request,
    }
}

fn update(data: &[(&str, Option<&str>)], clear: bool) -> SaveRequest {
    let mut request = SaveRequest::update(IDLE);
    if clear {
        request = request.clear_data();
    }
    for (k, v) in data {
        request = request.change(*k, v.map(str::to_owned));
    }
    request
}

fn load(fields: bool, touch: Duration) -> LoadRequest {
    let request = LoadRequest::new(IDLE, touch);
    if fields {
        request
    } else {
        request.touch_only()
    }
}

/// The session under `h`, which must be there.
async fn found<S: SessionStore>(store: &S, h: &SessionHandle, request: LoadRequest) -> Loaded {
    let outcome = store.load(h, &request).await.unwrap();
    outcome
        .found()
        .unwrap_or_else(|| panic!("session {h} not found"))
}

/// The fields and metadata of the session under `h`, which must be there.
async fn fields<S: SessionStore>(store: &S, h: &SessionHandle) -> SessionRecord {
    let loaded = found(store, h, load(true, IDLE)).await;
    loaded.record.expect("a load of the fields returns them")
}

/// What a load of `h` finds.
async fn outcome<S: SessionStore>(
    store: &S,
    h: &SessionHandle,
    request: LoadRequest,
) -> LoadOutcome {
    store.load(h, &request).await.unwrap()
}

async fn save_creates_once_and_load_returns_fields_and_metadata<S: SessionStore>(
    store: &S,
    ids: &Fresh,
) {
    assert_eq!(
        outcome(store, &ids.handle(1), load(true, IDLE)).await,
        LoadOutcome::Missing
    );
    let before = now_ms();
    let saved = store
        .save(
            &ids.handle(1),
            &create(&[("a", "1")], Some(ids.user("u1").as_str())),
        )
        .await
        .unwrap();
    let SaveOutcome::Saved {
        expires_in,
        deadline_ms,
        ..
    } = saved
    else {
        panic!("{saved:?}")
    };
    assert!(
        expires_in <= IDLE && expires_in >= IDLE - Duration::from_secs(1),
        "{expires_in:?}"
    );
    assert!(deadline_ms >= before + 3_599_000 && deadline_ms <= now_ms() + 3_600_000);
    assert_eq!(
        store
            .save(&ids.handle(1), &create(&[("a", "2")], None))
            .await
            .unwrap(),
        SaveOutcome::Exists
    );
    let loaded = found(store, &ids.handle(1), load(true, IDLE)).await;
    let record = loaded.record.unwrap();
    assert_eq!(record.data.get("a"), Some("1"));
    assert_eq!(record.user.as_deref(), Some(ids.user("u1").as_str()));
    assert_eq!(record.user_agent.as_deref(), Some("Agent/1"));
    assert_eq!(record.deadline_ms, deadline_ms);
    assert!(record.created_ms >= before);
    assert!(!loaded.touched, "touch interval not passed");
}

async fn update_changes_only_the_given_fields_and_never_recreates<S: SessionStore>(
    store: &S,
    ids: &Fresh,
) {
    assert_eq!(
        store
            .save(&ids.handle(2), &update(&[("a", Some("1"))], false))
            .await
            .unwrap(),
        SaveOutcome::Missing
    );
    assert_eq!(
        outcome(store, &ids.handle(2), load(true, IDLE)).await,
        LoadOutcome::Missing,
        "not created by an update"
    );
    store
        .save(
            &ids.handle(2),
            &create(&[("a", "1"), ("b", "2")], Some(ids.user("u").as_str())),
        )
        .await
        .unwrap();
    store
        .save(
            &ids.handle(2),
            &update(&[("a", Some("10")), ("b", None), ("c", Some("3"))], false),
        )
        .await
        .unwrap();
    let record = fields(store, &ids.handle(2)).await;
    let mut keys: Vec<_> = record
        .data
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["a=10", "c=3"]);

    // Clear drops data, keeps the user binding.
    store
        .save(&ids.handle(2), &update(&[("d", Some("4"))], true))
        .await
        .unwrap();
    let record = fields(store, &ids.handle(2)).await;
    assert_eq!(record.data.len(), 1);
    assert_eq!(record.data.get("d"), Some("4"));
    assert_eq!(record.user.as_deref(), Some(ids.user("u").as_str()));

    assert!(matches!(
        SessionStore::delete(store, &ids.handle(2), &DeleteRequest::any())
            .await
            .unwrap(),
        DeleteOutcome::Deleted { .. }
    ));
    assert_eq!(
        store
            .save(&ids.handle(2), &update(&[("a", Some("1"))], false))
            .await
            .unwrap(),
        SaveOutcome::Missing
    );
}

async fn load_touches_only_when_due_and_never_past_the_deadline<S: SessionStore>(
    store: &S,
    ids: &Fresh,
) {
    store
        .save(&ids.handle(3), &create(&[("a", "1")], None))
        .await
        .unwrap();
    let t1 = std::time::Instant::now();
    let first = found(store, &ids.handle(3), load(false, Duration::from_secs(60))).await;
    assert!(!first.touched);
    assert!(first.record.is_none(), "touch-only loads return no fields");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t2 = std::time::Instant::now();
    let touched = found(
        store,
        &ids.handle(3),
        load(false, Duration::from_millis(10)),
    )
    .await;
    assert!(touched.touched);
    // The expiry moved later by about the 50 ms that passed.
    assert!(t2 + touched.expires_in > t1 + first.expires_in + Duration::from_millis(30));

    // A session created with a near deadline never expires after it.
    let near = now_ms() + 1_000;
    let req = SaveRequest::renewal(IDLE, now_ms(), near, None).change("a", Some("1".into()));
    let saved = store.save(&ids.handle(4), &req).await.unwrap();
    let SaveOutcome::Saved { expires_in, .. } = saved else {
        panic!("a session with a deadline 1 s away was not saved: {saved:?}")
    };
    // (50 ms of slack: the store's clock and this test's are read apart.)
    assert!(
        expires_in <= Duration::from_millis(1_050),
        "min(now + idle, deadline): {expires_in:?}"
    );
    let l = found(store, &ids.handle(4), load(false, Duration::ZERO)).await;
    assert!(l.expires_in <= expires_in);
    assert!(!l.touched, "already at its deadline: nothing to slide");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        outcome(store, &ids.handle(4), load(true, Duration::ZERO)).await,
        LoadOutcome::Missing
    );

    // A deadline already past (a minute ago) refuses to create.
    let req =
        SaveRequest::renewal(IDLE, now_ms(), now_ms() - 60_000, None).change("a", Some("1".into()));
    assert_eq!(
        store.save(&ids.handle(5), &req).await.unwrap(),
        SaveOutcome::Missing
    );
}

async fn a_sessions_own_idle_timeout_rules_its_expiry<S: SessionStore>(store: &S, ids: &Fresh) {
    let own = Duration::from_secs(30);
    let h = ids.handle(40);
    let req = create(&[("a", "1")], None)
        .own_idle(Some(own))
        .own_persistent(Some(true));
    let SaveOutcome::Saved { expires_in, .. } = store.save(&h, &req).await.unwrap() else {
        panic!("not created")
    };
    assert!(
        expires_in <= own,
        "created with its own idle timeout: {expires_in:?}"
    );
    let record = fields(store, &h).await;
    assert_eq!((record.idle, record.persistent), (Some(own), Some(true)));
    // Touches (of the header alone, and with the fields) slide by it, not
    // by the request's idle timeout.
    for fields in [false, true] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let l = found(store, &h, load(fields, Duration::from_millis(5))).await;
        assert!(l.touched, "a touch was due");
        assert!(l.expires_in <= own, "fields {fields}: {:?}", l.expires_in);
        assert!(
            l.expires_in > own - Duration::from_secs(2),
            "{:?}",
            l.expires_in
        );
    }
    // A save without a change of its own keeps both.
    let SaveOutcome::Saved { expires_in, .. } = store
        .save(&h, &update(&[("b", Some("2"))], false))
        .await
        .unwrap()
    else {
        panic!("not saved")
    };
    assert!(expires_in <= own, "{expires_in:?}");
    let record = fields(store, &h).await;
    assert_eq!((record.idle, record.persistent), (Some(own), Some(true)));
    // Dropped: the request's idle timeout again.
    let req = update(&[], false).own_idle(None).own_persistent(None);
    let SaveOutcome::Saved { expires_in, .. } = store.save(&h, &req).await.unwrap() else {
        panic!("not saved")
    };
    assert!(expires_in > own && expires_in <= IDLE, "{expires_in:?}");
    let record = fields(store, &h).await;
    assert_eq!((record.idle, record.persistent), (None, None));
    assert_eq!(record.data.get("b"), Some("2"));
}

async fn large_change_sets_are_applied_whole<S: SessionStore>(store: &S, ids: &Fresh) {
    let keys: Vec<String> = (0..1200).map(|i| format!("k{i}")).collect();
    let mut create_req = create(&[], None);
    for k in &keys {
        create_req = create_req.change(k.clone(), Some("1".to_owned()));
    }
    store.save(&ids.handle(7), &create_req).await.unwrap();
    // Remove the even keys, change the odd ones.
    let mut change = update(&[], false);
    for (i, k) in keys.iter().enumerate() {
        change = change.change(k.clone(), (i % 2 == 1).then(|| "2".to_owned()));
    }
    store.save(&ids.handle(7), &change).await.unwrap();
    let record = fields(store, &ids.handle(7)).await;
    assert_eq!(record.data.len(), 600);
    assert!(record
        .data
        .iter()
        .all(|(k, v)| v == "2" && k[1..].parse::<u32>().unwrap() % 2 == 1));
    // Clear plus new fields in one save.
    let fresh = update(&[("only", Some("3"))], true).user(Some(ids.user("zoe")));
    store.save(&ids.handle(7), &fresh).await.unwrap();
    let record = fields(store, &ids.handle(7)).await;
    assert_eq!(record.data.len(), 1);
    assert_eq!(record.user.as_deref(), Some(ids.user("zoe").as_str()));
}

async fn saves_count_revisions_and_delete_can_require_one<S: SessionStore>(store: &S, ids: &Fresh) {
    store
        .save(
            &ids.handle(8),
            &create(&[("a", "1")], Some(ids.user("hal").as_str())),
        )
        .await
        .unwrap();
    let first = fields(store, &ids.handle(8)).await;
    assert_eq!(first.revision, 1);
    // A touch is not a save.
    let touched = found(store, &ids.handle(8), load(true, Duration::ZERO)).await;
    assert_eq!(touched.record.unwrap().revision, 1);
    store
        .save(&ids.handle(8), &update(&[("b", Some("2"))], false))
        .await
        .unwrap();
    assert_eq!(
        SessionStore::delete(store, &ids.handle(8), &DeleteRequest::any().at_revision(1))
            .await
            .unwrap(),
        DeleteOutcome::Changed,
        "saved since revision 1"
    );
    assert!(outcome(store, &ids.handle(8), load(false, IDLE))
        .await
        .found()
        .is_some());
    assert_eq!(
        SessionStore::delete(
            store,
            &ids.handle(8),
            &DeleteRequest::any()
                .at_revision(2)
                .owned_by(ids.user("hal"))
        )
        .await
        .unwrap(),
        DeleteOutcome::deleted(Some(ids.user("hal")))
    );
    assert_eq!(
        SessionStore::delete(store, &ids.handle(8), &DeleteRequest::any().at_revision(2))
            .await
            .unwrap(),
        DeleteOutcome::Missing
    );
}

async fn a_touch_moves_last_seen_and_the_expiry_together<S: SessionStore>(store: &S, ids: &Fresh) {
    store
        .save(&ids.handle(9), &create(&[("a", "1")], None))
        .await
        .unwrap();
    let before = found(store, &ids.handle(9), load(true, IDLE)).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let after = found(store, &ids.handle(9), load(true, Duration::ZERO)).await;
    assert!(after.touched);
    let (b, a) = (before.record.unwrap(), after.record.unwrap());
    assert!(
        a.last_seen_ms >= b.last_seen_ms + 25,
        "{} -> {}",
        b.last_seen_ms,
        a.last_seen_ms
    );
    assert_eq!(a.data, b.data);
    assert_eq!((a.created_ms, a.deadline_ms), (b.created_ms, b.deadline_ms));
    // And what a touch wrote reads back.
    let again = found(store, &ids.handle(9), load(true, IDLE)).await;
    assert_eq!(again.record.unwrap().last_seen_ms, a.last_seen_ms);
}

async fn a_renewal_leaves_a_marker_that_gives_no_session<S: SessionStore>(store: &S, ids: &Fresh) {
    store
        .save(
            &ids.handle(30),
            &create(&[("a", "1")], Some(ids.user("jo").as_str())),
        )
        .await
        .unwrap();
    store
        .save(
            &ids.handle(31),
            &create(&[("a", "1")], Some(ids.user("jo").as_str())),
        )
        .await
        .unwrap();
    for n in [30, 31] {
        store
            .index_add(&ids.user("jo"), &ids.handle(n), now_ms() + 3_600_000)
            .await
            .unwrap();
    }
    assert_eq!(
        SessionStore::delete(
            store,
            &ids.handle(30),
            &DeleteRequest::renewal(1, ids.handle(31))
        )
        .await
        .unwrap(),
        DeleteOutcome::deleted(Some(ids.user("jo")))
    );
    // The old handle: no session, but "renewed", not "missing".
    assert_eq!(
        outcome(store, &ids.handle(30), load(true, IDLE)).await,
        LoadOutcome::Renewed
    );
    assert_eq!(
        outcome(store, &ids.handle(30), load(false, Duration::ZERO)).await,
        LoadOutcome::Renewed
    );
    assert_eq!(
        store
            .save(&ids.handle(30), &update(&[("b", Some("2"))], false))
            .await
            .unwrap(),
        SaveOutcome::Renewed
    );
    assert_eq!(
        store
            .save(&ids.handle(30), &create(&[("b", "2")], None))
            .await
            .unwrap(),
        SaveOutcome::Exists,
        "a fresh id never lands on a marker"
    );
    // A delete finds the successor the marker names (a logout with the
    // old id ends it too); a renewal of the marker finds it renewed.
    assert_eq!(
        SessionStore::delete(store, &ids.handle(30), &DeleteRequest::any())
            .await
            .unwrap(),
        DeleteOutcome::renewed(Some(ids.handle(31)))
    );
    assert_eq!(
        SessionStore::delete(
            store,
            &ids.handle(30),
            &DeleteRequest::renewal(1, ids.handle(32))
        )
        .await
        .unwrap(),
        DeleteOutcome::renewed(Some(ids.handle(31)))
    );
    let listed: Vec<_> = store
        .list(&ids.user("jo"))
        .await
        .unwrap()
        .iter()
        .map(|s| s.handle)
        .collect();
    assert_eq!(
        listed,
        vec![ids.handle(31)],
        "the successor is listed, the marker is not"
    );
    // The successor itself is untouched.
    assert!(outcome(store, &ids.handle(31), load(true, IDLE))
        .await
        .found()
        .is_some());
}

async fn delete_can_require_an_owner<S: SessionStore>(store: &S, ids: &Fresh) {
    store
        .save(
            &ids.handle(6),
            &create(&[("a", "1")], Some(ids.user("alice").as_str())),
        )
        .await
        .unwrap();
    assert_eq!(
        SessionStore::delete(
            store,
            &ids.handle(6),
            &DeleteRequest::any().owned_by(ids.user("bob"))
        )
        .await
        .unwrap(),
        DeleteOutcome::NotOwned
    );
    assert!(outcome(store, &ids.handle(6), load(false, IDLE))
        .await
        .found()
        .is_some());
    assert_eq!(
        SessionStore::delete(
            store,
            &ids.handle(6),
            &DeleteRequest::any().owned_by(ids.user("alice"))
        )
        .await
        .unwrap(),
        DeleteOutcome::deleted(Some(ids.user("alice")))
    );
    assert_eq!(
        SessionStore::delete(store, &ids.handle(6), &DeleteRequest::any())
            .await
            .unwrap(),
        DeleteOutcome::Missing
    );
}

async fn the_user_index_lists_live_owned_sessions_and_prunes_the_rest<S: SessionStore>(
    store: &S,
    ids: &Fresh,
) {
    for n in 10..13 {
        store
            .save(
                &ids.handle(n),
                &create(&[], Some(ids.user("erin").as_str())),
            )
            .await
            .unwrap();
        store
            .index_add(&ids.user("erin"), &ids.handle(n), now_ms() + 3_600_000)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // An entry whose deadline passed (its session still there), one whose
    // session is gone, and one whose session belongs to someone else.
    store
        .save(
            &ids.handle(20),
            &create(&[], Some(ids.user("erin").as_str())),
        )
        .await
        .unwrap();
    store
        .index_add(&ids.user("erin"), &ids.handle(20), now_ms() - 60_000)
        .await
        .unwrap();
    store
        .index_add(&ids.user("erin"), &ids.handle(21), now_ms() + 3_600_000)
        .await
        .unwrap();
    store
        .save(
            &ids.handle(22),
            &create(&[], Some(ids.user("frank").as_str())),
        )
        .await
        .unwrap();
    store
        .index_add(&ids.user("erin"), &ids.handle(22), now_ms() + 3_600_000)
        .await
        .unwrap();

    let list = store.list(&ids.user("erin")).await.unwrap();
    let handles: Vec<_> = list.iter().map(|s| s.handle).collect();
    assert_eq!(
        handles,
        vec![ids.handle(10), ids.handle(11), ids.handle(12)],
        "the live, owned, indexed sessions, oldest first"
    );
    assert!(list
        .iter()
        .all(|s| s.user_agent.as_deref() == Some("Agent/1")));

    store
        .index_remove(&ids.user("erin"), &ids.handle(11))
        .await
        .unwrap();
    assert_eq!(store.list(&ids.user("erin")).await.unwrap().len(), 2);
    assert!(store.list(&ids.user("nobody")).await.unwrap().is_empty());
}
