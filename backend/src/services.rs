//! The service layer: every operation a user can ask for, with its validation and its permission
//! check. The REST API (and later the dashboard) call only this; nothing else checks permissions.

use std::collections::BTreeMap;

use berth_wire::AppSpec;
use berth_wire::agent::{ContainerPhase, HostCapacity, JoinRequest, JoinResponse};
use berth_wire::api::{
    AppDetail, AppMetrics, AppSummary, CreateApp, Deploy, LogLine, ReleaseAccepted, ReleaseInfo, ReleaseState,
    ReplicaInfo, TrafficPoint,
};
use berth_wire::api::{CreateJoinToken, HostInfo, HostReplica, JoinTokenCreated};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::auth::{self, Action, Principal};

mod identity;
use crate::orchestrator::Orchestrator;
use crate::store::{self, AppRow, ReleaseRow, Store};
pub use identity::SESSION_TTL;
pub(crate) use identity::validate_password;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ServiceError {
    fn from(error: sqlx::Error) -> Self {
        ServiceError::Internal(anyhow::Error::new(error).context("database error"))
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::Validation { field: field.to_string(), message: message.into() }
}

pub const MAX_REPLICAS: u32 = 100;

/// An app name is one DNS label, because it becomes the first label of the app's host name.
pub fn validate_app_name(name: &str) -> Result<()> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 || !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(
            "name",
            format!(
                "{name:?} is not a DNS label: use 1-63 lower-case letters, digits and '-', not starting or ending with '-'"
            ),
        ));
    }
    Ok(())
}

pub fn validate_spec(spec: &AppSpec) -> Result<()> {
    let image = spec.image.as_str();
    if image.is_empty() || image.len() > 255 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("image", "the image must be a non-empty reference without spaces, at most 255 characters"));
    }
    if spec.port == 0 {
        return Err(invalid("port", "the port must be between 1 and 65535"));
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(invalid("replicas", format!("at most {MAX_REPLICAS} replicas")));
    }
    for (key, value) in &spec.env {
        let mut chars = key.chars();
        let valid_key = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(invalid(
                "env",
                format!("{key:?} is not a valid variable name (letters, digits, '_'; not starting with a digit)"),
            ));
        }
        if value.contains('\0') {
            return Err(invalid("env", format!("the value of {key} contains a NUL byte")));
        }
    }
    if let Some(path) = &spec.health_path
        && (!path.starts_with('/') || path.len() > 1024 || path.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(invalid("health_path", "the health path must start with '/' and contain no spaces"));
    }
    if let Some(cpu) = spec.cpu_millis
        && !(10..=256_000).contains(&cpu)
    {
        return Err(invalid("cpu_millis", "the CPU limit must be between 10 and 256000 millicores"));
    }
    for mount in &spec.privileges.mounts {
        if !mount.source.starts_with('/')
            || !mount.target.starts_with('/')
            || mount.source.contains(':')
            || mount.target.contains(':')
        {
            return Err(invalid(
                "privileges",
                format!("{} -> {}: mounts need absolute paths without ':'", mount.source, mount.target),
            ));
        }
    }
    if let Some(cap) =
        spec.privileges.cap_add.iter().find(|c| c.is_empty() || !c.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    {
        return Err(invalid("privileges", format!("{cap:?} is not a capability name (like NET_ADMIN)")));
    }
    for (key, value) in &spec.constraints {
        if !valid_label(key) || !valid_label(value) {
            return Err(invalid(
                "constraints",
                format!("{key}={value} is not a valid label (letters, digits, '.', '_', '-', '/')"),
            ));
        }
    }
    if let Some(memory) = spec.memory_mb
        && !(6..=4_194_304).contains(&memory)
    {
        return Err(invalid("memory_mb", "the memory limit must be between 6 MiB and 4 TiB"));
    }
    Ok(())
}

