//! `berth agent`: joins a control plane once, then runs the host agent (the same actor the server
//! runs in-process) and keeps one WebSocket to the control plane, reconnecting when it breaks.
//! While the control plane is unreachable the agent keeps running what it was last told to.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_wire::agent::{AgentMessage, ControlMessage, HostCapacity, JoinRequest, JoinResponse, LogChunk};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::actor::{self, AgentConfig, AgentHandle, EndpointMode};
use crate::docker::DockerRuntime;
use crate::images::HttpImageSource;
use crate::runtime::ContainerRuntime as _;
use crate::tls::ControlPlane;
use backon::BackoffBuilder as _;

#[derive(Debug, Clone)]
pub struct AgentDaemonConfig {
    /// The control plane's API URL (`http://10.0.0.1:7878`).
    pub control_plane: String,
    /// Needed only for the first start; afterwards the stored credential is used.
    pub join_token: Option<String>,
    pub name: String,
    pub advertise_addr: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    /// The CA to verify an `https://` control plane with at join (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Allow plain `http://` to a non-loopback control plane.
    pub insecure: bool,
}

/// What the agent keeps after joining (`<data dir>/host.json`, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Membership {
    host: String,
    credential: String,
    advertise_addr: IpAddr,
    /// The control plane's CA (PEM) pinned at join over `https://` (`--ca-file`); nothing else
    /// is trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
    /// Joined over `https://` verified by the system's roots (no `--ca-file`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    system_roots: bool,
}

/// How often the agent reports even when nothing changed: its heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Silence from the control plane after which the connection is presumed dead (it pings each second).
const READ_IDLE: Duration = Duration::from_secs(4);

pub async fn run(config: AgentDaemonConfig) -> anyhow::Result<()> {
    let runtime = Arc::new(DockerRuntime::connect().await?);
    let capacity = runtime.capacity().await;
    let base = config.control_plane.trim_end_matches('/').to_string();
    crate::tls::check_cleartext(&base, config.insecure)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the agent's data directory {}", config.data_dir.display()))?;
    let membership = match load_membership(&config.data_dir)? {
        Some(membership) => membership,
        None => join(&config, &base, &capacity).await?,
    };
    let primary = ControlPlane::new(&base, membership.ca_pem.as_deref(), membership.system_roots)?;
    println!("berth agent: host {} ({}) connected to {base}", membership.host, membership.advertise_addr);
    // The instance the agent talks to: the one it joined, or the leader another instance named.
    let current = Arc::new(std::sync::RwLock::new(primary.clone()));

    let (desired_tx, desired_rx) = watch::channel(None);
    let mut agent_config =
        AgentConfig::new(membership.host.clone(), EndpointMode::Published(membership.advertise_addr));
    agent_config.image_source =
        Some(Arc::new(HttpImageSource { plane: current.clone(), credential: membership.credential.clone() }));
    let handle = actor::spawn(runtime, agent_config, desired_rx);
    // Capped low: a control plane that comes back should hear from every agent within its
    // start-up grace (and a dropped connection must not outlast the heartbeat timeout). backon's
    // jitter adds up to 100% after the cap, so 0.5 s caps the wait at 1 s. Jittered, so a fleet
    // of agents does not reconnect in lockstep.
    let reconnect_backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(500))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = reconnect_backoff();
    loop {
        let started = std::time::Instant::now();
        let plane = current.read().expect("BUG: control plane lock poisoned").clone();
        let outcome = session(&plane, &membership, &desired_tx, &handle, &capacity).await;
        // A session that held for a while was a healthy one: the next failure starts afresh.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = reconnect_backoff();
        }
        match outcome {
            Ok(()) => tracing::warn!("the control plane closed the connection; reconnecting"),
            Err(error) if refused_credential(&error) => {
                bail!(
                    "the control plane no longer accepts this host's credential (the host was removed); \
                     its containers keep running. Delete {} and join again with a new join token",
                    membership_path(&config.data_dir).display()
                );
            }
            Err(error) => match leader_named(&error).filter(|leader| *leader != plane.base) {
                Some(leader) => {
                    let to_leader = crate::tls::check_cleartext(&leader, config.insecure).and_then(|()| {
                        ControlPlane::new(&leader, membership.ca_pem.as_deref(), membership.system_roots)
                    });
                    match to_leader {
                        Ok(leader) => {
                            tracing::info!(
                                instance = plane.base,
                                leader = leader.base,
                                "that instance does not lead; connecting to the leader"
                            );
                            *current.write().expect("BUG: control plane lock poisoned") = leader;
                        }
                        Err(error) => tracing::warn!(
                            leader,
                            error = format!("{error:#}"),
                            "the control plane names a leader this agent cannot trust; retrying where it joined"
                        ),
                    }
                }
                None => {
                    tracing::warn!(error = format!("{error:#}"), "connection to the control plane failed; retrying");
                    // A leader it was sent to may be gone: start again where it joined, which
                    // leads now or names the instance that does.
                    if plane.base != primary.base {
                        *current.write().expect("BUG: control plane lock poisoned") = primary.clone();
                    }
                }
            },
        }
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(1))).await;
    }
}

