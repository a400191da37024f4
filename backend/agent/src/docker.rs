//! The real `ContainerRuntime`: a Docker engine through bollard.

use std::collections::HashMap;
use std::time::Duration;

use berth_wire::agent::HostCapacity;
use berth_wire::labels;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, CreateImageOptions, EventsOptions, ImportImageOptions,
    ListContainersOptions, ListImagesOptions, LogsOptions, PruneBuildOptions, RemoveContainerOptions,
    RemoveImageOptions, StatsOptions, StopContainerOptions,
};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use crate::runtime::{
    BuildEvent, BuildSpec, ByteStream, ContainerDetails, ContainerEvent, ContainerRuntime, ContainerSpec,
    ContainerSummary, DiskSpace, ImageSummary, LogStream, Result, RuntimeError, UsageSample,
};

/// Builds get their own request timeout: bollard's default (120 s) covers the context upload and
/// would cut long builds.
const BUILD_REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// One team network created at a time: replicas start in parallel, and two creates of one
    /// name would make two networks on engines older than API 1.44.
    networks: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl DockerRuntime {
    /// Connects through `DOCKER_HOST` or the local socket, and says which was tried when the
    /// engine is unreachable.
    pub async fn connect() -> anyhow::Result<DockerRuntime> {
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
        Ok(DockerRuntime { docker, networks: Default::default() })
    }
}

impl DockerRuntime {
    /// The team's own bridge network on this host, created on first use. Its containers reach
    /// each other (by app name too); Docker isolates bridge networks from each other, so other
    /// teams' containers cannot reach them, while the host, and so the ingress, reaches all.
    /// Kept when the team's last container goes (a create racing a removal would lose it); the
    /// tests remove them with their host's containers.
    async fn team_network(&self, team: &str, host: Option<&String>) -> Result<String> {
        let host = host.map_or("", String::as_str);
        let name = team_network_name(host, team);
        let _one_at_a_time = self.networks.lock().await;
        match self.docker.inspect_network(&name, None).await {
            Ok(_) => return Ok(name),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(other) => return Err(error(other)),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([
                (labels::MANAGED.to_string(), "1".to_string()),
                (labels::HOST.to_string(), host.to_string()),
                (labels::TEAM.to_string(), team.to_string()),
            ])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(name),
            // Created meanwhile by another container's start.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(name),
            Err(bollard::errors::Error::DockerResponseServerError { message, .. }) if message.contains("pool") => {
                Err(RuntimeError::Other(format!(
                    "creating network {name} for team {team}: {message}. Docker has no address range left for another network: \
                     give it more with \"default-address-pools\" in /etc/docker/daemon.json (e.g. {{\"base\": \"10.200.0.0/16\", \"size\": 24}})"
                )))
            }
            Err(other) => Err(error(other)),
        }
    }
}

/// A build's error as the builder said it (the step's output is in the lines before).
fn build_error(error: bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerStreamError { error } => error,
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    }
}

fn error(error: bollard::errors::Error) -> RuntimeError {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code: 404, message } => {
            RuntimeError::NotFound(message)
        }
        bollard::errors::Error::DockerResponseServerError { status_code: 409, message } => {
            RuntimeError::Conflict(message)
        }
        bollard::errors::Error::DockerResponseServerError { message, .. } => RuntimeError::Other(message),
        other => RuntimeError::Other(other.to_string()),
    }
}

fn details(inspect: ContainerInspectResponse) -> ContainerDetails {
    let state = inspect.state.as_ref();
    let settings = inspect.network_settings.as_ref();
    let addresses = settings
        .and_then(|s| s.networks.as_ref())
        .map(|networks| networks.values().filter_map(|n| n.ip_address.clone()).filter(|ip| !ip.is_empty()).collect())
        .unwrap_or_default();
    let published = settings
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|(key, bindings)| {
                    let container_port: u16 = key.strip_suffix("/tcp")?.parse().ok()?;
                    let host_port = bindings.as_ref()?.iter().find_map(|b| b.host_port.as_ref()?.parse().ok())?;
                    Some((container_port, host_port))
                })
                .collect()
        })
        .unwrap_or_default();
    ContainerDetails {
        id: inspect.id.unwrap_or_default(),
        labels: inspect.config.and_then(|c| c.labels).unwrap_or_default(),
        running: state.and_then(|s| s.running).unwrap_or(false),
        exit_code: state.and_then(|s| s.exit_code),
        addresses,
        published,
    }
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

