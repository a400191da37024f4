//! The agent actor: makes one container runtime run exactly the containers desired for its host.
//!
//! It receives the desired containers as a whole list, creates, starts, probes, restarts (with
//! backoff) and stops them, and reports what it observes as a whole map. One actor task owns all
//! state. Starts, stops, probes, usage sampling and the event stream run in helper tasks that
//! report back by message, so a slow pull never delays a crash restart; listing and inspecting
//! containers during a resync are awaited by the actor itself (they are quick, local calls). The
//! agent only touches containers that carry `berth.host=<its host>` and the other Berth labels.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_wire::agent::{ContainerPhase, ContainerUsage, DesiredContainer, ObservedContainer};
use berth_wire::labels;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::images::ImageSource;
use crate::probe::{Probe, ProbeConfig};
use crate::runtime::{ByteStream, ContainerDetails, ContainerEvent, ContainerRuntime, ContainerSpec, LogStream};
use crate::usage;

/// The agent's latest view of its host, keyed by replica id.
pub type Observed = BTreeMap<String, ObservedContainer>;

/// Feeds an agent its desired containers. Whoever holds the sender (the control plane's host link
/// in `berth server`, the connection task in `berth agent`) replaces the whole list at once.
pub type DesiredReceiver = watch::Receiver<Option<Vec<DesiredContainer>>>;

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
    pub probe: ProbeConfig,
    /// Longest wait between restarts of a container that keeps crashing.
    pub max_restart_backoff: Duration,
    /// How often a full resync with the runtime's list runs, besides every event-stream reconnect.
    pub resync_every: Duration,
    /// How often running containers' CPU and memory are sampled.
    pub usage_every: Duration,
}

impl AgentConfig {
    pub fn new(host: impl Into<String>, endpoint_mode: EndpointMode) -> AgentConfig {
        AgentConfig {
            host: host.into(),
            image_source: None,
            endpoint_mode,
            probe: ProbeConfig::default(),
            max_restart_backoff: Duration::from_secs(30),
            resync_every: Duration::from_secs(15),
            usage_every: Duration::from_secs(2),
        }
    }
}

/// Stop grace for a container the agent finds without a desired spec (not desired, or from an
/// earlier run): the Docker default.
const UNDESIRED_STOP_GRACE_SECS: u32 = 10;

/// A running agent: its reports, and its runtime for reading logs and exporting images.
#[derive(Clone)]
pub struct AgentHandle {
    pub host: String,
    observed: watch::Receiver<Observed>,
    runtime: Arc<dyn ContainerRuntime>,
    tasks: Arc<Vec<AbortHandle>>,
}

impl AgentHandle {
    pub fn observed(&self) -> watch::Receiver<Observed> {
        self.observed.clone()
    }

    pub async fn has_image(&self, image: &str) -> bool {
        self.runtime.has_image(image).await.unwrap_or(false)
    }

    /// The image as an archive another host's runtime can load.
    pub fn export_image(&self, image: &str) -> ByteStream {
        self.runtime.export(image)
    }

    /// The host's container runtime, for builds and image housekeeping.
    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    /// Log lines (`(stream, line)`) of one container: the last `tail`, then new ones if `follow`.
    pub fn logs(&self, container_id: &str, tail: u32, follow: bool) -> LogStream {
        self.runtime.logs(container_id, tail, follow)
    }

    /// Stops the agent's actor, event watcher, usage sampler and probes (not its containers,
    /// which keep running; a new agent on the same runtime adopts them). A start or stop already
    /// handed to the runtime finishes on its own, as a request already sent to Docker would.
    pub fn shutdown(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
    }
}

