//! Socket.IO v5 over Engine.IO v4 at `/socket.io/`: HTTP long-polling with the upgrade
//! to WebSocket, or WebSocket directly; the main namespace `/`; JSON, no binary.
//!
//! The client authenticates in its `CONNECT` packet (`io(url, {auth: {token}})`), then
//! emits the protocol's commands as events with acknowledgements
//! (`socket.emitWithAck("subscribe", "chat:1")`) and receives channel events as Socket.IO
//! events. The mapping is documented in `docs/socketio.md`.
//!
//! - [`packets`]: Engine.IO and Socket.IO packets from the client, as session calls.
//! - [`polling`]: the HTTP long-polling transport and the connection driver.
//! - [`routes`]: the app's own client events, mapped to actions by the configuration.
//! - [`rejoin`]: the channels joined through routes, joined again after a reconnect.
//! - [`websocket`]: WebSocket, direct or upgraded from polling.

mod packets;
mod polling;
mod rejoin;
mod routes;
mod websocket;

pub(crate) use routes::route_errors;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use switchboard_protocol::socketio::{encode_event, encode_event2, Handshake, DISCONNECT};
use switchboard_protocol::{ClientInfo, Disconnect, SharedJson, SubscribeResult};
use tokio::sync::Notify;

use crate::config::Config;
use crate::event::{ChannelEvent, Codec, Control, EventKind, Frame, Outgoing};
use crate::front_door::Peer;
use crate::node::Node;
use crate::session::Session;
use crate::transport::CorsGrant;

/// Event names `socket.io-client` keeps for itself, and those of switchboard's own
/// events: a publication tagged with one of them is delivered as a plain `publication`
/// event, so the backend can not fake a disconnect or a connect result.
const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
    "connected",
    "join",
    "leave",
    "subscribe",
    "unsubscribe",
    "refresh",
    "error",
    "server_disconnect",
];

/// The publication tag that names the Socket.IO event a publication is delivered as.
pub const EVENT_TAG: &str = "event";

/// Engine.IO connections by session id; only polling connections are looked up.
#[derive(Clone)]
struct SocketIo {
    node: Arc<Node>,
    /// Short sections only: insert, look up, remove.
    conns: Arc<Mutex<HashMap<Arc<str>, Arc<Conn>>>>,
    /// Sessions that have not joined the namespace with a token yet.
    pending: Arc<AtomicUsize>,
    /// Channels of closed connections, for their reconnect.
    rejoin: Arc<rejoin::Rejoin>,
}

impl SocketIo {
    fn find(&self, sid: &str) -> Option<Arc<Conn>> {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sid)
            .cloned()
    }

    /// Admits a new Engine.IO session: refused while shutting down, over the client
    /// address's handshake rate, or when `network.max_pending_sessions` sessions
    /// have not joined yet (a handshake needs no token, so this bounds the work
    /// anyone can make the server hold).
    /// Returns the refusal to answer with, if any.
    fn refusal(&self, peer: &Peer) -> Option<Response> {
        if let Some(r) = polling::refuse_when_closing(self) {
            return Some(r);
        }
        if let Err(busy) = peer.admit_handshake() {
            return Some(busy.into_response());
        }
        let max = self.node.config.network.max_pending_sessions;
        if max != 0 && self.pending.load(Ordering::Acquire) >= max {
            self.node.metrics.connections_refused.inc();
            return Some(crate::front_door::Busy.into_response());
        }
        None
    }

    fn remove(&self, sid: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sid);
    }
}

/// Transport states of an Engine.IO connection.
const POLLING: u8 = 0;
const UPGRADING: u8 = 1;
const WEBSOCKET: u8 = 2;

/// One Engine.IO connection: a session and the state of its transport.
struct Conn {
    sid: Arc<str>,
    session: Arc<Session>,
    transport: AtomicU8,
    /// A long-poll is pending (the protocol allows one at a time).
    polling: AtomicBool,
    /// Releases the pending long-poll with a `noop` while the client upgrades.
    release_poll: Notify,
    /// The client answered a ping.
    pong: Notify,
    /// A long-poll carried what was queued at the close, and the farewell.
    farewell_sent: AtomicBool,
    /// The last long-poll carried the close packet.
    flushed: Notify,
    /// Counted in [`SocketIo::pending`] until it joins or closes.
    pending: AtomicBool,
    pending_count: Arc<AtomicUsize>,
    /// The token the Engine.IO handshake carried (`Authorization: Bearer`, or the
    /// `token` query parameter), used when `CONNECT`'s `auth` has none.
    handshake_token: Option<Box<str>>,
    /// The private id sent in the `CONNECT` answer (see [`rejoin`]).
    pid: Box<str>,
    /// Channels joined through event routes, to join again after a reconnect. Short
    /// sections only.
    route_channels: Mutex<Vec<Arc<str>>>,
    rejoin: Arc<rejoin::Rejoin>,
}

