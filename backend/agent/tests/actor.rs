//! The agent actor against the in-memory runtime: every container is a real HTTP listener the
//! agent's real probes reach, so these run the whole actor in milliseconds, without Docker.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use berth_agent::images::ImageSource;
use berth_agent::memory::{Behaviour, MemoryRuntime};
use berth_agent::runtime::ContainerSpec;
use berth_agent::{AgentConfig, AgentHandle, ByteStream, ContainerRuntime, EndpointMode, Observed, ProbeConfig};
use berth_wire::agent::{ContainerPhase, DesiredContainer};
use berth_wire::labels;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;

const HOST: &str = "h1";

fn config() -> AgentConfig {
    let mut config = AgentConfig::new(HOST, EndpointMode::Published(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    config.probe = ProbeConfig {
        interval_starting: Duration::from_millis(10),
        interval_ready: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        ready_after: 2,
        unready_after: 3,
    };
    config.max_restart_backoff = Duration::from_millis(400);
    config.resync_every = Duration::from_millis(200);
    config.usage_every = Duration::from_millis(50);
    config
}

fn desired(replica: &str, image: &str) -> DesiredContainer {
    DesiredContainer {
        replica_id: replica.into(),
        team: "main".into(),
        app: "web".into(),
        release: 1,
        image: image.into(),
        port: 8080,
        env: BTreeMap::new(),
        health_path: Some("/up".into()),
        cpu_millis: None,
        memory_mb: None,
        stop_grace_secs: 1,
        privileges: Default::default(),
    }
}

struct Agent {
    handle: AgentHandle,
    desired: watch::Sender<Option<Vec<DesiredContainer>>>,
}

impl Agent {
    fn spawn(runtime: &Arc<MemoryRuntime>, config: AgentConfig) -> Agent {
        let (desired, rx) = watch::channel(None);
        let runtime: Arc<dyn ContainerRuntime> = runtime.clone();
        Agent { handle: berth_agent::spawn(runtime, config, rx), desired }
    }

    fn want(&self, containers: Vec<DesiredContainer>) {
        self.desired.send_replace(Some(containers));
    }

    /// The first report that satisfies `done`; fails the test after 5 s with the last report.
    async fn until(&self, what: &str, done: impl Fn(&Observed) -> bool) -> Observed {
        let mut observed = self.handle.observed();
        let wait = observed.wait_for(|o| done(o));
        match tokio::time::timeout(Duration::from_secs(5), wait).await {
            Ok(Ok(report)) => report.clone(),
            _ => panic!("{what}: not reached; last report: {:#?}", self.handle.observed().borrow()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn label_map(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn all_ready(observed: &Observed, replicas: &[&str]) -> bool {
    replicas.iter().all(|r| observed.get(*r).is_some_and(|o| o.ready()))
}

fn phase(observed: &Observed, replica: &str) -> Option<ContainerPhase> {
    observed.get(replica).map(|o| o.phase)
}

#[tokio::test]
async fn desired_containers_start_become_ready_and_undesired_ones_stop() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("web:1");
    let agent = Agent::spawn(&runtime, config());
    agent.want(vec![desired("r1", "web:1"), desired("r2", "web:1")]);
    let observed = agent.until("both ready", |o| all_ready(o, &["r1", "r2"])).await;
    for replica in ["r1", "r2"] {
        let endpoint = observed[replica].endpoint.as_deref().expect("a ready replica has an endpoint");
        assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
    }
    let running = runtime.running();
    assert_eq!(running.len(), 2);
    for container in &running {
        assert_eq!(container.labels[labels::HOST], HOST);
        assert_eq!(container.labels[labels::MANAGED], "1");
        assert_eq!(container.release(), "1");
    }

    agent.want(vec![desired("r2", "web:1")]);
    agent.until("r1 gone", |o| !o.contains_key("r1") && all_ready(o, &["r2"])).await;
    let left: Vec<_> = runtime.containers().into_iter().map(|c| c.replica().to_string()).collect();
    assert_eq!(left, ["r2"], "r1's container is stopped and removed");
}

#[tokio::test]
async fn nothing_is_touched_before_the_first_desired_list() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("web:1");
    let leftover = ContainerSpec {
        name: "berth-main-web-r1-old".into(),
        labels: label_map(&[(labels::MANAGED, "1"), (labels::HOST, HOST), (labels::REPLICA, "old")]),
        desired: desired("old", "web:1"),
        publish_on: None,
    };
    runtime.create_behind(&leftover, false).await;
    let agent = Agent::spawn(&runtime, config());
    // The agent's resync period passes several times over: it still must not act.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runtime.running().len(), 1, "a container is removed before the control plane declared anything");
    agent.want(Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !runtime.containers().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the undesired container was never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_crashed_container_is_restarted_in_place_at_once() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("web:1");
    let agent = Agent::spawn(&runtime, config());
    agent.want(vec![desired("r1", "web:1")]);
    let before = agent.until("ready", |o| all_ready(o, &["r1"])).await;
    let container = before["r1"].container_id.clone().expect("a ready replica has a container");
    runtime.crash(&container, 137);
    let after = agent.until("restarted and ready", |o| all_ready(o, &["r1"]) && o["r1"].restarts == 1).await;
    assert_eq!(after["r1"].container_id.as_deref(), Some(container.as_str()), "restarted, not re-created");
    assert_eq!(runtime.creates(), 1);
    assert_eq!(runtime.containers()[0].starts, 2);
}

#[tokio::test]
async fn a_crash_loop_backs_off_to_its_cap_and_says_why() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("crash:1");
    runtime.set_behaviour("crash:1", Behaviour::ExitOnStart(3));
    let mut config = config();
    config.max_restart_backoff = Duration::from_secs(1);
    let agent = Agent::spawn(&runtime, config);
    agent.want(vec![desired("r1", "crash:1")]);
    let says = |wait: &'static str| {
        move |o: &Observed| o.get("r1").and_then(|r| r.message.as_deref()).is_some_and(|m| m.ends_with(wait))
    };
    // The first crash is retried at once, then 0.5 s, then 1 s, which is the cap.
    agent.until("the second backoff", says("retrying in 0.5s")).await;
    let capped = agent.until("the capped backoff", says("retrying in 1.0s")).await;
    let r1 = &capped["r1"];
    assert_eq!(r1.phase, ContainerPhase::Crashed);
    assert!(r1.message.as_deref().unwrap_or_default().contains("exited with code 3"), "{r1:?}");
    let restarts = r1.restarts;
    let later = agent.until("one more restart", |o| o.get("r1").is_some_and(|r| r.restarts > restarts)).await;
    assert!(later["r1"].message.as_deref().unwrap_or_default().ends_with("retrying in 1.0s"), "stays at the cap");
    assert_eq!(runtime.creates(), 1, "a crash loop restarts its container, it does not pile up new ones");
}

#[tokio::test]
async fn containers_from_before_an_agent_restart_are_adopted_untouched() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("web:1");
    let wanted = vec![desired("r1", "web:1"), desired("r2", "web:1")];
    let first = Agent::spawn(&runtime, config());
    first.want(wanted.clone());
    let before = first.until("ready", |o| all_ready(o, &["r1", "r2"])).await;
    drop(first);

    let second = Agent::spawn(&runtime, config());
    second.want(wanted);
    let after = second.until("adopted and ready", |o| all_ready(o, &["r1", "r2"])).await;
    for replica in ["r1", "r2"] {
        assert_eq!(after[replica].container_id, before[replica].container_id, "{replica} keeps its container");
        assert_eq!(after[replica].restarts, 0);
    }
    assert_eq!(runtime.creates(), 2);
    assert!(runtime.containers().iter().all(|c| c.starts == 1), "no adopted container was restarted");
}

#[tokio::test]
async fn a_withdrawn_list_stands_the_agent_down_until_the_next_one_which_it_adopts() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("web:1");
    let agent = Agent::spawn(&runtime, config());
    agent.want(vec![desired("r1", "web:1")]);
    let before = agent.until("ready", |o| all_ready(o, &["r1"])).await;
    // The control plane that fed it stops leading: nothing is stopped, even a crash is left alone.
    agent.desired.send_replace(None);
    agent.until("no replica reported", |o| o.is_empty()).await;
    let container = before["r1"].container_id.clone().expect("a ready replica has a container");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runtime.running().len(), 1, "standing down stops nothing");
    runtime.crash(&container, 137);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runtime.containers()[0].starts, 1, "a stood-down agent restarts nothing");
    // The next leader's list: the container is adopted (and restarted, having crashed meanwhile),
    // and what the list no longer names is removed.
    agent.want(vec![desired("r1", "web:1")]);
    let after = agent.until("adopted and ready", |o| all_ready(o, &["r1"])).await;
    assert_eq!(after["r1"].container_id, before["r1"].container_id, "the same container");
    assert_eq!(runtime.creates(), 1);
    agent.desired.send_replace(None);
    agent.want(Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !runtime.containers().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the undesired container was never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_create_conflict_with_its_own_container_takes_that_container_up() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("web:1");
    // What a crashed predecessor leaves: its create finished after its last listing, so this
    // agent's first resync does not see the container.
    let d = desired("r1", "web:1");
    let name = format!("berth-{}-{}-r{}-{}", d.team, d.app, d.release, d.replica_id);
    let labels = label_map(&[(labels::MANAGED, "1"), (labels::HOST, HOST), (labels::REPLICA, "r1")]);
    let publish_on = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let id = runtime.create_behind(&ContainerSpec { name, labels, desired: d.clone(), publish_on }, true).await;
    let agent = Agent::spawn(&runtime, config());
    agent.want(vec![d]);
    let observed = agent.until("ready", |o| all_ready(o, &["r1"])).await;
    assert_eq!(runtime.conflicts(), 1, "the agent found its container by colliding with it");
    assert_eq!(observed["r1"].container_id.as_deref(), Some(id.as_str()));
    assert_eq!(runtime.containers().len(), 1);
    assert_eq!(runtime.containers()[0].starts, 1, "taken up as it runs, not restarted");
}

#[tokio::test]
async fn a_create_conflict_with_a_foreign_container_is_retried_and_never_adopted() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("web:1");
    let d = desired("r1", "web:1");
    let name = format!("berth-{}-{}-r{}-{}", d.team, d.app, d.release, d.replica_id);
    let foreign = label_map(&[(labels::HOST, "another-host"), (labels::REPLICA, "r1")]);
    let id = runtime
        .create_behind(&ContainerSpec { name, labels: foreign, desired: d.clone(), publish_on: None }, false)
        .await;
    let agent = Agent::spawn(&runtime, config());
    agent.want(vec![d]);
    let observed = agent
        .until("the conflict reported", |o| {
            o.get("r1").and_then(|r| r.message.as_deref()).is_some_and(|m| m.contains("already in use"))
        })
        .await;
    assert_eq!(observed["r1"].phase, ContainerPhase::Crashed, "a conflict is retried, not fatal");
    assert_ne!(observed["r1"].container_id.as_deref(), Some(id.as_str()));
    assert!(runtime.running().iter().any(|c| c.id == id), "the foreign container is left alone");
}

