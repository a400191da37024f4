//! The HTTP edge: the REST API under `/api/v1` and the dashboard's pages, on one axum router.
//! Handlers are thin: authenticate, call the service layer, map the result.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use berth_wire::api::{CreateApp, CreateJoinToken, Deploy, Rollback, Scale};
use futures::StreamExt;
use serde::Deserialize;

use crate::auth::{Action, Principal};
use crate::services::{ServiceError, Services};

mod agents;
mod builds;
mod edge;
mod error;
mod extract;
pub mod git;
mod identity;
mod ingress_nodes;
pub mod openapi;
pub mod session;
mod watch;

pub use error::ApiError;
use extract::ApiJson;

#[derive(Clone)]
pub struct AppState {
    pub services: Services,
}

/// Who may call an endpoint; the permission matrix as the router declares it. The authorization
/// matrix test checks every endpoint against its declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (sign-in, accepting an invitation, health).
    Public,
    /// Any valid user token.
    User,
    /// A user token whose role in the `{team}` of the path allows the action.
    Team(Action),
    /// Instance admins only.
    InstanceAdmin,
    /// Host agents, with their host credential.
    Agent,
    /// Ingress nodes, with their node credential.
    IngressNode,
}

/// One API endpoint.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    router: MethodRouter<AppState>,
    /// What it takes and answers, for the OpenAPI document.
    doc: openapi::Doc,
}

fn endpoint<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Endpoint
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("BUG: endpoints use standard methods");
    Endpoint { method, path, access, router: on(filter, handler), doc: openapi::Doc::default() }
}

