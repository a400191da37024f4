//! Placement: which host each new replica goes to. A pure function of the hosts, the current
//! placement and the request, so it is tested (and benchmarked) without Docker.
//!
//! Policy, in order: only schedulable hosts whose labels satisfy the app's constraints and whose
//! free CPU and memory fit the request; among them the host with the fewest replicas of this app
//! (spread), then the tightest fit (bin-packing: the least free CPU and memory left after placing,
//! as fractions of the host's, summed), then the fewest replicas overall, then by name.
//!
//! [`Fleet`] finds that host without looking at every host: hosts are grouped by capacity, and
//! within a group kept in cells by their levels of free CPU and free memory (see [`Group`]), so
//! a placement visits the few cells that can hold the tightest fit instead of every host. Only the
//! hosts already running the app (a few) are scanned. 100 000 replicas over 10 000 hosts place in
//! well under a second (`cargo bench -p berth-control --bench scheduler`), and the choice is
//! exactly the one an exhaustive scan makes (a property test checks).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use berth_store::Placement;

/// A host as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct HostSlot {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Zero means "not reported": the host is treated as unbounded in that resource.
    pub cpu_millis: u64,
    pub memory_mb: u64,
    /// False for hosts that are down or draining.
    pub schedulable: bool,
}

/// What one replica of an app needs.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub app_id: i64,
    pub cpu_millis: u64,
    pub memory_mb: u64,
    pub constraints: BTreeMap<String, String>,
}

/// The outcome: hosts for the replicas that fit, and why the others did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub hosts: Vec<String>,
    pub unplaced: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Load {
    cpu: u64,
    memory: u64,
    total: usize,
}

/// Places `count` replicas of `request` given what is `placed` already.
pub fn place(hosts: &[HostSlot], placed: &[Placement], request: &Request, count: usize) -> Plan {
    Fleet::new(hosts, placed).place(request, count)
}

/// The hosts with what runs on them, indexed for placement. [`Fleet::place`] records what it
/// places, so a caller placing many apps in turn (the benchmark, a future batch) builds it once.
pub struct Fleet<'h> {
    hosts: &'h [HostSlot],
    load: Vec<Load>,
    /// Replicas per host of each app: app → host index → count (only hosts with some).
    of_app: HashMap<i64, HashMap<usize, usize>>,
    /// Each host's position in name order (the last tie-break).
    rank: Vec<usize>,
    /// Schedulable hosts grouped by capacity, each group in cells by free CPU and memory.
    groups: Vec<Group>,
    /// The group of each host (`None`: not schedulable).
    group_of: Vec<Option<usize>>,
}

/// A host's entry in its cell: (room, replicas, name rank, index), the order of preference.
type Entry = (u64, usize, usize, usize);

/// The most CPU (millicores) or memory (MiB) of one host the scheduler counts: 2 million cores,
/// 2 PiB; agents' claims are bounded far below (4 096 cores, 64 TiB).
const MAX_CAPACITY: u64 = 1 << 31;

/// Free CPU and free memory are each cut into this many levels (of the host's capacity).
const LEVELS: u64 = 256;

/// Schedulable hosts of one capacity, in cells by their levels of free CPU and free memory, keyed
/// by (the levels' sum, the CPU level): hosts in a cell whose levels are both above a request's
/// fit it, cells below it in either resource cannot, and a cell's level sum bounds the room of its
/// hosts from below, so cells are visited in that order until none can beat the best found.
/// Within a cell, hosts are ordered by preference. (One ordering by room alone would not do:
/// a host out of CPU with most of its memory free has plenty of room and fits nothing.)
struct Group {
    capacity: Capacity,
    cells: BTreeMap<(u64, u64), BTreeSet<Entry>>,
}

impl Group {
    /// The levels of free resources `free` (numerators of the capacity's denominators).
    fn levels(&self, free: (u64, u64)) -> (u64, u64) {
        let (cpu, memory) = self.capacity.denominators();
        let level = |free: u64, of: u64| {
            (u128::from(free) * u128::from(LEVELS) / u128::from(of)).min(u128::from(LEVELS - 1)) as u64
        };
        (level(free.0, cpu), level(free.1, memory))
    }

    fn cell_of(&self, free: (u64, u64)) -> (u64, u64) {
        let (cpu, memory) = self.levels(free);
        (cpu + memory, cpu)
    }

    fn insert(&mut self, free: (u64, u64), entry: Entry) {
        let cell = self.cell_of(free);
        self.cells.entry(cell).or_default().insert(entry);
    }

