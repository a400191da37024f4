//! A Berth instance for API tests: store in a scratch directory, orchestrator without hosts,
//! the real router.

use std::time::Duration;

use axum::Router;
use berth_api::http::{self, AppState};
use berth_api::oidc::SignIn;
use berth_api::services::Services;
use berth_control::builds::{Builds, BuildsConfig};
use berth_control::certs::{Certs, CertsConfig};
use berth_control::repos::Repos;
use berth_control::{HostLinks, Orchestrator, OrchestratorConfig};
use berth_ingress::{Ingress, IngressConfig};
use berth_store::Store;

/// A scratch directory, removed on drop.
pub struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        let dir = tempfile::Builder::new().prefix(&format!("berth-api-{name}-")).tempdir();
        ScratchDir(dir.expect("creating a scratch directory"))
    }
}

/// Milliseconds since the Unix epoch, as the store's timestamps count them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Opens a store in `dir`.
pub async fn store(dir: &ScratchDir) -> Store {
    Store::open(dir.0.path()).await.expect("opening the store")
}

/// The router over `store`, with an orchestrator that has no hosts (nothing ever runs) and the
/// given sign-in providers.
pub async fn router(dir: &ScratchDir, store: Store, sign_in: Option<SignIn>) -> Router {
    let config = OrchestratorConfig {
        deploy_timeout: Duration::from_secs(600),
        drain_timeout: Duration::from_secs(1),
        stop_grace_secs: 1,
        heartbeat_timeout: Duration::from_secs(600),
        ..OrchestratorConfig::new("localhost", 8080)
    };
    let ingress = Ingress::new(IngressConfig::default());
    let orchestrator = Orchestrator::start(store.clone(), ingress.clone(), HostLinks::default(), config)
        .await
        .expect("starting the orchestrator");
    let data = dir.0.path();
    let program = std::env::current_exe().expect("the test binary's path");
    let repos = Repos::open(data, &program).await.expect("git is installed");
    let builds_config = BuildsConfig { logs_dir: data.join("builds"), cache_max_bytes: 1 << 30, min_free_bytes: 0 };
    let builds = Builds::start(store.clone(), orchestrator.clone(), repos, builds_config).await.expect("builds");
    let certs_config =
        CertsConfig { tls_dir: data.join("tls"), acme: None, operator: None, check_every: Duration::from_secs(5) };
    let certs = Certs::start(store.clone(), ingress, orchestrator.clone(), certs_config).await.expect("certificates");
    let mut services = Services::new(store, orchestrator, builds, certs);
    if let Some(sign_in) = sign_in {
        services = services.with_sign_in(sign_in);
    }
    http::router(AppState { services })
}
