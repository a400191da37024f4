//! The orchestrator: turns desired state in the store into containers on hosts (through their
//! agents) and routes in the ingress, one release at a time per app.
//!
//! It never calls a container engine: agents do. It is level-triggered: every step re-reads the
//! store and the agents' latest reports, so a restarted control plane resumes an interrupted
//! release. Its rooms:
//! - `rollout`: the release protocol, app deletion;
//! - `routes`: the route table published to the ingress;
//! - `desired`: what each host's agent must run, and placement;
//! - `host_checks`: heartbeats, down hosts, draining.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use berth_ingress::Ingress;
use berth_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::links::{HostLinks, ObservedUnion};

mod desired;
mod host_checks;
mod rollout;
mod routes;

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
    /// How often hosts' heartbeats are checked.
    pub host_check_every: Duration,
    /// Port of the ingress's HTTPS listener (`None`: no HTTPS). Names with a certificate are
    /// shown as `https://` and (unless the app turns it off) redirected there.
    pub https_port: Option<u16>,
    /// The keys apps' secret variables are sealed with (`berth server`: the data directory's key
    /// file; `new`: a fresh key in memory).
    pub secrets: crate::secrets::SecretKeys,
    /// This instance's id among those sharing the database (its own ingress is not waited for
    /// through the store: the orchestrator drains it directly).
    pub instance_id: String,
}

impl OrchestratorConfig {
    /// The defaults `berth server` starts with, for `base_domain` served on `ingress_port`.
    pub fn new(base_domain: impl Into<String>, ingress_port: u16) -> OrchestratorConfig {
        OrchestratorConfig {
            base_domain: base_domain.into(),
            ingress_port,
            deploy_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(30),
            stop_grace_secs: 10,
            crash_limit: 3,
            heartbeat_timeout: Duration::from_secs(3),
            host_check_every: Duration::from_millis(200),
            https_port: None,
            secrets: crate::secrets::SecretKeys::ephemeral(),
            instance_id: String::new(),
        }
    }
}

/// Cheap to clone; all clones drive the same orchestrator.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    ingress: Arc<Ingress>,
    links: HostLinks,
    config: OrchestratorConfig,
    /// One lock per app: operations on an app run one after another, never interleaved.
    app_locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises route-table computation so the newest state always lands last; holds the
    /// routes last applied, so an unchanged table is not applied again (which would reset the
    /// round-robin cursors for nothing).
    routes_lock: tokio::sync::Mutex<Vec<berth_ingress::RouteSpec>>,
    /// Held from taking the reports to publishing them, so an older snapshot never lands last.
    reports_lock: tokio::sync::Mutex<()>,
    /// Route tables computed so far (`Orchestrator::route_computations`).
    route_computations: std::sync::atomic::AtomicU64,
    /// Woken when a publication of routes failed, so it is tried again without waiting for a
    /// report that changes what routes.
    routes_failed: tokio::sync::Notify,
    /// The version of the route table last published for every instance (0: none yet).
    routes_version: std::sync::atomic::AtomicI64,
    /// The agents' reports as the previous leader last published them: until the start-up grace
    /// ends, a replica its agent has not reported yet, or is still probing after adopting it, is
    /// routed as these say, so a change of leader does not empty the route table while agents
    /// reconnect and adopt.
    inherited: Mutex<ObservedUnion>,
    /// Ends every task the orchestrator runs (`shutdown`).
    stop: CancellationToken,
    /// Every task the orchestrator runs, so `shutdown` can wait for them to be gone.
    tasks: TaskTracker,
}

/// The publication holding the route table (a JSON list of `RouteSpec`).
pub const ROUTES: &str = "routes";
/// The publication holding the agents' latest reports (a JSON `ObservedUnion`).
pub const OBSERVED: &str = "observed";

/// The app's own name under the site's base domain (`web.localhost`).
pub(crate) fn app_host(site: &OrchestratorConfig, app: &str) -> String {
    format!("{app}.{}", site.base_domain)
}

/// Where users reach the app: HTTPS when `ingress` has a certificate for its name.
pub(crate) fn app_url(site: &OrchestratorConfig, ingress: &Ingress, app: &str) -> String {
    let host = app_host(site, app);
    match (site.https_port, site.ingress_port) {
        (Some(port), _) if ingress.certificate_for(&host).is_some() => match port {
            443 => format!("https://{host}"),
            port => format!("https://{host}:{port}"),
        },
        (_, 80) => format!("http://{host}"),
        (_, port) => format!("http://{host}:{port}"),
    }
}

/// After a control-plane start, an agent not heard from yet gets this long on top of the
/// heartbeat timeout to reconnect before its host is declared down: a restart must not move
/// every replica.
const STARTUP_GRACE: Duration = Duration::from_secs(5);