    fn remove(&mut self, free: (u64, u64), entry: &Entry) {
        let cell = self.cell_of(free);
        if let Some(hosts) = self.cells.get_mut(&cell) {
            hosts.remove(entry);
            if hosts.is_empty() {
                self.cells.remove(&cell);
            }
        }
    }

    /// The least room a host of a cell whose levels sum to `sum` can have.
    fn room_at_least(&self, sum: u64) -> u64 {
        let (cpu, memory) = self.capacity.denominators();
        // Level l holds free amounts of at least l × capacity / LEVELS; the room is the free
        // fractions summed, scaled by the product of the capacities.
        (u128::from(sum) * u128::from(cpu) * u128::from(memory) / u128::from(LEVELS)) as u64
    }

    /// The most preferred host of the group that fits `request` and that `candidate` takes
    /// (whether it fits is checked there: on a boundary level not every host does).
    fn best(&self, request: &Request, candidate: impl Fn(usize) -> bool) -> Option<Entry> {
        let taken = self.capacity.taken(request);
        let least = self.capacity.room(taken);
        let (cpu_min, memory_min) = self.levels(taken);
        let mut best: Option<Entry> = None;
        for (&(sum, cpu_level), hosts) in self.cells.range((cpu_min + memory_min, 0)..) {
            if best.is_some_and(|b| self.room_at_least(sum) > b.0) {
                break;
            }
            let memory_level = sum - cpu_level;
            if cpu_level < cpu_min || memory_level < memory_min {
                continue;
            }
            // On a boundary level, hosts may lack what the request takes: checked one by one.
            let found = hosts.range((least, 0, 0, 0)..).find(|&&(.., i)| candidate(i));
            if let Some(&entry) = found
                && best.is_none_or(|b| entry < b)
            {
                best = Some(entry);
            }
        }
        best
    }
}

/// A host's CPU and memory as the denominators of its free fractions: an unreported (zero)
/// resource counts as one unit, always entirely free. Capacities are taken up to
/// [`MAX_CAPACITY`], so the products below stay within `u64` (and their cross products within
/// `u128`) whatever a host claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Capacity {
    cpu: u64,
    memory: u64,
}

impl Capacity {
    fn of(host: &HostSlot) -> Capacity {
        Capacity { cpu: host.cpu_millis.min(MAX_CAPACITY), memory: host.memory_mb.min(MAX_CAPACITY) }
    }

    /// Free CPU and memory as numerators over `denominators()`.
    fn free(self, load: &Load) -> (u64, u64) {
        let free = |cap: u64, used: u64| if cap == 0 { 1 } else { cap.saturating_sub(used) };
        (free(self.cpu, load.cpu), free(self.memory, load.memory))
    }

    fn denominators(self) -> (u64, u64) {
        (self.cpu.max(1), self.memory.max(1))
    }

    /// What a request takes of the free numerators (nothing of an unreported resource).
    fn taken(self, request: &Request) -> (u64, u64) {
        // More than the capacity fits nowhere; the excess need not be counted.
        let take = |cap: u64, asked: u64| if cap == 0 { 0 } else { asked.min(cap + 1) };
        (take(self.cpu, request.cpu_millis), take(self.memory, request.memory_mb))
    }

    /// The room of a host: its free fractions summed, scaled by the product of its denominators
    /// (the same for every host of a group, so it orders a group exactly).
    fn room(self, free: (u64, u64)) -> u64 {
        let (cpu, memory) = self.denominators();
        free.0 * memory + free.1 * cpu
    }

    fn fits(self, load: &Load, request: &Request) -> bool {
        (self.cpu == 0 || load.cpu.saturating_add(request.cpu_millis) <= self.cpu)
            && (self.memory == 0 || load.memory.saturating_add(request.memory_mb) <= self.memory)
    }
}

/// How good a host is for a replica; smaller is better. `slack` is the room left after placing,
/// over `scale`, so hosts of different capacity compare as fractions.
#[derive(Debug, Clone, Copy)]
struct Score {
    of_app: usize,
    slack: u64,
    scale: u64,
    total: usize,
    rank: usize,
}

impl Score {
    fn cmp(&self, other: &Score) -> Ordering {
        let slack = |a: &Score, b: &Score| u128::from(a.slack) * u128::from(b.scale);
        self.of_app
            .cmp(&other.of_app)
            .then_with(|| slack(self, other).cmp(&slack(other, self)))
            .then(self.total.cmp(&other.total))
            .then(self.rank.cmp(&other.rank))
    }
}

