//! Counters and gauges of one node, cheap to bump on the hot path (relaxed atomics).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The node's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open client connections.
    pub connections: Gauge,
    /// Active subscriptions.
    pub subscriptions: Gauge,
    /// Publications accepted (API and clients).
    pub publications: Counter,
    /// Deliveries dropped because an outbox was full.
    pub outbox_drops: Counter,
    /// Connections closed because their outbox was full.
    pub slow_disconnects: Counter,
    /// Connect attempts refused for a bad or expired token.
    pub auth_failures: Counter,
    /// Commands received.
    pub commands: Counter,
    /// Commands answered with an error.
    pub command_errors: Counter,
}