/// The leader an instance that does not lead named, answering the connection with 503.
fn leader_named(error: &anyhow::Error) -> Option<String> {
    use tokio_tungstenite::tungstenite::Error;
    error.chain().find_map(|cause| match cause.downcast_ref::<Error>() {
        Some(Error::Http(response)) if response.status() == 503 => {
            let leader = response.headers().get(berth_wire::LEADER_HEADER)?.to_str().ok()?;
            Some(leader.trim_end_matches('/').to_string())
        }
        _ => None,
    })
}

/// True when the control plane answered the connection with 401.
fn refused_credential(error: &anyhow::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    error
        .chain()
        .any(|cause| matches!(cause.downcast_ref::<Error>(), Some(Error::Http(response)) if response.status() == 401))
}

async fn join(config: &AgentDaemonConfig, base: &str, capacity: &HostCapacity) -> anyhow::Result<Membership> {
    let Some(join_token) = config.join_token.clone() else {
        bail!(
            "this host has not joined yet ({} has no host.json): pass --token with a join token",
            config.data_dir.display()
        );
    };
    let advertise_addr = match config.advertise_addr {
        Some(ip) => ip,
        None => detect_address(base).await?,
    };
    if advertise_addr.is_loopback() {
        bail!(
            "this host would advertise {advertise_addr}, a loopback address the ingress cannot reach it on \
             (the control plane is on this machine): pass --advertise-addr with its address on the network"
        );
    }
    let request = JoinRequest {
        join_token,
        name: config.name.clone(),
        advertise_addr: advertise_addr.to_string(),
        labels: config.labels.clone(),
        capacity: capacity.clone(),
    };
    let https = base.to_ascii_lowercase().starts_with("https://");
    let (joined, ca_pem) = if https {
        let trust = crate::tls::JoinTrust::new(config.ca_file.as_deref())?;
        let joined = post_join(&trust.http, base, &request).await.context("joining the control plane")?;
        (joined, trust.pinned)
    } else {
        let joined = post_join(&reqwest::Client::new(), base, &request).await.context("joining the control plane")?;
        (joined, None)
    };
    let system_roots = https && ca_pem.is_none();
    let membership =
        Membership { host: joined.host, credential: joined.credential, advertise_addr, ca_pem, system_roots };
    store_membership(&config.data_dir, &membership)?;
    Ok(membership)
}

/// The local address this host uses to reach the control plane.
async fn detect_address(base: &str) -> anyhow::Result<IpAddr> {
    let authority = base.split("://").nth(1).unwrap_or(base).split('/').next().unwrap_or_default();
    // Without a port, the scheme's.
    let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && (!host.contains(':') || host.ends_with(']'))
    });
    let authority = if has_port {
        authority.to_string()
    } else {
        let port = if base.to_ascii_lowercase().starts_with("https://") { 443 } else { 80 };
        format!("{authority}:{port}")
    };
    let target = tokio::net::lookup_host(authority.as_str())
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let socket = tokio::net::UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await?;
    socket.connect(target).await?;
    Ok(socket.local_addr()?.ip())
}

