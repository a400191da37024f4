//! The service layer: every operation a user (or a host agent) can ask for, with its validation
//! and its permission check. The HTTP edge, and through it the dashboard, call only this; nothing
//! else checks permissions, and nothing above it reaches the store or the orchestrator.
//!
//! One module per area: `apps`, `hosts`, `agents` (the agent protocol's operations), `identity`;
//! `validate` holds the validators they share.

use berth_control::{Cluster, Duties};
use berth_store::Store;

mod agents;
mod apps;
mod builds;
mod edge;
mod hosts;
mod identity;
mod ingress_nodes;
mod live;
mod quotas;
mod validate;
mod webhooks;

pub use agents::AgentSession;

/// How often an open stream checks that its caller may still see it.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// What an open stream needs its caller to keep reaching.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Membership of the team.
    Team(String),
    /// Instance-admin powers.
    Instance,
}

impl Scope {
    /// The caller's access to the scope (`None`: none).
    fn access(&self, principal: &crate::auth::Principal) -> Option<crate::auth::Role> {
        match self {
            Scope::Team(team) => principal.role_in(team),
            Scope::Instance => principal.instance_admin.then_some(crate::auth::Role::Owner),
        }
    }
}
pub use builds::{GitAccess, HEARTBEAT, PushTicket};
pub use identity::{SESSION_TTL, set_password_offline};
pub use live::{MIN_GAP as LIVE_MIN_GAP, View};
pub use quotas::ContainerDefaults;
pub use validate::{MAX_REPLICAS, valid_label, validate_app_name, validate_spec};
pub use webhooks::{Headers as WebhookHeaders, WebhookAnswer};

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
    /// A service Berth relies on (a sign-in provider) failed or could not be reached.
    #[error("{0}")]
    BadGateway(String),
    /// The operation runs on the leader, and this instance does not lead; `leader` is where the
    /// leader's API is, when an instance holds the lease.
    #[error(
        "this instance does not lead the control plane, and this operation runs on the leader{}: ask the leader, or again once this instance leads",
        .leader.as_ref().map(|address| format!(" ({address})")).unwrap_or_default()
    )]
    NotLeader { leader: Option<String> },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ServiceError {
    /// The same error for another reader (a shared view's): an internal error keeps its message
    /// and loses its chain.
    pub fn for_another(&self) -> ServiceError {
        match self {
            ServiceError::Validation { field, message } => {
                ServiceError::Validation { field: field.clone(), message: message.clone() }
            }
            ServiceError::NotFound(message) => ServiceError::NotFound(message.clone()),
            ServiceError::Conflict(message) => ServiceError::Conflict(message.clone()),
            ServiceError::Forbidden(message) => ServiceError::Forbidden(message.clone()),
            ServiceError::Unauthorized(message) => ServiceError::Unauthorized(message.clone()),
            ServiceError::TooManyRequests(message) => ServiceError::TooManyRequests(message.clone()),
            ServiceError::BadGateway(message) => ServiceError::BadGateway(message.clone()),
            ServiceError::NotLeader { leader } => ServiceError::NotLeader { leader: leader.clone() },
            ServiceError::Internal(error) => ServiceError::Internal(anyhow::anyhow!("{error:#}")),
        }
    }
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

/// A refused join: a bad token is the caller's credential failing, a taken name a conflict.
impl From<berth_store::JoinError> for ServiceError {
    fn from(error: berth_store::JoinError) -> ServiceError {
        match error {
            berth_store::JoinError::InvalidToken => ServiceError::Unauthorized(error.to_string()),
            berth_store::JoinError::NameTaken(_) | berth_store::JoinError::IngressNodeTaken(_) => {
                ServiceError::Conflict(error.to_string())
            }
            berth_store::JoinError::Db(db) => db.into(),
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::Validation { field: field.to_string(), message: message.into() }
}

/// The lock every release holds from its quota check until it is stored, so two requests cannot
/// both fit in the room that holds one (builds' releases through [`Admission::release_gate`]).
#[derive(Clone, Default)]
pub struct Admission(std::sync::Arc<tokio::sync::Mutex<()>>);

impl Admission {
    /// The quota check a build's release passes when it is stored, under this lock.
    pub fn release_gate(&self, store: Store) -> std::sync::Arc<dyn berth_control::builds::ReleaseGate> {
        std::sync::Arc::new(quotas::BuildReleaseGate { store, admission: self.0.clone() })
    }
}

#[derive(Clone)]
pub struct Services {
    store: Store,
    /// This instance's place among the control-plane instances: the leader's duties when it
    /// leads, the leader's publications when it does not.
    cluster: Cluster,
    login_limiter: std::sync::Arc<identity::LoginLimiter>,
    sign_in: std::sync::Arc<crate::oidc::SignIn>,
    pushes: std::sync::Arc<builds::Pushes>,
    /// Where users reach the API (git remote URLs).
    public_url: String,
    /// Where Berth's pre-receive hook reaches the server.
    hook_socket: std::path::PathBuf,
    container_defaults: ContainerDefaults,
    /// Held from a quota check until the release it admitted is stored.
    admission: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Live views shared by the streams that show the same thing.
    views: std::sync::Arc<live::Views>,
}

impl Services {
    /// The services over `store`, reaching the control plane through `cluster`; `admission` is
    /// the lock the leader's builds take too ([`Admission::release_gate`]).
    pub fn new(store: Store, cluster: Cluster, admission: Admission) -> Services {
        let sign_in = crate::oidc::SignIn::new("http://localhost", Vec::new());
        Services {
            store,
            cluster,
            login_limiter: Default::default(),
            sign_in: std::sync::Arc::new(sign_in),
            pushes: Default::default(),
            public_url: "http://localhost".into(),
            hook_socket: std::path::PathBuf::from("hooks.sock"),
            container_defaults: ContainerDefaults::default(),
            admission: admission.0,
            views: Default::default(),
        }
    }

    /// CPU and memory limits for apps created without their own (none by default).
    pub fn with_container_defaults(mut self, defaults: ContainerDefaults) -> Services {
        self.container_defaults = defaults;
        self
    }

    /// Where the server listens for Berth's pre-receive hook.
    pub fn with_hook_socket(mut self, path: std::path::PathBuf) -> Services {
        self.hook_socket = path;
        self
    }

    pub fn hook_socket(&self) -> &std::path::Path {
        &self.hook_socket
    }

    /// A `git` command in an app's repository, as Berth runs git (on the leader, which holds
    /// the builds).
    pub async fn repos_git(&self, repo: &std::path::Path) -> Result<tokio::process::Command> {
        Ok(self.duties().await?.builds.repos().git(repo))
    }

    /// The leader's duties (the orchestrator, builds, certificates) when this instance leads;
    /// otherwise a 503 naming the instance that does.
    async fn duties(&self) -> Result<Duties> {
        if let Some(duties) = self.cluster.leader() {
            return Ok(duties);
        }
        let lease = self.store.lease().await?;
        let leader = (lease.expires_in_ms > 0 && !lease.address.is_empty()).then_some(lease.address);
        Err(ServiceError::NotLeader { leader })
    }

    /// The leader's builds (see [`Services::duties`]).
    async fn builds(&self) -> Result<berth_control::builds::Builds> {
        Ok(self.duties().await?.builds)
    }

    /// This instance's place among the control-plane instances.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Where users reach the API, for the URLs the API shows (the git remote).
    pub fn with_public_url(mut self, url: &str) -> Services {
        self.public_url = url.trim_end_matches('/').to_string();
        self
    }

    /// The principal a bearer token (or a dashboard session's secret) speaks for.
    pub async fn authenticate(&self, secret: &str) -> Result<crate::auth::Principal> {
        Ok(crate::auth::authenticate(&self.store, secret).await?)
    }

    /// Passes `stream` on for as long as `principal`'s token holds and reaches `scope` as it did
    /// when the stream opened (checked every [`RECHECK`]): a stream opened before a sign-out, a
    /// revoked or expired token, a disabled user, a removed member or a changed role ends within
    /// seconds instead of showing what its caller may no longer see (a browser reconnects, as
    /// whoever it now is). A store error does not end it (the next check decides).
    pub fn while_authorized<S>(
        &self,
        principal: &crate::auth::Principal,
        scope: Scope,
        stream: S,
    ) -> impl futures::Stream<Item = S::Item> + Send + 'static + use<S>
    where
        S: futures::Stream + Send + 'static,
    {
        use futures::StreamExt as _;
        let (store, principal) = (self.store.clone(), principal.clone());
        let opened_with = scope.access(&principal);
        let lost = async move {
            let mut tick = tokio::time::interval(RECHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match crate::auth::reauthenticate(&store, &principal).await {
                    Ok(now) if opened_with.is_some() && scope.access(&now) == opened_with => {}
                    Ok(_) | Err(crate::auth::AuthError::Unauthorized(_)) => return,
                    Err(error) => tracing::warn!(%error, "checking an open stream's token"),
                }
            }
        };
        stream.take_until(Box::pin(lost))
    }

    /// Enables sign-in through OAuth2 / OIDC providers.
    pub fn with_sign_in(mut self, sign_in: crate::oidc::SignIn) -> Services {
        self.sign_in = std::sync::Arc::new(sign_in);
        self
    }
}
