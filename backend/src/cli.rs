//! The CLI's side of the API: requests, progress display and tables. Talks only HTTP and the
//! wire types, exactly as a third-party client would.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_wire::ErrorBody;
use berth_wire::api::{
    AppDetail, AppSummary, CreateApp, CreateJoinToken, Deploy, HostInfo, JoinTokenCreated, LogLine, ReleaseAccepted,
    ReleaseInfo, ReleaseState,
};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use berth_wire::identity::{
    AcceptInvite, AddMember, AuditEntry, CreateInvite, CreateTeam, CreateToken, InviteCreated, Login, LoginResponse,
    Me, Member, ResetPassword, TeamRole, TokenCreated, TokenInfo,
};

use crate::server::ADMIN_TOKEN_FILE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    UntilDone,
}

pub fn env_flags(pairs: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    crate::services::parse_env_pairs(pairs).map_err(anyhow::Error::msg)
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    team: String,
}

impl Client {
    /// A client with the first token found: `token` (flag or `BERTH_TOKEN`), the one `berth login`
    /// stored for this URL, or the server's admin token when run next to its data directory.
    pub fn new(url: &str, token: Option<String>, team: &str) -> anyhow::Result<Client> {
        let url = url.trim_end_matches('/');
        let token = match token.or_else(|| stored_login(url)) {
            Some(token) => token,
            None => {
                let data_dir = std::env::var("BERTH_DATA_DIR").unwrap_or_else(|_| "./berth-data".into());
                let path = std::path::Path::new(&data_dir).join(ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|_| {
                    anyhow::anyhow!(
                        "no API token: run `berth login`, pass --token, set BERTH_TOKEN, or run next to the server's {}",
                        path.display()
                    )
                })?
            }
        };
        Ok(Client {
            http: reqwest::Client::builder().build().context("building the HTTP client")?,
            base: url.to_string(),
            token,
            team: team.to_string(),
        })
    }

    fn apps_url(&self, rest: &str) -> String {
        format!("{}/api/v1/teams/{}/apps{rest}", self.base, self.team)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach Berth at {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(error) => match error.field {
                Some(field) => bail!("{} (field: {field})", error.message),
                None => bail!("{}", error.message),
            },
            Err(_) => bail!("the server answered {status}: {text}"),
        }
    }

    async fn get<T: DeserializeOwned>(&self, url: String) -> anyhow::Result<(T, String)> {
        let text = self.send(self.http.get(url)).await?.text().await?;
        let value = serde_json::from_str(&text).context("the server's answer is not what this CLI expects")?;
        Ok((value, text))
    }

    async fn post<B: serde::Serialize>(&self, url: String, body: &B) -> anyhow::Result<ReleaseAccepted> {
        Ok(self.send(self.http.post(url).json(body)).await?.json().await?)
    }

    pub async fn create_app(&self, request: CreateApp, wait: Wait) -> anyhow::Result<ExitCode> {
        let accepted = self.post(self.apps_url(""), &request).await?;
        println!("created {} (release {})", accepted.app, accepted.release);
        self.follow(&accepted, wait).await
    }

    pub async fn deploy(&self, name: &str, change: Deploy, wait: Wait) -> anyhow::Result<ExitCode> {
        let accepted = self.post(self.apps_url(&format!("/{name}/deploy")), &change).await?;
        println!("release {} of {name} accepted", accepted.release);
        self.follow(&accepted, wait).await
    }

    pub async fn scale(&self, name: &str, replicas: u32, wait: Wait) -> anyhow::Result<ExitCode> {
        let body = berth_wire::api::Scale { replicas };
        let accepted = self.post(self.apps_url(&format!("/{name}/scale")), &body).await?;
        println!("release {} of {name} scales to {replicas} replica(s)", accepted.release);
        self.follow(&accepted, wait).await
    }

    pub async fn rollback(&self, name: &str, to: Option<u32>, wait: Wait) -> anyhow::Result<ExitCode> {
        let body = berth_wire::api::Rollback { to };
        let accepted = self.post(self.apps_url(&format!("/{name}/rollback")), &body).await?;
        println!("release {} of {name} rolls back", accepted.release);
        self.follow(&accepted, wait).await
    }

