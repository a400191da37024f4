//! The route table: every app's host name → the ready endpoints of its serving release.

use berth_ingress::RouteSpec;

use super::Orchestrator;

impl Orchestrator {
    /// Recomputes the route table: every app's host → ready replicas of its serving release.
    pub(super) async fn publish_routes(&self) -> anyhow::Result<()> {
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
                RouteSpec::new(self.app_host(&app.name), endpoints)
            })
            .collect();
        self.inner.ingress.apply(routes).await;
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
