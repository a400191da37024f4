//! The route table: every app's names (its host under the base domain and its custom domains)
//! → the ready endpoints of its serving release, with how each name is served.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use berth_ingress::{RouteOptions, RouteSpec};
use berth_wire::api::HostState;
use berth_wire::edge::AppProtocol;

use super::{OBSERVED, Orchestrator, ROUTES, STARTUP_GRACE};
use crate::links::ObservedUnion;

impl Orchestrator {
    /// Recomputes the route table: every app's names → ready replicas of its serving release.
    /// Also called when certificates change (a name with one is redirected to HTTPS).
    pub async fn publish_routes(&self) -> anyhow::Result<()> {
        let published = self.compute_routes().await;
        if published.is_err() {
            self.inner.routes_failed.notify_one();
        }
        published
    }

    async fn compute_routes(&self) -> anyhow::Result<()> {
        let mut last = self.inner.routes_lock.lock().await;
        self.inner.route_computations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = &self.inner.store;
        let apps = store.all_apps().await?;
        let replicas = store.all_replicas().await?;
        let edges = store.app_edges().await?;
        let observed = self.observed();
        let inherited = {
            let mut inherited = self.inner.inherited.lock().expect("BUG: inherited reports poisoned");
            // Once its agent says it is ready, a replica's own reports rule, for good: a later
            // failing probe is not mistaken for the probing after its adoption.
            inherited.retain(|id, _| !observed.get(id).is_some_and(|o| o.ready()));
            inherited.clone()
        };
        // Inherited reports speak for replicas on hosts that are up (or draining) only: a host
        // declared down or removed has no replica worth routing, whatever an earlier leader heard.
        let available: std::collections::HashSet<String> = if inherited.is_empty() {
            Default::default()
        } else {
            store
                .hosts()
                .await?
                .into_iter()
                .filter(|h| matches!(h.state(), HostState::Up | HostState::Draining))
                .map(|h| h.name)
                .collect()
        };
        // A replica's report: its agent's; or, while this orchestrator is new, the one the
        // previous leader published, when it said ready and the agent has not reported the
        // replica yet, or reports the very same container at the same endpoint, running, not
        // restarted since, and not yet ready again after its adoption.
        let report = |replica: &berth_store::ReplicaRow| {
            let live = observed.get(&replica.id);
            let earlier = inherited.get(&replica.id).filter(|o| o.ready() && available.contains(&replica.host));
            match (live, earlier) {
                (None, earlier) => earlier,
                (Some(live), Some(earlier))
                    if live.phase == berth_wire::agent::ContainerPhase::Running
                        && live.container_id == earlier.container_id
                        && live.endpoint == earlier.endpoint
                        && live.restarts <= earlier.restarts =>
                {
                    Some(earlier)
                }
                (Some(live), _) => Some(live),
            }
        };
        let https = self.inner.config.https_port.is_some();
        let mut routes = Vec::new();
        for app in apps.iter().filter(|a| !a.deleting) {
            let endpoints: Vec<_> = replicas
                .iter()
                .filter(|r| r.app_id == app.id && Some(r.release_number) == app.serving_release && !r.retiring)
                .filter_map(|r| report(r).filter(|o| o.ready()))
                .filter_map(|o| o.endpoint.as_deref()?.parse().ok())
                .collect();
            let edge = edges.get(&app.id).cloned().unwrap_or_default();
            for host in std::iter::once(self.app_host(&app.name)).chain(edge.domains) {
                let secured = https && self.inner.ingress.certificate_for(&host).is_some();
                let options = RouteOptions {
                    https_redirect: secured && edge.settings.https_redirect.unwrap_or(true),
                    hsts_max_age: edge.settings.hsts_max_age.filter(|&age| age > 0),
                    upstream_h2c: edge.protocol == AppProtocol::H2c,
                };
                routes.push(RouteSpec { host, endpoints: endpoints.clone(), options });
            }
        }
        if *last != routes {
            // The reports behind the table first: a leader that dies now leaves the next one
            // what made these endpoints routable (reports are otherwise published once a second
            // at most, and a replica just ready would not be routed from them).
            self.publish_reports_now().await;
            // Published first: a leader that lost the lease is refused here and routes nothing.
            let body = serde_json::to_string(&routes).context("encoding the route table")?;
            let version = store.publish(ROUTES, &body).await.context("publishing the route table")?;
            self.inner.routes_version.store(version, Ordering::Relaxed);
            self.inner.ingress.apply(routes.clone()).await;
            *last = routes;
        }
        Ok(())
    }

