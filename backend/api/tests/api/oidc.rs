//! Sign-in through an OpenID Connect provider: a small but real authorization server runs on
//! loopback (discovery, authorization endpoint with PKCE, token endpoint, JWKS, RS256 ID tokens)
//! and the whole redirect flow goes through Berth's router, including tampered state, a wrong
//! audience and an unverified email. The provider speaks HTTPS with a certificate from the test's
//! own CA, which Berth trusts through `SignIn::with_ca` only.

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

async fn token(
    State(p): State<Arc<ProviderState>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> impl IntoResponse {
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_client" })));
    }
    let Some(grant) = p.grants.lock().unwrap().remove(&form.code) else {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_grant" })));
    };
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(form.code_verifier.as_bytes()));
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
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key".into());
    let id_token =
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(KEY_PEM).unwrap()).unwrap();
    (
        StatusCode::OK,
        Json(json!({ "access_token": new_token(), "token_type": "Bearer", "expires_in": 3600, "id_token": id_token })),
    )
}

async fn jwks(State(p): State<Arc<ProviderState>>) -> Json<Value> {
    p.key_fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Json(
        json!({ "keys": [{ "kty": "RSA", "kid": "test-key", "alg": "RS256", "use": "sig", "n": KEY_N.trim(), "e": "AQAB" }] }),
    )
}

/// The provider, over HTTPS with a certificate from a CA of the test's own (Berth trusts it only
/// through `SignIn::with_ca`).
async fn start_provider() -> Arc<ProviderState> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("https://{}", listener.local_addr().unwrap());
    let (chain, key, ca_pem) = certificate_for("127.0.0.1");
    let files = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (files.path().join("provider.crt"), files.path().join("provider.key"));
    std::fs::write(&cert_file, chain).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let acceptor = berth_api::server::tls_acceptor(&cert_file, &key_file).unwrap();
    let state = Arc::new(ProviderState {
        issuer,
        ca_pem,
        email: Mutex::new(("alice@example.com".into(), true)),
        subject: Mutex::new(None),
        audience: Mutex::new(CLIENT_ID.into()),
        azp: Mutex::new(None),
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
    let limits = berth_api::server::ApiLimits::default();
    tokio::spawn(berth_api::server::serve(listener, Some(acceptor), app, limits, std::future::pending()));
    state
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
    /// The provider's CA, which the test's "browser" trusts too.
    provider_ca: String,
    _dir: ScratchDir,
}

async fn berth(provider: &ProviderState, name: &str) -> Berth {
    berth_trusting(provider, name, true).await
}

/// Berth with the provider `corp`, trusting the provider's CA or only the system's roots.
async fn berth_trusting(provider: &ProviderState, name: &str, trust_provider_ca: bool) -> Berth {
    let dir = ScratchDir::new(name);
    let store = support::store(&dir).await;
    store.bootstrap(&hash_token(&new_token()), "").await.unwrap();
    let corp = Provider {
        name: "corp".into(),
        kind: ProviderKind::Oidc { issuer: provider.issuer.clone() },
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        auto_join: vec![AutoJoin { domain: "example.com".into(), team: "main".into(), role: "viewer".into() }],
    };
    let mut sign_in = SignIn::new("http://berth.test", vec![corp]);
    if trust_provider_ca {
        sign_in = sign_in.with_ca(provider.ca_pem.as_bytes()).unwrap();
    }
    let router = support::router(&dir, store, Some(sign_in)).await;
    Berth { router, provider_ca: provider.ca_pem.clone(), _dir: dir }
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
        let (status, headers, _) = self.get("/api/v1/auth/corp/start", None).await;
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