/// Every API endpoint. The router is built from this list, so none can be missing from it.
pub fn endpoints() -> Vec<Endpoint> {
    use Access::*;
    use Action::*;
    use berth_wire::{api, builds as wb, edge as we, identity as wi};
    const APPS: &str = "/api/v1/teams/{team}/apps";
    vec![
        endpoint(Method::GET, "/api/v1/openapi.json", Public, || async { Json(openapi::document()) })
            .answers::<serde_json::Value>(200),
        endpoint(Method::GET, "/api/v1/health", Public, || async { Json(serde_json::json!({ "status": "ok" })) })
            .answers::<serde_json::Value>(200),
        endpoint(Method::GET, APPS, Team(ViewApps), list_apps).answers::<Vec<api::AppSummary>>(200),
        endpoint(Method::POST, APPS, Team(DeployApps), create_app)
            .takes::<CreateApp>()
            .answers::<api::ReleaseAccepted>(201),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}", Team(ViewApps), show_app)
            .answers::<api::AppDetail>(200),
        endpoint(Method::DELETE, "/api/v1/teams/{team}/apps/{app}", Team(DeleteApps), delete_app).answers_empty(204),
        endpoint(Method::POST, "/api/v1/teams/{team}/apps/{app}/deploy", Team(DeployApps), deploy)
            .takes::<Deploy>()
            .answers::<api::ReleaseAccepted>(202),
        endpoint(Method::POST, "/api/v1/teams/{team}/apps/{app}/scale", Team(DeployApps), scale)
            .takes::<Scale>()
            .answers::<api::ReleaseAccepted>(202),
        endpoint(Method::POST, "/api/v1/teams/{team}/apps/{app}/rollback", Team(DeployApps), rollback)
            .takes::<Rollback>()
            .answers::<api::ReleaseAccepted>(202),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/releases/{number}", Team(ViewApps), show_release)
            .answers::<api::ReleaseInfo>(200),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/logs", Team(ViewApps), logs)
            .query::<LogsQuery>()
            .answers_lines::<api::LogLine>(),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/metrics", Team(ViewApps), app_metrics)
            .answers::<api::AppMetrics>(200),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/watch", Team(ViewApps), watch::app).answers_events(),
        endpoint(
            Method::GET,
            "/api/v1/teams/{team}/apps/{app}/releases/{number}/watch",
            Team(ViewApps),
            watch::release,
        )
        .answers_events(),
        endpoint(Method::GET, "/api/v1/teams/{team}/watch/apps", Team(ViewApps), watch::apps).answers_events(),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/git", Team(ViewApps), builds::git_info)
            .answers::<wb::GitInfo>(200),
        endpoint(Method::PATCH, "/api/v1/teams/{team}/apps/{app}/git", Team(DeployApps), builds::update_settings)
            .takes::<wb::BuildSettingsChange>()
            .answers::<wb::GitInfo>(200),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/builds", Team(ViewApps), builds::list)
            .answers::<Vec<wb::BuildInfo>>(200),
        endpoint(Method::POST, "/api/v1/teams/{team}/apps/{app}/builds/cancel", Team(DeployApps), builds::cancel)
            .answers::<wb::BuildInfo>(200),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/builds/{number}", Team(ViewApps), builds::show)
            .answers::<wb::BuildInfo>(200),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/builds/{number}/log", Team(ViewApps), builds::log)
            .query::<builds::LogQuery>()
            .answers_lines::<wb::BuildLogLine>(),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/webhooks", Team(ViewApps), builds::list_webhooks)
            .answers::<Vec<wb::WebhookInfo>>(200),
        endpoint(Method::POST, "/api/v1/teams/{team}/apps/{app}/webhooks", Team(DeployApps), builds::create_webhook)
            .takes::<wb::CreateWebhook>()
            .answers::<wb::WebhookInfo>(201),
        endpoint(
            Method::DELETE,
            "/api/v1/teams/{team}/apps/{app}/webhooks/{id}",
            Team(DeployApps),
            builds::delete_webhook,
        )
        .answers_empty(204),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/webhook-deliveries", Team(ViewApps), builds::deliveries)
            .answers::<Vec<wb::WebhookDelivery>>(200),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/domains", Team(ViewApps), edge::list_domains)
            .answers::<Vec<we::DomainInfo>>(200),
        endpoint(Method::POST, "/api/v1/teams/{team}/apps/{app}/domains", Team(DeployApps), edge::add_domain)
            .takes::<we::AddDomain>()
            .answers::<we::DomainInfo>(201),
        endpoint(
            Method::DELETE,
            "/api/v1/teams/{team}/apps/{app}/domains/{domain}",
            Team(DeployApps),
            edge::remove_domain,
        )
        .answers_empty(204),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/certificates", Team(ViewApps), edge::list_certificates)
            .answers::<Vec<we::CertificateInfo>>(200),
        endpoint(
            Method::POST,
            "/api/v1/teams/{team}/apps/{app}/certificates",
            Team(DeployApps),
            edge::upload_certificate,
        )
        .takes::<we::UploadCertificate>()
        .answers::<we::CertificateInfo>(201),
        endpoint(
            Method::DELETE,
            "/api/v1/teams/{team}/apps/{app}/certificates/{id}",
            Team(DeployApps),
            edge::remove_certificate,
        )
        .answers_empty(204),
        endpoint(Method::GET, "/api/v1/teams/{team}/apps/{app}/edge", Team(ViewApps), edge::edge_settings)
            .answers::<we::EdgeSettings>(200),
        endpoint(Method::PATCH, "/api/v1/teams/{team}/apps/{app}/edge", Team(DeployApps), edge::update_edge_settings)
            .takes::<we::EdgeSettings>()
            .answers::<we::EdgeSettings>(200),
        endpoint(Method::GET, "/metrics", InstanceAdmin, edge::metrics).answers_bytes(200, "text/plain"),
        endpoint(Method::GET, "/api/v1/watch/hosts", InstanceAdmin, watch::hosts).answers_events(),
        endpoint(Method::GET, "/api/v1/status", InstanceAdmin, control_plane_status)
            .answers::<api::ControlPlaneStatus>(200),
        endpoint(Method::GET, "/api/v1/hosts", InstanceAdmin, list_hosts).answers::<Vec<api::HostInfo>>(200),
        endpoint(Method::GET, "/api/v1/hosts/{host}", InstanceAdmin, show_host).answers::<api::HostInfo>(200),
        endpoint(Method::DELETE, "/api/v1/hosts/{host}", InstanceAdmin, remove_host).answers_empty(204),
        endpoint(Method::POST, "/api/v1/hosts/{host}/drain", InstanceAdmin, drain_host).answers::<api::HostInfo>(200),
        endpoint(Method::POST, "/api/v1/join-tokens", InstanceAdmin, create_join_token)
            .takes::<CreateJoinToken>()
            .answers::<api::JoinTokenCreated>(201),
        endpoint(Method::POST, "/api/v1/secret-key/rotate", InstanceAdmin, rotate_secret_key)
            .answers::<api::SecretKeyRotated>(200),
        endpoint(Method::POST, "/api/v1/agents/join", Public, agents::join)
            .takes::<berth_wire::agent::JoinRequest>()
            .answers::<berth_wire::agent::JoinResponse>(201),
        endpoint(Method::GET, "/api/v1/agents/connect", Agent, agents::connect).upgrades(),
        endpoint(Method::GET, "/api/v1/agents/images", Agent, agents::fetch_image)
            .query::<agents::ImageQuery>()
            .answers_bytes(200, "application/x-tar"),
        endpoint(Method::PUT, "/api/v1/agents/transfers/{transfer}", Agent, agents::upload)
            .takes_bytes("application/octet-stream")
            .answers_empty(204),
        endpoint(Method::GET, "/api/v1/agents/transfers/{transfer}/context", Agent, agents::build_context)
            .answers_bytes(200, "application/x-tar"),
        endpoint(Method::POST, "/api/v1/ingress/join", Public, ingress_nodes::join)
            .takes::<we::IngressJoinRequest>()
            .answers::<we::IngressJoinResponse>(201),
        endpoint(Method::GET, "/api/v1/ingress/routes", IngressNode, ingress_nodes::table)
            .query::<ingress_nodes::TableQuery>()
            .answers::<we::IngressTable>(200)
            .or_answers_empty(204),
        endpoint(Method::GET, "/api/v1/ingress/certificates", IngressNode, ingress_nodes::certificates)
            .answers::<Vec<we::IngressCertificate>>(200),
        endpoint(Method::POST, "/api/v1/ingress/report", IngressNode, ingress_nodes::report)
            .takes::<we::IngressReport>()
            .answers_empty(204),
        endpoint(Method::DELETE, "/api/v1/ingress/nodes/{node}", InstanceAdmin, ingress_nodes::remove)
            .answers_empty(204),
        endpoint(Method::POST, "/api/v1/login", Public, identity::login)
            .takes::<wi::Login>()
            .answers::<wi::LoginResponse>(200),
        endpoint(Method::GET, "/api/v1/auth/providers", Public, identity::sign_in_providers)
            .answers::<Vec<String>>(200),
        endpoint(Method::GET, "/api/v1/auth/{provider}/start", Public, identity::external_start).redirects(),
        endpoint(Method::GET, "/api/v1/auth/{provider}/callback", Public, identity::external_callback)
            .query::<identity::CallbackQuery>()
            .redirects()
            .or_answers::<wi::LoginResponse>(200),
        endpoint(Method::GET, "/api/v1/me", User, identity::me).answers::<wi::Me>(200),
        endpoint(Method::POST, "/api/v1/me/password", User, identity::change_password)
            .takes::<wi::ChangePassword>()
            .answers_empty(204),
        endpoint(Method::GET, "/api/v1/users", InstanceAdmin, identity::list_users).answers::<Vec<wi::UserInfo>>(200),
        endpoint(Method::POST, "/api/v1/users/{email}/disable", InstanceAdmin, identity::disable_user)
            .answers_empty(204),
        endpoint(Method::POST, "/api/v1/users/{email}/enable", InstanceAdmin, identity::enable_user).answers_empty(204),
        endpoint(Method::POST, "/api/v1/users/{email}/password", InstanceAdmin, identity::reset_password)
            .takes::<wi::ResetPassword>()
            .answers_empty(204),
        endpoint(Method::GET, "/api/v1/teams", User, identity::list_teams).answers::<Vec<wi::TeamRole>>(200),
        endpoint(Method::POST, "/api/v1/teams", User, identity::create_team)
            .takes::<wi::CreateTeam>()
            .answers::<wi::TeamRole>(201),
        endpoint(Method::GET, "/api/v1/teams/{team}/quota", Team(ViewApps), quota).answers::<api::QuotaInfo>(200),
        endpoint(Method::PUT, "/api/v1/teams/{team}/quota", InstanceAdmin, set_quota)
            .takes::<api::TeamQuota>()
            .answers::<api::QuotaInfo>(200),
        endpoint(Method::GET, "/api/v1/teams/{team}/members", Team(ViewMembers), identity::members)
            .answers::<Vec<wi::Member>>(200),
        endpoint(Method::PUT, "/api/v1/teams/{team}/members", Team(ManageMembers), identity::set_member)
            .takes::<wi::AddMember>()
            .answers::<wi::Member>(200),
        endpoint(Method::DELETE, "/api/v1/teams/{team}/members/{email}", Team(ManageMembers), identity::remove_member)
            .answers_empty(204),
        endpoint(Method::POST, "/api/v1/teams/{team}/invites", Team(ManageMembers), identity::create_invite)
            .takes::<wi::CreateInvite>()
            .answers::<wi::InviteCreated>(201),
        endpoint(Method::POST, "/api/v1/invites/{token}/accept", Public, identity::accept_invite)
            .takes::<wi::AcceptInvite>()
            .answers::<wi::LoginResponse>(200),
        endpoint(Method::GET, "/api/v1/tokens", User, identity::list_tokens).answers::<Vec<wi::TokenInfo>>(200),
        endpoint(Method::POST, "/api/v1/tokens", User, identity::create_token)
            .takes::<wi::CreateToken>()
            .answers::<wi::TokenCreated>(201),
        endpoint(Method::DELETE, "/api/v1/tokens/{id}", User, identity::revoke_token).answers_empty(204),
        endpoint(Method::GET, "/api/v1/teams/{team}/audit", Team(ViewAudit), identity::team_audit)
            .query::<identity::AuditQuery>()
            .answers::<Vec<wi::AuditEntry>>(200),
        endpoint(Method::GET, "/api/v1/audit", InstanceAdmin, identity::all_audit)
            .query::<identity::AuditQuery>()
            .answers::<Vec<wi::AuditEntry>>(200),
    ]
}

