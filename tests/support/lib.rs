//! What Berth's end-to-end tests and benchmarks share: the test app image, a real `berth server`
//! process, an API client, and a load generator that talks HTTP/1.1 through the ingress.
//!
//! Everything a fixture creates carries its run id (containers through the server's host name,
//! images through the `berth.test` label) and is removed when the fixture drops, even after a
//! failed assertion.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_wire::api::{AppDetail, ReleaseInfo, ReleaseState};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncBufReadExt as _;

pub mod browser;
pub mod pebble;

/// Polls `condition` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos() ^ std::process::id() as u128);
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Sends SIGTERM to process `pid`.
pub fn terminate(pid: u32) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).context("not a process id")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).context("sending SIGTERM")
}

/// The workspace root, found from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("BUG: tests/ is inside the workspace").to_path_buf()
}

/// The `berth` binary under test: `BERTH_BIN` (the benchmark's release build), else the one next
/// to the running test executable.
pub fn berth_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("BERTH_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("berth");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the berth binary was not found next to {}; run `cargo build -p berth` first (cargo xtask test does)",
        exe.display()
    )
}

/// One test's world: a run id, a scratch directory and the test app images `v1` and `v2`.
pub struct Fixture {
    pub id: String,
    /// The fixture's scratch directory, removed when the fixture is dropped.
    pub dir: PathBuf,
    _scratch: tempfile::TempDir,
    pub image_v1: String,
    pub image_v2: String,
    image_repo: String,
    /// Host names of agents started for this fixture, whose containers it also removes.
    agent_hosts: std::sync::Mutex<Vec<String>>,
    /// `team/app` of apps built from git in this fixture, whose images it also removes.
    built_apps: std::sync::Mutex<Vec<String>>,
    /// With `BERTH_TEST_STORE=postgres`: the PostgreSQL database the fixture's servers use (one
    /// per fixture, kept across restarts), from the cluster the tests start themselves.
    pub database: Option<String>,
}

