//! Releases that cannot go out fail with a clear reason while the previous release keeps serving.

use berth_tests::{Load, get};
use serde_json::json;

use crate::{host, serving_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_cannot_start_fails_and_v1_keeps_serving() -> anyhow::Result<()> {
    let (fixture, server) = serving_app("sturdy").await?;
    let api = server.api();
    let v1_containers = fixture.containers("sturdy")?;
    let load = Load::start(server.ingress, &host("sturdy"), "/", 2, false);

    // An image that exists nowhere.
    let missing =
        api.deploy("sturdy", json!({ "image": format!("berth-test-{}/does-not-exist:v9", fixture.id) })).await?;
    let release = api.wait_release("sturdy", missing).await?;
    assert_eq!(release.state, berth_wire::api::ReleaseState::Failed);
    let reason = release.message.unwrap_or_default();
    assert!(reason.contains("does-not-exist:v9") && reason.contains("pulling it failed"), "{reason}");

    // An image that runs but never passes its health check.
    let unhealthy = api.deploy("sturdy", json!({ "image": fixture.image_v2, "env": { "FAIL_HEALTH": "1" } })).await?;
    let release = api.wait_release("sturdy", unhealthy).await?;
    assert_eq!(release.state, berth_wire::api::ReleaseState::Failed);
    let reason = release.message.unwrap_or_default();
    assert!(reason.contains("not ready") && reason.contains("500"), "{reason}");

    // An image that crashes at start.
    let crashing = api
        .deploy(
            "sturdy",
            json!({ "image": fixture.image_v2, "unset_env": ["FAIL_HEALTH"], "env": { "CRASH_AT_START": "1" } }),
        )
        .await?;
    let release = api.wait_release("sturdy", crashing).await?;
    assert_eq!(release.state, berth_wire::api::ReleaseState::Failed);
    let reason = release.message.unwrap_or_default();
    assert!(reason.contains("crash") && reason.contains("code 3"), "{reason}");

    let report = load.stop().await;
    assert_eq!(report.failures, Vec::<String>::new(), "{} failed of {}", report.failures.len(), report.requests);
    let (_, body) = get(server.ingress, &host("sturdy"), "/").await?;
    assert!(body.starts_with("hello from v1 "), "{body}");
    assert_eq!(fixture.containers("sturdy")?, v1_containers, "v1's containers were never touched");
    let detail = api.show("sturdy").await?;
    assert_eq!(detail.summary.serving_release, Some(1));

    // The CLI exits non-zero for a failed release and says why.
    let output = server.cli(&["deploy", "sturdy", "--image", &format!("berth-test-{}/nope:v1", fixture.id)])?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("failed"), "{output:?}");
    Ok(())
}
