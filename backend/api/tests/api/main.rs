//! The API through the real router and service layer on a real SQLite store, without Docker: one
//! module per journey.

mod authz;
mod identity;
mod oidc;
mod quotas;
mod secrets;
mod streams;
mod support;
