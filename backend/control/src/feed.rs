//! The change feed: what changed of what a live page shows, told to every open stream of this
//! instance, so that a stream reads the services again only when its answer may have changed,
//! instead of every open page polling them.
//!
//! Two sources, one [`Changes`] message:
//! - the store's `changes` rows, which the database's triggers append in every transaction that
//!   writes an app, a release, a release event, a replica placement or a host, whichever
//!   instance wrote it: one indexed read per poll period for the whole instance, however many
//!   pages are open;
//! - the agents' reports, as this instance sees them (its orchestrator's while it leads, the
//!   leader's publication while it follows): compared with the previous ones, replica by
//!   replica, when they change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_store::{ChangeRow, Store};
use berth_wire::agent::ObservedContainer;
use tokio::sync::{broadcast, watch};

use crate::links::ObservedUnion;

/// How many messages a stream may fall behind before it is told it missed some.
const BACKLOG: usize = 256;
/// How many rows one read takes.
const ROWS_PER_READ: i64 = 1000;
/// How long an id missing below ones already read is waited for (see [`Cursor`]).
const GAP_WAIT: Duration = Duration::from_secs(10);
/// How long change rows are kept (on the database's clock; the newest is always kept, where a
/// new reader starts), and how often the leader deletes older ones.
const KEEP: Duration = Duration::from_secs(3600);
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// One message of the feed: what changed since the previous one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Apps with a changed row (the app, a release, a release event, a replica placement), with
    /// their team when the row still named it.
    pub apps: BTreeMap<i64, Option<i64>>,
    /// A host joined, was removed, or changed address, labels, capacity or state.
    pub hosts: bool,
    /// Replicas whose agent's report changed (their usage samples included).
    pub reports: BTreeSet<String>,
    /// Whether a report changed in more than its usage sample: phase, readiness, endpoint,
    /// restarts, message.
    pub reports_status: bool,
    /// Changes may have been missed (the stream fell behind, the store was unreachable): read
    /// everything again.
    pub missed: bool,
}

impl Changes {
    /// Whether an app of `team` may have changed.
    pub fn touches_team(&self, team: i64) -> bool {
        self.missed || self.apps.values().any(|t| t.is_none_or(|t| t == team))
    }

    /// Whether app `app` may have changed (its replicas' reports aside).
    pub fn touches_app(&self, app: i64) -> bool {
        self.missed || self.apps.contains_key(&app)
    }

    fn missed() -> Changes {
        Changes { missed: true, ..Changes::default() }
    }

    fn of_rows(rows: &[ChangeRow]) -> Changes {
        let mut changes = Changes::default();
        for row in rows {
            match (row.kind.as_str(), row.app_id) {
                ("app", Some(app)) => {
                    let team = changes.apps.entry(app).or_insert(row.team_id);
                    *team = team.or(row.team_id);
                }
                ("host", _) => changes.hosts = true,
                // A kind this version does not know (a newer instance wrote it): read again.
                _ => changes.missed = true,
            }
        }
        changes
    }

    /// What differs between two sets of reports.
    fn of_reports(before: &ObservedUnion, after: &ObservedUnion) -> Changes {
        let mut changes = Changes::default();
        let ids: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for id in ids {
            let (old, new) = (before.get(id), after.get(id));
            if old == new {
                continue;
            }
            changes.reports.insert(id.clone());
            let status = |o: Option<&ObservedContainer>| o.map(|o| ObservedContainer { usage: None, ..o.clone() });
            if status(old) != status(new) {
                changes.reports_status = true;
            }
        }
        changes
    }

    fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// This instance's feed. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    sender: broadcast::Sender<Arc<Changes>>,
}

/// What one stream receives.
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Changes>>,
}

