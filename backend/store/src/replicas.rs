//! Replicas: where each desired container of a release is placed.

use std::collections::BTreeMap;

use berth_wire::AppSpec;
use berth_wire::agent::DesiredContainer;
use sqlx::FromRow;
use sqlx::types::Json;

use crate::{Result, Store, now_ms};

/// Deletes `replica_id` in the write transaction `tx`; rows waiting on it as their replacement
/// wait on `successor` instead. (This and `insert_replacement!` are macros so that they are
/// compiled for each engine's transaction type.)
macro_rules! forget {
    ($tx:expr, $replica_id:expr, $successor:expr) => {
        async {
            let (replica_id, successor): (&str, &str) = ($replica_id, $successor);
            sqlx::query("UPDATE replicas SET replaced_by = $1 WHERE replaced_by = $2")
                .bind(successor)
                .bind(replica_id)
                .execute(&mut *$tx)
                .await?;
            sqlx::query("DELETE FROM replicas WHERE id = $1").bind(replica_id).execute(&mut *$tx).await?;
            Result::<()>::Ok(())
        }
        .await
    };
}

/// Adds `new_id` on `host`, of the same app and release as `replica_id`, in the write
/// transaction `tx`.
macro_rules! insert_replacement {
    ($tx:expr, $replica_id:expr, $new_id:expr, $host:expr) => {
        async {
            let (replica_id, new_id, host): (&str, &str, &str) = ($replica_id, $new_id, $host);
            sqlx::query(
                "INSERT INTO replicas (id, app_id, release_id, host, created_at) \
                 SELECT $1, app_id, release_id, $2, $3 FROM replicas WHERE id = $4",
            )
            .bind(new_id)
            .bind(host)
            .bind(now_ms())
            .bind(replica_id)
            .execute(&mut *$tx)
            .await?;
            Result::<()>::Ok(())
        }
        .await
    };
}

#[derive(Debug, Clone, FromRow)]
pub struct ReplicaRow {
    pub id: String,
    pub app_id: i64,
    pub release_id: i64,
    pub release_number: i64,
    pub host: String,
    /// Being moved off its host: out of the route table, stopped once drained.
    pub retiring: bool,
    /// The replacement started while this replica's host was down (first ready wins).
    pub replaced_by: Option<String>,
}

/// What one replica asks of its host, for placement.
#[derive(Debug, Clone)]
pub struct Placement {
    pub host: String,
    pub app_id: i64,
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

impl Store {
    /// Replaces a replica by a new one of the same app and release on `host`, atomically (a
    /// replica it stood in for now waits on the new one).
    pub async fn move_replica(&self, replica_id: &str, new_id: &str, host: &str) -> Result<()> {
        write_tx!(self, |tx| {
            insert_replacement!(tx, replica_id, new_id, host)?;
            forget!(tx, replica_id, new_id)?;
            tx.commit().await
        })
    }

