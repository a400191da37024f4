//! The release protocol: traffic moves between releases with zero failed requests.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_tests::{Load, get};
use serde_json::json;

use crate::{host, serving_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_replicas_serve_and_releases_under_load_fail_no_request() -> anyhow::Result<()> {
    let (fixture, server) = serving_app("web").await?;
    let api = server.api();

    // Both replicas answer through the ingress (the reply names the container's hostname).
    let mut hostnames = BTreeSet::new();
    for _ in 0..20 {
        let (status, body) = get(server.ingress, &host("web"), "/").await?;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("hello from v1 "), "{body}");
        hostnames.insert(body.trim().rsplit(' ').next().unwrap_or_default().to_string());
    }
    assert_eq!(hostnames.len(), 2, "both replicas should serve: {hostnames:?}");

    // Release v2 while 6 clients send requests continuously for at least 10 s.
    let load = Load::start(server.ingress, &host("web"), "/", 6, true);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let release = api.deploy("web", json!({ "image": fixture.image_v2 })).await?;
    let info = api.wait_serving("web", release).await?;
    let switched = Instant::now();
    let phases: Vec<&str> = info.events.iter().map(|e| e.phase.as_str()).collect();
    for phase in ["starting", "waiting_ready", "shifting_traffic", "draining", "stopping_old", "done"] {
        assert!(phases.contains(&phase), "release events lack {phase}: {phases:?}");
    }
    let remaining = Duration::from_secs(10).saturating_sub(started.elapsed()).max(Duration::from_secs(2));
    tokio::time::sleep(remaining).await;
    let report = load.stop().await;
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert!(report.requests > 100, "the load should be continuous, sent {}", report.requests);
    assert_eq!(report.failures, Vec::<String>::new(), "{} failed of {}", report.failures.len(), report.requests);
    let v2_after: Vec<&String> = report.bodies.iter().filter(|(at, _)| *at > switched).map(|(_, body)| body).collect();
    assert!(!v2_after.is_empty());
    assert!(v2_after.iter().all(|b| b.starts_with("hello from v2 ")), "only v2 may answer after the release is done");
    assert!(report.bodies.iter().any(|(_, b)| b.starts_with("hello from v1 ")), "v1 served before the release");

    // Only v2 answers afterwards; exactly the 2 new containers run.
    for _ in 0..10 {
        let (_, body) = get(server.ingress, &host("web"), "/").await?;
        assert!(body.starts_with("hello from v2 "), "{body}");
    }
    assert_eq!(fixture.containers("web")?.len(), 2);

    // Roll back under load: release 3 carries release 1's spec, again with no failed request.
    let load = Load::start(server.ingress, &host("web"), "/", 4, false);
    let rollback = api.rollback("web", None).await?;
    assert_eq!(rollback, 3);
    let info = api.wait_serving("web", rollback).await?;
    assert_eq!(info.rollback_of, Some(1));
    assert_eq!(info.spec.image, fixture.image_v1);
    let report = load.stop().await;
    assert_eq!(
        report.failures,
        Vec::<String>::new(),
        "rollback: {} failed of {}",
        report.failures.len(),
        report.requests
    );
    let (_, body) = get(server.ingress, &host("web"), "/").await?;
    assert!(body.starts_with("hello from v1 "), "{body}");

    // Scale and config-only changes go through the same protocol.
    let load = Load::start(server.ingress, &host("web"), "/", 4, false);
    let scaled = api.scale("web", 3).await?;
    api.wait_serving("web", scaled).await?;
    let config = api.deploy("web", json!({ "env": { "GREETING": "hi" } })).await?;
    api.wait_serving("web", config).await?;
    let report = load.stop().await;
    assert_eq!(
        report.failures,
        Vec::<String>::new(),
        "scale/config: {} failed of {}",
        report.failures.len(),
        report.requests
    );
    let detail = api.show("web").await?;
    assert_eq!(detail.replicas.len(), 3);
    assert!(detail.replicas.iter().all(|r| r.ready && r.release == config));
    assert_eq!(detail.summary.replicas_ready, 3);
    assert_eq!(fixture.containers("web")?.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_one_app_are_serialised_in_order() -> anyhow::Result<()> {
    let (fixture, server) = serving_app("queue").await?;
    let api = server.api();
    let a = api.deploy("queue", json!({ "image": fixture.image_v2 })).await?;
    let b = api.deploy("queue", json!({ "env": { "STEP": "b" } })).await?;
    let c = api.scale("queue", 1).await?;
    assert_eq!((a, b, c), (2, 3, 4));
    let last = api.wait_serving("queue", c).await?;
    // Each release started only after the one before it finished.
    let mut previous_done = 0;
    for number in [a, b, c] {
        let release = api.wait_release("queue", number).await?;
        let started = release.events.iter().find(|e| e.phase == "scheduling").expect("scheduled").at;
        let ended = release.events.iter().find(|e| e.phase == "done" || e.phase == "failed").expect("finished").at;
        assert!(started >= previous_done, "release {number} started before the previous one finished");
        previous_done = ended;
    }
    // The last release carries every change made before it.
    assert_eq!(last.spec.image, fixture.image_v2);
    assert_eq!(last.spec.env.get("STEP").map(String::as_str), Some("b"));
    assert_eq!(last.spec.replicas, 1);
    assert_eq!(fixture.containers("queue")?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_nothing_behind() -> anyhow::Result<()> {
    let (fixture, server) = serving_app("gone").await?;
    let api = server.api();
    assert_eq!(fixture.containers("gone")?.len(), 2);
    api.delete("gone").await?;
    assert_eq!(fixture.all_containers()?, Vec::<String>::new(), "no container may remain, running or stopped");
    let (status, _) = api.call(reqwest::Method::GET, "/gone", None).await?;
    assert_eq!(status, 404);
    let (status, _) = get(server.ingress, &host("gone"), "/").await?;
    assert_eq!(status, 404, "the route is gone");
    // The name is free again.
    let release = api
        .create_app(json!({ "name": "gone", "image": fixture.image_v1, "port": 8080, "health_path": "/up" }))
        .await?;
    assert_eq!(release, 1);
    api.wait_serving("gone", release).await?;
    Ok(())
}

/// Open WebSockets and server-sent event streams are not cut when a release moves traffic: the old
/// replica keeps them until they end or the drain timeout passes, and only then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_websockets_and_event_streams_survive_a_release_until_the_drain_timeout() -> anyhow::Result<()> {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let fixture = berth_tests::Fixture::new()?;
    let server = fixture.start_server_with(&["--drain-timeout", "20"]).await?;
    let api = server.api();
    let first = api
        .create_app(json!({ "name": "live", "image": fixture.image_v1, "port": 8080, "health_path": "/up" }))
        .await?;
    api.wait_serving("live", first).await?;

    // A WebSocket through the ingress (HTTP/1.1 upgrade), answered by v1.
    let tcp = tokio::net::TcpStream::connect(server.ingress).await?;
    let (mut socket, _) = tokio_tungstenite::client_async("ws://live.localhost/socket", tcp).await?;
    let exchange = async |socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, text: &str| {
        socket.send(Message::text(text)).await?;
        let reply = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the WebSocket closed"))??;
        anyhow::Ok(reply.into_text()?.to_string())
    };
    assert_eq!(exchange(&mut socket, "before").await?, "v1: before");
    // An event stream, also from v1.
    let mut events = reqwest::Client::new()
        .get(format!("http://{}/events", server.ingress))
        .header("host", host("live"))
        .send()
        .await?;
    assert_eq!(events.status(), 200);
    let next_event = async |events: &mut reqwest::Response| {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk()).await??;
        let chunk = chunk.ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
        anyhow::Ok(String::from_utf8_lossy(&chunk).into_owned())
    };
    assert!(next_event(&mut events).await?.starts_with("data: v1 "));

    // Release v2; new requests go to v2 while both streams stay with v1.
    let release = api.deploy("live", json!({ "image": fixture.image_v2 })).await?;
    let ingress = server.ingress;
    berth_tests::eventually("v2 serving new requests", Duration::from_secs(60), || async move {
        let (_, body) = get(ingress, &host("live"), "/").await.ok()?;
        body.starts_with("hello from v2 ").then_some(())
    })
    .await?;
    let switched = std::time::SystemTime::now();
    assert_eq!(exchange(&mut socket, "after the switch").await?, "v1: after the switch");
    // Events written a second after the switch still come from v1 (not ones buffered before it):
    // each carries the time v1 wrote it.
    let wanted = switched + Duration::from_secs(1);
    loop {
        let text = next_event(&mut events).await?;
        let mut latest = std::time::UNIX_EPOCH;
        for line in text.lines().filter(|l| l.starts_with("data: ")) {
            assert!(line.starts_with("data: v1 "), "{line}");
            let millis: u64 = line.rsplit(' ').next().unwrap_or_default().parse()?;
            latest = latest.max(std::time::UNIX_EPOCH + Duration::from_millis(millis));
        }
        if latest >= wanted {
            break;
        }
    }
    let draining = berth_tests::eventually("the release draining", Duration::from_secs(10), || async {
        let info = api.release("live", release).await.ok()?;
        info.events.iter().any(|e| e.phase == "draining").then_some(info)
    })
    .await?;
    assert!(
        !draining.events.iter().any(|e| e.phase == "stopping_old"),
        "the old replica must not stop while its streams are open: {:?}",
        draining.events
    );

    // After the drain timeout the old replica stops and both streams end; the release is done.
    let info = api.wait_serving("live", release).await?;
    assert!(
        info.events.iter().any(|e| e.message.contains("drain timeout: 2 request(s) still in flight")),
        "the drain waited for the WebSocket and the event stream: {:?}",
        info.events
    );
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the WebSocket to the stopped replica should close");
    let ended =
        tokio::time::timeout(Duration::from_secs(30), async { while let Ok(Some(_)) = events.chunk().await {} }).await;
    assert!(ended.is_ok(), "the event stream from the stopped replica should end");
    // New connections reach v2.
    let tcp = tokio::net::TcpStream::connect(server.ingress).await?;
    let (mut socket, _) = tokio_tungstenite::client_async("ws://live.localhost/socket", tcp).await?;
    assert_eq!(exchange(&mut socket, "new").await?, "v2: new");
    Ok(())
}