    /// Prints the release's progress until it finishes; fails when the release failed.
    async fn follow(&self, accepted: &ReleaseAccepted, wait: Wait) -> anyhow::Result<ExitCode> {
        if wait == Wait::No {
            return Ok(ExitCode::SUCCESS);
        }
        let url = self.apps_url(&format!("/{}/releases/{}", accepted.app, accepted.release));
        let mut shown = 0;
        loop {
            let (release, _): (ReleaseInfo, _) = self.get(url.clone()).await?;
            for event in release.events.iter().skip(shown) {
                println!("  {:<17} {}", event.phase, event.message);
            }
            shown = release.events.len();
            match release.state {
                ReleaseState::Serving | ReleaseState::Superseded => {
                    println!("release {} is live at {}", release.number, accepted.url);
                    return Ok(ExitCode::SUCCESS);
                }
                ReleaseState::Failed => {
                    eprintln!(
                        "error: release {} failed: {}",
                        release.number,
                        release.message.unwrap_or_else(|| "no reason recorded".into())
                    );
                    return Ok(ExitCode::FAILURE);
                }
                ReleaseState::Queued | ReleaseState::InProgress => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    pub async fn list_apps(&self, json: bool) -> anyhow::Result<ExitCode> {
        let (apps, raw): (Vec<AppSummary>, _) = self.get(self.apps_url("")).await?;
        if json {
            println!("{raw}");
            return Ok(ExitCode::SUCCESS);
        }
        if apps.is_empty() {
            println!("no apps in team {} yet; create one with `berth apps create`", self.team);
            return Ok(ExitCode::SUCCESS);
        }
        println!("{:<24} {:>7} {:>7}  {:<30} URL", "NAME", "RELEASE", "READY", "IMAGE");
        for app in apps {
            let release = app.serving_release.map_or("-".to_string(), |n| n.to_string());
            let ready = format!("{}/{}", app.replicas_ready, app.replicas_desired);
            println!("{:<24} {:>7} {:>7}  {:<30} {}", app.name, release, ready, app.image, app.url);
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn show_app(&self, name: &str, json: bool) -> anyhow::Result<ExitCode> {
        let (app, raw): (AppDetail, _) = self.get(self.apps_url(&format!("/{name}"))).await?;
        if json {
            println!("{raw}");
            return Ok(ExitCode::SUCCESS);
        }
        let s = &app.summary;
        println!("{}  ({})", s.name, s.url);
        println!(
            "serving release {}, {}/{} replicas ready, image {}",
            s.serving_release.map_or("none".into(), |n| n.to_string()),
            s.replicas_ready,
            s.replicas_desired,
            s.image
        );
        println!("\nREPLICAS");
        println!(
            "{:<12} {:>7} {:<8} {:<9} {:>8} {:<14} MESSAGE",
            "ID", "RELEASE", "HOST", "STATE", "RESTARTS", "CONTAINER"
        );
        for r in &app.replicas {
            let container = r.container_id.as_deref().map_or("-", |c| &c[..c.len().min(12)]);
            println!(
                "{:<12} {:>7} {:<8} {:<9} {:>8} {:<14} {}",
                r.id,
                r.release,
                r.host,
                r.phase.as_str(),
                r.restarts,
                container,
                r.message.as_deref().unwrap_or("")
            );
        }
        println!("\nRELEASES");
        println!("{:>7} {:<11} {:<30} MESSAGE", "NUMBER", "STATE", "IMAGE");
        for r in &app.releases {
            let note = match (r.rollback_of, &r.message) {
                (Some(of), _) => format!("rollback to {of}"),
                (None, Some(message)) => message.clone(),
                _ => String::new(),
            };
            println!("{:>7} {:<11} {:<30} {}", r.number, r.state.as_str(), r.spec.image, note);
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn delete_app(&self, name: &str) -> anyhow::Result<ExitCode> {
        self.send(self.http.delete(self.apps_url(&format!("/{name}")))).await?;
        println!("deleted {name}: its routes, containers and records are gone");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn logs(&self, name: &str, tail: u32, follow: bool, json: bool) -> anyhow::Result<ExitCode> {
        let url = self.apps_url(&format!("/{name}/logs?tail={tail}&follow={follow}"));
        let response = self.send(self.http.get(url)).await?;
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(chunk) = body.next().await {
            buffer.extend_from_slice(&chunk.context("the log stream broke")?);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                if json {
                    print!("{}", String::from_utf8_lossy(&line));
                } else if let Ok(log) = serde_json::from_slice::<LogLine>(&line) {
                    println!("{} r{} | {}", log.replica, log.release, log.line);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn api_url(&self, rest: &str) -> String {
        format!("{}/api/v1{rest}", self.base)
    }

    pub async fn list_hosts(&self, json: bool) -> anyhow::Result<ExitCode> {
        let (hosts, raw): (Vec<HostInfo>, _) = self.get(self.api_url("/hosts")).await?;
        if json {
            println!("{raw}");
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<20} {:<9} {:<16} {:>13} {:>17} {:>8}  LABELS",
            "NAME", "STATE", "ADDRESS", "CPU", "MEMORY MiB", "REPLICAS"
        );
        for h in hosts {
            let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{:<20} {:<9} {:<16} {:>13} {:>17} {:>8}  {}",
                h.name,
                h.state.as_str(),
                h.address,
                format!("{}/{}m", h.allocated.cpu_millis, h.capacity.cpu_millis),
                format!("{}/{}", h.allocated.memory_mb, h.capacity.memory_mb),
                h.replicas.len(),
                labels.join(",")
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn show_host(&self, name: &str, json: bool) -> anyhow::Result<ExitCode> {
        let (host, raw): (HostInfo, _) = self.get(self.api_url(&format!("/hosts/{name}"))).await?;
        if json {
            println!("{raw}");
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{} ({}, {}{})",
            host.name,
            host.state.as_str(),
            host.address,
            if host.local { ", in the server" } else { "" }
        );
        println!(
            "CPU {}m of {}m requested, memory {} of {} MiB",
            host.allocated.cpu_millis, host.capacity.cpu_millis, host.allocated.memory_mb, host.capacity.memory_mb
        );
        println!("\n{:<12} {:<24} {:>7} STATE", "REPLICA", "APP", "RELEASE");
        for r in host.replicas {
            println!("{:<12} {:<24} {:>7} {}", r.replica, format!("{}/{}", r.team, r.app), r.release, r.phase.as_str());
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn drain_host(&self, name: &str) -> anyhow::Result<ExitCode> {
        println!("draining {name}: replacements start elsewhere, then its replicas drain and stop");
        self.send(self.http.post(self.api_url(&format!("/hosts/{name}/drain")))).await?;
        println!("{name} is drained");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn remove_host(&self, name: &str) -> anyhow::Result<ExitCode> {
        self.send(self.http.delete(self.api_url(&format!("/hosts/{name}")))).await?;
        println!("removed {name}; its replicas are placed elsewhere");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn create_join_token(&self, ttl: u64, uses: u32) -> anyhow::Result<ExitCode> {
        let body = CreateJoinToken { ttl_secs: Some(ttl), uses: Some(uses) };
        let created: JoinTokenCreated =
            self.send(self.http.post(self.api_url("/join-tokens")).json(&body)).await?.json().await?;
        println!("{}", created.token);
        eprintln!("valid for {ttl}s and {uses} host(s): berth agent --join {} --token <token>", self.base);
        Ok(ExitCode::SUCCESS)
    }

    pub async fn me(&self, json: bool) -> anyhow::Result<ExitCode> {
        let (me, raw): (Me, _) = self.get(self.api_url("/me")).await?;
        if json {
            println!("{raw}");
        } else {
            println!("{} <{}>{}", me.name, me.email, if me.instance_admin { " (instance admin)" } else { "" });
            for t in me.teams {
                println!("  {:<24} {}", t.team, t.role);
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_teams(&self, json: bool) -> anyhow::Result<ExitCode> {
        let (teams, raw): (Vec<TeamRole>, _) = self.get(self.api_url("/teams")).await?;
        if json {
            println!("{raw}");
        } else {
            println!("{:<24} ROLE", "TEAM");
            for t in teams {
                println!("{:<24} {}", t.team, t.role);
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn create_team(&self, name: &str) -> anyhow::Result<ExitCode> {
        self.send(self.http.post(self.api_url("/teams")).json(&CreateTeam { name: name.into() })).await?;
        println!("created team {name}; you are its owner");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn members(&self, json: bool) -> anyhow::Result<ExitCode> {
        let (members, raw): (Vec<Member>, _) = self.get(self.api_url(&format!("/teams/{}/members", self.team))).await?;
        if json {
            println!("{raw}");
        } else {
            println!("{:<32} {:<20} ROLE", "EMAIL", "NAME");
            for m in members {
                println!("{:<32} {:<20} {}", m.email, m.name, m.role);
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn set_member(&self, email: &str, role: &str) -> anyhow::Result<ExitCode> {
        let body = AddMember { email: email.into(), role: role.into() };
        self.send(self.http.put(self.api_url(&format!("/teams/{}/members", self.team))).json(&body)).await?;
        println!("{email} is {role} in {}", self.team);
        Ok(ExitCode::SUCCESS)
    }

    pub async fn remove_member(&self, email: &str) -> anyhow::Result<ExitCode> {
        self.send(self.http.delete(self.api_url(&format!("/teams/{}/members/{email}", self.team)))).await?;
        println!("{email} left {}", self.team);
        Ok(ExitCode::SUCCESS)
    }

    pub async fn create_invite(&self, role: &str, email: Option<String>, ttl: Option<u64>) -> anyhow::Result<ExitCode> {
        let body = CreateInvite { role: role.into(), email, ttl_secs: ttl };
        let url = self.api_url(&format!("/teams/{}/invites", self.team));
        let invite: InviteCreated = self.send(self.http.post(url).json(&body)).await?.json().await?;
        println!("{}", invite.token);
        eprintln!(
            "invitation to {} as {}; accept with: berth invites accept {} --email ADDRESS",
            invite.team, invite.role, invite.token
        );
        Ok(ExitCode::SUCCESS)
    }

    pub async fn list_tokens(&self, json: bool) -> anyhow::Result<ExitCode> {
        let (tokens, raw): (Vec<TokenInfo>, _) = self.get(self.api_url("/tokens")).await?;
        if json {
            println!("{raw}");
            return Ok(ExitCode::SUCCESS);
        }
        println!("{:>5} {:<20} {:<9} {:<14} {:<9} {:<8} LAST USED", "ID", "NAME", "KIND", "TEAM", "ROLE", "STATE");
        for t in tokens {
            let state = if t.revoked {
                "revoked"
            } else if t.expires_at.is_some_and(|at| at <= crate::store::now_ms()) {
                "expired"
            } else {
                "active"
            };
            println!(
                "{:>5} {:<20} {:<9} {:<14} {:<9} {:<8} {}",
                t.id,
                t.name,
                t.kind,
                t.team.as_deref().unwrap_or("-"),
                t.role.as_deref().unwrap_or("-"),
                state,
                t.last_used_at.map_or("never".to_string(), ago)
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn create_token(&self, request: CreateToken) -> anyhow::Result<ExitCode> {
        let created: TokenCreated =
            self.send(self.http.post(self.api_url("/tokens")).json(&request)).await?.json().await?;
        println!("{}", created.token);
        eprintln!("token {} created; it is shown only now", created.id);
        Ok(ExitCode::SUCCESS)
    }

    pub async fn revoke_token(&self, id: i64) -> anyhow::Result<ExitCode> {
        self.send(self.http.delete(self.api_url(&format!("/tokens/{id}")))).await?;
        println!("token {id} revoked");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn audit(&self, all: bool, limit: u32, json: bool) -> anyhow::Result<ExitCode> {
        let path =
            if all { format!("/audit?limit={limit}") } else { format!("/teams/{}/audit?limit={limit}", self.team) };
        let (entries, raw): (Vec<AuditEntry>, _) = self.get(self.api_url(&path)).await?;
        if json {
            println!("{raw}");
            return Ok(ExitCode::SUCCESS);
        }
        println!("{:<10} {:<36} {:<18} {:<22} {:<8} ADDRESS", "WHEN", "WHO", "ACTION", "WHAT", "OUTCOME");
        for e in entries {
            let what = [e.team.as_deref(), e.app.as_deref(), e.target.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("/");
            println!(
                "{:<10} {:<36} {:<18} {:<22} {:<8} {}",
                ago(e.at),
                e.actor,
                e.action,
                what,
                e.outcome,
                e.address.as_deref().unwrap_or("-")
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub async fn set_user_disabled(&self, email: &str, disabled: bool) -> anyhow::Result<ExitCode> {
        let verb = if disabled { "disable" } else { "enable" };
        self.send(self.http.post(self.api_url(&format!("/users/{email}/{verb}")))).await?;
        println!("{email} {verb}d");
        Ok(ExitCode::SUCCESS)
    }

    pub async fn reset_password(&self, email: &str, password: String) -> anyhow::Result<ExitCode> {
        let url = self.api_url(&format!("/users/{email}/password"));
        self.send(self.http.post(url).json(&ResetPassword { password })).await?;
        println!("password of {email} reset; their sessions ended");
        Ok(ExitCode::SUCCESS)
    }
}

/// "3m ago" for a Unix-millisecond time.
fn ago(at: i64) -> String {
    let secs = (crate::store::now_ms() - at).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// Where `berth login` keeps tokens: `$BERTH_CONFIG`, else `$XDG_CONFIG_HOME/berth/config.json`,
/// else `~/.config/berth/config.json`.
pub fn config_path() -> Option<std::path::PathBuf> {
    if let Ok(path) = std::env::var("BERTH_CONFIG") {
        return Some(path.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".config")))?;
    Some(base.join("berth/config.json"))
}

/// Tokens by server URL.
type LoginStore = std::collections::BTreeMap<String, String>;

fn stored_login(url: &str) -> Option<String> {
    let text = std::fs::read_to_string(config_path()?).ok()?;
    serde_json::from_str::<LoginStore>(&text).ok()?.get(url).cloned()
}

/// `berth login`: signs in with email and password and keeps the new token for this URL.
pub async fn login(url: &str, email: &str, password: &str) -> anyhow::Result<ExitCode> {
    let url = url.trim_end_matches('/');
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let request =
        Login { email: email.into(), password: password.into(), token_name: Some(format!("berth login on {host}")) };
    let signed_in: LoginResponse = post_unauthenticated(url, "/api/v1/login", &request).await?;
    let path = config_path().context("no config directory: set BERTH_CONFIG or HOME")?;
    let mut logins: LoginStore =
        std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    logins.insert(url.to_string(), signed_in.token);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::server::write_private(&path, &serde_json::to_string_pretty(&logins)?)
        .with_context(|| format!("writing {}", path.display()))?;
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
    let body = AcceptInvite { email: email.into(), name, password: password.into() };
    let joined: LoginResponse = post_unauthenticated(url, &format!("/api/v1/invites/{token}/accept"), &body).await?;
    let teams: Vec<String> = joined.user.teams.iter().map(|t| format!("{} ({})", t.team, t.role)).collect();
    println!(
        "{} joined: {}; sign in with `berth login --email {}`",
        joined.user.email,
        teams.join(", "),
        joined.user.email
    );
    Ok(ExitCode::SUCCESS)
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

/// `POST base + path` without credentials (sign-in, invitations, joining a host); an error answer
/// becomes its message.
pub async fn post_unauthenticated<B: serde::Serialize, R: DeserializeOwned>(
    base: &str,
    path: &str,
    body: &B,
) -> anyhow::Result<R> {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .with_context(|| format!("cannot reach Berth at {base}"))?;
    if !response.status().is_success() {
        let status = response.status();
        let error: ErrorBody = response.json().await.with_context(|| format!("the server answered {status}"))?;
        bail!("{}", error.message);
    }
    Ok(response.json().await?)
}