/// Processes (threads included) one app container may run: a fork bomb stops there instead of
/// exhausting the host's PID space for every tenant.
const PIDS_LIMIT: i64 = 4096;
/// Each app container's log is rotated at this size, keeping this many files (a chatty app no
/// longer fills the host's disk).
const LOG_MAX_SIZE: &str = "10m";
const LOG_MAX_FILES: &str = "5";

/// The Docker network of `team`'s containers on `host`: `berth-<team>-<host>` (characters Docker
/// does not take in a name become `_`).
pub fn team_network_name(host: &str, team: &str) -> String {
    let clean = |s: &str| {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') { c } else { '_' }).collect::<String>()
    };
    format!("berth-{}-{}", clean(team), clean(host))
}

/// `network`: the team network the container joins (reachable by its app's name there), or
/// `None` on the host's network.
fn create_body(spec: &ContainerSpec, network: Option<&str>) -> ContainerCreateBody {
    let d = &spec.desired;
    let port_key = format!("{}/tcp", d.port);
    let p = &d.privileges;
    let port_bindings = spec.publish_on.filter(|_| !p.host_network).map(|ip| {
        HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding { host_ip: Some(ip.to_string()), host_port: Some(String::new()) }]),
        )])
    });
    let host_config = HostConfig {
        memory: d.memory_mb.map(|mb| (mb * 1024 * 1024) as i64),
        nano_cpus: d.cpu_millis.map(|m| m as i64 * 1_000_000),
        port_bindings,
        privileged: p.privileged.then_some(true),
        network_mode: if p.host_network { Some("host".to_string()) } else { network.map(str::to_string) },
        binds: (!p.mounts.is_empty()).then(|| {
            p.mounts
                .iter()
                .map(|m| format!("{}:{}{}", m.source, m.target, if m.read_only { ":ro" } else { "" }))
                .collect()
        }),
        cap_add: (!p.cap_add.is_empty()).then(|| p.cap_add.clone()),
        // An instance admin's privileged container is trusted whole; every other one cannot gain
        // privileges through setuid binaries and has a bounded process count.
        pids_limit: (!p.privileged).then_some(PIDS_LIMIT),
        security_opt: (!p.privileged).then(|| vec!["no-new-privileges:true".to_string()]),
        log_config: Some(bollard::models::HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                ("max-file".to_string(), LOG_MAX_FILES.to_string()),
            ])),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(d.image.clone()),
        env: Some(d.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(spec.labels.clone()),
        exposed_ports: Some(vec![port_key]),
        stop_timeout: Some(d.stop_grace_secs as i64),
        host_config: Some(host_config),
        networking_config: network.filter(|_| !p.host_network).map(|network| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings { aliases: Some(vec![d.app.clone()]), ..Default::default() },
            )])),
        }),
        ..Default::default()
    }
}

impl ContainerRuntime for DockerRuntime {
    fn list<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<ContainerSummary>>> {
        async move {
            let filters = HashMap::from([("label".to_string(), vec![format!("{}={host}", labels::HOST)])]);
            let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
            let containers = self.docker.list_containers(Some(options)).await.map_err(error)?;
            Ok(containers
                .into_iter()
                .filter_map(|summary| {
                    Some(ContainerSummary {
                        id: summary.id?,
                        running: summary.state.map(|s| s.to_string()).as_deref() == Some("running"),
                        labels: summary.labels.unwrap_or_default(),
                    })
                })
                .collect())
        }
        .boxed()
    }

    fn inspect<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<ContainerDetails>> {
        async move { self.docker.inspect_container(container, None).await.map(details).map_err(error) }.boxed()
    }

