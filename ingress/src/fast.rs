//! The HTTP/1.1 fast path: what most traffic is (keep-alive requests without a body, for apps
//! that speak HTTP/1.1) is proxied by one task per client connection that owns its upstream
//! connection directly, with the request and response heads parsed in place (`httparse`) and
//! written with one write each way. No per-request task hand-over, header map or body stream.
//!
//! Anything else hands the connection, with the bytes already read, to hyper (`proxy.rs`), which
//! serves it from then on: a request with a body, an upgrade, `Expect`, a `Connection` header
//! naming other headers, a target that is not origin-form, a head that does not parse or is too
//! large, a host that is not routed, redirected to HTTPS or served over h2c, HTTP/1.0, HTTP/2's
//! preface, and methods that are not idempotent (a failed attempt may be retried here). So every
//! refusal and error page stays hyper's and `proxy.rs`'s; this path only proxies, and answers
//! only for upstream failures, with the same pages.
//!
//! Invariants shared with the hyper path: the same hop-by-hop and forwarding-header rules, the
//! endpoint counted in flight from the pick until the response body is sent (draining), retries
//! only to endpoints of the table in use (and once more to the same endpoint when a pooled
//! connection turns out closed), and the same head, connect and response-head timeouts; a client
//! that stops reading is cut off below both (`stall`).
//!
//! Where it is stricter than hyper: a pooled connection on which anything arrived while idle is
//! not reused (a late second response would answer the next request); chunked bodies are checked
//! for bare LFs and control bytes, since they pass through as they are; a body the app ends by
//! closing is sent chunked, so a cut-off one shows as such; a response head that cannot be passed
//! on (ambiguous framing, an unasked-for upgrade) is a 502 without asking again.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::Ingress;
use crate::host::parse_authority;
use crate::proxy::{ACME_CHALLENGE_PREFIX, CLIENT_FORWARDING, Conn, HOP_BY_HOP, ProxyError, ResponseBody};
use crate::route_table::{Endpoint, InFlight};

/// Request headers parsed in place; a request with more goes to hyper.
const MAX_REQUEST_HEADERS: usize = 64;
/// Response headers parsed in place; an app that sends more gets a 502.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest response head read from an app (about hyper's client buffer).
const MAX_RESPONSE_HEAD: usize = 400 << 10;
/// Read size from apps.
const READ_CHUNK: usize = 16 << 10;
/// Read size from clients (request heads; bodies take the hyper path).
const CLIENT_READ: usize = 4 << 10;

