//! A latency histogram: log-linear buckets (128 per power of two, under 1% error),
//! cheap to record into and to merge across worker processes.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Counts of values (microseconds) in log-linear buckets.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

/// The sparse form sent between processes: (bucket, count) pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SparseHistogram {
    buckets: Vec<(u32, u64)>,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) & (SUB - 1);
    ((shift as u64 + 1) * SUB + sub) as usize
}

/// The middle of a bucket's range.
fn value_of(bucket: usize) -> u64 {
    let b = bucket as u64;
    if b < SUB {
        return b;
    }
    let shift = b / SUB - 1;
    let sub = b % SUB;
    let low = (SUB + sub) << shift;
    low + ((1u64 << shift) >> 1)
}

impl Histogram {
    /// Records one value.
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Number of values recorded.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), or 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i).min(self.max);
            }
        }
        self.max
    }

    /// The largest value recorded.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Adds another histogram's counts.
    pub(crate) fn merge(&mut self, other: &SparseHistogram) {
        for &(b, c) in &other.buckets {
            if let Some(slot) = self.counts.get_mut(b as usize) {
                *slot += c;
                self.total += c;
            }
        }
        self.max = self.max.max(other.max);
    }

    /// The sparse form, for sending to the coordinator.
    pub(crate) fn to_sparse(&self) -> SparseHistogram {
        SparseHistogram {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            12_345,
            1 << 40,
            u64::MAX,
        ] {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            last = b;
            let mid = value_of(b);
            let err = (mid as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.01, "{v} -> {mid}");
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::default();
        for v in 1..=1000 {
            a.record(v);
        }
        let p50 = a.quantile(0.5);
        assert!((495..=505).contains(&p50), "{p50}");
        let p99 = a.quantile(0.99);
        assert!((985..=995).contains(&p99), "{p99}");
        let mut b = Histogram::default();
        b.merge(&a.to_sparse());
        assert_eq!(b.len(), 1000);
        assert_eq!(b.quantile(0.5), a.quantile(0.5));
        assert_eq!(b.max(), 1000);
    }
}