    fn create<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, Result<String>> {
        async move {
            let network = match spec.desired.privileges.host_network {
                true => None,
                false => Some(self.team_network(&spec.desired.team, spec.labels.get(labels::HOST)).await?),
            };
            let options = CreateContainerOptions { name: Some(spec.name.clone()), ..Default::default() };
            let created = match self
                .docker
                .create_container(Some(options.clone()), create_body(spec, network.as_deref()))
                .await
            {
                // The network went between our look and the create (removed by an operator's
                // prune, say): made again, once.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message })
                    if network.is_some() && message.contains("network") && message.contains("not found") =>
                {
                    tracing::warn!(container = %spec.name, %message, "the team network vanished; creating it again");
                    let network = self.team_network(&spec.desired.team, spec.labels.get(labels::HOST)).await?;
                    self.docker.create_container(Some(options), create_body(spec, Some(&network))).await
                }
                created => created,
            };
            Ok(created.map_err(error)?.id)
        }
        .boxed()
    }

    fn start<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<()>> {
        async move { self.docker.start_container(container, None).await.map_err(error) }.boxed()
    }

    fn stop<'a>(&'a self, container: &'a str, grace_secs: u32) -> BoxFuture<'a, Result<()>> {
        let options = StopContainerOptions { t: Some(grace_secs as i32), ..Default::default() };
        async move { self.docker.stop_container(container, Some(options)).await.map_err(error) }.boxed()
    }

    fn remove<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Result<()>> {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        async move { self.docker.remove_container(container, Some(options)).await.map_err(error) }.boxed()
    }

