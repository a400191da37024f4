//! The release protocol end to end inside one process: a real store (SQLite in a scratch
//! directory), the real ingress table, a real agent on the in-memory container runtime. No
//! Docker, no sockets but the containers' own listeners: each test runs in well under a second
//! or two.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_agent::memory::{Behaviour, MemoryRuntime};
use berth_agent::{AgentConfig, AgentHandle, ContainerRuntime, EndpointMode, ProbeConfig};
use berth_control::secrets::SecretScope;
use berth_control::{HostLink, HostLinks, Orchestrator, OrchestratorConfig};
use berth_ingress::{Ingress, IngressConfig};
use berth_store::Store;
use berth_wire::AppSpec;
use berth_wire::api::ReleaseState;

const HOST: &str = "h1";
const APP_HOST: &str = "web.localhost";

fn spec(image: &str, replicas: u32) -> AppSpec {
    AppSpec {
        image: image.into(),
        port: 8080,
        replicas,
        env: BTreeMap::new(),
        secrets: Default::default(),
        health_path: Some("/up".into()),
        cpu_millis: None,
        memory_mb: None,
        constraints: BTreeMap::new(),
        privileges: Default::default(),
        protocol: Default::default(),
    }
}

/// Runs an agent for `host` on `runtime`, linked to the control plane in-process.
fn local_agent(links: &HostLinks, host: &str, runtime: &Arc<MemoryRuntime>) -> AgentHandle {
    let mut agent_config = AgentConfig::new(host, EndpointMode::Published(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    agent_config.probe = ProbeConfig {
        interval_starting: Duration::from_millis(10),
        interval_ready: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        ready_after: 2,
        unready_after: 3,
    };
    agent_config.max_restart_backoff = Duration::from_millis(200);
    let link = HostLink::new(host);
    let desired = link.desired_receiver();
    let agent = berth_agent::spawn(runtime.clone(), agent_config, desired);
    links.add(link.attach_local(agent.clone()));
    agent
}

/// A control plane with one host.
struct Plane {
    _dir: tempfile::TempDir,
    store: Store,
    ingress: Arc<Ingress>,
    links: HostLinks,
    runtime: Arc<MemoryRuntime>,
    agent: AgentHandle,
    orchestrator: Orchestrator,
    config: OrchestratorConfig,
    team_id: i64,
}

impl Plane {
    async fn new() -> Plane {
        Plane::with(|_| {}).await
    }

    async fn with(configure: impl FnOnce(&mut OrchestratorConfig)) -> Plane {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let store = berth_store::testing::store(dir.path()).await;
        store.bootstrap("token hash", "password hash").await.expect("bootstrapping");
        let team_id = store.team_id("main").await.unwrap().expect("bootstrap creates team main");
        let runtime = MemoryRuntime::new();
        let capacity = runtime.capacity().await;
        store.register_local_host(HOST, "local", &capacity).await.unwrap();

        let links = HostLinks::default();
        let agent = local_agent(&links, HOST, &runtime);

        let mut config = OrchestratorConfig {
            deploy_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            stop_grace_secs: 1,
            ..OrchestratorConfig::new("localhost", 80)
        };
        configure(&mut config);
        let ingress = Ingress::new(IngressConfig::default());
        let orchestrator = Orchestrator::start(store.clone(), ingress.clone(), links.clone(), config.clone())
            .await
            .expect("starting the orchestrator");
        Plane { _dir: dir, store, ingress, links, runtime, agent, orchestrator, config, team_id }
    }

    /// Stops the orchestrator wherever it is and starts a new one on the same store, ingress and
    /// hosts, as a restarted control plane would.
    async fn restart_orchestrator(&mut self) {
        self.orchestrator.shutdown().await;
        self.orchestrator =
            Orchestrator::start(self.store.clone(), self.ingress.clone(), self.links.clone(), self.config.clone())
                .await
                .expect("restarting the orchestrator");
    }

    async fn create(&self, spec: &AppSpec) -> i64 {
        self.runtime.add_image(&spec.image);
        let app_id = self.store.create_app(self.team_id, "web", spec).await.expect("creating the app");
        self.orchestrator.enqueue(app_id);
        app_id
    }

    async fn deploy(&self, app_id: i64, spec: &AppSpec) -> i64 {
        self.runtime.add_image(&spec.image);
        let number = self.store.create_release(app_id, spec, None).await.expect("creating a release");
        self.orchestrator.enqueue(app_id);
        number
    }

    /// Waits until release `number` has finished and returns its state and message.
    async fn settled(&self, app_id: i64, number: i64) -> (ReleaseState, Option<String>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let release = self.store.release(app_id, number).await.unwrap().expect("the release exists");
            if release.state().is_finished() {
                return (release.state(), release.message.clone());
            }
            let events = self.store.release_events(release.id).await.unwrap();
            assert!(tokio::time::Instant::now() < deadline, "release {number} never finished: {events:#?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn phases(&self, app_id: i64, number: i64) -> Vec<String> {
        let release = self.store.release(app_id, number).await.unwrap().expect("the release exists");
        self.store.release_events(release.id).await.unwrap().into_iter().map(|e| e.phase).collect()
    }

    /// Running containers of the runtime, by release label.
    fn running_releases(&self) -> Vec<String> {
        let mut releases: Vec<String> = self.runtime.running().iter().map(|c| c.release().to_string()).collect();
        releases.sort();
        releases
    }

    /// The endpoints the agent reports for the running containers of `release`.
    fn endpoints_of(&self, release: &str) -> BTreeSet<SocketAddr> {
        let observed = self.agent.observed().borrow().clone();
        let replicas: BTreeSet<String> =
            self.runtime.running().iter().filter(|c| c.release() == release).map(|c| c.replica().to_string()).collect();
        observed
            .values()
            .filter(|o| replicas.contains(&o.replica_id))
            .filter_map(|o| o.endpoint.as_deref()?.parse().ok())
            .collect()
    }

    /// Sends `GET /sleep/<ms>` for the app through the ingress (served on a port of its own)
    /// and returns once the request is in flight to a replica; the task yields its status.
    async fn slow_request(&self, duration: Duration) -> tokio::task::JoinHandle<std::io::Result<u16>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port for the ingress");
        let address = listener.local_addr().expect("the ingress's address");
        tokio::spawn(self.ingress.clone().serve(listener));
        let path = format!("/sleep/{}", duration.as_millis());
        let request = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(address).await?;
            let head = format!("GET {path} HTTP/1.1\r\nHost: {APP_HOST}\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            let response = String::from_utf8_lossy(&response);
            Ok(response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0))
        });
        let endpoints: Vec<SocketAddr> = self.routed().into_iter().collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while endpoints.iter().all(|e| self.ingress.in_flight(*e) == 0) {
            assert!(tokio::time::Instant::now() < deadline, "the slow request never reached a replica");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        request
    }

    fn routed(&self) -> BTreeSet<SocketAddr> {
        self.ingress.endpoints(APP_HOST).unwrap_or_default().into_iter().collect()
    }

    /// The whole state after release `number` is serving: its replicas and only its replicas run,
    /// are routed, and are the app's only replica rows.
    async fn assert_serving_only(&self, app_id: i64, number: i64, replicas: usize) {
        let release = number.to_string();
        // Replicas stopped at the end of the release may take their stop grace to be gone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.running_releases() != vec![release.clone(); replicas] {
            assert!(tokio::time::Instant::now() < deadline, "containers running: {:?}", self.running_releases());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let endpoints = self.endpoints_of(&release);
        assert_eq!(endpoints.len(), replicas);
        // The route table follows the agents' reports, which may land a moment after the release.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.routed() != endpoints {
            assert!(tokio::time::Instant::now() < deadline, "routes {:?}, want {endpoints:?}", self.routed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let rows = self.store.replicas_of_app(app_id).await.unwrap();
        assert!(rows.iter().all(|r| r.release_number == number), "replica rows of other releases: {rows:#?}");
        assert_eq!(rows.len(), replicas);
        let app = self.store.app_by_id(app_id).await.unwrap().expect("the app exists");
        assert_eq!(app.serving_release, Some(number));
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        // The orchestrator's tasks end with the test's runtime; the agent's too, but its probes
        // would otherwise keep probing until then.
        self.agent.shutdown();
    }
}

#[tokio::test]
async fn a_release_replaces_the_serving_one_and_leaves_nothing_behind() {
    let plane = Plane::new().await;
    let app = plane.create(&spec("web:1", 2)).await;
    assert_eq!(plane.settled(app, 1).await.0, ReleaseState::Serving);
    plane.assert_serving_only(app, 1, 2).await;

    let number = plane.deploy(app, &spec("web:2", 3)).await;
    assert_eq!(plane.settled(app, number).await.0, ReleaseState::Serving);
    plane.assert_serving_only(app, number, 3).await;
    let first = plane.store.release(app, 1).await.unwrap().unwrap();
    assert_eq!(first.state(), ReleaseState::Superseded);
    let phases = plane.phases(app, number).await;
    for phase in ["scheduling", "starting", "shifting_traffic", "draining", "stopping_old", "done"] {
        assert!(phases.iter().any(|p| p == phase), "{phase} missing from {phases:?}");
    }
}

#[tokio::test]
async fn sealed_secrets_reach_the_container_in_plain_and_survive_a_key_rotation() {
    let plane = Plane::new().await;
    let keys = plane.orchestrator.secrets().clone();
    let web = SecretScope { team: "main", app: "web" };
    let mut first = spec("web:1", 1);
    first.env.insert("MODE".into(), "plain".into());
    first.secrets.insert("DB_PASSWORD".into(), keys.seal(web, "DB_PASSWORD", "hunter2"));
    let app = plane.create(&first).await;
    assert_eq!(plane.settled(app, 1).await.0, ReleaseState::Serving);
    let env = |plane: &Plane| plane.runtime.running().into_iter().map(|c| c.env).collect::<Vec<_>>();
    let expected =
        BTreeMap::from([("DB_PASSWORD".to_string(), "hunter2".to_string()), ("MODE".into(), "plain".into())]);
    assert_eq!(env(&plane), vec![expected.clone()]);
    let stored = plane.store.release(app, 1).await.unwrap().unwrap().spec();
    assert!(!stored.secrets["DB_PASSWORD"].contains("hunter2"), "{stored:?}");

    // A rotation reseals the stored value with a new key; the next release still opens it.
    let rotation = keys.rotate(&plane.store).await.unwrap();
    assert_eq!(
        (rotation.key_id.as_str(), rotation.resealed, rotation.retired.clone()),
        ("k2", 1, vec!["k1".to_string()])
    );
    let resealed = plane.store.release(app, 1).await.unwrap().unwrap().spec();
    assert!(resealed.secrets["DB_PASSWORD"].starts_with("v1:k2:"), "{resealed:?}");
    let number = plane.deploy(app, &AppSpec { image: "web:2".into(), ..resealed }).await;
    assert_eq!(plane.settled(app, number).await.0, ReleaseState::Serving);
    plane.assert_serving_only(app, number, 1).await;
    assert_eq!(env(&plane), vec![expected]);
}

#[tokio::test]
async fn a_running_replica_whose_stored_secret_stops_opening_keeps_running() {
    let plane = Plane::new().await;
    let keys = plane.orchestrator.secrets().clone();
    let web = SecretScope { team: "main", app: "web" };
    let mut first = spec("web:1", 1);
    first.secrets.insert("TOKEN".into(), keys.seal(web, "TOKEN", "ours"));
    let app = plane.create(&first).await;
    assert_eq!(plane.settled(app, 1).await.0, ReleaseState::Serving);
    let running = plane.runtime.running();
    // The stored value is swapped for one that does not open here (a restored backup, a key
    // file replaced): the next desired lists keep the container as it was told before.
    let other = SecretScope { team: "main", app: "api" };
    plane
        .store
        .rewrite_specs(|_, _, spec| -> anyhow::Result<bool> {
            spec.secrets.insert("TOKEN".into(), keys.seal(other, "TOKEN", "theirs"));
            Ok(true)
        })
        .await
        .unwrap();
    let api = plane.store.create_app(plane.team_id, "api", &spec("web:1", 1)).await.unwrap();
    plane.orchestrator.enqueue(api);
    assert_eq!(plane.settled(api, 1).await.0, ReleaseState::Serving, "other apps are not held up");
    let web_now: Vec<_> = plane
        .runtime
        .running()
        .into_iter()
        .filter(|c| c.labels.get("berth.app").map(String::as_str) == Some("web"))
        .collect();
    assert_eq!(web_now.len(), 1);
    assert_eq!(
        (web_now[0].id.as_str(), web_now[0].env.get("TOKEN").map(String::as_str)),
        (running[0].id.as_str(), Some("ours"))
    );
}

#[tokio::test]
async fn a_secret_sealed_for_another_app_starts_nothing_and_stops_nothing() {
    let plane = Plane::new().await;
    let keys = plane.orchestrator.secrets().clone();
    let app = plane.create(&spec("web:1", 1)).await;
    assert_eq!(plane.settled(app, 1).await.0, ReleaseState::Serving);
    let running = plane.runtime.running().len();
    // A value copied from another app's spec does not open for this one: the release fails
    // before placing anything, and the serving replica keeps running.
    let other = SecretScope { team: "main", app: "api" };
    let mut stolen = spec("web:2", 1);
    stolen.secrets.insert("TOKEN".into(), keys.seal(other, "TOKEN", "theirs"));
    let number = plane.deploy(app, &stolen).await;
    let (state, message) = plane.settled(app, number).await;
    assert_eq!(state, ReleaseState::Failed);
    let message = message.unwrap_or_default();
    assert!(message.contains("secret TOKEN of main/web does not open"), "{message}");
    assert_eq!(plane.runtime.running().len(), running);
    assert!(plane.runtime.containers().iter().all(|c| !c.env.contains_key("TOKEN")));
    plane.assert_serving_only(app, 1, 1).await;
}

#[tokio::test]
async fn a_release_that_never_gets_ready_fails_and_the_serving_one_keeps_serving() {
    let plane = Plane::with(|c| c.deploy_timeout = Duration::from_millis(800)).await;
    let app = plane.create(&spec("web:1", 2)).await;
    plane.settled(app, 1).await;
    let routed_before = plane.routed();

    plane.runtime.set_behaviour("web:bad", Behaviour::Serve(500));
    let number = plane.deploy(app, &spec("web:bad", 2)).await;
    let (state, message) = plane.settled(app, number).await;
    assert_eq!(state, ReleaseState::Failed);
    let message = message.unwrap_or_default();
    assert!(message.contains("not ready within") && message.contains("500"), "{message}");
    plane.assert_serving_only(app, 1, 2).await;
    assert_eq!(plane.routed(), routed_before, "the serving release's routes never changed");
}

#[tokio::test]
async fn a_crash_looping_release_fails_at_the_crash_limit() {
    let plane = Plane::with(|c| c.crash_limit = 2).await;
    let app = plane.create(&spec("web:1", 1)).await;
    plane.settled(app, 1).await;

    plane.runtime.set_behaviour("web:crash", Behaviour::ExitOnStart(1));
    let number = plane.deploy(app, &spec("web:crash", 1)).await;
    let (state, message) = plane.settled(app, number).await;
    assert_eq!(state, ReleaseState::Failed);
    let message = message.unwrap_or_default();
    assert!(message.contains("keeps crashing") && message.contains("exited with code 1"), "{message}");
    plane.assert_serving_only(app, 1, 1).await;
}

#[tokio::test]
async fn a_release_whose_image_is_nowhere_fails_with_the_reason() {
    let plane = Plane::new().await;
    let app = plane.create(&spec("web:1", 1)).await;
    plane.settled(app, 1).await;

    // Not added to the runtime: neither present, nor pullable, nor on another host.
    let number = plane.store.create_release(app, &spec("web:missing", 1), None).await.unwrap();
    plane.orchestrator.enqueue(app);
    let (state, message) = plane.settled(app, number).await;
    assert_eq!(state, ReleaseState::Failed);
    let message = message.unwrap_or_default();
    assert!(message.contains("web:missing is not on this host"), "{message}");
    plane.assert_serving_only(app, 1, 1).await;
}

/// A control plane that stops in the middle of a release (a crash, a restart, a lost leadership)
/// and a new one started on the same state: the release completes as if nothing happened. Each
/// phase is held open until the restart, so the interruption really falls inside it.
async fn interrupted_at(phase: &str) {
    let mut plane = Plane::new().await;
    let app = plane.create(&spec("web:1", 2)).await;
    plane.settled(app, 1).await;
    let mut next = spec("web:2", 2);
    let mut in_flight = None;
    match phase {
        // No host has room for the new replicas until the restart.
        "scheduling" => next.cpu_millis = Some(3000),
        // The new replicas do not pass readiness until the restart.
        "starting" | "waiting_ready" => plane.runtime.set_behaviour("web:2", Behaviour::Serve(503)),
        // A request to an old replica stays in flight: the drain waits for it.
        "shifting_traffic" | "draining" => in_flight = Some(plane.slow_request(Duration::from_secs(1)).await),
        // The old replicas take their time to stop.
        "stopping_old" => plane.runtime.set_stop_delay(Duration::from_secs(1)),
        _ => unreachable!("no such phase {phase}"),
    }
    let number = plane.deploy(app, &next).await;
    let wanted = if phase == "scheduling" { "waiting_for_capacity" } else { phase };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !plane.phases(app, number).await.iter().any(|p| p == wanted) {
        assert!(tokio::time::Instant::now() < deadline, "the release never reached {wanted}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    plane.orchestrator.shutdown().await;
    let release = plane.store.release(app, number).await.unwrap().expect("the release exists");
    assert_eq!(release.state(), ReleaseState::InProgress, "the release was interrupted, not finished");

    match phase {
        "scheduling" => {
            let capacity = berth_wire::agent::HostCapacity { cpu_millis: 16_000, memory_mb: 8192 };
            plane.store.register_local_host(HOST, "local", &capacity).await.unwrap();
        }
        "starting" | "waiting_ready" => plane.runtime.set_behaviour("web:2", Behaviour::Serve(200)),
        "stopping_old" => plane.runtime.set_stop_delay(Duration::ZERO),
        _ => {}
    }
    plane.restart_orchestrator().await;
    let (state, message) = plane.settled(app, number).await;
    assert_eq!(state, ReleaseState::Serving, "interrupted at {phase}: {message:?}");
    plane.assert_serving_only(app, number, 2).await;
    let phases = plane.phases(app, number).await;
    assert_eq!(phases.iter().filter(|p| *p == "done").count(), 1, "{phases:?}");
    if let Some(request) = in_flight {
        let status = request.await.expect("the slow request's task").expect("the slow request");
        assert_eq!(status, 200, "the request in flight across the restart completed");
    }
}

#[tokio::test]
async fn a_release_interrupted_while_scheduling_completes() {
    interrupted_at("scheduling").await;
}

#[tokio::test]
async fn a_release_interrupted_while_starting_completes() {
    interrupted_at("starting").await;
}

#[tokio::test]
async fn a_release_interrupted_while_waiting_for_readiness_completes() {
    interrupted_at("waiting_ready").await;
}

#[tokio::test]
async fn a_release_interrupted_while_shifting_traffic_completes() {
    interrupted_at("shifting_traffic").await;
}

#[tokio::test]
async fn a_release_interrupted_while_draining_completes() {
    interrupted_at("draining").await;
}

#[tokio::test]
async fn a_release_interrupted_while_stopping_old_replicas_completes() {
    interrupted_at("stopping_old").await;
}

#[tokio::test]
async fn a_deleted_app_leaves_no_route_container_or_record() {
    let plane = Plane::new().await;
    let app = plane.create(&spec("web:1", 2)).await;
    plane.settled(app, 1).await;
    plane.orchestrator.delete(app).await.expect("deleting the app");
    assert_eq!(plane.ingress.endpoints(APP_HOST), None, "the app's host is no longer routed");
    assert!(plane.runtime.containers().is_empty(), "{:#?}", plane.runtime.containers());
    assert!(plane.store.app_by_id(app).await.unwrap().is_none());
}

#[tokio::test]
async fn an_app_deleted_while_its_release_waits_for_capacity_leaves_the_routes_at_once() {
    let plane = Plane::new().await;
    let app = plane.create(&spec("web:1", 2)).await;
    plane.settled(app, 1).await;
    // Release 2 wants more CPU than any host has: it waits, holding the app, until the deploy
    // timeout.
    let mut big = spec("web:2", 2);
    big.cpu_millis = Some(64_000);
    let number = plane.deploy(app, &big).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !plane.phases(app, number).await.iter().any(|p| p == "waiting_for_capacity") {
        assert!(tokio::time::Instant::now() < deadline, "release 2 never waited for capacity");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!plane.routed().is_empty());
    let deleting = tokio::spawn({
        let orchestrator = plane.orchestrator.clone();
        async move { orchestrator.delete(app).await }
    });
    // Nothing that routes changes in the agents' reports: the deletion itself must unroute.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while plane.ingress.endpoints(APP_HOST).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "a deleted app is still routed: {:?}", plane.routed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    deleting.abort();
}

#[tokio::test]
async fn draining_a_host_moves_its_replicas_onto_another_and_reroutes() {
    let mut plane = Plane::new().await;
    let second = MemoryRuntime::new();
    second.add_image("web:1");
    let capacity = second.capacity().await;
    plane.store.register_local_host("h2", "local", &capacity).await.unwrap();
    let second_agent = local_agent(&plane.links, "h2", &second);
    // The orchestrator learns of hosts at start, as `berth server` registers its own first.
    plane.restart_orchestrator().await;

    let app = plane.create(&spec("web:1", 2)).await;
    plane.settled(app, 1).await;
    assert_eq!(plane.runtime.running().len(), 1, "replicas of one app spread over the hosts");
    assert_eq!(second.running().len(), 1);

    plane.orchestrator.drain_host(HOST).await.expect("draining h1");
    assert!(plane.runtime.running().is_empty(), "h1 runs nothing once drained");
    assert_eq!(second.running().len(), 2);
    let on_second: BTreeSet<SocketAddr> =
        second_agent.observed().borrow().values().filter_map(|o| o.endpoint.as_deref()?.parse().ok()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while plane.routed() != on_second {
        assert!(tokio::time::Instant::now() < deadline, "routes {:?}, want {on_second:?}", plane.routed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    second_agent.shutdown();
}

#[tokio::test]
async fn an_old_replica_moved_off_a_lost_host_during_the_drain_does_not_outlive_the_release() {
    let mut plane = Plane::with(|config| {
        config.heartbeat_timeout = Duration::from_millis(300);
        config.host_check_every = Duration::from_millis(50);
        config.drain_timeout = Duration::from_secs(10);
    })
    .await;
    // A second host that counts as remote (joined), so its silence is noticed.
    let second = MemoryRuntime::new();
    second.add_image("web:1");
    second.add_image("web:2");
    plane.store.create_join_token("join", 1, i64::MAX, 1, "host").await.unwrap();
    let capacity = second.capacity().await;
    plane.store.join_host("join", "h2", "127.0.0.1", &Default::default(), &capacity, "credential").await.unwrap();
    let second_agent = local_agent(&plane.links, "h2", &second);
    plane.restart_orchestrator().await;

    let app = plane.create(&spec("web:1", 2)).await;
    assert_eq!(plane.settled(app, 1).await.0, ReleaseState::Serving);
    assert_eq!((plane.runtime.running().len(), second.running().len()), (1, 1), "one replica per host");

    // Release 2 drains release 1 for as long as a slow request runs; meanwhile h2 goes silent
    // and its release-1 replica is moved onto h1 under a new id.
    let slow = plane.slow_request(Duration::from_millis(2500)).await;
    let number = plane.deploy(app, &spec("web:2", 2)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !plane.phases(app, number).await.iter().any(|p| p == "draining") {
        assert!(tokio::time::Instant::now() < deadline, "release 2 never started draining");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    second_agent.shutdown();
    assert_eq!(plane.settled(app, number).await.0, ReleaseState::Serving);
    // (Whichever replica it reached, the slow request only held the drain open.)
    let _ = slow.await;
    let rows = plane.store.replicas_of_app(app).await.unwrap();
    assert!(rows.iter().all(|r| r.release_number == number), "replicas of release 1 outlived release 2: {rows:#?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while plane.runtime.running().iter().any(|c| c.release() != "2") {
        let running: Vec<String> = plane.runtime.running().iter().map(|c| c.release().to_string()).collect();
        assert!(tokio::time::Instant::now() < deadline, "h1 still runs {running:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A remote host whose agent the test plays: every 50 ms, unless paused, it reports each replica
/// desired on it ready at `endpoint`, with a fresh CPU and memory sample each time.
struct PlayedHost {
    endpoint: SocketAddr,
    paused: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PlayedHost {
    async fn join(plane: &Plane, name: &str, endpoint: SocketAddr) -> PlayedHost {
        plane.store.create_join_token(&format!("join-{name}"), 1, i64::MAX, 1, "host").await.unwrap();
        let capacity = berth_wire::agent::HostCapacity { cpu_millis: 4000, memory_mb: 8192 };
        plane
            .store
            .join_host(&format!("join-{name}"), name, "127.0.0.1", &Default::default(), &capacity, "credential")
            .await
            .unwrap();
        let link = plane.links.link(name);
        let mut desired = link.desired_receiver();
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let quiet = paused.clone();
        let task = tokio::spawn(async move {
            for sample in 0u64.. {
                if !quiet.load(std::sync::atomic::Ordering::SeqCst) {
                    let wanted = desired.borrow_and_update().clone().unwrap_or_default();
                    let report = wanted
                        .iter()
                        .map(|d| {
                            let observed = berth_wire::agent::ObservedContainer {
                                replica_id: d.replica_id.clone(),
                                container_id: Some(format!("c-{}", d.replica_id)),
                                phase: berth_wire::agent::ContainerPhase::Ready,
                                endpoint: Some(endpoint.to_string()),
                                restarts: 0,
                                message: None,
                                started_at: None,
                                usage: Some(berth_wire::agent::ContainerUsage {
                                    cpu_millis: sample % 1000,
                                    memory_bytes: (sample % 100 + 1) << 20,
                                }),
                            };
                            (d.replica_id.clone(), observed)
                        })
                        .collect();
                    link.report(report);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        PlayedHost { endpoint, paused, task }
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for PlayedHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// h1 (local) and a played remote h2 with short heartbeats, and `web:1` serving one replica on
/// each; the listener stands behind h2's endpoint.
async fn blip_plane() -> (Plane, PlayedHost, i64, tokio::net::TcpListener) {
    let mut plane = Plane::with(|config| {
        config.heartbeat_timeout = Duration::from_millis(300);
        config.host_check_every = Duration::from_millis(50);
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h2 = PlayedHost::join(&plane, "h2", listener.local_addr().unwrap()).await;
    plane.restart_orchestrator().await;
    let app = plane.create(&spec("web:1", 2)).await;
    assert_eq!(plane.settled(app, 1).await.0, ReleaseState::Serving);
    (plane, h2, app, listener)
}

#[tokio::test]
async fn a_host_back_from_a_blip_before_its_replacement_is_ready_keeps_serving_and_the_replacement_goes() {
    let (plane, h2, app, _listener) = blip_plane().await;
    let h2_endpoint = h2.endpoint;
    let before: BTreeSet<String> = plane.store.replicas_of_app(app).await.unwrap().into_iter().map(|r| r.id).collect();
    let on_h2 = plane.store.replicas_of_app(app).await.unwrap().into_iter().find(|r| r.host == "h2").expect("spread");
    assert!(plane.routed().contains(&h2_endpoint));

    // h2 goes quiet; its replacement on h1 will never be ready (new containers of web:1 exit).
    plane.runtime.set_behaviour("web:1", Behaviour::ExitOnStart(1));
    h2.pause(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let replacement = loop {
        let rows = plane.store.replicas_of_app(app).await.unwrap();
        if let Some(id) = rows.iter().find(|r| r.id == on_h2.id).and_then(|r| r.replaced_by.clone()) {
            assert!(rows.iter().any(|r| r.id == id && r.host == HOST), "the replacement is on h1: {rows:#?}");
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no replacement for h2's replica: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!plane.routed().contains(&h2_endpoint), "a down host's replicas are not routed");

    // h2 is back before the replacement is ready: it keeps its replica and serves again; the
    // replacement goes, and nothing of h2 was restarted or replaced.
    h2.pause(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rows: BTreeSet<String> =
            plane.store.replicas_of_app(app).await.unwrap().into_iter().map(|r| r.id).collect();
        if rows == before && plane.routed().contains(&h2_endpoint) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rows {rows:?}, want {before:?}; routed {:?}", plane.routed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rows = plane.store.replicas_of_app(app).await.unwrap();
    assert!(rows.iter().all(|r| r.replaced_by.is_none() && !r.retiring), "{rows:#?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while plane.runtime.containers().iter().any(|c| c.replica() == replacement) {
        assert!(tokio::time::Instant::now() < deadline, "h1 still has the replacement's container");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_new_orchestrator_does_not_route_a_down_hosts_replica_from_the_reports_it_inherited() {
    let (mut plane, h2, app, _listener) = blip_plane().await;
    let h2_endpoint = h2.endpoint;
    let on_h2 = plane.store.replicas_of_app(app).await.unwrap().into_iter().find(|r| r.host == "h2").expect("spread");
    // The reports published so far say h2's replica is ready; h2 goes quiet and a new
    // orchestrator (a new leader, which has heard nothing from h2 itself) inherits them.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    h2.pause(true);
    plane.links.link("h2").forget_observed();
    plane.restart_orchestrator().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rows = plane.store.replicas_of_app(app).await.unwrap();
        if rows.iter().any(|r| r.id == on_h2.id && r.replaced_by.is_some()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no replacement for h2's replica: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Well within the inherited reports' grace: h2 is down, so they do not route its replica.
    assert!(!plane.routed().contains(&h2_endpoint), "a down host's replica routed from inherited reports");
}

/// Keeps ingress node `name` reporting every 100 ms: the version of the latest published table
/// when `confirms`, else the one published when it started.
fn ingress_node(plane: &Plane, name: &'static str, confirms: bool) -> tokio::task::JoinHandle<()> {
    let store = plane.store.clone();
    tokio::spawn(async move {
        let first = store.published_version(berth_control::cluster::ROUTES).await.unwrap();
        loop {
            let latest = store.published_version(berth_control::cluster::ROUTES).await.unwrap();
            let applied = if confirms { latest } else { first };
            store.ingress_node_alive(name, "test", "127.0.0.1:1", 0, applied).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn release_messages(plane: &Plane, app: i64, number: i64) -> Vec<String> {
    let release = plane.store.release(app, number).await.unwrap().expect("the release exists");
    plane.store.release_events(release.id).await.unwrap().into_iter().map(|e| e.message).collect()
}

#[tokio::test]
async fn a_release_waits_for_the_ingress_nodes_and_names_one_that_does_not_confirm() {
    let plane = Plane::with(|config| config.drain_timeout = Duration::from_secs(1)).await;
    let app = plane.create(&spec("web:1", 1)).await;
    assert_eq!(plane.settled(app, 1).await.0, ReleaseState::Serving);

    // A node that confirms every table: the release does not wait for it in vain.
    let confirming = ingress_node(&plane, "edge-1", true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let number = plane.deploy(app, &spec("web:2", 1)).await;
    assert_eq!(plane.settled(app, number).await.0, ReleaseState::Serving);
    let messages = release_messages(&plane, app, number).await;
    assert!(!messages.iter().any(|m| m.contains("ingress/edge-1")), "{messages:#?}");
    confirming.abort();

    // A node that reports but never confirms the table without the old replica: the release
    // waits the drain timeout for it, then names it and goes on.
    let stuck = ingress_node(&plane, "edge-2", false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let number = plane.deploy(app, &spec("web:3", 1)).await;
    assert_eq!(plane.settled(app, number).await.0, ReleaseState::Serving);
    let messages = release_messages(&plane, app, number).await;
    assert!(
        messages.iter().any(|m| m.contains("ingress/edge-2") && m.contains("did not confirm")),
        "the stuck node is named: {messages:#?}"
    );
    stuck.abort();
}

#[tokio::test]
async fn a_replacement_ready_before_the_host_returns_wins_and_the_lost_replica_is_forgotten() {
    let (plane, h2, app, _listener) = blip_plane().await;
    let h2_endpoint = h2.endpoint;
    let on_h2 = plane.store.replicas_of_app(app).await.unwrap().into_iter().find(|r| r.host == "h2").expect("spread");

    h2.pause(true);
    // The replacement on h1 becomes ready: the lost replica's row goes, both replicas run on h1.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rows = plane.store.replicas_of_app(app).await.unwrap();
        if rows.len() == 2 && rows.iter().all(|r| r.host == HOST) && plane.runtime.running().len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rows {rows:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // h2 returns: its replica is no longer desired there, and nothing comes back to it.
    h2.pause(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = plane.store.replicas_of_app(app).await.unwrap();
    assert!(rows.iter().all(|r| r.host == HOST && r.id != on_h2.id), "{rows:#?}");
    assert!(!plane.routed().contains(&h2_endpoint));
}

#[tokio::test]
async fn usage_samples_do_not_recompute_the_route_table() {
    let (plane, h2, _app, _listener) = blip_plane().await;
    assert!(plane.routed().contains(&h2.endpoint));
    // h2 reports every 50 ms, each report with a new sample: over a second, twenty reports that
    // change nothing that routes. (First, let the release's last steps land.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = plane.orchestrator.route_computations();
    let observed = plane.orchestrator.observed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = plane.orchestrator.route_computations();
    assert_ne!(observed, plane.orchestrator.observed(), "the samples changed the reports");
    assert_eq!(after, before, "route tables computed for usage samples alone");
    // What routes still does: h2 going quiet takes its endpoint out.
    h2.pause(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while plane.routed().contains(&h2.endpoint) {
        assert!(tokio::time::Instant::now() < deadline, "h2's endpoint is still routed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(plane.orchestrator.route_computations() > after);
}
