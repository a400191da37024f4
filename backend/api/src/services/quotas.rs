//! Team quotas, and the limits a container gets when its app names none.
//!
//! A quota bounds what a team's apps are declared to run: per app, its latest release that did
//! not fail (or the spec of an app whose first build has not released yet), replicas times their
//! CPU and memory limits. It is checked when a release is asked for, so the caller gets the
//! reason at once (a build: when the push or webhook starts it, and again, through
//! [`BuildReleaseGate`], when its release is stored minutes later). It counts steady state only:
//! the extra replicas of a release in progress and the replacements of a host's replicas are not
//! counted (a team at its quota can still release and fail over). A change that does not grow a
//! resource is always accepted, so a lowered quota never blocks scaling down.

use berth_store::AppRow;
use berth_wire::AppSpec;
use berth_wire::api::{QuotaInfo, ResourceUse, TeamQuota};

use super::{Result, ServiceError, Services, invalid};
use crate::auth::{Action, Principal};

/// CPU and memory limits given to apps created without their own. `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerDefaults {
    pub cpu_millis: Option<u32>,
    pub memory_mb: Option<u64>,
}

impl ContainerDefaults {
    /// What `berth server` starts with: a quarter of a core and 512 MiB per container, so one
    /// runaway app cannot starve its host, and the scheduler counts what every replica may use.
    pub const SERVER: ContainerDefaults = ContainerDefaults { cpu_millis: Some(250), memory_mb: Some(512) };
}

/// What `spec` declares: its replicas times their limits (an unlimited resource counts 0).
pub fn footprint(spec: &AppSpec) -> ResourceUse {
    let replicas = spec.replicas as u64;
    ResourceUse {
        replicas,
        cpu_millis: replicas * spec.cpu_millis.unwrap_or(0) as u64,
        memory_mb: replicas * spec.memory_mb.unwrap_or(0),
    }
}

fn add(a: ResourceUse, b: ResourceUse) -> ResourceUse {
    ResourceUse {
        replicas: a.replicas + b.replicas,
        cpu_millis: a.cpu_millis + b.cpu_millis,
        memory_mb: a.memory_mb + b.memory_mb,
    }
}

/// The quota check of a build's release, at the moment it is stored: a deploy or another build
/// may have taken the room since the push was accepted. Holds the admission lock from the check
/// until the release is stored, like every other release.
pub(super) struct BuildReleaseGate {
    pub(super) store: berth_store::Store,
    pub(super) admission: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl berth_control::builds::ReleaseGate for BuildReleaseGate {
    fn enter(&self) -> futures::future::BoxFuture<'_, Box<dyn Send>> {
        Box::pin(async move { Box::new(self.admission.clone().lock_owned().await) as Box<dyn Send> })
    }

    fn admit<'a>(
        &'a self,
        app: &'a AppRow,
        spec: &'a AppSpec,
    ) -> futures::future::BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move {
            check_quota(&self.store, app.team_id, &app.team, Some(app.id), spec).await.map_err(|e| e.to_string())
        })
    }
}

/// What the team's apps are declared to run; with `except`, that app's share apart.
async fn team_use(store: &berth_store::Store, team_id: i64, except: Option<i64>) -> Result<(ResourceUse, ResourceUse)> {
    let (mut others, mut current) = (ResourceUse::default(), ResourceUse::default());
    for (app_id, spec) in store.team_footprints(team_id).await? {
        if Some(app_id) == except {
            current = footprint(&spec);
        } else {
            others = add(others, footprint(&spec));
        }
    }
    Ok((others, current))
}

