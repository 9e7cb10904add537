//! Counters and gauges of one node, cheap to bump on the hot path (relaxed atomics).
//!
//! [`prometheus`] renders them at `/metrics`; [`histogram`] holds latency buckets;
//! [`connections`] counts connections by transport.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::channel;

pub mod connections;
pub mod histogram;
pub mod prometheus;

use connections::ConnectionCounters;
use histogram::Histogram;

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
    /// Adds `n` (negative to subtract).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge that many threads move on every delivery (the bytes queued in outboxes: a
/// publisher adds for each recipient while writers on other cores subtract). One shared
/// atomic would bounce its cache line between the cores twice per delivery; here each
/// thread moves a line of its own, and a read sums them.
#[derive(Debug, Default)]
pub struct StripedGauge(Box<[Stripe; STRIPES]>);

/// Stripes of a [`StripedGauge`]: more than the threads a node runs on most machines;
/// threads beyond share stripes, which stays correct.
const STRIPES: usize = 16;

/// One stripe on a cache line of its own (128 bytes: adjacent-line prefetchers pair
/// 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicI64);

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

impl StripedGauge {
    /// Adds `n` (negative to subtract).
    pub fn add(&self, n: i64) {
        self.0[stripe_index()].0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value: the sum of the stripes (reads are rare: the metrics page, and the
    /// node-wide budget check of a backlogged outbox).
    pub fn get(&self) -> i64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// The node's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Client connections by transport: open, opened, closed by code.
    pub connections: ConnectionCounters,
    /// Active subscriptions.
    pub subscriptions: Gauge,
    /// Publications accepted (API and clients).
    pub publications: Counter,
    /// Deliveries dropped because an outbox was full.
    pub outbox_drops: Counter,
    /// Connections closed because their outbox was full.
    pub slow_disconnects: Counter,
    /// Connections and handshakes refused over a cap or rate (see [`crate::front_door`]).
    pub connections_refused: Counter,
    /// Bytes queued in all outboxes (the budget of `limits.outbox_total_bytes`).
    pub outbox_bytes: StripedGauge,
    /// Connect attempts refused for a bad or expired token.
    pub auth_failures: Counter,
    /// Commands received.
    pub commands: Counter,
    /// Commands answered with an error.
    pub command_errors: Counter,
    /// Client commands by kind and outcome.
    pub command_kinds: CommandCounters,
    /// Publications and deliveries per configured namespace.
    pub namespaces: NamespaceCounters,
    /// Time from a publication's arrival on this node to its writer taking it.
    pub delivery_latency: Histogram,
    /// Server API calls by method, status and error code.
    pub api: ApiCounters,
    /// Server API calls refused for a missing or wrong key.
    pub api_auth_failures: Counter,
    /// Proxy calls to the app backend by kind and outcome.
    pub proxy: ProxyCounters,
    /// Connections closed because their token was revoked.
    pub revoked_disconnects: Counter,
    /// Webhook events delivered, retried and dropped.
    pub webhooks: WebhookCounters,
}

/// Webhook deliveries (see [`crate::webhooks`]). Events are counted per endpoint
/// they were queued for.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Events an endpoint took (2xx).
    pub delivered: Counter,
    /// Events an endpoint refused for good (a 4xx other than 408, 429): dropped.
    pub refused: Counter,
    /// Failed requests that were retried (timeout, network error, 5xx, 408, 429).
    pub retried: Counter,
    /// Events dropped because the endpoint's queue held `webhooks.queue_size`.
    pub queue_full: Counter,
    /// Hook reports dropped because this node's buffer held `webhooks.buffer_size`.
    pub buffer_full: Counter,
    /// Events dropped because their queue (Redis) could not be reached.
    pub unqueued: Counter,
    /// Time of a request that was answered (delivered or refused).
    pub latency: Histogram,
}

impl Metrics {
    /// Metrics with one publication and delivery counter per namespace of `namespaces`.
    pub fn new<'a>(namespaces: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            namespaces: NamespaceCounters::new(namespaces),
            ..Self::default()
        }
    }
}

/// Client command kinds counted by [`CommandCounters`], as the protocol names them.
pub const COMMAND_KINDS: [&str; 12] = [
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
];

/// Client commands by kind ([`COMMAND_KINDS`]) and outcome (ok, error).
#[derive(Debug, Default)]
pub struct CommandCounters([[Counter; 2]; COMMAND_KINDS.len()]);

impl CommandCounters {
    /// Counts one command of `kind` (one of [`COMMAND_KINDS`]; others are ignored).
    pub fn record(&self, kind: &str, ok: bool) {
        if let Some(i) = COMMAND_KINDS.iter().position(|k| *k == kind) {
            self.0[i][usize::from(!ok)].inc();
        }
    }

    /// `(kind, ok, error)` for every kind.
    pub fn snapshot(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        COMMAND_KINDS
            .iter()
            .zip(self.0.iter())
            .map(|(k, [ok, err])| (*k, ok.get(), err.get()))
    }
}

