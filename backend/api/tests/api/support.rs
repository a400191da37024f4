//! A Berth instance for API tests: store in a scratch directory, orchestrator without hosts,
//! the real router.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use berth_api::auth::{hash_token, new_token};
use berth_api::http::{self, AppState};
use berth_api::oidc::SignIn;
use berth_api::services::{Admission, ContainerDefaults, Services};
use berth_control::builds::BuildsConfig;
use berth_control::certs::CertsConfig;
use berth_control::cluster::{self, Cluster, ClusterConfig, DutiesConfig};
use berth_control::repos::Repos;
use berth_control::secrets::SecretKeys;
use berth_control::{HostLinks, OrchestratorConfig};
use berth_ingress::{Ingress, IngressConfig};
use berth_store::{InstanceInfo, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A scratch directory, removed on drop.
pub struct ScratchDir(pub tempfile::TempDir);

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

/// Opens a store in `dir` (SQLite), or with `BERTH_TEST_STORE=postgres` on a fresh PostgreSQL
/// database.
pub async fn store(dir: &ScratchDir) -> Store {
    berth_store::testing::store(dir.0.path()).await
}

/// The router over `store`, with an orchestrator that has no hosts (nothing ever runs) and the
/// given sign-in providers.
pub async fn router(dir: &ScratchDir, store: Store, sign_in: Option<SignIn>) -> Router {
    router_with(dir, store, sign_in, ContainerDefaults::default()).await
}

/// `router`, giving apps created without limits these.
pub async fn router_with(
    dir: &ScratchDir,
    store: Store,
    sign_in: Option<SignIn>,
    defaults: ContainerDefaults,
) -> Router {
    router_parts(dir, store, sign_in, defaults).await.0
}

/// `router_with`, and its orchestrator: a test making many instances shuts each down, or their
/// background loops (host checks every 200 ms) pile up and slow everything after them.
pub async fn router_parts(
    dir: &ScratchDir,
    store: Store,
    sign_in: Option<SignIn>,
    defaults: ContainerDefaults,
) -> (Router, Cluster) {
    let config = OrchestratorConfig {
        deploy_timeout: Duration::from_secs(600),
        drain_timeout: Duration::from_secs(1),
        stop_grace_secs: 1,
        heartbeat_timeout: Duration::from_secs(600),
        secrets: SecretKeys::open(dir.0.path()).expect("the secret key file"),
        ..OrchestratorConfig::new("localhost", 8080)
    };
    let ingress = Ingress::new(IngressConfig::default());
    let data = dir.0.path();
    let program = std::env::current_exe().expect("the test binary's path");
    let repos = Repos::open(data, &program).await.expect("git is installed");
    let admission = Admission::default();
    let duties = cluster::start_duties(DutiesConfig {
        ingress: ingress.clone(),
        links: HostLinks::default(),
        orchestrator: config.clone(),
        repos,
        builds: BuildsConfig { logs_dir: data.join("builds"), cache_max_bytes: 1 << 30, min_free_bytes: 0 },
        certs: CertsConfig {
            tls_dir: data.join("tls"),
            acme: None,
            operator: None,
            operator_pem: None,
            check_every: Duration::from_secs(5),
        },
        release_gate: admission.release_gate(store.clone()),
    });
    let instance = InstanceInfo {
        id: cluster::instance_id("test"),
        host: "test".into(),
        version: "test".into(),
        address: "http://localhost".into(),
    };
    let cluster = Cluster::start(store.clone(), ingress, ClusterConfig::new(instance, config), duties)
        .await
        .expect("starting the control plane");
    assert!(cluster.leader().is_some(), "the only instance leads");
    let mut services = Services::new(store, cluster.clone(), admission).with_container_defaults(defaults);
    if let Some(sign_in) = sign_in {
        services = services.with_sign_in(sign_in);
    }
    (http::router(AppState { services }), cluster)
}

/// A bootstrapped instance: the router and the admin's token.
pub struct Instance {
    pub router: axum::Router,
    pub admin: String,
    pub dir: ScratchDir,
    /// The store under the router (SQLite in `dir`, or PostgreSQL).
    pub store: Store,
}

pub async fn instance(name: &str) -> Instance {
    instance_with(name, ContainerDefaults::default()).await
}

/// `instance`, giving apps created without limits these.
pub async fn instance_with(name: &str, defaults: ContainerDefaults) -> Instance {
    let dir = ScratchDir::new(name);
    let store = store(&dir).await;
    let admin = new_token();
    let password_hash = berth_api::auth::hash_password("admin password 1").await.unwrap();
    store.bootstrap(&hash_token(&admin), &password_hash).await.unwrap();
    let router = router_with(&dir, store.clone(), None, defaults).await;
    Instance { router, admin, dir, store }
}

impl Instance {
    pub async fn call(&self, method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        self.call_from(None, method, uri, token, body).await
    }

    /// Like `call`, from the client address `from` (as the listener records it).
    pub async fn call_from(
        &self,
        from: Option<&str>,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(from) = from {
            let address: std::net::SocketAddr = format!("{from}:40000").parse().expect("an IPv4 address");
            request = request.extension(axum::extract::ConnectInfo(address));
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request.header("content-type", "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Invites `email` into `team` as `role` (by the admin, who owns `main`) and returns their token.
    pub async fn join(&self, team: &str, email: &str, role: &str) -> String {
        let (status, invite) = self
            .call(
                Method::POST,
                &format!("/api/v1/teams/{team}/invites"),
                Some(&self.admin),
                Some(json!({ "role": role })),
            )
            .await;
        assert_eq!(status, 201, "{invite}");
        let token = invite["token"].as_str().unwrap();
        let (status, joined) = self
            .call(
                Method::POST,
                &format!("/api/v1/invites/{token}/accept"),
                None,
                Some(json!({ "email": email, "password": "a long password" })),
            )
            .await;
        assert_eq!(status, 200, "{joined}");
        joined["token"].as_str().unwrap().to_string()
    }
}
