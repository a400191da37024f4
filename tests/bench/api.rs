//! `cargo xtask bench api`: the API and the dashboard on SQLite against PostgreSQL, in the same
//! run. One server per engine, each with the same 20 apps (no replicas: what is measured is the
//! control plane) and one more with 100 releases; rounds alternate between the two. Per round and
//! engine: 8 clients for 5 s each on the app list, an app's detail (one release, and 100), and
//! the dashboard's apps page (with a session cookie), then 100 deploys one after another (and a
//! wait until the last serves, so its work does not weigh on what is measured next). Prints
//! every round, then the medians and the ratios PostgreSQL / SQLite. PostgreSQL is the test
//! harness's: fsync, synchronous_commit and full_page_writes off, which favours it on writes
//! against SQLite (WAL, synchronous=NORMAL).

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use berth_tests::{Fixture, Server, quantile};
use serde_json::json;

const APPS: usize = 20;
const CLIENTS: usize = 8;
const SECONDS: Duration = Duration::from_secs(5);
const DEPLOYS: usize = 100;
/// Releases of the app whose detail carries a long history.
const HISTORY: usize = 100;
const ROUNDS: usize = 3;

/// What one engine's server is measured through.
struct Target {
    engine: &'static str,
    server: Server,
    cookie: String,
}

