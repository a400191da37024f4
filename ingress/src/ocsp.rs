//! OCSP stapling (RFC 6960, RFC 6066 `status_request`): for a certificate whose issuer runs an
//! OCSP responder (named in its Authority Information Access extension), the ingress fetches a
//! signed "good" status and serves it in the handshake to clients that ask, so they need not ask
//! the CA themselves.
//!
//! - A response is stapled only if it is successful, for this certificate's serial, `good`, and
//!   not past its `nextUpdate`. Clients verify its signature; the ingress does not need to.
//! - It is refreshed halfway between `thisUpdate` and `nextUpdate` (hourly without a
//!   `nextUpdate`). A failed fetch keeps the staple until its `nextUpdate` and is retried after
//!   1 minute, doubling to 1 hour; an expired staple is removed.
//! - Certificates without a responder (Let's Encrypt's since 2025) or without their issuer in the
//!   chain are served without a staple, quietly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use tokio::sync::Notify;
use x509_parser::asn1_rs::{Any, Class, FromDer as _, Tag};
use x509_parser::prelude::{GeneralName, ParsedExtension, X509Certificate};

use crate::Ingress;
use crate::tls::Certificate;

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// How often to refresh a response that names no `nextUpdate`.
const REFRESH_WITHOUT_NEXT_UPDATE: Duration = Duration::from_secs(3600);

/// Where and how to ask about one certificate.
#[derive(Debug)]
pub(crate) struct OcspSource {
    url: String,
    /// The DER `OCSPRequest`; also the key of the certificate's stapling state.
    request: Vec<u8>,
    /// The certificate's serial number as encoded (the INTEGER's content octets).
    serial: Vec<u8>,
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
        let name_hash = sha1(leaf.issuer().as_raw());
        let key_hash = sha1(&issuer.public_key().subject_public_key.data);
        let serial = leaf.raw_serial().to_vec();
        // CertID ::= SEQUENCE { hashAlgorithm (SHA-1, NULL parameters), issuerNameHash,
        // issuerKeyHash, serialNumber }
        let cert_id = seq(&[&SHA1_ALGORITHM, &tlv(0x04, &name_hash), &tlv(0x04, &key_hash), &tlv(0x02, &serial)]);
        // OCSPRequest { TBSRequest { requestList SEQUENCE OF Request { reqCert } } }, no nonce
        // (responders precompute responses; a nonce would defeat that).
        let request = seq(&[&seq(&[&seq(&[&seq(&[&cert_id])])])]);
        Some(OcspSource { url, request, serial })
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
    #[error("the response does not cover this certificate")]
    NoMatch,
    #[error("the certificate's status is not good (revoked or unknown)")]
    NotGood,
    #[error("the response is past its nextUpdate")]
    Expired,
    #[error("fetching from the responder failed: {0}")]
    Fetch(String),
}

