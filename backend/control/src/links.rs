//! The control plane's end of each host agent: a `HostLink` carries the desired containers to the
//! agent and the agent's reports back, whatever the transport (an in-process channel for the local
//! agent, a WebSocket for `berth agent`). `HostLinks` is the registry of every host's link, the
//! union of their reports, and the relay that carries agents' uploads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use berth_agent::{AgentHandle, DesiredReceiver, Observed};
use berth_wire::agent::{ControlMessage, DesiredContainer, ObservedContainer};
use tokio::sync::{mpsc, watch};

use crate::relay::Relay;

/// Every replica's latest report, by replica id, across all hosts.
pub type ObservedUnion = HashMap<String, ObservedContainer>;

/// Cheap to clone; all clones share the registry.
#[derive(Clone, Default)]
pub struct HostLinks {
    inner: Arc<LinksInner>,
}

#[derive(Default)]
struct LinksInner {
    links: RwLock<HashMap<String, Arc<HostLink>>>,
    /// Where each image built by Berth was built (since this process started): besides the hosts
    /// that run it, the only host asked for it.
    origins: Mutex<HashMap<String, String>>,
    observed: watch::Sender<ObservedUnion>,
    relay: Relay,
}

impl HostLinks {
    /// Registers `link` (the in-process agent's, usually) unless a link of that name exists, and
    /// returns the registered one.
    pub fn add(&self, link: Arc<HostLink>) -> Arc<HostLink> {
        let mut links = self.inner.links.write().expect("BUG: host table poisoned");
        if let Some(existing) = links.get(&link.name) {
            return existing.clone();
        }
        links.insert(link.name.clone(), link.clone());
        tokio::spawn(follow(Arc::downgrade(&self.inner), link.observed()));
        link
    }

    /// The link of host `name`, created on first use.
    pub fn link(&self, name: &str) -> Arc<HostLink> {
        if let Some(link) = self.inner.links.read().expect("BUG: host table poisoned").get(name) {
            return link.clone();
        }
        self.add(Arc::new(HostLink::new(name)))
    }

    /// The link of host `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<Arc<HostLink>> {
        self.inner.links.read().expect("BUG: host table poisoned").get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<HostLink>> {
        self.inner.links.read().expect("BUG: host table poisoned").values().cloned().collect()
    }

    /// Forgets a removed host: its link leaves the registry and its connection ends.
    pub fn forget(&self, name: &str) {
        let link = self.inner.links.write().expect("BUG: host table poisoned").remove(name);
        if let Some(link) = link {
            link.close();
        }
    }

    /// The union of every host's latest report, updated on every report that changes something.
    pub fn observed(&self) -> watch::Receiver<ObservedUnion> {
        self.inner.observed.subscribe()
    }

    /// `image` was built on `host`.
    pub fn note_image_origin(&self, image: &str, host: &str) {
        self.inner.origins.lock().expect("BUG: origins lock poisoned").insert(image.to_string(), host.to_string());
    }

    /// Whether `host` may be asked for `image`: it runs a container of it, or built it. An
    /// archive from any other host is never asked for, so a host's credential cannot supply
    /// another team's image.
    pub fn may_supply(&self, host: &HostLink, image: &str) -> bool {
        host.desires_image(image)
            || self.inner.origins.lock().expect("BUG: origins lock poisoned").get(image) == Some(&host.name)
    }

    /// Streams from agents to the control plane (images, logs).
    pub fn relay(&self) -> &Relay {
        &self.inner.relay
    }
}

/// Follows one link's reports and rebuilds the union on every change, for as long as the
/// registry and the link live.
async fn follow(registry: std::sync::Weak<LinksInner>, mut reports: watch::Receiver<Observed>) {
    loop {
        reports.borrow_and_update();
        let Some(registry) = registry.upgrade() else { return };
        // Built inside the update, so two hosts reporting at once cannot publish their unions in
        // the wrong order (the later one would be overwritten by an older view).
        registry.observed.send_if_modified(|current| {
            let links = registry.links.read().expect("BUG: host table poisoned");
            let union: ObservedUnion = links.values().flat_map(|link| link.observed().borrow().clone()).collect();
            if *current == union {
                false
            } else {
                *current = union;
                true
            }
        });
        drop(registry);
        if reports.changed().await.is_err() {
            return;
        }
    }
}

pub struct HostLink {
    pub name: String,
    /// The in-process agent, when this is the server's own host.
    local: Option<AgentHandle>,
    desired: watch::Sender<Option<Vec<DesiredContainer>>>,
    observed: watch::Sender<Observed>,
    last_report: Mutex<Instant>,
    /// The connected agent's command channel (other than desired lists), if one is connected.
    commands: Mutex<Option<mpsc::UnboundedSender<ControlMessage>>>,
    /// Set when the host is removed: its connection ends.
    closed: watch::Sender<bool>,
    /// The agent has reported since this control plane started.
    reported: std::sync::atomic::AtomicBool,
    /// What the agent reported last, unfiltered, and the replica ids it may report on.
    reports: Mutex<Reports>,
}

/// An agent speaks only for the replicas placed on its host: a report counts for the replica
/// ids the host was given in a desired list and still desires or still reports (a replica being
/// stopped after it left the list), never for another host's replicas. A stolen or compromised
/// host credential thus cannot make another app's replicas look ready or point them elsewhere.
#[derive(Default)]
struct Reports {
    last: Observed,
    assigned: HashSet<String>,
    /// Ids dropped from the last report (logged when they change).
    foreign: Vec<String>,
}

