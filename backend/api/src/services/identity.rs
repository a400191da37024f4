//! Identity services: sign-in, passwords, users, teams, members, invitations, tokens, audit.
//! Every mutation is written to the audit log with its outcome, including refusals.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_wire::identity::{
    AcceptInvite, AddMember, AuditEntry, ChangePassword, CreateInvite, CreateToken, InviteCreated, Login,
    LoginResponse, Me, Member, TeamRole, TokenCreated, TokenInfo, UserInfo,
};

use berth_store::{AuditRecord, Store, UserRow};

use super::validate::validate_app_name;
use super::{Result, ServiceError, Services, invalid};
use crate::auth::{self, Action, Principal, Role};
use crate::clock::now_ms;
use crate::oidc::SignInError;

/// Failed sign-ins for one email from one address before that address must wait, the first
/// wait, and the longest (each further failure doubles it).
const FREE_FAILURES: i64 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Sign-in attempts allowed per client address per minute.
const ATTEMPTS_PER_MINUTE: u32 = 20;
/// Refused (rate-limited) attempts are audited once per address per window, with a count.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a token made by signing in from the CLI (`POST /login`) or by accepting an
/// invitation lasts; personal and team tokens have their own, chosen expiry.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Until when an address that has failed `failures` times in a row for an email must wait.
fn backoff_until(now: i64, failures: i64) -> i64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let doublings = u32::try_from(failures - FREE_FAILURES).unwrap_or(u32::MAX).min(16);
    let wait = FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF);
    now + wait.as_millis() as i64
}

/// Sign-in attempts per client address (an IPv6 address by its /64, which one client usually
/// holds whole): a burst of [`ATTEMPTS_PER_MINUTE`], refilled over a minute. Addresses quiet long
/// enough to be back at a full burst are forgotten, at most every few seconds.
pub struct LoginLimiter {
    limiter: governor::DefaultKeyedRateLimiter<String>,
    swept: Mutex<Instant>,
    /// Per address: when its current window of refused attempts began, and how many refusals
    /// in it were not audited one by one.
    refusals: Mutex<std::collections::HashMap<String, (Instant, u64)>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        let quota = governor::Quota::per_minute(std::num::NonZeroU32::new(ATTEMPTS_PER_MINUTE).expect("BUG: not 0"));
        LoginLimiter {
            limiter: governor::RateLimiter::keyed(quota),
            swept: Mutex::new(Instant::now()),
            refusals: Mutex::default(),
        }
    }
}

impl LoginLimiter {
    const SWEEP_EVERY: Duration = Duration::from_secs(5);

    /// A refused (rate-limited) attempt from `address`: whether to audit it, with how many
    /// refusals of the address's previous window went unaudited. One record per address per
    /// [`REFUSAL_WINDOW`], so a flood of refused attempts cannot flood the audit log.
    fn audit_refusal(&self, address: &str) -> Option<u64> {
        let mut refusals = self.refusals.lock().expect("BUG: refusal windows poisoned");
        if refusals.len() > 10_000 {
            refusals.retain(|_, (started, _)| started.elapsed() < REFUSAL_WINDOW);
        }
        let key = limiter_key(address);
        match refusals.get_mut(&key) {
            Some((started, unaudited)) if started.elapsed() < REFUSAL_WINDOW => {
                *unaudited += 1;
                None
            }
            Some(window) => Some(std::mem::replace(window, (Instant::now(), 0)).1),
            None => {
                refusals.insert(key, (Instant::now(), 0));
                Some(0)
            }
        }
    }

    fn allow(&self, address: &str) -> bool {
        let allowed = self.limiter.check_key(&limiter_key(address)).is_ok();
        let mut swept = self.swept.lock().expect("BUG: limiter lock poisoned");
        if swept.elapsed() >= Self::SWEEP_EVERY {
            *swept = Instant::now();
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        allowed
    }
}

/// The limiter's key for a client address: IPv6 by its /64.
fn limiter_key(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(std::net::IpAddr::V6(v6)) => v6.to_ipv4_mapped().expect("checked").to_string(),
        _ => address.to_string(),
    }
}

fn parse_role(field: &str, role: &str) -> Result<Role> {
    Role::parse(role).ok_or_else(|| invalid(field, format!("{role:?} is not a role: owner, admin, deployer or viewer")))
}