/// The whole HTTP surface, without a socket, so tests can drive it directly.
pub fn router(state: AppState) -> Router {
    router_with_dashboard(state, None)
}

/// The API and the dashboard; the dashboard's compiled wasm and JS are served from
/// `dashboard_dir/pkg` (default `./site/pkg`).
pub fn router_with_dashboard(state: AppState, dashboard_dir: Option<&std::path::Path>) -> Router {
    let mut api = Router::new();
    for endpoint in endpoints() {
        api = api.route(endpoint.path, endpoint.router);
    }
    let not_found = || async { ApiError::from(ServiceError::NotFound("no such endpoint".into())) };
    let api = api
        .route("/api/{*rest}", axum::routing::any(not_found))
        .layer(axum::middleware::map_response(json_errors))
        .merge(git::routes())
        .route("/hooks/{provider}/{id}", axum::routing::post(builds::webhook))
        .with_state(state.clone());
    api.clone().merge(dashboard(dashboard_dir, state, api)).layer(axum::middleware::map_response(security_headers))
}

/// Rejections axum makes before a handler runs (a path segment that is not a number, a query
/// that does not parse, a method the path does not take, a body too large) answer with the API's
/// JSON error like every other failure, keeping their status and headers (`Allow`).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let message =
        text.ok().filter(|t| !t.is_empty()).unwrap_or_else(|| status.canonical_reason().unwrap_or("error").into());
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation",
        _ => "error",
    };
    let body = serde_json::to_vec(&berth_wire::ErrorBody { code: code.into(), message, field: None })
        .expect("BUG: an error body always serialises");
    parts.headers.insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// The content security policy of every answer but a dashboard page: this origin's scripts,
