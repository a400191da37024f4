//! What the store's suites share.

use std::collections::BTreeMap;

use berth_wire::AppSpec;

/// A plain spec of `image`: one replica, no limits.
#[allow(dead_code, reason = "not every suite deploys")]
pub fn spec(image: &str) -> AppSpec {
    AppSpec {
        image: image.into(),
        port: 8080,
        replicas: 1,
        env: BTreeMap::new(),
        secrets: Default::default(),
        health_path: None,
        cpu_millis: None,
        memory_mb: None,
        constraints: BTreeMap::new(),
        privileges: Default::default(),
        protocol: Default::default(),
    }
}

/// Runs `test` with two handles on one database (two pools, as two servers sharing it have):
/// first SQLite, then PostgreSQL (skipped, with a line on stderr, when it is not installed).
pub async fn with_two_handles_on_each_engine<Test, Run>(test: Test)
where
    Test: Fn((berth_store::Store, berth_store::Store)) -> Run,
    Run: std::future::Future<Output = ()>,
{
    use berth_store::{Database, Store};
    let dir = tempfile::tempdir().expect("a scratch directory");
    test((Store::open(dir.path()).await.unwrap(), Store::open(dir.path()).await.unwrap())).await;
    let Some(url) = berth_testdb::fresh_database().expect("starting the test PostgreSQL") else { return };
    let database = Database::Postgres(url);
    test((Store::connect(&database).await.unwrap(), Store::connect(&database).await.unwrap())).await;
}
