//! Berth's ingress: a reverse proxy that routes by Host to ready endpoints, over HTTP/1.1 and
//! HTTP/2, in clear and over TLS (rustls, certificates picked by SNI).
//!
//! The control plane pushes whole route tables with [`Ingress::apply`] and whole certificate
//! tables with [`Ingress::set_certificates`]; requests and handshakes read the current tables
//! without locking (`ArcSwap`). Before the control plane stops an endpoint it calls
//! [`Ingress::drain`], which returns once no request is in flight to it. This crate knows nothing
//! of apps, releases, ACME accounts or the database.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

mod config;
mod fast;
pub mod follower;
mod host;
mod metrics;
mod ocsp;
mod proxy;
mod proxy_protocol;
mod route_table;
mod stall;
mod stapler;
mod tls;

pub use config::{IngressConfig, IpNet, is_trusted, parse_cidr};
use host::host_key;
pub use metrics::{RouteMetrics, TrafficSecond};
use proxy::Conn;
pub use proxy_protocol::ProxyHeaderError;
pub use route_table::{Endpoint, RouteOptions, RouteSpec};
use route_table::{Route, Table};
pub use tls::{ACME_TLS_ALPN, Certificate, CertificateError};
use tls::{CertTable, TlsState};

/// What [`Ingress::drain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests still in flight per endpoint when the timeout passed; empty when fully drained.
    pub still_in_flight: Vec<(SocketAddr, usize)>,
    pub waited: Duration,
}

pub struct Ingress {
    config: IngressConfig,
    table: ArcSwap<Table>,
    /// Serialises writers of `table`; readers never take it.
    apply_lock: tokio::sync::Mutex<()>,
    /// Every endpoint some live table or in-flight request still holds, by address.
    known: Mutex<HashMap<SocketAddr, Weak<Endpoint>>>,
    /// Traffic figures by host key; kept across tables while the host is routed.
    metrics: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    version: AtomicU64,
    tls: Arc<TlsState>,
    /// ACME HTTP-01 answers by token, present only while an order validates.
    http_challenges: Mutex<HashMap<String, String>>,
    /// Open client connections by address, for the per-address cap.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    connections: Arc<Semaphore>,
    stapler: stapler::Stapler,
}

impl Ingress {
    pub fn new(config: IngressConfig) -> Arc<Ingress> {
        Arc::new(Ingress {
            table: ArcSwap::from_pointee(Table::default()),
            apply_lock: tokio::sync::Mutex::new(()),
            known: Mutex::new(HashMap::new()),
            metrics: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
            tls: Arc::new(TlsState::default()),
            http_challenges: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
            stapler: stapler::Stapler::default(),
            config,
        })
    }

    /// Replaces the whole route table and returns its version.
    ///
    /// When this returns, every request that could have picked an endpoint from an earlier table
    /// has registered itself as in flight to it, so a following [`Ingress::drain`] is exact.
    pub async fn apply(&self, routes: Vec<RouteSpec>) -> u64 {
        let _writer = self.apply_lock.lock().await;
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        let table = {
            let mut known = self.known.lock().expect("BUG: endpoint registry lock poisoned");
            let mut endpoint = |addr: SocketAddr| match known.get(&addr).and_then(Weak::upgrade) {
                Some(existing) => existing,
                None => {
                    let fresh = Arc::new(Endpoint::new(addr));
                    known.insert(addr, Arc::downgrade(&fresh));
                    fresh
                }
            };
            let mut metrics = self.metrics.lock().expect("BUG: metrics registry lock poisoned");
            let routes: HashMap<String, Route> = routes
                .into_iter()
                .map(|spec| {
                    let endpoints = spec.endpoints.into_iter().map(&mut endpoint).collect();
                    let key = host_key(&spec.host);
                    let figures = metrics.entry(key.clone()).or_default().clone();
                    (key, Route::new(endpoints, figures, spec.options))
                })
                .collect();
            metrics.retain(|key, _| routes.contains_key(key));
            Table { version, routes }
        };
        let old = self.table.swap(Arc::new(table));
        // Requests hold a table only while they pick endpoints (no await in between), so this
        // wait is short; afterwards nobody can newly pick from `old`.
        while Arc::strong_count(&old) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(old);
        self.known.lock().expect("BUG: endpoint registry lock poisoned").retain(|_, weak| weak.strong_count() > 0);
        version
    }

    /// The traffic of `host` (as clients send it) over the last `seconds` complete seconds,
    /// oldest first; `None` when the host is not routed.
    pub fn traffic(&self, host: &str, seconds: usize) -> Option<Vec<TrafficSecond>> {
        let metrics = self.metrics.lock().expect("BUG: metrics registry lock poisoned");
        Some(metrics.get(&host_key(host))?.series(seconds))
    }

