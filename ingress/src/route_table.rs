//! The route table (host → ready endpoints) and the per-endpoint state that outlives a table:
//! in-flight counts for draining and the pool of idle upstream connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use tokio::net::TcpStream;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type UpstreamBody = BoxBody<Bytes, BoxError>;

/// What the control plane pushes: one host name and the endpoints that may serve it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteSpec {
    /// Host name as clients send it, without port (`web.localhost`).
    pub host: String,
    /// Ready endpoints; an empty list answers 503.
    pub endpoints: Vec<SocketAddr>,
    pub options: RouteOptions,
}

impl RouteSpec {
    pub fn new(host: impl Into<String>, endpoints: Vec<SocketAddr>) -> RouteSpec {
        RouteSpec { host: host.into(), endpoints, options: RouteOptions::default() }
    }
}

/// How a host is served, beyond where.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteOptions {
    /// Plain HTTP requests are redirected to HTTPS (308), except ACME HTTP-01 challenges.
    pub https_redirect: bool,
    /// `Strict-Transport-Security: max-age=<seconds>` on HTTPS responses.
    pub hsts_max_age: Option<u64>,
    /// The app speaks HTTP/2 without TLS (h2c, prior knowledge): requests reach it as HTTP/2,
    /// with trailers and streaming both ways (gRPC).
    pub upstream_h2c: bool,
}

/// An immutable route table; replaced as a whole, never edited in place.
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) version: u64,
    pub(crate) routes: HashMap<String, Route>,
}

pub(crate) struct Route {
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) metrics: Arc<crate::RouteMetrics>,
    pub(crate) options: RouteOptions,
    /// Round-robin cursor. Relaxed atomics: fairness, not correctness, depends on it.
    next: AtomicUsize,
}

impl Route {
    pub(crate) fn new(
        endpoints: Vec<Arc<Endpoint>>,
        metrics: Arc<crate::RouteMetrics>,
        options: RouteOptions,
    ) -> Route {
        Route { endpoints, metrics, options, next: AtomicUsize::new(0) }
    }

    /// The next endpoint in round-robin order that is not in `skip`, counted as in flight so that
    /// a drain cannot miss a request that picked it from this table.
    pub(crate) fn pick(&self, skip: &[SocketAddr]) -> Option<InFlight> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| !skip.contains(&e.addr))
            .map(|e| InFlight::new(e.clone()))
    }
}

/// One upstream address. Shared by every table that lists it, so its in-flight count and idle
/// connections carry over when a table is replaced.
pub struct Endpoint {
    pub(crate) addr: SocketAddr,
    in_flight: AtomicUsize,
    idle: IdlePool<http1::SendRequest<UpstreamBody>>,
    /// Idle connections of the HTTP/1.1 fast path (`fast.rs`), which owns them directly.
    raw_idle: IdlePool<TcpStream>,
    /// The HTTP/2 connection to an h2c endpoint, shared by all its requests.
    pub(crate) h2: tokio::sync::Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            in_flight: AtomicUsize::new(0),
            idle: IdlePool::new(),
            raw_idle: IdlePool::new(),
            h2: tokio::sync::Mutex::new(None),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// An idle connection that is still open and younger than `max_idle`, if any. It may not be
    /// ready yet (its connection task has not seen the end of the last response): the caller
    /// waits for that rather than throwing a good connection away.
    pub(crate) fn take_idle(&self, max_idle: Duration) -> Option<http1::SendRequest<UpstreamBody>> {
        self.idle.take(max_idle, |sender| !sender.is_closed())
    }

    pub(crate) fn put_idle(&self, sender: http1::SendRequest<UpstreamBody>, max_pool: usize) {
        if !sender.is_closed() {
            self.idle.put(sender, max_pool);
        }
    }

    /// The most recently idled fast-path connection younger than `max_idle` on which nothing has
    /// arrived since: one the app closed, or sent stray bytes on (a late second response would
    /// answer the next request), is dropped. One the app closes just as it is taken shows when it
    /// is used (the fast path then tries a fresh one).
    pub(crate) fn take_raw_idle(&self, max_idle: Duration) -> Option<TcpStream> {
        self.raw_idle.take(max_idle, |stream| {
            // Asked of the kernel (a non-blocking peek): tokio's cached readiness may not have
            // seen what arrived since the last read.
            let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            matches!(socket2::SockRef::from(stream).peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
    }

    pub(crate) fn put_raw_idle(&self, stream: TcpStream, max_pool: usize) {
        self.raw_idle.put(stream, max_pool);
    }
}

/// Idle upstream connections of one kind, newest last.
struct IdlePool<C>(Mutex<Vec<(C, Instant)>>);

impl<C> IdlePool<C> {
    fn new() -> IdlePool<C> {
        IdlePool(Mutex::new(Vec::new()))
    }

    /// The newest connection younger than `max_idle` that is still `usable`; older and unusable
    /// ones met on the way are dropped.
    fn take(&self, max_idle: Duration, usable: impl Fn(&C) -> bool) -> Option<C> {
        let mut idle = self.0.lock().expect("BUG: idle pool lock poisoned");
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < max_idle && usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: C, max_pool: usize) {
        let mut idle = self.0.lock().expect("BUG: idle pool lock poisoned");
        if idle.len() < max_pool {
            idle.push((conn, Instant::now()));
        }
    }
}

/// Counts one request against an endpoint until dropped.
pub(crate) struct InFlight(pub(crate) Arc<Endpoint>);

impl InFlight {
    fn new(endpoint: Arc<Endpoint>) -> InFlight {
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_rotate_skip_what_was_tried_and_count_in_flight() {
        let a = Arc::new(Endpoint::new("127.0.0.1:1".parse().unwrap()));
        let b = Arc::new(Endpoint::new("127.0.0.1:2".parse().unwrap()));
        let route = Route::new(vec![a.clone(), b.clone()], Default::default(), Default::default());
        let first = route.pick(&[]).unwrap();
        assert_eq!(first.0.addr, a.addr);
        assert_eq!((a.in_flight(), b.in_flight()), (1, 0));
        let second = route.pick(&[]).unwrap();
        assert_eq!(second.0.addr, b.addr);
        // The cursor is on a again, but a was tried.
        let retry = route.pick(&[a.addr]).unwrap();
        assert_eq!(retry.0.addr, b.addr);
        assert!(route.pick(&[a.addr, b.addr]).is_none());
        drop((first, second, retry));
        assert_eq!((a.in_flight(), b.in_flight()), (0, 0));
        assert!(Route::new(Vec::new(), Default::default(), Default::default()).pick(&[]).is_none());
    }
}