impl HostLink {
    pub fn new(name: impl Into<String>) -> HostLink {
        HostLink {
            name: name.into(),
            local: None,
            desired: watch::Sender::new(None),
            observed: watch::Sender::new(Observed::new()),
            last_report: Mutex::new(Instant::now()),
            commands: Mutex::new(None),
            closed: watch::Sender::new(false),
            reported: std::sync::atomic::AtomicBool::new(false),
            reports: Mutex::new(Reports::default()),
        }
    }

    /// Links the in-process agent started with [`HostLink::desired_receiver`] and forwards its
    /// reports for as long as it runs.
    pub fn attach_local(mut self, agent: AgentHandle) -> Arc<HostLink> {
        let mut reports = agent.observed();
        self.local = Some(agent);
        let link = Arc::new(self);
        let weak = Arc::downgrade(&link);
        tokio::spawn(async move {
            loop {
                let report = reports.borrow_and_update().clone();
                let Some(link) = weak.upgrade() else { return };
                link.report(report);
                drop(link);
                if reports.changed().await.is_err() {
                    return;
                }
            }
        });
        link
    }

    pub fn local_agent(&self) -> Option<&AgentHandle> {
        self.local.as_ref()
    }

    /// The container last desired on this host for `replica_id`, if any.
    pub fn desired_container(&self, replica_id: &str) -> Option<DesiredContainer> {
        self.desired.borrow().as_ref()?.iter().find(|d| d.replica_id == replica_id).cloned()
    }

    pub fn desired_receiver(&self) -> DesiredReceiver {
        self.desired.subscribe()
    }

    /// Replaces the desired list; the agent hears of it only when it changed. Its replicas are
    /// the host's to report on from now on.
    pub fn set_desired(&self, containers: Vec<DesiredContainer>) {
        // Under the reports lock, so a report cannot be filtered against the old list while
        // the new one is being set.
        let mut reports = self.reports.lock().expect("BUG: reports lock poisoned");
        reports.assigned.extend(containers.iter().map(|c| c.replica_id.clone()));
        self.desired.send_if_modified(|current| {
            if current.as_ref() == Some(&containers) {
                false
            } else {
                *current = Some(containers);
                true
            }
        });
        // A report that came before the list now counts.
        self.publish(&mut reports);
    }

    /// Whether a container of `image` is desired on this host (an image is shipped only then).
    pub fn desires_image(&self, image: &str) -> bool {
        self.desired.borrow().as_ref().is_some_and(|list| list.iter().any(|c| c.image == image))
    }

    /// An agent report: also a heartbeat. Only the host's own replicas count (see [`Reports`]).
    pub fn report(&self, observed: Observed) {
        self.touch();
        self.reported.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut reports = self.reports.lock().expect("BUG: reports lock poisoned");
        reports.last = observed;
        self.publish(&mut reports);
    }

    /// Publishes the last report filtered to the host's replicas.
    fn publish(&self, reports: &mut Reports) {
        let desired: HashSet<String> = self.desired.borrow().iter().flatten().map(|c| c.replica_id.clone()).collect();
        let Reports { last, assigned, foreign } = reports;
        assigned.retain(|id| desired.contains(id) || last.contains_key(id));
        let kept: Observed =
            last.iter().filter(|(id, _)| assigned.contains(*id)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let dropped: Vec<String> = last.keys().filter(|id| !assigned.contains(*id)).cloned().collect();
        if !dropped.is_empty() && dropped != *foreign {
            tracing::warn!(host = self.name, replicas = ?dropped, "ignoring the host's report on replicas not placed on it");
        }
        *foreign = dropped;
        self.observed.send_if_modified(|current| {
            if *current == kept {
                false
            } else {
                *current = kept;
                true
            }
        });
    }

    /// False until the agent's first report to this control plane.
    /// Withdraws the desired list: the in-process agent stops acting on its containers (they keep
    /// running) until a control plane sends it a list again, which it adopts.
    pub fn stand_down(&self) {
        self.desired.send_replace(None);
    }

    /// The server's own host, whose agent runs in process.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    pub fn has_reported(&self) -> bool {
        self.reported.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn touch(&self) {
        *self.last_report.lock().expect("BUG: heartbeat lock poisoned") = Instant::now();
    }

    pub fn silent_for(&self) -> Duration {
        self.last_report.lock().expect("BUG: heartbeat lock poisoned").elapsed()
    }

    /// Drops everything the host reported, as when it is declared down.
    pub fn forget_observed(&self) {
        let mut reports = self.reports.lock().expect("BUG: reports lock poisoned");
        reports.last.clear();
        self.observed.send_replace(Observed::new());
    }

    /// Ends the agent's connection for good (the host was removed).
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.forget_observed();
    }

    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// A new connection of the agent: commands go to it from now on.
    pub fn open_commands(&self) -> mpsc::UnboundedReceiver<ControlMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.commands.lock().expect("BUG: command channel lock poisoned") = Some(tx);
        rx
    }

    /// Sends a command to the connected agent; false when none is connected.
    pub fn send_command(&self, command: ControlMessage) -> bool {
        let commands = self.commands.lock().expect("BUG: command channel lock poisoned");
        commands.as_ref().is_some_and(|tx| tx.send(command).is_ok())
    }

    pub fn observed(&self) -> watch::Receiver<Observed> {
        self.observed.subscribe()
    }
}
