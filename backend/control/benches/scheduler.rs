//! Scheduler benchmark: placement time for 10 000 replicas over 1 000 simulated hosts.
//! Run with `cargo bench -p berth-control --bench scheduler`.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use berth_control::scheduler::{self, HostSlot, Request};
use berth_store::Placement;

fn main() {
    for (hosts, apps, per_app) in [(100, 100, 10), (1_000, 1_000, 10)] {
        let (elapsed, placed, unplaced, worst_spread, used) = simulate(hosts, apps, per_app);
        println!(
            "{:>6} replicas over {:>5} hosts: {:>8.1} ms ({:.2} µs per replica), {placed} placed, {unplaced} unplaced, \
             at most {worst_spread} replica(s) of one app per host, {used} hosts used",
            apps * per_app,
            hosts,
            elapsed.as_secs_f64() * 1000.0,
            elapsed.as_secs_f64() * 1e6 / (apps * per_app) as f64,
        );
    }
}

/// Places `apps` apps of `per_app` replicas one app at a time, as releases arrive.
fn simulate(hosts: usize, apps: usize, per_app: usize) -> (std::time::Duration, usize, usize, usize, usize) {
    let slots: Vec<HostSlot> = (0..hosts)
        .map(|i| HostSlot {
            name: format!("host-{i:04}"),
            labels: BTreeMap::from([("zone".to_string(), format!("z{}", i % 3))]),
            cpu_millis: 16_000,
            memory_mb: 65_536,
            schedulable: i % 50 != 0, // every 50th host is down or draining
        })
        .collect();
    let mut placements: Vec<Placement> = Vec::with_capacity(apps * per_app);
    let mut unplaced = 0;
    let started = Instant::now();
    for app in 0..apps {
        let request = Request {
            app_id: app as i64,
            cpu_millis: 100 + (app as u64 * 37) % 900,
            memory_mb: 128 + (app as u64 * 53) % 896,
            constraints: if app % 10 == 0 { BTreeMap::from([("zone".into(), "z1".into())]) } else { BTreeMap::new() },
        };
        let plan = scheduler::place(&slots, &placements, &request, per_app);
        unplaced += per_app - plan.hosts.len();
        placements.extend(plan.hosts.into_iter().map(|host| Placement {
            host,
            app_id: request.app_id,
            cpu_millis: request.cpu_millis,
            memory_mb: request.memory_mb,
        }));
    }
    let elapsed = started.elapsed();
    let mut per_app_host: HashMap<(i64, &str), usize> = HashMap::new();
    for p in &placements {
        *per_app_host.entry((p.app_id, p.host.as_str())).or_default() += 1;
    }
    let used = placements.iter().map(|p| p.host.as_str()).collect::<std::collections::HashSet<_>>().len();
    (elapsed, placements.len(), unplaced, per_app_host.values().copied().max().unwrap_or(0), used)
}
