//! `GET /metrics`: the node's metrics in the Prometheus text exposition format (0.0.4).
//!
//! Written by hand: a dozen families do not justify a metrics dependency, and every
//! value is read from the relaxed atomics the hot path already bumps.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::histogram::{Snapshot, BUCKETS};
use crate::node::Node;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics`.
pub async fn handler(State(node): State<Arc<Node>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&node))
}

/// Renders every metric of `node`.
pub fn render(node: &Node) -> String {
    let m = &node.metrics;
    let (users, _) = node.local_counts();
    let mut out = Text(String::with_capacity(4096));

    out.family(
        "switchboard_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    out.sample("switchboard_build_info", &[("version", crate::VERSION)], 1);
    out.family(
        "switchboard_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
    );
    out.sample(
        "switchboard_uptime_seconds",
        &[],
        node.started.elapsed().as_secs(),
    );

    out.family(
        "switchboard_connections",
        "gauge",
        "Open client connections, by transport and encoding.",
    );
    for (t, open, _) in m.connections.snapshot() {
        let labels = [("transport", t.name()), ("encoding", t.encoding())];
        out.sample("switchboard_connections", &labels, open);
    }
    out.family(
        "switchboard_connects_total",
        "counter",
        "Client connections opened, by transport and encoding.",
    );
    for (t, _, opened) in m.connections.snapshot() {
        let labels = [("transport", t.name()), ("encoding", t.encoding())];
        out.sample("switchboard_connects_total", &labels, opened);
    }
    out.family(
        "switchboard_disconnects_total",
        "counter",
        "Client connections closed, by transport, encoding and disconnect code.",
    );
    for (t, code, n) in m.connections.closes() {
        let code = code.map_or_else(|| "other".to_owned(), |c| c.to_string());
        let labels = [
            ("transport", t.name()),
            ("encoding", t.encoding()),
            ("code", code.as_str()),
        ];
        out.sample("switchboard_disconnects_total", &labels, n);
    }
    out.family(
        "switchboard_users",
        "gauge",
        "Distinct users with at least one authenticated connection.",
    );
    out.sample("switchboard_users", &[], users);
    out.family(
        "switchboard_subscriptions",
        "gauge",
        "Active client subscriptions.",
    );
    out.sample("switchboard_subscriptions", &[], m.subscriptions.get());
    out.family(
        "switchboard_channels",
        "gauge",
        "Channels with at least one local subscriber.",
    );
    out.sample("switchboard_channels", &[], node.local_channels().len());

    out.family(
        "switchboard_commands_total",
        "counter",
        "Client protocol commands by kind and result.",
    );
    for (kind, ok, err) in m.command_kinds.snapshot() {
        let name = "switchboard_commands_total";
        out.sample(name, &[("command", kind), ("result", "ok")], ok);
        out.sample(name, &[("command", kind), ("result", "error")], err);
    }

    out.family(
        "switchboard_proxy_requests_total",
        "counter",
        "Proxy calls to the app backend by kind and outcome.",
    );
    for (kind, outcome, n) in m.proxy.snapshot() {
        let name = "switchboard_proxy_requests_total";
        out.sample(name, &[("proxy", kind), ("result", outcome)], n);
    }
    let w = &m.webhooks;
    out.family(
        "switchboard_webhook_events_total",
        "counter",
        "Webhook events by outcome: delivered, refused (4xx), or dropped (queue full, buffer full, queue unavailable).",
    );
    for (result, n) in [
        ("delivered", w.delivered.get()),
        ("refused", w.refused.get()),
        ("queue_full", w.queue_full.get()),
        ("buffer_full", w.buffer_full.get()),
        ("unavailable", w.unqueued.get()),
    ] {
        out.sample("switchboard_webhook_events_total", &[("result", result)], n);
    }
    out.family(
        "switchboard_webhook_retries_total",
        "counter",
        "Webhook requests that failed (timeout, network error, 5xx, 408, 429) and were retried.",
    );
    out.sample("switchboard_webhook_retries_total", &[], w.retried.get());
    out.histogram(
        "switchboard_webhook_request_seconds",
        "Time of a webhook request the endpoint answered.",
        &w.latency.snapshot(),
    );
    out.family(
        "switchboard_revoked_disconnects_total",
        "counter",
        "Connections closed because their token was revoked.",
    );
    out.sample(
        "switchboard_revoked_disconnects_total",
        &[],
        m.revoked_disconnects.get(),
    );

    out.family(
        "switchboard_publications_total",
        "counter",
        "Publications accepted, from clients and the server API, by namespace.",
    );
    for (ns, publications, _) in m.namespaces.snapshot() {
        out.sample(
            "switchboard_publications_total",
            &[("namespace", ns)],
            publications,
        );
    }
    out.family(
        "switchboard_deliveries_total",
        "counter",
        "Channel events queued into local connections' outboxes, by namespace.",
    );
    for (ns, _, deliveries) in m.namespaces.snapshot() {
        out.sample(
            "switchboard_deliveries_total",
            &[("namespace", ns)],
            deliveries,
        );
    }
    out.histogram(
        "switchboard_delivery_latency_seconds",
        "Time from a publication reaching this node to a connection's writer taking it.",
        &m.delivery_latency.snapshot(),
    );

    out.family(
        "switchboard_outbox_drops_total",
        "counter",
        "Frames dropped because a connection's outbox was full.",
    );
    out.sample("switchboard_outbox_drops_total", &[], m.outbox_drops.get());
    out.family(
        "switchboard_slow_disconnects_total",
        "counter",
        "Connections closed as slow consumers (3008).",
    );
    out.sample(
        "switchboard_slow_disconnects_total",
        &[],
        m.slow_disconnects.get(),
    );
    out.family(
        "switchboard_connections_refused_total",
        "counter",
        "Connections and handshakes refused over a cap or rate (503).",
    );
    out.sample(
        "switchboard_connections_refused_total",
        &[],
        m.connections_refused.get(),
    );
    out.family(
        "switchboard_outbox_bytes",
        "gauge",
        "Bytes queued in all connections' outboxes.",
    );
    out.sample("switchboard_outbox_bytes", &[], m.outbox_bytes.get());
    out.family(
        "switchboard_auth_failures_total",
        "counter",
        "Refused credentials: connection tokens (connect) and server API keys (api).",
    );
    let name = "switchboard_auth_failures_total";
    out.sample(name, &[("source", "connect")], m.auth_failures.get());
    out.sample(name, &[("source", "api")], m.api_auth_failures.get());

    out.family(
        "switchboard_api_requests_total",
        "counter",
        "Server API calls by method and HTTP status.",
    );
    for ((method, status), n) in m.api.requests() {
        let status = status.to_string();
        out.sample(
            "switchboard_api_requests_total",
            &[("method", method), ("status", &status)],
            n,
        );
    }
    out.family(
        "switchboard_api_errors_total",
        "counter",
        "Server API calls answered with an error, by method and error code.",
    );
    for ((method, code), n) in m.api.errors() {
        let code = code.to_string();
        out.sample(
            "switchboard_api_errors_total",
            &[("method", method), ("code", &code)],
            n,
        );
    }
    out.histogram(
        "switchboard_api_request_duration_seconds",
        "Time to answer a server API call.",
        &m.api.duration.snapshot(),
    );
    out.0
}

/// The text being built; `write!` into a `String` can not fail.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.0.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let _ = write!(self.0, "{k}=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.0.push_str("\\\\"),
                    '"' => self.0.push_str("\\\""),
                    '\n' => self.0.push_str("\\n"),
                    c => self.0.push(c),
                }
            }
            self.0.push('"');
        }
        self.0.push('}');
    }

    fn histogram(&mut self, name: &str, help: &str, s: &Snapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, n) in BUCKETS.iter().zip(&s.cumulative) {
            self.sample(&bucket, &[("le", &bound.to_string())], n);
        }
        let total = s.cumulative.last().copied().unwrap_or(0);
        self.sample(&bucket, &[("le", "+Inf")], total);
        self.sample(&format!("{name}_sum"), &[], s.sum);
        self.sample(&format!("{name}_count"), &[], s.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let mut t = Text(String::new());
        t.sample("m", &[("a", "x\"y\\z\n"), ("b", "2")], 3);
        assert_eq!(t.0, "m{a=\"x\\\"y\\\\z\\n\",b=\"2\"} 3\n");
    }

    #[test]
    fn histogram_ends_with_inf_sum_and_count() {
        let h = super::super::histogram::Histogram::default();
        h.observe(std::time::Duration::from_millis(2));
        let mut t = Text(String::new());
        t.histogram("lat", "Latency.", &h.snapshot());
        assert!(t.0.contains("# TYPE lat histogram\n"));
        assert!(t.0.contains("lat_bucket{le=\"0.001\"} 0\n"), "{}", t.0);
        assert!(t.0.contains("lat_bucket{le=\"0.0025\"} 1\n"), "{}", t.0);
        assert!(t
            .0
            .contains("lat_bucket{le=\"+Inf\"} 1\nlat_sum 0.002\nlat_count 1\n"));
    }
}