/// Privileged options amount to root on the host, and so does releasing new code or config with
/// them: only instance admins may. Anyone who may deploy can still scale such an app (a release
/// that differs from the latest in its replica count only).
fn require_privilege_grant(principal: &Principal, latest: Option<&AppSpec>, next: &AppSpec) -> Result<()> {
    if next.privileges.is_empty() || principal.instance_admin {
        return Ok(());
    }
    let only_scaled = latest.is_some_and(|latest| AppSpec { replicas: next.replicas, ..latest.clone() } == *next);
    if only_scaled {
        return Ok(());
    }
    Err(ServiceError::Forbidden(
        "this release has privileged options (privileged mode, host network, host mounts or capabilities): only instance admins may release it".into(),
    ))
}

/// Host labels and constraints: 1-63 characters of letters, digits, `.`, `_`, `-`, `/`.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

#[derive(Clone)]
pub struct Services {
    store: Store,
    orchestrator: Orchestrator,
    login_limiter: std::sync::Arc<identity::LoginLimiter>,
    sign_in: std::sync::Arc<crate::oidc::SignIn>,
}

impl Services {
    pub fn new(store: Store, orchestrator: Orchestrator) -> Services {
        let sign_in = crate::oidc::SignIn::new("http://localhost", Vec::new());
        Services { store, orchestrator, login_limiter: Default::default(), sign_in: std::sync::Arc::new(sign_in) }
    }

    /// Enables sign-in through OAuth2 / OIDC providers.
    pub fn with_sign_in(mut self, sign_in: crate::oidc::SignIn) -> Services {
        self.sign_in = std::sync::Arc::new(sign_in);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    async fn find_app(&self, principal: &Principal, team: &str, name: &str, action: Action) -> Result<AppRow> {
        let team_id = principal.require(team, action)?;
        match self.store.app(team_id, name).await? {
            Some(app) if !app.deleting => Ok(app),
            _ => Err(ServiceError::NotFound(format!("app {name} not found in team {team}"))),
        }
    }

    pub async fn list_apps(&self, principal: &Principal, team: &str) -> Result<Vec<AppSummary>> {
        let team_id = principal.require(team, Action::ViewApps)?;
        let mut summaries = Vec::new();
        for app in self.store.apps_of_team(team_id).await?.into_iter().filter(|a| !a.deleting) {
            summaries.push(self.summary(&app).await?);
        }
        Ok(summaries)
    }

    async fn summary(&self, app: &AppRow) -> Result<AppSummary> {
        let latest = self.store.latest_release(app.id).await?;
        let serving = match app.serving_release {
            Some(n) => self.store.release(app.id, n).await?,
            None => None,
        };
        let shown = serving.as_ref().or(latest.as_ref()).map(ReleaseRow::spec);
        let observed = self.orchestrator.observed();
        let replicas_ready = self
            .store
            .replicas_of_app(app.id)
            .await?
            .iter()
            .filter(|r| Some(r.release_number) == app.serving_release)
            .filter(|r| observed.get(&r.id).is_some_and(|o| o.ready()))
            .count() as u32;
        Ok(AppSummary {
            team: app.team.clone(),
            name: app.name.clone(),
            url: self.orchestrator.app_url(&app.name),
            serving_release: app.serving_release.map(|n| n as u32),
            replicas_desired: shown.as_ref().map_or(0, |s| s.replicas),
            replicas_ready,
            image: shown.map(|s| s.image).unwrap_or_default(),
            created_at: app.created_at,
        })
    }

    pub async fn show_app(&self, principal: &Principal, team: &str, name: &str) -> Result<AppDetail> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        let summary = self.summary(&app).await?;
        let mut releases = Vec::new();
        for release in self.store.releases(app.id).await? {
            releases.push(self.release_info(&release).await?);
        }
        let observed = self.orchestrator.observed();
        let replicas = self
            .store
            .replicas_of_app(app.id)
            .await?
            .into_iter()
            .map(|r| {
                let seen = observed.get(&r.id);
                ReplicaInfo {
                    id: r.id.clone(),
                    release: r.release_number as u32,
                    host: r.host.clone(),
                    container_id: seen.and_then(|o| o.container_id.clone()),
                    phase: seen.map_or(ContainerPhase::Pending, |o| o.phase),
                    ready: seen.is_some_and(|o| o.ready()),
                    endpoint: seen.and_then(|o| o.endpoint.clone()),
                    restarts: seen.map_or(0, |o| o.restarts),
                    message: seen.and_then(|o| o.message.clone()),
                    started_at: seen.and_then(|o| o.started_at),
                    usage: seen.and_then(|o| o.usage),
                }
            })
            .collect();
        Ok(AppDetail { summary, releases, replicas })
    }

