//! One proxied request, in phases: route (Host → candidates), prepare (headers), dispatch (with
//! retries where they are safe), respond (stream the body back, or splice an upgraded connection).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::Ingress;
use crate::route_table::{Endpoint, InFlight, UpstreamBody, host_key};

/// Why the proxy answered itself instead of the app. Each cause has its own status and page.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("the request has no Host header")]
    MissingHost,
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
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::NoReadyEndpoint(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed(_) | ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing_host",
            ProxyError::UnknownHost(_) => "unknown_host",
            ProxyError::NoReadyEndpoint(_) => "no_ready_endpoint",
            ProxyError::ConnectFailed(_) => "connect_failed",
            ProxyError::UpstreamFailed => "upstream_failed",
            ProxyError::UpstreamTimeout => "upstream_timeout",
        }
    }

    fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
        let message = html_escape(&self.to_string());
        let page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto\">\
             <h1>{title}</h1><p>{message}</p><hr><small>berth ingress</small></body></html>\n"
        );
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store")
            .header("x-berth-error", self.code())
            .body(ResponseBody::Full(Some(Bytes::from(page))))
            .expect("BUG: static response parts are valid")
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names. `Upgrade` (and the
/// `Connection: upgrade` that announces it) survive when the exchange is an upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Methods whose requests may be sent twice without changing their meaning (RFC 9110 9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

impl Ingress {
    pub(crate) async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        // Route.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let Some(host) = host else {
            return ProxyError::MissingHost.into_response();
        };
        let key = host_key(&host);
        // One look at the table: the host's figures and the first endpoint, picked (and counted
        // in flight) before the table is let go.
        let (metrics, first) = {
            let table = self.table.load();
            let Some(route) = table.routes.get(&key) else {
                return ProxyError::UnknownHost(key).into_response();
            };
            (route.metrics.clone(), route.pick(&[]))
        };
        let started = std::time::Instant::now();
        let response = match first {
            Some(first) => self.forward(req, peer, host, key, first).await,
            None => ProxyError::NoReadyEndpoint(key).into_response(),
        };
        metrics.record(response.status().as_u16(), started.elapsed());
        response
    }

    /// Sends a request for a routed host to `first`, or to other endpoints where retrying is safe.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        host: String,
        key: String,
        first: InFlight,
    ) -> Response<ResponseBody> {
        // Prepare.
        let upgrade = wants_upgrade(req.headers());
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, upgrade);
        self.set_forwarded(&mut headers, peer, &host);
        let uri: hyper::Uri = parts.uri.path_and_query().map_or_else(
            || "/".parse().expect("BUG: / is a URI"),
            |pq| pq.as_str().parse().expect("BUG: a path-and-query is a URI"),
        );
        // A request without a body and with an idempotent method can be replayed after a failure
        // past the point of sending, as long as no response has reached the client.
        let replayable = body.is_end_stream() && idempotent(&parts.method);
        let mut body: Option<UpstreamBody> = Some(body.boxed());

        // Dispatch. Each retry picks from the table in use at that moment, skipping the endpoints
        // already tried, so a retry never goes to an endpoint that has been taken out meanwhile.
        let mut upstream_failed = false;
        let mut tried = Vec::new();
        let mut next = Some(first);
        while let Some(candidate) = next.take() {
            tried.push(candidate.0.addr);
            let retry = |tried: &[std::net::SocketAddr]| self.pick(&key, tried).ok().flatten();
            let mut sender = match self.upstream_connection(&candidate.0).await {
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
            let sent = tokio::time::timeout(self.config.response_header_timeout, sender.try_send_request(upstream_req));
            match sent.await {
                Ok(Ok(response)) => return self.respond(response, sender, candidate, downstream_upgrade),
                Ok(Err(mut failed)) => {
                    if let Some(unsent) = failed.take_message() {
                        // Nothing reached the app: any request may go elsewhere.
                        body = Some(unsent.into_body());
                    }
                    tracing::debug!(endpoint = %candidate.0.addr, error = %failed.error(), "upstream request failed");
                    upstream_failed = true;
                    next = retry(&tried);
                }
                Err(_elapsed) => return ProxyError::UpstreamTimeout.into_response(),
            }
        }
        if upstream_failed { ProxyError::UpstreamFailed } else { ProxyError::ConnectFailed(key) }.into_response()
    }

    /// The next endpoint for `key` from the current table, skipping `tried`, counted as in flight
    /// before the table is let go (so a drain cannot miss it). `Err` when no app has the host.
    fn pick(&self, key: &str, tried: &[std::net::SocketAddr]) -> Result<Option<InFlight>, ProxyError> {
        let table = self.table.load();
        match table.routes.get(key) {
            Some(route) => Ok(route.pick(tried)),
            None => Err(ProxyError::UnknownHost(key.to_string())),
        }
    }

    fn set_forwarded(&self, headers: &mut HeaderMap, peer: SocketAddr, host: &str) {
        let xff = HeaderName::from_static("x-forwarded-for");
        let xfp = HeaderName::from_static("x-forwarded-proto");
        let xfh = HeaderName::from_static("x-forwarded-host");
        let peer_ip = peer.ip().to_string();
        let trusted = self.config.trusted_proxies.contains(&peer.ip());
        let forwarded_for = match headers.get(&xff).and_then(|v| v.to_str().ok()) {
            Some(earlier) if trusted => format!("{earlier}, {peer_ip}"),
            _ => peer_ip,
        };
        if !trusted {
            headers.remove(&xfp);
            headers.remove(&xfh);
        }
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(xff, value);
        }
        if !headers.contains_key(&xfp) {
            headers.insert(xfp, HeaderValue::from_static("http"));
        }
        if !headers.contains_key(&xfh)
            && let Ok(value) = HeaderValue::from_str(host)
        {
            headers.insert(xfh, value);
        }
    }

    /// A pooled connection that is still usable, or a new one.
    async fn upstream_connection(&self, endpoint: &Endpoint) -> Result<SendRequest<UpstreamBody>, ConnectError> {
        while let Some(mut pooled) = endpoint.take_idle(self.config.upstream_idle_timeout) {
            if pooled.ready().await.is_ok() {
                return Ok(pooled);
            }
        }
        let stream = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(endpoint.addr))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let addr = endpoint.addr;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn respond(
        &self,
        mut response: Response<Incoming>,
        sender: SendRequest<UpstreamBody>,
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
        let pool = PoolReturn { sender, in_flight, max_idle: self.config.max_idle_per_endpoint };
        Response::from_parts(parts, ResponseBody::Upstream { inner: body, pool: Some(pool) })
    }
}

fn empty_body() -> UpstreamBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Handshake(#[from] hyper::Error),
}

/// Gives the upstream connection back to its endpoint's pool once the response body is complete,
/// and ends the request's in-flight count.
pub(crate) struct PoolReturn {
    sender: SendRequest<UpstreamBody>,
    in_flight: InFlight,
    max_idle: usize,
}

impl PoolReturn {
    fn finish(self) {
        let endpoint: Arc<Endpoint> = self.in_flight.0.clone();
        endpoint.put_idle(self.sender, self.max_idle);
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
        assert!(wants_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(headers.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn untrusted_forwarded_headers_are_replaced() {
        let ingress = Ingress::new(Default::default());
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        ingress.set_forwarded(&mut headers, "10.0.0.7:5555".parse().unwrap(), "web.localhost:8080");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "web.localhost:8080");
    }

    #[test]
    fn trusted_forwarded_headers_are_extended() {
        let ingress = Ingress::new(crate::IngressConfig {
            trusted_proxies: vec!["10.0.0.7".parse().unwrap()],
            ..Default::default()
        });
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        ingress.set_forwarded(&mut headers, "10.0.0.7:5555".parse().unwrap(), "web.localhost");
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
    }
}
