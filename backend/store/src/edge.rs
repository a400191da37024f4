//! The edge: custom domains, certificates and ACME state, per-app edge settings.

use std::collections::HashMap;

use berth_wire::AppSpec;
use berth_wire::edge::{AppProtocol, CertSource, CertificateInfo, EdgeSettings};
use sqlx::FromRow;
use sqlx::types::Json;

use crate::{Result, Store, now_ms};

#[derive(Debug, Clone, FromRow)]
pub struct CertificateRow {
    pub id: i64,
    pub app_id: i64,
    source: String,
    names: Json<Vec<String>>,
    pub issuer: String,
    pub chain_pem: String,
    pub key_file: String,
    pub not_after: i64,
    pub created_at: i64,
}

impl CertificateRow {
    pub fn names(&self) -> &[String] {
        &self.names.0
    }

    pub fn source(&self) -> CertSource {
        self.source.parse().unwrap_or(CertSource::Uploaded)
    }

    pub fn info(&self) -> CertificateInfo {
        CertificateInfo {
            id: self.id,
            names: self.names.0.clone(),
            source: self.source(),
            issuer: self.issuer.clone(),
            not_after: self.not_after,
            created_at: self.created_at,
        }
    }
}

/// A certificate to record; its key is already in `key_file`.
pub struct NewCertificate<'a> {
    pub app_id: i64,
    pub source: CertSource,
    pub names: &'a [String],
    pub issuer: &'a str,
    pub chain_pem: &'a str,
    pub key_file: &'a str,
    pub not_after: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct AcmeNameRow {
    pub name: String,
    pub state: String,
    pub error: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: i64,
}

/// What routing needs of an app beyond its replicas.
#[derive(Debug, Clone, Default)]
pub struct AppEdge {
    pub domains: Vec<String>,
    pub settings: EdgeSettings,
    pub protocol: AppProtocol,
}

impl Store {
    /// Adds `name` to the app. Fails with a unique violation when any app has it.
    pub async fn add_domain(&self, app_id: i64, name: &str) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("INSERT INTO domains (name, app_id, created_at) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(app_id)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Removes the app's `name`; false when it had no such domain.
    pub async fn remove_domain(&self, app_id: i64, name: &str) -> Result<bool> {
        write_tx!(self, |tx| {
            let removed = sqlx::query("DELETE FROM domains WHERE app_id = $1 AND name = $2")
                .bind(app_id)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            sqlx::query("DELETE FROM acme_names WHERE name = $1").bind(name).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(removed)
        })
    }

    pub async fn domains(&self, app_id: i64) -> Result<Vec<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT name FROM domains WHERE app_id = $1 ORDER BY name")
                .bind(app_id)
                .fetch_all(pool)
                .await
        })
    }

    /// Every custom domain with its app's id.
    pub async fn all_domains(&self) -> Result<Vec<(String, i64)>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT name, app_id FROM domains ORDER BY name").fetch_all(pool).await
        })
    }

    pub async fn edge_settings(&self, app_id: i64) -> Result<EdgeSettings> {
        with_pool!(self, |pool| {
            let settings: Option<Json<EdgeSettings>> =
                sqlx::query_scalar("SELECT edge_settings FROM apps WHERE id = $1")
                    .bind(app_id)
                    .fetch_optional(pool)
                    .await?;
            Ok(settings.map(|s| s.0).unwrap_or_default())
        })
    }

    pub async fn set_edge_settings(&self, app_id: i64, settings: &EdgeSettings) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE apps SET edge_settings = $1 WHERE id = $2")
                .bind(Json(settings))
                .bind(app_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Per app: its domains, edge settings and the serving release's protocol.
    pub async fn app_edges(&self) -> Result<HashMap<i64, AppEdge>> {
        with_pool!(self, |pool| {
            let rows: Vec<(i64, Json<EdgeSettings>, Option<Json<AppSpec>>)> = sqlx::query_as(
                "SELECT a.id, a.edge_settings, r.spec FROM apps a \
             LEFT JOIN releases r ON r.app_id = a.id AND r.number = a.serving_release",
            )
            .fetch_all(pool)
            .await?;
            let mut edges: HashMap<i64, AppEdge> = rows
                .into_iter()
                .map(|(id, settings, spec)| {
                    let protocol = spec.map(|s| s.0.protocol).unwrap_or_default();
                    (id, AppEdge { domains: Vec::new(), settings: settings.0, protocol })
                })
                .collect();
            for (name, app_id) in self.all_domains().await? {
                if let Some(edge) = edges.get_mut(&app_id) {
                    edge.domains.push(name);
                }
            }
            Ok(edges)
        })
    }

    pub async fn insert_certificate(&self, certificate: NewCertificate<'_>) -> Result<i64> {
        write_tx!(self, |tx| {
            let written = sqlx::query_scalar(
                "INSERT INTO certificates (app_id, source, names, issuer, chain_pem, key_file, not_after, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(certificate.app_id)
            .bind(<&str>::from(certificate.source))
            .bind(Json(certificate.names))
            .bind(certificate.issuer)
            .bind(certificate.chain_pem)
            .bind(certificate.key_file)
            .bind(certificate.not_after)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(written)
        })
    }

    pub async fn certificates(&self) -> Result<Vec<CertificateRow>> {
        with_pool!(self, |pool| { sqlx::query_as("SELECT * FROM certificates ORDER BY id").fetch_all(pool).await })
    }

    /// The stored certificates' ids, in order: what changes when one is added, renewed (a new
    /// row) or removed.
    pub async fn certificate_ids(&self) -> Result<Vec<i64>> {
        with_pool!(self, |pool| { sqlx::query_scalar("SELECT id FROM certificates ORDER BY id").fetch_all(pool).await })
    }

    pub async fn app_certificates(&self, app_id: i64) -> Result<Vec<CertificateRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM certificates WHERE app_id = $1 ORDER BY id")
                .bind(app_id)
                .fetch_all(pool)
                .await
        })
    }

    /// Removes a certificate record and returns it (its key file is the caller's to delete).
    pub async fn remove_certificate(&self, id: i64) -> Result<Option<CertificateRow>> {
        write_tx!(self, |tx| {
            let written = sqlx::query_as("DELETE FROM certificates WHERE id = $1 RETURNING *")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(written)
        })
    }

    pub async fn acme_names(&self) -> Result<Vec<AcmeNameRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT name, state, error, attempts, next_attempt_at FROM acme_names").fetch_all(pool).await
        })
    }

    /// Records where ACME stands for `name`.
    pub async fn set_acme_name(
        &self,
        name: &str,
        state: &str,
        error: Option<&str>,
        attempts: i64,
        next_attempt_at: i64,
    ) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query(
            "INSERT INTO acme_names (name, state, error, attempts, next_attempt_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET state = excluded.state, error = excluded.error, \
             attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(state)
        .bind(error)
        .bind(attempts)
        .bind(next_attempt_at)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Forgets ACME state for names no longer served.
    pub async fn remove_acme_name(&self, name: &str) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("DELETE FROM acme_names WHERE name = $1").bind(name).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }
}
