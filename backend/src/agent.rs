//! The host agent: makes one Docker engine run exactly the containers desired for its host.
//!
//! It receives the desired containers as a whole list, creates, starts, probes, restarts (with
//! backoff) and stops them, and reports what it observes as a whole map. One actor task owns all
//! state; Docker calls, probes and the event stream run in helper tasks that report back by
//! message, so a slow pull never delays a crash restart. The agent only touches containers that
//! carry `berth.host=<its host>` and the other Berth labels.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_wire::agent::{ContainerPhase, ContainerUsage, DesiredContainer, HostCapacity, ObservedContainer};
use berth_wire::labels;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::images::{ImageSource, ImageStream};
use crate::store::now_ms;

/// The agent's latest view of its host, keyed by replica id.
pub type Observed = BTreeMap<String, ObservedContainer>;

/// How the ingress reaches containers.
#[derive(Debug, Clone)]
pub enum EndpointMode {
    /// The container's address on Docker's bridge network: right when the ingress runs on the
    /// same host as the engine (all-in-one), and it avoids Docker's userland proxy.
    ContainerIp,
    /// A port published on the host's advertise address, for ingresses on other hosts.
    Published(IpAddr),
}

#[derive(Clone)]
pub struct AgentConfig {
    pub host: String,
    /// Where to get images that are neither on this host nor pullable (another host's engine).
    pub image_source: Option<Arc<dyn ImageSource>>,
    pub endpoint_mode: EndpointMode,
    /// Probe period until a container is ready (and again after it stops being ready).
    pub probe_interval_starting: Duration,
    /// Probe period while a container is ready.
    pub probe_interval_ready: Duration,
    pub probe_timeout: Duration,
    /// Consecutive passing probes before a container becomes ready (routable).
    pub ready_after: u32,
    /// Consecutive failing probes before a ready container stops being routable.
    pub unready_after: u32,
    /// Longest wait between restarts of a container that keeps crashing.
    pub max_restart_backoff: Duration,
}

impl AgentConfig {
    pub fn new(host: impl Into<String>, endpoint_mode: EndpointMode) -> AgentConfig {
        AgentConfig {
            host: host.into(),
            image_source: None,
            endpoint_mode,
            probe_interval_starting: Duration::from_millis(200),
            probe_interval_ready: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            ready_after: 2,
            unready_after: 3,
            max_restart_backoff: Duration::from_secs(30),
        }
    }
}

/// A running agent: its reports, and its Docker engine for reading logs.
#[derive(Clone)]
pub struct AgentHandle {
    pub host: String,
    observed: watch::Receiver<Observed>,
    docker: Docker,
}

/// Feeds an agent its desired containers. Whoever holds the sender (the orchestrator in
/// `berth server`, the connection task in `berth agent`) replaces the whole list at once.
pub type DesiredReceiver = watch::Receiver<Option<Vec<DesiredContainer>>>;

impl AgentHandle {
    pub fn observed(&self) -> watch::Receiver<Observed> {
        self.observed.clone()
    }

    pub async fn has_image(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }

    /// The image as a `docker save` tar stream.
    pub fn export_image(&self, image: &str) -> ImageStream {
        self.docker.export_image(image).map(|chunk| chunk.map_err(std::io::Error::other)).boxed()
    }

    /// Log lines (`(stream, line)`) of one container: the last `tail`, then new ones if `follow`.
    pub fn logs(&self, container_id: &str, tail: u32, follow: bool) -> BoxStream<'static, (String, String)> {
        let options = LogsOptions { follow, stdout: true, stderr: true, tail: tail.to_string(), ..Default::default() };
        self.docker
            .logs(container_id, Some(options))
            .take_while(|item| std::future::ready(item.is_ok()))
            .filter_map(|item| async move {
                use bollard::container::LogOutput;
                let (stream, message) = match item.ok()? {
                    LogOutput::StdOut { message } => ("stdout", message),
                    LogOutput::StdErr { message } => ("stderr", message),
                    LogOutput::Console { message } => ("console", message),
                    LogOutput::StdIn { .. } => return None,
                };
                let text = String::from_utf8_lossy(&message).trim_end_matches(['\n', '\r']).to_string();
                Some(futures::stream::iter(
                    text.split('\n').map(|l| (stream.to_string(), l.to_string())).collect::<Vec<_>>(),
                ))
            })
            .flatten()
            .boxed()
    }
}

