//! What passes between instances sharing a database (instances' reports, work asked of the
//! leader, the leader's publications), on SQLite and on PostgreSQL, with two store handles on one
//! database standing for two instances.

mod common;

use std::time::Duration;

use berth_store::{InstanceInfo, Store, WorkItem, is_fenced};

fn instance(id: &str) -> InstanceInfo {
    InstanceInfo { id: id.into(), host: "cp".into(), version: "0.1.0".into(), address: format!("http://{id}:7878") }
}

#[tokio::test]
async fn instances_report_work_reaches_the_leader_and_publications_are_fenced() {
    common::with_two_handles_on_each_engine(cluster).await;
}

async fn cluster((a, b): (Store, Store)) {
    let engine = a.engine();

    // Instances: each one's row, refreshed, with how long it has been silent.
    a.instance_alive(&instance("a")).await.unwrap();
    b.instance_alive(&instance("b")).await.unwrap();
    a.instance_alive(&instance("a")).await.unwrap();
    let rows = b.instances().await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b"], "{engine}");
    assert!(rows.iter().all(|r| (0..1000).contains(&r.silent_ms)), "{engine}: {rows:?}");
    assert_eq!(rows[0].address, "http://a:7878");
    b.set_routes_applied("b", 3).await.unwrap();
    b.set_routes_applied("b", 2).await.unwrap();
    assert_eq!(a.instances().await.unwrap()[1].routes_applied, 3, "{engine}: the version never goes down");
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.instance_alive(&instance("b")).await.unwrap();
    assert_eq!(a.forget_silent_instances(Duration::from_millis(200)).await.unwrap(), 1, "{engine}");
    assert_eq!(a.instances().await.unwrap().iter().map(|r| r.id.clone()).collect::<Vec<_>>(), ["b"], "{engine}");
    b.forget_instance("b").await.unwrap();
    assert!(a.instances().await.unwrap().is_empty(), "{engine}");

    // Work: asked by either instance, taken once by the leader, duplicates folded.
    assert!(a.take_work().await.unwrap().is_empty(), "{engine}");
    b.request_work("app", "7").await.unwrap();
    b.request_work("app", "7").await.unwrap();
    a.request_work("routes", "").await.unwrap();
    let term = a.acquire_lease("a", "http://a:7878", Duration::from_secs(30)).await.unwrap().unwrap();
    let leader = a.fenced("a", term);
    let mut taken = leader.take_work().await.unwrap();
    taken.sort_by(|x, y| x.kind.cmp(&y.kind));
    let item = |kind: &str, target: &str| WorkItem { kind: kind.into(), target: target.into() };
    assert_eq!(taken, [item("app", "7"), item("routes", "")], "{engine}");
    assert!(leader.take_work().await.unwrap().is_empty(), "{engine}: taken once");

    // Publications: versions rise across publishers; a fenced handle that lost the lease
    // publishes nothing.
    assert_eq!(b.published_version("routes").await.unwrap(), 0, "{engine}");
    assert_eq!(leader.publish("routes", "[1]").await.unwrap(), 1, "{engine}");
    assert_eq!(leader.publish("routes", "[1,2]").await.unwrap(), 2, "{engine}");
    let seen = b.published("routes").await.unwrap().unwrap();
    assert_eq!((seen.version, seen.term, seen.body.as_str()), (2, term, "[1,2]"), "{engine}");
    b.request_work("app", "8").await.unwrap();
    a.release_lease("a", term).await.unwrap();
    let term_b = b.acquire_lease("b", "http://b:7878", Duration::from_secs(30)).await.unwrap().unwrap();
    let refused = leader.publish("routes", "[stale]").await.unwrap_err();
    assert!(is_fenced(&refused), "{engine}: {refused}");
    assert!(leader.take_work().await.is_err_and(|e| is_fenced(&e)), "{engine}: the old leader takes no work");
    assert_eq!(b.fenced("b", term_b).take_work().await.unwrap(), [item("app", "8")], "{engine}: left for the new one");
    assert_eq!(b.fenced("b", term_b).publish("routes", "[3]").await.unwrap(), 3, "{engine}");
    assert_eq!(a.published("routes").await.unwrap().unwrap().body, "[3]", "{engine}");
    b.release_lease("b", term_b).await.unwrap();
}

