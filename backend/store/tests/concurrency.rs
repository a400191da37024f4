//! Writers on separate connections, as the server's tasks are, and on separate pools, as two
//! servers sharing one database are: on SQLite and on PostgreSQL.

mod common;

use berth_store::{BuildInsert, NewBuild, Store};
use common::spec;

/// A transaction that reads before it writes must wait for another writer, never fail with
/// "database is locked" (a deferred SQLite transaction cannot upgrade to a writer once another
/// connection has committed since its read, and the busy timeout does not help it), nor number
/// a release or build as another did (two servers on one PostgreSQL database).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_then_write_transactions_wait_for_each_other_instead_of_failing() {
    common::with_two_handles_on_each_engine(read_then_write_race).await;
}

async fn read_then_write_race((store, other): (Store, Store)) {
    let engine = store.engine();
    store.bootstrap("token hash", "password hash").await.unwrap();
    let team = store.team_id("main").await.unwrap().expect("team main");
    let mut apps = Vec::new();
    for i in 0..4 {
        apps.push(store.create_app(team, &format!("app{i}"), &spec("web:1")).await.unwrap());
    }
    let mut tasks = Vec::new();
    for round in 0..25 {
        for &app in &apps {
            // Every other writer goes through the second store.
            let store = if (round + app) % 2 == 0 { store.clone() } else { other.clone() };
            tasks.push(tokio::spawn(async move {
                store.create_release(app, &spec("web:1"), None).await.map_err(|e| format!("create_release: {e}"))?;
                let commit = format!("{round:040}");
                let build = NewBuild {
                    app_id: app,
                    commit: &commit,
                    git_ref: "refs/heads/main",
                    pusher: "dev",
                    trigger: "push",
                    image_template: "berth/main/app:{build}",
                };
                match store.insert_build(build).await.map_err(|e| format!("insert_build: {e}"))? {
                    BuildInsert::Created(row) => {
                        store
                            .finish_build(row.id, berth_wire::builds::BuildState::Succeeded, None)
                            .await
                            .map_err(|e| format!("finish_build: {e}"))?;
                    }
                    BuildInsert::Busy(_) => {}
                }
                Ok::<(), String>(())
            }));
        }
    }
    let mut errors = Vec::new();
    for task in tasks {
        if let Err(error) = task.await.expect("the task does not panic") {
            errors.push(error);
        }
    }
    assert!(
        errors.is_empty(),
        "{engine}: {} of 100 writers failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    for &app in &apps {
        let numbers: Vec<i64> = store.releases(app).await.unwrap().iter().map(|r| r.number).collect();
        // Release 1 came with the app.
        let expected: Vec<i64> = (1..=26).rev().collect();
        assert_eq!(numbers, expected, "{engine}: release numbers are gap-free and unique");
    }
}
