//! Leadership among the control-plane instances that share one database: one lease row, taken
//! for a time by one instance (the leader, which alone runs the orchestrator) and renewed by it.
//!
//! Every change of holder raises the lease's `term`. A store handle made with [`Store::fenced`]
//! checks, inside each of its write transactions and under the write lock every writer takes,
//! that its term still holds the lease: an old leader that was paused (or cut off) past its
//! lease, and resumes after another instance took over, writes nothing. Expiry is measured on the
//! database's clock, so the instances' clocks need not agree.

use std::sync::Arc;
use std::time::Duration;

use sqlx::FromRow;

use crate::{Pool, Result, Store};

/// The lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct LeaseRow {
    /// The instance holding it (empty: never taken).
    pub holder: String,
    /// Where the holder's API is reached (agents are sent there).
    pub address: String,
    pub term: i64,
    /// Milliseconds until it expires, on the database's clock (negative: expired).
    pub expires_in_ms: i64,
}

/// What a fenced store checks before each write.
#[derive(Debug)]
pub(crate) struct Fence {
    pub(crate) holder: String,
    pub(crate) term: i64,
}

/// The error of a write refused because the handle's term no longer holds the lease.
#[derive(Debug, thiserror::Error)]
#[error("this instance is no longer the leader (its term {term} was superseded): the write was refused")]
pub struct Fenced {
    pub term: i64,
}

/// True when `error` is a write refused by the fence ([`Store::fenced`]).
pub fn is_fenced(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Configuration(inner) if inner.is::<Fenced>())
}

/// Now, in milliseconds since the Unix epoch, on the database's clock.
pub(crate) fn now_sql(pool: &Pool) -> &'static str {
    match pool {
        Pool::Sqlite(_) => sqlite_now!(),
        Pool::Postgres(_) => postgres_now!(),
    }
}

impl Store {
    /// Takes the lease for `ttl` when it is free, expired, or `holder`'s already, and returns the
    /// term then held; `None` while another instance holds it. Only extending one's own unexpired
    /// lease keeps the term: taking an expired lease raises it even for the same holder (a name
    /// may come back in a new process while the old one still lives), and holders should be
    /// unique per process.
    pub async fn acquire_lease(&self, holder: &str, address: &str, ttl: Duration) -> Result<Option<i64>> {
        let now = now_sql(&self.pool);
        let sql = format!(
            "UPDATE leader_lease SET \
             term = CASE WHEN holder = $1 AND expires_at >= {now} THEN term ELSE term + 1 END, \
             holder = $1, address = $2, expires_at = {now} + $3 \
             WHERE id = 1 AND (holder = $1 OR expires_at < {now}) RETURNING term"
        );
        // Through the write lock, like every write: a takeover cannot interleave with a fenced
        // write that has checked its term.
        let this = self.unfenced();
        write_tx!(this, |tx| {
            let term: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(holder)
                .bind(address)
                .bind(ttl.as_millis() as i64)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(term)
        })
    }

    /// Extends `holder`'s lease of `term` by `ttl` from now; false when it was lost (another
    /// instance took it: the caller must stop acting as the leader).
    pub async fn renew_lease(&self, holder: &str, term: i64, ttl: Duration) -> Result<bool> {
        let now = now_sql(&self.pool);
        let sql = format!(
            "UPDATE leader_lease SET expires_at = {now} + $3 WHERE id = 1 AND holder = $1 AND term = $2 RETURNING term"
        );
        let this = self.unfenced();
        write_tx!(this, |tx| {
            let renewed: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(holder)
                .bind(term)
                .bind(ttl.as_millis() as i64)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(renewed.is_some())
        })
    }

    /// Gives the lease up at once (a clean shutdown), so another instance need not wait for it to
    /// expire. Nothing happens when `term` no longer holds it.
    pub async fn release_lease(&self, holder: &str, term: i64) -> Result<()> {
        let this = self.unfenced();
        write_tx!(this, |tx| {
            sqlx::query("UPDATE leader_lease SET expires_at = 0 WHERE id = 1 AND holder = $1 AND term = $2")
                .bind(holder)
                .bind(term)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The lease as it stands.
    pub async fn lease(&self) -> Result<LeaseRow> {
        let now = now_sql(&self.pool);
        let sql =
            format!("SELECT holder, address, term, expires_at - {now} AS expires_in_ms FROM leader_lease WHERE id = 1");
        with_pool!(self, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await)
    }

    /// This store, every write of which first checks that `holder` still holds the lease in
    /// `term`, and fails with [`Fenced`] (see [`is_fenced`]) without writing anything when not.
    pub fn fenced(&self, holder: &str, term: i64) -> Store {
        Store { pool: self.pool.clone(), fence: Some(Arc::new(Fence { holder: holder.to_string(), term })) }
    }

    pub(crate) fn unfenced(&self) -> Store {
        Store { pool: self.pool.clone(), fence: None }
    }
}
