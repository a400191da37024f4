//! The release protocol for one release at a time per app, and app deletion.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use berth_store::{AppRow, ReleaseRow};
use berth_wire::agent::{ContainerPhase, ObservedContainer};
use berth_wire::api::ReleaseState;

use super::Orchestrator;
use super::desired::new_replica_id;

/// How long an instance, and an ingress node, may be silent and still count as serving (at
/// least the heartbeat timeout): see `Orchestrator::wait_for_ingresses`.
const INSTANCE_SILENCE: Duration = Duration::from_secs(3);
const NODE_SILENCE: Duration = Duration::from_secs(10);

impl Orchestrator {
    pub(super) async fn run_app(&self, app_id: i64) -> anyhow::Result<()> {
        let lock = self.app_lock(app_id);
        let _serialised = lock.lock().await;
        loop {
            let Some(app) = self.inner.store.app_by_id(app_id).await? else { return Ok(()) };
            if app.deleting {
                self.remove_app(&app).await?;
                self.inner.app_locks.lock().expect("BUG: app lock table poisoned").remove(&app_id);
                return Ok(());
            }
            let Some(release) = self.inner.store.next_unfinished_release(app_id).await? else { return Ok(()) };
            self.roll_out(&app, &release).await?;
        }
    }

    async fn event(&self, release: &ReleaseRow, phase: &str, message: &str) -> anyhow::Result<()> {
        tracing::info!(app_id = release.app_id, release = release.number, phase, "{message}");
        self.inner.store.add_release_event(release.id, phase, message).await?;
        Ok(())
    }

    /// The release protocol for one release.
    async fn roll_out(&self, app: &AppRow, release: &ReleaseRow) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let spec = release.spec();
        if release.state() == ReleaseState::Queued {
            store.set_release_state(release.id, ReleaseState::InProgress, None).await?;
        }

        // Secrets that do not open (sealed for another app, or under a key no longer in the key
        // file) fail the release before anything is placed.
        let scope = crate::secrets::SecretScope { team: &app.team, app: &app.name };
        if let Err(error) = self.inner.config.secrets.open_all(scope, &spec.secrets) {
            return self.fail(release, &error.to_string()).await;
        }

