//! Sign-in through OAuth2 providers: any OpenID Connect provider (found by its discovery
//! document, through the `openidconnect` crate) and GitHub (`oauth2`). Authorization code flow
//! with PKCE (S256), a one-time `state` and, for OIDC, a `nonce`; ID tokens are checked against the
//! provider's published keys (asymmetric algorithms only), issuer, audience, `azp`, expiry and
//! nonce. What comes out is a verified identity; linking it to an account is the service layer's
//! business.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreResponseType,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenClaims, IdTokenFields,
    IdTokenVerifier, IssuerUrl, JsonWebKeySet, Nonce, OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, SignatureVerificationError, StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub enum ProviderKind {
    /// Any OpenID Connect provider; endpoints come from `{issuer}/.well-known/openid-configuration`.
    Oidc { issuer: String },
    /// GitHub (OAuth2, emails from its API). The URLs are configurable for GitHub Enterprise.
    GitHub { auth_url: String, token_url: String, api_url: String },
}

/// New users whose verified email is in `domain` join `team` as `role` on first sign-in.
#[derive(Debug, Clone)]
pub struct AutoJoin {
    pub domain: String,
    pub team: String,
    pub role: String,
}

impl AutoJoin {
    /// Parses `DOMAIN:TEAM:ROLE`.
    pub fn parse(rule: &str) -> anyhow::Result<AutoJoin> {
        match rule.split(':').collect::<Vec<_>>()[..] {
            [domain, team, role] => {
                Ok(AutoJoin { domain: domain.to_lowercase(), team: team.into(), role: role.into() })
            }
            _ => Err(anyhow::anyhow!("auto-join={rule:?} is not DOMAIN:TEAM:ROLE")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    /// Appears in the URLs: `/api/v1/auth/{name}/start`.
    pub name: String,
    pub kind: ProviderKind,
    pub client_id: String,
    pub client_secret: String,
    pub auto_join: Vec<AutoJoin>,
}

impl Provider {
    /// Parses `name=corp,issuer=URL,client-id=ID,client-secret=SECRET[,auto-join=DOMAIN:TEAM:ROLE]`
    /// (for GitHub: `name=github,github=true,...`).
    pub fn parse(spec: &str) -> anyhow::Result<Provider> {
        let mut fields: HashMap<&str, Vec<&str>> = HashMap::new();
        for part in spec.split(',') {
            let (key, value) =
                part.split_once('=').ok_or_else(|| anyhow::anyhow!("{part:?} in {spec:?} is not key=value"))?;
            fields.entry(key.trim()).or_default().push(value.trim());
        }
        let one = |key: &str| -> anyhow::Result<String> {
            fields
                .get(key)
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .ok_or_else(|| anyhow::anyhow!("the sign-in provider {spec:?} needs {key}=..."))
        };
        let kind = if fields.contains_key("github") {
            let github = |key: &str, default: &str| one(key).unwrap_or_else(|_| default.to_string());
            ProviderKind::GitHub {
                auth_url: github("auth-url", "https://github.com/login/oauth/authorize"),
                token_url: github("token-url", "https://github.com/login/oauth/access_token"),
                api_url: github("api-url", "https://api.github.com"),
            }
        } else {
            // Kept as written: the discovery document and the tokens must name it exactly.
            ProviderKind::Oidc { issuer: one("issuer")? }
        };
        let auto_join = fields
            .get("auto-join")
            .into_iter()
            .flatten()
            .map(|rule| AutoJoin::parse(rule))
            .collect::<anyhow::Result<_>>()?;
        Ok(Provider {
            name: one("name")?,
            kind,
            client_id: one("client-id")?,
            client_secret: one("client-secret")?,
            auto_join,
        })
    }
}

/// Why a sign-in through a provider failed. Callers show the message; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("no sign-in provider named {0}")]
    UnknownProvider(String),
    #[error("the sign-in attempt is unknown, used or expired (state mismatch)")]
    InvalidState,
    #[error("the provider did not answer as expected: {0}")]
    Provider(String),
    #[error("the identity token is not valid: {0}")]
    InvalidToken(String),
    #[error("the provider has no verified email address for this account")]
    UnverifiedEmail,
    #[error("too many sign-ins are in progress; try again in a few minutes")]
    Busy,
}

/// Sign-ins started and not finished that are kept at most (each for up to ten minutes): the
/// start endpoint is public, and must not be a way to fill memory.
const MAX_PENDING: usize = 10_000;

/// The ID token's claims beyond the standard ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ExtraClaims {
    /// Microsoft Entra ID's "the email's domain is verified by the tenant" (it sends no
    /// `email_verified`, and its `email` is otherwise a mutable, unverified attribute). Believed
    /// from Entra's issuers only, as a bool or a "true"/"1" string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    xms_edov: Option<serde_json::Value>,
}

impl AdditionalClaims for ExtraClaims {}

type OidcTokenResponse = StandardTokenResponse<
    IdTokenFields<
        ExtraClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;
/// An OpenID Connect client as discovery makes it: authorization endpoint known, token and
/// userinfo endpoints if the provider names them.
type OidcClient = openidconnect::Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    OidcTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// GitHub's OAuth2 client: authorization and token endpoints set.
type GitHubClient =
    oauth2::basic::BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The only signature algorithms an ID token may use: asymmetric ones. A provider advertising
/// `HS256` would otherwise make the client secret a signing key, and `none` proves nothing.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 5] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

/// A provider's discovery document with its signing keys, and when each was fetched.
#[derive(Clone)]
struct Discovered {
    fetched: Instant,
    keys_fetched: Instant,
    metadata: CoreProviderMetadata,
}

struct Pending {
    provider: String,
    verifier: String,
    nonce: String,
    started: Instant,
}

/// A verified identity from a provider.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Who vouches for the identity (the OIDC issuer, or GitHub's API URL)...
    pub issuer: String,
    /// ... and its stable, unique identifier there (`sub`, GitHub's numeric user id).
    pub subject: String,
    pub email: String,
    pub name: Option<String>,
}