impl Subscription {
    /// The next changes; `None` once the feed has stopped. A stream that fell behind gets one
    /// message saying it missed some.
    pub async fn next(&mut self) -> Option<Arc<Changes>> {
        match self.receiver.recv().await {
            Ok(changes) => Some(changes),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Arc::new(Changes::missed())),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Drops every message already waiting: for a stream about to read anyway, they say
    /// nothing more.
    pub fn skip_pending(&mut self) {
        while !matches!(
            self.receiver.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
    }
}

impl Feed {
    pub(crate) fn new() -> Feed {
        Feed { sender: broadcast::channel(BACKLOG).0 }
    }

    /// Subscribe before reading what the stream shows first, so no change in between is lost.
    pub fn subscribe(&self) -> Subscription {
        Subscription { receiver: self.sender.subscribe() }
    }

    fn send(&self, changes: Changes) {
        if !changes.is_empty() {
            // No receiver is not an error: no page is open.
            let _ = self.sender.send(Arc::new(changes));
        }
    }

    /// Reads the store's new changes every `poll` and compares the agents' reports whenever
    /// `reports` says they changed; on the leader (`leading`), also deletes changes older than
    /// an hour. Runs until cancelled.
    pub(crate) async fn run(
        self,
        store: Store,
        poll: Duration,
        mut reports: watch::Receiver<()>,
        observed: impl Fn() -> ObservedUnion,
        leading: impl Fn() -> bool,
    ) {
        let mut cursor = None::<Cursor>;
        let mut failing = false;
        let mut last_reports = observed();
        let mut forgot_at = Instant::now();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = reports.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = observed();
                    self.send(Changes::of_reports(&last_reports, &now));
                    last_reports = now;
                    continue;
                }
            }
            match self.read(&store, &mut cursor).await {
                Ok(()) if failing => {
                    tracing::info!("the change feed reads the store again");
                    failing = false;
                    self.send(Changes::missed());
                }
                Ok(()) => {}
                Err(error) => {
                    if !failing {
                        tracing::warn!(error = %error, "reading the change feed failed; retrying every poll");
                    }
                    failing = true;
                }
            }
            if leading() && forgot_at.elapsed() >= FORGET_EVERY {
                forgot_at = Instant::now();
                if let Err(error) = store.forget_changes(KEEP).await {
                    tracing::warn!(error = %error, "deleting old changes failed");
                }
            }
        }
    }

    /// Reads the rows after the cursor (starting after the newest at the first read) and sends
    /// what they say: the rows above the floor, page after page (each after the last id of the
    /// one before), then, when the cursor gave up ids, that changes may have been missed.
    async fn read(&self, store: &Store, cursor: &mut Option<Cursor>) -> anyhow::Result<()> {
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => cursor.insert(Cursor::after(store.last_change().await?)),
        };
        let mut after = cursor.floor;
        let mut rows = Vec::new();
        loop {
            let page = store.changes_after(after, ROWS_PER_READ).await?;
            let full = page.len() as i64 == ROWS_PER_READ;
            after = page.last().map_or(after, |row| row.id);
            rows.extend(page);
            if !full {
                break;
            }
        }
        let taken = cursor.take(rows, Instant::now());
        self.send(Changes::of_rows(&taken.fresh));
        if taken.gave_up {
            self.send(Changes::missed());
        }
        Ok(())
    }
}

/// Which change ids were delivered: every id up to `floor`, and those above it in `seen`.
/// PostgreSQL takes an identity value when a transaction inserts, not when it commits, so a
/// reader may see id 8 while 7 is still uncommitted (or rolled back, never to appear): an id
/// missing below one already read is waited for, read again each time from the floor, for
/// [`GAP_WAIT`]; then given up, and the streams told they may have missed something. More than
/// [`MAX_GAPS`] missing ids at once (rows deleted while this reader could not read) are given
/// up at once. (Write transactions take turns under one lock today, so only rolled-back ids
/// are ever missing; the cursor does not rely on it.)
struct Cursor {
    floor: i64,
    seen: BTreeSet<i64>,
    gaps: BTreeMap<i64, Instant>,
}

/// What [`Cursor::take`] found.
struct Taken {
    /// The rows not delivered before.
    fresh: Vec<ChangeRow>,
    /// Whether ids were given up: rows with them, if any ever comes, will not be delivered.
    gave_up: bool,
}

/// The most missing ids a cursor waits for.
const MAX_GAPS: i64 = 10_000;

impl Cursor {
    fn after(id: i64) -> Cursor {
        Cursor { floor: id, seen: BTreeSet::new(), gaps: BTreeMap::new() }
    }

    /// Takes `rows` (ids above the floor, in any order, possibly read before) and moves the
    /// floor up past every id delivered or given up.
    fn take(&mut self, rows: Vec<ChangeRow>, now: Instant) -> Taken {
        let fresh: Vec<ChangeRow> = rows.into_iter().filter(|r| r.id > self.floor && self.seen.insert(r.id)).collect();
        let mut gave_up = false;
        if let Some(&highest) = self.seen.last() {
            let missing = highest - self.floor - self.seen.len() as i64;
            if missing > MAX_GAPS {
                // Far too many to wait for: give them all up.
                (self.floor, gave_up) = (highest, true);
                self.seen.clear();
                self.gaps.clear();
            } else {
                for id in self.floor + 1..highest {
                    if !self.seen.contains(&id) {
                        self.gaps.entry(id).or_insert(now);
                    }
                }
            }
        }
        loop {
            let next = self.floor + 1;
            let delivered = self.seen.remove(&next);
            let waited_out = self.gaps.get(&next).is_some_and(|since| now.duration_since(*since) >= GAP_WAIT);
            if !delivered && !waited_out {
                break;
            }
            gave_up |= !delivered;
            self.gaps.remove(&next);
            self.floor = next;
        }
        Taken { fresh, gave_up }
    }
}

#[cfg(test)]
mod tests {
    use berth_wire::agent::ContainerPhase;

    use super::*;

    fn row(id: i64) -> ChangeRow {
        ChangeRow { id, kind: "app".into(), team_id: Some(1), app_id: Some(id) }
    }

    fn ids(taken: &Taken) -> Vec<i64> {
        taken.fresh.iter().map(|r| r.id).collect()
    }