        // 1-2. Place the new replicas; agents start them, unroutable.
        self.event(release, "scheduling", &format!("placing {} replica(s)", spec.replicas)).await?;
        let deadline = tokio::time::Instant::now() + self.inner.config.deploy_timeout;
        let mut last_reason = String::new();
        loop {
            let mine = self.replicas_of_release(app.id, release.id).await?;
            let missing = (spec.replicas as usize).saturating_sub(mine.len());
            if missing == 0 {
                break;
            }
            let plan = self.plan(app.id, &spec, missing).await?;
            for host in &plan.hosts {
                store.insert_replica(&new_replica_id(), app.id, release.id, host).await?;
            }
            let Some(reason) = plan.unplaced else { break };
            // The release waits, visibly, for capacity; the serving release keeps serving.
            self.publish_desired().await?;
            if reason != last_reason {
                self.event(release, "waiting_for_capacity", &reason).await?;
                last_reason = reason.clone();
            }
            if tokio::time::Instant::now() >= deadline {
                return self.fail(release, &format!("could not place every replica in time: {reason}")).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.publish_desired().await?;
        let mine = self.replicas_of_release(app.id, release.id).await?;
        let hosts: BTreeSet<String> = store
            .replicas_of_app(app.id)
            .await?
            .into_iter()
            .filter(|r| r.release_id == release.id)
            .map(|r| r.host)
            .collect();
        let on = hosts.into_iter().collect::<Vec<_>>().join(", ");
        self.event(release, "starting", &format!("starting {} replica(s) of {} on {on}", mine.len(), spec.image))
            .await?;

        // 3. Wait until every new replica passes readiness.
        if let Err(reason) = self.wait_ready(app.id, release).await? {
            return self.fail(release, &reason).await;
        }

        // 4. Shift traffic.
        let host = self.app_host(&app.name);
        self.event(release, "shifting_traffic", &format!("routing {host} to release {}", release.number)).await?;
        store.switch_serving(app.id, release).await?;
        self.publish_routes().await?;

        // 5-6. Drain the old replicas, then stop them. Host checks do not wait for this app's
        // lock (a release holds it for minutes; failover must take seconds), so an old replica
        // moved off a lost host meanwhile comes back under a new id: the drain repeats until no
        // replica of an older release is left.
        loop {
            let old: Vec<String> = store
                .replicas_of_app(app.id)
                .await?
                .into_iter()
                .filter(|r| r.release_id != release.id)
                .map(|r| r.id)
                .collect();
            if old.is_empty() {
                break;
            }
            self.drain_and_stop(Some(release), &old).await?;
        }
        store.set_release_state(release.id, ReleaseState::Serving, None).await?;
        self.event(release, "done", &format!("release {} serves all traffic", release.number)).await?;
        Ok(())
    }

    /// `Ok(Err(reason))` when the release cannot become ready.
    async fn wait_ready(&self, app_id: i64, release: &ReleaseRow) -> anyhow::Result<Result<(), String>> {
        let deadline = tokio::time::Instant::now() + self.inner.config.deploy_timeout;
        let mut observed_rx = self.inner.links.observed();
        let mut announced = BTreeSet::new();
        loop {
            if self.inner.store.app_by_id(app_id).await?.is_none_or(|a| a.deleting) {
                return Ok(Err("the app is being deleted".into()));
            }
            let observed = observed_rx.borrow_and_update().clone();
            // Re-read every time: a replica on a host that died is replaced while we wait.
            let mine = self.replicas_of_release(app_id, release.id).await?;
            let states: Vec<Option<&ObservedContainer>> = mine.iter().map(|id| observed.get(id)).collect();
            if states.iter().all(|s| s.is_some_and(ObservedContainer::ready)) {
                return Ok(Ok(()));
            }
            for state in states.iter().flatten() {
                if state.phase == ContainerPhase::Failed {
                    return Ok(Err(state.message.clone().unwrap_or_else(|| "a replica failed to start".into())));
                }
                if state.restarts >= self.inner.config.crash_limit && !state.ready() {
                    let why = state.message.clone().unwrap_or_default();
                    return Ok(Err(format!("a replica keeps crashing ({} restarts): {why}", state.restarts)));
                }
            }
            let phase = if states.iter().flatten().any(|s| s.phase == ContainerPhase::Pulling) {
                Some(("pulling", "pulling the image"))
            } else if states
                .iter()
                .all(|s| s.is_some_and(|s| matches!(s.phase, ContainerPhase::Running | ContainerPhase::Ready)))
            {
                Some(("waiting_ready", "containers running; waiting for readiness checks to pass"))
            } else {
                None
            };
            if let Some((phase, message)) = phase
                && announced.insert(phase)
            {
                self.event(release, phase, message).await?;
            }
            tokio::select! {
                changed = observed_rx.changed() => changed.context("the observed-state channel closed")?,
                // Hosts can change without any report (one declared down): look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let why: Vec<String> = states
                        .iter()
                        .flatten()
                        .filter(|s| !s.ready())
                        .map(|s| format!("{} is {}{}", s.replica_id, s.phase.as_str(), s.message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default()))
                        .collect();
                    return Ok(Err(format!(
                        "replicas not ready within {}s: {}",
                        self.inner.config.deploy_timeout.as_secs(),
                        if why.is_empty() { "not started".to_string() } else { why.join("; ") }
                    )));
                }
            }
        }
    }