fn validate_email(email: &str) -> Result<String> {
    let email = email.trim().to_lowercase();
    let email = email.as_str();
    let domain_ok = |domain: &str| {
        domain == "localhost"
            || (domain.contains('.') && domain.split('.').all(|label| !label.is_empty() && label.len() <= 63))
    };
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && local.len() <= 64 && !domain.contains('@') && domain_ok(domain)
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email.to_string())
    } else {
        let shown: String = email.chars().take(64).collect();
        Err(invalid("email", format!("{shown:?} is not an email address")))
    }
}

fn validate_password(field: &str, password: &str) -> Result<()> {
    if password.chars().count() < auth::MIN_PASSWORD_LEN {
        return Err(invalid(field, format!("passwords need at least {} characters", auth::MIN_PASSWORD_LEN)));
    }
    if password.len() > auth::MAX_PASSWORD_LEN {
        return Err(invalid(field, format!("passwords may have at most {} bytes", auth::MAX_PASSWORD_LEN)));
    }
    Ok(())
}

fn generic_login_failure() -> ServiceError {
    ServiceError::Unauthorized(
        "wrong email or password, or the account is disabled (after repeated failures from one address, it must wait a while)".into(),
    )
}

impl Services {
    /// Writes one audit record. Failing to audit fails the request: an unaudited mutation must not
    /// look successful.
    pub(crate) async fn audit<T>(
        &self,
        principal: Option<&Principal>,
        action: &str,
        team: Option<&str>,
        app: Option<&str>,
        target: Option<&str>,
        result: &Result<T>,
    ) -> Result<()> {
        let (outcome, detail) = match result {
            Ok(_) => ("ok", None),
            Err(ServiceError::Forbidden(m) | ServiceError::Unauthorized(m) | ServiceError::NotFound(m)) => {
                ("denied", Some(m.clone()))
            }
            Err(ServiceError::TooManyRequests(m)) => ("denied", Some(m.clone())),
            Err(
                e @ (ServiceError::Validation { .. }
                | ServiceError::Conflict(_)
                | ServiceError::BadGateway(_)
                | ServiceError::NotLeader { .. }),
            ) => ("failed", Some(e.to_string())),
            Err(ServiceError::Internal(_)) => ("failed", Some("internal error".to_string())),
        };
        let team_id = match team {
            Some(team) => self.store.team_id(team).await?,
            None => None,
        };
        let record = AuditRecord {
            user_id: principal.map(|p| p.user_id),
            token_id: principal.map(|p| p.token_id),
            actor: principal.map_or_else(|| "anonymous".to_string(), |p| format!("{} (token {})", p.email, p.token_id)),
            action: action.to_string(),
            // Recorded under the team only when the caller belongs to it (or just created it):
            // outsiders' probing never shows in a team's log, members' refused attempts do.
            team_id: team_id
                .filter(|_| team.is_some_and(|t| principal.is_some_and(|p| p.role_in(t).is_some())) || result.is_ok()),
            team: team.map(str::to_string),
            app: app.map(str::to_string),
            target: target.map(str::to_string),
            address: principal.and_then(|p| p.address.clone()),
            outcome: outcome.to_string(),
            detail,
        };
        self.store.audit(record).await?;
        Ok(())
    }

    pub async fn login(&self, input: Login, address: Option<String>) -> Result<LoginResponse> {
        let email = input.email.trim().to_lowercase();
        let expires_at = now_ms() + LOGIN_TOKEN_TTL.as_millis() as i64;
        let result = self.login_inner(&email, &input.password, input.token_name, address.as_deref(), expires_at).await;
        self.audit_sign_in("login", email, address, result).await
    }

    /// Records a sign-in attempt (who tried, from where, whether it worked) and passes its result on.
    async fn audit_sign_in(
        &self,
        action: &str,
        email: String,
        address: Option<String>,
        result: Result<LoginResponse>,
    ) -> Result<LoginResponse> {
        let mut detail = None;
        if matches!(result, Err(ServiceError::TooManyRequests(_))) {
            match self.login_limiter.audit_refusal(address.as_deref().unwrap_or("unknown")) {
                None => return result,
                Some(unaudited) => {
                    detail = Some(format!(
                        "rate limited (further refusals from this address are counted for a minute, not recorded; \
                         {unaudited} were in the previous minute)"
                    ));
                }
            }
        }
        let record = AuditRecord {
            actor: email,
            action: action.into(),
            address,
            outcome: if result.is_ok() { "ok" } else { "denied" }.into(),
            user_id: result.as_ref().ok().map(|r| r.user.id),
            detail,
            ..AuditRecord::default()
        };
        self.store.audit(record).await?;
        result
    }

