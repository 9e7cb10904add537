//! Lifecycle webhooks: the [`Hooks`] observer that turns the core's hook points into
//! signed, batched HTTP POSTs to the app backend, delivered at least once.
//!
//! Hook reports go through a bounded buffer (never blocking a client) to one task per
//! node, which asks the [`cluster`] view whether a user or channel changed for the whole
//! gateway, encodes each event once with a unique `id`, and appends it to the queue of
//! every endpoint that wants it ([`queue`]); [`delivery`] drains each queue.
//!
//! - [`cluster`]: the nodes' shared view in Redis, and the reports of dead nodes.
//! - [`queue`]: an endpoint's bounded queue, in memory or in Redis.
//! - [`delivery`]: batching, signing, retries.

mod cluster;
pub mod delivery;
mod queue;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use switchboard_protocol::SharedJson;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EngineKind, WebhooksConfig};
use crate::hooks::{Hooks, Lifecycle};
use crate::metrics::Metrics;
use cluster::{Cluster, Remains, Transition};
use queue::Queue;

pub use delivery::{sign, SIGNATURE_HEADER};

/// Why webhooks could not start or a step of them failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WebhookError {
    /// Redis (the shared view or a queue) failed or is misconfigured.
    #[error("redis: {0}")]
    Redis(String),
}

/// The reason of a disconnect reported for a client of a node that died.
pub const NODE_LOST: &str = "node lost";

/// One configured endpoint and its queue.
struct Endpoint {
    name: String,
    url: String,
    secret: String,
    kinds: Vec<String>,
    namespaces: Vec<String>,
    queue: Queue,
    /// Wakes the deliverer when this node queued an event.
    wake: Notify,
}

impl Endpoint {
    fn wants(&self, kind: &str, channel: Option<&str>) -> bool {
        self.kinds.iter().any(|k| k == kind)
            && channel.is_none_or(|c| {
                self.namespaces.is_empty()
                    || self
                        .namespaces
                        .iter()
                        .any(|ns| ns == crate::channel::namespace(c))
            })
    }
}

/// What every webhook task of this node shares.
struct Inner {
    config: WebhooksConfig,
    endpoints: Vec<Endpoint>,
    cluster: Option<Cluster>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    /// This node's name, in every event it reports.
    node: String,
    /// How long a node lives without a heartbeat (the presence lease).
    lease: Duration,
}

/// One event as the endpoint receives it.
#[derive(Debug, Serialize)]
struct Event<'a> {
    /// Unique per event; a retried or re-reported event keeps it.
    id: String,
    kind: &'static str,
    /// Unix milliseconds at which the reporting node saw it.
    time_ms: u64,
    /// Name of the reporting node.
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_info: Option<&'a SharedJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chan_info: Option<&'a SharedJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a SharedJson>,
}