/// styles and wasm only, nothing framed or framing it (no clickjacking of a Delete button), forms
/// and `<base>` only to this origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
    frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

/// A dashboard page's policy: the same, and its inline hydration bootstrap by the page's own
/// nonce (a fresh one per page), so no injected inline script runs.
fn page_security_policy(nonce: &str) -> String {
    CONTENT_SECURITY_POLICY.replacen("script-src 'self'", &format!("script-src 'self' 'nonce-{nonce}'"), 1)
}

/// Headers every answer carries (set where a handler did not choose its own).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, axum::http::HeaderValue::from_static(value));
        }
    }
    response
}

/// The Leptos dashboard, rendered on the server and hydrated by `/pkg/berth.js`, and the sign-in
/// and sign-out forms. Pages read their data through `api`, in-process, with the page request's
/// session cookie: the dashboard has no access path of its own.
fn dashboard(dir: Option<&std::path::Path>, state: AppState, api: Router) -> Router {
    use berth_frontend::api::{ApiResponse, Csrf, ServerTransport};
    use leptos::prelude::{provide_context, use_context};
    use leptos_axum::LeptosRoutes;

    let site_root = dir.map_or_else(|| "site".to_string(), |d| d.display().to_string());
    let options = leptos::prelude::LeptosOptions::builder()
        .output_name(berth_frontend::app::OUTPUT_NAME)
        .site_root(site_root.clone())
        .site_pkg_dir("pkg")
        .build();
    let routes = leptos_axum::generate_route_list(berth_frontend::app::App);
    let shell_options = options.clone();
    let page_context = move || {
        // A nonce per page for its inline scripts (Leptos puts it on the hydration bootstrap).
        leptos::nonce::provide_nonce();
        if let (Some(nonce), Some(response)) =
            (leptos::nonce::use_nonce(), use_context::<leptos_axum::ResponseOptions>())
            && let Ok(policy) = axum::http::HeaderValue::from_str(&page_security_policy(nonce.as_inner()))
        {
            response.insert_header(header::CONTENT_SECURITY_POLICY, policy);
        }
        // Pages outside a session (sign-in, invitations) still read public endpoints.
        let session = use_context::<Parts>().and_then(|parts| parts.extensions.get::<session::PageSession>().cloned());
        let secret = session.map(|s| s.secret).unwrap_or_default();
        let csrf = if secret.is_empty() { String::new() } else { session::csrf_token(&secret) };
        provide_context(Csrf(csrf.clone()));
        let api = api.clone();
        let cookie = format!("{}={}", session::SESSION_COOKIE, secret);
        provide_context(ServerTransport(std::sync::Arc::new(move |request| {
            let (api, cookie, csrf) = (api.clone(), cookie.clone(), csrf.clone());
            Box::pin(async move {
                use tower::ServiceExt;
                let mut builder = axum::http::Request::builder()
                    .method(request.method)
                    .uri(&request.path)
                    .header(header::COOKIE, cookie)
                    .header(session::CSRF_HEADER, csrf);
                if request.body.is_some() {
                    builder = builder.header(header::CONTENT_TYPE, "application/json");
                }
                let request = builder.body(Body::from(request.body.unwrap_or_default()));
                let response = match request {
                    Ok(request) => api.oneshot(request).await.expect("BUG: the router is infallible"),
                    Err(error) => return ApiResponse { status: 400, body: format!("bad API request: {error}") },
                };
                let status = response.status().as_u16();
                match axum::body::to_bytes(response.into_body(), 64 << 20).await {
                    Ok(body) => ApiResponse { status, body: String::from_utf8_lossy(&body).into_owned() },
                    Err(error) => ApiResponse { status: 500, body: format!("reading the API's answer: {error}") },
                }
            })
        })));
    };
    let forms = Router::new()
        .route("/auth/signin", axum::routing::post(session::sign_in))
        .route("/auth/signout", axum::routing::post(session::sign_out))
        .with_state(state.clone());
    let pages = Router::new()
        .leptos_routes_with_context(&options, routes, page_context, move || {
            berth_frontend::app::shell(shell_options.clone())
        })
        .with_state(options)
        .layer(axum::middleware::from_fn_with_state(state, session::require_session));
    pages
        .nest_service("/pkg", tower_http::services::ServeDir::new(std::path::Path::new(&site_root).join("pkg")))
        .merge(forms)
}

