//! Builds from git, an app's build settings, webhooks and their deliveries.

use berth_wire::AppSpec;
use berth_wire::builds::{BuildInfo, BuildSettings, BuildState, WebhookDelivery, WebhookProvider};
use sqlx::FromRow;
use sqlx::types::Json;

use crate::{Result, Store, now_ms};

#[derive(Debug, Clone, FromRow)]
pub struct BuildRow {
    pub id: i64,
    pub app_id: i64,
    pub number: i64,
    #[sqlx(try_from = "String")]
    state: BuildState,
    pub commit_sha: String,
    pub git_ref: String,
    pub pusher: String,
    pub trigger: String,
    pub host: Option<String>,
    pub image: String,
    pub release_number: Option<i64>,
    pub message: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl BuildRow {
    pub fn state(&self) -> BuildState {
        self.state
    }

    pub fn info(&self) -> BuildInfo {
        BuildInfo {
            number: self.number as u32,
            state: self.state,
            commit: self.commit_sha.clone(),
            git_ref: self.git_ref.clone(),
            pusher: self.pusher.clone(),
            trigger: self.trigger.clone(),
            host: self.host.clone(),
            image: self.image.clone(),
            release: self.release_number.map(|n| n as u32),
            message: self.message.clone(),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

/// What a new build record holds.
pub struct NewBuild<'a> {
    pub app_id: i64,
    pub commit: &'a str,
    pub git_ref: &'a str,
    pub pusher: &'a str,
    pub trigger: &'a str,
    /// The image tag, with `{build}` standing for the build's number.
    pub image_template: &'a str,
}

#[derive(Debug, Clone, FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub app_id: i64,
    #[sqlx(try_from = "String")]
    provider: WebhookProvider,
    pub repository: String,
    pub secret: String,
    pub created_at: i64,
}

impl WebhookRow {
    pub fn provider(&self) -> WebhookProvider {
        self.provider
    }
}

#[derive(FromRow)]
struct DeliveryRow {
    webhook_id: String,
    delivery: Option<String>,
    at: i64,
    verdict: String,
    reason: String,
    build_number: Option<i64>,
}

/// The outcome of trying to start a build.
pub enum BuildInsert {
    Created(BuildRow),
    /// The app has an unfinished build already.
    Busy(BuildRow),
}

impl Store {
    pub async fn build_settings(&self, app_id: i64) -> Result<BuildSettings> {
        with_pool!(self, |pool| {
            let settings: Json<BuildSettings> = sqlx::query_scalar("SELECT build_settings FROM apps WHERE id = $1")
                .bind(app_id)
                .fetch_one(pool)
                .await?;
            Ok(settings.0)
        })
    }

    pub async fn set_build_settings(&self, app_id: i64, settings: &BuildSettings) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE apps SET build_settings = $1 WHERE id = $2")
                .bind(Json(settings))
                .bind(app_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The spec a new release starts from: the latest release's, or the one given when the app
    /// was created without an image.
    pub async fn base_spec(&self, app_id: i64) -> Result<Option<AppSpec>> {
        with_pool!(self, |pool| {
            if let Some(latest) = self.latest_release(app_id).await? {
                return Ok(Some(latest.spec()));
            }
            let initial: Option<Json<AppSpec>> = sqlx::query_scalar("SELECT initial_spec FROM apps WHERE id = $1")
                .bind(app_id)
                .fetch_optional(pool)
                .await?
                .flatten();
            Ok(initial.map(|spec| spec.0))
        })
    }

    /// Records a queued build, numbered after the app's earlier ones, unless the app has an
    /// unfinished build (then that one is returned).
    pub async fn insert_build(&self, build: NewBuild<'_>) -> Result<BuildInsert> {
        write_tx!(self, |tx| {
            if let Some(running) = sqlx::query_as::<_, BuildRow>(
                "SELECT * FROM builds WHERE app_id = $1 AND state IN ('queued', 'building', 'releasing') LIMIT 1",
            )
            .bind(build.app_id)
            .fetch_optional(&mut *tx)
            .await?
            {
                return Ok(BuildInsert::Busy(running));
            }
            let number: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(number), 0) + 1 FROM builds WHERE app_id = $1")
                .bind(build.app_id)
                .fetch_one(&mut *tx)
                .await?;
            let image = build.image_template.replace("{build}", &number.to_string());
            let row: BuildRow = sqlx::query_as(
                "INSERT INTO builds (app_id, number, state, commit_sha, git_ref, pusher, trigger, image, created_at) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8) RETURNING *",
            )
            .bind(build.app_id)
            .bind(number)
            .bind(build.commit)
            .bind(build.git_ref)
            .bind(build.pusher)
            .bind(build.trigger)
            .bind(image)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(BuildInsert::Created(row))
        })
    }

    pub async fn build(&self, app_id: i64, number: i64) -> Result<Option<BuildRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM builds WHERE app_id = $1 AND number = $2")
                .bind(app_id)
                .bind(number)
                .fetch_optional(pool)
                .await
        })
    }

    pub async fn build_by_id(&self, id: i64) -> Result<Option<BuildRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM builds WHERE id = $1").bind(id).fetch_optional(pool).await
        })
    }

    /// Newest first.
    pub async fn builds(&self, app_id: i64, limit: i64) -> Result<Vec<BuildRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM builds WHERE app_id = $1 ORDER BY number DESC LIMIT $2")
                .bind(app_id)
                .bind(limit)
                .fetch_all(pool)
                .await
        })
    }

    /// Builds no process owns any more: queued or building when the server starts.
    pub async fn unfinished_builds(&self) -> Result<Vec<BuildRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM builds WHERE state IN ('queued', 'building', 'releasing')")
                .fetch_all(pool)
                .await
        })
    }

    pub async fn start_build(&self, id: i64, host: &str) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE builds SET state = 'building', host = $1, started_at = $2 WHERE id = $3")
                .bind(host)
                .bind(now_ms())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Ends an unfinished build; a build that ended already keeps its outcome.
    pub async fn finish_build(&self, id: i64, state: BuildState, message: Option<&str>) -> Result<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE builds SET state = $1, message = $2, finished_at = $3 \
             WHERE id = $4 AND state IN ('queued', 'building', 'releasing')",
            )
            .bind(state.as_str())
            .bind(message)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// The build's image exists; its release follows. False when the build ended meanwhile
    /// (canceled).
    pub async fn set_build_releasing(&self, id: i64) -> Result<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query("UPDATE builds SET state = 'releasing' WHERE id = $1 AND state = 'building'")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// True when a webhook delivery built `commit` for the app before (a replayed delivery).
    pub async fn webhook_built(&self, app_id: i64, commit: &str) -> Result<bool> {
        with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM builds WHERE app_id = $1 AND trigger = 'webhook' AND commit_sha = $2)",
            )
            .bind(app_id)
            .bind(commit)
            .fetch_one(pool)
            .await
        })
    }

    pub async fn set_build_release(&self, id: i64, release: i64) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE builds SET release_number = $1 WHERE id = $2")
                .bind(release)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Deletes the app's build records beyond the newest `keep`; returns the deleted numbers.
    pub async fn trim_builds(&self, app_id: i64, keep: i64) -> Result<Vec<i64>> {
        write_tx!(self, |tx| {
            let written = sqlx::query_scalar(
            "DELETE FROM builds WHERE app_id = $1 AND state NOT IN ('queued', 'building', 'releasing') AND number <= \
             (SELECT MAX(number) FROM builds WHERE app_id = $2) - $3 RETURNING number",
        )
        .bind(app_id)
        .bind(app_id)
        .bind(keep)
        .fetch_all(&mut *tx)
        .await?;
            tx.commit().await?;
            Ok(written)
        })
    }

    pub async fn create_webhook(
        &self,
        id: &str,
        app_id: i64,
        provider: WebhookProvider,
        repository: &str,
        secret: &str,
    ) -> Result<WebhookRow> {
        write_tx!(self, |tx| {
            let written = sqlx::query_as(
                "INSERT INTO webhooks (id, app_id, provider, repository, secret, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            )
            .bind(id)
            .bind(app_id)
            .bind(provider.as_str())
            .bind(repository)
            .bind(secret)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(written)
        })
    }

    pub async fn webhook(&self, id: &str) -> Result<Option<WebhookRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM webhooks WHERE id = $1").bind(id).fetch_optional(pool).await
        })
    }

    pub async fn webhooks(&self, app_id: i64) -> Result<Vec<WebhookRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM webhooks WHERE app_id = $1 ORDER BY created_at")
                .bind(app_id)
                .fetch_all(pool)
                .await
        })
    }

    pub async fn delete_webhook(&self, app_id: i64, id: &str) -> Result<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query("DELETE FROM webhooks WHERE app_id = $1 AND id = $2")
                .bind(app_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// True when `delivery` of this webhook was accepted before (a redelivery).
    pub async fn delivery_seen(&self, webhook: &str, delivery: &str) -> Result<bool> {
        with_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM webhook_deliveries \
             WHERE webhook_id = $1 AND delivery = $2 AND verdict = 'accepted')",
            )
            .bind(webhook)
            .bind(delivery)
            .fetch_one(pool)
            .await
        })
    }

    /// Logs a delivery; keeps the newest 100 per webhook.
    pub async fn add_delivery(
        &self,
        webhook: &str,
        delivery: Option<&str>,
        verdict: &str,
        reason: &str,
        build: Option<i64>,
    ) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO webhook_deliveries (webhook_id, delivery, at, verdict, reason, build_number) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(webhook)
            .bind(delivery)
            .bind(now_ms())
            .bind(verdict)
            .bind(reason)
            .bind(build)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM webhook_deliveries WHERE webhook_id = $1 AND id NOT IN \
             (SELECT id FROM webhook_deliveries WHERE webhook_id = $2 ORDER BY id DESC LIMIT 100)",
            )
            .bind(webhook)
            .bind(webhook)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
    }

    /// Newest first, across the app's webhooks.
    pub async fn deliveries(&self, app_id: i64) -> Result<Vec<WebhookDelivery>> {
        with_pool!(self, |pool| {
            let rows: Vec<DeliveryRow> = sqlx::query_as(
                "SELECT d.webhook_id, d.delivery, d.at, d.verdict, d.reason, d.build_number \
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE w.app_id = $1 ORDER BY d.id DESC LIMIT 100",
            )
            .bind(app_id)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|row| WebhookDelivery {
                    webhook: row.webhook_id,
                    delivery: row.delivery,
                    at: row.at,
                    verdict: row.verdict,
                    reason: row.reason,
                    build: row.build_number.map(|n| n as u32),
                })
                .collect())
        })
    }
}
