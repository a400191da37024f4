//! `berth server`: the all-in-one process. Opens the store, bootstraps the instance on first start,
//! connects to Docker, and runs the local agent, the orchestrator, the ingress and the API.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_agent::docker::DockerRuntime;
use berth_agent::{AgentConfig, ContainerRuntime as _, EndpointMode};
use berth_control::builds::BuildsConfig;
use berth_control::certs::{AcmeConfig, CertsConfig};
use berth_control::cluster::{self, Cluster, ClusterConfig, DutiesConfig};
use berth_control::images::LocalImageSource;
use berth_control::repos::Repos;
use berth_control::secrets::SecretKeys;
use berth_control::{HostLink, HostLinks, OrchestratorConfig};
use berth_ingress::Ingress;
pub use berth_store::{CopyReport, Database};
use berth_store::{InstanceInfo, Store};
pub use berth_wire::ADMIN_TOKEN_FILE;

use crate::auth;
use crate::http::{self, AppState};

mod listen;
mod settings;

use crate::oidc::SignIn;
use crate::services::{Admission, Services};
pub use berth_ingress::{IngressConfig, IpNet, parse_cidr};
pub use listen::{ApiLimits, serve, tls_acceptor};
pub use settings::{ServerSettings, parse_bytes, parse_duration};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Where the store lives (SQLite in the data directory unless `--database` says otherwise).
    pub database: Database,
    pub listen: SocketAddr,
    pub ingress_listen: SocketAddr,
    pub base_domain: String,
    /// Name of the local host as agents and labels know it.
    pub host_name: String,
    /// When set, containers publish their port on this address instead of being reached on
    /// Docker's bridge network.
    pub advertise_addr: Option<IpAddr>,
    pub deploy_timeout: Duration,
    pub drain_timeout: Duration,
    pub stop_grace_secs: u32,
    /// Remote hosts silent this long are declared down.
    pub heartbeat_timeout: Duration,
    /// Run the in-process agent (false: a pure control plane; all hosts join with `berth agent`).
    pub local_agent: bool,
    /// The build cache is pruned down to this many bytes when a build leaves it larger.
    pub build_cache_max: u64,
    /// CPU and memory limits of apps created without their own.
    pub container_defaults: crate::services::ContainerDefaults,
    /// Where browsers reach this server (for sign-in callbacks).
    pub public_url: Option<String>,
    /// OAuth2 / OIDC sign-in providers.
    pub sign_in: Vec<crate::oidc::Provider>,
    /// A CA (PEM) trusted, besides the system's roots, for the sign-in providers' HTTPS.
    pub sign_in_ca_file: Option<std::path::PathBuf>,
    /// Where the dashboard's compiled wasm and JS are (`<dir>/pkg`).
    pub dashboard_dir: PathBuf,
    /// The ingress's HTTPS listener.
    pub https_listen: Option<SocketAddr>,
    /// The operator's certificate and key files (PEM) for the base domain.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    pub acme: Option<AcmeSettings>,
    /// The ingress's timeouts, limits and trusted proxies.
    pub ingress: IngressConfig,
    /// The API listener's limits.
    pub api: ApiLimits,
    /// The HTTPS API listener, if any.
    pub api_tls: Option<ApiTls>,
}

/// A second API listener that speaks HTTPS.
#[derive(Debug, Clone)]
pub struct ApiTls {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// ACME as configured: certificates for custom domains (and app names under a public base
/// domain) from this directory.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub email: String,
    pub directory: String,
    pub ca_file: Option<PathBuf>,
}

/// `site` next to the `berth` executable, where `cargo xtask` puts the dashboard's build.
pub fn default_dashboard_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("site")))
        .unwrap_or_else(|| PathBuf::from("site"))
}

/// The instance admin's first password (sign in as `admin@localhost`, then change it).
pub const ADMIN_PASSWORD_FILE: &str = "admin.password";

pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let store = Store::connect(&config.database).await?;
    tracing::info!(database = %config.database.redacted(), "store open");
    bootstrap(&store, &config.data_dir).await?;

    let ingress_listener = tokio::net::TcpListener::bind(config.ingress_listen)
        .await
        .with_context(|| format!("listening for ingress traffic on {}", config.ingress_listen))?;
    let https_listener = match config.https_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for HTTPS ingress traffic on {addr}"))?,
        ),
        None => None,
    };
    let (operator_certificate, operator_pem) = match &config.tls_cert {
        Some((cert, key)) => {
            let read =
                |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
            let (chain_pem, key_pem) = (read(cert)?, read(key)?);
            let certificate = berth_ingress::Certificate::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())
                .with_context(|| format!("the certificate {} with the key {}", cert.display(), key.display()))?;
            (Some(certificate), Some((chain_pem, key_pem)))
        }
        None => (None, None),
    };
    let api_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening for the API on {}", config.listen))?;
    let api_tls = match &config.api_tls {
        Some(tls) => {
            let acceptor = listen::tls_acceptor(&tls.cert, &tls.key)?;
            let listener = tokio::net::TcpListener::bind(tls.listen)
                .await
                .with_context(|| format!("listening for the HTTPS API on {}", tls.listen))?;
            Some((listener, acceptor))
        }
        None => None,
    };
    let api_tls_address = api_tls.as_ref().map(|(listener, _)| listener.local_addr()).transpose()?;

    let links = HostLinks::default();
    if config.local_agent {
        let runtime = Arc::new(DockerRuntime::connect().await?);
        let endpoint_mode = match config.advertise_addr {
            Some(ip) => EndpointMode::Published(ip),
            None => EndpointMode::ContainerIp,
        };
        let advertised = config.advertise_addr.map_or_else(|| "docker bridge".to_string(), |ip| ip.to_string());
        store.register_local_host(&config.host_name, &advertised, &runtime.capacity().await).await?;
        let link = HostLink::new(config.host_name.clone());
        let desired = link.desired_receiver();
        let mut agent_config = AgentConfig::new(config.host_name.clone(), endpoint_mode);
        agent_config.image_source =
            Some(Arc::new(LocalImageSource { host: config.host_name.clone(), links: links.clone() }));
        let agent = berth_agent::spawn(runtime, agent_config, desired);
        links.add(link.attach_local(agent));
    }

    let mut ingress_config = config.ingress.clone();
    if let Some(listener) = &https_listener {
        ingress_config.https_port = Some(listener.local_addr()?.port());
    }
    let https_port = ingress_config.https_port.filter(|_| https_listener.is_some());
    let ingress = Ingress::new(ingress_config);
    // Where the API is reached: as configured, or the address it listens on (its port chosen).
    let public_url = config.public_url.clone().unwrap_or_else(|| match api_listener.local_addr() {
        Ok(address) => format!("http://{address}"),
        Err(_) => format!("http://{}", config.listen),
    });
    let instance = InstanceInfo {
        id: cluster::instance_id(&config.host_name),
        host: config.host_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        address: public_url.clone(),
    };
    let site = OrchestratorConfig {
        deploy_timeout: config.deploy_timeout,
        drain_timeout: config.drain_timeout,
        stop_grace_secs: config.stop_grace_secs,
        heartbeat_timeout: config.heartbeat_timeout,
        https_port,
        secrets: SecretKeys::open(&config.data_dir)?,
        instance_id: instance.id.clone(),
        ..OrchestratorConfig::new(config.base_domain.clone(), ingress_listener.local_addr()?.port())
    };
    let hook_program = std::env::current_exe().context("locating the berth binary (git hooks run it)")?;
    let repos = Repos::open(&config.data_dir, &hook_program).await?;
    let builds_config = BuildsConfig {
        logs_dir: config.data_dir.join("builds"),
        cache_max_bytes: config.build_cache_max,
        min_free_bytes: 2 << 30,
    };
    let certs_config = CertsConfig {
        tls_dir: config.data_dir.join("tls"),
        acme: config.acme.as_ref().map(|acme| AcmeConfig {
            directory_url: acme.directory.clone(),
            email: acme.email.clone(),
            ca_file: acme.ca_file.clone(),
            app_names: !is_local_domain(&config.base_domain)
                && !operator_certificate
                    .as_ref()
                    .is_some_and(|c| c.names.iter().any(|n| *n == format!("*.{}", config.base_domain))),
            tls_alpn: https_listener.is_some(),
            retry_base: Duration::from_secs(60),
        }),
        operator: operator_certificate,
        operator_pem,
        check_every: Duration::from_secs(5),
    };
    let admission = Admission::default();
    let duties = cluster::start_duties(DutiesConfig {
        ingress: ingress.clone(),
        links,
        orchestrator: site.clone(),
        repos,
        builds: builds_config,
        certs: certs_config.clone(),
        release_gate: admission.release_gate(store.clone()),
    });
    let cluster_config = ClusterConfig { certificates: Some(certs_config), ..ClusterConfig::new(instance, site) };
    let cluster = Cluster::start(store.clone(), ingress.clone(), cluster_config, duties).await?;
    match cluster.term() {
        Some(term) => tracing::info!(term, "this instance leads the control plane"),
        None => println!(
            "berth server: another instance leads the control plane; this one serves the API and its ingress, and takes over if the leader goes"
        ),
    }
    // One socket per process: instances may share the data directory.
    let hook_socket = config.data_dir.join("run").join(format!("hooks-{}.sock", std::process::id()));
    crate::githook::remove_stale_sockets(&config.data_dir.join("run"));
    let hook_listener = crate::githook::bind(&hook_socket)?;
    let mut sign_in = SignIn::new(&public_url, config.sign_in.clone());
    if let Some(path) = &config.sign_in_ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading the sign-in CA {}", path.display()))?;
        sign_in = sign_in.with_ca(&pem).with_context(|| format!("in {}", path.display()))?;
    }
    let services = Services::new(store, cluster.clone(), admission)
        .with_sign_in(sign_in)
        .with_public_url(&public_url)
        .with_hook_socket(hook_socket.clone())
        .with_container_defaults(config.container_defaults);
    let stop_hooks = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::githook::serve(hook_listener, services.clone(), stop_hooks.clone()));

    println!(
        "berth server: API on http://{}{}, apps on http://<app>.{}:{}{}",
        api_listener.local_addr()?,
        api_tls_address.map(|a| format!(" and https://{a}")).unwrap_or_default(),
        config.base_domain,
        ingress_listener.local_addr()?.port(),
        match &https_listener {
            Some(listener) => format!(" and https on port {}", listener.local_addr()?.port()),
            None => String::new(),
        }
    );
    let ingress_task = tokio::spawn(ingress.clone().serve(ingress_listener));
    let https_task = https_listener.map(|listener| tokio::spawn(ingress.clone().serve_tls(listener)));
    if !config.dashboard_dir.join("pkg").join(format!("{}.js", berth_frontend::app::OUTPUT_NAME)).exists() {
        tracing::warn!(
            dir = %config.dashboard_dir.display(),
            "the dashboard's wasm is not built there (cargo xtask dashboard): pages render but stay static"
        );
    }
    let app = http::router_with_dashboard(AppState { services }, Some(&config.dashboard_dir))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span));
    let stop = tokio_util::sync::CancellationToken::new();
    {
        // Pushes hold their connection until their build ends: end the builds at once, or
        // the graceful shutdown would wait for them.
        let (cluster, stop) = (cluster.clone(), stop.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            if let Some(duties) = cluster.leader() {
                duties.builds.cancel_all();
            }
            stop.cancel();
        });
    }
    let tls_task = api_tls.map(|(listener, acceptor)| {
        let (app, limits, stop) = (app.clone(), config.api.clone(), stop.clone());
        tokio::spawn(async move { listen::serve(listener, Some(acceptor), app, limits, stop.cancelled_owned()).await })
    });
    listen::serve(api_listener, None, app, config.api.clone(), stop.clone().cancelled_owned())
        .await
        .context("serving the API")?;
    if let Some(task) = tls_task {
        task.await.context("the HTTPS API listener")?.context("serving the API over HTTPS")?;
    }
    stop_hooks.cancel();
    let _ = std::fs::remove_file(&hook_socket);
    cluster.shutdown().await;
    ingress_task.abort();
    if let Some(task) = https_task {
        task.abort();
    }
    println!("berth server: stopped; containers keep running and are adopted at the next start");
    Ok(())
}