/// Starts the agent. It does nothing to Docker until the first desired list arrives, so a
/// restarting control plane never removes containers it has not yet declared.
pub fn spawn(docker: Docker, config: AgentConfig, desired: DesiredReceiver) -> AgentHandle {
    let (observed_tx, observed_rx) = watch::channel(Observed::new());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    tokio::spawn(watch_docker_events(docker.clone(), config.host.clone(), events_tx.clone()));
    tokio::spawn(sample_usage(docker.clone(), observed_rx.clone(), events_tx.clone()));
    let actor = Actor {
        docker: docker.clone(),
        config: config.clone(),
        slots: HashMap::new(),
        stopping: HashMap::new(),
        tx: events_tx,
        observed: observed_tx,
    };
    tokio::spawn(actor.run(desired, events_rx));
    AgentHandle { host: config.host, observed: observed_rx, docker }
}

/// How often running containers' CPU and memory are sampled.
const USAGE_EVERY: Duration = Duration::from_secs(2);

/// Samples the CPU and memory of this agent's running containers every [`USAGE_EVERY`] and
/// reports them to the actor. CPU is the growth of the container's CPU time over the wall time
/// between two samples; memory leaves out reclaimable page cache, as `docker stats` does.
async fn sample_usage(docker: Docker, observed: watch::Receiver<Observed>, tx: mpsc::UnboundedSender<Msg>) {
    use bollard::query_parameters::StatsOptions;
    let mut previous: HashMap<String, (Instant, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(USAGE_EVERY);
    loop {
        tick.tick().await;
        let running: Vec<String> = observed
            .borrow()
            .values()
            .filter(|o| matches!(o.phase, ContainerPhase::Running | ContainerPhase::Ready))
            .filter_map(|o| o.container_id.clone())
            .collect();
        let samples = futures::future::join_all(running.into_iter().map(|id| {
            let docker = docker.clone();
            async move {
                let options = StatsOptions { stream: false, one_shot: true };
                let stats = docker.stats(&id, Some(options)).next().await?.ok()?;
                let cpu_ns = stats.cpu_stats?.cpu_usage?.total_usage?;
                let memory = stats.memory_stats.map_or(0, |m| {
                    let cache = m.stats.as_ref().and_then(|s| s.get("inactive_file").or(s.get("cache")).copied());
                    m.usage.unwrap_or(0).saturating_sub(cache.unwrap_or(0))
                });
                Some((id, Instant::now(), cpu_ns, memory))
            }
        }))
        .await;
        let mut usage = HashMap::new();
        let mut current = HashMap::new();
        for (id, at, cpu_ns, memory_bytes) in samples.into_iter().flatten() {
            if let Some((before, before_ns)) = previous.get(&id) {
                let wall = at.duration_since(*before).as_nanos().max(1) as u64;
                let cpu_millis = cpu_ns.saturating_sub(*before_ns).saturating_mul(1000) / wall;
                usage.insert(id.clone(), ContainerUsage { cpu_millis, memory_bytes });
            }
            current.insert(id, (at, cpu_ns));
        }
        previous = current;
        if tx.send(Msg::Usage(usage)).is_err() {
            return;
        }
    }
}

/// Connects to Docker through `DOCKER_HOST` or the local socket, and says which was tried when it
/// is unreachable.
pub async fn connect_docker() -> anyhow::Result<Docker> {
    let target = match std::env::var("DOCKER_HOST") {
        Ok(host) => format!("{host} (from DOCKER_HOST)"),
        Err(_) => "unix:///var/run/docker.sock (the default; DOCKER_HOST is not set)".to_string(),
    };
    let unreachable = |error: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "cannot reach the Docker engine at {target}: {error}. Start Docker, or set DOCKER_HOST to where it listens"
        )
    };
    let docker = Docker::connect_with_defaults().map_err(|e| unreachable(&e))?;
    let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
        .await
        .map_err(|_| unreachable(&"no answer within 10 s"))?
        .map_err(|e| unreachable(&e))?;
    docker.ping().await.map_err(|e| unreachable(&e))?;
    Ok(docker)
}

/// The host's CPU and memory as its Docker engine reports them.
pub async fn capacity(docker: &Docker) -> HostCapacity {
    match docker.info().await {
        Ok(info) => HostCapacity {
            cpu_millis: info.ncpu.unwrap_or(0).max(0) as u64 * 1000,
            memory_mb: info.mem_total.unwrap_or(0).max(0) as u64 / (1024 * 1024),
        },
        Err(error) => {
            tracing::warn!(%error, "reading the host's capacity from Docker failed");
            HostCapacity::default()
        }
    }
}

