//! `berth ingress`: an edge-only ingress node. It joins the control plane once (a join token for a
//! credential of its own), then asks any control-plane instance for the route table the leader
//! published, waiting for each change; it keeps the last table and the certificates on disk
//! *before* it applies them, and serves on from them while no control plane answers, after its
//! own restart too. Every second it reports which table version it has applied and drained, so
//! the release protocol waits for it before it stops old containers.
//!
//! Files in the data directory (0700): `ingress-node.json` (the credential and the trust pinned
//! at join, 0600), `routes.json` (the last table, with the control planes it named) and
//! `certificates.json` (certificates with their private keys, 0600).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use backon::BackoffBuilder as _;
use berth_ingress::follower::Follower;
use berth_ingress::{Certificate, Ingress, IngressConfig, RouteSpec};
use berth_wire::edge::{IngressCertificate, IngressJoinRequest, IngressJoinResponse, IngressReport, IngressTable};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::tls::ControlPlane;

#[derive(Debug, Clone)]
pub struct IngressNodeConfig {
    /// The control plane's API URLs (`--join`, repeatable): the node joins at the first that
    /// answers and turns to the next when one is unreachable.
    pub control_planes: Vec<String>,
    /// Needed only for the first start; afterwards the stored credential is used.
    pub join_token: Option<String>,
    pub name: String,
    pub data_dir: PathBuf,
    /// The CA to verify an `https://` control plane with at join (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Allow plain `http://` to a non-loopback control plane.
    pub insecure: bool,
    pub listen: SocketAddr,
    pub https_listen: Option<SocketAddr>,
    pub ingress: IngressConfig,
    /// How long requests in flight to endpoints a new table removed may finish before the node
    /// acknowledges the table anyway.
    pub drain_timeout: Duration,
}

/// What the node keeps after joining.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Membership {
    node: String,
    credential: String,
    /// The `--join` URLs.
    control_planes: Vec<String>,
    /// The control plane's CA (PEM) pinned at join over `https://` (`--ca-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
    /// Joined over `https://` verified by the system's roots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    system_roots: bool,
}

/// The last table, as saved before it was applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedTable {
    version: i64,
    routes: Vec<RouteSpec>,
    /// The control planes running when it was published.
    control_planes: Vec<String>,
}

