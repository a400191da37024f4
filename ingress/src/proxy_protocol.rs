//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies it): a load balancer in front
//! of the ingress states the client's address in a header before the connection's first byte.
//! Only read from trusted peers; the header is peeked first and then consumed exactly, so the
//! bytes after it stay in the socket for TLS or HTTP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 bytes; v2 headers with TLVs are bounded here.
const MAX_HEADER: usize = 16 + 536;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header")]
    Malformed,
    #[error("the connection closed inside the PROXY protocol header")]
    Truncated,
}

/// What a complete header says: the client's address (`None` for `LOCAL`/`UNKNOWN`: the
/// connection is the proxy's own), and the header's length.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) source: Option<SocketAddr>,
    pub(crate) length: usize,
}

/// Parses a header at the start of `buf`; `Ok(None)` when more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Parsed>, ProxyHeaderError> {
    if buf.len() < 12 {
        let prefix_of = |full: &[u8]| full.starts_with(buf);
        return if prefix_of(V2_SIGNATURE) || prefix_of(b"PROXY ") { Ok(None) } else { Err(ProxyHeaderError::Missing) };
    }
    if buf.starts_with(V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if buf.starts_with(b"PROXY ") {
        return parse_v1(buf);
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Parsed>, ProxyHeaderError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= 107 { Err(ProxyHeaderError::Malformed) } else { Ok(None) };
    };
    if end > 105 {
        return Err(ProxyHeaderError::Malformed);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyHeaderError::Malformed)?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields[..] {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), source, _destination, source_port, _destination_port] => {
            let ip: IpAddr = source.parse().map_err(|_| ProxyHeaderError::Malformed)?;
            if (family == "TCP4") != ip.is_ipv4() {
                return Err(ProxyHeaderError::Malformed);
            }
            let port: u16 = source_port.parse().map_err(|_| ProxyHeaderError::Malformed)?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyHeaderError::Malformed),
    };
    Ok(Some(Parsed { source, length: end + 2 }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Parsed>, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (version_command, family) = (buf[12], buf[13]);
    let length = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if version_command >> 4 != 2 || length > MAX_HEADER {
        return Err(ProxyHeaderError::Malformed);
    }
    if buf.len() < length {
        return Ok(None);
    }
    let body = &buf[16..length];
    let source = match (version_command & 0x0f, family) {
        // LOCAL: a health check from the proxy itself.
        (0x0, _) => None,
        (0x1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]])))
        }
        (0x1, 0x21) if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().expect("BUG: 16 bytes checked");
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), u16::from_be_bytes([body[32], body[33]])))
        }
        // UNSPEC or a Unix socket: no address to use.
        (0x1, 0x00 | 0x31 | 0x32) => None,
        _ => return Err(ProxyHeaderError::Malformed),
    };
    Ok(Some(Parsed { source, length }))
}

/// Reads the header off `stream` (peeking until it is complete, then consuming exactly it) and
/// returns the client's address, or `None` when the header says the connection is the proxy's.
pub(crate) async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = [0u8; MAX_HEADER];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await.map_err(|_| ProxyHeaderError::Truncated)?;
        if n == 0 {
            return Err(ProxyHeaderError::Truncated);
        }
        if let Some(parsed) = parse(&buf[..n])? {
            let mut header = vec![0u8; parsed.length];
            stream.read_exact(&mut header).await.map_err(|_| ProxyHeaderError::Truncated)?;
            return Ok(parsed.source);
        }
        if n == seen {
            // Nothing new arrived since the last peek: wait for the socket to be readable again.
            stream.readable().await.map_err(|_| ProxyHeaderError::Truncated)?;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        seen = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_headers_give_the_client_address() {
        let header = b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let parsed = parse(header).unwrap().unwrap();
        assert_eq!(parsed.source, Some("203.0.113.9:51234".parse().unwrap()));
        assert_eq!(&header[parsed.length..parsed.length + 3], b"GET");
        let v6 = parse(b"PROXY TCP6 2001:db8::1 ::1 4000 80\r\n").unwrap().unwrap();
        assert_eq!(v6.source, Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().source, None);
        assert_eq!(parse(b"PROXY TCP4 203.0.113.9 10.0"), Ok(None), "incomplete");
        for bad in [
            &b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 1\r\n",
            &[b'P'; 200][..],
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
    }

    #[test]
    fn v2_headers_give_the_client_address() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([0x21, 0x11, 0, 12, 198, 51, 100, 7, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb]);
        header.extend(b"\x16\x03\x01");
        let parsed = parse(&header).unwrap().unwrap();
        assert_eq!(parsed.source, Some("198.51.100.7:8080".parse().unwrap()));
        assert_eq!(parsed.length, 28);
        assert_eq!(parse(&header[..20]), Ok(None), "incomplete");
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().unwrap().source, None);
        let mut wrong_version = V2_SIGNATURE.to_vec();
        wrong_version.extend([0x11, 0x11, 0, 12]);
        assert!(parse(&wrong_version).is_err());
    }
}
