//! The store: desired state and identity in SQLite (through sqlx), migrations applied at open.
//!
//! Only the control plane writes here. Observed container state is not stored: agents report it
//! and the orchestrator keeps the latest report in memory.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

mod apps;
mod builds;
mod edge;
mod hosts;
mod identity;
mod replicas;

pub use apps::{AppRow, ReleaseRow};
pub use builds::{BuildInsert, BuildRow, NewBuild, WebhookRow};
pub use edge::{AcmeNameRow, AppEdge, CertificateRow, NewCertificate};
pub use hosts::{HostRow, JoinError};
pub use identity::{AuditRecord, InvitationRow, TokenRow, UserRow};
pub use replicas::{DesiredPlacement, Placement, ReplicaRow};

/// The store's error type.
pub use sqlx::Error as StoreError;

pub type Result<T, E = sqlx::Error> = std::result::Result<T, E>;

/// The store's clock: milliseconds since the Unix epoch, as every timestamp column holds.
pub(crate) fn now_ms() -> i64 {
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
        sqlx::migrate!("../../migrations").run(&pool).await.context("applying database migrations")?;
        Ok(Store { pool })
    }

    /// Begins a transaction that writes. SQLite's default (deferred) transaction takes the write
    /// lock only at its first write, and if another connection committed after this one's first
    /// read, that upgrade fails at once with "database is locked" (the busy timeout does not apply
    /// to it). `BEGIN IMMEDIATE` takes the write lock up front, so writers wait their turn instead.
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}
