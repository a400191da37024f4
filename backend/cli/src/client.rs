//! A typed client of Berth's REST API (`/api/v1`): one method per endpoint the CLI uses, taking
//! and returning the `berth-wire` types. It prints nothing, so tests and tooling can drive Berth
//! exactly as the CLI does. Reads that cannot reach the server are retried, so a control-plane
//! restart is ridden out; requests that change something are sent once.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable as _};
use berth_wire::ErrorBody;
use berth_wire::api::{
    AppDetail, AppSummary, CreateApp, CreateJoinToken, Deploy, HostInfo, JoinTokenCreated, QuotaInfo, ReleaseAccepted,
    ReleaseEvent, ReleaseInfo, Rollback, Scale, SecretKeyRotated, TeamQuota,
};
use berth_wire::builds::{BuildInfo, BuildSettingsChange, CreateWebhook, GitInfo, WebhookDelivery, WebhookInfo};
use berth_wire::edge::{AddDomain, CertificateInfo, DomainInfo, EdgeSettings, UploadCertificate};
use berth_wire::identity::{
    AcceptInvite, AddMember, AuditEntry, CreateInvite, CreateTeam, CreateToken, InviteCreated, Login, LoginResponse,
    Me, Member, ResetPassword, TeamRole, TokenCreated, TokenInfo,
};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

/// How long, in total, following a release (or a log stream being opened with `follow`) keeps
/// retrying a server it cannot reach before it fails: long enough for a control plane to restart
/// under a running `berth deploy`.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// How long a one-shot read retries: a blip, not an outage, so that a command against a server
/// that is down still fails promptly.
const ONE_SHOT_RETRY_BUDGET: Duration = Duration::from_secs(2);

/// Longest line read from a log stream. The server relays container log lines of up to 1 MiB;
/// as JSON with escapes they can grow, hence the margin. A longer line is skipped (see
/// [`StreamLine::TooLong`]) rather than buffered without bound.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// First pause before retrying a read; the pauses then double, up to [`RETRY_MAX_DELAY`].
const RETRY_MIN_DELAY: Duration = Duration::from_millis(250);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(4);
/// How long [`ApiClient::follow_release`] waits for anything on a release's stream (the server
/// sends a keep-alive every 15 s) before it gives the stream up as dead.
const STREAM_SILENCE: Duration = Duration::from_secs(45);
/// The pause before [`ApiClient::follow_release`] opens a release's stream again (or, polling a
/// server without release streams, reads the release again).
const RELEASE_REOPEN: Duration = Duration::from_millis(250);
/// A server that accepts no connection within this time counts as unreachable (and a read is
/// retried); without it, a dropped SYN would hang the CLI for minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Called before each retry of a read that could not reach the server, with the failure and the
/// pause before the next attempt (the CLI prints it, so a wait does not look like a hang).
type RetryNotice = Arc<dyn Fn(&reqwest::Error, Duration) + Send + Sync>;

/// A client of one Berth server, acting with one bearer token in one team (the team of the
/// team-scoped endpoints: apps, members, invitations, the team's audit log).
///
/// Every method returns the server's error answer as an [`ApiError`] inside the
/// `anyhow::Error` (downcast to inspect its status and code); a server that cannot be reached
/// is a `reqwest::Error` with the context "cannot reach Berth at …".
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// The base URL as given, without a trailing slash, for messages.
    base: String,
    base_url: Url,
    /// `None` for the public endpoints (sign-in, accepting an invitation).
    token: Option<String>,
    team: String,
    retry_budget: Duration,
    on_retry: Option<RetryNotice>,
}

/// Redacts the token: a client may end up in a log.
impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("team", &self.team)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retry_budget", &self.retry_budget)
            .finish_non_exhaustive()
    }
}

/// An error answer of the API: its status and the server's [`ErrorBody`], when it sent one (a
/// proxy in front of Berth may answer with anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Option<ErrorBody>,
    /// The answer's text as received.
    pub text: String,
}

impl ApiError {
    fn from_answer(status: StatusCode, text: String) -> ApiError {
        let body = serde_json::from_str::<ErrorBody>(&text).ok();
        ApiError { status, body, text }
    }

    /// The server's machine-readable code (`not_found`, `validation`, …), when it sent one.
    pub fn code(&self) -> Option<&str> {
        self.body.as_ref().map(|body| body.code.as_str())
    }
}

/// The server's message and, for validation errors, the field at fault.
impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.body {
            Some(ErrorBody { message, field: Some(field), .. }) => write!(f, "{message} (field: {field})"),
            Some(ErrorBody { message, field: None, .. }) => write!(f, "{message}"),
            None => write!(f, "the server answered {}: {}", self.status, self.text),
        }
    }
}

impl std::error::Error for ApiError {}