/// How long a user has between starting a sign-in and coming back.
const PENDING_FOR: Duration = Duration::from_secs(600);

pub struct SignIn {
    public_url: String,
    providers: Vec<Provider>,
    pending: Mutex<HashMap<String, Pending>>,
    http: reqwest::Client,
    /// Discovery documents and signing keys by issuer: a public `/start` must not make Berth
    /// fetch from the provider on every hit.
    discovered: Mutex<HashMap<String, Discovered>>,
    /// A token signed with a key not in the cached set refetches the set, at most this often.
    keys_refetch_after: Duration,
}

/// Microsoft Entra ID's issuers (`xms_edov` means something only there).
fn is_entra(issuer: &str) -> bool {
    ["https://login.microsoftonline.com/", "https://sts.windows.net/"].iter().any(|prefix| issuer.starts_with(prefix))
}

/// A claim that says yes: `true`, `"true"` or `"1"`.
fn claim_is_true(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Bool(yes) => *yes,
        serde_json::Value::String(text) => text == "true" || text == "1",
        _ => false,
    }
}

/// An error with every cause it carries ("error sending request: ...: invalid peer certificate:
/// UnknownIssuer"): reqwest's own message leaves out why.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = inner.source();
    }
    text
}

/// The client for providers' endpoints: rustls, the system's roots and `extra_roots`, no
/// redirects followed (following a provider's redirects would open the server to SSRF).
fn provider_client(extra_roots: &[reqwest::Certificate]) -> anyhow::Result<reqwest::Client> {
    let mut builder =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(10));
    for root in extra_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    Ok(builder.build()?)
}

/// How long discovery documents and signing keys are trusted before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// How far the provider's clock may be ahead of ours when checking an ID token's expiry.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The default of `SignIn::keys_refetch_after`.
const KEYS_REFETCH_AFTER: Duration = Duration::from_secs(30);

impl SignIn {
    /// `public_url` is where browsers reach this server; callbacks are under it.
    pub fn new(public_url: &str, providers: Vec<Provider>) -> SignIn {
        SignIn {
            public_url: public_url.trim_end_matches('/').to_string(),
            providers,
            pending: Mutex::new(HashMap::new()),
            discovered: Mutex::default(),
            keys_refetch_after: KEYS_REFETCH_AFTER,
            http: provider_client(&[]).expect("BUG: a client with the system's roots always builds"),
        }
    }

