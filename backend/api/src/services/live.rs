//! Views shared by every live stream that shows the same thing. A team's app list is the same
//! for every member who may see it, an app's detail the same for everyone who sees its
//! environment (or everyone who does not), its metrics the same for all: so one task per view
//! reads it again when the change feed tells of a change that may alter it (metrics: every two
//! seconds), and every stream showing it receives that one answer. Fifty open pages cost one
//! read per change, not fifty. A view's task lives while one of its streams is open; streams
//! check access when they open, and `Services::while_authorized` ends them when it is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_control::feed::Changes;
use tokio::sync::watch;

use super::apps::env_hidden;
use super::{Result, ServiceError, Services};
use crate::auth::{Action, Principal};

/// The least time between two reads of one view (or stream): under constant change, a view is
/// read no more often than each dashboard page polled before the change feed.
pub const MIN_GAP: Duration = Duration::from_millis(500);
/// Metrics are samples of time (the last minute's traffic), not changes: read on a timer.
const METRICS_EVERY: Duration = Duration::from_secs(2);

/// A view's latest answer: `None` before the first read; then its JSON, or the error that
/// ended the view (a stream receiving it ends too; the next one opened starts a new view).
pub type View = Option<std::result::Result<Arc<str>, Arc<ServiceError>>>;

/// What a view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// The team's app list (`GET .../apps`).
    Apps { team: i64 },
    /// An app's detail (`GET .../apps/{app}`), as members who see the environment's values see
    /// it, or as those who do not.
    App { app: Incarnation, env_hidden: bool },
    /// An app's metrics (`GET .../apps/{app}/metrics`).
    Metrics { app: Incarnation },
}

/// One app, not merely one id: an id may be taken again by a later app (of any team, on
/// SQLite), which a view opened for the earlier one must never show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Incarnation {
    id: i64,
    team: i64,
    created_at: i64,
}

impl Incarnation {
    fn of(app: &berth_store::AppRow) -> Incarnation {
        Incarnation { id: app.id, team: app.team_id, created_at: app.created_at }
    }
}

/// The views open now.
#[derive(Default)]
pub(crate) struct Views {
    open: Mutex<HashMap<Key, watch::Sender<View>>>,
}

impl Services {
    /// The team's app list, kept current for as long as the receiver lives. Refused as
    /// `GET .../apps` is.
    pub fn watch_apps(&self, principal: &Principal, team: &str) -> Result<watch::Receiver<View>> {
        let team = principal.require(team, Action::ViewApps)?;
        Ok(self.view(Key::Apps { team }))
    }

    /// The app's detail as `principal` sees it, kept current, and its metrics, sampled every
    /// two seconds, for as long as the receivers live. Refused as `GET .../apps/{app}` is.
    pub async fn watch_app(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
    ) -> Result<(watch::Receiver<View>, watch::Receiver<View>)> {
        let app = Incarnation::of(&self.find_app(principal, team, name, Action::ViewApps).await?);
        let detail = self.view(Key::App { app, env_hidden: env_hidden(principal, team) });
        Ok((detail, self.view(Key::Metrics { app })))
    }

    fn view(&self, key: Key) -> watch::Receiver<View> {
        let mut open = self.views.open.lock().expect("BUG: views poisoned");
        if let Some(view) = open.get(&key) {
            return view.subscribe();
        }
        let (view, receiver) = watch::channel(None);
        open.insert(key, view.clone());
        tokio::spawn(self.clone().keep(key, view));
        receiver
    }

    /// Reads the view at once, then again when a change may alter it, at most once per
    /// [`MIN_GAP`] (metrics: every [`METRICS_EVERY`]), until no stream shows it or a read fails.
    async fn keep(self, key: Key, view: watch::Sender<View>) {
        // Subscribed before the first read: no change in between is lost.
        let mut feed = self.cluster.feed().subscribe();
        let mut read_at = None::<tokio::time::Instant>;
        // The replicas the last answer showed, whose reports it shows.
        let mut replicas = Vec::new();
        loop {
            if let Some(at) = read_at {
                let next = match key {
                    Key::Metrics { .. } => at + METRICS_EVERY,
                    _ => at + MIN_GAP,
                };
                let timer = async {
                    match key {
                        Key::Metrics { .. } => tokio::time::sleep_until(next).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::pin!(timer);
                loop {
                    tokio::select! {
                        () = view.closed() => if self.forget(key, &view) { return },
                        changes = feed.next() => match changes {
                            Some(changes) if key.touched_by(&changes, &replicas) => break,
                            Some(_) => {}
                            // The feed is gone with its cluster: nothing will change any more.
                            None => return,
                        },
                        () = &mut timer => break,
                    }
                }
                tokio::time::sleep_until(next).await;
                // What came meanwhile is covered by the read below.
                feed.skip_pending();
            }
            read_at = Some(tokio::time::Instant::now());
            let answer = self.read(key).await.map(|(json, shown)| {
                replicas = shown;
                Arc::from(json)
            });
            let answer = answer.map_err(Arc::new);
            if answer.is_err() {
                // Gone from the open views before its streams hear of the error, so a stream
                // opened from now on starts a new view rather than inherit the error.
                self.views.open.lock().expect("BUG: views poisoned").remove(&key);
                view.send_replace(Some(answer));
                return;
            }
            view.send_if_modified(|shown| {
                let same = matches!((&*shown, &answer), (Some(Ok(old)), Ok(new)) if old == new);
                *shown = Some(answer);
                !same
            });
        }
    }

    /// The view's answer in JSON, and the replicas it shows.
    async fn read(&self, key: Key) -> Result<(String, Vec<String>)> {
        match key {
            Key::Apps { team } => Ok((json(&self.app_list(team).await?), Vec::new())),
            Key::App { app, env_hidden } => {
                let detail = self.app_detail(&self.live_app(app).await?, env_hidden).await?;
                let replicas = detail.replicas.iter().map(|r| r.id.clone()).collect();
                Ok((json(&detail), replicas))
            }
            Key::Metrics { app } => Ok((json(&self.metrics_of(&self.live_app(app).await?).await?), Vec::new())),
        }
    }

    /// The app, unless it is gone or going.
    async fn live_app(&self, app: Incarnation) -> Result<berth_store::AppRow> {
        match self.store.app_by_id(app.id).await? {
            Some(row) if !row.deleting && Incarnation::of(&row) == app => Ok(row),
            _ => Err(ServiceError::NotFound("the app was deleted".into())),
        }
    }

    /// Removes the view if no stream shows it (checked under the lock new streams subscribe
    /// under, so none can come in between).
    fn forget(&self, key: Key, view: &watch::Sender<View>) -> bool {
        let mut open = self.views.open.lock().expect("BUG: views poisoned");
        if view.receiver_count() > 0 {
            return false;
        }
        open.remove(&key);
        true
    }
}

impl Key {
    /// Whether `changes` may alter what the view showed last (with `replicas` in it).
    fn touched_by(&self, changes: &Changes, replicas: &[String]) -> bool {
        match *self {
            // A replica's readiness counts in the list; its usage samples do not.
            Key::Apps { team } => changes.touches_team(team) || changes.reports_status,
            Key::App { app, .. } => changes.touches_app(app.id) || replicas.iter().any(|r| changes.reports.contains(r)),
            Key::Metrics { .. } => false,
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("BUG: API types always serialise")
}
