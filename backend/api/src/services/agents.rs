//! The control plane's side of the agent protocol: a host authenticates with its credential,
//! connects, reports, and uploads what it was asked for. Joining is in `hosts`.

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
        let link = self.orchestrator.host_connected(host).await?;
        Ok(AgentSession { link, services: self.clone(), capacity: HostCapacity::default() })
    }

    /// An image `host` lacks and cannot pull, from another host.
    pub async fn image_for_host(&self, host: &str, image: &str) -> Result<ByteStream> {
        berth_control::images::fetch(self.orchestrator.links(), host, image)
            .await
            .map_err(|e| ServiceError::NotFound(format!("{e:#}")))
    }

    /// The build context the control plane offered `host` for `transfer` (once).
    pub fn build_context(&self, host: &str, transfer: &str) -> Result<bytes::Bytes> {
        self.orchestrator
            .links()
            .relay()
            .take_offer(transfer, host)
            .ok_or_else(|| ServiceError::NotFound(format!("no build context for host {host} in transfer {transfer}")))
    }

    /// An agent's upload into a transfer the control plane opened; returns once it was read.
    pub async fn agent_upload(&self, transfer: &str, stream: ByteStream) -> Result<()> {
        let relay = self.orchestrator.links().relay();
        relay.deliver(transfer, stream).await.map_err(|e| ServiceError::NotFound(format!("{e:#}")))
    }
}

/// One connected agent, as the service layer hands it to the transport (the WebSocket of
/// `http::agents`): what to send down, when to hang up, and where the agent's messages go.
pub struct AgentSession {
    link: Arc<HostLink>,
    services: Services,
    /// The capacity last stored for the host by this session.
    capacity: HostCapacity,
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
                self.link.report(observed.into_iter().map(|o| (o.replica_id.clone(), o)).collect());
                if capacity != self.capacity {
                    self.services.store.set_host_capacity(&self.link.name, &capacity).await?;
                    self.capacity = capacity;
                }
            }
            AgentMessage::Unavailable { transfer } => self.services.orchestrator.links().relay().unavailable(&transfer),
        }
        Ok(())
    }
}