/// A connection with bytes already read from it in front: what hyper is given on a hand-over.
pub(crate) struct Rewind<S> {
    read: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            if self.read.is_empty() {
                // Lets go of the fast path's buffer.
                self.read = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request the fast path takes: what is needed once the client's head is let go.
struct Plan {
    head_len: usize,
    /// The head to send upstream.
    upstream_head: Vec<u8>,
    host: String,
    conn: Conn,
    reply: Reply,
    json: bool,
    metrics: Arc<crate::RouteMetrics>,
    /// The endpoint picked, counted in flight; taken by the dispatch.
    first: Option<InFlight>,
    log: Option<(Method, String)>,
}

/// What shapes the response head the client gets, beyond the app's.
#[derive(Debug, Clone, Copy, Default)]
struct Reply {
    /// The request was a HEAD: whatever length is declared, no body follows.
    head_request: bool,
    /// The client did not ask to close.
    keep_alive: bool,
    /// Over TLS, with HSTS on for the host.
    hsts_max_age: Option<u64>,
}

/// What became of a head read from the client.
enum Head {
    /// Parsed and taken by the fast path.
    Fast(Box<Plan>),
    /// For hyper: the connection is handed over with everything read so far.
    HandOver,
    /// More bytes are needed.
    Partial,
    /// Complete, but larger than allowed: for hyper, which answers 431.
    TooLarge,
}

/// How an exchange left the client connection.
enum Ending {
    KeepAlive,
    /// Closed cleanly (the client or a close-delimited body asked for it).
    Close,
    /// Broken off (the app failed mid-body, or the client went away).
    Abort,
}

/// How a response body ends (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head read from an app and rewritten for the client (in `out`).
struct Answer {
    status: u16,
    framing: Framing,
    /// The app keeps the connection open after this response.
    reusable: bool,
}

/// Why an attempt to get a response head from an app failed.
enum AttemptError {
    /// The connection closed or broke before a response head: another attempt may succeed.
    Failed,
    /// The app answered with a head the proxy does not pass on (unparsable, too large, an
    /// unasked-for upgrade, ambiguous framing): asking again would only repeat the request.
    Refused,
    /// No head within the response timeout.
    Timeout,
}

impl Ingress {
    /// Serves HTTP/1.1 requests on `client` by the fast path until the client leaves (`None`) or a
    /// request needs hyper (`Some`: the connection with what was read of it).
    pub(crate) async fn serve_fast<S>(&self, mut client: S, conn: Conn) -> Option<Rewind<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // An idle connection holds its request buffer only; the others live for one exchange.
        let mut buf = BytesMut::with_capacity(CLIENT_READ);
        let head_timeout = self.config.header_read_timeout;
        loop {
            // The head: a client has `header_read_timeout` for it, kept-alive idle time included.
            let deadline = tokio::time::Instant::now() + head_timeout;
            let plan = loop {
                if !buf.is_empty() {
                    match self.plan(&buf, conn) {
                        Head::Fast(plan) => break plan,
                        Head::HandOver => return Some(Rewind { read: buf.freeze(), inner: client }),
                        Head::Partial | Head::TooLarge if buf.len() > self.config.max_header_bytes => {
                            return Some(Rewind { read: buf.freeze(), inner: client });
                        }
                        Head::Partial | Head::TooLarge => {}
                    }
                }
                buf.reserve(CLIENT_READ);
                match tokio::time::timeout_at(deadline, client.read_buf(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                    Ok(Ok(_)) => {}
                }
            };
            buf.advance(plan.head_len);
            match self.exchange(&mut client, *plan).await {
                Ending::KeepAlive => {}
                Ending::Close => {
                    let _ = client.shutdown().await;
                    return None;
                }
                // Dropped without a close_notify or a clean end: the client can tell a cut-off
                // response from a whole one.
                Ending::Abort => return None,
            }
        }
    }

    /// Reads the head in `buf`, and if the fast path takes it, plans the exchange: the upstream
    /// head and the endpoint picked (counted in flight).
    fn plan(&self, buf: &[u8], conn: Conn) -> Head {
        let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len > self.config.max_header_bytes => return Head::TooLarge,
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Head::Partial,
            Err(_) => return Head::HandOver,
        };
        let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
            return Head::HandOver;
        };
        // Targets made of URI path and query characters only (RFC 3986 `pchar`, `/`, `?`); hyper
        // decides about anything else (a fragment, `<`, `"`...).
        if !path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@/?".contains(&b)) {
            return Head::HandOver;
        }
        // Idempotent methods only (RFC 9110 9.2.2): a failed attempt may be sent again.
        if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE" | "PUT" | "TRACE") || !path.starts_with('/') {
            return Head::HandOver;
        }
        if !conn.tls && path.starts_with(ACME_CHALLENGE_PREFIX) {
            return Head::HandOver;
        }
        let trusted = self.config.trusts(conn.peer.ip());
        let mut host = None;
        let mut client_keep_alive = true;
        let mut json = None;
        let mut forwarded_for = None;
        let mut forwarded_proto = false;
        let mut forwarded_host = false;
        for header in req.headers.iter() {
            let name = header.name;
            if name.eq_ignore_ascii_case("host") {
                if host.replace(header.value).is_some() {
                    return Head::HandOver;
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                if header.value != b"0" {
                    return Head::HandOver;
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("expect")
            {
                return Head::HandOver;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in tokens(header.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        client_keep_alive = false;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                        // It names headers to drop: the hyper path does that.
                        return Head::HandOver;
                    }
                }
            } else if name.eq_ignore_ascii_case("accept") {
                // The first Accept header decides, as `wants_json` on the hyper path.
                json.get_or_insert_with(|| header.value.windows(16).any(|w| w == b"application/json"));
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                if forwarded_for.replace(header.value).is_some() {
                    return Head::HandOver;
                }
            } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
                forwarded_proto = true;
            } else if name.eq_ignore_ascii_case("x-forwarded-host") {
                forwarded_host = true;
            }
        }
        let Some(authority) = host.and_then(|h| std::str::from_utf8(h).ok()).and_then(parse_authority) else {
            return Head::HandOver;
        };
        let (metrics, hsts_max_age, first) = {
            let table = self.table.load();
            let Some(route) = table.routes.get(&authority.host) else {
                return Head::HandOver;
            };
            if (!conn.tls && route.options.https_redirect) || route.options.upstream_h2c {
                return Head::HandOver;
            }
            let Some(first) = route.pick(&[]) else {
                return Head::HandOver;
            };
            (route.metrics.clone(), route.options.hsts_max_age, first)
        };

        // The upstream head: the client's, less hop-by-hop headers and forwarding headers the
        // client may not set, plus Host and the forwarding headers (as `Ingress::set_forwarded`).
        let authority_text = authority.to_header();
        let peer_ip = crate::config::canonical(conn.peer.ip()).to_string();
        let mut head = Vec::with_capacity(head_len + 256);
        for part in [method.as_bytes(), b" ", path.as_bytes(), b" HTTP/1.1\r\nhost: ", authority_text.as_bytes()] {
            head.extend_from_slice(part);
        }
        head.extend_from_slice(b"\r\n");
        for header in req.headers.iter().filter(|h| !dropped_request_header(h.name, trusted)) {
            put_header(&mut head, header.name.as_bytes(), header.value);
        }
        // A trusted proxy's list is extended (if it is text); anyone else's is replaced.
        let earlier = forwarded_for.filter(|v| trusted && v.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t'));
        head.extend_from_slice(b"x-forwarded-for: ");
        if let Some(earlier) = earlier {
            head.extend_from_slice(earlier);
            head.extend_from_slice(b", ");
        }
        head.extend_from_slice(peer_ip.as_bytes());
        head.extend_from_slice(b"\r\n");
        if !trusted {
            put_header(&mut head, b"x-real-ip", peer_ip.as_bytes());
        }
        if !trusted || !forwarded_proto {
            put_header(&mut head, b"x-forwarded-proto", if conn.tls { b"https" } else { b"http" });
        }
        if !trusted || !forwarded_host {
            put_header(&mut head, b"x-forwarded-host", authority_text.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let log = self.config.access_log.then(|| {
            let path = path.split_once('?').map_or(path, |(path, _)| path).to_string();
            (Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET), path)
        });
        Head::Fast(Box::new(Plan {
            head_len,
            upstream_head: head,
            host: authority.host,
            conn,
            reply: Reply {
                head_request: method == "HEAD",
                keep_alive: client_keep_alive,
                hsts_max_age: hsts_max_age.filter(|_| conn.tls),
            },
            json: json.unwrap_or(false),
            metrics,
            first: Some(first),
            log,
        }))
    }

    /// One request: sent to the planned endpoint (or others, on failure), its response passed
    /// back. Returns whether the client connection may serve another request.
    async fn exchange<S>(&self, client: &mut S, mut plan: Plan) -> Ending
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let _in_flight = plan.metrics.start();
        let first = plan.first.take().expect("BUG: a plan is dispatched once");
        let (mut upstream_buf, mut out) = (BytesMut::new(), Vec::new());
        let dispatched = self.dispatch(&plan, first, &mut upstream_buf, &mut out).await;
        // Figures and the access log at the response head, as on the hyper path.
        let (status, error) = match &dispatched {
            Ok((_, _, answer)) => (answer.status, ""),
            Err(error) => (error.status().as_u16(), error.code()),
        };
        let latency = started.elapsed();
        plan.metrics.record(status, latency);
        if let Some((method, path)) = &plan.log {
            tracing::info!(
                target: "berth::access",
                client = %plan.conn.peer.ip(),
                tls = plan.conn.tls,
                host = plan.host.as_str(),
                %method,
                path,
                status,
                micros = latency.as_micros() as u64,
                error,
            );
        }
        let close = if plan.reply.keep_alive { Ending::KeepAlive } else { Ending::Close };
        let error = match dispatched {
            Ok((upstream, in_flight, answer)) => {
                match relay(client, upstream, answer, &mut upstream_buf, &mut out).await {
                    Relayed::Complete { reusable, upstream } => {
                        if let Some(upstream) = upstream.filter(|_| reusable) {
                            in_flight.0.put_raw_idle(upstream, self.config.max_idle_per_endpoint);
                        }
                        return close;
                    }
                    Relayed::UpstreamBroke => {
                        plan.metrics.upstream_error();
                        return Ending::Abort;
                    }
                    Relayed::ClientGone => return Ending::Abort,
                    // Nothing reached the client yet: it gets the proxy's page instead.
                    Relayed::Unsendable => ProxyError::UpstreamFailed,
                }
            }
            Err(error) => error,
        };
        if error.is_upstream() {
            plan.metrics.upstream_error();
        }
        out.clear();
        write_own_response(&mut out, error.into_response(plan.json), plan.reply);
        if client.write_all(&out).await.is_ok() && client.flush().await.is_ok() { close } else { Ending::Abort }
    }
}