    /// Also trusts the CAs in `pem` (besides the system's roots) for the providers' HTTPS: a
    /// private provider, or a test one.
    pub fn with_ca(mut self, pem: &[u8]) -> anyhow::Result<SignIn> {
        let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| anyhow::anyhow!("reading the CA: {e}"))?;
        if roots.is_empty() {
            anyhow::bail!("no certificate in the sign-in CA file");
        }
        self.http = provider_client(&roots)?;
        Ok(self)
    }

    /// How often at most a token signed with an unknown key makes Berth fetch the provider's
    /// keys again (30 s by default: tokens with made-up key ids must not make Berth hammer the
    /// provider).
    pub fn with_key_refetch_interval(mut self, interval: Duration) -> SignIn {
        self.keys_refetch_after = interval;
        self
    }

    pub fn provider_names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name.clone()).collect()
    }

    pub fn provider(&self, name: &str) -> Result<&Provider, SignInError> {
        self.providers.iter().find(|p| p.name == name).ok_or_else(|| SignInError::UnknownProvider(name.into()))
    }

    fn redirect_url(&self, provider: &str) -> String {
        format!("{}/api/v1/auth/{provider}/callback", self.public_url)
    }

    /// The provider's discovery document and keys, from the cache while they are fresh.
    async fn discover(&self, issuer: &str) -> Result<Discovered, SignInError> {
        let cached = self.discovered.lock().expect("BUG: discovery cache poisoned").get(issuer).cloned();
        if let Some(discovered) = cached
            && discovered.fetched.elapsed() < METADATA_TTL
        {
            return Ok(discovered);
        }
        let url = IssuerUrl::new(issuer.to_string())
            .map_err(|e| SignInError::Provider(format!("the issuer {issuer} is not a URL: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(url, &self.http).await.map_err(|e| {
            SignInError::Provider(format!("fetching the discovery document of {issuer}: {}", with_causes(&e)))
        })?;
        let now = Instant::now();
        let discovered = Discovered { fetched: now, keys_fetched: now, metadata };
        self.discovered.lock().expect("BUG: discovery cache poisoned").insert(issuer.to_string(), discovered.clone());
        Ok(discovered)
    }

    /// The provider published keys the cached set lacks (it rotated them): fetches the set again,
    /// at most every `keys_refetch_after`. `None` when it was fetched too recently.
    async fn refetch_keys(&self, issuer: &str, stale: &Discovered) -> Result<Option<Discovered>, SignInError> {
        if stale.keys_fetched.elapsed() < self.keys_refetch_after {
            return Ok(None);
        }
        let keys = JsonWebKeySet::fetch_async(stale.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| SignInError::Provider(format!("fetching the signing keys: {}", with_causes(&e))))?;
        let mut fresh = stale.clone();
        fresh.metadata = fresh.metadata.set_jwks(keys);
        fresh.keys_fetched = Instant::now();
        self.discovered.lock().expect("BUG: discovery cache poisoned").insert(issuer.to_string(), fresh.clone());
        Ok(Some(fresh))
    }

    fn oidc_client(&self, provider: &Provider, discovered: &Discovered) -> Result<OidcClient, SignInError> {
        let redirect = RedirectUrl::new(self.redirect_url(&provider.name))
            .map_err(|e| SignInError::Provider(format!("bad callback URL: {e}")))?;
        Ok(OidcClient::from_provider_metadata(
            discovered.metadata.clone(),
            ClientId::new(provider.client_id.clone()),
            Some(ClientSecret::new(provider.client_secret.clone())),
        )
        .set_redirect_uri(redirect))
    }

    fn github_client(&self, provider: &Provider, auth_url: &str, token_url: &str) -> Result<GitHubClient, SignInError> {
        let bad = |e: oauth2::url::ParseError| SignInError::Provider(format!("bad endpoint URL: {e}"));
        Ok(oauth2::basic::BasicClient::new(oauth2::ClientId::new(provider.client_id.clone()))
            .set_client_secret(oauth2::ClientSecret::new(provider.client_secret.clone()))
            .set_auth_uri(oauth2::AuthUrl::new(auth_url.to_string()).map_err(bad)?)
            .set_token_uri(oauth2::TokenUrl::new(token_url.to_string()).map_err(bad)?)
            .set_redirect_uri(oauth2::RedirectUrl::new(self.redirect_url(&provider.name)).map_err(bad)?))
    }

    /// Starts a sign-in: the provider URL the browser goes to, and the flow's `state` (the caller
    /// binds it to the browser with a cookie, checked at the callback).
    pub async fn start(&self, provider: &str) -> Result<(String, String), SignInError> {
        let provider = self.provider(provider)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = match &provider.kind {
            ProviderKind::Oidc { issuer } => {
                let client = self.oidc_client(provider, &self.discover(issuer).await?)?;
                // `openid` is added by the crate.
                let (url, state, nonce) = client
                    .authorize_url(
                        AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                        CsrfToken::new_random,
                        Nonce::new_random,
                    )
                    .add_scope(Scope::new("email".into()))
                    .add_scope(Scope::new("profile".into()))
                    .set_pkce_challenge(challenge)
                    .url();
                (url, state, nonce.secret().clone())
            }
            ProviderKind::GitHub { auth_url, token_url, .. } => {
                let client = self.github_client(provider, auth_url, token_url)?;
                let (url, state) = client
                    .authorize_url(CsrfToken::new_random)
                    .add_scope(Scope::new("read:user".into()))
                    .add_scope(Scope::new("user:email".into()))
                    .set_pkce_challenge(challenge)
                    .url();
                (url, state, String::new())
            }
        };
        let mut pending = self.pending.lock().expect("BUG: pending sign-ins poisoned");
        pending.retain(|_, p| p.started.elapsed() < PENDING_FOR);
        if pending.len() >= MAX_PENDING {
            return Err(SignInError::Busy);
        }
        pending.insert(
            state.secret().clone(),
            Pending {
                provider: provider.name.clone(),
                verifier: verifier.secret().clone(),
                nonce,
                started: Instant::now(),
            },
        );
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Finishes a sign-in from the provider's redirect: a verified identity, or why not.
    pub async fn finish(&self, provider: &str, code: &str, state: &str) -> Result<Identity, SignInError> {
        let provider = self.provider(provider)?;
        // One use only, whatever happens next.
        let pending = self.pending.lock().expect("BUG: pending sign-ins poisoned").remove(state);
        let Some(pending) = pending.filter(|p| p.provider == provider.name && p.started.elapsed() < PENDING_FOR) else {
            return Err(SignInError::InvalidState);
        };
        let code = AuthorizationCode::new(code.to_string());
        let verifier = PkceCodeVerifier::new(pending.verifier);
        let exchange_failed =
            |e: &dyn std::error::Error| SignInError::Provider(format!("exchanging the code: {}", with_causes(e)));
        match &provider.kind {
            ProviderKind::Oidc { issuer } => {
                let discovered = self.discover(issuer).await?;
                let client = self.oidc_client(provider, &discovered)?;
                let token = client
                    .exchange_code(code)
                    .map_err(|e| exchange_failed(&e))?
                    .set_pkce_verifier(verifier)
                    .request_async(&self.http)
                    .await
                    .map_err(|e| exchange_failed(&e))?;
                let id_token = token
                    .id_token()
                    .ok_or_else(|| SignInError::InvalidToken("the token response has no id_token".into()))?;
                let nonce = Nonce::new(pending.nonce);
                let verify = |discovered: &Discovered| {
                    let verifier = IdTokenVerifier::new_public_client(
                        ClientId::new(provider.client_id.clone()),
                        discovered.metadata.issuer().clone(),
                        discovered.metadata.jwks().clone(),
                    )
                    .set_allowed_algs(ALLOWED_ALGS)
                    // Clocks differ: a token is taken until a minute after its `exp`, as before.
                    .set_time_fn(|| chrono::Utc::now() - CLOCK_SKEW);
                    id_token.claims(&verifier, &nonce).cloned()
                };
                let claims = match verify(&discovered) {
                    Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey)) => {
                        match self.refetch_keys(issuer, &discovered).await? {
                            Some(fresh) => verify(&fresh),
                            None => Err(ClaimsVerificationError::SignatureVerification(
                                SignatureVerificationError::NoMatchingKey,
                            )),
                        }
                    }
                    verified => verified,
                }
                .map_err(|e| SignInError::InvalidToken(with_causes(&e)))?;
                identity_from(provider, &claims)
            }
            ProviderKind::GitHub { auth_url, token_url, api_url } => {
                let token = self
                    .github_client(provider, auth_url, token_url)?
                    .exchange_code(code)
                    .set_pkce_verifier(verifier)
                    .request_async(&self.http)
                    .await
                    .map_err(|e| exchange_failed(&e))?;
                self.github_email(api_url, token.access_token().secret()).await
            }
        }
    }

    async fn github_email(&self, api_url: &str, access_token: &str) -> Result<Identity, SignInError> {
        #[derive(Deserialize)]
        struct Email {
            email: String,
            primary: bool,
            verified: bool,
        }
        #[derive(Deserialize)]
        struct User {
            id: u64,
        }
        let api_url = api_url.trim_end_matches('/');
        let github = |path: &str| {
            self.http
                .get(format!("{api_url}{path}"))
                .bearer_auth(access_token)
                .header("user-agent", "berth")
                .header("accept", "application/vnd.github+json")
        };
        let user: User = get_json(github("/user"), "the account").await?;
        let emails: Vec<Email> = get_json(github("/user/emails"), "the account's emails").await?;
        emails
            .into_iter()
            .find(|e| e.primary && e.verified)
            .map(|e| Identity {
                issuer: api_url.to_string(),
                subject: user.id.to_string(),
                email: e.email.to_lowercase(),
                name: None,
            })
            .ok_or(SignInError::UnverifiedEmail)
    }
}

