//! Per-host traffic figures: requests per second by status class and a latency histogram, kept
//! for the last [`SECONDS`] seconds in a ring of per-second slots. Recording is a few relaxed
//! atomic additions, no lock; reading builds the series on demand.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// The traffic of one host name.
pub struct RouteMetrics {
    slots: Box<[Slot]>,
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
        RouteMetrics { slots: (0..SECONDS).map(|_| Slot::new()).collect() }
    }
}

impl RouteMetrics {
    pub fn record(&self, status: u16, latency: Duration) {
        self.record_at(unix_second(), status, latency);
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
        let class = (status / 100).clamp(1, 5) as usize - 1;
        slot.classes[class].fetch_add(1, Ordering::Relaxed);
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
