//! The node: the public face of one gateway process. Publish, presence, history,
//! server-side subscribe and disconnect, for transports and the server API alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use switchboard_protocol::command::HistoryRequest;
use switchboard_protocol::{
    ClientInfo, Disconnect, HistoryResult, PresenceResult, PresenceStatsResult, Publication,
    SharedJson, StreamPosition,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Verifier};
use crate::config::{Config, NamespaceConfig};
use crate::engine::memory::MemoryEngine;
use crate::engine::{Engine, EngineError, EventHandler, HistoryOptions, HistoryQuery};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::rules::{RuleError, Rules};
use crate::session::Session;
use crate::status::{Change, StatusTracker, UserStatus};
use crate::typing::{self, Signal, Typing};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The channel name or namespace was refused.
    #[error(transparent)]
    Channel(#[from] RuleError),
    /// The feature (presence, history) is off for the channel.
    #[error("not available")]
    NotAvailable,
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// `since` names a position in another epoch of the stream: it no longer exists.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Token keys could not be loaded.
    #[error("token keys: {0}")]
    Auth(#[from] AuthError),
}

/// One gateway process.
pub struct Node {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Channel rules.
    pub rules: Rules,
    /// Token verification.
    pub verifier: Verifier,
    /// Local index of sessions.
    pub hub: Arc<Hub>,
    /// Pub/sub, presence and history.
    pub engine: Arc<dyn Engine>,
    /// Node name.
    pub name: String,
    /// Start time, for uptime.
    pub started: Instant,
    /// Cancelled on shutdown; every session's token is a child.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Counters and gauges (shared with the hub, which counts deliveries).
    pub metrics: Arc<Metrics>,
    /// Who is typing where.
    pub typing: Typing,
    /// Online status of users.
    pub status: StatusTracker,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Options of a publication from the server side.
#[derive(Debug, Default, Clone)]
pub struct PublishOptions {
    /// Tags attached to the publication.
    pub tags: Option<Arc<BTreeMap<String, String>>>,
    /// Do not store in history.
    pub skip_history: bool,
}

impl Node {
    /// A node with the in-memory engine.
    ///
    /// # Errors
    /// [`StartError`] when token keys can not be loaded.
    pub fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let cap = config.history_max_bytes;
        Self::with_engine(config, move |handler| {
            Arc::new(MemoryEngine::new(handler, cap))
        })
    }

    /// A node with the engine `make_engine` builds around the hub.
    ///
    /// # Errors
    /// [`StartError`] when token keys can not be loaded.
    pub fn with_engine(
        config: Config,
        make_engine: impl FnOnce(Arc<dyn EventHandler>) -> Arc<dyn Engine>,
    ) -> Result<Arc<Self>, StartError> {
        let metrics = Arc::new(Metrics::new(config.namespaces.keys().map(String::as_str)));
        let hub = Arc::new(Hub::with_metrics(metrics.clone()));
        let engine = make_engine(hub.clone());
        let name = if config.node_name.is_empty() {
            format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            config.node_name.clone()
        };
        Ok(Arc::new(Self {
            rules: Rules::new(&config),
            verifier: Verifier::new(&config)?,
            config: Arc::new(config),
            hub,
            engine,
            name,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            metrics,
            typing: Typing::default(),
            status: StatusTracker::default(),
        }))
    }

    /// History options of a namespace, if it keeps history.
    pub fn history_options(&self, ns: &NamespaceConfig) -> Option<HistoryOptions> {
        (ns.history_size > 0 && !ns.history_ttl.is_zero()).then_some(HistoryOptions {
            size: ns.history_size,
            ttl: ns.history_ttl,
        })
    }

    /// Publishes `data` into `channel` from the server side.
    ///
    /// # Errors
    /// Invalid or unknown channel, or an engine failure.
    pub async fn publish(
        &self,
        channel: &str,
        data: SharedJson,
        opts: PublishOptions,
    ) -> Result<StreamPosition, NodeError> {
        let ns = self.rules.namespace(channel)?.clone();
        let history = if opts.skip_history {
            None
        } else {
            self.history_options(&ns)
        };
        self.publish_with(channel, history, data, None, opts.tags)
            .await
    }

    /// Publishes into a channel whose namespace is already resolved.
    ///
    /// # Errors
    /// An engine failure.
    pub async fn publish_in(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        data: SharedJson,
        info: Option<ClientInfo>,
        tags: Option<Arc<BTreeMap<String, String>>>,
    ) -> Result<StreamPosition, NodeError> {
        self.publish_with(channel, self.history_options(ns), data, info, tags)
            .await
    }

    async fn publish_with(
        &self,
        channel: &str,
        history: Option<HistoryOptions>,
        data: SharedJson,
        info: Option<ClientInfo>,
        tags: Option<Arc<BTreeMap<String, String>>>,
    ) -> Result<StreamPosition, NodeError> {
        let publication = Publication {
            data,
            info,
            offset: 0,
            tags,
        };
        let pos = self
            .engine
            .publish(&Arc::from(channel), publication, history)
            .await?;
        self.metrics.publications.inc();
        self.metrics.namespaces.published(channel);
        Ok(pos)
    }

    /// Clients present in a channel.
    ///
    /// # Errors
    /// Unknown channel, presence off, engine failure.
    pub async fn presence(&self, channel: &str) -> Result<PresenceResult, NodeError> {
        if !self.rules.namespace(channel)?.presence {
            return Err(NodeError::NotAvailable);
        }
        Ok(PresenceResult {
            presence: self.engine.presence(channel).await?,
        })
    }

    /// Presence counts of a channel.
    ///
    /// # Errors
    /// Unknown channel, presence off, engine failure.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, NodeError> {
        if !self.rules.namespace(channel)?.presence {
            return Err(NodeError::NotAvailable);
        }
        Ok(self.engine.presence_stats(channel).await?)
    }

    /// A channel's history.
    ///
    /// # Errors
    /// Unknown channel, history off, engine failure.
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, NodeError> {
        let ns = self.rules.namespace(channel)?;
        if self.history_options(ns).is_none() {
            return Err(NodeError::NotAvailable);
        }
        let since_epoch = query.since.as_ref().map(|s| s.epoch.clone());
        let h = self.engine.history(channel, query).await?;
        // Offsets of another epoch say nothing about this stream: paging from one would
        // silently skip or repeat publications.
        if since_epoch.is_some_and(|e| !e.is_empty() && e != h.epoch) {
            return Err(NodeError::UnrecoverablePosition);
        }
        Ok(h)
    }

    /// Drops a channel's history.
    ///
    /// # Errors
    /// Unknown channel, engine failure.
    pub async fn remove_history(&self, channel: &str) -> Result<(), NodeError> {
        self.rules.namespace(channel)?;
        Ok(self.engine.remove_history(channel).await?)
    }

    /// Disconnects a user's sessions on this node (one of them if `client` is given).
    /// Returns how many were closed.
    pub fn disconnect_user(&self, user: &str, client: Option<&str>, reason: Disconnect) -> usize {
        let sessions = self.user_sessions(user, client);
        for s in &sessions {
            s.close(reason);
        }
        sessions.len()
    }

    /// A user's sessions on this node, or only the one with id `client` when given.
    pub fn user_sessions(&self, user: &str, client: Option<&str>) -> Vec<Arc<Session>> {
        let mut sessions = self.hub.user_sessions(user);
        sessions.retain(|s| client.is_none_or(|c| *s.id == *c));
        sessions
    }

    /// Subscribes a user's sessions on this node to `channel` (server-side).
    /// Returns how many sessions were subscribed.
    ///
    /// # Errors
    /// Invalid or unknown channel.
    pub async fn subscribe_user(
        &self,
        user: &str,
        channel: &str,
        client: Option<&str>,
    ) -> Result<usize, NodeError> {
        self.rules.namespace(channel)?;
        let mut n = 0;
        for s in self.user_sessions(user, client) {
            if s.server_subscribe(channel).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Unsubscribes a user's sessions on this node from `channel`.
    /// Returns how many sessions were unsubscribed.
    ///
    /// # Errors
    /// Invalid or unknown channel.
    pub async fn unsubscribe_user(
        &self,
        user: &str,
        channel: &str,
        client: Option<&str>,
    ) -> Result<usize, NodeError> {
        self.rules.namespace(channel)?;
        let mut n = 0;
        for s in self.user_sessions(user, client) {
            if s.server_unsubscribe(channel).await {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A connection of `user` was authenticated: announce them online if they were not.
    pub fn user_connected(self: &Arc<Self>, user: &Arc<str>) {
        if self.status.connected(user) == Change::Online {
            let status = UserStatus {
                user: user.to_string(),
                online: true,
                connections: 1,
                last_seen: 0,
            };
            self.announce_status(&status);
        }
    }

    /// A connection of `user` closed: after the debounce, announce them offline unless
    /// they came back.
    pub fn user_disconnected(self: &Arc<Self>, user: &str) {
        if let Change::MaybeOffline(generation) = self.status.disconnected(user) {
            let node = self.clone();
            let user = user.to_owned();
            let debounce = self.config.user_status.offline_debounce;
            self.tracker.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(debounce) => {}
                    () = node.shutdown.cancelled() => return,
                }
                if let Some(status) = node.status.settle_offline(&user, generation) {
                    node.announce_status(&status);
                }
            });
        }
    }

    fn announce_status(self: &Arc<Self>, status: &UserStatus) {
        let channel = format!("{}:{}", self.config.user_status.namespace, status.user);
        if self.rules.namespace(&channel).is_err() {
            return;
        }
        let Ok(raw) = serde_json::value::RawValue::from_string(
            serde_json::to_string(status).unwrap_or_default(),
        ) else {
            return;
        };
        let node = self.clone();
        tokio::spawn(async move {
            if let Err(e) = node
                .publish(&channel, Arc::from(raw), PublishOptions::default())
                .await
            {
                tracing::warn!(%channel, error = %e, "status announcement failed");
            }
        });
    }

    /// Status of up to `limit` users.
    pub fn user_status(&self, users: &[String]) -> Vec<UserStatus> {
        self.status.query(users)
    }

    /// Handles a client's signal in a typing namespace: forwards it unless throttled,
    /// and arranges the server's stop signal when it expires.
    ///
    /// # Errors
    /// An engine failure.
    pub async fn typing_signal(
        self: &Arc<Self>,
        channel: &str,
        ns: &NamespaceConfig,
        info: ClientInfo,
        data: SharedJson,
        tags: Option<Arc<BTreeMap<String, String>>>,
    ) -> Result<(), NodeError> {
        let channel: Arc<str> = Arc::from(channel);
        let stop = typing::is_stop(&data);
        match self
            .typing
            .signal(&channel, &info, stop, ns.typing_interval, ns.typing_timeout)
        {
            Signal::Throttled => return Ok(()),
            Signal::Stop => {}
            Signal::Forward(deadline) => {
                let node = self.clone();
                let (ch, user) = (channel.clone(), info.user.clone());
                self.tracker.spawn(async move {
                    let mut deadline = deadline;
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep_until(deadline) => {}
                            () = node.shutdown.cancelled() => return,
                        }
                        match node.typing.expire(&ch, &user) {
                            Ok(Some(info)) => {
                                node.publish_typing_stop(&ch, info).await;
                                return;
                            }
                            Ok(None) => return,
                            Err(later) => deadline = later,
                        }
                    }
                });
            }
        }
        self.engine
            .publish(
                &channel,
                Publication {
                    data,
                    info: Some(info),
                    offset: 0,
                    tags,
                },
                None,
            )
            .await?;
        Ok(())
    }

    /// Publishes the server's "stopped typing" signal for `info.user`.
    pub async fn publish_typing_stop(&self, channel: &Arc<str>, info: ClientInfo) {
        let publication = Publication {
            data: typing::stop_payload(),
            info: Some(info),
            offset: 0,
            tags: None,
        };
        if let Err(e) = self.engine.publish(channel, publication, None).await {
            tracing::warn!(%channel, error = %e, "typing stop failed");
        }
    }

    /// Runs periodic housekeeping until shutdown.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = node.shutdown.cancelled() => return,
                }
                node.engine.maintain().await;
                node.status.sweep(node.config.user_status.last_seen_ttl);
            }
        });
    }

    /// Starts shutdown: every session is told to reconnect elsewhere.
    pub fn begin_shutdown(&self) {
        self.tracker.close();
        self.shutdown.cancel();
    }
}

/// Maps a `history` request to an engine query (limit 0: position only; negative: all).
pub fn history_query(req: &HistoryRequest) -> HistoryQuery {
    HistoryQuery {
        since: req.since.clone(),
        limit: usize::try_from(req.limit).ok(),
        reverse: req.reverse,
        ensure: None,
    }
}
