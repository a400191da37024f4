//! `berth-bench` (run by `cargo xtask bench [dashboard]`, which builds the release `berth` and
//! the dashboard first and passes the binary in `BERTH_BIN`): measures releases under load,
//! healing, and the ingress against nginx proxying to the same upstream in the same run; with
//! `dashboard`, the dashboard's sizes and timings; with `ingress`, the ingress against nginx and
//! HAProxy over HTTP/1.1, HTTPS, new handshakes and h2 (`ingress.rs`); with `failover`, two
//! instances on PostgreSQL and the leader killed ten times (`failover.rs`); with `watchers`, the
//! control plane's CPU with 1 000 apps and 50 open dashboard pages (`watchers.rs`); with `api`,
//! the API and the dashboard on SQLite against PostgreSQL (`api.rs`). Prints figures;
//! asserts nothing.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_tests::{Fixture, Load, LoadReport, quantile};
use serde_json::json;

const APP: &str = "bench";
const HOST: &str = "bench.localhost";
const RELEASES: usize = 20;
const CLIENTS: usize = 8;

mod api;
mod failover;
mod ingress;
mod watchers;

fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1);
    let runtime = tokio::runtime::Runtime::new()?;
    match mode.as_deref() {
        Some("dashboard") => runtime.block_on(dashboard()),
        Some("ingress") => runtime.block_on(ingress::run()),
        Some("failover") => runtime.block_on(failover::run()),
        Some("watchers") => runtime.block_on(watchers::run()),
        Some("api") => runtime.block_on(api::run()),
        _ => runtime.block_on(run()),
    }
}

