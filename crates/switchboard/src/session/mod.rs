//! A session: one connection's identity, subscriptions, limits and bounded outbox.
//!
//! It never knows the wire protocol: transports call its methods with decoded
//! requests and encode what comes back.
//!
//! - [`subscription`]: subscribe/unsubscribe, recovery, and the pending phase that puts
//!   a subscribe reply before the channel's events.
//! - [`commands`]: publish, presence, history and RPC on behalf of the client.
//! - [`inbox`]: publications of inbox channels noted delivered, and the client's
//!   receipts.
//! - [`proxied`]: what the session asks the app backend through proxies, and the
//!   timers that ask again (refresh, sub_refresh).

mod commands;
mod inbox;
mod proxied;
mod subs;
mod subscription;

pub use inbox::Receipt;
pub use subscription::{Activation, Subscribed, EXCLUDE_CLIENT_TAG};

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use switchboard_protocol::command::{ConnectRequest, HistoryRequest, SubscribeRequest};
use switchboard_protocol::reply::ErrorReply;
use switchboard_protocol::{
    ClientInfo, ConnectResult, Disconnect, ErrorCode, HistoryResult, PresenceResult,
    PresenceStatsResult, RefreshResult, SharedJson, StreamPosition, SubRefreshResult,
    SubscribeResult, Unsubscribe,
};
use tokio_util::sync::CancellationToken;

use crate::auth::{now_secs, AuthError, Identity};
use crate::config::NamespaceConfig;
use crate::engine::HistoryQuery;
use crate::event::{ChannelEvent, Codec, Control, Outgoing};
use crate::feed::Place;
use crate::limiter::TokenBucket;
use crate::node::{Node, NodeError};
use crate::outbox::{Outbox, Taken};
use crate::rules::RuleError;

/// What a failed command turns into for the client: an error reply, or a disconnect.
#[derive(Debug, Clone)]
pub enum SessionError {
    /// Reply with this error; the connection stays.
    Reply(ErrorCode),
    /// Reply with the app backend's own error (a proxy refused); the connection stays.
    Rejected(Box<ErrorReply>),
    /// Close the connection with this code.
    Disconnect(Disconnect),
}

impl SessionError {
    /// The error reply the client receives, unless this is a disconnect.
    pub fn reply(&self) -> Option<ErrorReply> {
        match self {
            Self::Reply(code) => Some(ErrorReply::from(*code)),
            Self::Rejected(e) => Some((**e).clone()),
            Self::Disconnect(_) => None,
        }
    }
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
            NodeError::UnrecoverablePosition => Self::Reply(ErrorCode::UnrecoverablePosition),
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

/// A subscription of this session. Kept small: every idle connection holds a table of
/// these, so what most subscriptions never use lives behind one optional box.
struct Sub {
    ns: Arc<NamespaceConfig>,
    info: ClientInfo,
    /// The namespace's `publish_rate`, when it has one.
    publish_rate: Option<Box<TokenBucket>>,
    /// Expiry, revocation stamp, proxy checks: set for token- or proxy-granted channels.
    extra: Option<Box<SubExtra>>,
    /// A console's watch (see [`Node::watch_channel`]), not a subscription.
    watching: bool,
}

/// The parts of a [`Sub`] that only some subscriptions have.
#[derive(Default)]
struct SubExtra {
    expires_at: Option<u64>,
    /// Stops the sub_refresh proxy's checks when the subscription goes.
    _proxy_checks: Option<tokio_util::sync::DropGuard>,
    /// The subscription token that granted the channel, for revocation.
    token: Option<crate::auth::TokenStamp>,
}

impl Sub {
    fn expires_at(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|e| e.expires_at)
    }

    fn token(&self) -> Option<&crate::auth::TokenStamp> {
        self.extra.as_ref().and_then(|e| e.token.as_ref())
    }

    fn extra_mut(&mut self) -> &mut SubExtra {
        self.extra.get_or_insert_with(Box::default)
    }
}

#[derive(Default)]
struct State {
    identity: Option<Arc<Identity>>,
    expires_at: Option<u64>,
    subs: subs::Subs<Sub>,
    cleaned: bool,
}

struct Abuse {
    commands: TokenBucket,
    errors: u32,
}

