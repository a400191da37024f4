//! The control plane's end of the agent protocol: joining with a join token, then one WebSocket per
//! agent carrying `ControlMessage`s down and `AgentMessage`s up.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_wire::agent::{AgentMessage, ControlMessage, JoinRequest};
use futures::{SinkExt, StreamExt};

use super::extract::{AgentHost, ApiJson};
use super::{ApiResult, AppState};
use crate::services::AgentSession;

pub(super) async fn join(
    State(s): State<AppState>,
    ApiJson(request): ApiJson<JoinRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.join_host(request).await?)))
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub(super) struct ImageQuery {
    image: String,
}

/// An agent asks for an image its engine lacks: the `docker save` stream of another host's copy.
pub(super) async fn fetch_image(
    AgentHost(host): AgentHost,
    State(s): State<AppState>,
    Query(query): Query<ImageQuery>,
) -> ApiResult<Response> {
    let stream = s.services.image_for_host(&host, &query.image).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], Body::from_stream(stream)).into_response())
}

/// An agent downloads the context of a build the control plane asked it to run.
pub(super) async fn build_context(
    AgentHost(host): AgentHost,
    State(s): State<AppState>,
    Path(transfer): Path<String>,
) -> ApiResult<Response> {
    let context = s.services.build_context(&host, &transfer).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], context).into_response())
}

/// An agent uploads what the control plane asked for (an image, a log stream).
pub(super) async fn upload(
    AgentHost(host): AgentHost,
    State(s): State<AppState>,
    Path(transfer): Path<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    let stream = body.into_data_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed();
    s.services.agent_upload(&host, &transfer, stream).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn connect(
    AgentHost(host): AgentHost,
    State(s): State<AppState>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let agent = s.services.agent_connected(&host).await?;
    tracing::info!(host, "agent connected");
    Ok(ws.on_upgrade(move |socket| async move {
        if let Err(error) = session(socket, agent).await {
            tracing::info!(host, %error, "agent connection ended");
        }
    }))
}

/// Pushes every desired-list change down and takes every report up, pinging each second so the
/// agent notices a dead connection.
async fn session(socket: WebSocket, mut agent: AgentSession) -> anyhow::Result<()> {
    let (mut sink, mut stream) = socket.split();
    let mut commands = agent.commands();
    let closed = until_closed(agent.closed());
    tokio::pin!(closed);
    let mut desired = agent.desired();
    let mut ping = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            changed = desired.changed() => {
                changed?;
                let containers = desired.borrow_and_update().clone();
                if let Some(containers) = containers {
                    let text = serde_json::to_string(&ControlMessage::Desired { containers })?;
                    sink.send(Message::Text(text.into())).await?;
                }
            }
            () = &mut closed => {
                let _ = sink.send(Message::Close(None)).await;
                return Ok(());
            }
            Some(command) = commands.recv() => {
                sink.send(Message::Text(serde_json::to_string(&command)?.into())).await?;
            }
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                match message? {
                    Message::Text(text) => agent.received(serde_json::from_str::<AgentMessage>(&text)?).await?,
                    Message::Close(_) => return Ok(()),
                    _ => {}
                }
            }
            _ = ping.tick() => sink.send(Message::Ping(Vec::new().into())).await?,
        }
    }
}

/// Resolves once the link is closed (its host removed).
async fn until_closed(mut closed: tokio::sync::watch::Receiver<bool>) {
    let _ = closed.wait_for(|closed| *closed).await;
}
