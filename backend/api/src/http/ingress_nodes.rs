//! The control plane's end of the ingress node protocol: joining with a join token, then the
//! route table (waited for until it changes), the certificates and the node's reports, each with
//! the node's credential, on any instance.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_wire::edge::{IngressJoinRequest, IngressReport};

use super::extract::{ApiJson, IngressNode};
use super::{ApiResult, AppState};
use crate::auth::Principal;

pub(super) async fn join(
    State(s): State<AppState>,
    ApiJson(request): ApiJson<IngressJoinRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.join_ingress_node(request).await?)))
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub(super) struct TableQuery {
    /// The version the node has: the answer waits (up to 20 s) until the table differs.
    after: Option<i64>,
    /// The certificate ids the node has, comma-separated (`3,7`; empty: none).
    certificates: Option<String>,
}

/// The route table once it differs from what the node has; 204 when nothing changed meanwhile.
pub(super) async fn table(
    IngressNode(_node): IngressNode,
    State(s): State<AppState>,
    Query(query): Query<TableQuery>,
) -> ApiResult<Response> {
    let certificates = match query.certificates.as_deref() {
        None => None,
        Some("") => Some(Vec::new()),
        Some(list) => {
            Some(list.split(',').map(|id| id.trim().parse::<i64>()).collect::<Result<Vec<_>, _>>().map_err(|_| {
                crate::services::ServiceError::Validation {
                    field: "certificates".into(),
                    message: "a comma-separated list of certificate ids".into(),
                }
            })?)
        }
    };
    Ok(match s.services.ingress_table(query.after, certificates).await? {
        Some(table) => Json(table).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

pub(super) async fn certificates(IngressNode(_node): IngressNode, State(s): State<AppState>) -> ApiResult<Response> {
    Ok(Json(s.services.ingress_certificates().await?).into_response())
}

pub(super) async fn report(
    IngressNode(node): IngressNode,
    State(s): State<AppState>,
    ApiJson(report): ApiJson<IngressReport>,
) -> ApiResult<StatusCode> {
    s.services.ingress_report(&node, report).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove(
    principal: Principal,
    State(s): State<AppState>,
    Path(node): Path<String>,
) -> ApiResult<StatusCode> {
    s.services.remove_ingress_node(&principal, &node).await?;
    Ok(StatusCode::NO_CONTENT)
}
