//! Identity journeys through the real router and service layer on a real SQLite store (no
//! Docker): sign-in with lockout, password changes ending other sessions, invitations, scoped
//! tokens, member management limits and the audit log.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{Instance, instance};

#[tokio::test]
async fn repeated_failures_make_that_address_wait_and_never_lock_the_account_for_others() {
    let i = instance("lockout").await;
    let login = |password: &str| json!({ "email": "admin@localhost", "password": password });
    let from = |address: &'static str, password: &str| {
        i.call_from(Some(address), Method::POST, "/api/v1/login", None, Some(login(password)))
    };
    let (status, body) = from("10.0.0.1", "admin password 1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["token"].as_str().unwrap().starts_with("berth_"));
    assert_eq!(body["user"]["instance_admin"], true);

    for _ in 0..5 {
        let (status, body) = from("10.0.0.66", "wrong").await;
        assert_eq!(status, 401, "{body}");
    }
    // That address now waits: even the right password is refused, with the same message.
    let (status, body) = from("10.0.0.66", "admin password 1").await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("wrong email or password"));
    // The stranger has not locked the admin out: from anywhere else the password works.
    assert_eq!(from("10.0.0.1", "admin password 1").await.0, 200, "other addresses are not affected");
    // Unknown accounts get the same answers, backoff included.
    let nobody = json!({ "email": "nobody@x.org", "password": "p" });
    for _ in 0..6 {
        let (status, _) =
            i.call_from(Some("10.0.0.66"), Method::POST, "/api/v1/login", None, Some(nobody.clone())).await;
        assert_eq!(status, 401);
    }
    // And too many attempts from one address are refused outright.
    let mut limited = false;
    for _ in 0..30 {
        let (status, _) = from("10.0.0.77", "wrong").await;
        limited |= status == 429;
    }
    assert!(limited, "sign-in attempts are rate limited");
    // A password reset by an instance admin ends every address's wait.
    let reset = json!({ "password": "admin password 2" });
    let (status, body) =
        i.call(Method::POST, "/api/v1/users/admin@localhost/password", Some(&i.admin), Some(reset)).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(from("10.0.0.66", "admin password 2").await.0, 200, "the reset cleared the backoff");
}

#[tokio::test]
async fn accepting_an_invitation_checks_an_existing_password_like_sign_in_and_its_token_expires() {
    let i = instance("invite-oracle").await;
    // Any signed-in user can make a team and an open invitation: it must not become a way to
    // guess another account's password without limit.
    let dev = i.join("main", "dev@example.com", "viewer").await;
    let (status, _) = i.call(Method::POST, "/api/v1/teams", Some(&dev), Some(json!({ "name": "lab" }))).await;
    assert_eq!(status, 201);
    let (status, invite) =
        i.call(Method::POST, "/api/v1/teams/lab/invites", Some(&dev), Some(json!({ "role": "viewer" }))).await;
    assert_eq!(status, 201, "{invite}");
    let uri = format!("/api/v1/invites/{}/accept", invite["token"].as_str().unwrap());
    let accept = |password: &str| json!({ "email": "admin@localhost", "password": password });
    for _ in 0..5 {
        let (status, body) = i.call_from(Some("10.0.0.66"), Method::POST, &uri, None, Some(accept("guess"))).await;
        assert_eq!(status, 401, "{body}");
    }
    // The guesses count as failed sign-ins: the right password now waits too, here and at sign-in.
    let (status, _) = i.call_from(Some("10.0.0.66"), Method::POST, &uri, None, Some(accept("admin password 1"))).await;
    assert_eq!(status, 401, "the address waits out its backoff");
    let login = json!({ "email": "admin@localhost", "password": "admin password 1" });
    assert_eq!(i.call_from(Some("10.0.0.66"), Method::POST, "/api/v1/login", None, Some(login)).await.0, 401);
    // The same per-address rate limit as sign-in.
    let mut limited = false;
    for _ in 0..30 {
        let (status, _) = i.call_from(Some("10.0.0.77"), Method::POST, &uri, None, Some(accept("guess"))).await;
        limited |= status == 429;
    }
    assert!(limited, "invitation acceptance is rate limited");
    // Guessing invitation secrets costs attempts too.
    let mut limited = false;
    for n in 0..30 {
        let guess = format!("/api/v1/invites/berth_{n:064}/accept");
        let (status, _) = i.call_from(Some("10.0.0.88"), Method::POST, &guess, None, Some(accept("guess"))).await;
        limited |= status == 429;
    }
    assert!(limited, "guessing invitation secrets is rate limited");
    // The invitation was not used up by the failures; the owner of the account accepts it.
    let (status, joined) =
        i.call_from(Some("10.0.0.1"), Method::POST, &uri, None, Some(accept("admin password 1"))).await;
    assert_eq!(status, 200, "{joined}");
    let token = joined["token"].as_str().unwrap();
    let (_, tokens) = i.call(Method::GET, "/api/v1/tokens", Some(token), None).await;
    let expiries: Vec<&Value> =
        tokens.as_array().unwrap().iter().filter(|t| t["kind"] == "login").map(|t| &t["expires_at"]).collect();
    assert!(!expiries.is_empty() && expiries.iter().all(|e| e.is_i64()), "every login token expires: {tokens}");
}