#[tokio::test]
async fn readiness_follows_the_probe_both_ways() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("web:1");
    let agent = Agent::spawn(&runtime, config());
    agent.want(vec![desired("r1", "web:1")]);
    agent.until("ready", |o| all_ready(o, &["r1"])).await;

    runtime.set_behaviour("web:1", Behaviour::Serve(503));
    let observed = agent.until("unready", |o| phase(o, "r1") == Some(ContainerPhase::Running)).await;
    let message = observed["r1"].message.as_deref().unwrap_or_default();
    assert!(message.contains("GET /up answered HTTP/1.1 503"), "{message}");
    assert_eq!(observed["r1"].restarts, 0, "an unready container is not restarted");

    runtime.set_behaviour("web:1", Behaviour::Serve(200));
    let observed = agent.until("ready again", |o| all_ready(o, &["r1"])).await;
    assert_eq!(observed["r1"].message, None);
}

#[tokio::test]
async fn a_container_that_never_passes_its_probe_stays_unroutable_with_the_reason() {
    let runtime = MemoryRuntime::new();
    runtime.add_image("web:1");
    runtime.set_behaviour("web:1", Behaviour::Serve(500));
    let agent = Agent::spawn(&runtime, config());
    agent.want(vec![desired("r1", "web:1")]);
    let observed = agent
        .until("the reason", |o| o.get("r1").and_then(|r| r.message.as_deref()).is_some_and(|m| m.contains("500")))
        .await;
    assert_eq!(observed["r1"].phase, ContainerPhase::Running);
    assert!(!observed["r1"].ready());
}

