//! The orchestrator: turns desired state in the store into containers on hosts (through their
//! agents) and routes in the ingress, one release at a time per app, following the release
//! protocol of `shared/DESIGN.md`.
//!
//! It never calls Docker: agents do. It is level-triggered: every step re-reads the store and the
//! agents' latest reports, so a restarted control plane resumes an interrupted release.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use berth_ingress::{Ingress, RouteSpec};
use berth_wire::AppSpec;
use berth_wire::agent::{ContainerPhase, ObservedContainer};
use berth_wire::api::{HostState, ReleaseState};
use rand::RngCore;
use tokio::sync::watch;

use crate::hosts::HostLink;
use crate::relay::Relay;
use crate::scheduler::{self, HostSlot, Request};
use crate::store::{AppRow, ReleaseRow, Store};

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub base_domain: String,
    /// Port the ingress listens on, for the URLs shown to users (omitted when 80).
    pub ingress_port: u16,
    /// Time a release has to become ready before it is declared failed.
    pub deploy_timeout: Duration,
    /// Time in-flight requests get to finish on replicas taken out of the route table.
    pub drain_timeout: Duration,
    /// Seconds between SIGTERM and SIGKILL when stopping a replica.
    pub stop_grace_secs: u32,
    /// Restarts of a new replica, before it ever became ready, that fail its release.
    pub crash_limit: u32,
    /// A remote host silent for this long is declared down and its replicas are placed elsewhere.
    pub heartbeat_timeout: Duration,
}

/// Cheap to clone; all clones drive the same orchestrator.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    ingress: Arc<Ingress>,
    /// Every known host's link, by name.
    hosts: RwLock<HashMap<String, Arc<HostLink>>>,
    config: OrchestratorConfig,
    /// One lock per app: operations on an app run one after another, never interleaved.
    app_locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Union of every agent's latest report, by replica id.
    observed: watch::Sender<HashMap<String, ObservedContainer>>,
    /// Serialises route-table computation so the newest state always lands last.
    routes_lock: tokio::sync::Mutex<()>,
    relay: Relay,
}

/// After a control-plane start, an agent not heard from yet gets this long on top of the
/// heartbeat timeout to reconnect before its host is declared down: a restart must not move
/// every replica.
const STARTUP_GRACE: Duration = Duration::from_secs(5);

impl Orchestrator {
    /// Publishes the desired state to the agents, starts following their reports and resumes
    /// every release and deletion a previous run left unfinished. `links` are the hosts this
    /// process serves itself (the local agent); remote hosts get theirs when they connect.
    pub async fn start(
        store: Store,
        ingress: Arc<Ingress>,
        links: Vec<Arc<HostLink>>,
        config: OrchestratorConfig,
    ) -> anyhow::Result<Orchestrator> {
        let (observed, _) = watch::channel(HashMap::new());
        let orchestrator = Orchestrator {
            inner: Arc::new(Inner {
                store,
                ingress,
                hosts: RwLock::new(HashMap::new()),
                config,
                app_locks: Mutex::new(HashMap::new()),
                observed,
                routes_lock: tokio::sync::Mutex::new(()),
                relay: Relay::default(),
            }),
        };
        for link in links {
            orchestrator.add_link(link);
        }
        // Remote hosts get a link (and a full heartbeat period of grace) from now on.
        for host in orchestrator.inner.store.hosts().await? {
            orchestrator.link(&host.name);
        }
        orchestrator.publish_desired().await.context("publishing desired containers")?;
        orchestrator.publish_routes().await.context("publishing routes")?;
        tokio::spawn(orchestrator.clone().watch_heartbeats());
        for app in orchestrator.inner.store.all_apps().await? {
            orchestrator.enqueue(app.id);
        }
        Ok(orchestrator)
    }

    fn add_link(&self, link: Arc<HostLink>) -> Arc<HostLink> {
        let mut hosts = self.inner.hosts.write().expect("BUG: host table poisoned");
        if let Some(existing) = hosts.get(&link.name) {
            return existing.clone();
        }
        hosts.insert(link.name.clone(), link.clone());
        tokio::spawn(self.clone().follow_host(link.observed()));
        link
    }

    /// The link of host `name`, created on first use.
    pub fn link(&self, name: &str) -> Arc<HostLink> {
        if let Some(link) = self.inner.hosts.read().expect("BUG: host table poisoned").get(name) {
            return link.clone();
        }
        self.add_link(Arc::new(HostLink::new(name)))
    }

