//! Who is calling, and what they may do: bearer tokens, principals, roles and the one permission
//! check that both the REST API and the dashboard go through.

use rand::RngCore;
use sha2::{Digest, Sha256};

use berth_store::Store;

use crate::clock::now_ms;

/// Why a caller may not do something. The service layer turns it into its own error.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The team does not exist, or the caller may not know that it does.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("reading credentials failed")]
    Store(#[from] sqlx::Error),
}

/// Team roles, from least to most powerful (the order `Ord` compares them in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    Viewer,
    Deployer,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Deployer, Role::Admin, Role::Owner];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Role> {
        s.parse().ok()
    }
}

/// Everything a caller can ask of a team. The permission matrix lives in [`Action::minimum_role`]
/// and is written out in `docs/permissions.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// List and show apps, releases, replicas; read logs.
    ViewApps,
    /// Create, deploy, scale, roll back.
    DeployApps,
    /// Delete apps.
    DeleteApps,
    /// List the team's members.
    ViewMembers,
    /// Add, remove and change members, invite (never above one's own role).
    ManageMembers,
    /// Create API tokens for the team (never above one's own role).
    CreateTeamTokens,
    /// Read the team's audit log.
    ViewAudit,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::ViewApps,
        Action::DeployApps,
        Action::DeleteApps,
        Action::ViewMembers,
        Action::ManageMembers,
        Action::CreateTeamTokens,
        Action::ViewAudit,
    ];

    pub fn minimum_role(self) -> Role {
        match self {
            Action::ViewApps | Action::ViewMembers => Role::Viewer,
            Action::DeployApps | Action::CreateTeamTokens => Role::Deployer,
            Action::DeleteApps | Action::ManageMembers | Action::ViewAudit => Role::Admin,
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: i64,
    pub email: String,
    pub token_id: i64,
    /// `personal`, `team` or `login`.
    pub token_kind: String,
    pub instance_admin: bool,
    /// The client's address, for the audit log.
    pub address: Option<String>,
    /// `(team id, team name, role)`, already narrowed by the token's own team and role.
    pub teams: Vec<(i64, String, Role)>,
}

impl Principal {
    /// The caller's role in `team`, if a member.
    pub fn role_in(&self, team: &str) -> Option<Role> {
        self.teams.iter().find(|(_, name, _)| name == team).map(|(_, _, role)| *role)
    }

    /// The team's id if the caller may perform `action` in it. A team the caller does not belong
    /// to is reported as not found, so its existence is never revealed.
    pub fn require(&self, team: &str, action: Action) -> Result<i64, AuthError> {
        let Some((team_id, _, role)) = self.teams.iter().find(|(_, name, _)| name == team) else {
            return Err(AuthError::NotFound(format!("team {team} not found")));
        };
        if *role >= action.minimum_role() {
            Ok(*team_id)
        } else {
            Err(AuthError::Forbidden(format!(
                "your role in team {team} does not allow this (needs {:?} or above)",
                action.minimum_role()
            )))
        }
    }
}

impl Principal {
    /// Hosts, join tokens and privileged options are for instance admins alone.
    pub fn require_instance_admin(&self) -> Result<(), AuthError> {
        if self.instance_admin { Ok(()) } else { Err(AuthError::Forbidden("only instance admins may do this".into())) }
    }
}

/// A new random API token secret (shown once; only its hash is stored).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("berth_{}", hex::encode(bytes))
}

pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Resolves a bearer token to its principal. Lookup is by hash, so the secret itself is never
/// compared byte by byte against stored data.
pub async fn authenticate(store: &Store, secret: &str) -> Result<Principal, AuthError> {
    let row = store.token(&hash_token(secret)).await?;
    principal_of(store, row).await
}

/// The principal `principal`'s token stands for now: an open stream checks with it that its
/// token was not revoked, has not expired, its user is not disabled, and which teams it still
/// reaches (the address it connected from is kept).
pub async fn reauthenticate(store: &Store, principal: &Principal) -> Result<Principal, AuthError> {
    let row = store.token_by_id(principal.token_id).await?;
    let fresh = principal_of(store, row).await?;
    Ok(Principal { address: principal.address.clone(), ..fresh })
}

async fn principal_of(store: &Store, row: Option<berth_store::TokenRow>) -> Result<Principal, AuthError> {
    let unauthorized = || AuthError::Unauthorized("the token is not valid".into());
    let row = row.ok_or_else(unauthorized)?;
    if row.revoked_at.is_some() || row.disabled || row.expires_at.is_some_and(|at| at <= now_ms()) {
        return Err(unauthorized());
    }
    let token_role = row.role.as_deref().and_then(Role::parse);
    let teams = store
        .memberships(row.user_id)
        .await?
        .into_iter()
        .filter(|(team_id, _, _)| row.team_id.is_none_or(|t| t == *team_id))
        .filter_map(|(team_id, name, role)| {
            let role = Role::parse(&role)?;
            // A token never carries more than its creator's role.
            let role = token_role.map_or(role, |cap| role.min(cap));
            Some((team_id, name, role))
        })
        .collect();
    Ok(Principal {
        user_id: row.user_id,
        email: row.email,
        token_id: row.token_id,
        token_kind: row.kind,
        // A team token never carries instance-admin powers.
        instance_admin: row.is_instance_admin && row.team_id.is_none(),
        address: None,
        teams,
    })
}

