//! The ingress as an edge: hostile and odd requests answered as stated, TLS by SNI with HTTP/2
//! and HTTP/1.1, redirects and HSTS, h2c upstreams with trailers, the PROXY protocol, caps and
//! metrics. Real sockets on loopback; certificates from a test CA made here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_ingress::{Certificate, Ingress, IngressConfig, RouteOptions, RouteSpec, parse_cidr};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 upstream that describes the request it got: method, target, selected headers and
/// the body's length, one `name: value` per line.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let mut text = format!("{} {}\n", req.method(), req.uri());
                    for (name, value) in req.headers() {
                        text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                    }
                    let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
                    text.push_str(&format!(
                        "body: {}\n",
                        body.map_or_else(|e| format!("error {e}"), |n| n.to_string())
                    ));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// An h2c (prior knowledge) upstream answering like a gRPC server: a streamed body, then
/// trailers with `grpc-status`. It echoes whether it saw `te: trailers`.
async fn grpc_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let te = req.headers().get("te").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "fine".parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from(format!("te={te};")))),
                        Ok(Frame::data(Bytes::from(format!("version={:?}", req.version())))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = StreamBody::new(futures::stream::iter(frames));
                    Ok::<_, Infallible>(
                        Response::builder().header("content-type", "application/grpc").body(body).unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn start(config: IngressConfig, routes: Vec<RouteSpec>) -> (Arc<Ingress>, SocketAddr) {
    let ingress = Ingress::new(config);
    ingress.apply(routes).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ingress.clone().serve(listener));
    (ingress, addr)
}

async fn start_tls(ingress: &Arc<Ingress>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ingress.clone().serve_tls(listener));
    addr
}

/// Sends raw bytes and reads until the connection closes or 5 s pass.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn hostile_requests_get_clear_4xx_answers() {
    let upstream = echo_upstream().await;
    let (_ingress, addr) = start(
        IngressConfig { max_header_bytes: 16 << 10, max_body_bytes: 1000, ..Default::default() },
        vec![RouteSpec::new("web.localhost", vec![upstream])],
    )
    .await;
    let close = "Connection: close\r\n";

    // The absolute-form target with a query and no path that used to panic the connection task.
    let answer =
        raw(addr, format!("GET http://web.localhost?x=1 HTTP/1.1\r\nHost: web.localhost\r\n{close}\r\n").as_bytes())
            .await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(answer.contains("GET /?x=1\n"), "{answer}");
    // The target's authority wins over Host, and Host is rewritten to it.
    let answer =
        raw(addr, format!("GET http://web.localhost/a HTTP/1.1\r\nHost: other.localhost\r\n{close}\r\n").as_bytes())
            .await;
    assert!(answer.contains("host: web.localhost\n"), "{answer}");

    for (what, request, status, code) in [
        ("userinfo after the port", "GET / HTTP/1.1\r\nHost: web.localhost:@evil.example\r\n", "400", "bad_host"),
        ("a non-numeric port", "GET / HTTP/1.1\r\nHost: web.localhost:80x\r\n", "400", "bad_host"),
        (
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: web.localhost\r\nHost: evil.example\r\n",
            "400",
            "duplicate_host",
        ),
        ("CONNECT", "CONNECT web.localhost:443 HTTP/1.1\r\nHost: web.localhost:443\r\n", "405", "method_not_allowed"),
        (
            "a declared body over the limit",
            "POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 5000\r\n",
            "413",
            "body_too_large",
        ),
    ] {
        let answer = raw(addr, format!("{request}{close}\r\n").as_bytes()).await;
        assert_eq!(status_of(&answer), status, "{what}: {answer}");
        assert!(answer.contains(&format!("x-berth-error: {code}")), "{what}: {answer}");
    }
    let huge = format!("GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Big: {}\r\n{close}\r\n", "a".repeat(40 << 10));
    assert_eq!(status_of(&raw(addr, huge.as_bytes()).await), "431", "an oversized head");

    // Spoofed forwarding headers and an h2c upgrade do not reach the app.
    let answer = raw(
        addr,
        format!(
            "GET / HTTP/1.1\r\nHost: web.localhost\r\nForwarded: for=1.2.3.4;proto=https\r\nX-Real-IP: 1.2.3.4\r\n\
             X-Forwarded-For: 1.2.3.4\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n{close}\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(!answer.contains("1.2.3.4"), "{answer}");
    assert!(answer.contains("x-real-ip: 127.0.0.1\n") && answer.contains("x-forwarded-for: 127.0.0.1\n"), "{answer}");
    assert!(!answer.contains("upgrade") && !answer.contains("http2-settings"), "{answer}");

    // JSON error pages for API clients.
    let answer = raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: nowhere.localhost\r\nAccept: application/json\r\n{close}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.contains("{\"error\":{\"code\":\"unknown_host\""), "{answer}");
}