/// One connection, shared between its transport tasks, the hub and the node.
#[repr(C)]
pub struct Session {
    // What every delivery to this session touches comes first (the outbox's lock and
    // queue, then the pending count, codec and node), so that a fan-out, which finds
    // most sessions out of the CPU's caches, reads as few cache lines per recipient as
    // it can.
    outbox: Outbox,
    pending_count: AtomicUsize,
    /// How this session's transport encodes channel events.
    /// The transport's codec, one for all its sessions: a reference, not a copy, keeps
    /// 56 bytes out of every session.
    codec: &'static Codec,
    node: Arc<Node>,
    /// Whether `inbox` holds anything, so other deliveries skip its lock.
    has_inbox: AtomicBool,
    /// Set by [`Session::close`] and [`Session::cleanup`]: what the writer and the
    /// transport's driver check when woken.
    closing: AtomicBool,
    /// Connection id (sent to the client as `client`).
    pub id: Arc<str>,
    /// Stops the session's helper tasks (proxy refreshes) when it closes: made by the
    /// first of them, a child of the node's shutdown. A token per session would cost
    /// every connection its tree node (~180 bytes) for what few of them run.
    tasks: OnceLock<CancellationToken>,
    disconnect: OnceLock<Disconnect>,
    /// Events of channels whose subscribe reply is not queued yet, with what the
    /// subscription asked of them; `None` while no subscribe is under way (most of a
    /// connection's life: the map is created for a subscribe and dropped once empty).
    /// Short sections only.
    pending: Mutex<Option<Box<PendingMap>>>,
    /// Short sections only; never held across an await.
    state: Mutex<State>,
    /// Per-command rate and error accounting. Short sections only.
    abuse: Mutex<Abuse>,
    /// Wakes the transport's driver: a deadline moved (server API `refresh`), or the
    /// session is closing.
    wake: tokio::sync::Notify,
    /// What the client's HTTP request said, for proxies; set once by the transport.
    origin: OnceLock<crate::proxy::ClientOrigin>,
    /// Inbox channels subscribed here; `None` without any (most connections). Read on
    /// the delivery path; short sections only.
    inbox: Mutex<Option<Box<InboxMap>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

/// A channel's events held back until its subscribe reply is queued, and how the
/// subscription wants them.
type Pending = (
    Vec<Arc<ChannelEvent>>,
    Option<Arc<crate::delivery::Delivery>>,
);

/// Channels whose subscribe reply is not queued yet, and their held-back events.
type PendingMap = HashMap<Arc<str>, Pending>;

/// An inbox channel of a session: the stream epoch it subscribed in, and its user.
type InboxTrack = (Arc<str>, Arc<str>);

/// A session's inbox channels.
type InboxMap = HashMap<Arc<str>, InboxTrack>;

/// Outcome of a successful connect.
pub struct Connected {
    /// The reply.
    pub result: ConnectResult,
    /// Server-side subscriptions to activate once the reply is queued.
    pub activation: Activation,
    /// Server-side subscriptions whose recovery came from the user's inbox (the client
    /// gave no position): their publications are what the user had not received.
    pub inbox: Vec<String>,
}

impl Session {
    /// A new, unauthenticated session with an outbox bounded by `limits`.
    pub fn new(node: Arc<Node>, codec: &'static Codec) -> Arc<Self> {
        // A v4 UUID from the thread-local generator: no getrandom syscall per connect.
        let id = uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string();
        Self::with_id(node, codec, id.into())
    }