/// Reports from helper tasks to the actor.
#[derive(Debug)]
enum Msg {
    Phase {
        replica_id: String,
        phase: ContainerPhase,
    },
    Started {
        replica_id: String,
        container_id: String,
        endpoint: String,
        started_at: i64,
    },
    StartFailed {
        replica_id: String,
        container_id: Option<String>,
        message: String,
        permanent: bool,
    },
    Probe {
        replica_id: String,
        container_id: String,
        ready: bool,
        detail: String,
    },
    Died {
        container_id: String,
        exit_code: Option<String>,
    },
    Destroyed {
        container_id: String,
    },
    Stopped {
        container_id: String,
    },
    /// The event stream (re)connected or a periodic check is due: compare with Docker's list.
    Resync,
    /// Fresh CPU and memory figures, by container id.
    Usage(HashMap<String, ContainerUsage>),
}

struct Slot {
    desired: DesiredContainer,
    container_id: Option<String>,
    phase: ContainerPhase,
    endpoint: Option<String>,
    restarts: u32,
    /// Crashes since the container was last ready; drives the backoff.
    crash_streak: u32,
    message: Option<String>,
    started_at: Option<i64>,
    restart_at: Option<Instant>,
    /// A start or restart task is running for this slot.
    busy: bool,
    probe: Option<AbortHandle>,
    usage: Option<ContainerUsage>,
}

impl Slot {
    fn new(desired: DesiredContainer) -> Slot {
        Slot {
            desired,
            container_id: None,
            phase: ContainerPhase::Pending,
            endpoint: None,
            restarts: 0,
            crash_streak: 0,
            message: None,
            started_at: None,
            restart_at: Some(Instant::now()),
            busy: false,
            probe: None,
            usage: None,
        }
    }

    fn stop_probe(&mut self) {
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
    }
}

struct Actor {
    docker: Docker,
    config: AgentConfig,
    slots: HashMap<String, Slot>,
    /// Containers being stopped: container id → replica id.
    stopping: HashMap<String, String>,
    tx: mpsc::UnboundedSender<Msg>,
    observed: watch::Sender<Observed>,
}

impl Actor {
    async fn run(mut self, mut desired_rx: DesiredReceiver, mut msgs: mpsc::UnboundedReceiver<Msg>) {
        if desired_rx.wait_for(Option::is_some).await.is_err() {
            return;
        }
        let first = desired_rx.borrow_and_update().clone().expect("BUG: waited for Some");
        self.apply_desired(first);
        self.resync().await;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_resync = Instant::now();
        loop {
            tokio::select! {
                changed = desired_rx.changed() => {
                    if changed.is_err() {
                        // The control plane is gone: keep what runs running, as when it is unreachable.
                        std::future::pending::<()>().await;
                    }
                    let desired = desired_rx.borrow_and_update().clone().unwrap_or_default();
                    self.apply_desired(desired);
                }
                Some(msg) = msgs.recv() => {
                    if matches!(msg, Msg::Resync) {
                        self.resync().await;
                        last_resync = Instant::now();
                    } else {
                        self.handle(msg);
                    }
                }
                _ = tick.tick() => {
                    if last_resync.elapsed() > Duration::from_secs(15) {
                        self.resync().await;
                        last_resync = Instant::now();
                    }
                }
            }
            self.start_due();
            self.publish();
        }
    }

    fn apply_desired(&mut self, desired: Vec<DesiredContainer>) {
        let wanted: HashMap<String, DesiredContainer> =
            desired.into_iter().map(|d| (d.replica_id.clone(), d)).collect();
        let gone: Vec<String> = self.slots.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
        for replica_id in gone {
            let mut slot = self.slots.remove(&replica_id).expect("BUG: key was just listed");
            slot.stop_probe();
            if let Some(container_id) = slot.container_id {
                self.stop(container_id, replica_id, slot.desired.stop_grace_secs);
            }
        }
        for (replica_id, desired) in wanted {
            self.slots.entry(replica_id).or_insert_with(|| Slot::new(desired));
        }
    }

