//! The REST API's contract: authentication, validation naming the field, stable error codes,
//! and the CLI on top of it.

use berth_tests::{Fixture, get};
use reqwest::Method;
use serde_json::json;

use crate::{host, serving_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_authenticated_and_validated() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let api = server.api();

    let token_file = server.data_dir.join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token_file)?.permissions());
    assert_eq!(mode & 0o777, 0o600);

    let (status, body) = api.with_token("berth_wrong").call(Method::GET, "", None).await?;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = api.with_token("").call(Method::GET, "", None).await?;
    assert_eq!(status, 401);
    let (status, body) = api.call(Method::GET, "/api/v1/teams/nope/apps", None).await?;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    let good = json!({ "name": "ok", "image": fixture.image_v1, "port": 8080 });
    for (field, patch) in [
        ("name", json!({ "name": "Bad_Name" })),
        ("image", json!({ "image": "has space" })),
        ("port", json!({ "port": 0 })),
        ("replicas", json!({ "replicas": 5000 })),
        ("health_path", json!({ "health_path": "up" })),
        ("env", json!({ "env": { "9X": "1" } })),
    ] {
        let mut body = good.clone();
        body.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        let (status, error) = api.call(Method::POST, "", Some(body)).await?;
        assert_eq!(status, 422, "{field}: {error}");
        assert_eq!(error["code"], "validation");
        assert_eq!(error["field"], field, "{error}");
    }
    // The image may be left out (the app is then built from git); the port may not.
    let (status, error) = api.call(Method::POST, "", Some(json!({ "name": "x" }))).await?;
    assert_eq!((status, error["field"].as_str()), (422, Some("port")), "{error}");
    // Nothing was created by the bad requests.
    let (_, list) = api.call(Method::GET, "", None).await?;
    assert_eq!(list, json!([]));

    let release = api.create_app(good.clone()).await?;
    let (status, error) = api.call(Method::POST, "", Some(good)).await?;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")));
    api.wait_serving("ok", release).await?;
    let (status, error) = api.call(Method::POST, "/ok/rollback", Some(json!({ "to": 7 }))).await?;
    assert_eq!((status, error["field"].as_str()), (422, Some("to")), "{error}");
    let (status, _) = api.call(Method::POST, "/missing/deploy", Some(json!({}))).await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_whole_lifecycle() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let text = |output: std::process::Output| {
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let out = text(server.cli(&[
        "apps",
        "create",
        "cli",
        "--image",
        &fixture.image_v1,
        "--port",
        "8080",
        "--replicas",
        "2",
        "--health-path",
        "/up",
        "--env",
        "A=1",
    ])?);
    assert!(out.contains("release 1 is live"), "{out}");
    let out = text(server.cli(&["apps", "list"])?);
    assert!(out.contains("cli") && out.contains("2/2"), "{out}");
    let listed: serde_json::Value = serde_json::from_str(&text(server.cli(&["apps", "list", "--json"])?))?;
    assert_eq!(listed[0]["name"], "cli");
    let out = text(server.cli(&["deploy", "cli", "--image", &fixture.image_v2])?);
    for phase in ["waiting_ready", "shifting_traffic", "draining", "done"] {
        assert!(out.contains(phase), "progress lacks {phase}: {out}");
    }
    let (_, body) = get(server.ingress, &host("cli"), "/").await?;
    assert!(body.starts_with("hello from v2"), "{body}");
    let out = text(server.cli(&["rollback", "cli", "--to", "1"])?);
    assert!(out.contains("release 3 is live"), "{out}");
    let shown: serde_json::Value = serde_json::from_str(&text(server.cli(&["apps", "show", "cli", "--json"])?))?;
    assert_eq!(shown["serving_release"], 3);
    assert_eq!(shown["releases"][0]["rollback_of"], 1);
    let out = text(server.cli(&["scale", "cli", "1"])?);
    assert!(out.contains("release 4 is live"), "{out}");
    let out = text(server.cli(&["logs", "cli", "--tail", "5"])?);
    assert!(out.contains("listening on 8080"), "{out}");
    text(server.cli(&["apps", "delete", "cli"])?);
    assert!(fixture.all_containers()?.is_empty());
    let output = server.cli(&["apps", "show", "cli"])?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not found"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_forwards_headers_upgrades_and_explains_errors() -> anyhow::Result<()> {
    let (_fixture, server) = serving_app("edge").await?;
    let (status, body) = get(server.ingress, &host("edge"), "/forwarded").await?;
    assert_eq!((status, body.trim()), (200, "127.0.0.1"));
    let (status, body) = get(server.ingress, "nothing.localhost", "/").await?;
    assert_eq!(status, 404);
    assert!(body.contains("no app is served at nothing.localhost"), "{body}");

    // An upgraded connection is spliced through both ways.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.ingress).await?;
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: edge.localhost\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream.write_all(b"ping through berth").await?;
    let mut echoed = [0u8; 18];
    stream.read_exact(&mut echoed).await?;
    assert_eq!(&echoed, b"ping through berth");

    // No ready replica: 503 with its own page.
    let api = server.api();
    let release = api.scale("edge", 0).await?;
    api.wait_serving("edge", release).await?;
    let (status, body) = get(server.ingress, &host("edge"), "/").await?;
    assert_eq!(status, 503);
    assert!(body.contains("no ready replica"), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_options_reach_docker() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let api = server.api();
    let shared = fixture.dir.join("shared");
    std::fs::create_dir_all(&shared)?;
    let release = api
        .create_app(json!({
            "name": "mounted", "image": fixture.image_v1, "port": 8080, "health_path": "/up",
            "privileges": { "mounts": [{ "source": shared.display().to_string(), "target": "/shared", "read_only": true }], "cap_add": ["NET_ADMIN"] }
        }))
        .await?;
    api.wait_serving("mounted", release).await?;
    let container = fixture.containers("mounted")?.pop().expect("one container");
    let output = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .HostConfig.Binds}} {{json .HostConfig.CapAdd}}", &container])
        .output()?;
    let inspected = String::from_utf8_lossy(&output.stdout);
    assert!(inspected.contains(&format!("{}:/shared:ro", shared.display())), "{inspected}");
    assert!(inspected.contains("NET_ADMIN"), "{inspected}");
    Ok(())
}
