//! Sign-in through an OpenID Connect provider and through GitHub: small but real authorization
//! servers run on loopback (OIDC: discovery, authorization endpoint with PKCE, token endpoint,
//! JWKS, RS256 ID tokens; GitHub: its OAuth endpoints and `/user`, `/user/emails`) and the whole
//! redirect flow goes through Berth's router, including tampered state, a wrong audience, rotated
//! and symmetric keys and unverified emails. The providers speak HTTPS with certificates from the
//! test's own CA, which Berth trusts through `SignIn::with_ca` only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use berth_api::auth::{hash_token, new_token};
use berth_api::oidc::{AutoJoin, Provider, ProviderKind, SignIn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use tower::ServiceExt;

use crate::support::{self, ScratchDir};

const CLIENT_ID: &str = "berth-test";
const CLIENT_SECRET: &str = "test-client-secret";
const KEY_PEM: &[u8] = include_bytes!("oidc_key/test_key.pem");
const KEY_N: &str = include_str!("oidc_key/test_key.n");

/// Who the provider signs in next, and how it misbehaves.
struct ProviderState {
    issuer: String,
    /// The CA its HTTPS certificate comes from.
    ca_pem: String,
    email: Mutex<(String, bool)>,
    /// The `sub` of the tokens (default: derived from the email).
    subject: Mutex<Option<String>>,
    audience: Mutex<String>,
    /// The `azp` of the tokens (none by default).
    azp: Mutex<Option<String>>,
    /// The id of the signing key, in the published set and in the tokens' headers.
    kid: Mutex<String>,
    /// Tokens signed with HS256 keyed by the client secret instead of the RSA key.
    symmetric: std::sync::atomic::AtomicBool,
    grants: Mutex<HashMap<String, Grant>>,
    /// Fetches of the discovery document and of the signing keys.
    discoveries: std::sync::atomic::AtomicUsize,
    key_fetches: std::sync::atomic::AtomicUsize,
}

struct Grant {
    challenge: String,
    nonce: String,
    redirect_uri: String,
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    state: String,
    code_challenge: String,
    code_challenge_method: String,
    nonce: String,
    scope: String,
}

async fn discovery(State(p): State<Arc<ProviderState>>) -> Json<Value> {
    p.discoveries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Json(json!({
        "issuer": p.issuer,
        "authorization_endpoint": format!("{}/authorize", p.issuer),
        "token_endpoint": format!("{}/token", p.issuer),
        "jwks_uri": format!("{}/jwks", p.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn authorize(State(p): State<Arc<ProviderState>>, Query(q): Query<AuthorizeQuery>) -> impl IntoResponse {
    assert_eq!(q.response_type, "code");
    assert_eq!(q.client_id, CLIENT_ID);
    assert_eq!(q.code_challenge_method, "S256", "PKCE with S256");
    assert!(q.scope.split(' ').any(|s| s == "openid"));
    let code = new_token();
    p.grants.lock().unwrap().insert(
        code.clone(),
        Grant { challenge: q.code_challenge, nonce: q.nonce, redirect_uri: q.redirect_uri.clone() },
    );
    // The user "signs in" at once and is sent back.
    Redirect::to(&format!("{}?code={code}&state={}", q.redirect_uri, q.state))
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    code: String,
    code_verifier: String,
    redirect_uri: String,
}

#[derive(Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    nonce: String,
    email: String,
    email_verified: bool,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    azp: Option<String>,
}

/// Whether the token request authenticates as Berth's client (HTTP Basic, as both providers take it).
fn client_authenticated(headers: &HeaderMap) -> bool {
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

/// The S256 PKCE challenge of `verifier`.
fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

async fn token(
    State(p): State<Arc<ProviderState>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> impl IntoResponse {
    if !client_authenticated(&headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_client" })));
    }
    let Some(grant) = p.grants.lock().unwrap().remove(&form.code) else {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_grant" })));
    };
    let challenge = pkce_challenge(&form.code_verifier);
    if form.grant_type != "authorization_code"
        || challenge != grant.challenge
        || form.redirect_uri != grant.redirect_uri
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_grant", "error_description": "PKCE or redirect mismatch" })),
        );
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (email, verified) = p.email.lock().unwrap().clone();
    let claims = Claims {
        iss: p.issuer.clone(),
        sub: p.subject.lock().unwrap().clone().unwrap_or_else(|| format!("user-{email}")),
        aud: p.audience.lock().unwrap().clone(),
        exp: now + 300,
        iat: now,
        nonce: grant.nonce,
        email,
        email_verified: verified,
        name: "Test User".into(),
        azp: p.azp.lock().unwrap().clone(),
    };
    let symmetric = p.symmetric.load(std::sync::atomic::Ordering::SeqCst);
    let (algorithm, key) = if symmetric {
        (jsonwebtoken::Algorithm::HS256, jsonwebtoken::EncodingKey::from_secret(CLIENT_SECRET.as_bytes()))
    } else {
        (jsonwebtoken::Algorithm::RS256, jsonwebtoken::EncodingKey::from_rsa_pem(KEY_PEM).unwrap())
    };
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = Some(p.kid.lock().unwrap().clone());
    let id_token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    (
        StatusCode::OK,
        Json(json!({ "access_token": new_token(), "token_type": "Bearer", "expires_in": 3600, "id_token": id_token })),
    )
}

async fn jwks(State(p): State<Arc<ProviderState>>) -> Json<Value> {
    p.key_fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let kid = p.kid.lock().unwrap().clone();
    Json(
        json!({ "keys": [{ "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": KEY_N.trim(), "e": "AQAB" }] }),
    )
}

/// The provider, over HTTPS with a certificate from a CA of the test's own (Berth trusts it only
/// through `SignIn::with_ca`).
async fn start_provider() -> Arc<ProviderState> {
    let https = HttpsListener::bind().await;
    let state = Arc::new(ProviderState {
        issuer: https.url.clone(),
        ca_pem: https.ca_pem.clone(),
        email: Mutex::new(("alice@example.com".into(), true)),
        subject: Mutex::new(None),
        audience: Mutex::new(CLIENT_ID.into()),
        azp: Mutex::new(None),
        kid: Mutex::new("test-key".into()),
        symmetric: Default::default(),
        grants: Mutex::new(HashMap::new()),
        discoveries: Default::default(),
        key_fetches: Default::default(),
    });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/jwks", get(jwks))
        .with_state(state.clone());
    https.serve(app);
    state
}

/// A loopback listener for a provider double, with a certificate for it from a CA of the test's
/// own: its URL, and the CA Berth is told to trust.
struct HttpsListener {
    listener: tokio::net::TcpListener,
    url: String,
    chain: String,
    key: String,
    ca_pem: String,
}

impl HttpsListener {
    async fn bind() -> HttpsListener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (chain, key, ca_pem) = certificate_for("127.0.0.1");
        HttpsListener { listener, url, chain, key, ca_pem }
    }

    /// Serves `app` over HTTPS in the background.
    fn serve(self, app: Router) {
        let files = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (files.path().join("server.crt"), files.path().join("server.key"));
        std::fs::write(&cert_file, &self.chain).unwrap();
        std::fs::write(&key_file, &self.key).unwrap();
        let acceptor = berth_api::server::tls_acceptor(&cert_file, &key_file).unwrap();
        let limits = berth_api::server::ApiLimits::default();
        tokio::spawn(berth_api::server::serve(self.listener, Some(acceptor), app, limits, std::future::pending()));
    }
}

/// A leaf certificate for `name` (PEM chain and key) and the CA that signed it (PEM).
fn certificate_for(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    (format!("{}{}", leaf.pem(), ca.pem()), key.serialize_pem(), ca.pem())
}

struct Berth {
    router: Router,
    /// The sign-in provider's name in Berth's URLs.
    provider: String,
    /// The provider's CA, which the test's "browser" trusts too.
    provider_ca: String,
    _dir: ScratchDir,
}

async fn berth(provider: &ProviderState, name: &str) -> Berth {
    berth_trusting(provider, name, true).await
}

/// Berth with the provider `corp`, trusting the provider's CA or only the system's roots.
async fn berth_trusting(provider: &ProviderState, name: &str, trust_provider_ca: bool) -> Berth {
    let sign_in = |sign_in: SignIn| match trust_provider_ca {
        true => sign_in.with_ca(provider.ca_pem.as_bytes()).unwrap(),
        false => sign_in,
    };
    berth_with(corp(provider), &provider.ca_pem, name, sign_in).await
}

/// The OIDC provider as Berth is told about it.
fn corp(provider: &ProviderState) -> Provider {
    Provider {
        name: "corp".into(),
        kind: ProviderKind::Oidc { issuer: provider.issuer.clone() },
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        auto_join: vec![AutoJoin { domain: "example.com".into(), team: "main".into(), role: "viewer".into() }],
    }
}

/// Berth with one sign-in provider, its `SignIn` set up by `configure`.
async fn berth_with(provider: Provider, ca_pem: &str, name: &str, configure: impl FnOnce(SignIn) -> SignIn) -> Berth {
    let dir = ScratchDir::new(name);
    let store = support::store(&dir).await;
    store.bootstrap(&hash_token(&new_token()), "").await.unwrap();
    let provider_name = provider.name.clone();
    let sign_in = configure(SignIn::new("http://berth.test", vec![provider]));
    let router = support::router(&dir, store, Some(sign_in)).await;
    Berth { router, provider: provider_name, provider_ca: ca_pem.to_string(), _dir: dir }
}

impl Berth {
    async fn get(&self, uri: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
        self.get_with_cookie(uri, token, None).await
    }

    async fn get_with_cookie(
        &self,
        uri: &str,
        token: Option<&str>,
        cookie: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::get(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let response = self.router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Start → provider → the callback URL the provider redirects to (path and query on Berth),
    /// and the cookie the start set in the browser.
    async fn redirect_back(&self) -> Flow {
        let (status, headers, _) = self.get(&format!("/api/v1/auth/{}/start", self.provider), None).await;
        assert!(status.is_redirection(), "{status}");
        let cookie = headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
        assert!(cookie.starts_with("berth_sign_in="), "{cookie}");
        let authorize = headers[header::LOCATION].to_str().unwrap().to_string();
        let ca = reqwest::Certificate::from_pem(self.provider_ca.as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .add_root_certificate(ca)
            .build()
            .unwrap();
        let response = client.get(&authorize).send().await.unwrap();
        assert!(response.status().is_redirection());
        let back = response.headers()[header::LOCATION].to_str().unwrap().to_string();
        let callback = back.strip_prefix("http://berth.test").expect("the provider redirects to Berth's public URL");
        Flow { callback: callback.to_string(), cookie }
    }

    /// The browser that started the flow follows the provider's redirect back.
    async fn finish(&self, flow: &Flow) -> (StatusCode, HeaderMap, Value) {
        self.get_with_cookie(&flow.callback, None, Some(&flow.cookie)).await
    }
}

struct Flow {
    callback: String,
    cookie: String,
}

#[tokio::test]
async fn the_whole_redirect_flow_signs_in_and_links_by_verified_email() {
    let provider = start_provider().await;
    let berth = berth(&provider, "flow").await;
    let (status, _, providers) = berth.get("/api/v1/auth/providers", None).await;
    assert_eq!((status, providers), (StatusCode::OK, json!(["corp"])));

    // A new user of an auto-joined domain gets an account in team main as viewer.
    let flow = berth.redirect_back().await;
    let (status, _, body) = berth.finish(&flow).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert_eq!(body["user"]["teams"], json!([{ "team": "main", "role": "viewer" }]));
    let token = body["token"].as_str().unwrap().to_string();
    let (status, _, me) = berth.get("/api/v1/me", Some(&token)).await;
    assert_eq!((status, me["email"].as_str()), (StatusCode::OK, Some("alice@example.com")));
    // The same callback a second time: the state was single use.
    let (status, _, body) = berth.finish(&flow).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // An existing account is linked by its verified email: the instance admin signs in.
    *provider.email.lock().unwrap() = ("admin@localhost".into(), true);
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["instance_admin"], true);
    // From now on alice is her (issuer, subject): an email changed at the provider, even to
    // another account's, still signs in alice...
    *provider.subject.lock().unwrap() = Some("user-alice@example.com".into());
    *provider.email.lock().unwrap() = ("admin@localhost".into(), true);
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], "alice@example.com", "linked by subject, not by email");
    // ... and another identity claiming alice's (verified) email is refused.
    *provider.subject.lock().unwrap() = Some("mallory".into());
    *provider.email.lock().unwrap() = ("alice@example.com".into(), true);
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["message"].as_str().unwrap().contains("linked to another"), "{body}");

    // Five sign-ins, one discovery and one key fetch: both are cached.
    let count = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((count(&provider.discoveries), count(&provider.key_fetches)), (1, 1));
}

#[tokio::test]
async fn a_provider_whose_certificate_is_not_trusted_is_not_believed() {
    let provider = start_provider().await;
    // The same provider, without its CA: the system's roots do not vouch for it.
    let untrusted = berth_trusting(&provider, "untrusted", false).await;
    let (status, _, body) = untrusted.get("/api/v1/auth/corp/start", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let message = body["message"].as_str().unwrap_or("");
    assert!(message.contains("discovery document") && message.contains("certificate"), "{body}");
    assert_eq!(provider.discoveries.load(std::sync::atomic::Ordering::SeqCst), 0, "no request got through");
}

#[tokio::test]
async fn tampered_state_wrong_audience_and_unverified_email_are_refused() {
    let provider = start_provider().await;
    let berth = berth(&provider, "refusals").await;

    // Login CSRF: the attacker's own callback URL, opened by a victim's browser, which never
    // started that sign-in, signs nobody in.
    let flow = berth.redirect_back().await;
    let (status, _, body) = berth.get(&flow.callback, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("not started by this browser"), "{body}");
    let other = berth.redirect_back().await;
    let (status, _, _) = berth.get_with_cookie(&flow.callback, None, Some(&other.cookie)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "another flow's cookie does not fit");

    let flow = berth.redirect_back().await;
    let tampered = Flow { callback: flow.callback.replace("state=", "state=x"), cookie: flow.cookie.clone() };
    let (status, _, body) = berth.finish(&tampered).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    *provider.audience.lock().unwrap() = "someone-else".into();
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("identity token is not valid"), "{body}");

    *provider.audience.lock().unwrap() = CLIENT_ID.into();
    // A token issued to another client (its azp), for this one among others, is not ours.
    *provider.azp.lock().unwrap() = Some("someone-else".into());
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("identity token is not valid"), "{body}");
    *provider.azp.lock().unwrap() = None;

    *provider.email.lock().unwrap() = ("carol@example.com".into(), false);
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("verified email"), "{body}");

    // A verified address outside every auto-join domain needs an invitation first.
    *provider.email.lock().unwrap() = ("bob@elsewhere.org".into(), true);
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["message"].as_str().unwrap().contains("invitation"), "{body}");

    let (status, _, _) = berth.get("/api/v1/auth/nope/start", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rotated_signing_keys_are_fetched_again_but_not_on_every_unknown_key() {
    let provider = start_provider().await;
    let count = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);
    // A Berth that may refetch the keys at once: the provider rotates, and the next sign-in,
    // signed with the new key, is believed after one more fetch of the keys (not of discovery).
    let eager = berth_with(corp(&provider), &provider.ca_pem, "rotation", |s| {
        s.with_ca(provider.ca_pem.as_bytes()).unwrap().with_key_refetch_interval(std::time::Duration::ZERO)
    })
    .await;
    let (status, _, body) = eager.finish(&eager.redirect_back().await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((count(&provider.discoveries), count(&provider.key_fetches)), (1, 1));
    *provider.kid.lock().unwrap() = "rotated-key".into();
    let (status, _, body) = eager.finish(&eager.redirect_back().await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((count(&provider.discoveries), count(&provider.key_fetches)), (1, 2), "the keys, not discovery");

    // With the default interval, a key id the fresh set lacks is refused without fetching again:
    // made-up key ids do not make Berth hammer the provider.
    let steady = berth(&provider, "rotation-steady").await;
    let (status, _, body) = steady.finish(&steady.redirect_back().await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fetches = count(&provider.key_fetches);
    *provider.kid.lock().unwrap() = "another-key".into();
    let (status, _, body) = steady.finish(&steady.redirect_back().await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["message"].as_str().unwrap().contains("identity token is not valid"), "{body}");
    assert_eq!(count(&provider.key_fetches), fetches, "no fetch within the interval");
}

#[tokio::test]
async fn a_token_signed_with_the_client_secret_is_not_believed() {
    // HS256 keyed by the client secret: anyone who learns the secret (it sits in Berth's config)
    // could mint identities. Only the provider's published asymmetric keys count.
    let provider = start_provider().await;
    let berth = berth(&provider, "symmetric").await;
    provider.symmetric.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("identity token is not valid") && message.contains("HS256"), "{body}");
}

/// A GitHub double: its OAuth endpoints (PKCE checked, client authenticated) and the two API
/// calls Berth makes, over HTTPS.
struct GitHubState {
    /// Its base URL (`auth-url`, `token-url` and `api-url` hang under it).
    url: String,
    ca_pem: String,
    /// The signed-in account's numeric id and its emails: (address, primary, verified).
    user_id: Mutex<u64>,
    emails: Mutex<Vec<(String, bool, bool)>>,
    /// Access tokens given out, and the code grants waiting: code → (challenge, redirect URI).
    tokens: Mutex<Vec<String>>,
    grants: Mutex<HashMap<String, (String, String)>>,
}

#[derive(Deserialize)]
struct GitHubAuthorize {
    client_id: String,
    redirect_uri: String,
    state: String,
    code_challenge: String,
    scope: String,
}

async fn github_authorize(State(g): State<Arc<GitHubState>>, Query(q): Query<GitHubAuthorize>) -> impl IntoResponse {
    assert_eq!(q.client_id, CLIENT_ID);
    assert!(q.scope.split(' ').any(|s| s == "user:email"), "{}", q.scope);
    let code = new_token();
    g.grants.lock().unwrap().insert(code.clone(), (q.code_challenge, q.redirect_uri.clone()));
    Redirect::to(&format!("{}?code={code}&state={}", q.redirect_uri, q.state))
}

async fn github_token(
    State(g): State<Arc<GitHubState>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> impl IntoResponse {
    if !client_authenticated(&headers) {
        // GitHub answers a bad client with 200 and an error body; Berth must still refuse.
        return Json(json!({ "error": "incorrect_client_credentials" }));
    }
    let challenge = pkce_challenge(&form.code_verifier);
    match g.grants.lock().unwrap().remove(&form.code) {
        Some((expected, redirect)) if expected == challenge && redirect == form.redirect_uri => {}
        _ => return Json(json!({ "error": "bad_verification_code" })),
    }
    let token = new_token();
    g.tokens.lock().unwrap().push(token.clone());
    Json(json!({ "access_token": token, "token_type": "bearer", "scope": "read:user,user:email" }))
}

/// GitHub's API answers only a token it gave out, and only a client that names itself.
fn github_caller_ok(g: &GitHubState, headers: &HeaderMap) -> bool {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    headers.contains_key(header::USER_AGENT)
        && token.is_some_and(|t| g.tokens.lock().unwrap().iter().any(|known| known == t))
}

async fn github_user(State(g): State<Arc<GitHubState>>, headers: HeaderMap) -> impl IntoResponse {
    if !github_caller_ok(&g, &headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": "Bad credentials" })));
    }
    (StatusCode::OK, Json(json!({ "id": *g.user_id.lock().unwrap(), "login": "someone" })))
}

async fn github_emails(State(g): State<Arc<GitHubState>>, headers: HeaderMap) -> impl IntoResponse {
    if !github_caller_ok(&g, &headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": "Bad credentials" })));
    }
    let emails: Vec<Value> = g
        .emails
        .lock()
        .unwrap()
        .iter()
        .map(|(email, primary, verified)| json!({ "email": email, "primary": primary, "verified": verified, "visibility": null }))
        .collect();
    (StatusCode::OK, Json(json!(emails)))
}

async fn start_github() -> Arc<GitHubState> {
    let https = HttpsListener::bind().await;
    let state = Arc::new(GitHubState {
        url: https.url.clone(),
        ca_pem: https.ca_pem.clone(),
        user_id: Mutex::new(4242),
        emails: Mutex::new(vec![("Alice@Example.com".into(), true, true)]),
        tokens: Mutex::default(),
        grants: Mutex::default(),
    });
    let app = Router::new()
        .route("/login/oauth/authorize", get(github_authorize))
        .route("/login/oauth/access_token", post(github_token))
        .route("/api/user", get(github_user))
        .route("/api/user/emails", get(github_emails))
        .with_state(state.clone());
    https.serve(app);
    state
}

async fn berth_with_github(github: &GitHubState, name: &str, client_secret: &str) -> Berth {
    let spec = format!(
        "name=github,github=true,auth-url={url}/login/oauth/authorize,token-url={url}/login/oauth/access_token,\
         api-url={url}/api,client-id={CLIENT_ID},client-secret={client_secret},auto-join=example.com:main:viewer",
        url = github.url
    );
    let provider = Provider::parse(&spec).unwrap();
    berth_with(provider, &github.ca_pem, name, |s| s.with_ca(github.ca_pem.as_bytes()).unwrap()).await
}

#[tokio::test]
async fn github_sign_in_over_https_takes_the_primary_verified_email_and_links_by_user_id() {
    let github = start_github().await;
    let berth = berth_with_github(&github, "github", CLIENT_SECRET).await;
    let (status, _, providers) = berth.get("/api/v1/auth/providers", None).await;
    assert_eq!((status, providers), (StatusCode::OK, json!(["github"])));

    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert_eq!(body["user"]["teams"], json!([{ "team": "main", "role": "viewer" }]));

    // The account follows GitHub's user id: a changed primary email still signs in alice.
    *github.emails.lock().unwrap() =
        vec![("alice@example.com".into(), false, true), ("new@example.com".into(), true, true)];
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["email"], "alice@example.com", "linked by GitHub's user id");

    // Another GitHub user whose primary email is not verified is nobody.
    *github.user_id.lock().unwrap() = 7;
    *github.emails.lock().unwrap() =
        vec![("carol@example.com".into(), true, false), ("c@example.com".into(), false, true)];
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["message"].as_str().unwrap().contains("verified email"), "{body}");
}

#[tokio::test]
async fn github_refusing_the_client_signs_nobody_in() {
    let github = start_github().await;
    // Berth configured with a secret GitHub does not know: GitHub answers 200 with an error.
    let berth = berth_with_github(&github, "github-bad-secret", "not-the-secret").await;
    let (status, _, body) = berth.finish(&berth.redirect_back().await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["message"].as_str().unwrap().contains("exchanging the code"), "{body}");
    assert!(github.tokens.lock().unwrap().is_empty(), "no token was given out");
}
