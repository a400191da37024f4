//! Builds from git: one build per app at a time (its release included), run by a host's agent
//! (the control plane never calls Docker), its log kept per build and followed live, then
//! released with the release protocol. A pushed build is driven by the pusher's hook connection;
//! a webhook's build runs on its own. Cleanup keeps the images releases may need and touches only
//! Berth's own images.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use berth_agent::runtime::{BuildEvent, BuildSpec};
use berth_store::{AppRow, BuildInsert, BuildRow, NewBuild, Store};
use berth_wire::api::ReleaseState;
use berth_wire::builds::BuildState;
use berth_wire::labels;
use futures::StreamExt;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Orchestrator;
use crate::repos::{ObjectDirs, Repos, redact_url};

mod hosts;
mod log;

use hosts::BuildTarget;
pub use log::{BuildLog, stored_lines};

/// Build records (and their logs) kept per app.
pub const KEPT_BUILDS: i64 = 20;
/// Releases whose images are kept besides the serving one.
pub const KEPT_RELEASE_IMAGES: usize = 5;
/// A larger build context is refused (it is held in memory on its way to the engine).
pub const MAX_CONTEXT_BYTES: usize = 1 << 30;

#[derive(Debug, Clone)]
pub struct BuildsConfig {
    /// Where build logs are kept (`<dir>/<app id>/<build number>.log`).
    pub logs_dir: PathBuf,
    /// The build cache is pruned down to this after a build exceeds it.
    pub cache_max_bytes: u64,
    /// A build is refused when the build host has less free space on Docker's storage.
    pub min_free_bytes: u64,
}

/// Where a build's context comes from.
pub enum Context {
    /// Archived already (a push: from git's quarantine, while the hook waits). `objects` is that
    /// quarantine, kept into the repository once the image is built, so the branch can follow the
    /// release even when the pusher is gone before git could move it.
    Archive { tar: Vec<u8>, objects: ObjectDirs },
    /// Fetched from the app's git URL first (a webhook).
    Fetch { url: String, branch: String },
}

pub struct BuildOrder {
    pub app: AppRow,
    pub commit: String,
    pub git_ref: String,
    pub pusher: String,
    /// `push` or `webhook`.
    pub trigger: &'static str,
    pub context: Context,
    pub no_cache: bool,
    /// Cancel the app's running build instead of being refused.
    pub replace: bool,
}

/// How a build ended, release included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: BuildState,
    /// The release now serving the build, when it does.
    pub serving: Option<u32>,
    pub message: String,
}

/// A started build.
pub struct Started {
    pub row: BuildRow,
    pub log: Arc<BuildLog>,
    pub outcome: watch::Receiver<Option<Outcome>>,
}

pub enum StartError {
    /// The app has an unfinished build.
    Busy(Box<BuildRow>),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(error: anyhow::Error) -> Self {
        StartError::Failed(error)
    }
}

struct Running {
    number: i64,
    cancel: CancellationToken,
    log: Arc<BuildLog>,
    outcome: watch::Receiver<Option<Outcome>>,
}

/// Why a build did not release: the state it ends in and the reason.
type Stop = (BuildState, String);

/// Cheap to clone.
#[derive(Clone)]
pub struct Builds {
    inner: Arc<Inner>,
}

/// Says whether a build may release `spec` as the next release of `app` (the service layer's
/// quota check): the build may have started minutes before, and other releases may have taken
/// the room meanwhile.
pub trait ReleaseGate: Send + Sync {
    /// Taken before the secrets are held (the order every release takes) and held until the
    /// release is stored, so nothing takes the room between the check and the release.
    fn enter(&self) -> futures::future::BoxFuture<'_, Box<dyn Send>>;

    /// Whether `spec` may be the next release of `app`; if not, why.
    fn admit<'a>(
        &'a self,
        app: &'a AppRow,
        spec: &'a berth_wire::AppSpec,
    ) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

