//! Apps: create, deploy, scale, roll back, delete; their detail, releases, metrics and logs.

use berth_store::{AppRow, ReleaseRow, ReplicaRow};
use berth_wire::AppSpec;
use berth_wire::agent::ContainerPhase;
use berth_wire::api::{
    AppDetail, AppMetrics, AppSummary, CreateApp, Deploy, LogLine, ReleaseAccepted, ReleaseInfo, ReleaseState,
    ReplicaInfo, SecretKeyRotated, TrafficPoint,
};
use futures::StreamExt;
use futures::stream::BoxStream;

use std::collections::{BTreeMap, HashMap};

use berth_control::secrets::SecretScope;

use super::validate::{
    require_privilege_grant, validate_app_name, validate_image_owner, validate_spec, validate_variables,
};
use super::{Result, ServiceError, Services, invalid};
use crate::auth::{Action, Principal};
use crate::clock::now_ms;

/// Whether `principal` sees releases of `team` with their environment's values blanked: below
/// deployer (viewers, viewer tokens for CI), for the values hold database passwords and API keys.
pub(super) fn env_hidden(principal: &Principal, team: &str) -> bool {
    principal.require(team, Action::DeployApps).is_err()
}

/// A release with its `events`, its environment's values blanked when `env_hidden` (see
/// [`env_hidden`]).
fn release_info(env_hidden: bool, release: &ReleaseRow, events: Vec<berth_wire::api::ReleaseEvent>) -> ReleaseInfo {
    let mut spec = release.spec();
    if env_hidden {
        spec.env.values_mut().for_each(String::clear);
    }
    // Secrets are write-only for everyone: the name says the variable is set.
    spec.secrets.values_mut().for_each(String::clear);
    ReleaseInfo {
        number: release.number as u32,
        spec,
        env_hidden,
        state: release.state(),
        message: release.message.clone(),
        rollback_of: release.rollback_of.map(|n| n as u32),
        created_at: release.created_at,
        finished_at: release.finished_at,
        events,
    }
}

impl Services {
    /// The app `name` of `team`, if the principal may do `action` there; deleting apps are gone.
    pub(crate) async fn find_app(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        action: Action,
    ) -> Result<AppRow> {
        let team_id = principal.require(team, action)?;
        match self.store.app(team_id, name).await? {
            Some(app) if !app.deleting => Ok(app),
            _ => Err(ServiceError::NotFound(format!("app {name} not found in team {team}"))),
        }
    }

    pub async fn list_apps(&self, principal: &Principal, team: &str) -> Result<Vec<AppSummary>> {
        let team_id = principal.require(team, Action::ViewApps)?;
        self.app_list(team_id).await
    }

    /// The team's apps, as every member who may see them sees them (nothing in a summary
    /// depends on the caller's role). Callers check access first.
    pub(super) async fn app_list(&self, team_id: i64) -> Result<Vec<AppSummary>> {
        // Three queries whatever the number of apps.
        let apps = self.store.apps_of_team(team_id).await?;
        let mut releases: HashMap<(i64, i64), ReleaseRow> = HashMap::new();
        let mut latest: HashMap<i64, i64> = HashMap::new();
        for release in self.store.shown_releases_of_team(team_id).await? {
            let number = latest.entry(release.app_id).or_insert(release.number);
            *number = (*number).max(release.number);
            releases.insert((release.app_id, release.number), release);
        }
        let mut replicas: HashMap<i64, Vec<ReplicaRow>> = HashMap::new();
        for replica in self.store.serving_replicas_of_team(team_id).await? {
            replicas.entry(replica.app_id).or_default().push(replica);
        }
        let observed = self.cluster.observed();
        Ok(apps
            .iter()
            .filter(|a| !a.deleting)
            .map(|app| {
                let latest = latest.get(&app.id).and_then(|n| releases.get(&(app.id, *n)));
                let serving = app.serving_release.and_then(|n| releases.get(&(app.id, n)));
                let replicas = replicas.get(&app.id).map_or(&[][..], Vec::as_slice);
                self.summarize(app, latest, serving, replicas, &observed)
            })
            .collect())
    }

    /// An app's summary from its latest and serving releases and its replicas (those of other
    /// releases are not counted).
    fn summarize(
        &self,
        app: &AppRow,
        latest: Option<&ReleaseRow>,
        serving: Option<&ReleaseRow>,
        replicas: &[ReplicaRow],
        observed: &berth_control::ObservedUnion,
    ) -> AppSummary {
        let shown = serving.or(latest).map(ReleaseRow::spec);
        let replicas_ready = replicas
            .iter()
            .filter(|r| Some(r.release_number) == app.serving_release)
            .filter(|r| observed.get(&r.id).is_some_and(|o| o.ready()))
            .count() as u32;
        AppSummary {
            team: app.team.clone(),
            name: app.name.clone(),
            url: self.cluster.app_url(&app.name),
            serving_release: app.serving_release.map(|n| n as u32),
            replicas_desired: shown.as_ref().map_or(0, |s| s.replicas),
            replicas_ready,
            image: shown.map(|s| s.image).unwrap_or_default(),
            created_at: app.created_at,
        }
    }