    /// Compares the slots with Docker's own list of this host's containers and settles every
    /// difference: adopts containers of desired replicas, removes the rest, notices missed deaths.
    async fn resync(&mut self) {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{}={}", labels::HOST, self.config.host)]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let containers = match self.docker.list_containers(Some(options)).await {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%error, "listing containers failed; will retry");
                return;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for summary in containers {
            let Some(container_id) = summary.id.clone() else { continue };
            let container_labels = summary.labels.clone().unwrap_or_default();
            if container_labels.get(labels::MANAGED).map(String::as_str) != Some("1") {
                continue;
            }
            seen.insert(container_id.clone());
            if self.stopping.contains_key(&container_id) {
                continue;
            }
            let running = summary.state.as_ref().map(|s| s.to_string()) == Some("running".to_string());
            let replica_id = container_labels.get(labels::REPLICA).cloned().unwrap_or_default();
            let grace = self.slots.get(&replica_id).map_or(10, |s| s.desired.stop_grace_secs);
            match self.slots.get_mut(&replica_id) {
                Some(slot) if slot.container_id.as_deref() == Some(container_id.as_str()) => {
                    if !running && matches!(slot.phase, ContainerPhase::Running | ContainerPhase::Ready) {
                        self.handle(Msg::Died { container_id, exit_code: None });
                    }
                }
                Some(slot) if slot.container_id.is_none() && !slot.busy => {
                    // A container from before a restart of the agent: adopt it.
                    slot.container_id = Some(container_id.clone());
                    if running {
                        match self.docker.inspect_container(&container_id, None).await {
                            Ok(inspect) => {
                                let endpoint = endpoint_of(
                                    &inspect,
                                    &self.config.endpoint_mode,
                                    slot.desired.port,
                                    slot.desired.privileges.host_network,
                                );
                                let slot = self.slots.get_mut(&replica_id).expect("BUG: slot exists");
                                slot.phase = ContainerPhase::Running;
                                slot.endpoint = endpoint;
                                slot.restart_at = None;
                                slot.started_at = Some(now_ms());
                                self.start_probe(&replica_id);
                            }
                            Err(_) => {
                                slot.container_id = None;
                            }
                        }
                    } else {
                        slot.phase = ContainerPhase::Crashed;
                        slot.restart_at = Some(Instant::now());
                    }
                }
                // Not desired, or a duplicate of a replica that already has its container.
                _ => self.stop(container_id, replica_id, grace),
            }
        }
        for slot in self.slots.values_mut() {
            if let Some(id) = &slot.container_id
                && !seen.contains(id)
                && !slot.busy
            {
                slot.stop_probe();
                slot.container_id = None;
                slot.endpoint = None;
                slot.phase = ContainerPhase::Crashed;
                slot.message = Some("the container disappeared".into());
                slot.restart_at.get_or_insert_with(Instant::now);
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Usage(usage) => {
                for slot in self.slots.values_mut() {
                    slot.usage = slot.container_id.as_ref().and_then(|id| usage.get(id)).copied();
                }
            }
            Msg::Phase { replica_id, phase } => {
                if let Some(slot) = self.slots.get_mut(&replica_id) {
                    slot.phase = phase;
                }
            }
            Msg::Started { replica_id, container_id, endpoint, started_at } => {
                let Some(slot) = self.slots.get_mut(&replica_id) else {
                    // No longer desired while it started.
                    self.stop(container_id, replica_id, 10);
                    return;
                };
                slot.busy = false;
                slot.container_id = Some(container_id);
                slot.endpoint = Some(endpoint);
                slot.started_at = Some(started_at);
                slot.phase = ContainerPhase::Running;
                self.start_probe(&replica_id);
            }
            Msg::StartFailed { replica_id, container_id, message, permanent } => {
                let max_backoff = self.config.max_restart_backoff;
                let Some(slot) = self.slots.get_mut(&replica_id) else { return };
                slot.busy = false;
                slot.container_id = container_id;
                slot.message = Some(message);
                if permanent {
                    slot.phase = ContainerPhase::Failed;
                    slot.restart_at = None;
                } else {
                    slot.phase = ContainerPhase::Crashed;
                    slot.crash_streak += 1;
                    let backoff = restart_backoff(slot.crash_streak, max_backoff);
                    if let Some(message) = &mut slot.message {
                        message.push_str(&format!("; retrying in {:.1}s", backoff.as_secs_f64()));
                    }
                    slot.restart_at = Some(Instant::now() + backoff);
                }
            }
            Msg::Probe { replica_id, container_id, ready, detail } => {
                let Some(slot) = self.slots.get_mut(&replica_id) else { return };
                if slot.container_id.as_deref() != Some(container_id.as_str()) {
                    return;
                }
                if ready {
                    slot.phase = ContainerPhase::Ready;
                    slot.crash_streak = 0;
                    slot.message = None;
                } else {
                    slot.phase = ContainerPhase::Running;
                    slot.message = Some(detail);
                }
            }
            Msg::Died { container_id, exit_code } => {
                let max_backoff = self.config.max_restart_backoff;
                let Some(slot) =
                    self.slots.values_mut().find(|s| s.container_id.as_deref() == Some(container_id.as_str()))
                else {
                    return;
                };
                if slot.busy {
                    return;
                }
                slot.stop_probe();
                slot.endpoint = None;
                slot.phase = ContainerPhase::Crashed;
                slot.crash_streak += 1;
                let backoff = restart_backoff(slot.crash_streak, max_backoff);
                let why = match exit_code {
                    Some(code) => format!("the container exited with code {code}"),
                    None => "the container stopped".to_string(),
                };
                slot.message = Some(format!("{why}; restarting in {:.1}s", backoff.as_secs_f64()));
                slot.restart_at = Some(Instant::now() + backoff);
            }
            Msg::Destroyed { container_id } => {
                if self.stopping.remove(&container_id).is_some() {
                    return;
                }
                if let Some(slot) =
                    self.slots.values_mut().find(|s| s.container_id.as_deref() == Some(container_id.as_str()))
                    && !slot.busy
                {
                    slot.stop_probe();
                    slot.container_id = None;
                    slot.endpoint = None;
                    slot.phase = ContainerPhase::Crashed;
                    slot.message = Some("the container was removed outside Berth".into());
                    slot.restart_at.get_or_insert_with(Instant::now);
                }
            }
            Msg::Stopped { container_id } => {
                self.stopping.remove(&container_id);
            }
            Msg::Resync => {}
        }
    }

    /// Starts or restarts every slot whose time has come.
    fn start_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.busy && s.restart_at.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for replica_id in due {
            let slot = self.slots.get_mut(&replica_id).expect("BUG: key was just listed");
            slot.busy = true;
            slot.restart_at = None;
            if slot.container_id.is_some() {
                slot.restarts += 1;
            }
            if slot.phase == ContainerPhase::Pending {
                slot.phase = ContainerPhase::Starting;
            }
            let docker = self.docker.clone();
            let config = self.config.clone();
            let desired = slot.desired.clone();
            let existing = slot.container_id.clone();
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let msg = match start_container(&docker, &config, &desired, existing, &tx).await {
                    Ok((container_id, endpoint)) => Msg::Started {
                        replica_id: desired.replica_id.clone(),
                        container_id,
                        endpoint,
                        started_at: now_ms(),
                    },
                    Err(failure) => Msg::StartFailed {
                        replica_id: desired.replica_id.clone(),
                        container_id: failure.container_id,
                        message: failure.message,
                        permanent: failure.permanent,
                    },
                };
                let _ = tx.send(msg);
            });
        }
    }

    fn start_probe(&mut self, replica_id: &str) {
        let Some(slot) = self.slots.get_mut(replica_id) else { return };
        slot.stop_probe();
        let (Some(container_id), Some(endpoint)) = (slot.container_id.clone(), slot.endpoint.clone()) else {
            return;
        };
        let probe = Probe {
            replica_id: replica_id.to_string(),
            container_id,
            endpoint,
            path: slot.desired.health_path.clone(),
            config: self.config.clone(),
            tx: self.tx.clone(),
        };
        slot.probe = Some(tokio::spawn(probe.run()).abort_handle());
    }

    fn stop(&mut self, container_id: String, replica_id: String, grace_secs: u32) {
        if self.stopping.insert(container_id.clone(), replica_id).is_some() {
            return;
        }
        let docker = self.docker.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let options = StopContainerOptions { t: Some(grace_secs as i32), ..Default::default() };
            if let Err(error) = docker.stop_container(&container_id, Some(options)).await {
                tracing::debug!(%container_id, %error, "stop failed (it may be gone already)");
            }
            let remove = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            if let Err(error) = docker.remove_container(&container_id, Some(remove)).await
                && !is_not_found(&error)
            {
                tracing::warn!(%container_id, %error, "removing a container failed");
            }
            let _ = tx.send(Msg::Stopped { container_id });
        });
    }

    fn publish(&self) {
        let mut observed: Observed = self
            .slots
            .iter()
            .map(|(id, s)| {
                let container = ObservedContainer {
                    replica_id: id.clone(),
                    container_id: s.container_id.clone(),
                    phase: s.phase,
                    endpoint: s.endpoint.clone(),
                    restarts: s.restarts,
                    message: s.message.clone(),
                    started_at: s.started_at,
                    usage: s.usage.filter(|_| matches!(s.phase, ContainerPhase::Running | ContainerPhase::Ready)),
                };
                (id.clone(), container)
            })
            .collect();
        for (container_id, replica_id) in &self.stopping {
            observed.entry(replica_id.clone()).or_insert_with(|| ObservedContainer {
                replica_id: replica_id.clone(),
                container_id: Some(container_id.clone()),
                phase: ContainerPhase::Stopping,
                endpoint: None,
                restarts: 0,
                message: None,
                started_at: None,
                usage: None,
            });
        }
        self.observed.send_if_modified(|current| {
            if *current == observed {
                false
            } else {
                *current = observed;
                true
            }
        });
    }
}

