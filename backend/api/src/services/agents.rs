//! The control plane's side of the agent protocol: a host authenticates with its credential,
//! connects, reports, and uploads what it was asked for. Joining is in `hosts`.

use std::sync::Arc;

use berth_agent::ByteStream;
use berth_control::HostLink;
use berth_wire::agent::{AgentMessage, HostCapacity};

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

    /// The agent of `host` connected: its link, which now counts it as up and has its desired
    /// containers ready to send.
    pub async fn agent_connected(&self, host: &str) -> Result<Arc<HostLink>> {
        Ok(self.orchestrator.host_connected(host).await?)
    }

    /// One message from the agent on `link`. `capacity` is the last capacity stored for the host;
    /// a changed one is stored.
    pub async fn agent_message(
        &self,
        link: &HostLink,
        message: AgentMessage,
        capacity: &mut HostCapacity,
    ) -> Result<()> {
        match message {
            AgentMessage::Report { observed, capacity: reported } => {
                link.report(observed.into_iter().map(|o| (o.replica_id.clone(), o)).collect());
                if reported != *capacity {
                    self.store.set_host_capacity(&link.name, &reported).await?;
                    *capacity = reported;
                }
            }
            AgentMessage::Unavailable { transfer } => self.orchestrator.links().relay().unavailable(&transfer),
        }
        Ok(())
    }

    /// An image `host` lacks and cannot pull, from another host.
    pub async fn image_for_host(&self, host: &str, image: &str) -> Result<ByteStream> {
        berth_control::images::fetch(self.orchestrator.links(), host, image)
            .await
            .map_err(|e| ServiceError::NotFound(format!("{e:#}")))
    }

    /// An agent's upload into a transfer the control plane opened; returns once it was read.
    pub async fn agent_upload(&self, transfer: &str, stream: ByteStream) -> Result<()> {
        self.orchestrator
            .links()
            .relay()
            .deliver(transfer, stream)
            .await
            .map_err(|e| ServiceError::NotFound(format!("{e:#}")))
    }
}
