//! `cargo xtask bench ingress`: Berth's ingress against nginx and HAProxy (Debian's packages),
//! all three proxying to the same two app replicas in the same run.
//!
//! - Each proxy runs on core 0 alone (`taskset`; one worker: Berth's runtime gets
//!   `TOKIO_WORKER_THREADS=1`, nginx `worker_processes 1`, HAProxy `nbthread 1`). The load
//!   generator and the upstream containers share core 1.
//! - Scenarios: HTTP/1.1 keep-alive and HTTPS (TLS 1.3) keep-alive (`wrk`), new TLS handshakes
//!   (`wrk` with `Connection: close`: one handshake per request), h2 over TLS (`h2load`).
//! - Rounds alternate the order of the proxies; every round is printed, then the medians and the
//!   ratios. Figures, not assertions.
//! - "Proxy core busy" is all of core 0 (the proxy, the kernel's network work it causes, and
//!   whatever else runs there: Berth's control plane is pinned with its ingress). Below ~95 % the
//!   load side (core 1) set the pace, and "req per core-s" (req/s over that busy share) is the
//!   better comparison of what each proxy costs. "Load core busy" shows the other side: near 100 %
//!   the load generator and the replicas are the limit. A proxy that idles costs the load side
//!   more (on a VM, waking a sleeping process across cores is an interprocessor interrupt), so
//!   req/s can favour a busier, slower proxy there.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_tests::{Fixture, quantile};

use super::{APP, HOST};
use serde_json::json;

const ROUNDS: usize = 3;
const SECONDS: u32 = 5;
const PROXY_CORE: &str = "0";
const LOAD_CORE: &str = "1";

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Http1,
    Https,
    Handshakes,
    H2,
}

impl Scenario {
    const ALL: [Scenario; 4] = [Scenario::Http1, Scenario::Https, Scenario::Handshakes, Scenario::H2];

    fn key(self) -> &'static str {
        match self {
            Scenario::Http1 => "http1",
            Scenario::Https => "https",
            Scenario::Handshakes => "handshakes",
            Scenario::H2 => "h2",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::Http1 => "HTTP/1.1 keep-alive (wrk -t1 -c64)",
            Scenario::Https => "HTTPS keep-alive, TLS 1.3 (wrk -t1 -c64)",
            Scenario::Handshakes => "new TLS 1.3 handshakes, one request each (wrk -t1 -c64, Connection: close)",
            Scenario::H2 => "h2 over TLS (h2load -t1 -c32 -m10)",
        }
    }
}

/// One proxy under test: where it listens.
struct Proxy {
    name: &'static str,
    http: SocketAddr,
    https: SocketAddr,
}

#[derive(Clone, Copy)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// How busy the proxy's core was (0..1): below ~0.95 the load side, not the proxy, set the pace.
    busy: f64,
    /// How busy the load core was (0..1): near 1 it (the load generator and the replicas), not
    /// the proxy, set the pace.
    load_busy: f64,
}

impl Figures {
    /// Requests per second of the proxy core's busy time: the proxy's cost, whatever the pace.
    fn per_core_second(&self) -> f64 {
        self.rps / self.busy.max(0.01)
    }
}

/// Busy and total jiffies of one core, from `/proc/stat`.
fn core_jiffies(core: &str) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with(&format!("cpu{core} ")))
        .with_context(|| format!("/proc/stat has no cpu{core}"))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