impl Conn {
    /// A new connection; `headers` are its first HTTP request's, for the proxies.
    fn new(
        sio: &SocketIo,
        transport: u8,
        headers: &HeaderMap,
        handshake_token: Option<Box<str>>,
    ) -> Arc<Self> {
        let node = &sio.node;
        sio.pending.fetch_add(1, Ordering::AcqRel);
        let session = Session::new(node.clone(), *CODEC);
        session.set_origin(node.proxies.origin("socketio", headers));
        Arc::new(Self {
            sid: uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .simple()
                .to_string()
                .into(),
            session,
            transport: AtomicU8::new(transport),
            polling: AtomicBool::new(false),
            release_poll: Notify::new(),
            pong: Notify::new(),
            farewell_sent: AtomicBool::new(false),
            flushed: Notify::new(),
            pending: AtomicBool::new(true),
            pending_count: sio.pending.clone(),
            handshake_token,
            pid: uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .simple()
                .to_string()
                .into(),
            route_channels: Mutex::default(),
            rejoin: sio.rejoin.clone(),
        })
    }

    /// Remembers a channel joined (or left, `joined = false`) through a route.
    fn route_joined(&self, channel: &str, joined: bool) {
        let mut channels = self
            .route_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        channels.retain(|c| &**c != channel);
        if joined {
            channels.push(Arc::from(channel));
        }
    }

    /// Keeps the route channels of this closing connection for its reconnect.
    fn save_for_rejoin(&self) {
        let window = self.session.node().config.socketio.rejoin_window;
        let channels = std::mem::take(
            &mut *self
                .route_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if window.is_zero() || channels.is_empty() || !self.session.is_connected() {
            return;
        }
        self.rejoin
            .save(&self.pid, self.session.user(), channels, window);
    }

    /// No longer counted as pending: it joined the namespace, or closed.
    fn not_pending(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.pending_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn transport(&self) -> u8 {
        self.transport.load(Ordering::Acquire)
    }

    fn handshake(&self, upgrades: &[&str]) -> String {
        let config = &self.session.node().config;
        Handshake {
            sid: &self.sid,
            upgrades,
            ping_interval: millis(config.client.ping_interval),
            ping_timeout: millis(config.client.pong_timeout),
            max_payload: config.limits.max_message_size,
        }
        .encode()
    }
}

/// The token of an Engine.IO handshake request: the `Authorization: Bearer` header
/// (`extraHeaders` in `socket.io-client`), else the `token` query parameter (`query`).
/// Apps written for a Socket.IO server that read either keep working unchanged.
fn handshake_token(headers: &HeaderMap, query_token: Option<&str>) -> Option<Box<str>> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    bearer
        .or(query_token)
        .filter(|t| !t.is_empty())
        .map(Box::from)
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The routes of this transport.
pub fn router(node: Arc<Node>) -> Router {
    let state = SocketIo {
        node,
        conns: Arc::default(),
        pending: Arc::default(),
        rejoin: Arc::default(),
    };
    let route = get(polling::get)
        .post(polling::post)
        .options(polling::preflight);
    Router::new()
        .route("/socket.io/", route.clone())
        .route("/socket.io", route)
        .with_state(state)
}

/// Engine.IO's error codes, answered as `{"code": n, "message": "..."}` with status 400
/// (403 for `Forbidden`).
#[derive(Debug, Clone, Copy)]
enum EngineError {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedVersion = 5,
}

impl EngineError {
    fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedVersion => "Unsupported protocol version",
        }
    }
}

impl IntoResponse for EngineError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = serde_json::json!({ "code": self as u8, "message": self.message() });
        (status, axum::Json(body)).into_response()
    }
}

/// Lets browsers on allowed origins poll across origins (see [`cors_grant`]).
///
/// [`cors_grant`]: crate::transport::cors_grant
fn with_cors(config: &Config, headers: &HeaderMap, mut response: Response) -> Response {
    let Some(grant) = crate::transport::cors_grant(config, headers) else {
        return response;
    };
    let h = response.headers_mut();
    match grant {
        CorsGrant::Anyone => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        CorsGrant::WithCredentials(origin) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// How this transport encodes channel events.
static CODEC: std::sync::LazyLock<Codec> = std::sync::LazyLock::new(|| {
    Codec::register("socketio", |ev, config| {
        Frame::from(encode_channel_event(ev, config))
    })
});

/// What a `publication` event carries; a tagged publication's second argument, without
/// `data`.
#[derive(Serialize)]
struct PublicationPush<'a> {
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a SharedJson>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a std::collections::BTreeMap<String, String>>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Serialize)]
struct PresencePush<'a> {
    channel: &'a str,
    info: &'a ClientInfo,
}

#[derive(Serialize)]
struct SubscribePush<'a> {
    channel: &'a str,
    #[serde(flatten)]
    result: &'a SubscribeResult,
}

