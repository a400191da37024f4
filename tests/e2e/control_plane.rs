//! Several control-plane instances on one PostgreSQL database: one leads, the others serve the API
//! and their ingress from what the leader publishes, and take over when it dies.

use std::time::{Duration, Instant};

use berth_tests::{Fixture, Load, Server, eventually, get};
use serde_json::{Value, json};

use crate::host;

/// Two instances on one PostgreSQL database and one data directory (its secret key shared),
/// both on this machine's Docker engine as the same host (only the leader's agent acts on it),
/// each with its `extra` arguments: the first started leads. The database is the fixture's when
/// the suite runs on PostgreSQL (the fixture passes it already), a fresh one otherwise; `None`,
/// with a line saying so, when PostgreSQL is not installed.
pub(crate) async fn two_instances(
    fixture: &Fixture,
    test: &str,
    extra: [&[&str]; 2],
) -> anyhow::Result<Option<(Server, Server)>> {
    let database = match &fixture.database {
        Some(_) => Vec::new(),
        None => match berth_testdb::fresh_database()? {
            Some(url) => vec!["--database".to_string(), url],
            None => {
                eprintln!("SKIPPING {test}: PostgreSQL is not installed (apt-get install postgresql)");
                return Ok(None);
            }
        },
    };
    let mut servers = Vec::new();
    for extra in extra {
        let args: Vec<&str> = database.iter().map(String::as_str).chain(extra.iter().copied()).collect();
        servers.push(fixture.start_server_with(&args).await?);
    }
    let follower = servers.pop().expect("BUG: two were started");
    Ok(servers.pop().map(|leader| (leader, follower)))
}

/// The status as instance `api` answers it.
pub(crate) async fn status(api: &berth_tests::Api) -> anyhow::Result<Value> {
    let (code, body) = api.call(reqwest::Method::GET, "/api/v1/status", None).await?;
    anyhow::ensure!(code == 200, "GET /api/v1/status answered {code}: {body}");
    Ok(body)
}