impl Ingress {
    /// Sends the request to `first`, or where that fails before a response head, to the same
    /// endpoint on a fresh connection (if a pooled one had gone stale) and then to the other
    /// endpoints of the table in use. On success the client's response head is in `out` and any
    /// body bytes read with it in `upstream_buf`.
    async fn dispatch(
        &self,
        plan: &Plan,
        first: InFlight,
        upstream_buf: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<(TcpStream, InFlight, Answer), ProxyError> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut candidate = first;
        let mut upstream_failed = false;
        let mut pool = true;
        loop {
            let endpoint: &Endpoint = &candidate.0;
            let pooled = pool.then(|| endpoint.take_raw_idle(self.config.upstream_idle_timeout)).flatten();
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(stream) => Ok(stream),
                None => self.connect(endpoint.addr).await,
            };
            match stream {
                Ok(mut stream) => match self.attempt(&mut stream, plan, upstream_buf, out).await {
                    Ok(answer) => return Ok((stream, candidate, answer)),
                    Err(AttemptError::Timeout) => return Err(ProxyError::UpstreamTimeout),
                    Err(AttemptError::Refused) => return Err(ProxyError::UpstreamFailed),
                    // The app may have closed an idle connection as it was taken: once more on a
                    // fresh one before giving the endpoint up.
                    Err(AttemptError::Failed) if reused => {
                        upstream_failed = true;
                        pool = false;
                        continue;
                    }
                    Err(AttemptError::Failed) => upstream_failed = true,
                },
                Err(connect_error) => {
                    tracing::debug!(endpoint = %endpoint.addr, %connect_error, "connect failed, trying the next endpoint");
                }
            }
            tried.push(endpoint.addr);
            pool = true;
            match self.pick(&plan.host, &tried) {
                Some(next) => candidate = next,
                None if upstream_failed => return Err(ProxyError::UpstreamFailed),
                None => return Err(ProxyError::ConnectFailed(plan.host.clone())),
            }
        }
    }

    /// Writes the request head to `upstream` and reads the response head, which it rewrites
    /// for the client into `out`.
    async fn attempt(
        &self,
        upstream: &mut TcpStream,
        plan: &Plan,
        upstream_buf: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<Answer, AttemptError> {
        upstream_buf.clear();
        if upstream.write_all(&plan.upstream_head).await.is_err() {
            return Err(AttemptError::Failed);
        }
        let deadline = tokio::time::Instant::now() + self.config.response_header_timeout;
        loop {
            if !upstream_buf.is_empty() {
                match rewrite_response_head(upstream_buf, plan.reply, out) {
                    ResponseHead::Final(head_len, answer) => {
                        upstream_buf.advance(head_len);
                        return Ok(answer);
                    }
                    // An interim response (103 Early Hints and the like) is not passed on.
                    ResponseHead::Interim(head_len) => {
                        upstream_buf.advance(head_len);
                        continue;
                    }
                    ResponseHead::Partial if upstream_buf.len() > MAX_RESPONSE_HEAD => {
                        return Err(AttemptError::Refused);
                    }
                    ResponseHead::Partial => {}
                    ResponseHead::Malformed => return Err(AttemptError::Refused),
                }
            }
            upstream_buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, upstream.read_buf(upstream_buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(AttemptError::Failed),
                Ok(Ok(_)) => {}
                Err(_) => return Err(AttemptError::Timeout),
            }
        }
    }
}

