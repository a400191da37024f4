//! The store: desired state and identity in SQLite (through sqlx), migrations applied at open.
//!
//! Only the control plane writes here. Observed container state is not stored: agents report it
//! and the orchestrator keeps the latest report in memory.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use berth_wire::AppSpec;
use berth_wire::agent::DesiredContainer;
use std::collections::BTreeMap;

use berth_wire::agent::HostCapacity;
use berth_wire::api::{HostState, ReleaseEvent, ReleaseState};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

mod identity;

pub use identity::{AuditRecord, InvitationRow, UserRow};

pub type Result<T, E = sqlx::Error> = std::result::Result<T, E>;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// True when `error` is a UNIQUE constraint violation (a name already taken).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

#[derive(Debug, Clone, FromRow)]
pub struct AppRow {
    pub id: i64,
    pub team_id: i64,
    pub team: String,
    pub name: String,
    pub serving_release: Option<i64>,
    pub deleting: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct ReleaseRow {
    pub id: i64,
    pub app_id: i64,
    pub number: i64,
    pub spec: String,
    pub state: String,
    pub message: Option<String>,
    pub rollback_of: Option<i64>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl ReleaseRow {
    pub fn spec(&self) -> AppSpec {
        serde_json::from_str(&self.spec).expect("BUG: release specs are written by Berth as valid JSON")
    }

    pub fn state(&self) -> ReleaseState {
        ReleaseState::parse(&self.state).expect("BUG: the schema only admits known release states")
    }
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
}

#[derive(Debug, Clone, FromRow)]
pub struct HostRow {
    pub name: String,
    pub address: String,
    pub labels: String,
    pub cpu_millis: i64,
    pub memory_mb: i64,
    pub state: String,
    pub is_local: bool,
    pub last_seen: Option<i64>,
}

impl HostRow {
    pub fn labels(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.labels).unwrap_or_default()
    }

    pub fn state(&self) -> HostState {
        HostState::parse(&self.state).expect("BUG: the schema only admits known host states")
    }
}

/// What one replica asks of its host, for placement.
#[derive(Debug, Clone)]
pub struct Placement {
    pub host: String,
    pub app_id: i64,
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

/// Why a host could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the join token is not valid, expired or used up")]
    InvalidToken,
    #[error("a host named {0} already exists")]
    NameTaken(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Who a bearer token speaks for.
#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub token_id: i64,
    pub user_id: i64,
    pub email: String,
    pub kind: String,
    pub is_instance_admin: bool,
    pub disabled: bool,
    pub team_id: Option<i64>,
    pub role: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

const APP_COLUMNS: &str = "a.id, a.team_id, t.name AS team, a.name, a.serving_release, a.deleting, a.created_at";

impl Store {
    /// Opens (creating if needed) `berth.db` in `data_dir` and applies pending migrations.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Store> {
        use anyhow::Context as _;
        let path = data_dir.join("berth.db");
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .with_context(|| format!("parsing the database path {}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .with_context(|| format!("opening the database {}", path.display()))?;
        sqlx::migrate!("../migrations").run(&pool).await.context("applying database migrations")?;
        Ok(Store { pool })
    }

    /// True once the instance has its first user.
    pub async fn is_bootstrapped(&self) -> Result<bool> {
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.pool).await?;
        Ok(users > 0)
    }

    /// On an empty store: creates the instance admin, the team `main` (the admin owns it) and an
    /// admin API token stored as `token_hash`. Returns false when the store was already set up.
    pub async fn bootstrap(&self, token_hash: &str, password_hash: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&mut *tx).await?;
        if users > 0 {
            return Ok(false);
        }
        let now = now_ms();
        let user_id: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, name, is_instance_admin, password_hash, created_at) \
             VALUES ('admin@localhost', 'admin', 1, ?, ?) RETURNING id",
        )
        .bind(password_hash)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let team_id: i64 = sqlx::query_scalar("INSERT INTO teams (name, created_at) VALUES ('main', ?) RETURNING id")
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO memberships (team_id, user_id, role) VALUES (?, ?, 'owner')")
            .bind(team_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, name, user_id, created_at) VALUES (?, 'bootstrap admin', ?, ?)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records the in-process agent's host (created on first start, refreshed on every start).
    pub async fn register_local_host(&self, name: &str, address: &str, capacity: &HostCapacity) -> Result<()> {
        sqlx::query(
            "INSERT INTO hosts (name, address, created_at, is_local, state, cpu_millis, memory_mb, last_seen) \
             VALUES (?, ?, ?, 1, 'up', ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET address = excluded.address, is_local = 1, state = 'up', \
             cpu_millis = excluded.cpu_millis, memory_mb = excluded.memory_mb, last_seen = excluded.last_seen",
        )
        .bind(name)
        .bind(address)
        .bind(now_ms())
        .bind(capacity.cpu_millis as i64)
        .bind(capacity.memory_mb as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- hosts ----

    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        sqlx::query_as(
            "SELECT name, address, labels, cpu_millis, memory_mb, state, is_local, last_seen FROM hosts ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
    }

    pub async fn create_join_token(&self, token_hash: &str, uses: u32, expires_at: i64, created_by: i64) -> Result<()> {
        sqlx::query("INSERT INTO join_tokens (token_hash, uses_left, expires_at, created_by, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(token_hash)
            .bind(uses as i64)
            .bind(expires_at)
            .bind(created_by)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
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
        let mut tx = self.pool.begin().await?;
        let spent = sqlx::query(
            "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE token_hash = ? AND uses_left > 0 AND expires_at > ?",
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
             VALUES (?, ?, ?, ?, ?, ?, 'up', ?)",
        )
        .bind(name)
        .bind(address)
        .bind(serde_json::to_string(labels).expect("BUG: a map of strings serialises"))
        .bind(capacity.cpu_millis as i64)
        .bind(capacity.memory_mb as i64)
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
    }

    pub async fn host_by_credential(&self, credential_hash: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT name FROM hosts WHERE credential_hash = ?")
            .bind(credential_hash)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn set_host_capacity(&self, name: &str, capacity: &HostCapacity) -> Result<()> {
        sqlx::query("UPDATE hosts SET cpu_millis = ?, memory_mb = ? WHERE name = ?")
            .bind(capacity.cpu_millis as i64)
            .bind(capacity.memory_mb as i64)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_host_state(&self, name: &str, state: HostState) -> Result<()> {
        sqlx::query("UPDATE hosts SET state = ?, last_seen = ? WHERE name = ?")
            .bind(state.as_str())
            .bind(now_ms())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn remove_host(&self, name: &str) -> Result<bool> {
        let removed =
            sqlx::query("DELETE FROM hosts WHERE name = ? AND is_local = 0").bind(name).execute(&self.pool).await?;
        Ok(removed.rows_affected() == 1)
    }

    /// Replaces a replica by a new one of the same app and release on `host`, atomically.
    pub async fn move_replica(&self, replica_id: &str, new_id: &str, host: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_replacement(&mut tx, replica_id, new_id, host).await?;
        sqlx::query("DELETE FROM replicas WHERE id = ?").bind(replica_id).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Adds a replica of the same app and release as `replica_id` on `host` (its replacement).
    pub async fn add_replacement(&self, replica_id: &str, new_id: &str, host: &str) -> Result<()> {
        let mut connection = self.pool.acquire().await?;
        insert_replacement(&mut connection, replica_id, new_id, host).await
    }

    pub async fn mark_retiring(&self, ids: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("UPDATE replicas SET retiring = 1 WHERE id = ?").bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Every replica's host and resource requests.
    pub async fn placements(&self) -> Result<Vec<Placement>> {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT r.host, r.app_id, rel.spec FROM replicas r JOIN releases rel ON rel.id = r.release_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(host, app_id, spec)| {
                let spec: AppSpec =
                    serde_json::from_str(&spec).expect("BUG: release specs are written by Berth as valid JSON");
                Placement {
                    host,
                    app_id,
                    cpu_millis: spec.cpu_millis.unwrap_or(0) as u64,
                    memory_mb: spec.memory_mb.unwrap_or(0),
                }
            })
            .collect())
    }

    // ---- identity ----

    pub async fn token(&self, token_hash: &str) -> Result<Option<TokenRow>> {
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT k.id AS token_id, k.user_id, u.email, k.kind, u.is_instance_admin, u.disabled, k.team_id, k.role, \
             k.expires_at, k.revoked_at FROM api_tokens k JOIN users u ON u.id = k.user_id WHERE k.token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = &row {
            // Minute precision is enough, and spares a write on most requests.
            sqlx::query(
                "UPDATE api_tokens SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            )
            .bind(now_ms())
            .bind(row.token_id)
            .bind(now_ms() - 60_000)
            .execute(&self.pool)
            .await?;
        }
        Ok(row)
    }

    /// `(team id, team name, role)` for every team the user belongs to.
    pub async fn memberships(&self, user_id: i64) -> Result<Vec<(i64, String, String)>> {
        sqlx::query_as(
            "SELECT m.team_id, t.name, m.role FROM memberships m JOIN teams t ON t.id = m.team_id WHERE m.user_id = ?",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn team_id(&self, name: &str) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT id FROM teams WHERE name = ?").bind(name).fetch_optional(&self.pool).await
    }

    // ---- apps and releases ----

    /// Creates the app with its first (queued) release. Fails with a unique violation when the
    /// name is taken.
    pub async fn create_app(&self, team_id: i64, name: &str, spec: &AppSpec) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let app_id: i64 =
            sqlx::query_scalar("INSERT INTO apps (team_id, name, created_at) VALUES (?, ?, ?) RETURNING id")
                .bind(team_id)
                .bind(name)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
        insert_release(&mut tx, app_id, spec, None).await?;
        tx.commit().await?;
        Ok(app_id)
    }

    pub async fn app(&self, team_id: i64, name: &str) -> Result<Option<AppRow>> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {APP_COLUMNS} FROM apps a JOIN teams t ON t.id = a.team_id WHERE a.team_id = ? AND a.name = ?"
        )))
        .bind(team_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn app_by_id(&self, app_id: i64) -> Result<Option<AppRow>> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {APP_COLUMNS} FROM apps a JOIN teams t ON t.id = a.team_id WHERE a.id = ?"
        )))
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn apps_of_team(&self, team_id: i64) -> Result<Vec<AppRow>> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {APP_COLUMNS} FROM apps a JOIN teams t ON t.id = a.team_id WHERE a.team_id = ? ORDER BY a.name"
        )))
        .bind(team_id)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn all_apps(&self) -> Result<Vec<AppRow>> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {APP_COLUMNS} FROM apps a JOIN teams t ON t.id = a.team_id ORDER BY a.id"
        )))
        .fetch_all(&self.pool)
        .await
    }

    pub async fn mark_deleting(&self, app_id: i64) -> Result<()> {
        sqlx::query("UPDATE apps SET deleting = 1 WHERE id = ?").bind(app_id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn delete_app(&self, app_id: i64) -> Result<()> {
        sqlx::query("DELETE FROM apps WHERE id = ?").bind(app_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Adds a queued release numbered after every earlier one and returns its number.
    pub async fn create_release(&self, app_id: i64, spec: &AppSpec, rollback_of: Option<i64>) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let number = insert_release(&mut tx, app_id, spec, rollback_of).await?;
        tx.commit().await?;
        Ok(number)
    }

    /// Newest first.
    pub async fn releases(&self, app_id: i64) -> Result<Vec<ReleaseRow>> {
        sqlx::query_as("SELECT * FROM releases WHERE app_id = ? ORDER BY number DESC")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn release(&self, app_id: i64, number: i64) -> Result<Option<ReleaseRow>> {
        sqlx::query_as("SELECT * FROM releases WHERE app_id = ? AND number = ?")
            .bind(app_id)
            .bind(number)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn release_by_id(&self, id: i64) -> Result<Option<ReleaseRow>> {
        sqlx::query_as("SELECT * FROM releases WHERE id = ?").bind(id).fetch_optional(&self.pool).await
    }

    pub async fn latest_release(&self, app_id: i64) -> Result<Option<ReleaseRow>> {
        sqlx::query_as("SELECT * FROM releases WHERE app_id = ? ORDER BY number DESC LIMIT 1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The oldest release that still has to go out (in progress first, after a restart).
    pub async fn next_unfinished_release(&self, app_id: i64) -> Result<Option<ReleaseRow>> {
        sqlx::query_as(
            "SELECT * FROM releases WHERE app_id = ? AND state IN ('in_progress', 'queued') \
             ORDER BY state = 'queued', number LIMIT 1",
        )
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn set_release_state(&self, release_id: i64, state: ReleaseState, message: Option<&str>) -> Result<()> {
        let finished = state.is_finished().then(now_ms);
        sqlx::query("UPDATE releases SET state = ?, message = COALESCE(?, message), finished_at = COALESCE(?, finished_at) WHERE id = ?")
            .bind(state.as_str())
            .bind(message)
            .bind(finished)
            .bind(release_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn add_release_event(&self, release_id: i64, phase: &str, message: &str) -> Result<()> {
        sqlx::query("INSERT INTO release_events (release_id, at, phase, message) VALUES (?, ?, ?, ?)")
            .bind(release_id)
            .bind(now_ms())
            .bind(phase)
            .bind(message)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn release_events(&self, release_id: i64) -> Result<Vec<ReleaseEvent>> {
        let rows: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT at, phase, message FROM release_events WHERE release_id = ? ORDER BY id")
                .bind(release_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(at, phase, message)| ReleaseEvent { at, phase, message }).collect())
    }

    /// Routes `app_id` to `release` from now on; the release that served before is superseded.
    /// The new release stays `in_progress` until its old replicas are drained and stopped.
    pub async fn switch_serving(&self, app_id: i64, release: &ReleaseRow) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE releases SET state = 'superseded' WHERE app_id = ? AND state = 'serving' AND id != ?")
            .bind(app_id)
            .bind(release.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE apps SET serving_release = ? WHERE id = ?")
            .bind(release.number)
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    // ---- replicas (desired placement) ----

    pub async fn insert_replica(&self, id: &str, app_id: i64, release_id: i64, host: &str) -> Result<()> {
        sqlx::query("INSERT INTO replicas (id, app_id, release_id, host, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(id)
            .bind(app_id)
            .bind(release_id)
            .bind(host)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_replicas(&self, ids: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM replicas WHERE id = ?").bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    pub async fn all_replicas(&self) -> Result<Vec<ReplicaRow>> {
        sqlx::query_as(
            "SELECT r.id, r.app_id, r.release_id, rel.number AS release_number, r.host, r.retiring \
             FROM replicas r JOIN releases rel ON rel.id = r.release_id ORDER BY r.app_id, rel.number, r.created_at",
        )
        .fetch_all(&self.pool)
        .await
    }

    pub async fn replicas_of_app(&self, app_id: i64) -> Result<Vec<ReplicaRow>> {
        sqlx::query_as(
            "SELECT r.id, r.app_id, r.release_id, rel.number AS release_number, r.host, r.retiring \
             FROM replicas r JOIN releases rel ON rel.id = r.release_id WHERE r.app_id = ? ORDER BY rel.number, r.created_at",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await
    }

    /// Every desired container with the host it is placed on.
    pub async fn desired_containers(&self, stop_grace_secs: u32) -> Result<Vec<(String, DesiredContainer)>> {
        let rows: Vec<(String, String, String, String, i64, String)> = sqlx::query_as(
            "SELECT r.host, r.id, t.name, a.name, rel.number, rel.spec FROM replicas r \
             JOIN releases rel ON rel.id = r.release_id JOIN apps a ON a.id = r.app_id JOIN teams t ON t.id = a.team_id \
             ORDER BY r.created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(host, replica_id, team, app, release, spec)| {
                let spec: AppSpec =
                    serde_json::from_str(&spec).expect("BUG: release specs are written by Berth as valid JSON");
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
                (host, desired)
            })
            .collect())
    }
}

async fn insert_replacement(
    connection: &mut sqlx::SqliteConnection,
    replica_id: &str,
    new_id: &str,
    host: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO replicas (id, app_id, release_id, host, created_at) \
         SELECT ?, app_id, release_id, ?, ? FROM replicas WHERE id = ?",
    )
    .bind(new_id)
    .bind(host)
    .bind(now_ms())
    .bind(replica_id)
    .execute(connection)
    .await?;
    Ok(())
}

async fn insert_release(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    app_id: i64,
    spec: &AppSpec,
    rollback_of: Option<i64>,
) -> Result<i64> {
    let spec = serde_json::to_string(spec).expect("BUG: an AppSpec always serialises");
    let now = now_ms();
    let (release_id, number): (i64, i64) = sqlx::query_as(
        "INSERT INTO releases (app_id, number, spec, state, rollback_of, created_at) \
         VALUES (?, (SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE app_id = ?), ?, 'queued', ?, ?) \
         RETURNING id, number",
    )
    .bind(app_id)
    .bind(app_id)
    .bind(spec)
    .bind(rollback_of)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let message = match rollback_of {
        Some(of) => format!("queued (rollback to the spec of release {of})"),
        None => "queued".to_string(),
    };
    sqlx::query("INSERT INTO release_events (release_id, at, phase, message) VALUES (?, ?, 'queued', ?)")
        .bind(release_id)
        .bind(now)
        .bind(message)
        .execute(&mut **tx)
        .await?;
    Ok(number)
}
