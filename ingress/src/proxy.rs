//! One proxied request, in phases: check (method, host, size), route (Host → candidates), prepare
//! (headers), dispatch (with retries where they are safe), respond (stream the body back, or
//! splice an upgraded connection).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::Ingress;
use crate::host::{Authority, parse_authority};
use crate::route_table::{BoxError, Endpoint, InFlight, RouteOptions, UpstreamBody};

/// How a client reached the ingress: its address (from the PROXY protocol header when a trusted
/// load balancer sent one) and whether over TLS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
}

/// Why the proxy answered itself instead of the app. Each cause has its own status and page.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a host name with an optional numeric port")]
    BadHost,
    #[error("CONNECT is not served here: this is a reverse proxy")]
    MethodNotAllowed,
    #[error("the request body is larger than the {0} bytes allowed")]
    BodyTooLarge(u64),
    #[error("no app is served at {0}")]
    UnknownHost(String),
    #[error("{0} has no ready replica right now")]
    NoReadyEndpoint(String),
    #[error("no replica of {0} accepted a connection")]
    ConnectFailed(String),
    #[error("the app closed the connection without answering")]
    UpstreamFailed,
    #[error("the app did not answer in time")]
    UpstreamTimeout,
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost | ProxyError::DuplicateHost | ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::NoReadyEndpoint(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed(_) | ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing_host",
            ProxyError::DuplicateHost => "duplicate_host",
            ProxyError::BadHost => "bad_host",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::UnknownHost(_) => "unknown_host",
            ProxyError::NoReadyEndpoint(_) => "no_ready_endpoint",
            ProxyError::ConnectFailed(_) => "connect_failed",
            ProxyError::UpstreamFailed => "upstream_failed",
            ProxyError::UpstreamTimeout => "upstream_timeout",
        }
    }

    pub(crate) fn is_upstream(&self) -> bool {
        matches!(self, ProxyError::ConnectFailed(_) | ProxyError::UpstreamFailed | ProxyError::UpstreamTimeout)
    }

    /// The error page: JSON for clients that ask for it (`Accept: application/json`), else HTML.
    pub(crate) fn into_response(self, json: bool) -> Response<ResponseBody> {
        let status = self.status();
        let (content_type, page) = if json {
            let body = json_string(&self.to_string());
            ("application/json", format!("{{\"error\":{{\"code\":\"{}\",\"message\":{body}}}}}\n", self.code()))
        } else {
            let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
            let message = html_escape(&self.to_string());
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
                     <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto\">\
                     <h1>{title}</h1><p>{message}</p><hr><small>berth ingress</small></body></html>\n"
                ),
            )
        };
        let mut response = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .header("x-berth-error", self.code());
        if matches!(self, ProxyError::MethodNotAllowed) {
            response = response.header(header::ALLOW, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
        }
        response.body(ResponseBody::Full(Some(Bytes::from(page)))).expect("BUG: static response parts are valid")
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A JSON string literal (the messages are ASCII text from this file and validated host names).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"))
}

/// Hop-by-hop headers (RFC 9110 7.6.1), except `Upgrade`, which an upgrade keeps. Shared with the
/// fast path.
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Forwarding headers an untrusted client may not set: apps (Spring, Go, Rails) believe them.
/// (`X-Forwarded-For`, `-Proto` and `-Host` are handled on their own.) Shared with the fast path.
pub(crate) const CLIENT_FORWARDING: [&str; 6] =
    ["forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server", "x-original-url"];

/// Removes hop-by-hop headers, including those the `Connection` header names. `Upgrade` (and the
/// `Connection: upgrade` that announces it) survive when the exchange is an upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == header::UPGRADE))
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// An HTTP/1.1 upgrade the proxy passes through (WebSocket and the like; not `h2c`, which would
/// bypass the proxy's view of requests).
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    req.version() == Version::HTTP_11
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|protocols| !protocols.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// The request target sent upstream: origin form (`/path?query`) for HTTP/1.1 apps, reusing the
/// client's target when it already is one; absolute form with `authority` for h2c apps.
fn upstream_uri(uri: &hyper::Uri, method: &Method, authority: Option<&HeaderValue>) -> Result<hyper::Uri, ProxyError> {
    let path_and_query = uri.path_and_query().map(|pq| pq.as_str());
    if authority.is_none() && uri.authority().is_none() && path_and_query.is_some_and(|pq| pq.starts_with('/')) {
        return Ok(uri.clone());
    }
    let path_and_query = match path_and_query {
        None | Some("") => "/".to_string(),
        Some("*") if method == Method::OPTIONS => "*".to_string(),
        Some(pq) if pq.starts_with('/') => pq.to_string(),
        // Absolute-form targets like `http://host?x` keep the query but need a path.
        Some(pq) => format!("/{pq}"),
    };
    match authority.map(|a| a.to_str()) {
        Some(Ok(authority)) => format!("http://{authority}{path_and_query}").parse(),
        Some(Err(_)) => return Err(ProxyError::BadHost),
        None => path_and_query.parse(),
    }
    .map_err(|_| ProxyError::BadHost)
}