/// What the start of an app's response is.
enum ResponseHead {
    /// A final head of this many bytes, rewritten for the client into `out`.
    Final(usize, Answer),
    /// An interim (1xx) head of this many bytes.
    Interim(usize),
    Partial,
    Malformed,
}

/// Parses the response head at the start of `buf` and, if it is final, writes the client's
/// version of it to `out`.
fn rewrite_response_head(buf: &[u8], reply: Reply, out: &mut Vec<u8>) -> ResponseHead {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return ResponseHead::Partial,
        Err(_) => return ResponseHead::Malformed,
    };
    let Some(status) = response.code else {
        return ResponseHead::Malformed;
    };
    match status {
        // 101 was not asked for (upgrades take the hyper path).
        101 => return ResponseHead::Malformed,
        100..=199 => return ResponseHead::Interim(head_len),
        _ => {}
    }
    // What frames the body and what the Connection header says.
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<bool> = None;
    let mut reusable = response.version == Some(1);
    // Headers the app's Connection header names: hop-by-hop too.
    let mut connection_named: Vec<&[u8]> = Vec::new();
    for header in response.headers.iter() {
        let (name, value) = (header.name, header.value);
        if name.eq_ignore_ascii_case("content-length") {
            // Digits only (`+5` parses as a number but is not a length); passed on as written.
            let digits = value.trim_ascii();
            let parsed = match std::str::from_utf8(digits) {
                Ok(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse::<u64>().ok(),
                _ => None,
            };
            let Some(parsed) = parsed else {
                return ResponseHead::Malformed;
            };
            if length.replace(parsed).is_some_and(|earlier| earlier != parsed) {
                return ResponseHead::Malformed;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // `chunked` may only be the final coding (RFC 9112 6.1): after it, in this header or a
            // later one, nothing can frame the body.
            if transfer_encoding == Some(true) {
                return ResponseHead::Malformed;
            }
            let codings: Vec<&[u8]> = tokens(value).collect();
            let chunked_at = codings.iter().position(|c| c.eq_ignore_ascii_case(b"chunked"));
            if chunked_at.is_some_and(|at| at + 1 != codings.len()) {
                return ResponseHead::Malformed;
            }
            transfer_encoding = Some(chunked_at.is_some());
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    connection_named.push(token);
                }
            }
        }
    }
    // Both framings at once is how responses are smuggled: refused, as hyper's client does.
    if length.is_some() && transfer_encoding.is_some() {
        return ResponseHead::Malformed;
    }
    let bodiless = reply.head_request || status == 204 || status == 304;
    let framing = match (bodiless, transfer_encoding, length) {
        (true, _, _) => Framing::Length(0),
        (false, Some(true), _) => Framing::Chunked,
        (false, Some(false), _) | (false, None, None) => Framing::UntilClose,
        (false, None, Some(length)) => Framing::Length(length),
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in response.headers.iter() {
        let name = header.name;
        // A chunked body passes through as it is, so its transfer codings are kept as named
        // (`gzip, chunked` stays so); any other framing is written afresh.
        if framing == Framing::Chunked && name.eq_ignore_ascii_case("transfer-encoding") {
            put_header(out, name.as_bytes(), header.value);
            continue;
        }
        if hop_by_hop(name)
            || (reply.hsts_max_age.is_some() && name.eq_ignore_ascii_case("strict-transport-security"))
            || connection_named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        put_header(out, name.as_bytes(), header.value);
    }
    if let Some(max_age) = reply.hsts_max_age {
        out.extend_from_slice(format!("strict-transport-security: max-age={max_age}\r\n").as_bytes());
    }
    if framing == Framing::UntilClose {
        // Sent on chunked, so the client can tell a body cut off by a failure from a whole one and
        // keep its connection; codings the app applied (`gzip`) are named before it.
        out.extend_from_slice(b"transfer-encoding: ");
        for header in response.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
            out.extend_from_slice(header.value);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"chunked\r\n");
    }
    if !reply.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ResponseHead::Final(head_len, Answer { status, framing, reusable })
}

