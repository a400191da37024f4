//! What passes between the control-plane instances sharing one database: who is running
//! (`instances`, refreshed by each), work asked of the leader by any instance (`pending_work`),
//! and what the leader publishes for all of them (`published`: the route table, the agents'
//! reports), each publication under a rising version.

use std::time::Duration;

use sqlx::FromRow;

use crate::lease::now_sql;
use crate::{Result, Store, now_ms};

/// A running control-plane instance, as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct InstanceRow {
    /// Unique per process.
    pub id: String,
    /// The machine it runs on.
    pub host: String,
    /// Berth's version.
    pub version: String,
    /// Where its API is reached.
    pub address: String,
    pub started_at: i64,
    /// Milliseconds since it last reported, on the database's clock.
    pub silent_ms: i64,
    /// The route table version its ingress applied (and drained the endpoints it removed).
    pub routes_applied: i64,
    /// `server` (a `berth server`) or `ingress` (an ingress node, id `ingress/<name>`).
    pub kind: String,
}

/// The `instances` id of ingress node `name`.
pub fn ingress_node_instance(name: &str) -> String {
    format!("ingress/{name}")
}

/// The instance as it reports itself ([`Store::instance_alive`]).
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub id: String,
    pub host: String,
    pub version: String,
    pub address: String,
}

/// One thing asked of the leader: `kind` (`app`, `routes`, ...) about `target`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, FromRow)]
pub struct WorkItem {
    pub kind: String,
    pub target: String,
}

/// A publication: its version and body.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Publication {
    pub version: i64,
    pub term: i64,
    pub body: String,
}

