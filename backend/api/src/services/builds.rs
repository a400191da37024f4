//! Builds from git: the git remote's access checks, pushes (driven by Berth's pre-receive hook),
//! build records and logs, build settings, webhooks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_control::builds::{BuildOrder, Context, StartError, Started, stored_lines};
use berth_control::repos::ObjectDirs;
use berth_store::{AppRow, BuildRow};
use berth_wire::builds::{
    BuildInfo, BuildLogLine, BuildSettings, BuildSettingsChange, BuildState, GitInfo, HookFrame, HookRequest, RefUpdate,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Result, ServiceError, Services, invalid};
use crate::auth::{Action, Principal};

/// A pusher sees a line at least this often while the build is silent.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Failed git authentications per client address per minute before it is refused outright.
const GIT_AUTH_FAILURES_PER_MINUTE: usize = 10;
const ZERO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// A git request that passed its access check.
pub struct GitAccess {
    pub principal: Principal,
    pub app: AppRow,
    pub repo: PathBuf,
}

/// The pushes in flight: the hook proves which one it belongs to with the push's secret.
#[derive(Default)]
pub struct Pushes {
    sessions: Mutex<HashMap<String, Push>>,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

#[derive(Clone)]
struct Push {
    principal: Principal,
    app: AppRow,
    /// Cancelled when the pusher's connection ends.
    gone: CancellationToken,
}

/// A push's registration; dropping it (the pusher's request ended) forgets the push and cancels
/// what it started, unless detached.
pub struct PushTicket {
    pub secret: String,
    services: Services,
    gone: CancellationToken,
}

impl Drop for PushTicket {
    fn drop(&mut self) {
        self.gone.cancel();
        self.services.pushes.sessions.lock().expect("BUG: push table poisoned").remove(&self.secret);
    }
}

impl Pushes {
    fn blocked(&self, address: &str) -> bool {
        let mut failures = self.failures.lock().expect("BUG: git auth limiter poisoned");
        let Some(recent) = failures.get_mut(address) else { return false };
        recent.retain(|at| at.elapsed() < Duration::from_secs(60));
        recent.len() >= GIT_AUTH_FAILURES_PER_MINUTE
    }

    fn failed(&self, address: &str) {
        let mut failures = self.failures.lock().expect("BUG: git auth limiter poisoned");
        failures.retain(|_, at| at.last().is_some_and(|t| t.elapsed() < Duration::from_secs(60)));
        failures.entry(address.to_string()).or_default().push(Instant::now());
    }
}

/// What a push asked for with `-o`.
#[derive(Debug, Default, PartialEq, Eq)]
struct PushOptions {
    replace: bool,
    detach: bool,
    no_cache: bool,
}

fn parse_push_options(options: &[String]) -> std::result::Result<PushOptions, String> {
    let mut parsed = PushOptions::default();
    for option in options {
        match option.as_str() {
            "berth.replace" => parsed.replace = true,
            "berth.detach" => parsed.detach = true,
            "berth.nocache" => parsed.no_cache = true,
            other if other.starts_with("berth.") => {
                return Err(format!(
                    "unknown push option {other:?}: Berth knows berth.replace, berth.detach and berth.nocache"
                ));
            }
            _ => {}
        }
    }
    Ok(parsed)
}

/// The update of the deploy branch among a push's ref updates; refuses any other ref and the
/// branch's deletion, naming the deploy branch.
fn deploy_update<'a>(updates: &'a [RefUpdate], branch: &str) -> std::result::Result<Option<&'a RefUpdate>, String> {
    let wanted = format!("refs/heads/{branch}");
    for update in updates {
        if update.name != wanted {
            let name = update.name.strip_prefix("refs/heads/").unwrap_or(&update.name);
            return Err(format!(
                "refusing {name}: Berth builds and deploys only the branch {branch}; push your commit to it with: git push berth HEAD:{branch}"
            ));
        }
        if update.new == ZERO_COMMIT {
            return Err(format!("refusing to delete {branch}: it holds what is deployed"));
        }
    }
    Ok(updates.iter().find(|u| u.name == wanted))
}

