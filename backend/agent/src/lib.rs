//! Berth's host agent: makes one host's container runtime run exactly the containers the control
//! plane desires there, and reports what runs.
//!
//! - `runtime`: the `ContainerRuntime` seam; `docker` is the real one, `memory` (feature
//!   `memory-runtime`) an in-process one for tests.
//! - `actor`: the agent itself (desired list in, observed map out), with `probe` and `usage`.
//! - `images`: where an image comes from when it is neither local nor pullable; `builds`: image
//!   builds and the cleanup of built images.
//! - `daemon`: `berth agent`, the agent on a host of its own, joined to a control plane over HTTP
//!   and a WebSocket.
//! - `edge`: `berth ingress`, an edge-only ingress node (`berth-ingress`'s proxy) joined to a
//!   control plane, serving the route table it last saved while none answers.
//!
//! This crate knows nothing of the store, the API or the dashboard: it speaks only `berth-wire`
//! (and runs `berth-ingress`).

pub mod actor;
pub mod builds;
pub mod daemon;
pub mod docker;
pub mod edge;
pub mod images;
#[cfg(feature = "memory-runtime")]
pub mod memory;
mod probe;
pub mod runtime;
pub mod tls;
mod usage;

pub use actor::{AgentConfig, AgentHandle, DesiredReceiver, EndpointMode, Observed, spawn};
pub use probe::ProbeConfig;
pub use runtime::{ByteStream, ContainerRuntime};