    pub async fn show_app(&self, principal: &Principal, team: &str, name: &str) -> Result<AppDetail> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        self.app_detail(&app, env_hidden(principal, team)).await
    }

    /// The app's detail, with its releases' environment values blanked when `env_hidden`.
    /// Callers check access first.
    pub(super) async fn app_detail(&self, app: &AppRow, env_hidden: bool) -> Result<AppDetail> {
        // Each read once (the summary is made from the same rows); the events of all its releases
        // in one query: an app's history grows with every deploy.
        let rows = self.store.releases(app.id).await?;
        let replica_rows = self.store.replicas_of_app(app.id).await?;
        let mut events = self.store.release_events_of_app(app.id).await?;
        let observed = self.cluster.observed();
        // Newest first.
        let latest = rows.first();
        let serving = app.serving_release.and_then(|n| rows.iter().find(|r| r.number == n));
        let summary = self.summarize(app, latest, serving, &replica_rows, &observed);
        let releases = rows
            .iter()
            .map(|release| {
                let events = events.remove(&release.id).unwrap_or_default();
                release_info(env_hidden, release, events)
            })
            .collect();
        let replicas = replica_rows
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

    pub async fn release(&self, principal: &Principal, team: &str, name: &str, number: u32) -> Result<ReleaseInfo> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        self.release_of(principal, team, &app, number).await
    }

    /// Release `number` of `app`, found with [`Services::find_app`] (which checked access).
    pub(crate) async fn release_of(
        &self,
        principal: &Principal,
        team: &str,
        app: &AppRow,
        number: u32,
    ) -> Result<ReleaseInfo> {
        let name = &app.name;
        let release = self
            .store
            .release(app.id, number as i64)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("release {number} of {name} not found")))?;
        let events = self.store.release_events(release.id).await?;
        Ok(release_info(env_hidden(principal, team), &release, events))
    }

    async fn create_app_inner(&self, principal: &Principal, team: &str, input: CreateApp) -> Result<ReleaseAccepted> {
        let team_id = principal.require(team, Action::DeployApps)?;
        validate_app_name(&input.name)?;
        validate_variables("secrets", &input.secrets)?;
        if let Some(name) = input.secrets.keys().find(|name| input.env.contains_key(*name)) {
            return Err(invalid("secrets", format!("{name} is given both as a plain and as a secret variable")));
        }
        // Held until the spec is stored: a key rotation never misses a value sealed meanwhile.
        let _sealing = self.cluster.secrets().hold().await;
        let _admission = self.admission.lock().await;
        let secrets = self.seal_secrets(team, &input.name, input.secrets);
        let spec = AppSpec {
            image: input.image.trim().to_string(),
            port: input.port,
            replicas: input.replicas.unwrap_or(1),
            env: input.env,
            secrets,
            health_path: input.health_path,
            cpu_millis: input.cpu_millis.or(self.container_defaults.cpu_millis),
            memory_mb: input.memory_mb.or(self.container_defaults.memory_mb),
            constraints: input.constraints,
            privileges: input.privileges,
            protocol: input.protocol,
        };
        // No image: built from git; the rest of the spec is checked now, for its first release.
        let built_from_git = spec.image.is_empty();
        if built_from_git {
            validate_spec(&AppSpec { image: "built-from-git".into(), ..spec.clone() })?;
        } else {
            validate_spec(&spec)?;
            validate_image_owner(team, &spec.image)?;
        }
        require_privilege_grant(principal, None, &spec)?;
        self.check_quota(team_id, team, None, &spec).await?;
        let app_id = match self.store.create_app(team_id, &input.name, &spec).await {
            Ok(id) => id,
            Err(error) if berth_store::is_unique_violation(&error) => {
                return Err(ServiceError::Conflict(format!("an app named {} already exists", input.name)));
            }
            Err(error) => return Err(error.into()),
        };
        let release = if built_from_git {
            0
        } else {
            self.cluster.enqueue(app_id).await?;
            1
        };
        Ok(ReleaseAccepted { app: input.name.clone(), release, url: self.cluster.app_url(&input.name) })
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
        validate_variables("secrets", &change.secrets)?;
        if let Some(key) = change.secrets.keys().find(|key| change.env.contains_key(*key)) {
            return Err(invalid("secrets", format!("{key} is given both as a plain and as a secret variable")));
        }
        let _sealing = self.cluster.secrets().hold().await;
        let _admission = self.admission.lock().await;
        // The latest release's spec, or the initial one of an app built from git that has none.
        let latest = self.store.latest_release(app.id).await?.map(|r| r.spec());
        let base = match &latest {
            Some(spec) => Some(spec.clone()),
            None => self.store.base_spec(app.id).await?,
        };
        let mut spec = base.ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!("app {name} has neither a release nor an initial spec"))
        })?;
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
            spec.secrets.remove(key);
        }
        // A name lives in one map only: setting it in one removes it from the other.
        for key in change.env.keys() {
            spec.secrets.remove(key);
        }
        for key in change.secrets.keys() {
            spec.env.remove(key);
        }
        spec.env.extend(change.env);
        spec.secrets.extend(self.seal_secrets(team, name, change.secrets));
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
        if let Some(protocol) = change.protocol {
            spec.protocol = protocol;
        }
        if spec.image.is_empty() {
            return Err(invalid(
                "image",
                format!(
                    "{name} is built from git and has no image yet: push to its git remote (berth git-remote {name}), or give an image"
                ),
            ));
        }
        validate_spec(&spec)?;
        validate_image_owner(team, &spec.image)?;
        require_privilege_grant(principal, latest.as_ref(), &spec)?;
        self.check_quota(app.team_id, team, Some(app.id), &spec).await?;
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
        let _sealing = self.cluster.secrets().hold().await;
        let _admission = self.admission.lock().await;
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
        validate_image_owner(team, &target.spec().image)?;
        self.check_quota(app.team_id, team, Some(app.id), &target.spec()).await?;
        self.new_release(&app, &target.spec(), Some(target.number)).await
    }

    /// Seals each value for its variable of `team`'s app `app`.
    fn seal_secrets(&self, team: &str, app: &str, plain: BTreeMap<String, String>) -> BTreeMap<String, String> {
        let keys = self.cluster.secrets();
        let scope = SecretScope { team, app };
        plain.into_iter().map(|(name, value)| (name.clone(), keys.seal(scope, &name, &value))).collect()
    }

    /// Reseals every app's secrets with a new key and retires the old ones (instance admins).
    async fn rotate_secret_key_inner(&self, principal: &Principal) -> Result<SecretKeyRotated> {
        principal.require_instance_admin()?;
        // One rotation at a time across instances: the leader's (the others take up its key
        // file when it changes).
        self.duties().await?;
        let rotation = self.cluster.secrets().rotate(&self.store).await.map_err(ServiceError::Internal)?;
        Ok(SecretKeyRotated {
            key_id: rotation.key_id,
            resealed: rotation.resealed as u64,
            unreadable: rotation.unreadable as u64,
            retired: rotation.retired,
        })
    }

    pub async fn rotate_secret_key(&self, principal: &Principal) -> Result<SecretKeyRotated> {
        let result = self.rotate_secret_key_inner(principal).await;
        let key = result.as_ref().ok().map(|r| r.key_id.clone());
        self.audit(Some(principal), "rotate_secret_key", None, None, key.as_deref(), &result).await?;
        result
    }

    async fn new_release(&self, app: &AppRow, spec: &AppSpec, rollback_of: Option<i64>) -> Result<ReleaseAccepted> {
        let number = self.store.create_release(app.id, spec, rollback_of).await?;
        self.cluster.enqueue(app.id).await?;
        Ok(ReleaseAccepted { app: app.name.clone(), release: number as u32, url: self.cluster.app_url(&app.name) })
    }

    /// Deletes the app; returns once its routes, containers and records are gone.
    async fn delete_app_inner(&self, principal: &Principal, team: &str, name: &str) -> Result<()> {
        let app = self.find_app(principal, team, name, Action::DeleteApps).await?;
        self.cluster.delete_app(&app).await?;
        Ok(())
    }

    /// The app's traffic over the last minute and its containers' current CPU and memory.
    pub async fn app_metrics(&self, principal: &Principal, team: &str, name: &str) -> Result<AppMetrics> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        self.metrics_of(&app).await
    }

    /// The app's metrics, the same for everyone who may see them. Callers check access first.
    pub(super) async fn metrics_of(&self, app: &AppRow) -> Result<AppMetrics> {
        let observed = self.cluster.observed();
        let mut metrics = AppMetrics { at: now_ms(), ..AppMetrics::default() };
        for replica in self.store.replicas_of_app(app.id).await? {
            if let Some(usage) = observed.get(&replica.id).and_then(|o| o.usage) {
                metrics.cpu_millis += usage.cpu_millis;
                metrics.memory_bytes += usage.memory_bytes;
                metrics.sampled_replicas += 1;
            }
        }
        metrics.traffic = self
            .cluster
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

    /// Log lines of the app's current replicas: the last `tail` of each, then new ones if `follow`.
    pub async fn logs(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        tail: u32,
        follow: bool,
    ) -> Result<BoxStream<'static, LogLine>> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        let observed = self.cluster.observed();
        let duties = self.duties().await?;
        let mut streams = Vec::new();
        for replica in self.store.replicas_of_app(app.id).await? {
            let Some(container_id) = observed.get(&replica.id).and_then(|o| o.container_id.clone()) else { continue };
            let links = duties.orchestrator.links();
            let Some(lines) =
                berth_control::logs::of_container(links, &replica.host, &container_id, tail, follow).await
            else {
                continue;
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
}
