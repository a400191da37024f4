//! The control plane's end of each host agent: a `HostLink` carries the desired containers to the
//! agent and the agent's reports back, whatever the transport (an in-process channel for the local
//! agent, a WebSocket for `berth agent`). `HostLinks` is the registry of every host's link, the
//! union of their reports, and the relay that carries agents' uploads.

use std::collections::HashMap;
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

    pub fn desired_receiver(&self) -> DesiredReceiver {
        self.desired.subscribe()
    }

    /// Replaces the desired list; the agent hears of it only when it changed.
    pub fn set_desired(&self, containers: Vec<DesiredContainer>) {
        self.desired.send_if_modified(|current| {
            if current.as_ref() == Some(&containers) {
                false
            } else {
                *current = Some(containers);
                true
            }
        });
    }

    /// An agent report: also a heartbeat.
    pub fn report(&self, observed: Observed) {
        self.touch();
        self.reported.store(true, std::sync::atomic::Ordering::Relaxed);
        self.observed.send_if_modified(|current| {
            if *current == observed {
                false
            } else {
                *current = observed;
                true
            }
        });
    }

    /// False until the agent's first report to this control plane.
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