/// An image source backed by another host's runtime, as the control plane's relay would be.
struct OtherHost(Arc<MemoryRuntime>);

impl ImageSource for OtherHost {
    fn fetch(&self, image: &str) -> BoxFuture<'static, anyhow::Result<ByteStream>> {
        let archive = self.0.export(image);
        async move { Ok(archive) }.boxed()
    }
}

#[tokio::test]
async fn a_missing_image_is_pulled_or_shipped_or_fails_with_the_reason() {
    let runtime = MemoryRuntime::new();
    runtime.allow_pull("pulled:1");
    let other = MemoryRuntime::new();
    other.add_image("shipped:1");
    let mut config = config();
    config.image_source = Some(Arc::new(OtherHost(other)));
    let agent = Agent::spawn(&runtime, config);
    agent.want(vec![desired("a", "pulled:1"), desired("b", "shipped:1"), desired("c", "nowhere:1")]);
    let observed =
        agent.until("settled", |o| all_ready(o, &["a", "b"]) && phase(o, "c") == Some(ContainerPhase::Failed)).await;
    let message = observed["c"].message.as_deref().unwrap_or_default();
    assert!(message.contains("nowhere:1 is not on this host and pulling it failed"), "{message}");
    assert!(message.contains("No such image: nowhere:1"), "the other host's answer is named: {message}");
}