/// One scenario's figures.
#[derive(Clone, Copy)]
struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub async fn run() -> anyhow::Result<()> {
    let database =
        berth_testdb::fresh_database()?.context("PostgreSQL is not installed (apt-get install postgresql)")?;
    // A fixture each: their data directories (and admin passwords) are their own.
    let (sqlite_fixture, postgres_fixture) = (Fixture::new()?, Fixture::new()?);
    let mut targets = Vec::new();
    for (engine, fixture, args) in
        [("SQLite", &sqlite_fixture, vec![]), ("PostgreSQL", &postgres_fixture, vec!["--database", database.as_str()])]
    {
        let server = fixture.start_server_with(&args).await?;
        let api = server.api();
        for i in 0..APPS {
            let spec = json!({ "name": format!("app-{i}"), "image": fixture.image_v1, "port": 8080, "replicas": 0 });
            api.create_app(spec).await?;
        }
        api.wait_serving(&format!("app-{}", APPS - 1), 1).await?;
        let first = json!({ "name": "history", "image": fixture.image_v1, "port": 8080, "replicas": 0 });
        api.create_app(first).await?;
        let mut last = 1;
        for n in 1..HISTORY {
            last = api.deploy("history", json!({ "env": { "N": n.to_string() } })).await?;
        }
        api.wait_serving("history", last).await?;
        let password = std::fs::read_to_string(server.data_dir.join("admin.password"))?.trim().to_string();
        let cookie = server.sign_in("admin@localhost", &password).await?.context("no session cookie")?;
        targets.push(Target { engine, server, cookie });
    }
    println!(
        "berth API benchmark: SQLite against PostgreSQL (local; fsync, synchronous_commit, full_page_writes off), \
         {APPS} apps, {CLIENTS} clients for {} s per scenario, {DEPLOYS} sequential deploys, {ROUNDS} alternating \
         rounds\n",
        SECONDS.as_secs()
    );
    let scenarios = ["GET apps", "GET app", "GET app/100", "apps page", "deploy"];
    println!("{:>5}  {:<11}  {:<11}  {:>9}  {:>9}  {:>9}", "round", "engine", "scenario", "per s", "p50 ms", "p99 ms");
    // results[engine][scenario] over rounds.
    let mut results = vec![vec![Vec::<Figures>::new(); scenarios.len()]; targets.len()];
    for round in 1..=ROUNDS {
        // Alternate which engine goes first.
        let order: Vec<usize> = if round % 2 == 1 { vec![0, 1] } else { vec![1, 0] };
        for t in order {
            let target = &targets[t];
            let base = format!("http://{}", target.server.api);
            let token = target.server.token.clone();
            let figures = [
                load(format!("{base}/api/v1/teams/main/apps"), Auth::Bearer(token.clone())).await?,
                // Not app-0, whose history grows with every round's deploys.
                load(format!("{base}/api/v1/teams/main/apps/app-1"), Auth::Bearer(token.clone())).await?,
                load(format!("{base}/api/v1/teams/main/apps/history"), Auth::Bearer(token.clone())).await?,
                load(format!("{base}/teams/main/apps"), Auth::Cookie(target.cookie.clone())).await?,
                deploys(&target.server).await?,
            ];
            for (s, f) in figures.into_iter().enumerate() {
                println!(
                    "{round:>5}  {:<11}  {:<11}  {:>9.0}  {:>9.2}  {:>9.2}",
                    target.engine, scenarios[s], f.per_second, f.p50_ms, f.p99_ms
                );
                results[t][s].push(f);
            }
        }
    }
    println!("\nmedians of {ROUNDS} rounds (PostgreSQL / SQLite):");
    for (s, scenario) in scenarios.iter().enumerate() {
        let median = |t: usize, pick: fn(&Figures) -> f64| {
            let mut values: Vec<f64> = results[t][s].iter().map(pick).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let (rate, p50, p99) = (|f: &Figures| f.per_second, |f: &Figures| f.p50_ms, |f: &Figures| f.p99_ms);
        println!(
            "  {scenario:<11}  SQLite {:>7.0}/s p50 {:>6.2} ms p99 {:>6.2} ms   PostgreSQL {:>7.0}/s p50 {:>6.2} ms p99 \
             {:>6.2} ms   {:.2}x per s, {:.2}x p50",
            median(0, rate),
            median(0, p50),
            median(0, p99),
            median(1, rate),
            median(1, p50),
            median(1, p99),
            median(1, rate) / median(0, rate),
            median(1, p50) / median(0, p50),
        );
    }
    for target in &mut targets {
        target.server.stop().await?;
    }
    Ok(())
}

#[derive(Clone)]
enum Auth {
    Bearer(String),
    Cookie(String),
}

/// [`CLIENTS`] clients asking `url` one request after another for [`SECONDS`].
async fn load(url: String, auth: Auth) -> anyhow::Result<Figures> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, auth) = (http.clone(), url.clone(), auth.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < SECONDS {
                let request = match &auth {
                    Auth::Bearer(token) => http.get(&url).bearer_auth(token),
                    Auth::Cookie(cookie) => http.get(&url).header("cookie", cookie),
                };
                let asked = Instant::now();
                let response = request.send().await?;
                ensure!(response.status() == 200, "{url} answered {}", response.status());
                response.bytes().await?;
                latencies.push(asked.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await??);
    }
    Ok(figures(latencies, started.elapsed()))
}

/// [`DEPLOYS`] deploys of `app-0`, one after another (each answered once the release is stored).
async fn deploys(server: &Server) -> anyhow::Result<Figures> {
    let api = server.api();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut last = 0;
    for n in 0..DEPLOYS {
        let asked = Instant::now();
        last = api.deploy("app-0", json!({ "env": { "N": format!("{n}-{}", started.elapsed().as_nanos()) } })).await?;
        latencies.push(asked.elapsed().as_micros() as u64);
    }
    let took = started.elapsed();
    // The releases queued meanwhile are worked through before anything else is measured.
    api.wait_serving("app-0", last).await?;
    Ok(figures(latencies, took))
}

fn figures(mut latencies: Vec<u64>, took: Duration) -> Figures {
    Figures {
        per_second: latencies.len() as f64 / took.as_secs_f64(),
        p50_ms: quantile(&mut latencies, 0.5) as f64 / 1000.0,
        p99_ms: quantile(&mut latencies, 0.99) as f64 / 1000.0,
    }
}
