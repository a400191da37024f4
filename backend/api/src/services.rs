//! The service layer: every operation a user (or a host agent) can ask for, with its validation
//! and its permission check. The HTTP edge, and through it the dashboard, call only this; nothing
//! else checks permissions, and nothing above it reaches the store or the orchestrator.
//!
//! One module per area: `apps`, `hosts`, `agents` (the agent protocol's operations), `identity`;
//! `validate` holds the validators they share.

use berth_control::Orchestrator;
use berth_store::Store;

mod agents;
mod apps;
mod hosts;
mod identity;
mod validate;

pub use agents::AgentSession;
pub use identity::{SESSION_TTL, set_password_offline};
pub use validate::{MAX_REPLICAS, valid_label, validate_app_name, validate_spec};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ServiceError {
    fn from(error: sqlx::Error) -> Self {
        ServiceError::Internal(anyhow::Error::new(error).context("database error"))
    }
}

impl From<crate::auth::AuthError> for ServiceError {
    fn from(error: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match error {
            AuthError::NotFound(message) => ServiceError::NotFound(message),
            AuthError::Forbidden(message) => ServiceError::Forbidden(message),
            AuthError::Unauthorized(message) => ServiceError::Unauthorized(message),
            AuthError::Store(error) => error.into(),
        }
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::Validation { field: field.to_string(), message: message.into() }
}

#[derive(Clone)]
pub struct Services {
    store: Store,
    orchestrator: Orchestrator,
    login_limiter: std::sync::Arc<identity::LoginLimiter>,
    sign_in: std::sync::Arc<crate::oidc::SignIn>,
}

impl Services {
    pub fn new(store: Store, orchestrator: Orchestrator) -> Services {
        let sign_in = crate::oidc::SignIn::new("http://localhost", Vec::new());
        Services { store, orchestrator, login_limiter: Default::default(), sign_in: std::sync::Arc::new(sign_in) }
    }

    /// The principal a bearer token (or a dashboard session's secret) speaks for.
    pub async fn authenticate(&self, secret: &str) -> Result<crate::auth::Principal> {
        Ok(crate::auth::authenticate(&self.store, secret).await?)
    }

    /// Enables sign-in through OAuth2 / OIDC providers.
    pub fn with_sign_in(mut self, sign_in: crate::oidc::SignIn) -> Services {
        self.sign_in = std::sync::Arc::new(sign_in);
        self
    }
}