#[tokio::test]
async fn strangers_cannot_write_megabytes_into_the_audit_log() {
    let i = instance("audit-cap").await;
    let huge = "x".repeat(1_500_000);
    let (status, _) = i
        .call_from(
            Some("10.0.0.9"),
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({ "email": huge, "password": "p" })),
        )
        .await;
    assert_eq!(status, 401);
    let (status, entries) = i.call(Method::GET, "/api/v1/audit?limit=5", Some(&i.admin), None).await;
    assert_eq!(status, 200, "{entries}");
    let entry = entries.as_array().unwrap().iter().find(|e| e["action"] == "login").expect("the attempt is audited");
    let actor = entry["actor"].as_str().unwrap();
    assert!(actor.starts_with("xxx") && actor.len() <= 320, "the actor is cut: {} bytes", actor.len());
    let text = entries.to_string();
    assert!(text.len() < 8_000, "no audit field carries the request's megabytes ({} bytes)", text.len());

    // A flood of refused attempts from one address is one audit record, not one per attempt.
    let login = json!({ "email": "admin@localhost", "password": "wrong" });
    let mut refused = 0;
    for _ in 0..60 {
        let (status, _) = i.call_from(Some("10.0.0.5"), Method::POST, "/api/v1/login", None, Some(login.clone())).await;
        refused += usize::from(status == 429);
    }
    assert!(refused >= 30, "{refused} refused");
    let (_, entries) = i.call(Method::GET, "/api/v1/audit?limit=500", Some(&i.admin), None).await;
    let limited = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["address"] == "10.0.0.5" && e["detail"].as_str().is_some_and(|d| d.starts_with("rate limited")))
        .count();
    assert_eq!(limited, 1, "one record for the address's window");
}

/// Opens an event stream and returns its body once the first event arrived.
async fn open_stream(i: &Instance, uri: &str, token: &str) -> axum::body::BodyDataStream {
    use futures::StreamExt as _;
    let request = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "text/event-stream")
        .body(Body::empty())
        .unwrap();
    let response = i.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200, "{uri}");
    let mut body = response.into_body().into_data_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next()).await.expect("a first event");
    assert!(first.is_some(), "the stream opened");
    body
}

/// Whether the stream ends within `within` (events still arriving meanwhile are skipped).
async fn ends_within(mut body: axum::body::BodyDataStream, within: Duration) -> bool {
    use futures::StreamExt as _;
    tokio::time::timeout(within, async { while body.next().await.is_some() {} }).await.is_ok()
}

#[tokio::test]
async fn open_streams_end_when_their_token_is_revoked_or_the_member_removed() {
    let i = instance("streams").await;
    let dev = i.join("main", "dev@example.com", "deployer").await;
    let ops = i.join("main", "ops@example.com", "deployer").await;
    let removed = open_stream(&i, "/api/v1/teams/main/watch/apps", &dev).await;
    let (_, tokens) = i.call(Method::GET, "/api/v1/tokens", Some(&ops), None).await;
    let ops_token = tokens[0]["id"].as_i64().unwrap();
    let revoked = open_stream(&i, "/api/v1/teams/main/watch/apps", &ops).await;
    let admin_stream = open_stream(&i, "/api/v1/watch/hosts", &i.admin).await;

    let (status, body) =
        i.call(Method::DELETE, "/api/v1/teams/main/members/dev@example.com", Some(&i.admin), None).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = i.call(Method::DELETE, &format!("/api/v1/tokens/{ops_token}"), Some(&ops), None).await;
    assert_eq!(status, 204, "{body}");
    // Checked every two seconds: each ends well within six.
    let (removed, revoked) =
        tokio::join!(ends_within(removed, Duration::from_secs(6)), ends_within(revoked, Duration::from_secs(6)));
    assert!(removed, "the removed member's stream ended");
    assert!(revoked, "the revoked token's stream ended");
    assert!(!ends_within(admin_stream, Duration::from_secs(3)).await, "an unaffected stream stays open");
}