/// When a response may be stapled for the certificate with `serial`: its `thisUpdate` and
/// `nextUpdate`.
pub(crate) fn check_response(
    der: &[u8],
    serial: &[u8],
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
    let mut basic = expect(&mut basic, U, 16)?.data;
    let mut data = expect(&mut basic, U, 16)?.data;
    // [0] version (optional), then responderID ([1] byName or [2] byKey).
    if next(&mut data)?.tag() == Tag(0) {
        next(&mut data)?;
    }
    expect(&mut data, U, 24)?; // producedAt
    let mut responses = expect(&mut data, U, 16)?.data;
    while !responses.is_empty() {
        let mut single = expect(&mut responses, U, 16)?.data;
        let mut cert_id = expect(&mut single, U, 16)?.data;
        expect(&mut cert_id, U, 16)?;
        expect(&mut cert_id, U, 4)?;
        expect(&mut cert_id, U, 4)?;
        if expect(&mut cert_id, U, 2)?.data != serial {
            continue;
        }
        let status = next(&mut single)?;
        if status.class() != C || status.tag() != Tag(0) {
            return Err(OcspError::NotGood);
        }
        let this_update = time(&expect(&mut single, U, 24)?)?;
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
        if next_update.is_some_and(|next| next <= now) {
            return Err(OcspError::Expired);
        }
        return Ok((this_update, next_update));
    }
    Err(OcspError::NoMatch)
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

/// `POST`s `request` to an `http://` responder.
async fn fetch(url: &str, request: &[u8]) -> Result<Vec<u8>, OcspError> {
    let failed = |e: &dyn std::fmt::Display| OcspError::Fetch(e.to_string());
    let uri: hyper::Uri = url.parse().map_err(|e| failed(&e))?;
    let authority = uri.authority().ok_or_else(|| OcspError::Fetch("no host in the URL".into()))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((authority.host(), port)).await.map_err(|e| failed(&e))?;
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

/// A response being stapled.
#[derive(Clone)]
struct Staple {
    der: Arc<Vec<u8>>,
    next_update: Option<SystemTime>,
    refresh_at: SystemTime,
}

#[derive(Default)]
struct State {
    staple: Option<Staple>,
    retry_at: Option<SystemTime>,
    failures: u32,
}

/// The stapling state of every certificate with a responder, by OCSP request.
#[derive(Default)]
pub(crate) struct Stapler {
    states: Mutex<HashMap<Vec<u8>, State>>,
    wake: Arc<Notify>,
    running: std::sync::atomic::AtomicBool,
}

impl Stapler {
    /// Staples what is known for `certificate` now (a new table keeps its staples).
    pub(crate) fn restore(&self, certificate: &Certificate) {
        let Some(source) = &certificate.ocsp else {
            return;
        };
        let states = self.states.lock().expect("BUG: stapler lock poisoned");
        if let Some(staple) = states.get(&source.request).and_then(|s| s.staple.as_ref())
            && staple.next_update.is_none_or(|next| next > SystemTime::now())
        {
            certificate.set_ocsp(Some(staple.der.to_vec()));
        }
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Starts the stapling task for `ingress` once; it ends when the ingress is dropped.
pub(crate) fn start(ingress: &Arc<Ingress>) {
    if ingress.stapler.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(ingress);
    let wake = ingress.stapler.wake.clone();
    tokio::spawn(run(weak, wake));
}

async fn run(ingress: Weak<Ingress>, wake: Arc<Notify>) {
    loop {
        let Some(strong) = ingress.upgrade() else {
            return;
        };
        let pause = round(&strong).await;
        drop(strong);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = wake.notified() => {}
        }
    }
}

/// Fetches what is due, staples what is valid, unstaples what expired; returns the time until
/// something is due again.
async fn round(ingress: &Ingress) -> Duration {
    let mut certificates: Vec<Arc<Certificate>> = Vec::new();
    {
        let table = ingress.tls.certs.load();
        for certificate in table.all().chain(table.fallback()) {
            if certificate.ocsp.is_some() && !certificates.iter().any(|c| Arc::ptr_eq(c, certificate)) {
                certificates.push(certificate.clone());
            }
        }
    }
    let stapler = &ingress.stapler;
    let mut pause = RETRY_MAX;
    for certificate in &certificates {
        let source = certificate.ocsp.as_ref().expect("BUG: filtered on ocsp above");
        let now = SystemTime::now();
        let due = {
            let mut states = stapler.states.lock().expect("BUG: stapler lock poisoned");
            let state = states.entry(source.request.clone()).or_default();
            if let Some(staple) = &state.staple
                && staple.next_update.is_some_and(|next| next <= now)
            {
                tracing::warn!(url = %source.url, names = ?certificate.names, "the stapled OCSP response expired; serving without one");
                state.staple = None;
                certificate.set_ocsp(None);
            }
            let due_at = match (&state.staple, state.retry_at) {
                (_, Some(retry)) => retry,
                (Some(staple), None) => staple.refresh_at,
                (None, None) => now,
            };
            match due_at.duration_since(now) {
                Ok(wait) if !wait.is_zero() => {
                    pause = pause.min(wait);
                    false
                }
                _ => true,
            }
        };
        if !due {
            continue;
        }
        let result = match fetch(&source.url, &source.request).await {
            Ok(der) => check_response(&der, &source.serial, SystemTime::now()).map(|times| (der, times)),
            Err(error) => Err(error),
        };
        let now = SystemTime::now();
        let mut states = stapler.states.lock().expect("BUG: stapler lock poisoned");
        let state = states.entry(source.request.clone()).or_default();
        match result {
            Ok((der, (this_update, next_update))) => {
                let refresh_at = match next_update {
                    Some(next) => this_update + next.duration_since(this_update).unwrap_or_default() / 2,
                    None => now + REFRESH_WITHOUT_NEXT_UPDATE,
                }
                .max(now + Duration::from_secs(60));
                tracing::debug!(url = %source.url, names = ?certificate.names, "stapling a fresh OCSP response");
                certificate.set_ocsp(Some(der.clone()));
                state.staple = Some(Staple { der: Arc::new(der), next_update, refresh_at });
                state.retry_at = None;
                state.failures = 0;
                pause = pause.min(refresh_at.duration_since(now).unwrap_or_default());
            }
            Err(error) => {
                state.failures += 1;
                let backoff = RETRY_FIRST.saturating_mul(1 << state.failures.min(7).saturating_sub(1)).min(RETRY_MAX);
                tracing::warn!(url = %source.url, names = ?certificate.names, %error, retry_in = ?backoff, "no OCSP response to staple");
                if error == OcspError::NotGood {
                    state.staple = None;
                    certificate.set_ocsp(None);
                }
                state.retry_at = Some(now + backoff);
                pause = pause.min(backoff);
            }
        }
    }
    // Forget certificates no longer served.
    stapler
        .states
        .lock()
        .expect("BUG: stapler lock poisoned")
        .retain(|request, _| certificates.iter().any(|c| c.ocsp.as_ref().is_some_and(|s| s.request == *request)));
    pause.max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, and a leaf it signs with `serial` and an OCSP responder URL: (leaf DER, CA DER,
    /// CA PEM, CA key PEM).
    fn chain(serial: u64) -> (Vec<u8>, Vec<u8>, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "Berth OCSP test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let (ca_pem, ca_key_pem) = (ca.pem(), ca_key.serialize_pem());
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["web.example".to_string()]).unwrap();
        params.serial_number = Some(serial.into());
        let access = seq(&[&seq(&[
            &[0x06, 0x08, 0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01],
            &tlv(0x86, b"http://127.0.0.1:9/ocsp"),
        ])]);
        params.custom_extensions.push(CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], access));
        let leaf = params.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap();
        (leaf.der().to_vec(), ca.der().to_vec(), ca_pem, ca_key_pem)
    }

    /// OpenSSL's OCSP responder, offline: its answer to `request` given an index line for serial
    /// 1000 with `status` (`V` valid, `R` revoked), valid for `minutes`.
    fn openssl_response(request: &[u8], ca_pem: &str, ca_key_pem: &str, status: &str, minutes: u32) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("berth-ocsp-unit-{}-{status}-{minutes}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let revoked = if status == "R" { "261201000000Z" } else { "" };
        std::fs::write(dir.join("index.txt"), format!("{status}\t491231235959Z\t{revoked}\t1000\tunknown\t/CN=web\n"))
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.join("ca.key"), ca_key_pem).unwrap();
        std::fs::write(dir.join("request.der"), request).unwrap();
        let output = std::process::Command::new("openssl")
            .current_dir(&dir)
            .args(["ocsp", "-index", "index.txt", "-rsigner", "ca.pem", "-rkey", "ca.key", "-CA", "ca.pem"])
            .args(["-reqin", "request.der", "-respout", "response.der", "-nmin", &minutes.to_string()])
            .output()
            .expect("openssl is installed");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let response = std::fs::read(dir.join("response.der")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        response
    }

    #[test]
    fn requests_name_the_responder_and_openssl_answers_are_checked() {
        let (leaf, ca, ca_pem, ca_key_pem) = chain(0x1000);
        let source = OcspSource::of(&[CertificateDer::from(leaf.clone()), CertificateDer::from(ca.clone())]).unwrap();
        assert_eq!(source.url, "http://127.0.0.1:9/ocsp");
        assert_eq!(source.serial, vec![0x10, 0x00]);
        // Without its issuer in the chain there is nothing to ask.
        assert!(OcspSource::of(&[CertificateDer::from(leaf)]).is_none());

        let now = SystemTime::now();
        let good = openssl_response(&source.request, &ca_pem, &ca_key_pem, "V", 10);
        let (this_update, next_update) = check_response(&good, &source.serial, now).unwrap();
        assert!(this_update <= now + Duration::from_secs(5));
        assert!(next_update.unwrap() > now + Duration::from_secs(500));
        assert_eq!(check_response(&good, &[0x20, 0x00], now), Err(OcspError::NoMatch));
        assert_eq!(check_response(&good, &source.serial, now + Duration::from_secs(3600)), Err(OcspError::Expired));
        let revoked = openssl_response(&source.request, &ca_pem, &ca_key_pem, "R", 10);
        assert_eq!(check_response(&revoked, &source.serial, now), Err(OcspError::NotGood));
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
        assert_eq!(check_response(b"", b"\x10", now), Err(OcspError::Malformed));
        assert_eq!(check_response(b"\x30\x03\x0a\x01\x00", b"\x10", now), Err(OcspError::Malformed));
        // OCSPResponse { responseStatus tryLater(3) }
        assert_eq!(check_response(b"\x30\x03\x0a\x01\x03", b"\x10", now), Err(OcspError::Status(3)));
        assert_eq!(check_response(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], b"\x10", now), Err(OcspError::Malformed));
    }
}
