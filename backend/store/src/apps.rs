//! Apps and their immutable, numbered releases.

use berth_wire::AppSpec;
use berth_wire::api::{ReleaseEvent, ReleaseState, TeamQuota};
use sqlx::FromRow;
use sqlx::types::Json;

use crate::{Result, Store, now_ms};

/// Inserts a queued release of `app_id` numbered after every earlier one, in the write
/// transaction `tx`, and evaluates to its number. A macro rather than a function so that it is
/// compiled for each engine's transaction type.
macro_rules! insert_release {
    ($tx:expr, $app_id:expr, $spec:expr, $rollback_of:expr) => {
        async {
            let (app_id, spec, rollback_of): (i64, &AppSpec, Option<i64>) = ($app_id, $spec, $rollback_of);
            let now = now_ms();
            let (release_id, number): (i64, i64) = sqlx::query_as(
                "INSERT INTO releases (app_id, number, spec, state, rollback_of, created_at) \
                 VALUES ($1, (SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE app_id = $1), $2, 'queued', $3, $4) \
                 RETURNING id, number",
            )
            .bind(app_id)
            .bind(Json(spec))
            .bind(rollback_of)
            .bind(now)
            .fetch_one(&mut *$tx)
            .await?;
            let message = match rollback_of {
                Some(of) => format!("queued (rollback to the spec of release {of})"),
                None => "queued".to_string(),
            };
            sqlx::query("INSERT INTO release_events (release_id, at, phase, message) VALUES ($1, $2, 'queued', $3)")
                .bind(release_id)
                .bind(now)
                .bind(message)
                .execute(&mut *$tx)
                .await?;
            Result::<i64>::Ok(number)
        }
        .await
    };
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
    spec: Json<AppSpec>,
    #[sqlx(try_from = "String")]
    state: ReleaseState,
    pub message: Option<String>,
    pub rollback_of: Option<i64>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl ReleaseRow {
    pub fn spec(&self) -> AppSpec {
        self.spec.0.clone()
    }

    pub fn state(&self) -> ReleaseState {
        self.state
    }
}

const APP_COLUMNS: &str = "a.id, a.team_id, t.name AS team, a.name, a.serving_release, a.deleting, a.created_at";

impl Store {
    /// Creates the app with its first (queued) release, or with none when `spec` has no image
    /// (the app is built from git; `spec` is kept for its first release). Fails with a unique
    /// violation when the name is taken.
    pub async fn create_app(&self, team_id: i64, name: &str, spec: &AppSpec) -> Result<i64> {
        write_tx!(self, |tx| {
            let now = now_ms();
            let initial = spec.image.is_empty().then_some(Json(spec));
            let app_id: i64 = sqlx::query_scalar(
                "INSERT INTO apps (team_id, name, created_at, initial_spec) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(team_id)
            .bind(name)
            .bind(now)
            .bind(initial)
            .fetch_one(&mut *tx)
            .await?;
            if !spec.image.is_empty() {
                insert_release!(tx, app_id, spec, None)?;
            }
            tx.commit().await?;
            Ok(app_id)
        })
    }

    pub async fn app(&self, team_id: i64, name: &str) -> Result<Option<AppRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {APP_COLUMNS} FROM apps a JOIN teams t ON t.id = a.team_id WHERE a.team_id = $1 AND a.name = $2"
            )))
            .bind(team_id)
            .bind(name)
            .fetch_optional(pool)
            .await
        })
    }

    pub async fn app_by_id(&self, app_id: i64) -> Result<Option<AppRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {APP_COLUMNS} FROM apps a JOIN teams t ON t.id = a.team_id WHERE a.id = $1"
            )))
            .bind(app_id)
            .fetch_optional(pool)
            .await
        })
    }

    pub async fn apps_of_team(&self, team_id: i64) -> Result<Vec<AppRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {APP_COLUMNS} FROM apps a JOIN teams t ON t.id = a.team_id WHERE a.team_id = $1 ORDER BY a.name"
            )))
            .bind(team_id)
            .fetch_all(pool)
            .await
        })
    }

    pub async fn all_apps(&self) -> Result<Vec<AppRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {APP_COLUMNS} FROM apps a JOIN teams t ON t.id = a.team_id ORDER BY a.id"
            )))
            .fetch_all(pool)
            .await
        })
    }

    pub async fn mark_deleting(&self, app_id: i64) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE apps SET deleting = TRUE WHERE id = $1").bind(app_id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn delete_app(&self, app_id: i64) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("DELETE FROM apps WHERE id = $1").bind(app_id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Adds a queued release numbered after every earlier one and returns its number.
    pub async fn create_release(&self, app_id: i64, spec: &AppSpec, rollback_of: Option<i64>) -> Result<i64> {
        write_tx!(self, |tx| {
            let number = insert_release!(tx, app_id, spec, rollback_of)?;
            tx.commit().await?;
            Ok(number)
        })
    }

    /// The spec each of the team's apps is declared to run (its latest release that did not
    /// fail, or the initial spec of an app without any release), by app id. Apps being deleted
    /// and apps whose every release failed run nothing.
    pub async fn team_footprints(&self, team_id: i64) -> Result<Vec<(i64, AppSpec)>> {
        with_pool!(self, |pool| {
            type Row = (i64, Option<Json<AppSpec>>, bool, Option<Json<AppSpec>>);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT a.id, \
                 (SELECT rel.spec FROM releases rel WHERE rel.app_id = a.id AND rel.state != 'failed' \
                  ORDER BY rel.number DESC LIMIT 1), \
                 EXISTS (SELECT 1 FROM releases rel WHERE rel.app_id = a.id), \
                 a.initial_spec \
             FROM apps a WHERE a.team_id = $1 AND a.deleting = FALSE",
            )
            .bind(team_id)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .filter_map(|(id, latest, released, initial)| {
                    let spec = latest.or(if released { None } else { initial })?;
                    Some((id, spec.0))
                })
                .collect())
        })
    }

    /// The team's quota (every limit absent: unlimited).
    pub async fn team_quota(&self, team_id: i64) -> Result<TeamQuota> {
        with_pool!(self, |pool| {
            let (replicas, cpu_millis, memory_mb): (Option<i64>, Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT max_replicas, max_cpu_millis, max_memory_mb FROM teams WHERE id = $1")
                    .bind(team_id)
                    .fetch_one(pool)
                    .await?;
            let unsigned = |v: Option<i64>| v.map(|v| v.max(0) as u64);
            Ok(TeamQuota {
                replicas: unsigned(replicas),
                cpu_millis: unsigned(cpu_millis),
                memory_mb: unsigned(memory_mb),
            })
        })
    }

    pub async fn set_team_quota(&self, team_id: i64, quota: &TeamQuota) -> Result<()> {
        write_tx!(self, |tx| {
            let signed = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
            sqlx::query("UPDATE teams SET max_replicas = $1, max_cpu_millis = $2, max_memory_mb = $3 WHERE id = $4")
                .bind(signed(quota.replicas))
                .bind(signed(quota.cpu_millis))
                .bind(signed(quota.memory_mb))
                .bind(team_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Rewrites, in one transaction, every stored spec that carries secrets (every release's, and
    /// the initial spec of an app built from git that has no release yet): `rewrite` gets the
    /// team's and app's names and the spec, and says whether it changed it. The first error
    /// rolls the whole rewrite back. Returns how many specs changed.
    pub async fn rewrite_specs<E: From<sqlx::Error>>(
        &self,
        mut rewrite: impl FnMut(&str, &str, &mut AppSpec) -> std::result::Result<bool, E>,
    ) -> std::result::Result<usize, E> {
        write_tx!(self, |tx| {
            let releases: Vec<(i64, String, String, Json<AppSpec>)> = sqlx::query_as(
                "SELECT rel.id, t.name, a.name, rel.spec FROM releases rel JOIN apps a ON a.id = rel.app_id \
             JOIN teams t ON t.id = a.team_id",
            )
            .fetch_all(&mut *tx)
            .await?;
            let mut changed = 0;
            // Filtered here rather than in SQL, where each engine spells a JSON path its own way.
            for (id, team, app, Json(mut spec)) in releases {
                if !spec.secrets.is_empty() && rewrite(&team, &app, &mut spec)? {
                    sqlx::query("UPDATE releases SET spec = $1 WHERE id = $2")
                        .bind(Json(&spec))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    changed += 1;
                }
            }
            let initial: Vec<(i64, String, String, Json<AppSpec>)> = sqlx::query_as(
                "SELECT a.id, t.name, a.name, a.initial_spec FROM apps a JOIN teams t ON t.id = a.team_id \
             WHERE a.initial_spec IS NOT NULL",
            )
            .fetch_all(&mut *tx)
            .await?;
            for (id, team, app, Json(mut spec)) in initial {
                if !spec.secrets.is_empty() && rewrite(&team, &app, &mut spec)? {
                    sqlx::query("UPDATE apps SET initial_spec = $1 WHERE id = $2")
                        .bind(Json(&spec))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    changed += 1;
                }
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Newest first.
    pub async fn releases(&self, app_id: i64) -> Result<Vec<ReleaseRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM releases WHERE app_id = $1 ORDER BY number DESC")
                .bind(app_id)
                .fetch_all(pool)
                .await
        })
    }

    pub async fn release(&self, app_id: i64, number: i64) -> Result<Option<ReleaseRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM releases WHERE app_id = $1 AND number = $2")
                .bind(app_id)
                .bind(number)
                .fetch_optional(pool)
                .await
        })
    }

    pub async fn release_by_id(&self, id: i64) -> Result<Option<ReleaseRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM releases WHERE id = $1").bind(id).fetch_optional(pool).await
        })
    }

    pub async fn latest_release(&self, app_id: i64) -> Result<Option<ReleaseRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM releases WHERE app_id = $1 ORDER BY number DESC LIMIT 1")
                .bind(app_id)
                .fetch_optional(pool)
                .await
        })
    }

    /// Each of the team's apps' latest release and serving release (one row when they are the
    /// same), in one query: what the app list shows.
    pub async fn shown_releases_of_team(&self, team_id: i64) -> Result<Vec<ReleaseRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT rel.* FROM releases rel JOIN apps a ON a.id = rel.app_id WHERE a.team_id = $1 \
                 AND (rel.number = a.serving_release \
                      OR rel.number = (SELECT MAX(r2.number) FROM releases r2 WHERE r2.app_id = a.id))",
            )
            .bind(team_id)
            .fetch_all(pool)
            .await
        })
    }

    /// The oldest release that still has to go out (in progress first, after a restart).
    pub async fn next_unfinished_release(&self, app_id: i64) -> Result<Option<ReleaseRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM releases WHERE app_id = $1 AND state IN ('in_progress', 'queued') \
             ORDER BY state = 'queued', number LIMIT 1",
            )
            .bind(app_id)
            .fetch_optional(pool)
            .await
        })
    }

    pub async fn set_release_state(&self, release_id: i64, state: ReleaseState, message: Option<&str>) -> Result<()> {
        write_tx!(self, |tx| {
            let finished = state.is_finished().then(now_ms);
            sqlx::query("UPDATE releases SET state = $1, message = COALESCE($2, message), finished_at = COALESCE($3, finished_at) WHERE id = $4")
            .bind(state.as_str())
            .bind(message)
            .bind(finished)
            .bind(release_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn add_release_event(&self, release_id: i64, phase: &str, message: &str) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("INSERT INTO release_events (release_id, at, phase, message) VALUES ($1, $2, $3, $4)")
                .bind(release_id)
                .bind(now_ms())
                .bind(phase)
                .bind(message)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The events of every release of the app, by release id, each release's in order: one
    /// query, however many releases the app has.
    pub async fn release_events_of_app(
        &self,
        app_id: i64,
    ) -> Result<std::collections::HashMap<i64, Vec<ReleaseEvent>>> {
        with_pool!(self, |pool| {
            let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
                "SELECT e.release_id, e.at, e.phase, e.message FROM release_events e \
                 JOIN releases r ON r.id = e.release_id WHERE r.app_id = $1 ORDER BY e.id",
            )
            .bind(app_id)
            .fetch_all(pool)
            .await?;
            let mut events: std::collections::HashMap<i64, Vec<ReleaseEvent>> = Default::default();
            for (release, at, phase, message) in rows {
                events.entry(release).or_default().push(ReleaseEvent { at, phase, message });
            }
            Ok(events)
        })
    }

    pub async fn release_events(&self, release_id: i64) -> Result<Vec<ReleaseEvent>> {
        with_pool!(self, |pool| {
            let rows: Vec<(i64, String, String)> =
                sqlx::query_as("SELECT at, phase, message FROM release_events WHERE release_id = $1 ORDER BY id")
                    .bind(release_id)
                    .fetch_all(pool)
                    .await?;
            Ok(rows.into_iter().map(|(at, phase, message)| ReleaseEvent { at, phase, message }).collect())
        })
    }

    /// Routes `app_id` to `release` from now on; the release that served before is superseded.
    /// The new release stays `in_progress` until its old replicas are drained and stopped.
    pub async fn switch_serving(&self, app_id: i64, release: &ReleaseRow) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "UPDATE releases SET state = 'superseded' WHERE app_id = $1 AND state = 'serving' AND id != $2",
            )
            .bind(app_id)
            .bind(release.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE apps SET serving_release = $1 WHERE id = $2")
                .bind(release.number)
                .bind(app_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
    }
}