#[tokio::test]
async fn every_answer_forbids_framing_and_sniffing_and_carries_a_content_security_policy() {
    let i = instance("headers").await;
    for uri in ["/signin", "/api/v1/me", "/api/v1/nothing-here"] {
        let response =
            i.router.clone().oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap()).await.unwrap();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert_eq!(header("x-frame-options"), "DENY", "{uri}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{uri}");
        let policy = header("content-security-policy");
        assert!(policy.contains("frame-ancestors 'none'") && policy.contains("object-src 'none'"), "{uri}: {policy}");
        // No inline script runs but a page's own, by its nonce.
        let scripts = policy.split(';').find(|d| d.trim().starts_with("script-src")).unwrap_or("").to_string();
        assert!(!scripts.contains("unsafe-inline"), "{uri}: {policy}");
    }
    // Each page has a fresh nonce, and its inline hydration script carries it.
    let page = || async {
        let response =
            i.router.clone().oneshot(Request::builder().uri("/signin").body(Body::empty()).unwrap()).await.unwrap();
        let policy = response.headers()["content-security-policy"].to_str().unwrap().to_string();
        let nonce =
            policy.split("'nonce-").nth(1).and_then(|rest| rest.split('\'').next()).expect("a nonce").to_string();
        let body = axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap();
        (nonce, String::from_utf8_lossy(&body).into_owned())
    };
    let (first, html) = page().await;
    let scripts: Vec<&str> = html.split("<script").skip(1).map(|tag| tag.split('>').next().unwrap_or("")).collect();
    assert!(!scripts.is_empty(), "the page has its hydration scripts");
    for tag in &scripts {
        assert!(tag.contains(&format!("nonce=\"{first}\"")), "a script without the page's nonce: <script{tag}>");
    }
    let (second, _) = page().await;
    assert_ne!(first, second, "a nonce is never reused");
}

#[tokio::test]
async fn requests_refused_before_a_handler_answer_with_the_json_error() {
    let i = instance("rejections").await;
    // A token id that is not a number (axum's path rejection): 400, as JSON.
    let (status, body) = i.call(Method::DELETE, "/api/v1/tokens/not-a-number", Some(&i.admin), None).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("not-a-number"), "{body}");
    // A query that does not parse.
    let (status, body) = i.call(Method::GET, "/api/v1/audit?limit=99999999999999999999", Some(&i.admin), None).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    // A method the path does not take: 405, its Allow header kept.
    let request = Request::builder()
        .method(Method::PATCH)
        .uri("/api/v1/me")
        .header("authorization", format!("Bearer {}", i.admin))
        .body(Body::empty())
        .unwrap();
    let response = i.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 405);
    assert!(response.headers()["allow"].to_str().unwrap().contains("GET"));
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "method_not_allowed");
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
    let app =
        json!({ "name": "web", "image": "img:1", "port": 8080, "env": { "DATABASE_URL": "postgres://u:pw@db/x" } });

    // A viewer cannot deploy; a deployer can.
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps", Some(&viewer), Some(app.clone())).await.0, 403);
    assert_eq!(i.call(Method::POST, "/api/v1/teams/main/apps", Some(&deployer), Some(app)).await.0, 201);
    // A viewer sees which variables are set, never their values (nor through a release).
    let (_, seen) = i.call(Method::GET, "/api/v1/teams/main/apps/web", Some(&viewer), None).await;
    assert_eq!(seen["releases"][0]["spec"]["env"]["DATABASE_URL"], "", "{seen}");
    assert_eq!(seen["releases"][0]["env_hidden"], true);
    assert!(!seen.to_string().contains("pw@db"), "no value anywhere: {seen}");
    let (_, release) = i.call(Method::GET, "/api/v1/teams/main/apps/web/releases/1", Some(&viewer), None).await;
    assert!(!release.to_string().contains("pw@db"), "{release}");
    let (_, seen) = i.call(Method::GET, "/api/v1/teams/main/apps/web", Some(&deployer), None).await;
    assert_eq!(seen["releases"][0]["spec"]["env"]["DATABASE_URL"], "postgres://u:pw@db/x");
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