const MEMBERSHIP: &str = "ingress-node.json";
const TABLE: &str = "routes.json";
const CERTIFICATES: &str = "certificates.json";
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often certificates that did not all load are fetched again.
const CERTIFICATES_RETRY: Duration = Duration::from_secs(30);
/// Longer than the control plane's wait for a change (20 s).
const TABLE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A control plane that takes longer to take a report is presumed gone (the node turns to the
/// next); well under the release protocol's drain timeout.
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(config: IngressNodeConfig) -> anyhow::Result<()> {
    if config.control_planes.is_empty() {
        bail!("pass --join with the control plane's API URL");
    }
    for base in &config.control_planes {
        crate::tls::check_cleartext(base, config.insecure)?;
    }
    create_private_dir(&config.data_dir)?;
    let membership = match load_json::<Membership>(&config.data_dir.join(MEMBERSHIP))? {
        Some(membership) => membership,
        None => join(&config).await?,
    };

    let ingress = Ingress::new(config.ingress.clone());
    let follower = Arc::new(Follower::new(ingress.clone()));
    // What it served last, before it listens: it serves on from it while no control plane answers.
    let saved_certificates: Vec<IngressCertificate> =
        load_json(&config.data_dir.join(CERTIFICATES))?.unwrap_or_default();
    let mut certificates = load_certificates(&ingress, &saved_certificates);
    let saved = load_json::<SavedTable>(&config.data_dir.join(TABLE))?;
    let mut version = 0;
    let mut learned = Vec::new();
    if let Some(saved) = saved {
        let names = saved.routes.len();
        follower.apply(saved.version, saved.routes, config.drain_timeout).await.run().await;
        (version, learned) = (saved.version, saved.control_planes);
        tracing::info!(version, names, "serving the saved route table");
    }
    // The `--join` URLs first (given again at every start), then those of the first join, then
    // those the last table named.
    let planes = Arc::new(Planes::new(membership.ca_pem.clone(), membership.system_roots, config.insecure));
    planes.learn(&config.control_planes, true);
    planes.learn(&membership.control_planes, true);
    planes.learn(&learned, false);
    if planes.is_empty() {
        bail!("none of the control planes {:?} can be used (see the log)", config.control_planes);
    }

    let http = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} (--listen)", config.listen))?;
    let http_addr = http.local_addr()?;
    tokio::spawn(log_end("HTTP", ingress.clone().serve(http)));
    let mut banner = format!("berth ingress: node {} serving http://{http_addr}", membership.node);
    let mut address = http_addr.to_string();
    if let Some(listen) = config.https_listen {
        let https = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen} (--https-listen)"))?;
        let https_addr = https.local_addr()?;
        tokio::spawn(log_end("HTTPS", ingress.clone().serve_tls(https)));
        banner.push_str(&format!(" and https://{https_addr}"));
        address.push_str(&format!(" {https_addr}"));
    }
    println!("{banner}, route table version {version}");

    let started_at = crate::actor::now_ms();
    tokio::spawn(report(planes.clone(), membership.credential.clone(), follower.acknowledged(), address, started_at));

    let backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut retry = backoff();
    // The certificate ids last fetched, and when: while some did not load, they are fetched
    // again now and then (a key file another instance had not written yet).
    let mut fetched: Option<(Vec<i64>, std::time::Instant)> = None;
    // The control planes that took the credential since this start, and those that refused it
    // since one last took it.
    let (mut accepted, mut refusals) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    loop {
        let asked = match &fetched {
            Some((ids, at)) if *ids != certificates && at.elapsed() < CERTIFICATES_RETRY => ids.clone(),
            _ => certificates.clone(),
        };
        let plane = planes.current();
        // A report that failed moves the node on too: a table request to an instance that
        // stopped answering (paused, unplugged) is not waited out.
        let mut moved = planes.moved.subscribe();
        let answer = tokio::select! {
            answer = fetch_table(&plane, &membership.credential, version, &asked) => answer,
            _ = moved.changed() => continue,
        };
        let table = match answer {
            Ok(Some(table)) => {
                refusals.clear();
                accepted.insert(plane.base.clone());
                table
            }
            Ok(None) => {
                refusals.clear();
                accepted.insert(plane.base.clone());
                continue;
            }
            // An instance that never took the credential may be another cluster's (a wrong
            // --join): the node is removed when one that took it refuses it, or every one does.
            Err(error)
                if refused(&error) && !accepted.contains(&plane.base) && {
                    refusals.insert(plane.base.clone());
                    refusals.len() < planes.len()
                } =>
            {
                tracing::warn!(
                    control_plane = plane.base,
                    "this control plane refuses the node's credential; asking the next"
                );
                planes.failed(&plane.base);
                tokio::time::sleep(retry.next().unwrap_or(Duration::from_secs(1))).await;
                continue;
            }
            Err(error) if refused(&error) => {
                // Removed: what it may no longer serve goes, keys first.
                for file in [CERTIFICATES, TABLE] {
                    let _ = std::fs::remove_file(config.data_dir.join(file));
                }
                bail!(
                    "the control plane no longer accepts this node's credential (the node was removed): its saved \
                     table and certificates are deleted; delete {} and join again with a new join token",
                    config.data_dir.join(MEMBERSHIP).display()
                )
            }
            Err(error) => {
                tracing::warn!(
                    control_plane = plane.base,
                    error = format!("{error:#}"),
                    "asking for the route table failed"
                );
                planes.failed(&plane.base);
                tokio::time::sleep(retry.next().unwrap_or(Duration::from_secs(1))).await;
                continue;
            }
        };
        planes.learn(&table.control_planes, false);
        match follow(
            &config,
            &ingress,
            &follower,
            &plane,
            &membership.credential,
            table,
            &mut version,
            &mut certificates,
            &mut fetched,
        )
        .await
        {
            Ok(()) => retry = backoff(),
            Err(error) => {
                // Whatever failed (a table this version cannot read, a full disk), the node serves
                // on from what it has and tries again.
                tracing::error!(
                    error = format!("{error:#}"),
                    "taking the control plane's table failed; serving the last one"
                );
                planes.failed(&plane.base);
                tokio::time::sleep(retry.next().unwrap_or(Duration::from_secs(1))).await;
            }
        }
    }
}