/// How a response body's relay ended.
enum Relayed {
    /// All of it reached the client; the upstream connection, unless it was read to its close.
    Complete { reusable: bool, upstream: Option<TcpStream> },
    /// The app's side ended early or sent a malformed body: the client connection is closed.
    UpstreamBroke,
    /// The body was malformed from its first bytes, before anything reached the client.
    Unsendable,
    /// The client could not be written to.
    ClientGone,
}

/// Sends the head in `out` and the body after it to the client: the first part in the same
/// write as the head, the rest as it comes.
async fn relay<S>(
    client: &mut S,
    mut upstream: TcpStream,
    answer: Answer,
    upstream_buf: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Relayed
where
    S: AsyncWrite + Unpin,
{
    let mut remaining = match answer.framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunks = Chunked::default();
    let mut sent = false;
    loop {
        // Take what belongs to this body from what has been read.
        let take = match answer.framing {
            Framing::Length(_) => (upstream_buf.len() as u64).min(remaining) as usize,
            Framing::Chunked => match chunks.feed(upstream_buf) {
                Ok(n) => n,
                Err(()) if !sent => return Relayed::Unsendable,
                Err(()) => return Relayed::UpstreamBroke,
            },
            Framing::UntilClose => upstream_buf.len(),
        };
        if answer.framing == Framing::UntilClose && take > 0 {
            out.extend_from_slice(format!("{take:x}\r\n").as_bytes());
            out.extend_from_slice(&upstream_buf[..take]);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&upstream_buf[..take]);
        }
        upstream_buf.advance(take);
        if let Framing::Length(_) = answer.framing {
            remaining -= take as u64;
        }
        let done = match answer.framing {
            Framing::Length(_) => remaining == 0,
            Framing::Chunked => chunks.done(),
            Framing::UntilClose => false,
        };
        // Flushed every time: over TLS a write may leave records buffered, and a streamed
        // response (server-sent events) must not wait for the app's next piece.
        if !out.is_empty() {
            if client.write_all(out).await.is_err() || client.flush().await.is_err() {
                return Relayed::ClientGone;
            }
            out.clear();
            sent = true;
        }
        if done {
            // Bytes past the end of the response: the app is confused; its connection is not
            // used again.
            let reusable = answer.reusable && upstream_buf.is_empty();
            return Relayed::Complete { reusable, upstream: Some(upstream) };
        }
        upstream_buf.clear();
        upstream_buf.reserve(READ_CHUNK);
        match upstream.read_buf(upstream_buf).await {
            Ok(0) if answer.framing == Framing::UntilClose => {
                if client.write_all(b"0\r\n\r\n").await.is_err() || client.flush().await.is_err() {
                    return Relayed::ClientGone;
                }
                return Relayed::Complete { reusable: false, upstream: None };
            }
            Ok(0) | Err(_) => return Relayed::UpstreamBroke,
            Ok(_) => {}
        }
    }
}