impl Orchestrator {
    /// Publishes the desired state to the agents, starts following their reports and resumes
    /// every release and deletion a previous run left unfinished. `links` holds the hosts this
    /// process serves itself (the local agent); remote hosts get theirs when they connect.
    pub async fn start(
        store: Store,
        ingress: Arc<Ingress>,
        links: HostLinks,
        config: OrchestratorConfig,
    ) -> anyhow::Result<Orchestrator> {
        let orchestrator = Orchestrator {
            inner: Arc::new(Inner {
                store,
                ingress,
                links,
                config,
                app_locks: Mutex::new(HashMap::new()),
                routes_lock: tokio::sync::Mutex::new(Vec::new()),
                reports_lock: tokio::sync::Mutex::new(()),
                route_computations: Default::default(),
                routes_failed: tokio::sync::Notify::new(),
                routes_version: Default::default(),
                inherited: Mutex::new(ObservedUnion::new()),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        if let Err(error) = orchestrator.begin().await {
            // Nothing it started may outlive it (a leader retries in the same process).
            orchestrator.shutdown().await;
            return Err(error);
        }
        Ok(orchestrator)
    }

    async fn begin(&self) -> anyhow::Result<()> {
        let orchestrator = self;
        // Remote hosts get a link (and a full heartbeat period of grace) from now on.
        for host in orchestrator.inner.store.hosts().await? {
            orchestrator.inner.links.link(&host.name);
        }
        orchestrator.inherit_reports().await.context("reading the reports the previous leader published")?;
        orchestrator.publish_desired().await.context("publishing desired containers")?;
        orchestrator.publish_routes().await.context("publishing routes")?;
        orchestrator.spawn(orchestrator.clone().follow_reports());
        orchestrator.spawn(orchestrator.clone().publish_reports());
        orchestrator.spawn(orchestrator.clone().watch_heartbeats());
        // Replicas a previous run was retiring (moved off a host) finish their drain and stop.
        let retiring: Vec<String> =
            orchestrator.inner.store.all_replicas().await?.into_iter().filter(|r| r.retiring).map(|r| r.id).collect();
        orchestrator.retire(retiring);
        for app in orchestrator.inner.store.all_apps().await? {
            orchestrator.enqueue(app.id);
        }
        Ok(())
    }

    /// Stops every background task of this orchestrator at its next await, as if the process
    /// stopped there, and returns once none runs any more: what was interrupted is resumed by the
    /// next orchestrator started on the same store. (Calls running on a caller's task, `delete`
    /// and `drain_host`, end with their caller.)
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Runs `task` until it ends or the orchestrator shuts down.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.inner.stop.clone();
        self.inner.tasks.spawn(async move {
            // Once stopped, the task is never polled again, not even once more.
            stop.run_until_cancelled(task).await;
        });
    }

    /// The keys apps' secret variables are sealed with.
    pub fn secrets(&self) -> &crate::secrets::SecretKeys {
        &self.inner.config.secrets
    }

    pub fn links(&self) -> &HostLinks {
        &self.inner.links
    }

    pub fn app_url(&self, app: &str) -> String {
        app_url(&self.inner.config, &self.inner.ingress, app)
    }

    /// The host name an app is served at (`web.localhost`).
    pub fn base_domain(&self) -> &str {
        &self.inner.config.base_domain
    }

    /// The ingress this orchestrator routes through.
    pub fn ingress(&self) -> &Arc<Ingress> {
        &self.inner.ingress
    }

    /// The app's own name under the base domain.
    pub fn app_host(&self, app: &str) -> String {
        app_host(&self.inner.config, app)
    }

    /// The latest report of every replica the agents know.
    pub fn observed(&self) -> ObservedUnion {
        self.inner.links.observed().borrow().clone()
    }

    /// The agents' reports, told as they change.
    pub fn reports(&self) -> tokio::sync::watch::Receiver<ObservedUnion> {
        self.inner.links.observed()
    }

    /// Runs the app's unfinished releases (in order) in the background. A failure (the store
    /// unreachable, say) is retried with backoff until the work is done or the app is gone.
    pub fn enqueue(&self, app_id: i64) {
        let this = self.clone();
        self.spawn(async move {
            let mut backoff = Duration::from_millis(500);
            while let Err(error) = this.run_app(app_id).await {
                tracing::error!(app_id, error = format!("{error:#}"), retry_in = ?backoff, "orchestrating an app failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// Deletes the app: routes first, then drains and stops its containers, then its records.
    /// A release in progress is abandoned at its next step.
    pub async fn delete(&self, app_id: i64) -> anyhow::Result<()> {
        self.inner.store.mark_deleting(app_id).await?;
        // Out of the routes now, even while a release holds the app's lock.
        self.publish_routes().await?;
        self.run_app(app_id).await
    }

    fn app_lock(&self, app_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.app_locks.lock().expect("BUG: app lock table poisoned");
        locks.entry(app_id).or_default().clone()
    }
}