    /// Signs in to the dashboard: like [`Services::login`], but the login token expires after
    /// [`SESSION_TTL`] and becomes the session cookie.
    pub async fn sign_in_session(&self, email: &str, password: &str, address: Option<String>) -> Result<LoginResponse> {
        let email = email.trim().to_lowercase();
        let expires_at = now_ms() + SESSION_TTL.as_millis() as i64;
        let result = self.login_inner(&email, password, Some("dashboard".into()), address.as_deref(), expires_at).await;
        self.audit_sign_in("sign_in", email, address, result).await
    }

    /// Ends the caller's session: revokes the token it was made with.
    pub async fn sign_out(&self, principal: &Principal) -> Result<()> {
        self.store.revoke_token(principal.user_id, principal.token_id).await?;
        let done: Result<()> = Ok(());
        self.audit(Some(principal), "sign_out", None, None, None, &done).await
    }

    async fn login_inner(
        &self,
        email: &str,
        password: &str,
        token_name: Option<String>,
        address: Option<&str>,
        expires_at: i64,
    ) -> Result<LoginResponse> {
        let user = self.check_password(email, password, address).await?;
        let secret = auth::new_token();
        let name = token_name.unwrap_or_else(|| "sign-in".into());
        self.store
            .create_token(&auth::hash_token(&secret), &name, user.id, "login", None, None, Some(expires_at))
            .await?;
        Ok(LoginResponse { token: secret, user: self.me_of(&user).await? })
    }

    /// Checks a password for an account as every sign-in does (the API's, the dashboard's, an
    /// invitation accepted by an existing account): the per-address rate limit, then the backoff
    /// for this (email, address) pair, then argon2 (against a dummy hash for unknown accounts,
    /// so timing tells nothing), counting the failure. The answer never says which check failed.
    async fn check_password(&self, email: &str, password: &str, address: Option<&str>) -> Result<UserRow> {
        let address = self.rate_limit(address)?;
        self.verify_account(email, password, &address).await
    }

    /// One sign-in attempt from `address` (an invitation's acceptance counts as one too): refused
    /// past the address's rate; the address's key otherwise (IPv6 by its /64, as the limiter
    /// counts: one client cannot rotate through its block to escape the backoff).
    fn rate_limit(&self, address: Option<&str>) -> Result<String> {
        let address = limiter_key(address.unwrap_or("unknown"));
        if !self.login_limiter.allow(&address) {
            return Err(ServiceError::TooManyRequests(
                "too many sign-in attempts from this address; wait a minute".into(),
            ));
        }
        Ok(address)
    }

    /// The backoff, argon2 and failure accounting of [`Services::check_password`], for an
    /// attempt already counted by [`Services::rate_limit`].
    async fn verify_account(&self, email: &str, password: &str, address: &str) -> Result<UserRow> {
        // No account has control characters in its email (and PostgreSQL's text takes no NUL).
        if email.len() > 254 || email.chars().any(char::is_control) {
            return Err(generic_login_failure());
        }
        let now = now_ms();
        // Refused without argon2 work: the pair is waiting out its backoff (known and unknown
        // emails alike, so this says nothing about the account).
        if self.store.login_blocked_until(email, address).await?.is_some_and(|until| until > now) {
            return Err(generic_login_failure());
        }
        let user = self.store.user_by_email(email).await?;
        let verified = auth::verify_password(user.as_ref().and_then(|u| u.password_hash.as_deref()), password).await;
        match user {
            Some(user) if verified && !user.disabled => {
                self.store.clear_failed_logins(email, address).await?;
                Ok(user)
            }
            _ => {
                self.store.record_failed_login(email, address, now, |failures| backoff_until(now, failures)).await?;
                Err(generic_login_failure())
            }
        }
    }

    async fn me_of(&self, user: &UserRow) -> Result<Me> {
        let teams =
            self.store.memberships(user.id).await?.into_iter().map(|(_, team, role)| TeamRole { team, role }).collect();
        Ok(Me {
            id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
            instance_admin: user.is_instance_admin,
            teams,
        })
    }

    pub async fn me(&self, principal: &Principal) -> Result<Me> {
        let user = self
            .store
            .user(principal.user_id)
            .await?
            .ok_or_else(|| ServiceError::Unauthorized("no such user".into()))?;
        let mut me = self.me_of(&user).await?;
        // What this token can do, not what the user could.
        me.teams = principal
            .teams
            .iter()
            .map(|(_, team, role)| TeamRole { team: team.clone(), role: role.as_str().into() })
            .collect();
        me.instance_admin = principal.instance_admin;
        Ok(me)
    }