impl Store {
    /// Records that `instance` runs, now (on the database's clock); inserts it the first time.
    pub async fn instance_alive(&self, instance: &InstanceInfo) -> Result<()> {
        let now = now_sql(&self.pool);
        let sql = format!(
            "INSERT INTO instances (id, host, version, address, started_at, seen_at) VALUES ($1, $2, $3, $4, $5, {now}) \
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, version = excluded.version, seen_at = {now}"
        );
        let this = self.unfenced();
        write_tx!(this, |tx| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&instance.id)
                .bind(&instance.host)
                .bind(&instance.version)
                .bind(&instance.address)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every instance that reported, the longest running first.
    pub async fn instances(&self) -> Result<Vec<InstanceRow>> {
        let now = now_sql(&self.pool);
        let sql = format!(
            "SELECT id, host, version, address, started_at, {now} - seen_at AS silent_ms, routes_applied, kind \
             FROM instances ORDER BY kind DESC, started_at, id"
        );
        with_pool!(self, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await)
    }

    /// Removes an instance's row (it stopped cleanly).
    pub async fn forget_instance(&self, id: &str) -> Result<()> {
        let this = self.unfenced();
        write_tx!(this, |tx| {
            sqlx::query("DELETE FROM instances WHERE id = $1").bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Removes the rows of instances silent for longer than `silence` (killed, never to report
    /// again under their id); returns how many.
    pub async fn forget_silent_instances(&self, silence: Duration) -> Result<u64> {
        let now = now_sql(&self.pool);
        let sql = format!("DELETE FROM instances WHERE seen_at < {now} - $1");
        let this = self.unfenced();
        write_tx!(this, |tx| {
            let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(silence.as_millis() as i64).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
    }

    /// Spends one use of the join token and registers ingress node `name` with its credential's
    /// hash.
    pub async fn join_ingress_node(
        &self,
        token_hash: &str,
        name: &str,
        credential_hash: &str,
    ) -> std::result::Result<(), crate::JoinError> {
        use crate::JoinError;
        let this = self.unfenced();
        write_tx!(this, |tx| {
            let spent = sqlx::query(
                "UPDATE join_tokens SET uses_left = uses_left - 1 \
                 WHERE token_hash = $1 AND uses_left > 0 AND expires_at > $2 AND kind = 'ingress'",
            )
            .bind(token_hash)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            if spent.rows_affected() != 1 {
                return Err(JoinError::InvalidToken);
            }
            let inserted =
                sqlx::query("INSERT INTO ingress_nodes (name, credential_hash, created_at) VALUES ($1, $2, $3)")
                    .bind(name)
                    .bind(credential_hash)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await;
            match inserted {
                Err(error) if crate::is_unique_violation(&error) => {
                    return Err(JoinError::IngressNodeTaken(name.to_string()));
                }
                other => other?,
            };
            tx.commit().await?;
            Ok(())
        })
    }

    /// The ingress node a credential belongs to.
    pub async fn ingress_node_by_credential(&self, credential_hash: &str) -> Result<Option<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT name FROM ingress_nodes WHERE credential_hash = $1")
                .bind(credential_hash)
                .fetch_optional(pool)
                .await
        })
    }

    /// Every joined ingress node's name, in order.
    pub async fn ingress_nodes(&self) -> Result<Vec<String>> {
        with_pool!(self, |pool| sqlx::query_scalar("SELECT name FROM ingress_nodes ORDER BY name")
            .fetch_all(pool)
            .await)
    }

    /// Forgets ingress node `name`: its credential stops working and the release protocol stops
    /// waiting for it. Returns whether it existed.
    pub async fn remove_ingress_node(&self, name: &str) -> Result<bool> {
        let this = self.unfenced();
        write_tx!(this, |tx| {
            let removed = sqlx::query("DELETE FROM ingress_nodes WHERE name = $1").bind(name).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM instances WHERE id = $1")
                .bind(ingress_node_instance(name))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(removed.rows_affected() == 1)
        })
    }

    /// Records that ingress node `name` runs (started at `started_at`, Unix ms) and has applied
    /// and drained route table `applied`, now (on the database's clock). Unlike a server's, the
    /// figure is set as reported, lower too: a node restarted from an older saved table has not
    /// applied the newer one.
    pub async fn ingress_node_alive(
        &self,
        name: &str,
        version: &str,
        address: &str,
        started_at: i64,
        applied: i64,
    ) -> Result<()> {
        let now = now_sql(&self.pool);
        let sql = format!(
            "INSERT INTO instances (id, host, version, address, started_at, seen_at, routes_applied, kind) \
             VALUES ($1, $2, $3, $4, $5, {now}, $6, 'ingress') \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, address = excluded.address, \
             started_at = excluded.started_at, seen_at = {now}, routes_applied = excluded.routes_applied"
        );
        let this = self.unfenced();
        write_tx!(this, |tx| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(ingress_node_instance(name))
                .bind(name)
                .bind(version)
                .bind(address)
                .bind(started_at)
                .bind(applied)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records that instance `id`'s ingress applied the route table `version` (never lowers it).
    pub async fn set_routes_applied(&self, id: &str, version: i64) -> Result<()> {
        let this = self.unfenced();
        write_tx!(this, |tx| {
            sqlx::query("UPDATE instances SET routes_applied = $2 WHERE id = $1 AND routes_applied < $2")
                .bind(id)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Asks the leader, whichever instance it is, for `kind` of work on `target`. The row stays
    /// until a leader takes it, so nothing asked is lost to a change of leader.
    pub async fn request_work(&self, kind: &str, target: &str) -> Result<()> {
        let this = self.unfenced();
        write_tx!(this, |tx| {
            sqlx::query(
                "INSERT INTO pending_work (kind, target, requested_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, target) DO NOTHING",
            )
            .bind(kind)
            .bind(target)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Takes every pending work item (the leader does it next): a read when there is none.
    pub async fn take_work(&self) -> Result<Vec<WorkItem>> {
        let any: bool = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT EXISTS (SELECT kind FROM pending_work)").fetch_one(pool).await?
        });
        if !any {
            return Ok(Vec::new());
        }
        write_tx!(self, |tx| {
            let items: Vec<WorkItem> =
                sqlx::query_as("DELETE FROM pending_work RETURNING kind, target").fetch_all(&mut *tx).await?;
            tx.commit().await?;
            Ok(items)
        })
    }

    /// Publishes `body` under `name` for every instance and returns its version (one more than
    /// the last, whoever published it). On a fenced store, only while the term holds the lease.
    pub async fn publish(&self, name: &str, body: &str) -> Result<i64> {
        let term = self.fence.as_ref().map_or(0, |fence| fence.term);
        write_tx!(self, |tx| {
            let version: i64 = sqlx::query_scalar(
                "INSERT INTO published (name, version, term, body, updated_at) VALUES ($1, 1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET version = published.version + 1, term = excluded.term, \
                 body = excluded.body, updated_at = excluded.updated_at RETURNING version",
            )
            .bind(name)
            .bind(term)
            .bind(body)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(version)
        })
    }

    /// The version of the publication `name` (0: none yet).
    pub async fn published_version(&self, name: &str) -> Result<i64> {
        let version: Option<i64> = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT version FROM published WHERE name = $1").bind(name).fetch_optional(pool).await?
        });
        Ok(version.unwrap_or(0))
    }

    /// The publication `name`, if any.
    pub async fn published(&self, name: &str) -> Result<Option<Publication>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT version, term, body FROM published WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await
        })
    }
}
