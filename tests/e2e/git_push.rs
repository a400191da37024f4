//! `git push` deploys with the real git client: the Smart HTTP remote, builds through the real
//! Docker engine, `remote:` lines streamed while the build runs, releases under load, refused,
//! failed, concurrent, killed and shallow pushes, permissions, and webhooks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_tests::{Fixture, Load, Server, eventually, get};
use hmac::Mac as _;
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;

use crate::host;

/// A working copy of the app's source, with Berth's remote set up by `berth git-remote`.
pub(crate) struct Repo {
    dir: PathBuf,
    /// `HOME` and `BERTH_CONFIG` for git and the credential helper, so nothing of the machine's
    /// own configuration takes part.
    home: PathBuf,
    token: String,
}

impl Repo {
    fn git(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new("git");
        command
            .args(args)
            .current_dir(&self.dir)
            .env("HOME", &self.home)
            .env("BERTH_CONFIG", self.home.join("berth.json"))
            .env("BERTH_TOKEN", &self.token)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com");
        command
    }

    pub(crate) fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.git(args).output()?;
        if !output.status.success() {
            bail!(
                "git {args:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Writes the Dockerfile (serving `version`, with `extra` steps) and commits; returns the commit.
    pub(crate) fn commit(&self, version: &str, extra: &str) -> anyhow::Result<String> {
        std::fs::write(
            self.dir.join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY hello /hello\n{extra}ENV VERSION={version}\nEXPOSE 8080\nENTRYPOINT [\"/hello\"]\n"
            ),
        )?;
        self.run(&["add", "-A"])?;
        self.run(&["commit", "-q", "-m", version])?;
        self.run(&["rev-parse", "HEAD"])
    }

    /// The commit `main` points at in Berth's repository.
    fn remote_main(&self) -> anyhow::Result<String> {
        let refs = self.run(&["ls-remote", "berth", "refs/heads/main"])?;
        Ok(refs.split_whitespace().next().unwrap_or_default().to_string())
    }
}

pub(crate) async fn repo(fixture: &Fixture, server: &Server, app: &str, name: &str) -> anyhow::Result<Repo> {
    let dir = fixture.dir.join(name);
    let home = fixture.dir.join(format!("{name}-home"));
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&home)?;
    std::fs::copy(fixture.hello_binary(), dir.join("hello"))?;
    let repo = Repo { dir, home, token: server.token.clone() };
    repo.run(&["init", "-q", "-b", "main"])?;
    let output = std::process::Command::new(berth_tests::berth_binary()?)
        .args(["git-remote", app])
        .current_dir(&repo.dir)
        .env("BERTH_URL", format!("http://{}", server.api))
        .env("BERTH_TOKEN", &server.token)
        .env("BERTH_CONFIG", repo.home.join("berth.json"))
        .env("HOME", &repo.home)
        .output()?;
    if !output.status.success() {
        bail!("berth git-remote: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(repo)
}

/// A `git push` in its own process group (as a terminal's Ctrl-C would see it), its `remote:`
/// lines timestamped as they arrive.
struct Push {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>,
}

impl Push {
    fn start(repo: &Repo, args: &[&str]) -> anyhow::Result<Push> {
        let mut command = tokio::process::Command::from(repo.git(args));
        command.process_group(0).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().context("starting git push")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stderr = child.stderr.take().expect("BUG: piped");
        tokio::spawn(async move {
            // git rewrites progress lines with `\r`; split on both.
            let mut reader = tokio::io::BufReader::new(stderr);
            let mut buffer = Vec::new();
            while let Ok(n) = reader.read_until(b'\n', &mut buffer).await {
                if n == 0 {
                    break;
                }
                for line in String::from_utf8_lossy(&buffer).split('\r') {
                    let _ = tx.send((Instant::now(), line.trim_end().to_string()));
                }
                buffer.clear();
            }
        });
        Ok(Push { child, lines })
    }

    /// Waits for the push to end: its exit status and every line with its arrival time.
    async fn finish(mut self) -> anyhow::Result<(bool, Vec<(Instant, String)>, Instant)> {
        let status = tokio::time::timeout(Duration::from_secs(300), self.child.wait()).await??;
        let ended = Instant::now();
        let mut lines = Vec::new();
        while let Some(line) = self.lines.recv().await {
            lines.push(line);
        }
        Ok((status.success(), lines, ended))
    }

    /// Kills the push's whole process group, as Ctrl-C in a terminal would stop it.
    fn kill(&mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("the push has ended")?;
        let pid = rustix::process::Pid::from_raw(pid as i32).context("pid")?;
        rustix::process::kill_process_group(pid, rustix::process::Signal::INT)?;
        Ok(())
    }
}

fn text(lines: &[(Instant, String)]) -> String {
    lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
}

async fn build_state(server: &Server, app: &str, number: u64) -> anyhow::Result<String> {
    let (_, build) = server.api().call(reqwest::Method::GET, &format!("/{app}/builds/{number}"), None).await?;
    Ok(build["state"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_push_builds_and_releases_the_pushed_commit() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    fixture.track_built_app("main/pushed");
    let server = fixture.start_server().await?;
    let api = server.api();
    let created =
        api.create_app(json!({ "name": "pushed", "port": 8080, "replicas": 2, "health_path": "/up" })).await?;
    assert_eq!(created, 0, "an app without an image has no release until its first push");
    let repo = repo(&fixture, &server, "pushed", "source").await?;

    // First push: built, released, `remote:` lines streamed while it runs.
    let first = repo.commit("c1", "")?;
    let (ok, lines, ended) = Push::start(&repo, &["push", "berth", "main"])?.finish().await?;
    let output = text(&lines);
    assert!(ok, "the first push failed:\n{output}\n{}", server.log());
    let remote: Vec<&(Instant, String)> = lines.iter().filter(|(_, l)| l.starts_with("remote: ")).collect();
    assert!(remote.first().is_some_and(|(_, l)| l.contains("build 1 of main/pushed")), "{output}");
    assert!(output.contains("remote: build 1 done: release 1 serves"), "{output}");
    let streamed_for = ended.duration_since(remote.first().context("no remote: lines")?.0);
    assert!(
        streamed_for > Duration::from_millis(500),
        "remote: lines arrived only at the end ({streamed_for:?}):\n{output}"
    );
    let (status, body) = get(server.ingress, &host("pushed"), "/").await?;
    assert_eq!((status, body.starts_with("hello from c1 ")), (200, true), "{body}");
    assert_eq!(repo.remote_main()?, first);

    // A second push releases under load with no failed request.
    let second = repo.commit("c2", "")?;
    let load = Load::start(server.ingress, &host("pushed"), "/", 4, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, lines, _) = Push::start(&repo, &["push", "berth", "main"])?.finish().await?;
    let report = load.stop().await;
    assert!(ok, "{}", text(&lines));
    assert!(report.requests > 50, "the load should be continuous, sent {}", report.requests);
    assert_eq!(report.failures, Vec::<String>::new(), "{} failed of {}", report.failures.len(), report.requests);
    let (_, body) = get(server.ingress, &host("pushed"), "/").await?;
    assert!(body.starts_with("hello from c2 "), "{body}");

    // A broken Dockerfile: the push fails with the builder's error; c2 keeps serving and the
    // remote branch stays at the deployed commit.
    repo.commit("c3", "COPY missing-file /x\n")?;
    let (ok, lines, _) = Push::start(&repo, &["push", "berth", "main"])?.finish().await?;
    let output = text(&lines);
    assert!(!ok, "a broken build must fail the push:\n{output}");
    assert!(output.contains("missing-file") && output.contains("build 3 failed"), "{output}");
    assert!(output.contains("pre-receive hook declined"), "{output}");
    let (_, body) = get(server.ingress, &host("pushed"), "/").await?;
    assert!(body.starts_with("hello from c2 "), "{body}");
    assert_eq!(repo.remote_main()?, second);

    // Other branches are refused, naming the deploy branch.
    let (ok, lines, _) = Push::start(&repo, &["push", "berth", "HEAD:feature"])?.finish().await?;
    assert!(!ok && text(&lines).contains("only the branch main"), "{}", text(&lines));

    // A slow build: a concurrent push is refused naming it; killing the first push cancels its
    // build and frees the app at once.
    repo.run(&["reset", "-q", "--hard", &second])?;
    repo.commit("c4", "RUN [\"/hello\", \"sleep\", \"60\"]\n")?;
    let mut slow = Push::start(&repo, &["push", "berth", "main"])?;
    let building = eventually("the slow build is building", Duration::from_secs(60), || async {
        (build_state(&server, "pushed", 4).await.ok()? == "building").then_some(())
    })
    .await;
    if let Err(error) = building {
        let (_, builds) = api.call(reqwest::Method::GET, "/pushed/builds", None).await?;
        slow.kill()?;
        let (_, lines, _) = slow.finish().await?;
        bail!("{error}: {builds}\n{}", text(&lines));
    }
    let (ok, lines, _) = Push::start(&repo, &["push", "berth", "HEAD:main"])?.finish().await?;
    let refused = text(&lines);
    assert!(!ok && refused.contains("build 4 of pushed") && refused.contains("berth.replace"), "{refused}");
    slow.kill()?;
    let (ok, _, _) = slow.finish().await?;
    assert!(!ok);
    eventually("the killed push's build is canceled", Duration::from_secs(15), || async {
        (build_state(&server, "pushed", 4).await.ok()? == "canceled").then_some(())
    })
    .await?;
    assert_eq!(repo.remote_main()?, second);

    // A push from a shallow CI clone (whose history Berth does not have) works.
    repo.run(&["checkout", "-q", "--orphan", "ci"])?;
    repo.commit("c5-base", "")?;
    let ci_tip = repo.commit("c5", "")?;
    let shallow_dir = fixture.dir.join("shallow");
    let source_url = format!("file://{}", repo.dir.display());
    repo.run(&["clone", "-q", "--depth", "1", "--branch", "ci", &source_url, shallow_dir.to_str().context("path")?])?;
    let shallow = Repo { dir: shallow_dir, home: repo.home.clone(), token: repo.token.clone() };
    let url = repo.run(&["remote", "get-url", "berth"])?;
    shallow.run(&["remote", "add", "berth", &url])?;
    let helper = repo.run(&["config", "--get-regexp", "credential\\..*\\.helper"])?;
    for line in helper.lines().filter(|l| l.contains("git-credential")) {
        let (key, value) = line.split_once(' ').context("config line")?;
        shallow.run(&["config", "--add", key, value])?;
    }
    assert_eq!(shallow.run(&["rev-parse", "--is-shallow-repository"])?, "true");
    let (ok, lines, _) = Push::start(&shallow, &["push", "--force", "berth", "HEAD:main"])?.finish().await?;
    assert!(ok, "a shallow clone's push failed:\n{}", text(&lines));
    assert_eq!(repo.remote_main()?, ci_tip);
    let (_, body) = get(server.ingress, &host("pushed"), "/").await?;
    assert!(body.starts_with("hello from c5 "), "{body}");

    // A viewer's token may fetch but not push.
    let (status, created) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "ci-view", "team": "main", "role": "viewer" })),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    let viewer = Repo { token: created["token"].as_str().context("token")?.to_string(), ..shallow };
    assert_eq!(viewer.remote_main()?, ci_tip, "a viewer may fetch");
    viewer.commit("c6", "")?;
    let (ok, lines, _) = Push::start(&viewer, &["push", "--force", "berth", "HEAD:main"])?.finish().await?;
    let output = text(&lines);
    assert!(!ok && output.contains("403"), "a viewer must not push:\n{output}");
    let (_, no_token) = get_status(&server, "/git/main/pushed.git/info/refs?service=git-receive-pack").await?;
    assert_eq!(no_token, 401);

    // The builds as the CLI lists them.
    let listed = server.cli(&["builds", "list", "pushed"])?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    for state in ["succeeded", "failed", "canceled"] {
        assert!(listed.contains(state), "{listed}");
    }
    let logs = server.cli(&["builds", "logs", "pushed", "3"])?;
    assert!(String::from_utf8_lossy(&logs.stdout).contains("missing-file"));

    // Deleting the app takes its repository, build logs and images with it.
    api.delete("pushed").await?;
    assert!(!server.data_dir.join("git/main/pushed.git").exists());
    let label = format!("label={}=main/pushed", berth_wire::labels::IMAGE_APP);
    let images = std::process::Command::new("docker").args(["images", "-q", "--filter", &label]).output()?;
    assert_eq!(String::from_utf8_lossy(&images.stdout).trim(), "", "the app's images are removed");
    Ok(())
}

async fn get_status(server: &Server, path: &str) -> anyhow::Result<(String, u16)> {
    let response = reqwest::get(format!("http://{}{path}", server.api)).await?;
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    Ok((challenge, status))
}

/// A `git daemon` serving `base` read-only on a free loopback port: the "provider" a webhook's
/// commit is fetched from.
struct GitDaemon {
    _child: tokio::process::Child,
    port: u16,
}

impl GitDaemon {
    async fn start(base: &Path) -> anyhow::Result<GitDaemon> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = tokio::process::Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", &format!("--port={port}")])
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        eventually("git daemon listens", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await?;
        Ok(GitDaemon { _child: child, port })
    }
}

fn signed(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_webhook_builds_the_pushed_commit() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    fixture.track_built_app("main/hooked");
    let server = fixture.start_server().await?;
    let api = server.api();
    api.create_app(json!({ "name": "hooked", "port": 8080, "replicas": 1, "health_path": "/up" })).await?;

    // The "provider": a repository served by git daemon.
    let repo = repo(&fixture, &server, "hooked", "upstream").await?;
    let pushed = repo.commit("w1", "")?;
    repo.commit("w2-not-pushed-yet", "")?;
    let daemon = GitDaemon::start(&fixture.dir).await?;
    let git_url = format!("git://127.0.0.1:{}/upstream", daemon.port);
    // Credentials in a git URL are kept for fetching but never shown.
    let with_secret = "https://someone:s3cret@git.example.com/acme/hooked.git";
    let (status, body) =
        api.call(reqwest::Method::PATCH, "/hooked/git", Some(json!({ "git_url": with_secret }))).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["settings"]["git_url"], "https://git.example.com/acme/hooked.git", "{body}");
    let (status, body) = api.call(reqwest::Method::PATCH, "/hooked/git", Some(json!({ "git_url": git_url }))).await?;
    assert_eq!(status, 200, "{body}");
    let (status, hook) = api
        .call(
            reqwest::Method::POST,
            "/hooked/webhooks",
            Some(json!({ "provider": "github", "repository": "acme/hooked" })),
        )
        .await?;
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().context("secret")?.to_string();
    let url = format!("http://{}{}", server.api, hook["path"].as_str().context("path")?);
    let http = reqwest::Client::new();
    let deliver = |payload: serde_json::Value, signature: Option<String>, delivery: &str| {
        let body = serde_json::to_vec(&payload).expect("json");
        let signature = signature.unwrap_or_else(|| signed(&secret, &body));
        http.post(&url)
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
    };
    let payload = json!({ "ref": "refs/heads/main", "after": pushed, "repository": { "full_name": "Acme/Hooked" } });

    // A bad signature is refused and builds nothing.
    let refused = deliver(payload.clone(), Some(format!("sha256={}", "0".repeat(64))), "d-1").await?;
    assert_eq!(refused.status(), 401);
    // Another branch is ignored with its reason.
    let other = json!({ "ref": "refs/heads/dev", "after": pushed, "repository": { "full_name": "acme/hooked" } });
    let ignored = deliver(other, None, "d-2").await?;
    assert_eq!(ignored.status(), 200);
    // A good one builds exactly `after` (not the branch tip) and answers 202 with the build.
    let accepted = deliver(payload.clone(), None, "d-3").await?;
    assert_eq!(accepted.status(), 202);
    let accepted: serde_json::Value = accepted.json().await?;
    assert_eq!((accepted["build"].as_u64(), accepted["commit"].as_str()), (Some(1), Some(pushed.as_str())));
    eventually("the webhook's build is released", Duration::from_secs(180), || async {
        let (_, body) = get(server.ingress, &host("hooked"), "/").await.ok()?;
        body.starts_with("hello from w1 ").then_some(())
    })
    .await?;
    // A redelivery of the accepted delivery builds nothing again.
    let again = deliver(payload, None, "d-3").await?;
    assert_eq!(again.status(), 200);
    let (_, deliveries) = api.call(reqwest::Method::GET, "/hooked/webhook-deliveries", None).await?;
    let verdicts: Vec<&str> =
        deliveries.as_array().context("list")?.iter().filter_map(|d| d["verdict"].as_str()).collect();
    assert_eq!(verdicts, ["ignored", "accepted", "ignored", "refused"], "{deliveries}");
    let (_, builds) = api.call(reqwest::Method::GET, "/hooked/builds", None).await?;
    assert_eq!(builds.as_array().map(Vec::len), Some(1), "{builds}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_host_builds_and_its_image_reaches_the_other_host() -> anyhow::Result<()> {
    // A control plane without an agent of its own: every build runs on a joined host.
    let cluster = berth_tests::Cluster::start_with(2, &[], &[2]).await?;
    cluster.fixture.track_built_app("main/farbuilt");
    let api = cluster.server.api();
    api.create_app(json!({ "name": "farbuilt", "port": 8080, "replicas": 2, "health_path": "/up" })).await?;
    let repo = repo(&cluster.fixture, &cluster.server, "farbuilt", "far").await?;
    repo.commit("r1", "")?;
    let (ok, lines, _) = Push::start(&repo, &["push", "berth", "main"])?.finish().await?;
    let output = text(&lines);
    assert!(ok, "the push failed:\n{output}\n{}", cluster.server.log());
    assert!(output.contains("Step 1/"), "the remote builder's output reaches the pusher:\n{output}");
    let (_, build) = api.call(reqwest::Method::GET, "/farbuilt/builds/1", None).await?;
    let names: Vec<&str> = cluster.hosts.iter().map(|h| h.name.as_str()).collect();
    assert!(names.contains(&build["host"].as_str().unwrap_or_default()), "built on a joined host: {build}");
    // The replicas are spread over both hosts: one of them got the image shipped from the other.
    let detail = api.show("farbuilt").await?;
    let hosts: std::collections::BTreeSet<&str> = detail.replicas.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts.len(), 2, "{:?}", detail.replicas);
    assert!(detail.replicas.iter().all(|r| r.ready), "{:?}", detail.replicas);
    let (status, body) = get(cluster.server.ingress, &host("farbuilt"), "/").await?;
    assert_eq!((status, body.starts_with("hello from r1 ")), (200, true), "{body}");
    Ok(())
}
