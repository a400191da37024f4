//! The agent's connection to its control plane, and the trust behind it. Over `https://` the
//! agent records at join what it verified the control plane with in its credential file: the
//! `--ca-file` given (pinned: afterwards nothing else is trusted for that control plane, so an
//! on-path attacker with any other certificate is refused), or else the system's roots (a
//! publicly trusted certificate, which may be renewed under any intermediate). Either way it
//! never falls back to plain HTTP. Plain `http://` is accepted only to a loopback address, or
//! with `--insecure`.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// The control plane as the agent reaches it: its base URL and the clients that trust only what
/// was pinned.
#[derive(Clone)]
pub struct ControlPlane {
    pub base: String,
    pub http: reqwest::Client,
    /// For the WebSocket (`None` over plain HTTP).
    pub tls: Option<Arc<ClientConfig>>,
}

impl ControlPlane {
    /// The control plane at `base`, trusting the PEM certificates `pinned`, or the system's
    /// roots when `system_roots` (over `https://`).
    pub fn new(base: &str, pinned: Option<&str>, system_roots: bool) -> anyhow::Result<ControlPlane> {
        let base = base.trim_end_matches('/').to_string();
        let tls = match (scheme(&base)?, pinned) {
            (Scheme::Https, Some(pem)) => Some(Arc::new(client_config(roots_from_pem(pem.as_bytes())?)?)),
            (Scheme::Https, None) if system_roots => Some(Arc::new(client_config(native_roots()?)?)),
            (Scheme::Http, None) if system_roots => bail!(
                "this host joined its control plane over HTTPS: {base} must be https:// (refusing to fall back \
                 to plain HTTP)"
            ),
            (Scheme::Https, None) => bail!(
                "this host joined its control plane over plain HTTP, and {base} is HTTPS: join again \
                 (delete the agent's host.json) so that the control plane's certificate authority is pinned"
            ),
            (Scheme::Http, Some(_)) => bail!(
                "this host pinned its control plane's certificate at join: {base} must be https:// (refusing to \
                 fall back to plain HTTP)"
            ),
            (Scheme::Http, None) => None,
        };
        let http = http_client(tls.clone())?;
        Ok(ControlPlane { base, http, tls })
    }

    /// The WebSocket URL of `path`.
    pub fn ws_url(&self, path: &str) -> String {
        let rest = self.base.split_once("://").map_or(self.base.as_str(), |(_, rest)| rest);
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{rest}{path}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

fn scheme(base: &str) -> anyhow::Result<Scheme> {
    match base.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()) {
        Some(s) if s == "https" => Ok(Scheme::Https),
        Some(s) if s == "http" => Ok(Scheme::Http),
        _ => bail!("{base:?} is not an http:// or https:// URL"),
    }
}

/// Refuses to send a join token and then a host credential in clear text across a network:
/// plain HTTP only to a loopback address, unless the operator says `--insecure`.
pub fn check_cleartext(base: &str, insecure: bool) -> anyhow::Result<()> {
    if scheme(base)? == Scheme::Https || insecure {
        return Ok(());
    }
    let authority = base.split_once("://").map_or(base, |(_, rest)| rest).split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Ok(());
    }
    bail!(
        "{base} is plain HTTP to another machine: the join token, this host's credential and every app's \
         environment would cross the network in clear text. Use https:// (with --ca-file for a private CA), \
         or pass --insecure on a network you trust"
    )
}

/// Joins over `https://`: the client that verifies the control plane with `ca_file` (or the
/// system's roots), and what to record of that trust.
pub struct JoinTrust {
    pub http: reqwest::Client,
    /// The `--ca-file`'s certificates, to pin; `None`: the system's roots.
    pub pinned: Option<String>,
}

impl JoinTrust {
    pub fn new(ca_file: Option<&Path>) -> anyhow::Result<JoinTrust> {
        let (roots, pinned) = match ca_file {
            Some(path) => {
                let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                (roots_from_pem(pem.as_bytes())?, Some(pem))
            }
            None => (native_roots()?, None),
        };
        let http = http_client(Some(Arc::new(client_config(roots)?)))?;
        Ok(JoinTrust { http, pinned })
    }
}

fn native_roots() -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        bail!("no system root certificates found; pass --ca-file with the control plane's CA");
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots_from_pem(pem: &[u8]) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.context("reading a PEM certificate")?).context("a certificate that cannot be a trust anchor")?;
    }
    if roots.is_empty() {
        bail!("no certificate in the PEM data");
    }
    Ok(roots)
}

fn client_config(roots: RootCertStore) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("BUG: ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn http_client(tls: Option<Arc<ClientConfig>>) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder();
    // The config speaks HTTP/1.1 by ALPN (`client_config`), as reqwest here does.
    let builder = match tls {
        Some(config) => builder.use_preconfigured_tls((*config).clone()),
        None => builder,
    };
    builder.build().context("building the HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_joins_only_to_loopback_unless_insecure() {
        for ok in ["http://127.0.0.1:7878", "http://localhost:7878/", "http://[::1]:7878", "https://10.0.0.1:7878"] {
            assert!(check_cleartext(ok, false).is_ok(), "{ok}");
        }
        let error = check_cleartext("http://10.0.0.1:7878", false).unwrap_err().to_string();
        assert!(error.contains("--insecure"), "{error}");
        assert!(check_cleartext("http://cp.example.com", false).is_err());
        assert!(check_cleartext("http://10.0.0.1:7878", true).is_ok());
        assert!(check_cleartext("ftp://10.0.0.1", true).is_err(), "not a URL we speak");
    }

    #[test]
    fn a_pinned_control_plane_is_never_reached_over_plain_http() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(ControlPlane::new("http://10.0.0.1:7878", Some(pem), false).is_err());
        assert!(ControlPlane::new("http://10.0.0.1:7878", None, true).is_err(), "joined over HTTPS");
        assert!(ControlPlane::new("https://10.0.0.1:7878", None, false).is_err(), "https without a pin: join again");
        let plain = ControlPlane::new("http://127.0.0.1:7878/", None, false).unwrap();
        assert_eq!(plain.ws_url("/api/v1/agents/connect"), "ws://127.0.0.1:7878/api/v1/agents/connect");
    }
}