    async fn release_info(&self, release: &ReleaseRow) -> Result<ReleaseInfo> {
        Ok(ReleaseInfo {
            number: release.number as u32,
            spec: release.spec(),
            state: release.state(),
            message: release.message.clone(),
            rollback_of: release.rollback_of.map(|n| n as u32),
            created_at: release.created_at,
            finished_at: release.finished_at,
            events: self.store.release_events(release.id).await?,
        })
    }

    pub async fn release(&self, principal: &Principal, team: &str, name: &str, number: u32) -> Result<ReleaseInfo> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        let release = self
            .store
            .release(app.id, number as i64)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("release {number} of {name} not found")))?;
        self.release_info(&release).await
    }

    async fn create_app_inner(&self, principal: &Principal, team: &str, input: CreateApp) -> Result<ReleaseAccepted> {
        let team_id = principal.require(team, Action::DeployApps)?;
        validate_app_name(&input.name)?;
        let spec = AppSpec {
            image: input.image.trim().to_string(),
            port: input.port,
            replicas: input.replicas.unwrap_or(1),
            env: input.env,
            health_path: input.health_path,
            cpu_millis: input.cpu_millis,
            memory_mb: input.memory_mb,
            constraints: input.constraints,
            privileges: input.privileges,
        };
        validate_spec(&spec)?;
        require_privilege_grant(principal, None, &spec)?;
        let app_id = match self.store.create_app(team_id, &input.name, &spec).await {
            Ok(id) => id,
            Err(error) if store::is_unique_violation(&error) => {
                return Err(ServiceError::Conflict(format!("an app named {} already exists", input.name)));
            }
            Err(error) => return Err(error.into()),
        };
        self.orchestrator.enqueue(app_id);
        Ok(ReleaseAccepted { app: input.name.clone(), release: 1, url: self.orchestrator.app_url(&input.name) })
    }

    /// A new release from the latest one with `change` applied.
    async fn deploy_inner(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        change: Deploy,
    ) -> Result<ReleaseAccepted> {
        let app = self.find_app(principal, team, name, Action::DeployApps).await?;
        let latest = self.store.latest_release(app.id).await?.expect("BUG: every app is created with a release");
        let mut spec = latest.spec();
        if let Some(image) = change.image {
            spec.image = image.trim().to_string();
        }
        if let Some(port) = change.port {
            spec.port = port;
        }
        if let Some(replicas) = change.replicas {
            spec.replicas = replicas;
        }
        for key in &change.unset_env {
            spec.env.remove(key);
        }
        spec.env.extend(change.env);
        if let Some(path) = change.health_path {
            spec.health_path = (!path.is_empty()).then_some(path);
        }
        if change.cpu_millis.is_some() {
            spec.cpu_millis = change.cpu_millis;
        }
        if change.memory_mb.is_some() {
            spec.memory_mb = change.memory_mb;
        }
        if let Some(constraints) = change.constraints {
            spec.constraints = constraints;
        }
        if let Some(privileges) = change.privileges {
            spec.privileges = privileges;
        }
        validate_spec(&spec)?;
        require_privilege_grant(principal, Some(&latest.spec()), &spec)?;
        self.new_release(&app, &spec, None).await
    }

    pub async fn scale(&self, principal: &Principal, team: &str, name: &str, replicas: u32) -> Result<ReleaseAccepted> {
        let change = Deploy { replicas: Some(replicas), ..Deploy::default() };
        let result = self.deploy_inner(principal, team, name, change).await;
        self.audit(Some(principal), "scale", Some(team), Some(name), Some(&replicas.to_string()), &result).await?;
        result
    }

    /// A new release carrying the spec of release `to` (default: the one that served before the
    /// serving release).
    async fn rollback_inner(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        to: Option<u32>,
    ) -> Result<ReleaseAccepted> {
        let app = self.find_app(principal, team, name, Action::DeployApps).await?;
        let releases = self.store.releases(app.id).await?;
        let target = match to {
            Some(number) => releases
                .iter()
                .find(|r| r.number == number as i64)
                .ok_or_else(|| invalid("to", format!("release {number} of {name} does not exist")))?,
            None => {
                let serving = app
                    .serving_release
                    .ok_or_else(|| invalid("to", format!("{name} has no serving release to roll back from")))?;
                releases
                    .iter()
                    .find(|r| r.number < serving && r.state() == ReleaseState::Superseded)
                    .ok_or_else(|| invalid("to", format!("{name} has no earlier release that served")))?
            }
        };
        if app.serving_release == Some(target.number) {
            return Err(invalid("to", format!("release {} is already serving", target.number)));
        }
        if target.state() == ReleaseState::Failed {
            return Err(invalid("to", format!("release {} failed; roll back to one that served", target.number)));
        }
        let latest = self.store.latest_release(app.id).await?.map(|r| r.spec());
        require_privilege_grant(principal, latest.as_ref(), &target.spec())?;
        self.new_release(&app, &target.spec(), Some(target.number)).await
    }

    async fn new_release(&self, app: &AppRow, spec: &AppSpec, rollback_of: Option<i64>) -> Result<ReleaseAccepted> {
        let number = self.store.create_release(app.id, spec, rollback_of).await?;
        self.orchestrator.enqueue(app.id);
        Ok(ReleaseAccepted { app: app.name.clone(), release: number as u32, url: self.orchestrator.app_url(&app.name) })
    }

    /// Deletes the app; returns once its routes, containers and records are gone.
    async fn delete_app_inner(&self, principal: &Principal, team: &str, name: &str) -> Result<()> {
        let app = self.find_app(principal, team, name, Action::DeleteApps).await?;
        self.orchestrator.delete(app.id).await?;
        Ok(())
    }

    /// Log lines of the app's current replicas: the last `tail` of each, then new ones if `follow`.
    /// The app's traffic over the last minute and its containers' current CPU and memory.
    pub async fn app_metrics(&self, principal: &Principal, team: &str, name: &str) -> Result<AppMetrics> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        let observed = self.orchestrator.observed();
        let mut metrics = AppMetrics { at: crate::store::now_ms(), ..AppMetrics::default() };
        for replica in self.store.replicas_of_app(app.id).await? {
            if let Some(usage) = observed.get(&replica.id).and_then(|o| o.usage) {
                metrics.cpu_millis += usage.cpu_millis;
                metrics.memory_bytes += usage.memory_bytes;
                metrics.sampled_replicas += 1;
            }
        }
        metrics.traffic = self
            .orchestrator
            .traffic(&app.name, 60)
            .into_iter()
            .map(|second| TrafficPoint {
                at: second.at,
                requests: second.requests(),
                classes: second.classes,
                p50_ms: second.p50.map(|d| d.as_secs_f64() * 1000.0),
                p99_ms: second.p99.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect();
        Ok(metrics)
    }

    pub async fn logs(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        tail: u32,
        follow: bool,
    ) -> Result<BoxStream<'static, LogLine>> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        let observed = self.orchestrator.observed();
        let mut streams = Vec::new();
        for replica in self.store.replicas_of_app(app.id).await? {
            let Some(container_id) = observed.get(&replica.id).and_then(|o| o.container_id.clone()) else { continue };
            let link = self.orchestrator.link(&replica.host);
            let lines = match link.local_agent() {
                Some(agent) => agent.logs(&container_id, tail, follow),
                None => match crate::relay::remote_logs(&self.orchestrator, &link, &container_id, tail, follow).await {
                    Some(lines) => lines,
                    None => continue,
                },
            };
            let release = replica.release_number as u32;
            let replica_id = replica.id.clone();
            streams.push(
                lines.map(move |(stream, line)| LogLine { replica: replica_id.clone(), release, stream, line }).boxed(),
            );
        }
        Ok(futures::stream::select_all(streams).boxed())
    }
}

