//! The host a request is for, read strictly: a Host header (or HTTP/2 `:authority`) that is not a
//! plain DNS name or IP literal with an all-digit port is refused, not guessed at. Apps build
//! links from the Host they receive, so whatever passes here reaches them.

/// A request's authority, validated: the host in lower case without a trailing dot (the route
/// table's key), and the port if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authority {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
}

impl Authority {
    /// How the authority is written in a URL or a Host header.
    pub(crate) fn to_header(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }
}

/// Longest DNS name (RFC 1035), plus a trailing dot.
const MAX_HOST: usize = 254;

pub(crate) fn parse_authority(text: &str) -> Option<Authority> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        let (literal, after) = rest.split_once(']')?;
        literal.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (format!("[{}]", literal.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.is_empty()
            || host.len() > MAX_HOST
            || !name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        {
            return None;
        }
        (name.to_ascii_lowercase(), port)
    };
    let port = match port {
        None | Some("") => None,
        Some(digits) if digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits.parse().ok()?),
        Some(_) => return None,
    };
    Some(Authority { host, port })
}

/// Normalises a host name the control plane routes (trusted input) to a table key.
pub(crate) fn host_key(host: &str) -> String {
    match parse_authority(host.trim()) {
        Some(authority) => authority.host,
        None => host.trim().trim_end_matches('.').to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> Option<(String, Option<u16>)> {
        parse_authority(text).map(|a| (a.host, a.port))
    }

    #[test]
    fn names_and_literals_are_normalised() {
        assert_eq!(host("Web.LocalHost:8080"), Some(("web.localhost".into(), Some(8080))));
        assert_eq!(host("web.localhost."), Some(("web.localhost".into(), None)));
        assert_eq!(host("[::1]:80"), Some(("[::1]".into(), Some(80))));
        assert_eq!(host("[::1]"), Some(("[::1]".into(), None)));
        assert_eq!(host("10.0.0.1"), Some(("10.0.0.1".into(), None)));
        assert_eq!(host("example.com:"), Some(("example.com".into(), None)));
        assert_eq!(host_key("Web.LocalHost:8080"), "web.localhost");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            ":80",
            "web.example.com:@evil.example",
            "web.example.com:80@evil",
            "user@web.example.com",
            "web..example.com",
            "web.example.com:99999",
            "web.example.com:8o",
            "web example.com",
            "web/example.com",
            "[::1",
            "[nothex]",
            "[::1]x",
            "é.example.com",
            &"a".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ] {
            assert_eq!(parse_authority(bad), None, "{bad:?} was accepted");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever a client sends as Host, parsing ends in an answer, never a panic.
            #[test]
            fn any_text_is_parsed_or_refused(text in ".{0,300}") {
                let _ = parse_authority(&text);
                let _ = host_key(&text);
            }

            /// What is accepted is normalised (lower case, no trailing dot, nothing that could
            /// smuggle userinfo, a path or whitespace) and reads back as itself.
            #[test]
            fn accepted_authorities_are_normal_and_stable(text in "[ -~]{0,60}") {
                if let Some(authority) = parse_authority(&text) {
                    let host = &authority.host;
                    prop_assert!(!host.is_empty() && !host.ends_with('.'));
                    prop_assert!(!host.chars().any(|c| c.is_ascii_uppercase() || "@/\\?# ".contains(c)), "{host}");
                    prop_assert_eq!(parse_authority(&authority.to_header()), Some(authority.clone()));
                }
            }

            /// Every DNS name with any port is accepted as that name, in lower case.
            #[test]
            fn dns_names_with_ports_are_accepted(
                labels in proptest::collection::vec("[a-zA-Z0-9][a-zA-Z0-9-]{0,20}", 1..5),
                port in proptest::option::of(any::<u16>()),
            ) {
                let name = labels.join(".");
                let text = match port { Some(port) => format!("{name}:{port}"), None => name.clone() };
                let authority = parse_authority(&text).expect("a valid name");
                prop_assert_eq!(authority.host, name.to_ascii_lowercase());
                prop_assert_eq!(authority.port, port);
            }
        }
    }
}