    fn events(&self, host: &str) -> BoxStream<'static, Result<ContainerEvent>> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![format!("{}={host}", labels::HOST)]),
            ("event".to_string(), vec!["die".to_string(), "destroy".to_string()]),
        ]);
        let options = EventsOptions { filters: Some(filters), ..Default::default() };
        self.docker
            .events(Some(options))
            .filter_map(|event| async move {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => return Some(Err(error(e))),
                };
                let actor = event.actor?;
                let container_id = actor.id?;
                match event.action.as_deref() {
                    Some("die") => {
                        let exit_code = actor.attributes.and_then(|mut a| a.remove("exitCode"));
                        Some(Ok(ContainerEvent::Died { container_id, exit_code }))
                    }
                    Some("destroy") => Some(Ok(ContainerEvent::Destroyed { container_id })),
                    _ => None,
                }
            })
            .boxed()
    }

    fn has_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool>> {
        async move {
            match self.docker.inspect_image(image).await {
                Ok(_) => Ok(true),
                Err(e) => match error(e) {
                    RuntimeError::NotFound(_) => Ok(false),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    fn pull<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let (name, tag) = split_image(image);
            let options = CreateImageOptions { from_image: Some(name), tag: Some(tag), ..Default::default() };
            let mut pull = self.docker.create_image(Some(options), None, None);
            while let Some(progress) = pull.next().await {
                progress.map_err(error)?;
            }
            Ok(())
        }
        .boxed()
    }

    fn load<'a>(&'a self, archive: ByteStream, image: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            // Spooled to a file first: the archive's index must be checked before the engine
            // sees any of it, and Docker writes it at the end.
            let other = |e: anyhow::Error| RuntimeError::Other(format!("{e:#}"));
            let spool = spool(archive).await.map_err(other)?;
            let path = spool.path().to_path_buf();
            let wanted = image.to_string();
            tokio::task::spawn_blocking(move || crate::images::check_archive(&path, &wanted))
                .await
                .map_err(|e| RuntimeError::Other(e.to_string()))?
                .map_err(other)?;
            let file = tokio::fs::File::open(spool.path()).await.map_err(|e| RuntimeError::Other(e.to_string()))?;
            let chunks = futures::stream::unfold(file, |mut file| async move {
                use tokio::io::AsyncReadExt as _;
                let mut chunk = bytes::BytesMut::with_capacity(1 << 16);
                match file.read_buf(&mut chunk).await {
                    Ok(0) => None,
                    Ok(_) => Some((Ok::<_, std::io::Error>(chunk.freeze()), file)),
                    Err(error) => Some((Err(error), file)),
                }
            });
            let mut load = self.docker.import_image_stream(ImportImageOptions::default(), chunks, None);
            while let Some(progress) = load.next().await {
                progress.map_err(error)?;
            }
            Ok(())
        }
        .boxed()
    }

    fn export(&self, image: &str) -> ByteStream {
        self.docker.export_image(image).map(|chunk| chunk.map_err(std::io::Error::other)).boxed()
    }

    fn usage<'a>(&'a self, container: &'a str) -> BoxFuture<'a, Option<UsageSample>> {
        async move {
            let options = StatsOptions { stream: false, one_shot: true };
            let stats = self.docker.stats(container, Some(options)).next().await?.ok()?;
            let cpu_ns = stats.cpu_stats?.cpu_usage?.total_usage?;
            // Reclaimable page cache is left out, as `docker stats` does: on cgroup v1
            // `total_inactive_file` (v1 also has a non-hierarchical `inactive_file`; `cache`
            // counts active pages too), on v2 `inactive_file`.
            let memory_bytes = stats.memory_stats.map_or(0, |m| {
                let stats = m.stats.as_ref();
                let cache = stats.and_then(|s| s.get("total_inactive_file").or(s.get("inactive_file")).copied());
                m.usage.unwrap_or(0).saturating_sub(cache.unwrap_or(0))
            });
            Some(UsageSample { cpu_ns, memory_bytes })
        }
        .boxed()
    }

    fn logs(&self, container: &str, tail: u32, follow: bool) -> LogStream {
        let options = LogsOptions { follow, stdout: true, stderr: true, tail: tail.to_string(), ..Default::default() };
        self.docker
            .logs(container, Some(options))
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

    fn capacity(&self) -> BoxFuture<'_, HostCapacity> {
        async move {
            match self.docker.info().await {
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
        .boxed()
    }

    fn build(&self, spec: BuildSpec, context: ByteStream) -> BoxStream<'static, BuildEvent> {
        let docker = self.docker.clone().with_timeout(BUILD_REQUEST_TIMEOUT);
        let (events, received) = tokio::sync::mpsc::channel(256);
        // The build runs in a task owning the engine connection; when the receiver is dropped,
        // the task drops the connection and the engine cancels the build.
        tokio::spawn(async move {
            let options = BuildImageOptions {
                dockerfile: spec.dockerfile.clone(),
                t: Some(spec.tag.clone()),
                rm: true,
                forcerm: true,
                nocache: spec.no_cache,
                buildargs: Some(spec.build_args.clone()),
                labels: Some(spec.labels.clone()),
                ..Default::default()
            };
            let mut build = std::pin::pin!(docker.build_image(options, None, Some(bollard::body_try_stream(context))));
            let outcome = loop {
                let next = tokio::select! {
                    next = build.next() => next,
                    () = events.closed() => return,
                };
                match next {
                    None => break BuildEvent::Built,
                    Some(Err(e)) => break BuildEvent::Failed(build_error(e)),
                    Some(Ok(info)) => {
                        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                            break BuildEvent::Failed(detail);
                        }
                        let text = info.stream.or(info.status).unwrap_or_default();
                        for line in text.lines().filter(|l| !l.trim().is_empty()) {
                            if events.send(BuildEvent::Line(line.to_string())).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            let _ = events.send(outcome).await;
        });
        crate::runtime::receiver_stream(received)
    }

    fn images<'a>(&'a self, key: &'a str, value: &'a str) -> BoxFuture<'a, Result<Vec<ImageSummary>>> {
        async move {
            let filters = HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
            let options = ListImagesOptions { filters: Some(filters), ..Default::default() };
            let images = self.docker.list_images(Some(options)).await.map_err(error)?;
            Ok(images
                .into_iter()
                .map(|image| ImageSummary { id: image.id, tags: image.repo_tags, labels: image.labels })
                .collect())
        }
        .boxed()
    }

    fn remove_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let options = RemoveImageOptions { force: false, noprune: false, ..Default::default() };
            self.docker.remove_image(image, Some(options), None).await.map_err(error)?;
            Ok(())
        }
        .boxed()
    }

    fn build_cache_bytes(&self) -> BoxFuture<'_, Result<u64>> {
        async move {
            let usage = self.docker.df(None).await.map_err(error)?;
            // Engines before API 1.52 report the cache in another shape: the classic builder's
            // cache is then the built images' parent layers, which image cleanup removes.
            Ok(usage.build_cache_usage.and_then(|u| u.total_size).unwrap_or(0).max(0) as u64)
        }
        .boxed()
    }

    fn prune_build_cache(&self, keep_bytes: u64) -> BoxFuture<'_, Result<u64>> {
        async move {
            let options = PruneBuildOptions {
                max_used_space: Some(keep_bytes.min(i64::MAX as u64) as i64),
                all: Some(true),
                ..Default::default()
            };
            let pruned = self.docker.prune_build(Some(options)).await.map_err(error)?;
            Ok(pruned.space_reclaimed.unwrap_or(0).max(0) as u64)
        }
        .boxed()
    }

    fn disk(&self) -> BoxFuture<'_, Option<DiskSpace>> {
        async move {
            let root = self.docker.info().await.ok()?.docker_root_dir?;
            let stats = rustix::fs::statvfs(root.as_str()).ok()?;
            Some(DiskSpace {
                free: stats.f_bavail.saturating_mul(stats.f_frsize),
                total: stats.f_blocks.saturating_mul(stats.f_frsize),
            })
        }
        .boxed()
    }
}

