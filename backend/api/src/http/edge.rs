//! Domains, certificates and edge settings of an app; the ingress's Prometheus figures.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use berth_wire::edge::{AddDomain, EdgeSettings, UploadCertificate};

use super::extract::ApiJson;
use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;
use crate::services::ServiceError;

pub(super) async fn list_domains(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_domains(&p, &team, &app).await?))
}

pub(super) async fn add_domain(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
    ApiJson(input): ApiJson<AddDomain>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.add_domain(&p, &team, &app, input).await?)))
}

pub(super) async fn remove_domain(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app, domain)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.services.remove_domain(&p, &team, &app, &domain).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_certificates(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_certificates(&p, &team, &app).await?))
}

pub(super) async fn upload_certificate(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
    ApiJson(input): ApiJson<UploadCertificate>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.upload_certificate(&p, &team, &app, input).await?)))
}

pub(super) async fn remove_certificate(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app, id)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let id: i64 =
        id.parse().map_err(|_| ApiError::from(ServiceError::NotFound(format!("certificate {id} not found"))))?;
    s.services.remove_certificate(&p, &team, &app, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn edge_settings(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.edge_settings(&p, &team, &app).await?))
}

pub(super) async fn update_edge_settings(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
    ApiJson(change): ApiJson<EdgeSettings>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_edge_settings(&p, &team, &app, change).await?))
}

/// `GET /metrics`: Prometheus scrapes this with an instance admin's token (`bearer_token_file`).
pub(super) async fn metrics(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    let text = s.services.metrics(&p)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}