    /// Changes the caller's password and signs out every other session.
    pub async fn change_password(&self, principal: &Principal, input: ChangePassword) -> Result<()> {
        let result = async {
            validate_password("new", &input.new)?;
            // Like any sign-in (rate limit, backoff, failure count): a stolen token must not be a
            // way to guess the account's password.
            let user = match self.check_password(&principal.email, &input.current, principal.address.as_deref()).await {
                Ok(user) if user.id == principal.user_id => user,
                Ok(_) | Err(ServiceError::Unauthorized(_)) => {
                    return Err(invalid("current", "the current password is wrong"));
                }
                Err(other) => return Err(other),
            };
            let hash = auth::hash_password(&input.new).await?;
            self.store.set_password(user.id, &hash, Some(principal.token_id)).await?;
            Ok(())
        }
        .await;
        self.audit(Some(principal), "change_password", None, None, Some(&principal.email), &result).await?;
        result
    }

    pub async fn list_users(&self, principal: &Principal) -> Result<Vec<UserInfo>> {
        principal.require_instance_admin()?;
        Ok(self
            .store
            .users()
            .await?
            .into_iter()
            .map(|u| UserInfo {
                id: u.id,
                email: u.email,
                name: u.name,
                instance_admin: u.is_instance_admin,
                disabled: u.disabled,
            })
            .collect())
    }