    /// Adds a replacement on `host` for a replica that is leaving (its host down or draining),
    /// keeping the replica's row, which points at it (`replaced_by`).
    pub async fn replace_leaving(&self, replica_id: &str, new_id: &str, host: &str) -> Result<()> {
        write_tx!(self, |tx| {
            insert_replacement!(tx, replica_id, new_id, host)?;
            sqlx::query("UPDATE replicas SET replaced_by = $1 WHERE id = $2")
                .bind(new_id)
                .bind(replica_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
    }

    /// The replacement is ready and the replica's host is still down: the replica's row goes (a
    /// replica it stood in for now waits on the replacement).
    pub async fn forget_replaced(&self, replica_id: &str, replacement_id: &str) -> Result<()> {
        write_tx!(self, |tx| {
            forget!(tx, replica_id, replacement_id)?;
            tx.commit().await
        })
    }

    /// The replica came back before its replacement was ready: the replacement (and whatever
    /// stands in for it in turn) is marked retiring, and returned, for the caller to drain and
    /// stop; the replica is itself again.
    pub async fn cancel_replacement(&self, replica_id: &str, replacement_id: &str) -> Result<Vec<String>> {
        write_tx!(self, |tx| {
            let mut chain: Vec<String> = Vec::new();
            let mut next = Some(replacement_id.to_string());
            while let Some(id) = next.take().filter(|id| !chain.contains(id)) {
                next = sqlx::query_scalar::<_, Option<String>>("SELECT replaced_by FROM replicas WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .flatten();
                chain.push(id);
            }
            for id in &chain {
                sqlx::query("UPDATE replicas SET retiring = TRUE, replaced_by = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("UPDATE replicas SET replaced_by = NULL WHERE id = $1")
                .bind(replica_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(chain)
        })
    }

    pub async fn mark_retiring(&self, ids: &[String]) -> Result<()> {
        write_tx!(self, |tx| {
            for id in ids {
                sqlx::query("UPDATE replicas SET retiring = TRUE WHERE id = $1").bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    /// Every replica's host and resource requests.
    pub async fn placements(&self) -> Result<Vec<Placement>> {
        with_pool!(self, |pool| {
            let rows: Vec<(String, i64, Json<AppSpec>)> = sqlx::query_as(
                "SELECT r.host, r.app_id, rel.spec FROM replicas r JOIN releases rel ON rel.id = r.release_id",
            )
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(host, app_id, Json(spec))| Placement {
                    host,
                    app_id,
                    cpu_millis: spec.cpu_millis.unwrap_or(0) as u64,
                    memory_mb: spec.memory_mb.unwrap_or(0),
                })
                .collect())
        })
    }

    pub async fn insert_replica(&self, id: &str, app_id: i64, release_id: i64, host: &str) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("INSERT INTO replicas (id, app_id, release_id, host, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(app_id)
                .bind(release_id)
                .bind(host)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn delete_replicas(&self, ids: &[String]) -> Result<()> {
        write_tx!(self, |tx| {
            for id in ids {
                sqlx::query("DELETE FROM replicas WHERE id = $1").bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    pub async fn all_replicas(&self) -> Result<Vec<ReplicaRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT r.id, r.app_id, r.release_id, rel.number AS release_number, r.host, r.retiring, r.replaced_by \
             FROM replicas r JOIN releases rel ON rel.id = r.release_id ORDER BY r.app_id, rel.number, r.created_at, r.id",
            )
            .fetch_all(pool)
            .await
        })
    }

    pub async fn replicas_of_app(&self, app_id: i64) -> Result<Vec<ReplicaRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT r.id, r.app_id, r.release_id, rel.number AS release_number, r.host, r.retiring, r.replaced_by \
             FROM replicas r JOIN releases rel ON rel.id = r.release_id WHERE r.app_id = $1 ORDER BY rel.number, r.created_at, r.id",
        )
        .bind(app_id)
        .fetch_all(pool)
        .await
        })
    }

    /// The replicas of the team's apps' serving releases, in one query: what the app list counts.
    pub async fn serving_replicas_of_team(&self, team_id: i64) -> Result<Vec<ReplicaRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT r.id, r.app_id, r.release_id, rel.number AS release_number, r.host, r.retiring, r.replaced_by \
                 FROM replicas r JOIN releases rel ON rel.id = r.release_id JOIN apps a ON a.id = r.app_id \
                 WHERE a.team_id = $1 AND rel.number = a.serving_release ORDER BY r.app_id, r.created_at, r.id",
            )
            .bind(team_id)
            .fetch_all(pool)
            .await
        })
    }

    /// Every desired container with the host it is placed on. Its app's secret variables are
    /// not in its `env`: they come sealed, beside it, for the caller to open.
    pub async fn desired_containers(&self, stop_grace_secs: u32) -> Result<Vec<DesiredPlacement>> {
        with_pool!(self, |pool| {
            let rows: Vec<(String, String, String, String, i64, Json<AppSpec>)> = sqlx::query_as(
            "SELECT r.host, r.id, t.name, a.name, rel.number, rel.spec FROM replicas r \
             JOIN releases rel ON rel.id = r.release_id JOIN apps a ON a.id = r.app_id JOIN teams t ON t.id = a.team_id \
             ORDER BY r.created_at, r.id",
        )
        .fetch_all(pool)
        .await?;
            Ok(rows
                .into_iter()
                .map(|(host, replica_id, team, app, release, Json(spec))| {
                    let desired = DesiredContainer {
                        replica_id,
                        team,
                        app,
                        release: release as u32,
                        image: spec.image,
                        port: spec.port,
                        env: spec.env,
                        health_path: spec.health_path,
                        cpu_millis: spec.cpu_millis,
                        memory_mb: spec.memory_mb,
                        stop_grace_secs,
                        privileges: spec.privileges,
                    };
                    DesiredPlacement { host, container: desired, sealed_secrets: spec.secrets }
                })
                .collect())
        })
    }
}

/// One desired container, where it goes, and its app's secret variables still sealed.
#[derive(Debug, Clone)]
pub struct DesiredPlacement {
    pub host: String,
    pub container: DesiredContainer,
    pub sealed_secrets: BTreeMap<String, String>,
}
