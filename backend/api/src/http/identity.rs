//! Handlers for sign-in, users, teams, members, invitations, tokens and the audit log.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_wire::identity::{
    AcceptInvite, AddMember, ChangePassword, CreateInvite, CreateTeam, CreateToken, Login, ResetPassword,
};
use serde::Deserialize;

use super::extract::{ApiJson, ClientAddress};
use super::{ApiResult, AppState};
use crate::auth::Principal;

pub(super) async fn login(
    State(s): State<AppState>,
    ClientAddress(address): ClientAddress,
    ApiJson(input): ApiJson<Login>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.login(input, address).await?))
}

pub(super) async fn me(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.me(&p).await?))
}

pub(super) async fn change_password(
    State(s): State<AppState>,
    p: Principal,
    ApiJson(input): ApiJson<ChangePassword>,
) -> ApiResult<impl IntoResponse> {
    s.services.change_password(&p, input).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_users(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_users(&p).await?))
}

pub(super) async fn disable_user(
    State(s): State<AppState>,
    p: Principal,
    Path(email): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.services.set_user_disabled(&p, &email, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn enable_user(
    State(s): State<AppState>,
    p: Principal,
    Path(email): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.services.set_user_disabled(&p, &email, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn reset_password(
    State(s): State<AppState>,
    p: Principal,
    Path(email): Path<String>,
    ApiJson(input): ApiJson<ResetPassword>,
) -> ApiResult<impl IntoResponse> {
    s.services.reset_password(&p, &email, &input.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_teams(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_teams(&p).await?))
}

pub(super) async fn create_team(
    State(s): State<AppState>,
    p: Principal,
    ApiJson(input): ApiJson<CreateTeam>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_team(&p, &input.name).await?)))
}

pub(super) async fn members(
    State(s): State<AppState>,
    p: Principal,
    Path(team): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.members(&p, &team).await?))
}

pub(super) async fn set_member(
    State(s): State<AppState>,
    p: Principal,
    Path(team): Path<String>,
    ApiJson(input): ApiJson<AddMember>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.set_member(&p, &team, input).await?))
}

pub(super) async fn remove_member(
    State(s): State<AppState>,
    p: Principal,
    Path((team, email)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.services.remove_member(&p, &team, &email).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn create_invite(
    State(s): State<AppState>,
    p: Principal,
    Path(team): Path<String>,
    ApiJson(input): ApiJson<CreateInvite>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_invite(&p, &team, input).await?)))
}

pub(super) async fn accept_invite(
    State(s): State<AppState>,
    ClientAddress(address): ClientAddress,
    Path(token): Path<String>,
    ApiJson(input): ApiJson<AcceptInvite>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.accept_invite(&token, input, address).await?))
}

pub(super) async fn list_tokens(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_tokens(&p).await?))
}

pub(super) async fn create_token(
    State(s): State<AppState>,
    p: Principal,
    ApiJson(input): ApiJson<CreateToken>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_token(&p, input).await?)))
}

pub(super) async fn revoke_token(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<i64>,
) -> ApiResult<impl IntoResponse> {
    s.services.revoke_token(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct AuditQuery {
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    200
}

pub(super) async fn team_audit(
    State(s): State<AppState>,
    p: Principal,
    Path(team): Path<String>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.team_audit(&p, &team, q.limit).await?))
}

pub(super) async fn all_audit(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.all_audit(&p, q.limit).await?))
}

pub(super) async fn sign_in_providers(State(s): State<AppState>) -> impl IntoResponse {
    Json(s.services.sign_in_providers())
}

/// Sends the browser to the provider.
pub(super) async fn external_start(
    State(s): State<AppState>,
    ClientAddress(address): ClientAddress,
    Path(provider): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let (url, state) = s.services.external_sign_in_start(&provider, address.as_deref()).await?;
    let mut response = axum::response::Redirect::to(&url).into_response();
    response.headers_mut().append(axum::http::header::SET_COOKIE, super::session::sign_in_binding(&state, &headers));
    Ok(response)
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The provider sends the browser back here.
/// A browser (one that accepts HTML) gets the dashboard's session cookie and the dashboard, or the
/// sign-in page with the reason; other clients get the new login token as JSON.
pub(super) async fn external_callback(
    State(s): State<AppState>,
    ClientAddress(address): ClientAddress,
    Path(provider): Path<String>,
    Query(q): Query<CallbackQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    let browser = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let result = match (q.code, q.state) {
        (Some(_), Some(state)) if !super::session::sign_in_bound(&state, &headers) => {
            Err(crate::services::ServiceError::Unauthorized(
                "this sign-in was not started by this browser (its sign-in cookie is missing or does not match)".into(),
            ))
        }
        (Some(code), Some(state)) => s.services.external_sign_in_finish(&provider, &code, &state, address).await,
        _ => {
            let why = q.error.unwrap_or_else(|| "the provider sent no code".into());
            Err(crate::services::ServiceError::Unauthorized(format!("sign-in was not completed: {why}")))
        }
    };
    let mut response = match (result, browser) {
        (Ok(login), true) => super::session::signed_in(&login.token, "/", &headers),
        (Err(error), true) => {
            tracing::info!(%provider, %error, "external sign-in refused");
            axum::response::Redirect::to("/signin?error=external").into_response()
        }
        (Ok(login), false) => Json(login).into_response(),
        (Err(error), false) => super::ApiError::from(error).into_response(),
    };
    response.headers_mut().append(axum::http::header::SET_COOKIE, super::session::sign_in_binding_cleared(&headers));
    Ok(response)
}