/// The id of the instance whose API is at `address`, as `status` lists it.
pub(crate) fn instance_at(status: &Value, address: std::net::SocketAddr) -> Option<String> {
    let url = format!("http://{address}");
    status["instances"].as_array()?.iter().find(|i| i["address"] == url.as_str())?["id"].as_str().map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_and_takes_over_a_release_when_the_leader_is_killed() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let Some((mut leader, follower)) = two_instances(&fixture, "the failover test", [&[], &[]]).await? else {
        return Ok(());
    };
    let (leader_api, api) = (leader.api(), follower.api());

    let seen = status(&api).await?;
    let leader_id = instance_at(&seen, leader.api).expect("the leader is listed");
    let follower_id = instance_at(&seen, follower.api).expect("the follower is listed");
    assert_eq!(seen["engine"], "postgres");
    assert_eq!(seen["leader"], leader_id.as_str(), "the first instance leads: {seen}");
    assert_eq!(seen["answered_by"], follower_id.as_str());

    // Asked of the follower, done by the leader.
    let release = api
        .create_app(
            json!({ "name": "ha", "image": fixture.image_v1, "port": 8080, "replicas": 2, "health_path": "/up" }),
        )
        .await?;
    api.wait_serving("ha", release).await?;
    // Both ingresses route the app: the follower's from the table the leader published, and it
    // says which version it applied.
    for ingress in [leader.ingress, follower.ingress] {
        eventually("both ingresses to serve the app", Duration::from_secs(10), || async {
            let (code, body) = get(ingress, &host("ha"), "/").await.ok()?;
            (code == 200 && body.starts_with("hello from v1 ")).then_some(())
        })
        .await?;
    }
    eventually("the follower to confirm the route table", Duration::from_secs(10), || async {
        let seen = status(&leader_api).await.ok()?;
        let follower = seen["instances"].as_array()?.iter().find(|i| i["id"] == follower_id.as_str())?.clone();
        (follower["routes_applied"] == seen["routes_version"]).then_some(())
    })
    .await?;
    // Reads on the follower see the agents' reports the leader publishes (once a second at most).
    eventually("the follower to show the replicas ready", Duration::from_secs(5), || async {
        let detail = api.show("ha").await.ok()?;
        (detail.replicas.len() == 2 && detail.replicas.iter().all(|r| r.ready)).then_some(())
    })
    .await?;

    // What needs the leader's own state answers 503 on the follower, naming the leader.
    let refused = reqwest::Client::new()
        .get(format!("http://{}/api/v1/teams/main/apps/ha/domains", follower.api))
        .bearer_auth(&follower.token)
        .send()
        .await?;
    assert_eq!(refused.status(), 503);
    let named = refused.headers().get(berth_wire::LEADER_HEADER).and_then(|v| v.to_str().ok()).map(String::from);
    assert_eq!(named, Some(format!("http://{}", leader.api)));
    let body: Value = refused.json().await?;
    assert_eq!(body["code"], "not_leader", "{body}");

    // A release asked of the follower; the leader is killed while it runs, under load through
    // the follower's ingress.
    let load = Load::start(follower.ingress, &host("ha"), "/", 4, false);
    let release = api.deploy("ha", json!({ "image": fixture.image_v2 })).await?;
    eventually("the new replicas to be placed", Duration::from_secs(10), || async {
        let info = api.release("ha", release).await.ok()?;
        info.events.iter().any(|e| e.phase == "starting").then_some(())
    })
    .await?;
    leader.crash().await?;
    let killed = Instant::now();
    let seen = eventually("the follower to take over", Duration::from_secs(15), || async {
        let seen = status(&api).await.ok()?;
        (seen["leader"] == follower_id.as_str()).then_some(seen)
    })
    .await?;
    let takeover = killed.elapsed();
    eprintln!("failover: the follower leads {takeover:?} after the leader was killed (term {})", seen["term"]);
    assert!(seen["term"].as_i64() >= Some(2), "a new term: {seen}");
    api.wait_serving("ha", release).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;

    assert!(report.requests > 50, "{} requests", report.requests);
    assert!(
        report.failures.is_empty(),
        "{} failed of {}: {:?}\n{}",
        report.failures.len(),
        report.requests,
        &report.failures[..report.failures.len().min(5)],
        follower.log()
    );
    assert_eq!(fixture.containers("ha")?.len(), 2, "two replicas of the new release, none orphaned or doubled");
    let (code, body) = get(follower.ingress, &host("ha"), "/").await?;
    assert!(code == 200 && body.starts_with("hello from v2 "), "{code} {body}");
    let detail = api.show("ha").await?;
    assert!(detail.replicas.iter().all(|r| r.release == release && r.ready), "{detail:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_when_it_resumes() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let Some((mut leader, follower)) = two_instances(&fixture, "the paused-leader test", [&[], &[]]).await? else {
        return Ok(());
    };
    let api = follower.api();
    let follower_id = instance_at(&status(&api).await?, follower.api).expect("the follower is listed");
    let release = api
        .create_app(
            json!({ "name": "pause", "image": fixture.image_v1, "port": 8080, "replicas": 2, "health_path": "/up" }),
        )
        .await?;
    api.wait_serving("pause", release).await?;
    // An ingress node that asks the leader first, under load throughout.
    let token = crate::ingress_nodes::join_token(&api, 1).await?;
    let joined = [leader.api, follower.api];
    let edge = berth_tests::IngressNode::start(&fixture, "edge", &joined, &token, &["--drain-timeout", "10"]).await?;
    crate::ingress_nodes::serves(&edge, "pause", "v1").await?;
    let load = Load::start(edge.addr, &host("pause"), "/", 2, false);

    // The leader is paused in the middle of a release, for longer than its lease.
    let release = api.deploy("pause", json!({ "image": fixture.image_v2 })).await?;
    eventually("the new replicas to be placed", Duration::from_secs(10), || async {
        let info = api.release("pause", release).await.ok()?;
        info.events.iter().any(|e| e.phase == "starting").then_some(())
    })
    .await?;
    let pid = leader.pid().expect("the leader runs");
    signal(pid, "STOP")?;
    let resumed = async {
        eventually("the follower to take over", Duration::from_secs(15), || async {
            (status(&api).await.ok()?["leader"] == follower_id.as_str()).then_some(())
        })
        .await?;
        api.wait_serving("pause", release).await?;
        eventually("the new leader's ingress to serve v2", Duration::from_secs(10), || async {
            let (code, body) = get(follower.ingress, &host("pause"), "/").await.ok()?;
            (code == 200 && body.starts_with("hello from v2 ")).then_some(())
        })
        .await?;
        // The node turned from the paused instance to the new leader in time.
        crate::ingress_nodes::serves(&edge, "pause", "v2").await?;
        let report = load.stop().await;
        let log = || format!("{}\n--- the new leader's log:\n{}", edge.log(), follower.log());
        crate::ingress_nodes::assert_no_failures("through the ingress node", &report, log);
        let before = api.show("pause").await?;
        let events_before = api.release("pause", release).await?.events.len();

        // Resumed: its orchestrator carries on from where it was paused, and every write it tries
        // is refused; it steps down.
        signal(pid, "CONT")?;
        eventually("the old leader to step down", Duration::from_secs(10), || async {
            leader.log().contains("this instance no longer leads").then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let seen = status(&api).await?;
        assert_eq!(seen["leader"], follower_id.as_str(), "{seen}");
        let after = api.show("pause").await?;
        assert_eq!(after.releases.len(), before.releases.len(), "no release written by the old leader");
        assert_eq!(api.release("pause", release).await?.events.len(), events_before, "no event written by it");
        assert_eq!(after.summary.serving_release, Some(release));
        eventually("two replicas of v2 and no other container", Duration::from_secs(20), || async {
            let containers = fixture.containers("pause").ok()?;
            let detail = api.show("pause").await.ok()?;
            (containers.len() == 2 && detail.replicas.iter().all(|r| r.release == release && r.ready)).then_some(())
        })
        .await?;
        for ingress in [follower.ingress, leader.ingress] {
            eventually("both ingresses to serve v2", Duration::from_secs(10), || async {
                let (code, body) = get(ingress, &host("pause"), "/").await.ok()?;
                (code == 200 && body.starts_with("hello from v2 ")).then_some(())
            })
            .await?;
        }
        // Now a follower itself, the old leader's API deletes the app through the new leader.
        leader.api().delete("pause").await?;
        let (code, _) = api.call(reqwest::Method::GET, "/pause", None).await?;
        assert_eq!(code, 404, "the app is gone once the delete returns");
        assert!(fixture.containers("pause")?.is_empty(), "its containers are gone too");
        anyhow::Ok(())
    };
    let outcome = resumed.await;
    // Never leave a stopped process behind, whatever failed.
    let _ = signal(pid, "CONT");
    leader.stop().await?;
    outcome
}

fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_ingress_serves_the_certificates_uploaded_to_the_leader() -> anyhow::Result<()> {
    use berth_tests::pebble::{free_addr, test_certificate, tls_client, tls_connect};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fixture = Fixture::new()?;
    let (leader_https, follower_https) = (free_addr()?.to_string(), free_addr()?.to_string());
    let extra: [&[&str]; 2] = [&["--https-listen", &leader_https], &["--https-listen", &follower_https]];
    let Some((leader, follower)) = two_instances(&fixture, "the follower HTTPS test", extra).await? else {
        return Ok(());
    };
    let api = leader.api();
    let release = api.create_app(json!({ "name": "shop", "image": fixture.image_v1, "port": 8080 })).await?;
    api.wait_serving("shop", release).await?;
    let (chain, key, ca) = test_certificate(&["shop.localhost"])?;
    std::fs::write(fixture.dir.join("shop.pem"), chain)?;
    std::fs::write(fixture.dir.join("shop.key"), key)?;
    let (cert, key) = (fixture.dir.join("shop.pem"), fixture.dir.join("shop.key"));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let uploaded = leader.cli(&["certs", "add", "shop", "--cert", &cert, "--key", &key])?;
    assert!(uploaded.status.success(), "{}", String::from_utf8_lossy(&uploaded.stderr));

    // The follower's ingress takes the certificate up from the store (and its key from the shared
    // data directory), and serves the app over HTTPS with it.
    let address: std::net::SocketAddr = follower_https.parse()?;
    let answer = eventually("the follower to serve the certificate", Duration::from_secs(15), || async {
        let mut stream =
            tls_connect(address, "shop.localhost", tls_client(std::slice::from_ref(&ca), &[b"http/1.1"])).await.ok()?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: shop.localhost\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        answer.starts_with("HTTP/1.1 200").then_some(answer)
    })
    .await?;
    assert!(answer.contains("hello from v1"), "{answer}");
    // And its plain HTTP listener redirects the name to HTTPS, as the leader's does.
    let (code, _) = get(follower.ingress, "shop.localhost", "/").await?;
    assert_eq!(code, 308);
    Ok(())
}
