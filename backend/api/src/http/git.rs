//! The git remote over Smart HTTP: `/git/{team}/{app}.git/info/refs`, `git-receive-pack` and
//! `git-upload-pack`, each spawning the system `git <service> --stateless-rpc` in the app's bare
//! repository and streaming both ways. The request ending (a finished push, Ctrl-C, a dropped
//! connection) kills git and its hook, and cancels the build the push started.

use std::process::Stdio;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_util::io::{ReaderStream, StreamReader};

use super::AppState;
use super::extract::ClientAddress;
use crate::services::{GitAccess, PushTicket, ServiceError};

/// The environment variables Berth's pre-receive hook reads.
pub const HOOK_SOCKET_ENV: &str = "BERTH_HOOK_SOCKET";
pub const PUSH_SESSION_ENV: &str = "BERTH_PUSH_SESSION";
/// A compressed request body is cut at this size once inflated (git compresses only small
/// negotiation requests; packs are sent as they are).
const MAX_INFLATED_BODY: u64 = 1 << 30;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/git/{team}/{repo}/info/refs", get(info_refs)).route("/git/{team}/{repo}/{service}", post(rpc))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    ReceivePack,
    UploadPack,
}

impl Service {
    fn parse(name: &str) -> Option<Service> {
        match name {
            "git-receive-pack" => Some(Service::ReceivePack),
            "git-upload-pack" => Some(Service::UploadPack),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Service::ReceivePack => "git-receive-pack",
            Service::UploadPack => "git-upload-pack",
        }
    }

    fn command(self) -> &'static str {
        match self {
            Service::ReceivePack => "receive-pack",
            Service::UploadPack => "upload-pack",
        }
    }
}

/// A git error as git's HTTP client shows it: plain text, and for 401 the challenge that makes
/// it ask its credential helper.
fn git_error(error: ServiceError) -> Response {
    let (status, message) = match &error {
        ServiceError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.clone()),
        ServiceError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
        ServiceError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
        ServiceError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m.clone()),
        ServiceError::Validation { message, .. } => (StatusCode::BAD_REQUEST, message.clone()),
        ServiceError::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
        ServiceError::BadGateway(m) => (StatusCode::BAD_GATEWAY, m.clone()),
        ServiceError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
        ServiceError::Internal(e) => {
            tracing::error!(error = format!("{e:#}"), "git request failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_string())
        }
    };
    let mut response = (status, format!("{message}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Berth\""));
    }
    response
}

/// The token from `Authorization: Basic <user:token>` (any user name) or `Bearer <token>`.
fn credential(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_, password) = decoded.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// `Git-Protocol` passed to git only when it is plain `key=value` pairs (as Gitea allows).
fn git_protocol(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("git-protocol")?.to_str().ok()?;
    let valid = value.len() <= 256
        && value.split(':').all(|pair| {
            pair.split_once('=').is_some_and(|(k, v)| {
                !k.is_empty()
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            })
        });
    valid.then(|| value.to_string())
}

async fn access(
    state: &AppState,
    headers: &HeaderMap,
    address: Option<String>,
    team: &str,
    repo: &str,
    service: Service,
) -> Result<GitAccess, Response> {
    let Some(app) = repo.strip_suffix(".git") else {
        return Err(git_error(ServiceError::NotFound(format!(
            "no repository {team}/{repo}: the remote is /git/{team}/<app>.git"
        ))));
    };
    let secret = credential(headers);
    state
        .services
        .git_access(secret.as_deref(), address, team, app, service == Service::ReceivePack)
        .await
        .map_err(git_error)
}

#[derive(Deserialize)]
struct InfoRefsQuery {
    service: Option<String>,
}

/// The ref advertisement that starts a fetch or a push.
async fn info_refs(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Path((team, repo)): Path<(String, String)>,
    Query(query): Query<InfoRefsQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(service) = query.service.as_deref().and_then(Service::parse) else {
        return (StatusCode::FORBIDDEN, "Berth serves git's smart HTTP protocol only (git 1.6.6 or later)\n")
            .into_response();
    };
    let access = match access(&state, &headers, address, &team, &repo, service).await {
        Ok(access) => access,
        Err(response) => return response,
    };
    let protocol = git_protocol(&headers);
    let mut command = match state.services.repos_git(&access.repo).await {
        Ok(command) => command,
        Err(error) => return git_error(error),
    };
    command.args([service.command(), "--stateless-rpc", "--advertise-refs", "."]);
    if let Some(protocol) = &protocol {
        command.env("GIT_PROTOCOL", protocol);
    }
    let output = match command.stdout(Stdio::piped()).stderr(Stdio::piped()).output().await {
        Ok(output) if output.status.success() => output.stdout,
        Ok(output) => {
            let error =
                anyhow::anyhow!("git {}: {}", service.command(), String::from_utf8_lossy(&output.stderr).trim());
            return git_error(ServiceError::Internal(error));
        }
        Err(error) => return git_error(ServiceError::Internal(anyhow::Error::new(error).context("running git"))),
    };
    let mut body = Vec::with_capacity(output.len() + 64);
    // Protocol v2 starts with git's own capability advertisement; v0/v1 with the service line.
    if !protocol.as_deref().is_some_and(|p| p.contains("version=2")) {
        let line = format!("# service={}\n", service.name());
        body.extend_from_slice(format!("{:04x}{line}0000", line.len() + 4).as_bytes());
    }
    body.extend_from_slice(&output);
    (
        [
            (header::CONTENT_TYPE, format!("application/x-{}-advertisement", service.name())),
            (header::CACHE_CONTROL, "no-cache, max-age=0, must-revalidate".to_string()),
        ],
        body,
    )
        .into_response()
}