    pub async fn set_user_disabled(&self, principal: &Principal, email: &str, disabled: bool) -> Result<()> {
        let result = async {
            principal.require_instance_admin()?;
            let user = self
                .store
                .user_by_email(email)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("user {email} not found")))?;
            if user.id == principal.user_id {
                return Err(ServiceError::Conflict("you cannot disable yourself".into()));
            }
            self.store.set_user_disabled(user.id, disabled).await?;
            Ok(())
        }
        .await;
        let action = if disabled { "disable_user" } else { "enable_user" };
        self.audit(Some(principal), action, None, None, Some(email), &result).await?;
        result
    }

    /// An instance admin sets a user's password; all the user's sessions end.
    pub async fn reset_password(&self, principal: &Principal, email: &str, password: &str) -> Result<()> {
        let result = async {
            principal.require_instance_admin()?;
            validate_password("password", password)?;
            let user = self
                .store
                .user_by_email(email)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("user {email} not found")))?;
            let hash = auth::hash_password(password).await?;
            self.store.set_password(user.id, &hash, None).await?;
            Ok(())
        }
        .await;
        self.audit(Some(principal), "reset_password", None, None, Some(email), &result).await?;
        result
    }

    pub async fn list_teams(&self, principal: &Principal) -> Result<Vec<TeamRole>> {
        Ok(principal
            .teams
            .iter()
            .map(|(_, team, role)| TeamRole { team: team.clone(), role: role.as_str().into() })
            .collect())
    }

    /// Any signed-in user may create a team and becomes its owner.
    pub async fn create_team(&self, principal: &Principal, name: &str) -> Result<TeamRole> {
        let result = async {
            if principal.token_kind == "team" {
                return Err(ServiceError::Forbidden("team tokens cannot create teams".into()));
            }
            validate_app_name(name).map_err(|_| invalid("name", "a team name is a DNS label"))?;
            match self.store.create_team(name, principal.user_id).await {
                Ok(_) => Ok(TeamRole { team: name.into(), role: "owner".into() }),
                Err(e) if berth_store::is_unique_violation(&e) => {
                    Err(ServiceError::Conflict(format!("a team named {name} already exists")))
                }
                Err(e) => Err(e.into()),
            }
        }
        .await;
        self.audit(Some(principal), "create_team", Some(name), None, None, &result).await?;
        result
    }

    pub async fn members(&self, principal: &Principal, team: &str) -> Result<Vec<Member>> {
        let team_id = principal.require(team, Action::ViewMembers)?;
        Ok(self
            .store
            .members(team_id)
            .await?
            .into_iter()
            .map(|(email, name, role)| Member { email, name, role })
            .collect())
    }

    /// Adds an existing user, or changes a member's role: never above the caller's own role, and
    /// only owners touch owners.
    pub async fn set_member(&self, principal: &Principal, team: &str, input: AddMember) -> Result<Member> {
        let result = async {
            let team_id = principal.require(team, Action::ManageMembers)?;
            let role = parse_role("role", &input.role)?;
            let email = validate_email(&input.email)?;
            let mine = principal.role_in(team).expect("BUG: require() found the membership");
            if role > mine {
                return Err(ServiceError::Forbidden(format!(
                    "you cannot grant {} (your role is {})",
                    role.as_str(),
                    mine.as_str()
                )));
            }
            let user = self.store.user_by_email(&email).await?.ok_or_else(|| {
                ServiceError::NotFound(format!("no user {email}; invite them with `berth invites create`"))
            })?;
            let current = self.store.membership(team_id, user.id).await?.and_then(|r| Role::parse(&r));
            if current == Some(Role::Owner) && mine != Role::Owner {
                return Err(ServiceError::Forbidden("only owners can change an owner's role".into()));
            }
            if current == Some(Role::Owner) && role != Role::Owner && self.store.owner_count(team_id).await? <= 1 {
                return Err(ServiceError::Conflict("a team keeps at least one owner".into()));
            }
            self.store.set_membership(team_id, user.id, role.as_str()).await?;
            Ok(Member { email, name: user.name, role: role.as_str().into() })
        }
        .await;
        self.audit(Some(principal), "set_member", Some(team), None, Some(&input.email), &result).await?;
        result
    }

    pub async fn remove_member(&self, principal: &Principal, team: &str, email: &str) -> Result<()> {
        let result = async {
            let team_id = principal.require(team, Action::ManageMembers)?;
            let not_member = || ServiceError::NotFound(format!("{email} is not a member of {team}"));
            let user = self.store.user_by_email(&email.trim().to_lowercase()).await?.ok_or_else(not_member)?;
            let current =
                self.store.membership(team_id, user.id).await?.and_then(|r| Role::parse(&r)).ok_or_else(not_member)?;
            let mine = principal.role_in(team).expect("BUG: require() found the membership");
            if current == Role::Owner && mine != Role::Owner {
                return Err(ServiceError::Forbidden("only owners can remove an owner".into()));
            }
            if current == Role::Owner && self.store.owner_count(team_id).await? <= 1 {
                return Err(ServiceError::Conflict("a team keeps at least one owner".into()));
            }
            self.store.remove_membership(team_id, user.id).await?;
            Ok(())
        }
        .await;
        self.audit(Some(principal), "remove_member", Some(team), None, Some(email), &result).await?;
        result
    }

    pub async fn create_invite(&self, principal: &Principal, team: &str, input: CreateInvite) -> Result<InviteCreated> {
        let result = async {
            let team_id = principal.require(team, Action::ManageMembers)?;
            let role = parse_role("role", &input.role)?;
            let mine = principal.role_in(team).expect("BUG: require() found the membership");
            if role > mine {
                return Err(ServiceError::Forbidden(format!(
                    "you cannot invite as {} (your role is {})",
                    role.as_str(),
                    mine.as_str()
                )));
            }
            let email = input.email.as_deref().map(validate_email).transpose()?;
            let ttl = input.ttl_secs.unwrap_or(7 * 24 * 3600);
            if ttl == 0 || ttl > 30 * 24 * 3600 {
                return Err(invalid("ttl_secs", "an invitation lasts between 1 second and 30 days"));
            }
            let token = format!("berth_invite_{}", auth::new_token().trim_start_matches("berth_"));
            let expires_at = now_ms() + ttl as i64 * 1000;
            self.store
                .create_invitation(
                    &auth::hash_token(&token),
                    team_id,
                    role.as_str(),
                    email.as_deref(),
                    principal.user_id,
                    expires_at,
                )
                .await?;
            Ok(InviteCreated { token, team: team.into(), role: role.as_str().into(), expires_at })
        }
        .await;
        self.audit(Some(principal), "create_invite", Some(team), None, input.email.as_deref(), &result).await?;
        result
    }

    /// Accepts an invitation: creates the account (or checks an existing one's password) and joins
    /// the team. The invitation works once.
    pub async fn accept_invite(
        &self,
        token: &str,
        input: AcceptInvite,
        address: Option<String>,
    ) -> Result<LoginResponse> {
        let email = input.email.trim().to_lowercase();
        let result = async {
            // Counted before the invitation is looked up: guessing secrets costs attempts too.
            let limited = self.rate_limit(address.as_deref())?;
            let email = validate_email(&email)?;
            let invalid_invite = || ServiceError::NotFound("the invitation is not valid, expired or used".into());
            let invite = self.store.invitation(&auth::hash_token(token)).await?.ok_or_else(invalid_invite)?;
            if invite.used_at.is_some() || invite.expires_at <= now_ms() {
                return Err(invalid_invite());
            }
            if invite.email.as_ref().is_some_and(|e| *e != email) {
                return Err(ServiceError::Forbidden("this invitation is for another address".into()));
            }
            let user = match self.store.user_by_email(&email).await? {
                // An existing account proves its password exactly as signing in does: same rate
                // limit, same backoff, same failure accounting (else an invitation would be an
                // unthrottled password oracle for any account).
                Some(_) => self.verify_account(&email, &input.password, &limited).await?,
                None => {
                    validate_password("password", &input.password)?;
                    let name =
                        input.name.clone().unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_string());
                    let hash = auth::hash_password(&input.password).await?;
                    let id = self.store.create_user(&email, &name, &hash).await?;
                    self.store.user(id).await?.expect("BUG: the user was just created")
                }
            };
            if !self.store.use_invitation(invite.id).await? {
                return Err(invalid_invite());
            }
            // Never lower an existing role through an invitation.
            let current = self.store.membership(invite.team_id, user.id).await?.and_then(|r| Role::parse(&r));
            let offered = Role::parse(&invite.role).expect("BUG: the schema only admits known roles");
            if current.is_none_or(|c| c < offered) {
                self.store.set_membership(invite.team_id, user.id, offered.as_str()).await?;
            }
            let secret = auth::new_token();
            let expires_at = now_ms() + LOGIN_TOKEN_TTL.as_millis() as i64;
            self.store
                .create_token(&auth::hash_token(&secret), "sign-in", user.id, "login", None, None, Some(expires_at))
                .await?;
            Ok((invite.team, LoginResponse { token: secret, user: self.me_of(&user).await? }))
        }
        .await;
        // Refusals by the rate limit: one record per address per window, as for sign-in.
        let mut detail = result.as_ref().err().map(ToString::to_string);
        if matches!(result, Err(ServiceError::TooManyRequests(_))) {
            match self.login_limiter.audit_refusal(address.as_deref().unwrap_or("unknown")) {
                None => return result.map(|(_, response)| response),
                Some(unaudited) => detail = Some(format!("rate limited; {unaudited} refusals in the previous minute")),
            }
        }
        let record = AuditRecord {
            actor: email.clone(),
            action: "accept_invite".into(),
            address,
            team: result.as_ref().ok().map(|(team, _)| team.clone()),
            team_id: match &result {
                Ok((team, _)) => self.store.team_id(team).await?,
                Err(_) => None,
            },
            user_id: result.as_ref().ok().map(|(_, r)| r.user.id),
            outcome: if result.is_ok() { "ok" } else { "denied" }.into(),
            detail,
            ..AuditRecord::default()
        };
        self.store.audit(record).await?;
        result.map(|(_, response)| response)
    }

    pub async fn list_tokens(&self, principal: &Principal) -> Result<Vec<TokenInfo>> {
        Ok(self.store.tokens_of_user(principal.user_id).await?)
    }

    /// A personal token acts as its creator; a team token only in that team, at most at `role`,
    /// which may not exceed the creator's own role there.
    pub async fn create_token(&self, principal: &Principal, input: CreateToken) -> Result<TokenCreated> {
        let result = async {
            let name = input.name.trim();
            if name.is_empty() || name.len() > 100 {
                return Err(invalid("name", "a token needs a name of 1-100 characters"));
            }
            if principal.token_kind == "team" {
                return Err(ServiceError::Forbidden("team tokens cannot create tokens".into()));
            }
            let expires_at = match input.expires_in_secs {
                Some(0) => return Err(invalid("expires_in_secs", "the lifetime must be positive")),
                Some(secs) => Some(now_ms() + (secs.min(10 * 365 * 24 * 3600) as i64) * 1000),
                None => None,
            };
            let (kind, team_id, role) = match (&input.team, &input.role) {
                (None, None) => ("personal", None, None),
                (None, Some(_)) => return Err(invalid("team", "a token with a role is a team token: name the team")),
                (Some(team), role) => {
                    let team_id = principal.require(team, Action::CreateTeamTokens)?;
                    let mine = principal.role_in(team).expect("BUG: require() found the membership");
                    let role = match role {
                        Some(role) => parse_role("role", role)?,
                        None => mine,
                    };
                    if role > mine {
                        return Err(ServiceError::Forbidden(format!(
                            "a token cannot carry {} (your role is {})",
                            role.as_str(),
                            mine.as_str()
                        )));
                    }
                    ("team", Some(team_id), Some(role.as_str()))
                }
            };
            let secret = auth::new_token();
            let id = self
                .store
                .create_token(&auth::hash_token(&secret), name, principal.user_id, kind, team_id, role, expires_at)
                .await?;
            Ok(TokenCreated { id, token: secret })
        }
        .await;
        self.audit(Some(principal), "create_token", input.team.as_deref(), None, Some(&input.name), &result).await?;
        result
    }

    pub async fn revoke_token(&self, principal: &Principal, id: i64) -> Result<()> {
        let result = async {
            if !self.store.revoke_token(principal.user_id, id).await? {
                return Err(ServiceError::NotFound(format!("token {id} not found")));
            }
            Ok(())
        }
        .await;
        self.audit(Some(principal), "revoke_token", None, None, Some(&id.to_string()), &result).await?;
        result
    }

    pub async fn team_audit(&self, principal: &Principal, team: &str, limit: i64) -> Result<Vec<AuditEntry>> {
        let team_id = principal.require(team, Action::ViewAudit)?;
        Ok(self.store.audit_entries(Some(team_id), limit.clamp(1, 1000)).await?)
    }

    pub async fn all_audit(&self, principal: &Principal, limit: i64) -> Result<Vec<AuditEntry>> {
        principal.require_instance_admin()?;
        Ok(self.store.audit_entries(None, limit.clamp(1, 1000)).await?)
    }

    pub fn sign_in_providers(&self) -> Vec<String> {
        self.sign_in.provider_names()
    }

    /// The provider URL a browser goes to, to sign in, and the flow's state (to bind to the
    /// browser).
    /// Counted against the address's sign-in attempts: the endpoint is public, and each start
    /// holds a pending flow for ten minutes.
    pub async fn external_sign_in_start(&self, provider: &str, address: Option<&str>) -> Result<(String, String)> {
        if !self.login_limiter.allow(&limiter_key(address.unwrap_or("unknown"))) {
            return Err(ServiceError::TooManyRequests(
                "too many sign-in attempts from this address; wait a minute".into(),
            ));
        }
        self.sign_in.start(provider).await.map_err(|e| match e {
            SignInError::UnknownProvider(_) => ServiceError::NotFound(e.to_string()),
            SignInError::Busy => ServiceError::TooManyRequests(e.to_string()),
            SignInError::Provider(_) => {
                tracing::warn!(provider, error = %e, "starting an external sign-in failed at the provider");
                ServiceError::BadGateway(e.to_string())
            }
            other => ServiceError::Internal(anyhow::Error::new(other)),
        })
    }

    /// The provider sent the browser back: link the verified email to its account (creating it
    /// when an auto-join rule covers its domain) and sign in.
    pub async fn external_sign_in_finish(
        &self,
        provider: &str,
        code: &str,
        state: &str,
        address: Option<String>,
    ) -> Result<LoginResponse> {
        let identity = self.sign_in.finish(provider, code, state).await;
        let result = match identity {
            Ok(identity) => self.link_external(provider, identity).await,
            Err(SignInError::UnknownProvider(p)) => {
                Err(ServiceError::NotFound(format!("no sign-in provider named {p}")))
            }
            Err(e @ SignInError::Provider(_)) => {
                tracing::warn!(provider, error = %e, "external sign-in failed at the provider");
                Err(ServiceError::Unauthorized(e.to_string()))
            }
            Err(e) => Err(ServiceError::Unauthorized(e.to_string())),
        };
        let record = AuditRecord {
            actor: result.as_ref().map_or_else(|_| format!("via {provider}"), |r| r.user.email.clone()),
            action: "login".into(),
            target: Some(provider.to_string()),
            address,
            outcome: if result.is_ok() { "ok" } else { "denied" }.into(),
            user_id: result.as_ref().ok().map(|r| r.user.id),
            detail: result.as_ref().err().map(ToString::to_string),
            ..AuditRecord::default()
        };
        self.store.audit(record).await?;
        result
    }

    /// The account of a provider identity: the one linked to its (issuer, subject); else, the
    /// first time, the account of its verified email, unless that account is already linked to
    /// another identity of the same provider; else a new account under an auto-join rule. The
    /// link is recorded, so a later change of email at the provider changes nothing here.
    async fn link_external(&self, provider: &str, identity: crate::oidc::Identity) -> Result<LoginResponse> {
        let linked = self.store.user_by_external(&identity.issuer, &identity.subject).await?;
        let by_email = match linked {
            Some(_) => None,
            None => self.store.user_by_email(&identity.email).await?,
        };
        if let Some(user) = &by_email
            && self.store.external_subject(user.id, &identity.issuer).await?.is_some()
        {
            return Err(ServiceError::Forbidden(format!(
                "the account {} is linked to another {provider} identity",
                identity.email
            )));
        }
        let user = match linked.or(by_email) {
            Some(user) if user.disabled => return Err(generic_login_failure()),
            Some(user) => user,
            None => {
                let domain = identity.email.rsplit('@').next().unwrap_or_default().to_string();
                let provider = self.sign_in.provider(provider).map_err(|e| ServiceError::NotFound(e.to_string()))?;
                let rules: Vec<_> = provider.auto_join.iter().filter(|r| r.domain == domain).cloned().collect();
                if rules.is_empty() {
                    return Err(ServiceError::Forbidden(format!(
                        "no account for {}; ask a team admin for an invitation",
                        identity.email
                    )));
                }
                let name = identity
                    .name
                    .clone()
                    .unwrap_or_else(|| identity.email.split('@').next().unwrap_or_default().into());
                // No password: this account signs in through its provider (or gets one reset).
                let id = self.store.create_user(&identity.email, &name, "").await?;
                for rule in rules {
                    let role = parse_role("auto-join", &rule.role)?;
                    if let Some(team_id) = self.store.team_id(&rule.team).await? {
                        self.store.set_membership(team_id, id, role.as_str()).await?;
                    }
                }
                self.store.user(id).await?.expect("BUG: the user was just created")
            }
        };
        if self.store.external_subject(user.id, &identity.issuer).await?.is_none() {
            self.store.link_external(user.id, &identity.issuer, &identity.subject).await?;
        }
        let secret = auth::new_token();
        let name = format!("sign-in via {provider}");
        let expires_at = Some(now_ms() + SESSION_TTL.as_millis() as i64);
        self.store.create_token(&auth::hash_token(&secret), &name, user.id, "login", None, None, expires_at).await?;
        Ok(LoginResponse { token: secret, user: self.me_of(&user).await? })
    }
}

