//! OCSP (RFC 6960) for stapling: the request for a certificate whose issuer runs a responder
//! (named in its Authority Information Access extension), the fetch, and the checks a response
//! must pass before it is stapled. When and what to staple is `stapler`'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use x509_parser::asn1_rs::{Any, Class, FromDer as _, Tag};
use x509_parser::prelude::{GeneralName, ParsedExtension, X509Certificate};

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How long a response that names no `nextUpdate` is taken for.
const MAX_AGE_WITHOUT_NEXT_UPDATE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where and how to ask about one certificate.
#[derive(Debug)]
pub(crate) struct OcspSource {
    pub(crate) url: String,
    /// The DER `OCSPRequest`; also the key of the certificate's stapling state.
    pub(crate) request: Vec<u8>,
    /// The `CertID` asked about, without its tag and length: a response must name exactly it.
    pub(crate) cert_id: Vec<u8>,
    /// The issuer's certificate (DER): a response must be signed by it or by a responder it
    /// authorised.
    pub(crate) issuer: Vec<u8>,
}

impl OcspSource {
    /// The responder and request for the leaf of `chain`, if it names an `http://` responder and
    /// the chain carries its issuer.
    pub(crate) fn of(chain: &[CertificateDer<'_>]) -> Option<OcspSource> {
        let (_, leaf) = X509Certificate::from_der(chain.first()?.as_ref()).ok()?;
        let url = responder_url(&leaf)?;
        let (_, issuer) = X509Certificate::from_der(chain.get(1)?.as_ref()).ok()?;
        if issuer.subject().as_raw() != leaf.issuer().as_raw() {
            return None;
        }
        // The issuer by its signature on the leaf too, where the verifier knows the algorithm
        // (ring's: RSA PKCS#1 and PSS with SHA-2, ECDSA P-256/P-384, Ed25519); for others the
        // name decides, and the response's own signature check stands.
        match leaf.verify_signature(Some(issuer.public_key())) {
            Ok(()) | Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {}
            Err(_) => {
                tracing::warn!(url = %url, "the certificate after the leaf is named as its issuer but did not sign it: no OCSP stapling");
                return None;
            }
        }
        let name_hash = sha1(leaf.issuer().as_raw());
        let key_hash = sha1(&issuer.public_key().subject_public_key.data);
        // CertID ::= SEQUENCE { hashAlgorithm (SHA-1, NULL parameters), issuerNameHash,
        // issuerKeyHash, serialNumber }
        let cert_id =
            [&SHA1_ALGORITHM[..], &tlv(0x04, &name_hash), &tlv(0x04, &key_hash), &tlv(0x02, leaf.raw_serial())]
                .concat();
        // OCSPRequest { TBSRequest { requestList SEQUENCE OF Request { reqCert } } }, no nonce
        // (responders precompute responses; a nonce would defeat that).
        let request = seq(&[&seq(&[&seq(&[&seq(&[&tlv(0x30, &cert_id)])])])]);
        Some(OcspSource { url, request, cert_id, issuer: chain[1].as_ref().to_vec() })
    }
}

fn responder_url(cert: &X509Certificate<'_>) -> Option<String> {
    const ID_AD_OCSP: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1];
    cert.iter_extensions().find_map(|extension| match extension.parsed_extension() {
        ParsedExtension::AuthorityInfoAccess(access) => access.accessdescs.iter().find_map(|description| {
            let is_ocsp = description.access_method.iter().is_some_and(|arcs| arcs.eq(ID_AD_OCSP.iter().copied()));
            match &description.access_location {
                GeneralName::URI(uri) if is_ocsp && uri.starts_with("http://") => Some(uri.to_string()),
                _ => None,
            }
        }),
        _ => None,
    })
}

fn sha1(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data).as_ref().to_vec()
}

const SHA1_ALGORITHM: [u8; 11] = [0x30, 0x09, 0x06, 0x05, 0x2B, 0x0E, 0x03, 0x02, 0x1A, 0x05, 0x00];

