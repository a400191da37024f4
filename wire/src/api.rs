//! Requests and responses of the REST API under `/api/v1`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::AppSpec;
use crate::agent::ContainerPhase;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateApp {
    pub name: String,
    /// Empty: the app is built from git, and its first push makes its first release.
    #[serde(default)]
    pub image: String,
    pub port: u16,
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret variables: stored encrypted, never returned.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub health_path: Option<String>,
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    #[serde(default)]
    pub privileges: crate::Privileges,
    #[serde(default)]
    pub protocol: crate::edge::AppProtocol,
}

/// A new release: every field left out keeps the value of the latest release.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Deploy {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Variables to set (or overwrite).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret variables to set (or overwrite): stored encrypted, never returned. A name moves
    /// between `env` and `secrets` when it is set in the other.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Variables to remove, plain or secret.
    #[serde(default)]
    pub unset_env: Vec<String>,
    #[serde(default)]
    pub health_path: Option<String>,
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Replaces the placement constraints when present (an empty map removes them).
    #[serde(default)]
    pub constraints: Option<BTreeMap<String, String>>,
    /// Replaces the privileged options when present (instance admins only).
    #[serde(default)]
    pub privileges: Option<crate::Privileges>,
    #[serde(default)]
    pub protocol: Option<crate::edge::AppProtocol>,
}

/// A team's limits, set by instance admins; an absent one is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TeamQuota {
    #[serde(default)]
    pub replicas: Option<u64>,
    /// Thousandths of a core, summed over the replicas' CPU limits.
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// MiB, summed over the replicas' memory limits.
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

/// What a team's apps are declared to run: each app's latest release that did not fail (or the
/// spec of an app whose first build has not released yet), replicas times their limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResourceUse {
    pub replicas: u64,
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct QuotaInfo {
    pub team: String,
    pub quota: TeamQuota,
    pub used: ResourceUse,
}

