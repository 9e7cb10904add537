//! A session: one connection's identity, subscriptions, limits and bounded outbox.
//!
//! It never knows the wire protocol: transports call its methods with decoded
//! requests and encode what comes back. Subscriptions go through a short "pending"
//! phase so that the subscribe reply always precedes the channel's events, with no
//! gap and no duplicate between recovered publications and live ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use switchboard_protocol::command::{ConnectRequest, HistoryRequest, SubscribeRequest};
use switchboard_protocol::{
    ClientInfo, ConnectResult, Disconnect, ErrorCode, HistoryResult, PresenceResult,
    PresenceStatsResult, RefreshResult, SharedJson, StreamPosition, SubRefreshResult,
    SubscribeResult,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{now_secs, AuthError, Identity};
use crate::config::NamespaceConfig;
use crate::engine::HistoryQuery;
use crate::event::{ChannelEvent, Control, Outgoing};
use crate::limiter::TokenBucket;
use crate::node::{Node, NodeError};
use crate::rules::RuleError;

/// What a failed command turns into for the client: an error reply, or a disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// Reply with this error; the connection stays.
    Reply(ErrorCode),
    /// Close the connection with this code.
    Disconnect(Disconnect),
}

impl From<ErrorCode> for SessionError {
    fn from(c: ErrorCode) -> Self {
        Self::Reply(c)
    }
}

impl From<RuleError> for SessionError {
    fn from(e: RuleError) -> Self {
        Self::Reply(match e {
            RuleError::InvalidName | RuleError::UnknownChannel => ErrorCode::UnknownChannel,
            RuleError::PermissionDenied => ErrorCode::PermissionDenied,
        })
    }
}

impl From<NodeError> for SessionError {
    /// The one place internal errors become what a client sees; details stay in logs.
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Channel(r) => r.into(),
            NodeError::NotAvailable => Self::Reply(ErrorCode::NotAvailable),
            NodeError::BadRequest(_) => Self::Reply(ErrorCode::BadRequest),
            NodeError::Engine(err) => {
                tracing::error!(error = %err, "engine error");
                Self::Reply(ErrorCode::Internal)
            }
        }
    }
}

/// Most users one `user_status` query may ask about.
pub const MAX_STATUS_USERS: usize = 1000;

/// Result type of session commands.
pub type SessionResult<T> = Result<T, SessionError>;

struct Sub {
    ns: Arc<NamespaceConfig>,
    info: ClientInfo,
    expires_at: Option<u64>,
    publish_rate: TokenBucket,
}

#[derive(Default)]
struct State {
    identity: Option<Arc<Identity>>,
    expires_at: Option<u64>,
    subs: HashMap<Arc<str>, Sub>,
    cleaned: bool,
}

struct Abuse {
    commands: TokenBucket,
    errors: u32,
}