impl Services {
    async fn create_join_token_inner(&self, principal: &Principal, input: CreateJoinToken) -> Result<JoinTokenCreated> {
        principal.require_instance_admin()?;
        let ttl = input.ttl_secs.unwrap_or(3600);
        let uses = input.uses.unwrap_or(1);
        if ttl == 0 || ttl > 30 * 24 * 3600 {
            return Err(invalid("ttl_secs", "the lifetime must be between 1 second and 30 days"));
        }
        if uses == 0 || uses > 1000 {
            return Err(invalid("uses", "uses must be between 1 and 1000"));
        }
        let token = format!("berth_join_{}", auth::new_token().trim_start_matches("berth_"));
        let expires_at = store::now_ms() + ttl as i64 * 1000;
        self.store.create_join_token(&auth::hash_token(&token), uses, expires_at, principal.user_id).await?;
        Ok(JoinTokenCreated { token, expires_at, uses })
    }

    /// A new host joins with a join token and receives its own credential.
    async fn join_host_inner(&self, request: JoinRequest) -> Result<JoinResponse> {
        validate_app_name(&request.name).map_err(|_| invalid("name", "the host name must be a DNS label"))?;
        if request.advertise_addr.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid("advertise_addr", format!("{:?} is not an IP address", request.advertise_addr)));
        }
        if let Some((k, v)) = request.labels.iter().find(|(k, v)| !valid_label(k) || !valid_label(v)) {
            return Err(invalid("labels", format!("{k}={v} is not a valid label")));
        }
        let credential = format!("berth_host_{}", auth::new_token().trim_start_matches("berth_"));
        self.store
            .join_host(
                &auth::hash_token(&request.join_token),
                &request.name,
                &request.advertise_addr,
                &request.labels,
                &request.capacity,
                &auth::hash_token(&credential),
            )
            .await
            .map_err(|error| match error {
                store::JoinError::InvalidToken => ServiceError::Unauthorized(error.to_string()),
                store::JoinError::NameTaken(_) => ServiceError::Conflict(error.to_string()),
                store::JoinError::Db(db) => db.into(),
            })?;
        tracing::info!(host = request.name, address = request.advertise_addr, "host joined");
        Ok(JoinResponse { host: request.name, credential })
    }

    /// The host a credential belongs to.
    pub async fn authenticate_host(&self, credential: &str) -> Result<String> {
        self.store
            .host_by_credential(&auth::hash_token(credential))
            .await?
            .ok_or_else(|| ServiceError::Unauthorized("the host credential is not valid".into()))
    }

    pub async fn list_hosts(&self, principal: &Principal) -> Result<Vec<HostInfo>> {
        principal.require_instance_admin()?;
        let observed = self.orchestrator.observed();
        let placements = self.store.placements().await?;
        let replicas = self.store.all_replicas().await?;
        let apps: std::collections::HashMap<i64, AppRow> =
            self.store.all_apps().await?.into_iter().map(|a| (a.id, a)).collect();
        let links = self.orchestrator.links();
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .map(|h| {
                let mine = placements.iter().filter(|p| p.host == h.name);
                let allocated = HostCapacity {
                    cpu_millis: mine.clone().map(|p| p.cpu_millis).sum(),
                    memory_mb: mine.map(|p| p.memory_mb).sum(),
                };
                let last_seen = links
                    .iter()
                    .find(|l| l.name == h.name)
                    .map(|l| store::now_ms() - l.silent_for().as_millis() as i64);
                HostInfo {
                    state: h.state(),
                    labels: h.labels(),
                    capacity: HostCapacity {
                        cpu_millis: h.cpu_millis.max(0) as u64,
                        memory_mb: h.memory_mb.max(0) as u64,
                    },
                    allocated,
                    last_seen: if h.is_local { Some(store::now_ms()) } else { last_seen.or(h.last_seen) },
                    replicas: replicas
                        .iter()
                        .filter(|r| r.host == h.name)
                        .filter_map(|r| {
                            let app = apps.get(&r.app_id)?;
                            Some(HostReplica {
                                team: app.team.clone(),
                                app: app.name.clone(),
                                release: r.release_number as u32,
                                replica: r.id.clone(),
                                phase: observed.get(&r.id).map_or(ContainerPhase::Pending, |o| o.phase),
                            })
                        })
                        .collect(),
                    local: h.is_local,
                    address: h.address,
                    name: h.name,
                }
            })
            .collect())
    }

    pub async fn show_host(&self, principal: &Principal, name: &str) -> Result<HostInfo> {
        self.list_hosts(principal)
            .await?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| ServiceError::NotFound(format!("host {name} not found")))
    }

    /// Moves every replica off the host with zero downtime; returns when it is empty.
    async fn drain_host_inner(&self, principal: &Principal, name: &str) -> Result<HostInfo> {
        let host = self.show_host(principal, name).await?;
        if host.local && self.store.hosts().await?.len() == 1 {
            return Err(ServiceError::Conflict(format!(
                "{name} is the only host; there is nowhere to move its replicas"
            )));
        }
        self.orchestrator.drain_host(name).await.map_err(|e| ServiceError::Conflict(format!("{e:#}")))?;
        self.show_host(principal, name).await
    }

    /// Forgets a remote host: its credential stops working and its replicas are placed elsewhere.
    async fn remove_host_inner(&self, principal: &Principal, name: &str) -> Result<()> {
        let host = self.show_host(principal, name).await?;
        if host.local {
            return Err(ServiceError::Conflict(format!("{name} is the server's own host and cannot be removed")));
        }
        // A host that still runs replicas is drained first, so removing it costs no request.
        if host.state != berth_wire::api::HostState::Down && !host.replicas.is_empty() {
            self.orchestrator.drain_host(name).await.map_err(|e| ServiceError::Conflict(format!("{e:#}")))?;
        }
        self.store.remove_host(name).await?;
        self.orchestrator.forget_host(name);
        Ok(())
    }
}