/// What must live exactly as long as the response: the git process (its whole process group,
/// hook included, is killed when the response is dropped) and the push's registration.
struct Running {
    child: tokio::process::Child,
    _push: Option<PushTicket>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            // The group is git's own (it was started as a group leader): its hook goes with it.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// `POST .../git-receive-pack` (a push) and `POST .../git-upload-pack` (a fetch).
async fn rpc(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Path((team, repo, service)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(service) = Service::parse(&service) else {
        return (StatusCode::NOT_FOUND, format!("no git service {service:?}\n")).into_response();
    };
    let access = match access(&state, &headers, address, &team, &repo, service).await {
        Ok(access) => access,
        Err(response) => return response,
    };
    let expected = format!("application/x-{}-request", service.name());
    if headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("expected Content-Type: {expected}\n")).into_response();
    }
    let gzip = match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => {
            return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported Content-Encoding {other}\n"))
                .into_response();
        }
    };
    let mut command = match state.services.repos_git(&access.repo).await {
        Ok(command) => command,
        Err(error) => return git_error(error),
    };
    command.args([service.command(), "--stateless-rpc", "."]);
    if let Some(protocol) = git_protocol(&headers) {
        command.env("GIT_PROTOCOL", protocol);
    }
    let push = (service == Service::ReceivePack).then(|| {
        let ticket = state.services.open_push(&access);
        command.env(HOOK_SOCKET_ENV, state.services.hook_socket()).env(PUSH_SESSION_ENV, &ticket.secret);
        ticket
    });
    command.process_group(0).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return git_error(ServiceError::Internal(anyhow::Error::new(error).context("starting git"))),
    };
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return git_error(ServiceError::Internal(anyhow::anyhow!("git started without its pipes")));
    };
    // The request body into git's stdin, gunzipped when the client compressed it.
    let input = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    tokio::spawn(async move {
        let copied = if gzip {
            use tokio::io::AsyncReadExt as _;
            // A bounded inflation: a small gzip body may not become an endless one.
            let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(input).take(MAX_INFLATED_BODY);
            tokio::io::copy(&mut decoder, &mut stdin).await
        } else {
            let mut input = input;
            tokio::io::copy(&mut input, &mut stdin).await
        };
        if let Err(error) = copied {
            tracing::debug!(%error, "a git request body ended early");
        }
        let _ = stdin.shutdown().await;
    });
    tokio::spawn(async move {
        let mut lines =
            tokio_util::codec::FramedRead::new(stderr, tokio_util::codec::LinesCodec::new_with_max_length(8192));
        while let Some(Ok(line)) = lines.next().await {
            tracing::debug!(line, "git stderr");
        }
    });
    let running = Running { child, _push: push };
    let output = ReaderStream::new(stdout).map(move |chunk| {
        let _alive = &running;
        chunk
    });
    (
        [
            (header::CONTENT_TYPE, format!("application/x-{}-result", service.name())),
            (header::CACHE_CONTROL, "no-cache, max-age=0, must-revalidate".to_string()),
            (header::HeaderName::from_static("x-accel-buffering"), "no".to_string()),
        ],
        Body::from_stream(output),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_basic_or_bearer() {
        let mut headers = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:brt_secret");
        headers.insert(header::AUTHORIZATION, format!("Basic {basic}").parse().unwrap());
        assert_eq!(credential(&headers).as_deref(), Some("brt_secret"));
        headers.insert(header::AUTHORIZATION, "Bearer brt_x".parse().unwrap());
        assert_eq!(credential(&headers).as_deref(), Some("brt_x"));
        let empty = base64::engine::general_purpose::STANDARD.encode("user:");
        headers.insert(header::AUTHORIZATION, format!("Basic {empty}").parse().unwrap());
        assert_eq!(credential(&headers), None);
    }

    #[test]
    fn only_plain_git_protocol_values_reach_git() {
        let mut headers = HeaderMap::new();
        headers.insert("git-protocol", "version=2".parse().unwrap());
        assert_eq!(git_protocol(&headers).as_deref(), Some("version=2"));
        headers.insert("git-protocol", "version=2:object-format=sha1".parse().unwrap());
        assert!(git_protocol(&headers).is_some());
        headers.insert("git-protocol", "version=2;rm -rf".parse().unwrap());
        assert_eq!(git_protocol(&headers), None);
    }
}