    /// Forgets a removed host: its link leaves the registry and its connection ends.
    pub fn forget_host(&self, name: &str) {
        let link = self.inner.hosts.write().expect("BUG: host table poisoned").remove(name);
        if let Some(link) = link {
            link.close();
        }
    }

    /// Called when a remote agent connects: it is up again (if it was down) and hears its desired
    /// containers at once.
    pub async fn host_connected(&self, name: &str) -> anyhow::Result<Arc<HostLink>> {
        let link = self.link(name);
        link.touch();
        self.publish_desired().await?;
        Ok(link)
    }

    pub fn app_url(&self, app: &str) -> String {
        let config = &self.inner.config;
        match config.ingress_port {
            80 => format!("http://{app}.{}", config.base_domain),
            port => format!("http://{app}.{}:{port}", config.base_domain),
        }
    }

    /// The latest report of every replica the agents know.
    /// The last `seconds` of an app's traffic through the ingress (empty when it is not routed).
    pub fn traffic(&self, app: &str, seconds: usize) -> Vec<berth_ingress::TrafficSecond> {
        self.inner.ingress.traffic(&self.app_host(app), seconds).unwrap_or_default()
    }

    /// The host name an app is served at (`web.localhost`).
    fn app_host(&self, app: &str) -> String {
        format!("{app}.{}", self.inner.config.base_domain)
    }

    pub fn observed(&self) -> HashMap<String, ObservedContainer> {
        self.inner.observed.borrow().clone()
    }

    /// Streams from agents to the control plane (images, logs).
    pub fn relay(&self) -> &Relay {
        &self.inner.relay
    }

    pub fn links(&self) -> Vec<Arc<HostLink>> {
        self.inner.hosts.read().expect("BUG: host table poisoned").values().cloned().collect()
    }

