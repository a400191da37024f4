//! Server-sent event streams that keep the dashboard live and the CLI following a release: the
//! same answers as the REST API, pushed whenever they change. They are fed by the instance's
//! change feed (`berth_control::feed`: writes of the store by any instance, new reports of the
//! agents), never by polling: a stream reads again only when a change may concern it, at most
//! once per [`MIN_GAP`], so an open page costs nothing while nothing it shows changes. The app
//! list, an app's detail and its metrics are views shared by every stream that shows the same
//! thing (`Services::watch_apps` and the like: one read per change however many pages are
//! open); a release and the hosts are read per stream, with the caller's principal. Access is
//! checked when a stream opens, as the corresponding GET checks it, and every stream ends when
//! its principal's token no longer reaches what it shows (`Services::while_authorized`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use berth_control::feed::{Changes, Subscription};
use berth_wire::api::ReleaseInfo;
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::watch;

use super::{ApiResult, AppState};
use crate::auth::{Action, Principal};
use crate::services::{Scope, ServiceError, View};

/// The least time between two reads of one stream.
const MIN_GAP: Duration = crate::services::LIVE_MIN_GAP;
/// Hosts show when each was last heard from, which moves with time alone.
const HOSTS_EVERY: Duration = Duration::from_secs(5);
/// A release's stream reads it this often too, whatever the feed says.
const RELEASE_EVERY: Duration = Duration::from_secs(10);

/// When a stream of its own reads again.
struct Trigger<T> {
    /// Whether the changes may alter the answer.
    relevant: fn(&Changes, i64) -> bool,
    /// The id `relevant` is asked about (an app's).
    of: i64,
    /// Also this often, for what moves with time alone.
    every: Option<Duration>,
    /// Whether the stream ends after sending an answer (a finished release).
    last: fn(&T) -> bool,
}

/// A stream of its own (not a shared view): emits `event` with `read`'s JSON at once, then again
/// whenever the feed tells of a change the trigger finds relevant (at most once per
/// [`MIN_GAP`]) and the answer differs from the last one sent. An error is sent once as an
/// `error` event and ends the stream (the app was deleted, the caller lost access). `feed` must
/// be subscribed before the first read, so no change in between is lost.
fn live<T, F, Fut>(
    event: &'static str,
    feed: Subscription,
    trigger: Trigger<T>,
    read: F,
) -> impl Stream<Item = Result<Event, Infallible>> + Send
where
    T: Serialize + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ServiceError>> + Send,
{
    struct State<T, F> {
        read: F,
        feed: Subscription,
        trigger: Trigger<T>,
        sent: Option<String>,
        read_at: Option<tokio::time::Instant>,
        done: bool,
    }
    let state = State { read, feed, trigger, sent: None, read_at: None, done: false };
    futures::stream::unfold(state, move |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            if let Some(at) = state.read_at {
                // Wait for a change worth a read, or for the timer.
                let every = state.trigger.every;
                let timer = async {
                    match every {
                        Some(every) => tokio::time::sleep(every).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(timer);
                loop {
                    tokio::select! {
                        changes = state.feed.next() => {
                            let changes = changes?;
                            if (state.trigger.relevant)(&changes, state.trigger.of) {
                                break;
                            }
                        }
                        () = &mut timer => break,
                    }
                }
                tokio::time::sleep_until(at + MIN_GAP).await;
                // What came meanwhile is covered by the read below.
                state.feed.skip_pending();
            }
            state.read_at = Some(tokio::time::Instant::now());
            match (state.read)().await {
                Ok(value) => {
                    let json = serde_json::to_string(&value).expect("BUG: API types always serialise");
                    if state.sent.as_deref() == Some(json.as_str()) {
                        continue;
                    }
                    let item = Event::default().event(event).data(json.as_str());
                    state.done = (state.trigger.last)(&value);
                    state.sent = Some(json);
                    return Some((Ok(item), state));
                }
                Err(error) => {
                    let body = super::ApiError::from(error).body();
                    let item = Event::default().event("error").json_data(&body).expect("BUG: ErrorBody serialises");
                    state.done = true;
                    return Some((Ok(item), state));
                }
            }
        }
    })
}

