//! TLS at the edge: certificates parsed once into rustls keys, picked per connection by SNI from
//! a table swapped as a whole (like the route table, readers never lock), and the ACME
//! TLS-ALPN-01 challenge certificates answered during the handshake.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ocsp::OcspSource;

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Why a certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("no certificate found in the PEM text")]
    NoCertificate,
    #[error("no private key found in the PEM text (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the private key is not an RSA, ECDSA or Ed25519 key rustls can use: {0}")]
    UnusableKey(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate names no DNS name (subjectAltName)")]
    NoNames,
}

/// A parsed certificate with its key, ready to serve.
#[derive(Clone)]
pub struct Certificate {
    /// The DNS names of its subjectAltName, lower case (`*.example.com` for a wildcard).
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The issuer's distinguished name, for display.
    pub issuer: String,
    /// The chain and key as served: swapped when an OCSP response is stapled to it.
    pub(crate) key: Arc<ArcSwap<CertifiedKey>>,
    /// Its OCSP responder, when it names one and the chain carries its issuer.
    pub(crate) ocsp: Option<Arc<OcspSource>>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Reads a PEM chain (leaf first) and its PEM private key, and checks that they match.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Certificate, CertificateError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| CertificateError::Unreadable(e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(CertificateError::NoCertificate);
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertificateError::NoKey)?;
        let signing_key =
            provider::sign::any_supported_type(&key).map_err(|e| CertificateError::UnusableKey(e.to_string()))?;
        let (names, not_before, not_after, issuer) = describe(leaf)?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified.keys_match().map_err(|_| CertificateError::KeyMismatch)?;
        if names.is_empty() {
            return Err(CertificateError::NoNames);
        }
        let ocsp = OcspSource::of(&certified.cert).map(Arc::new);
        Ok(Certificate { names, not_before, not_after, issuer, key: Arc::new(ArcSwap::from_pointee(certified)), ocsp })
    }

    /// Whether an OCSP response is stapled to it now.
    pub fn ocsp_stapled(&self) -> bool {
        self.key.load().ocsp.is_some()
    }

    /// Staples `response` (DER), or removes the staple.
    pub(crate) fn set_ocsp(&self, response: Option<Vec<u8>>) {
        let mut key = CertifiedKey::clone(&self.key.load());
        key.ocsp = response;
        self.key.store(Arc::new(key));
    }

    /// Whether this certificate serves `host` (exactly, or by a wildcard one label deep).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.names.iter().any(|name| match name.strip_prefix("*.") {
            Some(parent) => host.split_once('.').is_some_and(|(_, rest)| rest == parent),
            None => *name == host,
        })
    }

    /// Time left until it expires (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.not_after.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

type Described = (Vec<String>, SystemTime, SystemTime, String);

fn describe(leaf: &CertificateDer<'_>) -> Result<Described, CertificateError> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| CertificateError::Unreadable(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let time = |t: ASN1Time| UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    let validity = cert.validity();
    Ok((names, time(validity.not_before), time(validity.not_after), cert.issuer().to_string()))
}

/// The certificates in use, by exact name and by wildcard parent.
#[derive(Default)]
pub(crate) struct CertTable {
    exact: HashMap<String, Arc<Certificate>>,
    wildcard: HashMap<String, Arc<Certificate>>,
    /// For clients that send no SNI (old clients, scanners, IP literals): the first certificate
    /// given (the operator's, when there is one).
    default: Option<Arc<Certificate>>,
}

impl CertTable {
    /// For each name, the certificate that expires last among those covering it.
    pub(crate) fn new(certificates: Vec<Certificate>) -> CertTable {
        let mut table = CertTable::default();
        for certificate in certificates.into_iter().map(Arc::new) {
            table.default.get_or_insert_with(|| certificate.clone());
            for name in &certificate.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut table.wildcard, parent.to_string()),
                    None => (&mut table.exact, name.clone()),
                };
                let slot = map.entry(key).or_insert_with(|| certificate.clone());
                if slot.not_after < certificate.not_after {
                    *slot = certificate.clone();
                }
            }
        }
        table
    }

    pub(crate) fn find(&self, host: &str) -> Option<&Arc<Certificate>> {
        self.exact.get(host).or_else(|| self.wildcard.get(host.split_once('.')?.1))
    }

    pub(crate) fn fallback(&self) -> Option<&Arc<Certificate>> {
        self.default.as_ref()
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Certificate>> {
        self.exact.values().chain(self.wildcard.values())
    }
}

/// What the TLS handshake reads: the certificate table and pending TLS-ALPN-01 challenges.
#[derive(Default)]
pub(crate) struct TlsState {
    pub(crate) certs: ArcSwap<CertTable>,
    /// Challenge certificates by domain, present only while an ACME order validates.
    pub(crate) alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsState")
    }
}

impl ResolvesServerCert for TlsState {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.certs.load().fallback().map(|c| c.key.load_full());
        };
        let acme = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            return self.alpn_challenges.lock().expect("BUG: challenge lock poisoned").get(&name).cloned();
        }
        self.certs.load().find(&name).map(|c| c.key.load_full())
    }
}

/// The server side of TLS: 1.2 and 1.3 only, AEAD suites with forward secrecy only (ring's
/// defaults), session tickets and a session cache for resumption, ALPN `h2`, `http/1.1` (and
/// ACME's, answered by the challenge certificate only).
pub(crate) fn server_config(state: Arc<TlsState>) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(provider::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(state);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config.ticketer = provider::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(20_000);
    // TLS 1.3 resumption without a round trip to the cache: one ticket per handshake, so each
    // connection leaves the client a fresh ticket for its next (OpenSSL sends one on resumed
    // handshakes too; a second costs the server an encryption and the client a session object on
    // every connection).
    config.send_tls13_tickets = 1;
    Ok(config)
}

/// A TLS-ALPN-01 challenge certificate as rustls serves it.
pub fn challenge_key(cert_der: Vec<u8>, key_der: Vec<u8>) -> Result<Arc<CertifiedKey>, CertificateError> {
    let key = PrivateKeyDer::try_from(key_der).map_err(|e| CertificateError::UnusableKey(e.to_string()))?;
    let signing_key =
        provider::sign::any_supported_type(&key).map_err(|e| CertificateError::UnusableKey(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(vec![CertificateDer::from(cert_der)], signing_key)))
}