/// Takes one answer of the control plane: its certificates (when they changed) before its
/// table (which may redirect a name to HTTPS because it has one), each saved before applied.
#[allow(clippy::too_many_arguments)]
async fn follow(
    config: &IngressNodeConfig,
    ingress: &Ingress,
    follower: &Arc<Follower>,
    plane: &ControlPlane,
    credential: &str,
    table: IngressTable,
    version: &mut i64,
    certificates: &mut Vec<i64>,
    fetched: &mut Option<(Vec<i64>, std::time::Instant)>,
) -> anyhow::Result<()> {
    if table.certificates == *certificates {
        // All loaded: nothing to ask again.
        *fetched = None;
    }
    let stale =
        fetched.as_ref().is_none_or(|(ids, at)| *ids != table.certificates || at.elapsed() >= CERTIFICATES_RETRY);
    if table.certificates != *certificates && stale {
        let got = fetch_certificates(plane, credential).await.context("fetching the certificates")?;
        write_private(&config.data_dir.join(CERTIFICATES), &serde_json::to_vec(&got)?)
            .context("saving the certificates")?;
        *certificates = load_certificates(ingress, &got);
        if *certificates != table.certificates {
            tracing::warn!(loaded = ?certificates, published = ?table.certificates, "not every certificate could be loaded");
        }
        *fetched = Some((table.certificates.clone(), std::time::Instant::now()));
    }
    if table.version != *version {
        let routes: Vec<RouteSpec> =
            serde_json::from_value(table.routes).context("the control plane's route table does not parse")?;
        // Saved before it is applied: what this node serves, it serves again after a restart.
        let saved = SavedTable { version: table.version, routes, control_planes: table.control_planes };
        write_private(&config.data_dir.join(TABLE), &serde_json::to_vec(&saved)?).context("saving the route table")?;
        tracing::info!(version = saved.version, names = saved.routes.len(), "applying a new route table");
        let drain = follower.apply(saved.version, saved.routes, config.drain_timeout).await;
        *version = saved.version;
        tokio::spawn(drain.run());
    }
    Ok(())
}

async fn log_end(what: &'static str, serving: impl Future<Output = std::io::Result<()>>) {
    if let Err(error) = serving.await {
        tracing::error!(%error, "the {what} listener failed");
    }
}

/// The control planes the node may ask, in order: the `--join` ones, then the ones the tables
/// named; it sticks to one until a request to it fails.
struct Planes {
    pinned: Option<String>,
    system_roots: bool,
    insecure: bool,
    state: Mutex<(Vec<ControlPlane>, usize)>,
    /// Bumped when the node turns to another control plane.
    moved: watch::Sender<u64>,
}

impl Planes {
    fn new(pinned: Option<String>, system_roots: bool, insecure: bool) -> Planes {
        Planes { pinned, system_roots, insecure, state: Mutex::new((Vec::new(), 0)), moved: watch::channel(0).0 }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        self.state.lock().expect("BUG: control planes poisoned").0.len()
    }

    fn current(&self) -> ControlPlane {
        let state = self.state.lock().expect("BUG: control planes poisoned");
        state.0[state.1 % state.0.len()].clone()
    }

    /// A request to `base` failed: the next one goes to the next control plane.
    fn failed(&self, base: &str) {
        let mut state = self.state.lock().expect("BUG: control planes poisoned");
        let current = state.1 % state.0.len();
        if state.0[current].base == base {
            state.1 = current + 1;
            self.moved.send_modify(|moves| *moves += 1);
        }
    }

    /// Adds the control planes not known yet that the node can trust as it joined: never plain
    /// `http://` after an `https://` join, nor across the network without `--insecure`. Learnt
    /// ones (`explicit` false) listening on every address are skipped: that is no address.
    fn learn(&self, bases: &[String], explicit: bool) {
        let mut state = self.state.lock().expect("BUG: control planes poisoned");
        for base in bases {
            let base = base.trim_end_matches('/');
            if state.0.iter().any(|p| p.base == base) || (!explicit && unspecified(base)) {
                continue;
            }
            let plane = crate::tls::check_cleartext(base, self.insecure)
                .and_then(|()| ControlPlane::new(base, self.pinned.as_deref(), self.system_roots));
            match plane {
                Ok(plane) => state.0.push(plane),
                Err(error) if explicit => {
                    tracing::warn!(base, error = format!("{error:#}"), "a control plane this node cannot use")
                }
                Err(error) => {
                    tracing::debug!(base, error = format!("{error:#}"), "not a control plane this node can use")
                }
            }
        }
    }
}