/// `POST /api/v1/agents/join`: the one API call an agent makes without a credential.
async fn post_join(client: &reqwest::Client, base: &str, request: &JoinRequest) -> anyhow::Result<JoinResponse> {
    let response = client
        .post(format!("{base}/api/v1/agents/join"))
        .json(request)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    if response.status().is_success() {
        return response.json().await.context("reading the control plane's answer");
    }
    let status = response.status();
    match response.json::<berth_wire::ErrorBody>().await {
        Ok(body) => bail!("{} ({status})", body.message),
        Err(_) => bail!("the control plane answered {status}"),
    }
}

fn membership_path(dir: &Path) -> PathBuf {
    dir.join("host.json")
}

fn load_membership(dir: &Path) -> anyhow::Result<Option<Membership>> {
    let path = membership_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn store_membership(dir: &Path, membership: &Membership) -> anyhow::Result<()> {
    let path = membership_path(dir);
    crate::edge::write_private(&path, serde_json::to_string_pretty(membership)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// One connection: desired lists in, reports out (on every change and every heartbeat).
async fn session(
    plane: &ControlPlane,
    membership: &Membership,
    desired_tx: &watch::Sender<Option<Vec<berth_wire::agent::DesiredContainer>>>,
    handle: &AgentHandle,
    capacity: &HostCapacity,
) -> anyhow::Result<()> {
    let url = plane.ws_url("/api/v1/agents/connect");
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {}", membership.credential).parse()?);
    let connector = plane.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
    let (socket, _) = tokio::time::timeout(Duration::from_secs(5), connect).await.context("connecting timed out")??;
    tracing::info!(host = membership.host, "connected to the control plane");
    let (mut sink, mut stream) = socket.split();
    let (outgoing, mut to_send) = tokio::sync::mpsc::unbounded_channel::<AgentMessage>();
    let mut observed = handle.observed();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            message = tokio::time::timeout(READ_IDLE, stream.next()) => {
                let Some(message) = message.context("the control plane went silent")? else { return Ok(()) };
                match message? {
                    Message::Text(text) => match serde_json::from_str::<ControlMessage>(&text)? {
                        ControlMessage::Desired { containers } => {
                            desired_tx.send_replace(Some(containers));
                        }
                        ControlMessage::Logs { transfer, container_id, tail, follow } => {
                            let (plane, credential) = (plane.clone(), membership.credential.clone());
                            tokio::spawn(export_logs(plane, credential, handle.clone(), transfer, container_id, tail, follow));
                        }
                        ControlMessage::ExportImage { transfer, image } => {
                            tokio::spawn(export_image(plane.clone(), membership.credential.clone(), handle.clone(), transfer, image, outgoing.clone()));
                        }
                        ControlMessage::Build { transfer, build } => {
                            tokio::spawn(run_build(plane.clone(), membership.credential.clone(), handle.clone(), transfer, build));
                        }
                        ControlMessage::CleanImages { app, keep, cache_max_bytes } => {
                            let runtime = handle.runtime().clone();
                            tokio::spawn(async move {
                                let keep = keep.into_iter().collect();
                                match crate::builds::clean_images(runtime.as_ref(), &app, &keep, cache_max_bytes).await {
                                    Ok(cleaned) => tracing::info!(app, removed = ?cleaned.images, cache = cleaned.cache_bytes, "cleaned built images"),
                                    Err(error) => tracing::warn!(app, error = format!("{error:#}"), "cleaning built images"),
                                }
                            });
                        }
                    },
                    Message::Close(_) => return Ok(()),
                    _ => {}
                }
            }
            changed = observed.changed() => {
                changed?;
                send_report(&mut sink, handle, capacity).await?;
            }
            _ = heartbeat.tick() => send_report(&mut sink, handle, capacity).await?,
            Some(message) = to_send.recv() => {
                sink.send(Message::Text(serde_json::to_string(&message)?.into())).await?;
            }
        }
    }
}

async fn send_report<S>(sink: &mut S, handle: &AgentHandle, capacity: &HostCapacity) -> anyhow::Result<()>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let observed = handle.observed().borrow().values().cloned().collect();
    let report = AgentMessage::Report { observed, capacity: capacity.clone() };
    sink.send(Message::Text(serde_json::to_string(&report)?.into())).await?;
    Ok(())
}

