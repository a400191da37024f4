//! The `berth` subcommands that talk to a server: each calls the API through [`ApiClient`],
//! prints what came back (a table, a message, or with `--json` the server's JSON unchanged) and
//! says how the process should exit.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use berth_wire::api::{
    CreateApp, CreateJoinToken, Deploy, JoinTokenKind, LogLine, ReleaseAccepted, ReleaseState, TeamQuota,
};
use berth_wire::edge::{CertState, DomainInfo, EdgeSettings, UploadCertificate};
use berth_wire::identity::{AcceptInvite, CreateInvite, CreateToken, Login};
use futures::StreamExt as _;

use crate::client::{ApiClient, MAX_LINE_BYTES, Resource, StreamLine};
use crate::credentials;
use crate::output;

/// Whether a command that starts a release returns once the release is accepted or follows it
/// until it is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    UntilDone,
}

/// Parses `KEY=VALUE` flags (`--env`, `--label`, `--constraint`) into a map, naming the bad one.
pub fn env_flags(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .ok_or_else(|| anyhow::anyhow!("{pair:?} is not KEY=VALUE"))
        })
        .collect()
}

/// A number of cores (`0.5`, `4`) in thousandths of a core; `NaN`, infinities, negatives and
/// absurd sizes are refused instead of turning into 0 or a saturated number.
pub fn cores_to_millis(cores: f64) -> anyhow::Result<u64> {
    if !cores.is_finite() || !(0.0..=1_000_000.0).contains(&cores) {
        bail!("{cores} is not a number of cores (e.g. 0.5 or 4)");
    }
    Ok((cores * 1000.0).round() as u64)
}

/// `--secret` flags: `KEY=VALUE`, or `KEY` alone to take the value of `KEY` in this process's
/// environment (so the value stays out of shell history and the process list).
pub fn secret_flags(flags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    secret_flags_from(flags, |key| std::env::var(key).ok())
}

fn secret_flags_from(
    flags: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    flags
        .iter()
        .map(|flag| match flag.split_once('=') {
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => lookup(flag).map(|value| (flag.clone(), value)).ok_or_else(|| {
                anyhow::anyhow!("--secret {flag}: {flag} is not set in the environment (or give {flag}=VALUE)")
            }),
        })
        .collect()
}

/// A password from standard input (first line), for scripts and prompts alike.
pub fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password)
}

/// `berth login`: signs in with email and password and keeps the new token for this URL.
/// `berth git-credential get`: git's credential helper protocol, answering with the token kept
/// for `url` (any user name; the token is the password). Other actions are ignored: the token is
/// Berth's to keep.
pub fn git_credential(url: &str, token: Option<String>, action: &str) -> anyhow::Result<ExitCode> {
    use std::io::BufRead as _;
    // git writes the request's attributes; read them all (it waits for us to).
    let mut attributes = BTreeMap::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if let Some((key, value)) = line.split_once('=') {
            attributes.insert(key.to_string(), value.to_string());
        }
    }
    if action != "get" {
        return Ok(ExitCode::SUCCESS);
    }
    let token = credentials::find_token(url.trim_end_matches('/'), token)?;
    println!("username=berth");
    println!("password={token}");
    Ok(ExitCode::SUCCESS)
}

/// `berth health`: exits 0 when the server at `url` answers its health check (for container
/// health checks: the image has no shell or curl).
pub async fn health(url: &str) -> anyhow::Result<ExitCode> {
    ApiClient::health(url).await?;
    println!("ok");
    Ok(ExitCode::SUCCESS)
}

pub async fn login(url: &str, email: &str, password: &str) -> anyhow::Result<ExitCode> {
    let url = url.trim_end_matches('/');
    let host = std::fs::read_to_string("/etc/hostname").map(|name| name.trim().to_string()).unwrap_or_default();
    let request =
        Login { email: email.into(), password: password.into(), token_name: Some(format!("berth login on {host}")) };
    let signed_in = ApiClient::login(url, &request).await?;
    let path = credentials::keep_token(url, signed_in.token)?;
    println!("signed in to {url} as {}; token kept in {}", signed_in.user.email, path.display());
    Ok(ExitCode::SUCCESS)
}

