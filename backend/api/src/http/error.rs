//! The JSON error every failed API call returns: a stable code, a message, and for validation
//! failures the field. Internal errors are logged and shown to clients as a generic message.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_wire::ErrorBody;

use crate::services::ServiceError;

/// The JSON error every failed API call returns.
pub struct ApiError(ServiceError);

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        ApiError(error)
    }
}

impl ApiError {
    fn classify(&self) -> (StatusCode, &'static str, Option<String>) {
        match &self.0 {
            ServiceError::Validation { field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "validation", Some(field.clone()))
            }
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ServiceError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ServiceError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ServiceError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", None),
            ServiceError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway", None),
            ServiceError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_leader", None),
            ServiceError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }

    /// The message clients see; internal details go to the server log only.
    fn message(&self) -> String {
        match &self.0 {
            ServiceError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                "internal error; the server log has the details".to_string()
            }
            other => other.to_string(),
        }
    }
}

impl ApiError {
    /// The JSON body this error is sent with.
    pub(super) fn body(&self) -> ErrorBody {
        let (_, code, field) = self.classify();
        ErrorBody { code: code.into(), message: self.message(), field }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.classify();
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        // Where the leader is, for clients that follow it (agents).
        if let ServiceError::NotLeader { leader: Some(leader) } = &self.0
            && let Ok(value) = header::HeaderValue::from_str(leader)
        {
            response.headers_mut().insert(berth_wire::LEADER_HEADER, value);
        }
        response
    }
}
