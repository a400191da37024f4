//! Authorization: every API endpoint (enumerated from the router's own list) × every role × own
//! team / foreign team / no token / expired token / revoked token, against the permission each
//! endpoint declares. Runs the real router and service layer on a real SQLite store; no Docker.

use axum::body::Body;
use axum::http::{Method, Request};
use berth_api::auth::{Role, hash_token, new_token};
use berth_api::http::{self, Access};
use berth_wire::AppSpec;
use tower::ServiceExt;

use crate::support::{self, ScratchDir, now_ms};

/// Who calls, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// A member of the own team (`alpha`) with this role, using a personal token.
    Member(Role),
    /// The instance admin (owner of `main` only).
    InstanceAdmin,
    NoToken,
    ExpiredToken,
    RevokedToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TeamRelation {
    Own,
    Foreign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    Unauthenticated,
    Forbidden,
    Hidden,
    /// Never expected.
    ServerError,
}

struct World {
    router: axum::Router,
    /// Shut down after its one request: hundreds of worlds' background loops would pile up.
    orchestrator: berth_control::Cluster,
    token: Option<String>,
    /// The caller's own token id (for revoking one's own token).
    token_id: i64,
    certificate_id: i64,
    _dir: ScratchDir,
}

fn spec() -> AppSpec {
    AppSpec {
        image: "img:1".into(),
        port: 8080,
        replicas: 1,
        env: Default::default(),
        secrets: Default::default(),
        health_path: None,
        cpu_millis: None,
        memory_mb: None,
        constraints: Default::default(),
        privileges: Default::default(),
        protocol: Default::default(),
    }
}

/// A fresh instance: teams `alpha` (own) and `beta` (foreign) each with an app and a member
/// `target@example.com`, the host `local`, and the caller's token.
async fn world(caller: Caller) -> World {
    let dir = ScratchDir::new("authz");
    let store = support::store(&dir).await;
    let admin_secret = new_token();
    store.bootstrap(&hash_token(&admin_secret), "").await.unwrap();
    store.register_local_host("local", "docker bridge", &Default::default()).await.unwrap();
    let caller_id = store.create_user("caller@example.com", "caller", "").await.unwrap();
    let target = store.create_user("target@example.com", "target", "").await.unwrap();
    let other_owner = store.create_user("owner@example.com", "owner", "").await.unwrap();
    let alpha = store.create_team("alpha", other_owner).await.unwrap();
    let beta = store.create_team("beta", other_owner).await.unwrap();
    for team in [alpha, beta] {
        store.set_membership(team, target, "viewer").await.unwrap();
    }
    store.create_app(alpha, "web", &spec()).await.unwrap();
    store.create_app(beta, "web2", &spec()).await.unwrap();

    let secret = new_token();
    let (token, token_id) = match caller {
        Caller::Member(role) => {
            store.set_membership(alpha, caller_id, role.as_str()).await.unwrap();
            let id =
                store.create_token(&hash_token(&secret), "t", caller_id, "personal", None, None, None).await.unwrap();
            (Some(secret), id)
        }
        Caller::InstanceAdmin => (Some(admin_secret), 1),
        Caller::NoToken => (None, 0),
        Caller::ExpiredToken | Caller::RevokedToken => {
            store.set_membership(alpha, caller_id, "owner").await.unwrap();
            let expires = (caller == Caller::ExpiredToken).then(|| now_ms() - 1000);
            let id = store
                .create_token(&hash_token(&secret), "t", caller_id, "personal", None, None, expires)
                .await
                .unwrap();
            if caller == Caller::RevokedToken {
                store.revoke_token(caller_id, id).await.unwrap();
            }
            (Some(secret), id)
        }
    };

    // A build and a webhook of `web`, for the endpoints that show or remove one (`{number}` is 1,
    // `{id}` the caller's token id).
    let web = store.app(alpha, "web").await.unwrap().unwrap();
    let build = berth_store::NewBuild {
        app_id: web.id,
        commit: "0123456789abcdef0123456789abcdef01234567",
        git_ref: "refs/heads/main",
        pusher: "target@example.com",
        trigger: "push",
        image_template: "berth/alpha-web:0123456789ab-{build}",
    };
    store.insert_build(build).await.unwrap();
    let provider = berth_wire::builds::WebhookProvider::Github;
    store.create_webhook(&token_id.to_string(), web.id, provider, "acme/web", "secret").await.unwrap();
    // A domain and a certificate record of `web` for the endpoints that remove one.
    store.add_domain(web.id, "shop.example.com").await.unwrap();
    let names = ["shop.example.com".to_string()];
    let certificate = berth_store::NewCertificate {
        app_id: web.id,
        source: berth_wire::edge::CertSource::Uploaded,
        names: &names,
        issuer: "CN=test",
        chain_pem: "",
        key_file: "none.key",
        not_after: now_ms() + 86_400_000,
    };
    let certificate_id = store.insert_certificate(certificate).await.unwrap();
    // An ingress node, for the endpoint that removes one.
    store.create_join_token("join-hash", 1, i64::MAX, 1, "ingress").await.unwrap();
    store.join_ingress_node("join-hash", "edge-1", "edge-credential-hash").await.unwrap();

    let (router, orchestrator) = support::router_parts(&dir, store, None, Default::default()).await;
    World { router, orchestrator, token, token_id, certificate_id, _dir: dir }
}