    #[test]
    fn the_cursor_delivers_each_row_once_and_waits_for_a_missing_id_before_moving_past_it() {
        let start = Instant::now();
        let mut cursor = Cursor::after(5);
        let taken = cursor.take(vec![row(6), row(7)], start);
        assert_eq!((ids(&taken), taken.gave_up), (vec![6, 7], false));
        assert_eq!(cursor.floor, 7);
        // 9 is read while 8 is not visible yet: 9 goes out, the floor stays below 8.
        assert_eq!(ids(&cursor.take(vec![row(9)], start)), [9]);
        assert_eq!(cursor.floor, 7);
        // Read again from the floor: 9 is not delivered twice; 8, committed late, is.
        assert_eq!(ids(&cursor.take(vec![row(9)], start + Duration::from_secs(1))), Vec::<i64>::new());
        let taken = cursor.take(vec![row(8), row(9), row(10)], start + Duration::from_secs(2));
        assert_eq!((ids(&taken), taken.gave_up), (vec![8, 10], false));
        assert_eq!(cursor.floor, 10);
        assert!(cursor.seen.is_empty() && cursor.gaps.is_empty());
    }

    #[test]
    fn the_cursor_gives_up_an_id_that_never_comes() {
        let start = Instant::now();
        let mut cursor = Cursor::after(0);
        assert_eq!(ids(&cursor.take(vec![row(2), row(3)], start)), [2, 3]);
        assert_eq!(cursor.floor, 0);
        assert_eq!(ids(&cursor.take(vec![row(2), row(3)], start + GAP_WAIT / 2)), Vec::<i64>::new());
        assert_eq!(cursor.floor, 0);
        // A rolled-back transaction's id: given up after the wait (and said), the floor passes it.
        let taken = cursor.take(vec![row(2), row(3), row(4)], start + GAP_WAIT);
        assert_eq!((ids(&taken), taken.gave_up), (vec![4], true));
        assert_eq!(cursor.floor, 4);
        assert!(cursor.seen.is_empty() && cursor.gaps.is_empty());
        assert!(!cursor.take(vec![row(5)], start + GAP_WAIT).gave_up, "nothing more given up");
    }

    #[test]
    fn the_cursor_does_not_wait_for_more_ids_than_it_can_hold() {
        // Rows deleted while this reader could not read: the next one read is far above the floor.
        let start = Instant::now();
        let mut cursor = Cursor::after(10);
        let far = 10 + MAX_GAPS + 2;
        let taken = cursor.take(vec![row(far), row(far + 1)], start);
        assert_eq!((ids(&taken), taken.gave_up), (vec![far, far + 1], true));
        assert_eq!(cursor.floor, far + 1);
        assert!(cursor.seen.is_empty() && cursor.gaps.is_empty());
    }

    #[test]
    fn changes_name_the_apps_and_teams_and_what_of_the_reports_changed() {
        let rows = [
            ChangeRow { id: 1, kind: "app".into(), team_id: None, app_id: Some(4) },
            ChangeRow { id: 2, kind: "app".into(), team_id: Some(2), app_id: Some(4) },
            ChangeRow { id: 3, kind: "host".into(), team_id: None, app_id: None },
        ];
        let changes = Changes::of_rows(&rows);
        assert_eq!(changes.apps, BTreeMap::from([(4, Some(2))]));
        assert!(changes.hosts && !changes.missed);
        assert!(
            changes.touches_team(2) && !changes.touches_team(3) && changes.touches_app(4) && !changes.touches_app(5)
        );
        // A row of an app whose team is not known (deleted in the same transaction) may be anyone's.
        let orphan = Changes::of_rows(&rows[..1]);
        assert!(orphan.touches_team(3));

        let report = |ready: bool, cpu: u64| ObservedContainer {
            replica_id: "a".into(),
            container_id: Some("c".into()),
            phase: if ready { ContainerPhase::Ready } else { ContainerPhase::Running },
            endpoint: Some("10.0.0.2:8080".into()),
            restarts: 0,
            message: None,
            started_at: Some(1),
            usage: Some(berth_wire::agent::ContainerUsage { cpu_millis: cpu, memory_bytes: 1 }),
        };
        let before = ObservedUnion::from([("a".to_string(), report(true, 1)), ("b".to_string(), report(true, 1))]);
        let sampled = ObservedUnion::from([("a".to_string(), report(true, 2)), ("b".to_string(), report(true, 1))]);
        let changes = Changes::of_reports(&before, &sampled);
        assert_eq!(changes.reports, BTreeSet::from(["a".to_string()]));
        assert!(!changes.reports_status, "a new usage sample is not a change of status");
        let unready = ObservedUnion::from([("a".to_string(), report(false, 1))]);
        let changes = Changes::of_reports(&before, &unready);
        assert_eq!(changes.reports, BTreeSet::from(["a".to_string(), "b".to_string()]));
        assert!(changes.reports_status);
    }
}
