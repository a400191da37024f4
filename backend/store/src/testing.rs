//! Test support (feature `testing`): the store the workspace's tests run on.
//!
//! SQLite in a scratch directory by default; with `BERTH_TEST_STORE=postgres`, a fresh database
//! on a PostgreSQL cluster the tests start themselves (`berth-testdb`). That one switch runs the
//! same suites on both engines.

use std::path::Path;

use crate::{Database, Store};

/// The store a test runs on: see the module's doc. Panics when PostgreSQL was asked for and
/// cannot be had: a run meant for PostgreSQL must not pass on SQLite unnoticed.
pub async fn store(dir: &Path) -> Store {
    if berth_testdb::postgres_requested() {
        let url = berth_testdb::fresh_database()
            .expect("starting the test PostgreSQL")
            .expect("BERTH_TEST_STORE=postgres, but the PostgreSQL binaries are not installed");
        Store::connect(&Database::Postgres(url)).await.expect("opening the PostgreSQL store")
    } else {
        Store::open(dir).await.expect("opening the SQLite store")
    }
}