fn validate_settings(settings: &BuildSettings) -> Result<()> {
    let branch = &settings.deploy_branch;
    let branch_ok = !branch.is_empty()
        && branch.len() <= 200
        && !branch.starts_with(['-', '/', '.'])
        && !branch.ends_with(['/', '.'])
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("@{")
        && branch.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if !branch_ok {
        return Err(invalid(
            "deploy_branch",
            format!("{branch:?} is not a branch name Berth accepts (letters, digits, '-', '_', '.', '/')"),
        ));
    }
    for (field, path) in [("dockerfile", &settings.dockerfile), ("context_dir", &settings.context_dir)] {
        let path_ok = path.len() <= 500
            && !path.starts_with('/')
            && !path.split('/').any(|part| part == "..")
            && !path.chars().any(|c| c.is_control() || c == ':' || c == '\\');
        if !path_ok || (field == "dockerfile" && path.is_empty()) {
            return Err(invalid(
                field,
                format!("{path:?} must be a relative path inside the repository, without '..'"),
            ));
        }
    }
    for (key, value) in &settings.build_args {
        let key_ok = key.len() <= 200 && super::validate::valid_variable_name(key);
        if !key_ok || value.contains('\0') || value.len() > 4096 {
            return Err(invalid("build_args", format!("{key:?} is not a valid build argument")));
        }
    }
    if !(10..=24 * 3600).contains(&settings.timeout_secs) {
        return Err(invalid("timeout_secs", "the build timeout must be between 10 seconds and 24 hours"));
    }
    if let Some(url) = &settings.git_url {
        let scheme_ok = ["https://", "http://", "ssh://", "git://"].iter().any(|s| url.starts_with(s));
        if !scheme_ok || url.len() > 2000 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("git_url", format!("{url:?}: give an https://, http://, ssh:// or git:// URL")));
        }
    }
    Ok(())
}

impl Services {
    /// Checks a git request's credential (an API token as the Basic password) and role: Deployer
    /// or above to push, Viewer to fetch. Failures are counted per address and audited.
    pub async fn git_access(
        &self,
        secret: Option<&str>,
        address: Option<String>,
        team: &str,
        app: &str,
        push: bool,
    ) -> Result<GitAccess> {
        let from = address.clone().unwrap_or_else(|| "unknown".into());
        if self.pushes.blocked(&from) {
            return Err(ServiceError::TooManyRequests("too many failed git authentications; wait a minute".into()));
        }
        let Some(secret) = secret else {
            return Err(ServiceError::Unauthorized(
                "authentication required: use a Berth API token as the password (berth git-remote sets this up)".into(),
            ));
        };
        let mut principal = match self.authenticate(secret).await {
            Ok(principal) => principal,
            Err(error) => {
                self.pushes.failed(&from);
                let result: Result<()> = Err(ServiceError::Unauthorized(format!("invalid token from {from}")));
                self.audit(None, "git_auth", Some(team), Some(app), None, &result).await?;
                return Err(error);
            }
        };
        principal.address = address;
        let action = if push { Action::DeployApps } else { Action::ViewApps };
        let found = self.find_app(&principal, team, app, action).await;
        if let Err(error) = &found
            && matches!(error, ServiceError::Forbidden(_) | ServiceError::NotFound(_))
        {
            self.pushes.failed(&from);
            let action = if push { "git_push" } else { "git_fetch" };
            self.audit(Some(&principal), action, Some(team), Some(app), None, &found).await?;
        }
        let app = found?;
        let settings = self.store.build_settings(app.id).await?;
        let repo = self.builds().await?.repos().ensure(&app.team, &app.name, &settings.deploy_branch).await?;
        Ok(GitAccess { principal, app, repo })
    }

    /// Registers a push about to be handed to git; its hook proves itself with the secret.
    pub fn open_push(&self, access: &GitAccess) -> PushTicket {
        let secret = crate::auth::new_token();
        let gone = CancellationToken::new();
        let push = Push { principal: access.principal.clone(), app: access.app.clone(), gone: gone.clone() };
        self.pushes.sessions.lock().expect("BUG: push table poisoned").insert(secret.clone(), push);
        PushTicket { secret, services: self.clone(), gone }
    }