impl<'h> Fleet<'h> {
    pub fn new(hosts: &'h [HostSlot], placed: &[Placement]) -> Fleet<'h> {
        let index: HashMap<&str, usize> = hosts.iter().enumerate().map(|(i, h)| (h.name.as_str(), i)).collect();
        let mut load = vec![Load::default(); hosts.len()];
        let mut of_app: HashMap<i64, HashMap<usize, usize>> = HashMap::new();
        for p in placed {
            if let Some(&i) = index.get(p.host.as_str()) {
                let l = &mut load[i];
                l.cpu = l.cpu.saturating_add(p.cpu_millis);
                l.memory = l.memory.saturating_add(p.memory_mb);
                l.total += 1;
                *of_app.entry(p.app_id).or_default().entry(i).or_default() += 1;
            }
        }
        let mut by_name: Vec<usize> = (0..hosts.len()).collect();
        by_name.sort_by(|&a, &b| hosts[a].name.cmp(&hosts[b].name));
        let mut rank = vec![0; hosts.len()];
        for (position, &i) in by_name.iter().enumerate() {
            rank[i] = position;
        }
        let mut fleet = Fleet { hosts, load, of_app, rank, groups: Vec::new(), group_of: vec![None; hosts.len()] };
        let mut groups: HashMap<Capacity, usize> = HashMap::new();
        for (i, host) in hosts.iter().enumerate().filter(|(_, h)| h.schedulable) {
            let capacity = Capacity::of(host);
            let group = *groups.entry(capacity).or_insert_with(|| {
                fleet.groups.push(Group { capacity, cells: BTreeMap::new() });
                fleet.groups.len() - 1
            });
            fleet.group_of[i] = Some(group);
            let (free, key) = (capacity.free(&fleet.load[i]), fleet.key(i, capacity));
            fleet.groups[group].insert(free, key);
        }
        fleet
    }

    fn key(&self, i: usize, capacity: Capacity) -> Entry {
        let load = &self.load[i];
        (capacity.room(capacity.free(load)), load.total, self.rank[i], i)
    }

    fn eligible(&self, i: usize, request: &Request) -> bool {
        let host = &self.hosts[i];
        host.schedulable
            && request.constraints.iter().all(|(k, v)| host.labels.get(k) == Some(v))
            && Capacity::of(host).fits(&self.load[i], request)
    }

    fn score(&self, i: usize, of_app: usize, request: &Request) -> Score {
        let capacity = Capacity::of(&self.hosts[i]);
        let (free, taken) = (capacity.free(&self.load[i]), capacity.taken(request));
        let (cpu, memory) = capacity.denominators();
        Score {
            of_app,
            slack: capacity.room((free.0 - taken.0, free.1 - taken.1)),
            scale: cpu * memory,
            total: self.load[i].total,
            rank: self.rank[i],
        }
    }

    /// The best host for one replica of `request`, if any fits.
    fn best(&self, request: &Request) -> Option<usize> {
        let running = self.of_app.get(&request.app_id);
        let mut best: Option<(Score, usize)> = None;
        let mut consider = |score: Score, i: usize| {
            if best.is_none_or(|(b, _)| score.cmp(&b) == Ordering::Less) {
                best = Some((score, i));
            }
        };
        // The hosts that run the app already: few, scanned.
        for (&i, &count) in running.into_iter().flatten() {
            if count > 0 && self.eligible(i, request) {
                consider(self.score(i, count, request), i);
            }
        }
        // Hosts without it: in each group, the one with the least room that still fits.
        for group in &self.groups {
            let candidate =
                |i: usize| running.and_then(|r| r.get(&i)).is_none_or(|&count| count == 0) && self.eligible(i, request);
            if let Some((.., i)) = group.best(request, candidate) {
                consider(self.score(i, 0, request), i);
            }
        }
        best.map(|(_, i)| i)
    }

    /// Places `count` replicas of `request`, recording them: hosts for those that fit, and why
    /// the first that did not, did not.
    pub fn place(&mut self, request: &Request, count: usize) -> Plan {
        let mut chosen = Vec::with_capacity(count);
        for _ in 0..count {
            let Some(i) = self.best(request) else {
                return Plan { hosts: chosen, unplaced: Some(explain(self.hosts, &self.load, request)) };
            };
            self.record(i, request);
            chosen.push(self.hosts[i].name.clone());
        }
        Plan { hosts: chosen, unplaced: None }
    }

    /// A replica of `request` placed on host `i`: its load, its place in its group's order.
    fn record(&mut self, i: usize, request: &Request) {
        let group = self.group_of[i].expect("BUG: only schedulable hosts are chosen");
        let capacity = self.groups[group].capacity;
        let (free, old) = (capacity.free(&self.load[i]), self.key(i, capacity));
        self.groups[group].remove(free, &old);
        let load = &mut self.load[i];
        load.cpu = load.cpu.saturating_add(request.cpu_millis);
        load.memory = load.memory.saturating_add(request.memory_mb);
        load.total += 1;
        let (free, new) = (capacity.free(&self.load[i]), self.key(i, capacity));
        self.groups[group].insert(free, new);
        *self.of_app.entry(request.app_id).or_default().entry(i).or_default() += 1;
    }
}

/// Says, host by host, why nothing fits.
fn explain(hosts: &[HostSlot], load: &[Load], request: &Request) -> String {
    if hosts.is_empty() {
        return "no host is registered".into();
    }
    let (mut unavailable, mut constrained, mut cpu, mut memory) = (0, 0, 0, 0);
    for (h, l) in hosts.iter().zip(load) {
        let capacity = Capacity::of(h);
        let short = |cap: u64, used: u64, asked: u64| cap != 0 && used.saturating_add(asked) > cap;
        if !h.schedulable {
            unavailable += 1;
        } else if !request.constraints.iter().all(|(k, v)| h.labels.get(k) == Some(v)) {
            constrained += 1;
        } else if short(capacity.cpu, l.cpu, request.cpu_millis) {
            cpu += 1;
        } else if short(capacity.memory, l.memory, request.memory_mb) {
            memory += 1;
        }
    }
    let mut reasons = Vec::new();
    if unavailable > 0 {
        reasons.push(format!("{unavailable} down or draining"));
    }
    if constrained > 0 {
        let wanted: Vec<String> = request.constraints.iter().map(|(k, v)| format!("{k}={v}")).collect();
        reasons.push(format!("{constrained} without {}", wanted.join(",")));
    }
    if cpu > 0 {
        reasons.push(format!("{cpu} short of CPU (needs {}m free)", request.cpu_millis));
    }
    if memory > 0 {
        reasons.push(format!("{memory} short of memory (needs {} MiB free)", request.memory_mb));
    }
    format!("no host can take the replica: {} of {} host(s)", reasons.join(", "), hosts.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, cpu: u64, memory: u64) -> HostSlot {
        HostSlot { name: name.into(), labels: BTreeMap::new(), cpu_millis: cpu, memory_mb: memory, schedulable: true }
    }

    fn placed(host: &str, app_id: i64, cpu: u64) -> Placement {
        Placement { host: host.into(), app_id, cpu_millis: cpu, memory_mb: 0 }
    }

    fn request(app_id: i64, cpu: u64) -> Request {
        Request { app_id, cpu_millis: cpu, ..Request::default() }
    }

    #[test]
    fn replicas_of_one_app_spread_across_hosts() {
        let hosts = [host("a", 0, 0), host("b", 0, 0), host("c", 0, 0)];
        // App 1 already has a replica on a; app 2 has one on a and one on b.
        let existing = [placed("a", 1, 0), placed("a", 2, 0), placed("b", 2, 0)];
        let plan = place(&hosts, &existing, &request(1, 0), 3);
        assert_eq!(plan.unplaced, None);
        // c has nothing at all, so it goes first; then b (no replica of app 1, one overall).
        assert_eq!(plan.hosts[..2], ["c", "b"]);
        let count = |h: &str| plan.hosts.iter().filter(|c| *c == h).count() + usize::from(h == "a");
        assert_eq!((count("a"), count("b"), count("c")), (1, 1, 2));
    }

    #[test]
    fn bin_packs_other_apps_onto_the_fullest_host_that_fits() {
        let hosts = [host("a", 4000, 0), host("b", 4000, 0)];
        let existing = [placed("a", 1, 3000)];
        // App 2's replica fits on both; a is the tighter fit.
        assert_eq!(place(&hosts, &existing, &request(2, 1000), 1).hosts, ["a"]);
        // 1500m does not fit on a any more.
        assert_eq!(place(&hosts, &existing, &request(2, 1500), 1).hosts, ["b"]);
    }

    #[test]
    fn says_why_nothing_fits() {
        let mut down = host("down", 4000, 0);
        down.schedulable = false;
        let mut eu = host("eu", 1000, 0);
        eu.labels.insert("region".into(), "eu".into());
        let us = host("us", 8000, 0);
        let mut wanted = request(1, 2000);
        wanted.constraints.insert("region".into(), "eu".into());
        let plan = place(&[down, eu, us], &[], &wanted, 2);
        assert!(plan.hosts.is_empty());
        let why = plan.unplaced.unwrap();
        assert!(why.contains("1 down or draining"), "{why}");
        assert!(why.contains("1 without region=eu"), "{why}");
        assert!(why.contains("1 short of CPU (needs 2000m free)"), "{why}");
    }

    /// The policy as an exhaustive scan over every host: what the index must agree with.
    fn place_by_scan(fleet: &mut Fleet<'_>, request: &Request, count: usize) -> Vec<String> {
        let mut chosen = Vec::new();
        for _ in 0..count {
            let of_app = |i: usize| fleet.of_app.get(&request.app_id).and_then(|r| r.get(&i)).copied().unwrap_or(0);
            let best = (0..fleet.hosts.len())
                .filter(|&i| fleet.eligible(i, request))
                .min_by(|&a, &b| fleet.score(a, of_app(a), request).cmp(&fleet.score(b, of_app(b), request)));
            let Some(i) = best else { break };
            fleet.record(i, request);
            chosen.push(fleet.hosts[i].name.clone());
        }
        chosen
    }

    proptest::proptest! {
        /// Hosts of mixed sizes (some unreported), labels, down hosts, and apps placed in turn:
        /// the index picks exactly the host an exhaustive scan picks, replica after replica.
        #[test]
        fn the_index_chooses_what_a_scan_of_every_host_chooses(
            sizes in proptest::collection::vec((0usize..4, 0usize..3, proptest::bool::weighted(0.9)), 1..40),
            // Requests in coarse steps, so hosts fill up exactly and ties happen.
            apps in proptest::collection::vec((0i64..6, 0u64..7, 0u64..6, 0usize..4, 0usize..4), 1..30),
        ) {
            let cpus = [0, 2000, 4000, 16_000];
            let memories = [0, 4096, 65_536];
            let hosts: Vec<HostSlot> = sizes
                .iter()
                .enumerate()
                .map(|(i, &(cpu, memory, up))| HostSlot {
                    name: format!("h{:02}", (i * 7) % 41),
                    labels: BTreeMap::from([("zone".to_string(), format!("z{}", i % 3))]),
                    cpu_millis: cpus[cpu],
                    memory_mb: memories[memory],
                    schedulable: up,
                })
                .collect();
            let mut indexed = Fleet::new(&hosts, &[]);
            let mut scanned = Fleet::new(&hosts, &[]);
            for (app_id, cpu_steps, memory_steps, count, zone) in apps {
                let (cpu_millis, memory_mb) = (cpu_steps * 500, memory_steps * 1024);
                let constraints = match zone {
                    3 => BTreeMap::new(),
                    zone => BTreeMap::from([("zone".to_string(), format!("z{zone}"))]),
                };
                let request = Request { app_id, cpu_millis, memory_mb, constraints };
                let by_index = indexed.place(&request, count);
                let by_scan = place_by_scan(&mut scanned, &request, count);
                proptest::prop_assert_eq!(&by_index.hosts, &by_scan);
                proptest::prop_assert_eq!(by_index.unplaced.is_some(), by_scan.len() < count);
            }
        }
    }

    #[test]
    fn hosts_of_different_sizes_compare_by_the_fraction_left() {
        // 1000m on a 2-core host with 1000m used leaves it full (0 %); on a 16-core host with
        // 8000m used it leaves 7/16: the small host is the tighter fit though both are half full.
        let hosts = [host("big", 16_000, 0), host("small", 2000, 0)];
        let existing = [placed("big", 1, 8000), placed("small", 1, 1000)];
        assert_eq!(place(&hosts, &existing, &request(2, 1000), 1).hosts, ["small"]);
    }

    #[test]
    fn absurd_capacities_and_requests_neither_overflow_nor_fit_wrongly() {
        let hosts = [host("huge", u64::MAX, u64::MAX), host("small", 1000, 1024)];
        let existing = [Placement { host: "huge".into(), app_id: 9, cpu_millis: u64::MAX, memory_mb: 1 }];
        let plan =
            place(&hosts, &existing, &Request { app_id: 1, cpu_millis: 500, memory_mb: 512, ..Request::default() }, 1);
        assert_eq!(plan.hosts, ["small"], "the huge host is full");
        let plan =
            place(&hosts, &[], &Request { app_id: 1, cpu_millis: 0, memory_mb: u64::MAX, ..Request::default() }, 1);
        assert_eq!(plan.hosts, Vec::<String>::new());
        assert!(plan.unplaced.unwrap().contains("2 short of memory"));
    }

    #[test]
    fn places_what_fits_and_reports_the_rest() {
        let plan = place(&[host("a", 1000, 0)], &[], &request(1, 600), 2);
        assert_eq!(plan.hosts, ["a"]);
        assert!(plan.unplaced.is_some());
        assert_eq!(place(&[], &[], &request(1, 0), 1).unplaced.as_deref(), Some("no host is registered"));
    }
}
