//! Per-host traffic figures: requests per second by status class and a latency histogram, kept
//! for the last [`SECONDS`] seconds in a ring of per-second slots. Recording is a few relaxed
//! atomic additions, no lock; reading builds the series on demand.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds of history kept.
pub const SECONDS: usize = 128;
/// Latency buckets: bucket `i` holds latencies around `2^(i/4)` microseconds (about 19% wide),
/// from 1 µs to over a minute.
const BUCKETS: usize = 108;

struct Slot {
    /// The Unix second this slot holds; a slot from an older second is reset on first use.
    second: AtomicU64,
    classes: [AtomicU64; 5],
    latency: [AtomicU64; BUCKETS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            second: AtomicU64::new(0),
            classes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Upper bounds (seconds) of the latency histogram exported to Prometheus.
const EXPORTED_BOUNDS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Counters since the start, for `/metrics`.
#[derive(Default)]
struct Totals {
    classes: [AtomicU64; 5],
    /// Requests per latency bound (not cumulative; the last one is `+Inf`).
    buckets: [AtomicU64; EXPORTED_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
    in_flight: AtomicI64,
    upstream_errors: AtomicU64,
}

/// The traffic of one host name.
pub struct RouteMetrics {
    slots: Box<[Slot]>,
    totals: Totals,
}

/// One second of a host's traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficSecond {
    /// Unix time of the second's start, in seconds.
    pub at: u64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx (the proxy's own errors included).
    pub classes: [u64; 5],
    /// Latency until the response head, at the median and the 99th percentile (None without traffic).
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl TrafficSecond {
    pub fn requests(&self) -> u64 {
        self.classes.iter().sum()
    }
}

fn unix_second() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn bucket(latency: Duration) -> usize {
    let micros = latency.as_micros().max(1) as f64;
    ((micros.log2() * 4.0) as usize).min(BUCKETS - 1)
}

fn bucket_value(index: usize) -> Duration {
    Duration::from_secs_f64(2f64.powf((index as f64 + 0.5) / 4.0) / 1e6)
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics { slots: (0..SECONDS).map(|_| Slot::new()).collect(), totals: Totals::default() }
    }
}

impl RouteMetrics {
    pub fn record(&self, status: u16, latency: Duration) {
        self.record_at(unix_second(), status, latency);
        let totals = &self.totals;
        totals.classes[class(status)].fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        let bucket = EXPORTED_BOUNDS.iter().position(|&bound| seconds <= bound).unwrap_or(EXPORTED_BOUNDS.len());
        totals.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        totals.sum_micros.fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a request as in flight until the guard is dropped.
    pub(crate) fn start(self: &std::sync::Arc<Self>) -> Started {
        self.totals.in_flight.fetch_add(1, Ordering::Relaxed);
        Started(self.clone())
    }

    /// Counts a request the app failed (no connection, no answer, or no answer in time).
    pub(crate) fn upstream_error(&self) {
        self.totals.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn record_at(&self, second: u64, status: u16, latency: Duration) {
        let slot = &self.slots[(second % SECONDS as u64) as usize];
        let held = slot.second.load(Ordering::Acquire);
        if held != second && slot.second.compare_exchange(held, second, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // First request of a new second: forget the old one. (A request of the same second
            // recorded concurrently by another thread between the exchange and the reset may be
            // lost; these are figures for charts, not accounting.)
            for counter in slot.classes.iter().chain(slot.latency.iter()) {
                counter.store(0, Ordering::Relaxed);
            }
        }
        slot.classes[class(status)].fetch_add(1, Ordering::Relaxed);
        slot.latency[bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The last `seconds` complete seconds, oldest first, including seconds without traffic.
    pub fn series(&self, seconds: usize) -> Vec<TrafficSecond> {
        self.series_until(unix_second(), seconds)
    }

    fn series_until(&self, now: u64, seconds: usize) -> Vec<TrafficSecond> {
        let seconds = seconds.min(SECONDS - 1) as u64;
        (now.saturating_sub(seconds)..now)
            .map(|second| {
                let slot = &self.slots[(second % SECONDS as u64) as usize];
                if slot.second.load(Ordering::Acquire) != second {
                    return TrafficSecond { at: second, ..TrafficSecond::default() };
                }
                let classes = std::array::from_fn(|i| slot.classes[i].load(Ordering::Relaxed));
                let histogram: Vec<u64> = slot.latency.iter().map(|c| c.load(Ordering::Relaxed)).collect();
                TrafficSecond { at: second, classes, p50: quantile(&histogram, 0.50), p99: quantile(&histogram, 0.99) }
            })
            .collect()
    }
}

/// The in-flight count of one request, taken back when dropped.
pub(crate) struct Started(std::sync::Arc<RouteMetrics>);

impl Drop for Started {
    fn drop(&mut self) {
        self.0.totals.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Renders the figures in the Prometheus text format (0.0.4): per host, requests by status class,
/// the latency histogram (until the response head), requests in flight and upstream errors; per
/// certificate, its expiry.
pub(crate) fn prometheus(hosts: &[(String, std::sync::Arc<RouteMetrics>)], certificates: &[(String, u64)]) -> String {
    let mut out = String::new();
    let label = |value: &str| value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    out.push_str("# HELP berth_ingress_requests_total Responses sent, by host and status class.\n");
    out.push_str("# TYPE berth_ingress_requests_total counter\n");
    for (host, metrics) in hosts {
        for (i, name) in CLASSES.iter().enumerate() {
            let count = metrics.totals.classes[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "berth_ingress_requests_total{{host=\"{}\",class=\"{name}\"}} {count}", label(host));
        }
    }
    out.push_str("# HELP berth_ingress_request_duration_seconds Time until the response head, by host.\n");
    out.push_str("# TYPE berth_ingress_request_duration_seconds histogram\n");
    for (host, metrics) in hosts {
        let host = label(host);
        let mut cumulative = 0;
        for (i, counter) in metrics.totals.buckets.iter().enumerate() {
            cumulative += counter.load(Ordering::Relaxed);
            let bound = EXPORTED_BOUNDS.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "berth_ingress_request_duration_seconds_bucket{{host=\"{host}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let sum = metrics.totals.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "berth_ingress_request_duration_seconds_sum{{host=\"{host}\"}} {sum}");
        let _ = writeln!(out, "berth_ingress_request_duration_seconds_count{{host=\"{host}\"}} {cumulative}");
    }
    out.push_str("# HELP berth_ingress_in_flight Requests being proxied now, by host.\n");
    out.push_str("# TYPE berth_ingress_in_flight gauge\n");
    for (host, metrics) in hosts {
        let value = metrics.totals.in_flight.load(Ordering::Relaxed);
        let _ = writeln!(out, "berth_ingress_in_flight{{host=\"{}\"}} {value}", label(host));
    }
    out.push_str(
        "# HELP berth_ingress_upstream_errors_total Requests the app did not answer (refused, closed, timed out).\n",
    );
    out.push_str("# TYPE berth_ingress_upstream_errors_total counter\n");
    for (host, metrics) in hosts {
        let value = metrics.totals.upstream_errors.load(Ordering::Relaxed);
        let _ = writeln!(out, "berth_ingress_upstream_errors_total{{host=\"{}\"}} {value}", label(host));
    }
    out.push_str("# HELP berth_ingress_certificate_expiry_timestamp_seconds When the certificate served for a name expires (Unix time).\n");
    out.push_str("# TYPE berth_ingress_certificate_expiry_timestamp_seconds gauge\n");
    for (name, expiry) in certificates {
        let _ =
            writeln!(out, "berth_ingress_certificate_expiry_timestamp_seconds{{name=\"{}\"}} {expiry}", label(name));
    }
    out
}

fn quantile(histogram: &[u64], q: f64) -> Option<Duration> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_value(index));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_counted_by_status_class_with_quantiles() {
        let metrics = RouteMetrics::default();
        for i in 0..100u64 {
            metrics.record_at(
                1000,
                if i < 90 { 200 } else { 503 },
                Duration::from_millis(if i < 98 { 1 } else { 100 }),
            );
        }
        metrics.record_at(1002, 404, Duration::from_millis(5));
        let series = metrics.series_until(1003, 3);
        assert_eq!(series.iter().map(|s| s.at).collect::<Vec<_>>(), vec![1000, 1001, 1002]);
        assert_eq!(series[0].classes, [0, 90, 0, 0, 10]);
        assert_eq!(series[0].requests(), 100);
        let p50 = series[0].p50.unwrap();
        assert!(p50 > Duration::from_micros(800) && p50 < Duration::from_micros(1250), "{p50:?}");
        let p99 = series[0].p99.unwrap();
        assert!(p99 > Duration::from_millis(80) && p99 < Duration::from_millis(125), "{p99:?}");
        assert_eq!(series[1], TrafficSecond { at: 1001, ..TrafficSecond::default() });
        assert_eq!(series[2].classes, [0, 0, 0, 1, 0]);
    }

    #[test]
    fn a_slot_reused_a_ring_later_starts_from_zero() {
        let metrics = RouteMetrics::default();
        metrics.record_at(5, 200, Duration::from_millis(1));
        metrics.record_at(5 + SECONDS as u64, 500, Duration::from_millis(1));
        let series = metrics.series_until(6 + SECONDS as u64, 1);
        assert_eq!(series[0].classes, [0, 0, 0, 0, 1]);
        // The old second is no longer reported as such.
        assert!(metrics.series_until(6, 1)[0].classes.iter().all(|&c| c == 0));
    }
}