    /// Runs the app's unfinished releases (in order) in the background.
    pub fn enqueue(&self, app_id: i64) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.run_app(app_id).await {
                tracing::error!(app_id, error = format!("{error:#}"), "orchestrating an app failed");
            }
        });
    }

    /// Deletes the app: routes first, then drains and stops its containers, then its records.
    /// A release in progress is abandoned at its next step.
    pub async fn delete(&self, app_id: i64) -> anyhow::Result<()> {
        self.inner.store.mark_deleting(app_id).await?;
        self.run_app(app_id).await
    }

    fn app_lock(&self, app_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.app_locks.lock().expect("BUG: app lock table poisoned");
        locks.entry(app_id).or_default().clone()
    }

    async fn run_app(&self, app_id: i64) -> anyhow::Result<()> {
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

        // 5-6. Drain the old replicas, then stop them.
        let old: Vec<String> = store
            .replicas_of_app(app.id)
            .await?
            .into_iter()
            .filter(|r| r.release_id != release.id)
            .map(|r| r.id)
            .collect();
        self.drain_and_stop(Some(release), &old).await?;
        store.set_release_state(release.id, ReleaseState::Serving, None).await?;
        self.event(release, "done", &format!("release {} serves all traffic", release.number)).await?;
        Ok(())
    }

    /// `Ok(Err(reason))` when the release cannot become ready.
    async fn wait_ready(&self, app_id: i64, release: &ReleaseRow) -> anyhow::Result<Result<(), String>> {
        let deadline = tokio::time::Instant::now() + self.inner.config.deploy_timeout;
        let mut observed_rx = self.inner.observed.subscribe();
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
    async fn drain_and_stop(&self, release: Option<&ReleaseRow>, replicas: &[String]) -> anyhow::Result<()> {
        if replicas.is_empty() {
            return Ok(());
        }
        let observed = self.observed();
        let endpoints: Vec<SocketAddr> =
            replicas.iter().filter_map(|id| observed.get(id)?.endpoint.as_deref()?.parse().ok()).collect();
        if let Some(release) = release {
            self.event(release, "draining", &format!("draining {} old replica(s)", replicas.len())).await?;
        }
        let report = self.inner.ingress.drain(&endpoints, self.inner.config.drain_timeout).await;
        if let Some(release) = release
            && !report.still_in_flight.is_empty()
        {
            let left: usize = report.still_in_flight.iter().map(|(_, n)| n).sum();
            self.event(release, "draining", &format!("drain timeout: {left} request(s) still in flight")).await?;
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

    /// Waits until the agents report `replicas` gone, so a finished operation leaves nothing
    /// behind (bounded by the stop grace period and some slack).
    async fn wait_gone(&self, replicas: &[String]) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.inner.config.stop_grace_secs as u64 + 15);
        let mut observed_rx = self.inner.observed.subscribe();
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
        let replicas: Vec<String> = self.inner.store.replicas_of_app(app.id).await?.into_iter().map(|r| r.id).collect();
        self.drain_and_stop(None, &replicas).await?;
        self.inner.store.delete_app(app.id).await?;
        self.publish_routes().await?;
        tracing::info!(app = app.name, "app deleted");
        Ok(())
    }

    /// Sends every agent the full list of containers desired on its host.
    async fn publish_desired(&self) -> anyhow::Result<()> {
        let desired = self.inner.store.desired_containers(self.inner.config.stop_grace_secs).await?;
        let mut by_host: HashMap<String, Vec<_>> = HashMap::new();
        for (host, container) in desired {
            by_host.entry(host).or_default().push(container);
        }
        for link in self.links() {
            link.set_desired(by_host.remove(&link.name).unwrap_or_default());
        }
        Ok(())
    }

    /// Recomputes the route table: every app's host → ready replicas of its serving release.
    async fn publish_routes(&self) -> anyhow::Result<()> {
        let _serialised = self.inner.routes_lock.lock().await;
        let store = &self.inner.store;
        let apps = store.all_apps().await?;
        let replicas = store.all_replicas().await?;
        let observed = self.observed();
        let routes = apps
            .iter()
            .filter(|a| !a.deleting)
            .map(|app| {
                let endpoints = replicas
                    .iter()
                    .filter(|r| r.app_id == app.id && Some(r.release_number) == app.serving_release && !r.retiring)
                    .filter_map(|r| observed.get(&r.id).filter(|o| o.ready()))
                    .filter_map(|o| o.endpoint.as_deref()?.parse().ok())
                    .collect();
                RouteSpec { host: self.app_host(&app.name), endpoints }
            })
            .collect();
        self.inner.ingress.apply(routes).await;
        Ok(())
    }

    /// Follows one host's reports: rebuilds the union of all hosts' reports and re-routes on every
    /// change.
    async fn follow_host(self, mut reports: watch::Receiver<crate::agent::Observed>) {
        loop {
            reports.borrow_and_update();
            let union: HashMap<String, ObservedContainer> =
                self.links().iter().flat_map(|link| link.observed().borrow().clone()).collect();
            self.inner.observed.send_replace(union);
            if let Err(error) = self.publish_routes().await {
                tracing::error!(error = format!("{error:#}"), "publishing routes failed");
            }
            if reports.changed().await.is_err() {
                return;
            }
        }
    }

    async fn replicas_of_release(&self, app_id: i64, release_id: i64) -> anyhow::Result<Vec<String>> {
        Ok(self
            .inner
            .store
            .replicas_of_app(app_id)
            .await?
            .into_iter()
            .filter(|r| r.release_id == release_id)
            .map(|r| r.id)
            .collect())
    }

    /// Hosts as the scheduler sees them: up hosts with a link are schedulable.
    async fn host_slots(&self) -> anyhow::Result<Vec<HostSlot>> {
        Ok(self
            .inner
            .store
            .hosts()
            .await?
            .into_iter()
            .map(|h| HostSlot {
                schedulable: h.state() == HostState::Up,
                labels: h.labels(),
                cpu_millis: h.cpu_millis.max(0) as u64,
                memory_mb: h.memory_mb.max(0) as u64,
                name: h.name,
            })
            .collect())
    }

    async fn plan(&self, app_id: i64, spec: &AppSpec, count: usize) -> anyhow::Result<scheduler::Plan> {
        let hosts = self.host_slots().await?;
        let placed = self.inner.store.placements().await?;
        let request = Request {
            app_id,
            cpu_millis: spec.cpu_millis.unwrap_or(0) as u64,
            memory_mb: spec.memory_mb.unwrap_or(0),
            constraints: spec.constraints.clone(),
        };
        Ok(scheduler::place(&hosts, &placed, &request, count))
    }

    /// Declares silent remote hosts down (and returning ones up), and moves replicas off hosts
    /// that are down or gone. Runs for the life of the process.
    async fn watch_heartbeats(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if let Err(error) = self.check_hosts().await {
                tracing::error!(error = format!("{error:#}"), "checking hosts failed");
            }
        }
    }

    async fn check_hosts(&self) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let hosts = store.hosts().await?;
        let mut lost = HashSet::new();
        for host in hosts.iter().filter(|h| !h.is_local) {
            let link = self.link(&host.name);
            let timeout = self.inner.config.heartbeat_timeout;
            let limit = if link.has_reported() { timeout } else { timeout + STARTUP_GRACE };
            let silent = link.silent_for() > limit;
            match host.state() {
                HostState::Up | HostState::Draining if silent => {
                    tracing::warn!(
                        host = host.name,
                        silent_ms = link.silent_for().as_millis() as u64,
                        "host missed its heartbeats; declaring it down"
                    );
                    store.set_host_state(&host.name, HostState::Down).await?;
                    link.forget_observed();
                    lost.insert(host.name.clone());
                }
                HostState::Down if !silent => {
                    tracing::info!(host = host.name, "host is back");
                    store.set_host_state(&host.name, HostState::Up).await?;
                    self.publish_desired().await?;
                }
                HostState::Down => {
                    lost.insert(host.name.clone());
                }
                _ => {}
            }
        }
        let known: HashSet<String> = hosts.iter().map(|h| h.name.clone()).collect();
        let stranded: Vec<_> = store
            .all_replicas()
            .await?
            .into_iter()
            .filter(|r| lost.contains(&r.host) || !known.contains(&r.host))
            .collect();
        if stranded.is_empty() {
            return Ok(());
        }
        let mut moved = 0;
        for replica in &stranded {
            let Some(release) = store.release_by_id(replica.release_id).await? else { continue };
            let plan = self.plan(replica.app_id, &release.spec(), 1).await?;
            if let Some(host) = plan.hosts.first() {
                store.move_replica(&replica.id, &new_replica_id(), host).await?;
                moved += 1;
            }
        }
        if moved > 0 {
            tracing::info!(moved, stranded = stranded.len(), "replicas moved off unavailable hosts");
            self.publish_desired().await?;
            self.publish_routes().await?;
        }
        Ok(())
    }

    /// Moves every replica off `host` with the release protocol's guarantees: replacements start
    /// elsewhere and become ready, then the host's replicas leave the route table, drain and stop.
    pub async fn drain_host(&self, host: &str) -> anyhow::Result<()> {
        self.inner.store.set_host_state(host, HostState::Draining).await?;
        let apps: BTreeSet<i64> =
            self.inner.store.all_replicas().await?.into_iter().filter(|r| r.host == host).map(|r| r.app_id).collect();
        for app_id in apps {
            let lock = self.app_lock(app_id);
            let _serialised = lock.lock().await;
            self.move_off(app_id, host).await?;
        }
        Ok(())
    }

    async fn move_off(&self, app_id: i64, host: &str) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let leaving: Vec<_> =
            store.replicas_of_app(app_id).await?.into_iter().filter(|r| r.host == host && !r.retiring).collect();
        let mut replacements = Vec::new();
        for replica in &leaving {
            let Some(release) = store.release_by_id(replica.release_id).await? else { continue };
            let plan = self.plan(app_id, &release.spec(), 1).await?;
            let Some(target) = plan.hosts.first() else {
                anyhow::bail!("cannot move replica {} off {host}: {}", replica.id, plan.unplaced.unwrap_or_default());
            };
            let id = new_replica_id();
            store.add_replacement(&replica.id, &id, target).await?;
            replacements.push(id);
        }
        self.publish_desired().await?;
        let deadline = tokio::time::Instant::now() + self.inner.config.deploy_timeout;
        let mut observed_rx = self.inner.observed.subscribe();
        loop {
            let ready = {
                let observed = observed_rx.borrow_and_update();
                replacements.iter().all(|id| observed.get(id).is_some_and(ObservedContainer::ready))
            };
            if ready {
                break;
            }
            tokio::select! {
                changed = observed_rx.changed() => changed.context("the observed-state channel closed")?,
                _ = tokio::time::sleep_until(deadline) => {
                    store.delete_replicas(&replacements).await?;
                    self.publish_desired().await?;
                    anyhow::bail!("replacements for the replicas on {host} did not become ready in time");
                }
            }
        }
        let ids: Vec<String> = leaving.iter().map(|r| r.id.clone()).collect();
        store.mark_retiring(&ids).await?;
        self.publish_routes().await?;
        self.drain_and_stop(None, &ids).await
    }
}

fn new_replica_id() -> String {
    let mut bytes = [0u8; 5];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
