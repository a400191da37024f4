//! The HTTP/1.1 fast path against apps that answer byte for byte as scripted: framing (chunked,
//! close-delimited, smuggling attempts), stale pooled connections, forwarding headers, and the
//! hand-over to hyper in the middle of a kept-alive (and pipelined) connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_ingress::{Ingress, IngressConfig, RouteSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted app saw: each request head as received, and how many connections it accepted.
#[derive(Default)]
struct Seen {
    heads: Vec<String>,
    connections: usize,
}

/// What a scripted app does with a request: the bytes it answers, then bytes it sends a little
/// later unasked (if any), and whether it then closes the connection (without saying so).
struct Script {
    answer: Vec<u8>,
    later: Option<Vec<u8>>,
    close: bool,
}

fn answer(bytes: &[u8]) -> Script {
    Script { answer: bytes.to_vec(), later: None, close: false }
}

/// An app that answers the `n`th request on a connection (from 0) with `script(head, n)`.
/// Request bodies are read by `Content-Length`.
async fn scripted(script: fn(&str, usize) -> Script) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            record.lock().unwrap().connections += 1;
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    record.lock().unwrap().heads.push(head.clone());
                    let Script { answer, later, close } = script(&head, answered);
                    answered += 1;
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                    if let Some(later) = later {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ = stream.write_all(&later).await;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn ingress(config: IngressConfig, host: &str, app: SocketAddr) -> SocketAddr {
    let ingress = Ingress::new(config);
    ingress.apply(vec![RouteSpec::new(host, vec![app])]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ingress.serve(listener));
    addr
}

/// Reads what arrives next (within 10 s) onto `buf`; 0 at the close.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.unwrap().unwrap();
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// One response read from `stream` (head and body by `Content-Length`, chunked, or to the close):
/// the status, the head in lower case, and the body as sent (chunk framing included).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> (u16, String, Vec<u8>) {
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        assert!(read_more(stream, buf).await > 0, "closed before a response head: {buf:?}");
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    let status = head[9..12].parse().unwrap();
    let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")).map(|v| v.parse::<usize>().unwrap());
    let body_end = if head_request || status == 204 || status == 304 {
        0
    } else if let Some(length) = length {
        while buf.len() < length {
            assert!(read_more(stream, buf).await > 0, "closed inside a body");
        }
        length
    } else if head.contains("transfer-encoding: chunked") {
        // Enough for these tests: nothing follows a chunked response, so it ends where the last
        // chunk and the trailers' blank line have arrived.
        while !(buf.ends_with(b"\r\n\r\n") && buf.windows(5).any(|w| w == b"\r\n0\r\n")) {
            assert!(read_more(stream, buf).await > 0, "closed inside a chunked body");
        }
        buf.len()
    } else {
        while read_more(stream, buf).await > 0 {}
        buf.len()
    };
    let body = buf.drain(..body_end).collect();
    (status, head, body)
}