impl Fixture {
    /// Builds the static test app and packs it into two images whose replies name their version.
    pub fn new() -> anyhow::Result<Fixture> {
        static STALE_NETWORKS: std::sync::Once = std::sync::Once::new();
        STALE_NETWORKS.call_once(remove_stale_test_networks);
        let id = random_id();
        let scratch = tempfile::Builder::new().prefix(&format!("berth-test-{id}-")).tempdir()?;
        let dir = scratch.path().to_path_buf();
        let context = dir.join("image");
        std::fs::create_dir_all(&context)?;
        let source = workspace_root().join("tests/hello/hello.rs");
        run(Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "-o"])
            .arg(context.join("hello"))
            .arg(&source))
        .context("building the static test app (needs glibc's static libraries, libc6-dev)")?;
        std::fs::write(
            context.join("Dockerfile"),
            "FROM scratch\nARG VERSION=v1\nENV VERSION=$VERSION\nCOPY hello /hello\nEXPOSE 8080\nENTRYPOINT [\"/hello\"]\n",
        )?;
        let image_repo = format!("berth-test-{id}/hello");
        let fixture = Fixture {
            image_v1: format!("{image_repo}:v1"),
            image_v2: format!("{image_repo}:v2"),
            image_repo,
            id,
            dir,
            _scratch: scratch,
            agent_hosts: std::sync::Mutex::new(Vec::new()),
            built_apps: std::sync::Mutex::new(Vec::new()),
            database: match berth_testdb::postgres_requested() {
                true => Some(
                    berth_testdb::fresh_database()?
                        .context("BERTH_TEST_STORE=postgres, but the PostgreSQL binaries are not installed")?,
                ),
                false => None,
            },
        };
        for version in ["v1", "v2"] {
            fixture.build_image(version)?;
        }
        Ok(fixture)
    }

    /// Builds `<repo>:<version>` of the test app whose replies name `version`.
    pub fn build_image(&self, version: &str) -> anyhow::Result<String> {
        let tag = format!("{}:{version}", self.image_repo);
        // `--no-cache`: fixtures build the same layers, and one fixture's clean-up (`rmi`) must
        // not delete cached layers another fixture's build is using at that moment.
        run(Command::new("docker")
            .args(["build", "-q", "--no-cache", "--label"])
            .arg(format!("berth.test={}", self.id))
            .args(["--build-arg", &format!("VERSION={version}"), "-t", &tag])
            .arg(self.dir.join("image")))?;
        Ok(tag)
    }

    /// Removes the images Berth builds for `team/app` when the fixture drops.
    pub fn track_built_app(&self, team_app: &str) {
        self.built_apps.lock().expect("BUG: fixture lock poisoned").push(team_app.to_string());
    }

    /// The static test app binary (to commit into a repository that Berth builds).
    pub fn hello_binary(&self) -> PathBuf {
        self.dir.join("image/hello")
    }

    /// The host name the fixture's server runs its agent as; its containers carry it.
    pub fn host_name(&self) -> String {
        format!("test-{}", self.id)
    }

    /// Ids of the running containers of `app` managed by this fixture's server.
    pub fn containers(&self, app: &str) -> anyhow::Result<Vec<String>> {
        let out = run(Command::new("docker").args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=berth.host={}", self.host_name()),
            "--filter",
            &format!("label=berth.app={app}"),
        ]))?;
        let mut ids: Vec<String> = out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
        ids.sort();
        Ok(ids)
    }

    /// Every container (running or not) this fixture's server created.
    pub fn all_containers(&self) -> anyhow::Result<Vec<String>> {
        self.containers_on(&self.host_name())
    }

    /// Every container (running or not) the agent of `host` created.
    pub fn containers_on(&self, host: &str) -> anyhow::Result<Vec<String>> {
        let out = run(Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=berth.host={host}")]))?;
        Ok(out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
    }

    /// Removes every container of `host` at once, as if the machine died.
    pub fn remove_containers_on(&self, host: &str) -> anyhow::Result<()> {
        let ids = self.containers_on(host)?;
        if !ids.is_empty() {
            run(Command::new("docker").args(["rm", "-f", "-v"]).args(&ids))?;
        }
        Ok(())
    }

    /// Removes the team networks the agent of `host` created (after its containers are gone).
    pub fn remove_networks_on(&self, host: &str) {
        let filter = format!("label=berth.host={host}");
        if let Ok(ids) = run(Command::new("docker").args(["network", "ls", "-q", "--filter", &filter])) {
            let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(["network", "rm"]).args(&ids).output();
            }
        }
    }

    /// Registers an agent host name so its containers are removed with the fixture.
    pub fn track_host(&self, host: &str) {
        self.agent_hosts.lock().expect("BUG: host list poisoned").push(host.to_string());
    }

    /// Starts a container with this host's Berth labels for a replica nobody wants; returns its id.
    pub fn run_stray_container(&self, app: &str) -> anyhow::Result<String> {
        run(Command::new("docker")
            .args(["run", "-d", "--label", "berth.managed=1", "--label", "berth.team=main", "--label"])
            .arg(format!("berth.app={app}"))
            .args(["--label", "berth.release=1", "--label", "berth.replica=stray", "--label"])
            .arg(format!("berth.host={}", self.host_name()))
            .arg(&self.image_v1))
    }

    pub fn kill_container(&self, id: &str) -> anyhow::Result<()> {
        run(Command::new("docker").args(["kill", id]))?;
        Ok(())
    }

    pub async fn start_server(&self) -> anyhow::Result<Server> {
        Server::start(self, None, &[], &[]).await
    }

    /// A server with extra `berth server` arguments.
    pub async fn start_server_with(&self, args: &[&str]) -> anyhow::Result<Server> {
        Server::start(self, None, args, &[]).await
    }

    /// A server with extra arguments and environment (e.g. `BERTH_LOG`, `TOKIO_WORKER_THREADS`),
    /// not kept for restarts.
    pub async fn start_server_env(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Server> {
        Server::start(self, None, args, env).await
    }

    /// A server whose ingress listens on `ingress` (a port chosen beforehand), with extra arguments.
    pub async fn start_server_on(&self, ingress: SocketAddr, args: &[&str]) -> anyhow::Result<Server> {
        Server::start(self, Some(("127.0.0.1:0".parse().expect("BUG: a valid address"), ingress)), args, &[]).await
    }
}

/// Removes the team networks of test hosts (`test-*`) that earlier runs left behind, empty and
/// older than ten minutes. A server killed at the end of a test may have had a network creation in
/// flight that the engine completes after the fixture removed its networks; left alone, such leaks
/// would exhaust the engine's address pools on a reused machine. Networks of other hosts (a real
/// Berth on the same engine) and networks still in use are left alone.
fn remove_stale_test_networks() {
    let Ok(listing) = run(Command::new("docker").args([
        "network",
        "ls",
        "--filter",
        &format!("label={}", berth_wire::labels::MANAGED),
        "--format",
        &format!("{{{{.ID}}}} {{{{.Label \"{}\"}}}}", berth_wire::labels::HOST),
    ])) else {
        return;
    };
    let mut hosts: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(_, host)| host)
        .filter(|host| host.starts_with("test-"))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    for host in hosts {
        // `prune` removes only networks no container uses; `until` spares a running test's.
        let _ = Command::new("docker")
            .args(["network", "prune", "-f", "--filter", "until=10m", "--filter"])
            .arg(format!("label={}={host}", berth_wire::labels::HOST))
            .output();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let mut hosts = self.agent_hosts.lock().map(|h| h.clone()).unwrap_or_default();
        hosts.push(self.host_name());
        for host in hosts {
            let _ = self.remove_containers_on(&host);
            self.remove_networks_on(&host);
        }
        let mut labels = vec![format!("label=berth.test={}", self.id)];
        let built = self.built_apps.lock().map(|a| a.clone()).unwrap_or_default();
        labels.extend(built.iter().map(|app| format!("label={}={app}", berth_wire::labels::IMAGE_APP)));
        for label in labels {
            if let Ok(images) = run(Command::new("docker").args(["images", "-q", "--filter", &label])) {
                let images: std::collections::BTreeSet<&str> = images.lines().filter(|l| !l.is_empty()).collect();
                if !images.is_empty() {
                    let _ = Command::new("docker").args(["rmi", "-f"]).args(&images).output();
                }
            }
        }
        // The scratch directory goes with `_scratch`.
    }
}

