//! The `SessionStore` contract, operation by operation (each Redis
//! operation is one Lua script, so this tests every script on its own),
//! against both backends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_layers::session::store::{
    DeleteOutcome, DeleteRequest, LoadOutcome, LoadRequest, SaveOutcome, SaveRequest, SessionStore,
};
use redis_layers::session::SessionHandle;

use crate::support::{both_backends, TestBackend};

const IDLE: Duration = Duration::from_secs(600);
const ABSOLUTE: Duration = Duration::from_secs(3600);

fn handle(n: u8) -> SessionHandle {
    SessionHandle::parse(&format!("{:032x}", u128::from(n) * 0x1234_5678_9abc_def1)).unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
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

both_backends! { TestBackend::new;
    save_creates_once_and_load_returns_fields_and_metadata => |fx| {
        let store = &fx.backend;
        assert_eq!(store.load(&handle(1), &load(true, IDLE)).await.unwrap(), LoadOutcome::Missing);
        let before = now_ms();
        let saved = store.save(&handle(1), &create(&[("a", "1")], Some("u1"))).await.unwrap();
        let SaveOutcome::Saved { expires_in, deadline_ms, .. } = saved else { panic!("{saved:?}") };
        assert!(expires_in <= IDLE && expires_in >= IDLE - Duration::from_secs(1), "{expires_in:?}");
        assert!(deadline_ms >= before + 3_599_000 && deadline_ms <= now_ms() + 3_600_000);
        assert_eq!(
            store.save(&handle(1), &create(&[("a", "2")], None)).await.unwrap(),
            SaveOutcome::Exists
        );
        let loaded = store.load(&handle(1), &load(true, IDLE)).await.unwrap().found().unwrap();
        let record = loaded.record.unwrap();
        assert_eq!(record.data.get("a"), Some("1"));
        assert_eq!(record.user.as_deref(), Some("u1"));
        assert_eq!(record.user_agent.as_deref(), Some("Agent/1"));
        assert_eq!(record.deadline_ms, deadline_ms);
        assert!(record.created_ms >= before);
        assert!(!loaded.touched, "touch interval not passed");
    }

    update_changes_only_the_given_fields_and_never_recreates => |fx| {
        let store = &fx.backend;
        assert_eq!(store.save(&handle(2), &update(&[("a", Some("1"))], false)).await.unwrap(), SaveOutcome::Missing);
        assert_eq!(store.load(&handle(2), &load(true, IDLE)).await.unwrap(), LoadOutcome::Missing, "not created by an update");
        store.save(&handle(2), &create(&[("a", "1"), ("b", "2")], Some("u"))).await.unwrap();
        store.save(&handle(2), &update(&[("a", Some("10")), ("b", None), ("c", Some("3"))], false)).await.unwrap();
        let record = store.load(&handle(2), &load(true, IDLE)).await.unwrap().found().unwrap().record.unwrap();
        let mut keys: Vec<_> = record.data.iter().map(|(k, v)| format!("{k}={v}")).collect();
        keys.sort();
        assert_eq!(keys, vec!["a=10", "c=3"]);

        // Clear drops data, keeps the user binding.
        store.save(&handle(2), &update(&[("d", Some("4"))], true)).await.unwrap();
        let record = store.load(&handle(2), &load(true, IDLE)).await.unwrap().found().unwrap().record.unwrap();
        assert_eq!(record.data.len(), 1);
        assert_eq!(record.data.get("d"), Some("4"));
        assert_eq!(record.user.as_deref(), Some("u"));

        assert!(matches!(SessionStore::delete(store, &handle(2), &DeleteRequest::any()).await.unwrap(), DeleteOutcome::Deleted { .. }));
        assert_eq!(store.save(&handle(2), &update(&[("a", Some("1"))], false)).await.unwrap(), SaveOutcome::Missing);
    }

    load_touches_only_when_due_and_never_past_the_deadline => |fx| {
        let store = &fx.backend;
        store.save(&handle(3), &create(&[("a", "1")], None)).await.unwrap();
        let t1 = std::time::Instant::now();
        let first = store.load(&handle(3), &load(false, Duration::from_secs(60))).await.unwrap().found().unwrap();
        assert!(!first.touched);
        assert!(first.record.is_none(), "touch-only loads return no fields");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t2 = std::time::Instant::now();
        let touched = store.load(&handle(3), &load(false, Duration::from_millis(10))).await.unwrap().found().unwrap();
        assert!(touched.touched);
        // The expiry moved later by about the 50 ms that passed.
        assert!(t2 + touched.expires_in > t1 + first.expires_in + Duration::from_millis(30));

        // A session created with a near deadline never expires after it.
        let near = now_ms() + 300;
        let req = SaveRequest::renewal(IDLE, now_ms(), near, None).change("a", Some("1".into()));
        let SaveOutcome::Saved { expires_in, .. } = store.save(&handle(4), &req).await.unwrap() else { panic!() };
        // (5 ms of slack: the memory clock and this test's clock are read apart.)
        assert!(expires_in <= Duration::from_millis(305), "min(now + idle, deadline): {expires_in:?}");
        let l = store.load(&handle(4), &load(false, Duration::ZERO)).await.unwrap().found().unwrap();
        assert!(l.expires_in <= expires_in);
        assert!(!l.touched, "already at its deadline: nothing to slide");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.load(&handle(4), &load(true, Duration::ZERO)).await.unwrap(), LoadOutcome::Missing);

        // A deadline already past refuses to create.
        let req = SaveRequest::renewal(IDLE, now_ms(), now_ms() - 1, None).change("a", Some("1".into()));
        assert_eq!(store.save(&handle(5), &req).await.unwrap(), SaveOutcome::Missing);
    }

    large_change_sets_are_applied_whole => |fx| {
        let store = &fx.backend;
        let keys: Vec<String> = (0..1200).map(|i| format!("k{i}")).collect();
        let mut create_req = create(&[], None);
        for k in &keys {
            create_req = create_req.change(k.clone(), Some("1".to_owned()));
        }
        store.save(&handle(7), &create_req).await.unwrap();
        // Remove the even keys, change the odd ones.
        let mut change = update(&[], false);
        for (i, k) in keys.iter().enumerate() {
            change = change.change(k.clone(), (i % 2 == 1).then(|| "2".to_owned()));
        }
        store.save(&handle(7), &change).await.unwrap();
        let record = store.load(&handle(7), &load(true, IDLE)).await.unwrap().found().unwrap().record.unwrap();
        assert_eq!(record.data.len(), 600);
        assert!(record.data.iter().all(|(k, v)| v == "2" && k[1..].parse::<u32>().unwrap() % 2 == 1));
        // Clear plus new fields in one save.
        let fresh = update(&[("only", Some("3"))], true).user(Some("zoe".to_owned()));
        store.save(&handle(7), &fresh).await.unwrap();
        let record = store.load(&handle(7), &load(true, IDLE)).await.unwrap().found().unwrap().record.unwrap();
        assert_eq!(record.data.len(), 1);
        assert_eq!(record.user.as_deref(), Some("zoe"));
    }

    saves_count_revisions_and_delete_can_require_one => |fx| {
        let store = &fx.backend;
        store.save(&handle(8), &create(&[("a", "1")], Some("hal"))).await.unwrap();
        let first = store.load(&handle(8), &load(true, IDLE)).await.unwrap().found().unwrap().record.unwrap();
        assert_eq!(first.revision, 1);
        // A touch is not a save.
        let touched = store.load(&handle(8), &load(true, Duration::ZERO)).await.unwrap().found().unwrap();
        assert_eq!(touched.record.unwrap().revision, 1);
        store.save(&handle(8), &update(&[("b", Some("2"))], false)).await.unwrap();
        assert_eq!(
            SessionStore::delete(store, &handle(8), &DeleteRequest::any().at_revision(1)).await.unwrap(),
            DeleteOutcome::Changed,
            "saved since revision 1"
        );
        assert!(store.load(&handle(8), &load(false, IDLE)).await.unwrap().found().is_some());
        assert_eq!(
            SessionStore::delete(store, &handle(8), &DeleteRequest::any().at_revision(2).owned_by("hal"))
                .await
                .unwrap(),
            DeleteOutcome::deleted(Some("hal".to_owned()))
        );
        assert_eq!(
            SessionStore::delete(store, &handle(8), &DeleteRequest::any().at_revision(2)).await.unwrap(),
            DeleteOutcome::Missing
        );
    }

    a_touch_moves_last_seen_and_the_expiry_together => |fx| {
        let store = &fx.backend;
        store.save(&handle(9), &create(&[("a", "1")], None)).await.unwrap();
        let before = store.load(&handle(9), &load(true, IDLE)).await.unwrap().found().unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let after = store.load(&handle(9), &load(true, Duration::ZERO)).await.unwrap().found().unwrap();
        assert!(after.touched);
        let (b, a) = (before.record.unwrap(), after.record.unwrap());
        assert!(a.last_seen_ms >= b.last_seen_ms + 25, "{} -> {}", b.last_seen_ms, a.last_seen_ms);
        assert_eq!(a.data, b.data);
        assert_eq!((a.created_ms, a.deadline_ms), (b.created_ms, b.deadline_ms));
        // And what a touch wrote reads back.
        let again = store.load(&handle(9), &load(true, IDLE)).await.unwrap().found().unwrap();
        assert_eq!(again.record.unwrap().last_seen_ms, a.last_seen_ms);
    }

    a_renewal_leaves_a_marker_that_gives_no_session => |fx| {
        let store = &fx.backend;
        store.save(&handle(30), &create(&[("a", "1")], Some("jo"))).await.unwrap();
        store.save(&handle(31), &create(&[("a", "1")], Some("jo"))).await.unwrap();
        assert_eq!(
            SessionStore::delete(store, &handle(30), &DeleteRequest::renewal(1, handle(31))).await.unwrap(),
            DeleteOutcome::deleted(Some("jo".to_owned()))
        );
        // The old handle: no session, but "renewed", not "missing".
        assert_eq!(store.load(&handle(30), &load(true, IDLE)).await.unwrap(), LoadOutcome::Renewed);
        assert_eq!(store.load(&handle(30), &load(false, Duration::ZERO)).await.unwrap(), LoadOutcome::Renewed);
        assert_eq!(
            store.save(&handle(30), &update(&[("b", Some("2"))], false)).await.unwrap(),
            SaveOutcome::Renewed
        );
        assert_eq!(
            store.save(&handle(30), &create(&[("b", "2")], None)).await.unwrap(),
            SaveOutcome::Exists,
            "a fresh id never lands on a marker"
        );
        // A delete finds the successor the marker names (a logout with the
        // old id ends it too); a renewal of the marker finds it renewed.
        assert_eq!(
            SessionStore::delete(store, &handle(30), &DeleteRequest::any()).await.unwrap(),
            DeleteOutcome::renewed(Some(handle(31)))
        );
        assert_eq!(
            SessionStore::delete(store, &handle(30), &DeleteRequest::renewal(1, handle(32))).await.unwrap(),
            DeleteOutcome::renewed(Some(handle(31)))
        );
        assert!(store.list("jo").await.unwrap().is_empty(), "the marker is no listed session");
        // The successor itself is untouched.
        assert!(store.load(&handle(31), &load(true, IDLE)).await.unwrap().found().is_some());
    }

    delete_can_require_an_owner => |fx| {
        let store = &fx.backend;
        store.save(&handle(6), &create(&[("a", "1")], Some("alice"))).await.unwrap();
        assert_eq!(
            SessionStore::delete(store, &handle(6), &DeleteRequest::any().owned_by("bob")).await.unwrap(),
            DeleteOutcome::NotOwned
        );
        assert!(store.load(&handle(6), &load(false, IDLE)).await.unwrap().found().is_some());
        assert_eq!(
            SessionStore::delete(store, &handle(6), &DeleteRequest::any().owned_by("alice")).await.unwrap(),
            DeleteOutcome::deleted(Some("alice".to_owned()))
        );
        assert_eq!(SessionStore::delete(store, &handle(6), &DeleteRequest::any()).await.unwrap(), DeleteOutcome::Missing);
    }

    the_user_index_lists_live_owned_sessions_and_prunes_the_rest => |fx| {
        let store = &fx.backend;
        for n in 10..13 {
            store.save(&handle(n), &create(&[], Some("erin"))).await.unwrap();
            store.index_add("erin", &handle(n), now_ms() + 3_600_000).await.unwrap();
        }
        // An entry whose deadline passed, one whose session is gone, and one
        // whose session belongs to someone else.
        store.index_add("erin", &handle(20), now_ms() - 1).await.unwrap();
        store.index_add("erin", &handle(21), now_ms() + 3_600_000).await.unwrap();
        store.save(&handle(22), &create(&[], Some("frank"))).await.unwrap();
        store.index_add("erin", &handle(22), now_ms() + 3_600_000).await.unwrap();

        let list = store.list("erin").await.unwrap();
        let mut handles: Vec<_> = list.iter().map(|s| s.handle).collect();
        handles.sort();
        let mut expected = vec![handle(10), handle(11), handle(12)];
        expected.sort();
        assert_eq!(handles, expected);
        assert!(list.iter().all(|s| s.user_agent.as_deref() == Some("Agent/1")));

        store.index_remove("erin", &handle(11)).await.unwrap();
        assert_eq!(store.list("erin").await.unwrap().len(), 2);
        assert!(store.list("nobody").await.unwrap().is_empty());
    }
}
