//! Tenancy on the real engine: each team's containers on a network of its own, secret variables
//! that reach the container and nowhere else, and the default limits every container gets.

use berth_tests::{Fixture, eventually, get};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

fn docker_inspect(container: &str, format: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new("docker").args(["inspect", "--format", format, container]).output()?;
    anyhow::ensure!(output.status.success(), "docker inspect: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_are_isolated_and_secrets_reach_only_their_container() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let api = server.api();
    let app = |name: &str| json!({ "name": name, "image": fixture.image_v1, "port": 8080, "health_path": "/up" });

    // web (with a secret) and peer in team main; theirs in team other.
    let mut web = app("web");
    web["secrets"] = json!({ "DB_PASSWORD": "hunter2-e2e" });
    let release = api.create_app(web).await?;
    api.wait_serving("web", release).await?;
    let release = api.create_app(app("peer")).await?;
    api.wait_serving("peer", release).await?;
    let (status, body) = api.call(Method::POST, "/api/v1/teams", Some(json!({ "name": "other" }))).await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.call(Method::POST, "/api/v1/teams/other/apps", Some(app("theirs"))).await?;
    assert_eq!(status, 201, "{body}");
    let endpoint = |detail: &Value| detail["replicas"][0]["endpoint"].as_str().map(str::to_string);
    let theirs = eventually("theirs to serve", Duration::from_secs(60), || async {
        let (_, detail) = api.call(Method::GET, "/api/v1/teams/other/apps/theirs", None).await.ok()?;
        (detail["serving_release"] == 1).then(|| endpoint(&detail)).flatten()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nserver log:\n{}", server.log()))?;
    let peer = endpoint(&serde_json::to_value(api.show("peer").await?)?).expect("peer's endpoint");

    // The ingress reaches every team's containers; a container reaches its own team's only.
    assert_eq!(get(server.ingress, "theirs.localhost", "/up").await?.0, 200);
    let connect = |from: &'static str, to: &str| {
        let path = format!("/connect?to={to}");
        async move {
            get(server.ingress, &format!("{from}.localhost"), &path).await.map(|(_, body)| body.trim().to_string())
        }
    };
    assert_eq!(connect("web", &peer).await?, "connected", "same team");
    let across = connect("web", &theirs).await?;
    assert!(across.starts_with("failed"), "main reached other's container: {across}");
    let back = connect("theirs", &peer).await?;
    assert!(back.starts_with("failed"), "other reached main's container: {back}");
    let web_container = fixture.containers("web")?.pop().expect("web runs");
    let network = format!("berth-main-{}", fixture.host_name());
    let aliases = docker_inspect(
        &web_container,
        &format!("{{{{json (index .NetworkSettings.Networks \"{network}\").Aliases}}}}"),
    )?;
    assert!(aliases.contains("\"web\""), "web is known by its app name on {network}: {aliases}");

    // The secret is in the container's environment, and neither in the API's answers nor in
    // the store's files.
    assert_eq!(get(server.ingress, "web.localhost", "/env?name=DB_PASSWORD").await?.1.trim(), "hunter2-e2e");
    let (_, detail) = api.call(Method::GET, "/web", None).await?;
    assert_eq!(detail["releases"][0]["spec"]["secrets"], json!({ "DB_PASSWORD": "" }), "{detail}");
    assert!(!detail.to_string().contains("hunter2-e2e"));
    let shown = server.cli(&["apps", "show", "web"])?;
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(shown.contains("  DB_PASSWORD (secret, set)") && !shown.contains("hunter2-e2e"), "{shown}");
    // On PostgreSQL, every row it holds, copied by `berth admin migrate-store` into a SQLite file.
    let mut files = server.data_dir.clone();
    if let Some(url) = &fixture.database {
        files = fixture.dir.join("rows");
        let target = format!("sqlite:{}", files.join("berth.db").display());
        std::fs::create_dir_all(&files)?;
        let copied = std::process::Command::new(berth_tests::berth_binary()?)
            .args(["admin", "migrate-store", "--from", url, "--to", &target])
            .output()?;
        assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));
        assert!(String::from_utf8_lossy(&copied.stdout).contains("audit_log"), "the copy lists its tables");
    }
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&files)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("berth.db")) {
            stored.extend(std::fs::read(&path)?);
        }
    }
    assert!(!stored.is_empty() && !contains(&stored, "hunter2-e2e"), "the store holds the secret in plain");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(server.data_dir.join("secrets.key"))?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A key rotation from the CLI; a release after it still gets the value.
    let rotated = server.cli(&["secrets", "rotate-key"])?;
    let said = String::from_utf8_lossy(&rotated.stdout).to_string();
    assert!(
        rotated.status.success() && said.contains("retired: k1"),
        "{said}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let release = api.deploy("web", json!({ "env": { "AFTER": "rotation" } })).await?;
    api.wait_serving("web", release).await?;
    assert_eq!(get(server.ingress, "web.localhost", "/env?name=DB_PASSWORD").await?.1.trim(), "hunter2-e2e");

    // Apps created without limits run with the instance's defaults: a quarter core, 512 MiB.
    let web_container = fixture.containers("web")?.pop().expect("web runs");
    let limits = docker_inspect(&web_container, "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}")?;
    assert_eq!(limits, format!("{} {}", 250_000_000u64, 512u64 << 20));
    Ok(())
}
