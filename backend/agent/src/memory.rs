//! An in-memory `ContainerRuntime` for tests of the agent and of the control plane above it,
//! without a container engine. A "container" is an HTTP listener on `127.0.0.1` (on a port of
//! its own, reported as published, so use `EndpointMode::Published(127.0.0.1)`): the agent's real
//! probes reach it, and the test decides what it answers, when it crashes and what the runtime
//! refuses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use berth_wire::agent::HostCapacity;
use berth_wire::labels;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use crate::runtime::{
    BuildEvent, BuildSpec, ByteStream, ContainerDetails, ContainerEvent, ContainerRuntime, ContainerSpec,
    ContainerSummary, DiskSpace, ImageSummary, LogStream, Result, RuntimeError, UsageSample,
};

/// How containers of one image behave.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Serves every request with this status (200: healthy).
    Serve(u16),
    /// Exits with this code right after starting, every time.
    ExitOnStart(i64),
}

/// One container as the test sees it.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// The environment it was created with.
    pub env: std::collections::BTreeMap<String, String>,
    pub running: bool,
    pub starts: u32,
}

impl ContainerInfo {
    pub fn replica(&self) -> &str {
        self.labels.get(labels::REPLICA).map_or("", String::as_str)
    }

    pub fn release(&self) -> &str {
        self.labels.get(labels::RELEASE).map_or("", String::as_str)
    }
}

struct Container {
    info: ContainerInfo,
    publish: bool,
    /// The port the app listens on (`DesiredContainer::port`).
    container_port: u16,
    /// Where its listener is, while it runs.
    port: Option<u16>,
    server: Option<AbortHandle>,
}

