//! A Berth instance for API tests: store in a scratch directory, orchestrator without hosts,
//! the real router.

use std::time::Duration;

use axum::Router;
use berth_backend::http::{self, AppState};
use berth_backend::oidc::SignIn;
use berth_backend::orchestrator::{Orchestrator, OrchestratorConfig};
use berth_backend::services::Services;
use berth_backend::store::Store;
use berth_ingress::{Ingress, IngressConfig};

/// A scratch directory, removed on drop.
pub struct ScratchDir(pub std::path::PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("berth-api-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a scratch directory");
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens a store in `dir`.
pub async fn store(dir: &ScratchDir) -> Store {
    Store::open(&dir.0).await.expect("opening the store")
}

/// The router over `store`, with an orchestrator that has no hosts (nothing ever runs) and the
/// given sign-in providers.
pub async fn router(store: Store, sign_in: Option<SignIn>) -> Router {
    let config = OrchestratorConfig {
        base_domain: "localhost".into(),
        ingress_port: 8080,
        deploy_timeout: Duration::from_secs(600),
        drain_timeout: Duration::from_secs(1),
        stop_grace_secs: 1,
        crash_limit: 3,
        heartbeat_timeout: Duration::from_secs(600),
    };
    let orchestrator = Orchestrator::start(store.clone(), Ingress::new(IngressConfig::default()), Vec::new(), config)
        .await
        .expect("starting the orchestrator");
    let mut services = Services::new(store, orchestrator);
    if let Some(sign_in) = sign_in {
        services = services.with_sign_in(sign_in);
    }
    http::router(AppState { services })
}