    /// A new session whose connection id the transport chose: a protocol that shows
    /// the id to its clients in a shape of its own (Pusher's `socket_id`, `123.456`).
    /// The id must be unique on every node: the hub and publication exclusion key on it.
    pub fn with_id(node: Arc<Node>, codec: &'static Codec, id: Arc<str>) -> Arc<Self> {
        let limits = &node.config.limits;
        let abuse = Abuse {
            commands: TokenBucket::new(limits.command_rate, limits.command_burst),
            errors: 0,
        };
        Arc::new(Self {
            id,
            tasks: OnceLock::new(),
            outbox: Outbox::new(node.outboxes.clone()),
            codec,
            node,
            disconnect: OnceLock::new(),
            pending_count: AtomicUsize::new(0),
            pending: Mutex::default(),
            state: Mutex::default(),
            abuse: Mutex::new(abuse),
            wake: tokio::sync::Notify::new(),
            origin: OnceLock::new(),
            inbox: Mutex::default(),
            has_inbox: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name of the codec this session's transport registered (`"pusher"`, ...):
    /// which sessions a transport's own pushes are for.
    pub fn codec_name(&self) -> &'static str {
        self.codec.name
    }

    fn pending(&self) -> MutexGuard<'_, Option<Box<PendingMap>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node this session belongs to.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// What is queued for the client; drained by the transport's writer.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// A token cancelled when the session closes or the node shuts down, for a task
    /// that must end with the session (a proxy refresh, an upgraded Socket.IO
    /// connection's reader). The transport's driver waits with [`Session::woken`]
    /// instead.
    pub fn stop_token(&self) -> CancellationToken {
        let token = self
            .tasks
            .get_or_init(|| self.node.shutdown.child_token())
            .clone();
        // Pairs with the fence in `closing_now`: a close either sees this token, or is
        // seen here.
        fence(Ordering::SeqCst);
        if self.is_closing() {
            token.cancel();
        }
        token
    }

    /// Marks the session closing and tells whoever waits: the writer through its
    /// outbox (see `transport::writer`), the driver through [`Session::woken`], helper
    /// tasks through their token.
    fn closing_now(&self) {
        self.closing.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        if let Some(tasks) = self.tasks.get() {
            tasks.cancel();
        }
        self.wake.notify_one();
        self.outbox.wake_consumer();
    }

    /// Whether the session closed ([`Session::close`]) or was released after a
    /// shutdown ([`Session::cleanup`]): what the writer and the driver check when
    /// woken.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
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
        self.closing_now();
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

    /// Asks for the cache lines a delivery to this session touches, so that they are
    /// on their way while the fan-out delivers to the recipients before it: a delivery
    /// then finds them near instead of waiting for each in turn.
    pub(crate) fn warm(&self) {
        self.outbox.warm();
        crate::outbox::prefetch(&self.pending_count);
    }

    /// Queues an item. A full outbox means a slow client: it is disconnected.
    pub fn enqueue(&self, item: Outgoing) {
        if self.outbox.push(item).is_err() {
            self.overflowed();
        }
    }

    /// Queues a plain subscriber's event by its place in the channel's feed (see
    /// [`crate::feed`]), as [`Session::enqueue`] does an item.
    fn enqueue_at(&self, event: &ChannelEvent, place: Place<'_>) {
        let Some(frame) = event.cached(self.codec, &self.node.config) else {
            self.enqueue(self.encode(event, None));
            return;
        };
        if !self.outbox.push_at(place, frame.frame.len()) {
            self.overflowed();
        }
    }

    fn overflowed(&self) {
        self.node.metrics.outbox_drops.inc();
        if self.close(Disconnect::SLOW) {
            self.node.metrics.slow_disconnects.inc();
        }
    }

    /// The writer's next items (see [`Outbox::recv_batch`]): a run of a channel's
    /// events comes as one item per event, encoded for this session.
    pub fn recv_batch<'a>(
        &'a self,
        buf: &'a mut Vec<Outgoing>,
        max: usize,
    ) -> impl std::future::Future<Output = Taken> + Send + 'a {
        self.outbox
            .recv_batch(buf, max, move |e: &ChannelEvent| self.encode(e, None))
    }