/// No wait for the first restart (a single crash is replaced at once), then 0.5 s doubling up
/// to `max`, like Kubernetes' CrashLoopBackOff but starting faster.
fn restart_backoff(streak: u32, max: Duration) -> Duration {
    if streak <= 1 {
        return Duration::ZERO;
    }
    let millis = 500u64.saturating_mul(1u64 << (streak - 2).min(20));
    Duration::from_millis(millis).min(max)
}

struct StartFailure {
    container_id: Option<String>,
    message: String,
    permanent: bool,
}

impl StartFailure {
    fn permanent(message: String) -> StartFailure {
        StartFailure { container_id: None, message, permanent: true }
    }
}

fn container_name(d: &DesiredContainer) -> String {
    format!("berth-{}-{}-r{}-{}", d.team, d.app, d.release, d.replica_id)
}

/// Creates (or, for `existing`, restarts) the container and returns its id and endpoint.
async fn start_container(
    docker: &Docker,
    config: &AgentConfig,
    desired: &DesiredContainer,
    existing: Option<String>,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Result<(String, String), StartFailure> {
    let container_id = match existing {
        Some(id) => id,
        None => {
            ensure_image(docker, config, desired, tx).await?;
            let _ = tx.send(Msg::Phase { replica_id: desired.replica_id.clone(), phase: ContainerPhase::Starting });
            create_container(docker, config, desired).await?
        }
    };
    let failed = |message: String, permanent: bool| StartFailure {
        container_id: Some(container_id.clone()),
        message,
        permanent,
    };
    if let Err(error) = docker.start_container(&container_id, None).await {
        if is_not_found(&error) {
            // Removed behind our back: the next attempt creates it anew.
            return Err(StartFailure {
                container_id: None,
                message: "the container vanished".into(),
                permanent: false,
            });
        }
        return Err(failed(format!("starting the container failed: {}", docker_message(&error)), false));
    }
    let inspect = docker
        .inspect_container(&container_id, None)
        .await
        .map_err(|e| failed(format!("inspecting the container failed: {}", docker_message(&e)), false))?;
    let running = inspect.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    if !running {
        let code = inspect.state.as_ref().and_then(|s| s.exit_code).unwrap_or_default();
        return Err(failed(format!("the container exited with code {code} right after starting"), false));
    }
    let endpoint = endpoint_of(&inspect, &config.endpoint_mode, desired.port, desired.privileges.host_network)
        .ok_or_else(|| failed("the container has no reachable address".into(), false))?;
    Ok((container_id, endpoint))
}

async fn ensure_image(
    docker: &Docker,
    config: &AgentConfig,
    desired: &DesiredContainer,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Result<(), StartFailure> {
    match docker.inspect_image(&desired.image).await {
        Ok(_) => return Ok(()),
        Err(error) if is_not_found(&error) => {}
        Err(error) => {
            return Err(StartFailure {
                container_id: None,
                message: format!("inspecting image {} failed: {}", desired.image, docker_message(&error)),
                permanent: false,
            });
        }
    }
    let _ = tx.send(Msg::Phase { replica_id: desired.replica_id.clone(), phase: ContainerPhase::Pulling });
    let (image, tag) = split_image(&desired.image);
    let options = CreateImageOptions { from_image: Some(image), tag: Some(tag), ..Default::default() };
    let mut pull = docker.create_image(Some(options), None, None);
    let mut pull_error = None;
    while let Some(progress) = pull.next().await {
        if let Err(error) = progress {
            pull_error = Some(docker_message(&error));
            break;
        }
    }
    let Some(pull_error) = pull_error else { return Ok(()) };
    let shipped = match &config.image_source {
        Some(source) => ship_image(docker, source.as_ref(), &desired.image).await,
        None => Err(anyhow::anyhow!("no other host to ask")),
    };
    shipped.map_err(|ship_error| {
        StartFailure::permanent(format!(
            "image {} is not on this host and pulling it failed: {pull_error}; no other host could ship it: {ship_error:#}",
            desired.image
        ))
    })
}

/// Loads `image` from another host's engine through the control plane.
async fn ship_image(docker: &Docker, source: &dyn ImageSource, image: &str) -> anyhow::Result<()> {
    let stream = source.fetch(image).await?;
    let mut load = docker.import_image_stream(bollard::query_parameters::ImportImageOptions::default(), stream, None);
    while let Some(progress) = load.next().await {
        progress.map_err(|e| anyhow::anyhow!("loading the image failed: {}", docker_message(&e)))?;
    }
    docker.inspect_image(image).await.map_err(|e| anyhow::anyhow!("the shipped archive did not contain it: {e}"))?;
    tracing::info!(image, "image shipped from another host");
    Ok(())
}

/// Splits `name[:tag]` (a registry port's colon is not a tag separator); `@digest` stays in the name.
fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

async fn create_container(docker: &Docker, config: &AgentConfig, d: &DesiredContainer) -> Result<String, StartFailure> {
    let container_labels: HashMap<String, String> = [
        (labels::MANAGED, "1".to_string()),
        (labels::TEAM, d.team.clone()),
        (labels::APP, d.app.clone()),
        (labels::RELEASE, d.release.to_string()),
        (labels::HOST, config.host.clone()),
        (labels::REPLICA, d.replica_id.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let port_key = format!("{}/tcp", d.port);
    let port_bindings = match &config.endpoint_mode {
        EndpointMode::ContainerIp => None,
        EndpointMode::Published(ip) => Some(HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding { host_ip: Some(ip.to_string()), host_port: Some(String::new()) }]),
        )])),
    };
    let p = &d.privileges;
    let host_config = HostConfig {
        memory: d.memory_mb.map(|mb| (mb * 1024 * 1024) as i64),
        nano_cpus: d.cpu_millis.map(|m| m as i64 * 1_000_000),
        port_bindings: if p.host_network { None } else { port_bindings },
        privileged: p.privileged.then_some(true),
        network_mode: p.host_network.then(|| "host".to_string()),
        binds: (!p.mounts.is_empty()).then(|| {
            p.mounts
                .iter()
                .map(|m| format!("{}:{}{}", m.source, m.target, if m.read_only { ":ro" } else { "" }))
                .collect()
        }),
        cap_add: (!p.cap_add.is_empty()).then(|| p.cap_add.clone()),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(d.image.clone()),
        env: Some(d.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(container_labels),
        exposed_ports: Some(vec![port_key]),
        stop_timeout: Some(d.stop_grace_secs as i64),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptions { name: Some(container_name(d)), ..Default::default() };
    match docker.create_container(Some(options), body).await {
        Ok(created) => Ok(created.id),
        // The name is this replica's own: a container holding it with this replica's and this
        // host's labels was created by an earlier run whose request Docker finished after that
        // run last listed containers (a crash mid-create). It is ours: take it up.
        Err(error)
            if is_conflict(&error)
                && let Some(id) = own_container(docker, config, d).await =>
        {
            Ok(id)
        }
        Err(error) => Err(StartFailure {
            container_id: None,
            message: format!("creating the container failed: {}", docker_message(&error)),
            // A name conflict clears up once the old container is removed; a bad spec does not.
            permanent: !is_conflict(&error),
        }),
    }
}

/// The id of the container named for `d`, if it carries `d`'s replica and this host's labels.
async fn own_container(docker: &Docker, config: &AgentConfig, d: &DesiredContainer) -> Option<String> {
    let inspect = docker.inspect_container(&container_name(d), None).await.ok()?;
    let found = inspect.config.as_ref()?.labels.as_ref()?;
    let ours = found.get(labels::REPLICA) == Some(&d.replica_id) && found.get(labels::HOST) == Some(&config.host);
    if ours { inspect.id } else { None }
}

fn endpoint_of(
    inspect: &ContainerInspectResponse,
    mode: &EndpointMode,
    port: u16,
    host_network: bool,
) -> Option<String> {
    // On the host's network the container listens on the host's own addresses.
    if host_network {
        return Some(match mode {
            EndpointMode::ContainerIp => format!("127.0.0.1:{port}"),
            EndpointMode::Published(ip) => format!("{ip}:{port}"),
        });
    }
    let settings = inspect.network_settings.as_ref()?;
    match mode {
        EndpointMode::ContainerIp => settings
            .networks
            .as_ref()?
            .values()
            .filter_map(|n| n.ip_address.clone())
            .find(|ip| !ip.is_empty())
            .map(|ip| format!("{ip}:{port}")),
        EndpointMode::Published(ip) => {
            let bindings = settings.ports.as_ref()?.get(&format!("{port}/tcp"))?.as_ref()?;
            let host_port = bindings.iter().filter_map(|b| b.host_port.clone()).find(|p| !p.is_empty())?;
            Some(format!("{ip}:{host_port}"))
        }
    }
}

fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

fn is_conflict(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { status_code: 409, .. })
}

