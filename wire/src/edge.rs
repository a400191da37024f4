//! How apps meet the outside world: custom domains, their certificates (obtained by ACME or
//! uploaded), and per-app edge settings (redirect to HTTPS, HSTS).

use serde::{Deserialize, Serialize};

/// How an app's containers speak HTTP to the ingress.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AppProtocol {
    /// HTTP/1.1 (WebSocket upgrades pass through).
    #[default]
    Http1,
    /// HTTP/2 without TLS, prior knowledge: gRPC and other HTTP/2-only servers; trailers and
    /// streaming pass through.
    H2c,
}

impl AppProtocol {
    pub fn is_default(&self) -> bool {
        *self == AppProtocol::Http1
    }
}

/// Where a domain's certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CertState {
    /// No certificate and none being obtained (HTTPS is off, or ACME is not configured).
    None,
    /// ACME is obtaining one.
    Pending,
    /// A valid certificate is served.
    Issued,
    /// The last attempt failed; `error` says why and `next_attempt_at` when it is retried.
    Failed,
}

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CertSource {
    Acme,
    Uploaded,
    /// The operator's certificate for the base domain (`berth server --tls-cert`).
    Operator,
}

/// A name an app is served at, with the state of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DomainInfo {
    pub name: String,
    /// `false` for the app's own name under the base domain (it cannot be removed).
    pub custom: bool,
    pub state: CertState,
    #[serde(default)]
    pub source: Option<CertSource>,
    /// Expiry of the certificate served, Unix milliseconds.
    #[serde(default)]
    pub not_after: Option<i64>,
    /// Why the last ACME attempt failed, in the CA's words.
    #[serde(default)]
    pub error: Option<String>,
    /// When ACME tries again, Unix milliseconds.
    #[serde(default)]
    pub next_attempt_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AddDomain {
    pub name: String,
}

/// A certificate and its private key, PEM (the chain leaf first).
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UploadCertificate {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for UploadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadCertificate").finish_non_exhaustive()
    }
}

/// A certificate Berth holds for an app (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CertificateInfo {
    pub id: i64,
    pub names: Vec<String>,
    pub source: CertSource,
    pub issuer: String,
    pub not_after: i64,
    pub created_at: i64,
}

/// Per-app edge settings; fields left out keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EdgeSettings {
    /// Redirect plain HTTP to HTTPS (308) for names with a certificate. Default: on.
    #[serde(default)]
    pub https_redirect: Option<bool>,
    /// Send `Strict-Transport-Security: max-age=<seconds>` over HTTPS; 0 turns it off. Default: off.
    #[serde(default)]
    pub hsts_max_age: Option<u64>,
}

/// `POST /api/v1/ingress/join`: an edge-only ingress node (`berth ingress --join`) asks to join
/// with a join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct IngressJoinRequest {
    pub join_token: String,
    /// The node's name, a DNS label unique among ingress nodes.
    pub name: String,
}

/// The node's own credential, shown once; the node keeps it for every later call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct IngressJoinResponse {
    pub node: String,
    pub credential: String,
}

/// `GET /api/v1/ingress/routes`: the route table the leader published last, with what an
/// ingress node needs beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct IngressTable {
    /// The table's version: it rises with every publication, across leaders.
    pub version: i64,
    /// The route table: `[{host, endpoints: ["ip:port"], options: {https_redirect,
    /// hsts_max_age, upstream_h2c}}]`.
    pub routes: serde_json::Value,
    /// The ids of the stored certificates: when they differ from the node's, it fetches
    /// `/api/v1/ingress/certificates`.
    pub certificates: Vec<i64>,
    /// The API addresses of the control-plane instances running now, for the node to turn to
    /// when the one it asks is gone.
    pub control_planes: Vec<String>,
}

/// One certificate an ingress node serves, with its private key (sent only to ingress nodes,
/// over their authenticated connection).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct IngressCertificate {
    pub id: i64,
    /// The chain, leaf first (PEM).
    pub chain_pem: String,
    /// The private key (PEM).
    pub key_pem: String,
}

/// `POST /api/v1/ingress/report`, every second: the node runs and has applied (and drained)
/// route table `applied`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct IngressReport {
    pub applied: i64,
    /// Berth's version on the node.
    pub version: String,
    /// Where the node serves (its listeners).
    pub address: String,
    /// When the node started (Unix ms).
    pub started_at: i64,
}