/// Methods whose requests may be sent twice without changing their meaning (RFC 9110 9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// The authority a request is for: the target's (absolute form, HTTP/2 `:authority`), which
/// takes precedence over Host (RFC 9112 3.2.2), else the one Host header.
fn request_authority(req: &Request<Incoming>) -> Result<Authority, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    let text = match (req.uri().authority(), host) {
        (Some(authority), _) => authority.as_str(),
        (None, Some(host)) => host.to_str().map_err(|_| ProxyError::BadHost)?,
        (None, None) => return Err(ProxyError::MissingHost),
    };
    parse_authority(text).ok_or(ProxyError::BadHost)
}

/// How long a request waits for a pooled upstream connection to become ready before it is
/// dropped and the next one (or a new one) is tried.
const POOLED_READY_WAIT: Duration = Duration::from_millis(250);

pub(crate) const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

impl Ingress {
    pub(crate) async fn handle(&self, req: Request<Incoming>, conn: Conn) -> Response<ResponseBody> {
        let started = Instant::now();
        let json = wants_json(req.headers());
        let log = self.config.access_log.then(|| (req.method().clone(), req.uri().path().to_string()));
        let (response, host) = match self.route(req, conn, started).await {
            Ok((response, host)) => (response, Some(host)),
            Err(error) => (error.into_response(json), None),
        };
        if let Some((method, path)) = log {
            tracing::info!(
                target: "berth::access",
                client = %conn.peer.ip(),
                tls = conn.tls,
                host = host.as_deref().unwrap_or("-"),
                %method,
                path,
                status = response.status().as_u16(),
                micros = started.elapsed().as_micros() as u64,
                error = response.headers().get("x-berth-error").and_then(|v| v.to_str().ok()).unwrap_or(""),
            );
        }
        response
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        conn: Conn,
        started: Instant,
    ) -> Result<(Response<ResponseBody>, String), ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed);
        }
        let authority = request_authority(&req)?;
        if !conn.tls
            && let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX)
            && let Some(answer) = self.http_challenge(token)
        {
            let response = Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(ResponseBody::Full(Some(Bytes::from(answer))))
                .expect("BUG: static response parts are valid");
            return Ok((response, authority.host));
        }
        if let Some(length) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok())
            && length.parse::<u64>().is_ok_and(|n| n > self.config.max_body_bytes)
        {
            return Err(ProxyError::BodyTooLarge(self.config.max_body_bytes));
        }
        // One look at the table: the host's figures and options and the first endpoint, picked
        // (and counted in flight) before the table is let go.
        let (metrics, options, first) = {
            let table = self.table.load();
            let Some(route) = table.routes.get(&authority.host) else {
                return Err(ProxyError::UnknownHost(authority.host));
            };
            if !conn.tls && route.options.https_redirect {
                return Ok((self.redirect_to_https(&req, &authority), authority.host));
            }
            (route.metrics.clone(), route.options.clone(), route.pick(&[]))
        };
        let _in_flight = metrics.start();
        let json = wants_json(req.headers());
        let result = match first {
            Some(first) => self.forward(req, conn, &authority, &options, first).await,
            None => Err(ProxyError::NoReadyEndpoint(authority.host.clone())),
        };
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                if error.is_upstream() {
                    metrics.upstream_error();
                }
                error.into_response(json)
            }
        };
        if conn.tls
            && let Some(max_age) = options.hsts_max_age
            && let Ok(value) = HeaderValue::from_str(&format!("max-age={max_age}"))
        {
            response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, value);
        }
        metrics.record(response.status().as_u16(), started.elapsed());
        Ok((response, authority.host))
    }

    fn redirect_to_https(&self, req: &Request<Incoming>, authority: &Authority) -> Response<ResponseBody> {
        let port = match self.config.https_port {
            None | Some(443) => String::new(),
            Some(port) => format!(":{port}"),
        };
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        let location = format!("https://{}{port}{path}", authority.host);
        Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, location)
            .header(header::CACHE_CONTROL, "no-store")
            .body(ResponseBody::Full(None))
            .unwrap_or_else(|_| ProxyError::BadHost.into_response(false))
    }

    /// Sends a request for a routed host to `first`, or to other endpoints where retrying is safe.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: Conn,
        authority: &Authority,
        options: &RouteOptions,
        first: InFlight,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        // Prepare.
        let h2c = options.upstream_h2c;
        let upgrade = !h2c && wants_upgrade(&req);
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let from_h2 = req.version() == Version::HTTP_2;
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let grpc_trailers = h2c
            && headers.get_all(header::TE).iter().any(|v| v.to_str().is_ok_and(|v| v.eq_ignore_ascii_case("trailers")));
        strip_hop_by_hop(&mut headers, upgrade);
        if grpc_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let host_value = HeaderValue::try_from(authority.to_header()).map_err(|_| ProxyError::BadHost)?;
        self.set_forwarded(&mut headers, conn, &host_value);
        let uri = upstream_uri(&parts.uri, &parts.method, h2c.then_some(&host_value))?;
        if h2c {
            headers.remove(header::HOST);
        } else {
            headers.insert(header::HOST, host_value);
            if from_h2 {
                join_cookies(&mut headers);
            }
        }
        // A request without a body and with an idempotent method can be replayed after a failure
        // past the point of sending, as long as no response has reached the client.
        let replayable = body.is_end_stream() && idempotent(&parts.method);
        let (body, mut body_sent) = self.upstream_body(body);
        if !h2c && body.size_hint().exact().is_none() && !body.is_end_stream() {
            // A streamed body (chunked, or HTTP/2 without a length) goes upstream chunked, for every
            // method: without this hyper would send a GET's body as length 0 and drop it.
            headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        let mut body = Some(body);

        // Dispatch. Each retry picks from the table in use at that moment, skipping the endpoints
        // already tried, so a retry never goes to an endpoint that has been taken out meanwhile.
        let mut upstream_failed = false;
        let mut tried = Vec::new();
        let mut next = Some(first);
        while let Some(candidate) = next.take() {
            tried.push(candidate.0.addr);
            let retry = |tried: &[SocketAddr]| self.pick(&authority.host, tried);
            let mut sender = match self.upstream_connection(&candidate.0, h2c).await {
                Ok(sender) => sender,
                Err(connect_error) => {
                    tracing::debug!(endpoint = %candidate.0.addr, %connect_error, "connect failed, trying the next endpoint");
                    next = retry(&tried);
                    continue;
                }
            };
            let Some(attempt_body) = body.take().or_else(|| replayable.then(empty_body)) else {
                break;
            };
            let mut upstream_req = Request::new(attempt_body);
            *upstream_req.method_mut() = parts.method.clone();
            *upstream_req.uri_mut() = uri.clone();
            *upstream_req.headers_mut() = headers.clone();
            if h2c {
                *upstream_req.version_mut() = Version::HTTP_2;
            }
            // The response timer starts once the request body is sent (uploads take their time).
            let body_done = body_sent.take();
            let deadline = async {
                if let Some(done) = body_done {
                    let _ = done.await;
                }
                tokio::time::sleep(self.config.response_header_timeout).await;
            };
            let sent = tokio::select! {
                sent = sender.send(upstream_req) => sent,
                () = deadline => return Err(ProxyError::UpstreamTimeout),
            };
            match sent {
                Ok(response) => return Ok(self.respond(response, sender, candidate, downstream_upgrade)),
                Err(mut failed) => {
                    if let Some(unsent) = failed.take_message() {
                        // Nothing reached the app: any request may go elsewhere.
                        body = Some(unsent.into_body());
                    }
                    tracing::debug!(endpoint = %candidate.0.addr, error = %failed.error(), "upstream request failed");
                    upstream_failed = true;
                    next = retry(&tried);
                }
            }
        }
        Err(if upstream_failed {
            ProxyError::UpstreamFailed
        } else {
            ProxyError::ConnectFailed(authority.host.clone())
        })
    }

    /// The request body as sent upstream: bounded in size and in idle time, with a signal when it
    /// has been sent completely. Bodiless requests cost nothing here.
    fn upstream_body(&self, body: Incoming) -> (UpstreamBody, Option<oneshot::Receiver<()>>) {
        if body.is_end_stream() {
            return (empty_body(), None);
        }
        let (done, sent) = oneshot::channel();
        let guarded = GuardedBody {
            inner: body,
            idle_timeout: self.config.body_idle_timeout,
            idle: Box::pin(tokio::time::sleep(self.config.body_idle_timeout)),
            remaining: self.config.max_body_bytes,
            done: Some(done),
        };
        (guarded.boxed(), Some(sent))
    }

    /// The next endpoint for `key` from the current table, skipping `tried`, counted as in flight
    /// before the table is let go (so a drain cannot miss it).
    pub(crate) fn pick(&self, key: &str, tried: &[SocketAddr]) -> Option<InFlight> {
        self.table.load().routes.get(key)?.pick(tried)
    }

    /// Forwarding headers: from untrusted peers, every client-set forwarding header is replaced by
    /// what the ingress saw; a trusted proxy's are kept and extended.
    pub(crate) fn set_forwarded(&self, headers: &mut HeaderMap, conn: Conn, authority: &HeaderValue) {
        let xff = HeaderName::from_static("x-forwarded-for");
        let xfp = HeaderName::from_static("x-forwarded-proto");
        let xfh = HeaderName::from_static("x-forwarded-host");
        let peer_ip = crate::config::canonical(conn.peer.ip()).to_string();
        let trusted = self.config.trusts(conn.peer.ip());
        let forwarded_for = match headers.get(&xff).and_then(|v| v.to_str().ok()) {
            Some(earlier) if trusted => HeaderValue::try_from(format!("{earlier}, {peer_ip}")),
            _ => HeaderValue::try_from(peer_ip),
        };
        let Ok(forwarded_for) = forwarded_for else {
            return;
        };
        if !trusted {
            headers.remove(&xfp);
            headers.remove(&xfh);
            for name in CLIENT_FORWARDING {
                headers.remove(name);
            }
            // From an untrusted peer the list is the peer alone.
            headers.insert(HeaderName::from_static("x-real-ip"), forwarded_for.clone());
        }
        headers.insert(xff, forwarded_for);
        if !headers.contains_key(&xfp) {
            headers.insert(xfp, HeaderValue::from_static(if conn.tls { "https" } else { "http" }));
        }
        if !headers.contains_key(&xfh) {
            headers.insert(xfh, authority.clone());
        }
    }

    /// A pooled connection that is still usable, or a new one.
    async fn upstream_connection(&self, endpoint: &Endpoint, h2c: bool) -> Result<Sender, ConnectError> {
        if h2c {
            let mut shared = endpoint.h2.lock().await;
            if let Some(sender) = shared.as_ref()
                && !sender.is_closed()
                && sender.is_ready()
            {
                return Ok(Sender::H2(sender.clone()));
            }
            let stream = self.connect(endpoint.addr).await?;
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
            let addr = endpoint.addr;
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%addr, %error, "upstream h2c connection ended with an error");
                }
            });
            *shared = Some(sender.clone());
            return Ok(Sender::H2(sender));
        }
        while let Some(mut pooled) = endpoint.take_idle(self.config.upstream_idle_timeout) {
            // A pooled connection is ready at once, or as soon as its task has seen the end of
            // the last exchange; one still writing an earlier request body (the app answered an
            // upload early) may never be, so it is not waited for long.
            if let Ok(Ok(())) = tokio::time::timeout(POOLED_READY_WAIT, pooled.ready()).await {
                return Ok(Sender::H1(pooled));
            }
        }
        let stream = self.connect(endpoint.addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        let addr = endpoint.addr;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream connection ended with an error");
            }
        });
        Ok(Sender::H1(sender))
    }

    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let stream = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn respond(
        &self,
        mut response: Response<Incoming>,
        sender: Sender,
        in_flight: InFlight,
        downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<ResponseBody> {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(downstream) = downstream_upgrade
        {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                // The endpoint stays in flight for the whole stream, so draining waits for it.
                let _in_flight = in_flight;
                match tokio::try_join!(downstream, upstream) {
                    Ok((down, up)) => {
                        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut TokioIo::new(up)).await;
                    }
                    Err(error) => tracing::debug!(%error, "upgrade failed"),
                }
            });
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, ResponseBody::Full(None));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let pool = PoolReturn {
            sender: match sender {
                Sender::H1(sender) => Some(sender),
                Sender::H2(_) => None,
            },
            in_flight,
            max_idle: self.config.max_idle_per_endpoint,
        };
        Response::from_parts(parts, ResponseBody::Upstream { inner: body, pool: Some(pool) })
    }
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 app expects one (RFC 9113 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes()).collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// A connection to an endpoint: HTTP/1.1 (one request at a time, pooled) or h2c (multiplexed).
enum Sender {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

impl Sender {
    async fn send(
        &mut self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>> {
        match self {
            Sender::H1(sender) => sender.try_send_request(request).await,
            Sender::H2(sender) => sender.try_send_request(request).await,
        }
    }
}

fn empty_body() -> UpstreamBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Handshake(#[from] hyper::Error),
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the client sent nothing of the request body for {0:?}")]
    Idle(Duration),
    #[error("the request body is larger than allowed")]
    TooLarge,
}

/// A request body on its way upstream: cut off when it stalls or exceeds the size limit, and
/// signalling when it is complete (or abandoned) so the response timer can start.
struct GuardedBody {
    inner: Incoming,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    remaining: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.done.take();
                        return Poll::Ready(Some(Err(BodyError::TooLarge.into())));
                    }
                    this.remaining -= len;
                }
                let deadline = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.done.take().map(|done| done.send(()));
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.done.take();
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Pending => {
                if this.idle.as_mut().poll(cx).is_ready() {
                    this.done.take();
                    return Poll::Ready(Some(Err(BodyError::Idle(this.idle_timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Gives the upstream connection back to its endpoint's pool once the response body is complete,
/// and ends the request's in-flight count.
pub(crate) struct PoolReturn {
    sender: Option<http1::SendRequest<UpstreamBody>>,
    in_flight: InFlight,
    max_idle: usize,
}

impl PoolReturn {
    fn finish(self) {
        if let Some(sender) = self.sender {
            let endpoint: Arc<Endpoint> = self.in_flight.0.clone();
            endpoint.put_idle(sender, self.max_idle);
        }
    }
}

/// The body the ingress sends downstream.
pub(crate) enum ResponseBody {
    Full(Option<Bytes>),
    Upstream { inner: Incoming, pool: Option<PoolReturn> },
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream { inner, pool } => {
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(pool) = pool.take() {
                            pool.finish();
                        }
                    }
                    // A broken upstream body: the connection is not reusable.
                    Poll::Ready(Some(Err(_))) => drop(pool.take()),
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(data) => data.is_none(),
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Bodies that are empty from the start (HEAD, 204, 304) are never polled to their end.
        if let ResponseBody::Upstream { inner, pool } = self
            && inner.is_end_stream()
            && let Some(pool) = pool.take()
        {
            pool.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_with_those_connection_names() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get(header::UPGRADE).is_none());
        assert!(headers.get("x-kept").is_some());
    }

    #[test]
    fn upgrades_keep_their_upgrade_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(headers.get(header::CONNECTION).unwrap(), "upgrade");
    }

    fn conn(peer: &str, tls: bool) -> Conn {
        Conn { peer: peer.parse().unwrap(), tls }
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let ingress = Ingress::new(Default::default());
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert("forwarded", HeaderValue::from_static("for=1.2.3.4;proto=https"));
        headers.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        headers.insert("x-original-url", HeaderValue::from_static("/admin"));
        ingress.set_forwarded(
            &mut headers,
            conn("10.0.0.7:5555", false),
            &HeaderValue::from_static("web.localhost:8080"),
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "web.localhost:8080");
        assert_eq!(headers["x-real-ip"], "10.0.0.7");
        assert!(headers.get("forwarded").is_none());
        assert!(headers.get("x-original-url").is_none());
        let mut headers = HeaderMap::new();
        ingress.set_forwarded(&mut headers, conn("10.0.0.7:5555", true), &HeaderValue::from_static("web.example.com"));
        assert_eq!(headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn trusted_forwarding_headers_are_extended() {
        let ingress = Ingress::new(crate::IngressConfig {
            trusted_proxies: vec![crate::config::parse_cidr("10.0.0.0/24").unwrap()],
            ..Default::default()
        });
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert("forwarded", HeaderValue::from_static("for=1.2.3.4;proto=https"));
        ingress.set_forwarded(&mut headers, conn("10.0.0.7:5555", false), &HeaderValue::from_static("web.localhost"));
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["forwarded"], "for=1.2.3.4;proto=https");
    }

    #[test]
    fn split_cookies_are_joined_for_http1() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut headers);
        assert_eq!(headers.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(headers[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn error_pages_speak_json_when_asked() {
        let response = ProxyError::UnknownHost("x\"y".into()).into_response(true);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let ResponseBody::Full(Some(body)) = response.body() else { panic!("a full body") };
        let text = std::str::from_utf8(body).unwrap();
        assert_eq!(text, "{\"error\":{\"code\":\"unknown_host\",\"message\":\"no app is served at x\\\"y\"}}\n");
    }
}
