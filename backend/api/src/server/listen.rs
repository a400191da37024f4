//! The API and dashboard listener: hyper with a header-read timeout (slowloris) and a cap on
//! connections, the client address taken from `X-Forwarded-For` only when the peer is a trusted
//! proxy, and a graceful shutdown that does not wait forever for open streams (SSE pages and
//! `logs -f` never end by themselves). A listener may speak TLS (`--api-tls-listen`): agents,
//! the CLI and browsers on other machines then reach the API encrypted.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use berth_ingress::{IpNet, is_trusted as trusted};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// Limits of the API listener.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Time a client has to send a request head (and to send the next one on a kept-alive
    /// connection).
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// After the shutdown signal, how long open requests and streams get before being cut.
    pub shutdown_grace: Duration,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Drops what only a trusted proxy may say about the request (`X-Forwarded-Proto`: whether the
/// client spoke HTTPS, which decides the session cookie's `Secure` and `__Host-` name) when the
/// peer is not one.
pub(crate) fn strip_untrusted_forwarding(peer: SocketAddr, headers: &mut axum::http::HeaderMap, proxies: &[IpNet]) {
    if !trusted(proxies, peer.ip()) {
        headers.remove("x-forwarded-proto");
    }
}

/// The client behind trusted proxies: the rightmost `X-Forwarded-For` entry that is not itself a
/// trusted proxy (entries further left are the client's own claims).
pub(crate) fn client_address(peer: SocketAddr, headers: &axum::http::HeaderMap, proxies: &[IpNet]) -> SocketAddr {
    if !trusted(proxies, peer.ip()) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    hops.iter().rev().find(|ip| !trusted(proxies, **ip)).map_or(peer, |ip| SocketAddr::new(*ip, 0))
}

/// The API's TLS settings from a certificate chain and key (PEM files): TLS 1.2 and 1.3,
/// ALPN `h2` and `http/1.1`.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the certificates in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("BUG: ring supports the default versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the API's certificate and key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` until `shutdown` completes, then lets open connections finish for the grace
/// period. With `tls`, each connection's handshake must finish within the header-read timeout.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: ApiLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let proxies: Arc<[IpNet]> = limits.trusted_proxies.clone().into();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("BUG: the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY, a streamed page's later chunks wait for the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let (app, proxies) = (app.clone(), proxies.clone());
        let over_tls = tls.is_some();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let client = client_address(peer, request.headers(), &proxies);
            strip_untrusted_forwarding(peer, request.headers_mut(), &proxies);
            if over_tls {
                // This listener's own TLS: the session cookie is then `Secure` and `__Host-`.
                request.headers_mut().insert("x-forwarded-proto", axum::http::HeaderValue::from_static("https"));
            }
            request.extensions_mut().insert(ConnectInfo(client));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let stream = match tls {
                None => tokio_util::either::Either::Left(stream),
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => tokio_util::either::Either::Right(stream),
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "API TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "API TLS handshake timed out");
                        return;
                    }
                },
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, %error, "API connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::info!(grace = ?limits.shutdown_grace, "connections still open after the shutdown grace; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let proxies = vec![berth_ingress::parse_cidr("10.0.0.0/8").unwrap()];
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1".parse().unwrap());
        let from_proxy = client_address("10.0.0.2:4000".parse().unwrap(), &headers, &proxies);
        assert_eq!(from_proxy.ip().to_string(), "203.0.113.9", "the rightmost untrusted hop");
        let direct = client_address("198.51.100.1:4000".parse().unwrap(), &headers, &proxies);
        assert_eq!(direct.ip().to_string(), "198.51.100.1", "an untrusted peer's header is ignored");
        let no_header = client_address("10.0.0.2:4000".parse().unwrap(), &Default::default(), &proxies);
        assert_eq!(no_header.ip().to_string(), "10.0.0.2");
    }

    #[test]
    fn only_a_trusted_proxy_says_the_client_spoke_https() {
        let proxies = vec![berth_ingress::parse_cidr("10.0.0.0/8").unwrap()];
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        strip_untrusted_forwarding("10.0.0.2:4000".parse().unwrap(), &mut headers, &proxies);
        assert!(headers.contains_key("x-forwarded-proto"), "a trusted proxy's word stands");
        strip_untrusted_forwarding("198.51.100.1:4000".parse().unwrap(), &mut headers, &proxies);
        assert!(!headers.contains_key("x-forwarded-proto"), "anyone else's is dropped");
    }
}
