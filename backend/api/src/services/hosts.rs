//! Hosts: join tokens, joining, listing, draining and removing hosts.

use berth_store::AppRow;
use berth_wire::agent::{ContainerPhase, HostCapacity, JoinRequest, JoinResponse};
use berth_wire::api::{CreateJoinToken, HostInfo, HostReplica, JoinTokenCreated};

use super::validate::{valid_label, validate_app_name};
use super::{Result, ServiceError, Services, invalid};
use crate::auth::{self, Principal};
use crate::clock::now_ms;

impl Services {
    async fn create_join_token_inner(&self, principal: &Principal, input: CreateJoinToken) -> Result<JoinTokenCreated> {
        principal.require_instance_admin()?;
        let ttl = input.ttl_secs.unwrap_or(3600);
        let uses = input.uses.unwrap_or(1);
        if ttl == 0 || ttl > 30 * 24 * 3600 {
            return Err(invalid("ttl_secs", "the lifetime must be between 1 second and 30 days"));
        }
        if uses == 0 || uses > 1000 {
            return Err(invalid("uses", "uses must be between 1 and 1000"));
        }
        let token = format!("berth_join_{}", auth::new_token().trim_start_matches("berth_"));
        let expires_at = now_ms() + ttl as i64 * 1000;
        let kind = input.kind.unwrap_or_default();
        self.store
            .create_join_token(&auth::hash_token(&token), uses, expires_at, principal.user_id, kind.into())
            .await?;
        Ok(JoinTokenCreated { token, expires_at, uses, kind })
    }

    /// A new host joins with a join token and receives its own credential.
    async fn join_host_inner(&self, request: JoinRequest) -> Result<JoinResponse> {
        validate_app_name(&request.name).map_err(|_| invalid("name", "the host name must be a DNS label"))?;
        let Ok(address) = request.advertise_addr.parse::<std::net::IpAddr>() else {
            return Err(invalid("advertise_addr", format!("{:?} is not an IP address", request.advertise_addr)));
        };
        if let Some(why) = unroutable(address) {
            return Err(invalid(
                "advertise_addr",
                format!("{address} is {why}: the ingress cannot reach a host there"),
            ));
        }
        if !request.capacity.is_plausible() {
            let max = HostCapacity::MAX;
            return Err(invalid(
                "capacity",
                format!("at most {} mCPU and {} MiB can be claimed", max.cpu_millis, max.memory_mb),
            ));
        }
        if let Some((k, v)) = request.labels.iter().find(|(k, v)| !valid_label(k) || !valid_label(v)) {
            return Err(invalid("labels", format!("{k}={v} is not a valid label")));
        }
        let credential = format!("berth_host_{}", auth::new_token().trim_start_matches("berth_"));
        self.store
            .join_host(
                &auth::hash_token(&request.join_token),
                &request.name,
                &request.advertise_addr,
                &request.labels,
                &request.capacity,
                &auth::hash_token(&credential),
            )
            .await?;
        tracing::info!(host = request.name, address = request.advertise_addr, "host joined");
        Ok(JoinResponse { host: request.name, credential })
    }

    /// The control plane's instances, which leads, and how far each ingress follows.
    pub async fn control_plane_status(&self, principal: &Principal) -> Result<berth_wire::api::ControlPlaneStatus> {
        principal.require_instance_admin()?;
        let lease = self.store.lease().await?;
        let leader = (lease.expires_in_ms > 0 && !lease.holder.is_empty()).then_some(lease.holder);
        let instances = self
            .store
            .instances()
            .await?
            .into_iter()
            .map(|i| berth_wire::api::InstanceStatus {
                leader: leader.as_deref() == Some(i.id.as_str()),
                id: i.id,
                host: i.host,
                version: i.version,
                address: i.address,
                started_at: i.started_at,
                silent_ms: i.silent_ms.max(0),
                routes_applied: i.routes_applied,
                kind: i.kind,
            })
            .collect();
        Ok(berth_wire::api::ControlPlaneStatus {
            engine: self.store.engine().to_string(),
            answered_by: self.cluster.instance().id.clone(),
            leader,
            term: lease.term,
            routes_version: self.store.published_version(berth_control::cluster::ROUTES).await?,
            instances,
            ingress_nodes: self.store.ingress_nodes().await?,
        })
    }