/// Refuses `next` as the spec of app `app_id` (`None`: a new app) of `team` when it would
/// take the team past a limit of its quota and grows that resource.
async fn check_quota(
    store: &berth_store::Store,
    team_id: i64,
    team: &str,
    app_id: Option<i64>,
    next: &AppSpec,
) -> Result<()> {
    let quota = store.team_quota(team_id).await?;
    if quota == TeamQuota::default() {
        return Ok(());
    }
    let (others, current) = team_use(store, team_id, app_id).await?;
    let wanted = footprint(next);
    // An unlimited replica would escape the quota: none may be added (an app that already
    // runs some may keep them, shrink, or take a new image).
    if wanted.replicas > current.replicas {
        if quota.cpu_millis.is_some() && next.cpu_millis.is_none() {
            return Err(invalid("cpu_millis", format!("team {team} has a CPU quota: give the app a CPU limit")));
        }
        if quota.memory_mb.is_some() && next.memory_mb.is_none() {
            return Err(invalid("memory_mb", format!("team {team} has a memory quota: give the app a memory limit")));
        }
    }
    let limits = [
        ("replicas", " replicas", quota.replicas, others.replicas, current.replicas, wanted.replicas),
        ("cpu_millis", "m of CPU", quota.cpu_millis, others.cpu_millis, current.cpu_millis, wanted.cpu_millis),
        ("memory_mb", " MiB of memory", quota.memory_mb, others.memory_mb, current.memory_mb, wanted.memory_mb),
    ];
    for (field, unit, limit, others, current, wanted) in limits {
        if let Some(max) = limit
            && others + wanted > max
            && wanted > current
        {
            return Err(invalid(
                field,
                format!(
                    "team {team}'s quota allows {max}{unit}; this would make {}{unit} ({others} in its other apps)",
                    others + wanted
                ),
            ));
        }
    }
    Ok(())
}

impl Services {
    /// Refuses `next` as the spec of app `app_id` (`None`: a new app) of `team` when it would
    /// take the team past a limit of its quota and grows that resource.
    pub(super) async fn check_quota(
        &self,
        team_id: i64,
        team: &str,
        app_id: Option<i64>,
        next: &AppSpec,
    ) -> Result<()> {
        check_quota(&self.store, team_id, team, app_id, next).await
    }

    /// A build releases the app's latest spec with its new image: refused before it starts when
    /// that spec would take the team past its quota (a release refused, or failed, for its size
    /// does not come back through a push).
    pub(super) async fn check_build_quota(&self, app: &AppRow) -> Result<()> {
        let Some(spec) = self.store.base_spec(app.id).await? else { return Ok(()) };
        self.check_quota(app.team_id, &app.team, Some(app.id), &spec).await
    }

    pub async fn quota(&self, principal: &Principal, team: &str) -> Result<QuotaInfo> {
        let team_id = principal.require(team, Action::ViewApps)?;
        let quota = self.store.team_quota(team_id).await?;
        let (used, _) = team_use(&self.store, team_id, None).await?;
        Ok(QuotaInfo { team: team.to_string(), quota, used })
    }

    async fn set_quota_inner(&self, principal: &Principal, team: &str, quota: TeamQuota) -> Result<QuotaInfo> {
        principal.require_instance_admin()?;
        let team_id =
            self.store.team_id(team).await?.ok_or_else(|| ServiceError::NotFound(format!("team {team} not found")))?;
        self.store.set_team_quota(team_id, &quota).await?;
        let (used, _) = team_use(&self.store, team_id, None).await?;
        Ok(QuotaInfo { team: team.to_string(), quota, used })
    }

    /// Sets the team's quota (instance admins). What the team runs already stays: a quota below
    /// it refuses only changes that would grow it.
    pub async fn set_quota(&self, principal: &Principal, team: &str, quota: TeamQuota) -> Result<QuotaInfo> {
        let result = self.set_quota_inner(principal, team, quota).await;
        let detail =
            format!("replicas={:?} cpu_millis={:?} memory_mb={:?}", quota.replicas, quota.cpu_millis, quota.memory_mb);
        self.audit(Some(principal), "set_quota", Some(team), None, Some(&detail), &result).await?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_footprint_is_replicas_times_limits() {
        let spec = AppSpec {
            image: "x".into(),
            port: 1,
            replicas: 3,
            env: Default::default(),
            secrets: Default::default(),
            health_path: None,
            cpu_millis: Some(250),
            memory_mb: None,
            constraints: Default::default(),
            privileges: Default::default(),
            protocol: Default::default(),
        };
        assert_eq!(footprint(&spec), ResourceUse { replicas: 3, cpu_millis: 750, memory_mb: 0 });
    }
}