/// One connection, shared between its transport tasks, the hub and the node.
pub struct Session {
    /// Connection id (sent to the client as `client`).
    pub id: Arc<str>,
    node: Arc<Node>,
    outbox: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
    disconnect: OnceLock<Disconnect>,
    pending_count: AtomicUsize,
    /// Events of channels whose subscribe reply is not queued yet. Short sections only.
    pending: Mutex<HashMap<Arc<str>, Vec<Arc<ChannelEvent>>>>,
    /// Short sections only; never held across an await.
    state: Mutex<State>,
    /// Per-command rate and error accounting. Short sections only.
    abuse: Mutex<Abuse>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

/// Marks subscriptions whose reply is on its way; completing it queues the reply
/// first, then the events that arrived meanwhile (skipping those already covered).
#[must_use = "complete() queues the reply and releases buffered events"]
pub struct Activation {
    session: Arc<Session>,
    channels: Vec<(Arc<str>, u64)>,
}

impl Activation {
    /// Queues `first` (the reply or push announcing the subscriptions), then releases
    /// buffered events.
    pub fn complete(mut self, first: Option<Outgoing>) {
        self.session
            .activate(first, std::mem::take(&mut self.channels));
    }
}

impl Drop for Activation {
    fn drop(&mut self) {
        if !self.channels.is_empty() {
            self.session
                .activate(None, std::mem::take(&mut self.channels));
        }
    }
}

/// Outcome of a successful connect.
pub struct Connected {
    /// The reply.
    pub result: ConnectResult,
    /// Server-side subscriptions to activate once the reply is queued.
    pub activation: Activation,
}

/// Outcome of a successful subscribe.
pub struct Subscribed {
    /// The reply.
    pub result: SubscribeResult,
    /// Activate once the reply is queued.
    pub activation: Activation,
}

impl Session {
    /// A new, unauthenticated session with an outbox of `limits.outbox_size`.
    pub fn new(node: Arc<Node>) -> (Arc<Self>, mpsc::Receiver<Outgoing>) {
        let limits = &node.config.limits;
        let (tx, rx) = mpsc::channel(limits.outbox_size);
        let abuse = Abuse {
            commands: TokenBucket::new(limits.command_rate, limits.command_burst),
            errors: 0,
        };
        let session = Arc::new(Self {
            id: uuid::Uuid::new_v4().to_string().into(),
            cancel: node.shutdown.child_token(),
            node,
            outbox: tx,
            disconnect: OnceLock::new(),
            pending_count: AtomicUsize::new(0),
            pending: Mutex::default(),
            state: Mutex::default(),
            abuse: Mutex::new(abuse),
        });
        (session, rx)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node this session belongs to.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Cancelled when the session must close (disconnect or shutdown).
    pub fn closed(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Why the session closed: the first disconnect asked for, or shutdown.
    pub fn disconnect_reason(&self) -> Disconnect {
        self.disconnect
            .get()
            .copied()
            .unwrap_or(if self.node.shutdown.is_cancelled() {
                Disconnect::SHUTDOWN
            } else {
                Disconnect::CONNECTION_CLOSED
            })
    }

    /// Closes the session with `reason`. The first reason wins; returns whether this
    /// call was the first.
    pub fn close(&self, reason: Disconnect) -> bool {
        let first = self.disconnect.set(reason).is_ok();
        self.cancel.cancel();
        first
    }

    /// The authenticated identity, once connected.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.state().identity.clone()
    }

    /// The user id, empty before connect.
    pub fn user(&self) -> Arc<str> {
        self.state()
            .identity
            .as_ref()
            .map(|i| i.user.clone())
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Queues an item. A full outbox means a slow client: it is disconnected.
    pub fn enqueue(&self, item: Outgoing) {
        match self.outbox.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.node.metrics.outbox_drops.inc();
                if self.close(Disconnect::SLOW) {
                    self.node.metrics.slow_disconnects.inc();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Delivers a channel event (called by the hub; never blocks).
    pub fn deliver(&self, event: &Arc<ChannelEvent>) {
        if self.pending_count.load(Ordering::Acquire) > 0 {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(buf) = pending.get_mut(&event.channel) {
                if buf.len() >= self.node.config.limits.outbox_size {
                    drop(pending);
                    self.node.metrics.outbox_drops.inc();
                    if self.close(Disconnect::SLOW) {
                        self.node.metrics.slow_disconnects.inc();
                    }
                    return;
                }
                buf.push(event.clone());
                return;
            }
            // Queue under the lock so an activation can not overtake this event.
            self.enqueue(Outgoing::Event(event.clone()));
            return;
        }
        self.enqueue(Outgoing::Event(event.clone()));
    }

    fn activate(&self, first: Option<Outgoing>, channels: Vec<(Arc<str>, u64)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(first) = first {
            self.enqueue(first);
        }
        for (channel, offset) in channels {
            if let Some(buf) = pending.remove(&channel) {
                self.pending_count.fetch_sub(1, Ordering::AcqRel);
                for ev in buf {
                    let o = ev.offset();
                    if o == 0 || o > offset {
                        self.enqueue(Outgoing::Event(ev));
                    }
                }
            }
        }
    }

    /// Counts one command against the rate limit.
    ///
    /// # Errors
    /// `TooManyRequests`, or a disconnect once the client persists.
    pub fn admit_command(&self) -> SessionResult<()> {
        let mut abuse = self.abuse.lock().unwrap_or_else(|e| e.into_inner());
        if abuse.commands.try_take() {
            return Ok(());
        }
        abuse.errors += 1;
        if abuse.errors > self.node.config.limits.max_protocol_errors {
            return Err(SessionError::Disconnect(Disconnect::TOO_MANY_REQUESTS));
        }
        Err(SessionError::Reply(ErrorCode::TooManyRequests))
    }

    /// Counts a protocol error (malformed or unknown command). Returns the disconnect
    /// to apply once the client has made too many.
    pub fn protocol_error(&self) -> Option<Disconnect> {
        let mut abuse = self.abuse.lock().unwrap_or_else(|e| e.into_inner());
        abuse.errors += 1;
        (abuse.errors > self.node.config.limits.max_protocol_errors)
            .then_some(Disconnect::BAD_REQUEST)
    }

    /// Unix time at which the connection expires unless refreshed.
    pub fn expires_at(&self) -> Option<u64> {
        self.state().expires_at
    }

    /// Sets when the connection expires (server API `refresh`); `None`: never. The
    /// reader notices a new deadline at its next wake-up (at most one ping interval).
    pub fn set_expires_at(&self, at: Option<u64>) {
        self.state().expires_at = at;
    }

    /// Whether `connect` succeeded.
    pub fn is_connected(&self) -> bool {
        self.state().identity.is_some()
    }

    /// Authenticates the session and makes its server-side subscriptions.
    ///
    /// # Errors
    /// Error replies for an expired token; disconnects for an invalid token, a second
    /// connect, the per-user connection limit or too many server-side channels.
    pub async fn connect(self: &Arc<Self>, req: ConnectRequest) -> SessionResult<Connected> {
        if self.is_connected() {
            return Err(SessionError::Disconnect(Disconnect::BAD_REQUEST));
        }
        let node = self.node.clone();
        let identity = match node.verifier.verify_connect(&req.token).await {
            Ok(id) => Arc::new(id),
            Err(AuthError::Expired) => {
                node.metrics.auth_failures.inc();
                return Err(ErrorCode::TokenExpired.into());
            }
            Err(AuthError::Invalid(why)) => {
                node.metrics.auth_failures.inc();
                tracing::info!(client = %self.id, reason = %why, "connect refused: invalid token");
                return Err(SessionError::Disconnect(Disconnect::INVALID_TOKEN));
            }
        };
        let limit = node.config.limits.max_connections_per_user;
        if !node.hub.add_user_session(&identity.user, self, limit) {
            tracing::info!(client = %self.id, user = %identity.user, "connect refused: connection limit");
            return Err(SessionError::Disconnect(Disconnect::CONNECTION_LIMIT));
        }
        {
            let mut st = self.state();
            st.identity = Some(identity.clone());
            st.expires_at = identity.expires_at;
        }
        node.user_connected(&identity.user);
        let channels = node.rules.server_side_channels(&identity);
        if channels.len() > node.config.limits.max_channels_per_connection {
            return Err(SessionError::Disconnect(Disconnect::CHANNEL_LIMIT));
        }
        let mut activation = Activation {
            session: self.clone(),
            channels: Vec::new(),
        };
        let mut subs = HashMap::new();
        let mut recover = req.subs;
        for channel in channels {
            let ns = node.rules.namespace(&channel)?.clone();
            let since = recover
                .remove(&channel)
                .filter(|r| r.recover)
                .map(|r| StreamPosition {
                    offset: r.offset,
                    epoch: r.epoch,
                });
            let channel: Arc<str> = channel.into();
            match self.subscribe_inner(&channel, ns, None, since).await {
                Ok(mut s) => {
                    activation.channels.append(&mut s.activation.channels);
                    subs.insert(channel.to_string(), s.result);
                }
                Err(e) => {
                    tracing::warn!(client = %self.id, %channel, error = ?e, "server-side subscription failed");
                }
            }
        }
        tracing::debug!(client = %self.id, user = %identity.user, subs = subs.len(), "connected");
        let (expires, ttl) = ttl_of(identity.expires_at);
        Ok(Connected {
            result: ConnectResult {
                client: self.id.to_string(),
                version: crate::VERSION.to_owned(),
                expires,
                ttl,
                subs,
                ping: u32::try_from(node.config.client.ping_interval.as_secs()).unwrap_or(25),
                pong: true,
                node: node.name.clone(),
            },
            activation,
        })
    }

    fn require_identity(&self) -> SessionResult<Arc<Identity>> {
        self.identity()
            .ok_or(SessionError::Disconnect(Disconnect::BAD_REQUEST))
    }

    /// Subscribes to a channel on the client's request.
    ///
    /// # Errors
    /// Unknown channel, permission denied, already subscribed, limit exceeded, token
    /// expired; an invalid subscription token is `PermissionDenied`.
    pub async fn subscribe(self: &Arc<Self>, req: SubscribeRequest) -> SessionResult<Subscribed> {
        let identity = self.require_identity()?;
        let node = self.node.clone();
        // Validate the name before verifying any token.
        node.rules.namespace(&req.channel)?;
        let grant = if req.token.is_empty() {
            None
        } else {
            match node
                .verifier
                .verify_subscription(&req.token, &identity.user, &req.channel)
                .await
            {
                Ok(g) => Some(g),
                Err(AuthError::Expired) => return Err(ErrorCode::TokenExpired.into()),
                Err(AuthError::Invalid(why)) => {
                    tracing::info!(client = %self.id, channel = %req.channel, reason = %why, "subscription token refused");
                    return Err(ErrorCode::PermissionDenied.into());
                }
            }
        };
        let ns = node
            .rules
            .check_subscribe(&identity, &req.channel, grant.is_some())?
            .clone();
        let since = req.recover.then(|| StreamPosition {
            offset: req.offset,
            epoch: req.epoch.clone(),
        });
        let channel: Arc<str> = req.channel.into();
        self.subscribe_inner(&channel, ns, grant, since).await
    }

    /// Subscribes on the server's initiative (server API), pushing `subscribe` to the client.
    ///
    /// # Errors
    /// As for [`Session::subscribe`], without permission checks.
    pub async fn server_subscribe(self: &Arc<Self>, channel: &str) -> SessionResult<()> {
        let ns = self.node.rules.namespace(channel)?.clone();
        let channel: Arc<str> = channel.into();
        let s = self.subscribe_inner(&channel, ns, None, None).await?;
        s.activation
            .complete(Some(Outgoing::Control(Box::new(Control::Subscribed {
                channel,
                result: s.result,
            }))));
        Ok(())
    }

    async fn subscribe_inner(
        self: &Arc<Self>,
        channel: &Arc<str>,
        ns: Arc<NamespaceConfig>,
        grant: Option<crate::auth::Grant>,
        since: Option<StreamPosition>,
    ) -> SessionResult<Subscribed> {
        let identity = self.require_identity()?;
        let node = self.node.clone();
        {
            let st = self.state();
            if st.subs.contains_key(channel) {
                return Err(ErrorCode::AlreadySubscribed.into());
            }
            if st.subs.len() >= node.config.limits.max_channels_per_connection {
                return Err(ErrorCode::LimitExceeded.into());
            }
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.contains_key(channel) {
                return Err(ErrorCode::AlreadySubscribed.into());
            }
            pending.insert(channel.clone(), Vec::new());
            self.pending_count.fetch_add(1, Ordering::AcqRel);
        }
        // From here on, failure must undo the pending mark and the hub entry.
        let activation = Activation {
            session: self.clone(),
            channels: vec![(channel.clone(), u64::MAX)],
        };
        let first = node.hub.subscribe(channel, self);
        let info = ClientInfo {
            user: identity.user.clone(),
            client: self.id.clone(),
            conn_info: identity.info.clone(),
            chan_info: grant.as_ref().and_then(|g| g.info.clone()),
        };
        let prepared = self
            .prepare_subscription(channel, &ns, first, &info, since)
            .await;
        let (mut result, offset) = match prepared {
            Ok(r) => r,
            Err(e) => {
                if node.hub.unsubscribe(channel, self) {
                    let _ = node.engine.unsubscribe(channel).await;
                }
                drop(activation);
                return Err(e);
            }
        };
        let expires_at = grant.and_then(|g| g.expires_at);
        // The client schedules its sub_refresh from these.
        (result.expires, result.ttl) = ttl_of(expires_at);
        self.state().subs.insert(
            channel.clone(),
            Sub {
                publish_rate: TokenBucket::new(ns.publish_rate, ns.publish_rate),
                ns,
                info,
                expires_at,
            },
        );
        let mut activation = activation;
        activation.channels[0].1 = offset;
        node.metrics.subscriptions.inc();
        Ok(Subscribed { result, activation })
    }

    async fn prepare_subscription(
        &self,
        channel: &Arc<str>,
        ns: &NamespaceConfig,
        first_on_node: bool,
        info: &ClientInfo,
        since: Option<StreamPosition>,
    ) -> SessionResult<(SubscribeResult, u64)> {
        let node = &self.node;
        if first_on_node {
            node.engine
                .subscribe(channel)
                .await
                .map_err(NodeError::from)?;
        }
        let mut result = SubscribeResult::default();
        let mut offset = 0;
        if let Some(opts) = node.history_options(ns) {
            let recovering = since.is_some();
            let query = HistoryQuery {
                since: since.clone(),
                limit: if recovering { None } else { Some(0) },
                reverse: false,
                ensure: Some(opts),
            };
            let h = node
                .engine
                .history(channel, query)
                .await
                .map_err(NodeError::from)?;
            offset = h.offset;
            result.recoverable = true;
            result.positioned = true;
            result.epoch = h.epoch.clone();
            result.offset = h.offset;
            if let Some(since) = since {
                result.was_recovering = true;
                result.recovered = recovered(&since, &h);
                result.publications = h.publications;
            }
        }
        let first_of_user = if ns.presence {
            node.engine
                .add_presence(channel, info.clone())
                .await
                .map_err(NodeError::from)?
        } else {
            true
        };
        if ns.join_leave && (first_of_user || !ns.presence_per_user) {
            node.engine
                .publish_join(channel, info.clone())
                .await
                .map_err(NodeError::from)?;
        }
        Ok((result, offset))
    }

    /// Unsubscribes on the client's request.
    ///
    /// # Errors
    /// None today; kept for symmetry with the protocol.
    pub async fn unsubscribe(&self, channel: &str) -> SessionResult<()> {
        self.require_identity()?;
        self.remove_subscription(channel).await;
        Ok(())
    }

    /// Unsubscribes on the server's initiative, pushing `unsubscribe` to the client.
    /// Returns whether the session was subscribed.
    pub async fn server_unsubscribe(&self, channel: &str) -> bool {
        let Some(channel) = self.remove_subscription(channel).await else {
            return false;
        };
        self.enqueue(Outgoing::Control(Box::new(Control::Unsubscribed {
            channel,
            code: 2000,
            reason: "server unsubscribe",
        })));
        true
    }

    async fn remove_subscription(&self, channel: &str) -> Option<Arc<str>> {
        let (channel, sub) = self.state().subs.remove_entry(channel)?;
        let node = &self.node;
        node.metrics.subscriptions.dec();
        if node.hub.unsubscribe(&channel, self) {
            if let Err(e) = node.engine.unsubscribe(&channel).await {
                tracing::warn!(%channel, error = %e, "engine unsubscribe failed");
            }
        }
        let mut last_of_user = true;
        if sub.ns.presence {
            match node
                .engine
                .remove_presence(&channel, &self.id, &sub.info.user)
                .await
            {
                Ok(last) => last_of_user = last,
                Err(e) => tracing::warn!(%channel, error = %e, "presence removal failed"),
            }
        }
        if sub.ns.typing {
            if let Some(info) = node.typing.stop(&channel, &sub.info.user) {
                node.publish_typing_stop(&channel, info).await;
            }
        }
        if sub.ns.join_leave && (last_of_user || !sub.ns.presence_per_user) {
            let _ = node.engine.publish_leave(&channel, sub.info).await;
        }
        Some(channel)
    }

    /// Publishes from the client.
    ///
    /// # Errors
    /// Permission denied unless the namespace allows publishing and the client is
    /// subscribed; `TooManyRequests` over the namespace's publish rate.
    pub async fn publish(&self, channel: &str, data: Option<SharedJson>) -> SessionResult<()> {
        self.require_identity()?;
        let data = data.ok_or(SessionError::Reply(ErrorCode::BadRequest))?;
        let (ns, info) = {
            let mut st = self.state();
            let sub = st.subs.get_mut(channel);
            let subscribed = sub.is_some();
            let ns = self.node.rules.check_publish(channel, subscribed)?.clone();
            let Some(sub) = sub else {
                return Err(ErrorCode::PermissionDenied.into());
            };
            if !sub.publish_rate.try_take() {
                return Err(ErrorCode::TooManyRequests.into());
            }
            (ns, sub.info.clone())
        };
        if ns.typing {
            self.node.typing_signal(channel, &ns, info, data).await?;
        } else {
            self.node
                .publish_in(channel, &ns, data, Some(info), None)
                .await?;
        }
        Ok(())
    }

    fn subscribed_ns(&self, channel: &str) -> SessionResult<Arc<NamespaceConfig>> {
        self.require_identity()?;
        self.state()
            .subs
            .get(channel)
            .map(|s| s.ns.clone())
            .ok_or(SessionError::Reply(ErrorCode::PermissionDenied))
    }

    /// Presence of a channel the client is subscribed to.
    ///
    /// # Errors
    /// Permission denied when not subscribed, not available when presence is off.
    pub async fn presence(&self, channel: &str) -> SessionResult<PresenceResult> {
        self.subscribed_ns(channel)?;
        Ok(self.node.presence(channel).await?)
    }

    /// Presence counts of a channel the client is subscribed to.
    ///
    /// # Errors
    /// As for [`Session::presence`].
    pub async fn presence_stats(&self, channel: &str) -> SessionResult<PresenceStatsResult> {
        self.subscribed_ns(channel)?;
        Ok(self.node.presence_stats(channel).await?)
    }

    /// History of a channel the client is subscribed to.
    ///
    /// # Errors
    /// Permission denied when not subscribed, not available without history.
    pub async fn history(&self, req: HistoryRequest) -> SessionResult<HistoryResult> {
        self.subscribed_ns(&req.channel)?;
        Ok(self
            .node
            .history(&req.channel, crate::node::history_query(&req))
            .await?)
    }

    /// Calls a built-in server method: `user_status` (`{"users": [...]}`, at most
    /// [`MAX_STATUS_USERS`]) when `user_status.query` allows it.
    ///
    /// # Errors
    /// `MethodNotFound`, `PermissionDenied`, `BadRequest`, `LimitExceeded`.
    pub async fn rpc(
        &self,
        method: &str,
        data: Option<SharedJson>,
    ) -> SessionResult<Option<SharedJson>> {
        #[derive(serde::Deserialize)]
        struct StatusRequest {
            users: Vec<String>,
        }
        self.require_identity()?;
        match method {
            "user_status" => {
                if !self.node.config.user_status.query {
                    return Err(ErrorCode::PermissionDenied.into());
                }
                let req: StatusRequest = data
                    .and_then(|d| serde_json::from_str(d.get()).ok())
                    .ok_or(SessionError::Reply(ErrorCode::BadRequest))?;
                if req.users.len() > MAX_STATUS_USERS {
                    return Err(ErrorCode::LimitExceeded.into());
                }
                let statuses = self.node.user_status(&req.users);
                let json = serde_json::json!({ "statuses": statuses }).to_string();
                let raw = serde_json::value::RawValue::from_string(json)
                    .map_err(|_| SessionError::Reply(ErrorCode::Internal))?;
                Ok(Some(SharedJson::from(raw)))
            }
            _ => {
                tracing::debug!(client = %self.id, method, "unknown rpc method");
                Err(ErrorCode::MethodNotFound.into())
            }
        }
    }

    /// Replaces the connection token.
    ///
    /// # Errors
    /// Token expired; an invalid token or another user's token disconnects.
    pub async fn refresh(&self, token: &str) -> SessionResult<RefreshResult> {
        let identity = self.require_identity()?;
        let fresh = match self.node.verifier.verify_connect(token).await {
            Ok(id) => id,
            Err(AuthError::Expired) => return Err(ErrorCode::TokenExpired.into()),
            Err(AuthError::Invalid(_)) => {
                return Err(SessionError::Disconnect(Disconnect::INVALID_TOKEN))
            }
        };
        if fresh.user != identity.user {
            return Err(SessionError::Disconnect(Disconnect::INVALID_TOKEN));
        }
        self.state().expires_at = fresh.expires_at;
        let (expires, ttl) = ttl_of(fresh.expires_at);
        Ok(RefreshResult {
            client: self.id.to_string(),
            version: crate::VERSION.to_owned(),
            expires,
            ttl,
        })
    }

    /// Replaces a subscription token.
    ///
    /// # Errors
    /// Not subscribed, token expired, or an invalid token (permission denied).
    pub async fn sub_refresh(&self, channel: &str, token: &str) -> SessionResult<SubRefreshResult> {
        let identity = self.require_identity()?;
        self.subscribed_ns(channel)?;
        let grant = match self
            .node
            .verifier
            .verify_subscription(token, &identity.user, channel)
            .await
        {
            Ok(g) => g,
            Err(AuthError::Expired) => return Err(ErrorCode::TokenExpired.into()),
            Err(AuthError::Invalid(_)) => return Err(ErrorCode::PermissionDenied.into()),
        };
        if let Some(sub) = self.state().subs.get_mut(channel) {
            sub.expires_at = grant.expires_at;
        }
        let (expires, ttl) = ttl_of(grant.expires_at);
        Ok(SubRefreshResult { expires, ttl })
    }

    /// The earliest subscription expiry, if any subscription token expires.
    pub fn next_sub_expiry(&self) -> Option<u64> {
        self.state()
            .subs
            .values()
            .filter_map(|s| s.expires_at)
            .min()
    }

    /// Channels this session is subscribed to.
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.state().subs.keys().cloned().collect()
    }

    /// Releases everything the session holds: subscriptions, presence, user index.
    /// Idempotent; called by the transport once its connection ends.
    pub async fn cleanup(&self) {
        let (channels, identity) = {
            let mut st = self.state();
            if st.cleaned {
                return;
            }
            st.cleaned = true;
            (
                st.subs.keys().cloned().collect::<Vec<_>>(),
                st.identity.clone(),
            )
        };
        for ch in channels {
            self.remove_subscription(&ch).await;
        }
        if let Some(id) = identity {
            self.node.hub.remove_user_session(&id.user, self);
            self.node.user_disconnected(&id.user);
        }
    }
}

fn ttl_of(expires_at: Option<u64>) -> (bool, u32) {
    match expires_at {
        Some(exp) => (
            true,
            u32::try_from(exp.saturating_sub(now_secs())).unwrap_or(u32::MAX),
        ),
        None => (false, 0),
    }
}

/// Whether `h` (read after `since`) holds every publication the client missed.
fn recovered(since: &StreamPosition, h: &HistoryResult) -> bool {
    if since.epoch != h.epoch {
        return false;
    }
    match h.publications.first() {
        Some(p) => p.offset == since.offset + 1,
        None => h.offset == since.offset,
    }
}