struct Inner {
    store: Store,
    orchestrator: Orchestrator,
    repos: Repos,
    config: BuildsConfig,
    /// Set once by the service layer; without one, every build's release is admitted.
    gate: std::sync::OnceLock<Arc<dyn ReleaseGate>>,
    /// By app id.
    running: Mutex<HashMap<i64, Running>>,
    /// One semaphore per host: its build slots.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    tasks: TaskTracker,
}

impl Builds {
    /// Marks builds left unfinished by an earlier process as failed (nothing runs them now, and
    /// the app must not stay locked).
    pub async fn start(
        store: Store,
        orchestrator: Orchestrator,
        repos: Repos,
        config: BuildsConfig,
    ) -> anyhow::Result<Builds> {
        for build in store.unfinished_builds().await? {
            store
                .finish_build(build.id, BuildState::Failed, Some("abandoned: the server stopped during the build"))
                .await?;
        }
        tokio::fs::create_dir_all(&config.logs_dir).await.context("creating the build log directory")?;
        let inner = Inner {
            store,
            orchestrator,
            repos,
            config,
            gate: std::sync::OnceLock::new(),
            running: Mutex::default(),
            slots: Mutex::default(),
            tasks: TaskTracker::new(),
        };
        Ok(Builds { inner: Arc::new(inner) })
    }

    /// The check every build's release passes before it is stored (set once; later calls are
    /// ignored).
    pub fn set_release_gate(&self, gate: Arc<dyn ReleaseGate>) {
        let _ = self.inner.gate.set(gate);
    }

    pub fn repos(&self) -> &Repos {
        &self.inner.repos
    }

    /// Records the build and starts it; refused when the app has an unfinished build (unless
    /// `replace`, which cancels that one first).
    pub async fn start_build(&self, mut order: BuildOrder) -> Result<Started, StartError> {
        let inner = &self.inner;
        let app = order.app.clone();
        let sha12: String = order.commit.chars().take(12).collect();
        // `team/app` as two path components: `team-app` could name two apps.
        let template = format!("berth/{}/{}:{sha12}-{{build}}", app.team, app.name);
        fn new<'a>(app_id: i64, order: &'a BuildOrder, template: &'a str) -> NewBuild<'a> {
            NewBuild {
                app_id,
                commit: &order.commit,
                git_ref: &order.git_ref,
                pusher: &order.pusher,
                trigger: order.trigger,
                image_template: template,
            }
        }
        let row = match inner.store.insert_build(new(app.id, &order, &template)).await.map_err(store_error)? {
            BuildInsert::Created(row) => row,
            BuildInsert::Busy(running) if order.replace => {
                self.cancel(app.id, None, "replaced by a newer push").await;
                match inner.store.insert_build(new(app.id, &order, &template)).await.map_err(store_error)? {
                    BuildInsert::Created(row) => row,
                    BuildInsert::Busy(_) => return Err(StartError::Busy(Box::new(running))),
                }
            }
            BuildInsert::Busy(running) => return Err(StartError::Busy(Box::new(running))),
        };
        let log = match BuildLog::create(self.log_path(app.id, row.number)) {
            Ok(log) => Arc::new(log),
            Err(error) => {
                // The record must not keep the app locked.
                let message = format!("{error:#}");
                let _ = inner.store.finish_build(row.id, BuildState::Failed, Some(&message)).await;
                return Err(StartError::Failed(error));
            }
        };
        let (outcome_tx, outcome) = watch::channel(None);
        let cancel = CancellationToken::new();
        inner.running.lock().expect("BUG: builds lock poisoned").insert(
            app.id,
            Running { number: row.number, cancel: cancel.clone(), log: log.clone(), outcome: outcome.clone() },
        );
        let builds = self.clone();
        let (task_row, task_log) = (row.clone(), log.clone());
        inner.tasks.spawn(async move {
            let result = builds.run(&mut order, &task_row, &task_log, &cancel).await;
            let outcome = builds.conclude(&order.app, &task_row, &task_log, result).await;
            task_log.finish();
            {
                let mut running = builds.inner.running.lock().expect("BUG: builds lock poisoned");
                if running.get(&order.app.id).is_some_and(|r| r.number == task_row.number) {
                    running.remove(&order.app.id);
                }
            }
            outcome_tx.send_replace(Some(outcome));
            builds.clean_up(&order.app, &task_row).await;
        });
        Ok(Started { row, log, outcome })
    }

