//! Sign-in through OAuth2 providers: any OpenID Connect provider (found by its discovery
//! document) and GitHub. Authorization code flow with PKCE (S256), a one-time `state` and, for
//! OIDC, a `nonce`; ID tokens are checked against the provider's published keys, issuer, audience,
//! expiry and nonce. What comes out is a verified email address; linking it to an account is the
//! service layer's business.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet, ExtraTokenFields,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardRevocableToken, StandardTokenResponse,
    TokenResponse, TokenUrl,
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
            ProviderKind::Oidc { issuer: one("issuer")?.trim_end_matches('/').to_string() }
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

/// The ID token's extra field in the token response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdTokenFields {
    #[serde(default)]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenFields {}

type TokenResponseWithIdToken = StandardTokenResponse<IdTokenFields, BasicTokenType>;
type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    TokenResponseWithIdToken,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
    /// Microsoft Entra ID's "the email's domain is verified by the tenant" (it sends no
    /// `email_verified`, and its `email` is otherwise a mutable, unverified attribute). Believed
    /// from Entra's issuers only, as a bool or a "true"/"1" string.
    #[serde(default)]
    xms_edov: Option<serde_json::Value>,
    /// The party the token was issued to, when it has several audiences.
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    name: Option<String>,
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
    /// Discovery documents by issuer and signing keys by JWKS URL, with when they were fetched:
    /// a public `/start` must not make Berth fetch from the provider on every hit.
    discovered: Mutex<HashMap<String, (Instant, Discovery)>>,
    keys: Mutex<HashMap<String, (Instant, JwkSet)>>,
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
/// A token signed with a key not in the cached set refetches the set, at most this often.
const KEYS_REFETCH_AFTER: Duration = Duration::from_secs(30);

impl SignIn {
    /// `public_url` is where browsers reach this server; callbacks are under it.
    pub fn new(public_url: &str, providers: Vec<Provider>) -> SignIn {
        SignIn {
            public_url: public_url.trim_end_matches('/').to_string(),
            providers,
            pending: Mutex::new(HashMap::new()),
            discovered: Mutex::default(),
            keys: Mutex::default(),
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

    pub fn provider_names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name.clone()).collect()
    }

    pub fn provider(&self, name: &str) -> Result<&Provider, SignInError> {
        self.providers.iter().find(|p| p.name == name).ok_or_else(|| SignInError::UnknownProvider(name.into()))
    }

    fn redirect_url(&self, provider: &str) -> String {
        format!("{}/api/v1/auth/{provider}/callback", self.public_url)
    }

    async fn discover(&self, issuer: &str) -> Result<Discovery, SignInError> {
        let cached = self.discovered.lock().expect("BUG: discovery cache poisoned").get(issuer).cloned();
        if let Some((fetched, discovery)) = cached
            && fetched.elapsed() < METADATA_TTL
        {
            return Ok(discovery);
        }
        let discovery = self.fetch_discovery(issuer).await?;
        self.discovered
            .lock()
            .expect("BUG: discovery cache poisoned")
            .insert(issuer.to_string(), (Instant::now(), discovery.clone()));
        Ok(discovery)
    }

    async fn fetch_discovery(&self, issuer: &str) -> Result<Discovery, SignInError> {
        let url = format!("{issuer}/.well-known/openid-configuration");
        let discovery: Discovery = get_json(self.http.get(&url), &format!("the discovery document at {url}")).await?;
        if discovery.issuer.trim_end_matches('/') != issuer {
            return Err(SignInError::Provider(format!("the discovery document names issuer {}", discovery.issuer)));
        }
        Ok(discovery)
    }

    async fn client(&self, provider: &Provider) -> Result<(OAuthClient, Option<Discovery>), SignInError> {
        let (auth, token, discovery) = match &provider.kind {
            ProviderKind::Oidc { issuer } => {
                let d = self.discover(issuer).await?;
                (d.authorization_endpoint.clone(), d.token_endpoint.clone(), Some(d))
            }
            ProviderKind::GitHub { auth_url, token_url, .. } => (auth_url.clone(), token_url.clone(), None),
        };
        let bad = |e: oauth2::url::ParseError| SignInError::Provider(format!("bad endpoint URL: {e}"));
        let client = oauth2::Client::new(ClientId::new(provider.client_id.clone()))
            .set_client_secret(ClientSecret::new(provider.client_secret.clone()))
            .set_auth_uri(AuthUrl::new(auth).map_err(bad)?)
            .set_token_uri(TokenUrl::new(token).map_err(bad)?)
            .set_redirect_uri(RedirectUrl::new(self.redirect_url(&provider.name)).map_err(bad)?);
        Ok((client, discovery))
    }

