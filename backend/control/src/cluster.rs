//! Leadership among the control-plane instances that share one database, and what each instance
//! does whether it leads or not.
//!
//! Every instance runs a [`Cluster`]: it reports itself (`instances`), tries to take the
//! leadership lease, and while it holds it runs the leader's [`Duties`] (the orchestrator, the
//! builds, the certificates) on a store handle fenced by its term, so that once it loses the lease
//! none of their writes lands. It renews the lease a few times per lease period and steps down (the
//! duties stopped, as a process stop would) as soon as a renewal says the lease is lost, or when
//! it could not renew before the lease ran out. An instance that does not lead follows the
//! leader's publications: its ingress applies the route table the leader published (and tells
//! which version it applied and drained, which the release protocol waits for), and the agents'
//! reports answer its API's reads. Work asked of the leader from any instance goes through the
//! database (`pending_work`, taken by the leader within a poll period), never in process.
//!
//! On SQLite (one process per database file) the one instance takes the lease at start and keeps
//! it: the same code, with nobody to hand over to.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_ingress::follower::Follower;
use berth_ingress::{Ingress, RouteSpec};
use berth_store::{AppRow, InstanceInfo, Store};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::builds::{Builds, BuildsConfig, ReleaseGate};
use crate::certs::{Certs, CertsConfig};
use crate::feed::Feed;
use crate::links::{HostLinks, ObservedUnion};
use crate::orchestrator::{Orchestrator, OrchestratorConfig};
use crate::repos::Repos;

pub use crate::orchestrator::{OBSERVED, ROUTES};

/// What only the leader runs, started when it takes the lease and stopped when it loses it.
#[derive(Clone)]
pub struct Duties {
    pub orchestrator: Orchestrator,
    pub builds: Builds,
    pub certs: Certs,
}

impl Duties {
    /// Deletes the app: no build may release into it any more; then its routes, containers and
    /// records go, then its repository, build logs and images.
    pub async fn delete_app(&self, app: &AppRow) -> anyhow::Result<()> {
        self.builds.cancel(app.id, None, "the app is being deleted").await;
        self.orchestrator.delete(app.id).await?;
        self.builds.forget_app(app).await;
        Ok(())
    }

    /// Stops every task of the duties, as if the process stopped: what they interrupted, the
    /// next leader resumes.
    pub async fn shutdown(&self) {
        self.builds.shutdown().await;
        self.certs.shutdown().await;
        self.orchestrator.shutdown().await;
    }
}

/// This instance's leadership: its term, the store handle fenced by it, the duties.
#[derive(Clone)]
struct Leading {
    term: i64,
    store: Store,
    duties: Duties,
}

/// Starts the leader's duties on the store handle fenced by the term just taken.
pub type StartDuties = Arc<dyn Fn(Store) -> BoxFuture<'static, anyhow::Result<Duties>> + Send + Sync>;

/// What the leader's duties are started with, at every term.
pub struct DutiesConfig {
    pub ingress: Arc<Ingress>,
    /// The process's host links (its own agent's, and remote agents' while it leads).
    pub links: HostLinks,
    pub orchestrator: OrchestratorConfig,
    pub repos: Repos,
    pub builds: BuildsConfig,
    pub certs: CertsConfig,
    /// The quota check builds' releases pass.
    pub release_gate: Arc<dyn ReleaseGate>,
}

/// Starts the orchestrator, then the builds, then the certificates, on the fenced store each
/// term hands over; what started is stopped again when a later part fails.
pub fn start_duties(config: DutiesConfig) -> StartDuties {
    let config = Arc::new(config);
    Arc::new(move |store: Store| {
        let config = config.clone();
        Box::pin(async move {
            let started = start_each(&config, store).await;
            if started.is_err() {
                // A term that never led leaves no agent acting on what it began to tell them.
                let_agents_go(&config.links);
            }
            started
        })
    })
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This instance as the others see it (its id must be unique per process).
    pub instance: InstanceInfo,
    /// How long a lease lasts unrenewed: a dead leader is replaced this long after its last
    /// renewal at most (plus one `poll`).
    pub lease_ttl: Duration,
    /// How often followers look for a free lease and new publications, and the leader for work.
    pub poll: Duration,
    /// The site's names and ports, for the URLs shown to users on every instance.
    pub site: OrchestratorConfig,
    /// Where the certificates' keys are and the operator's certificate: a follower's ingress
    /// serves the stored certificates too (`None`: it serves none).
    pub certificates: Option<CertsConfig>,
}