/// `berth invites accept`: joins the team of an invitation (creating the account if needed).
pub async fn accept_invite(
    url: &str,
    token: &str,
    email: &str,
    name: Option<String>,
    password: &str,
) -> anyhow::Result<ExitCode> {
    let url = url.trim_end_matches('/');
    let request = AcceptInvite { email: email.into(), name, password: password.into() };
    let joined = ApiClient::accept_invite(url, token, &request).await?;
    let teams: Vec<String> = joined.user.teams.iter().map(|team| format!("{} ({})", team.team, team.role)).collect();
    println!(
        "{} joined: {}; sign in with `berth login --email {}`",
        joined.user.email,
        teams.join(", "),
        joined.user.email
    );
    Ok(ExitCode::SUCCESS)
}

/// The CLI's client: one method per `berth` subcommand that needs a token.
pub struct Client {
    api: ApiClient,
}

impl Client {
    /// A client with the first token found: `token` (flag or `BERTH_TOKEN`), the one `berth login`
    /// stored for this URL, or the server's admin token when run next to its data directory.
    pub fn new(url: &str, token: Option<String>, team: &str) -> anyhow::Result<Client> {
        let url = url.trim_end_matches('/');
        let token = credentials::find_token(url, token)?;
        let shown_url = url.to_string();
        // On standard error, so `--json` output stays parseable; a wait of up to the retry
        // budget would otherwise look like a hang.
        let api = ApiClient::new(url, token, team)?.on_retry(move |error, pause| {
            eprintln!(
                "warning: cannot reach Berth at {shown_url} ({}); retrying in {:.1}s",
                output::root_cause(error),
                pause.as_secs_f64()
            );
        });
        Ok(Client { api })
    }

    /// Prints `resource` as the server's JSON, unchanged.
    async fn print_json(&self, resource: Resource<'_>) -> anyhow::Result<ExitCode> {
        println!("{}", self.api.fetch_json(resource).await?);
        Ok(ExitCode::SUCCESS)
    }

