//! The ingress's tunables, with the defaults the server's flags document.

use std::net::IpAddr;
use std::time::Duration;

pub use ipnet::IpNet;

/// Tunables of the proxy. The upstream idle timeout stays below the usual app keep-alive
/// timeouts, so a pooled connection is never one the app is closing (hyper #2136); forwarded
/// headers and PROXY protocol headers are believed only from `trusted_proxies`.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Time allowed to open a TCP connection to an endpoint before trying the next one.
    pub connect_timeout: Duration,
    /// Time allowed, once the request body has been sent, for the app's response headers.
    /// The clock starts when the body ends, so a long upload is not cut off by it.
    pub response_header_timeout: Duration,
    /// Idle upstream connections are dropped after this long. Kept below typical app keep-alive
    /// timeouts (5 s and up) so the proxy never reuses a connection the app is closing.
    pub upstream_idle_timeout: Duration,
    /// Idle upstream connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` headers are believed and
    /// extended, and whose PROXY protocol headers are read; everyone else's are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// Read a PROXY protocol (v1 or v2) header at the start of connections from trusted proxies
    /// (connections from other peers must not carry one and are served as they are).
    pub proxy_protocol: bool,
    /// Time a client has to send a request's head, on a new or an idle kept-alive connection,
    /// and to finish a TLS handshake.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted; larger heads get 431.
    pub max_header_bytes: usize,
    /// A request body that sends nothing for this long is cut off (slow uploads are fine as
    /// long as they move).
    pub body_idle_timeout: Duration,
    /// Largest request body accepted; a larger declared length gets 413 before anything is sent
    /// upstream, a longer streamed body is cut off at the limit.
    pub max_body_bytes: u64,
    /// A client that takes nothing of what is sent to it (a response, a WebSocket's frames) for
    /// this long is cut off, and its app connection and in-flight count are let go.
    pub idle_timeout: Duration,
    /// Client connections served at once; further connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// Client connections served at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Concurrent streams one HTTP/2 client connection may open.
    pub max_concurrent_streams: u32,
    /// Log one structured line per request (target `berth::access`).
    pub access_log: bool,
    /// The port clients use for HTTPS, for redirects from HTTP (443 in production).
    pub https_port: Option<u16>,
    /// Fetch OCSP responses from responders on loopback, private and link-local addresses too.
    /// Off by default: a certificate a user uploads names its own responder, which must not turn
    /// the ingress into a client of internal services.
    pub ocsp_private_responders: bool,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            connect_timeout: Duration::from_secs(2),
            response_header_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(2),
            max_idle_per_endpoint: 64,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 << 10,
            body_idle_timeout: Duration::from_secs(60),
            max_body_bytes: 1 << 30,
            idle_timeout: Duration::from_secs(75),
            max_connections: 20_000,
            max_connections_per_ip: 1_000,
            max_concurrent_streams: 128,
            ocsp_private_responders: false,
            access_log: false,
            https_port: None,
        }
    }
}

impl IngressConfig {
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        is_trusted(&self.trusted_proxies, ip)
    }
}

/// Whether `ip` is in one of the `proxies` blocks (IPv4-mapped IPv6 addresses count as IPv4).
pub fn is_trusted(proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    proxies.iter().any(|net| net.contains(&ip))
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`, as dual-stack sockets report them)
/// compares as the IPv4 address it is.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses a trusted-proxy setting: a CIDR (`10.0.0.0/8`) or a single address (`10.0.0.7`).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither an address nor a CIDR block (10.0.0.0/8)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_cidr_blocks_and_mapped_addresses_match() {
        let config = IngressConfig {
            trusted_proxies: vec![parse_cidr("10.0.0.0/8").unwrap(), parse_cidr("192.168.1.7").unwrap()],
            ..Default::default()
        };
        assert!(config.trusts("10.200.3.4".parse().unwrap()));
        assert!(config.trusts("::ffff:10.1.1.1".parse().unwrap()));
        assert!(config.trusts("192.168.1.7".parse().unwrap()));
        assert!(!config.trusts("192.168.1.8".parse().unwrap()));
        assert!(!config.trusts("11.0.0.1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
    }
}