#[tokio::test]
async fn ingress_nodes_join_once_report_alongside_servers_and_can_be_removed() {
    common::with_two_handles_on_each_engine(ingress_nodes).await;
}

async fn ingress_nodes((a, b): (Store, Store)) {
    let engine = a.engine();
    a.bootstrap("admin token", "admin password").await.unwrap();
    let admin = a.users().await.unwrap()[0].id;
    a.create_join_token("token", 2, 9_999_999_999_999, admin, "ingress").await.unwrap();
    // A host's token joins no ingress node (nodes receive the certificates' keys), nor the reverse.
    a.create_join_token("host token", 1, 9_999_999_999_999, admin, "host").await.unwrap();
    let wrong = a.join_ingress_node("host token", "edge-0", "credential 0").await.unwrap_err();
    assert!(matches!(wrong, berth_store::JoinError::InvalidToken), "{engine}: {wrong}");
    let capacity = berth_wire::agent::HostCapacity { cpu_millis: 1000, memory_mb: 1024 };
    let labels = Default::default();
    let wrong = a.join_host("token", "h9", "10.0.0.9", &labels, &capacity, "host credential").await.unwrap_err();
    assert!(matches!(wrong, berth_store::JoinError::InvalidToken), "{engine}: {wrong}");

    // Joined with a join token's use, under a name no other node has.
    b.join_ingress_node("token", "edge-1", "credential 1").await.unwrap();
    let taken = a.join_ingress_node("token", "edge-1", "credential 2").await.unwrap_err();
    assert!(matches!(taken, berth_store::JoinError::IngressNodeTaken(_)), "{engine}: {taken}");
    // The refused join spent no use: one is left.
    a.join_ingress_node("token", "edge-2", "credential 2").await.unwrap();
    let used_up = a.join_ingress_node("token", "edge-3", "credential 3").await.unwrap_err();
    assert!(matches!(used_up, berth_store::JoinError::InvalidToken), "{engine}: {used_up}");
    assert_eq!(a.ingress_node_by_credential("credential 1").await.unwrap().as_deref(), Some("edge-1"), "{engine}");
    assert_eq!(a.ingress_node_by_credential("credential 3").await.unwrap(), None, "{engine}");
    assert_eq!(a.ingress_nodes().await.unwrap(), ["edge-1", "edge-2"], "{engine}");

    // Its reports: a row beside the servers', kind `ingress`, the applied version as reported
    // (lower too, after a restart from an older saved table).
    a.instance_alive(&instance("a")).await.unwrap();
    b.ingress_node_alive("edge-1", "0.1.0", "10.0.0.9:80", 1_000, 7).await.unwrap();
    b.ingress_node_alive("edge-1", "0.1.0", "10.0.0.9:80", 2_000, 5).await.unwrap();
    let rows = a.instances().await.unwrap();
    let kinds: Vec<(&str, &str, i64)> =
        rows.iter().map(|r| (r.id.as_str(), r.kind.as_str(), r.routes_applied)).collect();
    assert_eq!(kinds, [("a", "server", 0), ("ingress/edge-1", "ingress", 5)], "{engine}");
    assert_eq!(rows[1].started_at, 2_000, "{engine}");

    // Removed: the credential no longer works and the row is gone.
    assert!(a.remove_ingress_node("edge-1").await.unwrap(), "{engine}");
    assert!(!a.remove_ingress_node("edge-1").await.unwrap(), "{engine}");
    assert_eq!(b.ingress_node_by_credential("credential 1").await.unwrap(), None, "{engine}");
    assert_eq!(a.instances().await.unwrap().len(), 1, "{engine}");
}