async fn run() -> anyhow::Result<()> {
    let (fixture, server, _) = serving_app().await?;
    let api = server.api();
    println!("berth benchmark: app with 2 replicas of a static test server, {CLIENTS} keep-alive clients\n");

    // Steady state, as the reference for latency during releases.
    let load = Load::start(server.ingress, HOST, "/", CLIENTS, false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady = load.stop().await;
    let (steady_p50, steady_p99) = latency(&steady);

    // 20 releases under load.
    let load = Load::start(server.ingress, HOST, "/", CLIENTS, false);
    let mut deploy_times = Vec::new();
    for i in 0..RELEASES {
        let image = if i % 2 == 0 { &fixture.image_v2 } else { &fixture.image_v1 };
        let started = Instant::now();
        let number = api.deploy(APP, json!({ "image": image })).await?;
        api.wait_serving(APP, number).await?;
        deploy_times.push(started.elapsed().as_millis() as u64);
    }
    let during = load.stop().await;
    let (during_p50, during_p99) = latency(&during);

    // Container kill to serving again.
    let mut heal_times = Vec::new();
    for _ in 0..5 {
        let detail = api.show(APP).await?;
        let victim = detail.replicas.first().context("no replica")?;
        let container = victim.container_id.clone().context("no container")?;
        let restarts = victim.restarts;
        let replica = victim.id.clone();
        let started = Instant::now();
        fixture.kill_container(&container)?;
        loop {
            let detail = api.show(APP).await?;
            if detail.replicas.iter().any(|r| r.id == replica && r.restarts > restarts && r.ready) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the killed replica did not come back within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        heal_times.push(started.elapsed().as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    println!("releases under load ({RELEASES} releases, {} requests):", during.requests);
    println!("  failed requests                 {}", during.failures.len());
    if let Some(first) = during.failures.first() {
        println!("  first failure                   {first}");
    }
    println!("  latency p50 / p99, steady       {:.2} ms / {:.2} ms", ms(steady_p50), ms(steady_p99));
    println!("  latency p50 / p99, releasing    {:.2} ms / {:.2} ms", ms(during_p50), ms(during_p99));
    println!(
        "  ratio releasing / steady        p50 {:.2}x, p99 {:.2}x",
        during_p50 as f64 / steady_p50.max(1) as f64,
        during_p99 as f64 / steady_p99.max(1) as f64
    );
    println!(
        "  deploy to serving (API call to release done, incl. drain): median {} ms, max {} ms",
        quantile(&mut deploy_times.clone(), 0.5),
        deploy_times.iter().max().copied().unwrap_or(0)
    );
    println!(
        "  container kill to serving again (5 kills): median {} ms, max {} ms",
        quantile(&mut heal_times.clone(), 0.5),
        heal_times.iter().max().copied().unwrap_or(0)
    );

    // Throughput against nginx proxying to the same two upstreams.
    let endpoints: Vec<String> = api.show(APP).await?.replicas.iter().filter_map(|r| r.endpoint.clone()).collect();
    let nginx = Nginx::start(&fixture, &endpoints)?;
    let tool = if which("wrk") { "wrk -t2 -c32 -d5s" } else { "built-in load generator, 32 clients, 5 s" };
    println!("\ningress throughput ({tool}, same upstreams, alternating runs):");
    let direct: SocketAddr = endpoints[0].parse()?;
    let direct_rps = throughput(direct).await?;
    println!("  upstream direct (one replica)   {direct_rps:>10.0} req/s");
    let mut ratios = Vec::new();
    for round in 1..=2 {
        let berth = throughput(server.ingress).await?;
        let reference = throughput(nginx.addr).await?;
        println!(
            "  round {round}: berth {berth:>10.0} req/s   nginx {reference:>10.0} req/s   ratio {:.2}",
            berth / reference
        );
        ratios.push(berth / reference);
    }
    println!("  berth / nginx (mean of rounds)  {:.2}", ratios.iter().sum::<f64>() / ratios.len() as f64);
    drop(nginx);
    api.delete(APP).await?;
    builds(&fixture, &server).await
}

/// `git push` to serving: a first push, a second with the build cache warm, and how long a build
/// step's output takes to reach the pusher's terminal (`hello stamp` prints the time it ran).
async fn builds(fixture: &Fixture, server: &berth_tests::Server) -> anyhow::Result<()> {
    const BUILT: &str = "built";
    fixture.track_built_app(&format!("main/{BUILT}"));
    let api = server.api();
    api.create_app(json!({ "name": BUILT, "port": 8080, "replicas": 2, "health_path": "/up" })).await?;
    let repo = fixture.dir.join("bench-repo");
    std::fs::create_dir_all(&repo)?;
    std::fs::copy(fixture.hello_binary(), repo.join("hello"))?;
    let git = |args: &[&str]| -> anyhow::Result<()> {
        let output = Command::new("git")
            .args(["-c", "user.name=bench", "-c", "user.email=bench@example.com"])
            .args(args)
            .current_dir(&repo)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()?;
        if !output.status.success() {
            bail!("git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    };
    git(&["init", "-q", "-b", "main"])?;
    let remote = format!("http://{}/git/main/{BUILT}.git", server.api);
    git(&["remote", "add", "berth", &remote])?;
    let stamps = "RUN [\"/hello\", \"stamp\"]\nRUN [\"/hello\", \"sleep\", \"1\"]\n".repeat(3);
    let mut figures = Vec::new();
    for (round, version) in ["b1", "b2"].iter().enumerate() {
        std::fs::write(
            repo.join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY hello /hello\n{stamps}ENV VERSION={version}\nEXPOSE 8080\nENTRYPOINT [\"/hello\"]\n"
            ),
        )?;
        git(&["add", "-A"])?;
        git(&["commit", "-q", "-m", version])?;
        let started = Instant::now();
        let mut push = tokio::process::Command::new("git")
            .args(["-c", &format!("http.extraHeader=Authorization: Bearer {}", server.token)])
            .args(["push", "berth", "main"])
            .current_dir(&repo)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stderr = push.stderr.take().context("stderr")?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
        let mut delays = Vec::new();
        while let Some(line) = lines.next_line().await? {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
            if let Some(stamp) = line.strip_prefix("remote: stamp ").and_then(|s| s.trim().parse::<u64>().ok()) {
                delays.push(now.saturating_sub(stamp));
            }
        }
        let status = push.wait().await?;
        let took = started.elapsed();
        if !status.success() {
            bail!("the benchmark's push {version} failed:\n{}", server.log());
        }
        figures.push((round, took, delays));
    }
    println!(
        "\ngit push to serving (2 replicas, Dockerfile FROM scratch + a static binary, 3 build steps that print the time + 3 of 1 s):"
    );
    for (round, took, delays) in figures {
        let label = if round == 0 { "first push (cold)" } else { "second push (cache warm)" };
        let delays = if delays.is_empty() {
            "none printed (the steps came from the cache)".to_string()
        } else {
            format!(
                "{} ms (each of {} lines)",
                delays.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
                delays.len()
            )
        };
        println!("  {label:<26} {:>6} ms   build output to pusher: {delays}", took.as_millis());
    }
    api.delete(BUILT).await?;
    Ok(())
}

/// A fresh server with the benchmark app serving its first release.
async fn serving_app() -> anyhow::Result<(Fixture, berth_tests::Server, u32)> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let first = create_app(&fixture, &server).await?;
    Ok((fixture, server, first))
}

/// Creates the benchmark app on `server` (2 replicas of the test app) and waits until its first
/// release serves; returns that release's number.
async fn create_app(fixture: &Fixture, server: &berth_tests::Server) -> anyhow::Result<u32> {
    let api = server.api();
    let first = api
        .create_app(
            json!({ "name": APP, "image": fixture.image_v1, "port": 8080, "replicas": 2, "health_path": "/up" }),
        )
        .await?;
    api.wait_serving(APP, first).await?;
    Ok(first)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn latency(report: &LoadReport) -> (u64, u64) {
    let mut values: Vec<u64> = report.latencies.iter().map(|(_, us)| *us).collect();
    (quantile(&mut values, 0.5), quantile(&mut values, 0.99))
}

fn which(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// Requests per second through `addr` with Host `bench.localhost`.
async fn throughput(addr: SocketAddr) -> anyhow::Result<f64> {
    if which("wrk") {
        let output = Command::new("wrk")
            .args(["-t2", "-c32", "-d5s", "-H", &format!("Host: {HOST}"), &format!("http://{addr}/")])
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
            bail!("wrk saw errors through {addr}: {line}");
        }
        let rps = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .context("wrk printed no Requests/sec")?
            .trim()
            .parse()?;
        return Ok(rps);
    }
    let load = Load::start(addr, HOST, "/", 32, false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = load.stop().await;
    Ok((report.requests as f64 - report.failures.len() as f64) / 5.0)
}

/// Debian's nginx, proxying to the same upstreams with upstream keep-alive.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(fixture: &Fixture, endpoints: &[String]) -> anyhow::Result<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("nginx is not installed (apt-get install nginx-light)")?;
        let dir = fixture.dir.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let servers: String = endpoints.iter().map(|e| format!("server {e};\n")).collect();
        let d = dir.display();
        let config = format!(
            "worker_processes auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             upstream app {{\n{servers} keepalive 64;\n }}\n\
             server {{\n  listen 127.0.0.1:{port};\n  location / {{\n   proxy_pass http://app;\n\
             proxy_http_version 1.1;\n   proxy_set_header Connection \"\";\n   proxy_set_header Host $host;\n\
             proxy_set_header X-Forwarded-For $remote_addr;\n  }}\n }}\n}}\n"
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config)?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start; see {}/error.log", dir.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { child, addr })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// `cargo xtask bench dashboard`: what the browser downloads (raw and gzip), the time to first
/// byte of the apps page against the JSON API call behind it, and Deploy clicked in Chromium until
/// the release serves, against the same release made through the API. Release builds.
async fn dashboard() -> anyhow::Result<()> {
    let berth = berth_tests::berth_binary()?;
    let release_dir = berth.parent().context("the berth binary has no directory")?.to_path_buf();

    println!("dashboard benchmark (release builds)\n");
    println!("what the browser downloads:");
    let pkg = release_dir.join("site/pkg");
    let mut total = (0, 0);
    for file in ["berth.js", "berth_bg.wasm"] {
        let path = pkg.join(file);
        let raw = std::fs::metadata(&path)?.len();
        let gzip = Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -9 -c '{}' | wc -c", path.display()))
            .output()
            .context("running gzip")?;
        let gzip: u64 = String::from_utf8_lossy(&gzip.stdout).trim().parse().context("gzip's size")?;
        total = (total.0 + raw, total.1 + gzip);
        println!("  {file:<16} {:>9.1} KiB raw  {:>8.1} KiB gzip -9", raw as f64 / 1024.0, gzip as f64 / 1024.0);
    }
    println!(
        "  {:<16} {:>9.1} KiB raw  {:>8.1} KiB gzip -9",
        "total",
        total.0 as f64 / 1024.0,
        total.1 as f64 / 1024.0
    );
    println!("  (plus the page itself, whose style sheet is inline)");

    let (fixture, server, first) = serving_app().await?;
    let api = server.api();
    let base = format!("http://{}", server.api);
    let password = std::fs::read_to_string(server.data_dir.join("admin.password"))?.trim().to_string();
    // No redirects: a page answered with the sign-in redirect must not count as served.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let cookie = server.sign_in("admin@localhost", &password).await?.context("no session cookie")?;

    const N: usize = 200;
    let mut page_ttfb = Vec::new();
    let mut page_full = Vec::new();
    let mut api_ttfb = Vec::new();
    let mut page_bytes = 0;
    for _ in 0..N {
        let started = Instant::now();
        let response = http.get(format!("{base}/teams/main/apps")).header("cookie", &cookie).send().await?;
        page_ttfb.push(started.elapsed().as_micros() as u64);
        anyhow::ensure!(response.status() == 200, "the apps page answered {}", response.status());
        page_bytes = response.bytes().await?.len();
        page_full.push(started.elapsed().as_micros() as u64);
        let started = Instant::now();
        let response = http.get(format!("{base}/api/v1/teams/main/apps")).bearer_auth(&server.token).send().await?;
        api_ttfb.push(started.elapsed().as_micros() as u64);
        response.bytes().await?;
    }
    let p = |v: &mut Vec<u64>, q| ms(quantile(v, q));
    println!("\napps page, {N} requests with a session cookie (loopback, one client):");
    println!("  time to first byte   p50 {:.2} ms  p99 {:.2} ms", p(&mut page_ttfb, 0.5), p(&mut page_ttfb, 0.99));
    println!(
        "  whole page ({:.1} KiB)  p50 {:.2} ms  p99 {:.2} ms",
        page_bytes as f64 / 1024.0,
        p(&mut page_full, 0.5),
        p(&mut page_full, 0.99)
    );
    println!(
        "  reference: GET /api/v1/teams/main/apps  p50 {:.2} ms  p99 {:.2} ms",
        p(&mut api_ttfb, 0.5),
        p(&mut api_ttfb, 0.99)
    );
    println!(
        "  page TTFB / API call  {:.2}x",
        quantile(&mut page_ttfb, 0.5) as f64 / quantile(&mut api_ttfb, 0.5).max(1) as f64
    );

    // Deploy clicked in the browser until the page shows the release serving, against the API.
    let browser = berth_tests::browser::Browser::start(&fixture.dir, "bench").await?;
    browser.goto(&format!("{base}/signin")).await?;
    browser.fill("#email", "admin@localhost").await?;
    browser.fill("#password", &password).await?;
    browser.click("#sign-in").await?;
    browser.wait_for("#sign-out").await?;
    browser.goto(&format!("{base}/teams/main/apps/{APP}")).await?;
    browser.wait_hydrated().await?;
    let mut clicked_times = Vec::new();
    let mut api_times = Vec::new();
    let mut release = first;
    for round in 0..6 {
        let image = if round % 2 == 0 { &fixture.image_v2 } else { &fixture.image_v1 };
        if round % 2 == 0 {
            browser.fill("#deploy-image", image).await?;
            let started = Instant::now();
            browser.click("#deploy").await?;
            release += 1;
            browser.wait_for(&format!("#progress[data-release='{release}'][data-state='serving']")).await?;
            clicked_times.push(started.elapsed().as_millis() as u64);
            let (_, body) = berth_tests::get(server.ingress, HOST, "/").await?;
            anyhow::ensure!(body.contains("v2"), "release {release} does not serve v2: {body}");
        } else {
            let started = Instant::now();
            release = api.deploy(APP, json!({ "image": image })).await?;
            api.wait_serving(APP, release).await?;
            api_times.push(started.elapsed().as_millis() as u64);
        }
    }
    browser.close().await?;
    println!("\nDeploy clicked until the page shows the release serving (3 releases, 2 replicas each):");
    println!(
        "  browser  median {} ms  max {} ms",
        quantile(&mut clicked_times.clone(), 0.5),
        clicked_times.iter().max().copied().unwrap_or(0)
    );
    println!(
        "  reference, API call until serving (3 releases): median {} ms  max {} ms",
        quantile(&mut api_times.clone(), 0.5),
        api_times.iter().max().copied().unwrap_or(0)
    );
    println!(
        "  browser / API  {:.2}x",
        quantile(&mut clicked_times, 0.5) as f64 / quantile(&mut api_times, 0.5).max(1) as f64
    );
    api.delete(APP).await?;
    Ok(())
}
