//! Hosts: heartbeats checked, silent hosts declared down and their replicas moved, returning
//! hosts brought back, hosts drained and forgotten.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use berth_store::HostRow;
use berth_wire::agent::ObservedContainer;
use berth_wire::api::HostState;

use super::desired::new_replica_id;
use super::{Orchestrator, STARTUP_GRACE};
use crate::links::HostLink;

impl Orchestrator {
    /// Called when a remote agent connects: it is up again (if it was down) and hears its desired
    /// containers at once.
    pub async fn host_connected(&self, name: &str) -> anyhow::Result<Arc<HostLink>> {
        let link = self.inner.links.link(name);
        link.touch();
        self.publish_desired().await?;
        Ok(link)
    }

    /// Forgets a removed host: its link leaves the registry and its connection ends.
    pub fn forget_host(&self, name: &str) {
        self.inner.links.forget(name);
    }

    /// Declares silent remote hosts down (and returning ones up), and moves replicas off hosts
    /// that are down or gone. Runs for the life of the process.
    pub(super) async fn watch_heartbeats(self) {
        let mut tick = tokio::time::interval(self.inner.config.host_check_every);
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
        let mut newly_down = false;
        for host in hosts.iter().filter(|h| !h.is_local) {
            let link = self.inner.links.link(&host.name);
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
                    newly_down = true;
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
        if newly_down {
            // Out of the routes before anything else: no request goes to a host declared down
            // while its replacements are placed (nor once they are recorded).
            self.publish_routes().await?;
        }
        self.replace_lost_replicas(&hosts, &lost).await
    }

    /// Replicas on hosts that are down get a replacement elsewhere and keep their row: the first
    /// of the two to be ready again wins. A host back from a blip (its replica ready before the
    /// replacement) keeps serving and the replacement is drained and stopped; a replacement
    /// ready first retires the replica (forgotten if its host is still down, drained and stopped
    /// if it is back). Replicas of a removed host are replaced outright. A draining host's
    /// replicas are `move_off`'s to retire; here they are only forgotten if the host goes down.
    async fn replace_lost_replicas(&self, hosts: &[HostRow], lost: &HashSet<String>) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let state: HashMap<&str, HostState> = hosts.iter().map(|h| (h.name.as_str(), h.state())).collect();
        let replicas = store.all_replicas().await?;
        let ids: HashSet<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
        let observed = self.observed();
        let ready = |id: &str| observed.get(id).is_some_and(ObservedContainer::ready);
        let (mut changed, mut unplaced) = (0, 0);
        let mut retire = Vec::new();
        for replica in replicas.iter().filter(|r| !r.retiring) {
            let gone = !state.contains_key(replica.host.as_str());
            let down = gone || lost.contains(&replica.host);
            let up = !down && state.get(replica.host.as_str()) == Some(&HostState::Up);
            match replica.replaced_by.as_deref().filter(|id| ids.contains(id)) {
                Some(replacement) if ready(replacement) => {
                    if down {
                        store.forget_replaced(&replica.id, replacement).await?;
                        changed += 1;
                    } else if up {
                        retire.push(replica.id.clone());
                    }
                }
                Some(replacement) if up && ready(&replica.id) => {
                    tracing::info!(replica = replica.id, host = replica.host, "replica is back before its replacement");
                    retire.extend(store.cancel_replacement(&replica.id, replacement).await?);
                    changed += 1;
                }
                Some(_) => {}
                None if down => {
                    let Some(release) = store.release_by_id(replica.release_id).await? else { continue };
                    let plan = self.plan(replica.app_id, &release.spec(), 1).await?;
                    let Some(host) = plan.hosts.first() else {
                        unplaced += 1;
                        continue;
                    };
                    if gone {
                        store.move_replica(&replica.id, &new_replica_id(), host).await?;
                    } else {
                        store.replace_leaving(&replica.id, &new_replica_id(), host).await?;
                    }
                    changed += 1;
                }
                None => {}
            }
        }
        if changed > 0 || !retire.is_empty() {
            tracing::info!(changed, unplaced, retiring = retire.len(), "replicas of unavailable hosts replaced");
            store.mark_retiring(&retire).await?;
            self.publish_desired().await?;
            self.publish_routes().await?;
            self.retire(retire);
        }
        Ok(())
    }

    /// Drains and stops `replicas` (already out of the route table) in the background.
    pub(super) fn retire(&self, replicas: Vec<String>) {
        if replicas.is_empty() {
            return;
        }
        let this = self.clone();
        self.spawn(async move {
            if let Err(error) = this.drain_and_stop(None, &replicas).await {
                tracing::error!(error = format!("{error:#}"), ?replicas, "retiring replicas failed");
            }
        });
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
            store.replace_leaving(&replica.id, &id, target).await?;
            replacements.push(id);
        }
        self.publish_desired().await?;
        let deadline = tokio::time::Instant::now() + self.inner.config.deploy_timeout;
        let mut observed_rx = self.inner.links.observed();
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
