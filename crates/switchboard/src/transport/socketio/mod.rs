//! Socket.IO v5 over Engine.IO v4 at `/socket.io/`: HTTP long-polling with the upgrade
//! to WebSocket, or WebSocket directly; the main namespace `/`; JSON, no binary.
//!
//! The client authenticates in its `CONNECT` packet (`io(url, {auth: {token}})`), then
//! emits the protocol's commands as events with acknowledgements
//! (`socket.emitWithAck("subscribe", "chat:1")`) and receives channel events as Socket.IO
//! events. The mapping is documented in `docs/socketio.md`.
//!
//! - [`driver`]: how a connection runs: its writer, and one loop for its timers and
//!   what its client sends.
//! - [`packets`]: Engine.IO and Socket.IO packets from the client, as session calls.
//! - [`polling`]: the HTTP long-polling transport.
//! - [`pushes`]: what the server sends, as Socket.IO events.
//! - [`routes`]: the app's own client events, mapped to actions by the configuration.
//! - [`recovery`]: rooms joined again and missed events replayed after a reconnect.
//! - [`sink`]: where the one writer driver writes: long-poll responses, then the
//!   WebSocket the connection upgrades to.
//! - [`websocket`]: WebSocket, direct or upgraded from polling.

mod driver;
mod packets;
mod polling;
mod pushes;
mod recovery;
mod routes;
mod sink;
mod websocket;

pub(crate) use routes::route_errors;

use pushes::{encode, farewell, CODEC};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use switchboard_protocol::socketio::Handshake;
use switchboard_protocol::{SharedJson, SubscribeResult};
use tokio::sync::{oneshot, Notify};

use crate::event::{Frame, Outgoing};
use crate::front_door::Peer;
use crate::metrics::connections::Transport;
use crate::node::Node;
use crate::session::Session;
use crate::transport::websocket::WsSink;
use crate::transport::with_cors;
use crate::transport::writer::{self, Wire};

/// How the writer driver writes Socket.IO: its close is the WebSocket's own (a
/// long-poll gets the close packet, see [`sink`]).
const WIRE: Wire = Wire {
    encode,
    farewell,
    close: writer::same_close,
};

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
    "inbox:read",
];

/// The publication tag that names the Socket.IO event a publication is delivered as.
pub const EVENT_TAG: &str = "event";

/// Engine.IO connections by session id; only polling connections are looked up.
#[derive(Clone)]
struct SocketIo {
    node: Arc<Node>,
    /// Short sections only: insert, look up, remove.
    conns: Arc<Mutex<HashMap<u128, Arc<Conn>>>>,
    /// Sessions that have not joined the namespace with a token yet.
    pending: Arc<AtomicUsize>,
}

impl SocketIo {
    fn find(&self, sid: &str) -> Option<Arc<Conn>> {
        let sid = parse_id(sid)?;
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sid)
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

    fn remove(&self, sid: u128) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sid);
    }
}

/// A random id as Engine.IO's `sid` and Socket.IO's `pid` are sent: a v4 UUID's 32
/// lowercase hex digits. Kept as its number: an idle connection holds no string for it.
fn new_id() -> u128 {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .as_u128()
}

/// An id as sent ([`new_id`]); `None` for anything this server never sent.
fn parse_id(id: &str) -> Option<u128> {
    let lower = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if id.len() != 32 || !id.bytes().all(lower) {
        return None;
    }
    u128::from_str_radix(id, 16).ok()
}

fn format_id(id: u128) -> String {
    format!("{id:032x}")
}

/// Transport states of an Engine.IO connection.
const POLLING: u8 = 0;
const UPGRADING: u8 = 1;
const WEBSOCKET: u8 = 2;

/// One Engine.IO connection: a session and the state of its transport.
struct Conn {
    sid: u128,
    session: Arc<Session>,
    transport: AtomicU8,
    /// Counted in [`SocketIo::pending`] until it joins or closes.
    pending: AtomicBool,
    /// The client answered a ping since the connection's driver last looked (a
    /// connection opened on WebSocket; one that started on long-polling is told through
    /// [`Polling::pong`]).
    ponged: AtomicBool,
    pending_count: Arc<AtomicUsize>,
    /// The token the Engine.IO handshake carried (`Authorization: Bearer`, or the
    /// `token` query parameter), used when `CONNECT`'s `auth` has none.
    handshake_token: Option<Box<str>>,
    /// The private id sent in the `CONNECT` answer (see [`recovery`]); a recovered
    /// connection takes over its predecessor's. Short sections only.
    pid: Mutex<u128>,
    /// What the connection joined and wrote, for its reconnect: made by the first
    /// channel worth remembering (see [`Conn::joined`]). Short sections only.
    tracker: Mutex<Option<Box<recovery::Tracker>>>,
    /// The long-polling transport's state; `None` for a connection opened on WebSocket,
    /// which never needs it (most of them).
    polling: Option<Box<Polling>>,
}