#[derive(Serialize)]
struct UnsubscribePush<'a> {
    channel: &'a str,
    code: u32,
    reason: &'a str,
}

#[derive(Serialize)]
struct RefreshPush {
    expires: bool,
    ttl: u32,
}

#[derive(Serialize)]
struct DisconnectPush {
    code: u16,
    reason: &'static str,
    reconnect: bool,
}

/// A join or leave under an app's own event name (`[socketio.pushes]`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NamedPresencePush<'a> {
    user_id: &'a str,
    client_id: &'a str,
    channel: &'a str,
}

/// A user status change under an app's own event name (`[socketio.pushes] status`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NamedStatusPush<'a> {
    user_id: &'a str,
    status: &'static str,
    last_seen: u64,
}

/// What a status publication carries (see `crate::status::UserStatus`).
#[derive(serde::Deserialize)]
struct StatusData {
    user: String,
    online: bool,
    #[serde(default)]
    last_seen: u64,
}

/// A status publication as the app's named event, if the configuration names one.
fn named_status(ev: &ChannelEvent, data: &str, config: &crate::Config) -> Option<String> {
    let name = &config.socketio.pushes.status;
    let in_status_ns = ev
        .channel
        .strip_prefix(config.user_status.namespace.as_str())
        .is_some_and(|rest| rest.starts_with(':'));
    if name.is_empty() || !in_status_ns {
        return None;
    }
    let s: StatusData = serde_json::from_str(data).ok()?;
    let push = NamedStatusPush {
        user_id: &s.user,
        status: if s.online { "online" } else { "offline" },
        last_seen: s.last_seen,
    };
    Some(encode_event(name, &push))
}

fn encode_presence(ev: &ChannelEvent, default: &str, named: &str, info: &ClientInfo) -> String {
    if named.is_empty() {
        let push = PresencePush {
            channel: &ev.channel,
            info,
        };
        return encode_event(default, &push);
    }
    let push = NamedPresencePush {
        user_id: &info.user,
        client_id: &info.client,
        channel: &ev.channel,
    };
    encode_event(named, &push)
}

fn encode_channel_event(ev: &ChannelEvent, config: &crate::Config) -> String {
    match &ev.kind {
        EventKind::Publication(p) => {
            if let Some(frame) = named_status(ev, p.data.get(), config) {
                return frame;
            }
            let tags = p.tags.as_deref();
            let event = tags
                .and_then(|t| t.get(EVENT_TAG))
                .filter(|e| !e.is_empty() && !RESERVED_EVENTS.contains(&e.as_str()));
            let mut push = PublicationPush {
                channel: &ev.channel,
                data: Some(&p.data),
                offset: p.offset,
                info: p.info.as_ref(),
                tags,
            };
            match event {
                // The app's own event name, data first: `socket.on("message:new", m => …)`.
                Some(name) => {
                    push.data = None;
                    encode_event2(name, &p.data, &push)
                }
                None => encode_event("publication", &push),
            }
        }
        EventKind::Join(info) => encode_presence(ev, "join", &config.socketio.pushes.join, info),
        EventKind::Leave(info) => encode_presence(ev, "leave", &config.socketio.pushes.leave, info),
    }
}

fn encode(item: Outgoing) -> Frame {
    match item {
        Outgoing::Event { frame, .. } | Outgoing::Frame(frame) => frame,
        Outgoing::Control(c) => Frame::from(match *c {
            Control::Subscribed { channel, result } => encode_event(
                "subscribe",
                &SubscribePush {
                    channel: &channel,
                    result: &result,
                },
            ),
            Control::Refresh { expires, ttl } => {
                encode_event("refresh", &RefreshPush { expires, ttl })
            }
            Control::Unsubscribed {
                channel,
                code,
                reason,
            } => encode_event(
                "unsubscribe",
                &UnsubscribePush {
                    channel: &channel,
                    code,
                    reason,
                },
            ),
        }),
    }
}

/// Before the transport closes: a `server_disconnect` event with the code, then, when
/// the client should not reconnect, the namespace `DISCONNECT` (which stops
/// `socket.io-client` from reconnecting). A reconnectable close is a plain transport
/// close, after which the client reconnects by itself.
fn farewell(session: &Session, reason: Disconnect) -> Vec<Frame> {
    // Nothing to say to a client that never joined, or that left by itself.
    if !session.is_connected() || reason == Disconnect::CONNECTION_CLOSED {
        return Vec::new();
    }
    let push = DisconnectPush {
        code: reason.code,
        reason: reason.reason,
        reconnect: reason.reconnect(),
    };
    let mut frames = vec![Frame::from(encode_event("server_disconnect", &push))];
    if !reason.reconnect() {
        frames.push(Frame::from_static(DISCONNECT));
    }
    frames
}
