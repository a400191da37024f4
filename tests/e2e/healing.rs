//! Healing: crashed containers are replaced, and a restarted server adopts what runs.

use std::time::Duration;

use berth_tests::{Load, eventually, get};
use serde_json::json;

use crate::{host, serving_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_replaced_and_the_app_keeps_serving() -> anyhow::Result<()> {
    let (fixture, server) = serving_app("heal").await?;
    let api = server.api();
    let before = fixture.containers("heal")?;
    assert_eq!(before.len(), 2);

    let load = Load::start(server.ingress, &host("heal"), "/", 4, false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = before[0].clone();
    fixture.kill_container(&victim)?;
    let detail = eventually("the killed replica to be ready again", Duration::from_secs(10), || async {
        let detail = api.show("heal").await.ok()?;
        let restarted = detail.replicas.iter().any(|r| r.restarts >= 1);
        (restarted && detail.replicas.iter().all(|r| r.ready)).then_some(detail)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;

    assert_eq!(detail.replicas.len(), 2);
    assert_eq!(fixture.containers("heal")?.len(), 2, "the replica is back, with no extra container");
    assert!(report.requests > 50);
    // Requests on the dying container are replayed (GET, no body) and new ones go elsewhere.
    assert_eq!(report.failures, Vec::<String>::new(), "{} failed of {}", report.failures.len(), report.requests);
    let (status, _) = get(server.ingress, &host("heal"), "/").await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_adopts_running_containers() -> anyhow::Result<()> {
    let (fixture, mut server) = serving_app("adopt").await?;
    let before = fixture.containers("adopt")?;
    assert_eq!(before.len(), 2);
    // A container carrying this host's labels that the store does not want (as if left over from
    // a deleted release): the restarted server must remove it.
    let stray = fixture.run_stray_container("adopt")?;

    server.restart(&fixture).await?;
    let api = server.api();
    let detail = eventually("adopted replicas to be ready", Duration::from_secs(10), || async {
        let detail = api.show("adopt").await.ok()?;
        detail.replicas.iter().all(|r| r.ready).then_some(detail)
    })
    .await?;
    assert_eq!(detail.replicas.len(), 2);
    eventually("the stray container to be removed", Duration::from_secs(20), || async {
        (!fixture.all_containers().ok()?.iter().any(|id| stray.starts_with(id.as_str()))).then_some(())
    })
    .await?;
    assert_eq!(fixture.containers("adopt")?, before, "the same containers run: none restarted, none duplicated");
    let mut adopted: Vec<String> = detail.replicas.iter().filter_map(|r| r.container_id.clone()).collect();
    adopted.sort();
    assert_eq!(adopted, before);
    let (status, body) = get(server.ingress, &host("adopt"), "/").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from v1 "));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_interrupted_by_a_server_crash_resumes_after_restart() -> anyhow::Result<()> {
    let (fixture, mut server) = serving_app("resume").await?;
    let api = server.api();
    let release = api.deploy("resume", json!({ "image": fixture.image_v2 })).await?;
    eventually("the new replicas to be placed", Duration::from_secs(10), || async {
        let info = api.release("resume", release).await.ok()?;
        info.events.iter().any(|e| e.phase == "starting").then_some(())
    })
    .await?;
    server.crash().await?;
    server.start_again(&fixture).await?;
    let api = server.api();
    api.wait_serving("resume", release).await?;
    // Nothing orphaned: exactly the new release's replicas run, and only v2 answers.
    let detail = api.show("resume").await?;
    assert_eq!(detail.replicas.len(), 2);
    assert!(detail.replicas.iter().all(|r| r.release == release));
    assert_eq!(fixture.containers("resume")?.len(), 2);
    for _ in 0..6 {
        let (_, body) = get(server.ingress, &host("resume"), "/").await?;
        assert!(body.starts_with("hello from v2 "), "{body}");
    }
    Ok(())
}
