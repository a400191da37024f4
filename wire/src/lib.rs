//! Wire types: everything that crosses a process boundary between the CLI, the REST API, the
//! dashboard, host agents and the control plane. Nothing else in Berth is serialised ad hoc.
//!
//! Timestamps are Unix milliseconds (`i64`) so the types stay plain and build for wasm.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod agent;
pub mod api;
pub mod builds;
pub mod edge;
pub mod identity;

/// The response header a control-plane instance that does not lead names the leader's API in
/// (on a 503 `not_leader`), so agents connect there instead.
pub const LEADER_HEADER: &str = "berth-leader";

/// The admin API token's file in the server's data directory, where the CLI also looks for it.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Labels every Berth container carries. Berth never touches a container without them.
pub mod labels {
    pub const TEAM: &str = "berth.team";
    pub const APP: &str = "berth.app";
    pub const RELEASE: &str = "berth.release";
    pub const HOST: &str = "berth.host";
    pub const REPLICA: &str = "berth.replica";
    /// Present (value "1") on every container Berth manages; used to filter Docker queries.
    pub const MANAGED: &str = "berth.managed";
    /// On images Berth built: `team/app`. Cleanup only ever removes images carrying it.
    pub const IMAGE_APP: &str = "berth.image.app";
    /// On images Berth built: the build's number.
    pub const IMAGE_BUILD: &str = "berth.image.build";
    /// On images Berth built: the commit.
    pub const IMAGE_COMMIT: &str = "berth.image.commit";
}

/// The deployable shape of an app: what one immutable release runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AppSpec {
    pub image: String,
    /// The port the container listens on.
    pub port: u16,
    pub replicas: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret variables, set in the container's environment like `env`. In the store the values
    /// are sealed (encrypted under the instance's key); the API never returns them: every value
    /// it shows here is empty, the name says the variable is set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Readiness path probed with `GET`; `None` means "ready once the port accepts connections".
    #[serde(default)]
    pub health_path: Option<String>,
    /// CPU limit in thousandths of a core (1000 = one core).
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Memory limit in MiB.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Host labels a host must carry to run the app's replicas (`region=eu`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constraints: BTreeMap<String, String>,
    /// Options that amount to root on the host: only instance admins may set them, and only they
    /// may release an app that has them (other than scaling it).
    #[serde(default, skip_serializing_if = "Privileges::is_empty")]
    pub privileges: Privileges,
    /// How the containers speak HTTP (HTTP/1.1 unless they declare h2c).
    #[serde(default, skip_serializing_if = "edge::AppProtocol::is_default")]
    pub protocol: edge::AppProtocol,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Privileges {
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub mounts: Vec<HostMount>,
    /// Linux capabilities to add (`NET_ADMIN`).
    #[serde(default)]
    pub cap_add: Vec<String>,
}

impl Privileges {
    pub fn is_empty(&self) -> bool {
        *self == Privileges::default()
    }
}

/// A directory of the host mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostMount {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Error body of every failed API call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    /// Stable, machine-readable code such as `validation`, `not_found`, `conflict`.
    pub code: String,
    pub message: String,
    /// For validation errors: the request field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