impl ClusterConfig {
    pub fn new(instance: InstanceInfo, site: OrchestratorConfig) -> ClusterConfig {
        ClusterConfig {
            instance,
            lease_ttl: Duration::from_secs(3),
            poll: Duration::from_millis(250),
            site,
            certificates: None,
        }
    }
}

/// How often a follower looks for changed certificates.
const CERTIFICATES_EVERY: Duration = Duration::from_secs(5);

/// The orchestrator, then the builds, then the certificates; what started is stopped again when
/// a later part fails.
async fn start_each(config: &DutiesConfig, store: Store) -> anyhow::Result<Duties> {
    let orchestrator =
        Orchestrator::start(store.clone(), config.ingress.clone(), config.links.clone(), config.orchestrator.clone())
            .await?;
    let builds =
        match Builds::start(store.clone(), orchestrator.clone(), config.repos.clone(), config.builds.clone()).await {
            Ok(builds) => builds,
            Err(error) => {
                orchestrator.shutdown().await;
                return Err(error);
            }
        };
    builds.set_release_gate(config.release_gate.clone());
    match Certs::start(store, config.ingress.clone(), orchestrator.clone(), config.certs.clone()).await {
        Ok(certs) => Ok(Duties { orchestrator, builds, certs }),
        Err(error) => {
            builds.shutdown().await;
            orchestrator.shutdown().await;
            Err(error)
        }
    }
}

/// Lets every agent of `links` go: the in-process one stops acting on lists it was given (its
/// containers untouched), remote ones are disconnected (to reconnect and find the leader).
fn let_agents_go(links: &HostLinks) {
    for link in links.all() {
        match link.is_local() {
            true => link.stand_down(),
            false => links.forget(&link.name),
        }
    }
}

/// The kinds of work other instances ask of the leader (`pending_work.kind`): an app's releases
/// to run (target: its id), an app to delete (its id), the route table to recompute, the
/// certificates to look at.
const WORK_APP: &str = "app";
const WORK_DELETE: &str = "delete";
const WORK_ROUTES: &str = "routes";
const WORK_CERTS: &str = "certs";

/// How long a follower asked to delete an app waits for the leader to have done it.
const DELETE_WAIT: Duration = Duration::from_secs(300);

/// A new id for this process: `host/pid/random`, never reused by a later process.
pub fn instance_id(host: &str) -> String {
    use rand::Rng as _;
    format!("{host}/{}/{:08x}", std::process::id(), rand::rng().random::<u32>())
}

