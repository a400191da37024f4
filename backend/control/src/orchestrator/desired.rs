//! What each host's agent must run, and where new replicas go.

use std::collections::HashMap;

use berth_wire::AppSpec;
use berth_wire::api::HostState;
use rand::RngCore;

use super::Orchestrator;
use crate::scheduler::{self, HostSlot, Request};
use crate::secrets::SecretScope;

impl Orchestrator {
    /// Sends every agent the full list of containers desired on its host.
    pub(super) async fn publish_desired(&self) -> anyhow::Result<()> {
        let desired = self.inner.store.desired_containers(self.inner.config.stop_grace_secs).await?;
        let secrets = &self.inner.config.secrets;
        let links = self.inner.links.all();
        let mut by_host: HashMap<String, Vec<_>> = HashMap::new();
        for placement in desired {
            let mut container = placement.container;
            let scope = SecretScope { team: &container.team, app: &container.app };
            match secrets.open_all(scope, &placement.sealed_secrets) {
                Ok(opened) => container.env.extend(opened),
                Err(error) => {
                    // Never start a container without one of its variables, and never stop one
                    // for it either: the host keeps what it was last told of this replica (a
                    // new replica is left out; its release fails saying why).
                    tracing::error!(%error, replica = container.replica_id, "a secret does not open");
                    let link = links.iter().find(|l| l.name == placement.host);
                    match link.and_then(|l| l.desired_container(&container.replica_id)) {
                        Some(previous) => container = previous,
                        None => continue,
                    }
                }
            }
            by_host.entry(placement.host).or_default().push(container);
        }
        for link in links {
            link.set_desired(by_host.remove(&link.name).unwrap_or_default());
        }
        Ok(())
    }

    pub(super) async fn replicas_of_release(&self, app_id: i64, release_id: i64) -> anyhow::Result<Vec<String>> {
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

    pub(super) async fn plan(&self, app_id: i64, spec: &AppSpec, count: usize) -> anyhow::Result<scheduler::Plan> {
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
}

/// A fresh replica id.
pub(super) fn new_replica_id() -> String {
    let mut bytes = [0u8; 5];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