/// `berth admin set-password`: sets a user's password directly in a data directory's store
/// (no server running) and revokes their sign-in tokens, dashboard sessions included. Audited
/// like a reset through the API.
pub async fn set_password_offline(store: &Store, email: &str, password: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    validate_password("password", password)?;
    let email = email.trim().to_lowercase();
    let user = store.user_by_email(&email).await?.with_context(|| format!("no user {email}"))?;
    let hash = auth::hash_password(password).await?;
    store.set_password(user.id, &hash, None).await?;
    let record = AuditRecord {
        actor: "berth admin set-password".into(),
        action: "reset_password".into(),
        target: Some(email),
        outcome: "ok".into(),
        ..Default::default()
    };
    store.audit(record).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_is_one_limiter_key_even_across_its_ipv6_block() {
        assert_eq!(limiter_key("2001:db8:1:2:aaaa::1"), limiter_key("2001:db8:1:2:bbbb::9"));
        assert_ne!(limiter_key("2001:db8:1:2::1"), limiter_key("2001:db8:1:3::1"));
        assert_eq!(limiter_key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(limiter_key("192.0.2.7"), "192.0.2.7");
        assert_eq!(limiter_key("unknown"), "unknown");
    }

    #[test]
    fn failures_past_the_free_ones_double_the_wait_up_to_a_cap() {
        assert_eq!(backoff_until(1000, FREE_FAILURES - 1), 0);
        assert_eq!(backoff_until(1000, FREE_FAILURES), 1000 + 30_000);
        assert_eq!(backoff_until(1000, FREE_FAILURES + 1), 1000 + 60_000);
        assert_eq!(backoff_until(1000, FREE_FAILURES + 40), 1000 + 15 * 60_000);
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain_or_localhost() {
        assert_eq!(validate_email(" Admin@Localhost ").unwrap(), "admin@localhost");
        assert_eq!(validate_email("dev@example.com").unwrap(), "dev@example.com");
        for bad in [
            "@localhost",
            "@example.com",
            "dev@",
            "dev",
            "dev@example",
            "a@b@example.com",
            "dev@example..com",
            "dev@.example.com",
            "de v@example.com",
            "dev@exa\tmple.com",
        ] {
            assert!(validate_email(bad).is_err(), "{bad:?} must be refused");
        }
        let long = format!("{}@example.com", "a".repeat(300));
        let message = validate_email(&long).unwrap_err().to_string();
        assert!(message.len() < 200, "the error does not echo the whole input: {message}");
    }
}
