//! A real ACME server for tests: Debian's `pebble` (Let's Encrypt's test CA), with
//! `pebble-challtestsrv` as its DNS server so that every name resolves to 127.0.0.1, and the
//! TLS certificate of its own API made here. Both processes are killed when dropped.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Names pebble refuses to certify (`rejectedIdentifier`).
pub const BLOCKED: &str = "blocked.example.test";

pub struct Pebble {
    _pebble: tokio::process::Child,
    _dns: tokio::process::Child,
    _dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA of pebble's own HTTPS (for `--acme-ca-file`).
    pub ca_file: PathBuf,
    management: SocketAddr,
    log: PathBuf,
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A TCP address on loopback that nothing listens on now (for a server to bind next).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)))
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|path| path.exists())
        .with_context(|| format!("{name} is not installed (apt-get install pebble): the ACME tests run against it"))
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, issuing certificates valid for `validity`.
    pub async fn start(http_port: u16, tls_port: u16, validity: Duration) -> anyhow::Result<Pebble> {
        let pebble = binary("pebble")?;
        let challtestsrv = binary("pebble-challtestsrv")?;
        let dir = tempfile::Builder::new().prefix("berth-pebble-").tempdir()?;
        // pebble's own listener: `localhost` and 127.0.0.1, signed by a CA written to `ca.pem`.
        let (chain_pem, key_pem, _) = test_certificate(&["localhost", "127.0.0.1"])?;
        let ca_pem =
            chain_pem.split_inclusive("-----END CERTIFICATE-----\n").nth(1).context("the chain ends with its CA")?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem)?;
        std::fs::write(dir.path().join("cert.pem"), &chain_pem)?;
        std::fs::write(dir.path().join("key.pem"), key_pem)?;
        let dns_port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = dir.path().join("pebble.log");
        let log_file = || std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("pebble.log"));
        let dns = tokio::process::Command::new(challtestsrv)
            .args(["-dns01", &format!("127.0.0.1:{dns_port}"), "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_tcp_port()?)])
            .stdout(log_file()?)
            .stderr(log_file()?)
            .kill_on_drop(true)
            .spawn()
            .context("starting pebble-challtestsrv")?;
        let listen = free_addr()?;
        let management = free_addr()?;
        let config = serde_json::json!({ "pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "domainBlocklist": [BLOCKED],
            "certificateValidityPeriod": validity.as_secs(),
        }});
        std::fs::write(dir.path().join("config.json"), config.to_string())?;
        let process = tokio::process::Command::new(pebble)
            .arg("-config")
            .arg(dir.path().join("config.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log_file()?)
            .stderr(log_file()?)
            .kill_on_drop(true)
            .spawn()
            .context("starting pebble")?;
        let pebble = Pebble {
            _pebble: process,
            _dns: dns,
            directory: format!("https://{listen}/dir"),
            ca_file,
            management,
            log,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(listen).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!("pebble did not come up; its log:\n{}", pebble.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(pebble)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The root that signs the certificates pebble issues (new at every start).
    pub async fn issuing_root(&self) -> anyhow::Result<rustls::pki_types::CertificateDer<'static>> {
        let ca = std::fs::read(&self.ca_file)?;
        let (status, body) = https_get(self.management, "localhost", &ca, "/roots/0").await?;
        if status != 200 {
            bail!("pebble's /roots/0 answered {status}");
        }
        use rustls::pki_types::pem::PemObject as _;
        Ok(rustls::pki_types::CertificateDer::from_pem_slice(&body)?)
    }
}

/// A fresh test CA and a certificate it signs for `names`: (chain PEM, leaf first; key PEM; the
/// CA's DER, to trust).
pub fn test_certificate(
    names: &[&str],
) -> anyhow::Result<(String, String, rustls::pki_types::CertificateDer<'static>)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?.signed_by(&key, &issuer)?;
    Ok((format!("{}{}", leaf.pem(), ca.pem()), key.serialize_pem(), ca.der().clone()))
}

/// A TLS client trusting only `root` (DER or PEM), offering `alpn`.
pub fn tls_client(roots: &[rustls::pki_types::CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("a valid root certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("BUG: ring supports the default versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects to `addr` over TLS with `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
    Ok(tokio_rustls::TlsConnector::from(config).connect(name, stream).await?)
}

/// `GET path` over HTTPS/1.1 to `addr` with `sni`, trusting the PEM `ca`.
async fn https_get(addr: SocketAddr, sni: &str, ca: &[u8], path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    use http_body_util::BodyExt as _;
    use rustls::pki_types::pem::PemObject as _;
    let root = rustls::pki_types::CertificateDer::from_pem_slice(ca)?;
    let stream = tls_connect(addr, sni, tls_client(&[root], &[b"http/1.1"])).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path).header("host", sni).body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}