/// The audited entry points: each runs its `_inner` and records the outcome.
impl Services {
    pub async fn create_app(&self, principal: &Principal, team: &str, input: CreateApp) -> Result<ReleaseAccepted> {
        let name = input.name.clone();
        let result = self.create_app_inner(principal, team, input).await;
        self.audit(Some(principal), "create_app", Some(team), Some(&name), None, &result).await?;
        result
    }

    pub async fn deploy(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        change: Deploy,
    ) -> Result<ReleaseAccepted> {
        let target = change.image.clone();
        let result = self.deploy_inner(principal, team, name, change).await;
        self.audit(Some(principal), "deploy", Some(team), Some(name), target.as_deref(), &result).await?;
        result
    }

    pub async fn rollback(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        to: Option<u32>,
    ) -> Result<ReleaseAccepted> {
        let result = self.rollback_inner(principal, team, name, to).await;
        let target = to.map(|n| n.to_string());
        self.audit(Some(principal), "rollback", Some(team), Some(name), target.as_deref(), &result).await?;
        result
    }

    pub async fn delete_app(&self, principal: &Principal, team: &str, name: &str) -> Result<()> {
        let result = self.delete_app_inner(principal, team, name).await;
        self.audit(Some(principal), "delete_app", Some(team), Some(name), None, &result).await?;
        result
    }