    /// The table this orchestrator last applied to the ingress.
    pub async fn applied_routes(&self) -> Vec<RouteSpec> {
        self.inner.routes_lock.lock().await.clone()
    }

    /// The version of the route table this orchestrator last published (0: none yet).
    pub fn routes_version(&self) -> i64 {
        self.inner.routes_version.load(Ordering::Relaxed)
    }

    /// Takes the reports the previous leader published, to route replicas whose agents have not
    /// reported to this orchestrator yet; they are dropped once every agent had the start-up
    /// grace to reconnect (a host silent longer is declared down anyway).
    pub(super) async fn inherit_reports(&self) -> anyhow::Result<()> {
        let Some(publication) = self.inner.store.published(OBSERVED).await? else { return Ok(()) };
        let reports: ObservedUnion = match serde_json::from_str(&publication.body) {
            Ok(reports) => reports,
            Err(error) => {
                tracing::warn!(error = %error, "the previous leader's published reports do not parse; ignored");
                return Ok(());
            }
        };
        *self.inner.inherited.lock().expect("BUG: inherited reports poisoned") = reports;
        let this = self.clone();
        self.spawn(async move {
            tokio::time::sleep(this.inner.config.heartbeat_timeout + STARTUP_GRACE).await;
            this.inner.inherited.lock().expect("BUG: inherited reports poisoned").clear();
            if let Err(error) = this.publish_routes().await {
                tracing::error!(error = format!("{error:#}"), "publishing routes without the inherited reports failed");
            }
            this.publish_reports_now().await;
        });
        Ok(())
    }

    /// Publishes the agents' reports for the other instances (their API's reads), at most once
    /// a second, whenever they change.
    pub(super) async fn publish_reports(self) {
        let mut reports = self.inner.links.observed();
        loop {
            if reports.changed().await.is_err() {
                return;
            }
            reports.borrow_and_update();
            self.publish_reports_now().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Publishes the agents' reports, with the inherited ones of replicas no agent reported yet
    /// (a leader after this one inherits them in turn).
    async fn publish_reports_now(&self) {
        let _publishing = self.inner.reports_lock.lock().await;
        let mut union = self.observed();
        for (id, report) in self.inner.inherited.lock().expect("BUG: inherited reports poisoned").iter() {
            union.entry(id.clone()).or_insert_with(|| report.clone());
        }
        match serde_json::to_string(&union) {
            Ok(body) => {
                if let Err(error) = self.inner.store.publish(OBSERVED, &body).await {
                    tracing::warn!(error = %error, "publishing the agents' reports failed");
                }
            }
            Err(error) => tracing::error!(error = %error, "encoding the agents' reports failed"),
        }
    }

    /// How many times the route table was computed since start (a figure for `/metrics`, and
    /// for tests that what does not route does not recompute it).
    pub fn route_computations(&self) -> u64 {
        self.inner.route_computations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Re-routes whenever the agents' reports change what routes: which replicas are ready at
    /// which endpoint. Everything else a report carries (CPU and memory samples every few seconds,
    /// restart counts, messages) leaves the table as it is, and is not worth three store reads.
    /// Changes of the store (releases, hosts lost, domains) publish routes themselves; when such
    /// a publication fails (the store unreachable, say), this tries again every second until one
    /// succeeds.
    pub(super) async fn follow_reports(self) {
        let mut reports = self.inner.links.observed();
        let mut routed = None;
        let mut retry = false;
        loop {
            let ready = ready_endpoints(&reports.borrow_and_update());
            if retry || routed.as_ref() != Some(&ready) {
                match self.compute_routes().await {
                    Ok(()) => (routed, retry) = (Some(ready), false),
                    Err(error) => {
                        tracing::error!(error = format!("{error:#}"), "publishing routes failed; retrying in 1 s");
                        retry = true;
                    }
                }
            }
            tokio::select! {
                changed = reports.changed() => if changed.is_err() { return },
                () = self.inner.routes_failed.notified() => retry = true,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)), if retry => {}
            }
        }
    }
}

/// What of the reports decides routes: each ready replica's endpoint.
fn ready_endpoints(reports: &crate::links::ObservedUnion) -> std::collections::BTreeMap<String, String> {
    reports
        .iter()
        .filter(|(_, observed)| observed.ready())
        .filter_map(|(id, observed)| Some((id.clone(), observed.endpoint.clone()?)))
        .collect()
}
