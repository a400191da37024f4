//! An ingress that follows route tables published elsewhere, each under a version: it applies
//! them in the order it gets them, drains the endpoints each one removed, and tells the highest
//! version up to which everything is applied *and drained*, the figure a release waits for
//! before it stops the old containers.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Ingress, RouteSpec};

/// Applies versioned tables to one ingress; see the module's documentation.
pub struct Follower {
    ingress: Arc<Ingress>,
    state: Mutex<State>,
    /// The version up to which every applied table is drained, set under `state`'s lock.
    acknowledged: tokio::sync::watch::Sender<i64>,
}

#[derive(Default)]
struct State {
    /// The table the ingress has, as far as this follower knows.
    applied: Vec<RouteSpec>,
    /// Versions applied whose drains have not finished, each with the version applied before it
    /// (versions in between were never applied: only what follows one draining is drained).
    draining: BTreeMap<i64, i64>,
    /// The version applied last, and the highest of this numbering.
    last: i64,
    highest: i64,
    /// Bumped when the numbering starts again: drains of an earlier one count for nothing.
    generation: u64,
}

impl Follower {
    pub fn new(ingress: Arc<Ingress>) -> Follower {
        Follower { ingress, state: Mutex::new(State::default()), acknowledged: tokio::sync::watch::channel(0).0 }
    }

    /// The ingress was given `routes` by someone else (a leader that stepped down hands over
    /// what its orchestrator applied): the next table drains what it removes from these.
    pub fn handed_over(&self, routes: Vec<RouteSpec>) {
        self.state.lock().expect("BUG: follower state poisoned").applied = routes;
    }

    /// Applies `routes`, published as `version`, to the ingress and returns the drain of the
    /// endpoints it removed. The drain yields the version up to which every table applied is
    /// drained (never lower than an earlier drain's, whatever order they finish in); dropping it
    /// before it ends leaves `version` undrained for good.
    ///
    /// A version lower than one applied before means the versions started again (the store was
    /// moved or restored): what was applied under the old numbering no longer counts, and the
    /// acknowledged version drops below `version` until its drain ends.
    pub async fn apply(self: &Arc<Self>, version: i64, routes: Vec<RouteSpec>, drain_timeout: Duration) -> Drain {
        let removed: Vec<SocketAddr> = {
            let state = self.state.lock().expect("BUG: follower state poisoned");
            let kept: HashSet<SocketAddr> = routes.iter().flat_map(|r| r.endpoints.iter().copied()).collect();
            let removed: BTreeSet<SocketAddr> =
                state.applied.iter().flat_map(|r| r.endpoints.iter().copied()).filter(|e| !kept.contains(e)).collect();
            removed.into_iter().collect()
        };
        self.ingress.apply(routes.clone()).await;
        let generation = {
            let mut state = self.state.lock().expect("BUG: follower state poisoned");
            if version < state.highest {
                state.draining.clear();
                (state.last, state.highest) = (0, 0);
                state.generation += 1;
                self.acknowledged.send_replace(0);
            }
            let before = state.last;
            state.applied = routes;
            state.draining.insert(version, before);
            state.last = version;
            state.highest = state.highest.max(version);
            state.generation
        };
        Drain { follower: self.clone(), version, generation, removed, timeout: drain_timeout }
    }

    /// The version up to which every applied table is drained, as drains end.
    pub fn acknowledged(&self) -> tokio::sync::watch::Receiver<i64> {
        self.acknowledged.subscribe()
    }

    /// The table the ingress was last given through this follower.
    pub fn applied(&self) -> Vec<RouteSpec> {
        self.state.lock().expect("BUG: follower state poisoned").applied.clone()
    }
}

/// The drain that follows one [`Follower::apply`].
#[must_use = "a version is acknowledged only once its drain has run"]
pub struct Drain {
    follower: Arc<Follower>,
    version: i64,
    generation: u64,
    removed: Vec<SocketAddr>,
    timeout: Duration,
}