/// What only a connection that starts on long-polling needs.
struct Polling {
    /// A long-poll is pending (the protocol allows one at a time).
    pending_poll: AtomicBool,
    /// Releases the pending long-poll with a `noop` while the client upgrades.
    release_poll: Notify,
    /// The client answered a ping.
    pong: Notify,
    /// The pending long-poll, waiting for the writer.
    polls: sink::Polls,
    /// Hands the WebSocket of a completed upgrade to the writer. Short sections only.
    upgrade: Mutex<Option<oneshot::Sender<WsSink>>>,
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
        let session = Session::new(node.clone(), &CODEC);
        session.set_origin(node.proxies.origin("socketio", headers));
        let polling = (transport == POLLING).then(|| {
            Box::new(Polling {
                pending_poll: AtomicBool::new(false),
                release_poll: Notify::new(),
                pong: Notify::new(),
                polls: sink::Polls::default(),
                upgrade: Mutex::new(None),
            })
        });
        Arc::new(Self {
            sid: new_id(),
            session,
            transport: AtomicU8::new(transport),
            pending: AtomicBool::new(true),
            ponged: AtomicBool::new(false),
            pending_count: sio.pending.clone(),
            handshake_token,
            pid: Mutex::new(new_id()),
            tracker: Mutex::default(),
            polling,
        })
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Option<Box<recovery::Tracker>>> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pid(&self) -> u128 {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a channel joined (with its subscribe `result`) through a route
    /// (`route`) or server-side. Only what a reconnect can use is remembered: a
    /// server-side channel only with `recovery_window`, which replays it.
    fn joined(&self, channel: &str, result: &SubscribeResult, route: bool) {
        let recovering = !self
            .session
            .node()
            .config
            .socketio
            .recovery_window
            .is_zero();
        if !route && !recovering {
            return;
        }
        self.tracker()
            .get_or_insert_with(Box::default)
            .joined(channel, result, route);
    }

    /// Remembers a channel joined (`result`) or left (`None`) through a route.
    fn route_joined(&self, channel: &str, result: Option<&SubscribeResult>) {
        match result {
            Some(r) => self.joined(channel, r, true),
            None => {
                if let Some(tracker) = self.tracker().as_mut() {
                    tracker.left(channel);
                }
            }
        }
    }

    /// The client answered a ping.
    fn ponged(&self) {
        match &self.polling {
            Some(p) => p.pong.notify_one(),
            None => self.ponged.store(true, Ordering::Relaxed),
        }
    }

    /// Whether the client answered a ping since the last call (a connection opened on
    /// WebSocket).
    fn take_pong(&self) -> bool {
        self.ponged.swap(false, Ordering::Relaxed)
    }

    /// Encodes an outbox item as the writer sends it, noting the publications that
    /// carry an offset for recovery.
    fn encode(&self, item: Outgoing) -> Frame {
        let recovering = &self.session.node().config.socketio;
        if let (Outgoing::Event(e), false) = (&item, recovering.recovery_window.is_zero()) {
            if let Frame::Text(frame) = &e.frame {
                self.tracker()
                    .get_or_insert_with(Box::default)
                    .wrote(frame, recovering.recovery_max_publications);
            }
        }
        encode(&self.session, item)
    }

    /// Keeps this closing connection's state on every node for its reconnect, for
    /// the longer of `rejoin_window` and `recovery_window`.
    async fn keep_state(&self) {
        let config = &self.session.node().config.socketio;
        let window = config.rejoin_window.max(config.recovery_window);
        if window.is_zero() || !self.session.is_connected() {
            return;
        }
        let kept = {
            let mut tracker = self.tracker();
            let Some(tracker) = tracker.as_mut() else {
                return;
            };
            if !tracker.worth_keeping(!config.recovery_window.is_zero()) {
                return;
            }
            tracker.keep(
                &self.session.user(),
                &self.session.id,
                recovery::now_millis(),
            )
        };
        let data = match serde_json::value::to_raw_value(&kept) {
            Ok(d) => SharedJson::from(d),
            Err(_) => return,
        };
        let pid = format_id(self.pid());
        if let Err(e) = self.session.node().keep(&pid, data, window).await {
            tracing::warn!(client = %self.session.id, error = %e, "connection state not kept");
        }
    }

    /// No longer counted as pending: it joined the namespace, or closed.
    fn not_pending(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.pending_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Moves the writer of this polling connection onto `ws`, the WebSocket it
    /// upgraded to. False when the writer has ended (the connection closed).
    fn upgraded(&self, ws: WsSink) -> bool {
        let Some(polling) = &self.polling else {
            return false;
        };
        let upgrade = polling
            .upgrade
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        upgrade.is_some_and(|tx| tx.send(ws).is_ok())
    }

    /// The transport it is on, as metrics count it (upgrading: still polling).
    fn metrics_transport(&self) -> Transport {
        match self.transport() {
            WEBSOCKET => Transport::SocketIoWebSocket,
            _ => Transport::SocketIoPolling,
        }
    }

    fn transport(&self) -> u8 {
        self.transport.load(Ordering::Acquire)
    }

    fn handshake(&self, upgrades: &[&str]) -> String {
        let config = &self.session.node().config;
        Handshake {
            sid: &format_id(self.sid),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sent_as_32_hex_digits_and_read_back() {
        for _ in 0..100 {
            let id = new_id();
            let sent = format_id(id);
            assert_eq!(sent.len(), 32);
            assert_eq!(sent, uuid::Uuid::from_u128(id).simple().to_string());
            assert_eq!(parse_id(&sent), Some(id));
        }
        // Leading zeros are kept, so the id reads back the same.
        assert_eq!(format_id(1), format!("{}1", "0".repeat(31)));
        assert_eq!(parse_id(&format_id(1)), Some(1));
        // Nothing this server never sent is looked up.
        for bad in [
            "",
            "abc",
            &"A".repeat(32),
            &"g".repeat(32),
            &"0".repeat(33),
            &format!("+{}", "0".repeat(31)),
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
