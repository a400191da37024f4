//! The ingress against real upstream servers on loopback: routing, retries, error pages, draining.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth_ingress::{Ingress, IngressConfig, RouteSpec};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An upstream that answers `<name>` on `/`, and after 300 ms on `/slow`; counts finished requests.
async fn upstream(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let counter = finished.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        match req.uri().path() {
                            "/slow" => tokio::time::sleep(Duration::from_millis(300)).await,
                            "/hang" => tokio::time::sleep(Duration::from_secs(30)).await,
                            _ => {}
                        }
                        let host = req.headers().get("x-forwarded-host").cloned();
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut response = Response::new(Full::new(Bytes::from(name)));
                        if let Some(host) = host {
                            response.headers_mut().insert("x-seen-host", host);
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, finished)
}

async fn ingress(config: IngressConfig) -> (Arc<Ingress>, SocketAddr) {
    let ingress = Ingress::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ingress.clone().serve(listener));
    (ingress, addr)
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn get(ingress: SocketAddr, host: &str, path: &str) -> (u16, String, Option<String>) {
    let stream = tokio::net::TcpStream::connect(ingress).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::get(path).header("host", host).body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let error = response.headers().get("x-berth-error").map(|v| v.to_str().unwrap().to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), error)
}

fn route(host: &str, endpoints: &[SocketAddr]) -> RouteSpec {
    RouteSpec::new(host, endpoints.to_vec())
}

#[tokio::test]
async fn routes_by_host_and_round_robins() {
    let (a, _) = upstream("a").await;
    let (b, _) = upstream("b").await;
    let (c, _) = upstream("c").await;
    let (ingress, addr) = ingress(IngressConfig::default()).await;
    ingress.apply(vec![route("web.localhost", &[a, b]), route("api.localhost", &[c])]).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(addr, "WEB.localhost:8080", "/").await.1);
    }
    seen.sort();
    assert_eq!(seen, vec!["a", "a", "b", "b"]);
    assert_eq!(get(addr, "api.localhost", "/").await.1, "c");
}

#[tokio::test]
async fn each_failure_cause_has_its_own_status_and_page() {
    let (ingress, addr) =
        ingress(IngressConfig { response_header_timeout: Duration::from_millis(200), ..IngressConfig::default() })
            .await;
    let (slow, _) = upstream("slow").await;
    ingress
        .apply(vec![
            route("empty.localhost", &[]),
            route("dead.localhost", &[dead_addr()]),
            route("slow.localhost", &[slow]),
        ])
        .await;
    let (status, body, error) = get(addr, "nowhere.localhost", "/").await;
    assert_eq!((status, error.as_deref()), (404, Some("unknown_host")));
    assert!(body.contains("no app is served at nowhere.localhost"));
    let (status, _, error) = get(addr, "empty.localhost", "/").await;
    assert_eq!((status, error.as_deref()), (503, Some("no_ready_endpoint")));
    let (status, _, error) = get(addr, "dead.localhost", "/").await;
    assert_eq!((status, error.as_deref()), (502, Some("connect_failed")));
    let (status, _, error) = get(addr, "slow.localhost", "/hang").await;
    assert_eq!((status, error.as_deref()), (504, Some("upstream_timeout")));
}

#[tokio::test]
async fn a_connect_failure_is_retried_on_another_endpoint() {
    let (live, _) = upstream("live").await;
    let (ingress, addr) = ingress(IngressConfig::default()).await;
    ingress.apply(vec![route("web.localhost", &[dead_addr(), live, dead_addr()])]).await;
    for _ in 0..12 {
        let (status, body, _) = get(addr, "web.localhost", "/").await;
        assert_eq!((status, body.as_str()), (200, "live"));
    }
}

#[tokio::test]
async fn drain_waits_for_requests_in_flight_on_removed_endpoints() {
    let (old, old_finished) = upstream("old").await;
    let (new, _) = upstream("new").await;
    let (ingress, addr) = ingress(IngressConfig::default()).await;
    ingress.apply(vec![route("web.localhost", &[old])]).await;

    let in_flight = tokio::spawn(async move { get(addr, "web.localhost", "/slow").await });
    // Wait (by polling the behaviour, not the clock) until the slow request reached the old endpoint.
    while ingress.in_flight(old) == 0 {
        tokio::task::yield_now().await;
    }
    ingress.apply(vec![route("web.localhost", &[new])]).await;
    assert_eq!(get(addr, "web.localhost", "/").await.1, "new", "new requests go to the new endpoint at once");
    assert_eq!(old_finished.load(Ordering::SeqCst), 0, "the slow request is still running");

    let report = ingress.drain(&[old], Duration::from_secs(10)).await;
    assert!(report.still_in_flight.is_empty(), "{report:?}");
    assert_eq!(old_finished.load(Ordering::SeqCst), 1, "drain returned only after the old endpoint answered");
    let (status, body, _) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "old"));
}

#[tokio::test]
async fn drain_gives_up_at_its_timeout_and_says_what_was_left() {
    let (old, _) = upstream("old").await;
    let (ingress, addr) = ingress(IngressConfig::default()).await;
    ingress.apply(vec![route("web.localhost", &[old])]).await;
    tokio::spawn(async move { get(addr, "web.localhost", "/hang").await });
    while ingress.in_flight(old) == 0 {
        tokio::task::yield_now().await;
    }
    ingress.apply(vec![]).await;
    let report = ingress.drain(&[old], Duration::from_millis(100)).await;
    assert_eq!(report.still_in_flight, vec![(old, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_tables_under_load_fails_no_request() {
    let (a, _) = upstream("a").await;
    let (b, _) = upstream("b").await;
    let (ingress, addr) = ingress(IngressConfig::default()).await;
    ingress.apply(vec![route("web.localhost", &[a])]).await;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                for _ in 0..100 {
                    let (status, body, _) = get(addr, "web.localhost", "/").await;
                    assert_eq!(status, 200, "{body}");
                    bodies.push(body);
                }
                bodies
            })
        })
        .collect();
    for i in 0..50 {
        let endpoints = if i % 2 == 0 { vec![b] } else { vec![a, b] };
        ingress.apply(vec![route("web.localhost", &endpoints)]).await;
        tokio::task::yield_now().await;
    }
    for client in clients {
        assert_eq!(client.await.unwrap().len(), 100);
    }
    assert!(ingress.version() >= 51);
}

#[tokio::test]
async fn forwarded_host_reaches_the_upstream() {
    let (a, _) = upstream("a").await;
    let (ingress, addr) = ingress(IngressConfig::default()).await;
    ingress.apply(vec![route("web.localhost", &[a])]).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::get("/").header("host", "web.localhost:8080").body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()["x-seen-host"], "web.localhost:8080");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ingress, addr) =
        ingress(IngressConfig { header_read_timeout: Duration::from_millis(300), ..IngressConfig::default() }).await;
    ingress.apply(vec![]).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n").await.unwrap();
    // The head never ends; the ingress closes the connection (after answering 408 or not).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
}
