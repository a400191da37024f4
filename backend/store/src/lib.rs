//! The store: desired state and identity in SQL (through sqlx), on SQLite (the embedded default,
//! one file in the data directory) or PostgreSQL (for several control-plane instances). The
//! schema's migrations are applied at open, under the database's lock.
//!
//! Every query is written once, in the SQL both engines take (`$N` parameters, `TRUE`/`FALSE`,
//! `ON CONFLICT ... DO UPDATE`, `RETURNING`), and compiled against both drivers: [`with_pool!`]
//! and [`write_tx!`] expand a body once per engine, so a query one of them would refuse to bind or
//! decode is a compile error, not a production surprise. The schema is kept in two migration
//! sets, `migrations/sqlite` and `migrations/postgres`, numbered alike: version N of one holds
//! what version N of the other holds (PostgreSQL's set begins with a baseline at the version
//! SQLite's had reached when PostgreSQL was added).
//!
//! Only the control plane writes here. Observed container state is not stored: agents report it
//! and the orchestrator keeps the latest report in memory.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// Now, in milliseconds since the Unix epoch, on the database's clock: SQLite's SQL for it.
macro_rules! sqlite_now {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    };
}

/// PostgreSQL's SQL for now in milliseconds (`clock_timestamp`: the time of the statement, not of
/// the transaction's start).
macro_rules! postgres_now {
    () => {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    };
}

/// Runs `$body` with `$pool` bound to the store's pool, expanded once per engine.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite($pool) => $body,
            $crate::Pool::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$tx` bound to a new write transaction, expanded once per engine: on SQLite
/// `BEGIN IMMEDIATE` ([`begin_write_sqlite`]), on PostgreSQL under the write lock
/// ([`begin_write_postgres`]); then, on a fenced store ([`Store::fenced`]), the lease is checked
/// before anything is written. The body commits; a transaction dropped uncommitted rolls back.
macro_rules! write_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite(pool) => {
                #[allow(unused_mut)]
                let mut $tx = $crate::begin_write_sqlite(pool).await?;
                check_fence!($store, $tx, sqlite_now!());
                $body
            }
            $crate::Pool::Postgres(pool) => {
                #[allow(unused_mut)]
                let mut $tx = $crate::begin_write_postgres(pool).await?;
                check_fence!($store, $tx, postgres_now!());
                $body
            }
        }
    };
}

/// On a fenced store, returns [`lease::Fenced`] from the enclosing function unless the fence's
/// term still holds the lease, unexpired (read inside `$tx`, under the write lock; `$now` is the
/// engine's SQL for now in milliseconds, the database's clock).
macro_rules! check_fence {
    ($store:expr, $tx:ident, $now:expr) => {
        if let Some(fence) = &$store.fence {
            let sql = concat!("SELECT term FROM leader_lease WHERE id = 1 AND holder = $1 AND expires_at >= ", $now);
            let held: Option<i64> = sqlx::query_scalar(sql).bind(&fence.holder).fetch_optional(&mut *$tx).await?;
            if held != Some(fence.term) {
                return Err(sqlx::Error::Configuration(Box::new($crate::lease::Fenced { term: fence.term })).into());
            }
        }
    };
}

mod apps;
mod builds;
mod changes;
mod cluster;
mod copy;
mod edge;
mod hosts;
mod identity;
mod lease;
mod replicas;
#[cfg(feature = "testing")]
pub mod testing;

pub use apps::{AppRow, ReleaseRow};
pub use builds::{BuildInsert, BuildRow, NewBuild, WebhookRow};
pub use changes::ChangeRow;
pub use cluster::{InstanceInfo, InstanceRow, Publication, WorkItem, ingress_node_instance};
pub use copy::CopyReport;
pub use edge::{AcmeNameRow, AppEdge, CertificateRow, NewCertificate};
pub use hosts::{HostRow, JoinError};
pub use identity::{AuditRecord, InvitationRow, TokenRow, UserRow};
pub use lease::{Fenced, LeaseRow, is_fenced};
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

/// Where the store lives: `--database`'s URL, parsed. Its `Debug` hides any password.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its `postgres://` URL (the database must exist; its schema is
    /// created by the migrations).
    Postgres(String),
}

impl Database {
    /// The embedded default: `berth.db` in the data directory.
    pub fn in_data_dir(data_dir: &Path) -> Database {
        Database::Sqlite(data_dir.join("berth.db"))
    }

    /// The URL without its password, for logs and messages.
    pub fn redacted(&self) -> String {
        match self {
            Database::Sqlite(path) => format!("sqlite:{}", path.display()),
            Database::Postgres(url) => redact_password(url),
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for Database {
    type Err = String;

    /// `sqlite:PATH` (also `sqlite://PATH`, `sqlite:///abs/path`) or `postgres://...` /
    /// `postgresql://...`.
    fn from_str(text: &str) -> Result<Database, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            PgConnectOptions::from_str(text)
                .map_err(|error| format!("{}: not a PostgreSQL URL: {error}", redact_password(text)))?;
            return Ok(Database::Postgres(text.to_string()));
        }
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(format!("{text}: the SQLite URL names no file (sqlite:/var/lib/berth/berth.db)"));
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        Err(format!("{}: use sqlite:PATH or postgres://USER@HOST/DATABASE", redact_password(text)))
    }
}

/// `url` with any password replaced by `***`: the one after `user:`, up to the last `@` (so an
/// unencoded `/` or `?` in it is covered too; an `@` in the query only hides more), and a
/// `password=` query parameter.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (credentials, after) = match rest.rfind('@') {
        Some(at) => rest.split_at(at),
        None => ("", rest),
    };
    let credentials = match credentials.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => credentials.to_string(),
    };
    let after = match after.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => after.to_string(),
    };
    format!("{scheme}://{credentials}{after}")
}

