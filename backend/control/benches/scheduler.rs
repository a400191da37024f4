//! Scheduler benchmark: placement time for 10 000 replicas over 1 000 simulated hosts and for
//! 100 000 over 10 000, placed app by app as releases arrive, with the quality of the result
//! (spread, fit); then what one release costs the orchestrator, which indexes the fleet afresh
//! from the store's placements for each release.
//! Run with `cargo bench -p berth-control --bench scheduler`.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use berth_control::scheduler::{self, Fleet, HostSlot, Request};
use berth_store::Placement;

fn main() {
    for (hosts, apps, per_app) in [(100, 100, 10), (1_000, 1_000, 10), (10_000, 10_000, 10)] {
        let slots = fleet(hosts);
        let started = Instant::now();
        let placements = simulate(&slots, apps, per_app);
        let elapsed = started.elapsed();
        let placed = placements.len();
        let mut per_app_host: HashMap<(i64, &str), usize> = HashMap::new();
        for p in &placements {
            *per_app_host.entry((p.app_id, p.host.as_str())).or_default() += 1;
        }
        let used = placements.iter().map(|p| p.host.as_str()).collect::<std::collections::HashSet<_>>().len();
        println!(
            "{:>7} replicas over {:>6} hosts: {:>8.1} ms ({:.2} µs per replica), {placed} placed, {} unplaced, \
             at most {} replica(s) of one app per host, {used} hosts used",
            apps * per_app,
            hosts,
            elapsed.as_secs_f64() * 1000.0,
            elapsed.as_secs_f64() * 1e6 / (apps * per_app) as f64,
            apps * per_app - placed,
            per_app_host.values().copied().max().unwrap_or(0),
        );
        // One more release as the orchestrator places it: index the fleet, place 10 replicas.
        let started = Instant::now();
        let plan = scheduler::place(&slots, &placements, &request(apps), per_app);
        println!(
            "{:>7} one release of {per_app} with {placed} placed: {:.2} ms (indexing included), {} placed",
            "",
            started.elapsed().as_secs_f64() * 1000.0,
            plan.hosts.len()
        );
    }
}

/// `hosts` hosts of 16 cores and 64 GiB in three zones; every 50th is down or draining.
fn fleet(hosts: usize) -> Vec<HostSlot> {
    (0..hosts)
        .map(|i| HostSlot {
            name: format!("host-{i:05}"),
            labels: BTreeMap::from([("zone".to_string(), format!("z{}", i % 3))]),
            cpu_millis: 16_000,
            memory_mb: 65_536,
            schedulable: !i.is_multiple_of(50),
        })
        .collect()
}

/// App `app`'s replica: 100-999m, 128-1023 MiB; every tenth app wants zone z1.
fn request(app: usize) -> Request {
    Request {
        app_id: app as i64,
        cpu_millis: 100 + (app as u64 * 37) % 900,
        memory_mb: 128 + (app as u64 * 53) % 896,
        constraints: if app.is_multiple_of(10) {
            BTreeMap::from([("zone".into(), "z1".into())])
        } else {
            BTreeMap::new()
        },
    }
}

/// Places `apps` apps of `per_app` replicas one app at a time on one indexed fleet.
fn simulate(slots: &[HostSlot], apps: usize, per_app: usize) -> Vec<Placement> {
    let mut fleet = Fleet::new(slots, &[]);
    let mut placements: Vec<Placement> = Vec::with_capacity(apps * per_app);
    for app in 0..apps {
        let request = request(app);
        let plan = fleet.place(&request, per_app);
        placements.extend(plan.hosts.into_iter().map(|host| Placement {
            host,
            app_id: request.app_id,
            cpu_millis: request.cpu_millis,
            memory_mb: request.memory_mb,
        }));
    }
    placements
}