/// The identity in verified ID token claims: `azp` checked, the email only if verified.
fn identity_from(
    provider: &Provider,
    claims: &IdTokenClaims<ExtraClaims, CoreGenderClaim>,
) -> Result<Identity, SignInError> {
    // OpenID Connect Core 3.1.3.7: a named `azp` must be this client. (A token for several
    // audiences is refused by the verifier already: no other audience is trusted.)
    if let Some(azp) = claims.authorized_party()
        && azp.as_str() != provider.client_id
    {
        return Err(SignInError::InvalidToken(format!("the token was issued to {}, not to this client", azp.as_str())));
    }
    let issuer = claims.issuer().as_str();
    let verified = match claims.email_verified() {
        Some(verified) => verified,
        None => is_entra(issuer) && claims.additional_claims().xms_edov.as_ref().is_some_and(claim_is_true),
    };
    match (claims.email(), verified) {
        (Some(email), true) => Ok(Identity {
            issuer: issuer.to_string(),
            subject: claims.subject().as_str().to_string(),
            email: email.as_str().to_lowercase(),
            name: claims.name().and_then(|name| name.get(None)).map(|name| name.as_str().to_string()),
        }),
        _ => Err(SignInError::UnverifiedEmail),
    }
}

/// Sends `request` and reads its JSON answer; a failure names `what` was being read.
async fn get_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<T, SignInError> {
    request
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| SignInError::Provider(format!("fetching {what}: {}", with_causes(&e))))?
        .json()
        .await
        .map_err(|e| SignInError::Provider(format!("reading {what}: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn entra_vouches_for_email_domains_only_as_entra() {
        assert!(super::is_entra("https://login.microsoftonline.com/tenant/v2.0"));
        assert!(!super::is_entra("https://login.microsoftonline.com.evil.example/"));
        assert!(!super::is_entra("https://id.example.com"));
        for (claim, yes) in [
            (serde_json::json!(true), true),
            (serde_json::json!("1"), true),
            (serde_json::json!("no"), false),
            (serde_json::json!(1), false),
        ] {
            assert_eq!(super::claim_is_true(&claim), yes, "{claim}");
        }
    }

    use super::*;

    #[test]
    fn provider_specs_parse_and_name_what_is_missing() {
        let p = Provider::parse(
            "name=corp,issuer=https://id.example.com/,client-id=a,client-secret=b,auto-join=example.com:main:viewer",
        )
        .unwrap();
        assert!(
            matches!(&p.kind, ProviderKind::Oidc { issuer } if issuer == "https://id.example.com/"),
            "kept as written"
        );
        assert_eq!(p.auto_join[0].team, "main");
        let g = Provider::parse("name=github,github=true,client-id=a,client-secret=b").unwrap();
        assert!(matches!(g.kind, ProviderKind::GitHub { .. }));
        let missing = Provider::parse("name=corp,client-id=a,client-secret=b").unwrap_err().to_string();
        assert!(missing.contains("issuer"), "{missing}");
    }
}
