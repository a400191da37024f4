//! `cargo xtask bench failover`: two `berth server` instances on one PostgreSQL database; the
//! leader is killed (SIGKILL) ten times, alternately, under load through the surviving
//! instance's ingress. Prints, per kill, how long until the other instance led (as its own
//! `GET /api/v1/status` says) and how many requests failed; then the median and the maximum.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_tests::{Fixture, Load, Server};

use crate::{APP, HOST, create_app};

const KILLS: usize = 10;

pub async fn run() -> anyhow::Result<()> {
    let database =
        berth_testdb::fresh_database()?.context("PostgreSQL is not installed (apt-get install postgresql)")?;
    let fixture = Fixture::new()?;
    let args = ["--database", database.as_str()];
    let mut servers = [fixture.start_server_with(&args).await?, fixture.start_server_with(&args).await?];
    create_app(&fixture, &servers[0]).await?;
    println!("berth failover benchmark: 2 instances on PostgreSQL, the leader killed {KILLS} times, 4 clients\n");
    println!("{:>4}  {:>12}  {:>9}  {:>8}", "kill", "takeover ms", "requests", "failed");
    let mut takeovers = Vec::new();
    let mut failed_total = 0;
    for kill in 1..=KILLS {
        let leader = leader_index(&servers).await?;
        let survivor = 1 - leader;
        // The survivor's ingress must route the app before the kill.
        wait_until_routed(&servers[survivor]).await?;
        let load = Load::start(servers[survivor].ingress, HOST, "/", 4, false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        servers[leader].crash().await?;
        let killed = Instant::now();
        let api = servers[survivor].api();
        loop {
            let (code, body) = api.call(reqwest::Method::GET, "/api/v1/status", None).await?;
            if code == 200 && body["leader"] == body["answered_by"] {
                break;
            }
            if killed.elapsed() > Duration::from_secs(30) {
                bail!("no takeover within 30 s: {body}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let takeover = killed.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = load.stop().await;
        failed_total += report.failures.len();
        println!(
            "{kill:>4}  {:>12.0}  {:>9}  {:>8}",
            takeover.as_secs_f64() * 1000.0,
            report.requests,
            report.failures.len()
        );
        if let Some(first) = report.failures.first() {
            println!("      first failure: {first}");
        }
        takeovers.push(takeover);
        servers[leader].start_again(&fixture).await?;
    }
    takeovers.sort();
    let median = (takeovers[KILLS / 2 - 1] + takeovers[KILLS / 2]) / 2;
    println!(
        "\ntakeover after a kill: median {:.0} ms, max {:.0} ms; failed requests: {failed_total}",
        median.as_secs_f64() * 1000.0,
        takeovers[KILLS - 1].as_secs_f64() * 1000.0
    );
    for server in &mut servers {
        server.stop().await?;
    }
    Ok(())
}

/// Which of the two leads, as the status says.
async fn leader_index(servers: &[Server; 2]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = servers[0].api().call(reqwest::Method::GET, "/api/v1/status", None).await?;
        for (index, server) in servers.iter().enumerate() {
            let address = format!("http://{}", server.api);
            let leads = body["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| i["address"] == address.as_str() && i["leader"] == true);
            if leads {
                return Ok(index);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader within 30 s: {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_routed(server: &Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(berth_tests::get(server.ingress, HOST, "/").await, Ok((200, _))) {
        if Instant::now() > deadline {
            bail!("{APP} is not routed by {} within 30 s", server.ingress);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