pub async fn run() -> anyhow::Result<()> {
    for tool in ["nginx", "haproxy", "wrk", "h2load", "taskset"] {
        if !which(tool) {
            bail!("{tool} is not installed (apt-get install nginx-light haproxy wrk nghttp2-client util-linux)");
        }
    }
    let fixture = Fixture::new()?;
    let dir = fixture.dir.join("ingress-bench");
    std::fs::create_dir_all(&dir)?;
    let (chain, key, _) = berth_tests::pebble::test_certificate(&[HOST])?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, &chain)?;
    std::fs::write(&key_path, &key)?;
    std::fs::write(dir.join("haproxy.pem"), format!("{chain}{key}"))?;

    let berth_https = berth_tests::pebble::free_addr()?;
    // One worker thread, as the server gets one core; warnings only, as nginx and HAProxy log
    // nothing per request either.
    let server = fixture
        .start_server_env(
            &[
                "--https-listen",
                &berth_https.to_string(),
                "--tls-cert",
                path_str(&cert_path)?,
                "--tls-key",
                path_str(&key_path)?,
            ],
            &[("TOKIO_WORKER_THREADS", "1"), ("BERTH_LOG", "warn")],
        )
        .await?;
    let pid = server.pid().context("the server is not running")?;
    pin(&["-a", "-p", "-c", PROXY_CORE, &pid.to_string()])?;
    super::create_app(&fixture, &server).await?;
    let api = server.api();
    // Plain HTTP must be proxied, not redirected, for the HTTP/1.1 scenario.
    let (status, body) =
        api.call(reqwest::Method::PATCH, &format!("/{APP}/edge"), Some(json!({ "https_redirect": false }))).await?;
    if status != 200 {
        bail!("turning the HTTPS redirect off answered {status}: {body}");
    }
    for container in fixture.containers(APP)? {
        let status = Command::new("docker").args(["update", "--cpuset-cpus", LOAD_CORE, &container]).output()?;
        if !status.status.success() {
            bail!("docker update --cpuset-cpus: {}", String::from_utf8_lossy(&status.stderr));
        }
    }
    let endpoints: Vec<String> = api.show(APP).await?.replicas.iter().filter_map(|r| r.endpoint.clone()).collect();
    if endpoints.len() != 2 {
        bail!("expected 2 endpoints, have {endpoints:?}");
    }

    let nginx = Reference::nginx(&dir, &endpoints, &cert_path, &key_path)?;
    let haproxy = Reference::haproxy(&dir, &endpoints)?;
    let proxies = [
        Proxy { name: "berth", http: server.ingress, https: berth_https },
        Proxy { name: "nginx", http: nginx.http, https: nginx.https },
        Proxy { name: "haproxy", http: haproxy.http, https: haproxy.https },
    ];
    for proxy in &proxies {
        let (status, body) = berth_tests::get(proxy.http, HOST, "/").await?;
        if status != 200 || !body.starts_with("hello from") {
            bail!("{} does not proxy: {status} {body}", proxy.name);
        }
    }

    // `BERTH_BENCH_HOLD=SECONDS` keeps the three proxies up for that long before measuring, for
    // profiling by hand (`perf record -p`, `strace -c -p`).
    if let Some(hold) = std::env::var("BERTH_BENCH_HOLD").ok().and_then(|s| s.parse::<u64>().ok()) {
        for proxy in &proxies {
            println!("{:<8} http://{}  https://{}", proxy.name, proxy.http, proxy.https);
        }
        println!("berth pid {pid}; holding for {hold} s");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    println!(
        "ingress benchmark: berth, nginx {} and haproxy {} proxying to the same 2 replicas;\n\
         proxy on core {PROXY_CORE} (one worker each), load generator and upstreams on core {LOAD_CORE}; \
         {ROUNDS} rounds of {SECONDS} s, proxy order rotated per round\n",
        version("nginx", &["-v"]),
        version("haproxy", &["-v"]),
    );
    // `BERTH_BENCH_SCENARIOS=http1,h2` runs some of them (while profiling, say).
    let selected = std::env::var("BERTH_BENCH_SCENARIOS").unwrap_or_else(|_| "http1,https,handshakes,h2".into());
    let selected: Vec<&str> = selected.split(',').map(str::trim).collect();
    let mut summary = Vec::new();
    for scenario in Scenario::ALL {
        println!("{}:", scenario.title());
        if !selected.contains(&scenario.key()) {
            continue;
        }
        let mut results: Vec<Vec<Figures>> = vec![Vec::new(); proxies.len()];
        for round in 0..ROUNDS {
            for offset in 0..proxies.len() {
                let index = (round + offset) % proxies.len();
                let proxy = &proxies[index];
                let (before, load_before) = (core_jiffies(PROXY_CORE)?, core_jiffies(LOAD_CORE)?);
                let mut figures = measure(scenario, proxy, &dir)
                    .with_context(|| format!("{} through {}", scenario.title(), proxy.name))?;
                let (after, load_after) = (core_jiffies(PROXY_CORE)?, core_jiffies(LOAD_CORE)?);
                figures.busy = (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64;
                figures.load_busy =
                    (load_after.0 - load_before.0) as f64 / (load_after.1 - load_before.1).max(1) as f64;
                println!("  round {}  {}", round + 1, row(proxy.name, &figures));
                results[index].push(figures);
            }
        }
        let medians: Vec<Figures> = results.iter().map(|r| median(r)).collect();
        for (proxy, m) in proxies.iter().zip(&medians) {
            println!("  median   {}", row(proxy.name, m));
        }
        let line = format!(
            "{:<42} berth/nginx {:.2}x req/s, {:.2}x per core-s, p99 {:.2} vs {:.2} ms   \
             berth/haproxy {:.2}x req/s, {:.2}x per core-s, p99 {:.2} vs {:.2} ms",
            scenario.title().split(" (").next().unwrap_or_default(),
            medians[0].rps / medians[1].rps,
            medians[0].per_core_second() / medians[1].per_core_second(),
            medians[0].p99_us / 1000.0,
            medians[1].p99_us / 1000.0,
            medians[0].rps / medians[2].rps,
            medians[0].per_core_second() / medians[2].per_core_second(),
            medians[0].p99_us / 1000.0,
            medians[2].p99_us / 1000.0,
        );
        println!("  {line}\n");
        summary.push(line);
    }
    println!("ratios of medians (req/s; p99 berth vs reference):");
    for line in summary {
        println!("  {line}");
    }
    drop(nginx);
    drop(haproxy);
    api.delete(APP).await?;
    Ok(())
}

fn row(name: &str, f: &Figures) -> String {
    format!(
        "{name:<8} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   proxy core {:>3.0}% busy, {:>9.0} req per core-s   load core {:>3.0}% busy",
        f.rps,
        f.p50_us / 1000.0,
        f.p99_us / 1000.0,
        f.busy * 100.0,
        f.per_core_second(),
        f.load_busy * 100.0
    )
}

/// The median of each figure on its own.
fn median(figures: &[Figures]) -> Figures {
    let pick = |f: fn(&Figures) -> f64| {
        let mut values: Vec<u64> = figures.iter().map(|x| (f(x) * 1000.0) as u64).collect();
        quantile(&mut values, 0.5) as f64 / 1000.0
    };
    Figures {
        rps: pick(|f| f.rps),
        p50_us: pick(|f| f.p50_us),
        p99_us: pick(|f| f.p99_us),
        busy: pick(|f| f.busy),
        load_busy: pick(|f| f.load_busy),
    }
}

fn measure(scenario: Scenario, proxy: &Proxy, dir: &Path) -> anyhow::Result<Figures> {
    match scenario {
        Scenario::Http1 => wrk(&format!("http://{}/", proxy.http), &[]),
        Scenario::Https => wrk(&format!("https://{}/", proxy.https), &[]),
        Scenario::Handshakes => wrk(&format!("https://{}/", proxy.https), &["Connection: close"]),
        Scenario::H2 => h2load(proxy, &dir.join(format!("h2load-{}.log", proxy.name))),
    }
}

/// `wrk` on the load core against `url` with `Host: bench.localhost`. The URL names 127.0.0.1
/// (glibc does not resolve `*.localhost`), so over TLS each proxy serves its default certificate.
fn wrk(url: &str, headers: &[&str]) -> anyhow::Result<Figures> {
    let mut command = Command::new("taskset");
    command.args(["-c", LOAD_CORE, "wrk", "-t1", "-c64", &format!("-d{SECONDS}s"), "--latency"]);
    command.args(["-H", &format!("Host: {HOST}")]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors")) {
        bail!("wrk saw errors: {}\n{text}", line.trim());
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .with_context(|| format!("wrk printed no Requests/sec:\n{text}"))?
        .trim()
        .parse()?;
    let percentile = |want: &str| -> anyhow::Result<f64> {
        let line = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(want))
            .with_context(|| format!("wrk printed no {want} latency:\n{text}"))?;
        duration_us(line.trim())
    };
    Ok(Figures { rps, p50_us: percentile("50%")?, p99_us: percentile("99%")?, busy: 0.0, load_busy: 0.0 })
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`.
fn duration_us(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        bail!("unexpected duration {text:?}");
    };
    Ok(number.parse::<f64>()? * scale)
}

/// `h2load` on the load core, with its per-request log for the percentiles.
fn h2load(proxy: &Proxy, log: &Path) -> anyhow::Result<Figures> {
    let output = Command::new("taskset")
        .args(["-c", LOAD_CORE, "h2load", "-t1", "-c32", "-m10", &format!("-D{SECONDS}"), "--warm-up-time=1"])
        .arg(format!("--connect-to=127.0.0.1:{}", proxy.https.port()))
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("https://{HOST}:{}/", proxy.https.port()))
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("h2load failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    if !text.contains("Application protocol: h2") {
        bail!("h2load did not negotiate h2:\n{text}");
    }
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .with_context(|| format!("h2load printed no request counts:\n{text}"))?;
    if !requests.contains(" 0 failed, 0 errored") {
        bail!("h2load saw failures: {requests}");
    }
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|l| l.strip_suffix(" req/s"))
        .with_context(|| format!("h2load printed no req/s:\n{text}"))?
        .parse()?;
    let mut durations: Vec<u64> =
        std::fs::read_to_string(log)?.lines().filter_map(|l| l.split('\t').nth(2)?.parse().ok()).collect();
    let _ = std::fs::remove_file(log);
    if durations.is_empty() {
        bail!("h2load logged no requests");
    }
    let p50 = quantile(&mut durations, 0.5) as f64;
    let p99 = quantile(&mut durations, 0.99) as f64;
    Ok(Figures { rps, p50_us: p50, p99_us: p99, busy: 0.0, load_busy: 0.0 })
}

/// nginx or HAProxy on the proxy core, HTTP and HTTPS (h2 by ALPN) to the same upstreams.
struct Reference {
    child: Child,
    http: SocketAddr,
    https: SocketAddr,
}

impl Reference {
    /// Debian's nginx with upstream keep-alive and a TLS session cache.
    fn nginx(dir: &Path, endpoints: &[String], cert: &Path, key: &Path) -> anyhow::Result<Reference> {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let (http, https) = (berth_tests::pebble::free_addr()?, berth_tests::pebble::free_addr()?);
        let servers: String = endpoints.iter().map(|e| format!("  server {e};\n")).collect();
        let d = dir.display();
        let config = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             upstream app {{\n{servers}  keepalive 64;\n  keepalive_requests 100000;\n }}\n\
             server {{\n  listen {http};\n  listen {https} ssl http2;\n\
             ssl_certificate {};\n  ssl_certificate_key {};\n  ssl_protocols TLSv1.2 TLSv1.3;\n\
             ssl_session_cache shared:SSL:10m;\n  keepalive_requests 100000;\n\
             location / {{\n   proxy_pass http://app;\n   proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n   proxy_set_header Host $host;\n\
             proxy_set_header X-Forwarded-For $remote_addr;\n  }}\n }}\n}}\n",
            cert.display(),
            key.display(),
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config)?;
        let child = Command::new("taskset")
            .args(["-c", PROXY_CORE, "nginx", "-c", path_str(&config_path)?, "-p", path_str(&dir)?])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        Reference::wait(child, http, https, &dir.join("error.log"))
    }

    /// Debian's HAProxy with connection reuse to the upstreams.
    fn haproxy(dir: &Path, endpoints: &[String]) -> anyhow::Result<Reference> {
        let (http, https) = (berth_tests::pebble::free_addr()?, berth_tests::pebble::free_addr()?);
        let servers: String =
            endpoints.iter().enumerate().map(|(i, e)| format!("  server s{i} {e} maxconn 1000\n")).collect();
        let pem = dir.join("haproxy.pem");
        let config = format!(
            "global\n  nbthread 1\n  maxconn 4096\n  tune.ssl.default-dh-param 2048\n\
             ssl-default-bind-options ssl-min-ver TLSv1.2\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             option http-keep-alive\n  http-reuse always\n\
             frontend plain\n  bind {http}\n  default_backend app\n\
             frontend tls\n  bind {https} ssl crt {} alpn h2,http/1.1\n  default_backend app\n\
             backend app\n  balance roundrobin\n  option forwardfor\n{servers}",
            pem.display()
        );
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config)?;
        let log = dir.join("haproxy.log");
        let child = Command::new("taskset")
            .args(["-c", PROXY_CORE, "haproxy", "-db", "-f", path_str(&config_path)?])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting haproxy")?;
        Reference::wait(child, http, https, &log)
    }

    fn wait(mut child: Child, http: SocketAddr, https: SocketAddr, log: &Path) -> anyhow::Result<Reference> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(http).is_err() || std::net::TcpStream::connect(https).is_err() {
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                bail!("the reference proxy did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Reference { child, http, https })
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its worker too.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn pin(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("taskset").args(args).output()?;
    if !output.status.success() {
        bail!("taskset {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn which(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

fn version(tool: &str, args: &[&str]) -> String {
    let output = Command::new(tool).args(args).output().ok();
    let text = output.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
    let text = text.unwrap_or_default();
    text.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())).map_or_else(
        || text.lines().next().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string(),
        str::to_string,
    )
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}