/// Longest password accepted (argon2 takes any length; a megabyte of it is only a cost).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// How many argon2 computations run at once. Each takes ~19 MiB and a core for tens of
/// milliseconds, so hundreds of parallel sign-in requests would otherwise cost gigabytes; the
/// rest wait their turn.
fn argon2_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores.clamp(2, 8))
    })
}

/// Hashes a password with argon2id (off the async threads: it is deliberately slow).
pub async fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let password = password.to_string();
    let _permit = argon2_permits().acquire().await.expect("BUG: the argon2 semaphore is never closed");
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing the password failed: {e}"))
    })
    .await?
}

/// Checks a password against its argon2 hash. Without a hash, a dummy one is checked so the
/// answer takes as long as for a real account.
pub async fn verify_password(hash: Option<&str>, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0Ll6WXc9v0ZQ7JnEbpg1mYq9K5W0tTlVAq0aZpPmH1Y";
    let (hash, real) = match hash {
        Some(hash) => (hash.to_string(), true),
        None => (DUMMY.to_string(), false),
    };
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    let password = password.to_string();
    let _permit = argon2_permits().acquire().await.expect("BUG: the argon2 semaphore is never closed");
    let verified = tokio::task::spawn_blocking(move || {
        #[cfg(test)]
        let _running = tests::Running::enter();
        PasswordHash::new(&hash)
            .is_ok_and(|parsed| argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .unwrap_or(false);
    verified && real
}

pub const MIN_PASSWORD_LEN: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// Counts argon2 verifications running at once (the peak is what the test reads).
    pub(super) struct Running;

    impl Running {
        pub(super) fn enter() -> Running {
            let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
            PEAK.fetch_max(now, Ordering::SeqCst);
            Running
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            RUNNING.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn argon2_work_is_bounded_however_many_sign_ins_arrive() {
        let hash = hash_password("correct horse battery").await.unwrap();
        let attempts: Vec<_> = (0..40)
            .map(|i| {
                let hash = hash.clone();
                tokio::spawn(async move { verify_password(Some(&hash), &format!("guess {i}")).await })
            })
            .collect();
        for attempt in attempts {
            assert!(!attempt.await.unwrap());
        }
        let permits = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
        let peak = PEAK.load(Ordering::SeqCst);
        assert!((1..=permits).contains(&peak), "{peak} verifications ran at once; at most {permits} may");
        assert!(!verify_password(Some(&hash), &"x".repeat(MAX_PASSWORD_LEN + 1)).await, "over-long passwords fail");
    }

    fn principal(role: Role) -> Principal {
        Principal {
            user_id: 1,
            email: "a@b".into(),
            token_id: 1,
            token_kind: "personal".into(),
            instance_admin: false,
            address: None,
            teams: vec![(7, "main".into(), role)],
        }
    }

    /// The table in docs/permissions.md is the matrix `Action::minimum_role` enforces.
    #[test]
    fn the_documented_matrix_is_the_enforced_one() {
        let doc = include_str!("../../../docs/permissions.md");
        let rows: Vec<Vec<&str>> = doc
            .lines()
            .skip_while(|l| !l.starts_with("| action |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows.len(), Action::ALL.len(), "one row per action");
        for (row, action) in rows.iter().zip(Action::ALL) {
            for (cell, role) in row[1..].iter().zip(Role::ALL) {
                let allowed = role >= action.minimum_role();
                assert_eq!(*cell == "yes", allowed, "{action:?} for {role:?}: the doc says {cell}");
            }
        }
    }

    #[tokio::test]
    async fn passwords_are_hashed_with_argon2id_and_verified() {
        let hash = hash_password("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(Some(&hash), "correct horse battery").await);
        assert!(!verify_password(Some(&hash), "wrong horse battery").await);
        assert!(!verify_password(None, "anything").await);
    }

    #[test]
    fn roles_allow_what_the_matrix_says() {
        assert!(principal(Role::Viewer).require("main", Action::ViewApps).is_ok());
        assert!(matches!(principal(Role::Viewer).require("main", Action::DeployApps), Err(AuthError::Forbidden(_))));
        assert!(principal(Role::Deployer).require("main", Action::DeployApps).is_ok());
        assert!(matches!(principal(Role::Deployer).require("main", Action::DeleteApps), Err(AuthError::Forbidden(_))));
        assert_eq!(principal(Role::Owner).require("main", Action::DeleteApps).unwrap(), 7);
    }

    #[test]
    fn foreign_teams_are_not_found_rather_than_forbidden() {
        assert!(matches!(principal(Role::Owner).require("other", Action::ViewApps), Err(AuthError::NotFound(_))));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token();
        assert_ne!(a, new_token());
        assert!(a.starts_with("berth_"));
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }
}
