//! The build coordinator inside one process: a real store, the real orchestrator and ingress
//! table, an agent on the in-memory runtime whose "builds" run the Dockerfile's steps (`RUN false`
//! fails, `RUN sleep N` takes N seconds). No Docker, no git client.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use berth_agent::memory::MemoryRuntime;
use berth_agent::{AgentConfig, ContainerRuntime, EndpointMode, ProbeConfig};
use berth_control::builds::{BuildOrder, Builds, BuildsConfig, Context, Outcome, StartError, Started};
use berth_control::repos::{ObjectDirs, Repos};
use berth_control::{HostLink, HostLinks, Orchestrator, OrchestratorConfig};
use berth_ingress::{Ingress, IngressConfig};
use berth_store::{AppRow, Store};
use berth_wire::AppSpec;
use berth_wire::api::ReleaseState;
use berth_wire::builds::BuildState;

struct Plane {
    _dir: tempfile::TempDir,
    store: Store,
    runtime: Arc<MemoryRuntime>,
    builds: Builds,
    app: AppRow,
}

async fn plane() -> Plane {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let store = berth_store::testing::store(dir.path()).await;
    store.bootstrap("token hash", "password hash").await.unwrap();
    let team_id = store.team_id("main").await.unwrap().expect("team main");
    let runtime = MemoryRuntime::new();
    store.register_local_host("h1", "local", &runtime.capacity().await).await.unwrap();
    let links = HostLinks::default();
    let mut agent_config = AgentConfig::new("h1", EndpointMode::Published(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    agent_config.probe = ProbeConfig {
        interval_starting: Duration::from_millis(10),
        interval_ready: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        ready_after: 2,
        unready_after: 3,
    };
    let link = HostLink::new("h1");
    let desired = link.desired_receiver();
    links.add(link.attach_local(berth_agent::spawn(runtime.clone(), agent_config, desired)));
    let config = OrchestratorConfig {
        deploy_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(2),
        stop_grace_secs: 1,
        ..OrchestratorConfig::new("localhost", 80)
    };
    let ingress = Ingress::new(IngressConfig::default());
    let orchestrator = Orchestrator::start(store.clone(), ingress, links, config).await.unwrap();
    let program = std::env::current_exe().unwrap();
    let repos = Repos::open(dir.path(), &program).await.expect("git is installed");
    let builds_config =
        BuildsConfig { logs_dir: dir.path().join("builds"), cache_max_bytes: 1 << 30, min_free_bytes: 1 << 20 };
    let builds = Builds::start(store.clone(), orchestrator, repos, builds_config).await.unwrap();
    let spec = AppSpec {
        image: String::new(),
        port: 8080,
        replicas: 1,
        env: BTreeMap::new(),
        secrets: Default::default(),
        health_path: Some("/up".into()),
        cpu_millis: None,
        memory_mb: None,
        constraints: BTreeMap::new(),
        privileges: Default::default(),
        protocol: Default::default(),
    };
    let app_id = store.create_app(team_id, "web", &spec).await.unwrap();
    let app = store.app_by_id(app_id).await.unwrap().unwrap();
    Plane { _dir: dir, store, runtime, builds, app }
}

/// A context holding only a Dockerfile.
fn context(dockerfile: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "Dockerfile", dockerfile.as_bytes()).unwrap();
    builder.into_inner().unwrap()
}

impl Plane {
    fn order(&self, commit_digit: char, dockerfile: &str, replace: bool) -> BuildOrder {
        BuildOrder {
            app: self.app.clone(),
            commit: commit_digit.to_string().repeat(40),
            git_ref: "refs/heads/main".into(),
            pusher: "dev@example.com".into(),
            trigger: "push",
            context: Context::Archive { tar: context(dockerfile), objects: ObjectDirs::default() },
            no_cache: false,
            replace,
        }
    }

    async fn start(&self, commit_digit: char, dockerfile: &str) -> Started {
        match self.builds.start_build(self.order(commit_digit, dockerfile, false)).await {
            Ok(started) => started,
            Err(error) => panic!("the build did not start: {}", describe(&error)),
        }
    }

    async fn state(&self, number: i64) -> BuildState {
        self.store.build(self.app.id, number).await.unwrap().expect("the build exists").state()
    }
}

fn describe(error: &StartError) -> String {
    match error {
        StartError::Busy(running) => format!("busy with build {} ({:?})", running.number, running.state()),
        StartError::Failed(error) => format!("{error:#}"),
    }
}

async fn outcome(started: &mut Started) -> Outcome {
    let waited = tokio::time::timeout(Duration::from_secs(20), started.outcome.wait_for(Option::is_some)).await;
    waited.expect("the build ends").expect("the outcome is sent").clone().expect("checked")
}

async fn wait_state(plane: &Plane, number: i64, want: BuildState) {
    for _ in 0..200 {
        if plane.state(number).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("build {number} never became {want:?} (it is {:?})", plane.state(number).await);
}

#[tokio::test]
async fn a_built_image_is_released_and_serves() {
    let plane = plane().await;
    let mut started = plane.start('a', "FROM scratch\nCOPY app /app\n").await;
    let outcome = outcome(&mut started).await;
    assert_eq!((outcome.state, outcome.serving), (BuildState::Succeeded, Some(1)), "{}", outcome.message);
    let release = plane.store.release(plane.app.id, 1).await.unwrap().expect("release 1");
    assert_eq!(release.state(), ReleaseState::Serving);
    assert_eq!(release.spec().image, format!("berth/main/web:{}-1", "a".repeat(12)));
    assert!(plane.runtime.has_image(&release.spec().image).await.unwrap(), "the host's runtime built it");
    let lines: Vec<String> = started.log.lines_from(0).into_iter().map(|l| l.line).collect();
    assert!(lines[0].starts_with("build 1 of main/web"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "Step 2/2 : COPY app /app"), "{lines:?}");
    assert!(lines.last().unwrap().starts_with("build 1 done: release 1 serves"), "{lines:?}");
    let build = plane.store.build(plane.app.id, 1).await.unwrap().unwrap();
    assert_eq!(
        (build.state(), build.release_number, build.host.as_deref()),
        (BuildState::Succeeded, Some(1), Some("h1"))
    );
}

/// A gate that refuses every release after the first `allowed`, as a quota taken by a deploy
/// while the build ran would.
struct CountingGate {
    allowed: std::sync::atomic::AtomicUsize,
}

impl berth_control::builds::ReleaseGate for CountingGate {
    fn enter(&self) -> futures::future::BoxFuture<'_, Box<dyn Send>> {
        Box::pin(async { Box::new(()) as Box<dyn Send> })
    }

    fn admit<'a>(
        &'a self,
        app: &'a berth_store::AppRow,
        spec: &'a AppSpec,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        let left =
            self.allowed.fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| {
                n.checked_sub(1)
            });
        let answer = match left {
            Ok(_) => Ok(()),
            Err(_) => {
                Err(format!("team {}'s quota allows 1 replicas; this would make {}", app.team, spec.replicas + 1))
            }
        };
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn a_release_the_gate_refuses_when_the_build_ends_fails_the_build_and_releases_nothing() {
    let plane = plane().await;
    plane.builds.set_release_gate(std::sync::Arc::new(CountingGate { allowed: 1.into() }));
    let mut first = plane.start('a', "FROM scratch\nCOPY app /app\n").await;
    assert_eq!(outcome(&mut first).await.state, BuildState::Succeeded);
    let mut second = plane.start('b', "FROM scratch\nCOPY app /app\n").await;
    let outcome = outcome(&mut second).await;
    assert_eq!(outcome.state, BuildState::Failed);
    assert!(outcome.message.contains("release refused: team main's quota allows 1 replicas"), "{}", outcome.message);
    let releases = plane.store.releases(plane.app.id).await.unwrap();
    assert_eq!(releases.len(), 1, "only the first build released");
}

#[tokio::test]
async fn a_failing_build_fails_with_the_builders_error_and_releases_nothing() {
    let plane = plane().await;
    let mut started = plane.start('b', "FROM scratch\nRUN false\n").await;
    let outcome = outcome(&mut started).await;
    assert_eq!(outcome.state, BuildState::Failed);
    assert!(outcome.message.contains("non-zero code"), "{}", outcome.message);
    assert!(plane.store.releases(plane.app.id).await.unwrap().is_empty(), "a failed build makes no release");
    let last = started.log.lines_from(0).pop().expect("the log has lines").line;
    assert!(last.starts_with("build 1 failed: The command"), "{last}");
}

#[tokio::test]
async fn one_build_per_app_a_cancel_frees_it_at_once_and_replace_cancels_the_running_one() {
    let plane = plane().await;
    let slow = plane.start('c', "FROM scratch\nRUN sleep 60\n").await;
    wait_state(&plane, 1, BuildState::Building).await;
    match plane.builds.start_build(plane.order('d', "FROM scratch\n", false)).await {
        Err(StartError::Busy(running)) => assert_eq!(running.number, 1),
        _ => panic!("a second build of the app must be refused"),
    }
    // Cancel returns once the record says canceled: the app is free at once.
    assert_eq!(plane.builds.cancel(plane.app.id, Some(2), "not this one").await, None, "only the named build");
    assert_eq!(plane.builds.cancel(plane.app.id, Some(1), "test").await, Some(1));
    assert_eq!(plane.state(1).await, BuildState::Canceled);
    drop(slow);
    let _second = plane.start('e', "FROM scratch\nRUN sleep 60\n").await;
    wait_state(&plane, 2, BuildState::Building).await;
    // `replace` cancels the running build and starts its own.
    let mut third = match plane.builds.start_build(plane.order('f', "FROM scratch\n", true)).await {
        Ok(started) => started,
        Err(error) => panic!("replace must start the build: {}", describe(&error)),
    };
    assert_eq!(plane.state(2).await, BuildState::Canceled);
    assert_eq!(third.row.number, 3);
    assert_eq!(outcome(&mut third).await.state, BuildState::Succeeded);
}

#[tokio::test]
async fn a_build_past_its_timeout_is_timed_out() {
    let plane = plane().await;
    let mut settings = plane.store.build_settings(plane.app.id).await.unwrap();
    settings.timeout_secs = 1;
    plane.store.set_build_settings(plane.app.id, &settings).await.unwrap();
    let mut started = plane.start('g', "FROM scratch\nRUN sleep 30\n").await;
    let outcome = outcome(&mut started).await;
    assert_eq!(outcome.state, BuildState::TimedOut, "{}", outcome.message);
    assert_eq!(plane.state(1).await, BuildState::TimedOut);
    // The app is free again: the next build is accepted and runs.
    let next = plane.start('h', "FROM scratch\nRUN sleep 60\n").await;
    assert_eq!(next.row.number, 2);
    wait_state(&plane, 2, BuildState::Building).await;
}

#[tokio::test]
async fn a_host_runs_one_build_at_a_time_and_the_next_waits_for_its_slot() {
    let plane = plane().await;
    let team_id = plane.store.team_id("main").await.unwrap().unwrap();
    let spec = plane.store.base_spec(plane.app.id).await.unwrap().unwrap();
    let other_id = plane.store.create_app(team_id, "api", &spec).await.unwrap();
    let other = plane.store.app_by_id(other_id).await.unwrap().unwrap();
    let _slow = plane.start('a', "FROM scratch\nRUN sleep 60\n").await;
    wait_state(&plane, 1, BuildState::Building).await;
    // The other app's build waits for the host's only slot, and says so.
    let mut order = plane.order('b', "FROM scratch\n", false);
    order.app = other.clone();
    let mut waiting = match plane.builds.start_build(order).await {
        Ok(started) => started,
        Err(error) => panic!("another app's build is accepted: {}", describe(&error)),
    };
    for _ in 0..100 {
        if waiting.log.lines_from(0).iter().any(|l| l.line == "waiting for a build slot on h1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines: Vec<String> = waiting.log.lines_from(0).into_iter().map(|l| l.line).collect();
    assert!(lines.iter().any(|l| l == "waiting for a build slot on h1"), "{lines:?}");
    let queued = plane.store.build(other.id, 1).await.unwrap().unwrap();
    assert_eq!(queued.state(), BuildState::Queued);
    // The slot frees when the first build ends; the waiting one then builds and releases.
    plane.builds.cancel(plane.app.id, None, "test").await;
    assert_eq!(outcome(&mut waiting).await.state, BuildState::Succeeded);
}