/// A DER tag-length-value (definite length, long form from 128 bytes).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        let bytes = content.len().to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// Why a response is not stapled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum OcspError {
    #[error("the OCSP response is malformed")]
    Malformed,
    #[error("the responder answered status {0} (1 malformed request, 2 internal error, 3 try later, 6 unauthorized)")]
    Status(u8),
    #[error("the response does not cover this certificate (or names it by another hash than SHA-1)")]
    NoMatch,
    /// With the answer's `thisUpdate`.
    #[error("the certificate's status is not good (revoked or unknown)")]
    NotGood(SystemTime),
    #[error("the response is past its nextUpdate (or, naming none, more than a week old)")]
    Expired,
    #[error("the response is older than the one stapled")]
    Older,
    #[error("the response is not signed by the certificate's issuer or a responder it authorised")]
    BadSignature,
    #[error("fetching from the responder failed: {0}")]
    Fetch(String),
    #[error("the responder is on a private address ({0}); see --ocsp-private-responders")]
    PrivateResponder(std::net::IpAddr),
}

/// When a response may be stapled for the certificate `source` asks about: its `thisUpdate` and
/// `nextUpdate`. It must be signed by the issuer, or by a responder certificate it carries that the
/// issuer signed for OCSP signing (RFC 6960 4.2.2.2): a forged or misdirected answer stapled would
/// make clients that check refuse the site, and clients that do not check believe it.
pub(crate) fn check_response(
    der: &[u8],
    source: &OcspSource,
    now: SystemTime,
) -> Result<(SystemTime, Option<SystemTime>), OcspError> {
    const U: Class = Class::Universal;
    const C: Class = Class::ContextSpecific;
    let mut input = der;
    let mut response = expect(&mut input, U, 16)?.data;
    let status = expect(&mut response, U, 10)?;
    if status.data != [0] {
        return Err(OcspError::Status(status.data.first().copied().unwrap_or(0xff)));
    }
    let mut bytes = expect(&mut response, C, 0)?.data;
    let mut bytes = expect(&mut bytes, U, 16)?.data;
    // id-pkix-ocsp-basic
    if expect(&mut bytes, U, 6)?.data != [0x2B, 6, 1, 5, 5, 7, 0x30, 1, 1] {
        return Err(OcspError::Malformed);
    }
    let mut basic = expect(&mut bytes, U, 4)?.data;
    let basic = expect(&mut basic, U, 16)?.data;
    verify_signature(basic, &source.issuer, now)?;
    let mut basic = basic;
    let mut data = expect(&mut basic, U, 16)?.data;
    // [0] version (optional), then responderID ([1] byName or [2] byKey).
    if next(&mut data)?.tag() == Tag(0) {
        next(&mut data)?;
    }
    expect(&mut data, U, 24)?; // producedAt
    let mut responses = expect(&mut data, U, 16)?.data;
    while !responses.is_empty() {
        let mut single = expect(&mut responses, U, 16)?.data;
        if expect(&mut single, U, 16)?.data != source.cert_id {
            continue;
        }
        let status = next(&mut single)?;
        let this_update = time(&expect(&mut single, U, 24)?)?;
        if status.class() != C || status.tag() != Tag(0) {
            return Err(OcspError::NotGood(this_update));
        }
        let next_update = match expect(&mut single, C, 0) {
            Ok(tagged) => {
                let mut inner = tagged.data;
                Some(time(&expect(&mut inner, U, 24)?)?)
            }
            Err(_) => None,
        };
        // A response from the future (beyond clock skew) is suspect.
        if this_update > now + Duration::from_secs(300) {
            return Err(OcspError::Malformed);
        }
        if valid_until(this_update, next_update) <= now {
            return Err(OcspError::Expired);
        }
        return Ok((this_update, next_update));
    }
    Err(OcspError::NoMatch)
}