type ApiResult<T> = Result<T, ApiError>;

async fn list_apps(State(s): State<AppState>, p: Principal, Path(team): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_apps(&p, &team).await?))
}

async fn create_app(
    State(s): State<AppState>,
    p: Principal,
    Path(team): Path<String>,
    ApiJson(input): ApiJson<CreateApp>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_app(&p, &team, input).await?)))
}

async fn show_app(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.show_app(&p, &team, &app).await?))
}

async fn delete_app(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.services.delete_app(&p, &team, &app).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deploy(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
    ApiJson(change): ApiJson<Deploy>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::ACCEPTED, Json(s.services.deploy(&p, &team, &app, change).await?)))
}

async fn scale(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
    ApiJson(input): ApiJson<Scale>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::ACCEPTED, Json(s.services.scale(&p, &team, &app, input.replicas).await?)))
}

async fn rollback(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
    ApiJson(input): ApiJson<Rollback>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::ACCEPTED, Json(s.services.rollback(&p, &team, &app, input.to).await?)))
}

async fn show_release(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app, number)): Path<(String, String, u32)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.release(&p, &team, &app, number).await?))
}

async fn app_metrics(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.app_metrics(&p, &team, &app).await?))
}

#[derive(Deserialize, schemars::JsonSchema)]
struct LogsQuery {
    #[serde(default = "default_tail")]
    tail: u32,
    #[serde(default)]
    follow: bool,
}