/// The log span of a request: its method and [`loggable_path`].
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::info_span!("request", method = %request.method(), path = loggable_path(request.uri()))
}

/// The request's path without the query (sign-in codes and states) and with invitation secrets
/// blanked, so no secret reaches the logs.
fn loggable_path(uri: &axum::http::Uri) -> String {
    let path = uri.path();
    match path.strip_prefix("/api/v1/invites/") {
        Some(rest) => format!("/api/v1/invites/(secret)/{}", rest.split_once('/').map_or("", |(_, tail)| tail)),
        None => path.to_string(),
    }
}

/// First start: create the admin, team `main` and an admin token, written to `admin.token` (0600).
async fn bootstrap(store: &Store, data_dir: &Path) -> anyhow::Result<()> {
    let token_path = data_dir.join(ADMIN_TOKEN_FILE);
    let password_path = data_dir.join(ADMIN_PASSWORD_FILE);
    if store.is_bootstrapped().await? {
        // Hashing a first password is deliberately slow; later starts skip it.
        if token_path.exists() {
            println!("berth server: admin API token in {}", token_path.display());
        }
        return Ok(());
    }
    let secret = auth::new_token();
    let password = auth::new_token().trim_start_matches("berth_")[..24].to_string();
    let password_hash = auth::hash_password(&password).await?;
    if store.bootstrap(&auth::hash_token(&secret), &password_hash).await? {
        write_private(&token_path, &format!("{secret}\n"))
            .with_context(|| format!("writing the admin token to {}", token_path.display()))?;
        write_private(&password_path, &format!("{password}\n"))
            .with_context(|| format!("writing the admin password to {}", password_path.display()))?;
        println!(
            "berth server: first start; created team 'main', the admin admin@localhost (password in {}) and an admin API token in {}",
            password_path.display(),
            token_path.display()
        );
    }
    Ok(())
}