/// What a rotation of the secret key did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SecretKeyRotated {
    /// The key every secret value is now sealed with.
    pub key_id: String,
    /// Values resealed (counted once per release that carries them).
    pub resealed: u64,
    /// Stored values that did not open (sealed under a key lost earlier), left as they were.
    pub unreadable: u64,
    /// Keys removed from the key file.
    pub retired: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Scale {
    pub replicas: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Rollback {
    /// Release number to return to; the release before the serving one when absent.
    #[serde(default)]
    pub to: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ReleaseState {
    /// Waiting for an earlier operation on the same app to finish.
    Queued,
    InProgress,
    /// Serves the app's traffic now.
    Serving,
    /// Served earlier; replaced by a later release.
    Superseded,
    /// Could not go out; the release that served before it kept serving.
    Failed,
}

/// From the stored name (`in_progress`), for typed database columns.
impl TryFrom<String> for ReleaseState {
    type Error = strum::ParseError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl ReleaseState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// True once the release will not change state again by itself.
    pub fn is_finished(self) -> bool {
        !matches!(self, ReleaseState::Queued | ReleaseState::InProgress)
    }
}

/// One step of the release protocol, as shown to the user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReleaseEvent {
    pub at: i64,
    /// `queued`, `scheduling`, `starting`, `waiting_ready`, `shifting_traffic`, `draining`,
    /// `stopping_old`, `done` or `failed`.
    pub phase: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReleaseInfo {
    pub number: u32,
    /// The release's spec; for callers below deployer the environment's values are empty
    /// (`env_hidden`): they see which variables are set, never what they hold.
    pub spec: AppSpec,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub env_hidden: bool,
    pub state: ReleaseState,
    /// Why the release failed, or what it is doing now.
    pub message: Option<String>,
    /// The release whose spec this one restored, for rollbacks.
    pub rollback_of: Option<u32>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub events: Vec<ReleaseEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReplicaInfo {
    pub id: String,
    pub release: u32,
    pub host: String,
    pub container_id: Option<String>,
    pub phase: ContainerPhase,
    pub ready: bool,
    pub endpoint: Option<String>,
    pub restarts: u32,
    pub message: Option<String>,
    pub started_at: Option<i64>,
    /// CPU and memory in use, when the container runs and has been sampled.
    #[serde(default)]
    pub usage: Option<crate::agent::ContainerUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AppSummary {
    pub team: String,
    pub name: String,
    pub url: String,
    /// The release serving traffic, if any has succeeded yet.
    pub serving_release: Option<u32>,
    pub replicas_desired: u32,
    pub replicas_ready: u32,
    pub image: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AppDetail {
    #[serde(flatten)]
    pub summary: AppSummary,
    /// Newest first.
    pub releases: Vec<ReleaseInfo>,
    pub replicas: Vec<ReplicaInfo>,
}

/// Answer to create, deploy, scale and rollback: the release that will carry the change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReleaseAccepted {
    pub app: String,
    pub release: u32,
    pub url: String,
}

/// One log line of one replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogLine {
    pub replica: String,
    pub release: u32,
    pub stream: String,
    pub line: String,
}

/// `POST /api/v1/join-tokens` (instance admins).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateJoinToken {
    /// Lifetime in seconds (default one hour).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// How many hosts may join with it (default one).
    #[serde(default)]
    pub uses: Option<u32>,
    /// What joins with it (default a host): a host's agent never receives the certificates'
    /// private keys an ingress node does.
    #[serde(default)]
    pub kind: Option<JoinTokenKind>,
}

/// What a join token lets join.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum JoinTokenKind {
    /// A host (`berth agent`).
    #[default]
    Host,
    /// An edge-only ingress node (`berth ingress`).
    Ingress,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JoinTokenCreated {
    pub token: String,
    pub expires_at: i64,
    pub uses: u32,
    #[serde(default)]
    pub kind: JoinTokenKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum HostState {
    /// Heartbeats arrive; the host takes new replicas.
    Up,
    /// Missed heartbeats; its replicas were placed elsewhere.
    Down,
    /// Its replicas are being moved off; it takes no new ones.
    Draining,
}

/// From the stored name (`draining`), for typed database columns.
impl TryFrom<String> for HostState {
    type Error = strum::ParseError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The control plane's instances (`GET /api/v1/status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ControlPlaneStatus {
    /// The store's engine: `sqlite` or `postgres`.
    pub engine: String,
    /// The id of the instance that answered.
    pub answered_by: String,
    /// The instance holding the leadership lease (none while it is free or expired).
    pub leader: Option<String>,
    /// The lease's term: it rises at every change of leader.
    pub term: i64,
    /// The version of the route table the leader published last.
    pub routes_version: i64,
    pub instances: Vec<InstanceStatus>,
    /// Every ingress node joined (`berth ingress --join`), reporting or not; those running are
    /// in `instances` too, as `ingress/<name>`.
    #[serde(default)]
    pub ingress_nodes: Vec<String>,
}

/// One running `berth server` instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InstanceStatus {
    pub id: String,
    /// The machine it runs on.
    pub host: String,
    pub version: String,
    /// Where its API is reached.
    pub address: String,
    pub leader: bool,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Milliseconds since it last reported (it reports every second).
    pub silent_ms: i64,
    /// The route table version its ingress applied and drained.
    pub routes_applied: i64,
    /// `server` (a `berth server`, API and ingress) or `ingress` (an edge-only ingress node,
    /// whose `address` is where it serves).
    #[serde(default = "server_kind")]
    pub kind: String,
}

fn server_kind() -> String {
    "server".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostInfo {
    pub name: String,
    pub address: String,
    pub state: HostState,
    /// True for the agent inside `berth server`.
    pub local: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: crate::agent::HostCapacity,
    /// CPU and memory requested by the replicas placed on the host.
    pub allocated: crate::agent::HostCapacity,
    pub last_seen: Option<i64>,
    /// `team/app` and release of every replica placed on the host.
    pub replicas: Vec<HostReplica>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostReplica {
    pub team: String,
    pub app: String,
    pub release: u32,
    pub replica: String,
    pub phase: ContainerPhase,
}

/// `GET /api/v1/teams/{team}/apps/{app}/metrics`: the app's traffic through the ingress, second
/// by second, and what its containers use now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AppMetrics {
    /// Unix time of the answer, in milliseconds.
    pub at: i64,
    /// The last minute, oldest first, one entry per second.
    pub traffic: Vec<TrafficPoint>,
    /// Sum over the app's running replicas.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Replicas with figures.
    pub sampled_replicas: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TrafficPoint {
    /// Unix time of the second, in seconds.
    pub at: u64,
    pub requests: u64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub classes: [u64; 5],
    /// Latency until the response head, in milliseconds; absent for seconds without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}