    pub async fn create_join_token(&self, principal: &Principal, input: CreateJoinToken) -> Result<JoinTokenCreated> {
        let result = self.create_join_token_inner(principal, input).await;
        self.audit(Some(principal), "create_join_token", None, None, None, &result).await?;
        result
    }

    pub async fn join_host(&self, request: JoinRequest) -> Result<JoinResponse> {
        let host = request.name.clone();
        let result = self.join_host_inner(request).await;
        self.audit(None, "join_host", None, None, Some(&host), &result).await?;
        result
    }

    pub async fn drain_host(&self, principal: &Principal, name: &str) -> Result<HostInfo> {
        let result = self.drain_host_inner(principal, name).await;
        self.audit(Some(principal), "drain_host", None, None, Some(name), &result).await?;
        result
    }

    pub async fn remove_host(&self, principal: &Principal, name: &str) -> Result<()> {
        let result = self.remove_host_inner(principal, name).await;
        self.audit(Some(principal), "remove_host", None, None, Some(name), &result).await?;
        result
    }
}

/// Parses `KEY=VALUE` pairs (CLI flags) into an env map, naming the bad one.
pub fn parse_env_pairs(pairs: &[String]) -> std::result::Result<BTreeMap<String, String>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--env {pair:?} is not KEY=VALUE"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AppSpec {
        AppSpec {
            image: "hello:v1".into(),
            port: 8080,
            replicas: 2,
            env: BTreeMap::new(),
            health_path: Some("/up".into()),
            cpu_millis: None,
            memory_mb: None,
            constraints: BTreeMap::new(),
            privileges: Default::default(),
        }
    }

    fn field_of(result: Result<()>) -> String {
        match result {
            Err(ServiceError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn app_names_are_dns_labels() {
        assert!(validate_app_name("web").is_ok());
        assert!(validate_app_name("web-2").is_ok());
        for bad in ["", "Web", "-web", "web-", "we_b", "web.app", &"a".repeat(64)] {
            assert_eq!(field_of(validate_app_name(bad)), "name", "{bad:?}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate_spec(&spec()).is_ok());
        assert_eq!(field_of(validate_spec(&AppSpec { image: "".into(), ..spec() })), "image");
        assert_eq!(field_of(validate_spec(&AppSpec { image: "a b".into(), ..spec() })), "image");
        assert_eq!(field_of(validate_spec(&AppSpec { port: 0, ..spec() })), "port");
        assert_eq!(field_of(validate_spec(&AppSpec { replicas: 1000, ..spec() })), "replicas");
        assert_eq!(field_of(validate_spec(&AppSpec { health_path: Some("up".into()), ..spec() })), "health_path");
        assert_eq!(field_of(validate_spec(&AppSpec { memory_mb: Some(1), ..spec() })), "memory_mb");
        assert_eq!(field_of(validate_spec(&AppSpec { cpu_millis: Some(1), ..spec() })), "cpu_millis");
        let env = BTreeMap::from([("1BAD".to_string(), "x".to_string())]);
        assert_eq!(field_of(validate_spec(&AppSpec { env, ..spec() })), "env");
    }

    #[test]
    fn env_pairs_parse_and_name_the_bad_one() {
        let env = parse_env_pairs(&["A=1".into(), "B=x=y".into()]).unwrap();
        assert_eq!(env["B"], "x=y");
        assert!(parse_env_pairs(&["NOPE".into()]).unwrap_err().contains("NOPE"));
    }
}