/// A `berth server` process.
pub struct Server {
    /// Killed when dropped (`kill_on_drop`), so a failing test leaves no server behind.
    child: Option<tokio::process::Child>,
    pub api: SocketAddr,
    pub ingress: SocketAddr,
    pub data_dir: PathBuf,
    pub token: String,
    host_name: String,
    log_path: PathBuf,
    /// Extra `berth server` arguments, kept for restarts.
    extra: Vec<String>,
}

impl Server {
    /// Starts a server on free ports, or on `ports` (api, ingress) to stand in for an earlier one.
    async fn start(
        fixture: &Fixture,
        ports: Option<(SocketAddr, SocketAddr)>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let (api, ingress) = ports.unwrap_or_else(|| ("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()));
        let data_dir = fixture.dir.join("data");
        let log_path = fixture.dir.join("server.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut child = tokio::process::Command::new(berth_binary()?)
            .args(["server", "--data-dir"])
            .arg(&data_dir)
            .args(if extra.contains(&"--listen") { Vec::new() } else { vec!["--listen".to_string(), api.to_string()] })
            .args(["--ingress-listen", &ingress.to_string()])
            .args(fixture.database.iter().flat_map(|url| ["--database", url.as_str()]))
            .args(["--host-name", &fixture.host_name(), "--deploy-timeout", "15", "--stop-grace", "5"])
            .args(extra)
            .env("BERTH_LOG", "info,berth_api=debug,berth_control=debug,berth_agent=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting berth server")?;
        let stdout = child.stdout.take().expect("BUG: stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut addrs = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while addrs.is_none() {
            let line = tokio::time::timeout_at(deadline, lines.next_line()).await.ok().and_then(|l| l.ok().flatten());
            let Some(line) = line else {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("berth server did not come up; its log:\n{log}");
            };
            // "berth server: API on http://ADDR[ and https://ADDR], apps on http://<app>.localhost:PORT"
            if let Some(rest) = line.strip_prefix("berth server: API on http://") {
                let (api, apps) = rest.split_once(", apps on ").context("unexpected banner")?;
                let api = api.split(" and https://").next().unwrap_or_default();
                let apps = apps.split(' ').next().unwrap_or_default();
                let port: u16 = apps.rsplit(':').next().unwrap_or_default().parse()?;
                let mut api = api.parse::<SocketAddr>()?;
                if api.ip().is_unspecified() {
                    api.set_ip([127, 0, 0, 1].into());
                }
                addrs = Some((api, SocketAddr::from(([127, 0, 0, 1], port))));
            }
        }
        let (api, ingress) = addrs.expect("BUG: loop ends with Some");
        // Keep reading, so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let token = std::fs::read_to_string(data_dir.join("admin.token"))?.trim().to_string();
        let extra = extra.iter().map(|a| a.to_string()).collect();
        Ok(Server {
            child: Some(child),
            api,
            ingress,
            data_dir,
            token,
            host_name: fixture.host_name(),
            log_path,
            extra,
        })
    }

    /// Stops the server with SIGTERM (containers keep running) and starts it again on the same
    /// ports and data directory.
    pub async fn restart(&mut self, fixture: &Fixture) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_again(fixture).await
    }

    /// Kills the server with SIGKILL, as a crash would; containers keep running.
    pub async fn crash(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again after [`Server::crash`] or [`Server::stop`], with the same
    /// arguments and on the same ports.
    pub async fn start_again(&mut self, fixture: &Fixture) -> anyhow::Result<()> {
        // A `--listen` on port 0 becomes the port the first start got.
        let mut extra = self.extra.clone();
        if let Some(i) = extra.iter().position(|a| a == "--listen")
            && let Some(value) = extra.get_mut(i + 1)
            && let Ok(mut addr) = value.parse::<SocketAddr>()
            && addr.port() == 0
        {
            addr.set_port(self.api.port());
            *value = addr.to_string();
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let next = Server::start(fixture, Some((self.api, self.ingress)), &extra, &[]).await?;
        *self = next;
        Ok(())
    }

    /// Stops the server with SIGTERM and waits until it has exited.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                terminate(pid)?;
            }
            child.wait().await?;
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    pub fn api(&self) -> Api {
        Api::new(format!("http://{}", self.api), self.token.clone())
    }

    /// Runs the `berth` CLI as a user whose `berth login` state lives in `config`, with `stdin`
    /// as standard input and `token` (if any) as `BERTH_TOKEN`.
    pub fn cli_as(
        &self,
        config: &Path,
        token: Option<&str>,
        stdin: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        use std::io::Write as _;
        let mut command = Command::new(berth_binary()?);
        command
            .args(args)
            .env("BERTH_URL", format!("http://{}", self.api))
            .env("BERTH_CONFIG", config)
            .env_remove("BERTH_TOKEN")
            .env("BERTH_DATA_DIR", config.with_extension("nodata"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            command.env("BERTH_TOKEN", token);
        }
        let mut child = command.spawn()?;
        child.stdin.take().expect("BUG: stdin is piped").write_all(stdin.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Signs in through the dashboard's form as a browser would; returns the session cookie
    /// (`name=value`), or `None` when the sign-in was refused.
    pub async fn sign_in(&self, email: &str, password: &str) -> anyhow::Result<Option<String>> {
        let base = format!("http://{}", self.api);
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        let response = http
            .post(format!("{base}/auth/signin"))
            .header("origin", &base)
            .form(&[("email", email), ("password", password), ("next", "/teams/main/apps")])
            .send()
            .await?;
        if response.status() != 303 {
            bail!("the sign-in form answered {} (wanted a 303 redirect)", response.status());
        }
        Ok(response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
            .filter(|c| c.len() > "berth_session=".len()))
    }

    /// Runs the `berth` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(berth_binary()?)
            .args(args)
            .env("BERTH_URL", format!("http://{}", self.api))
            .env("BERTH_TOKEN", &self.token)
            .output()?)
    }
}

/// A `berth ingress` node on this machine, killed when dropped.
pub struct IngressNode {
    child: Option<tokio::process::Child>,
    pub name: String,
    /// Where it serves HTTP.
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    /// `--join` URLs and other arguments, kept for restarts.
    args: Vec<String>,
}

impl IngressNode {
    /// Joins node `name` to the control planes at `join` (the first is tried first) with
    /// `token`, on a free port; its data directory is in the fixture's.
    pub async fn start(
        fixture: &Fixture,
        name: &str,
        join: &[SocketAddr],
        token: &str,
        extra: &[&str],
    ) -> anyhow::Result<IngressNode> {
        let join: Vec<String> = join.iter().map(|a| format!("http://{a}")).collect();
        let mut args = vec!["--join".to_string(), join.join(","), "--name".into(), name.into()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let data_dir = fixture.dir.join(format!("ingress-{name}"));
        let log_path = fixture.dir.join(format!("ingress-{name}.log"));
        let mut node = IngressNode {
            child: None,
            name: name.into(),
            addr: "127.0.0.1:0".parse().expect("BUG: a valid address"),
            data_dir,
            log_path,
            args,
        };
        node.spawn(Some(token)).await?;
        Ok(node)
    }

    async fn spawn(&mut self, token: Option<&str>) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path)?;
        let mut command = tokio::process::Command::new(berth_binary()?);
        command
            .args(["ingress", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen", &self.addr.to_string()])
            .args(&self.args)
            .env("BERTH_LOG", "info,berth_agent=debug")
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        let mut child = command.spawn().context("starting berth ingress")?;
        let stdout = child.stdout.take().expect("BUG: stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line()).await.ok().and_then(|l| l.ok().flatten());
            let Some(line) = line else {
                bail!("berth ingress {} did not come up; its log:\n{}", self.name, self.log());
            };
            // "berth ingress: node NAME serving http://ADDR[ and https://ADDR], route table version V"
            if let Some(rest) = line.split_once(" serving http://").map(|(_, rest)| rest) {
                let addr = rest.split([' ', ',']).next().unwrap_or_default();
                self.addr = addr.parse().with_context(|| format!("unexpected banner {line:?}"))?;
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        Ok(())
    }

    /// Kills the node with SIGKILL, as a crash would.
    pub async fn crash(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the node again on the same port and data directory (it joined already).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn(None).await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// The API for tests: typed calls through the CLI's own client (`berth_cli::ApiClient`, in team
/// `main`), and `call` for any request with any body, to see exactly what the server answers.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    client: berth_cli::ApiClient,
}

impl Api {
    pub fn new(base: String, token: String) -> Api {
        // Tests see failures at once: no retrying of unreachable servers.
        let client = berth_cli::ApiClient::new(&base, token.clone(), "main")
            .expect("BUG: the test server's URL is valid")
            .with_retry_budget(Duration::ZERO);
        Api { http: reqwest::Client::new(), base, token, client }
    }

    pub fn with_token(&self, token: &str) -> Api {
        Api::new(self.base.clone(), token.to_string())
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/teams/main/apps{path}", self.base)
    }

    /// Any request; returns status and parsed JSON body (`null` when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let url = if path.starts_with("/api/") { format!("{}{path}", self.base) } else { self.url(path) };
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        Ok((status, json))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        want: u16,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, json) = self.call(method.clone(), path, body).await?;
        if status != want {
            bail!("{method} {path} answered {status} (wanted {want}): {json}");
        }
        Ok(json)
    }

    /// Creates an app and returns its first release number.
    pub async fn create_app(&self, body: serde_json::Value) -> anyhow::Result<u32> {
        let json = self.expect(reqwest::Method::POST, "", Some(body), 201).await?;
        Ok(json["release"].as_u64().context("no release number")? as u32)
    }

    pub async fn deploy(&self, app: &str, body: serde_json::Value) -> anyhow::Result<u32> {
        let json = self.expect(reqwest::Method::POST, &format!("/{app}/deploy"), Some(body), 202).await?;
        Ok(json["release"].as_u64().context("no release number")? as u32)
    }

    pub async fn rollback(&self, app: &str, to: Option<u32>) -> anyhow::Result<u32> {
        Ok(self.client.rollback(app, to).await?.release)
    }

    pub async fn scale(&self, app: &str, replicas: u32) -> anyhow::Result<u32> {
        Ok(self.client.scale(app, replicas).await?.release)
    }

    pub async fn delete(&self, app: &str) -> anyhow::Result<()> {
        self.client.delete_app(app).await
    }

    pub async fn show(&self, app: &str) -> anyhow::Result<AppDetail> {
        self.client.app(app).await
    }

    pub async fn release(&self, app: &str, number: u32) -> anyhow::Result<ReleaseInfo> {
        self.client.release(app, number).await
    }

    /// Waits until the release has finished and returns it, whatever its outcome.
    pub async fn wait_release(&self, app: &str, number: u32) -> anyhow::Result<ReleaseInfo> {
        eventually(&format!("release {number} of {app} to finish"), Duration::from_secs(90), || async {
            self.release(app, number).await.ok().filter(|r| r.state.is_finished())
        })
        .await
    }

    /// Waits for the release and fails unless it serves.
    pub async fn wait_serving(&self, app: &str, number: u32) -> anyhow::Result<ReleaseInfo> {
        let release = self.wait_release(app, number).await?;
        if release.state != ReleaseState::Serving {
            bail!("release {number} of {app} ended {:?}: {:?}", release.state, release.message);
        }
        Ok(release)
    }
}

/// One HTTP/1.1 request to the ingress with the given Host; returns status and body.
pub async fn get(ingress: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(ingress).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path).header("host", host).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub failures: Vec<String>,
    /// Latency of each successful request, in microseconds, with the time it was sent.
    pub latencies: Vec<(Instant, u64)>,
    /// Body of each successful response with the time it came back.
    pub bodies: Vec<(Instant, String)>,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.requests += other.requests;
        self.failures.extend(other.failures);
        self.latencies.extend(other.latencies);
        self.bodies.extend(other.bodies);
    }
}

/// Clients that send `GET path` through the ingress as fast as they can, each on its own
/// keep-alive connection (reconnecting when the server closes it), until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    pub fn start(ingress: SocketAddr, host: &str, path: &str, clients: usize, keep_bodies: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let host = host.to_string();
                let path = path.to_string();
                tokio::spawn(async move { load_worker(ingress, &host, &path, &stop, keep_bodies).await })
            })
            .collect();
        Load { stop, workers }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for worker in self.workers {
            report.merge(worker.await.expect("BUG: load workers do not panic"));
        }
        report
    }
}