impl Container {
    fn halt(&mut self) {
        self.info.running = false;
        self.port = None;
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

#[derive(Default)]
struct State {
    images: HashSet<String>,
    /// Labels of the images this runtime built.
    image_labels: HashMap<String, HashMap<String, String>>,
    pullable: HashSet<String>,
    behaviours: HashMap<String, Behaviour>,
    /// The status the listeners of each image answer with, shared by all of them.
    statuses: HashMap<String, Arc<AtomicU16>>,
    containers: BTreeMap<String, Container>,
    /// Containers listings leave out (created "behind the agent's back") until a create
    /// conflicts with one of them: what an agent sees after its own create raced a crash.
    unlisted: HashSet<String>,
    next_id: u64,
    creates: u32,
    conflicts: u32,
    /// How long a stop takes: a process that ignores SIGTERM until the grace period ends.
    stop_delay: std::time::Duration,
}

pub struct MemoryRuntime {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(String, ContainerEvent)>,
    capacity: HostCapacity,
}

impl Default for MemoryRuntime {
    fn default() -> MemoryRuntime {
        MemoryRuntime {
            state: Arc::default(),
            events: broadcast::channel(1024).0,
            capacity: HostCapacity { cpu_millis: 4000, memory_mb: 8192 },
        }
    }
}

impl MemoryRuntime {
    pub fn new() -> Arc<MemoryRuntime> {
        Arc::new(MemoryRuntime::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("BUG: memory runtime lock poisoned")
    }

    /// Makes `image` present on this host.
    pub fn add_image(&self, image: &str) {
        self.state().images.insert(image.to_string());
    }

    /// Lets `image` be pulled (it is not present until then).
    pub fn allow_pull(&self, image: &str) {
        self.state().pullable.insert(image.to_string());
    }

    /// Sets how containers of `image` behave from now on; running ones answer with the new status
    /// at once.
    pub fn set_behaviour(&self, image: &str, behaviour: Behaviour) {
        let mut state = self.state();
        if let Behaviour::Serve(status) = behaviour {
            state.statuses.entry(image.to_string()).or_default().store(status, Ordering::Relaxed);
        }
        state.behaviours.insert(image.to_string(), behaviour);
    }

    /// Every container, running or not.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.state().containers.values().map(|c| c.info.clone()).collect()
    }

    /// Running containers only.
    pub fn running(&self) -> Vec<ContainerInfo> {
        self.containers().into_iter().filter(|c| c.running).collect()
    }

    /// How many containers were created so far.
    pub fn creates(&self) -> u32 {
        self.state().creates
    }

    /// How many creates failed because the name was taken.
    pub fn conflicts(&self) -> u32 {
        self.state().conflicts
    }

    /// Stops take `delay` from now on (containers that ignore SIGTERM).
    pub fn set_stop_delay(&self, delay: std::time::Duration) {
        self.state().stop_delay = delay;
    }

    /// The container exits with `exit_code`, as a crashing process would.
    pub fn crash(&self, container_id: &str, exit_code: i64) {
        let host = {
            let mut state = self.state();
            let Some(container) = state.containers.get_mut(container_id) else { return };
            container.halt();
            container.info.labels.get(labels::HOST).cloned().unwrap_or_default()
        };
        let event = ContainerEvent::Died { container_id: container_id.into(), exit_code: Some(exit_code.to_string()) };
        let _ = self.events.send((host, event));
    }

    /// Creates a container as an earlier agent would have (running), hidden from listings when
    /// `unlisted` until a create of the same name conflicts: the trace of an agent that crashed
    /// while its create was in flight, which the next agent finds only by colliding with it.
    pub async fn create_behind(&self, spec: &ContainerSpec, unlisted: bool) -> String {
        let id = self.create(spec).await.expect("BUG: the test's container name is free");
        self.start(&id).await.expect("BUG: the test's container starts");
        if unlisted {
            self.state().unlisted.insert(id.clone());
        }
        id
    }

    fn emit(&self, host: String, event: ContainerEvent) {
        let _ = self.events.send((host, event));
    }

    fn find(state: &State, container: &str) -> Option<String> {
        if state.containers.contains_key(container) {
            return Some(container.to_string());
        }
        state.containers.values().find(|c| c.info.name == container).map(|c| c.info.id.clone())
    }
}

/// Answers every request on `listener` with the current `status` (`/sleep/<ms>` after a delay).
async fn serve(listener: tokio::net::TcpListener, status: Arc<AtomicU16>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let status = status.load(Ordering::Relaxed);
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            // `GET /sleep/<ms>` answers after that long: a request that stays in flight.
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            if let Some(ms) = path.strip_prefix("/sleep/").and_then(|ms| ms.parse().ok()) {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let response = format!("HTTP/1.1 {status} Test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

impl ContainerRuntime for MemoryRuntime {
    fn list<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<ContainerSummary>>> {
        let state = self.state();
        let list = state
            .containers
            .values()
            .filter(|c| c.info.labels.get(labels::HOST).map(String::as_str) == Some(host))
            .filter(|c| !state.unlisted.contains(&c.info.id))
            .map(|c| ContainerSummary { id: c.info.id.clone(), labels: c.info.labels.clone(), running: c.info.running })
            .collect();
        futures::future::ready(Ok(list)).boxed()
    }

    fn inspect<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<ContainerDetails>> {
        let state = self.state();
        let details = Self::find(&state, container)
            .and_then(|id| state.containers.get(&id))
            .map(|c| ContainerDetails {
                id: c.info.id.clone(),
                labels: c.info.labels.clone(),
                running: c.info.running,
                exit_code: (!c.info.running).then_some(match state.behaviours.get(&c.info.image) {
                    Some(Behaviour::ExitOnStart(code)) => *code,
                    _ => 0,
                }),
                addresses: vec!["127.0.0.1".into()],
                published: c
                    .port
                    .filter(|_| c.publish)
                    .map(|port| HashMap::from([(c.container_port, port)]))
                    .unwrap_or_default(),
            })
            .ok_or_else(|| RuntimeError::NotFound(format!("No such container: {container}")));
        futures::future::ready(details).boxed()
    }

    fn create<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, Result<String>> {
        let mut state = self.state();
        let taken = state.containers.values().find(|c| c.info.name == spec.name).map(|c| c.info.id.clone());
        let result = if let Some(id) = taken {
            state.conflicts += 1;
            state.unlisted.remove(&id);
            Err(RuntimeError::Conflict(format!("the container name \"/{}\" is already in use", spec.name)))
        } else if !state.images.contains(&spec.desired.image) {
            Err(RuntimeError::NotFound(format!("No such image: {}", spec.desired.image)))
        } else {
            state.next_id += 1;
            state.creates += 1;
            let id = format!("{:012x}", state.next_id);
            let info = ContainerInfo {
                id: id.clone(),
                name: spec.name.clone(),
                image: spec.desired.image.clone(),
                labels: spec.labels.clone(),
                env: spec.desired.env.clone(),
                running: false,
                starts: 0,
            };
            let container = Container {
                info,
                publish: spec.publish_on.is_some(),
                container_port: spec.desired.port,
                port: None,
                server: None,
            };
            state.containers.insert(id.clone(), container);
            Ok(id)
        };
        futures::future::ready(result).boxed()
    }

    fn start<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| RuntimeError::Other(format!("binding a port: {e}")))?;
            let port = listener.local_addr().map_err(|e| RuntimeError::Other(e.to_string()))?.port();
            let (died, host) = {
                let mut state = self.state();
                let id = Self::find(&state, container)
                    .ok_or_else(|| RuntimeError::NotFound(format!("No such container: {container}")))?;
                let image = state.containers[&id].info.image.clone();
                let behaviour = state.behaviours.get(&image).copied().unwrap_or(Behaviour::Serve(200));
                let status = state.statuses.entry(image).or_insert_with(|| Arc::new(AtomicU16::new(200))).clone();
                let c = state.containers.get_mut(&id).expect("BUG: found above");
                if c.info.running {
                    return Ok(());
                }
                c.info.starts += 1;
                let host = c.info.labels.get(labels::HOST).cloned().unwrap_or_default();
                match behaviour {
                    Behaviour::ExitOnStart(code) => (Some((id, code)), host),
                    Behaviour::Serve(_) => {
                        c.info.running = true;
                        c.port = Some(port);
                        c.server = Some(tokio::spawn(serve(listener, status)).abort_handle());
                        (None, host)
                    }
                }
            };
            if let Some((container_id, code)) = died {
                self.emit(host, ContainerEvent::Died { container_id, exit_code: Some(code.to_string()) });
            }
            Ok(())
        }
        .boxed()
    }

    fn stop<'a>(&'a self, container: &'a str, _grace_secs: u32) -> BoxFuture<'a, Result<()>> {
        async move {
            let delay = self.state().stop_delay;
            tokio::time::sleep(delay).await;
            let stopped = {
                let mut state = self.state();
                let id = Self::find(&state, container)
                    .ok_or_else(|| RuntimeError::NotFound(format!("No such container: {container}")))?;
                let c = state.containers.get_mut(&id).expect("BUG: found above");
                let was_running = c.info.running;
                c.halt();
                was_running.then(|| (id, c.info.labels.get(labels::HOST).cloned().unwrap_or_default()))
            };
            if let Some((container_id, host)) = stopped {
                self.emit(host, ContainerEvent::Died { container_id, exit_code: Some("0".into()) });
            }
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<()>> {
        let removed = {
            let mut state = self.state();
            Self::find(&state, container).and_then(|id| state.containers.remove(&id))
        };
        let result = match removed {
            None => Err(RuntimeError::NotFound(format!("No such container: {container}"))),
            Some(mut c) => {
                c.halt();
                let host = c.info.labels.get(labels::HOST).cloned().unwrap_or_default();
                self.emit(host, ContainerEvent::Destroyed { container_id: c.info.id });
                Ok(())
            }
        };
        futures::future::ready(result).boxed()
    }

    fn events(&self, host: &str) -> BoxStream<'static, Result<ContainerEvent>> {
        let host = host.to_string();
        futures::stream::unfold(self.events.subscribe(), move |mut rx| {
            let host = host.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok((for_host, event)) if for_host == host => return Some((Ok(event), rx)),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed()
    }

    fn has_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool>> {
        futures::future::ready(Ok(self.state().images.contains(image))).boxed()
    }

    fn pull<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<()>> {
        let mut state = self.state();
        let result = if state.pullable.contains(image) {
            state.images.insert(image.to_string());
            Ok(())
        } else {
            Err(RuntimeError::NotFound(format!("pull access denied for {image}, repository does not exist")))
        };
        futures::future::ready(result).boxed()
    }

    fn load<'a>(&'a self, archive: ByteStream, wanted: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let chunks: Vec<_> = archive.collect().await;
            let mut bytes = Vec::new();
            for chunk in chunks {
                bytes.extend_from_slice(&chunk.map_err(|e| RuntimeError::Other(e.to_string()))?);
            }
            let image = String::from_utf8(bytes).map_err(|_| RuntimeError::Other("not an image archive".into()))?;
            // Like the Docker runtime: an archive naming another image is refused.
            if image != wanted {
                return Err(RuntimeError::Other(format!(
                    "the image archive for {wanted} would also tag {image}; refused"
                )));
            }
            self.add_image(&image);
            Ok(())
        }
        .boxed()
    }

    /// The "archive" of an image is its name.
    fn export(&self, image: &str) -> ByteStream {
        let chunk = if self.state().images.contains(image) {
            Ok(Bytes::from(image.to_string()))
        } else {
            Err(std::io::Error::other(format!("No such image: {image}")))
        };
        futures::stream::iter([chunk]).boxed()
    }

    fn usage<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Option<UsageSample>> {
        let running = self.state().containers.get(container).is_some_and(|c| c.info.running);
        futures::future::ready(running.then_some(UsageSample { cpu_ns: 0, memory_bytes: 1 << 20 })).boxed()
    }

    fn logs(&self, container: &str, _tail: u32, _follow: bool) -> LogStream {
        let name = self.state().containers.get(container).map(|c| c.info.name.clone());
        futures::stream::iter(name.map(|name| ("stdout".to_string(), format!("{name} started")))).boxed()
    }

    fn capacity(&self) -> BoxFuture<'_, HostCapacity> {
        futures::future::ready(self.capacity.clone()).boxed()
    }

    /// Reads the context's Dockerfile and "runs" it: one output line per instruction; `RUN false`
    /// fails the build, `RUN sleep N` takes N seconds; the tag then exists with the spec's labels.
    fn build(&self, spec: BuildSpec, context: ByteStream) -> BoxStream<'static, BuildEvent> {
        let state = self.state.clone();
        let (events, received) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let outcome = async {
                let mut bytes = Vec::new();
                let chunks: Vec<_> = context.collect().await;
                for chunk in chunks {
                    bytes.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
                }
                let dockerfile = read_from_tar(&bytes, &spec.dockerfile)
                    .ok_or_else(|| format!("Cannot locate specified Dockerfile: {}", spec.dockerfile))?;
                let steps: Vec<&str> =
                    dockerfile.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
                for (n, step) in steps.iter().enumerate() {
                    let line = format!("Step {}/{} : {step}", n + 1, steps.len());
                    events.send(BuildEvent::Line(line)).await.map_err(|_| "canceled".to_string())?;
                    if *step == "RUN false" {
                        return Err("The command '/bin/sh -c false' returned a non-zero code: 1".to_string());
                    }
                    if let Some(secs) = step.strip_prefix("RUN sleep ").and_then(|s| s.parse::<u64>().ok()) {
                        tokio::select! {
                            () = tokio::time::sleep(std::time::Duration::from_secs(secs)) => {}
                            () = events.closed() => return Err("canceled".to_string()),
                        }
                    }
                }
                let mut state = state.lock().expect("BUG: memory runtime lock poisoned");
                state.images.insert(spec.tag.clone());
                state.image_labels.insert(spec.tag.clone(), spec.labels.clone());
                Ok(())
            }
            .await;
            let _ = events.send(outcome.map_or_else(BuildEvent::Failed, |()| BuildEvent::Built)).await;
        });
        crate::runtime::receiver_stream(received)
    }

    fn images<'a>(&'a self, key: &'a str, value: &'a str) -> BoxFuture<'a, Result<Vec<ImageSummary>>> {
        let state = self.state();
        let images = state
            .image_labels
            .iter()
            .filter(|(tag, labels)| state.images.contains(*tag) && labels.get(key).is_some_and(|v| v == value))
            .map(|(tag, labels)| ImageSummary { id: tag.clone(), tags: vec![tag.clone()], labels: labels.clone() })
            .collect();
        futures::future::ready(Ok(images)).boxed()
    }

    fn remove_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<()>> {
        let mut state = self.state();
        let in_use = state.containers.values().any(|c| c.info.image == image);
        let result = if in_use {
            Err(RuntimeError::Conflict(format!("image {image} is being used by a container")))
        } else if state.images.remove(image) {
            state.image_labels.remove(image);
            Ok(())
        } else {
            Err(RuntimeError::NotFound(format!("No such image: {image}")))
        };
        futures::future::ready(result).boxed()
    }

    fn build_cache_bytes(&self) -> BoxFuture<'_, Result<u64>> {
        futures::future::ready(Ok(0)).boxed()
    }

    fn prune_build_cache(&self, _keep_bytes: u64) -> BoxFuture<'_, Result<u64>> {
        futures::future::ready(Ok(0)).boxed()
    }

    fn disk(&self) -> BoxFuture<'_, Option<DiskSpace>> {
        futures::future::ready(Some(DiskSpace { free: 100 << 30, total: 200 << 30 })).boxed()
    }
}

/// The text of file `path` in a tar archive.
fn read_from_tar(archive: &[u8], path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        let name = entry.path().ok()?.to_string_lossy().trim_start_matches("./").to_string();
        if name == path {
            let mut text = String::new();
            entry.read_to_string(&mut text).ok()?;
            return Some(text);
        }
    }
    None
}