/// Cheap to clone; all clones are the same instance's view.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    ingress: Arc<Ingress>,
    config: ClusterConfig,
    start_duties: StartDuties,
    /// The duties while this instance leads.
    leading: watch::Sender<Option<Leading>>,
    /// The agents' reports as the leader last published them (read while following).
    observed: watch::Sender<ObservedUnion>,
    /// Told whenever the reports `observed()` answers with may have changed.
    reports_changed: watch::Sender<()>,
    feed: Feed,
    /// Applies the published tables to the ingress while following, and drains what they remove.
    follower: Arc<Follower>,
    /// Held while the follower loop applies a table, and while this instance starts leading: the
    /// two never interleave, so an older published table cannot overwrite the new orchestrator's.
    routing: tokio::sync::Mutex<()>,
    /// The table this ingress routed when this instance stepped down, which the follower loop
    /// drains from when it applies the next.
    handed_over: Mutex<Option<Vec<RouteSpec>>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Cluster {
    /// Reports this instance, makes a first attempt at the lease (so a lone instance leads
    /// before it serves anything) and keeps trying, renewing and following in the background.
    pub async fn start(
        store: Store,
        ingress: Arc<Ingress>,
        config: ClusterConfig,
        start_duties: StartDuties,
    ) -> anyhow::Result<Cluster> {
        store.instance_alive(&config.instance).await.context("reporting this instance")?;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                store,
                follower: Arc::new(Follower::new(ingress.clone())),
                ingress,
                config,
                start_duties,
                leading: watch::channel(None).0,
                observed: watch::channel(ObservedUnion::new()).0,
                reports_changed: watch::channel(()).0,
                feed: Feed::new(),
                routing: tokio::sync::Mutex::new(()),
                handed_over: Mutex::new(None),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        let term = cluster.try_to_lead().await?;
        let stop = cluster.inner.stop.clone();
        cluster.inner.tasks.spawn(stop.clone().run_until_cancelled_owned(cluster.clone().elect(term)));
        cluster.inner.tasks.spawn(stop.clone().run_until_cancelled_owned(cluster.clone().report()));
        cluster.inner.tasks.spawn(stop.clone().run_until_cancelled_owned(cluster.clone().follow()));
        cluster.inner.tasks.spawn(stop.clone().run_until_cancelled_owned(cluster.clone().tell_reports_changed()));
        let feed = {
            let (leading, reports) = (cluster.clone(), cluster.clone());
            cluster.inner.feed.clone().run(
                cluster.inner.store.clone(),
                cluster.inner.config.poll,
                cluster.inner.reports_changed.subscribe(),
                move || reports.observed(),
                move || leading.leader().is_some(),
            )
        };
        cluster.inner.tasks.spawn(stop.run_until_cancelled_owned(feed));
        Ok(cluster)
    }

    /// Stops leading (the duties stopped, the lease given up so another instance takes over
    /// at once) and following, and removes this instance's row.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        if let Some(term) = self.step_down("this instance is stopping").await {
            let _ = self.inner.store.release_lease(&self.inner.config.instance.id, term).await;
        }
        let _ = self.inner.store.forget_instance(&self.inner.config.instance.id).await;
    }

    /// The leader's duties, while this instance leads.
    pub fn leader(&self) -> Option<Duties> {
        self.inner.leading.borrow().as_ref().map(|leading| leading.duties.clone())
    }

    /// This instance's term while it leads.
    pub fn term(&self) -> Option<i64> {
        self.inner.leading.borrow().as_ref().map(|leading| leading.term)
    }

    pub fn instance(&self) -> &InstanceInfo {
        &self.inner.config.instance
    }

    /// This instance's ingress.
    pub fn ingress(&self) -> &Arc<Ingress> {
        &self.inner.ingress
    }

    /// The keys apps' secret variables are sealed with.
    /// Where the stored certificates' keys are (`None`: this instance serves no certificates).
    pub fn certificates(&self) -> Option<&CertsConfig> {
        self.inner.config.certificates.as_ref()
    }

    pub fn secrets(&self) -> &crate::secrets::SecretKeys {
        &self.inner.config.site.secrets
    }

    pub fn base_domain(&self) -> &str {
        &self.inner.config.site.base_domain
    }

    /// The app's own name under the base domain.
    pub fn app_host(&self, app: &str) -> String {
        crate::orchestrator::app_host(&self.inner.config.site, app)
    }

    /// Where users reach the app.
    pub fn app_url(&self, app: &str) -> String {
        crate::orchestrator::app_url(&self.inner.config.site, &self.inner.ingress, app)
    }

    /// The last `seconds` of an app's traffic through this instance's ingress.
    pub fn traffic(&self, app: &str, seconds: usize) -> Vec<berth_ingress::TrafficSecond> {
        self.inner.ingress.traffic(&self.app_host(app), seconds).unwrap_or_default()
    }

    /// What changed of what the API shows, for its live streams.
    pub fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    /// Tells `reports_changed` whenever the reports [`Cluster::observed`] answers with change:
    /// the leader's orchestrator's while this instance leads, the publication it follows
    /// otherwise.
    async fn tell_reports_changed(self) {
        let mut leading = self.inner.leading.subscribe();
        let mut following = self.inner.observed.subscribe();
        loop {
            let mut leader_reports = leading.borrow_and_update().as_ref().map(|l| l.duties.orchestrator.reports());
            self.inner.reports_changed.send_replace(());
            loop {
                let leader_changed = async {
                    match &mut leader_reports {
                        Some(reports) => reports.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = leading.changed() => if changed.is_err() { return } else { break },
                    changed = following.changed() => if changed.is_err() { return },
                    still = leader_changed => if !still { leader_reports = None },
                }
                self.inner.reports_changed.send_replace(());
            }
        }
    }

    /// The agents' latest reports: the leader's own, or as it last published them.
    pub fn observed(&self) -> ObservedUnion {
        match self.leader() {
            Some(duties) => duties.orchestrator.observed(),
            None => self.inner.observed.borrow().clone(),
        }
    }

    /// Has the app's unfinished releases run by the leader, whichever instance it is.
    pub async fn enqueue(&self, app_id: i64) -> anyhow::Result<()> {
        match self.leader() {
            Some(duties) => duties.orchestrator.enqueue(app_id),
            None => self.inner.store.request_work(WORK_APP, &app_id.to_string()).await?,
        }
        Ok(())
    }

    /// Deletes the app (see [`Duties::delete_app`]), through the leader whichever instance it
    /// is; returns once it is gone.
    pub async fn delete_app(&self, app: &AppRow) -> anyhow::Result<()> {
        if let Some(duties) = self.leader() {
            return duties.delete_app(app).await;
        }
        let store = &self.inner.store;
        store.mark_deleting(app.id).await?;
        store.request_work(WORK_DELETE, &app.id.to_string()).await?;
        let deadline = Instant::now() + DELETE_WAIT;
        while store.app_by_id(app.id).await?.is_some() {
            if Instant::now() > deadline {
                anyhow::bail!("the leader has not finished deleting {} yet; it carries on", app.name);
            }
            tokio::time::sleep(self.inner.config.poll).await;
        }
        Ok(())
    }

    /// Has the route table recomputed by the leader (a domain or an edge setting changed), and,
    /// when this instance leads, waits until it is applied here.
    pub async fn publish_routes(&self) -> anyhow::Result<()> {
        match self.leader() {
            Some(duties) => duties.orchestrator.publish_routes().await,
            None => Ok(self.inner.store.request_work(WORK_ROUTES, "").await?),
        }
    }

    /// Has the leader look for certificates to obtain now (a domain was added).
    pub async fn wake_certs(&self) -> anyhow::Result<()> {
        match self.leader() {
            Some(duties) => duties.certs.wake(),
            None => self.inner.store.request_work(WORK_CERTS, "").await?,
        }
        Ok(())
    }

    /// The first attempt at the lease, and each later one: the term taken, with the duties
    /// started, and when the lease was asked for (it lasts its TTL from then at most); `None`
    /// while another instance holds it.
    async fn try_to_lead(&self) -> anyhow::Result<Option<(i64, Instant)>> {
        let config = &self.inner.config;
        let id = &config.instance.id;
        let asked = Instant::now();
        let Some(term) = self.inner.store.acquire_lease(id, &config.instance.address, config.lease_ttl).await? else {
            return Ok(None);
        };
        tracing::info!(instance = %id, term, "this instance leads: starting the orchestrator");
        let store = self.inner.store.fenced(id, term);
        // The follower loop applies no published table from now on: the orchestrator routes.
        let _routing = self.inner.routing.lock().await;
        match (self.inner.start_duties)(store.clone()).await {
            Ok(duties) => {
                self.inner.leading.send_replace(Some(Leading { term, store, duties }));
                Ok(Some((term, asked)))
            }
            Err(error) => {
                // Give the lease up, so another instance (or a later attempt) tries.
                let _ = self.inner.store.release_lease(id, term).await;
                Err(error.context("starting the leader's duties"))
            }
        }
    }

    /// Stops the duties (if leading) and returns the term they held. Agents are let go first:
    /// the in-process one stops acting on lists the deposed orchestrator gave it, remote ones are
    /// disconnected (to reconnect and find the new leader); again once the orchestrator stopped,
    /// in case it published a list meanwhile.
    async fn step_down(&self, why: &str) -> Option<i64> {
        // The follower loop applies nothing until the orchestrator has stopped and handed over
        // what this ingress routes.
        let _routing = self.inner.routing.lock().await;
        let leading = self.inner.leading.send_replace(None)?;
        tracing::warn!(instance = %self.inner.config.instance.id, why, "this instance no longer leads: stopping the orchestrator");
        let links = leading.duties.orchestrator.links();
        let_agents_go(links);
        leading.duties.shutdown().await;
        let_agents_go(links);
        // What this ingress routes now: the follower loop drains from it on the next table.
        let routed = leading.duties.orchestrator.applied_routes().await;
        *self.inner.handed_over.lock().expect("BUG: hand-over poisoned") = Some(routed);
        Some(leading.term)
    }

    /// Takes the lease when it is free, renews it while held, steps down when it is lost.
    /// `first` is the first attempt's outcome: the term and when the lease was asked for.
    async fn elect(self, first: Option<(i64, Instant)>) {
        let config = self.inner.config.clone();
        let id = &config.instance.id;
        let renew_every = config.lease_ttl / 3;
        // Stand down this long before the lease could have run out, unrenewed.
        let margin = renew_every / 2;
        let mut term = first.map(|(term, _)| term);
        // Until when the lease is ours for sure: its TTL from when the last successful renewal
        // (or the acquisition) was asked for.
        let mut held_until = first.map_or_else(Instant::now, |(_, asked)| asked + config.lease_ttl);
        // Renewed soon after it is taken: starting the duties may have used much of the lease.
        let mut renewed = false;
        loop {
            match term {
                None => {
                    tokio::time::sleep(config.poll).await;
                    match self.try_to_lead().await {
                        Ok(Some((taken, asked))) => {
                            (term, held_until, renewed) = (Some(taken), asked + config.lease_ttl, false);
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::error!(error = format!("{error:#}"), "taking the lease failed");
                            tokio::time::sleep(config.lease_ttl).await;
                        }
                    }
                }
                Some(held) => {
                    // After a failed attempt, try again soon.
                    tokio::time::sleep(if renewed { renew_every } else { config.poll }).await;
                    let started = Instant::now();
                    let left = held_until.saturating_duration_since(started).saturating_sub(margin);
                    if left.is_zero() {
                        self.step_down("the lease could not be renewed in time").await;
                        // Should a renewal have landed unseen, the lease is given up, so that taking
                        // it again raises the term past anything the stopped duties still try.
                        let release = self.inner.store.release_lease(id, held);
                        let _ = tokio::time::timeout(renew_every, release).await;
                        term = None;
                        continue;
                    }
                    // Never waits past the point where it must stand down.
                    let renewal = self.inner.store.renew_lease(id, held, config.lease_ttl);
                    match tokio::time::timeout(left.min(renew_every), renewal).await {
                        Ok(Ok(true)) => (held_until, renewed) = (started + config.lease_ttl, true),
                        Ok(Ok(false)) => {
                            self.step_down("another instance took the lease").await;
                            term = None;
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(error = format!("{error:#}"), "renewing the lease failed; retrying");
                            renewed = false;
                        }
                        Err(_) => {
                            tracing::warn!("renewing the lease timed out; retrying");
                            renewed = false;
                        }
                    }
                }
            }
        }
    }

    /// Reports this instance every second and, while leading, forgets instances silent for a
    /// minute and does the work other instances asked for.
    async fn report(self) {
        let config = &self.inner.config;
        let mut last_report = Instant::now();
        loop {
            tokio::time::sleep(config.poll).await;
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                if let Err(error) = self.inner.store.instance_alive(&config.instance).await {
                    tracing::warn!(error = %error, "reporting this instance failed");
                }
                // One instance is enough to tidy up (it is a write, under the write lock).
                if self.leader().is_some() {
                    let _ = self.inner.store.forget_silent_instances(Duration::from_secs(60)).await;
                }
            }
            let Some(Leading { store, duties, .. }) = self.inner.leading.borrow().clone() else { continue };
            let work = match store.take_work().await {
                Ok(work) => work,
                Err(error) => {
                    tracing::warn!(error = %error, "taking the work other instances asked for failed");
                    continue;
                }
            };
            let (mut routes, mut certs) = (false, false);
            for item in work {
                match (item.kind.as_str(), item.target.parse::<i64>()) {
                    (WORK_APP, Ok(app_id)) => duties.orchestrator.enqueue(app_id),
                    (WORK_DELETE, Ok(app_id)) => self.delete_in_background(&store, duties.clone(), app_id).await,
                    (WORK_ROUTES, _) => routes = true,
                    (WORK_CERTS, _) => certs = true,
                    (kind, _) => {
                        tracing::warn!(kind, target = %item.target, "unknown work asked of the leader; ignored")
                    }
                }
            }
            if certs {
                duties.certs.wake();
            }
            if routes && let Err(error) = duties.orchestrator.publish_routes().await {
                tracing::error!(error = format!("{error:#}"), "publishing routes asked for by another instance failed");
            }
        }
    }

    /// The leader's side of a deletion another instance was asked for; it ends with the
    /// leadership (what is left, the next leader's orchestrator finishes: the app stays marked).
    async fn delete_in_background(&self, store: &Store, duties: Duties, app_id: i64) {
        let app = match store.app_by_id(app_id).await {
            Ok(Some(app)) => app,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(app_id, error = %error, "reading an app to delete failed");
                return;
            }
        };
        let stop = self.inner.stop.clone();
        let mut leadership = self.inner.leading.subscribe();
        self.inner.tasks.spawn(async move {
            let lost = leadership.wait_for(Option::is_none);
            tokio::select! {
                deleted = duties.delete_app(&app) => if let Err(error) = deleted {
                    tracing::error!(app = app.name, error = format!("{error:#}"), "deleting an app failed");
                },
                _ = lost => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// While not leading: applies the leader's route table to this instance's ingress (draining
    /// the endpoints it removes, then saying which version it applied) and keeps its reports.
    async fn follow(self) {
        let store = &self.inner.store;
        let (mut routes_seen, mut observed_seen) = (0, 0);
        // The stored certificates' ids last loaded, and when they were last looked at.
        let mut certificates_seen: Option<Vec<i64>> = None;
        let mut certificates_at = Instant::now();
        loop {
            tokio::time::sleep(self.inner.config.poll).await;
            let routing = self.inner.routing.lock().await;
            if self.leader().is_some() {
                // The orchestrator routes this ingress; when leadership ends, start over.
                (routes_seen, observed_seen, certificates_seen) = (0, 0, None);
                continue;
            }
            if let Some(routed) = self.inner.handed_over.lock().expect("BUG: hand-over poisoned").take() {
                routes_seen = 0;
                self.inner.follower.handed_over(routed);
            }
            let routes_version = store.published_version(ROUTES).await;
            let new_routes = matches!(routes_version, Ok(version) if version != routes_seen);
            // Certificates before a new table (which may redirect a name to HTTPS because it has
            // one), and every few seconds.
            if let Some(config) = &self.inner.config.certificates
                && (new_routes || certificates_seen.is_none() || certificates_at.elapsed() >= CERTIFICATES_EVERY)
            {
                certificates_at = Instant::now();
                match store.certificate_ids().await {
                    Ok(ids) if certificates_seen.as_ref() != Some(&ids) => {
                        match crate::certs::load_into(store, config, &self.inner.ingress).await {
                            // Ids noted only when every certificate loaded: a key file not there
                            // yet is tried again.
                            Ok(0) => certificates_seen = Some(ids),
                            Ok(_) => certificates_seen = None,
                            Err(error) => {
                                tracing::warn!(error = format!("{error:#}"), "loading the certificates failed")
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(error = %error, "reading the certificates' ids failed"),
                }
            }
            match routes_version {
                Ok(version) if version != routes_seen => match self.apply_published_routes().await {
                    Ok(Some(version)) => routes_seen = version,
                    Ok(None) => {}
                    Err(error) => tracing::warn!(error = format!("{error:#}"), "applying the leader's routes failed"),
                },
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "reading the leader's route version failed"),
            }
            drop(routing);
            match store.published_version(OBSERVED).await {
                Ok(version) if version != observed_seen => match store.published(OBSERVED).await {
                    Ok(Some(publication)) => match serde_json::from_str::<ObservedUnion>(&publication.body) {
                        Ok(observed) => {
                            self.inner.observed.send_replace(observed);
                            observed_seen = publication.version;
                        }
                        Err(error) => tracing::warn!(error = %error, "the leader's published reports do not parse"),
                    },
                    Ok(None) => {}
                    Err(error) => tracing::warn!(error = %error, "reading the leader's reports failed"),
                },
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "reading the leader's report version failed"),
            }
        }
    }

    /// Applies the published route table and starts draining what it removed; returns its
    /// version.
    async fn apply_published_routes(&self) -> anyhow::Result<Option<i64>> {
        let Some(publication) = self.inner.store.published(ROUTES).await? else { return Ok(None) };
        let routes: Vec<RouteSpec> = serde_json::from_str(&publication.body).context("the published route table")?;
        let version = publication.version;
        let drain = self.inner.follower.apply(version, routes, self.inner.config.site.drain_timeout).await;
        let this = self.clone();
        let stop = self.inner.stop.clone();
        self.inner.tasks.spawn(async move {
            let Some(done) = stop.run_until_cancelled(drain.run()).await else { return };
            if let Err(error) = this.inner.store.set_routes_applied(&this.inner.config.instance.id, done).await {
                tracing::warn!(error = %error, "reporting the applied route table failed");
            }
        });
        Ok(Some(version))
    }
}
