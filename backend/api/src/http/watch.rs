//! Server-sent event streams that keep the dashboard live: the same reads as the REST API, pushed
//! whenever their answer changes (checked twice a second), so a page never reloads to see state.
//! Every poll goes through the service layer with the caller's principal, so a stream shows
//! exactly what the corresponding GET would; and every stream ends when that principal's token
//! no longer reaches what it shows (`Services::while_authorized`).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Serialize;

use super::{ApiResult, AppState};
use crate::auth::Principal;
use crate::services::{Scope, ServiceError};

const POLL: Duration = Duration::from_millis(500);
const METRICS_EVERY: Duration = Duration::from_secs(2);

/// Polls `read` every `every` and emits `event` with its JSON whenever it differs from the last
/// one sent (the first answer always goes out). An error is sent once as an `error` event and ends
/// the stream (the app was deleted, the caller lost access).
fn changes<T, F, Fut>(
    event: &'static str,
    every: Duration,
    only_changes: bool,
    read: F,
) -> impl Stream<Item = Result<Event, Infallible>> + Send
where
    T: Serialize,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ServiceError>> + Send,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (read, tick, None::<String>, false);
    futures::stream::unfold(state, move |(mut read, mut tick, mut last, done)| async move {
        if done {
            return None;
        }
        loop {
            // The first tick is immediate.
            tick.tick().await;
            match read().await {
                Ok(value) => {
                    let json = serde_json::to_string(&value).expect("BUG: API types always serialise");
                    if only_changes && last.as_deref() == Some(json.as_str()) {
                        continue;
                    }
                    let item = Event::default().event(event).data(json.as_str());
                    last = Some(json);
                    return Some((Ok(item), (read, tick, last, false)));
                }
                Err(error) => {
                    let body = super::ApiError::from(error).body();
                    let item = Event::default().event("error").json_data(&body).expect("BUG: ErrorBody serialises");
                    return Some((Ok(item), (read, tick, last, true)));
                }
            }
        }
    })
}

fn sse<S>(stream: S) -> impl IntoResponse
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /api/v1/teams/{team}/watch/apps`: `apps` events with the team's app list.
pub(super) async fn apps(
    State(s): State<AppState>,
    p: Principal,
    Path(team): Path<String>,
) -> ApiResult<impl IntoResponse> {
    // Fail fast (404/403) instead of opening a stream that only says so.
    s.services.list_apps(&p, &team).await?;
    let scope = Scope::Team(team.clone());
    let services = s.services.clone();
    let changes = changes("apps", POLL, true, {
        let p = p.clone();
        move || {
            let (s, p, team) = (s.clone(), p.clone(), team.clone());
            async move { s.services.list_apps(&p, &team).await }
        }
    });
    Ok(sse(services.while_authorized(&p, scope, changes)))
}

/// `GET /api/v1/teams/{team}/apps/{app}/watch`: `app` events with the app's detail (releases with
/// their progress, replicas) and, every two seconds, `metrics` events with its traffic and
/// container figures.
pub(super) async fn app(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.services.show_app(&p, &team, &app).await?;
    let detail = {
        let (s, p, team, app) = (s.clone(), p.clone(), team.clone(), app.clone());
        changes("app", POLL, true, move || {
            let (s, p, team, app) = (s.clone(), p.clone(), team.clone(), app.clone());
            async move { s.services.show_app(&p, &team, &app).await }
        })
    };
    let (services, scope) = (s.services.clone(), Scope::Team(team.clone()));
    let metrics = changes("metrics", METRICS_EVERY, false, {
        let p = p.clone();
        move || {
            let (s, p, team, app) = (s.clone(), p.clone(), team.clone(), app.clone());
            async move { s.services.app_metrics(&p, &team, &app).await }
        }
    });
    Ok(sse(services.while_authorized(&p, scope, futures::stream::select(detail.boxed(), metrics.boxed()))))
}

/// `GET /api/v1/watch/hosts`: `hosts` events with every host, for instance admins.
pub(super) async fn hosts(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    s.services.list_hosts(&p).await?;
    let services = s.services.clone();
    let changes = changes("hosts", POLL, true, {
        let p = p.clone();
        move || {
            let (s, p) = (s.clone(), p.clone());
            async move { s.services.list_hosts(&p).await }
        }
    });
    Ok(sse(services.while_authorized(&p, Scope::Instance, changes)))
}

/// Log lines as `log` events (the logs endpoint answers with this when asked for
/// `text/event-stream`, as `EventSource` does).
pub(super) fn log_events<S>(lines: S) -> impl IntoResponse
where
    S: Stream<Item = berth_wire::api::LogLine> + Send + 'static,
{
    sse(lines.map(|line| Ok(Event::default().event("log").json_data(&line).expect("BUG: LogLine serialises"))))
}