    /// A release that cannot go out: its replicas go away, the serving release keeps serving.
    async fn fail(&self, release: &ReleaseRow, reason: &str) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let mine = self.replicas_of_release(release.app_id, release.id).await?;
        store.delete_replicas(&mine).await?;
        self.publish_desired().await?;
        self.wait_gone(&mine).await?;
        store.set_release_state(release.id, ReleaseState::Failed, Some(reason)).await?;
        self.event(release, "failed", reason).await
    }

    /// Steps 5 and 6 of the protocol for replicas already out of the route table.
    pub(super) async fn drain_and_stop(&self, release: Option<&ReleaseRow>, replicas: &[String]) -> anyhow::Result<()> {
        if replicas.is_empty() {
            return Ok(());
        }
        let observed = self.observed();
        let endpoints: Vec<SocketAddr> =
            replicas.iter().filter_map(|id| observed.get(id)?.endpoint.as_deref()?.parse().ok()).collect();
        if let Some(release) = release {
            self.event(release, "draining", &format!("draining {} old replica(s)", replicas.len())).await?;
        }
        let (report, lagging) = tokio::join!(
            self.inner.ingress.drain(&endpoints, self.inner.config.drain_timeout),
            self.wait_for_ingresses()
        );
        if let Some(release) = release
            && !report.still_in_flight.is_empty()
        {
            let left: usize = report.still_in_flight.iter().map(|(_, n)| n).sum();
            self.event(release, "draining", &format!("drain timeout: {left} request(s) still in flight")).await?;
        }
        let lagging = lagging?;
        if !lagging.is_empty() {
            let version = self.routes_version();
            let message = format!(
                "the ingress of {} did not confirm route table {version} within the drain timeout: skipped",
                lagging.join(", ")
            );
            tracing::warn!("{message}");
            if let Some(release) = release {
                self.event(release, "draining", &message).await?;
            }
        }
        if let Some(release) = release {
            let grace = self.inner.config.stop_grace_secs;
            self.event(
                release,
                "stopping_old",
                &format!("stopping {} replica(s) (SIGTERM, {grace}s grace)", replicas.len()),
            )
            .await?;
        }
        self.inner.store.delete_replicas(replicas).await?;
        self.publish_desired().await?;
        self.wait_gone(replicas).await
    }

    /// Waits until every other live instance's ingress has applied the route table last
    /// published, and drained the endpoints it removed, for the drain timeout at most; returns
    /// the instances that had not by then.
    async fn wait_for_ingresses(&self) -> anyhow::Result<Vec<String>> {
        let version = self.routes_version();
        let deadline = std::time::Instant::now() + self.inner.config.drain_timeout;
        // Instances write their own row every second: one silent longer than this is not
        // serving. Ingress nodes report every second through an instance, which may itself be
        // stopped: a node turns to the next once its report has timed out (3 s), so one that is
        // alive and serving is silent for about 4 s per such instance (two in a row within 10 s).
        let heartbeat = self.inner.config.heartbeat_timeout;
        let alive = |instance: &berth_store::InstanceRow| {
            let window = if instance.kind == "ingress" { NODE_SILENCE } else { INSTANCE_SILENCE };
            instance.silent_ms < heartbeat.max(window).as_millis() as i64
        };
        loop {
            let lagging: Vec<String> = self
                .inner
                .store
                .instances()
                .await?
                .into_iter()
                .filter(|i| i.id != self.inner.config.instance_id && alive(i) && i.routes_applied < version)
                .map(|i| i.id)
                .collect();
            if lagging.is_empty() || std::time::Instant::now() >= deadline {
                return Ok(lagging);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the agents report `replicas` gone, so a finished operation leaves nothing
    /// behind (bounded by the stop grace period and some slack).
    async fn wait_gone(&self, replicas: &[String]) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.inner.config.stop_grace_secs as u64 + 15);
        let mut observed_rx = self.inner.links.observed();
        loop {
            if !replicas.iter().any(|id| observed_rx.borrow_and_update().contains_key(id)) {
                return Ok(());
            }
            tokio::select! {
                changed = observed_rx.changed() => changed.context("the observed-state channel closed")?,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(?replicas, "replicas still reported after their stop deadline");
                    return Ok(());
                }
            }
        }
    }

    async fn remove_app(&self, app: &AppRow) -> anyhow::Result<()> {
        // Routes first (the app's host disappears), then drain and stop, then the records.
        self.publish_routes().await?;
        // Repeated like a release's drain: a replica moved off a lost host meanwhile has a new id.
        loop {
            let replicas: Vec<String> =
                self.inner.store.replicas_of_app(app.id).await?.into_iter().map(|r| r.id).collect();
            if replicas.is_empty() {
                break;
            }
            self.drain_and_stop(None, &replicas).await?;
        }
        self.inner.store.delete_app(app.id).await?;
        self.publish_routes().await?;
        self.publish_desired().await?;
        tracing::info!(app = app.name, "app deleted");
        Ok(())
    }
}