/// The two engines' pools.
#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Set on a leader's handle ([`Store::fenced`]): the term its writes must still hold.
    fence: Option<std::sync::Arc<lease::Fence>>,
}

/// The key of the advisory lock every PostgreSQL write transaction holds ("berth" in ASCII).
const WRITE_LOCK: i64 = 0x0062_6572_7468;

impl Store {
    /// Opens (creating if needed) `berth.db` in `data_dir` and applies pending migrations.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Store> {
        Store::connect(&Database::in_data_dir(data_dir)).await
    }

    /// Connects to `database` and applies pending migrations (under the migrator's lock, so
    /// instances starting together apply each once).
    pub async fn connect(database: &Database) -> anyhow::Result<Store> {
        let pool = match database {
            Database::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
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
                sqlx::migrate!("../../migrations/sqlite").run(&pool).await.context("applying database migrations")?;
                Pool::Sqlite(pool)
            }
            Database::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)
                    .with_context(|| format!("parsing the database URL {}", database.redacted()))?;
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .with_context(|| format!("connecting to {}", database.redacted()))?;
                sqlx::migrate!("../../migrations/postgres").run(&pool).await.context("applying database migrations")?;
                Pool::Postgres(pool)
            }
        };
        Ok(Store { pool, fence: None })
    }

    /// Which engine this store runs on: `sqlite` or `postgres`.
    pub fn engine(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }
}

/// Begins a SQLite transaction that writes. SQLite's default (deferred) transaction takes the
/// write lock only at its first write, and if another connection committed after this one's
/// first read, that upgrade fails at once with "database is locked" (the busy timeout does not
/// apply to it). `BEGIN IMMEDIATE` takes the write lock up front, so writers wait their turn.
pub(crate) async fn begin_write_sqlite(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// How long a write transaction on PostgreSQL may wait for its process between statements:
/// well under the leadership lease (3 s), so a stopped holder of the write lock delays a
/// takeover by no more than the lease does.
const WRITE_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Begins a PostgreSQL transaction that writes, holding one advisory lock for the instance until
/// it ends: write transactions take turns as on SQLite, across every control-plane instance on
/// the database. A transaction that reads a number and writes the next (releases, builds) then
/// cannot race another, and never fails on a serialization conflict. Reads do not take it.
pub(crate) async fn begin_write_postgres(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    // READ COMMITTED whatever the database's default: each statement after the lock then sees
    // every transaction committed before it was granted (a snapshot taken before, as repeatable
    // read takes it, would miss a takeover of the lease or the last release number).
    let mut tx = pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?;
    // A process stopped (SIGSTOP, a VM paused) in the middle of a write would hold the lock, and
    // with it every instance's writes (the lease's takeover too), until it resumed: the database
    // ends such a transaction, and its session, once it idles longer than this.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}",
        WRITE_IDLE_LIMIT.as_millis()
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK).execute(&mut *tx).await?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_parse_and_passwords_stay_out_of_messages() {
        assert_eq!("sqlite:/var/lib/berth/berth.db".parse(), Ok(Database::Sqlite("/var/lib/berth/berth.db".into())));
        assert_eq!("sqlite:///abs/b.db".parse(), Ok(Database::Sqlite("/abs/b.db".into())));
        assert_eq!("sqlite://rel.db?mode=rwc".parse(), Ok(Database::Sqlite("rel.db".into())));
        assert_eq!(
            "postgres://berth:pw@db:5432/berth".parse(),
            Ok(Database::Postgres("postgres://berth:pw@db:5432/berth".into()))
        );
        assert_eq!(
            Database::Postgres("postgres://berth:s3cret@db/berth?sslmode=require".into()).redacted(),
            "postgres://berth:***@db/berth?sslmode=require"
        );
        let refused = "mysql://root:hunter2@db/x".parse::<Database>().unwrap_err();
        assert!(refused.contains("sqlite:PATH") && !refused.contains("hunter2"), "{refused}");
        assert!("sqlite:".parse::<Database>().is_err());
        let bad = "postgres://u:hunter2@db:notaport/x".parse::<Database>().unwrap_err();
        assert!(!bad.contains("hunter2"), "{bad}");
        for url in [
            "postgres://u:hun/ter2@db/berth",
            "postgres://u:hunter?2@db/berth",
            "postgres://u@db/berth?sslmode=require&password=hunter2",
            "postgres://u:hunter2@db/berth?password=hunter2",
        ] {
            let redacted = Database::Postgres(url.into()).redacted();
            assert!(!redacted.contains("hunter") && redacted.contains("db"), "{url} -> {redacted}");
            assert!(!format!("{:?}", Database::Postgres(url.into())).contains("hunter"));
        }
    }
}