    /// One push, as Berth's pre-receive hook reports it: checks the refs, builds the pushed
    /// commit and releases it, sending the hook what to print and, last, its exit code (0 lets
    /// git update the branch: the release serves).
    pub async fn handle_hook(&self, request: HookRequest, out: mpsc::Sender<HookFrame>) {
        let code = match self.push(request, &out).await {
            Ok(code) => code,
            Err(message) => {
                let _ = out.send(HookFrame::Line { text: message }).await;
                1
            }
        };
        let _ = out.send(HookFrame::Exit { code }).await;
    }

    async fn push(&self, request: HookRequest, out: &mpsc::Sender<HookFrame>) -> std::result::Result<i32, String> {
        let push = self.pushes.sessions.lock().expect("BUG: push table poisoned").get(&request.session).cloned();
        let push =
            push.ok_or("this push is unknown to the server (it ended, or did not come through Berth's git remote)")?;
        let app = &push.app;
        let settings = self.store.build_settings(app.id).await.map_err(|e| format!("database error: {e}"))?;
        let Some(update) = deploy_update(&request.updates, &settings.deploy_branch)? else { return Ok(0) };
        if !matches!(update.new.len(), 40 | 64) || !update.new.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{:?} is not a commit id", update.new));
        }
        let options = parse_push_options(&request.options)?;
        let say = |text: String| {
            let out = out.clone();
            async move { out.send(HookFrame::Line { text }).await.is_ok() }
        };
        // The leader's builds, for the whole push (a change of leader meanwhile ends the build).
        let builds = self.builds().await.map_err(|e| e.to_string())?;
        let repo = builds.repos().path(&app.team, &app.name);
        let objects = ObjectDirs {
            object_directory: request.object_directory.clone(),
            alternate_object_directories: request.alternate_object_directories.clone(),
        };
        let context = builds
            .repos()
            .archive(&repo, &update.new, &settings.context_dir, &settings.dockerfile, &objects)
            .await
            .map_err(|e| format!("cannot build {}: {e:#}", &update.new))?;
        self.check_build_quota(app).await.map_err(|e| e.to_string())?;
        let order = BuildOrder {
            app: app.clone(),
            commit: update.new.clone(),
            git_ref: update.name.clone(),
            pusher: push.principal.email.clone(),
            trigger: "push",
            context: Context::Archive { tar: context, objects },
            no_cache: options.no_cache,
            replace: options.replace,
        };
        let started = builds.start_build(order).await;
        let result: Result<()> = match &started {
            Ok(_) => Ok(()),
            Err(StartError::Busy(_)) => Err(ServiceError::Conflict("a build is running".into())),
            Err(StartError::Failed(e)) => Err(ServiceError::Internal(anyhow::anyhow!("{e:#}"))),
        };
        let _ = self
            .audit(Some(&push.principal), "git_push", Some(&app.team), Some(&app.name), Some(&update.new), &result)
            .await;
        let Started { row, log, mut outcome } = match started {
            Ok(started) => started,
            Err(StartError::Busy(running)) => {
                return Err(format!(
                    "refusing the push: build {} of {} (commit {}, pushed by {}) is running; wait for it, cancel it with `berth builds cancel {}`, or push with -o berth.replace",
                    running.number,
                    app.name,
                    short(&running.commit_sha),
                    running.pusher,
                    app.name
                ));
            }
            Err(StartError::Failed(error)) => return Err(format!("the build could not start: {error:#}")),
        };
        let number = row.number;
        if options.detach {
            say(format!(
                "build {number}: started in the background; follow it with: berth builds logs {} {number} --follow",
                app.name
            ))
            .await;
            return Ok(0);
        }
        let mut lines = log.follow(0);
        let began = Instant::now();
        loop {
            tokio::select! {
                line = lines.next() => match line {
                    Some(line) => {
                        if !say(line.line).await {
                            builds.cancel(app.id, Some(number), "the pusher's hook went away").await;
                            return Ok(1);
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep(HEARTBEAT) => {
                    say(format!("build {number}: still working ({} s)", began.elapsed().as_secs())).await;
                }
                () = push.gone.cancelled() => {
                    builds.cancel(app.id, Some(number), "the push was interrupted").await;
                    return Ok(1);
                }
                () = out.closed() => {
                    builds.cancel(app.id, Some(number), "the pusher's hook went away").await;
                    return Ok(1);
                }
            }
        }
        let outcome = outcome.wait_for(Option::is_some).await.map(|o| o.clone()).ok().flatten();
        Ok(match outcome {
            Some(outcome) if outcome.state == BuildState::Succeeded && outcome.serving.is_some() => 0,
            _ => 1,
        })
    }

    pub async fn git_info(&self, principal: &Principal, team: &str, name: &str) -> Result<GitInfo> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        let mut settings = self.store.build_settings(app.id).await?;
        let repo = self.builds().await?.repos().path(&app.team, &app.name);
        let deployed_commit = self.builds().await?.repos().branch_commit(&repo, &settings.deploy_branch).await;
        // Viewers read this: a user name or password in the URL is never shown.
        settings.git_url = settings.git_url.map(|url| berth_control::repos::redact_url(&url));
        Ok(GitInfo {
            remote_url: format!("{}/git/{}/{}.git", self.public_url, app.team, app.name),
            settings,
            deployed_commit,
        })
    }

    async fn update_build_settings_inner(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        change: BuildSettingsChange,
    ) -> Result<GitInfo> {
        let app = self.find_app(principal, team, name, Action::DeployApps).await?;
        let mut settings = self.store.build_settings(app.id).await?;
        if let Some(branch) = change.deploy_branch {
            settings.deploy_branch = branch.trim().to_string();
        }
        if let Some(dockerfile) = change.dockerfile {
            settings.dockerfile = dockerfile.trim().to_string();
        }
        if let Some(context) = change.context_dir {
            settings.context_dir = context.trim().trim_end_matches('/').to_string();
        }
        if let Some(args) = change.build_args {
            settings.build_args = args;
        }
        if let Some(timeout) = change.timeout_secs {
            settings.timeout_secs = timeout;
        }
        if let Some(url) = change.git_url {
            settings.git_url = (!url.trim().is_empty()).then(|| url.trim().to_string());
        }
        validate_settings(&settings)?;
        // The repository is the leader's to configure: on a follower, refuse before writing.
        let builds = self.builds().await?;
        self.store.set_build_settings(app.id, &settings).await?;
        let repo = builds.repos().ensure(&app.team, &app.name, &settings.deploy_branch).await?;
        builds.repos().configure(&repo, &settings.deploy_branch).await?;
        self.git_info(principal, team, name).await
    }

    pub async fn update_build_settings(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        change: BuildSettingsChange,
    ) -> Result<GitInfo> {
        let result = self.update_build_settings_inner(principal, team, name, change).await;
        self.audit(Some(principal), "build_settings", Some(team), Some(name), None, &result).await?;
        result
    }

    /// The app's builds, newest first (the last 20 are kept).
    pub async fn list_builds(&self, principal: &Principal, team: &str, name: &str) -> Result<Vec<BuildInfo>> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        Ok(self.store.builds(app.id, berth_control::builds::KEPT_BUILDS).await?.iter().map(BuildRow::info).collect())
    }