/// Publications and deliveries per namespace. The namespaces are fixed by config, so
/// counting is a map lookup and an atomic add, never an allocation.
#[derive(Debug, Default)]
pub struct NamespaceCounters {
    index: HashMap<String, usize>,
    names: Vec<String>,
    publications: Vec<Counter>,
    deliveries: Vec<Counter>,
}

impl NamespaceCounters {
    fn new<'a>(namespaces: impl IntoIterator<Item = &'a str>) -> Self {
        let names: Vec<String> = namespaces.into_iter().map(str::to_owned).collect();
        Self {
            index: names.iter().cloned().zip(0..).collect(),
            publications: names.iter().map(|_| Counter::default()).collect(),
            deliveries: names.iter().map(|_| Counter::default()).collect(),
            names,
        }
    }

    fn slot(&self, channel_name: &str) -> Option<usize> {
        self.index.get(channel::namespace(channel_name)).copied()
    }

    /// Counts a publication into `channel_name`.
    pub fn published(&self, channel_name: &str) {
        if let Some(i) = self.slot(channel_name) {
            self.publications[i].inc();
        }
    }

    /// Counts `n` deliveries into local outboxes of one event in `channel_name`.
    pub fn delivered(&self, channel_name: &str, n: usize) {
        if let Some(i) = self.slot(channel_name) {
            self.deliveries[i].add(n as u64);
        }
    }

    /// `(namespace, publications, deliveries)` for every namespace.
    pub fn snapshot(&self) -> impl Iterator<Item = (&str, u64, u64)> + '_ {
        self.names
            .iter()
            .zip(self.publications.iter().zip(&self.deliveries))
            .map(|(n, (p, d))| (n.as_str(), p.get(), d.get()))
    }
}

/// Server API calls. Not on the fan-out path (one lock per HTTP request), so a map
/// under a short-lived std mutex is simpler than a fixed matrix of atomics.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// `(method, HTTP status)` -> calls. Short critical sections only.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// `(method, error code)` -> calls. Short critical sections only.
    errors: Mutex<BTreeMap<(&'static str, u32), u64>>,
    /// Time to answer a call.
    pub duration: Histogram,
}

impl ApiCounters {
    /// Counts one call; `code` is the API error code, if the call failed.
    pub fn record(&self, method: &'static str, status: u16, code: Option<u32>) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((method, status))
            .or_default() += 1;
        if let Some(code) = code {
            *self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((method, code))
                .or_default() += 1;
        }
    }

    /// `((method, status), calls)`, sorted.
    pub fn requests(&self) -> Vec<((&'static str, u16), u64)> {
        let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// `((method, code), calls)`, sorted.
    pub fn errors(&self) -> Vec<((&'static str, u32), u64)> {
        let map = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Outcomes of a proxy call counted by [`ProxyCounters`]: a `result`, the backend's
/// `error` or `disconnect`, or a failure (timeout, unreachable, non-200, bad JSON).
pub const PROXY_OUTCOMES: [&str; 7] = [
    "ok",
    "refused",
    "disconnect",
    "timeout",
    "unreachable",
    "bad_status",
    "bad_answer",
];

/// Proxy calls by kind ([`crate::proxy::ProxyKind`]) and outcome ([`PROXY_OUTCOMES`]).
#[derive(Debug, Default)]
pub struct ProxyCounters([[Counter; PROXY_OUTCOMES.len()]; 6]);

impl ProxyCounters {
    /// Counts one call of `kind` that ended with `outcome` (others are ignored).
    pub fn record(&self, kind: crate::proxy::ProxyKind, outcome: &str) {
        if let Some(i) = PROXY_OUTCOMES.iter().position(|o| *o == outcome) {
            self.0[kind.index()][i].inc();
        }
    }

    /// Calls of `kind` that ended with `outcome`.
    pub fn get(&self, kind: crate::proxy::ProxyKind, outcome: &str) -> u64 {
        PROXY_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.0[kind.index()][i].get())
    }

    /// `(kind, outcome, calls)` for every kind and outcome.
    pub fn snapshot(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        crate::proxy::ProxyKind::ALL
            .into_iter()
            .flat_map(move |kind| {
                PROXY_OUTCOMES
                    .iter()
                    .map(move |o| (kind.name(), *o, self.get(kind, o)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_striped_gauge_sums_what_every_thread_added() {
        let gauge = Arc::new(StripedGauge::default());
        // More threads than stripes: some share one, and nothing is lost.
        let threads: Vec<_> = (0..STRIPES + 4)
            .map(|i| {
                let gauge = gauge.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        gauge.add(3);
                        gauge.add(-1);
                    }
                    gauge.add(i64::try_from(i).unwrap_or(0));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = i64::try_from(STRIPES + 4).unwrap();
        assert_eq!(gauge.get(), n * 2000 + n * (n - 1) / 2);
    }
}
