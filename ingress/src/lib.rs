//! Berth's ingress: an HTTP/1.1 reverse proxy that routes by Host to ready endpoints.
//!
//! The control plane pushes whole route tables with [`Ingress::apply`]; requests read the current
//! table without locking (`ArcSwap`). Before the control plane stops an endpoint it calls
//! [`Ingress::drain`], which returns once no request is in flight to it. This crate knows nothing
//! of apps, releases or the database.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

mod metrics;
mod proxy;
mod route_table;

pub use metrics::{RouteMetrics, TrafficSecond};
pub use route_table::{Endpoint, RouteSpec};
use route_table::{Route, Table};

/// Tunables of the proxy. The upstream idle timeout stays below the usual app keep-alive
/// timeouts, so a pooled connection is never one the app is closing (hyper #2136); forwarded
/// headers are believed only from `trusted_proxies`.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Time allowed to open a TCP connection to an endpoint before trying the next one.
    pub connect_timeout: Duration,
    /// Time allowed between sending a request upstream and receiving its response headers.
    pub response_header_timeout: Duration,
    /// Idle upstream connections are dropped after this long. Kept below typical app keep-alive
    /// timeouts (5 s and up) so the proxy never reuses a connection the app is closing.
    pub upstream_idle_timeout: Duration,
    /// Idle upstream connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Peers whose `X-Forwarded-*` headers are believed and extended; everyone else's are replaced.
    pub trusted_proxies: Vec<IpAddr>,
    /// Time a client has to send a request's head, on a new or an idle kept-alive connection.
    pub header_read_timeout: Duration,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            connect_timeout: Duration::from_secs(2),
            response_header_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(2),
            max_idle_per_endpoint: 64,
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

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
}

impl Ingress {
    pub fn new(config: IngressConfig) -> Arc<Ingress> {
        Arc::new(Ingress {
            config,
            table: ArcSwap::from_pointee(Table::default()),
            apply_lock: tokio::sync::Mutex::new(()),
            known: Mutex::new(HashMap::new()),
            metrics: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
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
                    let key = route_table::host_key(&spec.host);
                    let figures = metrics.entry(key.clone()).or_default().clone();
                    (key, Route::new(endpoints, figures))
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
        Some(metrics.get(&route_table::host_key(host))?.series(seconds))
    }

    /// The endpoints `host` is routed to in the table in use; `None` when it is not routed.
    pub fn endpoints(&self, host: &str) -> Option<Vec<SocketAddr>> {
        let table = self.table.load();
        Some(table.routes.get(&route_table::host_key(host))?.endpoints.iter().map(|e| e.addr).collect())
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

    /// Accepts connections until the listener fails or the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
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
            let header_read_timeout = self.config.header_read_timeout;
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let ingress = ingress.clone();
                    async move { Ok::<_, std::convert::Infallible>(ingress.handle(req, peer).await) }
                });
                let conn = http1::Builder::new()
                    .keep_alive(true)
                    // A client that trickles its request head (slowloris) is cut off.
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                if let Err(error) = conn.await {
                    tracing::debug!(%error, %peer, "downstream connection ended with an error");
                }
            });
        }
    }
}