/// Uploads `image` for another host, or says this host does not have it.
async fn export_image(
    plane: ControlPlane,
    credential: String,
    handle: AgentHandle,
    transfer: String,
    image: String,
    outgoing: tokio::sync::mpsc::UnboundedSender<AgentMessage>,
) {
    if !handle.has_image(&image).await {
        let _ = outgoing.send(AgentMessage::Unavailable { transfer });
        return;
    }
    tracing::info!(image, "uploading an image another host needs");
    upload(&plane, &credential, &transfer, reqwest::Body::wrap_stream(handle.export_image(&image))).await;
}

/// Builds an image the control plane asked for: downloads the context, uploads the progress for
/// as long as the control plane reads it (when it stops, the upload fails, the build stream is
/// dropped and the engine cancels the build).
async fn run_build(
    plane: ControlPlane,
    credential: String,
    handle: AgentHandle,
    transfer: String,
    build: berth_wire::agent::BuildRequest,
) {
    let context = plane
        .http
        .get(format!("{}/api/v1/agents/transfers/{transfer}/context", plane.base))
        .bearer_auth(&credential)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    let context = match context {
        Ok(response) => response.bytes_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed(),
        Err(error) => {
            tracing::warn!(transfer, %error, "downloading a build context");
            let failed = berth_wire::agent::BuildUpdate::Failed {
                error: format!("the build host could not download the context: {error}"),
            };
            let mut json = serde_json::to_vec(&failed).expect("BUG: build updates serialise");
            json.push(b'\n');
            upload(&plane, &credential, &transfer, reqwest::Body::from(json)).await;
            return;
        }
    };
    tracing::info!(image = build.tag, "building an image");
    let lines = crate::builds::build_lines(handle.runtime().as_ref(), build, context);
    upload(&plane, &credential, &transfer, reqwest::Body::wrap_stream(lines)).await;
}

/// Uploads a container's log lines as JSON lines for as long as the control plane reads them.
async fn export_logs(
    plane: ControlPlane,
    credential: String,
    handle: AgentHandle,
    transfer: String,
    container: String,
    tail: u32,
    follow: bool,
) {
    let lines = handle.logs(&container, tail, follow).map(|(stream, line)| {
        let mut json = serde_json::to_vec(&LogChunk { stream, line }).expect("BUG: a LogChunk always serialises");
        json.push(b'\n');
        Ok::<_, std::io::Error>(json)
    });
    upload(&plane, &credential, &transfer, reqwest::Body::wrap_stream(lines)).await;
}

async fn upload(plane: &ControlPlane, credential: &str, transfer: &str, body: reqwest::Body) {
    let sent = plane
        .http
        .put(format!("{}/api/v1/agents/transfers/{transfer}", plane.base))
        .bearer_auth(credential)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => tracing::debug!(transfer, status = %response.status(), "the control plane ended the upload"),
        Err(error) => tracing::debug!(transfer, %error, "upload ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_instance_that_does_not_lead_names_the_leader_in_its_refusal() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 503 Service Unavailable\r\nberth-leader: https://cp-2:7878/\r\ncontent-length: 0\r\n\r\n",
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
                "HTTP/1.1 500 Internal Server Error\r\nberth-leader: https://cp-2:7878\r\ncontent-length: 0\r\n\r\n",
            ] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let mut named = Vec::new();
        for _ in 0..3 {
            let refused = tokio_tungstenite::connect_async(format!("ws://{address}/api/v1/agents/connect")).await;
            let error = anyhow::Error::from(refused.expect_err("refused")).context("connecting");
            named.push(leader_named(&error));
        }
        assert_eq!(named, [Some("https://cp-2:7878".to_string()), None, None]);
    }

    #[tokio::test]
    async fn the_address_toward_the_control_plane_is_found_with_or_without_a_port() {
        for base in ["https://127.0.0.1", "http://127.0.0.1", "http://127.0.0.1:7878/"] {
            let address = detect_address(base).await.unwrap_or_else(|e| panic!("{base}: {e:#}"));
            assert!(address.is_loopback(), "{base}: {address}");
        }
    }
}
