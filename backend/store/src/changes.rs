//! The change feed's rows (`changes`): appended by the database's triggers in every transaction
//! that writes an app, a release, a release event, a replica placement or a host (see
//! `migrations/*/0013_changes.sql`), read by every instance after the last id it saw.

use sqlx::FromRow;

use crate::{Result, Store};

/// One write of something a live page shows.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ChangeRow {
    pub id: i64,
    /// `app` (the app, a release of it, an event of one, a replica) or `host`.
    pub kind: String,
    /// The app's team; none for a host, or for a row of an app deleted in the same transaction.
    pub team_id: Option<i64>,
    pub app_id: Option<i64>,
}

impl Store {
    /// Up to `limit` changes with an id above `after`, oldest first.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<ChangeRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT id, kind, team_id, app_id FROM changes WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        })
    }

    /// The id of the newest change (0: none), where a reader that wants only what comes next
    /// starts. [`Store::forget_changes`] always keeps the newest, so this is the newest ever
    /// written, not 0 after a quiet hour (ids are never reused).
    pub async fn last_change(&self) -> Result<i64> {
        let last: Option<i64> =
            with_pool!(self, |pool| sqlx::query_scalar("SELECT MAX(id) FROM changes").fetch_one(pool).await?);
        Ok(last.unwrap_or(0))
    }

    /// Deletes the changes older than `keep` on the database's clock, except the newest; returns
    /// how many. Outside the write lock: nothing else deletes these rows, and inserting new
    /// ones does not conflict with deleting old ones.
    pub async fn forget_changes(&self, keep: std::time::Duration) -> Result<u64> {
        let keep = keep.as_millis() as i64;
        // The cutoff in a subquery, evaluated once: compared with the clock function itself,
        // PostgreSQL could not use the index on `at`.
        let sql = match self.pool {
            crate::Pool::Sqlite(_) => concat!(
                "DELETE FROM changes WHERE at < (SELECT ",
                sqlite_now!(),
                " - $1) AND id < (SELECT MAX(id) FROM changes)"
            ),
            crate::Pool::Postgres(_) => concat!(
                "DELETE FROM changes WHERE at < (SELECT ",
                postgres_now!(),
                " - $1) AND id < (SELECT MAX(id) FROM changes)"
            ),
        };
        let deleted = with_pool!(self, |pool| sqlx::query(sql).bind(keep).execute(pool).await?.rows_affected());
        Ok(deleted)
    }
}
