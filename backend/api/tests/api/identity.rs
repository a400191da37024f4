//! Identity journeys through the real router and service layer on a real SQLite store (no
//! Docker): sign-in with lockout, password changes ending other sessions, invitations, scoped
//! tokens, member management limits and the audit log.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use berth_api::auth::{hash_token, new_token};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{self, ScratchDir};

struct Instance {
    router: axum::Router,
    admin: String,
    _dir: ScratchDir,
}

async fn instance(name: &str) -> Instance {
    let dir = ScratchDir::new(name);
    let store = support::store(&dir).await;
    let admin = new_token();
    let password_hash = berth_api::auth::hash_password("admin password 1").await.unwrap();
    store.bootstrap(&hash_token(&admin), &password_hash).await.unwrap();
    let router = support::router(&dir, store, None).await;
    Instance { router, admin, _dir: dir }
}

impl Instance {
    async fn call(&self, method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request.header("content-type", "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Invites `email` into `team` as `role` (by the admin, who owns `main`) and returns their token.
    async fn join(&self, team: &str, email: &str, role: &str) -> String {
        let (status, invite) = self
            .call(
                Method::POST,
                &format!("/api/v1/teams/{team}/invites"),
                Some(&self.admin),
                Some(json!({ "role": role })),
            )
            .await;
        assert_eq!(status, 201, "{invite}");
        let token = invite["token"].as_str().unwrap();
        let (status, joined) = self
            .call(
                Method::POST,
                &format!("/api/v1/invites/{token}/accept"),
                None,
                Some(json!({ "email": email, "password": "a long password" })),
            )
            .await;
        assert_eq!(status, 200, "{joined}");
        joined["token"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn sign_in_locks_out_after_repeated_failures() {
    let i = instance("lockout").await;
    let login = |password: &str| json!({ "email": "admin@localhost", "password": password });
    let (status, body) = i.call(Method::POST, "/api/v1/login", None, Some(login("admin password 1"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["token"].as_str().unwrap().starts_with("berth_"));
    assert_eq!(body["user"]["instance_admin"], true);

    for _ in 0..5 {
        let (status, body) = i.call(Method::POST, "/api/v1/login", None, Some(login("wrong"))).await;
        assert_eq!(status, 401, "{body}");
    }
    // Locked: even the right password is refused now, with the same message.
    let (status, body) = i.call(Method::POST, "/api/v1/login", None, Some(login("admin password 1"))).await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("wrong email or password"));
    // Unknown accounts get the same answer.
    let (status, _) =
        i.call(Method::POST, "/api/v1/login", None, Some(json!({ "email": "nobody@x.org", "password": "p" }))).await;
    assert_eq!(status, 401);
    // And too many attempts from one address are refused outright.
    let mut limited = false;
    for _ in 0..30 {
        let (status, _) = i.call(Method::POST, "/api/v1/login", None, Some(login("wrong"))).await;
        limited |= status == 429;
    }
    assert!(limited, "sign-in attempts are rate limited");
}

#[tokio::test]
async fn changing_the_password_ends_other_sessions() {
    let i = instance("password").await;
    let user = i.join("main", "dev@example.com", "deployer").await;
    let login = |password: &str| json!({ "email": "dev@example.com", "password": password });
    let (_, second) = i.call(Method::POST, "/api/v1/login", None, Some(login("a long password"))).await;
    let second = second["token"].as_str().unwrap().to_string();
    assert_eq!(i.call(Method::GET, "/api/v1/me", Some(&second), None).await.0, 200);

    let change = json!({ "current": "a long password", "new": "another long password" });
    let (status, body) = i.call(Method::POST, "/api/v1/me/password", Some(&user), Some(change)).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(i.call(Method::GET, "/api/v1/me", Some(&user), None).await.0, 200, "the current session stays");
    assert_eq!(i.call(Method::GET, "/api/v1/me", Some(&second), None).await.0, 401, "other sessions end");
    assert_eq!(i.call(Method::POST, "/api/v1/login", None, Some(login("a long password"))).await.0, 401);
    assert_eq!(i.call(Method::POST, "/api/v1/login", None, Some(login("another long password"))).await.0, 200);

    // An instance admin can disable the account: its tokens stop working at once.
    assert_eq!(i.call(Method::POST, "/api/v1/users/dev@example.com/disable", Some(&i.admin), None).await.0, 204);
    assert_eq!(i.call(Method::GET, "/api/v1/me", Some(&user), None).await.0, 401);
}

#[tokio::test]
async fn invitations_work_once_and_only_for_their_address() {
    let i = instance("invites").await;
    let (_, invite) = i
        .call(
            Method::POST,
            "/api/v1/teams/main/invites",
            Some(&i.admin),
            Some(json!({ "role": "viewer", "email": "only@example.com" })),
        )
        .await;
    let token = invite["token"].as_str().unwrap();
    let accept = |email: &str| json!({ "email": email, "password": "a long password" });
    let uri = format!("/api/v1/invites/{token}/accept");
    assert_eq!(i.call(Method::POST, &uri, None, Some(accept("other@example.com"))).await.0, 403);
    let (status, joined) = i.call(Method::POST, &uri, None, Some(accept("only@example.com"))).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["user"]["teams"][0]["role"], "viewer");
    assert_eq!(i.call(Method::POST, &uri, None, Some(accept("only@example.com"))).await.0, 404, "single use");
    let (_, expired) = i
        .call(
            Method::POST,
            "/api/v1/teams/main/invites",
            Some(&i.admin),
            Some(json!({ "role": "viewer", "ttl_secs": 1 })),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let uri = format!("/api/v1/invites/{}/accept", expired["token"].as_str().unwrap());
    assert_eq!(i.call(Method::POST, &uri, None, Some(accept("late@example.com"))).await.0, 404, "expired");
}

#[tokio::test]
async fn roles_limit_members_tokens_and_apps() {
    let i = instance("roles").await;
    let viewer = i.join("main", "viewer@example.com", "viewer").await;
    let deployer = i.join("main", "deployer@example.com", "deployer").await;
    let admin = i.join("main", "teamadmin@example.com", "admin").await;
    let app = json!({ "name": "web", "image": "img:1", "port": 8080 });

    // A viewer cannot deploy; a deployer can.
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps", Some(&viewer), Some(app.clone())).await.0, 403);
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps", Some(&deployer), Some(app)).await.0, 201);
    // A deployer cannot manage members; an admin can, but never above their own role.
    let member = |role: &str| json!({ "email": "viewer@example.com", "role": role });
    assert_eq!(
        i.call(Method::PUT, "/api/v1/teams/main/members", Some(&deployer), Some(member("deployer"))).await.0,
        403
    );
    assert_eq!(i.call(Method::PUT, "/api/v1/teams/main/members", Some(&admin), Some(member("deployer"))).await.0, 200);
    assert_eq!(i.call(Method::PUT, "/api/v1/teams/main/members", Some(&admin), Some(member("owner"))).await.0, 403);
    // Only owners touch owners, and a team keeps one.
    let owner = json!({ "email": "admin@localhost", "role": "viewer" });
    assert_eq!(i.call(Method::PUT, "/api/v1/teams/main/members", Some(&admin), Some(owner.clone())).await.0, 403);
    assert_eq!(i.call(Method::PUT, "/api/v1/teams/main/members", Some(&i.admin), Some(owner)).await.0, 409);

    // Team tokens: never above the creator's role, and they act with their own role.
    let ci = |role: &str| json!({ "name": "ci", "team": "main", "role": role });
    assert_eq!(i.call(Method::POST, "/api/v1/tokens", Some(&deployer), Some(ci("admin"))).await.0, 403);
    let (status, token) = i.call(Method::POST, "/api/v1/tokens", Some(&deployer), Some(ci("viewer"))).await;
    assert_eq!(status, 201);
    let ci_viewer = token["token"].as_str().unwrap().to_string();
    assert_eq!(i.call(Method::GET, "/api/v1/teams/main/apps", Some(&ci_viewer), None).await.0, 200);
    assert_eq!(
        i.call(Method::POST, "/api/v1/teams/main/apps/web/scale", Some(&ci_viewer), Some(json!({ "replicas": 2 })))
            .await
            .0,
        403
    );
    // Listed, with last use recorded, then revoked.
    let (_, tokens) = i.call(Method::GET, "/api/v1/tokens", Some(&deployer), None).await;
    let listed = tokens.as_array().unwrap().iter().find(|t| t["id"] == token["id"]).unwrap().clone();
    assert!(listed["last_used_at"].is_i64());
    assert_eq!(listed["role"], "viewer");
    let uri = format!("/api/v1/tokens/{}", token["id"]);
    assert_eq!(i.call(Method::DELETE, &uri, Some(&deployer), None).await.0, 204);
    assert_eq!(i.call(Method::GET, "/api/v1/teams/main/apps", Some(&ci_viewer), None).await.0, 401);
    // Expiring tokens stop working at their expiry.
    let (_, short) = i
        .call(Method::POST, "/api/v1/tokens", Some(&deployer), Some(json!({ "name": "short", "expires_in_secs": 1 })))
        .await;
    let short = short["token"].as_str().unwrap().to_string();
    assert_eq!(i.call(Method::GET, "/api/v1/me", Some(&short), None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(i.call(Method::GET, "/api/v1/me", Some(&short), None).await.0, 401);
}

#[tokio::test]
async fn owners_of_one_team_cannot_see_another_and_the_audit_log_tells_who_did_what() {
    let i = instance("audit").await;
    let alice = i.join("main", "alice@example.com", "viewer").await;
    let (status, _) = i.call(Method::POST, "/api/v1/teams", Some(&alice), Some(json!({ "name": "red" }))).await;
    assert_eq!(status, 201);
    // Alice owns red; the admin owns main. Neither sees the other's team.
    assert_eq!(i.call(Method::GET, "/api/v1/teams/main/audit", Some(&alice), None).await.0, 403, "a viewer of main");
    assert_eq!(i.call(Method::GET, "/api/v1/teams/red/apps", Some(&i.admin), None).await.0, 404);
    assert_eq!(i.call(Method::GET, "/api/v1/teams/red/members", Some(&i.admin), None).await.0, 404);

    let app = json!({ "name": "blue", "image": "img:1", "port": 8080 });
    assert_eq!(i.call(Method::POST, "/api/v1/teams/red/apps", Some(&alice), Some(app.clone())).await.0, 201);
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps", Some(&alice), Some(app)).await.0, 403);

    let (status, log) = i.call(Method::GET, "/api/v1/teams/red/audit", Some(&alice), None).await;
    assert_eq!(status, 200);
    let entries = log.as_array().unwrap();
    let created = entries.iter().find(|e| e["action"] == "create_app").expect("create_app is audited");
    assert_eq!(created["app"], "blue");
    assert_eq!(created["outcome"], "ok");
    assert!(created["actor"].as_str().unwrap().starts_with("alice@example.com"));
    assert!(entries.iter().all(|e| e["team"] == "red"), "only red's records: {log}");

    // The denied attempt in main is in main's log, which main's owner reads.
    let (_, main_log) = i.call(Method::GET, "/api/v1/teams/main/audit", Some(&i.admin), None).await;
    let denied =
        main_log.as_array().unwrap().iter().find(|e| e["action"] == "create_app").expect("denied attempt audited");
    assert_eq!(denied["outcome"], "denied");
    // Instance admins read everything, sign-ins included.
    let (status, all) = i.call(Method::GET, "/api/v1/audit", Some(&i.admin), None).await;
    assert_eq!(status, 200);
    assert!(all.as_array().unwrap().iter().any(|e| e["action"] == "accept_invite"));
    assert_eq!(i.call(Method::GET, "/api/v1/audit", Some(&alice), None).await.0, 403);
}

#[tokio::test]
async fn only_instance_admins_release_privileged_apps() {
    let i = instance("privileges").await;
    let deployer = i.join("main", "deployer@example.com", "deployer").await;
    let app = json!({
        "name": "root", "image": "img:1", "port": 8080,
        "privileges": { "mounts": [{ "source": "/srv/data", "target": "/data", "read_only": true }] }
    });
    let (status, body) = i.call(Method::POST, "/api/v1/teams/main/apps", Some(&deployer), Some(app.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("only instance admins"));
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps", Some(&i.admin), Some(app)).await.0, 201);

    // Scaling is fine; new code or config is not.
    let scale = json!({ "replicas": 3 });
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps/root/scale", Some(&deployer), Some(scale)).await.0, 202);
    let image = json!({ "image": "img:2" });
    assert_eq!(
        i.call(Method::POST, "/api/v1/teams/main/apps/root/deploy", Some(&deployer), Some(image.clone())).await.0,
        403
    );
    let env = json!({ "env": { "LD_PRELOAD": "/data/x.so" } });
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps/root/deploy", Some(&deployer), Some(env)).await.0, 403);
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps/root/deploy", Some(&i.admin), Some(image)).await.0, 202);
    // Adding privileges to an ordinary app is the same grant.
    let plain = json!({ "name": "plain", "image": "img:1", "port": 8080 });
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps", Some(&deployer), Some(plain)).await.0, 201);
    let grant = json!({ "privileges": { "privileged": true } });
    assert_eq!(
        i.call(Method::POST, "/api/v1/teams/main/apps/plain/deploy", Some(&deployer), Some(grant.clone())).await.0,
        403
    );
    // A team token of the instance admin carries the team role only, not instance-admin powers.
    let (_, token) = i
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&i.admin),
            Some(json!({ "name": "ci", "team": "main", "role": "owner" })),
        )
        .await;
    let ci = token["token"].as_str().unwrap();
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps/plain/deploy", Some(ci), Some(grant)).await.0, 403);
    assert_eq!(i.call(Method::GET, "/api/v1/hosts", Some(ci), None).await.0, 403);
}
