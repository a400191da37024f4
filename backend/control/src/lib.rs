//! Berth's control plane: joins desired state (the store) with observed state (the agents'
//! reports) and acts on the difference.
//!
//! - `cluster`: leadership among instances sharing a database, and what followers do.
//! - `orchestrator`: the release protocol, routes, desired containers per host, host checks.
//! - `scheduler`: the pure placement function.
//! - `links`: the control plane's end of every host agent, and the union of their reports.
//! - `relay`: byte streams agents upload on request; `images` and `logs` use it.
//! - `secrets`: the keys apps' secret variables are sealed with, and their rotation.
//! - `certs`: certificates the ingress serves (uploaded, operator, ACME) and the ACME loop.
//! - `repos`: the apps' bare git repositories (the system `git`); `builds`: builds from git, run
//!   by a host's agent, logged, released; `ignore`: `.dockerignore` for build contexts.
//!
//! It never calls a container engine (only agents do) and never depends on the API: services
//! call it, not the other way round.

pub mod builds;
pub mod certs;
pub mod cluster;
pub mod feed;
mod ignore;
pub mod images;
pub mod links;
pub mod logs;
pub mod orchestrator;
pub mod relay;
pub mod repos;
pub mod scheduler;
pub mod secrets;

pub use cluster::{Cluster, ClusterConfig, Duties};
pub use links::{HostLink, HostLinks, ObservedUnion};
pub use orchestrator::{Orchestrator, OrchestratorConfig};

/// Writes a secret readable by its owner only (created 0600, never wider).
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
