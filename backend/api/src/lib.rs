//! Berth's API: who may do what (`auth`), every user operation (`services`), sign-in through
//! external providers (`oidc`), the HTTP edge (`http`: REST, server-sent events, the dashboard's
//! pages and forms, the agents' endpoints) and `berth server`'s start-up (`server`).
//!
//! It drives the control plane (`berth-control`) and the store (`berth-store`) through the
//! service layer only; nothing depends on this crate but the `berth` binary.

pub mod auth;
mod clock;
mod githook;
pub mod http;
pub mod oidc;
pub mod server;
pub mod services;
