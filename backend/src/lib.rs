//! Berth's control plane (store, auth, services, orchestrator, API), its host agent, and the CLI
//! client. The `berth` binary in `main.rs` only parses arguments and calls into here.

pub mod agent;
pub mod agent_daemon;
pub mod auth;
pub mod cli;
pub mod hosts;
pub mod http;
pub mod images;
pub mod oidc;
pub mod orchestrator;
pub mod relay;
pub mod scheduler;
pub mod server;
pub mod services;
pub mod store;