async fn load_worker(ingress: SocketAddr, host: &str, path: &str, stop: &AtomicBool, keep_bodies: bool) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match tokio::net::TcpStream::connect(ingress).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                        Ok((s, conn)) => {
                            tokio::spawn(conn);
                            sender = Some(s);
                        }
                        Err(error) => {
                            report.requests += 1;
                            report.failures.push(format!("handshake: {error}"));
                            continue;
                        }
                    }
                }
                Err(error) => {
                    report.requests += 1;
                    report.failures.push(format!("connect: {error}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("BUG: connected above");
        if s.ready().await.is_err() {
            sender = None;
            continue;
        }
        let request =
            hyper::Request::get(path).header("host", host).body(Empty::<Bytes>::new()).expect("BUG: valid request");
        let started = Instant::now();
        report.requests += 1;
        let outcome = async {
            let response = s.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        match outcome {
            Ok((status, body)) if status.is_success() => {
                report.latencies.push((started, started.elapsed().as_micros() as u64));
                if keep_bodies {
                    report.bodies.push((Instant::now(), String::from_utf8_lossy(&body).into_owned()));
                }
            }
            Ok((status, body)) => {
                report.failures.push(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body).chars().take(200).collect::<String>()
                ));
            }
            Err(error) => {
                report.failures.push(format!("request: {error}"));
                sender = None;
            }
        }
    }
    report
}