/// The framing of a chunked body (RFC 9112 7.1), followed byte by byte to find its end; the
/// bytes themselves pass through unchanged.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum ChunkState {
    /// Reading a chunk size: its value and how many hex digits so far.
    #[default]
    Start,
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size.
    SizeSpace {
        size: u64,
    },
    /// Past the size: extensions (skipped) until CR.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    TrailerStart,
    Trailer {
        colon: bool,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

impl Chunked {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// How many bytes of `input` belong to the body (all of them, or up to its end).
    fn feed(&mut self, input: &[u8]) -> Result<usize, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            self.state = match self.state {
                Done => break,
                Data { left } => {
                    let n = (left.min((input.len() - i) as u64)) as usize;
                    i += n;
                    self.state = if left == n as u64 { DataCr } else { Data { left: left - n as u64 } };
                    continue;
                }
                Start => Size { size: hex(byte).ok_or(())?, digits: 1 },
                Size { size, digits } => match (byte, hex(byte)) {
                    (_, Some(value)) if digits < 16 => Size { size: size << 4 | value, digits: digits + 1 },
                    (b'\r', _) => SizeLf { size },
                    (b';', _) => Extension { size },
                    (b' ' | b'\t', _) => SizeSpace { size },
                    _ => return Err(()),
                },
                // Whitespace after the size leads only to an extension or the line's end.
                SizeSpace { size } => match byte {
                    b' ' | b'\t' => SizeSpace { size },
                    b';' => Extension { size },
                    b'\r' => SizeLf { size },
                    _ => return Err(()),
                },
                Extension { size } => match byte {
                    b'\r' => SizeLf { size },
                    _ if field_byte(byte) => Extension { size },
                    _ => return Err(()),
                },
                SizeLf { size } => match byte {
                    b'\n' if size == 0 => TrailerStart,
                    b'\n' => Data { left: size },
                    _ => return Err(()),
                },
                DataCr => (byte == b'\r').then_some(DataLf).ok_or(())?,
                DataLf => (byte == b'\n').then_some(Start).ok_or(())?,
                // A trailer line is `name: value`, without leading whitespace (obsolete folding),
                // ended by CRLF: a bare LF ends nothing here, since a client that takes it as a
                // line end would read what follows as another response.
                TrailerStart => match byte {
                    b'\r' => TrailerLf { empty: true },
                    b' ' | b'\t' | b':' => return Err(()),
                    _ if field_byte(byte) => Trailer { colon: false },
                    _ => return Err(()),
                },
                Trailer { colon } => match byte {
                    b'\r' if colon => TrailerLf { empty: false },
                    b':' => Trailer { colon: true },
                    _ if field_byte(byte) => Trailer { colon },
                    _ => return Err(()),
                },
                TrailerLf { empty } => match byte {
                    b'\n' if empty => Done,
                    b'\n' => TrailerStart,
                    _ => return Err(()),
                },
            };
            i += 1;
        }
        Ok(i)
    }
}

