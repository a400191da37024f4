//! Berth's command-line client. [`ApiClient`] is the typed client of the REST API: it speaks
//! only HTTP and the `berth-wire` types, exactly as a third-party client would, and prints
//! nothing, so tests and tooling reuse it. [`Client`] is what the `berth` binary runs: the
//! subcommands built on it, with their tables and messages. The crate also owns where the CLI
//! finds and keeps its API token.

mod client;
mod commands;
mod credentials;
pub mod hook;
mod output;

pub use client::{ApiClient, ApiError, DEFAULT_RETRY_BUDGET, MAX_LINE_BYTES, Resource, StreamLine};
pub use commands::{
    Client, Wait, accept_invite, cores_to_millis, env_flags, git_credential, health, login, read_password, secret_flags,
};
pub use credentials::config_path;