/// The `q`-quantile (0..=1) of `values` (sorted in place).
pub fn quantile(values: &mut [u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}

/// Several `berth agent`s, each in its own network namespace with its own address, all joined to
/// one server and driving this machine's Docker engine (each managing only its own containers).
pub struct Cluster {
    pub hosts: Vec<SimulatedHost>,
    /// Docker engines of their own for some hosts (dropped before the fixture).
    pub engines: Vec<Engine>,
    pub server: Server,
    pub fixture: Fixture,
    /// Held until everything above is gone: see [`network_changes`].
    _network: tokio::sync::MutexGuard<'static, ()>,
}

static NETWORK_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Tests that add host network interfaces with addresses (simulated hosts, second engines) and
/// browser tests hold this for their whole run, so they never overlap: Chromium aborts page loads
/// when the host's addresses change (`ERR_NETWORK_CHANGED`).
pub async fn network_changes() -> tokio::sync::MutexGuard<'static, ()> {
    NETWORK_CHANGES.lock().await
}

/// A second Docker engine on this machine, with its own storage (so none of the fixture's images)
/// and its own bridge. Its containers publish ports through Docker's userland proxy.
pub struct Engine {
    pub socket: String,
    dir: PathBuf,
    bridge: String,
    daemon: Child,
}