#[tokio::test]
async fn a_kept_alive_pipelined_connection_moves_to_hyper_at_a_request_with_a_body_and_keeps_its_order() {
    let (app, seen) = scripted(|head, _| {
        let line = head.lines().next().unwrap().to_string();
        answer(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{line}", line.len()).as_bytes())
    })
    .await;
    let addr = ingress(IngressConfig::default(), "web.localhost", app).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Three requests in one write: the fast path takes the first, hyper the POST and what follows.
    stream
        .write_all(
            b"GET /a HTTP/1.1\r\nhost: web.localhost\r\n\r\n\
              POST /b HTTP/1.1\r\nhost: web.localhost\r\ncontent-length: 5\r\n\r\nhello\
              GET /c HTTP/1.1\r\nhost: web.localhost\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    for expected in ["GET /a HTTP/1.1", "POST /b HTTP/1.1", "GET /c HTTP/1.1"] {
        let (status, _, body) = read_response(&mut stream, &mut buf, false).await;
        assert_eq!((status, String::from_utf8(body).unwrap().as_str()), (200, expected));
    }
    let heads = seen.lock().unwrap().heads.clone();
    assert_eq!(heads.len(), 3);
    assert!(heads[1].to_ascii_lowercase().contains("content-length: 5"), "{}", heads[1]);
}

#[tokio::test]
async fn chunked_close_delimited_and_bodiless_responses_pass_through_whole() {
    let (app, seen) = scripted(|head, _| {
        let path = head.split(' ').nth(1).unwrap();
        match path {
            "/chunked" => {
                // Many chunks of varied sizes with an extension and a trailer: the body spans
                // many reads on the ingress's side.
                let mut body =
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n".to_vec();
                for size in (1..600).map(|i| (i * 37) % 997 + 1) {
                    body.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                    body.extend(std::iter::repeat_n(b'x', size));
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"0\r\nx-checksum: 1\r\n\r\n");
                answer(&body)
            }
            "/close" => Script {
                close: true,
                ..answer(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the app closes")
            },
            "/head" => answer(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
            "/smuggle" => {
                answer(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
            }
            "/lf-trailer" => {
                answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\nHTTP/1.1 200 OK\r\n\r\n")
            }
            _ => answer(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
        }
    })
    .await;
    let addr = ingress(IngressConfig::default(), "web.localhost", app).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();

    stream.write_all(b"GET /chunked HTTP/1.1\r\nhost: web.localhost\r\n\r\n").await.unwrap();
    let (status, head, body) = read_response(&mut stream, &mut buf, false).await;
    assert_eq!(status, 200);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let expected_data: usize = 5 + (1..600).map(|i| (i * 37) % 997 + 1).sum::<usize>();
    let text = String::from_utf8(body).unwrap();
    assert!(text.starts_with("5;name=value\r\nhello\r\n") && text.ends_with("0\r\nx-checksum: 1\r\n\r\n"));
    assert_eq!(text.matches('x').count() - 1, expected_data - 5, "every data byte arrived (the trailer has one x)");

    // A HEAD's declared length is not waited for.
    stream.write_all(b"HEAD /head HTTP/1.1\r\nhost: web.localhost\r\n\r\n").await.unwrap();
    let (status, head, _) = read_response(&mut stream, &mut buf, true).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-length: 1000"), "{head}");

    // A response with both framings is refused with a 502, and not asked for again (the
    // connection stays usable).
    stream
        .write_all(b"GET /smuggle HTTP/1.1\r\nhost: web.localhost\r\naccept: application/json\r\n\r\n")
        .await
        .unwrap();
    let (status, head, body) = read_response(&mut stream, &mut buf, false).await;
    assert_eq!(status, 502, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("upstream_failed"));
    let asked = seen.lock().unwrap().heads.iter().filter(|h| h.contains("/smuggle")).count();
    assert_eq!(asked, 1, "a refused response is not asked for again");

    // A body that ends with the app's connection reaches the client chunked, so the client can
    // tell it whole from cut off, and keeps its connection.
    stream.write_all(b"GET /close HTTP/1.1\r\nhost: web.localhost\r\n\r\n").await.unwrap();
    let (status, head, body) = read_response(&mut stream, &mut buf, false).await;
    assert_eq!((status, body.as_slice()), (200, &b"14\r\nuntil the app closes\r\n0\r\n\r\n"[..]));
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("connection: close"), "{head}");

    // A chunked body whose trailer section ends in a bare LF is not passed on: what follows it
    // would read as a second response to a lenient client. Caught before anything was sent, it
    // is a 502, and the connection stays usable.
    stream.write_all(b"GET /lf-trailer HTTP/1.1\r\nhost: web.localhost\r\n\r\n").await.unwrap();
    let (status, head, body) = read_response(&mut stream, &mut buf, false).await;
    assert_eq!(status, 502, "{head}");
    assert!(!String::from_utf8_lossy(&body).contains("HTTP/1.1 200"));
    stream.write_all(b"HEAD /head HTTP/1.1\r\nhost: web.localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut stream, &mut buf, true).await.0, 200);
}

#[tokio::test]
async fn pooled_connections_are_reused_but_not_once_the_app_closed_or_spoke_out_of_turn() {
    // The app closes every connection after its second response, without saying so; after `/s1`
    // it sends a stray response 20 ms after the real one.
    let (app, seen) = scripted(|head, n| {
        let path = head.split(' ').nth(1).unwrap().to_string();
        let body = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", &path[1..3]);
        let stray = (path == "/s1").then(|| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nXX".to_vec());
        Script { answer: body.into_bytes(), later: stray, close: n == 1 }
    })
    .await;
    let addr = ingress(IngressConfig::default(), "web.localhost", app).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    for path in ["/a1", "/a2", "/b1", "/b2", "/s1", "/c1"] {
        stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: web.localhost\r\n\r\n").as_bytes()).await.unwrap();
        let (status, _, body) = read_response(&mut stream, &mut buf, false).await;
        assert_eq!((status, String::from_utf8(body).unwrap()), (200, path[1..3].to_string()));
        // Lets the app's close or stray bytes arrive before the next request takes the connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.heads.len(), 6, "each request reached the app once");
    // a1 a2 | b1 b2 | s1 (then the stray bytes) | c1
    assert_eq!(seen.connections, 4, "two requests per connection, and none after stray bytes");
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_clients_are_replaced_and_from_trusted_ones_extended() {
    let script: fn(&str, usize) -> Script = |_, _| answer(b"HTTP/1.1 204 No Content\r\n\r\n");
    let request = b"GET /x?y=1 HTTP/1.1\r\nHost: Web.Localhost:8080\r\nX-Forwarded-For: 6.6.6.6\r\n\
        Forwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nConnection: keep-alive\r\n\
        Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Custom: kept\r\n\r\n";
    let head_seen = |config: IngressConfig| async move {
        let (app, seen) = scripted(script).await;
        let addr = ingress(config, "web.localhost", app).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let (status, _, _) = read_response(&mut stream, &mut Vec::new(), false).await;
        assert_eq!(status, 204);
        let head = seen.lock().unwrap().heads[0].to_ascii_lowercase();
        let mut lines: Vec<String> = head.lines().skip(1).filter(|l| !l.is_empty()).map(str::to_string).collect();
        lines.sort();
        (head.lines().next().unwrap().to_string(), lines)
    };

    let (line, headers) = head_seen(IngressConfig::default()).await;
    assert_eq!(line, "get /x?y=1 http/1.1");
    assert_eq!(
        headers,
        [
            "host: web.localhost:8080",
            "x-custom: kept",
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-host: web.localhost:8080",
            "x-forwarded-proto: http",
            "x-real-ip: 127.0.0.1",
        ]
    );

    let trusted = IngressConfig {
        trusted_proxies: vec![berth_ingress::parse_cidr("127.0.0.1").unwrap()],
        ..IngressConfig::default()
    };
    let (_, headers) = head_seen(trusted).await;
    assert_eq!(
        headers,
        [
            "forwarded: for=1.2.3.4",
            "host: web.localhost:8080",
            "x-custom: kept",
            "x-forwarded-for: 6.6.6.6, 127.0.0.1",
            "x-forwarded-host: web.localhost:8080",
            "x-forwarded-proto: https",
            "x-real-ip: 1.2.3.4",
        ]
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_lets_the_app_go() {
    // 64 MiB: more than the socket buffers on both sides hold.
    let (app, _) = scripted(|_, _| {
        let mut response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 64 << 20).into_bytes();
        response.resize(response.len() + (64 << 20), b'x');
        answer(&response)
    })
    .await;
    let ingress = Ingress::new(IngressConfig { idle_timeout: Duration::from_millis(300), ..IngressConfig::default() });
    ingress.apply(vec![RouteSpec::new("web.localhost", vec![app])]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ingress.clone().serve(listener));

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /big HTTP/1.1\r\nhost: web.localhost\r\n\r\n").await.unwrap();
    // The client reads nothing. The request is in flight while the ingress still gets to write...
    let started = tokio::time::Instant::now();
    while ingress.in_flight(app) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the request never reached the app");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and stops counting once the client has taken nothing for the limit: a drain is not held.
    let report = ingress.drain(&[app], Duration::from_secs(20)).await;
    assert!(report.still_in_flight.is_empty(), "{report:?}");
    drop(stream);
}