    pub async fn list_hosts(&self, principal: &Principal) -> Result<Vec<HostInfo>> {
        principal.require_instance_admin()?;
        let observed = self.cluster.observed();
        let leader = self.cluster.leader();
        let placements = self.store.placements().await?;
        let replicas = self.store.all_replicas().await?;
        let apps: std::collections::HashMap<i64, AppRow> =
            self.store.all_apps().await?.into_iter().map(|a| (a.id, a)).collect();
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .map(|h| {
                let mine = placements.iter().filter(|p| p.host == h.name);
                let allocated = HostCapacity {
                    cpu_millis: mine.clone().map(|p| p.cpu_millis).sum(),
                    memory_mb: mine.map(|p| p.memory_mb).sum(),
                };
                let last_seen = match &leader {
                    Some(duties) => {
                        duties.orchestrator.links().get(&h.name).map(|l| now_ms() - l.silent_for().as_millis() as i64)
                    }
                    None => h.last_seen,
                };
                HostInfo {
                    state: h.state(),
                    labels: h.labels(),
                    capacity: HostCapacity {
                        cpu_millis: h.cpu_millis.max(0) as u64,
                        memory_mb: h.memory_mb.max(0) as u64,
                    },
                    allocated,
                    last_seen: if h.is_local { Some(now_ms()) } else { last_seen.or(h.last_seen) },
                    replicas: replicas
                        .iter()
                        .filter(|r| r.host == h.name)
                        .filter_map(|r| {
                            let app = apps.get(&r.app_id)?;
                            Some(HostReplica {
                                team: app.team.clone(),
                                app: app.name.clone(),
                                release: r.release_number as u32,
                                replica: r.id.clone(),
                                phase: observed.get(&r.id).map_or(ContainerPhase::Pending, |o| o.phase),
                            })
                        })
                        .collect(),
                    local: h.is_local,
                    address: h.address,
                    name: h.name,
                }
            })
            .collect())
    }

    pub async fn show_host(&self, principal: &Principal, name: &str) -> Result<HostInfo> {
        self.list_hosts(principal)
            .await?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| ServiceError::NotFound(format!("host {name} not found")))
    }

    /// Moves every replica off the host with zero downtime; returns when it is empty.
    async fn drain_host_inner(&self, principal: &Principal, name: &str) -> Result<HostInfo> {
        let host = self.show_host(principal, name).await?;
        if host.local && self.store.hosts().await?.len() == 1 {
            return Err(ServiceError::Conflict(format!(
                "{name} is the only host; there is nowhere to move its replicas"
            )));
        }
        let duties = self.duties().await?;
        duties.orchestrator.drain_host(name).await.map_err(|e| ServiceError::Conflict(format!("{e:#}")))?;
        self.show_host(principal, name).await
    }

    /// Forgets a remote host: its credential stops working and its replicas are placed elsewhere.
    async fn remove_host_inner(&self, principal: &Principal, name: &str) -> Result<()> {
        let host = self.show_host(principal, name).await?;
        if host.local {
            return Err(ServiceError::Conflict(format!("{name} is the server's own host and cannot be removed")));
        }
        let duties = self.duties().await?;
        // A host that still runs replicas is drained first, so removing it costs no request.
        if host.state != berth_wire::api::HostState::Down && !host.replicas.is_empty() {
            duties.orchestrator.drain_host(name).await.map_err(|e| ServiceError::Conflict(format!("{e:#}")))?;
        }
        self.store.remove_host(name).await?;
        duties.orchestrator.forget_host(name);
        Ok(())
    }
}

/// The audited entry points: each runs its `_inner` and records the outcome.
impl Services {
    pub async fn create_join_token(&self, principal: &Principal, input: CreateJoinToken) -> Result<JoinTokenCreated> {
        let result = self.create_join_token_inner(principal, input).await;
        self.audit(Some(principal), "create_join_token", None, None, None, &result).await?;
        result
    }

    pub async fn join_host(&self, request: JoinRequest) -> Result<JoinResponse> {
        let host = request.name.clone();
        let result = self.join_host_inner(request).await;
        self.audit(None, "join_host", None, None, Some(&host), &result).await?;
        result
    }

    pub async fn drain_host(&self, principal: &Principal, name: &str) -> Result<HostInfo> {
        let result = self.drain_host_inner(principal, name).await;
        self.audit(Some(principal), "drain_host", None, None, Some(name), &result).await?;
        result
    }

    pub async fn remove_host(&self, principal: &Principal, name: &str) -> Result<()> {
        let result = self.remove_host_inner(principal, name).await;
        self.audit(Some(principal), "remove_host", None, None, Some(name), &result).await?;
        result
    }
}

/// Why a host cannot advertise `address`, if it cannot: its endpoints would point the ingress at
/// the control plane's own loopback, a cloud metadata service (link-local) or nowhere.
fn unroutable(address: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    let address = address.to_canonical();
    if address.is_loopback() {
        return Some("a loopback address");
    }
    if address.is_unspecified() || address.is_multicast() {
        return Some("not a unicast address");
    }
    match address {
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("not a unicast address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        _ => None,
    }
}