fn expectation(access: Access, caller: Caller, relation: TeamRelation) -> Option<Expect> {
    use Expect::*;
    let invalid = matches!(caller, Caller::NoToken | Caller::ExpiredToken | Caller::RevokedToken);
    Some(match access {
        // Public endpoints answer everyone; what they answer is their own business.
        Access::Public => return None,
        Access::Agent | Access::IngressNode => Unauthenticated,
        _ if invalid => Unauthenticated,
        Access::User => Allowed,
        Access::InstanceAdmin => {
            if caller == Caller::InstanceAdmin {
                Allowed
            } else {
                Forbidden
            }
        }
        Access::Team(action) => match (caller, relation) {
            // The instance admin belongs to neither alpha nor beta.
            (Caller::InstanceAdmin, _) | (_, TeamRelation::Foreign) => Hidden,
            (Caller::Member(role), TeamRelation::Own) if role >= action.minimum_role() => Allowed,
            _ => Forbidden,
        },
    })
}

fn request_for(
    method: &Method,
    path: &str,
    relation: TeamRelation,
    world: &World,
) -> (String, Option<serde_json::Value>) {
    let (team, app) = match relation {
        TeamRelation::Own => ("alpha", "web"),
        TeamRelation::Foreign => ("beta", "web2"),
    };
    let uri = path
        .replace("{team}", team)
        .replace("{app}", app)
        .replace("{number}", "1")
        .replace("{host}", "local")
        .replace("{email}", "target@example.com")
        .replace("{domain}", "shop.example.com")
        .replace(
            "{id}",
            &if path.contains("/certificates/") { world.certificate_id } else { world.token_id }.to_string(),
        )
        .replace("{token}", "berth_invite_nope")
        .replace("{transfer}", "nope")
        .replace("{node}", "edge-1");
    use serde_json::json;
    let body = match (method.as_str(), path) {
        ("POST", "/api/v1/teams/{team}/apps") => Some(json!({ "name": "fresh", "image": "img:1", "port": 8080 })),
        ("POST", p) if p.ends_with("/deploy") => Some(json!({ "env": { "A": "1" } })),
        ("POST", p) if p.ends_with("/scale") => Some(json!({ "replicas": 2 })),
        ("POST", p) if p.ends_with("/rollback") => Some(json!({ "to": 1 })),
        ("POST", "/api/v1/join-tokens") => Some(json!({})),
        ("PUT", "/api/v1/teams/{team}/quota") => Some(json!({ "replicas": 100 })),
        ("PATCH", p) if p.ends_with("/git") => Some(json!({ "timeout_secs": 600 })),
        ("POST", p) if p.ends_with("/domains") => Some(json!({ "name": "new.example.com" })),
        ("POST", p) if p.ends_with("/certificates") => Some(json!({ "chain_pem": "not pem", "key_pem": "not pem" })),
        ("PATCH", p) if p.ends_with("/edge") => Some(json!({ "hsts_max_age": 600 })),
        ("POST", p) if p.ends_with("/webhooks") => Some(json!({ "provider": "github", "repository": "acme/web" })),
        ("POST", "/api/v1/me/password") => Some(json!({ "current": "wrong password", "new": "a new long password" })),
        ("POST", "/api/v1/users/{email}/password") => Some(json!({ "password": "a new long password" })),
        ("POST", "/api/v1/teams") => Some(json!({ "name": "gamma" })),
        ("PUT", "/api/v1/teams/{team}/members") => Some(json!({ "email": "target@example.com", "role": "viewer" })),
        ("POST", "/api/v1/teams/{team}/invites") => Some(json!({ "role": "viewer" })),
        ("POST", "/api/v1/tokens") => Some(json!({ "name": "ci" })),
        ("POST", "/api/v1/login") => Some(json!({ "email": "caller@example.com", "password": "nope" })),
        ("POST", "/api/v1/agents/join") => Some(
            json!({ "join_token": "x", "name": "h", "advertise_addr": "10.0.0.1", "capacity": { "cpu_millis": 0, "memory_mb": 0 } }),
        ),
        ("POST", "/api/v1/invites/{token}/accept") => {
            Some(json!({ "email": "x@example.com", "password": "a long password" }))
        }
        _ => None,
    };
    (uri, body)
}