/// Writes `archive` to a temporary file (removed when the handle drops).
async fn spool(mut archive: ByteStream) -> anyhow::Result<tempfile::NamedTempFile> {
    use anyhow::Context as _;
    use tokio::io::AsyncWriteExt as _;
    let spool = tempfile::Builder::new().prefix("berth-image-").tempfile().context("creating a spool file")?;
    let mut file = tokio::fs::File::from_std(spool.reopen().context("opening the spool file")?);
    while let Some(chunk) = archive.next().await {
        file.write_all(&chunk.context("receiving the image archive")?).await.context("spooling the image archive")?;
    }
    file.flush().await.context("spooling the image archive")?;
    Ok(spool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_networks_are_named_by_team_and_host() {
        assert_eq!(team_network_name("h1", "main"), "berth-main-h1");
        assert_eq!(team_network_name("node 2", "a/b"), "berth-a_b-node_2");
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(split_image("hello:v1"), ("hello".into(), "v1".into()));
        assert_eq!(split_image("hello"), ("hello".into(), "latest".into()));
        assert_eq!(split_image("reg:5000/team/app"), ("reg:5000/team/app".into(), "latest".into()));
        assert_eq!(split_image("reg:5000/app:2"), ("reg:5000/app".into(), "2".into()));
    }

    #[test]
    fn app_containers_cannot_gain_privileges_fork_without_bound_or_log_without_rotation() {
        let desired = berth_wire::agent::DesiredContainer {
            replica_id: "r1".into(),
            team: "main".into(),
            app: "web".into(),
            release: 1,
            image: "web:1".into(),
            port: 8080,
            env: Default::default(),
            health_path: None,
            cpu_millis: None,
            memory_mb: None,
            stop_grace_secs: 1,
            privileges: Default::default(),
        };
        let spec = ContainerSpec { name: "c".into(), labels: HashMap::new(), desired, publish_on: None };
        let body = create_body(&spec, Some("berth-main-h1"));
        // On the team's network, where the app's name resolves to its replicas.
        let endpoints = body.networking_config.and_then(|n| n.endpoints_config).expect("the team network");
        assert_eq!(endpoints["berth-main-h1"].aliases, Some(vec!["web".to_string()]));
        let host = body.host_config.expect("a host config");
        assert_eq!(host.network_mode.as_deref(), Some("berth-main-h1"));
        assert_eq!(host.pids_limit, Some(PIDS_LIMIT));
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges:true".to_string()]));
        let log = host.log_config.expect("a log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let options = log.config.expect("rotation options");
        assert_eq!((options["max-size"].as_str(), options["max-file"].as_str()), ("10m", "5"));
    }
}
