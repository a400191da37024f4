//! Edge-only ingress nodes (`berth ingress --join`) in front of two control-plane instances on one
//! PostgreSQL database: they follow the leader's route table through a failover, the release
//! waits for them, and they serve on from their saved table while the whole control plane is
//! stopped, after their own restart too.

use std::time::{Duration, Instant};

use berth_tests::{IngressNode, Load, LoadReport, eventually, get};
use serde_json::{Value, json};

use crate::control_plane::{instance_at, status, two_instances};
use crate::host;

/// A join token for `uses` ingress nodes.
pub(crate) async fn join_token(api: &berth_tests::Api, uses: u32) -> anyhow::Result<String> {
    let body = json!({ "uses": uses, "kind": "ingress" });
    let (code, created) = api.call(reqwest::Method::POST, "/api/v1/join-tokens", Some(body)).await?;
    anyhow::ensure!(code == 201, "creating a join token answered {code}: {created}");
    Ok(created["token"].as_str().expect("a token").to_string())
}

/// No request of `report` failed, and there were some.
pub(crate) fn assert_no_failures(what: &str, report: &LoadReport, log: impl Fn() -> String) {
    assert!(report.requests > 50, "{what}: {} requests", report.requests);
    assert!(
        report.failures.is_empty(),
        "{what}: {} failed of {}: {:?}\n{}",
        report.failures.len(),
        report.requests,
        &report.failures[..report.failures.len().min(5)],
        log()
    );
}

/// The node's row in `status`, once it reports the latest table.
async fn node_confirms(api: &berth_tests::Api, node: &str) -> anyhow::Result<Value> {
    let id = format!("ingress/{node}");
    eventually(&format!("{id} to confirm the route table"), Duration::from_secs(15), || async {
        let seen = status(api).await.ok()?;
        let row = seen["instances"].as_array()?.iter().find(|i| i["id"] == id.as_str())?.clone();
        (row["kind"] == "ingress" && row["routes_applied"] == seen["routes_version"]).then_some(row)
    })
    .await
}

pub(crate) async fn serves(node: &IngressNode, app: &str, version: &str) -> anyhow::Result<()> {
    let expected = format!("hello from {version} ");
    eventually(&format!("{} to serve {app} {version}", node.name), Duration::from_secs(15), || async {
        let (code, body) = get(node.addr, &host(app), "/").await.ok()?;
        (code == 200 && body.starts_with(&expected)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nodes_follow_a_failover_and_serve_on_while_the_control_plane_is_stopped() -> anyhow::Result<()> {
    let fixture = berth_tests::Fixture::new()?;
    let Some((mut leader, mut follower)) = two_instances(&fixture, "the ingress node test", [&[], &[]]).await? else {
        return Ok(());
    };
    let api = follower.api();
    let token = join_token(&api, 2).await?;
    // Edge 1 knows both instances, the leader first; edge 2 only the follower, and learns the
    // rest from the tables.
    let drain = ["--drain-timeout", "10"];
    let mut edges = [
        IngressNode::start(&fixture, "edge-1", &[leader.api, follower.api], &token, &drain).await?,
        IngressNode::start(&fixture, "edge-2", &[follower.api], &token, &drain).await?,
    ];
    // The token had two uses.
    let third = IngressNode::start(&fixture, "edge-3", &[follower.api], &token, &[]).await;
    let refused = third.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(refused.contains("join token is not valid"), "a third node joined: {refused}");

    let release = api
        .create_app(
            json!({ "name": "edge", "image": fixture.image_v1, "port": 8080, "replicas": 2, "health_path": "/up" }),
        )
        .await?;
    api.wait_serving("edge", release).await?;
    for edge in &edges {
        serves(edge, "edge", "v1").await?;
        node_confirms(&api, &edge.name).await?;
    }
    let seen = status(&api).await?;
    assert_eq!(seen["ingress_nodes"], json!(["edge-1", "edge-2"]), "{seen}");
    let follower_id = instance_at(&seen, follower.api).expect("the follower is listed");

    // A release asked of the follower; the leader is killed while it runs, under load through
    // both nodes. The nodes turn to the follower; the release waits for their confirmation
    // before it stops the old containers.
    let loads = edges.each_ref().map(|edge| Load::start(edge.addr, &host("edge"), "/", 2, false));
    let release = api.deploy("edge", json!({ "image": fixture.image_v2 })).await?;
    eventually("the new replicas to be placed", Duration::from_secs(10), || async {
        let info = api.release("edge", release).await.ok()?;
        info.events.iter().any(|e| e.phase == "starting").then_some(())
    })
    .await?;
    leader.crash().await?;
    let killed = Instant::now();
    eventually("the follower to take over", Duration::from_secs(15), || async {
        let seen = status(&api).await.ok()?;
        (seen["leader"] == follower_id.as_str()).then_some(())
    })
    .await?;
    eprintln!("ingress nodes: the follower leads {:?} after the leader was killed", killed.elapsed());
    let info = api.wait_serving("edge", release).await?;
    let laggards: Vec<&str> =
        info.events.iter().filter(|e| e.message.contains("edge-")).map(|e| e.message.as_str()).collect();
    assert!(laggards.is_empty(), "no node lagged: {laggards:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let [load_1, load_2] = loads;
    for (edge, load) in edges.iter().zip([load_1.stop().await, load_2.stop().await]) {
        let log = || format!("{}\n--- the surviving instance's log:\n{}", edge.log(), follower.log());
        assert_no_failures(&format!("through {} during the failover", edge.name), &load, log);
    }
    assert_eq!(fixture.containers("edge")?.len(), 2, "two replicas of the new release, none orphaned or doubled");
    for edge in &edges {
        serves(edge, "edge", "v2").await?;
        node_confirms(&api, &edge.name).await?;
    }

    // The whole control plane stopped for 60 s under load; edge 2 is restarted meanwhile and
    // serves from the table it saved.
    let load_1 = Load::start(edges[0].addr, &host("edge"), "/", 2, false);
    follower.crash().await?;
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    edges[1].crash().await?;
    edges[1].start_again().await?;
    assert!(edges[1].log().contains("serving the saved route table"), "{}", edges[1].log());
    let load_2 = Load::start(edges[1].addr, &host("edge"), "/", 2, false);
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(stopped.elapsed())).await;
    let (report_1, report_2) = (load_1.stop().await, load_2.stop().await);
    eprintln!(
        "ingress nodes: control plane stopped {:?}: {} requests through edge-1, {} through edge-2 after its restart",
        stopped.elapsed(),
        report_1.requests,
        report_2.requests
    );
    assert_no_failures("through edge-1 with the control plane stopped", &report_1, || edges[0].log());
    assert_no_failures("through edge-2 restarted with the control plane stopped", &report_2, || edges[1].log());

    // The control plane back: the nodes report to it again.
    follower.start_again(&fixture).await?;
    let api = follower.api();
    for edge in &edges {
        node_confirms(&api, &edge.name).await?;
    }

    // A removed node's credential stops working: the node stops, its row goes.
    let (code, body) = api.call(reqwest::Method::DELETE, "/api/v1/ingress/nodes/edge-2", None).await?;
    assert_eq!(code, 204, "{body}");
    let [_, edge_2] = &mut edges;
    eventually("the removed node to stop", Duration::from_secs(40), || async {
        edge_2.log().contains("no longer accepts this node's credential").then_some(())
    })
    .await?;
    assert!(!edge_2.data_dir.join("routes.json").exists(), "the removed node keeps its saved table");
    let seen = status(&api).await?;
    assert_eq!(seen["ingress_nodes"], json!(["edge-1"]), "{seen}");
    Ok(())
}
