//! Users, teams, memberships, invitations, tokens and the audit log.

use berth_wire::identity::{AuditEntry, TokenInfo};
use sqlx::FromRow;

use crate::{Result, Store, now_ms};

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

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub is_instance_admin: bool,
    pub password_hash: Option<String>,
    pub disabled: bool,
}

#[derive(Debug, Clone, FromRow)]
pub struct InvitationRow {
    pub id: i64,
    pub team_id: i64,
    pub team: String,
    pub role: String,
    pub email: Option<String>,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// One audit record to write.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    pub user_id: Option<i64>,
    pub token_id: Option<i64>,
    pub actor: String,
    pub action: String,
    pub team_id: Option<i64>,
    pub team: Option<String>,
    pub app: Option<String>,
    pub target: Option<String>,
    pub address: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
}

const USER_COLUMNS: &str = "id, email, name, is_instance_admin, password_hash, disabled";

impl Store {
    /// True once the instance has its first user.
    pub async fn is_bootstrapped(&self) -> Result<bool> {
        with_pool!(self, |pool| {
            let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(pool).await?;
            Ok(users > 0)
        })
    }

    /// On an empty store: creates the instance admin, the team `main` (the admin owns it) and an
    /// admin API token stored as `token_hash`. Returns false when the store was already set up.
    pub async fn bootstrap(&self, token_hash: &str, password_hash: &str) -> Result<bool> {
        write_tx!(self, |tx| {
            let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&mut *tx).await?;
            if users > 0 {
                return Ok(false);
            }
            let now = now_ms();
            let user_id: i64 = sqlx::query_scalar(
                "INSERT INTO users (email, name, is_instance_admin, password_hash, created_at) \
             VALUES ('admin@localhost', 'admin', TRUE, $1, $2) RETURNING id",
            )
            .bind(password_hash)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let team_id: i64 =
                sqlx::query_scalar("INSERT INTO teams (name, created_at) VALUES ('main', $1) RETURNING id")
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query("INSERT INTO memberships (team_id, user_id, role) VALUES ($1, $2, 'owner')")
                .bind(team_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO api_tokens (token_hash, name, user_id, created_at) VALUES ($1, 'bootstrap admin', $2, $3)",
            )
            .bind(token_hash)
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The token `id` as authentication sees it, without counting a use (open streams check
    /// that their token still holds).
    pub async fn token_by_id(&self, id: i64) -> Result<Option<TokenRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT k.id AS token_id, k.user_id, u.email, k.kind, u.is_instance_admin, u.disabled, k.team_id, k.role, \
             k.expires_at, k.revoked_at FROM api_tokens k JOIN users u ON u.id = k.user_id WHERE k.id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        })
    }