/// Emits `event` with each new answer of a shared view (`Services::watch_apps` and the like),
/// the first as soon as it is read. An error is sent once as an `error` event and ends the
/// stream (the app was deleted, the store failed).
fn shared(event: &'static str, view: watch::Receiver<View>) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    futures::stream::unfold((view, None::<Arc<str>>, false), move |(mut view, mut sent, done)| async move {
        if done {
            return None;
        }
        loop {
            let shown = view.borrow_and_update().clone();
            match shown {
                Some(Ok(json)) if sent.as_ref() != Some(&json) => {
                    let item = Event::default().event(event).data(&*json);
                    sent = Some(json);
                    return Some((Ok(item), (view, sent, false)));
                }
                Some(Err(error)) => {
                    let body = super::ApiError::from(error.for_another()).body();
                    let item = Event::default().event("error").json_data(&body).expect("BUG: ErrorBody serialises");
                    return Some((Ok(item), (view, sent, true)));
                }
                _ => {}
            }
            view.changed().await.ok()?;
        }
    })
}

fn sse<S>(stream: S) -> impl IntoResponse
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /api/v1/teams/{team}/watch/apps`: `apps` events with the team's app list, read once per
/// change for all of the team's open streams.
pub(super) async fn apps(
    State(s): State<AppState>,
    p: Principal,
    Path(team): Path<String>,
) -> ApiResult<impl IntoResponse> {
    // Refused (404/403) before any stream opens.
    let view = s.services.watch_apps(&p, &team)?;
    Ok(sse(s.services.while_authorized(&p, Scope::Team(team), shared("apps", view))))
}

/// `GET /api/v1/teams/{team}/apps/{app}/watch`: `app` events with the app's detail (releases with
/// their progress, replicas) as it changes and, every two seconds, `metrics` events with its
/// traffic and container figures; both read once for all of the app's open streams.
pub(super) async fn app(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let (detail, metrics) = s.services.watch_app(&p, &team, &app).await?;
    let both = futures::stream::select(shared("app", detail).boxed(), shared("metrics", metrics).boxed());
    Ok(sse(s.services.while_authorized(&p, Scope::Team(team), both)))
}

/// `GET /api/v1/teams/{team}/apps/{app}/releases/{number}/watch`: `release` events with the
/// release and its progress events as they change (what `berth deploy` follows); the stream ends
/// after the release is finished (serving, superseded or failed).
pub(super) async fn release(
    State(s): State<AppState>,
    p: Principal,
    Path((team, app, number)): Path<(String, String, u32)>,
) -> ApiResult<impl IntoResponse> {
    let feed = s.services.cluster().feed().subscribe();
    let row = s.services.find_app(&p, &team, &app, Action::ViewApps).await?;
    let (app_id, created_at) = (row.id, row.created_at);
    s.services.release(&p, &team, &app, number).await?;
    // Also every 10 s: a follower of a release must not wait forever on a change it missed.
    let trigger = Trigger {
        relevant: Changes::touches_app,
        of: app_id,
        every: Some(RELEASE_EVERY),
        last: |release: &ReleaseInfo| release.state.is_finished(),
    };
    let (services, scope) = (s.services.clone(), Scope::Team(team.clone()));
    let changes = live("release", feed, trigger, {
        let p = p.clone();
        move || {
            let (s, p, team, app) = (s.clone(), p.clone(), team.clone(), app.clone());
            async move {
                // The app the stream opened on, not one made since under its name.
                let now = s.services.find_app(&p, &team, &app, Action::ViewApps).await?;
                if (now.id, now.created_at) != (app_id, created_at) {
                    return Err(ServiceError::NotFound(format!("app {app} was deleted")));
                }
                s.services.release_of(&p, &team, &now, number).await
            }
        }
    });
    Ok(sse(services.while_authorized(&p, scope, changes)))
}

/// `GET /api/v1/watch/hosts`: `hosts` events with every host, for instance admins.
pub(super) async fn hosts(State(s): State<AppState>, p: Principal) -> ApiResult<impl IntoResponse> {
    let feed = s.services.cluster().feed().subscribe();
    s.services.list_hosts(&p).await?;
    let services = s.services.clone();
    // Hosts list the replicas placed on them and their phases, and when each was last heard from.
    let trigger = Trigger {
        relevant: |changes: &Changes, _| {
            changes.hosts || changes.missed || !changes.apps.is_empty() || changes.reports_status
        },
        of: 0,
        every: Some(HOSTS_EVERY),
        last: |_: &Vec<berth_wire::api::HostInfo>| false,
    };
    let changes = live("hosts", feed, trigger, {
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