    /// Cancels the app's running build; returns its number once it has ended (its record says
    /// canceled and the app is free), or `None` when none runs. A release already rolling out
    /// is not interrupted halfway: it completes on its own, and the build ends at once.
    /// With `only`, the build is canceled only if it is that one (a push cancels its own build,
    /// never the next push's).
    pub async fn cancel(&self, app_id: i64, only: Option<i64>, why: &str) -> Option<i64> {
        let (number, cancel, log, mut outcome) = {
            let running = self.inner.running.lock().expect("BUG: builds lock poisoned");
            let build = running.get(&app_id).filter(|b| only.is_none_or(|n| n == b.number))?;
            (build.number, build.cancel.clone(), build.log.clone(), build.outcome.clone())
        };
        log.push(format!("canceling: {why}"));
        cancel.cancel();
        let _ = outcome.wait_for(Option::is_some).await;
        Some(number)
    }

    /// Cancels every running build without waiting (the server is stopping: the pushers'
    /// connections end when their builds do).
    pub fn cancel_all(&self) {
        let running = self.inner.running.lock().expect("BUG: builds lock poisoned");
        for build in running.values() {
            build.log.push("canceling: the server is stopping");
            build.cancel.cancel();
        }
    }

    /// The live log of the app's build `number`, while it runs.
    pub fn live_log(&self, app_id: i64, number: i64) -> Option<Arc<BuildLog>> {
        let running = self.inner.running.lock().expect("BUG: builds lock poisoned");
        running.get(&app_id).filter(|r| r.number == number).map(|r| r.log.clone())
    }

    /// The stored log of a build.
    pub fn log_path(&self, app_id: i64, number: i64) -> PathBuf {
        self.inner.config.logs_dir.join(app_id.to_string()).join(format!("{number}.log"))
    }