    /// The endpoints `host` is routed to in the table in use; `None` when it is not routed.
    pub fn endpoints(&self, host: &str) -> Option<Vec<SocketAddr>> {
        let table = self.table.load();
        Some(table.routes.get(&host_key(host))?.endpoints.iter().map(|e| e.addr).collect())
    }

    /// The version of the table in use.
    pub fn version(&self) -> u64 {
        self.table.load().version
    }

    /// Requests in flight to `addr` now.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        let known = self.known.lock().expect("BUG: endpoint registry lock poisoned");
        known.get(&addr).and_then(Weak::upgrade).map_or(0, |e| e.in_flight())
    }

    /// Waits until no request is in flight to any of `addrs`, or `timeout` passes.
    /// Call it after an [`Ingress::apply`] that removed them, so no new request can start.
    pub async fn drain(&self, addrs: &[SocketAddr], timeout: Duration) -> DrainReport {
        let started = Instant::now();
        loop {
            let busy: Vec<(SocketAddr, usize)> =
                addrs.iter().map(|a| (*a, self.in_flight(*a))).filter(|(_, n)| *n > 0).collect();
            if busy.is_empty() || started.elapsed() >= timeout {
                return DrainReport { still_in_flight: busy, waited: started.elapsed() };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Replaces the certificates served over TLS. For each name the certificate that expires
    /// last is served; a wildcard covers one label under its parent.
    /// Certificates whose issuer runs an OCSP responder get its response stapled (while HTTPS is
    /// served).
    pub fn set_certificates(&self, certificates: Vec<Certificate>) {
        for certificate in &certificates {
            self.stapler.restore(certificate);
        }
        self.tls.certs.store(Arc::new(CertTable::new(certificates)));
        self.stapler.wake();
    }

    /// The certificate served for `host`, if any.
    pub fn certificate_for(&self, host: &str) -> Option<Certificate> {
        self.tls.certs.load().find(&host_key(host)).map(|c| Certificate::clone(c))
    }

    /// Answers ACME HTTP-01 challenge `token` with `key_authorization` on plain HTTP (for any
    /// host), or stops answering it (`None`).
    pub fn set_http_challenge(&self, token: &str, key_authorization: Option<String>) {
        let mut challenges = self.http_challenges.lock().expect("BUG: challenge lock poisoned");
        match key_authorization {
            Some(answer) => challenges.insert(token.to_string(), answer),
            None => challenges.remove(token),
        };
    }

    pub(crate) fn http_challenge(&self, token: &str) -> Option<String> {
        self.http_challenges.lock().expect("BUG: challenge lock poisoned").get(token).cloned()
    }

    /// Serves the ACME TLS-ALPN-01 challenge certificate (DER certificate and PKCS#8 key) for
    /// `domain` to validators that ask for `acme-tls/1`, or stops (`None`).
    pub fn set_alpn_challenge(
        &self,
        domain: &str,
        certificate: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), CertificateError> {
        let key = certificate.map(|(cert, key)| tls::challenge_key(cert, key)).transpose()?;
        let mut challenges = self.tls.alpn_challenges.lock().expect("BUG: challenge lock poisoned");
        match key {
            Some(key) => challenges.insert(host_key(domain), key),
            None => challenges.remove(&host_key(domain)),
        };
        Ok(())
    }

    /// The proxy's figures in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut hosts: Vec<(String, Arc<RouteMetrics>)> = {
            let metrics = self.metrics.lock().expect("BUG: metrics registry lock poisoned");
            metrics.iter().map(|(host, m)| (host.clone(), m.clone())).collect()
        };
        hosts.sort_by(|a, b| a.0.cmp(&b.0));
        let mut certificates: Vec<(String, u64)> = self
            .tls
            .certs
            .load()
            .all()
            .flat_map(|c| {
                let expiry = c.not_after.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                c.names.iter().map(move |name| (name.clone(), expiry))
            })
            .collect();
        certificates.sort();
        certificates.dedup_by(|a, b| a.0 == b.0);
        metrics::prometheus(&hosts, &certificates)
    }

    /// Serves plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge) until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        self.accept_loop(listener, None).await
    }

    /// Serves HTTPS (TLS 1.2 and 1.3; ALPN `h2` and `http/1.1`) until the task is dropped.
    /// Handshakes for names without a certificate fail.
    pub async fn serve_tls(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let config = tls::server_config(self.tls.clone()).map_err(std::io::Error::other)?;
        stapler::start(&self);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        self.accept_loop(listener, Some(acceptor)).await
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<()> {
        let builders = Arc::new(Builders::new(&self.config));
        loop {
            // At the connection cap, further connections wait in the kernel's backlog.
            let permit = self.connections.clone().acquire_owned().await.expect("BUG: the semaphore is never closed");
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Running out of file descriptors or a reset during accept must not stop the
                // ingress; back off briefly and keep accepting.
                Err(error) => {
                    tracing::warn!(%error, "ingress accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let ingress = self.clone();
            let (builders, tls) = (builders.clone(), tls.clone());
            tokio::spawn(async move {
                ingress.connection(stream, peer, tls, &builders).await;
                drop(permit);
            });
        }
    }

    async fn connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        builders: &Builders,
    ) {
        let handshake_timeout = self.config.header_read_timeout;
        let mut client = peer;
        if self.config.proxy_protocol && self.config.trusts(peer.ip()) {
            match tokio::time::timeout(handshake_timeout, proxy_protocol::read_header(&mut stream)).await {
                Ok(Ok(Some(source))) => client = source,
                Ok(Ok(None)) => {}
                Ok(Err(error)) => return tracing::debug!(%peer, %error, "PROXY protocol header refused"),
                Err(_) => return tracing::debug!(%peer, "no PROXY protocol header in time"),
            }
        }
        let Some(_admitted) = self.admit(client.ip()) else {
            return tracing::debug!(%client, "too many connections from this address");
        };
        let conn = Conn { peer: client, tls: tls.is_some() };
        // Under TLS too, so a client that stops reading is cut off whatever the protocol.
        let stream = stall::Stalling::new(stream, self.config.idle_timeout);
        let ingress = self.clone();
        let service = service_fn(move |req| {
            let ingress = ingress.clone();
            async move { Ok::<_, std::convert::Infallible>(ingress.handle(req, conn).await) }
        });
        // HTTP/1.1 starts on the fast path, which hands the connection to hyper at the first
        // request it does not take (HTTP/2's preface included).
        let served = match tls {
            None => match self.serve_fast(stream, conn).await {
                None => return,
                Some(rest) => builders.auto.serve_connection_with_upgrades(TokioIo::new(rest), service).await,
            },
            Some(acceptor) => {
                let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return tracing::debug!(%client, %error, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%client, "TLS handshake timed out"),
                };
                let builder = match stream.get_ref().1.alpn_protocol() {
                    // A validator checking the challenge certificate: the handshake was all it wanted.
                    Some(ACME_TLS_ALPN) => return,
                    Some(b"h2") => {
                        return log_end(
                            builders.h2.serve_connection_with_upgrades(TokioIo::new(stream), service).await,
                            client,
                        );
                    }
                    Some(_) => &builders.h1,
                    None => &builders.auto,
                };
                match self.serve_fast(stream, conn).await {
                    None => return,
                    Some(rest) => builder.serve_connection_with_upgrades(TokioIo::new(rest), service).await,
                }
            }
        };
        log_end(served, client);
    }

    /// Counts a connection from `ip` against its cap until the guard is dropped.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let ip = config::canonical(ip);
        let mut per_ip = self.per_ip.lock().expect("BUG: connection count lock poisoned");
        let count = per_ip.entry(ip).or_default();
        if *count >= self.config.max_connections_per_ip {
            return None;
        }
        *count += 1;
        Some(Admitted { ingress: self.clone(), ip })
    }
}

fn log_end(served: Result<(), Box<dyn std::error::Error + Send + Sync>>, client: SocketAddr) {
    if let Err(error) = served {
        tracing::debug!(%error, %client, "client connection ended with an error");
    }
}

struct Admitted {
    ingress: Arc<Ingress>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self.ingress.per_ip.lock().expect("BUG: connection count lock poisoned");
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The connection builders, set up once per listener: protocol detection (plain listeners and
/// TLS without ALPN), HTTP/1.1 only and HTTP/2 only (by ALPN).
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(config: &IngressConfig) -> Builders {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            // A client that trickles its request head (slowloris), or idles between requests
            // longer than this, is cut off.
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            // Bounds each header block, CONTINUATION frames included.
            .max_header_list_size(config.max_header_bytes as u32)
            // Rapid reset (CVE-2023-44487): streams reset before they are served are counted, and
            // a connection that keeps doing it is closed with GOAWAY.
            .max_pending_accept_reset_streams(50)
            .max_local_error_reset_streams(256)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        Builders { h1: builder.clone().http1_only(), h2: builder.clone().http2_only(), auto: builder }
    }
}
