//! A latency histogram with fixed buckets: observing is a few relaxed atomic adds, so
//! it can sit on the delivery path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus `le`), from 50µs to 10s: wide
/// enough for a local fan-out and for a stalled Redis engine alike.
pub const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Bucket bounds in microseconds, compared against each observation without floats.
const BOUNDS_MICROS: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Counts of observations per bucket (not cumulative; cumulated when rendered).
#[derive(Debug, Default)]
pub struct Histogram {
    /// One slot per bound, plus one for `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A consistent-enough copy of a histogram, for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Cumulative counts, one per bound of [`BUCKETS`], then `+Inf`.
    pub cumulative: Vec<u64>,
    /// Sum of observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = BOUNDS_MICROS
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(BOUNDS_MICROS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The current counts. Relaxed reads: a scrape racing an observation may be off by
    /// one between buckets and count, which Prometheus tolerates.
    pub fn snapshot(&self) -> Snapshot {
        let mut running = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        Snapshot {
            cumulative,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_is_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative.len(), BUCKETS.len() + 1);
        assert_eq!(s.cumulative[0], 1, "40µs <= 50µs");
        assert_eq!(s.cumulative[1], 2, "100µs <= 100µs");
        assert_eq!(s.cumulative[6], 3, "3ms <= 5ms");
        assert_eq!(s.cumulative[BUCKETS.len() - 1], 3, "60s is above 10s");
        assert_eq!(s.cumulative[BUCKETS.len()], 4);
        assert!((s.sum - 60.00314).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn bounds_agree() {
        for (s, us) in BUCKETS.iter().zip(BOUNDS_MICROS) {
            assert_eq!((s * 1e6).round() as u64, us);
        }
    }
}
