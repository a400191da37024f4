//! Every extractor of the HTTP edge: who is calling (`Principal` for users, `AgentHost` for
//! host agents), from where (`ClientAddress`), and `ApiJson`, whose rejections are API errors.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;

use super::session;
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::services::ServiceError;

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let secret = match header {
            Some(header) => header.strip_prefix("Bearer ").map(|t| t.trim().to_string()),
            // The dashboard's session cookie; whatever it may change needs the CSRF token too.
            None => match session::session_secret(&parts.headers) {
                Some(secret) if !session::csrf_ok(&parts.method, &parts.headers, &secret) => {
                    return Err(ServiceError::Forbidden(format!(
                        "requests made with the session cookie must carry its CSRF token in '{}'",
                        session::CSRF_HEADER
                    ))
                    .into());
                }
                secret => secret,
            },
        };
        let Some(secret) = secret else {
            return Err(
                ServiceError::Unauthorized("send an API token as 'Authorization: Bearer <token>'".into()).into()
            );
        };
        let mut principal = state.services.authenticate(&secret).await?;
        principal.address = client_address(parts);
        Ok(principal)
    }
}

/// The client's address, when the server records it.
fn client_address(parts: &Parts) -> Option<String> {
    parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip().to_string())
}

/// `Json` whose rejections are API errors naming what was wrong with the body.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                let message = rejection.body_text();
                // serde names the offending field in "... at line L column C"-style messages;
                // pull the field name out when it is there.
                let field = message
                    .split('`')
                    .nth(1)
                    .filter(|_| message.contains("missing field") || message.contains("unknown field"))
                    .unwrap_or("body")
                    .to_string();
                Err(ServiceError::Validation { field, message }.into())
            }
        }
    }
}

/// The client address of an unauthenticated request.
pub(super) struct ClientAddress(pub(super) Option<String>);

impl axum::extract::FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(client_address(parts)))
    }
}

/// The host whose credential the request carries. Extracted before anything else in agent
/// handlers, so a caller without a credential learns nothing about the rest of the request.
pub(super) struct AgentHost(pub(super) String);

impl axum::extract::FromRequestParts<AppState> for AgentHost {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        let credential = bearer(parts, "agents authenticate with 'Authorization: Bearer <host credential>'")?;
        Ok(AgentHost(s.services.authenticate_host(credential).await?))
    }
}

/// An ingress node, authenticated by its credential (`Authorization: Bearer <credential>`).
pub(super) struct IngressNode(pub(super) String);

impl axum::extract::FromRequestParts<AppState> for IngressNode {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        let credential = bearer(parts, "ingress nodes authenticate with 'Authorization: Bearer <node credential>'")?;
        Ok(IngressNode(s.services.authenticate_ingress_node(credential).await?))
    }
}

/// The credential of `Authorization: Bearer <credential>`; without one, 401 saying `how`.
fn bearer<'a>(parts: &'a axum::http::request::Parts, how: &str) -> Result<&'a str, ServiceError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ServiceError::Unauthorized(how.into()))
}
