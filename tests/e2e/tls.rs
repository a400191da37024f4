//! HTTPS at the edge: certificates from a real ACME server (pebble) for custom domains, served by
//! SNI over HTTP/2 and HTTP/1.1, renewed before expiry, failures with the CA's reason; uploaded
//! certificates; redirects and HSTS; and testssl.sh finding nothing weak.

use std::time::Duration;

use anyhow::Context as _;
use berth_tests::Fixture;
use berth_tests::pebble::{BLOCKED, Pebble, free_addr, test_certificate, tls_client, tls_connect};
use berth_wire::edge::{CertState, DomainInfo};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DOMAIN: &str = "www.example.test";

async fn domain(api: &berth_tests::Api, app: &str, name: &str) -> anyhow::Result<DomainInfo> {
    let (_, body) = api.call(reqwest::Method::GET, &format!("/{app}/domains"), None).await?;
    let domains: Vec<DomainInfo> = serde_json::from_value(body)?;
    domains.into_iter().find(|d| d.name == name).with_context(|| format!("{name} is not listed"))
}

/// Retries `check` every 500 ms until it succeeds; after `timeout`, fails with its last error.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(error.context(format!("{what}: not within {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Sends a raw HTTP/1.1 request and returns the whole answer (status line, headers, body).
async fn raw(addr: std::net::SocketAddr, request: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut out)).await??;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acme_certificates_are_served_by_sni_renewed_and_failures_say_why() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let (ingress, https) = (free_addr()?, free_addr()?);
    // Certificates live 30 s, so renewal (at a third of the lifetime left) comes 20 s after issue.
    let pebble = Pebble::start(ingress.port(), https.port(), Duration::from_secs(30)).await?;
    let ca_file = pebble.ca_file.display().to_string();
    let server = fixture
        .start_server_on(
            ingress,
            &[
                "--https-listen",
                &https.to_string(),
                "--acme-email",
                "ops@example.test",
                "--acme-directory",
                &pebble.directory,
                "--acme-ca-file",
                &ca_file,
            ],
        )
        .await?;
    let api = server.api();
    let release =
        api.create_app(json!({ "name": "web", "image": fixture.image_v1, "port": 8080, "health_path": "/up" })).await?;
    api.wait_serving("web", release).await?;

    let added = server.cli(&["domains", "add", "web", DOMAIN])?;
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let issued = until("pebble issues the certificate", Duration::from_secs(60), || async {
        let info = domain(&api, "web", DOMAIN).await?;
        anyhow::ensure!(info.state == CertState::Issued, "{info:?}\npebble:\n{}", pebble.log());
        Ok(info)
    })
    .await?;
    assert!(issued.not_after.is_some() && issued.error.is_none(), "{issued:?}");
    let listed = String::from_utf8(server.cli(&["domains", "list", "web"])?.stdout)?;
    assert!(listed.contains(&format!("{DOMAIN}  (custom)  issued (acme)")), "{listed}");

    // Served by SNI, chained to pebble's root, over HTTP/2 (TLS 1.3) and HTTP/1.1.
    let root = pebble.issuing_root().await?;
    let stream = tls_connect(https, DOMAIN, tls_client(std::slice::from_ref(&root), &[b"h2", b"http/1.1"])).await?;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(stream.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    let first_leaf = stream.get_ref().1.peer_certificates().context("a certificate")?[0].clone();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response =
        sender.send_request(hyper::Request::get(format!("https://{DOMAIN}/")).body(Empty::<Bytes>::new())?).await?;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await?.to_bytes();
    assert!(body.starts_with(b"hello from v1"), "{body:?}");
    let mut stream = tls_connect(https, DOMAIN, tls_client(std::slice::from_ref(&root), &[b"http/1.1"])).await?;
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Plain HTTP to a name with a certificate is redirected; HSTS once the app asks for it.
    let redirected =
        raw(ingress, &format!("GET /a?b=1 HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n")).await?;
    assert!(redirected.starts_with("HTTP/1.1 308"), "{redirected}");
    assert!(redirected.contains(&format!("location: https://{DOMAIN}:{}/a?b=1\r\n", https.port())), "{redirected}");
    let plain = raw(ingress, "GET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n").await?;
    assert!(plain.starts_with("HTTP/1.1 200"), "a name without a certificate stays on HTTP: {plain}");
    let edge = server.cli(&["edge", "web", "--hsts", "600"])?;
    assert!(edge.status.success(), "{}", String::from_utf8_lossy(&edge.stderr));
    let mut stream = tls_connect(https, DOMAIN, tls_client(std::slice::from_ref(&root), &[b"http/1.1"])).await?;
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    assert!(answer.contains("strict-transport-security: max-age=600\r\n"), "{answer}");

    // A name the CA refuses: failed, with the CA's reason and a next attempt.
    let added = server.cli(&["domains", "add", "web", BLOCKED])?;
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let failed = until("pebble refuses the blocked name", Duration::from_secs(60), || async {
        let info = domain(&api, "web", BLOCKED).await?;
        anyhow::ensure!(info.state == CertState::Failed, "{info:?}");
        Ok(info)
    })
    .await?;
    let reason = failed.error.clone().unwrap_or_default();
    assert!(reason.contains("rejectedIdentifier"), "the CA's reason: {reason:?}");
    assert!(failed.next_attempt_at.is_some_and(|at| at > issued.not_after.unwrap_or(0) - 3_600_000), "{failed:?}");
    let listed = String::from_utf8(server.cli(&["domains", "list", "web"])?.stdout)?;
    assert!(listed.contains(&format!("{BLOCKED}  (custom)  failed: ")), "{listed}");

    // Renewal before expiry (by TLS-ALPN-01, answered on the HTTPS listener): a new certificate
    // is served on new connections.
    until("the certificate is renewed", Duration::from_secs(90), || async {
        let stream = tls_connect(https, DOMAIN, tls_client(std::slice::from_ref(&root), &[b"http/1.1"])).await?;
        let leaf = stream.get_ref().1.peer_certificates().context("a certificate")?[0].clone();
        anyhow::ensure!(leaf != first_leaf, "still the first certificate");
        Ok(())
    })
    .await?;
    let renewals: Vec<String> = server
        .log()
        .lines()
        .filter(|line| line.contains("ordering a certificate") && line.contains("renewal=true"))
        .map(str::to_string)
        .collect();
    assert!(
        !renewals.is_empty() && renewals.iter().all(|line| line.contains("challenge=TlsAlpn01")),
        "renewals use TLS-ALPN-01: {renewals:?}\n{}",
        server.log().lines().filter(|l| l.contains("certificate")).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploaded_certificates_are_served_and_testssl_finds_nothing_weak() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let https = free_addr()?;
    let server = fixture.start_server_with(&["--https-listen", &https.to_string()]).await?;
    let api = server.api();
    let release = api.create_app(json!({ "name": "shop", "image": fixture.image_v1, "port": 8080 })).await?;
    api.wait_serving("shop", release).await?;
    let added = server.cli(&["domains", "add", "shop", "shop.example.test"])?;
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));

    // A certificate naming someone else's domain is refused, and says why.
    let (chain, key, _) = test_certificate(&["bank.example.test"])?;
    std::fs::write(fixture.dir.join("foreign.pem"), chain)?;
    std::fs::write(fixture.dir.join("foreign.key"), key)?;
    let foreign = fixture.dir.join("foreign.pem").display().to_string();
    let foreign_key = fixture.dir.join("foreign.key").display().to_string();
    let refused = server.cli(&["certs", "add", "shop", "--cert", &foreign, "--key", &foreign_key])?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("bank.example.test, which is not one of this app's names"), "{stderr}");

    let (chain, key, ca) = test_certificate(&["shop.example.test", "shop.localhost"])?;
    std::fs::write(fixture.dir.join("shop.pem"), chain)?;
    std::fs::write(fixture.dir.join("shop.key"), key)?;
    let cert = fixture.dir.join("shop.pem").display().to_string();
    let key = fixture.dir.join("shop.key").display().to_string();
    let uploaded = server.cli(&["certs", "add", "shop", "--cert", &cert, "--key", &key])?;
    assert!(uploaded.status.success(), "{}", String::from_utf8_lossy(&uploaded.stderr));
    for name in ["shop.example.test", "shop.localhost"] {
        let mut stream = tls_connect(https, name, tls_client(std::slice::from_ref(&ca), &[b"http/1.1"])).await?;
        stream.write_all(format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("hello from v1"), "{name}: {answer}");
    }
    let key_files: Vec<_> = std::fs::read_dir(server.data_dir.join("tls"))?.filter_map(|e| e.ok()).collect();
    assert_eq!(key_files.len(), 1, "one key file");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(key_files[0].metadata()?.permissions().mode() & 0o777, 0o600, "private keys are 0600");
    assert!(!server.log().contains("PRIVATE KEY"), "keys never reach the log");

    // testssl.sh: no SSLv2/3, TLS 1.0/1.1, no weak ciphers, no known vulnerability.
    let testssl = ["/usr/bin/testssl", "/usr/bin/testssl.sh"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("testssl.sh is not installed (apt-get install testssl.sh)")?;
    let report = fixture.dir.join("testssl.json");
    let output = tokio::process::Command::new(testssl)
        .args(["--quiet", "--color", "0", "--warnings", "off", "--sneaky", "--ip", "127.0.0.1"])
        .args(["--protocols", "--std", "--vulnerable", "--jsonfile"])
        .arg(&report)
        .arg(format!("https://shop.localhost:{}", https.port()))
        .output()
        .await?;
    let findings: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(&report)
            .with_context(|| format!("testssl.sh wrote no report: {}", String::from_utf8_lossy(&output.stdout)))?,
    )?;
    let offered =
        |id: &str| findings.iter().find(|f| f["id"] == id).map(|f| f["finding"].as_str().unwrap_or("").to_string());
    for protocol in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        let finding = offered(protocol).with_context(|| format!("testssl.sh did not test {protocol}"))?;
        assert!(finding.starts_with("not offered"), "{protocol}: {finding}");
    }
    for protocol in ["TLS1_2", "TLS1_3"] {
        let finding = offered(protocol).with_context(|| format!("testssl.sh did not test {protocol}"))?;
        assert!(
            finding.starts_with("offered"),
            "{protocol}: {finding}; testssl.sh said:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let weak: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .map(|f| format!("{}: {}", f["id"], f["finding"]))
        .collect();
    assert!(weak.is_empty(), "testssl.sh found weaknesses:\n{}", weak.join("\n"));
    Ok(())
}