/// What a status says of the caller's access. A 5xx says nothing (the request broke before or
/// after the check), so it is never what any case expects: it fails the matrix instead of
/// passing as "allowed".
fn classify(status: u16) -> Expect {
    match status {
        401 => Expect::Unauthenticated,
        403 => Expect::Forbidden,
        404 => Expect::Hidden,
        500..=599 => Expect::ServerError,
        _ => Expect::Allowed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_every_role_every_team_relation() {
    let callers: Vec<Caller> = Role::ALL
        .into_iter()
        .map(Caller::Member)
        .chain([Caller::InstanceAdmin, Caller::NoToken, Caller::ExpiredToken, Caller::RevokedToken])
        .collect();
    let endpoints = http::endpoints();
    let mut checked = 0;
    let mut public = 0;
    let mut leaks = Vec::new();
    for endpoint in &endpoints {
        for caller in &callers {
            for relation in [TeamRelation::Own, TeamRelation::Foreign] {
                let team_scoped = endpoint.path.contains("{team}");
                if !team_scoped && relation == TeamRelation::Foreign {
                    continue;
                }
                let Some(expected) = expectation(endpoint.access, *caller, relation) else {
                    public += 1;
                    continue;
                };
                let world = world(*caller).await;
                let (uri, body) = request_for(&endpoint.method, endpoint.path, relation, &world);
                let mut request = Request::builder().method(endpoint.method.clone()).uri(&uri);
                if let Some(token) = &world.token {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let request = match body {
                    Some(body) => request.header("content-type", "application/json").body(Body::from(body.to_string())),
                    None => request.body(Body::empty()),
                }
                .unwrap();
                let response = world.router.clone().oneshot(request).await.unwrap();
                world.orchestrator.shutdown().await;
                let status = response.status().as_u16();
                checked += 1;
                if classify(status) != expected {
                    let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
                    leaks.push(format!(
                        "{} {uri} as {caller:?} ({relation:?}): expected {expected:?}, got {status} {}",
                        endpoint.method,
                        String::from_utf8_lossy(&body)
                    ));
                }
            }
        }
    }
    println!(
        "authorization matrix: {} endpoints, {checked} checked cases, {public} public cases, {} mismatches",
        endpoints.len(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "{} mismatches:\n{}", leaks.len(), leaks.join("\n"));
    assert!(checked > 300, "the matrix shrank to {checked} cases");
}

#[tokio::test]
async fn the_router_serves_exactly_the_listed_endpoints() {
    // A method the list does not declare for a path answers 405: nothing is routed off the list.
    let world = world(Caller::Member(Role::Owner)).await;
    let endpoints = http::endpoints();
    for endpoint in &endpoints {
        let declared: Vec<&Method> = endpoints.iter().filter(|e| e.path == endpoint.path).map(|e| &e.method).collect();
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            if declared.contains(&&method) {
                continue;
            }
            let (uri, _) = request_for(&method, endpoint.path, TeamRelation::Own, &world);
            let request = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .header("authorization", format!("Bearer {}", world.token.clone().unwrap()))
                .body(Body::empty())
                .unwrap();
            let status = world.router.clone().oneshot(request).await.unwrap().status().as_u16();
            assert_eq!(status, 405, "{method} {uri} is routed but not listed");
        }
    }
}