/// Checks the signature of a `BasicOCSPResponse` (its content: `tbsResponseData`,
/// `signatureAlgorithm`, `signature`, `certs [0]`): by the issuer itself, or by one of `certs` that
/// the issuer signed, marked for OCSP signing and valid `now`.
fn verify_signature(mut basic: &[u8], issuer: &[u8], now: SystemTime) -> Result<(), OcspError> {
    use x509_parser::asn1_rs::BitString;
    use x509_parser::time::ASN1Time;
    use x509_parser::verify::verify_signature;
    use x509_parser::x509::AlgorithmIdentifier;

    let before = basic;
    next(&mut basic)?;
    let signed = &before[..before.len() - basic.len()];
    let (rest, algorithm) = AlgorithmIdentifier::from_der(basic).map_err(|_| OcspError::Malformed)?;
    let (rest, signature) = BitString::from_der(rest).map_err(|_| OcspError::Malformed)?;
    let (_, issuer) = X509Certificate::from_der(issuer).map_err(|_| OcspError::Malformed)?;
    if verify_signature(issuer.public_key(), &algorithm, &signature, signed).is_ok() {
        return Ok(());
    }
    // A delegated responder, which must come with the response.
    let mut rest = rest;
    let Ok(certs) = expect(&mut rest, Class::ContextSpecific, 0) else {
        return Err(OcspError::BadSignature);
    };
    let mut certs = certs.data;
    let mut certs = expect(&mut certs, Class::Universal, 16)?.data;
    let now = ASN1Time::from_timestamp(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64)
        .map_err(|_| OcspError::Malformed)?;
    while !certs.is_empty() {
        let (remaining, responder) = X509Certificate::from_der(certs).map_err(|_| OcspError::Malformed)?;
        certs = remaining;
        let authorised = responder.issuer().as_raw() == issuer.subject().as_raw()
            && responder.verify_signature(Some(issuer.public_key())).is_ok()
            && responder.validity().is_valid_at(now)
            && responder.extended_key_usage().ok().flatten().is_some_and(|usage| usage.value.ocsp_signing);
        if authorised && verify_signature(responder.public_key(), &algorithm, &signature, signed).is_ok() {
            return Ok(());
        }
    }
    Err(OcspError::BadSignature)
}

/// Until when an answer may be stapled: its `nextUpdate`, or without one (a signed "good" would
/// otherwise be believable forever, replayed after a revocation) a week after `thisUpdate`.
pub(crate) fn valid_until(this_update: SystemTime, next_update: Option<SystemTime>) -> SystemTime {
    next_update.unwrap_or(this_update + MAX_AGE_WITHOUT_NEXT_UPDATE)
}

fn next<'a>(input: &mut &'a [u8]) -> Result<Any<'a>, OcspError> {
    let (rest, any) = Any::from_der(input).map_err(|_| OcspError::Malformed)?;
    *input = rest;
    Ok(any)
}

fn expect<'a>(input: &mut &'a [u8], class: Class, tag: u32) -> Result<Any<'a>, OcspError> {
    let mut peek = *input;
    let any = next(&mut peek)?;
    if any.class() != class || any.tag() != Tag(tag) {
        return Err(OcspError::Malformed);
    }
    *input = peek;
    Ok(any)
}

fn time(any: &Any<'_>) -> Result<SystemTime, OcspError> {
    let time = any.as_generalizedtime().and_then(|t| t.utc_datetime()).map_err(|_| OcspError::Malformed)?;
    Ok(UNIX_EPOCH + Duration::from_secs(time.unix_timestamp().max(0) as u64))
}