    /// An app is being deleted: its running build is canceled, then its repository, build logs
    /// and built images go (images still used by a container stay until the engine lets them).
    pub async fn forget_app(&self, app: &AppRow) {
        self.cancel(app.id, None, "the app is being deleted").await;
        let repo = self.inner.repos.path(&app.team, &app.name);
        for dir in [repo, self.inner.config.logs_dir.join(app.id.to_string())] {
            if let Err(error) = tokio::fs::remove_dir_all(&dir).await
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, dir = %dir.display(), "removing a deleted app's files");
            }
        }
        let owner = format!("{}/{}", app.team, app.name);
        hosts::clean_images(self.inner.orchestrator.links(), &owner, &HashSet::new(), u64::MAX).await;
    }

    /// Cancels every running build and waits until their tasks have ended.
    pub async fn shutdown(&self) {
        self.cancel_all();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// The build itself and its release; `Err` carries the state and reason it ended with.
    async fn run(
        &self,
        order: &mut BuildOrder,
        row: &BuildRow,
        log: &BuildLog,
        cancel: &CancellationToken,
    ) -> Result<u32, Stop> {
        let inner = &self.inner;
        let app = order.app.clone();
        let failed = |e: anyhow::Error| (BuildState::Failed, format!("{e:#}"));
        let canceled = || (BuildState::Canceled, "canceled".to_string());
        let settings = inner.store.build_settings(app.id).await.map_err(|e| failed(e.into()))?;
        log.push(format!(
            "build {} of {}/{}: commit {} ({}) by {}",
            row.number, app.team, app.name, order.commit, order.git_ref, order.pusher
        ));
        let repo = inner.repos.path(&app.team, &app.name);
        let placeholder = Context::Archive { tar: Vec::new(), objects: ObjectDirs::default() };
        let (context, quarantine) = match std::mem::replace(&mut order.context, placeholder) {
            Context::Archive { tar, objects } => (tar, Some(objects)),
            Context::Fetch { url, branch } => {
                log.push(format!("fetching {} from {}", order.commit, redact_url(&url)));
                let repo = inner.repos.ensure(&app.team, &app.name, &branch).await.map_err(failed)?;
                let fetch = inner.repos.fetch(&repo, &url, &branch, &order.commit);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(canceled()),
                    result = fetch => result.map_err(failed)?,
                }
                order.context = Context::Fetch { url, branch };
                let objects = ObjectDirs::default();
                let tar = inner
                    .repos
                    .archive(&repo, &order.commit, &settings.context_dir, &settings.dockerfile, &objects)
                    .await
                    .map_err(failed)?;
                (tar, None)
            }
        };
        if context.len() > MAX_CONTEXT_BYTES {
            return Err(failed(anyhow!(
                "the build context is {} MiB; at most {} MiB (leave large files out with .dockerignore)",
                context.len() >> 20,
                MAX_CONTEXT_BYTES >> 20
            )));
        }
        let (host, target, slot) = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err((BuildState::Canceled, "canceled while waiting for a build slot".into())),
            chosen = self.build_host(log) => chosen.map_err(failed)?,
        };
        if let Some(disk) = target.disk().await {
            let needed = inner.config.min_free_bytes.max(disk.total / 20);
            if disk.free < needed {
                return Err(failed(anyhow!(
                    "host {host} has {} MiB free for images (needs {} MiB): the build was refused; free disk space there",
                    disk.free >> 20,
                    needed >> 20
                )));
            }
        }
        inner.store.start_build(row.id, &host).await.map_err(|e| failed(e.into()))?;
        log.push(format!("building on {host} as {} ({} bytes of context)", row.image, context.len()));
        let spec = BuildSpec {
            tag: row.image.clone(),
            dockerfile: settings.dockerfile.clone(),
            build_args: settings.build_args.clone().into_iter().collect(),
            labels: HashMap::from([
                (labels::IMAGE_APP.to_string(), format!("{}/{}", app.team, app.name)),
                (labels::IMAGE_BUILD.to_string(), row.number.to_string()),
                (labels::IMAGE_COMMIT.to_string(), order.commit.clone()),
            ]),
            no_cache: order.no_cache,
        };
        let started = target.build(inner.orchestrator.links(), spec, bytes::Bytes::from(context));
        let mut events = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(canceled()),
            events = started => events.map_err(failed)?,
        };
        let timeout = Duration::from_secs(settings.timeout_secs.max(1));
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(canceled()),
                event = events.next() => match event {
                    Some(BuildEvent::Line(line)) => log.push(line),
                    Some(BuildEvent::Built) => break,
                    Some(BuildEvent::Failed(error)) => return Err((BuildState::Failed, error)),
                    None => return Err((BuildState::Failed, "the build host stopped answering".into())),
                },
                () = &mut deadline => {
                    return Err((BuildState::TimedOut, format!("the build took longer than {} s", timeout.as_secs())));
                }
            }
        }
        drop(events);
        // The host may build something else while the release rolls out.
        drop(slot);
        if !inner.store.set_build_releasing(row.id).await.map_err(|e| failed(e.into()))? {
            return Err(canceled());
        }
        log.push(format!("built {}", row.image));
        inner.orchestrator.links().note_image_origin(&row.image, &host);
        if let Some(objects) = &quarantine
            && let Err(error) = inner.repos.keep_objects(&repo, objects).await
        {
            log.push(format!("warning: the pushed objects could not be kept: {error:#}"));
        }
        // Canceled while the image was finishing: nothing is released.
        if cancel.is_cancelled() {
            return Err(canceled());
        }
        self.release(order, row, log, cancel).await
    }

    /// A new release of the built image; waits until it serves or fails, logging its phases. A
    /// cancel ends the build at once; the release then completes on its own, and the branch
    /// follows it if it serves.
    async fn release(
        &self,
        order: &BuildOrder,
        row: &BuildRow,
        log: &BuildLog,
        cancel: &CancellationToken,
    ) -> Result<u32, Stop> {
        let inner = &self.inner;
        let app = &order.app;
        let failed = |message: String| (BuildState::Failed, message);
        let store_failed = |e: berth_store::StoreError| failed(format!("database error: {e}"));
        let gate = inner.gate.get();
        let admission = match gate {
            Some(gate) => Some(gate.enter().await),
            None => None,
        };
        // The spec's sealed secrets are copied as they are: a key rotation waits until it is stored.
        let sealing = inner.orchestrator.secrets().hold().await;
        let mut spec = inner
            .store
            .base_spec(app.id)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| failed("the app has no spec to release".into()))?;
        spec.image = row.image.clone();
        if let Some(gate) = gate {
            gate.admit(app, &spec).await.map_err(|why| failed(format!("release refused: {why}")))?;
        }
        let number = inner.store.create_release(app.id, &spec, None).await.map_err(store_failed)?;
        drop(sealing);
        drop(admission);
        inner.store.set_build_release(row.id, number).await.map_err(store_failed)?;
        inner.orchestrator.enqueue(app.id);
        log.push(format!("release {number} queued"));
        let branch = order.git_ref.strip_prefix("refs/heads/").unwrap_or(&order.git_ref).to_string();
        let mut seen = 0;
        loop {
            let Some(release) = inner.store.release(app.id, number).await.map_err(store_failed)? else {
                return Err(failed(format!("release {number} disappeared (the app was deleted)")));
            };
            let events = inner.store.release_events(release.id).await.map_err(store_failed)?;
            for event in events.iter().skip(seen) {
                log.push(format!("release {number}: {}: {}", event.phase, event.message));
            }
            seen = events.len();
            match release.state() {
                ReleaseState::Serving | ReleaseState::Superseded => {
                    if order.trigger == "webhook" && !self.superseded(app.id, row.number).await {
                        // No git push moves the branch: it follows what is deployed.
                        self.follow_branch(app, &branch, &order.commit, log).await;
                    }
                    return Ok(number as u32);
                }
                ReleaseState::Failed => {
                    let why = release.message.unwrap_or_else(|| "failed".into());
                    return Err(failed(format!("release {number} failed: {why}")));
                }
                ReleaseState::Queued | ReleaseState::InProgress => {}
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = cancel.cancelled() => {
                    // The pusher is gone before git could move the branch: move it here if
                    // the release serves.
                    let builds = self.clone();
                    let (app, commit, build) = (app.clone(), order.commit.clone(), row.number);
                    inner.tasks.spawn(async move { builds.branch_after(app, build, number, branch, commit).await });
                    return Err((
                        BuildState::Canceled,
                        format!("canceled while release {number} rolls out; the release completes on its own"),
                    ));
                }
            }
        }
    }

    /// True when the app has a build newer than `number`: the branch is that build's to move.
    async fn superseded(&self, app_id: i64, number: i64) -> bool {
        let newest = self.inner.store.builds(app_id, 1).await.ok().and_then(|b| b.first().map(|b| b.number));
        newest.is_some_and(|newest| newest > number)
    }

    /// Waits for release `number` (of build `build`) to finish; moves `branch` to `commit` if it
    /// serves and no newer build came since.
    async fn branch_after(&self, app: AppRow, build: i64, number: i64, branch: String, commit: String) {
        loop {
            match self.inner.store.release(app.id, number).await {
                Ok(Some(release)) if release.state() == ReleaseState::Serving => {
                    if self.superseded(app.id, build).await {
                        return;
                    }
                    let repo = self.inner.repos.path(&app.team, &app.name);
                    if let Err(error) = self.inner.repos.set_branch(&repo, &branch, &commit).await {
                        tracing::warn!(error = format!("{error:#}"), app = app.name, "moving the deploy branch");
                    }
                    return;
                }
                Ok(Some(release)) if !release.state().is_finished() => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn follow_branch(&self, app: &AppRow, branch: &str, commit: &str, log: &BuildLog) {
        let repo = self.inner.repos.path(&app.team, &app.name);
        if let Err(error) = self.inner.repos.set_branch(&repo, branch, commit).await {
            log.push(format!("warning: could not move {branch} to the deployed commit: {error:#}"));
        }
    }

    /// Records how the build ended and says so in its log.
    async fn conclude(&self, app: &AppRow, row: &BuildRow, log: &BuildLog, result: Result<u32, Stop>) -> Outcome {
        let outcome = match result {
            Ok(release) => {
                let url = self.inner.orchestrator.app_url(&app.name);
                Outcome {
                    state: BuildState::Succeeded,
                    serving: Some(release),
                    message: format!("release {release} serves {url}"),
                }
            }
            Err((state, message)) => Outcome { state, serving: None, message },
        };
        if let Err(error) = self.inner.store.finish_build(row.id, outcome.state, Some(&outcome.message)).await {
            tracing::error!(%error, build = row.id, "recording a build's end");
        }
        let verdict = match outcome.state {
            BuildState::Succeeded => "done",
            other => other.as_str(),
        };
        log.push(format!("build {} {verdict}: {}", row.number, outcome.message));
        outcome
    }

    /// After a build: a failed build's image goes at once; of the app's other images only those
    /// of the serving release, the newest releases and unfinished ones stay; the build cache is
    /// pruned when over its size; old build records and logs go.
    async fn clean_up(&self, app: &AppRow, row: &BuildRow) {
        let inner = &self.inner;
        if let Err(error) = self.clean_images(app).await {
            tracing::warn!(error = format!("{error:#}"), app = app.name, "cleaning up images");
        }
        match inner.store.trim_builds(app.id, KEPT_BUILDS).await {
            Ok(trimmed) => {
                for number in trimmed {
                    let _ = tokio::fs::remove_file(self.log_path(app.id, number)).await;
                }
            }
            Err(error) => tracing::warn!(%error, "trimming build records"),
        }
        tracing::debug!(build = row.number, app = app.name, "build cleaned up");
    }

    async fn clean_images(&self, app: &AppRow) -> anyhow::Result<()> {
        let inner = &self.inner;
        let releases = inner.store.releases(app.id).await?;
        let mut keep: HashSet<String> = HashSet::new();
        for (index, release) in releases.iter().enumerate() {
            let needed = index < KEPT_RELEASE_IMAGES + 1
                || Some(release.number) == app.serving_release
                || !release.state().is_finished()
                || release.state() == ReleaseState::Serving;
            if needed {
                keep.insert(release.spec().image);
            }
        }
        let owner = format!("{}/{}", app.team, app.name);
        hosts::clean_images(inner.orchestrator.links(), &owner, &keep, inner.config.cache_max_bytes).await;
        Ok(())
    }

    /// The host to build on (a host labelled `builder` first), once it has a free build slot
    /// (one per host unless its `build-slots` label says more).
    async fn build_host(
        &self,
        log: &BuildLog,
    ) -> anyhow::Result<(String, BuildTarget, tokio::sync::OwnedSemaphorePermit)> {
        let inner = &self.inner;
        let hosts = inner.store.hosts().await?;
        let mut candidates: Vec<_> = hosts
            .into_iter()
            .filter(|h| h.state() == berth_wire::api::HostState::Up)
            .filter_map(|h| {
                let link = inner.orchestrator.links().get(&h.name)?;
                let target = match link.local_agent() {
                    Some(agent) => BuildTarget::Local(agent.runtime().clone()),
                    None => BuildTarget::Remote(link),
                };
                Some((h, target))
            })
            .collect();
        // Hosts labelled `builder` first; then the server's own host (its image needs no
        // shipping to run there).
        candidates
            .sort_by_key(|(h, target)| (!h.labels().contains_key("builder"), !matches!(target, BuildTarget::Local(_))));
        let (host, target) =
            candidates.into_iter().next().ok_or_else(|| anyhow!("no host can build: no host is up"))?;
        let slots: usize = host.labels().get("build-slots").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        let semaphore = inner
            .slots
            .lock()
            .expect("BUG: slots lock poisoned")
            .entry(host.name.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(slots)))
            .clone();
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                log.push(format!("waiting for a build slot on {}", host.name));
                semaphore.acquire_owned().await.context("build slots closed")?
            }
        };
        Ok((host.name, target, permit))
    }
}

fn store_error(error: berth_store::StoreError) -> StartError {
    StartError::Failed(anyhow::Error::new(error).context("database error"))
}