/// `http://0.0.0.0:7878`: an instance listening everywhere, reachable at no address it told.
fn unspecified(base: &str) -> bool {
    let authority = base.split("://").nth(1).unwrap_or(base).split('/').next().unwrap_or_default();
    authority.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_unspecified())
}

/// The table once it differs from `version` with `certificates`; `None` when the control plane
/// waited and nothing changed.
async fn fetch_table(
    plane: &ControlPlane,
    credential: &str,
    version: i64,
    certificates: &[i64],
) -> anyhow::Result<Option<IngressTable>> {
    let ids: Vec<String> = certificates.iter().map(i64::to_string).collect();
    let response = plane
        .http
        .get(format!("{}/api/v1/ingress/routes", plane.base))
        .query(&[("after", version.to_string()), ("certificates", ids.join(","))])
        .bearer_auth(credential)
        .timeout(TABLE_REQUEST_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", plane.base))?;
    if response.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    Ok(Some(answer(response).await?))
}

async fn fetch_certificates(plane: &ControlPlane, credential: &str) -> anyhow::Result<Vec<IngressCertificate>> {
    let response = plane
        .http
        .get(format!("{}/api/v1/ingress/certificates", plane.base))
        .bearer_auth(credential)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", plane.base))?;
    answer(response).await
}

/// Reports every second which table the node has applied and drained, to the control plane it
/// asks for tables.
async fn report(
    planes: Arc<Planes>,
    credential: String,
    acked: watch::Receiver<i64>,
    address: String,
    started_at: i64,
) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let plane = planes.current();
        let report = IngressReport {
            applied: *acked.borrow(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: address.clone(),
            started_at,
        };
        let sent = plane
            .http
            .post(format!("{}/api/v1/ingress/report", plane.base))
            .bearer_auth(&credential)
            .json(&report)
            .timeout(REPORT_TIMEOUT)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => tracing::debug!(status = %response.status(), "the control plane refused the report"),
            Err(error) => {
                tracing::debug!(control_plane = plane.base, %error, "reporting failed");
                planes.failed(&plane.base);
            }
        }
    }
}

/// Loads the certificates that parse into the ingress; returns their ids.
fn load_certificates(ingress: &Ingress, certificates: &[IngressCertificate]) -> Vec<i64> {
    let mut loaded = Vec::new();
    let mut parsed = Vec::new();
    for certificate in certificates {
        match Certificate::from_pem(certificate.chain_pem.as_bytes(), certificate.key_pem.as_bytes()) {
            Ok(one) => {
                parsed.push(one);
                loaded.push(certificate.id);
            }
            Err(error) => tracing::error!(id = certificate.id, %error, "a certificate cannot be served"),
        }
    }
    ingress.set_certificates(parsed);
    loaded
}