/// Addresses an uploaded certificate must not make the ingress talk to.
fn private(ip: std::net::IpAddr) -> bool {
    match crate::config::canonical(ip) {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64)
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// `POST`s `request` to an `http://` responder.
pub(crate) async fn fetch(url: &str, request: &[u8], allow_private: bool) -> Result<Vec<u8>, OcspError> {
    let failed = |e: &dyn std::fmt::Display| OcspError::Fetch(e.to_string());
    let uri: hyper::Uri = url.parse().map_err(|e| failed(&e))?;
    let authority = uri.authority().ok_or_else(|| OcspError::Fetch("no host in the URL".into()))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let exchange = async {
        let addrs: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((host, port)).await.map_err(|e| failed(&e))?.collect();
        if !allow_private && let Some(addr) = addrs.iter().find(|a| private(a.ip())) {
            return Err(OcspError::PrivateResponder(addr.ip()));
        }
        let stream = tokio::net::TcpStream::connect(&addrs[..]).await.map_err(|e| failed(&e))?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| failed(&e))?;
        tokio::spawn(connection);
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/ocsp-request")
            .body(Full::new(Bytes::copy_from_slice(request)))
            .map_err(|e| failed(&e))?;
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        if !response.status().is_success() {
            return Err(OcspError::Fetch(format!("the responder answered HTTP {}", response.status())));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await.map_err(|e| failed(&*e))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange).await.map_err(|_| OcspError::Fetch("timed out".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test CA: its certificate (DER and PEM), its key (PEM) and what signs with it.
    struct Ca {
        der: Vec<u8>,
        pem: String,
        key_pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Ca {
        fn new() -> Ca {
            use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, "Berth OCSP test CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = params.self_signed(&key).unwrap();
            let (pem, key_pem) = (ca.pem(), key.serialize_pem());
            Ca { der: ca.der().to_vec(), pem, key_pem, issuer: Issuer::new(params, key) }
        }

        /// A leaf with `serial` that names a responder: its OCSP source.
        fn leaf(&self, serial: u64) -> OcspSource {
            let leaf = self.leaf_der(serial);
            OcspSource::of(&[CertificateDer::from(leaf), CertificateDer::from(self.der.clone())]).unwrap()
        }

        fn leaf_der(&self, serial: u64) -> Vec<u8> {
            use rcgen::{CertificateParams, CustomExtension, KeyPair};
            let mut params = CertificateParams::new(vec!["web.example".to_string()]).unwrap();
            params.serial_number = Some(serial.into());
            let access = seq(&[&seq(&[
                &[0x06, 0x08, 0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01],
                &tlv(0x86, b"http://127.0.0.1:9/ocsp"),
            ])]);
            params.custom_extensions.push(CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], access));
            params.signed_by(&KeyPair::generate().unwrap(), &self.issuer).unwrap().der().to_vec()
        }

        /// A delegated responder's certificate and key (PEM), marked for OCSP signing or not.
        fn responder(&self, ocsp_signing: bool) -> (String, String) {
            self.responder_until(ocsp_signing, time::OffsetDateTime::now_utc() + time::Duration::days(30))
        }

        fn responder_until(&self, ocsp_signing: bool, not_after: time::OffsetDateTime) -> (String, String) {
            use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.not_before = not_after - time::Duration::days(60);
            params.not_after = not_after;
            if ocsp_signing {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        /// OpenSSL's OCSP responder, offline: its answer to `request` given an index line for
        /// serial 1000 with `status` (`V` valid, `R` revoked), valid for `minutes` (0: no
        /// `nextUpdate`), signed by this
        /// CA or by `signer` (certificate and key PEM).
        fn answer(&self, request: &[u8], status: &str, minutes: u32, signer: Option<&(String, String)>) -> Vec<u8> {
            let dir = std::env::temp_dir().join(format!(
                "berth-ocsp-unit-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let revoked = if status == "R" { "261201000000Z" } else { "" };
            std::fs::write(
                dir.join("index.txt"),
                format!("{status}\t491231235959Z\t{revoked}\t1000\tunknown\t/CN=web\n"),
            )
            .unwrap();
            let (signer_pem, signer_key) = signer.map_or((&self.pem, &self.key_pem), |(cert, key)| (cert, key));
            std::fs::write(dir.join("ca.pem"), &self.pem).unwrap();
            std::fs::write(dir.join("signer.pem"), signer_pem).unwrap();
            std::fs::write(dir.join("signer.key"), signer_key).unwrap();
            std::fs::write(dir.join("request.der"), request).unwrap();
            let output = std::process::Command::new("openssl")
                .current_dir(&dir)
                .args(["ocsp", "-index", "index.txt", "-rsigner", "signer.pem", "-rkey", "signer.key", "-CA", "ca.pem"])
                .args(["-reqin", "request.der", "-respout", "response.der"])
                .args(if minutes > 0 { vec!["-nmin".to_string(), minutes.to_string()] } else { Vec::new() })
                .output()
                .expect("openssl is installed");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let response = std::fs::read(dir.join("response.der")).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            response
        }
    }

    #[test]
    fn requests_name_the_responder_and_openssl_answers_are_checked() {
        let ca = Ca::new();
        let source = ca.leaf(0x1000);
        assert_eq!(source.url, "http://127.0.0.1:9/ocsp");
        assert!(source.cert_id.ends_with(&[0x02, 0x02, 0x10, 0x00]), "the serial ends the CertID");
        // Without its issuer in the chain there is nothing to ask.
        assert!(OcspSource::of(&[CertificateDer::from(ca.leaf_der(0x1000))]).is_none());

        let now = SystemTime::now();
        let good = ca.answer(&source.request, "V", 10, None);
        let (this_update, next_update) = check_response(&good, &source, now).unwrap();
        assert!(this_update <= now + Duration::from_secs(5));
        assert!(next_update.unwrap() > now + Duration::from_secs(500));
        // The same issuer's certificate with another serial is not covered.
        assert_eq!(check_response(&good, &ca.leaf(0x1001), now), Err(OcspError::NoMatch));
        assert_eq!(check_response(&good, &source, now + Duration::from_secs(3600)), Err(OcspError::Expired));
        let revoked = ca.answer(&source.request, "R", 10, None);
        assert!(matches!(check_response(&revoked, &source, now), Err(OcspError::NotGood(_))));
        // Without a nextUpdate (0 minutes: none given) an answer is taken for a week, no longer.
        let open_ended = ca.answer(&source.request, "V", 0, None);
        assert_eq!(check_response(&open_ended, &source, now).unwrap().1, None);
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(check_response(&open_ended, &source, now + week + Duration::from_secs(60)), Err(OcspError::Expired));
    }

    #[test]
    fn only_the_issuer_or_a_responder_it_authorised_may_sign() {
        let ca = Ca::new();
        let source = ca.leaf(0x1000);
        let now = SystemTime::now();
        // Another CA's answer about a certificate with the same serial, asked with the same
        // request: right shape, wrong signer.
        let other = Ca::new();
        let forged = other.answer(&source.request, "V", 10, None);
        assert_eq!(check_response(&forged, &source, now), Err(OcspError::BadSignature));
        // A responder the issuer delegated to, with the OCSP signing usage.
        let delegated = ca.responder(true);
        let answer = ca.answer(&source.request, "V", 10, Some(&delegated));
        assert!(check_response(&answer, &source, now).is_ok());
        // Signed by the issuer but not for OCSP: any certificate holder of this CA could forge.
        let ordinary = ca.responder(false);
        let answer = ca.answer(&source.request, "V", 10, Some(&ordinary));
        assert_eq!(check_response(&answer, &source, now), Err(OcspError::BadSignature));
        // A delegated responder whose certificate has expired.
        let expired = ca.responder_until(true, time::OffsetDateTime::now_utc() - time::Duration::days(1));
        let answer = ca.answer(&source.request, "V", 10, Some(&expired));
        assert_eq!(check_response(&answer, &source, now), Err(OcspError::BadSignature));
        // A delegated responder of another CA.
        let stranger = other.responder(true);
        let answer = ca.answer(&source.request, "V", 10, Some(&stranger));
        assert_eq!(check_response(&answer, &source, now), Err(OcspError::BadSignature));
        // A signed answer altered to cover another serial: without the signature check it would be
        // believed for that certificate.
        let good = ca.answer(&source.request, "V", 10, None);
        let mut altered = good.clone();
        let at = altered.windows(4).position(|w| w == [0x02, 0x02, 0x10, 0x00]).unwrap();
        altered[at + 3] = 0x01;
        assert_eq!(check_response(&altered, &ca.leaf(0x1001), now), Err(OcspError::BadSignature));
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "100.128.0.1"] {
            assert!(!private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        assert_eq!(tlv(0x04, &[7; 3]), vec![0x04, 3, 7, 7, 7]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2C]);
        assert_eq!(long.len(), 304);
    }

    #[test]
    fn garbage_and_error_statuses_are_refused() {
        let now = SystemTime::now();
        let source = Ca::new().leaf(0x1000);
        assert_eq!(check_response(b"", &source, now), Err(OcspError::Malformed));
        assert_eq!(check_response(b"\x30\x03\x0a\x01\x00", &source, now), Err(OcspError::Malformed));
        // OCSPResponse { responseStatus tryLater(3) }
        assert_eq!(check_response(b"\x30\x03\x0a\x01\x03", &source, now), Err(OcspError::Status(3)));
        assert_eq!(check_response(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], &source, now), Err(OcspError::Malformed));
    }
}