/// A byte that may appear in a chunk extension or a trailer line: visible, space, tab or
/// obs-text; no control byte (LF, NUL, DEL...).
fn field_byte(byte: u8) -> bool {
    byte == b'\t' || (0x20..0x7f).contains(&byte) || byte >= 0x80
}

fn hex(byte: u8) -> Option<u64> {
    (byte as char).to_digit(16).map(u64::from)
}

/// A status code's three digits.
fn itoa3(status: u16) -> [u8; 3] {
    let status = status.min(999);
    [b'0' + (status / 100) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8]
}

/// The comma-separated tokens of a header value (`Connection`, `Transfer-Encoding`), trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Hop-by-hop headers, `Upgrade` included (upgrades take the hyper path): never passed on, the
/// framing is written afresh.
fn hop_by_hop(name: &str) -> bool {
    name.eq_ignore_ascii_case("upgrade") || HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}

/// Request headers not copied upstream: hop-by-hop ones, Host and X-Forwarded-For (written
/// afresh), and from untrusted peers every forwarding header.
fn dropped_request_header(name: &str, trusted: bool) -> bool {
    hop_by_hop(name)
        || name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("x-forwarded-for")
        || (!trusted
            && (name.eq_ignore_ascii_case("x-forwarded-proto")
                || name.eq_ignore_ascii_case("x-forwarded-host")
                || CLIENT_FORWARDING.iter().any(|f| name.eq_ignore_ascii_case(f))))
}