async fn join(config: &IngressNodeConfig) -> anyhow::Result<Membership> {
    let Some(join_token) = config.join_token.clone() else {
        bail!(
            "this node has not joined yet ({} has no {MEMBERSHIP}): pass --token with a join token",
            config.data_dir.display()
        );
    };
    let request = IngressJoinRequest { join_token, name: config.name.clone() };
    let mut failures = Vec::new();
    for base in &config.control_planes {
        let base = base.trim_end_matches('/');
        let https = base.to_ascii_lowercase().starts_with("https://");
        let (client, ca_pem) = if https {
            let trust = crate::tls::JoinTrust::new(config.ca_file.as_deref())?;
            (trust.http, trust.pinned)
        } else {
            (reqwest::Client::new(), None)
        };
        let sent = client
            .post(format!("{base}/api/v1/ingress/join"))
            .json(&request)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"));
        let joined: IngressJoinResponse = match sent {
            // Refused (a bad token, a taken name): the next instance would refuse it as well.
            Ok(response) => match answer(response).await {
                Ok(joined) => joined,
                Err(error) if error.downcast_ref::<Refused>().is_some_and(|r| r.status == 409) => bail!(
                    "{error:#}: if it is this node (its first join's answer was lost), remove it with \
                     `berth ingress-nodes remove {0}` and join with a new token, or pick another --name",
                    config.name
                ),
                Err(error) => return Err(error.context("joining the control plane")),
            },
            Err(error) => {
                failures.push(format!("{error:#}"));
                continue;
            }
        };
        let membership = Membership {
            node: joined.node,
            credential: joined.credential,
            control_planes: config.control_planes.clone(),
            system_roots: https && ca_pem.is_none(),
            ca_pem,
        };
        let path = config.data_dir.join(MEMBERSHIP);
        write_private(&path, &serde_json::to_vec_pretty(&membership)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("berth ingress: joined as node {}", membership.node);
        return Ok(membership);
    }
    bail!("no control plane could be reached to join: {}", failures.join("; "))
}

/// The answer's JSON, or the control plane's error message.
async fn answer<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
    let status = response.status();
    if status.is_success() {
        return response.json().await.context("reading the control plane's answer");
    }
    match response.json::<berth_wire::ErrorBody>().await {
        Ok(body) => Err(Refused { status: status.as_u16(), message: body.message }.into()),
        Err(_) => {
            Err(Refused { status: status.as_u16(), message: format!("the control plane answered {status}") }.into())
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message} ({status})")]
struct Refused {
    status: u16,
    message: String,
}

/// True when the control plane refused the node's credential.
fn refused(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.downcast_ref::<Refused>().is_some_and(|r| r.status == 401))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating the node's data directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", dir.display()))
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces `path` with `contents` whole (a crash leaves the old file or the new one, never half
/// of either), readable by its owner only.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(bases: &[&str]) -> Vec<String> {
        bases.iter().map(|b| b.to_string()).collect()
    }

    #[test]
    fn the_node_turns_to_the_next_control_plane_and_learns_only_usable_ones() {
        let planes = Planes::new(None, false, false);
        planes.learn(&strings(&["http://127.0.0.1:1"]), true);
        planes.learn(&strings(&["http://127.0.0.1:2/", "http://0.0.0.0:7878", "http://127.0.0.1:2", "ftp://x"]), false);
        assert_eq!(planes.current().base, "http://127.0.0.1:1");
        planes.failed("http://127.0.0.1:2");
        assert_eq!(planes.current().base, "http://127.0.0.1:1", "a failure of another one moves nothing");
        planes.failed("http://127.0.0.1:1");
        assert_eq!(planes.current().base, "http://127.0.0.1:2");
        planes.failed("http://127.0.0.1:2");
        assert_eq!(planes.current().base, "http://127.0.0.1:1", "round and round");

        // Joined over HTTPS with the system's roots: a plain-HTTP instance is never asked.
        let planes = Planes::new(None, true, false);
        planes.learn(&strings(&["https://cp-1:7878"]), true);
        planes.learn(&strings(&["http://cp-2:7878", "https://cp-3:7878"]), false);
        planes.failed("https://cp-1:7878");
        assert_eq!(planes.current().base, "https://cp-3:7878");

        // Joined over plain HTTP on this machine: an instance across the network is not asked in
        // clear text (credential and keys) without --insecure.
        let planes = Planes::new(None, false, false);
        planes.learn(&strings(&["http://127.0.0.1:7878"]), true);
        planes.learn(&strings(&["http://10.0.0.2:7878"]), false);
        planes.failed("http://127.0.0.1:7878");
        assert_eq!(planes.current().base, "http://127.0.0.1:7878");
        let planes = Planes::new(None, false, true);
        planes.learn(&strings(&["http://127.0.0.1:7878"]), true);
        planes.learn(&strings(&["http://10.0.0.2:7878"]), false);
        planes.failed("http://127.0.0.1:7878");
        assert_eq!(planes.current().base, "http://10.0.0.2:7878", "with --insecure it is");
    }

    #[test]
    fn a_saved_file_is_replaced_whole_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TABLE);
        write_private(&path, b"[1]").unwrap();
        write_private(&path, b"[1,2]").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"[1,2]");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!path.with_extension("tmp").exists());
    }
}