/// A GET endpoint of the API, named by what it returns; [`ApiClient::fetch_json`] fetches any of
/// them as the server's JSON text, and each typed read method fetches one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// The team's apps (`Vec<AppSummary>`).
    Apps,
    /// One app of the team, with its releases and replicas (`AppDetail`).
    App(&'a str),
    /// One release of an app of the team, with its progress events (`ReleaseInfo`).
    Release { app: &'a str, number: u32 },
    /// The control plane's instances (`ControlPlaneStatus`; instance admins).
    Status,
    /// Every host (`Vec<HostInfo>`; instance admins).
    Hosts,
    /// One host (`HostInfo`; instance admins).
    Host(&'a str),
    /// The token's user, teams and roles (`Me`).
    Me,
    /// The teams of the token's user (`Vec<TeamRole>`).
    Teams,
    /// The team's members (`Vec<Member>`).
    Members,
    /// The user's API tokens (`Vec<TokenInfo>`).
    Tokens,
    /// The newest `limit` entries of the team's audit log (`Vec<AuditEntry>`).
    TeamAudit { limit: u32 },
    /// The newest `limit` entries of the whole audit log (`Vec<AuditEntry>`; instance admins).
    InstanceAudit { limit: u32 },
    /// An app's git remote and build settings (`GitInfo`).
    Git(&'a str),
    /// An app's builds, newest first (`Vec<BuildInfo>`).
    Builds(&'a str),
    /// One build (`BuildInfo`).
    Build { app: &'a str, number: u32 },
    /// An app's webhooks (`Vec<WebhookInfo>`).
    Webhooks(&'a str),
    /// What became of the app's webhook deliveries (`Vec<WebhookDelivery>`).
    Deliveries(&'a str),
    /// An app's names and their certificates' state (`Vec<DomainInfo>`).
    Domains(&'a str),
    /// An app's certificates (`Vec<CertificateInfo>`).
    Certificates(&'a str),
    /// An app's edge settings (`EdgeSettings`).
    Edge(&'a str),
}

/// One line of a newline-delimited stream (the NDJSON of `GET …/logs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamLine {
    /// The line without its line ending. The last line counts even without a newline.
    Text(String),
    /// A line longer than [`MAX_LINE_BYTES`], skipped; the stream goes on with the next line.
    TooLong,
}

impl ApiClient {
    /// A client of the server at `base_url` (`http://127.0.0.1:7878`, optionally under a path
    /// prefix), acting with `token` in `team`. Sends nothing yet.
    pub fn new(base_url: &str, token: impl Into<String>, team: impl Into<String>) -> anyhow::Result<ApiClient> {
        ApiClient::build(base_url, Some(token.into()), team.into())
    }

    fn build(base_url: &str, token: Option<String>, team: String) -> anyhow::Result<ApiClient> {
        let base = base_url.trim_end_matches('/').to_string();
        let parsed = Url::parse(&base).with_context(|| format!("{base:?} is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            anyhow::bail!("{base:?} is not an http:// or https:// URL");
        }
        let http =
            reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).build().context("building the HTTP client")?;
        Ok(ApiClient { http, base, base_url: parsed, token, team, retry_budget: DEFAULT_RETRY_BUDGET, on_retry: None })
    }

    /// `POST /api/v1/login`: signs in with email and password; the answer carries a new token
    /// (for [`ApiClient::new`]) and who it belongs to. Sent once, without credentials.
    pub async fn login(base_url: &str, request: &Login) -> anyhow::Result<LoginResponse> {
        let client = ApiClient::build(base_url, None, String::new())?;
        client.send_for_answer(Method::POST, client.url(&["login"]), Some(request)).await
    }

    /// `GET /api/v1/health`: whether the server answers, without credentials (container health
    /// checks). Sent once.
    pub async fn health(base_url: &str) -> anyhow::Result<()> {
        let client = ApiClient::build(base_url, None, String::new())?;
        let _: serde_json::Value = client.send_for_answer::<(), _>(Method::GET, client.url(&["health"]), None).await?;
        Ok(())
    }

    /// `POST /api/v1/invites/{invite_token}/accept`: joins the invitation's team, creating the
    /// account if needed. Sent once, without credentials.
    pub async fn accept_invite(
        base_url: &str,
        invite_token: &str,
        request: &AcceptInvite,
    ) -> anyhow::Result<LoginResponse> {
        let client = ApiClient::build(base_url, None, String::new())?;
        client.send_for_answer(Method::POST, client.url(&["invites", invite_token, "accept"]), Some(request)).await
    }

    /// The same client with a different total retry budget for reads; `Duration::ZERO` turns
    /// retrying off (a read then fails on its first connection failure).
    pub fn with_retry_budget(mut self, budget: Duration) -> ApiClient {
        self.retry_budget = budget;
        self
    }

    /// The same client, calling `notice` before each retry of a read.
    pub fn on_retry(mut self, notice: impl Fn(&reqwest::Error, Duration) + Send + Sync + 'static) -> ApiClient {
        self.on_retry = Some(Arc::new(notice));
        self
    }

    /// The same client (same connection pool and token), acting in `team`.
    pub fn for_team(&self, team: impl Into<String>) -> ApiClient {
        ApiClient { team: team.into(), ..self.clone() }
    }

    /// The server's base URL, as given without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The team the team-scoped methods act in.
    pub fn team(&self) -> &str {
        &self.team
    }

    /// `GET` of `resource`, answered with the server's JSON text unchanged (for `--json`).
    /// Connection failures are retried for a couple of seconds.
    pub async fn fetch_json(&self, resource: Resource<'_>) -> anyhow::Result<String> {
        self.fetch_json_within(resource, ONE_SHOT_RETRY_BUDGET.min(self.retry_budget)).await
    }

    async fn fetch_json_within(&self, resource: Resource<'_>, budget: Duration) -> anyhow::Result<String> {
        let url = self.resource_url(resource);
        let (status, text) = self
            .retrying(budget, || async {
                let response = self.request(Method::GET, url.clone()).send().await?;
                let status = response.status();
                Ok((status, response.text().await?))
            })
            .await
            .with_context(|| format!("cannot reach Berth at {}", self.base))?;
        if !status.is_success() {
            return Err(ApiError::from_answer(status, text).into());
        }
        Ok(text)
    }

    /// `GET` of `resource`, decoded as `T` (the type its [`Resource`] variant names).
    pub(crate) async fn read<T: DeserializeOwned>(&self, resource: Resource<'_>) -> anyhow::Result<T> {
        let text = self.fetch_json(resource).await?;
        serde_json::from_str(&text).context("the server's answer is not what this client expects")
    }

    // Apps of the team.

    /// `GET /api/v1/teams/{team}/apps`.
    pub async fn list_apps(&self) -> anyhow::Result<Vec<AppSummary>> {
        self.read(Resource::Apps).await
    }

    /// `GET /api/v1/teams/{team}/apps/{name}`.
    pub async fn app(&self, name: &str) -> anyhow::Result<AppDetail> {
        self.read(Resource::App(name)).await
    }

    /// `POST /api/v1/teams/{team}/apps`: creates the app; its first release goes out in the
    /// background (see [`ApiClient::follow_release`]).
    pub async fn create_app(&self, request: &CreateApp) -> anyhow::Result<ReleaseAccepted> {
        self.send_for_answer(Method::POST, self.team_url(&["apps"]), Some(request)).await
    }

    /// `POST /api/v1/teams/{team}/apps/{name}/deploy`: a new release with `change` applied.
    pub async fn deploy(&self, name: &str, change: &Deploy) -> anyhow::Result<ReleaseAccepted> {
        self.send_for_answer(Method::POST, self.team_url(&["apps", name, "deploy"]), Some(change)).await
    }

    /// `POST /api/v1/teams/{team}/apps/{name}/scale`: a new release with `replicas` replicas.
    pub async fn scale(&self, name: &str, replicas: u32) -> anyhow::Result<ReleaseAccepted> {
        let body = Scale { replicas };
        self.send_for_answer(Method::POST, self.team_url(&["apps", name, "scale"]), Some(&body)).await
    }

    /// `POST /api/v1/teams/{team}/apps/{name}/rollback`: releases the spec of release `to` again
    /// (default: the release before the serving one).
    pub async fn rollback(&self, name: &str, to: Option<u32>) -> anyhow::Result<ReleaseAccepted> {
        let body = Rollback { to };
        self.send_for_answer(Method::POST, self.team_url(&["apps", name, "rollback"]), Some(&body)).await
    }

    /// `DELETE /api/v1/teams/{team}/apps/{name}`: its routes, containers and records go.
    pub async fn delete_app(&self, name: &str) -> anyhow::Result<()> {
        self.send_without_answer(Method::DELETE, self.team_url(&["apps", name]), None::<&()>).await
    }

    /// `GET /api/v1/teams/{team}/apps/{app}/releases/{number}`.
    pub async fn release(&self, app: &str, number: u32) -> anyhow::Result<ReleaseInfo> {
        self.read(Resource::Release { app, number }).await
    }

    /// Follows release `number` of `app` until it is finished (serving, superseded or failed)
    /// and returns it; `on_event` sees each of its progress events once, in order. The server
    /// pushes the release whenever it changes (`.../releases/{number}/watch`, server-sent
    /// events; a server without them is polled). A stream that breaks or ends early (a control
    /// plane restarting, an error event) is followed by one plain read of the release, whose
    /// answer says what went wrong, and then opened again; both retry connection failures within the retry budget, so following
    /// outlives a control-plane restart shorter than it. A failed release is returned, not an
    /// error: check its `state`.
    pub async fn follow_release(
        &self,
        app: &str,
        number: u32,
        mut on_event: impl FnMut(&ReleaseEvent),
    ) -> anyhow::Result<ReleaseInfo> {
        let url = self.team_url(&["apps", app, "releases", &number.to_string(), "watch"]);
        let mut seen = 0;
        let mut progress = |release: &ReleaseInfo| {
            for event in release.events.iter().skip(seen) {
                on_event(event);
            }
            seen = seen.max(release.events.len());
        };
        // A server from before release streams answers 404: it is polled instead.
        let mut streams = true;
        loop {
            let response = match streams {
                true => self
                    .retrying(self.retry_budget, || {
                        let request = self.request(Method::GET, url.clone());
                        request.header(reqwest::header::ACCEPT, "text/event-stream").send()
                    })
                    .await
                    .map(Some)
                    .with_context(|| format!("cannot reach Berth at {}", self.base))?,
                false => None,
            };
            match response {
                Some(response) if response.status() == StatusCode::NOT_FOUND => streams = false,
                Some(response) => {
                    let response = success_or_api_error(response).await?;
                    let mut events = std::pin::pin!(sse_events(response.bytes_stream().map_err(io::Error::other)));
                    // The server sends a keep-alive every 15 s: a stream silent for longer than
                    // this is held by an instance that is gone without closing it.
                    while let Ok(Some(Ok((event, data)))) = tokio::time::timeout(STREAM_SILENCE, events.next()).await {
                        if event != "release" {
                            break;
                        }
                        let release: ReleaseInfo = serde_json::from_str(&data)
                            .context("the server's answer is not what this client expects")?;
                        progress(&release);
                        if release.state.is_finished() {
                            return Ok(release);
                        }
                    }
                }
                None => {}
            }
            let text = self.fetch_json_within(Resource::Release { app, number }, self.retry_budget).await?;
            let release: ReleaseInfo =
                serde_json::from_str(&text).context("the server's answer is not what this client expects")?;
            progress(&release);
            if release.state.is_finished() {
                return Ok(release);
            }
            tokio::time::sleep(RELEASE_REOPEN).await;
        }
    }

    /// The token this client sends.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `GET .../apps/{app}/git`.
    pub async fn git_info(&self, app: &str) -> anyhow::Result<GitInfo> {
        self.read(Resource::Git(app)).await
    }

    /// `PATCH .../apps/{app}/git`: changes the build settings.
    pub async fn update_build_settings(&self, app: &str, change: &BuildSettingsChange) -> anyhow::Result<GitInfo> {
        self.send_for_answer(Method::PATCH, self.team_url(&["apps", app, "git"]), Some(change)).await
    }

    pub async fn builds(&self, app: &str) -> anyhow::Result<Vec<BuildInfo>> {
        self.read(Resource::Builds(app)).await
    }

    pub async fn build_info(&self, app: &str, number: u32) -> anyhow::Result<BuildInfo> {
        self.read(Resource::Build { app, number }).await
    }

    /// `POST .../apps/{app}/builds/cancel`: returns once the build has ended.
    pub async fn cancel_build(&self, app: &str) -> anyhow::Result<BuildInfo> {
        self.send_for_answer(Method::POST, self.team_url(&["apps", app, "builds", "cancel"]), None::<&()>).await
    }

    /// `GET .../builds/{number}/log` (`None`: the newest build): NDJSON `BuildLogLine`s, live
    /// until the build ends with `follow`.
    pub async fn build_log(
        &self,
        app: &str,
        number: Option<u32>,
        follow: bool,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<StreamLine>> + Send + use<>> {
        let number = number.map_or_else(|| "latest".to_string(), |n| n.to_string());
        let mut url = self.team_url(&["apps", app, "builds", &number, "log"]);
        url.query_pairs_mut().append_pair("follow", &follow.to_string());
        let response = self
            .retrying(ONE_SHOT_RETRY_BUDGET.min(self.retry_budget), || self.request(Method::GET, url.clone()).send())
            .await
            .with_context(|| format!("cannot reach Berth at {}", self.base))?;
        let response = success_or_api_error(response).await?;
        let lines = ndjson_lines(response.bytes_stream().map_err(io::Error::other), MAX_LINE_BYTES);
        Ok(lines.map(|line| line.context("the build log stream broke")))
    }

    pub async fn webhooks(&self, app: &str) -> anyhow::Result<Vec<WebhookInfo>> {
        self.read(Resource::Webhooks(app)).await
    }

    pub async fn create_webhook(&self, app: &str, request: &CreateWebhook) -> anyhow::Result<WebhookInfo> {
        self.send_for_answer(Method::POST, self.team_url(&["apps", app, "webhooks"]), Some(request)).await
    }

    pub async fn delete_webhook(&self, app: &str, id: &str) -> anyhow::Result<()> {
        self.send_without_answer(Method::DELETE, self.team_url(&["apps", app, "webhooks", id]), None::<&()>).await
    }

    pub async fn webhook_deliveries(&self, app: &str) -> anyhow::Result<Vec<WebhookDelivery>> {
        self.read(Resource::Deliveries(app)).await
    }

    pub async fn domains(&self, app: &str) -> anyhow::Result<Vec<DomainInfo>> {
        self.read(Resource::Domains(app)).await
    }

    pub async fn add_domain(&self, app: &str, name: &str) -> anyhow::Result<DomainInfo> {
        let request = AddDomain { name: name.to_string() };
        self.send_for_answer(Method::POST, self.team_url(&["apps", app, "domains"]), Some(&request)).await
    }

    pub async fn remove_domain(&self, app: &str, name: &str) -> anyhow::Result<()> {
        self.send_without_answer(Method::DELETE, self.team_url(&["apps", app, "domains", name]), None::<&()>).await
    }

    pub async fn certificates(&self, app: &str) -> anyhow::Result<Vec<CertificateInfo>> {
        self.read(Resource::Certificates(app)).await
    }

    pub async fn upload_certificate(&self, app: &str, request: &UploadCertificate) -> anyhow::Result<CertificateInfo> {
        self.send_for_answer(Method::POST, self.team_url(&["apps", app, "certificates"]), Some(request)).await
    }

    pub async fn remove_certificate(&self, app: &str, id: &str) -> anyhow::Result<()> {
        self.send_without_answer(Method::DELETE, self.team_url(&["apps", app, "certificates", id]), None::<&()>).await
    }

    pub async fn update_edge(&self, app: &str, change: &EdgeSettings) -> anyhow::Result<EdgeSettings> {
        self.send_for_answer(Method::PATCH, self.team_url(&["apps", app, "edge"]), Some(change)).await
    }

    /// `GET /api/v1/teams/{team}/apps/{app}/logs`: the newest `tail` lines of the app's replicas,
    /// then, with `follow`, new lines as they come. Each [`StreamLine::Text`] is one `LogLine`
    /// as JSON, as the server sent it. Connecting retries like a read; a stream that breaks
    /// later ends with an error (resuming it would repeat lines).
    pub async fn logs(
        &self,
        app: &str,
        tail: u32,
        follow: bool,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<StreamLine>> + Send + use<>> {
        let mut url = self.team_url(&["apps", app, "logs"]);
        url.query_pairs_mut().append_pair("tail", &tail.to_string()).append_pair("follow", &follow.to_string());
        let budget = if follow { self.retry_budget } else { ONE_SHOT_RETRY_BUDGET.min(self.retry_budget) };
        let response = self
            .retrying(budget, || self.request(Method::GET, url.clone()).send())
            .await
            .with_context(|| format!("cannot reach Berth at {}", self.base))?;
        let response = success_or_api_error(response).await?;
        let lines = ndjson_lines(response.bytes_stream().map_err(io::Error::other), MAX_LINE_BYTES);
        Ok(lines.map(|line| line.context("the log stream broke")))
    }

    // Hosts (instance admins).

    /// `GET /api/v1/hosts`.
    /// `GET /api/v1/status`.
    pub async fn status(&self) -> anyhow::Result<berth_wire::api::ControlPlaneStatus> {
        self.read(Resource::Status).await
    }

    pub async fn list_hosts(&self) -> anyhow::Result<Vec<HostInfo>> {
        self.read(Resource::Hosts).await
    }

    /// `GET /api/v1/hosts/{name}`.
    pub async fn host(&self, name: &str) -> anyhow::Result<HostInfo> {
        self.read(Resource::Host(name)).await
    }

    /// `POST /api/v1/hosts/{name}/drain`: answers once every replica moved off the host (which
    /// takes no new ones), with the drained host.
    pub async fn drain_host(&self, name: &str) -> anyhow::Result<HostInfo> {
        self.send_for_answer(Method::POST, self.url(&["hosts", name, "drain"]), None::<&()>).await
    }

    /// `POST /api/v1/secret-key/rotate`: every secret variable resealed with a new key.
    pub async fn rotate_secret_key(&self) -> anyhow::Result<SecretKeyRotated> {
        self.send_for_answer(Method::POST, self.url(&["secret-key", "rotate"]), None::<&()>).await
    }

    /// `DELETE /api/v1/hosts/{name}`: the host's credential stops working; its replicas are
    /// placed elsewhere.
    pub async fn remove_host(&self, name: &str) -> anyhow::Result<()> {
        self.send_without_answer(Method::DELETE, self.url(&["hosts", name]), None::<&()>).await
    }

    /// `DELETE /api/v1/ingress/nodes/{node}`.
    pub async fn remove_ingress_node(&self, name: &str) -> anyhow::Result<()> {
        self.send_without_answer(Method::DELETE, self.url(&["ingress", "nodes", name]), None::<&()>).await
    }

    /// `POST /api/v1/join-tokens`: a token new hosts join with (`berth agent --token`).
    pub async fn create_join_token(&self, request: &CreateJoinToken) -> anyhow::Result<JoinTokenCreated> {
        self.send_for_answer(Method::POST, self.url(&["join-tokens"]), Some(request)).await
    }

    // Identity: the token's user, teams, members, invitations, tokens, accounts, audit.

    /// `GET /api/v1/me`.
    pub async fn me(&self) -> anyhow::Result<Me> {
        self.read(Resource::Me).await
    }

    /// `GET /api/v1/teams`: the teams of the token's user and its role in each.
    pub async fn list_teams(&self) -> anyhow::Result<Vec<TeamRole>> {
        self.read(Resource::Teams).await
    }

    /// `POST /api/v1/teams`: a new team, owned by the token's user.
    pub async fn create_team(&self, name: &str) -> anyhow::Result<TeamRole> {
        let body = CreateTeam { name: name.into() };
        self.send_for_answer(Method::POST, self.url(&["teams"]), Some(&body)).await
    }

    /// `GET /api/v1/teams/{team}/quota`: the team's quota and what its apps declare.
    pub async fn quota(&self) -> anyhow::Result<QuotaInfo> {
        self.send_for_answer(Method::GET, self.team_url(&["quota"]), None::<&()>).await
    }

    /// `PUT /api/v1/teams/{team}/quota` (instance admins): a limit left out is unlimited.
    pub async fn set_quota(&self, quota: &TeamQuota) -> anyhow::Result<QuotaInfo> {
        self.send_for_answer(Method::PUT, self.team_url(&["quota"]), Some(quota)).await
    }

    /// `GET /api/v1/teams/{team}/members`.
    pub async fn members(&self) -> anyhow::Result<Vec<Member>> {
        self.read(Resource::Members).await
    }

    /// `PUT /api/v1/teams/{team}/members`: adds an existing user to the team, or changes their
    /// role in it.
    pub async fn set_member(&self, email: &str, role: &str) -> anyhow::Result<Member> {
        let body = AddMember { email: email.into(), role: role.into() };
        self.send_for_answer(Method::PUT, self.team_url(&["members"]), Some(&body)).await
    }

    /// `DELETE /api/v1/teams/{team}/members/{email}`.
    pub async fn remove_member(&self, email: &str) -> anyhow::Result<()> {
        self.send_without_answer(Method::DELETE, self.team_url(&["members", email]), None::<&()>).await
    }

    /// `POST /api/v1/teams/{team}/invites`: an invitation whose secret is in the answer only.
    pub async fn create_invite(&self, request: &CreateInvite) -> anyhow::Result<InviteCreated> {
        self.send_for_answer(Method::POST, self.team_url(&["invites"]), Some(request)).await
    }

    /// `GET /api/v1/tokens`: the user's tokens (never their secrets).
    pub async fn list_tokens(&self) -> anyhow::Result<Vec<TokenInfo>> {
        self.read(Resource::Tokens).await
    }

    /// `POST /api/v1/tokens`: a new token whose secret is in the answer only.
    pub async fn create_token(&self, request: &CreateToken) -> anyhow::Result<TokenCreated> {
        self.send_for_answer(Method::POST, self.url(&["tokens"]), Some(request)).await
    }

    /// `DELETE /api/v1/tokens/{id}`.
    pub async fn revoke_token(&self, id: i64) -> anyhow::Result<()> {
        self.send_without_answer(Method::DELETE, self.url(&["tokens", &id.to_string()]), None::<&()>).await
    }

    /// `GET /api/v1/teams/{team}/audit?limit={limit}`: newest first.
    pub async fn team_audit(&self, limit: u32) -> anyhow::Result<Vec<AuditEntry>> {
        self.read(Resource::TeamAudit { limit }).await
    }

    /// `GET /api/v1/audit?limit={limit}`: every team's entries and the instance's, newest first.
    pub async fn instance_audit(&self, limit: u32) -> anyhow::Result<Vec<AuditEntry>> {
        self.read(Resource::InstanceAudit { limit }).await
    }

    /// `POST /api/v1/users/{email}/disable` or `…/enable`: a disabled user cannot sign in and
    /// their tokens stop working.
    pub async fn set_user_disabled(&self, email: &str, disabled: bool) -> anyhow::Result<()> {
        let verb = if disabled { "disable" } else { "enable" };
        self.send_without_answer(Method::POST, self.url(&["users", email, verb]), None::<&()>).await
    }

    /// `POST /api/v1/users/{email}/password`: sets the user's password; their sessions end.
    pub async fn reset_password(&self, email: &str, password: &str) -> anyhow::Result<()> {
        let body = ResetPassword { password: password.into() };
        self.send_without_answer(Method::POST, self.url(&["users", email, "password"]), Some(&body)).await
    }

    // Plumbing.

    /// `base_url/api/v1/` followed by `segments`, each percent-encoded as one path segment (so an
    /// email or a name cannot reach another path).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .expect("BUG: ApiClient::build accepts only URLs that can be a base")
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        url
    }

    /// `base_url/api/v1/teams/{team}/` followed by `segments`.
    fn team_url(&self, segments: &[&str]) -> Url {
        let mut url = self.url(&["teams", &self.team]);
        url.path_segments_mut().expect("BUG: ApiClient::build accepts only URLs that can be a base").extend(segments);
        url
    }

    fn resource_url(&self, resource: Resource<'_>) -> Url {
        let (mut url, limit) = match resource {
            Resource::Apps => (self.team_url(&["apps"]), None),
            Resource::App(name) => (self.team_url(&["apps", name]), None),
            Resource::Release { app, number } => (self.team_url(&["apps", app, "releases", &number.to_string()]), None),
            Resource::Status => (self.url(&["status"]), None),
            Resource::Hosts => (self.url(&["hosts"]), None),
            Resource::Host(name) => (self.url(&["hosts", name]), None),
            Resource::Me => (self.url(&["me"]), None),
            Resource::Teams => (self.url(&["teams"]), None),
            Resource::Members => (self.team_url(&["members"]), None),
            Resource::Tokens => (self.url(&["tokens"]), None),
            Resource::TeamAudit { limit } => (self.team_url(&["audit"]), Some(limit)),
            Resource::InstanceAudit { limit } => (self.url(&["audit"]), Some(limit)),
            Resource::Git(app) => (self.team_url(&["apps", app, "git"]), None),
            Resource::Builds(app) => (self.team_url(&["apps", app, "builds"]), None),
            Resource::Build { app, number } => (self.team_url(&["apps", app, "builds", &number.to_string()]), None),
            Resource::Webhooks(app) => (self.team_url(&["apps", app, "webhooks"]), None),
            Resource::Deliveries(app) => (self.team_url(&["apps", app, "webhook-deliveries"]), None),
            Resource::Domains(app) => (self.team_url(&["apps", app, "domains"]), None),
            Resource::Certificates(app) => (self.team_url(&["apps", app, "certificates"]), None),
            Resource::Edge(app) => (self.team_url(&["apps", app, "edge"]), None),
        };
        if let Some(limit) = limit {
            url.query_pairs_mut().append_pair("limit", &limit.to_string());
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Runs `attempt` again while it fails to reach the server, with jittered exponential
    /// pauses (so the CLIs of a team do not all knock at once on a restarting server), within
    /// `budget` in total. Only for requests that may safely be sent twice.
    async fn retrying<T, Attempt, Fut>(&self, budget: Duration, attempt: Attempt) -> Result<T, reqwest::Error>
    where
        Attempt: FnMut() -> Fut,
        Fut: Future<Output = Result<T, reqwest::Error>>,
    {
        let backoff = ExponentialBuilder::new()
            .with_min_delay(RETRY_MIN_DELAY)
            .with_max_delay(RETRY_MAX_DELAY)
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(budget));
        attempt
            .retry(backoff)
            .when(is_connection_failure)
            .notify(|error, pause| {
                if let Some(notice) = &self.on_retry {
                    notice(error, pause);
                }
            })
            .await
    }

    /// Sends the request once; a success's body is decoded as `R`.
    async fn send_for_answer<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> anyhow::Result<R> {
        let response = self.send_once(method, url, body).await?;
        response.json().await.context("the server's answer is not what this client expects")
    }

    /// Sends the request once; a success's body (if any) is ignored.
    async fn send_without_answer<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> anyhow::Result<()> {
        self.send_once(method, url, body).await.map(drop)
    }

    async fn send_once<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach Berth at {}", self.base))?;
        success_or_api_error(response).await
    }
}

/// The response when it is a success; otherwise its status and body as an [`ApiError`].
async fn success_or_api_error(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    // The status alone still makes an error worth showing when the body cannot be read.
    let text = response.text().await.unwrap_or_default();
    Err(ApiError::from_answer(status, text).into())
}

/// True for failures to reach the server or to hear its whole answer (refused or reset
/// connections, timeouts, a body cut short): what a restarting control plane causes. An answer,
/// even an error answer, is never one.
fn is_connection_failure(error: &reqwest::Error) -> bool {
    error.is_connect() || error.is_timeout() || error.is_request() || error.is_body()
}

/// The events of a server-sent event stream, as (event name, data) pairs: `event:` and `data:`
/// lines up to a blank one (comments, such as keep-alives, skipped; several `data:` lines
/// joined by newlines). An event longer than [`MAX_LINE_BYTES`] ends the stream with an error.
fn sse_events<Chunks>(chunks: Chunks) -> impl Stream<Item = io::Result<(String, String)>>
where
    Chunks: Stream<Item = io::Result<Bytes>>,
{
    let lines = ndjson_lines(chunks, MAX_LINE_BYTES);
    futures::stream::unfold(Box::pin(lines), |mut lines| async move {
        let (mut event, mut data) = (String::from("message"), None::<String>);
        loop {
            let line = match lines.next().await? {
                Ok(StreamLine::Text(line)) => line,
                Ok(StreamLine::TooLong) => {
                    return Some((Err(io::Error::other("an event of the stream is too long")), lines));
                }
                Err(error) => return Some((Err(error), lines)),
            };
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return Some((Ok((std::mem::take(&mut event), data)), lines));
                }
                event = String::from("message");
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_string(),
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                _ => {}
            }
        }
    })
}

/// Splits a byte stream into lines of at most `max_line_bytes`, however its chunks fall; a last
/// line without a newline still counts, and a longer line is skipped as [`StreamLine::TooLong`].
fn ndjson_lines<Chunks>(chunks: Chunks, max_line_bytes: usize) -> impl Stream<Item = io::Result<StreamLine>>
where
    Chunks: Stream<Item = io::Result<Bytes>>,
{
    FramedRead::new(StreamReader::new(chunks), CappedLines(LinesCodec::new_with_max_length(max_line_bytes)))
}

/// [`LinesCodec`] that reports an overlong line as an item instead of an error, because a
/// `FramedRead` ends its stream after an error and one long line must not end a log.
struct CappedLines(LinesCodec);

impl CappedLines {
    fn line(decoded: Result<Option<String>, LinesCodecError>) -> io::Result<Option<StreamLine>> {
        match decoded {
            Ok(line) => Ok(line.map(StreamLine::Text)),
            Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(StreamLine::TooLong)),
            Err(LinesCodecError::Io(error)) => Err(error),
        }
    }
}

impl Decoder for CappedLines {
    type Item = StreamLine;
    type Error = io::Error;

    fn decode(&mut self, buffer: &mut BytesMut) -> io::Result<Option<StreamLine>> {
        CappedLines::line(self.0.decode(buffer))
    }

    fn decode_eof(&mut self, buffer: &mut BytesMut) -> io::Result<Option<StreamLine>> {
        CappedLines::line(self.0.decode_eof(buffer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn split(chunks: &[&'static str], max_line_bytes: usize) -> Vec<StreamLine> {
        let chunks = futures::stream::iter(chunks.iter().map(|chunk| Ok(Bytes::from_static(chunk.as_bytes()))));
        ndjson_lines(chunks, max_line_bytes)
            .map(|line| line.expect("an in-memory stream does not break"))
            .collect()
            .await
    }

    fn text(line: &str) -> StreamLine {
        StreamLine::Text(line.into())
    }

    #[tokio::test]
    async fn the_splitter_yields_an_unterminated_last_line() {
        let lines = split(&["{\"a\":1}\n{\"b\"", ":2}\n{\"c\":3}"], 1024).await;
        assert_eq!(lines, [text("{\"a\":1}"), text("{\"b\":2}"), text("{\"c\":3}")]);
    }

    #[tokio::test]
    async fn server_sent_events_are_read_however_their_chunks_fall() {
        let chunks = [
            ": keep-alive\n\nevent: rel",
            "ease\ndata: {\"a\":1}\n\n",
            "data: one\r\ndata:two\n\nevent: error\ndata: {}\n\n",
        ];
        let chunks = futures::stream::iter(chunks.iter().map(|chunk| Ok(Bytes::from_static(chunk.as_bytes()))));
        let events: Vec<(String, String)> =
            sse_events(chunks).map(|event| event.expect("an in-memory stream does not break")).collect().await;
        let expected = [("release", "{\"a\":1}"), ("message", "one\ntwo"), ("error", "{}")];
        assert_eq!(events, expected.map(|(event, data)| (event.to_string(), data.to_string())));
    }

    #[tokio::test]
    async fn the_splitter_skips_an_overlong_line_and_goes_on() {
        let lines = split(&["short\n", "0123456789", "0123456789\n", "next\nlast"], 12).await;
        assert_eq!(lines, [text("short"), StreamLine::TooLong, text("next"), text("last")]);
    }

    #[test]
    fn urls_encode_each_segment_and_keep_a_path_prefix() {
        let client = ApiClient::new("http://berth.example/prefix/", "t", "my team").expect("a valid URL");
        assert_eq!(client.base_url(), "http://berth.example/prefix");
        assert_eq!(
            client.team_url(&["members", "a/b@example.com"]).as_str(),
            "http://berth.example/prefix/api/v1/teams/my%20team/members/a%2Fb@example.com"
        );
        assert_eq!(
            client.resource_url(Resource::InstanceAudit { limit: 5 }).as_str(),
            "http://berth.example/prefix/api/v1/audit?limit=5"
        );
        assert!(ApiClient::new("berth.example", "t", "main").is_err());
    }

    #[test]
    fn an_error_answer_shows_the_servers_message_and_field() {
        let body = r#"{"code":"validation","message":"bad port","field":"port"}"#;
        let error = ApiError::from_answer(StatusCode::BAD_REQUEST, body.into());
        assert_eq!(error.to_string(), "bad port (field: port)");
        assert_eq!(error.code(), Some("validation"));
        let error = ApiError::from_answer(StatusCode::BAD_GATEWAY, "upstream down".into());
        assert_eq!(error.to_string(), "the server answered 502 Bad Gateway: upstream down");
    }

    #[tokio::test]
    async fn reads_retry_until_the_server_answers_but_posts_do_not() {
        // A port with nothing listening yet; a server starts on it after the first failures.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a local port");
        let address = listener.local_addr().expect("a bound socket has an address");
        drop(listener);
        let base = format!("http://{address}");
        let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = retries.clone();
        let client = ApiClient::new(&base, "t", "main")
            .expect("a valid URL")
            .with_retry_budget(Duration::from_secs(20))
            .on_retry(move |_, _| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });

        let refused = client.create_team("x").await.expect_err("nothing listens");
        assert!(refused.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_connect), "{refused:#}");
        assert_eq!(retries.load(std::sync::atomic::Ordering::SeqCst), 0, "a POST is never retried");

        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let listener = tokio::net::TcpListener::bind(address).await.expect("rebinding the port");
            let (mut socket, _) = listener.accept().await.expect("the client connects");
            serve_one(&mut socket, "200 OK", r#"[{"team":"main","role":"owner"}]"#).await;
        });
        let teams = client.list_teams().await.expect("the read outlives the outage");
        server.await.expect("the server task ends");
        assert_eq!(teams[0].role, "owner");
        assert!(retries.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }

    #[tokio::test]
    async fn an_error_answer_is_not_retried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a local port");
        let base = format!("http://{}", listener.local_addr().expect("a bound socket has an address"));
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("the client connects");
            serve_one(&mut socket, "404 Not Found", r#"{"code":"not_found","message":"no app web"}"#).await;
        });
        let client = ApiClient::new(&base, "t", "main").expect("a valid URL").on_retry(|error, _| {
            panic!("an answer must not be retried: {error}");
        });
        let error = client.app("web").await.expect_err("the server said 404");
        server.await.expect("the server task ends");
        let answer = error.downcast_ref::<ApiError>().expect("an ApiError");
        assert_eq!((answer.status, answer.code()), (StatusCode::NOT_FOUND, Some("not_found")));
        assert_eq!(error.to_string(), "no app web");
    }

    #[test]
    fn requests_can_run_on_other_tasks() {
        fn spawnable<T: Send + 'static>(_: T) {}
        let client = ApiClient::new("http://127.0.0.1:1", "t", "main").expect("a valid URL");
        spawnable(async move { client.list_apps().await });
        let client = ApiClient::new("http://127.0.0.1:1", "t", "main").expect("a valid URL");
        spawnable(async move { client.follow_release("web", 1, |_| {}).await });
        let client = ApiClient::new("http://127.0.0.1:1", "t", "main").expect("a valid URL");
        spawnable(async move { client.logs("web", 10, true).await });
        spawnable(async {
            let request = Login { email: "a".into(), password: "b".into(), token_name: None };
            ApiClient::login("http://127.0.0.1:1", &request).await
        });
    }

    /// Reads one HTTP request (headers only: the tests send GETs) and answers it.
    async fn serve_one(socket: &mut tokio::net::TcpStream, status: &str, body: &str) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut request = Vec::new();
        let mut buffer = [0; 1024];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = socket.read(&mut buffer).await.expect("reading the request");
            assert!(read > 0, "the client hung up mid-request");
            request.extend_from_slice(&buffer[..read]);
        }
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.expect("writing the answer");
    }
}