impl<'a> Event<'a> {
    fn new(kind: &'static str, node: &'a str) -> Self {
        Self {
            // From the thread-local generator: no getrandom syscall per event.
            id: uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .simple()
                .to_string(),
            kind,
            time_ms: now_ms(),
            node,
            user: None,
            client: None,
            channel: None,
            code: None,
            reason: None,
            last_seen: None,
            conn_info: None,
            chan_info: None,
            data: None,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The webhooks of one node: a [`Hooks`] observer.
pub struct Webhooks {
    intake: mpsc::Sender<Lifecycle>,
    publications: bool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Hooks for Webhooks {
    fn on_lifecycle(&self, event: Lifecycle) {
        if self.intake.try_send(event).is_err() {
            let m = &self.metrics.webhooks;
            m.buffer_full.inc();
            // Logged at the first drop and every 1000th after: a flood must not
            // become a flood of log lines.
            if m.buffer_full.get() % 1000 == 1 {
                tracing::warn!(
                    dropped = m.buffer_full.get(),
                    "webhook buffer full: hook reports dropped (webhooks.buffer_size)"
                );
            }
        }
    }

    fn observes_publications(&self) -> bool {
        self.publications
    }
}

impl Webhooks {
    /// Starts the webhook tasks of node `uid` (named `name`) until `shutdown`; `None`
    /// when no endpoint is configured. Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// A malformed Redis URL (with the Redis engine).
    pub fn start(
        config: &Config,
        uid: &str,
        name: &str,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Arc<Self>>, WebhookError> {
        let wh = &config.webhooks;
        if wh.endpoints.is_empty() {
            return Ok(None);
        }
        let cluster = match config.engine {
            EngineKind::Redis => Some(Cluster::new(&config.redis, uid, config.presence_lease)?),
            EngineKind::Memory => None,
        };
        let endpoints: Vec<Endpoint> = wh
            .endpoints
            .iter()
            .map(|(name, e)| Endpoint {
                name: name.clone(),
                url: e.url.clone(),
                secret: e.secret.clone(),
                kinds: e.events.clone(),
                namespaces: e.namespaces.clone(),
                queue: match &cluster {
                    Some(c) => {
                        let (list, lock) = c.queue_keys(name);
                        Queue::Redis { list, lock }
                    }
                    None => Queue::Memory {
                        events: std::sync::Mutex::default(),
                    },
                },
                wake: Notify::new(),
            })
            .collect();
        let publications = endpoints.iter().any(|e| e.wants("publication", None));
        let inner = Arc::new(Inner {
            config: wh.clone(),
            endpoints,
            cluster,
            http,
            metrics: metrics.clone(),
            node: name.to_owned(),
            lease: config.presence_lease,
        });
        let (tx, rx) = mpsc::channel(wh.buffer_size);
        tokio::spawn(intake(inner.clone(), rx, shutdown.clone()));
        for i in 0..inner.endpoints.len() {
            tokio::spawn(delivery::run(inner.clone(), i, shutdown.clone()));
        }
        if inner.cluster.is_some() {
            tokio::spawn(watch_nodes(inner, shutdown.clone()));
        }
        Ok(Some(Arc::new(Self {
            intake: tx,
            publications,
            metrics,
        })))
    }
}

/// Turns this node's hook reports into events, in order, until shutdown (and, after
/// it, for a moment: closing sessions report their disconnects).
async fn intake(inner: Arc<Inner>, mut rx: mpsc::Receiver<Lifecycle>, shutdown: CancellationToken) {
    if let Some(c) = &inner.cluster {
        // Known alive before reporting anything, so a survivor finds what this node
        // leaves should it die.
        if let Err(e) = c.heartbeat().await {
            tracing::warn!(error = %e, "webhook node record failed");
        }
    }
    loop {
        // Cancel-safe: mpsc::Receiver::recv and a cancellation.
        let report = tokio::select! {
            r = rx.recv() => r,
            () = shutdown.cancelled() => break,
        };
        let Some(report) = report else { return };
        inner.handle(report).await;
    }
    while let Ok(Some(report)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
        inner.handle(report).await;
    }
}

/// With Redis: keeps this node alive in the shared view and reports for dead nodes.
async fn watch_nodes(inner: Arc<Inner>, shutdown: CancellationToken) {
    let Some(cluster) = &inner.cluster else {
        return;
    };
    let mut heartbeat = tokio::time::interval(inner.lease / 3);
    let mut sweep = tokio::time::interval(inner.lease / 4);
    for t in [&mut heartbeat, &mut sweep] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        // Every arm is cancel-safe (interval ticks and a cancellation).
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = cluster.heartbeat().await {
                    tracing::warn!(error = %e, "webhook node heartbeat failed");
                }
            }
            _ = sweep.tick() => {
                if let Err(e) = inner.report_dead(cluster).await {
                    tracing::warn!(error = %e, "webhook sweep of dead nodes failed");
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

impl Inner {
    async fn handle(&self, report: Lifecycle) {
        let node = self.node.as_str();
        match &report {
            Lifecycle::Connected { client, user } => {
                if let Some(c) = &self.cluster {
                    if let Err(e) = c.client_connected(client, user).await {
                        tracing::warn!(error = %e, "webhook client record failed");
                    }
                }
                let mut ev = Event::new("connect", node);
                (ev.client, ev.user) = (Some(&**client), Some(&**user));
                self.emit(&ev, None).await;
            }
            Lifecycle::Disconnected {
                client,
                user,
                reason,
            } => {
                if let Some(c) = &self.cluster {
                    if let Err(e) = c.client_disconnected(client).await {
                        tracing::warn!(error = %e, "webhook client record failed");
                    }
                }
                let mut ev = Event::new("disconnect", node);
                (ev.client, ev.user) = (Some(&**client), Some(&**user));
                (ev.code, ev.reason) = (Some(reason.code), Some(reason.reason));
                self.emit(&ev, None).await;
            }
            Lifecycle::UserOnline { user } => {
                if self
                    .changed(self.cluster.as_ref().map(|c| c.user_online(user)))
                    .await
                {
                    let mut ev = Event::new("online", node);
                    ev.user = Some(&**user);
                    self.emit(&ev, None).await;
                }
            }
            Lifecycle::UserOffline { user, last_seen } => {
                if self
                    .changed(self.cluster.as_ref().map(|c| c.user_offline(user)))
                    .await
                {
                    let mut ev = Event::new("offline", node);
                    (ev.user, ev.last_seen) = (Some(&**user), Some(*last_seen));
                    self.emit(&ev, None).await;
                }
            }
            Lifecycle::ChannelOccupied { channel } => {
                if self
                    .changed(self.cluster.as_ref().map(|c| c.occupied(channel)))
                    .await
                {
                    let mut ev = Event::new("occupied", node);
                    ev.channel = Some(&**channel);
                    self.emit(&ev, Some(&**channel)).await;
                }
            }
            Lifecycle::ChannelVacated { channel } => {
                if self
                    .changed(self.cluster.as_ref().map(|c| c.vacated(channel)))
                    .await
                {
                    let mut ev = Event::new("vacated", node);
                    ev.channel = Some(&**channel);
                    self.emit(&ev, Some(&**channel)).await;
                }
            }
            Lifecycle::Subscribed { channel, info }
            | Lifecycle::Unsubscribed { channel, info }
            | Lifecycle::Joined { channel, info }
            | Lifecycle::Left { channel, info } => {
                let kind = match report {
                    Lifecycle::Subscribed { .. } => "subscribe",
                    Lifecycle::Unsubscribed { .. } => "unsubscribe",
                    Lifecycle::Joined { .. } => "join",
                    _ => "leave",
                };
                let mut ev = Event::new(kind, node);
                (ev.channel, ev.client, ev.user) =
                    (Some(&**channel), Some(&*info.client), Some(&*info.user));
                (ev.conn_info, ev.chan_info) = (info.conn_info.as_ref(), info.chan_info.as_ref());
                self.emit(&ev, Some(&**channel)).await;
            }
            Lifecycle::Published {
                channel,
                data,
                info,
            } => {
                let mut ev = Event::new("publication", node);
                (ev.channel, ev.data) = (Some(&**channel), Some(data));
                if let Some(info) = info {
                    (ev.client, ev.user) = (Some(&*info.client), Some(&*info.user));
                }
                self.emit(&ev, Some(&**channel)).await;
            }
        }
    }

    /// Whether a change seen here is a change for the whole gateway: always with one
    /// node; with Redis, when the shared view says so (or can not say: a duplicate the
    /// backend can tell by its state beats a lost event).
    async fn changed(
        &self,
        shared: Option<impl std::future::Future<Output = Result<Transition, WebhookError>>>,
    ) -> bool {
        let Some(shared) = shared else {
            return true;
        };
        match shared.await {
            Ok(t) => t == Transition::Changed,
            Err(e) => {
                tracing::warn!(error = %e, "webhook shared view unavailable; reporting the local change");
                true
            }
        }
    }

    /// Queues `ev` for every endpoint that wants it.
    async fn emit(&self, ev: &Event<'_>, channel: Option<&str>) {
        let mut json = None;
        for endpoint in self.endpoints.iter().filter(|e| e.wants(ev.kind, channel)) {
            let json = match &json {
                Some(j) => j,
                None => match serde_json::to_string(ev) {
                    Ok(j) => json.insert(j),
                    Err(e) => {
                        tracing::error!(error = %e, "webhook event not encodable");
                        return;
                    }
                },
            };
            let m = &self.metrics.webhooks;
            match endpoint
                .queue
                .push(self.cluster.as_ref(), self.config.queue_size, json)
                .await
            {
                Ok(true) => endpoint.wake.notify_one(),
                Ok(false) => {
                    m.queue_full.inc();
                    if m.queue_full.get() % 1000 == 1 {
                        tracing::warn!(endpoint = %endpoint.name, dropped = m.queue_full.get(),
                            "webhook queue full: events dropped (webhooks.queue_size)");
                    }
                }
                Err(e) => {
                    m.unqueued.inc();
                    tracing::warn!(endpoint = %endpoint.name, error = %e, kind = ev.kind,
                        "webhook event dropped: its queue is unavailable");
                }
            }
        }
    }

    /// Reports, once across the survivors, what each dead node's clients can no longer
    /// report: their disconnects, users now offline, channels now vacated. The ids are
    /// derived from the dead node and client, so a survivor that takes over from a
    /// survivor that died mid-way repeats them with the same ids.
    async fn report_dead(&self, cluster: &Cluster) -> Result<(), WebhookError> {
        for uid in cluster.claim_dead(self.lease * 4).await? {
            let remains = cluster.take_remains(&uid).await?;
            tracing::info!(node = %uid, clients = remains.clients.len(),
                "reporting the webhook events of a dead node");
            self.emit_remains(&remains).await;
            cluster.bury(&uid).await?;
        }
        Ok(())
    }

    async fn emit_remains(&self, remains: &Remains) {
        let node = self.node.as_str();
        let uid = &remains.uid;
        for (client, user) in &remains.clients {
            let mut ev = Event::new("disconnect", node);
            ev.id = format!("{uid}.{client}.disconnect");
            (ev.client, ev.user, ev.reason) =
                (Some(client.as_str()), Some(user.as_str()), Some(NODE_LOST));
            self.emit(&ev, None).await;
        }
        for user in &remains.offline {
            let mut ev = Event::new("offline", node);
            ev.id = format!("{uid}.{user}.offline");
            (ev.user, ev.last_seen) = (Some(user.as_str()), Some(now_ms()));
            self.emit(&ev, None).await;
        }
        for channel in &remains.vacated {
            let mut ev = Event::new("vacated", node);
            ev.id = format!("{uid}.{channel}.vacated");
            ev.channel = Some(channel.as_str());
            self.emit(&ev, Some(channel)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_reports_and_counts_them_without_waiting() {
        let (tx, _rx) = mpsc::channel(1);
        let metrics = Arc::new(Metrics::default());
        let hooks = Webhooks {
            intake: tx,
            publications: false,
            metrics: metrics.clone(),
        };
        for user in ["a", "b", "c"] {
            hooks.on_lifecycle(Lifecycle::UserOnline { user: user.into() });
        }
        assert_eq!(metrics.webhooks.buffer_full.get(), 2);
    }

    #[test]
    fn endpoints_filter_by_kind_and_namespace() {
        let endpoint = Endpoint {
            name: "app".into(),
            url: String::new(),
            secret: String::new(),
            kinds: vec!["join".into(), "online".into()],
            namespaces: vec!["device".into()],
            queue: Queue::Memory {
                events: std::sync::Mutex::default(),
            },
            wake: Notify::new(),
        };
        assert!(endpoint.wants("join", Some("device:acme.1")));
        assert!(!endpoint.wants("join", Some("chat:1")));
        assert!(!endpoint.wants("leave", Some("device:acme.1")));
        assert!(endpoint.wants("online", None));
    }
}
