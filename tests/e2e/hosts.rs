//! Many hosts: agents in their own network namespaces join one control plane; replicas spread,
//! and move off hosts that die, are cut off, or are drained.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_tests::{Cluster, Load, eventually, get};
use berth_wire::api::{AppDetail, HostInfo};
use serde_json::json;

use crate::host;

async fn hosts(cluster: &Cluster) -> anyhow::Result<Vec<HostInfo>> {
    let (_, hosts) = cluster.server.api().call(reqwest::Method::GET, "/api/v1/hosts", None).await?;
    Ok(serde_json::from_value(hosts)?)
}

fn hosts_of(detail: &AppDetail) -> BTreeSet<String> {
    detail.replicas.iter().map(|r| r.host.clone()).collect()
}

/// Waits until the app has `count` ready replicas, none of them on `avoid`.
async fn serving_without(cluster: &Cluster, app: &str, count: usize, avoid: &str) -> anyhow::Result<AppDetail> {
    let api = cluster.server.api();
    eventually(&format!("{count} ready replicas of {app} off {avoid}"), Duration::from_secs(40), || async {
        let detail = api.show(app).await.ok()?;
        let ready = detail.replicas.iter().filter(|r| r.ready && r.host != avoid).count();
        (ready == count && detail.replicas.iter().all(|r| r.host != avoid)).then_some(detail)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_and_move_off_a_dead_host_and_a_drained_one() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &["--heartbeat-timeout", "2"]).await?;
    let api = cluster.server.api();
    let release = api
        .create_app(json!({ "name": "multi", "image": cluster.fixture.image_v1, "port": 8080, "replicas": 3, "health_path": "/up" }))
        .await?;
    api.wait_serving("multi", release).await?;
    let detail = api.show("multi").await?;
    assert_eq!(hosts_of(&detail).len(), 3, "one replica per host: {:?}", hosts_of(&detail));
    for h in &cluster.hosts {
        assert_eq!(cluster.fixture.containers_on(&h.name)?.len(), 1, "{} runs one container", h.name);
    }
    let (status, body) = get(cluster.server.ingress, &host("multi"), "/").await?;
    assert_eq!(status, 200, "{body}");

    // Host death: agent and containers gone at once.
    let mut cluster = cluster;
    let load = Load::start(cluster.server.ingress, &host("multi"), "/", 4, false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead = cluster.hosts[0].name.clone();
    let died = Instant::now();
    cluster.kill_host(0)?;
    let detail = serving_without(&cluster, "multi", 3, &dead).await?;
    let moved_after = died.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    println!(
        "host death: replicas serving elsewhere after {} ms; {} of {} requests failed",
        moved_after.as_millis(),
        report.failures.len(),
        report.requests
    );
    // Only requests in flight on the dead host may fail: at most one per client.
    assert!(report.failures.len() <= 4, "{:?}", report.failures);
    assert_eq!(hosts_of(&detail).len(), 2);
    let states = hosts(&cluster).await?;
    assert_eq!(states.iter().find(|h| h.name == dead).map(|h| h.state), Some(berth_wire::api::HostState::Down));

    // Drain a host under load: zero failed requests, nothing left on it.
    let draining = cluster.hosts[1].name.clone();
    let load = Load::start(cluster.server.ingress, &host("multi"), "/", 4, false);
    let (status, body) = api.call(reqwest::Method::POST, &format!("/api/v1/hosts/{draining}/drain"), None).await?;
    assert_eq!(status, 200, "{body}");
    let report = load.stop().await;
    assert_eq!(report.failures, Vec::<String>::new(), "drain: {} failed of {}", report.failures.len(), report.requests);
    let detail = serving_without(&cluster, "multi", 3, &draining).await?;
    assert_eq!(hosts_of(&detail), BTreeSet::from([cluster.hosts[2].name.clone()]));
    assert!(cluster.fixture.containers_on(&draining)?.is_empty(), "the drained host runs nothing");
    let states = hosts(&cluster).await?;
    assert_eq!(states.iter().find(|h| h.name == draining).map(|h| h.state), Some(berth_wire::api::HostState::Draining));

    // Removing the host ends its agent's connection for good; the agent says why and stops.
    let (status, body) = api.call(reqwest::Method::DELETE, &format!("/api/v1/hosts/{draining}"), None).await?;
    assert_eq!(status, 204, "{body}");
    assert!(hosts(&cluster).await?.iter().all(|h| h.name != draining));
    eventually("the removed agent to give up", Duration::from_secs(20), || async {
        cluster.agent_log(1).contains("no longer accepts this host's credential").then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_host_is_replaced_and_cleans_up_after_it_returns() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &["--heartbeat-timeout", "2"]).await?;
    let api = cluster.server.api();
    let release = api
        .create_app(json!({ "name": "split", "image": cluster.fixture.image_v1, "port": 8080, "replicas": 3, "health_path": "/up" }))
        .await?;
    api.wait_serving("split", release).await?;

    let load = Load::start(cluster.server.ingress, &host("split"), "/", 4, false);
    let cut = cluster.hosts[1].name.clone();
    let stranded = cluster.fixture.containers_on(&cut)?;
    assert_eq!(stranded.len(), 1);
    let partitioned = Instant::now();
    cluster.set_partitioned(1, true)?;
    serving_without(&cluster, "split", 3, &cut).await?;
    let moved_after = partitioned.elapsed();
    let report = load.stop().await;
    println!(
        "partition: replicas serving elsewhere after {} ms; {} of {} requests failed",
        moved_after.as_millis(),
        report.failures.len(),
        report.requests
    );
    assert!(report.failures.len() <= 4, "{:?}", report.failures);
    // Cut off, the agent keeps what it runs.
    assert_eq!(cluster.fixture.containers_on(&cut)?, stranded);

    cluster.set_partitioned(1, false)?;
    eventually("the returning host to be up", Duration::from_secs(30), || async {
        let hosts = hosts(&cluster).await.ok()?;
        hosts.iter().any(|h| h.name == cut && h.state == berth_wire::api::HostState::Up).then_some(())
    })
    .await?;
    eventually("the returning host to remove what is no longer desired", Duration::from_secs(30), || async {
        cluster.fixture.containers_on(&cut).ok()?.is_empty().then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", cluster.agent_log(1)))?;
    let detail = api.show("split").await?;
    assert_eq!(detail.replicas.iter().filter(|r| r.ready).count(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_pick_hosts_and_unplaceable_releases_wait_visibly() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, &[]).await?;
    let api = cluster.server.api();
    let release = api
        .create_app(json!({
            "name": "pinned", "image": cluster.fixture.image_v1, "port": 8080, "replicas": 2,
            "health_path": "/up", "constraints": { "zone": "z2" }
        }))
        .await?;
    api.wait_serving("pinned", release).await?;
    let detail = api.show("pinned").await?;
    assert_eq!(hosts_of(&detail), BTreeSet::from([cluster.hosts[1].name.clone()]));

    // Logs of replicas on remote hosts come through their agents.
    let (status, logs) = api.call(reqwest::Method::GET, "/pinned/logs?tail=10", None).await?;
    assert_eq!(status, 200);
    let logs = logs.as_str().unwrap_or_default().to_string();
    assert_eq!(logs.matches("listening on 8080").count(), 2, "{logs}");

    // The agents joined over HTTPS (and talk over wss://): each pinned the CA it verified the
    // control plane with in its credential file.
    let ca = std::fs::read_to_string(cluster.fixture.dir.join("api-ca.pem"))?;
    let membership: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cluster.fixture.dir.join("agent-1/host.json"))?)?;
    assert_eq!(membership["ca_pem"].as_str(), Some(ca.as_str()), "the CA is pinned at join");
    // Plain HTTP to another machine is refused before anything is sent, unless --insecure.
    let address = &cluster.hosts[0].address;
    let refused = std::process::Command::new(berth_tests::berth_binary()?)
        .args(["agent", "--join", &format!("http://{address}:7878"), "--token", "berth_join_x", "--name", "h9"])
        .arg("--data-dir")
        .arg(cluster.fixture.dir.join("agent-cleartext"))
        .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--insecure"), "{stderr}");

    // Nothing carries zone=z9: the release waits and says why, then fails; v1 keeps serving.
    let stuck = api.deploy("pinned", json!({ "constraints": { "zone": "z9" } })).await?;
    let info = api.wait_release("pinned", stuck).await?;
    assert_eq!(info.state, berth_wire::api::ReleaseState::Failed);
    let waiting = info.events.iter().find(|e| e.phase == "waiting_for_capacity").expect("a waiting event");
    assert!(waiting.message.contains("without zone=z9"), "{}", waiting.message);
    let (status, _) = get(cluster.server.ingress, &host("pinned"), "/").await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_exists_on_one_host_only_is_shipped_to_another() -> anyhow::Result<()> {
    // Host 2 runs its own Docker engine, which has none of the test images and cannot pull.
    let cluster = Cluster::start_with(2, &[], &[2]).await?;
    let engine = &cluster.engines[0];
    assert!(engine.docker(&["image", "inspect", &cluster.fixture.image_v1]).is_err());
    let api = cluster.server.api();
    let release = api
        .create_app(json!({
            "name": "shipped", "image": cluster.fixture.image_v1, "port": 8080, "replicas": 1,
            "health_path": "/up", "constraints": { "zone": "z2" }
        }))
        .await?;
    api.wait_serving("shipped", release)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", cluster.agent_log(1)))?;
    engine.docker(&["image", "inspect", &cluster.fixture.image_v1])?;
    let running = engine.docker(&["ps", "-q", "--filter", &format!("label=berth.host={}", cluster.hosts[1].name)])?;
    assert_eq!(running.lines().count(), 1, "the replica runs on host 2's engine");
    let (status, body) = get(cluster.server.ingress, &host("shipped"), "/").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from v1 "), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_keep_serving_through_a_control_plane_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(2, &["--heartbeat-timeout", "2"]).await?;
    let api = cluster.server.api();
    let release = api
        .create_app(json!({ "name": "steady", "image": cluster.fixture.image_v1, "port": 8080, "replicas": 2, "health_path": "/up" }))
        .await?;
    api.wait_serving("steady", release).await?;
    assert_eq!(hosts_of(&api.show("steady").await?).len(), 2, "spread before the restart");
    let before: Vec<Vec<String>> =
        cluster.hosts.iter().map(|h| cluster.fixture.containers_on(&h.name)).collect::<anyhow::Result<_>>()?;

    // The control plane goes away: the agents keep their containers running meanwhile.
    cluster.server.crash().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (host, containers) in cluster.hosts.iter().zip(&before) {
        assert_eq!(&cluster.fixture.containers_on(&host.name)?, containers, "{} kept its containers", host.name);
    }
    // It comes back: the agents reconnect, nothing is moved or restarted, the app serves.
    cluster.server.start_again(&cluster.fixture).await?;
    let api = cluster.server.api();
    eventually("both hosts to be up again", Duration::from_secs(20), || async {
        let hosts = hosts(&cluster).await.ok()?;
        hosts.iter().all(|h| h.state == berth_wire::api::HostState::Up).then_some(())
    })
    .await?;
    let detail = eventually("both replicas ready", Duration::from_secs(20), || async {
        let detail = api.show("steady").await.ok()?;
        (detail.replicas.iter().filter(|r| r.ready).count() == 2).then_some(detail)
    })
    .await?;
    assert_eq!(hosts_of(&detail).len(), 2, "{detail:#?}\n{}", cluster.server.log());
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (host, containers) in cluster.hosts.iter().zip(&before) {
        assert_eq!(&cluster.fixture.containers_on(&host.name)?, containers, "{}: no container replaced", host.name);
    }
    let (status, body) = get(cluster.server.ingress, &host("steady"), "/").await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}