fn docker_message(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Follows Docker's event stream for this host's containers, reconnecting when it breaks. Each
/// (re)connection asks the actor to resync, so an event lost while disconnected is still noticed.
async fn watch_docker_events(docker: Docker, host: String, tx: mpsc::UnboundedSender<Msg>) {
    loop {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert("label".to_string(), vec![format!("{}={host}", labels::HOST)]);
        filters.insert("event".to_string(), vec!["die".to_string(), "destroy".to_string()]);
        let options = EventsOptions { filters: Some(filters), ..Default::default() };
        let mut events = docker.events(Some(options));
        if tx.send(Msg::Resync).is_err() {
            return;
        }
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            let Some(actor) = event.actor else { continue };
            let Some(container_id) = actor.id else { continue };
            let msg = match event.action.as_deref() {
                Some("die") => {
                    let exit_code = actor.attributes.and_then(|mut a| a.remove("exitCode"));
                    Msg::Died { container_id, exit_code }
                }
                Some("destroy") => Msg::Destroyed { container_id },
                _ => continue,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Readiness and liveness of one container: `GET <path>` (any 2xx or 3xx passes) or, without a
/// path, a TCP connect. Reports transitions only.
struct Probe {
    replica_id: String,
    container_id: String,
    endpoint: String,
    path: Option<String>,
    config: AgentConfig,
    tx: mpsc::UnboundedSender<Msg>,
}

impl Probe {
    async fn run(self) {
        let mut ready = false;
        let mut streak = 0u32;
        let mut last_detail = String::new();
        loop {
            let outcome = tokio::time::timeout(self.config.probe_timeout, self.check())
                .await
                .unwrap_or_else(|_| Err("the probe timed out".to_string()));
            let passed = outcome.is_ok();
            // While not ready, say why (once per distinct reason), so a release that never gets
            // ready can name the cause.
            if let Err(detail) = &outcome
                && !ready
                && *detail != last_detail
            {
                last_detail = detail.clone();
                let msg = Msg::Probe {
                    replica_id: self.replica_id.clone(),
                    container_id: self.container_id.clone(),
                    ready: false,
                    detail: detail.clone(),
                };
                if self.tx.send(msg).is_err() {
                    return;
                }
            }
            if passed == ready {
                streak = 0;
            } else {
                streak += 1;
                let needed = if ready { self.config.unready_after } else { self.config.ready_after };
                if streak >= needed {
                    ready = passed;
                    streak = 0;
                    let msg = Msg::Probe {
                        replica_id: self.replica_id.clone(),
                        container_id: self.container_id.clone(),
                        ready,
                        detail: outcome.err().unwrap_or_default(),
                    };
                    if self.tx.send(msg).is_err() {
                        return;
                    }
                }
            }
            let period = if ready { self.config.probe_interval_ready } else { self.config.probe_interval_starting };
            tokio::time::sleep(period).await;
        }
    }

    async fn check(&self) -> Result<(), String> {
        let mut stream = tokio::net::TcpStream::connect(&self.endpoint)
            .await
            .map_err(|e| format!("readiness: connecting to {} failed: {e}", self.endpoint))?;
        let Some(path) = &self.path else { return Ok(()) };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: berth-probe\r\nConnection: close\r\n\r\n",
            self.endpoint
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("readiness: sending failed: {e}"))?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
            let n = stream.read(&mut buf).await.map_err(|e| format!("readiness: reading failed: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let status_line = String::from_utf8_lossy(&head);
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("readiness: GET {path} answered {}", status_line.lines().next().unwrap_or("nothing")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_first_then_doubles_to_a_cap() {
        let max = Duration::from_secs(30);
        assert_eq!(restart_backoff(1, max), Duration::ZERO);
        assert_eq!(restart_backoff(2, max), Duration::from_millis(500));
        assert_eq!(restart_backoff(3, max), Duration::from_secs(1));
        assert_eq!(restart_backoff(40, max), max);
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(split_image("hello:v1"), ("hello".into(), "v1".into()));
        assert_eq!(split_image("hello"), ("hello".into(), "latest".into()));
        assert_eq!(split_image("reg:5000/team/app"), ("reg:5000/team/app".into(), "latest".into()));
        assert_eq!(split_image("reg:5000/app:2"), ("reg:5000/app".into(), "2".into()));
    }
}