/// One of the proxy's own answers (an error page) in HTTP/1.1 form.
fn write_own_response(out: &mut Vec<u8>, response: hyper::Response<ResponseBody>, reply: Reply) {
    let body = match response.body() {
        ResponseBody::Full(Some(body)) => body.clone(),
        _ => Bytes::new(),
    };
    let status: StatusCode = response.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(max_age) = reply.hsts_max_age {
        out.extend_from_slice(format!("strict-transport-security: max-age={max_age}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    if !reply.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !reply.head_request {
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A chunked body with chunks of `sizes`, an extension on the first, and a trailer if asked.
    fn chunked(sizes: &[usize], trailer: bool) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, size) in sizes.iter().filter(|s| **s > 0).enumerate() {
            body.extend_from_slice(format!("{size:X}{}\r\n", if i == 0 { ";a=b" } else { "" }).as_bytes());
            body.extend(std::iter::repeat_n(b'd', *size));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(if trailer { b"0\r\nx-sum: 9\r\n\r\n" as &[u8] } else { b"0\r\n\r\n" });
        body
    }

    proptest! {
        /// However a chunked body is split across reads, it ends exactly at its end and the bytes
        /// after it (the next response) are left alone.
        #[test]
        fn chunked_bodies_end_exactly_at_their_end(
            sizes in proptest::collection::vec(0usize..300, 0..12),
            trailer in any::<bool>(),
            cuts in proptest::collection::vec(1usize..64, 1..64),
        ) {
            let body = chunked(&sizes, trailer);
            let mut stream = body.clone();
            stream.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let mut decoder = Chunked::default();
            let (mut at, mut consumed) = (0, 0);
            for cut in cuts.iter().cycle() {
                if decoder.done() || at >= stream.len() {
                    break;
                }
                let piece = &stream[at..(at + cut).min(stream.len())];
                let n = decoder.feed(piece).unwrap();
                prop_assert!(n == piece.len() || decoder.done());
                consumed += n;
                at += piece.len();
            }
            prop_assert!(decoder.done());
            prop_assert_eq!(consumed, body.len());
        }
    }

    #[test]
    fn malformed_chunk_framing_is_refused() {
        for bad in [
            &b"g\r\n"[..],
            b"5\r\nhelloX",
            b"5\n",
            b"11111111111111111\r\n",
            b"5;x\n",
            b"5;x\x00\r\n",
            b"0\r\n\r\r",
            // A bare LF after the last chunk, then what would be read as a second response.
            b"0\r\n\nHTTP/1.1 200 OK\r\n",
            b"0\r\nx-a: 1\n\r\n",
            b"0\r\nx-a: \x7f\r\n\r\n",
            b"5 6\r\n",
            b"5 junk\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(()), "{}", String::from_utf8_lossy(bad));
        }
    }

    fn rewrite(response: &[u8], reply: Reply) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let head = rewrite_response_head(response, reply, &mut out);
        (head, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers_and_keep_the_rest() {
        let keep = Reply { keep_alive: true, ..Reply::default() };
        let (head, out) = rewrite(
            b"HTTP/1.1 201 Made\r\nConnection: keep-alive, x-private\r\nx-private: 1\r\nKeep-Alive: timeout=5\r\n\
              Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 3\r\n\r\nabc",
            keep,
        );
        let ResponseHead::Final(len, answer) = head else { panic!("a final head") };
        assert_eq!((len, answer.status, answer.framing, answer.reusable), (146, 201, Framing::Length(3), true));
        assert_eq!(out, "HTTP/1.1 201 Made\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 3\r\n\r\n");

        // HSTS replaces the app's; a client that closes is told so; HTTP/1.0 apps are not reused.
        let reply = Reply { head_request: true, keep_alive: false, hsts_max_age: Some(60) };
        let (head, out) =
            rewrite(b"HTTP/1.0 200 OK\r\nStrict-Transport-Security: max-age=1\r\nContent-Length: 9\r\n\r\n", reply);
        let ResponseHead::Final(_, answer) = head else { panic!("a final head") };
        assert_eq!((answer.framing, answer.reusable), (Framing::Length(0), false));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nstrict-transport-security: max-age=60\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn interim_unasked_upgrades_and_ambiguous_framing_are_told_apart() {
        let keep = Reply { keep_alive: true, ..Reply::default() };
        assert!(matches!(
            rewrite(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", keep).0,
            ResponseHead::Interim(40)
        ));
        assert!(matches!(rewrite(b"HTTP/1.1 101 Switching\r\n\r\n", keep).0, ResponseHead::Malformed));
        assert!(matches!(rewrite(b"HTTP/1.1 200 OK\r\nContent-", keep).0, ResponseHead::Partial));
        assert!(matches!(
            rewrite(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", keep).0,
            ResponseHead::Malformed
        ));
        assert!(matches!(rewrite(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", keep).0, ResponseHead::Malformed));
        assert!(matches!(rewrite(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", keep).0, ResponseHead::Malformed));
        // Chunked before another coding, in one header or across two.
        for te in
            [&b"Transfer-Encoding: chunked, gzip\r\n"[..], b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"]
        {
            let response = [&b"HTTP/1.1 200 OK\r\n"[..], te, b"\r\n"].concat();
            assert!(matches!(rewrite(&response, keep).0, ResponseHead::Malformed));
        }
        // No length: the body runs to the app's close, and reaches the client chunked, after the
        // app's own coding.
        let (head, out) = rewrite(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", keep);
        let ResponseHead::Final(_, answer) = head else { panic!("a final head") };
        assert_eq!((answer.framing, answer.reusable), (Framing::UntilClose, false));
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        let (_, out) = rewrite(b"HTTP/1.1 200 OK\r\n\r\n", Reply { keep_alive: false, ..keep });
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
        let (head, out) = rewrite(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", keep);
        assert!(matches!(head, ResponseHead::Final(_, Answer { framing: Framing::Chunked, .. })));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    }
}
