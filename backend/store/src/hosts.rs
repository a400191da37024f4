//! Hosts, their join tokens and credentials.

use std::collections::BTreeMap;

use berth_wire::agent::HostCapacity;
use berth_wire::api::HostState;
use sqlx::FromRow;
use sqlx::types::Json;

use crate::{Result, Store, is_unique_violation, now_ms};

#[derive(Debug, Clone, FromRow)]
pub struct HostRow {
    pub name: String,
    pub address: String,
    labels: Json<BTreeMap<String, String>>,
    pub cpu_millis: i64,
    pub memory_mb: i64,
    #[sqlx(try_from = "String")]
    state: HostState,
    pub is_local: bool,
    pub last_seen: Option<i64>,
}

impl HostRow {
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels.0.clone()
    }

    pub fn state(&self) -> HostState {
        self.state
    }
}

/// Why a host could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the join token is not valid, expired, used up or for another kind of machine")]
    InvalidToken,
    #[error("a host named {0} already exists")]
    NameTaken(String),
    #[error("an ingress node named {0} already exists")]
    IngressNodeTaken(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl Store {
    /// Records the in-process agent's host (created on first start, refreshed on every start).
    pub async fn register_local_host(&self, name: &str, address: &str, capacity: &HostCapacity) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO hosts (name, address, created_at, is_local, state, cpu_millis, memory_mb, last_seen) \
             VALUES ($1, $2, $3, TRUE, 'up', $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET address = excluded.address, is_local = TRUE, state = 'up', \
             cpu_millis = excluded.cpu_millis, memory_mb = excluded.memory_mb, last_seen = excluded.last_seen",
            )
            .bind(name)
            .bind(address)
            .bind(now_ms())
            .bind(i64::try_from(capacity.cpu_millis).unwrap_or(i64::MAX))
            .bind(i64::try_from(capacity.memory_mb).unwrap_or(i64::MAX))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT name, address, labels, cpu_millis, memory_mb, state, is_local, last_seen FROM hosts ORDER BY name",
        )
        .fetch_all(pool)
        .await
        })
    }

    /// A join token for `kind` (`host` or `ingress`) of machines.
    pub async fn create_join_token(
        &self,
        token_hash: &str,
        uses: u32,
        expires_at: i64,
        created_by: i64,
        kind: &str,
    ) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("INSERT INTO join_tokens (token_hash, uses_left, expires_at, created_by, created_at, kind) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(token_hash)
            .bind(uses as i64)
            .bind(expires_at)
            .bind(created_by)
            .bind(now_ms())
            .bind(kind)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Spends one use of the join token and registers the host with its credential's hash.
    pub async fn join_host(
        &self,
        token_hash: &str,
        name: &str,
        address: &str,
        labels: &BTreeMap<String, String>,
        capacity: &HostCapacity,
        credential_hash: &str,
    ) -> Result<(), JoinError> {
        write_tx!(self, |tx| {
            let spent = sqlx::query(
                "UPDATE join_tokens SET uses_left = uses_left - 1 \
             WHERE token_hash = $1 AND uses_left > 0 AND expires_at > $2 AND kind = 'host'",
            )
            .bind(token_hash)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            if spent.rows_affected() != 1 {
                return Err(JoinError::InvalidToken);
            }
            let inserted = sqlx::query(
                "INSERT INTO hosts (name, address, labels, cpu_millis, memory_mb, credential_hash, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'up', $7)",
            )
            .bind(name)
            .bind(address)
            .bind(Json(labels))
            .bind(i64::try_from(capacity.cpu_millis).unwrap_or(i64::MAX))
            .bind(i64::try_from(capacity.memory_mb).unwrap_or(i64::MAX))
            .bind(credential_hash)
            .bind(now_ms())
            .execute(&mut *tx)
            .await;
            match inserted {
                Err(error) if is_unique_violation(&error) => return Err(JoinError::NameTaken(name.to_string())),
                other => other?,
            };
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn host_by_credential(&self, credential_hash: &str) -> Result<Option<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT name FROM hosts WHERE credential_hash = $1")
                .bind(credential_hash)
                .fetch_optional(pool)
                .await
        })
    }

    pub async fn set_host_capacity(&self, name: &str, capacity: &HostCapacity) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE hosts SET cpu_millis = $1, memory_mb = $2 WHERE name = $3")
                .bind(i64::try_from(capacity.cpu_millis).unwrap_or(i64::MAX))
                .bind(i64::try_from(capacity.memory_mb).unwrap_or(i64::MAX))
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn set_host_state(&self, name: &str, state: HostState) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE hosts SET state = $1, last_seen = $2 WHERE name = $3")
                .bind(state.as_str())
                .bind(now_ms())
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn remove_host(&self, name: &str) -> Result<bool> {
        write_tx!(self, |tx| {
            let removed = sqlx::query("DELETE FROM hosts WHERE name = $1 AND is_local = FALSE")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(removed.rows_affected() == 1)
        })
    }
}
