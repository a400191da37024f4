//! The route table: every app's names (its host under the base domain and its custom domains)
//! → the ready endpoints of its serving release, with how each name is served.

use berth_ingress::{RouteOptions, RouteSpec};
use berth_wire::edge::AppProtocol;

use super::Orchestrator;

impl Orchestrator {
    /// Recomputes the route table: every app's names → ready replicas of its serving release.
    /// Also called when certificates change (a name with one is redirected to HTTPS).
    pub async fn publish_routes(&self) -> anyhow::Result<()> {
        let mut last = self.inner.routes_lock.lock().await;
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

    /// Re-routes on every change of the agents' reports, for the life of the orchestrator.
    pub(super) async fn follow_reports(self) {
        let mut reports = self.inner.links.observed();
        loop {
            if let Err(error) = self.publish_routes().await {
                tracing::error!(error = format!("{error:#}"), "publishing routes failed");
            }
            if reports.changed().await.is_err() {
                return;
            }
            reports.borrow_and_update();
        }
    }
}
