//! One ACME order for one name (RFC 8555), with the challenge answered by the ingress: HTTP-01
//! on the plain listener or TLS-ALPN-01 (RFC 8737) on the TLS one.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use berth_ingress::Ingress;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde::{Deserialize, Serialize};

/// Why an order failed, in the CA's words when it said something.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OrderError {
    #[error("{0}")]
    Ca(String),
    /// The CA refused because of its rate limits (`rateLimited`): back off longer.
    #[error("{0}")]
    RateLimited(String),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl From<instant_acme::Error> for OrderError {
    fn from(error: instant_acme::Error) -> Self {
        match error {
            instant_acme::Error::Api(problem) => {
                let rate_limited = problem.r#type.as_deref().is_some_and(|t| t.ends_with(":rateLimited"));
                let text = match (&problem.detail, &problem.r#type) {
                    (Some(detail), Some(kind)) => format!("{detail} ({})", kind.rsplit(':').next().unwrap_or(kind)),
                    _ => problem.to_string(),
                };
                if rate_limited { OrderError::RateLimited(text) } else { OrderError::Ca(text) }
            }
            instant_acme::Error::Timeout(_) => OrderError::Ca("the CA did not finish validating in time".into()),
            other => OrderError::Other(anyhow::Error::new(other).context("talking to the ACME server")),
        }
    }
}

/// The account credentials file: the directory they belong to and the credentials.
#[derive(Serialize, Deserialize)]
struct SavedAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The ACME account for `directory`: from the saved credentials, or registered now (and saved
/// 0600) when there are none or they belong to another directory.
pub(crate) async fn account(
    directory: &str,
    email: &str,
    ca_file: Option<&Path>,
    saved: &Path,
) -> Result<Account, OrderError> {
    let builder = || match ca_file {
        Some(path) => {
            Account::builder_with_root(path).with_context(|| format!("reading the ACME CA {}", path.display()))
        }
        None => Account::builder().context("building the ACME client"),
    };
    if let Ok(text) = std::fs::read_to_string(saved)
        && let Ok(account) = serde_json::from_str::<SavedAccount>(&text)
        && account.directory == directory
    {
        return Ok(builder()?.from_credentials(account.credentials).await?);
    }
    let contact = format!("mailto:{email}");
    let new = NewAccount { contact: &[&contact], terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder()?.create(&new, directory.to_string(), None).await?;
    let text = serde_json::to_string(&SavedAccount { directory: directory.to_string(), credentials })
        .context("encoding the ACME account")?;
    crate::write_private(saved, text.as_bytes())
        .with_context(|| format!("saving the ACME account to {}", saved.display()))?;
    tracing::info!(directory, "registered an ACME account");
    Ok(account)
}

/// Orders a certificate for `name`; returns (PEM chain, PEM private key).
pub(crate) async fn order(
    account: &Account,
    ingress: &Ingress,
    name: &str,
    challenge: ChallengeType,
) -> Result<(String, String), OrderError> {
    let identifiers = [Identifier::Dns(name.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut answered = Answered { ingress, tokens: Vec::new(), alpn: Vec::new() };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        if authorization.status == AuthorizationStatus::Valid {
            continue;
        }
        let domain = authorization.identifier().to_string();
        let mut handle = authorization
            .challenge(challenge.clone())
            .ok_or_else(|| OrderError::Ca(format!("the CA offers no {challenge:?} challenge for {domain}")))?;
        let key_authorization = handle.key_authorization();
        match challenge {
            ChallengeType::TlsAlpn01 => {
                let (cert, key) = alpn_certificate(&domain, key_authorization.digest().as_ref())?;
                ingress
                    .set_alpn_challenge(&domain, Some((cert, key)))
                    .context("installing the TLS-ALPN-01 certificate")?;
                answered.alpn.push(domain);
            }
            _ => {
                ingress.set_http_challenge(&handle.token, Some(key_authorization.as_str().to_string()));
                answered.tokens.push(handle.token.clone());
            }
        }
        handle.set_ready().await?;
    }
    let patience =
        RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(Duration::from_secs(90));
    let status = order.poll_ready(&patience).await?;
    if status != OrderStatus::Ready {
        return Err(OrderError::Ca(format!("the order ended {status:?}")));
    }
    drop(answered);
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&patience).await?;
    Ok((chain_pem, key_pem))
}

/// The challenge answers installed for one order, taken down when it ends, however it ends.
struct Answered<'a> {
    ingress: &'a Ingress,
    tokens: Vec<String>,
    alpn: Vec<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.ingress.set_http_challenge(token, None);
        }
        for domain in &self.alpn {
            let _ = self.ingress.set_alpn_challenge(domain, None);
        }
    }
}

/// A self-signed certificate for `domain` carrying the critical acmeIdentifier extension with
/// the key authorization's digest (RFC 8737 section 3); DER certificate and PKCS#8 key.
fn alpn_certificate(domain: &str, digest: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}