impl Drain {
    /// Waits for the requests in flight to the removed endpoints (up to the timeout); returns
    /// the version up to which every applied table is drained.
    pub async fn run(self) -> i64 {
        self.follower.ingress.drain(&self.removed, self.timeout).await;
        let mut state = self.follower.state.lock().expect("BUG: follower state poisoned");
        if state.generation != self.generation {
            // Applied under numbering that has started again since.
            return *self.follower.acknowledged.borrow();
        }
        state.draining.remove(&self.version);
        // Done: everything applied before the oldest table still draining.
        let done = state.draining.first_key_value().map_or(state.highest, |(_, before)| *before);
        self.follower.acknowledged.send_replace(done);
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IngressConfig;

    fn table(endpoints: &[&str]) -> Vec<RouteSpec> {
        vec![RouteSpec::new("web.localhost", endpoints.iter().map(|e| e.parse().unwrap()).collect())]
    }

    #[tokio::test]
    async fn drains_finishing_out_of_order_never_acknowledge_a_version_still_draining() {
        let ingress = Ingress::new(IngressConfig::default());
        let follower = Arc::new(Follower::new(ingress.clone()));
        let timeout = Duration::from_secs(1);
        let first = follower.apply(1, table(&["127.0.0.1:1", "127.0.0.1:2"]), timeout).await;
        let second = follower.apply(2, table(&["127.0.0.1:1"]), timeout).await;
        let third = follower.apply(3, table(&["127.0.0.1:1", "127.0.0.1:3"]), timeout).await;
        assert_eq!(ingress.endpoints("web.localhost").unwrap().len(), 2);
        assert_eq!(first.run().await, 1);
        assert_eq!(third.run().await, 1, "version 2 still drains");
        assert_eq!(second.run().await, 3);
        assert_eq!(follower.applied(), table(&["127.0.0.1:1", "127.0.0.1:3"]));

        // Versions skipped (the node gets only the latest): 9 and 11 drain, 10 was never applied;
        // 9 done says 9, not 10 (what 10 removed is in 11's drain).
        let ninth = follower.apply(9, table(&["127.0.0.1:1"]), timeout).await;
        let eleventh = follower.apply(11, table(&["127.0.0.1:1"]), timeout).await;
        assert_eq!(ninth.run().await, 9);
        assert_eq!(eleventh.run().await, 11);
    }

    #[tokio::test]
    async fn versions_that_start_again_are_acknowledged_only_once_drained_and_never_below_later_ones() {
        let ingress = Ingress::new(IngressConfig::default());
        let follower = Arc::new(Follower::new(ingress.clone()));
        let acknowledged = follower.acknowledged();
        let timeout = Duration::from_secs(1);
        let old = follower.apply(500, table(&["127.0.0.1:1"]), timeout).await;
        assert_eq!(old.run().await, 500);
        let stale = follower.apply(3, table(&["127.0.0.1:1"]), timeout).await;
        let stale_too = follower.apply(501, table(&["127.0.0.1:1"]), timeout).await;
        // The store was moved: versions start again at 3, the number an old drain has too.
        let restarted = follower.apply(3, table(&["127.0.0.1:2"]), timeout).await;
        assert_eq!(*acknowledged.borrow(), 0, "not 500, nor 2 (never applied): table 3 is not drained yet");
        assert_eq!(stale.run().await, 0, "a drain of the old numbering acknowledges nothing");
        assert_eq!(stale_too.run().await, 0);
        assert_eq!(restarted.run().await, 3);
        assert_eq!(*acknowledged.borrow(), 3);
        let fourth = follower.apply(4, table(&["127.0.0.1:2"]), timeout).await;
        let fifth = follower.apply(5, table(&["127.0.0.1:2"]), timeout).await;
        assert_eq!(fifth.run().await, 3);
        assert_eq!(fourth.run().await, 5);
        assert_eq!(*acknowledged.borrow(), 5, "the later drain's figure stands");
    }

    #[tokio::test]
    async fn a_table_after_a_hand_over_drains_what_it_removes_from_the_handed_over_one() {
        let ingress = Ingress::new(IngressConfig::default());
        let follower = Arc::new(Follower::new(ingress.clone()));
        follower.handed_over(table(&["127.0.0.1:1", "127.0.0.1:2"]));
        let drain = follower.apply(7, table(&["127.0.0.1:2"]), Duration::from_secs(1)).await;
        assert_eq!(drain.removed, ["127.0.0.1:1".parse::<SocketAddr>().unwrap()]);
        assert_eq!(drain.run().await, 7);
    }
}
