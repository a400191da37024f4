//! The change feed's rows: every write of an app, a release, a release event, a replica
//! placement or a host appends one, whichever handle (instance) wrote it; a heartbeat does not.

mod common;

use std::time::Duration;

use berth_store::{ChangeRow, Store};
use berth_wire::agent::HostCapacity;
use common::spec;

#[tokio::test]
async fn writes_of_what_pages_show_append_changes_that_every_handle_reads() {
    common::with_two_handles_on_each_engine(changes).await;
}

/// The changes after `after`, as (kind, team, app).
async fn read(store: &Store, after: i64) -> (i64, Vec<(String, Option<i64>, Option<i64>)>) {
    let rows: Vec<ChangeRow> = store.changes_after(after, 1000).await.unwrap();
    let last = rows.last().map_or(after, |r| r.id);
    (last, rows.into_iter().map(|r| (r.kind, r.team_id, r.app_id)).collect())
}

async fn changes((a, b): (Store, Store)) {
    let engine = a.engine();
    a.bootstrap("token hash", "password hash").await.unwrap();
    let team = a.team_id("main").await.unwrap().expect("team main");
    let start = b.last_change().await.unwrap();

    // An app with its first release, written through one handle, read through the other.
    let app = a.create_app(team, "web", &spec("web:1")).await.unwrap();
    let (last, rows) = read(&b, start).await;
    assert!(
        !rows.is_empty() && rows.iter().all(|row| *row == ("app".to_string(), Some(team), Some(app))),
        "{engine}: creating an app is a change of it: {rows:?}"
    );
    assert_eq!(b.last_change().await.unwrap(), last, "{engine}");

    let of_app = |rows: &[(String, Option<i64>, Option<i64>)]| {
        !rows.is_empty() && rows.iter().all(|row| *row == ("app".to_string(), Some(team), Some(app)))
    };
    let number = a.create_release(app, &spec("web:2"), None).await.unwrap();
    let release = a.release(app, number).await.unwrap().expect("the release");
    let (last, rows) = read(&b, last).await;
    assert!(of_app(&rows), "{engine}: a new release: {rows:?}");
    a.add_release_event(release.id, "placing", "1 replica").await.unwrap();
    let (last, rows) = read(&b, last).await;
    assert_eq!(rows, [("app".to_string(), Some(team), Some(app))], "{engine}: a release event");

    // Hosts: a new one is a change; the same report again (only `last_seen` moves) is not; a
    // new capacity is.
    let capacity = HostCapacity { cpu_millis: 2000, memory_mb: 1024 };
    a.register_local_host("local", "127.0.0.1", &capacity).await.unwrap();
    let (last, rows) = read(&b, last).await;
    assert_eq!(rows, [("host".to_string(), None, None)], "{engine}: a new host");
    a.register_local_host("local", "127.0.0.1", &capacity).await.unwrap();
    let (last, rows) = read(&b, last).await;
    assert_eq!(rows, [], "{engine}: a heartbeat is not a change");
    let more = HostCapacity { cpu_millis: 4000, ..capacity };
    a.register_local_host("local", "127.0.0.1", &more).await.unwrap();
    let (last, rows) = read(&b, last).await;
    assert_eq!(rows, [("host".to_string(), None, None)], "{engine}: a new capacity");

    // Deleting the app is a change of its team, rows deleted with it or not.
    a.delete_app(app).await.unwrap();
    let (_, rows) = read(&b, last).await;
    assert!(rows.contains(&("app".to_string(), Some(team), Some(app))), "{engine}: {rows:?}");

    // Old changes go, on the database's clock, but never the newest: a reader that starts later
    // starts after it, not at 0 (ids are never reused).
    let newest = b.last_change().await.unwrap();
    assert_eq!(a.forget_changes(Duration::from_secs(3600)).await.unwrap(), 0, "{engine}: nothing is an hour old");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(a.forget_changes(Duration::ZERO).await.unwrap() > 0, "{engine}");
    let left: Vec<i64> = b.changes_after(start, 1000).await.unwrap().iter().map(|row| row.id).collect();
    assert_eq!(left, [newest], "{engine}: the newest stays");
    assert_eq!(b.last_change().await.unwrap(), newest, "{engine}");
}