    async fn find_build(&self, app: &AppRow, number: Option<u32>) -> Result<BuildRow> {
        let found = match number {
            Some(number) => self.store.build(app.id, number as i64).await?,
            None => self.store.builds(app.id, 1).await?.into_iter().next(),
        };
        found.ok_or_else(|| match number {
            Some(number) => ServiceError::NotFound(format!("build {number} of {} not found", app.name)),
            None => ServiceError::NotFound(format!("{} has no builds yet", app.name)),
        })
    }

    /// Build `number` of the app (`None`: the newest).
    pub async fn show_build(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        number: Option<u32>,
    ) -> Result<BuildInfo> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        Ok(self.find_build(&app, number).await?.info())
    }

    /// A build's log from line `from`: the stored lines, or, while it runs and `follow`, the live
    /// log until the build ends. `number` `None` is the newest build.
    pub async fn build_log(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        number: Option<u32>,
        from: u64,
        follow: bool,
    ) -> Result<(BuildInfo, BoxStream<'static, BuildLogLine>)> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        let build = self.find_build(&app, number).await?;
        if let Some(live) = self.builds().await?.live_log(app.id, build.number) {
            let lines = if follow { live.follow(from) } else { futures::stream::iter(live.lines_from(from)).boxed() };
            return Ok((build.info(), lines));
        }
        let lines = match stored_lines(&self.builds().await?.log_path(app.id, build.number), from).await {
            Ok(lines) => lines,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(ServiceError::Internal(anyhow::Error::new(error).context("reading a build log"))),
        };
        Ok((build.info(), futures::stream::iter(lines).boxed()))
    }

    async fn cancel_build_inner(&self, principal: &Principal, team: &str, name: &str) -> Result<BuildInfo> {
        let app = self.find_app(principal, team, name, Action::DeployApps).await?;
        let why = format!("canceled by {}", principal.email);
        let Some(number) = self.builds().await?.cancel(app.id, None, &why).await else {
            return Err(ServiceError::Conflict(format!("{name} has no running build")));
        };
        Ok(self.find_build(&app, Some(number as u32)).await?.info())
    }

    pub async fn cancel_build(&self, principal: &Principal, team: &str, name: &str) -> Result<BuildInfo> {
        let result = self.cancel_build_inner(principal, team, name).await;
        self.audit(Some(principal), "cancel_build", Some(team), Some(name), None, &result).await?;
        result
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(name: &str, new: &str) -> RefUpdate {
        RefUpdate { old: ZERO_COMMIT.into(), new: new.into(), name: name.into() }
    }

    #[test]
    fn only_the_deploy_branch_is_accepted() {
        let sha = "a".repeat(40);
        let ok = [update("refs/heads/main", &sha)];
        assert_eq!(deploy_update(&ok, "main").unwrap(), Some(&ok[0]));
        let other = [update("refs/heads/feature", &sha)];
        let refused = deploy_update(&other, "main").unwrap_err();
        assert!(refused.contains("only the branch main") && refused.contains("git push berth HEAD:main"), "{refused}");
        let tag = [update("refs/tags/v1", &sha)];
        assert!(deploy_update(&tag, "main").is_err());
        let delete = [update("refs/heads/main", ZERO_COMMIT)];
        assert!(deploy_update(&delete, "main").unwrap_err().contains("refusing to delete main"));
        let mixed = [update("refs/heads/main", &sha), update("refs/heads/x", &sha)];
        assert!(deploy_update(&mixed, "main").is_err(), "one bad ref refuses the whole push");
    }

    #[test]
    fn push_options_are_known_or_refused() {
        let parsed = parse_push_options(&["berth.detach".into(), "ci.skip".into()]).unwrap();
        assert_eq!(parsed, PushOptions { detach: true, ..Default::default() });
        assert!(parse_push_options(&["berth.force".into()]).unwrap_err().contains("berth.replace"));
    }

    #[test]
    fn settings_are_validated() {
        let good = BuildSettings::default();
        assert!(validate_settings(&good).is_ok());
        for bad in [
            BuildSettings { deploy_branch: "-x".into(), ..good.clone() },
            BuildSettings { deploy_branch: "a..b".into(), ..good.clone() },
            BuildSettings { dockerfile: "../Dockerfile".into(), ..good.clone() },
            BuildSettings { context_dir: "/etc".into(), ..good.clone() },
            BuildSettings { git_url: Some("file:///etc".into()), ..good.clone() },
            BuildSettings { git_url: Some("ext::sh -c id".into()), ..good.clone() },
            BuildSettings { timeout_secs: 0, ..good.clone() },
        ] {
            assert!(validate_settings(&bad).is_err(), "{bad:?}");
        }
    }
}
