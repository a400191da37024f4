//! The control plane's side of edge-only ingress nodes (`berth ingress --join`): joining with a
//! join token, then, with the node's credential and on any instance, the route table (waited for
//! until it changes), the certificates with their keys, and the node's reports, which the release
//! protocol's drain waits for like a server's.

use std::time::{Duration, Instant};

use berth_wire::edge::{IngressCertificate, IngressJoinRequest, IngressJoinResponse, IngressReport, IngressTable};

use super::validate::validate_app_name;
use super::{Result, ServiceError, Services, invalid};
use crate::auth::{self, Principal};

/// How long a table request waits for a change before it answers that there is none.
const TABLE_WAIT: Duration = Duration::from_secs(20);
/// How often a waiting table request looks at the database.
const TABLE_POLL: Duration = Duration::from_millis(250);
/// The id the operator's certificate (`--tls-cert`) goes by for ingress nodes.
const OPERATOR: i64 = 0;
/// A server silent longer than this is not offered to nodes as a control plane to turn to.
const LIVE_SERVER: i64 = 10_000;

impl Services {
    /// The ingress node a credential belongs to.
    pub async fn authenticate_ingress_node(&self, credential: &str) -> Result<String> {
        self.store
            .ingress_node_by_credential(&auth::hash_token(credential))
            .await?
            .ok_or_else(|| ServiceError::Unauthorized("the ingress node credential is not valid".into()))
    }

    pub async fn join_ingress_node(&self, request: IngressJoinRequest) -> Result<IngressJoinResponse> {
        let name = request.name.clone();
        let result = self.join_ingress_node_inner(request).await;
        self.audit(None, "join_ingress_node", None, None, Some(&name), &result).await?;
        result
    }

    async fn join_ingress_node_inner(&self, request: IngressJoinRequest) -> Result<IngressJoinResponse> {
        validate_app_name(&request.name).map_err(|_| invalid("name", "the node name must be a DNS label"))?;
        let credential = format!("berth_ingress_{}", auth::new_token().trim_start_matches("berth_"));
        self.store
            .join_ingress_node(&auth::hash_token(&request.join_token), &request.name, &auth::hash_token(&credential))
            .await?;
        tracing::info!(node = request.name, "ingress node joined");
        Ok(IngressJoinResponse { node: request.name, credential })
    }

    /// The published route table, once it differs from version `after` with certificates
    /// `certificates` (what the node has); `None` when nothing changed within [`TABLE_WAIT`], or
    /// nothing is published yet.
    pub async fn ingress_table(
        &self,
        after: Option<i64>,
        certificates: Option<Vec<i64>>,
    ) -> Result<Option<IngressTable>> {
        let deadline = Instant::now() + TABLE_WAIT;
        loop {
            let version = self.store.published_version(berth_control::cluster::ROUTES).await?;
            let ids = self.certificate_ids().await?;
            // Nothing published yet (a new or moved store): a node keeps the table it has.
            if version != 0 && (after != Some(version) || certificates.as_ref() != Some(&ids)) {
                return Ok(Some(self.table_now(ids).await?));
            }
            if Instant::now() + TABLE_POLL > deadline {
                return Ok(None);
            }
            tokio::time::sleep(TABLE_POLL).await;
        }
    }

    async fn table_now(&self, certificates: Vec<i64>) -> Result<IngressTable> {
        let (version, routes) = match self.store.published(berth_control::cluster::ROUTES).await? {
            Some(publication) => {
                let routes = serde_json::from_str(&publication.body).map_err(|error| {
                    ServiceError::Internal(anyhow::anyhow!("the published route table does not parse: {error}"))
                })?;
                (publication.version, routes)
            }
            None => (0, serde_json::Value::Array(Vec::new())),
        };
        let control_planes = self
            .store
            .instances()
            .await?
            .into_iter()
            .filter(|i| i.kind == "server" && i.silent_ms < LIVE_SERVER)
            .map(|i| i.address)
            .collect();
        Ok(IngressTable { version, routes, certificates, control_planes })
    }

    /// The ids of the certificates offered to ingress nodes: the operator's (0) and the stored
    /// ones. An instance that serves no certificates offers none.
    async fn certificate_ids(&self) -> Result<Vec<i64>> {
        let Some(config) = self.cluster.certificates() else { return Ok(Vec::new()) };
        let operator = config.operator_pem.as_ref().map(|_| OPERATOR);
        Ok(operator.into_iter().chain(self.store.certificate_ids().await?).collect())
    }

    /// Every certificate offered to ingress nodes, with its private key.
    pub async fn ingress_certificates(&self) -> Result<Vec<IngressCertificate>> {
        let Some(config) = self.cluster.certificates() else { return Ok(Vec::new()) };
        let mut certificates: Vec<IngressCertificate> = config
            .operator_pem
            .iter()
            .map(|(chain_pem, key_pem)| IngressCertificate {
                id: OPERATOR,
                chain_pem: chain_pem.clone(),
                key_pem: key_pem.clone(),
            })
            .collect();
        for row in self.store.certificates().await? {
            let path = config.tls_dir.join(&row.key_file);
            match std::fs::read_to_string(&path) {
                Ok(key_pem) => certificates.push(IngressCertificate { id: row.id, chain_pem: row.chain_pem, key_pem }),
                Err(error) => {
                    // Not sent, and the node keeps asking while the ids it has differ.
                    tracing::warn!(id = row.id, path = %path.display(), %error, "a certificate's key cannot be read");
                }
            }
        }
        Ok(certificates)
    }

    /// Ingress node `node` runs and has applied (and drained) the table `report.applied`.
    pub async fn ingress_report(&self, node: &str, report: IngressReport) -> Result<()> {
        if report.version.len() > 64 || report.address.len() > 256 {
            return Err(invalid("version", "the version or the address is too long"));
        }
        // A version above any published is from other numbering (the store was moved or
        // restored since the node took it): it confirms nothing, and releases wait for the node
        // until it has applied a table of this store.
        let latest = self.store.published_version(berth_control::cluster::ROUTES).await?;
        let applied = if report.applied > latest { 0 } else { report.applied };
        self.store.ingress_node_alive(node, &report.version, &report.address, report.started_at, applied).await?;
        Ok(())
    }

    /// Forgets an ingress node: its credential stops working, releases stop waiting for it.
    pub async fn remove_ingress_node(&self, principal: &Principal, name: &str) -> Result<()> {
        let result = async {
            principal.require_instance_admin()?;
            if !self.store.remove_ingress_node(name).await? {
                return Err(ServiceError::NotFound(format!("no ingress node is named {name}")));
            }
            tracing::info!(node = name, "ingress node removed");
            Ok(())
        }
        .await;
        self.audit(Some(principal), "remove_ingress_node", None, None, Some(name), &result).await?;
        result
    }
}