    pub async fn token(&self, token_hash: &str) -> Result<Option<TokenRow>> {
        with_pool!(self, |pool| {
            let row: Option<TokenRow> = sqlx::query_as(
            "SELECT k.id AS token_id, k.user_id, u.email, k.kind, u.is_instance_admin, u.disabled, k.team_id, k.role, \
             k.expires_at, k.revoked_at FROM api_tokens k JOIN users u ON u.id = k.user_id WHERE k.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(pool)
        .await?;
            if let Some(row) = &row {
                // Minute precision is enough, and spares a write on most requests.
                sqlx::query(
                "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
            )
            .bind(now_ms())
            .bind(row.token_id)
            .bind(now_ms() - 60_000)
            .execute(pool)
            .await?;
            }
            Ok(row)
        })
    }

    /// `(team id, team name, role)` for every team the user belongs to.
    pub async fn memberships(&self, user_id: i64) -> Result<Vec<(i64, String, String)>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT m.team_id, t.name, m.role FROM memberships m JOIN teams t ON t.id = m.team_id WHERE m.user_id = $1",
        )
        .bind(user_id)
        .fetch_all(pool)
        .await
        })
    }

    pub async fn team_id(&self, name: &str) -> Result<Option<i64>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT id FROM teams WHERE name = $1").bind(name).fetch_optional(pool).await
        })
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1")))
                .bind(email)
                .fetch_optional(pool)
                .await
        })
    }

    pub async fn user(&self, id: i64) -> Result<Option<UserRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await
        })
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users ORDER BY id")))
                .fetch_all(pool)
                .await
        })
    }

    pub async fn create_user(&self, email: &str, name: &str, password_hash: &str) -> Result<i64> {
        write_tx!(self, |tx| {
            let written = sqlx::query_scalar(
                "INSERT INTO users (email, name, password_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(email)
            .bind(name)
            .bind(password_hash)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(written)
        })
    }

    /// Sets the password and revokes every login token (signed-in sessions) of the user except
    /// `keep_token`.
    pub async fn set_password(&self, user_id: i64, password_hash: &str, keep_token: Option<i64>) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
                .bind(password_hash)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            // A new password ends every address's backoff for the account.
            sqlx::query("DELETE FROM login_failures WHERE email = (SELECT email FROM users WHERE id = $1)")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND kind = 'login' AND revoked_at IS NULL AND id != $3",
        )
        .bind(now_ms())
        .bind(user_id)
        .bind(keep_token.unwrap_or(-1))
        .execute(&mut *tx)
        .await?;
            tx.commit().await
        })
    }

    pub async fn set_user_disabled(&self, user_id: i64, disabled: bool) -> Result<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
                .bind(disabled)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Counts a failed sign-in; locks the account until `lock_until` once `max` is reached.
    /// Until when sign-ins for `email` from `address` are refused (a time in the past or none:
    /// not refused).
    pub async fn login_blocked_until(&self, email: &str, address: &str) -> Result<Option<i64>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT blocked_until FROM login_failures WHERE email = $1 AND address = $2")
                .bind(email)
                .bind(address)
                .fetch_optional(pool)
                .await
        })
    }

    /// Counts a failed sign-in for `email` from `address`; `block(failures)` says until when that
    /// pair is then refused (0: not at all). Pairs quiet for a day are forgotten.
    pub async fn record_failed_login(
        &self,
        email: &str,
        address: &str,
        now: i64,
        block: impl FnOnce(i64) -> i64,
    ) -> Result<i64> {
        write_tx!(self, |tx| {
            const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;
            sqlx::query("DELETE FROM login_failures WHERE updated_at < $1 AND blocked_until < $2")
                .bind(now - FORGET_AFTER_MS)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let failures: i64 = sqlx::query_scalar(
            "INSERT INTO login_failures (email, address, failures, blocked_until, updated_at) VALUES ($1, $2, 1, 0, $3) \
             ON CONFLICT (email, address) DO UPDATE SET failures = login_failures.failures + 1, updated_at = excluded.updated_at \
             RETURNING failures",
        )
        .bind(email)
        .bind(address)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
            sqlx::query("UPDATE login_failures SET blocked_until = $1 WHERE email = $2 AND address = $3")
                .bind(block(failures))
                .bind(email)
                .bind(address)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(failures)
        })
    }

    /// The account linked to the provider identity (`issuer`, `subject`), if any.
    pub async fn user_by_external(&self, issuer: &str, subject: &str) -> Result<Option<UserRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {USER_COLUMNS} FROM users WHERE id = \
             (SELECT user_id FROM external_identities WHERE issuer = $1 AND subject = $2)"
            )))
            .bind(issuer)
            .bind(subject)
            .fetch_optional(pool)
            .await
        })
    }

    /// The subject the account is linked to at `issuer`, if any.
    pub async fn external_subject(&self, user_id: i64, issuer: &str) -> Result<Option<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT subject FROM external_identities WHERE user_id = $1 AND issuer = $2")
                .bind(user_id)
                .bind(issuer)
                .fetch_optional(pool)
                .await
        })
    }

    /// Links the account to the provider identity (`issuer`, `subject`).
    pub async fn link_external(&self, user_id: i64, issuer: &str, subject: &str) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO external_identities (issuer, subject, user_id, linked_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(issuer)
            .bind(subject)
            .bind(user_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// A successful sign-in clears that address's failures for the email.
    pub async fn clear_failed_logins(&self, email: &str, address: &str) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query("DELETE FROM login_failures WHERE email = $1 AND address = $2")
                .bind(email)
                .bind(address)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    // ---- teams and members ----

    pub async fn create_team(&self, name: &str, owner: i64) -> Result<i64> {
        write_tx!(self, |tx| {
            let team_id: i64 = sqlx::query_scalar("INSERT INTO teams (name, created_at) VALUES ($1, $2) RETURNING id")
                .bind(name)
                .bind(now_ms())
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO memberships (team_id, user_id, role) VALUES ($1, $2, 'owner')")
                .bind(team_id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(team_id)
        })
    }

    /// `(email, name, role)` of every member.
    pub async fn members(&self, team_id: i64) -> Result<Vec<(String, String, String)>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT u.email, u.name, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.team_id = $1 ORDER BY u.email",
            )
            .bind(team_id)
            .fetch_all(pool)
            .await
        })
    }

    pub async fn membership(&self, team_id: i64, user_id: i64) -> Result<Option<String>> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT role FROM memberships WHERE team_id = $1 AND user_id = $2")
                .bind(team_id)
                .bind(user_id)
                .fetch_optional(pool)
                .await
        })
    }

    /// Adds the member or changes their role.
    pub async fn set_membership(&self, team_id: i64, user_id: i64, role: &str) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO memberships (team_id, user_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role",
            )
            .bind(team_id)
            .bind(user_id)
            .bind(role)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn remove_membership(&self, team_id: i64, user_id: i64) -> Result<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query("DELETE FROM memberships WHERE team_id = $1 AND user_id = $2")
                .bind(team_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn owner_count(&self, team_id: i64) -> Result<i64> {
        with_pool!(self, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE team_id = $1 AND role = 'owner'")
                .bind(team_id)
                .fetch_one(pool)
                .await
        })
    }

    // ---- invitations ----

    pub async fn create_invitation(
        &self,
        token_hash: &str,
        team_id: i64,
        role: &str,
        email: Option<&str>,
        created_by: i64,
        expires_at: i64,
    ) -> Result<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO invitations (token_hash, team_id, role, email, created_by, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(token_hash)
            .bind(team_id)
            .bind(role)
            .bind(email)
            .bind(created_by)
            .bind(expires_at)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn invitation(&self, token_hash: &str) -> Result<Option<InvitationRow>> {
        with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT i.id, i.team_id, t.name AS team, i.role, i.email, i.expires_at, i.used_at \
             FROM invitations i JOIN teams t ON t.id = i.team_id WHERE i.token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(pool)
            .await
        })
    }

    /// Marks the invitation used; false if it was used (or expired) in the meantime.
    pub async fn use_invitation(&self, id: i64) -> Result<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE invitations SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND expires_at > $3",
            )
            .bind(now_ms())
            .bind(id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    // ---- tokens ----

    #[allow(clippy::too_many_arguments)]
    pub async fn create_token(
        &self,
        token_hash: &str,
        name: &str,
        user_id: i64,
        kind: &str,
        team_id: Option<i64>,
        role: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<i64> {
        write_tx!(self, |tx| {
            let written = sqlx::query_scalar(
                "INSERT INTO api_tokens (token_hash, name, user_id, kind, team_id, role, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(token_hash)
            .bind(name)
            .bind(user_id)
            .bind(kind)
            .bind(team_id)
            .bind(role)
            .bind(expires_at)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(written)
        })
    }

    pub async fn tokens_of_user(&self, user_id: i64) -> Result<Vec<TokenInfo>> {
        with_pool!(self, |pool| {
            #[derive(FromRow)]
            struct Row {
                id: i64,
                name: String,
                kind: String,
                team: Option<String>,
                role: Option<String>,
                created_at: i64,
                expires_at: Option<i64>,
                last_used_at: Option<i64>,
                revoked_at: Option<i64>,
            }
            let rows: Vec<Row> = sqlx::query_as(
            "SELECT k.id, k.name, k.kind, t.name AS team, k.role, k.created_at, k.expires_at, k.last_used_at, k.revoked_at \
             FROM api_tokens k LEFT JOIN teams t ON t.id = k.team_id WHERE k.user_id = $1 ORDER BY k.id",
        )
        .bind(user_id)
        .fetch_all(pool)
        .await?;
            Ok(rows
                .into_iter()
                .map(|r| TokenInfo {
                    id: r.id,
                    name: r.name,
                    kind: r.kind,
                    team: r.team,
                    role: r.role,
                    created_at: r.created_at,
                    expires_at: r.expires_at,
                    last_used_at: r.last_used_at,
                    revoked: r.revoked_at.is_some(),
                })
                .collect())
        })
    }

    /// Revokes the user's token `id`; false when the user has no such token.
    pub async fn revoke_token(&self, user_id: i64, id: i64) -> Result<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND user_id = $3",
            )
            .bind(now_ms())
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    // ---- audit ----

    /// Writes an audit record. Every text is cut to a bounded length first: most come from
    /// requests (an email typed at sign-in, a name in a refused call), and a stranger must not
    /// be able to write megabytes per request into the log.
    pub async fn audit(&self, record: AuditRecord) -> Result<()> {
        write_tx!(self, |tx| {
            let record = AuditRecord {
                actor: cap(record.actor, 320),
                action: cap(record.action, 64),
                team: record.team.map(|t| cap(t, 128)),
                app: record.app.map(|a| cap(a, 128)),
                target: record.target.map(|t| cap(t, 512)),
                address: record.address.map(|a| cap(a, 64)),
                outcome: cap(record.outcome, 32),
                detail: record.detail.map(|d| cap(d, 1024)),
                ..record
            };
            sqlx::query(
            "INSERT INTO audit_log (at, user_id, token_id, actor, action, team_id, team, app, target, address, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(now_ms())
        .bind(record.user_id)
        .bind(record.token_id)
        .bind(record.actor)
        .bind(record.action)
        .bind(record.team_id)
        .bind(record.team)
        .bind(record.app)
        .bind(record.target)
        .bind(record.address)
        .bind(record.outcome)
        .bind(record.detail)
        .execute(&mut *tx)
        .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Newest first; `team_id` None means every team (and instance-level records).
    pub async fn audit_entries(&self, team_id: Option<i64>, limit: i64) -> Result<Vec<AuditEntry>> {
        with_pool!(self, |pool| {
            #[derive(FromRow)]
            struct Row {
                id: i64,
                at: i64,
                actor: String,
                action: String,
                team: Option<String>,
                app: Option<String>,
                target: Option<String>,
                address: Option<String>,
                outcome: String,
                detail: Option<String>,
            }
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, at, actor, action, team, app, target, address, outcome, detail FROM audit_log \
             WHERE ($1 IS NULL OR team_id = $1) ORDER BY id DESC LIMIT $2",
            )
            .bind(team_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| AuditEntry {
                    id: r.id,
                    at: r.at,
                    actor: r.actor,
                    action: r.action,
                    team: r.team,
                    app: r.app,
                    target: r.target,
                    address: r.address,
                    outcome: r.outcome,
                    detail: r.detail,
                })
                .collect())
        })
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut, and
/// without NUL (PostgreSQL's text takes none; a request may carry one).
fn cap(mut text: String, max: usize) -> String {
    if text.contains('\0') {
        text = text.replace('\0', "\u{FFFD}");
    }
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::cap;

    #[test]
    fn audit_texts_are_cut_on_a_character_boundary() {
        assert_eq!(cap("short".into(), 10), "short");
        let cut = cap("é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
        assert_eq!(cap("x".repeat(2_000_000), 320).len(), 320);
        assert_eq!(cap("a\0b".into(), 10), "a\u{FFFD}b");
    }
}
