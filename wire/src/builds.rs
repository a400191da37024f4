//! Builds from git: an app's build settings, build records and their logs, webhooks, and the
//! frames between the git hook Berth installs and the server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How an app is built from its git repository. Per app, not per release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct BuildSettings {
    /// The branch whose pushes are built and released.
    pub deploy_branch: String,
    /// The Dockerfile's path inside the context directory.
    pub dockerfile: String,
    /// The build context: a directory of the repository (`""` is its root), for monorepos.
    pub context_dir: String,
    /// The only build arguments passed to the build (never secrets: they show in the image's
    /// history).
    pub build_args: BTreeMap<String, String>,
    /// A build running longer is stopped and marked `timed_out`.
    pub timeout_secs: u64,
    /// Where webhook-triggered builds fetch the pushed commit from (`https://`, `http://`,
    /// `ssh://` or `git://`).
    pub git_url: Option<String>,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            deploy_branch: "main".into(),
            dockerfile: "Dockerfile".into(),
            context_dir: String::new(),
            build_args: BTreeMap::new(),
            timeout_secs: 30 * 60,
            git_url: None,
        }
    }
}

/// `PATCH .../apps/{app}/build`: each field present replaces the setting.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BuildSettingsChange {
    #[serde(default)]
    pub deploy_branch: Option<String>,
    #[serde(default)]
    pub dockerfile: Option<String>,
    #[serde(default)]
    pub context_dir: Option<String>,
    /// Replaces the whole list when present.
    #[serde(default)]
    pub build_args: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// `Some("")` removes the URL.
    #[serde(default)]
    pub git_url: Option<String>,
}

/// The app's git side as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GitInfo {
    /// The Smart HTTP remote: `git push <remote_url> main`.
    pub remote_url: String,
    pub settings: BuildSettings,
    /// The commit the deploy branch points at in Berth's repository (the last deployed push).
    pub deployed_commit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum BuildState {
    Queued,
    Building,
    /// The image is built; its release is rolling out (see `BuildInfo::release`).
    Releasing,
    /// Built and released: the release serves.
    Succeeded,
    Failed,
    Canceled,
    TimedOut,
}

impl TryFrom<String> for BuildState {
    type Error = strum::ParseError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, BuildState::Queued | BuildState::Building | BuildState::Releasing)
    }
}

/// One build of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BuildInfo {
    /// Numbered per app from 1.
    pub number: u32,
    pub state: BuildState,
    pub commit: String,
    /// The ref that was pushed (`refs/heads/main`).
    pub git_ref: String,
    /// Who pushed (a user's e-mail, or `webhook:<provider>`).
    pub pusher: String,
    /// `push` or `webhook`.
    pub trigger: String,
    /// The host that builds it, once chosen.
    pub host: Option<String>,
    /// The image it produced (or is producing).
    pub image: String,
    /// The release that carries the image, once created.
    pub release: Option<u32>,
    /// Why it failed, was canceled or timed out.
    pub message: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// One line of a build's log, numbered from 0 within the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BuildLogLine {
    pub index: u64,
    pub line: String,
}

/// The git providers whose webhooks Berth verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum WebhookProvider {
    /// `X-Hub-Signature-256: sha256=<hmac>`.
    Github,
    /// Gitea and Forgejo: `X-Gitea-Signature`/`X-Forgejo-Signature: <hmac>`.
    Gitea,
    /// `X-Gitlab-Token: <secret>`.
    Gitlab,
}

impl TryFrom<String> for WebhookProvider {
    type Error = strum::ParseError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl WebhookProvider {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// `POST .../apps/{app}/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateWebhook {
    pub provider: WebhookProvider,
    /// The repository as the provider names it in its payloads (`owner/name`).
    pub repository: String,
}

/// A webhook, with its secret only in the answer to its creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WebhookInfo {
    pub id: String,
    pub provider: WebhookProvider,
    pub repository: String,
    /// Path to configure at the provider, under the API's public URL.
    pub path: String,
    /// Shown once, at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: i64,
}

/// What Berth did with one webhook delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WebhookDelivery {
    pub webhook: String,
    /// The provider's delivery id, when it sent one.
    pub delivery: Option<String>,
    pub at: i64,
    /// `accepted`, `ignored` or `refused`.
    pub verdict: String,
    pub reason: String,
    pub build: Option<u32>,
}

/// `202` answer to a webhook that starts a build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WebhookAccepted {
    pub build: u32,
    pub commit: String,
}

/// The pre-receive hook → the server, once per push, over the server's hook socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HookRequest {
    /// The push's one-time secret, given to git in the environment.
    pub session: String,
    pub updates: Vec<RefUpdate>,
    /// `-o` push options.
    pub options: Vec<String>,
    /// Where git keeps the pushed objects until the hook accepts them.
    pub object_directory: Option<String>,
    pub alternate_object_directories: Option<String>,
}

/// One line of the hook's input: `old new ref`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

/// The server → the pre-receive hook: lines to print (they reach the pusher as `remote:`
/// lines), then the hook's exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HookFrame {
    Line { text: String },
    Exit { code: i32 },
}
