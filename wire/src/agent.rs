//! What the control plane tells a host agent, and what the agent reports back.
//!
//! The in-process agent of `berth server` exchanges exactly these values; a remote `berth agent`
//! carries them over its authenticated connection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One container the control plane wants running on the agent's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DesiredContainer {
    /// Stable identity of the replica; survives container restarts.
    pub replica_id: String,
    pub team: String,
    pub app: String,
    pub release: u32,
    pub image: String,
    pub port: u16,
    pub env: BTreeMap<String, String>,
    pub health_path: Option<String>,
    pub cpu_millis: Option<u32>,
    pub memory_mb: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when the container is stopped.
    pub stop_grace_secs: u32,
    #[serde(default)]
    pub privileges: crate::Privileges,
}

/// Where a container stands, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ContainerPhase {
    /// Known to the control plane, not yet taken up by its agent.
    Pending,
    Pulling,
    Starting,
    /// Running; readiness not (or no longer) passing.
    Running,
    /// Running and passing readiness: may receive traffic.
    Ready,
    /// Exited; the agent restarts it after a backoff.
    Crashed,
    /// Cannot run at all (image missing, invalid config); the agent will not retry.
    Failed,
    Stopping,
}

impl ContainerPhase {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The agent's view of one desired (or still stopping) container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ObservedContainer {
    pub replica_id: String,
    pub container_id: Option<String>,
    pub phase: ContainerPhase,
    /// `host:port` the ingress can reach the container at.
    pub endpoint: Option<String>,
    /// Restarts the agent made after the container died.
    pub restarts: u32,
    pub message: Option<String>,
    pub started_at: Option<i64>,
    /// CPU and memory in use, sampled every few seconds while the container runs.
    #[serde(default)]
    pub usage: Option<ContainerUsage>,
}

/// What a running container uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ContainerUsage {
    /// CPU time per second of wall time, in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in use, without reclaimable page cache.
    pub memory_bytes: u64,
}

impl ObservedContainer {
    pub fn ready(&self) -> bool {
        self.phase == ContainerPhase::Ready && self.endpoint.is_some()
    }
}

/// A host's capacity, reported by its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostCapacity {
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

impl HostCapacity {
    /// The most a host may claim: 4 096 cores and 64 TiB. A larger claim is a lie (or a bug), and
    /// believed it would draw every replica of the fleet to that host.
    pub const MAX: HostCapacity = HostCapacity { cpu_millis: 4_096_000, memory_mb: 64 << 20 };

    pub fn is_plausible(&self) -> bool {
        self.cpu_millis <= Self::MAX.cpu_millis && self.memory_mb <= Self::MAX.memory_mb
    }
}

/// `POST /api/v1/agents/join`: a new host asks to join with a join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JoinRequest {
    pub join_token: String,
    pub name: String,
    /// Address other hosts' ingresses reach this host's published ports on.
    pub advertise_addr: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: HostCapacity,
}

/// The host's own credential, shown once; the agent keeps it for every later connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JoinResponse {
    pub host: String,
    pub credential: String,
}

/// Agent → control plane, over the agent connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Sent on every change and at least every heartbeat interval.
    Report { observed: Vec<ObservedContainer>, capacity: HostCapacity },
    /// Answer to `ExportImage` or `Logs` when this host cannot provide it.
    Unavailable { transfer: String },
}

/// Control plane → agent, over the agent connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// The whole list of containers desired on the host; replaces any earlier list.
    Desired { containers: Vec<DesiredContainer> },
    /// Another host needs `image`: upload its `docker save` stream to
    /// `/api/v1/agents/transfers/{transfer}` if this host has it, or answer `Unavailable`.
    ExportImage { transfer: String, image: String },
    /// Upload a container's logs to `/api/v1/agents/transfers/{transfer}` as lines of
    /// `LogChunk` JSON: the last `tail` lines, then new ones while `follow`.
    Logs { transfer: String, container_id: String, tail: u32, follow: bool },
    /// Build an image: download its context (a tar) from
    /// `/api/v1/agents/transfers/{transfer}/context`, then upload the build's progress to
    /// `/api/v1/agents/transfers/{transfer}` as lines of `BuildUpdate` JSON. The build is
    /// canceled when the control plane stops reading.
    Build { transfer: String, build: BuildRequest },
    /// Remove this app's Berth-built images except `keep` (those of releases that may run), and
    /// prune the build cache down to `cache_max_bytes` if it is larger.
    CleanImages { app: String, keep: Vec<String>, cache_max_bytes: u64 },
}

/// What an agent builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BuildRequest {
    pub tag: String,
    pub dockerfile: String,
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub no_cache: bool,
}

/// One step of a build on an agent, as uploaded: lines, then `built` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildUpdate {
    Line { line: String },
    Built,
    Failed { error: String },
}

/// One log line as an agent uploads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogChunk {
    pub stream: String,
    pub line: String,
}
