//! Placement: which host each new replica goes to. A pure function of the hosts, the current
//! placement and the request, so it is tested (and benchmarked) without Docker.
//!
//! Policy, in order: only schedulable hosts whose labels satisfy the app's constraints and whose
//! free CPU and memory fit the request; among them the host with the fewest replicas of this app
//! (spread), then the tightest fit (bin-packing), then the fewest replicas overall, then by name.

use std::collections::{BTreeMap, HashMap};

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

struct Load {
    cpu: u64,
    memory: u64,
    of_app: usize,
    total: usize,
}

pub fn place(hosts: &[HostSlot], placed: &[Placement], request: &Request, count: usize) -> Plan {
    let index: HashMap<&str, usize> = hosts.iter().enumerate().map(|(i, h)| (h.name.as_str(), i)).collect();
    let mut load: Vec<Load> = hosts.iter().map(|_| Load { cpu: 0, memory: 0, of_app: 0, total: 0 }).collect();
    for p in placed {
        if let Some(&i) = index.get(p.host.as_str()) {
            let l = &mut load[i];
            l.cpu += p.cpu_millis;
            l.memory += p.memory_mb;
            l.total += 1;
            if p.app_id == request.app_id {
                l.of_app += 1;
            }
        }
    }
    let eligible: Vec<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].schedulable && request.constraints.iter().all(|(k, v)| hosts[i].labels.get(k) == Some(v)))
        .collect();
    let fits = |i: usize, load: &[Load]| {
        let h = &hosts[i];
        (h.cpu_millis == 0 || load[i].cpu + request.cpu_millis <= h.cpu_millis)
            && (h.memory_mb == 0 || load[i].memory + request.memory_mb <= h.memory_mb)
    };
    let mut chosen = Vec::with_capacity(count);
    for _ in 0..count {
        let best = eligible.iter().copied().filter(|&i| fits(i, &load)).min_by_key(|&i| {
            let h = &hosts[i];
            let l = &load[i];
            // Free fraction left after placing, in thousandths, summed over both resources:
            // smaller means a tighter fit.
            let free = |cap: u64, used: u64| (cap.saturating_sub(used) * 1000).checked_div(cap).unwrap_or(1000);
            let slack =
                free(h.cpu_millis, l.cpu + request.cpu_millis) + free(h.memory_mb, l.memory + request.memory_mb);
            (l.of_app, slack, l.total, h.name.as_str())
        });
        let Some(i) = best else {
            return Plan { hosts: chosen, unplaced: Some(explain(hosts, &load, request)) };
        };
        let l = &mut load[i];
        l.cpu += request.cpu_millis;
        l.memory += request.memory_mb;
        l.of_app += 1;
        l.total += 1;
        chosen.push(hosts[i].name.clone());
    }
    Plan { hosts: chosen, unplaced: None }
}

/// Says, host by host, why nothing fits.
fn explain(hosts: &[HostSlot], load: &[Load], request: &Request) -> String {
    if hosts.is_empty() {
        return "no host is registered".into();
    }
    let (mut unavailable, mut constrained, mut cpu, mut memory) = (0, 0, 0, 0);
    for (h, l) in hosts.iter().zip(load) {
        if !h.schedulable {
            unavailable += 1;
        } else if !request.constraints.iter().all(|(k, v)| h.labels.get(k) == Some(v)) {
            constrained += 1;
        } else if h.cpu_millis != 0 && l.cpu + request.cpu_millis > h.cpu_millis {
            cpu += 1;
        } else if h.memory_mb != 0 && l.memory + request.memory_mb > h.memory_mb {
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

    #[test]
    fn places_what_fits_and_reports_the_rest() {
        let plan = place(&[host("a", 1000, 0)], &[], &request(1, 600), 2);
        assert_eq!(plan.hosts, ["a"]);
        assert!(plan.unplaced.is_some());
        assert_eq!(place(&[], &[], &request(1, 0), 1).unplaced.as_deref(), Some("no host is registered"));
    }
}
