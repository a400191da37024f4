//! Builds, build settings and webhooks: the REST endpoints, and the webhook receiver.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_wire::builds::{BuildSettingsChange, CreateWebhook};
use futures::StreamExt;
use serde::Deserialize;

use super::extract::ApiJson;
use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;
use crate::services::{WebhookAnswer, WebhookHeaders};

pub(super) async fn git_info(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.git_info(&p, &team, &app).await?))
}

pub(super) async fn update_settings(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
    ApiJson(change): ApiJson<BuildSettingsChange>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_build_settings(&p, &team, &app, change).await?))
}

pub(super) async fn list(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_builds(&p, &team, &app).await?))
}

pub(super) async fn show(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app, number)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let number = parse_number(&number)?;
    Ok(Json(s.services.show_build(&p, &team, &app, number).await?))
}

pub(super) async fn cancel(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.cancel_build(&p, &team, &app).await?))
}

/// A build number, or `latest`.
fn parse_number(number: &str) -> Result<Option<u32>, ApiError> {
    if number == "latest" {
        return Ok(None);
    }
    number.parse().map(Some).map_err(|_| {
        crate::services::ServiceError::Validation {
            field: "number".into(),
            message: format!("{number:?} is not a build number (or `latest`)"),
        }
        .into()
    })
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct LogQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    follow: bool,
}

/// `GET .../builds/{number}/log`: NDJSON `BuildLogLine`s, or server-sent `line` events (then a
/// `done` event with the build) when the client accepts `text/event-stream`.
pub(super) async fn log(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app, number)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let number = parse_number(&number)?;
    let wants_events = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    // A browser's EventSource reconnects with the last event id it saw: resume after that line,
    // and after the final `done` event answer 204, which stops it reconnecting.
    let last_seen = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    if wants_events && last_seen.as_deref() == Some("done") {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let from = match last_seen.and_then(|id| id.parse::<u64>().ok()) {
        Some(last) if wants_events => last + 1,
        _ => q.from,
    };
    let (build, lines) = s.services.build_log(&p, &team, &app, number, from, q.follow || wants_events).await?;
    let scope = crate::services::Scope::Team(team.clone());
    if wants_events {
        let services = s.services.clone();
        let principal = p.clone();
        let number = build.number;
        let events = lines
            .map(|line| {
                let event = Event::default().event("line").id(line.index.to_string());
                Ok::<_, Infallible>(event.json_data(&line).expect("BUG: serialises"))
            })
            .chain(futures::stream::once(async move {
                // The build as it ended, so the page shows its outcome without another request.
                let done = services.show_build(&p, &team, &app, Some(number)).await.ok();
                Ok(Event::default().event("done").id("done").json_data(&done).expect("BUG: serialises"))
            }));
        let events = s.services.while_authorized(&principal, scope, events);
        return Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response());
    }
    let body = s.services.while_authorized(&p, scope, lines).map(|line| {
        let mut json = serde_json::to_vec(&line).expect("BUG: a BuildLogLine always serialises");
        json.push(b'\n');
        Ok::<_, Infallible>(json)
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response())
}

pub(super) async fn list_webhooks(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_webhooks(&p, &team, &app).await?))
}

pub(super) async fn create_webhook(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
    ApiJson(input): ApiJson<CreateWebhook>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_webhook(&p, &team, &app, input).await?)))
}

pub(super) async fn delete_webhook(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app, id)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.services.delete_webhook(&p, &team, &app, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn deliveries(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.webhook_deliveries(&p, &team, &app).await?))
}

struct Headers<'a>(&'a HeaderMap);

impl WebhookHeaders for Headers<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `POST /hooks/{provider}/{id}`: 202 with the build when one starts, 200 with the reason when
/// the delivery is verified but builds nothing.
pub(super) async fn webhook(
    State(s): State<AppState>,
    Path((provider, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    match s.services.webhook_delivery(&provider, &id, &Headers(&headers), &body).await? {
        WebhookAnswer::Accepted(accepted) => Ok((StatusCode::ACCEPTED, Json(accepted)).into_response()),
        WebhookAnswer::Ignored(reason) => {
            Ok(Json(serde_json::json!({ "verdict": "ignored", "reason": reason })).into_response())
        }
    }
}
