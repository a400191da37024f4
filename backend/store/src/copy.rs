//! Copying a whole store to another one, of either engine (`berth admin migrate-store`).
//!
//! Rows are read and written as neutral values. SQLite has no boolean or JSON type (flags are
//! integers, documents text), so where PostgreSQL is one side its column types decide: a
//! PostgreSQL `boolean` takes a SQLite integer, `jsonb` takes SQLite text, and the other way
//! round. Identity sequences are moved past the copied ids so that new rows do not collide.

use anyhow::{Context as _, bail};
use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};

use crate::{Pool, Store};

/// Every table of the schema, parents before children (foreign keys hold at every insert). A
/// test checks that it names every table the migrations create.
pub(crate) const TABLES: &[&str] = &[
    "users",
    "teams",
    "memberships",
    "api_tokens",
    "hosts",
    "join_tokens",
    "ingress_nodes",
    "apps",
    "releases",
    "release_events",
    "replicas",
    "invitations",
    "audit_log",
    "builds",
    "webhooks",
    "webhook_deliveries",
    "domains",
    "certificates",
    "acme_names",
    "login_failures",
    "external_identities",
];

/// Tables the copy leaves alone: the leadership lease, the instances' reports, the work asked of
/// the leader and its publications belong to the instances running on one database (a new
/// database's migrations create the lease's row; its leader publishes afresh, and its first
/// orchestration does every app's work). The change feed tells the instances on one database
/// what changed in it; those on the new one start from its newest change.
pub(crate) const NOT_COPIED: &[&str] = &["leader_lease", "instances", "pending_work", "published", "changes"];

/// Rows copied per table, in copy order.
#[derive(Debug, Default)]
pub struct CopyReport {
    pub tables: Vec<(&'static str, u64)>,
}

/// One column value, between engines.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
    Json(serde_json::Value),
}

/// What PostgreSQL calls a column's type, when PostgreSQL is the other side.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Bool,
    Text,
    Json,
}

struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Store {
    /// Copies every row of this store into `target`, which must hold no rows yet (a fresh
    /// database: its schema is created when it is opened). One transaction on the target: a
    /// failure leaves it empty. The source is only read.
    pub async fn copy_to(&self, target: &Store) -> anyhow::Result<CopyReport> {
        let (source_version, target_version) = (self.schema_version().await?, target.schema_version().await?);
        if source_version != target_version {
            bail!("the source's schema is at version {source_version}, the target's at {target_version}");
        }
        for store in [self, target] {
            let unknown: Vec<String> = store
                .schema_tables()
                .await?
                .into_iter()
                .filter(|table| !TABLES.contains(&table.as_str()) && !NOT_COPIED.contains(&table.as_str()))
                .collect();
            if !unknown.is_empty() {
                bail!("BUG: the copy does not know the tables {unknown:?}: a migration added them, TABLES lacks them");
            }
        }
        let kinds = match (&self.pool, &target.pool) {
            (_, Pool::Postgres(pool)) | (Pool::Postgres(pool), _) => Some(postgres_kinds(pool).await?),
            _ => None,
        };
        let kind_of = |table: &str, column: &str| {
            kinds.as_ref().and_then(|kinds| kinds.get(&(table.to_string(), column.to_string())).copied())
        };
        let tables = self.read_tables(&kind_of).await?;
        target.write_tables(&tables, &kind_of).await?;
        Ok(CopyReport { tables: tables.iter().map(|(name, table)| (*name, table.rows.len() as u64)).collect() })
    }

    /// The schema's tables (the migrator's own aside).
    async fn schema_tables(&self) -> anyhow::Result<Vec<String>> {
        let tables = match &self.pool {
            Pool::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
                     AND name != '_sqlx_migrations'",
                )
                .fetch_all(pool)
                .await?
            }
            Pool::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() \
                     AND table_type = 'BASE TABLE' AND table_name != '_sqlx_migrations'",
                )
                .fetch_all(pool)
                .await?
            }
        };
        Ok(tables)
    }

    /// The newest migration applied.
    async fn schema_version(&self) -> anyhow::Result<i64> {
        let version: Option<i64> = with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?
        });
        Ok(version.unwrap_or(0))
    }

    /// Every table of [`TABLES`], read in one transaction: a consistent snapshot even while a
    /// server writes (a release and the app serving it, a row and its parent).
    async fn read_tables(
        &self,
        kind_of: &impl Fn(&str, &str) -> Option<Kind>,
    ) -> anyhow::Result<Vec<(&'static str, Table)>> {
        let mut tables = Vec::new();
        match &self.pool {
            Pool::Sqlite(pool) => {
                // A deferred transaction reads one snapshot of the write-ahead log throughout.
                let mut tx = pool.begin().await?;
                for &table in TABLES {
                    let sql = format!("SELECT * FROM {table}");
                    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
                    // SQLite's values carry their own type: integer or text. A PostgreSQL
                    // target's column types say which integers are flags and which texts JSON.
                    let decoded = decode_rows(rows, |row, i, column, type_name| {
                        Ok(match (type_name, kind_of(table, column)) {
                            ("INTEGER", Some(Kind::Bool)) => Value::Bool(row.try_get::<i64, _>(i)? != 0),
                            ("INTEGER", _) => Value::Int(row.try_get(i)?),
                            ("TEXT", Some(Kind::Json)) => {
                                let text: String = row.try_get(i)?;
                                Value::Json(serde_json::from_str(&text).with_context(|| {
                                    format!("{table}.{column} holds text that is not JSON: {text:.80}")
                                })?)
                            }
                            ("TEXT", _) => Value::Text(row.try_get(i)?),
                            (other, _) => bail!("{table}.{column} holds a value of type {other}"),
                        })
                    });
                    tables.push((table, decoded.with_context(|| format!("reading table {table}"))?));
                }
            }
            Pool::Postgres(pool) => {
                let mut tx = pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
                for &table in TABLES {
                    let sql = format!("SELECT * FROM {table}");
                    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
                    let decoded = decode_rows(rows, |row, i, column, type_name| {
                        Ok(match type_name {
                            "INT8" => Value::Int(row.try_get(i)?),
                            "BOOL" => Value::Bool(row.try_get(i)?),
                            "TEXT" => Value::Text(row.try_get(i)?),
                            "JSONB" => Value::Json(row.try_get::<sqlx::types::Json<_>, _>(i)?.0),
                            other => bail!("{table}.{column} has type {other}"),
                        })
                    });
                    tables.push((table, decoded.with_context(|| format!("reading table {table}"))?));
                }
            }
        }
        Ok(tables)
    }

    async fn write_tables(
        &self,
        tables: &[(&'static str, Table)],
        kind_of: &impl Fn(&str, &str) -> Option<Kind>,
    ) -> anyhow::Result<()> {
        write_tx!(self, |tx| {
            // Checked in the transaction that writes, so nothing can come in between.
            for name in TABLES {
                let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {name}")))
                    .fetch_one(&mut *tx)
                    .await?;
                if rows > 0 {
                    bail!("the target already holds data (table {name} is not empty): copy into a new, empty database");
                }
            }
            for (name, table) in tables {
                if table.rows.is_empty() {
                    continue;
                }
                let placeholders: Vec<String> = (1..=table.columns.len()).map(|i| format!("${i}")).collect();
                let sql =
                    format!("INSERT INTO {name} ({}) VALUES ({})", table.columns.join(", "), placeholders.join(", "));
                for row in &table.rows {
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                    for (column, value) in table.columns.iter().zip(row) {
                        // Toward SQLite, flags become integers and documents text; toward
                        // PostgreSQL a NULL is typed as its column is.
                        query = match (value.clone(), kind_of(name, column)) {
                            (Value::Null, Some(Kind::Bool)) => query.bind(None::<bool>),
                            (Value::Null, Some(Kind::Text)) => query.bind(None::<String>),
                            (Value::Null, Some(Kind::Json)) => query.bind(None::<sqlx::types::Json<()>>),
                            (Value::Null, _) => query.bind(None::<i64>),
                            (Value::Int(v), Some(Kind::Bool)) => query.bind(v != 0),
                            (Value::Int(v), _) => query.bind(v),
                            (Value::Bool(v), _) => query.bind(v),
                            (Value::Text(v), Some(Kind::Json)) => query.bind(sqlx::types::Json(
                                serde_json::from_str::<serde_json::Value>(&v)
                                    .with_context(|| format!("{name}.{column} holds text that is not JSON"))?,
                            )),
                            (Value::Text(v), _) => query.bind(v),
                            (Value::Json(v), Some(Kind::Json)) => query.bind(sqlx::types::Json(v)),
                            (Value::Json(v), _) => query.bind(v.to_string()),
                        };
                    }
                    query.execute(&mut *tx).await.with_context(|| format!("writing into table {name}"))?;
                }
            }
            if let Pool::Postgres(_) = &self.pool {
                // Identity columns' sequences, moved past the copied ids.
                let identities: Vec<String> = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND column_name = 'id' AND is_identity = 'YES'",
                )
                .fetch_all(&mut *tx)
                .await?;
                for name in identities {
                    let sql = format!(
                        "SELECT setval(pg_get_serial_sequence('{name}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {name}"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            anyhow::Ok(())
        })
    }
}

/// `rows` as neutral values: NULL as [`Value::Null`], anything else by `decode(row, index,
/// column name, the value's type name)`.
fn decode_rows<R>(
    rows: Vec<R>,
    decode: impl Fn(&R, usize, &str, &str) -> anyhow::Result<Value>,
) -> anyhow::Result<Table>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
{
    let columns: Vec<String> =
        rows.first().map(|row| row.columns().iter().map(|c| c.name().to_string()).collect()).unwrap_or_default();
    let mut values = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut decoded = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let raw = row.try_get_raw(i)?;
            decoded.push(if raw.is_null() {
                Value::Null
            } else {
                let type_name = raw.type_info().name().to_string();
                decode(row, i, column, &type_name)?
            });
        }
        values.push(decoded);
    }
    Ok(Table { columns, rows: values })
}

/// The type of every column of the PostgreSQL schema, by (table, column).
async fn postgres_kinds(pool: &sqlx::PgPool) -> anyhow::Result<std::collections::HashMap<(String, String), Kind>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema()",
    )
    .fetch_all(pool)
    .await?;
    let mut kinds = std::collections::HashMap::new();
    for (table, column, data_type) in rows {
        let kind = match data_type.as_str() {
            "bigint" | "integer" | "smallint" => Kind::Int,
            "boolean" => Kind::Bool,
            "jsonb" | "json" => Kind::Json,
            _ => Kind::Text,
        };
        kinds.insert((table, column), kind);
    }
    Ok(kinds)
}