#[tokio::test]
async fn a_get_with_a_chunked_body_keeps_its_body_and_a_slow_upload_is_not_timed_out() {
    let upstream = echo_upstream().await;
    let (_ingress, addr) = start(
        IngressConfig { response_header_timeout: Duration::from_millis(300), ..Default::default() },
        vec![RouteSpec::new("web.localhost", vec![upstream])],
    )
    .await;
    let answer = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.contains("body: 5\n"), "{answer}");

    // An upload that takes longer than the response timeout: the timer starts when it ends.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 40\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.write_all(b"0123456789").await.unwrap();
    }
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert_eq!(status_of(&out), "200", "{out}");
    assert!(out.contains("body: 40\n"), "{out}");
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_off() {
    let upstream = echo_upstream().await;
    let (_ingress, addr) = start(
        IngressConfig { body_idle_timeout: Duration::from_millis(300), ..Default::default() },
        vec![RouteSpec::new("web.localhost", vec![upstream])],
    )
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly ten b",
        )
        .await
        .unwrap();
    let mut out = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut out)).await;
    assert!(read.is_ok(), "the stalled upload was still open after 10 s");
    assert!(!out.contains("body: 100"), "{out}");
}

#[tokio::test]
async fn the_proxy_protocol_from_a_trusted_balancer_names_the_client() {
    let upstream = echo_upstream().await;
    let (_ingress, addr) = start(
        IngressConfig {
            proxy_protocol: true,
            trusted_proxies: vec![parse_cidr("127.0.0.0/8").unwrap()],
            ..Default::default()
        },
        vec![RouteSpec::new("web.localhost", vec![upstream])],
    )
    .await;
    let answer = raw(
        addr,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.contains("x-forwarded-for: 203.0.113.9\n"), "{answer}");
    // A trusted peer that sends no header is refused (its connection closed), not misread.
    assert_eq!(raw(addr, b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n").await, "");
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let (_ingress, addr) = start(IngressConfig { max_connections_per_ip: 2, ..Default::default() }, vec![]).await;
    let _a = TcpStream::connect(addr).await.unwrap();
    let _b = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw(addr, b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n").await;
    assert_eq!(answer, "", "the third connection is closed unanswered");
    drop(_a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw(addr, b"GET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&answer), "404", "{answer}");
}

/// A test CA and a leaf certificate for `names`, as PEM (chain, key) plus the CA's DER.
fn certificate(names: &[&str], valid_days: i64) -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(valid_days);
    let leaf = params.signed_by(&key, &issuer).unwrap();
    (format!("{}{}", leaf.pem(), ca.pem()), key.serialize_pem(), ca.der().clone())
}

fn client_config(ca: &rustls::pki_types::CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, stream).await
}

#[tokio::test]
async fn tls_serves_by_sni_over_h2_and_http1_with_redirects_and_hsts() {
    let upstream = echo_upstream().await;
    let options = RouteOptions { https_redirect: true, hsts_max_age: Some(31_536_000), ..Default::default() };
    let (ingress, plain) = start(
        IngressConfig { https_port: Some(8443), ..Default::default() },
        vec![RouteSpec { host: "www.example.test".into(), endpoints: vec![upstream], options }],
    )
    .await;
    let (chain, key, ca) = certificate(&["www.example.test"], 30);
    let certificate = Certificate::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
    assert_eq!(certificate.names, vec!["www.example.test"]);
    ingress.set_certificates(vec![certificate]);
    let tls = start_tls(&ingress).await;

    // HTTP/2 by ALPN.
    let stream = tls_connect(tls, "www.example.test", client_config(&ca, &[b"h2", b"http/1.1"])).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(stream.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::get("https://www.example.test/h2?q=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["strict-transport-security"], "max-age=31536000");
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.starts_with("GET /h2?q=1\n"), "{text}");
    assert!(text.contains("host: www.example.test\n") && text.contains("x-forwarded-proto: https\n"), "{text}");
    assert!(text.contains("cookie: a=1; b=2\n"), "cookies joined for the HTTP/1.1 app: {text}");

    // HTTP/1.1 by ALPN, on TLS 1.2 too.
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut stream = tls_connect(tls, "www.example.test", Arc::new(config)).await.unwrap();
        stream.write_all(b"GET /h1 HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert_eq!(status_of(&out), "200", "{out}");
        assert!(out.contains("GET /h1\n"), "{out}");
    }

    // Resumption: a second connection with the same client config resumes the session.
    let config = client_config(&ca, &[b"http/1.1"]);
    for _ in 0..2 {
        let mut stream = tls_connect(tls, "www.example.test", config.clone()).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
    }
    let stream = tls_connect(tls, "www.example.test", config.clone()).await.unwrap();
    assert_eq!(stream.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));

    // A name without a certificate: the handshake fails.
    assert!(tls_connect(tls, "other.example.test", client_config(&ca, &[])).await.is_err());

    // Plain HTTP is redirected, keeping path and query; the HSTS header is for HTTPS only.
    let answer = raw(plain, b"GET /a?b=c HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&answer), "308", "{answer}");
    assert!(answer.contains("location: https://www.example.test:8443/a?b=c\r\n"), "{answer}");
    assert!(!answer.contains("strict-transport-security"), "{answer}");
    // ... except ACME's HTTP-01 challenges.
    ingress.set_http_challenge("tok3n", Some("tok3n.thumbprint".into()));
    let answer = raw(
        plain,
        b"GET /.well-known/acme-challenge/tok3n HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(answer.ends_with("tok3n.thumbprint"), "{answer}");
}

#[tokio::test]
async fn wildcards_cover_one_label_and_the_latest_expiry_wins() {
    let (chain, key, _) = certificate(&["*.apps.example.test"], 30);
    let wildcard = Certificate::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
    assert!(wildcard.covers("web.apps.example.test"));
    assert!(!wildcard.covers("a.web.apps.example.test"));
    assert!(!wildcard.covers("apps.example.test"));
    let (chain, key, _) = certificate(&["web.apps.example.test"], 10);
    let short = Certificate::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
    let (chain, key, _) = certificate(&["web.apps.example.test"], 60);
    let long = Certificate::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
    let ingress = Ingress::new(IngressConfig::default());
    ingress.set_certificates(vec![short, long.clone(), wildcard.clone()]);
    assert_eq!(ingress.certificate_for("web.apps.example.test").unwrap().not_after, long.not_after);
    assert_eq!(ingress.certificate_for("API.apps.example.test").unwrap().names, wildcard.names);
    assert!(ingress.certificate_for("example.test").is_none());
    // A key that is not the certificate's is refused.
    let (_, other_key, _) = certificate(&["x.example.test"], 1);
    let (chain, _, _) = certificate(&["y.example.test"], 1);
    assert!(Certificate::from_pem(chain.as_bytes(), other_key.as_bytes()).is_err());
    assert!(Certificate::from_pem(b"not pem", b"not pem").is_err());
}

#[tokio::test]
async fn grpc_trailers_pass_through_h2c_upstreams() {
    let upstream = grpc_upstream().await;
    let options = RouteOptions { upstream_h2c: true, ..Default::default() };
    let (_ingress, addr) = start(
        IngressConfig::default(),
        vec![RouteSpec { host: "grpc.localhost".into(), endpoints: vec![upstream], options }],
    )
    .await;
    // The client speaks h2c with prior knowledge to the plain listener.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let request = Request::post("http://grpc.localhost/pkg.Service/Method")
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers reached the client");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "fine");
        assert_eq!(collected.to_bytes(), Bytes::from("te=trailers;version=HTTP/2.0"));
    }
}

#[tokio::test]
async fn h2_rapid_reset_and_continuation_floods_end_the_connection_not_the_ingress() {
    let upstream = echo_upstream().await;
    let (_ingress, addr) = start(IngressConfig::default(), vec![RouteSpec::new("web.localhost", vec![upstream])]).await;

    // Rapid reset: open streams and cancel them at once, over and over.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut refused = false;
    for _ in 0..5_000 {
        let request = Request::get("http://web.localhost/").body(()).unwrap();
        match client.send_request(request, true) {
            Ok((response, _)) => drop(response),
            Err(_) => {
                refused = true;
                break;
            }
        }
        // Dropping the response future resets the stream (RST_STREAM CANCEL).
        match client.ready().await {
            Ok(ready) => client = ready,
            Err(_) => {
                refused = true;
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(refused || ended.is_ok(), "the ingress kept a connection that reset 5000 streams");

    // CONTINUATION flood: a header block that never ends.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    stream.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
    // HEADERS on stream 1 without END_HEADERS: `:method GET` (indexed, 0x82).
    stream.write_all(&frame(0x1, 0x1, 1, &[0x82])).await.unwrap();
    let filler = vec![0x40u8; 16_000]; // literal header fields, never completed
    let mut sent = 0usize;
    let mut closed = false;
    for _ in 0..2_000 {
        if stream.write_all(&frame(0x9, 0, 1, &filler)).await.is_err() {
            closed = true;
            break;
        }
        sent += filler.len();
    }
    if !closed {
        let mut buf = vec![0u8; 65536];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        closed = read.is_ok();
    }
    assert!(closed, "the connection took {sent} bytes of one header block and stayed open");

    // The ingress still serves.
    let answer = raw(addr, b"GET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&answer), "200", "{answer}");
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

#[tokio::test]
async fn metrics_count_requests_by_host_and_class() {
    let upstream = echo_upstream().await;
    let (ingress, addr) = start(
        IngressConfig::default(),
        vec![RouteSpec::new("web.localhost", vec![upstream]), RouteSpec::new("down.localhost", vec![])],
    )
    .await;
    for host in ["web.localhost", "web.localhost", "down.localhost"] {
        raw(addr, format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    }
    let (chain, key, _) = certificate(&["web.localhost"], 30);
    ingress.set_certificates(vec![Certificate::from_pem(chain.as_bytes(), key.as_bytes()).unwrap()]);
    let text = ingress.prometheus();
    assert!(text.contains("berth_ingress_requests_total{host=\"web.localhost\",class=\"2xx\"} 2\n"), "{text}");
    assert!(text.contains("berth_ingress_requests_total{host=\"down.localhost\",class=\"5xx\"} 1\n"), "{text}");
    assert!(text.contains("berth_ingress_request_duration_seconds_count{host=\"web.localhost\"} 2\n"), "{text}");
    assert!(text.contains("berth_ingress_in_flight{host=\"web.localhost\"} 0\n"), "{text}");
    assert!(text.contains("berth_ingress_certificate_expiry_timestamp_seconds{name=\"web.localhost\"} "), "{text}");
}

/// OpenSSL's OCSP responder on a free port, for the CA in `dir`; stopped when dropped.
struct Responder(std::process::Child);

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A certificate whose CA runs an OCSP responder (OpenSSL's, a real third party) is served with
/// the responder's "good" answer stapled, as `openssl s_client -status` sees it.
#[tokio::test]
async fn ocsp_responses_are_stapled_when_the_issuer_runs_a_responder() {
    use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!("berth-ocsp-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/");

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, "Berth OCSP test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), ca_key.serialize_pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["stapled.example".to_string()]).unwrap();
    params.serial_number = Some(0x1000u64.into());
    // AuthorityInfoAccess: SEQUENCE { SEQUENCE { id-ad-ocsp, [6] URI } }
    let mut access = vec![0x06, 0x08, 0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x86, url.len() as u8];
    access.extend_from_slice(url.as_bytes());
    let access = [&[0x30, access.len() as u8 + 2, 0x30, access.len() as u8][..], &access].concat();
    params.custom_extensions.push(CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], access));
    let leaf = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("index.txt"), "V\t491231235959Z\t\t1000\tunknown\t/CN=stapled\n").unwrap();
    let _responder = Responder(
        std::process::Command::new("openssl")
            .current_dir(&dir)
            .args(["ocsp", "-index", "index.txt", "-port", &port.to_string(), "-rsigner", "ca.pem"])
            .args(["-rkey", "ca.key", "-CA", "ca.pem", "-nmin", "10"])
            .stdout(std::fs::File::create(dir.join("responder.log")).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl is installed"),
    );
    // A responder that is down is retried after a minute: wait until it listens. (Not by
    // connecting: this responder serves one connection at a time and an empty one wedges it.)
    for _ in 0..100 {
        if std::fs::read_to_string(dir.join("responder.log")).unwrap_or_default().contains("ACCEPT") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The responder is on loopback, which only an operator's opt-in allows.
    let ingress = Ingress::new(IngressConfig { ocsp_private_responders: true, ..IngressConfig::default() });
    let certificate =
        Certificate::from_pem(format!("{}{}", leaf.pem(), ca.pem()).as_bytes(), key.serialize_pem().as_bytes())
            .unwrap();
    assert!(!certificate.ocsp_stapled());
    ingress.set_certificates(vec![certificate]);
    let tls = start_tls(&ingress).await;
    let mut seen = String::new();
    for _ in 0..100 {
        let output = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &tls.to_string(), "-servername", "stapled.example", "-status"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        seen = String::from_utf8_lossy(&output.stdout).into_owned();
        if seen.contains("Cert Status: good") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(seen.contains("OCSP Response Status: successful"), "{seen}");
    assert!(seen.contains("Cert Status: good"), "{seen}");
    assert!(ingress.certificate_for("stapled.example").unwrap().ocsp_stapled());
}