/// Starts the agent. It does nothing to its containers until the first desired list arrives, so
/// a restarting control plane never removes containers it has not yet declared.
pub fn spawn(runtime: Arc<dyn ContainerRuntime>, config: AgentConfig, desired: DesiredReceiver) -> AgentHandle {
    let (observed_tx, observed_rx) = watch::channel(Observed::new());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let usage_tx = events_tx.clone();
    let tasks = vec![
        tokio::spawn(watch_events(runtime.clone(), config.host.clone(), events_tx.clone())).abort_handle(),
        tokio::spawn(usage::sample(runtime.clone(), observed_rx.clone(), config.usage_every, move |usage| {
            usage_tx.send(Msg::Usage(usage)).is_ok()
        }))
        .abort_handle(),
        tokio::spawn(
            Actor {
                runtime: runtime.clone(),
                config: config.clone(),
                slots: HashMap::new(),
                stopping: HashMap::new(),
                tx: events_tx,
                observed: observed_tx,
            }
            .run(desired, events_rx),
        )
        .abort_handle(),
    ];
    AgentHandle { host: config.host, observed: observed_rx, runtime, tasks: Arc::new(tasks) }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
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
    /// The event stream (re)connected or a periodic check is due: compare with the runtime's list.
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

/// A slot's probe ends with it (also when the actor itself is stopped).
impl Drop for Slot {
    fn drop(&mut self) {
        self.stop_probe();
    }
}

struct Actor {
    runtime: Arc<dyn ContainerRuntime>,
    config: AgentConfig,
    slots: HashMap<String, Slot>,
    /// Containers being stopped: container id → replica id.
    stopping: HashMap<String, String>,
    tx: mpsc::UnboundedSender<Msg>,
    observed: watch::Sender<Observed>,
}

impl Actor {
    /// Waits for a desired list, makes the runtime run it, and follows its changes. When the list
    /// is withdrawn (`None`: the control plane that fed it stopped leading), the agent stands down:
    /// it forgets its containers without touching them, and waits for the next list, which it
    /// adopts as after a restart.
    async fn run(mut self, mut desired_rx: DesiredReceiver, mut msgs: mpsc::UnboundedReceiver<Msg>) {
        loop {
            if desired_rx.wait_for(Option::is_some).await.is_err() {
                return;
            }
            let first = desired_rx.borrow_and_update().clone().expect("BUG: waited for Some");
            self.apply_desired(first);
            self.resync().await;
            self.publish();
            self.follow(&mut desired_rx, &mut msgs).await;
            for slot in self.slots.values_mut() {
                slot.stop_probe();
            }
            self.slots.clear();
            self.publish();
        }
    }

    /// Runs the desired list as it changes; returns when it is withdrawn.
    async fn follow(&mut self, desired_rx: &mut DesiredReceiver, msgs: &mut mpsc::UnboundedReceiver<Msg>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_resync = Instant::now();
        loop {
            tokio::select! {
                changed = desired_rx.changed() => {
                    if changed.is_err() {
                        // The control plane is gone: keep what runs running, as when it is unreachable.
                        std::future::pending::<()>().await;
                    }
                    let Some(desired) = desired_rx.borrow_and_update().clone() else { return };
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
                    if last_resync.elapsed() > self.config.resync_every {
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
            if let Some(container_id) = slot.container_id.take() {
                self.stop(container_id, replica_id, slot.desired.stop_grace_secs);
            }
        }
        for (replica_id, desired) in wanted {
            self.slots.entry(replica_id).or_insert_with(|| Slot::new(desired));
        }
    }

    /// Compares the slots with the runtime's own list of this host's containers and settles every
    /// difference: adopts containers of desired replicas, removes the rest, notices missed deaths.
    async fn resync(&mut self) {
        let containers = match self.runtime.list(&self.config.host).await {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%error, "listing containers failed; will retry");
                return;
            }
        };
        let mut seen = HashSet::new();
        for summary in containers {
            let container_id = summary.id;
            let container_labels = summary.labels;
            if container_labels.get(labels::MANAGED).map(String::as_str) != Some("1") {
                continue;
            }
            seen.insert(container_id.clone());
            if self.stopping.contains_key(&container_id) {
                continue;
            }
            let running = summary.running;
            let replica_id = container_labels.get(labels::REPLICA).cloned().unwrap_or_default();
            let grace = self.slots.get(&replica_id).map_or(UNDESIRED_STOP_GRACE_SECS, |s| s.desired.stop_grace_secs);
            match self.slots.get_mut(&replica_id) {
                Some(slot) if slot.container_id.as_deref() == Some(container_id.as_str()) => {
                    if !running && matches!(slot.phase, ContainerPhase::Running | ContainerPhase::Ready) {
                        self.handle(Msg::Died { container_id, exit_code: None });
                    }
                }
                // A start in flight for this replica creates (or takes up) this container itself:
                // its outcome decides, a resync must not stop it under the start's feet.
                Some(slot) if slot.container_id.is_none() && slot.busy => {}
                Some(slot) if slot.container_id.is_none() && !slot.busy => {
                    // A container from before a restart of the agent: adopt it.
                    slot.container_id = Some(container_id.clone());
                    if running {
                        match self.runtime.inspect(&container_id).await {
                            Ok(details) => {
                                let endpoint = endpoint_of(
                                    &details,
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
                    self.stop(container_id, replica_id, UNDESIRED_STOP_GRACE_SECS);
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
                // While a start runs, its own outcome reports the death; once the slot is
                // `Crashed`, this is the same death reported a second time (the engine's event
                // after a failed start): counting it again would double the backoff.
                if slot.busy || slot.phase == ContainerPhase::Crashed {
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
            let runtime = self.runtime.clone();
            let config = self.config.clone();
            let desired = slot.desired.clone();
            let existing = slot.container_id.clone();
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let msg = match start_container(runtime.as_ref(), &config, &desired, existing, &tx).await {
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
        let (tx, replica_id) = (self.tx.clone(), replica_id.to_string());
        let probe = Probe {
            endpoint,
            path: slot.desired.health_path.clone(),
            config: self.config.probe.clone(),
            report: Box::new(move |ready, detail| {
                let msg =
                    Msg::Probe { replica_id: replica_id.clone(), container_id: container_id.clone(), ready, detail };
                tx.send(msg).is_ok()
            }),
        };
        slot.probe = Some(tokio::spawn(probe.run()).abort_handle());
    }

    fn stop(&mut self, container_id: String, replica_id: String, grace_secs: u32) {
        if self.stopping.insert(container_id.clone(), replica_id).is_some() {
            return;
        }
        let runtime = self.runtime.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if let Err(error) = runtime.stop(&container_id, grace_secs).await {
                tracing::debug!(%container_id, %error, "stop failed (it may be gone already)");
            }
            if let Err(error) = runtime.remove(&container_id).await
                && !error.is_not_found()
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
    runtime: &dyn ContainerRuntime,
    config: &AgentConfig,
    desired: &DesiredContainer,
    existing: Option<String>,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Result<(String, String), StartFailure> {
    let container_id = match existing {
        Some(id) => id,
        None => {
            ensure_image(runtime, config, desired, tx).await?;
            let _ = tx.send(Msg::Phase { replica_id: desired.replica_id.clone(), phase: ContainerPhase::Starting });
            create_container(runtime, config, desired).await?
        }
    };
    let failed = |message: String, permanent: bool| StartFailure {
        container_id: Some(container_id.clone()),
        message,
        permanent,
    };
    if let Err(error) = runtime.start(&container_id).await {
        if error.is_not_found() {
            // Removed behind our back: the next attempt creates it anew.
            return Err(StartFailure {
                container_id: None,
                message: "the container vanished".into(),
                permanent: false,
            });
        }
        return Err(failed(format!("starting the container failed: {error}"), false));
    }
    let details = runtime
        .inspect(&container_id)
        .await
        .map_err(|e| failed(format!("inspecting the container failed: {e}"), false))?;
    if !details.running {
        let code = details.exit_code.unwrap_or_default();
        return Err(failed(format!("the container exited with code {code} right after starting"), false));
    }
    let endpoint = endpoint_of(&details, &config.endpoint_mode, desired.port, desired.privileges.host_network)
        .ok_or_else(|| failed("the container has no reachable address".into(), false))?;
    Ok((container_id, endpoint))
}

async fn ensure_image(
    runtime: &dyn ContainerRuntime,
    config: &AgentConfig,
    desired: &DesiredContainer,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Result<(), StartFailure> {
    match runtime.has_image(&desired.image).await {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(error) => {
            return Err(StartFailure {
                container_id: None,
                message: format!("inspecting image {} failed: {error}", desired.image),
                permanent: false,
            });
        }
    }
    let _ = tx.send(Msg::Phase { replica_id: desired.replica_id.clone(), phase: ContainerPhase::Pulling });
    let Err(pull_error) = runtime.pull(&desired.image).await else { return Ok(()) };
    let shipped = match &config.image_source {
        Some(source) => ship_image(runtime, source.as_ref(), &desired.image).await,
        None => Err(anyhow::anyhow!("no other host to ask")),
    };
    shipped.map_err(|ship_error| {
        StartFailure::permanent(format!(
            "image {} is not on this host and pulling it failed: {pull_error}; no other host could ship it: {ship_error:#}",
            desired.image
        ))
    })
}

/// Loads `image` from another host through `source`.
async fn ship_image(runtime: &dyn ContainerRuntime, source: &dyn ImageSource, image: &str) -> anyhow::Result<()> {
    let archive = source.fetch(image).await?;
    runtime.load(archive, image).await.map_err(|e| anyhow::anyhow!("loading the image failed: {e}"))?;
    if !runtime.has_image(image).await.unwrap_or(false) {
        anyhow::bail!("the shipped archive did not contain it");
    }
    tracing::info!(image, "image shipped from another host");
    Ok(())
}

async fn create_container(
    runtime: &dyn ContainerRuntime,
    config: &AgentConfig,
    d: &DesiredContainer,
) -> Result<String, StartFailure> {
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
    let publish_on = match config.endpoint_mode {
        EndpointMode::ContainerIp => None,
        EndpointMode::Published(ip) => Some(ip),
    };
    let spec = ContainerSpec { name: container_name(d), labels: container_labels, desired: d.clone(), publish_on };
    match runtime.create(&spec).await {
        Ok(id) => Ok(id),
        // The name is this replica's own: a container holding it with this replica's and this
        // host's labels was created by an earlier run whose request the engine finished after
        // that run last listed containers (a crash mid-create). It is ours: take it up.
        Err(error)
            if error.is_conflict()
                && let Some(id) = own_container(runtime, config, d).await =>
        {
            Ok(id)
        }
        Err(error) => Err(StartFailure {
            container_id: None,
            message: format!("creating the container failed: {error}"),
            // A name conflict clears up once the old container is removed; a bad spec does not.
            permanent: !error.is_conflict(),
        }),
    }
}

/// The id of the container named for `d`, if it carries `d`'s replica and this host's labels.
async fn own_container(runtime: &dyn ContainerRuntime, config: &AgentConfig, d: &DesiredContainer) -> Option<String> {
    let details = runtime.inspect(&container_name(d)).await.ok()?;
    let found = &details.labels;
    let ours = found.get(labels::MANAGED).is_some_and(|m| m == "1")
        && found.get(labels::REPLICA) == Some(&d.replica_id)
        && found.get(labels::HOST) == Some(&config.host);
    ours.then_some(details.id)
}

fn endpoint_of(details: &ContainerDetails, mode: &EndpointMode, port: u16, host_network: bool) -> Option<String> {
    // On the host's network the container listens on the host's own addresses.
    if host_network {
        return Some(match mode {
            EndpointMode::ContainerIp => format!("127.0.0.1:{port}"),
            EndpointMode::Published(ip) => std::net::SocketAddr::new(*ip, port).to_string(),
        });
    }
    match mode {
        EndpointMode::ContainerIp => details.addresses.first().map(|ip| format!("{ip}:{port}")),
        // `[v6]:port` for IPv6 (`SocketAddr` writes the brackets).
        EndpointMode::Published(ip) => {
            details.published.get(&port).map(|host_port| std::net::SocketAddr::new(*ip, *host_port).to_string())
        }
    }
}

/// Follows the runtime's event stream for this host's containers, reconnecting when it breaks.
/// Each (re)connection asks the actor to resync, so an event lost while disconnected is still
/// noticed.
async fn watch_events(runtime: Arc<dyn ContainerRuntime>, host: String, tx: mpsc::UnboundedSender<Msg>) {
    loop {
        let mut events = runtime.events(&host);
        if tx.send(Msg::Resync).is_err() {
            return;
        }
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            let msg = match event {
                ContainerEvent::Died { container_id, exit_code } => Msg::Died { container_id, exit_code },
                ContainerEvent::Destroyed { container_id } => Msg::Destroyed { container_id },
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
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
}
