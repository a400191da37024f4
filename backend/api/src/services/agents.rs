//! The control plane's side of the agent protocol: a host authenticates with its credential,
//! connects, reports, and uploads what it was asked for. Joining is in `hosts`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use berth_agent::{ByteStream, DesiredReceiver};
use berth_control::HostLink;
use berth_wire::agent::{AgentMessage, ControlMessage, HostCapacity};
use tokio::sync::{mpsc, watch};

use super::{Result, ServiceError, Services};
use crate::auth;

impl Services {
    /// The host a credential belongs to.
    pub async fn authenticate_host(&self, credential: &str) -> Result<String> {
        self.store
            .host_by_credential(&auth::hash_token(credential))
            .await?
            .ok_or_else(|| ServiceError::Unauthorized("the host credential is not valid".into()))
    }

    /// The agent of `host` connected: its host counts as up again and the session carries its
    /// desired containers and commands down, its messages up.
    pub async fn agent_connected(&self, host: &str) -> Result<AgentSession> {
        let row = self.store.hosts().await?.into_iter().find(|h| h.name == host);
        let row = row.ok_or_else(|| ServiceError::NotFound(format!("host {host} is not registered")))?;
        let address = row.address.parse::<IpAddr>().map_err(|_| {
            ServiceError::Internal(anyhow::anyhow!("host {host} has no valid address ({:?})", row.address))
        })?;
        let duties = self.duties().await?;
        let link = duties.orchestrator.host_connected(host).await?;
        let links = duties.orchestrator.links().clone();
        Ok(AgentSession {
            link,
            links,
            services: self.clone(),
            address,
            capacity: HostCapacity::default(),
            warned: false,
        })
    }

    /// An image `host` lacks and cannot pull, from another host.
    pub async fn image_for_host(&self, host: &str, image: &str) -> Result<ByteStream> {
        berth_control::images::fetch(self.duties().await?.orchestrator.links(), host, image)
            .await
            .map_err(|e| ServiceError::NotFound(format!("{e:#}")))
    }

    /// The build context the control plane offered `host` for `transfer` (once).
    pub async fn build_context(&self, host: &str, transfer: &str) -> Result<bytes::Bytes> {
        self.duties()
            .await?
            .orchestrator
            .links()
            .relay()
            .take_offer(transfer, host)
            .ok_or_else(|| ServiceError::NotFound(format!("no build context for host {host} in transfer {transfer}")))
    }

    /// `host`'s upload into a transfer the control plane opened and asked it to answer; returns
    /// once it was read.
    pub async fn agent_upload(&self, host: &str, transfer: &str, stream: ByteStream) -> Result<()> {
        let duties = self.duties().await?;
        let relay = duties.orchestrator.links().relay();
        relay.deliver(transfer, host, stream).await.map_err(|e| ServiceError::NotFound(format!("{e:#}")))
    }
}

/// One connected agent, as the service layer hands it to the transport (the WebSocket of
/// `http::agents`): what to send down, when to hang up, and where the agent's messages go.
pub struct AgentSession {
    link: Arc<HostLink>,
    /// The leader's links, when the session began (a change of leader ends the session).
    links: berth_control::HostLinks,
    services: Services,
    /// The host's registered address: the only one its endpoints may be on.
    address: IpAddr,
    /// The capacity last stored for the host by this session.
    capacity: HostCapacity,
    /// Whether a refused part of a report was logged already (once per connection).
    warned: bool,
}

impl AgentSession {
    /// The host's desired containers, whole lists, from now on (the current one counts as new).
    pub fn desired(&self) -> DesiredReceiver {
        let mut desired = self.link.desired_receiver();
        desired.mark_changed();
        desired
    }

    /// Commands for the agent (image exports, log uploads); this connection takes over from any
    /// earlier one of the same host.
    pub fn commands(&self) -> mpsc::UnboundedReceiver<ControlMessage> {
        self.link.open_commands()
    }

    /// Turns true when the host is removed: the connection must end.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.link.closed()
    }

    /// One message from the agent: a report (also a heartbeat; a changed capacity is stored) or
    /// an answer to a command.
    pub async fn received(&mut self, message: AgentMessage) -> Result<()> {
        match message {
            AgentMessage::Report { observed, capacity } => {
                let mut refused = Vec::new();
                let observed = observed
                    .into_iter()
                    .map(|mut o| {
                        // The ingress would send traffic wherever an endpoint points: only the
                        // host's own address is believed (not the control plane's loopback, not
                        // a cloud metadata address, not another host).
                        if o.endpoint.as_deref().is_some_and(|e| !endpoint_on(e, self.address)) {
                            refused.push(format!("{} at {}", o.replica_id, o.endpoint.take().unwrap_or_default()));
                        }
                        (o.replica_id.clone(), o)
                    })
                    .collect();
                self.link.report(observed);
                if !capacity.is_plausible() {
                    refused.push(format!("capacity {} mCPU, {} MiB", capacity.cpu_millis, capacity.memory_mb));
                } else if capacity != self.capacity {
                    self.services.store.set_host_capacity(&self.link.name, &capacity).await?;
                    self.capacity = capacity;
                }
                if !refused.is_empty() && !self.warned {
                    self.warned = true;
                    tracing::warn!(host = self.link.name, address = %self.address, ?refused, "ignoring what the host claims beyond itself");
                }
            }
            AgentMessage::Unavailable { transfer } => self.links.relay().unavailable(&transfer, &self.link.name),
        }
        Ok(())
    }
}

/// Whether `endpoint` (`ip:port`) is on `address`.
fn endpoint_on(endpoint: &str, address: IpAddr) -> bool {
    endpoint.parse::<SocketAddr>().is_ok_and(|e| e.ip().to_canonical() == address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::endpoint_on;

    #[test]
    fn endpoints_must_be_on_the_hosts_own_address() {
        let host = "10.1.0.2".parse().unwrap();
        assert!(endpoint_on("10.1.0.2:32768", host));
        assert!(endpoint_on("[::ffff:10.1.0.2]:80", host));
        for other in ["127.0.0.1:7878", "169.254.169.254:80", "10.1.0.3:32768", "10.1.0.2", "web:80", ""] {
            assert!(!endpoint_on(other, host), "{other}");
        }
    }
}
