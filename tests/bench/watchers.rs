//! `cargo xtask bench watchers`: one `berth server` (SQLite) with 1 000 apps, and its CPU time
//! over 20 s windows: with nothing open, with 50 dashboard pages of the apps list open (the SSE
//! stream the dashboard's apps page reads) while nothing changes, the same while one app gets a
//! new release every 2 s, and 50 pages of that app open meanwhile. The apps have no replicas:
//! what is measured is the control plane, not containers. The bench prints how many events each
//! page received and how long after the deploy's answer a page showed the release serving.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_tests::{Fixture, Server, quantile};
use serde_json::json;

const APPS: usize = 1000;
const PAGES: usize = 50;
const WINDOW: Duration = Duration::from_secs(20);
const DEPLOY_EVERY: Duration = Duration::from_secs(2);
/// The app deployed during the windows, and the one the app pages show.
const CHANGING: &str = "watched-0";

pub async fn run() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let pid = server.pid().context("the server runs")?;
    let started = Instant::now();
    create_apps(&fixture, &server).await?;
    println!(
        "berth watcher benchmark: 1 server on SQLite, {APPS} apps (created in {:.1} s), {PAGES} pages, {} s windows, \
         a release of {CHANGING} every {} s\n",
        started.elapsed().as_secs_f64(),
        WINDOW.as_secs(),
        DEPLOY_EVERY.as_secs()
    );
    println!("{:<24}  {:>8}  {:>12}  {:>20}", "open", "CPU %", "events/page", "deploy→page p50/max");
    let apps_path = "/api/v1/teams/main/watch/apps".to_string();
    let app_path = format!("/api/v1/teams/main/apps/{CHANGING}/watch");
    let windows = [
        ("nothing", None, true),
        ("50 apps-list pages idle", Some(&apps_path), false),
        ("50 apps-list pages", Some(&apps_path), true),
        ("50 app pages", Some(&app_path), true),
    ];
    for (label, path, deploying) in windows {
        let figures = window(&server, pid, path.map(String::as_str), deploying).await?;
        let shown = if figures.shown_ms.is_empty() {
            "-".to_string()
        } else {
            let mut values = figures.shown_ms.clone();
            format!("{} / {} ms", quantile(&mut values, 0.5), values.iter().max().copied().unwrap_or(0))
        };
        let events = if path.is_some() { format!("{:.1}", figures.events_per_page) } else { "-".to_string() };
        println!("{label:<24}  {:>8.1}  {events:>12}  {shown:>20}", figures.cpu_percent);
    }
    let mut server = server;
    server.stop().await?;
    Ok(())
}

async fn create_apps(fixture: &Fixture, server: &Server) -> anyhow::Result<()> {
    let api = server.api();
    let image = fixture.image_v1.clone();
    let mut pending = chunks(APPS, 8);
    while let Some(range) = pending.pop() {
        let mut tasks = Vec::new();
        for i in range {
            let (api, image) = (api.clone(), image.clone());
            tasks.push(tokio::spawn(async move {
                api.create_app(json!({ "name": format!("watched-{i}"), "image": image, "port": 8080, "replicas": 0 }))
                    .await
            }));
        }
        for task in tasks {
            task.await??;
        }
    }
    // Every first release serving before anything is measured.
    let last = format!("watched-{}", APPS - 1);
    api.wait_serving(&last, 1).await?;
    api.wait_serving(CHANGING, 1).await?;
    Ok(())
}

/// `0..total` in ranges of `size`, last range first.
fn chunks(total: usize, size: usize) -> Vec<std::ops::Range<usize>> {
    (0..total).step_by(size).map(|start| start..(start + size).min(total)).rev().collect()
}

struct Figures {
    cpu_percent: f64,
    events_per_page: f64,
    shown_ms: Vec<u64>,
}

/// One window: `PAGES` streams of `path` open (none without one), a release of [`CHANGING`]
/// every [`DEPLOY_EVERY`] when `deploying`, the server's CPU time over [`WINDOW`].
async fn window(server: &Server, pid: u32, path: Option<&str>, deploying: bool) -> anyhow::Result<Figures> {
    let api = server.api();
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, String)>();
    let mut pages = Vec::new();
    if let Some(path) = path {
        for page in 0..PAGES {
            let response = reqwest::Client::new()
                .get(format!("http://{}{path}", server.api))
                .bearer_auth(&server.token)
                .header("accept", "text/event-stream")
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("{path} answered {}", response.status());
            }
            let tx = events_tx.clone();
            pages.push(tokio::spawn(async move {
                let mut response = response;
                let mut buffer = String::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buffer.find("\n\n") {
                        let event: String = buffer.drain(..end + 2).collect();
                        if event.contains("event: apps") || event.contains("event: app\n") {
                            let _ = tx.send((page, Instant::now(), event));
                        }
                    }
                }
            }));
        }
        // The first answer of every page is not part of the window.
        let mut first = [false; PAGES];
        while first.iter().any(|seen| !seen) {
            let (page, _, _) = tokio::time::timeout(Duration::from_secs(60), events_rx.recv())
                .await
                .context("a page's first event")?
                .context("the pages ended")?;
            first[page] = true;
        }
    }
    let cpu_before = cpu_ticks(pid)?;
    let started = Instant::now();
    let mut deploys: Vec<(u32, Instant)> = Vec::new();
    let mut events = 0usize;
    let mut shown: std::collections::HashMap<(usize, u32), Instant> = Default::default();
    let mut n = 0;
    while started.elapsed() < WINDOW {
        n += 1;
        let asked = Instant::now();
        if deploying {
            let release = api.deploy(CHANGING, json!({ "env": { "N": n.to_string() } })).await?;
            deploys.push((release, asked));
        }
        let until = asked + DEPLOY_EVERY;
        while let Ok(Some((page, at, event))) = tokio::time::timeout_at(until.into(), events_rx.recv()).await {
            events += 1;
            for (release, _) in &deploys {
                if serves(&event, *release) {
                    shown.entry((page, *release)).or_insert(at);
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_ticks(pid)? - cpu_before;
    for page in pages {
        page.abort();
    }
    let shown_ms = shown
        .iter()
        .filter_map(|((_, release), at)| {
            let asked = deploys.iter().find(|(r, _)| r == release)?.1;
            Some(at.duration_since(asked).as_millis() as u64)
        })
        .collect();
    Ok(Figures {
        cpu_percent: cpu as f64 / clock_ticks_per_second()? as f64 / seconds * 100.0,
        events_per_page: events as f64 / PAGES as f64,
        shown_ms,
    })
}

/// Whether an `apps` or `app` event shows [`CHANGING`] serving `release`.
fn serves(event: &str, release: u32) -> bool {
    let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { return false };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(data) else { return false };
    let of_app = |v: &serde_json::Value| v["name"] == CHANGING && v["serving_release"] == release;
    match &value {
        serde_json::Value::Array(apps) => apps.iter().any(of_app),
        detail => of_app(detail),
    }
}

/// The process's user and system CPU time, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("/proc stat")?.1.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn clock_ticks_per_second() -> anyhow::Result<u64> {
    let output = std::process::Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}
