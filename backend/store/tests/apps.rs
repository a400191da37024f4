//! Reads of an app's history, on both engines.

mod common;

use berth_store::Store;
use common::spec;

#[tokio::test]
async fn an_apps_release_events_are_read_at_once_each_releases_in_order() {
    common::with_two_handles_on_each_engine(release_events_of_app).await;
}

async fn release_events_of_app((store, _): (Store, Store)) {
    let engine = store.engine();
    store.bootstrap("token hash", "password hash").await.unwrap();
    let team = store.team_id("main").await.unwrap().expect("team main");
    let app = store.create_app(team, "web", &spec("web:1")).await.unwrap();
    let other = store.create_app(team, "other", &spec("web:1")).await.unwrap();
    let second = store.create_release(app, &spec("web:2"), None).await.unwrap();
    let third = store.create_release(app, &spec("web:3"), None).await.unwrap();
    let id = |number| {
        let store = store.clone();
        async move { store.release(app, number).await.unwrap().expect("the release").id }
    };
    let (first, second, third) = (id(1).await, id(second).await, id(third).await);
    let foreign = store.release(other, 1).await.unwrap().expect("the other app's release").id;
    // Interleaved across releases and apps.
    for (release, message) in [(second, "a"), (first, "b"), (foreign, "x"), (second, "c"), (first, "d")] {
        store.add_release_event(release, "placing", message).await.unwrap();
    }
    let events = store.release_events_of_app(app).await.unwrap();
    for release in [first, second, third] {
        let one_by_one = store.release_events(release).await.unwrap();
        let at_once = events.get(&release).cloned().unwrap_or_default();
        assert_eq!(at_once, one_by_one, "{engine}: release {release}");
    }
    let messages = |release: i64| -> Vec<String> {
        events.get(&release).map(|e| e.iter().map(|e| e.message.clone()).collect()).unwrap_or_default()
    };
    assert_eq!(messages(second)[messages(second).len() - 2..], ["a", "c"], "{engine}");
    assert_eq!(messages(first)[messages(first).len() - 2..], ["b", "d"], "{engine}");
    assert!(!events.contains_key(&foreign), "{engine}: another app's events are not its");
}
