//! The node: the public face of one gateway process. Publish, presence, history,
//! server-side subscribe and disconnect, for transports and the server API alike.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::cluster::Dispatch;
use crate::config::{Config, EngineKind, NamespaceConfig};
use crate::engine::memory::MemoryEngine;
use crate::engine::persistence::datafile::DataFile;
use crate::engine::persistence::PersistError;
use crate::engine::redis::RedisEngine;
use crate::engine::{Engine, EngineError, EventHandler, HistoryOptions, HistoryQuery};
use crate::hooks::{Hooks, Lifecycle, NoHooks};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::revocation::{Revocation, RevocationStore};
use crate::rules::{RuleError, Rules};
use crate::session::{Session, EXCLUDE_CLIENT_TAG};
use crate::status::{now_ms, Change, StatusTracker, UserStatus};
use crate::typing::{self, Expiry, Signal, TypingStore};

mod cluster;
mod inbox;
mod kept;
use crate::upstream::Upstream;
pub use inbox::{inbox_keep, read_push_data, InboxChannel, InboxUpdate, RECEIPT_EVENT};

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
    /// The engine could not be set up (a malformed Redis URL).
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// Webhooks could not be set up.
    #[error("webhooks: {0}")]
    Webhooks(#[from] crate::webhooks::WebhookError),
    /// The data directory could not be opened or read.
    #[error("persistence: {0}")]
    Persistence(#[from] PersistError),
}

/// One gateway process.
pub struct Node {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Channel rules.
    pub rules: Rules,
    /// Token verification.
    pub verifier: Verifier,
    /// Local index of sessions; sessions reach it through the node's methods.
    hub: Arc<Hub>,
    /// Pub/sub, presence and history.
    engine: Arc<dyn Engine>,
    /// Keeps each channel's upstream subscription in step with the hub.
    upstream: Upstream,
    /// Node name.
    pub name: String,
    /// Unique id of this process, in `info` and between nodes.
    pub uid: String,
    /// Start time, for uptime.
    pub started: Instant,
    /// Cancelled on shutdown; every session's token is a child.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Counters and gauges (shared with the hub, which counts deliveries).
    pub metrics: Arc<Metrics>,
    /// The limits and byte count every session's outbox shares.
    pub(crate) outboxes: Arc<crate::outbox::Budget>,
    /// Who is typing where (shared by the nodes of a shared engine).
    typing: Arc<dyn TypingStore>,
    /// Users' delivered and read positions (shared by the nodes of a shared engine).
    inbox: Arc<dyn crate::inbox::InboxStore>,
    /// Delivered positions noted on the delivery path, on their way to `inbox`.
    inbox_pending: inbox::PendingMarks,
    /// Online status of users.
    status: StatusTracker,
    /// Proxies to the app backend.
    pub proxies: crate::proxy::Proxies,
    /// Revoked tokens and invalidated users.
    pub revocations: Arc<dyn RevocationStore>,
    /// Revocations applied here (see [`Node::revocations_applied`]).
    revocations_applied: AtomicU64,
    /// Observes the hook points (connect, online, occupied, join, ...).
    hooks: Arc<dyn Hooks>,
    /// The operator console, when `admin.enabled`.
    pub admin: Option<Arc<crate::admin::Console>>,
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

/// A publication to hand the engine, which gives it its offset. Whom it skips leaves
/// the tags ([`EXCLUDE_CLIENT_TAG`], which the transports and the server API set) for
/// [`Publication::exclude_client`]: plumbing that no client gets to see.
fn new_publication(
    data: SharedJson,
    info: Option<ClientInfo>,
    tags: Option<Arc<BTreeMap<String, String>>>,
) -> Publication {
    let mut exclude_client = None;
    let tags = match tags {
        Some(tags) if tags.contains_key(EXCLUDE_CLIENT_TAG) => {
            let mut tags = Arc::unwrap_or_clone(tags);
            exclude_client = tags.remove(EXCLUDE_CLIENT_TAG).map(Arc::from);
            (!tags.is_empty()).then(|| Arc::new(tags))
        }
        tags => tags,
    };
    Publication {
        data,
        info,
        offset: 0,
        tags,
        exclude_client,
    }
}

impl Node {
    /// A node with the engine its configuration names. Must run inside a Tokio runtime
    /// (the Redis engine starts its pub/sub task).
    ///
    /// # Errors
    /// [`StartError`] when token keys can not be loaded or the engine is misconfigured.
    pub fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let cap = config.history_max_bytes;
        let lease = config.presence_lease;
        match config.engine {
            EngineKind::Memory if config.persistence.enabled() => {
                let persistence = config.persistence.clone();
                Self::with_engine(config, move |handler, _| {
                    let store = DataFile::open(&persistence.dir)?;
                    let engine =
                        MemoryEngine::persistent(handler, cap, Box::new(store), &persistence)?;
                    Ok(Arc::new(engine.with_presence_lease(lease)))
                })
            }
            EngineKind::Memory => Self::with_engine(config, move |handler, _| {
                Ok(Arc::new(
                    MemoryEngine::new(handler, cap).with_presence_lease(lease),
                ))
            }),
            EngineKind::Redis => {
                let redis = config.redis.clone();
                Self::with_engine(config, move |handler, shutdown| {
                    Ok(RedisEngine::connect(
                        handler,
                        &redis,
                        lease,
                        shutdown.clone(),
                    )?)
                })
            }
        }
    }

    /// A node with the engine `make_engine` builds around the hub; the engine may stop
    /// its background work when the node's shutdown token is cancelled.
    ///
    /// # Errors
    /// [`StartError`] when token keys can not be loaded or the engine fails.
    pub fn with_engine(
        config: Config,
        make_engine: impl FnOnce(
            Arc<dyn EventHandler>,
            &CancellationToken,
        ) -> Result<Arc<dyn Engine>, StartError>,
    ) -> Result<Arc<Self>, StartError> {
        let metrics = Arc::new(Metrics::new(config.namespaces.keys().map(String::as_str)));
        let hub = Arc::new(Hub::with_metrics(metrics.clone()));
        let shutdown = CancellationToken::new();
        let dispatch = Arc::new(Dispatch::new(hub.clone()));
        let engine = make_engine(dispatch.clone(), &shutdown)?;
        let name = if config.node_name.is_empty() {
            format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            config.node_name.clone()
        };
        let proxies = crate::proxy::Proxies::new(&config, metrics.clone());
        let uid = uuid::Uuid::new_v4().to_string();
        let hooks: Arc<dyn Hooks> = match crate::webhooks::Webhooks::start(
            &config,
            &uid,
            &name,
            proxies.http(),
            metrics.clone(),
            &shutdown,
        )? {
            Some(webhooks) => webhooks,
            None => Arc::new(NoHooks),
        };
        let revocations = engine.clone().revocations();
        let typing = engine.clone().typing();
        let inbox = engine.clone().inbox();
        let config_admin = config
            .admin
            .enabled
            .then(|| Arc::new(crate::admin::Console::new(&config.admin)));
        let outboxes = crate::outbox::Budget::new(&config.limits, metrics.clone());
        let node = Arc::new(Self {
            rules: Rules::new(&config),
            verifier: Verifier::new(&config)?,
            config: Arc::new(config),
            hub,
            engine,
            upstream: Upstream::new(hooks.clone()),
            hooks,
            name,
            started: Instant::now(),
            shutdown,
            tracker: TaskTracker::new(),
            metrics,
            outboxes,
            typing,
            inbox,
            inbox_pending: inbox::PendingMarks::default(),
            status: StatusTracker::default(),
            proxies,
            revocations,
            revocations_applied: AtomicU64::new(0),
            uid,
            admin: config_admin,
        });
        dispatch.link(&node);
        Ok(node)
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

    /// Publishes a client publication as the publish proxy shaped it: with its tags,
    /// and kept out of history when `skip_history`.
    ///
    /// # Errors
    /// An engine failure.
    pub async fn publish_shaped(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        data: SharedJson,
        info: ClientInfo,
        tags: Option<Arc<BTreeMap<String, String>>>,
        skip_history: bool,
    ) -> Result<StreamPosition, NodeError> {
        let history = if skip_history {
            None
        } else {
            self.history_options(ns)
        };
        self.publish_with(channel, history, data, Some(info), tags)
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
        let channel: Arc<str> = Arc::from(channel);
        let observed = self
            .hooks
            .observes_publications()
            .then(|| (data.clone(), info.clone()));
        let publication = new_publication(data, info, tags);
        let pos = self.engine.publish(&channel, publication, history).await?;
        self.metrics.publications.inc();
        self.metrics.namespaces.published(&channel);
        if let Some((data, info)) = observed {
            self.hooks.on_lifecycle(Lifecycle::Published {
                channel,
                data,
                info,
            });
        }
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

    /// Ends what `revocation` covers on this node: connections holding a revoked
    /// connection token close, subscriptions granted by a revoked subscription token
    /// end. A user's revocation also drops the subscribe proxy's cached answers for
    /// them.
    pub async fn apply_revocation(&self, revocation: &Revocation) {
        // Before looking for sessions: a connect that registers after the look sees
        // the count moved (see `revocations_applied`).
        self.revocations_applied.fetch_add(1, Ordering::SeqCst);
        let sessions = match revocation {
            Revocation::Token { .. } => self.hub.sessions(),
            Revocation::User { user, .. } => {
                self.proxies.cache().forget_user(user);
                self.hub.user_sessions(user)
            }
        };
        for s in sessions {
            s.apply_revocation(revocation).await;
        }
    }

    /// How many revocations this node has applied. A connect reads it before its
    /// token is checked and again once its session is registered: if it moved, a
    /// revocation may have missed the session, which checks its token again.
    pub fn revocations_applied(&self) -> u64 {
        self.revocations_applied.load(Ordering::SeqCst)
    }

    /// A client authenticated (hook point `connect`).
    pub fn client_connected(&self, client: &Arc<str>, user: &Arc<str>) {
        self.hooks.on_lifecycle(Lifecycle::Connected {
            client: client.clone(),
            user: user.clone(),
        });
    }

    /// An authenticated client's connection ended (hook point `disconnect`).
    pub fn client_disconnected(&self, client: &Arc<str>, user: &Arc<str>, reason: Disconnect) {
        self.hooks.on_lifecycle(Lifecycle::Disconnected {
            client: client.clone(),
            user: user.clone(),
            reason,
        });
    }

    /// A connection of `user` was authenticated: announce them online if they were not.
    pub fn user_connected(self: &Arc<Self>, user: &Arc<str>) {
        // Reported under the tracker's lock: an offline settling at the same moment is
        // reported before this online, never after it.
        let online = || {
            self.hooks
                .on_lifecycle(Lifecycle::UserOnline { user: user.clone() });
        };
        if self.status.connected_then(user, online) == Change::Online {
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
                let offline = |status: &UserStatus| {
                    node.hooks.on_lifecycle(Lifecycle::UserOffline {
                        user: Arc::from(user.as_str()),
                        last_seen: status.last_seen,
                    });
                };
                if let Some(status) = node.status.settle_offline_then(&user, generation, offline) {
                    node.announce_status(&status);
                }
            });
        }
    }

    fn announce_status(self: &Arc<Self>, status: &UserStatus) {
        let channel = format!("{}:{}", self.config.user_status.namespace, status.user);
        let feed = &self.config.user_status.feed;
        let channels: Vec<String> = [channel, feed.clone()]
            .into_iter()
            .filter(|c| !c.is_empty() && self.rules.namespace(c).is_ok())
            .collect();
        if channels.is_empty() {
            return;
        }
        let Ok(raw) = serde_json::value::RawValue::from_string(
            serde_json::to_string(status).unwrap_or_default(),
        ) else {
            return;
        };
        let node = self.clone();
        let status = status.clone();
        tokio::spawn(async move {
            if !node.status_changed(&status).await {
                return;
            }
            let raw: SharedJson = Arc::from(raw);
            for channel in channels {
                if let Err(e) = node
                    .publish(&channel, raw.clone(), PublishOptions::default())
                    .await
                {
                    tracing::warn!(%channel, error = %e, "status announcement failed");
                }
            }
        });
    }

    /// Status of up to `limit` users.
    ///
    /// With a shared engine, `connections` counts every live node, a user connected
    /// on any node is online, and `last_seen` is the latest any node recorded.
    pub async fn user_status(&self, users: &[String]) -> Vec<UserStatus> {
        let mut statuses = self.status.query(users);
        let (counts, seen) = tokio::join!(
            self.engine.connection_counts(users),
            self.engine.last_seen(users)
        );
        match seen {
            Ok(Some(seen)) => {
                for (s, at) in statuses.iter_mut().zip(seen) {
                    s.last_seen = s.last_seen.max(at);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "last-seen times of other nodes unknown"),
        }
        match counts {
            Ok(Some(counts)) => {
                for (s, n) in statuses.iter_mut().zip(counts) {
                    s.online |= n > 0;
                    s.connections = n;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "user status of other nodes unknown"),
        }
        statuses
    }

    /// Whether `user`'s status change should be announced: with a shared engine, a user
    /// still (or already) connected on another node did not change.
    async fn status_changed(&self, status: &UserStatus) -> bool {
        let users = [status.user.clone()];
        match self.engine.connection_counts(&users).await {
            Ok(Some(counts)) => {
                let n = counts.first().copied().unwrap_or(0);
                if status.online {
                    n <= 1
                } else {
                    n == 0
                }
            }
            _ => true,
        }
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
            .await?
        {
            Signal::Throttled => return Ok(()),
            Signal::Stop => {}
            Signal::Forward(deadline) => {
                let node = self.clone();
                let retry = ns.typing_timeout;
                let (ch, user) = (channel.clone(), info.user.clone());
                self.tracker.spawn(async move {
                    let mut deadline = deadline;
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep_until(deadline) => {}
                            () = node.shutdown.cancelled() => return,
                        }
                        match node.typing.expire(&ch, &user).await {
                            Ok(Expiry::Ended(info)) => {
                                node.publish_typing_stop(&ch, info).await;
                                return;
                            }
                            Ok(Expiry::Gone) => return,
                            Ok(Expiry::Later(later)) => deadline = later,
                            // Ask again shortly: the stop is late rather than lost.
                            Err(e) => {
                                tracing::warn!(channel = %ch, error = %e, "typing expiry check failed");
                                deadline = tokio::time::Instant::now() + retry;
                            }
                        }
                    }
                });
            }
        }
        self.engine
            .publish(&channel, new_publication(data, Some(info), tags), None)
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
            exclude_client: None,
        };
        if let Err(e) = self.engine.publish(channel, publication, None).await {
            tracing::warn!(%channel, error = %e, "typing stop failed");
        }
    }

    /// Adds `session` to a channel's local subscribers, with how it wants the
    /// channel's events (`None`: all, as they are); the channel's first local
    /// subscriber subscribes the node upstream.
    ///
    /// # Errors
    /// The engine could not subscribe; the session was not added.
    pub async fn subscribe_session(
        &self,
        channel: &Arc<str>,
        session: &Arc<Session>,
        delivery: Option<Arc<crate::delivery::Delivery>>,
    ) -> Result<(), NodeError> {
        Ok(self
            .upstream
            .subscribe(&self.hub, &*self.engine, channel, session, delivery)
            .await?)
    }

    /// A delta subscriber of `channel` recovered up to `last`, the stream's latest
    /// publication: the channel's next one goes to delta subscribers as a delta of it.
    pub(crate) fn continue_deltas(&self, channel: &str, last: &Publication) {
        self.hub.seed_delta_base(channel, last.offset, &last.data);
    }

    /// Adds an operator console's `session` to a channel's watchers: it receives the
    /// channel's events without being a subscriber (no presence, counts or hooks). A
    /// channel of the console's feed stays on this node; the node computes it (see
    /// [`crate::admin::feed`]).
    ///
    /// # Errors
    /// The engine could not subscribe; the session was not added.
    pub async fn watch_channel(
        self: &Arc<Self>,
        channel: &Arc<str>,
        session: &Arc<Session>,
    ) -> Result<(), NodeError> {
        if crate::admin::feed::is_feed(channel) {
            self.hub.watch(channel, session);
            if let Some(console) = &self.admin {
                console.feed.wake(self);
            }
            return Ok(());
        }
        Ok(self
            .upstream
            .watch(&self.hub, &*self.engine, channel, session)
            .await?)
    }

    /// Removes a watcher added by [`Node::watch_channel`].
    pub async fn unwatch_channel(&self, channel: &str, session: &Session) {
        if crate::admin::feed::is_feed(channel) {
            self.hub.unwatch(channel, session);
            return;
        }
        self.upstream
            .unwatch(&self.hub, &*self.engine, channel, session)
            .await;
    }

    /// The console feed's channels watched on this node.
    pub(crate) fn watched_feeds(&self) -> Vec<Arc<str>> {
        let mut feeds = self.hub.watched_channels();
        feeds.retain(|c| crate::admin::feed::is_feed(c));
        feeds
    }

    /// Delivers `data` as a publication to this node's watchers and subscribers of
    /// `channel`, without the engine: for what this node computed for its own consoles.
    pub(crate) fn deliver_local(&self, channel: &Arc<str>, data: SharedJson) {
        let publication = Publication {
            data,
            info: None,
            offset: 0,
            tags: None,
            exclude_client: None,
        };
        self.hub.broadcast(&crate::event::ChannelEvent::new(
            channel.clone(),
            crate::event::EventKind::Publication(publication),
        ));
    }

    /// Removes `session` from a channel's local subscribers; the last one unsubscribes
    /// the node upstream.
    pub async fn unsubscribe_session(&self, channel: &str, session: &Session) {
        self.upstream
            .unsubscribe(&self.hub, &*self.engine, channel, session)
            .await;
    }

    /// Reads a channel's stream without namespace checks (subscribe and recovery have
    /// checked already).
    ///
    /// # Errors
    /// An engine failure.
    pub async fn read_stream(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, NodeError> {
        Ok(self.engine.history(channel, query).await?)
    }

    /// A client joined a channel: presence (when kept) and the join push (when sent).
    ///
    /// # Errors
    /// An engine failure.
    pub async fn join(
        &self,
        channel: &Arc<str>,
        ns: &NamespaceConfig,
        info: &ClientInfo,
    ) -> Result<(), NodeError> {
        let first_of_user = if ns.presence {
            self.engine.add_presence(channel, info.clone()).await?
        } else {
            true
        };
        self.hooks.on_lifecycle(Lifecycle::Subscribed {
            channel: channel.clone(),
            info: info.clone(),
        });
        if ns.presence && (first_of_user || !ns.presence_per_user) {
            self.hooks.on_lifecycle(Lifecycle::Joined {
                channel: channel.clone(),
                info: info.clone(),
            });
        }
        if ns.join_leave && (first_of_user || !ns.presence_per_user) {
            self.engine.publish_join(channel, info.clone()).await?;
        }
        Ok(())
    }

    /// A client left a channel: presence, typing and the leave push. Failures are
    /// logged; the lease removes a presence entry that could not be removed now.
    pub async fn leave(&self, channel: &Arc<str>, ns: &NamespaceConfig, info: ClientInfo) {
        let mut last_of_user = true;
        if ns.presence {
            match self
                .engine
                .remove_presence(channel, &info.client, &info.user)
                .await
            {
                Ok(last) => last_of_user = last,
                Err(e) => tracing::warn!(%channel, error = %e, "presence removal failed"),
            }
        }
        self.hooks.on_lifecycle(Lifecycle::Unsubscribed {
            channel: channel.clone(),
            info: info.clone(),
        });
        if ns.presence && (last_of_user || !ns.presence_per_user) {
            self.hooks.on_lifecycle(Lifecycle::Left {
                channel: channel.clone(),
                info: info.clone(),
            });
        }
        if ns.typing {
            match self.typing.stop(channel, &info.user).await {
                Ok(Some(typing)) => self.publish_typing_stop(channel, typing).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(%channel, error = %e, "typing stop failed"),
            }
        }
        if ns.join_leave && (last_of_user || !ns.presence_per_user) {
            let _ = self.engine.publish_leave(channel, info).await;
        }
    }

    /// Registers an authenticated session under its user unless the user already has
    /// `limit` connections (0 = no limit), on this node or, with a shared engine, on
    /// any node. Returns false at the limit. If the engine can not count, the session
    /// is let in (counted here only): availability over the limit.
    pub async fn register_session(
        &self,
        user: &Arc<str>,
        session: &Arc<Session>,
        limit: usize,
    ) -> bool {
        if !self.hub.add_user_session(user, session, limit) {
            return false;
        }
        let (counted, ()) = tokio::join!(
            self.engine.count_connection(user, &self.uid, limit),
            self.record_seen(user)
        );
        match counted {
            Ok(true) => true,
            Ok(false) => {
                self.hub.remove_user_session(user, session);
                false
            }
            Err(e) => {
                tracing::warn!(%user, error = %e, "connection not counted across nodes");
                true
            }
        }
    }

    /// Unregisters a session from its user.
    pub async fn unregister_session(&self, user: &str, session: &Session) {
        self.hub.remove_user_session(user, session);
        let (uncounted, ()) = tokio::join!(
            self.engine.uncount_connection(user, &self.uid),
            self.record_seen(user)
        );
        if let Err(e) = uncounted {
            tracing::warn!(%user, error = %e, "connection not uncounted across nodes");
        }
    }

    /// Records now as the last-seen time of every user connected here (called every
    /// third of `presence_lease`), so a user whose node dies was last seen about when
    /// it died.
    pub(crate) async fn refresh_seen(&self) {
        let keep = self.config.user_status.last_seen_ttl;
        let users = self.hub.users();
        if let Err(e) = self.engine.refresh_seen(&users, now_ms(), keep).await {
            tracing::warn!(error = %e, "last-seen refresh failed");
        }
    }

    /// Records now as `user`'s last-seen time where every node reads it.
    async fn record_seen(&self, user: &str) {
        let keep = self.config.user_status.last_seen_ttl;
        if let Err(e) = self.engine.record_seen(user, now_ms(), keep).await {
            tracing::warn!(%user, error = %e, "last-seen time not shared");
        }
    }

    /// Channels with subscribers on this node, with their local counts.
    pub fn local_channels(&self) -> Vec<(Arc<str>, usize)> {
        self.hub.channels()
    }

    /// The channel's subscribers on this node, for a transport's own pushes about it.
    pub fn local_subscribers(&self, channel: &str) -> Vec<Arc<Session>> {
        self.hub.subscribers(channel)
    }

    /// Distinct users and sessions on this node.
    pub fn local_counts(&self) -> (usize, usize) {
        self.hub.counts()
    }

    /// Whether the engine can serve requests.
    pub async fn ready(&self) -> bool {
        self.engine.ready().await
    }

    /// Ends the engine's work once connections drained (persistence writes the rest).
    pub async fn close(&self) {
        self.engine.close().await;
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