    pub async fn create_app(&self, request: CreateApp, wait: Wait) -> anyhow::Result<ExitCode> {
        let accepted = self.api.create_app(&request).await?;
        if accepted.release == 0 {
            println!(
                "created {}: built from git; add its remote with `berth git-remote {}`, then push",
                accepted.app, accepted.app
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!("created {} (release {})", accepted.app, accepted.release);
        self.follow(&accepted, wait).await
    }

    pub async fn deploy(&self, name: &str, change: Deploy, wait: Wait) -> anyhow::Result<ExitCode> {
        let accepted = self.api.deploy(name, &change).await?;
        println!("release {} of {name} accepted", accepted.release);
        self.follow(&accepted, wait).await
    }

    pub async fn scale(&self, name: &str, replicas: u32, wait: Wait) -> anyhow::Result<ExitCode> {
        let accepted = self.api.scale(name, replicas).await?;
        println!("release {} of {name} scales to {replicas} replica(s)", accepted.release);
        self.follow(&accepted, wait).await
    }

    pub async fn rollback(&self, name: &str, to: Option<u32>, wait: Wait) -> anyhow::Result<ExitCode> {
        let accepted = self.api.rollback(name, to).await?;
        println!("release {} of {name} rolls back", accepted.release);
        self.follow(&accepted, wait).await
    }

    /// Prints the release's progress until it finishes; exits with failure when the release
    /// failed.
    async fn follow(&self, accepted: &ReleaseAccepted, wait: Wait) -> anyhow::Result<ExitCode> {
        if wait == Wait::No {
            return Ok(ExitCode::SUCCESS);
        }
        let release = self
            .api
            .follow_release(&accepted.app, accepted.release, |event| println!("{}", output::release_event(event)))
            .await?;
        // `follow_release` returns finished releases only: failed, or serving (or already
        // superseded by a later one).
        if release.state == ReleaseState::Failed {
            eprintln!(
                "error: release {} failed: {}",
                release.number,
                release.message.unwrap_or_else(|| "no reason recorded".into())
            );
            return Ok(ExitCode::FAILURE);
        }
        println!("release {} is live at {}", release.number, accepted.url);
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_apps(&self, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Apps).await;
        }
        let apps = self.api.list_apps().await?;
        if apps.is_empty() {
            println!("no apps in team {} yet; create one with `berth apps create`", self.api.team());
        } else {
            println!("{}", output::apps_table(&apps));
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn show_app(&self, name: &str, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::App(name)).await;
        }
        println!("{}", output::app_detail(&self.api.app(name).await?));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn delete_app(&self, name: &str) -> anyhow::Result<ExitCode> {
        self.api.delete_app(name).await?;
        println!("deleted {name}: its routes, containers and records are gone");
        Ok(ExitCode::SUCCESS)
    }

    /// Prints the app's log lines as they arrive: as the server's JSON with `json`, else as
    /// `replica rRELEASE | line`.
    pub async fn logs(&self, name: &str, tail: u32, follow: bool, json: bool) -> anyhow::Result<ExitCode> {
        let mut lines = std::pin::pin!(self.api.logs(name, tail, follow).await?);
        while let Some(line) = lines.next().await {
            match line? {
                StreamLine::Text(text) if json => println!("{text}"),
                StreamLine::Text(text) => {
                    // Lines of a newer server this CLI cannot read are left out rather than
                    // ending the log.
                    if let Ok(log) = serde_json::from_str::<LogLine>(&text) {
                        println!("{}", output::log_line(&log));
                    }
                }
                StreamLine::TooLong => {
                    eprintln!("warning: skipped a log line longer than {} MiB", MAX_LINE_BYTES >> 20);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Adds (or points) the git remote `remote` at the app's repository and makes git ask
    /// `berth git-credential` for the password, which answers with this client's token, kept in
    /// Berth's credential file for the URL (never in the remote's URL or git's config).
    pub async fn git_remote(&self, name: &str, remote: &str, program: &str) -> anyhow::Result<ExitCode> {
        let info = self.api.git_info(name).await?;
        let base = self.api.base_url().trim_end_matches('/').to_string();
        let url = format!("{base}/git/{}/{name}.git", self.api.team());
        let token = self.api.token().context("no API token to store for git")?.to_string();
        credentials::keep_token(&base, token)?;
        let git = |args: &[&str]| -> anyhow::Result<std::process::Output> {
            std::process::Command::new("git").args(args).output().context("running git (is it installed?)")
        };
        let exists = git(&["remote", "get-url", remote])?.status.success();
        let set =
            if exists { git(&["remote", "set-url", remote, &url])? } else { git(&["remote", "add", remote, &url])? };
        if !set.status.success() {
            bail!("git remote: {}", String::from_utf8_lossy(&set.stderr).trim());
        }
        let helper_key = format!("credential.{base}.helper");
        let helper = format!("!'{program}' --url '{base}' git-credential");
        // An empty helper first clears helpers configured elsewhere for this URL.
        for (value, add) in [("", false), (helper.as_str(), true)] {
            let mut args = vec!["config"];
            if add {
                args.push("--add");
            } else {
                args.push("--replace-all");
            }
            args.extend([helper_key.as_str(), value]);
            let done = git(&args)?;
            if !done.status.success() {
                bail!("git config: {}", String::from_utf8_lossy(&done.stderr).trim());
            }
        }
        println!("git remote {remote} -> {url}");
        println!("deploy branch: {} (git push {remote} {})", info.settings.deploy_branch, info.settings.deploy_branch);
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_builds(&self, name: &str, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Builds(name)).await;
        }
        let builds = self.api.builds(name).await?;
        if builds.is_empty() {
            println!("{name} has no builds yet: push to its git remote (berth git-remote {name})");
        } else {
            println!("{}", output::builds_table(&builds, output::now_ms()));
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Prints a build's log (the newest build's without `number`); with `follow`, until it ends,
    /// then exits with its outcome.
    pub async fn build_logs(&self, name: &str, number: Option<u32>, follow: bool) -> anyhow::Result<ExitCode> {
        let mut lines = std::pin::pin!(self.api.build_log(name, number, follow).await?);
        while let Some(line) = lines.next().await {
            match line? {
                StreamLine::Text(text) => {
                    if let Ok(line) = serde_json::from_str::<berth_wire::builds::BuildLogLine>(&text) {
                        println!("{}", line.line);
                    }
                }
                StreamLine::TooLong => eprintln!("warning: skipped an over-long log line"),
            }
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        let builds = self.api.builds(name).await?;
        let build = match number {
            Some(n) => builds.into_iter().find(|b| b.number == n),
            None => builds.into_iter().next(),
        };
        let ok = build.is_some_and(|b| b.state == berth_wire::builds::BuildState::Succeeded && b.release.is_some());
        Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }

    pub async fn cancel_build(&self, name: &str) -> anyhow::Result<ExitCode> {
        let build = self.api.cancel_build(name).await?;
        println!("build {} of {name}: {}", build.number, build.state.as_str());
        Ok(ExitCode::SUCCESS)
    }

    pub async fn build_settings(
        &self,
        name: &str,
        change: berth_wire::builds::BuildSettingsChange,
        json: bool,
    ) -> anyhow::Result<ExitCode> {
        let unchanged = serde_json::to_value(&change)?.as_object().is_some_and(|o| o.values().all(|v| v.is_null()));
        let info = if unchanged {
            self.api.git_info(name).await?
        } else {
            self.api.update_build_settings(name, &change).await?
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&info)?);
            return Ok(ExitCode::SUCCESS);
        }
        let s = &info.settings;
        println!("remote:        {}", info.remote_url);
        println!("deploy branch: {}", s.deploy_branch);
        println!("deployed:      {}", info.deployed_commit.as_deref().unwrap_or("-"));
        println!("dockerfile:    {}", s.dockerfile);
        println!("context:       {}", if s.context_dir.is_empty() { "." } else { &s.context_dir });
        println!("timeout:       {} s", s.timeout_secs);
        println!("git url:       {}", s.git_url.as_deref().unwrap_or("-"));
        for (key, value) in &s.build_args {
            println!("build arg:     {key}={value}");
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn add_webhook(
        &self,
        name: &str,
        provider: berth_wire::builds::WebhookProvider,
        repository: &str,
    ) -> anyhow::Result<ExitCode> {
        let request = berth_wire::builds::CreateWebhook { provider, repository: repository.to_string() };
        let hook = self.api.create_webhook(name, &request).await?;
        let base = self.api.base_url().trim_end_matches('/');
        println!("webhook {} for {} ({})", hook.id, hook.repository, hook.provider.as_str());
        println!("payload URL: {base}{}", hook.path);
        println!("secret (shown once): {}", hook.secret.unwrap_or_default());
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_webhooks(&self, name: &str, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Webhooks(name)).await;
        }
        for hook in self.api.webhooks(name).await? {
            println!("{}  {}  {}  {}", hook.id, hook.provider.as_str(), hook.repository, hook.path);
        }
        let now = output::now_ms();
        for delivery in self.api.webhook_deliveries(name).await?.iter().take(20) {
            println!(
                "  {}  {}  {}  {}",
                output::ago(delivery.at, now),
                delivery.verdict,
                delivery.delivery.as_deref().unwrap_or("-"),
                delivery.reason
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn remove_webhook(&self, name: &str, id: &str) -> anyhow::Result<ExitCode> {
        self.api.delete_webhook(name, id).await?;
        println!("webhook {id} removed");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn add_domain(&self, app: &str, domain: &str) -> anyhow::Result<ExitCode> {
        let added = self.api.add_domain(app, domain).await?;
        println!("{} now serves {app}; certificate: {}", added.name, describe_certificate(&added, output::now_ms()));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_domains(&self, app: &str, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Domains(app)).await;
        }
        let now = output::now_ms();
        for domain in self.api.domains(app).await? {
            let kind = if domain.custom { "custom" } else { "app name" };
            println!("{}  ({kind})  {}", domain.name, describe_certificate(&domain, now));
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn remove_domain(&self, app: &str, domain: &str) -> anyhow::Result<ExitCode> {
        self.api.remove_domain(app, domain).await?;
        println!("{domain} no longer serves {app}");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn add_certificate(
        &self,
        app: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> anyhow::Result<ExitCode> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let request = UploadCertificate { chain_pem: read(cert)?, key_pem: read(key)? };
        let added = self.api.upload_certificate(app, &request).await?;
        println!(
            "certificate {} for {} (issued by {}), expires {}",
            added.id,
            added.names.join(", "),
            added.issuer,
            output::date(added.not_after)
        );
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_certificates(&self, app: &str, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Certificates(app)).await;
        }
        for cert in self.api.certificates(app).await? {
            let source: &str = cert.source.into();
            println!(
                "{}  {source}  {}  expires {}  ({})",
                cert.id,
                cert.names.join(", "),
                output::date(cert.not_after),
                cert.issuer
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn remove_certificate(&self, app: &str, id: &str) -> anyhow::Result<ExitCode> {
        self.api.remove_certificate(app, id).await?;
        println!("certificate {id} removed");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn edge(&self, app: &str, change: EdgeSettings, json: bool) -> anyhow::Result<ExitCode> {
        let settings = if change == EdgeSettings::default() {
            self.api.read(Resource::Edge(app)).await?
        } else {
            self.api.update_edge(app, &change).await?
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&settings)?);
        } else {
            let redirect = if settings.https_redirect.unwrap_or(true) { "on" } else { "off" };
            let hsts = settings.hsts_max_age.map_or_else(|| "off".to_string(), |age| format!("max-age={age}"));
            println!("redirect to https: {redirect} (for names with a certificate)\nHSTS: {hsts}");
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn status(&self, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Status).await;
        }
        println!("{}", output::status(&self.api.status().await?));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_hosts(&self, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Hosts).await;
        }
        println!("{}", output::hosts_table(&self.api.list_hosts().await?));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn show_host(&self, name: &str, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Host(name)).await;
        }
        println!("{}", output::host_detail(&self.api.host(name).await?));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn drain_host(&self, name: &str) -> anyhow::Result<ExitCode> {
        println!("draining {name}: replacements start elsewhere, then its replicas drain and stop");
        self.api.drain_host(name).await?;
        println!("{name} is drained");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn rotate_secret_key(&self) -> anyhow::Result<ExitCode> {
        let rotated = self.api.rotate_secret_key().await?;
        let retired = if rotated.retired.is_empty() { "none".to_string() } else { rotated.retired.join(", ") };
        println!(
            "secret key rotated: {} value(s) resealed with key {}; retired: {retired}",
            rotated.resealed, rotated.key_id
        );
        if rotated.unreadable > 0 {
            println!(
                "warning: {} stored value(s) did not open (sealed under a key lost earlier) and were left as they were",
                rotated.unreadable
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn remove_host(&self, name: &str) -> anyhow::Result<ExitCode> {
        self.api.remove_host(name).await?;
        println!("removed {name}; its replicas are placed elsewhere");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn remove_ingress_node(&self, name: &str) -> anyhow::Result<ExitCode> {
        self.api.remove_ingress_node(name).await?;
        println!("removed ingress node {name}; its credential no longer works and releases no longer wait for it");
        Ok(ExitCode::SUCCESS)
    }

    /// Prints the token alone on standard output (for scripts) and how to use it on standard
    /// error.
    pub async fn create_join_token(&self, ttl: u64, uses: u32, kind: JoinTokenKind) -> anyhow::Result<ExitCode> {
        let request = CreateJoinToken { ttl_secs: Some(ttl), uses: Some(uses), kind: Some(kind) };
        let created = self.api.create_join_token(&request).await?;
        println!("{}", created.token);
        if kind == JoinTokenKind::Ingress {
            eprintln!(
                "valid for {ttl}s and {uses} ingress node(s): berth ingress --join {} --token <token>",
                self.api.base_url()
            );
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("valid for {ttl}s and {uses} host(s): berth agent --join {} --token <token>", self.api.base_url());
        Ok(ExitCode::SUCCESS)
    }

    pub async fn me(&self, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Me).await;
        }
        println!("{}", output::me(&self.api.me().await?));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_teams(&self, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Teams).await;
        }
        println!("{}", output::teams_table(&self.api.list_teams().await?));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn create_team(&self, name: &str) -> anyhow::Result<ExitCode> {
        self.api.create_team(name).await?;
        println!("created team {name}; you are its owner");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn quota(&self, json: bool) -> anyhow::Result<ExitCode> {
        let info = self.api.quota().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&info)?);
        } else {
            println!("{}", output::quota_table(&info));
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn set_quota(&self, quota: TeamQuota) -> anyhow::Result<ExitCode> {
        let info = self.api.set_quota(&quota).await?;
        println!("quota of team {} set\n{}", info.team, output::quota_table(&info));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn members(&self, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Members).await;
        }
        println!("{}", output::members_table(&self.api.members().await?));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn set_member(&self, email: &str, role: &str) -> anyhow::Result<ExitCode> {
        self.api.set_member(email, role).await?;
        println!("{email} is {role} in {}", self.api.team());
        Ok(ExitCode::SUCCESS)
    }

    pub async fn remove_member(&self, email: &str) -> anyhow::Result<ExitCode> {
        self.api.remove_member(email).await?;
        println!("{email} left {}", self.api.team());
        Ok(ExitCode::SUCCESS)
    }

    /// Prints the invitation's secret alone on standard output and how to accept it on
    /// standard error.
    pub async fn create_invite(&self, role: &str, email: Option<String>, ttl: Option<u64>) -> anyhow::Result<ExitCode> {
        let invite = self.api.create_invite(&CreateInvite { role: role.into(), email, ttl_secs: ttl }).await?;
        println!("{}", invite.token);
        eprintln!(
            "invitation to {} as {}; accept with: berth invites accept {} --email ADDRESS",
            invite.team, invite.role, invite.token
        );
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_tokens(&self, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self.print_json(Resource::Tokens).await;
        }
        println!("{}", output::tokens_table(&self.api.list_tokens().await?, output::now_ms()));
        Ok(ExitCode::SUCCESS)
    }

    /// Prints the token alone on standard output (it is shown only now).
    pub async fn create_token(&self, request: CreateToken) -> anyhow::Result<ExitCode> {
        let created = self.api.create_token(&request).await?;
        println!("{}", created.token);
        eprintln!("token {} created; it is shown only now", created.id);
        Ok(ExitCode::SUCCESS)
    }

    pub async fn revoke_token(&self, id: i64) -> anyhow::Result<ExitCode> {
        self.api.revoke_token(id).await?;
        println!("token {id} revoked");
        Ok(ExitCode::SUCCESS)
    }

    /// The team's audit log, or with `all` the whole instance's (instance admins).
    pub async fn audit(&self, all: bool, limit: u32, json: bool) -> anyhow::Result<ExitCode> {
        if json {
            return self
                .print_json(if all { Resource::InstanceAudit { limit } } else { Resource::TeamAudit { limit } })
                .await;
        }
        let entries = if all { self.api.instance_audit(limit).await? } else { self.api.team_audit(limit).await? };
        println!("{}", output::audit_table(&entries, output::now_ms()));
        Ok(ExitCode::SUCCESS)
    }

    pub async fn set_user_disabled(&self, email: &str, disabled: bool) -> anyhow::Result<ExitCode> {
        self.api.set_user_disabled(email, disabled).await?;
        println!("{email} {}", if disabled { "disabled" } else { "enabled" });
        Ok(ExitCode::SUCCESS)
    }

    pub async fn reset_password(&self, email: &str, password: String) -> anyhow::Result<ExitCode> {
        self.api.reset_password(email, &password).await?;
        println!("password of {email} reset; their sessions ended");
        Ok(ExitCode::SUCCESS)
    }
}

/// A domain's certificate in a few words: issued (until when), pending, or failed (why, and when
/// it is retried).
fn describe_certificate(domain: &DomainInfo, now: i64) -> String {
    match domain.state {
        CertState::Issued => {
            let source: &str = domain.source.map_or("?", Into::into);
            format!("issued ({source}), expires {}", domain.not_after.map_or_else(|| "?".into(), output::date))
        }
        CertState::Pending => "pending".into(),
        CertState::None => "none (HTTPS off for this name)".into(),
        CertState::Failed => format!(
            "failed: {}; next attempt {}",
            domain.error.as_deref().unwrap_or("unknown reason"),
            domain.next_attempt_at.map_or_else(|| "?".into(), |at| output::until(at, now))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_parse_and_name_the_bad_one() {
        let env = env_flags(&["A=1".into(), "B=x=y".into()]).unwrap();
        assert_eq!(env["B"], "x=y");
        assert!(env_flags(&["NOPE".into()]).unwrap_err().to_string().contains("NOPE"));
    }

    #[test]
    fn cores_are_finite_and_positive() {
        assert_eq!(cores_to_millis(0.5).unwrap(), 500);
        assert_eq!(cores_to_millis(4.0).unwrap(), 4000);
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e12] {
            assert!(cores_to_millis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_secret_flag_without_a_value_takes_it_from_the_environment() {
        let lookup = |key: &str| (key == "API_KEY").then(|| "from-env".to_string());
        let secrets = secret_flags_from(&["API_KEY".into(), "B=x=y".into()], lookup).unwrap();
        assert_eq!(secrets["API_KEY"], "from-env");
        assert_eq!(secrets["B"], "x=y");
        let error = secret_flags_from(&["MISSING".into()], lookup).unwrap_err().to_string();
        assert!(error.contains("MISSING is not set"), "{error}");
    }

    mod properties {
        use super::super::env_flags;
        use proptest::prelude::*;

        proptest! {
            /// `KEY=VALUE` splits at the first `=` (values may hold more), anything without one
            /// is an error naming it; never a panic.
            #[test]
            fn pairs_split_at_the_first_equals_sign(key in "[^=]{0,20}", value in ".{0,40}") {
                let pairs = env_flags(&[format!("{key}={value}")]).expect("a pair");
                prop_assert_eq!(pairs.get(&key), Some(&value));
                let error = env_flags(std::slice::from_ref(&key)).expect_err("no '='").to_string();
                prop_assert!(error.contains("KEY=VALUE"));
            }
        }
    }
}