fn default_tail() -> u32 {
    100
}

/// Newline-delimited JSON `LogLine`s, or server-sent `log` events when the client accepts
/// `text/event-stream`; with `follow=true` the response stays open.
async fn logs(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let lines = s.services.logs(&p, &team, &app, q.tail.min(10_000), q.follow).await?;
    let lines = s.services.while_authorized(&p, crate::services::Scope::Team(team), lines);
    let wants_events = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if wants_events {
        return Ok(watch::log_events(lines).into_response());
    }
    let body = lines.map(|line| {
        let mut json = serde_json::to_vec(&line).expect("BUG: a LogLine always serialises");
        json.push(b'\n');
        Ok::<_, std::convert::Infallible>(json)
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response())
}

async fn control_plane_status(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.control_plane_status(&p).await?))
}

async fn list_hosts(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_hosts(&p).await?))
}

async fn show_host(State(s): State<AppState>, p: Principal, Path(host): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.show_host(&p, &host).await?))
}

async fn drain_host(State(s): State<AppState>, p: Principal, Path(host): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.drain_host(&p, &host).await?))
}

async fn quota(State(s): State<AppState>, p: Principal, Path(team): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.quota(&p, &team).await?))
}

async fn set_quota(
    State(s): State<AppState>,
    p: Principal,
    Path(team): Path<String>,
    ApiJson(quota): ApiJson<berth_wire::api::TeamQuota>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.set_quota(&p, &team, quota).await?))
}

async fn rotate_secret_key(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.rotate_secret_key(&p).await?))
}

async fn remove_host(
    State(s): State<AppState>,
    p: Principal,
    Path(host): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.services.remove_host(&p, &host).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_join_token(
    State(s): State<AppState>,
    p: Principal,
    ApiJson(input): ApiJson<CreateJoinToken>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_join_token(&p, input).await?)))
}