impl Engine {
    pub async fn start(fixture: &Fixture, subnet_octet: u8) -> anyhow::Result<Engine> {
        let dir = fixture.dir.join("engine");
        std::fs::create_dir_all(&dir)?;
        // Its team networks take addresses from a range of their own, apart from the machine's
        // engine's (both engines' bridges live in the same network namespace).
        let pools = format!(r#"{{"default-address-pools": [{{"base": "10.{subnet_octet}.128.0/18", "size": 24}}]}}"#);
        std::fs::write(dir.join("daemon.json"), pools)?;
        let bridge = format!("bb{}", &fixture.id[..6]);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.{subnet_octet}.200.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        let socket = format!("unix://{}/docker.sock", dir.display());
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let daemon = Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args(["-H", &socket, "--bridge", &bridge, "--iptables=false", "--ip-masq=false", "--ip6tables=false"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a second dockerd")?;
        let engine = Engine { socket, dir, bridge, daemon };
        eventually("the second Docker engine to answer", Duration::from_secs(30), || async {
            Command::new("docker").args(["-H", &engine.socket, "info"]).output().ok()?.status.success().then_some(())
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e}: {}", std::fs::read_to_string(engine.dir.join("dockerd.log")).unwrap_or_default())
        })?;
        Ok(engine)
    }

    /// `docker` on this engine.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("docker").args(["-H", &self.socket]).args(args))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(["-H", &self.socket, "rm", "-f"]).args(&ids).output();
            }
        }
        // The team networks' bridges would outlive the engine in the host's namespace.
        let _ = Command::new("docker").args(["-H", &self.socket, "network", "prune", "-f"]).output();
        let _ = terminate(self.daemon.id());
        let _ = self.daemon.wait();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct SimulatedHost {
    pub name: String,
    namespace: String,
    /// The root-namespace end of the host's link: its address is the host's advertise address.
    link: String,
    pub address: String,
    agent: Option<Child>,
    agent_args: Vec<String>,
    log_path: PathBuf,
    /// `DOCKER_HOST` of the agent, when it has an engine of its own.
    docker_host: Option<String>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

impl Cluster {
    /// A control plane without a local agent and `count` joined hosts, all up.
    pub async fn start(count: usize, server_args: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::start_with(count, server_args, &[]).await
    }

    /// Like [`Cluster::start`]; the hosts numbered (from 1) in `own_engine` get a second Docker
    /// engine of their own instead of this machine's.
    pub async fn start_with(count: usize, server_args: &[&str], own_engine: &[usize]) -> anyhow::Result<Cluster> {
        let network = network_changes().await;
        let fixture = Fixture::new()?;
        // A subnet per fixture so parallel clusters cannot collide.
        let octet = 100 + u8::from_str_radix(&fixture.id[..2], 16)? % 100;
        // Agents join over HTTPS, as across a real network: a certificate for the addresses the
        // hosts reach the control plane on, from a CA they are given at join (and then pin).
        let names: Vec<String> = (1..=count).map(|n| format!("10.{octet}.{n}.1")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (chain, key, _) = pebble::test_certificate(&names)?;
        let ca = chain.split_inclusive("-----END CERTIFICATE-----\n").nth(1).context("the chain names its CA")?;
        let (cert_file, key_file, ca_file) =
            (fixture.dir.join("api.crt"), fixture.dir.join("api.key"), fixture.dir.join("api-ca.pem"));
        std::fs::write(&cert_file, &chain)?;
        std::fs::write(&key_file, &key)?;
        std::fs::write(&ca_file, ca)?;
        let tls_port = pebble::free_addr()?.port();
        let tls_listen = format!("0.0.0.0:{tls_port}");
        let (cert_arg, key_arg) = (cert_file.display().to_string(), key_file.display().to_string());
        let mut args = vec!["--no-local-agent", "--listen", "0.0.0.0:0", "--api-tls-listen", &tls_listen];
        args.extend_from_slice(&["--api-tls-cert", &cert_arg, "--api-tls-key", &key_arg]);
        args.extend_from_slice(server_args);
        let server = fixture.start_server_with(&args).await?;
        let (status, token) = server
            .api()
            .call(reqwest::Method::POST, "/api/v1/join-tokens", Some(serde_json::json!({ "uses": count })))
            .await?;
        if status != 201 {
            bail!("creating a join token answered {status}: {token}");
        }
        let token = token["token"].as_str().context("no token")?.to_string();
        let mut engines = Vec::new();
        if !own_engine.is_empty() {
            engines.push(Engine::start(&fixture, octet).await?);
        }
        let mut cluster = Cluster { fixture, server, hosts: Vec::new(), engines, _network: network };
        for n in 1..=count {
            let name = format!("test-{}-h{n}", cluster.fixture.id);
            cluster.fixture.track_host(&name);
            let short = &cluster.fixture.id[..6];
            let host = SimulatedHost {
                namespace: format!("berth-{short}-{n}"),
                link: format!("bv{short}{n}"),
                address: format!("10.{octet}.{n}.1"),
                agent: None,
                agent_args: vec![
                    "agent".into(),
                    "--join".into(),
                    format!("https://10.{octet}.{n}.1:{tls_port}"),
                    "--ca-file".into(),
                    ca_file.display().to_string(),
                    "--token".into(),
                    token.clone(),
                    "--name".into(),
                    name.clone(),
                    "--advertise-addr".into(),
                    format!("10.{octet}.{n}.1"),
                    "--label".into(),
                    format!("zone=z{n}"),
                    "--data-dir".into(),
                    cluster.fixture.dir.join(format!("agent-{n}")).display().to_string(),
                ],
                log_path: cluster.fixture.dir.join(format!("agent-{n}.log")),
                docker_host: own_engine.contains(&n).then(|| cluster.engines[0].socket.clone()),
                name,
            };
            let peer = format!("bp{short}{n}");
            ip(&["netns", "add", &host.namespace])?;
            ip(&["link", "add", &host.link, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &host.namespace])?;
            ip(&["addr", "add", &format!("{}/24", host.address), "dev", &host.link])?;
            ip(&["link", "set", &host.link, "up"])?;
            let inside = |args: &[&str]| {
                let mut full = vec!["netns", "exec", host.namespace.as_str(), "ip"];
                full.extend_from_slice(args);
                ip(&full)
            };
            inside(&["addr", "add", &format!("10.{octet}.{n}.2/24"), "dev", &peer])?;
            inside(&["link", "set", &peer, "up"])?;
            inside(&["link", "set", "lo", "up"])?;
            inside(&["route", "add", "default", "via", &host.address])?;
            cluster.hosts.push(host);
            let index = cluster.hosts.len() - 1;
            cluster.start_agent(index)?;
        }
        let api = cluster.server.api();
        eventually("every host to be up", Duration::from_secs(30), || async {
            let (_, hosts) = api.call(reqwest::Method::GET, "/api/v1/hosts", None).await.ok()?;
            let up = hosts.as_array()?.iter().filter(|h| h["state"] == "up").count();
            (up == count).then_some(())
        })
        .await?;
        Ok(cluster)
    }

    /// Starts (or restarts) host `index`'s agent inside its namespace.
    pub fn start_agent(&mut self, index: usize) -> anyhow::Result<()> {
        let host = &mut self.hosts[index];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&host.log_path)?;
        let mut command = Command::new("ip");
        if let Some(docker_host) = &host.docker_host {
            command.env("DOCKER_HOST", docker_host);
        }
        let child = command
            .args(["netns", "exec", &host.namespace])
            .arg(berth_binary()?)
            .args(&host.agent_args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting berth agent")?;
        host.agent = Some(child);
        Ok(())
    }

    /// Host death: the agent is killed and all its containers are gone at once.
    pub fn kill_host(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut agent) = self.hosts[index].agent.take() {
            agent.kill()?;
            agent.wait()?;
        }
        self.fixture.remove_containers_on(&self.hosts[index].name)
    }

    /// Cuts (or restores) the host's network link.
    pub fn set_partitioned(&self, index: usize, partitioned: bool) -> anyhow::Result<()> {
        ip(&["link", "set", &self.hosts[index].link, if partitioned { "down" } else { "up" }])
    }

    pub fn agent_log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.hosts[index].log_path).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            if let Some(mut agent) = host.agent.take() {
                let _ = agent.kill();
                let _ = agent.wait();
            }
            let _ = Command::new("ip").args(["link", "del", &host.link]).output();
            let _ = Command::new("ip").args(["netns", "del", &host.namespace]).output();
        }
    }
}