    /// Starts a sign-in: the URL to send the browser to.
    /// The provider URL the browser goes to, and the flow's `state` (the caller binds it to the
    /// browser with a cookie, checked at the callback).
    pub async fn start(&self, provider: &str) -> Result<(String, String), SignInError> {
        let provider = self.provider(provider)?;
        let (client, _) = self.client(provider).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = CsrfToken::new_random().secret().clone();
        let scopes: &[&str] = match provider.kind {
            ProviderKind::Oidc { .. } => &["openid", "email", "profile"],
            ProviderKind::GitHub { .. } => &["read:user", "user:email"],
        };
        let mut request = client.authorize_url(CsrfToken::new_random).set_pkce_challenge(challenge);
        for scope in scopes {
            request = request.add_scope(Scope::new(scope.to_string()));
        }
        if matches!(provider.kind, ProviderKind::Oidc { .. }) {
            request = request.add_extra_param("nonce", nonce.clone());
        }
        let (url, state) = request.url();
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

    /// Finishes a sign-in from the provider's redirect: a verified email, or why not.
    pub async fn finish(&self, provider: &str, code: &str, state: &str) -> Result<Identity, SignInError> {
        let provider = self.provider(provider)?;
        // One use only, whatever happens next.
        let pending = self.pending.lock().expect("BUG: pending sign-ins poisoned").remove(state);
        let Some(pending) = pending.filter(|p| p.provider == provider.name && p.started.elapsed() < PENDING_FOR) else {
            return Err(SignInError::InvalidState);
        };
        let (client, discovery) = self.client(provider).await?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| SignInError::Provider(format!("exchanging the code: {}", with_causes(&e))))?;
        match (&provider.kind, discovery) {
            (ProviderKind::Oidc { .. }, Some(discovery)) => {
                let id_token = token
                    .extra_fields()
                    .id_token
                    .as_deref()
                    .ok_or_else(|| SignInError::InvalidToken("the token response has no id_token".into()))?;
                self.verify_id_token(provider, &discovery, id_token, &pending.nonce).await
            }
            (ProviderKind::GitHub { api_url, .. }, _) => {
                self.github_email(api_url, token.access_token().secret()).await
            }
            (ProviderKind::Oidc { .. }, None) => unreachable!("BUG: OIDC clients come with their discovery document"),
        }
    }

    async fn verify_id_token(
        &self,
        provider: &Provider,
        discovery: &Discovery,
        id_token: &str,
        nonce: &str,
    ) -> Result<Identity, SignInError> {
        let invalid = |e: &dyn std::fmt::Display| SignInError::InvalidToken(e.to_string());
        let header = jsonwebtoken::decode_header(id_token).map_err(|e| invalid(&e))?;
        // Only asymmetric signatures: a symmetric or unsigned token proves nothing here.
        let allowed = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::ES256, Algorithm::ES384];
        if !allowed.contains(&header.alg) {
            return Err(SignInError::InvalidToken(format!("unaccepted signature algorithm {:?}", header.alg)));
        }
        let jwk = self.signing_key(&discovery.jwks_uri, header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| invalid(&e))?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[provider.client_id.as_str()]);
        validation.set_issuer(&[discovery.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation).map_err(|e| invalid(&e))?.claims;
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(SignInError::InvalidToken("the nonce does not match this sign-in".into()));
        }
        // OpenID Connect Core 3.1.3.7: a token for several audiences names the one it was issued
        // to, and a named `azp` must be this client.
        let audiences = claims.aud.as_ref().and_then(serde_json::Value::as_array).map_or(1, Vec::len);
        match claims.azp.as_deref() {
            Some(azp) if azp != provider.client_id => {
                return Err(SignInError::InvalidToken(format!("the token was issued to {azp}, not to this client")));
            }
            None if audiences > 1 => {
                return Err(SignInError::InvalidToken("a token for several audiences without azp".into()));
            }
            _ => {}
        }
        let verified = match claims.email_verified {
            Some(verified) => verified,
            None => is_entra(&discovery.issuer) && claims.xms_edov.as_ref().is_some_and(claim_is_true),
        };
        match (claims.email, verified) {
            (Some(email), true) => Ok(Identity {
                issuer: discovery.issuer.clone(),
                subject: claims.sub,
                email: email.to_lowercase(),
                name: claims.name,
            }),
            _ => Err(SignInError::UnverifiedEmail),
        }
    }

    /// The key `kid` of the set at `jwks_uri`, from the cache; a `kid` the cached set lacks (the
    /// provider rotated its keys) refetches the set, at most every [`KEYS_REFETCH_AFTER`]. A
    /// token without `kid` is accepted only when the provider publishes a single key.
    async fn signing_key(&self, jwks_uri: &str, kid: Option<&str>) -> Result<Jwk, SignInError> {
        let pick = |keys: &JwkSet| match kid {
            Some(kid) => keys.find(kid).cloned(),
            None if keys.keys.len() == 1 => keys.keys.first().cloned(),
            None => None,
        };
        let cached = self.keys.lock().expect("BUG: key cache poisoned").get(jwks_uri).cloned();
        if let Some((fetched, keys)) = &cached {
            let fresh = fetched.elapsed() < METADATA_TTL;
            match pick(keys) {
                Some(jwk) if fresh => return Ok(jwk),
                None if fresh && fetched.elapsed() < KEYS_REFETCH_AFTER => {
                    return Err(SignInError::InvalidToken("signed with a key the provider does not publish".into()));
                }
                _ => {}
            }
        }
        let keys: JwkSet = get_json(self.http.get(jwks_uri), "the signing keys").await?;
        let jwk = pick(&keys);
        self.keys.lock().expect("BUG: key cache poisoned").insert(jwks_uri.to_string(), (Instant::now(), keys));
        jwk.ok_or_else(|| SignInError::InvalidToken("signed with a key the provider does not publish".into()))
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
        assert!(matches!(&p.kind, ProviderKind::Oidc { issuer } if issuer == "https://id.example.com"));
        assert_eq!(p.auto_join[0].team, "main");
        let g = Provider::parse("name=github,github=true,client-id=a,client-secret=b").unwrap();
        assert!(matches!(g.kind, ProviderKind::GitHub { .. }));
        let missing = Provider::parse("name=corp,client-id=a,client-secret=b").unwrap_err().to_string();
        assert!(missing.contains("issuer"), "{missing}");
    }
}