/// Writes a secret readable by its owner only (created 0600, never wider).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    Ok(berth_control::write_private(path, contents.as_bytes())?)
}

/// Names no public CA certifies (`localhost`, `*.localhost`, `*.test`, `*.internal`, ...).
fn is_local_domain(domain: &str) -> bool {
    let tld = domain.rsplit('.').next().unwrap_or(domain);
    matches!(tld, "localhost" | "test" | "internal" | "local" | "example" | "invalid" | "lan" | "home")
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Rejects configurations that cannot work, before anything starts.
fn check(config: &ServerConfig) -> anyhow::Result<()> {
    if config.base_domain.is_empty()
        || config.base_domain.starts_with('.')
        || config.base_domain.contains(['/', ':', ' '])
    {
        bail!("--base-domain {:?} is not a domain name", config.base_domain);
    }
    if config.listen == config.ingress_listen && config.listen.port() != 0 {
        bail!("--listen and --ingress-listen are both {}; they need different ports", config.listen);
    }
    if let Some(https) = config.https_listen
        && https.port() != 0
        && (https == config.listen || https == config.ingress_listen)
    {
        bail!("--https-listen {https} is already taken by --listen or --ingress-listen");
    }
    if config.https_listen.is_none() && (config.tls_cert.is_some() || config.acme.is_some()) {
        bail!("certificates (--tls-cert, --acme-email) are served by the HTTPS listener: give --https-listen too");
    }
    if let Some(acme) = &config.acme
        && (!acme.email.contains('@') || acme.email.contains(char::is_whitespace))
    {
        bail!("--acme-email {:?} is not an email address", acme.email);
    }
    Ok(())
}

/// `berth admin set-password`: sets a user's password in the store, with no server running.
pub async fn set_password(database: &Database, email: &str, password: &str) -> anyhow::Result<()> {
    if let Database::Sqlite(path) = database
        && !path.exists()
    {
        bail!("{} does not exist: no Berth database there (is --data-dir / --database right?)", path.display());
    }
    let store = Store::connect(database).await?;
    crate::services::set_password_offline(&store, email, password)
        .await
        .with_context(|| format!("in {}", database.redacted()))
}

/// `berth admin migrate-store`: copies every row of the store `from` into `to`, a new, empty
/// database (its schema is created first). `from` is only read (its migrations brought up to
/// date first, as a server start would); a failure leaves `to` without rows.
pub async fn migrate_store(from: &Database, to: &Database) -> anyhow::Result<CopyReport> {
    if from == to {
        bail!("--from and --to are the same database");
    }
    if let Database::Sqlite(path) = from
        && !path.exists()
    {
        bail!("{} does not exist: no Berth database to copy", path.display());
    }
    let source = Store::connect(from).await.with_context(|| format!("opening the source {}", from.redacted()))?;
    let target = Store::connect(to).await.with_context(|| format!("opening the target {}", to.redacted()))?;
    let report = source.copy_to(&target).await.with_context(|| format!("copying into {}", to.redacted()))?;
    source.close().await;
    target.close().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_paths_carry_no_secrets() {
        let path = |uri: &str| loggable_path(&uri.parse().unwrap());
        assert_eq!(path("/api/v1/invites/berth_invite_abc/accept"), "/api/v1/invites/(secret)/accept");
        assert_eq!(path("/api/v1/auth/corp/callback?code=x&state=y"), "/api/v1/auth/corp/callback");
        assert_eq!(path("/api/v1/teams/main/apps"), "/api/v1/teams/main/apps");
    }
}