    /// One item if any is queued (see [`Session::recv_batch`]).
    pub fn try_recv(&self) -> Option<Outgoing> {
        self.outbox.try_recv(&|e| self.encode(e, None))
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

    /// Sets when the connection expires (server API `refresh`); `None`: never.
    pub fn set_expires_at(&self, at: Option<u64>) {
        self.state().expires_at = at;
        self.deadlines_moved();
        // Tell the client, so its SDK reschedules (or stops) its own token refresh.
        let (expires, ttl) = ttl_of(at);
        self.enqueue(Outgoing::Control(Box::new(Control::Refresh {
            expires,
            ttl,
        })));
    }

    /// Wakes the transport's driver: it would otherwise sleep until a stale deadline
    /// when the change came from elsewhere (the server API).
    fn deadlines_moved(&self) {
        self.wake.notify_one();
    }

    /// Completes when a deadline of this session moved or the session is closing, and
    /// says whether it is closing ([`Session::is_closing`]): the transport's driver
    /// then ends, or recomputes its timers. One waiter: the driver (others take a
    /// [`Session::stop_token`]). The driver also ends at the node's shutdown, which it
    /// waits for itself.
    ///
    /// # Cancel safety
    /// Cancel-safe: a wake-up that comes while nobody waits is kept.
    pub async fn woken(&self) -> bool {
        self.wake.notified().await;
        self.is_closing()
    }

    /// Whether `connect` succeeded.
    pub fn is_connected(&self) -> bool {
        self.state().identity.is_some()
    }

    /// Authenticates the session (its token, or without one the connect proxy) and
    /// makes its server-side subscriptions.
    ///
    /// # Errors
    /// Error replies for an expired token; disconnects for an invalid token, a second
    /// connect, the per-user connection limit or too many server-side channels.
    pub async fn connect(self: &Arc<Self>, req: ConnectRequest) -> SessionResult<Connected> {
        if self.is_connected() {
            return Err(SessionError::Disconnect(Disconnect::BAD_REQUEST));
        }
        let node = self.node.clone();
        let revocations_seen = node.revocations_applied();
        let mut proxy_expiry = None;
        let mut data = None;
        let mut proxied_subs = HashMap::new();
        let identity = if req.token.is_empty() && node.proxies.connect().is_some() {
            let proxied = self.connect_via_proxy(&req).await?;
            proxy_expiry = proxied.expire_at;
            data = proxied.data;
            proxied_subs = proxied.subs;
            Arc::new(proxied.identity)
        } else {
            self.verify_token(&req.token).await?
        };
        let limit = node.config.limits.max_connections_per_user;
        // Anonymous connections (a connect proxy's empty user) are nobody's: no user
        // index, no per-user limit, no online status.
        let anonymous = identity.user.is_empty();
        if !anonymous && !node.register_session(&identity.user, self, limit).await {
            tracing::info!(client = %self.id, user = %identity.user, "connect refused: connection limit");
            return Err(SessionError::Disconnect(Disconnect::CONNECTION_LIMIT));
        }
        {
            let mut st = self.state();
            st.identity = Some(identity.clone());
            st.expires_at = identity.expires_at;
        }
        // A revocation applied on this node since the token was checked may have
        // looked for this session before it was findable: check the store again (rare).
        // One applied from now on finds it.
        if node.revocations_applied() != revocations_seen {
            if let Err(e) = self
                .check_revoked(&identity.user, None, identity.token.as_ref())
                .await
            {
                self.state().identity = None;
                if !anonymous {
                    node.unregister_session(&identity.user, self).await;
                }
                return Err(e);
            }
        }
        // Connected: the connect deadline no longer applies; token expiry does.
        self.deadlines_moved();
        if !identity.console {
            node.client_connected(&self.id, &identity.user);
        }
        if !anonymous {
            node.user_connected(&identity.user);
        }
        let channels = if identity.console {
            Vec::new()
        } else {
            node.rules.server_side_channels(&identity)
        };
        let max_channels = node.config.limits.max_channels_per_connection;
        if max_channels > 0 && channels.len() > max_channels {
            return Err(SessionError::Disconnect(Disconnect::CHANNEL_LIMIT));
        }
        let mut activation = Activation {
            session: self.clone(),
            channels: Vec::new(),
        };
        let mut subs = HashMap::new();
        let mut inbox = Vec::new();
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
            let (grant, sub_data) = match proxied_subs.remove(&channel) {
                Some((info, sub_data)) => (
                    Some(crate::auth::Grant {
                        info,
                        ..crate::auth::Grant::default()
                    }),
                    sub_data,
                ),
                None => (None, None),
            };
            let channel: Arc<str> = channel.into();
            match self
                .subscribe_inner(&channel, ns, grant, since, false, None)
                .await
            {
                Ok(mut s) => {
                    activation.channels.append(&mut s.activation.channels);
                    if s.from_inbox {
                        inbox.push(channel.to_string());
                    }
                    s.result.data = sub_data;
                    subs.insert(channel.to_string(), s.result);
                }
                Err(e) => {
                    tracing::warn!(client = %self.id, %channel, error = ?e, "server-side subscription failed");
                }
            }
        }
        if let Some(expire_at) = proxy_expiry {
            self.spawn_proxy_refresh(expire_at);
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
                session: String::new(),
                data,
            },
            activation,
            inbox,
        })
    }

    /// Connects with an identity the transport established by its own means (a
    /// Pusher connection is anonymous until it signs in): no token, no connect proxy,
    /// no server-side subscriptions. A user's connection counts against
    /// `max_connections_per_user` and their online status, as any other.
    ///
    /// # Errors
    /// A disconnect for a second connect, or at the per-user connection limit.
    pub async fn connect_as(self: &Arc<Self>, identity: Identity) -> SessionResult<()> {
        if self.is_connected() {
            return Err(SessionError::Disconnect(Disconnect::BAD_REQUEST));
        }
        let identity = Arc::new(identity);
        let node = self.node.clone();
        let anonymous = identity.user.is_empty();
        let limit = node.config.limits.max_connections_per_user;
        if !anonymous && !node.register_session(&identity.user, self, limit).await {
            return Err(SessionError::Disconnect(Disconnect::CONNECTION_LIMIT));
        }
        {
            let mut st = self.state();
            st.identity = Some(identity.clone());
            st.expires_at = identity.expires_at;
        }
        self.deadlines_moved();
        node.client_connected(&self.id, &identity.user);
        if !anonymous {
            node.user_connected(&identity.user);
        }
        Ok(())
    }

    /// Gives an anonymous connection a user (Pusher's `pusher:signin`): from now on it
    /// is that user's, for the per-user limit, online status and the server API's
    /// user commands. Subscriptions made before keep the identity they were made with.
    ///
    /// # Errors
    /// `BadRequest` for a connection that already has a user; a disconnect at the
    /// per-user connection limit.
    pub async fn sign_in(self: &Arc<Self>, identity: Identity) -> SessionResult<()> {
        let current = self.require_identity()?;
        if !current.user.is_empty() || identity.user.is_empty() {
            return Err(ErrorCode::BadRequest.into());
        }
        let identity = Arc::new(identity);
        let node = self.node.clone();
        let limit = node.config.limits.max_connections_per_user;
        if !node.register_session(&identity.user, self, limit).await {
            return Err(SessionError::Disconnect(Disconnect::CONNECTION_LIMIT));
        }
        self.state().identity = Some(identity.clone());
        node.user_connected(&identity.user);
        Ok(())
    }

    /// Verifies a connection token (or an operator console's token).
    async fn verify_token(&self, token: &str) -> SessionResult<Arc<Identity>> {
        let node = &self.node;
        if let Some(console) = node
            .admin
            .as_ref()
            .filter(|_| crate::admin::is_console_token(token))
        {
            return match console.verify_connection(node, token).await {
                Some(identity) => Ok(Arc::new(identity)),
                None => {
                    node.metrics.auth_failures.inc();
                    tracing::info!(client = %self.id, "connect refused: invalid console token");
                    Err(SessionError::Disconnect(Disconnect::INVALID_TOKEN))
                }
            };
        }
        match node.verifier.verify_connect(token).await {
            Ok(id) => {
                if let Err(e) = self.check_revoked(&id.user, None, id.token.as_ref()).await {
                    node.metrics.auth_failures.inc();
                    return Err(e);
                }
                Ok(Arc::new(id))
            }
            Err(AuthError::Expired) => {
                node.metrics.auth_failures.inc();
                Err(ErrorCode::TokenExpired.into())
            }
            Err(AuthError::Invalid(why)) => {
                node.metrics.auth_failures.inc();
                tracing::info!(client = %self.id, reason = %why, "connect refused: invalid token");
                Err(SessionError::Disconnect(Disconnect::INVALID_TOKEN))
            }
        }
    }

    /// Refuses a revoked token: a connection token with a disconnect (3500 "token
    /// revoked"), a subscription token (`channel` given) with `PermissionDenied`.
    async fn check_revoked(
        &self,
        user: &str,
        channel: Option<&str>,
        token: Option<&crate::auth::TokenStamp>,
    ) -> SessionResult<()> {
        let Some(token) = token else {
            return Ok(());
        };
        match self.node.revocations.is_revoked(user, channel, token).await {
            Ok(false) => Ok(()),
            Ok(true) => {
                tracing::info!(client = %self.id, user, channel, "revoked token refused");
                Err(match channel {
                    None => SessionError::Disconnect(Disconnect::TOKEN_REVOKED),
                    Some(_) => SessionError::Reply(ErrorCode::PermissionDenied),
                })
            }
            Err(e) => Err(NodeError::from(e).into()),
        }
    }

    /// Ends what `revocation` covers: the connection, when its token is revoked (3500
    /// "token revoked"); else each subscription whose token is (an `unsubscribe` push
    /// with code 2000, reason "token revoked").
    pub async fn apply_revocation(&self, revocation: &crate::revocation::Revocation) {
        let Some(identity) = self.identity() else {
            return;
        };
        if identity
            .token
            .as_ref()
            .is_some_and(|t| revocation.covers(&identity.user, None, t))
        {
            if self.close(Disconnect::TOKEN_REVOKED) {
                self.node.metrics.revoked_disconnects.inc();
            }
            return;
        }
        let revoked: Vec<Arc<str>> = self
            .state()
            .subs
            .iter()
            .filter(|(ch, sub)| {
                sub.token()
                    .is_some_and(|t| revocation.covers(&identity.user, Some(ch), t))
            })
            .map(|(ch, _)| ch.clone())
            .collect();
        for channel in revoked {
            self.unsubscribe_with(&channel, Unsubscribe::TOKEN_REVOKED)
                .await;
        }
    }

    /// Replaces the connection's token stamp (a refreshed token, a proxy refresh), so
    /// revocation judges the connection by its newest credential; and its info, when
    /// the refresh proxy gave one, for later presence and publications.
    fn renew_identity(&self, token: Option<crate::auth::TokenStamp>, info: Option<SharedJson>) {
        let mut st = self.state();
        if let Some(identity) = &st.identity {
            let mut fresh = Identity::clone(identity);
            fresh.token = token;
            if info.is_some() {
                fresh.info = info;
            }
            st.identity = Some(Arc::new(fresh));
        }
    }

    fn require_identity(&self) -> SessionResult<Arc<Identity>> {
        self.identity()
            .ok_or(SessionError::Disconnect(Disconnect::BAD_REQUEST))
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
        self.check_revoked(&fresh.user, None, fresh.token.as_ref())
            .await?;
        self.renew_identity(fresh.token.clone(), None);
        self.state().expires_at = fresh.expires_at;
        self.deadlines_moved();
        let (expires, ttl) = ttl_of(fresh.expires_at);
        Ok(RefreshResult {
            client: self.id.to_string(),
            version: crate::VERSION.to_owned(),
            expires,
            ttl,
        })
    }

    /// The earliest subscription expiry, if any subscription token expires.
    pub fn next_sub_expiry(&self) -> Option<u64> {
        self.state().subs.values().filter_map(Sub::expires_at).min()
    }

    /// Releases everything the session holds: subscriptions, presence, user index.
    /// Idempotent; called by the transport once its connection ends.
    pub async fn cleanup(&self) {
        // A shutdown ends the session with no `close`: its writer, which learns of closes
        // through the outbox, is told here (every transport cleans up once its driver
        // saw the shutdown).
        self.closing_now();
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
        let inbox: Vec<(Arc<str>, Arc<str>)> = self
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|map| map.iter())
            .map(|(channel, (_, user))| (channel.clone(), user.clone()))
            .collect();
        for ch in channels {
            self.remove_subscription(&ch).await;
        }
        // What this connection received is on record before it is gone, so the user's
        // next session starts after it.
        for (channel, user) in inbox {
            self.node.flush_inbox_of(&user, &channel).await;
        }
        if let Some(id) = identity.as_ref().filter(|id| !id.console) {
            self.node
                .client_disconnected(&self.id, &id.user, self.disconnect_reason());
        }
        if let Some(id) = identity.filter(|id| !id.user.is_empty()) {
            self.node.unregister_session(&id.user, self).await;
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
