//! `berth`: one binary for the server, the agent and the CLI.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use berth_agent::daemon::{self as agent_daemon, AgentDaemonConfig};
use berth_agent::edge::{self, IngressNodeConfig};
use berth_api::oidc::Provider;
use berth_api::server::{self, ServerSettings};
use berth_cli::{self as cli, Client, Wait};
use berth_wire::api::JoinTokenKind;
use berth_wire::edge::AppProtocol;

#[derive(Parser)]
#[command(name = "berth", version, about = "Berth: a self-hosted platform-as-a-service")]
struct Cli {
    /// URL of the Berth API.
    #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:7878", global = true)]
    url: String,
    /// API token (default: the admin token in ./berth-data/admin.token, if readable). For
    /// `berth agent`, the join token (needed on the host's first start only).
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Team to act in.
    #[arg(long, env = "BERTH_TEAM", default_value = "main", global = true)]
    team: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the all-in-one server: API, orchestrator, local host agent and ingress.
    Server(Box<ServerArgs>),
    /// Create, list, show and delete apps.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Release a new version of an app (a new image and/or config) with zero downtime.
    Deploy {
        name: String,
        #[arg(long)]
        image: Option<String>,
        /// Set an environment variable (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Set a secret variable (repeatable): stored encrypted, never shown again. `KEY` alone
        /// takes the value of `KEY` in this command's environment.
        #[arg(long = "secret", value_name = "KEY[=VALUE]")]
        secret: Vec<String>,
        /// Remove an environment variable, plain or secret (repeatable).
        #[arg(long = "unset-env", value_name = "KEY")]
        unset_env: Vec<String>,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        health_path: Option<String>,
        /// How the containers speak HTTP: `http1`, or `h2c` (HTTP/2 without TLS, e.g. gRPC).
        #[arg(long, value_parser = parse_protocol)]
        protocol: Option<AppProtocol>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change the number of replicas (a new release through the same protocol).
    Scale {
        name: String,
        replicas: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Release an earlier release's spec again (default: the one before the serving release).
    Rollback {
        name: String,
        #[arg(long)]
        to: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Exit 0 when the server at --url answers (for container health checks).
    Health,
    /// Run a host agent that joins a control plane (`berth agent --join URL --token JOIN_TOKEN`).
    Agent(AgentArgs),
    /// Run an edge-only ingress node that joins a control plane and serves its apps, on from the
    /// route table it saved while no control plane answers (`berth ingress --join URL --token
    /// JOIN_TOKEN --listen 0.0.0.0:80`).
    Ingress(Box<IngressArgs>),
    /// Remove ingress nodes (instance admins); `berth status` lists them.
    #[command(subcommand, name = "ingress-nodes")]
    IngressNodes(IngressNodesCommand),
    /// Maintenance on this machine's data directory, without the API (`berth admin set-password`).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The control plane's instances: which leads, their versions, how far their ingress follows
    /// (instance admins).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List, inspect, drain and remove hosts (instance admins).
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// The key apps' secret variables are sealed with (instance admins).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Create join tokens for new hosts (instance admins).
    #[command(subcommand, name = "join-tokens")]
    JoinTokens(JoinTokensCommand),
    /// Sign in with email and password (read from standard input) and keep the token.
    Login {
        #[arg(long)]
        email: String,
    },
    /// Who the current token belongs to, and its teams and roles.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// List and create teams.
    #[command(subcommand)]
    Teams(TeamsCommand),
    /// Members of the team (`--team`) and their roles.
    #[command(subcommand)]
    Members(MembersCommand),
    /// Invitations to the team (`--team`).
    #[command(subcommand)]
    Invites(InvitesCommand),
    /// Your API tokens: personal, or for one team (CI).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Accounts (instance admins).
    #[command(subcommand)]
    Users(UsersCommand),
    /// The audit log of the team (`--team`), or of everything (`--all`, instance admins).
    Audit {
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Add the git remote of an app built from git (`git push berth main` then builds and
    /// releases), with a credential helper that answers with your Berth token.
    #[command(name = "git-remote")]
    GitRemote {
        name: String,
        /// Name of the remote.
        #[arg(long, default_value = "berth")]
        remote: String,
    },
    /// Builds of an app from git: list, logs, cancel, settings.
    #[command(subcommand)]
    Builds(BuildsCommand),
    /// Webhooks that build an app when its repository elsewhere (GitHub, Gitea, GitLab) is pushed.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Custom domains of an app; each gets a certificate by ACME when the server has --acme-email.
    #[command(subcommand)]
    Domains(DomainsCommand),
    /// An app's own certificates (bring your own instead of ACME).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Show or change how an app is served at the edge: redirect to HTTPS, HSTS.
    Edge {
        name: String,
        /// Redirect plain HTTP to HTTPS for names with a certificate: on (default) or off.
        #[arg(long, value_parser = parse_on_off)]
        https_redirect: Option<bool>,
        /// Send Strict-Transport-Security with this max-age in seconds (0: off).
        #[arg(long)]
        hsts: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// git's credential helper protocol (run by git, set up by `berth git-remote`).
    #[command(name = "git-credential", hide = true)]
    GitCredential { action: String },
    /// Berth's git hooks (run by git in the apps' repositories).
    #[command(subcommand, hide = true)]
    Hook(HookCommand),
    /// Show an app's logs.
    Logs {
        name: String,
        #[arg(long, short)]
        follow: bool,
        #[arg(long, default_value_t = 100)]
        tail: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TeamsCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    Create {
        name: String,
    },
    /// The team's quota and what its apps declare (`--team`).
    Quota {
        #[arg(long)]
        json: bool,
    },
    /// Set the team's quota (`--team`; instance admins). A limit left out is unlimited.
    #[command(name = "set-quota")]
    SetQuota {
        /// Replicas over all the team's apps.
        #[arg(long)]
        replicas: Option<u64>,
        /// CPU in cores over all replicas' limits (e.g. 4 or 2.5).
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory in MiB over all replicas' limits.
        #[arg(long)]
        memory: Option<u64>,
    },
}

#[derive(Subcommand)]
enum MembersCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add an existing user with a role.
    Add {
        email: String,
        #[arg(long)]
        role: String,
    },
    Remove {
        email: String,
    },
    /// Change a member's role.
    Role {
        email: String,
        role: String,
    },
}

#[derive(Subcommand)]
enum InvitesCommand {
    /// Create an invitation (prints its secret once).
    Create {
        #[arg(long)]
        role: String,
        /// Only this address may accept.
        #[arg(long)]
        email: Option<String>,
        /// Lifetime in seconds (default 7 days).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Accept an invitation; the password is read from standard input.
    Accept {
        token: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a token (printed once). With `--for-team`, it acts only in that team, at most at `--role`.
    Create {
        name: String,
        #[arg(long = "for-team")]
        for_team: Option<String>,
        #[arg(long)]
        role: Option<String>,
        /// Lifetime in seconds.
        #[arg(long)]
        expires: Option<u64>,
    },
    Revoke {
        id: i64,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    Disable {
        email: String,
    },
    Enable {
        email: String,
    },
    /// Set a user's password (read from standard input); their sessions end.
    ResetPassword {
        email: String,
    },
}

#[derive(Subcommand)]
enum HostsCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Move every replica off the host with zero downtime; it takes no new ones.
    Drain { name: String },
    /// Forget the host: its credential stops working, its replicas move elsewhere.
    Remove { name: String },
}

#[derive(Subcommand)]
enum JoinTokensCommand {
    Create {
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// How many hosts (or ingress nodes) may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// What joins with it: `host` (`berth agent`) or `ingress` (`berth ingress`, which
        /// receives the certificates' private keys).
        #[arg(long = "for", default_value = "host", value_parser = parse_join_kind)]
        kind: JoinTokenKind,
    },
}

fn parse_join_kind(text: &str) -> Result<JoinTokenKind, String> {
    text.parse().map_err(|_| format!("{text:?}: use host or ingress"))
}

#[derive(Args)]
struct AgentArgs {
    /// URL of the control plane's API.
    #[arg(long = "join", env = "BERTH_JOIN")]
    join: String,
    /// Name of this host (default: the machine's hostname).
    #[arg(long, env = "BERTH_HOST_NAME")]
    name: Option<String>,
    /// Address the ingress reaches this host's containers on (default: the address used to reach
    /// the control plane).
    #[arg(long, env = "BERTH_ADVERTISE_ADDR")]
    advertise_addr: Option<IpAddr>,
    /// Host label for placement constraints (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    #[arg(long, env = "BERTH_AGENT_DATA_DIR", default_value = "./berth-agent")]
    data_dir: PathBuf,
    /// CA certificate (PEM) to verify an https:// control plane with when joining (default: the
    /// system's roots). What was verified against is pinned in the credential file.
    #[arg(long, env = "BERTH_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Allow plain http:// to a control plane that is not on this machine (the join token, the
    /// host's credential and apps' environments then cross the network unencrypted).
    #[arg(long)]
    insecure: bool,
}

#[derive(Args)]
struct IngressArgs {
    /// URL of the control plane's API; repeat it for each instance: the node turns to the next
    /// when one is unreachable (it also learns the running instances from each route table).
    #[arg(long = "join", env = "BERTH_JOIN", value_delimiter = ',', required = true)]
    join: Vec<String>,
    /// Name of this node (default: the machine's hostname).
    #[arg(long, env = "BERTH_NODE_NAME")]
    name: Option<String>,
    #[arg(long, env = "BERTH_INGRESS_DATA_DIR", default_value = "./berth-ingress")]
    data_dir: PathBuf,
    /// CA certificate (PEM) to verify an https:// control plane with when joining (default: the
    /// system's roots); pinned in the node's credential file.
    #[arg(long, env = "BERTH_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Allow plain http:// to a control plane that is not on this machine (the join token, the
    /// node's credential and the certificates' private keys then cross the network unencrypted).
    #[arg(long)]
    insecure: bool,
    /// Where apps are served over HTTP.
    #[arg(long, env = "BERTH_INGRESS_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Where apps are served over HTTPS, with the certificates the control plane stores.
    #[arg(long, env = "BERTH_HTTPS_LISTEN")]
    https_listen: Option<SocketAddr>,
    /// Time requests in flight to a replica a new route table removed may take before the node
    /// confirms the table anyway. [default: 30]
    #[arg(long, env = "BERTH_DRAIN_TIMEOUT", value_parser = server::parse_duration)]
    drain_timeout: Option<Duration>,
    /// A proxy or load balancer in front of the node (address or CIDR, repeatable), believed for
    /// the client address and forwarding headers.
    #[arg(long = "trusted-proxy", env = "BERTH_TRUSTED_PROXIES", value_delimiter = ',', value_parser = server::parse_cidr)]
    trusted_proxies: Vec<server::IpNet>,
    /// Read a PROXY protocol (v1/v2) header on connections from trusted proxies.
    #[arg(long, env = "BERTH_PROXY_PROTOCOL")]
    proxy_protocol: bool,
    /// Log one line per request (target `berth::access`).
    #[arg(long, env = "BERTH_ACCESS_LOG")]
    access_log: bool,
    /// Time a client has to send a request head or finish a TLS handshake. [default: 30]
    #[arg(long, env = "BERTH_INGRESS_HEADER_TIMEOUT", value_parser = server::parse_duration)]
    header_timeout: Option<Duration>,
    /// Time to open a connection to a replica before trying the next. [default: 2]
    #[arg(long, env = "BERTH_UPSTREAM_CONNECT_TIMEOUT", value_parser = server::parse_duration)]
    upstream_connect_timeout: Option<Duration>,
    /// Time an app has to start answering once the request is sent. [default: 60]
    #[arg(long, env = "BERTH_UPSTREAM_RESPONSE_TIMEOUT", value_parser = server::parse_duration)]
    upstream_response_timeout: Option<Duration>,
    /// Client connections served at once. [default: 20000]
    #[arg(long, env = "BERTH_INGRESS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Client connections served at once from one address. [default: 1000]
    #[arg(long, env = "BERTH_INGRESS_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
}

impl IngressArgs {
    fn config(self, join_token: Option<String>) -> IngressNodeConfig {
        let defaults = server::IngressConfig::default();
        let ingress = server::IngressConfig {
            trusted_proxies: self.trusted_proxies,
            proxy_protocol: self.proxy_protocol,
            access_log: self.access_log,
            header_read_timeout: self.header_timeout.unwrap_or(defaults.header_read_timeout),
            connect_timeout: self.upstream_connect_timeout.unwrap_or(defaults.connect_timeout),
            response_header_timeout: self.upstream_response_timeout.unwrap_or(defaults.response_header_timeout),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.unwrap_or(defaults.max_connections_per_ip),
            https_port: self.https_listen.map(|a| a.port()),
            ..defaults
        };
        IngressNodeConfig {
            control_planes: self.join,
            join_token,
            name: self.name.unwrap_or_else(machine_name),
            data_dir: self.data_dir,
            ca_file: self.ca_file,
            insecure: self.insecure,
            listen: self.listen,
            https_listen: self.https_listen,
            ingress,
            drain_timeout: self.drain_timeout.unwrap_or(Duration::from_secs(30)),
        }
    }
}

#[derive(Subcommand)]
enum IngressNodesCommand {
    /// Forget an ingress node: its credential stops working (the node stops) and releases no
    /// longer wait for it.
    Remove { name: String },
}

/// This machine's host name, lower-cased.
fn machine_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_lowercase()).unwrap_or_else(|_| "node".into())
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Set a user's password (read from standard input), e.g. the instance admin's after the
    /// bootstrap password was lost. Revokes the user's sessions and sign-in tokens.
    #[command(name = "set-password")]
    SetPassword {
        email: String,
        /// The server's data directory.
        #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
        data_dir: PathBuf,
        /// The server's store, when not the SQLite file in the data directory.
        #[arg(long, env = "BERTH_DATABASE", hide_env_values = true)]
        database: Option<String>,
    },
    /// Copy every row of one store into a new, empty one, e.g. from the embedded SQLite to
    /// PostgreSQL. Stop the server first; start it again with `--database` set to the target.
    /// The data directory (keys, certificates, repositories) stays where it is.
    #[command(name = "migrate-store")]
    MigrateStore {
        /// The store to copy: `sqlite:/path/to/berth.db` or `postgres://...` (prefer the
        /// environment variable for a URL with a password: arguments show in `ps`).
        #[arg(long, env = "BERTH_MIGRATE_FROM", hide_env_values = true)]
        from: String,
        /// The new store (its database must exist and hold no Berth rows).
        #[arg(long, env = "BERTH_MIGRATE_TO", hide_env_values = true)]
        to: String,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Seal every app's secret variables with a new key, then retire the old key.
    #[command(name = "rotate-key")]
    RotateKey,
}

#[derive(Subcommand)]
enum HookCommand {
    #[command(name = "pre-receive")]
    PreReceive,
}

#[derive(Subcommand)]
enum BuildsCommand {
    /// The app's builds, newest first.
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A build's log (default: the newest build).
    Logs {
        name: String,
        number: Option<u32>,
        /// Follow the build until it ends; exit non-zero unless it was released.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel the app's running build.
    Cancel { name: String },
    /// Show or change how the app is built.
    Settings {
        name: String,
        /// The branch whose pushes are built and released.
        #[arg(long)]
        branch: Option<String>,
        /// The Dockerfile's path inside the context.
        #[arg(long)]
        dockerfile: Option<String>,
        /// The build context: a directory of the repository (monorepos).
        #[arg(long)]
        context: Option<String>,
        /// A build argument (repeatable; replaces the list). Never secrets: they stay in the image.
        #[arg(long = "build-arg", value_name = "KEY=VALUE")]
        build_args: Vec<String>,
        /// Build timeout (seconds, or `30m`).
        #[arg(long, value_parser = server::parse_duration)]
        timeout: Option<Duration>,
        /// Where webhook builds fetch commits from (`""` removes it).
        #[arg(long)]
        git_url: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DomainsCommand {
    /// Serve the app at DOMAIN too (point its DNS at the ingress first).
    Add {
        name: String,
        domain: String,
    },
    /// The app's names and the state of their certificates (pending, issued, failed and why).
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    Remove {
        name: String,
        domain: String,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Upload a certificate whose names are all the app's (its own or its domains).
    Add {
        name: String,
        /// The certificate chain, PEM, leaf first.
        #[arg(long)]
        cert: PathBuf,
        /// Its private key, PEM.
        #[arg(long)]
        key: PathBuf,
    },
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    Remove {
        name: String,
        id: String,
    },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Create a webhook; prints the payload URL and the secret to give the provider.
    Add {
        name: String,
        /// github, gitea (also Forgejo) or gitlab.
        #[arg(long)]
        provider: String,
        /// The repository as the provider names it (`owner/name`).
        #[arg(long)]
        repository: String,
    },
    /// The app's webhooks and their latest deliveries.
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    Remove {
        name: String,
        id: String,
    },
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum AppsCommand {
    Create {
        name: String,
        /// The image to run; without it the app is built from git (`berth git-remote`).
        #[arg(long, default_value = "")]
        image: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        #[arg(long)]
        health_path: Option<String>,
        /// How the containers speak HTTP: `http1`, or `h2c` (HTTP/2 without TLS, e.g. gRPC).
        #[arg(long, value_parser = parse_protocol, default_value = "http1")]
        protocol: AppProtocol,
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// A secret variable (repeatable): stored encrypted, never shown again. `KEY` alone takes
        /// the value of `KEY` in this command's environment.
        #[arg(long = "secret", value_name = "KEY[=VALUE]")]
        secret: Vec<String>,
        /// CPU limit in cores (e.g. 0.5).
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// Run only on hosts with this label (repeatable).
        #[arg(long = "constraint", value_name = "KEY=VALUE")]
        constraints: Vec<String>,
        #[command(flatten)]
        privileges: PrivilegeArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    Delete {
        name: String,
    },
}

/// Options that amount to root on the host (instance admins only).
#[derive(Args)]
struct PrivilegeArgs {
    #[arg(long)]
    privileged: bool,
    #[arg(long)]
    host_network: bool,
    /// Mount a host directory: SOURCE:TARGET[:ro] (repeatable).
    #[arg(long = "mount", value_name = "SOURCE:TARGET[:ro]")]
    mounts: Vec<String>,
    /// Add a Linux capability (repeatable).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
}

impl PrivilegeArgs {
    fn parse(self) -> anyhow::Result<berth_wire::Privileges> {
        let mounts = self
            .mounts
            .iter()
            .map(|m| {
                let parts: Vec<&str> = m.split(':').collect();
                match parts[..] {
                    [source, target] => Ok((source, target, false)),
                    [source, target, "ro"] => Ok((source, target, true)),
                    _ => Err(anyhow::anyhow!("--mount {m:?} is not SOURCE:TARGET[:ro]")),
                }
                .map(|(source, target, read_only)| berth_wire::HostMount {
                    source: source.into(),
                    target: target.into(),
                    read_only,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(berth_wire::Privileges {
            privileged: self.privileged,
            host_network: self.host_network,
            mounts,
            cap_add: self.cap_add,
        })
    }
}

#[derive(Args)]
struct WaitArgs {
    /// Return as soon as the release is accepted instead of following it.
    #[arg(long)]
    no_wait: bool,
}

impl WaitArgs {
    fn wait(&self) -> Wait {
        if self.no_wait { Wait::No } else { Wait::UntilDone }
    }
}

/// Every flag is optional: what a flag (or its environment variable) leaves out comes from the
/// `--config` file, else the default shown.
#[derive(Args)]
struct ServerArgs {
    /// A TOML file with any of these settings: keys as the flags with `_` (`deploy_timeout =
    /// "2m"`), `local_agent = false` for `--no-local-agent`, and `[[sign_in]]` tables (`name`,
    /// `issuer` or `github = true`, `client_id`, `client_secret` or `client_secret_file`,
    /// `auto_join = ["DOMAIN:TEAM:ROLE"]`) whose secrets stay off the command line.
    #[arg(long, env = "BERTH_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// [default: ./berth-data]
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The store: `postgres://USER:PASSWORD@HOST/DB` for PostgreSQL (one server per database for
    /// now), or `sqlite:PATH`. [default: sqlite, berth.db in the data directory]
    #[arg(long, env = "BERTH_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Address of the API (and the dashboard). [default: 127.0.0.1:7878]
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address of the ingress that serves the apps. [default: 0.0.0.0:8080]
    #[arg(long, env = "BERTH_INGRESS_LISTEN")]
    ingress_listen: Option<SocketAddr>,
    /// Apps are served at http://<app>.<base-domain>. [default: localhost]
    #[arg(long, env = "BERTH_BASE_DOMAIN")]
    base_domain: Option<String>,
    /// Name of this host. [default: local]
    #[arg(long, env = "BERTH_HOST_NAME")]
    host_name: Option<String>,
    /// Publish container ports on this address instead of reaching containers on Docker's bridge.
    #[arg(long, env = "BERTH_ADVERTISE_ADDR")]
    advertise_addr: Option<IpAddr>,
    /// Time a release has to become ready (seconds, or `2m`). [default: 120]
    #[arg(long, env = "BERTH_DEPLOY_TIMEOUT", value_parser = server::parse_duration)]
    deploy_timeout: Option<Duration>,
    /// Time in-flight requests get to finish on replicas being replaced. [default: 30]
    #[arg(long, env = "BERTH_DRAIN_TIMEOUT", value_parser = server::parse_duration)]
    drain_timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when a replica stops. [default: 10]
    #[arg(long, env = "BERTH_STOP_GRACE", value_parser = server::parse_duration)]
    stop_grace: Option<Duration>,
    /// Silence after which a remote host is declared down and its replicas move. [default: 3]
    #[arg(long, env = "BERTH_HEARTBEAT_TIMEOUT", value_parser = server::parse_duration)]
    heartbeat_timeout: Option<Duration>,
    /// Do not run an agent in the server: every host joins with `berth agent`.
    #[arg(long, env = "BERTH_NO_LOCAL_AGENT")]
    no_local_agent: bool,
    /// Prune the build cache down to this size after a build leaves it larger (`10G`, `512M`).
    /// [default: 10G]
    #[arg(long, env = "BERTH_BUILD_CACHE_MAX", value_parser = server::parse_bytes)]
    build_cache_max: Option<u64>,
    /// CPU limit, in thousandths of a core, of apps created without one; 0: none. [default: 250]
    #[arg(long, env = "BERTH_DEFAULT_CPU_MILLIS")]
    default_cpu_millis: Option<u32>,
    /// Memory limit, in MiB, of apps created without one; 0: none. [default: 512]
    #[arg(long, env = "BERTH_DEFAULT_MEMORY_MB")]
    default_memory_mb: Option<u64>,
    /// URL browsers reach this server at (default: http://<listen>); sign-in callbacks go there.
    #[arg(long, env = "BERTH_PUBLIC_URL")]
    public_url: Option<String>,
    /// A sign-in provider (repeatable; `;`-separated in the environment):
    /// `name=corp,issuer=URL,client-id=ID,client-secret=SECRET[,auto-join=DOMAIN:TEAM:ROLE]`, or
    /// `name=github,github=true,client-id=ID,client-secret=SECRET`. Prefer `[[sign_in]]` in the
    /// `--config` file: arguments are visible to every user of the machine.
    #[arg(long = "sign-in", env = "BERTH_SIGN_IN", value_delimiter = ';', hide_env_values = true)]
    sign_in: Vec<String>,
    /// Directory holding the dashboard's compiled wasm and JS in `pkg/` (default: `site` next to
    /// the `berth` executable, where `cargo xtask dashboard` puts them).
    #[arg(long, env = "BERTH_DASHBOARD_DIR")]
    dashboard_dir: Option<PathBuf>,
    /// Address of the ingress's HTTPS listener (TLS 1.2/1.3, HTTP/2 and HTTP/1.1), e.g. 0.0.0.0:443.
    #[arg(long, env = "BERTH_HTTPS_LISTEN")]
    https_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) served for the base domain, typically `*.<base-domain>`.
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Obtain and renew certificates by ACME (Let's Encrypt unless --acme-directory), with this
    /// contact address: for every custom domain, and every app name under a public base domain.
    #[arg(long, env = "BERTH_ACME_EMAIL")]
    acme_email: Option<String>,
    /// ACME directory URL. [default: Let's Encrypt production]
    #[arg(long, env = "BERTH_ACME_DIRECTORY")]
    acme_directory: Option<String>,
    /// A CA certificate (PEM) to trust for the ACME server's own HTTPS (private or test CAs).
    #[arg(long, env = "BERTH_ACME_CA_FILE")]
    acme_ca_file: Option<PathBuf>,
    /// A CA (PEM) to trust, besides the system's roots, for sign-in providers' HTTPS (a private
    /// identity provider's CA).
    #[arg(long, env = "BERTH_SIGN_IN_CA_FILE")]
    sign_in_ca_file: Option<PathBuf>,
    /// A proxy or load balancer in front of Berth (address or CIDR, repeatable; `,`-separated in
    /// the environment): its X-Forwarded-For names the client (ingress and API) and its
    /// X-Forwarded-Proto/-Host, Forwarded and X-Real-IP reach apps. Everyone else's are replaced.
    #[arg(long = "trusted-proxy", env = "BERTH_TRUSTED_PROXIES", value_delimiter = ',', value_parser = server::parse_cidr)]
    trusted_proxies: Vec<server::IpNet>,
    /// Read a PROXY protocol (v1/v2) header on ingress connections from trusted proxies.
    #[arg(long, env = "BERTH_PROXY_PROTOCOL")]
    proxy_protocol: bool,
    /// Log one line per ingress request (target `berth::access`).
    #[arg(long, env = "BERTH_ACCESS_LOG")]
    access_log: bool,
    /// Staple OCSP responses from responders on private, loopback and link-local addresses too
    /// (a private PKI's); off by default, as uploaded certificates name their own responder.
    #[arg(long, env = "BERTH_OCSP_PRIVATE_RESPONDERS")]
    ocsp_private_responders: bool,
    /// Time a client has to send a request head or finish a TLS handshake. [default: 30]
    #[arg(long, env = "BERTH_INGRESS_HEADER_TIMEOUT", value_parser = server::parse_duration)]
    ingress_header_timeout: Option<Duration>,
    /// A request body that sends nothing for this long is cut off. [default: 60]
    #[arg(long, env = "BERTH_INGRESS_BODY_TIMEOUT", value_parser = server::parse_duration)]
    ingress_body_timeout: Option<Duration>,
    /// A client that takes nothing of what is sent to it for this long is cut off. [default: 75]
    #[arg(long, env = "BERTH_INGRESS_SEND_TIMEOUT", value_parser = server::parse_duration)]
    ingress_send_timeout: Option<Duration>,
    /// Time to open a connection to a replica before trying the next. [default: 2]
    #[arg(long, env = "BERTH_UPSTREAM_CONNECT_TIMEOUT", value_parser = server::parse_duration)]
    upstream_connect_timeout: Option<Duration>,
    /// Time an app has to start answering once the request (body included) is sent. [default: 60]
    #[arg(long, env = "BERTH_UPSTREAM_RESPONSE_TIMEOUT", value_parser = server::parse_duration)]
    upstream_response_timeout: Option<Duration>,
    /// Largest request head; larger get 431. [default: 64K]
    #[arg(long, env = "BERTH_INGRESS_MAX_HEADER_SIZE", value_parser = server::parse_bytes)]
    ingress_max_header_size: Option<u64>,
    /// Largest request body; larger get 413. [default: 1G]
    #[arg(long, env = "BERTH_INGRESS_MAX_BODY_SIZE", value_parser = server::parse_bytes)]
    ingress_max_body_size: Option<u64>,
    /// Client connections the ingress serves at once. [default: 20000]
    #[arg(long, env = "BERTH_INGRESS_MAX_CONNECTIONS")]
    ingress_max_connections: Option<usize>,
    /// Client connections the ingress serves at once from one address. [default: 1000]
    #[arg(long, env = "BERTH_INGRESS_MAX_CONNECTIONS_PER_IP")]
    ingress_max_connections_per_ip: Option<usize>,
    /// Time an API client has to send a request head. [default: 30]
    #[arg(long, env = "BERTH_API_HEADER_TIMEOUT", value_parser = server::parse_duration)]
    api_header_timeout: Option<Duration>,
    /// Connections the API serves at once. [default: 4096]
    #[arg(long, env = "BERTH_API_MAX_CONNECTIONS")]
    api_max_connections: Option<usize>,
    /// A second API listener speaking HTTPS (for agents, the CLI and browsers on other machines),
    /// with --api-tls-cert and --api-tls-key.
    #[arg(long, env = "BERTH_API_TLS_LISTEN")]
    api_tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) of the HTTPS API listener.
    #[arg(long, env = "BERTH_API_TLS_CERT")]
    api_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the HTTPS API listener.
    #[arg(long, env = "BERTH_API_TLS_KEY")]
    api_tls_key: Option<PathBuf>,
}

impl ServerArgs {
    /// The flags as settings, over the `--config` file's.
    fn settings(self) -> anyhow::Result<ServerSettings> {
        let file = match &self.config {
            Some(path) => ServerSettings::from_file(path)?,
            None => ServerSettings::default(),
        };
        let flags = ServerSettings {
            data_dir: self.data_dir,
            database: self.database.map(|url| parse_database("--database", &url)).transpose()?,
            listen: self.listen,
            ingress_listen: self.ingress_listen,
            base_domain: self.base_domain,
            host_name: self.host_name,
            advertise_addr: self.advertise_addr,
            deploy_timeout: self.deploy_timeout,
            drain_timeout: self.drain_timeout,
            stop_grace: self.stop_grace,
            heartbeat_timeout: self.heartbeat_timeout,
            local_agent: self.no_local_agent.then_some(false),
            build_cache_max: self.build_cache_max,
            default_cpu_millis: self.default_cpu_millis,
            default_memory_mb: self.default_memory_mb,
            public_url: self.public_url,
            dashboard_dir: self.dashboard_dir,
            https_listen: self.https_listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            acme_email: self.acme_email,
            acme_directory: self.acme_directory,
            acme_ca_file: self.acme_ca_file,
            sign_in_ca_file: self.sign_in_ca_file,
            trusted_proxies: self.trusted_proxies,
            proxy_protocol: self.proxy_protocol.then_some(true),
            access_log: self.access_log.then_some(true),
            ocsp_private_responders: self.ocsp_private_responders.then_some(true),
            ingress_header_timeout: self.ingress_header_timeout,
            ingress_body_timeout: self.ingress_body_timeout,
            ingress_send_timeout: self.ingress_send_timeout,
            upstream_connect_timeout: self.upstream_connect_timeout,
            upstream_response_timeout: self.upstream_response_timeout,
            ingress_max_header_size: self.ingress_max_header_size,
            ingress_max_body_size: self.ingress_max_body_size,
            ingress_max_connections: self.ingress_max_connections,
            ingress_max_connections_per_ip: self.ingress_max_connections_per_ip,
            api_header_timeout: self.api_header_timeout,
            api_max_connections: self.api_max_connections,
            api_tls_listen: self.api_tls_listen,
            api_tls_cert: self.api_tls_cert,
            api_tls_key: self.api_tls_key,
            sign_in: self.sign_in.iter().map(|spec| Provider::parse(spec)).collect::<anyhow::Result<_>>()?,
        };
        Ok(flags.over(file))
    }
}

/// A database URL, parsed after clap (whose own errors would repeat a password in the value).
fn parse_database(flag: &str, text: &str) -> anyhow::Result<server::Database> {
    text.parse().map_err(|error| anyhow::anyhow!("{flag}: {error}"))
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{text:?}: use on or off")),
    }
}

fn parse_protocol(text: &str) -> Result<AppProtocol, String> {
    text.parse().map_err(|_| format!("{text:?} is not a protocol: use http1 or h2c"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("BUG: a tokio runtime can be built");
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `BERTH_LOG` (default: info, quiet HTTP and SQL internals).
fn init_logging() {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        // stderr, as documented (stdout carries the banner scripts read), and colours only on a
        // terminal: a log file gets plain `key=value` fields.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn,sqlx=warn")),
        )
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    if let Command::Server(args) = cli.command {
        init_logging();
        let config = args.settings()?.resolve()?;
        server::run(config).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Command::Agent(args) = cli.command {
        init_logging();
        let name = args.name.unwrap_or_else(machine_name);
        let config = AgentDaemonConfig {
            control_plane: args.join,
            join_token: cli.token,
            name,
            advertise_addr: args.advertise_addr,
            labels: cli::env_flags(&args.labels)?,
            data_dir: args.data_dir,
            ca_file: args.ca_file,
            insecure: args.insecure,
        };
        agent_daemon::run(config).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Command::Ingress(args) = cli.command {
        init_logging();
        edge::run(args.config(cli.token)).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Command::Admin(AdminCommand::SetPassword { email, data_dir, database }) = &cli.command {
        let password = cli::read_password()?;
        let database = match database {
            Some(url) => parse_database("--database", url)?,
            None => server::Database::in_data_dir(data_dir),
        };
        server::set_password(&database, email, &password).await?;
        println!("berth: the password of {email} is set; its sessions and sign-in tokens are revoked");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Command::Admin(AdminCommand::MigrateStore { from, to }) = &cli.command {
        let (from, to) = (parse_database("--from", from)?, parse_database("--to", to)?);
        let report = server::migrate_store(&from, &to).await?;
        for (table, rows) in &report.tables {
            println!("{table:<22} {rows:>9} rows");
        }
        println!("berth: copied {} into {}", from.redacted(), to.redacted());
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Command::Hook(HookCommand::PreReceive) = &cli.command {
        return Ok(cli::hook::pre_receive());
    }
    if let Command::GitCredential { action } = &cli.command {
        return cli::git_credential(&cli.url, cli.token.clone(), action);
    }
    match &cli.command {
        Command::Login { email } => return cli::login(&cli.url, email, &cli::read_password()?).await,
        Command::Health => return cli::health(&cli.url).await,
        Command::Invites(InvitesCommand::Accept { token, email, name }) => {
            return cli::accept_invite(&cli.url, token, email, name.clone(), &cli::read_password()?).await;
        }
        _ => {}
    }
    let client = Client::new(&cli.url, cli.token, &cli.team)?;
    match cli.command {
        Command::Server(_)
        | Command::Agent(_)
        | Command::Ingress(_)
        | Command::Admin(_)
        | Command::Login { .. }
        | Command::Health
        | Command::Hook(_)
        | Command::GitCredential { .. }
        | Command::Invites(InvitesCommand::Accept { .. }) => {
            unreachable!("handled above")
        }
        Command::Whoami { json } => client.me(json).await,
        Command::Teams(TeamsCommand::List { json }) => client.list_teams(json).await,
        Command::Teams(TeamsCommand::Create { name }) => client.create_team(&name).await,
        Command::Teams(TeamsCommand::Quota { json }) => client.quota(json).await,
        Command::Teams(TeamsCommand::SetQuota { replicas, cpus, memory }) => {
            let cpu_millis = cpus.map(cli::cores_to_millis).transpose()?;
            client.set_quota(berth_wire::api::TeamQuota { replicas, cpu_millis, memory_mb: memory }).await
        }
        Command::Members(MembersCommand::List { json }) => client.members(json).await,
        Command::Members(MembersCommand::Add { email, role }) => client.set_member(&email, &role).await,
        Command::Members(MembersCommand::Role { email, role }) => client.set_member(&email, &role).await,
        Command::Members(MembersCommand::Remove { email }) => client.remove_member(&email).await,
        Command::Invites(InvitesCommand::Create { role, email, ttl }) => client.create_invite(&role, email, ttl).await,
        Command::Tokens(TokensCommand::List { json }) => client.list_tokens(json).await,
        Command::Tokens(TokensCommand::Create { name, for_team, role, expires }) => {
            let request = berth_wire::identity::CreateToken { name, team: for_team, role, expires_in_secs: expires };
            client.create_token(request).await
        }
        Command::Tokens(TokensCommand::Revoke { id }) => client.revoke_token(id).await,
        Command::Users(UsersCommand::Disable { email }) => client.set_user_disabled(&email, true).await,
        Command::Users(UsersCommand::Enable { email }) => client.set_user_disabled(&email, false).await,
        Command::Users(UsersCommand::ResetPassword { email }) => {
            client.reset_password(&email, cli::read_password()?).await
        }
        Command::Audit { all, limit, json } => client.audit(all, limit, json).await,
        Command::Status { json } => client.status(json).await,
        Command::Hosts(HostsCommand::List { json }) => client.list_hosts(json).await,
        Command::Hosts(HostsCommand::Show { name, json }) => client.show_host(&name, json).await,
        Command::Hosts(HostsCommand::Drain { name }) => client.drain_host(&name).await,
        Command::Hosts(HostsCommand::Remove { name }) => client.remove_host(&name).await,
        Command::IngressNodes(IngressNodesCommand::Remove { name }) => client.remove_ingress_node(&name).await,
        Command::JoinTokens(JoinTokensCommand::Create { ttl, uses, kind }) => {
            client.create_join_token(ttl, uses, kind).await
        }
        Command::Apps(AppsCommand::Create {
            name,
            image,
            port,
            replicas,
            health_path,
            protocol,
            env,
            secret,
            cpus,
            memory,
            constraints,
            privileges,
            wait,
        }) => {
            let request = berth_wire::api::CreateApp {
                name,
                image,
                port,
                replicas: Some(replicas),
                env: cli::env_flags(&env)?,
                secrets: cli::secret_flags(&secret)?,
                health_path,
                cpu_millis: cpus.map(cli::cores_to_millis).transpose()?.map(|m| m.min(u32::MAX.into()) as u32),
                memory_mb: memory,
                constraints: cli::env_flags(&constraints)?,
                privileges: privileges.parse()?,
                protocol,
            };
            client.create_app(request, wait.wait()).await
        }
        Command::Apps(AppsCommand::List { json }) => client.list_apps(json).await,
        Command::Apps(AppsCommand::Show { name, json }) => client.show_app(&name, json).await,
        Command::Apps(AppsCommand::Delete { name }) => client.delete_app(&name).await,
        Command::Deploy { name, image, env, secret, unset_env, port, health_path, protocol, wait } => {
            let change = berth_wire::api::Deploy {
                image,
                port,
                env: cli::env_flags(&env)?,
                secrets: cli::secret_flags(&secret)?,
                unset_env,
                health_path,
                protocol,
                ..Default::default()
            };
            client.deploy(&name, change, wait.wait()).await
        }
        Command::Secrets(SecretsCommand::RotateKey) => client.rotate_secret_key().await,
        Command::Scale { name, replicas, wait } => client.scale(&name, replicas, wait.wait()).await,
        Command::Rollback { name, to, wait } => client.rollback(&name, to, wait.wait()).await,
        Command::Logs { name, follow, tail, json } => client.logs(&name, tail, follow, json).await,
        Command::GitRemote { name, remote } => {
            let program = std::env::current_exe()?.display().to_string();
            client.git_remote(&name, &remote, &program).await
        }
        Command::Builds(BuildsCommand::List { name, json }) => client.list_builds(&name, json).await,
        Command::Builds(BuildsCommand::Logs { name, number, follow }) => client.build_logs(&name, number, follow).await,
        Command::Builds(BuildsCommand::Cancel { name }) => client.cancel_build(&name).await,
        Command::Builds(BuildsCommand::Settings {
            name,
            branch,
            dockerfile,
            context,
            build_args,
            timeout,
            git_url,
            json,
        }) => {
            let change = berth_wire::builds::BuildSettingsChange {
                deploy_branch: branch,
                dockerfile,
                context_dir: context,
                build_args: (!build_args.is_empty()).then(|| cli::env_flags(&build_args)).transpose()?,
                timeout_secs: timeout.map(|t| t.as_secs()),
                git_url,
            };
            client.build_settings(&name, change, json).await
        }
        Command::Webhooks(WebhooksCommand::Add { name, provider, repository }) => {
            let provider = provider
                .parse()
                .map_err(|_| anyhow::anyhow!("--provider {provider:?}: use github, gitea or gitlab"))?;
            client.add_webhook(&name, provider, &repository).await
        }
        Command::Webhooks(WebhooksCommand::List { name, json }) => client.list_webhooks(&name, json).await,
        Command::Domains(DomainsCommand::Add { name, domain }) => client.add_domain(&name, &domain).await,
        Command::Domains(DomainsCommand::List { name, json }) => client.list_domains(&name, json).await,
        Command::Domains(DomainsCommand::Remove { name, domain }) => client.remove_domain(&name, &domain).await,
        Command::Certs(CertsCommand::Add { name, cert, key }) => client.add_certificate(&name, &cert, &key).await,
        Command::Certs(CertsCommand::List { name, json }) => client.list_certificates(&name, json).await,
        Command::Certs(CertsCommand::Remove { name, id }) => client.remove_certificate(&name, &id).await,
        Command::Edge { name, https_redirect, hsts, json } => {
            client.edge(&name, berth_wire::edge::EdgeSettings { https_redirect, hsts_max_age: hsts }, json).await
        }
        Command::Webhooks(WebhooksCommand::Remove { name, id }) => client.remove_webhook(&name, &id).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Catches conflicting flags (clap checks them only when a command is first parsed).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
