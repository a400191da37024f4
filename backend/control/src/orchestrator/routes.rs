//! The route table: every app's names (its host under the base domain and its custom domains)
//! → the ready endpoints of its serving release, with how each name is served.

use berth_ingress::{RouteOptions, RouteSpec};
use berth_wire::edge::AppProtocol;

use super::Orchestrator;

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
        let https = self.inner.config.https_port.is_some();
        let mut routes = Vec::new();
        for app in apps.iter().filter(|a| !a.deleting) {
            let endpoints: Vec<_> = replicas
                .iter()
                .filter(|r| r.app_id == app.id && Some(r.release_number) == app.serving_release && !r.retiring)
                .filter_map(|r| observed.get(&r.id).filter(|o| o.ready()))
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
            self.inner.ingress.apply(routes.clone()).await;
            *last = routes;
        }
        Ok(())
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
