//! Users, teams, members, invitations, API tokens and the audit log.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Login {
    pub email: String,
    pub password: String,
    /// Shown in token lists (`berth login on laptop`).
    #[serde(default)]
    pub token_name: Option<String>,
}

/// A new login token (shown once) and who it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LoginResponse {
    pub token: String,
    pub user: Me,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TeamRole {
    pub team: String,
    /// `owner`, `admin`, `deployer` or `viewer`.
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Me {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub instance_admin: bool,
    pub teams: Vec<TeamRole>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ChangePassword {
    pub current: String,
    pub new: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UserInfo {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub instance_admin: bool,
    pub disabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResetPassword {
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateTeam {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Member {
    pub email: String,
    pub name: String,
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AddMember {
    pub email: String,
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SetRole {
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateInvite {
    pub role: String,
    /// When set, only this address can accept.
    #[serde(default)]
    pub email: Option<String>,
    /// Lifetime in seconds (default 7 days).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InviteCreated {
    /// The secret; the invitee accepts at `POST /api/v1/invites/{token}/accept`.
    pub token: String,
    pub team: String,
    pub role: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AcceptInvite {
    pub email: String,
    /// For a new account.
    #[serde(default)]
    pub name: Option<String>,
    /// A new account's password, or an existing account's current one.
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateToken {
    pub name: String,
    /// A team token (for CI): only this team, at most `role`.
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenCreated {
    pub id: i64,
    /// The secret, shown once.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    /// `personal`, `team` or `login`.
    pub kind: String,
    pub team: Option<String>,
    pub role: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    /// `user@example.com` or `user@example.com (token 12)`.
    pub actor: String,
    pub action: String,
    pub team: Option<String>,
    pub app: Option<String>,
    pub target: Option<String>,
    pub address: Option<String>,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    pub detail: Option<String>,
}
