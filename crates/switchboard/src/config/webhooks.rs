//! The `[webhooks]` section: which lifecycle events go to which HTTP endpoints of the
//! app backend, and how they are batched, retried and bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Event kinds an endpoint may ask for, as payloads name them.
pub const EVENT_KINDS: [&str; 11] = [
    "connect",
    "disconnect",
    "online",
    "offline",
    "occupied",
    "vacated",
    "subscribe",
    "unsubscribe",
    "join",
    "leave",
    "publication",
];

/// Webhook delivery settings, shared by every endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The endpoints, by name (the name keys their queue and appears in logs).
    pub endpoints: BTreeMap<String, WebhookEndpointConfig>,
    /// Most events in one request.
    pub batch_size: usize,
    /// How long a partial batch waits for more events before it is sent.
    #[serde(with = "super::duration")]
    pub batch_delay: Duration,
    /// Longest wait for an endpoint's answer; past it the batch is retried.
    #[serde(with = "super::duration")]
    pub timeout: Duration,
    /// First wait before a retry; doubled after every failure up to `max_backoff`.
    #[serde(with = "super::duration")]
    pub min_backoff: Duration,
    /// Longest wait between retries.
    #[serde(with = "super::duration")]
    pub max_backoff: Duration,
    /// Most events waiting per endpoint (in Redis with the Redis engine); past it new
    /// events are dropped, counted and logged.
    pub queue_size: usize,
    /// Most hook reports waiting in this node to be turned into events; past it they
    /// are dropped, counted and logged (clients never wait for webhooks).
    pub buffer_size: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            endpoints: BTreeMap::new(),
            batch_size: 100,
            batch_delay: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            queue_size: 100_000,
            buffer_size: 10_000,
        }
    }
}

/// One endpoint of the app backend.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookEndpointConfig {
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// Key of the HMAC-SHA256 signature of each body (`X-Switchboard-Signature`).
    pub secret: String,
    /// Event kinds sent (see [`EVENT_KINDS`]).
    pub events: Vec<String>,
    /// Namespaces whose channel events are sent (occupied, vacated, subscribe,
    /// unsubscribe, join, leave, publication); empty: every namespace. Required with
    /// `publication`.
    pub namespaces: Vec<String>,
}

impl WebhooksConfig {
    /// What is wrong with the section, one line each.
    pub(super) fn errors(
        &self,
        namespaces: &BTreeMap<String, super::NamespaceConfig>,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        if self.endpoints.is_empty() {
            return errors;
        }
        if self.batch_size == 0 {
            errors.push("webhooks.batch_size must be at least 1".to_owned());
        }
        if self.queue_size == 0 || self.buffer_size == 0 {
            errors
                .push("webhooks.queue_size and webhooks.buffer_size must be at least 1".to_owned());
        }
        if self.timeout.is_zero() || self.min_backoff.is_zero() {
            errors.push("webhooks.timeout and webhooks.min_backoff must be positive".to_owned());
        }
        if self.max_backoff < self.min_backoff {
            errors.push("webhooks.max_backoff must be at least webhooks.min_backoff".to_owned());
        }
        for (name, e) in &self.endpoints {
            let key = format!("webhooks.endpoints.{name}");
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
                errors.push(format!("{key}.url must be an http:// or https:// URL"));
            }
            if e.secret.is_empty() {
                errors.push(format!("{key}.secret is required (requests are signed)"));
            }
            if e.events.is_empty() {
                errors.push(format!(
                    "{key}.events is empty: name some of {}",
                    EVENT_KINDS.join(", ")
                ));
            }
            for kind in e
                .events
                .iter()
                .filter(|k| !EVENT_KINDS.contains(&k.as_str()))
            {
                errors.push(format!(
                    "{key}.events: unknown kind {kind:?} (known: {})",
                    EVENT_KINDS.join(", ")
                ));
            }
            if e.events.iter().any(|k| k == "publication") && e.namespaces.is_empty() {
                errors.push(format!(
                    "{key}: publication needs namespaces (publications of chosen namespaces only)"
                ));
            }
            for ns in e
                .namespaces
                .iter()
                .filter(|ns| !namespaces.contains_key(*ns))
            {
                errors.push(format!("{key}.namespaces: {ns:?} is not configured"));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamespaceConfig;

    #[test]
    fn endpoints_are_checked_at_load() {
        let mut namespaces = BTreeMap::new();
        namespaces.insert("device".to_owned(), NamespaceConfig::default());
        let mut c = WebhooksConfig::default();
        assert!(
            c.errors(&namespaces).is_empty(),
            "no endpoint, nothing to check"
        );
        c.endpoints.insert(
            "app".into(),
            WebhookEndpointConfig {
                url: "ftp://x".into(),
                secret: String::new(),
                events: vec!["publication".into(), "onlin".into()],
                namespaces: vec![],
            },
        );
        c.batch_size = 0;
        let errors = c.errors(&namespaces).join("\n");
        for want in [
            "batch_size",
            "url must be",
            "secret is required",
            "unknown kind \"onlin\"",
            "publication needs namespaces",
        ] {
            assert!(errors.contains(want), "{want}: {errors}");
        }
        c.batch_size = 1;
        c.endpoints.insert(
            "app".into(),
            WebhookEndpointConfig {
                url: "http://x/hooks".into(),
                secret: "s".into(),
                events: vec!["publication".into()],
                namespaces: vec!["device".into()],
            },
        );
        assert!(c.errors(&namespaces).is_empty());
    }
}
